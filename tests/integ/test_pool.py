#!/usr/bin/python3
"""Integration cases: the per-relay connection pool (SPEC sections 1 and 2):
session reuse and its limits (max_connections, max_messages, max_age,
idle_timeout, keepalive, min_idle, max_waiters, wait_timeout), RSET between
transactions, dropping broken sessions, host failover and TLS resumption.
Counts come from the fake server's transcript.  Usage: test_pool.py CASE"""

import threading
import time

from mpharness import (MSG, SENDER, check, client_commands, delivered_ok, dot_stuff,
                       free_port, main, send_one, temp_failed, wait_for)

AUTH_SCRIPT = "auth PLAIN LOGIN\nuser alice s3cret\n"


# ---- reading the transcript ------------------------------------------------------


def transcript(up):
    return "\n".join(up.log_lines())


def star_events(up, prefix, conn=None):
    """The `*` events whose text starts with prefix, as (conn, text)."""
    return [(e[0], e[2]) for e in up.events(conn) if e[1] == "*" and e[2].startswith(prefix)]


def connections(up):
    """Connection numbers, in the order the server accepted them."""
    return [c for c, _ in star_events(up, "connect ")]


def commands(up, conn, verb=None):
    """Command lines one connection received, optionally only one verb."""
    out = [e[2] for e in up.events(conn) if e[1] == "C"]
    if verb:
        out = [c for c in out if c.split(" ", 1)[0].upper() == verb]
    return out


def stored_on(up):
    """{message number: connection} for every message the server accepted."""
    out = {}
    for c, text in star_events(up, "message n="):
        out[int(text.split()[1][2:])] = c
    return out


def conn_of(up, marker):
    """The connection that carried the stored message whose data holds marker."""
    on = stored_on(up)
    hits = [on[m.n] for m in up.messages() if marker.encode() in m.eml and m.n in on]
    check(len(hits) == 1, "message %r stored %d times:\n%s" % (marker, len(hits), transcript(up)))
    return hits[0]


def max_open(up):
    """Most connections open at once, from the connect/close events in order."""
    open_now = peak = 0
    for e in up.events():
        if e[1] != "*":
            continue
        if e[2].startswith("connect "):
            open_now += 1
            peak = max(peak, open_now)
        elif e[2] == "close":
            open_now -= 1
    return peak


def body(marker):
    return MSG.replace(b"Subject: test", b"Subject: " + marker.encode())


def in_thread(fn, *args):
    """Run fn(*args) in a thread; .result / .error once joined."""
    box = {}

    def run():
        try:
            box["result"] = fn(*args)
        except BaseException as e:  # re-raised in the test's own thread
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def join(timeout=60):
        t.join(timeout)
        check(not t.is_alive(), "client thread still running after %ds" % timeout)
        if "error" in box:
            raise box["error"]
        return box.get("result")

    t.finish = join
    return t


def timed_send(d, marker):
    """(Result, seconds from the end of the data to the last reply)."""
    with d.lmtp() as c:
        c.sendall(b"MAIL FROM:<%s>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n" % SENDER.encode())
        mail, rcpt, data = c.reply(), c.reply(), c.reply()
        check((mail.code, rcpt.code, data.code) == (250, 250, 354),
              "transaction refused: %r %r %r" % (mail, rcpt, data))
        c.sendall(dot_stuff(body(marker)))
        t0 = time.monotonic()
        r = c.reply()
        return r, time.monotonic() - t0


def ready_sessions(d):
    return d.log().count(" ready tls=")


# ---- reuse and counting -------------------------------------------------------------


def case_one_connection_100_messages(s):
    # The point of the daemon: one TCP+TLS+AUTH session carries everything.
    up = s.fakesmtp(AUTH_SCRIPT, tls="starttls")
    d = s.daemon(s.relay(up.port, options=("extended", "secure"), user="alice",
                         pool={"max_connections": 1}))
    with d.lmtp() as c:
        for i in range(100):
            r = c.send(SENDER, ["bob@example.test"], body("m%03d" % i))
            delivered_ok(r)
    check(len(up.messages()) == 100, "expected 100 messages upstream, got %d"
          % len(up.messages()))
    check(connections(up) == [1], "expected exactly one connection: %r" % connections(up))
    auths = star_events(up, "auth ok")
    check(len(auths) == 1, "expected exactly one AUTH, got %r" % auths)
    check(len(commands(up, 1, "MAIL")) == 100, "MAIL count %d" % len(commands(up, 1, "MAIL")))
    check(not commands(up, 1, "RSET"), "RSET between clean transactions: %r"
          % commands(up, 1, "RSET"))
    check(set(stored_on(up).values()) == {1}, "messages on other connections")


