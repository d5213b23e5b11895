/*
 * The control protocol's request line: checked and split into words, with
 * no I/O, so the parser can be tested and fuzzed on its own.
 */
#ifndef MAILPOOL_CONTROL_PARSE_H
#define MAILPOOL_CONTROL_PARSE_H

#include <stddef.h>

/* Words in one request line, the command name included. */
#define CONTROL_MAX_WORDS 16

struct control_request {
    int argc; /* argv[0] is the command name */
    char *argv[CONTROL_MAX_WORDS];
};

enum control_parse_status {
    CONTROL_REQ_OK = 0,
    CONTROL_REQ_EMPTY,     /* only spaces and tabs: answered, connection kept */
    CONTROL_REQ_TOO_MANY,  /* over CONTROL_MAX_WORDS words: answered, connection kept */
    CONTROL_REQ_TOO_LONG,  /* over MAILPOOL_MAX_CONTROL_LINE bytes: the connection ends */
    CONTROL_REQ_NOT_PRINT, /* a control byte (other than tab) or a non-ASCII byte: it ends */
};

/*
 * Parse one request line in place: line[0..len) is the line without its LF
 * (one final CR is dropped); line must have room for len + 1 bytes, as the
 * words are NUL-terminated in it and req->argv points into it.  Returns
 * CONTROL_REQ_OK with req filled in, or another enum control_parse_status
 * (req->argc is then 0 for TOO_LONG and NOT_PRINT).
 */
enum control_parse_status control_request_parse(char *line, size_t len,
                                                struct control_request *req);

#endif
