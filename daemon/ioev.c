/*
 * Buffered non-blocking client socket on libevent: connect, plaintext or TLS
 * (tls.h) reads and writes through evbuffers, and a deadline timer.  Events
 * reach the owner only from the loop, never from inside an ioev_* call, and
 * the owner may free the ioev from its own callback (STARTTLS: RFC 3207).
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "ioev.h"
#include "tls.h"

/* One TLS record's worth of plaintext per wolfSSL_write. */
#define IOEV_TLS_CHUNK 16384
/* Read size per recv / wolfSSL_read. */
#define IOEV_READ_CHUNK 16384
/* Reading pauses while this much unread input waits for the owner. */
#define IOEV_INPUT_MAX (1024 * 1024)
/* iovecs per sendmsg: one syscall for a whole pipelined burst. */
#define IOEV_IOV_MAX 64

enum ioev_state {
    ST_CONNECTING,
    ST_PLAIN,
    ST_HANDSHAKE,
    ST_TLS,
    ST_CLOSED, /* EOF or error delivered: no more socket events */
};

/* What a TLS operation that could not finish is waiting for. */
enum ioev_want { WANT_NONE = 0, WANT_RD, WANT_WR };

struct ioev {
    struct event_base *base;
    int fd;
    enum ioev_state state;
    struct event *rev, *wev, *tev, *dev;
    int rev_on, wev_on;
    struct evbuffer *in, *out;
    ioev_cb cb;
    void *arg;

    unsigned busy;    /* nesting of our handlers on the stack */
    int dead;         /* ioev_free() was called while busy */
    unsigned pending; /* bit per enum ioev_event, delivered from dev */
    int defer;        /* inside ioev_flush(): events are scheduled, never delivered */
    int flush_req;    /* the owner wants IOEV_FLUSHED when out drains */

    struct tls_conn *tls;
    enum ioev_want hs_want, rd_want, wr_want;
    unsigned char *wbuf; /* plaintext handed to wolfSSL_write, kept for retries */
    size_t wlen;

    char *error;
};

static void io_on_read(evutil_socket_t fd, short what, void *arg);
static void io_on_write(evutil_socket_t fd, short what, void *arg);
static void io_on_timer(evutil_socket_t fd, short what, void *arg);
static void io_on_deferred(evutil_socket_t fd, short what, void *arg);
static void io_update(struct ioev *io);
static void plain_write(struct ioev *io);
static int tls_write_pending(struct ioev *io);

static const char oom_error[] = "out of memory";

