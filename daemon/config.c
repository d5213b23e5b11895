/*
 * Configuration loader, the only file that sees libconfig: reads and checks the
 * file and turns it into a plain struct config, applying the relay option rules
 * of the spec (ports 465/587, RFC 8314 implicit TLS vs RFC 3207 STARTTLS) and
 * the per-phase timeout defaults of RFC 5321 section 4.5.3.2.
 */
#include "config.h"
#include "lmtp_parse.h"
#include "log.h"
#include "proto.h"

#include <libconfig.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* Longest wait anyone could mean; also keeps seconds * 1000 far from overflow. */
#define MAX_SECONDS 86400
/* A password file is one line; anything larger is not what the operator meant. */
#define MAX_PASSWORD_FILE 65536
#define MAX_MESSAGE_SIZE 2147483648LL
#define DEFAULT_MESSAGE_SIZE 36700160
/* A message older than a year is not going to be delivered by retrying. */
#define MAX_QUEUE_LIFETIME (365LL * 86400)
/* Far beyond any disk, and still far from overflowing a uint64_t. */
#define MAX_MIN_FREE (1LL << 60)

struct loader {
    const char *path;
    const char *include_dir; /* where libconfig looks for relative @include files */
    const char *scope;       /* "daemon", "relay 'x'" while reading that section */
    char *err;               /* the first error, "FILE:LINE: message" */
    int oom;
};

/* ---- errors ------------------------------------------------------------- */

/*
 * libconfig records an included file under the name written in @include, but
 * opens it relative to the include directory; messages need the real path.
 * Returns a new string, or NULL when out of memory.
 */
static char *source_path(const struct loader *ld, const char *file)
{
    char *out;
    if (!file)
        file = ld->path;
    if (strcmp(file, ld->path) == 0 || file[0] == '/' || !ld->include_dir)
        return strdup(file);
    if (asprintf(&out, "%s/%s", ld->include_dir, file) < 0)
        return NULL;
    return out;
}

/* Record an error at setting s (NULL: no line), with or without the scope prefix. */
__attribute__((format(printf, 4, 5))) static void
report(struct loader *ld, const config_setting_t *s, int scoped, const char *fmt, ...)
{
    if (ld->err || ld->oom)
        return; /* the first error is the one worth reading */
    char *msg = NULL;
    va_list ap;
    va_start(ap, fmt);
    int len = vasprintf(&msg, fmt, ap);
    va_end(ap);
    if (len < 0) {
        ld->oom = 1;
        return;
    }
    unsigned line = s ? config_setting_source_line(s) : 0;
    char *file = source_path(ld, s ? config_setting_source_file(s) : NULL);
    if (!file) {
        free(msg);
        ld->oom = 1;
        return;
    }
    const char *scope = scoped && ld->scope ? ld->scope : NULL;
    int n;
    if (line)
        n = asprintf(&ld->err, "%s:%u: %s%s%s", file, line, scope ? scope : "", scope ? ": " : "",
                     msg);
    else
        n = asprintf(&ld->err, "%s: %s%s%s", file, scope ? scope : "", scope ? ": " : "", msg);
    if (n < 0) {
        ld->err = NULL;
        ld->oom = 1;
    }
    free(file);
    free(msg);
}

/* Expressions worth -1, so "return fail(...)" reads as what it does. */
#define fail(ld, s, ...) (report((ld), (s), 1, __VA_ARGS__), -1)
#define fail_bare(ld, s, ...) (report((ld), (s), 0, __VA_ARGS__), -1)

static char *xstrdup(struct loader *ld, const char *s)
{
    char *d = strdup(s);
    if (!d)
        ld->oom = 1;
    return d;
}

/*
 * Hand the error to the caller.  Control bytes (from a string value in the
 * file) become \xNN so the message stays one line; a message that does not
 * fit ends in "..." rather than being cut silently.
 */
static void copy_error(const struct loader *ld, char *err, size_t errlen)
{
    if (!err || errlen == 0)
        return;
    if (!ld->err) {
        snprintf(err, errlen, "%s: out of memory", ld->path);
        return;
    }
    size_t o = 0;
    int cut = 0;
    for (const unsigned char *p = (const unsigned char *)ld->err; *p; p++) {
        char tmp[8];
        size_t n = 1;
        tmp[0] = (char)*p;
        if (*p < 0x20 || *p == 0x7f)
            n = (size_t)snprintf(tmp, sizeof(tmp), "\\x%02x", *p);
        if (o + n >= errlen) {
            cut = 1;
            break;
        }
        memcpy(err + o, tmp, n);
        o += n;
    }
    err[o] = '\0';
    for (size_t i = 0; cut && i < 3 && i < o; i++)
        err[o - 1 - i] = '.';
}

/* ---- key checking ------------------------------------------------------- */

/* Levenshtein distance, or a large number for names too long to bother. */
static size_t edit_distance(const char *a, const char *b)
{
    enum { MAXLEN = 64 };
    size_t la = strlen(a), lb = strlen(b);
    if (la > MAXLEN || lb > MAXLEN)
        return SIZE_MAX;
    size_t prev[MAXLEN + 1], cur[MAXLEN + 1];
    for (size_t j = 0; j <= lb; j++)
        prev[j] = j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            size_t del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, sizeof(prev));
    }
    return prev[lb];
}

static int in_list(const char *const *list, const char *name)
{
    for (; list && *list; list++)
        if (strcmp(*list, name) == 0)
            return 1;
    return 0;
}

/*
 * Refuse keys outside `known`.  Keys in `later` are part of the spec but not
 * implemented yet: saying so is kinder than calling them unknown.
 */
static int check_keys(struct loader *ld, const config_setting_t *group, const char *const *known,
                      const char *const *later, const char *where)
{
    int n = config_setting_length(group);
    for (int i = 0; i < n; i++) {
        const config_setting_t *s = config_setting_get_elem(group, (unsigned)i);
        const char *name = config_setting_name(s);
        if (!name || in_list(known, name))
            continue;
        if (in_list(later, name))
            return fail_bare(ld, s, "'%s' is not supported yet", name);
        const char *best = NULL;
        size_t bestd = 3; /* suggest only near misses */
        for (const char *const *k = known; *k; k++) {
            size_t d = edit_distance(name, *k);
            if (d < bestd) {
                bestd = d;
                best = *k;
            }
        }
        char hint[96] = "";
        if (best)
            snprintf(hint, sizeof(hint), " (did you mean '%s'?)", best);
        if (where)
            return fail_bare(ld, s, "unknown key '%s' in %s%s", name, where, hint);
        return fail_bare(ld, s, "unknown top-level key '%s'%s", name, hint);
    }
    return 0;
}

/* ---- typed getters: 1 = present and valid, 0 = absent, -1 = error ------ */

