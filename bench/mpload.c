/*
 * mpload: a load generator for mailpoold's submission socket (LMTP, RFC 2033)
 * through libmailpool.  CLIENTS threads each open one handle and send their
 * share of the messages back to back; every send's wall time is recorded.
 *
 *   mpload -s SOCKET -c CLIENTS -n MESSAGES -m MSGFILE [-r RELAY] [-M MODE]
 *          [-o FILE] [-f SENDER] [-t RECIPIENT] [-I TAG [-A FILE]]
 *
 * -I TAG puts a header "X-Soak-Id: TAG<client>-<n>" in front of every message
 * so a sink can count each one; -A FILE then lists the ids that got 250 (the
 * messages the daemon accepted responsibility for).
 *
 * -M relay|queue asks for that delivery mode (XMODE=); without it the relay's
 * own mode applies.  In queue mode a send's time is the time until the
 * message is durable in the spool (the daemon's 250), not until delivery.
 *
 * Prints count, seconds, msgs/s, median, p90 and p99 (microseconds) on one
 * line each; exits 1 if any send did not end in 250 for every recipient, 2 on
 * a usage error.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mailpool.h>

/* Long enough for any loopback relay, short enough that a hang ends a run. */
#define MPLOAD_TIMEOUT_MS 30000u

struct load_opts {
    const char *socket_path;
    const char *relay;
    const char *mode; /* "relay", "queue" or NULL: the relay's default */
    const char *sender;
    const char *recipient;
    const char *message;
    size_t message_len;
    const char *id_tag; /* NULL: send the message as it is */
};

/* One per thread; only that thread writes it until it is joined. */
struct worker {
    pthread_t tid;
    const struct load_opts *opts;
    pthread_barrier_t *start;
    size_t nsend;
    uint64_t *lat_us; /* nsend slots, this worker's slice of the shared array */
    size_t nfailed;   /* sent, but not 250 for every recipient */
    size_t nskipped;  /* never sent: the handle broke or never opened */
    int open_failed;
    char first_error[600];
    uint64_t end_ns;
    size_t index;            /* this client's number, for the ids */
    unsigned char *accepted; /* with -I: nsend flags, 1 = got 250 */
};

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void note_error(struct worker *w, size_t i, const char *what, const mailpool_reply *r)
{
    if (w->first_error[0] != '\0')
        return;
    if (r != NULL && r->code != 0)
        snprintf(w->first_error, sizeof(w->first_error), "message %zu: %s: %d %s %s", i, what,
                 r->code, r->ecode, r->text);
    else
        snprintf(w->first_error, sizeof(w->first_error), "message %zu: %s", i, what);
}

/* A send counts as good only if the daemon said 250 for every recipient. */
static int send_ok(const mailpool_result *res)
{
    size_t i;

    if (res->status != MAILPOOL_OK || res->nrecipients == 0)
        return 0;
    for (i = 0; i < res->nrecipients; i++)
        if (res->recipients[i].code != 250)
            return 0;
    return 1;
}

static void *worker_run(void *arg)
{
    struct worker *w = arg;
    const struct load_opts *o = w->opts;
    const char *rcpts[1] = {o->recipient};
    mailpool_envelope env = {0};
    mailpool *mp = NULL;
    mailpool_status st;
    size_t i, idcap = 0;
    char *idmsg = NULL;

    env.sender = o->sender;
    env.recipients = rcpts;
    env.nrecipients = 1;
    env.relay = o->relay;
    env.mode = o->mode;

    /* Open in this thread so the handle belongs to it; opening is not timed. */
    st = mailpool_open(o->socket_path, MPLOAD_TIMEOUT_MS, 0, &mp);
    if (st != MAILPOOL_OK) {
        w->open_failed = 1;
        snprintf(w->first_error, sizeof(w->first_error), "open: %s (%s)", mailpool_strerror(st),
                 strerror(errno));
    }
    if (o->id_tag != NULL) {
        /* Room for the header line; sized from the tag, not a fixed guess. */
        idcap = strlen(o->id_tag) + 64 + o->message_len;
        idmsg = malloc(idcap);
        w->accepted = calloc(w->nsend ? w->nsend : 1, 1);
        if (idmsg == NULL || w->accepted == NULL) {
            w->open_failed = 1;
            snprintf(w->first_error, sizeof(w->first_error), "out of memory");
        }
    }
    pthread_barrier_wait(w->start);
    if (w->open_failed) {
        w->nskipped = w->nsend;
        w->nsend = 0;
        w->end_ns = now_ns();
        return NULL;
    }
    for (i = 0; i < w->nsend; i++) {
        mailpool_result res = {0};
        uint64_t t0 = now_ns(), t1;

        if (idmsg != NULL) {
            int hl = snprintf(idmsg, idcap, "X-Soak-Id: %s%zu-%zu\n", o->id_tag, w->index, i);

            memcpy(idmsg + hl, o->message, o->message_len);
            st = mailpool_send(mp, &env, idmsg, (size_t)hl + o->message_len, &res);
        } else {
            st = mailpool_send(mp, &env, o->message, o->message_len, &res);
        }
        t1 = now_ns();
        w->lat_us[i] = (t1 - t0) / 1000u;
        if (send_ok(&res) && w->accepted != NULL)
            w->accepted[i] = 1;
        if (!send_ok(&res)) {
            w->nfailed++;
            note_error(w, i, mailpool_strerror(st),
                       res.nrecipients > 0 ? &res.recipients[0] : mailpool_last_reply(mp));
        }
        mailpool_result_free(&res);
        if (st != MAILPOOL_OK && st != MAILPOOL_ERR_TEMPORARY && st != MAILPOOL_ERR_PERMANENT &&
            st != MAILPOOL_ERR_PARTIAL) {
            /* A transport error breaks the handle: the rest would all fail. */
            w->nskipped = w->nsend - i - 1;
            w->nsend = i + 1;
            break;
        }
    }
    w->end_ns = now_ns();
    free(idmsg);
    mailpool_close(mp);
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return (x > y) - (x < y);
}

