/*
 * The submission socket: an LMTP server (RFC 2033) for local clients, with
 * RFC 2920 PIPELINING, RFC 2034 ENHANCEDSTATUSCODES, RFC 6152 8BITMIME,
 * RFC 6531 SMTPUTF8 and RFC 1870 SIZE.  Each client is a small state
 * machine; the message is received in full (and canonicalised by body.c)
 * before it is handed to the pool, so a slow client never holds an upstream
 * session.
 */
#include "submit.h"

#include <errno.h>
#include <pwd.h>
#include <stdarg.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "body.h"
#include "bodyfile.h"
#include "config.h"
#include "dispatch.h"
#include "ioev.h"
#include "lmtp_parse.h"
#include "log.h"
#include "message.h"
#include "pool.h"
#include "queue.h"
#include "route.h"
#include "spool.h"
#include "unixsock.h"

/* Errors after which a client is disconnected (a confused or hostile peer). */
#define MAX_BAD_COMMANDS 20
/* How long a closing client may take to read its last reply. */
#define CLOSE_WAIT_MS 5000
/* Input consumed per DATA step, so one client cannot monopolise the loop. */
#define DATA_STEP (64 * 1024)

enum client_state {
    CS_START,   /* greeted, waiting for LHLO */
    CS_READY,   /* LHLO done, no transaction */
    CS_MAIL,    /* MAIL accepted, collecting RCPTs */
    CS_DATA,    /* receiving message data */
    CS_WAIT,    /* message handed to the pool, waiting for results */
    CS_CLOSING, /* flushing the last reply, then closing */
    CS_LAST
};

static const char *const client_state_names[CS_LAST] = {
    [CS_START] = "start", [CS_READY] = "ready", [CS_MAIL] = "mail",
    [CS_DATA] = "data",   [CS_WAIT] = "wait",   [CS_CLOSING] = "closing",
};

struct client {
    struct submit_server *srv;
    struct ioev *io;
    enum client_state state;
    unsigned long id;
    uid_t uid;
    gid_t gid;
    pid_t pid;
    gid_t *groups; /* supplementary groups (SO_PEERGROUPS), read once at connect */
    size_t ngroups;
    int allowed; /* in daemon.allow */
    struct message *msg;
    size_t *rcpt_relay;             /* relay index of each recipient of msg, decided at RCPT */
    struct dispatch *dispatch;      /* the message is with its relays, waiting for results */
    const struct config *route_cfg; /* the config rcpt_relay was decided under */
    struct body_decoder dec;
    int too_big;
    size_t received; /* decoded bytes of the message so far, stored or not */
    size_t in_file;  /* bytes of msg's body already in msg->body_fd */
    int store_err;   /* errno of a failed write of the body to its file: 452 at the end */
    int bad_commands;
    int in_read;
    TAILQ_ENTRY(client) entry;
};

struct submit_server {
    struct event_base *base;
    const struct config *cfg;
    struct pool *pool;
    struct queue *queue;
    struct spool *spool;
    struct evconnlistener *listener;
    struct listen_pause pause;
    TAILQ_HEAD(, client) clients;
    size_t nclients;
    unsigned long next_id;
};

static void client_read(struct client *c);

static void client_set_state(struct client *c, enum client_state s)
{
    log_debug("submit client=%lu state=%s->%s", c->id, client_state_names[c->state],
              client_state_names[s]);
    c->state = s;
}

