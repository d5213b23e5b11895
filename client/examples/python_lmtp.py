#!/usr/bin/python3
"""Example: submit a message to mailpoold from Python with only the standard
library, and print what happened to each recipient.

The submission socket speaks LMTP (RFC 2033), so smtplib.LMTP can talk to
it directly.  LMTP answers the end of the data once per accepted recipient,
but smtplib's data()/sendmail() read only the first of those replies, so a
partial failure would be hidden.  MailpoolLMTP.send_per_recipient() sends
DATA itself and reads one reply per accepted recipient with getreply().

    python_lmtp.py [-s SOCKET] [-r RELAY] [-m relay|queue] FROM TO... < message

Exit status: 0 when every recipient was accepted, 1 otherwise, 2 on usage
errors.
"""

import argparse
import os
import re
import smtplib
import sys

DEFAULT_SOCKET = "/run/mailpool/submit.sock"


def to_wire(message):
    """The message as CRLF lines, dot-stuffed, ending in CRLF (RFC 5321
    section 4.5.2), so any line ending in the input is safe to send."""
    data = re.sub(rb"\r\n|\r|\n", b"\r\n", message)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return re.sub(rb"(?m)^\.", b"..", data)


def split_reply(code, text):
    """(code, enhanced code, text) from one reply; text may span lines."""
    text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    m = re.match(r"([245]\.\d{1,3}\.\d{1,3}) ?(.*)", text, re.S)
    if m:
        return code, m.group(1), m.group(2)
    return code, "", text


class MailpoolLMTP(smtplib.LMTP):
    """smtplib.LMTP with a send that keeps LMTP's per-recipient replies."""

    def send_per_recipient(self, sender, recipients, message, mail_options=()):
        """Send one message; returns a list of (code, ecode, text), one per
        recipient in the order given.  A recipient refused at RCPT keeps that reply; the
        others get their own reply to the end of the data.  Raises
        smtplib.SMTPSenderRefused when MAIL is refused and
        smtplib.SMTPException subclasses on connection problems."""
        self.ehlo_or_helo_if_needed()
        code, text = self.mail(sender, list(mail_options))
        if code != 250:
            self.rset()
            raise smtplib.SMTPSenderRefused(code, text, sender)

        results = []
        accepted = []  # indexes into results
        for rcpt in recipients:
            code, text = self.rcpt(rcpt)
            results.append(split_reply(code, text))
            if code in (250, 251):
                accepted.append(len(results) - 1)
        if not accepted:
            self.rset()
            return results

        code, text = self.docmd("DATA")
        if code != 354:
            self.rset()
            for i in accepted:
                results[i] = split_reply(code, text)
            return results

        self.send(to_wire(message) + b".\r\n")
        # One reply per recipient accepted at RCPT, in the same order.
        for i in accepted:
            code, text = self.getreply()
            results[i] = split_reply(code, text)
        return results


def main():
    ap = argparse.ArgumentParser(description="Send stdin through mailpoold over LMTP.")
    ap.add_argument("-s", "--socket", default=os.environ.get("MAILPOOL_SOCKET") or DEFAULT_SOCKET)
    ap.add_argument("-r", "--relay", help="relay profile (XRELAY=)")
    ap.add_argument("-m", "--mode", choices=("relay", "queue"), help="delivery mode (XMODE=)")
    ap.add_argument("sender")
    ap.add_argument("recipients", nargs="+")
    args = ap.parse_args()

    message = sys.stdin.buffer.read()
    options = []
    if args.relay:
        options.append("XRELAY=" + args.relay)
    if args.mode:
        options.append("XMODE=" + args.mode)

    # smtplib.LMTP treats a host that starts with "/" as a Unix socket path.
    path = os.path.abspath(args.socket)
    try:
        with MailpoolLMTP(path, timeout=60) as conn:
            results = conn.send_per_recipient(args.sender, args.recipients, message, options)
    except smtplib.SMTPSenderRefused as e:
        print("sender refused: %d %s" % (e.smtp_code, e.smtp_error.decode("utf-8", "replace")))
        return 1
    except (OSError, smtplib.SMTPException) as e:
        print("cannot submit: %s" % e, file=sys.stderr)
        return 1

    ok = True
    for rcpt, (code, ecode, text) in zip(args.recipients, results):
        print("%s: %d %s %s" % (rcpt, code, ecode, text))
        ok = ok and code // 100 == 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
