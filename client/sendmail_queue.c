/*
 * mailpool-sendmail's queue commands: -bp (and mailq) lists the queue in
 * the layout of Postfix's mailq, -q asks for a delivery attempt now.  Both
 * send one line to mailpoold's control socket and read one line of JSON
 * (RFC 8259) back.
 */
#include "sendmail_queue.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include "json_read.h"
#include "proto.h"

#define PROG "mailpool-sendmail"
/* How long to wait for the daemon's answer. */
#define ANSWER_TIMEOUT_MS 15000

static void denied(const char *path)
{
    fprintf(stderr,
            PROG ": permission denied on mailpoold's control socket %s: using the queue "
                 "needs root or membership in the daemon's group\n",
            path);
}

/* Connect, send `request` (one line, with its LF), return the answer line in *out. */
static int exchange(const char *path, const char *request, char **out, size_t *outlen)
{
    struct sockaddr_un sun;
    size_t len = 0, cap = 4096;
    char *buf;
    int fd;

    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sun.sun_path) {
        fprintf(stderr, PROG ": %s: socket path too long\n", path);
        return EX_USAGE;
    }
    memcpy(sun.sun_path, path, strlen(path) + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fprintf(stderr, PROG ": socket: %s\n", strerror(errno));
        return EX_OSERR;
    }
    if (connect(fd, (struct sockaddr *)&sun, sizeof sun) != 0) {
        int e = errno;

        close(fd);
        if (e == EACCES || e == EPERM) {
            denied(path);
            return EX_NOPERM;
        }
        fprintf(stderr, PROG ": cannot reach mailpoold at %s: %s%s\n", path, strerror(e),
                e == ENOENT || e == ECONNREFUSED ? " (is the daemon running?)" : "");
        return EX_UNAVAILABLE;
    }
    /* The request is far below a socket buffer: one send, or the daemon hung up first. */
    if (send(fd, request, strlen(request), MSG_NOSIGNAL) < 0 && errno != EPIPE &&
        errno != ECONNRESET) {
        fprintf(stderr, PROG ": cannot talk to mailpoold at %s: %s\n", path, strerror(errno));
        close(fd);
        return EX_UNAVAILABLE;
    }
    buf = malloc(cap);
    if (buf == NULL) {
        close(fd);
        return EX_OSERR;
    }
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int r = poll(&pfd, 1, ANSWER_TIMEOUT_MS);
        ssize_t n;
        char *nl;

        if (r < 0 && errno == EINTR)
            continue;
        if (r == 0) {
            fprintf(stderr, PROG ": mailpoold at %s did not answer\n", path);
            break;
        }
        if (len == cap) {
            char *nb = cap > JSON_READ_MAX_SIZE ? NULL : realloc(buf, cap * 2);

            if (nb == NULL) {
                fprintf(stderr, PROG ": the answer of mailpoold is too large\n");
                free(buf);
                close(fd);
                return EX_PROTOCOL;
            }
            buf = nb;
            cap *= 2;
        }
        n = r < 0 ? -1 : recv(fd, buf + len, cap - len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            fprintf(stderr, PROG ": mailpoold at %s closed the connection without an answer%s%s\n",
                    path, n < 0 ? ": " : "", n < 0 ? strerror(errno) : "");
            break;
        }
        nl = memchr(buf + len, '\n', (size_t)n);
        len += (size_t)n;
        if (nl != NULL) {
            *nl = '\0';
            *out = buf;
            *outlen = (size_t)(nl - buf);
            close(fd);
            return EX_OK;
        }
    }
    free(buf);
    close(fd);
    return EX_UNAVAILABLE;
}

/* Text from the daemon, with control bytes shown as '?' so a terminal never obeys them. */
static void put_safe(const char *s)
{
    for (; s != NULL && *s; s++) {
        unsigned char c = (unsigned char)*s;

        putchar(c < 0x20 || c == 0x7f ? '?' : c);
    }
}

/*
 * Run one request and check the answer.  *v is the parsed answer on EX_OK;
 * a refusal is reported here (EX_NOPERM when it is about access).
 */
static int request(const char *path, const char *line, struct json_value **v)
{
    char *answer = NULL, err[256];
    size_t alen = 0;
    const struct json_value *ok;
    int rc = exchange(path, line, &answer, &alen);

    if (rc != EX_OK)
        return rc;
    *v = json_parse(answer, alen, err, sizeof err);
    free(answer);
    ok = json_get(*v, "ok");
    if (*v == NULL || ok == NULL || ok->type != JSON_BOOL) {
        fprintf(stderr, PROG ": malformed answer from mailpoold: %s\n",
                *v == NULL ? err : "no \"ok\" member");
        json_value_free(*v);
        *v = NULL;
        return EX_PROTOCOL;
    }
    if (!ok->boolean) {
        const char *e = json_get_string(*v, "error");

        if (e != NULL && strcmp(e, "permission denied") == 0) {
            denied(path);
            rc = EX_NOPERM;
        } else {
            fputs(PROG ": mailpoold: ", stderr);
            for (; e != NULL && *e; e++)
                fputc((unsigned char)*e < 0x20 || *e == 0x7f ? '?' : *e, stderr);
            fputc('\n', stderr);
            rc = EX_UNAVAILABLE;
        }
        json_value_free(*v);
        *v = NULL;
    }
    return rc;
}

