"""Harness for mailpoold's integration tests.

A test file defines cases as functions taking a Scope and registers them
with `main(CASES)`; CTest runs one case per process (`test_x.py CASE`).
Everything a case starts (mailpoold, fakesmtp, aiosmtpd, smtp-sink) is
registered on the Scope and stopped by PID when the case ends, pass or
fail.  Stopping the daemon asserts exit status 0 and fails the case if
its log holds a sanitizer report.

    def case_plain(s):
        up = s.fakesmtp("")
        d = s.daemon(s.relay(up.port))
        r = d.lmtp().send("a@x.test", ["b@y.test"], b"Subject: hi\\r\\n\\r\\nbody\\r\\n")
        expect_codes(r.results, [250])

Environment: MAILPOOL_BIN_DIR (build tree), MAILPOOL_SRC_DIR (source
tree); MAILPOOLD_BIN overrides the daemon binary; MPHARNESS_KEEP=1 keeps
the temporary directories of passing cases for inspection.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

SRC_DIR = os.environ.get("MAILPOOL_SRC_DIR") or os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
BIN_DIR = os.environ.get("MAILPOOL_BIN_DIR") or os.path.join(SRC_DIR, "build")
CERTS = os.path.join(SRC_DIR, "tests", "certs")
sys.path.insert(0, os.path.join(SRC_DIR, "tests", "fakesmtp"))
import fakesmtp  # noqa: E402

SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                   "runtime error:", "ERROR: libFuzzer")


class TestFailure(AssertionError):
    pass


def check(cond, msg):
    if not cond:
        raise TestFailure(msg)


def binary(name):
    env = {"mailpoold": "MAILPOOLD_BIN"}.get(name)
    if env and os.environ.get(env):
        return os.environ[env]
    return os.path.join(BIN_DIR, name)


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now (for tools
    that cannot be told to bind port 0 and report it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sk:
        sk.bind(("127.0.0.1", 0))
        return sk.getsockname()[1]


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            # `what` may be a callable, so the message shows the state at the timeout.
            raise TestFailure("timed out waiting for " + (what() if callable(what) else what))
        time.sleep(0.02)


def stop_pid(proc, timeout=10.0):
    """SIGTERM the process by PID, wait; SIGKILL if it ignores us.  Returns
    (exit status, killed)."""
    if proc.poll() is not None:
        return proc.returncode, False
    try:
        os.kill(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(timeout), False
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return proc.returncode, True


# ---- LMTP client -------------------------------------------------------------


class Reply:
    def __init__(self, code, lines):
        self.code = code
        self.lines = lines  # text after the code and separator, one per line

    @property
    def text(self):
        return "\n".join(self.lines)

    def __repr__(self):
        return "%d %s" % (self.code, " / ".join(self.lines))


class Result:
    """What one pipelined transaction got back."""

    def __init__(self):
        self.mail = None
        self.rcpts = []
        self.data = None
        self.results = []  # one Reply per accepted recipient, after the data

    def __repr__(self):
        return "mail=%r rcpts=%r data=%r results=%r" % (self.mail, self.rcpts, self.data,
                                                         self.results)


class ConnectionClosed(TestFailure):
    pass


def dot_stuff(body):
    """Wire form of a message: dot-stuffed, CRLF-terminated last line, then
    the final dot.  Line ends inside are left as they are (bare LF/CR tests
    rely on that)."""
    if not body:
        return b".\r\n"
    out = bytearray()
    start = True
    for b in body:
        if start and b == 0x2E:
            out += b"."
        out.append(b)
        start = b == 0x0A
    if not body.endswith(b"\r\n"):
        out += b"\r\n"
    return bytes(out) + b".\r\n"


class LMTP:
    """A raw LMTP client over the daemon's Unix socket."""

    def __init__(self, path, timeout=20.0, lhlo=True):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.greeting = self.reply()
        check(self.greeting.code == 220, "greeting: %r" % self.greeting)
        self.caps = None
        if lhlo:
            r = self.cmd("LHLO client.test")
            check(r.code == 250, "LHLO: %r" % r)
            self.caps = [l.upper() for l in r.lines[1:]]

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def sendall(self, data):
        self.sock.sendall(data)

    def readline(self, limit=1 << 20):
        while b"\n" not in self.buf:
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise TestFailure("LMTP: no reply within %.0fs (have %r)" %
                                  (self.sock.gettimeout(), self.buf[:200]))
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise ConnectionClosed("LMTP: connection closed by the daemon (have %r)"
                                       % self.buf[:200])
            self.buf += chunk
            check(len(self.buf) <= limit, "LMTP: reply line over %d bytes" % limit)
        line, self.buf = self.buf.split(b"\n", 1)
        check(line.endswith(b"\r"), "LMTP: reply line without CRLF: %r" % line)
        return line[:-1]

    def reply(self):
        lines = []
        code = None
        while True:
            line = self.readline()
            check(len(line) >= 3 and line[:3].isdigit() and (len(line) == 3 or line[3:4] in b" -"),
                  "LMTP: malformed reply line %r" % line)
            c = int(line[:3])
            check(code is None or c == code, "LMTP: code changes inside a reply: %r" % line)
            code = c
            lines.append(line[4:].decode("utf-8", "replace"))
            if line[3:4] != b"-":
                return Reply(code, lines)

    def cmd(self, line):
        self.sendall(line.encode() + b"\r\n" if isinstance(line, str) else line + b"\r\n")
        return self.reply()

    def at_eof(self, timeout=5.0):
        """True once the daemon has closed the connection (all data read)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True

    def send(self, sender, rcpts, body, mail_params="", raw=None):
        """Pipeline MAIL, RCPT..., DATA in one write; on 354 send the body
        (dot-stuffed, or `raw` bytes exactly as given, which must include the
        terminator) and read one reply per accepted recipient."""
        r = Result()
        cmds = "MAIL FROM:<%s>%s\r\n" % (sender, (" " + mail_params) if mail_params else "")
        for rc in rcpts:
            cmds += "RCPT TO:<%s>\r\n" % rc
        cmds += "DATA\r\n"
        self.sendall(cmds.encode("utf-8", "surrogateescape"))
        r.mail = self.reply()
        r.rcpts = [self.reply() for _ in rcpts]
        r.data = self.reply()
        if r.data.code != 354:
            return r
        accepted = sum(1 for x in r.rcpts if x.code // 100 == 2) if r.mail.code // 100 == 2 \
            else 0
        self.sendall(raw if raw is not None else dot_stuff(body))
        r.results = [self.reply() for _ in range(accepted)]
        return r


# ---- processes -----------------------------------------------------------------


class Daemon:
    def __init__(self, scope, config_text, name="mailpoold", expect_start=True, env=None):
        self.scope = scope
        self.dir = scope.subdir(name)
        self.socket = os.path.join(self.dir, "submit.sock")
        self.conf = os.path.join(self.dir, "mailpool.conf")
        self.log_path = os.path.join(self.dir, "stderr.log")
        with open(self.conf, "w") as f:
            f.write(config_text.replace("@SOCKET@", self.socket)
                    .replace("@CONTROL@", os.path.join(self.dir, "control.sock"))
                    .replace("@SPOOL@", os.path.join(self.dir, "spool")))
        self.stopped = False
        cmd = [binary("mailpoold"), "-c", self.conf]
        self.vg_log = None
        if os.environ.get("MPHARNESS_VALGRIND"):
            # Memcheck: any invalid access or definite/indirect leak makes the
            # daemon exit 99, which stop() reports with valgrind's log.
            self.vg_log = os.path.join(self.dir, "valgrind.log")
            cmd = ["valgrind", "--quiet", "--error-exitcode=99", "--leak-check=full",
                   "--show-leak-kinds=definite,indirect",
                   "--errors-for-leak-kinds=definite,indirect",
                   "--log-file=" + self.vg_log] + cmd
        with open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen(cmd,
                                         stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                         env=env)
        self.pid = self.proc.pid
        scope.on_cleanup(self._cleanup)
        scope.daemons.append(self)
        if expect_start:
            deadline = time.monotonic() + 15
            # The socket file appears at bind(), a moment before listen().
            while not self._accepts():
                if self.proc.poll() is not None:
                    raise TestFailure("mailpoold exited with %d at start:\n%s"
                                      % (self.proc.returncode, self.log()))
                if time.monotonic() > deadline:
                    raise TestFailure("mailpoold did not create its socket:\n" + self.log())
                time.sleep(0.01)

    def _accepts(self):
        if not os.path.exists(self.socket):
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sk:
            try:
                sk.connect(self.socket)
                return True
            except OSError:
                return False

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "backslashreplace")

    def log_bytes(self):
        with open(self.log_path, "rb") as f:
            return f.read()

    def wait_log(self, text, timeout=10.0):
        return wait_for(lambda: text in self.log(), timeout,
                        lambda: "daemon log line %r\n%s" % (text, self.log()))

    def alive(self):
        return self.proc.poll() is None

    def lmtp(self, **kw):
        c = LMTP(self.socket, **kw)
        self.scope.on_cleanup(c.close)
        return c

    def rss_kb(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise TestFailure("no VmRSS for pid %d" % self.pid)

    def check_sanitizers(self):
        text = self.log()
        for mark in SANITIZER_MARKS:
            check(mark not in text, "sanitizer report in the daemon log:\n" + text)

    def stop(self):
        """SIGTERM by PID; the daemon must exit 0 with a clean log."""
        if self.stopped:
            return
        self.stopped = True
        check(self.proc.poll() is None,
              "mailpoold died during the test (status %s):\n%s" % (self.proc.returncode,
                                                                   self.log()))
        status, killed = stop_pid(self.proc, timeout=40)
        check(not killed, "mailpoold ignored SIGTERM:\n" + self.log())
        self.check_sanitizers()
        if self.vg_log and status == 99:
            with open(self.vg_log, errors="backslashreplace") as f:
                raise TestFailure("valgrind found errors in mailpoold:\n" + f.read())
        check(status == 0, "mailpoold exited with %d after SIGTERM:\n%s" % (status, self.log()))

    def _cleanup(self):
        # After a failed case: stop it, and still report a sanitizer finding.
        if not self.stopped:
            self.stopped = True
            stop_pid(self.proc)
            self.check_sanitizers()


class Peer:
    """A helper server process started with a port file (aiosmtpd, smtp-sink)."""

    def __init__(self, scope, args, workdir, port=None, port_file=None, timeout=15.0):
        self.dir = workdir
        self.err_path = os.path.join(workdir, "stderr.log")
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                         cwd=workdir)
        self.pid = self.proc.pid
        scope.on_cleanup(lambda: stop_pid(self.proc))
        deadline = time.monotonic() + timeout
        if port_file:
            while not os.path.exists(port_file):
                self._check_alive(deadline)
            with open(port_file) as f:
                port = int(f.read())
        else:
            while not self._listening(port):
                self._check_alive(deadline)
        self.port = port

    def _check_alive(self, deadline):
        if self.proc.poll() is not None or time.monotonic() > deadline:
            raise TestFailure("%s did not start (status %s): %s"
                              % (self.proc.args[0], self.proc.poll(), self.stderr()))
        time.sleep(0.02)

    @staticmethod
    def _listening(port):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    def stderr(self):
        with open(self.err_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self):
        status, killed = stop_pid(self.proc)
        check(not killed, "%s ignored SIGTERM" % self.proc.args[0])
        return status


class Scope:
    """Per-case resources: a temp dir and every process started, cleaned up in
    reverse order whatever happens."""

    def __init__(self, name):
        self.name = name
        self.dir = tempfile.mkdtemp(prefix="mpinteg-%s-" % name)
        self._cleanups = []
        self._n = 0
        self.daemons = []

    def subdir(self, name):
        self._n += 1
        p = os.path.join(self.dir, "%s-%d" % (name, self._n))
        os.makedirs(p)
        return p

    def on_cleanup(self, fn):
        self._cleanups.append(fn)

    def close(self):
        errors = []
        while self._cleanups:
            fn = self._cleanups.pop()
            try:
                fn()
            except Exception as e:  # keep cleaning; report afterwards
                errors.append(e)
        return errors

    # -- starting things

    def fakesmtp(self, script="", tls="none", cert="server", **kw):
        srv = fakesmtp.start(script, tls=tls, cert=cert, workdir=self.subdir("fakesmtp"), **kw)
        self.on_cleanup(srv.stop)
        return srv

    def password_file(self, password="s3cret", mode=0o600):
        p = os.path.join(self.subdir("pass"), "pass")
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        os.chmod(p, mode)
        return p

    def relay(self, port, name="up", options=("extended",), user=None, password="s3cret",
              ca="ca.pem", timeout=5, host="127.0.0.1", mode="relay", extra="",
              mechanisms=None, pool=None, hosts=None, allow=None, qualify_domain=None,
              sender=None, from_header=None, aliases=None, auth_secret=None, tls_extra=""):
        """One relay block for config().  `pool` is a dict of pool settings
        (max_connections=1, ...); `hosts` a list of "host:port" strings that
        replaces host/port (a failover list)."""
        if hosts is None:
            hosts = ["%s:%d" % (host, port)]
        parts = ["hosts = [ %s ];" % ", ".join('"%s"' % h for h in hosts),
                 "options = [ %s ];" % ", ".join('"%s"' % o for o in options),
                 'mode = "%s";' % mode, "timeout = %d;" % timeout]
        if user is not None:
            mech = ""
            if mechanisms:
                mech = "mechanisms = [ %s ];" % ", ".join('"%s"' % m for m in mechanisms)
            # auth_secret: libconfig text replacing password_file, e.g.
            # 'password_command = "..."; password_command_ttl = 0;'
            secret = auth_secret if auth_secret is not None else \
                'password_file = "%s";' % self.password_file(password)
            parts.append('auth = { user = "%s"; %s %s };' % (user, secret, mech))
        # tls_extra: more libconfig text inside tls = { }, e.g. 'ciphers = "...";'
        if ca or tls_extra:
            parts.append('tls = { %s %s };' % ('ca_file = "%s";' % os.path.join(CERTS, ca)
                                               if ca else "", tls_extra))
        if pool:
            parts.append("pool = { %s };" % " ".join("%s = %d;" % kv for kv in pool.items()))
        if allow is not None:
            parts.append("allow = %s;" % allow_text(allow))
        if qualify_domain is not None:
            parts.append('qualify_domain = "%s";' % qualify_domain)
        if sender is not None:
            parts.append('sender = "%s";' % sender)
        if from_header is not None:
            parts.append('from_header = "%s";' % from_header)
        if aliases:
            parts.append("aliases = { %s };"
                         % " ".join('%s = "%s";' % kv for kv in aliases.items()))
        parts.append(extra)
        return "%s = { %s };" % (name, " ".join(parts))

    def config(self, *relays, max_size=36700160, client_timeout=30, log_level="debug",
               default="up", extra_daemon="", spool=None, routes=None, allow=None):
        """`spool` is a dict for the top-level spool section: ints (written
        with an L suffix past 2^31-1) and strings."""
        spool_text = ""
        if spool:
            items = []
            for k, v in spool.items():
                if isinstance(v, str):
                    items.append('%s = "%s";' % (k, v))
                else:
                    items.append("%s = %d%s;" % (k, v, "L" if v > 2147483647 else ""))
            spool_text = "spool = { %s };\n" % " ".join(items)
        if allow is not None:
            extra_daemon += " allow = %s;" % allow_text(allow)
        if routes:
            spool_text += "routes = ( %s );\n" % ", ".join(
                "{ %s }" % " ".join('%s = %s;' % (k, v if isinstance(v, int) else '"%s"' % v)
                                    for k, v in r.items()) for r in routes)
        if "control_socket" not in extra_daemon:
            extra_daemon += ' control_socket = "@CONTROL@";'
        if "spool_dir" not in extra_daemon:
            extra_daemon += ' spool_dir = "@SPOOL@";'
        return ('daemon = { hostname = "client.test"; submit_socket = "@SOCKET@"; '
                'log_level = "%s"; max_message_size = %d; client_timeout = %d; %s };\n'
                'default_relay = "%s";\nrelays = { %s };\n'
                % (log_level, max_size, client_timeout, extra_daemon, default, " ".join(relays))
                + spool_text)

    def daemon(self, *relays, env=None, **kw):
        """Start mailpoold with these relay blocks (see relay()); `env` adds
        environment variables; other keyword arguments go to config()."""
        full = None
        if env:
            full = dict(os.environ)
            full.update(env)
        return Daemon(self, self.config(*relays, **kw), env=full)

    def aiosmtpd(self, user=None, password=None, implicit=False, cert="server"):
        work = self.subdir("aiosmtpd")
        maildir = os.path.join(work, "maildir")
        os.makedirs(maildir)
        port_file = os.path.join(work, "port")
        args = ["/usr/bin/python3", os.path.join(SRC_DIR, "tests", "peers",
                                                 "aiosmtpd_upstream.py"),
                "--port-file", port_file, "--maildir", maildir,
                "--cert", os.path.join(CERTS, cert + ".pem"),
                "--key", os.path.join(CERTS, cert + ".key")]
        if user:
            args += ["--user", user, "--password", password or ""]
        if implicit:
            args.append("--implicit")
        p = Peer(self, args, work, port_file=port_file)
        p.maildir = maildir
        return p

    def smtp_sink(self, extra=()):
        """Postfix's smtp-sink dumping each message into a file in .maildir.
        It cannot report a kernel-chosen port, so pick a free one and retry if
        someone else grabbed it first."""
        work = self.subdir("smtp-sink")
        maildir = os.path.join(work, "maildir")
        os.makedirs(maildir)
        user = []
        if os.geteuid() == 0:
            # It refuses to run as root; the unprivileged user must reach the dump dir.
            user = ["-u", "nobody"]
            for d in (self.dir, work):
                os.chmod(d, 0o755)
            os.chmod(maildir, 0o777)
        last = None
        for _ in range(5):
            port = free_port()
            args = ["/usr/sbin/smtp-sink", *user, "-d", os.path.join(maildir, "%M."), *extra,
                    "127.0.0.1:%d" % port, "100"]
            try:
                p = Peer(self, args, work, port=port, timeout=5)
            except TestFailure as e:
                last = e
                continue
            p.maildir = maildir
            return p
        raise last


def allow_text(allow):
    """An allow group from {"users": [...], "groups": [...]} (names or ids)."""
    def items(v):
        return ", ".join(str(x) if isinstance(x, int) else '"%s"' % x for x in v)
    def agg(v):  # libconfig arrays hold one type; a list may mix names and ids
        same = len(set(type(x) for x in v)) <= 1
        return ("[ %s ]" if same else "( %s )") % items(v)
    return "{ %s }" % " ".join("%s = %s;" % (k, agg(v)) for k, v in allow.items())


def expect_codes(replies, codes, what="results"):
    got = [r.code for r in replies]
    check(got == list(codes), "%s: expected codes %r, got %r" % (what, list(codes), replies))


def main(cases):
    """Run the case named by argv[1]; exit 0 on success, 1 on failure.
    `--list` prints the case names, one per line (for CMake)."""
    if sys.argv[1:] == ["--list"]:
        print("\n".join(cases))
        return
    if len(sys.argv) != 2 or sys.argv[1] not in cases:
        sys.stderr.write("usage: %s CASE\ncases: %s\n" % (sys.argv[0], " ".join(sorted(cases))))
        sys.exit(2)
    name = sys.argv[1]
    scope = Scope(name)
    ok = False
    try:
        cases[name](scope)
        # Every daemon must still be running and stop cleanly on SIGTERM.
        for d in scope.daemons:
            d.stop()
        ok = True
    except Exception:
        traceback.print_exc()
    errors = scope.close()
    for e in errors:
        ok = False
        sys.stderr.write("cleanup: %s\n" % e)
    if ok and not os.environ.get("MPHARNESS_KEEP"):
        shutil.rmtree(scope.dir, ignore_errors=True)
    else:
        sys.stderr.write("files kept in %s\n" % scope.dir)
    print("%s: %s" % (name, "ok" if ok else "FAILED"))
    sys.exit(0 if ok else 1)


# ---- common checks ----------------------------------------------------------------

SENDER = "alice@client.test"
MSG = b"From: alice@client.test\r\nTo: bob@example.test\r\nSubject: test\r\n\r\nHello.\r\n"


def send_one(d, rcpts=("bob@example.test",), body=MSG, **kw):
    """One message over a fresh LMTP connection; returns the Result."""
    with d.lmtp() as c:
        return c.send(SENDER, list(rcpts), body, **kw)


def delivered_ok(r, n=1):
    check(r.mail.code == 250 and r.data.code == 354, "transaction refused: %r" % r)
    expect_codes(r.results, [250] * n)


def client_commands(up, flag=None):
    """Command lines the fake server received, optionally only those with
    the P (plaintext) or T (TLS) flag."""
    return [e[2] for e in up.events() if e[1] == "C" and (flag is None or e[3] == flag)]


def no_plaintext_secrets(up):
    """No AUTH, MAIL, RCPT or DATA ever went over the wire in clear."""
    for line in client_commands(up, "P"):
        verb = line.split(" ", 1)[0].upper()
        check(verb not in ("AUTH", "MAIL", "RCPT", "DATA", "BDAT"),
              "%r sent in plaintext:\n%s" % (line, "\n".join(up.log_lines())))


def temp_failed(r, *needles):
    """Every recipient got a 4xx (never 250) whose text names each needle."""
    replies = r.results if r.data and r.data.code == 354 else r.rcpts or [r.mail]
    check(replies, "no replies: %r" % r)
    for rep in replies:
        check(rep.code // 100 == 4, "expected a 4xx, got %r (all: %r)" % (rep, r))
        for n in needles:
            check(n.lower() in rep.text.lower(), "reply %r does not mention %r" % (rep, n))
