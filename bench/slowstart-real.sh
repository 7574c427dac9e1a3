#!/usr/bin/env bash
# Slow start in front of real Kuzzle 2 (npm kuzzle@2.56.0, test-support/kuzzle-real): how slow a
# cold node is, and how `[health] slowstart` spreads its first requests (docs/edge.md, Slow start).
#
# 1. Warm-up: one node started cold, loaded (wrk, CONNS connections of GET /_now) the moment its
#    GET /_ready turns 200, one-second windows for WARMUP seconds: requests/s and median per second.
# 2. The ramp: two nodes (k1, k2) behind the release gateway (static nodes, leastconn, access log
#    on), wrk through the gateway all along; k2 is stopped and started again cold, once with
#    `slowstart = SLOWSTART`, once with "0s". From the access log, per second after the gateway
#    saw k2 UP: k2's share of the requests, each node's median and k2's 99th percentile.
#
# Usage: bench/slowstart-real.sh
# Environment (defaults in brackets): SLOWSTART [30s], RAMP [45] seconds of load per ramp run,
#   WARMUP [30] seconds of the warm-up measurement, CONNS [8], SKIP_BUILD [0]
# Nodes on 127.0.0.61 and 127.0.0.62, ports 17900-17902; the gateway on 127.0.0.1:17950 (ops 17951).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SLOWSTART=${SLOWSTART:-30s}
RAMP=${RAMP:-45}
WARMUP=${WARMUP:-30}
CONNS=${CONNS:-8}
. "$ROOT/bench/lib.sh"
need_tools wrk redis-server redis-cli:redis-tools curl node:nodejs npm python3
REAL=$ROOT/test-support/kuzzle-real
"$REAL/install.sh"
GW_BIN=${GW_BIN:-$BIN_DIR/kuzzle-gateway}
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release --quiet --bin kuzzle-gateway || die "release build failed"
fi
STARTED=$(date -u '+%Y-%m-%d %H:%M')

redis_port=$(pick_port 17960)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
node "$REAL/es-stub.js" --port 0 >"$WORK/es.out" 2>"$WORK/es.err" &
PIDS+=($!)
wait_for_line "$WORK/es.out" "^ES-STUB READY" "Elasticsearch stand-in"
es_port=$(sed -n 's/^ES-STUB READY //p' "$WORK/es.out")
for _ in $(seq 1 100); do [ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = PONG ] && break; sleep 0.1; done

