#!/usr/bin/env bash
# Side-by-side benchmark, one run, same load: straight to one simulated Kuzzle node, through
# kuzzle-gateway, through nginx and through haproxy (the seed stack's proxies, proxy-configs/).
#   1. requests/s and p50/p99 latency with wrk on GET /_now (keep-alive, then `Connection: close`);
#   2. RSS of each proxy with 1,000 idle WebSockets open (examples/ws_idle.rs).
# Prints two tables (also saved to target/bench/last-run.txt). Everything it starts is stopped on
# exit. Run it on a quiet machine: numbers from a loaded one mean nothing.
#
# Usage: bench/run.sh
# Environment (defaults in brackets):
#   DURATION [10s]  wrk duration per measurement (keep-alive)
#   CLOSE_DURATION [5s]  same for the `Connection: close` variant; 0 skips it
#   CONNS [50]      wrk connections          WRK_THREADS [1]  wrk threads
#   ROUNDS [1]      measurements per target and variant, interleaved; the median req/s one is shown
#   WS [1000]       idle WebSockets per proxy (0 skips the memory part)
#   PIN [1]         1: proxies on CPU 1 with one worker each, wrk and the sims on CPU 0 (fair
#                   between proxies on a 2-core machine); 0: no pinning, proxies with one worker
#                   per core
#   SKIP_BUILD [0]  1: use the existing release binaries
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${DURATION:-10s}
CLOSE_DURATION=${CLOSE_DURATION:-5s}
CONNS=${CONNS:-50}
WRK_THREADS=${WRK_THREADS:-1}
ROUNDS=${ROUNDS:-1}
WS=${WS:-1000}
PIN=${PIN:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
NCPU=$(nproc)

. "$ROOT/bench/lib.sh"
need_tools wrk nginx haproxy curl taskset:util-linux ss:iproute2

if [ "$SKIP_BUILD" != 1 ]; then
  log "building release binaries"
  cargo build --release --quiet --workspace --bin kuzzle-gateway --bin kuzzle-node-sim --example ws_idle ||
    die "release build failed"
fi
GW_BIN=$BIN_DIR/kuzzle-gateway
SIM_BIN=$BIN_DIR/kuzzle-node-sim
WS_BIN=$BIN_DIR/examples/ws_idle
for b in "$GW_BIN" "$SIM_BIN" "$WS_BIN"; do [ -x "$b" ] || die "missing $b (build it or drop SKIP_BUILD)"; done

# 1,000 WebSockets cost the proxy 2,000 descriptors; children inherit this limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge $((WS * 2 + 512)) ] ||
  die "open-file limit $(ulimit -n) is too low for WS=$WS"

# --- CPU placement ---------------------------------------------------------------------------
if [ "$PIN" = 1 ] && [ "$NCPU" -ge 2 ]; then
  LOAD_CPUS=0; PROXY_CPUS=1; WORKERS=1
  PLACEMENT="pinned: proxies on CPU 1 (1 worker thread/process each); wrk, ws_idle and the sims on CPU 0"
else
  LOAD_CPUS=0-$((NCPU - 1)); PROXY_CPUS=$LOAD_CPUS; WORKERS=$NCPU
  PLACEMENT="not pinned: everything shares CPUs $LOAD_CPUS; proxies with $WORKERS workers"
fi

# --- start the simulated nodes ---------------------------------------------------------------
start_sims "$LOAD_CPUS"
GW_PORT=$(pick_port 17610); NGX_PORT=$(pick_port 17611); HA_PORT=$(pick_port 17612)
GW_STATS=$(pick_port 17620); HA_STATS=$(pick_port 17621)

# --- proxy configurations: copies of proxy-configs/ with this run's ports --------------------
gateway_config "$WORK/gateway.toml" "$GW_PORT" "$GW_STATS" "$WORKERS"

mkdir -p "$WORK/nginx"
subst_nodes <proxy-configs/nginx.conf |
  sed -e "s/listen 7512 /listen 127.0.0.1:$NGX_PORT /" \
    -e "s/^worker_processes auto;/worker_processes $WORKERS;/" >"$WORK/nginx.conf"
nginx -q -t -p "$WORK/nginx/" -c "$WORK/nginx.conf" 2>"$WORK/nginx-t.log" || die "nginx config: $(cat "$WORK/nginx-t.log")"

subst_nodes <proxy-configs/haproxy.cfg |
  sed -e "s/bind :7513/bind 127.0.0.1:$HA_PORT/" -e "s/bind 127\.0\.0\.1:7575/bind 127.0.0.1:$HA_STATS/" \
    -e "s/^    maxconn \([0-9]*\)/    nbthread $WORKERS\n    maxconn \1/" >"$WORK/haproxy.cfg"
haproxy -q -c -f "$WORK/haproxy.cfg" || die "haproxy config copy is invalid: $WORK/haproxy.cfg"

# --- start the proxies -----------------------------------------------------------------------
RUST_LOG=warn taskset -c "$PROXY_CPUS" "$GW_BIN" --config "$WORK/gateway.toml" >"$WORK/gateway.log" 2>&1 &
GW_PID=$!; PIDS+=("$GW_PID")
taskset -c "$PROXY_CPUS" nginx -p "$WORK/nginx/" -c "$WORK/nginx.conf" -g 'daemon off;' >"$WORK/nginx.log" 2>&1 &
NGX_PID=$!; PIDS+=("$NGX_PID")
taskset -c "$PROXY_CPUS" haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
HA_PID=$!; PIDS+=("$HA_PID")

declare -A URL PID
URL[direct]="127.0.0.1:${SIM_PORTS[0]}"; PID[direct]=${SIM_PIDS[0]}
URL[kuzzle-gateway]="127.0.0.1:$GW_PORT"; PID[kuzzle-gateway]=$GW_PID
URL[nginx]="127.0.0.1:$NGX_PORT"; PID[nginx]=$NGX_PID
URL[haproxy]="127.0.0.1:$HA_PORT"; PID[haproxy]=$HA_PID
TARGETS=(direct kuzzle-gateway nginx haproxy)
PROXIES=(kuzzle-gateway nginx haproxy)

for t in "${PROXIES[@]}"; do wait_http "http://${URL[$t]}/_now" "$t"; done

# Sanity: every proxy reaches the nodes and strips the per-node prefix.
for t in "${PROXIES[@]}"; do
  node=$(curl -s -D - -o /dev/null --max-time 2 "http://${URL[$t]}/cluster_kuzzle_2/_now" |
    tr -d '\r' | awk -F': ' 'tolower($1) == "x-kuzzle-node" { print $2 }')
  [ "$node" = cluster_kuzzle_2 ] || die "$t: /cluster_kuzzle_2/_now reached node '${node:-none}', not cluster_kuzzle_2"
done
log "sims on ${SIM_PORTS[*]}; gateway :$GW_PORT, nginx :$NGX_PORT, haproxy :$HA_PORT; $PLACEMENT"

# --- 1. memory with idle WebSockets ----------------------------------------------------------
declare -A RSS0 RSS1 WSOK WSMS
if [ "$WS" -gt 0 ]; then
  for t in "${TARGETS[@]}"; do
    RSS0[$t]=$(rss_kib "${PID[$t]}")
    ws_open "$t" "ws://${URL[$t]}/" "$WS"
    WSMS[$t]=$(awk '/^ready/ { print $3 }' "$WORK/ws-$t.out")
    RSS1[$t]=$(rss_kib "${PID[$t]}")
    ws_release
    WSOK[$t]=$(awk '/^verified/ { print $2 }' "$WORK/ws-$t.out")
    log "$t: RSS $(mib "${RSS0[$t]}") MiB idle, $(mib "${RSS1[$t]}") MiB with $WS WebSockets (opened in ${WSMS[$t]} ms), verified ${WSOK[$t]}"
  done
fi

# --- 2. throughput and latency ---------------------------------------------------------------
# run_wrk TARGET VARIANT DURATION -> "rps p50_ms p99_ms errors cpu_pct cpu_us_per_request", the CPU
# being the target's own (the proxy's, or the node's for direct), in % of one core.
run_wrk() {
  local t=$1 v=$2 d=$3 hdr=() out=$WORK/wrk-$1-$2.txt n
  [ "$v" = close ] && hdr=(-H "Connection: close")
  with_cpu "${PID[$t]}" taskset -c "$LOAD_CPUS" wrk --latency -t"$WRK_THREADS" -c"$CONNS" -d"$d" --timeout 5s \
    "${hdr[@]}" "http://${URL[$t]}/_now" >"$out" 2>&1 || die "wrk failed on $t: $(tail -3 "$out")"
  n=$(awk '/requests in/ { print $1 }' "$out")
  parse_wrk <"$out" | awk -v cpu="$CPU_S" -v s="$WALL_S" -v n="$n" \
    '{ printf "%s %.0f %.1f\n", $0, 100 * cpu / s, (n > 0 ? 1e6 * cpu / n : 0) }'
}

VARIANTS=(keep-alive)
[ "$CLOSE_DURATION" != 0 ] && VARIANTS+=(close)
declare -A RES
log "warm-up: 2s of wrk per target"
for t in "${TARGETS[@]}"; do run_wrk "$t" keep-alive 2s >/dev/null; done
for v in "${VARIANTS[@]}"; do
  d=$DURATION; [ "$v" = close ] && d=$CLOSE_DURATION
  for r in $(seq 1 "$ROUNDS"); do
    for t in "${TARGETS[@]}"; do
      line=$(run_wrk "$t" "$v" "$d")
      RES[$t,$v]="${RES[$t,$v]:-}$line"$'\n'
      log "round $r $v $t: $line (req/s p50 p99 errors cpu% cpu-us/req)"
    done
  done
done
declare -A RSS3
for t in "${TARGETS[@]}"; do RSS3[$t]=$(rss_kib "${PID[$t]}"); done

# --- report ----------------------------------------------------------------------------------
mkdir -p target/bench
OUT=target/bench/last-run.txt
{
  echo "kuzzle-gateway benchmark"
  bench_header ""
  echo "placement: $PLACEMENT"
  echo "load: wrk --latency -t$WRK_THREADS -c$CONNS -d$DURATION http://HOST/_now (keep-alive)" \
    "and -H 'Connection: close' -d$CLOSE_DURATION; $ROUNDS round(s), median shown"
  echo
  printf '| %-14s | %-10s | %9s | %9s | %8s | %8s | %6s | %6s | %10s |\n' target variant "req/s" "vs direct" \
    "p50 ms" "p99 ms" errors "CPU %" "CPU us/req"
  printf '|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n' ---------------- ------------ ----------: ----------: ---------: \
    ---------: -------: -------: -----------:
  for v in "${VARIANTS[@]}"; do
    base=$(printf '%s' "${RES[direct,$v]}" | median_line | awk '{ print $1 }')
    for t in "${TARGETS[@]}"; do
      read -r rps p50 p99 err cpu us < <(printf '%s' "${RES[$t,$v]}" | median_line)
      ratio=$(awk -v a="$rps" -v b="$base" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
      printf '| %-14s | %-10s | %9s | %9s | %8s | %8s | %6s | %6s | %10s |\n' "$t" "$v" "$rps" "$ratio" "$p50" \
        "$p99" "$err" "$cpu" "$us"
    done
  done
  if [ "$WS" -gt 0 ]; then
    echo
    echo "memory (VmRSS of the process and its children; 'direct' is the simulated node itself):"
    echo
    printf '| %-14s | %9s | %14s | %12s | %10s | %9s | %13s |\n' target "idle MiB" "$WS WS MiB" "KiB per WS" "open ms" verified "after load MiB"
    printf '|%s|%s|%s|%s|%s|%s|%s|\n' ---------------- ----------: ---------------: -------------: \
      -----------: ----------: --------------:
    for t in "${TARGETS[@]}"; do
      per=$(awk -v a="${RSS1[$t]}" -v b="${RSS0[$t]}" -v n="$WS" 'BEGIN { printf "%.1f", (a - b) / n }')
      printf '| %-14s | %9s | %14s | %12s | %10s | %9s | %13s |\n' "$t" "$(mib "${RSS0[$t]}")" \
        "$(mib "${RSS1[$t]}")" "$per" "${WSMS[$t]}" "${WSOK[$t]}" "$(mib "${RSS3[$t]}")"
    done
  fi
} | tee "$OUT"
log "saved to $OUT"
