/*
 * Hands one received message to its relays: recipients routed to different
 * relays become one upstream transaction (relay mode) or one spool message
 * (queue mode) each, every part with its relay's address fixing applied to
 * its own copy; the per-recipient results are gathered back into the
 * original message, in the original recipient order.
 */
#ifndef MAILPOOL_DISPATCH_H
#define MAILPOOL_DISPATCH_H

#include <stddef.h>

struct event_base;
struct config;
struct pool;
struct queue;
struct message;
struct dispatch;

/* Called once, with every recipient's result set in m; m is the callee's to free. */
typedef void (*dispatch_done_cb)(struct message *m, void *arg);

/*
 * Send m: relays[i] is the index in cfg->relays of recipient i's relay.
 * The mode of each part is m->mode, or its relay's default.  Takes m over;
 * cb runs later, never from inside this call.  Returns a handle for
 * dispatch_cancel(), or NULL when out of memory (m is then still the
 * caller's and untouched).
 */
struct dispatch *dispatch_start(struct event_base *base, const struct config *cfg,
                                struct pool *pool, struct queue *queue, struct message *m,
                                const size_t *relays, dispatch_done_cb cb, void *arg);

/*
 * The submitter went away: cb is never called.  Parts with the pool finish
 * there (the pool frees them); parts being spooled carry on in the spool.
 */
void dispatch_cancel(struct dispatch *d);

#endif
