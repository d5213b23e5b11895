#!/bin/sh
# Relay mode with a warm pool against the alternatives, side by side in one
# run on loopback, all into the same Postfix smtp-sink (behind stunnel for TLS):
#   mailpool: mpload (libmailpool) -> mailpoold -> 8 pooled implicit-TLS sessions
#   msmtp:    one process and one TLS session per message
#   smtp-source -d: reused plaintext sessions straight to the sink (the ceiling),
#             and through a stunnel TLS client (same TLS path as the others)
# then mailpoold's memory idle and with 1,000 idle clients, and SPEC section 7
# targets with PASS/MISS.
#
# Usage: bench/relay_bench.sh     (builds into $BUILD_DIR, default build/)
# Environment (defaults in brackets):
#   N [8000]            messages per mailpool case (1 client, then CLIENTS clients)
#   CLIENTS [8]         mailpool clients and smtp-source sessions in the parallel cases
#   N_MSMTP [200]       messages per msmtp case (one process each: slow)
#   MSMTP_PAR [8]       msmtp processes in parallel
#   N_SOURCE [5000]     messages per smtp-source case
#   REPEAT [3]          runs of each mailpool and smtp-source case; the run
#                       with the median throughput is reported
#   IDLE_CLIENTS [1000] idle submission connections for the memory figure
#   MSG_KB [4]          message size
#   BUILD_DIR [build]   cmake build directory
#   LAT_DIR [unset]     keep the per-message latencies (microseconds, one per
#                       line; of the last run of each case) in this directory
#   PERF_DATA [unset]   if set, `perf record -g` mailpoold during the parallel
#                       mailpool case into this file
set -eu
cd "$(dirname "$0")/.."
top=$(pwd)
N=${N:-8000}
CLIENTS=${CLIENTS:-8}
N_MSMTP=${N_MSMTP:-200}
MSMTP_PAR=${MSMTP_PAR:-8}
N_SOURCE=${N_SOURCE:-5000}
REPEAT=${REPEAT:-3}
IDLE_CLIENTS=${IDLE_CLIENTS:-1000}
MSG_KB=${MSG_KB:-4}
BUILD_DIR=${BUILD_DIR:-build}
PERF_DATA=${PERF_DATA:-}
LAT_DIR=${LAT_DIR:-}
helper="/usr/bin/python3 $top/bench/bench_helper.py"

scripts/deps.sh --bench
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc 2>/dev/null || echo 2)" --target mailpoold mpload >/dev/null

# 1,000 idle clients plus the daemon's own sockets need more than 1024 fds.
want_fds=$((IDLE_CLIENTS + 256))
# shellcheck disable=SC3045 # dash, bash and busybox sh all have ulimit -n/-H
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$want_fds" ]; then
    ulimit -n "$want_fds" 2>/dev/null || ulimit -n "$(ulimit -Hn)" ||
        echo "warning: cannot raise the open-file limit to $want_fds" >&2
fi

