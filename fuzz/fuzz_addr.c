/*
 * Fuzz harness for addr_check() (RFC 5321 mailbox, RFC 6531 with SMTPUTF8)
 * and xtext_decode() (RFC 3461 xtext): accepted addresses keep the
 * header's promises and SMTPUTF8 only ever widens what is accepted; xtext
 * decodes the same with and without an output buffer, needs exactly
 * length + 1 bytes, and survives an encode/decode round trip.
 */
#include <string.h>
#include <sys/types.h>

#include "fuzz.h"
#include "lmtp_parse.h"

/* Well-formed UTF-8 as far as structure goes: lead bytes and continuations. */
static int utf8_shaped(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t more = s[i] < 0x80                    ? 0
                      : s[i] >= 0xc2 && s[i] <= 0xdf ? 1
                      : s[i] >= 0xe0 && s[i] <= 0xef ? 2
                      : s[i] >= 0xf0 && s[i] <= 0xf4 ? 3
                                                     : 9;
        if (more == 9 || n - i <= more)
            return 0;
        for (size_t k = 1; k <= more; k++)
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
        i += more + 1;
    }
    return 1;
}

static void check_addr(const uint8_t *data, size_t size)
{
    const char *a = (const char *)data;
    const char *ascii = addr_check(a, size, 0);
    const char *utf8 = addr_check(a, size, 1);

    FUZZ_ASSERT(ascii == NULL || strlen(ascii) > 0);
    FUZZ_ASSERT(utf8 == NULL || strlen(utf8) > 0);
    if (ascii == NULL)
        FUZZ_ASSERT(utf8 == NULL);
    if (utf8 != NULL)
        return;
    FUZZ_ASSERT(size <= 256);
    for (size_t i = 0; i < size; i++) {
        FUZZ_ASSERT(data[i] >= 0x20 && data[i] != 0x7f);
        if (ascii == NULL)
            FUZZ_ASSERT(data[i] < 0x80);
    }
    FUZZ_ASSERT(utf8_shaped(data, size));
}

/* RFC 3461 xtext: what may stand for itself does, the rest is +XX. */
static size_t xtext_encode(const char *s, size_t n, char *out)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;

    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 33 && c <= 126 && c != '+' && c != '=') {
            out[o++] = (char)c;
        } else {
            out[o++] = '+';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    return o;
}

static void check_xtext(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    char *out = malloc(size + 1), *enc = malloc(3 * size + 1), *back = malloc(3 * size + 1);
    ssize_t n = xtext_decode(s, size, out, size + 1);
    int printable = 1;

    FUZZ_ASSERT(out != NULL && enc != NULL && back != NULL);
    FUZZ_ASSERT(xtext_decode(s, size, NULL, 0) == n);
    if (n >= 0) {
        FUZZ_ASSERT((size_t)n <= size && out[n] == '\0');
        for (ssize_t i = 0; i < n; i++)
            FUZZ_ASSERT(out[i] >= 32 && out[i] <= 126);
        FUZZ_ASSERT(xtext_decode(s, size, back, (size_t)n + 1) == n);
        FUZZ_ASSERT(memcmp(back, out, (size_t)n + 1) == 0);
        FUZZ_ASSERT(xtext_decode(s, size, back, (size_t)n) == -1);
        /* Decoding our own encoding of the result gives it back. */
        size_t e = xtext_encode(out, (size_t)n, enc);
        FUZZ_ASSERT(xtext_decode(enc, e, back, e + 1) == n);
        FUZZ_ASSERT(memcmp(back, out, (size_t)n) == 0);
    }

    /* Any printable ASCII text round-trips; anything else is refused. */
    for (size_t i = 0; i < size; i++)
        printable &= data[i] >= 32 && data[i] <= 126;
    size_t e = xtext_encode(s, size, enc);
    ssize_t m = xtext_decode(enc, e, back, e + 1);
    if (printable)
        FUZZ_ASSERT(m == (ssize_t)size && memcmp(back, s, size) == 0);
    else
        FUZZ_ASSERT(m == -1);
    free(out);
    free(enc);
    free(back);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_addr(data, size);
    check_xtext(data, size);
    return 0;
}
