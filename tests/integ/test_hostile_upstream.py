#!/usr/bin/python3
"""Integration cases: a hostile upstream.  The relay is malicious, broken or
a man in the middle: malformed, extra, unsolicited, wrong-class and oversized
replies at every phase, 421 and drops anywhere, stalls, STARTTLS stripping
and injection, certificates that must not pass, legacy-only TLS, pins, AUTH
abuse.  Every case checks the promises that apply to it:

1. the daemon survives (the harness fails a case when it died, does not stop
   cleanly on SIGTERM, or logged a sanitizer report);
2. a session that lost sync is never used again: from the fake server's
   transcript, nothing but QUIT is sent on it after the bad reply (apart from
   the rest of a pipelined MAIL/RCPT/DATA group that left before the reply
   came), and the next message goes over a new connection;
3. no success that the server did not give: the client gets 250 only for a
   message the server stored exactly once on a healthy session, anything
   else is a 4xx/5xx (never a 3xx or another odd class), and in queue mode a
   message comes out exactly once once the server behaves (at most twice
   when the server kept it and then went silent);
4. nothing that needs TLS goes out in clear: no AUTH, MAIL, RCPT, DATA or
   BDAT with the transcript's P flag, and secrets (the password and its
   base64 forms) never reach the daemon's log.

Usage: test_hostile_upstream.py CASE

Every row of the bad-input list for the upstream side and for TLS, and the
cases that cover it (cases in other files are named file:case):

Upstream server -> daemon
| row | cases |
|---|---|
| multiline reply, capabilities read from it | hup_multiline_caps_and_text, test_tls:caps_after_tls, test_upstream:upstream_size_limit |
| `2`, empty line, `600 x`, `2a0 x` | hup_malformed_{short,empty,code600,code2a0,mismatch,nofinal}_{greeting,ehlo,mail,rcpt,data,dot} (36 cases), hup_malformed_queue_retried, hup_bare_lf_replies_tolerated, test_upstream:malformed_*, test_pool:pool_protocol_error_not_reused |
| a reply line of 10 MB, or endless continuation lines | hup_huge_line_rcpt, hup_huge_line_dot, hup_endless_continuation_rcpt, hup_drip_continuation_deadline, hup_huge_ehlo, test_upstream:malformed_huge_line, test_upstream:malformed_endless_continuation |
| reply text with NUL, CR or escape sequences | hup_reply_text_controls_escaped, hup_greeting_text_controls_escaped, hup_bounce_text_escaped, test_upstream:malformed_nul_logged_escaped |
| `421` at any point | hup_421_{greeting,ehlo,auth,mail,rcpt,data,dot}, hup_421_after_dot_queue, test_upstream:421_after_mail, test_upstream:421_after_dot, test_upstream:421_idle_then_next |
| connection closed after the final dot with no reply | hup_drop_after_dot_relay, hup_drop_after_dot_queue, hup_kept_then_silent_queue, test_upstream:drop_after_dot |
| `554` greeting; a server that never sends a greeting | hup_554_greeting_nothing_sent, hup_never_greets_pool_serves, hup_slow_over_{greeting,ehlo,mail,rcpt,data,dot}, hup_slow_under_timeouts, test_upstream:greeting_5xx, test_upstream:greeting_hang |
| STARTTLS required but not offered, or answered `454`/`502` | hup_starttls_stripped, hup_starttls_refused_{454,502,554,250}, hup_starttls_no_tls_behind_220, test_tls:secure_no_starttls, test_tls:starttls_454, test_tls:starttls_502 |
| extra bytes already sent behind the `220` reply to STARTTLS | hup_starttls_injection, hup_starttls_injection_partial, test_tls:starttls_inject |
| capabilities seen before STARTTLS | hup_caps_auth_only_before_tls, hup_caps_size_forgotten_after_tls, test_tls:caps_after_tls |
| AUTH: invalid base64 challenge, `535`, server drops during AUTH | hup_auth_bad_base64_{cram,scram}, hup_auth_535, hup_auth_drop, hup_auth_334_loop_{plain,login,cram,scram}, hup_421_auth, test_auth:auth_*_wrong_password |
| `SIZE` limit smaller than the message | hup_size_smaller_552_no_data, hup_absurd_size_values, test_upstream:upstream_size_limit |
| (more) extra, unsolicited and shifted replies | hup_extra_reply_before_ehlo, hup_extra_reply_to_ehlo, hup_extra_reply_after_auth, hup_two_replies_to_mail, hup_two_replies_to_mail_lockstep, hup_extra_reply_after_dot_shift, hup_extra_reply_after_dot_idle, hup_early_reply_during_body, hup_early_reply_then_reject, hup_354_with_early_250, hup_421_behind_dot_next_retried |
| (more) a stray reply while the next message is refused locally (server's SIZE, no SMTPUTF8) | hup_stray_{451,354,421}_behind_dot_size_refused, hup_stray_{451,354}_behind_dot_smtputf8_refused |
| (more) replies of the wrong class | hup_class_250_to_data, hup_class_250_to_data_always, hup_class_250_to_data_queue, hup_class_354_to_mail, hup_class_3xx_to_rcpt, hup_class_354_to_dot, hup_class_354_to_bdat_last, hup_554_greeting_nothing_sent |

TLS
| row | cases |
|---|---|
| self-signed or expired certificate without `trusted_site` | hup_tls_selfsigned_{starttls,implicit}, hup_tls_expired_{starttls,implicit}, hup_tls_unknown_ca_{starttls,implicit}, test_tls:cert_selfsigned, test_tls:cert_expired |
| valid certificate for another host name | hup_tls_wronghost_{starttls,implicit}, test_tls:cert_wronghost, test_tls:cert_wronghost_implicit |
| server offering only TLS <= 1.1 without `secure_fallback` | hup_tls_legacy_only_{starttls,implicit}, test_relayopts:relayopts_fallback_refused_without |
| pinned key does not match | hup_tls_pin_mismatch_starttls, test_relayopts:relayopts_pin_mismatch_valid_chain, test_relayopts:relayopts_pin_trusted_site_selfsigned |
| (more) man in the middle that is not a TLS server | hup_tls_plaintext_on_implicit, hup_tls_garbage_server_hello, hup_tls_close_in_handshake_{implicit,starttls}, hup_tls_stall_in_handshake |
"""

import base64
import hashlib
import os
import socket
import ssl
import subprocess
import threading
import time
import unicodedata

from mpharness import (CERTS, MSG, check, delivered_ok, expect_codes, main, no_plaintext_secrets,
                       send_one, temp_failed, wait_for)

MARK = "upstream-said-this"
AUTH_SCRIPT = "auth PLAIN LOGIN\nuser alice s3cret\n"
SECURE = ("extended", "secure")
IMPLICIT = ("extended", "secure_implicit")
# The configured password and the forms it takes on the wire.
SECRETS = ("s3cret", base64.b64encode(b"s3cret").decode(),
           base64.b64encode(b"\0alice\0s3cret").decode())
NO_PIPELINING = "ehlo 8BITMIME\nehlo ENHANCEDSTATUSCODES\nehlo SIZE 52428800\n"
QUEUE_FAST = {"retry_min": 1, "retry_max": 1}
ONE = {"max_connections": 1}
TWO_RCPTS = ("one@example.test", "two@example.test")


# ---- reading the transcript ------------------------------------------------------


def transcript(up):
    return "\n".join(up.log_lines())


def verb(line):
    return line.split(" ", 1)[0].upper()


def connections(up):
    """Connection numbers, in the order the server accepted them."""
    return [e[0] for e in up.events() if e[1] == "*" and e[2].startswith("connect ")]


def commands(up, conn, flag=None):
    """Command lines one connection received (optionally only P or T ones)."""
    return [e[2] for e in up.events(conn) if e[1] == "C" and (flag is None or e[3] == flag)]


def stored(up):
    """{message number: connection} for every message the server kept."""
    out = {}
    for e in up.events():
        if e[1] == "*" and e[2].startswith("message n="):
            out[int(e[2].split()[1][2:])] = e[0]
    return out


def body(tag):
    return MSG.replace(b"Subject: test", b"Subject: " + tag.encode())


def conn_of(up, tag):
    """The one connection on which the message with this subject was stored."""
    on = stored(up)
    needle = b"Subject: " + tag.encode() + b"\r\n"
    hits = [on.get(m.n) for m in up.messages() if needle in m.eml]
    check(len(hits) == 1, "message %r stored %d times:\n%s" % (tag, len(hits), transcript(up)))
    return hits[0]


def replies_of(r):
    """The replies that decide a transaction's fate, one per recipient."""
    if r.data is not None and r.data.code == 354:
        return r.results
    return r.rcpts or [r.mail]


