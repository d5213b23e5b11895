/*
 * Queue mode (SPEC section 3): durable acceptance through the spool,
 * delivery through the pool, per-recipient progress recorded as it
 * happens, exponential back-off, expiry, and delivery status notifications
 * (RFC 3464) for permanent failures.  A DSN is itself a queued message that
 * is never bounced: if it cannot be delivered it goes to failed/.
 *
 * Order of durable steps for a finished message, so a crash at any point
 * repeats at most a notification or a delivery, never loses one:
 *   recipients marked D/F as results arrive -> DSN committed to the spool ->
 *   F marked X -> the message removed.
 */
#include "queue.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/queue.h>
#include <time.h>

#include "bounce.h"
#include "config.h"
#include "log.h"
#include "message.h"
#include "pool.h"
#include "spool.h"

/* Deliveries in progress at once; the rest wait their turn (FIFO). */
#define QUEUE_MAX_INFLIGHT 256
/*
 * Bodies read back from the spool for retries are held in memory while
 * they are sent; together they stay under this many bytes (a single larger
 * one still goes, alone).  A retry that does not fit waits a second.
 */
#define QUEUE_BODY_BUDGET (64u * 1024 * 1024)
/* Where a notification waits when bounce_rate is exhausted. */
#define BOUNCE_RETRY_SECONDS 5

struct qitem {
    struct queue *q;
    struct spool_entry e; /* mirrors the file; states follow the disk */
    int held;
    int busy;       /* an attempt (load, pool, marks, DSN, removal) is in progress */
    int ready;      /* in q->ready, waiting for an in-flight slot */
    int delete_req; /* delete once the attempt in progress ends */
    unsigned attempts;
    time_t next_attempt;
    char *last_error;
    char **rcpt_error;     /* per recipient, last reply */
    struct evbuffer *body; /* kept from submission for the first attempt */
    size_t charged;        /* bytes of QUEUE_BODY_BUDGET its retry body holds */
    struct event *timer;
    size_t marks_pending;
    int mark_failed;
    /* the submitter, until the commit is reported */
    queue_cb submit_cb;
    void *submit_arg;
    TAILQ_ENTRY(qitem) entry;       /* q->items */
    TAILQ_ENTRY(qitem) ready_entry; /* q->ready */
};

TAILQ_HEAD(qitem_list, qitem);

struct queue {
    struct event_base *base;
    const struct config *cfg;
    struct pool *pool;
    struct spool *spool;
    struct qitem_list items;
    struct qitem_list ready;
    struct qitem_list committing; /* submitted, not yet durable */
    size_t nitems;
    size_t inflight;
    size_t body_bytes; /* retry bodies in memory (QUEUE_BODY_BUDGET) */
    int quiescing;     /* shutting down: no new attempts */
    int stopping;
    /* bounce_rate: a token bucket refilled per minute */
    double bounce_tokens;
    time_t bounce_refill;
};

static void item_attempt(struct qitem *it);
static void item_finish_attempt(struct qitem *it);
static void item_complete(struct qitem *it);

/* ---- items ----------------------------------------------------------------- */

static void item_free(struct qitem *it)
{
    if (it->timer)
        event_free(it->timer);
    if (it->body)
        evbuffer_free(it->body);
    for (size_t i = 0; i < it->e.nrcpts && it->rcpt_error; i++)
        free(it->rcpt_error[i]);
    free(it->rcpt_error);
    free(it->last_error);
    spool_entry_clear(&it->e);
    free(it);
}

static void item_remove_from_index(struct qitem *it)
{
    struct queue *q = it->q;
    if (it->ready) {
        TAILQ_REMOVE(&q->ready, it, ready_entry);
        it->ready = 0;
    }
    TAILQ_REMOVE(&q->items, it, entry);
    q->nitems--;
}

static struct qitem *queue_find(const struct queue *q, const char *id)
{
    struct qitem *it;
    TAILQ_FOREACH(it, &q->items, entry)
    if (strcmp(it->e.id, id) == 0)
        return it;
    TAILQ_FOREACH(it, &q->committing, entry)
    if (strcmp(it->e.id, id) == 0)
        return it;
    return NULL;
}

static void set_error(char **slot, const char *text)
{
    free(*slot);
    *slot = text ? strdup(text) : NULL;
}

static const struct relay_config *item_relay(const struct qitem *it)
{
    const struct config *cfg = it->q->cfg;
    const struct relay_config *rc = it->e.relay ? config_relay(cfg, it->e.relay) : NULL;
    return rc ? rc : &cfg->relays[cfg->default_relay];
}

/* ---- scheduling ---------------------------------------------------------- */

