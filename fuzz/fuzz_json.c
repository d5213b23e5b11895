/*
 * Fuzz harness for mailpoolctl's JSON reader (RFC 8259, RFC 3629): an
 * accepted document is a well-formed tree within the limits, its strings
 * are valid UTF-8, and written back out it parses to the same tree.
 */
#include <math.h>
#include <string.h>

#include "fuzz.h"
#include "json_read.h"

struct out {
    char *p;
    size_t len, cap;
};

static void put(struct out *o, const void *s, size_t n)
{
    if (o->len + n + 1 > o->cap) {
        o->cap = (o->len + n + 1) * 2;
        o->p = realloc(o->p, o->cap);
        FUZZ_ASSERT(o->p != NULL);
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

/* Strict UTF-8: no overlong forms, no surrogates, nothing past U+10FFFF. */
static int utf8_valid(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned c = s[i], lo = 0x80, hi = 0xbf;
        size_t more;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf)
            more = 1;
        else if (c >= 0xe0 && c <= 0xef)
            more = 2, lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
        else if (c >= 0xf0 && c <= 0xf4)
            more = 3, lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
        else
            return 0;
        if (n - i <= more || s[i + 1] < lo || s[i + 1] > hi)
            return 0;
        for (size_t k = 2; k <= more; k++)
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
        i += more + 1;
    }
    return 1;
}

static void put_string(struct out *o, const char *s, size_t n)
{
    put(o, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == '"' || c == '\\') {
            char esc[8];
            snprintf(esc, sizeof(esc), "\\u%04x", c);
            put(o, esc, 6);
        } else {
            put(o, s + i, 1);
        }
    }
    put(o, "\"", 1);
}

static size_t walk(const struct json_value *v, int depth, struct out *o)
{
    size_t nodes = 1;
    char num[64];

    FUZZ_ASSERT(depth <= JSON_READ_MAX_DEPTH + 1);
    switch (v->type) {
    case JSON_NULL:
        put(o, "null", 4);
        break;
    case JSON_BOOL:
        FUZZ_ASSERT(v->boolean == 0 || v->boolean == 1);
        put(o, v->boolean ? "true" : "false", v->boolean ? 4 : 5);
        break;
    case JSON_NUMBER:
        if (v->is_integer)
            FUZZ_ASSERT((double)v->integer == v->number || fabs(v->number) >= 9007199254740992.0);
        if (isinf(v->number))
            put(o, v->number > 0 ? "1e999" : "-1e999", v->number > 0 ? 5 : 6);
        else if (v->is_integer)
            put(o, num, (size_t)snprintf(num, sizeof(num), "%lld", v->integer));
        else
            put(o, num, (size_t)snprintf(num, sizeof(num), "%.17g", v->number));
        FUZZ_ASSERT(!isnan(v->number));
        break;
    case JSON_STRING:
        FUZZ_ASSERT(v->string != NULL && v->string[v->len] == '\0');
        FUZZ_ASSERT(utf8_valid((const unsigned char *)v->string, v->len));
        put_string(o, v->string, v->len);
        break;
    case JSON_ARRAY:
    case JSON_OBJECT:
        FUZZ_ASSERT(v->count == 0 || v->items != NULL);
        FUZZ_ASSERT(v->count == 0 || (v->type == JSON_OBJECT) == (v->keys != NULL));
        put(o, v->type == JSON_ARRAY ? "[" : "{", 1);
        for (size_t i = 0; i < v->count; i++) {
            if (i > 0)
                put(o, ",", 1);
            if (v->type == JSON_OBJECT) {
                FUZZ_ASSERT(utf8_valid((const unsigned char *)v->keys[i], strlen(v->keys[i])));
                put_string(o, v->keys[i], strlen(v->keys[i]));
                put(o, ":", 1);
                /* json_get() finds the first member of that name */
                const struct json_value *g = json_get(v, v->keys[i]);
                size_t first = 0;
                while (strcmp(v->keys[first], v->keys[i]) != 0)
                    first++;
                FUZZ_ASSERT(g == v->items[first]);
                long long n;
                if (json_get_int(v, v->keys[i], &n) == 0)
                    FUZZ_ASSERT(g->type == JSON_NUMBER && g->is_integer && g->integer == n);
                FUZZ_ASSERT((json_get_string(v, v->keys[i]) != NULL) == (g->type == JSON_STRING));
            }
            nodes += walk(v->items[i], depth + 1, o);
        }
        put(o, v->type == JSON_ARRAY ? "]" : "}", 1);
        break;
    default:
        FUZZ_ASSERT(!"unknown type");
    }
    return nodes;
}

static void same(const struct json_value *a, const struct json_value *b)
{
    FUZZ_ASSERT(a->type == b->type && a->count == b->count);
    switch (a->type) {
    case JSON_BOOL:
        FUZZ_ASSERT(a->boolean == b->boolean);
        break;
    case JSON_NUMBER:
        FUZZ_ASSERT(a->number == b->number);
        if (a->is_integer)
            FUZZ_ASSERT(b->is_integer && a->integer == b->integer);
        break;
    case JSON_STRING:
        FUZZ_ASSERT(a->len == b->len && memcmp(a->string, b->string, a->len) == 0);
        break;
    default:
        for (size_t i = 0; i < a->count; i++) {
            if (a->type == JSON_OBJECT)
                FUZZ_ASSERT(strcmp(a->keys[i], b->keys[i]) == 0);
            same(a->items[i], b->items[i]);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[128] = "";
    struct json_value *v = json_parse((const char *)data, size, err, sizeof(err));
    struct json_value *again;
    struct out o = {0};

    if (v == NULL) {
        FUZZ_ASSERT(strncmp(err, "JSON: ", 6) == 0);
        return 0;
    }
    FUZZ_ASSERT(walk(v, 1, &o) <= JSON_READ_MAX_NODES);
    again = json_parse(o.p, o.len, err, sizeof(err));
    if (again == NULL) {
        o.p[o.len] = '\0';
        fprintf(stderr, "rewritten document refused (%s): %s\n", err, o.p);
    }
    FUZZ_ASSERT(again != NULL);
    same(v, again);
    json_value_free(again);
    json_value_free(v);
    free(o.p);
    return 0;
}
