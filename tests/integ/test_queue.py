#!/usr/bin/python3
"""Integration cases: queue mode (durable acceptance, retries with back-off,
per-recipient progress, expiry, RFC 3464 delivery status notifications,
bounce_to, min_free and a full disk, recovery after restart and kill -9,
corrupt and stale spool files).  Usage: test_queue.py CASE"""

import email
import email.policy
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

from mpharness import (LMTP, SENDER, ConnectionClosed, Daemon, TestFailure, check,
                       client_commands, dot_stuff, expect_codes, free_port, main, send_one,
                       wait_for)

# Retries a second apart, so a deferred message is tried again within the case.
FAST = {"retry_min": 1, "retry_max": 1}
QUEUED_RE = re.compile(r"^2\.0\.0 Ok: queued as ([0-9A-Za-z][0-9A-Za-z_-]*)$")
MARK = "upstream-said-this"


def body(tag, extra=b""):
    return (b"From: alice@client.test\r\nTo: bob@example.test\r\n"
            b"Message-ID: <" + tag.encode() + b"@client.test>\r\n"
            b"Subject: queue test " + tag.encode() + b"\r\n\r\n"
            b"Body of " + tag.encode() + b".\r\n.leading dot\r\n" + extra)


def spool_path(d, sub=""):
    return os.path.join(d.spool, sub) if sub else d.spool


def listing(d, sub):
    p = spool_path(d, sub)
    return sorted(os.listdir(p)) if os.path.isdir(p) else []


def qdaemon(s, port, spool=None, spool_dir=None, mode="queue", name="up", relays=(), **kw):
    """mailpoold with a relay `name` in `mode` to 127.0.0.1:port, fast
    retries unless `spool` says otherwise; `spool_dir` shares a spool
    between daemons (restarts); `env` adds environment variables."""
    sp = dict(FAST)
    sp.update(spool or {})
    extra = kw.pop("extra_daemon", "")
    env = kw.pop("env", None)
    if env:
        env = dict(os.environ, **env)
    if spool_dir:
        extra += ' spool_dir = "%s";' % spool_dir
    d = Daemon(s, s.config(s.relay(port, name=name, mode=mode), *relays, spool=sp,
                           extra_daemon=extra, **kw), env=env)
    d.spool = spool_dir or os.path.join(d.dir, "spool")
    return d


def queued_ids(r, n=1):
    """Every recipient got "250 2.0.0 Ok: queued as <ID>", all with the same ID."""
    check(r.mail.code == 250 and r.data.code == 354, "transaction refused: %r" % r)
    expect_codes(r.results, [250] * n)
    ids = set()
    for rep in r.results:
        m = QUEUED_RE.match(rep.text)
        check(m, "not a queued reply: %r" % rep)
        ids.add(m.group(1))
    check(len(ids) == 1, "recipients of one message got different ids: %r" % r.results)
    return ids.pop()


def send_params(c, sender, rcpts, data, mail_params=""):
    """Like LMTP.send, but each recipient is (address, RCPT parameters)."""
    cmds = "MAIL FROM:<%s>%s\r\n" % (sender, (" " + mail_params) if mail_params else "")
    for addr, params in rcpts:
        cmds += "RCPT TO:<%s>%s\r\n" % (addr, (" " + params) if params else "")
    cmds += "DATA\r\n"
    c.sendall(cmds.encode())
    mail = c.reply()
    rr = [c.reply() for _ in rcpts]
    dr = c.reply()
    check(mail.code == 250 and all(x.code == 250 for x in rr) and dr.code == 354,
          "transaction refused: %r %r %r" % (mail, rr, dr))
    c.sendall(dot_stuff(data))
    return [c.reply() for _ in rcpts]


def wait_queue_empty(d, timeout=20.0):
    wait_for(lambda: not listing(d, "queue") and not listing(d, "tmp"), timeout,
             lambda: "an empty queue/ (have %r, tmp/ %r)\n%s"
             % (listing(d, "queue"), listing(d, "tmp"), d.log()))


def transactions(up):
    """The RCPT TO addresses of each MAIL transaction the server saw, in order."""
    out = []
    for line in client_commands(up):
        verb = line.split(" ", 1)[0].upper()
        if verb == "MAIL":
            out.append((line, []))
        elif verb == "RCPT" and out:
            m = re.match(r"RCPT TO:<([^>]*)>", line, re.I)
            out[-1][1].append(m.group(1) if m else line)
    return out


def mail_lines(up):
    return [l for l in client_commands(up) if l.upper().startswith("MAIL")]


def dsns(up):
    return [m for m in up.messages() if m.mail_from == ""]


