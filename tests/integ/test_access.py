#!/usr/bin/python3
"""Integration cases: access control.  daemon.sender_policy and sender_map
at MAIL FROM, daemon.control_group and control_max_per_uid on the control
socket, the error codes and protocol version of control answers, and
mailpoolctl's exit codes.  Clients run as nobody in forked children (the
tests run as root; cases exit 77 otherwise).  Usage: test_access.py CASE"""

import grp
import json
import os
import pwd
import socket
import subprocess
import sys
import threading

from mpharness import SENDER, binary, check, main, send_one, wait_for

NOBODY = pwd.getpwnam("nobody").pw_uid
MAIL_GID = grp.getgrnam("mail").gr_gid

# A submission as another user: MAIL and the per-recipient results, as JSON.
SUBMIT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from mpharness import LMTP
with LMTP(sys.argv[2]) as c:
    r = c.send(sys.argv[3], ["bob@example.test"], b"Subject: t\r\n\r\nhi\r\n")
    print(json.dumps({"mail": [r.mail.code, r.mail.text],
                      "results": [x.code for x in (getattr(r, "results", None) or [])]}))
"""

# Control requests as another user: argv[2] is a JSON list of request lines,
# sent on that many connections held open at once; the answers come back in order.
CONTROL = r"""
import json, socket, sys
out = []
socks = []
for line in json.loads(sys.argv[2]):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(sys.argv[1])
    except PermissionError:
        out.append("EACCES")
        continue
    try:
        s.sendall(line.encode() + b"\n")
    except OSError:
        pass  # refused at once: the answer is waiting anyway
    socks.append(s)
    out.append(s.makefile("rb").readline().decode().strip())
