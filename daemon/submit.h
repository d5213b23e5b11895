/*
 * The submission socket: LMTP (RFC 2033) for local clients, with
 * PIPELINING, ENHANCEDSTATUSCODES, 8BITMIME, SMTPUTF8, SIZE, DSN and the
 * XRELAY / XMODE parameters.  A message is received completely, then handed to the
 * pool; one reply per accepted recipient carries that recipient's result.
 */
#ifndef MAILPOOL_SUBMIT_H
#define MAILPOOL_SUBMIT_H

#include <stddef.h>

struct event_base;
struct config;
struct pool;
struct queue;
struct spool;
struct submit_server;

/*
 * Serve LMTP on the listening socket fd (not owned): relay-mode messages go
 * to the pool, queue-mode ones to the queue.  Message data past
 * BODYFILE_SPILL_AT bytes is kept in a file from spool_tmpfile(spool)
 * while it arrives.  NULL on error.
 */
struct submit_server *submit_new(struct event_base *base, const struct config *cfg,
                                 struct pool *pool, struct queue *queue, struct spool *spool,
                                 int fd, char *err, size_t errlen);

/*
 * A reload: read settings from cfg from now on (clients already connected
 * included).  cfg must outlive the server or the next call.
 */
void submit_set_config(struct submit_server *srv, const struct config *cfg);

/* Stop accepting new clients (clients already connected carry on). */
void submit_stop_accepting(struct submit_server *srv);
/* Close every client and free the server. */
void submit_free(struct submit_server *srv);

size_t submit_clients(const struct submit_server *srv);
/* Clients in the middle of a transaction (MAIL given, or waiting for results). */
size_t submit_busy(const struct submit_server *srv);

#endif
