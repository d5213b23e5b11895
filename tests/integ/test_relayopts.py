#!/usr/bin/python3
"""Integration cases: relay TLS settings (ciphers, min_version, client
certificates, pin_sha256, secure_fallback), prefer_ipv6 address order, and
tunnels: SOCKS5 (RFC 1928/1929) and HTTP CONNECT proxies, plain port
forwards, and `mailpoolctl relays`.  Usage: test_relayopts.py CASE"""

import base64
import hashlib
import json
import os
import subprocess

from mpharness import (CERTS, SRC_DIR, Peer, binary, check, client_commands, delivered_ok, main,
                       send_one, temp_failed, wait_for)

CA = os.path.join(CERTS, "ca.pem")
IMPLICIT = ("extended", "secure_implicit")
RELAY_NAME = "relay.mailpool.test"  # resolves nowhere: only the proxies know it


def spki_pin(cert):
    """base64 SHA-256 of the certificate's SubjectPublicKeyInfo (DER)."""
    der = subprocess.run(["openssl", "x509", "-in", os.path.join(CERTS, cert + ".pem"),
                          "-pubkey", "-noout"], check=True, capture_output=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=der,
                         check=True, capture_output=True).stdout
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def tls_lines(up):
    return [l for l in up.log_lines() if "* tls" in l]


# ---- secure_fallback, ciphers, min_version ------------------------------------

def case_fallback_refused_without(s):
    up = s.fakesmtp("tls-max-version 1.1\n", tls="implicit")
    d = s.daemon(s.relay(up.port, options=IMPLICIT))
    temp_failed(send_one(d))
    check(not up.messages(), "delivered over TLS 1.1 without secure_fallback")


def case_fallback_accepted_with(s):
    up = s.fakesmtp("tls-max-version 1.1\n", tls="implicit")
    d = s.daemon(s.relay(up.port, options=IMPLICIT + ("secure_fallback",)))
    d.wait_log("secure_fallback is set")
    delivered_ok(send_one(d))
    up.wait_log("* tls version=TLSv1.1")


def case_ciphers_one_suite(s):
    up = s.fakesmtp("tls-max-version 1.2\n", tls="implicit")
    d = s.daemon(s.relay(up.port, options=IMPLICIT,
                         tls_extra='ciphers = "ECDHE-RSA-AES256-GCM-SHA384";'))
    delivered_ok(send_one(d))
    up.wait_log("cipher=ECDHE-RSA-AES256-GCM-SHA384")


def case_ciphers_none_in_common(s):
    up = s.fakesmtp("tls-max-version 1.2\n", tls="implicit")
    d = s.daemon(s.relay(up.port, options=IMPLICIT,
                         tls_extra='ciphers = "ECDHE-ECDSA-AES256-GCM-SHA384";'))
    temp_failed(send_one(d))
    check(not up.messages(), "delivered without a common suite")


def case_min_version_13(s):
    up = s.fakesmtp("tls-max-version 1.2\n", tls="implicit")
    d = s.daemon(s.relay(up.port, options=IMPLICIT, tls_extra='min_version = "1.3";'))
    temp_failed(send_one(d))
    check(not up.messages(), "delivered over TLS 1.2 with min_version 1.3")
    up2 = s.fakesmtp("", tls="implicit")
    d2 = s.daemon(s.relay(up2.port, options=IMPLICIT, tls_extra='min_version = "1.3";'))
    delivered_ok(send_one(d2))
    up2.wait_log("* tls version=TLSv1.3")


# ---- pins ---------------------------------------------------------------------

def case_pin_match(s):
    up = s.fakesmtp("", tls="implicit")
    d = s.daemon(s.relay(up.port, options=IMPLICIT,
                         tls_extra='pin_sha256 = [ "%s" ];' % spki_pin("server")))
    delivered_ok(send_one(d))


def case_pin_mismatch_valid_chain(s):
    up = s.fakesmtp("", tls="implicit")
    d = s.daemon(s.relay(up.port, options=IMPLICIT,
                         tls_extra='pin_sha256 = [ "%s" ];' % spki_pin("selfsigned")))
    temp_failed(send_one(d), "pin")
    check(not up.messages(), "delivered despite a pin mismatch")


