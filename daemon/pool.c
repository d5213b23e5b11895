/*
 * Pools of upstream sessions, one per relay profile (SPEC section 2).
 * Idle sessions are reused most-recently-used first; messages wait in FIFO
 * order for a session; a transaction that failed before its final dot is
 * retried once on a fresh session, invisibly to the client.
 */
#include "pool.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>

#include "config.h"
#include "log.h"
#include "message.h"
#include "metrics.h"
#include "tls.h"
#include "upstream.h"

struct relay_pool;

struct session {
    struct upstream *u;
    struct relay_pool *rp;
    struct pool_job *job;          /* the message on this session, if any */
    struct event *idle_timer;      /* idle_timeout / max_age while idle */
    struct event *keepalive_timer; /* NOOP while idle */
    int ready;                     /* reached READY at least once */
    int in_noop;                   /* a keepalive NOOP is in flight */
    time_t idle_since;
    TAILQ_ENTRY(session) entry;      /* in rp->sessions */
    TAILQ_ENTRY(session) idle_entry; /* in rp->idle while idle */
    int idle;
};

struct pool_job {
    struct message *m;
    pool_done_cb cb;
    void *arg;
    struct relay_pool *rp;
    struct event *done_ev; /* delivers the result outside the caller's stack */
    struct event *wait_timer;
    int retried;
    int waiting;
    struct timespec start;
    TAILQ_ENTRY(pool_job) entry;
};

TAILQ_HEAD(session_list, session);
TAILQ_HEAD(job_list, pool_job);

struct relay_pool {
    struct pool *pool;
    const struct relay_config *rc;
    struct tls_ctx *tls;
    struct session_list sessions;
    struct session_list idle;
    struct job_list waiting;
    size_t nsessions, nopening, nwaiting, nidle;
    size_t next_host; /* the host that worked last */
    time_t *host_down_until;
    struct event *refill_timer; /* reopens sessions up to min_idle */
    unsigned refill_delay;      /* seconds; grows while the relay keeps failing */
    unsigned long opened, reused, failed, messages, retried;

    /*
     * Budgets (rate, limits; see "budgets" below).  The rate buckets hold one
     * token each: *_next is when the next message may start (CLOCK_MONOTONIC
     * seconds).  Logins are counted in login_owner, the first relay of the
     * same account, as a ring of the last login_cap session openings.
     */
    double rate_next_sec, rate_next_min;
    struct relay_pool *login_owner; /* NULL: no max_logins_per_minute */
    double *login_times;
    size_t login_cap, login_head, login_count;
    int login_blocked;          /* the "login budget reached" line was logged */
    struct event *budget_timer; /* dispatch again once a budget allows */
    double budget_timer_at;
};

struct pool {
    int stopping;
    struct event_base *base;
    struct evdns_base *dns;
    const struct config *cfg;
    struct relay_pool *relays;
    size_t nrelays;

    /*
     * Reload (pool_reconfigure): the relays a reload replaced live on as a
     * retired generation, a struct pool of their own with `retired` set,
     * until their busy sessions finished; then the live pool frees it.
     */
    int retired;
    struct pool *retired_next; /* live pool: its generations; generation: the next one */
    struct pool *live;         /* generation: the live pool */
    struct event *reap_timer;  /* live pool: frees drained generations */
};

static void session_cb(struct upstream *u, enum upstream_event ev, void *arg);
static void relay_pool_dispatch(struct relay_pool *rp);
static int budget_may_send(struct relay_pool *rp);
static int budget_may_login(struct relay_pool *rp);
static void budget_note_send(struct relay_pool *rp);
static void budget_note_login(struct relay_pool *rp);
static void generation_session_gone(struct pool *gen);
static void generation_requeue(struct relay_pool *rp, struct pool_job *job);

static double elapsed_ms(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - start->tv_sec) * 1e3 +
           (double)(now.tv_nsec - start->tv_nsec) / 1e6;
}

/* ---- jobs ------------------------------------------------------------- */

static void job_log(const struct pool_job *job)
{
    const struct message *m = job->m;
    char from[300], to[300], text[400];
    log_escape(m->sender, strlen(m->sender), from, sizeof(from));
    for (size_t i = 0; i < m->nrcpts; i++) {
        const struct rcpt_result *r = &m->results[i];
        log_escape(m->rcpts[i], strlen(m->rcpts[i]), to, sizeof(to));
        log_escape(r->text ? r->text : "", r->text ? strlen(r->text) : 0, text, sizeof(text));
        log_msg(r->code / 100 == 2 ? LOG_LVL_INFO : LOG_LVL_WARN,
                "msg id=%s relay=%s mode=%s from=<%s> to=<%s> status=%d dsn=%s delay=%.1fms "
                "reply=\"%s\"",
                m->id, job->rp->rc->name, m->mode == MODE_QUEUE ? "queue" : "relay", from, to,
                r->code, r->ecode, elapsed_ms(&job->start), text);
    }
}

static void job_free(struct pool_job *job)
{
    if (job->wait_timer)
        event_free(job->wait_timer);
    if (job->done_ev)
        event_free(job->done_ev);
    free(job);
}

static void job_done_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pool_job *job = arg;
    job_log(job);
    metrics_note_message(job->rp->rc->name, job->m, elapsed_ms(&job->start) / 1e3);
    if (job->cb)
        job->cb(job->m, job->arg);
    else
        message_free(job->m);
    job_free(job);
}

