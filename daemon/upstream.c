/*
 * One outbound SMTP session to a relay: RFC 5321, RFC 2920 (PIPELINING),
 * RFC 3207 (STARTTLS), RFC 8314 (implicit TLS), RFC 4954 (AUTH).
 *
 * The flow reads top to bottom: upstream_enter() says what is sent on
 * entering each state, upstream_reply() handles each complete reply,
 * upstream_io() handles socket events, and upstream_set_state() is the only
 * place the state changes (and logs the change at debug level).
 */
#include "upstream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "body.h"
#include "config.h"
#include "ioev.h"
#include "log.h"
#include "message.h"
#include "metrics.h"
#include "sasl.h"
#include "secret.h"
#include "proxy.h"
#include "smtp_reply.h"
#include "spool.h"

enum upstream_state {
    US_RESOLVING,
    US_CONNECTING,
    US_PROXY,        /* SOCKS5 / HTTP CONNECT handshake with the tunnel's proxy */
    US_TLS_IMPLICIT, /* handshake right after connect */
    US_GREETING,
    US_EHLO,
    US_HELO,
    US_STARTTLS,
    US_TLS_STARTTLS, /* handshake after "220 ready to start TLS" */
    US_AUTH_SECRET,  /* waiting for password_command (secret.c) */
    US_AUTH,         /* AUTH sent; 334 challenges answered until 235 or a refusal */
    US_IDLE,
    US_NOOP, /* keepalive while idle */
    US_RSET,
    US_TXN,  /* MAIL, RCPTs and DATA sent (pipelined or one by one) */
    US_BODY, /* body and final dot being sent / awaiting the reply to the dot */
    US_QUIT,
    US_DEAD,
    US_LAST
};

static const char *const state_names[US_LAST] = {
    [US_RESOLVING] = "resolving",
    [US_CONNECTING] = "connecting",
    [US_PROXY] = "proxy",
    [US_TLS_IMPLICIT] = "tls-handshake",
    [US_GREETING] = "greeting",
    [US_EHLO] = "ehlo",
    [US_HELO] = "helo",
    [US_STARTTLS] = "starttls",
    [US_TLS_STARTTLS] = "starttls-handshake",
    [US_AUTH_SECRET] = "auth-secret",
    [US_AUTH] = "auth",
    [US_IDLE] = "idle",
    [US_NOOP] = "noop",
    [US_RSET] = "rset",
    [US_TXN] = "transaction",
    [US_BODY] = "data",
    [US_QUIT] = "quit",
    [US_DEAD] = "dead",
};

/* Body bytes encoded into the output buffer per write cycle. */
#define BODY_CHUNK (256 * 1024)
/* How long QUIT may wait for its reply. */
#define QUIT_WAIT_MS 2000

struct addr {
    struct sockaddr_storage ss;
    socklen_t len;
};

/*
 * Why the kick event (a zero timer, so nothing runs inside the caller) was
 * activated.  Each use sets its own reason, and the callback acts only when
 * the state still calls for it: one purpose is never taken for another.
 */
enum kick_reason {
    KICK_NONE,
    KICK_START_HOST, /* upstream_new(): resolve and connect the first host */
    KICK_TXN_LOCAL,  /* upstream_send() refused the message locally: finish it */
    KICK_DESYNC,     /* upstream_in_sync() saw an early reply: fail the session */
};

struct upstream {
    struct event_base *base;
    struct evdns_base *dns;
    const struct relay_config *relay;
    struct tls_ctx *tls;
    char *helo_name;
    time_t *host_down_until; /* per host, shared with the pool; may be NULL */
    upstream_cb cb;
    void *cb_arg;

    enum upstream_state state;
    struct ioev *io;
    struct event *kick; /* deferred work, so no callback runs inside the caller */
    enum kick_reason kick_why;
    struct evdns_getaddrinfo_request *dns_req;
    struct proxy_hs *proxy; /* the tunnel's handshake; NULL without a proxy */
    struct reply_parser parser;
    struct smtp_caps caps;

    /* Where we are in the relay's host list and in the current host's addresses. */
    size_t host_idx, hosts_tried;
    struct addr *addrs;
    size_t naddrs, addr_idx;
    char hostport[300];

    /* The current transaction, and the one just finished (for the owner). */
    struct message *msg;
    struct message *done_msg;
    size_t cmd_next;   /* next command to send: 0 MAIL, 1..n RCPT, n+1 DATA */
    size_t reply_next; /* next reply expected, same numbering */
    size_t accepted;   /* recipients accepted so far */
    int mail_failed;
    int dot_sent; /* the end of data ("." or the last BDAT byte) was queued */
    int bdat;     /* this transaction uses BDAT ... LAST (RFC 3030) instead of DATA */
    int dirty;    /* the last transaction did not end cleanly: RSET first */
    /*
     * The transaction was refused locally (SIZE, SMTPUTF8, ...): every
     * recipient has its result and nothing was sent.  Any reply now answers
     * nothing, and a failure of the session does not change that outcome.
     */
    int txn_local;
    enum txn_outcome outcome;
    /*
     * One message may take several transactions (rate.max_recipients, or a
     * 452 4.5.3 "too many recipients"): the recipients of the current one, as
     * indexes into msg->rcpts, and which of them the server accepted.  The
     * RCPT numbering above counts within txn_rcpt.
     */
    size_t *txn_rcpt;
    unsigned char *txn_ok;
    size_t txn_n, txn_cap;
    size_t rcpt_limit; /* recipients the server took before a 452 4.5.3; 0 = not seen */
    struct body_encoder enc;
    size_t body_off;

    unsigned messages;
    time_t created;
    int in_cb;
    int freed;
    /*
     * The server sent a reply before the command it would answer (see
     * upstream_in_sync()): nothing more is sent, and the kick event
     * (KICK_DESYNC) fails the session from the loop.
     */
    int desync;

    /* AUTH (RFC 4954): the exchange, the secret it uses, and whether it was retried. */
    struct sasl *sasl;
    struct secret_req *secret_req;
    char *secret;
    unsigned auth_mech;
    int auth_retried; /* the token was refreshed and AUTH sent again once */

    int err_code;
    char err_ecode[16];
    char error[512];

    /* Probe sessions ("test RELAY"): see probe_mark(). */
    int probe;
    struct probe_step *steps;
    size_t nsteps, steps_cap;
    int probe_tls_again;      /* STARTTLS was done: the next EHLO is "ehlo2" */
    const char *probe_failed; /* the step that failed */
    char *ehlo_text;
};

struct probe_step {
    const char *name;
    char *host;
    struct timespec start, end;
    int ended;
};

static void upstream_enter(struct upstream *u);
static void txn_forget(struct upstream *u);
static void upstream_io(struct ioev *io, enum ioev_event ev, void *arg);
static void upstream_next_address(struct upstream *u);
static void upstream_start_host(struct upstream *u);
static void upstream_reply_error(struct upstream *u, const char *what, const struct smtp_reply *r);

static const char *probe_step_name(const struct upstream *u, enum upstream_state s)
{
    switch (s) {
    case US_RESOLVING:
        return "resolve";
    case US_CONNECTING:
        return "connect";
    case US_PROXY:
        return "proxy";
    case US_TLS_IMPLICIT:
    case US_TLS_STARTTLS:
        return "tls";
    case US_GREETING:
        return "greeting";
    case US_EHLO:
        return u->probe_tls_again ? "ehlo2" : "ehlo";
    case US_HELO:
        return "helo";
    case US_STARTTLS:
        return "starttls";
    case US_AUTH_SECRET: /* getting the secret counts as part of AUTH */
    case US_AUTH:
        return "auth";
    default:
        return NULL; /* established: the probe is over */
    }
}

/*
 * A probe records when each step begins and ends, on the state changes:
 * the step of the state left ends, the one of the state entered begins
 * (AUTH's exchange and its secret are one step).  An allocation failure
 * loses the timing, never the probe.
 */
