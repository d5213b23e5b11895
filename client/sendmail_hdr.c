/*
 * Header handling for mailpool-sendmail: RFC 5322 section 2.2 (fields and
 * folding), 3.4 (address lists, groups) and 3.2 (comments, quoted strings).
 * No I/O and no globals, so it is tested table-driven on its own.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "sendmail_hdr.h"

/* End of the line starting at pos: offset of its LF, or len. */
static size_t line_end(const char *msg, size_t len, size_t pos)
{
    const char *nl = memchr(msg + pos, '\n', len - pos);

    return nl ? (size_t)(nl - msg) : len;
}

/* Offset after the line end at e (LF), or len. */
static size_t after(size_t e, size_t len)
{
    return e < len ? e + 1 : len;
}

int hdr_next(const char *msg, size_t len, size_t *pos, struct hdr_field *f)
{
    size_t p = *pos, e, n, next, vend;

    if (p >= len)
        return 0;
    e = line_end(msg, len, p);
    if (e == p || (e == p + 1 && msg[p] == '\r')) {
        *pos = after(e, len); /* the empty line belongs to the header block */
        return 0;
    }
    /* field-name: printable ASCII except ':'; RFC 822 allowed spaces before the colon */
    for (n = p; n < e && msg[n] > ' ' && msg[n] < 0x7f && msg[n] != ':'; n++)
        ;
    if (n == p)
        return 0;
    f->name = msg + p;
    f->namelen = n - p;
    while (n < e && (msg[n] == ' ' || msg[n] == '\t'))
        n++;
    if (n >= e || msg[n] != ':')
        return 0;
    f->value = msg + n + 1;
    vend = e;
    next = after(e, len);
    while (next < len && (msg[next] == ' ' || msg[next] == '\t')) {
        vend = line_end(msg, len, next);
        next = after(vend, len);
    }
    if (vend > (size_t)(f->value - msg) && msg[vend - 1] == '\r')
        vend--;
    f->valuelen = vend - (size_t)(f->value - msg);
    f->start = p;
    f->len = next - p;
    *pos = next;
    return 1;
}

int hdr_is(const struct hdr_field *f, const char *name)
{
    return strlen(name) == f->namelen && strncasecmp(f->name, name, f->namelen) == 0;
}

/* Skip a comment starting at v[i] == '('; returns the offset after it, or 0 if unbalanced. */
static size_t skip_comment(const char *v, size_t len, size_t i)
{
    int depth = 0;

    for (; i < len; i++) {
        if (v[i] == '\\')
            i++;
        else if (v[i] == '(')
            depth++;
        else if (v[i] == ')' && --depth == 0)
            return i + 1;
    }
    return 0;
}

struct addr_acc {
    char *plain; /* words outside <>: the addr-spec unless angle brackets follow */
    size_t plainlen;
    char *angle; /* inside <> */
    size_t anglelen;
    int have_angle;
};

static int emit(struct addr_acc *a, int (*add)(void *, const char *, size_t), void *ctx)
{
    const char *s = a->have_angle ? a->angle : a->plain;
    size_t n = a->have_angle ? a->anglelen : a->plainlen;
    int rc = n > 0 ? add(ctx, s, n) : 0;

    a->plainlen = a->anglelen = 0;
    a->have_angle = 0;
    return rc;
}

