/*
 * Tests of the TLS layer (tls.c) and the buffered socket (ioev.c) against
 * real peers on loopback: openssl s_server, a Python TLS echo server and
 * plain sockets served from the test's own event loop.
 *
 * usage: tls_test CASE CERTDIR SRCDIR   (CERTDIR from gen-certs.sh)
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "ioev.h"
#include "tls.h"

static const char *certdir;
static const char *srcdir;
static int failures;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                        \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

static char *path_in(const char *dir, const char *name)
{
    char *p;

    if (asprintf(&p, "%s/%s", dir, name) < 0)
        abort();
    return p;
}

static double now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

/* ---- external servers -------------------------------------------------- */

struct server {
    pid_t pid;
    int port;
    int in_fd; /* kept open: s_server treats EOF on stdin as "quit" */
    char *log;
};

static char *read_file(const char *path) __attribute__((returns_nonnull));
static char *read_file(const char *path)
{
    FILE *f = fopen(path, "r");
    char *buf = NULL;
    size_t cap = 0, len = 0, n;

    if (!f)
        return strdup("");
    for (;;) {
        if (cap - len < 4096) {
            cap = cap * 2 + 4096;
            buf = realloc(buf, cap + 1);
            if (!buf)
                abort();
        }
        n = fread(buf + len, 1, cap - len, f);
        if (n == 0)
            break;
        len += n;
    }
    fclose(f);
    buf[len] = '\0';
    return buf;
}

