/*
 * Fuzz harness for the SMTP reply parser: the same bytes fed whole, one at
 * a time and in odd chunks must give the same replies (or the same error),
 * and every reply must satisfy the header's promises.
 */
#include <string.h>

#include "fuzz.h"
#include "smtp_reply.h"

struct outcome {
    unsigned long long hash; /* over every reply's fields, in order */
    size_t replies;
    int error;
};

static unsigned long long mix(unsigned long long h, const void *p, size_t n)
{
    const unsigned char *s = p;

    for (size_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 1099511628211ULL;
    return h;
}

static void check_reply(const struct smtp_reply *r)
{
    size_t lines = 1;

    FUZZ_ASSERT(r->code >= 200 && r->code <= 559 && r->code / 10 % 10 <= 5);
    FUZZ_ASSERT(r->text != NULL);
    FUZZ_ASSERT(r->nlines >= 1 && r->nlines <= SMTP_REPLY_MAX_LINES);
    FUZZ_ASSERT(memchr(r->ecode, '\0', sizeof(r->ecode)) != NULL);
    FUZZ_ASSERT(r->ecode[0] == '\0' || r->ecode[0] == '0' + r->code / 100);
    for (const char *t = r->text; *t != '\0'; t++) {
        FUZZ_ASSERT((unsigned char)*t >= 0x20 || *t == '\n');
        FUZZ_ASSERT(*t != 0x7f);
        lines += *t == '\n';
    }
    FUZZ_ASSERT(lines == r->nlines);
}

static struct outcome run(const uint8_t *data, size_t size, size_t chunk)
{
    struct outcome o = {14695981039346656037ULL, 0, 0};
    struct reply_parser p;
    size_t off = 0;

    reply_parser_init(&p);
    while (off < size && !o.error) {
        size_t n = chunk == 0 || chunk > size - off ? size - off : chunk;
        size_t pos = 0;
        while (pos < n) {
            enum reply_status st;
            struct smtp_reply r;
            struct smtp_caps caps;
            size_t used = reply_parser_feed(&p, (const char *)data + off + pos, n - pos, &st, &r);

            FUZZ_ASSERT(used <= n - pos);
            pos += used;
            if (st == REPLY_ERROR) {
                FUZZ_ASSERT(reply_parser_error(&p) != NULL);
                o.error = 1;
                break;
            }
            if (st == REPLY_INCOMPLETE) {
                FUZZ_ASSERT(pos == n);
                break;
            }
            FUZZ_ASSERT(st == REPLY_COMPLETE && used > 0);
            check_reply(&r);
            smtp_caps_parse(&r, &caps);
            FUZZ_ASSERT(r.code == 250 || (caps.flags == 0 && caps.auth == 0 && caps.size == 0));
            FUZZ_ASSERT(caps.size == 0 || (caps.flags & CAP_SIZE));
            o.hash = mix(o.hash, &r.code, sizeof(r.code));
            o.hash = mix(o.hash, r.ecode, strlen(r.ecode) + 1);
            o.hash = mix(o.hash, r.text, strlen(r.text) + 1);
            o.hash = mix(o.hash, &r.nlines, sizeof(r.nlines));
            o.hash = mix(o.hash, &caps, sizeof(caps));
            o.replies++;
            smtp_reply_clear(&r);
        }
        off += n;
    }
    reply_parser_reset(&p);
    return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct outcome whole = run(data, size, 0);
    struct outcome bytes = run(data, size, 1);
    struct outcome odd = run(data, size, size > 0 ? (size_t)data[0] % 13 + 2 : 1);

    FUZZ_ASSERT(whole.hash == bytes.hash && whole.replies == bytes.replies &&
                whole.error == bytes.error);
    FUZZ_ASSERT(whole.hash == odd.hash && whole.replies == odd.replies && whole.error == odd.error);
    return 0;
}