static void item_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct qitem *it = arg;
    struct queue *q = it->q;
    if (it->busy || it->held || q->stopping || q->quiescing)
        return;
    if (q->inflight >= QUEUE_MAX_INFLIGHT) {
        if (!it->ready) {
            TAILQ_INSERT_TAIL(&q->ready, it, ready_entry);
            it->ready = 1;
        }
        return;
    }
    item_attempt(it);
}

/* Run the next attempt at `when` (now or later). */
static void item_schedule(struct qitem *it, time_t when)
{
    time_t now = time(NULL);
    it->next_attempt = when;
    struct timeval tv = {when > now ? when - now : 0, 0};
    evtimer_add(it->timer, &tv);
}

/* An in-flight slot is free: start the oldest ready item. */
static void queue_start_ready(struct queue *q)
{
    struct qitem *it;
    if (q->quiescing)
        return;
    while (q->inflight < QUEUE_MAX_INFLIGHT && (it = TAILQ_FIRST(&q->ready)) != NULL) {
        TAILQ_REMOVE(&q->ready, it, ready_entry);
        it->ready = 0;
        if (!it->busy && !it->held)
            item_attempt(it);
    }
}

static unsigned retry_delay(const struct queue *q, unsigned attempts)
{
    const struct spool_config *sc = &q->cfg->spool;
    unsigned long d = sc->retry_min ? sc->retry_min : 60;
    for (unsigned i = 1; i < attempts && d < sc->retry_max; i++)
        d *= 2;
    if (d > sc->retry_max)
        d = sc->retry_max;
    return (unsigned)d;
}

/* ---- the end of an attempt ------------------------------------------------ */

static int all_final(const struct qitem *it)
{
    for (size_t i = 0; i < it->e.nrcpts; i++)
        if (it->e.rcpts[i].state == SPOOL_PENDING)
            return 0;
    return 1;
}

/* The retry body this attempt read is gone: give its bytes back to the budget. */
static void item_uncharge(struct qitem *it)
{
    it->q->body_bytes -= it->charged;
    it->charged = 0;
}

static void item_release_slot(struct qitem *it)
{
    struct queue *q = it->q;
    if (it->busy) {
        it->busy = 0;
        q->inflight--;
    }
    queue_start_ready(q);
}

static void removed_cb(int err, void *arg)
{
    struct qitem *it = arg;
    struct queue *q = it->q;
    if (err) {
        /* The file stays; the message is finished in memory, the next start cleans up. */
        log_error("queue msg id=%s cannot remove the spool file: %s", it->e.id, strerror(err));
    }
    item_remove_from_index(it);
    it->busy = 0;
    q->inflight--;
    item_free(it);
    queue_start_ready(q);
}

static void item_remove(struct qitem *it)
{
    if (spool_remove(it->q->spool, it->e.id, it->held ? SPOOL_IN_HOLD : SPOOL_IN_QUEUE, removed_cb,
                     it) != 0)
        removed_cb(ENOMEM, it);
}

static void moved_failed_cb(int err, void *arg)
{
    struct qitem *it = arg;
    struct queue *q = it->q;
    if (err) {
        log_error("queue msg id=%s cannot move to failed/: %s; it stays queued", it->e.id,
                  strerror(err));
        item_release_slot(it);
        item_schedule(it, time(NULL) + retry_delay(q, ++it->attempts));
        return;
    }
    item_remove_from_index(it);
    it->busy = 0;
    q->inflight--;
    item_free(it);
    queue_start_ready(q);
}

/* Every mark of this step is on disk (or failed): go on with the attempt. */
static void marks_settled(struct qitem *it)
{
    if (it->mark_failed) {
        /* Without durable progress a restart might repeat work: retry later. */
        it->mark_failed = 0;
        item_release_slot(it);
        item_schedule(it, time(NULL) + retry_delay(it->q, ++it->attempts));
        return;
    }
    item_finish_attempt(it);
}

static void mark_done_cb(int err, void *arg)
{
    struct qitem *it = arg;
    if (err) {
        it->mark_failed = 1;
        log_error("queue msg id=%s cannot record delivery progress: %s", it->e.id, strerror(err));
    }
    if (--it->marks_pending > 0 || it->q->stopping)
        return; /* when stopping, the states are on disk; the next start goes on */
    marks_settled(it);
}

/* Record rcpt i's new state on disk; the attempt goes on when all marks are done. */
static void item_mark(struct qitem *it, size_t i, char state)
{
    it->e.rcpts[i].state = state;
    it->marks_pending++;
    if (spool_mark(it->q->spool, &it->e, it->held, i, state, mark_done_cb, it) != 0) {
        it->marks_pending--;
        it->mark_failed = 1;
    }
}

static void bounce_committed(int err, void *arg);

