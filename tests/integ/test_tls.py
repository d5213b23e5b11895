#!/usr/bin/python3
"""Integration cases: TLS modes, certificate checks, STARTTLS downgrade and
injection, AUTH mechanisms (RFC 3207, RFC 8314, RFC 4954).  Usage: test_tls.py CASE"""

from mpharness import (check, client_commands, delivered_ok, main, no_plaintext_secrets,
                       send_one, temp_failed)

AUTH_SCRIPT = "auth PLAIN LOGIN\nuser alice s3cret\n"


def case_plain(s):
    up = s.fakesmtp("")
    d = s.daemon(s.relay(up.port))
    delivered_ok(send_one(d))
    check(all(e[3] == "P" for e in up.events() if e[1] in "CS"), "TLS on a plain relay?")
    check(not any(l.startswith("STARTTLS") for l in client_commands(up)), "STARTTLS sent")
    check(len(up.messages()) == 1, "message not stored upstream")


def case_starttls(s):
    up = s.fakesmtp("", tls="starttls")
    d = s.daemon(s.relay(up.port, options=("extended", "secure")))
    delivered_ok(send_one(d))
    up.wait_log("* tls version=")
    cmds = client_commands(up, "T")
    check(any(c.startswith("MAIL FROM:") for c in cmds), "MAIL not inside TLS: %r" % cmds)
    no_plaintext_secrets(up)
    check(len(up.messages()) == 1, "message not stored upstream")


def case_implicit(s):
    up = s.fakesmtp("", tls="implicit")
    d = s.daemon(s.relay(up.port, options=("extended", "secure_implicit")))
    delivered_ok(send_one(d))
    check(not client_commands(up, "P"), "plaintext commands with implicit TLS: %r"
          % client_commands(up, "P"))
    check(not any(c.startswith("STARTTLS") for c in client_commands(up)), "STARTTLS in TLS")
    check(len(up.messages()) == 1, "message not stored upstream")


def _auth_case(s, advertised, mech):
    up = s.fakesmtp("auth %s\nuser alice s3cret\n" % advertised, tls="starttls")
    d = s.daemon(s.relay(up.port, options=("extended", "secure"), user="alice"))
    delivered_ok(send_one(d))
    up.wait_log("* auth ok user=alice mech=%s" % mech)
    no_plaintext_secrets(up)
    check("s3cret" not in d.log(), "password in the daemon log")


def case_auth_plain(s):
    _auth_case(s, "PLAIN", "PLAIN")


def case_auth_login(s):
    _auth_case(s, "LOGIN", "LOGIN")


def case_auth_wrong_password(s):
    up = s.fakesmtp(AUTH_SCRIPT, tls="starttls")
    d = s.daemon(s.relay(up.port, options=("extended", "secure"), user="alice",
                         password="Wr0ngPassw0rd"))
    r = send_one(d)
    temp_failed(r)
    check(not up.messages(), "message delivered after failed AUTH")
    check(not any(c.startswith("MAIL") for c in client_commands(up)), "MAIL after failed AUTH")
    check("Wr0ngPassw0rd" not in d.log(), "password in the daemon log")


def _bad_cert(s, cert, tls, trusted, needle):
    up = s.fakesmtp("", tls=tls, cert=cert)
    opts = ["extended", "secure" if tls == "starttls" else "secure_implicit"]
    if trusted:
        opts.append("trusted_site")
    d = s.daemon(s.relay(up.port, options=opts, host="localhost"))
    r = send_one(d)
    if trusted:
        delivered_ok(r)
        check(len(up.messages()) == 1, "message not stored upstream")
        check("trusted_site" in d.log() or "not validat" in d.log().lower()
              or "verif" in d.log().lower(), "no warning about trusted_site in the log")
        return
    temp_failed(r)
    text = r.results[0].text.lower() if r.results else ""
    check(any(n in text for n in needle), "4xx %r does not name the TLS reason (%r)"
          % (r.results, needle))
    check(not up.messages(), "message delivered over an unverified TLS session")
    check(not any(c.startswith(("MAIL", "AUTH")) for c in client_commands(up)),
          "MAIL/AUTH sent on a refused TLS session")
    no_plaintext_secrets(up)


HOST_WORDS = ("host", "name", "domain")
TRUST_WORDS = ("self", "trust", "issuer", "signer", "verif", "unknown ca", "chain")
EXPIRED_WORDS = ("expir",)


def case_cert_wronghost(s):
    _bad_cert(s, "wronghost", "starttls", False, HOST_WORDS)


