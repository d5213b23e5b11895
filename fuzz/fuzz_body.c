/*
 * Fuzz harness for the DATA codecs: decoding is independent of how the
 * input is split, its output is canonical, and decode(encode(x)) == x.
 * Encoding even non-canonical bytes must never end the data early.
 */
#include <string.h>

#include "body.h"
#include "fuzz.h"

struct decoded {
    char *out;
    size_t outlen;
    size_t consumed;
    int done;
    int eightbit;
};

/* Chunk sizes come from `seed` so one input exercises several splits. */
static struct decoded decode(const char *in, size_t len, unsigned seed)
{
    struct decoded r = {malloc(2 * len + 2), 0, 0, 0, 0};
    struct body_decoder d;

    FUZZ_ASSERT(r.out != NULL);
    body_decoder_init(&d);
    while (r.consumed < len && !r.done) {
        size_t n = seed == 0 ? len - r.consumed : (seed = seed * 1103515245u + 12345u) % 17 + 1;
        size_t outlen = 0;
        char *tmp;
        size_t used;

        if (n > len - r.consumed)
            n = len - r.consumed;
        /* Exactly the room the header promises is enough. */
        tmp = malloc(2 * n + 2);
        FUZZ_ASSERT(tmp != NULL);
        used = body_decode(&d, in + r.consumed, n, tmp, &outlen, &r.done);
        FUZZ_ASSERT(used <= n && outlen <= 2 * n + 2);
        FUZZ_ASSERT(r.done || used == n);
        memcpy(r.out + r.outlen, tmp, outlen);
        r.outlen += outlen;
        r.consumed += used;
        free(tmp);
    }
    r.eightbit = body_decoder_8bit(&d);
    return r;
}

static void check_canonical(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\r')
            FUZZ_ASSERT(i + 1 < n && s[i + 1] == '\n');
        if (s[i] == '\n')
            FUZZ_ASSERT(i > 0 && s[i - 1] == '\r');
    }
    FUZZ_ASSERT(n == 0 || (n >= 2 && s[n - 2] == '\r' && s[n - 1] == '\n'));
}

/* Encode in seed-chosen chunks; the result ends with the terminator. */
static char *encode(const char *in, size_t len, unsigned seed, size_t *outlen)
{
    char *out = malloc(2 * len + 5);
    struct body_encoder e;
    size_t off = 0;
    size_t o = 0;

    FUZZ_ASSERT(out != NULL);
    body_encoder_init(&e);
    while (off < len) {
        size_t n = (seed = seed * 1103515245u + 12345u) % 23 + 1;
        char *tmp;
        size_t w;

        if (n > len - off)
            n = len - off;
        tmp = malloc(2 * n);
        FUZZ_ASSERT(tmp != NULL);
        w = body_encode(&e, in + off, n, tmp);
        FUZZ_ASSERT(w <= 2 * n);
        memcpy(out + o, tmp, w);
        o += w;
        off += n;
        free(tmp);
    }
    o += body_encode_end(&e, out + o);
    *outlen = o;
    return out;
}

/* Encoder output: CRLF only, and the only end-of-data mark is the last one. */
static void check_encoded(const char *y, size_t n)
{
    FUZZ_ASSERT(n >= 3 && memcmp(y + n - 3, ".\r\n", 3) == 0);
    FUZZ_ASSERT(n == 3 || (n >= 5 && memcmp(y + n - 5, "\r\n.\r\n", 5) == 0));
    for (size_t i = 0; i < n; i++) {
        if (y[i] == '\r')
            FUZZ_ASSERT(i + 1 < n && y[i + 1] == '\n');
        if (y[i] == '\n')
            FUZZ_ASSERT(i > 0 && y[i - 1] == '\r');
        if (n >= 5 && i < n - 5 && i + 5 <= n)
            FUZZ_ASSERT(memcmp(y + i, "\r\n.\r\n", 5) != 0);
    }
    FUZZ_ASSERT(n == 3 || memcmp(y, ".\r\n", 3) != 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *in = (const char *)data;
    unsigned seed = size > 0 ? data[0] : 1;
    struct decoded whole = decode(in, size, 0);
    struct decoded split = decode(in, size, seed | 1);
    struct decoded again;
    char *x;
    size_t xlen;
    char *y;
    size_t ylen;
    int eightbit = 0;

    FUZZ_ASSERT(whole.done == split.done && whole.consumed == split.consumed);
    FUZZ_ASSERT(whole.outlen == split.outlen && memcmp(whole.out, split.out, whole.outlen) == 0);
    FUZZ_ASSERT(whole.eightbit == split.eightbit);
    for (size_t i = 0; i < whole.consumed; i++)
        eightbit |= data[i] >= 0x80;
    FUZZ_ASSERT(whole.eightbit == eightbit);

    /* Finish an unterminated input the way a well-behaved client would. */
    x = malloc(whole.outlen + 8);
    FUZZ_ASSERT(x != NULL);
    memcpy(x, whole.out, whole.outlen);
    xlen = whole.outlen;
    if (!whole.done) {
        struct decoded tail;
        char *joined = malloc(size + 5);
        FUZZ_ASSERT(joined != NULL);
        memcpy(joined, in, size);
        memcpy(joined + size, "\r\n.\r\n", 5);
        tail = decode(joined, size + 5, 0);
        FUZZ_ASSERT(tail.done);
        FUZZ_ASSERT(tail.outlen >= whole.outlen && memcmp(tail.out, whole.out, whole.outlen) == 0);
        free(x);
        x = tail.out;
        xlen = tail.outlen;
        free(joined);
    }
    check_canonical(x, xlen);

    y = encode(x, xlen, seed, &ylen);
    check_encoded(y, ylen);
    again = decode(y, ylen, seed + 7);
    FUZZ_ASSERT(again.done && again.consumed == ylen);
    FUZZ_ASSERT(again.outlen == xlen && memcmp(again.out, x, xlen) == 0);
    free(again.out);
    free(y);

    /* Raw, non-canonical bytes through the encoder still cannot end early. */
    y = encode(in, size, seed, &ylen);
    check_encoded(y, ylen);
    again = decode(y, ylen, 0);
    FUZZ_ASSERT(again.done && again.consumed == ylen);
    free(again.out);
    free(y);

    free(x);
    free(whole.out);
    free(split.out);
    return 0;
}
