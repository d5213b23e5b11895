/*
 * Strict recursive-descent JSON reader (RFC 8259, strings checked as UTF-8
 * per RFC 3629) for mailpoolctl.  The depth limit bounds the recursion; the
 * size and node limits bound the memory.
 */
#include "json_read.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct parser {
    const unsigned char *p, *start, *end;
    int depth;
    size_t nodes;
    char *err;
    size_t errlen;
    int failed;
};

static void fail(struct parser *ps, const char *what)
{
    if (!ps->failed)
        snprintf(ps->err, ps->errlen, "JSON: %s at offset %zu", what, (size_t)(ps->p - ps->start));
    ps->failed = 1;
}

static void skip_ws(struct parser *ps)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static struct json_value *parse_value(struct parser *ps);

static struct json_value *new_value(struct parser *ps, enum json_type type)
{
    if (++ps->nodes > JSON_READ_MAX_NODES) {
        fail(ps, "too many values");
        return NULL;
    }
    struct json_value *v = calloc(1, sizeof(*v));
    if (v == NULL) {
        fail(ps, "out of memory");
        return NULL;
    }
    v->type = type;
    return v;
}

/* ---- strings ----------------------------------------------------------------- */

struct sbuf {
    char *s;
    size_t len, cap;
};

static int sbuf_add(struct sbuf *b, const void *data, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 32;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *s = realloc(b->s, cap);
        if (s == NULL)
            return -1;
        b->s = s;
        b->cap = cap;
    }
    memcpy(b->s + b->len, data, n);
    b->len += n;
    b->s[b->len] = '\0';
    return 0;
}