/* Nearest-rank percentile of a sorted array of n > 0 values. */
static uint64_t percentile(const uint64_t *sorted, size_t n, unsigned pct)
{
    size_t rank = (n * pct + 99) / 100;

    return sorted[rank == 0 ? 0 : rank - 1];
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    size_t cap = 65536, n;
    char *buf, *p;

    *len = 0;
    if (f == NULL)
        return NULL;
    buf = malloc(cap);
    while (buf != NULL && (n = fread(buf + *len, 1, cap - *len, f)) > 0) {
        *len += n;
        if (*len == cap) {
            p = realloc(buf, cap *= 2);
            if (p == NULL)
                free(buf);
            buf = p;
        }
    }
    if (buf != NULL && ferror(f)) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    return buf;
}

static int parse_count(const char *s, unsigned long max, unsigned long *out)
{
    char *end;

    errno = 0;
    *out = strtoul(s, &end, 10);
    return errno == 0 && end != s && *end == '\0' && *s != '-' && *out >= 1 && *out <= max ? 0 : -1;
}

static void usage(void)
{
    fprintf(stderr, "usage: mpload -s SOCKET -c CLIENTS -n MESSAGES -m MSGFILE [-r RELAY]\n"
                    "              [-M relay|queue] [-o LATENCIES] [-f SENDER] [-t RECIPIENT]\n"
                    "              [-I TAG [-A ACCEPTED]]\n");
}

static int write_latencies(const char *path, const struct worker *w, size_t nclients)
{
    FILE *f = fopen(path, "w");
    size_t c, i;

    if (f == NULL)
        return -1;
    /* Unsorted, per client in send order: a plot can show warm-up or drift. */
    for (c = 0; c < nclients; c++)
        for (i = 0; i < w[c].nsend; i++)
            fprintf(f, "%" PRIu64 "\n", w[c].lat_us[i]);
    return fclose(f) == 0 ? 0 : -1;
}

