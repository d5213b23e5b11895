/*
 * Example: libmailpool without blocking and without threads, driven by a
 * plain poll() loop.  Several handles are opened at once and share a batch
 * of messages (the message on stdin, each copy with its own X-Example-Seq
 * header); each handle takes the next message as soon as its last one is
 * answered.  With -v every command's reply is printed to stderr as it
 * completes.
 *
 *   mailpool-example-async-poll [-s SOCKET] [-c HANDLES] [-n MESSAGES] [-v] FROM TO... < message
 */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mailpool.h>

#define USAGE "usage: %s [-s SOCKET] [-c HANDLES] [-n MESSAGES] [-v] FROM TO...\n"
#define MSG_FMT "X-Example-Seq: %zu\r\n"

struct app {
    const mailpool_envelope *env;
    const char *body; /* the message from stdin */
    size_t body_len;
    size_t nmsgs, next; /* messages in the batch, next one to hand out */
    size_t nok, nfailed;
    int verbose;
};

/* One handle and the operation it has in progress. */
struct conn {
    struct app *app;
    mailpool *mp;
    unsigned id;
    int active;  /* opening or sending: waiting for mailpool_process() */
    int sending; /* the operation in progress is a send (else the open) */
    size_t seq;  /* which message, while sending */
    char *text;  /* must stay valid until the DONE event */
    size_t len;
    mailpool_result result; /* filled by the library before DONE */
};

static int is_transport_error(mailpool_status st)
{
    return st != MAILPOOL_OK && st != MAILPOOL_ERR_PARTIAL && st != MAILPOOL_ERR_TEMPORARY &&
           st != MAILPOOL_ERR_PERMANENT;
}

/* Hand this handle the next message; called from main and from DONE events. */
static void conn_start_next(struct conn *c)
{
    struct app *a = c->app;
    int hdr;
    mailpool_status st;

    c->active = 0;
    if (a->next >= a->nmsgs)
        return;
    c->seq = ++a->next;
    hdr = snprintf(NULL, 0, MSG_FMT, c->seq);
    c->text = malloc((size_t)hdr + a->body_len + 1);
    if (c->text == NULL) {
        fprintf(stderr, "message %zu: out of memory\n", c->seq);
        a->nfailed++;
        return;
    }
    snprintf(c->text, (size_t)hdr + 1, MSG_FMT, c->seq);
    memcpy(c->text + hdr, a->body, a->body_len);
    c->len = (size_t)hdr + a->body_len;

    st = mailpool_send_async(c->mp, a->env, c->text, c->len, &c->result);
    if (st != MAILPOOL_OK) {
        /* Refused before anything was sent (bad address ...): no DONE follows. */
        printf("message %zu (handle %u): %s\n", c->seq, c->id, mailpool_strerror(st));
        a->nfailed++;
        free(c->text);
        c->text = NULL;
        return;
    }
    c->active = 1;
    c->sending = 1;
}

static void on_done(struct conn *c, const mailpool_event_info *ev)
{
    struct app *a = c->app;
    size_t i;

    if (!c->sending) {
        c->active = 0;
        if (ev->status != MAILPOOL_OK) {
            fprintf(stderr, "handle %u: cannot open: %s\n", c->id, mailpool_strerror(ev->status));
            return;
        }
        conn_start_next(c);
        return;
    }

    c->sending = 0;
    printf("message %zu (handle %u): %s\n", c->seq, c->id, mailpool_strerror(ev->status));
    for (i = 0; i < c->result.nrecipients; i++) {
        const mailpool_reply *r = &c->result.recipients[i];

        printf("  %s: %d %s %s\n", a->env->recipients[i], r->code, r->ecode, r->text);
    }
    if (ev->status == MAILPOOL_OK)
        a->nok++;
    else
        a->nfailed++;
    mailpool_result_free(&c->result);
    free(c->text);
    c->text = NULL;
    /* A broken connection takes no more work; the other handles carry on. */
    if (is_transport_error(ev->status))
        c->active = 0;
    else
        conn_start_next(c);
}