work=$(mktemp -d /tmp/mailpool-relay-bench.XXXXXX)
pids=""
daemon_pid=""
cleanup() {
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    for p in $pids; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# shellcheck source=bench/common.sh
. "$top/bench/common.sh"

rss() { # rss ROLE LABEL: append "ROLE|LABEL|VmRSS kB|VmHWM kB" to the memory file
    r=$(awk '/^VmRSS:/ { print $2 }' "/proc/$daemon_pid/status")
    h=$(awk '/^VmHWM:/ { print $2 }' "/proc/$daemon_pid/status")
    echo "$1|$2|$r|$h" >>"$work/rss"
}

lat_dir=${LAT_DIR:-$work}
mkdir -p "$lat_dir"
sink_port=$(free_port)
tls_port=$(free_port)
tunnel_port=$(free_port)

# 1. The sink (plaintext; no -c: nothing printed per message) and stunnel:
# a server that terminates implicit TLS in front of the sink, and a client
# service so smtp-source can take the same TLS path.
/usr/sbin/smtp-sink -u nobody -a -m 1000 "127.0.0.1:$sink_port" 1000 >"$work/sink.log" 2>&1 &
sink_pid=$!
pids="$pids $sink_pid"
wait_port "$sink_port" "$sink_pid" sink

cat >"$work/stunnel.conf" <<CONF
foreground = yes
pid =
output = $work/stunnel.log
debug = warning
; Nagle on stunnel's own sockets would only add stunnel's delays to every client.
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
[smtps-server]
accept = 127.0.0.1:$tls_port
connect = 127.0.0.1:$sink_port
cert = $top/tests/certs/server.pem
key = $top/tests/certs/server.key
[smtps-client]
client = yes
accept = 127.0.0.1:$tunnel_port
connect = 127.0.0.1:$tls_port
CAfile = $top/tests/certs/ca.pem
verifyChain = yes
checkHost = localhost
CONF
stunnel "$work/stunnel.conf" >>"$work/stunnel.log" 2>&1 &
stunnel_pid=$!
pids="$pids $stunnel_pid"
wait_port "$tls_port" "$stunnel_pid" stunnel
wait_port "$tunnel_port" "$stunnel_pid" stunnel

# 2. mailpoold, relay mode, a pool of 8 warm implicit-TLS sessions.
cat >"$work/mailpool.conf" <<CONF
daemon = {
  hostname = "bench.mailpool.test";
  submit_socket = "$work/submit.sock";
  control_socket = "$work/control.sock";
  spool_dir = "$work/spool";
  max_clients = $((IDLE_CLIENTS + 100));
  log_level = "warn";
};
default_relay = "sink";
relays = {
  sink = {
    hosts = [ "localhost:$tls_port" ];
    options = [ "extended", "secure_implicit" ];
    mode = "relay";
    tls = { ca_file = "$top/tests/certs/ca.pem"; };
    pool = { max_connections = 8; min_idle = 8; idle_timeout = 3600; max_messages = 0;
             max_age = 0; };
  };
  # The same sink without TLS: the like-for-like comparison with smtp-source -d.
  plain = {
    hosts = [ "127.0.0.1:$sink_port" ];
    options = [ "extended" ];
    mode = "relay";
    pool = { max_connections = 8; min_idle = 8; idle_timeout = 3600; max_messages = 0;
             max_age = 0; };
  };
};
CONF
mkdir -p "$work/spool"
start_daemon
$helper control -s "$work/control.sock" pool --wait-idle 8 >/dev/null
rss idle "idle after start"

# A message of MSG_KB KiB, as in the reference figures.
{
    printf 'From: bench@bench.mailpool.test\nTo: sink@example.test\nSubject: bench\n\n'
    i=0
    while [ $i -lt $((MSG_KB * 64)) ]; do
        printf '%s\n' "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd"
        i=$((i + 1))
    done
} >"$work/msg"

mpload="$BUILD_DIR/bench/mpload -s $work/submit.sock -m $work/msg"
# Warm-up: every pooled session and the client path carry a few messages first.
$mpload -c "$CLIENTS" -n $((CLIENTS * 20)) >/dev/null

# 3a. mailpool relay mode.
# shellcheck disable=SC2086 # $mpload and $helper are command lines
run_case msgs/s mp1 "mailpool relay, 1 client" "$REPEAT" $mpload -c 1 -n "$N" -o "$lat_dir/lat-mp1"
perf_pid=""
if [ -n "$PERF_DATA" ]; then
    perf record -g -o "$PERF_DATA" -p "$daemon_pid" >"$work/perf.log" 2>&1 &
    perf_pid=$!
    sleep 0.5
fi
# shellcheck disable=SC2086
run_case msgs/s mpN "mailpool relay, $CLIENTS clients" "$REPEAT" \
    $mpload -c "$CLIENTS" -n "$N" -o "$lat_dir/lat-mpN"
if [ -n "$perf_pid" ]; then
    kill -INT "$perf_pid"
    wait "$perf_pid" || true
fi
# 3a'. mailpool relay mode to the plaintext sink (relay "plain").
# shellcheck disable=SC2086
run_case msgs/s mpP1 "mailpool relay plaintext, 1 client" "$REPEAT" \
    $mpload -r plain -c 1 -n "$N" -o "$lat_dir/lat-mpP1"
# shellcheck disable=SC2086
run_case msgs/s mpPN "mailpool relay plaintext, $CLIENTS clients" "$REPEAT" \
    $mpload -r plain -c "$CLIENTS" -n "$N" -o "$lat_dir/lat-mpPN"
$helper control -s "$work/control.sock" pool >"$work/pool.json"
rss - "idle after the load"

# 3b. msmtp, one process (and one TLS handshake) per message.
msmtp_cmd="msmtp --host=localhost --port=$tls_port --tls=on --tls-starttls=off
    --tls-trust-file=$top/tests/certs/ca.pem --auth=off --domain=bench.mailpool.test
    --from=bench@bench.mailpool.test sink@example.test"
# shellcheck disable=SC2086
run_case msgs/s ms1 "msmtp TLS, sequential" 1 \
    $helper procs -p 1 -n "$N_MSMTP" -i "$work/msg" -o "$lat_dir/lat-msmtp1" -- $msmtp_cmd
# shellcheck disable=SC2086
run_case msgs/s msN "msmtp TLS, $MSMTP_PAR parallel" 1 \
    $helper procs -p "$MSMTP_PAR" -n "$N_MSMTP" -i "$work/msg" -o "$lat_dir/lat-msmtpN" -- $msmtp_cmd

# 3c/d. smtp-source -d: reused sessions, plaintext to the sink, then through
# stunnel (client) -> stunnel (server) -> sink.  -m is the total over all
# sessions.  -l (a generated body of the same size) rather than -F: with -F
# smtp-source writes line by line and measures itself more than the sink.
source_case() { # source_case ROLE LABEL PORT SESSIONS
    # shellcheck disable=SC2086
    run_case msgs/s "$1" "$2" "$REPEAT" $helper timed -n "$N_SOURCE" -- /usr/sbin/smtp-source -d \
        -s "$4" -m "$N_SOURCE" -l "$((MSG_KB * 1024))" -f bench@bench.mailpool.test \
        -t sink@example.test -M bench.mailpool.test "127.0.0.1:$3"
}
source_case ss1 "smtp-source -d, 1 session" "$sink_port" 1
source_case ssN "smtp-source -d, $CLIENTS sessions" "$sink_port" "$CLIENTS"
source_case st1 "smtp-source -d via TLS, 1 session" "$tunnel_port" 1
source_case stN "smtp-source -d via TLS, $CLIENTS sessions" "$tunnel_port" "$CLIENTS"

# 5. Memory with IDLE_CLIENTS connected, idle clients (past greeting and LHLO).
echo "mailpoold memory with $IDLE_CLIENTS idle clients" >&2
$helper idle -k "$IDLE_CLIENTS" -s "$work/submit.sock" -r "$work/idle.ready" &
idle_pid=$!
pids="$pids $idle_pid"
i=0
while [ ! -s "$work/idle.ready" ]; do
    kill -0 "$idle_pid" 2>/dev/null || { echo "idle-client helper failed" >&2; exit 1; }
    i=$((i + 1)); [ $i -lt 600 ] || { echo "idle clients did not connect" >&2; exit 1; }
    sleep 0.1
done
connected=$($helper control -s "$work/control.sock" status |
    /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["clients"])')
rss clients "with $IDLE_CLIENTS idle clients"
kill "$idle_pid"
wait "$idle_pid" || true
sleep 0.5
rss - "after they closed"

# 4 and 6. The table, ratios, memory and targets.
$helper report "$work/results" "$work/rss"
echo
echo "daemon reported $connected connected clients while the idle clients were held"
/usr/bin/python3 - "$work/pool.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["relays"]:
    print("pool '%s' after the mailpool cases: %d sessions opened, %d reuses, %d failed, "
          "%d messages, %d retried" % (r["name"], r["opened"], r["reused"], r["failed"],
                                       r["messages"], r["retried"]))
PY
if [ -s "$work/mailpoold.log" ]; then
    echo "mailpoold warnings:"
    sed 's/^/  /' "$work/mailpoold.log" | head -20
fi
