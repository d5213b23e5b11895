/*
 * The control socket: one request line in, one line of JSON (RFC 8259) out,
 * per command, on a Unix socket that only root, the daemon's user and the
 * daemon's group may use.  Commands live in one table; each writes its
 * answer with the JSON writer of json.h.
 */
#include "control.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "control_parse.h"
#include "json.h"
#include "log.h"
#include "metrics.h"
#include "pool.h"
#include "probe.h"
#include "proto.h"
#include "proxy.h"
#include "queue.h"
#include "spool.h"
#include "submit.h"
#include "unixsock.h"
#include "upstream.h"

/* A client must complete a request line within this time, or it is dropped. */
#define CTL_IDLE_SECONDS 5
/* A client that reads none of its answer for this long is dropped. */
#define CTL_WRITE_SECONDS 30
/*
 * Control connections open at once; more are refused with an error line.
 * Above the listen backlog (512), so a burst of clients that connect and
 * hang up at once cannot crowd out a fresh one before their EOFs are seen.
 */
#define CTL_MAX_CONNS 1024
/*
 * Answers queued for one client before its further requests are left
 * unread (a pipelining client that does not read cannot make us buffer
 * without bound); reading resumes when half of it was taken.
 */
#define CTL_MAX_PENDING (256 * 1024)
/* Most bytes read and thrown away when closing a connection (see conn_discard_input). */
#define CTL_DISCARD_MAX (1024 * 1024)
/* Words in one request line, the command name included. */
#define CTL_MAX_WORDS CONTROL_MAX_WORDS

/*
 * The protocol version every answer carries as "v".  It changes only when
 * an existing member changes meaning or goes away; new members and new
 * commands keep it.
 */
#define CTL_PROTOCOL_VERSION 1

/* The machine codes of error answers; documented in mailpoolctl(1), never renamed. */
#define CTL_E_UNKNOWN "unknown_command"
#define CTL_E_BAD "bad_request"
#define CTL_E_DENIED "permission_denied"
#define CTL_E_NO_MESSAGE "no_such_message"
#define CTL_E_NO_RELAY "no_such_relay"
#define CTL_E_BUSY "busy"
#define CTL_E_STATE "wrong_state"
#define CTL_E_RELOAD "reload_failed"
#define CTL_E_UNAVAILABLE "unavailable"
#define CTL_E_TOO_MANY "too_many_connections"
#define CTL_E_TIMEOUT "timeout"
#define CTL_E_INTERNAL "internal_error"

struct control;

struct ctl_conn {
    TAILQ_ENTRY(ctl_conn) entry;
    struct control *ctl;
    struct bufferevent *bev;
    struct event *deadline;
    unsigned long id;
    uid_t uid;
    gid_t gid;
    pid_t pid;
    int eof;       /* the client finished sending */
    int closing;   /* no more requests: close once the answers are written */
    int throttled; /* reading paused until the client takes its answers */
    /*
     * A command answering later (ctl_defer()): no further request is read
     * until its answer is queued, so answers keep the order of requests.
     * cancel(work) stops it when the client goes away first.
     */
    int waiting;
    void (*cancel)(void *work);
    void *work;
};

struct control {
    struct event_base *base;
    const struct config *cfg;
    struct pool *pool;
    struct queue *queue;
    struct submit_server *submit;
    struct evconnlistener *listener;
    struct listen_pause pause;
    TAILQ_HEAD(, ctl_conn) conns;
    size_t nconns;
    unsigned long next_id;
    struct timespec started; /* CLOCK_MONOTONIC */

    control_reload_fn reload; /* the daemon's reload, NULL until set */
    void *reload_arg;
    struct ctl_conn *current; /* whose request is running, for ctl_defer() */
};

struct ctl_request {
    int argc; /* argv[0] is the command name */
    char *argv[CTL_MAX_WORDS];
};

/*
 * One command.  run() writes one complete JSON object, {"ok":true,...} or
 * an error from ctl_error(); argument counts are checked before it runs.
 */
struct ctl_command {
    const char *name;
    int min_args, max_args; /* words after the name */
    const char *usage;
    void (*run)(struct control *ctl, const struct ctl_request *req, struct json_writer *w);
};

static void ctl_error(struct json_writer *w, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * {"ok":false,"code":"...","error":"..."}: code is one of the stable
 * machine codes of mailpoolctl(1) (CTL_E_*), error the text for people,
 * built at whatever length it needs.
 */
static void ctl_error(struct json_writer *w, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = NULL;
    int n = vasprintf(&msg, fmt, ap);
    va_end(ap);
    json_object_begin(w);
    json_kv_bool(w, "ok", 0);
    json_kv_string(w, "code", code);
    json_kv_string(w, "error", n >= 0 ? msg : "out of memory");
    json_object_end(w);
    if (n >= 0)
        free(msg);
}

/* ---- commands ------------------------------------------------------------- */

static void cmd_status(struct control *ctl, const struct ctl_request *req, struct json_writer *w)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    unsigned long messages = 0;
    size_t nrelays = pool_relay_count(ctl->pool);
    for (size_t i = 0; i < nrelays; i++) {
        struct pool_relay_info ri;
        pool_relay_info(ctl->pool, i, &ri);
        messages += ri.messages;
    }
    json_object_begin(w);
    json_kv_bool(w, "ok", 1);
    json_kv_string(w, "version", MAILPOOL_VERSION);
    json_kv_int(w, "uptime", (long long)(now.tv_sec - ctl->started.tv_sec));
    json_kv_int(w, "pid", (long long)getpid());
    json_kv_uint(w, "clients", ctl->submit ? submit_clients(ctl->submit) : 0);
    json_kv_uint(w, "busy_clients", ctl->submit ? submit_busy(ctl->submit) : 0);
    json_kv_uint(w, "relays", nrelays);
    json_kv_uint(w, "sessions", pool_sessions(ctl->pool));
    json_kv_uint(w, "waiting", pool_waiting(ctl->pool));
    json_kv_uint(w, "messages", messages);
    json_kv_uint(w, "queued", ctl->queue ? queue_count(ctl->queue) : 0);
    json_object_end(w);
}

