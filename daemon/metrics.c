/*
 * Delivery metrics and their Prometheus text exposition (format 0.0.4):
 * counters and a fixed-bucket histogram per relay, and a writer that emits
 * HELP/TYPE lines, escaped label values and histogram buckets.
 */
#include "metrics.h"

#include <event2/buffer.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "message.h"
#include "pool.h"
#include "queue.h"

/* Hand-off latency bucket bounds in seconds; the +Inf bucket is implicit. */
static const double handoff_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                        1,     2.5,  5,     10,   30,  60,   300};
#define NBOUNDS (sizeof(handoff_bounds) / sizeof(handoff_bounds[0]))

enum outcome { OUT_SENT, OUT_DEFERRED, OUT_REJECTED, OUT_COUNT };
static const char *const msg_outcomes[OUT_COUNT] = {"sent", "deferred", "rejected"};
static const char *const rcpt_outcomes[OUT_COUNT] = {"accepted", "deferred", "rejected"};

/*
 * Counters of one relay name.  Kept by name, not by pool relay, so they
 * survive a reload that replaces the relay's profile.
 */
struct relay_metrics {
    struct relay_metrics *next;
    char *name;
    unsigned long long messages[OUT_COUNT];
    unsigned long long rcpts[OUT_COUNT];
    unsigned long long bytes;
    unsigned long long auth_failures;
    unsigned long long buckets[NBOUNDS]; /* non-cumulative; summed when rendered */
    unsigned long long count;
    double sum;
};

/*
 * The registry.  Module state because the events happen deep in the pool and
 * the upstream engine; it is touched only from the event loop's thread.
 */
static struct relay_metrics *relays;

static struct relay_metrics *relay_find(const char *name, int create)
{
    for (struct relay_metrics *r = relays; r != NULL; r = r->next)
        if (strcmp(r->name, name) == 0)
            return r;
    if (!create)
        return NULL;
    struct relay_metrics *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->name = strdup(name);
    if (r->name == NULL) {
        free(r);
        return NULL;
    }
    r->next = relays;
    relays = r;
    return r;
}

void metrics_note_message(const char *relay, const struct message *m, double latency_s)
{
    struct relay_metrics *r = relay_find(relay, 1);
    if (r == NULL)
        return;
    size_t n[OUT_COUNT] = {0};
    for (size_t i = 0; i < m->nrcpts; i++) {
        int cls = m->results[i].code / 100;
        n[cls == 2 ? OUT_SENT : cls == 5 ? OUT_REJECTED : OUT_DEFERRED]++;
    }
    for (int o = 0; o < OUT_COUNT; o++)
        r->rcpts[o] += n[o];
    enum outcome out = n[OUT_SENT] ? OUT_SENT : n[OUT_DEFERRED] ? OUT_DEFERRED : OUT_REJECTED;
    r->messages[out]++;
    if (out == OUT_SENT)
        r->bytes += m->size;
    if (latency_s < 0)
        latency_s = 0;
    size_t b = 0;
    while (b < NBOUNDS && latency_s > handoff_bounds[b])
        b++;
    if (b < NBOUNDS)
        r->buckets[b]++;
    r->count++;
    r->sum += latency_s;
}

void metrics_note_auth_failure(const char *relay)
{
    struct relay_metrics *r = relay_find(relay, 1);
    if (r != NULL)
        r->auth_failures++;
}

void metrics_reset(void)
{
    while (relays != NULL) {
        struct relay_metrics *r = relays;
        relays = r->next;
        free(r->name);
        free(r);
    }
}

/* ---- the writer ----------------------------------------------------------- */

int metrics_label_escape(struct evbuffer *out, const char *s)
{
    const char *run = s;
    for (const char *p = s;; p++) {
        const char *esc = *p == '\\' ? "\\\\" : *p == '"' ? "\\\"" : *p == '\n' ? "\\n" : NULL;
        if (esc == NULL && *p != '\0')
            continue;
        if (evbuffer_add(out, run, (size_t)(p - run)) != 0)
            return -1;
        if (*p == '\0')
            return 0;
        if (evbuffer_add(out, esc, 2) != 0)
            return -1;
        run = p + 1;
    }
}

/* Writes fail only when out of memory; the first failure sticks. */
struct writer {
    struct evbuffer *out;
    int failed;
};

__attribute__((format(printf, 2, 3))) static void w_printf(struct writer *w, const char *fmt, ...)
{
    if (w->failed)
        return;
    va_list ap;
    va_start(ap, fmt);
    if (evbuffer_add_vprintf(w->out, fmt, ap) < 0)
        w->failed = 1;
    va_end(ap);
}

