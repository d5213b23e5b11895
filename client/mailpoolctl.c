/*
 * mailpoolctl: the operator's front end to mailpoold's control socket.
 * Sends one request line, reads the one-line JSON (RFC 8259) answer and
 * prints it as tables, or as it came with --json.  Exit codes: sysexits.h.
 */
#include <errno.h>
#include <getopt.h>
#include <libconfig.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include "json_read.h"
#include "proto.h"

#define PROG "mailpoolctl"
/* How long to wait for the daemon's answer. */
#define ANSWER_TIMEOUT_MS 15000
/* "test RELAY" runs a whole session first; the daemon bounds it by 300 seconds. */
#define TEST_ANSWER_TIMEOUT_MS 330000
static int answer_timeout_ms = ANSWER_TIMEOUT_MS;

/* What went wrong, mapped to an exit status in one place: exit_code(). */
enum outcome {
    OUT_OK,
    OUT_USAGE,       /* bad command line */
    OUT_CONFIG,      /* -C file unreadable or wrong */
    OUT_UNAVAILABLE, /* the daemon is not reachable or did not answer */
    OUT_REFUSED,     /* the daemon answered {"ok":false} */
    OUT_PROTOCOL,    /* the answer is not what the protocol says */
    OUT_DENIED,      /* the socket or the daemon refused us for who we are */
    OUT_OSERR,       /* out of memory and the like */
};

static int exit_code(enum outcome o)
{
    switch (o) {
    case OUT_OK:
        return EX_OK;
    case OUT_USAGE:
        return EX_USAGE;
    case OUT_CONFIG:
        return EX_CONFIG;
    case OUT_UNAVAILABLE:
        return EX_UNAVAILABLE;
    case OUT_REFUSED:
        return 1;
    case OUT_PROTOCOL:
        return EX_PROTOCOL;
    case OUT_DENIED:
        return EX_NOPERM;
    case OUT_OSERR:
        return EX_OSERR;
    }
    return EX_SOFTWARE;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: " PROG " [-C CONFIG] [-s SOCKET] [--json] COMMAND [ARG...]\n"
               "  -C, --config FILE    read daemon.control_socket from the daemon's config\n"
               "  -s, --socket PATH    control socket (default: $" MAILPOOL_CONTROL_SOCKET_ENV
               ", then -C, then " MAILPOOL_DEFAULT_CONTROL_SOCKET ")\n"
               "  -j, --json           print the daemon's JSON answer as it came\n"
               "  -V, --version        print the version and exit\n"
               "commands:\n"
               "  status               version, uptime and counters\n"
               "  pool                 upstream connections and per-relay counters\n"
               "  relays               effective relay profiles (secrets never shown)\n"
               "  queue                the queued messages, with pending recipients\n"
               "  queue show ID        one message in detail\n"
               "  flush [ID|RELAY]     retry now: everything, one message or one relay\n"
               "  hold ID              keep a message from delivery until released\n"
               "  release ID           let a held message go again\n"
               "  delete ID            remove a message from the queue for good\n"
               "  reload               re-read the configuration (a bad one is refused)\n"
               "  metrics              counters in the Prometheus text exposition format\n"
               "  test RELAY           connect, TLS, EHLO and AUTH as delivery would; no mail\n");
}

static void complain(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void complain(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs(PROG ": ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---- finding and talking to the socket ---------------------------------------- */

/* daemon.control_socket of the config file, or the default when it has none. */
static enum outcome socket_from_config(const char *file, char **path)
{
    config_t cfg;
    const char *s = NULL;
    enum outcome o = OUT_OK;

    config_init(&cfg);
    if (config_read_file(&cfg, file) != CONFIG_TRUE) {
        if (config_error_type(&cfg) == CONFIG_ERR_FILE_IO)
            complain("cannot read %s: %s", file, strerror(errno));
        else
            complain("%s:%d: %s", file, config_error_line(&cfg), config_error_text(&cfg));
        o = OUT_CONFIG;
    } else if (config_lookup_string(&cfg, "daemon.control_socket", &s) == CONFIG_TRUE) {
        *path = strdup(s);
        if (*path == NULL)
            o = OUT_OSERR;
    } else if (config_lookup(&cfg, "daemon.control_socket") != NULL) {
        complain("%s: daemon.control_socket must be a string", file);
        o = OUT_CONFIG;
    } else {
        *path = strdup(MAILPOOL_DEFAULT_CONTROL_SOCKET);
        if (*path == NULL)
            o = OUT_OSERR;
    }
    config_destroy(&cfg);
    return o;
}

static enum outcome connect_socket(const char *path, int *fdp)
{
    struct sockaddr_un sun;
    memset(&sun, 0, sizeof(sun));
    sun.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(sun.sun_path)) {
        complain("%s: socket path too long", path);
        return OUT_USAGE;
    }
    memcpy(sun.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        complain("socket: %s", strerror(errno));
        return OUT_OSERR;
    }
    if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
        int e = errno;
        complain("cannot reach mailpoold at %s: %s%s", path, strerror(e),
                 e == ENOENT || e == ECONNREFUSED ? " (is mailpoold running?)"
                 : e == EACCES || e == EPERM      ? " (only root, mailpoold's user and "
                                                    "daemon.control_group may use it)"
                                                  : "");
        close(fd);
        return e == EACCES || e == EPERM ? OUT_DENIED : OUT_UNAVAILABLE;
    }
    *fdp = fd;
    return OUT_OK;
}

static enum outcome send_all(int fd, const char *buf, size_t len, const char *path)
{
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EPIPE || errno == ECONNRESET))
            return OUT_OK; /* the daemon hung up first: its answer line says why */
        if (n < 0) {
            complain("cannot send the request to mailpoold at %s: %s", path, strerror(errno));
            return OUT_UNAVAILABLE;
        }
        buf += n;
        len -= (size_t)n;
    }
    return OUT_OK;
}

