#!/usr/bin/env bash
# Real-browser test of the l7 path: headless Chromium loads the demo game page
# (scripts/demo/web) from sluice over https:// (HTTP/2: the page must say
# proto=h2) and plays 10 WebSocket round trips over wss:// through sluice to
# the demo's WebSocket backends (on HTTP/1.1 connections of their own: sluice
# does not offer WebSocket over h2); once with SNI localhost, once with the
# IP literal 127.0.0.1 (no SNI: the listener's default_route). Then it opens sluice's status page (the admin server's /),
# checks that it lists the game-ws backends, clicks Drain on one and waits for
# its state cell to say "drain" (and /api/v1/state to agree), then Ready. The
# browser is driven over the DevTools protocol by scripts/browser (Go, no Node).
#
# Installs Debian's chromium with apt-get when /usr/bin/chromium is missing
# (needs root, as in CI). Every process it starts is stopped by PID, every wait
# is bounded. OUT_DIR=dir keeps screenshots of the pages there (browser-*.png,
# status.png).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)

work=$(mktemp -d)
pids=()
chrome=""
bpid=""
cleanup() {
  if [ -n "$bpid" ]; then kill "$bpid" 2>/dev/null || true; fi
  # Chromium runs in its own process group (setsid): stop the group.
  if [ -n "$chrome" ]; then kill -TERM -- "-$chrome" 2>/dev/null || true; fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "$chrome" ]; then
    for _ in $(seq 1 30); do kill -0 -- "-$chrome" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$chrome" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() {
  echo "FAIL: $*"
  echo "--- sluice log (tail):"; tail -40 "$work/sluice.log" 2>/dev/null || true
  echo "--- backends log (tail):"; tail -15 "$work/backends.log" 2>/dev/null || true
  exit 1
}

# Chromium from Debian (the only browser this needs; nothing is downloaded by a test tool).
browser=/usr/bin/chromium
if [ ! -x "$browser" ]; then
  echo "installing Debian's chromium (apt-get)"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo -n"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q >"$work/apt.log" 2>&1 || { tail -20 "$work/apt.log"; fail "apt-get update"; }
  $sudo apt-get install -y -q chromium >>"$work/apt.log" 2>&1 || { tail -20 "$work/apt.log"; fail "apt-get install chromium"; }
fi
"$browser" --version 2>/dev/null | grep -v '^\[' || true

go build -o "$work/sluice" .
go build -o "$work/backends" ./scripts/demo/backends
go build -o "$work/browser" ./scripts/browser

