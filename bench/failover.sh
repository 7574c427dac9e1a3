#!/usr/bin/env bash
# Failover benchmark: one of 3 simulated Kuzzle nodes is SIGKILLed under load, behind
# kuzzle-gateway and behind haproxy 2.6 (option redispatch, retries 3, the same check interval,
# timeout, rise and fall). Same load for each: wrk, keep-alive, half GET /_now, half
# POST /_sim/echo. Prints a table: requests, failed requests (non-2xx answers + socket errors)
# detection time (kill -> the proxy's stats CSV shows the node DOWN), p99 and max latency.
#
# Usage: bench/failover.sh
# Environment (defaults in brackets):
#   INTER [2s]       check interval (gateway [health] interval, haproxy `inter`)
#   DURATION [10]    seconds of load per run      KILL_AT [3]  seconds into the run the node dies
#   CONNS [8]        wrk connections              ROUNDS [2]   runs per proxy, interleaved
#   LATENCY [20]     ms each node adds to every answer (`POST /_sim/latency/<ms>`), so that some
#                    requests are inside the node when it dies; 0 = answer at once
#   TUNED [1]        1: also run haproxy with passive checks and L7 retries (`observe layer4
#                    error-limit 3 on-error fail-check`, `retry-on conn-failure empty-response
#                    response-timeout`), the closest haproxy gets to the gateway's behaviour
#   ACTIVE_ONLY [1]  1: also run the gateway with `[health] passive = false` (active checks only,
#                    like stock haproxy) to show what passive checks add
#   PIN [1]          1: proxies on CPU 1 (one worker), wrk and sims on CPU 0
#   SKIP_BUILD [0]   1: use the existing release binaries
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

INTER=${INTER:-2s}
DURATION=${DURATION:-10}
KILL_AT=${KILL_AT:-3}
CONNS=${CONNS:-8}
LATENCY=${LATENCY:-20}
ROUNDS=${ROUNDS:-2}
TUNED=${TUNED:-1}
ACTIVE_ONLY=${ACTIVE_ONLY:-1}
PIN=${PIN:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
NCPU=$(nproc)

. "$ROOT/bench/lib.sh"
need_tools wrk haproxy curl taskset:util-linux

if [ "$SKIP_BUILD" != 1 ]; then
  log "building release binaries"
  cargo build --release --quiet --workspace --bin kuzzle-gateway --bin kuzzle-node-sim || die "release build failed"
fi
GW_BIN=${GW_BIN:-$ROOT/target/release/kuzzle-gateway}
for b in "$GW_BIN" "$ROOT/target/release/kuzzle-node-sim"; do [ -x "$b" ] || die "missing $b"; done

if [ "$PIN" = 1 ] && [ "$NCPU" -ge 2 ]; then
  LOAD_CPUS=0; PROXY_CPUS=1; WORKERS=1
else
  LOAD_CPUS=0-$((NCPU - 1)); PROXY_CPUS=$LOAD_CPUS; WORKERS=$NCPU
fi

# Half GET, half POST with a small JSON body; the summary line is parsed below.
cat >"$WORK/mix.lua" <<'EOF'
local n = 0
request = function()
  n = n + 1
  if n % 2 == 0 then
    return wrk.format("POST", "/_sim/echo", { ["Content-Type"] = "application/json" }, '{"hello":"world"}')
  end
  return wrk.format("GET", "/_now")
end
-- Failed answers are logged (status and the gateway's or haproxy's message) for the log.
response = function(status, headers, body)
  if status >= 400 then io.write("NON2XX " .. status .. " " .. body:sub(1, 160) .. "\n") end
end
done = function(s, latency, requests)
  local e = s.errors
  io.write(string.format("RESULT requests=%d status=%d connect=%d read=%d write=%d timeout=%d p99=%.1f max=%.1f\n",
    s.requests, e.status, e.connect, e.read, e.write, e.timeout, latency:percentile(99) / 1000, latency.max / 1000))
end
EOF

# The `status` column of node cluster_kuzzle_2 in a haproxy-style stats CSV.
node_status() {
  curl -s --max-time 1 -u kuzzle:kuzzle "http://127.0.0.1:$1/hastats;csv" | awk -F, '
    NR == 1 { for (i = 1; i <= NF; i++) if ($i == "status") col = i; next }
    $2 == "cluster_kuzzle_2" && col { print $col; exit }'
}

start_proxy() { # kind port stats_port -> PROXY_PID
  local kind=$1 port=$2 stats=$3
  case $kind in
    kuzzle-gateway | gateway-active)
      {
        printf '[gateway]\nlisten = "127.0.0.1:%s"\nthreads = %s\n' "$port" "$WORKERS"
        printf '[stats]\nlisten = "127.0.0.1:%s"\n' "$stats"
        printf '[timeouts]\nconnect = "5s"\nclient = "30s"\nserver = "5s"\n'
        printf '[balance]\nalgorithm = "leastconn"\nretries = 3\nredispatch = true\n'
        printf '[health]\ninterval = "%s"\ntimeout = "1s"\nrise = 2\nfall = 3\n' "$INTER"
        if [ "$kind" = gateway-active ]; then printf 'passive = false\n'; fi
        for i in 1 2 3; do
          printf '[[node]]\nname = "cluster_kuzzle_%s"\naddress = "127.0.0.1:%s"\n' "$i" "${SIM_PORTS[$((i - 1))]}"
        done
      } >"$WORK/gw.toml"
      "$GW_BIN" --config "$WORK/gw.toml" --check >/dev/null || die "gateway config invalid: $WORK/gw.toml"
      RUST_LOG=warn taskset -c "$PROXY_CPUS" "$GW_BIN" --config "$WORK/gw.toml" >"$WORK/$kind.log" 2>&1 &
      ;;
    haproxy | haproxy-tuned)
      subst_nodes <"$ROOT/proxy-configs/haproxy-failover.cfg" |
        sed -e "s/bind 127\.0\.0\.1:7513/bind 127.0.0.1:$port/" -e "s/bind 127\.0\.0\.1:7575/bind 127.0.0.1:$stats/" \
          -e "s/check inter 2s/check inter $INTER/" -e "s/nbthread 1/nbthread $WORKERS/" >"$WORK/$kind.cfg"
      if [ "$kind" = haproxy-tuned ]; then
        sed -i -e "s/^\(    default-server .*\)$/\1 observe layer4 error-limit 3 on-error fail-check/" \
          -e "s/^    retries 3$/    retries 3\n    retry-on conn-failure empty-response response-timeout/" "$WORK/$kind.cfg"
      fi
      haproxy -q -c -f "$WORK/$kind.cfg" || die "haproxy config invalid: $WORK/$kind.cfg"
      taskset -c "$PROXY_CPUS" haproxy -db -f "$WORK/$kind.cfg" >"$WORK/$kind.log" 2>&1 &
      ;;
  esac
  PROXY_PID=$!; PIDS+=("$PROXY_PID")
  wait_http "http://127.0.0.1:$port/_now" "$kind"
}

