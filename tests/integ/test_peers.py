#!/usr/bin/python3
"""Integration cases against real third-party peers: Python's smtplib.LMTP
and swaks as LMTP clients on the submission socket (RFC 2033); aiosmtpd
(STARTTLS + AUTH, RFC 3207/4954) and Postfix's smtp-sink as upstreams.
Usage: test_peers.py CASE"""

import glob
import os
import smtplib
import subprocess
import time

from mpharness import MSG, SENDER, check, delivered_ok, main, send_one, temp_failed, wait_for

BODY = b"From: alice@client.test\r\nTo: bob@example.test\r\nSubject: peer\r\n\r\nfrom a peer\r\n"


def case_smtplib_lmtp(s):
    up = s.fakesmtp("on rcpt match nobody@ reply 550 5.1.1 no such user\n")
    d = s.daemon(s.relay(up.port))
    lmtp = smtplib.LMTP(d.socket, timeout=30)
    try:
        lmtp.ehlo_or_helo_if_needed()
        check(lmtp.has_extn("pipelining"), "smtplib sees no PIPELINING")
        refused = lmtp.sendmail(SENDER, ["bob@example.test"], BODY)
        check(refused == {}, "refused: %r" % refused)
        # smtplib.LMTP reads only the first of LMTP's per-recipient replies
        # after the data; the second one is read by hand.
        refused = lmtp.sendmail(SENDER, ["carol@example.test", "nobody@example.test"], BODY)
        check(refused == {}, "refused: %r" % refused)
        code, text = lmtp.getreply()
        check(code == 550 and b"no such user" in text,
              "second recipient's LMTP reply: %r %r" % (code, text))
        lmtp.quit()
    finally:
        lmtp.close()
    msgs = up.messages()
    check(len(msgs) == 2, "messages upstream: %r" % msgs)
    check(msgs[0].eml == BODY, "smtplib message differs: %r" % msgs[0].eml)
    check(msgs[1].rcpts == ["carol@example.test"], "second message rcpts: %r" % msgs[1].rcpts)


