/*
 * Unit tests of mailpoolctl's JSON reader (client/json_read.c): valid
 * documents, malformed input, the depth, size and node limits, and a
 * round trip of arbitrary bytes through the daemon's writer.
 */
#include <event2/buffer.h>
#include <limits.h>

#include "check.h"
#include "json.h"
#include "json_read.h"

static struct json_value *parse(const char *s)
{
    char err[256];
    return json_parse(s, strlen(s), err, sizeof(err));
}

static void test_valid(void)
{
    check_case = "status answer";
    struct json_value *v = parse(" {\"ok\":true,\"version\":\"0.1.0\",\"uptime\":12,\"idle\":null,"
                                 "\"list\":[1,-2.5e3,\"x\",false,[],{}]} \r\n");
    CHECK(v != NULL && v->type == JSON_OBJECT && v->count == 5);
    const struct json_value *ok = json_get(v, "ok");
    CHECK(ok != NULL && ok->type == JSON_BOOL && ok->boolean == 1);
    CHECK_STR(json_get_string(v, "version"), "0.1.0");
    long long n = 0;
    CHECK(json_get_int(v, "uptime", &n) == 0 && n == 12);
    CHECK(json_get_int(v, "idle", &n) == -1);
    CHECK(json_get(v, "absent") == NULL);
    CHECK(json_get_string(v, "uptime") == NULL);
    const struct json_value *l = json_get(v, "list");
    CHECK(l != NULL && l->type == JSON_ARRAY && l->count == 6);
    if (l != NULL && l->count == 6) {
        CHECK(l->items[0]->is_integer && l->items[0]->integer == 1);
        CHECK(!l->items[1]->is_integer && l->items[1]->number == -2500.0);
        CHECK_STR(l->items[2]->string, "x");
        CHECK(l->items[3]->type == JSON_BOOL && l->items[3]->boolean == 0);
        CHECK(l->items[4]->type == JSON_ARRAY && l->items[4]->count == 0);
        CHECK(l->items[5]->type == JSON_OBJECT && l->items[5]->count == 0);
    }
    json_value_free(v);

    check_case = "escapes";
    v = parse("\"a\\\"b\\\\c\\/d\\n\\u00e9\\u20ac\\ud83d\\ude00\\u0000z\"");
    CHECK(v != NULL && v->type == JSON_STRING);
    if (v != NULL) {
        static const char want[] = "a\"b\\c/d\n\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\0z";
        CHECK(v->len == sizeof(want) - 1 && memcmp(v->string, want, v->len) == 0);
    }
    json_value_free(v);

    check_case = "scalars at top";
    const char *scalars[] = {"0",
                             "-0",
                             "1e5",
                             "0.5",
                             "true",
                             "false",
                             "null",
                             "\"\"",
                             "9223372036854775807",
                             "-9223372036854775808"};
    for (size_t i = 0; i < sizeof(scalars) / sizeof(scalars[0]); i++) {
        v = parse(scalars[i]);
        CHECK(v != NULL);
        json_value_free(v);
    }
    check_case = "integer overflow is a double";
    v = parse("18446744073709551616");
    CHECK(v != NULL && v->type == JSON_NUMBER && !v->is_integer && v->number > 1e19);
    json_value_free(v);

    check_case = "raw UTF-8 kept";
    v = parse("\"caf\xc3\xa9\"");
    CHECK(v != NULL && v->len == 5);
    json_value_free(v);

    check_case = "duplicate keys: first wins";
    v = parse("{\"a\":1,\"a\":2}");
    CHECK(json_get_int(v, "a", &n) == 0 && n == 1);
    json_value_free(v);

    check_case = "many members";
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_printf(b, "[");
    for (int i = 0; i < 1000; i++)
        evbuffer_add_printf(b, "%s{\"k%d\":%d}", i ? "," : "", i, i);
    evbuffer_add_printf(b, "]");
    size_t blen = evbuffer_get_length(b);
    char err[256];
    v = json_parse((const char *)evbuffer_pullup(b, -1), blen, err, sizeof(err));
    CHECK(v != NULL && v->count == 1000);
    if (v != NULL && v->count == 1000) {
        char key[16];
        snprintf(key, sizeof(key), "k%d", 999);
        CHECK(json_get_int(v->items[999], key, &n) == 0 && n == 999);
    }
    json_value_free(v);
    evbuffer_free(b);

    check_case = "not NUL-terminated";
    char buf[3] = {'1', '2', '3'};
    v = json_parse(buf, 2, err, sizeof(err));
    CHECK(v != NULL && v->is_integer && v->integer == 12);
    json_value_free(v);
}