def parse_dsn(msg):
    """The DSN's structure (RFC 3464): returns (per-message fields,
    [per-recipient fields], original part) after checking the envelope."""
    check(msg.mail_from == "", "DSN not sent from <>: %r" % msg)
    m = email.message_from_bytes(msg.eml, policy=email.policy.compat32)
    check(m.get_content_type() == "multipart/report",
          "DSN content type %r:\n%r" % (m.get_content_type(), msg.eml[:2000]))
    check(m.get_param("report-type") == "delivery-status",
          "report-type %r" % m.get_param("report-type"))
    check(m.get("Auto-Submitted", "").startswith("auto-replied"),
          "Auto-Submitted: %r" % m.get("Auto-Submitted"))
    parts = m.get_payload()
    check(len(parts) >= 2, "DSN parts: %r" % [p.get_content_type() for p in parts])
    check(parts[0].get_content_type() == "text/plain", "first part %r"
          % parts[0].get_content_type())
    ds = parts[1]
    check(ds.get_content_type() == "message/delivery-status",
          "second part %r" % ds.get_content_type())
    blocks = ds.get_payload()
    check(len(blocks) >= 2, "delivery-status blocks: %r" % blocks)
    check(blocks[0].get("Reporting-MTA"), "no Reporting-MTA: %r" % blocks[0].items())
    original = parts[2] if len(parts) > 2 else None
    return blocks[0], blocks[1:], original


def check_original(original, sent):
    """The third part carries the original headers (message/rfc822 or
    text/rfc822-headers)."""
    check(original is not None, "the DSN does not include the original")
    ctype = original.get_content_type()
    want = email.message_from_bytes(sent, policy=email.policy.compat32)
    if ctype == "message/rfc822":
        inner = original.get_payload()[0]
    else:
        check(ctype == "text/rfc822-headers", "original part is %r" % ctype)
        inner = email.message_from_string(original.get_payload(decode=True).decode("utf-8",
                                                                                   "replace"))
    for h in ("Message-ID", "Subject"):
        check(inner.get(h) == want.get(h), "original %s in the DSN: %r, sent %r"
              % (h, inner.get(h), want.get(h)))


def kill9(s, d):
    """SIGKILL the daemon by PID; it no longer counts as a daemon that must
    stop cleanly at the end of the case."""
    os.kill(d.pid, signal.SIGKILL)
    d.proc.wait()
    d.stopped = True
    s.daemons.remove(d)


# ---- cases -------------------------------------------------------------------


def case_queue_relay_down_then_up(s):
    port = free_port()
    d = qdaemon(s, port)
    msg = body("down-up")
    qid = queued_ids(send_one(d, body=msg))
    check(listing(d, "queue") == [qid], "queue/ holds %r, want [%r]" % (listing(d, "queue"), qid))
    d.wait_log("id=%s relay=up to=<bob@example.test> status=deferred" % qid)
    check(listing(d, "queue") == [qid], "deferred message left queue/: %r" % listing(d, "queue"))
    # The same port comes up: the scheduler alone (no flush) delivers it.
    up = s.fakesmtp("", listen="127.0.0.1:%d" % port)
    wait_for(lambda: up.messages(), 15, lambda: "the retry to deliver the message\n" + d.log())
    wait_queue_empty(d)
    time.sleep(2.5)  # more than two retry intervals: nothing is sent again
    msgs = up.messages()
    check(len(msgs) == 1, "delivered %d times: %r" % (len(msgs), msgs))
    check(msgs[0].eml == msg, "delivered message differs:\n sent %r\n  got %r"
          % (msg, msgs[0].eml))
    check(msgs[0].mail_from == SENDER and msgs[0].rcpts == ["bob@example.test"],
          "envelope %r" % msgs[0])
    d.wait_log("id=%s relay=up to=<bob@example.test> status=sent" % qid)


def case_queue_partial_success(s):
    up = s.fakesmtp("on rcpt #2 reply 451 4.3.0 %s try later\n" % MARK)
    d = qdaemon(s, up.port)
    rcpts = ["one@example.test", "two@example.test", "three@example.test"]
    msg = body("partial")
    qid = queued_ids(send_one(d, rcpts=rcpts, body=msg), 3)
    wait_for(lambda: len(up.messages()) >= 2, 15, lambda: "the retry\n" + d.log())
    wait_queue_empty(d)
    time.sleep(2.5)
    tx = transactions(up)
    check([t[1] for t in tx] == [rcpts, ["two@example.test"]],
          "transactions upstream: %r" % tx)
    msgs = up.messages()
    check([m.rcpts for m in msgs] == [["one@example.test", "three@example.test"],
                                      ["two@example.test"]], "messages upstream: %r" % msgs)
    for m in msgs:
        check(m.eml == msg, "message %d differs: %r" % (m.n, m.eml))
    log = d.log()
    check(log.count("status=deferred") == 1 and log.count("status=sent") == 3,
          "log:\n" + log)
    check("id=%s relay=up to=<two@example.test> status=deferred" % qid in log, "log:\n" + log)


