/*
 * SASL client side for SMTP AUTH (RFC 4954): mechanism choice and one
 * exchange of PLAIN (RFC 4616), LOGIN, CRAM-MD5 (RFC 2195), SCRAM-SHA-1 and
 * SCRAM-SHA-256 (RFC 5802, RFC 7677), XOAUTH2 and OAUTHBEARER (RFC 7628).
 * Pure apart from the random nonce; the secrets it is given are never
 * logged by it, and buffers holding them are wiped on free.
 */
#ifndef MAILPOOL_SASL_H
#define MAILPOOL_SASL_H

#include <stddef.h>

/*
 * The mechanism to use: the strongest one that the server offers, that is
 * allowed (`allowed`, enum auth_mech bits; 0 = the default set) and that
 * this build implements.  Order: SCRAM-SHA-256, SCRAM-SHA-1, CRAM-MD5,
 * PLAIN, LOGIN, then OAUTHBEARER, XOAUTH2 -- the two token mechanisms only
 * when named in `allowed`, never by default.  Returns one enum auth_mech
 * bit, or 0 when none fits.
 */
unsigned sasl_choose(unsigned offered, unsigned allowed);
/* "PLAIN", "SCRAM-SHA-256", ... for one enum auth_mech bit; "?" otherwise. */
const char *sasl_mech_name(unsigned mech);
/* Whether the mechanism sends an OAuth2 access token rather than a password. */
int sasl_mech_is_token(unsigned mech);

/* base64("\0user\0password"), malloc'd; NULL when out of memory. */
char *sasl_plain_response(const char *user, const char *password);
/* base64(s), malloc'd; NULL when out of memory. */
char *sasl_b64(const char *s);
/* Zero and free a response that holds a secret.  NULL is fine. */
void sasl_free(char *response);

/* One AUTH exchange. */
struct sasl;

/*
 * Start an exchange with one enum auth_mech bit.  user and secret are
 * copied (the copy is wiped by sasl_end()).  Returns NULL with a message in
 * err when out of memory, when the mechanism is unknown, or when SCRAM is
 * given a user name or password outside printable ASCII (this client's
 * SASLprep is the identity on ASCII and refuses the rest).
 */
struct sasl *sasl_begin(unsigned mech, const char *user, const char *secret, char *err,
                        size_t errlen);
/* Wipe and free.  NULL is fine. */
void sasl_end(struct sasl *s);

/*
 * Test hook: use this client nonce for SCRAM instead of a random one
 * (the RFC examples fix it).  Call before sasl_initial().  Returns 0, or -1
 * when out of memory.
 */
int sasl_set_nonce(struct sasl *s, const char *nonce);

/*
 * The AUTH command line ("AUTH SCRAM-SHA-256 biwsbj1..."), malloc'd, with
 * the initial response when the mechanism has one (RFC 4954 section 4).
 * Returns NULL with a message in err on failure (out of memory, no
 * randomness).  The line may contain the secret: free it with sasl_free().
 */
char *sasl_initial(struct sasl *s, char *err, size_t errlen);

/*
 * The server sent "334 <challenge>" (the base64 text after the code).
 * Returns the base64 response line (possibly ""), malloc'd, to be freed
 * with sasl_free(); or NULL with a message in err when the challenge is
 * malformed or unexpected, or the SCRAM server signature is wrong -- the
 * caller must then abandon the session (send "*" or just close).
 */
char *sasl_step(struct sasl *s, const char *challenge, char *err, size_t errlen);

/*
 * The server said 235.  Returns 0 when the exchange really is complete,
 * -1 with a message in err when it is not (SCRAM without a verified server
 * signature: a server that does not know the password must not pass).
 */
int sasl_success(const struct sasl *s, char *err, size_t errlen);

/* Whether the server sent an OAuth2 error challenge (the token was refused). */
int sasl_token_refused(const struct sasl *s);

#endif