static void probe_mark(struct upstream *u, enum upstream_state s)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (s == US_CONNECTING)
        u->probe_tls_again = 0;
    if (s == US_DEAD && u->state != US_QUIT && u->probe_failed == NULL) {
        u->probe_failed = probe_step_name(u, u->state);
        if (u->probe_failed == NULL)
            u->probe_failed = state_names[u->state];
    }
    const char *name = probe_step_name(u, s);
    struct probe_step *last = u->nsteps ? &u->steps[u->nsteps - 1] : NULL;
    if (last && !last->ended) {
        if (name && strcmp(name, last->name) == 0 && strcmp(last->host, u->hostport) == 0)
            return;
        last->end = now;
        last->ended = 1;
    }
    if (s == US_TLS_STARTTLS)
        u->probe_tls_again = 1;
    if (name == NULL)
        return;
    if (u->steps == NULL || u->nsteps == u->steps_cap) {
        size_t cap = u->steps_cap ? 2 * u->steps_cap : 16;
        struct probe_step *grown = realloc(u->steps, cap * sizeof(*grown));
        if (grown == NULL)
            return;
        u->steps = grown;
        u->steps_cap = cap;
    }
    struct probe_step *st = &u->steps[u->nsteps];
    if ((st->host = strdup(u->hostport)) == NULL)
        return;
    st->name = name;
    st->start = now;
    st->ended = 0;
    u->nsteps++;
}

static void upstream_set_state(struct upstream *u, enum upstream_state s)
{
    if (u->probe)
        probe_mark(u, s);
    log_debug("upstream relay=%s host=%s state=%s->%s", u->relay->name, u->hostport,
              state_names[u->state], state_names[s]);
    u->state = s;
}

static void upstream_auth_clear(struct upstream *u)
{
    sasl_end(u->sasl);
    u->sasl = NULL;
    secret_cancel(u->secret_req);
    u->secret_req = NULL;
    secret_free(u->secret);
    u->secret = NULL;
}

static void upstream_really_free(struct upstream *u)
{
    if (u->dns_req)
        evdns_getaddrinfo_cancel(u->dns_req); /* its callback sees u->freed */
    if (u->io)
        ioev_free(u->io);
    if (u->kick)
        event_free(u->kick);
    reply_parser_reset(&u->parser);
    upstream_auth_clear(u);
    free(u->txn_rcpt);
    free(u->txn_ok);
    free(u->addrs);
    free(u->helo_name);
    for (size_t i = 0; i < u->nsteps; i++)
        free(u->steps[i].host);
    free(u->steps);
    free(u->ehlo_text);
    if (u->proxy)
        explicit_bzero(u->proxy, sizeof(*u->proxy));
    free(u->proxy);
    free(u);
}

/*
 * Tell the owner.  Returns 1 when the owner freed the session inside the
 * callback: the caller must then return at once without touching u.
 */
static int upstream_notify(struct upstream *u, enum upstream_event ev)
{
    u->in_cb++;
    u->cb(u, ev, u->cb_arg);
    u->in_cb--;
    if (u->freed && u->in_cb == 0) {
        upstream_really_free(u);
        return 1;
    }
    return u->freed;
}

static unsigned phase_ms(unsigned seconds)
{
    return seconds * 1000u;
}

static void upstream_timeout(struct upstream *u, unsigned seconds)
{
    if (u->io)
        ioev_set_timeout(u->io, phase_ms(seconds));
}

/* Record why the session failed, as a reply for the client. */
static void upstream_set_error(struct upstream *u, int code, const char *ecode, const char *fmt,
                               ...) __attribute__((format(printf, 4, 5)));