static void test_malformed(void)
{
    static const char *const bad[] = {
        "",
        "   ",
        "{",
        "}",
        "[1,]",
        "[,1]",
        "{\"a\":1,}",
        "{\"a\" 1}",
        "{a:1}",
        "{'a':1}",
        "[1 2]",
        "\"unterminated",
        "\"bad escape \\x\"",
        "\"\\u12\"",
        "\"\\uZZZZ\"",
        "\"\\ud83d\"",        /* lone high surrogate */
        "\"\\ud83dx\"",       /* high surrogate, no low */
        "\"\\ud83d\\u0041\"", /* high surrogate, then not a low one */
        "\"\\ude00\"",        /* lone low surrogate */
        "\"tab\there\"",      /* raw control character */
        "\"nl\nhere\"",
        "\"\xff\"", /* invalid UTF-8 */
        "\"\xc0\x80\"",
        "\"\xed\xa0\x80\"",
        "\"\xe2\x82\"",
        "01",
        "-",
        "1.",
        ".5",
        "1e",
        "1e+",
        "+1",
        "NaN",
        "Infinity",
        "tru",
        "nul",
        "truex",
        "1 2",
        "{} x",
        "[] []",
        "/* c */ 1",
        "\"a\"\"b\"",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        check_case = bad[i];
        char err[256] = "";
        struct json_value *v = json_parse(bad[i], strlen(bad[i]), err, sizeof(err));
        CHECK(v == NULL);
        CHECK(strncmp(err, "JSON: ", 6) == 0 && strstr(err, "offset") != NULL);
        json_value_free(v);
    }
    check_case = "embedded NUL";
    char err[256];
    CHECK(json_parse("[1]\0", 4, err, sizeof(err)) == NULL);
    CHECK(json_parse("\"a\0b\"", 5, err, sizeof(err)) == NULL);
}

/* A string of n opening brackets followed by n closing ones. */
static char *nested(size_t n, char open, char close)
{
    char *s = malloc(2 * n + 1);
    if (s == NULL)
        abort();
    memset(s, open, n);
    memset(s + n, close, n);
    s[2 * n] = '\0';
    return s;
}

static void test_limits(void)
{
    char err[256];
    check_case = "max depth";
    char *s = nested(JSON_READ_MAX_DEPTH, '[', ']');
    struct json_value *v = parse(s);
    CHECK(v != NULL);
    json_value_free(v);
    free(s);

    check_case = "one too deep";
    s = nested(JSON_READ_MAX_DEPTH + 1, '[', ']');
    CHECK(json_parse(s, strlen(s), err, sizeof(err)) == NULL);
    CHECK(strstr(err, "deep") != NULL);
    free(s);

    check_case = "a million brackets (no stack overflow)";
    s = nested(1000000, '[', ']');
    CHECK(json_parse(s, strlen(s), err, sizeof(err)) == NULL);
    free(s);
    s = malloc(1000001);
    memset(s, '[', 1000000);
    s[1000000] = '\0';
    CHECK(json_parse(s, strlen(s), err, sizeof(err)) == NULL);
    free(s);

    check_case = "deep objects";
    struct evbuffer *b = evbuffer_new();
    for (int i = 0; i < 1000; i++)
        evbuffer_add_printf(b, "{\"a\":");
    evbuffer_add_printf(b, "1");
    for (int i = 0; i < 1000; i++)
        evbuffer_add_printf(b, "}");
    size_t len = evbuffer_get_length(b);
    CHECK(json_parse((const char *)evbuffer_pullup(b, -1), len, err, sizeof(err)) == NULL);
    evbuffer_free(b);

    check_case = "over the size limit";
    size_t big = JSON_READ_MAX_SIZE + 1;
    s = malloc(big);
    memset(s, ' ', big);
    s[0] = '1';
    CHECK(json_parse(s, big, err, sizeof(err)) == NULL);
    CHECK(strstr(err, "limit") != NULL);
    free(s);

    check_case = "too many values";
    b = evbuffer_new();
    evbuffer_add(b, "[", 1);
    for (int i = 0; i < JSON_READ_MAX_NODES; i++)
        evbuffer_add(b, "0,", 2);
    evbuffer_add(b, "0]", 2);
    len = evbuffer_get_length(b);
    CHECK(len <= JSON_READ_MAX_SIZE);
    CHECK(json_parse((const char *)evbuffer_pullup(b, -1), len, err, sizeof(err)) == NULL);
    CHECK(strstr(err, "too many") != NULL);
    evbuffer_free(b);

    check_case = "truncated documents";
    const char *doc = "{\"ok\":true,\"relays\":[{\"name\":\"up\",\"connections\":[{\"idle\":null,"
                      "\"tls\":\"TLSv1.3\",\"n\":-1.5e2}]}]}";
    for (size_t i = 0; i < strlen(doc); i++)
        CHECK(json_parse(doc, i, err, sizeof(err)) == NULL);
    v = parse(doc);
    CHECK(v != NULL);
    json_value_free(v);
}