static void io_set_error(struct ioev *io, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void io_set_error(struct ioev *io, const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;

    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    if (io->error != oom_error)
        free(io->error);
    io->error = s ? s : (char *)oom_error;
}

static void io_destroy(struct ioev *io)
{
    if (io->rev)
        event_free(io->rev);
    if (io->wev)
        event_free(io->wev);
    if (io->tev)
        event_free(io->tev);
    if (io->dev)
        event_free(io->dev);
    /* Before close(): tls_conn_free may still send close_notify. */
    if (io->tls)
        tls_conn_free(io->tls);
    if (io->fd >= 0)
        close(io->fd);
    if (io->in)
        evbuffer_free(io->in);
    if (io->out)
        evbuffer_free(io->out);
    free(io->wbuf);
    if (io->error != oom_error)
        free(io->error);
    free(io);
}

/*
 * Every handler runs between io_enter() and io_leave(), so an ioev_free()
 * from the owner's callback only marks the ioev; the last io_leave() frees.
 */
static void io_enter(struct ioev *io)
{
    io->busy++;
}

static void io_leave(struct ioev *io)
{
    if (--io->busy == 0 && io->dead) {
        io_destroy(io);
        return;
    }
    if (!io->dead)
        io_update(io);
}

/* Returns 0 if the ioev is still alive afterwards, -1 if the owner freed it. */
static void io_schedule(struct ioev *io, enum ioev_event ev);

static int io_deliver(struct ioev *io, enum ioev_event ev)
{
    if (io->dead)
        return -1;
    if (io->defer) {
        io_schedule(io, ev);
        return 0;
    }
    if (ev == IOEV_FLUSHED)
        io->flush_req = 0;
    io->cb(io, ev, io->arg);
    return io->dead ? -1 : 0;
}

/* Queue an event for delivery from the loop (never from the caller's stack). */
static void io_schedule(struct ioev *io, enum ioev_event ev)
{
    io->pending |= 1u << ev;
    event_active(io->dev, EV_TIMEOUT, 1);
}

static void io_close_socket_events(struct ioev *io)
{
    io->state = ST_CLOSED;
    io->hs_want = io->rd_want = io->wr_want = WANT_NONE;
    io_update(io);
}

static int io_fail(struct ioev *io, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int io_fail(struct ioev *io, const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;

    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    if (io->error != oom_error)
        free(io->error);
    io->error = s ? s : (char *)oom_error;
    io_close_socket_events(io);
    io_deliver(io, IOEV_ERROR);
    return -1;
}

static void io_event_set(struct event *ev, int *on, int want)
{
    if (want && !*on)
        event_add(ev, NULL);
    else if (!want && *on)
        event_del(ev);
    *on = want;
}

/* Enable exactly the socket events the current state needs. */
static void io_update(struct ioev *io)
{
    size_t inlen = evbuffer_get_length(io->in);
    size_t outlen = evbuffer_get_length(io->out) + io->wlen;
    int rd = 0, wr = 0;

    switch (io->state) {
    case ST_CONNECTING:
        wr = 1;
        break;
    case ST_PLAIN:
        rd = inlen < IOEV_INPUT_MAX;
        wr = io->flush_req && outlen > 0;
        break;
    case ST_HANDSHAKE:
        rd = io->hs_want == WANT_RD;
        wr = io->hs_want == WANT_WR;
        break;
    case ST_TLS:
        rd = inlen < IOEV_INPUT_MAX || io->wr_want == WANT_RD;
        wr = io->wr_want == WANT_WR || io->rd_want == WANT_WR ||
             (io->wr_want == WANT_NONE && io->flush_req && outlen > 0);
        /* Decrypted bytes already inside wolfSSL would never wake the socket. */
        if (inlen < IOEV_INPUT_MAX && io->rd_want == WANT_NONE && tls_conn_pending(io->tls))
            event_active(io->rev, EV_READ, 1);
        break;
    case ST_CLOSED:
        break;
    }
    io_event_set(io->rev, &io->rev_on, rd);
    io_event_set(io->wev, &io->wev_on, wr);
}

struct ioev *ioev_connect(struct event_base *base, const struct sockaddr *addr, socklen_t alen,
                          ioev_cb cb, void *arg, char *err, size_t errlen)
{
    struct ioev *io;
    int one = 1;

    io = calloc(1, sizeof(*io));
    if (!io) {
        snprintf(err, errlen, "%s", oom_error);
        return NULL;
    }
    io->base = base;
    io->cb = cb;
    io->arg = arg;
    io->fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (io->fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        free(io);
        return NULL;
    }
    /* The pipelined burst must leave at once, not wait for Nagle. */
    if ((addr->sa_family == AF_INET || addr->sa_family == AF_INET6) &&
        setsockopt(io->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0) {
        snprintf(err, errlen, "setsockopt TCP_NODELAY: %s", strerror(errno));
        close(io->fd);
        free(io);
        return NULL;
    }
    io->in = evbuffer_new();
    io->out = evbuffer_new();
    io->rev = event_new(base, io->fd, EV_READ | EV_PERSIST, io_on_read, io);
    io->wev = event_new(base, io->fd, EV_WRITE | EV_PERSIST, io_on_write, io);
    io->tev = event_new(base, -1, 0, io_on_timer, io);
    io->dev = event_new(base, -1, 0, io_on_deferred, io);
    if (!io->in || !io->out || !io->rev || !io->wev || !io->tev || !io->dev) {
        snprintf(err, errlen, "%s", oom_error);
        io_destroy(io);
        return NULL;
    }

    io->state = ST_CONNECTING;
    if (connect(io->fd, addr, alen) == 0) {
        io->state = ST_PLAIN;
        io_schedule(io, IOEV_CONNECTED);
    } else if (errno != EINPROGRESS && errno != EINTR) {
        /* Reported through the callback like a late failure, for one code path. */
        io_set_error(io, "connect: %s", strerror(errno));
        io->state = ST_CLOSED;
        io_schedule(io, IOEV_ERROR);
    }
    io_update(io);
    return io;
}

struct ioev *ioev_new(struct event_base *base, int fd, ioev_cb cb, void *arg)
{
    struct ioev *io = calloc(1, sizeof(*io));

    if (!io)
        return NULL;
    io->base = base;
    io->cb = cb;
    io->arg = arg;
    io->fd = fd;
    io->in = evbuffer_new();
    io->out = evbuffer_new();
    io->rev = event_new(base, io->fd, EV_READ | EV_PERSIST, io_on_read, io);
    io->wev = event_new(base, io->fd, EV_WRITE | EV_PERSIST, io_on_write, io);
    io->tev = event_new(base, -1, 0, io_on_timer, io);
    io->dev = event_new(base, -1, 0, io_on_deferred, io);
    if (!io->in || !io->out || !io->rev || !io->wev || !io->tev || !io->dev) {
        io->fd = -1; /* the caller still owns it on failure */
        io_destroy(io);
        return NULL;
    }
    io->state = ST_PLAIN;
    io_update(io);
    return io;
}

void ioev_free(struct ioev *io)
{
    if (!io || io->dead)
        return;
    if (io->busy == 0) {
        io_destroy(io);
        return;
    }
    io->dead = 1;
    io->pending = 0;
    event_del(io->rev);
    event_del(io->wev);
    event_del(io->tev);
    event_del(io->dev);
    io->rev_on = io->wev_on = 0;
}

void ioev_set_cb(struct ioev *io, ioev_cb cb, void *arg)
{
    io->cb = cb;
    io->arg = arg;
}

struct evbuffer *ioev_input(struct ioev *io)
{
    return io->in;
}

struct evbuffer *ioev_output(struct ioev *io)
{
    return io->out;
}

void ioev_flush(struct ioev *io)
{
    if (io->dead)
        return;
    io->flush_req = 1;
    switch (io->state) {
    case ST_CLOSED:
        if (!io->error)
            io_set_error(io, "write: connection already closed");
        io_schedule(io, IOEV_ERROR);
        return;
    case ST_PLAIN:
    case ST_TLS:
        if (evbuffer_get_length(io->out) == 0 && io->wlen == 0) {
            io_schedule(io, IOEV_FLUSHED);
            return;
        }
        /*
         * Write at once rather than arm the write event and wait a loop
         * turn: the socket is almost always writable, and this saves two
         * epoll_ctl calls and a wake-up per burst.  Whatever happens is
         * reported from the loop (defer), never from the caller's stack.
         */
        io_enter(io);
        io->defer++;
        if (io->state == ST_PLAIN)
            plain_write(io);
        else if (io->wr_want == WANT_NONE && io->rd_want == WANT_NONE)
            tls_write_pending(io);
        io->defer--;
        io_leave(io);
        return;
    default:
        /* Written once the connect or handshake completes. */
        break;
    }
    if (io->busy == 0)
        io_update(io);
}

int ioev_start_tls(struct ioev *io, struct tls_ctx *ctx, const char *server_name,
                   const char *session_key, char *err, size_t errlen)
{
    if (io->dead || io->state != ST_PLAIN) {
        snprintf(err, errlen, "TLS cannot start: connection not open in plaintext");
        return -1;
    }
    if (evbuffer_get_length(io->in) > 0) {
        snprintf(err, errlen,
                 "TLS refused: %zu bytes arrived in plaintext before the handshake "
                 "(STARTTLS injection?)",
                 evbuffer_get_length(io->in));
        return -1;
    }
    if (evbuffer_get_length(io->out) > 0) {
        snprintf(err, errlen, "TLS cannot start: plaintext output not yet sent");
        return -1;
    }
    io->tls = tls_conn_new(ctx, io->fd, server_name, session_key, err, errlen);
    if (!io->tls)
        return -1;
    io->state = ST_HANDSHAKE;
    /* The ClientHello goes out from the loop, as soon as the socket is writable. */
    io->hs_want = WANT_WR;
    if (io->busy == 0)
        io_update(io);
    return 0;
}

int ioev_is_tls(const struct ioev *io)
{
    return io->tls != NULL;
}

const char *ioev_tls_version(const struct ioev *io)
{
    return io->tls ? tls_conn_version(io->tls) : NULL;
}

const char *ioev_tls_cipher(const struct ioev *io)
{
    return io->tls ? tls_conn_cipher(io->tls) : NULL;
}

int ioev_tls_resumed(const struct ioev *io)
{
    return io->tls ? tls_conn_resumed(io->tls) : 0;
}

int ioev_tls_peer_info(const struct ioev *io, struct tls_peer_info *info)
{
    return io->tls ? tls_conn_peer_info(io->tls, info) : -1;
}

void ioev_set_timeout(struct ioev *io, unsigned ms)
{
    struct timeval tv;

    if (io->dead)
        return;
    event_del(io->tev);
    if (ms == 0)
        return;
    tv.tv_sec = ms / 1000;
    tv.tv_usec = (ms % 1000) * 1000;
    event_add(io->tev, &tv);
}

const char *ioev_error(const struct ioev *io)
{
    return io->error ? io->error : "no error";
}

int ioev_fd(const struct ioev *io)
{
    return io->fd;
}

/* ---- plaintext ---------------------------------------------------------- */

/*
 * recv() straight into reserved buffer space: evbuffer_read() would first
 * ask the kernel how much is waiting (an ioctl per read).
 */
static void plain_read(struct ioev *io)
{
    struct evbuffer_iovec vec;
    size_t total = 0;
    ssize_t n;

    while (evbuffer_get_length(io->in) < IOEV_INPUT_MAX) {
        if (evbuffer_reserve_space(io->in, IOEV_READ_CHUNK, &vec, 1) < 1) {
            io_fail(io, "%s", oom_error);
            return;
        }
        n = recv(io->fd, vec.iov_base, vec.iov_len, 0);
        vec.iov_len = n > 0 ? (size_t)n : 0;
        evbuffer_commit_space(io->in, &vec, 1);
        if (n > 0) {
            total += (size_t)n;
            if ((size_t)n < IOEV_READ_CHUNK)
                break; /* drained for now: do not spend a recv on EAGAIN */
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        /* Hand over what came before the close or error first. */
        if (total > 0 && io_deliver(io, IOEV_READ) < 0)
            return;
        if (n == 0) {
            io_close_socket_events(io);
            io_deliver(io, IOEV_EOF);
        } else {
            io_fail(io, "read: %s", strerror(errno));
        }
        return;
    }
    if (total > 0)
        io_deliver(io, IOEV_READ);
}

static void plain_write(struct ioev *io)
{
    struct evbuffer_iovec vec[IOEV_IOV_MAX];
    struct iovec iov[IOEV_IOV_MAX];
    struct msghdr msg;
    ssize_t n;
    int i, nvec;

    while (evbuffer_get_length(io->out) > 0) {
        nvec = evbuffer_peek(io->out, -1, NULL, vec, IOEV_IOV_MAX);
        if (nvec > IOEV_IOV_MAX)
            nvec = IOEV_IOV_MAX;
        for (i = 0; i < nvec; i++) {
            iov[i].iov_base = vec[i].iov_base;
            iov[i].iov_len = vec[i].iov_len;
        }
        memset(&msg, 0, sizeof(msg));
        msg.msg_iov = iov;
        msg.msg_iovlen = (size_t)nvec;
        /* sendmsg rather than writev: MSG_NOSIGNAL, no SIGPIPE on a closed peer. */
        n = sendmsg(io->fd, &msg, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            io_fail(io, "write: %s", strerror(errno));
            return;
        }
        evbuffer_drain(io->out, (size_t)n);
    }
    if (io->flush_req)
        io_deliver(io, IOEV_FLUSHED);
}

/* ---- TLS ---------------------------------------------------------------- */

static int tls_write_pending(struct ioev *io)
{
    enum tls_result r;
    size_t n;

    io->wr_want = WANT_NONE;
    for (;;) {
        if (io->wlen == 0) {
            int got;

            if (evbuffer_get_length(io->out) == 0)
                break;
            if (!io->wbuf && !(io->wbuf = malloc(IOEV_TLS_CHUNK)))
                return io_fail(io, "%s", oom_error);
            got = evbuffer_remove(io->out, io->wbuf, IOEV_TLS_CHUNK);
            if (got <= 0)
                break;
            io->wlen = (size_t)got;
        }
        /* After WANT_*, wolfSSL needs the very same bytes again. */
        r = tls_conn_write(io->tls, io->wbuf, io->wlen, &n);
        if (r == TLS_OK) {
            if (n < io->wlen)
                memmove(io->wbuf, io->wbuf + n, io->wlen - n);
            io->wlen -= n;
            continue;
        }
        if (r == TLS_WANT_WRITE) {
            io->wr_want = WANT_WR;
            return 0;
        }
        if (r == TLS_WANT_READ) {
            io->wr_want = WANT_RD;
            return 0;
        }
        if (r == TLS_EOF)
            return io_fail(io, "TLS: write: connection closed by the server");
        return io_fail(io, "TLS: %s", tls_conn_error(io->tls));
    }
    if (io->flush_req)
        return io_deliver(io, IOEV_FLUSHED);
    return 0;
}

static int tls_read_all(struct ioev *io)
{
    struct evbuffer_iovec vec;
    enum tls_result r;
    size_t n, total = 0;

    io->rd_want = WANT_NONE;
    while (evbuffer_get_length(io->in) < IOEV_INPUT_MAX) {
        if (evbuffer_reserve_space(io->in, IOEV_READ_CHUNK, &vec, 1) < 1)
            return io_fail(io, "%s", oom_error);
        r = tls_conn_read(io->tls, vec.iov_base, vec.iov_len, &n);
        vec.iov_len = n;
        evbuffer_commit_space(io->in, &vec, 1);
        total += n;
        if (r == TLS_OK)
            continue;
        if (r == TLS_WANT_READ)
            break;
        if (r == TLS_WANT_WRITE) {
            io->rd_want = WANT_WR;
            break;
        }
        /* Hand over what came before the close or error first. */
        if (total > 0 && io_deliver(io, IOEV_READ) < 0)
            return -1;
        if (r == TLS_EOF) {
            io_close_socket_events(io);
            return io_deliver(io, IOEV_EOF);
        }
        return io_fail(io, "TLS: %s", tls_conn_error(io->tls));
    }
    if (total > 0)
        return io_deliver(io, IOEV_READ);
    return 0;
}

/* Drive the handshake, then writes and reads, whichever socket event came. */
static void tls_progress(struct ioev *io)
{
    enum tls_result r;

    if (io->state == ST_HANDSHAKE) {
        r = tls_conn_handshake(io->tls);
        if (r == TLS_WANT_READ || r == TLS_WANT_WRITE) {
            io->hs_want = r == TLS_WANT_READ ? WANT_RD : WANT_WR;
            return;
        }
        if (r != TLS_OK) {
            io_fail(io, "TLS handshake failed: %s", tls_conn_error(io->tls));
            return;
        }
        io->hs_want = WANT_NONE;
        io->state = ST_TLS;
        if (io_deliver(io, IOEV_TLS_DONE) < 0 || io->state != ST_TLS)
            return;
    }
    if (io->state != ST_TLS)
        return;
    if (tls_write_pending(io) < 0 || io->state != ST_TLS)
        return;
    tls_read_all(io);
}

/* ---- libevent handlers -------------------------------------------------- */

static void connect_done(struct ioev *io)
{
    int soerr = 0;
    socklen_t len = sizeof(soerr);

    if (getsockopt(io->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
        soerr = errno;
    if (soerr == EINPROGRESS || soerr == EALREADY)
        return;
    if (soerr != 0) {
        io_fail(io, "connect: %s", strerror(soerr));
        return;
    }
    io->state = ST_PLAIN;
    /* A flush asked for while connecting, with nothing to write, is done now. */
    if (io->flush_req && evbuffer_get_length(io->out) == 0)
        io_schedule(io, IOEV_FLUSHED);
    io_update(io);
    io_deliver(io, IOEV_CONNECTED);
}

static void io_on_read(evutil_socket_t fd, short what, void *arg)
{
    struct ioev *io = arg;

    io_enter(io);
    switch (io->state) {
    case ST_PLAIN:
        plain_read(io);
        break;
    case ST_HANDSHAKE:
    case ST_TLS:
        tls_progress(io);
        break;
    default:
        break;
    }
    io_leave(io);
}

static void io_on_write(evutil_socket_t fd, short what, void *arg)
{
    struct ioev *io = arg;

    io_enter(io);
    switch (io->state) {
    case ST_CONNECTING:
        connect_done(io);
        break;
    case ST_PLAIN:
        plain_write(io);
        break;
    case ST_HANDSHAKE:
    case ST_TLS:
        tls_progress(io);
        break;
    default:
        break;
    }
    io_leave(io);
}

static void io_on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct ioev *io = arg;

    io_enter(io);
    io_deliver(io, IOEV_TIMEOUT);
    io_leave(io);
}

static void io_on_deferred(evutil_socket_t fd, short what, void *arg)
{
    static const enum ioev_event order[] = {
        IOEV_CONNECTED, IOEV_TLS_DONE, IOEV_READ, IOEV_FLUSHED, IOEV_EOF, IOEV_ERROR, IOEV_TIMEOUT};
    struct ioev *io = arg;
    size_t i;

    io_enter(io);
    for (i = 0; i < sizeof(order) / sizeof(order[0]) && !io->dead; i++) {
        if (!(io->pending & (1u << order[i])))
            continue;
        io->pending &= ~(1u << order[i]);
        /* A FLUSHED that was overtaken by new output waits for the real drain. */
        if (order[i] == IOEV_FLUSHED &&
            (!io->flush_req || evbuffer_get_length(io->out) > 0 || io->wlen > 0))
            continue;
        io_deliver(io, order[i]);
    }
    io_leave(io);
}
