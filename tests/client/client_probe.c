/*
 * Test driver for libmailpool: opens a handle, sends a message file one or
 * more times and prints every status and reply in a line format the Python
 * test cases check.  Not an example of good usage: see examples/send_one.c.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mailpool.h"

static const char *status_name(mailpool_status st)
{
    static const char *names[] = {"OK",      "ARGS",      "NOMEM",     "CONNECT",   "IO",
                                  "TIMEOUT", "PROTOCOL",  "TEMPORARY", "PERMANENT", "PARTIAL",
                                  "THREAD",  "CANCELLED", "STATE"};

    if (st > 0 || -st >= (int)(sizeof names / sizeof names[0]))
        return "UNKNOWN";
    return names[-st];
}

static void print_reply(const char *tag, long idx, const mailpool_reply *r)
{
    const char *p;

    printf("%s", tag);
    if (idx >= 0)
        printf(" %ld", idx);
    printf(" %d %s ", r->code, r->ecode[0] ? r->ecode : "-");
    for (p = r->text; *p; p++)
        putchar(*p == '\n' ? '|' : *p);
    putchar('\n');
}

struct job {
    mailpool *mp;
    mailpool_envelope env;
    char *msg;
    size_t len;
    mailpool_status st;
    mailpool_result res;
};

static void *send_job(void *arg)
{
    struct job *j = arg;

    j->st = mailpool_send(j->mp, &j->env, j->msg, j->len, &j->res);
    return NULL;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t cap = 0, n;

    *len = 0;
    if (f == NULL)
        return NULL;
    for (;;) {
        if (cap - *len < 4096) {
            cap = cap ? cap * 2 : 8192;
            buf = realloc(buf, cap);
            if (buf == NULL)
                exit(2);
        }
        n = fread(buf + *len, 1, cap - *len, f);
        if (n == 0)
            break;
        *len += n;
    }
    fclose(f);
    return buf;
}

int main(int argc, char **argv)
{
    unsigned timeout = 5000, options = 0;
    int count = 1, threaded = 0, c, i;
    const char *sock;
    struct job j;
    mailpool_status st;

    memset(&j, 0, sizeof j);
    while ((c = getopt(argc, argv, "T:Fr:m:n:xN:R:E:")) != -1) {
        switch (c) {
        case 'T':
            timeout = (unsigned)atoi(optarg);
            break;
        case 'F':
            options |= MAILPOOL_OPT_FREETHREAD;
            break;
        case 'r':
            j.env.relay = optarg;
            break;
        case 'm':
            j.env.mode = optarg;
            break;
        case 'N':
            j.env.notify = optarg;
            break;
        case 'R':
            j.env.ret = optarg;
            break;
        case 'E':
            j.env.envid = optarg;
            break;
        case 'n':
            count = atoi(optarg);
            break;
        case 'x':
            threaded = 1;
            break;
        default:
            return 2;
        }
    }
    if (argc - optind < 1) {
        fprintf(stderr, "usage: client_probe [opts] SOCKET|- [MSGFILE FROM RCPT...]\n");
        return 2;
    }
    sock = strcmp(argv[optind], "-") == 0 ? NULL : argv[optind];
    st = mailpool_open(sock, timeout, options, &j.mp);
    printf("open %s\n", status_name(st));
    if (st != MAILPOOL_OK) {
        print_reply("last", -1, mailpool_last_reply(NULL));
        return 0;
    }
    if (argc - optind >= 4) {
        j.msg = read_file(argv[optind + 1], &j.len);
        j.env.sender = argv[optind + 2];
        j.env.recipients = (const char *const *)&argv[optind + 3];
        j.env.nrecipients = (size_t)(argc - optind - 3);
        for (i = 0; i < count; i++) {
            if (threaded) {
                pthread_t t;

                pthread_create(&t, NULL, send_job, &j);
                pthread_join(t, NULL);
            } else {
                send_job(&j);
            }
            printf("send %s\n", status_name(j.st));
            for (size_t k = 0; k < j.res.nrecipients; k++)
                print_reply("rcpt", (long)k, &j.res.recipients[k]);
            print_reply("last", -1, mailpool_last_reply(j.mp));
            mailpool_result_free(&j.res);
        }
        free(j.msg);
    }
    mailpool_close(j.mp);
    return 0;
}
