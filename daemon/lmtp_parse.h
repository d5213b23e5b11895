/*
 * Pure parser of the commands a local client sends on the submission
 * socket (LMTP, RFC 2033, with the ESMTP parameters of RFC 1870, 6152,
 * 6531, the DSN parameters of RFC 3461 and mailpool's own XRELAY/XMODE),
 * address checks and xtext decoding.
 * No I/O, no globals: it is unit-tested and fuzzed on its own.
 */
#ifndef MAILPOOL_LMTP_PARSE_H
#define MAILPOOL_LMTP_PARSE_H

#include <stddef.h>
#include <sys/types.h>

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

/* RFC 3461 limits: ENVID 100 characters, ORCPT 500. */
#define LMTP_MAX_ENVID 100
#define LMTP_MAX_ORCPT 500

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
    /* DSN (RFC 3461): MAIL RET= and ENVID=, RCPT NOTIFY= and ORCPT=. */
    int ret;                        /* 0 absent, 1 FULL, 2 HDRS (enum spool_ret) */
    char envid[LMTP_MAX_ENVID + 1]; /* xtext as given, "" if absent */
    unsigned notify;                /* enum spool_notify bits, 0 if absent */
    char orcpt[LMTP_MAX_ORCPT + 1]; /* "addr-type;xtext" as given, "" if absent */
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

/*
 * Decode RFC 3461 xtext s[0..len) (the ENVID value, or the part of an ORCPT
 * after ';') into out, NUL-terminated; len + 1 bytes of out always suffice.
 * With out NULL it only validates (outsize is ignored).  Returns the decoded
 * length, or -1 when s is not xtext (a byte outside 33-126, a bare '=' or
 * '+', an escape without two upper-case hex digits), when it decodes to a
 * byte outside printable US-ASCII (32-126: no CR, LF, NUL, ESC), or when out
 * is too small; out is then unspecified.
 */
ssize_t xtext_decode(const char *s, size_t len, char *out, size_t outsize);

#endif
