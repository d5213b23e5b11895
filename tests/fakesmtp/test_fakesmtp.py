#!/usr/bin/python3
"""Self-tests of the fakesmtp server: one case per CTest entry.

Usage: test_fakesmtp.py CASE     (CASE names are the keys of CASES below)
"""

import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fakesmtp  # noqa: E402

CA = os.path.join(fakesmtp.CERTS, "ca.pem")


def client_ctx(maxver=None):
    ctx = ssl.create_default_context(cafile=CA)
    if maxver:
        ctx.maximum_version = maxver
    return ctx


class Raw:
    """A line-oriented raw SMTP client, for what smtplib cannot do."""

    def __init__(self, srv, implicit=False):
        self.sock = socket.create_connection((srv.host, srv.port), timeout=10)
        if implicit:
            self.sock = client_ctx().wrap_socket(self.sock, server_hostname="localhost")
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def recv_some(self):
        d = self.sock.recv(65536)
        if not d:
            raise EOFError("server closed")
        self.buf += d

    def line(self):
        while b"\r\n" not in self.buf:
            self.recv_some()
        l, self.buf = self.buf.split(b"\r\n", 1)
        return l.decode("latin-1")

    def reply(self):
        """A whole (multiline) reply as a list of lines."""
        lines = [self.line()]
        while len(lines[-1]) > 3 and lines[-1][3] == "-":
            lines.append(self.line())
        return lines

    def cmd(self, text):
        self.send(text.encode() + b"\r\n")
        return self.reply()

    def expect_eof(self):
        try:
            while True:
                self.recv_some()
        except EOFError:
            return True
        except OSError:
            return True

    def close(self):
        self.sock.close()


def code(reply):
    return int(reply[0][:3])


def check(cond, what, srv=None):
    if not cond:
        if srv is not None:
            sys.stderr.write("--- transcript ---\n%s\n" % "\n".join(srv.log_lines()))
            sys.stderr.write("--- stderr ---\n%s\n" % srv.stderr())
        raise AssertionError(what)


# ---------------------------------------------------------------- cases


def case_plain_pipelining():
    with fakesmtp.start() as srv:
        c = Raw(srv)
        check(code(c.reply()) == 220, "greeting")
        ehlo = c.cmd("EHLO client.test")
        check("250-PIPELINING" in ehlo and ehlo[-1].startswith("250 "), "EHLO caps %r" % ehlo)
        # MAIL, both RCPTs and DATA in a single write (RFC 2920).
        c.send(b"MAIL FROM:<a@example.com> SIZE=100\r\nRCPT TO:<b@example.com>\r\n"
               b"RCPT TO:<c@example.com>\r\nDATA\r\n")
        got = [code(c.reply()) for _ in range(4)]
        check(got == [250, 250, 250, 354], "pipelined replies %r" % got, srv)
        data = (b"Subject: dots\r\n\r\n..leading dot\r\n...two\r\n.\tx\r\n"
                b"bare\nLF.\n.\r\nnot the end\r\n.\r\n")
        c.send(data)
        r = c.reply()
        check(code(r) == 250 and "fake-1" in r[0], "end of data %r" % r, srv)
        check(code(c.cmd("QUIT")) == 221, "quit")
        c.expect_eof()
        srv.wait_log("1 * close")
        msgs = srv.messages()
        check(len(msgs) == 1, "one message", srv)
        m = msgs[0]
        check(m.raw == data, "raw byte-exact: %r" % m.raw, srv)
        want = (b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\n\tx\r\n"
                b"bare\nLF.\n.\r\nnot the end\r\n")
        check(m.eml == want, "un-stuffed: %r" % m.eml, srv)
        check(m.mail_from == "a@example.com", "env from %r" % m.mail_from)
        check(m.rcpts == ["b@example.com", "c@example.com"], "env rcpts %r" % m.rcpts)
        check(any(l == "1 * message n=1 bytes=%d rcpts=2" % len(want) for l in srv.log_lines()),
              "message event", srv)
        # Message data never appears as C: lines.
        check(not any("leading dot" in l for l in srv.log_lines()), "body not logged", srv)


