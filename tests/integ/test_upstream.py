#!/usr/bin/python3
"""Integration cases: how upstream failures reach the LMTP client (RFC 5321
replies at every phase, 421, drops, malformed replies, hangs) and
per-recipient results (RFC 2033 section 4.2).  Usage: test_upstream.py CASE"""

import time

from mpharness import (check, client_commands, delivered_ok, expect_codes, main, send_one,
                       temp_failed)

MARK = "upstream-said-this"
AUTH_SCRIPT = "auth PLAIN LOGIN\nuser alice s3cret\n"


def case_per_recipient(s):
    up = s.fakesmtp("on rcpt match two@ reply 550 5.1.1 %s no such user\n" % MARK)
    d = s.daemon(s.relay(up.port))
    r = send_one(d, rcpts=("one@example.test", "two@example.test", "three@example.test"))
    expect_codes(r.results, [250, 550, 250])
    check(MARK in r.results[1].text, "upstream text not passed through: %r" % r.results[1])
    check(r.results[1].lines[0].startswith("5.1.1"), "enhanced code lost: %r" % r.results[1])
    msgs = up.messages()
    check(len(msgs) == 1, "expected one message upstream, got %r" % msgs)
    check(msgs[0].rcpts == ["one@example.test", "three@example.test"],
          "recipients upstream: %r" % msgs[0].rcpts)


def case_all_recipients_refused(s):
    up = s.fakesmtp("on rcpt reply 550 5.1.1 %s\n" % MARK)
    d = s.daemon(s.relay(up.port))
    r = send_one(d, rcpts=("one@example.test", "two@example.test"))
    expect_codes(r.results, [550, 550])
    check(not up.messages(), "message delivered with no recipient")
    # The session stays usable after the failed transaction.
    up2_rcpt = send_one(d)
    expect_codes(up2_rcpt.results, [550])


# -- a 4xx or 5xx at each phase -------------------------------------------------
#
# Session-level phases (greeting, EHLO, AUTH) always give the client a 4xx:
# another host or a later try may work.  Transaction phases pass the upstream's
# own code through.


def _phase(s, phase, code, session_level):
    script = "on %s reply %d %s.0.0 %s\n" % (phase, code, str(code)[0], MARK)
    if phase == "connect":
        script = "on connect reply %d %s\n" % (code, MARK)
    if phase in ("auth", "ehlo"):
        # With AUTH configured the daemon needs ESMTP, so a 5xx to EHLO cannot
        # fall back to HELO (see case_ehlo_5xx_helo_fallback).
        up = s.fakesmtp(AUTH_SCRIPT + script, tls="starttls")
        relay = s.relay(up.port, options=("extended", "secure"), user="alice")
    else:
        up = s.fakesmtp(script)
        relay = s.relay(up.port)
    d = s.daemon(relay)
    r = send_one(d, rcpts=("one@example.test", "two@example.test"))
    if phase == "rcpt":
        # Every RCPT refused: each recipient carries the upstream reply.
        expect_codes(r.results, [code, code])
    elif session_level:
        temp_failed(r)
    else:
        expect_codes(r.results, [code, code])
    for x in r.results:
        check(MARK in x.text, "upstream reply text not in %r" % x)
    check(not up.messages(), "message stored despite the %d at %s" % (code, phase))
    check(d.alive(), "daemon died")
    return up, d


def _make_phase_case(phase, code, session_level):
    return lambda s: _phase(s, phase, code, session_level)


for _ph, _sess in (("connect", True), ("ehlo", True), ("auth", True), ("mail", False),
                   ("rcpt", False), ("data", False), ("dot", False)):
    for _code in (451, 554):
        _name = "%s_%s" % ("greeting" if _ph == "connect" else _ph, "4xx" if _code < 500
                           else "5xx")
        globals()["case_" + _name] = _make_phase_case(_ph, _code, _sess)


def case_ehlo_5xx_helo_fallback(s):
    # RFC 5321 3.2: a 5xx to EHLO on a relay that needs no extension: HELO.
    up = s.fakesmtp("on ehlo reply 554 5.5.1 %s\n" % MARK)
    d = s.daemon(s.relay(up.port))
    delivered_ok(send_one(d))
    cmds = client_commands(up)
    check([c.split()[0].upper() for c in cmds[:2]] == ["EHLO", "HELO"], "no HELO: %r" % cmds)