def case_pin_trusted_site_selfsigned(s):
    up = s.fakesmtp("", tls="implicit", cert="selfsigned")
    d = s.daemon(s.relay(up.port, options=IMPLICIT + ("trusted_site",), ca=None,
                         tls_extra='pin_sha256 = [ "%s" ];' % spki_pin("selfsigned")))
    delivered_ok(send_one(d))
    # the pins are what stands in for the CA: another key is refused
    up2 = s.fakesmtp("", tls="implicit", cert="selfsigned")
    d2 = s.daemon(s.relay(up2.port, options=IMPLICIT + ("trusted_site",), ca=None,
                          tls_extra='pin_sha256 = [ "%s" ];' % spki_pin("server")))
    temp_failed(send_one(d2), "pin")


# ---- client certificates -------------------------------------------------------

CLIENT_CERT = 'client_cert = "%s"; client_key = "%s";' % (
    os.path.join(CERTS, "client.pem"), os.path.join(CERTS, "client.key"))


def case_client_cert_accepted(s):
    up = s.fakesmtp("require-client-cert %s\n" % CA, tls="implicit")
    d = s.daemon(s.relay(up.port, options=IMPLICIT, tls_extra=CLIENT_CERT))
    delivered_ok(send_one(d))
    up.wait_log("tls-client-cert subject=")
    check(any("mailpool test client" in l for l in up.log_lines()), "client subject not logged")


def case_client_cert_missing(s):
    up = s.fakesmtp("require-client-cert %s\n" % CA, tls="implicit")
    d = s.daemon(s.relay(up.port, options=IMPLICIT))
    temp_failed(send_one(d))
    check(not up.messages(), "delivered without the client certificate")


# ---- prefer_ipv6 ------------------------------------------------------------------

def hosts_file(s, text):
    p = os.path.join(s.subdir("hosts"), "hosts")
    with open(p, "w") as f:
        f.write(text)
    return {"MAILPOOL_HOSTS_FILE": p}


def dual_fakes(s):
    """Fakes on [::1]:P and 127.0.0.1:P, the same P."""
    last = None
    for _ in range(10):
        up6 = s.fakesmtp("banner 220 six.test ESMTP\n", listen="[::1]:0")
        try:
            up4 = s.fakesmtp("banner 220 four.test ESMTP\n", listen="127.0.0.1:%d" % up6.port)
            return up6, up4
        except RuntimeError as e:  # the port is taken on IPv4: try another
            last = e
    raise last


def case_prefer_ipv6_order(s):
    up6, up4 = dual_fakes(s)
    env = hosts_file(s, "::1 dual.mailpool.test\n127.0.0.1 dual.mailpool.test\n")
    d = s.daemon(s.relay(up6.port, host="dual.mailpool.test", ca=None), env=env)
    delivered_ok(send_one(d))
    check(len(up4.messages()) == 1 and not up6.messages(), "without prefer_ipv6: not IPv4")
    d2 = s.daemon(s.relay(up6.port, host="dual.mailpool.test", ca=None,
                          options=("extended", "prefer_ipv6")), env=env)
    delivered_ok(send_one(d2))
    check(len(up6.messages()) == 1 and len(up4.messages()) == 1, "with prefer_ipv6: not IPv6")


def case_ipv6_only_name(s):
    up6 = s.fakesmtp("", listen="[::1]:0")
    env = hosts_file(s, "::1 v6only.mailpool.test\n")
    d = s.daemon(s.relay(up6.port, host="v6only.mailpool.test", ca=None), env=env)
    delivered_ok(send_one(d))
    check(len(up6.messages()) == 1, "not delivered over IPv6")


# ---- proxies --------------------------------------------------------------------

