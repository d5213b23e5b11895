#!/usr/bin/python3
"""Integration cases: the command-line programs against a running daemon:
`mailpoold --check-config/--version`, `mailpool-sendmail` (sysexits.h exit
codes, -t with Bcc) and the libmailpool example program.
Usage: test_cli.py CASE"""

import os
import subprocess

from mpharness import binary, check, main, wait_for

MSG_T = (b"From: Alice <alice@client.test>\r\nTo: Bob <bob@example.test>\r\n"
         b"Cc: carol@example.test\r\nBcc: secret@example.test\r\nSubject: via sendmail\r\n"
         b"\r\nHello from cron.\r\n")


def run(args, stdin=b"", env_extra=None, timeout=60):
    env = dict(os.environ)
    env.update(env_extra or {})
    p = subprocess.run(args, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=env, timeout=timeout)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def sendmail(d, args, stdin, socket_path=None):
    return run([binary("mailpool-sendmail")] + args, stdin,
               {"MAILPOOL_SOCKET": socket_path or d.socket})


# -- mailpoold itself --------------------------------------------------------------------


def case_version(s):
    rc, out, err = run([binary("mailpoold"), "--version"])
    check(rc == 0, "--version exit %d: %s" % (rc, err))
    check(out.startswith("mailpoold ") and any(ch.isdigit() for ch in out),
          "--version output: %r" % out)


def case_check_config_ok(s):
    up = s.fakesmtp("")
    conf = os.path.join(s.subdir("conf"), "ok.conf")
    with open(conf, "w") as f:
        f.write(s.config(s.relay(up.port)).replace("@SOCKET@", os.path.join(s.dir, "x.sock"))
                .replace("@CONTROL@", os.path.join(s.dir, "c.sock"))
                .replace("@SPOOL@", os.path.join(s.dir, "spool")))
    rc, out, err = run([binary("mailpoold"), "--check-config", "-c", conf])
    check(rc == 0, "--check-config on a good file: exit %d\n%s%s" % (rc, out, err))
    check(not os.path.exists(os.path.join(s.dir, "x.sock")), "--check-config started serving")


def _bad_config(s, text, line, needle):
    conf = os.path.join(s.subdir("conf"), "bad.conf")
    with open(conf, "w") as f:
        f.write(text.replace("@SOCKET@", os.path.join(s.dir, "x.sock"))
                .replace("@CONTROL@", os.path.join(s.dir, "c.sock"))
                .replace("@SPOOL@", os.path.join(s.dir, "spool")))
    rc, out, err = run([binary("mailpoold"), "--check-config", "-c", conf])
    both = out + err
    check(rc == 1, "--check-config on a bad file: exit %d\n%s" % (rc, both))
    check("%s:%d" % (conf, line) in both or ("bad.conf:%d" % line) in both,
          "error does not name file:line %d:\n%s" % (line, both))
    check(needle.lower() in both.lower(), "error does not mention %r:\n%s" % (needle, both))
    # Starting with it fails too, with the same message.
    rc, out, err = run([binary("mailpoold"), "-c", conf], timeout=10)
    check(rc != 0, "mailpoold started with a bad config")


def case_check_config_misspelt_key(s):
    text = s.config(s.relay(2525, user="alice")).replace("password_file", "pasword_file")
    text = text.replace("relays = {", "relays =\n{", 1)
    _bad_config(s, text, 4, "pasword_file")


def case_check_config_syntax(s):
    text = 'daemon = {\n  hostname = "x";\n  submit_socket = "@SOCKET@"\n  log_level = ;\n};\n'
    _bad_config(s, text, 4, "")


def case_check_config_auth_without_extended(s):
    text = s.config(s.relay(2525, user="alice", options=("secure",)))
    text = text.replace("relays = {", "relays =\n\n{", 1)
    _bad_config(s, text, 5, "extended")


def case_check_config_group_readable_password(s):
    text = s.config(s.relay(2525, user="alice", options=("extended", "secure")))
    pw = text.split('password_file = "')[1].split('"')[0]
    os.chmod(pw, 0o644)
    text = text.replace("relays = {", "relays =\n\n{", 1)
    _bad_config(s, text, 5, pw)


def case_check_config_missing_file(s):
    rc, out, err = run([binary("mailpoold"), "--check-config", "-c",
                        os.path.join(s.dir, "nonexistent.conf")])
    check(rc == 1, "missing file: exit %d" % rc)
    check("nonexistent.conf" in out + err, "error does not name the file: %s" % (out + err))


# -- mailpool-sendmail --------------------------------------------------------------------


def case_sendmail_t_bcc(s):
    up = s.fakesmtp("")
    d = s.daemon(s.relay(up.port))
    rc, out, err = sendmail(d, ["-t", "-i"], MSG_T)
    check(rc == 0, "sendmail -t: exit %d: %s" % (rc, err))
    # Queue mode: delivery follows the durable 250.
    wait_for(lambda: len(up.messages()) == 1, 10, "the message at the upstream")
    msgs = up.messages()
    check(len(msgs) == 1, "expected one message upstream, got %r" % msgs)
    m = msgs[0]
    check(sorted(m.rcpts) == ["bob@example.test", "carol@example.test", "secret@example.test"],
          "recipients: %r" % m.rcpts)
    head = m.eml.split(b"\r\n\r\n", 1)[0]
    check(b"\nbcc:" not in b"\n" + head.lower() and b"secret@" not in m.eml,
          "Bcc header delivered: %r" % head)
    check(b"Hello from cron." in m.eml, "body lost")
    for h in (b"date:", b"message-id:"):
        check(h in (b"\n" + head.lower()), "%s not added: %r" % (h, head))