def check_honest(up, r, bad=(1,), stored_on_bad=False, tag=None):
    """Promise 3: 250 only for a message the server stored exactly once on a
    healthy connection; otherwise a 4xx/5xx and nothing stored behind the
    client's back.  `stored_on_bad`: the broken connection may have kept a
    copy (the server took the data and then misbehaved).  `tag`: only the
    message with this subject counts (others were sent in the same case)."""
    reps = replies_of(r)
    check(reps, "no replies: %r" % r)
    for x in reps:
        check(x.code == 250 or x.code // 100 in (4, 5),
              "reply of an odd class reached the client: %r (all: %r)" % (x, r))
    on = stored(up)
    if tag is not None:
        needle = b"Subject: " + tag.encode() + b"\r\n"
        mine = {m.n for m in up.messages() if needle in m.eml}
        on = {n: c for n, c in on.items() if n in mine}
    good = [n for n, c in on.items() if c not in bad]
    if any(x.code == 250 for x in reps):
        check(len(good) == 1, "client told %r, but the server stored %d copies on healthy "
              "connections:\n%s" % (reps, len(good), transcript(up)))
    else:
        check(not good, "client told %r, but the server stored the message:\n%s"
              % (reps, transcript(up)))
    if not stored_on_bad:
        check(not [n for n, c in on.items() if c in bad],
              "message stored on a broken connection:\n" + transcript(up))


def check_dropped(up, conn, trigger=None, burst=False):
    """Promise 2: after the bad reply to the first `trigger` command (a verb;
    None: the greeting), `conn` received nothing but QUIT.  With `burst`, the
    rest of the pipelined RCPT.../DATA group that was sent before the reply
    came is allowed too.  Message data sent as commands would show here."""
    lines = commands(up, conn)
    if trigger is not None:
        at = [i for i, line in enumerate(lines) if verb(line) == trigger]
        check(at, "connection %d never got %s:\n%s" % (conn, trigger, transcript(up)))
        lines = lines[at[0] + 1:]
    if burst:
        while lines and verb(lines[0]) == "RCPT":
            lines = lines[1:]
        if lines and verb(lines[0]) in ("DATA", "BDAT"):
            lines = lines[1:]
    check(all(verb(line) == "QUIT" for line in lines),
          "connection %d was used after its bad reply: %r\n%s" % (conn, lines, transcript(up)))


def check_next_on_new(up, d, bad=(1,), tag="next", **kw):
    """The next message is delivered, over a connection that is not a broken one."""
    delivered_ok(send_one(d, body=body(tag), **kw))
    c = conn_of(up, tag)
    check(c not in bad, "the next message went over broken connection %d:\n%s"
          % (c, transcript(up)))
    return c


def check_log_clean(d, *secrets):
    """Promise 4 for the log: no secret in any form, and no raw control bytes
    (everything from the server is escaped before it is logged)."""
    log = d.log_bytes()
    for sec in SECRETS + secrets:
        check(sec.encode() not in log, "secret %r in the daemon log:\n%s" % (sec, d.log()))
    for b in (b"\x00", b"\x1b", b"\x07", b"\x9b", b"\r"):
        check(b not in log, "raw control byte %r in the daemon log" % b)


def in_thread(fn, *args, **kw):
    """Run fn in a thread; .finish() joins it and returns (or raises) its result."""
    box = {}

    def run():
        try:
            box["result"] = fn(*args, **kw)
        except BaseException as e:  # re-raised in the case's own thread
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def finish(timeout=60):
        t.join(timeout)
        check(not t.is_alive(), "client thread still running after %ds" % timeout)
        if "error" in box:
            raise box["error"]
        return box.get("result")

    t.finish = finish
    return t


def timed_send(d, tag, **kw):
    t0 = time.monotonic()
    r = send_one(d, body=body(tag), **kw)
    return r, time.monotonic() - t0


# ---- queue mode -------------------------------------------------------------------


def qdaemon(s, *relays, **kw):
    d = s.daemon(*relays, spool=QUEUE_FAST, **kw)
    d.spool = os.path.join(d.dir, "spool")
    return d


def queue_listing(d):
    p = os.path.join(d.spool, "queue")
    return sorted(os.listdir(p)) if os.path.isdir(p) else []


def check_queued(r, n=1):
    check(r.mail.code == 250 and r.data.code == 354, "transaction refused: %r" % r)
    for x in r.results:
        check(x.code == 250 and "queued as" in x.text, "not queued: %r" % r)
    check(len(r.results) == n, "expected %d results: %r" % (n, r))


def wait_sent(d, up, tag):
    """Wait until the message left the queue for good (sent, nothing left to
    retry), then return how many copies the server stored."""
    wait_for(lambda: "status=sent" in d.log() and not queue_listing(d), 30,
             lambda: "the message to be sent and the queue to empty (queue %r)\n%s\n%s"
             % (queue_listing(d), d.log(), transcript(up)))
    needle = b"Subject: " + tag.encode() + b"\r\n"
    return [m for m in up.messages() if needle in m.eml]


# ---- a hand-driven upstream, for what the scripted fake server cannot do ---------------


class ScriptedServer:
    """A TCP server on 127.0.0.1 whose every connection runs handler(conn) in a
    thread: 334 loops, bad challenges, replies dripped a line at a time, a TLS
    peer that closes or stalls in the handshake.  events() has the fake
    server's shape ((conn, kind, text, flag)) so the same checks apply."""

    def __init__(self, scope, handler):
        self.handler = handler
        self.lock = threading.Lock()
        self.log = []
        self.conns = []
        self.stopping = threading.Event()
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.lsock.settimeout(0.1)
        self.port = self.lsock.getsockname()[1]
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()
        scope.on_cleanup(self.stop)

    def _accept(self):
        while not self.stopping.is_set():
            try:
                sk, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                c = ScriptedConn(self, sk, len(self.conns) + 1)
                self.conns.append(c)
                self.log.append((c.n, "*", "connect"))
            threading.Thread(target=self._run, args=(c,), daemon=True).start()

    def _run(self, c):
        try:
            self.handler(c)
        except (OSError, ssl.SSLError, EOFError, ValueError):
            pass
        finally:
            c.close()
            self.record(c.n, "*", "close")

    def record(self, *entry):
        with self.lock:
            self.log.append(entry)

    def events(self, conn=None):
        with self.lock:
            return [e for e in self.log if conn is None or e[0] == conn]

    def log_lines(self):
        return ["%d %s" % (e[0], " ".join(str(x) for x in e[1:])) for e in self.events()]

    def closed(self, conn):
        return any(e[1] == "*" and e[2] == "close" for e in self.events(conn))

    def stop(self):
        self.stopping.set()
        self.thread.join(5)
        self.lsock.close()
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            c.close()


class ScriptedConn:
    def __init__(self, srv, sk, n):
        self.srv, self.sk, self.n = srv, sk, n
        self.sk.settimeout(20)
        self.buf = b""
        self.tls = False

    def flag(self):
        return "T" if self.tls else "P"

    def send(self, *lines):
        """Reply lines, each sent with CRLF, all in one write."""
        for line in lines:
            self.srv.record(self.n, "S", line, self.flag())
        self.sk.sendall("".join(line + "\r\n" for line in lines).encode("latin-1"))

    def raw(self, data):
        self.srv.record(self.n, "S", repr(data), self.flag())
        self.sk.sendall(data)

    def readline(self):
        """One command line without CRLF; EOFError when the client closed."""
        while b"\n" not in self.buf:
            d = self.sk.recv(65536)
            if not d:
                raise EOFError("client closed")
            self.buf += d
        line, self.buf = self.buf.split(b"\n", 1)
        text = line.rstrip(b"\r").decode("latin-1")
        self.srv.record(self.n, "C", text, self.flag())
        return text

    def read_some(self):
        d = self.sk.recv(65536)
        if not d:
            raise EOFError("client closed")
        return d

    def starttls(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(CERTS, "server.pem"), os.path.join(CERTS, "server.key"))
        self.sk = ctx.wrap_socket(self.sk, server_side=True)
        self.tls = True
        self.buf = b""

    def wait_closed(self, limit=30):
        """Hold the connection (answering nothing) until the client closes it."""
        self.sk.settimeout(0.2)
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and not self.srv.stopping.is_set():
            try:
                if not self.sk.recv(65536):
                    return
            except socket.timeout:
                continue

    def close(self):
        try:
            self.sk.close()
        except OSError:
            pass


def esmtp_over_tls(c, caps):
    """Greeting, plaintext EHLO offering STARTTLS, STARTTLS, then the EHLO
    inside TLS answered with `caps`.  Returns False if the client strayed."""
    c.send("220 scripted.test ESMTP")
    if verb(c.readline()) != "EHLO":
        return False
    c.send("250-scripted.test", "250-PIPELINING", "250 STARTTLS")
    if verb(c.readline()) != "STARTTLS":
        return False
    c.send("220 2.0.0 go ahead")
    c.starttls()
    if verb(c.readline()) != "EHLO":
        return False
    c.send(*(["250-scripted.test"] + ["250-" + x for x in caps[:-1]] + ["250 " + caps[-1]]))
    return True


# ---- malformed replies at every phase ---------------------------------------------------

# phase: (the fake server's rule phase, the normal reply code, the command it answers)
PHASES = {
    "greeting": ("connect", 220, None),
    "ehlo": ("ehlo", 250, "EHLO"),
    "mail": ("mail", 250, "MAIL"),
    "rcpt": ("rcpt", 250, "RCPT"),
    "data": ("data", 354, "DATA"),
    "dot": ("dot", 250, "DATA"),
}