def case_421_after_mail(s):
    # 421 mid-transaction: the server is going away.  Temp-fail, never 250.
    up = s.fakesmtp("on mail reply 421 4.3.2 %s shutting down\n" % MARK)
    d = s.daemon(s.relay(up.port))
    r = send_one(d, rcpts=("one@example.test", "two@example.test"))
    temp_failed(r)
    check(not up.messages(), "message stored")


def case_421_after_dot(s):
    up = s.fakesmtp("on dot #1 reply 421 4.3.2 %s shutting down\n" % MARK)
    d = s.daemon(s.relay(up.port))
    r = send_one(d)
    temp_failed(r, MARK)
    # The session was dropped; the next message gets a fresh one and works.
    delivered_ok(send_one(d))
    connects = [e for e in up.events() if e[1] == "*" and e[2].startswith("connect")]
    check(len(connects) == 2, "session not replaced after 421: %r" % connects)


def case_421_idle_then_next(s):
    # The server closes an idle pooled session with 421: noticed, and the next
    # message goes through a new session without the client seeing anything.
    up = s.fakesmtp("idle 1\n")
    d = s.daemon(s.relay(up.port))
    delivered_ok(send_one(d))
    up.wait_log("S: 421", timeout=10)
    time.sleep(0.3)
    delivered_ok(send_one(d))
    check(len(up.messages()) == 2, "second message lost")


BIG = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 8000


def case_drop_mid_data(s):
    # Dropped while the data is being sent (a big message, so the dot cannot
    # have gone out yet): the pool retries once on a fresh session, and the #1
    # rule only hits the first.
    up = s.fakesmtp("on body #1 drop\n")
    d = s.daemon(s.relay(up.port))
    r = send_one(d, body=BIG)
    delivered_ok(r)
    check(len(up.messages()) == 1, "retry did not deliver: %r" % up.messages())
    check(up.messages()[0].eml == BIG, "retried message differs")
    connects = [e for e in up.events() if e[1] == "*" and e[2].startswith("connect")]
    check(len(connects) == 2, "expected a dropped and a retried session: %r" % connects)


def case_drop_mid_data_always(s):
    up = s.fakesmtp("on body drop\n")
    d = s.daemon(s.relay(up.port))
    r = send_one(d, body=BIG)
    temp_failed(r)
    check(not up.messages(), "message stored")


def case_drop_after_dot(s):
    # Dot sent, connection closed without a reply: the outcome is unknown and
    # the client must be told so, never 250; and no blind retry.
    up = s.fakesmtp("on dot drop\n")
    d = s.daemon(s.relay(up.port))
    r = send_one(d, rcpts=("one@example.test", "two@example.test"))
    temp_failed(r, "outcome unknown")
    mails = [c for c in client_commands(up) if c.upper().startswith("MAIL")]
    check(len(mails) == 1, "message re-sent after an unknown outcome: %r" % mails)


def case_dot_hang_timeout(s):
    up = s.fakesmtp("on dot hang\n")
    d = s.daemon(s.relay(up.port, timeout=2))
    t0 = time.monotonic()
    r = send_one(d)
    took = time.monotonic() - t0
    temp_failed(r)
    check(took < 8, "timeout after the dot took %.1fs with timeout=2" % took)
    check(any("unknown" in x.text.lower() for x in r.results),
          "reply does not say the outcome is unknown: %r" % r.results)


def case_greeting_hang(s):
    up = s.fakesmtp("on connect hang\n")
    d = s.daemon(s.relay(up.port, timeout=2))
    t0 = time.monotonic()
    r = send_one(d)
    took = time.monotonic() - t0
    temp_failed(r)
    check(took < 8, "greeting timeout took %.1fs with timeout=2" % took)
    check(took >= 1.5, "gave up after %.1fs, before the timeout of 2s" % took)


def case_ehlo_hang(s):
    up = s.fakesmtp("on ehlo hang\n")
    d = s.daemon(s.relay(up.port, timeout=2))
    t0 = time.monotonic()
    temp_failed(send_one(d))
    check(time.monotonic() - t0 < 8, "EHLO timeout too slow")


