/*
 * "test RELAY": a probe session through the real upstream state machine
 * (RFC 5321, RFC 3207 STARTTLS, RFC 8314 implicit TLS, RFC 4954 AUTH),
 * stopped at the point where a message would be sent, and its report as
 * one JSON object (RFC 8259).  Secrets never appear: only the mechanism.
 */
#include "probe.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "json.h"
#include "log.h"
#include "tls.h"
#include "upstream.h"

/* Steps a report lists at most (several hosts and addresses each add theirs). */
#define PROBE_MAX_STEPS 256
/* A phase timeout of 0 ("wait indefinitely") counts as this much for the overall bound. */
#define PROBE_UNBOUNDED_PHASE 60
/* The overall bound never goes past this, whatever the relay's timeouts say. */
#define PROBE_MAX_SECONDS 300

struct probe {
    struct upstream *u;
    struct event *deadline;
    const struct relay_config *relay;
    unsigned limit; /* seconds, the overall bound */
    probe_cb cb;
    void *arg;
};

static unsigned phase(unsigned seconds)
{
    return seconds ? seconds : PROBE_UNBOUNDED_PHASE;
}

/*
 * Each phase has the relay's own time limit; the whole probe gets their sum
 * over every host (connect, TLS and greeting, then EHLO, STARTTLS, EHLO,
 * AUTH's exchanges), so a relay that answers just in time every time still
 * cannot keep the control client waiting for ever.
 */
static unsigned probe_limit(const struct relay_config *rc)
{
    const struct relay_timeouts *t = &rc->timeouts;
    unsigned long per_host =
        2ul * phase(t->connect) + 2ul * phase(t->greeting) + 8ul * phase(t->command);
    unsigned long total = per_host * (rc->nhosts ? rc->nhosts : 1);
    return total > PROBE_MAX_SECONDS ? PROBE_MAX_SECONDS : (unsigned)total;
}

static void write_steps(struct json_writer *w, const struct upstream *u)
{
    struct upstream_step *steps = calloc(PROBE_MAX_STEPS, sizeof(*steps));
    size_t n = steps ? upstream_probe_steps(u, steps, PROBE_MAX_STEPS) : 0;
    if (n > PROBE_MAX_STEPS)
        n = PROBE_MAX_STEPS;
    long long total = 0;
    json_key(w, "steps");
    json_array_begin(w);
    for (size_t i = 0; i < n; i++) {
        json_object_begin(w);
        json_kv_string(w, "step", steps[i].name);
        json_kv_string(w, "host", steps[i].host);
        json_kv_int(w, "usec", steps[i].usec);
        json_object_end(w);
        total += steps[i].usec;
    }
    json_array_end(w);
    json_kv_int(w, "total_usec", total);
    free(steps);
}

/* The EHLO keywords with their parameters, one per line after the server's name. */
static void write_caps(struct json_writer *w, const struct upstream *u)
{
    const char *text = upstream_ehlo_text(u);
    json_key(w, "capabilities");
    if (text == NULL) {
        json_null(w);
        return;
    }
    json_array_begin(w);
    const char *line = strchr(text, '\n');
    while (line != NULL) {
        line++;
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        if (len > 0)
            json_string_len(w, line, len);
        line = end;
    }
    json_array_end(w);
}

static void write_tls(struct json_writer *w, const struct upstream *u)
{
    const char *version = upstream_tls_version(u);
    json_key(w, "tls");
    if (version == NULL) {
        json_null(w);
        return;
    }
    json_object_begin(w);
    json_kv_string(w, "version", version);
    json_kv_string(w, "cipher", upstream_tls_cipher(u));
    struct tls_peer_info info;
    memset(&info, 0, sizeof(info));
    if (upstream_tls_peer_info(u, &info) == 0) {
        json_kv_string(w, "subject", info.subject);
        json_kv_string(w, "issuer", info.issuer);
        json_key(w, "san");
        json_array_begin(w);
        for (size_t i = 0; i < info.nsan; i++)
            json_string(w, info.san[i]);
        json_array_end(w);
        json_kv_string(w, "not_before", info.not_before);
        json_kv_string(w, "not_after", info.not_after);
        json_kv_string(w, "pin_sha256", info.pin_sha256);
    } else {
        json_kv_string(w, "certificate_error", "the server certificate could not be read");
    }
    tls_peer_info_clear(&info);
    json_object_end(w);
}