/*
 * What the writer should make of arbitrary bytes: well-formed UTF-8 kept,
 * every other byte replaced by U+FFFD.  Checked by decoding with the reader.
 */
static void test_roundtrip(void)
{
    for (int round = 0; round < 2000; round++) {
        check_case = "random bytes";
        unsigned char in[64];
        size_t n = unit_rand() % sizeof(in);
        for (size_t i = 0; i < n; i++) {
            unsigned r = unit_rand();
            /* Bias towards the interesting bytes: controls, quotes, UTF-8 leads. */
            static const unsigned char pick[] = {0,    '"',  '\\', 0x1f, 0x7f, 0x80, 0xbf,
                                                 0xc2, 0xe2, 0xed, 0xf0, 0xf4, 0xff, 'a'};
            in[i] = r % 3 ? (unsigned char)(r >> 8) : pick[(r >> 8) % sizeof(pick)];
        }
        struct evbuffer *b = evbuffer_new();
        struct json_writer w;
        json_writer_init(&w, b);
        json_array_begin(&w);
        json_string_len(&w, (const char *)in, n);
        json_array_end(&w);
        CHECK(json_writer_finish(&w) == 0);
        size_t len = evbuffer_get_length(b);
        const char *text = (const char *)evbuffer_pullup(b, -1);
        char err[256];
        struct json_value *v = json_parse(text, len, err, sizeof(err));
        CHECK(v != NULL && v->type == JSON_ARRAY && v->count == 1);
        if (v != NULL && v->count == 1) {
            /* Rebuild the expectation with the writer's own rule, byte by byte. */
            const struct json_value *s = v->items[0];
            size_t o = 0;
            int same = s->type == JSON_STRING;
            for (size_t i = 0; same && i < n;) {
                /* The sequence length the lead byte announces; kept verbatim if valid. */
                unsigned char lead = in[i];
                size_t k = 0;
                if (lead < 0x80)
                    k = 1;
                else if (lead >= 0xc2 && lead <= 0xdf)
                    k = 2;
                else if (lead >= 0xe0 && lead <= 0xef)
                    k = 3;
                else if (lead >= 0xf0 && lead <= 0xf4)
                    k = 4;
                if (k > 0 && (i + k > n || o + k > s->len || memcmp(in + i, s->string + o, k) != 0))
                    k = 0;
                if (k > 0) {
                    i += k;
                    o += k;
                } else if (o + 3 <= s->len && memcmp(s->string + o, "\xef\xbf\xbd", 3) == 0) {
                    i++;
                    o += 3;
                } else {
                    same = 0;
                }
            }
            CHECK(same && o == s->len);
        }
        json_value_free(v);
        evbuffer_free(b);
    }
}

static const struct unit_group groups[] = {
    {"valid", test_valid},
    {"malformed", test_malformed},
    {"limits", test_limits},
    {"roundtrip", test_roundtrip},
};

int main(int argc, char **argv)
{
    return unit_main(argc, argv, groups, sizeof(groups) / sizeof(groups[0]));
}
