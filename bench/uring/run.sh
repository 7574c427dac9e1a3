#!/usr/bin/env bash
# Issue 22's io_uring question, measured: is io_uring allowed in this sandbox, and does a relay on
# it cost less CPU per proxied keep-alive request than one on tokio's epoll? Four equally dumb
# single-threaded relays (one read and one write each way per request, 16 KiB buffer, one upstream
# connection per client): tokio current_thread (epoll), tokio-uring 0.5, a hand-written io_uring
# loop, and the same loop with SINGLE_ISSUER | DEFER_TASKRUN | COOP_TASKRUN; and nginx as a real
# proxy beside them (one worker): what a relay that does no HTTP work at all costs next to it, the
# floor of any proxy on this kernel path. Backend: a fixed-answer
# nginx (1 worker) on CPU 0; each relay on CPU 1; wrk -t1 -c50 on CPU 0. Rounds interleaved (order
# rotated), median shown; CPU per request from /proc/PID/stat (user, system) and schedstat (total).
#
# Usage: bench/uring/run.sh        Environment: ROUNDS [3], DURATION [5] seconds per measurement
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
. "$ROOT/bench/lib.sh"
need_tools nginx wrk taskset:util-linux ss:iproute2
[ "$(nproc)" -ge 2 ] || die "needs 2 CPUs (relays on CPU 1, nginx and wrk on CPU 0)"
export CARGO_TARGET_DIR=$ROOT/target/uring
(cd bench/uring && cargo build --release --quiet) || die "build of bench/uring failed"
B=$CARGO_TARGET_DIR/release

log "probe: $("$B/probe" 2>&1 | tr '\n' ' ')"

BACK=$(pick_port 18080)
nginx_one backend 0 "$BACK" "" "$FIXED_ANSWER"
# nginx as the proxy, as bench/perf.sh sets it up (1 worker on CPU 1, keep-alive to the backend):
# the real proxy the dumb relays are compared with, in the same run.
NGX=$(pick_port 18090)
nginx_one proxy 1 "$NGX" "upstream back { server 127.0.0.1:$BACK; keepalive 64; }" \
  'proxy_pass http://back; proxy_http_version 1.1; proxy_set_header Connection "";'

NAMES=(epoll tokio-uring raw-uring raw-uring-defer nginx-proxy)
declare -A PID PORT
PORT[nginx-proxy]=$NGX
PID[nginx-proxy]=$(pgrep -P "$(cat "$WORK/proxy/nginx.pid")" | head -1)
[ -n "${PID[nginx-proxy]}" ] || die "no nginx proxy worker"
for n in "${NAMES[@]}"; do
  [ "$n" = nginx-proxy ] && continue
  PORT[$n]=$(pick_port 19001)
  case $n in
    epoll) bin=proxy_epoll ;; tokio-uring) bin=proxy_tokio_uring ;; *) bin=proxy_raw_uring ;;
  esac
  defer=0; [ "$n" = raw-uring-defer ] && defer=1
  URING_DEFER=$defer taskset -c 1 "$B/$bin" "127.0.0.1:${PORT[$n]}" "127.0.0.1:$BACK" >"$WORK/$n.log" 2>&1 &
  PID[$n]=$!; PIDS+=($!)
  wait_http "http://127.0.0.1:${PORT[$n]}/" "$n"
done

# One measurement: "requests user_ticks system_ticks total_ns p99".
measure() {
  local n=$1 pid=${PID[$1]} u0 s0 ns0 u1 s1 ns1
  # schedstat per thread, summed: io_uring's kernel worker threads (iou-wrk) count too.
  read -r u0 s0 < <(awk '{ print $14, $15 }' "/proc/$pid/stat"); ns0=$(cat /proc/"$pid"/task/*/schedstat | awk '{ n += $1 } END { print n }')
  taskset -c 0 wrk -t1 -c50 -d"${DURATION}s" --latency "http://127.0.0.1:${PORT[$n]}/" >"$WORK/wrk.out" 2>&1 ||
    die "wrk failed on $n: $(tail -3 "$WORK/wrk.out")"
  read -r u1 s1 < <(awk '{ print $14, $15 }' "/proc/$pid/stat"); ns1=$(cat /proc/"$pid"/task/*/schedstat | awk '{ n += $1 } END { print n }')
  echo "$(awk '/requests in/ { print $1 }' "$WORK/wrk.out") $((u1 - u0)) $((s1 - s0)) $((ns1 - ns0)) $(awk '$1 == "99%" { print $2 }' "$WORK/wrk.out")"
}

for r in $(seq 1 "$ROUNDS"); do
  k=$(((r - 1) % ${#NAMES[@]})); order=("${NAMES[@]:$k}" "${NAMES[@]:0:$k}")
  for n in "${order[@]}"; do
    line=$(measure "$n")
    log "round $r $n: $line (requests, user ticks, system ticks, ns, p99)"
    echo "$r $n $line" >>"$WORK/results"
  done
done

echo "io_uring against epoll, $ROUNDS rounds of ${DURATION}s, $(date -u '+%Y-%m-%d %H:%M') UTC, kernel $(uname -r):"
echo
echo "| relay | requests/s | CPU us/request (total) | user share | total vs epoll (same round) |"
echo "|---|--:|--:|--:|--:|"
for n in "${NAMES[@]}"; do
  awk -v n="$n" -v d="$DURATION" '
    { tot[$1, $2] = $6 / $3 / 1000 }
    $2 == n { rps[++k] = $3 / d; us[k] = $6 / $3 / 1000; usr[k] = ($4 + $5 > 0) ? 100 * $4 / ($4 + $5) : 0; rd[k] = $1 }
    function med(a, m,   i, j, t, b) { for (i = 1; i <= m; i++) b[i] = a[i]
      for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (b[j] < b[i]) { t = b[i]; b[i] = b[j]; b[j] = t }
      return b[int((m + 1) / 2)] }
    END { for (i = 1; i <= k; i++) ratio[i] = us[i] / tot[rd[i], "epoll"]
      printf "| %s | %.0f | %.2f | %.0f %% | %.2f |\n", n, med(rps, k), med(us, k), med(usr, k), med(ratio, k) }' "$WORK/results"
done