def start_proxy(s, script, *extra):
    work = s.subdir(script.split("_")[0])
    port_file = os.path.join(work, "port")
    log = os.path.join(work, "proxy.log")
    open(log, "w").close()
    p = Peer(s, ["/usr/bin/python3", os.path.join(SRC_DIR, "tests", "peers", script),
                 "--port-file", port_file, "--log", log,
                 "--map", "%s=127.0.0.1" % RELAY_NAME, *extra], work, port_file=port_file)
    p.log = lambda: open(log).read()
    return p


def tunnel_relay(s, up, proxy_url, options=("extended", "tunnel"), **kw):
    return s.relay(up.port, host=RELAY_NAME, options=options,
                   extra='proxy = "%s";' % proxy_url, **kw)


def case_socks5_plain(s):
    up = s.fakesmtp("")
    px = start_proxy(s, "socks5_proxy.py")
    d = s.daemon(tunnel_relay(s, up, "socks5://127.0.0.1:%d" % px.port, ca=None))
    delivered_ok(send_one(d))
    check("connect name %s %d" % (RELAY_NAME, up.port) in px.log(),
          "the relay name was not sent to the proxy: %r" % px.log())


def case_socks5_auth(s):
    up = s.fakesmtp("")
    px = start_proxy(s, "socks5_proxy.py", "--user", "tun", "--password", "pr0xyPW")
    d = s.daemon(tunnel_relay(s, up, "socks5://tun:pr0xyPW@127.0.0.1:%d" % px.port, ca=None))
    delivered_ok(send_one(d))
    check("auth ok tun" in px.log(), "no RFC 1929 login: %r" % px.log())
    check("pr0xyPW" not in d.log(), "proxy password in the daemon log")


def case_socks5_auth_wrong(s):
    up = s.fakesmtp("")
    px = start_proxy(s, "socks5_proxy.py", "--user", "tun", "--password", "right")
    d = s.daemon(tunnel_relay(s, up, "socks5://tun:wrong@127.0.0.1:%d" % px.port, ca=None))
    temp_failed(send_one(d), "proxy", "password")


def case_socks5_tls_server_name(s):
    up = s.fakesmtp("", tls="implicit")
    px = start_proxy(s, "socks5_proxy.py")
    url = "socks5://127.0.0.1:%d" % px.port
    # The certificate names localhost: verified against tls.server_name, not the address.
    d = s.daemon(tunnel_relay(s, up, url, options=("extended", "tunnel", "secure_implicit"),
                              tls_extra='server_name = "localhost";'))
    delivered_ok(send_one(d))
    up.wait_log("tls-sni name=localhost")
    # Without server_name the relay's own name is checked, and the certificate lacks it.
    d2 = s.daemon(tunnel_relay(s, up, url, options=("extended", "tunnel", "secure_implicit")))
    temp_failed(send_one(d2))
    check(len(up.messages()) == 1, "delivered to a certificate for another name")


def case_socks5_refused(s):
    up = s.fakesmtp("")
    px = start_proxy(s, "socks5_proxy.py", "--reply", "5")
    d = s.daemon(tunnel_relay(s, up, "socks5://127.0.0.1:%d" % px.port, ca=None))
    temp_failed(send_one(d), "socks5 proxy", "127.0.0.1:%d" % px.port, "connection refused")


def case_socks5_malformed(s):
    up = s.fakesmtp("")
    px = start_proxy(s, "socks5_proxy.py", "--raw", "05000007000000000000")
    d = s.daemon(tunnel_relay(s, up, "socks5://127.0.0.1:%d" % px.port, ca=None))
    temp_failed(send_one(d), "proxy", "address type")


def case_http_connect(s):
    up = s.fakesmtp("", tls="implicit")
    px = start_proxy(s, "connect_proxy.py")
    d = s.daemon(tunnel_relay(s, up, "http://127.0.0.1:%d" % px.port,
                              options=("extended", "tunnel", "secure_implicit"),
                              tls_extra='server_name = "localhost";'))
    delivered_ok(send_one(d))
    check("CONNECT %s:%d HTTP/1.1" % (RELAY_NAME, up.port) in px.log(),
          "wrong CONNECT line: %r" % px.log())



