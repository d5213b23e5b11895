/*
 * Parser of submission-socket commands: LMTP (RFC 2033) verbs, the
 * MAIL/RCPT path grammar of RFC 5321 4.1.2, the MAIL parameters SIZE
 * (RFC 1870), BODY (RFC 6152), SMTPUTF8 (RFC 6531), XRELAY and XMODE, and
 * the DSN parameters RET, ENVID, NOTIFY and ORCPT with xtext (RFC 3461).
 *
 * Strictness: exactly one space between verb and argument and between
 * parameters, and angle brackets are required; the one exception is a
 * space after "FROM:"/"TO:", which many clients send.  A source route
 * (<@a,@b:user@c>) is checked and then dropped, as RFC 5321 4.1.1.3 allows.
 */
#include "lmtp_parse.h"

#include <string.h>

#include "config.h"
#include "spool.h" /* enum spool_notify, enum spool_ret: declarations only */

enum addr_fault { ADDR_OK = 0, ADDR_SYNTAX, ADDR_TOO_LONG };

static int is_alpha(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static int is_ctl(unsigned char c)
{
    return c < 0x20 || c == 0x7f;
}

/* RFC 5322 atext, the characters of a dot-string atom. */
static int is_atext(unsigned char c)
{
    return is_alpha(c) || is_digit(c) || (c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

static int upper(int c)
{
    return (c >= 'a' && c <= 'z') ? c - 'a' + 'A' : c;
}

/* Case-insensitive: does s[0..n) equal the upper-case word w? */
static int word_eq(const char *s, size_t n, const char *w)
{
    size_t i;

    for (i = 0; i < n && w[i] != '\0'; i++)
        if (upper((unsigned char)s[i]) != w[i])
            return 0;
    return i == n && w[i] == '\0';
}

/* Case-insensitive: does s[0..n) start with the upper-case word w? */
static int prefix_eq(const char *s, size_t n, const char *w)
{
    size_t wl = strlen(w);

    return n >= wl && word_eq(s, wl, w);
}

/*
 * Length of a well-formed UTF-8 sequence at s (RFC 3629: no overlong forms,
 * no surrogates, nothing above U+10FFFF) that is not a C1 control, or 0.
 */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    size_t need;
    unsigned cp;
    unsigned min;

    if (s[0] < 0x80)
        return 1;
    if (s[0] >= 0xc2 && s[0] <= 0xdf) {
        need = 2;
        cp = s[0] & 0x1fu;
        min = 0x80;
    } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
        need = 3;
        cp = s[0] & 0x0fu;
        min = 0x800;
    } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        need = 4;
        cp = s[0] & 0x07u;
        min = 0x10000;
    } else {
        return 0;
    }
    if (n < need)
        return 0;
    for (size_t i = 1; i < need; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3fu);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    /* C1 controls (U+0080..U+009F, e.g. CSI) are as dangerous as C0 in logs. */
    if (cp <= 0x9f)
        return 0;
    return need;
}

static enum addr_fault check_domain(const char *d, size_t n, int utf8, const char **why)
{
    size_t label = 0;

    if (n == 0) {
        *why = "empty domain";
        return ADDR_SYNTAX;
    }
    if (n > MAILPOOL_MAX_DOMAIN) {
        *why = "domain too long";
        return ADDR_TOO_LONG;
    }
    if (d[0] == '[') {
        /*
         * Address literal: IPv4, "IPv6:..." or "tag:...", checked for shape
         * only (the upstream judges it).  Narrower than RFC 5321's dcontent
         * so that no '>' or quote can hide in it.
         */
        if (n < 3 || d[n - 1] != ']') {
            *why = "bad address literal";
            return ADDR_SYNTAX;
        }
        for (size_t i = 1; i < n - 1; i++) {
            unsigned char c = (unsigned char)d[i];
            if (!is_alpha(c) && !is_digit(c) && c != '.' && c != ':' && c != '-') {
                *why = "bad address literal";
                return ADDR_SYNTAX;
            }
        }
        return ADDR_OK;
    }
    for (size_t i = 0; i <= n; i++) {
        unsigned char c = i < n ? (unsigned char)d[i] : '.';
        if (c == '.') {
            if (label == 0 || label > 63 || d[i - 1] == '-') {
                *why = "bad domain label";
                return ADDR_SYNTAX;
            }
            label = 0;
            continue;
        }
        if (c == '-' && label == 0) {
            *why = "bad domain label";
            return ADDR_SYNTAX;
        }
        if (!(is_alpha(c) || is_digit(c) || c == '-' || (utf8 && c >= 0x80))) {
            *why = "invalid character in domain";
            return ADDR_SYNTAX;
        }
        label++;
    }
    return ADDR_OK;
}

