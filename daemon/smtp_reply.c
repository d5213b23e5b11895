/*
 * Incremental SMTP reply parser (RFC 5321 section 4.2 and 4.5.3.1.5) with
 * enhanced status codes (RFC 2034, RFC 3463), and the EHLO keyword scan
 * (RFC 5321 4.1.1.1, RFC 4954 AUTH, RFC 1870 SIZE).
 */
#include "smtp_reply.h"
#include "utf8.h"

#include <stdlib.h>
#include <string.h>

#include "config.h"

void smtp_reply_clear(struct smtp_reply *r)
{
    free(r->text);
    memset(r, 0, sizeof(*r));
}

void reply_parser_init(struct reply_parser *p)
{
    memset(p, 0, sizeof(*p));
}

void reply_parser_reset(struct reply_parser *p)
{
    free(p->text);
    reply_parser_init(p);
}

const char *reply_parser_error(const struct reply_parser *p)
{
    return p->error;
}

int reply_parser_pending(const struct reply_parser *p)
{
    return p->linelen > 0 || p->nlines > 0;
}

static int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/*
 * Length of an enhanced status code "class.subject.detail" at s (subject
 * and detail 1-3 digits) followed by a space or the end, or 0.  The class
 * must be the reply's first digit: a "250 5.1.1" text is just text.
 */
static size_t ecode_len(const char *s, size_t len, char class_digit)
{
    size_t i = 0;

    if (len < 5 || s[0] != class_digit || s[1] != '.')
        return 0;
    i = 2;
    for (int part = 0; part < 2; part++) {
        size_t start = i;
        while (i < len && i - start < 4 && is_digit((unsigned char)s[i]))
            i++;
        if (i == start || i - start > 3)
            return 0;
        if (part == 0) {
            if (i >= len || s[i] != '.')
                return 0;
            i++;
        }
    }
    if (i < len && s[i] != ' ')
        return 0;
    return i;
}

static int append_text(struct reply_parser *p, const char *s, size_t n)
{
    /* Bounded by SMTP_REPLY_MAX_LINES * (SMTP_REPLY_MAX_LINE + 1). */
    char *t = realloc(p->text, p->textlen + n + 2);

    if (t == NULL)
        return -1;
    p->text = t;
    if (p->nlines > 0)
        t[p->textlen++] = '\n';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        size_t u = c >= 0x80 ? utf8_printable((const unsigned char *)s + i, n - i) : 0;
        /*
         * Reply text ends up in logs, bounces and the client's terminal: no
         * control characters (C0, DEL, C1) and no bytes that are not UTF-8
         * (a lone 0x9b is an 8-bit CSI).  Valid UTF-8 text is kept.
         */
        if (u > 0) {
            memcpy(t + p->textlen, s + i, u);
            p->textlen += u;
            i += u - 1;
        } else {
            t[p->textlen++] = (c < 0x20 || c >= 0x7f) ? '?' : (char)c;
        }
    }
    t[p->textlen] = '\0';
    return 0;
}

static int fail(struct reply_parser *p, const char *why)
{
    p->error = why;
    return -1;
}

/* One complete line (CR/LF stripped).  Returns 1 when it ends the reply. */
static int parse_line(struct reply_parser *p, const char *l, size_t n)
{
    int code;
    int last;
    size_t skip;

    if (n < 3)
        return fail(p, "reply line too short");
    if (l[0] < '2' || l[0] > '5' || l[1] < '0' || l[1] > '5' || !is_digit((unsigned char)l[2]))
        return fail(p, "invalid reply code");
    code = (l[0] - '0') * 100 + (l[1] - '0') * 10 + (l[2] - '0');
    if (n == 3 || l[3] == ' ') /* a bare "250" is a final line with no text */
        last = 1;
    else if (l[3] == '-')
        last = 0;
    else
        return fail(p, "invalid character after reply code");
    if (p->nlines > 0 && code != p->code)
        return fail(p, "reply code changed within a multiline reply");
    if (p->nlines >= SMTP_REPLY_MAX_LINES)
        return fail(p, "too many reply lines");

    l += n > 3 ? 4 : 3;
    n -= n > 3 ? 4 : 3;
    skip = ecode_len(l, n, (char)('0' + code / 100));
    if (skip > 0 && (code / 100 == 2 || code / 100 >= 4)) {
        if (p->nlines == 0) {
            memcpy(p->ecode, l, skip);
            p->ecode[skip] = '\0';
        }
        /* The code and the one space that separates it from the text. */
        if (n > skip)
            skip++;
        l += skip;
        n -= skip;
    }
    if (append_text(p, l, n) < 0)
        return fail(p, "out of memory");
    p->code = code;
    p->nlines++;
    return last;
}

size_t reply_parser_feed(struct reply_parser *p, const char *buf, size_t len, enum reply_status *st,
                         struct smtp_reply *out)
{
    size_t used = 0;