/* The library calls this from mailpool_process(), in this thread. */
static void on_event(mailpool *mp, const mailpool_event_info *ev, void *arg)
{
    struct conn *c = arg;

    switch (ev->event) {
    case MAILPOOL_EV_CONNECT:
        if (c->app->verbose)
            fprintf(stderr, "[%u] connected\n", c->id);
        break;
    case MAILPOOL_EV_COMMAND:
        if (c->app->verbose && ev->reply != NULL)
            fprintf(stderr, "[%u] %s -> %d %s %s\n", c->id, ev->command, ev->reply->code,
                    ev->reply->ecode, ev->reply->text);
        break;
    case MAILPOOL_EV_TIMEOUT:
        fprintf(stderr, "[%u] timed out\n", c->id);
        break;
    case MAILPOOL_EV_DONE:
        on_done(c, ev);
        break;
    default:
        break;
    }
}

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
    const char *socket_path = NULL;
    struct app a = {0};
    mailpool_envelope env = {0};
    unsigned long nconns = 3, nmsgs = 10;
    struct conn *conns;
    struct pollfd *pfds;
    char *body;
    size_t i, npoll;
    int c;

    while ((c = getopt(argc, argv, "s:c:n:v")) != -1) {
        if (c == 's')
            socket_path = optarg;
        else if (c == 'c')
            nconns = strtoul(optarg, NULL, 10);
        else if (c == 'n')
            nmsgs = strtoul(optarg, NULL, 10);
        else if (c == 'v')
            a.verbose = 1;
        else {
            fprintf(stderr, USAGE, argv[0]);
            return 2;
        }
    }
    if (argc - optind < 2 || nconns == 0 || nconns > 1000 || nmsgs > 1000000) {
        fprintf(stderr, USAGE, argv[0]);
        return 2;
    }
    body = read_all(stdin, &a.body_len);
    conns = calloc(nconns, sizeof(*conns));
    pfds = calloc(nconns, sizeof(*pfds));
    if (body == NULL || conns == NULL || pfds == NULL) {
        fprintf(stderr, "cannot read the message\n");
        free(body);
        free(conns);
        free(pfds);
        return 1;
    }
    env.sender = argv[optind];
    env.recipients = (const char *const *)&argv[optind + 1];
    env.nrecipients = (size_t)(argc - optind - 1);
    a.env = &env;
    a.body = body;
    a.nmsgs = nmsgs;

    /* Start every connection at once; none of these calls blocks. */
    for (i = 0; i < nconns; i++) {
        mailpool_status st;

        conns[i].app = &a;
        conns[i].id = (unsigned)i;
        st = mailpool_open_async(socket_path, 30000, 0, on_event, &conns[i], &conns[i].mp);
        if (st != MAILPOOL_OK)
            fprintf(stderr, "handle %zu: cannot open: %s\n", i, mailpool_strerror(st));
        else
            conns[i].active = 1;
    }

    /*
     * The loop: each handle's descriptor becomes readable whenever the library
     * has something to do, timeouts included, so poll() needs no timeout.
     */
    for (;;) {
        npoll = 0;
        for (i = 0; i < nconns; i++) {
            if (!conns[i].active)
                continue;
            pfds[npoll].fd = mailpool_fd(conns[i].mp);
            pfds[npoll].events = POLLIN;
            pfds[npoll].revents = 0;
            npoll++;
        }
        if (npoll == 0)
            break;
        if (poll(pfds, npoll, -1) < 0) {
            perror("poll");
            break;
        }
        for (i = 0, npoll = 0; i < nconns; i++) {
            if (!conns[i].active)
                continue;
            if (pfds[npoll].revents != 0)
                mailpool_process(conns[i].mp, pfds[npoll].revents);
            npoll++;
        }
    }

    for (i = 0; i < nconns; i++) {
        free(conns[i].text);
        mailpool_close(conns[i].mp);
    }
    if (a.next < a.nmsgs) {
        printf("%zu messages not sent\n", a.nmsgs - a.next);
        a.nfailed += a.nmsgs - a.next;
    }
    printf("sent %zu, failed %zu\n", a.nok, a.nfailed);
    free(conns);
    free(pfds);
    free(body);
    return a.nfailed == 0 ? 0 : 1;
}
