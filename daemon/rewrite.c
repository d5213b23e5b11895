/*
 * Address fixing for local-only mail (SPEC section 1): bare local parts get
 * @qualify_domain, local names get their aliases, the envelope sender may
 * be forced and the From header set or added.  Header fields are parsed as
 * RFC 5322 address lists (3.4: display names, quoted strings, comments,
 * groups); only the addr-spec bytes are replaced, so folding, comments and
 * RFC 2047 encoded words stay byte-for-byte as they were.
 */
#include "rewrite.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config.h"

/* A growing output buffer; `failed` sticks once an allocation failed. */
struct buf {
    char *p;
    size_t len, cap;
    int failed;
};

static void buf_add(struct buf *b, const char *s, size_t n)
{
    if (b->failed || n == 0)
        return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void buf_str(struct buf *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

static char *concat3(const char *a, size_t alen, const char *b, const char *c)
{
    size_t blen = strlen(b), clen = strlen(c);
    char *s = malloc(alen + blen + clen + 1);
    if (!s)
        return NULL;
    memcpy(s, a, alen);
    /* The last copy brings c's NUL along. */
    // NOLINTNEXTLINE(bugprone-not-null-terminated-result)
    memcpy(s + alen, b, blen);
    memcpy(s + alen + blen, c, clen + 1);
    return s;
}

int rewrite_active(const struct address_fixing *fx)
{
    return fx->qualify_domain || fx->sender || fx->from_header != FROM_HEADER_KEEP ||
           fx->naliases > 0;
}

/* RFC 5322 atext, plus UTF-8 bytes (RFC 6532). */
static int atext(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c >= 0x80 || (c && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

/* A local part that can stand alone and be qualified: a dot-atom or a quoted string. */
static int bare_local_part(const char *s, size_t n)
{
    if (n == 0 || (n >= 2 && s[0] == '=' && s[1] == '?'))
        return 0; /* an encoded word is a display name gone astray, not an address */
    if (s[0] == '"') {
        if (n < 2 || s[n - 1] != '"')
            return 0;
        for (size_t i = 1; i + 1 < n; i++) {
            unsigned char c = (unsigned char)s[i];
            if (c < 0x20 || c == 0x7f)
                return 0;
            if (c == '\\') {
                if (++i + 1 >= n)
                    return 0;
            } else if (c == '"') {
                return 0;
            }
        }
        return 1;
    }
    if (s[0] == '.' || s[n - 1] == '.')
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!(atext((unsigned char)s[i]) || (s[i] == '.' && s[i + 1] != '.')))
            return 0;
    return 1;
}

static const char *alias_for(const struct address_fixing *fx, const char *name, size_t n)
{
    for (size_t i = 0; i < fx->naliases; i++)
        if (strlen(fx->aliases[i].name) == n && strncasecmp(fx->aliases[i].name, name, n) == 0)
            return fx->aliases[i].addr;
    return NULL;
}

/*
 * The replacement for one address (not NUL-terminated), or NULL when it
 * stays as it is.  *oom is set when an allocation failed.
 */
static char *fix_address(const struct address_fixing *fx, const char *a, size_t n, int aliases,
                         int *oom)
{
    const char *at = NULL;
    for (size_t i = 0; i < n; i++)
        if (a[i] == '@')
            at = a + i;
    const char *found = NULL;
    char *out = NULL;
    if (!at) {
        if (!bare_local_part(a, n))
            return NULL;
        if (aliases && (found = alias_for(fx, a, n)) != NULL)
            out = strdup(found);
        else if (fx->qualify_domain)
            out = concat3(a, n, "@", fx->qualify_domain);
        else
            return NULL;
    } else {
        size_t dlen = n - (size_t)(at + 1 - a);
        if (!aliases || !fx->qualify_domain || strlen(fx->qualify_domain) != dlen ||
            strncasecmp(at + 1, fx->qualify_domain, dlen) != 0 ||
            (found = alias_for(fx, a, (size_t)(at - a))) == NULL)
            return NULL;
        out = strdup(found);
    }
    if (!out)
        *oom = 1;
    return out;
}

char *rewrite_sender(const struct address_fixing *fx, const char *sender)
{
    if (sender[0] == '\0')
        return strdup("");
    if (fx->sender)
        return strdup(fx->sender);
    int oom = 0;
    char *s = fix_address(fx, sender, strlen(sender), 0, &oom);
    return s ? s : oom ? NULL : strdup(sender);
}

char *rewrite_rcpt(const struct address_fixing *fx, const char *rcpt)
{
    int oom = 0;
    char *s = fix_address(fx, rcpt, strlen(rcpt), 1, &oom);
    return s ? s : oom ? NULL : strdup(rcpt);
}

/* ---- header section ---------------------------------------------------- */

/* Length of the field name before ':' on a line, or 0 when the line is no field. */
static size_t field_name(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n && (unsigned char)s[i] > 32 && (unsigned char)s[i] < 127 && s[i] != ':')
        i++;
    return i > 0 && i < n && s[i] == ':' ? i : 0;
}

/* End of the line starting at pos (after its LF), or 0 when it has no LF. */
static size_t line_end(const char *s, size_t len, size_t pos)
{
    const char *lf = memchr(s + pos, '\n', len - pos);
    return lf ? (size_t)(lf - s) + 1 : 0;
}

size_t rewrite_header_length(const char *msg, size_t len)
{
    size_t pos = 0;
    int have_field = 0;
    while (pos < len) {
        size_t end = line_end(msg, len, pos);
        if (end == 0)
            break; /* a last line without its line end belongs to no field */
        if (msg[pos] == ' ' || msg[pos] == '\t') {
            if (!have_field)
                break;
        } else if (field_name(msg + pos, end - pos)) {
            have_field = 1;
        } else {
            break; /* the empty line, or body text without one before it */
        }
        pos = end;
    }
    return pos;
}

/* Index after the comment opening at v[i] (nested, with quoted-pairs), or n. */
static size_t skip_comment(const char *v, size_t n, size_t i)
{
    int depth = 0;
    for (; i < n; i++) {
        if (v[i] == '\\')
            i++;
        else if (v[i] == '(')
            depth++;
        else if (v[i] == ')' && --depth == 0)
            return i + 1;
    }
    return n;
}

/* Index after the quoted string opening at v[i], or n. */
static size_t skip_quoted(const char *v, size_t n, size_t i)
{
    for (i++; i < n; i++) {
        if (v[i] == '\\')
            i++;
        else if (v[i] == '"')
            return i + 1;
    }
    return n;
}

static int wsp(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Where the address of one mailbox v[s..e) is: [*a, *b).  0 when it has none we can read. */
static int mailbox_addr(const char *v, size_t s, size_t e, size_t *a, size_t *b, int *angle)
{
    size_t i = s;
    while (i < e) {
        if (v[i] == '(')
            i = skip_comment(v, e, i);
        else if (v[i] == '"')
            i = skip_quoted(v, e, i);
        else if (v[i] == '<')
            break;
        else
            i++;
    }
    if (i < e) {
        size_t q = i + 1;
        while (q < e && v[q] != '>')
            q = v[q] == '"' ? skip_quoted(v, e, q) : q + 1;
        if (q >= e)
            return 0;
        size_t x = i + 1, y = q;
        while (x < y && wsp(v[x]))
            x++;
        while (y > x && wsp(v[y - 1]))
            y--;
        if (x == y || v[x] == '@')
            return 0; /* <> or a source route: leave it */
        *a = x;
        *b = y;
        *angle = 1;
        return 1;
    }
    /* No angle brackets: one addr-spec, perhaps with comments around it. */
    size_t x = s;
    for (;;) {
        while (x < e && wsp(v[x]))
            x++;
        if (x < e && v[x] == '(')
            x = skip_comment(v, e, x);
        else
            break;
    }
    size_t y = x;
    while (y < e && !wsp(v[y]) && v[y] != '(')
        y = v[y] == '"' ? skip_quoted(v, e, y) : y + 1;
    if (x == y)
        return 0;
    for (size_t k = y; k < e;) {
        if (wsp(v[k]))
            k++;
        else if (v[k] == '(')
            k = skip_comment(v, e, k);
        else
            return 0; /* two words without <>: a display name, not an address */
    }
    *a = x;
    *b = y;
    *angle = 0;
    return 1;
}

/* Copy an address-list field value, with each readable address fixed. */
static void rewrite_list(struct buf *o, const struct address_fixing *fx, const char *v, size_t n,
                         int aliases)
{
    size_t copied = 0, start = 0, i = 0;
    for (;;) {
        if (i == n || v[i] == ',' || v[i] == ';') {
            size_t a, b;
            int angle;
            if (mailbox_addr(v, start, i, &a, &b, &angle)) {
                int oom = 0;
                char *r = fix_address(fx, v + a, b - a, aliases, &oom);
                o->failed |= oom;
                if (r) {
                    buf_add(o, v + copied, a - copied);
                    buf_str(o, r);
                    copied = b;
                    free(r);
                }
            }
            if (i == n)
                break;
            start = ++i;
        } else if (v[i] == ':') {
            start = ++i; /* what came before names a group */
        } else if (v[i] == '(') {
            i = skip_comment(v, n, i);
        } else if (v[i] == '"') {
            i = skip_quoted(v, n, i);
        } else if (v[i] == '<') {
            while (i < n && v[i] != '>')
                i = v[i] == '"' ? skip_quoted(v, n, i) : i + 1;
        } else {
            i++;
        }
    }
    buf_add(o, v + copied, n - copied);
}

/* The From value set to `sender`, keeping the first mailbox's display name or comment. */
static void rewrite_from(struct buf *o, const char *v, size_t n, const char *sender)
{
    size_t e = 0;
    while (e < n && v[e] != ',') {
        if (v[e] == '(')
            e = skip_comment(v, n, e);
        else if (v[e] == '"')
            e = skip_quoted(v, n, e);
        else if (v[e] == '<')
            while (e < n && v[e] != '>')
                e = v[e] == '"' ? skip_quoted(v, n, e) : e + 1;
        else
            e++;
    }
    size_t a, b;
    int angle;
    if (!mailbox_addr(v, 0, e, &a, &b, &angle)) {
        buf_str(o, " <");
        buf_str(o, sender);
        buf_str(o, ">");
        return;
    }
    buf_add(o, v, a);
    buf_str(o, sender);
    if (angle)
        buf_str(o, ">");
    else
        buf_add(o, v + b, e - b); /* trailing comments: the old-style display name */
}

static int name_is(const char *s, size_t n, const char *want)
{
    return strlen(want) == n && strncasecmp(s, want, n) == 0;
}

int rewrite_headers(const struct address_fixing *fx, const char *sender, const char *hdr,
                    size_t hdrlen, char **out, size_t *outlen)
{
    struct buf o = {0};
    /* Only a complete address goes into From; there is never a CR or LF in it. */
    int from_ok = strchr(sender, '@') != NULL && strpbrk(sender, "\r\n") == NULL;
    int want_from = from_ok && fx->from_header != FROM_HEADER_KEEP;
    int saw_from = 0;
    size_t pos = 0;
    while (pos < hdrlen) {
        size_t end = line_end(hdr, hdrlen, pos);
        size_t nlen = end ? field_name(hdr + pos, end - pos) : 0;
        if (!nlen)
            break; /* not a field: the caller measured too much; copy the rest */
        while (end < hdrlen && (hdr[end] == ' ' || hdr[end] == '\t')) {
            size_t next = line_end(hdr, hdrlen, end);
            if (!next)
                break;
            end = next;
        }
        const char *name = hdr + pos;
        const char *v = name + nlen + 1;
        size_t vlen = (size_t)(hdr + end - v);
        size_t eol = vlen >= 2 && v[vlen - 2] == '\r' ? 2 : vlen >= 1 && v[vlen - 1] == '\n';
        int is_from = name_is(name, nlen, "From");
        saw_from |= is_from;
        if (is_from && want_from && fx->from_header == FROM_HEADER_REWRITE) {
            buf_add(&o, name, nlen + 1);
            rewrite_from(&o, v, vlen - eol, sender);
            buf_add(&o, v + vlen - eol, eol);
        } else if (is_from || name_is(name, nlen, "To") || name_is(name, nlen, "Cc")) {
            buf_add(&o, name, nlen + 1);
            rewrite_list(&o, fx, v, vlen - eol, !is_from);
            buf_add(&o, v + vlen - eol, eol);
        } else {
            buf_add(&o, name, (size_t)(hdr + end - name));
        }
        pos = end;
    }
    buf_add(&o, hdr + pos, hdrlen - pos);
    if (want_from && !saw_from) {
        /* Prepend: the header section may not end in a line end of its own. */
        struct buf f = {0};
        buf_str(&f, "From: <");
        buf_str(&f, sender);
        buf_str(&f, ">\r\n");
        buf_add(&f, o.p, o.len);
        f.failed |= o.failed;
        free(o.p);
        o = f;
    }
    if (o.failed) {
        free(o.p);
        return -1;
    }
    if (!o.p && !(o.p = malloc(1)))
        return -1;
    *out = o.p;
    *outlen = o.len;
    return 0;
}
