#!/bin/sh
# The demo: install what is missing, build, start a local test upstream
# (aiosmtpd with STARTTLS and AUTH, on 127.0.0.1), start mailpoold on a demo
# config that relays to it, send one message with mailpool-sendmail and one
# with the example program, show that both arrived, and stop everything.
set -eu
cd "$(dirname "$0")/.."
top=$(pwd)

scripts/deps.sh --test
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc 2>/dev/null || echo 2)" \
    --target mailpoold mailpool-sendmail mailpool-example-send >/dev/null

work=$(mktemp -d /tmp/mailpool-demo.XXXXXX)
pids=""
cleanup() {
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    for p in $pids; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

wait_for() { # wait_for FILE WHAT
    i=0
    while [ ! -e "$1" ]; do
        i=$((i + 1))
        if [ $i -gt 100 ]; then echo "demo: $2 did not start" >&2; exit 1; fi
        sleep 0.1
    done
}

echo "== starting a test upstream (aiosmtpd: STARTTLS required, AUTH PLAIN/LOGIN)"
mkdir "$work/mail"
/usr/bin/python3 tests/peers/aiosmtpd_upstream.py --port-file "$work/port" \
    --maildir "$work/mail" --cert tests/certs/server.pem --key tests/certs/server.key \
    --user demo@example.test --password demo-secret 2>"$work/upstream.log" &
pids="$pids $!"
wait_for "$work/port" "the test upstream"
port=$(cat "$work/port")
echo "   listening on 127.0.0.1:$port"

printf 'demo-secret\n' >"$work/relay.pass"
chmod 600 "$work/relay.pass"
cat >"$work/mailpool.conf" <<CONF
daemon = {
  hostname = "demo.mailpool.test";
  submit_socket = "$work/submit.sock";
  control_socket = "$work/control.sock";
  spool_dir = "$work/spool";
  log_level = "info";
};
default_relay = "upstream";
relays = {
  upstream = {
    hosts = [ "localhost:$port" ];
    options = [ "extended", "secure" ];      # STARTTLS required, certificate verified
    mode = "relay";
    auth = { user = "demo@example.test"; password_file = "$work/relay.pass"; };
    tls = { ca_file = "$top/tests/certs/ca.pem"; };
  };
};
CONF

echo "== checking the config"
build/mailpoold --check-config -c "$work/mailpool.conf"
echo "== starting mailpoold"
build/mailpoold -c "$work/mailpool.conf" 2>"$work/mailpoold.log" &
pids="$pids $!"
wait_for "$work/submit.sock" "mailpoold"
export MAILPOOL_SOCKET="$work/submit.sock"

echo "== sending with mailpool-sendmail (queue mode: durable first, then delivered)"
printf 'Subject: hello from mailpool-sendmail\n\nThis went through mailpoold.\n' |
    build/mailpool-sendmail -f cron@demo.mailpool.test ops@example.test
echo "   exit status $?"

echo "== sending with the library example"
printf 'Subject: hello from libmailpool\n\nSent with mailpool_send().\n' |
    build/mailpool-example-send app@demo.mailpool.test dev@example.test

# mailpool-sendmail uses queue mode: it returned once the message was on disk,
# and delivery follows at once; give it a moment.
i=0
while [ "$(ls "$work"/mail/msg-*.env 2>/dev/null | wc -l)" -lt 2 ] && [ $i -lt 100 ]; do
    i=$((i + 1))
    sleep 0.1
done
echo "== what the upstream received"
n=0
for env in "$work"/mail/msg-*.env; do
    [ -e "$env" ] || continue
    n=$((n + 1))
    eml=${env%.env}.eml
    echo "-- $(basename "$eml"): $(tr '\n' ' ' <"$env")"
    grep -E '^(From|To|Subject|Date|Message-ID):' "$eml" | tr -d '\r' | sed 's/^/   /'
done
echo "== mailpoold log"
sed 's/^<[0-9]>/   /' "$work/mailpoold.log"
if [ "$n" -ne 2 ]; then
    echo "demo: expected 2 messages at the upstream, found $n" >&2
    exit 1
fi
echo "== both messages arrived; stopping"
