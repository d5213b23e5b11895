#!/bin/sh
# Wall time per message for N sequential sendmail-style submissions, one
# process per message, all into the same Postfix smtp-sink on loopback in
# the same run:
#   mailpool-sendmail -odi -> mailpoold (relay mode, warm pooled session) -> smtp-sink
#   msmtp (plaintext, one SMTP session per message)      -> smtp-sink
# Usage: bench/sendmail_vs_msmtp.sh [N]   (default 200; builds into build/)
set -eu
cd "$(dirname "$0")/.."
top=$(pwd)
N=${1:-200}

scripts/deps.sh --bench
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc 2>/dev/null || echo 2)" --target mailpoold mailpool-sendmail >/dev/null

work=$(mktemp -d /tmp/mailpool-bench.XXXXXX)
pids=""
cleanup() {
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    for p in $pids; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
now_ns() { date +%s%N; }

port=$(free_port)
/usr/sbin/smtp-sink -u nobody -c "127.0.0.1:$port" 256 >"$work/sink.out" 2>&1 &
pids="$pids $!"

cat >"$work/mailpool.conf" <<CONF
daemon = { hostname = "bench.mailpool.test"; submit_socket = "$work/submit.sock"; control_socket = "$work/control.sock"; spool_dir = "$work/spool"; log_level = "warn"; };
default_relay = "sink";
relays = { sink = { hosts = [ "127.0.0.1:$port" ]; options = [ "extended" ]; mode = "relay";
                    pool = { max_connections = 4; idle_timeout = 600; max_messages = 0; }; }; };
CONF
build/mailpoold -c "$work/mailpool.conf" 2>"$work/mailpoold.log" &
pids="$pids $!"
i=0
while [ ! -S "$work/submit.sock" ]; do
    i=$((i + 1)); [ $i -lt 100 ] || { echo "mailpoold did not start" >&2; exit 1; }
    sleep 0.05
done

# A 4 KB message, as in the reference figures.
{
    printf 'From: bench@bench.mailpool.test\nTo: sink@example.test\nSubject: bench\n\n'
    i=0
    while [ $i -lt 64 ]; do
        printf '%s\n' "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd"
        i=$((i + 1))
    done
} >"$work/msg"

export MAILPOOL_SOCKET="$work/submit.sock"
# Warm the pool (and the page cache) first.
build/mailpool-sendmail -odi -f bench@bench.mailpool.test sink@example.test <"$work/msg"

run() { # run LABEL COMMAND...
    label=$1
    shift
    start=$(now_ns)
    i=0
    while [ $i -lt "$N" ]; do
        "$@" <"$work/msg" || { echo "$label: submission $i failed" >&2; exit 1; }
        i=$((i + 1))
    done
    end=$(now_ns)
    echo "$label $start $end"
}

r1=$(run mailpool build/mailpool-sendmail -odi -f bench@bench.mailpool.test sink@example.test)
r2=$(run msmtp msmtp --host=127.0.0.1 --port="$port" --from=bench@bench.mailpool.test \
    --auth=off --tls=off sink@example.test)

echo "$r1
$r2" | awk -v n="$N" '
{ secs = ($3 - $2) / 1e9; t[$1] = secs }
END {
    printf "%-28s %8s %10s %12s\n", "sequential submissions", "msgs", "seconds", "ms/message"
    printf "%-28s %8d %10.3f %12.2f\n", "mailpool-sendmail (relay)", n, t["mailpool"], t["mailpool"] * 1000 / n
    printf "%-28s %8d %10.3f %12.2f\n", "msmtp (plaintext)", n, t["msmtp"], t["msmtp"] * 1000 / n
    printf "ratio msmtp/mailpool: %.1fx faster per message\n", t["msmtp"] / t["mailpool"]
}'
