/*
 * TLS client sessions on top of wolfSSL, kept behind tls.h so that no other
 * file sees a WOLFSSL pointer.  Certificate and host-name verification
 * (RFC 6125), SNI (RFC 6066), session resumption (RFC 5077 tickets, TLS 1.2
 * session IDs, RFC 8446 tickets) for STARTTLS (RFC 3207) and implicit TLS
 * (RFC 8314).
 */
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/ecc.h>
#include <wolfssl/error-ssl.h>
#include <wolfssl/wolfcrypt/error-crypt.h>
#include <wolfssl/wolfcrypt/coding.h>
#include <wolfssl/wolfcrypt/sha256.h>
#include <wolfssl/wolfcrypt/hmac.h>
#include <wolfssl/wolfcrypt/md5.h>
#include <wolfssl/wolfcrypt/pwdbased.h>
#include <wolfssl/wolfcrypt/sha.h>
#include <wolfssl/wolfcrypt/asn.h>

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "tls.h"

#define TLS_DEFAULT_BUNDLE "/etc/ssl/certs/ca-certificates.crt"

/*
 * Saved sessions per context.  A relay profile talks to a handful of hosts,
 * so a small table with least-recently-used eviction is enough.
 */
#define TLS_SESSION_SLOTS 16

/*
 * Without secure_fallback only forward-secret AEAD suites (and the SHA-2 CBC
 * ones some appliances still need) are offered: no RC4, MD5 or SHA-1 MACs.
 * wolfSSL skips names it was built without.
 *
 * The AEAD order depends on the wolfSSL build: with hardware AES (AES-NI,
 * ARMv8 crypto) AES-GCM comes first; without it (Debian's build) AES-GCM runs
 * from tables in software and ChaCha20-Poly1305 is several times faster, so
 * it is preferred, as TLS stacks do on CPUs without AES instructions.
 */
#if defined(WOLFSSL_AESNI) || defined(WOLFSSL_ARMASM)
#define TLS13_AEAD "TLS13-AES128-GCM-SHA256:TLS13-AES256-GCM-SHA384:TLS13-CHACHA20-POLY1305-SHA256:"
#define TLS12_AEAD                                                                                 \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                                   \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                                   \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
#else
#define TLS13_AEAD "TLS13-CHACHA20-POLY1305-SHA256:TLS13-AES128-GCM-SHA256:TLS13-AES256-GCM-SHA384:"
#define TLS12_AEAD                                                                                 \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"                                   \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                                   \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
#endif
static const char strong_ciphers[] = TLS13_AEAD TLS12_AEAD "DHE-RSA-AES128-GCM-SHA256:"
                                                           "DHE-RSA-AES256-GCM-SHA384:"
                                                           "DHE-RSA-CHACHA20-POLY1305:"
                                                           "ECDHE-ECDSA-AES128-SHA256:"
                                                           "ECDHE-RSA-AES128-SHA256:"
                                                           "ECDHE-ECDSA-AES256-SHA384:"
                                                           "ECDHE-RSA-AES256-SHA384:"
                                                           "AES128-GCM-SHA256:"
                                                           "AES256-GCM-SHA384";

struct tls_session_slot {
    char *key; /* session_key "\n" server_name; NULL when the slot is free */
    WOLFSSL_SESSION *sess;
    unsigned long long used;
};

struct tls_ctx {
    WOLFSSL_CTX *wctx;
    int verify;
    int minv;      /* oldest version allowed, WOLFSSL_TLSV* */
    unsigned refs; /* the owner plus every live tls_conn */
    unsigned long long clock;
    struct tls_session_slot slots[TLS_SESSION_SLOTS];
    unsigned char (*pins)[WC_SHA256_DIGEST_SIZE]; /* SHA-256 of accepted server keys */
    size_t npins;
};

struct tls_conn {
    WOLFSSL *ssl;
    struct tls_ctx *ctx;
    int fd;
    char *name;  /* expected host name; NULL when not verifying */
    char *key;   /* session table key; NULL: no resumption */
    int offered; /* a saved session was offered */
    int done;    /* handshake completed */
    int failed;  /* a fatal error happened: no close_notify */
    int new_ticket;
    int sys_errno; /* errno of the last failed send/recv */
    /* First verification failure seen by verify_cb. */
    int verr;
    int vdepth;
    int vself;
    char *vsubject;
    char *error;
};