/* Read the answer line (without its LF) into a new buffer. */
static enum outcome read_answer(int fd, const char *path, char **out, size_t *outlen)
{
    size_t len = 0, cap = 4096;
    char *buf = malloc(cap);
    if (buf == NULL)
        return OUT_OSERR;
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int r = poll(&pfd, 1, answer_timeout_ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (r == 0) {
            complain("mailpoold at %s did not answer within %d seconds", path,
                     answer_timeout_ms / 1000);
            free(buf);
            return OUT_UNAVAILABLE;
        }
        if (len == cap) {
            if (cap > JSON_READ_MAX_SIZE) {
                complain("the answer from mailpoold is over %u bytes", JSON_READ_MAX_SIZE);
                free(buf);
                return OUT_PROTOCOL;
            }
            char *nb = realloc(buf, cap * 2);
            if (nb == NULL) {
                free(buf);
                return OUT_OSERR;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t n = r < 0 ? -1 : recv(fd, buf + len, cap - len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            complain("cannot read the answer of mailpoold at %s: %s", path, strerror(errno));
            free(buf);
            return OUT_UNAVAILABLE;
        }
        if (n == 0) {
            complain("mailpoold at %s closed the connection without an answer", path);
            free(buf);
            return OUT_UNAVAILABLE;
        }
        char *nl = memchr(buf + len, '\n', (size_t)n);
        len += (size_t)n;
        if (nl != NULL) {
            *nl = '\0';
            *out = buf;
            *outlen = (size_t)(nl - buf);
            return OUT_OK;
        }
    }
}

/* ---- printing ------------------------------------------------------------------- */

/*
 * A copy of s that is safe on a terminal: control bytes (C0, DEL, and C1 as
 * UTF-8) become \xNN; other UTF-8 is kept.  NULL when out of memory.
 */
static char *safe_text(const char *s, size_t len)
{
    char *out = malloc(len * 4 + 1);
    if (out == NULL)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char b = (unsigned char)s[i];
        if (b < 0x20 || b == 0x7f || b == '\\') {
            o += (size_t)sprintf(out + o, "\\x%02x", b);
        } else if (b == 0xc2 && i + 1 < len && (unsigned char)s[i + 1] < 0xa0) {
            /* U+0080..U+009F: C1 controls, which some terminals obey */
            o += (size_t)sprintf(out + o, "\\x%02x", (unsigned char)s[i + 1]);
            i++;
        } else {
            out[o++] = (char)b;
        }
    }
    out[o] = '\0';
    return out;
}

/* A table of text cells, printed with columns as wide as their widest cell. */
struct table {
    size_t ncols, nrows;
    char **cells; /* nrows * ncols */
};

static int table_row(struct table *t, const char *const *cells)
{
    char **nc = realloc(t->cells, (t->nrows + 1) * t->ncols * sizeof(*nc));
    if (nc == NULL)
        return -1;
    t->cells = nc;
    for (size_t i = 0; i < t->ncols; i++) {
        const char *c = cells[i] != NULL ? cells[i] : "-";
        t->cells[t->nrows * t->ncols + i] = safe_text(c, strlen(c));
        if (t->cells[t->nrows * t->ncols + i] == NULL) {
            for (size_t j = 0; j < i; j++)
                free(t->cells[t->nrows * t->ncols + j]);
            return -1;
        }
    }
    t->nrows++;
    return 0;
}

/*
 * Print the table; after each row but the first (the header) after(r, arg)
 * may print lines of its own, r counting the rows after the header from 0.
 */
static void table_print_with(const struct table *t, void (*after)(size_t r, void *arg), void *arg)
{
    size_t *width = calloc(t->ncols, sizeof(*width));
    if (width == NULL)
        return;
    for (size_t r = 0; r < t->nrows; r++) {
        for (size_t c = 0; c < t->ncols; c++) {
            size_t l = strlen(t->cells[r * t->ncols + c]);
            if (l > width[c])
                width[c] = l;
        }
    }
    for (size_t r = 0; r < t->nrows; r++) {
        for (size_t c = 0; c < t->ncols; c++) {
            const char *cell = t->cells[r * t->ncols + c];
            if (c + 1 == t->ncols)
                printf("%s\n", cell);
            else
                printf("%-*s  ", (int)width[c], cell);
        }
        if (after != NULL && r > 0)
            after(r - 1, arg);
    }
    free(width);
}

static void table_print(const struct table *t)
{
    table_print_with(t, NULL, NULL);
}

static void table_free(struct table *t)
{
    for (size_t i = 0; i < t->nrows * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
}

/* Room for any number or duration text formatted below (a long long is 20 digits). */
#define NUM_TEXT 48

/*
 * A member as display text: a string as it is (table_row() makes it safe),
 * a number formatted into buf (size NUM_TEXT), booleans as yes/no,
 * null or absent as "-".
 */
static const char *member_text(const struct json_value *obj, const char *key, char *buf)
{
    const struct json_value *v = json_get(obj, key);
    if (v == NULL || v->type == JSON_NULL)
        return "-";
    if (v->type == JSON_STRING)
        return v->string;
    if (v->type == JSON_BOOL)
        return v->boolean ? "yes" : "no";
    if (v->type == JSON_NUMBER && v->is_integer)
        snprintf(buf, NUM_TEXT, "%lld", v->integer);
    else if (v->type == JSON_NUMBER)
        snprintf(buf, NUM_TEXT, "%g", v->number);
    else
        return "?";
    return buf;
}

/* Seconds as "42s", "3m05s", "2h03m", "4d06h", into buf (size NUM_TEXT). */
static const char *seconds_text(long long s, char *buf)
{
    size_t len = NUM_TEXT;
    if (s < 60)
        snprintf(buf, len, "%llds", s);
    else if (s < 3600)
        snprintf(buf, len, "%lldm%02llds", s / 60, s % 60);
    else if (s < 86400)
        snprintf(buf, len, "%lldh%02lldm", s / 3600, s % 3600 / 60);
    else
        snprintf(buf, len, "%lldd%02lldh", s / 86400, s % 86400 / 3600);
    return buf;
}

/* A member holding a byte count as "812 B", "4.0 KiB", "12.5 MiB"; "-" when absent. */
static const char *size_text(const struct json_value *obj, const char *key, char *buf)
{
    static const char *const units[] = {"KiB", "MiB", "GiB", "TiB"};
    long long n;
    if (json_get_int(obj, key, &n) != 0 || n < 0)
        return "-";
    if (n < 1024) {
        snprintf(buf, NUM_TEXT, "%lld B", n);
        return buf;
    }
    double v = (double)n / 1024;
    size_t u = 0;
    while (v >= 1024 && u + 1 < sizeof(units) / sizeof(units[0])) {
        v /= 1024;
        u++;
    }
    snprintf(buf, NUM_TEXT, "%.1f %s", v, units[u]);
    return buf;
}

/* A member holding seconds, as seconds_text() writes them; "-" when absent. */
static const char *duration_text(const struct json_value *obj, const char *key, char *buf)
{
    long long s;
    if (json_get_int(obj, key, &s) != 0 || s < 0)
        return "-";
    return seconds_text(s, buf);
}

static enum outcome print_status(const struct json_value *v)
{
    static const struct {
        const char *key, *label;
    } rows[] = {
        {"version", "version"},   {"pid", "pid"},           {"uptime", "uptime"},
        {"clients", "clients"},   {"busy_clients", "busy"}, {"relays", "relays"},
        {"sessions", "sessions"}, {"waiting", "waiting"},   {"messages", "messages"},
        {"queued", "queued"},
    };
    struct table t = {.ncols = 2};
    enum outcome o = OUT_OK;
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        char buf[NUM_TEXT];
        const char *val = strcmp(rows[i].key, "uptime") == 0 ? duration_text(v, rows[i].key, buf)
                                                             : member_text(v, rows[i].key, buf);
        const char *cells[] = {rows[i].label, val};
        if (table_row(&t, cells) != 0) {
            o = OUT_OSERR;
            break;
        }
    }
    if (o == OUT_OK)
        table_print(&t);
    table_free(&t);
    return o;
}

/* One value as text: arrays joined with ", ", null as "-".  malloc'd; NULL on ENOMEM. */
static char *value_text(const struct json_value *x)
{
    char num[64];
    switch (x->type) {
    case JSON_STRING:
        return strdup(x->string);
    case JSON_BOOL:
        return strdup(x->boolean ? "yes" : "no");
    case JSON_NUMBER:
        if (x->is_integer)
            snprintf(num, sizeof(num), "%lld", x->integer);
        else
            snprintf(num, sizeof(num), "%g", x->number);
        return strdup(num);
    case JSON_ARRAY: {
        size_t cap = 1, len = 0;
        char *out = calloc(1, 1);
        for (size_t i = 0; out && i < x->count; i++) {
            char *part = value_text(x->items[i]);
            if (part == NULL) {
                free(out);
                return NULL;
            }
            size_t need = len + strlen(part) + 3;
            if (need > cap) {
                char *grown = realloc(out, need * 2);
                if (grown == NULL) {
                    free(part);
                    free(out);
                    return NULL;
                }
                out = grown;
                cap = need * 2;
            }
            len += (size_t)sprintf(out + len, "%s%s", i ? ", " : "", part);
            free(part);
        }
        if (out && len == 0) {
            free(out);
            return strdup("-");
        }
        return out;
    }
    default:
        return strdup("-");
    }
}

/* The settings of "relays" that hold seconds, shown as durations. */
static int relay_is_duration(const char *key)
{
    static const char *const keys[] = {
        "timeout",
        "timeouts.connect",
        "timeouts.greeting",
        "timeouts.command",
        "timeouts.data_block",
        "timeouts.data_end",
        "pool.idle_timeout",
        "pool.keepalive",
        "pool.max_age",
        "pool.wait_timeout",
        "auth.password_command_ttl",
    };
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        if (strcmp(key, keys[i]) == 0)
            return 1;
    return 0;
}

/* Rows "prefix.key  value" for every member of an object, nested objects flattened. */
static int relay_rows(struct table *t, const char *relay, const char *prefix,
                      const struct json_value *obj)
{
    for (size_t i = 0; i < obj->count; i++) {
        char key[128];
        snprintf(key, sizeof(key), "%s%s%s", prefix, *prefix ? "." : "", obj->keys[i]);
        if (obj->items[i]->type == JSON_OBJECT) {
            if (relay_rows(t, relay, key, obj->items[i]) != 0)
                return -1;
            continue;
        }
        char dur[NUM_TEXT];
        char *val = relay_is_duration(key) && obj->items[i]->type == JSON_NUMBER &&
                            obj->items[i]->is_integer && obj->items[i]->integer >= 0
                        ? strdup(seconds_text(obj->items[i]->integer, dur))
                        : value_text(obj->items[i]);
        const char *cells[3] = {relay, key, val ? val : "?"};
        int rc = val == NULL ? -1 : table_row(t, cells);
        free(val);
        if (rc != 0)
            return -1;
    }
    return 0;
}

/* "relays": the effective profile of every relay, one SETTING VALUE row each. */
static enum outcome print_relays(const struct json_value *v)
{
    const struct json_value *relays = json_get(v, "relays");
    if (relays == NULL || relays->type != JSON_ARRAY) {
        complain("the answer has no \"relays\" list");
        return OUT_PROTOCOL;
    }
    static const char *const head[] = {"RELAY", "SETTING", "VALUE"};
    struct table t = {.ncols = 3};
    enum outcome o = table_row(&t, head) == 0 ? OUT_OK : OUT_OSERR;
    for (size_t r = 0; o == OUT_OK && r < relays->count; r++) {
        const struct json_value *rel = relays->items[r];
        const char *name = json_get_string(rel, "name");
        if (rel->type != JSON_OBJECT || name == NULL) {
            complain("relay %zu of the answer is malformed", r);
            o = OUT_PROTOCOL;
        } else if (relay_rows(&t, name, "", rel) != 0) {
            o = OUT_OSERR;
        }
    }
    if (o == OUT_OK)
        table_print(&t);
    table_free(&t);
    return o;
}

static enum outcome print_pool(const struct json_value *v)
{
    const struct json_value *relays = json_get(v, "relays");
    if (relays == NULL || relays->type != JSON_ARRAY) {
        complain("the answer has no \"relays\" list");
        return OUT_PROTOCOL;
    }
    static const char *const conn_head[] = {"RELAY",   "HOST", "STATE", "TLS", "CIPHER",
                                            "RESUMED", "MSGS", "AGE",   "IDLE"};
    static const char *const conn_keys[] = {NULL,          "host",       "state",
                                            "tls_version", "tls_cipher", "tls_resumed",
                                            "messages",    "age",        "idle"};
    static const char *const relay_head[] = {"RELAY",  "SESSIONS", "IDLE",   "OPENING",  "WAITING",
                                             "OPENED", "REUSED",   "FAILED", "MESSAGES", "RETRIED"};
    static const char *const relay_keys[] = {"name",   "sessions", "idle",   "opening",  "waiting",
                                             "opened", "reused",   "failed", "messages", "retried"};
    enum { NCONN = sizeof(conn_head) / sizeof(conn_head[0]) };
    enum { NRELAY = sizeof(relay_head) / sizeof(relay_head[0]) };
    struct table conns = {.ncols = NCONN}, totals = {.ncols = NRELAY};
    enum outcome o = OUT_OK;
    if (table_row(&conns, conn_head) != 0 || table_row(&totals, relay_head) != 0)
        o = OUT_OSERR;
    for (size_t r = 0; o == OUT_OK && r < relays->count; r++) {
        const struct json_value *rel = relays->items[r];
        const char *name = json_get_string(rel, "name");
        const struct json_value *list = json_get(rel, "connections");
        if (rel->type != JSON_OBJECT || name == NULL || list == NULL || list->type != JSON_ARRAY) {
            complain("relay %zu of the answer is malformed", r);
            o = OUT_PROTOCOL;
            break;
        }
        for (size_t i = 0; o == OUT_OK && i < list->count; i++) {
            char text[NCONN][NUM_TEXT];
            const char *cells[NCONN];
            for (size_t c = 0; c < NCONN; c++) {
                if (conn_keys[c] == NULL)
                    cells[c] = name;
                else if (strcmp(conn_keys[c], "age") == 0 || strcmp(conn_keys[c], "idle") == 0)
                    cells[c] = duration_text(list->items[i], conn_keys[c], text[c]);
                else
                    cells[c] = member_text(list->items[i], conn_keys[c], text[c]);
            }
            if (table_row(&conns, cells) != 0)
                o = OUT_OSERR;
        }
        char text[NRELAY][NUM_TEXT];
        const char *cells[NRELAY];
        for (size_t c = 0; c < NRELAY; c++)
            cells[c] = member_text(rel, relay_keys[c], text[c]);
        if (o == OUT_OK && table_row(&totals, cells) != 0)
            o = OUT_OSERR;
    }
    if (o == OUT_OK) {
        if (conns.nrows > 1)
            table_print(&conns);
        else
            printf("no upstream connections\n");
        printf("\n");
        table_print(&totals);
    }
    table_free(&conns);
    table_free(&totals);
    return o;
}

/* ---- the queue ----------------------------------------------------------------- */

/* Print a string member made safe for the terminal ("-" when absent or null). */
static void put_member(const struct json_value *obj, const char *key)
{
    const struct json_value *v = json_get(obj, key);
    char *t = v != NULL && v->type == JSON_STRING ? safe_text(v->string, v->len) : NULL;
    fputs(t != NULL ? t : "-", stdout);
    free(t);
}

/* When the next attempt is due, relative to now, into buf (size NUM_TEXT). */
static const char *next_text(const struct json_value *m, time_t now, char *buf)
{
    const struct json_value *held = json_get(m, "held");
    long long next;
    if (held != NULL && held->type == JSON_BOOL && held->boolean)
        return "held";
    if (json_get_int(m, "next_attempt", &next) != 0)
        return "running";
    if (next <= (long long)now)
        return "now";
    char d[NUM_TEXT];
    snprintf(buf, NUM_TEXT, "in %s", seconds_text(next - (long long)now, d));
    return buf;
}

static int rcpt_done(const struct json_value *r)
{
    const char *state = json_get_string(r, "state");
    return state != NULL && (strcmp(state, "delivered") == 0 || strcmp(state, "done") == 0);
}

/* Each recipient still owed something, under its message's row. */
static void print_rcpts(size_t row, void *arg)
{
    const struct json_value *msgs = arg;
    const struct json_value *rcpts = json_get(msgs->items[row], "recipients");
    for (size_t i = 0; rcpts != NULL && rcpts->type == JSON_ARRAY && i < rcpts->count; i++) {
        const struct json_value *r = rcpts->items[i];
        if (rcpt_done(r))
            continue;
        fputs("    ", stdout);
        put_member(r, "address");
        fputs("  ", stdout);
        put_member(r, "state");
        if (json_get_string(r, "last_error") != NULL) {
            fputs("  ", stdout);
            put_member(r, "last_error");
        }
        putchar('\n');
    }
}

static enum outcome check_message(const struct json_value *m)
{
    const struct json_value *rcpts = json_get(m, "recipients");
    if (m->type != JSON_OBJECT || json_get_string(m, "id") == NULL || rcpts == NULL ||
        rcpts->type != JSON_ARRAY) {
        complain("a message in the answer is malformed");
        return OUT_PROTOCOL;
    }
    return OUT_OK;
}

static enum outcome print_queue(const struct json_value *v)
{
    const struct json_value *msgs = json_get(v, "messages");
    if (msgs == NULL || msgs->type != JSON_ARRAY) {
        complain("the answer has no \"messages\" list");
        return OUT_PROTOCOL;
    }
    if (msgs->count == 0) {
        printf("the queue is empty\n");
        return OUT_OK;
    }
    static const char *const head[] = {"ID",    "AGE",      "SIZE", "SENDER",
                                       "RCPTS", "ATTEMPTS", "NEXT", "LAST ERROR"};
    enum { NCOL = sizeof(head) / sizeof(head[0]) };
    struct table t = {.ncols = NCOL};
    enum outcome o = table_row(&t, head) == 0 ? OUT_OK : OUT_OSERR;
    time_t now = time(NULL);
    for (size_t i = 0; o == OUT_OK && i < msgs->count; i++) {
        const struct json_value *m = msgs->items[i];
        if ((o = check_message(m)) != OUT_OK)
            break;
        const struct json_value *rcpts = json_get(m, "recipients");
        size_t pending = 0;
        for (size_t r = 0; r < rcpts->count; r++)
            pending += !rcpt_done(rcpts->items[r]);
        char text[NCOL][NUM_TEXT];
        const char *sender = json_get_string(m, "sender");
        snprintf(text[4], NUM_TEXT, "%zu/%zu", pending, rcpts->count);
        const char *cells[NCOL] = {
            json_get_string(m, "id"),
            duration_text(m, "age", text[1]),
            size_text(m, "size", text[2]),
            sender != NULL && sender[0] == '\0' ? "<>" : sender,
            text[4],
            member_text(m, "attempts", text[5]),
            next_text(m, now, text[6]),
            json_get_string(m, "last_error"),
        };
        if (table_row(&t, cells) != 0)
            o = OUT_OSERR;
    }
    if (o == OUT_OK)
        table_print_with(&t, print_rcpts, (void *)msgs);
    table_free(&t);
    return o;
}

static enum outcome print_message(const struct json_value *v)
{
    const struct json_value *m = json_get(v, "message");
    if (m == NULL) {
        complain("the answer has no \"message\"");
        return OUT_PROTOCOL;
    }
    enum outcome o = check_message(m);
    if (o != OUT_OK)
        return o;
    struct table t = {.ncols = 2};
    char text[6][NUM_TEXT], created[64] = "-";
    long long c;
    if (json_get_int(m, "created", &c) == 0) {
        time_t tc = (time_t)c;
        struct tm tm;
        if (localtime_r(&tc, &tm) != NULL)
            strftime(created, sizeof(created), "%Y-%m-%d %H:%M:%S %z", &tm);
    }
    const char *sender = json_get_string(m, "sender");
    const char *rows[][2] = {
        {"id", json_get_string(m, "id")},
        {"created", created},
        {"age", duration_text(m, "age", text[0])},
        {"sender", sender != NULL && sender[0] == '\0' ? "<>" : sender},
        {"relay", json_get_string(m, "relay")},
        {"size", size_text(m, "size", text[1])},
        {"attempts", member_text(m, "attempts", text[2])},
        {"next attempt", next_text(m, time(NULL), text[3])},
        {"last error", json_get_string(m, "last_error")},
        {"held", member_text(m, "held", text[4])},
        {"bounce", member_text(m, "bounce", text[5])},
    };
    for (size_t i = 0; o == OUT_OK && i < sizeof(rows) / sizeof(rows[0]); i++) {
        if (table_row(&t, rows[i]) != 0)
            o = OUT_OSERR;
    }
    if (o == OUT_OK) {
        table_print(&t);
        printf("recipients:\n");
    }
    table_free(&t);
    const struct json_value *rcpts = json_get(m, "recipients");
    struct table rt = {.ncols = 3};
    for (size_t i = 0; o == OUT_OK && i < rcpts->count; i++) {
        const char *cells[] = {json_get_string(rcpts->items[i], "address"),
                               json_get_string(rcpts->items[i], "state"),
                               json_get_string(rcpts->items[i], "last_error")};
        if (table_row(&rt, cells) != 0)
            o = OUT_OSERR;
    }
    if (o == OUT_OK) {
        /* Indented under the heading: the table printer has no margin of its own. */
        for (size_t i = 0; i < rt.nrows * rt.ncols; i += rt.ncols) {
            char *indented = NULL;
            if (asprintf(&indented, "  %s", rt.cells[i]) < 0) {
                o = OUT_OSERR;
                break;
            }
            free(rt.cells[i]);
            rt.cells[i] = indented;
        }
        if (o == OUT_OK)
            table_print(&rt);
    }
    table_free(&rt);
    return o;
}

/* "test": the steps with their timing, then what the server showed. */
static enum outcome print_test(const struct json_value *v, int ok)
{
    const struct json_value *steps = json_get(v, "steps");
    if (steps == NULL || steps->type != JSON_ARRAY) {
        complain("the answer has no \"steps\"");
        return OUT_PROTOCOL;
    }
    char *relay = NULL, *host = NULL, *err = NULL;
    const char *r = json_get_string(v, "relay"), *h = json_get_string(v, "host");
    relay = safe_text(r ? r : "?", strlen(r ? r : "?"));
    host = safe_text(h ? h : "?", strlen(h ? h : "?"));
    if (ok) {
        printf("relay %s, host %s: OK\n", relay ? relay : "?", host ? host : "?");
    } else {
        const char *e = json_get_string(v, "error"), *f = json_get_string(v, "failed_step");
        err = safe_text(e ? e : "?", strlen(e ? e : "?"));
        printf("relay %s: FAILED at step %s\n  %s\n", relay ? relay : "?", f ? f : "?",
               err ? err : "?");
    }
    free(relay);
    free(host);
    free(err);

