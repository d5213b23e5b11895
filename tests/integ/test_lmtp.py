#!/usr/bin/python3
"""Integration cases: hostile and broken input from local clients on the
LMTP submission socket (RFC 2033, RFC 5321 syntax limits).
Usage: test_lmtp.py CASE"""

import socket
import time

from mpharness import (MSG, SENDER, ConnectionClosed, check, client_commands, delivered_ok,
                       expect_codes, main, send_one, wait_for)


def setup(s, **kw):
    up = s.fakesmtp("")
    return up, s.daemon(s.relay(up.port), **kw)


def still_serves(d, up, n_before=0):
    delivered_ok(send_one(d))
    check(len(up.messages()) == n_before + 1, "daemon no longer delivers")


def case_lhlo_caps(s):
    up, d = setup(s)
    with d.lmtp() as c:
        for cap in ("PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8", "XRELAY",
                    "XMODE"):
            check(cap in c.caps, "LHLO lacks %s: %r" % (cap, c.caps))
        check(any(x.startswith("SIZE ") for x in c.caps), "LHLO lacks SIZE: %r" % c.caps)


def case_long_line(s):
    # 1 MB without a line end: 500 and disconnect, memory flat.
    up, d = setup(s)
    before = d.rss_kb()
    with d.lmtp() as c:
        try:
            c.sendall(b"MAIL FROM:<" + b"a" * (1024 * 1024))
        except (BrokenPipeError, ConnectionResetError):
            pass
        r = c.reply()
        check(r.code == 500, "1 MB line: %r" % r)
        check(c.at_eof(), "connection not closed after the over-long line")
    check(d.rss_kb() - before < 4096, "RSS grew by %d kB" % (d.rss_kb() - before))
    still_serves(d, up)


