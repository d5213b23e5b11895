#!/usr/bin/python3
"""Integration cases: the queue from the command line against a running
daemon: `mailpool-sendmail -bp` and `mailq` (the listing), `-q`, `-qI<id>`
and `-qR<relay>` (retry now), and their exit codes (69 when the daemon is
unreachable, 77 when the control socket is out of reach).
Usage: test_queue_cli.py CASE"""

import json
import os
import pwd
import re
import socket
import subprocess
import time

from mpharness import (Daemon, SENDER, binary, check, client_commands, delivered_ok, main,
                       send_one, wait_for)

DEFER_ALL = "on rcpt reply 451 4.3.0 try again later\n"


def run(args, env_extra=None, argv0=None, preexec_fn=None, timeout=60):
    env = dict(os.environ)
    env.pop("MAILPOOL_CONTROL_SOCKET", None)
    env.update(env_extra or {})
    exe = argv0 or binary("mailpool-sendmail")
    p = subprocess.run([exe] + args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=env, timeout=timeout, preexec_fn=preexec_fn)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def accepts(path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sk:
        try:
            sk.connect(path)
            return True
        except OSError:
            return False


def start(s, script=DEFER_ALL):
    """mailpoold with a queue-mode relay "up" whose server defers every
    recipient; retries a minute apart, so deferred mail stays queued."""
    up = s.fakesmtp(script)
    d = Daemon(s, s.config(s.relay(up.port, mode="queue")) + "spool = { retry_min = 60; };\n")
    d.control = os.path.join(d.dir, "control.sock")
    # The file appears at bind(), a moment before listen(): wait until it accepts.
    wait_for(lambda: accepts(d.control), 5, "the control socket")
    return d, up


def control(d, line):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sk:
        sk.settimeout(10)
        sk.connect(d.control)
        sk.sendall(line.encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sk.recv(65536)
            check(chunk, "control socket closed early")
            buf += chunk
    return json.loads(buf)


def attempts(d):
    msgs = control(d, "queue")["messages"]
    return [(m["attempts"], m["next_attempt"] is not None) for m in msgs]


def rcpt_count(up):
    return sum(1 for l in client_commands(up) if l.upper().startswith("RCPT"))


def queue_one(d, n_attempts=1, rcpts=("bob@example.test",)):
    delivered_ok(send_one(d, rcpts=rcpts), len(rcpts))
    wait_for(lambda: (n_attempts, True) in attempts(d), 15, "the first attempt")
    return control(d, "queue")["messages"][-1]


def sock_env(d):
    return {"MAILPOOL_CONTROL_SOCKET": d.control}


def mailq_link(s):
    """`mailq` is mailpool-sendmail under another name."""
    link = os.path.join(s.subdir("bin"), "mailq")
    os.symlink(os.path.abspath(binary("mailpool-sendmail")), link)
    return link


def case_sendmail_bp_empty(s):
    d, up = start(s)
    rc, out, err = run(["-bp"], sock_env(d))
    check(rc == 0 and out == "Mail queue is empty\n" and err == "",
          "-bp on an empty queue: %d %r %r" % (rc, out, err))
    rc, out, err = run([], sock_env(d), argv0=mailq_link(s))
    check(rc == 0 and out == "Mail queue is empty\n", "mailq: %d %r %r" % (rc, out, err))


def case_sendmail_bp_listing(s):
    d, up = start(s)
    m = queue_one(d, rcpts=("bob@example.test", "carol@example.test"))
    rc, out, err = run(["-bp"], sock_env(d))
    check(rc == 0 and err == "", "-bp: %d %r" % (rc, err))
    lines = out.splitlines()
    check(lines[0].startswith("-Queue ID-") and "-Sender/Recipient-" in lines[0],
          "heading:\n%s" % out)
    first = lines[1].split()
    # ID, size, "Sat Nov 21 18:27:01", sender
    check(first[0] == m["id"] and first[1] == str(m["size"]) and first[-1] == SENDER,
          "message line:\n%s" % out)
    check(re.search(r" \d\d:\d\d:\d\d ", lines[1]), "arrival time:\n%s" % out)
    check(any(l.strip().startswith("(") and "451" in l and "try again later" in l
              for l in lines), "the reason for the delay:\n%s" % out)
    rcpt_lines = [l for l in lines if l.strip() in ("bob@example.test", "carol@example.test")]
    check(len(rcpt_lines) == 2 and all(l.startswith("   ") for l in rcpt_lines),
          "indented recipients:\n%s" % out)
    check(lines[-1] == "-- 1 Kbytes in 1 Request.", "summary line:\n%s" % out)
    # mailq prints the same; -C FILE finds the socket in the daemon's config.
    rc2, out2, _ = run([], sock_env(d), argv0=mailq_link(s))
    check(rc2 == 0 and out2 == out, "mailq differs from -bp:\n%s\n%s" % (out, out2))
    rc3, out3, err3 = run(["-C", d.conf, "-bp"])
    check(rc3 == 0 and out3 == out, "-C: %d %r\n%s" % (rc3, err3, out3))
    # A held message is marked '!' as in Postfix.
    check(control(d, "hold %s" % m["id"]) == {"v": 1, "ok": True}, "hold")
    wait_for(lambda: control(d, "queue")["messages"][0]["held"], 10, "held")
    rc, out, err = run(["-bp"], sock_env(d))
    check(rc == 0 and out.splitlines()[1].startswith(m["id"] + "!"), "held mark:\n%s" % out)


def case_sendmail_q_flush(s):
    d, up = start(s)
    m = queue_one(d)
    check(rcpt_count(up) == 1, "RCPTs: %d" % rcpt_count(up))
    rc, out, err = run(["-q"], sock_env(d))
    check(rc == 0 and out == "", "-q: %d %r %r" % (rc, out, err))
    wait_for(lambda: (2, True) in attempts(d), 15, "the flushed attempt")
    check(rcpt_count(up) == 2, "the server saw %d attempts, want 2" % rcpt_count(up))
    rc, out, err = run(["-v", "-qI" + m["id"]], sock_env(d))
    check(rc == 0 and "1 message" in err, "-qI: %d %r" % (rc, err))
    wait_for(lambda: (3, True) in attempts(d), 15, "the -qI attempt")
    rc, out, err = run(["-qRup"], sock_env(d))
    check(rc == 0, "-qR: %d %r" % (rc, err))
    wait_for(lambda: (4, True) in attempts(d), 15, "the -qR attempt")
    check(rcpt_count(up) == 4, "the server saw %d attempts, want 4" % rcpt_count(up))
    rc, out, err = run(["-qIFFFF0000"], sock_env(d))
    check(rc == 69 and "no such message" in err, "-qI unknown: %d %r" % (rc, err))
    rc, out, err = run(["-q", "bob@example.test"], sock_env(d))
    check(rc == 64, "-q with a recipient: %d %r" % (rc, err))


def case_sendmail_bp_unreachable(s):
    path = os.path.join(s.subdir("none"), "control.sock")
    rc, out, err = run(["-bp"], {"MAILPOOL_CONTROL_SOCKET": path})
    check(rc == 69 and path in err and "running" in err, "no daemon: %d %r" % (rc, err))
    rc, out, err = run(["-q"], {"MAILPOOL_CONTROL_SOCKET": path})
    check(rc == 69, "-q, no daemon: %d %r" % (rc, err))
    # A socket file nobody listens on (a crashed daemon).
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sk:
        sk.bind(path)
    rc, out, err = run(["-bp"], {"MAILPOOL_CONTROL_SOCKET": path})
    check(rc == 69 and "refused" in err.lower(), "stale socket: %d %r" % (rc, err))


def case_sendmail_bp_permission(s):
    d, up = start(s)
    if os.geteuid() != 0:
        # Without root: a socket we may not write to is refused by the kernel.
        os.chmod(d.control, 0)
        rc, out, err = run(["-bp"], sock_env(d))
        os.chmod(d.control, 0o660)
        check(rc == 77 and "permission denied" in err and "group" in err,
              "no access to the socket: %d %r" % (rc, err))
        return
    nobody = pwd.getpwnam("nobody")

    def as_nobody():
        os.setgid(nobody.pw_gid)
        os.setgroups([])
        os.setuid(nobody.pw_uid)
    exe = os.path.join(s.subdir("bin"), "mailpool-sendmail")
    with open(binary("mailpool-sendmail"), "rb") as src, open(exe, "wb") as dst:
        dst.write(src.read())
    os.chmod(exe, 0o755)
    for p in (s.dir, os.path.dirname(exe), d.dir):
        os.chmod(p, 0o755)
    # The kernel refuses at connect() (socket mode 0660) ...
    rc, out, err = run(["-bp"], sock_env(d), argv0=exe, preexec_fn=as_nobody)
    check(rc == 77 and "permission denied" in err and "group" in err,
          "nobody, 0660 socket: %d %r" % (rc, err))
    # ... and the daemon refuses by peer credentials when the mode is opened up.
    os.chmod(d.control, 0o666)
    rc, out, err = run(["-bp"], sock_env(d), argv0=exe, preexec_fn=as_nobody)
    check(rc == 77 and "group" in err, "nobody, 0666 socket: %d %r" % (rc, err))
    os.chmod(d.control, 0o660)


def case_sendmail_dsn_flags(s):
    # The daemon takes -N/-R/-V as NOTIFY=/RET=/ENVID= and queues the message.
    d, up = start(s, script="")
    msg = b"Subject: dsn\n\nbody\n"
    p = subprocess.run([binary("mailpool-sendmail"), "-N", "failure,delay", "-R", "hdrs",
                        "-V", "job 42+x", "bob@example.test"], input=msg, capture_output=True,
                       env=dict(os.environ, MAILPOOL_SOCKET=d.socket), timeout=60)
    check(p.returncode == 0, "sendmail with DSN flags: %d %r" % (p.returncode, p.stderr))
    wait_for(lambda: up.messages(), 15, "delivery upstream")
    wait_for(lambda: control(d, "queue")["messages"] == [], 15, "the queue to empty")


def case_sendmail_killed_mid_stdin(s):
    """mailpool-sendmail killed while it still reads its standard input
    (small and large messages): nothing is queued or delivered, nothing is
    left in the spool, and the daemon lets go of the connection."""
    up = s.fakesmtp("")
    d = Daemon(s, s.config(s.relay(up.port, mode="queue")))
    spool = os.path.join(d.dir, "spool")
    env = dict(os.environ, MAILPOOL_SOCKET=d.socket)
    delivered_ok(send_one(d, mail_params="XMODE=relay"))  # warm: the upstream session exists
    before = len(os.listdir("/proc/%d/fd" % d.pid))
    for size in (100, 1 << 20):
        p = subprocess.Popen([binary("mailpool-sendmail"), "-i", "bob@example.test"],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=env)
        p.stdin.write(b"Subject: cut short\n\n" + (b"z" * 99 + b"\n") * (size // 100))
        p.stdin.flush()
        time.sleep(0.5)  # it reads what is there (and may have started the transaction)
        p.kill()
        p.wait(10)
        p.stdin.close()
    def links():
        out = []
        for f in os.listdir("/proc/%d/fd" % d.pid):
            try:
                out.append(os.readlink("/proc/%d/fd/%s" % (d.pid, f)))
            except OSError:
                pass
        return out
    wait_for(lambda: len(links()) <= before, 10,
             lambda: "the daemon to close the killed clients' connections: %d before, now %r\n%s"
             % (before, links(), d.log()[-2000:]))
    for sub in ("queue", "tmp", "hold", "failed"):
        path = os.path.join(spool, sub)
        left = os.listdir(path) if os.path.isdir(path) else []
        check(not left, "%s/ holds %r" % (sub, left))
    check(len(up.messages()) == 1, "a cut message was delivered: %r" % up.messages())
    # The daemon still takes the next message.
    delivered_ok(send_one(d, mail_params="XMODE=relay"))


CASES = {name[5:]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}

if __name__ == "__main__":
    main(CASES)
