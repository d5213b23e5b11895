/*
 * Proxy handshakes for tunnelled relays: SOCKS5 (RFC 1928) with the
 * user/password method (RFC 1929), and HTTP CONNECT (RFC 9110 9.3.6).
 * Bytes in, bytes out, no I/O: upstream.c drives it from the socket.
 */
#include "proxy.h"
#include "base64.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    /* SOCKS5 */
    S5_METHOD = 1, /* waiting for VER METHOD */
    S5_AUTH,       /* waiting for the RFC 1929 VER STATUS */
    S5_HEAD,       /* waiting for VER REP RSV ATYP */
    S5_ALEN,       /* waiting for the length of a domain-name BND.ADDR */
    S5_ADDR,       /* waiting for BND.ADDR and BND.PORT */
    /* HTTP */
    H_STATUS, /* the status line */
    H_HEADERS,
    /* both */
    P_DONE,
    P_FAILED,
};

static const char *const socks5_replies[] = {
    "succeeded",
    "general SOCKS server failure",
    "connection not allowed by ruleset",
    "network unreachable",
    "host unreachable",
    "connection refused",
    "TTL expired",
    "command not supported",
    "address type not supported",
};

const char *proxy_kind_name(enum proxy_kind k)
{
    return k == PROXY_SOCKS5 ? "socks5" : k == PROXY_HTTP ? "http" : "none";
}

/* ---- URLs --------------------------------------------------------------- */

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Copy [s, s+n) percent-decoded; NULL when a %XX is broken, decodes to NUL, or on ENOMEM. */
static char *pct_decode(const char *s, size_t n)
{
    char *out = malloc(n + 1), *o = out;
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '%') {
            *o++ = s[i];
            continue;
        }
        int hi = i + 1 < n ? hexval((unsigned char)s[i + 1]) : -1;
        int lo = i + 2 < n ? hexval((unsigned char)s[i + 2]) : -1;
        if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
            free(out);
            return NULL;
        }
        *o++ = (char)(hi * 16 + lo);
        i += 2;
    }
    *o = '\0';
    return out;
}

static void set_err(char *err, size_t errlen, const char *msg)
{
    if (errlen)
        snprintf(err, errlen, "%s", msg);
}

static int valid_host_char(int c)
{
    return isalnum(c) || c == '-' || c == '.' || c == '_';
}

