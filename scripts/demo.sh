#!/usr/bin/env bash
# Runs the demo: the local demo backends and sluice on config.toml, then one
# client round trip per route so you can see it work. Ctrl-C stops everything.
# Needs only Go.
set -euo pipefail
cd "$(dirname "$0")/.."

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

"$bin/backends" & pids+=($!)   # TLS echo :9101/:9102, PROXY echo :9201, WebSocket game :9301/:9302
"$bin/sluice" -config config.toml & pids+=($!)

# Wait for sluice to listen (bounded).
for _ in $(seq 1 50); do
  (exec 3<>/dev/tcp/127.0.0.1/8443) 2>/dev/null && break
  sleep 0.1
done

echo
echo "== TLS passthrough, SNI echo.localhost (the certificate is the backend's own):"
"$bin/client" -sni echo.localhost -msg "hello through sluice" || true
echo "== again: round robin picks the other backend:"
"$bin/client" -sni echo.localhost -msg "hello again" || true
echo "== raw TCP on the same port (plain_route; the backend reads PROXY v2 and sees your address):"
"$bin/client" -raw -msg "native game protocol" || true
echo
echo "sluice is running on 127.0.0.1:8443 (Ctrl-C to stop):"
echo "  the browser game (wss://):     https://localhost:8443/   (accept the self-signed certificate)"
echo "  TLS passthrough to a backend:  $bin/client -sni a.echo.localhost"
wait "${pids[1]}"