static const char *type_name(int type)
{
    switch (type) {
    case CONFIG_TYPE_GROUP:
        return "a group";
    case CONFIG_TYPE_INT:
    case CONFIG_TYPE_INT64:
        return "an integer";
    case CONFIG_TYPE_FLOAT:
        return "a decimal number";
    case CONFIG_TYPE_STRING:
        return "a string";
    case CONFIG_TYPE_BOOL:
        return "a boolean";
    case CONFIG_TYPE_ARRAY:
        return "an array";
    case CONFIG_TYPE_LIST:
        return "a list";
    default:
        return "something else";
    }
}

static int get_int(struct loader *ld, const config_setting_t *group, const char *key,
                   const char *label, long long min, long long max, long long *out)
{
    const config_setting_t *s = config_setting_get_member(group, key);
    if (!s)
        return 0;
    int t = config_setting_type(s);
    if (t != CONFIG_TYPE_INT && t != CONFIG_TYPE_INT64)
        return fail(ld, s, "'%s' must be an integer, not %s", label, type_name(t));
    long long v = config_setting_get_int64(s);
    if (v < 0 && min >= 0)
        return fail(ld, s, "'%s' must not be negative", label);
    if (v < min || v > max)
        return fail(ld, s, "'%s' must be between %lld and %lld", label, min, max);
    *out = v;
    return 1;
}

static int get_uint(struct loader *ld, const config_setting_t *group, const char *key,
                    const char *label, unsigned min, unsigned max, unsigned *out)
{
    long long v;
    int r = get_int(ld, group, key, label, min, max, &v);
    if (r == 1)
        *out = (unsigned)v;
    return r;
}

static int get_bool(struct loader *ld, const config_setting_t *group, const char *key,
                    const char *label, int *out)
{
    const config_setting_t *s = config_setting_get_member(group, key);
    if (!s)
        return 0;
    if (config_setting_type(s) != CONFIG_TYPE_BOOL)
        return fail(ld, s, "'%s' must be true or false, not %s", label,
                    type_name(config_setting_type(s)));
    *out = config_setting_get_bool(s) ? 1 : 0;
    return 1;
}

/* A non-empty string; *where gets the setting for later messages. */
static int get_string(struct loader *ld, const config_setting_t *group, const char *key,
                      const char *label, const char **out, const config_setting_t **where)
{
    const config_setting_t *s = config_setting_get_member(group, key);
    if (!s)
        return 0;
    if (config_setting_type(s) != CONFIG_TYPE_STRING)
        return fail(ld, s, "'%s' must be a string, not %s", label,
                    type_name(config_setting_type(s)));
    const char *v = config_setting_get_string(s);
    if (!v || !*v)
        return fail(ld, s, "'%s' must not be empty", label);
    *out = v;
    if (where)
        *where = s;
    return 1;
}

/* A group that may be absent; anything else under that name is an error. */
static int get_group(struct loader *ld, const config_setting_t *parent, const char *key,
                     const char *label, config_setting_t **out)
{
    config_setting_t *s = config_setting_get_member(parent, key);
    *out = NULL;
    if (!s)
        return 0;
    if (!config_setting_is_group(s))
        return fail(ld, s, "'%s' must be a group { ... }, not %s", label,
                    type_name(config_setting_type(s)));
    *out = s;
    return 1;
}

/* An array [ ] or list ( ) whose elements are all strings. */
static int get_string_list(struct loader *ld, const config_setting_t *group, const char *key,
                           const char *label, config_setting_t **out)
{
    config_setting_t *s = config_setting_get_member(group, key);
    *out = NULL;
    if (!s)
        return 0;
    if (!config_setting_is_array(s) && !config_setting_is_list(s))
        return fail(ld, s, "'%s' must be a list of strings [ \"...\", ... ], not %s", label,
                    type_name(config_setting_type(s)));
    int n = config_setting_length(s);
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        if (config_setting_type(e) != CONFIG_TYPE_STRING)
            return fail(ld, e, "'%s' must contain only strings, not %s", label,
                        type_name(config_setting_type(e)));
    }
    *out = s;
    return 1;
}

/* ---- value checks ------------------------------------------------------- */

static int valid_hostname(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > MAILPOOL_MAX_DOMAIN || s[0] == '-' || s[0] == '.')
        return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '.' && *s != '-' && *s != '_')
            return 0;
    return 1;
}

/* An IPv6 literal, optionally with a %zone (link-local). */
static int valid_ipv6(const char *s, size_t len)
{
    char buf[INET6_ADDRSTRLEN + 64];
    if (len == 0 || len >= sizeof(buf))
        return 0;
    memcpy(buf, s, len);
    buf[len] = '\0';
    char *zone = strchr(buf, '%');
    if (zone) {
        *zone++ = '\0';
        if (!*zone || !valid_hostname(zone))
            return 0;
    }
    struct in6_addr a;
    return inet_pton(AF_INET6, buf, &a) == 1;
}

/* The EHLO argument: a domain or an RFC 5321 address literal. */
static int valid_helo(const char *s)
{
    size_t n = strlen(s);
    if (n >= 3 && s[0] == '[' && s[n - 1] == ']') {
        struct in_addr a;
        char buf[INET_ADDRSTRLEN];
        if (strncasecmp(s + 1, "IPv6:", 5) == 0)
            return valid_ipv6(s + 6, n - 7);
        if (n - 2 >= sizeof(buf))
            return 0;
        memcpy(buf, s + 1, n - 2);
        buf[n - 2] = '\0';
        return inet_pton(AF_INET, buf, &a) == 1;
    }
    return valid_hostname(s);
}

static int parse_port(const char *s, uint16_t *port)
{
    unsigned long v = 0;
    size_t n = strlen(s);
    if (n == 0 || n > 5)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return -1;
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    if (v > 65535)
        return -1;
    *port = (uint16_t)v;
    return 0;
}

/*
 * "host", "host:port", "[v6]", "[v6]:port" or a bare "v6" (which cannot carry
 * a port).  Port 0 means "the default".  Returns 0 or -1 after reporting.
 */
static int parse_host(struct loader *ld, const config_setting_t *s, const char *text,
                      struct relay_host *h)
{
    const char *portstr = NULL;
    size_t hostlen;
    const char *host = text;
    h->port = 0;
    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (!close)
            return fail(ld, s, "host '%s': missing ']'", text);
        host = text + 1;
        hostlen = (size_t)(close - host);
        if (!valid_ipv6(host, hostlen))
            return fail(ld, s, "host '%s': only IPv6 addresses go in brackets", text);
        if (close[1] == ':')
            portstr = close + 2;
        else if (close[1] != '\0')
            return fail(ld, s, "host '%s': unexpected text after ']'", text);
    } else {
        const char *colon = strchr(text, ':');
        if (colon && strchr(colon + 1, ':')) {
            hostlen = strlen(text);
            if (!valid_ipv6(text, hostlen))
                return fail(ld, s,
                            "host '%s' is not a valid IPv6 address "
                            "(write \"[address]:port\" to give a port)",
                            text);
        } else if (colon) {
            hostlen = (size_t)(colon - text);
            portstr = colon + 1;
        } else {
            hostlen = strlen(text);
        }
    }
    h->host = strndup(host, hostlen);
    if (!h->host) {
        ld->oom = 1;
        return -1;
    }
    if (host == text && !strchr(h->host, ':') && !valid_hostname(h->host))
        return fail(ld, s, "host '%s' is not a valid host name or address", text);
    if (portstr && parse_port(portstr, &h->port) < 0)
        return fail(ld, s, "host '%s': port must be a number from 0 to 65535", text);
    return 0;
}