/* The job is finished: every recipient has a result.  Report it from the loop. */
static void job_finish(struct pool_job *job)
{
    struct relay_pool *rp = job->rp;
    if (job->waiting) {
        TAILQ_REMOVE(&rp->waiting, job, entry);
        rp->nwaiting--;
        job->waiting = 0;
    }
    if (job->wait_timer)
        event_del(job->wait_timer);
    event_active(job->done_ev, EV_TIMEOUT, 0);
}

static void job_fail(struct pool_job *job, int code, const char *ecode, const char *text)
{
    message_set_pending_results(job->m, code, ecode, text);
    job_finish(job);
}

static void job_wait_expired(evutil_socket_t fd, short what, void *arg)
{
    struct pool_job *job = arg;
    char text[200];
    if (!budget_may_send(job->rp))
        snprintf(text, sizeof(text),
                 "timed out waiting for the rate limit of relay %s (rate.messages_per_%s)",
                 job->rp->rc->name, job->rp->rc->budget.messages_per_second ? "second" : "minute");
    else
        snprintf(text, sizeof(text), "timed out waiting for a free connection to relay %s",
                 job->rp->rc->name);
    job_fail(job, 451, "4.4.5", text);
}

static void job_enqueue(struct relay_pool *rp, struct pool_job *job, int front)
{
    if (front)
        TAILQ_INSERT_HEAD(&rp->waiting, job, entry);
    else
        TAILQ_INSERT_TAIL(&rp->waiting, job, entry);
    job->waiting = 1;
    rp->nwaiting++;
    unsigned wt = rp->rc->pool.wait_timeout;
    if (wt > 0 && !evtimer_pending(job->wait_timer, NULL)) {
        struct timeval tv = {(time_t)wt, 0};
        evtimer_add(job->wait_timer, &tv);
    }
}

/* ---- sessions ------------------------------------------------------------ */

static void timer_add_seconds(struct event *ev, long seconds)
{
    struct timeval tv = {(time_t)(seconds > 0 ? seconds : 0), 0};
    evtimer_add(ev, &tv);
}

/*
 * Put the session on (or take it off) the idle list.  A new idle period
 * starts the idle_timeout clock; coming back from a keepalive NOOP
 * (fresh_period = 0) keeps the clock running.
 */
static void session_set_idle_ex(struct session *s, int idle, int fresh_period)
{
    struct relay_pool *rp = s->rp;
    const struct pool_config *pc = &rp->rc->pool;
    if (idle == s->idle)
        return;
    s->idle = idle;
    if (idle) {
        TAILQ_INSERT_HEAD(&rp->idle, s, idle_entry); /* most recently used first */
        rp->nidle++;
        if (fresh_period) {
            time_t now = time(NULL);
            s->idle_since = now;
            long limit = pc->idle_timeout > 0 ? (long)pc->idle_timeout : -1;
            if (pc->max_age > 0) {
                long left = (long)pc->max_age - (long)(now - upstream_created(s->u));
                if (limit < 0 || left < limit)
                    limit = left;
            }
            if (limit >= 0)
                timer_add_seconds(s->idle_timer, limit);
        }
        if (pc->keepalive > 0)
            timer_add_seconds(s->keepalive_timer, (long)pc->keepalive);
    } else {
        TAILQ_REMOVE(&rp->idle, s, idle_entry);
        rp->nidle--;
        evtimer_del(s->keepalive_timer);
        if (fresh_period)
            evtimer_del(s->idle_timer);
    }
}

static void session_set_idle(struct session *s, int idle)
{
    session_set_idle_ex(s, idle, 1);
}

static void session_remove(struct session *s)
{
    struct relay_pool *rp = s->rp;
    session_set_idle(s, 0);
    if (!s->ready)
        rp->nopening--;
    TAILQ_REMOVE(&rp->sessions, s, entry);
    rp->nsessions--;
    event_free(s->idle_timer);
    event_free(s->keepalive_timer);
    free(s);
    if (rp->pool->retired)
        generation_session_gone(rp->pool);
}

static void session_idle_expired(evutil_socket_t fd, short what, void *arg)
{
    struct session *s = arg;
    struct relay_pool *rp = s->rp;
    const struct pool_config *pc = &rp->rc->pool;
    long age = (long)(time(NULL) - upstream_created(s->u));
    int aged = pc->max_age > 0 && age >= (long)pc->max_age;
    if (!aged && rp->nsessions <= pc->min_idle) {
        /* One of the min_idle sessions: kept warm, idle_timeout does not apply. */
        long limit = pc->idle_timeout;
        if (pc->max_age > 0 && (long)pc->max_age - age < limit)
            limit = (long)pc->max_age - age;
        timer_add_seconds(s->idle_timer, limit);
        return;
    }
    log_debug("pool relay=%s host=%s %s", rp->rc->name, upstream_host(s->u),
              aged ? "max_age reached" : "idle timeout");
    struct upstream *u = s->u;
    session_remove(s);
    upstream_quit(u);
    relay_pool_dispatch(rp); /* min_idle may want a replacement */
}

static void session_keepalive(evutil_socket_t fd, short what, void *arg)
{
    struct session *s = arg;
    if (!s->idle)
        return;
    session_set_idle_ex(s, 0, 0); /* off the idle list, idle clock still running */
    s->in_noop = 1;
    if (upstream_noop(s->u) != 0) {
        s->in_noop = 0;
        session_set_idle_ex(s, 1, 0);
    }
}