static int bounce_token(struct queue *q)
{
    time_t now = time(NULL);
    double rate = q->cfg->spool.bounce_rate ? q->cfg->spool.bounce_rate : 60;
    if (q->bounce_refill == 0)
        q->bounce_tokens = rate;
    else
        q->bounce_tokens += (double)(now - q->bounce_refill) * rate / 60.0;
    if (q->bounce_tokens > rate)
        q->bounce_tokens = rate;
    q->bounce_refill = now;
    if (q->bounce_tokens < 1.0)
        return 0;
    q->bounce_tokens -= 1.0;
    return 1;
}

/* Build and queue the DSN for the recipients in state F (the body is loaded). */
static void item_send_dsn(struct qitem *it, struct evbuffer *body)
{
    struct queue *q = it->q;
    const struct config *cfg = q->cfg;
    size_t nf = 0;
    for (size_t i = 0; i < it->e.nrcpts; i++)
        if (it->e.rcpts[i].state == SPOOL_FAILED)
            nf++;
    struct bounce_rcpt *br = calloc(nf ? nf : 1, sizeof(*br));
    struct message *dsn = message_new();
    size_t olen = body ? evbuffer_get_length(body) : 0;
    const char *orig = body ? (const char *)evbuffer_pullup(body, -1) : "";
    const char *to = cfg->spool.bounce_to ? cfg->spool.bounce_to : it->e.sender;
    if (br == NULL || dsn == NULL || (dsn->sender = strdup("")) == NULL ||
        message_add_rcpt(dsn, to) != 0) {
        free(br);
        message_free(dsn);
        log_error("queue msg id=%s cannot build its DSN: out of memory", it->e.id);
        item_release_slot(it);
        item_schedule(it, time(NULL) + BOUNCE_RETRY_SECONDS);
        return;
    }
    size_t k = 0;
    time_t now = time(NULL);
    char(*status)[16] = calloc(nf ? nf : 1, sizeof(*status));
    if (status == NULL) {
        free(br);
        message_free(dsn);
        item_release_slot(it);
        item_schedule(it, time(NULL) + BOUNCE_RETRY_SECONDS);
        return;
    }
    for (size_t i = 0; i < it->e.nrcpts; i++) {
        const struct spool_rcpt *r = &it->e.rcpts[i];
        if (r->state != SPOOL_FAILED)
            continue;
        const char *diag = it->rcpt_error[i] ? it->rcpt_error[i] : it->last_error;
        /*
         * Stored replies read "NNN X.Y.Z text".  A 5xx gives its own status;
         * a recipient that failed by expiry after 4xx replies gets 4.4.7
         * (delivery time expired, RFC 3463).
         */
        int code = 0;
        char ec[16] = "";
        /* Three digits cannot overflow; the range check rejects the rest. */
        // NOLINTNEXTLINE(cert-err34-c)
        if (diag && sscanf(diag, "%3d %15s", &code, ec) >= 1 && code >= 500 && code < 600)
            snprintf(status[k], sizeof(status[k]), "%s",
                     ec[0] == '5' && ec[1] == '.' ? ec : "5.0.0");
        else
            snprintf(status[k], sizeof(status[k]), "4.4.7");
        br[k].addr = r->addr;
        br[k].orcpt = r->orcpt;
        br[k].action = "failed";
        br[k].status = status[k];
        br[k].diagnostic = diag;
        br[k].last_attempt = it->attempts ? now : 0;
        k++;
    }
    struct bounce_info bi = {
        .reporting_mta = cfg->hostname,
        .to = to,
        .envid = it->e.envid,
        .queue_id = it->e.id,
        .arrival = it->e.created,
        .now = now,
        .rcpts = br,
        .nrcpts = k,
        .original = orig,
        .original_len = olen,
        .ret_full = it->e.ret != SPOOL_RET_HDRS,
        .max_original = cfg->spool.bounce_max_original,
    };
    size_t len = 0;
    char *text = bounce_build(&bi, &len);
    free(status);
    free(br);
    if (text == NULL || evbuffer_add(dsn->body, text, len) != 0) {
        free(text);
        message_free(dsn);
        item_release_slot(it);
        item_schedule(it, time(NULL) + BOUNCE_RETRY_SECONDS);
        return;
    }
    free(text);
    dsn->size = len;
    dsn->is_bounce = 1;
    dsn->mode = MODE_QUEUE;
    if (queue_submit(q, dsn, item_relay(it), bounce_committed, it) != 0) {
        message_free(dsn);
        item_release_slot(it);
        item_schedule(it, time(NULL) + BOUNCE_RETRY_SECONDS);
        return;
    }
    log_info("queue msg id=%s dsn id=%s to=<%s> failed=%zu", it->e.id, dsn->id, to, k);
    message_free(dsn);
}

