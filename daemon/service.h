/*
 * The daemon's side of the service manager protocol (sd-daemon): sockets
 * passed by socket activation, state notifications, STATUS= and watchdog
 * pings.  Without libsystemd at build time every call is a harmless no-op
 * and the daemon binds its own sockets.
 */
#ifndef MAILPOOL_SERVICE_H
#define MAILPOOL_SERVICE_H

#include <stddef.h>

struct event_base;

/* Listening sockets handed over by the service manager; -1 when not passed. */
struct service_sockets {
    int submit_fd;
    int control_fd;
};

/*
 * Take the sockets passed with LISTEN_FDS/LISTEN_FDNAMES (and clear those
 * variables so children do not see them).  A descriptor named "submit" or
 * "control" is that socket; an unnamed one is recognised by its bound path
 * (submit_path, control_path).  Taken descriptors are made non-blocking and
 * close-on-exec.  Returns the number of sockets taken (0 when not
 * activated), or -1 with a message in err when a passed descriptor is not a
 * listening Unix stream socket, is passed twice, or cannot be placed.
 */
int service_listen_fds(const char *submit_path, const char *control_path,
                       struct service_sockets *out, char *err, size_t errlen);

/* Send one state line ("READY=1", "STOPPING=1", ...); no-op when not supervised. */
void service_notify(const char *state);

/*
 * RELOADING=1 with MONOTONIC_USEC= (what Type=notify-reload expects); send
 * READY=1 when the reload is over, whatever its outcome.
 */
void service_notify_reloading(void);

/* Fills buf (size len, NUL-terminated) with the one-line STATUS= text. */
typedef void (*service_status_fn)(char *buf, size_t len, void *arg);

struct service;

/*
 * Start the watchdog pings (every half of WATCHDOG_USEC, when WATCHDOG_PID
 * is unset or ours) and the STATUS= updates (once a second, sent only when
 * the text changed) on base.  Sets *out to NULL when no service manager
 * listens (NOTIFY_SOCKET unset) or libsystemd is not built in.  Returns 0,
 * or -1 when out of memory.
 */
int service_start(struct event_base *base, service_status_fn status, void *arg,
                  struct service **out);

/* Send the STATUS= text now if it changed (after a reload, at shutdown); sv may be NULL. */
void service_status_now(struct service *sv);

/* Stop the timers and free sv; sv may be NULL. */
void service_free(struct service *sv);

#endif