static void client_reply(struct client *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void client_reply(struct client *c, const char *fmt, ...)
{
    struct evbuffer *out = ioev_output(c->io);
    va_list ap;
    va_start(ap, fmt);
    evbuffer_add_vprintf(out, fmt, ap);
    va_end(ap);
    evbuffer_add(out, "\r\n", 2);
}

/* Arm the per-client deadline: silence or a trickle past it closes the client. */
static void client_touch(struct client *c)
{
    ioev_set_timeout(c->io, c->srv->cfg->client_timeout * 1000u);
}

static void client_free(struct client *c)
{
    struct submit_server *srv = c->srv;
    if (c->dispatch) {
        /* Client gone: the pool and the spool finish what they have. */
        dispatch_cancel(c->dispatch);
        c->dispatch = NULL;
    }
    message_free(c->msg);
    free(c->rcpt_relay);
    free(c->groups);
    TAILQ_REMOVE(&srv->clients, c, entry);
    srv->nclients--;
    ioev_free(c->io); /* safe inside its callback: freed when that returns */
    log_debug("submit client=%lu closed", c->id);
    free(c);
}

/* Send what is queued, then close. */
static void client_close_after_flush(struct client *c)
{
    client_set_state(c, CS_CLOSING);
    ioev_set_timeout(c->io, CLOSE_WAIT_MS);
    /* IOEV_FLUSHED (or the timeout, for a client that reads nothing) frees it. */
    ioev_flush(c->io);
}

static void client_reset_txn(struct client *c)
{
    message_free(c->msg);
    c->msg = NULL;
    free(c->rcpt_relay);
    c->rcpt_relay = NULL;
    c->too_big = 0;
    c->received = 0;
    c->in_file = 0;
    c->store_err = 0;
}

static void client_bad(struct client *c, const char *reply)
{
    client_reply(c, "%s", reply);
    if (++c->bad_commands >= MAX_BAD_COMMANDS) {
        client_reply(c, "421 4.7.0 Too many errors, closing connection");
        client_close_after_flush(c);
    }
}

static struct route_peer client_peer(const struct client *c)
{
    struct route_peer p = {
        .uid = c->uid, .gid = c->gid, .groups = c->groups, .ngroups = c->ngroups};
    return p;
}

/* The relay of recipient `rcpt` under cfg; -1 when the client may not use it. */
static int client_route(const struct client *c, const struct config *cfg, const char *rcpt,
                        size_t *relay)
{
    struct route_peer peer = client_peer(c);
    const struct relay_config *x = c->msg->relay ? config_relay(cfg, c->msg->relay) : NULL;
    enum route_source src;
    int rc = route_recipient(cfg, &peer, c->msg->sender, rcpt, x, relay, &src);
    static const char *const how[] = {"route", "xrelay", "default"};
    char to[300];
    log_debug("submit client=%lu to=<%s> relay=%s by=%s%s", c->id,
              log_escape(rcpt, strlen(rcpt), to, sizeof(to)), cfg->relays[*relay].name, how[src],
              rc < 0 ? " denied" : "");
    return rc;
}

/* ---- results --------------------------------------------------------------- */

static void client_results(struct message *m, void *arg)
{
    struct client *c = arg;
    c->dispatch = NULL;
    c->msg = m;
    for (size_t i = 0; i < m->nrcpts; i++) {
        const struct rcpt_result *r = &m->results[i];
        client_reply(c, "%d %s %s", r->code, r->ecode, r->text ? r->text : "");
    }
    client_reset_txn(c);
    client_set_state(c, CS_READY);
    client_touch(c);
    /* Commands pipelined behind the data may be buffered already. */
    client_read(c);
}

static void client_data_done(struct client *c)
{
    struct submit_server *srv = c->srv;
    struct message *m = c->msg;
    if (c->too_big) {
        for (size_t i = 0; i < m->nrcpts; i++)
            client_reply(c, "552 5.3.4 Message exceeds the maximum size of %zu bytes",
                         srv->cfg->max_message_size);
        client_reset_txn(c);
        client_set_state(c, CS_READY);
        return;
    }
    if (m->body_fd >= 0 && c->store_err == 0) {
        /* The tail still in memory joins the rest; then the whole file is mapped. */
        size_t tail = evbuffer_get_length(m->body);
        if (bodyfile_append_buffer(m->body_fd, m->body) < 0 ||
            bodyfile_add(m->body, m->body_fd, 0, c->in_file + tail) < 0)
            c->store_err = errno;
        else
            c->in_file += tail;
    }
    if (c->store_err != 0) {
        log_warn("submit client=%lu msg id=%s status=452 error=\"cannot keep the message data on "
                 "disk: %s\"",
                 c->id, m->id, strerror(c->store_err));
        for (size_t i = 0; i < m->nrcpts; i++)
            client_reply(c, "452 4.3.1 Insufficient system storage, try again later");
        client_reset_txn(c);
        client_set_state(c, CS_READY);
        return;
    }
    m->size = evbuffer_get_length(m->body);
    if (body_decoder_8bit(&c->dec))
        m->eightbit = 1;
    const struct config *cfg = srv->cfg;
    if (c->route_cfg != cfg) {
        /*
         * A reload happened since RCPT: the indexes belong to the old config.
         * Route again under the new one; the allow lists were checked at RCPT.
         */
        for (size_t i = 0; i < m->nrcpts; i++)
            (void)client_route(c, cfg, m->rcpts[i], &c->rcpt_relay[i]);
        c->route_cfg = cfg;
    }
    const struct relay_config *rc = &cfg->relays[c->rcpt_relay[0]];
    char from[300];
    log_escape(m->sender, strlen(m->sender), from, sizeof(from));
    log_info("submit client=%lu msg id=%s uid=%u pid=%d from=<%s> nrcpt=%zu size=%zu relay=%s",
             c->id, m->id, (unsigned)c->uid, (int)c->pid, from, m->nrcpts, m->size, rc->name);
    client_set_state(c, CS_WAIT);
    /* Input keeps arriving (up to ioev's bound) but waits unprocessed. */
    ioev_set_timeout(c->io, 0);
    /* The dispatch owns the message until client_results() hands it back. */
    c->msg = NULL;
    c->dispatch =
        dispatch_start(srv->base, cfg, srv->pool, srv->queue, m, c->rcpt_relay, client_results, c);
    if (c->dispatch == NULL) {
        c->msg = m;
        for (size_t i = 0; i < m->nrcpts; i++)
            client_reply(c, "451 4.3.0 Out of memory, try again later");
        client_reset_txn(c);
        client_set_state(c, CS_READY);
        return;
    }
}

/* How often (bytes appended to a body file) the spool's free space is checked again. */
#define SPILL_ROOM_CHECK (4u * 1024 * 1024)

/* Forget the data received so far (the file, if any, goes with its descriptor). */
static void client_drop_body(struct client *c)
{
    struct message *m = c->msg;
    evbuffer_drain(m->body, evbuffer_get_length(m->body));
    if (m->body_fd >= 0)
        close(m->body_fd);
    m->body_fd = -1;
    c->in_file = 0;
}

/*
 * Move what the body holds in memory to its file (made on first use), so a
 * client's message costs the daemon at most BODYFILE_SPILL_AT bytes of
 * memory however large or slow it is.  A failure (disk full, below
 * spool.min_free) is remembered: the rest is read and dropped, and the
 * recipients get 452 at the end of the data.
 */
static void client_spill(struct client *c)
{
    struct message *m = c->msg;
    size_t n = evbuffer_get_length(m->body);
    if (m->body_fd < 0 && (m->body_fd = spool_tmpfile(c->srv->spool)) < 0) {
        c->store_err = errno;
        client_drop_body(c);
        return;
    }
    /* Every few MiB the spool's free space is looked at again: min_free holds. */
    if (c->in_file / SPILL_ROOM_CHECK != (c->in_file + n) / SPILL_ROOM_CHECK &&
        spool_has_room(c->srv->spool, n) < 0) {
        c->store_err = errno;
        client_drop_body(c);
        return;
    }
    if (bodyfile_append_buffer(m->body_fd, m->body) < 0) {
        c->store_err = errno;
        client_drop_body(c);
        return;
    }
    c->in_file += n;
}

/* Decode DATA from the input buffer.  Returns 1 when the end was reached. */
static int client_read_data(struct client *c)
{
    struct evbuffer *in = ioev_input(c->io);
    size_t max = c->srv->cfg->max_message_size;
    while (evbuffer_get_length(in) > 0) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, DATA_STEP, NULL, &v, 1) < 1)
            break;
        size_t len = v.iov_len < DATA_STEP ? v.iov_len : DATA_STEP;
        struct evbuffer *body = c->msg->body;
        struct evbuffer_iovec w;
        if (evbuffer_reserve_space(body, (ev_ssize_t)(2 * len + 2), &w, 1) < 1) {
            client_reply(c, "451 4.3.0 Out of memory");
            client_close_after_flush(c);
            return 0;
        }
        size_t outlen = 0;
        int done = 0;
        size_t used = body_decode(&c->dec, v.iov_base, len, w.iov_base, &outlen, &done);
        w.iov_len = c->too_big || c->store_err ? 0 : outlen;
        evbuffer_commit_space(body, &w, 1);
        evbuffer_drain(in, used);
        c->received += outlen;
        /* Counted whether stored or not: a storage error must not hide "too big" (552). */
        if (!c->too_big && c->received > max) {
            /* Past the limit: keep reading to the end, but store nothing more. */
            c->too_big = 1;
            client_drop_body(c);
        } else if (!c->too_big && !c->store_err && evbuffer_get_length(body) >= BODYFILE_SPILL_AT)
            client_spill(c);
        client_touch(c);
        if (done)
            return 1;
    }
    return 0;
}

