#!/usr/bin/python3
"""mailpool-sendmail against the scripted fake LMTP server, one case per CTest entry."""
import os
import re

from harness import Fake, binary, main, run

MSG = b"Subject: test\n\nhello\n"


def sendmail(fake, args, stdin=MSG, env=None, sock=True):
    e = {"MAILPOOL_SOCKET": fake.sock} if sock else {}
    e.update(env or {})
    return run([binary("mailpool-sendmail")] + list(args), stdin=stdin, env_extra=e)


def rcpt_lines(fake):
    return [l for l in fake.commands() if l.startswith("RCPT ")]


def mail_lines(fake):
    return [l for l in fake.commands() if l.startswith("MAIL ")]


def header_block(data):
    return data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def recipients_t(c):
    msg = (b"From: Sender <s@example.org>\n"
           b"To: a@x.test, \"Doe, Jane\" <jane@x.test>,\n"
           b"   (comment) c@x.test\n"
           b"Cc: undisclosed-recipients:;, team: d@x.test, e@x.test;\n"
           b"Bcc: hidden@x.test,\n\tsecret@x.test\n"
           b"Subject: -t test\n\n"
           b"Bcc: this line is body text\n")
    with Fake() as f:
        rc, out, err = sendmail(f, ["-t", "-i", "extra@x.test"], stdin=msg)
        c.eq(rc, 0, "exit code (stderr %r)" % err)
        c.eq(rcpt_lines(f), ["RCPT TO:<%s>" % a for a in (
            "extra@x.test", "a@x.test", "jane@x.test", "c@x.test", "d@x.test", "e@x.test",
            "hidden@x.test", "secret@x.test")], "recipients from To/Cc/Bcc plus arguments")
        data = f.data()
        hdr = header_block(data)
        c.true(not any(l.lower().startswith(b"bcc") or b"secret" in l for l in hdr),
               "Bcc removed from the header: %r" % hdr)
        c.true(b"\r\nBcc: this line is body text\r\n" in data, "body untouched")
        c.true(b"To: a@x.test, \"Doe, Jane\" <jane@x.test>,\r\n   (comment) c@x.test" in data,
               "To kept byte for byte")
    with Fake() as f:
        rc, out, err = sendmail(f, ["-t"], stdin=b"Subject: nobody\n\nx\n")
        c.eq(rc, 65, "-t without recipients")
        c.eq(mail_lines(f), [], "nothing sent")


def header_addition(c):
    with Fake() as f:
        rc, out, err = sendmail(f, ["-F", "Jane Q. Public", "-f", "jq@example.org", "a@x.test"])
        c.eq(rc, 0, "exit code (stderr %r)" % err)
        hdr = header_block(f.data())
        date = [l for l in hdr if l.startswith(b"Date: ")]
        msgid = [l for l in hdr if l.startswith(b"Message-ID: ")]
        c.eq(len(date), 1, "one Date added")
        c.true(date and re.match(rb"Date: (Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d "
                                 rb"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} "
                                 rb"\d\d:\d\d:\d\d [+-]\d{4}$", date[0]), "RFC 5322 date %r" % date)
        c.true(msgid and re.match(rb"Message-ID: <[^<>@\s]+@[^<>@\s]+>$", msgid[0]),
               "Message-ID %r" % msgid)
        c.true(b'From: "Jane Q. Public" <jq@example.org>' in hdr, "From added, quoted: %r" % hdr)
        c.eq(mail_lines(f)[0].split(" ")[1], "FROM:<jq@example.org>", "-f is the sender")
        c.true("XMODE=queue" in mail_lines(f)[0], "queue mode by default")
        sendmail(f, ["-odi", "a@x.test"])
        c.true("XMODE=relay" in mail_lines(f)[1], "-odi asks for relay mode")
        other = [l for l in header_block(f.data(2)) if l.startswith(b"Message-ID: ")]
        c.true(other and msgid and other != msgid, "Message-IDs differ")
    full = (b"Date: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <fixed@x>\n"
            b"from: lower@case.test\nSubject: s\n\nbody\n")
    with Fake() as f:
        rc, out, err = sendmail(f, ["-F", "Ignored", "a@x.test"], stdin=full)
        c.eq(rc, 0, "exit code with complete headers")
        c.eq(f.data(), full.replace(b"\n", b"\r\n") + b".\r\n", "existing headers not rewritten")
    with Fake() as f:
        rc, out, err = sendmail(f, ["-f", "<>", "a@x.test"], stdin=b"no headers at all\n")
        c.eq(mail_lines(f)[0].split(" ")[1], "FROM:<>", "-f '<>' is the null sender")
        data = f.data()
        c.true(b"\r\n\r\nno headers at all\r\n" in data, "headers kept apart from the body")


