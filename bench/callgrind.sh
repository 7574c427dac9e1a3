#!/usr/bin/env bash
# Instructions the gateway executes per proxied request (keep-alive GET) or per WebSocket round
# trip, counted by valgrind's callgrind: unlike CPU time, the count hardly moves on a busy machine,
# so it is the figure to compare two builds with (what each optimisation of issue 11 bought).
# User space only: the kernel's share (4 syscalls per keep-alive request, as for haproxy) is not in it.
#
# Usage: bench/callgrind.sh [BIN...]     default: target/release/kuzzle-gateway
# Environment: CASE [http|http-close|new-conn|post|ws|ws-open|ws-ping] (http-close: the node closes every connection after its
#              answer, as real Kuzzle 2 does; new-conn: the client opens a connection per request;
#              post: keep-alive POSTs with a 300-byte JSON body, as an SDK over HTTP sends;
#              ws-ping: PINGERS [1000] idle WebSockets sending the SDK heartbeat every 2 s, counted
#              over PING_WINDOW [10] seconds, per heartbeat; ws-open: OPENERS [1000] WebSockets
#              opened, 50 at a time, per WebSocket: the handshake and the tunnel's start), N [10000] requests (http, http-close), WS_CLIENTS [20] x ROUND_TRIPS [200] (ws),
#              SKIP_BUILD [0]; GW_EXTRA_<i>: configuration appended for the i-th binary (the same
#              binary twice compares two configurations, e.g. GW_EXTRA_2 with an [access_log]).
#              Prints one line per binary; its profile is kept as target/bench/callgrind-CASE-i.out
#              for callgrind_annotate (path printed).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CASE=${CASE:-http}
N=${N:-10000}
WS_CLIENTS=${WS_CLIENTS:-20}
ROUND_TRIPS=${ROUND_TRIPS:-200}
. "$ROOT/bench/lib.sh"
need_tools valgrind h2load:nghttp2-client nginx curl
LOAD_CPUS=0-$(($(nproc) - 1))   # ws_open runs the WebSocket client there
WS_BIN=$BIN_DIR/examples/ws_idle
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release --quiet --workspace --bin kuzzle-gateway --bin kuzzle-node-sim --example ws_idle || die "release build failed"
fi
[ $# -ge 1 ] || set -- "$BIN_DIR/kuzzle-gateway"

# Backends: a fixed-answer nginx (http) or one kuzzle-node-sim (ws), so only the gateway is counted.
BACK=$(pick_port 17800)
case $CASE in http | http-close | new-conn | post | ws | ws-open | ws-ping) ;; *) die "CASE is http, http-close, new-conn, post, ws, ws-open or ws-ping, not '$CASE'" ;; esac
PINGERS=${PINGERS:-1000}
PING_WINDOW=${PING_WINDOW:-10}
if [ "${CASE#ws}" = "$CASE" ]; then
  keepalive=""; [ "$CASE" = http-close ] && keepalive="keepalive_timeout 0;"
  nginx_one backend "$LOAD_CPUS" "$BACK" "$keepalive" "$FIXED_ANSWER"
else
  "$BIN_DIR/kuzzle-node-sim" "${SIM_ARGS[@]}" --listen "127.0.0.1:$BACK" --name cluster_kuzzle_1 >"$WORK/sim.log" 2>&1 &
  PIDS+=($!)
fi
wait_http "http://127.0.0.1:$BACK/" backend

i=0
for bin in "$@"; do
  i=$((i + 1))
  port=$(pick_port 17810); stats=$(pick_port 17820)
  printf '[gateway]\nlisten = "127.0.0.1:%s"\nthreads = 1\n[stats]\nlisten = "127.0.0.1:%s"\n[[node]]\nname = "cluster_kuzzle_1"\naddress = "127.0.0.1:%s"\n' \
    "$port" "$stats" "$BACK" >"$WORK/gw$i.toml"
  extra_var=GW_EXTRA_$i
  [ -z "${!extra_var:-}" ] || printf '%s\n' "${!extra_var}" >>"$WORK/gw$i.toml"
  out=$WORK/callgrind.$i.out
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" --config "$WORK/gw$i.toml" >"$WORK/gw$i.log" 2>&1 &
  pid=$!; PIDS+=("$pid")
  for _ in $(seq 1 300); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.2; done
  if [ "$CASE" = ws-open ]; then
    callgrind_control -z "$pid" >/dev/null
    ws_open open "ws://127.0.0.1:$port/" "${OPENERS:-1000}" 0
    units=${OPENERS:-1000}; what="WebSocket opened (handshake and tunnel start, 50 at a time)"
  elif [ "$CASE" = ws-ping ]; then
    ws_open ping "ws://127.0.0.1:$port/" "$PINGERS" 0 --ping-every 2
    sleep 3    # every socket has sent a heartbeat: steady state
    callgrind_control -z "$pid" >/dev/null
    sleep "$PING_WINDOW"
    units=$((PINGERS * PING_WINDOW / 2)); what="heartbeat ($PINGERS WebSockets, one every 2 s each)"
  elif [ "$CASE" != ws ]; then
    close=(); [ "$CASE" = new-conn ] && close=(-H "Connection: close")
    if [ "$CASE" = post ]; then
      # A document:create-sized JSON body (h2load sends it with its Content-Length).
      printf '{"controller":"document","action":"create","index":"bench","collection":"c","body":{%s}}' \
        "$(for k in $(seq 1 12); do printf '"field%02d":"value of field %02d",' "$k" "$k"; done | sed 's/,$//')" >"$WORK/post.json"
      close=(-d "$WORK/post.json" -H "Content-Type: application/json")
    fi
    h2load --h1 -n 2000 -c 16 "${close[@]}" "http://127.0.0.1:$port/" >/dev/null 2>&1
    callgrind_control -z "$pid" >/dev/null
    h2load --h1 -n "$N" -c 16 "${close[@]}" "http://127.0.0.1:$port/" | grep -q "$N succeeded" || die "$bin: not all $N requests succeeded"
    units=$N; what="request"
  else
    ws_open relay "ws://127.0.0.1:$port/" "$WS_CLIENTS" "$ROUND_TRIPS"
    callgrind_control -z "$pid" >/dev/null
    ws_release
    units=$((WS_CLIENTS * ROUND_TRIPS)); what="round trip (2 messages, closes included)"
  fi
  callgrind_control -d "$pid" >/dev/null
  [ "$CASE" != ws-ping ] && [ "$CASE" != ws-open ] || ws_release
  stop_proc "$pid"
  total=$(callgrind_annotate "$out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
  [ -n "$total" ] || die "$bin: no profile in $out.1"
  mkdir -p "$ROOT/target/bench"
  cp "$out.1" "$ROOT/target/bench/callgrind-$CASE-$i.out"
  printf '%s: %d instructions per %s (profile: %s)\n' "$bin" $((total / units)) "$what" "target/bench/callgrind-$CASE-$i.out"
done
