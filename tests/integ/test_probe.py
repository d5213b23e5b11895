#!/usr/bin/python3
"""The control command `test RELAY` and `mailpoolctl test`: a session opened
as delivery would open it (TLS, EHLO, STARTTLS, AUTH), reported step by step,
QUIT without mail.  Usage: test_probe.py CASE"""

import base64
import hashlib
import json
import os
import socket
import subprocess
import time

from mpharness import (CERTS, binary, check, client_commands, delivered_ok, free_port, main,
                       send_one, wait_for)

AUTH_SCRIPT = "auth PLAIN LOGIN\nuser alice s3cret\n"


def _accepts(path):
    # The file appears at bind(), a moment before listen().
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sk:
        try:
            sk.connect(path)
            return True
        except OSError:
            return False


def control_path(d):
    path = os.path.join(d.dir, "control.sock")
    wait_for(lambda: _accepts(path), 10, "the control socket")
    return path


def ctl_lines(d, request, n=1, timeout=60):
    """Send request (one or more lines) on one connection, read n answer lines."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sk:
        sk.settimeout(timeout)
        sk.connect(control_path(d))
        sk.sendall(request.encode())
        f = sk.makefile("rb")
        out = []
        for _ in range(n):
            line = f.readline()
            check(line.endswith(b"\n"), "answer cut short: %r (log:\n%s)" % (line, d.log()))
            out.append(json.loads(line))
        return out


def probe(d, relay="up"):
    return ctl_lines(d, "test %s\n" % relay)[0]


def mailpoolctl(d, *args):
    return subprocess.run([binary("mailpoolctl"), "-s", control_path(d), *args],
                          capture_output=True, text=True, timeout=60)


def steps(r):
    return [st["step"] for st in r["steps"]]


def expected_pin():
    """pin_sha256 of the test server's key, as openssl computes it."""
    pub = subprocess.run(["openssl", "x509", "-in", os.path.join(CERTS, "server.pem"),
                          "-pubkey", "-noout"], capture_output=True, check=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=pub,
                         capture_output=True, check=True).stdout
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def no_mail(up):
    cmds = [c.split(" ", 1)[0].upper() for c in client_commands(up)]
    check(not any(c in ("MAIL", "RCPT", "DATA", "BDAT") for c in cmds),
          "the probe sent mail commands: %r" % cmds)
    return cmds


def check_timing(r):
    for st in r["steps"]:
        check(isinstance(st["usec"], int) and st["usec"] >= 0, "bad timing %r" % st)
        check(st["host"] == r["host"], "step host %r, report host %r" % (st, r["host"]))
    check(r["total_usec"] == sum(st["usec"] for st in r["steps"]), "total_usec %r" % r)


def check_cert(t):
    check(t["version"].startswith("TLSv1."), "TLS version %r" % t)
    check(t["cipher"], "no cipher %r" % t)
    check("CN=localhost" in t["subject"], "subject %r" % t["subject"])
    check("CN=mailpool test CA" in t["issuer"], "issuer %r" % t["issuer"])
    check(t["san"] == ["DNS:localhost", "IP:127.0.0.1", "IP:::1"], "SANs %r" % t["san"])
    check(t["not_before"].endswith("Z") and t["not_after"].startswith("2081-"),
          "validity %r %r" % (t["not_before"], t["not_after"]))
    check(t["pin_sha256"] == expected_pin(), "pin %r, openssl says %r"
          % (t["pin_sha256"], expected_pin()))


