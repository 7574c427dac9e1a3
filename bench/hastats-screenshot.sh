#!/usr/bin/env bash
# Screenshot of /hastats for docs/hastats.png: release gateway in front of 3 simulated nodes, some
# traffic and one open WebSocket, cluster_kuzzle_2 put in DRAIN through the ops listener and
# cluster_kuzzle_3 killed (DOWN after its health checks fail), then headless Chromium renders it.
# Usage: bench/hastats-screenshot.sh [OUT.png]   (default docs/hastats.png; WINDOW=W,H sets the size)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/docs/hastats.png}
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

need_tools chromium:chromium curl:curl python3:python3
if [ -z "${SKIP_BUILD:-}" ]; then   # SKIP_BUILD=1: use the release binaries already built
  log "building release binaries"
  (cd "$ROOT" && cargo build --release --workspace --bins --quiet)
fi

# Sims on port 0: each prints the address it got.
SIM_PORTS=(); SIM_PIDS=()
for i in 1 2 3; do
  RUST_LOG=warn "$ROOT/target/release/kuzzle-node-sim" "${SIM_ARGS[@]}" --listen 127.0.0.1:0 --name "cluster_kuzzle_$i" \
    >"$WORK/sim$i.log" 2>&1 &
  PIDS+=($!); SIM_PIDS+=($!)
done
for i in 1 2 3; do
  wait_for_line "$WORK/sim$i.log" "listening on" "kuzzle-node-sim cluster_kuzzle_$i"
  SIM_PORTS+=("$(sed -n 's/.* listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$WORK/sim$i.log" | head -1)")
done
PORT=$(pick_port 27512)
STATS=$(pick_port 27575)
CONF="$WORK/gateway.toml"
cat >"$CONF" <<TOML
[gateway]
listen = "127.0.0.1:$PORT"
[health]
interval = "500ms"
timeout = "300ms"
rise = 2
fall = 3
[stats]
listen = "127.0.0.1:$STATS"
refresh = "10s"
# user and password omitted: no auth for this throwaway instance (Chromium needs no credentials)
[[node]]
name = "cluster_kuzzle_1"
address = "127.0.0.1:${SIM_PORTS[0]}"
[[node]]
name = "cluster_kuzzle_2"
address = "127.0.0.1:${SIM_PORTS[1]}"
[[node]]
name = "cluster_kuzzle_3"
address = "127.0.0.1:${SIM_PORTS[2]}"
TOML
RUST_LOG=warn "$ROOT/target/release/kuzzle-gateway" --config "$CONF" >"$WORK/gateway.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$STATS/hastats" "gateway stats"
wait_http "http://127.0.0.1:$PORT/_now" "gateway"

log "traffic: 300 requests, a few errors, one WebSocket held open"
for i in $(seq 1 300); do printf 'url = "http://127.0.0.1:%s/_now"\noutput = "/dev/null"\n' "$PORT"; done >"$WORK/curl.cfg"
curl -s -K "$WORK/curl.cfg" -o /dev/null
curl -s -o /dev/null -X POST --data-binary @"$ROOT/Cargo.lock" "http://127.0.0.1:$PORT/cluster_kuzzle_1/_sim/echo"
curl -s -o /dev/null "http://127.0.0.1:$PORT/cluster_kuzzle_1/_sim/bytes/200000"
curl -s -o /dev/null -X POST "http://127.0.0.1:${SIM_PORTS[0]}/_sim/errors/50"
for i in $(seq 1 20); do curl -s -o /dev/null "http://127.0.0.1:$PORT/cluster_kuzzle_1/_now"; done
curl -s -o /dev/null -X POST "http://127.0.0.1:${SIM_PORTS[0]}/_sim/errors/0"
python3 - "$PORT" <<'PY' &
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
s.recv(4096)
time.sleep(60)
PY
PIDS+=($!)

log "cluster_kuzzle_2 -> DRAIN, cluster_kuzzle_3 killed"
curl -sf -o /dev/null -X POST -H 'content-type: application/json' -d drain "http://127.0.0.1:$STATS/nodes/cluster_kuzzle_2/state"
kill -KILL "${SIM_PIDS[2]}"
for _ in $(seq 1 100); do
  curl -s "http://127.0.0.1:$STATS/hastats;csv" | grep -q '^kuzzle,cluster_kuzzle_3,.*,DOWN,' && break
  sleep 0.1
done
curl -s "http://127.0.0.1:$STATS/hastats;csv" | grep -q '^kuzzle,cluster_kuzzle_3,.*,DOWN,' ||
  die "cluster_kuzzle_3 not DOWN within 10 s"
curl -s "http://127.0.0.1:$STATS/hastats;csv" | cut -d, -f1-2,5,8,18 >&2

mkdir -p "$(dirname "$OUT")"
PROFILE=$(mktemp -d "$WORK/chromium.XXXXXX")
timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
  --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
  --user-data-dir="$PROFILE" --screenshot="$OUT" --window-size="${WINDOW:-1400,700}" \
  "http://localhost:$STATS/hastats?norefresh" >"$WORK/chromium.log" 2>&1 ||
  die "chromium failed (log: $WORK/chromium.log)"
[ -s "$OUT" ] || die "no screenshot written"
log "screenshot: $OUT"
