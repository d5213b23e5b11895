#!/usr/bin/python3
"""Integration cases: every AUTH mechanism (RFC 4954: PLAIN, LOGIN, CRAM-MD5,
SCRAM-SHA-1/-256, XOAUTH2, OAUTHBEARER) and every secret source (password_file,
password_command with its cache and token refresh, systemd credentials) against
fakesmtp's server side.  Usage: test_auth.py CASE"""

import os
import subprocess
import time

from mpharness import (binary, check, client_commands, delivered_ok, main, no_plaintext_secrets,
                       send_one, temp_failed)

ALL_PW = "PLAIN LOGIN CRAM-MD5 SCRAM-SHA-1 SCRAM-SHA-256"


def _deliver_with(s, advertised, mech, mechanisms=None, password="s3cret", user="alice"):
    up = s.fakesmtp("auth %s\nuser %s %s\n" % (advertised, user, password), tls="starttls")
    d = s.daemon(s.relay(up.port, options=("extended", "secure"), user=user, password=password,
                         mechanisms=mechanisms))
    delivered_ok(send_one(d))
    up.wait_log("* auth ok user=%s mech=%s" % (user, mech))
    check(len(up.messages()) == 1, "message not stored upstream")
    no_plaintext_secrets(up)
    check(password not in d.log(), "secret in the daemon log")
    auths = [c for c in client_commands(up) if c.upper().startswith("AUTH ")]
    check(len(auths) == 1 and auths[0].upper().startswith("AUTH " + mech),
          "expected one AUTH %s, got %r" % (mech, auths))
    return up, d


def case_auth_default_scram_sha256(s):
    _deliver_with(s, ALL_PW + " XOAUTH2 OAUTHBEARER", "SCRAM-SHA-256")


def case_auth_scram_sha1(s):
    _deliver_with(s, "PLAIN LOGIN CRAM-MD5 SCRAM-SHA-1", "SCRAM-SHA-1")


def case_auth_cram_md5(s):
    _deliver_with(s, "PLAIN LOGIN CRAM-MD5", "CRAM-MD5")


def case_auth_plain_named(s):
    _deliver_with(s, ALL_PW, "PLAIN", mechanisms=["PLAIN"])


def case_auth_login_named(s):
    _deliver_with(s, ALL_PW, "LOGIN", mechanisms=["LOGIN"])


def case_auth_xoauth2(s):
    _deliver_with(s, "PLAIN XOAUTH2", "XOAUTH2", mechanisms=["XOAUTH2"],
                  password="ya29.token-abc")


def case_auth_oauthbearer(s):
    _deliver_with(s, "PLAIN OAUTHBEARER", "OAUTHBEARER", mechanisms=["OAUTHBEARER"],
                  password="ya29.token-abc")


def case_auth_tokens_not_by_default(s):
    # Only XOAUTH2/OAUTHBEARER besides LOGIN: the default must not pick a token mechanism.
    _deliver_with(s, "XOAUTH2 OAUTHBEARER LOGIN", "LOGIN")


def _refused(s, script, needles, password="s3cret", mechanisms=None):
    up = s.fakesmtp(script, tls="starttls")
    d = s.daemon(s.relay(up.port, options=("extended", "secure"), user="alice",
                         password=password, mechanisms=mechanisms))
    r = send_one(d)
    temp_failed(r, *needles)
    check(not up.messages(), "message delivered after failed AUTH")
    check(not any(c.startswith("MAIL") for c in client_commands(up)), "MAIL after failed AUTH")
    check(password not in d.log(), "secret in the daemon log")
    return up, d


def case_auth_scram_wrong_password(s):
    up, _ = _refused(s, "auth SCRAM-SHA-256\nuser alice s3cret\n", ["relay up", "535"],
                     password="Wr0ngPassw0rd")
    up.wait_log("* auth failed user=alice mech=SCRAM-SHA-256")


def case_auth_cram_wrong_password(s):
    _refused(s, "auth CRAM-MD5\nuser alice s3cret\n", ["relay up", "535"],
             password="Wr0ngPassw0rd")


def case_auth_scram_bad_server_signature(s):
    up, _ = _refused(s, "auth SCRAM-SHA-256\nuser alice s3cret\nscram-bad-signature\n",
                     ["relay up", "server signature"])
    # The client proved itself, but must not accept the server's 235 path.
    check(not any("auth ok" in l for l in up.log_lines()), "server reported success")