static int absolute_path(struct loader *ld, const config_setting_t *s, const char *label,
                         const char *v)
{
    if (v[0] != '/')
        return fail(ld, s, "'%s' must be an absolute path", label);
    return 0;
}

/* ---- relay options ------------------------------------------------------ */

static const char *const option_words[] = {
    "extended",        "secure",      "secure_implicit", "trusted_site",
    "secure_fallback", "prefer_ipv6", "tunnel",
};
#define NOPTIONS (sizeof(option_words) / sizeof(option_words[0]))

const char *relay_option_name(unsigned bit)
{
    for (size_t i = 0; i < NOPTIONS; i++)
        if (bit == 1u << i)
            return option_words[i];
    return NULL;
}

static const struct {
    const char *name;
    unsigned bit;
} mech_names[] = {
    {"PLAIN", AUTH_MECH_PLAIN},       {"LOGIN", AUTH_MECH_LOGIN},
    {"CRAM-MD5", AUTH_MECH_CRAM_MD5}, {"SCRAM-SHA-256", AUTH_MECH_SCRAM_SHA_256},
    {"XOAUTH2", AUTH_MECH_XOAUTH2},   {"OAUTHBEARER", AUTH_MECH_OAUTHBEARER},
};

static int read_options(struct loader *ld, const config_setting_t *rs, unsigned *out)
{
    config_setting_t *list;
    int r = get_string_list(ld, rs, "options", "options", &list);
    *out = 0;
    if (r <= 0)
        return r;
    int n = config_setting_length(list);
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(list, (unsigned)i);
        const char *w = config_setting_get_string(e);
        unsigned bit = 0;
        for (size_t k = 0; k < NOPTIONS; k++)
            if (strcmp(w, option_words[k]) == 0)
                bit = 1u << k;
        if (!bit && strcmp(w, "free_thread") == 0)
            return fail(ld, e, "'free_thread' is a client library option, not a relay option");
        if (!bit)
            return fail(ld, e,
                        "unknown option '%s' (known: extended, secure, secure_implicit, "
                        "trusted_site, secure_fallback, prefer_ipv6, tunnel)",
                        w);
        if (*out & bit)
            return fail(ld, e, "option '%s' is listed twice", w);
        *out |= bit;
    }
    return 0;
}

/* What an explicit port says about the options, before anything is explicit. */
static unsigned port_implies(uint16_t port, unsigned explicit_opts)
{
    if (explicit_opts & RELAY_OPT_TUNNEL)
        return 0; /* a forwarded port says nothing about the far end */
    if (port == 465)
        return RELAY_OPT_SECURE_IMPLICIT;
    if (port == 587)
        return RELAY_OPT_EXTENDED;
    return 0;
}

/*
 * SPEC section 1: 465 implies secure_implicit, 587 implies extended, tunnel
 * turns that off, and absent ports default to 25 (465 with secure_implicit).
 * Every host of a relay must imply the same, because the relay has one set
 * of options; a mix (":465" next to ":25") is refused rather than guessed.
 */
static int apply_port_rules(struct loader *ld, const config_setting_t *hosts_s,
                            const config_setting_t *opts_s, const config_setting_t *rs,
                            struct relay_config *r, unsigned explicit_opts)
{
    unsigned implied0 = port_implies(r->hosts[0].port, explicit_opts) & ~explicit_opts;
    for (size_t i = 1; i < r->nhosts; i++) {
        unsigned implied = port_implies(r->hosts[i].port, explicit_opts) & ~explicit_opts;
        unsigned diff = implied ^ implied0;
        if (!diff)
            continue;
        unsigned bit = diff & -diff;
        const config_setting_t *with =
            config_setting_get_elem(hosts_s, (implied & bit) ? (unsigned)i : 0);
        const config_setting_t *without =
            config_setting_get_elem(hosts_s, (implied & bit) ? 0 : (unsigned)i);
        return fail(ld, config_setting_get_elem(hosts_s, (unsigned)i),
                    "hosts disagree on implied options: '%s' implies '%s' but '%s' does not; "
                    "use matching ports or list the options explicitly",
                    config_setting_get_string(with), relay_option_name(bit),
                    config_setting_get_string(without));
    }
    r->options = explicit_opts | implied0;

    if ((r->options & RELAY_OPT_SECURE) && (r->options & RELAY_OPT_SECURE_IMPLICIT)) {
        if (explicit_opts & RELAY_OPT_SECURE_IMPLICIT)
            return fail(ld, opts_s ? opts_s : rs,
                        "'secure' (STARTTLS after a plaintext greeting) and 'secure_implicit' "
                        "(TLS from the first byte) exclude each other; choose one");
        return fail(ld, opts_s ? opts_s : rs,
                    "port 465 implies 'secure_implicit' (TLS from the first byte), which "
                    "excludes 'secure' (STARTTLS); use port 587 or 25 for STARTTLS, or add "
                    "'tunnel' if 465 is a forwarded port");
    }
    for (size_t i = 0; i < r->nhosts; i++)
        if (r->hosts[i].port == 0)
            r->hosts[i].port = (r->options & RELAY_OPT_SECURE_IMPLICIT) ? 465 : 25;
    return 0;
}

/* ---- relay sections ----------------------------------------------------- */

static const char *const relay_keys[] = {
    "hosts", "options", "timeout", "timeouts", "mode", "helo_name", "allow_plaintext_auth",
    "auth",  "tls",     "pool",    NULL,
};
static const char *const relay_later[] = {
    "rate", "limits", "allow", "sender", "aliases", "qualify_domain", "from_header", "proxy", NULL,
};
static const char *const timeouts_keys[] = {
    "connect", "greeting", "command", "data_block", "data_end", NULL,
};
static const char *const auth_keys[] = {
    "user", "password", "password_file", "mechanisms", NULL,
};
static const char *const auth_later[] = {
    "password_command",
    "password_command_ttl",
    "credential",
    NULL,
};
static const char *const tls_keys[] = {
    "ca_file", "ca_path", "server_name", "min_version", NULL,
};
static const char *const tls_later[] = {
    "ciphers", "client_cert", "client_key", "pin_sha256", NULL,
};
static const char *const pool_keys[] = {
    "max_connections", "min_idle",    "idle_timeout", "keepalive", "max_messages",
    "max_age",         "max_waiters", "wait_timeout", NULL,
};

