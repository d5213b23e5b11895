/*
 * Fan-out of one submission to its relays and fan-in of the results (SPEC
 * section 1, "split into one transaction per relay"; RFC 2033 4.2: one
 * reply per recipient, in RCPT order).  A message going to one relay with
 * no address fixing is handed on as it is, without a copy.
 */
#include "dispatch.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bodyfile.h"
#include "config.h"
#include "log.h"
#include "message.h"
#include "pool.h"
#include "queue.h"
#include "rewrite.h"

struct part {
    struct dispatch *d;
    const struct relay_config *rc;
    struct message *sub; /* what goes out; == d->m when the message needs no split or copy */
    size_t *idx;         /* recipients of d->m in this part, in order */
    size_t n;
    int mode;
    struct pool_job *job; /* relay mode: with the pool */
    int queueing;         /* queue mode: being made durable */
    int done;
};

struct dispatch {
    struct event_base *base;
    struct pool *pool;
    struct queue *queue;
    struct message *m;
    struct part *parts;
    size_t nparts;
    size_t pending;
    int starting;
    struct event *later; /* finishes a dispatch whose parts all failed at once */
    dispatch_done_cb cb;
    void *arg;
};

static void dispatch_free(struct dispatch *d)
{
    for (size_t i = 0; i < d->nparts; i++)
        free(d->parts[i].idx);
    free(d->parts);
    if (d->later)
        event_free(d->later);
    free(d);
}

static void dispatch_finish(struct dispatch *d)
{
    dispatch_done_cb cb = d->cb;
    void *arg = d->arg;
    struct message *m = d->m;
    dispatch_free(d);
    cb(m, arg);
}

static void dispatch_later_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    dispatch_finish(arg);
}

static void part_done(struct part *p)
{
    struct dispatch *d = p->d;
    /* Every part below nparts was filled by dispatch_plan(): d and rc are set. */
    // NOLINTNEXTLINE(clang-analyzer-core.NullDereference)
    if (p->sub != d->m)
        message_free(p->sub);
    p->sub = NULL;
    p->done = 1;
    if (--d->pending == 0 && !d->starting)
        dispatch_finish(d);
}

static void part_result(struct part *p, int code, const char *ecode, const char *text)
{
    for (size_t j = 0; j < p->n; j++)
        message_set_result(p->d->m, p->idx[j], code, ecode, text);
}

static void part_pool_done(struct message *sub, void *arg)
{
    struct part *p = arg;
    p->job = NULL;
    if (sub != p->d->m)
        for (size_t j = 0; j < p->n; j++) {
            const struct rcpt_result *r = &sub->results[j];
            message_set_result(p->d->m, p->idx[j], r->code, r->ecode, r->text);
        }
    part_done(p);
}

static void part_queued(int err, void *arg)
{
    struct part *p = arg;
    p->queueing = 0;
    if (err == 0) {
        char text[64 + MESSAGE_ID_LEN];
        snprintf(text, sizeof(text), "Ok: queued as %s", p->sub->id);
        part_result(p, 250, "2.0.0", text);
    } else if (err == ENOSPC) {
        part_result(p, 452, "4.3.1", "Insufficient system storage, try again later");
    } else {
        char text[200];
        snprintf(text, sizeof(text), "Cannot store the message (%s), try again later",
                 strerror(err));
        part_result(p, 451, "4.3.0", text);
    }
    part_done(p);
}

/* Append src[from..] to dst without consuming src (other parts read it too). */
static int copy_from(struct evbuffer *dst, struct evbuffer *src, size_t from)
{
    struct evbuffer_ptr ptr;
    if (evbuffer_ptr_set(src, &ptr, from, EVBUFFER_PTR_SET) < 0)
        return from == evbuffer_get_length(src) ? 0 : -1;
    size_t left = evbuffer_get_length(src) - from;
    while (left > 0) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(src, (ev_ssize_t)left, &ptr, &v, 1) < 1)
            return -1;
        size_t n = v.iov_len < left ? v.iov_len : left;
        if (evbuffer_add(dst, v.iov_base, n) < 0 ||
            evbuffer_ptr_set(src, &ptr, n, EVBUFFER_PTR_ADD) < 0)
            return -1;
        left -= n;
    }
    return 0;
}