def malformed_text(form, code):
    return {"short": "2\\r\\n",
            "empty": "\\r\\n",
            "code600": "600 x\\r\\n",
            "code2a0": "2a0 x\\r\\n",
            "mismatch": "%d-a\\r\\n%d b\\r\\n" % (code, code + 1),
            "nofinal": "%d-a\\r\\n" % code}[form]


def _malformed(s, form, phase):
    rule_phase, code, trigger = PHASES[phase]
    up = s.fakesmtp("on %s #1 raw %s\n" % (rule_phase, malformed_text(form, code)))
    # A reply that never ends is only ended by the deadline.
    d = s.daemon(s.relay(up.port, timeout=3 if form == "nofinal" else 10, pool=ONE))
    t0 = time.monotonic()
    r = send_one(d, rcpts=TWO_RCPTS, body=body("first"))
    check(time.monotonic() - t0 < 20, "took %.1fs" % (time.monotonic() - t0))
    check_honest(up, r, stored_on_bad=phase == "dot")
    if phase in ("greeting", "ehlo"):
        temp_failed(r)  # the session never got going: nothing to retry on
    elif phase == "dot":
        temp_failed(r, "unknown")  # the data went out: it may have been delivered
    else:
        # Failed before the data went out: retried once on a fresh session.
        expect_codes(replies_of(r), [250, 250])
    check_dropped(up, 1, trigger, burst=phase in ("mail", "rcpt"))
    check_next_on_new(up, d)


def _malformed_case(form, phase):
    return lambda s: _malformed(s, form, phase)


for _form in ("short", "empty", "code600", "code2a0", "mismatch", "nofinal"):
    for _phase in PHASES:
        globals()["case_hup_malformed_%s_%s" % (_form, _phase)] = _malformed_case(_form, _phase)


def case_hup_bare_lf_replies_tolerated(s):
    # Replies ending in a bare LF at every phase are read as lines (the parser
    # is lenient there by design): no desynchronisation, the session stays
    # good and is reused, and each message is delivered exactly once.
    script = ("on connect raw 220 fake.test hi\\n\n"
              "on ehlo raw 250-fake.test\\n250-PIPELINING\\n250 ENHANCEDSTATUSCODES\\n\n"
              "on mail raw 250 2.1.0 ok\\n\non rcpt raw 250 2.1.5 ok\\n\n"
              "on data raw 354 go\\n\non dot raw 250 2.0.0 kept\\n\n")
    up = s.fakesmtp(script)
    d = s.daemon(s.relay(up.port, pool=ONE))
    for tag in ("first", "second"):
        r = send_one(d, rcpts=TWO_RCPTS, body=body(tag))
        delivered_ok(r, 2)
        check_honest(up, r, bad=(), tag=tag)
        check(conn_of(up, tag) == 1, "not delivered over the one session")
    check(connections(up) == [1], "a healthy session was dropped: %r" % connections(up))


# ---- extra, unsolicited and shifted replies ------------------------------------------------


def case_hup_extra_reply_before_ehlo(s):
    # A second reply right behind the greeting answers a command not sent yet:
    # taken for the reply to EHLO, it would shift every later reply by one.
    up = s.fakesmtp("on connect #1 raw 220 fake.test ESMTP\\r\\n250 2.0.0 %s unsolicited\\r\\n\n"
                    % MARK)
    d = s.daemon(s.relay(up.port, pool=ONE))
    r = send_one(d, body=body("first"))
    check_honest(up, r)
    check_dropped(up, 1, None)
    check_next_on_new(up, d)


def case_hup_extra_reply_to_ehlo(s):
    up = s.fakesmtp("on ehlo #1 raw 250-fake.test\\r\\n250 PIPELINING\\r\\n"
                    "250 2.0.0 %s extra\\r\\n\n" % MARK)
    d = s.daemon(s.relay(up.port, pool=ONE))
    r = send_one(d, body=body("first"))
    check_honest(up, r)
    check_dropped(up, 1, "EHLO")
    check_next_on_new(up, d)


def case_hup_extra_reply_after_auth(s):
    up = s.fakesmtp(AUTH_SCRIPT + "on auth #1 raw 235 2.7.0 ok\\r\\n250 2.0.0 %s extra\\r\\n\n"
                    % MARK, tls="starttls")
    d = s.daemon(s.relay(up.port, options=SECURE, user="alice", pool=ONE))
    r = send_one(d, body=body("first"))
    check_honest(up, r)
    check_dropped(up, 1, "AUTH")
    check_next_on_new(up, d)
    no_plaintext_secrets(up)
    check_log_clean(d)


def case_hup_two_replies_to_mail(s):
    # Pipelined: the extra reply to MAIL pushes the RCPT reply onto DATA, which
    # then sees a 250 where only 354 may come.
    up = s.fakesmtp("on mail #1 raw 250 2.1.0 Ok\\r\\n250 2.1.0 %s Ok again\\r\\n\n" % MARK)
    d = s.daemon(s.relay(up.port, pool=ONE))
    r = send_one(d, body=body("first"))
    check_honest(up, r)
    check_dropped(up, 1, "MAIL", burst=True)
    check_next_on_new(up, d)


def case_hup_two_replies_to_mail_lockstep(s):
    # Without PIPELINING every command waits for its reply: a reply that is
    # already there when RCPT is due answers nothing the client sent.
    up = s.fakesmtp(NO_PIPELINING + "on mail #1 raw 250 2.1.0 Ok\\r\\n250 2.1.0 %s again\\r\\n\n"
                    % MARK)
    d = s.daemon(s.relay(up.port, pool=ONE))
    r = send_one(d, body=body("first"))
    check_honest(up, r)
    check_dropped(up, 1, "MAIL")
    check_next_on_new(up, d)


def case_hup_extra_reply_after_dot_shift(s):
    # Two replies to the dot while the next message already waits for the
    # session: the extra one must not become the next message's MAIL reply.
    up = s.fakesmtp("on dot #1 delay 1500\n"
                    "on dot #1 raw 250 2.0.0 Ok: queued\\r\\n250 2.0.0 %s extra\\r\\n\n" % MARK)
    d = s.daemon(s.relay(up.port, pool=ONE))
    first = in_thread(send_one, d, body=body("first"))
    up.wait_log("1 P C: DATA")
    second = in_thread(send_one, d, body=body("second"))
    r1, r2 = first.finish(), second.finish()
    delivered_ok(r1)  # the server did take the first message
    check(conn_of(up, "first") == 1, "first message not on connection 1")
    delivered_ok(r2)
    check(conn_of(up, "second") != 1, "second message sent over the desynchronised session")
    check_dropped(up, 1, "DATA")


def case_hup_extra_reply_after_dot_idle(s):
    up = s.fakesmtp("on dot #1 raw 250 2.0.0 Ok: queued\\r\\n250 2.0.0 %s extra\\r\\n\n" % MARK)
    d = s.daemon(s.relay(up.port, pool=ONE))
    delivered_ok(send_one(d, body=body("first")))
    check(conn_of(up, "first") == 1, "first message not on connection 1")
    up.wait_log("1 * close")  # the idle session saw the extra reply and was dropped
    check_dropped(up, 1, "DATA")
    check_next_on_new(up, d)


# A stray reply behind the reply to the dot, while the next message waits
# for the one session and is refused locally (the server's SIZE, or no
# SMTPUTF8): nothing was sent for it, so no reply of the server's can be its
# answer.  The stray reply breaks the session (it is closed at once, never
# restarted or reused); the refused message keeps the local refusal.
STRAY_CAPS = "ehlo PIPELINING\nehlo 8BITMIME\nehlo ENHANCEDSTATUSCODES\nehlo SIZE 5000\n"
REFUSED = {"size": (552, "5.3.4", {}),
           "smtputf8": (553, "5.6.7", {"mail_params": "SMTPUTF8"})}


def _stray_behind_dot_refused(s, extra, refusal):
    code, ecode, kw = REFUSED[refusal]
    # idle: the server would hang up by itself after that long; a session the
    # daemon lost track of would still be open by then.
    up = s.fakesmtp(STRAY_CAPS + "idle 6\non dot #1 delay 1500\n"
                    "on dot #1 raw 250 2.0.0 Ok: queued\\r\\n%s\\r\\n\n" % extra)
    d = s.daemon(s.relay(up.port, pool=ONE))
    first = in_thread(send_one, d, body=body("first"))
    up.wait_log("1 P C: DATA")
    tail = b"x" * 8000 + b"\r\n" if refusal == "size" else b""
    second = in_thread(send_one, d, body=body("second") + tail, **kw)
    r1, r2 = first.finish(20), second.finish(20)
    delivered_ok(r1)  # the server did take the first message
    check(conn_of(up, "first") == 1, "first message not on connection 1")
    check(r2.mail.code == 250 and r2.data.code == 354, "second refused early: %r" % r2)
    expect_codes(r2.results, [code])
    check(r2.results[0].text.startswith(ecode + " ") and MARK not in r2.results[0].text,
          "not the local refusal: %r" % r2)
    # Nothing was sent for it, so the refusal stands: no retry elsewhere.
    check("retrying on a new session" not in d.log(), "refused message retried:\n" + d.log())
    # The daemon closes the broken session itself, well before the server's
    # idle limit, and sends nothing more on it.
    up.wait_log("1 * close", 5)
    check("1 * timeout" not in transcript(up), "session 1 left open:\n" + transcript(up))
    check_dropped(up, 1, "DATA")
    check("state=idle->resolving" not in d.log(), "an established session was restarted")
    check_next_on_new(up, d)
    check(len(connections(up)) == 2, "connections %r:\n%s" % (connections(up), transcript(up)))


