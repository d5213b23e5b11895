#!/usr/bin/python3
"""Integration cases: every libmailpool example program and the Python LMTP
example, run against the real daemon relaying to fakesmtp; each case checks
that the messages arrive intact and that per-recipient results are printed.
Usage: test_examples.py CASE"""

import os
import subprocess
import time

from mpharness import SANITIZER_MARKS, SRC_DIR, binary, check, main, wait_for

SENDER = "alice@client.test"
REFUSE_TWO = "on rcpt match two@ reply 550 5.1.1 unknown user\n"
PY_EXAMPLE = os.path.join(SRC_DIR, "client", "examples", "python_lmtp.py")


def run(args, stdin=b"", env_extra=None, timeout=90):
    env = dict(os.environ)
    env.update(env_extra or {})
    p = subprocess.run(args, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=env, timeout=timeout)
    err = p.stderr.decode("utf-8", "replace")
    # A sanitizer report exits 1 too, which some cases expect: look for it.
    for mark in SANITIZER_MARKS:
        check(mark not in err, "sanitizer report from %s:\n%s" % (args[0], err))
    return p.returncode, p.stdout.decode("utf-8", "replace"), err


def crlf(data):
    """What the relay must receive for `data` written with any line ending."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def result_lines(out):
    """{recipient: (code, rest)} from the "rcpt: code ecode text" lines the
    examples print."""
    res = {}
    for line in out.splitlines():
        rcpt, sep, rest = line.partition(": ")
        if sep and "@" in rcpt and rest[:3].isdigit():
            res[rcpt.split()[-1]] = (int(rest[:3]), rest[4:])
    return res


def wait_messages(up, n):
    return wait_for(lambda: len(up.messages()) >= n and up.messages(), 20,
                    lambda: "%d messages at the relay, have %r" % (n, up.messages()))


def check_partial(up, rc, out, err, body):
    """one@ delivered with 250, two@ refused with 550 5.1.1, exit status 1."""
    msgs = wait_messages(up, 1)
    check(len(msgs) == 1, "expected one message, got %r" % msgs)
    check(msgs[0].rcpts == ["one@example.test"], "rcpts at the relay: %r" % msgs[0].rcpts)
    check(msgs[0].mail_from == SENDER, "sender at the relay: %r" % msgs[0].mail_from)
    check(msgs[0].eml == crlf(body), "message changed on the way:\n%r\n%r"
          % (msgs[0].eml[:300], crlf(body)[:300]))
    res = result_lines(out)
    check(res.get("one@example.test", (0,))[0] == 250, "one@ not 250: %r %r" % (out, err))
    check(res.get("two@example.test", (0,))[0] == 550 and "5.1.1" in res["two@example.test"][1],
          "two@ not 550 5.1.1: %r %r" % (out, err))
    check(rc == 1, "a refused recipient should exit 1, got %d: %r" % (rc, err))


BODY = (b"From: alice@client.test\nTo: one@example.test\nSubject: example\n\n"
        b"Hello.\n.\n..two dots\n.leading dot\nend\n")


# -- the Python example: smtplib.LMTP with per-recipient replies ----------------------------


def case_examples_python_lmtp(s):
    up = s.fakesmtp(REFUSE_TWO)
    d = s.daemon(s.relay(up.port))
    rc, out, err = run(["/usr/bin/python3", PY_EXAMPLE, "-s", d.socket, SENDER,
                        "one@example.test", "two@example.test"], BODY)
    check_partial(up, rc, out, err, BODY)


def case_examples_python_lmtp_all_ok(s):
    """Three accepted recipients: three LMTP replies, each read; the relay
    and queue mode chosen through the MAIL parameters."""
    up = s.fakesmtp("")
    other = s.fakesmtp("")
    d = s.daemon(s.relay(up.port), s.relay(other.port, name="other"))
    rcpts = ["a@example.test", "b@example.test", "c@example.test"]
    rc, out, err = run(["/usr/bin/python3", PY_EXAMPLE, "-s", d.socket, "-r", "other",
                        "-m", "queue", SENDER] + rcpts, BODY)
    check(rc == 0, "exit %d: %r %r" % (rc, out, err))
    res = result_lines(out)
    check(sorted(res) == rcpts and all(c == 250 for c, _ in res.values()),
          "per-recipient results: %r" % out)
    check(all("queued as" in t for _, t in res.values()), "not queued: %r" % out)
    msgs = wait_messages(other, 1)
    check(sorted(r for m in msgs for r in m.rcpts) == rcpts, "delivered: %r" % msgs)
    check(not up.messages(), "XRELAY ignored: %r" % up.messages())


def case_examples_python_lmtp_no_daemon(s):
    rc, out, err = run(["/usr/bin/python3", PY_EXAMPLE, "-s",
                        os.path.join(s.dir, "missing.sock"), SENDER, "one@example.test"], BODY)
    check(rc == 1 and "cannot submit" in err, "no daemon: exit %d %r %r" % (rc, out, err))


# -- the C examples --------------------------------------------------------------------------


def big_body(size):
    """A message of about `size` bytes with LF endings, dot lines and 8-bit text."""
    head = b"From: alice@client.test\nTo: one@example.test\nSubject: big\n\n"
    lines = []
    n = 0
    i = 0
    while n < size:
        line = (b"." if i % 7 == 0 else b"") + (b"line %d \xc3\xa9 " % i) + b"x" * 60 + b"\n"
        lines.append(line)
        n += len(line)
        i += 1
    return head + b"".join(lines)


def seqs(msgs):
    """The X-Example-Seq numbers of the delivered messages."""
    out = []
    for m in msgs:
        for line in m.eml.split(b"\r\n"):
            if line.startswith(b"X-Example-Seq: "):
                out.append(int(line.split(b": ")[1]))
    return sorted(out)


def case_examples_send_one(s):
    up = s.fakesmtp(REFUSE_TWO)
    d = s.daemon(s.relay(up.port))
    rc, out, err = run([binary("mailpool-example-send"), "-s", d.socket, SENDER,
                        "one@example.test", "two@example.test"], BODY)
    check_partial(up, rc, out, err, BODY)


def stream_case(s, extra):
    up = s.fakesmtp(REFUSE_TWO)
    d = s.daemon(s.relay(up.port))
    body = big_body(3 << 20)
    path = os.path.join(s.dir, "message.txt")
    with open(path, "wb") as f:
        f.write(body)
    rc, out, err = run([binary("mailpool-example-stream"), "-s", d.socket] + extra +
                       [path, SENDER, "one@example.test", "two@example.test"])
    check_partial(up, rc, out, err, body)
    check("sent " in err, "no progress reported: %r" % err)


def case_examples_stream_file(s):
    stream_case(s, ["-8"])


def case_examples_stream_send_fd(s):
    stream_case(s, ["-f", "-8"])


def async_all_ok(s, prog, handles, n):
    up = s.fakesmtp("")
    d = s.daemon(s.relay(up.port, pool={"max_connections": 2}))
    rcpts = ["one@example.test", "three@example.test"]
    rc, out, err = run([binary(prog), "-s", d.socket, "-c", str(handles), "-n", str(n), "-v",
                        SENDER] + rcpts, BODY)
    check(rc == 0, "exit %d:\n%s\n%s" % (rc, out, err))
    check("sent %d, failed 0" % n in out, "summary: %r" % out)
    check(out.count("  one@example.test: 250") == n, "per-recipient results: %r" % out)
    check("connected" in err and "RCPT -> 250" in err, "no events on stderr: %r" % err)
    msgs = wait_for(lambda: len(up.messages()) >= n and up.messages(), 30,
                    lambda: "%d messages, have %d" % (n, len(up.messages())))
    check(seqs(msgs) == list(range(1, n + 1)), "sequence numbers delivered: %r" % seqs(msgs))
    for m in msgs:
        check(m.rcpts == rcpts, "rcpts: %r" % m.rcpts)
        check(m.eml.endswith(crlf(BODY)), "body changed: %r" % m.eml[-200:])


def case_examples_async_poll(s):
    async_all_ok(s, "mailpool-example-async-poll", 3, 12)


def case_examples_async_libevent(s):
    async_all_ok(s, "mailpool-example-async-libevent", 4, 16)


def case_examples_async_poll_partial(s):
    up = s.fakesmtp(REFUSE_TWO)
    d = s.daemon(s.relay(up.port))
    rc, out, err = run([binary("mailpool-example-async-poll"), "-s", d.socket, "-c", "2",
                        "-n", "4", SENDER, "one@example.test", "two@example.test"], BODY)
    check(rc == 1, "a refused recipient should exit 1: %d %r" % (rc, out))
    check(out.count("  one@example.test: 250") == 4 and
          out.count("  two@example.test: 550 5.1.1") == 4, "per-recipient results: %r" % out)
    msgs = wait_for(lambda: len(up.messages()) >= 4 and up.messages(), 30, "4 messages")
    check(all(m.rcpts == ["one@example.test"] for m in msgs), "rcpts: %r" % msgs)


def case_examples_async_libevent_deadline(s):
    """The relay stalls after the data; the -t deadline cancels the send and
    the program ends at once instead of waiting for the 30 s timeout."""
    up = s.fakesmtp("on dot delay 6000\n")
    d = s.daemon(s.relay(up.port, timeout=20))
    t0 = time.monotonic()
    rc, out, err = run([binary("mailpool-example-async-libevent"), "-s", d.socket, "-c", "1",
                        "-n", "3", "-t", "1", SENDER, "one@example.test"], BODY)
    took = time.monotonic() - t0
    check(took < 4.5, "cancel took %.1f s: %r %r" % (took, out, err))
    check("deadline: cancelling" in err, "no cancel: %r" % err)
    check(rc == 1 and "sent 0, failed 3" in out, "exit %d: %r %r" % (rc, out, err))


def case_examples_thread_pool(s):
    up = s.fakesmtp("")
    d = s.daemon(s.relay(up.port, pool={"max_connections": 3}))
    n = 20
    rc, out, err = run([binary("mailpool-example-thread-pool"), "-s", d.socket, "-t", "4",
                        "-n", str(n), SENDER, "one@example.test"])
    check(rc == 0, "exit %d:\n%s\n%s" % (rc, out, err))
    check(out.count("  one@example.test: 250") == n, "per-recipient results: %r" % out)
    msgs = wait_for(lambda: len(up.messages()) >= n and up.messages(), 30,
                    lambda: "%d messages, have %d" % (n, len(up.messages())))
    subjects = sorted(l for m in msgs for l in m.eml.split(b"\r\n") if l.startswith(b"Subject:"))
    want = sorted(b"Subject: message %d of %d" % (i, n) for i in range(1, n + 1))
    check(subjects == want, "subjects delivered: %r" % subjects)


def case_examples_thread_pool_no_daemon(s):
    rc, out, err = run([binary("mailpool-example-thread-pool"), "-s",
                        os.path.join(s.dir, "missing.sock"), "-t", "2", "-n", "3", SENDER,
                        "one@example.test"])
    check(rc == 1, "no daemon: exit %d %r" % (rc, out))
    check(out.count("Cannot") + out.count("cannot") + out.count("not sent") >= 3,
          "every message should report the failure: %r" % out)


CASES = {name[5:]: fn for name, fn in list(globals().items()) if name.startswith("case_")}

if __name__ == "__main__":
    main(CASES)
