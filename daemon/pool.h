/*
 * Per-relay pools of upstream sessions.  A message handed to the pool goes
 * out on an idle session (most recently used first), or waits for one that
 * is being opened, up to pool.max_connections sessions per relay.  A
 * transaction that failed before its final dot is retried once on a fresh
 * session; one that failed after it is reported as "outcome unknown".
 */
#ifndef MAILPOOL_POOL_H
#define MAILPOOL_POOL_H

#include <stddef.h>

struct event_base;
struct evdns_base;
struct config;
struct relay_config;
struct message;
struct pool;
struct pool_job;

/* Called once per submitted message, with every recipient's result set. */
typedef void (*pool_done_cb)(struct message *m, void *arg);

/*
 * Pools for every relay of cfg (TLS contexts are made here).  NULL with a
 * message in err when a relay's TLS settings cannot be loaded.
 */
struct pool *pool_new(struct event_base *base, struct evdns_base *dns, const struct config *cfg,
                      char *err, size_t errlen);
/* Close every session (QUIT to idle ones); waiting messages get a 4xx. */
void pool_free(struct pool *p);

/*
 * Send m through relay rc.  cb runs later (never from inside this call).
 * Returns a handle for pool_cancel(), or NULL when out of memory.
 */
struct pool_job *pool_submit(struct pool *p, const struct relay_config *rc, struct message *m,
                             pool_done_cb cb, void *arg);

/*
 * The submitter went away: never call its callback.  The pool takes over
 * the message and frees it when the transaction ends.
 */
void pool_cancel(struct pool_job *job);

/* Counts for status output. */
size_t pool_sessions(const struct pool *p);
size_t pool_waiting(const struct pool *p);

/* Introspection for the control socket's "pool" and "status" commands. */
struct pool_relay_info {
    const char *name;
    size_t sessions; /* open or opening */
    size_t idle;
    size_t opening;
    size_t waiting;         /* messages waiting for a session */
    unsigned long opened;   /* sessions opened since start */
    unsigned long reused;   /* messages sent on a session that had sent one before */
    unsigned long failed;   /* sessions that failed (setup or later) */
    unsigned long messages; /* transactions finished */
    unsigned long retried;  /* transactions retried on a fresh session */
};

struct pool_session_info {
    const char *relay;
    const char *host;        /* "host:port" */
    const char *state;       /* upstream state name */
    const char *tls_version; /* NULL when plaintext */
    const char *tls_cipher;
    int tls_resumed;
    unsigned messages; /* transactions on this session */
    long age;          /* seconds since the session was created */
    long idle;         /* seconds idle, or -1 when not idle */
};

/* What a reload did to the relays. */
struct pool_reload_stats {
    size_t kept;    /* profile unchanged: warm sessions kept */
    size_t changed; /* profile changed: old sessions drain, new ones use the new profile */
    size_t added;
    size_t removed; /* drained; messages waiting for it got 451 4.3.0 */
};

/*
 * Switch to new_cfg (which must outlive the pool or the next reconfigure).
 * Relays whose profile is equal (relay_config_equal()) keep their sessions,
 * waiting messages and TLS context; changed and removed relays take no new
 * messages, QUIT their idle sessions and QUIT busy ones after their current
 * transaction; messages waiting for them move to the new relay of the same
 * name, or get 451 4.3.0 when it was removed.  Returns 0 with st filled in,
 * or -1 with a message in err (a relay's TLS settings cannot be loaded) and
 * nothing changed.
 */
int pool_reconfigure(struct pool *p, const struct config *new_cfg, struct pool_reload_stats *st,
                     char *err, size_t errlen);

/*
 * How many parts of the pool still read cfg: the live relays, and relays
 * retired by a reload whose sessions have not all finished.  A retired
 * config may be freed once this is 0 and the QUIT of its last sessions had
 * time to complete (upstream QUIT waits at most 2 seconds).
 */
size_t pool_config_users(const struct pool *p, const struct config *cfg);

/*
 * Settings for a probe session of the live relay named `relay` ("test
 * RELAY"): its profile, TLS context, HELO name, the pool's loop and
 * resolver, probe set, no host back-off shared with the pool.  The pointers
 * stay valid until the next pool_reconfigure().  Returns 0, or -1 when no
 * relay has that name.
 */
struct upstream_params;
int pool_probe_params(const struct pool *p, const char *relay, struct upstream_params *out);

size_t pool_relay_count(const struct pool *p);
void pool_relay_info(const struct pool *p, size_t i, struct pool_relay_info *out);
/* Call fn for every session of relay i (no session may be freed meanwhile). */
void pool_foreach_session(const struct pool *p, size_t i,
                          void (*fn)(const struct pool_session_info *si, void *arg), void *arg);

#endif