def case_probe_starttls_auth(s):
    up = s.fakesmtp(AUTH_SCRIPT, tls="starttls")
    d = s.daemon(s.relay(up.port, options=("extended", "secure"), user="alice"))
    r = probe(d)
    check(r["ok"] is True, "probe failed: %r\n%s" % (r, d.log()))
    check(steps(r) == ["resolve", "connect", "greeting", "ehlo", "starttls", "tls", "ehlo2",
                       "auth"], "steps %r" % steps(r))
    check_timing(r)
    check(r["relay"] == "up" and r["host"] == "127.0.0.1:%d" % up.port, "relay/host %r" % r)
    check("AUTH PLAIN LOGIN" in r["capabilities"] and "PIPELINING" in r["capabilities"],
          "capabilities (after STARTTLS) %r" % r["capabilities"])
    check("STARTTLS" not in r["capabilities"], "pre-TLS capabilities kept: %r" % r["capabilities"])
    check_cert(r["tls"])
    check(r["auth_mechanism"] == "PLAIN", "mechanism %r" % r["auth_mechanism"])
    raw = json.dumps(r)
    check("s3cret" not in raw and "AGFsaWNl" not in raw, "secret in the answer: %s" % raw)
    up.wait_log("* auth ok user=alice mech=PLAIN")
    wait_for(lambda: "QUIT" in no_mail(up), 5, "QUIT after the probe")
    check("s3cret" not in d.log(), "password in the daemon log")


def case_probe_implicit(s):
    up = s.fakesmtp("", tls="implicit")
    d = s.daemon(s.relay(up.port, options=("extended", "secure_implicit")))
    r = probe(d)
    check(r["ok"] is True, "probe failed: %r" % r)
    check(steps(r) == ["resolve", "connect", "tls", "greeting", "ehlo"], "steps %r" % steps(r))
    check_cert(r["tls"])
    check(r["auth_mechanism"] is None, "mechanism without auth: %r" % r)
    check(not client_commands(up, "P"), "plaintext with implicit TLS: %r" % client_commands(up))


def case_probe_plaintext(s):
    up = s.fakesmtp("ehlo PIPELINING\nehlo SIZE 1000\n")
    d = s.daemon(s.relay(up.port, ca=None))
    r = probe(d)
    check(r["ok"] is True, "probe failed: %r" % r)
    check(steps(r) == ["resolve", "connect", "greeting", "ehlo"], "steps %r" % steps(r))
    check(r["tls"] is None, "TLS fields on a plaintext session: %r" % r["tls"])
    check(r["capabilities"] == ["PIPELINING", "SIZE 1000"], "capabilities %r" % r["capabilities"])
    no_mail(up)


def case_probe_bad_cert(s):
    up = s.fakesmtp("", tls="starttls", cert="wronghost")
    d = s.daemon(s.relay(up.port, options=("extended", "secure")))
    r = probe(d)
    check(r["ok"] is False and r["code"] == "test_failed", "wrong host accepted: %r" % r)
    check(r["failed_step"] == "tls", "failed step %r" % r)
    err = r["error"].lower()
    check(any(w in err for w in ("host", "name", "domain")), "reason not given: %r" % r["error"])
    check(steps(r)[-1] == "tls", "steps %r" % steps(r))
    no_mail(up)


def case_probe_bad_password(s):
    up = s.fakesmtp(AUTH_SCRIPT, tls="starttls")
    d = s.daemon(s.relay(up.port, options=("extended", "secure"), user="alice",
                         password="Wr0ngPassw0rd"))
    r = probe(d)
    check(r["ok"] is False and r["failed_step"] == "auth", "bad password: %r" % r)
    check("535" in r["error"], "no 535 in %r" % r["error"])
    check(r["auth_mechanism"] == "PLAIN", "mechanism %r" % r)
    check("Wr0ngPassw0rd" not in json.dumps(r) and "Wr0ngPassw0rd" not in d.log(),
          "password shown")
    no_mail(up)


def case_probe_unreachable(s):
    port = free_port()
    d = s.daemon(s.relay(port, ca=None))
    r = probe(d)
    check(r["ok"] is False and r["failed_step"] == "connect", "unreachable: %r" % r)
    check("127.0.0.1:%d" % port in r["error"], "host not named: %r" % r["error"])
    check(steps(r) == ["resolve", "connect"], "steps %r" % steps(r))


def case_probe_unknown_relay(s):
    up = s.fakesmtp("")
    d = s.daemon(s.relay(up.port, ca=None))
    r = probe(d, "nosuchrelay")
    check(r["ok"] is False and r["code"] == "no_such_relay", "unknown relay: %r" % r)
    check("nosuchrelay" in r["error"], "relay not named: %r" % r)
    r = ctl_lines(d, "test\n")[0]
    check(r["ok"] is False and "usage" in r["error"], "no argument: %r" % r)
    check(not up.events() or not client_commands(up), "connected anyway: %r" % up.events())