def dot_line(c):
    msg = b"Subject: dots\n\nbefore\n.\nafter\n"
    with Fake() as f:
        rc, out, err = sendmail(f, ["a@x.test"], stdin=msg)
        c.eq(rc, 0, "without -i")
        c.true(f.data().endswith(b"\r\nbefore\r\n.\r\n"), "a lone dot ends the input")
        c.true(b"after" not in f.data(), "nothing after the dot line")
        for flag in ("-i", "-oi"):
            sendmail(f, [flag, "a@x.test"], stdin=msg)
        for n in (2, 3):
            c.true(f.data(n).endswith(b"\r\nbefore\r\n..\r\nafter\r\n.\r\n"),
                   "-i keeps the dot line (message %d)" % n)
        sendmail(f, ["a@x.test"], stdin=b"Subject: x\r\n\r\nA\r\n.\r\nB\r\n")
        c.true(f.data(4).endswith(b"\r\nA\r\n.\r\n"), "dot CRLF line ends the input too")
        sendmail(f, ["a@x.test"], stdin=b"Subject: x\n\n..\n.x\n")
        c.true(f.data(5).endswith(b"\r\n...\r\n..x\r\n.\r\n"), "other dot lines are text")


def bad_sender(c):
    with Fake() as f:
        for args in (["-f", "a\rb@x.test", "r@x.test"], ["-f", "a\nb@x.test", "r@x.test"],
                     ["-F", "Evil\r\nBcc: x@y", "r@x.test"], ["r@x.test\r\nRCPT TO:<x@y>"],
                     ["-f", "a\x01b", "r@x.test"], ["-f", "a b@x.test", "r@x.test"]):
            rc, out, err = sendmail(f, args)
            c.eq(rc, 65, "EX_DATAERR for %r" % args)
        c.eq(mail_lines(f), [], "nothing sent")


def dash_recipient(c):
    with Fake() as f:
        for args in (["a@x.test", "-oi"], ["--", "-bp"], ["a@x.test", "-t"]):
            rc, out, err = sendmail(f, args)
            c.eq(rc, 64, "EX_USAGE for %r" % args)
        c.true("looks like an option" in err, "says why: %r" % err)
        rc, out, err = sendmail(f, ["-z", "a@x.test"])
        c.eq(rc, 64, "unknown option")
        rc, out, err = sendmail(f, [])
        c.eq(rc, 64, "no recipients")
        c.eq(mail_lines(f), [], "nothing sent")


def no_daemon(c):
    with Fake(start=False) as f:
        rc, out, err = sendmail(f, ["a@x.test"])
        c.eq(rc, 75, "EX_TEMPFAIL")
        c.eq(err.strip(), "mailpool-sendmail: cannot reach mailpoold at %s: No such file or "
             "directory (is the daemon running?)" % f.sock, "clear message")
        rc, out, err = sendmail(f, ["a@x.test"], sock=False,
                                env={"MAILPOOL_SOCKET": os.path.join(f.dir, "nope.sock")})
        c.true(os.path.join(f.dir, "nope.sock") in err, "names the path it tried")


def tempfail(c):
    for script in ({"dot": "451 4.3.0 upstream unavailable"}, {"greeting": "421 4.3.2 busy"},
                   {"rcpt": "452 4.5.3 too many"}, {"data": "451 4.3.0 no space"},
                   {"dot": "CLOSE"}, {"lhlo": "250 " + "x" * 9000}):
        with Fake(script) as f:
            rc, out, err = sendmail(f, ["a@x.test"])
            c.eq(rc, 75, "EX_TEMPFAIL for %r" % script)
    with Fake({"rcpt": ["250 ok", "451 4.3.0 later"]}) as f:
        rc, out, err = sendmail(f, ["a@x.test", "b@x.test"])
        c.eq(rc, 75, "one accepted, one 4xx")
        c.true("b@x.test: 451 4.3.0 later" in err, "names the failed recipient: %r" % err)


