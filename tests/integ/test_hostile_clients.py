#!/usr/bin/python3
"""Integration cases: hostile local clients.  File descriptor exhaustion
(the daemon logs the failed accept, stays alive, does not spin, and serves
new clients once descriptors are free again) and memory per connection
(huge command lines without LF and slowloris DATA from many clients at once
keep the daemon's RSS bounded while others are served).
Usage: test_hostile_clients.py CASE

Every row of the bad-input list for local clients, and the CTest entries
that cover it (here and in other files):

| row | tests |
|---|---|
| bare LF line endings | integ_bare_lf, integ_bare_cr, unit_body_decode |
| LF.LF / LF.CRLF then MAIL FROM: text | integ_smuggle_lf_dot_lf, integ_smuggle_lf_dot_crlf, integ_smuggle_crlf_dot_lf, integ_smuggle_cr_dot_cr, unit_body_smuggling |
| lines starting with "." | integ_dot_lines, unit_body_roundtrip |
| 1 MB command line without LF | integ_long_line, integ_hostile_long_lines_memory |
| CR, LF in -f, -F, recipient args | sendmail_bad_sender, integ_sendmail_bad_recipient_arg (NUL cannot be in argv) |
| recipient argument starting with - | sendmail_dash_recipient |
| unknown or duplicate MAIL parameters | integ_unknown_mail_param, integ_duplicate_mail_param, integ_duplicate_size_param |
| over-long local part or path; <> as recipient | integ_long_local_part, integ_long_path, integ_long_rcpt_local_part, integ_long_rcpt_path, integ_null_rcpt |
| DATA with no accepted recipient | integ_data_without_rcpt |
| mixed per-recipient outcomes | integ_per_recipient, integ_bdat_per_recipient, integ_split_order_with_refusal |
| hang-up mid-DATA; sendmail killed reading stdin | integ_hangup_in_data, integ_spill_hangup_mid_data, integ_sendmail_killed_mid_stdin |
| disk full, oversize, fsync error | integ_queue_min_free, integ_spill_below_min_free, spool_enospc, integ_size_limit, integ_size_rss_flat, integ_spill_size_limit, integ_queue_fsync_error |
| garbage on the control socket; connect/close cycles | control_binary_garbage, control_long_line, control_unknown_command, control_connect_cycles, integ_connect_cycles |
| slowloris; connection flood | integ_hostile_slowloris_data, integ_client_slow_data, integ_idle_client_timeout, integ_many_clients, integ_hostile_fd_exhaustion, integ_hostile_fd_exhaustion_no_spin |
| terminal escapes or %n in addresses / HELO | integ_escapes_logged |
"""

import os
import resource
import socket
import time

from mpharness import (MSG, check, delivered_ok, main, send_one, wait_for)

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def greeted(sk, timeout):
    sk.settimeout(timeout)
    try:
        return sk.recv(512).startswith(b"220 ")
    except (socket.timeout, OSError):
        return False


