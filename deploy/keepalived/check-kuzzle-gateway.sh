#!/bin/sh
# keepalived's health check of the local gateway: its ops listener's /healthz (no auth, readiness)
# answers 200 while the gateway can route, 503 while it starts (first Redis read and node checks)
# or shuts down, so the VIP is held only by a gateway that can serve it. A binary upgrade keeps it
# 200 (the old process answers until the new one can route). Install as
# /etc/keepalived/check-kuzzle-gateway.sh, mode 0755.
exec curl -fsS -m 1 -o /dev/null http://127.0.0.1:7575/healthz
