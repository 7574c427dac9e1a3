#!/usr/bin/env bash
# Hot reload compared: kuzzle-gateway, nginx (`nginx -s reload`) and haproxy 2.6 (master-worker,
# seamless `-sf` reload with `expose-fd listeners`), same scenario for each:
#   WS WebSocket clients exchanging Kuzzle `server:now` messages and HTTP clients (half a new
#   connection per request, half keep-alive) run the whole time, while CHANGES configuration
#   changes are applied (nodes added and removed among 4 simulated nodes, balancing algorithm
#   switched, one broken configuration in the middle), then a binary upgrade
#   (kuzzle-gateway --upgrade; nginx USR2 + WINCH + QUIT; haproxy USR2, which re-executes the binary).
# Prints a table of what the clients saw: WebSocket disconnects, lost messages, HTTP errors,
# non-2xx and refused connections (also saved to target/bench/reload-compare.txt).
#
# MEMBERSHIP=redis: the gateway alone (nginx and haproxy cannot read Redis), its 3 nodes learned
# from Redis (simulated Kuzzle 2 nodes on 127.0.0.2..4 with their ID cards), the changes switch
# the algorithm only, then UPGRADES binary upgrades in a row. A node learned from Redis starts
# DOWN until checked, so this is where an upgrade that hands over only the sockets answers
# "no node" (non-2xx). Compare builds with GW_BIN (e.g. main's binary against a branch's).
# With REDIS_URL (and NODE_PORT, default 7512) the nodes of an already running cluster are used
# instead, e.g. the real Kuzzle 2 nodes of `scripts/kuzzle-real 3 --port 17512`.
#
# Usage: bench/reload-compare.sh
# Environment (defaults in brackets):
#   WS [200]  CHANGES [50]  HTTP [8] HTTP clients  INTERVAL [0.4] seconds between two changes
#   TARGETS ["gateway nginx haproxy"; "gateway" with MEMBERSHIP=redis]  SKIP_BUILD [0]
#   BIN_DIR [target/release]  GW_BIN [$BIN_DIR/kuzzle-gateway]  MEMBERSHIP [static] or redis
#   UPGRADES [1] binary upgrades in a row  LABEL [the target's name] first column of the table
#   REDIS_URL, NODE_PORT [7512]: with MEMBERSHIP=redis, a running cluster's Redis and HTTP port
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

WS=${WS:-200}
CHANGES=${CHANGES:-50}
HTTP=${HTTP:-8}
INTERVAL=${INTERVAL:-0.4}
MEMBERSHIP=${MEMBERSHIP:-static}
case $MEMBERSHIP in
  static) TARGETS=${TARGETS:-"gateway nginx haproxy"} ;;
  redis) TARGETS=gateway ;;
  *) echo "MEMBERSHIP is static or redis, not $MEMBERSHIP" >&2; exit 2 ;;
esac
UPGRADES=${UPGRADES:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
BIN_DIR=${BIN_DIR:-$ROOT/target/release}

. "$ROOT/bench/lib.sh"
need_tools curl python3
case " $TARGETS " in *" nginx "*) need_tools nginx ;; esac
case " $TARGETS " in *" haproxy "*) need_tools haproxy ;; esac
[ "$MEMBERSHIP" = redis ] && need_tools redis-server:redis-server

if [ "$SKIP_BUILD" != 1 ]; then
  log "building release binaries"
  cargo build --release --quiet --workspace --bin kuzzle-gateway --bin kuzzle-node-sim --example reload_load ||
    die "release build failed"
fi
GW_BIN=${GW_BIN:-$BIN_DIR/kuzzle-gateway}
SIM_BIN=$BIN_DIR/kuzzle-node-sim
LOAD_BIN=$BIN_DIR/examples/reload_load
# Absolute path: nginx's binary upgrade re-executes argv[0].
NGINX_BIN=$(command -v nginx)
for b in "$GW_BIN" "$SIM_BIN" "$LOAD_BIN"; do [ -x "$b" ] || die "missing $b (build it or drop SKIP_BUILD)"; done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

SIM_PORTS=()
if [ "$MEMBERSHIP" = redis ] && [ -n "${REDIS_URL:-}" ]; then
  # A running cluster: its nodes' ID cards are in this Redis.
  K2_PORT=${NODE_PORT:-7512}
