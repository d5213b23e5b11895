/*
 * mailpool-sendmail: a sendmail-compatible command that hands the message
 * on stdin to mailpoold through libmailpool.  Adds Date/Message-ID/From as
 * RFC 5322 section 3.6 asks; exit codes follow sysexits.h.
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <libconfig.h>
#include <pwd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include "mailpool.h"
#include "proto.h"
#include "sendmail_hdr.h"
#include "sendmail_queue.h"

#define PROG "mailpool-sendmail"
/*
 * Queue mode by default: the daemon answers once the message is on disk, so
 * a relay that is down never loses mail.  -odi ("deliver interactively", as
 * in sendmail) asks for relay mode: the exit status is then the relay's own
 * answer.
 */
#define SUBMIT_MODE_DEFAULT MAILPOOL_MODE_QUEUE

struct strlist {
    char **v;
    size_t n, cap;
};

struct opts {
    const char *sender;   /* -f/-r, NULL: the invoking user */
    const char *fullname; /* -F */
    const char *config;   /* -C */
    int from_headers;     /* -t */
    int ignore_dots;      /* -i, -oi */
    int verbose;          /* -v */
    const char *mode;     /* XMODE: queue (default, -odb/-odq) or relay (-odi) */
    int list_queue;       /* -bp, or invoked as mailq */
    int flush;            /* -q, -qI<id>, -qR<relay> */
    const char *flush_target;
    int q_interval;  /* -q<interval>: ignored */
    char notify[32]; /* -N as NOTIFY= wants it ("NEVER", "SUCCESS,DELAY" ...), or "" */
    const char *ret; /* -R: "FULL", "HDRS" or NULL */
    char *envid;     /* -V, encoded as xtext; freed by main */
};

static int has_control(const char *s)
{
    for (; *s; s++) {
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return 1;
    }
    return 0;
}

static int list_add(struct strlist *l, const char *s, size_t len)
{
    size_t i;
    char *copy;

    for (i = 0; i < l->n; i++) {
        if (strlen(l->v[i]) == len && memcmp(l->v[i], s, len) == 0)
            return 0; /* each recipient once */
    }
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        char **v = realloc(l->v, cap * sizeof *v);

        if (v == NULL)
            return -1;
        l->v = v;
        l->cap = cap;
    }
    copy = strndup(s, len);
    if (copy == NULL)
        return -1;
    l->v[l->n++] = copy;
    return 0;
}

static int add_cb(void *ctx, const char *addr, size_t len)
{
    return list_add(ctx, addr, len);
}

