#!/usr/bin/python3
"""Randomised crash consistency of queue mode: rounds of (submit a stream of
messages, 1 KB to 2 MB, over two connections -> SIGKILL the daemon at a
random moment, often in the middle of DATA or of the spool commit right
after the final dot -> restart on the same spool -> let the queue drain).

Invariant checked after each round:
  acknowledged (250 queued)  => delivered once, or twice when the kill hit
                                the window between the upstream's 250 and
                                the spool recording it; never lost;
  every delivered message    => byte-identical to what was sent (never
                                truncated or corrupt), acknowledged or not;
  the spool                  => nothing in corrupt/, failed/ or tmp/.

Usage: crash_rounds.py [--rounds N] [--seed S]; exit 0 when the invariant
held in every round.  Environment as for the integration tests
(MAILPOOL_BIN_DIR, MAILPOOL_SRC_DIR)."""

import argparse
import os
import random
import re
import shutil
import sys
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integ"))

from mpharness import LMTP, SENDER, ConnectionClosed, Scope, TestFailure, check  # noqa: E402
from test_queue import QUEUED_RE, kill9, listing, qdaemon  # noqa: E402

TAG_RE = re.compile(rb"Message-ID: <(r\d+-[ab]\d+)@client\.test>")
BIG = 256 * 1024


