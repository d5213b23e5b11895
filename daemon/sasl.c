/*
 * SMTP AUTH client helpers (RFC 4954): PLAIN (RFC 4616) and LOGIN.
 * CRAM-MD5 and SCRAM come with the crypto in tls.c.
 */
#include "sasl.h"

#include <stdlib.h>
#include <string.h>

#include "base64.h"
#include "config.h"

/* Strongest first. */
static const struct {
    unsigned mech;
    const char *name;
} implemented[] = {
    {AUTH_MECH_PLAIN, "PLAIN"},
    {AUTH_MECH_LOGIN, "LOGIN"},
};

unsigned sasl_choose(unsigned offered, unsigned allowed)
{
    if (allowed == 0)
        allowed = AUTH_MECH_PLAIN | AUTH_MECH_LOGIN;
    for (size_t i = 0; i < sizeof(implemented) / sizeof(implemented[0]); i++)
        if (offered & allowed & implemented[i].mech)
            return implemented[i].mech;
    return 0;
}

const char *sasl_mech_name(unsigned mech)
{
    for (size_t i = 0; i < sizeof(implemented) / sizeof(implemented[0]); i++)
        if (implemented[i].mech == mech)
            return implemented[i].name;
    return "?";
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
