/*
 * Unit tests of the control socket's JSON writer (daemon/json.c): string
 * escaping of quotes, backslashes, control bytes and invalid UTF-8, the
 * placing of commas and colons, and refusal of misuse.
 */
#include <event2/buffer.h>
#include <limits.h>

#include "check.h"
#include "json.h"

/* The writer's output so far, as a NUL-terminated copy (caller frees). */
static char *text_of(struct evbuffer *b)
{
    size_t n = evbuffer_get_length(b);
    char *s = malloc(n + 1);
    if (s == NULL)
        abort();
    evbuffer_copyout(b, s, n);
    s[n] = '\0';
    return s;
}

/* json_string_len() of the given bytes, as one top-level value. */
static char *string_json(const char *in, size_t len)
{
    struct evbuffer *b = evbuffer_new();
    struct json_writer w;
    json_writer_init(&w, b);
    json_string_len(&w, in, len);
    CHECK(json_writer_finish(&w) == 0);
    char *s = text_of(b);
    evbuffer_free(b);
    return s;
}

static void expect_string(const char *name, const char *in, size_t len, const char *want)
{
    check_case = name;
    char *got = string_json(in, len);
    CHECK_STR(got, want);
    for (const char *p = got; *p; p++)
        CHECK((unsigned char)*p >= 0x20 && (unsigned char)*p < 0x7f); /* pure printable ASCII */
    free(got);
}

#define STR(name, lit, want) expect_string(name, lit, sizeof(lit) - 1, want)

static void test_escape(void)
{
    STR("plain", "hello", "\"hello\"");
    STR("empty", "", "\"\"");
    STR("quote", "a\"b", "\"a\\\"b\"");
    STR("backslash", "a\\b", "\"a\\\\b\"");
    STR("both", "\\\"", "\"\\\\\\\"\"");
    STR("short escapes", "\n\r\t\b\f", "\"\\n\\r\\t\\b\\f\"");
    STR("nul", "a\0b", "\"a\\u0000b\"");
    STR("esc", "\x1b[2J", "\"\\u001b[2J\"");
    STR("del", "\x7f", "\"\\u007f\"");
    STR("slash kept", "a/b", "\"a/b\"");
    STR("format chars", "%s%n", "\"%s%n\"");

    /* Every C0 control byte gets an escape of its own. */
    for (int b = 0; b < 0x20; b++) {
        char in[1] = {(char)b};
        char want[16];
        const char *shortform = NULL;
        switch (b) {
        case '\n':
            shortform = "\"\\n\"";
            break;
        case '\r':
            shortform = "\"\\r\"";
            break;
        case '\t':
            shortform = "\"\\t\"";
            break;
        case '\b':
            shortform = "\"\\b\"";
            break;
        case '\f':
            shortform = "\"\\f\"";
            break;
        }
        if (shortform != NULL)
            snprintf(want, sizeof(want), "%s", shortform);
        else
            snprintf(want, sizeof(want), "\"\\u%04x\"", b);
        expect_string("control byte", in, 1, want);
    }
    /* NULL is null, not a crash or an empty string. */
    check_case = "null string";
    struct evbuffer *b = evbuffer_new();
    struct json_writer w;
    json_writer_init(&w, b);
    json_string(&w, NULL);
    char *got = text_of(b);
    CHECK_STR(got, "null");
    free(got);
    evbuffer_free(b);
}

static void test_utf8(void)
{
    STR("2-byte", "caf\xc3\xa9", "\"caf\\u00e9\"");
    STR("3-byte", "\xe2\x82\xac", "\"\\u20ac\"");
    STR("4-byte (surrogate pair)", "\xf0\x9f\x98\x80", "\"\\ud83d\\ude00\"");
    STR("max code point", "\xf4\x8f\xbf\xbf", "\"\\udbff\\udfff\"");
    STR("C1 control", "\xc2\x9b", "\"\\u009b\"");
    STR("line separator", "\xe2\x80\xa8", "\"\\u2028\"");
    /* Invalid: one U+FFFD per offending byte, the rest kept. */
    STR("lone continuation", "a\x80z", "\"a\\ufffdz\"");
    STR("latin-1", "caf\xe9", "\"caf\\ufffd\"");
    STR("overlong NUL", "\xc0\x80", "\"\\ufffd\\ufffd\"");
    STR("overlong slash", "\xc1\xaf", "\"\\ufffd\\ufffd\"");
    STR("overlong 3-byte", "\xe0\x80\xaf", "\"\\ufffd\\ufffd\\ufffd\"");
    STR("overlong 4-byte", "\xf0\x80\x80\xaf", "\"\\ufffd\\ufffd\\ufffd\\ufffd\"");
    STR("surrogate", "\xed\xa0\x80", "\"\\ufffd\\ufffd\\ufffd\"");
    STR("past U+10FFFF", "\xf4\x90\x80\x80", "\"\\ufffd\\ufffd\\ufffd\\ufffd\"");
    STR("F5 lead", "\xf5\x80\x80\x80", "\"\\ufffd\\ufffd\\ufffd\\ufffd\"");
    STR("FF", "\xff\xfe", "\"\\ufffd\\ufffd\"");
    STR("truncated at end", "ab\xe2\x82", "\"ab\\ufffd\\ufffd\"");
    STR("truncated then ASCII", "\xe2\x82z", "\"\\ufffd\\ufffdz\"");
    STR("truncated 4-byte then valid", "\xf0\x9f\xc3\xa9", "\"\\ufffd\\ufffd\\u00e9\"");
    STR("quote after invalid", "\xff\"", "\"\\ufffd\\\"\"");

    /* All 256 byte values: always valid ASCII JSON, never longer than 6 bytes per input byte. */
    char all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (char)i;
    check_case = "all bytes";
    char *got = string_json(all, sizeof(all));
    CHECK(strlen(got) <= 2 + 6 * sizeof(all));
    free(got);
}

