/*
 * The control socket's request line (a line of printable ASCII, words
 * separated by spaces and tabs): split in place.  Pure, so the fuzz harness
 * runs the daemon's own code.
 */
#include "control_parse.h"

#include "proto.h"

static int printable(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char b = (unsigned char)s[i];
        if ((b < 0x20 && b != '\t') || b >= 0x7f)
            return 0;
    }
    return 1;
}

/* Split line (NUL-terminated, printable) in place on spaces and tabs. Returns -1: too many words.
 */
static int request_split(char *line, struct control_request *req)
{
    char *p = line;

    req->argc = 0;
    for (;;) {
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '\0')
            return 0;
        if (req->argc == CONTROL_MAX_WORDS)
            return -1;
        req->argv[req->argc++] = p;
        while (*p != '\0' && *p != ' ' && *p != '\t')
            p++;
        if (*p != '\0')
            *p++ = '\0';
    }
}

enum control_parse_status control_request_parse(char *line, size_t len, struct control_request *req)
{
    req->argc = 0;
    if (len > 0 && line[len - 1] == '\r')
        len--;
    line[len] = '\0';
    if (len > MAILPOOL_MAX_CONTROL_LINE)
        return CONTROL_REQ_TOO_LONG;
    if (!printable(line, len))
        return CONTROL_REQ_NOT_PRINT;
    if (request_split(line, req) != 0)
        return CONTROL_REQ_TOO_MANY;
    return req->argc == 0 ? CONTROL_REQ_EMPTY : CONTROL_REQ_OK;
}