def make_body(tag, size):
    """A message of about `size` bytes whose lines never start with a dot,
    so its wire form is the body plus the final dot.  Every line names the
    message and its number: a cut or a splice shows."""
    head = (b"From: alice@client.test\r\nTo: bob@example.test\r\n"
            b"Message-ID: <" + tag.encode() + b"@client.test>\r\n"
            b"Subject: crash round " + tag.encode() + b"\r\n\r\n")
    line_len = len(tag) + 16
    n = max(1, (size - len(head)) // line_len)
    return head + b"".join(b"%s line %08d\r\n" % (tag.encode(), i) for i in range(n))


class Submitter:
    """Sends distinct queued messages one after another over its own
    connection until told to stop or the daemon goes away."""

    def __init__(self, name, round_, socket_path, rng, book, mid_data, after_dot):
        self.name = name
        self.round = round_
        self.path = socket_path
        self.rng = rng
        self.book = book
        self.mid_data = mid_data
        self.after_dot = after_dot
        self.stop = threading.Event()
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            c = LMTP(self.path, timeout=20)
        except ConnectionClosed:
            return  # killed between accept and greeting (an early kill)
        except (OSError, TestFailure) as e:
            self.error = e
            return
        n = 0
        try:
            while not self.stop.is_set():
                n += 1
                tag = "r%03d-%s%05d" % (self.round, self.name, n)
                size = int(1024 * 2 ** self.rng.uniform(0, 11))  # 1 KB .. 2 MB, log-uniform
                msg = make_body(tag, size)
                cmds = ("MAIL FROM:<%s> XMODE=queue\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
                        % SENDER).encode()
                c.sendall(cmds)
                replies = [c.reply() for _ in range(3)]
                if [r.code for r in replies] != [250, 250, 354]:
                    raise TestFailure("transaction refused: %r" % replies)
                with self.book.lock:
                    self.book.sent[tag] = msg
                wire = msg + b".\r\n"
                if len(wire) >= BIG:
                    half = len(wire) // 2
                    c.sendall(wire[:half])
                    self.mid_data.set()
                    c.sendall(wire[half:])
                    self.after_dot.set()
                else:
                    c.sendall(wire)
                r = c.reply()
                if r.code == 250:
                    m = QUEUED_RE.match(r.text)
                    if not m:
                        raise TestFailure("bad queued reply %r" % r)
                    with self.book.lock:
                        self.book.acked[tag] = m.group(1)
                elif r.code // 100 != 4:
                    raise TestFailure("message %s got %r" % (tag, r))
        except (OSError, ConnectionClosed):
            pass  # the daemon was killed under us
        except Exception as e:  # reported by the main thread
            if not self.stop.is_set():
                self.error = e
        finally:
            c.close()


class Book:
    def __init__(self):
        self.lock = threading.Lock()
        self.sent = {}   # tag -> body, every message whose DATA was started
        self.acked = {}  # tag -> queue id


def count_deliveries(up, book, seen):
    """Per tag, how many times the sink got it; checks every body."""
    bad = []
    for m in up.messages():
        if m.n in seen:
            continue
        seen.add(m.n)
        mm = TAG_RE.search(m.eml[:4096])
        tag = mm.group(1).decode() if mm else None
        if tag is None or m.eml != book.sent.get(tag):
            bad.append((tag, len(m.eml), len(book.sent.get(tag, b""))))
            continue
        book.delivered[tag] = book.delivered.get(tag, 0) + 1
    return bad


def one_round(s, r, rng, state):
    book = Book()
    book.delivered = {}
    d = state["daemon"]
    mid_data = threading.Event()
    after_dot = threading.Event()
    subs = [Submitter(name, r, d.socket, random.Random(rng.random()), book, mid_data,
                      after_dot) for name in ("a", "b")]
    for sub in subs:
        sub.thread.start()
    how = rng.choice(("time", "time", "mid-data", "after-dot"))
    if how == "time":
        time.sleep(rng.uniform(0.02, 1.2))
    else:
        (mid_data if how == "mid-data" else after_dot).wait(4.0)
        time.sleep(rng.uniform(0.0, 0.03 if how == "after-dot" else 0.01))
    kill9(s, d)
    for sub in subs:
        sub.stop.set()
    for sub in subs:
        sub.thread.join(30)
        check(not sub.thread.is_alive(), "submitter %s hangs" % sub.name)
        check(sub.error is None, "submitter %s: %r" % (sub.name, sub.error))
    spool = state["spool"]
    d = qdaemon(s, state["up"].port, spool_dir=spool)
    d.spool = spool
    state["daemon"] = d
    deadline = time.monotonic() + 60
    while listing(d, "queue") or listing(d, "tmp"):
        check(time.monotonic() < deadline, "round %d: the queue does not drain (queue/ %r)\n%s"
              % (r, listing(d, "queue"), d.log()[-4000:]))
        check(d.alive(), "round %d: the daemon died:\n%s" % (r, d.log()[-4000:]))
        time.sleep(0.05)
    # The spool records a delivery after the upstream's 250: let stragglers land.
    time.sleep(0.3)
    bad = count_deliveries(state["up"], book, state["seen"])
    corrupt = listing(d, "corrupt") + listing(d, "failed") + listing(d, "tmp")
    acked = set(book.acked)
    st = {
        "started": len(book.sent),
        "acknowledged": len(acked),
        "delivered": len(book.delivered),
        "duplicates": sum(n - 1 for n in book.delivered.values()),
        "over_twice": sum(1 for n in book.delivered.values() if n > 2),
        "lost": len(acked - set(book.delivered)),
        "truncated": len(bad),
        "unacknowledged_delivered": len(set(book.delivered) - acked),
        "corrupt_spool_files": len(corrupt) - state["corrupt_before"],
    }
    state["corrupt_before"] = len(corrupt)
    details = []
    if st["lost"]:
        details.append("lost: %r" % sorted(acked - set(book.delivered)))
    if bad:
        details.append("truncated/corrupt (tag, got, sent): %r" % bad)
    if st["corrupt_spool_files"]:
        details.append("spool leftovers: %r" % corrupt)
    if st["over_twice"]:
        details.append("delivered more than twice: %r"
                       % sorted(t for t, n in book.delivered.items() if n > 2))
    return how, st, details


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
    print("crash_rounds: --rounds %d --seed %d" % (args.rounds, seed), flush=True)
    rng = random.Random(seed)
    s = Scope("crash-rounds")
    keys = ("started", "acknowledged", "delivered", "duplicates", "lost", "truncated",
            "unacknowledged_delivered", "corrupt_spool_files", "over_twice")
    total = dict.fromkeys(keys, 0)
    failed = []
    ok = False
    try:
        up = s.fakesmtp("")
        spool = s.subdir("spool")
        d = qdaemon(s, up.port, spool_dir=spool)
        state = {"up": up, "spool": spool, "daemon": d, "seen": set(), "corrupt_before": 0}
        for r in range(1, args.rounds + 1):
            how, st, details = one_round(s, r, rng, state)
            for k in keys:
                total[k] += st[k]
            print("round %3d kill=%-9s " % (r, how) +
                  " ".join("%s=%d" % (k, st[k]) for k in keys[:-1]), flush=True)
            for line in details:
                print("  " + line, flush=True)
            if details:
                failed.append(r)
        state["daemon"].stop()
        s.daemons.clear()
        ok = not failed
    except Exception:
        traceback.print_exc()
    errors = s.close()
    for e in errors:
        ok = False
        sys.stderr.write("cleanup: %s\n" % e)
    print("total: rounds=%d " % args.rounds + " ".join("%s=%d" % (k, total[k]) for k in keys))
    if failed:
        print("invariant broken in rounds %r (replay with --seed %d)" % (failed, seed))
    if ok and not args.keep:
        shutil.rmtree(s.dir, ignore_errors=True)
    else:
        sys.stderr.write("files kept in %s\n" % s.dir)
    print("crash_rounds: %s" % ("ok" if ok else "FAILED"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
