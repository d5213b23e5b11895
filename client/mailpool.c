/*
 * libmailpool: the client side of the submission protocol, LMTP (RFC 2033)
 * on a Unix socket, with PIPELINING (RFC 2920), ENHANCEDSTATUSCODES (RFC 2034,
 * 3463), 8BITMIME (RFC 6152), SIZE (RFC 1870), SMTPUTF8 (RFC 6531) and DSN
 * parameters (RFC 3461).  The protocol code is written as blocking calls on a
 * non-blocking socket; the asynchronous API runs the same code on a private
 * stack (ucontext) that yields to the caller wherever it would wait.
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#define MAILPOOL_NO_SEND_REDIRECT
#include "mailpool.h"
#include "proto.h"

/* The library is built with hidden visibility; only the API is exported. */
#define PUBLIC __attribute__((visibility("default")))

#define DEFAULT_TIMEOUT_MS 60000u
/* Body bytes handed to one send(); big enough that a large message is few syscalls. */
#define BODY_CHUNK 65536
/* One input line plus its CRLF, and room for the next read to find the LF. */
#define INBUF_SIZE (MAILPOOL_MAX_REPLY_LINE + 2)
/* The private stack of an asynchronous operation; callbacks run on it too. */
#define CO_STACK (256 * 1024)
/* RFC 3461 4.2: an ORCPT value is at most 500 characters. */
#define MAX_ORCPT 500

enum cap {
    CAP_PIPELINING = 1u << 0,
    CAP_8BITMIME = 1u << 1,
    CAP_SMTPUTF8 = 1u << 2,
    CAP_SIZE = 1u << 3,
    CAP_ENHANCED = 1u << 4,
    CAP_XRELAY = 1u << 5,
    CAP_XMODE = 1u << 6,
};

/* Where each recipient stands during a transaction. */
enum rcpt_state { RCPT_PENDING = 0, RCPT_ACCEPTED, RCPT_FINAL };

/* Where an open transaction stands. */
enum tx_phase {
    TX_NONE = 0, /* no transaction */
    TX_BEGUN,    /* envelope recorded, nothing sent */
    TX_DATA,     /* 354 received: body being written */
    TX_SETTLED,  /* every recipient has its outcome (refused), or the transport failed */
};

/* Line ending and dot-stuffing state carried across chunks (RFC 5321 4.5.2). */
struct enc {
    int line_start, pending_cr, eightbit;
    unsigned long long total; /* unstuffed CRLF size, for SIZE= */
    unsigned long long wire;  /* bytes as they go on the wire */
};

struct buf {
    char *p;
    size_t len, cap;
};

/* An open transaction: an owned copy of the envelope and the outcome so far. */
struct txn {
    enum tx_phase phase;
    char *sender, *relay, *mode, *ret, *envid, *notify;
    unsigned flags;
    char **rcpt, **rnotify, **orcpt;
    size_t n, cap;
    mailpool_reply *replies;
    unsigned char *state; /* enum rcpt_state per recipient */
    size_t naccepted;
    int utf8, eightbit, gone, clean, size_known;
    unsigned long long size_hint, total; /* SIZE= (if size_known); PROGRESS total */
    mailpool_status st;                  /* a failure that ended the transaction early */
    struct enc enc;
    char *chunk; /* BODY_CHUNK bytes of encoded output */
    size_t clen;
};

enum async_op { OP_NONE = 0, OP_OPEN, OP_SEND, OP_SEND_FD, OP_WRITE, OP_END };

struct mailpool {
    int fd;        /* -1 once the connection is gone */
    int broken;    /* a transport error left the stream in an unknown state */
    int reconnect; /* closed on purpose (cancel): connect again on the next call */
    unsigned timeout_ms;
    unsigned options;
    pthread_t owner;
    char *path;
    unsigned caps; /* enum cap bits from the LHLO reply */
    unsigned long long size_limit;
    mailpool_reply last;
    char *in; /* received, not yet parsed bytes (INBUF_SIZE) */
    size_t inlen;
    mailpool_callback cb;
    void *cb_arg;
    atomic_int cancel; /* set by mailpool_cancel(), possibly in a signal handler */
    int evfd;          /* eventfd written by mailpool_cancel() */
    int epfd;          /* what mailpool_fd() returns: evfd, tfd and the socket */
    int tfd;           /* timerfd: the deadline of an asynchronous wait */
    int ep_sock;       /* the socket registered in epfd, or -1 */
    struct txn tx;
    /* The asynchronous operation in progress, run on its own stack. */
    enum async_op op;
    int in_co, co_done;
    ucontext_t co_caller, co_self;
    void *co_stack;
    mailpool_status co_status;
    const mailpool_envelope *a_env;
    const void *a_msg;
    size_t a_len;
    int a_fd;
    mailpool_result *a_result;
    char *a_chunk; /* a copy of the chunk given to mailpool_stream_write_async() */
    size_t a_chunk_len;
    mailpool_status write_st; /* failure of an asynchronous chunk write, for the next call */
};

static long long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void emit(mailpool *mp, mailpool_event_info *ev)
{
    if (mp->cb == NULL)
        return;
    ev->size = sizeof *ev;
    mp->cb(mp, ev, mp->cb_arg);
}

static void emit_simple(mailpool *mp, mailpool_event event, mailpool_status st, size_t bytes)
{
    mailpool_event_info ev = {.event = event, .status = st, .bytes = bytes};

    emit(mp, &ev);
}

static void emit_command(mailpool *mp, const char *cmd, size_t idx, const mailpool_reply *r)
{
    mailpool_event_info ev = {
        .event = MAILPOOL_EV_COMMAND, .command = cmd, .reply = r, .rcpt_index = idx};

    emit(mp, &ev);
}

static void drain(int fd)
{
    uint64_t v;

    while (read(fd, &v, sizeof v) > 0)
        ;
}

/* Register the socket in the epoll set for `events`, or take it out (0). */
static void ep_watch(mailpool *mp, uint32_t events)
{
    struct epoll_event ee = {.events = events, .data.fd = mp->fd};

    if (mp->ep_sock >= 0 && (events == 0 || mp->ep_sock != mp->fd)) {
        (void)epoll_ctl(mp->epfd, EPOLL_CTL_DEL, mp->ep_sock, NULL);
        mp->ep_sock = -1;
    }
    if (events == 0 || mp->fd < 0)
        return;
    if (mp->ep_sock == mp->fd) {
        (void)epoll_ctl(mp->epfd, EPOLL_CTL_MOD, mp->fd, &ee);
    } else if (epoll_ctl(mp->epfd, EPOLL_CTL_ADD, mp->fd, &ee) == 0) {
        mp->ep_sock = mp->fd;
    }
}

/*
 * Wait until the socket is ready for `events`, the deadline passes, or a
 * cancel arrives.  Inside an asynchronous operation this yields to the
 * caller's event loop instead of sleeping.
 */
static mailpool_status wait_fd(mailpool *mp, short events, long long deadline)
{
    for (;;) {
        long long left;

        if (mp->cancel)
            return MAILPOOL_ERR_CANCELLED;
        left = deadline - now_ms();
        if (left <= 0) {
            emit_simple(mp, MAILPOOL_EV_TIMEOUT, MAILPOOL_ERR_TIMEOUT, 0);
            return MAILPOOL_ERR_TIMEOUT;
        }
        if (mp->in_co) {
            struct itimerspec its = {{0, 0}, {0, 0}};

            its.it_value.tv_sec = deadline / 1000;
            its.it_value.tv_nsec = (deadline % 1000) * 1000000;
            (void)timerfd_settime(mp->tfd, TFD_TIMER_ABSTIME, &its, NULL);
            ep_watch(mp, (events & POLLIN ? EPOLLIN : 0) | (events & POLLOUT ? EPOLLOUT : 0));
            swapcontext(&mp->co_self, &mp->co_caller);
            drain(mp->tfd);
            /* Woken for any reason: the caller retries its recv/send and comes back if needed. */
            if (mp->cancel)
                return MAILPOOL_ERR_CANCELLED;
            if (deadline - now_ms() > 0)
                return MAILPOOL_OK;
            continue;
        } else {
            struct pollfd pfd[2] = {{.fd = mp->fd, .events = events},
                                    {.fd = mp->evfd, .events = POLLIN}};
            int n = poll(pfd, 2, left > INT_MAX ? INT_MAX : (int)left);

            if (n > 0 && pfd[0].revents)
                return MAILPOOL_OK; /* errors and hangups show up in the next recv/send */
            if (n >= 0 || errno == EINTR)
                continue; /* a cancel or the deadline is checked at the top */
            return MAILPOOL_ERR_IO;
        }
    }
}

/* Close the socket (keeping errno) and tell the callback. */
static void drop_conn(mailpool *mp, mailpool_status why)
{
    if (mp->fd >= 0) {
        int saved = errno;

        ep_watch(mp, 0);
        close(mp->fd);
        mp->fd = -1;
        mp->inlen = 0;
        emit_simple(mp, MAILPOOL_EV_DISCONNECT, why, 0);
        errno = saved;
    }
}

/*
 * The connection can no longer be trusted: drop it, later calls get STATE.
 * A cancel is not a failure: the handle reconnects on its next use.
 */