int hdr_addresses(const char *value, size_t len,
                  int (*add)(void *ctx, const char *addr, size_t addrlen), void *ctx)
{
    struct addr_acc a = {0};
    int in_angle = 0, rc = 0;
    size_t i = 0;

    /* Every output is built from input bytes, so len bytes each are enough. */
    a.plain = malloc(len + 1);
    a.angle = malloc(len + 1);
    if (a.plain == NULL || a.angle == NULL) {
        rc = -1;
        goto out;
    }
    while (i < len && rc == 0) {
        char c = value[i];

        if (c == '(') {
            i = skip_comment(value, len, i);
            if (i == 0)
                rc = -1;
            continue;
        }
        if (c == '"') {
            char *dst = in_angle ? a.angle : a.plain;
            size_t *dl = in_angle ? &a.anglelen : &a.plainlen;
            size_t j = i + 1;

            while (j < len && value[j] != '"')
                j += value[j] == '\\' ? 2 : 1;
            if (j >= len) {
                rc = -1;
                break;
            }
            memcpy(dst + *dl, value + i, j + 1 - i);
            *dl += j + 1 - i;
            i = j + 1;
            continue;
        }
        i++;
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n')
            continue;
        if (in_angle) {
            if (c == '>')
                in_angle = 0;
            else if (c == ':')
                a.anglelen = 0; /* the end of an obsolete source route "@a,@b:" */
            else if (c == '<')
                rc = -1;
            else
                a.angle[a.anglelen++] = c;
        } else if (c == '<') {
            in_angle = 1;
            a.have_angle = 1;
            a.anglelen = 0;
        } else if (c == '>') {
            rc = -1;
        } else if (c == ':') {
            a.plainlen = 0; /* a group's display name */
        } else if (c == ',' || c == ';') {
            rc = emit(&a, add, ctx);
        } else {
            a.plain[a.plainlen++] = c;
        }
    }
    if (rc == 0 && in_angle)
        rc = -1;
    if (rc == 0)
        rc = emit(&a, add, ctx);
out:
    free(a.plain);
    free(a.angle);
    return rc;
}

/* RFC 5322 atext, plus 8-bit bytes (RFC 6532) and spaces between words. */
static int name_is_plain(const char *name)
{
    const unsigned char *p = (const unsigned char *)name;

    if (*p == ' ' || name[strlen(name) - 1] == ' ')
        return 0;
    for (; *p; p++) {
        if (*p >= 0x80 || *p == ' ' || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
            (*p >= '0' && *p <= '9') || strchr("!#$%&'*+-/=?^_`{|}~", *p) != NULL)
            continue;
        return 0;
    }
    return 1;
}

char *hdr_mailbox(const char *name, const char *addr)
{
    size_t nlen = name ? strlen(name) : 0, alen = strlen(addr), o = 0, i;
    char *out = malloc(2 * nlen + alen + 6);

    if (out == NULL)
        return NULL;
    if (nlen == 0) {
        memcpy(out, addr, alen + 1);
        return out;
    }
    if (name_is_plain(name)) {
        memcpy(out, name, nlen);
        o = nlen;
    } else {
        out[o++] = '"';
        for (i = 0; i < nlen; i++) {
            if (name[i] == '"' || name[i] == '\\')
                out[o++] = '\\';
            out[o++] = name[i];
        }
        out[o++] = '"';
    }
    out[o++] = ' ';
    out[o++] = '<';
    memcpy(out + o, addr, alen);
    o += alen;
    out[o++] = '>';
    out[o] = '\0';
    return out;
}

char *hdr_build(const char *msg, size_t len, const char *added, int drop_bcc, size_t *outlen)
{
    size_t alen = strlen(added), pos = 0, o, copied = 0;
    struct hdr_field f;
    int nfields = 0;
    char *out = malloc(alen + len + 2);

    if (out == NULL)
        return NULL;
    /* The rest of the header block and the NUL follow below. */
    // NOLINTNEXTLINE(bugprone-not-null-terminated-result)
    memcpy(out, added, alen);
    o = alen;
    while (hdr_next(msg, len, &pos, &f)) {
        nfields++;
        if (drop_bcc && hdr_is(&f, "Bcc")) {
            memcpy(out + o, msg + copied, f.start - copied);
            o += f.start - copied;
            copied = f.start + f.len;
        }
    }
    if (nfields == 0 && alen > 0 && len > 0 && msg[0] != '\n' &&
        !(msg[0] == '\r' && len > 1 && msg[1] == '\n'))
        out[o++] = '\n'; /* no header of its own: the text is all body */
    memcpy(out + o, msg + copied, len - copied);
    o += len - copied;
    *outlen = o;
    return out;
}