def nouser(c):
    with Fake({"rcpt": "550 5.1.1 <a@x.test>: Recipient address rejected"}) as f:
        rc, out, err = sendmail(f, ["a@x.test"])
        c.eq(rc, 67, "550 -> EX_NOUSER")
        c.true("a@x.test: 550 5.1.1 <a@x.test>: Recipient address rejected" in err,
               "daemon's code and text: %r" % err)
    with Fake({"dot": ["553 5.1.3 bad", "551 5.1.6 moved"]}) as f:
        rc, out, err = sendmail(f, ["a@x.test", "b@x.test"])
        c.eq(rc, 67, "553 and 551 -> EX_NOUSER")


def unavailable(c):
    with Fake({"dot": "554 5.7.1 Relay access denied"}) as f:
        rc, out, err = sendmail(f, ["a@x.test"])
        c.eq(rc, 69, "554 -> EX_UNAVAILABLE")
    with Fake({"dot": ["550 5.1.1 unknown", "552 5.3.4 too big"]}) as f:
        rc, out, err = sendmail(f, ["a@x.test", "b@x.test"])
        c.eq(rc, 69, "not all failures unknown-user -> EX_UNAVAILABLE")
    with Fake({"greeting": "554 5.7.1 you may not submit"}) as f:
        rc, out, err = sendmail(f, ["a@x.test"])
        c.eq(rc, 69, "5xx greeting -> EX_UNAVAILABLE")


def partial(c):
    with Fake({"rcpt": ["250 ok", "550 5.1.1 no such user", "451 4.3.0 later"]}) as f:
        rc, out, err = sendmail(f, ["a@x.test", "b@x.test", "c@x.test"])
        c.eq(rc, 67, "permanent wins over temporary")
        c.true("b@x.test: 550 5.1.1 no such user" in err, "550 recipient listed")
        c.true("c@x.test: 451 4.3.0 later" in err, "451 recipient listed")
        c.true("a@x.test" not in err, "accepted recipient not listed without -v")
        c.eq(len(f.data()) > 0, True, "message sent to the accepted one")


def ignored_flags(c):
    flags = ["-oem", "-oee", "-odi", "-odb", "-odq", "-oQ/var/spool/x", "-om", "-os",
             "-L", "tag", "-B", "8BITMIME", "-U", "-n", "-X", "/dev/null", "-em", "-ep",
             "-bm", "-oi", "-ODeliveryMode=b", "-G", "-h", "10", "-Am"]
    with Fake() as f:
        rc, out, err = sendmail(f, flags + ["a@x.test"])
        c.eq(rc, 0, "flags accepted (stderr %r)" % err)
        c.eq(rcpt_lines(f), ["RCPT TO:<a@x.test>"], "only the real recipient")


def unsupported(c):
    with Fake() as f:
        rc, out, err = sendmail(f, ["-bs"])
        c.eq(rc, 64, "EX_USAGE for -bs")
        c.true("not supported yet" in err, "clear message for -bs: %r" % err)
        for args in (["-bd"], ["-qSfoo"], ["-qX"], ["-q", "I1"]):
            rc, out, err = sendmail(f, args)
            c.eq(rc, 64, "EX_USAGE for %r" % args)
        # -q<interval> asks for a queue daemon: ignored, as Postfix does.
        rc, out, err = sendmail(f, ["-q30m"])
        c.eq(rc, 0, "-q30m ignored (stderr %r)" % err)
        c.true("ignored" in err, "says so: %r" % err)
        c.eq(mail_lines(f), [], "nothing sent")