static int session_open(struct relay_pool *rp)
{
    struct session *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return -1;
    s->rp = rp;
    s->idle_timer = evtimer_new(rp->pool->base, session_idle_expired, s);
    s->keepalive_timer = evtimer_new(rp->pool->base, session_keepalive, s);
    struct upstream_params params = {
        .base = rp->pool->base,
        .dns = rp->pool->dns,
        .relay = rp->rc,
        .tls = rp->tls,
        .helo_name = rp->rc->helo_name ? rp->rc->helo_name : rp->pool->cfg->hostname,
        .first_host = rp->next_host,
        .host_down_until = rp->host_down_until,
    };
    if (s->idle_timer && s->keepalive_timer)
        s->u = upstream_new(&params, session_cb, s);
    if (s->u == NULL) {
        if (s->idle_timer)
            event_free(s->idle_timer);
        if (s->keepalive_timer)
            event_free(s->keepalive_timer);
        free(s);
        return -1;
    }
    TAILQ_INSERT_TAIL(&rp->sessions, s, entry);
    rp->nsessions++;
    rp->nopening++;
    rp->opened++;
    budget_note_login(rp);
    return 0;
}

static void session_take(struct session *s, struct pool_job *job)
{
    struct relay_pool *rp = s->rp;
    if (job->waiting) {
        TAILQ_REMOVE(&rp->waiting, job, entry);
        rp->nwaiting--;
        job->waiting = 0;
    }
    evtimer_del(job->wait_timer);
    session_set_idle(s, 0);
    evtimer_del(s->idle_timer); /* also when leaving a keepalive NOOP */
    s->job = job;
    budget_note_send(rp);
    if (upstream_messages(s->u) > 0)
        rp->reused++;
    if (upstream_send(s->u, job->m) != 0) {
        /* Cannot happen for an idle session; keep the message safe anyway. */
        s->job = NULL;
        job_enqueue(rp, job, 1);
    }
}

/* A session that can take work: give it the oldest waiting message, or idle it. */
static void session_available(struct session *s)
{
    struct relay_pool *rp = s->rp;
    unsigned max_age = rp->rc->pool.max_age;
    int from_noop = s->in_noop;
    s->in_noop = 0;
    if (rp->pool->retired) {
        /* Its relay was changed or removed by a reload: the transaction is done, so QUIT. */
        struct upstream *u = s->u;
        session_remove(s);
        upstream_quit(u);
        return;
    }
    if (max_age > 0 && time(NULL) - upstream_created(s->u) >= (time_t)max_age) {
        log_debug("pool relay=%s host=%s max_age reached", rp->rc->name, upstream_host(s->u));
        struct upstream *u = s->u;
        session_remove(s);
        upstream_quit(u);
        relay_pool_dispatch(rp);
        return;
    }
    struct pool_job *job = TAILQ_FIRST(&rp->waiting);
    if (job && budget_may_send(rp))
        session_take(s, job);
    else
        session_set_idle_ex(s, 1, !from_noop);
}

/*
 * The session is gone (setup failed or it died while idle).  If nothing is
 * left that could serve the waiting messages, they get the session's error.
 */
static void session_failed(struct session *s)
{
    struct relay_pool *rp = s->rp;
    struct upstream *u = s->u;
    int code = upstream_error_code(u);
    char ecode[16], text[600];
    snprintf(ecode, sizeof(ecode), "%s", upstream_error_ecode(u));
    snprintf(text, sizeof(text), "%s", upstream_error(u));
    int was_ready = s->ready;
    rp->failed++;
    if (!was_ready)
        rp->refill_delay =
            rp->refill_delay ? (rp->refill_delay * 2 > 60 ? 60 : rp->refill_delay * 2) : 1;
    session_remove(s);
    upstream_free(u);
    if (!was_ready && rp->nopening == 0) {
        struct pool_job *job;
        while ((job = TAILQ_FIRST(&rp->waiting)) != NULL)
            job_fail(job, code, ecode, text);
    }
    relay_pool_dispatch(rp);
}

static void session_txn_done(struct session *s)
{
    struct relay_pool *rp = s->rp;
    struct pool_job *job = s->job;
    s->job = NULL;
    rp->messages++;
    switch (upstream_txn_outcome(s->u)) {
    case TXN_COMPLETE:
        job_finish(job);
        break;
    case TXN_RETRY:
        if (!job->retried) {
            job->retried = 1;
            rp->retried++;
            char why[600];
            const char *e = upstream_error(s->u);
            log_escape(e, strlen(e), why, sizeof(why));
            log_info("msg id=%s relay=%s retrying on a new session: %s", job->m->id, rp->rc->name,
                     why);
            /* upstream forgot the failed transaction's results; earlier ones stand */
            if (rp->pool->retired)
                generation_requeue(rp, job);
            else
                job_enqueue(rp, job, 1);
        } else {
            job_fail(job, upstream_error_code(s->u), upstream_error_ecode(s->u),
                     upstream_error(s->u));
        }
        break;
    case TXN_UNKNOWN:
        job_fail(job, 451, "4.4.2", upstream_error(s->u));
        break;
    }
    if (upstream_usable(s->u)) {
        unsigned max = rp->rc->pool.max_messages;
        if (max > 0 && upstream_messages(s->u) >= max) {
            struct upstream *u = s->u;
            session_remove(s);
            upstream_quit(u);
        } else {
            session_available(s);
        }
    } else {
        struct upstream *u = s->u;
        rp->failed++;
        session_remove(s);
        upstream_free(u);
    }
    relay_pool_dispatch(rp);
}

