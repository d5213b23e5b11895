#!/usr/bin/python3
"""Integration cases: routing (the routes list, default_relay, XRELAY=),
the allow lists (daemon-wide and per relay, by user and group), the split
of one message over several relays with per-recipient replies in order
(RFC 2033 4.2), and address fixing (qualify_domain, sender, from_header,
aliases).  Usage: test_routing.py CASE"""

import json
import os
import subprocess

from mpharness import (SENDER, binary, check, expect_codes, main, send_one, wait_for)

NOBODY = 65534
MAIL_GID = 8  # Debian's "mail" group

# A client run as another user: MAIL, RCPTs and DATA, codes printed as JSON.
CLIENT = r"""
import json, socket, sys
sys.path.insert(0, sys.argv[1])
from mpharness import LMTP
sender, params = sys.argv[3], sys.argv[4]
rcpts = sys.argv[5:]
with LMTP(sys.argv[2]) as c:
    r = c.send(sender, rcpts, b"Subject: t\r\n\r\nhi\r\n", mail_params=params)
    out = {"mail": [r.mail.code, r.mail.text], "rcpts": [x.code for x in r.rcpts],
           "results": [x.code for x in (getattr(r, "results", None) or [])]}
print(json.dumps(out))
"""


def as_user(d, uid, groups=(), sender=SENDER, rcpts=("bob@example.test",), params=""):
    """Submit as uid (primary gid = uid) with these supplementary groups."""
    for p in (d.scope.dir, d.dir):
        os.chmod(p, 0o755)

    def drop():
        os.setgroups(list(groups))
        os.setgid(uid)
        os.setuid(uid)

    here = os.path.dirname(os.path.abspath(__file__))
    p = subprocess.run(["/usr/bin/python3", "-c", CLIENT, here, d.socket, sender, params,
                        *rcpts], preexec_fn=drop, capture_output=True, timeout=60)
    check(p.returncode == 0, "client as uid %d failed: %s" % (uid, p.stderr.decode()))
    return json.loads(p.stdout)


def two_relays(s, script_b="", mode="relay", routes=None, allow_b=None, **kw):
    """Relays "up" (default) and "lab", each with its own fake upstream."""
    a = s.fakesmtp()
    b = s.fakesmtp(script_b)
    d = s.daemon(s.relay(a.port, mode=mode),
                 s.relay(b.port, name="lab", mode=mode, allow=allow_b), routes=routes, **kw)
    return a, b, d


def got(up):
    return [(m.mail_from, m.rcpts) for m in up.messages()]


# -- route conditions ---------------------------------------------------------------


def route_case(s, rule, hit, miss):
    """`hit` and `miss` are (sender, rcpt) pairs: hit goes to lab, miss to up."""
    rule = dict(rule, relay="lab")
    a, b, d = two_relays(s, routes=[rule])
    with d.lmtp() as c:
        r = c.send(hit[0], [hit[1]], b"Subject: t\r\n\r\nx\r\n")
        expect_codes(r.results, [250])
        r = c.send(miss[0], [miss[1]], b"Subject: t\r\n\r\nx\r\n")
        expect_codes(r.results, [250])
    check(got(b) == [(hit[0], [hit[1]])], "lab got %r" % got(b))
    check(got(a) == [(miss[0], [miss[1]])], "up got %r" % got(a))


def case_route_sender_domain(s):
    route_case(s, {"sender_domain": "lab.example.org"},
               ("cron@LAB.example.org", "x@example.test"), ("cron@example.org", "x@example.test"))


def case_route_sender(s):
    route_case(s, {"sender": "special@client.test"},
               ("special@client.test", "x@example.test"), ("other@client.test", "x@example.test"))


def case_route_null_sender(s):
    route_case(s, {"sender": "<>"}, ("", "x@example.test"), (SENDER, "x@example.test"))


def case_route_recipient_domain(s):
    route_case(s, {"recipient_domain": "lab.test"},
               (SENDER, "bob@lab.test"), (SENDER, "bob@example.test"))


