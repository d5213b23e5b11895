/*
 * Example: send a large message from a file through the local mailpoold
 * without holding it in memory, with libmailpool's streaming API (begin,
 * write chunks, end) or, with -f, mailpool_send_fd().  Progress events from
 * the library are printed to stderr.
 *
 *   mailpool-example-stream [-s SOCKET] [-f] [-8] FILE FROM TO...
 *
 * FILE "-" is standard input.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mailpool.h>

#define USAGE "usage: %s [-s SOCKET] [-f] [-8] FILE FROM TO...\n"

#define CHUNK 65536

/* Called from inside the blocking calls: report every 1 MiB sent. */
static void on_event(mailpool *mp, const mailpool_event_info *ev, void *arg)
{
    unsigned long long *last = arg;

    if (ev->event != MAILPOOL_EV_PROGRESS || ev->sent - *last < (1u << 20))
        return;
    *last = ev->sent;
    if (ev->total > 0)
        fprintf(stderr, "sent %llu of %llu bytes\n", ev->sent, ev->total);
    else
        fprintf(stderr, "sent %llu bytes\n", ev->sent);
}

/*
 * Stream fd in chunks.  A refusal shows at the first write (the envelope is
 * sent then); stop writing and let mailpool_stream_end() report it.
 */
static mailpool_status stream_fd(mailpool *mp, const mailpool_envelope *env, int fd,
                                 mailpool_result *result)
{
    mailpool_status st = mailpool_stream_begin(mp, env);
    char *buf;
    ssize_t n;

    if (st != MAILPOOL_OK) {
        memset(result, 0, sizeof(*result));
        result->status = st;
        return st;
    }
    buf = malloc(CHUNK);
    if (buf == NULL) {
        mailpool_stream_abort(mp);
        memset(result, 0, sizeof(*result));
        return result->status = MAILPOOL_ERR_NOMEM;
    }
    for (;;) {
        n = read(fd, buf, CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            /* Never deliver a truncated message: abort the transaction. */
            fprintf(stderr, "read: %s\n", strerror(errno));
            mailpool_stream_abort(mp);
            free(buf);
            memset(result, 0, sizeof(*result));
            return result->status = MAILPOOL_ERR_IO;
        }
        if (n == 0 || mailpool_stream_write(mp, buf, (size_t)n) != MAILPOOL_OK)
            break;
    }
    free(buf);
    return mailpool_stream_end(mp, result);
}

int main(int argc, char **argv)
{
    const char *socket_path = NULL;
    mailpool_envelope env = {0};
    unsigned long long last = 0;
    int c, fd, use_send_fd = 0;
    mailpool_result result;
    mailpool_status st;
    mailpool *mp;
    size_t i;

    while ((c = getopt(argc, argv, "s:f8")) != -1) {
        if (c == 's')
            socket_path = optarg;
        else if (c == 'f')
            use_send_fd = 1;
        else if (c == '8')
            /* Streamed text is not scanned: say it has 8-bit bytes. */
            env.flags |= MAILPOOL_ENV_8BITMIME;
        else {
            fprintf(stderr, USAGE, argv[0]);
            return 2;
        }
    }
    if (argc - optind < 3) {
        fprintf(stderr, USAGE, argv[0]);
        return 2;
    }
    fd = strcmp(argv[optind], "-") == 0 ? 0 : open(argv[optind], O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "%s: %s\n", argv[optind], strerror(errno));
        return 1;
    }
    env.sender = argv[optind + 1];
    env.recipients = (const char *const *)&argv[optind + 2];
    env.nrecipients = (size_t)(argc - optind - 2);

    st = mailpool_open(socket_path, 30000, 0, &mp);
    if (st != MAILPOOL_OK) {
        fprintf(stderr, "cannot open mailpool: %s\n", mailpool_strerror(st));
        return 1;
    }
    mailpool_set_callback(mp, on_event, &last);

    if (use_send_fd)
        st = mailpool_send_fd(mp, &env, fd, &result);
    else
        st = stream_fd(mp, &env, fd, &result);
    printf("overall: %s\n", mailpool_strerror(st));
    for (i = 0; i < result.nrecipients; i++) {
        const mailpool_reply *r = &result.recipients[i];

        printf("%s: %d %s %s\n", env.recipients[i], r->code, r->ecode, r->text);
    }

    mailpool_result_free(&result);
    mailpool_close(mp);
    if (fd != 0)
        close(fd);
    return st == MAILPOOL_OK ? 0 : 1;
}