declare -A NODE
# start_node N: node N on 127.0.0.6N, in its own process group; returns once GET /_ready is 200.
start_node() {
  local i=$1
  setsid "$REAL/run-node.sh" --ip "127.0.0.6$i" --port 17900 --redis "127.0.0.1:$redis_port" \
    --es "http://127.0.0.1:$es_port" --command-port 17901 --sync-port 17902 >>"$WORK/node-$i.log" 2>&1 &
  NODE[$i]=$!; PIDS+=("$!")
  for _ in $(seq 1 1200); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.6$i:17900/_ready")" = 200 ] && return 0
    kill -0 "${NODE[$i]}" 2>/dev/null || die "node $i exited: $(tail -3 "$WORK/node-$i.log")"
    sleep 0.05
  done
  die "node $i not ready within 60 s"
}
# stop_node N: SIGTERM (Kuzzle's graceful stop), then its whole group (the IDCardRenewer child).
stop_node() {
  local p=${NODE[$1]}
  kill -TERM "$p" 2>/dev/null || true
  for _ in $(seq 1 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$p" 2>/dev/null || true
  stop_proc "$p"
}

# --- 1. the warm-up of a cold node, directly ---------------------------------------------------
warmup() {
  start_node 1
  echo "second requests/s median p99 (node 1 started cold, $CONNS connections, load $(cut -d' ' -f1-3 /proc/loadavg))"
  for s in $(seq 1 "$WARMUP"); do
    wrk --latency -t1 -c"$CONNS" -d1s --timeout 5s "http://127.0.0.61:17900/_now" |
      awk -v s="$s" '/^Requests\/sec/ { r = $2 } $1 == "50%" { m = $2 } $1 == "99%" { p = $2 } END { print s, r, m, p }'
  done
  stop_node 1
}

# --- 2. the ramp through the gateway ----------------------------------------------------------
gateway_cfg() {
  cat >"$WORK/gw.toml" <<EOF
[gateway]
listen = "127.0.0.1:17950"
threads = 1
[stats]
listen = "127.0.0.1:17951"
[health]
path = "/_ready"
interval = "1s"
rise = 1
fall = 1
slowstart = "$1"
[access_log]
path = "$WORK/access.log"
[[node]]
name = "k1"
address = "127.0.0.61:17900"
[[node]]
name = "k2"
address = "127.0.0.62:17900"
EOF
}
k2_up() { curl -s -u kuzzle:kuzzle http://127.0.0.1:17951/metrics | grep -q "node_up{node=\"k2\"} $1"; }
ramp() {
  local ss=$1 up
  gateway_cfg "$ss"
  kill -HUP "$GW"
  for _ in $(seq 1 50); do curl -s -u kuzzle:kuzzle http://127.0.0.1:17951/hastats\;json | grep -q . && break; sleep 0.1; done
  stop_node 2
  for _ in $(seq 1 200); do k2_up 0 && break; sleep 0.05; done
  : >"$WORK/access.log"
  kill -USR1 "$GW"
  wrk -t1 -c"$CONNS" -d"${RAMP}s" http://127.0.0.1:17950/_now >"$WORK/wrk-$ss.txt" 2>&1 &
  local w=$!
  sleep 3
  start_node 2
  for _ in $(seq 1 200); do k2_up 1 && break; sleep 0.05; done
  up=$(date +%s.%N)
  wait "$w" || true
  sleep 1.5   # the workers hand their last lines over within a second
  echo "slowstart = \"$ss\": k2 UP at $up; load $(cut -d' ' -f1-3 /proc/loadavg)"
  python3 - "$WORK/access.log" "$up" <<'PY'
import datetime, json, sys
up = float(sys.argv[2])
buckets = {}
for line in open(sys.argv[1]):
    if not line.startswith('{'):
        continue
    l = json.loads(line)
    t = datetime.datetime.strptime(l['time'], '%Y-%m-%dT%H:%M:%S.%fZ').replace(tzinfo=datetime.timezone.utc).timestamp()
    s = int(t - up)
    if s >= -2:
        buckets.setdefault(s, []).append(l)
def q(v, f):
    return sorted(v)[min(len(v) - 1, int(f * len(v)))] if v else float('nan')
print('second requests k2_share k1_median_ms k2_median_ms k2_p99_ms')
for s in sorted(buckets):
    b = buckets[s]
    k1 = [l['duration_ms'] for l in b if l['node'] == 'k1' and l['status'] == 200]
    k2 = [l['duration_ms'] for l in b if l['node'] == 'k2' and l['status'] == 200]
    print(f"{s:6d} {len(b):8d} {len(k2) / len(b):8.2f} {q(k1, .5):12.2f} {q(k2, .5):12.2f} {q(k2, .99):9.2f}")
print('not 200:', sum(1 for b in buckets.values() for l in b if l['status'] != 200))
PY
}

mkdir -p "$ROOT/target/bench"
OUT=$ROOT/target/bench/slowstart-real-$(date -u +%Y%m%d-%H%M).md
# A brace group redirected, not a pipe: what it starts stays known to the exit trap.
{
  echo "## slow start in front of real Kuzzle (bench/slowstart-real.sh)"
  echo '```'
  bench_header "$STARTED"
  echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo '```'
  echo '```'
  warmup
  start_node 1
  start_node 2
  gateway_cfg "$SLOWSTART"
  RUST_LOG=warn "$GW_BIN" --config "$WORK/gw.toml" >"$WORK/gw.log" 2>&1 &
  GW=$!; PIDS+=("$GW")
  wait_http "http://127.0.0.1:17950/_now" kuzzle-gateway
  ramp "$SLOWSTART"
  ramp 0s
  echo '```'
} >"$OUT"
cat "$OUT"
log "saved to $OUT"
