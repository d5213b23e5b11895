/* UTF-8 (RFC 3629) for text that comes from outside: decoding, checking, cutting.  Pure. */
#ifndef MAILPOOL_UTF8_H
#define MAILPOOL_UTF8_H

#include <stddef.h>
#include <stdint.h>

/*
 * Length of the well-formed multi-byte sequence at s (2 to 4 bytes of the
 * n available; no overlong forms, no surrogates, nothing past U+10FFFF)
 * with its code point in *cp, or 0 when s does not start one.
 */
size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp);

/*
 * utf8_decode, refusing C1 controls (U+0080..U+009F) too: a terminal obeys
 * U+009B as it obeys ESC [.  For text shown to people.
 */
size_t utf8_printable(const unsigned char *s, size_t n);

/* Drop an incomplete sequence at the end of s (text cut to fit a buffer). */
void utf8_trim_tail(char *s);

#endif