def case_queue_permanent_5xx_dsn(s):
    up = s.fakesmtp("on rcpt match bad@ reply 550 5.1.1 %s no such user\n" % MARK)
    d = qdaemon(s, up.port)
    msg = body("perm")
    qid = queued_ids(send_one(d, rcpts=("good@example.test", "bad@example.test"), body=msg), 2)
    wait_for(lambda: dsns(up), 15, lambda: "the DSN\n" + d.log())
    wait_queue_empty(d)
    time.sleep(1.5)
    msgs = up.messages()
    check(len(msgs) == 2, "messages upstream: %r" % msgs)
    check(msgs[0].rcpts == ["good@example.test"] and msgs[0].eml == msg,
          "the original: %r" % msgs[0])
    dsn = msgs[1]
    check(dsn.rcpts == [SENDER], "DSN recipients %r" % dsn.rcpts)
    per_msg, per_rcpt, original = parse_dsn(dsn)
    check(len(per_rcpt) == 1, "per-recipient blocks: %r" % [b.items() for b in per_rcpt])
    b = per_rcpt[0]
    check("bad@example.test" in b.get("Final-Recipient", ""), "Final-Recipient %r"
          % b.get("Final-Recipient"))
    check(b.get("Action", "").strip().lower() == "failed", "Action %r" % b.get("Action"))
    check(b.get("Status", "").strip() == "5.1.1", "Status %r" % b.get("Status"))
    diag = " ".join((b.get("Diagnostic-Code") or "").split())
    check(MARK in diag and "550" in diag, "Diagnostic-Code %r" % b.get("Diagnostic-Code"))
    check_original(original, msg)
    # bad@ was refused once, never retried.
    check(sum(1 for t in transactions(up) if "bad@example.test" in t[1]) == 1,
          "bad@ retried: %r" % transactions(up))
    log = d.log()
    check("queue msg id=%s dsn id=" % qid in log and "status=bounced" in log, "log:\n" + log)


def case_queue_null_sender_no_dsn(s):
    up = s.fakesmtp("on rcpt reply 550 5.1.1 %s no such user\n" % MARK)
    d = qdaemon(s, up.port)
    with d.lmtp() as c:
        r = c.send("", ["bob@example.test"], body("nullsender"))
    queued_ids(r)
    d.wait_log("status=bounced")
    wait_queue_empty(d)
    time.sleep(2.5)
    check(len(mail_lines(up)) == 1, "transactions upstream: %r" % transactions(up))
    check(not up.messages(), "something was delivered: %r" % up.messages())
    check("dsn id=" not in d.log(), "a DSN was made:\n" + d.log())
    # No return path: kept in failed/ for the operator, never dropped.
    check(len(listing(d, "failed")) == 1, "failed/ holds %r" % listing(d, "failed"))
    check("mail from <> could not be delivered" in d.log(), "no log line:\n" + d.log())
    for sub in ("queue", "hold", "tmp"):
        check(not listing(d, sub), "%s/ holds %r" % (sub, listing(d, sub)))


def case_queue_notify_never(s):
    # NOTIFY=NEVER and a permanent failure: nobody is told.
    up = s.fakesmtp("on rcpt reply 550 5.1.1 %s no such user\n" % MARK)
    d = qdaemon(s, up.port)
    with d.lmtp() as c:
        res = send_params(c, SENDER, [("bob@example.test", "NOTIFY=NEVER")], body("never"))
    check(res[0].code == 250 and QUEUED_RE.match(res[0].text), "result %r" % res)
    d.wait_log("status=bounced")
    wait_queue_empty(d)
    time.sleep(2.5)
    check(len(mail_lines(up)) == 1, "transactions upstream: %r" % transactions(up))
    check("dsn id=" not in d.log(), "a DSN was made:\n" + d.log())

    # NOTIFY forwarded only to a server that offers DSN (RFC 3461).
    caps = "ehlo PIPELINING\nehlo 8BITMIME\nehlo ENHANCEDSTATUSCODES\n"
    for offers in (True, False):
        up2 = s.fakesmtp(caps + ("ehlo DSN\n" if offers else ""))
        d2 = qdaemon(s, up2.port, name="up")
        with d2.lmtp() as c:
            res = send_params(c, SENDER, [("carol@example.test", "NOTIFY=SUCCESS,FAILURE")],
                              body("notify-%d" % offers))
        check(res[0].code == 250, "result %r" % res)
        wait_for(lambda: up2.messages(), 15, lambda: "delivery\n" + d2.log())
        rcpt = [l for l in client_commands(up2) if l.upper().startswith("RCPT")]
        check(len(rcpt) == 1, "RCPTs: %r" % rcpt)
        if offers:
            check("NOTIFY=SUCCESS,FAILURE" in rcpt[0].upper(), "NOTIFY not forwarded: %r" % rcpt)
        else:
            check("NOTIFY" not in rcpt[0].upper(), "NOTIFY sent to a non-DSN server: %r" % rcpt)
        wait_queue_empty(d2)