def case_http_connect_credentials(s):
    # Basic credentials for the proxy (RFC 7617): sent with CONNECT, never
    # logged, masked in relays; a wrong password gets the proxy's 407 as a
    # temporary failure naming the credentials.
    up = s.fakesmtp("", tls="implicit")
    px = start_proxy(s, "connect_proxy.py", "--auth", "tun:Pr0xy P@ss")
    opts = dict(options=("extended", "tunnel", "secure_implicit"),
                tls_extra='server_name = "localhost";')
    d = s.daemon(tunnel_relay(s, up, "http://tun:Pr0xy%%20P%%40ss@127.0.0.1:%d" % px.port, **opts))
    delivered_ok(send_one(d))
    check("auth ok" in px.log(), "proxy log: %r" % px.log())
    table = ctl(d, "relays")
    check("http://tun:***@127.0.0.1:%d" % px.port in table and "Pr0xy" not in table,
          "relays output: %s" % table)
    check("Pr0xy" not in d.log() and "dHVuOlByMHh5" not in d.log(), "the secret in the log")
    d2 = s.daemon(tunnel_relay(s, up, "http://tun:wrong@127.0.0.1:%d" % px.port, **opts))
    temp_failed(send_one(d2), "407", "credentials")
    check("auth bad" in px.log(), "proxy log: %r" % px.log())

def case_http_403(s):
    up = s.fakesmtp("")
    px = start_proxy(s, "connect_proxy.py", "--status", "403")
    d = s.daemon(tunnel_relay(s, up, "http://127.0.0.1:%d" % px.port, ca=None))
    temp_failed(send_one(d), "http proxy", "403")


def case_http_malformed(s):
    up = s.fakesmtp("")
    px = start_proxy(s, "connect_proxy.py", "--raw", "HTTP/1.1 2x0 ok\\r\\n\\r\\n")
    d = s.daemon(tunnel_relay(s, up, "http://127.0.0.1:%d" % px.port, ca=None))
    temp_failed(send_one(d), "proxy", "malformed")


# ---- ports imply nothing with tunnel ----------------------------------------------
#
# The relay is "relay.mailpool.test:465" (or :587); the proxy maps that port to the
# fake's, so no test binds a fixed port.  Without a proxy the same rule holds for a
# plain forward: the effective options show it.

def case_tunnel_465_not_implicit(s):
    up = s.fakesmtp("")
    px = start_proxy(s, "socks5_proxy.py", "--port-map", "465=%d" % up.port)
    d = s.daemon(s.relay(465, host=RELAY_NAME, options=("extended", "tunnel"), ca=None,
                         extra='proxy = "socks5://127.0.0.1:%d";' % px.port),
                 s.relay(465, name="fwd", options=("extended", "tunnel"), ca=None))
    for rel in ctl_json(d)["relays"]:
        check("secure_implicit" not in rel["options"],
              "465 with tunnel implied secure_implicit: %r" % rel)
    delivered_ok(send_one(d))
    check("connect name %s 465" % RELAY_NAME in px.log(), "proxy log: %r" % px.log())
    check(all(e[3] == "P" for e in up.events() if e[1] in "CS"), "TLS on port 465 with tunnel")


def case_tunnel_587_not_extended(s):
    up = s.fakesmtp("")
    px = start_proxy(s, "socks5_proxy.py", "--port-map", "587=%d" % up.port)
    d = s.daemon(s.relay(587, host=RELAY_NAME, options=("tunnel",), ca=None,
                         extra='proxy = "socks5://127.0.0.1:%d";' % px.port),
                 s.relay(587, name="fwd", options=("tunnel",), ca=None))
    for rel in ctl_json(d)["relays"]:
        check("extended" not in rel["options"], "587 with tunnel implied extended: %r" % rel)
    delivered_ok(send_one(d))
    cmds = client_commands(up)
    check(any(c.startswith("HELO ") for c in cmds) and
          not any(c.startswith("EHLO") for c in cmds), "not HELO: %r" % cmds)


