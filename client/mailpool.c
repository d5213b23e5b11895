/*
 * libmailpool: the client side of the submission protocol, LMTP (RFC 2033)
 * on a Unix socket, with PIPELINING (RFC 2920), ENHANCEDSTATUSCODES (RFC 2034,
 * 3463), 8BITMIME (RFC 6152), SIZE (RFC 1870) and SMTPUTF8 (RFC 6531).
 * Blocking calls on a non-blocking socket: every wait is a bounded poll().
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "mailpool.h"
#include "proto.h"

/* The library is built with hidden visibility; only the API is exported. */
#define PUBLIC __attribute__((visibility("default")))

#define DEFAULT_TIMEOUT_MS 60000u
/* Body bytes handed to one send(); big enough that a large message is few syscalls. */
#define BODY_CHUNK 65536
/* One input line plus its CRLF, and room for the next read to find the LF. */
#define INBUF_SIZE (MAILPOOL_MAX_REPLY_LINE + 2)

enum cap {
    CAP_PIPELINING = 1u << 0,
    CAP_8BITMIME = 1u << 1,
    CAP_SMTPUTF8 = 1u << 2,
    CAP_SIZE = 1u << 3,
    CAP_ENHANCED = 1u << 4,
    CAP_XRELAY = 1u << 5,
    CAP_XMODE = 1u << 6,
};

struct mailpool {
    int fd;     /* -1 once the connection is gone */
    int broken; /* a transport error left the stream in an unknown state */
    unsigned timeout_ms;
    unsigned options;
    pthread_t owner;
    unsigned caps; /* enum cap bits from the LHLO reply */
    unsigned long long size_limit;
    mailpool_reply last;
    char *in; /* received, not yet parsed bytes (INBUF_SIZE) */
    size_t inlen;
};

/* Where each recipient stands during a transaction. */
enum rcpt_state { RCPT_PENDING = 0, RCPT_ACCEPTED, RCPT_FINAL };

struct buf {
    char *p;
    size_t len, cap;
};

static long long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait until fd is ready for `events` or the deadline passes. */
static mailpool_status wait_fd(int fd, short events, long long deadline)
{
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = events};
        long long left = deadline - now_ms();
        int n;

        if (left < 0)
            left = 0;
        n = poll(&pfd, 1, left > INT_MAX ? INT_MAX : (int)left);
        if (n > 0)
            return MAILPOOL_OK; /* errors and hangups show up in the next recv/send */
        if (n == 0) {
            if (deadline - now_ms() <= 0)
                return MAILPOOL_ERR_TIMEOUT;
            continue;
        }
        if (errno != EINTR)
            return MAILPOOL_ERR_IO;
    }
}

/* The connection can no longer be trusted: drop it, later calls get STATE. */
static mailpool_status fail(mailpool *mp, mailpool_status st)
{
    mp->broken = 1;
    if (mp->fd >= 0) {
        int saved = errno;

        close(mp->fd);
        mp->fd = -1;
        errno = saved;
    }
    return st;
}