def _counter_script(s, tokens, hang=False):
    """A password_command that counts its runs in a file and prints tokens[n-1]."""
    d = s.subdir("cmd")
    count = os.path.join(d, "count")
    script = os.path.join(d, "token.sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\n")
        f.write('n=$(cat "%s" 2>/dev/null || echo 0)\nn=$((n+1))\necho $n > "%s"\n'
                % (count, count))
        if hang:
            f.write("exec sleep 60\n")
        for i, t in enumerate(tokens, 1):
            f.write('[ $n -eq %d ] && { echo "%s"; echo "ignored second line"; exit 0; }\n'
                    % (i, t))
        f.write('echo "%s"\n' % tokens[-1])
    os.chmod(script, 0o700)

    def runs():
        try:
            with open(count) as f:
                return int(f.read().strip() or 0)
        except FileNotFoundError:
            return 0
    return script, runs


def case_auth_token_refresh(s):
    script, runs = _counter_script(s, ["expired-token-1", "fresh-token-2"])
    up = s.fakesmtp("auth XOAUTH2\nuser me@example.com fresh-token-2\n", tls="starttls")
    d = s.daemon(s.relay(up.port, options=("extended", "secure"), user="me@example.com",
                         mechanisms=["XOAUTH2"],
                         auth_secret='password_command = "%s";' % script))
    delivered_ok(send_one(d))
    check(runs() == 2, "password_command ran %d times, expected 2" % runs())
    lines = "\n".join(up.log_lines())
    check("auth failed user=me@example.com mech=XOAUTH2" in lines, "first token not refused")
    check("auth ok user=me@example.com mech=XOAUTH2" in lines, "second token not accepted")
    auths = [c for c in client_commands(up) if c.startswith("AUTH XOAUTH2")]
    check(len(auths) == 2, "expected AUTH twice, got %r" % auths)
    check("fresh-token-2" not in d.log() and "expired-token-1" not in d.log(),
          "token in the daemon log")
    check(len(up.messages()) == 1, "message not stored upstream")


def case_auth_token_refresh_still_refused(s):
    # Both tokens are wrong: one refresh, one retry, then a 4xx (no loop).
    script, runs = _counter_script(s, ["bad-1", "bad-2", "bad-3"])
    up = s.fakesmtp("auth XOAUTH2\nuser me@example.com good\n", tls="starttls")
    d = s.daemon(s.relay(up.port, options=("extended", "secure"), user="me@example.com",
                         mechanisms=["XOAUTH2"], pool={"max_connections": 1},
                         auth_secret='password_command = "%s";' % script))
    r = send_one(d)
    temp_failed(r, "relay up", "authentication failed")
    check(runs() == 2, "password_command ran %d times, expected 2" % runs())
    check(not up.messages(), "delivered with a refused token")


def case_auth_command_hangs(s):
    script, runs = _counter_script(s, ["never"], hang=True)
    up = s.fakesmtp("auth PLAIN\nuser alice s3cret\n", tls="starttls")
    d = s.daemon(s.relay(up.port, options=("extended", "secure"), user="alice",
                         auth_secret='password_command = "%s";' % script,
                         extra="timeouts = { command = 2; };"))
    t0 = time.monotonic()
    r = send_one(d)
    took = time.monotonic() - t0
    temp_failed(r, "relay up", "password_command timed out")
    check(took < 15, "a hanging password_command held the message %.1f s" % took)
    check(runs() == 1, "command ran %d times" % runs())
    check(not any(c.startswith("AUTH") for c in client_commands(up)), "AUTH without a secret")
    # The daemon is still responsive after the hung command was killed.
    check(d.alive(), "daemon died")


def case_auth_command_fails(s):
    up = s.fakesmtp("auth PLAIN\nuser alice s3cret\n", tls="starttls")
    d = s.daemon(s.relay(up.port, options=("extended", "secure"), user="alice",
                         auth_secret='password_command = "echo oops >&2; exit 3";'))
    r = send_one(d)
    temp_failed(r, "relay up", "exited with status 3")


def case_auth_command_ttl_cache(s):
    script, runs = _counter_script(s, ["s3cret"])
    up = s.fakesmtp("auth PLAIN\nuser alice s3cret\n", tls="starttls")
    d = s.daemon(s.relay(up.port, options=("extended", "secure"), user="alice",
                         pool={"max_connections": 1, "max_messages": 1},
                         auth_secret='password_command = "%s"; password_command_ttl = 300;'
                         % script))
    delivered_ok(send_one(d))
    delivered_ok(send_one(d))
    up.wait_log("* message n=2")
    oks = [l for l in up.log_lines() if "auth ok user=alice" in l]
    conns = {l.split(" ", 1)[0] for l in oks}
    check(len(conns) == 2, "expected two sessions, got %r" % oks)
    check(runs() == 1, "password_command ran %d times for two sessions (ttl 300)" % runs())


