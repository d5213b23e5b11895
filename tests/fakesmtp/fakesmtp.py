"""Start and stop the fakesmtp test server from Python tests.

    import fakesmtp
    with fakesmtp.start("on rcpt match bob@ reply 550 5.1.1 no such user",
                        tls="starttls") as srv:
        ...connect to ("127.0.0.1", srv.port)...
        srv.wait_log("* message n=1")
        assert srv.messages()[0].rcpts == ["alice@example.com"]

start(script_text="", tls="none", cert="server", ...) -> FakeSMTP
    Runs the fakesmtp binary (FAKESMTP_BIN, else
    $MAILPOOL_BIN_DIR/tests/fakesmtp/fakesmtp) on a kernel-chosen port, in a fresh
    temporary directory, and returns once it listens. script_text is the script
    (see README.md); tls is "none", "starttls" or "implicit"; cert names a
    certificate in tests/certs ("server", "wronghost", "expired", "selfsigned") or
    is a path to a PEM whose key is next to it with a .key suffix.

FakeSMTP
    .host, .port          where it listens
    .pid                  the server's process id
    .workdir, .log_path, .maildir
    .log_lines()          the transcript so far, as a list of str (no newlines)
    .events(conn=None)    transcript lines as (conn, kind, text) tuples, kind is
                          "*" (event), "C" or "S"; C/S tuples carry the P/T flag
                          in a 4th element
    .messages()           accepted messages, as Message objects, by number
    .wait_log(text, timeout=10)  wait until a transcript line contains text;
                          returns that line (raises TimeoutError)
    .stop()               SIGTERM by PID and wait; returns the exit status
    .cleanup()            stop, then remove the temporary directory (also done
                          by the context manager unless FAKESMTP_KEEP is set)
    .stderr()             what the server wrote to stderr
    As a context manager, leaving the block stops the server and raises
    RuntimeError if it did not exit 0 (crash, sanitizer report).

Message: .n, .raw (bytes on the wire, dot-stuffed, with the final ".\\r\\n"),
         .eml (bytes after un-stuffing), .mail_from (str), .rcpts (list of str).
"""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CERTS = os.path.normpath(os.path.join(HERE, "..", "certs"))


def binary():
    """Path of the fakesmtp executable."""
    path = os.environ.get("FAKESMTP_BIN")
    if path:
        return path
    bindir = os.environ.get("MAILPOOL_BIN_DIR")
    if not bindir:
        raise RuntimeError("set FAKESMTP_BIN or MAILPOOL_BIN_DIR")
    return os.path.join(bindir, "tests", "fakesmtp", "fakesmtp")


def cert_paths(cert):
    """(pem, key) for a tests/certs name or a PEM path."""
    if os.sep not in cert and not cert.endswith(".pem"):
        cert = os.path.join(CERTS, cert + ".pem")
    return cert, cert[: -len(".pem")] + ".key" if cert.endswith(".pem") else cert + ".key"


class Message:
    def __init__(self, n, raw, eml, env):
        self.n = n
        self.raw = raw
        self.eml = eml
        lines = env.decode("utf-8", "surrogateescape").splitlines()
        self.mail_from = lines[0][len("MAIL FROM:<") : -1] if lines else None
        self.rcpts = [l[len("RCPT TO:<") : -1] for l in lines[1:]]

    def __repr__(self):
        return "Message(n=%d, from=%r, rcpts=%r, %d bytes)" % (
            self.n,
            self.mail_from,
            self.rcpts,
            len(self.eml),
        )


_LINE = re.compile(r"^(\d+) (?:\* (.*)|([PT]) ([CS]): (.*))$")


class FakeSMTP:
    def __init__(self, proc, host, port, workdir, own_workdir):
        self.proc = proc
        self.pid = proc.pid
        self.host = host
        self.port = port
        self.workdir = workdir
        self.log_path = os.path.join(workdir, "transcript.log")
        self.maildir = os.path.join(workdir, "maildir")
        self._own = own_workdir
        self.returncode = None

    def log_lines(self):
        try:
            with open(self.log_path, "r", encoding="utf-8", errors="surrogateescape") as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def events(self, conn=None):
        out = []
        for line in self.log_lines():
            m = _LINE.match(line)
            if not m:
                continue
            c = int(m.group(1))
            if conn is not None and c != conn:
                continue
            if m.group(2) is not None:
                out.append((c, "*", m.group(2)))
            else:
                out.append((c, m.group(4), m.group(5), m.group(3)))
        return out

    def messages(self):
        msgs = []
        if not os.path.isdir(self.maildir):
            return msgs
        nums = sorted(
            int(m.group(1))
            for m in (re.match(r"^msg-(\d+)\.env$", f) for f in os.listdir(self.maildir))
            if m
        )
        for n in nums:
            base = os.path.join(self.maildir, "msg-%d." % n)
            with open(base + "raw", "rb") as f:
                raw = f.read()
            with open(base + "eml", "rb") as f:
                eml = f.read()
            with open(base + "env", "rb") as f:
                env = f.read()
            msgs.append(Message(n, raw, eml, env))
        return msgs

    def wait_log(self, text, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_lines():
                if text in line:
                    return line
            if time.monotonic() > deadline:
                raise TimeoutError("no transcript line containing %r:\n%s"
                                   % (text, "\n".join(self.log_lines())))
            time.sleep(0.02)

    def stop(self, timeout=10.0):
        if self.returncode is not None:
            return self.returncode
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait()
            raise RuntimeError("fakesmtp pid %d ignored SIGTERM" % self.pid)
        return self.returncode

    def cleanup(self):
        self.stop()
        if self._own and not os.environ.get("FAKESMTP_KEEP"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def stderr(self):
        try:
            with open(os.path.join(self.workdir, "stderr"), "r") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        rc = self.stop()
        err = self.stderr()
        self.cleanup()
        # A crash or sanitizer report in the server fails the test that used it.
        if exc_type is None and rc != 0:
            raise RuntimeError("fakesmtp exited with status %s:\n%s" % (rc, err))
        return False


def start(script_text="", tls="none", cert="server", listen="127.0.0.1:0", maildir=True,
          workdir=None, extra_args=(), timeout=10.0):
    exe = binary()
    own = workdir is None
    if own:
        workdir = tempfile.mkdtemp(prefix="fakesmtp-")
    try:
        return _start(exe, workdir, own, script_text, tls, cert, listen, maildir, extra_args,
                      timeout)
    except BaseException:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
        raise


def _start(exe, workdir, own, script_text, tls, cert, listen, maildir, extra_args, timeout):
    script = os.path.join(workdir, "script")
    with open(script, "w") as f:
        f.write(script_text)
    port_file = os.path.join(workdir, "port")
    args = [exe, "--listen", listen, "--port-file", port_file,
            "--log", os.path.join(workdir, "transcript.log"), "--script", script, "--tls", tls]
    if maildir:
        args += ["--maildir", os.path.join(workdir, "maildir")]
    if tls != "none":
        pem, key = cert_paths(cert)
        args += ["--cert", pem, "--key", key]
    args += list(extra_args)
    with open(os.path.join(workdir, "stderr"), "wb") as err:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err)
    deadline = time.monotonic() + timeout
    while not os.path.exists(port_file):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            with open(os.path.join(workdir, "stderr")) as f:
                msg = f.read()
            raise RuntimeError("fakesmtp did not start (status %s): %s" % (proc.returncode, msg))
        time.sleep(0.01)
    with open(port_file) as f:
        port = int(f.read())
    host = listen.rsplit(":", 1)[0].strip("[]")
    return FakeSMTP(proc, host, port, workdir, own)