static void bounce_committed(int err, void *arg)
{
    struct qitem *it = arg;
    if (it->q->stopping)
        return; /* the next start sees the F states and sends the DSN again */
    if (err) {
        log_error("queue msg id=%s cannot queue its DSN: %s; retrying", it->e.id, strerror(err));
        item_release_slot(it);
        item_schedule(it, time(NULL) + retry_delay(it->q, ++it->attempts));
        return;
    }
    /* The DSN is durable: the failures are notified. */
    size_t marks = 0;
    for (size_t i = 0; i < it->e.nrcpts; i++)
        if (it->e.rcpts[i].state == SPOOL_FAILED) {
            item_mark(it, i, SPOOL_DONE);
            marks++;
        }
    (void)marks;
    if (it->marks_pending == 0)
        marks_settled(it);
}

static void dsn_body_loaded(int err, struct evbuffer *body, void *arg)
{
    struct qitem *it = arg;
    if (it->q->stopping) {
        if (body)
            evbuffer_free(body);
        return;
    }
    if (err) {
        log_warn("queue msg id=%s cannot read the message for its DSN: %s; sending headers "
                 "only is not possible, retrying",
                 it->e.id, strerror(err));
        if (body)
            evbuffer_free(body);
        item_release_slot(it);
        item_schedule(it, time(NULL) + retry_delay(it->q, ++it->attempts));
        return;
    }
    item_send_dsn(it, body);
    evbuffer_free(body);
}

/* Every recipient is final: notify failures, then remove the message. */
static void item_complete(struct qitem *it)
{
    struct queue *q = it->q;
    int owed = 0;
    for (size_t i = 0; i < it->e.nrcpts; i++)
        if (it->e.rcpts[i].state == SPOOL_FAILED)
            owed = 1;
    if (!owed) {
        item_remove(it);
        return;
    }
    if (it->e.is_bounce || it->e.sender[0] == '\0') {
        /*
         * Nobody to notify: a DSN is never bounced, and mail from <> (often
         * someone else's notification) has no return path.  Kept for the
         * operator instead of being dropped.
         */
        char why[600];
        log_escape(it->last_error ? it->last_error : "?",
                   it->last_error ? strlen(it->last_error) : 1, why, sizeof(why));
        log_error("queue msg id=%s %s could not be delivered and has no return path: %s; "
                  "moved to failed/",
                  it->e.id, it->e.is_bounce ? "a delivery status notification" : "mail from <>",
                  why);
        if (spool_move(q->spool, it->e.id, it->held ? SPOOL_IN_HOLD : SPOOL_IN_QUEUE,
                       SPOOL_IN_FAILED, moved_failed_cb, it) != 0)
            moved_failed_cb(ENOMEM, it);
        return;
    }
    if (!bounce_token(q)) {
        log_warn("queue msg id=%s bounce_rate reached: its DSN waits", it->e.id);
        item_release_slot(it);
        item_schedule(it, time(NULL) + BOUNCE_RETRY_SECONDS);
        return;
    }
    if (it->body) {
        struct evbuffer *b = it->body;
        it->body = NULL;
        item_send_dsn(it, b);
        evbuffer_free(b);
        return;
    }
    if (spool_load_body(q->spool, &it->e, it->held, dsn_body_loaded, it) != 0)
        dsn_body_loaded(ENOMEM, NULL, it);
}

/* After the results of an attempt are on disk: finished, expired, or retried later. */
static void item_finish_attempt(struct qitem *it)
{
    struct queue *q = it->q;
    if (it->body) {
        /* Retries read the body from the spool. */
        evbuffer_free(it->body);
        it->body = NULL;
    }
    if (it->delete_req) {
        item_remove(it);
        return;
    }
    if (all_final(it)) {
        item_complete(it);
        return;
    }
    time_t now = time(NULL);
    if (now - it->e.created >= (time_t)q->cfg->spool.max_queue_lifetime) {
        /* Expired: every pending recipient fails with the last reason known. */
        char why[600];
        snprintf(why, sizeof(why), "message expired after %u seconds in the queue; last error: %s",
                 q->cfg->spool.max_queue_lifetime, it->last_error ? it->last_error : "none");
        log_warn("queue msg id=%s expired", it->e.id);
        size_t marks = 0;
        for (size_t i = 0; i < it->e.nrcpts; i++) {
            struct spool_rcpt *r = &it->e.rcpts[i];
            if (r->state != SPOOL_PENDING)
                continue;
            int notify = r->notify == 0 || (r->notify & SPOOL_NOTIFY_FAILURE);
            char *prev = it->rcpt_error[i];
            char buf[800];
            snprintf(buf, sizeof(buf), "%s", prev ? prev : why);
            set_error(&it->rcpt_error[i], buf);
            item_mark(it, i, notify ? SPOOL_FAILED : SPOOL_DONE);
            marks++;
        }
        if (it->marks_pending == 0)
            marks_settled(it);
        /* else mark_done_cb -> marks_settled -> item_finish_attempt -> item_complete */
        (void)marks;
        return;
    }
    it->attempts++;
    unsigned d = retry_delay(q, it->attempts);
    item_release_slot(it);
    /* The relay's words, escaped: a quote in them must not forge a field. */
    char why[600];
    log_escape(it->last_error ? it->last_error : "", it->last_error ? strlen(it->last_error) : 0,
               why, sizeof(why));
    log_info("queue msg id=%s deferred attempts=%u retry_in=%us reason=\"%s\"", it->e.id,
             it->attempts, d, why);
    item_schedule(it, now + d);
}

