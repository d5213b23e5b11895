#!/usr/bin/python3
"""Integration cases: the `metrics` control command (Prometheus text
exposition format, checked with prometheus_client's own parser against the
traffic each case sent) and the secret audit of the daemon's debug log after
full AUTH sessions (PLAIN, LOGIN, SCRAM, XOAUTH2 from password_command, a
SOCKS5 proxy with a password).  Usage: test_metrics.py CASE"""

import base64
import json
import os
import socket
import subprocess

from prometheus_client.parser import text_string_to_metric_families

from mpharness import (MSG, SENDER, Daemon, binary, check, delivered_ok, expect_codes, main,
                       send_one, wait_for)
from test_relayopts import start_proxy, tunnel_relay

REFUSE_BOB = "on rcpt match bob@ reply 550 5.1.1 no such user\n"
DEFER_ALL = "on rcpt reply 451 4.3.0 try again later\n"


def control(d, line):
    path = os.path.join(d.dir, "control.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sk:
        sk.settimeout(10)
        sk.connect(path)
        sk.sendall(line.encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sk.recv(65536)
            check(chunk, "control socket closed early")
            buf += chunk
    check(buf.count(b"\n") == 1, "the answer is not one line: %r" % buf[:200])
    return json.loads(buf)


def metrics_text(d):
    """The exposition text from `mailpoolctl metrics`, which must equal the JSON's."""
    p = subprocess.run([binary("mailpoolctl"), "-s", os.path.join(d.dir, "control.sock"),
                        "metrics"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    check(p.returncode == 0, "mailpoolctl metrics: %d %r" % (p.returncode, p.stderr))
    text = p.stdout.decode()
    ans = control(d, "metrics")
    check(ans.get("ok") is True and isinstance(ans.get("text"), str), "answer: %r" % ans)
    return text


def samples(text):
    """{(sample name, frozenset(labels)): value}, parsed by prometheus_client."""
    out = {}
    types = {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for smp in fam.samples:
            key = (smp.name, frozenset(smp.labels.items()))
            check(key not in out, "duplicate sample %r" % (key,))
            out[key] = smp.value
    return out, types


def value(smp, name, **labels):
    key = (name, frozenset(labels.items()))
    check(key in smp, "no sample %s%r in %r" % (name, labels, sorted(smp)[:40]))
    return smp[key]


def check_histogram(smp, relay, count):
    buckets = sorted((float(dict(k[1])["le"]), v) for k, v in smp.items()
                     if k[0] == "mailpool_handoff_seconds_bucket" and dict(k[1])["relay"] == relay)
    check(buckets and buckets[-1][0] == float("inf"), "no +Inf bucket: %r" % buckets)
    vals = [v for _, v in buckets]
    check(vals == sorted(vals), "buckets not cumulative: %r" % buckets)
    check(buckets[-1][1] == count, "+Inf bucket %r, want %d" % (buckets[-1][1], count))
    check(value(smp, "mailpool_handoff_seconds_count", relay=relay) == count, "histogram count")
    check(value(smp, "mailpool_handoff_seconds_sum", relay=relay) >= 0, "histogram sum")


def case_metrics_traffic(s):
    """3 messages to relay a (one of them with a refused recipient) in relay
    mode, 2 to relay b in queue mode: counters, bytes and histograms match."""
    up_a = s.fakesmtp(REFUSE_BOB)
    up_b = s.fakesmtp("")
    d = s.daemon(s.relay(up_a.port, name="a"), s.relay(up_b.port, name="b", mode="queue"),
                 default="a")
    r = send_one(d, rcpts=("carol@example.test", "bob@example.test"))
    expect_codes(r.results, [250, 550])
    for _ in range(2):
        delivered_ok(send_one(d, rcpts=("carol@example.test",)))
    for _ in range(2):
        delivered_ok(send_one(d, rcpts=("dave@example.test",), mail_params="XRELAY=b"))
    wait_for(lambda: len(up_b.messages()) == 2, 20, "queued mail delivered to b")
    wait_for(lambda: control(d, "status").get("queued") == 0, 20, "an empty queue")

    text = metrics_text(d)
    smp, types = samples(text)
    check(types.get("mailpool_messages") == "counter", "types: %r" % types)
    check(types.get("mailpool_handoff_seconds") == "histogram", "types: %r" % types)
    check(types.get("mailpool_queue_messages") == "gauge", "types: %r" % types)
    for line in text.splitlines():
        if line.startswith("# TYPE") and line.endswith(" counter"):
            check(line.split()[2].endswith("_total"), "counter without _total: %r" % line)

    m = "mailpool_messages_total"
    check(value(smp, m, relay="a", outcome="sent") == 3, "a sent")
    check(value(smp, m, relay="a", outcome="rejected") == 0, "a rejected")
    check(value(smp, m, relay="b", outcome="sent") == 2, "b sent")
    rc = "mailpool_recipients_total"
    check(value(smp, rc, relay="a", outcome="accepted") == 3, "a accepted rcpts")
    check(value(smp, rc, relay="a", outcome="rejected") == 1, "a rejected rcpts")
    check(value(smp, rc, relay="b", outcome="accepted") == 2, "b accepted rcpts")
    # Canonical bytes: each message is MSG (CRLF already) plus what the daemon adds.
    for relay, n in (("a", 3), ("b", 2)):
        b = value(smp, "mailpool_sent_bytes_total", relay=relay)
        check(n * len(MSG) <= b <= n * (len(MSG) + 1024), "%s bytes %r for %d messages"
              % (relay, b, n))
        check_histogram(smp, relay, n)
        check(value(smp, "mailpool_upstream_sessions_opened_total", relay=relay) >= 1,
              "%s sessions opened" % relay)
        check(value(smp, "mailpool_waiters", relay=relay) == 0, "%s waiters" % relay)
        check(value(smp, "mailpool_queue_messages", relay=relay) == 0, "%s queue" % relay)
        check(value(smp, "mailpool_auth_failures_total", relay=relay) == 0, "auth failures")
    # Two more messages on one warm session of relay a are reuses.
    check(value(smp, "mailpool_upstream_sessions_reused_total", relay="a") >= 2, "reuse")
    check(value(smp, "mailpool_queue_oldest_age_seconds") == 0, "oldest age of empty queue")


def case_metrics_queue_deferral(s):
    up = s.fakesmtp(DEFER_ALL)
    d = Daemon(s, s.config(s.relay(up.port, mode="queue")) + "spool = { retry_min = 60; };\n")
    wait_for(lambda: os.path.exists(os.path.join(d.dir, "control.sock")), 5, "control socket")
    delivered_ok(send_one(d))
    smp = {}

    def deferred():
        nonlocal smp
        smp, _ = samples(metrics_text(d))
        return value(smp, "mailpool_messages_total", relay="up", outcome="deferred") == 1
    wait_for(deferred, 20, "one deferred attempt counted")
    check(value(smp, "mailpool_queue_messages", relay="up") == 1, "queue size after a deferral")
    check(value(smp, "mailpool_recipients_total", relay="up", outcome="deferred") == 1,
          "deferred recipients")
    check(value(smp, "mailpool_sent_bytes_total", relay="up") == 0, "no bytes sent")
    check(value(smp, "mailpool_queue_oldest_age_seconds") >= 0, "oldest age")


def case_metrics_label_escaping(s):
    """A relay name the config allows, quoted on the way out; the text parses."""
    up = s.fakesmtp("")
    d = s.daemon(s.relay(up.port, name="r_1"), default="r_1")
    delivered_ok(send_one(d))
    smp, _ = samples(metrics_text(d))
    check(value(smp, "mailpool_messages_total", relay="r_1", outcome="sent") == 1, "sent")


def case_metrics_auth_failure(s):
    up = s.fakesmtp("auth PLAIN\nuser alice right-pass\n", tls="starttls")
    d = s.daemon(s.relay(up.port, options=("extended", "secure"), user="alice",
                         password="wr0ng-pass-XYZ"))
    r = send_one(d)
    check(all(x.code // 100 == 4 for x in r.results), "expected a 4xx: %r" % r)
    smp, _ = samples(metrics_text(d))
    check(value(smp, "mailpool_auth_failures_total", relay="up") >= 1, "auth failure counted")
    check("wr0ng-pass-XYZ" not in d.log(), "the refused password is in the log")


def _b64(b):
    return base64.b64encode(b).decode()


def case_metrics_logs_no_secrets(s):
    """Full AUTH sessions at log_level debug: the daemon log never holds a
    password, a token, or any base64 AUTH payload that carries them."""
    secrets = {"plain": "Pl41n-pw-7Q", "login": "L0gin-pw-8R", "scram": "Scr4m-pw-9S",
               "token": "ya29.T0ken-metrics-1", "proxy": "Pr0xy-pw-2T"}
    relays = []
    ups = {}
    for name, mech, pw in (("p", "PLAIN", secrets["plain"]), ("l", "LOGIN", secrets["login"]),
                           ("s", "SCRAM-SHA-256", secrets["scram"])):
        up = s.fakesmtp("auth %s\nuser alice %s\n" % (mech, pw), tls="starttls")
        ups[name] = up
        relays.append(s.relay(up.port, name=name, options=("extended", "secure"), user="alice",
                              password=pw, mechanisms=[mech]))
    cmd_dir = s.subdir("cmd")
    script = os.path.join(cmd_dir, "token.sh")
    with open(script, "w") as f:
        f.write('#!/bin/sh\necho "%s"\n' % secrets["token"])
    os.chmod(script, 0o700)
    up = s.fakesmtp("auth XOAUTH2\nuser me@example.com %s\n" % secrets["token"], tls="starttls")
    ups["x"] = up
    relays.append(s.relay(up.port, name="x", options=("extended", "secure"),
                          user="me@example.com", mechanisms=["XOAUTH2"],
                          auth_secret='password_command = "%s";' % script))
    up = s.fakesmtp("")
    ups["t"] = up
    px = start_proxy(s, "socks5_proxy.py", "--user", "tun", "--password", secrets["proxy"])
    relays.append(tunnel_relay(s, up, "socks5://tun:%s@127.0.0.1:%d" % (secrets["proxy"],
                                                                         px.port),
                               ca=None, name="t"))
    d = s.daemon(*relays, default="p", log_level="debug")
    for name in ups:
        delivered_ok(send_one(d, mail_params="XRELAY=" + name))
        check(len(ups[name].messages()) == 1, "relay %s did not deliver" % name)

    log = d.log()
    check("state=connecting->greeting" in log, "no debug lines: log_level debug not honoured")
    needles = dict(secrets)
    needles["plain_b64"] = _b64(b"\0alice\0" + secrets["plain"].encode())
    needles["plain_b64_authzid"] = _b64(b"alice\0alice\0" + secrets["plain"].encode())
    needles["login_b64"] = _b64(secrets["login"].encode())
    needles["xoauth2_b64"] = _b64(("user=me@example.com\x01auth=Bearer %s\x01\x01"
                                   % secrets["token"]).encode())
    needles["token_b64"] = _b64(secrets["token"].encode())
    for what, needle in needles.items():
        check(needle not in log, "%s found in the daemon log" % what)
    # One event per line, each with key=value fields.
    for line in log.splitlines():
        check("=" in line, "a log line without key=value fields: %r" % line)


CASES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}

if __name__ == "__main__":
    main(CASES)
