/*
 * SASL client side for SMTP AUTH (RFC 4954): mechanism choice and the
 * PLAIN (RFC 4616) and LOGIN responses.  Pure; the secrets it is given are
 * never logged by it, and buffers holding them are wiped on free.
 */
#ifndef MAILPOOL_SASL_H
#define MAILPOOL_SASL_H

#include <stddef.h>

/*
 * The mechanism to use: the strongest one that the server offers, that is
 * allowed (`allowed`, enum auth_mech bits; 0 = PLAIN and LOGIN) and that this
 * build implements.  Returns one enum auth_mech bit, or 0 when none fits.
 */
unsigned sasl_choose(unsigned offered, unsigned allowed);
/* "PLAIN", "LOGIN", ... for one enum auth_mech bit. */
const char *sasl_mech_name(unsigned mech);

/* base64("\0user\0password"), malloc'd; NULL when out of memory. */
char *sasl_plain_response(const char *user, const char *password);
/* base64(s), malloc'd; NULL when out of memory. */
char *sasl_b64(const char *s);
/* Zero and free a response that holds a secret. */
void sasl_free(char *response);

#endif