# The test config: config.toml on ports of our own. Its l7 route serves
# scripts/demo/web at / and proxies /ws to the WebSocket pool; relative paths
# are made absolute, since the config is written elsewhere.
grep -q '^[[:space:]]*mode[[:space:]]*=[[:space:]]*"l7"' config.toml || fail "config.toml has no l7 route (mode = \"l7\")"
# Seven consecutive ports below the ephemeral range (32768+), none in use.
ports_free() { for p in "$@"; do if (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then return 1; fi; done; }
for _ in $(seq 1 20); do
  base=$((10000 + RANDOM % 22000))
  ports_free $base $((base+1)) $((base+2)) $((base+3)) $((base+4)) $((base+5)) $((base+6)) && break
done
lp=$base; t1=$((base+1)); t2=$((base+2)); p1=$((base+3)); w1=$((base+4)); w2=$((base+5)); ap=$((base+6))
sed -e "s/:8443\([^0-9]\|$\)/:$lp\1/g" -e "s/:9101\([^0-9]\|$\)/:$t1\1/g" -e "s/:9102\([^0-9]\|$\)/:$t2\1/g" \
    -e "s/:9201\([^0-9]\|$\)/:$p1\1/g" -e "s/:9301\([^0-9]\|$\)/:$w1\1/g" -e "s/:9302\([^0-9]\|$\)/:$w2\1/g" \
    -e "s#\"scripts/#\"$PWD/scripts/#g" \
    -e 's/format = "console"/format = "json"/' config.toml |
  # The admin server on our port: replace [admin] listen, or add the section.
  awk -v ap="$ap" '
    /^[[:space:]]*\[/ { admin = ($0 ~ /^[[:space:]]*\[admin\][[:space:]]*(#.*)?$/); print
                       if (admin) { print "listen = \"127.0.0.1:" ap "\""; found = 1 }; next }
    admin && /^[[:space:]]*listen[[:space:]]*=/ { next }
    { print }
    END { if (!found) printf "\n[admin]\nlisten = \"127.0.0.1:%s\"\n", ap }' > "$work/browser.toml"
"$work/sluice" -check -config "$work/browser.toml" >/dev/null 2>"$work/check.out" ||
  fail "test config does not pass -check: $(cat "$work/check.out")"

"$work/backends" -tls "127.0.0.1:$t1,127.0.0.1:$t2" -proxy "127.0.0.1:$p1" -ws "127.0.0.1:$w1,127.0.0.1:$w2" \
  2>"$work/backends.log" & pids+=($!)
"$work/sluice" -config "$work/browser.toml" 2>"$work/sluice.log" & spid=$!; pids+=($spid)

# Wait (bounded) for sluice and the WebSocket backends, then for sluice to
# serve the page over TLS.
up=0
for _ in $(seq 1 100); do
  if (exec 3<>/dev/tcp/127.0.0.1/$lp) 2>/dev/null && (exec 3<>/dev/tcp/127.0.0.1/$w1) 2>/dev/null &&
     (exec 3<>/dev/tcp/127.0.0.1/$w2) 2>/dev/null; then up=1; break; fi
  kill -0 "$spid" 2>/dev/null || fail "sluice exited"
  sleep 0.1
done
[ "$up" = 1 ] || fail "sluice or the WebSocket backends did not start"
if command -v curl >/dev/null; then
  ok=0
  for _ in $(seq 1 50); do
    if curl -ksf --max-time 2 --resolve "localhost:$lp:127.0.0.1" "https://localhost:$lp/" -o "$work/index.html"; then ok=1; break; fi
    sleep 0.1
  done
  [ "$ok" = 1 ] || fail "sluice does not serve https://localhost:$lp/"
  grep -q 'id="result"' "$work/index.html" || fail "https://localhost:$lp/ is not the demo page: $(head -c 300 "$work/index.html")"
fi

# Headless Chromium, isolated from the network (these flags keep it from
# calling home), a fresh profile, sluice's self-signed certificate accepted.
mkdir -p "$work/profile"
setsid "$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --disable-dev-shm-usage --ignore-certificate-errors \
  --user-data-dir="$work/profile" --remote-debugging-address=127.0.0.1 --remote-debugging-port=0 \
  about:blank >"$work/chromium.log" 2>&1 &
chrome=$!

shots=""
if [ -n "${OUT_DIR:-}" ]; then mkdir -p "$OUT_DIR"; shots=$(cd "$OUT_DIR" && pwd); fi
results=()
failed=()
check_page() { # name url
  local shot=()
  [ -n "$shots" ] && shot=(-screenshot "$shots/browser-$1.png")
  # In the background and waited for, so that a signal stops the test at once.
  local rc=0
  "$work/browser" -user-data-dir "$work/profile" -url "$2" -timeout 30s "${shot[@]}" >"$work/$1.out" 2>&1 &
  bpid=$!
  wait "$bpid" || rc=$?
  bpid=""
  cat "$work/$1.out"
  if [ "$rc" = 0 ] && grep -q 'result="ok rtt_ms=' "$work/$1.out" && grep -q ' proto=h2 ' "$work/$1.out"; then
    results+=("$1: h2 page, $(grep -o 'result="[^"]*"' "$work/$1.out")")
  else
    failed+=("$2")
  fi
}

# SNI localhost: the l7 route by name.
check_page localhost "https://localhost:$lp/"
# IP literal: no SNI, the listener's default_route (the wss://IP:port case).
check_page ip "https://127.0.0.1:$lp/"

# The status page: the game-ws backends listed, Drain and Ready by click.
ok=0
for _ in $(seq 1 50); do
  if (exec 3<>/dev/tcp/127.0.0.1/$ap) 2>/dev/null; then ok=1; break; fi
  sleep 0.1
done
if [ "$ok" = 1 ]; then
  shot=()
  [ -n "$shots" ] && shot=(-screenshot "$shots/status.png")
  rc=0
  "$work/browser" -user-data-dir "$work/profile" -url "http://127.0.0.1:$ap/" -status-backend "game-ws/127.0.0.1:$w1" \
    -timeout 30s "${shot[@]}" >"$work/status.out" 2>&1 &
  bpid=$!
  wait "$bpid" || rc=$?
  bpid=""
  cat "$work/status.out"
  if [ "$rc" = 0 ] && grep -q 'status="ok ' "$work/status.out"; then
    results+=("status: $(grep -o 'status="[^"]*"' "$work/status.out")")
  else
    failed+=("http://127.0.0.1:$ap/ (status page)")
  fi
  if command -v curl >/dev/null; then
    curl -sf --max-time 2 "http://127.0.0.1:$ap/metrics" -o "$work/metrics.txt" ||
      failed+=("http://127.0.0.1:$ap/metrics")
    grep -q "^sluice_backend_admin_state{backend=\"127.0.0.1:$w1\",pool=\"game-ws\",state=\"ready\"} 1" "$work/metrics.txt" 2>/dev/null ||
      failed+=("/metrics: no ready admin state for game-ws/127.0.0.1:$w1")
  fi
else
  failed+=("the admin server (127.0.0.1:$ap) is not listening")
fi

if [ "${#failed[@]}" -gt 0 ]; then
  echo "--- chromium log (tail):"; grep -v 'dbus\|^/usr/bin/chromium: \|^$' "$work/chromium.log" | tail -10 || true
  fail "failed: ${failed[*]}"
fi
kill -0 "$spid" 2>/dev/null || fail "sluice died during the test"
echo "browser-test: ok (${results[*]}) in $(( $(date +%s) - t0 ))s"
