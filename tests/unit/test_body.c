/*
 * DATA decoder and dot-stuffing encoder tests, including the SMTP
 * smuggling variants: every input is fed whole and in small chunks down
 * to single bytes, with output buffers of exactly the documented size.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "body.h"
#include "check.h"

#define S(lit) lit, sizeof(lit) - 1

struct decoded {
    char *out;
    size_t outlen;
    size_t consumed;
    int done;
    int eightbit;
};

/* Decode in chunks of `chunk` bytes (0: all at once; SIZE_MAX: random). */
static struct decoded decode(const char *in, size_t len, size_t chunk)
{
    struct decoded r = {malloc(2 * len + 2), 0, 0, 0, 0};
    struct body_decoder d;

    body_decoder_init(&d);
    while (r.consumed < len && !r.done) {
        size_t n = chunk == 0            ? len - r.consumed
                   : chunk == (size_t)-1 ? unit_rand() % 9 + 1
                                         : chunk;
        size_t outlen = 12345;
        size_t used;
        char *tmp;

        if (n > len - r.consumed)
            n = len - r.consumed;
        tmp = malloc(2 * n + 2); /* exactly what the header asks for */
        used = body_decode(&d, in + r.consumed, n, tmp, &outlen, &r.done);
        CHECK(used <= n);
        CHECK(outlen <= 2 * n + 2);
        CHECK(r.done || used == n);
        memcpy(r.out + r.outlen, tmp, outlen);
        r.outlen += outlen;
        r.consumed += used;
        free(tmp);
    }
    r.eightbit = body_decoder_8bit(&d);
    return r;
}

/* Encode in chunks (0: whole, SIZE_MAX: random) and append the end mark. */
static char *encode(const char *in, size_t len, size_t chunk, size_t *outlen)
{
    char *out = malloc(2 * len + 5);
    struct body_encoder e;
    size_t off = 0;
    size_t o = 0;
    char *tmp;
    size_t w;

    body_encoder_init(&e);
    while (off < len) {
        size_t n = chunk == 0 ? len - off : chunk == (size_t)-1 ? unit_rand() % 9 + 1 : chunk;
        if (n > len - off)
            n = len - off;
        tmp = malloc(2 * n);
        w = body_encode(&e, in + off, n, tmp);
        CHECK(w <= 2 * n);
        memcpy(out + o, tmp, w);
        o += w;
        off += n;
        free(tmp);
    }
    tmp = malloc(5);
    w = body_encode_end(&e, tmp);
    CHECK(w == 3 || w == 5);
    memcpy(out + o, tmp, w);
    free(tmp);
    *outlen = o + w;
    return out;
}

static int canonical(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\r' && (i + 1 >= n || s[i + 1] != '\n'))
            return 0;
        if (s[i] == '\n' && (i == 0 || s[i - 1] != '\r'))
            return 0;
    }
    return n == 0 || (n >= 2 && s[n - 2] == '\r' && s[n - 1] == '\n');
}

/* How many times the data could end in s: "." CRLF first, or CRLF "." CRLF. */
static size_t terminators(const char *s, size_t n)
{
    size_t count = n >= 3 && memcmp(s, ".\r\n", 3) == 0;

    for (size_t i = 0; i + 5 <= n; i++)
        count += memcmp(s + i, "\r\n.\r\n", 5) == 0;
    return count;
}

struct row {
    const char *name;
    const char *in;
    size_t len;
    const char *out;
    size_t outlen;
    int done;
    const char *rest; /* input left after the terminator */
};

static void run_rows(const struct row *rows, size_t n)
{
    static const size_t chunks[] = {0, 1, 2, 3, 4, 7};

    for (size_t i = 0; i < n; i++) {
        const struct row *r = &rows[i];
        check_case = r->name;
        for (size_t c = 0; c < sizeof(chunks) / sizeof(chunks[0]); c++) {
            struct decoded d = decode(r->in, r->len, chunks[c]);
            CHECK(d.done == r->done);
            CHECK(d.outlen == r->outlen && memcmp(d.out, r->out, r->outlen) == 0);
            CHECK(d.consumed + strlen(r->rest) == r->len);
            CHECK(strcmp(r->in + d.consumed, r->rest) == 0);
            if (d.done) {
                size_t ylen;
                char *y;
                CHECK(canonical(d.out, d.outlen));
                /* Sent on, it is one message with exactly one end. */
                y = encode(d.out, d.outlen, chunks[c], &ylen);
                CHECK(terminators(y, ylen) == 1);
                free(y);
            }
            free(d.out);
        }
    }
    check_case = NULL;
}

