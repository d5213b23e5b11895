#!/usr/bin/python3
"""Integration cases for libmailpool against the real daemon relaying to
fakesmtp: a 50 MB streamed message arrives byte-exact while the client's
peak RSS stays bounded, many threads with one handle each hammer one
daemon, and a cancel mid-body reaches nothing upstream and leaves the
handle usable.
Usage: test_library.py CASE"""

import hashlib
import os
import re
import subprocess
import time

from mpharness import SANITIZER_MARKS, binary, check, client_commands, main, wait_for

SENDER = "alice@client.test"
BIG = 50 << 20  # bytes
CANCELLED = -11  # MAILPOOL_ERR_CANCELLED


def run(args, timeout=120):
    """Run args to completion; returns (status, stdout, stderr).  A peak RSS
    is not taken from wait4() here: a child's ru_maxrss starts from the
    forking Python process's and hides a small program's growth."""
    p = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout)
    err = p.stderr.decode("utf-8", "replace")
    for mark in SANITIZER_MARKS:
        check(mark not in err, "sanitizer report from %s:\n%s" % (args[0], err))
    return p.returncode, p.stdout.decode("utf-8", "replace"), err


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)


def eml_paths(up):
    if not os.path.isdir(up.maildir):
        return []
    return sorted(os.path.join(up.maildir, f) for f in os.listdir(up.maildir)
                  if re.match(r"^msg-\d+\.eml$", f))


def stream_big_text(mib):
    """Yield, chunk by chunk, exactly what `lib_test SOCKET big MIB` streams
    (its stream_big(): numbered CRLF lines, every 7th starting with a dot,
    written in chunks of up to 7000 bytes until MIB MiB are out)."""
    want = mib << 20
    sent = 0
    line = 0
    while sent < want:
        parts = []
        n = 0
        while n + 40 < 7001:
            s = b"%sline %d\r\n" % (b"." if line % 7 == 0 else b"", line)
            parts.append(s)
            n += len(s)
            line += 1
        yield b"".join(parts)
        sent += n


def case_library_stream_50mb(s):
    """50 MiB through mailpool_stream_*: byte-exact at the relay (SHA-256 of
    the stored message, hashed from the file) and the client's peak RSS
    (VmHWM, read by the client itself before and after) bounded."""
    # The default SIZE 52428800 is too small for 50 MiB once dot-stuffed.
    up = s.fakesmtp("ehlo PIPELINING\nehlo 8BITMIME\nehlo ENHANCEDSTATUSCODES\n"
                    "ehlo SIZE 104857600\n")
    d = s.daemon(s.relay(up.port, timeout=60), max_size=BIG + (8 << 20))
    t0 = time.monotonic()
    rc, out, err = run([binary("tests/client/lib_test"), d.socket, "big", str(BIG >> 20)],
                       timeout=100)
    took = time.monotonic() - t0
    check(rc == 0 and "big 0" in out and "rcpt 0 250" in out and "rcpt 1 250" in out,
          "big: %d %r %r" % (rc, out, err))
    m = re.search(r"^hwm_growth_kib (-?\d+)$", out, re.M)
    check(m, "no VmHWM measurement: %r" % out)
    growth = int(m.group(1))
    want = hashlib.sha256()
    size = 0
    for chunk in stream_big_text(BIG >> 20):
        want.update(chunk)
        size += len(chunk)
    emls = wait_for(lambda: eml_paths(up), 30, "the message at the relay")
    check(len(emls) == 1, "messages at the relay: %r" % emls)
    check(os.path.getsize(emls[0]) == size,
          "size at the relay %d, sent %d" % (os.path.getsize(emls[0]), size))
    check(file_sha256(emls[0]) == want.hexdigest(), "the 50 MiB message changed on the way")
    print("stream 50 MiB: %.1f s, client VmHWM growth %d KiB" % (took, growth))
    check(0 <= growth < 8 * 1024, "client peak RSS grew by %d KiB for a 50 MiB message" % growth)


def case_library_threads(s):
    """16 threads with one handle each send 800 messages through one daemon:
    each arrives exactly once."""
    up = s.fakesmtp("")
    d = s.daemon(s.relay(up.port, pool={"max_connections": 4}, timeout=30))
    n, t = 800, 16
    rc, out, err = run([binary("mailpool-example-thread-pool"), "-s", d.socket,
                                   "-t", str(t), "-n", str(n), SENDER, "one@example.test"],
                                  timeout=100)
    check(rc == 0, "exit %d:\n%s\n%s" % (rc, out[-2000:], err[-2000:]))
    check(out.count("  one@example.test: 250") == n, "per-recipient results: %r" % out[-2000:])
    threads = {}
    for m in re.finditer(r"^message \d+ \(thread (\d+)\): ", out, re.M):
        threads[int(m.group(1))] = threads.get(int(m.group(1)), 0) + 1
    check(sum(threads.values()) == n, "outcomes per thread: %r" % threads)
    # The work queue is shared, so the split is up to the scheduler; still,
    # every thread must have had its own handle working.
    check(len(threads) == t, "threads that sent something: %r" % threads)
    wait_for(lambda: len(eml_paths(up)) >= n, 60,
             lambda: "%d messages at the relay, have %d" % (n, len(eml_paths(up))))
    time.sleep(0.3)  # a duplicate would arrive after the last original
    subjects = []
    for p in eml_paths(up):
        with open(p, "rb") as f:
            for line in f.read().split(b"\r\n"):
                if line.startswith(b"Subject:"):
                    subjects.append(line)
    want = sorted(b"Subject: message %d of %d" % (i, n) for i in range(1, n + 1))
    check(sorted(subjects) == want, "subjects at the relay: %d, distinct %d, want %d"
          % (len(subjects), len(set(subjects)), n))
    print("threads: %r" % sorted(threads.values()))


def cancel_case(s, mode):
    """lib_test streams a body, cancels mid-data (directly or from SIGALRM),
    then sends one more message on the same handle."""
    up = s.fakesmtp("")
    d = s.daemon(s.relay(up.port, timeout=30), max_size=1 << 30)
    rc, out, err = run([binary("tests/client/lib_test"), d.socket, mode],
                                  timeout=60)
    check(rc == 0, "lib_test exit %d: %r %r" % (rc, out[-1000:], err))
    check("cancelled %d" % CANCELLED in out, "stream not CANCELLED: %r" % out[-1000:])
    check("next 0" in out, "the handle is not usable after the cancel: %r" % out[-1000:])
    if mode == "cancel":
        check("ev CANCEL" in out, "no CANCEL event: %r" % out)
    emls = wait_for(lambda: eml_paths(up), 20, "the message after the cancel")
    time.sleep(1.0)  # the cancelled one, were it ever relayed, would be here by now
    emls = eml_paths(up)
    check(len(emls) == 1, "messages at the relay: %r" % emls)
    with open(emls[0], "rb") as f:
        eml = f.read()
    check(eml.endswith(b"Subject: next\r\n\r\nok\r\n"), "the message after the cancel: %r"
          % eml[-200:])
    mails = [c for c in client_commands(up) if c.upper().startswith("MAIL ")]
    check(len(mails) == 1, "the cancelled transaction reached the relay: %r\n%s"
          % (mails, "\n".join(up.log_lines())[-2000:]))


def case_library_cancel_mid_body(s):
    cancel_case(s, "cancel")


def case_library_cancel_alarm(s):
    cancel_case(s, "alarm")


CASES = {name[5:]: fn for name, fn in list(globals().items()) if name.startswith("case_")}

if __name__ == "__main__":
    main(CASES)
