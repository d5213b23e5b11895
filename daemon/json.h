/*
 * A small streaming JSON (RFC 8259) writer onto an evbuffer, for the
 * control socket's one-line answers.  It places the commas and colons, so a
 * caller only says what comes next; strings are always escaped.
 */
#ifndef MAILPOOL_JSON_H
#define MAILPOOL_JSON_H

#include <stddef.h>

struct evbuffer;

/* Deepest nesting of objects and arrays the writer accepts. */
#define JSON_WRITER_MAX_DEPTH 32

struct json_writer {
    struct evbuffer *out;
    int depth;
    int error;    /* sticky: a misuse or a failed evbuffer append */
    int want_key; /* inside an object, the next item must be json_key() */
    /* Per level (0 = top): is it an object, and has it an item (a comma is due)? */
    unsigned char is_object[JSON_WRITER_MAX_DEPTH + 1];
    unsigned char has_item[JSON_WRITER_MAX_DEPTH + 1];
};

/* Start writing one JSON text at the end of out (not owned). */
void json_writer_init(struct json_writer *w, struct evbuffer *out);

/*
 * Structure.  Inside an object every value must follow a json_key().
 * Misuse (a value where a key is due, an end that does not match, nesting
 * deeper than JSON_WRITER_MAX_DEPTH) sets the sticky error and writes
 * nothing more.
 */
void json_object_begin(struct json_writer *w);
void json_object_end(struct json_writer *w);
void json_array_begin(struct json_writer *w);
void json_array_end(struct json_writer *w);
void json_key(struct json_writer *w, const char *key);

/*
 * Values.  Strings are escaped so the output is valid JSON in pure ASCII:
 * '"' and '\\' get a backslash; control bytes become \n, \r, \t, \b, \f
 * or \u00XX (DEL too); well-formed UTF-8 (RFC 3629) becomes \uXXXX escapes
 * (surrogate pairs past U+FFFF); every byte that is not part of a
 * well-formed sequence (stray continuation bytes, overlong forms,
 * surrogates, code points past U+10FFFF, truncated sequences) becomes
 * \ufffd, one per byte.  json_string(w, NULL) writes null.
 */
void json_string(struct json_writer *w, const char *s);
void json_string_len(struct json_writer *w, const char *s, size_t len);
void json_int(struct json_writer *w, long long v);
void json_uint(struct json_writer *w, unsigned long long v);
void json_bool(struct json_writer *w, int v);
void json_null(struct json_writer *w);

/* Shorthands for a key and its value. */
void json_kv_string(struct json_writer *w, const char *key, const char *s);
void json_kv_int(struct json_writer *w, const char *key, long long v);
void json_kv_uint(struct json_writer *w, const char *key, unsigned long long v);
void json_kv_bool(struct json_writer *w, const char *key, int v);

/*
 * Returns 0 when one complete JSON value was written (every object and
 * array closed) without error, -1 otherwise.
 */
int json_writer_finish(const struct json_writer *w);

#endif