    enum outcome o = OUT_OK;
    struct table t = {.ncols = 3};
    const char *head[] = {"STEP", "HOST", "TIME"};
    if (table_row(&t, head) != 0)
        o = OUT_OSERR;
    for (size_t i = 0; o == OUT_OK && i < steps->count; i++) {
        const struct json_value *st = steps->items[i];
        long long us = 0;
        char ms[NUM_TEXT] = "-";
        if (json_get_int(st, "usec", &us) == 0)
            snprintf(ms, sizeof(ms), "%lld.%03lld ms", us / 1000, us % 1000);
        const char *cells[] = {json_get_string(st, "step"), json_get_string(st, "host"), ms};
        if (table_row(&t, cells) != 0)
            o = OUT_OSERR;
    }
    long long total = 0;
    char ms[NUM_TEXT] = "-";
    if (json_get_int(v, "total_usec", &total) == 0)
        snprintf(ms, sizeof(ms), "%lld.%03lld ms", total / 1000, total % 1000);
    const char *tot[] = {"total", "", ms};
    if (o == OUT_OK && table_row(&t, tot) != 0)
        o = OUT_OSERR;
    if (o == OUT_OK)
        table_print(&t);
    table_free(&t);

    const struct json_value *caps = json_get(v, "capabilities");
    if (o == OUT_OK && caps != NULL && caps->type == JSON_ARRAY) {
        printf("capabilities:\n");
        for (size_t i = 0; i < caps->count; i++) {
            const struct json_value *c = caps->items[i];
            char *text = c->type == JSON_STRING ? safe_text(c->string, c->len) : NULL;
            printf("  %s\n", text ? text : "?");
            free(text);
        }
    }
    const struct json_value *tls = json_get(v, "tls");
    if (o == OUT_OK && tls != NULL && tls->type == JSON_OBJECT) {
        struct table tt = {.ncols = 2};
        static const char *const keys[][2] = {
            {"version", "TLS version"},   {"cipher", "cipher"},
            {"subject", "subject"},       {"issuer", "issuer"},
            {"not_before", "not before"}, {"not_after", "not after"},
            {"pin_sha256", "pin_sha256"}, {"certificate_error", "certificate"},
        };
        for (size_t i = 0; o == OUT_OK && i < sizeof(keys) / sizeof(keys[0]); i++) {
            const char *val = json_get_string(tls, keys[i][0]);
            const char *cells[] = {keys[i][1], val};
            if (val != NULL && table_row(&tt, cells) != 0)
                o = OUT_OSERR;
            if (i == 3) { /* the names the certificate is good for, after its issuer */
                const struct json_value *san = json_get(tls, "san");
                for (size_t k = 0; o == OUT_OK && san && san->type == JSON_ARRAY && k < san->count;
                     k++) {
                    const struct json_value *n = san->items[k];
                    const char *row[] = {k == 0 ? "subjectAltName" : "",
                                         n->type == JSON_STRING ? n->string : "?"};
                    if (table_row(&tt, row) != 0)
                        o = OUT_OSERR;
                }
            }
        }
        if (o == OUT_OK)
            table_print(&tt);
        table_free(&tt);
    } else if (o == OUT_OK && tls != NULL) {
        printf("TLS: none\n");
    }
    const char *mech = json_get_string(v, "auth_mechanism");
    if (o == OUT_OK)
        printf("AUTH: %s\n", mech ? mech : "none");
    return o;
}

/* ---- main --------------------------------------------------------------------- */

/* Join the command words into one request line; NULL (with a message) if they cannot be sent. */
static char *build_request(int argc, char **argv)
{
    size_t len = 0;
    for (int i = 0; i < argc; i++) {
        for (const char *p = argv[i]; *p; p++) {
            unsigned char b = (unsigned char)*p;
            if (b <= 0x20 || b >= 0x7f) {
                complain("argument %d contains a space, control or non-ASCII character", i + 1);
                return NULL;
            }
        }
        if (argv[i][0] == '\0') {
            complain("argument %d is empty", i + 1);
            return NULL;
        }
        len += strlen(argv[i]) + 1;
    }
    if (len - 1 > MAILPOOL_MAX_CONTROL_LINE) {
        complain("the command is longer than %d bytes", MAILPOOL_MAX_CONTROL_LINE);
        return NULL;
    }
    char *line = malloc(len + 1);
    if (line == NULL) {
        complain("out of memory");
        return NULL;
    }
    size_t o = 0;
    for (int i = 0; i < argc; i++) {
        size_t l = strlen(argv[i]);
        memcpy(line + o, argv[i], l);
        o += l;
        line[o++] = i + 1 < argc ? ' ' : '\n';
    }
    line[o] = '\0';
    return line;
}

/* Send the request, read and check the answer, print it.  The outcome of it all. */
static enum outcome run(const char *path, const char *request, const char *command,
                        const char *argid, int json)
{
    int fd;
    enum outcome o = connect_socket(path, &fd);
    if (o != OUT_OK)
        return o;
    o = send_all(fd, request, strlen(request), path);
    char *answer = NULL;
    size_t alen = 0;
    if (o == OUT_OK)
        o = read_answer(fd, path, &answer, &alen);
    close(fd);
    if (o != OUT_OK)
        return o;

    char err[256];
    struct json_value *v = json_parse(answer, alen, err, sizeof(err));
    const struct json_value *ok = json_get(v, "ok");
    if (v == NULL || ok == NULL || ok->type != JSON_BOOL) {
        complain("malformed answer from mailpoold: %s", v == NULL ? err : "no \"ok\" member");
        json_value_free(v);
        free(answer);
        return OUT_PROTOCOL;
    }
    /* An answer without "v" is from a daemon older than the versioned protocol. */
    long long pv = 1;
    if (json_get(v, "v") != NULL && (json_get_int(v, "v", &pv) != 0 || pv != 1)) {
        complain("mailpoold speaks control protocol version %lld; this " PROG " speaks version 1",
                 pv);
        json_value_free(v);
        free(answer);
        return OUT_PROTOCOL;
    }
    const char *code = ok->boolean ? NULL : json_get_string(v, "code");
    enum outcome refused =
        code != NULL && strcmp(code, "permission_denied") == 0 ? OUT_DENIED : OUT_REFUSED;
    if (json) {
        printf("%s\n", answer);
        o = ok->boolean ? OUT_OK : refused;
    } else if (strcmp(command, "test") == 0 && json_get(v, "steps") != NULL) {
        /* A failed test still has its report; the exit status says it failed. */
        o = print_test(v, ok->boolean);
        if (o == OUT_OK && !ok->boolean)
            o = refused;
    } else if (!ok->boolean) {
        const struct json_value *e = json_get(v, "error");
        char *msg = e != NULL && e->type == JSON_STRING ? safe_text(e->string, e->len) : NULL;
        complain("%s", msg != NULL ? msg : "the daemon refused the command");
        free(msg);
        o = refused;
    } else if (strcmp(command, "status") == 0) {
        o = print_status(v);
    } else if (strcmp(command, "pool") == 0) {
        o = print_pool(v);
    } else if (strcmp(command, "relays") == 0) {
        o = print_relays(v);
    } else if (strcmp(command, "metrics") == 0) {
        /* Raw exposition text, for scrapers that run commands (node_exporter textfiles). */
        const struct json_value *t = json_get(v, "text");
        if (t == NULL || t->type != JSON_STRING) {
            complain("the answer has no \"text\"");
            o = OUT_PROTOCOL;
        } else {
            fwrite(t->string, 1, t->len, stdout);
        }
    } else if (strcmp(command, "queue") == 0 && json_get(v, "message") != NULL) {
        o = print_message(v);
    } else if (strcmp(command, "queue") == 0) {
        o = print_queue(v);
    } else if (strcmp(command, "flush") == 0) {
        long long n = 0;
        if (json_get_int(v, "flushed", &n) != 0) {
            complain("the answer has no \"flushed\" count");
            o = OUT_PROTOCOL;
        } else {
            printf("%lld message%s to be retried now\n", n, n == 1 ? "" : "s");
        }
    } else if (strcmp(command, "reload") == 0) {
        long long kept = 0, changed = 0, added = 0, removed = 0;
        if (json_get_int(v, "relays_kept", &kept) != 0 ||
            json_get_int(v, "relays_changed", &changed) != 0 ||
            json_get_int(v, "relays_added", &added) != 0 ||
            json_get_int(v, "relays_removed", &removed) != 0) {
            complain("the answer has no relay counts");
            o = OUT_PROTOCOL;
        } else {
            printf("reloaded: relays kept %lld, changed %lld, added %lld, removed %lld\n", kept,
                   changed, added, removed);
        }
    } else if (strcmp(command, "hold") == 0 || strcmp(command, "release") == 0 ||
               strcmp(command, "delete") == 0) {
        /* The id was checked by the daemon: letters and digits only. */
        printf("%s: %s\n", argid,
               command[0] == 'h'   ? "held"
               : command[0] == 'r' ? "released"
                                   : "deleted");
    } else {
        printf("%s\n", answer); /* no table for this command yet */
    }
    json_value_free(v);
    free(answer);
    if (fflush(stdout) != 0 && o == OUT_OK) {
        complain("cannot write the output: %s", strerror(errno));
        o = OUT_OSERR;
    }
    return o;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'C'}, {"socket", required_argument, NULL, 's'},
        {"json", no_argument, NULL, 'j'},         {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
    };
    const char *config = NULL, *sock = NULL;
    int json = 0, ch;
    /* "+": stop at the command, so its own arguments are never taken as options. */
    while ((ch = getopt_long(argc, argv, "+C:s:jVh", opts, NULL)) != -1) {
        switch (ch) {
        case 'C':
            config = optarg;
            break;
        case 's':
            sock = optarg;
            break;
        case 'j':
            json = 1;
            break;
        case 'V':
            printf(PROG " %s\n", MAILPOOL_VERSION);
            return EX_OK;
        case 'h':
            usage(stdout);
            return EX_OK;
        default:
            usage(stderr);
            return exit_code(OUT_USAGE);
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return exit_code(OUT_USAGE);
    }
    if (strcmp(argv[optind], "test") == 0)
        answer_timeout_ms = TEST_ANSWER_TIMEOUT_MS;
    char *request = build_request(argc - optind, argv + optind);
    if (request == NULL)
        return exit_code(OUT_USAGE);

    char *from_config = NULL;
    const char *env = getenv(MAILPOOL_CONTROL_SOCKET_ENV);
    if (sock == NULL && env != NULL && env[0] != '\0')
        sock = env;
    if (sock == NULL && config != NULL) {
        enum outcome o = socket_from_config(config, &from_config);
        if (o != OUT_OK) {
            free(request);
            return exit_code(o);
        }
        sock = from_config;
    }
    if (sock == NULL)
        sock = MAILPOOL_DEFAULT_CONTROL_SOCKET;

    enum outcome o =
        run(sock, request, argv[optind], optind + 1 < argc ? argv[optind + 1] : "", json);
    free(request);
    free(from_config);
    return exit_code(o);
}
