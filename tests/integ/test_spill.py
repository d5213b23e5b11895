"""Integration cases: message data kept on disk while it arrives.

Past 128 KiB a message being received moves from memory to an anonymous
file in the spool's tmp/ directory; when the data ends, the file is mapped
and relayed, spooled (copied file to file) or split over relays from there.
These cases check that big messages still arrive byte-exact by every path
(relay, queue and its retries, split, address fixing), that a disk below
spool.min_free gets 452 without losing the next message, and that no file
or descriptor is left behind whatever the client does.
Usage: test_spill.py CASE"""

import os
import random
import socket
import time

from mpharness import (LMTP, SENDER, Daemon, check, dot_stuff, expect_codes, main, send_one,
                       wait_for)

SPILL_AT = 128 * 1024
# In a sanitizer build freed memory sits in ASan's quarantine and would count
# as growth; without the quarantine RSS means the same in both builds.
FLAT_RSS = {"ASAN_OPTIONS": "quarantine_size_mb=0:allocator_release_to_os_interval_ms=0"}


def big_body(size, seed=1):
    """A message of about `size` bytes with lines that need stuffing, 8-bit
    bytes and varied lengths, so byte-exact delivery means something."""
    rnd = random.Random(seed)
    lines = [b"From: alice@client.test", b"To: bob@example.test",
             b"Subject: spill " + str(seed).encode(), b""]
    n = sum(len(x) + 2 for x in lines)
    i = 0
    while n < size:
        i += 1
        kind = i % 7
        if kind == 0:
            line = b"." + b"dot line %d" % i
        elif kind == 1:
            line = b"."
        elif kind == 2:
            line = bytes(rnd.randrange(0x80, 0x100) for _ in range(40))
        else:
            line = b"x%07d " % i + b"y" * rnd.randrange(0, 900)
        lines.append(line)
        n += len(line) + 2
    return b"\r\n".join(lines) + b"\r\n"


def fds(d):
    return sorted(os.listdir("/proc/%d/fd" % d.pid))


def body_files(d):
    """The daemon's descriptors of files in the spool's tmp/ (body files)."""
    tmp = os.path.join(d.dir, "spool", "tmp") + "/"
    out = []
    for f in fds(d):
        try:
            link = os.readlink("/proc/%d/fd/%s" % (d.pid, f))
        except OSError:
            continue
        if link.startswith(tmp):
            out.append(link)
    return out


def tmp_files(d):
    p = os.path.join(d.dir, "spool", "tmp")
    return os.listdir(p) if os.path.isdir(p) else []


def settle_fds(d, before):
    """No body file is left open and the daemon holds no more descriptors
    than `before` (give closes a moment; the pool may close an idle session
    meanwhile, so this is a bound, not an equality)."""
    wait_for(lambda: not body_files(d) and len(fds(d)) <= len(before), 10,
             lambda: "descriptors: %r before, now %r; body files %r"
             % (before, fds(d), body_files(d)))


def case_spill_relay_exact(s):
    up = s.fakesmtp("")
    d = s.daemon(s.relay(up.port))
    send_one(d)  # warm: the session and its descriptors exist from now on
    before = fds(d)
    msg = big_body(3 << 20)
    r = send_one(d, body=msg, rcpts=("bob@example.test", "carol@example.test"))
    expect_codes(r.results, [250, 250])
    got = up.messages()[-1]
    check(got.eml == msg, "body differs after relaying from the file (%d vs %d bytes)"
          % (len(got.eml), len(msg)))
    check(got.raw == dot_stuff(msg), "wire data not dot-stuffed right")
    check("size=%d" % len(msg) in d.log(), "size not logged right")
    settle_fds(d, before)
    check(tmp_files(d) == [], "files left in tmp/: %r" % tmp_files(d))