static int sbuf_add_cp(struct sbuf *b, uint32_t cp)
{
    unsigned char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (unsigned char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (unsigned char)(0xc0 | (cp >> 6));
        u[1] = (unsigned char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (unsigned char)(0xe0 | (cp >> 12));
        u[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        u[2] = (unsigned char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        u[0] = (unsigned char)(0xf0 | (cp >> 18));
        u[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
        u[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        u[3] = (unsigned char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    return sbuf_add(b, u, n);
}

static int hex4(const unsigned char *s, uint32_t *out)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (uint32_t)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

/* Length of the well-formed UTF-8 sequence at s (RFC 3629 section 4), or 0. */
static size_t utf8_len(const unsigned char *s, size_t avail)
{
    unsigned char b = s[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xbf;
    if (b >= 0xc2 && b <= 0xdf) {
        n = 2;
    } else if (b >= 0xe0 && b <= 0xef) {
        n = 3;
        if (b == 0xe0)
            lo = 0xa0;
        else if (b == 0xed)
            hi = 0x9f;
    } else if (b >= 0xf0 && b <= 0xf4) {
        n = 4;
        if (b == 0xf0)
            lo = 0x90;
        else if (b == 0xf4)
            hi = 0x8f;
    } else {
        return 0;
    }
    if (avail < n || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    }
    return n;
}

/* At the opening quote; on success *out holds the decoded string. */
static int parse_string(struct parser *ps, struct sbuf *out)
{
    memset(out, 0, sizeof(*out));
    if (sbuf_add(out, "", 0) != 0)
        goto nomem;
    ps->p++;
    for (;;) {
        if (ps->p >= ps->end) {
            fail(ps, "unterminated string");
            goto bad;
        }
        unsigned char c = *ps->p;
        if (c == '"') {
            ps->p++;
            return 0;
        }
        if (c < 0x20) {
            fail(ps, "control character in string");
            goto bad;
        }
        if (c >= 0x80) {
            size_t n = utf8_len(ps->p, (size_t)(ps->end - ps->p));
            if (n == 0) {
                fail(ps, "invalid UTF-8 in string");
                goto bad;
            }
            if (sbuf_add(out, ps->p, n) != 0)
                goto nomem;
            ps->p += n;
            continue;
        }
        if (c != '\\') {
            const unsigned char *run = ps->p;
            while (ps->p < ps->end && *ps->p >= 0x20 && *ps->p < 0x80 && *ps->p != '"' &&
                   *ps->p != '\\')
                ps->p++;
            if (sbuf_add(out, run, (size_t)(ps->p - run)) != 0)
                goto nomem;
            continue;
        }
        if (ps->end - ps->p < 2) {
            fail(ps, "unterminated escape");
            goto bad;
        }
        char e = (char)ps->p[1];
        const char *simple = NULL;
        switch (e) {
        case '"':
            simple = "\"";
            break;
        case '\\':
            simple = "\\";
            break;
        case '/':
            simple = "/";
            break;
        case 'b':
            simple = "\b";
            break;
        case 'f':
            simple = "\f";
            break;
        case 'n':
            simple = "\n";
            break;
        case 'r':
            simple = "\r";
            break;
        case 't':
            simple = "\t";
            break;
        case 'u':
            break;
        default:
            fail(ps, "invalid escape");
            goto bad;
        }
        if (simple != NULL) {
            if (sbuf_add(out, simple, 1) != 0)
                goto nomem;
            ps->p += 2;
            continue;
        }
        uint32_t cp;
        if (ps->end - ps->p < 6 || hex4(ps->p + 2, &cp) != 0) {
            fail(ps, "invalid \\u escape");
            goto bad;
        }
        ps->p += 6;
        if (cp >= 0xdc00 && cp <= 0xdfff) {
            fail(ps, "lone low surrogate");
            goto bad;
        }
        if (cp >= 0xd800 && cp <= 0xdbff) {
            uint32_t lo;
            if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u' ||
                hex4(ps->p + 2, &lo) != 0 || lo < 0xdc00 || lo > 0xdfff) {
                fail(ps, "lone high surrogate");
                goto bad;
            }
            ps->p += 6;
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        }
        if (sbuf_add_cp(out, cp) != 0)
            goto nomem;
    }
nomem:
    fail(ps, "out of memory");
bad:
    free(out->s);
    out->s = NULL;
    return -1;
}

/* ---- numbers ------------------------------------------------------------------ */

static struct json_value *parse_number(struct parser *ps)
{
    const unsigned char *s = ps->p;
    const unsigned char *q = s;
    int integral = 1;
    if (q < ps->end && *q == '-')
        q++;
    if (q < ps->end && *q == '0') {
        q++;
    } else if (q < ps->end && *q >= '1' && *q <= '9') {
        while (q < ps->end && *q >= '0' && *q <= '9')
            q++;
    } else {
        fail(ps, "invalid number");
        return NULL;
    }
    if (q < ps->end && *q == '.') {
        integral = 0;
        q++;
        if (q >= ps->end || *q < '0' || *q > '9') {
            fail(ps, "invalid number");
            return NULL;
        }
        while (q < ps->end && *q >= '0' && *q <= '9')
            q++;
    }
    if (q < ps->end && (*q == 'e' || *q == 'E')) {
        integral = 0;
        q++;
        if (q < ps->end && (*q == '+' || *q == '-'))
            q++;
        if (q >= ps->end || *q < '0' || *q > '9') {
            fail(ps, "invalid number");
            return NULL;
        }
        while (q < ps->end && *q >= '0' && *q <= '9')
            q++;
    }
    /* strtod needs a terminated copy: the input need not be NUL-terminated. */
    size_t n = (size_t)(q - s);
    char *copy = malloc(n + 1);
    if (copy == NULL) {
        fail(ps, "out of memory");
        return NULL;
    }
    memcpy(copy, s, n);
    copy[n] = '\0';
    struct json_value *v = new_value(ps, JSON_NUMBER);
    if (v != NULL) {
        v->number = strtod(copy, NULL);
        if (integral) {
            errno = 0;
            long long i = strtoll(copy, NULL, 10);
            if (errno == 0) {
                v->is_integer = 1;
                v->integer = i;
            }
        }
    }
    free(copy);
    ps->p = q;
    return v;
}

/* ---- structure ----------------------------------------------------------------- */

static int add_item(struct parser *ps, struct json_value *v, struct json_value *item, char *key)
{
    /* The capacity starts at 4 and doubles, so it is full at 0 and at powers of two from 4. */
    int full = v->count == 0 || (v->count >= 4 && (v->count & (v->count - 1)) == 0);
    if (full) {
        size_t cap = v->count ? v->count * 2 : 4;
        /* An array of pointers: the element size is the pointer's. */
        // NOLINTNEXTLINE(bugprone-sizeof-expression)
        struct json_value **items = realloc(v->items, cap * sizeof(*items));
        if (items == NULL)
            goto nomem;
        v->items = items;
        if (v->type == JSON_OBJECT) {
            char **keys = realloc(v->keys, cap * sizeof(*keys));
            if (keys == NULL)
                goto nomem;
            v->keys = keys;
        }
    }
    v->items[v->count] = item;
    if (v->type == JSON_OBJECT)
        v->keys[v->count] = key;
    v->count++;
    return 0;
nomem:
    fail(ps, "out of memory");
    return -1;
}

static struct json_value *parse_container(struct parser *ps, int object)
{
    if (++ps->depth > JSON_READ_MAX_DEPTH) {
        fail(ps, "nesting too deep");
        return NULL;
    }
    struct json_value *v = new_value(ps, object ? JSON_OBJECT : JSON_ARRAY);
    if (v == NULL)
        return NULL;
    unsigned char close = object ? '}' : ']';
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
        ps->depth--;
        return v;
    }
    for (;;) {
        char *key = NULL;
        skip_ws(ps);
        if (object) {
            struct sbuf kb;
            if (ps->p >= ps->end || *ps->p != '"') {
                fail(ps, "expected a member name");
                goto bad;
            }
            if (parse_string(ps, &kb) != 0)
                goto bad;
            key = kb.s;
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':') {
                free(key);
                fail(ps, "expected ':'");
                goto bad;
            }
            ps->p++;
        }
        struct json_value *item = parse_value(ps);
        if (item == NULL) {
            free(key);
            goto bad;
        }
        if (add_item(ps, v, item, key) != 0) {
            free(key);
            json_value_free(item);
            goto bad;
        }
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == close) {
            ps->p++;
            ps->depth--;
            return v;
        }
        fail(ps, object ? "expected ',' or '}'" : "expected ',' or ']'");
        goto bad;
    }
bad:
    json_value_free(v);
    return NULL;
}

static int literal(struct parser *ps, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0)
        return 0;
    ps->p += n;
    return 1;
}

static struct json_value *parse_value(struct parser *ps)
{
    skip_ws(ps);
    if (ps->p >= ps->end) {
        fail(ps, "unexpected end of input");
        return NULL;
    }
    struct json_value *v;
    switch (*ps->p) {
    case '{':
        return parse_container(ps, 1);
    case '[':
        return parse_container(ps, 0);
    case '"': {
        struct sbuf sb;
        if (parse_string(ps, &sb) != 0)
            return NULL;
        v = new_value(ps, JSON_STRING);
        if (v == NULL) {
            free(sb.s);
            return NULL;
        }
        v->string = sb.s;
        v->len = sb.len;
        return v;
    }
    case 't':
    case 'f': {
        int truth = literal(ps, "true");
        if (truth || literal(ps, "false")) {
            v = new_value(ps, JSON_BOOL);
            if (v != NULL)
                v->boolean = truth;
            return v;
        }
        break;
    }
    case 'n':
        if (literal(ps, "null"))
            return new_value(ps, JSON_NULL);
        break;
    default:
        if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9'))
            return parse_number(ps);
        break;
    }
    fail(ps, "unexpected character");
    return NULL;
}

struct json_value *json_parse(const char *text, size_t len, char *err, size_t errlen)
{
    struct parser ps = {0};
    ps.start = ps.p = (const unsigned char *)text;
    ps.end = ps.start + len;
    ps.err = err;
    ps.errlen = errlen;
    if (len > JSON_READ_MAX_SIZE) {
        snprintf(err, errlen, "JSON: input of %zu bytes is over the limit of %u", len,
                 JSON_READ_MAX_SIZE);
        return NULL;
    }
    struct json_value *v = parse_value(&ps);
    if (v == NULL)
        return NULL;
    skip_ws(&ps);
    if (ps.p != ps.end) {
        fail(&ps, "trailing data after the value");
        json_value_free(v);
        return NULL;
    }
    return v;
}

void json_value_free(struct json_value *v)
{
    if (v == NULL)
        return;
    for (size_t i = 0; i < v->count; i++) {
        json_value_free(v->items[i]);
        if (v->keys != NULL)
            free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    free(v->string);
    free(v);
}

const struct json_value *json_get(const struct json_value *v, const char *key)
{
    if (v == NULL || v->type != JSON_OBJECT)
        return NULL;
    for (size_t i = 0; i < v->count; i++) {
        if (strcmp(v->keys[i], key) == 0)
            return v->items[i];
    }
    return NULL;
}

const char *json_get_string(const struct json_value *v, const char *key)
{
    const struct json_value *m = json_get(v, key);
    return m != NULL && m->type == JSON_STRING ? m->string : NULL;
}

int json_get_int(const struct json_value *v, const char *key, long long *out)
{
    const struct json_value *m = json_get(v, key);
    if (m == NULL || m->type != JSON_NUMBER || !m->is_integer)
        return -1;
    *out = m->integer;
    return 0;
}
