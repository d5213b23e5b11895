/*
 * Configuration loader, the only file that sees libconfig: reads and checks the
 * file and turns it into a plain struct config, applying the relay option rules
 * of the spec (ports 465/587, RFC 8314 implicit TLS vs RFC 3207 STARTTLS) and
 * the per-phase timeout defaults of RFC 5321 section 4.5.3.2.
 */
#include "config.h"
#include "base64.h"
#include "lmtp_parse.h"
#include "log.h"
#include "proto.h"
#include "proxy.h"

#include <libconfig.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
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
    {"PLAIN", AUTH_MECH_PLAIN},
    {"LOGIN", AUTH_MECH_LOGIN},
    {"CRAM-MD5", AUTH_MECH_CRAM_MD5},
    {"SCRAM-SHA-256", AUTH_MECH_SCRAM_SHA_256},
    {"XOAUTH2", AUTH_MECH_XOAUTH2},
    {"OAUTHBEARER", AUTH_MECH_OAUTHBEARER},
    {"SCRAM-SHA-1", AUTH_MECH_SCRAM_SHA_1},
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
    "hosts",
    "options",
    "timeout",
    "timeouts",
    "mode",
    "helo_name",
    "allow_plaintext_auth",
    "auth",
    "tls",
    "pool",
    "rate",
    "limits",
    /* routing and address fixing */
    "allow",
    "sender",
    "aliases",
    "qualify_domain",
    "from_header",
    "proxy", /* tunnel through SOCKS5 / HTTP CONNECT */
    NULL,
};
static const char *const relay_later[] = {NULL};
static const char *const timeouts_keys[] = {
    "connect", "greeting", "command", "data_block", "data_end", NULL,
};
static const char *const auth_keys[] = {
    "user",
    "password",
    "password_file",
    "mechanisms",
    "password_command",
    "password_command_ttl",
    "credential",
    NULL,
};
static const char *const auth_later[] = {NULL};
static const char *const tls_keys[] = {
    "ca_file",     "ca_path",    "server_name", "min_version", "ciphers",
    "client_cert", "client_key", "pin_sha256",  NULL,
};
static const char *const tls_later[] = {NULL};
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
    const char *command = NULL, *cred = NULL;
    const config_setting_t *cmd_s = NULL, *cred_s = NULL;
    if (get_string(ld, as, "password", "auth.password", &password, &pw_s) < 0 ||
        get_string(ld, as, "password_file", "auth.password_file", &file, &file_s) < 0 ||
        get_string(ld, as, "password_command", "auth.password_command", &command, &cmd_s) < 0 ||
        get_string(ld, as, "credential", "auth.credential", &cred, &cred_s) < 0)
        return -1;
    /* Exactly one secret source; name the one that came second. */
    const config_setting_t *sources[] = {pw_s, file_s, cmd_s, cred_s};
    const config_setting_t *first = NULL, *second = NULL;
    for (size_t i = 0; i < sizeof(sources) / sizeof(sources[0]); i++) {
        if (!sources[i])
            continue;
        if (!first || config_setting_index(sources[i]) < config_setting_index(first)) {
            second = first;
            first = sources[i];
        } else if (!second || config_setting_index(sources[i]) < config_setting_index(second)) {
            second = sources[i];
        }
    }
    if (second)
        return fail(ld, second,
                    "'auth.%s' and 'auth.%s' exclude each other: give exactly one of "
                    "password, password_file, password_command, credential",
                    config_setting_name(first), config_setting_name(second));
    if (!first)
        return fail(ld, as,
                    "'auth' needs one of 'password_file' (preferred), 'password', "
                    "'password_command' or 'credential'");
    if (!(r->auth_user = xstrdup(ld, user)))
        return -1;
    r->auth_password_command_ttl = 300;
    if (get_uint(ld, as, "password_command_ttl", "auth.password_command_ttl", 0, MAX_SECONDS,
                 &r->auth_password_command_ttl) < 0)
        return -1;
    if (password) {
        if (!(r->auth_password = xstrdup(ld, password)))
            return -1;
    } else if (file) {
        if (absolute_path(ld, file_s, "auth.password_file", file) < 0)
            return -1;
        if (!(r->auth_password_file = xstrdup(ld, file)))
            return -1;
        if (read_password_file(ld, file_s, file, &r->auth_password) < 0)
            return -1;
    } else if (command) {
        if (!*command)
            return fail(ld, cmd_s, "'auth.password_command' is empty");
        if (!(r->auth_password_command = xstrdup(ld, command)))
            return -1;
    } else {
        /* systemd LoadCredential=: a plain file name under $CREDENTIALS_DIRECTORY. */
        const char *dir = getenv("CREDENTIALS_DIRECTORY");
        if (!*cred || strchr(cred, '/') || strcmp(cred, ".") == 0 || strcmp(cred, "..") == 0)
            return fail(ld, cred_s, "'auth.credential' must be a plain name, not a path");
        if (!dir || !*dir)
            return fail(ld, cred_s,
                        "'auth.credential' needs $CREDENTIALS_DIRECTORY (set by systemd's "
                        "LoadCredential=)");
        size_t plen = strlen(dir) + 1 + strlen(cred) + 1;
        char *path = malloc(plen);
        if (!path)
            return fail(ld, cred_s, "out of memory");
        snprintf(path, plen, "%s/%s", dir, cred);
        int rc = read_password_file(ld, cred_s, path, &r->auth_password);
        free(path);
        if (rc < 0)
            return -1;
        if (!(r->auth_credential = xstrdup(ld, cred)))
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
                            "SCRAM-SHA-1, SCRAM-SHA-256, XOAUTH2, OAUTHBEARER)",
                            w);
            r->auth_mechanisms |= bit;
        }
    }
    return 0;
}

