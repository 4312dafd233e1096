#!/usr/bin/env bash
# Runs the demo: the local demo backends and sluice on config.toml, then one
# client round trip per route so you can see it work. Ctrl-C stops everything.
# Needs only Go.
#
# Ports come from the environment (defaults: those of config.toml):
#   SLUICE_PORT=8443          sluice's public listener (TLS, wss:// and raw TCP)
#   ADMIN_PORT=9090           admin server: status page, /metrics, /readyz
#   BACKEND_PORT_BASE=9101    demo backends: TLS echo on BASE and BASE+1, PROXY
#                             echo on BASE+100, WebSocket game on BASE+200, BASE+201
# With other values, sluice runs on a copy of config.toml with those ports.
# DEMO_EXIT=1 stops everything after the round trips instead of waiting.
set -euo pipefail
cd "$(dirname "$0")/.."

sluice_port=${SLUICE_PORT:-8443}
admin_port=${ADMIN_PORT:-9090}
base=${BACKEND_PORT_BASE:-9101}
for v in "$sluice_port" "$admin_port" "$base"; do
  [[ $v =~ ^[0-9]+$ ]] || { echo "demo: port $v is not a number" >&2; exit 2; }
done
tls1=$base tls2=$((base + 1)) proxy1=$((base + 100)) ws1=$((base + 200)) ws2=$((base + 201))

bin=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$bin"
}
trap cleanup EXIT INT TERM

go build -o "$bin/sluice" .
go build -o "$bin/backends" ./scripts/demo/backends
go build -o "$bin/client" ./scripts/demo/client

config=config.toml
if [ "$sluice_port/$admin_port/$base" != 8443/9090/9101 ]; then
  # The same file with the chosen ports; relative paths resolve against the
  # config file's directory, so the static root becomes absolute.
  config=$bin/config.toml
  sed -e "s/127\.0\.0\.1:8443/127.0.0.1:$sluice_port/" \
      -e "s/127\.0\.0\.1:9090/127.0.0.1:$admin_port/" \
      -e "s/127\.0\.0\.1:9101/127.0.0.1:$tls1/" \
      -e "s/127\.0\.0\.1:9102/127.0.0.1:$tls2/" \
      -e "s/127\.0\.0\.1:9201/127.0.0.1:$proxy1/" \
      -e "s/127\.0\.0\.1:9301/127.0.0.1:$ws1/" \
      -e "s/127\.0\.0\.1:9302/127.0.0.1:$ws2/" \
      -e "s|^root = \"scripts/demo/web\"|root = \"$PWD/scripts/demo/web\"|" \
      config.toml > "$config"
fi

"$bin/backends" -tls "127.0.0.1:$tls1,127.0.0.1:$tls2" -proxy "127.0.0.1:$proxy1" \
  -ws "127.0.0.1:$ws1,127.0.0.1:$ws2" & pids+=($!)
"$bin/sluice" -config "$config" & pids+=($!)

# Wait (bounded) until sluice is ready: the admin server's /readyz answers 200
# once the config is loaded and every listener is bound. Probing the public
# port instead would log a rejected connection that never said anything.
ready() ( # a subshell: a failed exec ends it, not the script
  exec 3<>"/dev/tcp/127.0.0.1/$admin_port"
  printf 'GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
  read -r -t 2 status <&3
  [[ $status == *" 200 "* ]]
)
for i in $(seq 1 100); do
  ready 2>/dev/null && break
  if [ "$i" = 100 ] || ! kill -0 "${pids[1]}" 2>/dev/null; then
    echo "demo: sluice is not ready on 127.0.0.1:$sluice_port (admin 127.0.0.1:$admin_port);" \
      "is a port taken? Set SLUICE_PORT, ADMIN_PORT or BACKEND_PORT_BASE." >&2
    exit 1
  fi
  sleep 0.1
done

addr=127.0.0.1:$sluice_port
echo
echo "== TLS passthrough, SNI echo.localhost (the certificate is the backend's own):"
"$bin/client" -addr "$addr" -sni echo.localhost -msg "hello through sluice" || true
echo "== again: round robin picks the other backend:"
"$bin/client" -addr "$addr" -sni echo.localhost -msg "hello again" || true
echo "== raw TCP on the same port (plain_route; the backend reads PROXY v2 and sees your address):"
"$bin/client" -addr "$addr" -raw -msg "native game protocol" || true
echo
echo "sluice is running on $addr (Ctrl-C to stop):"
echo "  the browser game (wss://):     https://localhost:$sluice_port/   (accept the self-signed certificate)"
echo "  the status page:               http://127.0.0.1:$admin_port/"
echo "  TLS passthrough to a backend:  $bin/client -addr $addr -sni a.echo.localhost"
if [ "${DEMO_EXIT:-}" = 1 ]; then
  exit 0
fi
wait "${pids[1]}"