static mailpool_status fail(mailpool *mp, mailpool_status st)
{
    if (st == MAILPOOL_ERR_CANCELLED && !mp->broken)
        mp->reconnect = 1;
    else
        mp->broken = 1;
    drop_conn(mp, st);
    return st;
}

/* Write all of buf; the timeout applies to each wait, so a slow but moving peer is fine. */
static mailpool_status write_all(mailpool *mp, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n;

        if (mp->cancel)
            return MAILPOOL_ERR_CANCELLED;
        n = send(mp->fd, buf, len, MSG_NOSIGNAL);
        if (n > 0) {
            buf += n;
            len -= (size_t)n;
            emit_simple(mp, MAILPOOL_EV_WRITE, MAILPOOL_OK, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            mailpool_status st = wait_fd(mp, POLLOUT, now_ms() + mp->timeout_ms);

            if (st != MAILPOOL_OK)
                return st;
            continue;
        }
        return MAILPOOL_ERR_IO;
    }
    return MAILPOOL_OK;
}

/*
 * The next input line (without CR LF) at mp->in; *consumed is what to drop
 * afterwards.  A line longer than the protocol allows is an error, never cut.
 */
static mailpool_status get_line(mailpool *mp, long long deadline, size_t *linelen, size_t *consumed)
{
    for (;;) {
        char *nl = memchr(mp->in, '\n', mp->inlen);
        ssize_t n;
        mailpool_status st;

        if (nl != NULL) {
            size_t len = (size_t)(nl - mp->in);

            *consumed = len + 1;
            if (len > 0 && mp->in[len - 1] == '\r')
                len--;
            if (len > MAILPOOL_MAX_REPLY_LINE)
                return MAILPOOL_ERR_PROTOCOL;
            *linelen = len;
            return MAILPOOL_OK;
        }
        if (mp->inlen > MAILPOOL_MAX_REPLY_LINE + 1)
            return MAILPOOL_ERR_PROTOCOL;
        if (mp->cancel)
            return MAILPOOL_ERR_CANCELLED;
        n = recv(mp->fd, mp->in + mp->inlen, INBUF_SIZE - mp->inlen, 0);
        if (n > 0) {
            mp->inlen += (size_t)n;
            emit_simple(mp, MAILPOOL_EV_READ, MAILPOOL_OK, (size_t)n);
            continue;
        }
        if (n == 0)
            return MAILPOOL_ERR_IO;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return MAILPOOL_ERR_IO;
        st = wait_fd(mp, POLLIN, deadline);
        if (st != MAILPOOL_OK)
            return st;
    }
}

static void consume(mailpool *mp, size_t n)
{
    memmove(mp->in, mp->in + n, mp->inlen - n);
    mp->inlen -= n;
}

/* Length of an RFC 3463 code ("5.1.1") at the start of s whose class matches, or 0. */
static size_t ecode_len(const char *s, size_t len, int cls)
{
    size_t i = 0;
    int part;

    if (len < 5 || s[0] != '0' + cls || s[1] != '.')
        return 0;
    i = 2;
    for (part = 0; part < 2; part++) {
        size_t start = i;

        while (i < len && s[i] >= '0' && s[i] <= '9' && i - start < 4)
            i++;
        if (i == start || i - start > 3)
            return 0;
        if (part == 0) {
            if (i >= len || s[i] != '.')
                return 0;
            i++;
        }
    }
    if (i < len && s[i] != ' ')
        return 0;
    return i;
}

/* Drop an incomplete UTF-8 sequence left at the end by truncation. */
static size_t utf8_trim(const char *s, size_t len)
{
    size_t i = len, need;
    unsigned char c;

    while (i > 0 && len - i < 4 && ((unsigned char)s[i - 1] & 0xC0) == 0x80)
        i--;
    if (i == 0)
        return len;
    c = (unsigned char)s[i - 1];
    if (c < 0x80)
        return len;
    need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    return len - (i - 1) >= need ? len : i - 1;
}

/* Note one capability line of the LHLO reply (keyword, then parameters). */
static void caps_line(mailpool *mp, const char *s, size_t len)
{
    static const struct {
        const char *kw;
        unsigned bit;
    } known[] = {
        {"PIPELINING", CAP_PIPELINING},
        {"8BITMIME", CAP_8BITMIME},
        {"SMTPUTF8", CAP_SMTPUTF8},
        {"SIZE", CAP_SIZE},
        {"ENHANCEDSTATUSCODES", CAP_ENHANCED},
        {MAILPOOL_PARAM_RELAY, CAP_XRELAY},
        {MAILPOOL_PARAM_MODE, CAP_XMODE},
    };
    size_t kwlen = 0, i;

    while (kwlen < len && s[kwlen] != ' ' && s[kwlen] != '=')
        kwlen++;
    for (i = 0; i < sizeof known / sizeof known[0]; i++) {
        if (strlen(known[i].kw) == kwlen && strncasecmp(s, known[i].kw, kwlen) == 0)
            mp->caps |= known[i].bit;
    }
    if (kwlen == 4 && strncasecmp(s, "SIZE", 4) == 0 && kwlen < len) {
        unsigned long long v = 0;

        for (i = kwlen + 1; i < len && s[i] >= '0' && s[i] <= '9'; i++) {
            if (v > (ULLONG_MAX - 9) / 10)
                break;
            v = v * 10 + (unsigned)(s[i] - '0');
        }
        mp->size_limit = v;
    }
}

/*
 * Read one complete reply (all its lines) into *out and mp->last.  With
 * want_caps, lines after the first are taken as LHLO capabilities.
 * Transport and protocol errors break the handle.
 */
static mailpool_status read_reply(mailpool *mp, mailpool_reply *out, int want_caps)
{
    long long deadline = now_ms() + mp->timeout_ms;
    size_t nlines = 0, tlen = 0;
    int code = 0, truncated = 0;

    memset(out, 0, sizeof *out);
    if (want_caps) {
        mp->caps = 0;
        mp->size_limit = 0;
    }
    for (;;) {
        size_t len, used, elen, i;
        const char *line, *text;
        char sep;
        int c;
        mailpool_status st = get_line(mp, deadline, &len, &used);

        if (st != MAILPOOL_OK)
            return fail(mp, st);
        line = mp->in;
        if (len < 3 || line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '5' ||
            line[2] < '0' || line[2] > '9')
            return fail(mp, MAILPOOL_ERR_PROTOCOL);
        c = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
        sep = len > 3 ? line[3] : ' ';
        if ((sep != ' ' && sep != '-') || (nlines > 0 && c != code) ||
            ++nlines > MAILPOOL_MAX_REPLY_LINES)
            return fail(mp, MAILPOOL_ERR_PROTOCOL);
        code = c;
        text = len > 4 ? line + 4 : "";
        len = len > 4 ? len - 4 : 0;
        elen = ecode_len(text, len, code / 100);
        if (elen > 0) {
            if (nlines == 1)
                memcpy(out->ecode, text, elen); /* elen <= 11 */
            text += elen;
            len -= elen;
            while (len > 0 && *text == ' ') {
                text++;
                len--;
            }
        }
        if (want_caps && nlines > 1)
            caps_line(mp, text, len);
        if (nlines > 1 && tlen + 1 < sizeof out->text)
            out->text[tlen++] = '\n';
        for (i = 0; i < len; i++) {
            unsigned char ch = (unsigned char)text[i];

            if (tlen + 1 >= sizeof out->text) {
                truncated = 1;
                break;
            }
            out->text[tlen++] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
        }
        consume(mp, used);
        if (sep == ' ')
            break;
    }
    if (truncated)
        tlen = utf8_trim(out->text, tlen);
    out->text[tlen] = '\0';
    out->code = code;
    mp->last = *out;
    return MAILPOOL_OK;
}

static mailpool_status check_owner(const mailpool *mp)
{
    if (mp == NULL)
        return MAILPOOL_ERR_ARGS;
    if (!(mp->options & MAILPOOL_OPT_FREETHREAD) && !pthread_equal(mp->owner, pthread_self()))
        return MAILPOOL_ERR_THREAD;
    return MAILPOOL_OK;
}

static mailpool_status connect_unix(mailpool *mp, const char *path)
{
    struct sockaddr_un sa;
    long long deadline = now_ms() + mp->timeout_ms;
    size_t plen = strlen(path);

    if (plen == 0 || plen >= sizeof sa.sun_path)
        return MAILPOOL_ERR_ARGS;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, plen + 1);
    mp->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (mp->fd < 0)
        return errno == ENOMEM || errno == ENOBUFS ? MAILPOOL_ERR_NOMEM : MAILPOOL_ERR_CONNECT;
    for (;;) {
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        mailpool_status st;

        if (connect(mp->fd, (struct sockaddr *)&sa, sizeof sa) == 0)
            return MAILPOOL_OK;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN) {
            /* A Unix socket with a full backlog: nothing is in progress, retry shortly. */
            if (now_ms() >= deadline)
                return MAILPOOL_ERR_TIMEOUT;
            if (mp->cancel)
                return MAILPOOL_ERR_CANCELLED;
            poll(NULL, 0, 10);
            continue;
        }
        if (errno != EINPROGRESS)
            return MAILPOOL_ERR_CONNECT;
        st = wait_fd(mp, POLLOUT, deadline);
        if (st != MAILPOOL_OK)
            return st;
        if (getsockopt(mp->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
            return MAILPOOL_ERR_CONNECT;
        if (soerr != 0) {
            errno = soerr;
            return MAILPOOL_ERR_CONNECT;
        }
        return MAILPOOL_OK;
    }
}

