#!/usr/bin/python3
"""libmailpool against the scripted fake LMTP server, one case per CTest entry."""
import os
import time

from harness import Fake, binary, main, run, unix_socket_without_listener

NO_PIPELINING = "250-fake.test\n250-ENHANCEDSTATUSCODES\n250-8BITMIME\n250 SIZE 1000000"


def probe(fake, message=b"Subject: t\n\nhello\n", sender="me@example.org",
          rcpts=("you@example.org",), opts=(), sock=None, env=None):
    msgfile = fake.write("msg.eml", message)
    argv = [binary("client_probe")] + list(opts) + [sock or fake.sock]
    if rcpts is not None:
        argv += [msgfile, sender] + list(rcpts)
    rc, out, err = run(argv, env_extra=env)
    if rc != 0:
        # The probe always exits 0; anything else is a crash or a sanitizer report.
        raise SystemExit("client_probe exited %d:\n%s" % (rc, err))
    return out.splitlines()


def sends(lines):
    return [l for l in lines if l.startswith("send ")]


def rcpts(lines):
    return [l for l in lines if l.startswith("rcpt ")]


def mail_lines(fake):
    return [l for l in fake.commands() if l.upper().startswith("MAIL ")]


def greeting_421(c):
    with Fake({"greeting": "421 4.3.2 Service shutting down"}) as f:
        c.eq(probe(f, rcpts=None)[0], "open TEMPORARY", "421 greeting")
        c.eq([l for l in f.commands() if l != "CONNECT"], [], "nothing sent after 421")


def greeting_garbage(c):
    for greeting in ("hello there", "2", "600 x", "2a0 x", "", "220-only a continuation\n"
                     "221 different code"):
        with Fake({"greeting": greeting}) as f:
            c.eq(probe(f, rcpts=None, opts=["-T", "2000"])[0], "open PROTOCOL",
                 "greeting %r" % greeting)


def no_daemon(c):
    with Fake(start=False) as f:
        c.eq(probe(f, rcpts=None)[0], "open CONNECT", "missing socket")
        s = unix_socket_without_listener(f.sock)
        c.eq(probe(f, rcpts=None)[0], "open CONNECT", "socket without listener")
        s.close()
        c.eq(probe(f, rcpts=None, sock="/" + "x" * 200)[0], "open ARGS", "path too long")


def timeout(c):
    with Fake({"greeting": None}) as f:
        t0 = time.monotonic()
        out = probe(f, rcpts=None, opts=["-T", "500"])
        elapsed = time.monotonic() - t0
        c.eq(out[0], "open TIMEOUT", "silent server")
        c.true(0.4 <= elapsed < 3.0, "timeout took %.2fs, want about 0.5s" % elapsed)
    with Fake({"dot": None}) as f:
        t0 = time.monotonic()
        out = probe(f, opts=["-T", "500"])
        elapsed = time.monotonic() - t0
        c.eq(sends(out), ["send TIMEOUT"], "no reply after the data")
        c.eq(rcpts(out), ["rcpt 0 0 - "], "unknown outcome carries code 0")
        c.true(elapsed < 3.0, "send timeout took %.2fs" % elapsed)


def pipelining(c):
    with Fake() as f:
        out = probe(f, rcpts=["a@x.test", "b@x.test", "c@x.test"])
        c.eq(sends(out), ["send OK"], "status")
        want = ("MAIL FROM:<me@example.org>", "RCPT TO:<a@x.test>", "RCPT TO:<b@x.test>",
                "RCPT TO:<c@x.test>", "DATA")
        batch = [ch for ch in f.chunks() if "MAIL FROM" in ch]
        c.eq(len(batch), 1, "one read holds MAIL")
        if batch:
            lines = batch[0].split("\r\n")
            c.eq(lines[0].split(" SIZE=")[0], want[0], "MAIL first")
            c.eq(tuple(lines[1:5]), want[1:], "RCPTs and DATA in the same read")
            c.eq(lines[5:], [""], "nothing else in the read")
    with Fake({"lhlo": NO_PIPELINING}) as f:
        out = probe(f, rcpts=["a@x.test", "b@x.test"])
        c.eq(sends(out), ["send OK"], "status without PIPELINING")
        c.true(not any("MAIL FROM" in ch and "RCPT" in ch for ch in f.chunks()),
               "no batching when PIPELINING is not offered")
        cmds = [l.split(" SIZE")[0] for l in f.commands()]
        c.eq(cmds[2:6], ["MAIL FROM:<me@example.org>", "RCPT TO:<a@x.test>",
                         "RCPT TO:<b@x.test>", "DATA"], "lock-step order")


