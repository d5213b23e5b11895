/*
 * Fuzz harness for EHLO capability parsing (RFC 5321 section 4.1.1.1,
 * RFC 1870 SIZE, RFC 4954 AUTH): the input's lines become the extension
 * lines of a 250 reply, which goes through the reply parser and then
 * smtp_caps_parse().  Keywords are case-insensitive and lines independent:
 * the whole reply must give what its lines give one by one, and the same
 * with every letter in lower case.
 */
#include <string.h>

#include "config.h"
#include "fuzz.h"
#include "smtp_reply.h"

#define KNOWN_CAPS ((CAP_AUTH << 1) - 1)
#define KNOWN_MECHS ((AUTH_MECH_SCRAM_SHA_1 << 1) - 1)

static void check_caps(const struct smtp_caps *c)
{
    FUZZ_ASSERT((c->flags & ~(unsigned)KNOWN_CAPS) == 0);
    FUZZ_ASSERT((c->auth & ~(unsigned)KNOWN_MECHS) == 0);
    FUZZ_ASSERT(c->size == 0 || (c->flags & CAP_SIZE));
    FUZZ_ASSERT(c->auth == 0 || (c->flags & CAP_AUTH));
}

/* Caps of a reply whose text is the greeting plus the one line s[0..n). */
static struct smtp_caps one_line(const char *s, size_t n)
{
    struct smtp_reply r = {.code = 250, .nlines = 2};
    struct smtp_caps c;
    char *text = malloc(n + 7);

    FUZZ_ASSERT(text != NULL);
    memcpy(text, "greet\n", 6);
    memcpy(text + 6, s, n);
    text[n + 6] = '\0';
    r.text = text;
    smtp_caps_parse(&r, &c);
    check_caps(&c);
    free(text);
    return c;
}

static void check_reply(struct smtp_reply *r)
{
    struct smtp_caps whole, lower, sum = {0};
    const char *s = strchr(r->text, '\n');
    unsigned sizes = 0;
    unsigned long long size = 0;

    smtp_caps_parse(r, &whole);
    check_caps(&whole);
    if (r->code != 250) {
        FUZZ_ASSERT(whole.flags == 0 && whole.auth == 0 && whole.size == 0);
        return;
    }
    while (s != NULL) {
        const char *nl = strchr(++s, '\n');
        size_t n = nl != NULL ? (size_t)(nl - s) : strlen(s);
        struct smtp_caps c = one_line(s, n);

        sum.flags |= c.flags;
        sum.auth |= c.auth;
        if (c.flags & CAP_SIZE) {
            sizes++;
            size = c.size;
        }
        s = nl;
    }
    FUZZ_ASSERT(whole.flags == sum.flags && whole.auth == sum.auth);
    if (sizes == 1)
        FUZZ_ASSERT(whole.size == size);

    for (char *t = r->text; *t != '\0'; t++)
        if (*t >= 'A' && *t <= 'Z')
            *t = (char)(*t - 'A' + 'a');
    smtp_caps_parse(r, &lower);
    FUZZ_ASSERT(lower.flags == whole.flags && lower.auth == whole.auth && lower.size == whole.size);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char greet[] = "250-mx.example.org greets you\r\n";
    size_t cap = sizeof(greet) + 6 * size + 16, len = sizeof(greet) - 1, start = 0;
    char *wire = malloc(cap);
    struct reply_parser p;
    size_t off = 0;

    FUZZ_ASSERT(wire != NULL);
    memcpy(wire, greet, len);
    /* Each input line is one extension line; the last one ends the reply. */
    for (size_t i = 0; i <= size; i++) {
        if (i < size && data[i] != '\n')
            continue;
        memcpy(wire + len, i == size ? "250 " : "250-", 4);
        len += 4;
        memcpy(wire + len, data + start, i - start);
        len += i - start;
        memcpy(wire + len, "\r\n", 2);
        len += 2;
        start = i + 1;
    }

    reply_parser_init(&p);
    while (off < len) {
        enum reply_status st;
        struct smtp_reply r;
        size_t used = reply_parser_feed(&p, wire + off, len - off, &st, &r);

        off += used;
        if (st != REPLY_COMPLETE)
            break;
        check_reply(&r);
        smtp_reply_clear(&r);
    }
    reply_parser_reset(&p);
    free(wire);
    return 0;
}