int proxy_url_parse(const char *text, struct proxy_url *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    const char *p;
    if (strncmp(text, "socks5://", 9) == 0) {
        out->kind = PROXY_SOCKS5;
        p = text + 9;
    } else if (strncmp(text, "http://", 7) == 0) {
        out->kind = PROXY_HTTP;
        p = text + 7;
    } else {
        set_err(err, errlen, "must start with \"socks5://\" or \"http://\"");
        return -1;
    }
    size_t len = strlen(p);
    if (len > 0 && p[len - 1] == '/')
        len--;
    /* The last '@' ends the credentials: a password may contain '@', a host may not. */
    const char *at = NULL;
    for (size_t i = 0; i < len; i++)
        if (p[i] == '@')
            at = p + i;
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (colon == NULL || colon == p) {
            set_err(err, errlen, "credentials must be \"user:password@\"");
            return -1;
        }
        out->user = pct_decode(p, (size_t)(colon - p));
        out->password = pct_decode(colon + 1, (size_t)(at - colon - 1));
        if (out->user == NULL || out->password == NULL) {
            proxy_url_clear(out);
            set_err(err, errlen, "bad %-escape in the credentials (or out of memory)");
            return -1;
        }
        if (strlen(out->user) > PROXY_MAX_CRED || strlen(out->password) > PROXY_MAX_CRED ||
            out->password[0] == '\0') {
            proxy_url_clear(out);
            set_err(err, errlen, "user and password must be 1-255 bytes each");
            return -1;
        }
        /* HTTP Basic joins them with ':' (RFC 7617): the user name cannot hold one. */
        if (out->kind == PROXY_HTTP && strchr(out->user, ':') != NULL) {
            proxy_url_clear(out);
            set_err(err, errlen, "an HTTP proxy user name cannot contain ':'");
            return -1;
        }
        len -= (size_t)(at + 1 - p);
        p = at + 1;
    }
    const char *hs = p, *he, *rest;
    if (len > 0 && p[0] == '[') {
        const char *close = memchr(p, ']', len);
        if (close == NULL) {
            proxy_url_clear(out);
            set_err(err, errlen, "unterminated '[' in the proxy host");
            return -1;
        }
        hs = p + 1;
        he = close;
        rest = close + 1;
    } else {
        const char *colon = memchr(p, ':', len);
        he = colon ? colon : p + len;
        rest = he;
    }
    size_t hlen = (size_t)(he - hs);
    int ok = hlen > 0 && hlen <= PROXY_MAX_HOST;
    for (size_t i = 0; ok && i < hlen; i++)
        ok = valid_host_char((unsigned char)hs[i]) || (p[0] == '[' && hs[i] == ':');
    if (ok && p[0] == '[') {
        char tmp[64];
        unsigned char a6[16];
        ok = hlen < sizeof(tmp);
        if (ok) {
            memcpy(tmp, hs, hlen);
            tmp[hlen] = '\0';
            ok = inet_pton(AF_INET6, tmp, a6) == 1;
        }
    }
    if (!ok) {
        proxy_url_clear(out);
        set_err(err, errlen, "the proxy host must be a host name or an address literal");
        return -1;
    }
    size_t rlen = len - (size_t)(rest - p);
    unsigned long port = 0;
    int pok = rlen >= 2 && rest[0] == ':' && rlen <= 6;
    for (size_t i = 1; pok && i < rlen; i++) {
        pok = isdigit((unsigned char)rest[i]);
        port = port * 10 + (unsigned long)(rest[i] - '0');
    }
    if (!pok || port == 0 || port > 65535) {
        proxy_url_clear(out);
        set_err(err, errlen, "the proxy needs a port: \"host:port\" with port 1-65535");
        return -1;
    }
    out->port = (uint16_t)port;
    out->host = malloc(hlen + 1);
    if (out->host == NULL) {
        proxy_url_clear(out);
        set_err(err, errlen, "out of memory");
        return -1;
    }
    memcpy(out->host, hs, hlen);
    out->host[hlen] = '\0';
    return 0;
}

void proxy_url_clear(struct proxy_url *u)
{
    if (u->password) {
        volatile char *v = u->password;
        while (*v)
            *v++ = 0;
    }
    free(u->password);
    free(u->user);
    free(u->host);
    u->password = u->user = u->host = NULL;
}

char *proxy_url_redacted(const struct proxy_url *u)
{
    if (u->host == NULL)
        return strdup("none");
    int v6 = strchr(u->host, ':') != NULL;
    size_t n = strlen(u->host) + (u->user ? strlen(u->user) : 0) + 40;
    char *s = malloc(n);
    if (s == NULL)
        return NULL;
    snprintf(s, n, "%s://%s%s%s%s%s:%u", proxy_kind_name(u->kind), u->user ? u->user : "",
             u->user ? ":***@" : "", v6 ? "[" : "", u->host, v6 ? "]" : "", u->port);
    return s;
}

/* ---- handshakes ---------------------------------------------------------- */

