/*
 * Unit tests of the proxy handshakes (RFC 1928 SOCKS5, RFC 1929
 * user/password, HTTP CONNECT) and of proxy URL parsing.
 */
#include <stdint.h>

#include "check.h"
#include "proxy.h"

/* Feed a whole reply; returns the status and sets *used. */
static enum proxy_status feed(struct proxy_hs *h, const char *data, size_t len, size_t *used)
{
    return proxy_feed(h, data, len, used);
}

static void test_url(void)
{
    struct proxy_url u;
    char err[200];

    check_case = "socks5 plain";
    CHECK(proxy_url_parse("socks5://proxy.example:1080", &u, err, sizeof(err)) == 0);
    CHECK(u.kind == PROXY_SOCKS5);
    CHECK_STR(u.host, "proxy.example");
    CHECK(u.port == 1080);
    CHECK(u.user == NULL && u.password == NULL);
    proxy_url_clear(&u);

    check_case = "socks5 credentials, @ and %-escape in the password";
    CHECK(proxy_url_parse("socks5://bob:p%3Ass@w0rd@127.0.0.1:9050/", &u, err, sizeof(err)) == 0);
    CHECK_STR(u.user, "bob");
    CHECK_STR(u.password, "p:ss@w0rd");
    CHECK_STR(u.host, "127.0.0.1");
    CHECK(u.port == 9050);
    char *red = proxy_url_redacted(&u);
    CHECK_STR(red, "socks5://bob:***@127.0.0.1:9050");
    free(red);
    proxy_url_clear(&u);

    check_case = "http with IPv6 literal";
    CHECK(proxy_url_parse("http://[::1]:3128", &u, err, sizeof(err)) == 0);
    CHECK(u.kind == PROXY_HTTP);
    CHECK_STR(u.host, "::1");
    red = proxy_url_redacted(&u);
    CHECK_STR(red, "http://[::1]:3128");
    free(red);
    proxy_url_clear(&u);

    check_case = "http with credentials (Basic)";
    CHECK(proxy_url_parse("http://bob:p%40ss@proxy.example:3128", &u, err, sizeof(err)) == 0);
    CHECK(u.kind == PROXY_HTTP);
    CHECK_STR(u.user, "bob");
    CHECK_STR(u.password, "p@ss");
    red = proxy_url_redacted(&u);
    CHECK_STR(red, "http://bob:***@proxy.example:3128");
    free(red);
    proxy_url_clear(&u);

    static const char *const bad[] = {
        "socks4://h:1",       "http://user:@h:1",   "socks5://h",
        "socks5://h:0",       "socks5://h:65536",   "socks5://:1080",
        "socks5://h:12a",     "socks5://[::1:1080", "socks5://[zz]:1080",
        "socks5://u@h:1",     "socks5://u:%zz@h:1", "socks5://h o:1",
        "socks5://u:%00@h:1", "socks5://u:@h:1",    "",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        check_case = bad[i];
        err[0] = '\0';
        CHECK(proxy_url_parse(bad[i], &u, err, sizeof(err)) == -1);
        CHECK(err[0] != '\0');
        CHECK(u.host == NULL && u.user == NULL && u.password == NULL);
    }
    check_case = "error never repeats the password";
    CHECK(proxy_url_parse("socks5://u:topsecret@h", &u, err, sizeof(err)) == -1);
    CHECK(strstr(err, "topsecret") == NULL);
}