static void session_cb(struct upstream *u, enum upstream_event ev, void *arg)
{
    struct session *s = arg;
    switch (ev) {
    case UPSTREAM_READY:
        if (!s->ready) {
            s->ready = 1;
            s->rp->nopening--;
            s->rp->next_host = upstream_host_index(u);
            s->rp->refill_delay = 0;
        }
        session_available(s);
        break;
    case UPSTREAM_TXN_DONE:
        session_txn_done(s);
        break;
    case UPSTREAM_FAILED:
        session_failed(s);
        break;
    }
}

static void relay_pool_refill(evutil_socket_t fd, short what, void *arg)
{
    struct relay_pool *rp = arg;
    unsigned max = rp->rc->pool.max_connections ? rp->rc->pool.max_connections : 1;
    unsigned want = rp->rc->pool.min_idle < max ? rp->rc->pool.min_idle : max;
    while (rp->nsessions < want && budget_may_login(rp)) {
        if (session_open(rp) != 0) {
            log_error("pool relay=%s cannot open a session: out of memory", rp->rc->name);
            break;
        }
    }
}

/*
 * Give idle sessions to waiting messages, open sessions for the rest within
 * max_connections, and keep min_idle sessions open (after a back-off delay
 * while the relay keeps failing, so a dead relay is not hammered).
 */
static void relay_pool_dispatch(struct relay_pool *rp)
{
    struct session *s;
    while (!TAILQ_EMPTY(&rp->waiting) && (s = TAILQ_FIRST(&rp->idle)) != NULL &&
           budget_may_send(rp))
        session_take(s, TAILQ_FIRST(&rp->waiting));
    unsigned max = rp->rc->pool.max_connections ? rp->rc->pool.max_connections : 1;
    /* Messages held back by the rate need no new sessions, beyond a first one to warm up. */
    int held = !TAILQ_EMPTY(&rp->waiting) && !budget_may_send(rp) && rp->nsessions > 0;
    while (!held && rp->nwaiting > rp->nopening && rp->nsessions < max && budget_may_login(rp)) {
        if (session_open(rp) != 0) {
            log_error("pool relay=%s cannot open a session: out of memory", rp->rc->name);
            break;
        }
    }
    if (rp->nsessions < rp->rc->pool.min_idle && rp->refill_timer &&
        !evtimer_pending(rp->refill_timer, NULL)) {
        if (rp->pool->stopping)
            return;
        timer_add_seconds(rp->refill_timer, (long)rp->refill_delay);
    }
}

/* ---- budgets: rate and limits (SPEC section 1) ------------------------- */

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void budget_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct relay_pool *rp = arg;
    rp->budget_timer_at = 0;
    relay_pool_dispatch(rp);
}

/* Dispatch again `delay` seconds from now, unless an earlier wake-up is set already. */
static void budget_wake(struct relay_pool *rp, double delay)
{
    double now = mono_now();
    if (rp->budget_timer == NULL || rp->pool->stopping)
        return;
    if (evtimer_pending(rp->budget_timer, NULL) && rp->budget_timer_at <= now + delay)
        return;
    if (delay < 0.001)
        delay = 0.001;
    struct timeval tv = {(time_t)delay, (suseconds_t)((delay - (double)(time_t)delay) * 1e6)};
    rp->budget_timer_at = now + delay;
    evtimer_add(rp->budget_timer, &tv);
}

/*
 * Whether a message may start now under rate.messages_per_second and
 * messages_per_minute.  When not, a wake-up is set for when it may; the
 * message waits in the queue (bounded by pool.wait_timeout), never refused.
 */
static int budget_may_send(struct relay_pool *rp)
{
    double wait = 0, now = mono_now();
    if (rp->rc->budget.messages_per_second && rp->rate_next_sec - now > wait)
        wait = rp->rate_next_sec - now;
    if (rp->rc->budget.messages_per_minute && rp->rate_next_min - now > wait)
        wait = rp->rate_next_min - now;
    if (wait <= 0)
        return 1;
    budget_wake(rp, wait);
    return 0;
}

/*
 * A message starts: take a token from each bucket.  Buckets hold one token
 * (no bursts), so messages are spaced at least 1/rate apart and a quiet
 * period does not let a burst through that a provider would count against
 * the account.
 */
static void budget_note_send(struct relay_pool *rp)
{
    const struct budget_config *b = &rp->rc->budget;
    double now = mono_now();
    if (b->messages_per_second)
        rp->rate_next_sec =
            (rp->rate_next_sec > now ? rp->rate_next_sec : now) + 1.0 / b->messages_per_second;
    if (b->messages_per_minute)
        rp->rate_next_min =
            (rp->rate_next_min > now ? rp->rate_next_min : now) + 60.0 / b->messages_per_minute;
}

/*
 * Whether a new session may be opened under limits.max_logins_per_minute:
 * fewer than that many openings for the account in the last 60 seconds.
 * Otherwise messages stay queued for the sessions already open, and the
 * relay is dispatched again when the oldest opening leaves the minute.
 */
