#!/usr/bin/env bash
# End-to-end test with real processes: the sluice binary, the demo backends
# and the demo client, on 127.0.0.1 ports of their own. Every process it
# starts is stopped by PID; every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; echo "--- sluice log:"; tail -30 "$work/sluice.log" 2>/dev/null; echo "--- backends log:"; tail -30 "$work/backends.log" 2>/dev/null; exit 1; }

go build -o "$work/sluice" .
go build -o "$work/backends" ./scripts/demo/backends
go build -o "$work/client" ./scripts/demo/client

# The shipped config must be valid.
"$work/sluice" -check -config config.toml >/dev/null || fail "config.toml does not pass -check"

# A bad config exits 1 with one readable line per problem and no panic.
cat > "$work/bad.toml" <<'TOML'
[listeners.a]
address = "127.0.0.1:99999"
hello_timeout = "soon"
[routes.r]
listener = "a"
pool = "nope"
conect_timeout = "1s"
TOML
set +e
"$work/sluice" -config "$work/bad.toml" 2>"$work/bad.out"; rc=$?
set -e
[ "$rc" = 1 ] || fail "bad config: exit $rc, want 1"
grep -q 'routes.r.conect_timeout: unknown key' "$work/bad.out" || fail "unknown key not reported: $(cat "$work/bad.out")"
grep -q 'panic' "$work/bad.out" && fail "bad config printed a panic"

# Below the ephemeral range (32768-60999 by default): a port there can be
# held by any outgoing connection of an earlier test (seen once in CI as
# "sluice or backends did not start").
base=$((10000 + RANDOM % 20000))
lp=$base; b1=$((base+1)); b2=$((base+2)); b3=$((base+3)); w1=$((base+4)); w2=$((base+5)); adm=$((base+6))
sed -e "s/127.0.0.1:8443/127.0.0.1:$lp/" -e "s/127.0.0.1:9101/127.0.0.1:$b1/" \
    -e "s/127.0.0.1:9102/127.0.0.1:$b2/" -e "s/127.0.0.1:9201/127.0.0.1:$b3/" \
    -e "s/127.0.0.1:9301/127.0.0.1:$w1/" -e "s/127.0.0.1:9302/127.0.0.1:$w2/" \
    -e "s/127.0.0.1:9090/127.0.0.1:$adm/" \
    -e "s|root = \"scripts/demo/web\"|root = \"$PWD/scripts/demo/web\"|" \
    -e 's/format = "console"/format = "json"/' config.toml > "$work/e2e.toml"

"$work/backends" -tls "127.0.0.1:$b1,127.0.0.1:$b2" -proxy "127.0.0.1:$b3" -ws "127.0.0.1:$w1,127.0.0.1:$w2" 2>"$work/backends.log" & pids+=($!)
"$work/sluice" -config "$work/e2e.toml" 2>"$work/sluice.log" & spid=$!; pids+=($spid)

up=0
for _ in $(seq 1 100); do
  if (exec 3<>/dev/tcp/127.0.0.1/$lp) 2>/dev/null && (exec 3<>/dev/tcp/127.0.0.1/$b3) 2>/dev/null; then up=1; break; fi
  sleep 0.1
done
[ "$up" = 1 ] || fail "sluice or backends did not start"

# TLS passthrough: the client sees the backends' own certificates, round robin.
out1=$("$work/client" -addr 127.0.0.1:$lp -sni echo.localhost -msg one) || fail "client 1: $out1"
out2=$("$work/client" -addr 127.0.0.1:$lp -sni ECHO.localhost -msg two) || fail "client 2: $out2"
echo "$out1"; echo "$out2"
grep -q 'tls-backend-1.localhost' <<<"$out1$out2" || fail "backend 1 certificate not seen"
grep -q 'tls-backend-2.localhost' <<<"$out1$out2" || fail "backend 2 certificate not seen"
grep -q ': one$' <<<"$out1" || fail "echo one"
# Wildcard route.
outw=$("$work/client" -addr 127.0.0.1:$lp -sni x.echo.localhost -msg w) || fail "wildcard client: $outw"
grep -q ': w$' <<<"$outw" || fail "wildcard route"
# Raw TCP on the same port: plain_route, PROXY v2 tells the backend our address.
out3=$("$work/client" -addr 127.0.0.1:$lp -raw -msg native) || fail "raw client: $out3"
echo "$out3"
grep -q 'tcp-backend-1: hello 127.0.0.1:' <<<"$out3" || fail "PROXY v2 address not seen by backend"
grep -q 'tcp-backend-1: native' <<<"$out3" || fail "raw echo"
# One access line per connection, with the copy path.
sleep 0.3
grep -q '"path_in":"\(splice\|buffer\)"' "$work/sluice.log" || fail "no access line with the copy path"

# The admin server: health, metrics that moved, the state API. Each answer
# is read whole before grep looks at it: with pipefail, "curl | grep -q"
# fails when grep stops reading early (curl: (23)); the same holds for
# "echo | grep -q" (SIGPIPE), hence the here-strings above.
get() { curl -fsS "$@" || fail "curl $*"; }
if command -v curl >/dev/null; then
  get "http://127.0.0.1:$adm/healthz" > "$work/healthz"
  grep -q ok "$work/healthz" || fail "/healthz"
  get "http://127.0.0.1:$adm/readyz" >/dev/null
  get "http://127.0.0.1:$adm/metrics" > "$work/metrics"
  grep -Eq 'sluice_connections_closed_total\{listener="public",mode="l4",reason="[a-z_]+",route="echo"\} [1-9]' "$work/metrics" || fail "metrics did not count the echo connections"
  get "http://127.0.0.1:$adm/api/v1/state" > "$work/state"
  grep -q '"tls-echo"' "$work/state" || fail "state API"
  # Reload through the API (SIGHUP does the same).
  get -X POST "http://127.0.0.1:$adm/api/v1/reload" > "$work/reload"
  grep -q '"ok": *true' "$work/reload" || fail "reload API"
fi

# SIGTERM: exit 0 within the drain (no live connections here).
kill -TERM "$spid"
for _ in $(seq 1 50); do kill -0 "$spid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$spid" 2>/dev/null && fail "sluice still running 5 s after SIGTERM"
wait "$spid" || fail "sluice exited non-zero after SIGTERM"

echo "e2e: ok"