/* ---- delivery ------------------------------------------------------------- */

struct attempt {
    struct qitem *it;
    size_t *map; /* message recipient index -> entry recipient index */
};

static void delivered_cb(struct message *m, void *arg)
{
    struct attempt *at = arg;
    struct qitem *it = at->it;
    struct queue *q = it->q;
    if (q->stopping) {
        free(at->map);
        free(at);
        message_free(m);
        return;
    }
    for (size_t k = 0; k < m->nrcpts; k++) {
        size_t i = at->map[k];
        const struct rcpt_result *r = &m->results[k];
        struct spool_rcpt *sr = &it->e.rcpts[i];
        char text[700];
        snprintf(text, sizeof(text), "%d %s %s", r->code, r->ecode, r->text ? r->text : "");
        char to[300], said[400];
        log_escape(sr->addr, strlen(sr->addr), to, sizeof(to));
        /* The server's words, escaped: a quote in them must not forge a field. */
        log_escape(r->text ? r->text : "", r->text ? strlen(r->text) : 0, said, sizeof(said));
        if (r->code / 100 == 2) {
            log_info("queue msg id=%s relay=%s to=<%s> status=sent dsn=%s reply=\"%s\"", it->e.id,
                     item_relay(it)->name, to, r->ecode, said);
            set_error(&it->rcpt_error[i], NULL);
            item_mark(it, i, SPOOL_DELIVERED);
        } else if (r->code / 100 == 5) {
            log_warn("queue msg id=%s relay=%s to=<%s> status=bounced dsn=%s reply=\"%s\"",
                     it->e.id, item_relay(it)->name, to, r->ecode, said);
            set_error(&it->rcpt_error[i], text);
            set_error(&it->last_error, text);
            int notify = sr->notify == 0 || (sr->notify & SPOOL_NOTIFY_FAILURE);
            item_mark(it, i, notify ? SPOOL_FAILED : SPOOL_DONE);
        } else {
            log_info("queue msg id=%s relay=%s to=<%s> status=deferred dsn=%s reply=\"%s\"",
                     it->e.id, item_relay(it)->name, to, r->ecode, said);
            set_error(&it->rcpt_error[i], text);
            set_error(&it->last_error, text);
        }
    }
    free(at->map);
    free(at);
    message_free(m);
    item_uncharge(it);
    if (it->marks_pending == 0)
        marks_settled(it);
    /* else mark_done_cb settles when the last mark is on disk */
}

static void item_deliver(struct qitem *it, struct evbuffer *body)
{
    struct queue *q = it->q;
    struct message *m = message_new();
    struct attempt *at = calloc(1, sizeof(*at));
    if (at)
        at->map = calloc(it->e.nrcpts ? it->e.nrcpts : 1, sizeof(size_t));
    if (m == NULL || at == NULL || at->map == NULL || (m->sender = strdup(it->e.sender)) == NULL)
        goto oom;
    snprintf(m->id, sizeof(m->id), "%.*s", (int)sizeof(m->id) - 1, it->e.id);
    for (size_t i = 0; i < it->e.nrcpts; i++) {
        const struct spool_rcpt *r = &it->e.rcpts[i];
        if (r->state != SPOOL_PENDING)
            continue;
        if (message_add_rcpt_dsn(m, r->addr, r->notify, r->orcpt) != 0)
            goto oom;
        at->map[m->nrcpts - 1] = i;
    }
    if (m->nrcpts == 0) {
        /* Nothing left to send (state changed meanwhile). */
        message_free(m);
        free(at->map);
        free(at);
        evbuffer_free(body);
        item_uncharge(it);
        item_finish_attempt(it);
        return;
    }
    evbuffer_free(m->body);
    m->body = body;
    m->size = evbuffer_get_length(body);
    m->eightbit = it->e.eightbit;
    m->smtputf8 = it->e.smtputf8;
    m->ret = it->e.ret;
    m->is_bounce = it->e.is_bounce;
    if (it->e.envid && (m->envid = strdup(it->e.envid)) == NULL)
        goto oom_body_owned;
    m->mode = MODE_QUEUE;
    m->uid = it->e.uid;
    at->it = it;
    if (pool_submit(q->pool, item_relay(it), m, delivered_cb, at) == NULL)
        goto oom_body_owned;
    return;

oom:
    evbuffer_free(body);
oom_body_owned:
    message_free(m);
    item_uncharge(it);
    if (at)
        free(at->map);
    free(at);
    set_error(&it->last_error, "451 4.3.0 out of memory in mailpoold");
    item_finish_attempt(it);
}

