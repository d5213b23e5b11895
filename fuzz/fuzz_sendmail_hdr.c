/*
 * Fuzz harness for mailpool-sendmail's header handling (RFC 5322 fields,
 * folding, address lists): fields found lie inside the message one after
 * another, addresses come out non-empty, dropping Bcc removes exactly the
 * Bcc fields, and a "Name <addr>" we build reads back as addr alone.
 */
#include <string.h>

#include "fuzz.h"
#include "sendmail_hdr.h"

struct collect {
    size_t n;
    size_t maxlen;
    char last[64];
    size_t lastlen;
};

static int collect(void *ctx, const char *addr, size_t len)
{
    struct collect *c = ctx;
    int quoted = 0;

    FUZZ_ASSERT(len > 0 && len <= c->maxlen);
    for (size_t i = 0; i < len; i++) {
        if (quoted && addr[i] == '\\')
            i++; /* a quoted-pair */
        else if (addr[i] == '"')
            quoted = !quoted;
        else if (!quoted)
            FUZZ_ASSERT(addr[i] != ' ' && addr[i] != '\t' && addr[i] != '\n');
    }
    c->n++;
    c->lastlen = len < sizeof(c->last) ? len : sizeof(c->last);
    memcpy(c->last, addr, c->lastlen);
    return 0;
}

/* Every field of the header block; returns the offset where the block ends. */
static size_t check_fields(const char *msg, size_t len, size_t *bcc_bytes)
{
    struct hdr_field f;
    size_t pos = 0;

    *bcc_bytes = 0;
    for (;;) {
        size_t before = pos;
        if (!hdr_next(msg, len, &pos, &f))
            break;
        FUZZ_ASSERT(f.start == before && f.len > 0 && f.start + f.len == pos && pos <= len);
        FUZZ_ASSERT(f.name == msg + f.start && f.namelen > 0 && f.namelen < f.len);
        for (size_t i = 0; i < f.namelen; i++)
            FUZZ_ASSERT(f.name[i] > ' ' && f.name[i] < 0x7f && f.name[i] != ':');
        FUZZ_ASSERT(f.value > f.name && f.value[-1] == ':');
        FUZZ_ASSERT((size_t)(f.value - msg) + f.valuelen <= pos);

        char *name = strndup(f.name, f.namelen);
        FUZZ_ASSERT(name != NULL && hdr_is(&f, name));
        free(name);
        if (hdr_is(&f, "Bcc"))
            *bcc_bytes += f.len;

        struct collect c = {.maxlen = f.valuelen};
        int rc = hdr_addresses(f.value, f.valuelen, collect, &c);
        FUZZ_ASSERT(rc == 0 || rc == -1);
    }
    FUZZ_ASSERT(pos <= len);
    return pos;
}

static void check_build(const char *msg, size_t len, size_t bcc_bytes)
{
    static const char added[] = "From: sender@example.org\n";
    size_t outlen, bcc_after;
    char *out = hdr_build(msg, len, "", 0, &outlen);

    FUZZ_ASSERT(out != NULL && outlen == len && memcmp(out, msg, len) == 0);
    free(out);

    out = hdr_build(msg, len, added, 1, &outlen);
    FUZZ_ASSERT(out != NULL && memcmp(out, added, sizeof(added) - 1) == 0);
    /* Only the Bcc fields went, and at most a separating empty line came. */
    FUZZ_ASSERT(outlen == sizeof(added) - 1 + len - bcc_bytes ||
                (bcc_bytes == 0 && outlen == sizeof(added) + len));
    check_fields(out, outlen, &bcc_after);
    FUZZ_ASSERT(bcc_after == 0);
    free(out);
}

static void check_mailbox(const uint8_t *data, size_t size)
{
    char *name = strndup((const char *)data, size < 200 ? size : 200);
    char *mb;
    struct collect c = {.maxlen = 1000};

    FUZZ_ASSERT(name != NULL);
    mb = hdr_mailbox(name, "user@example.org");
    FUZZ_ASSERT(mb != NULL);
    FUZZ_ASSERT(hdr_addresses(mb, strlen(mb), collect, &c) == 0);
    FUZZ_ASSERT(c.n == 1 && c.lastlen == 16 && memcmp(c.last, "user@example.org", 16) == 0);
    free(mb);
    free(name);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *msg = (const char *)data;
    size_t bcc_bytes;

    check_fields(msg, size, &bcc_bytes);
    check_build(msg, size, bcc_bytes);
    check_mailbox(data, size);
    return 0;
}