def case_helo_only(s):
    # Without `extended` the daemon says HELO and uses no extensions.
    up = s.fakesmtp("no-ehlo\n")
    d = s.daemon(s.relay(up.port, options=()))
    delivered_ok(send_one(d))
    cmds = client_commands(up)
    check(any(c.upper().startswith("HELO") for c in cmds), "no HELO: %r" % cmds)
    check(not any(c.upper().startswith("EHLO") for c in cmds), "EHLO without extended")
    mail = [c for c in cmds if c.upper().startswith("MAIL")][0]
    check(mail.upper() == "MAIL FROM:<ALICE@CLIENT.TEST>", "extension used: %r" % mail)


def case_upstream_size_limit(s):
    # The server's SIZE is smaller than the message: 552 before any data.
    up = s.fakesmtp("ehlo PIPELINING\nehlo SIZE 1000\n")
    d = s.daemon(s.relay(up.port))
    body = b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n"
    r = send_one(d, body=body * 40)
    expect_codes(r.results, [552])
    check(not any(c.upper().startswith(("MAIL", "DATA")) for c in client_commands(up)),
          "data sent despite the server's SIZE: %r" % client_commands(up))


# -- malformed replies ---------------------------------------------------------------


def _malformed(s, script, timeout=3):
    up = s.fakesmtp(script)
    d = s.daemon(s.relay(up.port, timeout=timeout))
    t0 = time.monotonic()
    r = send_one(d)
    temp_failed(r)
    check(time.monotonic() - t0 < 15, "took too long")
    check(d.alive(), "daemon died")
    check(not up.messages(), "message stored after a malformed reply")
    # Another message afterwards works (the #1 rules are used up).
    delivered_ok(send_one(d))
    check(len(up.messages()) == 1, "second message not delivered")
    return up, d


def _malformed_case(script):
    return lambda s: _malformed(s, script)


MALFORMED = {
    "short": "on connect #1 raw 2\\r\\n\n",
    "empty": "on connect #1 raw \\r\\n\n",
    "code_600": "on ehlo #1 raw 600 x\\r\\n\n",
    "code_2a0": "on connect #1 raw 2a0 x\\r\\n\n",
    "mail_garbage": "on mail #1 raw 2a0 ok\\r\\n\non mail #2 raw 2a0 ok\\r\\n\n",
    "code_mismatch": "on ehlo #1 raw 250-fake.test\\r\\n550 PIPELINING\\r\\n\n",
    "nul_escape": "on connect #1 raw 220 \\x00\\x1b[2J\\x1b]0;pwn\\x07 hi\\r\\n\n"
                  "on mail #1 reply 451 4.0.0 \\x00\\x1b[31mred\\x1b[0m %n%s\n",
}
for _k, _v in MALFORMED.items():
    globals()["case_malformed_" + _k] = _malformed_case(_v)


def case_malformed_huge_line(s):
    # A 10 MB reply line: the parser's cap and the deadline end it.
    up, d = _malformed(s, "on connect #1 raw 220 " + "A" * (10 * 1024 * 1024) + "\\r\\n\n")
    check(d.rss_kb() < 64 * 1024, "daemon RSS %d kB after a 10 MB reply line" % d.rss_kb())


def case_malformed_endless_continuation(s):
    up, d = _malformed(s, "on ehlo #1 raw " + "250-X\\r\\n" * 200000 + "\n")


def case_malformed_nul_logged_escaped(s):
    up, d = _malformed(s, MALFORMED["nul_escape"])
    raw = d.log_bytes()
    check(b"\x1b" not in raw and b"\x00" not in raw and b"\x07" not in raw,
          "raw control bytes from the upstream in the daemon log")
    # The client's copy of the reply is escaped too.
    up2 = s.fakesmtp("on mail reply 451 4.0.0 \\x1b[31mred\\x00 %n\n")
    d2 = s.daemon(s.relay(up2.port))
    with d2.lmtp() as c:
        c.sendall(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
        for _ in range(3):
            c.reply()
        c.sendall(b"Subject: x\r\n\r\nx\r\n.\r\n")
        line = c.readline()
    check(line.startswith(b"451"), "expected 451, got %r" % line)
    check(not any(b < 0x20 or b == 0x7F for b in line), "raw control bytes to the client: %r"
          % line)


CASES = {name[5:]: fn for name, fn in list(globals().items()) if name.startswith("case_")}

if __name__ == "__main__":
    main(CASES)
