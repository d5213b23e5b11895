/*
 * Address fixing for local-only mail, per relay: qualify_domain, aliases,
 * a forced envelope sender and the From header policy (SPEC section 1).
 * Pure functions: addresses and header bytes in, new strings out.
 */
#ifndef MAILPOOL_REWRITE_H
#define MAILPOOL_REWRITE_H

#include <stddef.h>

struct address_fixing;

/* 1 when fx changes anything at all (so a message needs a rewritten copy). */
int rewrite_active(const struct address_fixing *fx);

/*
 * The envelope sender to use: the forced `sender` when set (the null
 * sender <>, given as "", is kept: it marks a bounce), else `sender` with
 * a bare local part qualified.  Returns a new string, or NULL when out of
 * memory.
 */
char *rewrite_sender(const struct address_fixing *fx, const char *sender);

/*
 * The envelope recipient to use: an alias when the local name has one
 * (a bare name, or name@qualify_domain), else the address with a bare
 * local part qualified.  Returns a new string, or NULL when out of memory.
 */
char *rewrite_rcpt(const struct address_fixing *fx, const char *rcpt);

/*
 * Length of the header section at the start of msg: the header fields
 * (with their folded continuation lines) up to and including the CRLF of
 * the last one, not the empty line after it.  Lines that are neither a
 * field nor a continuation end the section early.
 */
size_t rewrite_header_length(const char *msg, size_t len);

/*
 * Rewrite a header section (hdr, hdrlen: as measured by
 * rewrite_header_length(); CRLF line ends) for fx: bare addresses in
 * From/To/Cc qualified, aliases applied in To/Cc, and From rewritten to
 * or added with `sender` (the final envelope sender; "" or a bare name
 * disables both).  Unparseable fields and encoded words are left exactly as
 * they were; folding is kept.  Nothing inserted contains CR or LF.
 * Returns 0 with *out (malloc'd, *outlen bytes) set, or -1 when out of
 * memory.
 */
int rewrite_headers(const struct address_fixing *fx, const char *sender, const char *hdr,
                    size_t hdrlen, char **out, size_t *outlen);

#endif