/* Width of the id column: Postfix's short ids fit in 10, ours may be longer. */
static int id_width(const struct json_value *msgs)
{
    size_t w = 10;

    for (size_t i = 0; i < msgs->count; i++) {
        const char *id = json_get_string(msgs->items[i], "id");

        if (id != NULL && strlen(id) > w)
            w = strlen(id);
    }
    return w > 64 ? 64 : (int)w;
}

/*
 * One message: "ID[*!] SIZE ARRIVAL SENDER", then for each recipient not
 * yet done its last error in parentheses (when it has one) and the address.
 * '*' marks a delivery in progress and '!' a held message, as in Postfix.
 */
static void print_message(const struct json_value *m, int idw)
{
    const struct json_value *rcpts = json_get(m, "recipients");
    const struct json_value *held = json_get(m, "held");
    const struct json_value *next = json_get(m, "next_attempt");
    const char *id = json_get_string(m, "id");
    const char *sender = json_get_string(m, "sender");
    long long size = 0, created = 0;
    char when[64] = "-";
    char mark = ' ';

    json_get_int(m, "size", &size);
    if (json_get_int(m, "created", &created) == 0) {
        time_t t = (time_t)created;
        struct tm tm;

        if (localtime_r(&t, &tm) != NULL)
            strftime(when, sizeof when, "%a %b %e %H:%M:%S", &tm);
    }
    if (held != NULL && held->type == JSON_BOOL && held->boolean)
        mark = '!';
    else if (next != NULL && next->type == JSON_NULL)
        mark = '*';
    put_safe(id != NULL ? id : "?");
    printf("%c%*s %8lld %-19s  ", mark, idw - (int)strlen(id != NULL ? id : "?"), "", size, when);
    put_safe(sender == NULL || sender[0] == '\0' ? "MAILER-DAEMON" : sender);
    putchar('\n');
    const char *shown = NULL; /* recipients with the same reason share one line of it */
    for (size_t i = 0; rcpts != NULL && rcpts->type == JSON_ARRAY && i < rcpts->count; i++) {
        const struct json_value *r = rcpts->items[i];
        const char *state = json_get_string(r, "state");
        const char *addr = json_get_string(r, "address");
        const char *err = json_get_string(r, "last_error");

        if (state != NULL && (strcmp(state, "delivered") == 0 || strcmp(state, "done") == 0))
            continue;
        if (err == NULL && state != NULL && strcmp(state, "pending") == 0)
            err = json_get_string(m, "last_error");
        if (err != NULL && (shown == NULL || strcmp(shown, err) != 0)) {
            printf("%*s(", idw + 1, "");
            put_safe(err);
            printf(")\n");
        }
        shown = err;
        printf("%*s", idw + 1 + 31, "");
        put_safe(addr != NULL ? addr : "?");
        if (state != NULL && strcmp(state, "failed") == 0)
            printf(" (failed; a delivery report is owed)");
        putchar('\n');
    }
    putchar('\n');
}

int sendmail_queue_list(const char *control_path)
{
    struct json_value *v = NULL;
    const struct json_value *msgs;
    long long total = 0;
    int rc = request(control_path, "queue\n", &v), idw;

    if (rc != EX_OK)
        return rc;
    msgs = json_get(v, "messages");
    if (msgs == NULL || msgs->type != JSON_ARRAY) {
        fprintf(stderr, PROG ": malformed answer from mailpoold: no \"messages\" list\n");
        json_value_free(v);
        return EX_PROTOCOL;
    }
    if (msgs->count == 0) {
        printf("Mail queue is empty\n");
    } else {
        idw = id_width(msgs);
        printf("%-*s %8s %-19s  %s\n", idw + 1, "-Queue ID-", "--Size--", "----Arrival Time---",
               "-Sender/Recipient-------");
        for (size_t i = 0; i < msgs->count; i++) {
            long long size = 0;

            if (json_get_int(msgs->items[i], "size", &size) == 0 && size > 0)
                total += size;
            print_message(msgs->items[i], idw);
        }
        printf("-- %lld Kbytes in %zu Request%s.\n", (total + 1023) / 1024, msgs->count,
               msgs->count == 1 ? "" : "s");
    }
    json_value_free(v);
    if (fflush(stdout) != 0) {
        fprintf(stderr, PROG ": cannot write the listing: %s\n", strerror(errno));
        return EX_IOERR;
    }
    return EX_OK;
}

int sendmail_queue_flush(const char *control_path, const char *target, int verbose)
{
    struct json_value *v = NULL;
    char line[MAILPOOL_MAX_CONTROL_LINE + 2];
    long long n = 0;
    int rc;

    if (target != NULL) {
        for (const char *p = target; *p; p++) {
            if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f) {
                fprintf(stderr, PROG ": queue id or relay name with a space or control byte\n");
                return EX_USAGE;
            }
        }
        if (target[0] == '\0' || strlen(target) > 64) {
            fprintf(stderr, PROG ": queue id or relay name empty or too long\n");
            return EX_USAGE;
        }
    }
    snprintf(line, sizeof line, "flush%s%s\n", target ? " " : "", target ? target : "");
    rc = request(control_path, line, &v);
    if (rc != EX_OK)
        return rc;
    if (json_get_int(v, "flushed", &n) != 0) {
        fprintf(stderr, PROG ": malformed answer from mailpoold: no \"flushed\" count\n");
        json_value_free(v);
        return EX_PROTOCOL;
    }
    if (verbose)
        fprintf(stderr, PROG ": %lld message%s scheduled for delivery now\n", n, n == 1 ? "" : "s");
    json_value_free(v);
    return EX_OK;
}
