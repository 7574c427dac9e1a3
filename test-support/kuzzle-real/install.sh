#!/usr/bin/env bash
# Installs the real Kuzzle 2 server (kuzzle@2.56.0, pinned by package-lock.json) for the tests and
# makes its uWebSockets.js stand-in load on this machine. Idempotent: a second run checks and
# returns in well under a second. Fails loudly (never skips): a test that needs real Kuzzle must
# not pass because Kuzzle could not be installed.
# Usage: test-support/kuzzle-real/install.sh
set -euo pipefail
cd "$(dirname "$0")"
say() { printf 'kuzzle-real install: %s\n' "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }

for tool in node npm; do
  command -v "$tool" >/dev/null 2>&1 || die "\`$tool\` is missing on PATH (apt-get install nodejs npm)"
done
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ] || [ "$node_major" -ge 25 ]; then
  die "kuzzle@2.56.0 needs Node.js >= 20 < 25, this is $(node --version)"
fi

# One install at a time (parallel test binaries each run this script).
mkdir -p build
if command -v flock >/dev/null 2>&1; then
  exec 9>build/.install.lock
  flock 9
fi

# 1. node_modules, from the lock file, when missing or installed from another lock. A finished
# install is kept once per machine, outside the checkout (KUZZLE_REAL_CACHE, default
# ~/.cache/kuzzle-gateway), and a checkout links to it: a fresh clone (CI) pays no npm ci and no
# native build again (~2 minutes even with a warm npm cache).
stamp=node_modules/.kuzzle-real-installed
want=$(cat package.json package-lock.json | sha256sum | cut -d' ' -f1)
cache_root=${KUZZLE_REAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kuzzle-gateway}
cached=$cache_root/kuzzle-real-$want
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  if [ -f "$cached/node_modules/.kuzzle-real-installed" ] &&
    [ "$(cat "$cached/node_modules/.kuzzle-real-installed")" = "$want" ]; then
    rm -rf node_modules
    ln -s "$cached/node_modules" node_modules
    say "reusing the install in $cached"
  else
    say "npm ci (kuzzle@2.56.0, ~400 packages; ~4 minutes with an empty npm cache, native modules are compiled)"
    start=$(date +%s)
    log=$(mktemp)
    [ -L node_modules ] && rm -f node_modules
    if ! npm ci --no-audit --no-fund --prefer-offline >"$log" 2>&1; then
      tail -n 30 "$log" >&2
      rm -f "$log"
      if ! timeout 60 npm ping >/dev/null 2>&1; then
        die "npm registry unreachable: the real-Kuzzle tests need kuzzle@2.56.0 (npm ci failed, npm ping too; see above)"
      fi
      die "npm ci failed (see above); the real-Kuzzle tests need kuzzle@2.56.0"
    fi
    rm -f "$log"
    echo "$want" >"$stamp"
    say "npm ci done in $(($(date +%s) - start)) s"
    # Keep it for the next checkout; a failure to keep it costs only time.
    if mkdir -p "$cache_root" 2>/dev/null && rm -rf "$cached.tmp" && mkdir -p "$cached.tmp" &&
      mv node_modules "$cached.tmp/node_modules" && rm -rf "$cached" && mv "$cached.tmp" "$cached"; then
      ln -s "$cached/node_modules" node_modules
      say "kept in $cached"
    elif [ ! -d node_modules ]; then
      die "could not keep the install in $cached nor find it in place"
    fi
  fi
fi
[ -d node_modules/kuzzle/dist/lib ] || die "node_modules/kuzzle/dist/lib is missing after install"

# 2. The uWebSockets.js stand-in was built against glibc 2.38 (three C23 symbols). On an older
# glibc: a preloaded shim defines them, and the binary's GLIBC_2.38 requirement is marked weak.
case "$(uname -m)" in
  x86_64) arch=x64 ;;
  aarch64) arch=arm64 ;;
  *) die "uWebSockets.js has no build for $(uname -m)" ;;
esac
uws=node_modules/uWebSockets.js/uws_linux_${arch}_$(node -p process.versions.modules).node
[ -f "$uws" ] || die "$uws is missing: uWebSockets.js has no build for Node.js $(node --version) on $arch"
glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}') || true
[ -n "$glibc" ] || die "this system's C library is not glibc (getconf GNU_LIBC_VERSION): uWebSockets.js needs glibc"
shim=build/glibc-shim.so
if [ "$(printf '%s\n2.38\n' "$glibc" | sort -V | head -n1)" != "2.38" ]; then
  if [ ! -f "$shim" ] || [ glibc-shim.c -nt "$shim" ]; then
    command -v gcc >/dev/null 2>&1 || die "\`gcc\` is missing on PATH (apt-get install gcc): glibc $glibc < 2.38 needs the shim"
    gcc -shared -fPIC -O2 -Wall -Werror -o "$shim.tmp" glibc-shim.c || die "cannot compile glibc-shim.c"
    mv "$shim.tmp" "$shim"
    say "built $shim (glibc $glibc < 2.38)"
  fi
  node elf-weak-version.js "$uws" GLIBC_2.38 >/dev/null || die "cannot mark GLIBC_2.38 weak in $uws"
  preload=$PWD/$shim
else
  rm -f "$shim" # not needed (and run-node.sh preloads it whenever it exists)
  preload=
fi

# 3. Check that it loads as a node will load it (a broken install fails here, not in a test).
LD_PRELOAD=$preload node -e 'if (typeof require("uWebSockets.js").App !== "function") process.exit(1)' ||
  die "uWebSockets.js does not load (glibc $glibc, LD_PRELOAD=${preload:-none})"