static void test_structure(void)
{
    check_case = "nested";
    struct evbuffer *b = evbuffer_new();
    struct json_writer w;
    json_writer_init(&w, b);
    json_object_begin(&w);
    json_kv_bool(&w, "ok", 1);
    json_kv_string(&w, "k\"ey", "v");
    json_key(&w, "list");
    json_array_begin(&w);
    json_int(&w, -1);
    json_uint(&w, 2);
    json_null(&w);
    json_array_begin(&w);
    json_array_end(&w);
    json_object_begin(&w);
    json_object_end(&w);
    json_object_begin(&w);
    json_kv_int(&w, "a", LLONG_MIN);
    json_kv_uint(&w, "b", ULLONG_MAX);
    json_kv_bool(&w, "c", 0);
    json_object_end(&w);
    json_array_end(&w);
    json_kv_string(&w, "nil", NULL);
    json_object_end(&w);
    CHECK(json_writer_finish(&w) == 0);
    char *got = text_of(b);
    CHECK_STR(got, "{\"ok\":true,\"k\\\"ey\":\"v\",\"list\":[-1,2,null,[],{},{\"a\":"
                   "-9223372036854775808,\"b\":18446744073709551615,\"c\":false}],\"nil\":null}");
    free(got);
    evbuffer_free(b);

    /* Many items: the comma logic must not wrap around. */
    check_case = "300 items";
    b = evbuffer_new();
    json_writer_init(&w, b);
    json_array_begin(&w);
    for (int i = 0; i < 300; i++)
        json_int(&w, 7);
    json_array_end(&w);
    CHECK(json_writer_finish(&w) == 0);
    got = text_of(b);
    size_t commas = 0;
    for (const char *p = got; *p; p++)
        commas += *p == ',';
    CHECK(commas == 299);
    CHECK(strstr(got, ",,") == NULL && strstr(got, "77") == NULL);
    free(got);
    evbuffer_free(b);
}

/* Each misuse must set the error and make json_writer_finish() fail. */
static void test_misuse(void)
{
    struct evbuffer *b = evbuffer_new();
    struct json_writer w;

#define MISUSE(name, ...)                                                                          \
    do {                                                                                           \
        check_case = name;                                                                         \
        evbuffer_drain(b, evbuffer_get_length(b));                                                 \
        json_writer_init(&w, b);                                                                   \
        __VA_ARGS__;                                                                               \
        CHECK(json_writer_finish(&w) != 0);                                                        \
    } while (0)

    MISUSE("nothing written", (void)0);
    MISUSE("value without key", json_object_begin(&w); json_int(&w, 1); json_object_end(&w));
    MISUSE("key without value", json_object_begin(&w); json_key(&w, "a"); json_object_end(&w));
    MISUSE("key in array", json_array_begin(&w); json_key(&w, "a"); json_array_end(&w));
    MISUSE("key at top", json_key(&w, "a"));
    MISUSE("NULL key", json_object_begin(&w); json_key(&w, NULL); json_int(&w, 1);
           json_object_end(&w));
    MISUSE("wrong end", json_object_begin(&w); json_array_end(&w));
    MISUSE("unclosed", json_array_begin(&w));
    MISUSE("end at top", json_object_end(&w));
    MISUSE("two top-level values", json_int(&w, 1); json_int(&w, 2));
    MISUSE("too deep", for (int i = 0; i <= JSON_WRITER_MAX_DEPTH; i++) json_array_begin(&w);
           for (int i = 0; i <= JSON_WRITER_MAX_DEPTH; i++) json_array_end(&w));

    /* The deepest allowed nesting works. */
    check_case = "max depth";
    evbuffer_drain(b, evbuffer_get_length(b));
    json_writer_init(&w, b);
    for (int i = 0; i < JSON_WRITER_MAX_DEPTH; i++)
        json_array_begin(&w);
    for (int i = 0; i < JSON_WRITER_MAX_DEPTH; i++)
        json_array_end(&w);
    CHECK(json_writer_finish(&w) == 0);
    CHECK(evbuffer_get_length(b) == 2 * JSON_WRITER_MAX_DEPTH);
    evbuffer_free(b);
}

static const struct unit_group groups[] = {
    {"escape", test_escape},
    {"utf8", test_utf8},
    {"structure", test_structure},
    {"misuse", test_misuse},
};

int main(int argc, char **argv)
{
    return unit_main(argc, argv, groups, sizeof(groups) / sizeof(groups[0]));
}