static void pool_session_json(const struct pool_session_info *si, void *arg)
{
    struct json_writer *w = arg;
    json_object_begin(w);
    json_kv_string(w, "host", si->host);
    json_kv_string(w, "state", si->state);
    json_kv_string(w, "tls_version", si->tls_version);
    json_kv_string(w, "tls_cipher", si->tls_version ? si->tls_cipher : NULL);
    json_kv_bool(w, "tls_resumed", si->tls_version && si->tls_resumed);
    json_kv_uint(w, "messages", si->messages);
    json_kv_int(w, "age", si->age);
    json_key(w, "idle");
    if (si->idle < 0)
        json_null(w);
    else
        json_int(w, si->idle);
    json_object_end(w);
}

static void cmd_pool(struct control *ctl, const struct ctl_request *req, struct json_writer *w)
{
    json_object_begin(w);
    json_kv_bool(w, "ok", 1);
    json_key(w, "relays");
    json_array_begin(w);
    size_t n = pool_relay_count(ctl->pool);
    for (size_t i = 0; i < n; i++) {
        struct pool_relay_info ri;
        pool_relay_info(ctl->pool, i, &ri);
        json_object_begin(w);
        json_kv_string(w, "name", ri.name);
        json_kv_uint(w, "sessions", ri.sessions);
        json_kv_uint(w, "idle", ri.idle);
        json_kv_uint(w, "opening", ri.opening);
        json_kv_uint(w, "waiting", ri.waiting);
        json_kv_uint(w, "opened", ri.opened);
        json_kv_uint(w, "reused", ri.reused);
        json_kv_uint(w, "failed", ri.failed);
        json_kv_uint(w, "messages", ri.messages);
        json_kv_uint(w, "retried", ri.retried);
        json_key(w, "connections");
        json_array_begin(w);
        pool_foreach_session(ctl->pool, i, pool_session_json, w);
        json_array_end(w);
        json_object_end(w);
    }
    json_array_end(w);
    json_object_end(w);
}

/* ---- relays: the effective profiles ---------------------------------------- */

static void json_kv_host_list(struct json_writer *w, const struct relay_config *rc)
{
    json_key(w, "hosts");
    json_array_begin(w);
    for (size_t h = 0; h < rc->nhosts; h++) {
        const char *host = rc->hosts[h].host;
        int v6 = strchr(host, ':') != NULL;
        char buf[300];
        snprintf(buf, sizeof(buf), "%s%s%s:%u", v6 ? "[" : "", host, v6 ? "]" : "",
                 rc->hosts[h].port);
        json_string(w, buf);
    }
    json_array_end(w);
}

static void relay_tls_json(struct json_writer *w, const struct relay_config *rc)
{
    json_key(w, "tls");
    json_object_begin(w);
    json_kv_bool(w, "used", (rc->options & (RELAY_OPT_SECURE | RELAY_OPT_SECURE_IMPLICIT)) != 0);
    json_kv_bool(w, "verify", !(rc->options & RELAY_OPT_TRUSTED_SITE));
    json_kv_string(w, "ca_file", rc->tls_ca_file);
    json_kv_string(w, "ca_path", rc->tls_ca_path);
    /* the name certificates are checked against: tls.server_name, else each host's name */
    json_kv_string(w, "server_name", rc->tls_server_name);
    json_kv_string(w, "min_version",
                   rc->tls_min_version                              ? rc->tls_min_version
                   : (rc->options & RELAY_OPT_SECURE_FALLBACK) != 0 ? "1.1"
                                                                    : "1.2");
    json_kv_string(w, "ciphers", rc->tls_ciphers);
    json_kv_string(w, "client_cert", rc->tls_client_cert);
    json_kv_string(w, "client_key", rc->tls_client_key); /* a path, not the key */
    json_key(w, "pin_sha256");
    json_array_begin(w);
    for (size_t k = 0; k < rc->ntls_pins; k++)
        json_string(w, rc->tls_pins[k]); /* public-key digests are not secrets */
    json_array_end(w);
    json_object_end(w);
}

static const struct {
    unsigned bit;
    const char *name;
} ctl_mechs[] = {
    {AUTH_MECH_SCRAM_SHA_256, "SCRAM-SHA-256"},
    {AUTH_MECH_SCRAM_SHA_1, "SCRAM-SHA-1"},
    {AUTH_MECH_CRAM_MD5, "CRAM-MD5"},
    {AUTH_MECH_PLAIN, "PLAIN"},
    {AUTH_MECH_LOGIN, "LOGIN"},
    {AUTH_MECH_XOAUTH2, "XOAUTH2"},
    {AUTH_MECH_OAUTHBEARER, "OAUTHBEARER"},
};

/* The user and mechanisms only: no password, token or command output ever. */
static void relay_auth_json(struct json_writer *w, const struct relay_config *rc)
{
    json_key(w, "auth");
    if (!rc->has_auth) {
        json_null(w);
        return;
    }
    json_object_begin(w);
    json_kv_string(w, "user", rc->auth_user);
    /*
     * Where the secret comes from, never the secret: file and credential
     * names are shown; a command line may itself carry a token, so only its
     * presence and cache lifetime are.
     */
    const char *source = rc->auth_password_command ? "password_command"
                         : rc->auth_credential     ? "credential"
                         : rc->auth_password_file  ? "password_file"
                                                   : "password";
    json_kv_string(w, "secret_source", source);
    json_kv_string(w, "password_file", rc->auth_password_file);
    json_kv_string(w, "credential", rc->auth_credential);
    if (rc->auth_password_command)
        json_kv_uint(w, "password_command_ttl", rc->auth_password_command_ttl);
    json_key(w, "mechanisms");
    json_array_begin(w);
    unsigned mechs = rc->auth_mechanisms;
    if (mechs == 0) /* the default set, strongest first */
        mechs = AUTH_MECH_SCRAM_SHA_256 | AUTH_MECH_SCRAM_SHA_1 | AUTH_MECH_CRAM_MD5 |
                AUTH_MECH_PLAIN | AUTH_MECH_LOGIN;
    for (size_t k = 0; k < sizeof(ctl_mechs) / sizeof(ctl_mechs[0]); k++)
        if (mechs & ctl_mechs[k].bit)
            json_string(w, ctl_mechs[k].name);
    json_array_end(w);
    json_kv_bool(w, "allow_plaintext_auth", rc->allow_plaintext_auth);
    json_object_end(w);
}