# ---- mailpoolctl relays ----------------------------------------------------------

def ctl(d, *args):
    sock = os.path.join(d.dir, "control.sock")
    wait_for(lambda: os.path.exists(sock), 10, "the control socket")
    r = subprocess.run([binary("mailpoolctl"), "-s", os.path.join(d.dir, "control.sock"),
                        *args], capture_output=True, text=True, timeout=20)
    check(r.returncode == 0, "mailpoolctl %r: %d %s" % (args, r.returncode, r.stderr))
    return r.stdout


def ctl_json(d):
    return json.loads(ctl(d, "--json", "relays"))


def case_relays_no_secrets(s):
    up = s.fakesmtp("")
    secret_pw, proxy_pw = "Acc0untS3cret", "Pr0xyS3cret"
    d = s.daemon(s.relay(up.port, user="alice", password=secret_pw, host=RELAY_NAME,
                         options=("extended", "tunnel", "secure_implicit", "prefer_ipv6"),
                         extra='proxy = "socks5://tun:%s@127.0.0.1:1080";' % proxy_pw,
                         tls_extra='pin_sha256 = [ "%s" ]; ciphers = "%s";'
                         % (spki_pin("server"), "ECDHE-RSA-AES128-GCM-SHA256")))
    table, raw = ctl(d, "relays"), ctl(d, "--json", "relays")
    for text in (table, raw):
        check(secret_pw not in text and proxy_pw not in text, "a secret was printed:\n" + text)
        check("socks5://tun:***@127.0.0.1:1080" in text, "proxy not redacted:\n" + text)
    rel = json.loads(raw)["relays"][0]
    check(rel["hosts"] == ["%s:%d" % (RELAY_NAME, up.port)], "hosts: %r" % rel["hosts"])
    check(rel["options"] == ["extended", "secure_implicit", "prefer_ipv6", "tunnel"],
          "options: %r" % rel["options"])
    check(rel["auth"]["user"] == "alice", "auth user: %r" % rel["auth"])
    check(rel["tls"]["ciphers"] == "ECDHE-RSA-AES128-GCM-SHA256", "tls: %r" % rel["tls"])
    check("timeouts" in rel and "pool" in rel and rel["mode"] == "relay", "fields: %r" % rel)
    check("tls.pin_sha256" in table and "proxy" in table, "table rows missing:\n" + table)


def case_relays_command_hidden(s):
    # A password_command line may carry a token: relays shows only that one is set.
    up = s.fakesmtp("")
    cmd = "/bin/echo T0kenInTheCommandLine"
    d = s.daemon(s.relay(up.port, user="alice",
                         auth_secret='password_command = "%s"; password_command_ttl = 120;' % cmd))
    table, raw = ctl(d, "relays"), ctl(d, "--json", "relays")
    for text in (table, raw):
        check("T0kenInTheCommandLine" not in text and "/bin/echo" not in text,
              "the command line was printed:\n" + text)
    auth = json.loads(raw)["relays"][0]["auth"]
    check(auth["secret_source"] == "password_command" and auth["password_command_ttl"] == 120,
          "auth: %r" % auth)



def case_relays_policy(s):
    # Who may use the relay, its budgets and its address fixing are part of
    # the effective profile too.
    up = s.fakesmtp("")
    d = s.daemon(s.relay(up.port, allow={"users": ["root", 65534], "groups": ["mail"]},
                         qualify_domain="example.org", sender="app@example.com",
                         from_header="rewrite", aliases={"root": "ops@example.com"},
                         extra="rate = { messages_per_second = 5; max_recipients = 7; }; "
                               "limits = { max_logins_per_minute = 3; };"),
                 s.relay(up.port, name="open"))
    table, raw = ctl(d, "relays"), ctl(d, "--json", "relays")
    rel, other = json.loads(raw)["relays"]
    check(rel["allow"] == {"uids": [0, 65534], "gids": [8]}, "allow: %r" % rel["allow"])
    check(rel["rate"] == {"messages_per_second": 5, "messages_per_minute": 0,
                          "max_recipients": 7}, "rate: %r" % rel["rate"])
    check(rel["limits"] == {"max_logins_per_minute": 3}, "limits: %r" % rel["limits"])
    check((rel["qualify_domain"], rel["sender"], rel["from_header"], rel["aliases"])
          == ("example.org", "app@example.com", "rewrite", {"root": "ops@example.com"}),
          "address fixing: %r" % rel)
    check(other["allow"] is None and other["from_header"] == "keep" and other["aliases"] == {}
          and other["qualify_domain"] is None, "defaults: %r" % other)
    for row in ("rate.messages_per_second", "limits.max_logins_per_minute", "aliases.root",
                "from_header"):
        check(row in table, "table row %s missing:\n%s" % (row, table))