static void body_loaded(int err, struct evbuffer *body, void *arg)
{
    struct qitem *it = arg;
    if (it->q->stopping) {
        /* Run from spool_close(): the pool is gone; the message stays pending. */
        if (body)
            evbuffer_free(body);
        return;
    }
    if (err) {
        char why[200];
        snprintf(why, sizeof(why), "451 4.3.0 cannot read the spool file: %s", strerror(err));
        log_error("queue msg id=%s %s", it->e.id, why);
        if (body)
            evbuffer_free(body);
        item_uncharge(it);
        set_error(&it->last_error, why);
        item_finish_attempt(it);
        return;
    }
    item_deliver(it, body);
}

static void item_attempt(struct qitem *it)
{
    struct queue *q = it->q;
    if (it->busy || it->held)
        return;
    it->busy = 1;
    q->inflight++;
    evtimer_del(it->timer);
    it->next_attempt = 0;
    if (all_final(it)) {
        item_complete(it);
        return;
    }
    if (it->body) {
        /* The first attempt uses the body kept from submission; retries read the spool. */
        struct evbuffer *b = it->body;
        it->body = NULL;
        item_deliver(it, b);
        return;
    }
    if (q->body_bytes > 0 && q->body_bytes + it->e.body_size > QUEUE_BODY_BUDGET) {
        log_debug("queue msg id=%s waits: %zu bytes of retry bodies in memory already", it->e.id,
                  q->body_bytes);
        item_release_slot(it);
        item_schedule(it, time(NULL) + 1);
        return;
    }
    it->charged = it->e.body_size;
    q->body_bytes += it->charged;
    if (spool_load_body(q->spool, &it->e, it->held, body_loaded, it) != 0)
        body_loaded(ENOMEM, NULL, it);
}

/* ---- submission ------------------------------------------------------------ */

static struct qitem *item_new(struct queue *q)
{
    struct qitem *it = calloc(1, sizeof(*it));
    if (it == NULL)
        return NULL;
    it->q = q;
    it->timer = evtimer_new(q->base, item_timer_cb, it);
    if (it->timer == NULL) {
        free(it);
        return NULL;
    }
    return it;
}

static void committed_cb(int err, void *arg)
{
    struct qitem *it = arg;
    struct queue *q = it->q;
    TAILQ_REMOVE(&q->committing, it, entry);
    queue_cb cb = it->submit_cb;
    void *cb_arg = it->submit_arg;
    /* Reported now: a leftover callback would make the message look busy for good. */
    it->submit_cb = NULL;
    it->submit_arg = NULL;
    if (err) {
        item_free(it);
        if (cb)
            cb(err, cb_arg);
        return;
    }
    TAILQ_INSERT_TAIL(&q->items, it, entry);
    q->nitems++;
    char from[300];
    log_escape(it->e.sender, strlen(it->e.sender), from, sizeof(from));
    log_info("queue msg id=%s queued from=<%s> nrcpt=%zu size=%zu relay=%s%s", it->e.id, from,
             it->e.nrcpts, it->e.body_size, item_relay(it)->name, it->e.is_bounce ? " dsn=1" : "");
    if (cb)
        cb(0, cb_arg);
    if (!q->stopping)
        item_schedule(it, time(NULL));
}

static int dup_or_null(char **dst, const char *src)
{
    *dst = NULL;
    if (src == NULL)
        return 0;
    *dst = strdup(src);
    return *dst ? 0 : -1;
}