static enum proxy_status fail(struct proxy_hs *h, enum proxy_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static enum proxy_status fail(struct proxy_hs *h, enum proxy_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(h->error, sizeof(h->error), fmt, ap);
    va_end(ap);
    h->step = P_FAILED;
    h->outlen = 0;
    h->result = st;
    return st;
}

static void socks5_connect_request(struct proxy_hs *h)
{
    unsigned char *o = h->out;
    unsigned char a[16];
    *o++ = 5;
    *o++ = 1; /* CONNECT */
    *o++ = 0;
    if (inet_pton(AF_INET, h->host, a) == 1) {
        *o++ = 1;
        memcpy(o, a, 4);
        o += 4;
    } else if (inet_pton(AF_INET6, h->host, a) == 1) {
        *o++ = 4;
        memcpy(o, a, 16);
        o += 16;
    } else {
        /* a name: the proxy resolves it, so no address of ours leaks into the choice */
        size_t n = strlen(h->host);
        *o++ = 3;
        *o++ = (unsigned char)n;
        memcpy(o, h->host, n);
        o += n;
    }
    *o++ = (unsigned char)(h->port >> 8);
    *o++ = (unsigned char)(h->port & 0xff);
    h->outlen = (size_t)(o - h->out);
    h->step = S5_HEAD;
    h->need = 4;
    h->inlen = 0;
}

int proxy_start(struct proxy_hs *h, enum proxy_kind kind, const char *host, uint16_t port,
                const char *user, const char *password)
{
    memset(h, 0, sizeof(*h));
    h->kind = kind;
    h->port = port;
    size_t hl = strlen(host);
    if (hl == 0 || hl > PROXY_MAX_HOST) {
        fail(h, PROXY_BAD, "relay host name is empty or longer than %d bytes", PROXY_MAX_HOST);
        return -1;
    }
    memcpy(h->host, host, hl + 1);
    if (kind == PROXY_SOCKS5) {
        if ((user == NULL) != (password == NULL) ||
            (user && (strlen(user) > PROXY_MAX_CRED || strlen(password) > PROXY_MAX_CRED ||
                      !*user || !*password))) {
            fail(h, PROXY_BAD, "SOCKS5 user and password must be 1-%d bytes each", PROXY_MAX_CRED);
            return -1;
        }
        h->user = user;
        h->password = password;
        h->out[0] = 5;
        if (user) {
            /* offer user/password only: a proxy that would take us without is misconfigured */
            h->out[1] = 1;
            h->out[2] = 2;
        } else {
            h->out[1] = 1;
            h->out[2] = 0;
        }
        h->outlen = 3;
        h->step = S5_METHOD;
        h->need = 2;
        return 0;
    }
    if (kind == PROXY_HTTP) {
        if ((user == NULL) != (password == NULL) ||
            (user && (strlen(user) > PROXY_MAX_CRED || strlen(password) > PROXY_MAX_CRED ||
                      !*user || !*password || strchr(user, ':') != NULL))) {
            fail(h, PROXY_BAD,
                 "HTTP proxy user and password must be 1-%d bytes each, the user "
                 "without ':'",
                 PROXY_MAX_CRED);
            return -1;
        }
        int v6 = strchr(host, ':') != NULL;
        int n = snprintf((char *)h->out, sizeof(h->out),
                         "CONNECT %s%s%s:%u HTTP/1.1\r\nHost: %s%s%s:%u\r\n", v6 ? "[" : "", host,
                         v6 ? "]" : "", port, v6 ? "[" : "", host, v6 ? "]" : "", port);
        if (n < 0 || (size_t)n >= sizeof(h->out)) {
            fail(h, PROXY_BAD, "relay host name too long for a CONNECT request");
            return -1;
        }
        size_t o = (size_t)n;
        if (user) {
            /* RFC 7617 Basic: base64("user:password"); the buffer is wiped with h. */
            char pair[2 * PROXY_MAX_CRED + 2];
            int pn = snprintf(pair, sizeof(pair), "%s:%s", user, password);
            static const char field[] = "Proxy-Authorization: Basic ";
            memcpy(h->out + o, field, sizeof(field) - 1);
            o += sizeof(field) - 1;
            /* Lengths were checked above: pn < sizeof(pair). */
            o += base64_encode((const unsigned char *)pair, (size_t)pn, (char *)h->out + o);
            explicit_bzero(pair, sizeof(pair));
            memcpy(h->out + o, "\r\n", 2);
            o += 2;
        }
        memcpy(h->out + o, "\r\n", 2);
        h->outlen = o + 2;
        h->step = H_STATUS;
        return 0;
    }
    fail(h, PROXY_BAD, "no proxy kind");
    return -1;
}

const unsigned char *proxy_output(const struct proxy_hs *h, size_t *len)
{
    *len = h->outlen;
    return h->out;
}

void proxy_sent(struct proxy_hs *h)
{
    h->outlen = 0;
}

const char *proxy_error(const struct proxy_hs *h)
{
    return h->error[0] ? h->error : "no error";
}

/* A fixed-size SOCKS5 message is complete in h->in: act on it. */
static enum proxy_status socks5_step(struct proxy_hs *h)
{
    const unsigned char *in = h->in;
    switch (h->step) {
    case S5_METHOD:
        if (in[0] != 5)
            return fail(h, PROXY_BAD, "SOCKS5 proxy: bad version %u in its method reply", in[0]);
        if (in[1] == 0xff)
            return fail(h, PROXY_REFUSED,
                        "SOCKS5 proxy refused: no acceptable authentication "
                        "method (does it need a user and password?)");
        if (in[1] == 0 && h->user == NULL) {
            socks5_connect_request(h);
            return PROXY_MORE;
        }
        if (in[1] == 2 && h->user != NULL) {
            size_t ul = strlen(h->user), pl = strlen(h->password);
            unsigned char *o = h->out;
            *o++ = 1;
            *o++ = (unsigned char)ul;
            memcpy(o, h->user, ul);
            o += ul;
            *o++ = (unsigned char)pl;
            memcpy(o, h->password, pl);
            o += pl;
            h->outlen = (size_t)(o - h->out);
            h->step = S5_AUTH;
            h->need = 2;
            h->inlen = 0;
            return PROXY_MORE;
        }
        return fail(h, PROXY_BAD, "SOCKS5 proxy chose method %u, which was not offered", in[1]);
    case S5_AUTH:
        if (in[0] != 1)
            return fail(h, PROXY_BAD, "SOCKS5 proxy: bad version %u in its authentication reply",
                        in[0]);
        if (in[1] != 0)
            return fail(h, PROXY_REFUSED,
                        "SOCKS5 proxy refused the user name and password (status %u)", in[1]);
        /* wipe the request that held the password */
        memset(h->out, 0, sizeof(h->out));
        socks5_connect_request(h);
        return PROXY_MORE;
    case S5_HEAD:
        if (in[0] != 5)
            return fail(h, PROXY_BAD, "SOCKS5 proxy: bad version %u in its reply", in[0]);
        h->status = in[1];
        if (in[1] != 0) {
            const char *why = in[1] < sizeof(socks5_replies) / sizeof(socks5_replies[0])
                                  ? socks5_replies[in[1]]
                                  : "unknown reply";
            return fail(h, PROXY_REFUSED, "SOCKS5 proxy refused: %s (%u)", why, in[1]);
        }
        if (in[2] != 0)
            return fail(h, PROXY_BAD, "SOCKS5 proxy: reserved byte is %u, not 0", in[2]);
        h->inlen = 0;
        if (in[3] == 1) {
            h->step = S5_ADDR;
            h->need = 4 + 2;
        } else if (in[3] == 4) {
            h->step = S5_ADDR;
            h->need = 16 + 2;
        } else if (in[3] == 3) {
            h->step = S5_ALEN;
            h->need = 1;
        } else {
            return fail(h, PROXY_BAD, "SOCKS5 proxy: unknown address type %u in its reply", in[3]);
        }
        return PROXY_MORE;
    case S5_ALEN:
        if (in[0] == 0)
            return fail(h, PROXY_BAD, "SOCKS5 proxy: empty bound name in its reply");
        h->step = S5_ADDR;
        h->need = (size_t)in[0] + 2;
        h->inlen = 0;
        return PROXY_MORE;
    case S5_ADDR:
        h->step = P_DONE;
        return PROXY_DONE;
    }
    return fail(h, PROXY_BAD, "internal: bad SOCKS5 step");
}

/* Printable copy of an HTTP reason phrase, shortened visibly. */
static void reason_copy(char *dst, size_t dlen, const unsigned char *s, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 4 < dlen; i++)
        dst[o++] = (s[i] >= 0x20 && s[i] < 0x7f) ? (char)s[i] : '?';
    if (o + 4 >= dlen && n > o)
        memcpy(dst + o, "...", 3), o += 3;
    dst[o] = '\0';
}

