/*
 * SMTP AUTH client exchanges (RFC 4954): PLAIN (RFC 4616), LOGIN, CRAM-MD5
 * (RFC 2195), SCRAM-SHA-1 / SCRAM-SHA-256 without channel binding (RFC 5802,
 * RFC 7677), XOAUTH2 (Google's profile) and OAUTHBEARER (RFC 7628).
 * The hashes come from tls.c (wolfSSL); this file only builds and checks
 * the messages.
 */
#include "sasl.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "base64.h"
#include "config.h"
#include "tls.h"

/* Strongest first; the token mechanisms only when asked for by name. */
static const struct {
    unsigned mech;
    const char *name;
} implemented[] = {
    {AUTH_MECH_SCRAM_SHA_256, "SCRAM-SHA-256"},
    {AUTH_MECH_SCRAM_SHA_1, "SCRAM-SHA-1"},
    {AUTH_MECH_CRAM_MD5, "CRAM-MD5"},
    {AUTH_MECH_PLAIN, "PLAIN"},
    {AUTH_MECH_LOGIN, "LOGIN"},
    {AUTH_MECH_OAUTHBEARER, "OAUTHBEARER"},
    {AUTH_MECH_XOAUTH2, "XOAUTH2"},
};

#define NIMPL (sizeof(implemented) / sizeof(implemented[0]))

/* Password mechanisms tried when the profile names none. */
#define DEFAULT_MECHS                                                                              \
    (AUTH_MECH_SCRAM_SHA_256 | AUTH_MECH_SCRAM_SHA_1 | AUTH_MECH_CRAM_MD5 | AUTH_MECH_PLAIN |      \
     AUTH_MECH_LOGIN)

/*
 * Each PBKDF2 round runs on the event loop; a hostile or misconfigured
 * server asking for millions would stall every other session.
 */
#define SCRAM_MAX_ITERATIONS 200000
/* RFC 5802 section 5.1 / RFC 7677 section 4: fewer is a downgrade. */
#define SCRAM_MIN_ITERATIONS 1024

unsigned sasl_choose(unsigned offered, unsigned allowed)
{
    if (allowed == 0)
        allowed = DEFAULT_MECHS;
    for (size_t i = 0; i < NIMPL; i++)
        if (offered & allowed & implemented[i].mech)
            return implemented[i].mech;
    return 0;
}

const char *sasl_mech_name(unsigned mech)
{
    for (size_t i = 0; i < NIMPL; i++)
        if (implemented[i].mech == mech)
            return implemented[i].name;
    return "?";
}

int sasl_mech_is_token(unsigned mech)
{
    return mech == AUTH_MECH_XOAUTH2 || mech == AUTH_MECH_OAUTHBEARER;
}

static char *b64_of(const unsigned char *raw, size_t len)
{
    char *out = malloc(BASE64_ENCODED_LEN(len) + 1);
    if (out)
        base64_encode(raw, len, out);
    return out;
}

char *sasl_plain_response(const char *user, const char *password)
{
    size_t ul = strlen(user), pl = strlen(password);
    size_t len = 1 + ul + 1 + pl;
    unsigned char *raw = malloc(len);
    if (raw == NULL)
        return NULL;
    raw[0] = '\0'; /* empty authorization identity: act as the authenticated user */
    memcpy(raw + 1, user, ul);
    raw[1 + ul] = '\0';
    memcpy(raw + 2 + ul, password, pl);
    char *out = b64_of(raw, len);
    explicit_bzero(raw, len);
    free(raw);
    return out;
}

char *sasl_b64(const char *s)
{
    return b64_of((const unsigned char *)s, strlen(s));
}

void sasl_free(char *response)
{
    if (response) {
        explicit_bzero(response, strlen(response));
        free(response);
    }
}

/* ---- one exchange --------------------------------------------------------- */

struct sasl {
    unsigned mech;
    char *user;
    char *secret;
    int step; /* challenges answered so far */
    int token_refused;
    int verified; /* SCRAM: the server signature matched */

    /* SCRAM state between the two round trips. */
    enum tls_digest alg;
    char *nonce;
    char *client_first_bare;
    unsigned char server_sig[TLS_DIGEST_MAX];
};

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static void wipe_str(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

static int is_scram(unsigned mech)
{
    return mech == AUTH_MECH_SCRAM_SHA_1 || mech == AUTH_MECH_SCRAM_SHA_256;
}

/* SASLprep (RFC 4013) is the identity on printable ASCII; the rest is refused. */
static int printable_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
            return 0;
    return 1;
}

