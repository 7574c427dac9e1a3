#!/bin/sh
# keepalived's health check of the local gateway: its ops listener's /healthz (no auth) answers
# 200 while the process serves. Install as /etc/keepalived/check-kuzzle-gateway.sh, mode 0755.
exec curl -fsS -m 1 -o /dev/null http://127.0.0.1:7575/healthz