/* A complete HTTP line (without its line end) is in h->in[0..h->inlen). */
static enum proxy_status http_line(struct proxy_hs *h)
{
    const unsigned char *l = h->in;
    size_t n = h->inlen;
    for (size_t i = 0; i < n; i++)
        if ((l[i] < 0x20 && l[i] != '\t') || l[i] == 0x7f)
            return fail(h, PROXY_BAD, "HTTP proxy: control byte 0x%02x in its reply", l[i]);
    if (h->step == H_STATUS) {
        if (n < 12 || memcmp(l, "HTTP/1.", 7) != 0 || !isdigit(l[7]) || l[8] != ' ' ||
            !isdigit(l[9]) || !isdigit(l[10]) || !isdigit(l[11]) || (n > 12 && l[12] != ' '))
            return fail(h, PROXY_BAD, "HTTP proxy: malformed status line");
        h->status = (l[9] - '0') * 100 + (l[10] - '0') * 10 + (l[11] - '0');
        if (h->status < 100)
            return fail(h, PROXY_BAD, "HTTP proxy: malformed status %d", h->status);
        if (h->status < 200 || h->status > 299) {
            char reason[80];
            reason_copy(reason, sizeof(reason), l + (n > 13 ? 13 : n), n > 13 ? n - 13 : 0);
            return fail(h, PROXY_REFUSED, "HTTP proxy refused CONNECT: %d %s%s", h->status, reason,
                        h->status == 407 ? " (proxy credentials missing or wrong)" : "");
        }
        h->step = H_HEADERS;
        h->inlen = 0;
        return PROXY_MORE;
    }
    if (n == 0) {
        h->step = P_DONE;
        return PROXY_DONE;
    }
    h->inlen = 0; /* header fields of a 2xx CONNECT reply carry nothing we need */
    return PROXY_MORE;
}