int queue_submit(struct queue *q, struct message *m, const struct relay_config *rc, queue_cb cb,
                 void *arg)
{
    /* Ids are random; make sure this one is not already in the queue. */
    for (int tries = 0; queue_find(q, m->id) != NULL; tries++) {
        if (tries > 8)
            return -1;
        struct message *fresh = message_new();
        if (fresh == NULL)
            return -1;
        memcpy(m->id, fresh->id, sizeof(m->id));
        message_free(fresh);
    }
    struct qitem *it = item_new(q);
    if (it == NULL)
        return -1;
    struct spool_entry *e = &it->e;
    snprintf(e->id, sizeof(e->id), "%s", m->id);
    e->created = time(NULL);
    e->uid = m->uid;
    e->eightbit = m->eightbit;
    e->smtputf8 = m->smtputf8;
    e->is_bounce = m->is_bounce;
    e->ret = m->ret == 1 ? SPOOL_RET_FULL : m->ret == 2 ? SPOOL_RET_HDRS : SPOOL_RET_UNSET;
    e->body_size = m->size;
    e->rcpts = calloc(m->nrcpts ? m->nrcpts : 1, sizeof(*e->rcpts));
    it->rcpt_error = calloc(m->nrcpts ? m->nrcpts : 1, sizeof(char *));
    if (e->rcpts == NULL || it->rcpt_error == NULL || dup_or_null(&e->sender, m->sender) ||
        dup_or_null(&e->relay, rc->name) || dup_or_null(&e->envid, m->envid))
        goto oom;
    for (size_t i = 0; i < m->nrcpts; i++) {
        struct spool_rcpt *r = &e->rcpts[i];
        r->state = SPOOL_PENDING;
        r->notify = m->dsn ? m->dsn[i].notify : 0;
        e->nrcpts++;
        if (dup_or_null(&r->addr, m->rcpts[i]) ||
            dup_or_null(&r->orcpt, m->dsn ? m->dsn[i].orcpt : NULL))
            goto oom;
    }
    struct evbuffer *empty = evbuffer_new();
    if (empty == NULL)
        goto oom;
    it->submit_cb = cb;
    it->submit_arg = arg;
    TAILQ_INSERT_TAIL(&q->committing, it, entry);
    if (spool_commit(q->spool, e, m->body, m->body_fd, committed_cb, it) != 0) {
        TAILQ_REMOVE(&q->committing, it, entry);
        evbuffer_free(empty);
        goto oom;
    }
    /* The spool has its copy; the body itself serves the first attempt. */
    it->body = m->body;
    m->body = empty;
    if (m->body_fd >= 0) {
        /* The mapping in it->body stands on its own; m's body is empty now. */
        close(m->body_fd);
        m->body_fd = -1;
    }
    return 0;
oom:
    item_free(it);
    return -1;
}

void queue_submit_cancel(struct queue *q, void *arg)
{
    struct qitem *it;
    TAILQ_FOREACH(it, &q->committing, entry)
    if (it->submit_arg == arg)
        it->submit_cb = NULL;
}

/* ---- life cycle ----------------------------------------------------------- */

struct queue *queue_new(struct event_base *base, const struct config *cfg, struct pool *pool,
                        struct spool *spool)
{
    struct queue *q = calloc(1, sizeof(*q));
    if (q == NULL)
        return NULL;
    q->base = base;
    q->cfg = cfg;
    q->pool = pool;
    q->spool = spool;
    TAILQ_INIT(&q->items);
    TAILQ_INIT(&q->ready);
    TAILQ_INIT(&q->committing);
    return q;
}

struct recover_ctx {
    struct queue *q;
    long n;
    int oom;
};

static void recovered(struct spool_entry *e, int held, void *arg)
{
    struct recover_ctx *rc = arg;
    struct queue *q = rc->q;
    struct qitem *it = item_new(q);
    if (it == NULL ||
        (it->rcpt_error = calloc(e->nrcpts ? e->nrcpts : 1, sizeof(char *))) == NULL) {
        if (it)
            item_free(it);
        rc->oom = 1;
        spool_entry_clear(e);
        return;
    }
    it->e = *e; /* takes over the allocations */
    memset(e, 0, sizeof(*e));
    it->held = held;
    TAILQ_INSERT_TAIL(&q->items, it, entry);
    q->nitems++;
    rc->n++;
    if (!held)
        item_schedule(it, time(NULL));
}

long queue_recover(struct queue *q, char *err, size_t errlen)
{
    struct recover_ctx rc = {q, 0, 0};
    long n = spool_recover(q->spool, recovered, &rc, err, errlen);
    if (n < 0)
        return -1;
    if (rc.oom) {
        snprintf(err, errlen, "out of memory while loading the queue");
        return -1;
    }
    return rc.n;
}

void queue_quiesce(struct queue *q)
{
    if (q)
        q->quiescing = 1;
}

void queue_stop(struct queue *q)
{
    if (q)
        q->stopping = 1;
}

size_t queue_busy(const struct queue *q)
{
    return q->inflight;
}

void queue_free(struct queue *q)
{
    if (q == NULL)
        return;
    q->stopping = 1;
    struct qitem *it;
    while ((it = TAILQ_FIRST(&q->items)) != NULL) {
        item_remove_from_index(it);
        /* No callback can reach it any more: the pool and the spool are closed. */
        item_free(it);
    }
    while ((it = TAILQ_FIRST(&q->committing)) != NULL) {
        TAILQ_REMOVE(&q->committing, it, entry);
        item_free(it);
    }
    free(q);
}

/* ---- operator commands ---------------------------------------------------- */

size_t queue_count(const struct queue *q)
{
    return q->nitems;
}