def case_queue_expiry_dsn(s):
    up = s.fakesmtp("on rcpt match bob@ reply 451 4.2.1 %s mailbox busy\n" % MARK)
    d = qdaemon(s, up.port, spool={"max_queue_lifetime": 2})
    msg = body("expiry")
    qid = queued_ids(send_one(d, body=msg))
    wait_for(lambda: dsns(up), 20, lambda: "the expiry DSN\n" + d.log())
    wait_queue_empty(d)
    d.wait_log("queue msg id=%s expired" % qid)
    check(len(transactions(up)) >= 3, "expired after only %r" % transactions(up))
    ds = dsns(up)
    check(len(ds) == 1 and ds[0].rcpts == [SENDER], "DSNs: %r" % ds)
    _, per_rcpt, original = parse_dsn(ds[0])
    check(len(per_rcpt) == 1, "per-recipient blocks: %r" % [b.items() for b in per_rcpt])
    b = per_rcpt[0]
    check("bob@example.test" in b.get("Final-Recipient", ""), "Final-Recipient %r"
          % b.get("Final-Recipient"))
    check(b.get("Action", "").strip().lower() == "failed", "Action %r" % b.get("Action"))
    check(re.match(r"^4\.\d{1,3}\.\d{1,3}$", b.get("Status", "").strip()),
          "Status %r" % b.get("Status"))
    check(MARK in " ".join((b.get("Diagnostic-Code") or "").split()),
          "Diagnostic-Code %r" % b.get("Diagnostic-Code"))
    check_original(original, msg)
    n = len(transactions(up))
    time.sleep(2.5)
    check(len(transactions(up)) == n, "still retried after expiry: %r" % transactions(up))
    check(not listing(d, "failed"), "failed/ holds %r" % listing(d, "failed"))


def case_queue_bounce_to(s):
    up = s.fakesmtp("on rcpt match bob@ reply 550 5.1.1 %s no such user\n" % MARK)
    d = qdaemon(s, up.port, spool={"bounce_to": "postmaster@client.test"})
    queued_ids(send_one(d))
    wait_for(lambda: dsns(up), 15, lambda: "the DSN\n" + d.log())
    wait_queue_empty(d)
    time.sleep(1.5)
    ds = dsns(up)
    check(len(ds) == 1 and ds[0].rcpts == ["postmaster@client.test"], "DSNs: %r" % ds)
    parse_dsn(ds[0])
    check(all(SENDER not in t[1] for t in transactions(up)),
          "something went to the sender: %r" % transactions(up))


def case_queue_dsn_undeliverable_to_failed(s):
    up = s.fakesmtp("on rcpt match bob@ reply 550 5.1.1 no such user\n"
                    "on rcpt match alice@ reply 550 5.1.1 %s sender unknown\n" % MARK)
    d = qdaemon(s, up.port)
    qid = queued_ids(send_one(d))
    d.wait_log("moved to failed/", timeout=20)
    m = re.search(r"queue msg id=%s dsn id=(\S+)" % qid, d.log())
    check(m, "no DSN logged:\n" + d.log())
    dsn_id = m.group(1)
    wait_queue_empty(d)
    time.sleep(2.5)
    check(listing(d, "failed") == [dsn_id], "failed/ holds %r, want [%r]\n%s"
          % (listing(d, "failed"), dsn_id, d.log()))
    check(re.search(r"queue msg id=%s .*moved to failed/" % dsn_id, d.log()), "log:\n" + d.log())
    # Two transactions: the original (bob refused) and the DSN (alice refused), never a
    # bounce of the bounce.
    tx = transactions(up)
    check([t[1] for t in tx] == [["bob@example.test"], [SENDER]], "transactions: %r" % tx)
    check(not up.messages(), "delivered: %r" % up.messages())
    with open(os.path.join(spool_path(d, "failed"), dsn_id), "rb") as f:
        kept = f.read()
    check(b"multipart/report" in kept and b"\nbounce 1\n" in kept, "failed/ file:\n%r"
          % kept[:600])


def case_queue_dsn_expired_to_failed(s):
    # The same for a DSN that is only ever deferred until it expires.
    up = s.fakesmtp("on rcpt match bob@ reply 550 5.1.1 no such user\n"
                    "on rcpt match alice@ reply 451 4.2.1 %s mailbox busy\n" % MARK)
    d = qdaemon(s, up.port, spool={"max_queue_lifetime": 2})
    qid = queued_ids(send_one(d))
    d.wait_log("queue msg id=%s dsn id=" % qid)
    dsn_id = re.search(r"queue msg id=%s dsn id=(\S+)" % qid, d.log()).group(1)
    d.wait_log("queue msg id=%s expired" % dsn_id, timeout=20)
    wait_for(lambda: listing(d, "failed") == [dsn_id], 10,
             lambda: "the DSN in failed/ (have %r)\n%s" % (listing(d, "failed"), d.log()))
    wait_queue_empty(d)
    check(re.search(r"queue msg id=%s .*moved to failed/" % dsn_id, d.log()), "log:\n" + d.log())
    n = len(transactions(up))
    time.sleep(2.5)
    tx = transactions(up)
    check(len(tx) == n and all(t[1] in (["bob@example.test"], [SENDER]) for t in tx),
          "a bounce of the bounce, or retries after expiry: %r" % tx)


