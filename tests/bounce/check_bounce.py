#!/usr/bin/python3
"""Check one delivery status notification built by bounce_gen.

Usage: check_bounce.py BOUNCE_GEN CASE

Runs BOUNCE_GEN CASE DIR, then takes DIR/dsn.eml apart twice: with Python's
email package (RFC 6522 multipart/report, RFC 3464 delivery-status groups)
and by hand on the raw bytes (CRLF only, line lengths, MIME delimiters, the
attached original byte for byte).  Exits non-zero on the first failure.
"""
import email
import email.policy
import email.utils
import os
import re
import subprocess
import sys
import tempfile

NOW = 1700000000
HOST = "mail.example.com"
BOB = dict(
    final="rfc822; bob@example.org",
    action="failed",
    status="5.1.1",
    diag="smtp; 550 5.1.1 <bob@example.org>: Recipient address rejected: User unknown",
    remote="dns; mx.example.org",
    last=NOW - 60,
)


def hdrs_of(orig):
    """The header section as RFC 3464 text/rfc822-headers wants it, or None."""
    if orig.startswith(b"\r\n"):
        return b""
    i = orig.find(b"\r\n\r\n")
    return None if i < 0 else orig[: i + 2]


def cut_at_line(orig, limit):
    if len(orig) <= limit:
        return orig
    head = orig[:limit]
    i = head.rfind(b"\n")
    return head[: i + 1] if i >= 0 else head


# What each case must produce.  part3: (content type, function of the original
# giving the expected decoded content).  rcpts: expected per-recipient fields
# (None: the field must be absent; a missing key: not checked here).
CASES = {
    "single_failed": dict(
        subject="Undelivered Mail Returned to Sender",
        rcpts=[BOB],
        part3=("message/rfc822", lambda o: o),
    ),
    "mixed": dict(
        subject="Delivery Status Notification",
        rcpts=[
            BOB,
            dict(
                final="rfc822; carol@example.net",
                action="delayed",
                status="4.4.1",
                diag="smtp; 421 4.4.1 Connection timed out",
                remote="dns; mx.example.net",
                last=NOW - 120,
            ),
            dict(
                final="rfc822; dave@example.com",
                action="failed",
                status="5.0.0",
                diag=None,
                remote=None,
                last=None,
            ),
        ],
        part3=("text/rfc822-headers", hdrs_of),
    ),
    "all_delayed": dict(
        subject="Delayed Mail (still being retried)",
        rcpts=[
            dict(BOB, action="delayed", status="4.2.2", diag="smtp; 452 4.2.2 Mailbox full"),
            dict(
                final="rfc822; erin@example.org",
                action="delayed",
                status="4.2.2",
                diag=None,
                remote=None,
                last=None,
            ),
        ],
        part3=("text/rfc822-headers", hdrs_of),
    ),
    "orcpt_envid": dict(
        subject="Undelivered Mail Returned to Sender",
        envid="QQ314159+more=x",
        rcpts=[
            dict(BOB, orcpt="rfc822;bob+tag@example.org"),
            dict(
                final="rfc822; frank@example.org",
                orcpt="rfc822;frank??X-Injected:?yes@example.org",
                action="failed",
                status="5.1.1",
                diag=None,
            ),
        ],
        part3=("text/rfc822-headers", hdrs_of),
    ),
    "hostile_diag": dict(
        subject="Undelivered Mail Returned to Sender",
        rcpts=[{k: v for k, v in BOB.items() if k != "diag"}],  # checked on its own
        part3=("text/rfc822-headers", hdrs_of),
    ),
    "hostile_fields": dict(
        subject="Undelivered Mail Returned to Sender",
        host="mail.example.com??Bcc??victim?example.org",
        to="<alice@example.com???Bcc:?victim@example.org>",
        queue_id="Q1??X-Injected:?1",
        envid="E1??X-Injected:?yes",
        rcpts=[
            dict(
                final="rfc822; evil????--=_x?[2J@example.org",
                action="failed",  # both given ones malformed: the defaults
                status="5.0.0",
                remote="dns; mx.example.org??X-Injected??1",
            ),
            dict(final="rfc822; " + "a" * 512 + "...", action="failed", status="5.1.3"),
        ],
        part3=("text/rfc822-headers", hdrs_of),
    ),
    "utf8_rcpt": dict(
        subject="Undelivered Mail Returned to Sender",
        rcpts=[dict(BOB, final="rfc822; j??rg@example.org")],
        part3=("text/rfc822-headers", hdrs_of),
        charset="utf-8",
    ),
    "boundary_in_original": dict(
        subject="Undelivered Mail Returned to Sender",
        rcpts=[BOB],
        part3=("message/rfc822", lambda o: o),
        not_boundary="=_000102030405060708090a0b0c0d0e0f",
    ),
    "ret_hdrs": dict(
        subject="Undelivered Mail Returned to Sender",
        rcpts=[BOB],
        part3=("text/rfc822-headers", hdrs_of),
    ),
    "full_too_big": dict(
        subject="Undelivered Mail Returned to Sender",
        rcpts=[BOB],
        part3=("text/rfc822-headers", hdrs_of),
    ),
    "no_separator": dict(
        subject="Undelivered Mail Returned to Sender",
        rcpts=[BOB],
        part3=("text/rfc822-headers", lambda o: cut_at_line(o, 80)),
    ),
    "eight_bit": dict(
        subject="Undelivered Mail Returned to Sender",
        rcpts=[BOB],
        part3=("message/rfc822", lambda o: o),
        cte3="8bit",
    ),
    "eight_bit_hdrs": dict(
        subject="Undelivered Mail Returned to Sender",
        rcpts=[BOB],
        part3=("text/rfc822-headers", hdrs_of),
        cte3="quoted-printable",
    ),
    "broken_original": dict(
        subject="Undelivered Mail Returned to Sender",
        rcpts=[BOB],
        part3=("text/rfc822-headers", hdrs_of),
        cte3="quoted-printable",
    ),
    "empty_original": dict(
        subject="Undelivered Mail Returned to Sender",
        rcpts=[BOB],
        part3=("text/rfc822-headers", lambda o: b""),
    ),
}