/* Start argv with output to CERTDIR/tag.log and wait for "ACCEPT 127.0.0.1:PORT". */
static int server_start(struct server *s, const char *tag, const char *const argv[])
{
    int p[2], fd, status;
    double deadline = now_ms() + 15000;
    char *text, *a;

    memset(s, 0, sizeof(*s));
    if (asprintf(&s->log, "%s/%s.log", certdir, tag) < 0)
        abort();
    /* Truncated before the fork: a stale "ACCEPT" line must never be seen. */
    fd = open(s->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || pipe2(p, O_CLOEXEC) < 0)
        abort();
    s->pid = fork();
    if (s->pid < 0)
        abort();
    if (s->pid == 0) {
        dup2(p[0], 0);
        close(p[0]);
        close(p[1]);
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(p[0]);
    close(fd);
    s->in_fd = p[1];
    while (now_ms() < deadline) {
        text = read_file(s->log);
        a = strstr(text, "ACCEPT 127.0.0.1:");
        if (a) {
            s->port = atoi(a + strlen("ACCEPT 127.0.0.1:"));
            free(text);
            return s->port > 0 ? 0 : -1;
        }
        free(text);
        if (waitpid(s->pid, &status, WNOHANG) == s->pid) {
            s->pid = 0;
            break;
        }
        usleep(20000);
    }
    text = read_file(s->log);
    fprintf(stderr, "server %s did not start:\n%s\n", argv[0], text);
    free(text);
    return -1;
}

static void server_stop(struct server *s)
{
    int status;

    if (s->pid > 0) {
        kill(s->pid, SIGTERM);
        waitpid(s->pid, &status, 0);
    }
    if (s->in_fd > 0)
        close(s->in_fd);
    free(s->log);
    s->pid = 0;
    s->in_fd = -1;
    s->log = NULL;
}

static int s_server_start(struct server *s, const char *tag, const char *cert,
                          const char *const extra[])
{
    const char *argv[32];
    char *crt = path_in(certdir, cert), *key = path_in(certdir, "server.key");
    int n = 0, i, rc;

    argv[n++] = "openssl";
    argv[n++] = "s_server";
    argv[n++] = "-accept";
    argv[n++] = "127.0.0.1:0";
    argv[n++] = "-cert";
    argv[n++] = crt;
    argv[n++] = "-key";
    argv[n++] = key;
    argv[n++] = "-rev"; /* answers each line reversed: a cheap data round trip */
    for (i = 0; extra && extra[i] && n < 31; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    rc = server_start(s, tag, argv);
    free(crt);
    free(key);
    return rc;
}

static int py_server_start(struct server *s, const char *tag, const char *mode)
{
    char *script = path_in(srcdir, "tls_echo_server.py");
    char *crt = path_in(certdir, "server.crt"), *key = path_in(certdir, "server.key");
    const char *argv[] = {"/usr/bin/python3", script, crt, key, mode, NULL};
    int rc = server_start(s, tag, argv);

    free(script);
    free(crt);
    free(key);
    return rc;
}

/* ---- in-process plain servers ------------------------------------------ */

enum lst_action { LST_NO_ACCEPT, LST_SEND_KEEP, LST_SEND_CLOSE };

struct listener {
    int fd;
    int port;
    enum lst_action action;
    const void *data;
    size_t len;
    int conn; /* accepted socket, kept open for LST_SEND_KEEP */
    struct event *ev;
};

static void listener_on_accept(evutil_socket_t fd, short what, void *arg)
{
    struct listener *l = arg;
    int c = accept(l->fd, NULL, NULL);

    if (c < 0)
        return;
    if (l->len && send(c, l->data, l->len, MSG_NOSIGNAL) != (ssize_t)l->len)
        fprintf(stderr, "listener: short send\n");
    if (l->action == LST_SEND_CLOSE)
        close(c);
    else
        l->conn = c;
}

static void listener_open(struct listener *l, struct event_base *base, enum lst_action action,
                          const void *data, size_t len, int do_listen)
{
    struct sockaddr_in sin;
    socklen_t slen = sizeof(sin);

    memset(l, 0, sizeof(*l));
    l->conn = -1;
    l->action = action;
    l->data = data;
    l->len = len;
    l->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (l->fd < 0 || bind(l->fd, (struct sockaddr *)&sin, sizeof(sin)) < 0 ||
        getsockname(l->fd, (struct sockaddr *)&sin, &slen) < 0)
        abort();
    l->port = ntohs(sin.sin_port);
    /* Bound but not listening: a connect is refused, and no other program can take the port. */
    if (!do_listen)
        return;
    if (listen(l->fd, 8) < 0)
        abort();
    if (action != LST_NO_ACCEPT) {
        l->ev = event_new(base, l->fd, EV_READ | EV_PERSIST, listener_on_accept, l);
        event_add(l->ev, NULL);
    }
}

static void listener_close(struct listener *l)
{
    if (l->ev)
        event_free(l->ev);
    if (l->conn >= 0)
        close(l->conn);
    close(l->fd);
}

/* ---- the client under test --------------------------------------------- */

struct client {
    struct event_base *base;
    struct ioev *io;
    struct tls_ctx *ctx; /* NULL: stay in plaintext */
    const char *server_name;
    const char *session_key;
    const void *send;
    size_t send_len;
    size_t expect; /* finish once this many bytes came back */
    int free_on;   /* free the ioev from inside this event; -1: never */
    unsigned timeout_ms;

    struct evbuffer *got;
    int count[IOEV_TIMEOUT + 1];
    enum ioev_event order[64];
    int norder;
    int in_call;   /* inside an ioev_* call made by this client */
    int reentrant; /* events delivered from inside such a call */
    int freed;
    int after_free;
    int finished;
    int starttls_rc;
    char starttls_err[256];
    char *error;
    char *version;
    char *cipher;
    int resumed;
};

/* The loops below run EVLOOP_ONCE and look at this flag. */
static void client_finish(struct client *c)
{
    c->finished = 1;
}

static void client_send(struct client *c, struct ioev *io)
{
    if (!c->send_len) {
        if (!c->expect)
            client_finish(c);
        return;
    }
    c->in_call = 1;
    evbuffer_add(ioev_output(io), c->send, c->send_len);
    ioev_flush(io);
    c->in_call = 0;
}

static void client_cb(struct ioev *io, enum ioev_event ev, void *arg)
{
    struct client *c = arg;

    if (c->freed) {
        c->after_free++;
        return;
    }
    if (c->in_call)
        c->reentrant++;
    c->count[ev]++;
    if (c->norder < 64)
        c->order[c->norder++] = ev;
    switch (ev) {
    case IOEV_CONNECTED:
        if (c->timeout_ms)
            ioev_set_timeout(io, c->timeout_ms);
        if (c->ctx) {
            c->in_call = 1;
            c->starttls_rc = ioev_start_tls(io, c->ctx, c->server_name, c->session_key,
                                            c->starttls_err, sizeof(c->starttls_err));
            c->in_call = 0;
            if (c->starttls_rc < 0)
                client_finish(c);
        } else {
            client_send(c, io);
        }
        break;
    case IOEV_TLS_DONE:
        free(c->version);
        free(c->cipher);
        c->version = ioev_tls_version(io) ? strdup(ioev_tls_version(io)) : NULL;
        c->cipher = ioev_tls_cipher(io) ? strdup(ioev_tls_cipher(io)) : NULL;
        c->resumed = ioev_tls_resumed(io);
        client_send(c, io);
        break;
    case IOEV_READ:
        evbuffer_add_buffer(c->got, ioev_input(io));
        if (c->expect && evbuffer_get_length(c->got) >= c->expect)
            client_finish(c);
        break;
    case IOEV_FLUSHED:
        break;
    case IOEV_EOF:
    case IOEV_ERROR:
        free(c->error);
        c->error = strdup(ioev_error(io));
        client_finish(c);
        break;
    case IOEV_TIMEOUT:
        client_finish(c);
        break;
    }
    if (c->free_on == (int)ev) {
        ioev_free(io);
        c->io = NULL;
        c->freed = 1;
        client_finish(c);
    }
}

static void client_init(struct client *c, struct event_base *base)
{
    memset(c, 0, sizeof(*c));
    c->base = base;
    c->free_on = -1;
    c->got = evbuffer_new();
}

static void client_done(struct client *c)
{
    if (c->io)
        ioev_free(c->io);
    evbuffer_free(c->got);
    free(c->error);
    free(c->version);
    free(c->cipher);
    memset(c, 0, sizeof(*c));
}

static void on_watchdog(evutil_socket_t fd, short what, void *arg)
{
    int *fired = arg;

    *fired = 1;
}

static int client_start(struct client *c, int port)
{
    struct sockaddr_in sin;
    char err[256];

    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons((unsigned short)port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->io =
        ioev_connect(c->base, (struct sockaddr *)&sin, sizeof(sin), client_cb, c, err, sizeof(err));
    if (!c->io) {
        fprintf(stderr, "ioev_connect: %s\n", err);
        return -1;
    }
    return 0;
}

/* Run the loop until the client finishes or max_ms pass; 0 on finish. */
static int client_loop(struct client *c, unsigned max_ms)
{
    struct timeval tv = {max_ms / 1000, (max_ms % 1000) * 1000};
    struct event *wd;
    int fired = 0;

    wd = evtimer_new(c->base, on_watchdog, &fired);
    evtimer_add(wd, &tv);
    while (!c->finished && !fired)
        event_base_loop(c->base, EVLOOP_ONCE);
    event_free(wd);
    if (!c->finished)
        fprintf(stderr, "client did not finish within %u ms\n", max_ms);
    return c->finished ? 0 : -1;
}

static int client_run(struct client *c, int port, unsigned max_ms)
{
    if (client_start(c, port) < 0)
        return -1;
    return client_loop(c, max_ms);
}

/* Keep the loop running for ms (to see that nothing else arrives). */
static void loop_for(struct event_base *base, unsigned ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    struct event *t;
    int fired = 0;

    /* The timer's own flag: libevent's clock may run a hair ahead of ours. */
    t = evtimer_new(base, on_watchdog, &fired);
    evtimer_add(t, &tv);
    while (!fired)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(t);
}

static struct tls_ctx *make_ctx(const struct tls_ctx_opts *o)
{
    char err[256];
    struct tls_ctx *ctx = tls_ctx_new(o, err, sizeof(err));

    if (!ctx)
        fprintf(stderr, "tls_ctx_new: %s\n", err);
    return ctx;
}

/* ---- TLS handshake cases against openssl s_server ------------------------ */

struct hs_result {
    int ok; /* handshake done and the reversed line came back */
    char *error;
    char *version;
    char *cipher;
    int resumed;
};

static void hs_result_free(struct hs_result *r)
{
    free(r->error);
    free(r->version);
    free(r->cipher);
}

/* Optional context settings for hs_case(). */
struct hs_extra {
    const char *pin_file; /* file holding a base64 pin, in CERTDIR */
    const char *ciphers;
};

/*
 * One connection: TLS to the server on port, send a line, expect it reversed.
 * "ok" also requires that no event came re-entrantly.
 */
static void tls_session(struct event_base *base, struct tls_ctx *ctx, int port, const char *name,
                        const char *key, struct hs_result *r)
{
    static const char line[] = "mailpool\n";
    struct client c;

    memset(r, 0, sizeof(*r));
    client_init(&c, base);
    c.ctx = ctx;
    c.server_name = name;
    c.session_key = key;
    c.send = line;
    c.send_len = strlen(line);
    c.expect = strlen("loopliam\n");
    if (client_run(&c, port, 15000) == 0 && c.count[IOEV_TLS_DONE] == 1 &&
        c.count[IOEV_ERROR] == 0) {
        size_t n = evbuffer_get_length(c.got);
        char *got = (char *)evbuffer_pullup(c.got, -1);

        r->ok = n >= 8 && memcmp(got, "loopliam", 8) == 0 && c.reentrant == 0;
    }
    if (c.error)
        r->error = strdup(c.error);
    else if (c.starttls_rc < 0)
        r->error = strdup(c.starttls_err);
    r->version = c.version ? strdup(c.version) : NULL;
    r->cipher = c.cipher ? strdup(c.cipher) : NULL;
    r->resumed = c.resumed;
    client_done(&c);
}

/* One TLS connection to the Python echo server: send "ping", expect it back. */
static void tls_session_echo(struct event_base *base, struct tls_ctx *ctx, int port,
                             const char *key, struct hs_result *r)
{
    struct client c;

    memset(r, 0, sizeof(*r));
    client_init(&c, base);
    c.ctx = ctx;
    c.server_name = "localhost";
    c.session_key = key;
    c.send = "ping";
    c.send_len = 4;
    c.expect = 4;
    if (client_run(&c, port, 15000) == 0 && c.count[IOEV_TLS_DONE] == 1 &&
        evbuffer_get_length(c.got) == 4)
        r->ok = memcmp(evbuffer_pullup(c.got, -1), "ping", 4) == 0;
    if (c.error)
        r->error = strdup(c.error);
    r->resumed = c.resumed;
    client_done(&c);
}

/* Start s_server with cert (+ extra args), connect once with opts and name. */
static void hs_case_x(const char *tag, const char *cert, const char *const extra[],
                      const struct tls_ctx_opts *o, const struct hs_extra *x, const char *name,
                      struct hs_result *r)
{
    struct event_base *base = event_base_new();
    struct server s;
    struct tls_ctx *ctx;
    char err[256];

    memset(r, 0, sizeof(*r));
    if (s_server_start(&s, tag, cert, extra) < 0) {
        failures++;
        event_base_free(base);
        return;
    }
    ctx = make_ctx(o);
    if (ctx && x && x->pin_file) {
        char *path = path_in(certdir, x->pin_file), *pin = read_file(path);

        CHECK(tls_ctx_add_pin(ctx, pin, err, sizeof(err)) == 0, "pin: %s", err);
        free(pin);
        free(path);
    }
    if (ctx && x && x->ciphers)
        CHECK(tls_ctx_set_ciphers(ctx, x->ciphers, err, sizeof(err)) == 0, "ciphers: %s", err);
    if (ctx) {
        tls_session(base, ctx, s.port, name, "test", r);
        tls_ctx_free(ctx);
    } else {
        failures++;
    }
    server_stop(&s);
    event_base_free(base);
    fprintf(stderr, "%s: ok=%d version=%s error=%s\n", tag, r->ok, r->version ? r->version : "-",
            r->error ? r->error : "-");
}

static void hs_case(const char *tag, const char *cert, const char *const extra[],
                    const struct tls_ctx_opts *o, const char *name, struct hs_result *r)
{
    hs_case_x(tag, cert, extra, o, NULL, name, r);
}

static struct tls_ctx_opts test_opts(void)
{
    static char *ca;
    struct tls_ctx_opts o;

    if (!ca)
        ca = path_in(certdir, "ca.crt");
    memset(&o, 0, sizeof(o));
    o.ca_file = ca;
    o.verify = 1;
    return o;
}

static int has(const char *hay, const char *needle)
{
    return hay && strstr(hay, needle) != NULL;
}

static void case_handshake_ok(void)
{
    struct tls_ctx_opts o = test_opts();
    struct hs_result r;

    hs_case("handshake_ok", "server.crt", NULL, &o, "localhost", &r);
    CHECK(r.ok, "handshake: %s", r.error ? r.error : "no round trip");
    CHECK(r.version && strcmp(r.version, "TLSv1.3") == 0, "version %s",
          r.version ? r.version : "(none)");
    CHECK(!r.resumed, "first connection reported as resumed");
    /* An AEAD suite: ChaCha20-Poly1305 first where wolfSSL has no hardware AES. */
    CHECK(r.cipher && (strstr(r.cipher, "GCM") || strstr(r.cipher, "CHACHA20-POLY1305")),
          "cipher %s", r.cipher ? r.cipher : "(none)");
    hs_result_free(&r);
}

static void case_ciphers(void)
{
    static const char *const tls12[] = {"-tls1_2", NULL};
    struct tls_ctx_opts o = test_opts();
    struct hs_extra x = {NULL, "ECDHE-RSA-CHACHA20-POLY1305"};
    struct hs_result r;
    struct tls_ctx *ctx;
    char err[256];

    hs_case_x("ciphers", "server.crt", tls12, &o, &x, "localhost", &r);
    CHECK(r.ok, "handshake: %s", r.error ? r.error : "no round trip");
    CHECK(r.cipher && strcmp(r.cipher, "ECDHE-RSA-CHACHA20-POLY1305") == 0, "cipher %s",
          r.cipher ? r.cipher : "(none)");
    hs_result_free(&r);

    /* The default list offers no SHA-1 suite: a server with only those is refused. */
    {
        static const char *const sha1only[] = {"-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA", NULL};

        hs_case("ciphers_sha1_refused", "server.crt", sha1only, &o, "localhost", &r);
        CHECK(!r.ok, "SHA-1 suite accepted by default (cipher %s)", r.cipher ? r.cipher : "-");
        hs_result_free(&r);
    }

    ctx = make_ctx(&o);
    CHECK(ctx && tls_ctx_set_ciphers(ctx, "NO-SUCH-SUITE", err, sizeof(err)) < 0,
          "unknown cipher list accepted");
    tls_ctx_free(ctx);
}

static void case_pin(void)
{
    struct tls_ctx_opts o = test_opts();
    struct hs_extra good = {"server.pin", NULL}, bad = {"otherca.pin", NULL};
    struct hs_result r;
    struct tls_ctx *ctx;
    char err[256];

    hs_case_x("pin_ok", "server.crt", NULL, &o, &good, "localhost", &r);
    CHECK(r.ok, "matching pin: %s", r.error ? r.error : "no round trip");
    hs_result_free(&r);

    /* The CA chain is valid, the key is not the pinned one. */
    hs_case_x("pin_mismatch", "server.crt", NULL, &o, &bad, "localhost", &r);
    CHECK(!r.ok, "pin mismatch accepted");
    CHECK(has(r.error, "pin mismatch"), "reason: %s", r.error ? r.error : "(none)");
    hs_result_free(&r);

    /* trusted_site plus a pin: the pin alone decides. */
    o.verify = 0;
    hs_case_x("pin_trusted_ok", "selfsigned.crt", NULL, &o, &good, "localhost", &r);
    CHECK(r.ok, "pin without CA check: %s", r.error ? r.error : "no round trip");
    hs_result_free(&r);
    hs_case_x("pin_trusted_bad", "selfsigned.crt", NULL, &o, &bad, "localhost", &r);
    CHECK(!r.ok && has(r.error, "pin mismatch"), "trusted_site pin mismatch: %s",
          r.error ? r.error : "accepted");
    hs_result_free(&r);

    ctx = make_ctx(&o);
    CHECK(ctx && tls_ctx_add_pin(ctx, "not-base64!", err, sizeof(err)) < 0,
          "bad pin text accepted");
    CHECK(ctx && tls_ctx_add_pin(ctx, "AAAA", err, sizeof(err)) < 0, "short pin accepted");
    tls_ctx_free(ctx);
}

static void case_ip_name(void)
{
    struct tls_ctx_opts o = test_opts();
    struct hs_result r;

    /* subjectAltName IP:127.0.0.1 */
    hs_case("ip_name_ok", "server.crt", NULL, &o, "127.0.0.1", &r);
    CHECK(r.ok, "IP name: %s", r.error ? r.error : "no round trip");
    hs_result_free(&r);

    hs_case("ip_name_v6", "server.crt", NULL, &o, "::1", &r);
    CHECK(r.ok, "IPv6 literal ::1 against IP:::1: %s", r.error ? r.error : "no round trip");
    hs_result_free(&r);

    hs_case("ip_name_other", "server.crt", NULL, &o, "127.0.0.2", &r);
    CHECK(!r.ok, "certificate for 127.0.0.1 accepted for 127.0.0.2");
    CHECK(has(r.error, "mismatch"), "reason: %s", r.error ? r.error : "(none)");
    hs_result_free(&r);
}

static void case_untrusted_ca(void)
{
    struct tls_ctx_opts o = test_opts();
    char *other = path_in(certdir, "otherca.crt");
    struct hs_result r;

    o.ca_file = other;
    hs_case("untrusted_ca", "server.crt", NULL, &o, "localhost", &r);
    CHECK(!r.ok, "certificate from an untrusted CA accepted");
    CHECK(has(r.error, "certificate verify failed") && has(r.error, "trusted CA"), "reason: %s",
          r.error ? r.error : "(none)");
    hs_result_free(&r);
    free(other);
}

static void case_system_bundle(void)
{
    struct tls_ctx_opts o;
    struct hs_result r;

    /* The default bundle must load; our test CA is not in it. */
    memset(&o, 0, sizeof(o));
    o.verify = 1;
    hs_case("system_bundle", "server.crt", NULL, &o, "localhost", &r);
    CHECK(!r.ok, "test CA trusted through the system bundle");
    CHECK(has(r.error, "certificate verify failed"), "reason: %s", r.error ? r.error : "(none)");
    hs_result_free(&r);
}

static void case_wrong_host(void)
{
    struct tls_ctx_opts o = test_opts();
    struct hs_result r;

    hs_case("wrong_host", "wrongname.crt", NULL, &o, "localhost", &r);
    CHECK(!r.ok, "certificate for other.example accepted for localhost");
    CHECK(has(r.error, "host name mismatch") && has(r.error, "localhost"), "reason: %s",
          r.error ? r.error : "(none)");
    hs_result_free(&r);

    /* trusted_site skips the name check too. */
    o.verify = 0;
    hs_case("wrong_host_trusted", "wrongname.crt", NULL, &o, "localhost", &r);
    CHECK(r.ok, "trusted_site: %s", r.error ? r.error : "no round trip");
    hs_result_free(&r);
}

static void case_expired(void)
{
    struct tls_ctx_opts o = test_opts();
    struct hs_result r;

    hs_case("expired", "expired.crt", NULL, &o, "localhost", &r);
    CHECK(!r.ok, "expired certificate accepted");
    CHECK(has(r.error, "expired"), "reason: %s", r.error ? r.error : "(none)");
    hs_result_free(&r);
}

static void case_self_signed(void)
{
    struct tls_ctx_opts o = test_opts();
    struct hs_result r;

    hs_case("self_signed", "selfsigned.crt", NULL, &o, "localhost", &r);
    CHECK(!r.ok, "self-signed certificate accepted");
    CHECK(has(r.error, "self-signed"), "reason: %s", r.error ? r.error : "(none)");
    hs_result_free(&r);

    o.verify = 0;
    hs_case("self_signed_trusted", "selfsigned.crt", NULL, &o, "localhost", &r);
    CHECK(r.ok, "trusted_site: %s", r.error ? r.error : "no round trip");
    hs_result_free(&r);
}

static void case_legacy(void)
{
    /* OpenSSL 3 allows TLS 1.1 only at security level 0. */
    static const char *const tls11[] = {"-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0", NULL};
    struct tls_ctx_opts o = test_opts();
    struct hs_result r;

    hs_case("legacy_refused", "server.crt", tls11, &o, "localhost", &r);
    CHECK(!r.ok, "TLS 1.1 accepted without secure_fallback (version %s)",
          r.version ? r.version : "-");
    CHECK(has(r.error, "protocol version"), "reason: %s", r.error ? r.error : "(none)");
    hs_result_free(&r);

    o.allow_legacy = 1;
    hs_case("legacy_allowed", "server.crt", tls11, &o, "localhost", &r);
    CHECK(r.ok, "secure_fallback: %s", r.error ? r.error : "no round trip");
    CHECK(r.version && strcmp(r.version, "TLSv1.1") == 0, "version %s",
          r.version ? r.version : "(none)");
    hs_result_free(&r);
}

static void case_min_version(void)
{
    static const char *const tls12[] = {"-tls1_2", NULL};
    struct tls_ctx_opts o = test_opts();
    struct hs_result r;
    char err[256];
    struct tls_ctx *ctx;

    o.min_version = "1.3";
    hs_case("min_version_13", "server.crt", tls12, &o, "localhost", &r);
    CHECK(!r.ok, "TLS 1.2 server accepted with min_version 1.3");
    CHECK(has(r.error, "TLSv1.3"), "reason: %s", r.error ? r.error : "(none)");
    hs_result_free(&r);

    o.min_version = "1.2";
    hs_case("min_version_12", "server.crt", tls12, &o, "localhost", &r);
    CHECK(r.ok, "min_version 1.2: %s", r.error ? r.error : "no round trip");
    CHECK(r.version && strcmp(r.version, "TLSv1.2") == 0, "version %s",
          r.version ? r.version : "(none)");
    hs_result_free(&r);

    o.min_version = "1.1"; /* needs secure_fallback */
    ctx = tls_ctx_new(&o, err, sizeof(err));
    CHECK(ctx == NULL, "min_version 1.1 accepted without allow_legacy");
    tls_ctx_free(ctx);
    o.min_version = "2.0";
    ctx = tls_ctx_new(&o, err, sizeof(err));
    CHECK(ctx == NULL && strstr(err, "2.0"), "bad min_version: %s", err);
    tls_ctx_free(ctx);
    o.min_version = "1.0";
    o.allow_legacy = 1;
    ctx = tls_ctx_new(&o, err, sizeof(err));
    CHECK(ctx != NULL, "min_version 1.0 with allow_legacy: %s", err);
    tls_ctx_free(ctx);
}

static void resume_case(const char *tag, const char *const extra[], const char *want_version,
                        int open_first)
{
    struct event_base *base = event_base_new();
    struct tls_ctx_opts o = test_opts();
    struct hs_result r1, r2, r3;
    struct server s;
    struct tls_ctx *ctx;
    char key[64];

    if (s_server_start(&s, tag, "server.crt", extra) < 0) {
        failures++;
        event_base_free(base);
        return;
    }
    snprintf(key, sizeof(key), "127.0.0.1:%d", s.port);
    ctx = make_ctx(&o);
    if (!ctx) {
        failures++;
        server_stop(&s);
        event_base_free(base);
        return;
    }
    tls_session(base, ctx, s.port, "localhost", key, &r1);
    tls_session(base, ctx, s.port, "localhost", key, &r2);
    tls_session(base, ctx, s.port, "localhost", "another:25", &r3);
    CHECK(r1.ok && r2.ok && r3.ok, "handshakes: %s / %s / %s", r1.error ? r1.error : "-",
          r2.error ? r2.error : "-", r3.error ? r3.error : "-");
    CHECK(r1.version && strcmp(r1.version, want_version) == 0, "version %s",
          r1.version ? r1.version : "(none)");
    CHECK(!r1.resumed, "first connection resumed");
    CHECK(r2.resumed, "second connection with the same key not resumed");
    CHECK(!r3.resumed, "connection with another key resumed");
    hs_result_free(&r1);
    hs_result_free(&r2);
    hs_result_free(&r3);
    if (open_first) {
        /*
         * Again with the first connection still open: the session (for
         * TLS 1.3 the ticket that came after the handshake) must already
         * be saved, not only when a connection is freed.  s_server serves
         * one client at a time, so a Python server takes the second one.
         */
        struct client c;
        struct server s2;
        struct hs_result r4;

        tls_ctx_free(ctx);
        ctx = make_ctx(&o);
        if (py_server_start(&s2, "resume_open", "echo") < 0) {
            failures++;
        } else {
            snprintf(key, sizeof(key), "127.0.0.1:%d", s2.port);
            client_init(&c, base);
            c.ctx = ctx;
            c.server_name = "localhost";
            c.session_key = key;
            c.send = "ping";
            c.send_len = 4;
            c.expect = 4;
            CHECK(client_run(&c, s2.port, 15000) == 0 && c.count[IOEV_TLS_DONE] == 1,
                  "first connection: %s", c.error ? c.error : "-");
            tls_session_echo(base, ctx, s2.port, key, &r4);
            CHECK(r4.ok && r4.resumed, "not resumed while the first connection is open (%s)",
                  r4.error ? r4.error : "-");
            hs_result_free(&r4);
            client_done(&c);
            server_stop(&s2);
        }
    }
    tls_ctx_free(ctx);
    server_stop(&s);
    event_base_free(base);
}

static void case_resume_tls13(void)
{
    resume_case("resume_tls13", NULL, "TLSv1.3", 1);
}

static void case_resume_tls12(void)
{
    static const char *const tls12[] = {"-tls1_2", NULL};

    resume_case("resume_tls12", tls12, "TLSv1.2", 0);
}

static void case_resume_tls12_id(void)
{
    /* No tickets: resumption by session ID. */
    static const char *const tls12[] = {"-tls1_2", "-no_ticket", NULL};

    resume_case("resume_tls12_id", tls12, "TLSv1.2", 0);
}

/* ---- cases against the Python TLS peer ---------------------------------- */

static void case_sni(void)
{
    struct event_base *base = event_base_new();
    struct tls_ctx_opts o = test_opts();
    struct tls_ctx *ctx;
    struct server s;
    struct client c;
    char *log, *logpath = path_in(certdir, "sni.log");
    const char *names[] = {"localhost", "127.0.0.1"};
    int i;

    if (py_server_start(&s, "sni", "echo") < 0) {
        failures++;
        free(logpath);
        event_base_free(base);
        return;
    }
    ctx = make_ctx(&o);
    for (i = 0; i < 2 && ctx; i++) {
        client_init(&c, base);
        c.ctx = ctx;
        c.server_name = names[i];
        c.send = "x";
        c.send_len = 1;
        c.expect = 1;
        CHECK(client_run(&c, s.port, 15000) == 0 && c.count[IOEV_TLS_DONE] == 1,
              "handshake as %s: %s", names[i], c.error ? c.error : c.starttls_err);
        client_done(&c);
    }
    tls_ctx_free(ctx);
    server_stop(&s);
    log = read_file(logpath);
    free(logpath);
    /* RFC 6066: host names are sent, IP literals are not. */
    CHECK(has(log, "SNI localhost\n"), "SNI not sent for localhost:\n%s", log);
    CHECK(has(log, "SNI None\n") && !has(log, "SNI 127.0.0.1"), "SNI for an IP literal:\n%s", log);
    free(log);
    event_base_free(base);
}

static void case_echo_5mb(void)
{
    enum { SIZE = 5 * 1024 * 1024 };
    struct event_base *base = event_base_new();
    struct tls_ctx_opts o = test_opts();
    unsigned char *data = malloc(SIZE);
    unsigned long long x = 88172645463325252ULL;
    struct tls_ctx *ctx;
    struct server s;
    struct client c;
    double t0;
    size_t i;

    for (i = 0; i < SIZE; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data[i] = (unsigned char)x;
    }
    if (py_server_start(&s, "echo_5mb", "echo") < 0) {
        failures++;
        free(data);
        event_base_free(base);
        return;
    }
    ctx = make_ctx(&o);
    client_init(&c, base);
    c.ctx = ctx;
    c.server_name = "localhost";
    c.send = data;
    c.send_len = SIZE;
    c.expect = SIZE;
    t0 = now_ms();
    CHECK(client_run(&c, s.port, 60000) == 0, "echo did not complete");
    fprintf(stderr, "5 MB echo: %zu bytes back in %.0f ms\n", evbuffer_get_length(c.got),
            now_ms() - t0);
    CHECK(evbuffer_get_length(c.got) == SIZE, "got %zu bytes", evbuffer_get_length(c.got));
    CHECK(evbuffer_get_length(c.got) == SIZE && memcmp(evbuffer_pullup(c.got, -1), data, SIZE) == 0,
          "echoed bytes differ");
    CHECK(c.count[IOEV_FLUSHED] == 1, "FLUSHED %d times", c.count[IOEV_FLUSHED]);
    CHECK(c.count[IOEV_ERROR] == 0, "error: %s", c.error ? c.error : "-");
    CHECK(c.reentrant == 0, "events delivered from inside ioev calls");
    client_done(&c);
    tls_ctx_free(ctx);
    server_stop(&s);
    free(data);
    event_base_free(base);
}

static void tls_eof_case(const char *mode)
{
    struct event_base *base = event_base_new();
    struct tls_ctx_opts o = test_opts();
    struct tls_ctx *ctx;
    struct server s;
    struct client c;
    char tag[64];

    snprintf(tag, sizeof(tag), "eof_%s", mode);
    if (py_server_start(&s, tag, mode) < 0) {
        failures++;
        event_base_free(base);
        return;
    }
    ctx = make_ctx(&o);
    client_init(&c, base);
    c.ctx = ctx;
    c.server_name = "localhost";
    /* Wait for the server's close rather than finishing at TLS_DONE. */
    c.expect = 1;
    CHECK(client_run(&c, s.port, 15000) == 0, "no event after the server closed");
    CHECK(c.count[IOEV_TLS_DONE] == 1, "handshake: %s", c.error ? c.error : "-");
    CHECK(c.count[IOEV_EOF] == 1 && c.count[IOEV_ERROR] == 0, "%s: EOF %d ERROR %d (%s)", mode,
          c.count[IOEV_EOF], c.count[IOEV_ERROR], c.error ? c.error : "-");
    client_done(&c);
    tls_ctx_free(ctx);
    server_stop(&s);
    event_base_free(base);
}

static void case_eof_tls(void)
{
    tls_eof_case("close_notify");
    tls_eof_case("abrupt");
}

/* ---- plain socket cases ------------------------------------------------- */

static void case_connect_refused(void)
{
    struct event_base *base = event_base_new();
    struct listener l;
    struct client c;

    listener_open(&l, base, LST_NO_ACCEPT, NULL, 0, 0);
    client_init(&c, base);
    CHECK(client_run(&c, l.port, 5000) == 0, "no event");
    CHECK(c.count[IOEV_ERROR] == 1 && c.count[IOEV_CONNECTED] == 0, "ERROR %d CONNECTED %d",
          c.count[IOEV_ERROR], c.count[IOEV_CONNECTED]);
    CHECK(has(c.error, "connect: Connection refused"), "reason: %s", c.error ? c.error : "-");
    client_done(&c);
    listener_close(&l);
    event_base_free(base);
}

static void case_timeout(void)
{
    struct event_base *base = event_base_new();
    struct listener l;
    struct client c;
    double t0, dt;

    /* The kernel completes the connect; nobody ever says anything. */
    listener_open(&l, base, LST_NO_ACCEPT, NULL, 0, 1);
    client_init(&c, base);
    c.timeout_ms = 300;
    c.expect = 1; /* stay after CONNECTED */
    t0 = now_ms();
    CHECK(client_run(&c, l.port, 5000) == 0, "no event");
    dt = now_ms() - t0;
    CHECK(c.count[IOEV_CONNECTED] == 1 && c.count[IOEV_TIMEOUT] == 1, "CONNECTED %d TIMEOUT %d",
          c.count[IOEV_CONNECTED], c.count[IOEV_TIMEOUT]);
    CHECK(dt >= 290 && dt < 3000, "deadline after %.0f ms", dt);
    /* One-shot: no second TIMEOUT; and 0 cancels. */
    c.finished = 0;
    loop_for(base, 400);
    CHECK(c.count[IOEV_TIMEOUT] == 1, "TIMEOUT %d times", c.count[IOEV_TIMEOUT]);
    ioev_set_timeout(c.io, 100);
    ioev_set_timeout(c.io, 0);
    loop_for(base, 300);
    CHECK(c.count[IOEV_TIMEOUT] == 1, "cancelled deadline fired");
    client_done(&c);
    listener_close(&l);
    event_base_free(base);
}

struct inject {
    struct client c;
    struct tls_ctx *ctx;
    int refused_rc;
    char refused_err[256];
    int accepted_rc;
    char accepted_err[256];
};

static void inject_cb(struct ioev *io, enum ioev_event ev, void *arg)
{
    struct inject *t = arg;
    struct evbuffer *in = ioev_input(io);

    t->c.count[ev]++;
    if (ev != IOEV_READ) {
        if (ev == IOEV_ERROR || ev == IOEV_EOF)
            client_finish(&t->c);
        return;
    }
    /* Wait until the reply and the injected line are both buffered. */
    if (evbuffer_search(in, "250 injected\r\n", 14, NULL).pos < 0)
        return;
    t->c.in_call = 1;
    t->refused_rc =
        ioev_start_tls(io, t->ctx, "localhost", NULL, t->refused_err, sizeof(t->refused_err));
    /* Once the owner has thrown the plaintext away, TLS may start. */
    evbuffer_drain(in, evbuffer_get_length(in));
    t->accepted_rc =
        ioev_start_tls(io, t->ctx, "localhost", NULL, t->accepted_err, sizeof(t->accepted_err));
    t->c.in_call = 0;
    client_finish(&t->c);
}

static void case_starttls_injection(void)
{
    static const char reply[] = "220 2.0.0 ready to start TLS\r\n250 injected\r\n";
    struct event_base *base = event_base_new();
    struct tls_ctx_opts o = test_opts();
    struct listener l;
    struct inject t;
    struct sockaddr_in sin;
    char err[256];
    int fired = 0;
    struct event *wd;
    struct timeval tv = {5, 0};

    memset(&t, 0, sizeof(t));
    client_init(&t.c, base);
    t.ctx = make_ctx(&o);
    listener_open(&l, base, LST_SEND_KEEP, reply, strlen(reply), 1);
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons((unsigned short)l.port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    t.c.io =
        ioev_connect(base, (struct sockaddr *)&sin, sizeof(sin), inject_cb, &t, err, sizeof(err));
    wd = evtimer_new(base, on_watchdog, &fired);
    evtimer_add(wd, &tv);
    while (!t.c.finished && !fired)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(wd);
    CHECK(t.c.finished, "never got the reply");
    CHECK(t.refused_rc == -1, "TLS started over buffered plaintext");
    CHECK(has(t.refused_err, "STARTTLS injection"), "reason: %s", t.refused_err);
    CHECK(t.accepted_rc == 0, "start_tls on an empty buffer: %s", t.accepted_err);
    CHECK(ioev_is_tls(t.c.io), "not in TLS after start_tls");
    /* The handshake with this plain peer fails later, from the loop. */
    t.c.finished = 0;
    loop_for(base, 200);
    client_done(&t.c);
    tls_ctx_free(t.ctx);
    listener_close(&l);
    event_base_free(base);
}

static void case_eof_plain(void)
{
    static const char bye[] = "221 bye\r\n";
    struct event_base *base = event_base_new();
    struct listener l;
    struct client c;

    listener_open(&l, base, LST_SEND_CLOSE, bye, strlen(bye), 1);
    client_init(&c, base);
    c.expect = 1000; /* more than will come: finish on EOF */
    CHECK(client_run(&c, l.port, 5000) == 0, "no EOF");
    CHECK(c.count[IOEV_EOF] == 1 && c.count[IOEV_ERROR] == 0, "EOF %d ERROR %d (%s)",
          c.count[IOEV_EOF], c.count[IOEV_ERROR], c.error ? c.error : "-");
    CHECK(evbuffer_get_length(c.got) == strlen(bye) &&
              memcmp(evbuffer_pullup(c.got, -1), bye, strlen(bye)) == 0,
          "data before EOF lost");
    CHECK(c.norder >= 3 && c.order[c.norder - 1] == IOEV_EOF && c.order[c.norder - 2] == IOEV_READ,
          "EOF not after the data");
    client_done(&c);
    listener_close(&l);
    event_base_free(base);
}

static void case_flush_deferred(void)
{
    struct event_base *base = event_base_new();
    struct listener l;
    struct client c;

    listener_open(&l, base, LST_SEND_KEEP, NULL, 0, 1);
    client_init(&c, base);
    c.expect = 1; /* stay open after CONNECTED */
    CHECK(client_start(&c, l.port) == 0, "connect");
    loop_for(base, 200);
    CHECK(c.count[IOEV_CONNECTED] == 1, "not connected");
    /* An empty flush reports FLUSHED from the loop, never from inside the call. */
    c.in_call = 1;
    ioev_flush(c.io);
    c.in_call = 0;
    CHECK(c.count[IOEV_FLUSHED] == 0, "FLUSHED delivered inside ioev_flush");
    loop_for(base, 100);
    CHECK(c.count[IOEV_FLUSHED] == 1, "FLUSHED %d times", c.count[IOEV_FLUSHED]);
    c.in_call = 1;
    evbuffer_add(ioev_output(c.io), "NOOP\r\n", 6);
    evbuffer_add(ioev_output(c.io), "QUIT\r\n", 6);
    ioev_flush(c.io);
    ioev_flush(c.io);
    c.in_call = 0;
    loop_for(base, 100);
    CHECK(c.count[IOEV_FLUSHED] == 2, "FLUSHED %d times after a write", c.count[IOEV_FLUSHED]);
    CHECK(c.reentrant == 0, "re-entrant events: %d", c.reentrant);
    {
        char buf[64];
        ssize_t n = recv(l.conn, buf, sizeof(buf), MSG_DONTWAIT);

        CHECK(n == 12 && memcmp(buf, "NOOP\r\nQUIT\r\n", 12) == 0, "peer got %zd bytes", n);
    }
    client_done(&c);
    listener_close(&l);
    event_base_free(base);
}

/* Free from inside the callback at event ev; nothing may arrive afterwards. */
static void free_case(int port, struct tls_ctx *ctx, enum ioev_event ev, const char *what)
{
    struct event_base *base = event_base_new();
    struct client c;

    client_init(&c, base);
    c.ctx = ctx;
    c.server_name = "localhost";
    c.free_on = (int)ev;
    c.timeout_ms = 150; /* armed, must never fire after the free */
    c.send = "hello\r\n";
    c.send_len = 7;
    c.expect = 1000000;
    CHECK(client_run(&c, port, 10000) == 0, "%s: no event", what);
    CHECK(c.freed, "%s: never freed (events: connected %d read %d error %d)", what,
          c.count[IOEV_CONNECTED], c.count[IOEV_READ], c.count[IOEV_ERROR]);
    c.finished = 0;
    loop_for(base, 300);
    CHECK(c.after_free == 0, "%s: %d events after ioev_free", what, c.after_free);
    client_done(&c);
    event_base_free(base);
}

static void case_free_in_callback(void)
{
    static char flood[256 * 1024];
    struct event_base *lbase = event_base_new();
    struct tls_ctx_opts o = test_opts();
    struct listener talk, refused, silent;
    struct tls_ctx *ctx;
    struct server s;
    struct client c;
    struct sockaddr_in sin;
    char err[256];

    memset(flood, 'x', sizeof(flood));
    /* The listeners live on their own base; the kernel queues what they send. */
    listener_open(&talk, lbase, LST_SEND_KEEP, flood, sizeof(flood), 1);
    listener_open(&refused, lbase, LST_NO_ACCEPT, NULL, 0, 0);
    listener_open(&silent, lbase, LST_NO_ACCEPT, NULL, 0, 1);
    ctx = make_ctx(&o);

    /* The talking listener must accept: run its loop briefly after each connect. */
    {
        struct event_base *base = event_base_new();

        client_init(&c, base);
        c.free_on = IOEV_CONNECTED;
        c.send = "x";
        c.send_len = 1;
        memset(&sin, 0, sizeof(sin));
        sin.sin_family = AF_INET;
        sin.sin_port = htons((unsigned short)silent.port);
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        CHECK(client_run(&c, silent.port, 5000) == 0 && c.freed, "free at CONNECTED");
        loop_for(base, 200);
        CHECK(c.after_free == 0, "events after free at CONNECTED");
        client_done(&c);

        /* Free with pending deferred events, outside any callback. */
        client_init(&c, base);
        c.io = ioev_connect(base, (struct sockaddr *)&sin, sizeof(sin), client_cb, &c, err,
                            sizeof(err));
        ioev_flush(c.io);
        ioev_set_timeout(c.io, 50);
        ioev_free(c.io);
        c.io = NULL;
        c.freed = 1;
        loop_for(base, 200);
        CHECK(c.after_free == 0 && c.norder == 0, "events after an immediate free");
        client_done(&c);
        event_base_free(base);
    }
    free_case(refused.port, NULL, IOEV_ERROR, "free at ERROR");
    free_case(silent.port, NULL, IOEV_TIMEOUT, "free at TIMEOUT");

    /* READ: the peer floods, more reads would follow if the ioev were still alive. */
    {
        struct event_base *base = event_base_new();

        client_init(&c, base);
        c.free_on = IOEV_READ;
        c.send = "hello\r\n";
        c.send_len = 7;
        c.expect = 1000000;
        c.timeout_ms = 100;
        /* Accept on the listener base while the client waits. */
        memset(&sin, 0, sizeof(sin));
        sin.sin_family = AF_INET;
        sin.sin_port = htons((unsigned short)talk.port);
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        c.io = ioev_connect(base, (struct sockaddr *)&sin, sizeof(sin), client_cb, &c, err,
                            sizeof(err));
        loop_for(lbase, 100);
        while (!c.finished)
            event_base_loop(base, EVLOOP_ONCE);
        CHECK(c.freed && c.count[IOEV_READ] == 1, "free at READ: reads %d", c.count[IOEV_READ]);
        loop_for(base, 300);
        CHECK(c.after_free == 0, "free at READ: %d events after free", c.after_free);
        client_done(&c);
        event_base_free(base);
    }

    if (py_server_start(&s, "free_tls", "echo") == 0) {
        free_case(s.port, ctx, IOEV_TLS_DONE, "free at TLS_DONE");
        free_case(s.port, ctx, IOEV_FLUSHED, "free at FLUSHED (TLS)");
        free_case(s.port, ctx, IOEV_READ, "free at READ (TLS)");
        server_stop(&s);
    } else {
        failures++;
    }
    tls_ctx_free(ctx);
    listener_close(&talk);
    listener_close(&refused);
    listener_close(&silent);
    event_base_free(lbase);
}

static const struct {
    const char *name;
    void (*fn)(void);
} cases[] = {
    {"handshake_ok", case_handshake_ok},
    {"ip_name", case_ip_name},
    {"untrusted_ca", case_untrusted_ca},
    {"system_bundle", case_system_bundle},
    {"wrong_host", case_wrong_host},
    {"expired", case_expired},
    {"self_signed", case_self_signed},
    {"legacy", case_legacy},
    {"min_version", case_min_version},
    {"resume_tls13", case_resume_tls13},
    {"resume_tls12", case_resume_tls12},
    {"resume_tls12_id", case_resume_tls12_id},
    {"ciphers", case_ciphers},
    {"pin", case_pin},
    {"sni", case_sni},
    {"echo_5mb", case_echo_5mb},
    {"eof_tls", case_eof_tls},
    {"connect_refused", case_connect_refused},
    {"timeout", case_timeout},
    {"starttls_injection", case_starttls_injection},
    {"eof_plain", case_eof_plain},
    {"flush_deferred", case_flush_deferred},
    {"free_in_callback", case_free_in_callback},
};

int main(int argc, char **argv)
{
    char err[256];
    size_t i;

    if (argc != 4) {
        fprintf(stderr, "usage: %s CASE CERTDIR SRCDIR\n", argv[0]);
        return 2;
    }
    certdir = argv[2];
    srcdir = argv[3];
    signal(SIGPIPE, SIG_IGN);
    if (tls_init(err, sizeof(err)) < 0) {
        fprintf(stderr, "tls_init: %s\n", err);
        return 1;
    }
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (strcmp(cases[i].name, argv[1]) == 0) {
            cases[i].fn();
            tls_shutdown();
            if (failures)
                fprintf(stderr, "%s: %d check(s) failed\n", argv[1], failures);
            else
                fprintf(stderr, "%s: ok\n", argv[1]);
            return failures ? 1 : 0;
        }
    }
    fprintf(stderr, "unknown case %s\n", argv[1]);
    tls_shutdown();
    return 2;
}