def case_cert_selfsigned(s):
    _bad_cert(s, "selfsigned", "starttls", False, TRUST_WORDS)


def case_cert_expired(s):
    _bad_cert(s, "expired", "starttls", False, EXPIRED_WORDS)


def case_cert_wronghost_implicit(s):
    _bad_cert(s, "wronghost", "implicit", False, HOST_WORDS)


def case_trusted_wronghost(s):
    _bad_cert(s, "wronghost", "starttls", True, ())


def case_trusted_selfsigned(s):
    _bad_cert(s, "selfsigned", "starttls", True, ())


def case_trusted_expired(s):
    _bad_cert(s, "expired", "implicit", True, ())


def case_secure_no_starttls(s):
    # A plaintext-only server: `secure` must fail, never fall back.
    up = s.fakesmtp(AUTH_SCRIPT + "auth-before-tls\n")
    d = s.daemon(s.relay(up.port, options=("extended", "secure"), user="alice"))
    r = send_one(d)
    temp_failed(r, "starttls")
    no_plaintext_secrets(up)
    check(not up.messages(), "message delivered without TLS")


def case_starttls_454(s):
    up = s.fakesmtp(AUTH_SCRIPT + "auth-before-tls\non starttls reply 454 4.7.0 TLS not "
                    "available due to temporary reason\n", tls="starttls")
    d = s.daemon(s.relay(up.port, options=("extended", "secure"), user="alice"))
    r = send_one(d)
    temp_failed(r)
    check(any("454" in x.text or "starttls" in x.text.lower() for x in r.results),
          "reply does not say STARTTLS failed: %r" % r.results)
    no_plaintext_secrets(up)
    check(not up.messages(), "message delivered without TLS")


def case_starttls_502(s):
    up = s.fakesmtp("on starttls reply 502 5.5.1 not implemented\n", tls="starttls")
    d = s.daemon(s.relay(up.port, options=("extended", "secure")))
    temp_failed(send_one(d))
    no_plaintext_secrets(up)
    check(not up.messages(), "message delivered without TLS")


def case_starttls_inject(s):
    # The reply to STARTTLS carries a pipelined plaintext reply behind it; if the
    # daemon fed those bytes into the TLS session it would believe them.
    up = s.fakesmtp(AUTH_SCRIPT + "on starttls inject 250-fake.test\\r\\n250 AUTH PLAIN\\r\\n",
                    tls="starttls")
    d = s.daemon(s.relay(up.port, options=("extended", "secure"), user="alice"))
    r = send_one(d)
    temp_failed(r)
    no_plaintext_secrets(up)
    after = False
    for e in up.events():
        if e[1] == "C" and e[2].upper().startswith("STARTTLS"):
            after = True
        elif after and e[1] == "C":
            raise AssertionError("command sent after an injected STARTTLS reply: %r\n%s"
                                 % (e, "\n".join(up.log_lines())))
    check(not up.messages(), "message delivered after STARTTLS injection")


def case_caps_after_tls(s):
    # AUTH is only advertised inside TLS, and the plaintext EHLO offers a SIZE
    # too small for the message: both must be forgotten and re-read after TLS.
    up = s.fakesmtp(AUTH_SCRIPT + "ehlo PIPELINING\nehlo 8BITMIME\nehlo SIZE 52428800\n",
                    tls="starttls")
    d = s.daemon(s.relay(up.port, options=("extended", "secure"), user="alice"))
    delivered_ok(send_one(d))
    up.wait_log("* auth ok user=alice")
    ehlos = [e for e in up.events() if e[1] == "C" and e[2].upper().startswith("EHLO")]
    check([e[3] for e in ehlos] == ["P", "T"], "expected EHLO before and after TLS: %r" % ehlos)
    no_plaintext_secrets(up)


def case_second_message_reuses_tls(s):
    # The pool keeps the authenticated TLS session: a second message uses it.
    up = s.fakesmtp(AUTH_SCRIPT, tls="starttls")
    d = s.daemon(s.relay(up.port, options=("extended", "secure"), user="alice"))
    delivered_ok(send_one(d))
    delivered_ok(send_one(d))
    check(len(up.messages()) == 2, "two messages expected upstream")
    connects = [e for e in up.events() if e[1] == "*" and e[2].startswith("connect")]
    check(len(connects) == 1, "second message did not reuse the session: %r" % connects)


CASES = {name[5:]: fn for name, fn in list(globals().items()) if name.startswith("case_")}

if __name__ == "__main__":
    main(CASES)