print(json.dumps(out))
"""


def need_root():
    if os.geteuid() != 0:
        print("skipped: needs root to run clients as another user")
        sys.exit(77)


def opened(d):
    for p in (d.scope.dir, d.dir):
        os.chmod(p, 0o755)


def drop_to(uid, groups=()):
    def drop():
        os.setgroups(list(groups))
        os.setgid(uid)
        os.setuid(uid)
    return drop


def submit_as(d, uid, sender, groups=()):
    opened(d)
    here = os.path.dirname(os.path.abspath(__file__))
    p = subprocess.run(["/usr/bin/python3", "-c", SUBMIT, here, d.socket, sender],
                       preexec_fn=drop_to(uid, groups), capture_output=True, timeout=60)
    check(p.returncode == 0, "client as uid %d failed: %s" % (uid, p.stderr.decode()))
    return json.loads(p.stdout)


def control_path(d):
    """The control socket, once it exists (it comes up just after the submission socket)."""
    path = os.path.join(d.dir, "control.sock")
    wait_for(lambda: os.path.exists(path), 10, "the control socket")
    return path


def control_as(d, uid, lines, groups=()):
    """Answers (raw lines, or "EACCES") to lines sent on concurrent connections."""
    opened(d)
    p = subprocess.run(["/usr/bin/python3", "-c", CONTROL, control_path(d), json.dumps(lines)],
                       preexec_fn=drop_to(uid, groups), capture_output=True, timeout=60)
    check(p.returncode == 0, "control client as uid %d failed: %s" % (uid, p.stderr.decode()))
    return json.loads(p.stdout)


def request(d, line):
    s = socket.socket(socket.AF_UNIX)
    s.connect(control_path(d))
    s.sendall(line.encode() + b"\n")
    raw = s.makefile("rb").readline().decode().strip()
    s.close()
    obj = json.loads(raw)
    check(obj.get("v") == 1 and raw.startswith('{"v":1,'), "no \"v\":1 first in %r" % raw)
    return obj


def expect_code(obj, code, what):
    check(obj.get("ok") is False and obj.get("code") == code
          and isinstance(obj.get("error"), str) and obj["error"],
          "%s: want code %s, got %r" % (what, code, obj))


def ctl(args, preexec=None):
    env = dict(os.environ)
    env.pop("MAILPOOL_CONTROL_SOCKET", None)
    p = subprocess.run([binary("mailpoolctl")] + args, capture_output=True, timeout=30,
                       preexec_fn=preexec, env=env)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def own_daemon(s, extra=""):
    up = s.fakesmtp()
    d = s.daemon(s.relay(up.port), extra_daemon='sender_policy = "own"; ' + extra)
    return up, d


# -- sender_policy ------------------------------------------------------------------


def case_sender_own(s):
    need_root()
    up, d = own_daemon(s)
    r = submit_as(d, NOBODY, "nobody@example.test")
    check(r["mail"][0] == 250 and r["results"] == [250], "nobody as nobody@: %r" % r)
    r = submit_as(d, NOBODY, "nobody@other.example")
    check(r["mail"][0] == 250, "any domain with the user's own local part: %r" % r)
    r = submit_as(d, NOBODY, "root@example.test")
    check(r["mail"][0] == 550 and "5.7.1 Sender address not allowed for user nobody"
          in r["mail"][1], "nobody as root@: %r" % r)
    d.wait_log("from=<root@example.test> refused: sender_policy=own")
    check("user=nobody" in d.log(), "log line names the user:\n%s" % d.log())
    r = submit_as(d, NOBODY, "")
    check(r["mail"][0] == 550, "nobody as <> without a mapping: %r" % r)
    # Root is exempt: it may send as anyone.
    delivered_ok_root = send_one(d)
    check([x.code for x in delivered_ok_root.results] == [250],
          "root as %s: %r" % (SENDER, delivered_ok_root))
    check(len(up.messages()) == 3, "upstream got %d messages, want 3" % len(up.messages()))


def case_sender_map(s):
    need_root()
    up, d = own_daemon(s, 'sender_map = { nobody = [ "noreply@example.test", '
                          '"@lists.example.test", "<>" ]; };')
    for sender in ("noreply@example.test", "NoReply@Example.TEST", "any@lists.example.test",
                   "", "nobody@example.test"):
        r = submit_as(d, NOBODY, sender)
        check(r["mail"][0] == 250, "nobody as <%s>: %r" % (sender, r))
    for sender in ("other@example.test", "noreply@example.test.evil", "x@sub.lists.example.test"):
        r = submit_as(d, NOBODY, sender)
        check(r["mail"][0] == 550 and "nobody" in r["mail"][1], "nobody as <%s>: %r" % (sender, r))


def case_sender_any(s):
    need_root()
    up = s.fakesmtp()
    d = s.daemon(s.relay(up.port))  # the default is "any"
    r = submit_as(d, NOBODY, "root@example.test")
    check(r["mail"][0] == 250 and r["results"] == [250], "nobody as root@ under any: %r" % r)
    d2 = s.daemon(s.relay(up.port), extra_daemon='sender_policy = "any";')
    r = submit_as(d2, NOBODY, "postmaster@example.test")
    check(r["mail"][0] == 250, "explicit any: %r" % r)


def case_access_config_errors(s):
    bad = [('sender_policy = "mine";', "'sender_policy' must be"),
           ('sender_map = { no_such_user_here = [ "a@b.c" ]; };', "no such user"),
           ('sender_map = { nobody = [ "not-an-address" ]; };', "not an address"),
           ('control_group = "no_such_group_here";', "no such group"),
           ('control_max_per_uid = 0;', "'control_max_per_uid' must be between")]
    for i, (text, needle) in enumerate(bad):
        path = os.path.join(s.subdir("c%d" % i), "mailpool.conf")
        with open(path, "w") as f:
            f.write(s.config(s.relay(25), extra_daemon=text).replace("@SOCKET@", "/tmp/x.sock")
                    .replace("@CONTROL@", "/tmp/y.sock").replace("@SPOOL@", "/tmp"))
        p = subprocess.run([binary("mailpoold"), "--check-config", "-c", path],
                           capture_output=True, timeout=20)
        err = p.stderr.decode() + p.stdout.decode()
        check(p.returncode != 0 and needle in err, "%s: rc=%d %r" % (text, p.returncode, err))


# -- the control socket ---------------------------------------------------------------


def case_control_group(s):
    need_root()
    up = s.fakesmtp()
    d = s.daemon(s.relay(up.port), extra_daemon='control_group = "mail";')
    st = os.stat(control_path(d))
    check(st.st_gid == MAIL_GID and (st.st_mode & 0o777) == 0o660,
          "socket group %d mode %o" % (st.st_gid, st.st_mode & 0o777))
    # In the group (as a supplementary group): allowed.
    out = control_as(d, NOBODY, ["status"], groups=[MAIL_GID])
    check(json.loads(out[0]).get("ok") is True, "nobody in mail: %r" % out)
    # Not in it: the file mode keeps it out ...
    check(control_as(d, NOBODY, ["status"]) == ["EACCES"], "nobody outside mail connected")
    # ... and so do the peer credentials when the mode is opened up.
    os.chmod(control_path(d), 0o666)
    out = control_as(d, NOBODY, ["status"])
    expect_code(json.loads(out[0]), "permission_denied", "nobody outside mail")
    check(json.loads(out[0]).get("v") == 1, "no version in %r" % out)
    d.wait_log("refused: uid=%d" % NOBODY)


def case_control_per_uid_cap(s):
    need_root()
    up = s.fakesmtp()
    d = s.daemon(s.relay(up.port), extra_daemon='control_group = "mail";')
    # Nine connections held open at once: eight are served, the ninth refused.
    out = control_as(d, NOBODY, ["status"] * 9, groups=[MAIL_GID])
    answers = [json.loads(x) for x in out]
    check(all(a.get("ok") is True for a in answers[:8]), "first eight: %r" % answers[:8])
    expect_code(answers[8], "too_many_connections", "ninth connection")
    d.wait_log("daemon.control_max_per_uid")
    # The cap is per uid and counts only open connections: root and a later nobody are fine.
    check(request(d, "status")["ok"] is True, "root refused after nobody's burst")
    out = control_as(d, NOBODY, ["status"] * 2, groups=[MAIL_GID])
    check(all(json.loads(x).get("ok") is True for x in out), "nobody again: %r" % out)
    # A smaller cap from the config.
    d2 = s.daemon(s.relay(up.port),
                  extra_daemon='control_group = "mail"; control_max_per_uid = 2;')
    out = [json.loads(x) for x in control_as(d2, NOBODY, ["status"] * 3, groups=[MAIL_GID])]
    check(out[0]["ok"] and out[1]["ok"], "cap 2: %r" % out)
    expect_code(out[2], "too_many_connections", "third with cap 2")


def case_control_error_codes(s):
    up = s.fakesmtp()
    d = s.daemon(s.relay(up.port))
    for line, code in (("frobnicate", "unknown_command"),
                       ("status extra", "bad_request"),
                       ("hold", "bad_request"),
                       ("queue show", "bad_request"),
                       ("queue show ../x", "bad_request"),
                       ("hold a.b", "bad_request"),
                       ("queue show 0123456789ABCDEF", "no_such_message"),
                       ("hold 0123456789ABCDEF", "no_such_message"),
                       ("release 0123456789ABCDEF", "no_such_message"),
                       ("delete 0123456789ABCDEF", "no_such_message"),
                       ("flush 0123456789ABCDEF", "no_such_message"),
                       ("flush no-such-relay", "no_such_relay"),
                       (" ".join(["x"] * 17), "bad_request")):
        expect_code(request(d, line), code, line)
    # Every answer carries the version, successes too.
    for line in ("status", "pool", "relays", "queue", "flush"):
        a = request(d, line)
        check(a["ok"] is True, "%s: %r" % (line, a))
    # A refused reload: the file is broken now.
    with open(d.conf, "a") as f:
        f.write("\nthis is not libconfig\n")
    expect_code(request(d, "reload"), "reload_failed", "reload of a broken file")
    # Binary input ends the connection with a coded error.
    sk = socket.socket(socket.AF_UNIX)
    sk.connect(control_path(d))
    sk.sendall(b"\x01\x02\n")
    raw = sk.makefile("rb").readline().decode()
    sk.close()
    expect_code(json.loads(raw), "bad_request", "binary request")


# -- mailpoolctl ----------------------------------------------------------------------


def case_ctl_exit_codes(s):
    up = s.fakesmtp()
    d = s.daemon(s.relay(up.port))
    sock = control_path(d)
    rc, out, err = ctl(["-s", sock, "status"])
    check(rc == 0 and "uptime" in out, "status: %d %r" % (rc, err))
    rc, out, err = ctl(["-s", sock, "hold", "0123456789ABCDEF"])
    check(rc == 1 and "no such message" in err, "refused: %d %r" % (rc, err))
    rc, out, err = ctl(["-s", sock, "--json", "frobnicate"])
    check(rc == 1 and json.loads(out)["code"] == "unknown_command", "--json refused: %d %r"
          % (rc, out))
    rc, out, err = ctl(["-s", os.path.join(d.dir, "nothing.sock"), "status"])
    check(rc == 69 and "is mailpoold running?" in err, "unreachable: %d %r" % (rc, err))
    rc, out, err = ctl([])
    check(rc == 64, "usage: %d %r" % (rc, err))
    # A daemon speaking a later protocol version: 76.
    path = os.path.join(s.subdir("fake"), "control.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)

    def serve():
        c, _ = srv.accept()
        c.recv(4096)
        c.sendall(b'{"v":2,"ok":true}\n')
        c.close()
    t = threading.Thread(target=serve)
    t.start()
    rc, out, err = ctl(["-s", path, "status"])
    t.join()
    srv.close()
    check(rc == 76 and "version 2" in err, "protocol: %d %r" % (rc, err))
    if os.geteuid() != 0:
        return
    # Permission denied, by the socket's mode and by the daemon: 77.
    mp = binary("mailpoolctl")
    path = os.path.dirname(os.path.abspath(mp))
    while path != "/":
        if not os.stat(path).st_mode & 0o001:
            print("mailpoolctl is not reachable for nobody: denied part skipped")
            return
        path = os.path.dirname(path)
    opened(d)
    rc, out, err = ctl(["-s", sock, "status"], preexec=drop_to(NOBODY))
    check(rc == 77 and "permission denied" in err.lower(), "denied by mode: %d %r" % (rc, err))
    os.chmod(sock, 0o666)
    rc, out, err = ctl(["-s", sock, "status"], preexec=drop_to(NOBODY))
    check(rc == 77 and "permission denied" in err, "denied by the daemon: %d %r" % (rc, err))


def case_ctl_readable(s):
    up = s.fakesmtp()
    d = s.daemon(s.relay(up.port))
    rc, out, err = ctl(["-s", control_path(d), "relays"])
    check(rc == 0, "relays: %d %r" % (rc, err))
    rows = [l.split() for l in out.splitlines()]
    timeouts = [r for r in rows if len(r) >= 3 and r[1] == "timeouts.connect"]
    check(timeouts and timeouts[0][2].endswith("s") and timeouts[0][2][:-1].replace("m", "")
          .isdigit(), "timeouts.connect is no duration:\n%s" % out)
    rc, out, err = ctl(["-s", control_path(d), "status"])
    up_row = [l for l in out.splitlines() if l.startswith("uptime")]
    check(up_row and up_row[0].split()[1].endswith("s"), "uptime:\n%s" % out)


def case_no_core_dumps(s):
    """The daemon holds passwords in memory: it makes itself non-dumpable, so
    no core file is written and processes of its own user cannot ptrace it
    or read /proc/PID/mem.  Run as an unprivileged user, a non-dumpable
    process's /proc/PID files belong to root, a dumpable one's to the user."""
    nobody = pwd.getpwnam("nobody")
    home = s.subdir("as-nobody")
    os.chmod(s.dir, 0o755)
    os.chmod(home, 0o777)
    conf = os.path.join(home, "mailpool.conf")
    with open(conf, "w") as f:
        f.write(s.config(s.relay(9, ca=None, options=())).replace(
            "@SOCKET@", os.path.join(home, "submit.sock")).replace(
            "@CONTROL@", os.path.join(home, "control.sock")).replace(
            "@SPOOL@", os.path.join(home, "spool")))
    os.chmod(conf, 0o644)

    def drop():
        os.setgroups([])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)

    log = open(os.path.join(home, "stderr.log"), "wb")
    p = subprocess.Popen([binary("mailpoold"), "-c", conf], preexec_fn=drop,
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        sock = os.path.join(home, "submit.sock")
        wait_for(lambda: os.path.exists(sock) or p.poll() is not None, 15,
                 "the daemon's socket")
        check(p.poll() is None, "the daemon did not start as nobody:\n"
              + open(os.path.join(home, "stderr.log")).read())
        st = os.stat("/proc/%d/status" % p.pid)
        check(st.st_uid == 0, "/proc/PID/status belongs to uid %d: the daemon is dumpable"
              % st.st_uid)
        # The same check on a plain process of that user shows the difference.
        q = subprocess.Popen(["sleep", "30"], preexec_fn=drop)
        try:
            check(os.stat("/proc/%d/status" % q.pid).st_uid == nobody.pw_uid,
                  "a dumpable process of nobody: unexpected /proc ownership")
        finally:
            q.kill()
            q.wait()
    finally:
        p.terminate()
        check(p.wait(15) == 0, "mailpoold as nobody did not stop cleanly")
        log.close()


CASES = {name[len("case_"):]: fn for name, fn in globals().items() if name.startswith("case_")}

if __name__ == "__main__":
    main(CASES)
