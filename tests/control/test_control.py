"""The control socket and mailpoolctl, end to end: the real mailpoold with a
relay to the scripted fake SMTP server, one CTest entry per case
(ctest -R control_).  Uses the integration harness (tests/integ/mpharness.py)
for processes and clean-up: everything started is stopped by PID.

Run one case by hand:
    MAILPOOL_BIN_DIR=build /usr/bin/python3 tests/control/test_control.py status_fields
"""

import json
import os
import pwd
import socket
import stat
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integ"))
from mpharness import (MSG, SENDER, Daemon, TestFailure, binary, check,  # noqa: E402
                       client_commands, delivered_ok, main, send_one, wait_for)

MAX_LINE = 1024  # MAILPOOL_MAX_CONTROL_LINE in common/proto.h


# ---- helpers ---------------------------------------------------------------------


def _project_version():
    """The version the build was configured with (top-level CMakeLists.txt)."""
    import re
    src = os.environ.get("MAILPOOL_SRC_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
    with open(os.path.join(src, "CMakeLists.txt")) as f:
        return re.search(r"project\(mailpool VERSION ([0-9.]+)", f.read()).group(1)


MAILPOOL_VERSION = _project_version()


def start(s, up_port=None, tls=None, **kw):
    """mailpoold with one relay "up" (to fakesmtp unless up_port is given) and
    its control socket in the case's directory.  Returns (daemon, upstream)."""
    up = None
    if up_port is None:
        up = s.fakesmtp("", tls=tls or "none")
        up_port = up.port
    options = ("extended", "secure_implicit") if tls == "implicit" else ("extended",)
    ctl = os.path.join(s.subdir("ctl"), "control.sock")
    d = s.daemon(s.relay(up_port, options=options), extra_daemon='control_socket = "%s";' % ctl,
                 **kw)
    d.control = ctl

    def accepts():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sk:
            try:
                sk.connect(ctl)
                return True
            except OSError:
                return False
    # The submission socket is ready first; the file appears at bind(), before listen().
    wait_for(accepts, 5, "the control socket")
    return d, up


def connect(d, timeout=10.0):
    # A Unix socket whose listen backlog is full refuses a non-blocking
    # connect with EAGAIN instead of waiting; retry until the daemon has
    # accepted the earlier connections (bounded by the timeout).
    deadline = time.monotonic() + timeout
    while True:
        sk = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sk.settimeout(timeout)
        try:
            sk.connect(d.control)
            return sk
        except BlockingIOError:
            sk.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def read_lines(sk, limit=1 << 22):
    """Everything the daemon sends until it closes, as a list of lines."""
    buf = b""
    while True:
        try:
            chunk = sk.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        buf += chunk
        check(len(buf) <= limit, "answer over %d bytes" % limit)
    check(buf == b"" or buf.endswith(b"\n"), "answer does not end in a line end: %r" % buf[-200:])
    return buf.decode("ascii").splitlines() if buf else []


def exchange(d, data, shutdown=True):
    """Send raw bytes, half-close, return the lines until the daemon closes."""
    with connect(d) as sk:
        sk.sendall(data)
        if shutdown:
            sk.shutdown(socket.SHUT_WR)
        return read_lines(sk)


def request(d, line):
    """One request line; returns (raw answer line, parsed JSON)."""
    lines = exchange(d, line.encode() + b"\n")
    check(len(lines) == 1, "expected one answer line to %r, got %r" % (line, lines))
    return lines[0], json.loads(lines[0])


def expect_error(obj, needle):
    check(obj.get("ok") is False, "expected ok=false: %r" % obj)
    check(isinstance(obj.get("error"), str) and needle in obj["error"],
          "error %r does not mention %r" % (obj.get("error"), needle))


def ctl(d, *args, env_extra=None, socket_arg=True, timeout=30):
    """Run mailpoolctl; returns (exit status, stdout, stderr)."""
    env = dict(os.environ)
    env.pop("MAILPOOL_CONTROL_SOCKET", None)
    env.update(env_extra or {})
    argv = [binary("mailpoolctl")]
    if socket_arg:
        argv += ["-s", d.control]
    p = subprocess.run(argv + list(args), stdin=subprocess.DEVNULL, capture_output=True,
                       env=env, timeout=timeout)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def sanitized(d):
    """True when the daemon runs with AddressSanitizer (memory figures mean little)."""
    with open("/proc/%d/maps" % d.pid) as f:
        return "libasan" in f.read()


def parents(path):
    """Every directory above path, for permission checks."""
    out = []
    path = os.path.dirname(os.path.abspath(path))
    while True:
        out.append(path)
        if path == "/":
            return out
        path = os.path.dirname(path)


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def status_ok(d):
    _, st = request(d, "status")
    check(st.get("ok") is True, "status refused: %r" % st)
    return st


# ---- the protocol ----------------------------------------------------------------


def case_status_fields(s):
    d, _ = start(s)
    raw, st = request(d, "status")
    check(raw.startswith("{") and " " not in raw, "not one compact JSON line: %r" % raw)
    want = {"v": int, "ok": bool, "version": str, "uptime": int, "pid": int, "clients": int,
            "busy_clients": int, "relays": int, "sessions": int, "waiting": int,
            "messages": int, "queued": int}
    check(set(st) == set(want), "status members %r, want %r" % (sorted(st), sorted(want)))
    for k, t in want.items():
        check(isinstance(st[k], t) and (t is bool or not isinstance(st[k], bool)),
              "status %s=%r is not %s" % (k, st[k], t.__name__))
    check(st["ok"] is True and st["version"] == MAILPOOL_VERSION, "status: %r" % st)
    check(st["pid"] == d.pid, "pid %r, daemon is %d" % (st["pid"], d.pid))
    check(st["relays"] == 1 and st["messages"] == 0 and st["sessions"] == 0
          and st["queued"] == 0, "status: %r" % st)
    check(0 <= st["uptime"] < 60, "uptime %r" % st["uptime"])
    # A connected LMTP client is counted; one in a transaction is busy.
    c = d.lmtp()
    c.cmd("MAIL FROM:<%s>" % SENDER)
    st = status_ok(d)
    check(st["clients"] == 1 and st["busy_clients"] == 1, "clients while busy: %r" % st)
    c.cmd("RSET")
    st = status_ok(d)
    check(st["clients"] == 1 and st["busy_clients"] == 0, "clients after RSET: %r" % st)
    c.close()
    wait_for(lambda: status_ok(d)["clients"] == 0, 5, "clients back to 0")
    time.sleep(1.1)
    check(status_ok(d)["uptime"] >= 1, "uptime does not advance")
    # The answer line may end in CRLF on the request side too.
    lines = exchange(d, b"status\r\n")
    check(len(lines) == 1 and json.loads(lines[0])["ok"] is True, "CRLF request: %r" % lines)


def case_pool_reuse(s):
    d, up = start(s)
    _, p = request(d, "pool")
    check(p["ok"] is True and len(p["relays"]) == 1, "pool: %r" % p)
    check(p["relays"][0]["name"] == "up" and p["relays"][0]["connections"] == [],
          "pool before any mail: %r" % p)
    delivered_ok(send_one(d))
    delivered_ok(send_one(d))
    up.wait_log("* message n=2")
    _, p = request(d, "pool")
    rel = p["relays"][0]
    check(len(rel["connections"]) == 1, "expected one connection: %r" % rel)
    conn = rel["connections"][0]
    check(conn["host"] == "127.0.0.1:%d" % up.port, "host: %r" % conn)
    check(conn["state"] == "idle" and conn["messages"] == 2, "connection: %r" % conn)
    check(conn["tls_version"] is None and conn["tls_cipher"] is None
          and conn["tls_resumed"] is False, "plaintext connection shows TLS: %r" % conn)
    check(is_int(conn["age"]) and conn["age"] >= 0, "age: %r" % conn)
    check(is_int(conn["idle"]) and 0 <= conn["idle"] <= conn["age"], "idle: %r" % conn)
    for k, v in (("sessions", 1), ("idle", 1), ("opening", 0), ("waiting", 0), ("opened", 1),
                 ("reused", 1), ("failed", 0), ("messages", 2), ("retried", 0)):
        check(rel.get(k) == v, "relay %s=%r, want %r: %r" % (k, rel.get(k), v, rel))
    st = status_ok(d)
    check(st["messages"] == 2 and st["sessions"] == 1, "status after two messages: %r" % st)


def case_pool_tls(s):
    d, up = start(s, tls="implicit")
    delivered_ok(send_one(d))
    _, p = request(d, "pool")
    conns = p["relays"][0]["connections"]
    check(len(conns) == 1, "connections: %r" % conns)
    c = conns[0]
    check(c["tls_version"] in ("TLSv1.2", "TLSv1.3"), "tls_version: %r" % c)
    check(isinstance(c["tls_cipher"], str) and c["tls_cipher"], "tls_cipher: %r" % c)
    check(c["tls_resumed"] is False, "first session resumed: %r" % c)
    # The fake server saw the same protocol version.
    tls_event = [l for l in up.log_lines() if "* tls version=" in l]
    check(tls_event and ("version=%s " % c["tls_version"]) in tls_event[0],
          "fakesmtp saw %r, pool says %r" % (tls_event, c))


def case_unknown_command(s):
    d, _ = start(s)
    raw, obj = request(d, "frobnicate")
    check(raw == '{"v":1,"ok":false,"code":"unknown_command","error":"unknown command \\"frobnicate\\""}',
          "unknown command answer: %r" % raw)
    # Quotes and backslashes in the name come back escaped, as valid JSON.
    _, obj = request(d, 'x"y\\z')
    expect_error(obj, 'unknown command "x"y\\z"')
    # Wrong argument counts are refused; the connection stays usable.
    lines = exchange(d, b"status extra\npool\n\n   \n")
    check(len(lines) == 4, "answers: %r" % lines)
    expect_error(json.loads(lines[0]), "usage: status")
    check(json.loads(lines[1])["ok"] is True, "pool after an error: %r" % lines)
    expect_error(json.loads(lines[2]), "empty request")
    expect_error(json.loads(lines[3]), "empty request")
    check(d.alive(), "daemon died")


def case_pipelined(s):
    d, _ = start(s)
    lines = exchange(d, b"status\npool\r\nnope\nstatus")  # the last one ends at EOF
    check(len(lines) == 4, "answers: %r" % lines)
    objs = [json.loads(l) for l in lines]
    check("uptime" in objs[0] and "relays" in objs[1] and isinstance(objs[1]["relays"], list),
          "order of answers: %r" % objs)
    expect_error(objs[2], 'unknown command "nope"')
    check("uptime" in objs[3], "request ended by EOF: %r" % objs[3])
    # Without the half-close the daemon answers at once and keeps the connection.
    with connect(d) as sk:
        f = sk.makefile("rb")
        for _ in range(3):
            sk.sendall(b"status\n")
            check(json.loads(f.readline())["ok"] is True, "interactive status")


def case_long_line(s):
    d, _ = start(s)
    # Exactly the limit is accepted (an unknown command, but answered) ...
    lines = exchange(d, b"a" * MAX_LINE + b"\r\n")
    check(len(lines) == 1, "answers: %r" % lines)
    expect_error(json.loads(lines[0]), "unknown command")
    # ... one byte more is refused and the connection closed, with or without a line end.
    for data, shut in ((b"a" * (MAX_LINE + 1) + b"\n", False), (b"b" * 100000, False),
                       (b"status\n" + b"c" * (1 << 20), False)):
        with connect(d) as sk:
            try:
                sk.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the daemon may close before everything was sent
            lines = read_lines(sk)
        check(lines, "no answer to a long line")
        expect_error(json.loads(lines[-1]), "too long")
        if data.startswith(b"status"):
            check(len(lines) == 2 and json.loads(lines[0])["ok"] is True,
                  "request before the long line: %r" % lines)
    check(status_ok(d)["ok"], "status after long lines")


def case_binary_garbage(s):
    d, _ = start(s)
    for data in (b"\x00\x01\x02\xff\xfe\n", b"stat\x00us\n", b"\x1b[2J\x1b]0;pwned\x07\n",
                 b"status \xc3\xa9\n", bytes(range(256)) * 4, b"\r\n\r\n\x7f\n"):
        with connect(d) as sk:
            try:
                sk.sendall(data)
                sk.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass
            lines = read_lines(sk)
        check(lines, "no answer to %r" % data[:20])
        last = json.loads(lines[-1])  # always valid, ASCII JSON
        check(last["ok"] is False, "garbage accepted: %r -> %r" % (data[:20], lines))
    with connect(d) as sk:
        sk.sendall(b"\x01\nstatus\n")
        lines = read_lines(sk)
    check(len(lines) == 1, "the connection should close after garbage: %r" % lines)
    expect_error(json.loads(lines[0]), "printable")
    check(status_ok(d)["ok"], "status after garbage")


def case_empty_connection(s):
    d, _ = start(s)
    # Connect and close at once: nothing to answer.
    check(exchange(d, b"") == [], "answer to an empty request stream")
    # Connect and say nothing: dropped after a few seconds with an error line.
    t0 = time.monotonic()
    with connect(d, timeout=20) as sk:
        lines = read_lines(sk)
    took = time.monotonic() - t0
    check(2 <= took <= 12, "silent client dropped after %.1fs" % took)
    check(len(lines) == 1, "answers: %r" % lines)
    expect_error(json.loads(lines[0]), "timed out")
    # A trickle of bytes that never completes a line is dropped the same way.
    t0 = time.monotonic()
    with connect(d, timeout=20) as sk:
        got = []
        try:
            for ch in b"stat":
                sk.sendall(bytes([ch]))
                time.sleep(2)
        except (BrokenPipeError, ConnectionResetError):
            pass
        got = read_lines(sk)
    check(time.monotonic() - t0 <= 14, "slowloris kept its connection")
    check(got and json.loads(got[-1])["ok"] is False, "slowloris answer: %r" % got)
    check(status_ok(d)["ok"], "status after idle clients")


def case_connect_cycles(s):
    d, _ = start(s)
    rss0 = d.rss_kb()
    for i in range(500):
        sk = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sk.connect(d.control)
        if i % 2:
            sk.sendall(b"status\n")  # and leave without reading the answer
        sk.close()
    st = status_ok(d)
    check(st["pid"] == d.pid, "status after 500 cycles: %r" % st)
    # Some growth from allocator caches is fine; a per-connection leak is not.
    # (AddressSanitizer's quarantine holds freed memory, so only without it.)
    if not sanitized(d):
        check(d.rss_kb() - rss0 < 4096, "RSS grew from %d to %d kB" % (rss0, d.rss_kb()))


def case_many_clients(s):
    d, _ = start(s)
    socks = [connect(d) for _ in range(100)]
    for sk in socks:
        sk.sendall(b"status\n")
    for sk in socks:
        f = sk.makefile("rb")
        check(json.loads(f.readline())["ok"] is True, "one of 100 clients got no status")
        sk.close()


def case_slow_reader(s):
    d, _ = start(s)
    rss0 = d.rss_kb()
    # A client that pipelines requests and reads nothing: the daemon answers
    # until a bounded amount is queued, then stops reading, so the client's
    # sends block long before it has sent 20 MB of requests.
    hog = connect(d)
    hog.setblocking(False)
    chunk = b"pool\n" * 1000
    sent = 0
    stalled_since = None
    while sent < 4000000:
        try:
            n = hog.send(chunk)
            sent += n
            stalled_since = None
        except BlockingIOError:
            if stalled_since is None:
                stalled_since = time.monotonic()
            elif time.monotonic() - stalled_since > 1.0:
                break
            time.sleep(0.01)
    check(stalled_since is not None, "the daemon read %d bytes of requests without pause" % sent)
    print("stalled after %d bytes of requests" % sent)
    # ... meanwhile others are served, and memory stays bounded.
    for _ in range(5):
        check(status_ok(d)["ok"], "status while a client does not read")
    check(sanitized(d) or d.rss_kb() - rss0 < 16384, "RSS grew from %d to %d kB" % (rss0, d.rss_kb()))
    # When it reads, it gets one complete answer per request, in order.
    requests = sent // 5 + (1 if sent % 5 else 0)
    hog.setblocking(True)
    hog.settimeout(30)
    hog.shutdown(socket.SHUT_WR)
    lines = read_lines(hog, limit=1 << 30)
    hog.close()
    check(len(lines) == requests, "sent %d requests, got %d answers" % (requests, len(lines)))
    check(all(l.startswith('{"v":1,"ok":true,"relays":[') for l in lines[:-1]),
          "answers: %r" % lines[:3])


def case_socket_mode(s):
    d, _ = start(s)
    mode = stat.S_IMODE(os.stat(d.control).st_mode)
    check(mode == 0o660, "control socket mode %o, want 660" % mode)
    d.stop()
    check(not os.path.exists(d.control), "control socket left behind at exit")


def case_permission_denied(s):
    if os.geteuid() != 0:
        print("skipped: needs root to connect as another user")
        sys.exit(77)
    d, _ = start(s)
    nobody = pwd.getpwnam("nobody")
    # The file mode alone keeps other users out ...
    for path in (s.dir, os.path.dirname(d.control)):
        os.chmod(path, 0o755)
    code = ("import socket,sys\n"
            "s=socket.socket(socket.AF_UNIX)\n"
            "try:\n s.connect(sys.argv[1])\nexcept PermissionError:\n print('EACCES'); sys.exit()\n"
            "try:\n s.sendall(b'status\\n'); s.shutdown(socket.SHUT_WR)\n"
            "except OSError:\n pass\n"
            "print(s.makefile('rb').read().decode())\n")

    def as_nobody():
        os.setgid(nobody.pw_gid)
        os.setgroups([])
        os.setuid(nobody.pw_uid)

    def run():
        p = subprocess.run(["/usr/bin/python3", "-c", code, d.control], capture_output=True,
                           preexec_fn=as_nobody, timeout=20)
        check(p.returncode == 0, "client as nobody failed: %r" % p.stderr)
        return p.stdout.decode().strip()
    check(run() == "EACCES", "nobody could connect to a 0660 socket")
    # ... and the peer credentials are checked too, when the mode is opened up.
    os.chmod(d.control, 0o666)
    out = run()
    check(out == '{"v":1,"ok":false,"code":"permission_denied","error":"permission denied"}', "nobody got: %r" % out)
    # mailpoolctl reports it as permission denied (exit 77), when nobody may run it from here.
    if os.access(binary("mailpoolctl"), os.X_OK) and all(
            os.stat(p).st_mode & 0o001 for p in parents(binary("mailpoolctl"))):
        p = subprocess.run([binary("mailpoolctl"), "-s", d.control, "status"],
                           capture_output=True, preexec_fn=as_nobody, timeout=20)
        check(p.returncode == 77 and b"permission denied" in p.stderr,
              "mailpoolctl as nobody: %d %r" % (p.returncode, p.stderr))
    d.wait_log("control client=")
    check(status_ok(d)["ok"], "root refused")


# ---- mailpoolctl -------------------------------------------------------------------


def case_ctl_tables(s):
    d, up = start(s)
    delivered_ok(send_one(d))
    delivered_ok(send_one(d))
    rc, out, err = ctl(d, "status")
    check(rc == 0 and err == "", "status: rc=%d err=%r" % (rc, err))
    rows = {l.split()[0]: l.split()[1:] for l in out.splitlines() if l.strip()}
    check(rows.get("version") == [MAILPOOL_VERSION] and rows.get("pid") == [str(d.pid)],
          "status table:\n%s" % out)
    check(rows.get("messages") == ["2"] and rows.get("relays") == ["1"],
          "status table:\n%s" % out)
    rc, out, err = ctl(d, "pool")
    check(rc == 0 and err == "", "pool: rc=%d err=%r" % (rc, err))
    lines = out.splitlines()
    check(lines[0].split() == ["RELAY", "HOST", "STATE", "TLS", "CIPHER", "RESUMED", "MSGS",
                               "AGE", "IDLE"], "connection header:\n%s" % out)
    row = lines[1].split()
    check(row[:8] == ["up", "127.0.0.1:%d" % up.port, "idle", "-", "-", "no", "2", row[7]]
          and row[7].endswith("s"), "connection row:\n%s" % out)
    i = lines.index("")
    check(lines[i + 1].split() == ["RELAY", "SESSIONS", "IDLE", "OPENING", "WAITING", "OPENED",
                                   "REUSED", "FAILED", "MESSAGES", "RETRIED"],
          "relay header:\n%s" % out)
    check(lines[i + 2].split() == ["up", "1", "1", "0", "0", "1", "1", "0", "2", "0"],
          "relay row:\n%s" % out)


def case_ctl_tls_table(s):
    d, up = start(s, tls="implicit")
    delivered_ok(send_one(d))
    rc, out, err = ctl(d, "pool")
    check(rc == 0, "pool: rc=%d err=%r" % (rc, err))
    row = out.splitlines()[1].split()
    check(row[3] in ("TLSv1.2", "TLSv1.3") and row[4] != "-" and row[5] == "no",
          "TLS columns:\n%s" % out)


def case_ctl_json(s):
    d, _ = start(s)
    delivered_ok(send_one(d))
    # An error answer is stable, so it must be byte-identical (and exit 1).
    rc, out, err = ctl(d, "--json", "bogus")
    raw = exchange(d, b"bogus\n")
    check(rc == 1 and out == raw[0] + "\n", "--json bogus: rc=%d %r vs %r" % (rc, out, raw))
    # status and pool: equal to the raw answer taken in the same second.
    for cmd in ("status", "pool"):
        for _ in range(5):
            rc, out, err = ctl(d, "--json", cmd)
            raw, _ = request(d, cmd)
            if out == raw + "\n":
                break
        check(rc == 0 and out == raw + "\n", "--json %s: rc=%d\n%r\n%r" % (cmd, rc, out, raw))


def case_ctl_errors(s):
    d, _ = start(s)
    rc, out, err = ctl(d, "bogus")
    check(rc == 1 and out == "" and 'unknown command "bogus"' in err,
          "unknown command: rc=%d out=%r err=%r" % (rc, out, err))
    rc, out, err = ctl(d, "status", "now")
    check(rc == 1 and "usage: status" in err, "extra argument: rc=%d err=%r" % (rc, err))
    for args in ((), ("--nope", "status"), ("stat us",), ("x" * (MAX_LINE + 1),)):
        rc, out, err = ctl(d, *args)
        check(rc == 64, "usage error %r: rc=%d err=%r" % (args, rc, err))
    rc, out, err = ctl(d, "-C", "/nonexistent/mailpool.conf", "status", socket_arg=False)
    check(rc == 78 and "/nonexistent/mailpool.conf" in err, "bad -C: rc=%d err=%r" % (rc, err))


def case_ctl_socket_choice(s):
    d, _ = start(s)
    conf = os.path.join(s.subdir("conf"), "mailpool.conf")
    with open(conf, "w") as f:
        f.write('daemon = { control_socket = "%s"; };\n' % d.control)
    rc, out, err = ctl(d, "-C", conf, "status", socket_arg=False)
    check(rc == 0 and "version" in out, "-C: rc=%d err=%r" % (rc, err))
    rc, out, err = ctl(d, "status", socket_arg=False,
                       env_extra={"MAILPOOL_CONTROL_SOCKET": d.control})
    check(rc == 0, "environment: rc=%d err=%r" % (rc, err))
    # The environment wins over -C, and -s over both.
    rc, out, err = ctl(d, "-C", conf, "status", socket_arg=False,
                       env_extra={"MAILPOOL_CONTROL_SOCKET": "/nonexistent/x.sock"})
    check(rc == 69 and "/nonexistent/x.sock" in err, "env over -C: rc=%d err=%r" % (rc, err))
    rc, out, err = ctl(d, "status", env_extra={"MAILPOOL_CONTROL_SOCKET": "/nonexistent/x.sock"})
    check(rc == 0, "-s over env: rc=%d err=%r" % (rc, err))


def case_ctl_daemon_down(s):
    d, _ = start(s)
    d.stop()
    for cmd in ("status", "pool"):
        rc, out, err = ctl(d, cmd)
        check(rc == 69, "daemon down: rc=%d, want 69 (err=%r)" % (rc, err))
        check(out == "" and d.control in err and "mailpoold" in err and "running" in err,
              "unclear message: %r" % err)
    # A socket file with nobody listening (a crashed daemon) is the same.
    path = os.path.join(s.subdir("stale"), "control.sock")
    sk = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sk.bind(path)
    sk.close()
    rc, out, err = ctl(d, "-s", path, "status", socket_arg=False)
    check(rc == 69 and "refused" in err.lower(), "stale socket: rc=%d err=%r" % (rc, err))


def case_ctl_hostile_daemon(s):
    """Something else on the socket: a broken or malicious answer is a protocol
    error (76), never a crash or terminal escapes on the operator's screen."""
    path = os.path.join(s.subdir("fake"), "control.sock")
    answers = [b"not json\n", b'{"ok":true,"relays":"x"}\n', b"[" * 10000 + b"\n",
               b'{"ok":false,"error":"\\u001b[2Jboom"}\n', b"",
               b'{"ok":true,"version":"\\u001b]0;x\\u0007","pid":1}\n']
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(8)

    def serve():
        for a in answers:
            c, _ = srv.accept()
            c.recv(4096)
            c.sendall(a)
            c.close()
    t = threading.Thread(target=serve, daemon=True)
    t.start()

    class Fake:
        control = path
    results = [ctl(Fake, cmd) for cmd in ("status", "pool", "status", "status", "status",
                                          "status")]
    t.join(10)
    srv.close()
    check(results[0][0] == 76, "not json: %r" % (results[0],))
    check(results[1][0] == 76, "relays not a list: %r" % (results[1],))
    check(results[2][0] == 76 and "deep" in results[2][2], "deep nesting: %r" % (results[2],))
    check(results[3][0] == 1 and "\x1b" not in results[3][2] and "\\x1b" in results[3][2],
          "escape in error: %r" % (results[3],))
    check(results[4][0] == 69, "closed without answer: %r" % (results[4],))
    check(results[5][0] == 0 and "\x1b" not in results[5][1] and "\x07" not in results[5][1],
          "escape in a value: %r" % (results[5],))


# ---- the queue -------------------------------------------------------------------

DEFER_ALL = "on rcpt reply 451 4.3.0 try again later\n"
DEFER_FIRST = "on rcpt #1 reply 451 4.3.0 try again later\n"


def accepts(path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sk:
        try:
            sk.connect(path)
            return True
        except OSError:
            return False


def start_queue(s, script=DEFER_ALL):
    """mailpoold with one queue-mode relay "up" to fakesmtp running `script`,
    retries a minute apart so a deferred message stays put.  Returns
    (daemon, upstream)."""
    up = s.fakesmtp(script)
    ctl_path = os.path.join(s.subdir("ctl"), "control.sock")
    text = s.config(s.relay(up.port, mode="queue"),
                    extra_daemon='control_socket = "%s";' % ctl_path)
    d = Daemon(s, text + "spool = { retry_min = 60; };\n")
    d.control = ctl_path
    d.spool = os.path.join(d.dir, "spool")
    # The file appears at bind(), a moment before listen(): wait until it accepts.
    wait_for(lambda: accepts(ctl_path), 5, "the control socket")
    return d, up


def rcpt_count(up):
    return sum(1 for l in client_commands(up) if l.upper().startswith("RCPT"))


def queue_list(d):
    _, q = request(d, "queue")
    check(q.get("ok") is True and is_int(q.get("count")) and isinstance(q.get("messages"), list),
          "queue answer: %r" % q)
    check(q["count"] == len(q["messages"]), "count %r for %d messages" % (q["count"],
                                                                          len(q["messages"])))
    return q["messages"]


def settled(d, attempts=1):
    """Wait until the only queued message has had `attempts` attempts and
    waits for the next one; returns its listing entry."""
    def ready():
        msgs = queue_list(d)
        if len(msgs) == 1 and msgs[0]["attempts"] >= attempts and \
                msgs[0]["next_attempt"] is not None:
            return msgs[0]
        return None
    return wait_for(ready, 15, "%d delivery attempt(s) to finish" % attempts)


def queue_one(d, rcpts=("bob@example.test",)):
    """Submit one message in queue mode; returns its listing entry once the
    first attempt was deferred."""
    r = send_one(d, rcpts=rcpts)
    delivered_ok(r, len(rcpts))
    return settled(d)


def case_queue_list(s):
    d, up = start_queue(s)
    check(queue_list(d) == [], "queue not empty at start")
    before = int(time.time())
    m = queue_one(d, rcpts=("bob@example.test", "carol@example.test"))
    want = {"id", "created", "age", "sender", "relay", "size", "attempts", "next_attempt",
            "last_error", "held", "bounce", "recipients"}
    check(set(m) == want, "members %r, want %r" % (sorted(m), sorted(want)))
    check(isinstance(m["id"], str) and m["id"].isalnum() and len(m["id"]) <= 32, "id: %r" % m)
    check(before - 1 <= m["created"] <= time.time() + 1, "created: %r" % m)
    check(is_int(m["age"]) and 0 <= m["age"] < 30, "age: %r" % m)
    check(m["sender"] == SENDER and m["relay"] == "up", "sender/relay: %r" % m)
    check(is_int(m["size"]) and m["size"] >= len(MSG), "size: %r" % m)
    check(m["attempts"] == 1, "attempts: %r" % m)
    # retry_min = 60: the next attempt is about a minute away.
    check(is_int(m["next_attempt"]) and time.time() + 30 < m["next_attempt"] < time.time() + 90,
          "next_attempt: %r (now %d)" % (m, time.time()))
    check(m["held"] is False and m["bounce"] is False, "held/bounce: %r" % m)
    rc = m["recipients"]
    check([r["address"] for r in rc] == ["bob@example.test", "carol@example.test"],
          "recipients: %r" % rc)
    for r in rc:
        check(r["state"] == "pending", "state: %r" % r)
        check(r["last_error"] is None or "451" in r["last_error"], "rcpt last_error: %r" % r)
    errors = [m["last_error"]] + [r["last_error"] for r in rc]
    check(any(e and "451" in e and "try again later" in e for e in errors),
          "the 451 is not reported: %r" % m)
    check(status_ok(d)["queued"] == 1, "status queued")
    check(os.path.exists(os.path.join(d.spool, "queue", m["id"])), "no spool file for %r" % m)
    # queue show ID: the same object.
    _, sh = request(d, "queue show %s" % m["id"])
    check(sh.get("ok") is True and set(sh) == {"v", "ok", "message"}, "show: %r" % sh)
    same = dict(sh["message"])
    same.pop("age")
    m.pop("age")
    check(same == m, "show differs from the listing:\n%r\n%r" % (same, m))


def case_queue_show_unknown(s):
    d, up = start_queue(s)
    raw, obj = request(d, "queue show 0123456789ABCDEF")
    check(raw == '{"v":1,"ok":false,"code":"no_such_message","error":"no such message \\"0123456789ABCDEF\\""}',
          "unknown id: %r" % raw)
    # Ids are checked before use: no paths, no odd bytes, no long ones.
    for bad in ("../queue/x", "a.b", "x" * 33, "a%00"):
        _, obj = request(d, "queue show %s" % bad)
        expect_error(obj, "invalid message id")
    for line in ("queue show", "queue list x", "queue x", "queue show a b"):
        _, obj = request(d, line)
        expect_error(obj, "usage")
    for cmd in ("hold", "release", "delete"):
        _, obj = request(d, "%s 0123456789ABCDEF" % cmd)
        expect_error(obj, 'no such message "0123456789ABCDEF"')
        _, obj = request(d, "%s ../../etc" % cmd)
        expect_error(obj, "invalid message id")
        _, obj = request(d, cmd)
        expect_error(obj, "usage: %s ID" % cmd)
    _, obj = request(d, "flush nosuchthing")
    expect_error(obj, "no such message or relay")
    _, obj = request(d, "flush a/b")
    expect_error(obj, "invalid")


def case_queue_flush(s):
    d, up = start_queue(s)
    m = queue_one(d)
    check(rcpt_count(up) == 1, "RCPTs before flush: %d" % rcpt_count(up))
    _, f = request(d, "flush")
    check(f == {"v": 1, "ok": True, "flushed": 1}, "flush: %r" % f)
    m2 = settled(d, attempts=2)
    check(m2["attempts"] == 2 and m2["id"] == m["id"], "after flush: %r" % m2)
    check(rcpt_count(up) == 2, "the server saw %d attempts, want 2" % rcpt_count(up))
    # By id and by relay name.
    _, f = request(d, "flush %s" % m["id"])
    check(f == {"v": 1, "ok": True, "flushed": 1}, "flush ID: %r" % f)
    settled(d, attempts=3)
    _, f = request(d, "flush up")
    check(f == {"v": 1, "ok": True, "flushed": 1}, "flush RELAY: %r" % f)
    settled(d, attempts=4)
    check(rcpt_count(up) == 4, "the server saw %d attempts, want 4" % rcpt_count(up))
    # mailpoolctl flush
    rc, out, err = ctl(d, "flush")
    check(rc == 0 and "1 message" in out, "mailpoolctl flush: %d %r %r" % (rc, out, err))
    settled(d, attempts=5)
    rc, out, err = ctl(d, "flush", "nosuchrelay")
    check(rc == 1 and "no such message or relay" in err, "flush unknown: %d %r" % (rc, err))


def case_queue_hold_release(s):
    d, up = start_queue(s, DEFER_FIRST)
    m = queue_one(d)
    mid = m["id"]
    _, h = request(d, "hold %s" % mid)
    check(h == {"v": 1, "ok": True}, "hold: %r" % h)
    wait_for(lambda: os.path.exists(os.path.join(d.spool, "hold", mid)), 10,
             "the file in spool/hold/")
    check(not os.path.exists(os.path.join(d.spool, "queue", mid)), "still in spool/queue/")
    wait_for(lambda: queue_list(d)[0]["held"] is True, 5, "held in the listing")
    check(queue_list(d)[0]["next_attempt"] is None, "a held message has no next attempt")
    _, h = request(d, "hold %s" % mid)
    expect_error(h, "already held")
    # No attempt while held, not even when asked for.
    _, f = request(d, "flush")
    check(f == {"v": 1, "ok": True, "flushed": 0}, "flush of a held message: %r" % f)
    time.sleep(1.5)
    check(rcpt_count(up) == 1, "attempts while held: %d RCPTs" % rcpt_count(up))
    rc, out, err = ctl(d, "queue")
    check(rc == 0 and "held" in out, "mailpoolctl shows held:\n%s" % out)
    # Release: the server now accepts (#1 only was deferred), so it is delivered.
    rc, out, err = ctl(d, "release", mid)
    check(rc == 0 and mid in out, "mailpoolctl release: %d %r %r" % (rc, out, err))
    wait_for(lambda: queue_list(d) == [], 15, "delivery after release")
    check(rcpt_count(up) == 2, "RCPTs: %d" % rcpt_count(up))
    up.wait_log("* message n=1")
    for sub in ("queue", "hold"):
        check(not os.path.exists(os.path.join(d.spool, sub, mid)), "file left in %s/" % sub)
    _, r = request(d, "release %s" % mid)
    expect_error(r, "no such message")


def case_queue_release_not_held(s):
    d, up = start_queue(s)
    m = queue_one(d)
    _, r = request(d, "release %s" % m["id"])
    expect_error(r, "not held")
    rc, out, err = ctl(d, "release", m["id"])
    check(rc == 1 and "not held" in err, "mailpoolctl release: %d %r" % (rc, err))


def case_queue_delete(s):
    d, up = start_queue(s)
    m = queue_one(d)
    mid = m["id"]
    path = os.path.join(d.spool, "queue", mid)
    check(os.path.exists(path), "no spool file")
    _, r = request(d, "delete %s" % mid)
    check(r == {"v": 1, "ok": True}, "delete: %r" % r)
    # The file is removed in the background; the listing follows once it is gone.
    wait_for(lambda: queue_list(d) == [], 10, "the message to leave the listing")
    wait_for(lambda: not os.path.exists(path), 10, "the spool file to go")
    check(status_ok(d)["queued"] == 0, "status queued after delete")
    _, r = request(d, "delete %s" % mid)
    expect_error(r, 'no such message "%s"' % mid)
    _, r = request(d, "queue show %s" % mid)
    expect_error(r, "no such message")
    # mailpoolctl delete of an unknown id: exit 1 with the daemon's message.
    rc, out, err = ctl(d, "delete", mid)
    check(rc == 1 and "no such message" in err, "mailpoolctl delete: %d %r" % (rc, err))
    time.sleep(0.5)
    check(rcpt_count(up) == 1, "deleted message was retried")


def case_queue_busy(s):
    # The server sits on RCPT for a while: the attempt is in progress meanwhile.
    d, up = start_queue(s, "on rcpt #1 delay 3000\non rcpt reply 451 4.3.0 later\n")
    delivered_ok(send_one(d))
    up.wait_log("RCPT")
    msgs = queue_list(d)
    check(len(msgs) == 1 and msgs[0]["next_attempt"] is None,
          "in progress has no next attempt: %r" % msgs)
    mid = msgs[0]["id"]
    for cmd in ("hold", "delete"):
        _, r = request(d, "%s %s" % (cmd, mid))
        check(r == {"v": 1, "ok": False, "code": "busy",
                   "error": "busy: a delivery attempt is in progress, try again"},
              "%s while busy: %r" % (cmd, r))
    _, f = request(d, "flush %s" % mid)
    check(f == {"v": 1, "ok": True, "flushed": 0}, "flush while busy: %r" % f)
    settled(d)
    _, r = request(d, "delete %s" % mid)
    check(r == {"v": 1, "ok": True}, "delete after the attempt: %r" % r)


def case_ctl_queue_table(s):
    d, up = start_queue(s)
    rc, out, err = ctl(d, "queue")
    check(rc == 0 and out == "the queue is empty\n", "empty queue: %d %r %r" % (rc, out, err))
    m = queue_one(d, rcpts=("bob@example.test", "carol@example.test"))
    rc, out, err = ctl(d, "queue")
    check(rc == 0 and err == "", "queue: %d %r" % (rc, err))
    lines = out.splitlines()
    check(lines[0].split() == ["ID", "AGE", "SIZE", "SENDER", "RCPTS", "ATTEMPTS", "NEXT",
                               "LAST", "ERROR"], "header:\n%s" % out)
    # Sizes are readable ("812 B", "1.2 KiB"): join the number and its unit.
    row = lines[1].split()
    row[2:4] = [row[2] + " " + row[3]]
    want_size = ("%d B" % m["size"] if m["size"] < 1024 else "%.1f KiB" % (m["size"] / 1024))
    check(row[0] == m["id"] and row[2] == want_size and row[3] == SENDER
          and row[4] == "2/2" and row[5] == "1" and row[6] == "in", "row:\n%s" % out)
    check(row[7].endswith("s") or row[7].endswith("m00s") or "m" in row[7], "NEXT:\n%s" % out)
    rl = [l for l in lines[2:] if l.startswith("    ")]
    check(len(rl) == 2 and rl[0].split()[:2] == ["bob@example.test", "pending"]
          and rl[1].split()[:2] == ["carol@example.test", "pending"], "recipients:\n%s" % out)
    rc, out, err = ctl(d, "queue", "show", m["id"])
    check(rc == 0, "queue show: %d %r" % (rc, err))
    rows = {}
    for l in out.splitlines():
        parts = l.split(None, 1)
        if len(parts) == 2:
            rows.setdefault(parts[0], parts[1])
    check(rows.get("id") == m["id"] and rows.get("sender") == SENDER
          and rows.get("relay") == "up" and rows.get("attempts") == "1"
          and rows.get("held") == "no", "queue show:\n%s" % out)
    check("recipients:" in out and "  bob@example.test" in out, "queue show rcpts:\n%s" % out)
    rc, out, err = ctl(d, "queue", "show", "FFFF")
    check(rc == 1 and 'no such message "FFFF"' in err, "show unknown: %d %r" % (rc, err))
    rc, out, err = ctl(d, "--json", "queue")
    raw, _ = request(d, "queue")
    check(rc == 0 and json.loads(out)["messages"][0]["id"] == m["id"], "--json queue: %r" % out)
    rc, out, err = ctl(d, "hold", m["id"])
    check(rc == 0 and out == "%s: held\n" % m["id"], "hold: %d %r %r" % (rc, out, err))
    # The move to hold/ completes in the background (the message shows busy meanwhile).
    wait_for(lambda: request(d, "queue show " + m["id"])[1]["message"]["held"], 10,
             "the hold to complete")
    rc, out, err = ctl(d, "hold", m["id"])
    check(rc == 1 and "already held" in err, "hold twice: %d %r" % (rc, err))
    rc, out, err = ctl(d, "delete", "x/y")
    check(rc == 1 and "invalid message id" in err, "bad id: %d %r" % (rc, err))


CASES = {name[5:]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}

if __name__ == "__main__":
    main(CASES)