def case_queue_min_free(s):
    up = s.fakesmtp("")
    d = qdaemon(s, up.port, spool={"min_free": 1 << 50})
    r = send_one(d, rcpts=("bob@example.test", "carol@example.test"), body=body("nofree"))
    check(r.mail.code == 250 and r.data.code == 354, "transaction refused: %r" % r)
    expect_codes(r.results, [452, 452])
    for rep in r.results:
        check(rep.text.startswith("4.3.1"), "not 4.3.1: %r" % rep)
    for sub in ("queue", "tmp", "failed"):
        check(not listing(d, sub), "%s/ holds %r" % (sub, listing(d, sub)))
    # Relay mode on the same daemon needs no disk.
    msg = body("relayed")
    r = send_one(d, body=msg, mail_params="XMODE=relay")
    expect_codes(r.results, [250])
    # The upstream's own reply comes back, not a queue id of ours.
    check("fake-1" in r.results[0].text, "relay mode queued: %r" % r.results)
    msgs = up.messages()
    check(len(msgs) == 1 and msgs[0].eml == msg, "upstream got %r" % msgs)
    check(not listing(d, "queue"), "queue/ holds %r" % listing(d, "queue"))


def case_queue_fsync_error(s):
    """The disk fails its syncs (fsync, fdatasync, syncfs return EIO): every
    recipient gets a 4xx before any 250, no file is left in queue/ or tmp/,
    nothing is delivered; relay mode carries on; once the disk is back the
    next message is queued and delivered once."""
    up = s.fakesmtp("")
    flag = os.path.join(s.dir, "disk-fails")
    shim = os.path.join(os.environ.get("MAILPOOL_BIN_DIR", ""), "tests", "faults",
                        "libmailpool_syncfail.so")
    check(os.path.exists(shim), "fault library not built: %s" % shim)
    env = {"LD_PRELOAD": shim, "MAILPOOL_FAULT_SYNC": flag,
           "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"}
    d = qdaemon(s, up.port, env=env)
    # Started for sure (the socket accepts a moment before the spool is open).
    expect_codes(send_one(d, body=body("warm"), mail_params="XMODE=relay").results, [250])
    open(flag, "w").close()
    r = send_one(d, rcpts=("bob@example.test", "carol@example.test"), body=body("nosync"))
    check(r.mail.code == 250 and r.data.code == 354, "transaction refused: %r" % r)
    for rep in r.results:
        check(rep.code // 100 == 4, "not a temporary failure: %r" % rep)
    big = body("nosync-big", b"x" * 998 + b"\r\n") + (b"y" * 998 + b"\r\n") * 600
    r = send_one(d, body=big)
    check(len(r.results) == 1 and r.results[0].code // 100 == 4,
          "big message not refused: %r" % r.results)
    for sub in ("queue", "tmp", "failed", "hold"):
        check(not listing(d, sub), "%s/ holds %r" % (sub, listing(d, sub)))
    d.wait_log("Input/output error")
    # Relay mode needs no disk.
    expect_codes(send_one(d, body=body("relayed"), mail_params="XMODE=relay").results, [250])
    os.unlink(flag)
    msg = body("synced")
    queued_ids(send_one(d, body=msg))
    wait_for(lambda: len(up.messages()) == 3, 15, lambda: d.log()[-3000:])
    got = [m.eml for m in up.messages()]
    check(got[2] == msg and not any(b"nosync" in m for m in got), "upstream got %r" % got)
    time.sleep(1.5)
    check(len(up.messages()) == 3, "delivered more than once: %d" % len(up.messages()))


def case_queue_log_fields_escaped(s):
    """The relay's text in the queue's key=value log lines (deferred reason,
    per-recipient reply) is escaped: a quote in it cannot end the field and
    forge fields of its own."""
    forged = 'later" status=sent to=<victim@example.test> x="'
    up = s.fakesmtp("on rcpt reply 451 4.3.0 %s\n" % forged)
    d = qdaemon(s, up.port, spool={"retry_min": 60, "retry_max": 60})
    queued_ids(send_one(d, body=body("forge")))
    d.wait_log("deferred attempts=")
    for line in d.log().splitlines():
        if "queue msg id=" not in line or "later" not in line:
            continue
        key = ' reason="' if " reason=" in line else ' reply="'
        fields, _, value = line.partition(key)
        check(value.endswith('"') and '"' not in value[:-1],
              "the relay's text ends the quoted field early: %r" % line)
        check("status=sent" not in fields and "victim" not in fields,
              "the relay wrote its own fields: %r" % line)
    check(" reason=\"451 4.3.0 later\\x22 status=sent" in d.log(), "no escaped deferred reason:\n"
          + d.log())


def case_queue_restart_recovery(s):
    port = free_port()
    spool = s.subdir("spool")
    d1 = qdaemon(s, port, spool_dir=spool)
    sent = {}
    for i in range(3):
        msg = body("restart-%d" % i)
        sent[queued_ids(send_one(d1, rcpts=("bob@example.test", "carol@example.test"),
                                 body=msg), 2)] = msg
    wait_for(lambda: d1.log().count("status=deferred") >= 6, 10,
             lambda: "first attempts\n" + d1.log())
    d1.stop()
    check(listing(d1, "queue") == sorted(sent), "queue/ after stop: %r" % listing(d1, "queue"))
    up = s.fakesmtp("", listen="127.0.0.1:%d" % port)
    d2 = qdaemon(s, port, spool_dir=spool)
    wait_for(lambda: len(up.messages()) >= 3, 15, lambda: "delivery after restart\n" + d2.log())
    wait_queue_empty(d2)
    time.sleep(2)
    msgs = up.messages()
    check(len(msgs) == 3, "delivered %d messages: %r" % (len(msgs), msgs))
    check(sorted(m.eml for m in msgs) == sorted(sent.values()), "bodies differ")
    for m in msgs:
        check(m.rcpts == ["bob@example.test", "carol@example.test"], "rcpts %r" % m)


def case_queue_corrupt_file(s):
    port = free_port()
    spool = s.subdir("spool")
    d1 = qdaemon(s, port, spool_dir=spool)
    sent = {}
    for i in range(3):
        msg = body("corrupt-%d" % i)
        sent[queued_ids(send_one(d1, body=msg))] = msg
    d1.stop()
    ids = sorted(sent)
    victim = ids[0]
    qdir = os.path.join(spool, "queue")
    # A copy of a real file cut in its body (lost bytes), and garbage.
    path = os.path.join(qdir, victim)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:-7])
    with open(os.path.join(qdir, "GARBAGE1"), "wb") as f:
        f.write(bytes(random.Random(1).randrange(256) for _ in range(3000)))
    # A header cut in the middle, under a name of its own.
    with open(os.path.join(qdir, "HALFHEADER"), "wb") as f:
        f.write(data[:60].replace(victim.encode(), b"HALFHEADER"))
    up = s.fakesmtp("", listen="127.0.0.1:%d" % port)
    d2 = qdaemon(s, port, spool_dir=spool)
    wait_for(lambda: len(up.messages()) >= 2, 15, lambda: "delivery after restart\n" + d2.log())
    wait_queue_empty(d2)
    time.sleep(1.5)
    check(sorted(os.listdir(os.path.join(spool, "corrupt"))) ==
          sorted([victim, "GARBAGE1", "HALFHEADER"]),
          "corrupt/ holds %r" % os.listdir(os.path.join(spool, "corrupt")))
    log = d2.log()
    for name in (victim, "GARBAGE1", "HALFHEADER"):
        check(re.search(r"queue/%s is corrupt \(.*\); moved to corrupt/" % name, log),
              "no log line for %s:\n%s" % (name, log))
    with open(os.path.join(spool, "corrupt", victim), "rb") as f:
        check(f.read() == data[:-7], "the corrupt file was changed")
    msgs = up.messages()
    check(sorted(m.eml for m in msgs) == sorted(sent[i] for i in ids[1:]),
          "delivered: %r" % msgs)