def case_route_user(s):
    # We run as root: a rule for root matches, one for nobody does not.
    a, b, d = two_relays(s, routes=[{"user": "nobody", "relay": "up"},
                                    {"user": "root", "relay": "lab"}], default="up")
    delivered = send_one(d)
    expect_codes(delivered.results, [250])
    check(len(b.messages()) == 1 and not a.messages(), "user route: up %r lab %r"
          % (got(a), got(b)))
    r = as_user(d, NOBODY)
    check(r["results"] == [250], "nobody: %r" % r)
    check(len(a.messages()) == 1, "nobody's message went to %r / %r" % (got(a), got(b)))


def case_route_group(s):
    # Supplementary groups count (SO_PEERGROUPS): nobody in "mail" goes to lab.
    a, b, d = two_relays(s, routes=[{"group": "mail", "relay": "lab"}])
    r = as_user(d, NOBODY, groups=(MAIL_GID,))
    check(r["results"] == [250], "nobody+mail: %r" % r)
    r = as_user(d, NOBODY)
    check(r["results"] == [250], "nobody: %r" % r)
    check(len(b.messages()) == 1 and len(a.messages()) == 1,
          "group route: up %r lab %r" % (got(a), got(b)))


def case_route_first_match(s):
    a, b, d = two_relays(s, routes=[{"recipient_domain": "lab.test", "relay": "lab"},
                                    {"recipient_domain": "lab.test", "relay": "up"}])
    expect_codes(send_one(d, rcpts=("x@lab.test",)).results, [250])
    check(len(b.messages()) == 1 and not a.messages(), "first match did not win")


def case_default_relay(s):
    a, b, d = two_relays(s, routes=[{"recipient_domain": "lab.test", "relay": "lab"}],
                         default="lab")
    expect_codes(send_one(d, rcpts=("x@other.test",)).results, [250])
    check(len(b.messages()) == 1 and not a.messages(), "default relay not used")


def case_route_bad_config(s):
    work = s.subdir("badconf")
    for n, (routes, why) in enumerate((
            ([{"relay": "up"}], "at least one of"),
            ([{"sender_domain": "x.test", "relay": "nope"}], "not defined"),
            ([{"user": "no-such-user-here", "relay": "up"}], "no such user"),
            ([{"recipient_domain": "a b", "relay": "up"}], "domain name"))):
        text = s.config(s.relay(1), routes=routes)
        for k in ("SOCKET", "CONTROL", "SPOOL"):
            text = text.replace("@%s@" % k, os.path.join(work, k.lower()))
        path = os.path.join(work, "bad%d.conf" % n)
        with open(path, "w") as f:
            f.write(text)
        p = subprocess.run([binary("mailpoold"), "--check-config", "-c", path],
                           capture_output=True, timeout=30)
        err = p.stderr.decode() + p.stdout.decode()
        check(p.returncode != 0 and why in err, "bad route accepted (%r): %s" % (routes, err))


# -- XRELAY and allow ---------------------------------------------------------------


def case_xrelay_allowed_denied(s):
    a, b, d = two_relays(s, allow_b={"users": ["root"]})
    r = send_one(d, mail_params="XRELAY=lab")
    expect_codes(r.results, [250])
    check(len(b.messages()) == 1, "XRELAY=lab not used: %r" % got(b))
    r = as_user(d, NOBODY, params="XRELAY=lab")
    check(r["mail"][0] == 550 and "lab" in r["mail"][1], "nobody got XRELAY=lab: %r" % r)
    r = as_user(d, NOBODY)
    check(r["results"] == [250], "nobody on the default relay: %r" % r)
    check(len(b.messages()) == 1 and len(a.messages()) == 1, "wrong relays")


def case_xrelay_allowed_by_group(s):
    a, b, d = two_relays(s, allow_b={"groups": ["mail"]})
    r = as_user(d, NOBODY, groups=(MAIL_GID,), params="XRELAY=lab")
    check(r["mail"][0] == 250 and r["results"] == [250], "mail member refused: %r" % r)
    r = as_user(d, NOBODY, params="XRELAY=lab")
    check(r["mail"][0] == 550, "non-member allowed: %r" % r)
    check(len(b.messages()) == 1, "lab got %r" % got(b))