/* ---- commands -------------------------------------------------------------- */

static void cmd_lhlo(struct client *c)
{
    const struct config *cfg = c->srv->cfg;
    client_reset_txn(c);
    client_reply(c, "250-%s", cfg->hostname);
    client_reply(c, "250-PIPELINING");
    client_reply(c, "250-ENHANCEDSTATUSCODES");
    client_reply(c, "250-8BITMIME");
    client_reply(c, "250-SMTPUTF8");
    client_reply(c, "250-DSN");
    client_reply(c, "250-SIZE %zu", cfg->max_message_size);
    client_reply(c, "250-" MAILPOOL_PARAM_RELAY);
    client_reply(c, "250 " MAILPOOL_PARAM_MODE);
    client_set_state(c, CS_READY);
}

/*
 * daemon.sender_policy "own": the login name of the peer's uid.  Asked of
 * NSS only under that policy, once per MAIL, for a local uid (passwd
 * files in practice).  NULL when the uid has no name or out of memory.
 */
static char *peer_user_name(uid_t uid)
{
    long sz = sysconf(_SC_GETPW_R_SIZE_MAX);
    size_t len = sz > 0 ? (size_t)sz : 1024;
    for (int tries = 0; tries < 8; tries++, len *= 2) {
        char *buf = malloc(len);
        if (buf == NULL)
            return NULL;
        struct passwd pw, *res = NULL;
        int rc = getpwuid_r(uid, &pw, buf, len, &res);
        if (rc == ERANGE) {
            free(buf);
            continue;
        }
        char *name = rc == 0 && res != NULL ? strdup(res->pw_name) : NULL;
        free(buf);
        return name;
    }
    return NULL;
}

