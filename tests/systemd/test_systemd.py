#!/usr/bin/python3
"""mailpoold under systemd's protocols, with systemd's side played by the test.

Socket activation through systemd-socket-activate (named and unnamed
descriptors), the NOTIFY_SOCKET messages (READY=1 once the sockets work,
STATUS=, RELOADING=1/READY=1 on SIGHUP, watchdog pings at WATCHDOG_USEC,
STOPPING=1), SIGTERM in the middle of a transaction, and the journald
priority prefixes.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integ"))
from mpharness import (LMTP, MSG, SANITIZER_MARKS, SENDER, ConnectionClosed,  # noqa: E402
                       TestFailure, binary, check, delivered_ok, main, stop_pid, wait_for)


class Proc:
    """A daemon started with a custom command line and environment; stopped
    by PID at the end of the case."""

    def __init__(self, scope, argv, env, workdir):
        self.log_path = os.path.join(workdir, "stderr.log")
        full = dict(os.environ)
        full.update(env)
        with open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                         env=full)
        self.pid = self.proc.pid
        self.stopped = False
        scope.on_cleanup(self._cleanup)

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "backslashreplace")

    def wait_log(self, text, timeout=10.0):
        return wait_for(lambda: text in self.log(), timeout,
                        lambda: "daemon log line %r\n%s" % (text, self.log()))

    def check_clean(self):
        text = self.log()
        for mark in SANITIZER_MARKS:
            check(mark not in text, "sanitizer report in the daemon log:\n" + text)

    def stop(self):
        """SIGTERM; it must exit 0 with a clean log."""
        self.stopped = True
        check(self.proc.poll() is None,
              "mailpoold died (status %s):\n%s" % (self.proc.returncode, self.log()))
        status, killed = stop_pid(self.proc, timeout=40)
        check(not killed, "mailpoold ignored SIGTERM:\n" + self.log())
        self.check_clean()
        check(status == 0, "mailpoold exited with %d after SIGTERM:\n%s" % (status, self.log()))

    def _cleanup(self):
        if not self.stopped:
            self.stopped = True
            stop_pid(self.proc)
            self.check_clean()


class NotifySocket:
    """systemd's end of NOTIFY_SOCKET: a datagram socket collecting every
    message with its arrival time."""

    def __init__(self, scope, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.1)
        self.msgs = []  # (monotonic time, [lines])
        self.lock = threading.Lock()
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        scope.on_cleanup(self.close)

    def _run(self):
        while self.running:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.msgs.append((time.monotonic(), data.decode("utf-8", "replace").split("\n")))

    def close(self):
        self.running = False
        self.thread.join(2)
        self.sock.close()

    def lines(self):
        """Every line received so far, in order, with the time of its datagram."""
        with self.lock:
            return [(t, l) for t, ls in self.msgs for l in ls if l]

    def wait(self, line, after=0.0, timeout=10.0):
        """The time of the first `line` (exact) received after `after`."""
        def find():
            for t, l in self.lines():
                if t >= after and l == line:
                    return t
            return None
        return wait_for(find, timeout, lambda: "notify %r; got %r" % (line, self.texts()))

    def texts(self):
        return [l for _, l in self.lines()]


def control(path, line):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sk:
        sk.settimeout(20)
        sk.connect(path)
        sk.sendall((line + "\n").encode())
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sk.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf)


def write_conf(s, work, up, **kw):
    text = s.config(s.relay(up.port), **kw)
    conf = os.path.join(work, "mailpool.conf")
    with open(conf, "w") as f:
        f.write(text.replace("@SOCKET@", os.path.join(work, "submit.sock"))
                .replace("@CONTROL@", os.path.join(work, "control.sock"))
                .replace("@SPOOL@", os.path.join(work, "spool")))
    return conf


def activate(s, work, conf, sockets, names):
    """mailpoold -c conf under systemd-socket-activate listening on `sockets`."""
    argv = ["systemd-socket-activate"]
    for p in sockets:
        argv += ["-l", p]
    if names:
        argv.append("--fdname=" + ":".join(names))
    # It passes only the variables it is told to; keep sanitizer settings.
    for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"):
        if k in os.environ:
            argv += ["-E", "%s=%s" % (k, os.environ[k])]
    argv += [binary("mailpoold"), "-c", conf]
    d = Proc(s, argv, {}, work)
    wait_for(lambda: all(os.path.exists(p) for p in sockets) or d.proc.poll() is not None, 10,
             "systemd-socket-activate to listen")
    check(d.proc.poll() is None, "systemd-socket-activate exited:\n" + d.log())
    return d


def case_socket_activation_named(s):
    """Both sockets passed by name; the configured paths are elsewhere, so
    only the passed descriptors can be serving.  Neither file is removed at
    exit (systemd owns them)."""
    up = s.fakesmtp("")
    work = s.subdir("activate")
    conf = write_conf(s, work, up)
    act_submit = os.path.join(work, "act-submit.sock")
    act_control = os.path.join(work, "act-control.sock")
    # Control first on the command line: the daemon must go by name, not order.
    d = activate(s, work, conf, [act_control, act_submit], ["control", "submit"])
    # The first connection makes systemd-socket-activate start the daemon.
    c = LMTP(act_submit)
    s.on_cleanup(c.close)
    r = c.send(SENDER, ["bob@example.test"], MSG)
    delivered_ok(r)
    c.close()
    check(len(up.messages()) == 1, "upstream got %r" % up.messages())
    st = control(act_control, "status")
    check(isinstance(st, dict) and st.get("ok") is True, "control status: %r" % st)
    d.wait_log("socket activation: submit=passed control=passed")
    check(not os.path.exists(os.path.join(work, "submit.sock")),
          "the daemon bound the configured submission socket itself")
    check(not os.path.exists(os.path.join(work, "control.sock")),
          "the daemon bound the configured control socket itself")
    d.stop()
    check(os.path.exists(act_submit) and os.path.exists(act_control),
          "the daemon removed socket files it did not create")


def case_socket_activation_by_path(s):
    """Unnamed descriptors are matched to the sockets by their bound path;
    a socket that is not passed is bound by the daemon itself."""
    up = s.fakesmtp("")
    work = s.subdir("activate")
    conf = write_conf(s, work, up)
    submit = os.path.join(work, "submit.sock")
    d = activate(s, work, conf, [submit], None)
    with LMTP(submit) as c:
        delivered_ok(c.send(SENDER, ["bob@example.test"], MSG))
    d.wait_log("socket activation: submit=passed control=bound")
    st = control(os.path.join(work, "control.sock"), "status")
    check(st.get("ok") is True, "control status: %r" % st)
    d.stop()
    check(os.path.exists(submit), "the passed submission socket was removed")
    check(not os.path.exists(os.path.join(work, "control.sock")),
          "the daemon left its own control socket behind")


def case_socket_activation_wrong_type(s):
    """A passed descriptor that is not a listening Unix stream socket is a
    start-up error, not a daemon serving nothing."""
    up = s.fakesmtp("")
    work = s.subdir("activate")
    conf = write_conf(s, work, up)
    path = os.path.join(work, "dgram.sock")
    argv = ["systemd-socket-activate", "--datagram", "-l", path, "--fdname=submit",
            binary("mailpoold"), "-c", conf]
    d = Proc(s, argv, {}, work)
    wait_for(lambda: os.path.exists(path), 10, "the datagram socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sk:
        sk.sendto(b"x", path)  # triggers the start
    wait_for(lambda: d.proc.poll() is not None, 15, lambda: "mailpoold to exit:\n" + d.log())
    d.stopped = True
    check(d.proc.returncode == 1, "exit status %d:\n%s" % (d.proc.returncode, d.log()))
    check("not a listening Unix stream socket" in d.log(), d.log())


def supervised(s, up=None, watchdog_usec=None, watchdog_pid="self", extra_env=None, **kw):
    """The daemon with NOTIFY_SOCKET (and WATCHDOG_USEC/WATCHDOG_PID) as
    systemd would start it.  Returns (Proc, NotifySocket, work dir)."""
    up = up or s.fakesmtp("")
    work = s.subdir("notify")
    conf = write_conf(s, work, up, **kw)
    ns = NotifySocket(s, os.path.join(work, "notify.sock"))
    env = {"NOTIFY_SOCKET": ns.path}
    env.update(extra_env or {})
    argv = [binary("mailpoold"), "-c", conf]
    if watchdog_usec is not None:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
        if watchdog_pid == "self":
            # exec keeps the PID, so the daemon sees its own PID there, as under systemd.
            argv = ["/bin/sh", "-c", 'WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$@"', "sh"] + argv
        elif watchdog_pid is not None:
            env["WATCHDOG_PID"] = str(watchdog_pid)
    d = Proc(s, argv, env, work)
    return d, ns, work


def case_notify_lifecycle(s):
    """READY=1 only once both sockets accept; STATUS= follows the traffic;
    SIGHUP gives RELOADING=1 then READY=1; SIGTERM gives STOPPING=1 and exit 0."""
    up = s.fakesmtp("")
    d, ns, work = supervised(s, up)
    t_ready = ns.wait("READY=1", timeout=15)
    # Connecting right when READY=1 arrived: both must already accept.
    with LMTP(os.path.join(work, "submit.sock")) as c:
        check(c.greeting.code == 220, "greeting %r" % c.greeting)
        delivered_ok(c.send(SENDER, ["bob@example.test"], MSG))
    check(control(os.path.join(work, "control.sock"), "status").get("ok") is True,
          "control socket not ready at READY=1")
    status = [l for l in ns.texts() if l.startswith("STATUS=")]
    check(status and status[0] == "STATUS=1 relays, 0 connections, 0 clients, 0 queued",
          "first STATUS=: %r" % status)
    # The relay keeps its session warm after the message: STATUS= says so within a second or two.
    wait_for(lambda: "STATUS=1 relays, 1 connections, 0 clients, 0 queued" in ns.texts(), 5,
             lambda: "STATUS= with the warm connection; got %r" % ns.texts())
    check(not any(l.startswith("WATCHDOG=") for l in ns.texts()),
          "watchdog pings without WATCHDOG_USEC")

    os.kill(d.pid, signal.SIGHUP)
    t_rel = ns.wait("RELOADING=1", after=t_ready)
    ns.wait("READY=1", after=t_rel + 1e-9)
    d.wait_log("reload: config=")
    check(any(l.startswith("MONOTONIC_USEC=") for l in ns.texts()),
          "RELOADING=1 without MONOTONIC_USEC=: %r" % ns.texts())

    # A bad file is refused: RELOADING=1 and READY=1 again, still running.
    conf = os.path.join(work, "mailpool.conf")
    with open(conf, "a") as f:
        f.write("nonsense = ;\n")
    t_hup = time.monotonic()
    os.kill(d.pid, signal.SIGHUP)
    t_rel2 = ns.wait("RELOADING=1", after=t_hup)
    ns.wait("READY=1", after=t_rel2 + 1e-9)
    d.wait_log("reload refused")

    t_term = time.monotonic()
    d.stop()
    t_stop = ns.wait("STOPPING=1", after=t_term, timeout=2)
    check(t_stop >= t_term, "STOPPING=1 before SIGTERM")


def case_notify_watchdog(s):
    """WATCHDOG_USEC=400000 with our PID: a ping every 200 ms from the loop."""
    d, ns, work = supervised(s, watchdog_usec=400000)
    t0 = ns.wait("READY=1", timeout=15)
    time.sleep(2.05)
    pings = [t for t, l in ns.lines() if l == "WATCHDOG=1" and t >= t0]
    check(8 <= len(pings) <= 13, "%d pings in 2 s at 200 ms: %r" % (len(pings), pings))
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    check(max(gaps) < 0.4, "a gap of %.3f s between pings (timeout 0.4 s)" % max(gaps))
    d.wait_log("watchdog: pinging every 200 ms")
    d.stop()


def case_notify_watchdog_other_pid(s):
    """WATCHDOG_PID naming another process: the variables are not for us, no pings."""
    d, ns, work = supervised(s, watchdog_usec=200000, watchdog_pid=1)
    ns.wait("READY=1", timeout=15)
    time.sleep(0.6)
    check("WATCHDOG=1" not in ns.texts(), "pings for another PID's watchdog: %r" % ns.texts())
    d.stop()


def case_sigterm_mid_transaction(s):
    """SIGTERM while a client is inside DATA: STOPPING=1, no new clients, the
    transaction finishes with the upstream's 250, then exit 0."""
    up = s.fakesmtp("")
    d, ns, work = supervised(s, up)
    ns.wait("READY=1", timeout=15)
    submit = os.path.join(work, "submit.sock")
    c = LMTP(submit)
    s.on_cleanup(c.close)
    c.sendall(b"MAIL FROM:<%s>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n" % SENDER.encode())
    check(c.reply().code == 250 and c.reply().code == 250, "MAIL/RCPT refused")
    check(c.reply().code == 354, "DATA refused")
    c.sendall(b"Subject: in flight\r\n\r\nfirst half\r\n")
    t = time.monotonic()
    os.kill(d.pid, signal.SIGTERM)
    ns.wait("STOPPING=1", after=t)
    d.wait_log("stopping")
    # New clients are turned away (refused, or closed without a greeting).
    try:
        with LMTP(submit, timeout=3) as late:
            raise TestFailure("a new client was greeted while stopping: %r" % late.greeting)
    except (OSError, ConnectionClosed, TestFailure) as e:
        if "was greeted" in str(e):
            raise
    time.sleep(0.5)
    check(d.proc.poll() is None, "the daemon exited with a transaction in flight:\n" + d.log())
    c.sendall(b"second half\r\n.\r\n")
    r = c.reply()
    check(r.code == 250, "end of data: %r" % r)
    msgs = up.messages()
    check(len(msgs) == 1 and b"second half" in msgs[0].eml, "upstream got %r" % msgs)
    c.close()
    wait_for(lambda: d.proc.poll() is not None, 15, lambda: "mailpoold to exit:\n" + d.log())
    d.stopped = True
    d.check_clean()
    check(d.proc.returncode == 0, "exit status %d:\n%s" % (d.proc.returncode, d.log()))


