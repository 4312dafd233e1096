#!/usr/bin/env bash
# The side-by-side benchmark: sluice against HAProxy and nginx (and "direct",
# no proxy at all), one worker each, everything on 127.0.0.1.
#
#   scripts/bench.sh                 full run (about 12 minutes on 2 cores)
#   QUICK=1 scripts/bench.sh         smoke run (about 2.5 minutes)
#   WORKERS=2 scripts/bench.sh       nbthread 2 / worker_processes 2 / GOMAXPROCS=2
#
# Environment: REPS (3; QUICK: 1), DURATION (measured window per run, 2s;
# QUICK: 1s), STORM_DURATION (measured window of the storm rows, 10s; QUICK:
# 5s), WARMUP (300ms), IDLE_CONNS (8000; QUICK: 2000), SCENARIOS
# (comma-separated, run in the order given; default all: bulk-up bulk-down
# conn conn-pp2 tls-pass ping-1 ping-64 wss-hs wss-resume wss-echo http-small h2-small
# http-static storm storm-pp2 idle-l4 idle-wss), OUT (the Markdown table,
# /tmp/sluice-bench.md), PROFILE (comma-separated scenarios: afterwards, run
# each against sluice alone under `perf record` and print the hot spots),
# RELAY (sluice's [tuning] relay engine: goroutine or epoll; default
# epoll, sluice's own default), SYSCALLS (comma-separated scenarios:
# afterwards, run each against every proxy alone under `perf stat` on the
# syscall tracepoints and print its syscalls per operation by name).
#
#   RELAY=goroutine SCENARIOS=ping-1,ping-64,idle-l4 scripts/bench.sh
#              the goroutine relay engine (the A/B of the epoll one)
#
#   storm      new connections as fast as 64 client loops can open them, for
#              STORM_DURATION, all to one backend; each client writes its
#              hello, command and data at once, reads the answer and closes
#              (first: the proxy's backend sockets end in TIME_WAIT)
#   storm-pp2  the same through the PROXY-protocol pool (nginx: PROXY v1)
#   QUICK=1 SCENARIOS=storm,storm-pp2,conn scripts/bench.sh
#              the storms, then whether each proxy still serves connections
#
#   http-small   plain HTTP/1.1 over TLS the proxy terminates: 50 keep-alive
#                connections, GET /hello one at a time on each, proxied as
#                plain HTTP to one backend (keep-alive), 19-byte body
#   h2-small     http-small over HTTP/2 (ALPN h2), as browsers on an h2
#                route talk; direct: n/a (the backends speak HTTP/1.1 only)
#   http-static  the same, GET of a 20 KiB file the proxy serves itself
#                (sluice: a location with root; nginx: alias). HAProxy: n/a,
#                it serves no files (`http-request return file` is limited
#                to one buffer, tune.bufsize 16 KiB)
#   SCENARIOS=http-small,http-static scripts/bench.sh
#              just the HTTP rows (about 1 minute)
#
# Errors (failed connects, resets, short answers, timeouts) are counted per
# proxy and row in the table's "errors" columns, by kind in the notes. After
# each storm every proxy is probed with ordinary connections for up to 10 s;
# one that does not answer is flagged with a WARNING, and so is every row
# measured on it afterwards. In "all" the storms run after the other load
# rows, so that only the idle rows can inherit what a storm left behind.
#
# It installs haproxy, nginx and nginx's stream module with apt-get if they are
# missing, builds sluice (from this checkout), the backends and the load
# generator (scripts/bench/), fills in the configs in scripts/bench/ and runs
# scripts/bench/loadgen, which measures and prints the table. Every process it
# starts is stopped by PID on exit; every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
t_start=$(date +%s)

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
  REPS=${REPS:-1} DURATION=${DURATION:-1s} IDLE_CONNS=${IDLE_CONNS:-2000}
  STORM_DURATION=${STORM_DURATION:-5s}