elif [ "$MEMBERSHIP" = redis ]; then
  # A Redis, and 3 simulated Kuzzle 2 nodes k2..k4 on 127.0.0.2..4, one port, with ID cards.
  REDIS_PORT=$(pick_port 17790)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
  PIDS+=($!)
  wait_for_line "$WORK/redis.log" "Ready to accept connections" "redis-server"
  K2_PORT=$(pick_port 17780)
  for i in 2 3 4; do
    RUST_LOG=warn "$SIM_BIN" "${SIM_ARGS[@]}" --listen "127.0.0.$i:$K2_PORT" --name "k$i" --kuzzle2 \
      --redis "redis://127.0.0.1:$REDIS_PORT/0" --heartbeat 1s >"$WORK/sim$i.log" 2>&1 &
    PIDS+=($!)
  done
  for i in 2 3 4; do
    wait_for_line "$WORK/sim$i.log" "listening on" "kuzzle-node-sim k$i"
    wait_http "http://127.0.0.$i:$K2_PORT/_healthCheck" "k$i"
  done
else
  # 4 simulated nodes n1..n4.
  for i in 1 2 3 4; do SIM_PORTS+=("$(pick_port $((17700 + i)))"); done
  for i in 1 2 3 4; do
    RUST_LOG=warn "$SIM_BIN" "${SIM_ARGS[@]}" --listen "127.0.0.1:${SIM_PORTS[$((i - 1))]}" --name "n$i" >"$WORK/sim$i.log" 2>&1 &
    PIDS+=($!)
  done
  for i in 1 2 3 4; do
    wait_for_line "$WORK/sim$i.log" "listening on" "kuzzle-node-sim n$i"
    wait_http "http://127.0.0.1:${SIM_PORTS[$((i - 1))]}/_healthCheck" "n$i"
  done
fi

# Nodes of change I: n1 always, n2..n4 by the bits of a small mix of I (deterministic).
nodes_of() {
  local i=$1 v out=1
  v=$(((i * 5 + 3) % 8))
  ((v & 1)) && out="$out 2"
  ((v & 2)) && out="$out 3"
  ((v & 4)) && out="$out 4"
  echo "$out"
}
ALGOS=(leastconn roundrobin source)

# gateway_conf OUT PORT STATS SOCKET ALGO "NODES" [broken]
gateway_conf() {
  local out=$1 port=$2 stats=$3 sock=$4 algo=$5 nodes=$6 broken=${7:-} n
  {
    echo "[gateway]"
    echo "listen = \"127.0.0.1:$port\""
    echo "upgrade_socket = \"$sock\""
    echo "hard_stop_after = \"120s\""
    [ -n "$broken" ] && echo "no_such_setting = 1"
    echo "[stats]"
    echo "listen = \"127.0.0.1:$stats\""
    echo "[balance]"
    echo "algorithm = \"$algo\""
    echo "[health]"
    echo "path = \"/_healthCheck\""
    echo "kuzzle2_path = \"/_healthCheck\""
    echo "interval = \"1s\""
    if [ "$MEMBERSHIP" = redis ]; then
      # Nodes from their ID cards only: the node list does not change with the file.
      printf '[cluster]\nredis = "%s"\npubsub = false\ndiscovery = false\n' "${REDIS_URL:-redis://127.0.0.1:$REDIS_PORT/0}"
      printf 'node_port = %s\npoll_interval = "1s"\n' "$K2_PORT"
    else
      for n in $nodes; do
        printf '[[node]]\nname = "n%s"\naddress = "127.0.0.1:%s"\n' "$n" "${SIM_PORTS[$((n - 1))]}"
      done
    fi
  } >"$out.tmp"
  mv "$out.tmp" "$out" # replaced by rename, as config management does
}

# nginx_conf OUT PORT ALGO "NODES" [broken]
nginx_conf() {
  local out=$1 port=$2 algo=$3 nodes=$4 broken=${5:-} servers="" n line
  case $algo in
    leastconn) line="least_conn; # algorithm" ;;
    roundrobin) line="# algorithm: round robin" ;;
    source) line="ip_hash; # algorithm" ;;
  esac
  for n in $nodes; do servers="$servers        server 127.0.0.1:${SIM_PORTS[$((n - 1))]};\n"; done
  awk -v servers="$servers" -v line="$line" -v port="$port" -v broken="$broken" '
    /^[ ]+# nodes:begin/ { print; printf "%s", servers; skip = 1; next }
    /^[ ]+# nodes:end/ { skip = 0 }
    skip { next }
    /^[ ]+.*# algorithm/ { print "        " line; next }
    /listen 127\.0\.0\.1:7512/ { sub(/7512/, port) }
    /access_log off;/ && broken != "" { print "    no_such_directive on;" }
    { print }' "$ROOT/proxy-configs/nginx-reload.conf" >"$out.tmp"
  mv "$out.tmp" "$out"
}