/* sender_policy at MAIL FROM; a refusal is answered and logged here.  Returns 1 to go on. */
static int sender_allowed(struct client *c, const char *sender)
{
    const struct config *cfg = c->srv->cfg;
    if (!cfg->sender_policy_own || c->uid == 0)
        return 1;
    char *user = peer_user_name(c->uid);
    int ok = route_sender_allowed(cfg, c->uid, user, sender);
    if (!ok) {
        char from[MAILPOOL_MAX_PATH * 4 + 1];
        char uname[64];
        if (user == NULL)
            snprintf(uname, sizeof(uname), "%u", (unsigned)c->uid);
        else
            log_escape(user, strlen(user), uname, sizeof(uname));
        log_escape(sender, strlen(sender), from, sizeof(from));
        log_warn("submit client=%lu uid=%u user=%s pid=%d from=<%s> refused: sender_policy=own",
                 c->id, (unsigned)c->uid, uname, (int)c->pid, from);
        client_reply(c, "550 5.7.1 Sender address not allowed for user %s", uname);
    }
    free(user);
    return ok;
}

static void cmd_mail(struct client *c, const struct lmtp_cmd *cmd)
{
    const struct config *cfg = c->srv->cfg;
    if (c->state == CS_START) {
        client_bad(c, "503 5.5.1 Send LHLO first");
        return;
    }
    if (c->state != CS_READY) {
        client_bad(c, "503 5.5.1 Nested MAIL command");
        return;
    }
    if (cmd->has_size && cmd->size > cfg->max_message_size) {
        client_reply(c, "552 5.3.4 Message size exceeds the maximum of %zu bytes",
                     cfg->max_message_size);
        return;
    }
    if (!c->allowed) {
        client_reply(c, "550 5.7.1 User %u may not submit mail here", (unsigned)c->uid);
        return;
    }
    if (cmd->relay[0] && config_relay(cfg, cmd->relay) == NULL) {
        client_reply(c, "550 5.7.1 Unknown relay \"%s\"", cmd->relay);
        return;
    }
    if (cmd->relay[0]) {
        struct route_peer peer = client_peer(c);
        if (!route_peer_allowed(&config_relay(cfg, cmd->relay)->allow, &peer)) {
            client_reply(c, "550 5.7.1 User %u may not use relay \"%s\"", (unsigned)c->uid,
                         cmd->relay);
            return;
        }
    }
    if (!sender_allowed(c, cmd->path))
        return;
    struct message *m = message_new();
    if (m == NULL || (m->sender = strdup(cmd->path)) == NULL ||
        (cmd->relay[0] && (m->relay = strdup(cmd->relay)) == NULL)) {
        message_free(m);
        client_reply(c, "451 4.3.0 Out of memory");
        return;
    }
    if (cmd->envid[0] && (m->envid = strdup(cmd->envid)) == NULL) {
        message_free(m);
        client_reply(c, "451 4.3.0 Out of memory");
        return;
    }
    m->ret = cmd->ret;
    m->eightbit = cmd->body == BODY_8BITMIME;
    m->smtputf8 = cmd->smtputf8;
    m->mode = cmd->mode;
    m->uid = c->uid;
    m->gid = c->gid;
    m->pid = c->pid;
    c->msg = m;
    c->route_cfg = cfg;
    client_set_state(c, CS_MAIL);
    client_reply(c, "250 2.1.0 Sender ok");
}