static const char oom_error[] = "out of memory";

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (!err || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static void conn_error(struct tls_conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void conn_error(struct tls_conn *c, const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;

    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    if (c->error != oom_error)
        free(c->error);
    c->error = s ? s : (char *)oom_error;
}

int tls_init(char *err, size_t errlen)
{
    if (wolfSSL_Init() != WOLFSSL_SUCCESS) {
        set_err(err, errlen, "wolfSSL initialisation failed");
        return -1;
    }
    return 0;
}

void tls_shutdown(void)
{
    wolfSSL_Cleanup();
}

/* Returns the WOLFSSL_TLSV* constant, or -1 for an unknown word. */
static int parse_version(const char *v)
{
    if (strcmp(v, "1.0") == 0)
        return WOLFSSL_TLSV1;
    if (strcmp(v, "1.1") == 0)
        return WOLFSSL_TLSV1_1;
    if (strcmp(v, "1.2") == 0)
        return WOLFSSL_TLSV1_2;
    if (strcmp(v, "1.3") == 0)
        return WOLFSSL_TLSV1_3;
    return -1;
}

static int verify_cb(int ok, WOLFSSL_X509_STORE_CTX *store);

struct tls_ctx *tls_ctx_new(const struct tls_ctx_opts *opts, char *err, size_t errlen)
{
    struct tls_ctx *ctx;
    WOLFSSL_METHOD *method;
    int minv, ret;

    minv = opts->allow_legacy ? WOLFSSL_TLSV1 : WOLFSSL_TLSV1_2;
    if (opts->min_version && opts->min_version[0]) {
        minv = parse_version(opts->min_version);
        if (minv < 0) {
            set_err(err, errlen, "tls min_version \"%s\": expected 1.0, 1.1, 1.2 or 1.3",
                    opts->min_version);
            return NULL;
        }
        if (minv < WOLFSSL_TLSV1_2 && !opts->allow_legacy) {
            set_err(err, errlen, "tls min_version %s needs secure_fallback", opts->min_version);
            return NULL;
        }
    }

    ctx = calloc(1, sizeof(*ctx));
    if (!ctx) {
        set_err(err, errlen, "%s", oom_error);
        return NULL;
    }
    ctx->verify = opts->verify;
    ctx->refs = 1;
    method = wolfSSLv23_client_method();
    ctx->wctx = method ? wolfSSL_CTX_new(method) : NULL;
    if (!ctx->wctx) {
        set_err(err, errlen, "cannot create a TLS context");
        free(ctx);
        return NULL;
    }

    /*
     * This wolfSSL is built without TLS 1.0, so "1.0" (and the legacy
     * default) falls back to the oldest version it has, TLS 1.1.
     */
    if (wolfSSL_CTX_SetMinVersion(ctx->wctx, minv) != WOLFSSL_SUCCESS) {
        if (minv != WOLFSSL_TLSV1 ||
            wolfSSL_CTX_SetMinVersion(ctx->wctx, WOLFSSL_TLSV1_1) != WOLFSSL_SUCCESS) {
            set_err(err, errlen, "cannot set the minimum TLS version");
            goto fail;
        }
        minv = WOLFSSL_TLSV1_1;
    }
    ctx->minv = minv;

    /* The legacy list is wolfSSL's full default, which includes RC4 and SHA-1 suites. */
    if (!opts->allow_legacy &&
        wolfSSL_CTX_set_cipher_list(ctx->wctx, strong_ciphers) != WOLFSSL_SUCCESS) {
        set_err(err, errlen, "cannot set the TLS cipher list");
        goto fail;
    }

    if (opts->verify) {
        const char *file = opts->ca_file, *path = opts->ca_path;

        /* An explicit ca_file or ca_path replaces the system bundle. */
        if (!file && !path)
            file = TLS_DEFAULT_BUNDLE;
        if (file) {
            ret = wolfSSL_CTX_load_verify_locations(ctx->wctx, file, NULL);
            if (ret != WOLFSSL_SUCCESS) {
                set_err(err, errlen, "cannot load CA certificates from %s (error %d)", file, ret);
                goto fail;
            }
        }
        if (path) {
            /* A hashed directory also holds non-certificate files: skip them. */
            ret = wolfSSL_CTX_load_verify_locations_ex(ctx->wctx, NULL, path,
                                                       WOLFSSL_LOAD_FLAG_IGNORE_ERR);
            if (ret != WOLFSSL_SUCCESS) {
                set_err(err, errlen, "cannot load CA certificates from %s (error %d)", path, ret);
                goto fail;
            }
        }
        wolfSSL_CTX_set_verify(ctx->wctx, WOLFSSL_VERIFY_PEER, verify_cb);
    } else {
        wolfSSL_CTX_set_verify(ctx->wctx, WOLFSSL_VERIFY_NONE, NULL);
    }

    /* Ask for TLS 1.2 tickets too (TLS 1.3 ones come anyway). */
    wolfSSL_CTX_UseSessionTicket(ctx->wctx);
    return ctx;

fail:
    wolfSSL_CTX_free(ctx->wctx);
    free(ctx);
    return NULL;
}

static void ctx_unref(struct tls_ctx *ctx)
{
    int i;

    if (--ctx->refs > 0)
        return;
    for (i = 0; i < TLS_SESSION_SLOTS; i++) {
        free(ctx->slots[i].key);
        if (ctx->slots[i].sess)
            wolfSSL_SESSION_free(ctx->slots[i].sess);
    }
    free(ctx->pins);
    wolfSSL_CTX_free(ctx->wctx);
    free(ctx);
}

/* Connections still open keep the context alive until they are freed. */
void tls_ctx_free(struct tls_ctx *ctx)
{
    if (ctx)
        ctx_unref(ctx);
}

int tls_ctx_set_ciphers(struct tls_ctx *ctx, const char *list, char *err, size_t errlen)
{
    if (wolfSSL_CTX_set_cipher_list(ctx->wctx, list) != WOLFSSL_SUCCESS) {
        set_err(err, errlen, "tls ciphers \"%s\": no usable cipher suite", list);
        return -1;
    }
    return 0;
}

int tls_ctx_set_client_cert(struct tls_ctx *ctx, const char *cert_file, const char *key_file,
                            char *err, size_t errlen)
{
    if (wolfSSL_CTX_use_certificate_chain_file(ctx->wctx, cert_file) != WOLFSSL_SUCCESS) {
        set_err(err, errlen, "cannot load the client certificate %s", cert_file);
        return -1;
    }
    if (wolfSSL_CTX_use_PrivateKey_file(ctx->wctx, key_file, WOLFSSL_FILETYPE_PEM) !=
        WOLFSSL_SUCCESS) {
        set_err(err, errlen, "cannot load the client key %s", key_file);
        return -1;
    }
    if (wolfSSL_CTX_check_private_key(ctx->wctx) != WOLFSSL_SUCCESS) {
        set_err(err, errlen, "client key %s does not match %s", key_file, cert_file);
        return -1;
    }
    return 0;
}

int tls_ctx_add_pin(struct tls_ctx *ctx, const char *pin_b64, char *err, size_t errlen)
{
    unsigned char buf[64];
    word32 len = sizeof(buf);
    void *grown;

    if (Base64_Decode((const byte *)pin_b64, (word32)strlen(pin_b64), buf, &len) != 0 ||
        len != WC_SHA256_DIGEST_SIZE) {
        set_err(err, errlen, "tls pin_sha256 \"%s\": not a base64 SHA-256 digest", pin_b64);
        return -1;
    }
    grown = realloc(ctx->pins, (ctx->npins + 1) * sizeof(*ctx->pins));
    if (!grown) {
        set_err(err, errlen, "%s", oom_error);
        return -1;
    }
    ctx->pins = grown;
    memcpy(ctx->pins[ctx->npins++], buf, WC_SHA256_DIGEST_SIZE);
    return 0;
}

/* SHA-256 of the DER SubjectPublicKeyInfo of x.  Returns 0, or -1. */
static int key_digest(WOLFSSL_X509 *x, unsigned char digest[WC_SHA256_DIGEST_SIZE])
{
    unsigned char *der = NULL;
    int len = 0, ok;

    /* The first call sizes the buffer; the bytes are the whole SubjectPublicKeyInfo. */
    ok = wolfSSL_X509_get_pubkey_buffer(x, NULL, &len) == WOLFSSL_SUCCESS && len > 0 &&
         (der = malloc((size_t)len)) != NULL &&
         wolfSSL_X509_get_pubkey_buffer(x, der, &len) == WOLFSSL_SUCCESS &&
         wc_Sha256Hash(der, (word32)len, digest) == 0;
    free(der);
    return ok ? 0 : -1;
}

/*
 * RFC 7469 style pin: SHA-256 over the DER SubjectPublicKeyInfo of the
 * server certificate.  Returns 0 when it matches one of the pins.
 */
static int pin_check(struct tls_conn *c)
{
    unsigned char digest[WC_SHA256_DIGEST_SIZE];
    char b64[64];
    word32 b64len = sizeof(b64) - 1;
    WOLFSSL_X509 *x;
    int ok;
    size_t i;

    x = wolfSSL_get_peer_certificate(c->ssl);
    if (!x) {
        conn_error(c, "certificate pin check: the server sent no certificate");
        return -1;
    }
    ok = key_digest(x, digest) == 0;
    wolfSSL_X509_free(x);
    if (!ok) {
        conn_error(c, "certificate pin check: cannot read the server key");
        return -1;
    }
    for (i = 0; i < c->ctx->npins; i++)
        if (memcmp(c->ctx->pins[i], digest, sizeof(digest)) == 0)
            return 0;
    if (Base64_Encode_NoNl(digest, sizeof(digest), (byte *)b64, &b64len) != 0)
        b64len = 0;
    b64[b64len] = '\0';
    conn_error(c, "certificate pin mismatch: server key sha256 %s is not pinned", b64);
    return -1;
}

static struct tls_session_slot *slot_find(struct tls_ctx *ctx, const char *key)
{
    int i;

    for (i = 0; i < TLS_SESSION_SLOTS; i++)
        if (ctx->slots[i].key && strcmp(ctx->slots[i].key, key) == 0)
            return &ctx->slots[i];
    return NULL;
}

static void slot_clear(struct tls_session_slot *s)
{
    free(s->key);
    if (s->sess)
        wolfSSL_SESSION_free(s->sess);
    s->key = NULL;
    s->sess = NULL;
}

/* Remember the connection's session (with its newest ticket) for the next one. */
static void session_save(struct tls_conn *c)
{
    struct tls_ctx *ctx = c->ctx;
    struct tls_session_slot *s;
    WOLFSSL_SESSION *sess;
    int i;

    if (!c->key || !c->done || c->failed)
        return;
    sess = wolfSSL_get1_session(c->ssl);
    if (!sess)
        return;
    if (!wolfSSL_SESSION_is_resumable(sess)) {
        wolfSSL_SESSION_free(sess);
        return;
    }
    s = slot_find(ctx, c->key);
    if (!s) {
        s = &ctx->slots[0];
        for (i = 0; i < TLS_SESSION_SLOTS; i++) {
            if (!ctx->slots[i].key) {
                s = &ctx->slots[i];
                break;
            }
            if (ctx->slots[i].used < s->used)
                s = &ctx->slots[i];
        }
        slot_clear(s);
        s->key = strdup(c->key);
        if (!s->key) {
            wolfSSL_SESSION_free(sess);
            return;
        }
    }
    if (s->sess)
        wolfSSL_SESSION_free(s->sess);
    s->sess = sess;
    s->used = ++ctx->clock;
}

static void session_forget(struct tls_conn *c)
{
    struct tls_session_slot *s;

    if (c->key && (s = slot_find(c->ctx, c->key)) != NULL)
        slot_clear(s);
}

static int ticket_cb(WOLFSSL *ssl, const unsigned char *ticket, int len, void *arg)
{
    struct tls_conn *c = arg;

    /* The session is not complete yet inside the callback: save it afterwards. */
    c->new_ticket = 1;
    return 0;
}

/*
 * Own socket callbacks: MSG_NOSIGNAL so a closed peer cannot raise SIGPIPE,
 * and errno kept for the error message.
 */
static int io_recv(WOLFSSL *ssl, char *buf, int sz, void *arg)
{
    struct tls_conn *c = arg;
    ssize_t n;

    for (;;) {
        n = recv(c->fd, buf, (size_t)sz, 0);
        if (n > 0)
            return (int)n;
        if (n == 0)
            return WOLFSSL_CBIO_ERR_CONN_CLOSE;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return WOLFSSL_CBIO_ERR_WANT_READ;
        c->sys_errno = errno;
        if (errno == ECONNRESET)
            return WOLFSSL_CBIO_ERR_CONN_RST;
        return WOLFSSL_CBIO_ERR_GENERAL;
    }
}

static int io_send(WOLFSSL *ssl, char *buf, int sz, void *arg)
{
    struct tls_conn *c = arg;
    ssize_t n;

    for (;;) {
        n = send(c->fd, buf, (size_t)sz, MSG_NOSIGNAL);
        if (n >= 0)
            return (int)n;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return WOLFSSL_CBIO_ERR_WANT_WRITE;
        c->sys_errno = errno;
        if (errno == ECONNRESET)
            return WOLFSSL_CBIO_ERR_CONN_RST;
        if (errno == EPIPE)
            return WOLFSSL_CBIO_ERR_CONN_CLOSE;
        return WOLFSSL_CBIO_ERR_GENERAL;
    }
}

static int is_ip_literal(const char *name)
{
    unsigned char addr[sizeof(struct in6_addr)];

    return inet_pton(AF_INET, name, addr) == 1 || inet_pton(AF_INET6, name, addr) == 1;
}

/*
 * The name wolfSSL must compare with the certificate.  It matches IP-address
 * subjectAltNames by their text form, which for IPv6 is eight groups of four
 * upper-case hex digits ("0000:...:0001"), so an IPv6 literal is rewritten to
 * that form; anything else is used as given.  Returns a malloc'd string.
 */
static char *match_name(const char *name)
{
    unsigned char a[sizeof(struct in6_addr)];
    char *out, *p;
    int i;

    if (inet_pton(AF_INET6, name, a) != 1)
        return strdup(name);
    out = malloc(8 * 5 + 1);
    if (!out)
        return NULL;
    for (i = 0, p = out; i < 16; i += 2, p += 5)
        snprintf(p, 6, "%02X%02X%s", a[i], a[i + 1], i < 14 ? ":" : "");
    return out;
}

struct tls_conn *tls_conn_new(struct tls_ctx *ctx, int fd, const char *server_name,
                              const char *session_key, char *err, size_t errlen)
{
    struct tls_conn *c;
    struct tls_session_slot *s;

    if (ctx->verify && (!server_name || !server_name[0])) {
        set_err(err, errlen, "TLS: no server name to verify the certificate against");
        return NULL;
    }
    c = calloc(1, sizeof(*c));
    if (!c) {
        set_err(err, errlen, "%s", oom_error);
        return NULL;
    }
    c->fd = fd;
    c->ctx = ctx;
    ctx->refs++;
    c->ssl = wolfSSL_new(ctx->wctx);
    if (!c->ssl) {
        set_err(err, errlen, "cannot create a TLS session");
        goto fail;
    }
    wolfSSL_SSLSetIORecv(c->ssl, io_recv);
    wolfSSL_SSLSetIOSend(c->ssl, io_send);
    wolfSSL_SetIOReadCtx(c->ssl, c);
    wolfSSL_SetIOWriteCtx(c->ssl, c);
    if (wolfSSL_set_fd(c->ssl, fd) != WOLFSSL_SUCCESS) {
        set_err(err, errlen, "cannot attach the TLS session to the socket");
        goto fail;
    }
    /* set_fd installs the default I/O context; ours must win. */
    wolfSSL_SetIOReadCtx(c->ssl, c);
    wolfSSL_SetIOWriteCtx(c->ssl, c);
    wolfSSL_SetCertCbCtx(c->ssl, c);
    wolfSSL_set_SessionTicket_cb(c->ssl, ticket_cb, c);

    if (server_name && server_name[0]) {
        /* RFC 6066 section 3: literal IP addresses are not sent as SNI. */
        if (!is_ip_literal(server_name) &&
            wolfSSL_UseSNI(c->ssl, WOLFSSL_SNI_HOST_NAME, server_name,
                           (unsigned short)strlen(server_name)) != WOLFSSL_SUCCESS) {
            set_err(err, errlen, "cannot set SNI \"%s\"", server_name);
            goto fail;
        }
        if (ctx->verify) {
            /*
             * wolfSSL matches this against the DNS names of subjectAltName
             * (wildcards included), then the CN when there are none; it also
             * compares the text form of IP-address entries, so "127.0.0.1"
             * matches IP:127.0.0.1 (and, through match_name(), "::1" IP:::1).
             * The comparison is by text whatever the entry type, so a DNS
             * entry spelled like the address would match too; public CAs
             * do not issue such names.
             */
            char *m = match_name(server_name);

            if (!m || wolfSSL_check_domain_name(c->ssl, m) != WOLFSSL_SUCCESS) {
                free(m);
                set_err(err, errlen, "cannot set the expected host name");
                goto fail;
            }
            free(m);
            c->name = strdup(server_name);
            if (!c->name) {
                set_err(err, errlen, "%s", oom_error);
                goto fail;
            }
        }
    }

    if (session_key && session_key[0]) {
        /* A session verified for one name must not be resumed for another. */
        if (asprintf(&c->key, "%s\n%s", session_key, server_name ? server_name : "") < 0) {
            c->key = NULL;
            set_err(err, errlen, "%s", oom_error);
            goto fail;
        }
        s = slot_find(ctx, c->key);
        if (s && s->sess && wolfSSL_set_session(c->ssl, s->sess) == WOLFSSL_SUCCESS) {
            c->offered = 1;
            s->used = ++ctx->clock;
        }
    }
    return c;

fail:
    if (c->ssl)
        wolfSSL_free(c->ssl);
    free(c->name);
    free(c->key);
    ctx_unref(ctx);
    free(c);
    return NULL;
}

/*
 * wolfSSL built with FP_ECC (as Debian's is) keeps a lookup table of about
 * 0.9 MB for every point it multiplies, up to its cache size; each
 * handshake's ephemeral key adds one, so a daemon with a few sessions grew
 * by megabytes for tables it never uses again.  Pooled sessions rarely
 * handshake, so the cache is released after each one.
 */
static void release_ecc_cache(void)
{
#if defined(HAVE_ECC) && defined(FP_ECC)
    wc_ecc_fp_free();
#endif
}

void tls_conn_free(struct tls_conn *c)
{
    if (!c)
        return;
    if (!c->done)
        release_ecc_cache(); /* a failed handshake may have filled it too */
    if (c->done && !c->failed) {
        session_save(c);
        /* One try: on a non-blocking socket this never waits for the reply. */
        wolfSSL_shutdown(c->ssl);
    }
    wolfSSL_free(c->ssl);
    free(c->name);
    free(c->key);
    free(c->vsubject);
    if (c->error != oom_error)
        free(c->error);
    ctx_unref(c->ctx);
    free(c);
}

static int verify_cb(int ok, WOLFSSL_X509_STORE_CTX *store)
{
    struct tls_conn *c = store->userCtx;
    WOLFSSL_X509 *x;
    WOLFSSL_X509_NAME *subj, *iss;
    char *line;

    if (ok || !c || c->verr)
        return ok;
    c->verr = wolfSSL_X509_STORE_CTX_get_error(store);
    if (c->verr == 0)
        c->verr = -1;
    c->vdepth = wolfSSL_X509_STORE_CTX_get_error_depth(store);
    x = wolfSSL_X509_STORE_CTX_get_current_cert(store);
    if (x) {
        subj = wolfSSL_X509_get_subject_name(x);
        iss = wolfSSL_X509_get_issuer_name(x);
        if (subj && iss && wolfSSL_X509_NAME_cmp(subj, iss) == 0)
            c->vself = 1;
        line = subj ? wolfSSL_X509_NAME_oneline(subj, NULL, 0) : NULL;
        if (line) {
            free(c->vsubject);
            c->vsubject = strdup(line);
            XFREE(line, NULL, DYNAMIC_TYPE_OPENSSL);
        }
    }
    return ok;
}

/*
 * wolfSSL reports verification problems either as its own negative codes or,
 * through the OpenSSL layer, as X509_V_ERR numbers: name both.
 */
static const char *verify_reason(const struct tls_conn *c, int code)
{
    switch (code) {
    case ASN_AFTER_DATE_E:
    case X509_V_ERR_CERT_HAS_EXPIRED:
        return "certificate has expired";
    case ASN_BEFORE_DATE_E:
    case X509_V_ERR_CERT_NOT_YET_VALID:
        return "certificate is not yet valid";
    case ASN_SELF_SIGNED_E:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
        return "self-signed certificate not trusted";
    case ASN_NO_SIGNER_E:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
        return c->vself ? "self-signed certificate not trusted"
                        : "issuer unknown (certificate not signed by a trusted CA)";
    case DOMAIN_NAME_MISMATCH:
    case IPADDR_MISMATCH:
        return "host name mismatch";
    case ASN_SIG_CONFIRM_E:
    case X509_V_ERR_CERT_SIGNATURE_FAILURE:
        return "bad certificate signature";
    case CRL_CERT_REVOKED:
    case X509_V_ERR_CERT_REVOKED:
        return "certificate revoked";
    case EXTKEYUSAGE_E:
    case KEYUSAGE_E:
        return "certificate not usable for a TLS server";
    case ASN_SIG_KEY_E:
    case ASN_SIG_OID_E:
        return "unsupported certificate signature";
    default:
        return NULL;
    }
}

static int is_verify_error(int code)
{
    switch (code) {
    case ASN_AFTER_DATE_E:
    case ASN_BEFORE_DATE_E:
    case ASN_SELF_SIGNED_E:
    case ASN_NO_SIGNER_E:
    case ASN_SIG_CONFIRM_E:
    case ASN_SIG_KEY_E:
    case ASN_SIG_OID_E:
    case ASN_PATHLEN_SIZE_E:
    case ASN_PATHLEN_INV_E:
    case DOMAIN_NAME_MISMATCH:
    case IPADDR_MISMATCH:
    case VERIFY_CERT_ERROR:
    case CRL_CERT_REVOKED:
    case EXTKEYUSAGE_E:
    case KEYUSAGE_E:
    case NO_PEER_CERT:
        return 1;
    default:
        return 0;
    }
}

static const char *version_name(int v)
{
    switch (v) {
    case WOLFSSL_TLSV1:
        return "TLSv1.0";
    case WOLFSSL_TLSV1_1:
        return "TLSv1.1";
    case WOLFSSL_TLSV1_2:
        return "TLSv1.2";
    default:
        return "TLSv1.3";
    }
}

/* Turn wolfSSL's error code into a sentence for the operator. */
static void fail_reason(struct tls_conn *c, int code)
{
    WOLFSSL_ALERT_HISTORY h;
    char buf[WOLFSSL_MAX_ERROR_SZ];
    const char *why;

    c->failed = 1;
    if (c->verr || is_verify_error(code)) {
        why = verify_reason(c, c->verr ? c->verr : code);
        if (!why)
            why = verify_reason(c, code);
        if (!why) {
            wolfSSL_ERR_error_string_n((unsigned long)(c->verr ? c->verr : code), buf, sizeof(buf));
            why = buf;
        }
        if ((code == DOMAIN_NAME_MISMATCH || code == IPADDR_MISMATCH ||
             c->verr == DOMAIN_NAME_MISMATCH || c->verr == IPADDR_MISMATCH) &&
            c->name)
            conn_error(c, "certificate verify failed: %s (expected \"%s\", certificate is %s)", why,
                       c->name, c->vsubject ? c->vsubject : "for another name");
        else if (c->vsubject)
            conn_error(c, "certificate verify failed: %s (depth %d: %s)", why, c->vdepth,
                       c->vsubject);
        else
            conn_error(c, "certificate verify failed: %s", why);
        return;
    }
    switch (code) {
    case FATAL_ERROR:
        if (wolfSSL_get_alert_history(c->ssl, &h) == WOLFSSL_SUCCESS && h.last_rx.code >= 0) {
            if (h.last_rx.code == protocol_version)
                conn_error(c,
                           "server refused the protocol version (alert protocol_version; "
                           "oldest allowed here: %s)",
                           version_name(c->ctx->minv));
            else
                conn_error(c, "server sent alert: %s",
                           wolfSSL_alert_desc_string_long(h.last_rx.code));
            return;
        }
        conn_error(c, "server sent a fatal alert");
        return;
    case VERSION_ERROR:
    case UNSUPPORTED_PROTO_VERSION:
        conn_error(c, "no common protocol version (oldest allowed: %s)",
                   version_name(c->ctx->minv));
        return;
    case MATCH_SUITE_ERROR:
        conn_error(c, "no cipher suite in common with the server");
        return;
    case SOCKET_PEER_CLOSED_E:
        conn_error(c, "connection closed by the server");
        return;
    case SOCKET_ERROR_E:
        if (c->sys_errno) {
            conn_error(c, "%s", strerror(c->sys_errno));
            return;
        }
        break;
    default:
        break;
    }
    wolfSSL_ERR_error_string_n((unsigned long)code, buf, sizeof(buf));
    conn_error(c, "%s (wolfSSL error %d)", buf, code);
}

/* Map a wolfSSL return to the enum, recording the reason on failure. */
static enum tls_result map_result(struct tls_conn *c, int ret)
{
    int code = wolfSSL_get_error(c->ssl, ret);

    switch (code) {
    case WOLFSSL_ERROR_WANT_READ:
        return TLS_WANT_READ;
    case WOLFSSL_ERROR_WANT_WRITE:
        return TLS_WANT_WRITE;
    case WOLFSSL_ERROR_ZERO_RETURN:
        return TLS_EOF;
    default:
        break;
    }
    if (c->done && code == SOCKET_PEER_CLOSED_E) {
        /* A close without close_notify: SMTP has its own end markers, so report EOF. */
        return TLS_EOF;
    }
    fail_reason(c, code);
    return TLS_FAIL;
}

enum tls_result tls_conn_handshake(struct tls_conn *c)
{
    int ret;

    if (c->done)
        return TLS_OK;
    if (c->failed)
        return TLS_FAIL;
    ret = wolfSSL_connect(c->ssl);
    if (ret == WOLFSSL_SUCCESS) {
        /*
         * Checked after the handshake, so it also applies without CA
         * verification; a resumed session was pinned when it was new.
         */
        if (c->ctx->npins && !wolfSSL_session_reused(c->ssl) && pin_check(c) < 0) {
            c->failed = 1;
            if (c->offered)
                session_forget(c);
            return TLS_FAIL;
        }
        c->done = 1;
        session_save(c);
        release_ecc_cache();
        return TLS_OK;
    }
    ret = map_result(c, ret);
    if (ret == TLS_EOF) {
        conn_error(c, "connection closed by the server during the handshake");
        c->failed = 1;
        ret = TLS_FAIL;
    }
    if (ret == TLS_FAIL && c->offered)
        session_forget(c);
    return ret;
}

enum tls_result tls_conn_read(struct tls_conn *c, void *buf, size_t len, size_t *nread)
{
    enum tls_result r;
    int ret;

    *nread = 0;
    if (c->failed)
        return TLS_FAIL;
    if (len > 0x7fffffff)
        len = 0x7fffffff;
    ret = wolfSSL_read(c->ssl, buf, (int)len);
    if (c->new_ticket) {
        c->new_ticket = 0;
        session_save(c);
    }
    if (ret > 0) {
        *nread = (size_t)ret;
        return TLS_OK;
    }
    r = map_result(c, ret);
    return r;
}

enum tls_result tls_conn_write(struct tls_conn *c, const void *buf, size_t len, size_t *nwritten)
{
    int ret;

    *nwritten = 0;
    if (c->failed)
        return TLS_FAIL;
    if (len == 0)
        return TLS_OK;
    if (len > 0x7fffffff)
        len = 0x7fffffff;
    ret = wolfSSL_write(c->ssl, buf, (int)len);
    if (ret > 0) {
        *nwritten = (size_t)ret;
        return TLS_OK;
    }
    return map_result(c, ret);
}

int tls_conn_pending(struct tls_conn *c)
{
    return wolfSSL_pending(c->ssl) > 0;
}

const char *tls_conn_error(const struct tls_conn *c)
{
    return c->error ? c->error : "no error";
}

const char *tls_conn_version(const struct tls_conn *c)
{
    return c->done ? wolfSSL_get_version(c->ssl) : NULL;
}

const char *tls_conn_cipher(const struct tls_conn *c)
{
    WOLFSSL_CIPHER *ci;

    if (!c->done)
        return NULL;
    ci = wolfSSL_get_current_cipher(c->ssl);
    return ci ? wolfSSL_CIPHER_get_name(ci) : NULL;
}

int tls_conn_resumed(const struct tls_conn *c)
{
    return c->done && wolfSSL_session_reused(c->ssl);
}

/* ---- the peer certificate, for reports ------------------------------------ */

static char *name_text(WOLFSSL_X509_NAME *n)
{
    char *w = n ? wolfSSL_X509_NAME_oneline(n, NULL, 0) : NULL;
    char *s = w ? strdup(w) : NULL;

    XFREE(w, NULL, DYNAMIC_TYPE_OPENSSL);
    return s;
}

static char *time_text(const WOLFSSL_ASN1_TIME *t)
{
    struct tm tm;
    char buf[32];

    memset(&tm, 0, sizeof(tm));
    if (!t || wolfSSL_ASN1_TIME_to_tm(t, &tm) != WOLFSSL_SUCCESS)
        return strdup("?");
    if (strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        return strdup("?");
    return strdup(buf);
}

/* One subjectAltName entry as "TYPE:value"; NULL when out of memory. */
static char *san_text(WOLFSSL_GENERAL_NAME *g)
{
    const char *tag;
    WOLFSSL_ASN1_STRING *str;
    char *out = NULL;
    int len;

    switch (g->type) {
    case ASN_DNS_TYPE:
        tag = "DNS";
        break;
    case ASN_RFC822_TYPE:
        tag = "email";
        break;
    case ASN_URI_TYPE:
        tag = "URI";
        break;
    case ASN_IP_TYPE: {
        char ip[INET6_ADDRSTRLEN] = "?";
        const unsigned char *b;

        str = g->d.iPAddress;
        len = str ? wolfSSL_ASN1_STRING_length(str) : 0;
        b = str ? wolfSSL_ASN1_STRING_get0_data(str) : NULL;
        if (b && len == 4)
            inet_ntop(AF_INET, b, ip, sizeof(ip));
        else if (b && len == 16)
            inet_ntop(AF_INET6, b, ip, sizeof(ip));
        return asprintf(&out, "IP:%s", ip) < 0 ? NULL : out;
    }
    default:
        return asprintf(&out, "type%d:?", g->type) < 0 ? NULL : out;
    }
    str = g->d.ia5;
    len = str ? wolfSSL_ASN1_STRING_length(str) : 0;
    if (asprintf(&out, "%s:%.*s", tag, len > 0 ? len : 0,
                 len > 0 ? (const char *)wolfSSL_ASN1_STRING_get0_data(str) : "") < 0)
        return NULL;
    /* Shown to operators and put into JSON: no control bytes. */
    for (char *p = out; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p == 0x7f)
            *p = '?';
    return out;
}

static int peer_sans(WOLFSSL_X509 *x, struct tls_peer_info *info)
{
    WOLFSSL_STACK *sk = wolfSSL_X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    int n, i, rc = 0;

    if (!sk)
        return 0; /* no subjectAltName */
    n = wolfSSL_sk_GENERAL_NAME_num(sk);
    if (n > 0 && (info->san = calloc((size_t)n, sizeof(*info->san))) == NULL)
        rc = -1;
    /* wolfSSL's stack holds the entries last first: list them in certificate order. */
    for (i = n - 1; rc == 0 && i >= 0; i--) {
        WOLFSSL_GENERAL_NAME *g = wolfSSL_sk_GENERAL_NAME_value(sk, i);

        if (!g)
            continue;
        if ((info->san[info->nsan] = san_text(g)) == NULL)
            rc = -1;
        else
            info->nsan++;
    }
    wolfSSL_GENERAL_NAMES_free(sk);
    return rc;
}

int tls_conn_peer_info(const struct tls_conn *c, struct tls_peer_info *info)
{
    unsigned char digest[WC_SHA256_DIGEST_SIZE];
    char b64[64];
    word32 b64len = sizeof(b64) - 1;
    WOLFSSL_X509 *x;
    int rc = 0;

    memset(info, 0, sizeof(*info));
    if (!c->done || wolfSSL_session_reused(c->ssl))
        return -1;
    x = wolfSSL_get_peer_certificate(c->ssl);
    if (!x)
        return -1;
    info->subject = name_text(wolfSSL_X509_get_subject_name(x));
    info->issuer = name_text(wolfSSL_X509_get_issuer_name(x));
    info->not_before = time_text(wolfSSL_X509_get_notBefore(x));
    info->not_after = time_text(wolfSSL_X509_get_notAfter(x));
    if (key_digest(x, digest) == 0 &&
        Base64_Encode_NoNl(digest, sizeof(digest), (byte *)b64, &b64len) == 0) {
        b64[b64len] = '\0';
        info->pin_sha256 = strdup(b64);
    }
    if (peer_sans(x, info) < 0 || !info->subject || !info->issuer || !info->not_before ||
        !info->not_after || !info->pin_sha256)
        rc = -1;
    wolfSSL_X509_free(x);
    return rc;
}

void tls_peer_info_clear(struct tls_peer_info *info)
{
    size_t i;

    free(info->subject);
    free(info->issuer);
    for (i = 0; i < info->nsan; i++)
        free(info->san[i]);
    free(info->san);
    free(info->not_before);
    free(info->not_after);
    free(info->pin_sha256);
    memset(info, 0, sizeof(*info));
}

/* ---- hashes for SASL ----------------------------------------------------- */

static int wc_type(enum tls_digest alg)
{
    switch (alg) {
    case TLS_DIGEST_MD5:
        return WC_MD5;
    case TLS_DIGEST_SHA1:
        return WC_SHA;
    case TLS_DIGEST_SHA256:
        return WC_SHA256;
    }
    return WC_SHA256;
}

size_t tls_digest_len(enum tls_digest alg)
{
    switch (alg) {
    case TLS_DIGEST_MD5:
        return WC_MD5_DIGEST_SIZE;
    case TLS_DIGEST_SHA1:
        return WC_SHA_DIGEST_SIZE;
    case TLS_DIGEST_SHA256:
        return WC_SHA256_DIGEST_SIZE;
    }
    return 0;
}

int tls_hash(enum tls_digest alg, const void *msg, size_t len, unsigned char *out)
{
    if (len > UINT32_MAX)
        return -1;
    int rc;
    switch (alg) {
    case TLS_DIGEST_MD5:
        rc = wc_Md5Hash(msg, (word32)len, out);
        break;
    case TLS_DIGEST_SHA1:
        rc = wc_ShaHash(msg, (word32)len, out);
        break;
    default:
        rc = wc_Sha256Hash(msg, (word32)len, out);
        break;
    }
    return rc == 0 ? 0 : -1;
}

int tls_hmac(enum tls_digest alg, const void *key, size_t keylen, const void *msg, size_t len,
             unsigned char *out)
{
    Hmac h;
    if (keylen > UINT32_MAX || len > UINT32_MAX || wc_HmacInit(&h, NULL, INVALID_DEVID) != 0)
        return -1;
    int rc = wc_HmacSetKey(&h, wc_type(alg), key, (word32)keylen);
    if (rc == 0)
        rc = wc_HmacUpdate(&h, msg, (word32)len);
    if (rc == 0)
        rc = wc_HmacFinal(&h, out);
    wc_HmacFree(&h);
    /* The keyed pads are derived from the password: do not leave them on the stack. */
    explicit_bzero(&h, sizeof(h));
    return rc == 0 ? 0 : -1;
}

int tls_pbkdf2_hmac(enum tls_digest alg, const void *pass, size_t passlen, const void *salt,
                    size_t saltlen, unsigned iterations, unsigned char *out, size_t outlen)
{
    if (alg == TLS_DIGEST_MD5 || iterations == 0 || iterations > INT_MAX || passlen > INT_MAX ||
        saltlen > INT_MAX || outlen > INT_MAX)
        return -1;
    int rc = wc_PBKDF2(out, pass, (int)passlen, salt, (int)saltlen, (int)iterations, (int)outlen,
                       wc_type(alg));
    return rc == 0 ? 0 : -1;
}