/* Our name for LHLO: the host name when it is a plain DNS name, else a safe stand-in. */
static void lhlo_name(char *name, size_t size)
{
    size_t i;

    if (gethostname(name, size) != 0 || memchr(name, '\0', size) == NULL || name[0] == '\0')
        goto fallback;
    for (i = 0; name[i] != '\0'; i++) {
        char c = name[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.' || c == '_'))
            goto fallback;
    }
    return;
fallback:
    snprintf(name, size, "localhost");
}

static mailpool_status status_of_code(int code)
{
    if (code >= 200 && code < 300)
        return MAILPOOL_OK;
    if (code >= 400 && code < 500)
        return MAILPOOL_ERR_TEMPORARY;
    if (code >= 500 && code < 600)
        return MAILPOOL_ERR_PERMANENT;
    return MAILPOOL_ERR_PROTOCOL;
}

static mailpool_status handshake(mailpool *mp)
{
    char host[256 + 1];
    char cmd[sizeof host + 16];
    mailpool_reply r;
    mailpool_status st;
    int n;

    st = read_reply(mp, &r, 0);
    if (st == MAILPOOL_ERR_IO) {
        /* Closed before greeting: most likely the daemon refused us (limits, peer check). */
        errno = ECONNRESET;
        return MAILPOOL_ERR_CONNECT;
    }
    if (st != MAILPOOL_OK)
        return st;
    if (r.code != 220)
        return r.code >= 400 ? status_of_code(r.code) : MAILPOOL_ERR_PROTOCOL;
    lhlo_name(host, sizeof host);
    n = snprintf(cmd, sizeof cmd, "LHLO %s\r\n", host);
    st = write_all(mp, cmd, (size_t)n);
    if (st != MAILPOOL_OK)
        return fail(mp, st);
    st = read_reply(mp, &r, 1);
    if (st != MAILPOOL_OK)
        return st;
    emit_command(mp, "LHLO", 0, &r);
    if (r.code == 250) {
        mailpool_event_info ev = {.event = MAILPOOL_EV_CONNECT, .reply = &r};

        emit(mp, &ev);
        return MAILPOOL_OK;
    }
    /* A 5xx here means the peer does not speak LMTP at all. */
    return r.code >= 400 && r.code < 500 ? MAILPOOL_ERR_TEMPORARY : MAILPOOL_ERR_PROTOCOL;
}

/* Connect and greet; on failure the socket is closed again (errno kept). */
static mailpool_status do_connect(mailpool *mp)
{
    mailpool_status st = connect_unix(mp, mp->path);

    if (st == MAILPOOL_OK)
        st = handshake(mp);
    if (st != MAILPOOL_OK && mp->fd >= 0) {
        int saved = errno;

        ep_watch(mp, 0);
        close(mp->fd);
        mp->fd = -1;
        mp->inlen = 0;
        errno = saved;
    }
    return st;
}

/*
 * May the caller use mp now?  Starts a new operation: drops a stale cancel
 * and reconnects a handle that was closed on purpose.
 */
static mailpool_status check_use(mailpool *mp)
{
    mailpool_status st = check_owner(mp);

    if (st != MAILPOOL_OK)
        return st;
    if (mp->op != OP_NONE && !mp->in_co)
        return MAILPOOL_ERR_STATE;
    if (!mp->in_co) {
        atomic_store(&mp->cancel, 0);
        drain(mp->evfd);
    }
    if (mp->broken)
        return MAILPOOL_ERR_STATE;
    if (mp->fd < 0 && mp->reconnect) {
        st = do_connect(mp);
        if (st != MAILPOOL_OK)
            return st == MAILPOOL_ERR_CANCELLED ? st : MAILPOOL_ERR_CONNECT;
        mp->reconnect = 0;
    }
    return mp->fd < 0 ? MAILPOOL_ERR_STATE : MAILPOOL_OK;
}

static void handle_free(mailpool *mp)
{
    if (mp->fd >= 0)
        close(mp->fd);
    if (mp->evfd >= 0)
        close(mp->evfd);
    if (mp->tfd >= 0)
        close(mp->tfd);
    if (mp->epfd >= 0)
        close(mp->epfd);
    free(mp->co_stack);
    free(mp->a_chunk);
    free(mp->path);
    free(mp->in);
    free(mp);
}

/* A handle with its descriptors, not yet connected. */
static mailpool_status handle_new(const char *socket_path, unsigned timeout_ms, unsigned options,
                                  mailpool **out)
{
    mailpool *mp;
    struct epoll_event ee = {.events = EPOLLIN};

    if (out == NULL)
        return MAILPOOL_ERR_ARGS;
    *out = NULL;
    if (options & ~MAILPOOL_OPT_FREETHREAD)
        return MAILPOOL_ERR_ARGS;
    if (socket_path == NULL) {
        socket_path = getenv(MAILPOOL_SOCKET_ENV);
        if (socket_path == NULL || socket_path[0] == '\0')
            socket_path = MAILPOOL_DEFAULT_SUBMIT_SOCKET;
    }
    mp = calloc(1, sizeof *mp);
    if (mp == NULL)
        return MAILPOOL_ERR_NOMEM;
    mp->fd = mp->ep_sock = -1;
    mp->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    mp->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    mp->epfd = epoll_create1(EPOLL_CLOEXEC);
    mp->in = malloc(INBUF_SIZE);
    mp->path = strdup(socket_path);
    if (mp->in == NULL || mp->path == NULL || mp->evfd < 0 || mp->tfd < 0 || mp->epfd < 0) {
        handle_free(mp);
        return MAILPOOL_ERR_NOMEM;
    }
    ee.data.fd = mp->evfd;
    (void)epoll_ctl(mp->epfd, EPOLL_CTL_ADD, mp->evfd, &ee);
    ee.data.fd = mp->tfd;
    (void)epoll_ctl(mp->epfd, EPOLL_CTL_ADD, mp->tfd, &ee);
    mp->timeout_ms = timeout_ms ? timeout_ms : DEFAULT_TIMEOUT_MS;
    mp->options = options;
    mp->owner = pthread_self();
    *out = mp;
    return MAILPOOL_OK;
}

PUBLIC mailpool_status mailpool_open(const char *socket_path, unsigned timeout_ms, unsigned options,
                                     mailpool **out)
{
    mailpool *mp;
    mailpool_status st = handle_new(socket_path, timeout_ms, options, out);

    if (st != MAILPOOL_OK)
        return st;
    mp = *out;
    st = do_connect(mp);
    if (st != MAILPOOL_OK) {
        int saved = errno;

        *out = NULL;
        handle_free(mp);
        errno = saved; /* callers print why a CONNECT failed */
    }
    return st;
}

static void txn_clear(struct txn *t);

PUBLIC void mailpool_close(mailpool *mp)
{
    if (mp == NULL)
        return;
    if (mp->fd >= 0 && !mp->broken && mp->op == OP_NONE && mp->tx.phase != TX_DATA) {
        mailpool_reply r;

        /* Courtesy only: the reply (or its absence) changes nothing. */
        atomic_store(&mp->cancel, 0);
        if (write_all(mp, "QUIT\r\n", 6) == MAILPOOL_OK && read_reply(mp, &r, 0) == MAILPOOL_OK)
            emit_command(mp, "QUIT", 0, &r);
    }
    drop_conn(mp, MAILPOOL_OK);
    txn_clear(&mp->tx);
    handle_free(mp);
}

/*
 * Is addr a usable path for MAIL/RCPT?  Printable ASCII or valid UTF-8, no
 * spaces outside a quoted local part, RFC 5321 length limits.
 */
static int addr_valid(const char *addr, int *nonascii)
{
    size_t len = strnlen(addr, MAILPOOL_MAX_PATH + 1), i = 0, at, local_len;
    const unsigned char *s = (const unsigned char *)addr;

    if (len > MAILPOOL_MAX_PATH)
        return 0;
    for (i = 0; i < len;) {
        unsigned char c = s[i];
        size_t need, k;

        if (c < 0x20 || c == 0x7f)
            return 0;
        if (c < 0x80) {
            i++;
            continue;
        }
        *nonascii = 1;
        if (c >= 0xC2 && c <= 0xDF)
            need = 1;
        else if (c >= 0xE0 && c <= 0xEF)
            need = 2;
        else if (c >= 0xF0 && c <= 0xF4)
            need = 3;
        else
            return 0;
        if (i + need >= len)
            return 0;
        for (k = 1; k <= need; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
        }
        i += need + 1;
    }
    i = 0;
    if (len > 0 && s[0] == '"') {
        for (i = 1; i < len && s[i] != '"'; i++) {
            if (s[i] == '\\' && ++i >= len)
                return 0;
        }
        if (i >= len)
            return 0;
        i++;
        if (i < len && s[i] != '@')
            return 0;
    } else {
        for (; i < len && s[i] != '@'; i++) {
            if (strchr(" <>\"(),;:\\[]", s[i]) != NULL)
                return 0;
        }
    }
    at = i;
    local_len = at;
    if (local_len == 0 || local_len > MAILPOOL_MAX_LOCAL_PART)
        return 0;
    if (at == len)
        return 1; /* a bare local part, qualified by the daemon */
    if (len - at - 1 == 0 || len - at - 1 > MAILPOOL_MAX_DOMAIN)
        return 0;
    for (i = at + 1; i < len; i++) {
        if (strchr(" <>\"(),;@\\", s[i]) != NULL)
            return 0;
    }
    return 1;
}

/* An ESMTP xtext-safe parameter value (RFC 3461 section 4). */
static int param_valid(const char *v, size_t max)
{
    size_t i, len = strnlen(v, max + 1);

    if (len == 0 || len > max)
        return 0;
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)v[i];

        if (c < 33 || c > 126 || c == '+' || c == '=')
            return 0;
    }
    return 1;
}

