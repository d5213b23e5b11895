/*
 * TLS client connections through wolfSSL.  This is the only file of the
 * daemon that includes wolfSSL: everything else sees these opaque types.
 * Non-blocking: every call returns TLS_WANT_READ / TLS_WANT_WRITE when the
 * socket is not ready, and the caller (ioev.c) waits for the event and calls
 * again with the same arguments.
 *
 * Verification is on by default: CA chain against ca_file/ca_path (default:
 * the system bundle) and the host name against server_name, which is also
 * sent as SNI.  RFC 8314 (implicit TLS), RFC 3207 (STARTTLS), RFC 6125.
 */
#ifndef MAILPOOL_TLS_H
#define MAILPOOL_TLS_H

#include <stddef.h>

struct tls_ctx;
struct tls_conn;

struct tls_ctx_opts {
    const char *ca_file;     /* NULL: the system bundle, unless ca_path is set */
    const char *ca_path;     /* hashed CA directory; set alone, it replaces the bundle */
    int verify;              /* 0: "trusted_site", accept any certificate */
    int allow_legacy;        /* "secure_fallback": TLS 1.0/1.1 and weak suites */
    const char *min_version; /* "1.0".."1.3" or NULL (1.2; 1.0 with allow_legacy) */
};

/* Called once at start-up.  Returns 0, or -1 with a message in err. */
int tls_init(char *err, size_t errlen);
void tls_shutdown(void);

/* A client context for one relay profile.  NULL with a message on error. */
struct tls_ctx *tls_ctx_new(const struct tls_ctx_opts *opts, char *err, size_t errlen);
void tls_ctx_free(struct tls_ctx *ctx);

/*
 * Optional settings, applied after tls_ctx_new() and before the first
 * tls_conn_new().  Each returns 0, or -1 with a message in err.
 * tls_ctx_set_ciphers: an OpenSSL-style list ("ECDHE-RSA-AES128-GCM-SHA256:
 *   TLS13-AES128-GCM-SHA256"); -1 when no suite in it is known.
 * tls_ctx_set_client_cert: PEM certificate chain and private key files; -1
 *   when unreadable or when the key does not belong to the certificate.
 * tls_ctx_add_pin: a base64 SHA-256 of the server's SubjectPublicKeyInfo
 *   (pin_sha256); call once per pin.  With pins, a new (not resumed) session
 *   fails unless the server key matches one of them, whether or not the CA
 *   chain is verified.  -1 when the text is not a base64 SHA-256 digest.
 */
int tls_ctx_set_ciphers(struct tls_ctx *ctx, const char *list, char *err, size_t errlen);
int tls_ctx_set_client_cert(struct tls_ctx *ctx, const char *cert_file, const char *key_file,
                            char *err, size_t errlen);
int tls_ctx_add_pin(struct tls_ctx *ctx, const char *pin_b64, char *err, size_t errlen);

enum tls_result {
    TLS_OK = 0,     /* done / some bytes moved */
    TLS_WANT_READ,  /* wait for the socket to be readable, then call again */
    TLS_WANT_WRITE, /* wait for writable, then call again (same arguments) */
    TLS_EOF,        /* peer closed the TLS session */
    TLS_FAIL,       /* fatal; tls_conn_error() says why */
};

/*
 * A TLS client on connected socket fd (not owned).  server_name is sent as
 * SNI and verified against the certificate (unless the context does not
 * verify).  session_key names the server for session resumption (e.g.
 * "host:port"); a session saved under the same key in this ctx is offered.
 */
struct tls_conn *tls_conn_new(struct tls_ctx *ctx, int fd, const char *server_name,
                              const char *session_key, char *err, size_t errlen);
void tls_conn_free(struct tls_conn *c); /* sends close_notify best-effort, never blocks */

enum tls_result tls_conn_handshake(struct tls_conn *c);
enum tls_result tls_conn_read(struct tls_conn *c, void *buf, size_t len, size_t *nread);
enum tls_result tls_conn_write(struct tls_conn *c, const void *buf, size_t len, size_t *nwritten);
/* Whether wolfSSL holds decrypted bytes not read yet. */
int tls_conn_pending(struct tls_conn *c);

/* Why the last call failed, e.g. "certificate verify failed: ... expired". */
const char *tls_conn_error(const struct tls_conn *c);
const char *tls_conn_version(const struct tls_conn *c); /* "TLSv1.3" */
const char *tls_conn_cipher(const struct tls_conn *c);
int tls_conn_resumed(const struct tls_conn *c);

/*
 * The server certificate of a completed, new (not resumed) handshake, for
 * reports: every string is malloc'd, freed by tls_peer_info_clear().
 */
struct tls_peer_info {
    char *subject; /* "/O=Example/CN=mail.example.com" */
    char *issuer;  /* same form */
    char **san;    /* subjectAltName entries: "DNS:name", "IP:addr", "email:..", "URI:.." */
    size_t nsan;
    char *not_before; /* "2024-01-31T12:00:00Z" (UTC) */
    char *not_after;
    char *pin_sha256; /* base64 SHA-256 of the SubjectPublicKeyInfo, as pin_sha256 takes it */
};

/*
 * Fill info from the peer certificate.  Returns 0; -1 when the handshake is
 * not done, the session was resumed or the server sent no certificate (info
 * is then empty), or when out of memory (info holds what was read).
 */
int tls_conn_peer_info(const struct tls_conn *c, struct tls_peer_info *info);
/* Free the strings and zero info.  A zeroed info is fine. */
void tls_peer_info_clear(struct tls_peer_info *info);

/*
 * Hashes for SASL (CRAM-MD5, SCRAM), from wolfSSL's crypto so the daemon
 * carries no hash code of its own.  Digests are written to `out`, which
 * must hold tls_digest_len(alg) bytes (TLS_DIGEST_MAX is enough for all).
 */
enum tls_digest { TLS_DIGEST_MD5, TLS_DIGEST_SHA1, TLS_DIGEST_SHA256 };
#define TLS_DIGEST_MAX 32

/* 16, 20 or 32. */
size_t tls_digest_len(enum tls_digest alg);
/* Returns 0, or -1 when wolfSSL fails (it does not for valid arguments). */
int tls_hash(enum tls_digest alg, const void *msg, size_t len, unsigned char *out);
/* HMAC (RFC 2104).  Returns 0, or -1 on a wolfSSL error. */
int tls_hmac(enum tls_digest alg, const void *key, size_t keylen, const void *msg, size_t len,
             unsigned char *out);
/*
 * PBKDF2 with HMAC-alg (RFC 8018), the SCRAM Hi() function: outlen bytes
 * into out.  SHA-1 and SHA-256 only.  Returns 0, or -1 on a bad argument
 * (MD5, iterations 0, sizes over INT_MAX) or a wolfSSL error.
 */
int tls_pbkdf2_hmac(enum tls_digest alg, const void *pass, size_t passlen, const void *salt,
                    size_t saltlen, unsigned iterations, unsigned char *out, size_t outlen);

#endif