def case_xrelay_route_wins(s):
    # Routes are the operator's policy: XRELAY= only replaces the default.
    a, b, d = two_relays(s, routes=[{"recipient_domain": "up.test", "relay": "up"}])
    r = send_one(d, rcpts=("x@up.test", "y@other.test"), mail_params="XRELAY=lab")
    expect_codes(r.results, [250, 250])
    check(got(a) == [(SENDER, ["x@up.test"])] and got(b) == [(SENDER, ["y@other.test"])],
          "up %r lab %r" % (got(a), got(b)))


def case_route_denied_by_relay_allow(s):
    a, b, d = two_relays(s, routes=[{"recipient_domain": "lab.test", "relay": "lab"}],
                         allow_b={"users": ["root"]})
    r = as_user(d, NOBODY, rcpts=("x@lab.test", "y@example.test"))
    check(r["rcpts"] == [550, 250] and r["results"] == [250], "nobody: %r" % r)
    check(not b.messages() and got(a) == [(SENDER, ["y@example.test"])], "relays: %r %r"
          % (got(a), got(b)))


def case_daemon_allow_refuses(s):
    up = s.fakesmtp()
    d = s.daemon(s.relay(up.port), allow={"users": ["root"], "groups": ["mail"]})
    r = as_user(d, NOBODY)
    check(r["mail"][0] == 550 and r["results"] == [], "nobody may submit: %r" % r)
    check("not in daemon.allow" in d.log(), "refusal not logged")
    r = as_user(d, NOBODY, groups=(MAIL_GID,))
    check(r["results"] == [250], "mail member refused: %r" % r)
    expect_codes(send_one(d).results, [250])
    check(len(up.messages()) == 2, "messages: %r" % got(up))


# -- the split over several relays --------------------------------------------------


def case_split_two_relays(s):
    a, b, d = two_relays(s, routes=[{"recipient_domain": "lab.test", "relay": "lab"}])
    r = send_one(d, rcpts=("one@example.test", "two@lab.test", "three@example.test"))
    expect_codes(r.results, [250, 250, 250])
    check(got(a) == [(SENDER, ["one@example.test", "three@example.test"])], "up: %r" % got(a))
    check(got(b) == [(SENDER, ["two@lab.test"])], "lab: %r" % got(b))
    check(a.messages()[0].eml == b.messages()[0].eml, "bodies differ")


def case_split_order_with_refusal(s):
    a, b, d = two_relays(s, script_b="on rcpt reply 550 5.1.1 lab-refused-this\n",
                         routes=[{"recipient_domain": "lab.test", "relay": "lab"}])
    r = send_one(d, rcpts=("one@example.test", "two@lab.test", "three@example.test",
                           "four@lab.test"))
    expect_codes(r.results, [250, 550, 250, 550])
    check("lab-refused-this" in r.results[1].text and "5.1.1" in r.results[3].text,
          "upstream text lost: %r" % r.results)


def case_split_order_first_refused(s):
    a = s.fakesmtp("on rcpt reply 550 5.1.1 up-refused-this\n")
    b = s.fakesmtp()
    d = s.daemon(s.relay(a.port), s.relay(b.port, name="lab"),
                 routes=[{"recipient_domain": "lab.test", "relay": "lab"}])
    r = send_one(d, rcpts=("one@lab.test", "two@example.test", "three@lab.test"))
    expect_codes(r.results, [250, 550, 250])
    check("up-refused-this" in r.results[1].text, "text: %r" % r.results[1])
    check(got(b) == [(SENDER, ["one@lab.test", "three@lab.test"])], "lab: %r" % got(b))


def case_split_queue(s):
    a, b, d = two_relays(s, mode="queue",
                         routes=[{"recipient_domain": "lab.test", "relay": "lab"}])
    r = send_one(d, rcpts=("one@example.test", "two@lab.test", "three@example.test"))
    expect_codes(r.results, [250, 250, 250])
    ids = [x.text.split()[-1] for x in r.results]
    check(ids[0] == ids[2] and ids[0] != ids[1], "queue ids per relay: %r" % ids)
    wait_for(lambda: a.messages() and b.messages(), 15, lambda: d.log())
    check(got(a) == [(SENDER, ["one@example.test", "three@example.test"])], "up: %r" % got(a))
    check(got(b) == [(SENDER, ["two@lab.test"])], "lab: %r" % got(b))