/* Who may use the relay (ids, as resolved at load), its budgets and its address fixing. */
static void relay_policy_json(struct json_writer *w, const struct relay_config *rc)
{
    json_key(w, "allow");
    if (!rc->allow.set) {
        json_null(w); /* everyone who may use the submission socket */
    } else {
        json_object_begin(w);
        json_key(w, "uids");
        json_array_begin(w);
        for (size_t k = 0; k < rc->allow.nuids; k++)
            json_uint(w, rc->allow.uids[k]);
        json_array_end(w);
        json_key(w, "gids");
        json_array_begin(w);
        for (size_t k = 0; k < rc->allow.ngids; k++)
            json_uint(w, rc->allow.gids[k]);
        json_array_end(w);
        json_object_end(w);
    }
    /* 0 means no limit, as in the configuration. */
    json_key(w, "rate");
    json_object_begin(w);
    json_kv_uint(w, "messages_per_second", rc->budget.messages_per_second);
    json_kv_uint(w, "messages_per_minute", rc->budget.messages_per_minute);
    json_kv_uint(w, "max_recipients", rc->budget.max_recipients);
    json_object_end(w);
    json_key(w, "limits");
    json_object_begin(w);
    json_kv_uint(w, "max_logins_per_minute", rc->budget.max_logins_per_minute);
    json_object_end(w);
    const struct address_fixing *fx = &rc->fix;
    json_kv_string(w, "qualify_domain", fx->qualify_domain);
    json_kv_string(w, "sender", fx->sender);
    json_kv_string(w, "from_header",
                   fx->from_header == FROM_HEADER_REWRITE          ? "rewrite"
                   : fx->from_header == FROM_HEADER_ADD_IF_MISSING ? "add_if_missing"
                                                                   : "keep");
    json_key(w, "aliases");
    json_object_begin(w);
    for (size_t k = 0; k < fx->naliases; k++)
        json_kv_string(w, fx->aliases[k].name, fx->aliases[k].addr);
    json_object_end(w);
}

static void cmd_relays(struct control *ctl, const struct ctl_request *req, struct json_writer *w)
{
    (void)req;
    const struct config *cfg = ctl->cfg;
    json_object_begin(w);
    json_kv_bool(w, "ok", 1);
    json_kv_string(w, "default_relay", cfg->nrelays ? cfg->relays[cfg->default_relay].name : NULL);
    json_key(w, "relays");
    json_array_begin(w);
    for (size_t i = 0; i < cfg->nrelays; i++) {
        const struct relay_config *rc = &cfg->relays[i];
        json_object_begin(w);
        json_kv_string(w, "name", rc->name);
        json_kv_host_list(w, rc);
        json_key(w, "options");
        json_array_begin(w);
        for (unsigned bit = 1; bit && bit <= RELAY_OPT_TUNNEL; bit <<= 1)
            if ((rc->options & bit) && relay_option_name(bit))
                json_string(w, relay_option_name(bit));
        json_array_end(w);
        json_kv_string(w, "mode", rc->mode == MODE_RELAY ? "relay" : "queue");
        json_kv_string(w, "helo_name", rc->helo_name ? rc->helo_name : cfg->hostname);
        json_kv_uint(w, "timeout", rc->timeout);
        json_key(w, "timeouts");
        json_object_begin(w);
        json_kv_uint(w, "connect", rc->timeouts.connect);
        json_kv_uint(w, "greeting", rc->timeouts.greeting);
        json_kv_uint(w, "command", rc->timeouts.command);
        json_kv_uint(w, "data_block", rc->timeouts.data_block);
        json_kv_uint(w, "data_end", rc->timeouts.data_end);
        json_object_end(w);
        json_key(w, "pool");
        json_object_begin(w);
        json_kv_uint(w, "max_connections", rc->pool.max_connections);
        json_kv_uint(w, "min_idle", rc->pool.min_idle);
        json_kv_uint(w, "idle_timeout", rc->pool.idle_timeout);
        json_kv_uint(w, "keepalive", rc->pool.keepalive);
        json_kv_uint(w, "max_messages", rc->pool.max_messages);
        json_kv_uint(w, "max_age", rc->pool.max_age);
        json_kv_uint(w, "max_waiters", rc->pool.max_waiters);
        json_kv_uint(w, "wait_timeout", rc->pool.wait_timeout);
        json_object_end(w);
        relay_tls_json(w, rc);
        relay_auth_json(w, rc);
        json_key(w, "proxy");
        if (rc->proxy_kind == PROXY_NONE) {
            json_null(w);
        } else {
            struct proxy_url pu = {(enum proxy_kind)rc->proxy_kind, rc->proxy_host, rc->proxy_port,
                                   rc->proxy_user, NULL};
            /* built without the password: only the "***" mask can appear */
            char *red = proxy_url_redacted(&pu);
            json_string(w, red ? red : "(out of memory)");
            free(red);
        }
        relay_policy_json(w, rc);
        json_object_end(w);
    }
    json_array_end(w);
    json_object_end(w);
}

/* ---- the queue ------------------------------------------------------------ */

/*
 * Queue ids are what the spool names its files: letters and digits only.
 * Checking before use keeps paths and odd bytes out of the lookups and logs.
 */
static int valid_id(const char *s)
{
    size_t n = 0;
    for (; s[n] != '\0'; n++) {
        unsigned char c = (unsigned char)s[n];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')))
            return 0;
    }
    return n > 0 && n <= SPOOL_ID_MAX;
}