def case_probe_mailpoolctl(s):
    up = s.fakesmtp(AUTH_SCRIPT, tls="starttls")
    d = s.daemon(s.relay(up.port, options=("extended", "secure"), user="alice"),
                 s.relay(free_port(), name="down", ca=None))
    p = mailpoolctl(d, "test", "up")
    check(p.returncode == 0, "mailpoolctl test: %d %s" % (p.returncode, p.stderr))
    for word in ("OK", "STEP", "ehlo2", "starttls", "total", "AUTH PLAIN LOGIN", "TLSv1.",
                 "subjectAltName", "DNS:localhost", expected_pin(), "AUTH: PLAIN"):
        check(word in p.stdout, "%r not in the report:\n%s" % (word, p.stdout))
    p = mailpoolctl(d, "--json", "test", "up")
    check(p.returncode == 0, "--json: %d %s" % (p.returncode, p.stderr))
    r = json.loads(p.stdout)
    check(r["ok"] and r["tls"]["pin_sha256"] == expected_pin(), "--json: %r" % r)
    p = mailpoolctl(d, "test", "down")
    check(p.returncode == 1, "a failed test exits %d" % p.returncode)
    check("FAILED at step connect" in p.stdout and "connect" in p.stdout,
          "failure report:\n%s" % p.stdout)
    p = mailpoolctl(d, "test", "nosuchrelay")
    check(p.returncode == 1 and "no such relay" in p.stderr, "unknown: %r" % p)


def case_probe_client_leaves(s):
    # The server greets after 1.5 s: clients come and go meanwhile.
    up = s.fakesmtp("on connect delay 1500\n")
    d = s.daemon(s.relay(up.port, ca=None))
    path = control_path(d)
    for how in ("close", "shutdown"):
        sk = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sk.connect(path)
        sk.sendall(b"test up\n")
        if how == "shutdown":
            sk.shutdown(socket.SHUT_WR)  # half-closed: still gets its answer
            sk.settimeout(20)
            line = sk.makefile("rb").readline()
            check(json.loads(line)["ok"] is True, "half-closed client: %r" % line)
        sk.close()
    # Pipelined behind a test: answers keep the order of the requests.
    a = ctl_lines(d, "test up\nstatus\ntest nosuch\n", n=3)
    check("steps" in a[0] and a[0]["ok"], "first answer %r" % a[0])
    check("uptime" in a[1], "second answer %r" % a[1])
    check(a[2]["code"] == "no_such_relay", "third answer %r" % a[2])
    time.sleep(2)  # the abandoned probe finishes
    check(d.alive(), "daemon died:\n" + d.log())
    check(probe(d)["ok"], "a later probe failed")


def case_probe_pool_undisturbed(s):
    up = s.fakesmtp("")
    d = s.daemon(s.relay(up.port, ca=None, pool={"max_connections": 1}))
    delivered_ok(send_one(d))
    before = ctl_lines(d, "pool\n")[0]
    r = probe(d)
    check(r["ok"], "probe failed: %r" % r)
    wait_for(lambda: client_commands(up).count("QUIT") == 1, 5, "the probe's QUIT")
    after = ctl_lines(d, "pool\n")[0]
    def sess(p):
        rel = p["relays"][0]
        return ([(x["host"], x["state"], x["messages"]) for x in rel["connections"]],
                rel["opened"], rel["failed"], rel["messages"])
    check(sess(before) == sess(after) and len(sess(after)[0]) == 1,
          "pool changed: %r -> %r" % (before, after))
    cmds = [c.split(" ", 1)[0].upper() for c in client_commands(up)]
    check(cmds.count("MAIL") == 1 and cmds.count("EHLO") == 2,
          "one MAIL (the message) and two sessions expected: %r" % cmds)
    # The pool's session is still the one that takes the next message.
    delivered_ok(send_one(d))
    check(client_commands(up).count("EHLO client.test") == 2, "pool session replaced")


CASES = {name[len("case_"):]: fn for name, fn in list(globals().items())
         if name.startswith("case_")}

if __name__ == "__main__":
    main(CASES)