def case_max_messages_10(s):
    up = s.fakesmtp("")
    d = s.daemon(s.relay(up.port, pool={"max_connections": 1, "max_messages": 10}))
    with d.lmtp() as c:
        for i in range(100):
            delivered_ok(c.send(SENDER, ["bob@example.test"], body("m%03d" % i)))
    conns = connections(up)
    check(len(conns) == 10, "100 messages with max_messages=10 used %d connections: %r"
          % (len(conns), conns))
    per_conn = {}
    for n, c in stored_on(up).items():
        per_conn[c] = per_conn.get(c, 0) + 1
    check(sorted(per_conn.values()) == [10] * 10, "messages per connection: %r" % per_conn)
    # A full session is closed politely, not just dropped.
    wait_for(lambda: len(star_events(up, "close")) >= 9, 10, "the full sessions to close")
    for c in conns[:-1]:
        check(commands(up, c, "QUIT"), "connection %d closed without QUIT" % c)


def case_concurrent_50_clients_4_max(s):
    # A little delay at the dot keeps sessions busy so that clients really wait.
    up = s.fakesmtp("on dot delay 50\n")
    d = s.daemon(s.relay(up.port, timeout=20, pool={"max_connections": 4}))
    start = threading.Event()

    def client(i):
        start.wait()
        with d.lmtp(timeout=60) as c:
            return c.send(SENDER, ["bob@example.test"], body("c%02d" % i))

    threads = [in_thread(client, i) for i in range(50)]
    start.set()
    results = [t.finish(90) for t in threads]
    for i, r in enumerate(results):
        check(r.data.code == 354 and [x.code for x in r.results] == [250],
              "client %d: %r" % (i, r))
    check(len(up.messages()) == 50, "expected 50 messages upstream, got %d" % len(up.messages()))
    peak = max_open(up)
    check(peak <= 4, "%d connections open at once with max_connections=4:\n%s"
          % (peak, transcript(up)))
    check(peak >= 2, "50 concurrent clients never used more than one session")
    check(len(connections(up)) <= 4, "sessions churned: %d connections" % len(connections(up)))


# ---- idle sessions ----------------------------------------------------------------------


def case_idle_timeout_quit(s):
    up = s.fakesmtp("")
    d = s.daemon(s.relay(up.port, pool={"idle_timeout": 1, "keepalive": 0}))
    delivered_ok(send_one(d))
    t0 = time.monotonic()
    wait_for(lambda: commands(up, 1, "QUIT"), 6, "QUIT after idle_timeout=1:\n" + transcript(up))
    took = time.monotonic() - t0
    check(took >= 0.5, "idle session closed after %.1fs with idle_timeout=1" % took)
    up.wait_log("1 * close", timeout=5)
    evs = [e[2] for e in up.events(1)]
    check(evs[-1] == "close" and "QUIT" in evs[-3:], "QUIT then close expected: %r" % evs[-4:])
    # The pool is empty now; the next message opens a new session.
    delivered_ok(send_one(d))
    check(connections(up) == [1, 2], "connections: %r" % connections(up))


def case_keepalive_noop(s):
    up = s.fakesmtp("")
    d = s.daemon(s.relay(up.port, pool={"keepalive": 1, "idle_timeout": 10}))
    delivered_ok(send_one(d, body=body("first")))
    t0 = time.monotonic()
    wait_for(lambda: len(commands(up, 1, "NOOP")) >= 2, 8,
             "two keepalive NOOPs:\n" + transcript(up))
    took = time.monotonic() - t0
    check(took < 4, "two NOOPs with keepalive=1 took %.1fs" % took)
    check(not commands(up, 1, "QUIT"), "session closed while kept alive")
    delivered_ok(send_one(d, body=body("second")))
    check(connections(up) == [1], "keepalive session not reused: %r" % connections(up))
    check(conn_of(up, "second") == 1, "second message not on the kept-alive session")