/*
 * Turn message text into what goes on the wire: CRLF lines, dot-stuffed.
 * With out NULL it only measures; otherwise it appends to out (room for
 * 2 * len + 2 bytes is the caller's business).  The state carries a CR at
 * the end of one chunk over to the next, so "\r" + "\n" stays one line end.
 */
static size_t enc_feed(struct enc *e, const unsigned char *m, size_t len, char *out)
{
    size_t i, o = 0;

#define PUT(c)                                                                                     \
    do {                                                                                           \
        if (out != NULL)                                                                           \
            out[o] = (char)(c);                                                                    \
        o++;                                                                                       \
    } while (0)
    for (i = 0; i < len; i++) {
        unsigned char c = m[i];

        if (c == '\r' || c == '\n') {
            if (c == '\n' || e->pending_cr) {
                PUT('\r');
                PUT('\n');
                e->total += 2;
            }
            e->pending_cr = c == '\r';
            if (c == '\n')
                e->pending_cr = 0;
            e->line_start = 1;
            continue;
        }
        if (e->pending_cr) {
            PUT('\r');
            PUT('\n');
            e->total += 2;
            e->pending_cr = 0;
        }
        if (c >= 0x80)
            e->eightbit = 1;
        if (e->line_start && c == '.')
            PUT('.');
        PUT(c);
        e->total++;
        e->line_start = 0;
    }
#undef PUT
    e->wire += o;
    return o;
}

/* The end of the message: a last line end if missing, then the terminating dot line. */
static size_t enc_end(struct enc *e, char *out)
{
    size_t o = 0;

    if (e->pending_cr || !e->line_start) {
        out[o++] = '\r';
        out[o++] = '\n';
        e->total += 2;
    }
    out[o++] = '.';
    out[o++] = '\r';
    out[o++] = '\n';
    e->wire += o;
    return o;
}

static int is_2xx(int code)
{
    return code >= 200 && code < 300;
}

/* Overall status from the per-recipient replies (all of them known). */
static mailpool_status summarise(const mailpool_reply *r, size_t n)
{
    size_t i, ok = 0, temp = 0;

    for (i = 0; i < n; i++) {
        if (is_2xx(r[i].code))
            ok++;
        else if (r[i].code >= 400 && r[i].code < 500)
            temp++;
    }
    if (ok == n)
        return MAILPOOL_OK;
    if (ok > 0)
        return MAILPOOL_ERR_PARTIAL;
    return temp > 0 ? MAILPOOL_ERR_TEMPORARY : MAILPOOL_ERR_PERMANENT;
}

/* RFC 3461 4.1: "NEVER" alone, or SUCCESS, FAILURE and DELAY, each at most once. */
static int notify_valid(const char *v)
{
    static const char *const words[] = {"SUCCESS", "FAILURE", "DELAY"};
    unsigned seen = 0;
    const char *p = v;

    if (strcasecmp(v, "NEVER") == 0)
        return 1;
    for (;;) {
        size_t n = strcspn(p, ","), i;

        for (i = 0; i < 3; i++) {
            if (strlen(words[i]) == n && strncasecmp(p, words[i], n) == 0)
                break;
        }
        if (i == 3 || (seen & (1u << i)))
            return 0;
        seen |= 1u << i;
        if (p[n] == '\0')
            return 1;
        p += n + 1;
    }
}

static int uhex(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}
static int buf_add(struct buf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        char *p;

        while (cap < b->len + n + 1)
            cap *= 2;
        p = realloc(b->p, cap);
        if (p == NULL)
            return -1;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

static int buf_str(struct buf *b, const char *s)
{
    return buf_add(b, s, strlen(s));
}

/*
 * RFC 3461 section 4 xtext, at most max bytes: printable ASCII except '+'
 * and '=', and "+XX" (upper-case hex) for the rest.  What "+XX" stands for
 * must be printable ASCII too, as the daemon requires: the value ends up in
 * a header field of a delivery report.
 */
static int xtext_valid(const char *v, size_t max)
{
    size_t i, len = strnlen(v, max + 1);

    if (len == 0 || len > max)
        return 0;
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)v[i];

        if (c == '+') {
            int hi, lo;

            if (len - i < 3 || (hi = uhex(v[i + 1])) < 0 || (lo = uhex(v[i + 2])) < 0)
                return 0;
            if (hi * 16 + lo < 0x20 || hi * 16 + lo > 0x7e)
                return 0;
            i += 2;
        } else if (c < 33 || c > 126 || c == '=') {
            return 0;
        }
    }
    return 1;
}

/* RFC 3461 4.2: addr-type ";" xtext, e.g. "rfc822;user+40example.org". */
static int orcpt_valid(const char *v)
{
    size_t i = 0, len = strnlen(v, MAX_ORCPT + 1);

    if (len > MAX_ORCPT)
        return 0;
    while (i < len && ((v[i] >= 'a' && v[i] <= 'z') || (v[i] >= 'A' && v[i] <= 'Z') ||
                       (v[i] >= '0' && v[i] <= '9') || v[i] == '-'))
        i++;
    if (i == 0 || i >= len || v[i] != ';')
        return 0;
    return xtext_valid(v + i + 1, MAX_ORCPT);
}