/* Hand the report over and end the probe; the session is QUIT or freed by the caller. */
static void probe_finish(struct probe *pr, struct evbuffer *answer)
{
    pr->cb(answer, pr->arg);
    event_free(pr->deadline);
    free(pr);
}

static void probe_report(struct probe *pr, const char *failed_step, const char *error)
{
    struct upstream *u = pr->u;
    struct evbuffer *buf = evbuffer_new();
    if (buf == NULL) {
        log_error("probe relay=%s: out of memory for the report", pr->relay->name);
        probe_finish(pr, NULL);
        return;
    }
    struct json_writer w;
    json_writer_init(&w, buf);
    json_object_begin(&w);
    json_kv_bool(&w, "ok", failed_step == NULL);
    if (failed_step != NULL) {
        json_kv_string(&w, "code", "test_failed");
        json_kv_string(&w, "error", error);
        json_kv_string(&w, "failed_step", failed_step);
    }
    json_kv_string(&w, "relay", pr->relay->name);
    json_kv_string(&w, "host", upstream_host(u));
    write_steps(&w, u);
    write_caps(&w, u);
    write_tls(&w, u);
    json_kv_string(&w, "auth_mechanism", upstream_auth_mech(u));
    json_object_end(&w);
    if (json_writer_finish(&w) != 0) {
        log_error("probe relay=%s: malformed report dropped", pr->relay->name);
        evbuffer_free(buf);
        probe_finish(pr, NULL);
        return;
    }
    probe_finish(pr, buf);
    evbuffer_free(buf);
}

static void probe_upstream_cb(struct upstream *u, enum upstream_event ev, void *arg)
{
    struct probe *pr = arg;
    if (ev == UPSTREAM_READY) {
        log_info("probe relay=%s host=%s: every step worked", pr->relay->name, upstream_host(u));
        probe_report(pr, NULL, NULL);
        upstream_quit(u); /* frees the session once the server answered */
        return;
    }
    const char *step = upstream_probe_failed_step(u);
    probe_report(pr, step ? step : "unknown", upstream_error(u));
    upstream_free(u);
}

static void probe_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct probe *pr = arg;
    struct upstream *u = pr->u;
    struct upstream_step *steps = calloc(PROBE_MAX_STEPS, sizeof(*steps));
    size_t n = steps ? upstream_probe_steps(u, steps, PROBE_MAX_STEPS) : 0;
    char *why = NULL;
    const char *step = n > 0 && n <= PROBE_MAX_STEPS ? steps[n - 1].name : "unknown";
    if (asprintf(&why, "relay %s, host %s: the probe took longer than %u seconds", pr->relay->name,
                 upstream_host(u), pr->limit) < 0)
        why = NULL;
    log_warn("probe relay=%s: no result within %u seconds", pr->relay->name, pr->limit);
    probe_report(pr, step, why ? why : "the probe took too long");
    free(why);
    free(steps);
    upstream_free(u);
}

struct probe *probe_start(const struct upstream_params *p, probe_cb cb, void *arg)
{
    struct probe *pr = calloc(1, sizeof(*pr));
    if (pr == NULL)
        return NULL;
    pr->relay = p->relay;
    pr->cb = cb;
    pr->arg = arg;
    pr->limit = probe_limit(p->relay);
    pr->deadline = evtimer_new(p->base, probe_deadline_cb, pr);
    if (pr->deadline == NULL) {
        free(pr);
        return NULL;
    }
    struct upstream_params params = *p;
    params.probe = 1;
    params.host_down_until = NULL; /* a probe never marks the pool's hosts down */
    pr->u = upstream_new(&params, probe_upstream_cb, pr);
    if (pr->u == NULL) {
        event_free(pr->deadline);
        free(pr);
        return NULL;
    }
    struct timeval tv = {(time_t)pr->limit, 0};
    evtimer_add(pr->deadline, &tv);
    log_info("probe relay=%s started (at most %u seconds)", pr->relay->name, pr->limit);
    return pr;
}

void probe_cancel(struct probe *pr)
{
    if (pr == NULL)
        return;
    upstream_free(pr->u);
    event_free(pr->deadline);
    free(pr);
}
