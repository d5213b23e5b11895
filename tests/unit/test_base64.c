/*
 * Base64 tests: RFC 4648 section 10 vectors, strict rejection of every
 * sloppy form a SASL peer might send, and random round trips.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base64.h"
#include "check.h"

static long decode_str(const char *in, unsigned char **out)
{
    size_t len = strlen(in);

    *out = malloc(len / 4 * 3 + 3);
    return base64_decode(in, len, *out);
}

static void test_base64(void)
{
    static const struct {
        const char *plain;
        const char *coded;
    } vectors[] = {
        {"", ""},
        {"f", "Zg=="},
        {"fo", "Zm8="},
        {"foo", "Zm9v"},
        {"foob", "Zm9vYg=="},
        {"fooba", "Zm9vYmE="},
        {"foobar", "Zm9vYmFy"},
        {"\0user\0secret", "AHVzZXIAc2VjcmV0"},
    };
    static const char *const bad[] = {
        "Zg",    "Zg=",   "Z===",     "====",     "Zh==",    "Zm9=",      "Zm8",  "Zm9v\n",
        "Zm 9v", " Zm9v", "Zm9v====", "Zg==Zg==", "Zm=v",    "Z-9v",      "Z_9v", "Zm9v\r\n",
        "Zm9\0", "=Zm9",  "Zg=a",     "Zm9vY",    "Zm9vYg=", "Zm9vYg===",
    };
    static const size_t plain_len[] = {0, 1, 2, 3, 4, 5, 6, 12};

    for (size_t i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++) {
        char enc[64];
        unsigned char *dec;
        long n;

        check_case = vectors[i].coded;
        CHECK(base64_encode((const unsigned char *)vectors[i].plain, plain_len[i], enc) ==
              strlen(vectors[i].coded));
        CHECK_STR(enc, vectors[i].coded);
        CHECK(strlen(enc) == BASE64_ENCODED_LEN(plain_len[i]));
        n = decode_str(vectors[i].coded, &dec);
        CHECK(n == (long)plain_len[i]);
        CHECK(n >= 0 && memcmp(dec, vectors[i].plain, plain_len[i]) == 0);
        free(dec);
    }

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        unsigned char *dec;
        check_case = bad[i];
        CHECK(decode_str(bad[i], &dec) == -1);
        free(dec);
    }

    /* An embedded NUL counts as a bad character, not as the end. */
    check_case = "NUL inside";
    {
        unsigned char out[8];
        CHECK(base64_decode("Zm\0v", 4, out) == -1);
    }

    check_case = "every byte value";
    {
        unsigned char all[256];
        char enc[BASE64_ENCODED_LEN(256) + 1];
        unsigned char dec[256 / 4 * 3 + 3 + 100];
        for (int i = 0; i < 256; i++)
            all[i] = (unsigned char)i;
        CHECK(base64_encode(all, 256, enc) == BASE64_ENCODED_LEN(256));
        CHECK(base64_decode(enc, strlen(enc), dec) == 256);
        CHECK(memcmp(all, dec, 256) == 0);
    }

    check_case = "random round trips";
    for (int iter = 0; iter < 2000; iter++) {
        size_t len = unit_rand() % 100;
        unsigned char *in = malloc(len + 1);
        char *enc = malloc(BASE64_ENCODED_LEN(len) + 1);
        unsigned char *dec = malloc(BASE64_ENCODED_LEN(len) / 4 * 3 + 3);
        for (size_t i = 0; i < len; i++)
            in[i] = (unsigned char)unit_rand();
        CHECK(base64_encode(in, len, enc) == BASE64_ENCODED_LEN(len));
        CHECK(enc[BASE64_ENCODED_LEN(len)] == '\0');
        CHECK(base64_decode(enc, BASE64_ENCODED_LEN(len), dec) == (long)len);
        CHECK(memcmp(in, dec, len) == 0);
        free(in);
        free(enc);
        free(dec);
    }
    check_case = NULL;
}

int main(int argc, char **argv)
{
    static const struct unit_group groups[] = {
        {"base64", test_base64},
    };

    return unit_main(argc, argv, groups, sizeof(groups) / sizeof(groups[0]));
}