fi
REPS=${REPS:-3}
DURATION=${DURATION:-2s}
STORM_DURATION=${STORM_DURATION:-10s}
RELAY=${RELAY:-epoll}
[[ $RELAY == goroutine || $RELAY == epoll ]] || { echo "bench: RELAY must be goroutine or epoll, got $RELAY" >&2; exit 2; }
WARMUP=${WARMUP:-300ms}
IDLE_CONNS=${IDLE_CONNS:-8000}
WORKERS=${WORKERS:-1}
SCENARIOS=${SCENARIOS:-all}
OUT=${OUT:-/tmp/sluice-bench.md}
PROFILE=${PROFILE:-}
SYSCALLS=${SYSCALLS:-}
all_load="bulk-up,bulk-down,conn,conn-pp2,tls-pass,ping-1,ping-64,wss-hs,wss-resume,wss-echo,http-small,h2-small,http-static,storm,storm-pp2"
all_idle="idle-l4 idle-wss"

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

# --- peers ---------------------------------------------------------------
need=()
command -v haproxy >/dev/null || need+=(haproxy)
command -v nginx >/dev/null || need+=(nginx)
[[ -e /usr/lib/nginx/modules/ngx_stream_module.so ]] || need+=(libnginx-mod-stream)
if ((${#need[@]})); then
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! timeout 300 apt-get install -y --no-install-recommends "${need[@]}" >/tmp/sluice-bench-apt.log 2>&1; then
    timeout 300 apt-get update >>/tmp/sluice-bench-apt.log 2>&1 || true
    timeout 300 apt-get install -y --no-install-recommends "${need[@]}" >>/tmp/sluice-bench-apt.log 2>&1 ||
      die "apt-get install ${need[*]} failed: see /tmp/sluice-bench-apt.log"
  fi
fi
command -v haproxy >/dev/null && command -v nginx >/dev/null || die "haproxy and nginx are required"

# --- file descriptors ------------------------------------------------------
hard=$(ulimit -Hn)
[[ $hard == unlimited ]] && hard=1048576
NOFILE=$((hard > 65536 ? 65536 : hard))
ulimit -n "$NOFILE"
if ((IDLE_CONNS * 2 + 2000 > NOFILE)); then
  IDLE_CONNS=$(((NOFILE - 2000) / 2))
  log "open-file limit $NOFILE: idle scenarios use $IDLE_CONNS connections"
fi
# HAProxy needs 2 fds per connection plus 2 per pipe: maxsock = 2*maxconn + 2*maxpipes + a few.
HA_MAXCONN=$(((NOFILE - 1100) / 2))
((HA_MAXCONN > 20000)) && HA_MAXCONN=20000

# --- processes -------------------------------------------------------------
tmp=$(mktemp -d /tmp/sluice-bench.XXXXXX)
declare -A pid=()
perf_pid=""
stop_pid() { # stop_pid PID: TERM, wait up to 5 s, then KILL
  local p=$1 i
  kill -TERM "$p" 2>/dev/null || return 0
  for i in $(seq 1 50); do
    kill -0 "$p" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  set +e
  [[ -n $perf_pid ]] && stop_pid "$perf_pid"
  for name in "${!pid[@]}"; do stop_pid "${pid[$name]}"; done
  [[ ${KEEP:-0} == 1 ]] && log "kept $tmp" || rm -rf "$tmp"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- build -----------------------------------------------------------------
log "building sluice, backends and loadgen"
for try in 1 2 3; do
  if go build -o "$tmp/sluice" . 2>"$tmp/build.log"; then break; fi
  ((try == 3)) && { cat "$tmp/build.log" >&2; die "sluice does not build"; }
  log "sluice does not build right now (attempt $try); retrying in 60 s"
  sleep 60
done
go build -o "$tmp/backends" ./scripts/bench/backends
go build -o "$tmp/loadgen" ./scripts/bench/loadgen
"$tmp/backends" -gencert "$tmp"

# --- ports and configs -----------------------------------------------------
names=(B_L4 B_PP B_TLS B_WS B_WSS B_HTTP B_HTTPS HA_L4 HA_WS HA_HTTP NG_L4 NG_PP NG_WS NG_HTTP SL SL_WEB)
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
declare -A port=()
for try in $(seq 1 20); do
  base=$((20000 + RANDOM % 12000)) ok=1
  for i in "${!names[@]}"; do port_free $((base + i)) || { ok=0; break; }; done
  ((ok)) && break
  ((try == 20)) && die "no free port range found"
done
for i in "${!names[@]}"; do port[${names[$i]}]=$((base + i)); done
render() { # render TEMPLATE OUTPUT
  local args=(-e "s|@TMP@|$tmp|g" -e "s|@CERT@|$tmp/cert.pem|g" -e "s|@KEY@|$tmp/key.pem|g"
    -e "s|@COMBINED@|$tmp/combined.pem|g" -e "s|@WORKERS@|$WORKERS|g"
    -e "s|@NOFILE@|$NOFILE|g" -e "s|@NGCONN@|$((NOFILE - 500))|g" -e "s|@HA_MAXCONN@|$HA_MAXCONN|g"
    -e "s|@RELAY@|$RELAY|g")
  for n in "${names[@]}"; do args+=(-e "s|@$n@|${port[$n]}|g"); done
  sed "${args[@]}" "$1" >"$2"
  ! grep -n '@[A-Z_]*@' "$2" || die "$2: unfilled template names"
}
# The file of the http-static row, served under /static/ by sluice, nginx
# and direct (the loadgen checks its size: 20 KiB).
# nginx's workers run as nobody when started by root: they need to get
# through $tmp (mktemp makes it 0700) to read it.
mkdir -p "$tmp/www"
head -c 20480 /dev/urandom >"$tmp/www/20k.bin"
chmod go+x "$tmp" && chmod 755 "$tmp/www" && chmod 644 "$tmp/www/20k.bin"
render scripts/bench/haproxy.cfg "$tmp/haproxy.cfg"
render scripts/bench/nginx.conf "$tmp/nginx.conf"
render scripts/bench/sluice.toml "$tmp/sluice.toml"
haproxy -c -q -f "$tmp/haproxy.cfg" || die "haproxy.cfg does not check"
nginx -t -q -p "$tmp/" -e "$tmp/nginx-error.log" -c "$tmp/nginx.conf" || die "nginx.conf does not check"
"$tmp/sluice" -check -config "$tmp/sluice.toml" >/dev/null || die "sluice.toml does not check"

wait_port() { # wait_port PORT NAME: up to 10 s
  local i
  for i in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "${pid[$2]}" 2>/dev/null || { tail -20 "$tmp/$2.log" >&2; die "$2 exited"; }
    sleep 0.1
  done
  die "$2 does not listen on $1"
}
start() { # start NAME: (re)start one process under test
  local name=$1
  [[ -n ${pid[$name]:-} ]] && stop_pid "${pid[$name]}"
  case $name in
  direct)
    GOMAXPROCS=$WORKERS "$tmp/backends" -l4 "127.0.0.1:${port[B_L4]}" -pp "127.0.0.1:${port[B_PP]}" -tls "127.0.0.1:${port[B_TLS]}" \
      -ws "127.0.0.1:${port[B_WS]}" -wss "127.0.0.1:${port[B_WSS]}" -http "127.0.0.1:${port[B_HTTP]}" \
      -https "127.0.0.1:${port[B_HTTPS]}" -www "$tmp/www" -cert "$tmp/cert.pem" -key "$tmp/key.pem" \
      >"$tmp/direct.log" 2>&1 &
    pid[direct]=$!
    wait_port "${port[B_L4]}" direct && wait_port "${port[B_WSS]}" direct && wait_port "${port[B_HTTPS]}" direct
    ;;
  haproxy)
    haproxy -db -f "$tmp/haproxy.cfg" >"$tmp/haproxy.log" 2>&1 &
    pid[haproxy]=$!
    wait_port "${port[HA_L4]}" haproxy && wait_port "${port[HA_WS]}" haproxy && wait_port "${port[HA_HTTP]}" haproxy
    ;;
  nginx)
    nginx -p "$tmp/" -e "$tmp/nginx-error.log" -c "$tmp/nginx.conf" -g 'daemon off;' >"$tmp/nginx.log" 2>&1 &
    pid[nginx]=$!
    wait_port "${port[NG_L4]}" nginx && wait_port "${port[NG_WS]}" nginx && wait_port "${port[NG_HTTP]}" nginx
    ;;
  sluice)
    GOMAXPROCS=$WORKERS "$tmp/sluice" -config "$tmp/sluice.toml" >"$tmp/sluice.log" 2>&1 &
    pid[sluice]=$!
    wait_port "${port[SL]}" sluice && wait_port "${port[SL_WEB]}" sluice
    ;;
  esac
}
spec() { # spec NAME: the loadgen target spec (no static=: the http-static row is n/a)
  local a=127.0.0.1
  case $1 in
  direct) echo "name=direct,pid=${pid[direct]},l4=$a:${port[B_L4]},pp=$a:${port[B_PP]},ppself,tls=$a:${port[B_TLS]},wss=$a:${port[B_WSS]},http=$a:${port[B_HTTPS]},static=$a:${port[B_HTTPS]}" ;;
  haproxy) echo "name=haproxy,pid=${pid[haproxy]},l4=$a:${port[HA_L4]},pp=$a:${port[HA_L4]},tls=$a:${port[HA_L4]},wss=$a:${port[HA_WS]},http=$a:${port[HA_HTTP]}" ;;
  nginx) echo "name=nginx,pid=${pid[nginx]},l4=$a:${port[NG_L4]},pp=$a:${port[NG_PP]},tls=$a:${port[NG_L4]},wss=$a:${port[NG_WS]},http=$a:${port[NG_HTTP]},static=$a:${port[NG_HTTP]}" ;;
  sluice) echo "name=sluice,pid=${pid[sluice]},l4=$a:${port[SL]},pp=$a:${port[SL]},tls=$a:${port[SL]},wss=$a:${port[SL_WEB]},http=$a:${port[SL_WEB]},static=$a:${port[SL_WEB]}" ;;
  esac
}
targets=(direct haproxy nginx sluice)
for t in "${targets[@]}"; do start "$t"; done
sleep 0.5