static void w_family(struct writer *w, const char *name, const char *type, const char *help)
{
    w_printf(w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/*
 * One sample: name{relay="...",extra} value.  extra is NULL or a complete
 * label pair whose value needs no escaping (our own words and numbers).
 */
static void w_sample(struct writer *w, const char *name, const char *relay, const char *extra,
                     const char *value)
{
    w_printf(w, "%s{", name);
    if (relay != NULL) {
        w_printf(w, "relay=\"");
        if (!w->failed && metrics_label_escape(w->out, relay) != 0)
            w->failed = 1;
        w_printf(w, "\"%s", extra ? "," : "");
    }
    w_printf(w, "%s} %s\n", extra ? extra : "", value);
}

static void w_sample_u(struct writer *w, const char *name, const char *relay, const char *extra,
                       unsigned long long v)
{
    char num[32];
    snprintf(num, sizeof(num), "%llu", v);
    w_sample(w, name, relay, extra, num);
}

/* Relay names to report: the pool's relays first, then any only seen in events. */
struct name_list {
    const char **names;
    size_t n;
};

static int names_add(struct name_list *l, const char *name)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->names[i], name) == 0)
            return 0;
    const char **grown = realloc(l->names, (l->n + 1) * sizeof(*grown));
    if (grown == NULL)
        return -1;
    l->names = grown;
    l->names[l->n++] = name;
    return 0;
}

static const struct relay_metrics zero_metrics;

static const struct relay_metrics *relay_or_zero(const char *name)
{
    const struct relay_metrics *r = relay_find(name, 0);
    return r ? r : &zero_metrics;
}

static void render_events(struct writer *w, const struct name_list *l)
{
    char label[64];
    w_family(w, "mailpool_messages_total", "counter",
             "Messages handed to a relay, by outcome (sent: at least one recipient accepted).");
    for (size_t i = 0; i < l->n; i++)
        for (int o = 0; o < OUT_COUNT; o++) {
            snprintf(label, sizeof(label), "outcome=\"%s\"", msg_outcomes[o]);
            w_sample_u(w, "mailpool_messages_total", l->names[i], label,
                       relay_or_zero(l->names[i])->messages[o]);
        }
    w_family(w, "mailpool_recipients_total", "counter",
             "Recipients of messages handed to a relay, by the upstream reply's class.");
    for (size_t i = 0; i < l->n; i++)
        for (int o = 0; o < OUT_COUNT; o++) {
            snprintf(label, sizeof(label), "outcome=\"%s\"", rcpt_outcomes[o]);
            w_sample_u(w, "mailpool_recipients_total", l->names[i], label,
                       relay_or_zero(l->names[i])->rcpts[o]);
        }
    w_family(w, "mailpool_sent_bytes_total", "counter",
             "Message bytes accepted by the upstream server (canonical form).");
    for (size_t i = 0; i < l->n; i++)
        w_sample_u(w, "mailpool_sent_bytes_total", l->names[i], NULL,
                   relay_or_zero(l->names[i])->bytes);
    w_family(w, "mailpool_auth_failures_total", "counter",
             "AUTH attempts the upstream server refused.");
    for (size_t i = 0; i < l->n; i++)
        w_sample_u(w, "mailpool_auth_failures_total", l->names[i], NULL,
                   relay_or_zero(l->names[i])->auth_failures);

    w_family(w, "mailpool_handoff_seconds", "histogram",
             "Time from handing a message to a relay to the last recipient's result.");
    for (size_t i = 0; i < l->n; i++) {
        const struct relay_metrics *r = relay_or_zero(l->names[i]);
        unsigned long long cum = 0;
        for (size_t b = 0; b < NBOUNDS; b++) {
            cum += r->buckets[b];
            snprintf(label, sizeof(label), "le=\"%g\"", handoff_bounds[b]);
            w_sample_u(w, "mailpool_handoff_seconds_bucket", l->names[i], label, cum);
        }
        w_sample_u(w, "mailpool_handoff_seconds_bucket", l->names[i], "le=\"+Inf\"", r->count);
        char sum[64];
        snprintf(sum, sizeof(sum), "%.6f", r->sum);
        w_sample(w, "mailpool_handoff_seconds_sum", l->names[i], NULL, sum);
        w_sample_u(w, "mailpool_handoff_seconds_count", l->names[i], NULL, r->count);
    }
}

