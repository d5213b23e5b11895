/* Listening Unix-domain sockets. */
#ifndef MAILPOOL_UNIXSOCK_H
#define MAILPOOL_UNIXSOCK_H

#include <stddef.h>
#include <sys/types.h>

/*
 * Create, bind and listen on a Unix socket at path (a stale socket file is
 * replaced; anything else at that path is an error) with permissions `mode`
 * (e.g. 0666, 0660).  Returns a non-blocking, close-on-exec fd, or -1 with a
 * message in err.
 */
int unix_listen(const char *path, unsigned mode, char *err, size_t errlen);

/*
 * unix_listen(), and when has_group the socket file is given group `gid`
 * between bind() and listen(), so no client can connect before it has its
 * final owner.  Returns the fd, or -1 with a message in err (a failed chown
 * is an error: the caller decides whether to go on without the group).
 */
int unix_listen_group(const char *path, unsigned mode, int has_group, gid_t gid, char *err,
                      size_t errlen);

/*
 * Pausing a listener when accept() fails for want of descriptors or memory
 * (EMFILE, ENFILE, ENOBUFS, ENOMEM): the listening socket stays readable, so
 * without a pause the loop would spin at full CPU and log without end.  The
 * owner calls listen_pause_error() from its evconnlistener error callback;
 * accepting resumes after a short delay, and one log line marks each episode.
 */
struct event_base;
struct event;
struct evconnlistener;

struct listen_pause {
    struct evconnlistener *lev;
    struct event *timer;
    const char *what; /* "submission", "control": for the log */
    int stopped;      /* the owner stopped accepting for good: never resume */
    int paused;
};

int listen_pause_init(struct listen_pause *lp, struct event_base *base, struct evconnlistener *lev,
                      const char *what);
void listen_pause_error(struct listen_pause *lp);
/* From the accept callback: a connection came in, so an episode is over. */
void listen_pause_accepted(struct listen_pause *lp);
/* The owner stops accepting (shutdown): disable and never resume. */
void listen_pause_stop(struct listen_pause *lp);
void listen_pause_clear(struct listen_pause *lp);

#endif