def case_long_line_with_lf(s):
    up, d = setup(s)
    with d.lmtp() as c:
        try:
            c.sendall(b"NOOP " + b"x" * 100000 + b"\r\nNOOP\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        r = c.reply()
        check(r.code == 500, "long line: %r" % r)
        check(c.at_eof(), "connection not closed")
    still_serves(d, up)


def _mail_reply(s, line, code, ecode_prefix=None):
    up, d = setup(s)
    with d.lmtp() as c:
        r = c.cmd(line)
        check(r.code == code, "%r: expected %d, got %r" % (line[:80], code, r))
        # The session goes on: a good transaction afterwards works.
        c.cmd("RSET")
        res = c.send(SENDER, ["bob@example.test"], b"Subject: x\r\n\r\nx\r\n")
        delivered_ok(res)
    check(d.alive(), "daemon died")
    return up, d


def case_unknown_mail_param(s):
    up, d = _mail_reply(s, "MAIL FROM:<a@client.test> FOO=bar", 555)
    mails = [c for c in client_commands(up) if c.upper().startswith("MAIL")]
    check(all("FOO" not in m.upper() for m in mails), "unknown parameter forwarded: %r" % mails)


def case_duplicate_mail_param(s):
    _mail_reply(s, "MAIL FROM:<a@client.test> BODY=8BITMIME BODY=7BIT", 501)


def case_duplicate_size_param(s):
    _mail_reply(s, "MAIL FROM:<a@client.test> SIZE=10 SIZE=20", 501)


def case_long_local_part(s):
    _mail_reply(s, "MAIL FROM:<%s@client.test>" % ("l" * 65), 501)


def case_long_path(s):
    _mail_reply(s, "MAIL FROM:<a@%s.test>" % ".".join(["d" * 60] * 5), 501)


def _rcpt_reply(s, rcpt_line, code=501):
    up, d = setup(s)
    with d.lmtp() as c:
        r = c.cmd("MAIL FROM:<%s>" % SENDER)
        check(r.code == 250, "MAIL: %r" % r)
        r = c.cmd(rcpt_line)
        check(r.code == code, "%r: expected %d, got %r" % (rcpt_line[:80], code, r))
        r = c.cmd("DATA")
        check(r.code == 503, "DATA with no accepted recipient: %r" % r)
    check(d.alive(), "daemon died")
    check(not client_commands(up), "upstream contacted")
    return d


def case_null_rcpt(s):
    _rcpt_reply(s, "RCPT TO:<>")


def case_long_rcpt_local_part(s):
    _rcpt_reply(s, "RCPT TO:<%s@example.test>" % ("r" * 65))


def case_long_rcpt_path(s):
    _rcpt_reply(s, "RCPT TO:<r@%s>" % ("e" * 300))


def case_ctrl_in_rcpt(s):
    for bad in (b"RCPT TO:<bo\x01b@example.test>", b"RCPT TO:<bob@exa\x00mple.test>",
                b"RCPT TO:<bob\x1b[2J@example.test>", b"RCPT TO:<bob\r@example.test>"):
        up, d = setup(s)
        with d.lmtp() as c:
            check(c.cmd("MAIL FROM:<%s>" % SENDER).code == 250, "MAIL refused")
            r = c.cmd(bad)
            check(r.code == 501, "%r: %r" % (bad, r))


def case_ctrl_in_sender(s):
    up, d = setup(s)
    with d.lmtp() as c:
        for bad in (b"MAIL FROM:<a\x07@client.test>", b"MAIL FROM:<a\x7f@client.test>",
                    b"MAIL FROM:<a\x00@client.test>"):
            r = c.cmd(bad)
            check(r.code == 501, "%r: %r" % (bad, r))


def case_data_without_rcpt(s):
    up, d = setup(s)
    with d.lmtp() as c:
        check(c.cmd("MAIL FROM:<%s>" % SENDER).code == 250, "MAIL refused")
        r = c.cmd("DATA")
        check(r.code == 503, "DATA without RCPT: %r" % r)
        r = c.cmd("NOOP")
        check(r.code == 250, "session broken after 503: %r" % r)


def case_data_without_mail(s):
    up, d = setup(s)
    with d.lmtp() as c:
        check(c.cmd("DATA").code == 503, "DATA without MAIL accepted")
        check(c.cmd("RCPT TO:<b@example.test>").code == 503, "RCPT without MAIL accepted")


def case_mail_before_lhlo(s):
    up, d = setup(s)
    with d.lmtp(lhlo=False) as c:
        r = c.cmd("MAIL FROM:<%s>" % SENDER)
        check(r.code == 503, "MAIL before LHLO: %r" % r)
        r = c.cmd("HELO x")
        check(r.code // 100 == 5, "HELO on LMTP: %r" % r)


def case_hangup_in_data(s):
    up, d = setup(s)
    c = d.lmtp()
    c.sendall(b"MAIL FROM:<%s>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n" % SENDER.encode())
    for _ in range(3):
        c.reply()
    c.sendall(b"Subject: half\r\n\r\nthis message is never finish")
    time.sleep(0.1)
    c.close()
    d.wait_log("hung up")
    time.sleep(0.3)
    check(not any(x.upper().startswith("MAIL") for x in client_commands(up)),
          "a half message reached the upstream: %r" % client_commands(up))
    still_serves(d, up)


def case_connect_cycles(s):
    up, d = setup(s)
    delivered_ok(send_one(d))
    before = d.rss_kb()
    for i in range(200):
        sk = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sk.connect(d.socket)
        if i % 3 == 1:
            sk.sendall(b"LHLO x\r\nMAIL FROM:<a@b.test>\r\n")
        elif i % 3 == 2:
            sk.recv(100)
        sk.close()
    still_serves(d, up, 1)
    grown = d.rss_kb() - before
    check(grown < 2048, "RSS grew by %d kB over 200 connect/close cycles" % grown)


def case_escapes_logged(s):
    up, d = setup(s)
    with d.lmtp() as c:
        r = c.send("\x1b]0;pwned\x07%n%s%x@client.test", ["%n%n%n\x1b[2J@example.test"],
                   b"Subject: x\r\n\r\nx\r\n")
        # Control characters are refused outright; either way, nothing raw in the log.
        check(r.mail.code in (250, 501), "MAIL: %r" % r)
        r2 = c.send("%n%s%x@client.test", ["%n%n%n@example.test"], b"Subject: x\r\n\r\nx\r\n")
        delivered_ok(r2)
    c2 = d.lmtp(lhlo=False)
    c2.cmd(b"LHLO evil\x1b[31mhost%n")
    raw = d.log_bytes()
    check(b"\x1b" not in raw and b"\x07" not in raw, "raw ESC/BEL in the daemon log")
    check(b"%n%n%n@example.test" in raw or b"%n" in raw, "addresses not logged at all?")
    check(d.alive(), "daemon died")


def case_xrelay_unknown(s):
    up, d = setup(s)
    with d.lmtp() as c:
        r = c.cmd("MAIL FROM:<%s> XRELAY=nosuchrelay" % SENDER)
        check(r.code // 100 == 5, "unknown relay accepted: %r" % r)
        r = c.send(SENDER, ["bob@example.test"], b"Subject: x\r\n\r\nx\r\n",
                   mail_params="XRELAY=up")
        delivered_ok(r)


def case_xrelay_choice(s):
    # XRELAY picks a non-default relay profile.
    up1 = s.fakesmtp("")
    up2 = s.fakesmtp("")
    d = s.daemon(s.relay(up1.port, name="up"), s.relay(up2.port, name="other"))
    delivered_ok(send_one(d, mail_params="XRELAY=other"))
    check(len(up2.messages()) == 1 and not up1.messages(), "XRELAY=other not honoured")
    delivered_ok(send_one(d))
    check(len(up1.messages()) == 1, "default relay not used")


def case_xmode_queue(s):
    # XMODE=queue: the answer is "queued as ID" once the message is on disk,
    # whatever the relay's own mode; an unknown mode is refused.
    up, d = setup(s)
    with d.lmtp() as c:
        r = c.send(SENDER, ["bob@example.test"], MSG, mail_params="XMODE=queue")
        expect_codes(r.results, [250])
        check("queued as" in r.results[0].text, "not a queued answer: %r" % r.results[0])
        r = c.cmd("MAIL FROM:<%s> XMODE=bogus" % SENDER)
        check(r.code == 501, "XMODE=bogus: %r" % r)
    wait_for(lambda: len(up.messages()) == 1, 10, "the queued message at the upstream")


def case_pipelined_transactions(s):
    # Two whole transactions and QUIT in one write: replies come in order.
    up, d = setup(s)
    with d.lmtp() as c:
        one = b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n"
        c.sendall(one + b"Subject: 1\r\n\r\none\r\n.\r\n" + one +
                  b"Subject: 2\r\n\r\ntwo\r\n.\r\nQUIT\r\n")
        codes = [c.reply().code for _ in range(9)]
        check(codes == [250, 250, 354, 250, 250, 250, 354, 250, 221], "codes: %r" % codes)
        check(c.at_eof(), "not closed after QUIT")
    check([m.eml for m in up.messages()] == [b"Subject: 1\r\n\r\none\r\n",
                                             b"Subject: 2\r\n\r\ntwo\r\n"], "messages differ")


def case_many_clients(s):
    # Twenty clients at once, each with a message: all served.
    up, d = setup(s)
    conns = [d.lmtp() for _ in range(20)]
    for i, c in enumerate(conns):
        c.sendall(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<r%d@example.test>\r\nDATA\r\n" % i)
    for c in conns:
        for _ in range(3):
            c.reply()
    for i, c in enumerate(conns):
        c.sendall(b"Subject: %d\r\n\r\nbody\r\n.\r\n" % i)
    for c in conns:
        r = c.reply()
        check(r.code == 250, "concurrent client: %r" % r)
    check(len(up.messages()) == 20, "expected 20 messages, got %d" % len(up.messages()))


def case_idle_client_timeout(s):
    up, d = setup(s, client_timeout=1)
    with d.lmtp() as c:
        t0 = time.monotonic()
        try:
            r = c.reply()
            check(r.code == 421, "idle client: %r" % r)
        except ConnectionClosed:
            pass
        check(c.at_eof(), "idle client not disconnected")
        check(time.monotonic() - t0 < 5, "idle timeout too slow")
    still_serves(d, up)


def case_too_many_errors(s):
    up, d = setup(s)
    with d.lmtp() as c:
        c.sendall(b"BOGUS\r\n" * 50)
        codes = []
        try:
            while True:
                codes.append(c.reply().code)
        except ConnectionClosed:
            pass
        check(codes and codes[-1] == 421, "no 421 after many errors: %r" % codes)
        check(len(codes) < 50, "daemon answered every bogus line: %d" % len(codes))


CASES = {name[5:]: fn for name, fn in list(globals().items()) if name.startswith("case_")}

if __name__ == "__main__":
    main(CASES)