static int read_hosts(struct loader *ld, const config_setting_t *rs, struct relay_config *r,
                      config_setting_t **hosts_s)
{
    int got = get_string_list(ld, rs, "hosts", "hosts", hosts_s);
    if (got < 0)
        return -1;
    if (got == 0)
        return fail(ld, rs, "'hosts' is missing: give at least one \"host[:port]\"");
    int n = config_setting_length(*hosts_s);
    if (n == 0)
        return fail(ld, *hosts_s, "'hosts' is empty: give at least one \"host[:port]\"");
    r->hosts = calloc((size_t)n, sizeof(*r->hosts));
    if (!r->hosts) {
        ld->oom = 1;
        return -1;
    }
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(*hosts_s, (unsigned)i);
        r->nhosts++; /* count it first so config_free() sees a partial host */
        if (parse_host(ld, e, config_setting_get_string(e), &r->hosts[i]) < 0)
            return -1;
    }
    return 0;
}

static int read_timeouts(struct loader *ld, const config_setting_t *rs, struct relay_config *r,
                         const char *where)
{
    static const unsigned rfc5321[] = {30, 300, 300, 180, 600};
    static const char *const labels[] = {
        "timeouts.connect",    "timeouts.greeting", "timeouts.command",
        "timeouts.data_block", "timeouts.data_end",
    };
    unsigned *phase[] = {&r->timeouts.connect, &r->timeouts.greeting, &r->timeouts.command,
                         &r->timeouts.data_block, &r->timeouts.data_end};
    r->timeout = 60;
    if (get_uint(ld, rs, "timeout", "timeout", 0, MAX_SECONDS, &r->timeout) < 0)
        return -1;
    config_setting_t *ts;
    if (get_group(ld, rs, "timeouts", "timeouts", &ts) < 0)
        return -1;
    if (ts && check_keys(ld, ts, timeouts_keys, NULL, where) < 0)
        return -1;
    for (size_t i = 0; i < 5; i++) {
        /* timeout = 0 asks for no limit; a default must not reintroduce one */
        *phase[i] = r->timeout == 0 ? 0 : (rfc5321[i] < r->timeout ? rfc5321[i] : r->timeout);
        if (ts && get_uint(ld, ts, timeouts_keys[i], labels[i], 0, MAX_SECONDS, phase[i]) < 0)
            return -1;
    }
    return 0;
}