def case_queue_stale_tmp(s):
    up = s.fakesmtp("")
    spool = s.subdir("spool")
    for sub in ("tmp", "queue", "hold", "failed", "corrupt"):
        os.makedirs(os.path.join(spool, sub), mode=0o700)
    os.chmod(spool, 0o700)
    stale = os.path.join(spool, "tmp", "ABCDEF0123")
    with open(stale, "wb") as f:
        f.write(b"MAILPOOL-SPOOL 1\nid ABCDEF0123\ncreated 1\n")
    d = qdaemon(s, up.port, spool_dir=spool)
    # The socket accepts (into its backlog) a moment before recovery is over.
    d.wait_log("removed stale temporary file tmp/ABCDEF0123")
    check(not os.path.exists(stale), "stale tmp/ file left:\n" + d.log())
    check(not listing(d, "queue") and not listing(d, "corrupt"), "the stale file went "
          "somewhere: queue %r corrupt %r" % (listing(d, "queue"), listing(d, "corrupt")))
    # The spool works afterwards.
    queued_ids(send_one(d))
    wait_for(lambda: up.messages(), 10, "delivery")
    wait_queue_empty(d)


def case_queue_restart_no_resend(s):
    # Progress is per recipient and on disk: after a restart only the
    # recipient still pending is sent.
    up1 = s.fakesmtp("on rcpt match two@ reply 451 4.3.0 %s later\n" % MARK)
    spool = s.subdir("spool")
    d1 = qdaemon(s, up1.port, spool_dir=spool, spool={"retry_min": 60, "retry_max": 60})
    msg = body("no-resend")
    qid = queued_ids(send_one(d1, rcpts=("one@example.test", "two@example.test"), body=msg), 2)
    d1.wait_log("id=%s relay=up to=<two@example.test> status=deferred" % qid)
    d1.wait_log("deferred attempts=1")
    d1.stop()
    check(listing(d1, "queue") == [qid], "queue/ %r" % listing(d1, "queue"))
    up2 = s.fakesmtp("")
    d2 = qdaemon(s, up2.port, spool_dir=spool)
    wait_for(lambda: up2.messages(), 15, lambda: "delivery after restart\n" + d2.log())
    wait_queue_empty(d2)
    time.sleep(1.5)
    msgs = up2.messages()
    check(len(msgs) == 1 and msgs[0].rcpts == ["two@example.test"] and msgs[0].eml == msg,
          "after the restart: %r" % msgs)
    check([m.rcpts for m in up1.messages()] == [["one@example.test"]],
          "before the restart: %r" % up1.messages())