static void cmd_rcpt(struct client *c, const struct lmtp_cmd *cmd)
{
    if (c->state != CS_MAIL) {
        client_bad(c, "503 5.5.1 Need MAIL before RCPT");
        return;
    }
    if (!c->msg->smtputf8 && addr_check(cmd->path, strlen(cmd->path), 0) != NULL) {
        /* RFC 6531 3.4: non-ASCII addresses only in an SMTPUTF8 transaction. */
        client_reply(c, "553 5.6.7 Non-ASCII recipient needs SMTPUTF8 on MAIL FROM");
        return;
    }
    if (c->msg->nrcpts >= MAILPOOL_MAX_RECIPIENTS) {
        client_reply(c, "452 4.5.3 Too many recipients");
        return;
    }
    size_t relay;
    if (client_route(c, c->route_cfg, cmd->path, &relay) < 0) {
        client_reply(c, "550 5.7.1 User %u may not use relay \"%s\" for this recipient",
                     (unsigned)c->uid, c->route_cfg->relays[relay].name);
        return;
    }
    size_t *r = realloc(c->rcpt_relay, (c->msg->nrcpts + 1) * sizeof(*r));
    if (r == NULL) {
        client_reply(c, "451 4.3.0 Out of memory");
        return;
    }
    c->rcpt_relay = r;
    if (message_add_rcpt_dsn(c->msg, cmd->path, cmd->notify, cmd->orcpt[0] ? cmd->orcpt : NULL) !=
        0) {
        client_reply(c, "451 4.3.0 Out of memory");
        return;
    }
    c->rcpt_relay[c->msg->nrcpts - 1] = relay;
    client_reply(c, "250 2.1.5 Recipient ok");
}