static void strv_free(char **v, size_t n)
{
    size_t i;

    if (v == NULL)
        return;
    for (i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static void txn_clear(struct txn *t)
{
    free(t->sender);
    free(t->relay);
    free(t->mode);
    free(t->ret);
    free(t->envid);
    free(t->notify);
    strv_free(t->rcpt, t->n);
    strv_free(t->rnotify, t->n);
    strv_free(t->orcpt, t->n);
    free(t->replies);
    free(t->state);
    free(t->chunk);
    memset(t, 0, sizeof *t);
}

/* strdup that keeps NULL; *err set on failure. */
static char *dup_opt(const char *s, int *err)
{
    char *d;

    if (s == NULL)
        return NULL;
    d = strdup(s);
    if (d == NULL)
        *err = 1;
    return d;
}

/* One more recipient: checked, copied, with room for its reply. */
static mailpool_status txn_add(struct txn *t, const char *addr, const char *notify,
                               const char *orcpt)
{
    int err = 0;

    if (addr == NULL || addr[0] == '\0' || !addr_valid(addr, &t->utf8) ||
        (notify != NULL && !notify_valid(notify)) || (orcpt != NULL && !orcpt_valid(orcpt)) ||
        t->n >= MAILPOOL_MAX_RECIPIENTS)
        return MAILPOOL_ERR_ARGS;
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 8;
        char **a = realloc(t->rcpt, cap * sizeof *a);
        char **b, **c;
        mailpool_reply *r;
        unsigned char *s;

        if (a == NULL)
            return MAILPOOL_ERR_NOMEM;
        t->rcpt = a;
        b = realloc(t->rnotify, cap * sizeof *b);
        if (b == NULL)
            return MAILPOOL_ERR_NOMEM;
        t->rnotify = b;
        c = realloc(t->orcpt, cap * sizeof *c);
        if (c == NULL)
            return MAILPOOL_ERR_NOMEM;
        t->orcpt = c;
        r = realloc(t->replies, cap * sizeof *r);
        if (r == NULL)
            return MAILPOOL_ERR_NOMEM;
        t->replies = r;
        s = realloc(t->state, cap);
        if (s == NULL)
            return MAILPOOL_ERR_NOMEM;
        t->state = s;
        t->cap = cap;
    }
    t->rcpt[t->n] = dup_opt(addr, &err);
    t->rnotify[t->n] = dup_opt(notify != NULL ? notify : t->notify, &err);
    t->orcpt[t->n] = dup_opt(orcpt, &err);
    memset(&t->replies[t->n], 0, sizeof t->replies[t->n]);
    t->state[t->n] = RCPT_PENDING;
    t->n++;
    return err ? MAILPOOL_ERR_NOMEM : MAILPOOL_OK;
}

/*
 * Check env and copy it into mp->tx.  v2: the caller was built against
 * 0.2, so orcpts and flags exist.  need_rcpt: an empty list is an error.
 */
static mailpool_status txn_setup(mailpool *mp, const mailpool_envelope *env, int v2, int need_rcpt)
{
    struct txn *t = &mp->tx;
    mailpool_status st = MAILPOOL_OK;
    int err = 0;
    size_t i;

    if (env == NULL || env->sender == NULL || (env->recipients == NULL && env->nrecipients > 0) ||
        (need_rcpt && env->nrecipients == 0) || env->nrecipients > MAILPOOL_MAX_RECIPIENTS)
        return MAILPOOL_ERR_ARGS;
    const char *const *orcpts = v2 ? env->orcpts : NULL;
    txn_clear(t);
    if (env->sender[0] != '\0' && !addr_valid(env->sender, &t->utf8))
        return MAILPOOL_ERR_ARGS;
    if ((env->relay != NULL && !param_valid(env->relay, MAILPOOL_MAX_RELAY_NAME)) ||
        (env->mode != NULL && strcmp(env->mode, MAILPOOL_MODE_RELAY) != 0 &&
         strcmp(env->mode, MAILPOOL_MODE_QUEUE) != 0) ||
        (env->notify != NULL && !notify_valid(env->notify)) ||
        (env->ret != NULL && strcasecmp(env->ret, "FULL") != 0 &&
         strcasecmp(env->ret, "HDRS") != 0) ||
        (env->envid != NULL && !xtext_valid(env->envid, MAILPOOL_MAX_ENVID)) ||
        (v2 && (env->flags & ~(MAILPOOL_ENV_8BITMIME | MAILPOOL_ENV_SMTPUTF8))))
        return MAILPOOL_ERR_ARGS;
    t->sender = dup_opt(env->sender, &err);
    t->relay = dup_opt(env->relay, &err);
    t->mode = dup_opt(env->mode, &err);
    t->ret = dup_opt(env->ret, &err);
    t->envid = dup_opt(env->envid, &err);
    t->notify = dup_opt(env->notify, &err);
    t->flags = v2 ? env->flags : 0;
    t->chunk = malloc(BODY_CHUNK);
    if (err || t->chunk == NULL)
        st = MAILPOOL_ERR_NOMEM;
    for (i = 0; st == MAILPOOL_OK && i < env->nrecipients; i++)
        st = txn_add(t, env->recipients[i], NULL, orcpts != NULL ? orcpts[i] : NULL);
    if (st != MAILPOOL_OK) {
        txn_clear(t);
        return st;
    }
    t->enc.line_start = 1;
    t->phase = TX_BEGUN;
    return MAILPOOL_OK;
}

static int build_mail(struct buf *b, const mailpool *mp, const struct txn *t)
{
    char num[32];

    if (buf_str(b, "MAIL FROM:<") || buf_str(b, t->sender) || buf_str(b, ">"))
        return -1;
    if ((t->eightbit || (t->flags & MAILPOOL_ENV_8BITMIME)) && (mp->caps & CAP_8BITMIME) &&
        buf_str(b, " BODY=8BITMIME"))
        return -1;
    if ((t->utf8 || (t->flags & MAILPOOL_ENV_SMTPUTF8)) && buf_str(b, " SMTPUTF8"))
        return -1;
    if ((mp->caps & CAP_SIZE) && t->size_known) {
        snprintf(num, sizeof num, " SIZE=%llu", t->size_hint);
        if (buf_str(b, num))
            return -1;
    }
    if (t->relay != NULL && (buf_str(b, " " MAILPOOL_PARAM_RELAY "=") || buf_str(b, t->relay)))
        return -1;
    if (t->mode != NULL && (buf_str(b, " " MAILPOOL_PARAM_MODE "=") || buf_str(b, t->mode)))
        return -1;
    if (t->ret != NULL && (buf_str(b, " RET=") || buf_str(b, t->ret)))
        return -1;
    if (t->envid != NULL && (buf_str(b, " ENVID=") || buf_str(b, t->envid)))
        return -1;
    return buf_str(b, "\r\n");
}

static int build_rcpt(struct buf *b, const struct txn *t, size_t i)
{
    if (buf_str(b, "RCPT TO:<") || buf_str(b, t->rcpt[i]) || buf_str(b, ">"))
        return -1;
    if (t->rnotify[i] != NULL && (buf_str(b, " NOTIFY=") || buf_str(b, t->rnotify[i])))
        return -1;
    if (t->orcpt[i] != NULL && (buf_str(b, " ORCPT=") || buf_str(b, t->orcpt[i])))
        return -1;
    return buf_str(b, "\r\n");
}

/* Read a reply; a 421 means the daemon is going away, which later steps must respect. */
static mailpool_status txn_reply(mailpool *mp, mailpool_reply *r, const char *cmd, size_t idx)
{
    mailpool_status st = read_reply(mp, r, 0);

    if (st == MAILPOOL_OK) {
        emit_command(mp, cmd, idx, r);
        if (r->code == 421)
            mp->tx.gone = 1;
    }
    return st;
}

/* Every recipient without a final outcome gets r. */
static void txn_settle(struct txn *t, const mailpool_reply *r)
{
    size_t i;

    for (i = 0; i < t->n; i++) {
        if (t->state[i] != RCPT_FINAL) {
            t->replies[i] = *r;
            t->state[i] = RCPT_FINAL;
        }
    }
    t->phase = TX_SETTLED;
}

/* Transport failure (or cancel): unknown outcomes carry code 0, known ones keep their reply. */
static mailpool_status txn_broken(mailpool *mp, mailpool_status st)
{
    struct txn *t = &mp->tx;
    size_t i;

    for (i = 0; i < t->n; i++) {
        if (t->state[i] != RCPT_FINAL) {
            memset(&t->replies[i], 0, sizeof t->replies[i]);
            t->state[i] = RCPT_FINAL;
        }
    }
    if (st == MAILPOOL_ERR_CANCELLED)
        emit_simple(mp, MAILPOOL_EV_CANCEL, st, 0);
    fail(mp, st);
    t->st = st;
    t->phase = TX_SETTLED;
    return st;
}

/*
 * The envelope: MAIL, each RCPT and DATA (all at once when pipelining, else
 * one by one) and their replies.  Leaves the transaction in TX_DATA after
 * a 354 for at least one recipient, else TX_SETTLED.  Returns a transport
 * error or OK.
 */
static mailpool_status txn_envelope(mailpool *mp)
{
    struct txn *t = &mp->tx;
    int pipelined = (mp->caps & CAP_PIPELINING) != 0;
    mailpool_reply mail, r, data;
    mailpool_status st;
    struct buf b = {0};
    size_t i;

    if (build_mail(&b, mp, t) != 0)
        goto nomem;
    for (i = 0; pipelined && i < t->n; i++) {
        if (build_rcpt(&b, t, i) != 0)
            goto nomem;
    }
    if (pipelined && buf_str(&b, "DATA\r\n") != 0)
        goto nomem;
    st = write_all(mp, b.p, b.len);
    b.len = 0;
    if (st != MAILPOOL_OK)
        goto broken;
    st = txn_reply(mp, &mail, "MAIL", 0);
    if (st != MAILPOOL_OK)
        goto broken;
    if (!is_2xx(mail.code) && !pipelined) {
        free(b.p);
        txn_settle(t, &mail);
        return MAILPOOL_OK;
    }
    for (i = 0; i < t->n; i++) {
        if (!pipelined) {
            if (build_rcpt(&b, t, i))
                goto nomem;
            st = write_all(mp, b.p, b.len);
            b.len = 0;
            if (st != MAILPOOL_OK)
                goto broken;
        }
        if (t->gone)
            break; /* nothing more will come */
        st = txn_reply(mp, &r, "RCPT", i);
        if (st != MAILPOOL_OK)
            goto broken;
        if (!is_2xx(mail.code) || t->gone) {
            /* Refused MAIL: the RCPT replies are only the consequence. */
            t->replies[i] = t->gone ? r : mail;
            t->state[i] = RCPT_FINAL;
        } else if (is_2xx(r.code)) {
            t->replies[i] = r;
            t->state[i] = RCPT_ACCEPTED;
            t->naccepted++;
        } else {
            t->replies[i] = r;
            t->state[i] = RCPT_FINAL;
        }
    }
    free(b.p);
    b.p = NULL;
    if (t->gone) {
        txn_settle(t, &mp->last);
        return MAILPOOL_OK;
    }
    if (!pipelined) {
        if (t->naccepted == 0) {
            t->phase = TX_SETTLED;
            return MAILPOOL_OK;
        }
        st = write_all(mp, "DATA\r\n", 6);
        if (st != MAILPOOL_OK)
            goto broken;
    }
    if (!is_2xx(mail.code) && pipelined)
        txn_settle(t, &mail);
    st = txn_reply(mp, &data, "DATA", 0);
    if (st != MAILPOOL_OK)
        goto broken;
    if (data.code == 354 && t->naccepted == 0) {
        /* RFC 2920: a server that accepts DATA with no recipients gets an empty message. */
        st = write_all(mp, ".\r\n", 3);
        if (st == MAILPOOL_OK)
            st = txn_reply(mp, &r, ".", 0);
        if (st != MAILPOOL_OK)
            goto broken;
        t->phase = TX_SETTLED;
    } else if (data.code == 354) {
        t->phase = TX_DATA;
    } else if (data.code >= 400) {
        txn_settle(t, &data); /* DATA refused: every accepted recipient shares the reply */
    } else if (data.code != 0) {
        st = MAILPOOL_ERR_PROTOCOL; /* DATA can only be 354 or refused */
        goto broken;
    } else {
        t->phase = TX_SETTLED;
    }
    return MAILPOOL_OK;
nomem:
    st = MAILPOOL_ERR_NOMEM;
broken:
    free(b.p);
    return txn_broken(mp, st);
}

/*
 * A body write failed.  The daemon may have refused and hung up mid-data
 * (552): use its reply if it left one.
 */
static mailpool_status txn_body_failed(mailpool *mp, mailpool_status st)
{
    mailpool_reply r;

    if (st == MAILPOOL_ERR_IO && mp->fd >= 0 && read_reply(mp, &r, 0) == MAILPOOL_OK &&
        r.code >= 400) {
        emit_command(mp, ".", 0, &r);
        txn_settle(&mp->tx, &r);
        fail(mp, MAILPOOL_ERR_IO);
        return MAILPOOL_OK;
    }
    return txn_broken(mp, st);
}

static mailpool_status txn_flush(mailpool *mp)
{
    struct txn *t = &mp->tx;
    mailpool_status st;
    mailpool_event_info ev = {.event = MAILPOOL_EV_PROGRESS};

    if (t->clen == 0)
        return MAILPOOL_OK;
    st = write_all(mp, t->chunk, t->clen);
    t->clen = 0;
    if (st != MAILPOOL_OK)
        return txn_body_failed(mp, st);
    ev.sent = t->enc.wire;
    ev.total = t->total > ev.sent ? t->total : 0;
    if (t->total == ev.sent)
        ev.total = ev.sent;
    emit(mp, &ev);
    return MAILPOOL_OK;
}

/* Message text in TX_DATA: encode into the chunk, write each full chunk. */
static mailpool_status txn_body(mailpool *mp, const void *buf, size_t len)
{
    struct txn *t = &mp->tx;
    const unsigned char *p = buf;

    while (len > 0 && t->phase == TX_DATA) {
        /* Every input byte becomes at most two output bytes. */
        size_t room = (BODY_CHUNK - t->clen) / 2, n = len < room ? len : room;

        if (n == 0) {
            mailpool_status st = txn_flush(mp);

            if (st != MAILPOOL_OK)
                return st;
            continue;
        }
        t->clen += enc_feed(&t->enc, p, n, t->chunk + t->clen);
        p += n;
        len -= n;
        if (t->clen > BODY_CHUNK / 2) {
            mailpool_status st = txn_flush(mp);

            if (st != MAILPOOL_OK)
                return st;
        }
    }
    return t->phase == TX_DATA ? MAILPOOL_OK : t->st;
}

/* After the data: the end-of-data line, then one reply per accepted recipient in RCPT order. */
static mailpool_status txn_data_end(mailpool *mp)
{
    struct txn *t = &mp->tx;
    mailpool_status st;
    mailpool_reply r;
    size_t i;

    if (t->clen + 5 > BODY_CHUNK && (st = txn_flush(mp)) != MAILPOOL_OK)
        return st;
    if (t->phase != TX_DATA)
        return t->st;
    t->clen += enc_end(&t->enc, t->chunk + t->clen);
    st = txn_flush(mp);
    if (st != MAILPOOL_OK || t->phase != TX_DATA)
        return st;
    for (i = 0; i < t->n; i++) {
        if (t->state[i] != RCPT_ACCEPTED)
            continue;
        st = txn_reply(mp, &r, ".", i);
        if (st != MAILPOOL_OK)
            return txn_broken(mp, st);
        if (t->gone) {
            txn_settle(t, &r);
            break;
        }
        t->replies[i] = r;
        t->state[i] = RCPT_FINAL;
    }
    t->clean = 1;
    t->phase = TX_SETTLED;
    return MAILPOOL_OK;
}

/*
 * Close the transaction: finish the data if it is open, RSET after a
 * refusal, and hand the per-recipient replies to *result.
 */
static mailpool_status txn_finish(mailpool *mp, mailpool_result *result)
{
    struct txn *t = &mp->tx;
    mailpool_status st = MAILPOOL_OK;
    size_t i;

    if (t->phase == TX_BEGUN)
        st = txn_envelope(mp);
    if (st == MAILPOOL_OK && t->phase == TX_DATA)
        st = txn_data_end(mp);
    if (t->st != MAILPOOL_OK)
        st = t->st;
    if (st == MAILPOOL_OK && t->gone)
        fail(mp, MAILPOOL_ERR_IO);
    if (st == MAILPOOL_OK && !t->clean && !mp->broken && mp->fd >= 0) {
        /* Leave the session clean for the next message. */
        mailpool_reply r;
        mailpool_reply keep = mp->last;
        mailpool_status rs = write_all(mp, "RSET\r\n", 6);

        if (rs == MAILPOOL_OK)
            rs = txn_reply(mp, &r, "RSET", 0);
        if (rs == MAILPOOL_OK && !is_2xx(r.code))
            rs = MAILPOOL_ERR_PROTOCOL;
        if (rs != MAILPOOL_OK)
            fail(mp, rs);
        mp->last = keep; /* the caller wants the reply that decided the outcome */
    }
    if (st == MAILPOOL_OK) {
        for (i = 0; i < t->n; i++) {
            if (t->state[i] != RCPT_FINAL)
                txn_settle(t, &mp->last); /* a 421 cut the transaction short */
        }
        st = summarise(t->replies, t->n);
    }
    result->status = st;
    result->nrecipients = t->n;
    result->recipients = t->replies;
    if (t->n == 0) {
        free(t->replies);
        result->recipients = NULL;
    }
    t->replies = NULL;
    txn_clear(t);
    return st;
}

/* Connect again if a cancel closed the connection on purpose. */
static mailpool_status ensure_conn(mailpool *mp)
{
    mailpool_status st;

    if (mp->fd >= 0 || !mp->reconnect)
        return mp->fd >= 0 ? MAILPOOL_OK : MAILPOOL_ERR_STATE;
    st = do_connect(mp);
    if (st != MAILPOOL_OK)
        return st == MAILPOOL_ERR_CANCELLED ? st : MAILPOOL_ERR_CONNECT;
    mp->reconnect = 0;
    return MAILPOOL_OK;
}

/* A failed start: the transaction is dropped and every recipient carries code 0. */
static mailpool_status txn_fail_start(mailpool *mp, mailpool_result *result, mailpool_status st)
{
    if (st == MAILPOOL_ERR_CANCELLED)
        emit_simple(mp, MAILPOOL_EV_CANCEL, st, 0);
    txn_clear(&mp->tx);
    result->status = st;
    return st;
}

/* The whole send once the envelope is recorded: from a buffer (fd < 0) or a descriptor. */
static mailpool_status run_send(mailpool *mp, const void *msg, size_t len, int fd,
                                mailpool_result *result)
{
    struct txn *t = &mp->tx;
    mailpool_status st = ensure_conn(mp);

    if (st != MAILPOOL_OK)
        return txn_fail_start(mp, result, st);
    st = txn_envelope(mp);
    if (st == MAILPOOL_OK && t->phase == TX_DATA && fd < 0)
        (void)txn_body(mp, msg, len);
    if (st == MAILPOOL_OK && t->phase == TX_DATA && fd >= 0) {
        char *rbuf = malloc(BODY_CHUNK / 2);

        if (rbuf == NULL)
            (void)txn_broken(mp, MAILPOOL_ERR_NOMEM);
        while (rbuf != NULL && t->phase == TX_DATA) {
            ssize_t n = read(fd, rbuf, BODY_CHUNK / 2);

            if (n == 0)
                break;
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                struct pollfd pfd = {.fd = fd, .events = POLLIN};

                if (poll(&pfd, 1, (int)(mp->timeout_ms > INT_MAX ? INT_MAX : mp->timeout_ms)) > 0)
                    continue;
                errno = ETIMEDOUT;
            }
            if (n < 0) {
                /* The message is incomplete: hang up so the daemon drops it. */
                int saved = errno;

                (void)txn_broken(mp, MAILPOOL_ERR_IO);
                mp->broken = 0;
                mp->reconnect = 1;
                errno = saved;
                break;
            }
            (void)txn_body(mp, rbuf, (size_t)n);
        }
        free(rbuf);
    }
    return txn_finish(mp, result);
}

