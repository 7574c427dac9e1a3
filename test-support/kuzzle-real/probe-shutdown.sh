#!/usr/bin/env bash
# Measures what a real Kuzzle node answers around a SIGTERM: one curl loop per route (a new
# connection per request, as a gateway health check does), a WebSocket client sending server:now
# every 50 ms, and the node's ID card in Redis, all stamped in ms relative to the SIGTERM.
# Prints each loop's state changes (status, error id, curl exit code: 7 = connection refused,
# 52 = empty reply, 56 = connection reset).
#
# Usage: probe-shutdown.sh IP:PORT NODE_PID REDIS_PORT [SECONDS_BEFORE=1] [SECONDS_AFTER=4]
# (a node of scripts/kuzzle-real: its pid and Redis port are printed at start)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 3 ] || { sed -n '2,9p' "$0" >&2; exit 2; }
addr=$1 pid=$2 redis_port=$3 before=${4:-1} after=${5:-4}
out=$(mktemp -d "${TMPDIR:-/tmp}/kuzzle-probe.XXXXXX")
now() { echo $(($(date +%s%N) / 1000000)); }
card=$(redis-cli -p "$redis_port" --raw smembers '{cluster/node}/id-cards-index' | while read -r k; do
  redis-cli -p "$redis_port" --raw get "$k" | if grep -q "\"ip\":\"${addr%:*}\""; then echo "$k"; fi; done | head -n1)
[ -n "$card" ] || { echo "no ID card with ip ${addr%:*} in Redis" >&2; exit 1; }
end=$(($(now) + (before + after) * 1000))

routes=('/_ready' '/_healthCheck' '/_healthCheck?services=internalCache' '/_healthcheck' '/_now')
loops=()
for r in "${routes[@]}"; do
  f=$out/$(echo "$r" | tr -c 'a-zA-Z0-9\n' '_')
  (
    while [ "$(now)" -lt "$end" ]; do
      t=$(now)
      code=$(curl -s -m 2 -o "$f.body" -w '%{http_code}' "http://$addr$r") && rc=0 || rc=$?
      id=$(grep -o '"id":"[a-z_.]*"' "$f.body" 2>/dev/null | head -n1 | cut -d'"' -f4 || true)
      echo "$t $code rc=$rc ${id:--}"
      rm -f "$f.body"
    done
  ) >"$f.log" &
  loops+=($!)
done
(
  while [ "$(now)" -lt "$end" ]; do
    echo "$(now) card=$(redis-cli -p "$redis_port" exists "$card") index=$(redis-cli -p "$redis_port" sismember '{cluster/node}/id-cards-index' "$card")"
    sleep 0.01
  done
) >"$out/redis.log" &
loops+=($!)
NODE_PATH=$here/node_modules node -e '
const WebSocket = require("ws");
const ws = new WebSocket(`ws://${process.argv[1]}`);
let last = "";
const log = (s) => { if (s !== last) console.log(Date.now(), s); last = s; };
ws.on("open", () => { log("open"); setInterval(() => ws.send(JSON.stringify({ controller: "server", action: "now" })), 50); });
ws.on("message", (m) => { const v = JSON.parse(String(m)); log(`${v.status} ${v.error ? v.error.id : "-"}`); });
ws.on("close", (code, reason) => { log(`close code=${code} reason=${String(reason) || "-"}`); process.exit(0); });
ws.on("error", (e) => log(`error ${e.message}`));
setTimeout(() => process.exit(0), +process.argv[2]);
' "$addr" $(((before + after) * 1000)) >"$out/ws.log" 2>&1 &
loops+=($!)

sleep "$before"
t0=$(now)
kill -TERM "$pid"
wait "${loops[@]}" 2>/dev/null || true
exited=$( ! kill -0 "$pid" 2>/dev/null && echo yes || echo no)

echo "SIGTERM to pid $pid ($addr) at t=0; node exited within the probe: $exited; raw logs in $out"
for f in "$out"/*.log; do
  echo "== $(basename "$f" .log)   (first line of each state: t_ms, then the state and how many lines it lasted)"
  awk -v t0="$t0" '{ $1 = $1 - t0; s = ""; for (i = 2; i <= NF; i++) s = s " " $i;
      if (s != last) { if (NR > 1) print "      x" n; printf "%7d%s", $1, s; last = s; n = 0 } n++ }
      END { print "      x" n }' "$f"
done
