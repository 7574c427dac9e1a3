#!/usr/bin/env bash
# Runs one real Kuzzle 2 node in the foreground (exec: this process becomes the node), configured
# by environment, on its own loopback address (see preload.js). Run install.sh first.
#
# Usage: run-node.sh --ip 127.0.0.2 --port 7512 --redis 127.0.0.1:6380 --es http://127.0.0.1:9200
#                    [--command-port 7510] [--sync-port 7511]
#
# Start it in its own process group (`setsid`, or Rust's `process_group(0)`): the node forks an
# IDCardRenewer child, and SIGKILL of the group is then a crash of both. SIGTERM to the node's pid
# (this script's pid, after exec) is Kuzzle's graceful shutdown.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
usage() { echo "usage: $0 --ip IP --port HTTP_PORT --redis HOST:PORT --es URL [--command-port P] [--sync-port P]" >&2; exit 2; }
ip= port= redis= es= command_port=7510 sync_port=7511
while [ $# -gt 0 ]; do
  case "$1" in
    --ip) ip=$2 ;;
    --port) port=$2 ;;
    --redis) redis=$2 ;;
    --es) es=$2 ;;
    --command-port) command_port=$2 ;;
    --sync-port) sync_port=$2 ;;
    *) usage ;;
  esac
  shift 2 || usage
done
[ -n "$ip" ] && [ -n "$port" ] && [ -n "$redis" ] && [ -n "$es" ] || usage
[ -f "$here/node_modules/.kuzzle-real-installed" ] || { echo "$0: run $here/install.sh first" >&2; exit 1; }

export KUZZLE_REAL_IP=$ip
export NODE_ENV=production
export kuzzle_server__port=$port
export kuzzle_cluster__ports__command=$command_port
export kuzzle_cluster__ports__sync=$sync_port
export kuzzle_services__storageEngine__client__node=$es
export kuzzle_services__internalCache__node__host=${redis%:*}
export kuzzle_services__internalCache__node__port=${redis##*:}
export kuzzle_services__memoryStorage__node__host=${redis%:*}
export kuzzle_services__memoryStorage__node__port=${redis##*:}
if [ -f "$here/build/glibc-shim.so" ]; then
  export LD_PRELOAD=$here/build/glibc-shim.so${LD_PRELOAD:+:$LD_PRELOAD}
fi
exec node -r "$here/preload.js" "$here/node_modules/kuzzle/dist/bin/start-kuzzle-server"