def partial(c):
    script = {"rcpt": ["250 2.1.5 ok a", "550 5.1.1 <b@x.test>: no such user", "250 2.1.5 ok c"],
              "dot": ["250 2.0.0 sent a", "250 2.0.0 sent c"]}
    with Fake(script) as f:
        out = probe(f, rcpts=["a@x.test", "b@x.test", "c@x.test"])
        c.eq(sends(out), ["send PARTIAL"], "status")
        c.eq(rcpts(out), ["rcpt 0 250 2.0.0 sent a",
                          "rcpt 1 550 5.1.1 <b@x.test>: no such user",
                          "rcpt 2 250 2.0.0 sent c"], "replies in RCPT order")
    script = {"dot": ["250 2.0.0 sent a", "550 5.7.1 upstream refused b", "250 2.0.0 sent c"]}
    with Fake(script) as f:
        out = probe(f, rcpts=["a@x.test", "b@x.test", "c@x.test"])
        c.eq(sends(out), ["send PARTIAL"], "status, refusal after data")
        c.eq(rcpts(out)[1], "rcpt 1 550 5.7.1 upstream refused b", "per-recipient LMTP reply")


def all_temporary(c):
    with Fake({"dot": ["451 4.3.0 try later", "452 4.2.2 full"]}) as f:
        out = probe(f, rcpts=["a@x.test", "b@x.test"])
        c.eq(sends(out), ["send TEMPORARY"], "all 4xx")
        c.eq(rcpts(out), ["rcpt 0 451 4.3.0 try later", "rcpt 1 452 4.2.2 full"], "replies")
    with Fake({"dot": ["550 5.1.1 no", "451 4.3.0 later"]}) as f:
        out = probe(f, rcpts=["a@x.test", "b@x.test"])
        c.eq(sends(out), ["send TEMPORARY"], "5xx and 4xx: temporary wins when none accepted")


def all_permanent(c):
    with Fake({"rcpt": ["550 5.1.1 unknown a", "250 ok"], "dot": ["554 5.7.1 rejected b"]}) as f:
        out = probe(f, rcpts=["a@x.test", "b@x.test"])
        c.eq(sends(out), ["send PERMANENT"], "all 5xx")
        c.eq(rcpts(out), ["rcpt 0 550 5.1.1 unknown a", "rcpt 1 554 5.7.1 rejected b"], "replies")


def mail_refused(c):
    for lhlo in (None, NO_PIPELINING):
        script = {"mail": "553 5.7.1 Sender address rejected"}
        if lhlo:
            script["lhlo"] = lhlo
        with Fake(script) as f:
            out = probe(f, rcpts=["a@x.test", "b@x.test"], opts=["-n", "2"])
            c.eq(sends(out), ["send PERMANENT"] * 2, "MAIL refused (lhlo %r)" % lhlo)
            c.eq(rcpts(out)[:2], ["rcpt 0 553 5.7.1 Sender address rejected",
                                  "rcpt 1 553 5.7.1 Sender address rejected"],
                 "every recipient gets the MAIL reply")
            c.true(not f.has_data(), "no data sent")
            c.true("RSET" in f.commands(), "RSET after the refusal")
            if lhlo:
                c.true(not any(l.startswith("RCPT") for l in f.commands()),
                       "no RCPT after a refused MAIL without pipelining")


def data_refused(c):
    script = {"rcpt": ["250 ok", "550 5.1.1 unknown", "250 ok"],
              "data": "554 5.3.4 Message refused"}
    with Fake(script) as f:
        out = probe(f, rcpts=["a@x.test", "b@x.test", "c@x.test"], opts=["-n", "2"])
        c.eq(sends(out), ["send PERMANENT"] * 2, "DATA refused, handle reusable")
        c.eq(rcpts(out)[:3], ["rcpt 0 554 5.3.4 Message refused", "rcpt 1 550 5.1.1 unknown",
                              "rcpt 2 554 5.3.4 Message refused"], "accepted ones get DATA reply")
        c.true(not f.has_data(), "no data sent")
        c.eq(f.commands().count("RSET"), 2, "RSET after each refusal")
    with Fake({"data": "451 4.3.0 busy"}) as f:
        out = probe(f)
        c.eq(sends(out), ["send TEMPORARY"], "DATA 451")


