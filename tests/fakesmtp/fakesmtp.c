/* fakesmtp: a scripted, hermetic fake SMTP upstream for the test suite. It speaks
 * ESMTP (RFC 5321) with PIPELINING (RFC 2920), STARTTLS (RFC 3207), implicit TLS
 * (RFC 8314), AUTH PLAIN/LOGIN (RFC 4954, 4616) and CHUNKING (RFC 3030), and can be
 * scripted to misbehave: wrong, slow, malformed or missing replies, drops, hangs.
 *
 * Command line (a contract with the integration tests; see README.md):
 *
 *   fakesmtp --listen ADDR:PORT --port-file FILE --log FILE [--maildir DIR]
 *            [--tls none|starttls|implicit] [--cert PEM --key PEM] [--script FILE]
 *
 *   ADDR:PORT  127.0.0.1:0, [::1]:0 ... port 0 lets the kernel pick. The bound port is
 *              written to --port-file (temp file + rename) once the socket listens.
 *   Runs until SIGTERM or SIGINT, then exits 0. One thread per connection.
 *
 * Script (one directive per line; a line starting with '#' is a comment, and so is
 * the rest of a line from a '#' that has blank space before and after it):
 *
 *   banner TEXT          greeting (default "220 fake.test ESMTP fakesmtp"; escapes ok)
 *   ehlo CAPABILITY      advertised in EHLO (repeatable; default PIPELINING, 8BITMIME,
 *                        ENHANCEDSTATUSCODES, SIZE 52428800). STARTTLS is added by
 *                        itself in plaintext with --tls starttls; CHUNKING only if listed.
 *   auth MECH...         advertise AUTH MECH... (PLAIN and LOGIN are implemented); with
 *                        --tls starttls only once TLS is up, unless auth-before-tls
 *   auth-before-tls
 *   user NAME PASSWORD   credentials AUTH accepts (repeatable; password = rest of line)
 *   no-ehlo              answer EHLO with 502 (HELO-only server)
 *   idle SECONDS         idle timeout before "421" (default 300)
 *   tls-max-version 1.2  cap the TLS version the server accepts (default: 1.3); 1.1 also
 *                        enables TLS 1.1 with the legacy SHA-1 CBC suites only
 *   require-client-cert CAFILE  demand a client certificate chaining to CAFILE
 *   on PHASE [#N] [match TEXT] ACTION [ARGS]
 *
 * PHASE: connect ehlo helo starttls auth mail rcpt data body dot bdat rset noop quit.
 * #N: only the Nth occurrence of PHASE over the server's lifetime (from 1, counted
 * across connections). match TEXT: only if the command line (for body and dot: the
 * message data) contains TEXT, case-insensitively. ACTION: reply TEXT | raw TEXT |
 * drop | delay MS | hang | inject TEXT (starttls only) | extra TEXT. TEXT understands
 * \r \n \t \\ and \xNN. The first matching rule wins; a delay rule waits and an extra
 * rule sends TEXT as an unsolicited reply (in the body phase: while the data still
 * comes), and then matching goes on with the following rules (or the default reply).
 * A replacing reply counts as a success when it starts with '2' (or '3' for DATA), and
 * the session state follows it; a "reply 421 ..." closes the connection after it is
 * sent (raw does not).
 *
 * Transcript (--log), one line per event, each written with a single append:
 *   <conn> <P|T> C: <command line>      (message data is not logged)
 *   <conn> <P|T> S: <reply line>
 *   <conn> * connect from=ADDR port=PORT
 *   <conn> * tls version=V cipher=C resumed=0|1      and  <conn> * tls-sni name=NAME
 *   <conn> * tls-failed reason=TEXT
 *   <conn> * starttls-discard bytes=N   (plaintext sent behind STARTTLS, thrown away)
 *   <conn> * auth ok user=U mech=M  /  <conn> * auth failed user=U mech=M
 *   <conn> * message n=N bytes=SIZE rcpts=COUNT   (accepted; SIZE of the .eml)
 *   <conn> * message-rejected bytes=SIZE rcpts=COUNT
 *   <conn> * line-too-long bytes=N
 *   <conn> * timeout
 *   <conn> * close
 * CRLF ending a line is stripped; any other byte outside printable ASCII, and '\',
 * is written as \xNN.
 *
 * Maildir (--maildir): msg-N.raw (data as on the wire, dot-stuffed, with the final
 * "." line; for BDAT the chunks concatenated), msg-N.eml (un-stuffed message),
 * msg-N.env ("MAIL FROM:<a>" then "RCPT TO:<b>" per accepted recipient). Each is
 * written to a temp name then renamed; .env is renamed last.
 */
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/hmac.h>
#include <wolfssl/wolfcrypt/pwdbased.h>
#include <wolfssl/wolfcrypt/sha.h>
#include <wolfssl/wolfcrypt/sha256.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define HOSTNAME "fake.test"
#define MAX_CMD_LINE 65536             /* RFC 4954 allows long AUTH lines; be generous */
#define MAX_MESSAGE (64 * 1024 * 1024) /* larger messages get 552 */
#define MAX_RCPTS 1000

/* ------------------------------------------------------------------ buffers */

struct buf {
    char *p;
    size_t len, cap;
};

static void die_oom(void)
{
    fputs("fakesmtp: out of memory\n", stderr);
    abort();
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        die_oom();
    return p;
}