def case_split_mixed_modes(s):
    a = s.fakesmtp()
    b = s.fakesmtp("on rcpt reply 550 5.1.1 nope\n")
    d = s.daemon(s.relay(a.port, mode="queue"), s.relay(b.port, name="lab", mode="relay"),
                 routes=[{"recipient_domain": "lab.test", "relay": "lab"}])
    r = send_one(d, rcpts=("one@lab.test", "two@example.test"))
    expect_codes(r.results, [550, 250])
    check("queued as" in r.results[1].text, "queue reply: %r" % r.results[1])
    wait_for(lambda: a.messages(), 15, lambda: d.log())


# -- address fixing -----------------------------------------------------------------

LOCAL_MSG = (b"From: cron\r\nTo: root, Bob <bob>,\r\n carol@else.test\r\nCc: dave (Dave)\r\n"
             b"Subject: =?utf-8?q?r=C3=A9sum=C3=A9?= for root\r\n\r\nTo: root\r\n")


def fixed(s, **kw):
    up = s.fakesmtp()
    d = s.daemon(s.relay(up.port, **kw))
    with d.lmtp() as c:
        r = c.send("cron", ["root", "bob", "x@else.test"], LOCAL_MSG)
    expect_codes(r.results, [250, 250, 250])
    msgs = up.messages()
    check(len(msgs) == 1, "messages: %r" % msgs)
    return msgs[0]


def header(eml, name):
    head = eml.split(b"\r\n\r\n", 1)[0].replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ")
    return [l.split(b":", 1)[1].strip() for l in head.split(b"\r\n")
            if l.lower().startswith(name.lower() + b":")]


def case_qualify_domain(s):
    m = fixed(s, qualify_domain="example.org")
    check(m.mail_from == "cron@example.org", "sender %r" % m.mail_from)
    check(m.rcpts == ["root@example.org", "bob@example.org", "x@else.test"], "rcpts %r" % m.rcpts)
    check(header(m.eml, b"From") == [b"cron@example.org"], "From: %r" % m.eml)
    check(header(m.eml, b"To") == [b"root@example.org, Bob <bob@example.org>, carol@else.test"],
          "To: %r" % header(m.eml, b"To"))
    check(b"\r\nTo: root@example.org, Bob <bob@example.org>,\r\n carol@else.test\r\n" in m.eml,
          "folding lost: %r" % m.eml)
    check(header(m.eml, b"Cc") == [b"dave@example.org (Dave)"], "Cc: %r" % m.eml)
    check(b"=?utf-8?q?r=C3=A9sum=C3=A9?= for root" in m.eml, "Subject touched")
    check(m.eml.endswith(b"\r\n\r\nTo: root\r\n"), "body touched: %r" % m.eml)


def case_aliases(s):
    m = fixed(s, qualify_domain="example.org", aliases={"root": "ops@example.com"})
    check(m.rcpts == ["ops@example.com", "bob@example.org", "x@else.test"], "rcpts %r" % m.rcpts)
    check(header(m.eml, b"To")[0].startswith(b"ops@example.com, "), "To: %r" % m.eml)
    check(m.mail_from == "cron@example.org", "sender %r" % m.mail_from)


def case_sender_from_rewrite(s):
    m = fixed(s, sender="app@example.com", from_header="rewrite")
    check(m.mail_from == "app@example.com", "sender %r" % m.mail_from)
    check(header(m.eml, b"From") == [b"<app@example.com>"] or
          header(m.eml, b"From") == [b"app@example.com"], "From: %r" % header(m.eml, b"From"))
    up = s.fakesmtp()
    d = s.daemon(s.relay(up.port, name="up", sender="app@example.com", from_header="rewrite"))
    body = b"From: Cron Daemon <root@host.local>\r\nSubject: x\r\n\r\nb\r\n"
    expect_codes(send_one(d, body=body).results, [250])
    got_from = header(up.messages()[0].eml, b"From")
    check(got_from == [b"Cron Daemon <app@example.com>"], "display name lost: %r" % got_from)