size_t queue_foreach(const struct queue *q, const char *id,
                     void (*fn)(const struct queue_item_info *it, void *arg), void *arg)
{
    size_t n = 0;
    const struct qitem *it;
    TAILQ_FOREACH(it, &q->items, entry)
    {
        if (id && strcmp(id, it->e.id) != 0)
            continue;
        struct queue_rcpt_info *ri = calloc(it->e.nrcpts ? it->e.nrcpts : 1, sizeof(*ri));
        if (ri == NULL)
            break;
        for (size_t i = 0; i < it->e.nrcpts; i++) {
            ri[i].addr = it->e.rcpts[i].addr;
            ri[i].state = it->e.rcpts[i].state;
            ri[i].last_error = it->rcpt_error ? it->rcpt_error[i] : NULL;
        }
        struct queue_item_info info = {
            .id = it->e.id,
            .created = it->e.created,
            .sender = it->e.sender,
            .relay = item_relay(it)->name,
            .size = it->e.body_size,
            .attempts = it->attempts,
            .next_attempt = it->busy ? 0 : it->next_attempt,
            .last_error = it->last_error,
            .held = it->held,
            .is_bounce = it->e.is_bounce,
            .busy = it->busy,
            .rcpts = ri,
            .nrcpts = it->e.nrcpts,
        };
        fn(&info, arg);
        free(ri);
        n++;
    }
    return n;
}

long queue_flush(struct queue *q, const char *id_or_relay)
{
    long n = 0;
    int matched = id_or_relay == NULL;
    struct qitem *it, *next;
    for (it = TAILQ_FIRST(&q->items); it; it = next) {
        next = TAILQ_NEXT(it, entry);
        int hit = id_or_relay == NULL || strcmp(it->e.id, id_or_relay) == 0 ||
                  strcmp(item_relay(it)->name, id_or_relay) == 0;
        if (!hit)
            continue;
        matched = 1;
        if (it->held || it->busy)
            continue;
        item_schedule(it, time(NULL));
        n++;
    }
    if (!matched && config_relay(q->cfg, id_or_relay) == NULL)
        return QUEUE_UNKNOWN;
    return n;
}

struct move_req {
    struct qitem *it;
    int to_held;
};

static void hold_moved(int err, void *arg)
{
    struct move_req *mr = arg;
    struct qitem *it = mr->it;
    struct queue *q = it->q;
    if (err) {
        log_error("queue msg id=%s cannot %s: %s", it->e.id, mr->to_held ? "hold" : "release",
                  strerror(err));
    } else {
        it->held = mr->to_held;
        log_info("queue msg id=%s %s", it->e.id, it->held ? "held" : "released");
    }
    free(mr);
    it->busy = 0;
    q->inflight--;
    if (!it->held && !q->stopping)
        item_schedule(it, time(NULL));
    queue_start_ready(q);
}

static int item_move(struct queue *q, const char *id, int to_held)
{
    struct qitem *it = queue_find(q, id);
    if (it == NULL)
        return QUEUE_UNKNOWN;
    if (it->busy || it->submit_cb)
        return QUEUE_BUSY;
    if (it->held == to_held)
        return QUEUE_STATE;
    struct move_req *mr = calloc(1, sizeof(*mr));
    if (mr == NULL)
        return QUEUE_BUSY;
    mr->it = it;
    mr->to_held = to_held;
    evtimer_del(it->timer);
    if (it->ready) {
        TAILQ_REMOVE(&q->ready, it, ready_entry);
        it->ready = 0;
    }
    it->busy = 1; /* no attempt while the file moves */
    q->inflight++;
    if (spool_move(q->spool, it->e.id, to_held ? SPOOL_IN_QUEUE : SPOOL_IN_HOLD,
                   to_held ? SPOOL_IN_HOLD : SPOOL_IN_QUEUE, hold_moved, mr) != 0) {
        free(mr);
        it->busy = 0;
        q->inflight--;
        return QUEUE_BUSY;
    }
    return QUEUE_OK;
}

int queue_hold(struct queue *q, const char *id)
{
    return item_move(q, id, 1);
}

int queue_release(struct queue *q, const char *id)
{
    return item_move(q, id, 0);
}

int queue_delete(struct queue *q, const char *id)
{
    struct qitem *it = queue_find(q, id);
    if (it == NULL)
        return QUEUE_UNKNOWN;
    if (it->submit_cb || it->busy)
        return QUEUE_BUSY;
    evtimer_del(it->timer);
    if (it->ready) {
        TAILQ_REMOVE(&q->ready, it, ready_entry);
        it->ready = 0;
    }
    log_info("queue msg id=%s deleted by the operator", it->e.id);
    it->busy = 1;
    q->inflight++;
    item_remove(it);
    return QUEUE_OK;
}

void queue_set_config(struct queue *q, const struct config *cfg)
{
    q->cfg = cfg;
}