struct sasl *sasl_begin(unsigned mech, const char *user, const char *secret, char *err,
                        size_t errlen)
{
    if (sasl_mech_name(mech)[0] == '?') {
        set_err(err, errlen, "unknown SASL mechanism");
        return NULL;
    }
    if (is_scram(mech) && (!printable_ascii(user) || !printable_ascii(secret))) {
        set_err(err, errlen,
                "%s needs a user name and password in printable ASCII "
                "(other characters would need full SASLprep, which is not implemented)",
                sasl_mech_name(mech));
        return NULL;
    }
    struct sasl *s = calloc(1, sizeof(*s));
    if (s == NULL || !(s->user = strdup(user)) || !(s->secret = strdup(secret))) {
        sasl_end(s);
        set_err(err, errlen, "out of memory");
        return NULL;
    }
    s->mech = mech;
    s->alg = mech == AUTH_MECH_SCRAM_SHA_1 ? TLS_DIGEST_SHA1 : TLS_DIGEST_SHA256;
    return s;
}

void sasl_end(struct sasl *s)
{
    if (s == NULL)
        return;
    wipe_str(s->user);
    wipe_str(s->secret);
    wipe_str(s->nonce);
    wipe_str(s->client_first_bare);
    explicit_bzero(s, sizeof(*s));
    free(s);
}

int sasl_set_nonce(struct sasl *s, const char *nonce)
{
    char *n = strdup(nonce);
    if (n == NULL)
        return -1;
    wipe_str(s->nonce);
    s->nonce = n;
    return 0;
}

/* A growing string for building messages; every copy is wiped on free. */
struct sb {
    char *p;
    size_t len, cap;
    int oom;
};

