#!/bin/sh
# Install the Debian packages mailpool needs, if any are missing.
#   scripts/deps.sh          build dependencies
#   scripts/deps.sh --test   build and test dependencies (real SMTP peers, TLS tools)
#   scripts/deps.sh --bench  build, test and benchmark dependencies
set -eu

BUILD="cmake make gcc pkg-config libevent-dev libwolfssl-dev libconfig-dev libsystemd-dev"
TEST="python3 python3-aiosmtpd python3-prometheus-client postfix swaks openssl valgrind clang-format clang-tidy cppcheck mandoc dpkg-dev file systemd"
BENCH="msmtp stunnel4"

want="$BUILD"
case "${1:-}" in
--test) want="$BUILD $TEST" ;;
--bench) want="$BUILD $TEST $BENCH" ;;
"") ;;
*) echo "usage: $0 [--test|--bench]" >&2; exit 2 ;;
esac

missing=""
for p in $want; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0

echo "installing:$missing" >&2
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "missing Debian packages:$missing (run as root or install them)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Postfix is installed only for its smtp-sink/smtp-source tools: keep it
# from configuring itself as this machine's MTA.
if echo "$missing" | grep -q postfix; then
    echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
fi
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