# haproxy_conf OUT PORT SOCKET ALGO "NODES" [broken]
haproxy_conf() {
  local out=$1 port=$2 sock=$3 algo=$4 nodes=$5 broken=${6:-} servers="" n
  for n in $nodes; do servers="$servers    server n$n 127.0.0.1:${SIM_PORTS[$((n - 1))]}\n"; done
  awk -v servers="$servers" -v algo="$algo" -v port="$port" -v sock="$sock" -v broken="$broken" '
    /^[ ]+# nodes:begin/ { print; printf "%s", servers; skip = 1; next }
    /^[ ]+# nodes:end/ { skip = 0 }
    skip { next }
    /^[ ]+.*# algorithm/ { print "    balance " algo; if (broken != "") print "    no_such_keyword on"; next }
    /bind 127\.0\.0\.1:7513/ { sub(/7513/, port) }
    /stats socket/ { sub(/\/tmp\/haproxy-reload\.sock/, sock) }
    { print }' "$ROOT/proxy-configs/haproxy-reload.cfg" >"$out.tmp"
  mv "$out.tmp" "$out"
}

RESULTS=()

# run_target NAME: start the proxy, run the load across the changes and the upgrade, stop it.
run_target() {
  local name=$1 port stats dir conf master="" i algo nodes broken load_pid
  port=$(pick_port 18500)
  stats=$(pick_port 18600)
  dir="$WORK/$name"
  mkdir -p "$dir"
  case $name in
    gateway)
      conf="$dir/gateway.toml"
      gateway_conf "$conf" "$port" "$stats" "$dir/upgrade.sock" leastconn "$(nodes_of 0)"
      RUST_LOG=info "$GW_BIN" --config "$conf" >"$dir/old.log" 2>&1 &
      PIDS+=($!)
      wait_for_line "$dir/old.log" "upgrade socket ready" "kuzzle-gateway"
      ;;
    nginx)
      conf="$dir/nginx.conf"
      nginx_conf "$conf" "$port" leastconn "$(nodes_of 0)"
      "$NGINX_BIN" -p "$dir/" -c "$conf" 2>"$dir/nginx.err" || die "nginx did not start: $(cat "$dir/nginx.err")"
      wait_for_line "$dir/nginx.pid" "[0-9]" "nginx pid file" 10
      master=$(cat "$dir/nginx.pid")
      PIDS+=("$master")
      ;;
    haproxy)
      conf="$dir/haproxy.cfg"
      haproxy_conf "$conf" "$port" "$dir/haproxy.sock" leastconn "$(nodes_of 0)"
      haproxy -W -db -f "$conf" >"$dir/haproxy.log" 2>&1 &
      master=$!
      PIDS+=("$master")
      ;;
  esac
  wait_http "http://127.0.0.1:$port/_serverInfo" "$name"
  if [ "$MEMBERSHIP" = redis ] && [ -z "${REDIS_URL:-}" ]; then
    for i in 2 3 4; do wait_http "http://127.0.0.1:$port/k$i/_serverInfo" "$name: k$i learned from Redis"; done
  fi

  rm -f "$dir/stop"
  "$LOAD_BIN" --target "127.0.0.1:$port" --ws "$WS" --http "$HTTP" --stop-file "$dir/stop" \
    >"$dir/load.json" 2>"$dir/load.err" &
  load_pid=$!
  PIDS+=("$load_pid")
  sleep 3
  log "$name: $CHANGES changes under load ($WS WebSockets, $HTTP HTTP clients)"
  for i in $(seq 1 "$CHANGES"); do
    algo=${ALGOS[$((i % 3))]}
    nodes=$(nodes_of "$i")
    broken=""
    [ "$i" = $((CHANGES / 2)) ] && broken=1
    case $name in
      gateway) gateway_conf "$conf" "$port" "$stats" "$dir/upgrade.sock" "$algo" "$nodes" $broken ;; # file watch reloads
      nginx)
        nginx_conf "$conf" "$port" "$algo" "$nodes" $broken
        "$NGINX_BIN" -p "$dir/" -c "$conf" -s reload 2>>"$dir/nginx.err" || true
        ;;
      haproxy)
        haproxy_conf "$conf" "$port" "$dir/haproxy.sock" "$algo" "$nodes" $broken
        kill -USR2 "$master"
        ;;
    esac
    sleep "$INTERVAL"
  done
  if [ "$name" = gateway ]; then
    sleep 1 # the last change's debounce
    log "gateway: $(grep -c 'configuration reloaded' "$dir/old.log" || true) reloads applied, $(grep -c 'configuration refused' "$dir/old.log" || true) refused"
  fi
  log "$name: binary upgrade"
  case $name in
    gateway)
      for u in $(seq 1 "$UPGRADES"); do
        RUST_LOG=info "$GW_BIN" --config "$conf" --upgrade >"$dir/new$u.log" 2>&1 &
        PIDS+=($!)
        wait_for_line "$dir/new$u.log" "upgrade complete" "kuzzle-gateway --upgrade ($u)"
        # The next upgrade asks this process, once it offers its sockets in turn.
        wait_for_line "$dir/new$u.log" "upgrade socket ready" "kuzzle-gateway --upgrade ($u)"
        if [ "$u" -lt "$UPGRADES" ]; then sleep 1; fi
      done
      ;;
    nginx)
      kill -USR2 "$master"
      wait_for_line "$dir/nginx.pid.oldbin" "[0-9]" "nginx new binary" 10
      for _ in $(seq 1 50); do [ "$(cat "$dir/nginx.pid" 2>/dev/null)" != "$master" ] && break; sleep 0.1; done
      PIDS+=("$(cat "$dir/nginx.pid")")
      kill -WINCH "$master"
      kill -QUIT "$master"
      ;;
    haproxy) kill -USR2 "$master" ;;
  esac
  sleep 3
  touch "$dir/stop"
  wait "$load_pid" || true
  [ -s "$dir/load.json" ] || die "$name: the load generator printed nothing ($(cat "$dir/load.err"))"
  RESULTS+=("${LABEL:-$name} $(tail -n 1 "$dir/load.json")")
  # Stop this proxy (all its processes) before the next one.
  case $name in
    gateway) pkill_pids "$dir" ;;
    nginx) "$NGINX_BIN" -p "$dir/" -c "$conf" -s stop 2>/dev/null || true ;;
    haproxy) kill -TERM "$master" 2>/dev/null || true ;;
  esac
}