static enum addr_fault check_addr(const char *a, size_t n, int utf8, const char **why)
{
    const unsigned char *s = (const unsigned char *)a;
    size_t i = 0;

    if (n == 0) {
        *why = "empty address";
        return ADDR_SYNTAX;
    }
    for (i = 0; i < n;) {
        if (is_ctl(s[i])) {
            *why = "control character in address";
            return ADDR_SYNTAX;
        }
        if (s[i] >= 0x80 && !utf8) {
            *why = "non-ASCII address without SMTPUTF8";
            return ADDR_SYNTAX;
        }
        size_t l = utf8_len(s + i, n - i);
        if (l == 0) {
            *why = "invalid UTF-8 in address";
            return ADDR_SYNTAX;
        }
        i += l;
    }
    if (n > MAILPOOL_MAX_PATH) {
        *why = "address too long";
        return ADDR_TOO_LONG;
    }

    if (s[0] == '"') {
        for (i = 1; i < n && s[i] != '"'; i++) {
            if (s[i] == '\\') {
                if (i + 1 >= n || s[i + 1] < 32 || s[i + 1] > 126) {
                    *why = "bad quoted pair";
                    return ADDR_SYNTAX;
                }
                i++;
            }
        }
        if (i >= n) {
            *why = "unterminated quoted string";
            return ADDR_SYNTAX;
        }
        i++;
        if (i < n && s[i] != '@') {
            *why = "text after quoted local part";
            return ADDR_SYNTAX;
        }
    } else {
        for (i = 0; i < n && s[i] != '@'; i++) {
            if (s[i] == '.') {
                if (i == 0 || s[i - 1] == '.' || i + 1 == n || s[i + 1] == '@') {
                    *why = "misplaced dot in local part";
                    return ADDR_SYNTAX;
                }
            } else if (s[i] == ' ') {
                *why = "space in address";
                return ADDR_SYNTAX;
            } else if (!is_atext(s[i]) && s[i] < 0x80) {
                *why = "invalid character in local part";
                return ADDR_SYNTAX;
            }
        }
        if (i == 0) {
            *why = "empty local part";
            return ADDR_SYNTAX;
        }
    }
    if (i > MAILPOOL_MAX_LOCAL_PART) {
        *why = "local part too long";
        return ADDR_TOO_LONG;
    }
    if (i == n)
        return ADDR_OK; /* a bare local part such as "postmaster" */
    return check_domain(a + i + 1, n - i - 1, utf8, why);
}

const char *addr_check(const char *addr, size_t len, int utf8)
{
    const char *why = NULL;

    return check_addr(addr, len, utf8, &why) == ADDR_OK ? NULL : why;
}

/*
 * Find the path in s[0..n), which must start with '<'.  A '>' inside a
 * quoted local part does not end it.  Returns the bytes up to and including
 * '>', or 0 when there is none.
 */
static size_t path_span(const char *s, size_t n)
{
    int quoted = 0;

    if (n == 0 || s[0] != '<')
        return 0;
    for (size_t i = 1; i < n; i++) {
        if (quoted && s[i] == '\\')
            i++;
        else if (s[i] == '"')
            quoted = !quoted;
        else if (!quoted && s[i] == '>')
            return i + 1;
    }
    return 0;
}

/* Check and skip a source route "@a,@b:"; returns its length, 0 if malformed. */
static size_t route_len(const char *s, size_t n, int utf8)
{
    size_t i = 0;
    const char *why;

    while (i < n && s[i] == '@') {
        size_t start = ++i;
        while (i < n && s[i] != ',' && s[i] != ':')
            i++;
        if (i >= n || check_domain(s + start, i - start, utf8, &why) != ADDR_OK)
            return 0;
        if (s[i++] == ':')
            return i;
    }
    return 0;
}

struct path_errors {
    const char *syntax;
    const char *bad;
    const char *too_long;
};

static const struct path_errors mail_errors = {
    "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]",
    "501 5.1.7 Bad sender address syntax",
    "501 5.1.7 Sender address too long",
};

static const struct path_errors rcpt_errors = {
    "501 5.5.4 Syntax: RCPT TO:<address> [parameters]",
    "501 5.1.3 Bad recipient address syntax",
    "501 5.1.3 Recipient address too long",
};

