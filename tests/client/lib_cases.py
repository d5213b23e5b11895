#!/usr/bin/python3
"""libmailpool 0.2 API cases against the fake LMTP server: lib_cases.py CASE."""
import os
import subprocess
import time

from harness import Check, Fake, binary, main, run

OK, TEMP, PERM, THREAD, CANCELLED, TIMEOUT = 0, -7, -8, -10, -11, -5


def lib(f, mode, *extra, stdin=b"", timeout=60):
    rc, out, err = run([binary("lib_test"), f.sock, mode] + list(extra), stdin=stdin,
                       timeout=timeout)
    if rc != 0:
        print(err)
    return out.splitlines()


def evs(lines):
    return [l[3:] for l in lines if l.startswith("ev ")]


def version(c):
    with Fake() as f:
        out = lib(f, "version")
        c.eq(out, ["version 0.2.0 0.2.0"], "run-time and compile-time versions agree")


def events(c):
    with Fake() as f:
        out = lib(f, "events")
        c.eq(evs(out), ["COMMAND MAIL 0 250", "COMMAND RCPT 0 250", "COMMAND RCPT 1 250",
                        "COMMAND DATA 0 354", "PROGRESS 23 23", "COMMAND . 0 250",
                        "COMMAND . 1 250", "COMMAND QUIT 0 221", "DISCONNECT success"],
             "event order of a normal send")
        c.true("send 0" in out, "send succeeded")


def refusal_events(c):
    with Fake({"rcpt": "550 5.1.1 no such user"}) as f:
        out = lib(f, "events")
        c.eq(evs(out)[:5], ["COMMAND MAIL 0 250", "COMMAND RCPT 0 550", "COMMAND RCPT 1 550",
                            "COMMAND DATA 0 503", "COMMAND RSET 0 250"],
             "event order of a refused send")
        c.true("send %d" % PERM in out, "refusal is PERMANENT")
        c.eq(f.has_data(), False, "no data after a refusal")


def stream(c):
    with Fake() as f:
        out = lib(f, "stream")
        c.true("add 0" in out and "stream 0" in out, "stream accepted: %r" % out)
        c.eq(f.data(), b"Subject: s\r\n\r\n..dot\r\n...two\r\n..x\r\nbare\r\nend\r\n.\r\n",
             "CRLF and dot-stuffing across chunk boundaries")
        rc = [l for l in f.commands() if l.startswith("RCPT")]
        c.eq(rc[2], "RCPT TO:<c@example.org> NOTIFY=SUCCESS ORCPT=rfc822;c+40x.org",
             "added recipient with NOTIFY and ORCPT")
        mail = [l for l in f.commands() if l.startswith("MAIL")][0]
        c.true(" SIZE=" not in mail, "no SIZE for an unknown stream length")


def big(c):
    with Fake() as f:
        out = lib(f, "big", "8", timeout=100)
        c.true("big 0" in out, "8 MiB stream delivered: %r" % out)
        growth = [int(l.split()[1]) for l in out if l.startswith("hwm_growth_kib")]
        c.true(growth and growth[0] < 8192, "peak RSS growth under 8 MiB: %r" % growth)
        data = f.data()
        c.true(len(data) > 8 << 20 and data.endswith(b"\r\n.\r\n"), "message complete")
        c.true(b"\r\n..line 7\r\n" in data and b"\r\n.line" not in data, "dot-stuffed")


def fd(c):
    with Fake() as f:
        out = lib(f, "fd", stdin=b"Subject: fd\n\n.hidden\nlast")
        c.true("fd 0" in out, "send_fd succeeded: %r" % out)
        c.eq(f.data(), b"Subject: fd\r\n\r\n..hidden\r\nlast\r\n.\r\n", "send_fd body")


def cancel_case(c, mode):
    with Fake() as f:
        out = lib(f, mode, timeout=60)
        c.true("cancelled %d" % CANCELLED in out, "stream ends CANCELLED: %r" % out[:6])
        c.true("rcpt 0 0" in out, "cancelled recipients have no outcome")
        c.true("next 0" in out, "the handle is usable after the cancel")
        c.eq(f.has_data(2), False, "only one message reached the server")
        c.eq(f.data(1), b"Subject: next\r\n\r\nok\r\n.\r\n", "the message after the cancel")
        c.eq(f.commands().count("CONNECT"), 2, "reconnected after the cancel")
        if mode == "cancel":
            c.true("ev CANCEL" in out, "CANCEL event")


def cancel(c):
    cancel_case(c, "cancel")


def alarm(c):
    cancel_case(c, "alarm")


def thread(c):
    with Fake() as f:
        out = lib(f, "thread")
        c.eq(out, ["open 0", "other %d" % THREAD, "attached 0", "original %d" % THREAD],
             "thread check and attach")


def queueid(c):
    with Fake({"dot": "250 2.0.0 Ok: queued as 0123ABC-xy"}) as f:
        c.eq(lib(f, "queueid")[-1], "queueid 0123ABC-xy", "queue id from the reply")


def async_(c):
    with Fake() as f:
        out = lib(f, "async")
        e = evs(out)
        c.eq(e[:3], ["COMMAND LHLO 0 250", "CONNECT", "DONE success"], "async open events")
        c.eq(e[3:11], ["COMMAND MAIL 0 250", "COMMAND RCPT 0 250", "COMMAND RCPT 1 250",
                       "COMMAND DATA 0 354", "PROGRESS 23 23", "COMMAND . 0 250",
                       "COMMAND . 1 250", "DONE success"], "async send events")
        c.true("async_send 0" in out, "async send result")
        c.eq(f.data(), b"Subject: a\r\n\r\nbody\r\n.\r\n", "async message")


def stall(c):
    with Fake({"dot": "HANG"}) as f:
        t = time.monotonic()
        out = lib(f, "stall")
        took = time.monotonic() - t
        c.true("ev TIMEOUT" in out and "send %d" % TIMEOUT in out, "TIMEOUT: %r" % out)
        c.true(took < 5, "timed out within bounds (%.1fs)" % took)


def async_stall(c):
    with Fake({"dot": "HANG"}) as f:
        t = time.monotonic()
        out = lib(f, "async_stall")
        took = time.monotonic() - t
        c.true("ev TIMEOUT" in out and "async_send %d" % TIMEOUT in out, "TIMEOUT: %r" % out)
        c.true(took < 5, "timed out within bounds (%.1fs)" % took)


CASES = {"version": version, "events": events, "refusal_events": refusal_events,
         "stream": stream, "big": big, "fd": fd, "cancel": cancel, "alarm": alarm,
         "thread": thread, "queueid": queueid, "async": async_, "stall": stall,
         "async_stall": async_stall}

if __name__ == "__main__":
    main(CASES)
