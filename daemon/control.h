/*
 * The control socket: operators and mailpoolctl send one request line per
 * command and get one line of JSON back.  Access is by peer credentials
 * (SO_PEERCRED): root, the daemon's own user, or the daemon's group.
 */
#ifndef MAILPOOL_CONTROL_H
#define MAILPOOL_CONTROL_H

#include <stddef.h>

struct event_base;
struct config;
struct pool;
struct queue;
struct submit_server;
struct control;

/*
 * Serve the control protocol on the listening socket fd (not owned; the
 * caller closes and unlinks it after control_free()).  cfg, pool, queue and
 * submit must outlive the control server (queue and submit may be NULL: the
 * commands that need them then answer with an error).  Returns NULL with a
 * message in err when out of memory or when the listener cannot be set up.
 */
struct control *control_new(struct event_base *base, const struct config *cfg, struct pool *pool,
                            struct queue *queue, struct submit_server *submit, int fd, char *err,
                            size_t errlen);

/* A reload: read settings from cfg from now on.  cfg must outlive ctl or the next call. */
void control_set_config(struct control *ctl, const struct config *cfg);

/*
 * The "reload" command calls fn: it returns 0 with st filled in, or -1 with
 * the reason (e.g. "FILE:LINE: message") in err; the running configuration
 * is then unchanged.
 */
struct pool_reload_stats;
typedef int (*control_reload_fn)(void *arg, struct pool_reload_stats *st, char *err, size_t errlen);
void control_set_reload(struct control *ctl, control_reload_fn fn, void *arg);

/* Close every control connection (unsent answers are dropped) and free. NULL is fine. */
void control_free(struct control *ctl);

#endif
