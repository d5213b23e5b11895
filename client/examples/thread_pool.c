/*
 * Example: a pool of worker threads sending a batch of messages through the
 * local mailpoold.  Each thread opens its own libmailpool handle (a handle
 * belongs to the thread that opened it) and takes messages from a shared work
 * queue until it is empty; the main thread prints every outcome at the end.
 *
 *   mailpool-example-thread-pool [-s SOCKET] [-t THREADS] [-n MESSAGES] FROM TO...
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mailpool.h>

#define USAGE "usage: %s [-s SOCKET] [-t THREADS] [-n MESSAGES] FROM TO...\n"
#define MSG_FMT                                                                                    \
    "From: %s\r\nSubject: message %zu of %zu\r\n\r\n"                                              \
    "This is message %zu of a batch sent by a thread pool.\r\n"

struct job {
    char *text; /* the message */
    size_t len;
    int done;               /* a worker tried it; result is filled */
    mailpool_status status; /* its outcome */
    mailpool_result result; /* per recipient */
    unsigned worker;        /* which thread sent it */
};

/* The shared work queue: workers take the next index under the lock. */
struct queue {
    pthread_mutex_t lock;
    struct job *jobs;
    size_t njobs, next;
    const char *socket_path;
    const mailpool_envelope *env;
};

struct worker {
    pthread_t tid;
    unsigned id;
    struct queue *q;
    mailpool_status open_status; /* why the worker gave up, if it did */
};

static struct job *queue_take(struct queue *q)
{
    struct job *j = NULL;

    pthread_mutex_lock(&q->lock);
    if (q->next < q->njobs)
        j = &q->jobs[q->next++];
    pthread_mutex_unlock(&q->lock);
    return j;
}

static void *worker_run(void *arg)
{
    struct worker *w = arg;
    struct job *j;
    mailpool *mp = NULL;

    w->open_status = MAILPOOL_OK;
    while ((j = queue_take(w->q)) != NULL) {
        /* Open lazily so a broken connection is replaced for the next job. */
        if (mp == NULL) {
            w->open_status = mailpool_open(w->q->socket_path, 30000, 0, &mp);
            if (w->open_status != MAILPOOL_OK) {
                j->done = 1;
                j->status = w->open_status;
                j->worker = w->id;
                break;
            }
        }
        j->status = mailpool_send(mp, w->q->env, j->text, j->len, &j->result);
        j->done = 1;
        j->worker = w->id;
        /* After a transport error the handle is broken: later calls fail with STATE. */
        if (j->status != MAILPOOL_OK && j->status != MAILPOOL_ERR_PARTIAL &&
            j->status != MAILPOOL_ERR_TEMPORARY && j->status != MAILPOOL_ERR_PERMANENT) {
            mailpool_close(mp);
            mp = NULL;
        }
    }
    mailpool_close(mp);
    return NULL;
}

static char *make_message(const char *from, size_t i, size_t n, size_t *len)
{
    int need = snprintf(NULL, 0, MSG_FMT, from, i, n, i);
    char *p;

    if (need < 0 || (p = malloc((size_t)need + 1)) == NULL)
        return NULL;
    snprintf(p, (size_t)need + 1, MSG_FMT, from, i, n, i);
    *len = (size_t)need;
    return p;
}

static int parse_count(const char *s, unsigned long max, unsigned long *out)
{
    char *end;
    unsigned long v = strtoul(s, &end, 10);

    if (*s == '\0' || *end != '\0' || v == 0 || v > max)
        return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    struct queue q = {.lock = PTHREAD_MUTEX_INITIALIZER};
    mailpool_envelope env = {0};
    unsigned long nthreads = 4, nmsgs = 20;
    struct worker *workers;
    size_t i, k, started = 0;
    int c, failed = 0;

    while ((c = getopt(argc, argv, "s:t:n:")) != -1) {
        int ok = (c == 's' && (q.socket_path = optarg) != NULL) ||
                 (c == 't' && parse_count(optarg, 256, &nthreads) == 0) ||
                 (c == 'n' && parse_count(optarg, 100000, &nmsgs) == 0);
        if (!ok) {
            fprintf(stderr, USAGE, argv[0]);
            return 2;
        }
    }
    if (argc - optind < 2) {
        fprintf(stderr, USAGE, argv[0]);
        return 2;
    }
    env.sender = argv[optind];
    env.recipients = (const char *const *)&argv[optind + 1];
    env.nrecipients = (size_t)(argc - optind - 1);
    q.env = &env;

    q.njobs = nmsgs;
    q.jobs = calloc(nmsgs, sizeof(*q.jobs));
    workers = calloc(nthreads, sizeof(*workers));
    if (q.jobs == NULL || workers == NULL) {
        fprintf(stderr, "out of memory\n");
        free(q.jobs);
        free(workers);
        return 1;
    }
    for (i = 0; i < nmsgs; i++) {
        q.jobs[i].text = make_message(env.sender, i + 1, nmsgs, &q.jobs[i].len);
        if (q.jobs[i].text == NULL) {
            fprintf(stderr, "out of memory\n");
            while (i-- > 0)
                free(q.jobs[i].text);
            free(q.jobs);
            free(workers);
            return 1;
        }
    }

    for (i = 0; i < nthreads; i++) {
        workers[i].id = (unsigned)i;
        workers[i].q = &q;
        if (pthread_create(&workers[i].tid, NULL, worker_run, &workers[i]) != 0) {
            fprintf(stderr, "cannot start thread %zu\n", i);
            break;
        }
        started++;
    }
    for (i = 0; i < started; i++)
        pthread_join(workers[i].tid, NULL);

    /* Workers are gone: the jobs are ours again, no lock needed. */
    for (i = 0; i < nmsgs; i++) {
        struct job *j = &q.jobs[i];

        free(j->text);
        if (!j->done) {
            printf("message %zu: not sent (no worker could connect)\n", i + 1);
            failed = 1;
            continue;
        }
        printf("message %zu (thread %u): %s\n", i + 1, j->worker, mailpool_strerror(j->status));
        for (k = 0; k < j->result.nrecipients; k++) {
            const mailpool_reply *r = &j->result.recipients[k];

            printf("  %s: %d %s %s\n", env.recipients[k], r->code, r->ecode, r->text);
        }
        if (j->status != MAILPOOL_OK)
            failed = 1;
        mailpool_result_free(&j->result);
    }
    free(q.jobs);
    free(workers);
    return failed ? 1 : 0;
}