def case_journal_prefixes(s):
    """<N> priority prefixes only when stderr is the stream JOURNAL_STREAM names."""
    up = s.fakesmtp("")
    work = s.subdir("plain")
    conf = write_conf(s, work, up)
    plain = Proc(s, [binary("mailpoold"), "-c", conf], {"JOURNAL_STREAM": "1:1"}, work)
    plain.wait_log("started")
    plain.stop()
    lines = plain.log().splitlines()
    check(lines and not any(l.startswith("<") for l in lines), "prefixes: %r" % lines[:3])

    work2 = s.subdir("journal")
    conf2 = write_conf(s, work2, up)
    log = os.path.join(work2, "stderr.log")
    open(log, "wb").close()
    st = os.stat(log)
    # Proc reopens the same file (truncating, same inode), as journald's stream would be.
    j = Proc(s, [binary("mailpoold"), "-c", conf2],
             {"JOURNAL_STREAM": "%d:%d" % (st.st_dev, st.st_ino)}, work2)
    j.wait_log("started")
    j.stop()
    lines = j.log().splitlines()
    check(lines and all(l[:3] in ("<3>", "<4>", "<6>", "<7>") for l in lines),
          "lines without a prefix: %r" % lines[:5])


CASES = {name[len("case_"):]: fn for name, fn in sorted(globals().items())
         if name.startswith("case_")}

if __name__ == "__main__":
    main(CASES)