def case_swaks_lmtp(s):
    up = s.fakesmtp("")
    d = s.daemon(s.relay(up.port))
    p = subprocess.run(["swaks", "--protocol", "LMTP", "--socket", d.socket,
                        "--from", SENDER, "--to", "bob@example.test,carol@example.test",
                        "--header", "Subject: via swaks", "--body", "swaks body\n.dot line",
                        "--pipeline", "--timeout", "30"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    out = p.stdout.decode("utf-8", "replace")
    check(p.returncode == 0, "swaks exit %d:\n%s" % (p.returncode, out))
    msgs = up.messages()
    check(len(msgs) == 1, "messages upstream: %r\n%s" % (msgs, out))
    check(msgs[0].rcpts == ["bob@example.test", "carol@example.test"], "rcpts %r" % msgs[0].rcpts)
    check(b"Subject: via swaks" in msgs[0].eml and b"\r\n.dot line" in msgs[0].eml,
          "swaks message: %r" % msgs[0].eml)


def _aiosmtpd_msgs(peer, n, timeout=10):
    wait_for(lambda: len(glob.glob(os.path.join(peer.maildir, "*.eml"))) >= n, timeout,
             "%d messages at aiosmtpd" % n)
    out = []
    for i in range(1, n + 1):
        base = os.path.join(peer.maildir, "msg-%d" % i)
        with open(base + ".eml", "rb") as f:
            eml = f.read()
        with open(base + ".env") as f:
            env = f.read()
        out.append((eml, env))
    return out


def case_aiosmtpd_starttls_auth(s):
    peer = s.aiosmtpd(user="alice", password="s3cret")
    d = s.daemon(s.relay(peer.port, options=("extended", "secure"), user="alice",
                         host="localhost"))
    body = BODY + b".leading dot\r\n" + "8bit: café\r\n".encode()
    delivered_ok(send_one(d, rcpts=("bob@example.test", "carol@example.test"), body=body), 2)
    delivered_ok(send_one(d))
    msgs = _aiosmtpd_msgs(peer, 2)
    eml, env = msgs[0]
    check(eml == body, "aiosmtpd got a different message:\n%r\n%r" % (eml, body))
    check("AUTH=alice" in env and "TLS=yes" in env, "not authenticated inside TLS: %r" % env)
    check("RCPT TO:<carol@example.test>" in env, "recipient lost: %r" % env)


def case_aiosmtpd_implicit(s):
    # Without AUTH: the peer script's aiosmtpd does not offer AUTH on implicit TLS.
    peer = s.aiosmtpd(implicit=True)
    d = s.daemon(s.relay(peer.port, options=("extended", "secure_implicit"), host="localhost"))
    delivered_ok(send_one(d))
    eml, env = _aiosmtpd_msgs(peer, 1)[0]
    check(eml == MSG, "message differs: %r" % eml)


def case_aiosmtpd_wrong_password(s):
    peer = s.aiosmtpd(user="alice", password="s3cret")
    d = s.daemon(s.relay(peer.port, options=("extended", "secure"), user="alice",
                         password="N0tThePassw0rd", host="localhost"))
    r = send_one(d)
    temp_failed(r)
    check(any("535" in x.text or "auth" in x.text.lower() for x in r.results),
          "reply does not say AUTH failed: %r" % r.results)
    check(not glob.glob(os.path.join(peer.maildir, "*.eml")), "message delivered")
    check("N0tThePassw0rd" not in d.log(), "password in the daemon log")


def case_aiosmtpd_untrusted(s):
    # aiosmtpd with a self-signed certificate: refused unless trusted_site.
    peer = s.aiosmtpd(user="alice", password="s3cret", cert="selfsigned")
    d = s.daemon(s.relay(peer.port, options=("extended", "secure"), user="alice",
                         host="localhost"))
    temp_failed(send_one(d))
    check(not glob.glob(os.path.join(peer.maildir, "*.eml")), "message delivered")


def _sink_messages(peer, n, timeout=10):
    def files():
        fs = [f for f in glob.glob(os.path.join(peer.maildir, "*")) if os.path.isfile(f)]
        return fs if len(fs) >= n else None
    wait_for(files, timeout, "%d messages at smtp-sink:\n%s" % (n, peer.stderr()))
    time.sleep(0.2)  # it writes as the data arrives; let the last one finish
    out = []
    for f in glob.glob(os.path.join(peer.maildir, "*")):
        with open(f, "rb") as fh:
            out.append(fh.read())
    return out


def case_smtp_sink(s):
    peer = s.smtp_sink()
    d = s.daemon(s.relay(peer.port))
    with d.lmtp() as c:
        for i in range(5):
            body = b"Subject: sink %d\r\n\r\nmessage %d\r\n.dot\r\n" % (i, i)
            r = c.send(SENDER, ["r%d@example.test" % i, "x%d@example.test" % i], body)
            delivered_ok(r, 2)
    dumps = _sink_messages(peer, 5)
    check(len(dumps) == 5, "smtp-sink has %d messages" % len(dumps))
    subjects = sorted(x for dump in dumps for x in dump.splitlines() if x.startswith(b"Subject:"))
    check(subjects == [b"Subject: sink %d" % i for i in range(5)], "subjects: %r" % subjects)
    for dump in dumps:
        check(b"X-Mail-Args: <alice@client.test>" in dump, "envelope: %r" % dump[:300])
        check(dump.count(b"X-Rcpt-Args:") == 2, "recipients: %r" % dump[:300])
        check(b"\n.dot\n" in dump, "dot line not un-stuffed by the sink: %r" % dump)


def case_smtp_sink_soft_reject(s):
    # smtp-sink refusing every RCPT with a 4xx (and no PIPELINING).
    peer = s.smtp_sink(extra=("-r", "rcpt"))
    d = s.daemon(s.relay(peer.port))
    r = send_one(d, rcpts=("one@example.test", "two@example.test"))
    temp_failed(r)
    check(r.results[0].code == r.results[1].code, "codes differ: %r" % r.results)


def case_smtp_sink_421_after_dot(s):
    # 421 and disconnect after the final dot: a 4xx, never a 250.
    peer = s.smtp_sink(extra=("-Q", "."))
    d = s.daemon(s.relay(peer.port))
    temp_failed(send_one(d, rcpts=("one@example.test", "two@example.test")))


CASES = {name[5:]: fn for name, fn in list(globals().items()) if name.startswith("case_")}

if __name__ == "__main__":
    main(CASES)
