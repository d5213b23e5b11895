/*
 * One message in flight through the daemon: envelope, canonical body (CRLF
 * lines, no dot-stuffing) and one result per recipient.  Owned by whoever
 * holds it; the upstream session writes results into it.
 */
#ifndef MAILPOOL_MESSAGE_H
#define MAILPOOL_MESSAGE_H

#include <stddef.h>
#include <sys/types.h>

struct evbuffer;

#define MESSAGE_ID_LEN 16 /* hex characters */

struct rcpt_result {
    int code;       /* 0 while unknown */
    char ecode[16]; /* enhanced status code, always set together with code */
    char *text;     /* malloc'd, one line, printable */
};

struct message {
    char id[MESSAGE_ID_LEN + 1];
    char *sender; /* "" for <> */
    char **rcpts;
    size_t nrcpts;
    struct rcpt_result *results; /* nrcpts entries */
    struct evbuffer *body;       /* canonical text */
    size_t size;                 /* bytes in body */
    int eightbit;                /* body has bytes >= 0x80 (or BODY=8BITMIME was given) */
    int smtputf8;                /* SMTPUTF8 was given */
    char *relay;                 /* profile asked for with XRELAY=, or NULL */
    int mode;                    /* enum delivery_mode, or -1 for the relay's default */
    uid_t uid;                   /* submitting peer (SO_PEERCRED) */
    gid_t gid;
    pid_t pid;
};

/* A new empty message with a fresh unique id, or NULL when out of memory. */
struct message *message_new(void);
void message_free(struct message *m);

/* Append a recipient; returns 0, or -1 when out of memory. */
int message_add_rcpt(struct message *m, const char *addr);

/* Set recipient i's result (text is copied and made printable). */
void message_set_result(struct message *m, size_t i, int code, const char *ecode, const char *text);
/* Set the result of every recipient that has none yet. */
void message_set_pending_results(struct message *m, int code, const char *ecode, const char *text);
/* Forget all results (before a retry on another session). */
void message_clear_results(struct message *m);

/* The enhanced code implied by a reply code's class: "2.0.0", "4.0.0", "5.0.0". */
const char *message_default_ecode(int code);

#endif