def case_hup_stray_451_behind_dot_size_refused(s):
    _stray_behind_dot_refused(s, "451 4.3.0 %s extra" % MARK, "size")


def case_hup_stray_354_behind_dot_size_refused(s):
    _stray_behind_dot_refused(s, "354 %s go ahead" % MARK, "size")


def case_hup_stray_421_behind_dot_size_refused(s):
    _stray_behind_dot_refused(s, "421 4.3.2 %s closing" % MARK, "size")


def case_hup_stray_451_behind_dot_smtputf8_refused(s):
    _stray_behind_dot_refused(s, "451 4.3.0 %s extra" % MARK, "smtputf8")


def case_hup_stray_354_behind_dot_smtputf8_refused(s):
    _stray_behind_dot_refused(s, "354 %s go ahead" % MARK, "smtputf8")


def case_hup_421_behind_dot_next_retried(s):
    # "250" to the dot and a 421 in one write while the next message waits:
    # the session is closing, which is what the next message's client is told
    # if it cannot be sent elsewhere; here it is retried on a new session.
    up = s.fakesmtp("on dot #1 delay 1500\n"
                    "on dot #1 raw 250 2.0.0 Ok: queued\\r\\n421 4.3.2 %s closing\\r\\n\n" % MARK)
    d = s.daemon(s.relay(up.port, pool=ONE))
    first = in_thread(send_one, d, body=body("first"))
    up.wait_log("1 P C: DATA")
    second = in_thread(send_one, d, body=body("second"))
    r1, r2 = first.finish(20), second.finish(20)
    delivered_ok(r1)
    check(conn_of(up, "first") == 1, "first message not on connection 1")
    delivered_ok(r2)
    check(conn_of(up, "second") != 1, "second message sent over the closing session")
    check_dropped(up, 1, "DATA")
    log = d.log()
    check("server closed the session: 421 4.3.2 " + MARK in log and "out of sync" not in log,
          "the 421 was not reported as such:\n" + log)


# 16 MB: more than the loopback socket buffers hold, so the daemon is still
# sending when the early reply comes (the server stops reading for a moment).
HUGE = b"Subject: huge\r\n\r\n" + (b"z" * 1022 + b"\r\n") * (16 * 1024)


def case_hup_early_reply_during_body(s):
    up = s.fakesmtp("on body #1 delay 300\non body #1 extra 250 2.0.0 %s too early\n" % MARK)
    d = s.daemon(s.relay(up.port, pool=ONE))
    r = send_one(d, body=HUGE, raw=HUGE + b".\r\n")
    check_honest(up, r)
    delivered_ok(r)  # retried on a fresh session, which behaved
    msgs = up.messages()
    check(len(msgs) == 1 and msgs[0].eml == HUGE, "delivered %d copies" % len(msgs))
    check_dropped(up, 1, "DATA")
    check_next_on_new(up, d)


def case_hup_early_reply_then_reject(s):
    # Every session says 250 early and then rejects the message: the early 250
    # must never reach the client.
    up = s.fakesmtp("on body delay 300\non body extra 250 2.0.0 early\n"
                    "on dot reply 554 5.6.0 %s rejected\n" % MARK)
    d = s.daemon(s.relay(up.port, pool=ONE))
    r = send_one(d, body=HUGE, raw=HUGE + b".\r\n")
    check_honest(up, r, bad=connections(up))
    check(all(x.code != 250 for x in replies_of(r)), "early 250 reached the client: %r" % r)


def case_hup_354_with_early_250(s):
    # 354 and a "250" to the dot in one write, before any data was sent; the
    # server's real answer to the data is a 554.
    up = s.fakesmtp("on data #1 raw 354 go ahead\\r\\n250 2.0.0 fake-accept\\r\\n\n"
                    "on dot reply 554 5.6.0 %s rejected\n" % MARK)
    d = s.daemon(s.relay(up.port, pool=ONE))
    r = send_one(d, body=body("first"))
    check_honest(up, r)
    expect_codes(replies_of(r), [554])
    check(MARK in r.results[0].text, "not the server's real answer: %r" % r)
    check_dropped(up, 1, "DATA")


# ---- replies of the wrong class ---------------------------------------------------------


def case_hup_class_250_to_data(s):
    # 250 instead of 354: the data must not be sent as commands, and the 250
    # is no answer to the message.
    up = s.fakesmtp("on data #1 reply 250 2.0.0 %s fine\n" % MARK)
    d = s.daemon(s.relay(up.port, pool=ONE))
    r = send_one(d, body=body("first"))
    check_honest(up, r)
    check_dropped(up, 1, "DATA")
    check_next_on_new(up, d)


def case_hup_class_250_to_data_always(s):
    up = s.fakesmtp("on data reply 250 2.0.0 %s fine\n" % MARK)
    d = s.daemon(s.relay(up.port, pool=ONE))
    r = send_one(d, body=body("first"))
    check_honest(up, r, bad=connections(up))
    temp_failed(r)
    for c in connections(up):
        check_dropped(up, c, "DATA")


def case_hup_class_354_to_mail(s):
    up = s.fakesmtp("on mail #1 reply 354 %s go on\n" % MARK)
    d = s.daemon(s.relay(up.port, pool=ONE))
    r = send_one(d, rcpts=TWO_RCPTS, body=body("first"))
    check_honest(up, r)
    check_dropped(up, 1, "MAIL", burst=True)
    check_next_on_new(up, d)


def case_hup_class_3xx_to_rcpt(s):
    up = s.fakesmtp("on rcpt #1 reply 334 %s what\n" % MARK)
    d = s.daemon(s.relay(up.port, pool=ONE))
    r = send_one(d, rcpts=TWO_RCPTS, body=body("first"))
    check_honest(up, r)
    check_dropped(up, 1, "RCPT", burst=True)
    check_next_on_new(up, d)


def case_hup_class_354_to_dot(s):
    up = s.fakesmtp("on dot #1 reply 354 %s more please\n" % MARK)
    d = s.daemon(s.relay(up.port, pool=ONE))
    r = send_one(d, body=body("first"))
    check_honest(up, r)
    temp_failed(r, "unknown")
    check_dropped(up, 1, "DATA")
    check_next_on_new(up, d)


def case_hup_class_354_to_bdat_last(s):
    # With CHUNKING the final reply comes to BDAT ... LAST: a 3xx there is no
    # answer, and the data went out, so the outcome is unknown.
    up = s.fakesmtp("ehlo PIPELINING\nehlo CHUNKING\non dot #1 reply 354 %s what now\n" % MARK)
    d = s.daemon(s.relay(up.port, pool=ONE))
    r = send_one(d, body=body("first"))
    check_honest(up, r)
    temp_failed(r, "unknown")
    check(any(verb(c) == "BDAT" for c in commands(up, 1)), "BDAT not used:\n" + transcript(up))
    check_dropped(up, 1, "BDAT")
    check_next_on_new(up, d)


def case_hup_class_250_to_data_queue(s):
    # In queue mode a 250 to DATA taken for success would mark the message
    # delivered for good; it must be retried until the server really takes it.
    up = s.fakesmtp("".join("on data #%d reply 250 2.0.0 %s fine\n" % (i, MARK) for i in (1, 2, 3)))
    d = qdaemon(s, s.relay(up.port, mode="queue", pool=ONE))
    check_queued(send_one(d, body=body("queued")))
    copies = wait_sent(d, up, "queued")
    check(len(copies) == 1, "delivered %d times:\n%s" % (len(copies), transcript(up)))
    check(conn_of(up, "queued") == 4, "not delivered over the first good session:\n"
          + transcript(up))
    for c in (1, 2, 3):
        check_dropped(up, c, "DATA")


def case_hup_malformed_queue_retried(s):
    # Malformed replies on three sessions in a row (two tries of the first
    # delivery attempt, one of the next): queued, retried, delivered once.
    up = s.fakesmtp("".join("on rcpt #%d raw 2a0 x\\r\\n\n" % i for i in (1, 3, 5)))
    d = qdaemon(s, s.relay(up.port, mode="queue", pool=ONE))
    check_queued(send_one(d, rcpts=TWO_RCPTS, body=body("queued")), 2)
    copies = wait_sent(d, up, "queued")
    check(len(copies) == 1, "delivered %d times:\n%s" % (len(copies), transcript(up)))
    check(sorted(copies[0].rcpts) == sorted(TWO_RCPTS), "recipients %r" % copies[0].rcpts)
    check(conn_of(up, "queued") == 4, "not delivered over the first good session:\n"
          + transcript(up))
    for c in (1, 2, 3):
        check_dropped(up, c, "RCPT", burst=True)