/* A relay profile name as the configuration allows it (also a superset of ids). */
static int valid_relay_name(const char *s)
{
    size_t n = 0;
    for (; s[n] != '\0'; n++) {
        unsigned char c = (unsigned char)s[n];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              c == '-' || c == '_' || c == '.'))
            return 0;
    }
    return n > 0 && n <= MAILPOOL_MAX_RELAY_NAME;
}

static const char *rcpt_state_name(char state)
{
    switch (state) {
    case SPOOL_PENDING:
        return "pending";
    case SPOOL_DELIVERED:
        return "delivered";
    case SPOOL_FAILED:
        return "failed";
    case SPOOL_DONE:
        return "done";
    }
    return "unknown";
}

struct item_json {
    struct json_writer *w;
    time_t now;
};

/* One message as the queue and queue show commands describe it. */
static void queue_item_json(const struct queue_item_info *it, void *arg)
{
    struct item_json *ij = arg;
    struct json_writer *w = ij->w;
    json_object_begin(w);
    json_kv_string(w, "id", it->id);
    json_kv_int(w, "created", (long long)it->created);
    json_kv_int(w, "age", ij->now > it->created ? (long long)(ij->now - it->created) : 0);
    json_kv_string(w, "sender", it->sender);
    json_kv_string(w, "relay", it->relay);
    json_kv_uint(w, "size", it->size);
    json_kv_uint(w, "attempts", it->attempts);
    /* No time while an attempt runs, nor while held: nothing is scheduled then. */
    json_key(w, "next_attempt");
    if (it->busy || it->held || it->next_attempt == 0)
        json_null(w);
    else
        json_int(w, (long long)it->next_attempt);
    json_kv_string(w, "last_error", it->last_error);
    json_kv_bool(w, "held", it->held);
    json_kv_bool(w, "bounce", it->is_bounce);
    json_key(w, "recipients");
    json_array_begin(w);
    for (size_t i = 0; i < it->nrcpts; i++) {
        json_object_begin(w);
        json_kv_string(w, "address", it->rcpts[i].addr);
        json_kv_string(w, "state", rcpt_state_name(it->rcpts[i].state));
        json_kv_string(w, "last_error", it->rcpts[i].last_error);
        json_object_end(w);
    }
    json_array_end(w);
    json_object_end(w);
}

static void count_item(const struct queue_item_info *it, void *arg)
{
    (void)it;
    (void)arg;
}

static void cmd_queue(struct control *ctl, const struct ctl_request *req, struct json_writer *w)
{
    if (req->argc == 2 || (req->argc == 3 && strcmp(req->argv[1], "show") != 0)) {
        ctl_error(w, CTL_E_BAD, "usage: queue [show ID]");
        return;
    }
    if (ctl->queue == NULL) {
        ctl_error(w, CTL_E_UNAVAILABLE, "the queue is not available");
        return;
    }
    struct item_json ij = {.w = w, .now = time(NULL)};
    if (req->argc == 3) {
        const char *id = req->argv[2];
        if (!valid_id(id)) {
            ctl_error(w, CTL_E_BAD, "invalid message id \"%s\"", id);
            return;
        }
        /* Probe first: the answer's shape depends on whether the message exists. */
        if (queue_foreach(ctl->queue, id, count_item, NULL) == 0) {
            ctl_error(w, CTL_E_NO_MESSAGE, "no such message \"%s\"", id);
            return;
        }
        json_object_begin(w);
        json_kv_bool(w, "ok", 1);
        json_key(w, "message");
        queue_foreach(ctl->queue, id, queue_item_json, &ij);
        json_object_end(w);
        return;
    }
    json_object_begin(w);
    json_kv_bool(w, "ok", 1);
    json_kv_uint(w, "count", queue_count(ctl->queue));
    json_key(w, "messages");
    json_array_begin(w);
    queue_foreach(ctl->queue, NULL, queue_item_json, &ij);
    json_array_end(w);
    json_object_end(w);
}

static void cmd_flush(struct control *ctl, const struct ctl_request *req, struct json_writer *w)
{
    const char *target = req->argc == 2 ? req->argv[1] : NULL;
    if (ctl->queue == NULL) {
        ctl_error(w, CTL_E_UNAVAILABLE, "the queue is not available");
        return;
    }
    if (target != NULL && !valid_relay_name(target)) {
        ctl_error(w, CTL_E_BAD, "invalid message id or relay name \"%s\"", target);
        return;
    }
    long n = queue_flush(ctl->queue, target);
    if (n < 0) {
        /* an id-shaped name that is no relay was most likely meant as an id */
        int as_id = target != NULL && valid_id(target) && config_relay(ctl->cfg, target) == NULL;
        ctl_error(w, as_id ? CTL_E_NO_MESSAGE : CTL_E_NO_RELAY, "no such message or relay \"%s\"",
                  target ? target : "");
        return;
    }
    log_info("control: flush %s: %ld messages", target ? target : "all", n);
    json_object_begin(w);
    json_kv_bool(w, "ok", 1);
    json_kv_int(w, "flushed", n);
    json_object_end(w);
}

/* hold, release and delete share their checks and their error texts. */
static void queue_cmd_answer(struct json_writer *w, int rc, const char *id, const char *state_msg)
{
    switch (rc) {
    case QUEUE_OK:
        json_object_begin(w);
        json_kv_bool(w, "ok", 1);
        json_object_end(w);
        return;
    case QUEUE_UNKNOWN:
        ctl_error(w, CTL_E_NO_MESSAGE, "no such message \"%s\"", id);
        return;
    case QUEUE_BUSY:
        ctl_error(w, CTL_E_BUSY, "busy: a delivery attempt is in progress, try again");
        return;
    case QUEUE_STATE:
        ctl_error(w, CTL_E_STATE, "%s", state_msg);
        return;
    }
    ctl_error(w, CTL_E_INTERNAL, "internal error");
}