/*
 * Append m's body from byte `from` to dst: another mapping of its file when
 * it has one (no copy on the heap), else a copy.
 */
static int share_from(struct evbuffer *dst, const struct message *m, size_t from)
{
    size_t total = evbuffer_get_length(m->body);
    if (m->body_fd >= 0 && from <= total)
        return bodyfile_add(dst, m->body_fd, (off_t)from, total - from);
    return copy_from(dst, m->body, from);
}

/* A new body: m's header section fixed for fx, then the rest of m's body.  NULL when out of memory.
 */
static struct evbuffer *fix_body(const struct address_fixing *fx, const char *sender,
                                 const struct message *m)
{
    struct evbuffer *src = m->body;
    size_t total = evbuffer_get_length(src), cand = total;
    struct evbuffer_ptr end = evbuffer_search(src, "\r\n\r\n", 4, NULL);
    if (end.pos >= 0)
        cand = (size_t)end.pos + 2;
    if (total >= 2 && evbuffer_search(src, "\r\n", 2, NULL).pos == 0)
        cand = 0; /* an empty first line: no header at all */
    const char *h = cand ? (const char *)evbuffer_pullup(src, (ev_ssize_t)cand) : "";
    if (h == NULL)
        return NULL;
    size_t hl = rewrite_header_length(h, cand);
    char *out = NULL;
    size_t outlen = 0;
    struct evbuffer *b = evbuffer_new();
    if (b == NULL || rewrite_headers(fx, sender, h, hl, &out, &outlen) < 0 ||
        evbuffer_add(b, out, outlen) < 0 || share_from(b, m, hl) < 0) {
        free(out);
        if (b)
            evbuffer_free(b);
        return NULL;
    }
    free(out);
    return b;
}

/* The envelope and body of part p, fixed for its relay; into sub (a fresh message or m). */
static int part_fill(struct part *p, struct message *m, struct message *sub)
{
    const struct address_fixing *fx = &p->rc->fix;
    int active = rewrite_active(fx);
    char *sender = active ? rewrite_sender(fx, m->sender) : strdup(m->sender);
    if (sender == NULL)
        return -1;
    if (sub == m) {
        /* In place: the recipients keep their indexes, so the results need no mapping. */
        for (size_t i = 0; i < m->nrcpts; i++) {
            char *r = rewrite_rcpt(fx, m->rcpts[i]);
            if (r == NULL) {
                free(sender);
                return -1;
            }
            free(m->rcpts[i]);
            m->rcpts[i] = r;
        }
    } else {
        for (size_t j = 0; j < p->n; j++) {
            size_t i = p->idx[j];
            char *r = active ? rewrite_rcpt(fx, m->rcpts[i]) : strdup(m->rcpts[i]);
            int rc = r ? message_add_rcpt_dsn(sub, r, m->dsn[i].notify, m->dsn[i].orcpt) : -1;
            free(r);
            if (rc < 0) {
                free(sender);
                return -1;
            }
        }
        sub->eightbit = m->eightbit;
        sub->smtputf8 = m->smtputf8;
        sub->mode = m->mode;
        sub->ret = m->ret;
        sub->is_bounce = m->is_bounce;
        sub->uid = m->uid;
        sub->gid = m->gid;
        sub->pid = m->pid;
        if (m->envid && (sub->envid = strdup(m->envid)) == NULL) {
            free(sender);
            return -1;
        }
    }
    struct evbuffer *body = NULL;
    int body_fd = -1; /* the file that holds exactly body, if any */
    if (active) {
        body = fix_body(fx, sender, m);
    } else if (sub != m && (body = evbuffer_new()) != NULL) {
        if (share_from(body, m, 0) < 0 ||
            (m->body_fd >= 0 && (body_fd = fcntl(m->body_fd, F_DUPFD_CLOEXEC, 0)) < 0)) {
            evbuffer_free(body);
            body = NULL;
        }
    }
    if (body == NULL && (active || sub != m)) {
        free(sender);
        return -1;
    }
    if (body) {
        if (sub->body)
            evbuffer_free(sub->body);
        sub->body = body;
        sub->size = evbuffer_get_length(body);
        /* A fixed header makes the body differ from the file: it is not the file any more. */
        if (sub->body_fd >= 0)
            close(sub->body_fd);
        sub->body_fd = body_fd;
    }
    free(sub->sender);
    sub->sender = sender;
    return 0;
}