/* Read the first line of a file that only its owner may read (like ssh keys). */
static int read_password_file(struct loader *ld, const config_setting_t *s, const char *path,
                              char **out)
{
    int fd = open(path, O_RDONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return fail(ld, s, "cannot open password_file '%s': %s", path, strerror(errno));
    struct stat st;
    int rc = -1;
    char *buf = NULL;
    if (fstat(fd, &st) < 0) {
        report(ld, s, 1, "cannot stat password_file '%s': %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        report(ld, s, 1, "password_file '%s' is not a regular file", path);
        goto out;
    }
    if (st.st_mode & 077) {
        report(ld, s, 1,
               "password_file '%s' is accessible by group or others (mode %04o); "
               "run chmod 600 on it",
               path, (unsigned)(st.st_mode & 07777));
        goto out;
    }
    if (st.st_size > MAX_PASSWORD_FILE) {
        report(ld, s, 1, "password_file '%s' is too large (over %d bytes)", path,
               MAX_PASSWORD_FILE);
        goto out;
    }
    buf = malloc(MAX_PASSWORD_FILE + 1);
    if (!buf) {
        ld->oom = 1;
        goto out;
    }
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fd, buf + len, MAX_PASSWORD_FILE + 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            report(ld, s, 1, "cannot read password_file '%s': %s", path, strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len > MAX_PASSWORD_FILE) {
            report(ld, s, 1, "password_file '%s' is too large (over %d bytes)", path,
                   MAX_PASSWORD_FILE);
            goto out;
        }
    }
    char *nl = memchr(buf, '\n', len);
    size_t linelen = nl ? (size_t)(nl - buf) : len;
    if (linelen > 0 && buf[linelen - 1] == '\r')
        linelen--;
    if (memchr(buf, '\0', linelen)) {
        report(ld, s, 1, "password_file '%s' contains a NUL byte", path);
        goto out;
    }
    if (linelen == 0) {
        report(ld, s, 1, "password_file '%s' is empty (the password is its first line)", path);
        goto out;
    }
    *out = strndup(buf, linelen);
    if (!*out) {
        ld->oom = 1;
        goto out;
    }
    rc = 0;
out:
    if (buf) {
        explicit_bzero(buf, MAX_PASSWORD_FILE + 1);
        free(buf);
    }
    close(fd);
    return rc;
}

static int read_auth(struct loader *ld, const config_setting_t *rs, struct relay_config *r,
                     const char *where)
{
    config_setting_t *as;
    int got = get_group(ld, rs, "auth", "auth", &as);
    if (got <= 0)
        return got;
    if (check_keys(ld, as, auth_keys, auth_later, where) < 0)
        return -1;
    if (!(r->options & RELAY_OPT_EXTENDED))
        return fail(ld, as,
                    "'auth' needs the 'extended' option (ESMTP): add it to 'options' "
                    "or use port 587");
    r->has_auth = 1;
    const char *user = NULL, *password = NULL, *file = NULL;
    const config_setting_t *user_s = NULL, *pw_s = NULL, *file_s = NULL;
    got = get_string(ld, as, "user", "auth.user", &user, &user_s);
    if (got < 0)
        return -1;
    if (got == 0)
        return fail(ld, as, "'auth' needs 'user'");
    for (const char *p = user; *p; p++)
        if (iscntrl((unsigned char)*p))
            return fail(ld, user_s, "'auth.user' contains a control character");
    if (get_string(ld, as, "password", "auth.password", &password, &pw_s) < 0 ||
        get_string(ld, as, "password_file", "auth.password_file", &file, &file_s) < 0)
        return -1;
    if (password && file) {
        const config_setting_t *later =
            config_setting_index(pw_s) > config_setting_index(file_s) ? pw_s : file_s;
        return fail(ld, later,
                    "'auth.password' and 'auth.password_file' exclude each other; "
                    "keep only one (password_file is preferred)");
    }
    if (!password && !file)
        return fail(ld, as, "'auth' needs 'password_file' (preferred) or 'password'");
    if (!(r->auth_user = xstrdup(ld, user)))
        return -1;
    if (password) {
        if (!(r->auth_password = xstrdup(ld, password)))
            return -1;
    } else {
        if (absolute_path(ld, file_s, "auth.password_file", file) < 0)
            return -1;
        if (!(r->auth_password_file = xstrdup(ld, file)))
            return -1;
        if (read_password_file(ld, file_s, file, &r->auth_password) < 0)
            return -1;
    }

    config_setting_t *mechs;
    got = get_string_list(ld, as, "mechanisms", "auth.mechanisms", &mechs);
    if (got < 0)
        return -1;
    if (got == 1) {
        int n = config_setting_length(mechs);
        if (n == 0)
            return fail(ld, mechs, "'auth.mechanisms' is empty; leave it out for the default");
        for (int i = 0; i < n; i++) {
            const config_setting_t *e = config_setting_get_elem(mechs, (unsigned)i);
            const char *w = config_setting_get_string(e);
            unsigned bit = 0;
            for (size_t k = 0; k < sizeof(mech_names) / sizeof(mech_names[0]); k++)
                if (strcasecmp(w, mech_names[k].name) == 0) /* SASL names ignore case */
                    bit = mech_names[k].bit;
            if (!bit)
                return fail(ld, e,
                            "unknown mechanism '%s' (known: PLAIN, LOGIN, CRAM-MD5, "
                            "SCRAM-SHA-256, XOAUTH2, OAUTHBEARER)",
                            w);
            r->auth_mechanisms |= bit;
        }
    }
    return 0;
}

static int read_tls(struct loader *ld, const config_setting_t *rs, struct relay_config *r,
                    const char *where)
{
    config_setting_t *ts;
    int got = get_group(ld, rs, "tls", "tls", &ts);
    if (got <= 0)
        return got;
    if (check_keys(ld, ts, tls_keys, tls_later, where) < 0)
        return -1;
    const char *v = NULL;
    const config_setting_t *s = NULL;
    struct stat st;

    if ((got = get_string(ld, ts, "ca_file", "tls.ca_file", &v, &s)) < 0)
        return -1;
    if (got) {
        if (absolute_path(ld, s, "tls.ca_file", v) < 0)
            return -1;
        if (stat(v, &st) < 0)
            return fail(ld, s, "tls.ca_file '%s': %s", v, strerror(errno));
        if (!S_ISREG(st.st_mode))
            return fail(ld, s, "tls.ca_file '%s' is not a regular file", v);
        if (!(r->tls_ca_file = xstrdup(ld, v)))
            return -1;
    }
    if ((got = get_string(ld, ts, "ca_path", "tls.ca_path", &v, &s)) < 0)
        return -1;
    if (got) {
        if (absolute_path(ld, s, "tls.ca_path", v) < 0)
            return -1;
        if (stat(v, &st) < 0)
            return fail(ld, s, "tls.ca_path '%s': %s", v, strerror(errno));
        if (!S_ISDIR(st.st_mode))
            return fail(ld, s, "tls.ca_path '%s' is not a directory", v);
        if (!(r->tls_ca_path = xstrdup(ld, v)))
            return -1;
    }
    if ((got = get_string(ld, ts, "server_name", "tls.server_name", &v, &s)) < 0)
        return -1;
    if (got) {
        if (!valid_hostname(v))
            return fail(ld, s, "'tls.server_name' must be a host name");
        if (!(r->tls_server_name = xstrdup(ld, v)))
            return -1;
    }
    if ((got = get_string(ld, ts, "min_version", "tls.min_version", &v, &s)) < 0)
        return -1;
    if (got) {
        if (strcmp(v, "1.0") != 0 && strcmp(v, "1.1") != 0 && strcmp(v, "1.2") != 0 &&
            strcmp(v, "1.3") != 0)
            return fail(ld, s, "'tls.min_version' must be \"1.0\", \"1.1\", \"1.2\" or \"1.3\"");
        /* legacy TLS is what secure_fallback is for; asking for it elsewhere is a slip */
        if ((strcmp(v, "1.0") == 0 || strcmp(v, "1.1") == 0) &&
            !(r->options & RELAY_OPT_SECURE_FALLBACK))
            return fail(ld, s, "'tls.min_version' \"%s\" needs the 'secure_fallback' option", v);
        if (!(r->tls_min_version = xstrdup(ld, v)))
            return -1;
    }
    return 0;
}

static int read_pool(struct loader *ld, const config_setting_t *rs, struct relay_config *r,
                     const char *where)
{
    struct pool_config *p = &r->pool;
    p->max_connections = 4;
    p->min_idle = 0;
    p->idle_timeout = 300;
    p->keepalive = 60;
    p->max_messages = 1000;
    p->max_age = 3600;
    p->max_waiters = 1000;
    p->wait_timeout = 60;
    config_setting_t *ps;
    int got = get_group(ld, rs, "pool", "pool", &ps);
    if (got <= 0)
        return got;
    if (check_keys(ld, ps, pool_keys, NULL, where) < 0)
        return -1;
    if (get_uint(ld, ps, "max_connections", "pool.max_connections", 1, 1024, &p->max_connections) <
            0 ||
        get_uint(ld, ps, "min_idle", "pool.min_idle", 0, 1024, &p->min_idle) < 0 ||
        get_uint(ld, ps, "idle_timeout", "pool.idle_timeout", 1, MAX_SECONDS, &p->idle_timeout) <
            0 ||
        get_uint(ld, ps, "keepalive", "pool.keepalive", 0, MAX_SECONDS, &p->keepalive) < 0 ||
        get_uint(ld, ps, "max_messages", "pool.max_messages", 0, 1000000, &p->max_messages) < 0 ||
        get_uint(ld, ps, "max_age", "pool.max_age", 0, 30 * MAX_SECONDS, &p->max_age) < 0 ||
        get_uint(ld, ps, "max_waiters", "pool.max_waiters", 0, 1000000, &p->max_waiters) < 0 ||
        get_uint(ld, ps, "wait_timeout", "pool.wait_timeout", 1, MAX_SECONDS, &p->wait_timeout) < 0)
        return -1;
    if (p->min_idle > p->max_connections)
        return fail(ld, config_setting_get_member(ps, "min_idle"),
                    "'pool.min_idle' (%u) exceeds 'pool.max_connections' (%u)", p->min_idle,
                    p->max_connections);
    return 0;
}

static int valid_relay_name(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > MAILPOOL_MAX_RELAY_NAME)
        return 0;
    for (; *name; name++)
        if (!isalnum((unsigned char)*name) && !strchr("_.-", *name))
            return 0;
    return 1;
}