static char *xstrndup(const char *s, size_t n)
{
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

/* Room for one more element in an array of n elements of size sz. */
static void *grow(void *arr, size_t n, size_t sz)
{
    void *p = realloc(arr, (n + 1) * sz);
    if (!p)
        die_oom();
    return p;
}

#define GROW(arr, n) ((arr) = grow((arr), (n), sizeof *(arr)))

static void buf_reserve(struct buf *b, size_t more)
{
    if (b->cap - b->len > more)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len <= more) {
        if (cap > SIZE_MAX / 2)
            die_oom();
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (!p)
        die_oom();
    b->p = p;
    b->cap = cap;
}

/* Appends and keeps the content NUL-terminated, so text buffers are C strings. */
static void buf_add(struct buf *b, const void *d, size_t n)
{
    buf_reserve(b, n);
    if (n)
        memcpy(b->p + b->len, d, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_adds(struct buf *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

__attribute__((format(printf, 2, 3))) static void buf_addf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    buf_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

static void buf_free(struct buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* Transcript escaping: everything outside printable ASCII, and the backslash itself,
 * becomes \xNN so that one event is always one line and the escaping is reversible. */
static void buf_add_escaped(struct buf *b, const char *d, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)d[i];
        if (ch >= 0x20 && ch < 0x7f && ch != '\\')
            buf_add(b, &d[i], 1);
        else
            buf_addf(b, "\\x%02x", ch);
    }
}

static char *escape_dup(const char *d, size_t n)
{
    struct buf b = {0};
    buf_add(&b, "", 0);
    buf_add_escaped(&b, d, n);
    return b.p;
}

/* Case-insensitive search of needle in a byte range (which may contain NULs). */
static bool mem_contains_ci(const char *hay, size_t hn, const char *needle)
{
    size_t nn = strlen(needle);
    if (nn == 0)
        return true;
    for (size_t i = 0; i + nn <= hn; i++) {
        size_t j = 0;
        while (j < nn && tolower((unsigned char)hay[i + j]) == tolower((unsigned char)needle[j]))
            j++;
        if (j == nn)
            return true;
    }
    return false;
}

/* ------------------------------------------------------------------ script */

enum phase {
    PH_CONNECT,
    PH_EHLO,
    PH_HELO,
    PH_STARTTLS,
    PH_AUTH,
    PH_MAIL,
    PH_RCPT,
    PH_DATA,
    PH_BODY,
    PH_DOT,
    PH_BDAT,
    PH_RSET,
    PH_NOOP,
    PH_QUIT,
    PH_LAST
};

static const char *const phase_names[PH_LAST] = {
    "connect", "ehlo", "helo", "starttls", "auth", "mail", "rcpt",
    "data",    "body", "dot",  "bdat",     "rset", "noop", "quit",
};

enum action { ACT_REPLY, ACT_RAW, ACT_DROP, ACT_DELAY, ACT_HANG, ACT_INJECT, ACT_EXTRA };

static const char *const action_names[] = {"reply", "raw",    "drop", "delay",
                                           "hang",  "inject", "extra"};

struct rule {
    enum phase phase;
    unsigned long nth; /* 0: every occurrence */
    char *match;       /* NULL: any */
    enum action act;
    char *text; /* decoded; may hold NULs */
    size_t textlen;
    long ms;
};

struct user {
    char *name, *pass;
};

struct script {
    char *banner;
    size_t banner_len;
    char **caps;
    size_t ncaps;
    char *auth_mechs; /* NULL: no AUTH */
    bool auth_before_tls;
    bool scram_bad_signature; /* send a wrong SCRAM server signature (v=) */
    struct user *users;
    size_t nusers;
    bool no_ehlo;
    struct rule *rules;
    size_t nrules;
    long idle_sec;
    int tls_max;              /* 0, or a WOLFSSL TLS1_x_VERSION */
    char *client_ca;          /* require-client-cert: CA file the client cert must chain to */
    unsigned long size_limit; /* from an advertised "SIZE n"; 0: none */
    bool chunking;
};

/* Decodes \r \n \t \\ \xNN. Returns false on a malformed escape. */
static bool unescape(const char *s, char **out, size_t *outlen)
{
    struct buf b = {0};
    buf_add(&b, "", 0);
    for (; *s; s++) {
        if (*s != '\\') {
            buf_add(&b, s, 1);
            continue;
        }
        s++;
        char ch;
        switch (*s) {
        case 'r':
            ch = '\r';
            break;
        case 'n':
            ch = '\n';
            break;
        case 't':
            ch = '\t';
            break;
        case '\\':
            ch = '\\';
            break;
        case 'x':
            if (isxdigit((unsigned char)s[1]) && isxdigit((unsigned char)s[2])) {
                char hex[3] = {s[1], s[2], 0};
                ch = (char)strtol(hex, NULL, 16);
                s += 2;
                break;
            }
            /* fall through */
        default:
            buf_free(&b);
            return false;
        }
        buf_add(&b, &ch, 1);
    }
    *out = b.p;
    *outlen = b.len;
    return true;
}

static int phase_from_name(const char *w, size_t n)
{
    for (int i = 0; i < PH_LAST; i++)
        if (strlen(phase_names[i]) == n && strncasecmp(phase_names[i], w, n) == 0)
            return i;
    return -1;
}

static int action_from_name(const char *w, size_t n)
{
    for (size_t i = 0; i < sizeof action_names / sizeof action_names[0]; i++)
        if (strlen(action_names[i]) == n && strncasecmp(action_names[i], w, n) == 0)
            return (int)i;
    return -1;
}

static const char *skip_ws(const char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    return s;
}

static size_t word_len(const char *s)
{
    size_t n = 0;
    while (s[n] && s[n] != ' ' && s[n] != '\t')
        n++;
    return n;
}

/* Parses "on PHASE [#N] [match TEXT] ACTION [ARGS]" (after "on"). Returns an error
 * message or NULL. */
static const char *parse_rule(const char *s, struct rule *r)
{
    memset(r, 0, sizeof *r);
    s = skip_ws(s);
    size_t n = word_len(s);
    int ph = phase_from_name(s, n);
    if (ph < 0)
        return "unknown phase";
    r->phase = (enum phase)ph;
    s = skip_ws(s + n);
    int act = -1;
    while (*s && act < 0) {
        n = word_len(s);
        if (s[0] == '#' && n > 1) {
            char *end;
            unsigned long v = strtoul(s + 1, &end, 10);
            if (end != s + n || v == 0)
                return "bad #N";
            r->nth = v;
            s = skip_ws(s + n);
        } else if (n == 5 && strncasecmp(s, "match", 5) == 0) {
            const char *start = skip_ws(s + n), *p = start;
            while (*p) {
                size_t wn = word_len(p);
                if (action_from_name(p, wn) >= 0)
                    break;
                p = skip_ws(p + wn);
            }
            const char *end = p;
            while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
                end--;
            if (end == start)
                return "match needs TEXT";
            free(r->match);
            r->match = xstrndup(start, (size_t)(end - start));
            s = p;
        } else if ((act = action_from_name(s, n)) >= 0) {
            s = skip_ws(s + n);
        } else {
            return "expected #N, match or an action";
        }
    }
    if (act < 0)
        return "missing action";
    r->act = (enum action)act;
    switch (r->act) {
    case ACT_REPLY:
    case ACT_RAW:
    case ACT_INJECT:
    case ACT_EXTRA:
        if (!*s)
            return "action needs TEXT";
        if (!unescape(s, &r->text, &r->textlen))
            return "bad escape in TEXT";
        if (r->act == ACT_INJECT && r->phase != PH_STARTTLS)
            return "inject is only for phase starttls";
        break;
    case ACT_DELAY: {
        char *end;
        r->ms = strtol(s, &end, 10);
        if (end == s || *skip_ws(end) || r->ms < 0)
            return "delay needs MS";
        break;
    }
    case ACT_DROP:
    case ACT_HANG:
        if (*s)
            return "unexpected arguments";
        break;
    }
    if (r->phase == PH_BODY && r->act != ACT_DROP && r->act != ACT_DELAY && r->act != ACT_HANG &&
        r->act != ACT_EXTRA)
        return "phase body takes only drop, delay, hang or extra";
    return NULL;
}

/* A '#' that is blank-delimited starts a comment; "#2" in "on rcpt #2 ..." does not. */
static void strip_comment(char *line)
{
    for (char *p = line; *p; p++) {
        if (*p != '#')
            continue;
        bool before = p == line || p[-1] == ' ' || p[-1] == '\t';
        bool after = p[1] == '\0' || p[1] == ' ' || p[1] == '\t';
        if (before && after) {
            *p = '\0';
            return;
        }
    }
}

static void script_defaults(struct script *sc)
{
    memset(sc, 0, sizeof *sc);
    sc->idle_sec = 300;
}

static void script_finish(struct script *sc)
{
    static const char *const defcaps[] = {"PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES",
                                          "SIZE 52428800"};
    static const char defbanner[] = "220 " HOSTNAME " ESMTP fakesmtp";
    if (!sc->banner) {
        sc->banner = xstrndup(defbanner, strlen(defbanner));
        sc->banner_len = strlen(defbanner);
    }
    if (sc->ncaps == 0) {
        for (size_t i = 0; i < sizeof defcaps / sizeof defcaps[0]; i++) {
            GROW(sc->caps, sc->ncaps);
            sc->caps[sc->ncaps++] = xstrndup(defcaps[i], strlen(defcaps[i]));
        }
    }
    for (size_t i = 0; i < sc->ncaps; i++) {
        if (strncasecmp(sc->caps[i], "SIZE ", 5) == 0)
            sc->size_limit = strtoul(sc->caps[i] + 5, NULL, 10);
        if (strcasecmp(sc->caps[i], "CHUNKING") == 0)
            sc->chunking = true;
    }
}

static void script_free(struct script *sc)
{
    free(sc->banner);
    for (size_t i = 0; i < sc->ncaps; i++)
        free(sc->caps[i]);
    free(sc->caps);
    free(sc->client_ca);
    free(sc->auth_mechs);
    for (size_t i = 0; i < sc->nusers; i++) {
        free(sc->users[i].name);
        free(sc->users[i].pass);
    }
    free(sc->users);
    for (size_t i = 0; i < sc->nrules; i++) {
        free(sc->rules[i].match);
        free(sc->rules[i].text);
    }
    free(sc->rules);
}

/* Returns 0, or -1 after printing "FILE:LINE: why" to stderr. */
static int script_load(struct script *sc, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "fakesmtp: %s: %s\n", path, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    unsigned lineno = 0;
    const char *err = NULL;
    while (!err && (got = getline(&line, &cap, f)) >= 0) {
        lineno++;
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r'))
            line[--got] = '\0';
        strip_comment(line);
        size_t len = strlen(line);
        while (len > 0 && (line[len - 1] == ' ' || line[len - 1] == '\t'))
            line[--len] = '\0';
        const char *s = skip_ws(line);
        if (!*s)
            continue;
        size_t n = word_len(s);
        const char *arg = skip_ws(s + n);
#define IS(w) (n == strlen(w) && strncasecmp(s, w, n) == 0)
        if (IS("banner")) {
            free(sc->banner);
            sc->banner = NULL;
            if (!*arg || !unescape(arg, &sc->banner, &sc->banner_len))
                err = "banner needs TEXT (valid escapes)";
        } else if (IS("ehlo")) {
            if (!*arg) {
                err = "ehlo needs a capability";
                break;
            }
            GROW(sc->caps, sc->ncaps);
            sc->caps[sc->ncaps++] = xstrndup(arg, strlen(arg));
        } else if (IS("auth")) {
            if (!*arg) {
                err = "auth needs mechanisms";
                break;
            }
            free(sc->auth_mechs);
            sc->auth_mechs = xstrndup(arg, strlen(arg));
        } else if (IS("auth-before-tls") && !*arg) {
            sc->auth_before_tls = true;
        } else if (IS("scram-bad-signature") && !*arg) {
            sc->scram_bad_signature = true;
        } else if (IS("user")) {
            size_t un = word_len(arg);
            const char *pw = skip_ws(arg + un);
            if (!un || !*pw) {
                err = "user needs NAME PASSWORD";
                break;
            }
            GROW(sc->users, sc->nusers);
            sc->users[sc->nusers].name = xstrndup(arg, un);
            sc->users[sc->nusers].pass = xstrndup(pw, strlen(pw));
            sc->nusers++;
        } else if (IS("no-ehlo") && !*arg) {
            sc->no_ehlo = true;
        } else if (IS("idle")) {
            char *end;
            sc->idle_sec = strtol(arg, &end, 10);
            if (end == arg || *end || sc->idle_sec <= 0)
                err = "idle needs SECONDS";
        } else if (IS("tls-max-version")) {
            if (strcmp(arg, "1.1") == 0)
                sc->tls_max = TLS1_1_VERSION; /* also allows 1.1 and its legacy suites */
            else if (strcmp(arg, "1.2") == 0)
                sc->tls_max = TLS1_2_VERSION;
            else if (strcmp(arg, "1.3") == 0)
                sc->tls_max = TLS1_3_VERSION;
            else
                err = "tls-max-version is 1.1, 1.2 or 1.3";
        } else if (IS("require-client-cert")) {
            if (!*arg || sc->client_ca)
                err = "require-client-cert needs one CAFILE";
            else
                sc->client_ca = strdup(arg);
        } else if (IS("on")) {
            struct rule r;
            err = parse_rule(arg, &r);
            if (err) {
                free(r.match);
                free(r.text);
                break;
            }
            GROW(sc->rules, sc->nrules);
            sc->rules[sc->nrules++] = r;
        } else {
            err = "unknown directive";
        }
#undef IS
    }
    free(line);
    fclose(f);
    if (err) {
        fprintf(stderr, "fakesmtp: %s:%u: %s\n", path, lineno, err);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ server */

enum tls_mode { TLS_NONE, TLS_STARTTLS, TLS_IMPLICIT };

struct conn;

/* Shared by all connection threads; everything mutable is under lock. */
struct server {
    struct script script; /* read-only once serving */
    enum tls_mode tls_mode;
    WOLFSSL_CTX *ctx;
    const char *maildir;
    int logfd;

    pthread_mutex_t lock;
    pthread_cond_t cond; /* stop requested, or a connection ended */
    bool stopping;
    unsigned long next_conn, next_msg;
    unsigned long phase_count[PH_LAST];
    struct conn *conns;
    unsigned active;
};

struct conn {
    struct server *srv;
    struct conn *next;
    unsigned long id;
    int fd;
    WOLFSSL *ssl;
    bool timed_out; /* set by the I/O layer; distinguishes idle timeout from EOF */
    bool dead;      /* a write failed; stop talking */

    struct buf in; /* decrypted/plain input not yet consumed, from inpos */
    size_t inpos;

    bool greeted, authed, refused, in_tx, bdat_used, bdat_failed;
    char *mail_from;
    char **rcpts;
    size_t nrcpts;
    struct buf msg;
};

static void log_write(struct server *s, struct buf *line)
{
    if (s->logfd < 0)
        return;
    buf_add(line, "\n", 1);
    pthread_mutex_lock(&s->lock);
    /* One write() on an O_APPEND descriptor: lines never interleave. */
    size_t off = 0;
    while (off < line->len) {
        ssize_t n = write(s->logfd, line->p + off, line->len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    pthread_mutex_unlock(&s->lock);
}

__attribute__((format(printf, 2, 3))) static void conn_event(struct conn *c, const char *fmt, ...)
{
    struct buf b = {0};
    buf_addf(&b, "%lu * ", c->id);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n > 0) {
        buf_reserve(&b, (size_t)n);
        va_start(ap, fmt);
        vsnprintf(b.p + b.len, (size_t)n + 1, fmt, ap);
        va_end(ap);
        b.len += (size_t)n;
    }
    log_write(c->srv, &b);
    buf_free(&b);
}

static void conn_logline(struct conn *c, char who, const char *d, size_t n)
{
    struct buf b = {0};
    buf_addf(&b, "%lu %c %c: ", c->id, c->ssl ? 'T' : 'P', who);
    buf_add_escaped(&b, d, n);
    log_write(c->srv, &b);
    buf_free(&b);
}

/* Logs sent bytes as S: lines, split at CRLF; a tail without CRLF is a line too. */
static void conn_logsent(struct conn *c, const char *d, size_t n)
{
    size_t start = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        if (d[i] == '\r' && d[i + 1] == '\n') {
            conn_logline(c, 'S', d + start, i - start);
            start = i + 2;
            i++;
        }
    }
    if (start < n)
        conn_logline(c, 'S', d + start, n - start);
}

/* Waits until fd is readable. Returns 1 readable, 0 idle timeout, -1 error. */
static int wait_readable(struct conn *c)
{
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    long ms = c->srv->script.idle_sec * 1000;
    for (;;) {
        int r = poll(&p, 1, ms > INT_MAX ? INT_MAX : (int)ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (r == 0)
            c->timed_out = true;
        return r < 0 ? -1 : r > 0;
    }
}

static int io_recv(WOLFSSL *ssl, char *buf, int sz, void *ctx)
{
    struct conn *c = ctx;
    (void)ssl;
    int w = wait_readable(c);
    if (w == 0)
        return WOLFSSL_CBIO_ERR_TIMEOUT;
    if (w < 0)
        return WOLFSSL_CBIO_ERR_GENERAL;
    for (;;) {
        ssize_t n = recv(c->fd, buf, (size_t)sz, 0);
        if (n > 0)
            return (int)n;
        if (n == 0)
            return WOLFSSL_CBIO_ERR_CONN_CLOSE;
        if (errno == EINTR)
            continue;
        return errno == ECONNRESET ? WOLFSSL_CBIO_ERR_CONN_RST : WOLFSSL_CBIO_ERR_GENERAL;
    }
}

static int io_send(WOLFSSL *ssl, char *buf, int sz, void *ctx)
{
    struct conn *c = ctx;
    (void)ssl;
    for (;;) {
        ssize_t n = send(c->fd, buf, (size_t)sz, MSG_NOSIGNAL);
        if (n >= 0)
            return (int)n;
        if (errno == EINTR)
            continue;
        return errno == EPIPE ? WOLFSSL_CBIO_ERR_CONN_CLOSE : WOLFSSL_CBIO_ERR_GENERAL;
    }
}

/* Sends bytes as one write (so "reply + injected bytes" really share a segment),
 * logging them as S: lines. Returns 0, or -1 with c->dead set. */
static int conn_send(struct conn *c, const char *d, size_t n)
{
    if (c->dead)
        return -1;
    conn_logsent(c, d, n);
    size_t off = 0;
    while (off < n) {
        ssize_t w;
        if (c->ssl) {
            int chunk = n - off > INT_MAX ? INT_MAX : (int)(n - off);
            int r = wolfSSL_write(c->ssl, d + off, chunk);
            w = r > 0 ? r : -1;
        } else {
            w = send(c->fd, d + off, n - off, MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR)
                continue;
        }
        if (w <= 0) {
            c->dead = true;
            return -1;
        }
        off += (size_t)w;
    }
    return 0;
}

/* Sends TEXT (lines separated by CRLF) plus the final CRLF. */
static int conn_reply(struct conn *c, const char *text, size_t n)
{
    struct buf b = {0};
    buf_add(&b, text, n);
    buf_add(&b, "\r\n", 2);
    int r = conn_send(c, b.p, b.len);
    buf_free(&b);
    return r;
}

static int conn_replys(struct conn *c, const char *text)
{
    return conn_reply(c, text, strlen(text));
}

static size_t conn_avail(const struct conn *c)
{
    return c->in.len - c->inpos;
}

/* Reads more input. Returns 1, 0 on EOF or error, -2 on idle timeout. */
static int conn_fill(struct conn *c)
{
    char tmp[16384];
    ssize_t n;
    if (c->inpos > 0 && c->inpos == c->in.len) {
        c->in.len = c->inpos = 0;
    } else if (c->inpos > 65536 && c->inpos > c->in.len / 2) {
        memmove(c->in.p, c->in.p + c->inpos, c->in.len - c->inpos);
        c->in.len -= c->inpos;
        c->inpos = 0;
    }
    c->timed_out = false;
    if (c->ssl) {
        int r = wolfSSL_read(c->ssl, tmp, sizeof tmp);
        if (r <= 0)
            return c->timed_out ? -2 : 0;
        n = r;
    } else {
        int w = wait_readable(c);
        if (w == 0)
            return -2;
        if (w < 0)
            return 0;
        do
            n = recv(c->fd, tmp, sizeof tmp, 0);
        while (n < 0 && errno == EINTR);
        if (n <= 0)
            return 0;
    }
    buf_add(&c->in, tmp, (size_t)n);
    return 1;
}

/* Next LF-terminated line (LF included), valid until the next read. Returns 1, 0 on
 * EOF/error, -2 on timeout, -3 when longer than max (the line is consumed and
 * thrown away; *len is its size). */
static int conn_getline(struct conn *c, size_t max, const char **line, size_t *len)
{
    size_t scanned = 0, discarded = 0;
    bool discarding = false;
    for (;;) {
        const char *base = c->in.p + c->inpos;
        size_t avail = conn_avail(c);
        const char *lf = avail > scanned ? memchr(base + scanned, '\n', avail - scanned) : NULL;
        if (lf) {
            size_t n = (size_t)(lf - base) + 1;
            c->inpos += n;
            if (discarding || n > max) {
                *len = discarded + n;
                return -3;
            }
            *line = base;
            *len = n;
            return 1;
        }
        if (avail > max) {
            discarding = true;
            discarded += avail;
            c->inpos = c->in.len;
            avail = 0;
        }
        scanned = avail;
        int r = conn_fill(c);
        if (r <= 0)
            return r;
    }
}

/* Reads exactly n bytes into out (or drops them if out is NULL). Returns 1, or what
 * conn_fill returned. */
static int conn_read_exact(struct conn *c, size_t n, struct buf *out)
{
    while (n > 0) {
        if (conn_avail(c) == 0) {
            int r = conn_fill(c);
            if (r <= 0)
                return r;
        }
        size_t take = conn_avail(c) < n ? conn_avail(c) : n;
        if (out)
            buf_add(out, c->in.p + c->inpos, take);
        c->inpos += take;
        n -= take;
    }
    return 1;
}

/* Sleeps ms, but returns false at once if the server is stopping. */
static bool conn_sleep(struct conn *c, long ms)
{
    struct server *s = c->srv;
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&s->lock);
    int r = 0;
    while (!s->stopping && r != ETIMEDOUT)
        r = pthread_cond_timedwait(&s->cond, &s->lock, &until);
    bool ok = !s->stopping;
    pthread_mutex_unlock(&s->lock);
    return ok;
}

/* "hang": say nothing until the peer gives up or the server stops (the main thread
 * shuts the socket down, which wakes poll). */
static void conn_hang(struct conn *c)
{
    struct pollfd p = {.fd = c->fd, .events = POLLRDHUP};
    while (poll(&p, 1, -1) < 0 && errno == EINTR)
        ;
}

enum pick_kind { PICK_DEFAULT, PICK_RULE, PICK_CLOSE };

/* Counts one occurrence of ph and finds the first matching rule, running delays on
 * the way. subject is what "match" looks at. */
static enum pick_kind script_pick(struct conn *c, enum phase ph, const char *subj, size_t sublen,
                                  const struct rule **out)
{
    struct server *s = c->srv;
    pthread_mutex_lock(&s->lock);
    unsigned long nth = ++s->phase_count[ph];
    pthread_mutex_unlock(&s->lock);
    for (size_t i = 0; i < s->script.nrules; i++) {
        const struct rule *r = &s->script.rules[i];
        if (r->phase != ph || (r->nth && r->nth != nth))
            continue;
        if (r->match && !mem_contains_ci(subj, sublen, r->match))
            continue;
        switch (r->act) {
        case ACT_DELAY:
            if (!conn_sleep(c, r->ms))
                return PICK_CLOSE;
            continue;
        case ACT_EXTRA:
            /* An unsolicited reply: sent now, then the session goes on as if it never was. */
            if (conn_reply(c, r->text, r->textlen) < 0)
                return PICK_CLOSE;
            continue;
        case ACT_DROP:
            c->dead = true; /* abrupt: not even a TLS close_notify */
            return PICK_CLOSE;
        case ACT_HANG:
            conn_hang(c);
            return PICK_CLOSE;
        default:
            *out = r;
            return PICK_RULE;
        }
    }
    return PICK_DEFAULT;
}

static int send_rule(struct conn *c, const struct rule *r)
{
    if (r->act == ACT_RAW)
        return conn_send(c, r->text, r->textlen);
    if (r->act == ACT_INJECT) {
        struct buf b = {0};
        buf_adds(&b, "220 2.0.0 Ready\r\n");
        buf_add(&b, r->text, r->textlen);
        int ret = conn_send(c, b.p, b.len);
        buf_free(&b);
        return ret;
    }
    return conn_reply(c, r->text, r->textlen);
}

/* A server that says 421 closes the channel (RFC 5321 3.8); "raw" does not. */
static bool rule_closes(const struct rule *r)
{
    return r->act == ACT_REPLY && r->textlen >= 3 && memcmp(r->text, "421", 3) == 0;
}

/* Replies for phase ph: a matching rule's text, else deftext. Returns the first
 * character of what was sent (the reply class), or 0 if the connection must close. */
static char respond(struct conn *c, enum phase ph, const char *subj, size_t sublen,
                    const char *deftext)
{
    const struct rule *r = NULL;
    switch (script_pick(c, ph, subj, sublen, &r)) {
    case PICK_CLOSE:
        return 0;
    case PICK_RULE:
        if (send_rule(c, r) < 0)
            return 0;
        if (rule_closes(r))
            return 0;
        return r->act == ACT_INJECT ? '2' : r->textlen ? r->text[0] : ' ';
    case PICK_DEFAULT:
        break;
    }
    if (conn_replys(c, deftext) < 0)
        return 0;
    return deftext[0];
}

static void tx_reset(struct conn *c)
{
    free(c->mail_from);
    c->mail_from = NULL;
    for (size_t i = 0; i < c->nrcpts; i++)
        free(c->rcpts[i]);
    free(c->rcpts);
    c->rcpts = NULL;
    c->nrcpts = 0;
    c->in_tx = c->bdat_used = c->bdat_failed = false;
    buf_free(&c->msg);
}

/* ------------------------------------------------------------------ TLS */

static bool tls_start(struct conn *c)
{
    WOLFSSL *ssl = wolfSSL_new(c->srv->ctx);
    if (!ssl) {
        conn_event(c, "tls-failed reason=wolfSSL_new failed");
        return false;
    }
    wolfSSL_SetIOReadCtx(ssl, c);
    wolfSSL_SetIOWriteCtx(ssl, c);
    c->timed_out = false;
    int r = wolfSSL_accept(ssl);
    if (r != WOLFSSL_SUCCESS) {
        int e = wolfSSL_get_error(ssl, r);
        char msg[WOLFSSL_MAX_ERROR_SZ];
        wolfSSL_ERR_error_string_n((unsigned long)e, msg, sizeof msg);
        char *esc = escape_dup(msg, strlen(msg));
        conn_event(c, "tls-failed reason=%s%s (%d)", c->timed_out ? "timeout " : "", esc, e);
        free(esc);
        wolfSSL_free(ssl);
        return false;
    }
    c->ssl = ssl;
    const char *cipher = wolfSSL_get_cipher_name(ssl);
    conn_event(c, "tls version=%s cipher=%s resumed=%d", wolfSSL_get_version(ssl),
               cipher ? cipher : "unknown", wolfSSL_session_reused(ssl) ? 1 : 0);
    WOLFSSL_X509 *peer = c->srv->script.client_ca ? wolfSSL_get_peer_certificate(ssl) : NULL;
    if (peer) {
        char subj[256];
        char *name =
            wolfSSL_X509_NAME_oneline(wolfSSL_X509_get_subject_name(peer), subj, (int)sizeof subj);
        char *esc = escape_dup(name ? name : "?", name ? strlen(name) : 1);
        conn_event(c, "tls-client-cert subject=%s", esc);
        free(esc);
        wolfSSL_X509_free(peer);
    }
    const char *sni = wolfSSL_get_servername(ssl, WOLFSSL_SNI_HOST_NAME);
    if (sni && *sni) {
        char *esc = escape_dup(sni, strlen(sni));
        conn_event(c, "tls-sni name=%s", esc);
        free(esc);
    }
    return true;
}

static int tls_ctx_setup(struct server *s, const char *cert, const char *key)
{
    s->ctx = wolfSSL_CTX_new(wolfSSLv23_server_method());
    if (!s->ctx) {
        fputs("fakesmtp: wolfSSL_CTX_new failed\n", stderr);
        return -1;
    }
    if (wolfSSL_CTX_use_certificate_chain_file(s->ctx, cert) != WOLFSSL_SUCCESS) {
        fprintf(stderr, "fakesmtp: cannot load certificate %s\n", cert);
        return -1;
    }
    if (wolfSSL_CTX_use_PrivateKey_file(s->ctx, key, WOLFSSL_FILETYPE_PEM) != WOLFSSL_SUCCESS) {
        fprintf(stderr, "fakesmtp: cannot load key %s\n", key);
        return -1;
    }
    if (s->script.tls_max == TLS1_1_VERSION &&
        (wolfSSL_CTX_SetMinVersion(s->ctx, WOLFSSL_TLSV1_1) != WOLFSSL_SUCCESS ||
         wolfSSL_CTX_set_cipher_list(s->ctx, "ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA:"
                                             "DHE-RSA-AES128-SHA:AES128-SHA:AES256-SHA") !=
             WOLFSSL_SUCCESS)) {
        fputs("fakesmtp: cannot enable TLS 1.1\n", stderr);
        return -1;
    }
    if (s->script.client_ca) {
        if (wolfSSL_CTX_load_verify_locations(s->ctx, s->script.client_ca, NULL) !=
            WOLFSSL_SUCCESS) {
            fprintf(stderr, "fakesmtp: cannot load %s\n", s->script.client_ca);
            return -1;
        }
        wolfSSL_CTX_set_verify(s->ctx, WOLFSSL_VERIFY_PEER | WOLFSSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                               NULL);
    }
    if (s->script.tls_max &&
        wolfSSL_CTX_set_max_proto_version(s->ctx, s->script.tls_max) != WOLFSSL_SUCCESS) {
        fputs("fakesmtp: cannot cap the TLS version\n", stderr);
        return -1;
    }
    wolfSSL_CTX_SetIORecv(s->ctx, io_recv);
    wolfSSL_CTX_SetIOSend(s->ctx, io_send);
    return 0;
}

/* ------------------------------------------------------------------ commands */

/* Strict base64 (RFC 4648) decoder for AUTH responses. Returns false if invalid. */
static bool b64_decode(const char *s, size_t n, struct buf *out)
{
    static const char alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (n % 4)
        return false;
    buf_add(out, "", 0);
    for (size_t i = 0; i < n; i += 4) {
        unsigned v = 0;
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            char ch = s[i + k];
            const char *p = ch ? strchr(alpha, ch) : NULL;
            if (ch == '=' && i + 4 == n && k >= 2 && (k == 3 || s[i + 3] == '=')) {
                pad++;
                v <<= 6;
            } else if (p && !pad) {
                v = (v << 6) | (unsigned)(p - alpha);
            } else {
                return false;
            }
        }
        char bytes[3] = {(char)(v >> 16), (char)(v >> 8), (char)v};
        buf_add(out, bytes, (size_t)(3 - pad));
    }
    return true;
}

static bool user_ok(const struct script *sc, const char *name, const char *pass)
{
    for (size_t i = 0; i < sc->nusers; i++)
        if (strcmp(sc->users[i].name, name) == 0 && strcmp(sc->users[i].pass, pass) == 0)
            return true;
    return false;
}

/* Line as received, without its line end (CRLF or LF). */
struct cmd {
    const char *line; /* NUL-terminated copy */
    size_t len;
    const char *arg; /* after the verb and blanks */
};

/* Reads one AUTH continuation line. Returns a malloc'd string without CRLF, or NULL
 * when the connection ended. */
static char *auth_read(struct conn *c)
{
    const char *l;
    size_t n;
    int r = conn_getline(c, MAX_CMD_LINE, &l, &n);
    if (r == -3) {
        conn_event(c, "line-too-long bytes=%zu", n);
        return xstrndup("", 0);
    }
    if (r <= 0)
        return NULL;
    size_t end = n >= 2 && l[n - 2] == '\r' ? n - 2 : n;
    conn_logline(c, 'C', l, end);
    return xstrndup(l, end < n ? end : n - 1);
}

static bool auth_offered(const struct conn *c)
{
    const struct server *s = c->srv;
    if (!s->script.auth_mechs)
        return false;
    return s->tls_mode != TLS_STARTTLS || c->ssl || s->script.auth_before_tls;
}

static bool mech_listed(const char *list, const char *mech)
{
    size_t ml = strlen(mech);
    for (const char *p = skip_ws(list); *p; p = skip_ws(p + word_len(p)))
        if (word_len(p) == ml && strncasecmp(p, mech, ml) == 0)
            return true;
    return false;
}

/* ---- challenge mechanisms: CRAM-MD5, SCRAM, XOAUTH2, OAUTHBEARER ---------- */

static bool mech_implemented(const char *mech)
{
    static const char *const names[] = {"PLAIN",         "LOGIN",   "CRAM-MD5",   "SCRAM-SHA-1",
                                        "SCRAM-SHA-256", "XOAUTH2", "OAUTHBEARER"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcasecmp(mech, names[i]) == 0)
            return true;
    return false;
}

static const char *user_pass(const struct script *sc, const char *name)
{
    for (size_t i = 0; i < sc->nusers; i++)
        if (strcmp(sc->users[i].name, name) == 0)
            return sc->users[i].pass;
    return NULL;
}

static char *b64_encode_dup(const void *d, size_t n)
{
    word32 outlen = (word32)(n * 4 / 3 + 8);
    unsigned char *out = xmalloc(outlen + 1);
    /* Base64_EncodeEsc would add line breaks; encode in one line by hand. */
    static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *p = d;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)p[i] << 16 | (i + 1 < n ? (unsigned)p[i + 1] << 8 : 0) |
                     (i + 2 < n ? p[i + 2] : 0);
        out[o++] = (unsigned char)al[v >> 18 & 63];
        out[o++] = (unsigned char)al[v >> 12 & 63];
        out[o++] = i + 1 < n ? (unsigned char)al[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? (unsigned char)al[v & 63] : '=';
    }
    out[o] = '\0';
    return (char *)out;
}

static void hmac(int type, const void *key, size_t klen, const void *msg, size_t mlen,
                 unsigned char *out)
{
    Hmac h;
    wc_HmacInit(&h, NULL, INVALID_DEVID);
    wc_HmacSetKey(&h, type, key, (word32)klen);
    wc_HmacUpdate(&h, msg, (word32)mlen);
    wc_HmacFinal(&h, out);
    wc_HmacFree(&h);
}

/* Sends "334 " + base64(text) and reads the answer; NULL when the connection ended. */
static char *auth_challenge(struct conn *c, const void *text, size_t n)
{
    char *enc = b64_encode_dup(text, n);
    struct buf line = {0};
    buf_addf(&line, "334 %s", enc);
    free(enc);
    buf_add(&line, "", 0);
    int r = conn_replys(c, line.p);
    buf_free(&line);
    return r < 0 ? NULL : auth_read(c);
}

/* Decodes a client response into a NUL-terminated buffer; false when invalid. */
static bool auth_decode(const char *resp, struct buf *out)
{
    if (!b64_decode(resp, strlen(resp), out))
        return false;
    buf_add(out, "", 0);
    out->len--;
    return memchr(out->p, '\0', out->len) == NULL;
}

/* The value of SCRAM attribute a ("a=value,"), malloc'd, or NULL. */
static char *scram_get(const char *msg, char a)
{
    for (const char *p = msg; *p;) {
        const char *e = strchr(p, ',');
        if (!e)
            e = p + strlen(p);
        if (p[0] == a && p[1] == '=')
            return xstrndup(p + 2, (size_t)(e - p - 2));
        p = *e ? e + 1 : e;
    }
    return NULL;
}

/*
 * SCRAM server (RFC 5802): checks the client proof against the scripted
 * password and sends the server signature (wrong on purpose with
 * scram-bad-signature).  Returns the final reply, or NULL when the
 * connection ended; *user gets the user name for the transcript.
 */
static const char *scram_server(struct conn *c, const char *mech, const char *initial, char **user)
{
    bool sha1 = strcasecmp(mech, "SCRAM-SHA-1") == 0;
    int type = sha1 ? WC_SHA : WC_SHA256;
    size_t dl = sha1 ? WC_SHA_DIGEST_SIZE : WC_SHA256_DIGEST_SIZE;
    char *resp = *initial ? xstrndup(initial, strlen(initial)) : auth_challenge(c, "", 0);
    if (!resp)
        return NULL;
    struct buf cf = {0}, fin = {0}, am = {0};
    char *cnonce = NULL, *sf = NULL, *r = NULL, *p = NULL, *cb = NULL, *resp2 = NULL;
    const char *final = "535 5.7.8 Authentication credentials invalid";
    if (strcmp(resp, "*") == 0) {
        final = "501 5.7.0 Authentication cancelled";
        goto out;
    }
    if (!auth_decode(resp, &cf) || strncmp(cf.p, "n,,", 3) != 0) {
        final = "501 5.5.2 Malformed client-first-message";
        goto out;
    }
    const char *bare = cf.p + 3;
    *user = scram_get(bare, 'n');
    cnonce = scram_get(bare, 'r');
    if (!*user || !cnonce || !*cnonce) {
        final = "501 5.5.2 Malformed client-first-message";
        goto out;
    }
    unsigned char salt[16];
    for (size_t i = 0; i < sizeof(salt); i++)
        salt[i] = (unsigned char)(rand() & 0xff);
    char *salt64 = b64_encode_dup(salt, sizeof(salt));
    struct buf sfb = {0};
    buf_addf(&sfb, "r=%s%08lx%08x,s=%s,i=4096", cnonce, (long)getpid(), (unsigned)rand(), salt64);
    buf_add(&sfb, "", 0);
    free(salt64);
    sf = sfb.p;
    if (!(resp2 = auth_challenge(c, sf, strlen(sf)))) {
        final = NULL;
        goto out;
    }
    if (strcmp(resp2, "*") == 0) {
        final = "501 5.7.0 Authentication cancelled";
        goto out;
    }
    if (!auth_decode(resp2, &fin) || !(p = strstr(fin.p, ",p="))) {
        final = "501 5.5.2 Malformed client-final-message";
        goto out;
    }
    cb = scram_get(fin.p, 'c');
    r = scram_get(fin.p, 'r');
    char *snonce = scram_get(sf, 'r');
    bool nonce_ok = r && strcmp(r, snonce) == 0 && cb && strcmp(cb, "biws") == 0;
    free(snonce);
    const char *pass = user_pass(&c->srv->script, *user);
    struct buf proof = {0};
    if (!nonce_ok || !pass || !b64_decode(p + 3, strlen(p + 3), &proof) || proof.len != dl) {
        buf_free(&proof);
        goto out;
    }
    buf_addf(&am, "%s,%s,", bare, sf);
    buf_add(&am, fin.p, (size_t)(p - fin.p));
    unsigned char salted[32], ckey[32], stored[32], csig[32], skey[32], ssig[32], check[32];
    wc_PBKDF2(salted, (const byte *)pass, (int)strlen(pass), salt, sizeof(salt), 4096, (int)dl,
              type);
    hmac(type, salted, dl, "Client Key", 10, ckey);
    if (sha1)
        wc_ShaHash(ckey, (word32)dl, stored);
    else
        wc_Sha256Hash(ckey, (word32)dl, stored);
    hmac(type, stored, dl, am.p, am.len, csig);
    for (size_t i = 0; i < dl; i++)
        ckey[i] = (unsigned char)proof.p[i] ^ csig[i];
    buf_free(&proof);
    if (sha1)
        wc_ShaHash(ckey, (word32)dl, check);
    else
        wc_Sha256Hash(ckey, (word32)dl, check);
    if (memcmp(check, stored, dl) != 0)
        goto out;
    hmac(type, salted, dl, "Server Key", 10, skey);
    hmac(type, skey, dl, am.p, am.len, ssig);
    if (c->srv->script.scram_bad_signature)
        ssig[0] ^= 0xff;
    char *v64 = b64_encode_dup(ssig, dl);
    struct buf v = {0};
    buf_addf(&v, "v=%s", v64);
    free(v64);
    free(resp2);
    resp2 = auth_challenge(c, v.p, v.len);
    buf_free(&v);
    if (!resp2)
        final = NULL;
    else if (*resp2)
        final = "501 5.7.0 Authentication cancelled";
    else
        final = "235 2.7.0 Authentication successful";
out:
    free(resp);
    free(resp2);
    free(cnonce);
    free(sf);
    free(r);
    free(cb);
    buf_free(&cf);
    buf_free(&fin);
    buf_free(&am);
    return final;
}

/* CRAM-MD5 server (RFC 2195). */
static const char *cram_server(struct conn *c, char **user)
{
    struct buf chal = {0}, dec = {0};
    buf_addf(&chal, "<%ld.%ld@fake.test>", (long)getpid(), (long)time(NULL));
    char *resp = auth_challenge(c, chal.p, chal.len);
    const char *final = "535 5.7.8 Authentication credentials invalid";
    if (!resp) {
        final = NULL;
    } else if (strcmp(resp, "*") == 0) {
        final = "501 5.7.0 Authentication cancelled";
    } else if (!auth_decode(resp, &dec) || !strchr(dec.p, ' ')) {
        final = "501 5.5.2 Cannot decode response";
    } else {
        const char *sp = strrchr(dec.p, ' ');
        *user = xstrndup(dec.p, (size_t)(sp - dec.p));
        const char *pass = user_pass(&c->srv->script, *user);
        if (pass) {
            unsigned char mac[16];
            char hexmac[33];
            hmac(WC_MD5, pass, strlen(pass), chal.p, chal.len, mac);
            for (int i = 0; i < 16; i++)
                snprintf(hexmac + 2 * i, 3, "%02x", mac[i]);
            if (strcmp(sp + 1, hexmac) == 0)
                final = "235 2.7.0 Authentication successful";
        }
    }
    free(resp);
    buf_free(&chal);
    buf_free(&dec);
    return final;
}

/*
 * XOAUTH2 (Google) and OAUTHBEARER (RFC 7628): the token must equal the
 * scripted password of the user.  A wrong token gets the error flow: 334
 * with base64 JSON, the client answers (empty line / %x01), then 535.
 */
static const char *token_server(struct conn *c, const char *mech, const char *initial, char **user)
{
    bool xo = strcasecmp(mech, "XOAUTH2") == 0;
    char *resp = *initial ? xstrndup(initial, strlen(initial)) : auth_challenge(c, "", 0);
    struct buf dec = {0};
    const char *final = "535 5.7.8 Authentication credentials invalid";
    if (!resp)
        return NULL;
    char *token = NULL;
    if (!auth_decode(resp, &dec)) {
        final = "501 5.5.2 Cannot decode response";
        goto out;
    }
    const char *u = xo ? (strncmp(dec.p, "user=", 5) == 0 ? dec.p + 5 : NULL)
                       : (strncmp(dec.p, "n,a=", 4) == 0 ? dec.p + 4 : NULL);
    const char *ue = u ? strchr(u, xo ? '\001' : ',') : NULL;
    const char *a = strstr(dec.p, "\001auth=Bearer ");
    const char *ae = a ? strchr(a + 13, '\001') : NULL;
    if (!ue || !ae) {
        final = "501 5.5.2 Malformed response";
        goto out;
    }
    *user = xstrndup(u, (size_t)(ue - u));
    token = xstrndup(a + 13, (size_t)(ae - a - 13));
    const char *want = user_pass(&c->srv->script, *user);
    conn_event(c, "auth token=%s", token);
    if (want && strcmp(want, token) == 0) {
        final = "235 2.7.0 Authentication successful";
        goto out;
    }
    const char *json =
        xo ? "{\"status\":\"401\",\"schemes\":\"Bearer\",\"scope\":\"https://mail.google.com/\"}"
           : "{\"status\":\"invalid_token\",\"scope\":\"mail\"}";
    free(resp);
    resp = auth_challenge(c, json, strlen(json));
    if (!resp)
        final = NULL;
    else if (xo ? *resp != '\0' : strcmp(resp, "AQ==") != 0)
        conn_event(c, "auth error-ack-unexpected resp=%s", resp);
out:
    free(token);
    free(resp);
    buf_free(&dec);
    return final;
}

static bool auth_challenge_mech(struct conn *c, const struct cmd *cmd, const char *mech,
                                const char *initial)
{
    char *user = NULL;
    const char *final;
    if (strncasecmp(mech, "SCRAM-", 6) == 0)
        final = scram_server(c, mech, initial, &user);
    else if (strcasecmp(mech, "CRAM-MD5") == 0)
        final = cram_server(c, &user);
    else
        final = token_server(c, mech, initial, &user);
    if (final == NULL) {
        free(user);
        return false;
    }
    if (user) {
        char *esc = escape_dup(user, strlen(user));
        conn_event(c, "auth %s user=%s mech=%s", final[0] == '2' ? "ok" : "failed", esc, mech);
        free(esc);
    }
    free(user);
    char cls = respond(c, PH_AUTH, cmd->line, cmd->len, final);
    if (!cls)
        return false;
    if (cls == '2')
        c->authed = true;
    return true;
}

/* Returns false when the connection must close. */
static bool cmd_auth(struct conn *c, const struct cmd *cmd)
{
    struct server *s = c->srv;
    size_t ml = word_len(cmd->arg);
    char *mech = xstrndup(cmd->arg, ml);
    const char *initial = skip_ws(cmd->arg + ml);
    const char *err = NULL;
    if (c->refused)
        err = "503 5.5.1 No SMTP service here";
    else if (!s->script.auth_mechs)
        err = "502 5.5.1 AUTH not supported";
    else if (!auth_offered(c))
        err = "530 5.7.0 Must issue a STARTTLS command first";
    else if (!c->greeted)
        err = "503 5.5.1 Send EHLO first";
    else if (c->authed)
        err = "503 5.5.1 Already authenticated";
    else if (c->in_tx)
        err = "503 5.5.1 Mail transaction in progress";
    else if (!ml)
        err = "501 5.5.4 Syntax: AUTH mechanism";
    else if (!mech_listed(s->script.auth_mechs, mech) || !mech_implemented(mech))
        err = "504 5.5.4 Unrecognized authentication type";
    if (err) {
        free(mech);
        return respond(c, PH_AUTH, cmd->line, cmd->len, err) != 0;
    }
    if (strcasecmp(mech, "PLAIN") != 0 && strcasecmp(mech, "LOGIN") != 0) {
        bool alive = auth_challenge_mech(c, cmd, mech, initial);
        free(mech);
        return alive;
    }

    char *user = NULL, *pass = NULL, *resp = NULL, *resp2 = NULL;
    size_t user_len = 0, pass_len = 0;
    struct buf dec = {0}, dec2 = {0};
    bool plain = strcasecmp(mech, "PLAIN") == 0;
    bool alive = true;
    const char *final = NULL;
    if (plain) {
        if (*initial) {
            resp = xstrndup(initial, strlen(initial));
        } else if (conn_replys(c, "334 ") < 0 || !(resp = auth_read(c))) {
            alive = false;
            goto out;
        }
        if (strcmp(resp, "*") == 0) {
            final = "501 5.7.0 Authentication cancelled";
        } else if (strcmp(resp, "=") != 0 && !b64_decode(resp, strlen(resp), &dec)) {
            final = "501 5.5.2 Cannot decode response";
        } else {
            /* authzid NUL authcid NUL passwd */
            buf_add(&dec, "", 0);
            const char *z = memchr(dec.p, '\0', dec.len);
            const char *u = z ? z + 1 : NULL;
            const char *uz = u ? memchr(u, '\0', dec.len - (size_t)(u - dec.p)) : NULL;
            if (!uz) {
                final = "501 5.5.2 Malformed PLAIN response";
            } else {
                user_len = (size_t)(uz - u);
                pass_len = dec.len - (size_t)(uz + 1 - dec.p);
                user = xstrndup(u, user_len);
                pass = xstrndup(uz + 1, pass_len);
            }
        }
    } else {
        if (*initial) {
            resp = xstrndup(initial, strlen(initial));
        } else if (conn_replys(c, "334 VXNlcm5hbWU6") < 0 || !(resp = auth_read(c))) {
            alive = false;
            goto out;
        }
        if (strcmp(resp, "*") == 0) {
            final = "501 5.7.0 Authentication cancelled";
        } else if (!b64_decode(resp, strlen(resp), &dec)) {
            final = "501 5.5.2 Cannot decode response";
        } else if (conn_replys(c, "334 UGFzc3dvcmQ6") < 0 || !(resp2 = auth_read(c))) {
            alive = false;
            goto out;
        } else if (strcmp(resp2, "*") == 0) {
            final = "501 5.7.0 Authentication cancelled";
        } else if (!b64_decode(resp2, strlen(resp2), &dec2)) {
            final = "501 5.5.2 Cannot decode response";
        } else {
            user_len = dec.len;
            pass_len = dec2.len;
            user = xstrndup(dec.p, user_len);
            pass = xstrndup(dec2.p, pass_len);
        }
    }
    bool ok = false;
    if (user) {
        /* A NUL inside a name or password must not match a shorter credential. */
        ok =
            strlen(user) == user_len && strlen(pass) == pass_len && user_ok(&s->script, user, pass);
        char *esc = escape_dup(user, user_len);
        conn_event(c, "auth %s user=%s mech=%s", ok ? "ok" : "failed", esc,
                   plain ? "PLAIN" : "LOGIN");
        free(esc);
        final = ok ? "235 2.7.0 Authentication successful"
                   : "535 5.7.8 Authentication credentials invalid";
    }
    if (!final)
        final = "454 4.7.0 Temporary authentication failure";
    char cls = respond(c, PH_AUTH, cmd->line, cmd->len, final);
    if (!cls)
        alive = false;
    else if (cls == '2')
        c->authed = true;
out:
    free(mech);
    free(user);
    free(pass);
    free(resp);
    free(resp2);
    buf_free(&dec);
    buf_free(&dec2);
    return alive;
}

/* Parses "<addr> params" after "MAIL FROM:" / "RCPT TO:". Returns the address or
 * NULL; *params points after the '>'. */
static char *parse_path(const char *s, const char **params)
{
    s = skip_ws(s);
    if (*s != '<')
        return NULL;
    const char *end = strchr(s, '>');
    if (!end)
        return NULL;
    *params = skip_ws(end + 1);
    return xstrndup(s + 1, (size_t)(end - s - 1));
}

/* SIZE=n among MAIL parameters; 0 if absent. */
static unsigned long param_size(const char *params)
{
    for (const char *p = params; *p; p = skip_ws(p + word_len(p)))
        if (strncasecmp(p, "SIZE=", 5) == 0)
            return strtoul(p + 5, NULL, 10);
    return 0;
}

static int write_file(const char *dir, unsigned long n, const char *ext, const char *d, size_t len)
{
    struct buf path = {0}, tmp = {0};
    buf_addf(&path, "%s/msg-%lu.%s", dir, n, ext);
    buf_addf(&tmp, "%s/.msg-%lu.%s.tmp", dir, n, ext);
    int ret = -1;
    int fd = open(tmp.p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
        size_t off = 0;
        while (off < len) {
            ssize_t w = write(fd, d + off, len - off);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                break;
            off += (size_t)w;
        }
        if (close(fd) == 0 && off == len && rename(tmp.p, path.p) == 0)
            ret = 0;
    }
    if (ret)
        fprintf(stderr, "fakesmtp: cannot write %s: %s\n", path.p, strerror(errno));
    buf_free(&path);
    buf_free(&tmp);
    return ret;
}

/* Records an accepted message; returns its number. */
static unsigned long store_message(struct conn *c, const struct buf *raw, const struct buf *eml)
{
    struct server *s = c->srv;
    pthread_mutex_lock(&s->lock);
    unsigned long n = ++s->next_msg;
    pthread_mutex_unlock(&s->lock);
    if (s->maildir) {
        struct buf env = {0};
        buf_addf(&env, "MAIL FROM:<%s>\n", c->mail_from ? c->mail_from : "");
        for (size_t i = 0; i < c->nrcpts; i++)
            buf_addf(&env, "RCPT TO:<%s>\n", c->rcpts[i]);
        write_file(s->maildir, n, "raw", raw->p ? raw->p : "", raw->len);
        write_file(s->maildir, n, "eml", eml->p ? eml->p : "", eml->len);
        write_file(s->maildir, n, "env", env.p, env.len);
        buf_free(&env);
    }
    conn_event(c, "message n=%lu bytes=%zu rcpts=%zu", n, eml->len, c->nrcpts);
    return n;
}

/* End of data (DATA's dot or BDAT LAST): the "dot" phase. Returns false to close. */
static bool finish_message(struct conn *c, const struct buf *raw, const struct buf *eml,
                           bool too_big)
{
    const struct rule *r = NULL;
    bool alive = true;
    switch (script_pick(c, PH_DOT, eml->p ? eml->p : "", eml->len, &r)) {
    case PICK_CLOSE:
        alive = false;
        break;
    case PICK_RULE:
        if (r->textlen && r->text[0] == '2')
            store_message(c, raw, eml);
        else
            conn_event(c, "message-rejected bytes=%zu rcpts=%zu", eml->len, c->nrcpts);
        alive = send_rule(c, r) == 0 && !rule_closes(r);
        break;
    case PICK_DEFAULT:
        if (too_big) {
            conn_event(c, "message-rejected bytes=%zu rcpts=%zu", eml->len, c->nrcpts);
            alive = conn_replys(c, "552 5.3.4 Message size exceeds fixed limit") == 0;
        } else {
            unsigned long n = store_message(c, raw, eml);
            struct buf t = {0};
            buf_addf(&t, "250 2.0.0 Ok: queued as fake-%lu", n);
            alive = conn_replys(c, t.p) == 0;
            buf_free(&t);
        }
        break;
    }
    tx_reset(c);
    return alive;
}

/* The "body" phase: once the first bytes of a message are here. */
static bool body_started(struct conn *c)
{
    if (conn_avail(c) == 0 && conn_fill(c) <= 0)
        return false;
    const struct rule *r = NULL;
    return script_pick(c, PH_BODY, c->in.p + c->inpos, conn_avail(c), &r) != PICK_CLOSE;
}

/* Receives DATA up to CRLF.CRLF. Returns false when the connection must close. */
static bool receive_data(struct conn *c)
{
    if (!body_started(c))
        return false;
    struct buf raw = {0}, eml = {0};
    bool too_big = false, line_start = true, alive = true;
    for (;;) {
        const char *l;
        size_t n;
        int r = conn_getline(c, MAX_MESSAGE, &l, &n);
        if (r == -3) {
            too_big = true;
            line_start = false; /* a dropped line ended with LF; be strict */
            continue;
        }
        if (r <= 0) {
            if (r == -2)
                conn_event(c, "timeout");
            alive = false;
            break;
        }
        bool crlf = n >= 2 && l[n - 2] == '\r';
        /* Only CRLF "." CRLF ends the data: a bare-LF variant is message content. */
        if (line_start && n == 3 && l[0] == '.' && crlf) {
            if (!too_big)
                buf_add(&raw, l, n);
            break;
        }
        if (!too_big && raw.len + n > MAX_MESSAGE) {
            too_big = true;
            buf_free(&raw);
            buf_free(&eml);
        }
        if (!too_big) {
            buf_add(&raw, l, n);
            if (line_start && l[0] == '.')
                buf_add(&eml, l + 1, n - 1);
            else
                buf_add(&eml, l, n);
        }
        line_start = crlf;
    }
    if (alive)
        alive = finish_message(c, &raw, &eml, too_big);
    else
        tx_reset(c);
    buf_free(&raw);
    buf_free(&eml);
    return alive;
}

/* BDAT size [LAST] (RFC 3030): the chunk is always consumed, even when refused. */
static bool cmd_bdat(struct conn *c, const struct cmd *cmd)
{
    struct server *s = c->srv;
    char *end;
    errno = 0;
    unsigned long long size = strtoull(cmd->arg, &end, 10);
    const char *rest = skip_ws(end);
    bool last = strcasecmp(rest, "LAST") == 0;
    if (end == cmd->arg || errno || !isdigit((unsigned char)cmd->arg[0]) || (*rest && !last))
        return respond(c, PH_BDAT, cmd->line, cmd->len, "501 5.5.4 Syntax: BDAT size [LAST]");
    bool first = !c->bdat_used;
    bool keep = c->in_tx && c->nrcpts > 0 && !c->bdat_failed && s->script.chunking &&
                c->msg.len + size <= MAX_MESSAGE && !c->refused;
    if (first && size > 0 && !body_started(c))
        return false;
    int r = conn_read_exact(c, (size_t)size, keep ? &c->msg : NULL);
    if (r <= 0)
        return false;
    if (c->in_tx)
        c->bdat_used = true;
    const char *err = NULL;
    if (c->refused)
        err = "503 5.5.1 No SMTP service here";
    else if (!s->script.chunking)
        err = "502 5.5.1 CHUNKING not supported";
    else if (!c->in_tx)
        err = "503 5.5.1 Error: need MAIL command";
    else if (c->nrcpts == 0)
        err = "503 5.5.1 Error: need RCPT command";
    else if (c->bdat_failed)
        err = "503 5.5.1 Error: previous BDAT failed";
    else if (!keep)
        err = "552 5.3.4 Message size exceeds fixed limit";
    if (err) {
        if (c->in_tx)
            c->bdat_failed = true;
        char cls = respond(c, PH_BDAT, cmd->line, cmd->len, err);
        if (last)
            tx_reset(c);
        return cls != 0;
    }
    if (last) {
        struct buf msg = c->msg;
        c->msg = (struct buf){0};
        bool alive = finish_message(c, &msg, &msg, false);
        buf_free(&msg);
        return alive;
    }
    struct buf t = {0};
    buf_addf(&t, "250 2.0.0 %llu octets received", size);
    char cls = respond(c, PH_BDAT, cmd->line, cmd->len, t.p);
    buf_free(&t);
    if (cls && cls != '2')
        c->bdat_failed = true;
    return cls != 0;
}

static char *ehlo_reply(const struct conn *c)
{
    const struct server *s = c->srv;
    struct buf auth = {0};
    const char *extra[2];
    size_t nextra = 0;
    if (s->tls_mode == TLS_STARTTLS && !c->ssl)
        extra[nextra++] = "STARTTLS";
    if (auth_offered(c)) {
        buf_addf(&auth, "AUTH %s", s->script.auth_mechs);
        extra[nextra++] = auth.p;
    }
    size_t total = 1 + s->script.ncaps + nextra;
    struct buf b = {0};
    for (size_t i = 0; i < total; i++) {
        const char *text = i == 0                 ? HOSTNAME
                           : i <= s->script.ncaps ? s->script.caps[i - 1]
                                                  : extra[i - 1 - s->script.ncaps];
        buf_addf(&b, "%s250%c%s", i ? "\r\n" : "", i + 1 < total ? '-' : ' ', text);
    }
    buf_free(&auth);
    return b.p;
}

/* Handles one command line. Returns false when the connection must close. */
static bool handle_command(struct conn *c, const struct cmd *cmd)
{
    struct server *s = c->srv;
    const char *l = cmd->line;
    size_t vl = word_len(l);
#define VERB(w) (vl == strlen(w) && strncasecmp(l, w, vl) == 0)
    const char *arg = cmd->arg;
    const char *refused = "503 5.5.1 No SMTP service here";
    char cls;

    if (VERB("EHLO")) {
        char *def = NULL;
        const char *text;
        if (s->script.no_ehlo)
            text = "502 5.5.1 Error: command not implemented";
        else if (c->refused)
            text = refused;
        else if (!*arg)
            text = "501 5.5.4 Syntax: EHLO hostname";
        else
            text = def = ehlo_reply(c);
        cls = respond(c, PH_EHLO, l, cmd->len, text);
        free(def);
        if (cls == '2') {
            tx_reset(c);
            c->greeted = true;
        }
        return cls != 0;
    }
    if (VERB("HELO")) {
        const char *text = c->refused ? refused
                           : !*arg    ? "501 5.5.4 Syntax: HELO hostname"
                                      : "250 " HOSTNAME;
        cls = respond(c, PH_HELO, l, cmd->len, text);
        if (cls == '2') {
            tx_reset(c);
            c->greeted = true;
        }
        return cls != 0;
    }
    if (VERB("STARTTLS")) {
        bool possible = s->tls_mode == TLS_STARTTLS && !c->ssl && !c->refused;
        const char *text = c->refused                    ? refused
                           : c->ssl                      ? "503 5.5.1 TLS already active"
                           : s->tls_mode != TLS_STARTTLS ? "502 5.5.1 STARTTLS not available"
                           : *arg                        ? "501 5.5.4 Syntax: STARTTLS"
                                                         : "220 2.0.0 Ready to start TLS";
        cls = respond(c, PH_STARTTLS, l, cmd->len, text);
        if (cls != '2' || !possible)
            return cls != 0;
        /* Anything pipelined behind STARTTLS was sent in clear: never let it count as
         * TLS data (the server side of the STARTTLS injection problem). */
        if (conn_avail(c)) {
            conn_event(c, "starttls-discard bytes=%zu", conn_avail(c));
            c->inpos = c->in.len;
        }
        if (!tls_start(c))
            return false;
        tx_reset(c);
        c->greeted = c->authed = false;
        return true;
    }
    if (VERB("AUTH"))
        return cmd_auth(c, cmd);
    if (VERB("MAIL")) {
        const char *params = "";
        char *addr = NULL;
        const char *text;
        if (strncasecmp(l, "MAIL FROM:", 10) == 0)
            addr = parse_path(l + 10, &params);
        unsigned long sz = addr ? param_size(params) : 0;
        if (c->refused)
            text = refused;
        else if (!c->greeted)
            text = "503 5.5.1 Error: send HELO/EHLO first";
        else if (c->in_tx)
            text = "503 5.5.1 Error: nested MAIL command";
        else if (!addr)
            text = "501 5.5.4 Syntax: MAIL FROM:<address>";
        else if (s->script.size_limit && sz > s->script.size_limit)
            text = "552 5.3.4 Message size exceeds fixed limit";
        else
            text = "250 2.1.0 Ok";
        cls = respond(c, PH_MAIL, l, cmd->len, text);
        if (cls == '2') {
            tx_reset(c);
            c->in_tx = true;
            c->mail_from = addr ? addr : xstrndup("", 0);
            addr = NULL;
        }
        free(addr);
        return cls != 0;
    }
    if (VERB("RCPT")) {
        const char *params = "";
        char *addr = NULL;
        const char *text;
        if (strncasecmp(l, "RCPT TO:", 8) == 0)
            addr = parse_path(l + 8, &params);
        if (c->refused)
            text = refused;
        else if (!c->in_tx)
            text = "503 5.5.1 Error: need MAIL command";
        else if (!addr)
            text = "501 5.5.4 Syntax: RCPT TO:<address>";
        else if (!*addr)
            text = "501 5.1.3 Bad recipient address syntax";
        else if (c->nrcpts >= MAX_RCPTS)
            text = "452 4.5.3 Error: too many recipients";
        else
            text = "250 2.1.5 Ok";
        cls = respond(c, PH_RCPT, l, cmd->len, text);
        if (cls == '2' && c->in_tx) {
            GROW(c->rcpts, c->nrcpts);
            c->rcpts[c->nrcpts++] = addr ? addr : xstrndup("", 0);
            addr = NULL;
        }
        free(addr);
        return cls != 0;
    }
    if (VERB("DATA")) {
        const char *text = c->refused       ? refused
                           : !c->in_tx      ? "503 5.5.1 Error: need MAIL command"
                           : c->nrcpts == 0 ? "503 5.5.1 Error: need RCPT command"
                           : c->bdat_used   ? "503 5.5.1 Error: DATA after BDAT"
                           : *arg           ? "501 5.5.4 Syntax: DATA"
                                            : "354 End data with <CR><LF>.<CR><LF>";
        cls = respond(c, PH_DATA, l, cmd->len, text);
        if (cls == '3')
            return receive_data(c);
        return cls != 0;
    }
    if (VERB("BDAT"))
        return cmd_bdat(c, cmd);
    if (VERB("RSET")) {
        cls = respond(c, PH_RSET, l, cmd->len, "250 2.0.0 Ok");
        if (cls == '2')
            tx_reset(c);
        return cls != 0;
    }
    if (VERB("NOOP"))
        return respond(c, PH_NOOP, l, cmd->len, "250 2.0.0 Ok") != 0;
    if (VERB("QUIT")) {
        respond(c, PH_QUIT, l, cmd->len, "221 2.0.0 Bye");
        return false;
    }
    if (VERB("VRFY"))
        return conn_replys(c, "252 2.1.5 Send some mail, I'll try my best") == 0;
    if (VERB("EXPN"))
        return conn_replys(c, "502 5.5.1 Error: command not implemented") == 0;
    if (VERB("HELP"))
        return conn_replys(c, "214 2.0.0 fakesmtp") == 0;
    return conn_replys(c, "500 5.5.2 Error: command not recognized") == 0;
#undef VERB
}

/* One SMTP session, greeting to close. Returns when the connection must end. */
static void conn_session(struct conn *c)
{
    struct server *s = c->srv;
    if (s->tls_mode == TLS_IMPLICIT && !tls_start(c))
        return;
    char cls = respond(c, PH_CONNECT, "", 0, s->script.banner);
    if (!cls || cls == '4')
        return;
    c->refused = cls != '2';
    for (;;) {
        const char *l;
        size_t n;
        int r = conn_getline(c, MAX_CMD_LINE, &l, &n);
        if (r == -3) {
            conn_event(c, "line-too-long bytes=%zu", n);
            if (conn_replys(c, "500 5.5.2 Error: line too long") < 0)
                return;
            continue;
        }
        if (r == -2) {
            conn_event(c, "timeout");
            conn_replys(c, "421 4.4.2 " HOSTNAME " Error: timeout exceeded");
            return;
        }
        if (r <= 0)
            return;
        /* CRLF is the line end; a bare LF is accepted but shows in the transcript. */
        size_t end = n >= 2 && l[n - 2] == '\r' ? n - 2 : n;
        conn_logline(c, 'C', l, end);
        size_t cl = end < n ? end : n - 1;
        char *line = xstrndup(l, cl);
        struct cmd cmd = {.line = line, .len = cl};
        cmd.arg = skip_ws(line + word_len(line));
        bool more = handle_command(c, &cmd);
        free(line);
        if (!more)
            return;
    }
}

static void conn_unregister(struct conn *c)
{
    struct server *s = c->srv;
    pthread_mutex_lock(&s->lock);
    for (struct conn **pp = &s->conns; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    pthread_mutex_unlock(&s->lock);
}

static void *conn_thread(void *arg)
{
    struct conn *c = arg;
    struct server *s = c->srv;
    conn_session(c);
    if (c->ssl && !c->dead)
        wolfSSL_shutdown(c->ssl);
    conn_event(c, "close");
    /* Out of the registry before close(): the main thread must never shut down a
     * descriptor number that has been reused. */
    conn_unregister(c);
    if (c->ssl)
        wolfSSL_free(c->ssl);
    close(c->fd);
    tx_reset(c);
    buf_free(&c->in);
    free(c);
    pthread_mutex_lock(&s->lock);
    s->active--;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

/* ------------------------------------------------------------------ main */

static int listen_on(const char *spec)
{
    char *host;
    const char *port;
    if (spec[0] == '[') {
        const char *rb = strchr(spec, ']');
        if (!rb || rb[1] != ':')
            return -1;
        host = xstrndup(spec + 1, (size_t)(rb - spec - 1));
        port = rb + 2;
    } else {
        const char *colon = strrchr(spec, ':');
        if (!colon)
            return -1;
        host = xstrndup(spec, (size_t)(colon - spec));
        port = colon + 1;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE};
    struct addrinfo *ai = NULL;
    int fd = -1;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0) {
        fprintf(stderr, "fakesmtp: bad --listen %s: %s\n", spec, gai_strerror(rc));
    } else {
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int one = 1;
        if (fd >= 0)
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 128) < 0) {
            fprintf(stderr, "fakesmtp: cannot listen on %s: %s\n", spec, strerror(errno));
            if (fd >= 0)
                close(fd);
            fd = -1;
        }
        freeaddrinfo(ai);
    }
    free(host);
    return fd;
}

static int write_port_file(const char *path, int lfd)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(lfd, (struct sockaddr *)&ss, &sl) < 0)
        return -1;
    unsigned port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                   : ((struct sockaddr_in *)&ss)->sin_port);
    struct buf tmp = {0};
    buf_addf(&tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp.p, "w");
    int ret = -1;
    if (f) {
        fprintf(f, "%u\n", port);
        if (fclose(f) == 0 && rename(tmp.p, path) == 0)
            ret = 0;
    }
    if (ret)
        fprintf(stderr, "fakesmtp: cannot write %s: %s\n", path, strerror(errno));
    buf_free(&tmp);
    return ret;
}

