#!/usr/bin/env python3
"""Lists the strongly connected components of `crate::` imports between the files of a Rust crate.

Usage: scripts/module-cycles.py SRC_DIR [SRC_DIR ...]
A file's module path comes from its place under SRC_DIR (a/mod.rs and a.rs are `a`). An edge
A -> B exists when A names `crate::B...` (in a `use` or a path) or `super::` resolves to B.
Exit status 0; prints each component of more than one file, largest first, and the largest size.
"""
import os
import re
import sys


def modules(src):
    mods = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel[-1] == "mod":
                rel = rel[:-1]
            if rel in (["lib"], ["main"]) or (rel and rel[0] == "bin"):
                rel = ["crate:" + "/".join(rel)]
            mods[tuple(rel)] = path
    return mods


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def expand_use_groups(text):
    """Turns `crate::{a::X, b}` into `crate::a::X crate::b` (one level of braces is enough here)."""
    out = []
    for m in re.finditer(r"\b(crate|super)((?:::\w+)*)::\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}", text):
        head = m.group(1) + m.group(2)
        for part in re.split(r",(?![^{]*\})", m.group(3)):
            part = part.strip()
            if part:
                out.append(head + "::" + re.sub(r"\{.*", "", part))
    return " ".join(out)


def edges(mods):
    known = set(mods)
    graph = {m: set() for m in mods}
    for mod, path in mods.items():
        text = strip_comments(open(path, encoding="utf-8").read())
        text = text + " " + expand_use_groups(text)
        for m in re.finditer(r"\b(crate|super)((?:::\w+)+)", text):
            segs = [s for s in m.group(2).split("::") if s]
            if m.group(1) == "crate":
                base = []
            else:
                is_dir = path.endswith("mod.rs")
                base = list(mod[:-1]) if not is_dir else list(mod[:-1])
                if not is_dir:
                    base = list(mod[:-1])
            full = base + segs
            # The longest known module prefix of the path is the target.
            for n in range(len(full), 0, -1):
                t = tuple(full[:n])
                if t in known:
                    if t != mod and not (len(t) < len(mod) and mod[: len(t)] == t and False):
                        graph[mod].add(t)
                    break
    return graph


def sccs(graph):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def main():
    for src in sys.argv[1:] or ["src"]:
        mods = modules(src)
        graph = edges(mods)
        comps = sorted((c for c in sccs(graph) if len(c) > 1), key=len, reverse=True)
        largest = len(comps[0]) if comps else 1
        print(f"{src}: {len(mods)} files, largest import cycle: {largest} file(s)")
        for c in comps:
            print("  cycle of %d: %s" % (len(c), ", ".join(sorted("::".join(m) for m in c))))


if __name__ == "__main__":
    main()