/*
 * "FROM:<path> params" / "TO:<path>": finds the path, returns NULL and sets
 * *inner and *innerlen to the inside of the brackets and *params to what
 * follows the separating space (NULL when nothing follows).
 */
static const char *split_path(const char *s, size_t n, const char *kw, const struct path_errors *e,
                              const char **inner, size_t *innerlen, const char **params,
                              size_t *paramslen)
{
    size_t kl = strlen(kw);
    size_t span;

    if (!prefix_eq(s, n, kw))
        return e->syntax;
    s += kl;
    n -= kl;
    if (n > 0 && s[0] == ' ') {
        s++;
        n--;
    }
    span = path_span(s, n);
    if (span == 0)
        return e->syntax;
    *inner = s + 1;
    *innerlen = span - 2;
    *params = NULL;
    *paramslen = 0;
    if (span < n) {
        if (s[span] != ' ')
            return e->syntax;
        *params = s + span + 1;
        *paramslen = n - span - 1;
    }
    return NULL;
}

/* Validate and store the mailbox (null path already handled by the caller). */
static const char *store_path(const char *p, size_t n, int utf8, const struct path_errors *e,
                              char *out)
{
    const char *why;
    size_t r;

    if (n > MAILPOOL_MAX_PATH)
        return e->too_long;
    if (n > 0 && p[0] == '@') {
        r = route_len(p, n, utf8);
        if (r == 0)
            return e->bad;
        p += r;
        n -= r;
    }
    switch (check_addr(p, n, utf8, &why)) {
    case ADDR_OK:
        break;
    case ADDR_TOO_LONG:
        return e->too_long;
    default:
        return e->bad;
    }
    memcpy(out, p, n);
    out[n] = '\0';
    return NULL;
}

/* Decimal, 1-20 digits, no sign, no overflow. */
static int parse_ull(const char *s, size_t n, unsigned long long *v)
{
    *v = 0;
    if (n == 0 || n > 20)
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned d;
        if (!is_digit((unsigned char)s[i]))
            return -1;
        d = (unsigned)(s[i] - '0');
        if (*v > (~0ULL - d) / 10)
            return -1;
        *v = *v * 10 + d;
    }
    return 0;
}

