#!/bin/sh
# Load soak: many concurrent clients and many messages, in relay and queue
# mode at once, through a sink that injects upstream faults (random 421 and
# close, drops mid-DATA and after the dot, slow replies).  Reports throughput,
# hand-off latency percentiles, the daemon's RSS and open fds over time, and
# the count of lost messages (accepted with 250 but never delivered: must be 0).
#
# Client mix: IDLE_CLIENTS connections held open past LHLO by bench_helper.py
# (they only cost the daemon memory and fds), plus SENDERS active libmailpool
# handles per mode (mpload threads) sending back to back; together CLIENTS.
#
# Usage: bench/soak.sh     (builds into $BUILD_DIR, default build/)
# Environment (defaults in brackets):
#   SOAK_N [100000]     messages in all, half relay mode, half queue mode
#   CLIENTS [1000]      concurrent client connections in all
#   SENDERS [16]        active senders per mode (the rest of CLIENTS idle)
#   P421 [0.01] PDROP_DATA [0.005] PDROP_DOT [0.005] PSLOW [0.01] SLOW_MS [200]
#                       fault rates per upstream message and the slow delay
#   DRAIN_TIMEOUT [600] seconds to wait for the queue to empty at the end
#   MSG_KB [2]          message size
#   BUILD_DIR [build]   cmake build directory
#   KEEP [unset]        keep the run's directory (samples, ids, logs)
# Exits 1 if any accepted message was lost or the queue did not drain.
set -eu
cd "$(dirname "$0")/.."
top=$(pwd)
SOAK_N=${SOAK_N:-100000}
CLIENTS=${CLIENTS:-1000}
SENDERS=${SENDERS:-16}
P421=${P421:-0.01}
PDROP_DATA=${PDROP_DATA:-0.005}
PDROP_DOT=${PDROP_DOT:-0.005}
PSLOW=${PSLOW:-0.01}
SLOW_MS=${SLOW_MS:-200}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-600}
MSG_KB=${MSG_KB:-2}
BUILD_DIR=${BUILD_DIR:-build}
KEEP=${KEEP:-}
helper="/usr/bin/python3 $top/bench/bench_helper.py"
idle=$((CLIENTS - 2 * SENDERS))
[ "$idle" -ge 0 ] || idle=0
half=$((SOAK_N / 2))

cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc 2>/dev/null || echo 2)" --target mailpoold mpload >/dev/null

want_fds=$((CLIENTS + 256))
# shellcheck disable=SC3045 # dash, bash and busybox sh all have ulimit -n/-H
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$want_fds" ]; then
    ulimit -n "$want_fds" 2>/dev/null || ulimit -n "$(ulimit -Hn)" ||
        echo "warning: cannot raise the open-file limit to $want_fds" >&2
fi

