#!/usr/bin/env bash
# The comparison users ask for: the same three real Kuzzle 2 nodes (npm kuzzle@2.56.0, see
# test-support/kuzzle-real) behind kuzzle-gateway (the shipped Kuzzle 2 config, nodes from their
# ID cards), behind the seed's nginx config and behind its haproxy config (static addresses):
# requests/s under 8 GET + 8 POST-publish clients (a connection per request), then failed requests
# during the same rolling restart (each node SIGTERMed, started again, 3 s apart) under the same
# load. Prints one markdown table (docs/benchmarks.md). Installs nginx, haproxy and Kuzzle when
# missing. Real Kuzzle is the bottleneck here (a node costs ~20x a proxy's CPU per request), so the
# requests/s column says whether a proxy costs the cluster throughput, not which proxy is fastest.
#
# Usage: bench/kuzzle-real.sh [SECONDS=10]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. "$ROOT/bench/lib.sh"
need_tools nginx haproxy redis-server node:nodejs npm
test-support/kuzzle-real/install.sh
log "building the release gateway and the comparison"
cargo build --release --quiet --bin kuzzle-gateway --example kuzzle_compare || die "release build failed"
"${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/kuzzle_compare" \
  "${CARGO_TARGET_DIR:-$ROOT/target}/release/kuzzle-gateway" "${1:-10}"