def case_spill_small_stays_in_memory(s):
    """A message under the threshold never creates a file (no descriptor
    churn for the common case): strace-free check via the fd table while
    the client holds the data phase open."""
    up = s.fakesmtp("on dot delay 1500\n")
    d = s.daemon(s.relay(up.port))
    send_one(d)
    with d.lmtp() as c:
        c.sendall(b"MAIL FROM:<alice@client.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        for _ in range(3):
            c.reply()
        c.sendall(b"Subject: small\r\n\r\n" + b"z" * (SPILL_AT // 2) + b"\r\n.\r\n")
        time.sleep(0.5)  # the dot reply is delayed upstream: the message is in flight
        during = body_files(d)
        check(c.reply().code == 250, "small message not delivered")
    check(during == [], "a small message opened a file: %r" % during)


def case_spill_file_during_data(s):
    """While a big message arrives, it is in a file (one more descriptor,
    nothing named in tmp/) and the daemon's memory stays flat."""
    up = s.fakesmtp("")
    d = s.daemon(s.relay(up.port), env=FLAT_RSS)
    send_one(d)
    before = fds(d)
    base = d.rss_kb()
    with d.lmtp() as c:
        c.sendall(b"MAIL FROM:<alice@client.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        for _ in range(3):
            c.reply()
        c.sendall(b"Subject: big\r\n\r\n" + (b"q" * 998 + b"\r\n") * 8192)  # 8 MiB, no end
        wait_for(lambda: body_files(d), 10, lambda: "no body file opened: %r" % fds(d))
        links = body_files(d)
        check(len(links) == 1 and "(deleted)" in links[0],
              "the body file has a name: %r" % links)
        check(tmp_files(d) == [], "named files in tmp/: %r" % tmp_files(d))
        grown = d.rss_kb() - base
        check(grown < 4096, "RSS grew by %d KiB while 8 MiB arrived" % grown)
        c.sendall(b".\r\n")
        check(c.reply().code == 250, "big message not delivered")
    check(up.messages()[-1].eml.count(b"q" * 998) == 8192, "body damaged")
    settle_fds(d, before)


def case_spill_queue_retry_exact(s):
    """Queue mode: the file is copied into the spool; the first attempt
    fails, the retry maps the body from the spool file; one delivery,
    byte-exact, and the spool empties."""
    up = s.fakesmtp("on dot #1 reply 451 4.3.0 try later\n")
    d = s.daemon(s.relay(up.port, mode="queue"), spool={"retry_min": 1, "retry_max": 1})
    msg = big_body(2 << 20, seed=7)
    r = send_one(d, body=msg)
    expect_codes(r.results, [250])
    check("queued as" in r.results[0].text, "not queued: %r" % r.results[0])
    wait_for(lambda: len(up.messages()) == 1, 30, lambda: d.log()[-3000:])
    check(up.messages()[0].eml == msg, "retried body differs")
    qdir = os.path.join(d.dir, "spool", "queue")
    wait_for(lambda: os.listdir(qdir) == [], 10, lambda: "queue/ not empty: %r"
             % os.listdir(qdir))
    time.sleep(1.5)
    check(len(up.messages()) == 1, "delivered %d times" % len(up.messages()))


def case_spill_queue_restart(s):
    """A spooled big message survives a restart and is delivered from the
    spool file (mapped) byte-exact."""
    up = s.fakesmtp("on dot #1 reply 451 4.3.0 not now\n")
    spool = os.path.join(s.dir, "shared-spool")
    cfg = dict(mode="queue")
    sp = {"retry_min": 60, "retry_max": 60}
    d = s.daemon(s.relay(up.port, **cfg), spool=sp, extra_daemon='spool_dir = "%s";' % spool)
    msg = big_body(1 << 20, seed=3)
    expect_codes(send_one(d, body=msg).results, [250])
    up.wait_log("message-rejected")
    d.stop()
    d2 = Daemon(s, s.config(s.relay(up.port, **cfg), spool=sp,
                            extra_daemon='spool_dir = "%s";' % spool), name="again")
    wait_for(lambda: up.messages(), 20, lambda: d2.log()[-3000:])
    check(up.messages()[0].eml == msg, "body after restart differs")


def case_spill_split_and_fix(s):
    """One big message split over two relays, one of which rewrites the
    From: header: each relay gets its own mapping of the same file, the
    fixed one a new header in front of the unchanged rest."""
    a = s.fakesmtp()
    b = s.fakesmtp()
    d = s.daemon(s.relay(a.port), s.relay(b.port, name="lab", sender="app@example.com",
                                          from_header="rewrite"),
                 routes=[{"recipient_domain": "lab.test", "relay": "lab"}])
    msg = big_body(1 << 20, seed=5)
    r = send_one(d, body=msg, rcpts=("one@example.test", "two@lab.test"))
    expect_codes(r.results, [250, 250])
    ea, eb = a.messages()[0].eml, b.messages()[0].eml
    check(ea == msg, "unfixed relay got a different body")
    split = msg.index(b"\r\n\r\n") + 4
    check(eb.endswith(msg[split:]), "fixed relay lost the body after the header")
    check(b"app@example.com" in eb[:eb.index(b"\r\n\r\n")], "header not fixed: %r" % eb[:300])


def case_spill_queue_split(s):
    """Queue mode over two relays: both parts spooled from the same file."""
    a = s.fakesmtp()
    b = s.fakesmtp()
    d = s.daemon(s.relay(a.port, mode="queue"), s.relay(b.port, name="lab", mode="queue"),
                 routes=[{"recipient_domain": "lab.test", "relay": "lab"}])
    msg = big_body(600 << 10, seed=11)
    r = send_one(d, body=msg, rcpts=("one@example.test", "two@lab.test"))
    expect_codes(r.results, [250, 250])
    wait_for(lambda: a.messages() and b.messages(), 20, lambda: d.log()[-3000:])
    check(a.messages()[0].eml == msg and b.messages()[0].eml == msg, "a part differs")


def case_spill_below_min_free(s):
    """No room in the spool for the file: the big message gets 452 for
    each recipient, at the end of its data (nothing was said before), and
    small messages on the same connection still go through."""
    up = s.fakesmtp()
    d = s.daemon(s.relay(up.port), spool={"min_free": 1 << 50})
    with d.lmtp() as c:
        small = b"Subject: small\r\n\r\nok\r\n"
        expect_codes(c.send(SENDER, ["bob@example.test"], small).results, [250])
        r = c.send(SENDER, ["bob@example.test", "carol@example.test"], big_body(1 << 20))
        expect_codes(r.results, [452, 452])
        check("4.3.1" in r.results[0].text, "not a storage error: %r" % r.results[0])
        expect_codes(c.send(SENDER, ["bob@example.test"], small).results, [250])
    check(len(up.messages()) == 2, "upstream got %d messages" % len(up.messages()))
    d.wait_log("cannot keep the message data on disk")



def case_spill_too_big_without_room(s):
    """Too big and no room for its file: the permanent 552 wins over the
    temporary 452, or the client would retry a message that can never go."""
    up = s.fakesmtp()
    d = s.daemon(s.relay(up.port), spool={"min_free": 1 << 50}, max_size=1 << 20)
    r = send_one(d, body=big_body(3 << 20))
    expect_codes(r.results, [552])


def case_spill_retry_budget(s):
    """Bodies read back from the spool for retries share a memory budget
    (64 MiB): three 30 MiB retries at once, the third waits for memory,
    and all three are delivered byte-exact, once each."""
    # First attempts deferred; the retries are slow to answer, so they overlap.
    up = s.fakesmtp("on rcpt #1 reply 451 4.3.0 later\non rcpt #2 reply 451 4.3.0 later\n"
                    "on rcpt #3 reply 451 4.3.0 later\non dot delay 2500\n")
    d = s.daemon(s.relay(up.port, mode="queue", pool={"max_connections": 3}),
                 max_size=40 << 20, spool={"retry_min": 3600, "retry_max": 3600})
    bodies = [big_body(30 << 20, seed=200 + i) for i in range(3)]
    for b in bodies:
        expect_codes(send_one(d, body=b).results, [250])
    wait_for(lambda: d.log().count("deferred attempts=1") == 3, 30, lambda: d.log()[-3000:])
    # Every retry due now, all at once.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sk:
        sk.settimeout(10)
        sk.connect(os.path.join(d.dir, "control.sock"))
        sk.sendall(b"flush\n")
        check(b'"ok":true' in sk.recv(4096), "flush refused")
    d.wait_log("bytes of retry bodies in memory already", timeout=10)
    wait_for(lambda: len(up.messages()) == 3, 90, lambda: d.log()[-3000:])
    got = sorted(m.eml for m in up.messages())
    check(got == sorted(bodies), "bodies differ")
    time.sleep(1.5)
    check(len(up.messages()) == 3, "delivered %d times" % len(up.messages()))

def case_spill_hangup_mid_data(s):
    """A client that hangs up in the middle of a big message: nothing is
    sent upstream, no file or descriptor is left, the next client is served."""
    up = s.fakesmtp()
    d = s.daemon(s.relay(up.port))
    send_one(d)
    before = fds(d)
    for _ in range(5):
        sk = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sk.connect(d.socket)
        sk.sendall(b"LHLO x\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
        buf = b""
        while b"354" not in buf:
            buf += sk.recv(4096)
        sk.sendall(b"Subject: cut\r\n\r\n" + b"w" * (1 << 20))
        time.sleep(0.2)
        sk.close()
    settle_fds(d, before)
    check(tmp_files(d) == [], "files left in tmp/: %r" % tmp_files(d))
    send_one(d)
    check(len(up.messages()) == 2, "a cut message went upstream")


def case_spill_size_limit(s):
    """Over max_message_size: 552, the file is dropped as soon as the limit
    is passed (descriptor closed while the rest is still being read)."""
    up = s.fakesmtp()
    d = s.daemon(s.relay(up.port), max_size=1 << 20)
    send_one(d)
    before = fds(d)
    with d.lmtp() as c:
        c.sendall(b"MAIL FROM:<alice@client.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        for _ in range(3):
            c.reply()
        # Under the limit first: the message is in its body file...
        c.sendall(b"Subject: huge\r\n\r\n" + (b"h" * 1000 + b"\r\n") * 800)
        wait_for(lambda: body_files(d), 10, "a body file for 800 KB")
        # ...and past it, the file is gone while the rest is still read.
        c.sendall((b"h" * 1000 + b"\r\n") * 2200)
        wait_for(lambda: not body_files(d), 10,
                 lambda: "file kept past the limit: %r" % body_files(d))
        c.sendall(b".\r\n")
        r = c.reply()
        check(r.code == 552, "expected 552, got %r" % r)
    settle_fds(d, before)
    check(len(up.messages()) == 1, "the oversized message went upstream")


def case_spill_many_concurrent(s):
    """Twenty clients each sending a 1 MiB message at once: all delivered
    byte-exact, memory far below the data in flight, nothing left over."""
    up = s.fakesmtp()
    d = s.daemon(s.relay(up.port, pool={"max_connections": 4}), env=FLAT_RSS)
    send_one(d)
    base = d.rss_kb()
    bodies = [big_body(1 << 20, seed=100 + i) for i in range(20)]
    conns = [LMTP(d.socket) for _ in bodies]
    for c in conns:
        c.sendall(b"MAIL FROM:<alice@client.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
    for c in conns:
        for _ in range(3):
            c.reply()
    for c, b in zip(conns, bodies):
        c.sendall(dot_stuff(b)[:-5])  # everything but the final CRLF.CRLF
    peak = d.rss_kb() - base
    for c in conns:
        c.sendall(b"\r\n.\r\n")
    for c in conns:
        check(c.reply().code == 250, "a message was not delivered")
        c.close()
    got = sorted(m.eml for m in up.messages()[1:])
    check(got == sorted(bodies), "bodies differ")
    check(peak < 8192, "RSS grew by %d KiB with 20 MiB in DATA" % peak)
    wait_for(lambda: not body_files(d), 10, lambda: "body files left: %r" % body_files(d))


CASES = {name[5:]: fn for name, fn in list(globals().items()) if name.startswith("case_")}

if __name__ == "__main__":
    main(CASES)