def case_server_closes_idle(s):
    # The server gives up on the idle session (421 then close); the daemon
    # must notice it then, not when the next message tries to use it.
    up = s.fakesmtp("idle 1\n")
    d = s.daemon(s.relay(up.port, pool={"keepalive": 0}))
    delivered_ok(send_one(d, body=body("first")))
    up.wait_log("1 P S: 421", timeout=10)
    # Dropped when the 421 arrives, with nothing to send.
    d.wait_log("state=idle error=", timeout=5)
    delivered_ok(send_one(d, body=body("second")))
    check(connections(up) == [1, 2], "connections: %r" % connections(up))
    check(conn_of(up, "second") == 2, "second message not on a new session")
    verbs = [x.split(" ", 1)[0].upper() for x in commands(up, 1)]
    check(verbs == ["EHLO", "MAIL", "RCPT", "DATA"], "commands on connection 1: %r" % verbs)


def case_server_drops_during_keepalive(s):
    # The connection dies under the keepalive NOOP: no message may notice.
    up = s.fakesmtp("on noop #1 drop\n")
    d = s.daemon(s.relay(up.port, pool={"keepalive": 1, "idle_timeout": 30}))
    delivered_ok(send_one(d, body=body("first")))
    wait_for(lambda: commands(up, 1, "NOOP"), 8, "the keepalive NOOP")
    up.wait_log("1 * close", timeout=5)
    delivered_ok(send_one(d, body=body("second")))
    check(conn_of(up, "second") == 2, "second message not on a new session:\n" + transcript(up))


def case_min_idle_two(s):
    up = s.fakesmtp("")
    d = s.daemon(s.relay(up.port, pool={"min_idle": 2, "max_connections": 4,
                                         "idle_timeout": 1, "keepalive": 0}))
    wait_for(lambda: len(commands(up, 1, "EHLO")) == 1 and len(commands(up, 2, "EHLO")) == 1,
             10, "two warm sessions before any message:\n" + transcript(up))
    wait_for(lambda: ready_sessions(d) >= 2, 5, "both sessions ready:\n" + d.log())
    check(not up.messages(), "messages before any was submitted")
    # Kept open although idle_timeout=1 has long passed.
    time.sleep(2.5)
    check(connections(up) == [1, 2], "min_idle sessions reopened or extra: %r"
          % connections(up))
    check(not star_events(up, "close") and not [c for c in (1, 2) if commands(up, c, "QUIT")],
          "a min_idle session was closed:\n" + transcript(up))
    delivered_ok(send_one(d))
    check(connections(up) == [1, 2], "the message did not use a warm session: %r"
          % connections(up))


def case_mru_idle(s):
    # Two warm sessions.  The first message is held at its dot while a second
    # one goes out on the other session; the held one finishes last, so it is
    # the most recently used and must carry the next messages.
    up = s.fakesmtp("on dot match slow delay 1500\n")
    d = s.daemon(s.relay(up.port, timeout=10, pool={"min_idle": 2, "max_connections": 2}))
    wait_for(lambda: ready_sessions(d) >= 2, 10, "two warm sessions:\n" + d.log())
    slow = in_thread(send_one, d, ("bob@example.test",), body("slow"))
    wait_for(lambda: any(commands(up, c, "DATA") for c in (1, 2)), 10, "the slow DATA")
    delivered_ok(send_one(d, body=body("fast")))
    delivered_ok(slow.finish(30))
    c_slow, c_fast = conn_of(up, "slow"), conn_of(up, "fast")
    check(c_slow != c_fast, "both on one session?\n" + transcript(up))
    delivered_ok(send_one(d, body=body("next1")))
    delivered_ok(send_one(d, body=body("next2")))
    check(conn_of(up, "next1") == c_slow and conn_of(up, "next2") == c_slow,
          "not most-recently-used first: slow=%d fast=%d next1=%d next2=%d"
          % (c_slow, c_fast, conn_of(up, "next1"), conn_of(up, "next2")))
    check(connections(up) == [1, 2], "connections: %r" % connections(up))


def case_max_age(s):
    up = s.fakesmtp("")
    d = s.daemon(s.relay(up.port, pool={"max_age": 2, "idle_timeout": 60, "keepalive": 0}))
    delivered_ok(send_one(d, body=body("a1")))
    time.sleep(3)
    delivered_ok(send_one(d, body=body("a2")))
    check(conn_of(up, "a1") != conn_of(up, "a2"), "messages 3s apart on one session with "
          "max_age=2:\n" + transcript(up))
    check(commands(up, conn_of(up, "a1"), "QUIT"), "aged session not closed with QUIT")
    # Busy all the time: the age limit still ends the session between messages.
    first = conn_of(up, "a2")
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < 3.5:
        delivered_ok(send_one(d, body=body("b%03d" % i)))
        i += 1
        time.sleep(0.1)
    used = {conn_of(up, "b%03d" % k) for k in range(i)} | {first}
    check(len(used) >= 2, "a busy session outlived max_age=2 (3.5s, %d messages)" % i)