static void test_socks5(void)
{
    struct proxy_hs h;
    size_t n, used;
    const unsigned char *o;

    check_case = "no auth, domain name";
    CHECK(proxy_start(&h, PROXY_SOCKS5, "smtp.example.com", 587, NULL, NULL) == 0);
    o = proxy_output(&h, &n);
    CHECK(n == 3 && memcmp(o, "\x05\x01\x00", 3) == 0);
    proxy_sent(&h);
    CHECK(feed(&h, "\x05\x00", 2, &used) == PROXY_MORE && used == 2);
    o = proxy_output(&h, &n);
    CHECK(n == 4 + 1 + 16 + 2);
    CHECK(memcmp(o, "\x05\x01\x00\x03\x10smtp.example.com\x02\x4b", n) == 0);
    proxy_sent(&h);
    /* reply with an IPv4 bound address, then the greeting in the same read */
    static const char rep[] = "\x05\x00\x00\x01\x7f\x00\x00\x01\x30\x39"
                              "220 hi\r\n";
    CHECK(feed(&h, rep, sizeof(rep) - 1, &used) == PROXY_DONE);
    CHECK(used == 10);

    check_case = "byte by byte, domain bound address";
    CHECK(proxy_start(&h, PROXY_SOCKS5, "h", 25, NULL, NULL) == 0);
    proxy_sent(&h);
    static const char all[] = "\x05\x00"
                              "\x05\x00\x00\x03\x03"
                              "abc\x00\x19";
    enum proxy_status st = PROXY_MORE;
    size_t i;
    for (i = 0; i < sizeof(all) - 1 && st == PROXY_MORE; i++) {
        st = feed(&h, all + i, 1, &used);
        CHECK(used == 1);
        proxy_sent(&h);
    }
    CHECK(st == PROXY_DONE && i == sizeof(all) - 1);

    check_case = "IPv6 literal destination";
    CHECK(proxy_start(&h, PROXY_SOCKS5, "::1", 25, NULL, NULL) == 0);
    proxy_sent(&h);
    CHECK(feed(&h, "\x05\x00", 2, &used) == PROXY_MORE);
    o = proxy_output(&h, &n);
    CHECK(n == 22 && o[3] == 4 && o[19] == 1);

    check_case = "user/password";
    CHECK(proxy_start(&h, PROXY_SOCKS5, "h", 25, "al", "pw1") == 0);
    o = proxy_output(&h, &n);
    CHECK(n == 3 && memcmp(o, "\x05\x01\x02", 3) == 0);
    proxy_sent(&h);
    CHECK(feed(&h, "\x05\x02", 2, &used) == PROXY_MORE);
    o = proxy_output(&h, &n);
    CHECK(n == 8 && memcmp(o,
                           "\x01\x02"
                           "al"
                           "\x03"
                           "pw1",
                           8) == 0);
    proxy_sent(&h);
    CHECK(feed(&h, "\x01\x00", 2, &used) == PROXY_MORE);
    o = proxy_output(&h, &n);
    CHECK(n == 4 + 1 + 1 + 2 && o[3] == 3);
    proxy_sent(&h);
    CHECK(feed(&h, "\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00", 10, &used) == PROXY_DONE);

    check_case = "wrong password";
    CHECK(proxy_start(&h, PROXY_SOCKS5, "h", 25, "al", "pw1") == 0);
    CHECK(feed(&h, "\x05\x02", 2, &used) == PROXY_MORE);
    CHECK(feed(&h, "\x01\x01", 2, &used) == PROXY_REFUSED);
    CHECK(strstr(proxy_error(&h), "user name and password") != NULL);
    CHECK(strstr(proxy_error(&h), "pw1") == NULL);

    check_case = "no acceptable method";
    CHECK(proxy_start(&h, PROXY_SOCKS5, "h", 25, NULL, NULL) == 0);
    CHECK(feed(&h, "\x05\xff", 2, &used) == PROXY_REFUSED);
    CHECK(feed(&h, "\x05\x00", 2, &used) == PROXY_REFUSED); /* stays failed */

    check_case = "method not offered";
    CHECK(proxy_start(&h, PROXY_SOCKS5, "h", 25, NULL, NULL) == 0);
    CHECK(feed(&h, "\x05\x02", 2, &used) == PROXY_BAD);

    check_case = "connection refused (5)";
    CHECK(proxy_start(&h, PROXY_SOCKS5, "h", 25, NULL, NULL) == 0);
    CHECK(feed(&h, "\x05\x00", 2, &used) == PROXY_MORE);
    CHECK(feed(&h, "\x05\x05\x00\x01", 4, &used) == PROXY_REFUSED);
    CHECK(strstr(proxy_error(&h), "connection refused") != NULL);
    CHECK(h.status == 5);

    check_case = "malformed: version, reserved, address type";
    CHECK(proxy_start(&h, PROXY_SOCKS5, "h", 25, NULL, NULL) == 0);
    CHECK(feed(&h, "\x04\x00", 2, &used) == PROXY_BAD);
    CHECK(proxy_start(&h, PROXY_SOCKS5, "h", 25, NULL, NULL) == 0);
    CHECK(feed(&h, "\x05\x00\x05\x00\x01\x01", 6, &used) == PROXY_BAD);
    CHECK(proxy_start(&h, PROXY_SOCKS5, "h", 25, NULL, NULL) == 0);
    CHECK(feed(&h, "\x05\x00\x05\x00\x00\x07", 6, &used) == PROXY_BAD);
    CHECK(proxy_start(&h, PROXY_SOCKS5, "h", 25, NULL, NULL) == 0);
    CHECK(feed(&h, "\x05\x00\x05\x00\x00\x03\x00", 7, &used) == PROXY_BAD);

    check_case = "limits";
    char longname[300];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    CHECK(proxy_start(&h, PROXY_SOCKS5, longname, 25, NULL, NULL) == -1);
    CHECK(proxy_start(&h, PROXY_SOCKS5, "h", 25, "u", NULL) == -1);
    CHECK(proxy_start(&h, PROXY_SOCKS5, "h", 25, "u", longname) == -1);
    longname[255] = '\0';
    CHECK(proxy_start(&h, PROXY_SOCKS5, longname, 25, longname, longname) == 0);
    CHECK(feed(&h, "\x05\x02", 2, &used) == PROXY_MORE);
    o = proxy_output(&h, &n);
    CHECK(n == 3 + 255 + 255);
}