static void render_pool(struct writer *w, const struct pool *p)
{
    static const struct {
        const char *name, *type, *help;
    } fams[] = {
        {"mailpool_upstream_sessions_opened_total", "counter", "Upstream sessions opened."},
        {"mailpool_upstream_sessions_reused_total", "counter",
         "Messages sent on a session that had sent one before."},
        {"mailpool_upstream_sessions_failed_total", "counter",
         "Upstream sessions that failed during setup or later."},
        {"mailpool_upstream_sessions", "gauge", "Upstream sessions open or opening."},
        {"mailpool_waiters", "gauge", "Messages waiting for an upstream session."},
    };
    size_t n = pool_relay_count(p);
    for (size_t f = 0; f < sizeof(fams) / sizeof(fams[0]); f++) {
        w_family(w, fams[f].name, fams[f].type, fams[f].help);
        for (size_t i = 0; i < n; i++) {
            struct pool_relay_info ri;
            pool_relay_info(p, i, &ri);
            unsigned long long v = f == 0   ? ri.opened
                                   : f == 1 ? ri.reused
                                   : f == 2 ? ri.failed
                                   : f == 3 ? ri.sessions
                                            : ri.waiting;
            w_sample_u(w, fams[f].name, ri.name, NULL, v);
        }
    }
}

struct queue_scan {
    struct name_list relays;
    size_t *counts; /* parallel to relays.names */
    time_t oldest;  /* 0: empty */
    int failed;
};

static void queue_scan_item(const struct queue_item_info *it, void *arg)
{
    struct queue_scan *s = arg;
    if (s->failed)
        return;
    if (s->oldest == 0 || it->created < s->oldest)
        s->oldest = it->created;
    size_t before = s->relays.n;
    if (names_add(&s->relays, it->relay) != 0) {
        s->failed = 1;
        return;
    }
    if (s->relays.n != before) {
        size_t *grown = realloc(s->counts, s->relays.n * sizeof(*grown));
        if (grown == NULL) {
            s->relays.n--;
            s->failed = 1;
            return;
        }
        s->counts = grown;
        s->counts[s->relays.n - 1] = 0;
    }
    for (size_t i = 0; i < s->relays.n; i++)
        if (strcmp(s->relays.names[i], it->relay) == 0)
            s->counts[i]++;
}

static void render_queue(struct writer *w, const struct queue *q, const struct name_list *known)
{
    struct queue_scan s = {{NULL, 0}, NULL, 0, 0};
    /* Every known relay gets a 0 line, so a drained queue reads 0, not "absent". */
    for (size_t i = 0; i < known->n && !s.failed; i++) {
        size_t before = s.relays.n;
        if (names_add(&s.relays, known->names[i]) != 0) {
            s.failed = 1;
            break;
        }
        if (s.relays.n == before)
            continue;
        size_t *grown = realloc(s.counts, s.relays.n * sizeof(*grown));
        if (grown == NULL) {
            s.relays.n--;
            s.failed = 1;
            break;
        }
        s.counts = grown;
        s.counts[s.relays.n - 1] = 0;
    }
    /* Item strings belong to the queue, which cannot change while we render. */
    queue_foreach(q, NULL, queue_scan_item, &s);
    if (s.failed)
        w->failed = 1;
    w_family(w, "mailpool_queue_messages", "gauge", "Messages in the queue (spool).");
    for (size_t i = 0; i < s.relays.n; i++)
        w_sample_u(w, "mailpool_queue_messages", s.relays.names[i], NULL, s.counts[i]);
    w_family(w, "mailpool_queue_oldest_age_seconds", "gauge",
             "Age of the oldest queued message (0 when the queue is empty).");
    time_t now = time(NULL);
    w_printf(w, "mailpool_queue_oldest_age_seconds %lld\n",
             s.oldest && now > s.oldest ? (long long)(now - s.oldest) : 0LL);
    free(s.relays.names);
    free(s.counts);
}

int metrics_render(struct evbuffer *out, const struct pool *p, const struct queue *q)
{
    struct writer w = {out, 0};
    struct name_list names = {NULL, 0};
    size_t n = p ? pool_relay_count(p) : 0;
    for (size_t i = 0; i < n && !w.failed; i++) {
        struct pool_relay_info ri;
        pool_relay_info(p, i, &ri);
        if (names_add(&names, ri.name) != 0)
            w.failed = 1;
    }
    for (const struct relay_metrics *r = relays; r != NULL && !w.failed; r = r->next)
        if (names_add(&names, r->name) != 0)
            w.failed = 1;
    render_events(&w, &names);
    if (p != NULL)
        render_pool(&w, p);
    if (q != NULL)
        render_queue(&w, q, &names);
    free(names.names);
    return w.failed ? -1 : 0;
}
