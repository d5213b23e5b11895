#!/usr/bin/python3
"""Integration cases: per-relay budgets (rate.messages_per_second and
messages_per_minute, rate.max_recipients and the 452 "too many recipients"
split, limits.max_logins_per_minute, limits.max_messages), in relay and
queue mode, observed at the fake upstream.  Usage: test_budgets.py CASE"""

import re
import subprocess
import threading
import time

from mpharness import (MSG, binary, check, client_commands, expect_codes, main, send_one,
                       wait_for)


def budget_relay(s, port, rate=None, limits=None, pool=None, **kw):
    """A relay block with `rate` and `limits` dicts as config groups."""
    extra = kw.pop("extra", "")
    for name, group in (("rate", rate), ("limits", limits)):
        if group:
            extra += " %s = { %s };" % (name, " ".join("%s = %d;" % kv for kv in group.items()))
    return s.relay(port, pool=pool, extra=extra, **kw)


def transactions(up):
    """The RCPT TO addresses of each MAIL transaction the server saw, in order."""
    out = []
    for line in client_commands(up):
        verb = line.split(" ", 1)[0].upper()
        if verb == "MAIL":
            out.append([])
        elif verb == "RCPT" and out:
            m = re.match(r"RCPT TO:<([^>]*)>", line, re.I)
            out[-1].append(m.group(1) if m else line)
    return out


class Watcher:
    """Polls the fake server's transcript and stamps each new line with the
    monotonic time it was first seen (within ~5 ms)."""

    def __init__(self, up):
        self.up = up
        self.timed = []
        self.stop = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        seen = 0
        while True:
            last = self.stop  # one more read after close() asked to stop
            try:
                with open(self.up.log_path, "rb") as f:
                    f.seek(seen)
                    data = f.read()
            except FileNotFoundError:
                data = b""
            now = time.monotonic()
            done = data.rfind(b"\n") + 1  # complete lines only
            for line in data[:done].decode("utf-8", "replace").splitlines():
                self.timed.append((now, line))
            seen += done
            if last:
                return
            time.sleep(0.005)

    def close(self):
        self.stop = True
        self.thread.join()


def send_parallel(d, n, rcpts=("bob@example.test",)):
    """n messages at once, each on its own LMTP connection; returns the Results in order."""
    results = [None] * n
    errors = []

    def one(i):
        try:
            results[i] = send_one(d, rcpts=rcpts)
        except Exception as e:  # reported below, in the main thread
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    check(not errors, "clients failed: %r" % errors)
    return results


# ---- rate ---------------------------------------------------------------------


def case_budget_rate_per_second(s):
    """15 messages at once at 5/s: none refused, spread over >= 2.5 s, and no
    calendar second at the server sees more than the budget plus one."""
    up = s.fakesmtp("")
    w = Watcher(up)
    s.on_cleanup(w.close)
    d = s.daemon(budget_relay(s, up.port, rate={"messages_per_second": 5},
                              pool={"max_connections": 4}))
    t0 = time.monotonic()
    results = send_parallel(d, 15)
    elapsed = time.monotonic() - t0
    for r in results:
        expect_codes(r.results, [250])
    wait_for(lambda: len(up.messages()) == 15, 10, "15 messages at the server")
    w.close()
    starts = sorted(t for t, line in w.timed if " C: MAIL FROM:" in line)
    check(len(starts) == 15, "MAIL commands seen: %d" % len(starts))
    span = starts[-1] - starts[0]
    check(span >= 2.5, "15 messages at 5/s went out within %.2f s" % span)
    check(elapsed >= 2.5, "clients done after %.2f s" % elapsed)
    # Any window of one second: at most 5 + 1 (the bucket holds one token).
    for i, t in enumerate(starts):
        inside = [x for x in starts[i:] if x - t < 1.0 - 0.05]
        check(len(inside) <= 6, "%d messages within one second from %.2f: %r"
              % (len(inside), t - starts[0], [round(x - starts[0], 3) for x in starts]))
    # Spaced at least ~1/5 s apart (the watcher's resolution is a few ms).
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    check(min(gaps) >= 0.15, "gaps between messages: %r" % [round(g, 3) for g in gaps])