/* An upper-case hex digit's value, or -1: RFC 3461 xtext allows no lower case. */
static int xtext_hex(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

ssize_t xtext_decode(const char *s, size_t len, char *out, size_t outsize)
{
    size_t o = 0;

    if (out != NULL && outsize == 0)
        return -1;
    for (size_t i = 0; i < len;) {
        unsigned char c = (unsigned char)s[i];

        if (c == '+') {
            int hi;
            int lo;

            if (len - i < 3)
                return -1;
            hi = xtext_hex((unsigned char)s[i + 1]);
            lo = xtext_hex((unsigned char)s[i + 2]);
            if (hi < 0 || lo < 0)
                return -1;
            c = (unsigned char)(hi << 4 | lo);
            i += 3;
        } else if (c < 33 || c > 126 || c == '=') {
            return -1;
        } else {
            i++;
        }
        /*
         * RFC 3461 wants printable US-ASCII before encoding; refusing the
         * rest here keeps "+0D+0A" from becoming a header line in a DSN.
         */
        if (c < 32 || c > 126)
            return -1;
        if (out != NULL) {
            if (o + 1 >= outsize)
                return -1;
            out[o] = (char)c;
        }
        o++;
    }
    if (out != NULL)
        out[o] = '\0';
    return (ssize_t)o;
}

/*
 * Split one "KEY[=VALUE]" token (RFC 5321 4.1.2 esmtp-keyword and
 * esmtp-value) and check its shape; *v is NULL when there is no '='.
 */
static const char *split_param(const char *t, size_t n, size_t *kl, const char **v, size_t *vl)
{
    static const char syntax[] = "501 5.5.2 Syntax error in parameters";

    *kl = 0;
    *v = NULL;
    *vl = 0;
    while (*kl < n && t[*kl] != '=')
        (*kl)++;
    if (*kl == 0)
        return syntax;
    for (size_t i = 0; i < *kl; i++) {
        unsigned char c = (unsigned char)t[i];
        if (!is_alpha(c) && !is_digit(c) && !(c == '-' && i > 0))
            return syntax;
    }
    if (*kl < n) {
        *v = t + *kl + 1;
        *vl = n - *kl - 1;
        if (*vl == 0)
            return syntax;
        for (size_t i = 0; i < *vl; i++) {
            unsigned char c = (unsigned char)(*v)[i];
            if (c < 33 || c > 126 || c == '=')
                return syntax;
        }
    }
    return NULL;
}

/* Run fn on each space-separated parameter token of params[0..n). */
static const char *each_param(const char *params, size_t n, unsigned *seen, struct lmtp_cmd *cmd,
                              const char *(*fn)(const char *, size_t, unsigned *,
                                                struct lmtp_cmd *))
{
    size_t i = 0;

    for (;;) {
        size_t start = i;
        const char *err;

        while (i < n && params[i] != ' ')
            i++;
        err = fn(params + start, i - start, seen, cmd);
        if (err != NULL)
            return err;
        if (i == n)
            return NULL;
        i++;
    }
}

enum mail_param {
    P_SIZE = 1,
    P_BODY = 2,
    P_SMTPUTF8 = 4,
    P_XRELAY = 8,
    P_XMODE = 16,
    P_RET = 32,
    P_ENVID = 64,
};

/* One "KEY[=VALUE]" token of MAIL FROM. */
static const char *parse_param(const char *t, size_t n, unsigned *seen, struct lmtp_cmd *cmd)
{
    size_t kl;
    const char *v;
    size_t vl;
    unsigned bit;
    const char *err;

    err = split_param(t, n, &kl, &v, &vl);
    if (err != NULL)
        return err;

    if (word_eq(t, kl, "SIZE"))
        bit = P_SIZE;
    else if (word_eq(t, kl, "BODY"))
        bit = P_BODY;
    else if (word_eq(t, kl, "SMTPUTF8"))
        bit = P_SMTPUTF8;
    else if (word_eq(t, kl, MAILPOOL_PARAM_RELAY))
        bit = P_XRELAY;
    else if (word_eq(t, kl, MAILPOOL_PARAM_MODE))
        bit = P_XMODE;
    else if (word_eq(t, kl, "RET"))
        bit = P_RET;
    else if (word_eq(t, kl, "ENVID"))
        bit = P_ENVID;
    else
        return "555 5.5.4 Unsupported MAIL parameter";
    if (*seen & bit)
        return "501 5.5.4 Duplicate MAIL parameter";
    *seen |= bit;

    switch (bit) {
    case P_SIZE:
        if (v == NULL || parse_ull(v, vl, &cmd->size) < 0)
            return "501 5.5.4 Invalid SIZE value";
        cmd->has_size = 1;
        break;
    case P_BODY:
        if (v != NULL && word_eq(v, vl, "7BIT"))
            cmd->body = BODY_7BIT;
        else if (v != NULL && word_eq(v, vl, "8BITMIME"))
            cmd->body = BODY_8BITMIME;
        else
            return "501 5.5.4 Invalid BODY value";
        break;
    case P_SMTPUTF8:
        if (v != NULL)
            return "501 5.5.4 SMTPUTF8 takes no value";
        cmd->smtputf8 = 1;
        break;
    case P_XRELAY:
        if (v == NULL || vl > MAILPOOL_MAX_RELAY_NAME)
            return "501 5.5.4 Invalid XRELAY value";
        for (size_t i = 0; i < vl; i++) {
            unsigned char c = (unsigned char)v[i];
            if (!is_alpha(c) && !is_digit(c) && c != '_' && c != '.' && c != '-')
                return "501 5.5.4 Invalid XRELAY value";
        }
        memcpy(cmd->relay, v, vl);
        cmd->relay[vl] = '\0';
        break;
    case P_XMODE:
        if (v != NULL && word_eq(v, vl, "RELAY"))
            cmd->mode = MODE_RELAY;
        else if (v != NULL && word_eq(v, vl, "QUEUE"))
            cmd->mode = MODE_QUEUE;
        else
            return "501 5.5.4 Invalid XMODE value";
        break;
    case P_RET:
        if (v != NULL && word_eq(v, vl, "FULL"))
            cmd->ret = SPOOL_RET_FULL;
        else if (v != NULL && word_eq(v, vl, "HDRS"))
            cmd->ret = SPOOL_RET_HDRS;
        else
            return "501 5.5.4 Invalid RET value";
        break;
    default:
        if (v == NULL)
            return "501 5.5.4 Invalid ENVID value";
        if (vl > LMTP_MAX_ENVID)
            return "501 5.5.4 ENVID too long";
        if (xtext_decode(v, vl, NULL, 0) < 0)
            return "501 5.5.4 Invalid ENVID value";
        /* Kept encoded: it goes back out in the DSN's Original-Envelope-Id as xtext. */
        memcpy(cmd->envid, v, vl);
        cmd->envid[vl] = '\0';
        break;
    }
    return NULL;
}

static const char *parse_mail(const char *s, size_t n, struct lmtp_cmd *cmd)
{
    const char *inner;
    const char *params;
    size_t innerlen;
    size_t paramslen;
    unsigned seen = 0;
    const char *err;

    err = split_path(s, n, "FROM:", &mail_errors, &inner, &innerlen, &params, &paramslen);
    if (err != NULL)
        return err;
    /* Parameters first: SMTPUTF8 decides whether the path may be non-ASCII. */
    if (params != NULL) {
        err = each_param(params, paramslen, &seen, cmd, parse_param);
        if (err != NULL)
            return err;
    }
    if (innerlen == 0) {
        cmd->path[0] = '\0'; /* the null sender */
        return NULL;
    }
    return store_path(inner, innerlen, cmd->smtputf8, &mail_errors, cmd->path);
}

/* RFC 3461 4.1: "NEVER" alone, or a list of SUCCESS, FAILURE, DELAY, each once. */
static int parse_notify(const char *v, size_t vl, unsigned *bits)
{
    size_t i = 0;

    if (word_eq(v, vl, "NEVER")) {
        *bits = SPOOL_NOTIFY_NEVER;
        return 0;
    }
    *bits = 0;
    for (;;) {
        size_t start = i;
        unsigned b;

        while (i < vl && v[i] != ',')
            i++;
        if (word_eq(v + start, i - start, "SUCCESS"))
            b = SPOOL_NOTIFY_SUCCESS;
        else if (word_eq(v + start, i - start, "FAILURE"))
            b = SPOOL_NOTIFY_FAILURE;
        else if (word_eq(v + start, i - start, "DELAY"))
            b = SPOOL_NOTIFY_DELAY;
        else
            return -1;
        if (*bits & b)
            return -1;
        *bits |= b;
        if (i == vl)
            return 0;
        i++;
    }
}

/* RFC 3461 4.2: addr-type ";" xtext, the address part not empty. */
static int orcpt_ok(const char *v, size_t vl)
{
    size_t i = 0;

    while (i < vl && v[i] != ';') {
        if (!is_atext((unsigned char)v[i]))
            return 0;
        i++;
    }
    if (i == 0 || i + 1 >= vl)
        return 0;
    return xtext_decode(v + i + 1, vl - i - 1, NULL, 0) > 0;
}

enum rcpt_param { R_NOTIFY = 1, R_ORCPT = 2 };

/* One "KEY[=VALUE]" token of RCPT TO. */
static const char *parse_rcpt_param(const char *t, size_t n, unsigned *seen, struct lmtp_cmd *cmd)
{
    size_t kl;
    const char *v;
    size_t vl;
    unsigned bit;
    const char *err;

    err = split_param(t, n, &kl, &v, &vl);
    if (err != NULL)
        return err;
    if (word_eq(t, kl, "NOTIFY"))
        bit = R_NOTIFY;
    else if (word_eq(t, kl, "ORCPT"))
        bit = R_ORCPT;
    else
        return "555 5.5.4 Unsupported RCPT parameter";
    if (*seen & bit)
        return "501 5.5.4 Duplicate RCPT parameter";
    *seen |= bit;

    if (bit == R_NOTIFY) {
        if (v == NULL || parse_notify(v, vl, &cmd->notify) < 0)
            return "501 5.5.4 Invalid NOTIFY value";
        return NULL;
    }
    if (v == NULL)
        return "501 5.5.4 Invalid ORCPT value";
    if (vl > LMTP_MAX_ORCPT)
        return "501 5.5.4 ORCPT too long";
    if (!orcpt_ok(v, vl))
        return "501 5.5.4 Invalid ORCPT value";
    memcpy(cmd->orcpt, v, vl);
    cmd->orcpt[vl] = '\0';
    return NULL;
}

static const char *parse_rcpt(const char *s, size_t n, struct lmtp_cmd *cmd)
{
    const char *inner;
    const char *params;
    size_t innerlen;
    size_t paramslen;
    unsigned seen = 0;
    const char *err;

    err = split_path(s, n, "TO:", &rcpt_errors, &inner, &innerlen, &params, &paramslen);
    if (err != NULL)
        return err;
    if (params != NULL) {
        if (paramslen == 0)
            return rcpt_errors.syntax;
        err = each_param(params, paramslen, &seen, cmd, parse_rcpt_param);
        if (err != NULL)
            return err;
    }
    if (innerlen == 0)
        return "501 5.1.3 Null recipient not allowed";
    /*
     * Whether the transaction is SMTPUTF8 is the caller's knowledge: UTF-8
     * is accepted here and the caller re-checks with addr_check(..., 0).
     */
    return store_path(inner, innerlen, 1, &rcpt_errors, cmd->path);
}

static const char *parse_bdat(const char *s, size_t n, struct lmtp_cmd *cmd)
{
    static const char syntax[] = "501 5.5.4 Syntax: BDAT size [LAST]";
    size_t i = 0;

    while (i < n && s[i] != ' ')
        i++;
    if (parse_ull(s, i, &cmd->chunk_size) < 0)
        return syntax;
    if (i == n)
        return NULL;
    if (!word_eq(s + i + 1, n - i - 1, "LAST"))
        return syntax;
    cmd->last = 1;
    return NULL;
}

/* Copy a free-form argument (HELO names, NOOP text ...), trimming spaces. */
static size_t copy_arg(const char *s, size_t n, char *out)
{
    while (n > 0 && s[0] == ' ') {
        s++;
        n--;
    }
    while (n > 0 && s[n - 1] == ' ')
        n--;
    memcpy(out, s, n);
    out[n] = '\0';
    return n;
}

static const struct {
    const char *name;
    enum lmtp_verb verb;
} verbs[] = {
    {"LHLO", LMTP_LHLO}, {"HELO", LMTP_HELO},         {"EHLO", LMTP_EHLO}, {"MAIL", LMTP_MAIL},
    {"RCPT", LMTP_RCPT}, {"DATA", LMTP_DATA},         {"BDAT", LMTP_BDAT}, {"RSET", LMTP_RSET},
    {"NOOP", LMTP_NOOP}, {"QUIT", LMTP_QUIT},         {"VRFY", LMTP_VRFY}, {"HELP", LMTP_HELP},
    {"AUTH", LMTP_AUTH}, {"STARTTLS", LMTP_STARTTLS},
};

const char *lmtp_parse_command(const char *line, size_t len, struct lmtp_cmd *cmd)
{
    size_t vl = 0;
    const char *rest;
    size_t rl;

    memset(cmd, 0, sizeof(*cmd));
    cmd->verb = LMTP_UNKNOWN;
    cmd->body = BODY_7BIT;
    cmd->mode = -1;

    if (len > MAILPOOL_MAX_COMMAND_LINE)
        return "500 5.5.2 Line too long";
    for (size_t i = 0; i < len; i++)
        if (is_ctl((unsigned char)line[i]))
            return "501 5.5.2 Control character in command";
    while (vl < len && line[vl] != ' ')
        vl++;
    for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
        if (word_eq(line, vl, verbs[i].name))
            cmd->verb = verbs[i].verb;
    if (cmd->verb == LMTP_UNKNOWN)
        return "500 5.5.1 Command unrecognized";

    /* rest: the argument after the single space, or NULL for none. */
    rest = vl < len ? line + vl + 1 : NULL;
    rl = vl < len ? len - vl - 1 : 0;

    switch (cmd->verb) {
    case LMTP_MAIL:
        return rest == NULL ? mail_errors.syntax : parse_mail(rest, rl, cmd);
    case LMTP_RCPT:
        return rest == NULL ? rcpt_errors.syntax : parse_rcpt(rest, rl, cmd);
    case LMTP_BDAT:
        return rest == NULL ? "501 5.5.4 Syntax: BDAT size [LAST]" : parse_bdat(rest, rl, cmd);
    case LMTP_LHLO:
        if (rest == NULL || copy_arg(rest, rl, cmd->arg) == 0)
            return "501 5.5.4 Syntax: LHLO hostname";
        return NULL;
    case LMTP_DATA:
    case LMTP_RSET:
    case LMTP_QUIT:
    case LMTP_STARTTLS:
        if (rest != NULL)
            return "501 5.5.4 Syntax error (no parameters allowed)";
        return NULL;
    default:
        if (rest != NULL)
            copy_arg(rest, rl, cmd->arg);
        return NULL;
    }
}