static int write_accepted(const char *path, const char *tag, const struct worker *w,
                          size_t nclients)
{
    FILE *f = fopen(path, "w");
    size_t c, i;

    if (f == NULL)
        return -1;
    for (c = 0; c < nclients; c++)
        for (i = 0; i < w[c].nsend; i++)
            if (w[c].accepted != NULL && w[c].accepted[i])
                fprintf(f, "%s%zu-%zu\n", tag, c, i);
    return fclose(f) == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    struct load_opts o = {0};
    const char *msgfile = NULL, *outfile = NULL, *accfile = NULL;
    unsigned long nclients = 0, nmessages = 0;
    struct worker *w;
    pthread_barrier_t start;
    uint64_t *lat, *sorted, t0, t1 = 0;
    size_t c, done = 0, good = 0, failed = 0, off = 0;
    char *msgbuf;
    double secs;
    int ch;

    o.sender = "bench@bench.mailpool.test";
    o.recipient = "sink@example.test";
    while ((ch = getopt(argc, argv, "s:c:n:m:r:M:o:f:t:I:A:h")) != -1) {
        switch (ch) {
        case 's':
            o.socket_path = optarg;
            break;
        case 'c':
            if (parse_count(optarg, 4096, &nclients) < 0) {
                fprintf(stderr, "mpload: -c wants 1..4096\n");
                return 2;
            }
            break;
        case 'n':
            if (parse_count(optarg, 100000000, &nmessages) < 0) {
                fprintf(stderr, "mpload: -n wants 1..100000000\n");
                return 2;
            }
            break;
        case 'm':
            msgfile = optarg;
            break;
        case 'r':
            o.relay = optarg;
            break;
        case 'M':
            /* Checked here too so a typo is a usage error, not N failed sends. */
            if (strcmp(optarg, "relay") != 0 && strcmp(optarg, "queue") != 0) {
                fprintf(stderr, "mpload: -M wants relay or queue\n");
                return 2;
            }
            o.mode = optarg;
            break;
        case 'o':
            outfile = optarg;
            break;
        case 'f':
            o.sender = optarg;
            break;
        case 't':
            o.recipient = optarg;
            break;
        case 'I':
            o.id_tag = optarg;
            break;
        case 'A':
            accfile = optarg;
            break;
        default:
            usage();
            return 2;
        }
    }
    if (optind != argc || nclients == 0 || nmessages == 0 || msgfile == NULL) {
        usage();
        return 2;
    }
    if (accfile != NULL && o.id_tag == NULL) {
        fprintf(stderr, "mpload: -A needs -I\n");
        return 2;
    }
    if (nmessages < nclients) {
        fprintf(stderr, "mpload: fewer messages than clients\n");
        return 2;
    }
    o.message = msgbuf = read_file(msgfile, &o.message_len);
    if (msgbuf == NULL) {
        fprintf(stderr, "mpload: %s: %s\n", msgfile, strerror(errno));
        return 2;
    }

    w = calloc(nclients, sizeof(*w));
    lat = calloc(nmessages, sizeof(*lat));
    sorted = calloc(nmessages, sizeof(*sorted));
    if (w == NULL || lat == NULL || sorted == NULL) {
        fprintf(stderr, "mpload: out of memory\n");
        return 2;
    }
    /* The main thread joins the barrier too, so the clock starts when every
     * client is connected and ready. */
    if (pthread_barrier_init(&start, NULL, (unsigned)nclients + 1) != 0) {
        fprintf(stderr, "mpload: pthread_barrier_init failed\n");
        return 2;
    }
    for (c = 0; c < nclients; c++) {
        w[c].opts = &o;
        w[c].start = &start;
        w[c].index = c;
        w[c].nsend = nmessages / nclients + (c < nmessages % nclients ? 1 : 0);
        w[c].lat_us = lat + off;
        off += w[c].nsend;
        if (pthread_create(&w[c].tid, NULL, worker_run, &w[c]) != 0) {
            fprintf(stderr, "mpload: cannot start thread %zu\n", c);
            return 2; /* the others wait at the barrier forever: just exit */
        }
    }
    pthread_barrier_wait(&start);
    t0 = now_ns();
    for (c = 0; c < nclients; c++) {
        pthread_join(w[c].tid, NULL);
        if (w[c].end_ns > t1)
            t1 = w[c].end_ns;
    }
    pthread_barrier_destroy(&start);

    for (c = 0; c < nclients; c++) {
        if (w[c].first_error[0] != '\0')
            fprintf(stderr, "mpload: client %zu: %s\n", c, w[c].first_error);
        failed += w[c].nfailed + w[c].nskipped;
        memcpy(sorted + done, w[c].lat_us, w[c].nsend * sizeof(*sorted));
        done += w[c].nsend;
        good += w[c].nsend - w[c].nfailed;
    }
    secs = (double)(t1 - t0) / 1e9;
    printf("count %zu\n", done);
    printf("failed %zu\n", failed);
    printf("seconds %.3f\n", secs);
    printf("msgs/s %.1f\n", secs > 0 ? (double)good / secs : 0.0);
    if (done > 0) {
        qsort(sorted, done, sizeof(*sorted), cmp_u64);
        printf("median_us %" PRIu64 "\n", percentile(sorted, done, 50));
        printf("p90_us %" PRIu64 "\n", percentile(sorted, done, 90));
        printf("p99_us %" PRIu64 "\n", percentile(sorted, done, 99));
    }
    if (outfile != NULL && write_latencies(outfile, w, nclients) < 0) {
        fprintf(stderr, "mpload: %s: %s\n", outfile, strerror(errno));
        failed++;
    }
    if (accfile != NULL && write_accepted(accfile, o.id_tag, w, nclients) < 0) {
        fprintf(stderr, "mpload: %s: %s\n", accfile, strerror(errno));
        failed++;
    }
    for (c = 0; c < nclients; c++)
        free(w[c].accepted);
    free(sorted);
    free(lat);
    free(w);
    free(msgbuf);
    return failed == 0 ? 0 : 1;
}
