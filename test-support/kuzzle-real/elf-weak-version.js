#!/usr/bin/env node
// Marks one version requirement (e.g. GLIBC_2.38) of an ELF64 little-endian shared object weak
// (VER_FLG_WEAK in its .gnu.version_r entry), so the dynamic loader accepts that the system's
// library lacks the version; the symbols themselves must then come from elsewhere (LD_PRELOAD).
// Usage: node elf-weak-version.js FILE VERSION   (idempotent; prints what it did)
"use strict";
const fs = require("fs");

const SHT_GNU_VERNEED = 0x6ffffffe;
const VER_FLG_WEAK = 0x2;

function fail(msg) {
  console.error(`elf-weak-version: ${msg}`);
  process.exit(1);
}

const [file, version] = process.argv.slice(2);
if (!file || !version) fail("usage: node elf-weak-version.js FILE VERSION");
const buf = fs.readFileSync(file);
if (buf.readUInt32BE(0) !== 0x7f454c46) fail(`${file} is not an ELF file`);
if (buf[4] !== 2 || buf[5] !== 1) fail(`${file} is not a 64-bit little-endian ELF file`);

const shoff = Number(buf.readBigUInt64LE(0x28));
const shentsize = buf.readUInt16LE(0x3a);
const shnum = buf.readUInt16LE(0x3c);
const section = (i) => {
  const o = shoff + i * shentsize;
  return {
    type: buf.readUInt32LE(o + 4),
    offset: Number(buf.readBigUInt64LE(o + 0x18)),
    link: buf.readUInt32LE(o + 0x28),
    info: buf.readUInt32LE(o + 0x2c),
  };
};
const cstr = (off) => buf.toString("latin1", off, buf.indexOf(0, off));

let found = 0;
let changed = 0;
for (let i = 0; i < shnum; i++) {
  const s = section(i);
  if (s.type !== SHT_GNU_VERNEED) continue;
  const strtab = section(s.link).offset;
  // sh_info = number of Verneed entries.
  let vn = s.offset;
  for (let n = 0; n < s.info; n++) {
    const cnt = buf.readUInt16LE(vn + 2);
    const aux = buf.readUInt32LE(vn + 8);
    const next = buf.readUInt32LE(vn + 12);
    let va = vn + aux;
    for (let k = 0; k < cnt; k++) {
      // Vernaux: hash u32, flags u16, other u16, name u32, next u32
      const name = cstr(strtab + buf.readUInt32LE(va + 8));
      if (name === version) {
        found++;
        const flags = buf.readUInt16LE(va + 4);
        if (!(flags & VER_FLG_WEAK)) {
          buf.writeUInt16LE(flags | VER_FLG_WEAK, va + 4);
          changed++;
        }
      }
      va += buf.readUInt32LE(va + 12);
    }
    if (next === 0) break;
    vn += next;
  }
}
if (found === 0) {
  console.log(`elf-weak-version: ${file} does not need ${version}: nothing to do`);
} else if (changed === 0) {
  console.log(`elf-weak-version: ${version} already weak in ${file}`);
} else {
  // Write a sibling and rename it over: a process that has the file mapped keeps the old inode.
  fs.writeFileSync(`${file}.tmp`, buf, { mode: fs.statSync(file).mode });
  fs.renameSync(`${file}.tmp`, file);
  console.log(`elf-weak-version: ${version} marked weak in ${file}`);
}