static void cmd_data(struct client *c)
{
    if (c->state != CS_MAIL) {
        client_bad(c, "503 5.5.1 Need MAIL before DATA");
        return;
    }
    if (c->msg->nrcpts == 0) {
        client_bad(c, "503 5.5.1 No valid recipients");
        return;
    }
    body_decoder_init(&c->dec);
    c->too_big = 0;
    client_set_state(c, CS_DATA);
    client_reply(c, "354 Start mail input; end with <CRLF>.<CRLF>");
}

static void client_command(struct client *c, const char *line, size_t len)
{
    struct lmtp_cmd *cmd = malloc(sizeof(*cmd));
    if (cmd == NULL) {
        client_reply(c, "451 4.3.0 Out of memory");
        return;
    }
    const char *err = lmtp_parse_command(line, len, cmd);
    if (err) {
        char esc[120];
        log_debug("submit client=%lu bad command \"%s\": %s", c->id,
                  log_escape(line, len < 80 ? len : 80, esc, sizeof(esc)), err);
        client_bad(c, err);
        free(cmd);
        return;
    }
    switch (cmd->verb) {
    case LMTP_LHLO:
        cmd_lhlo(c);
        break;
    case LMTP_MAIL:
        cmd_mail(c, cmd);
        break;
    case LMTP_RCPT:
        cmd_rcpt(c, cmd);
        break;
    case LMTP_DATA:
        cmd_data(c);
        break;
    case LMTP_RSET:
        client_reset_txn(c);
        if (c->state != CS_START)
            client_set_state(c, CS_READY);
        client_reply(c, "250 2.0.0 Ok");
        break;
    case LMTP_NOOP:
        client_reply(c, "250 2.0.0 Ok");
        break;
    case LMTP_QUIT:
        client_reply(c, "221 2.0.0 Bye");
        client_close_after_flush(c);
        break;
    case LMTP_VRFY:
        client_reply(c, "252 2.5.0 Cannot VRFY; send the message and see");
        break;
    case LMTP_HELP:
        client_reply(c, "214 2.0.0 LHLO MAIL RCPT DATA RSET NOOP QUIT (RFC 2033)");
        break;
    case LMTP_HELO:
    case LMTP_EHLO:
        client_bad(c, "500 5.5.1 This is LMTP (RFC 2033): say LHLO");
        break;
    case LMTP_STARTTLS:
    case LMTP_AUTH:
        client_bad(c, "502 5.5.1 Not available on the local submission socket");
        break;
    case LMTP_BDAT:
        client_bad(c, "502 5.5.1 CHUNKING is not offered");
        break;
    case LMTP_UNKNOWN:
    default:
        client_bad(c, "500 5.5.2 Unknown command");
        break;
    }
    free(cmd);
}

/* ---- I/O ------------------------------------------------------------------- */