/* Group the recipients by relay, in order of first appearance. */
static int dispatch_plan(struct dispatch *d, const struct config *cfg, const size_t *relays)
{
    struct message *m = d->m;
    d->parts = calloc(m->nrcpts ? m->nrcpts : 1, sizeof(*d->parts));
    if (d->parts == NULL)
        return -1;
    for (size_t i = 0; i < m->nrcpts; i++) {
        const struct relay_config *rc = &cfg->relays[relays[i]];
        struct part *p = NULL;
        for (size_t k = 0; k < d->nparts && !p; k++)
            if (d->parts[k].rc == rc)
                p = &d->parts[k];
        if (p == NULL) {
            p = &d->parts[d->nparts++];
            p->d = d;
            p->rc = rc;
            p->mode = m->mode >= 0 ? m->mode : (int)rc->mode;
            if ((p->idx = calloc(m->nrcpts, sizeof(*p->idx))) == NULL)
                return -1;
        }
        p->idx[p->n++] = i;
    }
    return 0;
}

static void part_start(struct dispatch *d, struct part *p)
{
    struct message *m = d->m;
    if (d->nparts == 1) {
        p->sub = m;
    } else if ((p->sub = message_new()) == NULL) {
        part_result(p, 451, "4.3.0", "Out of memory, try again later");
        part_done(p);
        return;
    }
    if ((d->nparts > 1 || rewrite_active(&p->rc->fix)) && part_fill(p, m, p->sub) < 0) {
        part_result(p, 451, "4.3.0", "Out of memory, try again later");
        part_done(p);
        return;
    }
    if (d->nparts > 1) {
        /* As in part_done(): p->rc is set for every planned part. */
        // NOLINTBEGIN(clang-analyzer-core.NullDereference)
        log_info("submit msg id=%s part id=%s relay=%s nrcpt=%zu", m->id, p->sub->id, p->rc->name,
                 p->n);
        // NOLINTEND(clang-analyzer-core.NullDereference)
    }
    if (p->mode == MODE_QUEUE) {
        p->queueing = 1;
        if (queue_submit(d->queue, p->sub, p->rc, part_queued, p) != 0) {
            p->queueing = 0;
            part_result(p, 451, "4.3.0", "Cannot queue the message, try again later");
            part_done(p);
        }
        return;
    }
    p->job = pool_submit(d->pool, p->rc, p->sub, part_pool_done, p);
    if (p->job == NULL) {
        part_result(p, 451, "4.3.0", "Out of memory, try again later");
        part_done(p);
    }
}

struct dispatch *dispatch_start(struct event_base *base, const struct config *cfg,
                                struct pool *pool, struct queue *queue, struct message *m,
                                const size_t *relays, dispatch_done_cb cb, void *arg)
{
    struct dispatch *d = calloc(1, sizeof(*d));
    if (d == NULL)
        return NULL;
    d->base = base;
    d->pool = pool;
    d->queue = queue;
    d->m = m;
    d->cb = cb;
    d->arg = arg;
    d->later = event_new(base, -1, 0, dispatch_later_cb, d);
    if (d->later == NULL || dispatch_plan(d, cfg, relays) < 0) {
        dispatch_free(d);
        return NULL;
    }
    d->pending = d->nparts;
    d->starting = 1;
    for (size_t k = 0; k < d->nparts; k++)
        part_start(d, &d->parts[k]);
    d->starting = 0;
    if (d->pending == 0)
        event_active(d->later, EV_TIMEOUT, 0);
    return d;
}

void dispatch_cancel(struct dispatch *d)
{
    int pool_has_m = 0;
    for (size_t k = 0; k < d->nparts; k++) {
        struct part *p = &d->parts[k];
        if (p->done)
            continue;
        if (p->job) {
            pool_cancel(p->job); /* the pool frees p->sub when it is done */
            pool_has_m |= p->sub == d->m;
            continue;
        }
        if (p->queueing)
            queue_submit_cancel(d->queue, p); /* the spool goes on with its copy */
        if (p->sub != d->m)
            message_free(p->sub);
    }
    if (!pool_has_m)
        message_free(d->m);
    dispatch_free(d);
}