static int budget_may_login(struct relay_pool *rp)
{
    struct relay_pool *o = rp->login_owner;
    unsigned max = rp->rc->budget.max_logins_per_minute;
    if (o == NULL || max == 0)
        return 1;
    double now = mono_now();
    while (o->login_count > 0) {
        size_t oldest = (o->login_head + o->login_cap - o->login_count) % o->login_cap;
        if (now - o->login_times[oldest] < 60.0)
            break;
        o->login_count--;
    }
    if (o->login_count < max) {
        rp->login_blocked = 0;
        return 1;
    }
    /* The max-th most recent opening must leave the window first. */
    size_t idx = (o->login_head + o->login_cap - max) % o->login_cap;
    double wait = o->login_times[idx] + 60.0 - now;
    if (!rp->login_blocked && !TAILQ_EMPTY(&rp->waiting)) {
        rp->login_blocked = 1;
        log_warn("pool relay=%s login budget reached (limits.max_logins_per_minute=%u): no new "
                 "session for %.0fs; messages waiting for the open sessions: %zu",
                 rp->rc->name, max, wait, rp->nwaiting);
    }
    budget_wake(rp, wait);
    return 0;
}

static void budget_note_login(struct relay_pool *rp)
{
    struct relay_pool *o = rp->login_owner;
    if (o == NULL)
        return;
    o->login_times[o->login_head] = mono_now();
    o->login_head = (o->login_head + 1) % o->login_cap;
    if (o->login_count < o->login_cap)
        o->login_count++;
}

/* Providers throttle accounts: the same user at the same first host is one account. */
static int same_account(const struct relay_config *a, const struct relay_config *b)
{
    if (a->has_auth != b->has_auth || a->nhosts == 0 || b->nhosts == 0)
        return 0;
    if (a->has_auth && strcmp(a->auth_user, b->auth_user) != 0)
        return 0;
    if (!a->has_auth && a != b)
        return 0; /* without AUTH a login budget counts the relay's own sessions */
    return strcmp(a->hosts[0].host, b->hosts[0].host) == 0;
}

/* Timers and login counters for every relay of a new pool.  -1 when out of memory. */
static int budget_init(struct pool *p)
{
    for (size_t i = 0; i < p->nrelays; i++) {
        struct relay_pool *rp = &p->relays[i];
        rp->budget_timer = evtimer_new(p->base, budget_timer_cb, rp);
        if (rp->budget_timer == NULL)
            return -1;
        unsigned max = rp->rc->budget.max_logins_per_minute;
        if (max == 0)
            continue;
        for (size_t j = 0; j <= i && rp->login_owner == NULL; j++)
            if (p->relays[j].rc->budget.max_logins_per_minute &&
                same_account(p->relays[j].rc, rp->rc))
                rp->login_owner = &p->relays[j];
        if (rp->login_owner == NULL) /* not reached: j == i matches itself */
            rp->login_owner = rp;
        if (rp->login_owner->login_cap < max)
            rp->login_owner->login_cap = max;
    }
    for (size_t i = 0; i < p->nrelays; i++) {
        struct relay_pool *rp = &p->relays[i];
        if (rp->login_owner == rp &&
            (rp->login_times = calloc(rp->login_cap, sizeof(*rp->login_times))) == NULL)
            return -1;
    }
    return 0;
}

static void budget_free(struct relay_pool *rp)
{
    if (rp->budget_timer)
        event_free(rp->budget_timer);
    rp->budget_timer = NULL;
    free(rp->login_times);
    rp->login_times = NULL;
}

/* ---- the pool ------------------------------------------------------------ */

/* The relay's optional TLS settings: suites, client certificate, key pins. */
static int pool_tls_extras(struct tls_ctx *tls, const struct relay_config *rc, char *err,
                           size_t errlen)
{
    if (rc->tls_ciphers && tls_ctx_set_ciphers(tls, rc->tls_ciphers, err, errlen) < 0)
        return -1;
    if (rc->tls_client_cert &&
        tls_ctx_set_client_cert(tls, rc->tls_client_cert, rc->tls_client_key, err, errlen) < 0)
        return -1;
    for (size_t k = 0; k < rc->ntls_pins; k++)
        if (tls_ctx_add_pin(tls, rc->tls_pins[k], err, errlen) < 0)
            return -1;
    return 0;
}

