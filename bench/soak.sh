#!/usr/bin/env bash
# Soak: DURATION seconds of mixed load on one gateway, with everything that changes its state
# happening meanwhile, then the gateway's RSS and open fds at start (after warm-up), middle and
# end, and once more after the load stopped (fds must be back to their idle baseline).
#   load:     examples/reload_load: WS WebSocket clients exchanging Kuzzle messages every WS_EVERY
#             ms, HTTP clients (half a new connection per request, half keep-alive)
#   reloads:  the configuration rewritten every RELOAD_EVERY s (balancing algorithm switched)
#   Redis:    a 4th node joins and leaves through its own redis-server every CHURN_EVERY s
#   failure:  one static node SIGKILLed and restarted every KILL_EVERY s
# Prints a table (also saved to target/bench/soak.txt); the verdict lines say whether RSS stayed
# within 10 % after warm-up and whether fds came back to the baseline.
#
# Usage: bench/soak.sh
# Environment: DURATION [1800]  WARMUP [60]  WS [100]  WS_EVERY [200]  HTTP [2]  RELOAD_EVERY [20]
#              CHURN_EVERY [15]  KILL_EVERY [120]  SAMPLE_EVERY [30]  SKIP_BUILD [0]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${DURATION:-1800}
WARMUP=${WARMUP:-60}
WS=${WS:-100}
WS_EVERY=${WS_EVERY:-200}
HTTP=${HTTP:-2}
RELOAD_EVERY=${RELOAD_EVERY:-20}
CHURN_EVERY=${CHURN_EVERY:-15}
KILL_EVERY=${KILL_EVERY:-120}
SAMPLE_EVERY=${SAMPLE_EVERY:-30}
SKIP_BUILD=${SKIP_BUILD:-0}

. "$ROOT/bench/lib.sh"
need_tools curl redis-server:redis-server
if [ "$SKIP_BUILD" != 1 ]; then
  log "building release binaries"
  cargo build --release --quiet --workspace --bin kuzzle-gateway --bin kuzzle-node-sim --example reload_load || die "build failed"
fi
BIN=$ROOT/target/release
for b in kuzzle-gateway kuzzle-node-sim examples/reload_load; do [ -x "$BIN/$b" ] || die "missing $BIN/$b"; done

REDIS_PORT=$(pick_port 17900)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

start_sim() { # name port [args...]
  local name=$1 port=$2; shift 2
  RUST_LOG=warn "$BIN/kuzzle-node-sim" "${SIM_ARGS[@]}" --listen "127.0.0.1:$port" --name "$name" "$@" >>"$WORK/$name.log" 2>&1 &
  echo $!
}
S1=$(pick_port 17910); S2=$(pick_port 17911); S3=$(pick_port 17912); S4=$(pick_port 17913)
P1=$(start_sim soak_1 "$S1"); P2=$(start_sim soak_2 "$S2"); P3=$(start_sim soak_3 "$S3")
PIDS+=("$P1" "$P2" "$P3")
for p in $S1 $S2 $S3; do wait_http "http://127.0.0.1:$p/_healthCheck" "sim on $p"; done

GW=$(pick_port 17920); ST=$(pick_port 17921)
write_config() { # algorithm
  cat >"$WORK/gw.toml.tmp" <<TOML
[gateway]
listen = "127.0.0.1:$GW"
shutdown_grace = "2s"
[balance]
algorithm = "$1"
[health]
path = "/_healthCheck"
interval = "1s"
timeout = "500ms"
[stats]
listen = "127.0.0.1:$ST"
[cluster]
redis = "redis://127.0.0.1:$REDIS_PORT/0"
heartbeat_timeout = "3s"
[[node]]
name = "soak_1"
address = "127.0.0.1:$S1"
[[node]]
name = "soak_2"
address = "127.0.0.1:$S2"
[[node]]
name = "soak_3"
address = "127.0.0.1:$S3"
TOML
  mv "$WORK/gw.toml.tmp" "$WORK/gw.toml"
}
write_config leastconn
RUST_LOG=warn "$BIN/kuzzle-gateway" --config "$WORK/gw.toml" >"$WORK/gw.log" 2>&1 &
GWPID=$!
PIDS+=("$GWPID")
wait_http "http://127.0.0.1:$GW/_now" "gateway"
# Let membership connect to Redis and the checks settle before the idle baseline.
sleep 3

