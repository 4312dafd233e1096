#!/usr/bin/env bash
# The whole test suite: static checks, unit and integration tests under the
# race detector, short fuzz runs of every parser of untrusted bytes, and the
# end-to-end test with real processes. Fails on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then echo "gofmt needed: $unformatted"; exit 1; fi

echo "== go vet"
go vet ./...

echo "== go test -race"
go test -race -count=1 -timeout 15m ./...

echo "== reload under full load (500 WebSocket sessions; without the race detector's 10x slowdown)"
(ulimit -n 20000 2>/dev/null || true; go test -count=1 -run '^TestReloadSwitchesModeUnderLoad$' -v . | grep -E '^(---|ok|FAIL)|sessions')

echo "== fuzz (short runs; longer by hand: FUZZTIME=10m scripts/test.sh)"
fuzztime=${FUZZTIME:-15s}
fuzz() {
  local out
  if ! out=$(go test -run '^$' -fuzz "^$1\$" -fuzztime "$fuzztime" -fuzzminimizetime 3s "$2" 2>&1); then
    echo "$out"; return 1
  fi
  echo "$1: $(echo "$out" | grep -E 'execs' | tail -1)"
}
fuzz FuzzReadClientHello ./tlsutil
fuzz FuzzNormalizeSNI ./tlsutil
fuzz FuzzHeadScanner ./l7
fuzz FuzzChunkScanner ./l7
fuzz FuzzPeekHost .

echo "== end to end (real processes)"
scripts/e2e.sh

echo "== real browser (headless Chromium)"
if [ -x /usr/bin/chromium ] || [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; then
  scripts/browser-test.sh
elif [ -n "${CI:-}" ]; then
  echo "chromium is missing and cannot be installed here"; exit 1
else
  echo "SKIPPED: /usr/bin/chromium is missing and installing it needs root (apt-get install chromium)"
fi

echo "== all tests passed"
