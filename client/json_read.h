/*
 * A small, strict JSON (RFC 8259) reader for mailpoolctl: text in, a tree
 * out, no I/O.  Hard limits on input size, nesting depth and node count
 * keep hostile input from exhausting the stack or memory.
 */
#ifndef MAILPOOL_JSON_READ_H
#define MAILPOOL_JSON_READ_H

#include <stddef.h>

/* Largest input accepted, in bytes. */
#define JSON_READ_MAX_SIZE (4u * 1024 * 1024)
/* Deepest nesting of arrays and objects accepted. */
#define JSON_READ_MAX_DEPTH 64
/* Most values (of any kind, keys not counted) in one document. */
#define JSON_READ_MAX_NODES 200000

enum json_type { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT };

struct json_value {
    enum json_type type;
    int boolean;       /* JSON_BOOL */
    double number;     /* JSON_NUMBER */
    int is_integer;    /* JSON_NUMBER without fraction or exponent that fits a long long */
    long long integer; /* ... and its value */
    char *string;      /* JSON_STRING: decoded UTF-8, NUL-terminated (may hold NULs: see len) */
    size_t len;        /* JSON_STRING: bytes in string */
    size_t count;      /* JSON_ARRAY, JSON_OBJECT: items */
    struct json_value **items;
    char **keys; /* JSON_OBJECT: one decoded, NUL-terminated key per item */
};

/*
 * Parse exactly one JSON value (surrounding whitespace allowed) from text.
 * Strict RFC 8259: no trailing commas, comments, single quotes, NaN, lone
 * surrogates, raw control bytes or invalid UTF-8 in strings, no leading
 * zeros.  Returns the tree (free with json_value_free()), or NULL with a
 * message naming the byte offset in err: malformed input, input over
 * JSON_READ_MAX_SIZE, nesting over JSON_READ_MAX_DEPTH, more than
 * JSON_READ_MAX_NODES values, or out of memory.
 */
struct json_value *json_parse(const char *text, size_t len, char *err, size_t errlen);

/* Free a tree from json_parse().  NULL is fine. */
void json_value_free(struct json_value *v);

/* The value of the first member called key of an object; NULL if absent or v is no object. */
const struct json_value *json_get(const struct json_value *v, const char *key);

/* The member's string, or NULL when absent or not a string. */
const char *json_get_string(const struct json_value *v, const char *key);

/*
 * The member as an integer in *out: 0, or -1 when absent or not an integer
 * (null counts as absent).
 */
int json_get_int(const struct json_value *v, const char *key, long long *out);

#endif