sample() { # label
  local rss fds
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$GWPID/status")
  fds=$(ls "/proc/$GWPID/fd" | wc -l)
  printf '%s %s %s\n' "$1" "$rss" "$fds" >>"$WORK/samples"
  log "$1: RSS ${rss} KiB, ${fds} fds"
}
sample idle

"$BIN/examples/reload_load" --target "127.0.0.1:$GW" --ws "$WS" --http "$HTTP" --ws-every-ms "$WS_EVERY" \
  --max-secs "$((DURATION + 120))" --stop-file "$WORK/stop" >"$WORK/load.json" 2>"$WORK/load.err" &
LOADPID=$!
PIDS+=("$LOADPID")

t0=$(date +%s)
next_reload=$RELOAD_EVERY; next_churn=$CHURN_EVERY; next_kill=$KILL_EVERY; next_sample=$WARMUP
algo=leastconn; churn_pid=""; reloads=0; churns=0; kills=0
while :; do
  now=$(( $(date +%s) - t0 ))
  [ "$now" -ge "$DURATION" ] && break
  if [ "$now" -ge "$next_reload" ]; then
    algo=$([ "$algo" = leastconn ] && echo roundrobin || echo leastconn)
    write_config "$algo"; reloads=$((reloads + 1)); next_reload=$((now + RELOAD_EVERY))
  fi
  if [ "$now" -ge "$next_churn" ]; then
    if [ -n "$churn_pid" ]; then
      kill -TERM "$churn_pid" 2>/dev/null || true; wait "$churn_pid" 2>/dev/null || true; churn_pid=""
    else
      churn_pid=$(start_sim soak_redis "$S4" --redis "redis://127.0.0.1:$REDIS_PORT/0" --heartbeat 1s)
    fi
    churns=$((churns + 1)); next_churn=$((now + CHURN_EVERY))
  fi
  if [ "$now" -ge "$next_kill" ]; then
    kill -KILL "$P2" 2>/dev/null || true; wait "$P2" 2>/dev/null || true
    sleep 2
    P2=$(start_sim soak_2 "$S2"); PIDS+=("$P2")
    kills=$((kills + 1)); next_kill=$((now + KILL_EVERY))
  fi
  if [ "$now" -ge "$next_sample" ]; then
    sample "t=${now}s"; next_sample=$((now + SAMPLE_EVERY))
  fi
  sleep 1
done
[ -n "$churn_pid" ] && kill -TERM "$churn_pid" 2>/dev/null || true
sample "end"
touch "$WORK/stop"
for _ in $(seq 1 100); do kill -0 "$LOADPID" 2>/dev/null || break; sleep 0.1; done
# Idle again: keep-alive connections to nodes time out (pool_idle), tunnels are closed.
sleep 6
sample "after"

mkdir -p "$ROOT/target/bench"
{
  echo "Soak: ${DURATION}s; load: $WS WebSockets (a message every ${WS_EVERY} ms each) + $HTTP HTTP clients;"
  echo "$reloads reloads, $churns Redis joins/leaves, $kills node kills; $(date -u '+%F %T UTC'), $(nproc) cores, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "load generator: $(cat "$WORK/load.json" 2>/dev/null)"
  echo
  echo "| moment | RSS KiB | open fds |"
  echo "|---|--:|--:|"
  awk '{printf "| %s | %s | %s |\n", $1, $2, $3}' "$WORK/samples"
  awk -v warm="t=${WARMUP}s" '
    $1 == "idle" {idle_fd = $3}
    $1 == warm {w = $2}
    $1 == "end" {e = $2}
    $1 == "after" {after_fd = $3}
    END {
      if (w > 0) printf "RSS end vs warm-up: %+.1f %% (target: within 10 %%)\n", (e - w) * 100 / w
      printf "fds after the load vs idle before it: %d vs %d (target: back to baseline)\n", after_fd, idle_fd
    }' "$WORK/samples"
} | tee "$ROOT/target/bench/soak.txt"
