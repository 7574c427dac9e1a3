#!/usr/bin/env bash
# Where kuzzle-gateway spends its CPU under load: 3 simulated nodes and the gateway (release,
# one worker thread, pinned to CPU 1), wrk on GET /_now from CPU 0, `perf record` on the gateway.
# Prints the top symbols (self time), and with CALLGRAPH=1 the callers too (DWARF unwinding; the
# release profile keeps line tables, debug = 1).
#
# Usage: bench/profile.sh     Environment: DURATION [10] seconds, CONNS [50],
#        VARIANT [keep-alive|close], CALLGRAPH [0], TOP [40] lines, SKIP_BUILD [0]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${DURATION:-10}
CONNS=${CONNS:-50}
VARIANT=${VARIANT:-keep-alive}
CALLGRAPH=${CALLGRAPH:-0}
TOP=${TOP:-40}
. "$ROOT/bench/lib.sh"
need_tools wrk curl perf:linux-perf taskset:util-linux ss:iproute2

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "building release binaries"
  cargo build --release --quiet --workspace --bin kuzzle-gateway --bin kuzzle-node-sim || die "release build failed"
fi
[ "$(nproc)" -ge 2 ] && { LOAD=0; GWCPU=1; } || { LOAD=0; GWCPU=0; }

start_sims "$LOAD"
GW_PORT=$(pick_port 17610); GW_STATS=$(pick_port 17620)
gateway_config "$WORK/gateway.toml" "$GW_PORT" "$GW_STATS" 1
RUST_LOG=warn taskset -c "$GWCPU" "$ROOT/target/release/kuzzle-gateway" --config "$WORK/gateway.toml" \
  >"$WORK/gateway.log" 2>&1 &
GW_PID=$!; PIDS+=("$GW_PID")
wait_http "http://127.0.0.1:$GW_PORT/_now" kuzzle-gateway

hdr=(); [ "$VARIANT" = close ] && hdr=(-H "Connection: close")
# Warm the pools first so the profile shows the steady state.
taskset -c "$LOAD" wrk -t1 -c"$CONNS" -d2s "${hdr[@]}" "http://127.0.0.1:$GW_PORT/_now" >/dev/null

rec=(-F 999)
[ "$CALLGRAPH" = 1 ] && rec=(-F 199 --call-graph dwarf,16384)
perf record "${rec[@]}" -p "$GW_PID" -o "$WORK/perf.data" -- sleep "$((DURATION + 1))" 2>"$WORK/perf.log" &
PERF_PID=$!; PIDS+=("$PERF_PID")
taskset -c "$LOAD" wrk --latency -t1 -c"$CONNS" -d"${DURATION}s" "${hdr[@]}" \
  "http://127.0.0.1:$GW_PORT/_now" | tee "$WORK/wrk.txt" | grep -E 'Requests/sec|99%|50%|errors|Non-2xx' >&2 || true
wait "$PERF_PID" || die "perf record failed: $(cat "$WORK/perf.log")"
log "perf data kept in target/bench/perf.data (perf report -i target/bench/perf.data)"

echo "== top symbols by self time (gateway, $VARIANT, $CONNS connections) =="
set +o pipefail    # head closes the pipe early on purpose
mkdir -p "$ROOT/target/bench" && cp "$WORK/perf.data" "$ROOT/target/bench/perf.data"
if [ "$CALLGRAPH" = 1 ]; then
  echo "(inclusive time: the symbol and everything it calls)"
  perf report -i "$WORK/perf.data" --stdio --children --sort symbol -g none --percent-limit 0.5 2>/dev/null |
    grep -vE '^#|^$' | sed 's/[ -]*$//' | head -n "$TOP"
else
  perf report -i "$WORK/perf.data" --stdio --no-children --sort dso,symbol 2>/dev/null |
    grep -vE '^#|^$' | sed 's/[ -]*$//' | head -n "$TOP"
fi
exit 0