static void list_free(struct strlist *l)
{
    size_t i;

    for (i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
}

static void usage(void)
{
    fprintf(stderr, "usage: " PROG " [-t] [-i] [-v] [-f sender] [-F fullname] [-C config] "
                    "[-N dsn] [-R full|hdrs] [-V envid] [--] [recipient ...] < message\n"
                    "       " PROG " -bp | mailq      list the queue\n"
                    "       " PROG " -q[I<id>|R<relay>]  deliver queued mail now\n");
}

/*
 * Read the message from stdin.  Without -i a line holding only "." ends it,
 * as in traditional sendmail.  Returns 0, or EX_IOERR / EX_OSERR.
 */
static int read_message(int ignore_dots, char **out, size_t *outlen)
{
    size_t len = 0, cap = 0, line = 0;
    char *buf = NULL;

    for (;;) {
        ssize_t n;

        if (cap - len < 65536) {
            char *p = realloc(buf, cap ? cap * 2 : 131072);

            if (p == NULL) {
                free(buf);
                return EX_OSERR;
            }
            buf = p;
            cap = cap ? cap * 2 : 131072;
        }
        n = read(STDIN_FILENO, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            fprintf(stderr, PROG ": reading the message: %s\n", strerror(errno));
            free(buf);
            return EX_IOERR;
        }
        len += (size_t)n;
        /* Look at each line that is complete now (all of them at end of input). */
        while (!ignore_dots && line < len) {
            char *nl = memchr(buf + line, '\n', len - line);
            size_t end = nl ? (size_t)(nl - buf) : len;

            if (nl == NULL && n > 0)
                break;
            if ((end - line == 1 && buf[line] == '.') ||
                (end - line == 2 && buf[line] == '.' && buf[line + 1] == '\r')) {
                *out = buf;
                *outlen = line;
                return 0;
            }
            line = end + 1;
        }
        if (n == 0)
            break;
    }
    *out = buf;
    *outlen = len;
    return 0;
}

/* Date, Message-ID and From for the fields the message lacks. */
static int build_added(const char *msg, size_t len, const struct opts *o, const char *from_addr,
                       const char *gecos, char **out)
{
    int has_date = 0, has_msgid = 0, has_from = 0;
    size_t pos = 0;
    struct hdr_field f;
    char date[64] = "", msgid[400] = "", host[256] = "localhost";
    char *from = NULL, *added;
    time_t now = time(NULL);
    struct tm tm;
    size_t need;

    while (hdr_next(msg, len, &pos, &f)) {
        has_date |= hdr_is(&f, "Date");
        has_msgid |= hdr_is(&f, "Message-ID");
        has_from |= hdr_is(&f, "From");
    }
    if (gethostname(host, sizeof host) != 0 || memchr(host, '\0', sizeof host) == NULL ||
        host[0] == '\0' || has_control(host))
        snprintf(host, sizeof host, "localhost");
    if (!has_date && localtime_r(&now, &tm) != NULL)
        strftime(date, sizeof date, "Date: %a, %d %b %Y %H:%M:%S %z\n", &tm);
    if (!has_msgid) {
        uint64_t rnd = 0;
        struct tm utc;

        if (getrandom(&rnd, sizeof rnd, 0) != sizeof rnd)
            rnd ^= (uint64_t)now * 2654435761u ^ (uint64_t)getpid() << 32;
        gmtime_r(&now, &utc);
        snprintf(msgid, sizeof msgid, "Message-ID: <%04d%02d%02d%02d%02d%02d.%ld.%016llx@%s>\n",
                 utc.tm_year + 1900, utc.tm_mon + 1, utc.tm_mday, utc.tm_hour, utc.tm_min,
                 utc.tm_sec, (long)getpid(), (unsigned long long)rnd, host);
    }
    if (!has_from) {
        from = hdr_mailbox(o->fullname ? o->fullname : gecos, from_addr);
        if (from == NULL)
            return -1;
    }
    need = strlen(date) + strlen(msgid) + (from ? strlen(from) + 8 : 0) + 1;
    added = malloc(need);
    if (added == NULL) {
        free(from);
        return -1;
    }
    snprintf(added, need, "%s%s%s%s%s", date, msgid, from ? "From: " : "", from ? from : "",
             from ? "\n" : "");
    free(from);
    *out = added;
    return 0;
}

/*
 * A socket path (key: "daemon.submit_socket" or "daemon.control_socket")
 * from the daemon's config file (-C); *path stays NULL when the file has
 * none.  Returns 0, EX_CONFIG or EX_OSERR.
 */
static int socket_from_config(const char *file, const char *key, char **path)
{
    config_t cfg;
    const char *s = NULL;
    int rc = 0;

    config_init(&cfg);
    if (config_read_file(&cfg, file) != CONFIG_TRUE) {
        if (config_error_type(&cfg) == CONFIG_ERR_FILE_IO)
            fprintf(stderr, PROG ": cannot read %s: %s\n", file, strerror(errno));
        else
            fprintf(stderr, PROG ": %s:%d: %s\n", file, config_error_line(&cfg),
                    config_error_text(&cfg));
        rc = EX_CONFIG;
    } else if (config_lookup_string(&cfg, key, &s) == CONFIG_TRUE) {
        *path = strdup(s);
        if (*path == NULL)
            rc = EX_OSERR;
    } else if (config_lookup(&cfg, key) != NULL) {
        fprintf(stderr, PROG ": %s: %s must be a string\n", file, key);
        rc = EX_CONFIG;
    }
    config_destroy(&cfg);
    return rc;
}

/* What a 5xx recipient failure means for the caller: unknown user or otherwise refused. */
static int is_nouser(int code)
{
    return code == 550 || code == 551 || code == 553;
}

/*
 * The one place that turns an outcome into a sysexits.h code.  Permanent
 * failures win over temporary ones; every temporary condition is EX_TEMPFAIL.
 */
static int exit_code(mailpool_status st, const mailpool_result *res)
{
    size_t i, perm = 0, nouser = 0, temp = 0;

    switch (st) {
    case MAILPOOL_OK:
        return EX_OK;
    case MAILPOOL_ERR_ARGS:
        return EX_DATAERR;
    case MAILPOOL_ERR_CONNECT:
    case MAILPOOL_ERR_IO:
    case MAILPOOL_ERR_TIMEOUT:
    case MAILPOOL_ERR_NOMEM:
    case MAILPOOL_ERR_PROTOCOL: /* outcome unknown: the caller should try again */
        return EX_TEMPFAIL;
    case MAILPOOL_ERR_THREAD:
    case MAILPOOL_ERR_CANCELLED:
    case MAILPOOL_ERR_STATE:
        return EX_SOFTWARE;
    case MAILPOOL_ERR_TEMPORARY:
    case MAILPOOL_ERR_PERMANENT:
    case MAILPOOL_ERR_PARTIAL:
        break;
    }
    for (i = 0; res != NULL && i < res->nrecipients; i++) {
        int code = res->recipients[i].code;

        if (code >= 500) {
            perm++;
            nouser += is_nouser(code);
        } else if (code >= 400 || code == 0) {
            temp++;
        }
    }
    if (perm > 0)
        return nouser == perm ? EX_NOUSER : EX_UNAVAILABLE;
    if (temp > 0 || st == MAILPOOL_ERR_TEMPORARY)
        return EX_TEMPFAIL;
    return EX_UNAVAILABLE; /* a permanent refusal without per-recipient detail (5xx greeting) */
}

static void print_reply(const char *who, const mailpool_reply *r)
{
    const char *p;

    fprintf(stderr, PROG ": %s: %d%s%s ", who, r->code, r->ecode[0] ? " " : "", r->ecode);
    for (p = r->text; *p; p++)
        fputc(*p == '\n' ? ' ' : *p, stderr);
    fputc('\n', stderr);
}

static int submit(const char *path, const char *sender, const struct strlist *rcpts,
                  const char *msg, size_t len, const struct opts *o)
{
    mailpool *mp = NULL;
    mailpool_result res;
    mailpool_envelope env = {.sender = sender,
                             .recipients = (const char *const *)rcpts->v,
                             .nrecipients = rcpts->n,
                             .mode = o->mode ? o->mode : SUBMIT_MODE_DEFAULT,
                             .notify = o->notify[0] ? o->notify : NULL,
                             .ret = o->ret,
                             .envid = o->envid};
    int verbose = o->verbose;
    mailpool_status st;
    size_t i;
    int rc;

    st = mailpool_open(path, 0, 0, &mp);
    if (st == MAILPOOL_ERR_CONNECT) {
        fprintf(stderr, PROG ": cannot reach mailpoold at %s: %s (is the daemon running?)\n", path,
                strerror(errno));
        return exit_code(st, NULL);
    }
    if (st != MAILPOOL_OK) {
        fprintf(stderr, PROG ": mailpoold at %s: %s\n", path, mailpool_strerror(st));
        return exit_code(st, NULL);
    }
    if (verbose)
        fprintf(stderr, PROG ": connected to mailpoold at %s\n", path);
    st = mailpool_send(mp, &env, msg, len, &res);
    if (st == MAILPOOL_ERR_ARGS)
        fprintf(stderr, PROG ": invalid sender or recipient address\n");
    else if (st != MAILPOOL_OK && st != MAILPOOL_ERR_PARTIAL && st != MAILPOOL_ERR_TEMPORARY &&
             st != MAILPOOL_ERR_PERMANENT)
        fprintf(stderr, PROG ": sending to mailpoold at %s: %s\n", path, mailpool_strerror(st));
    for (i = 0; i < res.nrecipients; i++) {
        const mailpool_reply *r = &res.recipients[i];

        if (verbose || (r->code != 0 && (r->code < 200 || r->code >= 300)))
            print_reply(rcpts->v[i], r);
    }
    rc = exit_code(st, &res);
    mailpool_result_free(&res);
    mailpool_close(mp);
    return rc;
}

/* Options that only later versions implement: refuse them plainly. */
static int not_yet(const char *what)
{
    fprintf(stderr, PROG ": %s is not supported yet\n", what);
    return EX_USAGE;
}

/*
 * -N: "never", or a comma list of success, failure and delay (any case,
 * each once), into the upper-case form of RFC 3461's NOTIFY=.
 */
static int parse_notify(const char *arg, struct opts *o)
{
    static const char *const words[] = {"SUCCESS", "FAILURE", "DELAY"};
    unsigned seen = 0;
    const char *p = arg;

    if (strcasecmp(arg, "never") == 0) {
        snprintf(o->notify, sizeof o->notify, "NEVER");
        return 0;
    }
    o->notify[0] = '\0';
    for (;;) {
        size_t n = strcspn(p, ","), i;

        for (i = 0; i < 3; i++) {
            if (strlen(words[i]) == n && strncasecmp(p, words[i], n) == 0)
                break;
        }
        if (i == 3 || (seen & (1u << i))) {
            fprintf(stderr,
                    PROG ": -N wants \"never\" or a list of success, failure, delay: \"%s\"\n",
                    arg);
            return EX_USAGE;
        }
        seen |= 1u << i;
        /* Three words and two commas at most: always fits. */
        size_t used = strlen(o->notify);
        snprintf(o->notify + used, sizeof o->notify - used, "%s%s", used ? "," : "", words[i]);
        if (p[n] == '\0')
            return 0;
        p += n + 1;
    }
}

/*
 * -V: the envelope id, encoded as RFC 3461 xtext ('+', '=' and the space
 * as "+XX").  Only printable ASCII can be carried; the encoded form is
 * limited to MAILPOOL_MAX_ENVID bytes.
 */
static int parse_envid(const char *arg, struct opts *o)
{
    size_t len = strlen(arg), n = 0;
    char *out;

    if (len == 0 || len > MAILPOOL_MAX_ENVID) {
        fprintf(stderr, PROG ": -V: the envelope id must be 1 to %d characters\n",
                MAILPOOL_MAX_ENVID);
        return EX_USAGE;
    }
    out = malloc(len * 3 + 1);
    if (out == NULL)
        return EX_OSERR;
    for (const char *p = arg; *p; p++) {
        unsigned char c = (unsigned char)*p;

        if (c < 0x20 || c > 0x7e) {
            fprintf(stderr, PROG ": -V: the envelope id may only hold printable ASCII\n");
            free(out);
            return EX_USAGE;
        }
        if (c == '+' || c == '=' || c == ' ')
            n += (size_t)sprintf(out + n, "+%02X", c);
        else
            out[n++] = (char)c;
    }
    out[n] = '\0';
    if (n > MAILPOOL_MAX_ENVID) {
        fprintf(stderr, PROG ": -V: the envelope id is over %d bytes once encoded\n",
                MAILPOOL_MAX_ENVID);
        free(out);
        return EX_USAGE;
    }
    free(o->envid);
    o->envid = out;
    return 0;
}

/*
 * -q alone flushes the whole queue, -qI<id> one message, -qR<relay> one
 * relay's messages.  -q<interval> (1h, 30m ...) asks sendmail to run as a
 * queue daemon: mailpoold retries on its own schedule, so it is ignored as
 * Postfix does.  Returns 0, or EX_USAGE.
 */
static int parse_q(const char *arg, struct opts *o)
{
    size_t i = 0;

    if (arg == NULL || arg[0] == '\0') {
        o->flush = 1;
        return 0;
    }
    if ((arg[0] == 'I' || arg[0] == 'R') && arg[1] != '\0') {
        o->flush = 1;
        o->flush_target = arg + 1;
        return 0;
    }
    while (arg[i] != '\0' && (isdigit((unsigned char)arg[i]) || strchr("smhdw", arg[i]) != NULL))
        i++;
    if (arg[i] == '\0' && isdigit((unsigned char)arg[0])) {
        fprintf(stderr, PROG ": -q%s ignored: mailpoold retries queued mail on its own\n", arg);
        o->q_interval = 1;
        return 0;
    }
    fprintf(stderr, PROG ": unsupported queue option -q%s (use -q, -qI<id> or -qR<relay>)\n", arg);
    return EX_USAGE;
}

static int parse_args(int argc, char **argv, struct opts *o)
{
    int c, rc;

    opterr = 0;
    while ((c = getopt(argc, argv, "+A:B:b:C:e:F:f:Gh:iL:mN:nO:o:q::R:r:tUV:vX:")) != -1) {
        switch (c) {
        case 'f':
        case 'r':
            o->sender = optarg;
            break;
        case 'F':
            o->fullname = optarg;
            break;
        case 'C':
            o->config = optarg;
            break;
        case 't':
            o->from_headers = 1;
            break;
        case 'i':
            o->ignore_dots = 1;
            break;
        case 'v':
            o->verbose = 1;
            break;
        case 'o':
            if (strcmp(optarg, "i") == 0)
                o->ignore_dots = 1;
            else if (strcmp(optarg, "di") == 0)
                o->mode = MAILPOOL_MODE_RELAY;
            else if (strcmp(optarg, "db") == 0 || strcmp(optarg, "dq") == 0)
                o->mode = MAILPOOL_MODE_QUEUE;
            break; /* -oem, -oee, -oQ..., -om, -os ...: nothing to do here */
        case 'b':
            if (strcmp(optarg, "m") == 0)
                break;
            if (strcmp(optarg, "p") == 0) {
                o->list_queue = 1;
                break;
            }
            if (strcmp(optarg, "s") == 0)
                return not_yet("-bs (SMTP on stdin)");
            fprintf(stderr, PROG ": unsupported mode -b%s\n", optarg);
            return EX_USAGE;
        case 'q':
            if ((rc = parse_q(optarg, o)) != 0)
                return rc;
            break;
        case 'N':
            if ((rc = parse_notify(optarg, o)) != 0)
                return rc;
            break;
        case 'R':
            if (strcasecmp(optarg, "full") == 0) {
                o->ret = "FULL";
            } else if (strcasecmp(optarg, "hdrs") == 0) {
                o->ret = "HDRS";
            } else {
                fprintf(stderr, PROG ": -R wants \"full\" or \"hdrs\": \"%s\"\n", optarg);
                return EX_USAGE;
            }
            break;
        case 'V':
            if ((rc = parse_envid(optarg, o)) != 0)
                return rc;
            break;
        case 'A': /* -Am/-Ac, -B 8BITMIME, -e?, -G, -h N, -L tag, -m, -n, -O opt=val, -U, -X */
        case 'B':
        case 'e':
        case 'G':
        case 'h':
        case 'L':
        case 'm':
        case 'n':
        case 'O':
        case 'U':
        case 'X':
            break;
        default:
            if (optopt != 0 && strchr("ABbCeFfhLNOoRrVX", optopt) != NULL)
                fprintf(stderr, PROG ": option -%c needs an argument\n", optopt);
            else
                fprintf(stderr, PROG ": unknown option -%c\n", optopt ? optopt : '?');
            usage();
            return EX_USAGE;
        }
    }
    return 0;
}

/*
 * -bp / mailq and -q talk to the control socket: from -C's
 * daemon.control_socket, else $MAILPOOL_CONTROL_SOCKET, else the default.
 */
static int queue_command(const struct opts *o)
{
    char *cfgpath = NULL;
    const char *path;
    int rc;

    if (o->config) {
        rc = socket_from_config(o->config, "daemon.control_socket", &cfgpath);
        if (rc != 0)
            return rc;
    }
    path = cfgpath;
    if (path == NULL)
        path = getenv(MAILPOOL_CONTROL_SOCKET_ENV);
    if (path == NULL || path[0] == '\0')
        path = MAILPOOL_DEFAULT_CONTROL_SOCKET;
    if (o->list_queue)
        rc = sendmail_queue_list(path);
    else
        rc = sendmail_queue_flush(path, o->flush_target, o->verbose);
    free(cfgpath);
    return rc;
}

int main(int argc, char **argv)
{
    struct opts o = {0};
    struct strlist rcpts = {0};
    struct passwd *pw;
    char *msg = NULL, *added = NULL, *out = NULL, *cfgpath = NULL, *gecos = NULL, *bare = NULL;
    const char *path, *sender, *login, *base;
    size_t len = 0, outlen = 0, pos = 0;
    struct hdr_field f;
    int rc, i;

    base = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
    if (strcmp(base, "mailq") == 0)
        o.list_queue = 1;
    rc = parse_args(argc, argv, &o);
    if (rc != 0) {
        free(o.envid);
        return rc;
    }
    if (o.list_queue || o.flush) {
        if (optind < argc) {
            fprintf(stderr, PROG ": %s takes no recipients (\"%s\"); for one message use -qI<id>\n",
                    o.list_queue ? "listing the queue" : "-q", argv[optind]);
            free(o.envid);
            return EX_USAGE;
        }
        rc = queue_command(&o);
        free(o.envid);
        return rc;
    }
    if (o.q_interval && optind == argc && !o.from_headers) {
        free(o.envid);
        return EX_OK; /* only "-q30m": nothing to send, nothing to start */
    }

    if ((o.sender && has_control(o.sender)) || (o.fullname && has_control(o.fullname))) {
        fprintf(stderr, PROG ": control characters in -f or -F\n");
        rc = EX_DATAERR;
        goto out;
    }
    for (i = optind; i < argc; i++) {
        if (argv[i][0] == '-') {
            fprintf(stderr, PROG ": recipient \"%s\" looks like an option; refused\n", argv[i]);
            rc = EX_USAGE;
            goto out;
        }
        if (has_control(argv[i])) {
            fprintf(stderr, PROG ": control characters in a recipient\n");
            rc = EX_DATAERR;
            goto out;
        }
    }
    if (optind == argc && !o.from_headers) {
        fprintf(stderr, PROG ": no recipients given (use -t to read them from the message)\n");
        usage();
        rc = EX_USAGE;
        goto out;
    }

    pw = getpwuid(getuid());
    login = pw && pw->pw_name && pw->pw_name[0] ? pw->pw_name : NULL;
    sender = o.sender ? o.sender : login;
    if (sender == NULL) {
        fprintf(stderr, PROG ": cannot determine your user name; use -f\n");
        rc = EX_OSERR;
        goto out;
    }
    if (sender[0] == '<' && sender[strlen(sender) - 1] == '>' && strlen(sender) >= 2) {
        /* -f '<>' is the null sender; -f '<a@b>' means a@b */
        bare = strndup(sender + 1, strlen(sender) - 2);
        if (bare == NULL) {
            rc = EX_OSERR;
            goto out;
        }
        sender = bare;
    }
    if (o.fullname == NULL && o.sender == NULL && pw && pw->pw_gecos && pw->pw_gecos[0]) {
        gecos = strndup(pw->pw_gecos, strcspn(pw->pw_gecos, ","));
        if (gecos == NULL) {
            rc = EX_OSERR;
            goto out;
        }
    }

    if (o.config) {
        rc = socket_from_config(o.config, "daemon.submit_socket", &cfgpath);
        if (rc != 0)
            goto out;
    }
    path = cfgpath;
    if (path == NULL)
        path = getenv(MAILPOOL_SOCKET_ENV);
    if (path == NULL || path[0] == '\0')
        path = MAILPOOL_DEFAULT_SUBMIT_SOCKET;

    rc = read_message(o.ignore_dots, &msg, &len);
    if (rc != 0)
        goto out;

    for (i = optind; i < argc; i++) {
        if (hdr_addresses(argv[i], strlen(argv[i]), add_cb, &rcpts) != 0) {
            fprintf(stderr, PROG ": bad recipient \"%s\"\n", argv[i]);
            rc = EX_DATAERR;
            goto out;
        }
    }
    while (o.from_headers && hdr_next(msg, len, &pos, &f)) {
        if (!hdr_is(&f, "To") && !hdr_is(&f, "Cc") && !hdr_is(&f, "Bcc"))
            continue;
        if (hdr_addresses(f.value, f.valuelen, add_cb, &rcpts) != 0) {
            fprintf(stderr, PROG ": cannot parse the %.*s header\n", (int)f.namelen, f.name);
            rc = EX_DATAERR;
            goto out;
        }
    }
    if (rcpts.n == 0) {
        fprintf(stderr, PROG ": no recipients found\n");
        rc = o.from_headers ? EX_DATAERR : EX_USAGE;
        goto out;
    }

    rc = EX_OSERR;
    if (build_added(msg, len, &o, sender[0] ? sender : (login ? login : "MAILER-DAEMON"), gecos,
                    &added) != 0)
        goto out;
    out = hdr_build(msg, len, added, 1, &outlen);
    if (out == NULL)
        goto out;
    rc = submit(path, sender, &rcpts, out, outlen, &o);
out:
    list_free(&rcpts);
    free(msg);
    free(added);
    free(out);
    free(cfgpath);
    free(gecos);
    free(bare);
    free(o.envid);
    return rc;
}