/* Measure a buffered message: SIZE=, 8BITMIME and the PROGRESS total. */
static void txn_measure(struct txn *t, const void *msg, size_t len)
{
    struct enc scan = {.line_start = 1};
    char tail[8];

    (void)enc_feed(&scan, msg, len, NULL);
    (void)enc_end(&scan, tail);
    t->size_hint = scan.total;
    t->size_known = 1;
    t->eightbit = scan.eightbit;
    t->total = scan.wire;
}

/* Measure a descriptor: a regular file's remaining size is a fair SIZE= estimate. */
static void txn_measure_fd(struct txn *t, int fd)
{
    struct stat sb;
    off_t pos;

    if (fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && (pos = lseek(fd, 0, SEEK_CUR)) >= 0 &&
        sb.st_size > pos) {
        t->size_hint = (unsigned long long)(sb.st_size - pos);
        t->size_known = 1;
        t->total = 0;
    }
}

static mailpool_status send_common(mailpool *mp, const mailpool_envelope *env, const void *message,
                                   size_t len, int v2, mailpool_result *result)
{
    mailpool_status st;

    if (result == NULL)
        return MAILPOOL_ERR_ARGS;
    memset(result, 0, sizeof *result);
    st = check_use(mp);
    if (st == MAILPOOL_OK && mp->tx.phase != TX_NONE)
        st = MAILPOOL_ERR_STATE;
    if (st == MAILPOOL_OK && message == NULL && len > 0)
        st = MAILPOOL_ERR_ARGS;
    if (st == MAILPOOL_OK)
        st = txn_setup(mp, env, v2, 1);
    if (st != MAILPOOL_OK)
        return result->status = st;
    txn_measure(&mp->tx, message, len);
    return run_send(mp, message, len, -1, result);
}