/* Handle every complete command (or DATA) in the input, then send the replies in one write. */
static void client_read(struct client *c)
{
    struct evbuffer *in = ioev_input(c->io);
    if (c->in_read)
        return;
    c->in_read = 1;
    while (c->state != CS_WAIT && c->state != CS_CLOSING) {
        if (c->state == CS_DATA) {
            if (!client_read_data(c))
                break;
            client_data_done(c);
            continue;
        }
        size_t eol_len = 0;
        struct evbuffer_ptr eol = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF);
        if (eol.pos < 0) {
            if (evbuffer_get_length(in) > MAILPOOL_MAX_COMMAND_LINE) {
                client_reply(c, "500 5.5.2 Line too long");
                client_close_after_flush(c);
            }
            break;
        }
        size_t len = (size_t)eol.pos;
        if (len > MAILPOOL_MAX_COMMAND_LINE) {
            evbuffer_drain(in, len + eol_len);
            client_reply(c, "500 5.5.2 Line too long");
            client_close_after_flush(c);
            break;
        }
        char line[MAILPOOL_MAX_COMMAND_LINE + 1];
        evbuffer_remove(in, line, len);
        evbuffer_drain(in, eol_len);
        line[len] = '\0';
        client_touch(c);
        client_command(c, line, len);
    }
    c->in_read = 0;
    ioev_flush(c->io);
}

static void client_io_cb(struct ioev *io, enum ioev_event ev, void *arg)
{
    struct client *c = arg;
    switch (ev) {
    case IOEV_READ:
        client_read(c);
        break;
    case IOEV_FLUSHED:
        if (c->state == CS_CLOSING)
            client_free(c);
        break;
    case IOEV_EOF:
    case IOEV_ERROR:
        if (c->state == CS_DATA)
            log_info("submit client=%lu hung up in the middle of DATA: message discarded", c->id);
        else if (c->state == CS_WAIT)
            log_info("submit client=%lu hung up while its message is being relayed", c->id);
        if (ev == IOEV_ERROR && c->state != CS_CLOSING)
            log_info("submit client=%lu error: %s", c->id, ioev_error(io));
        client_free(c);
        break;
    case IOEV_TIMEOUT:
        if (c->state == CS_CLOSING) {
            client_free(c); /* the client does not read its last reply */
            break;
        }
        if (c->state == CS_WAIT)
            break;
        log_info("submit client=%lu timed out in state %s", c->id, client_state_names[c->state]);
        client_reply(c, "421 4.4.2 Timeout, closing connection");
        client_close_after_flush(c);
        break;
    case IOEV_CONNECTED:
    case IOEV_TLS_DONE:
        break;
    }
}

/*
 * The peer's supplementary groups, from the kernel (SO_PEERGROUPS, Linux
 * 4.13): group allow lists and routes then need no NSS lookup, which could
 * block the loop.  Where the kernel cannot tell, only the primary gid
 * counts.  Returns 0, or -1 when out of memory.
 */
static int client_read_groups(struct client *c, int fd)
{
#ifdef SO_PEERGROUPS
    socklen_t len = 16 * sizeof(gid_t);
    for (int tries = 0; tries < 4; tries++) {
        gid_t *g = realloc(c->groups, len ? len : sizeof(gid_t));
        if (g == NULL)
            return -1;
        c->groups = g;
        socklen_t got = len;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, g, &got) == 0) {
            c->ngroups = got / sizeof(gid_t);
            return 0;
        }
        if (errno != ERANGE || got <= len)
            break;
        len = got; /* the kernel said how much it needs */
    }
#else
    (void)fd;
#endif
    c->ngroups = 0;
    return 0;
}

/* accept() failed: out of descriptors or memory pauses accepting (see unixsock.h). */
static void submit_accept_error_cb(struct evconnlistener *l, void *arg)
{
    struct submit_server *srv = arg;
    listen_pause_error(&srv->pause);
}