# ---- RSET and broken sessions ---------------------------------------------------------


def case_rset_after_failure(s):
    up = s.fakesmtp("on mail #1 reply 550 5.7.1 sender refused\n")
    d = s.daemon(s.relay(up.port, pool={"max_connections": 1}))
    with d.lmtp() as c:
        r = c.send(SENDER, ["bob@example.test"], MSG)
        check(r.mail.code == 550 or [x.code for x in r.results] == [550],
              "first transaction not refused: %r" % r)
        delivered_ok(c.send(SENDER, ["bob@example.test"], MSG))
        delivered_ok(c.send(SENDER, ["bob@example.test"], MSG))
    check(connections(up) == [1], "connections: %r" % connections(up))
    verbs = [x.split(" ", 1)[0].upper() for x in commands(up, 1)]
    txn = [v for v in verbs if v in ("MAIL", "RSET")]
    check(txn == ["MAIL", "RSET", "MAIL", "MAIL"],
          "expected RSET only after the failed transaction: %r" % verbs)


def case_protocol_error_not_reused(s):
    # Message 2 gets a malformed reply to MAIL: that session is finished.
    up = s.fakesmtp("on mail #2 raw 2a0 ok\\r\\n\n")
    d = s.daemon(s.relay(up.port, pool={"max_connections": 1}))
    delivered_ok(send_one(d, body=body("first")))
    r = send_one(d, body=body("second"))
    # Failing before the dot, it may be retried on a fresh session; either
    # way the client never gets a 250 it should not have.
    if not (r.results and r.results[0].code == 250):
        temp_failed(r)
    delivered_ok(send_one(d, body=body("third")))
    check(conn_of(up, "first") == 1, "first message not on connection 1")
    third = conn_of(up, "third")
    check(third != 1, "the session that sent garbage was reused:\n" + transcript(up))
    after = commands(up, 1)[[i for i, x in enumerate(commands(up, 1))
                             if x.upper().startswith("MAIL")][1] + 1:]
    check(all(x.split(" ", 1)[0].upper() in ("RCPT", "DATA", "QUIT") for x in after),
          "commands on the broken session after the garbage: %r" % after)
    up.wait_log("1 * close", timeout=5)


def case_stale_session_retry(s):
    # A reused, authenticated session dies when the next message starts on
    # it: the message goes out again on a fresh session and the client never
    # knows.  (A fresh session failing is covered in test_upstream.py.)
    up = s.fakesmtp(AUTH_SCRIPT + "on mail #2 drop\n", tls="starttls")
    d = s.daemon(s.relay(up.port, options=("extended", "secure"), user="alice",
                         pool={"max_connections": 1}))
    with d.lmtp() as c:
        delivered_ok(c.send(SENDER, ["bob@example.test"], body("first")))
        delivered_ok(c.send(SENDER, ["bob@example.test"], body("second")))
        delivered_ok(c.send(SENDER, ["bob@example.test"], body("third")))
    check(connections(up) == [1, 2], "connections: %r" % connections(up))
    check(len(star_events(up, "auth ok")) == 2, "AUTH count: %r" % star_events(up, "auth ok"))
    check([conn_of(up, m) for m in ("first", "second", "third")] == [1, 2, 2],
          "messages on connections:\n" + transcript(up))
    check(len(up.messages()) == 3, "messages upstream: %r" % up.messages())


# ---- waiting for a session ----------------------------------------------------------------