# Stop the gateway processes started for a run (by the PIDs recorded, newest first).
pkill_pids() {
  local p
  for p in "${PIDS[@]}"; do
    if { tr '\0' ' ' <"/proc/$p/cmdline"; } 2>/dev/null | grep -q -- "--config $1/"; then kill -TERM "$p" 2>/dev/null || true; fi
  done
}

for t in $TARGETS; do run_target "$t"; done

mkdir -p "$ROOT/target/bench"
{
  echo "Hot reload under load: $WS WebSocket clients, $HTTP HTTP clients, $CHANGES config changes (one broken), then $UPGRADES binary upgrade(s); nodes: $MEMBERSHIP"
  echo
  printf '%s\n' "${RESULTS[@]}" | UPGRADES=$UPGRADES MEMBERSHIP=$MEMBERSHIP python3 -c '
import json, os, sys
ups = os.environ["UPGRADES"]
gw = "file watch; %s x --upgrade" % ups + ("; nodes from Redis" if os.environ["MEMBERSHIP"] == "redis" else "")
how = {"gateway": gw, "nginx": "nginx -s reload; USR2+WINCH+QUIT",
       "haproxy": "USR2 (master-worker, expose-fd listeners)"}
print("| proxy | reload / upgrade | WS disconnects | WS messages lost | WS sent | HTTP ok | HTTP errors | non-2xx | refused |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for line in sys.stdin:
    name, js = line.split(" ", 1)
    r = json.loads(js)
    cols = [name, how.get(name, gw)] + [str(r[k]) for k in
            ("ws_disconnects", "ws_lost", "ws_sent", "http_ok", "http_errors", "http_non2xx", "refused")]
    print("| " + " | ".join(cols) + " |")
'
} | tee "$ROOT/target/bench/reload-compare.txt"
