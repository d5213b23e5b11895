/*
 * Drives the libmailpool 0.2 API for the client tests: events, streaming,
 * send from a descriptor, cancel, thread ownership, the asynchronous API.
 * Usage: lib_test SOCKET MODE; prints one line per outcome for the driver.
 */
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mailpool.h"

static const char *const rcpts[] = {"a@example.org", "b@example.org"};
static const mailpool_envelope env = {
    .sender = "s@example.org", .recipients = rcpts, .nrecipients = 2};

static void on_event(mailpool *mp, const mailpool_event_info *ev, void *arg)
{
    static const char *const names[] = {"",        "CONNECT",  "DISCONNECT", "READ",   "WRITE",
                                        "COMMAND", "PROGRESS", "TIMEOUT",    "CANCEL", "DONE"};

    (void)mp;
    (void)arg;
    if (ev->event == MAILPOOL_EV_READ || ev->event == MAILPOOL_EV_WRITE)
        return; /* their number depends on the scheduler */
    if (ev->event == MAILPOOL_EV_COMMAND)
        printf("ev COMMAND %s %zu %d\n", ev->command, ev->rcpt_index, ev->reply->code);
    else if (ev->event == MAILPOOL_EV_DONE || ev->event == MAILPOOL_EV_DISCONNECT)
        printf("ev %s %s\n", names[ev->event], mailpool_strerror(ev->status));
    else if (ev->event == MAILPOOL_EV_PROGRESS)
        printf("ev PROGRESS %llu %llu\n", ev->sent, ev->total);
    else
        printf("ev %s\n", names[ev->event]);
    fflush(stdout);
}

static void print_result(const char *what, mailpool_status st, const mailpool_result *r)
{
    size_t i;

    printf("%s %d\n", what, (int)st);
    for (i = 0; i < r->nrecipients; i++)
        printf("rcpt %zu %d\n", i, r->recipients[i].code);
    fflush(stdout);
}

/* Peak resident set size in KiB, from /proc. */
static long vm_hwm(void)
{
    char line[256];
    long kb = -1;
    FILE *f = fopen("/proc/self/status", "r");

    while (f != NULL && fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, "VmHWM:", 6) == 0)
            kb = atol(line + 6);
    }
    if (f != NULL)
        fclose(f);
    return kb;
}

static mailpool *g_mp; /* for the SIGALRM handler only */

static void on_alarm(int sig)
{
    (void)sig;
    mailpool_cancel(g_mp);
}

static void *other_thread(void *arg)
{
    mailpool *mp = arg;
    mailpool_result r;
    mailpool_status st = mailpool_send(mp, &env, "x\n", 2, &r);

    printf("other %d\n", (int)st);
    mailpool_result_free(&r);
    if (mailpool_attach_thread(mp) == MAILPOOL_OK) {
        st = mailpool_send(mp, &env, "x\n", 2, &r);
        printf("attached %d\n", (int)st);
        mailpool_result_free(&r);
    }
    return NULL;
}

/* Stream `mib` MiB of numbered lines with awkward chunk boundaries. */
static mailpool_status stream_big(mailpool *mp, unsigned mib)
{
    char buf[7001];
    unsigned long long sent = 0, want = (unsigned long long)mib << 20;
    unsigned line = 0;

    while (sent < want) {
        size_t n = 0;

        while (n + 40 < sizeof buf) {
            n += (size_t)snprintf(buf + n, sizeof buf - n, "%sline %u\r\n",
                                  line % 7 == 0 ? "." : "", line);
            line++;
        }
        if (mailpool_stream_write(mp, buf, n) != MAILPOOL_OK)
            return MAILPOOL_ERR_IO;
        sent += n;
    }
    return MAILPOOL_OK;
}

