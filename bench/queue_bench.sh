#!/bin/sh
# Queue mode (the durable path) against Postfix as a null client, side by
# side in one run on loopback, both relaying into the same Postfix smtp-sink
# (plaintext SMTP by default; with TLS=1 both go through an stunnel that
# terminates implicit TLS in front of the sink):
#   mailpool: mpload -M queue (libmailpool) -> mailpoold: spool, fsync with
#             group commit, 250 -> delivery over a warm pool of 8 sessions
#   Postfix:  its sendmail -> postdrop -> pickup/cleanup/qmgr -> smtp client
#             (connection cache on) -> relayhost, a private instance
# Reports durable submissions/s, hand-off latency (time to the durable 250)
# and end-to-end time until the sink has every message, then the SPEC
# section 7 queue-mode targets with PASS/MISS.
#
# Usage: bench/queue_bench.sh     (builds into $BUILD_DIR, default build/; run
#                                  as root: Postfix's master and postdrop need it)
# Environment (defaults in brackets):
#   N [2000]            messages per mailpool case (1 sender, then CLIENTS)
#   CLIENTS [8]         concurrent senders in the parallel cases (both sides)
#   N_POSTFIX [500]     messages per Postfix case (one sendmail process each)
#   REPEAT [1]          runs of each mailpool case; the run with the median
#                       end-to-end rate is reported
#   MSG_KB [4]          message size
#   TLS [0]             1: both relay over implicit TLS (stunnel in front of
#                       the sink); mailpool's pooled sessions and Postfix's
#                       cached ones (smtp_tls_connection_reuse) skip handshakes
#   BUILD_DIR [build]   cmake build directory
#   TMPDIR [/tmp]       where the temporary directory (and so the spool and
#                       Postfix's queue) goes: put it on the disk under test
#   LAT_DIR [unset]     keep the per-message hand-off latencies (microseconds)
#   PERF_DATA [unset]   if set, `perf record -g` mailpoold during the
#                       parallel mailpool case into this file
#
# The system's Postfix (/etc/postfix, /var/spool/postfix, its master) is
# neither read nor changed: the private instance has its own main.cf,
# master.cf, queue and data directories under the temporary directory, no
# listening service, and is stopped with `postfix -c DIR stop` on exit.
set -eu
cd "$(dirname "$0")/.."
top=$(pwd)
N=${N:-2000}
CLIENTS=${CLIENTS:-8}
N_POSTFIX=${N_POSTFIX:-500}
REPEAT=${REPEAT:-1}
MSG_KB=${MSG_KB:-4}
TLS=${TLS:-0}
BUILD_DIR=${BUILD_DIR:-build}
PERF_DATA=${PERF_DATA:-}
LAT_DIR=${LAT_DIR:-}
helper="/usr/bin/python3 $top/bench/bench_helper.py"

if [ "$(id -u)" -ne 0 ]; then
    echo "queue_bench.sh: run as root (a private Postfix instance needs it)" >&2
    exit 1
fi
scripts/deps.sh --bench
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc 2>/dev/null || echo 2)" --target mailpoold mpload >/dev/null

