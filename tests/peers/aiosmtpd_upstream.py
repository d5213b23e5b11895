#!/usr/bin/python3
"""A real SMTP upstream for tests and the demo: Python's aiosmtpd with
STARTTLS (required) and AUTH PLAIN/LOGIN (only after TLS).

Usage: aiosmtpd_upstream.py --port-file F --maildir DIR --cert PEM --key PEM
                            [--user NAME --password SECRET] [--implicit]

Listens on 127.0.0.1 (port chosen by the kernel, written to --port-file
once listening).  Each accepted message is written to DIR as msg-N.eml
(the data exactly as received, CRLF line ends) and msg-N.env (MAIL FROM and
RCPT TO lines, and AUTH=user when the session authenticated).
"""
import argparse
import asyncio
import os
import signal
import ssl
import sys
import warnings

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Store:
    def __init__(self, maildir):
        self.maildir = maildir
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        base = os.path.join(self.maildir, "msg-%d" % self.count)
        data = envelope.original_content or envelope.content
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        with open(base + ".eml.tmp", "wb") as f:
            f.write(data)
        with open(base + ".env.tmp", "w") as f:
            f.write("MAIL FROM:<%s>\n" % envelope.mail_from)
            for r in envelope.rcpt_tos:
                f.write("RCPT TO:<%s>\n" % r)
            if session.authenticated:
                f.write("AUTH=%s\n" % session.auth_data)
            f.write("TLS=%s\n" % ("yes" if session.ssl else "no"))
        os.rename(base + ".env.tmp", base + ".env")
        os.rename(base + ".eml.tmp", base + ".eml")
        return "250 2.0.0 Ok: stored as msg-%d" % self.count


def make_authenticator(user, password):
    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (isinstance(auth_data, LoginPassword)
              and auth_data.login == user.encode()
              and auth_data.password == password.encode())
        return AuthResult(success=ok, handled=False, auth_data=user if ok else None)
    return authenticator


warnings.simplefilter("ignore", DeprecationWarning)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--maildir", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--implicit", action="store_true",
                    help="TLS from the start (port 465 style) instead of STARTTLS")
    args = ap.parse_args()

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.cert, args.key)
    store = Store(args.maildir)
    kwargs = dict(hostname="aiosmtpd.test", enable_SMTPUTF8=True,
                  data_size_limit=64 * 1024 * 1024, auth_require_tls=True)
    if args.user:
        kwargs["authenticator"] = make_authenticator(args.user, args.password or "")
        kwargs["auth_required"] = True
    if not args.implicit:
        kwargs.update(tls_context=ctx, require_starttls=True)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(store, **kwargs), "127.0.0.1", 0,
                                      ssl=ctx if args.implicit else None)
    port = server.sockets[0].getsockname()[1]
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % port)
    os.rename(tmp, args.port_file)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