# Which scenarios: the load ones in one loadgen run (targets alternate inside
# each repetition), the idle ones each on a freshly started process (memory a
# process freed stays mapped, so a second measurement in the same process
# would read close to zero).
load=() idles=()
for s in ${SCENARIOS//,/ }; do
  if [[ $s == all ]]; then
    load+=(${all_load//,/ }) idles+=($all_idle)
  elif [[ " $all_idle " == *" $s "* ]]; then
    idles+=("$s")
  elif [[ ",$all_load," == *",$s,"* ]]; then
    load+=("$s")
  else
    die "unknown scenario $s"
  fi
done
secs() { local d=$1; [[ $d == *ms ]] && echo $(((${d%ms} + 999) / 1000)) || echo "${d%s}"; }
results=$tmp/results.jsonl
log "$(nproc) cores; WORKERS=$WORKERS REPS=$REPS DURATION=$DURATION STORM_DURATION=$STORM_DURATION IDLE_CONNS=$IDLE_CONNS; ports ${port[B_L4]}-${port[SL_WEB]}"
if ((${#load[@]})); then
  list=$(
    IFS=,
    echo "${load[*]}"
  )
  # Per run: warm-up, window and the workers' stop (opTimeout twice); a
  # storm adds its probe (up to 10 s plus one probe's timeouts).
  budget=30
  for s in "${load[@]}"; do
    if [[ $s == storm* ]]; then
      budget=$((budget + REPS * ${#targets[@]} * ($(secs "$STORM_DURATION") + 45)))
    else
      budget=$((budget + REPS * ${#targets[@]} * ($(secs "$DURATION") + 15)))
    fi
  done
  args=()
  for t in "${targets[@]}"; do args+=(-target "$(spec "$t")"); done
  timeout -k 5 "$budget" "$tmp/loadgen" run "${args[@]}" -scenarios "$list" -reps "$REPS" \
    -duration "$DURATION" -storm-duration "$STORM_DURATION" -warmup "$WARMUP" -results "$results" || die "loadgen failed"
fi
for ((rep = 0; rep < REPS; rep++)); do
  for s in "${idles[@]}"; do
    for ((i = 0; i < ${#targets[@]}; i++)); do
      t=${targets[$(((i + rep) % ${#targets[@]}))]}
      start "$t"
      sleep 0.3
      timeout -k 5 200 "$tmp/loadgen" run -target "$(spec "$t")" -scenarios "$s" -reps 1 -rep-base "$rep" \
        -idle-conns "$IDLE_CONNS" -results "$results" || die "loadgen failed"
    done
  done
done

repro="scripts/bench.sh"
[[ $QUICK == 1 ]] && repro="QUICK=1 $repro"
[[ $WORKERS != 1 ]] && repro="WORKERS=$WORKERS $repro"
[[ $SCENARIOS != all ]] && repro="SCENARIOS=$SCENARIOS $repro"
[[ $RELAY != epoll ]] && repro="RELAY=$RELAY $repro"
ha_version=$(haproxy -v 2>/dev/null | sed -n '1s/^HAProxy version \([^ ]*\).*/\1/p')
ng_version=$(nginx -v 2>&1 | sed -n 's|.*nginx/||p')
sl_version=$(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown)
sl_version+=" (relay $RELAY)"
header="sluice bench: WORKERS=$WORKERS REPS=$REPS DURATION=$DURATION STORM_DURATION=$STORM_DURATION IDLE_CONNS=$IDLE_CONNS; $(nproc) cores,"
header+=" Linux $(uname -r), HAProxy $ha_version, nginx $ng_version, $(go env GOVERSION), sluice $sl_version,"
header+=" $(date -u +%Y-%m-%dT%H:%MZ)"$'\n'"reproduce: $repro"
echo
"$tmp/loadgen" report -results "$results" -out "$OUT" -header "$header"
echo
log "Markdown: $OUT"
if grep -q 'note: WARNING' "$OUT"; then
  log "WARNING: after a storm a proxy failed ordinary connections; rows marked ! and * (see the notes) are suspect"
fi

# --- optional: where sluice spends its CPU -----------------------------------
if [[ -n $PROFILE ]]; then
  command -v perf >/dev/null || die "PROFILE needs perf (apt-get install linux-perf)"
  for s in ${PROFILE//,/ }; do
    start sluice
    sleep 0.3
    "$tmp/loadgen" run -target "$(spec sluice)" -scenarios "$s" -reps 1 -duration 6s -storm-duration 6s -warmup 500ms \
      -idle-conns "$IDLE_CONNS" -results "$tmp/profile.jsonl" >/dev/null 2>&1 &
    lg=$!
    sleep 1
    perf record -q -F 999 -e cpu-clock -g -p "${pid[sluice]}" -o "$tmp/perf-$s.data" -- sleep 4 >/dev/null 2>&1 &
    perf_pid=$!
    wait "$perf_pid" || true
    perf_pid=""
    for i in $(seq 1 100); do kill -0 "$lg" 2>/dev/null || break; sleep 0.2; done
    stop_pid "$lg"
    echo "== sluice profile, $s (perf record -e cpu-clock -g, 4 s under load):"
    rep() { perf report -i "$tmp/perf-$s.data" --stdio -g none "$@" 2>/dev/null | grep -E '^ +[0-9.]+%' || true; }
    echo "-- by binary:"
    rep --no-children --sort dso | head -4 || true
    echo "-- self time, top symbols:"
    rep --no-children --sort symbol | head -20 || true
    echo "-- inclusive time, top Go functions (time spent in them and below):"
    rep --children --sort symbol | grep -v '\[k\]' | grep -Ev 'runtime\.(goexit|mstart|systemstack|mcall)' | head -30 || true
    echo
  done
fi
# --- optional: syscalls per operation, side by side ---------------------------
cputicks() { # cputicks PID,PID...: their utime and stime summed, in clock ticks
  local u=0 k=0 p f
  for p in ${1//,/ }; do
    # Fields 14 and 15 (utime, stime): the 12th and 13th after the ")" that ends the command name.
    read -ra f < <(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null) || continue
    u=$((u + f[11])) k=$((k + f[12]))
  done
  echo "$u $k"
}
if [[ -n $SYSCALLS ]]; then
  command -v perf >/dev/null || die "SYSCALLS needs perf (apt-get install linux-perf)"
  for s in ${SYSCALLS//,/ }; do
    echo "== syscalls per operation, $s (perf stat on the syscall tracepoints of each proxy's processes, 3 s inside the load generator's 6 s window):"
    for t in haproxy nginx sluice; do
      [[ $s == http-static && $t == haproxy ]] && continue
      start "$t"
      sleep 0.3
      res="$tmp/syscalls-$t-$s.jsonl"
      rm -f "$res"
      "$tmp/loadgen" run -target "$(spec "$t")" -scenarios "$s" -reps 1 -duration 6s -storm-duration 6s -warmup 1s \
        -idle-conns "$IDLE_CONNS" -results "$res" >/dev/null 2>&1 &
      lg=$!
      sleep 2 # the warm-up and setup: perf counts 3 s well inside the measured window
      pids=${pid[$t]}
      for c in $(pgrep -P "${pid[$t]}" || true); do pids+=",$c"; done # nginx's workers
      ticks0=$(cputicks "$pids")
      perf stat -x, -e 'syscalls:sys_enter_*' -e context-switches -e cpu-migrations -e page-faults -p "$pids" -o "$tmp/syscalls-$t-$s.csv" -- sleep 3 >/dev/null 2>"$tmp/syscalls-$t-$s.err" || true
      ticks1=$(cputicks "$pids")
      for i in $(seq 1 100); do kill -0 "$lg" 2>/dev/null || break; sleep 0.2; done
      stop_pid "$lg"
      # ops/s from the loadgen's window, syscalls/s from perf's 3 s inside it.
      rate=$(sed -n 's/.*"ops":\([0-9]*\).*"wall_s":\([0-9.]*\).*/\1 \2/p' "$res" | awk 'NR==1 && $2 > 0 { printf "%f", $1 / $2 }')
      if [[ -z $rate ]]; then
        echo "  $t: no result"
        continue
      fi
      # Context switches and migrations are shown in parentheses, outside the total.
      perop=$(awk -F, -v rate="$rate" '$1 ~ /^[0-9]+$/ && $1 > 0 {
          name = $3; if (sub(/^syscalls:sys_enter_/, "", name) == 0) name = "(" name ")"
          printf "%.2f %s\n", $1 / 3 / rate, name }' "$tmp/syscalls-$t-$s.csv" | sort -rn)
      total=$(awk '$2 !~ /^\(/ { s += $1 } END { printf "%.1f", s }' <<<"$perop")
      if [[ -z $perop ]]; then
        echo "  $t: perf counted nothing: $(head -c 300 "$tmp/syscalls-$t-$s.err" "$tmp/syscalls-$t-$s.csv" | tr "\n" " ")"
        continue
      fi
      read -r u0 k0 <<<"$ticks0"
      read -r u1 k1 <<<"$ticks1"
      hz=$(getconf CLK_TCK)
      printf '  %-8s user %5.1f + kernel %5.1f µs/op; %5s syscalls per op (%.0f ops/s):' "$t" \
        "$(awk -v d=$((u1 - u0)) -v hz="$hz" -v r="$rate" 'BEGIN { print d / hz / 3 / r * 1e6 }')" \
        "$(awk -v d=$((k1 - k0)) -v hz="$hz" -v r="$rate" 'BEGIN { print d / hz / 3 / r * 1e6 }')" "$total" "$rate"
      awk '$1 >= 0.05 { printf " %s %s", $2, $1 }' <<<"$perop"
      echo
    done
    echo
  done
fi
log "wall time $(($(date +%s) - t_start)) s"