static void submit_accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                             int salen, void *arg)
{
    struct submit_server *srv = arg;
    const struct config *cfg = srv->cfg;
    listen_pause_accepted(&srv->pause);
    if (srv->nclients >= cfg->max_clients) {
        static const char busy[] = "421 4.3.2 Too many clients, try again later\r\n";
        ssize_t n = send(fd, busy, sizeof(busy) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)n;
        close(fd);
        log_warn("submit refused a client: max_clients=%u reached", cfg->max_clients);
        return;
    }
    struct client *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        close(fd);
        return;
    }
    c->srv = srv;
    c->id = ++srv->next_id;
    struct ucred cred;
    socklen_t clen = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) == 0) {
        c->uid = cred.uid;
        c->gid = cred.gid;
        c->pid = cred.pid;
    } else {
        c->uid = (uid_t)-1;
        c->gid = (gid_t)-1;
    }
    if (client_read_groups(c, fd) < 0) {
        close(fd);
        free(c);
        return;
    }
    struct route_peer peer = client_peer(c);
    c->allowed = route_peer_allowed(&cfg->allow, &peer);
    if (!c->allowed)
        log_warn("submit client=%lu uid=%u gid=%u pid=%d is not in daemon.allow: MAIL is refused",
                 c->id, (unsigned)c->uid, (unsigned)c->gid, (int)c->pid);
    evutil_make_socket_nonblocking(fd);
    c->io = ioev_new(srv->base, fd, client_io_cb, c);
    if (c->io == NULL) {
        close(fd);
        free(c->groups);
        free(c);
        return;
    }
    TAILQ_INSERT_TAIL(&srv->clients, c, entry);
    srv->nclients++;
    log_debug("submit client=%lu connected uid=%u gid=%u pid=%d", c->id, (unsigned)c->uid,
              (unsigned)c->gid, (int)c->pid);
    client_touch(c);
    client_reply(c, "220 %s LMTP mailpoold ready", cfg->hostname);
    ioev_flush(c->io);
}

/* ---- setup --------------------------------------------------------------- */

struct submit_server *submit_new(struct event_base *base, const struct config *cfg,
                                 struct pool *pool, struct queue *queue, struct spool *spool,
                                 int fd, char *err, size_t errlen)
{
    struct submit_server *srv = calloc(1, sizeof(*srv));
    if (srv == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    srv->base = base;
    srv->cfg = cfg;
    srv->pool = pool;
    srv->queue = queue;
    srv->spool = spool;
    TAILQ_INIT(&srv->clients);
    srv->listener = evconnlistener_new(base, submit_accept_cb, srv, LEV_OPT_CLOSE_ON_EXEC, -1, fd);
    if (srv->listener != NULL &&
        listen_pause_init(&srv->pause, base, srv->listener, "submit") != 0) {
        evconnlistener_free(srv->listener);
        listen_pause_clear(&srv->pause);
        srv->listener = NULL;
    }
    if (srv->listener != NULL)
        evconnlistener_set_error_cb(srv->listener, submit_accept_error_cb);
    if (srv->listener == NULL) {
        snprintf(err, errlen, "cannot listen on the submission socket");
        free(srv);
        return NULL;
    }
    return srv;
}

void submit_stop_accepting(struct submit_server *srv)
{
    listen_pause_stop(&srv->pause);
}

void submit_free(struct submit_server *srv)
{
    if (srv == NULL)
        return;
    struct client *c;
    while ((c = TAILQ_FIRST(&srv->clients)) != NULL)
        /* client_free() unlinks c; the analyzer cannot see TAILQ_REMOVE update the head. */
        // NOLINTNEXTLINE(clang-analyzer-unix.Malloc)
        client_free(c);
    evconnlistener_free(srv->listener);
    listen_pause_clear(&srv->pause);
    free(srv);
}

size_t submit_clients(const struct submit_server *srv)
{
    return srv->nclients;
}

size_t submit_busy(const struct submit_server *srv)
{
    size_t n = 0;
    const struct client *c;
    TAILQ_FOREACH(c, &srv->clients, entry)
    if (c->state == CS_MAIL || c->state == CS_DATA || c->state == CS_WAIT)
        n++;
    return n;
}

void submit_set_config(struct submit_server *srv, const struct config *cfg)
{
    srv->cfg = cfg;
}