def case_auth_command_ttl_zero(s):
    script, runs = _counter_script(s, ["s3cret"])
    up = s.fakesmtp("auth PLAIN\nuser alice s3cret\n", tls="starttls")
    d = s.daemon(s.relay(up.port, options=("extended", "secure"), user="alice",
                         pool={"max_connections": 1, "max_messages": 1},
                         auth_secret='password_command = "%s"; password_command_ttl = 0;'
                         % script))
    delivered_ok(send_one(d))
    delivered_ok(send_one(d))
    up.wait_log("* message n=2")
    check(runs() == 2, "password_command ran %d times for two sessions (ttl 0)" % runs())


def case_auth_credential(s):
    creds = s.subdir("credentials")
    os.chmod(creds, 0o700)
    p = os.path.join(creds, "smarthost")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("s3cret\n")
    up = s.fakesmtp("auth SCRAM-SHA-256\nuser alice s3cret\n", tls="starttls")
    d = s.daemon(s.relay(up.port, options=("extended", "secure"), user="alice",
                         auth_secret='credential = "smarthost";'),
                 env={"CREDENTIALS_DIRECTORY": creds})
    delivered_ok(send_one(d))
    up.wait_log("* auth ok user=alice mech=SCRAM-SHA-256")


def case_auth_credential_group_readable(s):
    creds = s.subdir("credentials")
    p = os.path.join(creds, "smarthost")
    with open(p, "w") as f:
        f.write("s3cret\n")
    os.chmod(p, 0o640)
    conf = os.path.join(s.subdir("conf"), "mailpool.conf")
    with open(conf, "w") as f:
        f.write(s.config(s.relay(2525, options=("extended", "secure"), user="alice",
                                 auth_secret='credential = "smarthost";'))
                .replace("@SOCKET@", "/nonexistent/s").replace("@CONTROL@", "/nonexistent/c")
                .replace("@SPOOL@", "/nonexistent/spool"))
    env = dict(os.environ, CREDENTIALS_DIRECTORY=creds)
    r = subprocess.run([binary("mailpoold"), "--check-config", "-c", conf], env=env,
                       capture_output=True, text=True, timeout=30)
    check(r.returncode == 1, "config with a group-readable credential accepted: %r" % (r,))
    check("accessible by group or others" in r.stderr, "mode not checked: %r" % r.stderr)
    check("s3cret" not in r.stderr + r.stdout, "secret printed")
    # Without $CREDENTIALS_DIRECTORY the error says what is missing.
    env.pop("CREDENTIALS_DIRECTORY")
    r = subprocess.run([binary("mailpoold"), "--check-config", "-c", conf], env=env,
                       capture_output=True, text=True, timeout=30)
    check(r.returncode == 1 and "CREDENTIALS_DIRECTORY" in r.stderr,
          "missing CREDENTIALS_DIRECTORY not reported: %r" % (r,))


def case_auth_never_plaintext(s):
    up = s.fakesmtp("auth PLAIN LOGIN SCRAM-SHA-256\nuser alice s3cret\n")
    d = s.daemon(s.relay(up.port, options=("extended",), user="alice"))
    r = send_one(d)
    temp_failed(r, "relay up", "unencrypted")
    check(not any(c.upper().startswith("AUTH") for c in client_commands(up)),
          "AUTH sent in plaintext: %r" % client_commands(up))
    check(not up.messages(), "delivered without AUTH")


def case_auth_allow_plaintext(s):
    up = s.fakesmtp("auth PLAIN SCRAM-SHA-256\nuser alice s3cret\n")
    d = s.daemon(s.relay(up.port, options=("extended",), user="alice",
                         extra="allow_plaintext_auth = true;"))
    delivered_ok(send_one(d))
    check(any(c.startswith("AUTH SCRAM-SHA-256") for c in client_commands(up, "P")),
          "AUTH not sent over the plaintext connection: %r" % client_commands(up))
    up.wait_log("* auth ok user=alice mech=SCRAM-SHA-256")


if __name__ == "__main__":
    main({name[5:]: fn for name, fn in globals().items() if name.startswith("case_")})
