/* Base64 (RFC 4648 section 4) for SASL exchanges.  Pure. */
#ifndef MAILPOOL_BASE64_H
#define MAILPOOL_BASE64_H

#include <stddef.h>

/* Length of the encoding of n bytes, without the NUL. */
#define BASE64_ENCODED_LEN(n) ((((n) + 2) / 3) * 4)

/* Encode; `out` needs BASE64_ENCODED_LEN(len)+1 bytes.  Returns the length. */
size_t base64_encode(const unsigned char *in, size_t len, char *out);

/*
 * Decode strictly (alphabet, padding, no whitespace); `out` needs len/4*3+3
 * bytes.  Returns the decoded length, or -1 on malformed input.
 */
long base64_decode(const char *in, size_t len, unsigned char *out);

#endif
