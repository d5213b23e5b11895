/*
 * Pure, incremental parser of SMTP replies (RFC 5321 section 4.2, enhanced
 * status codes of RFC 3463 / RFC 2034) and of the EHLO capability list.
 * Bytes in, complete replies out; no I/O, no globals, hard limits on line
 * length and line count, so it can be unit-tested and fuzzed on its own.
 */
#ifndef MAILPOOL_SMTP_REPLY_H
#define MAILPOOL_SMTP_REPLY_H

#include <stddef.h>

/* A reply line longer than this (without CRLF) is a protocol error. */
#define SMTP_REPLY_MAX_LINE 2048
/* A reply with more lines than this is a protocol error. */
#define SMTP_REPLY_MAX_LINES 128

struct smtp_reply {
    int code;       /* 200..599 */
    char ecode[16]; /* enhanced status code of the first line ("5.1.1"), or "" */
    char *text;     /* lines' text after "NNN-"/"NNN " and after the enhanced code
                       when present, joined by '\n'; control bytes replaced by '?';
                       malloc'd, never NULL in a complete reply */
    size_t nlines;
};

void smtp_reply_clear(struct smtp_reply *r); /* frees text, zeroes r */

enum reply_status { REPLY_INCOMPLETE = 0, REPLY_COMPLETE = 1, REPLY_ERROR = -1 };

struct reply_parser {
    /* private */
    char line[SMTP_REPLY_MAX_LINE + 2];
    size_t linelen;
    int code;
    char *text;
    size_t textlen;
    size_t nlines;
    char ecode[16];
    const char *error;
};

void reply_parser_init(struct reply_parser *p);
void reply_parser_reset(struct reply_parser *p); /* frees pending state, back to init */

/*
 * Feed `len` bytes.  Consumes bytes up to and including the end of at most
 * one reply and returns how many were consumed.  *st is:
 *  REPLY_COMPLETE   - *out holds the reply (caller owns it; smtp_reply_clear()),
 *  REPLY_INCOMPLETE - all bytes consumed, more are needed,
 *  REPLY_ERROR      - malformed or over a limit; reply_parser_error() says why.
 *                     The parser must be reset before further use.
 * Lines end in CRLF; a bare LF is accepted as a line end.
 */
size_t reply_parser_feed(struct reply_parser *p, const char *buf, size_t len, enum reply_status *st,
                         struct smtp_reply *out);
const char *reply_parser_error(const struct reply_parser *p);

/* Whether the parser holds part of a reply (bytes fed, reply not complete). */
int reply_parser_pending(const struct reply_parser *p);

/* Capabilities from an EHLO reply. */
enum smtp_cap {
    CAP_PIPELINING = 1u << 0,
    CAP_STARTTLS = 1u << 1,
    CAP_8BITMIME = 1u << 2,
    CAP_SMTPUTF8 = 1u << 3,
    CAP_DSN = 1u << 4,
    CAP_CHUNKING = 1u << 5,
    CAP_ENHANCEDSTATUSCODES = 1u << 6,
    CAP_SIZE = 1u << 7,
    CAP_AUTH = 1u << 8,
};

struct smtp_caps {
    unsigned flags;          /* enum smtp_cap bits */
    unsigned long long size; /* SIZE limit; 0 = none announced */
    unsigned auth;           /* enum auth_mech bits (config.h) offered by AUTH / AUTH= */
};

/* Fill caps from a complete 250 reply to EHLO (first line is the greeting). */
void smtp_caps_parse(const struct smtp_reply *ehlo, struct smtp_caps *caps);

#endif