static void peer_name(int fd, char *addr, size_t alen, unsigned *port)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    snprintf(addr, alen, "unknown");
    *port = 0;
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) < 0)
        return;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &sin->sin_addr, addr, (socklen_t)alen);
        *port = ntohs(sin->sin_port);
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &sin6->sin6_addr, addr, (socklen_t)alen);
        *port = ntohs(sin6->sin6_port);
    }
}

static void accept_one(struct server *s, int lfd)
{
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
        return;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct conn *c = xmalloc(sizeof *c);
    memset(c, 0, sizeof *c);
    c->srv = s;
    c->fd = fd;
    pthread_mutex_lock(&s->lock);
    c->id = ++s->next_conn;
    c->next = s->conns;
    s->conns = c;
    s->active++;
    pthread_mutex_unlock(&s->lock);

    char addr[INET6_ADDRSTRLEN];
    unsigned port;
    peer_name(fd, addr, sizeof addr, &port);
    conn_event(c, "connect from=%s port=%u", addr, port);

    pthread_t th;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&th, &attr, conn_thread, c) != 0) {
        conn_event(c, "close");
        conn_unregister(c);
        close(fd);
        free(c);
        pthread_mutex_lock(&s->lock);
        s->active--;
        pthread_mutex_unlock(&s->lock);
    }
    pthread_attr_destroy(&attr);
}