/* A readable regular file named by an absolute path. */
static int readable_file(struct loader *ld, const config_setting_t *s, const char *label,
                         const char *v)
{
    struct stat st;
    if (absolute_path(ld, s, label, v) < 0)
        return -1;
    if (stat(v, &st) < 0 || access(v, R_OK) < 0)
        return fail(ld, s, "%s '%s': %s", label, v, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return fail(ld, s, "%s '%s' is not a regular file", label, v);
    return 0;
}

/* tls.ciphers, tls.client_cert/client_key and tls.pin_sha256 (applied by pool.c). */
static int read_tls_more(struct loader *ld, const config_setting_t *ts, struct relay_config *r)
{
    const char *v = NULL;
    const config_setting_t *s = NULL;
    int got;

    if ((got = get_string(ld, ts, "ciphers", "tls.ciphers", &v, &s)) < 0)
        return -1;
    if (got) {
        for (const char *c = v; *c; c++)
            if (!isalnum((unsigned char)*c) && !strchr("-_:+!@=.", *c))
                return fail(ld, s, "'tls.ciphers' must be a list of suite names separated by ':'");
        if (!(r->tls_ciphers = xstrdup(ld, v)))
            return -1;
    }
    const config_setting_t *cert_s = NULL;
    if ((got = get_string(ld, ts, "client_cert", "tls.client_cert", &v, &cert_s)) < 0)
        return -1;
    if (got) {
        if (readable_file(ld, cert_s, "tls.client_cert", v) < 0)
            return -1;
        if (!(r->tls_client_cert = xstrdup(ld, v)))
            return -1;
    }
    if ((got = get_string(ld, ts, "client_key", "tls.client_key", &v, &s)) < 0)
        return -1;
    if (got) {
        if (!r->tls_client_cert)
            return fail(ld, s, "'tls.client_key' needs 'tls.client_cert'");
        if (readable_file(ld, s, "tls.client_key", v) < 0)
            return -1;
        if (!(r->tls_client_key = xstrdup(ld, v)))
            return -1;
    } else if (r->tls_client_cert && !(r->tls_client_key = xstrdup(ld, r->tls_client_cert))) {
        return -1; /* one PEM file holding both */
    }

    config_setting_t *pins;
    if ((got = get_string_list(ld, ts, "pin_sha256", "tls.pin_sha256", &pins)) < 0)
        return -1;
    if (got) {
        int n = config_setting_length(pins);
        if (n == 0)
            return fail(ld, pins, "'tls.pin_sha256' is empty: give one or more base64 digests");
        r->tls_pins = calloc((size_t)n, sizeof(*r->tls_pins));
        if (!r->tls_pins) {
            ld->oom = 1;
            return -1;
        }
        for (int i = 0; i < n; i++) {
            const config_setting_t *e = config_setting_get_elem(pins, (unsigned)i);
            const char *pin = config_setting_get_string(e);
            unsigned char dig[48];
            size_t pl = strlen(pin);
            if (pl != 44 || base64_decode(pin, pl, dig) != 32)
                return fail(ld, e,
                            "'tls.pin_sha256' entry \"%s\" is not a base64 SHA-256 digest "
                            "(44 characters)",
                            pin);
            if (!(r->tls_pins[r->ntls_pins] = xstrdup(ld, pin)))
                return -1;
            r->ntls_pins++;
        }
    }
    return 0;
}

/*
 * proxy = "socks5://[user:pass@]host:port" | "http://host:port".  Only with
 * the tunnel option: a proxy changes what the port and address mean.
 */
static int read_proxy(struct loader *ld, const config_setting_t *rs, struct relay_config *r)
{
    const char *v = NULL;
    const config_setting_t *s = NULL;
    int got = get_string(ld, rs, "proxy", "proxy", &v, &s);
    if (got <= 0)
        return got;
    if (!(r->options & RELAY_OPT_TUNNEL))
        return fail(ld, s, "'proxy' needs the 'tunnel' option");
    struct proxy_url u;
    char why[160];
    if (proxy_url_parse(v, &u, why, sizeof(why)) < 0)
        return fail(ld, s, "'proxy': %s", why);
    r->proxy_kind = u.kind;
    r->proxy_host = u.host;
    r->proxy_port = u.port;
    r->proxy_user = u.user;
    r->proxy_password = u.password;
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
    return read_tls_more(ld, ts, r);
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

/* ---- budgets: rate and limits (pool.c, upstream.c) ---------------------- */

static const char *const rate_keys[] = {
    "messages_per_second",
    "messages_per_minute",
    "max_recipients",
    NULL,
};
static const char *const limits_keys[] = {"max_logins_per_minute", "max_messages", NULL};

/*
 * rate = { ... } and limits = { ... }.  limits.max_messages is the provider's
 * cap on messages per connection, the same thing as pool.max_messages: the
 * smaller of the two (0 being no cap) is what the pool uses.  Runs after
 * read_pool().
 */
static int read_budgets(struct loader *ld, const config_setting_t *rs, struct relay_config *r,
                        const char *name)
{
    struct budget_config *b = &r->budget;
    char where[MAILPOOL_MAX_RELAY_NAME + 32];
    config_setting_t *gs;
    int got = get_group(ld, rs, "rate", "rate", &gs);
    if (got < 0)
        return -1;
    if (got) {
        snprintf(where, sizeof(where), "rate of relay '%s'", name);
        if (check_keys(ld, gs, rate_keys, NULL, where) < 0 ||
            get_uint(ld, gs, "messages_per_second", "rate.messages_per_second", 0, 100000,
                     &b->messages_per_second) < 0 ||
            get_uint(ld, gs, "messages_per_minute", "rate.messages_per_minute", 0, 6000000,
                     &b->messages_per_minute) < 0 ||
            get_uint(ld, gs, "max_recipients", "rate.max_recipients", 0, 100000,
                     &b->max_recipients) < 0)
            return -1;
    }
    if ((got = get_group(ld, rs, "limits", "limits", &gs)) < 0)
        return -1;
    if (got) {
        unsigned max_messages = 0;
        snprintf(where, sizeof(where), "limits of relay '%s'", name);
        if (check_keys(ld, gs, limits_keys, NULL, where) < 0 ||
            get_uint(ld, gs, "max_logins_per_minute", "limits.max_logins_per_minute", 0, 100000,
                     &b->max_logins_per_minute) < 0 ||
            get_uint(ld, gs, "max_messages", "limits.max_messages", 0, 1000000, &max_messages) < 0)
            return -1;
        if (max_messages > 0 && (r->pool.max_messages == 0 || max_messages < r->pool.max_messages))
            r->pool.max_messages = max_messages;
    }
    return 0;
}

/* ---- routing and address fixing (route.c, rewrite.c) -------------------- */

/*
 * User and group names are resolved here, at start and reload, so that the
 * event loop never asks NSS anything: at connect time only the peer's ids
 * (SO_PEERCRED, SO_PEERGROUPS) are compared with these.
 */
static int parse_id(const char *s, unsigned long *out)
{
    if (!*s || strlen(s) > 10)
        return 0;
    for (const char *p = s; *p; p++)
        if (!isdigit((unsigned char)*p))
            return 0;
    *out = strtoul(s, NULL, 10);
    return *out < (unsigned long)UINT32_MAX;
}

/* A user (is_group 0) or group named by a string (name or numeric id) or an integer. */
static int read_id(struct loader *ld, const config_setting_t *e, const char *label, int is_group,
                   unsigned long *out)
{
    int t = config_setting_type(e);
    if (t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64) {
        long long v = config_setting_get_int64(e);
        if (v < 0 || v >= (long long)UINT32_MAX)
            return fail(ld, e, "'%s': %lld is not a valid id", label, v);
        *out = (unsigned long)v;
        return 0;
    }
    if (t != CONFIG_TYPE_STRING)
        return fail(ld, e, "'%s' must name a %s (or give its id), not %s", label,
                    is_group ? "group" : "user", type_name(t));
    const char *v = config_setting_get_string(e);
    if (!v || !*v)
        return fail(ld, e, "'%s' must not be empty", label);
    if (parse_id(v, out))
        return 0;
    if (is_group) {
        const struct group *g = getgrnam(v);
        if (!g)
            return fail(ld, e, "'%s': no such group '%s'", label, v);
        *out = g->gr_gid;
    } else {
        const struct passwd *pw = getpwnam(v);
        if (!pw)
            return fail(ld, e, "'%s': no such user '%s'", label, v);
        *out = pw->pw_uid;
    }
    return 0;
}

/* `users` or `groups` of an allow group: a list, or one value on its own. */
static int read_id_list(struct loader *ld, const config_setting_t *as, const char *key,
                        const char *label, int is_group, struct access_list *al)
{
    const config_setting_t *s = config_setting_get_member(as, key);
    if (!s)
        return 0;
    int n = config_setting_is_aggregate(s) ? config_setting_length(s) : 1;
    if (config_setting_is_group(s))
        return fail(ld, s, "'%s' must be a list [ ... ] of names or ids", label);
    void *ids = calloc(n > 0 ? (size_t)n : 1, is_group ? sizeof(gid_t) : sizeof(uid_t));
    if (!ids) {
        ld->oom = 1;
        return -1;
    }
    if (is_group) {
        al->gids = ids;
    } else {
        al->uids = ids;
    }
    for (int i = 0; i < n; i++) {
        const config_setting_t *e =
            config_setting_is_aggregate(s) ? config_setting_get_elem(s, (unsigned)i) : s;
        unsigned long id;
        if (read_id(ld, e, label, is_group, &id) < 0)
            return -1;
        if (is_group)
            al->gids[al->ngids++] = (gid_t)id;
        else
            al->uids[al->nuids++] = (uid_t)id;
    }
    return 0;
}

static const char *const allow_keys[] = {"users", "groups", NULL};

static int read_access_list(struct loader *ld, const config_setting_t *parent, const char *label,
                            struct access_list *al)
{
    config_setting_t *as;
    int got = get_group(ld, parent, "allow", label, &as);
    if (got <= 0)
        return got;
    if (check_keys(ld, as, allow_keys, NULL, label) < 0)
        return -1;
    char sub[64];
    al->set = 1;
    snprintf(sub, sizeof(sub), "%s.users", label);
    if (read_id_list(ld, as, "users", sub, 0, al) < 0)
        return -1;
    snprintf(sub, sizeof(sub), "%s.groups", label);
    return read_id_list(ld, as, "groups", sub, 1, al);
}

static void free_access_list(struct access_list *al)
{
    free(al->uids);
    free(al->gids);
}

/* A domain for qualify_domain or a route condition: a host name, compared without case. */
static int read_domain(struct loader *ld, const config_setting_t *group, const char *key,
                       const char *label, char **out)
{
    const char *v = NULL;
    const config_setting_t *s = NULL;
    int got = get_string(ld, group, key, label, &v, &s);
    if (got <= 0)
        return got;
    if (!valid_hostname(v))
        return fail(ld, s, "'%s' must be a domain name", label);
    return (*out = xstrdup(ld, v)) ? 1 : -1;
}

/* A complete address (local@domain) that goes into the envelope or a header as is. */
static int read_full_address(struct loader *ld, const config_setting_t *s, const char *label,
                             const char *v, char **out)
{
    const char *why = addr_check(v, strlen(v), 0);
    if (why)
        return fail(ld, s, "'%s' is not a valid address: %s", label, why);
    const char *at = strrchr(v, '@');
    if (!at || at == v || !at[1])
        return fail(ld, s, "'%s' must be a full address local@domain", label);
    return (*out = xstrdup(ld, v)) ? 0 : -1;
}

static int read_aliases(struct loader *ld, const config_setting_t *rs, struct address_fixing *fx)
{
    config_setting_t *as;
    int got = get_group(ld, rs, "aliases", "aliases", &as);
    if (got <= 0)
        return got;
    int n = config_setting_length(as);
    fx->aliases = calloc(n > 0 ? (size_t)n : 1, sizeof(*fx->aliases));
    if (!fx->aliases) {
        ld->oom = 1;
        return -1;
    }
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(as, (unsigned)i);
        const char *name = config_setting_name(e);
        if (config_setting_type(e) != CONFIG_TYPE_STRING)
            return fail(ld, e, "alias '%s' must be a string \"local@domain\"", name);
        struct alias *a = &fx->aliases[fx->naliases++];
        if (!(a->name = xstrdup(ld, name)))
            return -1;
        char label[80];
        snprintf(label, sizeof(label), "aliases.%.60s", name);
        if (read_full_address(ld, e, label, config_setting_get_string(e), &a->addr) < 0)
            return -1;
    }
    return 0;
}

/* The relay keys of route.c and rewrite.c, read after the rest of the relay. */
static int read_relay_routing(struct loader *ld, const config_setting_t *rs, struct relay_config *r)
{
    struct address_fixing *fx = &r->fix;
    if (read_access_list(ld, rs, "allow", &r->allow) < 0 ||
        read_domain(ld, rs, "qualify_domain", "qualify_domain", &fx->qualify_domain) < 0 ||
        read_aliases(ld, rs, fx) < 0)
        return -1;
    const char *v = NULL;
    const config_setting_t *s = NULL;
    int got = get_string(ld, rs, "sender", "sender", &v, &s);
    if (got < 0 || (got && read_full_address(ld, s, "sender", v, &fx->sender) < 0))
        return -1;
    if ((got = get_string(ld, rs, "from_header", "from_header", &v, &s)) < 0)
        return -1;
    fx->from_header = FROM_HEADER_KEEP;
    if (got) {
        if (strcmp(v, "keep") == 0)
            fx->from_header = FROM_HEADER_KEEP;
        else if (strcmp(v, "rewrite") == 0)
            fx->from_header = FROM_HEADER_REWRITE;
        else if (strcmp(v, "add_if_missing") == 0)
            fx->from_header = FROM_HEADER_ADD_IF_MISSING;
        else
            return fail(ld, s, "'from_header' must be \"keep\", \"rewrite\" or \"add_if_missing\"");
    }
    return 0;
}

static void free_relay_routing(struct relay_config *r)
{
    free_access_list(&r->allow);
    free(r->fix.qualify_domain);
    free(r->fix.sender);
    for (size_t i = 0; i < r->fix.naliases; i++) {
        free(r->fix.aliases[i].name);
        free(r->fix.aliases[i].addr);
    }
    free(r->fix.aliases);
}

static const char *const route_keys[] = {
    "sender_domain", "sender", "recipient_domain", "user", "group", "relay", NULL,
};

static int read_route(struct loader *ld, const config_setting_t *e, const struct config *cfg,
                      struct route_rule *rt)
{
    rt->line = (int)config_setting_source_line(e);
    if (!config_setting_is_group(e))
        return fail(ld, e, "each entry of 'routes' must be a group { ...; relay = \"name\"; }");
    if (check_keys(ld, e, route_keys, NULL, "a route") < 0)
        return -1;
    const char *v = NULL;
    const config_setting_t *s = NULL;
    int got, conds = 0;
    if ((got = read_domain(ld, e, "sender_domain", "sender_domain", &rt->sender_domain)) < 0)
        return -1;
    conds += got;
    if ((got = read_domain(ld, e, "recipient_domain", "recipient_domain", &rt->recipient_domain)) <
        0)
        return -1;
    conds += got;
    if ((got = get_string(ld, e, "sender", "sender", &v, &s)) < 0)
        return -1;
    if (got) {
        /* "<>" or "" would be unreadable; the null sender is matched as "<>". */
        if (strcmp(v, "<>") != 0 && addr_check(v, strlen(v), 1) != NULL)
            return fail(ld, s, "'sender' is not a valid address");
        if (!(rt->sender = xstrdup(ld, v)))
            return -1;
        conds++;
    }
    unsigned long id;
    const config_setting_t *u = config_setting_get_member(e, "user");
    if (u) {
        if (read_id(ld, u, "user", 0, &id) < 0)
            return -1;
        rt->has_user = 1;
        rt->user = (uid_t)id;
        conds++;
    }
    const config_setting_t *g = config_setting_get_member(e, "group");
    if (g) {
        if (read_id(ld, g, "group", 1, &id) < 0)
            return -1;
        rt->has_group = 1;
        rt->group = (gid_t)id;
        conds++;
    }
    if ((got = get_string(ld, e, "relay", "relay", &v, &s)) < 0)
        return -1;
    if (!got)
        return fail(ld, e, "a route needs 'relay = \"name\";'");
    const struct relay_config *rc = config_relay(cfg, v);
    if (!rc)
        return fail(ld, s, "route relay '%s' is not defined in 'relays'", v);
    rt->relay = (size_t)(rc - cfg->relays);
    if (conds == 0)
        return fail(ld, e,
                    "a route needs at least one of sender_domain, sender, recipient_domain, "
                    "user, group (use default_relay for the rest)");
    return 0;
}

static int read_routes(struct loader *ld, const config_setting_t *root, struct config *cfg)
{
    const config_setting_t *s = config_setting_get_member(root, "routes");
    if (!s)
        return 0;
    if (!config_setting_is_list(s) && !config_setting_is_array(s))
        return fail(ld, s, "'routes' must be a list ( { ... }, { ... } )");
    int n = config_setting_length(s);
    cfg->routes = calloc(n > 0 ? (size_t)n : 1, sizeof(*cfg->routes));
    if (!cfg->routes) {
        ld->oom = 1;
        return -1;
    }
    for (int i = 0; i < n; i++) {
        cfg->nroutes++; /* count first so config_free() releases a partial route */
        if (read_route(ld, config_setting_get_elem(s, (unsigned)i), cfg, &cfg->routes[i]) < 0)
            return -1;
    }
    return 0;
}

static void free_routing(struct config *cfg)
{
    for (size_t i = 0; i < cfg->nroutes; i++) {
        free(cfg->routes[i].sender_domain);
        free(cfg->routes[i].sender);
        free(cfg->routes[i].recipient_domain);
    }
    free(cfg->routes);
    free_access_list(&cfg->allow);
    for (size_t i = 0; i < cfg->nsender_map; i++) {
        for (size_t k = 0; k < cfg->sender_map[i].naddrs; k++)
            free(cfg->sender_map[i].addrs[k]);
        free(cfg->sender_map[i].addrs);
    }
    free(cfg->sender_map);
    for (size_t i = 0; i < cfg->nrelays; i++)
        free_relay_routing(&cfg->relays[i]);
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
    if (read_tls(ld, rs, r, sub) < 0 || read_proxy(ld, rs, r) < 0)
        return -1;
    snprintf(sub, sizeof(sub), "pool of relay '%s'", name);
    if (read_pool(ld, rs, r, sub) < 0)
        return -1;
    if (read_budgets(ld, rs, r, name) < 0)
        return -1;
    return 0;
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
    if (rc == 0)
        rc = read_relay_routing(ld, rs, r);
    ld->scope = NULL; /* it points into this frame */
    return rc;
}

/* ---- daemon section ----------------------------------------------------- */

static const char *const daemon_keys[] = {
    "hostname",    "submit_socket",  "control_socket",      "spool_dir", "max_message_size",
    "max_clients", "client_timeout", "log_level",           "allow",     "sender_policy",
    "sender_map",  "control_group",  "control_max_per_uid", NULL,
};
static const char *const daemon_later[] = {NULL};
static const char *const top_keys[] = {
    "daemon", "default_relay", "relays", "spool", "routes", NULL,
};
static const char *const top_later[] = {NULL};

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

/* daemon.sender_map = { USER = [ "addr", "@domain", "<>" ]; ... }: names resolved now. */
static int read_sender_map(struct loader *ld, const config_setting_t *ds, struct config *cfg)
{
    config_setting_t *ms;
    int got = get_group(ld, ds, "sender_map", "sender_map", &ms);
    if (got <= 0)
        return got;
    int n = config_setting_length(ms);
    cfg->sender_map = calloc(n > 0 ? (size_t)n : 1, sizeof(*cfg->sender_map));
    if (!cfg->sender_map) {
        ld->oom = 1;
        return -1;
    }
    for (int i = 0; i < n; i++) {
        const config_setting_t *u = config_setting_get_elem(ms, (unsigned)i);
        const char *name = config_setting_name(u);
        struct sender_map_entry *e = &cfg->sender_map[cfg->nsender_map++];
        unsigned long id;
        if (parse_id(name, &id)) {
            e->uid = (uid_t)id;
        } else {
            const struct passwd *pw = getpwnam(name);
            if (!pw)
                return fail(ld, u, "'sender_map': no such user '%s'", name);
            e->uid = pw->pw_uid;
        }
        int single = config_setting_type(u) == CONFIG_TYPE_STRING;
        if (!single && !config_setting_is_array(u) && !config_setting_is_list(u))
            return fail(ld, u, "'sender_map.%s' must be a list of addresses [ \"...\", ... ]",
                        name);
        int m = single ? 1 : config_setting_length(u);
        e->addrs = calloc(m > 0 ? (size_t)m : 1, sizeof(*e->addrs));
        if (!e->addrs) {
            ld->oom = 1;
            return -1;
        }
        for (int k = 0; k < m; k++) {
            const config_setting_t *a = single ? u : config_setting_get_elem(u, (unsigned)k);
            const char *v =
                config_setting_type(a) == CONFIG_TYPE_STRING ? config_setting_get_string(a) : NULL;
            if (!v || !*v)
                return fail(ld, a, "'sender_map.%s' must contain only non-empty strings", name);
            for (const char *p = v; *p; p++)
                if ((unsigned char)*p <= 0x20 || (unsigned char)*p == 0x7f)
                    return fail(ld, a,
                                "'sender_map.%s': an address must not contain spaces or "
                                "control characters",
                                name);
            if (strcmp(v, "<>") != 0 && !strchr(v, '@'))
                return fail(ld, a,
                            "'sender_map.%s': \"%s\" is not an address, \"@domain\" or \"<>\"",
                            name, v);
            if (!(e->addrs[e->naddrs] = xstrdup(ld, v)))
                return -1;
            e->naddrs++;
        }
    }
    return 0;
}

/* sender_policy, sender_map, control_group and control_max_per_uid. */
static int read_access_keys(struct loader *ld, const config_setting_t *ds, struct config *cfg)
{
    cfg->control_max_per_uid = 8;
    if (!ds)
        return 0;
    const char *v = NULL;
    const config_setting_t *s = NULL;
    int got = get_string(ld, ds, "sender_policy", "sender_policy", &v, &s);
    if (got < 0)
        return -1;
    if (got && strcmp(v, "own") == 0)
        cfg->sender_policy_own = 1;
    else if (got && strcmp(v, "any") != 0)
        return fail(ld, s, "'sender_policy' must be \"any\" or \"own\"");
    if (read_sender_map(ld, ds, cfg) < 0)
        return -1;
    const config_setting_t *g = config_setting_get_member(ds, "control_group");
    if (g) {
        unsigned long id;
        if (read_id(ld, g, "control_group", 1, &id) < 0)
            return -1;
        cfg->has_control_group = 1;
        cfg->control_group = (gid_t)id;
    }
    if (get_uint(ld, ds, "control_max_per_uid", "control_max_per_uid", 1, 1024,
                 &cfg->control_max_per_uid) < 0)
        return -1;
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
    if (rc == 0 && ds)
        rc = read_access_list(ld, ds, "daemon.allow", &cfg->allow);
    if (rc == 0)
        rc = read_access_keys(ld, ds, cfg);
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
        /* proxy = "socks5://user:password@..." holds a secret too */
        const config_setting_t *px =
            config_setting_is_group(r) ? config_setting_get_member(r, "proxy") : NULL;
        if (px && config_setting_type(px) == CONFIG_TYPE_STRING && px->value.sval)
            explicit_bzero(px->value.sval, strlen(px->value.sval));
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
        read_relays(&ld, root, cfg) < 0 || read_routes(&ld, root, cfg) < 0 || ld.oom) {
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
    free_routing(cfg);
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
        free_secret(r->auth_password_command);
        free(r->auth_credential);
        free(r->tls_ca_file);
        free(r->tls_ca_path);
        free(r->tls_server_name);
        free(r->tls_min_version);
        free(r->tls_ciphers);
        free(r->tls_client_cert);
        free(r->tls_client_key);
        for (size_t k = 0; k < r->ntls_pins; k++)
            free(r->tls_pins[k]);
        free(r->tls_pins);
        free(r->proxy_host);
        free(r->proxy_user);
        free_secret(r->proxy_password);
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

/* ---- reload: which relay profiles changed --------------------------------- */

static int str_eq(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    return strcmp(a, b) == 0;
}

/*
 * Field by field rather than a serialisation: a serialiser would need the
 * same per-field care, and this way a missed field is caught at build time
 * by the size check below.  THE RULE: every field added to struct
 * relay_config must be compared here (or listed below as not affecting
 * sessions), and the size in the check updated.  Not compared, because
 * sessions never read them and a kept relay is re-pointed at the new profile
 * anyway: line (moves whenever lines above it are edited), mode, allow, fix.
 * Secrets are compared too: a rotated password must reach new logins.
 */
int relay_config_equal(const struct relay_config *a, const struct relay_config *b)
{
    if (!str_eq(a->name, b->name) || a->nhosts != b->nhosts || a->options != b->options ||
        a->timeout != b->timeout || a->timeouts.connect != b->timeouts.connect ||
        a->timeouts.greeting != b->timeouts.greeting ||
        a->timeouts.command != b->timeouts.command ||
        a->timeouts.data_block != b->timeouts.data_block ||
        a->timeouts.data_end != b->timeouts.data_end || !str_eq(a->helo_name, b->helo_name))
        return 0;
    for (size_t i = 0; i < a->nhosts; i++)
        if (!str_eq(a->hosts[i].host, b->hosts[i].host) || a->hosts[i].port != b->hosts[i].port)
            return 0;
    if (a->has_auth != b->has_auth || !str_eq(a->auth_user, b->auth_user) ||
        !str_eq(a->auth_password, b->auth_password) ||
        !str_eq(a->auth_password_file, b->auth_password_file) ||
        a->auth_mechanisms != b->auth_mechanisms ||
        a->allow_plaintext_auth != b->allow_plaintext_auth ||
        !str_eq(a->auth_password_command, b->auth_password_command) ||
        a->auth_password_command_ttl != b->auth_password_command_ttl ||
        !str_eq(a->auth_credential, b->auth_credential))
        return 0;
    if (!str_eq(a->tls_ca_file, b->tls_ca_file) || !str_eq(a->tls_ca_path, b->tls_ca_path) ||
        !str_eq(a->tls_server_name, b->tls_server_name) ||
        !str_eq(a->tls_min_version, b->tls_min_version))
        return 0;
    const struct pool_config *pa = &a->pool, *pb = &b->pool;
    if (pa->max_connections != pb->max_connections || pa->min_idle != pb->min_idle ||
        pa->idle_timeout != pb->idle_timeout || pa->keepalive != pb->keepalive ||
        pa->max_messages != pb->max_messages || pa->max_age != pb->max_age ||
        pa->max_waiters != pb->max_waiters || pa->wait_timeout != pb->wait_timeout)
        return 0;
    const struct budget_config *ba = &a->budget, *bb = &b->budget;
    if (ba->messages_per_second != bb->messages_per_second ||
        ba->messages_per_minute != bb->messages_per_minute ||
        ba->max_recipients != bb->max_recipients ||
        ba->max_logins_per_minute != bb->max_logins_per_minute)
        return 0;
    if (!str_eq(a->tls_ciphers, b->tls_ciphers) ||
        !str_eq(a->tls_client_cert, b->tls_client_cert) ||
        !str_eq(a->tls_client_key, b->tls_client_key) || a->ntls_pins != b->ntls_pins)
        return 0;
    for (size_t i = 0; i < a->ntls_pins; i++)
        if (!str_eq(a->tls_pins[i], b->tls_pins[i]))
            return 0;
    if (a->proxy_kind != b->proxy_kind || !str_eq(a->proxy_host, b->proxy_host) ||
        a->proxy_port != b->proxy_port || !str_eq(a->proxy_user, b->proxy_user) ||
        !str_eq(a->proxy_password, b->proxy_password))
        return 0;
    return 1;
}

#define RELAY_CONFIG_SIZE_CHECKED 376 /* x86_64, with every field compared above */
#if defined(__x86_64__) && defined(__LP64__)
/* Fails when struct relay_config grew: compare the new field above, then update the size. */
_Static_assert(sizeof(struct relay_config) == RELAY_CONFIG_SIZE_CHECKED,
               "a field was added to struct relay_config: add it to relay_config_equal()");
#endif