def case_budget_rate_per_minute_wait_timeout(s):
    """messages_per_minute = 2: the third message waits for a token; with
    wait_timeout = 2 it gets a 4xx naming the rate limit after ~2 s, and it
    was never sent."""
    up = s.fakesmtp("")
    d = s.daemon(budget_relay(s, up.port, rate={"messages_per_minute": 2},
                              pool={"max_connections": 2, "wait_timeout": 2}))
    r1 = send_one(d)
    expect_codes(r1.results, [250])
    t0 = time.monotonic()
    r2 = send_one(d)
    t1 = time.monotonic()
    # The second one needs the bucket's next token: 30 s > wait_timeout.
    check(r2.results[0].code // 100 == 4, "second message: %r" % r2.results)
    check("rate" in r2.results[0].text.lower(), "reply does not name the rate: %r" % r2.results)
    check(1.5 <= t1 - t0 <= 6, "the 4xx came after %.2f s, want ~2 s" % (t1 - t0))
    check(len(up.messages()) == 1, "messages at the server: %r" % up.messages())
    check(len(transactions(up)) == 1, "transactions: %r" % transactions(up))


def case_budget_rate_waits_not_refused(s):
    """messages_per_minute = 60 (one a second): three messages sent together
    all arrive, about a second apart, none refused."""
    up = s.fakesmtp("")
    w = Watcher(up)
    s.on_cleanup(w.close)
    d = s.daemon(budget_relay(s, up.port, rate={"messages_per_minute": 60}))
    for r in send_parallel(d, 3):
        expect_codes(r.results, [250])
    w.close()
    starts = sorted(t for t, line in w.timed if " C: MAIL FROM:" in line)
    check(len(starts) == 3, "MAIL commands: %d" % len(starts))
    check(starts[2] - starts[0] >= 1.8, "3 messages at 60/min within %.2f s"
          % (starts[2] - starts[0]))


# ---- max_recipients and 452 ---------------------------------------------------------


RCPTS5 = ["r%d@example.test" % i for i in range(1, 6)]


def case_budget_max_recipients_split(s):
    """max_recipients = 2, 5 recipients (one refused): 3 transactions of 2, 2
    and 1 on one session, and 5 LMTP replies in recipient order."""
    up = s.fakesmtp("on rcpt match r4@ reply 550 5.1.1 no such user r4\n")
    d = s.daemon(budget_relay(s, up.port, rate={"max_recipients": 2}))
    r = send_one(d, rcpts=RCPTS5)
    expect_codes(r.results, [250, 250, 250, 550, 250])
    check("r4" in r.results[3].text, "r4's reply: %r" % r.results[3])
    tx = transactions(up)
    check(tx == [RCPTS5[0:2], RCPTS5[2:4], RCPTS5[4:5]], "transactions upstream: %r" % tx)
    msgs = up.messages()
    check([m.rcpts for m in msgs] == [RCPTS5[0:2], ["r3@example.test"], ["r5@example.test"]],
          "messages upstream: %r" % msgs)
    check(all(m.eml == MSG for m in msgs), "message bodies differ")
    log = "\n".join(up.log_lines())
    check(log.count("* connect") == 1, "more than one connection:\n" + log)
    d.wait_log("next transaction")


def case_budget_max_recipients_no_pipelining(s):
    """The same split against a server without PIPELINING (one command at a time)."""
    up = s.fakesmtp("ehlo 8BITMIME\nehlo ENHANCEDSTATUSCODES\n")
    d = s.daemon(budget_relay(s, up.port, rate={"max_recipients": 2}))
    r = send_one(d, rcpts=RCPTS5)
    expect_codes(r.results, [250] * 5)
    check(transactions(up) == [RCPTS5[0:2], RCPTS5[2:4], RCPTS5[4:5]],
          "transactions upstream: %r" % transactions(up))


def case_budget_452_splits_rest(s):
    """452 4.5.3 to the 3rd RCPT (pipelined, so the 4th and 5th get 452 too):
    the first transaction delivers to 2, the rest follow on the same session
    in transactions of at most the 2 the server took; every recipient
    delivered exactly once."""
    up = s.fakesmtp("on rcpt #3 reply 452 4.5.3 too many recipients\n"
                    "on rcpt #4 reply 452 4.5.3 too many recipients\n"
                    "on rcpt #5 reply 452 4.5.3 too many recipients\n")
    d = s.daemon(s.relay(up.port))
    r = send_one(d, rcpts=RCPTS5)
    expect_codes(r.results, [250] * 5)
    tx = transactions(up)
    check(tx == [RCPTS5, RCPTS5[2:4], RCPTS5[4:5]], "transactions upstream: %r" % tx)
    msgs = up.messages()
    delivered = [a for m in msgs for a in m.rcpts]
    check(sorted(delivered) == sorted(RCPTS5) and len(delivered) == 5,
          "delivered to %r" % delivered)
    check([m.rcpts for m in msgs] == [RCPTS5[0:2], RCPTS5[2:4], RCPTS5[4:5]],
          "messages: %r" % msgs)
    check("\n".join(up.log_lines()).count("* connect") == 1, "reconnected")


def case_budget_452_single(s):
    """Only the 3rd RCPT gets 452 4.5.3 (the 4th and 5th are taken): a second
    transaction carries just that recipient; replies in order, all 250."""
    up = s.fakesmtp("on rcpt #3 reply 452 4.5.3 too many\n")
    d = s.daemon(s.relay(up.port))
    r = send_one(d, rcpts=RCPTS5)
    expect_codes(r.results, [250] * 5)
    tx = transactions(up)
    check(tx == [RCPTS5, RCPTS5[2:3]], "transactions upstream: %r" % tx)
    check([m.rcpts for m in up.messages()] == [RCPTS5[0:2] + RCPTS5[3:5], RCPTS5[2:3]],
          "messages: %r" % up.messages())


def case_budget_452_no_pipelining(s):
    """Without PIPELINING a 452 4.5.3 stops the RCPTs at once: the rest go in
    the next transaction, which the learned limit (2) splits again."""
    up = s.fakesmtp("ehlo ENHANCEDSTATUSCODES\non rcpt #3 reply 452 4.5.3 too many\n")
    d = s.daemon(s.relay(up.port))
    r = send_one(d, rcpts=RCPTS5)
    expect_codes(r.results, [250] * 5)
    tx = transactions(up)
    check(tx == [RCPTS5[0:3], RCPTS5[2:4], RCPTS5[4:5]], "transactions upstream: %r" % tx)
    check([m.rcpts for m in up.messages()] == [RCPTS5[0:2], RCPTS5[2:4], RCPTS5[4:5]],
          "messages: %r" % up.messages())


def case_budget_452_first_rcpt_is_final(s):
    """A 452 before any recipient was accepted is an ordinary temporary
    failure: no second transaction, no loop."""
    up = s.fakesmtp("on rcpt reply 452 4.5.3 too many recipients\n")
    d = s.daemon(s.relay(up.port))
    r = send_one(d, rcpts=RCPTS5[:2])
    check(r.data.code != 354 or [x.code for x in r.results] == [452, 452],
          "results: %r" % r)
    check(len(transactions(up)) == 1, "transactions: %r" % transactions(up))


def case_budget_split_with_dsn_and_later_failure(s):
    """max_recipients = 2 and the dot of the second transaction refused with
    a 4xx: only its recipients get the 4xx, the others stay delivered."""
    up = s.fakesmtp("on dot #2 reply 451 4.3.0 busy\n")
    d = s.daemon(budget_relay(s, up.port, rate={"max_recipients": 2}))
    r = send_one(d, rcpts=RCPTS5)
    expect_codes(r.results, [250, 250, 451, 451, 250])
    check(len(transactions(up)) == 3, "transactions: %r" % transactions(up))


def case_budget_split_retry_after_drop(s):
    """The session dies before the dot of the second part: the retry on a
    fresh session sends only that part's recipients and the rest."""
    up = s.fakesmtp("on data #2 drop\n")
    d = s.daemon(budget_relay(s, up.port, rate={"max_recipients": 2}))
    r = send_one(d, rcpts=RCPTS5)
    expect_codes(r.results, [250] * 5)
    delivered = [a for m in up.messages() for a in m.rcpts]
    check(sorted(delivered) == sorted(RCPTS5) and len(delivered) == 5,
          "delivered to %r (duplicates?)" % delivered)
    tx = transactions(up)
    check(tx == [RCPTS5[0:2], RCPTS5[2:4], RCPTS5[2:4], RCPTS5[4:5]],
          "transactions upstream: %r" % tx)


def case_budget_queue_split_partial_retry(s):
    """Queue mode, max_recipients = 2: the second part's dot gets a 4xx once;
    only that part's recipients are retried, everyone delivered once."""
    up = s.fakesmtp("on dot #2 reply 451 4.3.0 try later\n")
    d = s.daemon(budget_relay(s, up.port, mode="queue", rate={"max_recipients": 2}),
                 spool={"retry_min": 1, "retry_max": 1})
    r = send_one(d, rcpts=RCPTS5)
    expect_codes(r.results, [250] * 5)
    # The refused part is not stored by the server: 3 messages in all.
    wait_for(lambda: len(up.messages()) >= 3, 20, lambda: "the retry\n" + d.log())
    time.sleep(2.5)  # more than two retry intervals: nothing else is sent
    msgs = up.messages()
    check([m.rcpts for m in msgs] == [RCPTS5[0:2], RCPTS5[4:5], RCPTS5[2:4]],
          "messages upstream: %r" % msgs)
    tx = transactions(up)
    check(tx[3:] == [RCPTS5[2:4]], "the retry carried %r" % tx[3:])
    log = d.log()
    check(log.count("status=deferred") == 2 and log.count("status=sent") == 5, "log:\n" + log)


# ---- limits ---------------------------------------------------------------------


def case_budget_max_logins_per_minute(s):
    """max_logins_per_minute = 2 and the first two sessions closed by the
    server (421 after the dot): the third session waits until the first
    login left the minute; at most 2 AUTHs in any 60 s; every message
    delivered in the end."""
    up = s.fakesmtp("auth PLAIN LOGIN\nauth-before-tls\nuser alice s3cret\n"
                    "on dot #1 reply 421 4.7.0 go away\n"
                    "on dot #2 reply 421 4.7.0 go away\n")
    w = Watcher(up)
    s.on_cleanup(w.close)
    # 421 after the dot: the message is not delivered (outcome unknown, so queue mode
    # retries it); the others need new sessions, which wait for the login budget.
    d = s.daemon(budget_relay(s, up.port, user="alice", ca=None, mode="queue",
                              extra="allow_plaintext_auth = true;",
                              limits={"max_logins_per_minute": 2},
                              pool={"max_connections": 1, "wait_timeout": 90}),
                 spool={"retry_min": 1, "retry_max": 1})
    for i in range(3):
        r = send_one(d)
        expect_codes(r.results, [250])
    d.wait_log("login budget reached", timeout=20)
    wait_for(lambda: len(up.messages()) >= 3, 100, lambda: "3 deliveries\n" + d.log())
    w.close()
    auths = sorted(t for t, line in w.timed if "* auth ok" in line)
    for i, t in enumerate(auths):
        inside = [x for x in auths[i:] if x - t < 59.5]
        check(len(inside) <= 2, "%d logins within a minute: %r"
              % (len(inside), [round(x - auths[0], 1) for x in auths]))
    check(len(auths) >= 3, "logins: %r" % auths)
    check(auths[2] - auths[0] >= 59.5, "third login after %.1f s" % (auths[2] - auths[0]))


def case_budget_limits_max_messages(s):
    """limits.max_messages = 2 (smaller than pool.max_messages): a session
    carries two messages, then a new one is opened."""
    up = s.fakesmtp("")
    d = s.daemon(budget_relay(s, up.port, limits={"max_messages": 2},
                              pool={"max_connections": 1}))
    for _ in range(3):
        expect_codes(send_one(d).results, [250])
    log = "\n".join(up.log_lines())
    check(log.count("* connect") == 2, "connections:\n" + log)
    check(len(up.messages()) == 3, "messages: %r" % up.messages())


def case_budget_config_errors(s):
    """Bad values and unknown keys in rate and limits are config errors with a line."""
    for extra, needle in (("rate = { messages_per_second = -1; };", "messages_per_second"),
                          ("rate = { max_recipient = 2; };", "max_recipient"),
                          ('limits = { max_logins_per_minute = "x"; };',
                           "max_logins_per_minute"),
                          ("rate = 5;", "rate")):
        path = s.subdir("cfg") + "/bad.conf"
        text = s.config(s.relay(2525, extra=extra))
        for mark, value in (("@SOCKET@", "s.sock"), ("@CONTROL@", "c.sock"), ("@SPOOL@", "q")):
            text = text.replace(mark, "/nonexistent/" + value)
        with open(path, "w") as f:
            f.write(text)
        p = subprocess.run([binary("mailpoold"), "--check-config", "-c", path],
                           capture_output=True, text=True, timeout=10)
        check(p.returncode != 0, "accepted %r" % extra)
        check(needle in p.stderr and re.search(r"bad\.conf:\d+:", p.stderr),
              "%r: message %r" % (extra, p.stderr))


CASES = {name[5:]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}

if __name__ == "__main__":
    main(CASES)
