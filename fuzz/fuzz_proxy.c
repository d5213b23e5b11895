/*
 * Fuzz harness for the proxy handshakes (SOCKS5 and HTTP CONNECT replies)
 * and proxy URL parsing.  The first byte picks the kind and whether
 * credentials are used; the rest is the proxy's reply stream.  Fed whole,
 * byte by byte and in odd chunks, it must end the same way, consume the same
 * bytes, and never consume more than it was given.
 */
#include <string.h>

#include "fuzz.h"
#include "proxy.h"

/* The proxy may echo anything back; a password it cannot print cannot leak. */
#define SECRET "\x01pw\x02"

struct outcome {
    enum proxy_status st;
    size_t consumed;
    int status;
};

static struct outcome run(int kind, int creds, const uint8_t *data, size_t size, size_t chunk)
{
    struct proxy_hs h;
    struct outcome o = {PROXY_MORE, 0, 0};
    size_t n;

    FUZZ_ASSERT(proxy_start(&h, kind ? PROXY_HTTP : PROXY_SOCKS5, "relay.example", 25,
                            creds ? "user" : NULL, creds ? SECRET : NULL) == 0);
    while (o.consumed < size && o.st == PROXY_MORE) {
        size_t len = chunk == 0 || chunk > size - o.consumed ? size - o.consumed : chunk;
        size_t used;
        proxy_output(&h, &n);
        FUZZ_ASSERT(n <= sizeof(h.out));
        proxy_sent(&h);
        o.st = proxy_feed(&h, data + o.consumed, len, &used);
        FUZZ_ASSERT(used <= len);
        FUZZ_ASSERT(o.st != PROXY_MORE || used == len);
        o.consumed += used;
    }
    if (o.st == PROXY_REFUSED || o.st == PROXY_BAD) {
        FUZZ_ASSERT(strlen(proxy_error(&h)) > 0);
        /* errors are printable text, so a password with control bytes can never show */
        for (const char *e = proxy_error(&h); *e; e++)
            FUZZ_ASSERT((unsigned char)*e >= 0x20 && (unsigned char)*e < 0x7f);
        FUZZ_ASSERT(strstr(proxy_error(&h), SECRET) == NULL);
        size_t used = 1;
        FUZZ_ASSERT(proxy_feed(&h, "x", 1, &used) == o.st && used == 0);
    }
    o.status = h.status;
    return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    int kind = data[0] & 1, creds = (data[0] >> 1) & 1;
    struct outcome whole = run(kind, creds, data + 1, size - 1, 0);
    struct outcome bytes = run(kind, creds, data + 1, size - 1, 1);
    struct outcome odd = run(kind, creds, data + 1, size - 1, (size_t)data[0] % 7 + 2);

    FUZZ_ASSERT(whole.st == bytes.st && whole.consumed == bytes.consumed &&
                whole.status == bytes.status);
    FUZZ_ASSERT(whole.st == odd.st && whole.consumed == odd.consumed && whole.status == odd.status);

    /* The same bytes as a URL: parse, and the redacted form never shows the password. */
    char text[512], err[200];
    size_t tl = size - 1 < sizeof(text) - 1 ? size - 1 : sizeof(text) - 1;
    memcpy(text, data + 1, tl);
    text[tl] = '\0';
    struct proxy_url u;
    if (proxy_url_parse(text, &u, err, sizeof(err)) == 0) {
        FUZZ_ASSERT(u.host != NULL && u.port != 0);
        char *red = proxy_url_redacted(&u);
        FUZZ_ASSERT(red != NULL);
        /* the only thing standing where the password was is the mask */
        FUZZ_ASSERT(!u.password || strstr(red, ":***@") != NULL);
        free(red);
        proxy_url_clear(&u);
    } else {
        FUZZ_ASSERT(u.host == NULL && u.password == NULL);
    }
    return 0;
}
