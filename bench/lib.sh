# Shared helpers for bench/*.sh (sourced, not run): logging, process cleanup, free ports,
# bounded readiness waits, RSS, starting the simulated nodes and writing a gateway config copy.
# Needs ROOT (repository root) set by the caller.

log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Every process started goes into PIDS; the EXIT trap stops them (TERM, then KILL after 5 s).
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

# Wait until URL answers 200, at most 20 s.
wait_http() {
  local url=$1 what=$2
  for _ in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)" = 200 ] && return 0
    sleep 0.2
  done
  die "$what: $url did not answer 200 within 20s"
}

# VmRSS in KiB of a process plus its descendants (nginx workers).
rss_kib() {
  local total=0 p kids
  local todo=("$1")
  while [ ${#todo[@]} -gt 0 ]; do
    p=${todo[0]}; todo=("${todo[@]:1}")
    total=$((total + $(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0)))
    kids=$(cat /proc/"$p"/task/*/children 2>/dev/null || true)
    for k in $kids; do todo+=("$k"); done
  done
  echo "$total"
}
# CPU time (user + system) in clock ticks (getconf CLK_TCK, usually 100/s) of a process plus its
# descendants (nginx workers).
cpu_ticks() {
  local total=0 p kids
  local todo=("$1")
  while [ ${#todo[@]} -gt 0 ]; do
    p=${todo[0]}; todo=("${todo[@]:1}")
    total=$((total + $(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{ print $12 + $13 }' || echo 0)))
    kids=$(cat /proc/"$p"/task/*/children 2>/dev/null || true)
    for k in $kids; do todo+=("$k"); done
  done
  echo "$total"
}
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# start_sims CPUS: 3 release kuzzle-node-sim cluster_kuzzle_1..3 on free ports from 17601; sets
# SIM_PORTS and SIM_PIDS, returns once each answers GET /_now.
start_sims() {
  local cpus=$1 i
  SIM_PORTS=(); SIM_PIDS=()
  for i in 1 2 3; do SIM_PORTS+=("$(pick_port $((17600 + i)))"); done
  for i in 1 2 3; do
    RUST_LOG=warn taskset -c "$cpus" "$ROOT/target/release/kuzzle-node-sim" \
      --listen "127.0.0.1:${SIM_PORTS[$((i - 1))]}" --name "cluster_kuzzle_$i" >"$WORK/sim$i.log" 2>&1 &
    PIDS+=($!); SIM_PIDS+=($!)
  done
  for i in 1 2 3; do
    wait_for_line "$WORK/sim$i.log" "listening on" "kuzzle-node-sim cluster_kuzzle_$i"
    wait_http "http://127.0.0.1:${SIM_PORTS[$((i - 1))]}/_now" "cluster_kuzzle_$i"
  done
}

# Rewrite the seed ports 17601..17603 of a proxy-configs/ file (stdin) to this run's sims.
subst_nodes() {
  sed -e "s/127\.0\.0\.1:17601/127.0.0.1:${SIM_PORTS[0]}/" \
    -e "s/127\.0\.0\.1:17602/127.0.0.1:${SIM_PORTS[1]}/" -e "s/127\.0\.0\.1:17603/127.0.0.1:${SIM_PORTS[2]}/"
}

# gateway_config OUT PORT STATS_PORT THREADS: proxy-configs/gateway.toml with this run's ports.
gateway_config() {
  local out=$1 port=$2 stats=$3 threads=$4
  subst_nodes <"$ROOT/proxy-configs/gateway.toml" |
    sed -e "s/^listen = \"0\.0\.0\.0:7512\"/listen = \"127.0.0.1:$port\"/" \
      -e "s/^listen = \"127\.0\.0\.1:7575\"/listen = \"127.0.0.1:$stats\"/" \
      -e "s/^threads = 0 /threads = $threads /" >"$out"
  grep -q "127.0.0.1:$port" "$out" || die "could not set the gateway's port in $out"
  "$ROOT/target/release/kuzzle-gateway" --config "$out" --check >/dev/null || die "gateway config copy is invalid: $out"
}