def case_hup_554_greeting_nothing_sent(s):
    # 554 at the greeting means no service, whatever the server says next
    # (here it would happily accept everything); another relay keeps serving.
    bad = s.fakesmtp("on connect reply 554 5.3.2 %s no service\non ehlo reply 250 fake.test\n"
                     "on helo reply 250 fake.test\non mail reply 250 ok\non rcpt reply 250 ok\n"
                     % MARK)
    good = s.fakesmtp("")
    d = s.daemon(s.relay(bad.port, name="bad"), s.relay(good.port, name="good"), default="bad")
    r = send_one(d, body=body("first"))
    temp_failed(r, MARK)
    check_honest(bad, r, bad=connections(bad))
    for c in connections(bad):
        check_dropped(bad, c, None)
    delivered_ok(send_one(d, body=body("other"), mail_params="XRELAY=good"))
    check(len(good.messages()) == 1, "the healthy relay did not deliver")


# ---- 421 at every phase ------------------------------------------------------------------


def _421(s, phase):
    text = "421 4.3.2 %s closing\\r\\n" % MARK
    trigger = {"greeting": None, "ehlo": "EHLO", "auth": "AUTH", "mail": "MAIL",
               "rcpt": "RCPT", "data": "DATA", "dot": "DATA"}[phase]
    if phase == "greeting":
        # A 421 greeting closes the connection at once.
        script = "on connect #1 reply 421 4.3.2 %s busy\n" % MARK
    elif phase == "rcpt":
        # one@ is accepted, two@ gets the 421: neither may be reported delivered.
        script = "on rcpt match two@ raw %s\n" % text
    elif phase in ("mail", "data"):
        # Both the first try and the retry on a fresh session get it.
        script = "on %s #1 raw %s\non %s #2 raw %s\n" % (phase, text, phase, text)
    else:
        # Sent with the connection left open, so anything sent after it shows.
        script = "on %s #1 raw %s\n" % (phase, text)
    auth = phase == "auth"
    up = s.fakesmtp((AUTH_SCRIPT if auth else "") + script, tls="starttls" if auth else "none")
    d = s.daemon(s.relay(up.port, pool=ONE, **({"options": SECURE, "user": "alice"}
                                                if auth else {})))
    r = send_one(d, rcpts=TWO_RCPTS, body=body("first"))
    temp_failed(r, MARK)
    broken = connections(up)
    check_honest(up, r, bad=broken)
    for c in broken:
        check_dropped(up, c, trigger, burst=phase in ("mail", "rcpt"))
    check_next_on_new(up, d, bad=broken, rcpts=("three@example.test",))
    if auth:
        no_plaintext_secrets(up)
        check_log_clean(d)


def _421_case(phase):
    return lambda s: _421(s, phase)


for _phase in ("greeting", "ehlo", "auth", "mail", "rcpt", "data", "dot"):
    globals()["case_hup_421_" + _phase] = _421_case(_phase)


def case_hup_421_after_dot_queue(s):
    up = s.fakesmtp("on dot #1 reply 421 4.3.2 %s shutting down\n" % MARK)
    d = qdaemon(s, s.relay(up.port, mode="queue", pool=ONE))
    check_queued(send_one(d, body=body("queued")))
    copies = wait_sent(d, up, "queued")
    check(len(copies) == 1, "delivered %d times:\n%s" % (len(copies), transcript(up)))
    check(conn_of(up, "queued") != 1, "delivered over the session that said 421")


# ---- drops after the final dot --------------------------------------------------------------


def case_hup_drop_after_dot_relay(s):
    up = s.fakesmtp("on dot #1 drop\n")
    d = s.daemon(s.relay(up.port, pool=ONE))
    r = send_one(d, rcpts=TWO_RCPTS, body=body("first"))
    temp_failed(r, "unknown")
    check_honest(up, r)
    # No blind retry: that message never went out a second time.
    mails = [c for c in connections(up) if any(verb(x) == "MAIL" for x in commands(up, c))]
    check(mails == [1], "message sent again after an unknown outcome:\n" + transcript(up))
    check_next_on_new(up, d)


def case_hup_drop_after_dot_queue(s):
    # The server closed without a reply and kept nothing: retried, delivered once.
    up = s.fakesmtp("on dot #1 drop\n")
    d = qdaemon(s, s.relay(up.port, mode="queue", pool=ONE))
    check_queued(send_one(d, rcpts=TWO_RCPTS, body=body("queued")), 2)
    copies = wait_sent(d, up, "queued")
    check(len(copies) == 1, "delivered %d times:\n%s" % (len(copies), transcript(up)))
    check(sorted(copies[0].rcpts) == sorted(TWO_RCPTS), "recipients %r" % copies[0].rcpts)


def case_hup_kept_then_silent_queue(s):
    # The server kept the message but its reply never ends: the outcome is
    # unknown, so queue mode sends it again -- at most twice in all, never zero.
    up = s.fakesmtp("on dot #1 raw 250 2.0.0 kept but this line never ends\n")
    d = qdaemon(s, s.relay(up.port, mode="queue", timeout=2, pool=ONE))
    check_queued(send_one(d, body=body("queued")))
    copies = wait_sent(d, up, "queued")
    check(len(copies) == 2, "expected the kept copy and one retry, got %d:\n%s"
          % (len(copies), transcript(up)))
    check(conn_of_all(up, "queued")[0] == 1 and conn_of_all(up, "queued")[1] != 1,
          "retry not on a fresh session:\n" + transcript(up))


def conn_of_all(up, tag):
    on = stored(up)
    needle = b"Subject: " + tag.encode() + b"\r\n"
    return [on.get(m.n) for m in up.messages() if needle in m.eml]


# ---- greetings and stalls -----------------------------------------------------------------


def case_hup_never_greets_pool_serves(s):
    # One relay never greets; while the daemon waits for it, another relay's
    # messages go through at once, and the silent one times out per phase.
    hang = s.fakesmtp("on connect hang\n")
    good = s.fakesmtp("")
    d = s.daemon(s.relay(hang.port, name="hang", timeout=5), s.relay(good.port, name="good"),
                 default="hang")
    stuck = in_thread(timed_send, d, "stuck")
    hang.wait_log("1 * connect")
    for i in range(3):
        r, took = timed_send(d, "good%d" % i, mail_params="XRELAY=good")
        delivered_ok(r)
        check(took < 3.0, "a healthy relay took %.1fs while another one hung" % took)
    r, took = stuck.finish()
    temp_failed(r)
    check(4.0 <= took < 15, "the greeting deadline (5s) ended after %.1fs" % took)
    check(not commands(hang, 1), "commands sent to a server that never greeted")


def case_hup_slow_under_timeouts(s):
    # Slow at every phase, but each reply within the phase's deadline: fine.
    up = s.fakesmtp("".join("on %s delay 700\n" % p
                            for p in ("connect", "ehlo", "mail", "rcpt", "data", "dot")))
    d = s.daemon(s.relay(up.port, timeout=3, pool=ONE))
    r = send_one(d, rcpts=TWO_RCPTS, body=body("slow"))
    delivered_ok(r, 2)
    check_honest(up, r, bad=())
    check(connections(up) == [1], "a slow but good session was dropped")


def _slow_over(s, phase):
    rule_phase, _, trigger = PHASES[phase]
    slow = s.fakesmtp("on %s delay 5000\n" % rule_phase)
    good = s.fakesmtp("")
    d = s.daemon(s.relay(slow.port, name="slow", timeout=2, pool=ONE),
                 s.relay(good.port, name="good"), default="slow")
    stuck = in_thread(timed_send, d, "stuck")
    slow.wait_log("1 * connect" if trigger is None else "1 P C: " + trigger)
    r, took = timed_send(d, "fast", mail_params="XRELAY=good")
    delivered_ok(r)
    check(took < 3.0, "another relay took %.1fs while one stalled" % took)
    r, took = stuck.finish()
    temp_failed(r, *(("unknown",) if phase == "dot" else ()))
    check(took < 15, "the %s deadline (2s) ended after %.1fs" % (phase, took))
    # The late reply may still come: nothing must have been sent after it.
    broken = connections(slow)
    check_honest(slow, r, bad=broken, stored_on_bad=phase == "dot")
    for c in broken:
        check_dropped(slow, c, trigger, burst=phase in ("mail", "rcpt"))


def _slow_over_case(phase):
    return lambda s: _slow_over(s, phase)


for _phase in PHASES:
    globals()["case_hup_slow_over_" + _phase] = _slow_over_case(_phase)


# ---- reply text: controls, escapes, format strings ----------------------------------------

NASTY = "\\x00\\x1b[2J\\x1b]0;pwn\\x07 a\\rb \\x9b31m %n%s%s%x \\xc3\\xa9"


