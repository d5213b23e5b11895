/*
 * Example: send the message on stdin to the given recipients through the
 * local mailpoold with libmailpool, and print what happened to each one.
 *
 *   mailpool-example-send [-s SOCKET] FROM TO... < message
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mailpool.h>

static char *read_all(FILE *in, size_t *len)
{
    size_t cap = 65536, n;
    char *buf = malloc(cap), *p;

    *len = 0;
    while (buf != NULL && (n = fread(buf + *len, 1, cap - *len, in)) > 0) {
        *len += n;
        if (*len == cap) {
            p = realloc(buf, cap *= 2);
            if (p == NULL)
                free(buf);
            buf = p;
        }
    }
    if (buf != NULL && ferror(in)) {
        free(buf);
        buf = NULL;
    }
    return buf;
}

int main(int argc, char **argv)
{
    const char *socket_path = NULL; /* NULL: $MAILPOOL_SOCKET or the default */
    mailpool *mp;
    mailpool_envelope env = {0};
    mailpool_result result;
    mailpool_status st;
    size_t len, i;
    char *message;
    int c;

    while ((c = getopt(argc, argv, "s:")) != -1) {
        if (c != 's') {
            fprintf(stderr, "usage: %s [-s SOCKET] FROM TO... < message\n", argv[0]);
            return 2;
        }
        socket_path = optarg;
    }
    if (argc - optind < 2) {
        fprintf(stderr, "usage: %s [-s SOCKET] FROM TO... < message\n", argv[0]);
        return 2;
    }
    message = read_all(stdin, &len);
    if (message == NULL) {
        fprintf(stderr, "cannot read the message\n");
        return 1;
    }

    /* One connection can carry many messages; 30 s bounds each blocking step. */
    st = mailpool_open(socket_path, 30000, 0, &mp);
    if (st != MAILPOOL_OK) {
        fprintf(stderr, "cannot open mailpool: %s\n", mailpool_strerror(st));
        free(message);
        return 1;
    }

    env.sender = argv[optind];
    env.recipients = (const char *const *)&argv[optind + 1];
    env.nrecipients = (size_t)(argc - optind - 1);
    st = mailpool_send(mp, &env, message, len, &result);
    printf("overall: %s\n", mailpool_strerror(st));

    /* Each recipient has its own outcome: LMTP answers once per recipient. */
    for (i = 0; i < result.nrecipients; i++) {
        const mailpool_reply *r = &result.recipients[i];

        printf("%s: %d %s %s\n", env.recipients[i], r->code, r->ecode, r->text);
    }

    mailpool_result_free(&result);
    mailpool_close(mp);
    free(message);
    return st == MAILPOOL_OK ? 0 : 1;
}