work=$(mktemp -d "${TMPDIR:-/tmp}/mailpool-queue-bench.XXXXXX")
# Postfix's daemons run as user postfix and must reach their queue below it.
chmod 755 "$work"
pids=""
pf_conf=""
cleanup() {
    if [ -n "$pf_conf" ]; then
        postfix -c "$pf_conf" stop >/dev/null 2>&1 || true
        # `stop` only signals master; wait until it is gone, and end it by its
        # own pid if it lingers.
        pf_pid=$(tr -d ' ' <"$work/postfix/queue/pid/master.pid" 2>/dev/null || true)
        i=0
        while [ -n "$pf_pid" ] && kill -0 "$pf_pid" 2>/dev/null; do
            i=$((i + 1))
            if [ $i -gt 100 ]; then
                kill -9 "$pf_pid" 2>/dev/null || true
                break
            fi
            sleep 0.1
        done
    fi
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    for p in $pids; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# shellcheck source=bench/common.sh
. "$top/bench/common.sh"


lat_dir=${LAT_DIR:-$work}
mkdir -p "$lat_dir"
sink_port=$(free_port)

# 1. The sink, plaintext, wrapped by the helper that counts its messages
# (smtp-sink -c prints a running count as each final dot arrives).
$helper sink -s "$work/sink.sock" -- /usr/sbin/smtp-sink -u nobody -c -a -m 1000 \
    "127.0.0.1:$sink_port" 1000 2>"$work/sink.log" &
sink_pid=$!
pids="$pids $sink_pid"
i=0
until [ -S "$work/sink.sock" ]; do
    kill -0 "$sink_pid" 2>/dev/null || { cat "$work/sink.log" >&2; exit 1; }
    i=$((i + 1)); [ $i -lt 100 ] || { echo "smtp-sink did not start" >&2; exit 1; }
    sleep 0.05
done
wait_port "$sink_port" "$sink_pid" sink

# The port both relay to: the sink itself, or stunnel's implicit-TLS front.
relay_port=$sink_port
if [ "$TLS" = 1 ]; then
    relay_port=$(free_port)
    cat >"$work/stunnel.conf" <<CONF
foreground = yes
pid =
output = $work/stunnel.log
debug = warning
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
[smtps-server]
accept = 127.0.0.1:$relay_port
connect = 127.0.0.1:$sink_port
cert = $top/tests/certs/server.pem
key = $top/tests/certs/server.key
CONF
    stunnel "$work/stunnel.conf" >>"$work/stunnel.log" 2>&1 &
    stunnel_pid=$!
    pids="$pids $stunnel_pid"
    wait_port "$relay_port" "$stunnel_pid" stunnel
    mp_relay='hosts = [ "localhost:'$relay_port'" ];
    options = [ "extended", "secure_implicit" ];
    tls = { ca_file = "'$top'/tests/certs/ca.pem"; };'
    pf_tls="smtp_tls_wrappermode = yes
smtp_tls_security_level = encrypt
smtp_tls_connection_reuse = yes
smtp_tls_loglevel = 1"
    transport="implicit TLS (stunnel in front of the sink) on both sides"
else
    mp_relay='hosts = [ "127.0.0.1:'$sink_port'" ];
    options = [ "extended" ];'
    pf_tls="smtp_tls_security_level = none"
    transport="plaintext SMTP on 127.0.0.1 (no TLS on either side)"
fi

# A message of MSG_KB KiB.
{
    printf 'From: bench@bench.mailpool.test\nTo: sink@example.test\nSubject: bench\n\n'
    i=0
    while [ $i -lt $((MSG_KB * 64)) ]; do
        printf '%s\n' "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd"
        i=$((i + 1))
    done
} >"$work/msg"

# Where the spool lives: the durable figure is a property of this device.
spool_fs=$(findmnt -n -o SOURCE,FSTYPE,OPTIONS -T "$work" 2>/dev/null || df -T "$work" | tail -1)
if [ -d /var/spool ] && [ "$(stat -c %d "$work")" = "$(stat -c %d /var/spool)" ]; then
    same_fs="yes"
else
    same_fs="NO: set TMPDIR to a directory on /var/spool's file system"
fi

# 2. mailpoold, one relay in queue mode, a warm pool of 8 plaintext sessions.
cat >"$work/mailpool.conf" <<CONF
daemon = {
  hostname = "bench.mailpool.test";
  submit_socket = "$work/submit.sock";
  control_socket = "$work/control.sock";
  spool_dir = "$work/spool";
  max_clients = 256;
  log_level = "warn";
};
default_relay = "sink";
relays = {
  sink = {
    $mp_relay
    mode = "queue";
    pool = { max_connections = 8; min_idle = 8; idle_timeout = 3600; max_messages = 0;
             max_age = 0; };
  };
};
CONF
start_daemon
$helper control -s "$work/control.sock" pool --wait-idle 8 >/dev/null

mpload="$BUILD_DIR/bench/mpload -s $work/submit.sock -m $work/msg -M queue"
e2e_mp="$helper e2e -S $work/sink.sock -C $work/control.sock"
# Warm-up: the spool's directories, the pooled sessions and the client path.
# shellcheck disable=SC2086 # $mpload and $helper are command lines
$e2e_mp -n $((CLIENTS * 20)) -- $mpload -c "$CLIENTS" -n $((CLIENTS * 20)) >/dev/null

# 3a. mailpool queue mode, 1 and CLIENTS senders.
# shellcheck disable=SC2086
run_case e2e_msgs/s mq1 "mailpool queue, 1 sender" "$REPEAT" \
    $e2e_mp -n "$N" -- $mpload -c 1 -n "$N" -o "$lat_dir/lat-mq1"
perf_pid=""
if [ -n "$PERF_DATA" ]; then
    perf record -g -o "$PERF_DATA" -p "$daemon_pid" >"$work/perf.log" 2>&1 &
    perf_pid=$!
    sleep 0.5
fi
# shellcheck disable=SC2086
run_case e2e_msgs/s mqN "mailpool queue, $CLIENTS senders" "$REPEAT" \
    $e2e_mp -n "$N" -- $mpload -c "$CLIENTS" -n "$N" -o "$lat_dir/lat-mqN"
if [ -n "$perf_pid" ]; then
    kill -INT "$perf_pid"
    wait "$perf_pid" || true
fi
$helper control -s "$work/control.sock" pool >"$work/pool.json"
kill "$daemon_pid"
wait "$daemon_pid" || true
pids=$(echo "$pids" | sed "s/ $daemon_pid\$//; s/ $daemon_pid / /")

# 4. Postfix as a null client: a private instance relaying everything to the
# sink.  No smtpd and no local delivery; the connection cache is forced on for
# the relayhost (by default Postfix caches only when a backlog forms).
pf=$work/postfix
pf_conf_dir=$pf/etc
mkdir -p "$pf_conf_dir" "$pf/queue" "$pf/data"
chown postfix: "$pf/data"
cat >"$pf_conf_dir/main.cf" <<CONF
compatibility_level = 3.6
config_directory = $pf_conf_dir
queue_directory = $pf/queue
data_directory = $pf/data
maillog_file = $pf/maillog
maillog_file_prefixes = $pf
myhostname = bench.mailpool.test
mydomain = mailpool.test
myorigin = \$myhostname
inet_interfaces = loopback-only
inet_protocols = ipv4
mydestination =
local_transport = error:local delivery is disabled
alias_maps =
alias_database =
relayhost = [127.0.0.1]:$relay_port
smtp_connection_cache_on_demand = yes
smtp_connection_cache_destinations = \$relayhost, 127.0.0.1, [127.0.0.1]
$pf_tls
biff = no
CONF
# Only what a null client uses; postlogd writes maillog_file.
cat >"$pf_conf_dir/master.cf" <<'CONF'
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
tlsproxy  unix  -       -       n       -       0       tlsproxy
postlog   unix-dgram n  -       n       -       1       postlogd
CONF
pf_conf=$pf_conf_dir
if ! postfix -c "$pf_conf" start >"$work/postfix-start.log" 2>&1; then
    echo "private Postfix did not start:" >&2
    cat "$work/postfix-start.log" "$pf/maillog" >&2 2>/dev/null || true
    exit 1
fi
pf_version=$(postconf -c "$pf_conf" -h mail_version 2>/dev/null || echo "?")
sendmail_cmd="env MAIL_CONFIG=$pf_conf /usr/sbin/sendmail -i -f bench@bench.mailpool.test
    sink@example.test"
e2e_pf="$helper e2e -S $work/sink.sock"
# Warm-up: every Postfix service started once, a cached session to the sink.
# shellcheck disable=SC2086
$e2e_pf -n 20 -t 120 -- $helper procs -p 4 -n 20 -i "$work/msg" -- $sendmail_cmd >/dev/null

# 4a. sequential, then CLIENTS sendmail processes in parallel.
# shellcheck disable=SC2086
run_case e2e_msgs/s pf1 "Postfix null client, sequential" 1 \
    $e2e_pf -n "$N_POSTFIX" -- $helper procs -p 1 -n "$N_POSTFIX" -i "$work/msg" \
    -o "$lat_dir/lat-pf1" -- $sendmail_cmd
# shellcheck disable=SC2086
run_case e2e_msgs/s pfN "Postfix null client, $CLIENTS parallel" 1 \
    $e2e_pf -n "$N_POSTFIX" -- $helper procs -p "$CLIENTS" -n "$N_POSTFIX" -i "$work/msg" \
    -o "$lat_dir/lat-pfN" -- $sendmail_cmd
pf_reuse=$(grep -c 'conn_use=' "$pf/maillog" || true)
pf_sent=$(grep -c 'status=sent' "$pf/maillog" || true)
pf_other=$(grep -c 'status=\(deferred\|bounced\)' "$pf/maillog" || true)
pf_tls_conns=$(grep -c 'TLS connection established' "$pf/maillog" || true)

# 5. The table, ratios and targets.
echo
echo "sink: Postfix smtp-sink; relaying over $transport;"
echo "  received messages counted from smtp-sink -c's running counter"
echo "spool and Postfix queue: $work on $spool_fs"
echo "  same file system as /var/spool: $same_fs"
echo "message: $MSG_KB KiB; mailpool N=$N per case, Postfix $pf_version N=$N_POSTFIX per case"
$helper queue-report "$work/results"
echo
/usr/bin/python3 - "$work/pool.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["relays"]:
    print("mailpool pool '%s' after its cases: %d sessions opened, %d reuses, %d failed, "
          "%d messages, %d retried" % (r["name"], r["opened"], r["reused"], r["failed"],
                                       r["messages"], r["retried"]))
PY
echo "Postfix: $pf_sent delivered ($pf_reuse over a cached session), $pf_other deferred/bounced"
[ "$TLS" != 1 ] || echo "Postfix: $pf_tls_conns TLS handshakes"
if [ -s "$work/mailpoold.log" ]; then
    echo "mailpoold warnings:"
    sed 's/^/  /' "$work/mailpoold.log" | head -20
fi
if [ -s "$work/sink.log" ]; then
    echo "smtp-sink said:"
    sed 's/^/  /' "$work/sink.log" | head -10
fi
