/*
 * SASL client tests against the published examples: SCRAM-SHA-256 (RFC 7677
 * section 3), SCRAM-SHA-1 (RFC 5802 section 5), CRAM-MD5 (RFC 2195 section
 * 2), plus mechanism choice, the token mechanisms and refusals.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base64.h"
#include "check.h"
#include "config.h"
#include "sasl.h"
#include "tls.h"

static char *b64(const char *s)
{
    char *out = malloc(BASE64_ENCODED_LEN(strlen(s)) + 1);
    base64_encode((const unsigned char *)s, strlen(s), out);
    return out;
}

static char *unb64(const char *s)
{
    unsigned char *out = malloc(strlen(s) / 4 * 3 + 4);
    long n = base64_decode(s, strlen(s), out);
    if (n < 0) {
        free(out);
        return NULL;
    }
    out[n] = '\0';
    return (char *)out;
}

/* Run one SCRAM example: client-first, client-final, then the server's v=. */
static void scram_example(unsigned mech, const char *nonce, const char *client_first,
                          const char *server_first, const char *client_final,
                          const char *server_final)
{
    char err[256] = "";
    struct sasl *s = sasl_begin(mech, "user", "pencil", err, sizeof(err));
    CHECK(s != NULL);
    if (s == NULL)
        return;
    CHECK(sasl_set_nonce(s, nonce) == 0);
    char *line = sasl_initial(s, err, sizeof(err));
    char *want = b64(client_first);
    char want_line[256];
    snprintf(want_line, sizeof(want_line), "AUTH %s %s", sasl_mech_name(mech), want);
    CHECK_STR(line, want_line);
    free(want);
    sasl_free(line);

    char *chal = b64(server_first);
    char *resp = sasl_step(s, chal, err, sizeof(err));
    free(chal);
    CHECK(resp != NULL);
    char *plain = resp ? unb64(resp) : NULL;
    CHECK_STR(plain, client_final);
    free(plain);
    sasl_free(resp);

    /* Success before the signature was checked must not count. */
    CHECK(sasl_success(s, err, sizeof(err)) == -1);

    chal = b64(server_final);
    resp = sasl_step(s, chal, err, sizeof(err));
    free(chal);
    CHECK_STR(resp, "");
    sasl_free(resp);
    CHECK(sasl_success(s, err, sizeof(err)) == 0);
    /* A third challenge is a protocol error, not a crash. */
    resp = sasl_step(s, "dj1B", err, sizeof(err));
    CHECK(resp == NULL);
    CHECK(strstr(err, "unexpected challenge") != NULL);
    sasl_end(s);

    /* The same exchange with a wrong server signature fails. */
    s = sasl_begin(mech, "user", "pencil", err, sizeof(err));
    sasl_set_nonce(s, nonce);
    sasl_free(sasl_initial(s, err, sizeof(err)));
    chal = b64(server_first);
    sasl_free(sasl_step(s, chal, err, sizeof(err)));
    free(chal);
    chal = b64("v=AAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    err[0] = '\0';
    resp = sasl_step(s, chal, err, sizeof(err));
    free(chal);
    CHECK(resp == NULL);
    CHECK(strstr(err, "server signature does not match") != NULL);
    CHECK(sasl_success(s, err, sizeof(err)) == -1);
    sasl_end(s);

    /* A server nonce that does not extend ours is refused. */
    s = sasl_begin(mech, "user", "pencil", err, sizeof(err));
    sasl_set_nonce(s, nonce);
    sasl_free(sasl_initial(s, err, sizeof(err)));
    chal = b64("r=somethingelse,s=QSXCR+Q6sek8bf92,i=4096");
    resp = sasl_step(s, chal, err, sizeof(err));
    free(chal);
    CHECK(resp == NULL);
    CHECK(strstr(err, "nonce") != NULL);
    sasl_end(s);
}

static void test_scram256(void)
{
    check_case = "RFC 7677 section 3";
    scram_example(AUTH_MECH_SCRAM_SHA_256, "rOprNGfwEbeRWgbNEkqO",
                  "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
                  "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,"
                  "i=4096",
                  "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                  "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
                  "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
}

static void test_scram1(void)
{
    check_case = "RFC 5802 section 5";
    scram_example(
        AUTH_MECH_SCRAM_SHA_1, "fyko+d2lbbFgONRv9qkxdawL", "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
        "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
        "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
        "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=");
}

static void test_scram_misc(void)
{
    char err[256] = "";
    check_case = "non-ASCII password refused";
    struct sasl *s = sasl_begin(AUTH_MECH_SCRAM_SHA_256, "user", "p\xc3\xa4ss", err, sizeof(err));
    CHECK(s == NULL);
    CHECK(strstr(err, "ASCII") != NULL);

    check_case = "random nonce, escaped user name";
    s = sasl_begin(AUTH_MECH_SCRAM_SHA_256, "a=b,c", "pw", err, sizeof(err));
    CHECK(s != NULL);
    char *line = sasl_initial(s, err, sizeof(err));
    CHECK(line != NULL && strncmp(line, "AUTH SCRAM-SHA-256 ", 19) == 0);
    char *cf = line ? unb64(line + 19) : NULL;
    CHECK(cf != NULL && strncmp(cf, "n,,n=a=3Db=2Cc,r=", 17) == 0 && strlen(cf) == 17 + 24);
    free(cf);
    sasl_free(line);

    check_case = "server iteration count too high";
    char *chal = b64("r=x,s=QSXCR+Q6sek8bf92,i=99999999");
    char *resp = sasl_step(s, chal, err, sizeof(err));
    free(chal);
    CHECK(resp == NULL);
    sasl_end(s);

    check_case = "server e= error";
    s = sasl_begin(AUTH_MECH_SCRAM_SHA_1, "user", "pencil", err, sizeof(err));
    sasl_set_nonce(s, "fyko+d2lbbFgONRv9qkxdawL");
    sasl_free(sasl_initial(s, err, sizeof(err)));
    chal = b64("r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096");
    sasl_free(sasl_step(s, chal, err, sizeof(err)));
    free(chal);
    chal = b64("e=invalid-proof");
    resp = sasl_step(s, chal, err, sizeof(err));
    free(chal);
    CHECK(resp == NULL);
    CHECK(strstr(err, "invalid-proof") != NULL);
    sasl_end(s);
}

static void test_cram(void)
{
    char err[256] = "";
    check_case = "RFC 2195 section 2";
    struct sasl *s = sasl_begin(AUTH_MECH_CRAM_MD5, "tim", "tanstaaftanstaaf", err, sizeof(err));
    char *line = sasl_initial(s, err, sizeof(err));
    CHECK_STR(line, "AUTH CRAM-MD5");
    sasl_free(line);
    char *resp =
        sasl_step(s, "PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+", err, sizeof(err));
    CHECK_STR(resp, "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw");
    sasl_free(resp);
    CHECK(sasl_success(s, err, sizeof(err)) == 0);
    check_case = "CRAM-MD5 second challenge";
    resp = sasl_step(s, "PDE+", err, sizeof(err));
    CHECK(resp == NULL);
    sasl_end(s);

    check_case = "CRAM-MD5 challenge not base64";
    s = sasl_begin(AUTH_MECH_CRAM_MD5, "tim", "x", err, sizeof(err));
    resp = sasl_step(s, "not base64!", err, sizeof(err));
    CHECK(resp == NULL);
    sasl_end(s);
}

static void test_hashes(void)
{
    unsigned char d[TLS_DIGEST_MAX];
    char *hex = malloc(2 * TLS_DIGEST_MAX + 1);
    check_case = "HMAC-SHA-256 RFC 4231 case 2";
    CHECK(tls_hmac(TLS_DIGEST_SHA256, "Jefe", 4, "what do ya want for nothing?", 28, d) == 0);
    for (size_t i = 0; i < 32; i++)
        sprintf(hex + 2 * i, "%02x", d[i]);
    CHECK_STR(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    check_case = "SHA-1 abc";
    CHECK(tls_hash(TLS_DIGEST_SHA1, "abc", 3, d) == 0);
    for (size_t i = 0; i < 20; i++)
        sprintf(hex + 2 * i, "%02x", d[i]);
    CHECK_STR(hex, "a9993e364706816aba3e25717850c26c9cd0d89d");
    check_case = "PBKDF2 refuses MD5 and zero iterations";
    CHECK(tls_pbkdf2_hmac(TLS_DIGEST_MD5, "a", 1, "b", 1, 1, d, 16) == -1);
    CHECK(tls_pbkdf2_hmac(TLS_DIGEST_SHA1, "a", 1, "b", 1, 0, d, 16) == -1);
    free(hex);
}

static void test_choose(void)
{
    unsigned all_pw = AUTH_MECH_PLAIN | AUTH_MECH_LOGIN | AUTH_MECH_CRAM_MD5 |
                      AUTH_MECH_SCRAM_SHA_1 | AUTH_MECH_SCRAM_SHA_256;
    unsigned tokens = AUTH_MECH_XOAUTH2 | AUTH_MECH_OAUTHBEARER;
    check_case = "default picks SCRAM-SHA-256";
    CHECK(sasl_choose(all_pw | tokens, 0) == AUTH_MECH_SCRAM_SHA_256);
    check_case = "default order";
    CHECK(sasl_choose(all_pw & ~AUTH_MECH_SCRAM_SHA_256, 0) == AUTH_MECH_SCRAM_SHA_1);
    CHECK(sasl_choose(AUTH_MECH_CRAM_MD5 | AUTH_MECH_PLAIN, 0) == AUTH_MECH_CRAM_MD5);
    CHECK(sasl_choose(AUTH_MECH_LOGIN | AUTH_MECH_PLAIN, 0) == AUTH_MECH_PLAIN);
    CHECK(sasl_choose(AUTH_MECH_LOGIN, 0) == AUTH_MECH_LOGIN);
    check_case = "tokens never by default";
    CHECK(sasl_choose(tokens, 0) == 0);
    check_case = "tokens when named";
    CHECK(sasl_choose(tokens | all_pw, AUTH_MECH_XOAUTH2) == AUTH_MECH_XOAUTH2);
    CHECK(sasl_choose(tokens, tokens) == AUTH_MECH_OAUTHBEARER);
    check_case = "restricted to what is allowed";
    CHECK(sasl_choose(all_pw, AUTH_MECH_LOGIN) == AUTH_MECH_LOGIN);
    CHECK(sasl_choose(AUTH_MECH_PLAIN, AUTH_MECH_LOGIN) == 0);
    CHECK_STR(sasl_mech_name(AUTH_MECH_SCRAM_SHA_1), "SCRAM-SHA-1");
}

static void test_tokens(void)
{
    char err[256] = "";
    check_case = "XOAUTH2 initial response";
    struct sasl *s = sasl_begin(AUTH_MECH_XOAUTH2, "me@example.com", "tok123", err, sizeof(err));
    char *line = sasl_initial(s, err, sizeof(err));
    CHECK(line != NULL && strncmp(line, "AUTH XOAUTH2 ", 13) == 0);
    char *raw = line ? unb64(line + 13) : NULL;
    CHECK_STR(raw, "user=me@example.com\001auth=Bearer tok123\001\001");
    free(raw);
    sasl_free(line);
    CHECK(!sasl_token_refused(s));
    char *resp = sasl_step(s, "eyJzdGF0dXMiOiI0MDEifQ==", err, sizeof(err));
    CHECK_STR(resp, "");
    sasl_free(resp);
    CHECK(sasl_token_refused(s));
    sasl_end(s);

    check_case = "OAUTHBEARER initial response and error flow";
    s = sasl_begin(AUTH_MECH_OAUTHBEARER, "me@example.com", "tok123", err, sizeof(err));
    line = sasl_initial(s, err, sizeof(err));
    raw = line ? unb64(line + strlen("AUTH OAUTHBEARER ")) : NULL;
    CHECK_STR(raw, "n,a=me@example.com,\001auth=Bearer tok123\001\001");
    free(raw);
    sasl_free(line);
    resp = sasl_step(s, "eyJzdGF0dXMiOiI0MDEifQ==", err, sizeof(err));
    CHECK_STR(resp, "AQ==");
    sasl_free(resp);
    sasl_end(s);

    check_case = "PLAIN and LOGIN";
    s = sasl_begin(AUTH_MECH_PLAIN, "alice", "s3cret", err, sizeof(err));
    line = sasl_initial(s, err, sizeof(err));
    CHECK_STR(line, "AUTH PLAIN AGFsaWNlAHMzY3JldA==");
    sasl_free(line);
    sasl_end(s);
    s = sasl_begin(AUTH_MECH_LOGIN, "alice", "s3cret", err, sizeof(err));
    line = sasl_initial(s, err, sizeof(err));
    CHECK_STR(line, "AUTH LOGIN");
    sasl_free(line);
    resp = sasl_step(s, "VXNlcm5hbWU6", err, sizeof(err));
    CHECK_STR(resp, "YWxpY2U=");
    sasl_free(resp);
    resp = sasl_step(s, "UGFzc3dvcmQ6", err, sizeof(err));
    CHECK_STR(resp, "czNjcmV0");
    sasl_free(resp);
    resp = sasl_step(s, "UGFzc3dvcmQ6", err, sizeof(err));
    CHECK(resp == NULL);
    sasl_end(s);
}

int main(int argc, char **argv)
{
    static const struct unit_group groups[] = {
        {"scram256", test_scram256}, {"scram1", test_scram1}, {"scram_misc", test_scram_misc},
        {"cram", test_cram},         {"hashes", test_hashes}, {"choose", test_choose},
        {"tokens", test_tokens},
    };
    return unit_main(argc, argv, groups, sizeof(groups) / sizeof(groups[0]));
}
