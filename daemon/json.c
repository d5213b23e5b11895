/*
 * Streaming JSON writer (RFC 8259) for the control socket.  Strings are
 * checked as UTF-8 (RFC 3629) and written as pure ASCII, so no byte a peer
 * or an upstream server chose can reach an operator's terminal unescaped.
 */
#include "json.h"
#include "utf8.h"

#include <event2/buffer.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

void json_writer_init(struct json_writer *w, struct evbuffer *out)
{
    memset(w, 0, sizeof(*w));
    w->out = out;
}

static void put(struct json_writer *w, const char *s, size_t len)
{
    if (!w->error && evbuffer_add(w->out, s, len) != 0)
        w->error = 1;
}

static void put_escaped(struct json_writer *w, const unsigned char *s, size_t len);

/*
 * Before any value: refuse a value where a key is due or a second top-level
 * value, and write the comma between array items.  In objects json_key()
 * wrote the comma.  Returns 0 when the value may be written.
 */
static int value_start(struct json_writer *w)
{
    if (w->error)
        return -1;
    if (w->want_key || (w->depth == 0 && w->has_item[0])) {
        w->error = 1;
        return -1;
    }
    if (w->depth > 0 && !w->is_object[w->depth] && w->has_item[w->depth])
        put(w, ",", 1);
    return 0;
}

static void value_done(struct json_writer *w)
{
    w->has_item[w->depth] = 1;
    w->want_key = w->is_object[w->depth];
}

static void begin(struct json_writer *w, int object)
{
    if (value_start(w) != 0)
        return;
    if (w->depth >= JSON_WRITER_MAX_DEPTH) {
        w->error = 1;
        return;
    }
    put(w, object ? "{" : "[", 1);
    w->depth++;
    w->is_object[w->depth] = (unsigned char)object;
    w->has_item[w->depth] = 0;
    w->want_key = object;
}

static void end(struct json_writer *w, int object)
{
    if (w->error)
        return;
    /* The wrong kind of bracket, or a key left without its value, is a misuse. */
    if (w->depth == 0 || w->is_object[w->depth] != object || (object && !w->want_key)) {
        w->error = 1;
        return;
    }
    put(w, object ? "}" : "]", 1);
    w->depth--;
    value_done(w);
}

void json_object_begin(struct json_writer *w)
{
    begin(w, 1);
}

void json_object_end(struct json_writer *w)
{
    end(w, 1);
}

void json_array_begin(struct json_writer *w)
{
    begin(w, 0);
}

void json_array_end(struct json_writer *w)
{
    end(w, 0);
}

void json_key(struct json_writer *w, const char *key)
{
    if (w->error)
        return;
    if (w->depth == 0 || !w->is_object[w->depth] || !w->want_key || key == NULL) {
        w->error = 1;
        return;
    }
    if (w->has_item[w->depth])
        put(w, ",", 1);
    put_escaped(w, (const unsigned char *)key, strlen(key));
    put(w, ":", 1);
    w->want_key = 0;
}

/* ---- strings ------------------------------------------------------------ */

static void put_u16(struct json_writer *w, unsigned v)
{
    char buf[8];
    int n = snprintf(buf, sizeof(buf), "\\u%04x", v & 0xffffu);
    put(w, buf, (size_t)n);
}

static void put_escaped(struct json_writer *w, const unsigned char *s, size_t len)
{
    put(w, "\"", 1);
    size_t run = 0; /* start of the current stretch of bytes copied as they are */
    size_t i = 0;
    while (i < len && !w->error) {
        unsigned char b = s[i];
        if (b >= 0x20 && b < 0x7f && b != '"' && b != '\\') {
            i++;
            continue;
        }
        put(w, (const char *)s + run, i - run);
        switch (b) {
        case '"':
            put(w, "\\\"", 2);
            break;
        case '\\':
            put(w, "\\\\", 2);
            break;
        case '\n':
            put(w, "\\n", 2);
            break;
        case '\r':
            put(w, "\\r", 2);
            break;
        case '\t':
            put(w, "\\t", 2);
            break;
        case '\b':
            put(w, "\\b", 2);
            break;
        case '\f':
            put(w, "\\f", 2);
            break;
        default:
            if (b < 0x80) {
                put_u16(w, b); /* other C0 controls and DEL */
            } else {
                uint32_t cp = 0;
                size_t n = utf8_decode(s + i, len - i, &cp);
                if (n == 0) {
                    put_u16(w, 0xfffd);
                } else {
                    if (cp >= 0x10000) {
                        cp -= 0x10000;
                        put_u16(w, 0xd800 | (cp >> 10));
                        put_u16(w, 0xdc00 | (cp & 0x3ff));
                    } else {
                        put_u16(w, cp);
                    }
                    i += n - 1;
                }
            }
            break;
        }
        i++;
        run = i;
    }
    put(w, (const char *)s + run, i - run);
    put(w, "\"", 1);
}

/* ---- values --------------------------------------------------------------- */

static void scalar(struct json_writer *w, const char *text, size_t len)
{
    if (value_start(w) != 0)
        return;
    put(w, text, len);
    value_done(w);
}

void json_string_len(struct json_writer *w, const char *s, size_t len)
{
    if (value_start(w) != 0)
        return;
    put_escaped(w, (const unsigned char *)s, len);
    value_done(w);
}

void json_string(struct json_writer *w, const char *s)
{
    if (s == NULL)
        json_null(w);
    else
        json_string_len(w, s, strlen(s));
}

void json_int(struct json_writer *w, long long v)
{
    char buf[32];
    int n = snprintf(buf, sizeof(buf), "%lld", v);
    scalar(w, buf, (size_t)n);
}

void json_uint(struct json_writer *w, unsigned long long v)
{
    char buf[32];
    int n = snprintf(buf, sizeof(buf), "%llu", v);
    scalar(w, buf, (size_t)n);
}

void json_bool(struct json_writer *w, int v)
{
    if (v)
        scalar(w, "true", 4);
    else
        scalar(w, "false", 5);
}

void json_null(struct json_writer *w)
{
    scalar(w, "null", 4);
}

void json_kv_string(struct json_writer *w, const char *key, const char *s)
{
    json_key(w, key);
    json_string(w, s);
}

void json_kv_int(struct json_writer *w, const char *key, long long v)
{
    json_key(w, key);
    json_int(w, v);
}

void json_kv_uint(struct json_writer *w, const char *key, unsigned long long v)
{
    json_key(w, key);
    json_uint(w, v);
}

void json_kv_bool(struct json_writer *w, const char *key, int v)
{
    json_key(w, key);
    json_bool(w, v);
}

int json_writer_finish(const struct json_writer *w)
{
    return w->error || w->depth != 0 || !w->has_item[0] ? -1 : 0;
}