work=$(mktemp -d /tmp/mailpool-soak.XXXXXX)
pids=""
cleanup() {
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    for p in $pids; do wait "$p" 2>/dev/null || true; done
    if [ -n "$KEEP" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# shellcheck source=bench/common.sh
. "$top/bench/common.sh"

# 1. The fault-injecting sink.
sink_port=$(free_port)
/usr/bin/python3 "$top/bench/soak_sink.py" -p "$sink_port" -o "$work/sink.ids" \
    --p421 "$P421" --pdrop-data "$PDROP_DATA" --pdrop-dot "$PDROP_DOT" --pslow "$PSLOW" \
    --slow-ms "$SLOW_MS" 2>"$work/sink.log" &
sink_pid=$!
pids="$pids $sink_pid"
wait_port "$sink_port" "$sink_pid" sink

# 2. mailpoold with two relays to it: relay mode and queue mode, short retries.
cat >"$work/mailpool.conf" <<CONF
daemon = {
  hostname = "soak.mailpool.test";
  submit_socket = "$work/submit.sock";
  control_socket = "$work/control.sock";
  spool_dir = "$work/spool";
  max_clients = $((CLIENTS + 100));
  log_level = "warn";
};
spool = { retry_min = 1; retry_max = 2; };
default_relay = "rl";
relays = {
  rl = {
    hosts = [ "127.0.0.1:$sink_port" ];
    options = [ "extended" ];
    mode = "relay";
    pool = { max_connections = 8; min_idle = 4; idle_timeout = 3600; max_messages = 0;
             max_age = 0; };
  };
  qu = {
    hosts = [ "127.0.0.1:$sink_port" ];
    options = [ "extended" ];
    mode = "queue";
    pool = { max_connections = 8; min_idle = 4; idle_timeout = 3600; max_messages = 0;
             max_age = 0; };
  };
};
CONF
mkdir -p "$work/spool"
start_daemon

# 3. RSS and open fds of the daemon, once a second: "seconds rss_kB fds".
(
    t=0
    while kill -0 "$daemon_pid" 2>/dev/null; do
        r=$(awk '/^VmRSS:/ { print $2 }' "/proc/$daemon_pid/status" 2>/dev/null || true)
        f=$(find "/proc/$daemon_pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
        [ -z "$r" ] || echo "$t $r $f" >>"$work/samples"
        t=$((t + 1))
        sleep 1
    done
) &
pids="$pids $!"

# 4. The idle clients.
if [ "$idle" -gt 0 ]; then
    $helper idle -k "$idle" -s "$work/submit.sock" -r "$work/idle.ready" &
    idle_pid=$!
    pids="$pids $idle_pid"
    i=0
    while [ ! -s "$work/idle.ready" ]; do
        kill -0 "$idle_pid" 2>/dev/null || { echo "idle-client helper failed" >&2; exit 1; }
        i=$((i + 1)); [ $i -lt 600 ] || { echo "idle clients did not connect" >&2; exit 1; }
        sleep 0.1
    done
fi

{
    printf 'From: soak@soak.mailpool.test\nTo: sink@example.test\nSubject: soak\n\n'
    i=0
    while [ $i -lt $((MSG_KB * 64)) ]; do
        printf '%s\n' "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd"
        i=$((i + 1))
    done
} >"$work/msg"

# 5. Both modes at once.  mpload exits 1 when any send was not 250: expected
# in relay mode under faults, so its status is not fatal; its counts are used.
echo "soak: $SOAK_N messages, $idle idle + $((2 * SENDERS)) active clients" >&2
mpload="$BUILD_DIR/bench/mpload -s $work/submit.sock -m $work/msg"
t_start=$(date +%s.%N)
$mpload -r rl -M relay -c "$SENDERS" -n "$half" -I r -A "$work/acc.rl" \
    -o "$work/lat.rl" >"$work/out.rl" 2>"$work/err.rl" &
rl_pid=$!
$mpload -r qu -M queue -c "$SENDERS" -n "$((SOAK_N - half))" -I q -A "$work/acc.qu" \
    -o "$work/lat.qu" >"$work/out.qu" 2>"$work/err.qu" &
qu_pid=$!
pids="$pids $rl_pid $qu_pid"
wait "$rl_pid" || true
wait "$qu_pid" || true
t_sent=$(date +%s.%N)

# 6. Wait for the queue to drain.
drained=0
i=0
while [ $i -lt "$DRAIN_TIMEOUT" ]; do
    n=$($helper control -s "$work/control.sock" queue |
        /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])')
    if [ "$n" = 0 ]; then drained=1; break; fi
    i=$((i + 1))
    sleep 1
done
t_end=$(date +%s.%N)
$helper control -s "$work/control.sock" pool >"$work/pool.json"
sleep 1 # one more sample after the drain
kill "$sink_pid"
wait "$sink_pid" || true

# 7. Report.
rc=0
/usr/bin/python3 - "$work" "$t_start" "$t_sent" "$t_end" "$drained" <<'PY' || rc=$?
import collections, json, sys
work, t0, t1, t2, drained = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), \
    float(sys.argv[4]), sys.argv[5] == "1"

def kv(path):
    d = {}
    for line in open(path):
        p = line.split()
        if len(p) == 2:
            d[p[0]] = p[1]
    return d

def pct(v, p):
    return v[max(0, (len(v) * p + 99) // 100 - 1)] if v else 0

seen = collections.Counter(l.strip() for l in open(work + "/sink.ids") if l.strip())
lost_total = 0
acc_total = 0
for mode, tag in (("relay", "rl"), ("queue", "qu")):
    out = kv("%s/out.%s" % (work, tag))
    acc = [l.strip() for l in open("%s/acc.%s" % (work, tag))]
    lat = sorted(int(l) for l in open("%s/lat.%s" % (work, tag)))
    lost = [a for a in acc if seen[a] == 0]
    lost_total += len(lost)
    acc_total += len(acc)
    print("%s mode: sent %s, accepted (250) %d, not accepted (4xx/5xx/transport) %s, "
          "lost %d" % (mode, out.get("count"), len(acc), out.get("failed"), len(lost)))
    print("  hand-off latency p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms; %s msgs/s"
          % (pct(lat, 50) / 1e3, pct(lat, 90) / 1e3, pct(lat, 99) / 1e3,
             (lat[-1] if lat else 0) / 1e3, out.get("msgs/s")))
    if lost:
        print("  first lost ids: " + " ".join(lost[:10]))
    with open("%s/err.%s" % (work, tag)) as f:
        errs = f.read().splitlines()
    for e in errs[:3]:
        print("  " + e)
dups = sum(c - 1 for c in seen.values() if c > 1)
print("sink: %d deliveries, %d unique ids, %d duplicates (retries in the ambiguous window)"
      % (sum(seen.values()), len(seen), dups))
print("throughput: %.0f accepted msgs/s over the send phase (%.1f s); drain took %.1f s more"
      % (acc_total / (t1 - t0), t1 - t0, t2 - t1))
samples = [tuple(map(int, l.split())) for l in open(work + "/samples")]
rss = [s[1] for s in samples]
fds = [s[2] for s in samples]
print("daemon RSS kB: min %d, max %d, last %d (%d samples, 1/s)"
      % (min(rss), max(rss), rss[-1], len(rss)))
print("daemon open fds: min %d, max %d, last %d" % (min(fds), max(fds), fds[-1]))
step = max(1, len(samples) // 12)
print("  t(s)  RSS kB  fds: " + ", ".join("%d:%d/%d" % s for s in samples[::step]))
for r in json.load(open(work + "/pool.json"))["relays"]:
    print("pool '%s': %d opened, %d reused, %d failed, %d messages, %d retried"
          % (r["name"], r["opened"], r["reused"], r["failed"], r["messages"], r["retried"]))
with open(work + "/sink.log") as f:
    print("sink faults: " + f.read().strip())
print("queue drained: %s" % ("yes" if drained else "NO"))
print("LOST: %d" % lost_total)
sys.exit(0 if lost_total == 0 and drained else 1)
PY
if [ -s "$work/mailpoold.log" ]; then
    echo "mailpoold warnings ($(wc -l <"$work/mailpoold.log") lines):"
    sed 's/^/  /' "$work/mailpoold.log" | head -10
fi
exit $rc