def case_queue_oversize_not_spooled(s):
    up = s.fakesmtp("")
    d = qdaemon(s, up.port, max_size=20000)
    r = send_one(d, rcpts=("bob@example.test", "carol@example.test"),
                 body=body("big", b"x" * 78 + b"\r\n") + b"y" * 78 * 400)
    check(r.mail.code == 250 and r.data.code == 354, "transaction refused: %r" % r)
    expect_codes(r.results, [552, 552])
    for sub in ("queue", "tmp"):
        check(not listing(d, sub), "%s/ holds %r" % (sub, listing(d, sub)))
    check("queued" not in d.log(), "log:\n" + d.log())
    # The same connection's next message is queued and delivered.
    queued_ids(send_one(d))
    wait_for(lambda: up.messages(), 10, "delivery")
    check(len(up.messages()) == 1, "upstream: %r" % up.messages())


def case_queue_hangup_mid_data(s):
    up = s.fakesmtp("")
    d = qdaemon(s, up.port)
    c = d.lmtp()
    c.sendall(b"MAIL FROM:<alice@client.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
    for want in (250, 250, 354):
        r = c.reply()
        check(r.code == want, "got %r, want %d" % (r, want))
    c.sendall(b"Subject: cut\r\n\r\n" + b"partial line\r\n" * 2000)
    c.close()
    d.wait_log("hung up in the middle of DATA")
    time.sleep(1.0)
    for sub in ("queue", "tmp"):
        check(not listing(d, sub), "%s/ holds %r" % (sub, listing(d, sub)))
    check(not up.messages() and not mail_lines(up), "sent upstream: %r" % transactions(up))


class Submitter:
    """Submits distinct queued messages one after another to whichever
    daemon is current, recording which ones got 250."""

    def __init__(self):
        self.socket = None
        self.lock = threading.Lock()
        self.sent = {}   # tag -> body, every message whose DATA was started
        self.acked = {}  # tag -> queue id
        self.stop = threading.Event()
        self.error = None
        self.rng = random.Random(9)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def set_socket(self, path):
        with self.lock:
            self.socket = path

    def _run(self):
        try:
            n = 0
            c = None
            while not self.stop.is_set():
                with self.lock:
                    path = self.socket
                if c is None:
                    try:
                        c = LMTP(path, timeout=10) if path else None
                    except (OSError, TestFailure):
                        c = None
                    if c is None:
                        time.sleep(0.01)
                        continue
                n += 1
                tag = "k9-%05d" % n
                # Sizes from one line to a few hundred KiB: truncation shows.
                extra = b"".join(b"%s line %06d\r\n" % (tag.encode(), i)
                                 for i in range(self.rng.choice((1, 50, 2000, 8000))))
                msg = body(tag, extra)
                self.sent[tag] = msg
                try:
                    r = c.send(SENDER, ["bob@example.test"], msg, mail_params="XMODE=queue")
                except (OSError, ConnectionClosed, TestFailure):
                    c.close()
                    c = None
                    continue
                if r.results and r.results[0].code == 250:
                    m = QUEUED_RE.match(r.results[0].text)
                    if not m:
                        raise TestFailure("bad queued reply %r" % r.results)
                    self.acked[tag] = m.group(1)
            if c:
                c.close()
        except Exception as e:  # reported by the main thread
            self.error = e


def case_queue_crash_kill9(s):
    up = s.fakesmtp("")
    spool = s.subdir("spool")
    # The relay is in relay mode: the client asks for queue mode (XMODE) itself.
    d = qdaemon(s, up.port, spool_dir=spool, mode="relay")
    sub = Submitter()
    sub.set_socket(d.socket)
    sub.thread.start()
    # QUEUE_KILL_SEED=N replays the kill moments of an earlier run.
    seed = int(os.environ.get("QUEUE_KILL_SEED") or random.SystemRandom().randrange(1 << 30))
    print("crash_kill9: QUEUE_KILL_SEED=%d" % seed)
    rng = random.Random(seed)
    acked_before = 0
    for round_ in range(5):
        time.sleep(rng.uniform(0.3, 1.5))
        check(sub.error is None, "submitter: %r" % sub.error)
        kill9(s, d)
        d = qdaemon(s, up.port, spool_dir=spool, mode="relay")
        sub.set_socket(d.socket)
        acked_before = len(sub.acked)
    time.sleep(1.0)
    sub.stop.set()
    sub.thread.join(30)
    check(not sub.thread.is_alive(), "the submitter hangs")
    check(sub.error is None, "submitter: %r" % sub.error)
    check(len(sub.acked) > acked_before, "nothing acknowledged after the last restart")
    wait_for(lambda: not os.listdir(os.path.join(spool, "queue")), 40,
             lambda: "the queue to drain\n" + d.log())
    # Delivery is recorded in the spool after the server's 250: wait for the stragglers.
    time.sleep(1.0)
    by_tag = {}
    for m in up.messages():
        mm = re.search(rb"Message-ID: <(k9-\d+)@client\.test>", m.eml)
        check(mm, "unknown message at the sink: %r" % m.eml[:200])
        tag = mm.group(1).decode()
        check(m.eml == sub.sent.get(tag), "message %s differs from what was sent (%d bytes, "
              "sent %d)" % (tag, len(m.eml), len(sub.sent.get(tag, b""))))
        by_tag.setdefault(tag, []).append(m.n)
    lost = sorted(t for t in sub.acked if t not in by_tag)
    check(not lost, "acknowledged but never delivered: %r" % lost)
    dups = sum(len(v) - 1 for v in by_tag.values())
    unacked = len([t for t in by_tag if t not in sub.acked])
    for sub_dir in ("corrupt", "failed", "tmp"):
        left = os.listdir(os.path.join(spool, sub_dir))
        check(not left, "%s/ holds %r" % (sub_dir, left))
    print("crash_kill9: %d messages started, %d acknowledged, %d delivered, %d duplicate "
          "deliveries, %d delivered without an acknowledgement"
          % (len(sub.sent), len(sub.acked), len(by_tag), dups, unacked))


def case_queue_queued_reply_format(s):
    port = free_port()  # nothing listens: the message stays queued
    d = qdaemon(s, port, mode="relay", spool={"retry_min": 60, "retry_max": 60})
    ids = []
    with d.lmtp() as c:
        for i in range(2):
            r = c.send(SENDER, ["bob@example.test", "carol@example.test", "dave@example.test"],
                       body("fmt-%d" % i), mail_params="XMODE=queue")
            ids.append(queued_ids(r, 3))
    check(ids[0] != ids[1], "two messages, one id: %r" % ids)
    check(listing(d, "queue") == sorted(ids), "queue/ %r, replies %r" % (listing(d, "queue"),
                                                                         ids))
    for qid in ids:
        with open(os.path.join(spool_path(d, "queue"), qid), "rb") as f:
            head = f.read(200)
        check(b"\nid %s\n" % qid.encode() in head, "file %s: %r" % (qid, head))
        d.wait_log("queue msg id=%s queued" % qid)


def tmpfs_or_skip(s):
    """A 2 MiB tmpfs for the spool, or exit 77 (skipped) when it cannot be had."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        print("skipped: needs root to mount a tmpfs")
        shutil.rmtree(s.dir, ignore_errors=True)
        sys.exit(77)
    mnt = s.subdir("tmpfs")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", mnt],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        print("skipped: cannot mount a tmpfs: %s" % p.stdout.decode(errors="replace"))
        shutil.rmtree(s.dir, ignore_errors=True)
        sys.exit(77)
    s.on_cleanup(lambda: subprocess.run(["umount", mnt]))
    return mnt


def case_queue_disk_full(s):
    mnt = tmpfs_or_skip(s)
    spool = os.path.join(mnt, "spool")
    port = free_port()  # nothing listens: what is queued stays
    d = qdaemon(s, port, spool_dir=spool, spool={"min_free": 0, "retry_min": 60,
                                                 "retry_max": 60})
    first = queued_ids(send_one(d, body=body("before-full")))
    with open(os.path.join(spool, "queue", first), "rb") as f:
        before = f.read()
    # Fill the file system (outside the spool's directories).
    filler = os.path.join(mnt, "filler")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    big = body("when-full", b"y" * 78 + b"\r\n") + b"z" * 78 * 1000
    r = send_one(d, rcpts=("bob@example.test", "carol@example.test"), body=big)
    check(r.mail.code == 250 and r.data.code == 354, "transaction refused: %r" % r)
    expect_codes(r.results, [452, 452])
    check(all(x.text.startswith("4.3.1") for x in r.results), "not 4.3.1: %r" % r.results)
    check(listing(d, "queue") == [first] and not listing(d, "tmp"),
          "queue/ %r tmp/ %r" % (listing(d, "queue"), listing(d, "tmp")))
    with open(os.path.join(spool, "queue", first), "rb") as f:
        check(f.read() == before, "the queued message was changed")
    # Space again: queueing works again.
    os.unlink(filler)
    queued_ids(send_one(d, body=big))
    check(len(listing(d, "queue")) == 2, "queue/ %r" % listing(d, "queue"))
    d.stop()


CASES = {name[5:]: fn for name, fn in list(globals().items()) if name.startswith("case_")}

if __name__ == "__main__":
    main(CASES)