static void test_decode(void)
{
    static const struct row rows[] = {
        {"empty message", S(".\r\n"), S(""), 1, ""},
        {"simple", S("Subject: x\r\n\r\nbody\r\n.\r\n"), S("Subject: x\r\n\r\nbody\r\n"), 1, ""},
        {"next command left over", S("a\r\n.\r\nQUIT\r\n"), S("a\r\n"), 1, "QUIT\r\n"},
        {"first line is the end", S(".\r\nRSET\r\n"), S(""), 1, "RSET\r\n"},
        {"empty first line", S("\r\n.\r\n"), S("\r\n"), 1, ""},
        {"unstuffing", S("..a\r\n.\r\n"), S(".a\r\n"), 1, ""},
        {"stuffed lone dot", S("a\r\n..\r\n.\r\n"), S("a\r\n.\r\n"), 1, ""},
        {"three dots", S("...\r\n.\r\n"), S("..\r\n"), 1, ""},
        {"dot inside line", S("a.b\r\n.\r\n"), S("a.b\r\n"), 1, ""},
        {"dot at end of line", S("a.\r\n.\r\n"), S("a.\r\n"), 1, ""},
        {"bare LF lines", S("a\nb\n.\r\n.\r\n"), S("a\r\nb\r\n.\r\n"), 1, ""},
        {"bare CR line", S("a\rb\r\n.\r\n"), S("a\r\nb\r\n"), 1, ""},
        {"CR CR LF", S("a\r\r\n.\r\n"), S("a\r\n\r\n"), 1, ""},
        {"LF CR", S("a\n\r.\r\n.\r\n"), S("a\r\n\r\n.\r\n"), 1, ""},
        {"NUL kept", S("a\0b\r\n.\r\n"), S("a\0b\r\n"), 1, ""},
        {"8-bit", S("caf\xc3\xa9\r\n.\r\n"), S("caf\xc3\xa9\r\n"), 1, ""},
        {"incomplete text", S("abc"), S("abc"), 0, ""},
        {"incomplete CR", S("abc\r"), S("abc"), 0, ""},
        {"incomplete CRLF", S("abc\r\n"), S("abc\r\n"), 0, ""},
        {"incomplete dot", S("abc\r\n."), S("abc\r\n"), 0, ""},
        {"incomplete dot CR", S("abc\r\n.\r"), S("abc\r\n"), 0, ""},
        {"dot line without CRLF before", S("abc.\r\n"), S("abc.\r\n"), 0, ""},
        {"nothing", S(""), S(""), 0, ""},
    };
    struct body_decoder d;
    char out[16];
    size_t outlen;
    int done;

    run_rows(rows, sizeof(rows) / sizeof(rows[0]));

    check_case = "8-bit tracking";
    {
        struct decoded r = decode(S("plain\r\n.\r\n"), 1);
        CHECK(!r.eightbit);
        free(r.out);
        r = decode(S("x\r\n.\xff\r\n.\r\n"), 1);
        CHECK(r.eightbit && r.done);
        free(r.out);
        /* Bytes after the end belong to the next command. */
        r = decode(S("x\r\n.\r\n\xff"), 0);
        CHECK(!r.eightbit && r.done);
        free(r.out);
    }

    check_case = "finished decoder";
    body_decoder_init(&d);
    CHECK(body_decode(&d, ".\r\nNOOP", 7, out, &outlen, &done) == 3);
    CHECK(done && outlen == 0);
    CHECK(body_decode(&d, "NOOP", 4, out, &outlen, &done) == 0);
    CHECK(done && outlen == 0);
    body_decoder_init(&d);
    CHECK(body_decode(&d, "x", 1, out, &outlen, &done) == 1);
    CHECK(!done && outlen == 1 && !body_decoder_8bit(&d));
    check_case = NULL;
}

