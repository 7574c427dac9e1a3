# shellcheck shell=bash
# Shared helpers for bench/*.sh (sourced, not run): logging, process cleanup, free ports,
# bounded readiness waits, RSS, starting the simulated nodes and writing a gateway config copy.
# Needs ROOT (repository root) set by the caller. Binaries are taken from BIN_DIR (if unset: cargo's release
# directory: $CARGO_TARGET_DIR/release, else target/release) and the gateway from GW_BIN if set.
BIN_DIR=${BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}

# Flags every simulated node of a benchmark gets, as an array: SIM_FLAGS, default --keep-alive.
# The benchmarks measure the gateway, not a TCP handshake per request to a node; real Kuzzle 2
# closes the connection after every response (the sim's default), which SIM_FLAGS="" reproduces.
read -r -a SIM_ARGS <<<"${SIM_FLAGS-"--keep-alive"}"

log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Every process started goes into PIDS; the EXIT trap stops them (TERM, then KILL after 5 s) and
# removes $WORK (kept on failure, or with KEEP_WORK=1: configurations, logs, strace counts).
WORK=$(mktemp -d /tmp/kuzzle-bench.XXXXXX)
PIDS=()
bench_cleanup() {
  local rc=$?
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [ "$rc" != 0 ]; then
    log "failed (exit $rc); logs kept in $WORK"
  elif [ "${KEEP_WORK:-0}" = 1 ]; then
    log "KEEP_WORK=1: logs kept in $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

# Install Debian packages for missing commands: need_tools cmd[:package] ...
need_tools() {
  local pkgs=() spec cmd pkg
  for spec in "$@"; do
    cmd=${spec%%:*}; pkg=${spec#*:}
    command -v "$cmd" >/dev/null 2>&1 || pkgs+=("$pkg")
  done
  [ ${#pkgs[@]} -eq 0 ] && return 0
  log "installing ${pkgs[*]}"
  local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq || die "apt-get update failed (needed for ${pkgs[*]})"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${pkgs[@]}" >/dev/null ||
    die "cannot install ${pkgs[*]}"
}

# A loopback port no socket uses (a listener, or a TIME-WAIT left by a previous run, which makes a
# bind without SO_REUSEADDR fail) and that this run has not handed out yet, from $1 upwards.
# Handed-out ports are kept in a file so that `$(pick_port N)` (a subshell) remembers them too.
pick_port() {
  local p=$1
  touch "$WORK/ports.taken"
  for _ in $(seq 1 200); do
    if ! grep -qx "$p" "$WORK/ports.taken" && [ -z "$(ss -Htan "sport = :$p" 2>/dev/null)" ] &&
      ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p" >>"$WORK/ports.taken"
      echo "$p"
      return 0
    fi
    p=$((p + 1))
  done
  die "no free port from $1"
}

# Wait until FILE has a line matching REGEX, at most SECS seconds.
wait_for_line() {
  local file=$1 re=$2 what=$3 secs=${4:-30}
  for _ in $(seq 1 $((secs * 10))); do
    grep -qE "$re" "$file" 2>/dev/null && return 0
    sleep 0.1
  done
  die "$what: not ready within ${secs}s (log: $file)"
}

# The `location /` of a backend nginx that answers every request with a small fixed JSON body.
FIXED_ANSWER="default_type application/json; return 200 '{\"status\":200,\"result\":{\"now\":1764633600000}}';"

# nginx_one NAME CPUS PORT HTTP LOCATION: one nginx, one worker, on CPUS (taskset list), listening
# on 127.0.0.1:PORT; HTTP is extra http-level configuration (an upstream, keepalive_timeout, or
# nothing), LOCATION the body of `location /` (e.g. $FIXED_ANSWER). Returns once it answers.
nginx_one() {
  local d=$WORK/$1
  mkdir -p "$d"
  cat >"$d/nginx.conf" <<EOF
worker_processes 1; daemon off; pid $d/nginx.pid; error_log $d/error.log warn;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000; $4
  server { listen 127.0.0.1:$3; location / { $5 } } }
EOF
  taskset -c "$2" nginx -c "$d/nginx.conf" >/dev/null 2>&1 &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$3/" "$1"
}

# Wait until URL answers 200, at most 20 s.
wait_http() {
  local url=$1 what=$2
  for _ in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)" = 200 ] && return 0
    sleep 0.2
  done
  die "$what: $url did not answer 200 within 20s"
}

# proc_tree PID: PID and its descendants (nginx workers), one a line.
proc_tree() {
  local p todo=("$1")
  while [ ${#todo[@]} -gt 0 ]; do
    p=${todo[0]}; todo=("${todo[@]:1}")
    echo "$p"
    for k in $(cat /proc/"$p"/task/*/children 2>/dev/null || true); do todo+=("$k"); done
  done
}

# VmRSS in KiB of a process plus its descendants.
rss_kib() {
  local total=0 p
  for p in $(proc_tree "$1"); do
    total=$((total + $(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0)))
  done
  echo "$total"
}
# cpu_split PID: "TOTAL USER": CPU time (user + system, and user alone) in clock ticks (getconf
# CLK_TCK, usually 100/s) of a process plus its descendants (nginx workers), read in one pass.
cpu_split() {
  local p
  for p in $(proc_tree "$1"); do sed 's/.*) //' "/proc/$p/stat" 2>/dev/null; done |
    awk '{ t += $12 + $13; u += $12 } END { print t + 0, u + 0 }'
}
# kernel_counts PID: "FAULTS SWITCHES": minor page faults and context switches (voluntary and not,
# every thread) of a process plus its descendants: kernel work that strace does not show.
kernel_counts() {
  local p f=0 c=0
  for p in $(proc_tree "$1"); do
    # A process gone meanwhile reads as 0 (awk prints a line even for no input).
    f=$((f + $(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{ f = $8 } END { print f + 0 }')))
    c=$((c + $(cat /proc/"$p"/task/*/status 2>/dev/null | awk '/ctxt_switches/ { s += $2 } END { print s + 0 }')))
  done
  echo "$f $c"
}
# cpu_ticks PID: the TOTAL of cpu_split.
cpu_ticks() { cpu_split "$1" | cut -d' ' -f1; }
# Busy, total and stolen ticks of each CPU, "busy total steal" per line (cpu0 first), from
# /proc/stat (steal: time the hypervisor ran something else; it counts as busy).
cpu_lines() { awk '/^cpu[0-9]/ { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t, $9 }' /proc/stat; }

# with_cpu PID CMD...: run CMD (output is the caller's to redirect); set CPU_S to the CPU seconds
# PID and its descendants used meanwhile (user + system), USER_PCT to the user share of it (%), WALL_S to the wall-clock seconds and
# BUSY to how busy each CPU of the machine was meanwhile, all processes counted ("93 71": % of
# cpu0, of cpu1): shows whether the load side was saturated, and what else ran on the proxy's CPU;
# STEAL to the share of each CPU the hypervisor gave to other machines meanwhile ("0 12", %): on
# a shared host, a window with steal charges the proxy more CPU for the same work.
CLK_TCK=$(getconf CLK_TCK)
# shellcheck disable=SC2034  # CPU_S, WALL_S, BUSY and STEAL are the callers' to read
with_cpu() {
  local pid=$1 c0 u0 c1 u1 t0 s0 s1 rc=0 c
  shift
  read -r c0 u0 <<<"$(cpu_split "$pid")"; t0=$(date +%s%N); s0=$(cpu_lines)
  "$@" || rc=$?
  read -r c1 u1 <<<"$(cpu_split "$pid")"
  c=$((c1 - c0))
  CPU_S=$(awk -v c="$c" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", c / hz }')
  USER_PCT=$(awk -v u="$((u1 - u0))" -v c="$c" 'BEGIN { printf "%.0f", (c > 0) ? 100 * u / c : 0 }')
  WALL_S=$(awk -v ns="$(($(date +%s%N) - t0))" 'BEGIN { printf "%.3f", ns / 1e9 }')
  s1=$(cpu_lines)
  BUSY=$(paste -d' ' <(echo "$s0") <(echo "$s1") |
    awk '{ printf "%s%.0f", (NR > 1 ? " " : ""), ($5 > $2) ? 100 * ($4 - $1) / ($5 - $2) : 0 }')
  STEAL=$(paste -d' ' <(echo "$s0") <(echo "$s1") |
    awk '{ printf "%s%.0f", (NR > 1 ? " " : ""), ($5 > $2) ? 100 * ($6 - $3) / ($5 - $2) : 0 }')
  return "$rc"
}

# stop_proc PID: TERM, KILL after 5 s, and forget it (so the exit trap never signals a reused PID).
stop_proc() {
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for i in "${!PIDS[@]}"; do [ "${PIDS[$i]}" = "$pid" ] && unset 'PIDS[i]'; done
  return 0
}
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# start_sims CPUS: 3 release kuzzle-node-sim cluster_kuzzle_1..3 on free ports from 17601; sets
# SIM_PORTS and SIM_PIDS, returns once each answers GET /_now.
start_sims() {
  local cpus=$1 i
  SIM_PORTS=(); SIM_PIDS=()
  for i in 1 2 3; do SIM_PORTS+=("$(pick_port $((17600 + i)))"); done
  for i in 1 2 3; do
    RUST_LOG=warn taskset -c "$cpus" "$BIN_DIR/kuzzle-node-sim" "${SIM_ARGS[@]}" \
      --listen "127.0.0.1:${SIM_PORTS[$((i - 1))]}" --name "cluster_kuzzle_$i" >"$WORK/sim$i.log" 2>&1 &
    PIDS+=($!); SIM_PIDS+=($!)
  done
  for i in 1 2 3; do
    wait_for_line "$WORK/sim$i.log" "listening on" "kuzzle-node-sim cluster_kuzzle_$i"
    wait_http "http://127.0.0.1:${SIM_PORTS[$((i - 1))]}/_now" "cluster_kuzzle_$i"
  done
}

# subst_nodes [P1 P2 P3]: rewrite the seed ports 17601..17603 of a proxy-configs/ file (stdin) to
# ports P1..P3 (default: this run's sims, SIM_PORTS).
subst_nodes() {
  local p=("${@:-}")
  [ $# -eq 3 ] || p=("${SIM_PORTS[@]}")
  sed -e "s/127\.0\.0\.1:17601/127.0.0.1:${p[0]}/" \
    -e "s/127\.0\.0\.1:17602/127.0.0.1:${p[1]}/" -e "s/127\.0\.0\.1:17603/127.0.0.1:${p[2]}/"
}

# gateway_config OUT PORT STATS_PORT THREADS [P1 P2 P3]: proxy-configs/gateway.toml with this run's
# ports (nodes on P1..P3, default the sims), checked with the gateway binary GW_BIN. SDK_PINGS, when
# set, replaces `[gateway] sdk_pings` ("forward": every SDK heartbeat to the node, as nginx does).
gateway_config() {
  local out=$1 port=$2 stats=$3 threads=$4
  shift 4
  subst_nodes "$@" <"$ROOT/proxy-configs/gateway.toml" |
    sed -e "s/^listen = \"0\.0\.0\.0:7512\"/listen = \"127.0.0.1:$port\"/" \
      -e "s/^listen = \"127\.0\.0\.1:7575\"/listen = \"127.0.0.1:$stats\"/" \
      -e "s/^threads = 0 /threads = $threads /" \
      -e "s/^sdk_pings = \"answer\"/sdk_pings = \"${SDK_PINGS:-answer}\"/" >"$out"
  grep -q "127.0.0.1:$port" "$out" || die "could not set the gateway's port in $out"
  "${GW_BIN:-$BIN_DIR/kuzzle-gateway}" --config "$out" --check >/dev/null || die "gateway config copy is invalid: $out"
}

# Prints "rps p50_ms p99_ms errors" from wrk --latency output (stdin).
parse_wrk() {
  awk '
    function ms(v) {
      if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 }
      if (v ~ /ms$/) { sub(/ms$/, "", v); return v + 0 }
      if (v ~ /m$/)  { sub(/m$/, "", v);  return v * 60000 }
      if (v ~ /s$/)  { sub(/s$/, "", v);  return v * 1000 }
      return v + 0
    }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    /^Requests\/sec:/ { rps = $2 }
    /Socket errors:/ { gsub(/,/, ""); err += $4 + $6 + $8 + $10 }
    /Non-2xx or 3xx responses:/ { err += $5 }
    END { printf "%.0f %.2f %.2f %d\n", rps, p50, p99, err }'
}

# The line of stdin (space-separated, numeric first field) with the median first field.
median_line() { grep -v '^$' | sort -n -k1,1 | awk '{ a[NR] = $0 } END { print a[int((NR + 1) / 2)] }'; }

# bench_header [START]: the first lines of a report: date (START, when the run began, and now),
# machine, tool versions (GW_BIN: the gateway binary).
bench_header() {
  local now
  now=$(date -u '+%Y-%m-%d %H:%M UTC')
  if [ -n "${1:-}" ]; then echo "date: $1 to ${now#* }"; else echo "date: $now"; fi
  echo "machine: $(lscpu | awk -F: '/Model name/ { gsub(/^ +/, "", $2); print $2 }'), $(nproc) CPUs," \
    "$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r)"
  echo "versions: $("$GW_BIN" --version 2>/dev/null | head -1), $(nginx -v 2>&1 | sed 's/.*: //')," \
    "$(haproxy -v | head -1 | awk '{ print "haproxy " $3 }'), $(wrk -v 2>&1 | head -1 | awk '{ print $1, $2 }')"
}

# ws_open NAME URL COUNT [ROUND_TRIPS [OPTION...]]: start examples/ws_idle (binary WS_BIN) on CPUs
# LOAD_CPUS with COUNT WebSockets to URL (and any further ws_idle options, e.g. --ping-every 2),
# and return once all are open and idle (dies if they do not open in 120 s). Its output is
# $WORK/ws-NAME.out; ws_release finishes it.
ws_open() {
  local name=$1 url=$2 count=$3 rt=${4:-0} fifo=$WORK/ws-$1.ctl
  rm -f "$fifo" "$WORK/ws-$name.out"
  mkfifo "$fifo"
  taskset -c "$LOAD_CPUS" "$WS_BIN" "$url" --count "$count" --concurrency 50 --hold 300 --round-trips "$rt" "${@:5}" \
    <"$fifo" >"$WORK/ws-$name.out" 2>"$WORK/ws-$name.err" &
  WS_PID=$!; PIDS+=("$WS_PID")
  exec 3>"$fifo"    # keeps ws_idle holding until ws_release writes a line
  for _ in $(seq 1 1200); do
    grep -qE '^(ready|failed)' "$WORK/ws-$name.out" 2>/dev/null && break
    kill -0 "$WS_PID" 2>/dev/null || break
    sleep 0.1
  done
  grep -q '^ready' "$WORK/ws-$name.out" ||
    die "$name: $count WebSockets did not open: $(cat "$WORK/ws-$name.out" "$WORK/ws-$name.err" 2>/dev/null | head -3)"
}

# ws_release: let the ws_idle of the last ws_open go on (its round trips, the check that every
# socket still answers, the close) and wait for it to exit.
ws_release() {
  echo release >&3
  exec 3>&-
  wait "$WS_PID" || true
}
