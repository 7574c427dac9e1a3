#!/usr/bin/env bash
# A/B of kuzzle-gateway builds: the same 3 simulated nodes, each gateway binary in turn (pinned to
# CPU 1, one worker thread), wrk on GET /_now from CPU 0, rounds interleaved so drift hits every
# build alike. Prints req/s, p99 and the gateway's CPU time per request (median round).
#
# Usage: bench/compare-builds.sh BIN [BIN...]     e.g. a copy of target/release/kuzzle-gateway
#        made before a change, and the new one.
# Environment: DURATION [10s], CONNS [50; big: 10], ROUNDS [3], SKIP_BUILD [0],
#              VARIANT [keep-alive|close|big|idle]: close, a new connection per request; big, 1 MiB
#              answers (Content-Length) from an nginx node on CPU 0 (the per-request CPU figure is
#              then per MiB); idle, IDLE [3000] keep-alive connections that made one request each
#              and stay open: the gateway's RSS per idle HTTP connection (printed instead of p99)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${DURATION:-10s}
CONNS=${CONNS:-$([ "${VARIANT:-}" = big ] && echo 10 || echo 50)}
ROUNDS=${ROUNDS:-3}
VARIANT=${VARIANT:-keep-alive}
[ $# -ge 1 ] || { echo "usage: $0 GATEWAY_BINARY [GATEWAY_BINARY...]" >&2; exit 2; }
. "$ROOT/bench/lib.sh"
need_tools wrk curl taskset:util-linux ss:iproute2
for b in "$@"; do [ -x "$b" ] || die "not an executable: $b"; done
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release --quiet --workspace --bin kuzzle-gateway --bin kuzzle-node-sim || die "release build failed"
fi
[ "$(nproc)" -ge 2 ] || die "needs 2 CPUs (gateway on CPU 1, load on CPU 0)"
CLK_TCK=$(getconf CLK_TCK)

start_sims 0
hdr=(); [ "$VARIANT" = close ] && hdr=(-H "Connection: close")
path=/_now; nodes=("${SIM_PORTS[@]}")
if [ "$VARIANT" = big ]; then
  need_tools nginx
  mkdir -p "$WORK/www"; head -c 1048576 /dev/urandom >"$WORK/www/1m"
  chmod a+x "$WORK"; chmod -R a+rX "$WORK/www"
  big=$(pick_port 17670)
  # Health checks and /_now get a small answer; /1m is the file.
  nginx_one big 0 "$big" "sendfile on; tcp_nopush on;" "return 200 'ok'; } location = /1m { root $WORK/www;"
  path=/1m; nodes=("$big" "$big" "$big")
fi
# measure_idle PID PORT: "KIB N", the gateway's RSS per idle keep-alive connection: one request
# on each of IDLE connections, then every one of them held open and idle.
measure_idle() {
  local pid=$1 port=$2 r0 r1 holder
  r0=$(rss_kib "$pid")
  taskset -c 0 python3 -c '
import socket, sys, time
n, port = int(sys.argv[1]), int(sys.argv[2])
held = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /_now HTTP/1.1\r\nHost: x\r\n\r\n")
    got = b""
    while b"\r\n\r\n" not in got:
        got += s.recv(4096)
    held.append(s)
print("ready", flush=True)
time.sleep(600)' "$IDLE" "$port" >"$WORK/idle.out" 2>&1 &
  holder=$!
  wait_for_line "$WORK/idle.out" ready "idle connections" 60
  r1=$(rss_kib "$pid")
  kill "$holder" 2>/dev/null || true; wait "$holder" 2>/dev/null || true
  awk -v a="$r0" -v b="$r1" -v n="$IDLE" 'BEGIN { printf "%.2f %d", (b - a) / n, n }'
}

# measure_load PID PORT: "REQ/S P99-MS CPU-US/REQ" of one wrk load (after a 2 s warm-up).
measure_load() {
  local pid=$1 port=$2 c0 c1
  taskset -c 0 wrk -t1 -c"$CONNS" -d2s "${hdr[@]}" "http://127.0.0.1:$port$path" >/dev/null
  c0=$(cpu_ticks "$pid")
  taskset -c 0 wrk --latency -t1 -c"$CONNS" -d"$DURATION" "${hdr[@]}" "http://127.0.0.1:$port$path" >"$WORK/w.txt"
  c1=$(cpu_ticks "$pid")
  awk -v c="$((c1 - c0))" -v hz="$CLK_TCK" '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    $1 == "99%" { p99 = ms($2) } /requests in/ { n = $1 } /^Requests\/sec:/ { rps = $2 }
    END { printf "%.0f %.2f %.1f", rps, p99, (n > 0 ? 1e6 * c / hz / n : 0) }' "$WORK/w.txt"
}

if [ "$VARIANT" = idle ]; then
  IDLE=${IDLE:-3000}
  # The holder needs a descriptor per connection: the soft limit is often 1024.
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  [ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -gt "$((IDLE + 100))" ] ||
    die "IDLE=$IDLE needs more open files than this shell may have ($(ulimit -n))"
fi

declare -A RES
for r in $(seq 1 "$ROUNDS"); do
  i=0
  for b in "$@"; do
    i=$((i + 1))
    port=$(pick_port 17650); stats=$(pick_port 17660)
    gateway_config "$WORK/gw$i-$r.toml" "$port" "$stats" 1 "${nodes[@]}"
    RUST_LOG=warn taskset -c 1 "$b" --config "$WORK/gw$i-$r.toml" >"$WORK/gw$i-$r.log" 2>&1 &
    pid=$!; PIDS+=("$pid")
    wait_http "http://127.0.0.1:$port/_now" "$b"
    if [ "$VARIANT" = idle ]; then
      line=$(measure_idle "$pid" "$port"); what="RSS KiB per idle connection, connections"
    else
      line=$(measure_load "$pid" "$port"); what="req/s p99-ms cpu-us/req"
    fi
    RES[$i]="${RES[$i]:-}$line"$'\n'
    log "round $r $b: $line ($what)"
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  done
done
if [ "$VARIANT" = idle ]; then
  echo "$IDLE idle keep-alive connections (one request each), $ROUNDS interleaved rounds, median shown"
  printf '| %-40s | %11s | %16s |\n' build connections "RSS KiB per idle"
  printf '|%s|%s|%s|\n' ------------------------------------------ ------------: -----------------:
  i=0
  for b in "$@"; do
    i=$((i + 1))
    read -r kib n < <(printf '%s' "${RES[$i]}" | median_line)
    printf '| %-40s | %11s | %16s |\n' "$b" "$n" "$kib"
  done
  exit 0
fi
echo "wrk --latency -t1 -c$CONNS -d$DURATION ($VARIANT), $ROUNDS interleaved rounds, median req/s round shown"
printf '| %-40s | %9s | %8s | %10s |\n' build "req/s" "p99 ms" "CPU us/req"
printf '|%s|%s|%s|%s|\n' ------------------------------------------ ----------: ---------: -----------:
i=0
for b in "$@"; do
  i=$((i + 1))
  read -r rps p99 us < <(printf '%s' "${RES[$i]}" | median_line)
  printf '| %-40s | %9s | %8s | %10s |\n' "$b" "$rps" "$p99" "$us"
done