/* hold, release, delete: one message by id, answered by queue_cmd_answer(). */
static void queue_id_cmd(struct control *ctl, const struct ctl_request *req, struct json_writer *w,
                         int (*op)(struct queue *, const char *), const char *state_msg)
{
    const char *id = req->argv[1];
    if (ctl->queue == NULL)
        ctl_error(w, CTL_E_UNAVAILABLE, "the queue is not available");
    else if (!valid_id(id))
        ctl_error(w, CTL_E_BAD, "invalid message id \"%s\"", id);
    else
        queue_cmd_answer(w, op(ctl->queue, id), id, state_msg);
}

static void cmd_hold(struct control *ctl, const struct ctl_request *req, struct json_writer *w)
{
    queue_id_cmd(ctl, req, w, queue_hold, "already held");
}

static void cmd_release(struct control *ctl, const struct ctl_request *req, struct json_writer *w)
{
    queue_id_cmd(ctl, req, w, queue_release, "not held");
}

static void cmd_delete(struct control *ctl, const struct ctl_request *req, struct json_writer *w)
{
    queue_id_cmd(ctl, req, w, queue_delete, "cannot delete it now");
}

static void cmd_reload(struct control *ctl, const struct ctl_request *req, struct json_writer *w)
{
    if (ctl->reload == NULL) {
        ctl_error(w, CTL_E_UNAVAILABLE, "reload is not available");
        return;
    }
    struct pool_reload_stats st;
    char err[1024];
    /* The daemon logs the outcome; this answer tells the operator who asked. */
    if (ctl->reload(ctl->reload_arg, &st, err, sizeof(err)) != 0) {
        ctl_error(w, CTL_E_RELOAD, "%s", err);
        return;
    }
    json_object_begin(w);
    json_kv_bool(w, "ok", 1);
    json_kv_uint(w, "relays_kept", st.kept);
    json_kv_uint(w, "relays_changed", st.changed);
    json_kv_uint(w, "relays_added", st.added);
    json_kv_uint(w, "relays_removed", st.removed);
    json_object_end(w);
}

/* The Prometheus text, as one JSON string (mailpoolctl prints it raw). */
static void cmd_metrics(struct control *ctl, const struct ctl_request *req, struct json_writer *w)
{
    struct evbuffer *text = evbuffer_new();
    if (text == NULL || metrics_render(text, ctl->pool, ctl->queue) != 0) {
        if (text != NULL)
            evbuffer_free(text);
        ctl_error(w, CTL_E_INTERNAL, "out of memory");
        return;
    }
    size_t len = evbuffer_get_length(text);
    const char *s = (const char *)evbuffer_pullup(text, -1);
    json_object_begin(w);
    json_kv_bool(w, "ok", 1);
    json_key(w, "text");
    json_string_len(w, s ? s : "", s ? len : 0);
    json_object_end(w);
    evbuffer_free(text);
}

/* ---- answering later -------------------------------------------------------- */

static struct ctl_conn *ctl_defer(struct control *ctl, void (*cancel)(void *work), void *work);
static void ctl_answer_later(struct ctl_conn *c, struct evbuffer *answer);

static void test_done(struct evbuffer *answer, void *arg)
{
    ctl_answer_later(arg, answer);
}

static void test_cancel(void *work)
{
    probe_cancel(work);
}

/* "test RELAY": a probe session (probe.c); the answer comes when it is over. */
static void cmd_test(struct control *ctl, const struct ctl_request *req, struct json_writer *w)
{
    const char *name = req->argv[1];
    struct upstream_params params;
    if (!valid_relay_name(name)) {
        ctl_error(w, CTL_E_BAD, "invalid relay name \"%s\"", name);
        return;
    }
    if (pool_probe_params(ctl->pool, name, &params) != 0) {
        ctl_error(w, CTL_E_NO_RELAY, "no such relay \"%s\"", name);
        return;
    }
    struct probe *pr = probe_start(&params, test_done, ctl->current);
    if (pr == NULL) {
        ctl_error(w, CTL_E_INTERNAL, "out of memory");
        return;
    }
    ctl_defer(ctl, test_cancel, pr);
}

/* Later commands (relays, reload, test, metrics ...) join this table. */
static const struct ctl_command commands[] = {
    {"status", 0, 0, "status", cmd_status},        {"pool", 0, 0, "pool", cmd_pool},
    {"queue", 0, 2, "queue [show ID]", cmd_queue}, {"flush", 0, 1, "flush [ID|RELAY]", cmd_flush},
    {"hold", 1, 1, "hold ID", cmd_hold},           {"release", 1, 1, "release ID", cmd_release},
    {"delete", 1, 1, "delete ID", cmd_delete},     {"reload", 0, 0, "reload", cmd_reload},
    {"relays", 0, 0, "relays", cmd_relays},        {"metrics", 0, 0, "metrics", cmd_metrics},
    {"test", 1, 1, "test RELAY", cmd_test},
};

/* ---- requests --------------------------------------------------------------- */

static void request_run(struct ctl_conn *c, enum control_parse_status st,
                        const struct control_request *parsed, struct json_writer *w)
{
    struct ctl_request req;
    if (st == CONTROL_REQ_TOO_MANY) {
        ctl_error(w, CTL_E_BAD, "too many words in the request (at most %d)", CTL_MAX_WORDS);
        return;
    }
    if (st != CONTROL_REQ_OK) {
        ctl_error(w, CTL_E_BAD, "empty request");
        return;
    }
    req.argc = parsed->argc;
    memcpy(req.argv, parsed->argv, sizeof(req.argv));
    char name[64];
    log_escape(req.argv[0], strlen(req.argv[0]), name, sizeof(name));
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        const struct ctl_command *cmd = &commands[i];
        if (strcmp(cmd->name, req.argv[0]) != 0)
            continue;
        int nargs = req.argc - 1;
        if (nargs < cmd->min_args || nargs > cmd->max_args) {
            ctl_error(w, CTL_E_BAD, "usage: %s", cmd->usage);
            return;
        }
        log_debug("control client=%lu uid=%u command=%s", c->id, (unsigned)c->uid, name);
        c->ctl->current = c;
        cmd->run(c->ctl, &req, w);
        c->ctl->current = NULL;
        return;
    }
    char esc[200];
    log_escape(name, strlen(name), esc, sizeof(esc));
    log_debug("control client=%lu uid=%u unknown command=\"%s\"", c->id, (unsigned)c->uid, esc);
    ctl_error(w, CTL_E_UNKNOWN, "unknown command \"%s\"", req.argv[0]);
}