struct pool *pool_new(struct event_base *base, struct evdns_base *dns, const struct config *cfg,
                      char *err, size_t errlen)
{
    struct pool *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    p->base = base;
    p->dns = dns;
    p->cfg = cfg;
    p->relays = calloc(cfg->nrelays, sizeof(*p->relays));
    if (p->relays == NULL) {
        free(p);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    p->nrelays = cfg->nrelays;
    for (size_t i = 0; i < cfg->nrelays; i++) {
        struct relay_pool *rp = &p->relays[i];
        const struct relay_config *rc = &cfg->relays[i];
        rp->pool = p;
        rp->rc = rc;
        TAILQ_INIT(&rp->sessions);
        TAILQ_INIT(&rp->idle);
        TAILQ_INIT(&rp->waiting);
        rp->host_down_until = calloc(rc->nhosts ? rc->nhosts : 1, sizeof(time_t));
        rp->refill_timer = evtimer_new(base, relay_pool_refill, rp);
        if (rp->host_down_until == NULL || rp->refill_timer == NULL) {
            snprintf(err, errlen, "out of memory");
            pool_free(p);
            return NULL;
        }
        if (rc->options & (RELAY_OPT_SECURE | RELAY_OPT_SECURE_IMPLICIT)) {
            struct tls_ctx_opts o = {
                .ca_file = rc->tls_ca_file,
                .ca_path = rc->tls_ca_path,
                .verify = !(rc->options & RELAY_OPT_TRUSTED_SITE),
                .allow_legacy = (rc->options & RELAY_OPT_SECURE_FALLBACK) != 0,
                .min_version = rc->tls_min_version,
            };
            char terr[256];
            rp->tls = tls_ctx_new(&o, terr, sizeof(terr));
            if (rp->tls == NULL) {
                snprintf(err, errlen, "relay %s: %s", rc->name, terr);
                pool_free(p);
                return NULL;
            }
            if (pool_tls_extras(rp->tls, rc, terr, sizeof(terr)) < 0) {
                snprintf(err, errlen, "relay %s: %s", rc->name, terr);
                pool_free(p);
                return NULL;
            }
            if (!o.verify && rc->ntls_pins)
                log_warn("relay %s: trusted_site is set: the certificate chain is NOT verified, "
                         "only the %zu pinned key(s) are accepted",
                         rc->name, rc->ntls_pins);
            else if (!o.verify)
                log_warn("relay %s: trusted_site is set: the server certificate is NOT verified",
                         rc->name);
            if (o.allow_legacy)
                log_warn("relay %s: secure_fallback is set: legacy TLS (down to TLS 1.1, the "
                         "oldest this TLS library has) and weak ciphers are allowed",
                         rc->name);
        }
    }
    if (budget_init(p) != 0) {
        snprintf(err, errlen, "out of memory");
        pool_free(p);
        return NULL;
    }
    /* Warm sessions up to min_idle as soon as the loop runs. */
    for (size_t i = 0; i < p->nrelays; i++)
        relay_pool_dispatch(&p->relays[i]);
    return p;
}

void pool_free(struct pool *p)
{
    if (p == NULL)
        return;
    while (p->retired_next != NULL && !p->retired) {
        struct pool *gen = p->retired_next;
        /* The last round freed an unlinked generation, never p or gen. */
        // NOLINTNEXTLINE(clang-analyzer-unix.Malloc)
        p->retired_next = gen->retired_next;
        pool_free(gen);
    }
    if (p->reap_timer)
        event_free(p->reap_timer);
    p->stopping = 1;
    for (size_t i = 0; i < p->nrelays; i++) {
        struct relay_pool *rp = &p->relays[i];
        struct pool_job *job;
        while ((job = TAILQ_FIRST(&rp->waiting)) != NULL) {
            TAILQ_REMOVE(&rp->waiting, job, entry);
            rp->nwaiting--;
            message_set_pending_results(job->m, 421, "4.3.2", "mailpoold is shutting down");
            if (job->cb)
                job->cb(job->m, job->arg);
            else
                message_free(job->m);
            job_free(job);
        }
        struct session *s;
        while ((s = TAILQ_FIRST(&rp->sessions)) != NULL) {
            /* session_remove() unlinks s; the analyzer cannot see TAILQ_REMOVE update the head. */
            // NOLINTNEXTLINE(clang-analyzer-unix.Malloc)
            struct upstream *u = s->u;
            struct pool_job *busy = s->job;
            int idle = s->idle;
            session_remove(s);
            if (idle)
                upstream_quit(u);
            else
                upstream_free(u);
            if (busy) {
                message_set_pending_results(busy->m, 421, "4.3.2", "mailpoold is shutting down");
                if (busy->cb)
                    busy->cb(busy->m, busy->arg);
                else
                    message_free(busy->m);
                job_free(busy);
            }
        }
        if (rp->tls)
            tls_ctx_free(rp->tls);
        if (rp->refill_timer)
            event_free(rp->refill_timer);
        free(rp->host_down_until);
        budget_free(rp);
    }
    free(p->relays);
    free(p);
}

static struct relay_pool *pool_find(struct pool *p, const struct relay_config *rc)
{
    for (size_t i = 0; i < p->nrelays; i++)
        if (p->relays[i].rc == rc)
            return &p->relays[i];
    return NULL;
}

struct pool_job *pool_submit(struct pool *p, const struct relay_config *rc, struct message *m,
                             pool_done_cb cb, void *arg)
{
    struct relay_pool *rp = pool_find(p, rc);
    if (rp == NULL)
        return NULL;
    struct pool_job *job = calloc(1, sizeof(*job));
    if (job == NULL)
        return NULL;
    job->m = m;
    job->cb = cb;
    job->arg = arg;
    job->rp = rp;
    clock_gettime(CLOCK_MONOTONIC, &job->start);
    job->done_ev = event_new(p->base, -1, 0, job_done_cb, job);
    job->wait_timer = evtimer_new(p->base, job_wait_expired, job);
    if (job->done_ev == NULL || job->wait_timer == NULL) {
        job_free(job);
        return NULL;
    }
    /* upstream sends only the recipients without a result (a split sets them part by part) */
    message_clear_results(m);
    struct session *s = TAILQ_FIRST(&rp->idle);
    if (s && TAILQ_EMPTY(&rp->waiting) && budget_may_send(rp)) {
        session_take(s, job);
        return job;
    }
    unsigned maxw = rc->pool.max_waiters;
    if (maxw > 0 && rp->nwaiting >= maxw) {
        char text[160];
        snprintf(text, sizeof(text), "too many messages waiting for relay %s", rc->name);
        job_fail(job, 451, "4.3.2", text);
        return job;
    }
    job_enqueue(rp, job, 0);
    relay_pool_dispatch(rp);
    return job;
}

void pool_cancel(struct pool_job *job)
{
    job->cb = NULL;
}

size_t pool_sessions(const struct pool *p)
{
    size_t n = 0;
    for (size_t i = 0; i < p->nrelays; i++)
        n += p->relays[i].nsessions;
    return n;
}

size_t pool_waiting(const struct pool *p)
{
    size_t n = 0;
    for (size_t i = 0; i < p->nrelays; i++)
        n += p->relays[i].nwaiting;
    return n;
}

int pool_probe_params(const struct pool *p, const char *relay, struct upstream_params *out)
{
    for (size_t i = 0; i < p->nrelays; i++) {
        const struct relay_pool *rp = &p->relays[i];
        if (strcmp(rp->rc->name, relay) != 0)
            continue;
        memset(out, 0, sizeof(*out));
        out->base = p->base;
        out->dns = p->dns;
        out->relay = rp->rc;
        out->tls = rp->tls;
        out->helo_name = rp->rc->helo_name ? rp->rc->helo_name : p->cfg->hostname;
        out->probe = 1;
        return 0;
    }
    return -1;
}

size_t pool_relay_count(const struct pool *p)
{
    return p->nrelays;
}

void pool_relay_info(const struct pool *p, size_t i, struct pool_relay_info *out)
{
    const struct relay_pool *rp = &p->relays[i];
    memset(out, 0, sizeof(*out));
    out->name = rp->rc->name;
    out->sessions = rp->nsessions;
    out->idle = rp->nidle;
    out->opening = rp->nopening;
    out->waiting = rp->nwaiting;
    out->opened = rp->opened;
    out->reused = rp->reused;
    out->failed = rp->failed;
    out->messages = rp->messages;
    out->retried = rp->retried;
}

void pool_foreach_session(const struct pool *p, size_t i,
                          void (*fn)(const struct pool_session_info *si, void *arg), void *arg)
{
    const struct relay_pool *rp = &p->relays[i];
    time_t now = time(NULL);
    const struct session *s;
    TAILQ_FOREACH(s, &rp->sessions, entry)
    {
        struct pool_session_info si = {
            .relay = rp->rc->name,
            .host = upstream_host(s->u),
            .state = upstream_state_name(s->u),
            .tls_version = upstream_tls_version(s->u),
            .tls_cipher = upstream_tls_cipher(s->u),
            .tls_resumed = upstream_tls_resumed(s->u),
            .messages = upstream_messages(s->u),
            .age = (long)(now - upstream_created(s->u)),
            .idle = s->idle ? (long)(now - s->idle_since) : -1,
        };
        fn(&si, arg);
    }
}

/* ---- reload ----------------------------------------------------------------- */

/*
 * A generation is freed a little after its last session went, never from
 * inside a session's callback, and after the results of its last jobs (whose
 * log lines name the relay) were delivered from the loop.
 */
#define GENERATION_REAP_SECONDS 1

static size_t generation_sessions(const struct pool *gen)
{
    size_t n = 0;
    for (size_t i = 0; i < gen->nrelays; i++)
        n += gen->relays[i].nsessions;
    return n;
}

static void generation_session_gone(struct pool *gen)
{
    if (generation_sessions(gen) == 0 && gen->live->reap_timer != NULL &&
        !evtimer_pending(gen->live->reap_timer, NULL))
        timer_add_seconds(gen->live->reap_timer, GENERATION_REAP_SECONDS);
}

static void pool_reap(evutil_socket_t fd, short what, void *arg)
{
    struct pool *p = arg;
    struct pool **link = &p->retired_next;
    while (*link != NULL) {
        struct pool *gen = *link;
        if (generation_sessions(gen) == 0) {
            *link = gen->retired_next;
            log_debug("pool: a generation retired by reload has drained");
            pool_free(gen);
        } else {
            link = &gen->retired_next;
        }
    }
}

static struct relay_pool *pool_find_name(struct pool *p, const char *name)
{
    for (size_t i = 0; i < p->nrelays; i++)
        if (strcmp(p->relays[i].rc->name, name) == 0)
            return &p->relays[i];
    return NULL;
}

/* The job leaves a retired relay for the live relay of the same name, or fails if there is none. */
static void job_move(struct pool *live, struct relay_pool *from, struct pool_job *job, int front)
{
    struct relay_pool *to = pool_find_name(live, from->rc->name);
    if (to == NULL) {
        job_fail(job, 451, "4.3.0", "relay removed by reload");
        return;
    }
    if (job->waiting) {
        TAILQ_REMOVE(&from->waiting, job, entry);
        from->nwaiting--;
        job->waiting = 0;
    }
    job->rp = to;
    job_enqueue(to, job, front);
}

static void generation_requeue(struct relay_pool *rp, struct pool_job *job)
{
    struct relay_pool *to = pool_find_name(rp->pool->live, rp->rc->name);
    job_move(rp->pool->live, rp, job, 1);
    if (to != NULL)
        relay_pool_dispatch(to);
}

static const char *effective_helo(const struct relay_pool *rp)
{
    return rp->rc->helo_name ? rp->rc->helo_name : rp->pool->cfg->hostname;
}

/* Move an unchanged relay's sessions, waiting messages, TLS context and history to `to`. */
static void relay_pool_adopt(struct relay_pool *to, struct relay_pool *from)
{
    struct session *s;
    while ((s = TAILQ_FIRST(&from->sessions)) != NULL) {
        TAILQ_REMOVE(&from->sessions, s, entry);
        TAILQ_INSERT_TAIL(&to->sessions, s, entry);
        s->rp = to;
        upstream_set_relay(s->u, to->rc);
        if (s->job != NULL)
            s->job->rp = to;
    }
    /* The idle list keeps its most-recently-used order. */
    while ((s = TAILQ_FIRST(&from->idle)) != NULL) {
        TAILQ_REMOVE(&from->idle, s, idle_entry);
        TAILQ_INSERT_TAIL(&to->idle, s, idle_entry);
    }
    struct pool_job *job;
    while ((job = TAILQ_FIRST(&from->waiting)) != NULL) {
        TAILQ_REMOVE(&from->waiting, job, entry);
        TAILQ_INSERT_TAIL(&to->waiting, job, entry);
        job->rp = to;
    }
    to->nsessions = from->nsessions;
    to->nopening = from->nopening;
    to->nwaiting = from->nwaiting;
    to->nidle = from->nidle;
    from->nsessions = from->nopening = from->nwaiting = from->nidle = 0;
    /* Sessions point at the old context and back-off array: those move, the fresh ones retire. */
    struct tls_ctx *tls = to->tls;
    to->tls = from->tls;
    from->tls = tls;
    time_t *down = to->host_down_until;
    to->host_down_until = from->host_down_until;
    from->host_down_until = down;
    to->next_host = from->next_host;
    to->refill_delay = from->refill_delay;
    to->opened = from->opened;
    to->reused = from->reused;
    to->failed = from->failed;
    to->messages = from->messages;
    to->retried = from->retried;
    /* Budgets carry over: a reload must not hand out a fresh burst or login allowance. */
    to->rate_next_sec = from->rate_next_sec;
    to->rate_next_min = from->rate_next_min;
    if (to->login_owner == to && from->login_owner == from && to->login_cap == from->login_cap) {
        double *times = to->login_times;
        to->login_times = from->login_times;
        from->login_times = times;
        to->login_head = from->login_head;
        to->login_count = from->login_count;
    }
}

/* A changed or removed relay: idle and opening sessions QUIT, waiting messages move on. */
static void relay_pool_retire(struct pool *live, struct relay_pool *rp)
{
    struct pool_job *job;
    while ((job = TAILQ_FIRST(&rp->waiting)) != NULL)
        job_move(live, rp, job, 0);
    struct session *s, *next;
    for (s = TAILQ_FIRST(&rp->sessions); s != NULL; s = next) {
        next = TAILQ_NEXT(s, entry);
        if (s->job != NULL)
            continue; /* busy: finishes its transaction, then session_available() QUITs it */
        struct upstream *u = s->u;
        session_remove(s);
        upstream_quit(u);
    }
}

int pool_reconfigure(struct pool *p, const struct config *new_cfg, struct pool_reload_stats *st,
                     char *err, size_t errlen)
{
    memset(st, 0, sizeof(*st));
    if (p->reap_timer == NULL && (p->reap_timer = evtimer_new(p->base, pool_reap, p)) == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    /* The new relays are built by pool_new(), so a TLS setting that cannot be loaded refuses. */
    struct pool *gen = pool_new(p->base, p->dns, new_cfg, err, errlen);
    if (gen == NULL)
        return -1;
    /* Swap: p keeps its identity (everyone holds it) and takes the new relays. */
    struct relay_pool *relays = p->relays;
    size_t nrelays = p->nrelays;
    const struct config *old_cfg = p->cfg;
    p->relays = gen->relays;
    p->nrelays = gen->nrelays;
    p->cfg = new_cfg;
    gen->relays = relays;
    gen->nrelays = nrelays;
    gen->cfg = old_cfg;
    gen->retired = 1;
    gen->stopping = 1; /* no min_idle refills */
    gen->live = p;
    for (size_t i = 0; i < p->nrelays; i++)
        p->relays[i].pool = p;
    for (size_t i = 0; i < gen->nrelays; i++)
        gen->relays[i].pool = gen;

    for (size_t i = 0; i < gen->nrelays; i++) {
        struct relay_pool *old = &gen->relays[i];
        evtimer_del(old->refill_timer);
        struct relay_pool *fresh = pool_find_name(p, old->rc->name);
        if (fresh != NULL && relay_config_equal(old->rc, fresh->rc) &&
            strcmp(effective_helo(old), effective_helo(fresh)) == 0) {
            relay_pool_adopt(fresh, old);
            st->kept++;
            continue;
        }
        if (fresh != NULL)
            st->changed++;
        else
            st->removed++;
        log_info("pool relay=%s %s by reload: draining %zu busy sessions", old->rc->name,
                 fresh ? "changed" : "removed", old->nsessions - old->nidle - old->nopening);
        relay_pool_retire(p, old);
    }
    st->added = p->nrelays - st->kept - st->changed;
    for (size_t i = 0; i < p->nrelays; i++)
        relay_pool_dispatch(&p->relays[i]);

    gen->retired_next = p->retired_next;
    p->retired_next = gen;
    if (generation_sessions(gen) == 0)
        generation_session_gone(gen);
    return 0;
}

size_t pool_config_users(const struct pool *p, const struct config *cfg)
{
    size_t n = p->cfg == cfg ? 1 : 0;
    for (const struct pool *gen = p->retired_next; gen != NULL; gen = gen->retired_next)
        if (gen->cfg == cfg)
            n++;
    return n;
}