def printable_line(raw):
    """Raw reply bytes the client got must be UTF-8 without control characters."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise AssertionError("reply to the client is not UTF-8: %r" % raw)
    bad = [ch for ch in text if unicodedata.category(ch) == "Cc"]
    check(not bad, "control characters reached the client: %r in %r" % (bad, raw))
    return text


def raw_result_line(d, rcpt="bob@example.test"):
    c = d.lmtp()
    c.sendall(b"MAIL FROM:<alice@client.test>\r\nRCPT TO:<%s>\r\nDATA\r\n" % rcpt.encode())
    for _ in range(3):
        c.reply()
    c.sendall(b"Subject: x\r\n\r\nx\r\n.\r\n")
    line = c.readline()
    c.close()
    return line


def case_hup_long_utf8_reply_cut_cleanly(s):
    # A long multiline reply in UTF-8 is cut to fit on its way to the client:
    # never inside a character (the client gets valid UTF-8), and the
    # characters themselves survive (the filter does not just drop non-ASCII).
    e = "\\xc3\\xa9" * 200  # "é" x 200 per line, escaped for the script
    up = s.fakesmtp("on mail raw 451-4.3.0 %s\\r\\n451-4.3.0 %s\\r\\n451 4.3.0 %s\\r\\n\n"
                    % (e, e, e))
    d = s.daemon(s.relay(up.port))
    line = raw_result_line(d)
    text = printable_line(line)
    check(text.startswith("451") and "\u00e9" * 50 in text, "the text lost its characters: %r"
          % line[:200])


def case_hup_reply_text_controls_escaped(s):
    up = s.fakesmtp("on mail raw 451 4.3.0 %s %s\\r\\n\n" % (MARK, NASTY))
    d = s.daemon(s.relay(up.port))
    line = raw_result_line(d)
    text = printable_line(line)
    check(text.startswith("451") and MARK in text, "not the server's reply: %r" % line)
    check("%n%s%s%x" in text, "format directives not passed as text: %r" % line)
    check_log_clean(d)
    check(MARK in d.log(), "the server's reply is not in the log")


def case_hup_reply_quotes_cannot_forge_log_fields(s):
    # Queue mode logs each recipient's outcome as key=value fields with the
    # server's text quoted: a quote in that text must not end the field and
    # let the server write fields of its own (status=, to=).
    forged = 'ok" status=bounced to=<victim@example.test> x="'
    up = s.fakesmtp("on dot reply 250 2.0.0 %s\n" % forged)
    d = qdaemon(s, s.relay(up.port, mode="queue"))
    check_queued(send_one(d, body=body("quotes")))
    d.wait_log("status=sent")
    lines = [x for x in d.log().splitlines() if "status=sent" in x]
    check(len(lines) == 1, "status lines: %r" % lines)
    fields, _, value = lines[0].partition(' reply="')
    check(value.endswith('"') and '"' not in value[:-1],
          "the server's text ends the quoted field early: %r" % lines[0])
    check(fields.count("status=") == 1 and "victim" not in fields,
          "the server wrote its own fields: %r" % lines[0])
    check("ok\\x22 status" in value, "the quote is not escaped: %r" % lines[0])


def case_hup_greeting_text_controls_escaped(s):
    up = s.fakesmtp("on connect raw 554 5.3.2 %s %s\\r\\n\n" % (MARK, NASTY))
    d = s.daemon(s.relay(up.port))
    line = raw_result_line(d)
    text = printable_line(line)
    check(text.startswith("4") and MARK in text, "not a 4xx naming the greeting: %r" % line)
    check_log_clean(d)


def case_hup_bounce_text_escaped(s):
    # A permanent refusal with hostile text ends up in a delivery status
    # notification: escaped there too.
    up = s.fakesmtp("on rcpt match bad@ raw 550 5.1.1 %s %s\\r\\n\n" % (MARK, NASTY))
    d = qdaemon(s, s.relay(up.port, mode="queue"))
    check_queued(send_one(d, rcpts=("bad@example.test",), body=body("bounced")))
    wait_for(lambda: [m for m in up.messages() if m.mail_from == ""], 30,
             lambda: "the bounce\n" + d.log())
    dsn = [m for m in up.messages() if m.mail_from == ""][0]
    check(MARK.encode() in dsn.eml, "the bounce does not carry the server's reply")
    for b in (b"\x00", b"\x1b", b"\x07", b"\x9b"):
        check(b not in dsn.eml, "raw %r from the server in the bounce" % b)
    check(b"\r" not in dsn.eml.replace(b"\r\n", b""), "bare CR in the bounce")
    check_log_clean(d)


# ---- size and volume ----------------------------------------------------------------------


def case_hup_multiline_caps_and_text(s):
    # Capabilities come from every line of a multiline EHLO reply (SIZE on a
    # middle line), and a multiline final reply reaches the client whole.
    up = s.fakesmtp("on ehlo raw 250-fake.test greets you\\r\\n250-PIPELINING\\r\\n250-SIZE 2000"
                    "\\r\\n250 ENHANCEDSTATUSCODES\\r\\n\n"
                    "on dot reply 250-2.0.0 first line\\r\\n250-2.0.0 second line\\r\\n"
                    "250 2.0.0 %s last line\n" % MARK)
    d = s.daemon(s.relay(up.port, pool=ONE))
    r = send_one(d, body=body("small"))
    delivered_ok(r)
    text = r.results[0].text
    check("first line" in text and "second line" in text and MARK in text,
          "multiline reply not passed whole: %r" % r.results[0])
    r = send_one(d, body=body("large") + b"x" * 3000 + b"\r\n")
    expect_codes(r.results, [552])
    check(sum(1 for c in commands(up, 1) if verb(c) == "MAIL") == 1,
          "the oversized message went out:\n" + transcript(up))


def case_hup_huge_line_rcpt(s):
    up = s.fakesmtp("on rcpt #1 raw 250 " + "A" * (10 * 1024 * 1024) + "\\r\\n\n")
    d = s.daemon(s.relay(up.port, pool=ONE))
    r = send_one(d, body=body("first"))
    check_honest(up, r)
    check_dropped(up, 1, "RCPT", burst=True)
    check(d.rss_kb() < 64 * 1024, "daemon RSS %d kB after a 10 MB reply line" % d.rss_kb())
    check_next_on_new(up, d)


def case_hup_huge_line_dot(s):
    up = s.fakesmtp("on dot #1 raw 250 " + "A" * (10 * 1024 * 1024) + "\\r\\n\n")
    d = s.daemon(s.relay(up.port, pool=ONE))
    r = send_one(d, body=body("first"))
    temp_failed(r, "unknown")
    check_honest(up, r, stored_on_bad=True)
    check_dropped(up, 1, "DATA")
    check(d.rss_kb() < 64 * 1024, "daemon RSS %d kB after a 10 MB reply line" % d.rss_kb())
    check_next_on_new(up, d)


def case_hup_endless_continuation_rcpt(s):
    up = s.fakesmtp("on rcpt #1 raw " + "250-2.1.5 more\\r\\n" * 200000 + "\n")
    d = s.daemon(s.relay(up.port, pool=ONE))
    r = send_one(d, body=body("first"))
    check_honest(up, r)
    check_dropped(up, 1, "RCPT", burst=True)
    check_next_on_new(up, d)


def case_hup_drip_continuation_deadline(s):
    # A greeting that never ends, one continuation line every 100 ms: the
    # phase deadline ends it, not a per-read idle timer.
    def handler(c):
        for i in range(1000):
            c.send("220-still greeting %d" % i)
            time.sleep(0.1)

    srv = ScriptedServer(s, handler)
    d = s.daemon(s.relay(srv.port, timeout=2))
    t0 = time.monotonic()
    r = send_one(d)
    took = time.monotonic() - t0
    temp_failed(r)
    check(took < 10, "a dripping greeting held the message %.1fs (deadline 2s)" % took)
    check(not [e for e in srv.events() if e[1] == "C"], "commands sent before a greeting")


def case_hup_huge_ehlo(s):
    caps = "".join("250-X-CAPABILITY-%d\\r\\n" % i for i in range(5000))
    up = s.fakesmtp("on ehlo #1 raw 250-fake.test\\r\\n%s250 PIPELINING\\r\\n\n" % caps)
    d = s.daemon(s.relay(up.port, pool=ONE))
    r = send_one(d, body=body("first"))
    check_honest(up, r)
    check_dropped(up, 1, "EHLO")
    check(d.rss_kb() < 64 * 1024, "daemon RSS %d kB after a huge EHLO" % d.rss_kb())
    check_next_on_new(up, d)


def case_hup_absurd_size_values(s):
    # SIZE values that mean nothing are no limit: the message goes through,
    # and nothing overflows.
    values = ("99999999999999999999", "-1", "abc", "", "18446744073709551616", "0")
    ups = [s.fakesmtp(("ehlo PIPELINING\nehlo SIZE %s\n" % v).replace(" \n", "\n"))
           for v in values]
    relays = [s.relay(u.port, name="r%d" % i) for i, u in enumerate(ups)]
    d = s.daemon(*relays, default="r0")
    for i, u in enumerate(ups):
        r = send_one(d, body=body("size%d" % i), mail_params="XRELAY=r%d" % i)
        delivered_ok(r)
        check(len(u.messages()) == 1, "SIZE %r: not delivered" % values[i])


def case_hup_size_smaller_552_no_data(s):
    up = s.fakesmtp("ehlo PIPELINING\nehlo CHUNKING\nehlo SIZE 1000\n")
    d = s.daemon(s.relay(up.port, pool=ONE))
    r = send_one(d, rcpts=TWO_RCPTS, body=body("big") + b"x" * 2000 + b"\r\n")
    expect_codes(r.results, [552, 552])
    sent = [verb(c) for c in client_commands_all(up)]
    check(not [v for v in sent if v in ("MAIL", "RCPT", "DATA", "BDAT")],
          "data sent despite the server's SIZE: %r" % sent)
    # A local refusal: the session itself is fine and carries the next message.
    delivered_ok(send_one(d, body=body("small")))
    check(connections(up) == [1], "session dropped after a local refusal")


def client_commands_all(up):
    return [e[2] for e in up.events() if e[1] == "C"]


# ---- STARTTLS -----------------------------------------------------------------------------


def case_hup_starttls_stripped(s):
    # A man in the middle removes STARTTLS from the first EHLO reply and offers
    # AUTH in clear: never a fall-back to plaintext.
    up = s.fakesmtp(AUTH_SCRIPT + "auth-before-tls\n"
                    "on ehlo #1 reply 250-fake.test\\r\\n250-PIPELINING\\r\\n"
                    "250 AUTH PLAIN LOGIN\n", tls="starttls")
    d = s.daemon(s.relay(up.port, options=SECURE, user="alice", pool=ONE))
    r = send_one(d, body=body("first"))
    temp_failed(r, "starttls")
    check_honest(up, r)
    check_dropped(up, 1, "EHLO")
    no_plaintext_secrets(up)
    check_next_on_new(up, d)
    check(any(verb(c) == "MAIL" for c in commands(up, 2, "T")), "MAIL not inside TLS")
    no_plaintext_secrets(up)
    check_log_clean(d)


def _starttls_refused(s, code):
    up = s.fakesmtp(AUTH_SCRIPT + "auth-before-tls\non starttls #1 reply %d %s.7.0 %s no TLS\n"
                    % (code, str(code)[0], MARK), tls="starttls")
    d = s.daemon(s.relay(up.port, options=SECURE, user="alice", pool=ONE))
    r = send_one(d, body=body("first"))
    temp_failed(r, MARK)
    check_honest(up, r)
    check_dropped(up, 1, "STARTTLS")
    no_plaintext_secrets(up)
    check_next_on_new(up, d)
    no_plaintext_secrets(up)
    check_log_clean(d)


def _starttls_case(code):
    return lambda s: _starttls_refused(s, code)


for _code in (454, 502, 554, 250):
    globals()["case_hup_starttls_refused_%d" % _code] = _starttls_case(_code)


def _injection(s, injected):
    up = s.fakesmtp(AUTH_SCRIPT + "on starttls #1 inject %s\n" % injected, tls="starttls")
    d = s.daemon(s.relay(up.port, options=SECURE, user="alice", pool=ONE))
    r = send_one(d, body=body("first"))
    temp_failed(r)
    check_honest(up, r)
    check_dropped(up, 1, "STARTTLS")  # not even EHLO inside TLS
    check_next_on_new(up, d)
    no_plaintext_secrets(up)
    check_log_clean(d)


def case_hup_starttls_injection(s):
    _injection(s, "250-fake.test\\r\\n250-AUTH PLAIN\\r\\n250 PIPELINING\\r\\n")


def case_hup_starttls_injection_partial(s):
    # Only part of a line behind the 220: still bytes that came in clear.
    _injection(s, "2")


def case_hup_starttls_no_tls_behind_220(s):
    # "220" to STARTTLS from something that cannot speak TLS at all.
    up = s.fakesmtp(AUTH_SCRIPT + "auth-before-tls\nehlo PIPELINING\nehlo STARTTLS\n"
                    "on starttls reply 220 2.0.0 go ahead\n")
    d = s.daemon(s.relay(up.port, options=SECURE, user="alice", timeout=3))
    r = send_one(d)
    temp_failed(r)
    check(any(w in r.results[0].text.lower() for w in ("tls", "handshake")),
          "4xx does not say TLS failed: %r" % r)
    check_honest(up, r, bad=connections(up))
    no_plaintext_secrets(up)
    check_log_clean(d)


def case_hup_caps_auth_only_before_tls(s):
    # AUTH offered only in the plaintext EHLO: once in TLS the server does not
    # offer it, so it must not be used (what came before TLS is forgotten).
    up = s.fakesmtp(AUTH_SCRIPT + "auth-before-tls\non ehlo #2 reply 250-fake.test\\r\\n"
                    "250 PIPELINING\n", tls="starttls")
    d = s.daemon(s.relay(up.port, options=SECURE, user="alice", pool=ONE))
    r = send_one(d, body=body("first"))
    temp_failed(r, "auth")
    check_honest(up, r)
    check(not [c for c in client_commands_all(up) if verb(c) in ("AUTH", "MAIL")],
          "AUTH or MAIL without AUTH on offer:\n" + transcript(up))
    ehlos = [e[3] for e in up.events(1) if e[1] == "C" and verb(e[2]) == "EHLO"]
    check(ehlos == ["P", "T"], "EHLO not sent again inside TLS: %r" % ehlos)
    check_log_clean(d)


def case_hup_caps_size_forgotten_after_tls(s):
    # A SIZE seen before TLS does not limit the message after it; one seen
    # only inside TLS does.
    before = s.fakesmtp("on ehlo #1 reply 250-fake.test\\r\\n250-SIZE 100\\r\\n"
                        "250-PIPELINING\\r\\n250 STARTTLS\n", tls="starttls")
    after = s.fakesmtp("on ehlo #2 reply 250-fake.test\\r\\n250-SIZE 100\\r\\n250 PIPELINING\n",
                       tls="starttls")
    d = s.daemon(s.relay(before.port, name="before", options=SECURE),
                 s.relay(after.port, name="after", options=SECURE), default="before")
    pad = b"x" * 300 + b"\r\n"
    delivered_ok(send_one(d, body=body("plaintext-size") + pad))
    r = send_one(d, body=body("tls-size") + pad, mail_params="XRELAY=after")
    expect_codes(r.results, [552])
    check(not [c for c in client_commands_all(after) if verb(c) == "MAIL"],
          "MAIL sent past the SIZE offered inside TLS:\n" + transcript(after))
    no_plaintext_secrets(before)
    no_plaintext_secrets(after)


# ---- TLS: certificates, versions, pins, not-TLS peers ----------------------------------------

HOST_WORDS = ("host", "name", "domain")
TRUST_WORDS = ("self", "trust", "issuer", "signer", "verif", "unknown ca", "chain")


def other_ca_cert(s):
    """A certificate for localhost/127.0.0.1 from a CA the daemon does not trust."""
    d = s.subdir("otherca")

    def run(*args):
        subprocess.run(["openssl"] + list(args), check=True, cwd=d, capture_output=True)

    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("basicConstraints = critical, CA:FALSE\nextendedKeyUsage = serverAuth\n"
                "subjectAltName = DNS:localhost, IP:127.0.0.1\n")
    run("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "ca.key")
    run("req", "-new", "-x509", "-key", "ca.key", "-out", "ca.pem", "-days", "3650",
        "-subj", "/O=elsewhere/CN=another CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "cert.key")
    run("req", "-new", "-key", "cert.key", "-subj", "/O=elsewhere/CN=localhost", "-out", "cert.csr")
    run("x509", "-req", "-in", "cert.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "3650", "-extfile", "ext.cnf", "-out", "cert.pem")
    return os.path.join(d, "cert.pem")


def _bad_cert(s, cert, mode, words):
    if cert == "unknown_ca":
        cert = other_ca_cert(s)
    up = s.fakesmtp(AUTH_SCRIPT, tls=mode, cert=cert)
    d = s.daemon(s.relay(up.port, options=SECURE if mode == "starttls" else IMPLICIT,
                         host="localhost", user="alice", pool=ONE))
    for tag in ("first", "second"):
        r = send_one(d, body=body(tag))
        temp_failed(r)
        text = r.results[0].text.lower()
        check(any(w in text for w in words), "4xx %r does not name the reason %r" % (r, words))
    check_honest(up, r, bad=connections(up))
    check(len(connections(up)) >= 2, "the second message did not try again")
    for c in connections(up):
        # A refused certificate: not a single command inside that TLS session,
        # and nothing after STARTTLS in clear either.
        check(not commands(up, c, "T"), "commands sent over an unverified TLS session:\n"
              + transcript(up))
        if mode == "starttls":
            check_dropped(up, c, "STARTTLS")
        else:
            check(not [x for x in commands(up, c, "P") if verb(x) in ("EHLO", "HELO")],
                  "SMTP in clear on an implicit-TLS relay")
    no_plaintext_secrets(up)
    check_log_clean(d)


def _bad_cert_case(cert, mode, words):
    return lambda s: _bad_cert(s, cert, mode, words)


for _cert, _words in (("wronghost", HOST_WORDS), ("selfsigned", TRUST_WORDS),
                      ("expired", ("expir",)), ("unknown_ca", TRUST_WORDS)):
    for _mode in ("starttls", "implicit"):
        globals()["case_hup_tls_%s_%s" % (_cert, _mode)] = _bad_cert_case(_cert, _mode, _words)


def _legacy(s, mode):
    up = s.fakesmtp(AUTH_SCRIPT + "tls-max-version 1.1\n", tls=mode)
    d = s.daemon(s.relay(up.port, options=SECURE if mode == "starttls" else IMPLICIT,
                         user="alice"))
    r = send_one(d)
    temp_failed(r)
    check_honest(up, r, bad=connections(up))
    for c in connections(up):
        check(not commands(up, c, "T"), "commands over TLS 1.1:\n" + transcript(up))
        if mode == "starttls":
            check_dropped(up, c, "STARTTLS")
    check(not any("tls version=" in l for l in up.log_lines()),
          "a legacy TLS session was set up:\n" + transcript(up))
    no_plaintext_secrets(up)
    check_log_clean(d)


def case_hup_tls_legacy_only_starttls(s):
    _legacy(s, "starttls")


def case_hup_tls_legacy_only_implicit(s):
    _legacy(s, "implicit")


def spki_pin(cert):
    """base64 SHA-256 of the certificate's SubjectPublicKeyInfo (DER)."""
    pem = subprocess.run(["openssl", "x509", "-in", os.path.join(CERTS, cert + ".pem"),
                          "-pubkey", "-noout"], check=True, capture_output=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pem,
                         check=True, capture_output=True).stdout
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def case_hup_tls_pin_mismatch_starttls(s):
    # The chain is valid, but the key is not the pinned one (a CA-issued
    # certificate in a man in the middle's hands).
    up = s.fakesmtp(AUTH_SCRIPT, tls="starttls")
    d = s.daemon(s.relay(up.port, options=SECURE, user="alice",
                         tls_extra='pin_sha256 = [ "%s" ];' % spki_pin("selfsigned")))
    r = send_one(d)
    temp_failed(r, "pin")
    check_honest(up, r, bad=connections(up))
    for c in connections(up):
        check(not commands(up, c, "T"), "commands sent to an unpinned key:\n" + transcript(up))
        check_dropped(up, c, "STARTTLS")
    no_plaintext_secrets(up)
    check_log_clean(d)