static void test_http(void)
{
    struct proxy_hs h;
    size_t n, used;
    const unsigned char *o;

    check_case = "request";
    CHECK(proxy_start(&h, PROXY_HTTP, "smtp.example.com", 465, NULL, NULL) == 0);
    o = proxy_output(&h, &n);
    static const char req[] = "CONNECT smtp.example.com:465 HTTP/1.1\r\n"
                              "Host: smtp.example.com:465\r\n\r\n";
    CHECK(n == sizeof(req) - 1 && memcmp(o, req, n) == 0);
    proxy_sent(&h);

    check_case = "200 with headers, greeting behind it";
    static const char rep[] = "HTTP/1.1 200 Connection established\r\n"
                              "Proxy-Agent: x\r\n\r\n220 hi\r\n";
    CHECK(feed(&h, rep, sizeof(rep) - 1, &used) == PROXY_DONE);
    CHECK(used == sizeof(rep) - 1 - 8);

    check_case = "bare LF, HTTP/1.0, no reason, byte at a time";
    CHECK(proxy_start(&h, PROXY_HTTP, "::1", 25, NULL, NULL) == 0);
    o = proxy_output(&h, &n);
    CHECK(memcmp(o, "CONNECT [::1]:25 HTTP/1.1\r\n", 27) == 0);
    static const char rep2[] = "HTTP/1.0 200\n\n";
    enum proxy_status st = PROXY_MORE;
    for (size_t i = 0; i < sizeof(rep2) - 1; i++) {
        CHECK(st == PROXY_MORE);
        st = feed(&h, rep2 + i, 1, &used);
    }
    CHECK(st == PROXY_DONE);

    check_case = "request with Basic credentials";
    CHECK(proxy_start(&h, PROXY_HTTP, "smtp.example.com", 587, "bob", "p@ss") == 0);
    o = proxy_output(&h, &n);
    static const char areq[] = "CONNECT smtp.example.com:587 HTTP/1.1\r\n"
                               "Host: smtp.example.com:587\r\n"
                               "Proxy-Authorization: Basic Ym9iOnBAc3M=\r\n\r\n";
    CHECK(n == sizeof(areq) - 1 && memcmp(o, areq, n) == 0);

    check_case = "longest credentials fit";
    char lu[PROXY_MAX_CRED + 1], lp[PROXY_MAX_CRED + 1], lh[PROXY_MAX_HOST + 1];
    memset(lu, 'u', PROXY_MAX_CRED);
    memset(lp, 'p', PROXY_MAX_CRED);
    memset(lh, 'h', PROXY_MAX_HOST);
    lu[PROXY_MAX_CRED] = lp[PROXY_MAX_CRED] = lh[PROXY_MAX_HOST] = '\0';
    CHECK(proxy_start(&h, PROXY_HTTP, lh, 65535, lu, lp) == 0);
    o = proxy_output(&h, &n);
    CHECK(n > 2 * PROXY_MAX_HOST + 4 * 171 && n <= sizeof(h.out));
    CHECK(n >= 4 && memcmp(o + n - 4, "\r\n\r\n", 4) == 0);

    check_case = "bad credentials refused";
    CHECK(proxy_start(&h, PROXY_HTTP, "h", 25, "a:b", "pw") == -1);
    CHECK(proxy_start(&h, PROXY_HTTP, "h", 25, "a", NULL) == -1);
    CHECK(proxy_start(&h, PROXY_HTTP, "h", 25, "", "pw") == -1);

    check_case = "407 names the credentials";
    CHECK(proxy_start(&h, PROXY_HTTP, "h", 25, "bob", "Zecret9") == 0);
    CHECK(feed(&h, "HTTP/1.1 407 Proxy Authentication Required\r\n\r\n", 46, &used) ==
          PROXY_REFUSED);
    CHECK(strstr(proxy_error(&h), "407") != NULL &&
          strstr(proxy_error(&h), "credentials") != NULL &&
          strstr(proxy_error(&h), "Zecret9") == NULL);

    check_case = "403";
    CHECK(proxy_start(&h, PROXY_HTTP, "h", 25, NULL, NULL) == 0);
    CHECK(feed(&h, "HTTP/1.1 403 Forbidden\r\n\r\n", 26, &used) == PROXY_REFUSED);
    CHECK(h.status == 403);
    CHECK(strstr(proxy_error(&h), "403 Forbidden") != NULL);

    static const char *const bad[] = {
        "SSH-2.0-OpenSSH\r\n",     "HTTP/1.1 2000 x\r\n", "HTTP/2 200\r\n", "HTTP/1.1 20x\r\n",
        "HTTP/1.1 200 ok\x01\r\n", "HTTP/1.1 099 x\r\n",  "\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        check_case = bad[i];
        CHECK(proxy_start(&h, PROXY_HTTP, "h", 25, NULL, NULL) == 0);
        CHECK(feed(&h, bad[i], strlen(bad[i]), &used) == PROXY_BAD);
    }

    check_case = "line limit";
    char big[PROXY_MAX_HTTP_LINE + 10];
    memset(big, 'a', sizeof(big));
    memcpy(big, "HTTP/1.1 200 ", 13);
    CHECK(proxy_start(&h, PROXY_HTTP, "h", 25, NULL, NULL) == 0);
    CHECK(feed(&h, big, sizeof(big), &used) == PROXY_BAD);
    CHECK(used <= PROXY_MAX_HTTP_LINE);

    check_case = "reply head limit";
    CHECK(proxy_start(&h, PROXY_HTTP, "h", 25, NULL, NULL) == 0);
    CHECK(feed(&h, "HTTP/1.1 200 ok\r\n", 17, &used) == PROXY_MORE);
    st = PROXY_MORE;
    for (int i = 0; i < 2000 && st == PROXY_MORE; i++)
        st = feed(&h, "X-Pad: 1234567\r\n", 16, &used);
    CHECK(st == PROXY_BAD);
    CHECK(strstr(proxy_error(&h), "longer") != NULL);
}

int main(int argc, char **argv)
{
    static const struct unit_group groups[] = {
        {"url", test_url},
        {"socks5", test_socks5},
        {"http", test_http},
    };
    return unit_main(argc, argv, groups, sizeof(groups) / sizeof(groups[0]));
}
