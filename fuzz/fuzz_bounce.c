/*
 * Fuzz harness for the DSN builder (RFC 3464, RFC 3461, RFC 6522, MIME
 * RFC 2045/2046): whatever the recipients, diagnostics, host names and the
 * original message hold, the report keeps its structure: CRLF lines of at
 * most 998 octets, a header of fields only, exactly three parts delimited
 * by the announced boundary, and a delivery-status part of fields only.
 *
 * Input: a flags byte, 16 bytes for the first boundary attempt, then
 * NUL-separated strings (reporting MTA, To, ENVID, queue id, then six per
 * recipient) and the rest as the original message.
 */
#include <string.h>

#include "bounce.h"
#include "fuzz.h"

#define RCPT_FIELDS 6

static const uint8_t *rnd_bytes;
static int rnd_used;

/* The first boundary comes from the input, so the fuzzer can make it collide. */
int bounce_test_random(unsigned char *buf, size_t n);
int bounce_test_random(unsigned char *buf, size_t n)
{
    if (rnd_bytes == NULL || rnd_used || n > 16)
        return 0;
    memcpy(buf, rnd_bytes, n);
    rnd_used = 1;
    return 1;
}

struct reader {
    const uint8_t *p, *end;
};

/* The next NUL-terminated string, or NULL at the end of the input. */
static const char *next_str(struct reader *r)
{
    const uint8_t *nul;
    const char *s;

    if (r->p >= r->end || (nul = memchr(r->p, '\0', (size_t)(r->end - r->p))) == NULL)
        return NULL;
    s = (const char *)r->p;
    r->p = nul + 1;
    return s;
}

static int is_field(const char *line, size_t n)
{
    size_t i = 0;

    while (i < n && line[i] > ' ' && line[i] < 0x7f && line[i] != ':')
        i++;
    return i > 0 && i < n && line[i] == ':';
}

static void check_message(const char *m, size_t len, size_t nrcpts)
{
    char boundary[80];
    const char *b = NULL;
    size_t blen = 0, delims = 0, final_recipients = 0, line_no = 0;
    int in_header = 1, part = 0, part_header = 0, closed = 0;

    FUZZ_ASSERT(len >= 2 && m[len - 2] == '\r' && m[len - 1] == '\n');
    for (size_t pos = 0; pos < len;) {
        const char *crlf = memmem(m + pos, len - pos, "\r\n", 2);
        FUZZ_ASSERT(crlf != NULL);
        const char *line = m + pos;
        size_t n = (size_t)(crlf - line);

        FUZZ_ASSERT(memchr(line, '\r', n) == NULL && memchr(line, '\n', n) == NULL);
        FUZZ_ASSERT(n <= 998);
        FUZZ_ASSERT(!closed);
        if (in_header) {
            if (n == 0) {
                in_header = 0;
                FUZZ_ASSERT(b != NULL);
            } else {
                FUZZ_ASSERT(is_field(line, n) ||
                            (line_no > 0 && (line[0] == ' ' || line[0] == '\t')));
                /* Only the Content-Type continuation names it; a To: may hold the same text. */
                const char *k = n > 11 && memcmp(line, " boundary=\"", 11) == 0 ? line + 1 : NULL;
                if (k != NULL && b == NULL) {
                    const char *q = memchr(k + 10, '"', n - (size_t)(k + 10 - line));
                    FUZZ_ASSERT(q != NULL && (size_t)(q - k - 10) < sizeof(boundary) - 2);
                    blen = (size_t)(q - k - 10);
                    memcpy(boundary, "--", 2);
                    memcpy(boundary + 2, k + 10, blen);
                    blen += 2;
                    b = boundary;
                }
            }
        } else if (n >= blen && memcmp(line, b, blen) == 0) {
            /* Only our own delimiters may start with the boundary. */
            if (n == blen) {
                delims++;
                part++;
                part_header = 1;
            } else {
                FUZZ_ASSERT(n == blen + 2 && line[blen] == '-' && line[blen + 1] == '-');
                closed = 1;
            }
        } else if (part_header) {
            if (n == 0)
                part_header = 0;
            else
                FUZZ_ASSERT(is_field(line, n));
        } else if (part == 2 && n > 0) {
            FUZZ_ASSERT(is_field(line, n) || line[0] == ' ' || line[0] == '\t');
            final_recipients += n > 16 && memcmp(line, "Final-Recipient:", 16) == 0;
        }
        line_no++;
        pos += n + 2;
    }
    FUZZ_ASSERT(closed && delims == 3);
    FUZZ_ASSERT(final_recipients == nrcpts);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct bounce_rcpt rcpts[4];
    struct bounce_info bi = {0};
    struct reader r;
    const char *hdr[4];
    uint8_t flags;
    size_t len;
    char *msg;

    if (size < 17)
        return 0;
    flags = data[0];
    rnd_bytes = data + 1;
    rnd_used = 0;
    r.p = data + 17;
    r.end = data + size;
    for (int i = 0; i < 4; i++)
        hdr[i] = next_str(&r);
    bi.reporting_mta = hdr[0];
    bi.to = hdr[1];
    bi.envid = hdr[2];
    bi.queue_id = hdr[3];
    bi.nrcpts = 1 + (flags & 3);
    bi.now = 1700000000;
    bi.arrival = flags & 4 ? 0 : bi.now - 3600;
    for (size_t i = 0; i < bi.nrcpts; i++) {
        const char *f[RCPT_FIELDS];
        for (int k = 0; k < RCPT_FIELDS; k++)
            f[k] = next_str(&r);
        rcpts[i] = (struct bounce_rcpt){
            .addr = f[0] != NULL ? f[0] : "",
            .orcpt = f[1],
            .action = f[2] != NULL ? f[2] : "failed",
            .status = f[3] != NULL ? f[3] : "5.0.0",
            .diagnostic = f[4],
            .remote_mta = f[5],
            .last_attempt = flags & 8 ? bi.now : 0,
        };
    }
    bi.rcpts = rcpts;
    bi.original = (const char *)r.p;
    bi.original_len = (size_t)(r.end - r.p);
    bi.ret_full = (flags & 16) != 0;
    bi.max_original = flags & 32 ? 64 : 1 << 20;

    msg = bounce_build(&bi, &len);
    FUZZ_ASSERT(msg != NULL);
    check_message(msg, len, bi.nrcpts);
    free(msg);
    rnd_bytes = NULL;
    return 0;
}