def case_hup_tls_plaintext_on_implicit(s):
    # A plaintext SMTP server where implicit TLS was configured: its greeting
    # is no ServerHello, and nothing is sent in clear.
    up = s.fakesmtp(AUTH_SCRIPT + "auth-before-tls\n")
    d = s.daemon(s.relay(up.port, options=IMPLICIT, user="alice"))
    t0 = time.monotonic()
    r = send_one(d)
    temp_failed(r)
    check(time.monotonic() - t0 < 15, "took %.1fs" % (time.monotonic() - t0))
    check(not [x for x in client_commands_all(up) if verb(x) in ("EHLO", "HELO", "AUTH", "MAIL")],
          "SMTP in clear:\n" + transcript(up))
    no_plaintext_secrets(up)
    check_log_clean(d)


def _not_tls_peer(s, mode, behaviour, timeout=10):
    """A peer that answers the ClientHello with `behaviour`: "close", "garbage"
    or "stall"."""
    def handler(c):
        if mode == "starttls":
            c.send("220 scripted.test ESMTP")
            c.readline()
            c.send("250-scripted.test", "250-PIPELINING", "250-AUTH PLAIN", "250 STARTTLS")
            if verb(c.readline()) != "STARTTLS":
                return
            c.send("220 2.0.0 go ahead")
        hello = c.read_some()
        c.srv.record(c.n, "*", "client-hello bytes=%d tls=%d" % (len(hello), hello[:1] == b"\x16"))
        if behaviour == "garbage":
            c.raw(b"\x16\x03\x03\x00\x04junkHTTP/1.1 400 Bad Request\r\n\r\n")
            c.wait_closed()
        elif behaviour == "stall":
            c.wait_closed()
        # "close": return, and the connection closes

    srv = ScriptedServer(s, handler)
    d = s.daemon(s.relay(srv.port, options=SECURE if mode == "starttls" else IMPLICIT,
                         user="alice", timeout=timeout))
    t0 = time.monotonic()
    r = send_one(d)
    took = time.monotonic() - t0
    temp_failed(r)
    check(took < timeout + 10, "took %.1fs" % took)
    hellos = [e for e in srv.events() if e[1] == "*" and e[2].startswith("client-hello")]
    check(hellos and all(e[2].endswith("tls=1") for e in hellos),
          "no TLS ClientHello seen: %r" % srv.events())
    no_plaintext_secrets(srv)
    for c in {e[0] for e in srv.events()}:
        check_dropped(srv, c, "STARTTLS" if mode == "starttls" else None)
    check_log_clean(d)
    return took