static void test_smuggling(void)
{
    static const struct row rows[] = {
        {"LF.LF",
         S("Hello\n.\nMAIL FROM:<x@evil.example>\r\nRCPT TO:<v@example.com>\r\n"
           "DATA\r\nevil\r\n.\r\n"),
         S("Hello\r\n.\r\nMAIL FROM:<x@evil.example>\r\nRCPT TO:<v@example.com>\r\n"
           "DATA\r\nevil\r\n"),
         1, ""},
        {"LF.CRLF", S("Hello\n.\r\nMAIL FROM:<x@evil.example>\r\n.\r\n"),
         S("Hello\r\n.\r\nMAIL FROM:<x@evil.example>\r\n"), 1, ""},
        {"CRLF.LF", S("Hello\r\n.\nMAIL FROM:<x@evil.example>\r\n.\r\n"),
         S("Hello\r\n\r\nMAIL FROM:<x@evil.example>\r\n"), 1, ""},
        {"CR.CR", S("Hello\r.\rMAIL FROM:<x@evil.example>\r\n.\r\n"),
         S("Hello\r\n.\r\nMAIL FROM:<x@evil.example>\r\n"), 1, ""},
        {"CRLF.CR", S("Hello\r\n.\rMAIL FROM:<x@evil.example>\r\n.\r\n"),
         S("Hello\r\n\r\nMAIL FROM:<x@evil.example>\r\n"), 1, ""},
        {"CR.CRLF", S("Hello\r.\r\nMAIL FROM:<x@evil.example>\r\n.\r\n"),
         S("Hello\r\n.\r\nMAIL FROM:<x@evil.example>\r\n"), 1, ""},
        {"CRLF.CRCRLF", S("Hello\r\n.\r\r\nMAIL FROM:<x@evil.example>\r\n.\r\n"),
         S("Hello\r\n\r\n\r\nMAIL FROM:<x@evil.example>\r\n"), 1, ""},
        {"CRLF.NUL", S("Hello\r\n.\0\r\nMAIL FROM:<x@evil.example>\r\n.\r\n"),
         S("Hello\r\n\0\r\nMAIL FROM:<x@evil.example>\r\n"), 1, ""},
        {"CRLF space.CRLF", S("Hello\r\n .\r\nMAIL FROM:<x@evil.example>\r\n.\r\n"),
         S("Hello\r\n .\r\nMAIL FROM:<x@evil.example>\r\n"), 1, ""},
        {"LF.LF at start", S("\n.\nMAIL FROM:<x@evil.example>\r\n.\r\n"),
         S("\r\n.\r\nMAIL FROM:<x@evil.example>\r\n"), 1, ""},
        {"only bare ends, never done", S("Hello\n.\n\r.\r\n.\n"), S("Hello\r\n.\r\n\r\n.\r\n\r\n"),
         0, ""},
        {"real end after fake ones", S("a\n.\n\r\n.\r\nQUIT\r\n"), S("a\r\n.\r\n\r\n"), 1,
         "QUIT\r\n"},
    };

    run_rows(rows, sizeof(rows) / sizeof(rows[0]));

    /* Encoding raw, non-canonical bytes can never produce an early end either. */
    check_case = "encoder normalises";
    {
        static const char *const raw[] = {"a\n.\nb", "a\r.\rb", "a\r\n.\nb", "\n.\n",
                                          "\r.\r",   ".\n.\r.", "a\n..\n"};
        for (size_t i = 0; i < sizeof(raw) / sizeof(raw[0]); i++) {
            for (size_t chunk = 0; chunk < 3; chunk++) {
                size_t ylen;
                char *y = encode(raw[i], strlen(raw[i]), chunk, &ylen);
                struct decoded d;
                CHECK(terminators(y, ylen) == 1);
                CHECK(canonical(y, ylen));
                d = decode(y, ylen, 1);
                CHECK(d.done && d.consumed == ylen);
                free(d.out);
                free(y);
            }
        }
    }
    check_case = NULL;
}

static void test_encode(void)
{
    static const struct {
        const char *name;
        const char *in;
        const char *want;
    } rows[] = {
        {"empty", "", ".\r\n"},
        {"one line", "a\r\n", "a\r\n.\r\n"},
        {"lone dot", ".\r\n", "..\r\n.\r\n"},
        {"leading dot", "a\r\n.b\r\n", "a\r\n..b\r\n.\r\n"},
        {"two dots", "..\r\n", "...\r\n.\r\n"},
        {"inner dot", "a.b\r\n", "a.b\r\n.\r\n"},
        {"no final CRLF", "a.b", "a.b\r\n.\r\n"},
        {"empty lines", "\r\n\r\n", "\r\n\r\n.\r\n"},
        {"bare LF", "a\n.\n", "a\r\n..\r\n.\r\n"},
        {"bare CR", "a\r.\r", "a\r\n..\r\n.\r\n"},
        {"CR CR LF", "a\r\r\n", "a\r\n\r\n.\r\n"},
    };

    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        check_case = rows[i].name;
        for (size_t chunk = 0; chunk < 4; chunk++) {
            size_t ylen;
            char *y = encode(rows[i].in, strlen(rows[i].in), chunk, &ylen);
            CHECK(ylen == strlen(rows[i].want) && memcmp(y, rows[i].want, ylen) == 0);
            free(y);
        }
    }
    check_case = NULL;
}

