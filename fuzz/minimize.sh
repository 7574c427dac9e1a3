#!/usr/bin/env bash
# Minimize a committed fuzz corpus in place: the smallest set of files with the same coverage
# features (libFuzzer's -set_cover_merge, about half of `cargo fuzz cmin`), keeping regress-* files.
# Usage: fuzz/minimize.sh TARGET   (after `cargo +nightly fuzz build TARGET`)
set -euo pipefail
t=${1:?usage: fuzz/minimize.sh TARGET}
dir=$(cd "$(dirname "$0")" && pwd)
bin=$dir/target/x86_64-unknown-linux-gnu/release/$t
corpus=$dir/corpus/$t
[ -x "$bin" ] || { echo "missing $bin: run cargo +nightly fuzz build $t" >&2; exit 1; }
[ -d "$corpus" ] || { echo "missing corpus $corpus" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/min"
"$bin" -set_cover_merge=1 "$tmp/min" "$corpus" 2>"$tmp/log" || { tail -20 "$tmp/log" >&2; exit 1; }
find "$corpus" -maxdepth 1 -name 'regress-*' -exec cp {} "$tmp/min/" \;
before=$(find "$corpus" -type f | wc -l)
find "$corpus" -maxdepth 1 -type f -delete
cp "$tmp/min/"* "$corpus/"
echo "$t: $before -> $(find "$corpus" -type f | wc -l) files, $(du -sb "$corpus" | cut -f1) bytes"
