/*
 * Durable commits per second from the event loop, keeping a fixed number of
 * commits outstanding (each callback starts the next one), the way the
 * submission socket drives the spool.  Not a test: prints one line.
 *   bench_spool DIR [count] [outstanding] [size]
 */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "spool.h"

struct bench {
    struct spool *spool;
    struct evbuffer *body;
    long started, done, total;
    int failed;
};

static void start_one(struct bench *b);

static void on_commit(int err, void *arg)
{
    struct bench *b = arg;

    if (err != 0) {
        fprintf(stderr, "commit failed: %s\n", strerror(err));
        b->failed = 1;
    }
    b->done++;
    if (b->started < b->total && !b->failed)
        start_one(b);
}

static void start_one(struct bench *b)
{
    struct spool_rcpt r = {.addr = "rcpt@example.net", .state = SPOOL_PENDING};
    struct spool_entry e = {.created = time(NULL), .sender = "bench@example.org"};

    e.rcpts = &r;
    e.nrcpts = 1;
    snprintf(e.id, sizeof(e.id), "B%08ld%06d", b->started, (int)(time(NULL) % 1000000));
    b->started++;
    if (spool_commit(b->spool, &e, b->body, -1, on_commit, b) != 0) {
        fprintf(stderr, "spool_commit: %s\n", strerror(errno));
        b->failed = 1;
        b->done++;
    }
}

int main(int argc, char **argv)
{
    struct bench b = {0};
    struct event_base *base;
    struct spool_opts o = {0};
    struct timespec t0, t1;
    char err[512];
    long outstanding = argc > 3 ? atol(argv[3]) : 1;
    size_t size = argc > 4 ? (size_t)atol(argv[4]) : 4096;

    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR [count] [outstanding] [size]\n", argv[0]);
        return 2;
    }
    b.total = argc > 2 ? atol(argv[2]) : 5000;
    if (evthread_use_pthreads() < 0 || (base = event_base_new()) == NULL)
        return 1;
    o.dir = argv[1];
    if ((b.spool = spool_open(base, &o, err, sizeof(err))) == NULL) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    b.body = evbuffer_new();
    char *text = malloc(size);
    for (size_t i = 0; i < size; i++)
        text[i] = i % 78 == 76 ? '\r' : i % 78 == 77 ? '\n' : (char)('a' + i % 26);
    evbuffer_add(b.body, text, size);
    free(text);

    unsigned long syncs0 = spool_sync_count(b.spool);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < outstanding && b.started < b.total; i++)
        start_one(&b);
    while (b.done < b.started && !b.failed)
        event_base_loop(base, EVLOOP_ONCE);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("%ld commits of %zu bytes, %ld outstanding: %.0f commits/s, %lu syncs, %.3f ms avg\n",
           b.done, size, outstanding, (double)b.done / secs, spool_sync_count(b.spool) - syncs0,
           secs * 1000 / (double)b.done);
    spool_close(b.spool);
    evbuffer_free(b.body);
    event_base_free(base);
    libevent_global_shutdown();
    return b.failed;
}