/*
 * Put the protocol version first in a JSON answer: {"v":1,...}.  Done here,
 * once for every answer, so no command can forget it.
 */
static void answer_stamp(struct evbuffer *buf)
{
    unsigned char first[2];
    if (evbuffer_copyout(buf, first, 2) != 2 || first[0] != '{')
        return;
    char head[32];
    int n = snprintf(head, sizeof(head), "{\"v\":%d%s", CTL_PROTOCOL_VERSION,
                     first[1] == '}' ? "" : ",");
    evbuffer_drain(buf, 1);
    evbuffer_prepend(buf, head, (size_t)n);
}

/* Queue one answer line: the command's JSON, or an error if the writer was misused. */
static void conn_answer(struct ctl_conn *c, enum control_parse_status st,
                        const struct control_request *parsed)
{
    struct evbuffer *buf = evbuffer_new();
    if (buf == NULL) {
        c->closing = 1;
        return;
    }
    struct json_writer w;
    json_writer_init(&w, buf);
    request_run(c, st, parsed, &w);
    if (c->waiting) {
        /* ctl_answer_later() queues the answer */
        evbuffer_free(buf);
        return;
    }
    if (json_writer_finish(&w) != 0) {
        log_error("control client=%lu: malformed answer dropped", c->id);
        evbuffer_drain(buf, evbuffer_get_length(buf));
        json_writer_init(&w, buf);
        ctl_error(&w, CTL_E_INTERNAL, "internal error");
    }
    answer_stamp(buf);
    evbuffer_add(buf, "\n", 1);
    if (bufferevent_write_buffer(c->bev, buf) != 0)
        c->closing = 1;
    evbuffer_free(buf);
}

/* An error answer that ends the connection (bad input, timeout, refusal). */
static void conn_fail(struct ctl_conn *c, const char *code, const char *msg)
{
    struct evbuffer *buf = evbuffer_new();
    if (buf != NULL) {
        struct json_writer w;
        json_writer_init(&w, buf);
        ctl_error(&w, code, "%s", msg);
        answer_stamp(buf);
        evbuffer_add(buf, "\n", 1);
        bufferevent_write_buffer(c->bev, buf);
        evbuffer_free(buf);
    }
    c->closing = 1;
}

/*
 * Answer every complete request line in the input, in order.  After the
 * client's EOF a last line without a line end is a request too.
 */
static void conn_process(struct ctl_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    struct evbuffer *out = bufferevent_get_output(c->bev);
    while (!c->closing && !c->waiting) {
        if (evbuffer_get_length(out) >= CTL_MAX_PENDING) {
            c->throttled = 1;
            bufferevent_disable(c->bev, EV_READ);
            bufferevent_setwatermark(c->bev, EV_WRITE, CTL_MAX_PENDING / 2, 0);
            return;
        }
        size_t avail = evbuffer_get_length(in);
        size_t eol_len = 0;
        struct evbuffer_ptr eol = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);
        size_t len;
        if (eol.pos >= 0) {
            len = (size_t)eol.pos;
        } else if (avail > MAILPOOL_MAX_CONTROL_LINE + 1 /* + 1: room for a CR */ ||
                   (c->eof && avail > 0)) {
            len = avail;
        } else {
            return;
        }
        if (len > MAILPOOL_MAX_CONTROL_LINE + 1) {
            log_info("control client=%lu sent a line over %d bytes: closing", c->id,
                     MAILPOOL_MAX_CONTROL_LINE);
            evbuffer_drain(in, avail);
            conn_fail(c, CTL_E_BAD, "request line too long");
            return;
        }
        char line[MAILPOOL_MAX_CONTROL_LINE + 2];
        evbuffer_remove(in, line, len);
        evbuffer_drain(in, eol_len);
        struct control_request parsed;
        enum control_parse_status st = control_request_parse(line, len, &parsed);
        if (st == CONTROL_REQ_TOO_LONG) {
            log_info("control client=%lu sent a line over %d bytes: closing", c->id,
                     MAILPOOL_MAX_CONTROL_LINE);
            evbuffer_drain(in, evbuffer_get_length(in));
            conn_fail(c, CTL_E_BAD, "request line too long");
            return;
        }
        if (st == CONTROL_REQ_NOT_PRINT) {
            log_info("control client=%lu sent binary data: closing", c->id);
            evbuffer_drain(in, evbuffer_get_length(in));
            conn_fail(c, CTL_E_BAD, "invalid request: not a line of printable ASCII");
            return;
        }
        struct timeval tv = {CTL_IDLE_SECONDS, 0};
        evtimer_add(c->deadline, &tv);
        conn_answer(c, st, &parsed);
    }
}

/* ---- connections ------------------------------------------------------------- */

static void conn_free(struct ctl_conn *c)
{
    struct control *ctl = c->ctl;
    TAILQ_REMOVE(&ctl->conns, c, entry);
    ctl->nconns--;
    if (c->waiting) {
        log_debug("control client=%lu left before its answer", c->id);
        c->waiting = 0;
        c->cancel(c->work);
    }
    event_free(c->deadline);
    bufferevent_free(c->bev);
    log_debug("control client=%lu closed", c->id);
    free(c);
}

/*
 * Closing a Unix socket with unread bytes in it resets the connection, and
 * the peer may then lose the answer it has not read yet (the refusal, the
 * error line).  So take in what the client already sent, up to a bound.
 */
