#!/usr/bin/env bash
# Per-client limits under a flood of addresses: the release gateway, behind the PROXY protocol
# (a flood from IPv6 costs an attacker nothing: each connection claims its own /64), with
# `[limits] client_connections` and `client_rate` on, gets COUNT connections from COUNT distinct
# addresses, one request each, while one legitimate client makes a request every 200 ms on a
# keep-alive connection of its own. Prints the gateway's RSS before, at every 100,000 addresses
# and after, the statuses the flood got, and whether the legitimate client was always served; the
# same text goes to target/bench/limits-flood-<date>.md.
#
# Usage: bench/limits-flood.sh
# Environment (defaults in brackets):
#   COUNT [1000000]   distinct addresses        CONCURRENCY [64]  flood connections at once
#   TABLE [65536]     [limits] client_table     THREADS [1]       [gateway] threads
#   SKIP_BUILD [0]    1: use the existing release binaries
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
COUNT=${COUNT:-1000000}
CONCURRENCY=${CONCURRENCY:-64}
TABLE=${TABLE:-65536}
THREADS=${THREADS:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
STARTED=$(date -u '+%Y-%m-%d %H:%M')
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

. "$ROOT/bench/lib.sh"
GW_BIN=${GW_BIN:-$BIN_DIR/kuzzle-gateway}
need_tools curl
if [ "$SKIP_BUILD" != 1 ]; then
  log "cargo build --release (gateway, sim, limits_flood)"
  cargo build --release --quiet --workspace --bin kuzzle-gateway --bin kuzzle-node-sim --example limits_flood || die "build failed"
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

start_sims 0-$(($(nproc) - 1))
port=$(pick_port 17810); stats=$(pick_port 17830)
cfg=$WORK/gateway.toml
gateway_config "$cfg" "$port" "$stats" "$THREADS"
# The [gateway] and [limits] keys of the copy, set for this run.
sed -i -e 's/^proxy_protocol = false /proxy_protocol = true /' \
  -e 's|^proxy_protocol_from = \[\] |proxy_protocol_from = ["127.0.0.0/8"] |' \
  -e 's/^client_connections = 0 /client_connections = 4 /' -e 's/^client_rate = 0 /client_rate = 20 /' \
  -e "s/^client_table = 65536 /client_table = $TABLE /" "$cfg"
grep -q '^proxy_protocol = true' "$cfg" && grep -q '^client_rate = 20' "$cfg" || die "could not set the limits in $cfg"
"$GW_BIN" --config "$cfg" --check >/dev/null || die "invalid $cfg"
RUST_LOG=warn "$GW_BIN" --config "$cfg" >"$WORK/gateway.log" 2>&1 &
GW=$!; PIDS+=("$GW")
# The gateway's readiness: its ops listener (the client listener wants a PROXY header).
wait_http "http://127.0.0.1:$stats/healthz" kuzzle-gateway
log "gateway pid $GW on :$port (PROXY protocol), limits: 4 connections, 20 requests/s per client, table $TABLE"

"$BIN_DIR/examples/limits_flood" "127.0.0.1:$port" --pid "$GW" --count "$COUNT" --concurrency "$CONCURRENCY" \
  >"$WORK/flood.out" 2>&1 || die "limits_flood failed: $(tail -3 "$WORK/flood.out")"
metrics=$(curl -s -u kuzzle:kuzzle "http://127.0.0.1:$stats/metrics" | grep -E '^kuzzle_gateway_(limited_total|proxy_protocol_refused_total|requests_total|connections_total)' || true)

mkdir -p "$ROOT/target/bench"
OUT=$ROOT/target/bench/limits-flood-$(date -u +%Y%m%d-%H%M).md
{
  echo "## per-client limits under a flood of addresses (bench/limits-flood.sh)"
  echo
  echo '```'
  bench_header "$STARTED"
  echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "load average at start: $LOAD_START, at the end: $(cut -d' ' -f1-3 /proc/loadavg) (a shared machine)"
  echo "gateway: threads $THREADS, PROXY protocol, client_connections 4, client_rate 20, client_table $TABLE"
  echo "flood: $COUNT connections, each from its own IPv6 /64 (PROXY v2 header), one GET each, $CONCURRENCY at once"
  echo '```'
  echo
  echo '```'
  cat "$WORK/flood.out"
  echo
  echo "$metrics"
  echo '```'
} | tee "$OUT"
log "saved to $OUT"
