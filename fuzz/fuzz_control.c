/*
 * Fuzz harness for the control protocol's request line parser: each input
 * line is parsed as the daemon parses it, and the outcome must match the
 * protocol's rules (one final CR dropped; at most MAILPOOL_MAX_CONTROL_LINE
 * bytes; printable ASCII and tabs; at most CONTROL_MAX_WORDS words), with
 * the words exactly the line's space- and tab-separated tokens.
 */
#include <string.h>

#include "control_parse.h"
#include "fuzz.h"
#include "proto.h"

static int blank(unsigned char c)
{
    return c == ' ' || c == '\t';
}

static void check_line(const uint8_t *data, size_t len)
{
    char *line = malloc(len + 1);
    struct control_request req;
    enum control_parse_status st, want;
    size_t n = len > 0 && data[len - 1] == '\r' ? len - 1 : len;
    size_t words = 0;
    int printable = 1;

    FUZZ_ASSERT(line != NULL);
    memcpy(line, data, len);
    st = control_request_parse(line, len, &req);

    for (size_t i = 0; i < n; i++) {
        printable &= (data[i] >= 0x20 && data[i] < 0x7f) || data[i] == '\t';
        words += !blank(data[i]) && (i == 0 || blank(data[i - 1]));
    }
    want = n > MAILPOOL_MAX_CONTROL_LINE ? CONTROL_REQ_TOO_LONG
           : !printable                  ? CONTROL_REQ_NOT_PRINT
           : words > CONTROL_MAX_WORDS   ? CONTROL_REQ_TOO_MANY
           : words == 0                  ? CONTROL_REQ_EMPTY
                                         : CONTROL_REQ_OK;
    FUZZ_ASSERT(st == want);
    if (st == CONTROL_REQ_OK) {
        size_t i = 0;

        FUZZ_ASSERT(req.argc == (int)words);
        /* Word k is the k-th token of the line, in place. */
        for (int k = 0; k < req.argc; k++) {
            while (blank(data[i]))
                i++;
            size_t start = i;
            while (i < n && !blank(data[i]))
                i++;
            FUZZ_ASSERT(req.argv[k] == line + start);
            FUZZ_ASSERT(strlen(req.argv[k]) == i - start);
            FUZZ_ASSERT(memcmp(req.argv[k], data + start, i - start) == 0);
        }
    } else if (st == CONTROL_REQ_TOO_LONG || st == CONTROL_REQ_NOT_PRINT) {
        FUZZ_ASSERT(req.argc == 0);
    }
    free(line);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t start = 0;

    /* Line by line, as the daemon reads them, and the whole input as one line. */
    for (size_t i = 0; i < size; i++) {
        if (data[i] == '\n') {
            check_line(data + start, i - start);
            start = i + 1;
        }
    }
    if (start < size)
        check_line(data + start, size - start);
    check_line(data, size);
    return 0;
}