static void conn_discard_input(struct ctl_conn *c)
{
    evutil_socket_t fd = bufferevent_getfd(c->bev);
    char buf[4096];
    size_t total = 0;
    while (fd >= 0 && total < CTL_DISCARD_MAX) {
        ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n <= 0)
            break;
        total += (size_t)n;
    }
}

/*
 * The last step of every callback: a connection that is done is freed once
 * its answers are out (the write callback comes back for the rest).
 */
static void conn_settle(struct ctl_conn *c)
{
    if (c->closing && !c->waiting) {
        bufferevent_disable(c->bev, EV_READ);
        if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
            conn_discard_input(c);
            conn_free(c);
        }
    }
}

/*
 * The running command answers later: its connection reads no more requests
 * (so answers stay in order) and has no idle deadline until
 * ctl_answer_later(); cancel(work) runs if the client leaves first.
 */
static struct ctl_conn *ctl_defer(struct control *ctl, void (*cancel)(void *work), void *work)
{
    struct ctl_conn *c = ctl->current;
    c->waiting = 1;
    c->cancel = cancel;
    c->work = work;
    evtimer_del(c->deadline);
    return c;
}

/*
 * The deferred answer (a JSON object; NULL when it could not be made):
 * queue it, then go on with the requests the client sent meanwhile.
 */
static void ctl_answer_later(struct ctl_conn *c, struct evbuffer *answer)
{
    c->waiting = 0;
    c->cancel = NULL;
    c->work = NULL;
    struct evbuffer *buf = evbuffer_new();
    if (buf == NULL) {
        c->closing = 1;
    } else {
        if (answer == NULL || evbuffer_add_buffer(buf, answer) != 0) {
            struct json_writer w;
            evbuffer_drain(buf, evbuffer_get_length(buf));
            json_writer_init(&w, buf);
            ctl_error(&w, CTL_E_INTERNAL, "out of memory");
        }
        answer_stamp(buf);
        evbuffer_add(buf, "\n", 1);
        if (bufferevent_write_buffer(c->bev, buf) != 0)
            c->closing = 1;
        evbuffer_free(buf);
    }
    if (!c->closing) {
        struct timeval tv = {CTL_IDLE_SECONDS, 0};
        evtimer_add(c->deadline, &tv);
        conn_process(c);
        if (c->eof && !c->waiting)
            c->closing = 1;
    }
    conn_settle(c);
}

static void conn_read_cb(struct bufferevent *bev, void *arg)
{
    struct ctl_conn *c = arg;
    conn_process(c);
    conn_settle(c);
}

static void conn_write_cb(struct bufferevent *bev, void *arg)
{
    struct ctl_conn *c = arg;
    if (c->throttled) {
        c->throttled = 0;
        bufferevent_setwatermark(bev, EV_WRITE, 0, 0);
        if (!c->closing) {
            bufferevent_enable(bev, EV_READ);
            conn_process(c);
        }
    }
    conn_settle(c);
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct ctl_conn *c = arg;
    if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_WRITING)) {
        /* The client may have only shut down its side: answer what it sent, then close. */
        c->eof = 1;
        conn_process(c);
        /* A deferred answer still comes; the requests after it are read then. */
        if (!c->waiting)
            c->closing = 1;
        conn_settle(c);
        return;
    }
    if (what & BEV_EVENT_TIMEOUT)
        log_info("control client=%lu does not read its answers: closing", c->id);
    else if (what & BEV_EVENT_ERROR)
        log_debug("control client=%lu: %s", c->id, strerror(errno));
    conn_free(c);
}

static void conn_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct ctl_conn *c = arg;
    if (c->closing)
        return;
    log_info("control client=%lu sent no request for %d seconds: closing", c->id, CTL_IDLE_SECONDS);
    conn_fail(c, CTL_E_TIMEOUT, "timed out waiting for a request");
    conn_settle(c);
}

/*
 * The peer's supplementary groups (SO_PEERGROUPS, Linux 4.13), so that
 * daemon.control_group needs no NSS lookup.  Returns the count (0 when the
 * kernel cannot tell) with *out malloc'd, or -1 when out of memory.
 */
static int peer_groups(int fd, gid_t **out)
{
    *out = NULL;
#ifdef SO_PEERGROUPS
    socklen_t len = 64 * sizeof(gid_t);
    for (int tries = 0; tries < 4; tries++) {
        gid_t *g = malloc(len);
        if (g == NULL)
            return -1;
        socklen_t got = len;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, g, &got) == 0) {
            *out = g;
            return (int)(got / sizeof(gid_t));
        }
        free(g);
        if (errno != ERANGE)
            return 0;
        len = got > len ? got : len * 2;
    }
#else
    (void)fd;
#endif
    return 0;
}

/*
 * Root, the daemon's own user, its group (the socket's group by default),
 * or daemon.control_group as primary or supplementary group.
 */
static int peer_allowed(const struct control *ctl, int fd, uid_t uid, gid_t gid)
{
    if (uid == 0 || uid == geteuid() || gid == getegid())
        return 1;
    if (!ctl->cfg->has_control_group)
        return 0;
    gid_t want = ctl->cfg->control_group;
    if (gid == want)
        return 1;
    gid_t *groups;
    int n = peer_groups(fd, &groups);
    int in = 0;
    for (int i = 0; i < n && !in; i++)
        in = groups[i] == want;
    free(groups);
    return in;
}

/* Connections this uid has open now (root has no cap of its own: CTL_MAX_CONNS bounds it). */
static unsigned conns_of(const struct control *ctl, uid_t uid)
{
    unsigned n = 0;
    const struct ctl_conn *c;
    TAILQ_FOREACH(c, &ctl->conns, entry)
    {
        if (c->uid == uid && !c->closing)
            n++;
    }
    return n;
}

/* accept() failed: out of descriptors or memory pauses accepting (see unixsock.h). */
static void control_accept_error_cb(struct evconnlistener *l, void *arg)
{
    struct control *ctl = arg;
    listen_pause_error(&ctl->pause);
}