/* A random canonical text heavy in the characters that matter. */
static char *random_canonical(size_t *len)
{
    static const char alphabet[] = {'.', '.', '.', 'a', ' ', '\0', '\x80', '\xff', 'M', ':'};
    size_t lines = unit_rand() % 12;
    char *s = malloc(lines * 20 + 1);
    size_t o = 0;

    for (size_t l = 0; l < lines; l++) {
        size_t n = unit_rand() % 17;
        for (size_t i = 0; i < n; i++)
            s[o++] = alphabet[unit_rand() % sizeof(alphabet)];
        s[o++] = '\r';
        s[o++] = '\n';
    }
    *len = o;
    return s;
}

static void test_roundtrip(void)
{
    check_case = "random canonical texts";
    for (int iter = 0; iter < 5000; iter++) {
        size_t xlen;
        size_t ylen;
        char *x = random_canonical(&xlen);
        char *y = encode(x, xlen, (size_t)-1, &ylen);
        struct decoded d = decode(y, ylen, (size_t)-1);
        int eightbit = 0;

        for (size_t i = 0; i < xlen; i++)
            eightbit |= (unsigned char)x[i] >= 0x80;
        CHECK(terminators(y, ylen) == 1);
        CHECK(d.done && d.consumed == ylen);
        CHECK(d.outlen == xlen && memcmp(d.out, x, xlen) == 0);
        CHECK(d.eightbit == eightbit);
        free(d.out);
        free(y);
        free(x);
        if (check_failures > 20)
            break;
    }

    /* Arbitrary bytes decode to canonical text that then round-trips. */
    check_case = "random raw input";
    for (int iter = 0; iter < 5000; iter++) {
        static const char alphabet[] = {'.', '\r', '\n', 'a', '\r', '\n', '.'};
        char raw[64];
        size_t rawlen = unit_rand() % 60;
        struct decoded d;
        struct decoded again;
        size_t ylen;
        char *y;

        for (size_t i = 0; i < rawlen; i++)
            raw[i] = alphabet[unit_rand() % sizeof(alphabet)];
        memcpy(raw + rawlen, "\r\n.\r\n", 5);
        d = decode(raw, rawlen + 5, (size_t)-1);
        CHECK(d.done);
        CHECK(canonical(d.out, d.outlen));
        y = encode(d.out, d.outlen, (size_t)-1, &ylen);
        again = decode(y, ylen, 1);
        CHECK(again.done && again.consumed == ylen);
        CHECK(again.outlen == d.outlen && memcmp(again.out, d.out, d.outlen) == 0);
        free(again.out);
        free(y);
        free(d.out);
        if (check_failures > 20)
            break;
    }

    /* One large message, in big chunks. */
    check_case = "1 MB message";
    {
        size_t xlen = 80 * 13000; /* whole lines: canonical text */
        char *x = malloc(xlen);
        size_t ylen;
        char *y;
        struct decoded d;

        for (size_t i = 0; i < xlen; i++)
            x[i] = i % 80 == 78 ? '\r' : i % 80 == 79 ? '\n' : i % 80 == 0 ? '.' : 'x';
        y = encode(x, xlen, 4096, &ylen);
        CHECK(ylen == xlen + xlen / 80 + 3);
        d = decode(y, ylen, 65536);
        CHECK(d.done && d.outlen == xlen && memcmp(d.out, x, xlen) == 0);
        free(d.out);
        free(y);
        free(x);
    }
    check_case = NULL;
}

int main(int argc, char **argv)
{
    static const struct unit_group groups[] = {
        {"decode", test_decode},
        {"smuggling", test_smuggling},
        {"encode", test_encode},
        {"roundtrip", test_roundtrip},
    };

    return unit_main(argc, argv, groups, sizeof(groups) / sizeof(groups[0]));
}
