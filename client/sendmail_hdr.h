/*
 * Message header handling for mailpool-sendmail: finding header fields,
 * pulling addresses out of To/Cc/Bcc, building the message to submit.
 * Pure functions (bytes in, result out, no I/O), unit-tested on their own.
 */
#ifndef MAILPOOL_SENDMAIL_HDR_H
#define MAILPOOL_SENDMAIL_HDR_H

#include <stddef.h>

/* One header field, as found in the message. */
struct hdr_field {
    const char *name; /* field name (not NUL-terminated) */
    size_t namelen;
    const char *value; /* after the colon, folding kept, without the final line end */
    size_t valuelen;
    size_t start; /* offset of the field in the message */
    size_t len;   /* bytes of the whole field, continuation lines and line end included */
};

/*
 * The next header field at *pos (start with *pos = 0).  Returns 1 and fills
 * *f, moving *pos past the field; returns 0 at the end of the header block
 * (an empty line, a line that is not a field, or the end of the text), with
 * *pos at the first byte after the block (after the empty line if there is
 * one).  Lines end in LF or CRLF.
 */
int hdr_next(const char *msg, size_t len, size_t *pos, struct hdr_field *f);

/* Whether field f is called `name` (case-insensitive). */
int hdr_is(const struct hdr_field *f, const char *name);

/*
 * Call add(ctx, addr, addrlen) for each mailbox of an RFC 5322 address-list
 * (a To/Cc/Bcc value): display names, comments, group names ("undisclosed:;")
 * and angle brackets are dropped, quoted local parts kept.  Empty mailboxes
 * are skipped.  Returns 0; -1 on unbalanced quotes, comments or angle
 * brackets, or when out of memory; or add's nonzero return value.
 */
int hdr_addresses(const char *value, size_t len,
                  int (*add)(void *ctx, const char *addr, size_t addrlen), void *ctx);

/*
 * "Full Name <addr>" for a From: field: the name as is when it is only
 * atext and spaces, else as a quoted-string; just "addr" when name is NULL
 * or empty.  Returns a malloc'd string, or NULL when out of memory.
 */
char *hdr_mailbox(const char *name, const char *addr);

/*
 * The message to submit: `added` (complete header lines, may be empty)
 * followed by msg with every Bcc field removed when drop_bcc is set.  When
 * the message has no header fields but starts with text, an empty line
 * keeps the added fields apart from it.  Returns a malloc'd buffer and
 * sets *outlen, or NULL when out of memory.
 */
char *hdr_build(const char *msg, size_t len, const char *added, int drop_bcc, size_t *outlen);

#endif
