/*
 * Client side of the proxy handshakes a relay's "tunnel" can go through:
 * SOCKS5 (RFC 1928) with optional user/password (RFC 1929), and HTTP
 * CONNECT (RFC 9110 section 9.3.6).  Pure and incremental: the caller
 * sends the bytes proxy_output() holds, feeds what the proxy answers, and
 * never loses a byte the far end sent after the proxy's reply.
 */
#ifndef MAILPOOL_PROXY_H
#define MAILPOOL_PROXY_H

#include <stddef.h>
#include <stdint.h>

enum proxy_kind { PROXY_NONE = 0, PROXY_SOCKS5, PROXY_HTTP };

/* Hard limits: anything longer is refused, never truncated. */
#define PROXY_MAX_HOST 255         /* a DNS name; SOCKS5 carries its length in one byte */
#define PROXY_MAX_CRED 255         /* RFC 1929 user name and password */
#define PROXY_MAX_HTTP_LINE 1024   /* one line of the HTTP reply */
#define PROXY_MAX_HTTP_REPLY 16384 /* the whole HTTP reply head */

/* A parsed proxy = "socks5://[user:pass@]host:port" or "http://host:port". */
struct proxy_url {
    enum proxy_kind kind;
    char *host; /* name or address literal, without brackets */
    uint16_t port;
    char *user;     /* NULL when absent; percent-decoded */
    char *password; /* NULL when absent; percent-decoded */
};

/*
 * Parse text into out (strings malloc'd; free with proxy_url_clear()).
 * Returns 0, or -1 with a message in err that never repeats the password.
 * Credentials are accepted only for socks5 (RFC 1929), a port is required,
 * and one trailing "/" is allowed.
 */
int proxy_url_parse(const char *text, struct proxy_url *out, char *err, size_t errlen);
void proxy_url_clear(struct proxy_url *u); /* wipes the password; NULL-safe fields */

/* The URL for display, with any password replaced by "***".  malloc'd; NULL on ENOMEM. */
char *proxy_url_redacted(const struct proxy_url *u);

enum proxy_status {
    PROXY_MORE,    /* send proxy_output() (if any), then feed more bytes */
    PROXY_DONE,    /* tunnel established: the next byte belongs to the far end */
    PROXY_REFUSED, /* the proxy answered, and said no; proxy_error() says why */
    PROXY_BAD,     /* the reply broke the protocol or a limit; proxy_error() says how */
};

struct proxy_hs {
    enum proxy_kind kind;
    int step;
    const char *user, *password; /* borrowed from the caller, who keeps them alive */
    char host[PROXY_MAX_HOST + 1];
    uint16_t port;
    /* The next request.  Sized for the largest one the limits allow. */
    /* CONNECT request: two host names, and Basic credentials in base64. */
    unsigned char out[2 * PROXY_MAX_HOST + 4 * ((2 * PROXY_MAX_CRED + 1 + 2) / 3) + 128];
    size_t outlen;
    /* The part of a reply read so far. */
    unsigned char in[PROXY_MAX_HTTP_LINE];
    size_t inlen, need;
    size_t total;             /* HTTP reply bytes so far */
    int status;               /* HTTP status, or the SOCKS5 REP byte */
    enum proxy_status result; /* once finished */
    char error[200];
};

/*
 * Start a handshake to reach host:port through a proxy of this kind; user
 * and password (SOCKS5 only, both or neither) must outlive h.  Returns 0
 * with the first request in proxy_output(), or -1 (error in h->error) when
 * a name or credential exceeds the limits.
 */
int proxy_start(struct proxy_hs *h, enum proxy_kind kind, const char *host, uint16_t port,
                const char *user, const char *password);

/* The bytes to send now (may be empty); proxy_sent() once they are queued. */
const unsigned char *proxy_output(const struct proxy_hs *h, size_t *len);
void proxy_sent(struct proxy_hs *h);

/*
 * Feed bytes from the proxy.  *used says how many were consumed; the rest
 * (only after PROXY_DONE) belong to the far end.  After PROXY_REFUSED or
 * PROXY_BAD the handshake is over and further calls return the same.
 */
enum proxy_status proxy_feed(struct proxy_hs *h, const void *data, size_t len, size_t *used);

/* Why the handshake failed, e.g. "SOCKS5 proxy refused: connection refused (5)". */
const char *proxy_error(const struct proxy_hs *h);

/* "socks5" / "http" / "none". */
const char *proxy_kind_name(enum proxy_kind k);

#endif