def dsn(c):
    with Fake() as f:
        rc, out, err = sendmail(f, ["-N", "success,delay", "-R", "hdrs", "-V", "job-42",
                                    "a@x.test", "b@x.test"])
        c.eq(rc, 0, "exit code (stderr %r)" % err)
        mail = mail_lines(f)[0]
        c.true(mail.endswith(" RET=HDRS ENVID=job-42"), "MAIL carries RET and ENVID: %r" % mail)
        c.eq(rcpt_lines(f), ["RCPT TO:<a@x.test> NOTIFY=SUCCESS,DELAY",
                             "RCPT TO:<b@x.test> NOTIFY=SUCCESS,DELAY"], "NOTIFY on every RCPT")
        # Case does not matter on the command line; the wire form is upper case.
        rc, out, err = sendmail(f, ["-N", "Never", "-R", "FULL", "a@x.test"])
        c.eq(rc, 0, "-N Never")
        c.true(mail_lines(f)[1].endswith(" RET=FULL"), "RET=FULL: %r" % mail_lines(f)[1])
        c.eq(rcpt_lines(f)[2], "RCPT TO:<a@x.test> NOTIFY=NEVER", "NOTIFY=NEVER")
        # ENVID is xtext: '+', '=' and spaces are encoded.
        rc, out, err = sendmail(f, ["-V", "a+b=c d", "a@x.test"])
        c.eq(rc, 0, "-V with specials")
        c.true(mail_lines(f)[2].endswith(" ENVID=a+2Bb+3Dc+20d"),
               "xtext ENVID: %r" % mail_lines(f)[2])
        # Without the flags nothing DSN-related is sent.
        sendmail(f, ["a@x.test"])
        c.true("RET=" not in mail_lines(f)[3] and "ENVID=" not in mail_lines(f)[3]
               and rcpt_lines(f)[-1] == "RCPT TO:<a@x.test>", "no DSN parameters by default")
        sent = len(mail_lines(f))
        for args in (["-N", "sometimes"], ["-N", "never,success"], ["-N", "success,success"],
                     ["-N", ""], ["-N", "success,"], ["-R", "body"], ["-V", "a\x01b"],
                     ["-V", "caf\u00e9"], ["-V", "x" * 101], ["-V", "+" * 40], ["-V", ""]):
            rc, out, err = sendmail(f, args + ["a@x.test"])
            c.eq(rc, 64, "EX_USAGE for %r" % args)
            c.true(err.startswith("mailpool-sendmail: -%s" % args[0][1]),
                   "names the option for %r: %r" % (args, err))
        c.eq(len(mail_lines(f)), sent, "nothing sent for bad DSN flags")


def env_socket(c):
    with Fake() as f:
        rc, out, err = sendmail(f, ["a@x.test"])
        c.eq(rc, 0, "$MAILPOOL_SOCKET used")
        c.eq(len(mail_lines(f)), 1, "message arrived")


def config_file(c):
    with Fake() as f:
        conf = f.write("mailpool.conf", 'daemon = { submit_socket = "%s"; };\n' % f.sock)
        rc, out, err = sendmail(f, ["-C", conf, "a@x.test"], sock=False,
                                env={"MAILPOOL_SOCKET": "/nonexistent/env.sock"})
        c.eq(rc, 0, "-C wins over $MAILPOOL_SOCKET (stderr %r)" % err)
        c.eq(len(mail_lines(f)), 1, "message arrived")
        bad = f.write("bad.conf", "daemon = { submit_socket = ; \n")
        rc, out, err = sendmail(f, ["-C", bad, "a@x.test"])
        c.eq(rc, 78, "syntax error -> EX_CONFIG")
        c.true("bad.conf:" in err, "names the file: %r" % err)
        rc, out, err = sendmail(f, ["-C", os.path.join(f.dir, "missing.conf"), "a@x.test"])
        c.eq(rc, 78, "missing file -> EX_CONFIG")
        wrong = f.write("wrong.conf", "daemon = { submit_socket = 5; };\n")
        rc, out, err = sendmail(f, ["-C", wrong, "a@x.test"])
        c.eq(rc, 78, "wrong type -> EX_CONFIG")
        c.eq(len(mail_lines(f)), 1, "nothing more sent")


def verbose(c):
    with Fake({"dot": "250 2.0.0 queued as ABC"}) as f:
        rc, out, err = sendmail(f, ["-v", "a@x.test"])
        c.eq(rc, 0, "exit code")
        c.true("a@x.test: 250 2.0.0 queued as ABC" in err, "conversation summary: %r" % err)


def stdin_error(c):
    with Fake() as f:
        # A directory as stdin: read() fails with EISDIR.
        fd = os.open(f.dir, os.O_RDONLY)
        try:
            import subprocess
            env = dict(os.environ, MAILPOOL_SOCKET=f.sock)
            p = subprocess.run([binary("mailpool-sendmail"), "a@x.test"], stdin=fd,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=30)
        finally:
            os.close(fd)
        c.eq(p.returncode, 74, "EX_IOERR")
        c.eq(mail_lines(f), [], "nothing sent")


CASES = {f.__name__: f for f in (
    recipients_t, header_addition, dot_line, bad_sender, dash_recipient, no_daemon, tempfail,
    nouser, unavailable, partial, ignored_flags, unsupported, env_socket, config_file, verbose,
    stdin_error, dsn)}

if __name__ == "__main__":
    main(CASES)