def case_from_add_if_missing(s):
    up = s.fakesmtp()
    d = s.daemon(s.relay(up.port, sender="app@example.com", from_header="add_if_missing"))
    expect_codes(send_one(d, body=b"Subject: none\r\n\r\nb\r\n").results, [250])
    expect_codes(send_one(d, body=b"From: Me <me@x.test>\r\nSubject: s\r\n\r\nb\r\n").results,
                 [250])
    msgs = up.messages()
    check(msgs[0].eml.startswith(b"From: <app@example.com>\r\nSubject: none\r\n"),
          "From not added: %r" % msgs[0].eml)
    check(header(msgs[1].eml, b"From") == [b"Me <me@x.test>"], "From replaced: %r" % msgs[1].eml)
    check(all(m.mail_from == "app@example.com" for m in msgs), "sender not forced")


def case_from_keep(s):
    up = s.fakesmtp()
    d = s.daemon(s.relay(up.port, sender="app@example.com", from_header="keep"))
    body = b"From: Me <me@x.test>\r\nSubject: s\r\n\r\nb\r\n"
    expect_codes(send_one(d, body=body).results, [250])
    expect_codes(send_one(d, body=b"Subject: s\r\n\r\nb\r\n").results, [250])
    msgs = up.messages()
    check(msgs[0].eml == body and msgs[0].mail_from == "app@example.com", "%r" % msgs[0])
    check(b"From:" not in msgs[1].eml, "From added with keep: %r" % msgs[1].eml)


def case_split_fixing_per_relay(s):
    # Each relay's own rules apply to its own copy of the message.
    a = s.fakesmtp()
    b = s.fakesmtp()
    d = s.daemon(s.relay(a.port, qualify_domain="a.example"),
                 s.relay(b.port, name="lab", qualify_domain="b.example", sender="lab@b.example",
                         from_header="rewrite"),
                 routes=[{"recipient_domain": "lab.test", "relay": "lab"}])
    with d.lmtp() as c:
        r = c.send("cron", ["root", "x@lab.test"], b"From: cron\r\nTo: root\r\n\r\nb\r\n")
    expect_codes(r.results, [250, 250])
    ma, mb = a.messages()[0], b.messages()[0]
    check(ma.mail_from == "cron@a.example" and ma.rcpts == ["root@a.example"], "%r" % ma)
    check(header(ma.eml, b"From") == [b"cron@a.example"], "%r" % ma.eml)
    check(mb.mail_from == "lab@b.example" and mb.rcpts == ["x@lab.test"], "%r" % mb)
    check(header(mb.eml, b"From") == [b"lab@b.example"], "%r" % mb.eml)
    check(header(mb.eml, b"To") == [b"root@b.example"], "%r" % mb.eml)


def case_header_injection(s):
    # Header bytes that try to smuggle a new field stay inside their field.
    up = s.fakesmtp()
    d = s.daemon(s.relay(up.port, qualify_domain="example.org", sender="app@example.com",
                         from_header="rewrite"))
    body = (b"From: \"x\r\n Bcc: evil@x\" <root>\r\nTo: a\"\r\nBcc: evil@x\r\n"
            b"Cc: (comment\r\n\r\nbody\r\n")
    r = send_one(d, body=body)
    expect_codes(r.results, [250])
    eml = up.messages()[0].eml
    head = eml.split(b"\r\n\r\n", 1)[0]
    check(head.count(b"\r\nBcc:") == 1, "a field was added: %r" % eml)
    check(eml.endswith(b"\r\n\r\nbody\r\n"), "body changed: %r" % eml)
    check(d.alive(), "daemon died")


CASES = {name[len("case_"):]: fn for name, fn in globals().items() if name.startswith("case_")}

if __name__ == "__main__":
    main(CASES)