# ---- config errors --------------------------------------------------------------

def check_config(s, relay):
    d = s.subdir("conf")
    path = os.path.join(d, "mailpool.conf")
    with open(path, "w") as f:
        f.write(s.config(relay).replace("@SOCKET@", os.path.join(d, "s.sock"))
                .replace("@CONTROL@", os.path.join(d, "c.sock"))
                .replace("@SPOOL@", os.path.join(d, "spool")))
    r = subprocess.run([binary("mailpoold"), "--check-config", "-c", path],
                       capture_output=True, text=True, timeout=20)
    return r.returncode, r.stdout + r.stderr


def case_config_errors(s):
    bad = [
        ('proxy = "socks5://127.0.0.1:1080";', ("extended",), "", "needs the 'tunnel' option"),
        ('proxy = "http://u:Pw0rdX@127.0.0.1";', ("extended", "tunnel"), "", "port"),
        ('proxy = "socks5://u:Pw0rdX@127.0.0.1";', ("extended", "tunnel"), "", "port"),
        ('proxy = "ftp://127.0.0.1:21";', ("extended", "tunnel"), "", "socks5://"),
        ("", ("extended", "secure"), 'pin_sha256 = [ "abc" ];', "base64"),
        ("", ("extended", "secure"), 'client_key = "%s";' % os.path.join(CERTS, "client.key"),
         "needs 'tls.client_cert'"),
        ("", ("extended", "secure"), 'client_cert = "relative.pem";', "absolute"),
        ("", ("extended", "secure"), 'ciphers = "AES128 SHA";', "ciphers"),
    ]
    for extra, opts, tls_extra, needle in bad:
        rc, out = check_config(s, s.relay(25, options=opts, extra=extra, tls_extra=tls_extra))
        check(rc != 0, "accepted: %s %s" % (extra, tls_extra))
        check(needle in out, "%r not in %r" % (needle, out))
        check("Pw0rdX" not in out, "the proxy password in an error: %r" % out)
    # and good ones pass
    rc, out = check_config(s, s.relay(
        25, options=("extended", "secure", "tunnel"),
        extra='proxy = "socks5://u:p%40ss@[::1]:1080/";',
        tls_extra='pin_sha256 = [ "%s" ]; client_cert = "%s"; client_key = "%s";' % (
            spki_pin("server"), os.path.join(CERTS, "client.pem"),
            os.path.join(CERTS, "client.key"))))
    check(rc == 0, "refused: %s" % out)
    check("proxy socks5://u:***@[::1]:1080" in out and "p@ss" not in out,
          "--check-config proxy line: %s" % out)


def case_bad_cipher_list_refused_at_start(s):
    up = s.fakesmtp("", tls="implicit")
    from mpharness import Daemon
    d = Daemon(s, s.config(s.relay(up.port, options=IMPLICIT,
                                   tls_extra='ciphers = "NO-SUCH-SUITE";')),
               expect_start=False)
    d.proc.wait(timeout=15)
    check(d.proc.returncode != 0, "started with no usable cipher suite")
    check("no usable cipher suite" in d.log(), "no reason given: %s" % d.log())
    d.stopped = True


if __name__ == "__main__":
    main({"relayopts_" + k[5:]: v for k, v in globals().items() if k.startswith("case_")})