class Failure(Exception):
    pass


def expect(cond, what):
    if not cond:
        raise Failure(what)


def equal(got, want, what):
    if got != want:
        raise Failure("%s: got %r, want %r" % (what, got, want))


def check_lines(data):
    """CRLF only, no line over 998 octets, ends with CRLF, no NUL."""
    expect(data.endswith(b"\r\n"), "message does not end with CRLF")
    expect(b"\0" not in data, "NUL in the message")
    expect(re.search(rb"\r(?!\n)", data) is None, "bare CR in the message")
    expect(re.search(rb"(?<!\r)\n", data) is None, "bare LF in the message")
    for n, line in enumerate(data.split(b"\r\n"), 1):
        expect(len(line) <= 998, "line %d is %d octets long" % (n, len(line)))


def split_raw(data, boundary):
    """The top-level header block and the three raw parts (headers, content)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    expect(sep, "no end of the top-level header section")
    b = boundary.encode()
    lines = (b"\r\n" + body).split(b"\r\n")
    opens = [i for i, l in enumerate(lines) if l == b"--" + b]
    closes = [i for i, l in enumerate(lines) if l == b"--" + b + b"--"]
    equal(len(opens), 3, "opening delimiter lines")
    equal(len(closes), 1, "closing delimiter lines")
    expect(closes[0] > opens[-1], "closing delimiter before the last part")
    equal(lines[closes[0] + 1 :], [b""], "text after the closing delimiter")
    parts = []
    ends = opens[1:] + closes
    for start, end in zip(opens, ends):
        raw = b"\r\n".join(lines[start + 1 : end])
        phead, psep, content = raw.partition(b"\r\n\r\n")
        expect(psep, "part without a header section")
        parts.append((phead, content))
    return head, parts


def ascii_clean(blob, what, allow_utf8=False):
    """Printable ASCII, CRLF and (where allowed) well-formed UTF-8 only."""
    text = blob
    if allow_utf8:
        try:
            text = blob.decode("utf-8").encode("ascii", "replace")
        except UnicodeDecodeError:
            raise Failure("%s is not UTF-8" % what)
        expect(not re.search("[\x80-\x9f]", blob.decode("utf-8")), "%s has C1 controls" % what)
    bad = re.search(rb"[^\x20-\x7e\r\n]", text)
    expect(bad is None, "%s has byte %r" % (what, bad and bad.group()))


def field(group, name):
    v = group.get(name)
    return None if v is None else str(v)


def check_rcpt(group, want, idx):
    what = "recipient %d" % idx
    names = {
        "final": "Final-Recipient",
        "action": "Action",
        "status": "Status",
        "diag": "Diagnostic-Code",
        "remote": "Remote-MTA",
        "orcpt": "Original-Recipient",
    }
    for key, name in names.items():
        if key in want:
            equal(field(group, name), want[key], "%s %s" % (what, name))
    if "last" in want:
        got = field(group, "Last-Attempt-Date")
        if want["last"] is None:
            equal(got, None, what + " Last-Attempt-Date")
        else:
            expect(got is not None, what + " has no Last-Attempt-Date")
            equal(email.utils.parsedate_to_datetime(got).timestamp(), want["last"],
                  what + " Last-Attempt-Date")
    if "orcpt" not in want:
        equal(field(group, "Original-Recipient"), None, what + " Original-Recipient")


def check_hostile_diag(groups, text_part):
    diag = field(groups[1], "Diagnostic-Code")
    expect(diag is not None, "no Diagnostic-Code")
    expect(diag.startswith("smtp; 550 5.7.1 rejected X-Injected: yes ?[31mred?[0m --=_fakeboundary"),
           "Diagnostic-Code start: %r" % diag[:120])
    expect(diag.endswith("..."), "long diagnostic not marked as cut")
    expect(len(diag) < 1000, "diagnostic not cut: %d characters" % len(diag))
    expect("AFTERNUL" not in diag, "text after NUL")
    expect("<b>?????</b> AAAA" in diag, "8-bit and C1 bytes not replaced: %r" % diag[:300])
    for g in groups:
        expect("X-Injected" not in g.keys(), "injected field became a field")
        expect("Content-Type" not in g.keys(), "injected Content-Type became a field")
    expect("X-Injected: yes" in " ".join(text_part.split()), "diagnostic missing from the text part")


def run(gen, case):
    want = CASES[case]
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([gen, case, tmp], capture_output=True, text=True)
        if proc.returncode != 0:
            raise Failure("bounce_gen failed (%d): %s" % (proc.returncode, proc.stderr.strip()))
        with open(os.path.join(tmp, "dsn.eml"), "rb") as f:
            data = f.read()
        with open(os.path.join(tmp, "original"), "rb") as f:
            orig = f.read()

    check_lines(data)
    msg = email.message_from_bytes(data, policy=email.policy.default)
    expect(not msg.defects, "top-level defects: %r" % msg.defects)

    # Top-level header fields.
    host = want.get("host", HOST)
    equal(msg.get_content_type(), "multipart/report", "Content-Type")
    equal(msg.get_param("report-type"), "delivery-status", "report-type")
    boundary = msg.get_boundary()
    expect(boundary, "no boundary")
    expect(boundary.encode() not in orig, "boundary occurs in the original")
    if "not_boundary" in want:
        expect(boundary != want["not_boundary"], "colliding boundary was kept")
    equal(msg["From"].addresses[0].display_name, "Mail Delivery System", "From display name")
    equal(msg["From"].addresses[0].addr_spec, "MAILER-DAEMON@" + host, "From address")
    equal(str(msg["Subject"]), want["subject"], "Subject")
    equal(email.utils.parsedate_to_datetime(str(msg["Date"])).timestamp(), NOW, "Date")
    expect(re.fullmatch(r"<%d\.[0-9a-f]{16}@%s>" % (NOW, re.escape(host)), str(msg["Message-ID"])),
           "Message-ID %r" % str(msg["Message-ID"]))
    equal(str(msg["Auto-Submitted"]), "auto-replied", "Auto-Submitted")
    equal(str(msg["MIME-Version"]), "1.0", "MIME-Version")
    for name in ("Bcc", "X-Injected"):
        equal(msg[name], None, "injected header " + name)

    # Exactly three parts, in order.
    parts = msg.get_payload()
    expect(isinstance(parts, list), "not multipart")
    equal(len(parts), 3, "number of parts")
    equal([p.get_content_type() for p in parts],
          ["text/plain", "message/delivery-status", want["part3"][0]], "part types")

    head, raw = split_raw(data, boundary)
    ascii_clean(head, "top-level header")
    # The parsed To is normalised by the email package; the raw line is what was written.
    to = re.findall(rb"^To: (.*)$", head.replace(b"\r\n", b"\n"), re.M)
    equal(to, [want.get("to", "<alice@example.com>").encode()], "To")
    ascii_clean(raw[0][0] + raw[1][0] + raw[2][0], "part headers")
    utf8 = want.get("charset") == "utf-8"
    equal(parts[0].get_param("charset"), want.get("charset", "us-ascii"), "text part charset")
    ascii_clean(raw[0][1], "text part", allow_utf8=utf8)
    ascii_clean(raw[1][1], "delivery-status part")

    # Part 1, for people: names every recipient and its action.
    text = parts[0].get_content()
    flat = " ".join(text.split())  # the text is word-wrapped
    for r in want["rcpts"]:
        if utf8:
            expect("<jörg@example.org>" in text, "recipient not shown as UTF-8 in the text")
        else:
            addr = r["final"].split("; ", 1)[1]
            expect(addr in text, "recipient %s not in the text part" % addr)
        expect(": %s (%s)" % (r["action"], r["status"]) in flat, "action/status not in the text")

    # Part 2: one per-message group, then one group per recipient.
    groups = parts[1].get_payload()
    expect(isinstance(groups, list), "delivery-status not parsed into groups")
    equal(len(groups), 1 + len(want["rcpts"]), "delivery-status groups")
    pm = groups[0]
    equal(field(pm, "Reporting-MTA"), "dns; " + host, "Reporting-MTA")
    equal(field(pm, "Original-Envelope-Id"), want.get("envid"), "Original-Envelope-Id")
    equal(field(pm, "X-Mailpool-Queue-ID"), want.get("queue_id", "A1B2C3D4E5"), "queue id")
    equal(email.utils.parsedate_to_datetime(field(pm, "Arrival-Date")).timestamp(), NOW - 3600,
          "Arrival-Date")
    expect(field(pm, "Final-Recipient") is None, "recipient field in the per-message group")
    for i, (g, r) in enumerate(zip(groups[1:], want["rcpts"])):
        check_rcpt(g, r, i)
    if case == "hostile_diag":
        check_hostile_diag(groups, text)

    # Part 3: the original, whole or headers only, byte for byte.
    ctype, content_of = want["part3"]
    expected = content_of(orig)
    expect(expected is not None, "test case error: no header section in the original")
    p3 = parts[2]
    cte = str(p3.get("Content-Transfer-Encoding", "7bit")).lower()
    equal(cte, want.get("cte3", "7bit"), "part 3 transfer encoding")
    if ctype == "message/rfc822":
        equal(raw[2][1], expected, "attached original")
        inner = p3.get_payload()
        expect(isinstance(inner, list) and len(inner) == 1, "message/rfc822 not parsed")
        want_subject = email.message_from_bytes(orig, policy=email.policy.default)["Subject"]
        equal(str(inner[0]["Subject"]), str(want_subject), "attached Subject")
        if cte == "8bit":
            equal(str(msg.get("Content-Transfer-Encoding", "")).lower(), "8bit",
                  "top-level transfer encoding with an 8-bit part")
    else:
        got = p3.get_payload(decode=True)
        equal(got, expected, "attached header section")
        if cte == "7bit":
            equal(raw[2][1], expected, "raw header section")
        else:
            ascii_clean(raw[2][1], "encoded header section")


def main():
    if len(sys.argv) != 3 or sys.argv[2] not in CASES:
        sys.stderr.write("usage: check_bounce.py BOUNCE_GEN CASE (%s)\n" % " ".join(CASES))
        return 2
    try:
        run(sys.argv[1], sys.argv[2])
    except Failure as e:
        print("FAIL %s: %s" % (sys.argv[2], e))
        return 1
    print("ok %s" % sys.argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