/* Write all of buf; the timeout applies to each wait, so a slow but moving peer is fine. */
static mailpool_status write_all(mailpool *mp, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = send(mp->fd, buf, len, MSG_NOSIGNAL);

        if (n > 0) {
            buf += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            mailpool_status st = wait_fd(mp->fd, POLLOUT, now_ms() + mp->timeout_ms);

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
        n = recv(mp->fd, mp->in + mp->inlen, INBUF_SIZE - mp->inlen, 0);
        if (n > 0) {
            mp->inlen += (size_t)n;
            continue;
        }
        if (n == 0)
            return MAILPOOL_ERR_IO;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return MAILPOOL_ERR_IO;
        st = wait_fd(mp->fd, POLLIN, deadline);
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

static mailpool_status check_use(const mailpool *mp)
{
    if (mp == NULL)
        return MAILPOOL_ERR_ARGS;
    if (!(mp->options & MAILPOOL_OPT_FREETHREAD) && !pthread_equal(mp->owner, pthread_self()))
        return MAILPOOL_ERR_THREAD;
    if (mp->broken || mp->fd < 0)
        return MAILPOOL_ERR_STATE;
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
            poll(NULL, 0, 10);
            continue;
        }
        if (errno != EINPROGRESS)
            return MAILPOOL_ERR_CONNECT;
        st = wait_fd(mp->fd, POLLOUT, deadline);
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
    if (r.code == 250)
        return MAILPOOL_OK;
    /* A 5xx here means the peer does not speak LMTP at all. */
    return r.code >= 400 && r.code < 500 ? MAILPOOL_ERR_TEMPORARY : MAILPOOL_ERR_PROTOCOL;
}

PUBLIC mailpool_status mailpool_open(const char *socket_path, unsigned timeout_ms, unsigned options,
                                     mailpool **out)
{
    mailpool *mp;
    mailpool_status st;

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
    mp->fd = -1;
    mp->in = malloc(INBUF_SIZE);
    if (mp->in == NULL) {
        free(mp);
        return MAILPOOL_ERR_NOMEM;
    }
    mp->timeout_ms = timeout_ms ? timeout_ms : DEFAULT_TIMEOUT_MS;
    mp->options = options;
    mp->owner = pthread_self();
    st = connect_unix(mp, socket_path);
    if (st == MAILPOOL_OK)
        st = handshake(mp);
    if (st != MAILPOOL_OK) {
        int saved = errno;

        if (mp->fd >= 0)
            close(mp->fd);
        free(mp->in);
        free(mp);
        errno = saved; /* callers print why a CONNECT failed */
        return st;
    }
    *out = mp;
    return MAILPOOL_OK;
}

PUBLIC void mailpool_close(mailpool *mp)
{
    if (mp == NULL)
        return;
    if (mp->fd >= 0 && !mp->broken) {
        mailpool_reply r;

        /* Courtesy only: the reply (or its absence) changes nothing. */
        if (write_all(mp, "QUIT\r\n", 6) == MAILPOOL_OK)
            (void)read_reply(mp, &r, 0);
    }
    if (mp->fd >= 0)
        close(mp->fd);
    free(mp->in);
    free(mp);
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
 * Walk the message as it will go on the wire (CRLF lines, dot-stuffed,
 * terminated) and either measure it or emit it.  The two uses share one
 * definition so SIZE= and the data cannot disagree.
 */
struct body_out {
    mailpool *mp; /* NULL: only measure */
    char *chunk;
    size_t len;
    unsigned long long total; /* unstuffed CRLF size, for SIZE= */
    int eightbit;
    mailpool_status st;
};

static void body_emit(struct body_out *o, const char *s, size_t n, int counts)
{
    if (counts)
        o->total += n;
    if (o->mp == NULL || o->st != MAILPOOL_OK)
        return;
    memcpy(o->chunk + o->len, s, n);
    o->len += n;
    if (o->len > BODY_CHUNK - 8) {
        o->st = write_all(o->mp, o->chunk, o->len);
        o->len = 0;
    }
}

static mailpool_status body_walk(struct body_out *o, const unsigned char *m, size_t len)
{
    int line_start = 1, pending_cr = 0;
    size_t i;

    for (i = 0; i < len && o->st == MAILPOOL_OK; i++) {
        unsigned char c = m[i];

        if (c == '\r') {
            if (pending_cr)
                body_emit(o, "\r\n", 2, 1); /* the previous CR was bare */
            pending_cr = 1;
            line_start = 1;
            continue;
        }
        if (c == '\n') {
            body_emit(o, "\r\n", 2, 1);
            pending_cr = 0;
            line_start = 1;
            continue;
        }
        if (pending_cr) {
            body_emit(o, "\r\n", 2, 1);
            pending_cr = 0;
        }
        if (c >= 0x80)
            o->eightbit = 1;
        if (line_start && c == '.')
            body_emit(o, ".", 1, 0);
        body_emit(o, (const char *)&m[i], 1, 1);
        line_start = 0;
    }
    if (pending_cr || !line_start)
        body_emit(o, "\r\n", 2, 1);
    body_emit(o, ".\r\n", 3, 0);
    if (o->mp != NULL && o->st == MAILPOOL_OK && o->len > 0)
        o->st = write_all(o->mp, o->chunk, o->len);
    return o->st;
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

static int is_2xx(int code)
{
    return code >= 200 && code < 300;
}

/* Overall status from the per-recipient replies (all of them known). */
static mailpool_status summarise(const mailpool_result *res)
{
    size_t i, ok = 0, temp = 0;

    for (i = 0; i < res->nrecipients; i++) {
        if (is_2xx(res->recipients[i].code))
            ok++;
        else if (res->recipients[i].code >= 400 && res->recipients[i].code < 500)
            temp++;
    }
    if (ok == res->nrecipients)
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

static mailpool_status validate(const mailpool_envelope *env, const void *message, size_t len,
                                int *utf8)
{
    size_t i;

    if (env == NULL || env->sender == NULL || env->recipients == NULL || env->nrecipients == 0 ||
        env->nrecipients > MAILPOOL_MAX_RECIPIENTS || (message == NULL && len > 0))
        return MAILPOOL_ERR_ARGS;
    if (env->sender[0] != '\0' && !addr_valid(env->sender, utf8))
        return MAILPOOL_ERR_ARGS;
    for (i = 0; i < env->nrecipients; i++) {
        const char *r = env->recipients[i];

        if (r == NULL || r[0] == '\0' || !addr_valid(r, utf8))
            return MAILPOOL_ERR_ARGS;
    }
    if (env->relay != NULL && !param_valid(env->relay, MAILPOOL_MAX_RELAY_NAME))
        return MAILPOOL_ERR_ARGS;
    if (env->mode != NULL && strcmp(env->mode, MAILPOOL_MODE_RELAY) != 0 &&
        strcmp(env->mode, MAILPOOL_MODE_QUEUE) != 0)
        return MAILPOOL_ERR_ARGS;
    if (env->notify != NULL && !notify_valid(env->notify))
        return MAILPOOL_ERR_ARGS;
    if (env->ret != NULL && strcasecmp(env->ret, "FULL") != 0 && strcasecmp(env->ret, "HDRS") != 0)
        return MAILPOOL_ERR_ARGS;
    if (env->envid != NULL && !xtext_valid(env->envid, MAILPOOL_MAX_ENVID))
        return MAILPOOL_ERR_ARGS;
    return MAILPOOL_OK;
}

static int build_mail(struct buf *b, const mailpool *mp, const mailpool_envelope *env,
                      const struct body_out *scan, int utf8)
{
    char num[32];

    if (buf_str(b, "MAIL FROM:<") || buf_str(b, env->sender) || buf_str(b, ">"))
        return -1;
    if (scan->eightbit && (mp->caps & CAP_8BITMIME) && buf_str(b, " BODY=8BITMIME"))
        return -1;
    if (utf8 && buf_str(b, " SMTPUTF8"))
        return -1;
    if (mp->caps & CAP_SIZE) {
        snprintf(num, sizeof num, " SIZE=%llu", scan->total);
        if (buf_str(b, num))
            return -1;
    }
    if (env->relay != NULL && (buf_str(b, " " MAILPOOL_PARAM_RELAY "=") || buf_str(b, env->relay)))
        return -1;
    if (env->mode != NULL && (buf_str(b, " " MAILPOOL_PARAM_MODE "=") || buf_str(b, env->mode)))
        return -1;
    if (env->ret != NULL && (buf_str(b, " RET=") || buf_str(b, env->ret)))
        return -1;
    if (env->envid != NULL && (buf_str(b, " ENVID=") || buf_str(b, env->envid)))
        return -1;
    return buf_str(b, "\r\n");
}

static int build_rcpt(struct buf *b, const mailpool_envelope *env, const char *rcpt)
{
    if (buf_str(b, "RCPT TO:<") || buf_str(b, rcpt) || buf_str(b, ">"))
        return -1;
    if (env->notify != NULL && (buf_str(b, " NOTIFY=") || buf_str(b, env->notify)))
        return -1;
    return buf_str(b, "\r\n");
}

/* One transaction's bookkeeping, so the steps below stay short. */
struct txn {
    mailpool *mp;
    const mailpool_envelope *env;
    mailpool_result *res;
    unsigned char *state; /* enum rcpt_state per recipient */
    size_t naccepted;
    int gone; /* the daemon said 421: it is closing the connection */
};

/* Read a reply; a 421 means the daemon is going away, which later steps must respect. */
static mailpool_status txn_reply(struct txn *t, mailpool_reply *r)
{
    mailpool_status st = read_reply(t->mp, r, 0);

    if (st == MAILPOOL_OK && r->code == 421)
        t->gone = 1;
    return st;
}

/* Every recipient without a final outcome gets r. */
static void txn_settle(struct txn *t, const mailpool_reply *r)
{
    size_t i;

    for (i = 0; i < t->res->nrecipients; i++) {
        if (t->state[i] != RCPT_FINAL) {
            t->res->recipients[i] = *r;
            t->state[i] = RCPT_FINAL;
        }
    }
}

/* Transport failure: unknown outcomes carry code 0, known ones keep their reply. */
static mailpool_status txn_broken(struct txn *t, mailpool_status st)
{
    size_t i;

    for (i = 0; i < t->res->nrecipients; i++) {
        if (t->state[i] != RCPT_FINAL)
            memset(&t->res->recipients[i], 0, sizeof t->res->recipients[i]);
    }
    fail(t->mp, st);
    return st;
}

/*
 * The envelope: MAIL, each RCPT and DATA (already written when pipelining,
 * else written one by one here) and their replies.  *data gets the DATA
 * reply, or code 0 when DATA was not sent.  Returns a transport error or OK.
 */
static mailpool_status txn_envelope(struct txn *t, int pipelined, mailpool_reply *data)
{
    mailpool *mp = t->mp;
    mailpool_reply mail, r;
    mailpool_status st;
    struct buf b = {0};
    size_t i;

    st = txn_reply(t, &mail);
    if (st != MAILPOOL_OK)
        return txn_broken(t, st);
    if (!is_2xx(mail.code) && !pipelined) {
        txn_settle(t, &mail);
        return MAILPOOL_OK;
    }
    for (i = 0; i < t->env->nrecipients; i++) {
        if (!pipelined) {
            if (build_rcpt(&b, t->env, t->env->recipients[i])) {
                free(b.p);
                return txn_broken(t, MAILPOOL_ERR_NOMEM);
            }
            st = write_all(mp, b.p, b.len);
            b.len = 0;
            if (st != MAILPOOL_OK) {
                free(b.p);
                return txn_broken(t, st);
            }
        }
        if (t->gone)
            break; /* nothing more will come */
        st = txn_reply(t, &r);
        if (st != MAILPOOL_OK) {
            free(b.p);
            return txn_broken(t, st);
        }
        if (!is_2xx(mail.code) || t->gone) {
            /* Refused MAIL: the RCPT replies are only the consequence. */
            t->res->recipients[i] = t->gone ? r : mail;
            t->state[i] = RCPT_FINAL;
        } else if (is_2xx(r.code)) {
            t->res->recipients[i] = r;
            t->state[i] = RCPT_ACCEPTED;
            t->naccepted++;
        } else {
            t->res->recipients[i] = r;
            t->state[i] = RCPT_FINAL;
        }
    }
    free(b.p);
    if (t->gone) {
        txn_settle(t, &mp->last);
        return MAILPOOL_OK;
    }
    if (!pipelined) {
        if (t->naccepted == 0)
            return MAILPOOL_OK;
        st = write_all(mp, "DATA\r\n", 6);
        if (st != MAILPOOL_OK)
            return txn_broken(t, st);
    }
    if (!is_2xx(mail.code) && pipelined)
        txn_settle(t, &mail);
    st = txn_reply(t, data);
    if (st != MAILPOOL_OK)
        return txn_broken(t, st);
    return MAILPOOL_OK;
}

/* The data phase, after 354: body, then one reply per accepted recipient in RCPT order. */
static mailpool_status txn_data(struct txn *t, const void *message, size_t len)
{
    struct body_out o = {.mp = t->mp, .st = MAILPOOL_OK};
    mailpool_reply r;
    mailpool_status st;
    size_t i;

    o.chunk = malloc(BODY_CHUNK);
    if (o.chunk == NULL)
        return txn_broken(t, MAILPOOL_ERR_NOMEM);
    st = body_walk(&o, message, len);
    free(o.chunk);
    if (st != MAILPOOL_OK) {
        /* The daemon may have refused and hung up mid-data (552): use its reply if it left one. */
        if (st == MAILPOOL_ERR_IO && t->mp->fd >= 0 && read_reply(t->mp, &r, 0) == MAILPOOL_OK &&
            r.code >= 400) {
            txn_settle(t, &r);
            fail(t->mp, MAILPOOL_ERR_IO);
            return MAILPOOL_OK;
        }
        return txn_broken(t, st);
    }
    for (i = 0; i < t->res->nrecipients; i++) {
        if (t->state[i] != RCPT_ACCEPTED)
            continue;
        st = txn_reply(t, &r);
        if (st != MAILPOOL_OK)
            return txn_broken(t, st);
        if (t->gone) {
            txn_settle(t, &r);
            break;
        }
        t->res->recipients[i] = r;
        t->state[i] = RCPT_FINAL;
    }
    return MAILPOOL_OK;
}

PUBLIC mailpool_status mailpool_send(mailpool *mp, const mailpool_envelope *env,
                                     const void *message, size_t len, mailpool_result *result)
{
    struct body_out scan = {.st = MAILPOOL_OK};
    struct txn t = {0};
    struct buf cmds = {0};
    mailpool_reply data;
    mailpool_status st;
    int utf8 = 0, pipelined, clean = 0;
    size_t i;

    if (result == NULL)
        return MAILPOOL_ERR_ARGS;
    memset(result, 0, sizeof *result);
    st = check_use(mp);
    if (st == MAILPOOL_OK)
        st = validate(env, message, len, &utf8);
    if (st != MAILPOOL_OK)
        return result->status = st;
    result->recipients = calloc(env->nrecipients, sizeof *result->recipients);
    t.state = calloc(env->nrecipients, 1);
    if (result->recipients == NULL || t.state == NULL) {
        free(t.state);
        free(result->recipients);
        result->recipients = NULL;
        return result->status = MAILPOOL_ERR_NOMEM;
    }
    result->nrecipients = env->nrecipients;
    t.mp = mp;
    t.env = env;
    t.res = result;
    memset(&data, 0, sizeof data);

    (void)body_walk(&scan, message, len);
    pipelined = (mp->caps & CAP_PIPELINING) != 0;
    if (build_mail(&cmds, mp, env, &scan, utf8) != 0)
        goto nomem;
    for (i = 0; pipelined && i < env->nrecipients; i++) {
        if (build_rcpt(&cmds, env, env->recipients[i]) != 0)
            goto nomem;
    }
    if (pipelined && buf_str(&cmds, "DATA\r\n") != 0)
        goto nomem;
    st = write_all(mp, cmds.p, cmds.len);
    free(cmds.p);
    if (st != MAILPOOL_OK) {
        st = txn_broken(&t, st);
        goto out;
    }
    st = txn_envelope(&t, pipelined, &data);
    if (st != MAILPOOL_OK || t.gone)
        goto out;
    if (data.code == 354 && t.naccepted == 0) {
        /* RFC 2920: a server that accepts DATA with no recipients gets an empty message. */
        mailpool_reply r;

        st = write_all(mp, ".\r\n", 3);
        if (st == MAILPOOL_OK)
            st = txn_reply(&t, &r);
        if (st != MAILPOOL_OK)
            st = txn_broken(&t, st);
    } else if (data.code == 354) {
        st = txn_data(&t, message, len);
        clean = 1;
    } else if (data.code >= 400) {
        txn_settle(&t, &data); /* DATA refused: every accepted recipient shares the reply */
    } else if (data.code != 0) {
        st = txn_broken(&t, MAILPOOL_ERR_PROTOCOL); /* DATA can only be 354 or refused */
    }
out:
    if (st == MAILPOOL_OK && t.gone)
        fail(mp, MAILPOOL_ERR_IO);
    if (st == MAILPOOL_OK && !clean && !mp->broken) {
        /* Leave the session clean for the next message. */
        mailpool_reply r;
        mailpool_reply keep = mp->last;

        st = write_all(mp, "RSET\r\n", 6);
        if (st == MAILPOOL_OK)
            st = read_reply(mp, &r, 0);
        if (st == MAILPOOL_OK && !is_2xx(r.code))
            fail(mp, MAILPOOL_ERR_PROTOCOL);
        if (st != MAILPOOL_OK)
            fail(mp, st);
        st = MAILPOOL_OK; /* the outcome of the message is already known */
        mp->last = keep;  /* the caller wants the reply that decided the outcome */
    }
    if (st == MAILPOOL_OK) {
        for (i = 0; i < result->nrecipients; i++) {
            if (t.state[i] != RCPT_FINAL)
                txn_settle(&t, &mp->last); /* a 421 cut the transaction short */
        }
        st = summarise(result);
    }
    free(t.state);
    return result->status = st;
nomem:
    free(cmds.p);
    free(t.state);
    mailpool_result_free(result);
    return result->status = MAILPOOL_ERR_NOMEM;
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