static void upstream_set_error(struct upstream *u, int code, const char *ecode, const char *fmt,
                               ...)
{
    char why[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    u->err_code = code;
    snprintf(u->err_ecode, sizeof(u->err_ecode), "%s", ecode);
    snprintf(u->error, sizeof(u->error), "relay %s, host %s: %s", u->relay->name, u->hostport, why);
}

/*
 * A reply that breaks the protocol (malformed, of a class the command cannot
 * have, or early).  Once the end of data was sent the server may have taken
 * the message whatever it says now: the client is told the outcome is unknown.
 */
static void upstream_protocol_error(struct upstream *u, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void upstream_protocol_error(struct upstream *u, const char *fmt, ...)
{
    char why[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    upstream_set_error(
        u, 451, "4.5.0", "protocol error: %s%s", why,
        u->msg && u->dot_sent ? "; outcome unknown, the message may have been delivered" : "");
}

static void upstream_kick(struct upstream *u, enum kick_reason why)
{
    u->kick_why = why;
    event_active(u->kick, EV_TIMEOUT, 0);
}

/*
 * The session failed, or starts over on the next address: no deferred work
 * of what it was doing may run any more, and the next address starts in sync.
 */
static void upstream_kick_clear(struct upstream *u)
{
    u->desync = 0;
    u->kick_why = KICK_NONE;
    if (u->kick)
        event_del(u->kick);
}

/* How much buffered input upstream_buffered_421() looks at. */
#define BUFFERED_421_MAX (16 * 1024)

/*
 * A complete 421 already waiting (typically right behind a good reply, in
 * the same write) is the server closing the session rather than a reply to
 * the wrong command: the error says so, as for any 421.  Returns 1 when the
 * error was set.
 */
static int upstream_buffered_421(struct upstream *u)
{
    struct evbuffer *in = ioev_input(u->io);
    size_t len = evbuffer_get_length(in);
    if (reply_parser_pending(&u->parser) || len < 4)
        return 0;
    if (len > BUFFERED_421_MAX)
        len = BUFFERED_421_MAX;
    const char *data = (const char *)evbuffer_pullup(in, (ev_ssize_t)len);
    if (data == NULL || memcmp(data, "421", 3) != 0)
        return 0;
    struct reply_parser p;
    struct smtp_reply r;
    enum reply_status st;
    memset(&r, 0, sizeof(r));
    reply_parser_init(&p);
    reply_parser_feed(&p, data, len, &st, &r);
    int is421 = st == REPLY_COMPLETE && r.code == 421;
    if (is421)
        upstream_reply_error(u, "server closed the session", &r);
    if (st == REPLY_COMPLETE)
        smtp_reply_clear(&r);
    reply_parser_reset(&p);
    return is421;
}

/*
 * Before a command that must wait for the previous reply, and before the
 * message data after 354, nothing may be waiting from the server: a reply
 * that is already here answers a command not sent yet (an extra or
 * unsolicited reply), and every later reply would be taken for the answer
 * to the wrong command -- a 250 meant for RCPT read as the answer to DATA.
 * Such a session is finished: nothing more is sent on it, and it fails from
 * the loop (never inside the owner's callback that may have called us).
 * Returns 1 when in sync.
 */
static int upstream_in_sync(struct upstream *u)
{
    if (u->desync)
        return 0;
    if (evbuffer_get_length(ioev_input(u->io)) == 0 && !reply_parser_pending(&u->parser))
        return 1;
    u->desync = 1;
    if (!upstream_buffered_421(u))
        upstream_protocol_error(u, "the server replied to a command before it was sent "
                                   "(extra or unsolicited reply); session out of sync");
    upstream_kick(u, KICK_DESYNC);
    return 0;
}

/*
 * The session is over.  A transaction in progress ends with TXN_RETRY when
 * the final dot was not sent yet (nothing can have been delivered) and
 * TXN_UNKNOWN after it, or TXN_COMPLETE when it was refused locally (its
 * results stand); otherwise the owner gets UPSTREAM_FAILED.
 */
static void upstream_fail(struct upstream *u)
{
    char esc[600];
    upstream_kick_clear(u);
    log_escape(u->error, strlen(u->error), esc, sizeof(esc));
    log_warn("upstream relay=%s host=%s state=%s error=\"%s\"", u->relay->name, u->hostport,
             state_names[u->state], esc);
    int in_txn = u->msg != NULL;
    upstream_set_state(u, US_DEAD);
    if (u->io) {
        ioev_free(u->io);
        u->io = NULL;
    }
    if (in_txn) {
        /* A local refusal stands: nothing of it was sent, its results are set. */
        if (u->txn_local)
            u->outcome = TXN_COMPLETE;
        else
            u->outcome = u->dot_sent ? TXN_UNKNOWN : TXN_RETRY;
        u->txn_local = 0;
        if (u->outcome == TXN_RETRY)
            txn_forget(u);
        u->done_msg = u->msg;
        u->msg = NULL;
        upstream_notify(u, UPSTREAM_TXN_DONE);
    } else {
        upstream_notify(u, UPSTREAM_FAILED);
    }
}

/*
 * A failure while setting up the session (connect, TLS, greeting): move on
 * to the next address, then the next host, before giving up.
 */
static void upstream_setup_failed(struct upstream *u)
{
    char esc[600];
    upstream_kick_clear(u);
    log_escape(u->error, strlen(u->error), esc, sizeof(esc));
    if (u->io) {
        ioev_free(u->io);
        u->io = NULL;
    }
    reply_parser_reset(&u->parser);
    memset(&u->caps, 0, sizeof(u->caps));
    if (u->addr_idx + 1 < u->naddrs) {
        log_info("upstream relay=%s host=%s error=\"%s\" trying next address", u->relay->name,
                 u->hostport, esc);
        u->addr_idx++;
        upstream_next_address(u);
        return;
    }
    if (u->host_down_until)
        u->host_down_until[u->host_idx] = time(NULL) + UPSTREAM_HOST_BACKOFF;
    if (u->hosts_tried + 1 < u->relay->nhosts) {
        log_info("upstream relay=%s host=%s error=\"%s\" trying next host", u->relay->name,
                 u->hostport, esc);
        u->hosts_tried++;
        u->host_idx = (u->host_idx + 1) % u->relay->nhosts;
        upstream_start_host(u);
        return;
    }
    upstream_fail(u);
}

static void upstream_send_line(struct upstream *u, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void upstream_send_line(struct upstream *u, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    evbuffer_add_vprintf(ioev_output(u->io), fmt, ap);
    va_end(ap);
    evbuffer_add(ioev_output(u->io), "\r\n", 2);
}

/* ---- resolving and connecting ---------------------------------------- */

static void upstream_connect(struct upstream *u)
{
    char err[256];
    struct addr *a = &u->addrs[u->addr_idx];
    if (u->io != NULL) {
        /* Never two connections: the old one would live on, calling back into u. */
        log_error("upstream relay=%s host=%s state=%s connecting with a connection open; "
                  "closing it",
                  u->relay->name, u->hostport, state_names[u->state]);
        ioev_free(u->io);
        u->io = NULL;
        reply_parser_reset(&u->parser);
    }
    upstream_set_state(u, US_CONNECTING);
    u->io =
        ioev_connect(u->base, (struct sockaddr *)&a->ss, a->len, upstream_io, u, err, sizeof(err));
    if (u->io == NULL) {
        upstream_set_error(u, 451, "4.4.1", "cannot connect: %s", err);
        upstream_setup_failed(u);
        return;
    }
    upstream_timeout(u, u->relay->timeouts.connect);
}

static void upstream_next_address(struct upstream *u)
{
    const struct relay_host *h = &u->relay->hosts[u->host_idx];
    struct addr *a = &u->addrs[u->addr_idx];
    char ip[INET6_ADDRSTRLEN] = "?";
    if (a->ss.ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&a->ss)->sin6_addr, ip, sizeof(ip));
    else
        inet_ntop(AF_INET, &((struct sockaddr_in *)&a->ss)->sin_addr, ip, sizeof(ip));
    log_debug("upstream relay=%s host=%s:%u address=%s", u->relay->name, h->host, h->port, ip);
    upstream_connect(u);
}

/* Order the addresses: IPv4 first unless prefer_ipv6 (stable otherwise). */
static void order_addresses(struct upstream *u)
{
    int want6 = (u->relay->options & RELAY_OPT_PREFER_IPV6) != 0;
    struct addr *sorted = malloc(u->naddrs * sizeof(*sorted));
    if (sorted == NULL)
        return;
    size_t n = 0;
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < u->naddrs; i++) {
            int is6 = u->addrs[i].ss.ss_family == AF_INET6;
            if ((pass == 0) == (is6 == want6))
                sorted[n++] = u->addrs[i];
        }
    free(u->addrs);
    u->addrs = sorted;
}

/*
 * Where the TCP connection goes: the relay host, or with "proxy" the proxy,
 * which is resolved and tried address by address the same way.
 */
static const char *connect_host(const struct upstream *u)
{
    const struct relay_config *rc = u->relay;
    return rc->proxy_kind != PROXY_NONE ? rc->proxy_host : rc->hosts[u->host_idx].host;
}

static uint16_t connect_port(const struct upstream *u)
{
    const struct relay_config *rc = u->relay;
    return rc->proxy_kind != PROXY_NONE ? rc->proxy_port : rc->hosts[u->host_idx].port;
}

static void upstream_resolved(int result, struct evutil_addrinfo *res, void *arg)
{
    struct upstream *u = arg;
    u->dns_req = NULL;
    if (result == EVUTIL_EAI_CANCEL || u->freed) {
        if (res)
            evutil_freeaddrinfo(res);
        return;
    }
    const char *chost = connect_host(u);
    uint16_t cport = connect_port(u);
    if (result != 0) {
        upstream_set_error(u, 451, "4.4.3", "cannot resolve %s%s: %s",
                           u->relay->proxy_kind != PROXY_NONE ? "proxy " : "", chost,
                           evutil_gai_strerror(result));
        upstream_setup_failed(u);
        return;
    }
    size_t n = 0;
    for (struct evutil_addrinfo *ai = res; ai; ai = ai->ai_next)
        n++;
    free(u->addrs);
    u->addrs = calloc(n ? n : 1, sizeof(*u->addrs));
    u->naddrs = 0;
    for (struct evutil_addrinfo *ai = res; ai && u->addrs; ai = ai->ai_next) {
        if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
            continue;
        struct addr *a = &u->addrs[u->naddrs++];
        memcpy(&a->ss, ai->ai_addr, ai->ai_addrlen);
        a->len = (socklen_t)ai->ai_addrlen;
        if (ai->ai_family == AF_INET)
            ((struct sockaddr_in *)&a->ss)->sin_port = htons(cport);
        else
            ((struct sockaddr_in6 *)&a->ss)->sin6_port = htons(cport);
    }
    evutil_freeaddrinfo(res);
    if (u->naddrs == 0) {
        upstream_set_error(u, 451, "4.4.3", "%s has no usable address", chost);
        upstream_setup_failed(u);
        return;
    }
    order_addresses(u);
    u->addr_idx = 0;
    upstream_next_address(u);
}

static void upstream_start_host(struct upstream *u)
{
    const struct relay_host *h = &u->relay->hosts[u->host_idx];
    snprintf(u->hostport, sizeof(u->hostport), "%s:%u", h->host, h->port);
    upstream_set_state(u, US_RESOLVING);
    struct evutil_addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    /*
     * No AI_ADDRCONFIG: libevent decides "no IPv6" from a probe that fails on
     * hosts with only ULA or loopback IPv6, which would lose IPv6-only relays.
     * An IPv6 address on a host without IPv6 fails at connect at once and the
     * next address is tried, so prefer_ipv6 stays harmless there.
     */
    /* May call upstream_resolved() at once for address literals. */
    u->dns_req = evdns_getaddrinfo(u->dns, connect_host(u), NULL, &hints, upstream_resolved, u);
}

/* ---- TLS ---------------------------------------------------------------- */

static void upstream_start_tls(struct upstream *u, enum upstream_state s)
{
    char err[256];
    const struct relay_host *h = &u->relay->hosts[u->host_idx];
    const char *name = u->relay->tls_server_name ? u->relay->tls_server_name : h->host;
    upstream_set_state(u, s);
    /* A probe must see the certificate: no resumed session. */
    const char *session_key = u->probe ? NULL : u->hostport;
    if (u->tls == NULL || ioev_start_tls(u->io, u->tls, name, session_key, err, sizeof(err)) != 0) {
        upstream_set_error(u, 451, "4.7.5", "cannot start TLS: %s",
                           u->tls ? err : "no TLS context");
        upstream_setup_failed(u);
        return;
    }
    upstream_timeout(u, u->relay->timeouts.greeting);
}

/* ---- transactions ------------------------------------------------------- */

static int needs_smtputf8(const struct message *m)
{
    if (m->smtputf8)
        return 1;
    for (const char *p = m->sender; *p; p++)
        if ((unsigned char)*p >= 0x80)
            return 1;
    for (size_t i = 0; i < m->nrcpts; i++)
        for (const char *p = m->rcpts[i]; *p; p++)
            if ((unsigned char)*p >= 0x80)
                return 1;
    return 0;
}

static void txn_send_body(struct upstream *u);

static void txn_send_command(struct upstream *u, size_t k)
{
    struct message *m = u->msg;
    int dsn = (u->caps.flags & CAP_DSN) != 0;
    if (k == 0) {
        char params[256] = "";
        size_t o = 0;
        if (u->caps.flags & CAP_SIZE)
            o += (size_t)snprintf(params + o, sizeof(params) - o, " SIZE=%zu", m->size);
        if (m->eightbit && (u->caps.flags & CAP_8BITMIME))
            o += (size_t)snprintf(params + o, sizeof(params) - o, " BODY=8BITMIME");
        if (needs_smtputf8(m))
            o += (size_t)snprintf(params + o, sizeof(params) - o, " SMTPUTF8");
        /* RFC 3461: DSN parameters go on only to a relay that offers DSN. */
        if (dsn && m->ret)
            o += (size_t)snprintf(params + o, sizeof(params) - o, " RET=%s",
                                  m->ret == 2 ? "HDRS" : "FULL");
        if (dsn && m->envid)
            snprintf(params + o, sizeof(params) - o, " ENVID=%s", m->envid);
        upstream_send_line(u, "MAIL FROM:<%s>%s", m->sender, params);
    } else if (k <= u->txn_n) {
        size_t i = u->txn_rcpt[k - 1];
        const struct rcpt_dsn *d = m->dsn ? &m->dsn[i] : NULL;
        char params[640] = "";
        if (dsn && d && (d->notify || d->orcpt)) {
            size_t o = 0;
            if (d->notify & SPOOL_NOTIFY_NEVER) {
                o += (size_t)snprintf(params, sizeof(params), " NOTIFY=NEVER");
            } else if (d->notify) {
                const char *sep = " NOTIFY=";
                static const struct {
                    unsigned bit;
                    const char *word;
                } words[] = {{SPOOL_NOTIFY_SUCCESS, "SUCCESS"},
                             {SPOOL_NOTIFY_FAILURE, "FAILURE"},
                             {SPOOL_NOTIFY_DELAY, "DELAY"}};
                for (size_t w = 0; w < sizeof(words) / sizeof(words[0]); w++)
                    if (d->notify & words[w].bit) {
                        o += (size_t)snprintf(params + o, sizeof(params) - o, "%s%s", sep,
                                              words[w].word);
                        sep = ",";
                    }
            }
            if (d->orcpt)
                snprintf(params + o, sizeof(params) - o, " ORCPT=%s", d->orcpt);
        }
        upstream_send_line(u, "RCPT TO:<%s>%s", m->rcpts[i], params);
    } else if (u->bdat) {
        /* RFC 3030: one chunk with the whole (canonical, unstuffed) message. */
        upstream_send_line(u, "BDAT %zu LAST", m->size);
        u->body_off = 0;
        txn_send_body(u);
    } else {
        upstream_send_line(u, "DATA");
    }
}

/*
 * Send what may be sent now: with PIPELINING every command at once (one
 * write), otherwise the next one after the previous reply.
 */
static void txn_send_more(struct upstream *u)
{
    size_t last = u->txn_n + 1;
    int pipelining = (u->caps.flags & CAP_PIPELINING) != 0;
    if (u->cmd_next <= last && (pipelining || u->cmd_next == u->reply_next) && !upstream_in_sync(u))
        return;
    while (u->cmd_next <= last && (pipelining || u->cmd_next == u->reply_next)) {
        txn_send_command(u, u->cmd_next);
        u->cmd_next++;
    }
    ioev_flush(u->io);
    upstream_timeout(u, u->relay->timeouts.command);
}

/*
 * Queue the next part of the body: dot-stuffed, and the final dot after the
 * last part, for DATA; as it is for BDAT.  Called again on IOEV_FLUSHED, so a
 * large message never sits in the output buffer whole.
 */
static void txn_send_body(struct upstream *u)
{
    struct message *m = u->msg;
    struct evbuffer *out = ioev_output(u->io);
    size_t want = m->size - u->body_off;
    if (want > BODY_CHUNK)
        want = BODY_CHUNK;
    if (want > 0) {
        struct evbuffer_ptr pos;
        struct evbuffer_iovec vec[16];
        evbuffer_ptr_set(m->body, &pos, u->body_off, EVBUFFER_PTR_SET);
        int n = evbuffer_peek(m->body, (ev_ssize_t)want, &pos, vec, 16);
        size_t done = 0;
        for (int i = 0; i < n && i < 16 && done < want; i++) {
            size_t len = vec[i].iov_len;
            if (len > want - done)
                len = want - done;
            if (u->bdat) {
                if (evbuffer_add(out, vec[i].iov_base, len) != 0)
                    break;
            } else {
                struct evbuffer_iovec w;
                if (evbuffer_reserve_space(out, (ev_ssize_t)(2 * len + 2), &w, 1) < 1)
                    break;
                w.iov_len = body_encode(&u->enc, vec[i].iov_base, len, w.iov_base);
                evbuffer_commit_space(out, &w, 1);
            }
            done += len;
        }
        u->body_off += done;
    }
    if (u->body_off >= m->size) {
        if (!u->bdat) {
            char end[8];
            size_t n = body_encode_end(&u->enc, end);
            evbuffer_add(out, end, n);
        }
        u->dot_sent = 1;
        ioev_flush(u->io);
        upstream_timeout(u, u->relay->timeouts.data_end);
    } else {
        ioev_flush(u->io);
        upstream_timeout(u, u->relay->timeouts.data_block);
    }
}

/* Results for the recipients of this transaction: the accepted ones only, or all still open. */
static void txn_set_results(struct upstream *u, int accepted_only, int code, const char *ecode,
                            const char *text)
{
    struct message *m = u->msg;
    for (size_t j = 0; j < u->txn_n; j++) {
        size_t i = u->txn_rcpt[j];
        if (accepted_only ? u->txn_ok[j] : m->results[i].code == 0)
            message_set_result(m, i, code, ecode, text);
    }
}

/* The session died before the end of data: nothing of this transaction happened. */
static void txn_forget(struct upstream *u)
{
    struct message *m = u->msg;
    for (size_t j = 0; j < u->txn_n; j++) {
        struct rcpt_result *r = &m->results[u->txn_rcpt[j]];
        free(r->text);
        memset(r, 0, sizeof(*r));
    }
}

/*
 * Pick the recipients of the next transaction: those without a result yet,
 * at most rate.max_recipients of them (or as many as the server took before
 * it said 452 4.5.3).  Returns how many, or -1 when out of memory.
 */
static long txn_plan(struct upstream *u)
{
    struct message *m = u->msg;
    if (u->txn_cap < m->nrcpts) {
        size_t *idx = realloc(u->txn_rcpt, m->nrcpts * sizeof(*idx));
        if (idx == NULL)
            return -1;
        u->txn_rcpt = idx;
        unsigned char *ok = realloc(u->txn_ok, m->nrcpts);
        if (ok == NULL)
            return -1;
        u->txn_ok = ok;
        u->txn_cap = m->nrcpts;
    }
    size_t limit = u->relay->budget.max_recipients;
    if (u->rcpt_limit > 0 && (limit == 0 || u->rcpt_limit < limit))
        limit = u->rcpt_limit;
    u->txn_n = 0;
    for (size_t i = 0; i < m->nrcpts && (limit == 0 || u->txn_n < limit); i++)
        if (m->results[i].code == 0)
            u->txn_rcpt[u->txn_n++] = i;
    if (u->txn_cap > 0)
        memset(u->txn_ok, 0, u->txn_cap);
    u->cmd_next = u->reply_next = 0;
    u->accepted = 0;
    u->mail_failed = 0;
    u->dot_sent = 0;
    u->txn_local = 0;
    /* BDAT only where the whole envelope and chunk can go out in one burst. */
    u->bdat = (u->caps.flags & CAP_CHUNKING) && (u->caps.flags & CAP_PIPELINING);
    body_encoder_init(&u->enc);
    return (long)u->txn_n;
}

/* Start the transaction planned by txn_plan(), after an RSET when the last one was unclean. */
static void txn_start(struct upstream *u)
{
    if (u->dirty) {
        upstream_set_state(u, US_RSET);
        if (!upstream_in_sync(u))
            return;
        upstream_send_line(u, "RSET");
        ioev_flush(u->io);
        upstream_timeout(u, u->relay->timeouts.command);
        return;
    }
    upstream_set_state(u, US_TXN);
    txn_send_more(u);
}

/*
 * After one transaction of a message: recipients that were left out (over
 * max_recipients, or deferred by a 452 4.5.3) go in the next transaction on
 * this session.  Returns 1 when one was started.
 */
static int txn_next(struct upstream *u)
{
    if (u->mail_failed || u->io == NULL)
        return 0;
    size_t left = 0;
    for (size_t i = 0; i < u->msg->nrcpts; i++)
        left += u->msg->results[i].code == 0;
    if (left == 0)
        return 0;
    long n = txn_plan(u);
    if (n <= 0)
        return 0; /* cannot happen: the arrays already hold nrcpts */
    log_info("upstream relay=%s host=%s msg id=%s next transaction with %ld of the %zu "
             "recipients left",
             u->relay->name, u->hostport, u->msg->id, n, left);
    txn_start(u);
    return 1;
}

static void txn_finish(struct upstream *u, int clean)
{
    u->dirty = !clean;
    u->messages++;
    u->txn_local = 0;
    if (txn_next(u))
        return;
    u->outcome = TXN_COMPLETE;
    u->done_msg = u->msg;
    u->msg = NULL;
    upstream_set_state(u, US_IDLE);
    ioev_set_timeout(u->io, 0);
    /* The owner may hand us the next message from inside the callback. */
    upstream_notify(u, UPSTREAM_TXN_DONE);
}

static void reply_text(const struct smtp_reply *r, char *out, size_t outlen)
{
    /* One line for the client: the lines of a multiline reply joined by spaces. */
    snprintf(out, outlen, "%s", r->text);
    for (char *p = out; *p; p++)
        if (*p == '\n')
            *p = ' ';
}

static void txn_reply(struct upstream *u, const struct smtp_reply *r)
{
    struct message *m = u->msg;
    char text[1024];
    reply_text(r, text, sizeof(text));
    size_t k = u->reply_next++;

    /*
     * MAIL and RCPT have no intermediate reply, DATA's is 354 and nothing
     * else, and the final reply for the message is never a 3xx: anything
     * else means server and client no longer agree on where they are.
     */
    int final = k > u->txn_n;
    int bad_class = final && !u->bdat ? r->code / 100 < 4 && r->code != 354 : r->code / 100 == 3;
    if (bad_class) {
        const char *cmd = k == 0 ? "MAIL" : k <= u->txn_n ? "RCPT" : u->bdat ? "BDAT" : "DATA";
        upstream_protocol_error(u, "%d reply to %s%s", r->code, cmd,
                                final && !u->bdat ? " (354 expected)" : "");
        upstream_fail(u);
        return;
    }

    if (k == 0) { /* MAIL */
        if (r->code / 100 != 2) {
            /* The sender is refused: every recipient of the message gets this. */
            u->mail_failed = 1;
            message_set_pending_results(m, r->code, r->ecode, text);
        }
    } else if (k <= u->txn_n) { /* RCPT */
        if (u->mail_failed) {
            ; /* results already set from the MAIL reply */
        } else if (r->code / 100 == 2) {
            u->accepted++;
            u->txn_ok[k - 1] = 1;
        } else if (r->code == 452 && u->accepted > 0 &&
                   (r->ecode[0] == '\0' || strcmp(r->ecode, "4.5.3") == 0)) {
            /*
             * RFC 5321 4.5.3.1.10: the server's recipient limit.  Deliver to
             * those accepted and send the rest in the next transaction; the
             * recipient stays without a result until then.  Without
             * pipelining, stop sending RCPTs now (they would get 452 too).
             */
            if (u->rcpt_limit == 0 || u->accepted < u->rcpt_limit)
                u->rcpt_limit = u->accepted;
            if (!(u->caps.flags & CAP_PIPELINING))
                u->txn_n = k;
        } else {
            message_set_result(m, u->txn_rcpt[k - 1], r->code, r->ecode, text);
        }
    } else if (u->bdat) { /* BDAT ... LAST: the final reply for the message */
        if (!u->dot_sent) {
            upstream_reply_error(u, "reply to BDAT before all of its data was sent", r);
            upstream_fail(u);
            return;
        }
        if (u->accepted > 0 && !u->mail_failed)
            txn_set_results(u, 1, r->code, r->ecode, text);
        txn_finish(u, u->accepted > 0 && !u->mail_failed && r->code / 100 == 2);
        return;
    } else { /* DATA */
        if (r->code == 354 && !upstream_in_sync(u))
            return;
        if (r->code == 354 && u->accepted > 0 && !u->mail_failed) {
            upstream_set_state(u, US_BODY);
            body_encoder_init(&u->enc);
            u->body_off = 0;
            txn_send_body(u);
            return;
        }
        if (r->code == 354) {
            /* RFC 2920: DATA accepted though no recipient was; send an empty body. */
            evbuffer_add(ioev_output(u->io), ".\r\n", 3);
            ioev_flush(u->io);
            u->dot_sent = 1;
            upstream_set_state(u, US_BODY);
            return;
        }
        txn_set_results(u, 1, r->code, r->ecode, text);
        txn_finish(u, 0);
        return;
    }

    /* Without pipelining, stop early when nothing more can succeed. */
    int pipelining = (u->caps.flags & CAP_PIPELINING) != 0;
    if (!pipelining) {
        if (u->mail_failed || (u->reply_next == u->txn_n + 1 && u->accepted == 0)) {
            txn_set_results(u, 0, r->code, r->ecode, text);
            txn_finish(u, 0);
            return;
        }
    }
    txn_send_more(u);
}

static void body_reply(struct upstream *u, const struct smtp_reply *r)
{
    char text[1024];
    if (r->code / 100 == 3 && u->accepted > 0) {
        upstream_protocol_error(u, "%d reply to the end of data", r->code);
        upstream_fail(u);
        return;
    }
    reply_text(r, text, sizeof(text));
    if (u->accepted == 0) {
        /* The empty body that RFC 2920 makes us send; results are set already. */
        txn_finish(u, 0);
        return;
    }
    /* SMTP gives one reply for all accepted recipients (of this transaction). */
    txn_set_results(u, 1, r->code, r->ecode, text);
    txn_finish(u, r->code / 100 == 2);
}

/*
 * The message is refused (or done) without sending anything: its results
 * are set.  They are reported from the loop, like a server reply would be;
 * a reply from the server meanwhile answers nothing (see upstream_reply()).
 */
static void txn_refuse_locally(struct upstream *u)
{
    upstream_set_state(u, US_TXN);
    u->cmd_next = 0;
    u->reply_next = u->txn_n + 2;
    u->txn_local = 1;
    upstream_kick(u, KICK_TXN_LOCAL);
}

int upstream_send(struct upstream *u, struct message *m)
{
    if (u->state != US_IDLE || u->msg != NULL || u->freed)
        return -1;
    u->msg = m;
    u->done_msg = NULL;
    if (txn_plan(u) < 0) {
        message_set_pending_results(m, 451, "4.3.0", "out of memory");
        u->txn_n = 0;
        txn_refuse_locally(u);
        return 0;
    }
    if (u->txn_n == 0) {
        /* Every recipient has its result already: nothing to send. */
        txn_refuse_locally(u);
        return 0;
    }

    if ((u->caps.flags & CAP_SIZE) && u->caps.size > 0 && m->size > u->caps.size) {
        char text[160];
        snprintf(text, sizeof(text), "message size %zu exceeds the fixed limit %llu of relay %s",
                 m->size, u->caps.size, u->relay->name);
        message_set_pending_results(m, 552, "5.3.4", text);
        txn_refuse_locally(u);
        return 0;
    }
    if (needs_smtputf8(m) && !(u->caps.flags & CAP_SMTPUTF8)) {
        message_set_pending_results(m, 553, "5.6.7",
                                    "relay does not support SMTPUTF8 (internationalised address)");
        txn_refuse_locally(u);
        return 0;
    }
    txn_start(u);
    return 0;
}

/* The deferred work of the kick event, for the reason it was activated. */
static void upstream_kick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct upstream *u = arg;
    enum kick_reason why = u->kick_why;
    (void)fd;
    (void)what;
    u->kick_why = KICK_NONE;
    if (u->freed)
        return;
    switch (why) {
    case KICK_NONE:
        return;
    case KICK_START_HOST:
        /* Only a session that has no connection yet, nor a lookup under way. */
        if (u->state == US_RESOLVING && u->io == NULL && u->dns_req == NULL)
            upstream_start_host(u);
        return;
    case KICK_TXN_LOCAL:
        /* The refusal is final; an earlier unclean end still needs its RSET. */
        if (u->state == US_TXN && u->msg && u->txn_local && u->io)
            txn_finish(u, !u->dirty);
        return;
    case KICK_DESYNC:
        /* The error is set (upstream_in_sync()). */
        if (!u->desync)
            return;
        u->desync = 0;
        if (u->state == US_DEAD || u->state == US_QUIT || u->io == NULL)
            return;
        if (u->msg == NULL && u->state < US_IDLE)
            upstream_setup_failed(u);
        else
            upstream_fail(u);
        return;
    }
}

/* ---- the state machine -------------------------------------------------- */

/* What is sent on entering a state. */
static void upstream_enter(struct upstream *u)
{
    const struct relay_config *rc = u->relay;
    if ((u->state == US_EHLO || u->state == US_HELO || u->state == US_STARTTLS) &&
        !upstream_in_sync(u))
        return;
    switch (u->state) {
    case US_EHLO:
        upstream_send_line(u, "EHLO %s", u->helo_name);
        break;
    case US_HELO:
        upstream_send_line(u, "HELO %s", u->helo_name);
        break;
    case US_STARTTLS:
        upstream_send_line(u, "STARTTLS");
        break;
    case US_QUIT:
        upstream_send_line(u, "QUIT");
        ioev_flush(u->io);
        ioev_set_timeout(u->io, QUIT_WAIT_MS);
        return;
    default:
        return;
    }
    ioev_flush(u->io);
    upstream_timeout(u, rc->timeouts.command);
}

static void upstream_goto(struct upstream *u, enum upstream_state s)
{
    upstream_set_state(u, s);
    upstream_enter(u);
}

static void upstream_now_idle(struct upstream *u)
{
    upstream_set_state(u, US_IDLE);
    ioev_set_timeout(u->io, 0);
    log_info("upstream relay=%s host=%s ready tls=%s resumed=%d", u->relay->name, u->hostport,
             ioev_tls_version(u->io) ? ioev_tls_version(u->io) : "none", ioev_tls_resumed(u->io));
    upstream_notify(u, UPSTREAM_READY);
}

/* ---- AUTH (RFC 4954) ------------------------------------------------------ */

/* Send the AUTH command: the secret is at hand. */
static void upstream_auth_send(struct upstream *u)
{
    const struct relay_config *rc = u->relay;
    char err[300];
    const char *name = sasl_mech_name(u->auth_mech);
    sasl_end(u->sasl);
    u->sasl = sasl_begin(u->auth_mech, rc->auth_user, u->secret, err, sizeof(err));
    char *line = u->sasl ? sasl_initial(u->sasl, err, sizeof(err)) : NULL;
    if (line == NULL) {
        upstream_set_error(u, 451, "4.7.0", "AUTH %s: %s", name, err);
        upstream_auth_clear(u);
        upstream_fail(u);
        return;
    }
    upstream_set_state(u, US_AUTH);
    if (!upstream_in_sync(u)) {
        sasl_free(line);
        return;
    }
    upstream_send_line(u, "%s", line);
    sasl_free(line);
    ioev_flush(u->io);
    upstream_timeout(u, rc->timeouts.command);
}

static void upstream_secret_ready(const char *secret, const char *why, void *arg)
{
    struct upstream *u = arg;
    u->secret_req = NULL;
    if (u->state != US_AUTH_SECRET)
        return;
    if (secret == NULL) {
        upstream_set_error(u, 451, "4.7.0", "cannot get the AUTH secret: %s", why);
        upstream_fail(u);
        return;
    }
    if ((u->secret = strdup(secret)) == NULL) {
        upstream_set_error(u, 451, "4.3.0", "out of memory");
        upstream_fail(u);
        return;
    }
    upstream_auth_send(u);
}

/* Choose the mechanism, get the secret (maybe by running a command), then AUTH. */
static void upstream_auth_start(struct upstream *u)
{
    const struct relay_config *rc = u->relay;
    unsigned mech = sasl_choose(u->caps.auth, rc->auth_mechanisms);
    if (mech == 0) {
        upstream_set_error(u, 451, "4.7.0",
                           (u->caps.flags & CAP_AUTH)
                               ? "server offers no AUTH mechanism that is allowed"
                               : "server does not offer AUTH");
        upstream_setup_failed(u);
        return;
    }
    upstream_auth_clear(u);
    u->auth_mech = mech;
    char err[300];
    int got = secret_get(u->base, rc, upstream_secret_ready, u, &u->secret_req, &u->secret, err,
                         sizeof(err));
    if (got < 0) {
        upstream_set_error(u, 451, "4.7.0", "cannot get the AUTH secret: %s", err);
        upstream_fail(u);
        return;
    }
    if (got == 1) {
        upstream_auth_send(u);
        return;
    }
    /* The command has its own time limit; the server may drop us meanwhile. */
    upstream_set_state(u, US_AUTH_SECRET);
    ioev_set_timeout(u->io, 0);
}

static void upstream_auth_reply(struct upstream *u, const struct smtp_reply *r)
{
    const struct relay_config *rc = u->relay;
    const char *name = sasl_mech_name(u->auth_mech);
    char err[300];
    if (r->code == 334) {
        if (!upstream_in_sync(u))
            return;
        char *resp = sasl_step(u->sasl, r->text, err, sizeof(err));
        if (resp == NULL) {
            /* A server that cannot prove itself gets nothing more, not even "*". */
            upstream_set_error(u, 451, "4.7.0", "AUTH %s: %s", name, err);
            upstream_fail(u);
            return;
        }
        upstream_send_line(u, "%s", resp);
        sasl_free(resp);
        ioev_flush(u->io);
        upstream_timeout(u, rc->timeouts.command);
        return;
    }
    if (r->code == 235) {
        if (sasl_success(u->sasl, err, sizeof(err)) < 0) {
            upstream_set_error(u, 451, "4.7.0", "AUTH %s: %s", name, err);
            upstream_fail(u);
            return;
        }
        log_info("upstream relay=%s host=%s authenticated user=%s mech=%s", rc->name, u->hostport,
                 rc->auth_user, name);
        upstream_auth_clear(u);
        upstream_now_idle(u);
        return;
    }
    /*
     * A refused token (expired OAuth2 access token): run password_command
     * again and retry AUTH once on this session, which RFC 4954 allows.
     */
    if (r->code / 100 == 5 && !u->auth_retried && u->secret && secret_invalidate(rc, u->secret)) {
        log_info("upstream relay=%s host=%s AUTH %s refused (%d); refreshing the secret", rc->name,
                 u->hostport, name, r->code);
        u->auth_retried = 1;
        upstream_auth_start(u);
        return;
    }
    upstream_reply_error(u, "authentication failed", r);
    metrics_note_auth_failure(rc->name);
    upstream_auth_clear(u);
    /* Credentials are the same for every host: do not try the next one. */
    upstream_fail(u);
}

/* After EHLO (or HELO): STARTTLS, AUTH, or ready. */
static void upstream_after_hello(struct upstream *u)
{
    const struct relay_config *rc = u->relay;
    int tls = ioev_is_tls(u->io);
    if ((rc->options & RELAY_OPT_SECURE) && !tls) {
        if (!(u->caps.flags & CAP_STARTTLS)) {
            upstream_set_error(u, 451, "4.7.4",
                               "server does not offer STARTTLS, which option 'secure' requires");
            upstream_setup_failed(u);
            return;
        }
        upstream_goto(u, US_STARTTLS);
        return;
    }
    if (rc->has_auth) {
        if (!tls && !rc->allow_plaintext_auth) {
            upstream_set_error(u, 451, "4.7.0",
                               "refusing to send credentials over an unencrypted connection");
            upstream_setup_failed(u);
            return;
        }
        upstream_auth_start(u);
        return;
    }
    upstream_now_idle(u);
}

static void upstream_reply_error(struct upstream *u, const char *what, const struct smtp_reply *r)
{
    char text[600];
    reply_text(r, text, sizeof(text));
    upstream_set_error(u, 451, r->code == 421 ? "4.4.2" : "4.4.0", "%s: %d %s%s%s", what, r->code,
                       r->ecode, r->ecode[0] ? " " : "", text);
}

/* Handle one complete reply in the current state. */
static void upstream_reply(struct upstream *u, const struct smtp_reply *r)
{
    const struct relay_config *rc = u->relay;

    if (r->code == 421 && u->state != US_QUIT) {
        /* RFC 5321 3.8: the server is closing; unconfirmed recipients temp-fail. */
        upstream_reply_error(u, "server closed the session", r);
        if (u->msg || u->state >= US_IDLE)
            upstream_fail(u);
        else
            upstream_setup_failed(u);
        return;
    }

    switch (u->state) {
    case US_GREETING:
        if (r->code != 220) {
            upstream_reply_error(u, "greeting", r);
            upstream_setup_failed(u);
            return;
        }
        upstream_goto(u, (rc->options & RELAY_OPT_EXTENDED) ? US_EHLO : US_HELO);
        return;

    case US_EHLO:
        if (r->code / 100 != 2) {
            /* RFC 5321 3.2: fall back to HELO, unless something needs ESMTP. */
            int needs_esmtp =
                rc->has_auth || ((rc->options & RELAY_OPT_SECURE) && !ioev_is_tls(u->io));
            if (r->code / 100 == 5 && !needs_esmtp) {
                upstream_goto(u, US_HELO);
                return;
            }
            upstream_reply_error(u, "EHLO", r);
            upstream_setup_failed(u);
            return;
        }
        memset(&u->caps, 0, sizeof(u->caps));
        smtp_caps_parse(r, &u->caps);
        if (u->probe) {
            free(u->ehlo_text);
            u->ehlo_text = strdup(r->text);
        }
        upstream_after_hello(u);
        return;

    case US_HELO:
        if (r->code / 100 != 2) {
            upstream_reply_error(u, "HELO", r);
            upstream_setup_failed(u);
            return;
        }
        memset(&u->caps, 0, sizeof(u->caps));
        upstream_after_hello(u);
        return;

    case US_STARTTLS:
        if (r->code != 220) {
            upstream_reply_error(u, "STARTTLS", r);
            upstream_setup_failed(u);
            return;
        }
        /* RFC 3207 4.2 / STARTTLS injection: nothing may follow the 220 in plaintext. */
        if (evbuffer_get_length(ioev_input(u->io)) > 0 || reply_parser_pending(&u->parser)) {
            upstream_set_error(u, 451, "4.7.0",
                               "server sent data after its STARTTLS reply (possible injection); "
                               "session aborted");
            upstream_setup_failed(u);
            return;
        }
        /* Everything learned before TLS is forgotten (RFC 3207 4.2). */
        memset(&u->caps, 0, sizeof(u->caps));
        upstream_start_tls(u, US_TLS_STARTTLS);
        return;

    case US_AUTH:
        upstream_auth_reply(u, r);
        return;

    case US_NOOP:
        if (r->code / 100 != 2) {
            upstream_reply_error(u, "NOOP", r);
            upstream_fail(u);
            return;
        }
        upstream_set_state(u, US_IDLE);
        ioev_set_timeout(u->io, 0);
        upstream_notify(u, UPSTREAM_READY);
        return;

    case US_RSET:
        if (r->code / 100 != 2) {
            upstream_reply_error(u, "RSET", r);
            upstream_fail(u);
            return;
        }
        u->dirty = 0;
        upstream_set_state(u, US_TXN);
        txn_send_more(u);
        return;

    case US_TXN:
        if (u->txn_local || u->reply_next >= u->cmd_next) {
            /* No command is waiting for a reply: this one answers nothing. */
            upstream_protocol_error(u,
                                    "%d reply while no command was outstanding "
                                    "(unsolicited reply); session out of sync",
                                    r->code);
            upstream_fail(u);
            return;
        }
        txn_reply(u, r);
        return;

    case US_BODY:
        if (!u->dot_sent) {
            upstream_reply_error(u, "unexpected reply while sending data", r);
            upstream_fail(u);
            return;
        }
        body_reply(u, r);
        return;

    case US_QUIT:
        upstream_set_state(u, US_DEAD);
        upstream_free(u);
        return;

    case US_IDLE:
    default:
        upstream_reply_error(u, "unexpected reply", r);
        upstream_fail(u);
        return;
    }
}

/* Parse what arrived and handle each complete reply. */
static void upstream_read(struct upstream *u)
{
    struct evbuffer *in = ioev_input(u->io);
    while (u->io && evbuffer_get_length(in) > 0 && u->state != US_DEAD && !u->desync) {
        size_t len = evbuffer_get_length(in);
        const char *data = (const char *)evbuffer_pullup(in, (ev_ssize_t)len);
        enum reply_status st;
        struct smtp_reply r;
        size_t used = reply_parser_feed(&u->parser, data, len, &st, &r);
        evbuffer_drain(in, used);
        if (st == REPLY_INCOMPLETE)
            return;
        if (st == REPLY_ERROR) {
            char esc[200];
            const char *why = reply_parser_error(&u->parser);
            upstream_protocol_error(u, "malformed server reply: %s",
                                    log_escape(why, strlen(why), esc, sizeof(esc)));
            reply_parser_reset(&u->parser);
            if (u->state < US_IDLE)
                upstream_setup_failed(u);
            else
                upstream_fail(u);
            return;
        }
        /* Keep u alive across the handler even if the owner frees it. */
        u->in_cb++;
        upstream_reply(u, &r);
        u->in_cb--;
        smtp_reply_clear(&r);
        if (u->freed) {
            if (u->in_cb == 0)
                upstream_really_free(u);
            return;
        }
        if (u->io)
            in = ioev_input(u->io);
    }
}

/* ---- the tunnel's proxy ------------------------------------------------- */

/* The far end is reached (directly or through the proxy): TLS or the greeting next. */
static void upstream_far_end(struct upstream *u)
{
    if (u->relay->options & RELAY_OPT_SECURE_IMPLICIT) {
        upstream_start_tls(u, US_TLS_IMPLICIT);
    } else {
        upstream_set_state(u, US_GREETING);
        upstream_timeout(u, u->relay->timeouts.greeting);
        if (evbuffer_get_length(ioev_input(u->io)) > 0)
            upstream_read(u); /* the greeting came with the proxy's reply */
    }
}

static void proxy_send(struct upstream *u)
{
    size_t n;
    const unsigned char *out = proxy_output(u->proxy, &n);
    if (n) {
        evbuffer_add(ioev_output(u->io), out, n);
        ioev_flush(u->io);
    }
    proxy_sent(u->proxy);
}

/*
 * TCP to the proxy is up: ask it for the relay host by name (the proxy
 * resolves it; TLS later verifies tls.server_name or that name).
 */
static void upstream_proxy_start(struct upstream *u)
{
    const struct relay_config *rc = u->relay;
    const struct relay_host *h = &rc->hosts[u->host_idx];
    if (u->proxy == NULL && (u->proxy = malloc(sizeof(*u->proxy))) == NULL) {
        upstream_set_error(u, 451, "4.3.0", "out of memory");
        upstream_setup_failed(u);
        return;
    }
    upstream_set_state(u, US_PROXY);
    if (proxy_start(u->proxy, (enum proxy_kind)rc->proxy_kind, h->host, h->port, rc->proxy_user,
                    rc->proxy_password) < 0) {
        upstream_set_error(u, 451, "4.4.1", "%s proxy %s:%u: %s", proxy_kind_name(rc->proxy_kind),
                           rc->proxy_host, rc->proxy_port, proxy_error(u->proxy));
        upstream_setup_failed(u);
        return;
    }
    proxy_send(u);
    upstream_timeout(u, rc->timeouts.connect);
}

static void upstream_proxy_read(struct upstream *u)
{
    const struct relay_config *rc = u->relay;
    struct evbuffer *in = ioev_input(u->io);
    size_t len = evbuffer_get_length(in), used = 0;
    const unsigned char *data = evbuffer_pullup(in, (ev_ssize_t)len);
    enum proxy_status st = proxy_feed(u->proxy, data, len, &used);
    evbuffer_drain(in, used);
    switch (st) {
    case PROXY_MORE:
        proxy_send(u);
        return;
    case PROXY_DONE:
        log_debug("upstream relay=%s host=%s tunnel through %s proxy %s:%u established", rc->name,
                  u->hostport, proxy_kind_name(rc->proxy_kind), rc->proxy_host, rc->proxy_port);
        /* its buffers held the password for a moment: do not keep it around */
        explicit_bzero(u->proxy, sizeof(*u->proxy));
        upstream_far_end(u);
        return;
    case PROXY_REFUSED:
    case PROXY_BAD: {
        char esc[300];
        const char *why = proxy_error(u->proxy);
        upstream_set_error(u, 451, "4.4.1", "%s proxy %s:%u: %s", proxy_kind_name(rc->proxy_kind),
                           rc->proxy_host, rc->proxy_port,
                           log_escape(why, strlen(why), esc, sizeof(esc)));
        upstream_setup_failed(u);
        return;
    }
    }
}

static void upstream_io(struct ioev *io, enum ioev_event ev, void *arg)
{
    struct upstream *u = arg;
    u->in_cb++;
    switch (ev) {
    case IOEV_CONNECTED:
        if (u->relay->proxy_kind != PROXY_NONE)
            upstream_proxy_start(u);
        else
            upstream_far_end(u);
        break;
    case IOEV_TLS_DONE:
        log_debug("upstream relay=%s host=%s tls=%s cipher=%s resumed=%d", u->relay->name,
                  u->hostport, ioev_tls_version(io), ioev_tls_cipher(io), ioev_tls_resumed(io));
        if (u->state == US_TLS_IMPLICIT) {
            upstream_set_state(u, US_GREETING);
            upstream_timeout(u, u->relay->timeouts.greeting);
        } else {
            upstream_goto(u, US_EHLO);
        }
        break;
    case IOEV_READ:
        if (u->state == US_PROXY)
            upstream_proxy_read(u);
        else
            upstream_read(u);
        break;
    case IOEV_FLUSHED:
        if ((u->state == US_BODY || (u->state == US_TXN && u->bdat && u->body_off > 0)) &&
            !u->dot_sent)
            txn_send_body(u);
        break;
    case IOEV_EOF:
    case IOEV_ERROR:
    case IOEV_TIMEOUT: {
        const char *why = ev == IOEV_EOF       ? "connection closed by the server"
                          : ev == IOEV_TIMEOUT ? "timed out"
                                               : ioev_error(io);
        if (u->state == US_QUIT) {
            upstream_set_state(u, US_DEAD);
            upstream_free(u);
            break;
        }
        const char *ecode = "4.4.2";
        if (u->state == US_TLS_IMPLICIT || u->state == US_TLS_STARTTLS)
            ecode = "4.7.5";
        else if (u->state == US_CONNECTING || u->state == US_PROXY)
            ecode = "4.4.1";
        if (u->state == US_BODY && u->dot_sent)
            upstream_set_error(u, 451, ecode,
                               "%s after the end of data, before the server's reply: outcome "
                               "unknown, the message may have been delivered",
                               why);
        else if (u->state == US_BODY)
            upstream_set_error(u, 451, ecode, "%s while sending the message data", why);
        else if (u->relay->proxy_kind != PROXY_NONE && u->state <= US_PROXY)
            upstream_set_error(u, 451, ecode, "%s proxy %s:%u: %s (state %s)",
                               proxy_kind_name(u->relay->proxy_kind), u->relay->proxy_host,
                               u->relay->proxy_port, why, state_names[u->state]);
        else
            upstream_set_error(u, 451, ecode, "%s (state %s)", why, state_names[u->state]);
        if (u->state < US_IDLE)
            upstream_setup_failed(u);
        else
            upstream_fail(u);
        break;
    }
    }
    u->in_cb--;
    if (u->freed && u->in_cb == 0)
        upstream_really_free(u);
}

/* ---- life cycle --------------------------------------------------------- */

struct upstream *upstream_new(const struct upstream_params *p, upstream_cb cb, void *arg)
{
    struct upstream *u = calloc(1, sizeof(*u));
    if (u == NULL)
        return NULL;
    u->base = p->base;
    u->dns = p->dns;
    u->relay = p->relay;
    u->tls = p->tls;
    u->helo_name = strdup(p->helo_name);
    u->cb = cb;
    u->cb_arg = arg;
    u->host_down_until = p->host_down_until;
    u->probe = p->probe;
    u->host_idx = p->first_host < p->relay->nhosts ? p->first_host : 0;
    if (u->host_down_until) {
        /* Start at the first host not in back-off; if all are, at the first choice. */
        time_t now = time(NULL);
        for (size_t k = 0; k < p->relay->nhosts; k++) {
            size_t i = (u->host_idx + k) % p->relay->nhosts;
            if (u->host_down_until[i] <= now) {
                u->host_idx = i;
                break;
            }
        }
    }
    u->created = time(NULL);
    reply_parser_init(&u->parser);
    u->kick = event_new(p->base, -1, 0, upstream_kick_cb, u);
    if (u->helo_name == NULL || u->kick == NULL) {
        upstream_really_free(u);
        return NULL;
    }
    const struct relay_host *h = &p->relay->hosts[u->host_idx];
    snprintf(u->hostport, sizeof(u->hostport), "%s:%u", h->host, h->port);
    u->state = US_RESOLVING;
    upstream_kick(u, KICK_START_HOST);
    return u;
}

void upstream_free(struct upstream *u)
{
    if (u == NULL || u->freed)
        return;
    u->freed = 1;
    if (u->in_cb == 0)
        upstream_really_free(u);
}

int upstream_noop(struct upstream *u)
{
    if (u->state != US_IDLE || u->freed)
        return -1;
    upstream_set_state(u, US_NOOP);
    upstream_send_line(u, "NOOP");
    ioev_flush(u->io);
    upstream_timeout(u, u->relay->timeouts.command);
    return 0;
}

/* Only the pointer moves: the caller vouches that the profiles are equal. */
void upstream_set_relay(struct upstream *u, const struct relay_config *relay)
{
    u->relay = relay;
}

void upstream_quit(struct upstream *u)
{
    if (u->io == NULL || u->state == US_DEAD || u->state < US_GREETING) {
        upstream_free(u);
        return;
    }
    u->msg = NULL;
    upstream_goto(u, US_QUIT);
}

enum txn_outcome upstream_txn_outcome(const struct upstream *u)
{
    return u->outcome;
}

struct message *upstream_txn_message(const struct upstream *u)
{
    return u->done_msg;
}

int upstream_usable(const struct upstream *u)
{
    return u->state == US_IDLE && u->msg == NULL && !u->freed;
}

int upstream_error_code(const struct upstream *u)
{
    return u->err_code ? u->err_code : 451;
}

const char *upstream_error_ecode(const struct upstream *u)
{
    return u->err_ecode[0] ? u->err_ecode : "4.4.0";
}

const char *upstream_error(const struct upstream *u)
{
    return u->error;
}

const char *upstream_state_name(const struct upstream *u)
{
    return state_names[u->state];
}

const char *upstream_host(const struct upstream *u)
{
    return u->hostport;
}

size_t upstream_host_index(const struct upstream *u)
{
    return u->host_idx;
}

unsigned upstream_messages(const struct upstream *u)
{
    return u->messages;
}

const char *upstream_tls_version(const struct upstream *u)
{
    return u->io ? ioev_tls_version(u->io) : NULL;
}

const char *upstream_tls_cipher(const struct upstream *u)
{
    return u->io ? ioev_tls_cipher(u->io) : NULL;
}

int upstream_tls_resumed(const struct upstream *u)
{
    return u->io ? ioev_tls_resumed(u->io) : 0;
}

time_t upstream_created(const struct upstream *u)
{
    return u->created;
}

size_t upstream_probe_steps(const struct upstream *u, struct upstream_step *out, size_t max)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    for (size_t i = 0; i < u->nsteps && i < max; i++) {
        const struct probe_step *st = &u->steps[i];
        const struct timespec *end = st->ended ? &st->end : &now;
        out[i].name = st->name;
        out[i].host = st->host;
        out[i].usec = (long long)(end->tv_sec - st->start.tv_sec) * 1000000 +
                      (end->tv_nsec - st->start.tv_nsec) / 1000;
    }
    return u->nsteps;
}

const char *upstream_probe_failed_step(const struct upstream *u)
{
    return u->probe_failed;
}

const char *upstream_ehlo_text(const struct upstream *u)
{
    return u->ehlo_text;
}

const char *upstream_auth_mech(const struct upstream *u)
{
    return u->auth_mech ? sasl_mech_name(u->auth_mech) : NULL;
}

int upstream_tls_peer_info(const struct upstream *u, struct tls_peer_info *info)
{
    return u->io ? ioev_tls_peer_info(u->io, info) : -1;
}