/* Stop: wake every connection (delays via the condition, blocked I/O and hangs via
 * shutdown()) and give them a moment to log their "close". Returns true when all
 * threads are gone, so shared state may be freed. */
static bool stop_all(struct server *s)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += 5;
    pthread_mutex_lock(&s->lock);
    s->stopping = true;
    for (struct conn *c = s->conns; c; c = c->next)
        shutdown(c->fd, SHUT_RDWR);
    pthread_cond_broadcast(&s->cond);
    int r = 0;
    while (s->active > 0 && r != ETIMEDOUT)
        r = pthread_cond_timedwait(&s->cond, &s->lock, &until);
    bool done = s->active == 0;
    pthread_mutex_unlock(&s->lock);
    return done;
}

static void usage(void)
{
    fputs("usage: fakesmtp --listen ADDR:PORT --port-file FILE --log FILE [--maildir DIR]\n"
          "                [--tls none|starttls|implicit] [--cert PEM --key PEM]\n"
          "                [--script FILE]\n",
          stderr);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"listen", required_argument, NULL, 'l'}, {"port-file", required_argument, NULL, 'p'},
        {"log", required_argument, NULL, 'g'},    {"maildir", required_argument, NULL, 'm'},
        {"tls", required_argument, NULL, 't'},    {"cert", required_argument, NULL, 'c'},
        {"key", required_argument, NULL, 'k'},    {"script", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
    };
    const char *listen_spec = NULL, *port_file = NULL, *log_path = NULL, *cert = NULL, *key = NULL,
               *script_path = NULL, *tls = "none";
    struct server srv;
    memset(&srv, 0, sizeof srv);
    srv.logfd = -1;
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'l':
            listen_spec = optarg;
            break;
        case 'p':
            port_file = optarg;
            break;
        case 'g':
            log_path = optarg;
            break;
        case 'm':
            srv.maildir = optarg;
            break;
        case 't':
            tls = optarg;
            break;
        case 'c':
            cert = optarg;
            break;
        case 'k':
            key = optarg;
            break;
        case 's':
            script_path = optarg;
            break;
        case 'h':
            usage();
            return 0;
        default:
            usage();
            return 2;
        }
    }
    if (optind != argc || !listen_spec || !log_path) {
        usage();
        return 2;
    }
    if (strcmp(tls, "none") == 0)
        srv.tls_mode = TLS_NONE;
    else if (strcmp(tls, "starttls") == 0)
        srv.tls_mode = TLS_STARTTLS;
    else if (strcmp(tls, "implicit") == 0)
        srv.tls_mode = TLS_IMPLICIT;
    else {
        usage();
        return 2;
    }
    if (srv.tls_mode != TLS_NONE && (!cert || !key)) {
        fputs("fakesmtp: --tls needs --cert and --key\n", stderr);
        return 2;
    }

    script_defaults(&srv.script);
    if (script_path && script_load(&srv.script, script_path) < 0) {
        script_free(&srv.script);
        return 2;
    }
    script_finish(&srv.script);

    srv.logfd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (srv.logfd < 0) {
        fprintf(stderr, "fakesmtp: %s: %s\n", log_path, strerror(errno));
        goto fail;
    }
    if (srv.maildir && mkdir(srv.maildir, 0755) < 0 && errno != EEXIST) {
        fprintf(stderr, "fakesmtp: %s: %s\n", srv.maildir, strerror(errno));
        goto fail;
    }

    wolfSSL_Init();
    if (srv.tls_mode != TLS_NONE && tls_ctx_setup(&srv, cert, key) < 0)
        goto fail;

    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&srv.cond, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&srv.lock, NULL);

    /* Signals are blocked everywhere (threads inherit this) and read via signalfd. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    int sfd = signalfd(-1, &set, SFD_CLOEXEC);
    if (sfd < 0)
        goto fail;
    int lfd = listen_on(listen_spec);
    if (lfd < 0)
        goto fail;
    if (port_file && write_port_file(port_file, lfd) < 0)
        goto fail;

    for (;;) {
        struct pollfd p[2] = {{.fd = lfd, .events = POLLIN}, {.fd = sfd, .events = POLLIN}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[1].revents)
            break;
        if (p[0].revents & POLLIN)
            accept_one(&srv, lfd);
    }
    close(lfd);
    if (stop_all(&srv)) {
        if (srv.ctx)
            wolfSSL_CTX_free(srv.ctx);
        wolfSSL_Cleanup();
        script_free(&srv.script);
        pthread_mutex_destroy(&srv.lock);
        pthread_cond_destroy(&srv.cond);
    }
    close(sfd);
    close(srv.logfd);
    return 0;

fail:
    /* Start-up failed: no connection thread exists yet. */
    if (srv.ctx)
        wolfSSL_CTX_free(srv.ctx);
    script_free(&srv.script);
    return 1;
}
