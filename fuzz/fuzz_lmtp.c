/*
 * Fuzz harness for the LMTP command parser and addr_check: whatever the
 * line, an accepted command holds only what the header allows, and every
 * address addr_check accepts survives a MAIL FROM round trip unchanged.
 */
#include <string.h>

#include "fuzz.h"
#include "lmtp_parse.h"

static int is_ctl(unsigned char c)
{
    return c < 0x20 || c == 0x7f;
}

static void check_error(const char *err)
{
    FUZZ_ASSERT(strlen(err) > 4);
    FUZZ_ASSERT(err[0] == '5' && err[1] >= '0' && err[1] <= '5');
    FUZZ_ASSERT(err[2] >= '0' && err[2] <= '9' && err[3] == ' ');
    FUZZ_ASSERT(strchr(err, '\r') == NULL && strchr(err, '\n') == NULL);
}

static void check_cmd(const uint8_t *data, size_t size, const struct lmtp_cmd *cmd)
{
    size_t pl = strnlen(cmd->path, sizeof(cmd->path));

    FUZZ_ASSERT(cmd->verb != LMTP_UNKNOWN);
    FUZZ_ASSERT(size <= MAILPOOL_MAX_COMMAND_LINE);
    for (size_t i = 0; i < size; i++)
        FUZZ_ASSERT(!is_ctl(data[i]));
    FUZZ_ASSERT(pl <= MAILPOOL_MAX_PATH);
    FUZZ_ASSERT(strnlen(cmd->arg, sizeof(cmd->arg)) < sizeof(cmd->arg));
    FUZZ_ASSERT(strnlen(cmd->relay, sizeof(cmd->relay)) < sizeof(cmd->relay));
    FUZZ_ASSERT(cmd->mode >= -1 && cmd->mode <= 1);
    FUZZ_ASSERT(cmd->body == BODY_7BIT || cmd->body == BODY_8BITMIME);
    if (cmd->verb == LMTP_MAIL && pl > 0)
        FUZZ_ASSERT(addr_check(cmd->path, pl, cmd->smtputf8) == NULL);
    if (cmd->verb == LMTP_RCPT) {
        FUZZ_ASSERT(pl > 0);
        FUZZ_ASSERT(addr_check(cmd->path, pl, 1) == NULL);
    }
    if (cmd->verb != LMTP_MAIL && cmd->verb != LMTP_RCPT)
        FUZZ_ASSERT(pl == 0);
    if (cmd->verb == LMTP_LHLO)
        FUZZ_ASSERT(cmd->arg[0] != '\0');
    for (const char *r = cmd->relay; *r != '\0'; r++)
        FUZZ_ASSERT(
            strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-", *r));
}

/* An address addr_check accepts must come back unchanged from MAIL FROM. */
static void check_addr_roundtrip(const uint8_t *data, size_t size)
{
    char line[MAILPOOL_MAX_PATH + 64];
    struct lmtp_cmd cmd;
    const char *err;
    int n;

    if (addr_check((const char *)data, size, 1) != NULL) {
        FUZZ_ASSERT(addr_check((const char *)data, size, 0) != NULL);
        return;
    }
    FUZZ_ASSERT(size > 0 && size <= MAILPOOL_MAX_PATH);
    n = snprintf(line, sizeof(line), "MAIL FROM:<%.*s> SMTPUTF8", (int)size, (const char *)data);
    FUZZ_ASSERT(n > 0 && (size_t)n < sizeof(line));
    err = lmtp_parse_command(line, (size_t)n, &cmd);
    FUZZ_ASSERT(err == NULL);
    FUZZ_ASSERT(strlen(cmd.path) == size && memcmp(cmd.path, data, size) == 0);
    n = snprintf(line, sizeof(line), "RCPT TO:<%.*s>", (int)size, (const char *)data);
    err = lmtp_parse_command(line, (size_t)n, &cmd);
    FUZZ_ASSERT(err == NULL);
    FUZZ_ASSERT(strlen(cmd.path) == size && memcmp(cmd.path, data, size) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct lmtp_cmd *cmd = malloc(sizeof(*cmd));
    const char *err;

    FUZZ_ASSERT(cmd != NULL);
    err = lmtp_parse_command((const char *)data, size, cmd);
    if (err != NULL)
        check_error(err);
    else
        check_cmd(data, size, cmd);
    free(cmd);
    check_addr_roundtrip(data, size);
    return 0;
}