BODIES = [
    (b"", b".\r\n", "empty body"),
    (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n", "CRLF body unchanged"),
    (b"a\nb\n", b"a\r\nb\r\n.\r\n", "bare LF"),
    (b"a\rb\r", b"a\r\nb\r\n.\r\n", "bare CR"),
    (b"a\r\r\nb", b"a\r\n\r\nb\r\n.\r\n", "CR CR LF"),
    (b"no newline", b"no newline\r\n.\r\n", "no final newline"),
    (b".\n..x\n.", b"..\r\n...x\r\n..\r\n.\r\n", "leading dots"),
    (b"x\n.\nMAIL FROM:<evil@x>\n", b"x\r\n..\r\nMAIL FROM:<evil@x>\r\n.\r\n", "LF.LF smuggling"),
    (b"x\r\n.\rMAIL\r\n", b"x\r\n..\r\nMAIL\r\n.\r\n", "CRLF.CR smuggling"),
    (b"x\n\n\n", b"x\r\n\r\n\r\n.\r\n", "empty lines kept"),
    (b"\r\n", b"\r\n.\r\n", "one empty line"),
]


def body_encoding(c):
    with Fake() as f:
        for n, (body, wire, what) in enumerate(BODIES, 1):
            msgfile = f.write("m%d" % n, body)
            rc, out, err = run([binary("client_probe"), f.sock, msgfile, "me@x.test", "a@x.test"])
            c.eq(rc, 0, what + " probe exit code")
            c.eq(out.splitlines()[1:2], ["send OK"], what + " status")
            c.eq(f.data(n), wire, what)
        mails = mail_lines(f)
        c.eq(mails[0].split(" SIZE=")[1], "0", "SIZE of the empty body")
        c.eq(mails[5].split(" SIZE=")[1], "12", "SIZE counts CRLF, not dot-stuffing")
    big = b"".join(b"line %d .dot\n.%d\n" % (i, i) for i in range(100000))
    with Fake() as f:
        out = probe(f, message=big)
        c.eq(sends(out), ["send OK"], "large body")
        c.eq(f.data(), big.replace(b"\n.", b"\n..").replace(b"\n", b"\r\n") + b".\r\n",
             "large body bytes")


def parameters(c):
    with Fake() as f:
        probe(f, message=b"Subject: caf\xc3\xa9\n\nna\xc3\xafve\n")
        probe(f, message=b"plain ascii\n")
        probe(f, sender="j\u00f6rg@example.org", rcpts=["z\u00fc@example.org"])
        probe(f, opts=["-r", "ses", "-m", "queue"])
        m = mail_lines(f)
        c.true(" BODY=8BITMIME" in m[0], "8-bit body gets BODY=8BITMIME: %r" % m[0])
        c.true("BODY=" not in m[1] and "SMTPUTF8" not in m[1], "7-bit body: %r" % m[1])
        c.true(m[2].endswith(" SMTPUTF8 SIZE=21"), "non-ASCII address gets SMTPUTF8: %r" % m[2])
        c.true(m[3].endswith(" XRELAY=ses XMODE=queue"), "XRELAY/XMODE: %r" % m[3])
    with Fake({"lhlo": "250-fake.test\n250 PIPELINING"}) as f:
        probe(f, message=b"caf\xc3\xa9\n")
        c.eq(mail_lines(f), ["MAIL FROM:<me@example.org>"], "no BODY/SIZE when not offered")


def dsn_parameters(c):
    with Fake() as f:
        probe(f, rcpts=["a@x.test", "b@x.test"],
              opts=["-N", "SUCCESS,FAILURE,DELAY", "-R", "HDRS", "-E", "id+2B1"])
        probe(f, opts=["-N", "NEVER", "-R", "FULL"])
        probe(f)
        m = mail_lines(f)
        r = [l for l in f.commands() if l.startswith("RCPT ")]
        c.true(m[0].endswith(" RET=HDRS ENVID=id+2B1"), "RET and ENVID on MAIL: %r" % m[0])
        c.eq(r[:2], ["RCPT TO:<a@x.test> NOTIFY=SUCCESS,FAILURE,DELAY",
                     "RCPT TO:<b@x.test> NOTIFY=SUCCESS,FAILURE,DELAY"], "NOTIFY on each RCPT")
        c.true(m[1].endswith(" RET=FULL") and r[2].endswith(" NOTIFY=NEVER"), "NEVER/FULL")
        c.true("RET=" not in m[2] and "ENVID=" not in m[2] and r[3:] == ["RCPT TO:<you@example.org>"],
               "nothing when not asked: %r %r" % (m[2], r[3:]))
        sent = len(m)
        for opts in (["-N", "NEVER,SUCCESS"], ["-N", "SUCCESS,SUCCESS"], ["-N", ""],
                     ["-N", "SUCCESS,"], ["-N", "SOMETIMES"], ["-R", "BODY"], ["-R", ""],
                     ["-E", "a b"], ["-E", "a=b"], ["-E", "a+2b"], ["-E", "a+2"], ["-E", "a+0A"],
                     ["-E", "x" * 101], ["-E", ""], ["-E", "caf\u00e9"]):
            out = probe(f, opts=opts)
            c.eq(sends(out), ["send ARGS"], "refused: %r" % opts)
        c.eq(len(mail_lines(f)), sent, "nothing sent for bad DSN values")


def bad_addresses(c):
    bad = ["a\rb@x.test", "a\nb@x.test", "a\tb@x.test", "a\x1bb@x.test", "a b@x.test",
           "a\x7f@x.test", "<a@x.test>", "a@x.test>", "a@", "@x.test", "x" * 65 + "@x.test",
           "a@" + "d" * 256, "a@" + ("d" * 60 + ".") * 5 + "com", b"\xff@x.test", b"\xc3@x.test",
           '"unterminated@x.test', "a@x test", "a,b@x.test"]
    good = ['"quoted space"@x.test', "root", "a@[192.0.2.1]", "x" * 64 + "@x.test"]
    with Fake() as f:
        for addr in bad:
            out = probe(f, rcpts=[addr])
            c.eq(sends(out), ["send ARGS"], "recipient %r" % addr)
            out = probe(f, sender=addr)
            c.eq(sends(out), ["send ARGS"], "sender %r" % addr)
        out = probe(f, rcpts=["ok@x.test", "bad\r\nRCPT TO:<evil@x.test>"])
        c.eq(sends(out), ["send ARGS"], "one bad recipient among good ones")
        out = probe(f, opts=["-r", "bad relay"])
        c.eq(sends(out), ["send ARGS"], "relay name with a space")
        out = probe(f, opts=["-m", "bogus"])
        c.eq(sends(out), ["send ARGS"], "unknown mode")
        c.eq(mail_lines(f), [], "nothing sent for bad input")
        for addr in good:
            out = probe(f, rcpts=[addr])
            c.eq(sends(out), ["send OK"], "good address %r" % addr)
        out = probe(f, sender="")
        c.eq(sends(out), ["send OK"], "null sender")
        c.true(mail_lines(f)[-1].startswith("MAIL FROM:<> "), "null sender on the wire")


def wrong_thread(c):
    with Fake() as f:
        out = probe(f, opts=["-x"])
        c.eq(sends(out), ["send THREAD"], "send from another thread")
        c.eq(mail_lines(f), [], "nothing sent from the wrong thread")
        out = probe(f, opts=["-x", "-F"])
        c.eq(sends(out), ["send OK"], "FREETHREAD lifts the check")


def long_reply(c):
    with Fake({"lhlo": "250-fake.test\n250 " + "X" * 5000}) as f:
        c.eq(probe(f, rcpts=None)[0], "open PROTOCOL", "over-long LHLO reply line")
    with Fake({"dot": "250 " + "y" * 100000}) as f:
        out = probe(f, opts=["-n", "2"])
        c.eq(sends(out), ["send PROTOCOL", "send STATE"], "over-long final reply, then broken")
    with Fake({"lhlo": "250-fake.test\n" + "250-X\n" * 200 + "250 PIPELINING"}) as f:
        c.eq(probe(f, rcpts=None)[0], "open PROTOCOL", "endless continuation lines")
    text = "z" * 4000
    with Fake({"dot": "250 2.0.0 " + text}) as f:
        out = probe(f)
        c.eq(sends(out), ["send OK"], "long but legal reply line")
        c.eq(rcpts(out), ["rcpt 0 250 2.0.0 " + "z" * 511], "text truncated to the field")


def reply_parsing(c):
    script = {"dot": ["250-2.0.0 first line\n250-2.0.0 second\n250 2.0.0 third",
                      "250 ok without enhanced code", "250 2.0.0", "250",
                      "250 9.9.9 not an ecode", "250 2.0.0 bell\x07 esc\x1b[31m"]}
    with Fake(script) as f:
        out = probe(f, rcpts=["a@x", "b@x", "c@x", "d@x", "e@x", "f@x"])
        c.eq(rcpts(out), ["rcpt 0 250 2.0.0 first line|second|third",
                          "rcpt 1 250 - ok without enhanced code",
                          "rcpt 2 250 2.0.0 ",
                          "rcpt 3 250 - ",
                          "rcpt 4 250 - 9.9.9 not an ecode",
                          "rcpt 5 250 2.0.0 bell? esc?[31m"], "parsed replies")
        c.eq(out[-1], "last 250 2.0.0 bell? esc?[31m", "last reply")
    with Fake({"dot": "250-2.0.0 a\n251 2.0.0 b"}) as f:
        c.eq(sends(probe(f)), ["send PROTOCOL"], "code changes within a reply")


def gone_421(c):
    with Fake({"rcpt": ["250 ok", "421 4.3.2 shutting down"]}) as f:
        out = probe(f, rcpts=["a@x", "b@x", "c@x"], opts=["-n", "2"])
        c.eq(sends(out), ["send TEMPORARY", "send STATE"], "421 mid-envelope, then broken")
        c.eq(rcpts(out), ["rcpt 0 421 4.3.2 shutting down", "rcpt 1 421 4.3.2 shutting down",
                          "rcpt 2 421 4.3.2 shutting down"], "unconfirmed recipients temp-failed")
    with Fake({"dot": ["250 2.0.0 sent a", "CLOSE"]}) as f:
        out = probe(f, rcpts=["a@x", "b@x"])
        c.eq(sends(out), ["send IO"], "hang-up after the data")
        c.eq(rcpts(out), ["rcpt 0 250 2.0.0 sent a", "rcpt 1 0 - "],
             "known outcomes kept, unknown ones code 0")


def early_close(c):
    big = b"x" * 998 + b"\n"
    big = big * 8000
    with Fake({"data": "354 go ahead\n552 5.3.4 Message too big\nCLOSE"}) as f:
        out = probe(f, message=big, rcpts=["a@x", "b@x"], opts=["-n", "2"])
        c.eq(sends(out), ["send PERMANENT", "send STATE"], "refused mid-data, no SIGPIPE death")
        c.eq(rcpts(out)[:2], ["rcpt 0 552 5.3.4 Message too big",
                              "rcpt 1 552 5.3.4 Message too big"], "the daemon's reply is kept")
    with Fake({"data": "354 go ahead\nCLOSE"}) as f:
        out = probe(f, message=big)
        c.eq(sends(out), ["send IO"], "hang-up mid-data")
        c.eq(rcpts(out), ["rcpt 0 0 - "], "outcome unknown")


def reuse(c):
    with Fake({"dot": ["250 2.0.0 first", "250 2.0.0 second"]}) as f:
        out = probe(f, message=b"same\n.x\n", opts=["-n", "2"])
        c.eq(sends(out), ["send OK", "send OK"], "two messages on one handle")
        c.eq(rcpts(out), ["rcpt 0 250 2.0.0 first", "rcpt 0 250 2.0.0 second"], "replies")
        c.eq([f.data(1), f.data(2)], [b"same\r\n..x\r\n.\r\n"] * 2, "both bodies")
        cmds = f.commands()
        c.eq(sum(1 for l in cmds if l.startswith("LHLO")), 1, "one LHLO")
        c.eq(cmds[-1], "QUIT", "QUIT on close")
    with Fake({"rcpt": ["550 5.1.1 no", "250 ok"]}) as f:
        out = probe(f, opts=["-n", "2"])
        c.eq(sends(out), ["send PERMANENT", "send OK"], "reuse after all recipients refused")


def env_socket(c):
    with Fake() as f:
        out = probe(f, sock="-", env={"MAILPOOL_SOCKET": f.sock})
        c.eq(out[:2], ["open OK", "send OK"], "$MAILPOOL_SOCKET used for a NULL path")
        c.eq(len(mail_lines(f)), 1, "message arrived")


def example(c):
    with Fake({"rcpt": ["250 ok", "550 5.1.1 no such user"]}) as f:
        rc, out, err = run([binary("mailpool-example-send"), "-s", f.sock, "me@x.test",
                            "a@x.test", "b@x.test"], stdin=b"Subject: hi\n\nhello\n")
        c.eq(rc, 1, "exit code when not all were accepted")
        c.eq(out.splitlines(), ["overall: some recipients were refused",
                                "a@x.test: 250 2.0.0 Ok: delivered",
                                "b@x.test: 550 5.1.1 no such user"], "example output")
        c.eq(f.data(), b"Subject: hi\r\n\r\nhello\r\n.\r\n", "message through the shared library")


CASES = {f.__name__: f for f in (
    example,
    greeting_421, greeting_garbage, no_daemon, timeout, pipelining, partial, all_temporary,
    all_permanent, mail_refused, data_refused, body_encoding, parameters, bad_addresses,
    wrong_thread, long_reply, reply_parsing, gone_421, early_close, reuse, env_socket,
    dsn_parameters)}

if __name__ == "__main__":
    main(CASES)