int main(int argc, char **argv)
{
    mailpool *mp = NULL;
    mailpool_result r;
    mailpool_status st;
    const char *mode;

    if (argc < 3)
        return 2;
    mode = argv[2];
    if (strcmp(mode, "version") == 0) {
        printf("version %s %s\n", mailpool_version(), MAILPOOL_VERSION_STRING);
        return 0;
    }
    if (strcmp(mode, "async") == 0 || strcmp(mode, "async_stall") == 0) {
        struct pollfd pfd;

        st = mailpool_open_async(argv[1], strcmp(mode, "async") == 0 ? 5000 : 700, 0, on_event,
                                 NULL, &mp);
        printf("open_async %d\n", (int)st);
        pfd.fd = mailpool_fd(mp);
        pfd.events = POLLIN;
        while (mailpool_busy(mp) && poll(&pfd, 1, 10000) > 0)
            (void)mailpool_process(mp, pfd.revents);
        if (mailpool_send_async(mp, &env, "Subject: a\n\nbody\n", 17, &r) == MAILPOOL_OK) {
            while (mailpool_busy(mp) && poll(&pfd, 1, 10000) > 0)
                (void)mailpool_process(mp, pfd.revents);
            print_result("async_send", r.status, &r);
            mailpool_result_free(&r);
        }
        mailpool_close(mp);
        return 0;
    }
    st = mailpool_open(argv[1], strcmp(mode, "stall") == 0 ? 700 : 10000, 0, &mp);
    printf("open %d\n", (int)st);
    if (st != MAILPOOL_OK)
        return 0;
    if (strcmp(mode, "events") == 0 || strcmp(mode, "stall") == 0) {
        mailpool_set_callback(mp, on_event, NULL);
        st = mailpool_send(mp, &env, "Subject: a\n\nbody\n", 17, &r);
        print_result("send", st, &r);
        mailpool_result_free(&r);
    } else if (strcmp(mode, "stream") == 0) {
        static const char *const chunks[] = {"Subject: s\r", "\n\r\n.dot\r", "\n", "..two\n", ".",
                                             "x\rbare\n",    "end"};
        size_t i;

        mailpool_stream_begin(mp, &env);
        st = mailpool_stream_add_recipient(mp, "c@example.org", "SUCCESS", "rfc822;c+40x.org");
        printf("add %d\n", (int)st);
        for (i = 0; i < sizeof chunks / sizeof chunks[0]; i++)
            mailpool_stream_write(mp, chunks[i], strlen(chunks[i]));
        st = mailpool_stream_end(mp, &r);
        print_result("stream", st, &r);
        mailpool_result_free(&r);
    } else if (strcmp(mode, "big") == 0) {
        long before = vm_hwm();

        mailpool_stream_begin(mp, &env);
        st = stream_big(mp, argc > 3 ? (unsigned)atoi(argv[3]) : 50);
        st = mailpool_stream_end(mp, &r);
        print_result("big", st, &r);
        printf("hwm_growth_kib %ld\n", vm_hwm() - before);
        mailpool_result_free(&r);
    } else if (strcmp(mode, "fd") == 0) {
        st = mailpool_send_fd(mp, &env, 0, &r);
        print_result("fd", st, &r);
        mailpool_result_free(&r);
    } else if (strcmp(mode, "cancel") == 0 || strcmp(mode, "alarm") == 0) {
        mailpool_set_callback(mp, on_event, NULL);
        mailpool_stream_begin(mp, &env);
        mailpool_stream_write(mp, "Subject: c\n\npartial\n", 20);
        if (strcmp(mode, "cancel") == 0) {
            mailpool_cancel(mp);
        } else {
            struct sigaction sa;

            memset(&sa, 0, sizeof sa);
            sa.sa_handler = on_alarm;
            g_mp = mp;
            sigaction(SIGALRM, &sa, NULL);
            alarm(1);
            mailpool_set_callback(mp, NULL, NULL);
        }
        st = stream_big(mp, 1u << 20); /* far more than fits before the alarm */
        st = mailpool_stream_end(mp, &r);
        print_result("cancelled", st, &r);
        mailpool_result_free(&r);
        mailpool_set_callback(mp, NULL, NULL);
        st = mailpool_send(mp, &env, "Subject: next\n\nok\n", 18, &r);
        print_result("next", st, &r);
        mailpool_result_free(&r);
    } else if (strcmp(mode, "thread") == 0) {
        pthread_t t;

        pthread_create(&t, NULL, other_thread, mp);
        pthread_join(t, NULL);
        st = mailpool_send(mp, &env, "x\n", 2, &r);
        printf("original %d\n", (int)st);
        mailpool_result_free(&r);
    } else if (strcmp(mode, "queueid") == 0) {
        char id[64];

        st = mailpool_send(mp, &env, "x\n", 2, &r);
        if (r.nrecipients > 0 && mailpool_reply_queue_id(&r.recipients[0], id, sizeof id) > 0)
            printf("queueid %s\n", id);
        mailpool_result_free(&r);
    }
    mailpool_close(mp);
    return 0;
}