/* Everything of one relay after its name and key set are known to be sound. */
static int read_relay_body(struct loader *ld, const config_setting_t *rs, struct relay_config *r,
                           const char *name)
{
    char sub[MAILPOOL_MAX_RELAY_NAME + 32];
    snprintf(sub, sizeof(sub), "timeouts of relay '%s'", name);
    unsigned explicit_opts;
    config_setting_t *hosts_s;
    if (read_options(ld, rs, &explicit_opts) < 0 || read_hosts(ld, rs, r, &hosts_s) < 0 ||
        apply_port_rules(ld, hosts_s, config_setting_get_member(rs, "options"), rs, r,
                         explicit_opts) < 0 ||
        read_timeouts(ld, rs, r, sub) < 0)
        return -1;

    const char *v = NULL;
    const config_setting_t *s = NULL;
    int got = get_string(ld, rs, "mode", "mode", &v, &s);
    if (got < 0)
        return -1;
    r->mode = MODE_QUEUE;
    if (got) {
        if (strcmp(v, MAILPOOL_MODE_QUEUE) == 0)
            r->mode = MODE_QUEUE;
        else if (strcmp(v, MAILPOOL_MODE_RELAY) == 0)
            r->mode = MODE_RELAY;
        else
            return fail(ld, s, "'mode' must be \"queue\" or \"relay\"");
    }
    if ((got = get_string(ld, rs, "helo_name", "helo_name", &v, &s)) < 0)
        return -1;
    if (got) {
        if (!valid_helo(v))
            return fail(ld, s, "'helo_name' must be a domain name or an address literal");
        if (!(r->helo_name = xstrdup(ld, v)))
            return -1;
    }
    if (get_bool(ld, rs, "allow_plaintext_auth", "allow_plaintext_auth", &r->allow_plaintext_auth) <
        0)
        return -1;

    snprintf(sub, sizeof(sub), "auth of relay '%s'", name);
    if (read_auth(ld, rs, r, sub) < 0)
        return -1;
    snprintf(sub, sizeof(sub), "tls of relay '%s'", name);
    if (read_tls(ld, rs, r, sub) < 0)
        return -1;
    snprintf(sub, sizeof(sub), "pool of relay '%s'", name);
    return read_pool(ld, rs, r, sub);
}

static int read_relay(struct loader *ld, const config_setting_t *rs, struct relay_config *r)
{
    const char *name = config_setting_name(rs);
    r->line = (int)config_setting_source_line(rs);
    if (!valid_relay_name(name))
        return fail(ld, rs, "relay name '%s' must be 1-%d of A-Z a-z 0-9 _ . -", name,
                    MAILPOOL_MAX_RELAY_NAME);
    if (!(r->name = xstrdup(ld, name)))
        return -1;
    if (!config_setting_is_group(rs))
        return fail(ld, rs, "'%s' must be a group { hosts = [ ... ]; ... }", name);

    /* section names for messages; the relay name is already validated and short */
    char where[MAILPOOL_MAX_RELAY_NAME + 32];
    snprintf(where, sizeof(where), "relay '%s'", name);
    if (check_keys(ld, rs, relay_keys, relay_later, where) < 0)
        return -1;
    ld->scope = where;
    int rc = read_relay_body(ld, rs, r, name);
    ld->scope = NULL; /* it points into this frame */
    return rc;
}

/* ---- daemon section ----------------------------------------------------- */

static const char *const daemon_keys[] = {
    "hostname",    "submit_socket",  "control_socket", "spool_dir", "max_message_size",
    "max_clients", "client_timeout", "log_level",      NULL,
};
static const char *const daemon_later[] = {"allow", NULL};
static const char *const top_keys[] = {"daemon", "default_relay", "relays", "spool", NULL};
static const char *const top_later[] = {"routes", NULL};

