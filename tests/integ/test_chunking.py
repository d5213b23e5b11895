#!/usr/bin/python3
"""Integration cases: CHUNKING (RFC 3030).  When the relay offers CHUNKING
and PIPELINING the daemon sends MAIL, every RCPT and "BDAT <size> LAST"
with the unstuffed message in one burst.  Usage: test_chunking.py CASE"""

from mpharness import SENDER, check, client_commands, delivered_ok, expect_codes, main, send_one

CHUNKING = "ehlo PIPELINING\nehlo CHUNKING\nehlo 8BITMIME\nehlo ENHANCEDSTATUSCODES\n"
BODY = b"Subject: chunks\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nlast line\r\n"


def _bdat_lines(up):
    return [c for c in client_commands(up) if c.upper().startswith("BDAT")]


def case_bdat_used(s):
    up = s.fakesmtp(CHUNKING)
    d = s.daemon(s.relay(up.port))
    r = send_one(d, body=BODY)
    delivered_ok(r)
    cmds = client_commands(up)
    check(not any(c.upper() == "DATA" for c in cmds), "DATA used although CHUNKING offered: %r"
          % cmds)
    check(_bdat_lines(up) == ["BDAT %d LAST" % len(BODY)], "BDAT commands: %r" % cmds)
    m = up.messages()
    check(len(m) == 1 and m[0].eml == BODY,
          "message not byte-exact through BDAT (no dot-stuffing): %r" % (m and m[0].eml))


def case_bdat_per_recipient(s):
    up = s.fakesmtp(CHUNKING + "on rcpt match two@ reply 550 5.1.1 no such user\n")
    d = s.daemon(s.relay(up.port))
    r = send_one(d, rcpts=("one@example.test", "two@example.test", "three@example.test"),
                 body=BODY)
    expect_codes(r.results, [250, 550, 250])
    m = up.messages()
    check(len(m) == 1 and m[0].rcpts == ["one@example.test", "three@example.test"],
          "upstream recipients: %r" % [x.rcpts for x in m])


def case_bdat_all_refused(s):
    up = s.fakesmtp(CHUNKING + "on rcpt #1 reply 550 5.1.1 nobody\n")
    d = s.daemon(s.relay(up.port))
    r = send_one(d, body=BODY)
    expect_codes(r.results, [550])
    check(not up.messages(), "message stored although every recipient was refused")
    # The session is reused for the next message (after an RSET).
    delivered_ok(send_one(d, body=BODY))
    check(len(up.messages()) == 1, "second message not delivered")
    check(sum(1 for e in up.events() if e[1] == "*" and e[2].startswith("connect")) == 1,
          "a new connection was opened")


def case_bdat_final_5xx(s):
    up = s.fakesmtp(CHUNKING + "on dot reply 554 5.6.0 content rejected by policy\n")
    d = s.daemon(s.relay(up.port))
    r = send_one(d, rcpts=("one@example.test", "two@example.test"), body=BODY)
    expect_codes(r.results, [554, 554])
    check("policy" in r.results[0].text, "upstream text not passed: %r" % r.results[0])


def case_bdat_large(s):
    line = b"x" * 998 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + line * (20 * 1024 * 1024 // len(line))
    up = s.fakesmtp(CHUNKING)
    d = s.daemon(s.relay(up.port))
    delivered_ok(send_one(d, body=body))
    m = up.messages()
    check(len(m) == 1 and m[0].eml == body, "20 MB message not byte-exact through BDAT")
    check(_bdat_lines(up) == ["BDAT %d LAST" % len(body)], "BDAT: %r" % _bdat_lines(up))


def case_bdat_drop_mid_chunk_retried(s):
    # Dropped while the chunk is still being sent: nothing can have been
    # delivered, so the message is retried on a fresh session.
    line = b"y" * 998 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + line * (8 * 1024 * 1024 // len(line))
    up = s.fakesmtp(CHUNKING + "on body #1 drop\n")
    d = s.daemon(s.relay(up.port))
    delivered_ok(send_one(d, body=body))
    m = up.messages()
    check(len(m) == 1 and m[0].eml == body, "retried message not delivered once, byte-exact")


def case_chunking_without_pipelining_uses_data(s):
    up = s.fakesmtp("ehlo CHUNKING\nehlo 8BITMIME\n")
    d = s.daemon(s.relay(up.port))
    delivered_ok(send_one(d, body=BODY))
    cmds = client_commands(up)
    check("DATA" in [c.upper() for c in cmds] and not _bdat_lines(up),
          "expected DATA without PIPELINING: %r" % cmds)
    check(up.messages()[0].eml == BODY, "message not byte-exact")


CASES = {name[5:]: fn for name, fn in list(globals().items()) if name.startswith("case_")}

if __name__ == "__main__":
    main(CASES)