def exhaust(s, spare=12):
    """A relay-mode daemon whose descriptor limit is lowered to what it has
    open now plus `spare`, and clients connected until one gets no greeting:
    returns (daemon, upstream, greeted sockets, the ungreeted socket)."""
    up = s.fakesmtp("")
    d = s.daemon(s.relay(up.port))
    delivered_ok(send_one(d))  # warm up: upstream pool and lazily opened files
    limit = open_fds(d.pid) + spare
    resource.prlimit(d.pid, resource.RLIMIT_NOFILE, (limit, limit))
    held = []
    stuck = None
    for _ in range(4 * spare + 50):
        sk = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.on_cleanup(sk.close)
        sk.connect(d.socket)
        if not greeted(sk, 2.0):
            stuck = sk
            break
        held.append(sk)
    check(stuck is not None, "no accept failure with a limit of %d descriptors (%d clients)"
          % (limit, len(held)))
    check(len(held) >= spare // 2, "only %d clients before the limit" % len(held))
    return d, up, held, stuck


def case_hostile_fd_exhaustion(s):
    d, up, held, stuck = exhaust(s)
    d.wait_log("Too many open files")
    time.sleep(1.0)
    check(d.alive(), "the daemon died at EMFILE:\n" + d.log()[-3000:])
    for sk in held:
        sk.close()
    # The client left waiting in the backlog is accepted once fds are free...
    check(greeted(stuck, 10.0), "the waiting client never got a greeting:\n" + d.log()[-3000:])
    stuck.close()
    # ...and new clients get their mail through.
    for _ in range(3):
        delivered_ok(send_one(d))
    wait_for(lambda: len(up.messages()) >= 4, 10, "deliveries")
    check(all(m.eml == MSG for m in up.messages()), "bodies differ")


def case_hostile_fd_exhaustion_no_spin(s):
    # Accept failing with EMFILE leaves the listening socket readable; a
    # daemon that keeps retrying at once burns a CPU until a descriptor frees.
    d, up, held, stuck = exhaust(s)
    time.sleep(0.5)
    t0 = cpu_seconds(d.pid)
    time.sleep(2.0)
    used = cpu_seconds(d.pid) - t0
    log_lines = d.log().count("Too many open files")
    check(used < 0.5, "the daemon used %.2fs CPU in 2s while out of descriptors (busy "
          "loop on accept; %d log lines about it)" % (used, log_lines))
    check(log_lines < 200, "%d log lines about EMFILE in 2.5s: the log floods" % log_lines)
    for sk in held:
        sk.close()
    check(greeted(stuck, 10.0), "the waiting client never got a greeting")
    delivered_ok(send_one(d))



def read_until(sk, marker, timeout=10.0):
    sk.settimeout(timeout)
    buf = b""
    while marker not in buf:
        part = sk.recv(65536)
        check(part, "connection closed before %r: %r" % (marker, buf))
        buf += part
    return buf


def case_hostile_fd_exhaustion_big_message(s):
    # Out of descriptors, a message too big to keep in memory cannot get its
    # body file: the client gets 452 at the end of the data (nothing lost,
    # nothing half-sent), and once descriptors are free again the same
    # connection's next big message goes through byte-exact.
    d, up, held, stuck = exhaust(s)
    sk = held[0]
    big = b"Subject: big\r\n\r\n" + (b"b" * 998 + b"\r\n") * 1024
    txn = (b"LHLO big.test\r\nMAIL FROM:<alice@client.test>\r\n"
           b"RCPT TO:<bob@example.test>\r\nDATA\r\n")
    sk.sendall(txn)
    read_until(sk, b"354 ")
    sk.sendall(big + b".\r\n")
    reply = read_until(sk, b"\r\n").split(b"\r\n")[0]
    check(reply.startswith(b"452 4.3.1"), "out of descriptors, a big message got %r" % reply)
    check(d.alive(), "the daemon died:\n" + d.log()[-3000:])
    for other in held[1:]:
        other.close()
    stuck.close()
    time.sleep(0.3)
    sk.sendall(txn.split(b"\r\n", 1)[1])  # MAIL, RCPT, DATA again
    read_until(sk, b"354 ")
    sk.sendall(big + b".\r\n")
    reply = read_until(sk, b"\r\n").split(b"\r\n")[0]
    check(reply.startswith(b"250"), "after recovery: %r" % reply)
    wait_for(lambda: len(up.messages()) == 2, 10, "the delivery")
    check(up.messages()[1].eml == big, "the big message differs")

def push(socks, chunk, deadline, max_bytes=1 << 62):
    """Write `chunk` to every socket that accepts it without blocking, until
    `deadline` or `max_bytes` in all; sockets the daemon closed are dropped.
    Returns bytes sent."""
    sent = 0
    while time.monotonic() < deadline and socks and sent < max_bytes:
        progress = False
        for sk in list(socks):
            try:
                n = sk.send(chunk, socket.MSG_DONTWAIT)
                sent += n
                progress = progress or n > 0
            except BlockingIOError:
                pass
            except OSError:
                socks.remove(sk)
        if not progress:
            time.sleep(0.05)
    return sent


def connect_many(s, d, n):
    out = []
    for _ in range(n):
        sk = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.on_cleanup(sk.close)
        sk.connect(d.socket)
        check(greeted(sk, 5.0), "client %d got no greeting" % len(out))
        out.append(sk)
    return out


def case_hostile_long_lines_memory(s):
    up = s.fakesmtp("")
    d = s.daemon(s.relay(up.port))
    delivered_ok(send_one(d))
    base = d.rss_kb()
    socks = connect_many(s, d, 40)
    # Up to 8 MiB each without a line feed: 320 MiB if the daemon buffered it.
    chunk = b"X" * 65536
    alive = list(socks)
    sent = push(alive, chunk, time.monotonic() + 8.0)
    grown = d.rss_kb() - base
    check(d.alive(), "the daemon died:\n" + d.log()[-3000:])
    check(grown < 48 * 1024, "RSS grew by %d KiB for %d clients after %d bytes of one line"
          % (grown, len(socks), sent))
    # Others are served meanwhile.
    delivered_ok(send_one(d))
    wait_for(lambda: len(up.messages()) >= 2, 10, "delivery")
    print("long lines: %d bytes sent, %d of %d clients still connected, RSS +%d KiB"
          % (sent, len(alive), len(socks), grown))


def case_hostile_slowloris_data(s):
    up = s.fakesmtp("")
    # No ASan quarantine: freed memory would count as growth in that build.
    d = s.daemon(s.relay(up.port), client_timeout=30,
                 env={"ASAN_OPTIONS": "quarantine_size_mb=0:allocator_release_to_os_interval_ms=0"})
    delivered_ok(send_one(d))
    base = d.rss_kb()
    socks = connect_many(s, d, 60)
    for sk in socks:
        sk.settimeout(10)
        sk.sendall(b"LHLO slow.test\r\nMAIL FROM:<alice@client.test>\r\n"
                   b"RCPT TO:<bob@example.test>\r\nDATA\r\n")
    for i, sk in enumerate(socks):
        buf = b""
        while b"354 " not in buf:
            part = sk.recv(4096)
            check(part, "slow client %d closed before 354: %r" % (i, buf))
            buf += part
    # Trickle a few bytes each, then one long line without LF, slowly.
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        for sk in socks:
            try:
                sk.send(b"Y", socket.MSG_DONTWAIT)
            except OSError:
                pass
        time.sleep(0.2)
    t0 = time.monotonic()
    delivered_ok(send_one(d))
    check(time.monotonic() - t0 < 5.0, "a normal client waited %.1fs" % (time.monotonic() - t0))
    # 3 MiB each (under max_message_size, so nothing is refused): 180 MiB
    # in RAM if the daemon holds message data in memory instead of the spool.
    sent = push(list(socks), b"Z" * 65536, time.monotonic() + 6.0, 60 * 3 * 1024 * 1024)
    grown = d.rss_kb() - base
    check(d.alive(), "the daemon died:\n" + d.log()[-3000:])
    check(grown < 64 * 1024, "RSS grew by %d KiB for %d slow DATA clients (%d bytes)"
          % (grown, len(socks), sent))
    delivered_ok(send_one(d))
    print("slowloris: %d bytes in DATA from %d clients, RSS +%d KiB" % (sent, len(socks), grown))


CASES = {name[5:]: fn for name, fn in list(globals().items()) if name.startswith("case_")}

if __name__ == "__main__":
    main(CASES)