static int read_socket_path(struct loader *ld, const config_setting_t *ds, const char *key,
                            const char *def, char **out)
{
    const char *v = def;
    const config_setting_t *s = NULL;
    if (ds && get_string(ld, ds, key, key, &v, &s) < 0)
        return -1;
    if (s) {
        if (absolute_path(ld, s, key, v) < 0)
            return -1;
        if (strlen(v) >= sizeof(((struct sockaddr_un *)0)->sun_path))
            return fail(ld, s, "'%s' is too long for a Unix socket path (at most %zu bytes)", key,
                        sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
    }
    *out = xstrdup(ld, v);
    return *out ? 0 : -1;
}

static int read_daemon_keys(struct loader *ld, const config_setting_t *ds, struct config *cfg)
{
    const char *v = NULL;
    const config_setting_t *s = NULL;
    int got = ds ? get_string(ld, ds, "hostname", "hostname", &v, &s) : 0;
    if (got < 0)
        return -1;
    if (got) {
        if (!valid_hostname(v))
            return fail(ld, s, "'hostname' must be a host name");
        if (!(cfg->hostname = xstrdup(ld, v)))
            return -1;
    } else {
        char host[HOST_NAME_MAX + 1];
        if (gethostname(host, sizeof(host)) < 0)
            return fail(ld, NULL, "gethostname: %s; set 'hostname'", strerror(errno));
        host[HOST_NAME_MAX] = '\0';
        if (!(cfg->hostname = xstrdup(ld, host)))
            return -1;
    }
    if (read_socket_path(ld, ds, "submit_socket", MAILPOOL_DEFAULT_SUBMIT_SOCKET,
                         &cfg->submit_socket) < 0 ||
        read_socket_path(ld, ds, "control_socket", MAILPOOL_DEFAULT_CONTROL_SOCKET,
                         &cfg->control_socket) < 0)
        return -1;
    if (strcmp(cfg->submit_socket, cfg->control_socket) == 0)
        return fail(ld, ds, "'submit_socket' and 'control_socket' must differ");

    v = MAILPOOL_DEFAULT_SPOOL_DIR;
    if (ds && (got = get_string(ld, ds, "spool_dir", "spool_dir", &v, &s)) < 0)
        return -1;
    if (ds && got && absolute_path(ld, s, "spool_dir", v) < 0)
        return -1;
    if (!(cfg->spool_dir = xstrdup(ld, v)))
        return -1;

    long long size = DEFAULT_MESSAGE_SIZE;
    cfg->max_clients = 1024;
    cfg->client_timeout = 300;
    cfg->log_level = LOG_LVL_INFO;
    if (!ds)
        goto out;
    if (get_int(ld, ds, "max_message_size", "max_message_size", 1, MAX_MESSAGE_SIZE, &size) < 0 ||
        get_uint(ld, ds, "max_clients", "max_clients", 1, 1000000, &cfg->max_clients) < 0 ||
        get_uint(ld, ds, "client_timeout", "client_timeout", 1, MAX_SECONDS, &cfg->client_timeout) <
            0)
        return -1;
    if ((got = get_string(ld, ds, "log_level", "log_level", &v, &s)) < 0)
        return -1;
    if (got) {
        int lvl = log_level_parse(v);
        if (lvl < 0)
            return fail(ld, s, "'log_level' must be \"error\", \"warn\", \"info\" or \"debug\"");
        cfg->log_level = lvl;
    }
out:
    cfg->max_message_size = (size_t)size;
    return 0;
}

static int read_daemon(struct loader *ld, const config_setting_t *root, struct config *cfg)
{
    config_setting_t *ds;
    if (get_group(ld, root, "daemon", "daemon", &ds) < 0)
        return -1;
    if (ds && check_keys(ld, ds, daemon_keys, daemon_later, "daemon") < 0)
        return -1;
    ld->scope = "daemon";
    int rc = read_daemon_keys(ld, ds, cfg);
    ld->scope = NULL;
    return rc;
}

/* ---- spool section ------------------------------------------------------ */

static const char *const spool_keys[] = {
    "min_free",  "max_queue_lifetime", "retry_min",           "retry_max",
    "bounce_to", "bounce_rate",        "bounce_max_original", NULL,
};

static int read_spool_keys(struct loader *ld, const config_setting_t *ss, struct spool_config *sp)
{
    long long min_free = 64LL * 1024 * 1024;
    long long lifetime = 432000;
    long long max_original = 1024 * 1024;
    sp->retry_min = 60;
    sp->retry_max = 3600;
    sp->bounce_rate = 60;
    sp->bounce_to = NULL;
    if (!ss)
        goto out;
    /*
     * Small lifetimes and retry delays are allowed on purpose: tests (and an
     * operator who wants mail to fail fast) need seconds, not hours.
     */
    if (get_int(ld, ss, "min_free", "min_free", 0, MAX_MIN_FREE, &min_free) < 0 ||
        get_int(ld, ss, "max_queue_lifetime", "max_queue_lifetime", 1, MAX_QUEUE_LIFETIME,
                &lifetime) < 0 ||
        get_uint(ld, ss, "retry_min", "retry_min", 1, MAX_SECONDS, &sp->retry_min) < 0 ||
        get_uint(ld, ss, "retry_max", "retry_max", 1, MAX_SECONDS, &sp->retry_max) < 0 ||
        get_uint(ld, ss, "bounce_rate", "bounce_rate", 1, 1000000, &sp->bounce_rate) < 0 ||
        get_int(ld, ss, "bounce_max_original", "bounce_max_original", 0, MAX_MESSAGE_SIZE,
                &max_original) < 0)
        return -1;
    if (sp->retry_max < sp->retry_min) {
        const config_setting_t *s = config_setting_get_member(ss, "retry_max");
        return fail(ld, s ? s : config_setting_get_member(ss, "retry_min"),
                    "'retry_max' (%u) is less than 'retry_min' (%u)", sp->retry_max, sp->retry_min);
    }
    const char *v = NULL;
    const config_setting_t *s = NULL;
    int got = get_string(ld, ss, "bounce_to", "bounce_to", &v, &s);
    if (got < 0)
        return -1;
    if (got) {
        /* The address goes into RCPT TO as is: no brackets, no display name. */
        const char *why = addr_check(v, strlen(v), 0);
        if (why)
            return fail(ld, s, "'bounce_to' is not a valid address: %s", why);
        if (!(sp->bounce_to = xstrdup(ld, v)))
            return -1;
    }
out:
    sp->min_free = (uint64_t)min_free;
    sp->max_queue_lifetime = (unsigned)lifetime;
    sp->bounce_max_original = (size_t)max_original;
    return 0;
}

static int read_spool(struct loader *ld, const config_setting_t *root, struct config *cfg)
{
    config_setting_t *ss;
    if (get_group(ld, root, "spool", "spool", &ss) < 0)
        return -1;
    if (ss && check_keys(ld, ss, spool_keys, NULL, "spool") < 0)
        return -1;
    ld->scope = "spool";
    int rc = read_spool_keys(ld, ss, &cfg->spool);
    ld->scope = NULL;
    return rc;
}

static int read_relays(struct loader *ld, const config_setting_t *root, struct config *cfg)
{
    config_setting_t *rels;
    int got = get_group(ld, root, "relays", "relays", &rels);
    if (got < 0)
        return -1;
    if (got == 0)
        return fail(ld, NULL, "no 'relays' section: at least one relay is required");
    int n = config_setting_length(rels);
    if (n == 0)
        return fail(ld, rels, "'relays' is empty: at least one relay is required");
    cfg->relays = calloc((size_t)n, sizeof(*cfg->relays));
    if (!cfg->relays) {
        ld->oom = 1;
        return -1;
    }
    for (int i = 0; i < n; i++) {
        cfg->nrelays++; /* count first so config_free() releases a partial relay */
        if (read_relay(ld, config_setting_get_elem(rels, (unsigned)i), &cfg->relays[i]) < 0)
            return -1;
    }

    const char *def = NULL;
    const config_setting_t *s = NULL;
    if ((got = get_string(ld, root, "default_relay", "default_relay", &def, &s)) < 0)
        return -1;
    if (got == 0) {
        if (cfg->nrelays > 1)
            return fail(ld, rels, "several relays but no 'default_relay': name one of them");
        cfg->default_relay = 0;
        return 0;
    }
    for (size_t i = 0; i < cfg->nrelays; i++)
        if (strcmp(cfg->relays[i].name, def) == 0) {
            cfg->default_relay = i;
            return 0;
        }
    return fail(ld, s, "default_relay '%s' is not defined in 'relays'", def);
}

/* ---- integers libconfig would wrap -------------------------------------- */

static int name_char(char c)
{
    return isalnum((unsigned char)c) || c == '_' || c == '-' || c == '*';
}

/*
 * libconfig 1.5 keeps an integer literal without the L suffix in an int and
 * silently wraps it (4294967356 reads as 60).  Re-scan the source for such
 * literals so they are refused instead of quietly becoming another number.
 */
static int scan_wide_integers(struct loader *ld, const char *file)
{
    FILE *f = fopen(file, "r");
    if (!f)
        return 0; /* libconfig has just read it; nothing to add */
    unsigned line = 1;
    int c, prev = '\n', prev2 = '\n';
    char num[32];
    int rc = 0;
    while ((c = getc(f)) != EOF) {
        if (c == '"') {
            int esc = 0;
            while ((c = getc(f)) != EOF && (esc || c != '"')) {
                esc = !esc && c == '\\';
                if (c == '\n')
                    line++;
            }
            prev = '"';
            continue;
        }
        if (c == '#' || (c == '/' && prev == '/')) {
            while ((c = getc(f)) != EOF && c != '\n')
                ;
            if (c == '\n')
                line++;
            prev = prev2 = '\n';
            continue;
        }
        if (c == '*' && prev == '/') {
            int p = 0;
            while ((c = getc(f)) != EOF && !(p == '*' && c == '/')) {
                if (c == '\n')
                    line++;
                p = c;
            }
            prev = prev2 = ' ';
            continue;
        }
        if (c == '\n')
            line++;
        int starts = isdigit(c) && !name_char((char)prev) && prev != '.';
        int negative = 0;
        if (isdigit(c) && (prev == '-' || prev == '+')) {
            /* "a-1" is a name; "= -1" is a signed number */
            starts = !name_char((char)prev2);
            negative = prev == '-';
        }
        if (!isdigit(c) || !starts) {
            prev2 = prev;
            prev = c;
            continue;
        }
        size_t len = 0;
        int hex = 0;
        num[len++] = (char)c;
        while ((c = getc(f)) != EOF && (isxdigit(c) || ((c == 'x' || c == 'X') && len == 1))) {
            if (c == 'x' || c == 'X')
                hex = 1;
            if (!hex && !isdigit(c))
                break;
            if (len < sizeof(num) - 1)
                num[len++] = (char)c;
            else
                len = sizeof(num); /* too long to be anything but out of range */
        }
        if (len < sizeof(num))
            num[len] = '\0';
        else
            num[sizeof(num) - 1] = '\0';
        if (!hex && (c == '.' || c == 'e' || c == 'E')) {
            ungetc(c, f); /* a float: its digits are read as ordinary characters */
            prev2 = '0';
            prev = '.'; /* so the fraction is not taken for a number */
            continue;
        }
        if (c != 'L') {
            errno = 0;
            unsigned long long v = strtoull(num, NULL, hex ? 16 : 10);
            unsigned long long lim = negative ? (unsigned long long)INT_MAX + 1 : INT_MAX;
            if (len >= sizeof(num) || errno == ERANGE || v > lim) {
                char *msg;
                const char *more = len >= sizeof(num) ? "..." : "";
                if (asprintf(&msg,
                             "%s:%u: integer %s%s%s does not fit in 32 bits; write it with an "
                             "L suffix (as in 3000000000L) if it is meant",
                             file, line, negative ? "-" : "", num, more) < 0)
                    ld->oom = 1;
                else if (!ld->err)
                    ld->err = msg;
                else
                    free(msg);
                rc = -1;
                break;
            }
        }
        if (c == EOF)
            break;
        ungetc(c, f);
        prev2 = '0';
        prev = '0';
    }
    fclose(f);
    return rc;
}

/* ---- entry points ------------------------------------------------------- */

/* Wipe an inline password in libconfig's copy before it frees the tree. */
static void wipe_inline_passwords(config_t *cf)
{
    const config_setting_t *rels = config_lookup(cf, "relays");
    if (!rels || !config_setting_is_group(rels))
        return;
    for (int i = 0; i < config_setting_length(rels); i++) {
        const config_setting_t *r = config_setting_get_elem(rels, (unsigned)i);
        const config_setting_t *a =
            config_setting_is_group(r) ? config_setting_get_member(r, "auth") : NULL;
        const config_setting_t *p =
            a && config_setting_is_group(a) ? config_setting_get_member(a, "password") : NULL;
        if (p && config_setting_type(p) == CONFIG_TYPE_STRING && p->value.sval)
            explicit_bzero(p->value.sval, strlen(p->value.sval));
    }
}

struct config *config_load(const char *path, char *err, size_t errlen)
{
    struct loader ld = {.path = path};
    struct config *cfg = NULL;
    config_t cf;
    struct stat st;
    char *dir = NULL;

    if (err && errlen)
        err[0] = '\0';
    /* libconfig says only "file I/O error"; find out what went wrong ourselves */
    if (stat(path, &st) < 0) {
        report(&ld, NULL, 1, "cannot read: %s", strerror(errno));
        goto fail_early;
    }
    if (!S_ISREG(st.st_mode)) {
        report(&ld, NULL, 1, "not a regular file");
        goto fail_early;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY); /* as the daemon, unlike access() */
    if (fd < 0) {
        report(&ld, NULL, 1, "cannot read: %s", strerror(errno));
        goto fail_early;
    }
    close(fd);

    config_init(&cf);
    /* @include is relative to the file, not to wherever the daemon was started */
    const char *slash = strrchr(path, '/');
    if (slash) {
        dir = strndup(path, slash == path ? 1 : (size_t)(slash - path));
        if (!dir) {
            ld.oom = 1;
            goto out;
        }
        config_set_include_dir(&cf, dir);
        ld.include_dir = dir;
    }
    if (!config_read_file(&cf, path)) {
        const char *text = config_error_text(&cf) ? config_error_text(&cf) : "unknown error";
        char *file = source_path(&ld, config_error_file(&cf));
        int rc = -1;
        if (file && config_error_type(&cf) == CONFIG_ERR_PARSE)
            rc = asprintf(&ld.err, "%s:%d: %s%s", file, config_error_line(&cf),
                          strncmp(text, "syntax error", 12) == 0 ? "" : "syntax error: ", text);
        else if (file)
            rc = asprintf(&ld.err, "%s: cannot read: %s", file, text);
        free(file);
        if (rc < 0) {
            ld.err = NULL;
            ld.oom = 1;
        }
        goto out;
    }
    for (unsigned i = 0; i < cf.num_filenames; i++) {
        char *file = source_path(&ld, cf.filenames[i]);
        int rc = file ? scan_wide_integers(&ld, file) : -1;
        free(file);
        if (rc < 0) {
            ld.oom |= !file;
            goto out;
        }
    }

    cfg = calloc(1, sizeof(*cfg));
    if (!cfg) {
        ld.oom = 1;
        goto out;
    }
    const config_setting_t *root = config_root_setting(&cf);
    if (!(cfg->path = xstrdup(&ld, path)) || check_keys(&ld, root, top_keys, top_later, NULL) < 0 ||
        read_daemon(&ld, root, cfg) < 0 || read_spool(&ld, root, cfg) < 0 ||
        read_relays(&ld, root, cfg) < 0 || ld.oom) {
        config_free(cfg);
        cfg = NULL;
    }
out:
    wipe_inline_passwords(&cf);
    config_destroy(&cf);
    free(dir);
fail_early:
    if (!cfg)
        copy_error(&ld, err, errlen);
    free(ld.err);
    return cfg;
}

static void free_secret(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

void config_free(struct config *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < cfg->nrelays; i++) {
        struct relay_config *r = &cfg->relays[i];
        for (size_t h = 0; h < r->nhosts; h++)
            free(r->hosts[h].host);
        free(r->hosts);
        free(r->name);
        free(r->helo_name);
        free(r->auth_user);
        free_secret(r->auth_password);
        free(r->auth_password_file);
        free(r->tls_ca_file);
        free(r->tls_ca_path);
        free(r->tls_server_name);
        free(r->tls_min_version);
    }
    free(cfg->relays);
    free(cfg->path);
    free(cfg->hostname);
    free(cfg->submit_socket);
    free(cfg->control_socket);
    free(cfg->spool_dir);
    free(cfg->spool.bounce_to);
    free(cfg);
}

const struct relay_config *config_relay(const struct config *cfg, const char *name)
{
    if (!cfg || !name)
        return NULL;
    for (size_t i = 0; i < cfg->nrelays; i++)
        if (strcmp(cfg->relays[i].name, name) == 0)
            return &cfg->relays[i];
    return NULL;
}