def case_smtplib_send():
    with fakesmtp.start() as srv:
        with smtplib.SMTP(srv.host, srv.port, timeout=10) as s:
            refused = s.sendmail("from@example.com", ["to@example.com"],
                                 b"Subject: hi\r\n\r\nbody\r\n")
            check(refused == {}, "accepted")
        srv.wait_log("1 * close")
        m = srv.messages()
        check(len(m) == 1 and m[0].eml == b"Subject: hi\r\n\r\nbody\r\n", "stored %r" % m, srv)


def case_swaks():
    if not shutil.which("swaks"):
        print("swaks missing; skipping")
        return
    with fakesmtp.start("auth PLAIN LOGIN\nuser alice s3cret\n", tls="starttls") as srv:
        r = subprocess.run(
            ["swaks", "-s", srv.host, "-p", str(srv.port), "-f", "a@example.com",
             "-t", "b@example.com", "--tls", "--tls-verify", "--tls-ca-path", CA,
             "--tls-sni", "localhost", "-a", "LOGIN", "-au", "alice", "-ap", "s3cret",
             "--pipeline", "--body", "hello"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        check(r.returncode == 0, "swaks failed:\n" + r.stdout.decode(), srv)
        srv.wait_log("1 * close")
        check(len(srv.messages()) == 1, "stored", srv)
        srv.wait_log("1 * auth ok user=alice mech=LOGIN")


def case_ipv6():
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        print("no IPv6 loopback; skipping")
        return
    with fakesmtp.start("", listen="[::1]:0") as srv:
        check(srv.host == "::1", "host parsed")
        with smtplib.SMTP(srv.host, srv.port, timeout=10) as s:
            s.sendmail("a@x", ["b@x"], b"v6\r\n")
        line = srv.wait_log("1 * connect from=")
        check(line.startswith("1 * connect from=::1 port="), line, srv)


def starttls_session(srv, maxver=None, session=None):
    s = smtplib.SMTP(srv.host, srv.port, timeout=10)
    s.ehlo("client.test")
    check(s.has_extn("starttls"), "STARTTLS offered", srv)
    check(not s.has_extn("auth"), "no AUTH before TLS", srv)
    code_, _ = s.starttls(context=client_ctx(maxver))
    check(code_ == 220, "starttls")
    s.ehlo("client.test")
    check(not s.has_extn("starttls"), "no STARTTLS inside TLS", srv)
    return s


def case_starttls_auth_plain():
    script = "auth PLAIN LOGIN\nuser alice s3cret\nuser bob pw with spaces\n"
    with fakesmtp.start(script, tls="starttls") as srv:
        # AUTH in clear is refused when the server wants TLS first.
        with smtplib.SMTP(srv.host, srv.port, timeout=10) as s:
            s.ehlo("client.test")
            check(s.docmd("AUTH PLAIN AGFsaWNlAHMzY3JldA==")[0] == 530, "AUTH in clear", srv)
        # PLAIN with an initial response.
        s = starttls_session(srv)
        check(s.has_extn("auth") and "PLAIN" in s.esmtp_features["auth"], "AUTH after TLS")
        s.user, s.password = "alice", "s3cret"
        check(s.auth("PLAIN", s.auth_plain, initial_response_ok=True)[0] == 235, "plain ir")
        s.sendmail("a@example.com", ["b@example.com"], b"x\r\n")
        s.quit()
        # PLAIN after an empty 334 challenge; a password with spaces.
        s = starttls_session(srv)
        s.user, s.password = "bob", "pw with spaces"
        check(s.auth("PLAIN", s.auth_plain, initial_response_ok=False)[0] == 235, "plain 334")
        s.quit()
        # Wrong password.
        s = starttls_session(srv)
        s.user, s.password = "alice", "wrong"
        try:
            s.auth("PLAIN", s.auth_plain)
            check(False, "bad password accepted", srv)
        except smtplib.SMTPAuthenticationError as e:
            check(e.smtp_code == 535 and b"5.7.8" in e.smtp_error, "535 5.7.8", srv)
        s.quit()
        srv.wait_log("4 * close")
        lines = srv.log_lines()
        check("2 * auth ok user=alice mech=PLAIN" in lines, "auth ok event", srv)
        check("3 * auth ok user=bob mech=PLAIN" in lines, "auth ok bob", srv)
        check("4 * auth failed user=alice mech=PLAIN" in lines, "auth failed event", srv)
        check("3 T S: 334 " in lines, "empty challenge", srv)


def case_starttls_auth_login():
    with fakesmtp.start("auth LOGIN\nuser alice s3cret\n", tls="starttls") as srv:
        s = starttls_session(srv)
        check(s.esmtp_features["auth"].strip() == "LOGIN", "only LOGIN offered")
        s.user, s.password = "alice", "s3cret"
        check(s.auth("LOGIN", s.auth_login, initial_response_ok=False)[0] == 235, "login")
        s.quit()
        s = starttls_session(srv)
        check(s.docmd("AUTH PLAIN AGFsaWNlAHMzY3JldA==")[0] == 504, "unlisted mechanism")
        check(s.docmd("AUTH LOGIN")[1] == b"VXNlcm5hbWU6", "username prompt")
        check(s.docmd("!!notbase64")[0] == 501, "bad base64")
        s.quit()
        srv.wait_log("2 * close")
        lines = srv.log_lines()
        check("1 T S: 334 VXNlcm5hbWU6" in lines and "1 T S: 334 UGFzc3dvcmQ6" in lines,
              "LOGIN prompts", srv)
        check("1 * auth ok user=alice mech=LOGIN" in lines, "auth event", srv)


def case_implicit_tls():
    with fakesmtp.start("auth PLAIN\nuser alice s3cret\n", tls="implicit") as srv:
        with smtplib.SMTP_SSL(srv.host, srv.port, context=client_ctx(), timeout=10) as s:
            s.ehlo("client.test")
            check(not s.has_extn("starttls"), "no STARTTLS on implicit TLS", srv)
            s.login("alice", "s3cret")
            s.sendmail("a@example.com", ["b@example.com"], b"Subject: t\r\n\r\nimplicit\r\n")
        srv.wait_log("1 * close")
        lines = srv.log_lines()
        check(lines[1].startswith("1 * tls version=TLSv1."), "tls first: %r" % lines[:3], srv)
        check(all(" P " not in l for l in lines), "nothing in plaintext", srv)
        check(srv.messages()[0].eml.endswith(b"implicit\r\n"), "stored", srv)


def case_rcpt_match():
    script = "on rcpt match bob@ reply 550 5.1.1 no such user\n"
    with fakesmtp.start(script) as srv:
        with smtplib.SMTP(srv.host, srv.port, timeout=10) as s:
            refused = s.sendmail("a@example.com", ["alice@example.com", "BOB@example.com"],
                                 b"x\r\n")
            check(refused == {"BOB@example.com": (550, b"5.1.1 no such user")},
                  "refused %r" % refused, srv)
        srv.wait_log("1 * close")
        check(srv.messages()[0].rcpts == ["alice@example.com"], "only alice", srv)
        check("1 * message n=1 bytes=3 rcpts=1" in srv.log_lines(), "event", srv)


def case_nth_rule():
    # The count runs across connections: the 2nd RCPT of the server's life.
    script = "on rcpt #2 reply 452 4.5.3 try later\non mail #3 reply 421 4.3.0 bye\n"
    with fakesmtp.start(script) as srv:
        c = Raw(srv)
        c.reply()
        c.cmd("EHLO a")
        check(code(c.cmd("MAIL FROM:<a@x>")) == 250, "mail 1")
        check(code(c.cmd("RCPT TO:<r1@x>")) == 250, "rcpt 1")
        c.cmd("QUIT")
        c.close()
        c = Raw(srv)
        c.reply()
        c.cmd("EHLO a")
        check(code(c.cmd("MAIL FROM:<a@x>")) == 250, "mail 2")
        r = c.cmd("RCPT TO:<r2@x>")
        check(r == ["452 4.5.3 try later"], "rcpt 2 %r" % r, srv)
        check(code(c.cmd("RCPT TO:<r3@x>")) == 250, "rcpt 3")
        check(code(c.cmd("RSET")) == 250, "rset")
        check(c.cmd("MAIL FROM:<a@x>") == ["421 4.3.0 bye"], "mail 3")
        check(c.expect_eof(), "a scripted 421 closes the connection")
        c.close()
        c = Raw(srv)
        c.reply()
        c.cmd("EHLO a")
        check(code(c.cmd("MAIL FROM:<a@x>")) == 250, "mail 4: the rule was for #3 only")
        c.close()


def case_multiline():
    script = ("on mail reply 250-first\\r\\n250-second\\r\\n250 third\n"
              "on ehlo #1 reply 250-fake.test\\r\\n250-X-ONE\\r\\n250 X-TWO\n")
    with fakesmtp.start(script) as srv:
        c = Raw(srv)
        c.reply()
        check(c.cmd("EHLO a") == ["250-fake.test", "250-X-ONE", "250 X-TWO"], "ehlo override")
        check(c.cmd("MAIL FROM:<a@x>") == ["250-first", "250-second", "250 third"], "multi")
        check(code(c.cmd("RCPT TO:<b@x>")) == 250, "transaction open after 2xx override")
        c.cmd("QUIT")
        srv.wait_log("1 * close")
        lines = srv.log_lines()
        i = lines.index("1 P C: MAIL FROM:<a@x>")
        check(lines[i + 1:i + 4] == ["1 P S: 250-first", "1 P S: 250-second", "1 P S: 250 third"],
              "one S: line per reply line", srv)


def case_drop():
    with fakesmtp.start("on mail drop\n", tls="starttls") as srv:
        s = starttls_session(srv)
        try:
            s.mail("a@example.com")
            check(False, "expected a disconnect", srv)
        except smtplib.SMTPServerDisconnected:
            pass
        srv.wait_log("1 * close")
        lines = srv.log_lines()
        i = lines.index("1 T C: mail FROM:<a@example.com>")  # smtplib's spelling
        check(lines[i + 1:] == ["1 * close"], "nothing sent after MAIL: %r" % lines[i:], srv)


def case_raw():
    script = "on noop #1 raw 2a0 x\\r\\n\non noop #2 raw 250 no crlf\\x00\\x1b[31m\n"
    with fakesmtp.start(script) as srv:
        c = Raw(srv)
        c.reply()
        c.cmd("EHLO a")
        c.send(b"NOOP\r\n")
        check(c.line() == "2a0 x", "malformed reply sent raw")
        c.send(b"NOOP\r\n")
        time.sleep(0.3)
        c.sock.settimeout(0.5)
        try:
            c.recv_some()
        except socket.timeout:
            pass
        check(c.buf == b"250 no crlf\x00\x1b[31m", "exact bytes %r" % c.buf, srv)
        c.close()
        srv.wait_log("1 * close")
        lines = srv.log_lines()
        check("1 P S: 2a0 x" in lines, "raw logged", srv)
        check("1 P S: 250 no crlf\\x00\\x1b[31m" in lines, "escaped in transcript", srv)


def case_starttls_inject():
    script = "on starttls inject 250 injected\\r\\n\n"
    with fakesmtp.start(script, tls="starttls") as srv:
        c = Raw(srv)
        c.reply()
        c.cmd("EHLO a")
        c.send(b"STARTTLS\r\n")
        want = b"220 2.0.0 Ready\r\n250 injected\r\n"
        deadline = time.monotonic() + 5
        while len(c.buf) < len(want) and time.monotonic() < deadline:
            c.recv_some()
        check(c.buf == want, "reply and injected bytes: %r" % c.buf, srv)
        # The server did go on into TLS.
        tls = client_ctx().wrap_socket(c.sock, server_hostname="localhost")
        tls.sendall(b"EHLO a\r\n")
        check(tls.recv(100).startswith(b"250-fake.test"), "TLS works after inject")
        tls.close()
        srv.wait_log("1 * close")
        lines = srv.log_lines()
        check("1 P S: 220 2.0.0 Ready" in lines and "1 P S: 250 injected" in lines,
              "injected bytes logged as plaintext", srv)
        check("1 * tls-sni name=localhost" in lines, "SNI logged", srv)


def case_starttls_client_injection():
    # A client pipelining commands behind STARTTLS in clear: the server throws them away.
    with fakesmtp.start("", tls="starttls") as srv:
        c = Raw(srv)
        c.reply()
        c.cmd("EHLO a")
        c.send(b"STARTTLS\r\nMAIL FROM:<evil@x>\r\n")
        check(c.line() == "220 2.0.0 Ready to start TLS", "220")
        tls = client_ctx().wrap_socket(c.sock, server_hostname="localhost")
        tls.sendall(b"NOOP\r\n")
        check(tls.recv(100) == b"250 2.0.0 Ok\r\n", "no reply to the injected MAIL")
        tls.close()
        srv.wait_log("1 * close")
        lines = srv.log_lines()
        check("1 * starttls-discard bytes=20" in lines, "discard event", srv)
        check(not any("evil" in l for l in lines), "injected MAIL never processed", srv)


def case_transcript_flags():
    with fakesmtp.start("", tls="starttls") as srv:
        s = starttls_session(srv)
        s.noop()
        s.quit()
        srv.wait_log("1 * close")
        lines = srv.log_lines()
        i = next(k for k, l in enumerate(lines) if l.startswith("1 * tls version="))
        check(lines[0].startswith("1 * connect from=127.0.0.1 port="), "connect event", srv)
        for l in lines[1:i]:
            check(l.startswith("1 P "), "plaintext before TLS: %r" % l, srv)
        check(lines[i - 1] == "1 P S: 220 2.0.0 Ready to start TLS", "220 in clear", srv)
        for l in lines[i + 1:]:
            check(l.startswith("1 T ") or l.startswith("1 * "), "TLS after: %r" % l, srv)
        check("1 T C: noop" in lines and "1 T S: 221 2.0.0 Bye" in lines, "T lines", srv)
        check("resumed=0" in lines[i] and "cipher=" in lines[i], "tls event %r" % lines[i])
        check(not any("tls-sni" in l for l in lines), "no SNI for an IP address", srv)


def case_concurrent():
    # Connection 1 is stuck (no reply to MAIL) while others are served.
    with fakesmtp.start("on mail #1 hang\n") as srv:
        stuck = Raw(srv)
        stuck.reply()
        stuck.cmd("EHLO stuck")
        stuck.send(b"MAIL FROM:<stuck@x>\r\n")
        srv.wait_log("1 P C: MAIL FROM:<stuck@x>")
        errors = []

        def one(i):
            try:
                with smtplib.SMTP(srv.host, srv.port, timeout=10) as s:
                    s.sendmail("a%d@x" % i, ["b%d@x" % i], b"n=%d\r\n" % i)
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        check(not errors, "errors %r" % errors, srv)
        msgs = srv.messages()
        check(len(msgs) == 12, "12 messages, got %d" % len(msgs), srv)
        check(sorted(m.eml for m in msgs) == sorted(b"n=%d\r\n" % i for i in range(12)),
              "all bodies", srv)
        check([m.n for m in msgs] == list(range(1, 13)), "numbers 1..12")
        check(not any(l.startswith("1 P S: 250 2.1.0") for l in srv.log_lines()), "still hung")
        stuck.close()
        srv.wait_log("1 * close")
        conns = {int(l.split()[0]) for l in srv.log_lines()}
        check(conns == set(range(1, 14)), "13 distinct connection numbers", srv)


def resumption(maxver, script):
    with fakesmtp.start(script, tls="starttls") as srv:
        ctx = client_ctx(maxver)
        s = smtplib.SMTP(srv.host, srv.port, timeout=10)
        s.ehlo("a")
        s.starttls(context=ctx)
        s.ehlo("a")  # reading after the handshake collects a TLS 1.3 ticket
        s.noop()
        session = s.sock.session
        s.quit()
        check(session is not None, "client got a session")
        # Second connection offers the session: smtplib cannot, so by hand.
        c = Raw(srv)
        c.reply()
        c.cmd("EHLO a")
        check(code(c.cmd("STARTTLS")) == 220, "starttls 2")
        tls = ctx.wrap_socket(c.sock, server_hostname="localhost", session=session)
        tls.sendall(b"EHLO a\r\n")
        tls.recv(1000)
        reused = tls.session_reused
        tls.sendall(b"QUIT\r\n")
        tls.recv(100)
        tls.close()
        srv.wait_log("2 * close")
        check(reused, "client reports reuse", srv)
        lines = srv.log_lines()
        check(any(l.startswith("1 * tls ") and l.endswith("resumed=0") for l in lines), "first")
        check(any(l.startswith("2 * tls ") and l.endswith("resumed=1") for l in lines),
              "second resumed", srv)


def case_resumption_tls12():
    resumption(ssl.TLSVersion.TLSv1_2, "tls-max-version 1.2\n")


def case_resumption_tls13():
    resumption(None, "")


def case_bdat():
    with fakesmtp.start("ehlo PIPELINING\nehlo CHUNKING\n") as srv:
        c = Raw(srv)
        c.reply()
        check("250 CHUNKING" in c.cmd("EHLO a"), "CHUNKING listed")
        c.send(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nBDAT 7\r\n.line\r\nBDAT 5 LAST\r\nend\r\n")
        got = [c.reply()[0] for _ in range(4)]
        check(got[2] == "250 2.0.0 7 octets received", "chunk %r" % got, srv)
        check(got[3].startswith("250 2.0.0 Ok: queued as fake-1"), "last %r" % got, srv)
        check(code(c.cmd("DATA")) == 503, "DATA without transaction")
        c.cmd("QUIT")
        srv.wait_log("1 * close")
        m = srv.messages()[0]
        check(m.raw == m.eml == b".line\r\nend\r\n", "BDAT data not unstuffed %r" % m.eml, srv)
    with fakesmtp.start("") as srv:
        c = Raw(srv)
        c.reply()
        c.cmd("EHLO a")
        c.cmd("MAIL FROM:<a@x>")
        c.cmd("RCPT TO:<b@x>")
        # Not offered: refused, but the chunk is still consumed (stays in sync).
        c.send(b"BDAT 6 LAST\r\nxx\r\nxx")
        check(code(c.reply()) == 502, "BDAT without CHUNKING")
        check(code(c.cmd("NOOP")) == 250, "in sync")
        c.close()


def case_sequencing():
    with fakesmtp.start("") as srv:
        c = Raw(srv)
        c.reply()
        check(code(c.cmd("MAIL FROM:<a@x>")) == 503, "MAIL before EHLO")
        check(code(c.cmd("EHLO")) == 501, "EHLO needs a name")
        c.cmd("EHLO a")
        check(code(c.cmd("RCPT TO:<b@x>")) == 503, "RCPT before MAIL")
        check(code(c.cmd("DATA")) == 503, "DATA before MAIL")
        check(code(c.cmd("MAIL FROM:a@x")) == 501, "MAIL syntax")
        check(code(c.cmd("MAIL FROM:<a@x>")) == 250, "MAIL")
        check(code(c.cmd("MAIL FROM:<a@x>")) == 503, "nested MAIL")
        check(code(c.cmd("DATA")) == 503, "DATA before RCPT")
        check(code(c.cmd("RCPT TO:<>")) == 501, "empty RCPT")
        check(code(c.cmd("STARTTLS")) == 502, "STARTTLS not configured")
        check(code(c.cmd("AUTH PLAIN")) == 502, "AUTH not configured")
        check(code(c.cmd("VRFY x")) == 252, "VRFY")
        check(code(c.cmd("XYZZY")) == 500, "unknown")
        check(code(c.cmd("RSET")) == 250, "RSET")
        check(code(c.cmd("RCPT TO:<b@x>")) == 503, "RSET ended the transaction")
        check(code(c.cmd("MAIL FROM:<a@x> SIZE=999999999")) == 552, "SIZE over limit")
        c.send(b"NOOP\n")
        check(code(c.reply()) == 250, "bare LF accepted")
        c.send(b"X" * 70000 + b"\r\n")
        check(code(c.reply()) == 500, "overlong line refused")
        check(code(c.cmd("NOOP")) == 250, "still in sync")
        c.close()
        srv.wait_log("1 * close")
        lines = srv.log_lines()
        check("1 P C: NOOP\\x0a" in lines, "bare LF visible", srv)
        check("1 * line-too-long bytes=70002" in lines, "too long event", srv)
    with fakesmtp.start("no-ehlo\n") as srv:
        c = Raw(srv)
        c.reply()
        check(code(c.cmd("EHLO a")) == 502, "no-ehlo")
        check(code(c.cmd("HELO a")) == 250, "HELO")
        check(code(c.cmd("MAIL FROM:<a@x>")) == 250, "MAIL after HELO")
        c.close()


def case_body_drop():
    with fakesmtp.start("on body drop\n") as srv:
        c = Raw(srv)
        c.reply()
        c.cmd("EHLO a")
        c.cmd("MAIL FROM:<a@x>")
        c.cmd("RCPT TO:<b@x>")
        check(code(c.cmd("DATA")) == 354, "354")
        c.send(b"Subject: x\r\n")
        check(c.expect_eof(), "dropped")
        srv.wait_log("1 * close")
        check(srv.messages() == [], "nothing stored", srv)


def case_extra():
    # An unsolicited reply goes out first; the normal reply (a rule's or the
    # default) still follows, and in the body phase the data is read to its end.
    script = ("on mail extra 250 2.0.0 unsolicited\n"
              "on rcpt #1 extra 451 4.0.0 first\non rcpt #1 reply 550 5.1.1 second\n"
              "on body extra 250 2.0.0 too early\n")
    with fakesmtp.start(script) as srv:
        c = Raw(srv)
        c.reply()
        c.cmd("EHLO a")
        check(c.cmd("MAIL FROM:<a@x>") == ["250 2.0.0 unsolicited"], "extra first")
        check(c.reply() == ["250 2.1.0 Ok"], "then the default reply")
        check(c.cmd("RCPT TO:<b@x>") == ["451 4.0.0 first"], "extra before a rule")
        check(c.reply() == ["550 5.1.1 second"], "then the rule's reply")
        check(code(c.cmd("RCPT TO:<c@x>")) == 250, "rules with #1 used up")
        check(code(c.cmd("DATA")) == 354, "354")
        c.send(b"Subject: x\r\n")
        check(c.reply() == ["250 2.0.0 too early"], "reply while the data flows")
        c.send(b"\r\nbody\r\n.\r\n")
        check(code(c.reply()) == 250, "dot reply after the early one")
        c.close()
        srv.wait_log("* message n=1")
        m = srv.messages()
        check(len(m) == 1 and m[0].eml == b"Subject: x\r\n\r\nbody\r\n", "stored %r" % m, srv)


def case_delay():
    with fakesmtp.start("on mail delay 600\non rcpt #1 delay 10\non rcpt #1 reply 451 later\n") as srv:
        c = Raw(srv)
        c.reply()
        c.cmd("EHLO a")
        t = time.monotonic()
        r = c.cmd("MAIL FROM:<a@x>")
        dt = time.monotonic() - t
        check(r == ["250 2.1.0 Ok"] and dt >= 0.55, "delayed default reply %r %.2f" % (r, dt))
        check(c.cmd("RCPT TO:<b@x>") == ["451 later"], "delay then the next rule")
        c.close()


def case_dot_reply():
    script = "on dot match X-Reject reply 554 5.7.1 rejected\non dot #3 drop\n"
    with fakesmtp.start(script) as srv:
        with smtplib.SMTP(srv.host, srv.port, timeout=10) as s:
            try:
                s.sendmail("a@x", ["b@x"], b"X-Reject: yes\r\n\r\nx\r\n")
                check(False, "should be rejected")
            except smtplib.SMTPDataError as e:
                check(e.smtp_code == 554, "554")
            s.sendmail("a@x", ["b@x"], b"ok\r\n")
            try:
                s.sendmail("a@x", ["b@x"], b"third\r\n")
                check(False, "should drop")
            except smtplib.SMTPServerDisconnected:
                pass
        srv.wait_log("1 * close")
        msgs = srv.messages()
        check(len(msgs) == 1 and msgs[0].n == 1 and msgs[0].eml == b"ok\r\n", "%r" % msgs, srv)
        check(any(l.startswith("1 * message-rejected") for l in srv.log_lines()), "event", srv)


def case_greeting():
    with fakesmtp.start("banner 554 5.3.2 go away\n") as srv:
        c = Raw(srv)
        check(c.reply() == ["554 5.3.2 go away"], "banner")
        check(code(c.cmd("EHLO a")) == 503, "no service")
        check(code(c.cmd("QUIT")) == 221, "QUIT ok")
        c.close()
    with fakesmtp.start("banner 220-fake.test one\\r\\n220 two\non connect #2 reply 421 4.3.2 busy\n") as srv:
        c = Raw(srv)
        check(c.reply() == ["220-fake.test one", "220 two"], "multiline banner")
        c.close()
        c = Raw(srv)
        check(c.reply() == ["421 4.3.2 busy"], "421 greeting")
        check(c.expect_eof(), "closed after 421")


def case_idle_timeout():
    with fakesmtp.start("idle 1\n") as srv:
        c = Raw(srv)
        c.reply()
        t = time.monotonic()
        r = c.reply()
        check(code(r) == 421 and time.monotonic() - t < 5, "421 after idle %r" % r)
        check(c.expect_eof(), "closed")
        srv.wait_log("1 * timeout")


def case_tls_failed():
    with fakesmtp.start("", tls="starttls") as srv:
        c = Raw(srv)
        c.reply()
        c.cmd("EHLO a")
        c.cmd("STARTTLS")
        c.send(b"this is not a TLS ClientHello\r\n" * 4)
        c.expect_eof()
        line = srv.wait_log("1 * tls-failed reason=")
        check(len(line) > len("1 * tls-failed reason="), "reason given")
        srv.wait_log("1 * close")


def case_sigterm():
    srv = fakesmtp.start("on ehlo hang\non noop delay 60000\n", tls="starttls")
    try:
        a = Raw(srv)
        a.reply()
        a.send(b"EHLO a\r\n")
        b = Raw(srv)
        b.reply()
        b.send(b"NOOP\r\n")
        srv.wait_log("2 P C: NOOP")
        t = time.monotonic()
        rc = srv.stop()
        check(rc == 0, "exit status %r" % rc, srv)
        check(time.monotonic() - t < 5, "prompt exit")
        lines = srv.log_lines()
        check("1 * close" in lines and "2 * close" in lines, "connections closed", srv)
    finally:
        srv.cleanup()


def case_bad_script():
    # Errors come after valid lines, so the exit path also frees a half-built script.
    good = "ehlo X-A\nuser a b\nauth PLAIN\non mail match x reply 250 ok\nbanner 220 hi\n"
    for bad in ["on nophase reply 250 x", "on rcpt #0 reply 250", "on mail inject x",
                "frobnicate", "on rcpt reply", "on body reply 250 x", "banner \\q",
                "on rcpt match reply 250", "on mail delay soon", "idle 0", "user onlyname"]:
        try:
            srv = fakesmtp.start(good + bad + "\n")
            srv.cleanup()
            check(False, "script accepted: %r" % bad)
        except RuntimeError as e:
            check("status 2" in str(e) and "script:6:" in str(e), "%r: %s" % (bad, e))


def case_certs():
    d = fakesmtp.CERTS

    def verify(*args):
        return subprocess.run(["openssl", "verify", "-CAfile", os.path.join(d, "ca.pem")]
                              + list(args), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT).returncode

    p = lambda n: os.path.join(d, n)  # noqa: E731
    check(verify("-verify_hostname", "localhost", p("server.pem")) == 0, "server")
    check(verify("-verify_ip", "127.0.0.1", p("server.pem")) == 0, "server ip4")
    check(verify("-verify_ip", "::1", p("server.pem")) == 0, "server ip6")
    check(verify(p("wronghost.pem")) == 0, "wronghost chain ok")
    check(verify("-verify_hostname", "localhost", p("wronghost.pem")) != 0, "wronghost name")
    check(verify(p("expired.pem")) != 0, "expired")
    check(verify(p("selfsigned.pem")) != 0, "selfsigned not from CA")
    for name in ["server", "wronghost", "expired", "selfsigned", "ca"]:
        mod = [subprocess.run(["openssl", kind, "-noout", "-modulus", "-in", p(name + ext)],
                              stdout=subprocess.PIPE).stdout
               for kind, ext in (("x509", ".pem"), ("rsa", ".key"))]
        check(mod[0] == mod[1] and mod[0], "%s key matches" % name)


CASES = {k[len("case_"):]: v for k, v in globals().items() if k.startswith("case_")}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in CASES:
        sys.stderr.write("usage: %s CASE\ncases: %s\n" % (sys.argv[0], " ".join(CASES)))
        sys.exit(2)
    CASES[sys.argv[1]]()
    print("ok", sys.argv[1])