    *st = REPLY_ERROR;
    if (p->error != NULL)
        return 0;
    while (used < len) {
        const char *nl = memchr(buf + used, '\n', len - used);
        size_t chunk = nl != NULL ? (size_t)(nl - (buf + used)) : len - used;
        int r;

        /* The buffer keeps one extra byte for a CR that may precede LF. */
        if (chunk > SMTP_REPLY_MAX_LINE + 1 - p->linelen) {
            fail(p, "reply line too long");
            return used + chunk;
        }
        memcpy(p->line + p->linelen, buf + used, chunk);
        p->linelen += chunk;
        used += chunk;
        if (nl == NULL)
            break;
        used++; /* the LF */
        if (p->linelen > 0 && p->line[p->linelen - 1] == '\r')
            p->linelen--;
        if (p->linelen > SMTP_REPLY_MAX_LINE) {
            fail(p, "reply line too long");
            return used;
        }
        r = parse_line(p, p->line, p->linelen);
        p->linelen = 0;
        if (r < 0)
            return used;
        if (r == 1) {
            out->code = p->code;
            memcpy(out->ecode, p->ecode, sizeof(out->ecode));
            out->text = p->text;
            out->nlines = p->nlines;
            p->text = NULL;
            reply_parser_init(p);
            *st = REPLY_COMPLETE;
            return used;
        }
    }
    *st = REPLY_INCOMPLETE;
    return used;
}

/* Case-insensitive comparison of s[0..n) with the upper-case word w. */
static int word_eq(const char *s, size_t n, const char *w)
{
    size_t i;

    for (i = 0; i < n && w[i] != '\0'; i++) {
        char c = s[i];
        if (c >= 'a' && c <= 'z')
            c = (char)(c - 'a' + 'A');
        if (c != w[i])
            return 0;
    }
    return i == n && w[i] == '\0';
}

static unsigned auth_mech_bit(const char *s, size_t n)
{
    static const struct {
        const char *name;
        unsigned bit;
    } mechs[] = {
        {"PLAIN", AUTH_MECH_PLAIN},
        {"LOGIN", AUTH_MECH_LOGIN},
        {"CRAM-MD5", AUTH_MECH_CRAM_MD5},
        {"SCRAM-SHA-256", AUTH_MECH_SCRAM_SHA_256},
        {"XOAUTH2", AUTH_MECH_XOAUTH2},
        {"OAUTHBEARER", AUTH_MECH_OAUTHBEARER},
        {"SCRAM-SHA-1", AUTH_MECH_SCRAM_SHA_1},
    };

    for (size_t i = 0; i < sizeof(mechs) / sizeof(mechs[0]); i++)
        if (word_eq(s, n, mechs[i].name))
            return mechs[i].bit;
    return 0;
}

/* Split s[0..n) at spaces and OR the mechanisms found into caps->auth. */
static void parse_auth_list(const char *s, size_t n, struct smtp_caps *caps)
{
    size_t i = 0;

    while (i < n) {
        size_t start;
        while (i < n && s[i] == ' ')
            i++;
        start = i;
        while (i < n && s[i] != ' ')
            i++;
        if (i > start)
            caps->auth |= auth_mech_bit(s + start, i - start);
    }
}

/* SIZE's argument; anything but plain digits that fit means "no limit". */
static unsigned long long parse_size(const char *s, size_t n)
{
    unsigned long long v = 0;

    while (n > 0 && *s == ' ')
        s++, n--;
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (!is_digit((unsigned char)s[i]))
            return 0;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (~0ULL - d) / 10)
            return 0;
        v = v * 10 + d;
    }
    return v;
}

static void parse_cap_line(const char *s, size_t n, struct smtp_caps *caps)
{
    static const struct {
        const char *name;
        unsigned bit;
    } simple[] = {
        {"PIPELINING", CAP_PIPELINING},
        {"STARTTLS", CAP_STARTTLS},
        {"8BITMIME", CAP_8BITMIME},
        {"SMTPUTF8", CAP_SMTPUTF8},
        {"DSN", CAP_DSN},
        {"CHUNKING", CAP_CHUNKING},
        {"ENHANCEDSTATUSCODES", CAP_ENHANCEDSTATUSCODES},
    };
    size_t kw = 0;

    while (kw < n && s[kw] != ' ' && s[kw] != '=')
        kw++;
    if (word_eq(s, kw, "AUTH")) {
        /* "AUTH=LOGIN PLAIN" is what pre-RFC 4954 servers (and Outlook) send. */
        caps->flags |= CAP_AUTH;
        if (kw < n)
            parse_auth_list(s + kw + 1, n - kw - 1, caps);
        return;
    }
    if (kw < n && s[kw] == '=')
        return;
    if (word_eq(s, kw, "SIZE")) {
        caps->flags |= CAP_SIZE;
        caps->size = parse_size(s + kw, n - kw);
        return;
    }
    if (kw != n)
        return; /* the keywords above take no parameters */
    for (size_t i = 0; i < sizeof(simple) / sizeof(simple[0]); i++)
        if (word_eq(s, kw, simple[i].name))
            caps->flags |= simple[i].bit;
}

void smtp_caps_parse(const struct smtp_reply *ehlo, struct smtp_caps *caps)
{
    const char *s;
    const char *nl;

    memset(caps, 0, sizeof(*caps));
    if (ehlo == NULL || ehlo->code != 250 || ehlo->text == NULL)
        return;
    /* The first line is the server's greeting, not a keyword. */
    s = strchr(ehlo->text, '\n');
    while (s != NULL) {
        s++;
        nl = strchr(s, '\n');
        parse_cap_line(s, nl != NULL ? (size_t)(nl - s) : strlen(s), caps);
        s = nl;
    }
}