static void control_accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                              int salen, void *arg)
{
    struct control *ctl = arg;
    listen_pause_accepted(&ctl->pause);
    if (ctl->nconns >= CTL_MAX_CONNS) {
        static const char busy[] = "{\"v\":1,\"ok\":false,\"code\":\"too_many_connections\","
                                   "\"error\":\"too many control connections\"}\n";
        ssize_t n = send(fd, busy, sizeof(busy) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)n;
        close(fd);
        log_warn("control refused a client: %d connections open", CTL_MAX_CONNS);
        return;
    }
    struct ctl_conn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        close(fd);
        return;
    }
    c->ctl = ctl;
    c->id = ++ctl->next_id;
    struct ucred cred;
    socklen_t clen = sizeof(cred);
    int have_cred = getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) == 0;
    c->uid = have_cred ? cred.uid : (uid_t)-1;
    c->gid = have_cred ? cred.gid : (gid_t)-1;
    c->pid = have_cred ? cred.pid : 0;
    c->bev = bufferevent_socket_new(ctl->base, fd, BEV_OPT_CLOSE_ON_FREE);
    c->deadline = evtimer_new(ctl->base, conn_deadline_cb, c);
    if (c->bev == NULL || c->deadline == NULL) {
        if (c->bev)
            bufferevent_free(c->bev);
        else
            close(fd);
        if (c->deadline)
            event_free(c->deadline);
        free(c);
        return;
    }
    TAILQ_INSERT_TAIL(&ctl->conns, c, entry);
    ctl->nconns++;
    bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
    struct timeval wtv = {CTL_WRITE_SECONDS, 0};
    bufferevent_set_timeouts(c->bev, NULL, &wtv);
    if (!have_cred || !peer_allowed(ctl, fd, c->uid, c->gid)) {
        log_warn("control client=%lu refused: uid=%d gid=%d pid=%d: permission denied", c->id,
                 have_cred ? (int)c->uid : -1, have_cred ? (int)c->gid : -1, (int)c->pid);
        bufferevent_enable(c->bev, EV_WRITE);
        conn_fail(c, CTL_E_DENIED, "permission denied");
        conn_settle(c);
        return;
    }
    /* this connection is in the list already, hence ">" */
    unsigned max = ctl->cfg->control_max_per_uid;
    if (c->uid != 0 && max > 0 && conns_of(ctl, c->uid) > max) {
        log_warn("control client=%lu refused: uid=%u has %u connections open "
                 "(daemon.control_max_per_uid)",
                 c->id, (unsigned)c->uid, max);
        bufferevent_enable(c->bev, EV_WRITE);
        char msg[96];
        snprintf(msg, sizeof(msg), "too many control connections for uid %u (at most %u)",
                 (unsigned)c->uid, max);
        conn_fail(c, CTL_E_TOO_MANY, msg);
        conn_settle(c);
        return;
    }
    log_debug("control client=%lu connected uid=%u gid=%u pid=%d", c->id, (unsigned)c->uid,
              (unsigned)c->gid, (int)c->pid);
    struct timeval tv = {CTL_IDLE_SECONDS, 0};
    evtimer_add(c->deadline, &tv);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

/* ---- setup ------------------------------------------------------------------ */

struct control *control_new(struct event_base *base, const struct config *cfg, struct pool *pool,
                            struct queue *queue, struct submit_server *submit, int fd, char *err,
                            size_t errlen)
{
    struct control *ctl = calloc(1, sizeof(*ctl));
    if (ctl == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    ctl->base = base;
    ctl->cfg = cfg;
    ctl->pool = pool;
    ctl->queue = queue;
    ctl->submit = submit;
    TAILQ_INIT(&ctl->conns);
    clock_gettime(CLOCK_MONOTONIC, &ctl->started);
    ctl->listener = evconnlistener_new(base, control_accept_cb, ctl, LEV_OPT_CLOSE_ON_EXEC, -1, fd);
    if (ctl->listener != NULL &&
        listen_pause_init(&ctl->pause, base, ctl->listener, "control") != 0) {
        evconnlistener_free(ctl->listener);
        listen_pause_clear(&ctl->pause);
        ctl->listener = NULL;
    }
    if (ctl->listener != NULL)
        evconnlistener_set_error_cb(ctl->listener, control_accept_error_cb);
    if (ctl->listener == NULL) {
        snprintf(err, errlen, "cannot listen on the control socket");
        free(ctl);
        return NULL;
    }
    return ctl;
}

void control_free(struct control *ctl)
{
    if (ctl == NULL)
        return;
    struct ctl_conn *c;
    while ((c = TAILQ_FIRST(&ctl->conns)) != NULL)
        /* conn_free() unlinks c; the analyzer cannot see TAILQ_REMOVE update the head. */
        // NOLINTNEXTLINE(clang-analyzer-unix.Malloc)
        conn_free(c);
    evconnlistener_free(ctl->listener);
    listen_pause_clear(&ctl->pause);
    free(ctl);
}

void control_set_config(struct control *ctl, const struct config *cfg)
{
    ctl->cfg = cfg;
    /* A running test reads the old relay profile and TLS context, which may go now. */
    struct ctl_conn *c = TAILQ_FIRST(&ctl->conns);
    while (c != NULL) {
        struct ctl_conn *next = TAILQ_NEXT(c, entry);
        if (c->waiting) {
            c->waiting = 0;
            c->cancel(c->work);
            struct evbuffer *buf = evbuffer_new();
            if (buf != NULL) {
                struct json_writer w;
                json_writer_init(&w, buf);
                ctl_error(&w, CTL_E_STATE,
                          "the configuration was reloaded during the test; "
                          "run it again");
            }
            ctl_answer_later(c, buf);
            if (buf != NULL)
                evbuffer_free(buf);
        }
        c = next;
    }
}

void control_set_reload(struct control *ctl, control_reload_fn fn, void *arg)
{
    ctl->reload = fn;
    ctl->reload_arg = arg;
}