enum proxy_status proxy_feed(struct proxy_hs *h, const void *data, size_t len, size_t *used)
{
    const unsigned char *d = data;
    size_t i = 0;
    enum proxy_status st = PROXY_MORE;
    *used = 0;
    if (h->step == P_FAILED)
        return h->result;
    if (h->step == P_DONE)
        return PROXY_DONE;
    while (i < len && st == PROXY_MORE) {
        if (h->kind == PROXY_SOCKS5) {
            size_t take = h->need - h->inlen;
            if (take > len - i)
                take = len - i;
            memcpy(h->in + h->inlen, d + i, take);
            h->inlen += take;
            i += take;
            if (h->inlen == h->need)
                st = socks5_step(h);
            continue;
        }
        /* HTTP: one byte at a time, so nothing past the blank line is consumed */
        unsigned char c = d[i++];
        if (++h->total > PROXY_MAX_HTTP_REPLY) {
            st = fail(h, PROXY_BAD, "HTTP proxy: reply head longer than %d bytes",
                      PROXY_MAX_HTTP_REPLY);
            break;
        }
        if (c == '\n') {
            if (h->inlen > 0 && h->in[h->inlen - 1] == '\r')
                h->inlen--;
            st = http_line(h);
            continue;
        }
        if (h->inlen + 1 >= sizeof(h->in)) {
            st = fail(h, PROXY_BAD, "HTTP proxy: reply line longer than %d bytes",
                      PROXY_MAX_HTTP_LINE - 2);
            break;
        }
        h->in[h->inlen++] = c;
    }
    *used = i;
    return st;
}
