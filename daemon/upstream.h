/*
 * One outbound SMTP session to a relay (RFC 5321), as an explicit state
 * machine: resolve -> connect -> (implicit TLS) -> greeting -> EHLO/HELO ->
 * (STARTTLS -> TLS -> EHLO) -> AUTH -> idle <-> transaction -> QUIT.
 * RFC 2920 (PIPELINING), RFC 3207 (STARTTLS), RFC 4954 (AUTH), RFC 8314.
 *
 * The owner (relay.c) creates a session, waits for UPSTREAM_READY, hands it
 * a message with upstream_send(), and gets UPSTREAM_TXN_DONE with the
 * per-recipient results written into the message.  Session-level failures
 * are reported as a reply to give the client (code, enhanced code, text).
 */
#ifndef MAILPOOL_UPSTREAM_H
#define MAILPOOL_UPSTREAM_H

#include <stddef.h>
#include <time.h>

struct event_base;
struct evdns_base;
struct relay_config;
struct tls_ctx;
struct message;
struct upstream;

enum upstream_event {
    UPSTREAM_READY,    /* established, or transaction finished: idle, may take a message */
    UPSTREAM_TXN_DONE, /* the transaction ended; see upstream_txn_outcome() */
    UPSTREAM_FAILED,   /* the session died while not in a transaction; free it */
};

enum txn_outcome {
    TXN_COMPLETE, /* every recipient has a result from the server (or a local refusal) */
    TXN_RETRY,    /* the session failed before the end of data was sent: nothing delivered */
    TXN_UNKNOWN,  /* the session failed after the end of data, before the reply */
};

typedef void (*upstream_cb)(struct upstream *u, enum upstream_event ev, void *arg);

struct upstream_params {
    struct event_base *base;
    struct evdns_base *dns;
    const struct relay_config *relay;
    struct tls_ctx *tls; /* NULL when the relay uses no TLS */
    const char *helo_name;
    size_t first_host; /* index into relay->hosts to try first */
    /*
     * Per-host back-off, relay->nhosts entries, owned by the caller: a host
     * that failed is skipped for UPSTREAM_HOST_BACKOFF seconds.  May be NULL.
     */
    time_t *host_down_until;
    /*
     * A probe ("test RELAY"): record the timing of each step, keep the EHLO
     * reply, and never resume a TLS session (so the certificate is seen).
     * The owner QUITs the session at UPSTREAM_READY.
     */
    int probe;
};

#define UPSTREAM_HOST_BACKOFF 60

/* Start a session (resolving and connecting asynchronously).  NULL on ENOMEM. */
struct upstream *upstream_new(const struct upstream_params *p, upstream_cb cb, void *arg);

/*
 * Free the session, closing the connection without QUIT.  Safe inside the
 * session's own callback (the memory goes when the callback returns).
 */
void upstream_free(struct upstream *u);

/*
 * Keepalive: send NOOP on an idle session.  UPSTREAM_READY follows the 250;
 * a failure gives UPSTREAM_FAILED.  Returns -1 if the session is not idle.
 */
int upstream_noop(struct upstream *u);

/* Send QUIT and free the session once the server answered or after a short wait. */
void upstream_quit(struct upstream *u);

/*
 * A reload replaced the session's relay profile by an equal one (see
 * relay_config_equal()): read settings from `relay` from now on.  The old
 * profile may be freed afterwards.
 */
void upstream_set_relay(struct upstream *u, const struct relay_config *relay);

/*
 * Hand an idle session one message: its recipients that have no result yet
 * (code 0), in as many transactions as rate.max_recipients or a 452 4.5.3
 * from the server make necessary; UPSTREAM_TXN_DONE comes once, after the
 * last.  With TXN_RETRY only the recipients of the transaction that failed
 * lost their results.  Returns 0, or -1 if the session is not idle.
 */
int upstream_send(struct upstream *u, struct message *m);

/* After UPSTREAM_TXN_DONE: the outcome, and the message (ownership stays with the caller). */
enum txn_outcome upstream_txn_outcome(const struct upstream *u);
struct message *upstream_txn_message(const struct upstream *u);

/* Whether the session can take another message (idle and healthy). */
int upstream_usable(const struct upstream *u);

/*
 * Why the session failed, as a reply for the client: a 4xx code, an
 * enhanced code and a text naming the relay, the host and the reason.
 */
int upstream_error_code(const struct upstream *u);
const char *upstream_error_ecode(const struct upstream *u);
const char *upstream_error(const struct upstream *u);

/* Introspection for logs and the control socket. */
const char *upstream_state_name(const struct upstream *u);
const char *upstream_host(const struct upstream *u); /* "host:port" being used */
size_t upstream_host_index(const struct upstream *u);
unsigned upstream_messages(const struct upstream *u);
const char *upstream_tls_version(const struct upstream *u);
const char *upstream_tls_cipher(const struct upstream *u);
int upstream_tls_resumed(const struct upstream *u);
time_t upstream_created(const struct upstream *u);

/*
 * Probe sessions only.  The steps so far, in order: name ("resolve",
 * "connect", "proxy", "tls", "greeting", "ehlo", "helo", "starttls",
 * "ehlo2", "auth"), the host:port it was for, and its duration in
 * microseconds (up to now for the current step).  Valid until the next
 * event of the session.
 */
struct upstream_step {
    const char *name;
    const char *host;
    long long usec;
};
size_t upstream_probe_steps(const struct upstream *u, struct upstream_step *out, size_t max);
/* After UPSTREAM_FAILED: the step that failed (a name as above). */
const char *upstream_probe_failed_step(const struct upstream *u);
/* The capability lines of the last EHLO reply (joined by '\n'), or NULL. */
const char *upstream_ehlo_text(const struct upstream *u);
/* The AUTH mechanism chosen ("PLAIN", ...), or NULL when no AUTH was tried. */
const char *upstream_auth_mech(const struct upstream *u);
/* The server certificate: see tls_conn_peer_info(); -1 on plaintext. */
struct tls_peer_info;
int upstream_tls_peer_info(const struct upstream *u, struct tls_peer_info *info);

#endif