def case_hup_tls_close_in_handshake_implicit(s):
    _not_tls_peer(s, "implicit", "close")


def case_hup_tls_close_in_handshake_starttls(s):
    _not_tls_peer(s, "starttls", "close")


def case_hup_tls_garbage_server_hello(s):
    _not_tls_peer(s, "implicit", "garbage")


def case_hup_tls_stall_in_handshake(s):
    took = _not_tls_peer(s, "starttls", "stall", timeout=2)
    check(took >= 1.5, "gave up after %.1fs, before the 2s deadline" % took)


# ---- AUTH ---------------------------------------------------------------------------------


def case_hup_auth_535(s):
    up = s.fakesmtp(AUTH_SCRIPT, tls="starttls")
    d = s.daemon(s.relay(up.port, options=SECURE, user="alice", password="Wr0ngPassw0rd",
                         pool=ONE))
    for tag in ("first", "second"):
        r = send_one(d, body=body(tag))
        temp_failed(r, "relay up", "535")
    check_honest(up, r, bad=connections(up))
    check(len(connections(up)) >= 2, "second message did not get a new session")
    for c in connections(up):
        check_dropped(up, c, "AUTH")
    no_plaintext_secrets(up)
    check_log_clean(d, "Wr0ngPassw0rd", base64.b64encode(b"\0alice\0Wr0ngPassw0rd").decode())


def case_hup_auth_drop(s):
    up = s.fakesmtp(AUTH_SCRIPT + "on auth #1 drop\n", tls="starttls")
    d = s.daemon(s.relay(up.port, options=SECURE, user="alice", pool=ONE))
    r = send_one(d, body=body("first"))
    temp_failed(r, "relay up")
    check_honest(up, r)
    check_next_on_new(up, d)
    no_plaintext_secrets(up)
    check_log_clean(d)


def _scripted_auth(s, mech, answer):
    """A TLS server offering `mech` that answers the AUTH command and every
    line after it with answer(i) (i counts from 0); None ends the session."""
    def handler(c):
        if not esmtp_over_tls(c, ["PIPELINING", "AUTH " + mech]):
            return
        line = c.readline()
        if verb(line) != "AUTH":
            return
        i = 0
        while True:
            a = answer(i)
            if a is None:
                return
            c.send(a)
            c.readline()
            i += 1

    srv = ScriptedServer(s, handler)
    d = s.daemon(s.relay(srv.port, options=SECURE, user="alice", mechanisms=[mech], timeout=10))
    t0 = time.monotonic()
    r = send_one(d)
    took = time.monotonic() - t0
    temp_failed(r, "relay up")
    wait_for(lambda: srv.closed(1), 10, "the daemon to close the session")
    after = [e[2] for e in srv.events(1) if e[1] == "C"]
    after = after[[i for i, x in enumerate(after) if verb(x) == "AUTH"][0] + 1:]
    check(not [x for x in after if verb(x) in ("MAIL", "RCPT", "DATA")],
          "mail sent without AUTH: %r" % after)
    no_plaintext_secrets(srv)
    check_log_clean(d)
    return r, took, after


def case_hup_auth_bad_base64_cram(s):
    r, took, after = _scripted_auth(s, "CRAM-MD5", lambda i: "334 %%%not*base64%%%")
    check(not after, "the daemon answered a malformed challenge: %r" % after)
    check("base64" in r.results[0].text, "4xx does not name the bad challenge: %r" % r)


def case_hup_auth_bad_base64_scram(s):
    r, took, after = _scripted_auth(s, "SCRAM-SHA-256", lambda i: "334 r=abc,s=!!!,i=4096")
    check(not after, "the daemon answered a malformed challenge: %r" % after)
    check("base64" in r.results[0].text, "4xx does not name the bad challenge: %r" % r)


def _334_loop(s, mech, most):
    # The server answers everything with another challenge, forever: the
    # exchange ends after the mechanism's own steps, well before the deadline.
    r, took, after = _scripted_auth(s, mech, lambda i: "334 Zm9v" if i < 100 else None)
    check(len(after) <= most, "%s: %d answers to an endless 334 loop: %r"
          % (mech, len(after), after))
    check(took < 8, "the 334 loop held the message %.1fs" % took)
    return after


def case_hup_auth_334_loop_plain(s):
    # PLAIN sent its one message with the AUTH command: a challenge after it
    # is out of order, and the credentials are not sent again.
    _334_loop(s, "PLAIN", 0)


def case_hup_auth_334_loop_login(s):
    _334_loop(s, "LOGIN", 2)


def case_hup_auth_334_loop_cram(s):
    _334_loop(s, "CRAM-MD5", 1)


def case_hup_auth_334_loop_scram(s):
    _334_loop(s, "SCRAM-SHA-256", 0)


CASES = {name[5:]: fn for name, fn in list(globals().items()) if name.startswith("case_")}

if __name__ == "__main__":
    main(CASES)