PUBLIC mailpool_status mailpool_send(mailpool *mp, const mailpool_envelope *env,
                                     const void *message, size_t len, mailpool_result *result)
{
    return send_common(mp, env, message, len, 0, result);
}

PUBLIC mailpool_status mailpool_send2(mailpool *mp, const mailpool_envelope *env,
                                      const void *message, size_t len, mailpool_result *result)
{
    return send_common(mp, env, message, len, 1, result);
}

PUBLIC mailpool_status mailpool_send_fd(mailpool *mp, const mailpool_envelope *env, int fd,
                                        mailpool_result *result)
{
    mailpool_status st;

    if (result == NULL)
        return MAILPOOL_ERR_ARGS;
    memset(result, 0, sizeof *result);
    st = check_use(mp);
    if (st == MAILPOOL_OK && mp->tx.phase != TX_NONE)
        st = MAILPOOL_ERR_STATE;
    if (st == MAILPOOL_OK && fd < 0)
        st = MAILPOOL_ERR_ARGS;
    if (st == MAILPOOL_OK)
        st = txn_setup(mp, env, 1, 1);
    if (st != MAILPOOL_OK)
        return result->status = st;
    txn_measure_fd(&mp->tx, fd);
    return run_send(mp, NULL, 0, fd, result);
}

PUBLIC mailpool_status mailpool_stream_begin(mailpool *mp, const mailpool_envelope *env)
{
    mailpool_status st = check_use(mp);

    if (st == MAILPOOL_OK && mp->tx.phase != TX_NONE)
        st = MAILPOOL_ERR_STATE;
    if (st == MAILPOOL_OK)
        st = txn_setup(mp, env, 1, 0);
    return st;
}

PUBLIC mailpool_status mailpool_stream_add_recipient(mailpool *mp, const char *addr,
                                                     const char *notify, const char *orcpt)
{
    mailpool_status st = check_owner(mp);

    if (st != MAILPOOL_OK)
        return st;
    if (mp->tx.phase != TX_BEGUN || mp->op != OP_NONE)
        return MAILPOOL_ERR_STATE;
    return txn_add(&mp->tx, addr, notify, orcpt);
}

/* The status a stream write reports once the transaction is no longer taking data. */
static mailpool_status stream_status(const mailpool *mp)
{
    const struct txn *t = &mp->tx;

    if (t->st != MAILPOOL_OK)
        return t->st;
    return summarise(t->replies, t->n) == MAILPOOL_ERR_TEMPORARY ? MAILPOOL_ERR_TEMPORARY
                                                                 : MAILPOOL_ERR_PERMANENT;
}

/* A stream write, blocking or on the private stack. */
static mailpool_status stream_write(mailpool *mp, const void *buf, size_t len)
{
    struct txn *t = &mp->tx;
    mailpool_status st;

    if (t->phase == TX_BEGUN) {
        if (t->n == 0)
            return MAILPOOL_ERR_ARGS;
        st = ensure_conn(mp);
        if (st != MAILPOOL_OK) {
            (void)txn_broken(mp, st);
            return st;
        }
        st = txn_envelope(mp);
        if (st != MAILPOOL_OK)
            return st;
    }
    if (t->phase != TX_DATA)
        return stream_status(mp);
    return txn_body(mp, buf, len);
}

PUBLIC mailpool_status mailpool_stream_write(mailpool *mp, const void *buf, size_t len)
{
    mailpool_status st = check_owner(mp);

    if (st != MAILPOOL_OK)
        return st;
    if (mp->tx.phase == TX_NONE || mp->op != OP_NONE || (buf == NULL && len > 0))
        return mp->tx.phase == TX_NONE || mp->op != OP_NONE ? MAILPOOL_ERR_STATE
                                                            : MAILPOOL_ERR_ARGS;
    return stream_write(mp, buf, len);
}

/* End a stream, blocking or on the private stack. */
static mailpool_status stream_end(mailpool *mp, mailpool_result *result)
{
    struct txn *t = &mp->tx;

    if (t->phase == TX_BEGUN) {
        mailpool_status st = t->n == 0 ? MAILPOOL_ERR_ARGS : ensure_conn(mp);

        if (st != MAILPOOL_OK)
            return txn_fail_start(mp, result, st);
    }
    return txn_finish(mp, result);
}

PUBLIC mailpool_status mailpool_stream_end(mailpool *mp, mailpool_result *result)
{
    mailpool_status st = check_owner(mp);

    if (result == NULL)
        return MAILPOOL_ERR_ARGS;
    memset(result, 0, sizeof *result);
    if (st == MAILPOOL_OK && (mp->tx.phase == TX_NONE || mp->op != OP_NONE))
        st = MAILPOOL_ERR_STATE;
    if (st != MAILPOOL_OK)
        return result->status = st;
    return stream_end(mp, result);
}

PUBLIC mailpool_status mailpool_stream_abort(mailpool *mp)
{
    mailpool_status st = check_owner(mp);

    if (st != MAILPOOL_OK)
        return st;
    if (mp->tx.phase == TX_NONE || mp->op != OP_NONE)
        return MAILPOOL_ERR_STATE;
    if (mp->tx.phase == TX_DATA) {
        /* The only clean way to drop a partial LMTP message is to hang up. */
        drop_conn(mp, MAILPOOL_ERR_CANCELLED);
        mp->reconnect = 1;
        txn_clear(&mp->tx);
    } else if (mp->tx.phase == TX_SETTLED) {
        mailpool_result r;

        (void)txn_finish(mp, &r); /* sends RSET */
        mailpool_result_free(&r);
    } else {
        txn_clear(&mp->tx);
    }
    return MAILPOOL_OK;
}

PUBLIC void mailpool_result_free(mailpool_result *result)
{
    if (result == NULL)
        return;
    free(result->recipients);
    result->recipients = NULL;
    result->nrecipients = 0;
}

PUBLIC const mailpool_reply *mailpool_last_reply(const mailpool *mp)
{
    static const mailpool_reply none = {0, "", ""};

    return mp != NULL ? &mp->last : &none;
}

PUBLIC size_t mailpool_reply_queue_id(const mailpool_reply *reply, char *buf, size_t size)
{
    static const char tag[] = "queued as ";
    const char *p, *id;
    size_t n = 0;

    if (reply == NULL || !is_2xx(reply->code))
        return 0;
    p = strstr(reply->text, tag);
    if (p == NULL)
        return 0;
    id = p + sizeof tag - 1;
    while ((id[n] >= 'A' && id[n] <= 'Z') || (id[n] >= 'a' && id[n] <= 'z') ||
           (id[n] >= '0' && id[n] <= '9') || id[n] == '-' || id[n] == '_' || id[n] == '.')
        n++;
    while (n > 0 && id[n - 1] == '.')
        n--; /* a sentence full stop, not part of the id */
    if (buf != NULL && size > n) {
        memcpy(buf, id, n);
        buf[n] = '\0';
    } else if (buf != NULL && size > 0) {
        buf[0] = '\0';
    }
    return n;
}

PUBLIC void mailpool_cancel(mailpool *mp)
{
    uint64_t one = 1;
    int saved = errno; /* a signal handler must not change errno */

    if (mp == NULL)
        return;
    atomic_store(&mp->cancel, 1);
    if (write(mp->evfd, &one, sizeof one) < 0) {
        /* The counter is full: a wakeup is already pending. */
    }
    errno = saved;
}

PUBLIC mailpool_status mailpool_attach_thread(mailpool *mp)
{
    if (mp == NULL)
        return MAILPOOL_ERR_ARGS;
    mp->owner = pthread_self();
    return MAILPOOL_OK;
}

PUBLIC mailpool_status mailpool_set_callback(mailpool *mp, mailpool_callback cb, void *arg)
{
    mailpool_status st = check_owner(mp);

    if (st != MAILPOOL_OK)
        return st;
    mp->cb = cb;
    mp->cb_arg = arg;
    return MAILPOOL_OK;
}

PUBLIC const char *mailpool_version(void)
{
    return MAILPOOL_VERSION_STRING;
}

PUBLIC int mailpool_fd(const mailpool *mp)
{
    return mp != NULL ? mp->epfd : -1;
}

PUBLIC int mailpool_busy(const mailpool *mp)
{
    return mp != NULL && mp->op != OP_NONE;
}

/* The body of an asynchronous operation, on the private stack. */
static void co_main(unsigned hi, unsigned lo)
{
    /* makecontext() passes int arguments only: the pointer arrives in two halves. */
    uintptr_t bits = ((uintptr_t)hi << 16 << 16) | (uintptr_t)lo;
    mailpool *mp = (mailpool *)bits; // NOLINT(performance-no-int-to-ptr)
    mailpool_status st = MAILPOOL_ERR_STATE;

    switch (mp->op) {
    case OP_OPEN:
        st = do_connect(mp);
        if (st != MAILPOOL_OK)
            mp->broken = 1;
        break;
    case OP_SEND:
        st = run_send(mp, mp->a_msg, mp->a_len, -1, mp->a_result);
        break;
    case OP_SEND_FD:
        st = run_send(mp, NULL, 0, mp->a_fd, mp->a_result);
        break;
    case OP_WRITE:
        st = stream_write(mp, mp->a_chunk, mp->a_chunk_len);
        break;
    case OP_END:
        st = stream_end(mp, mp->a_result);
        break;
    case OP_NONE:
        break;
    }
    mp->co_status = st;
    mp->co_done = 1;
}

