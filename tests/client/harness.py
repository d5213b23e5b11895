"""Shared helpers for the client and sendmail tests: start the fake LMTP
server from a script, run a program against it, read what it recorded."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.environ.get("MAILPOOL_BIN_DIR", ".")
PYTHON = "/usr/bin/python3"


def binary(name):
    for sub in ("", "tests/client"):
        p = os.path.join(BIN, sub, name)
        if os.path.exists(p):
            return p
    raise SystemExit("cannot find %s under %s" % (name, BIN))


class Fake:
    """One fake LMTP server in its own temporary directory."""

    def __init__(self, script=None, start=True):
        self.dir = tempfile.mkdtemp(prefix="mpclient.")
        self.sock = os.path.join(self.dir, "submit.sock")
        self.proc = None
        if start:
            with open(os.path.join(self.dir, "script.json"), "w", encoding="utf-8") as f:
                json.dump(script or {}, f)
            self.proc = subprocess.Popen(
                [PYTHON, os.path.join(HERE, "fake_lmtp.py"), self.sock,
                 os.path.join(self.dir, "script.json"), self.dir])
            deadline = time.monotonic() + 10
            while not os.path.exists(os.path.join(self.dir, "ready")):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("fake server did not start")
                time.sleep(0.02)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)

    def path(self, name):
        return os.path.join(self.dir, name)

    def commands(self):
        try:
            with open(self.path("commands.log"), encoding="latin-1") as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def chunks(self):
        try:
            with open(self.path("chunks.log"), encoding="latin-1") as f:
                return [json.loads(line) for line in f]
        except FileNotFoundError:
            return []

    def data(self, n=1):
        with open(self.path("data-%d.bin" % n), "rb") as f:
            return f.read()

    def has_data(self, n=1):
        return os.path.exists(self.path("data-%d.bin" % n))

    def write(self, name, content):
        mode = "wb" if isinstance(content, bytes) else "w"
        with open(self.path(name), mode) as f:
            f.write(content)
        return self.path(name)


def run(argv, stdin=b"", env_extra=None, timeout=30):
    env = dict(os.environ)
    env.pop("MAILPOOL_SOCKET", None)
    env.update(env_extra or {})
    p = subprocess.run(argv, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=env, timeout=timeout)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def unix_socket_without_listener(path):
    """A bound socket nobody listens on: connecting gives ECONNREFUSED."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    return s


class Check:
    def __init__(self):
        self.failures = 0

    def eq(self, got, want, what):
        if got != want:
            self.failures += 1
            print("FAIL %s:\n  got:  %r\n  want: %r" % (what, got, want))

    def true(self, cond, what):
        if not cond:
            self.failures += 1
            print("FAIL %s" % what)

    def done(self):
        if self.failures:
            print("%d check(s) failed" % self.failures)
            sys.exit(1)
        print("ok")
        sys.exit(0)


def main(cases):
    if len(sys.argv) != 2 or sys.argv[1] not in cases:
        print("usage: %s CASE\ncases: %s" % (sys.argv[0], " ".join(sorted(cases))))
        sys.exit(2)
    c = Check()
    cases[sys.argv[1]](c)
    c.done()