def case_sendmail_args_and_dots(s):
    up = s.fakesmtp("")
    d = s.daemon(s.relay(up.port))
    body = b"Subject: dots\n\n.leading dot\n..two\nend\n"
    rc, out, err = sendmail(d, ["-i", "-f", "cron@client.test", "bob@example.test"], body)
    check(rc == 0, "exit %d: %s" % (rc, err))
    wait_for(lambda: len(up.messages()) == 1, 10, "the message at the upstream")
    m = up.messages()[0]
    check(m.mail_from == "cron@client.test", "sender: %r" % m.mail_from)
    check(b"\r\n.leading dot\r\n..two\r\nend\r\n" in m.eml, "body not delivered exactly: %r"
          % m.eml)


def case_sendmail_exit_4xx(s):
    up = s.fakesmtp("on rcpt reply 451 4.3.0 try later\n")
    d = s.daemon(s.relay(up.port))
    rc, out, err = sendmail(d, ["-odi", "-i", "bob@example.test"], b"Subject: x\n\nx\n")
    check(rc == 75, "upstream 4xx: expected EX_TEMPFAIL 75, got %d: %s" % (rc, err))


def case_sendmail_exit_5xx(s):
    up = s.fakesmtp("on rcpt reply 550 5.1.1 no such user\n")
    d = s.daemon(s.relay(up.port))
    rc, out, err = sendmail(d, ["-odi", "-i", "bob@example.test"], b"Subject: x\n\nx\n")
    check(rc in (67, 69), "upstream 5xx: expected EX_NOUSER/EX_UNAVAILABLE, got %d: %s"
          % (rc, err))


def case_sendmail_no_daemon(s):
    path = os.path.join(s.dir, "nobody-listens.sock")
    rc, out, err = run([binary("mailpool-sendmail"), "-i", "bob@example.test"],
                       b"Subject: x\n\nx\n", {"MAILPOOL_SOCKET": path})
    check(rc == 75, "daemon not running: expected 75, got %d: %s" % (rc, err))
    check(err.strip(), "no message saying the daemon is not running")


def case_sendmail_upstream_down(s):
    # The relay is unreachable: a temporary failure, never success.
    up = s.fakesmtp("")
    port = up.port
    up.stop()
    d = s.daemon(s.relay(port, timeout=2))
    rc, out, err = sendmail(d, ["-odi", "-i", "bob@example.test"], b"Subject: x\n\nx\n")
    check(rc == 75, "relay down: expected 75, got %d: %s" % (rc, err))


def case_sendmail_queue_mode_relay_down(s):
    # Queue mode (the default): the relay is down, yet the message is safe
    # on disk, so the caller is told 0 and the message waits in the queue.
    up = s.fakesmtp("")
    port = up.port
    up.stop()
    d = s.daemon(s.relay(port, timeout=2))
    rc, out, err = sendmail(d, ["-i", "bob@example.test"], b"Subject: x\n\nx\n")
    check(rc == 0, "queue mode with the relay down: expected 0, got %d: %s" % (rc, err))
    d.wait_log("status=deferred")
    queued = os.listdir(os.path.join(d.dir, "spool", "queue"))
    check(len(queued) == 1, "expected one spool file, found %r" % queued)


def case_sendmail_bad_recipient_arg(s):
    up = s.fakesmtp("")
    d = s.daemon(s.relay(up.port))
    rc, out, err = sendmail(d, ["-i", "bob\r@example.test"], b"Subject: x\n\nx\n")
    check(rc == 65, "CR in a recipient: expected EX_DATAERR 65, got %d" % rc)
    check(not up.messages(), "message sent")


# -- the example program ------------------------------------------------------------------


def case_example_send(s):
    up = s.fakesmtp("on rcpt match two@ reply 550 5.1.1 unknown user\n")
    d = s.daemon(s.relay(up.port))
    rc, out, err = run([binary("mailpool-example-send"), "-s", d.socket, "alice@client.test",
                        "one@example.test", "two@example.test"],
                       b"Subject: example\r\n\r\nHi.\r\n")
    check(len(up.messages()) == 1, "message not delivered: %s %s" % (out, err))
    check(up.messages()[0].rcpts == ["one@example.test"], "rcpts: %r" % up.messages()[0].rcpts)
    check("250" in out + err and "550" in out + err,
          "per-recipient results not printed: %r %r" % (out, err))
    check(rc != 0, "a refused recipient should not exit 0: %d" % rc)


CASES = {name[5:]: fn for name, fn in list(globals().items()) if name.startswith("case_")}

if __name__ == "__main__":
    main(CASES)