/* Prepare an operation to run from mailpool_process(); the wakeup makes mailpool_fd() readable. */
static mailpool_status co_start(mailpool *mp, enum async_op op)
{
    uintptr_t p = (uintptr_t)mp;
    uint64_t one = 1;

    if (mp->co_stack == NULL && (mp->co_stack = malloc(CO_STACK)) == NULL)
        return MAILPOOL_ERR_NOMEM;
    if (getcontext(&mp->co_self) != 0)
        return MAILPOOL_ERR_NOMEM;
    mp->co_self.uc_stack.ss_sp = mp->co_stack;
    mp->co_self.uc_stack.ss_size = CO_STACK;
    mp->co_self.uc_link = &mp->co_caller;
    makecontext(&mp->co_self, (void (*)(void))co_main, 2, (unsigned)(p >> 16 >> 16),
                (unsigned)(p & 0xffffffffu));
    mp->op = op;
    mp->co_done = 0;
    if (write(mp->evfd, &one, sizeof one) < 0) {
        /* A wakeup is already pending. */
    }
    return MAILPOOL_OK;
}

PUBLIC mailpool_status mailpool_process(mailpool *mp, int revents)
{
    mailpool_status st = check_owner(mp);
    mailpool_event_info ev = {.event = MAILPOOL_EV_DONE};
    enum async_op op;

    (void)revents; /* the library looks at its own descriptors */
    if (st != MAILPOOL_OK)
        return st;
    if (mp->in_co)
        return MAILPOOL_ERR_STATE;
    drain(mp->evfd);
    if (mp->op == OP_NONE) {
        drain(mp->tfd);
        return MAILPOOL_OK;
    }
    mp->in_co = 1;
    swapcontext(&mp->co_caller, &mp->co_self);
    mp->in_co = 0;
    if (!mp->co_done)
        return MAILPOOL_OK;
    ep_watch(mp, 0);
    {
        struct itimerspec off = {{0, 0}, {0, 0}};

        (void)timerfd_settime(mp->tfd, 0, &off, NULL);
        drain(mp->tfd);
    }
    op = mp->op;
    mp->op = OP_NONE;
    st = mp->co_status;
    if (op == OP_WRITE) {
        /* The chunk is on its way (or failed): the buffer is free for the next one. */
        mp->write_st = st;
        emit_simple(mp, MAILPOOL_EV_WRITE, st, 0);
        if (mp->a_result != NULL) {
            /* mailpool_stream_end_async() came while the chunk was going out. */
            st = co_start(mp, OP_END);
            if (st != MAILPOOL_OK) {
                mp->a_result->status = st;
                ev.status = st;
                ev.result = mp->a_result;
                mp->a_result = NULL;
                emit(mp, &ev);
            }
            return st;
        }
        return st;
    }
    ev.status = st;
    ev.result = op == OP_OPEN ? NULL : mp->a_result;
    mp->a_result = NULL;
    emit(mp, &ev);
    return st;
}

PUBLIC mailpool_status mailpool_open_async(const char *socket_path, unsigned timeout_ms,
                                           unsigned options, mailpool_callback cb, void *arg,
                                           mailpool **out)
{
    mailpool_status st = handle_new(socket_path, timeout_ms, options, out);

    if (st != MAILPOOL_OK)
        return st;
    (*out)->cb = cb;
    (*out)->cb_arg = arg;
    st = co_start(*out, OP_OPEN);
    if (st != MAILPOOL_OK) {
        handle_free(*out);
        *out = NULL;
    }
    return st;
}

static mailpool_status send_async(mailpool *mp, const mailpool_envelope *env, const void *message,
                                  size_t len, int fd, mailpool_result *result)
{
    mailpool_status st;

    if (result == NULL)
        return MAILPOOL_ERR_ARGS;
    memset(result, 0, sizeof *result);
    st = check_owner(mp);
    if (st == MAILPOOL_OK && (mp->op != OP_NONE || mp->in_co || mp->tx.phase != TX_NONE))
        st = MAILPOOL_ERR_STATE;
    if (st == MAILPOOL_OK) {
        atomic_store(&mp->cancel, 0);
        drain(mp->evfd);
        if (mp->broken)
            st = MAILPOOL_ERR_STATE;
    }
    if (st == MAILPOOL_OK && ((fd < 0 && message == NULL && len > 0)))
        st = MAILPOOL_ERR_ARGS;
    if (st == MAILPOOL_OK)
        st = txn_setup(mp, env, 1, 1);
    if (st != MAILPOOL_OK)
        return result->status = st;
    if (fd < 0)
        txn_measure(&mp->tx, message, len);
    else
        txn_measure_fd(&mp->tx, fd);
    mp->a_msg = message;
    mp->a_len = len;
    mp->a_fd = fd;
    mp->a_result = result;
    st = co_start(mp, fd < 0 ? OP_SEND : OP_SEND_FD);
    if (st != MAILPOOL_OK) {
        txn_clear(&mp->tx);
        mp->a_result = NULL;
        result->status = st;
    }
    return st;
}

PUBLIC mailpool_status mailpool_send_async(mailpool *mp, const mailpool_envelope *env,
                                           const void *message, size_t len, mailpool_result *result)
{
    return send_async(mp, env, message, len, -1, result);
}

PUBLIC mailpool_status mailpool_send_fd_async(mailpool *mp, const mailpool_envelope *env, int fd,
                                              mailpool_result *result)
{
    if (fd < 0) {
        if (result != NULL)
            memset(result, 0, sizeof *result);
        return MAILPOOL_ERR_ARGS;
    }
    return send_async(mp, env, NULL, 0, fd, result);
}

PUBLIC mailpool_status mailpool_stream_write_async(mailpool *mp, const void *buf, size_t len,
                                                   size_t *accepted)
{
    mailpool_status st = check_owner(mp);
    size_t n;

    if (accepted != NULL)
        *accepted = 0;
    if (st != MAILPOOL_OK)
        return st;
    if (accepted == NULL || (buf == NULL && len > 0))
        return MAILPOOL_ERR_ARGS;
    if (mp->tx.phase == TX_NONE || (mp->op != OP_NONE && mp->op != OP_WRITE) ||
        mp->a_result != NULL)
        return MAILPOOL_ERR_STATE;
    if (mp->write_st != MAILPOOL_OK)
        return mp->write_st;
    if (mp->op == OP_WRITE)
        return MAILPOOL_OK; /* the previous chunk is still going out */
    if (mp->tx.phase == TX_SETTLED)
        return stream_status(mp);
    if (mp->a_chunk == NULL && (mp->a_chunk = malloc(BODY_CHUNK)) == NULL)
        return MAILPOOL_ERR_NOMEM;
    n = len < BODY_CHUNK ? len : BODY_CHUNK;
    if (n > 0)
        memcpy(mp->a_chunk, buf, n);
    mp->a_chunk_len = n;
    st = co_start(mp, OP_WRITE);
    if (st == MAILPOOL_OK)
        *accepted = n;
    return st;
}

PUBLIC mailpool_status mailpool_stream_end_async(mailpool *mp, mailpool_result *result)
{
    mailpool_status st = check_owner(mp);

    if (result == NULL)
        return MAILPOOL_ERR_ARGS;
    memset(result, 0, sizeof *result);
    if (st == MAILPOOL_OK && (mp->tx.phase == TX_NONE ||
                              (mp->op != OP_NONE && mp->op != OP_WRITE) || mp->a_result != NULL))
        st = MAILPOOL_ERR_STATE;
    if (st != MAILPOOL_OK)
        return result->status = st;
    mp->write_st = MAILPOOL_OK;
    mp->a_result = result;
    if (mp->op == OP_WRITE)
        return MAILPOOL_OK; /* starts when the chunk in flight is written */
    st = co_start(mp, OP_END);
    if (st != MAILPOOL_OK) {
        mp->a_result = NULL;
        result->status = st;
    }
    return st;
}
PUBLIC const char *mailpool_strerror(mailpool_status status)
{
    switch (status) {
    case MAILPOOL_OK:
        return "success";
    case MAILPOOL_ERR_ARGS:
        return "invalid argument";
    case MAILPOOL_ERR_NOMEM:
        return "out of memory";
    case MAILPOOL_ERR_CONNECT:
        return "cannot connect to the mailpool daemon";
    case MAILPOOL_ERR_IO:
        return "connection to the mailpool daemon failed";
    case MAILPOOL_ERR_TIMEOUT:
        return "timed out waiting for the mailpool daemon";
    case MAILPOOL_ERR_PROTOCOL:
        return "the mailpool daemon sent an invalid reply";
    case MAILPOOL_ERR_TEMPORARY:
        return "temporary failure, try again later";
    case MAILPOOL_ERR_PERMANENT:
        return "permanent failure";
    case MAILPOOL_ERR_PARTIAL:
        return "some recipients were refused";
    case MAILPOOL_ERR_THREAD:
        return "handle used from a thread that does not own it";
    case MAILPOOL_ERR_CANCELLED:
        return "operation cancelled";
    case MAILPOOL_ERR_STATE:
        return "handle not usable (closed or broken connection)";
    }
    return "unknown error";
}