def case_wait_timeout(s):
    up = s.fakesmtp("on dot #1 delay 4000\n")
    d = s.daemon(s.relay(up.port, timeout=10, pool={"max_connections": 1, "wait_timeout": 1}))
    busy = in_thread(send_one, d, ("bob@example.test",), body("busy"))
    up.wait_log("1 P C: DATA", timeout=10)
    r, took = timed_send(d, "waiter")
    check(r.code // 100 == 4, "waiting message got %r, expected a 4xx" % r)
    check(took < 3, "4xx after %.1fs with wait_timeout=1" % took)
    check(took >= 0.5, "4xx after %.1fs, before wait_timeout=1" % took)
    delivered_ok(busy.finish(30))
    check(len(commands(up, None, "MAIL")) == 1, "the timed-out message went upstream anyway")
    check(connections(up) == [1], "max_connections=1 exceeded: %r" % connections(up))


def case_max_waiters(s):
    up = s.fakesmtp("on dot #1 delay 3000\n")
    d = s.daemon(s.relay(up.port, timeout=10, pool={"max_connections": 1, "max_waiters": 1,
                                                      "wait_timeout": 30}))
    busy = in_thread(send_one, d, ("bob@example.test",), body("busy"))
    up.wait_log("1 P C: DATA", timeout=10)
    waiter = in_thread(timed_send, d, "waiter")
    time.sleep(0.5)  # lets the daemon queue it; the checks below hold either way
    extra = in_thread(timed_send, d, "extra")
    (rw, tw), (rx, tx) = waiter.finish(30), extra.finish(30)
    delivered_ok(busy.finish(30))
    codes = sorted([rw.code, rx.code])
    check(codes[0] == 250 and codes[1] // 100 == 4,
          "one waiter should be delivered and the one over max_waiters=1 refused: "
          "waiter=%r extra=%r" % (rw, rx))
    refused_t = tx if rx.code != 250 else tw
    check(refused_t < 1.5, "the refusal over max_waiters took %.1fs" % refused_t)
    check(rx.code // 100 == 4, "the third message was not the one refused (waiter=%r extra=%r)"
          % (rw, rx))
    check(len(up.messages()) == 2, "expected 2 messages upstream, got %d" % len(up.messages()))


# ---- hosts and TLS ----------------------------------------------------------------------


def case_failover_second_host(s):
    dead = free_port()
    up = s.fakesmtp("")
    d = s.daemon(s.relay(None, hosts=["127.0.0.1:%d" % dead, "127.0.0.1:%d" % up.port],
                         pool={"max_messages": 1}))
    delivered_ok(send_one(d, body=body("one")))
    tried = "host=127.0.0.1:%d address=" % dead
    check(d.log().count(tried) == 1, "first host tried %d times:\n%s"
          % (d.log().count(tried), d.log()))
    # max_messages=1: the next message needs a new session, which must not
    # try the failed host again during its back-off.
    delivered_ok(send_one(d, body=body("two")))
    delivered_ok(send_one(d, body=body("three")))
    check(d.log().count(tried) == 1, "the failed host was tried again during its back-off:\n"
          + d.log())
    check(len(connections(up)) == 3, "connections to the second host: %r" % connections(up))


def case_failover_greeting_4xx(s):
    busy = s.fakesmtp("on connect reply 421 4.3.2 too busy\n")
    later = s.fakesmtp("on connect reply 450 4.3.2 try later\n")
    up = s.fakesmtp("")
    d = s.daemon(s.relay(None, hosts=["127.0.0.1:%d" % x.port for x in (busy, later, up)]))
    delivered_ok(send_one(d))
    check(len(connections(busy)) == 1 and len(connections(later)) == 1,
          "each failing host tried once: %r %r" % (connections(busy), connections(later)))
    check(not client_commands(busy) and not client_commands(later),
          "commands sent after a 4xx greeting")
    check(len(up.messages()) == 1, "message not delivered via the third host")


def _resumption(s, tls, options, script=""):
    up = s.fakesmtp(script, tls=tls)
    d = s.daemon(s.relay(up.port, options=options, host="localhost",
                         pool={"max_messages": 1}, **({"user": "alice"} if script else {})))
    delivered_ok(send_one(d, body=body("one")))
    delivered_ok(send_one(d, body=body("two")))
    delivered_ok(send_one(d, body=body("three")))
    tls_ev = star_events(up, "tls version=")
    check(len(tls_ev) == 3, "expected three TLS sessions: %r" % tls_ev)
    check(tls_ev[0][1].endswith("resumed=0"), "first session resumed? %r" % (tls_ev[0],))
    check(all(t.endswith("resumed=1") for _, t in tls_ev[1:]),
          "reconnects did not resume the TLS session: %r" % tls_ev)


def case_tls_resumption(s):
    _resumption(s, "implicit", ("extended", "secure_implicit"))


def case_tls_resumption_starttls_12(s):
    # TLS 1.2 session IDs over STARTTLS, with AUTH again on each session.
    _resumption(s, "starttls", ("extended", "secure"),
                AUTH_SCRIPT + "tls-max-version 1.2\n")


CASES = {name[5:]: fn for name, fn in list(globals().items()) if name.startswith("case_")}
CASES = {"pool_" + k: v for k, v in CASES.items()}

if __name__ == "__main__":
    main(CASES)
