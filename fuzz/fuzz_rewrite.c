/*
 * Fuzz harness for address fixing: any header bytes rewrite without a
 * crash; the output never gains a CR or LF that is not part of a CRLF line
 * end already there or added with a From field; a config that changes
 * nothing reproduces the input exactly; and the body after the measured
 * header section is never touched.
 */
#include <string.h>

#include "config.h"
#include "fuzz.h"
#include "rewrite.h"

static size_t count_lf(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += s[i] == '\n';
    return c;
}

static void one(const struct address_fixing *fx, const char *sender, const char *in, size_t len,
                int identity)
{
    size_t hl = rewrite_header_length(in, len);
    FUZZ_ASSERT(hl <= len);
    char *out = NULL;
    size_t outlen = 0;
    FUZZ_ASSERT(rewrite_headers(fx, sender, in, hl, &out, &outlen) == 0);
    if (identity)
        FUZZ_ASSERT(outlen == hl && memcmp(out, in, hl) == 0);
    /* No header injection: a line end is only ever added with the From field. */
    size_t added = fx->from_header != FROM_HEADER_KEEP ? 1 : 0;
    FUZZ_ASSERT(count_lf(out, outlen) <= count_lf(in, hl) + added);
    size_t cr_in = 0, cr_out = 0;
    for (size_t i = 0; i < hl; i++)
        cr_in += in[i] == '\r';
    for (size_t i = 0; i < outlen; i++)
        cr_out += out[i] == '\r';
    FUZZ_ASSERT(cr_out <= cr_in + added);
    free(out);
    /* Envelope fixing of the first line, as an address. */
    size_t n = 0;
    while (n < len && n < 300 && in[n] != '\n' && in[n] != '\0')
        n++;
    char addr[301];
    memcpy(addr, in, n);
    addr[n] = '\0';
    char *r = rewrite_rcpt(fx, addr);
    char *s = rewrite_sender(fx, addr);
    FUZZ_ASSERT(r != NULL && s != NULL);
    free(r);
    free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct alias aliases[] = {{"root", "ops@example.com"}};
    struct address_fixing keep = {0};
    struct address_fixing all = {.qualify_domain = "example.org",
                                 .sender = "app@example.com",
                                 .from_header = FROM_HEADER_REWRITE,
                                 .aliases = aliases,
                                 .naliases = 1};
    struct address_fixing add = all;
    add.from_header = FROM_HEADER_ADD_IF_MISSING;
    const char *in = (const char *)data;
    one(&keep, "a@b.test", in, size, 1);
    one(&all, "app@example.com", in, size, 0);
    one(&add, "app@example.com", in, size, 0);
    return 0;
}