static void sb_addn(struct sb *b, const char *d, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->len + n + 1) * 2;
        char *p = malloc(cap);
        if (p == NULL) {
            b->oom = 1;
            return;
        }
        if (b->p) {
            memcpy(p, b->p, b->len);
            explicit_bzero(b->p, b->cap);
            free(b->p);
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, d, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_add(struct sb *b, const char *s)
{
    sb_addn(b, s, strlen(s));
}

/* Hand over the string (NULL when out of memory). */
static char *sb_take(struct sb *b)
{
    if (b->oom) {
        if (b->p) {
            explicit_bzero(b->p, b->cap);
            free(b->p);
        }
        return NULL;
    }
    if (b->p == NULL)
        return strdup("");
    return b->p;
}

static void sb_wipe(struct sb *b)
{
    if (b->p) {
        explicit_bzero(b->p, b->cap);
        free(b->p);
    }
    memset(b, 0, sizeof(*b));
}

/* RFC 5802 section 5.1: "=" and "," in a saslname are escaped. */
static void sb_add_saslname(struct sb *b, const char *name)
{
    for (; *name; name++) {
        if (*name == '=')
            sb_add(b, "=3D");
        else if (*name == ',')
            sb_add(b, "=2C");
        else
            sb_addn(b, name, 1);
    }
}

static int make_nonce(struct sasl *s, char *err, size_t errlen)
{
    unsigned char raw[18];
    size_t got = 0;
    while (got < sizeof(raw)) {
        ssize_t n = getrandom(raw + got, sizeof(raw) - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            set_err(err, errlen, "getrandom: %s", strerror(errno));
            return -1;
        }
        got += (size_t)n;
    }
    /* 18 bytes encode to 24 base64 characters: printable, no ',' and no padding. */
    s->nonce = b64_of(raw, sizeof(raw));
    if (s->nonce == NULL) {
        set_err(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

/* The mechanism's initial response, raw (not base64); NULL for none or error. */
static char *initial_raw(struct sasl *s, int *none, char *err, size_t errlen)
{
    struct sb b = {0};
    *none = 0;
    switch (s->mech) {
    case AUTH_MECH_LOGIN:
    case AUTH_MECH_CRAM_MD5:
        *none = 1;
        return NULL;
    case AUTH_MECH_XOAUTH2:
        sb_add(&b, "user=");
        sb_add(&b, s->user);
        sb_add(&b, "\001auth=Bearer ");
        sb_add(&b, s->secret);
        sb_add(&b, "\001\001");
        break;
    case AUTH_MECH_OAUTHBEARER:
        /* gs2 header with the authzid, then the key/value pairs (RFC 7628 section 3.1). */
        sb_add(&b, "n,a=");
        sb_add_saslname(&b, s->user);
        sb_add(&b, ",\001auth=Bearer ");
        sb_add(&b, s->secret);
        sb_add(&b, "\001\001");
        break;
    case AUTH_MECH_SCRAM_SHA_1:
    case AUTH_MECH_SCRAM_SHA_256: {
        if (s->nonce == NULL && make_nonce(s, err, errlen) < 0)
            return NULL;
        struct sb bare = {0};
        sb_add(&bare, "n=");
        sb_add_saslname(&bare, s->user);
        sb_add(&bare, ",r=");
        sb_add(&bare, s->nonce);
        s->client_first_bare = sb_take(&bare);
        if (s->client_first_bare == NULL)
            break;
        sb_add(&b, "n,,"); /* no channel binding, no authzid */
        sb_add(&b, s->client_first_bare);
        break;
    }
    default: /* PLAIN is handled by the caller */
        break;
    }
    char *out = sb_take(&b);
    if (out == NULL)
        set_err(err, errlen, "out of memory");
    return out;
}

char *sasl_initial(struct sasl *s, char *err, size_t errlen)
{
    const char *name = sasl_mech_name(s->mech);
    char *resp = NULL;
    if (s->mech == AUTH_MECH_PLAIN) {
        resp = sasl_plain_response(s->user, s->secret);
        if (resp == NULL) {
            set_err(err, errlen, "out of memory");
            return NULL;
        }
        /*
         * PLAIN has one message, and it goes with the command: a challenge
         * after it is out of order and gets no second copy of the password.
         */
        s->step = 1;
    } else {
        int none;
        char *raw = initial_raw(s, &none, err, errlen);
        if (raw == NULL && !none)
            return NULL;
        if (raw) {
            resp = sasl_b64(raw);
            wipe_str(raw);
            if (resp == NULL) {
                set_err(err, errlen, "out of memory");
                return NULL;
            }
        }
    }
    struct sb line = {0};
    sb_add(&line, "AUTH ");
    sb_add(&line, name);
    if (resp) {
        sb_add(&line, " ");
        sb_add(&line, resp);
        sasl_free(resp);
    }
    char *out = sb_take(&line);
    if (out == NULL)
        set_err(err, errlen, "out of memory");
    return out;
}

/* Decode a challenge into a NUL-terminated buffer; NULL when not base64. */
static char *decode_challenge(const char *challenge, size_t *len)
{
    size_t n = strlen(challenge);
    unsigned char *out = malloc(n / 4 * 3 + 4);
    if (out == NULL)
        return NULL;
    long got = base64_decode(challenge, n, out);
    if (got < 0) {
        free(out);
        return NULL;
    }
    out[got] = '\0';
    *len = (size_t)got;
    return (char *)out;
}

static void hex(const unsigned char *d, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[d[i] >> 4];
        out[2 * i + 1] = digits[d[i] & 15];
    }
    out[2 * n] = '\0';
}

static char *cram_md5(struct sasl *s, const char *chal, size_t clen, char *err, size_t errlen)
{
    unsigned char mac[TLS_DIGEST_MAX];
    char hexmac[2 * TLS_DIGEST_MAX + 1];
    if (tls_hmac(TLS_DIGEST_MD5, s->secret, strlen(s->secret), chal, clen, mac) < 0) {
        set_err(err, errlen, "CRAM-MD5: HMAC failed");
        return NULL;
    }
    hex(mac, 16, hexmac);
    struct sb b = {0};
    sb_add(&b, s->user);
    sb_add(&b, " ");
    sb_add(&b, hexmac);
    char *raw = sb_take(&b);
    char *out = raw ? sasl_b64(raw) : NULL;
    wipe_str(raw);
    if (out == NULL)
        set_err(err, errlen, "out of memory");
    return out;
}

/* The value of attribute `a` in a SCRAM message ("a=value,..."), or NULL. */
static const char *scram_attr(const char *msg, char a, size_t *len)
{
    const char *p = msg;
    while (*p) {
        const char *end = strchr(p, ',');
        if (end == NULL)
            end = p + strlen(p);
        if (p[0] == a && p[1] == '=') {
            *len = (size_t)(end - p - 2);
            return p + 2;
        }
        p = *end ? end + 1 : end;
    }
    return NULL;
}

/* server-first -> client-final (RFC 5802 section 3). */
static char *scram_first(struct sasl *s, const char *sf, char *err, size_t errlen)
{
    const char *name = sasl_mech_name(s->mech);
    size_t rlen = 0, slen = 0, ilen = 0;
    if (sf[0] == 'm' && sf[1] == '=') {
        set_err(err, errlen, "%s: server requires an unknown extension", name);
        return NULL;
    }
    const char *r = scram_attr(sf, 'r', &rlen);
    const char *salt64 = scram_attr(sf, 's', &slen);
    const char *iter = scram_attr(sf, 'i', &ilen);
    size_t nl = strlen(s->nonce);
    if (!r || !salt64 || !iter || slen == 0 || ilen == 0 || ilen > 9) {
        set_err(err, errlen, "%s: malformed server-first-message", name);
        return NULL;
    }
    /* The server's nonce must extend ours, or this is a replay or a confused server. */
    if (rlen <= nl || strncmp(r, s->nonce, nl) != 0) {
        set_err(err, errlen, "%s: server nonce does not start with the client nonce", name);
        return NULL;
    }
    unsigned long i = 0;
    for (size_t k = 0; k < ilen; k++) {
        if (iter[k] < '0' || iter[k] > '9') {
            set_err(err, errlen, "%s: malformed iteration count", name);
            return NULL;
        }
        i = i * 10 + (unsigned long)(iter[k] - '0');
    }
    if (i < SCRAM_MIN_ITERATIONS || i > SCRAM_MAX_ITERATIONS) {
        set_err(err, errlen, "%s: iteration count %lu outside %d..%d", name, i,
                SCRAM_MIN_ITERATIONS, SCRAM_MAX_ITERATIONS);
        return NULL;
    }
    unsigned char *salt = malloc(slen / 4 * 3 + 4);
    if (salt == NULL) {
        set_err(err, errlen, "out of memory");
        return NULL;
    }
    long saltlen = base64_decode(salt64, slen, salt);
    if (saltlen <= 0) {
        free(salt);
        set_err(err, errlen, "%s: malformed salt", name);
        return NULL;
    }

    size_t dl = tls_digest_len(s->alg);
    unsigned char salted[TLS_DIGEST_MAX], ckey[TLS_DIGEST_MAX], stored[TLS_DIGEST_MAX];
    unsigned char csig[TLS_DIGEST_MAX], skey[TLS_DIGEST_MAX];
    char *out = NULL;
    struct sb final = {0}, auth = {0};
    int ok = tls_pbkdf2_hmac(s->alg, s->secret, strlen(s->secret), salt, (size_t)saltlen,
                             (unsigned)i, salted, dl) == 0 &&
             tls_hmac(s->alg, salted, dl, "Client Key", 10, ckey) == 0 &&
             tls_hash(s->alg, ckey, dl, stored) == 0 &&
             tls_hmac(s->alg, salted, dl, "Server Key", 10, skey) == 0;
    free(salt);
    if (!ok) {
        set_err(err, errlen, "%s: key derivation failed", name);
        goto out;
    }
    /* "biws" is base64("n,,"): the gs2 header, no channel binding. */
    sb_add(&final, "c=biws,r=");
    sb_addn(&final, r, rlen);
    sb_add(&auth, s->client_first_bare);
    sb_add(&auth, ",");
    sb_add(&auth, sf);
    sb_add(&auth, ",");
    sb_addn(&auth, final.p ? final.p : "", final.len);
    if (final.oom || auth.oom) {
        set_err(err, errlen, "out of memory");
        goto out;
    }
    if (tls_hmac(s->alg, stored, dl, auth.p, auth.len, csig) < 0 ||
        tls_hmac(s->alg, skey, dl, auth.p, auth.len, s->server_sig) < 0) {
        set_err(err, errlen, "%s: HMAC failed", name);
        goto out;
    }
    unsigned char proof[TLS_DIGEST_MAX];
    for (size_t k = 0; k < dl; k++)
        proof[k] = ckey[k] ^ csig[k];
    char *proof64 = b64_of(proof, dl);
    explicit_bzero(proof, sizeof(proof));
    if (proof64 == NULL) {
        set_err(err, errlen, "out of memory");
        goto out;
    }
    sb_add(&final, ",p=");
    sb_add(&final, proof64);
    free(proof64);
    char *raw = sb_take(&final);
    memset(&final, 0, sizeof(final));
    out = raw ? sasl_b64(raw) : NULL;
    wipe_str(raw);
    if (out == NULL)
        set_err(err, errlen, "out of memory");
out:
    sb_wipe(&final);
    sb_wipe(&auth);
    explicit_bzero(salted, sizeof(salted));
    explicit_bzero(ckey, sizeof(ckey));
    explicit_bzero(stored, sizeof(stored));
    explicit_bzero(csig, sizeof(csig));
    explicit_bzero(skey, sizeof(skey));
    return out;
}

/* server-final: "v=signature" must match, "e=..." is the server's refusal. */
static char *scram_final(struct sasl *s, const char *sf, char *err, size_t errlen)
{
    const char *name = sasl_mech_name(s->mech);
    size_t vlen = 0;
    if (sf[0] == 'e' && sf[1] == '=') {
        set_err(err, errlen, "%s: server refused: %.100s", name, sf + 2);
        return NULL;
    }
    const char *v = scram_attr(sf, 'v', &vlen);
    size_t dl = tls_digest_len(s->alg);
    char *want = b64_of(s->server_sig, dl);
    if (want == NULL) {
        set_err(err, errlen, "out of memory");
        return NULL;
    }
    int match = v && vlen == strlen(want) && memcmp(v, want, vlen) == 0;
    free(want);
    if (!match) {
        set_err(err, errlen,
                "%s: server signature does not match (the server does not know the "
                "password, or the session was tampered with)",
                name);
        return NULL;
    }
    s->verified = 1;
    return strdup("");
}

char *sasl_step(struct sasl *s, const char *challenge, char *err, size_t errlen)
{
    const char *name = sasl_mech_name(s->mech);
    size_t clen = 0;
    char *chal = NULL, *out = NULL;
    int n = s->step++;

    /* LOGIN's prompts are well known and ignored; everything else is decoded. */
    if (s->mech != AUTH_MECH_LOGIN && s->mech != AUTH_MECH_PLAIN) {
        chal = decode_challenge(challenge, &clen);
        if (chal == NULL) {
            set_err(err, errlen, "%s: challenge is not base64", name);
            return NULL;
        }
        if (strlen(chal) != clen) {
            set_err(err, errlen, "%s: challenge contains a NUL byte", name);
            free(chal);
            return NULL;
        }
    }
    switch (s->mech) {
    case AUTH_MECH_PLAIN:
        /* Only after an empty challenge, when no initial response was taken. */
        if (n == 0)
            out = sasl_plain_response(s->user, s->secret);
        break;
    case AUTH_MECH_LOGIN:
        if (n < 2)
            out = sasl_b64(n == 0 ? s->user : s->secret);
        break;
    case AUTH_MECH_CRAM_MD5:
        if (n == 0) {
            out = cram_md5(s, chal, clen, err, errlen);
            free(chal);
            return out;
        }
        break;
    case AUTH_MECH_SCRAM_SHA_1:
    case AUTH_MECH_SCRAM_SHA_256:
        if (n == 0)
            out = scram_first(s, chal, err, errlen);
        else if (n == 1)
            out = scram_final(s, chal, err, errlen);
        free(chal);
        chal = NULL;
        if (n < 2)
            return out;
        break;
    case AUTH_MECH_XOAUTH2:
    case AUTH_MECH_OAUTHBEARER:
        if (n == 0) {
            /*
             * An error challenge (JSON with "status"): the token was refused.
             * The client must answer before the server sends its 5xx: an
             * empty line for XOAUTH2, a lone %x01 for OAUTHBEARER (RFC 7628
             * section 3.2.3).
             */
            s->token_refused = 1;
            free(chal);
            chal = NULL;
            out = s->mech == AUTH_MECH_OAUTHBEARER ? strdup("AQ==") : strdup("");
            if (out == NULL)
                set_err(err, errlen, "out of memory");
            return out;
        }
        break;
    default:
        break;
    }
    free(chal);
    if (out == NULL) {
        int expected =
            (s->mech == AUTH_MECH_PLAIN && n == 0) || (s->mech == AUTH_MECH_LOGIN && n < 2);
        if (expected)
            set_err(err, errlen, "out of memory");
        else
            set_err(err, errlen, "%s: unexpected challenge from the server", name);
    }
    return out;
}

int sasl_success(const struct sasl *s, char *err, size_t errlen)
{
    if (is_scram(s->mech) && !s->verified) {
        set_err(err, errlen,
                "%s: server reported success without proving it knows the password "
                "(no server signature)",
                sasl_mech_name(s->mech));
        return -1;
    }
    return 0;
}

int sasl_token_refused(const struct sasl *s)
{
    return s->token_refused;
}