stop_pids() {
  local p
  for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "$@"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
}

# bench/run.sh and others start from 17601: keep out of their way.
seq 17600 17700 >>"$WORK/ports.taken"
KINDS=(kuzzle-gateway)
[ "$ACTIVE_ONLY" = 1 ] && KINDS+=(gateway-active)
KINDS+=(haproxy)
[ "$TUNED" = 1 ] && KINDS+=(haproxy-tuned)
ROWS=()
for round in $(seq 1 "$ROUNDS"); do
  for kind in "${KINDS[@]}"; do
    start_sims "$LOAD_CPUS"
    for p in "${SIM_PORTS[@]}"; do
      curl -s -o /dev/null --max-time 2 -X POST "http://127.0.0.1:$p/_sim/latency/$LATENCY" || die "latency knob on :$p"
    done
    port=$(pick_port 17630); stats=$(pick_port 17640)
    start_proxy "$kind" "$port" "$stats"
    for _ in $(seq 1 50); do [ "$(node_status "$stats")" = UP ] && break; sleep 0.1; done
    [ "$(node_status "$stats")" = UP ] || die "$kind: cluster_kuzzle_2 not UP in its stats CSV before the kill"
    log "round $round: $kind on :$port, sims ${SIM_PORTS[*]}"
    taskset -c "$LOAD_CPUS" wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 10s -s "$WORK/mix.lua" \
      "http://127.0.0.1:$port" >"$WORK/wrk-$kind-$round.out" 2>&1 &
    wrk_pid=$!
    sleep "$KILL_AT"
    kill -KILL "${SIM_PIDS[1]}"
    t0=$(date +%s%N)
    detect=">30"
    for _ in $(seq 1 1500); do
      st=$(node_status "$stats")
      if [[ $st == DOWN* ]]; then
        detect=$(awk -v ns=$(($(date +%s%N) - t0)) 'BEGIN { printf "%.2f", ns / 1e9 }')
        break
      fi
      sleep 0.02
    done
    wait "$wrk_pid" || die "wrk failed: $(cat "$WORK/wrk-$kind-$round.out")"
    line=$(grep '^RESULT' "$WORK/wrk-$kind-$round.out") || die "no wrk summary: $(cat "$WORK/wrk-$kind-$round.out")"
    eval "$(echo "${line#RESULT }" | tr ' ' '\n' | sed 's/^/W_/')"
    sock=$((W_connect + W_read + W_write + W_timeout))
    failed=$((W_status + sock))
    pct=$(awk -v f=$failed -v n="$W_requests" 'BEGIN { printf "%.3f", n ? 100 * f / n : 0 }')
    ROWS+=("$(printf '%-15s %5s %9s %8s %8s %7s %8s %10s %9s %9s' "$kind" "$round" "$W_requests" "$W_status" "$sock" "$failed" "$pct" "$detect" "$W_p99" "$W_max")")
    log "$kind: $W_requests requests, $failed failed ($W_status non-2xx, $sock socket errors), DOWN after ${detect}s"
    grep '^NON2XX' "$WORK/wrk-$kind-$round.out" | sort | uniq -c | head -5 | sed 's/^/    /' >&2 || true
    stop_pids "$PROXY_PID" "${SIM_PIDS[@]}"
  done
done

{
  echo
  echo "Failover: 1 of 3 nodes SIGKILLed ${KILL_AT}s into ${DURATION}s of wrk load ($CONNS keep-alive connections, half GET /_now, half POST /_sim/echo, nodes answer in ${LATENCY} ms)"
  echo "checks every $INTER, timeout 1s, rise 2, fall 3; retries 3 + redispatch; $(haproxy -v | head -1 | awk '{ print "haproxy " $3 }'); pin=$PIN"
  printf '%-15s %5s %9s %8s %8s %7s %8s %10s %9s %9s\n' proxy round requests non-2xx sockerr failed "failed%" "detect(s)" "p99(ms)" "max(ms)"
  printf '%s\n' "${ROWS[@]}"
} | tee "$WORK/table.txt"
mkdir -p target/bench
cp "$WORK/table.txt" target/bench/failover-last-run.txt
