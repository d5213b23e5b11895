/*
 * Delivery status notifications (RFC 3464, RFC 3461, RFC 6522): builds the
 * multipart/report message that tells a sender what happened to its mail.
 * Pure: text in, message out; unit-tested on its own.
 */
#ifndef MAILPOOL_BOUNCE_H
#define MAILPOOL_BOUNCE_H

#include <stddef.h>
#include <time.h>

struct bounce_rcpt {
    const char *addr;       /* final recipient */
    const char *orcpt;      /* ORCPT as given ("rfc822;xtext"), or NULL */
    const char *action;     /* "failed", "delayed", "delivered", "relayed" */
    const char *status;     /* enhanced status code, e.g. "5.1.1" */
    const char *diagnostic; /* the server's reply ("550 5.1.1 no such user"), or NULL */
    const char *remote_mta; /* host name that gave it, or NULL */
    time_t last_attempt;    /* 0: not attempted */
};

struct bounce_info {
    const char *reporting_mta; /* our host name */
    const char *to;            /* recipient of the DSN (the sender, or bounce_to) */
    const char *envid;         /* ENVID (xtext as given), or NULL */
    const char *queue_id;      /* the original message's queue id */
    time_t arrival;            /* when the original message was accepted */
    time_t now;
    const struct bounce_rcpt *rcpts;
    size_t nrcpts;
    const char *original; /* the original message, canonical CRLF text */
    size_t original_len;
    int ret_full;        /* RET=FULL: include the whole message if not too big */
    size_t max_original; /* past this, only the headers are included */
};

/*
 * Build the DSN: RFC 5322 headers (From: MAILER-DAEMON@reporting_mta, To,
 * Subject, Date, Message-ID, Auto-Submitted: auto-replied, MIME-Version),
 * multipart/report; report-type=delivery-status with a text/plain part for
 * people, a message/delivery-status part, and the original as
 * message/rfc822 (RET=FULL and small enough) or text/rfc822-headers.
 * CRLF line ends throughout; nothing from the inputs can break the MIME
 * structure (control bytes in diagnostics are replaced, the boundary is
 * checked not to occur in the original).  Returns a malloc'd message and
 * its length in *len, or NULL when out of memory.
 */
char *bounce_build(const struct bounce_info *bi, size_t *len);

#endif
