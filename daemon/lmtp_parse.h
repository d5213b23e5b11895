/*
 * Pure parser of the commands a local client sends on the submission
 * socket (LMTP, RFC 2033, with the ESMTP parameters of RFC 1870, 6152,
 * 6531 and mailpool's own XRELAY/XMODE), and address checks.
 * No I/O, no globals: it is unit-tested and fuzzed on its own.
 */
#ifndef MAILPOOL_LMTP_PARSE_H
#define MAILPOOL_LMTP_PARSE_H

#include <stddef.h>

#include "../common/proto.h"

enum lmtp_verb {
    LMTP_UNKNOWN = 0,
    LMTP_LHLO,
    LMTP_HELO, /* refused with a hint: LMTP clients must LHLO */
    LMTP_EHLO, /* likewise */
    LMTP_MAIL,
    LMTP_RCPT,
    LMTP_DATA,
    LMTP_BDAT,
    LMTP_RSET,
    LMTP_NOOP,
    LMTP_QUIT,
    LMTP_VRFY,
    LMTP_HELP,
    LMTP_STARTTLS,
    LMTP_AUTH,
};

enum body_type { BODY_7BIT = 0, BODY_8BITMIME };

struct lmtp_cmd {
    enum lmtp_verb verb;
    /* LHLO: the client's name (may be empty for a bare LHLO -> error). */
    char arg[MAILPOOL_MAX_COMMAND_LINE + 1];
    /* MAIL/RCPT: the path without angle brackets ("" for the null sender). */
    char path[MAILPOOL_MAX_PATH + 1];
    /* MAIL parameters, each at most once. */
    int has_size;
    unsigned long long size;
    enum body_type body;
    int smtputf8;
    char relay[MAILPOOL_MAX_RELAY_NAME + 1]; /* XRELAY=, "" if absent */
    int mode;                                /* XMODE=: -1 absent, else enum delivery_mode */
    /* BDAT: chunk size and LAST. */
    unsigned long long chunk_size;
    int last;
};

/*
 * Parse one command line (without its CRLF; `len` bytes, may contain any
 * byte).  Returns 0 and fills *cmd, or returns an SMTP error reply such as
 * "501 5.1.3 Bad recipient address syntax" (a static string; no CRLF).
 * Verb-independent errors (bad syntax, unknown or duplicate parameters,
 * over-long paths, control bytes) are found here; sequencing (MAIL before
 * RCPT ...) is the caller's business.
 */
const char *lmtp_parse_command(const char *line, size_t len, struct lmtp_cmd *cmd);

/*
 * Check a mailbox (the inside of <...>): printable ASCII or UTF-8 only (no
 * control bytes, CR, LF, NUL, no spaces outside a quoted local part),
 * local part <= 64 octets, domain <= 255, whole <= 256; a bare local part
 * (no '@', e.g. "root") is allowed.  `utf8` allows non-ASCII (SMTPUTF8).
 * Returns NULL when acceptable, else a short reason.
 */
const char *addr_check(const char *addr, size_t len, int utf8);

#endif
