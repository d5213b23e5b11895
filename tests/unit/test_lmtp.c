/*
 * LMTP command parser and address check tests: what is accepted, what is
 * refused, and with which reply code, one row per case.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "config.h"
#include "lmtp_parse.h"
#include "spool.h"

#define S(lit) lit, sizeof(lit) - 1

struct row {
    const char *name;
    const char *line;
    size_t len;
    const char *err; /* expected reply prefix, NULL when the line is accepted */
    enum lmtp_verb verb;
    const char *path; /* MAIL/RCPT: expected path; others: expected arg (NULL: don't care) */
};

static void run_rows(const struct row *rows, size_t n)
{
    struct lmtp_cmd *cmd = malloc(sizeof(*cmd));

    for (size_t i = 0; i < n; i++) {
        const struct row *r = &rows[i];
        const char *err;

        check_case = r->name;
        err = lmtp_parse_command(r->line, r->len, cmd);
        if (r->err == NULL) {
            CHECK_STR(err, NULL);
            if (err != NULL)
                continue;
            CHECK(cmd->verb == r->verb);
            if (r->path != NULL && (r->verb == LMTP_MAIL || r->verb == LMTP_RCPT))
                CHECK_STR(cmd->path, r->path);
            else if (r->path != NULL)
                CHECK_STR(cmd->arg, r->path);
        } else {
            CHECK(err != NULL && strncmp(err, r->err, strlen(r->err)) == 0);
            if (err != NULL && strncmp(err, r->err, strlen(r->err)) != 0)
                fprintf(stderr, "  got \"%s\", want \"%s...\"\n", err, r->err);
        }
    }
    free(cmd);
    check_case = NULL;
}

/* "MAIL FROM:<" + local@domain + ">" with generated parts of given sizes. */
static char *long_address(size_t local, size_t domain)
{
    char *s = malloc(local + domain + 2);
    size_t o = 0;

    memset(s, 'l', local);
    o = local;
    if (domain > 0) {
        s[o++] = '@';
        /* labels of 60 letters joined by dots, the last one shortened */
        for (size_t i = 0; i < domain; i++)
            s[o++] = (i % 61 == 60 && i + 1 < domain) ? '.' : 'd';
    }
    s[o] = '\0';
    return s;
}

/* Parse prefix + addr + suffix as one command line. */
static const char *parse_with(const char *prefix, const char *addr, const char *suffix,
                              struct lmtp_cmd *cmd)
{
    static char line[MAILPOOL_MAX_COMMAND_LINE + 1];

    snprintf(line, sizeof(line), "%s%s%s", prefix, addr, suffix);
    return lmtp_parse_command(line, strlen(line), cmd);
}

static void test_mail(void)
{
    static const struct row rows[] = {
        {"plain", S("MAIL FROM:<a@example.com>"), NULL, LMTP_MAIL, "a@example.com"},
        {"lower case", S("mail from:<a@example.com>"), NULL, LMTP_MAIL, "a@example.com"},
        {"mixed case", S("MaIl FrOm:<a@example.com>"), NULL, LMTP_MAIL, "a@example.com"},
        {"space after colon", S("MAIL FROM: <a@example.com>"), NULL, LMTP_MAIL, "a@example.com"},
        {"two spaces after colon", S("MAIL FROM:  <a@example.com>"), "501 5.5.4", 0, NULL},
        {"space before colon", S("MAIL FROM :<a@example.com>"), "501 5.5.4", 0, NULL},
        {"two spaces after verb", S("MAIL  FROM:<a@example.com>"), "501 5.5.4", 0, NULL},
        {"no brackets", S("MAIL FROM:a@example.com"), "501 5.5.4", 0, NULL},
        {"no closing bracket", S("MAIL FROM:<a@example.com"), "501 5.5.4", 0, NULL},
        {"text after path", S("MAIL FROM:<a@example.com>x"), "501 5.5.4", 0, NULL},
        {"no argument", S("MAIL"), "501 5.5.4", 0, NULL},
        {"no FROM", S("MAIL <a@example.com>"), "501 5.5.4", 0, NULL},
        {"TO instead of FROM", S("MAIL TO:<a@example.com>"), "501 5.5.4", 0, NULL},
        {"null sender", S("MAIL FROM:<>"), NULL, LMTP_MAIL, ""},
        {"null sender with params", S("MAIL FROM:<> SIZE=10 BODY=8BITMIME"), NULL, LMTP_MAIL, ""},
        {"bare local part", S("MAIL FROM:<root>"), NULL, LMTP_MAIL, "root"},
        {"space in address", S("MAIL FROM:<a b@example.com>"), "501 5.1.7", 0, NULL},
        {"quoted local part", S("MAIL FROM:<\"a b\"@example.com>"), NULL, LMTP_MAIL,
         "\"a b\"@example.com"},
        {"quoted bracket", S("MAIL FROM:<\"a>b\"@example.com>"), NULL, LMTP_MAIL,
         "\"a>b\"@example.com"},
        {"quoted pair", S("MAIL FROM:<\"a\\\"b\"@example.com>"), NULL, LMTP_MAIL,
         "\"a\\\"b\"@example.com"},
        {"unterminated quote", S("MAIL FROM:<\"ab@example.com>"), "501 5.5.4", 0, NULL},
        {"source route stripped", S("MAIL FROM:<@a.example,@b.example:user@c.example>"), NULL,
         LMTP_MAIL, "user@c.example"},
        {"one-hop route", S("MAIL FROM:<@a.example:user@c.example>"), NULL, LMTP_MAIL,
         "user@c.example"},
        {"route without domain", S("MAIL FROM:<@:user@c.example>"), "501 5.1.7", 0, NULL},
        {"route missing @", S("MAIL FROM:<@a.example,b.example:user@c.example>"), "501 5.1.7", 0,
         NULL},
        {"route without mailbox", S("MAIL FROM:<@a.example:>"), "501 5.1.7", 0, NULL},
        {"route without colon", S("MAIL FROM:<@a.example>"), "501 5.1.7", 0, NULL},
        {"CR in address", S("MAIL FROM:<a\r@example.com>"), "501 5.5.2", 0, NULL},
        {"LF in address", S("MAIL FROM:<a\n@example.com>"), "501 5.5.2", 0, NULL},
        {"NUL in address", S("MAIL FROM:<a\0@example.com>"), "501 5.5.2", 0, NULL},
        {"NUL after path", S("MAIL FROM:<a@example.com>\0"), "501 5.5.2", 0, NULL},
        {"ESC in address", S("MAIL FROM:<\x1b[2Ja@example.com>"), "501 5.5.2", 0, NULL},
        {"DEL in address", S("MAIL FROM:<a\x7f@example.com>"), "501 5.5.2", 0, NULL},
        {"tab in address", S("MAIL FROM:<a\t@example.com>"), "501 5.5.2", 0, NULL},
        {"format string", S("MAIL FROM:<%n%s%x@example.com>"), NULL, LMTP_MAIL,
         "%n%s%x@example.com"},
        {"UTF-8 without SMTPUTF8", S("MAIL FROM:<j\xc3\xb6rg@example.com>"), "501 5.1.7", 0, NULL},
        {"UTF-8 with SMTPUTF8",
         S("MAIL FROM:<j\xc3\xb6rg@b\xc3\xbc"
           "cher.example> SMTPUTF8"),
         NULL, LMTP_MAIL,
         "j\xc3\xb6rg@b\xc3\xbc"
         "cher.example"},
        {"invalid UTF-8", S("MAIL FROM:<j\xffrg@example.com> SMTPUTF8"), "501 5.1.7", 0, NULL},
        {"overlong UTF-8", S("MAIL FROM:<\xc0\xaf@example.com> SMTPUTF8"), "501 5.1.7", 0, NULL},
        {"surrogate", S("MAIL FROM:<\xed\xa0\x80@example.com> SMTPUTF8"), "501 5.1.7", 0, NULL},
        {"double @", S("MAIL FROM:<a@b@example.com>"), "501 5.1.7", 0, NULL},
    };
    struct lmtp_cmd *cmd = malloc(sizeof(*cmd));
    char *addr;

    run_rows(rows, sizeof(rows) / sizeof(rows[0]));

    /* Lengths: RFC 5321 limits pass, one more octet is a 501, never a cut. */
    check_case = "local part 64";
    addr = long_address(64, 11);
    CHECK_STR(parse_with("MAIL FROM:<", addr, ">", cmd), NULL);
    CHECK_STR(cmd->path, addr);
    free(addr);
    check_case = "local part 65";
    addr = long_address(65, 11);
    CHECK_STR(parse_with("MAIL FROM:<", addr, ">", cmd), "501 5.1.7 Sender address too long");
    free(addr);
    check_case = "path 256";
    addr = long_address(64, 256 - 65);
    CHECK(strlen(addr) == 256);
    CHECK_STR(parse_with("MAIL FROM:<", addr, ">", cmd), NULL);
    CHECK_STR(cmd->path, addr);
    free(addr);
    check_case = "path 257";
    addr = long_address(64, 257 - 65);
    CHECK_STR(parse_with("MAIL FROM:<", addr, ">", cmd), "501 5.1.7 Sender address too long");
    free(addr);
    check_case = "path 1900";
    addr = long_address(64, 1900);
    CHECK_STR(parse_with("MAIL FROM:<", addr, ">", cmd), "501 5.1.7 Sender address too long");
    free(addr);
    check_case = "route makes it too long";
    addr = long_address(64, 180);
    CHECK_STR(parse_with("MAIL FROM:<@relay.example.com,@relay2.example.com:", addr, ">", cmd),
              "501 5.1.7 Sender address too long");
    free(addr);
    check_case = NULL;
    free(cmd);
}

static void test_rcpt(void)
{
    static const struct row rows[] = {
        {"plain", S("RCPT TO:<b@example.com>"), NULL, LMTP_RCPT, "b@example.com"},
        {"lower case, space", S("rcpt to: <b@example.com>"), NULL, LMTP_RCPT, "b@example.com"},
        {"null recipient", S("RCPT TO:<>"), "501 5.1.3", 0, NULL},
        {"null recipient, space", S("RCPT TO: <>"), "501 5.1.3", 0, NULL},
        {"postmaster", S("RCPT TO:<Postmaster>"), NULL, LMTP_RCPT, "Postmaster"},
        {"DSN parameter", S("RCPT TO:<b@example.com> NOTIFY=NEVER"), NULL, LMTP_RCPT,
         "b@example.com"},
        {"ORCPT", S("RCPT TO:<b@example.com> ORCPT=rfc822;b@example.com"), NULL, LMTP_RCPT,
         "b@example.com"},
        {"unknown parameter", S("RCPT TO:<b@example.com> FOO=bar"), "555 5.5.4", 0, NULL},
        {"parameter after bad path", S("RCPT TO:<b@@example.com> NOTIFY=NEVER"), "501 5.1.3", 0,
         NULL},
        {"trailing space", S("RCPT TO:<b@example.com> "), "501 5.5.4", 0, NULL},
        {"FROM instead of TO", S("RCPT FROM:<b@example.com>"), "501 5.5.4", 0, NULL},
        {"no argument", S("RCPT"), "501 5.5.4", 0, NULL},
        {"double @", S("RCPT TO:<b@@example.com>"), "501 5.1.3", 0, NULL},
        {"leading dot", S("RCPT TO:<.b@example.com>"), "501 5.1.3", 0, NULL},
        {"trailing dot", S("RCPT TO:<b.@example.com>"), "501 5.1.3", 0, NULL},
        {"double dot", S("RCPT TO:<b..c@example.com>"), "501 5.1.3", 0, NULL},
        {"dotted local part", S("RCPT TO:<b.c.d@example.com>"), NULL, LMTP_RCPT,
         "b.c.d@example.com"},
        {"atext specials", S("RCPT TO:<a!#$%&'*+-/=?^_`{|}~@example.com>"), NULL, LMTP_RCPT,
         "a!#$%&'*+-/=?^_`{|}~@example.com"},
        {"empty domain", S("RCPT TO:<b@>"), "501 5.1.3", 0, NULL},
        {"empty local part", S("RCPT TO:<@example.com>"), "501 5.1.3", 0, NULL},
        {"hyphen first", S("RCPT TO:<b@-example.com>"), "501 5.1.3", 0, NULL},
        {"hyphen last", S("RCPT TO:<b@example-.com>"), "501 5.1.3", 0, NULL},
        {"empty label", S("RCPT TO:<b@example..com>"), "501 5.1.3", 0, NULL},
        {"trailing dot in domain", S("RCPT TO:<b@example.com.>"), "501 5.1.3", 0, NULL},
        {"underscore in domain", S("RCPT TO:<b@ex_ample.com>"), "501 5.1.3", 0, NULL},
        {"IPv4 literal", S("RCPT TO:<b@[192.0.2.1]>"), NULL, LMTP_RCPT, "b@[192.0.2.1]"},
        {"IPv6 literal", S("RCPT TO:<b@[IPv6:2001:db8::1]>"), NULL, LMTP_RCPT,
         "b@[IPv6:2001:db8::1]"},
        {"empty literal", S("RCPT TO:<b@[]>"), "501 5.1.3", 0, NULL},
        {"open literal", S("RCPT TO:<b@[192.0.2.1>"), "501 5.1.3", 0, NULL},
        {"unclosed literal", S("RCPT TO:<b@[192.0.2.1>x"), "501 5.5.4", 0, NULL},
        {"angle in literal", S("RCPT TO:<b@[a>b]>"), "501 5.5.4", 0, NULL},
        {"terminal escape", S("RCPT TO:<\x1b[31m@example.com>"), "501 5.5.2", 0, NULL},
        {"CRLF injection", S("RCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>"), "501 5.5.2", 0,
         NULL},
        {"NUL truncation", S("RCPT TO:<b@example.com\0.evil>"), "501 5.5.2", 0, NULL},
        {"UTF-8 left to the caller", S("RCPT TO:<j\xc3\xb6rg@example.com>"), NULL, LMTP_RCPT,
         "j\xc3\xb6rg@example.com"},
        {"source route", S("RCPT TO:<@hop.example:b@example.com>"), NULL, LMTP_RCPT,
         "b@example.com"},
        {"unterminated quote", S("RCPT TO:<\"b@example.com>"), "501 5.5.4", 0, NULL},
    };
    struct lmtp_cmd *cmd = malloc(sizeof(*cmd));
    char *addr;

    run_rows(rows, sizeof(rows) / sizeof(rows[0]));

    check_case = "local part 65";
    addr = long_address(65, 11);
    CHECK_STR(parse_with("RCPT TO:<", addr, ">", cmd), "501 5.1.3 Recipient address too long");
    free(addr);
    check_case = "path 256";
    addr = long_address(64, 256 - 65);
    CHECK_STR(parse_with("RCPT TO:<", addr, ">", cmd), NULL);
    CHECK_STR(cmd->path, addr);
    free(addr);
    check_case = "path 257";
    addr = long_address(64, 257 - 65);
    CHECK_STR(parse_with("RCPT TO:<", addr, ">", cmd), "501 5.1.3 Recipient address too long");
    free(addr);
    check_case = "label 64";
    CHECK(parse_with("RCPT TO:<b@",
                     "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd",
                     ".example>", cmd) != NULL);
    check_case = "label 63";
    CHECK_STR(parse_with("RCPT TO:<b@",
                         "ddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd",
                         ".example>", cmd),
              NULL);
    check_case = NULL;
    free(cmd);
}

static void test_params(void)
{
    static const struct {
        const char *name;
        const char *params;
        const char *err;
        int has_size;
        unsigned long long size;
        enum body_type body;
        int smtputf8;
        const char *relay;
        int mode;
    } rows[] = {
        {"none", "", NULL, 0, 0, BODY_7BIT, 0, "", -1},
        {"SIZE", " SIZE=1000", NULL, 1, 1000, BODY_7BIT, 0, "", -1},
        {"SIZE zero", " SIZE=0", NULL, 1, 0, BODY_7BIT, 0, "", -1},
        {"SIZE max", " SIZE=18446744073709551615", NULL, 1, 18446744073709551615ULL, BODY_7BIT, 0,
         "", -1},
        {"SIZE overflow", " SIZE=18446744073709551616", "501 5.5.4", 0, 0, 0, 0, "", -1},
        {"SIZE huge", " SIZE=999999999999999999999999999", "501 5.5.4", 0, 0, 0, 0, "", -1},
        {"SIZE negative", " SIZE=-1", "501 5.5.4", 0, 0, 0, 0, "", -1},
        {"SIZE junk", " SIZE=1x", "501 5.5.4", 0, 0, 0, 0, "", -1},
        {"SIZE no value", " SIZE", "501 5.5.4", 0, 0, 0, 0, "", -1},
        {"SIZE empty value", " SIZE=", "501 5.5.2", 0, 0, 0, 0, "", -1},
        {"BODY 8BITMIME", " BODY=8BITMIME", NULL, 0, 0, BODY_8BITMIME, 0, "", -1},
        {"body lower case", " body=8bitmime", NULL, 0, 0, BODY_8BITMIME, 0, "", -1},
        {"BODY 7BIT", " BODY=7BIT", NULL, 0, 0, BODY_7BIT, 0, "", -1},
        {"BODY BINARYMIME", " BODY=BINARYMIME", "501 5.5.4", 0, 0, 0, 0, "", -1},
        {"SMTPUTF8", " SMTPUTF8", NULL, 0, 0, BODY_7BIT, 1, "", -1},
        {"SMTPUTF8 with value", " SMTPUTF8=yes", "501 5.5.4", 0, 0, 0, 0, "", -1},
        {"XRELAY", " XRELAY=gmail", NULL, 0, 0, BODY_7BIT, 0, "gmail", -1},
        {"XRELAY charset", " xrelay=My_relay-1.b", NULL, 0, 0, BODY_7BIT, 0, "My_relay-1.b", -1},
        {"XRELAY 64", " XRELAY=rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr",
         NULL, 0, 0, BODY_7BIT, 0,
         "rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr", -1},
        {"XRELAY 65", " XRELAY=rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr",
         "501 5.5.4", 0, 0, 0, 0, "", -1},
        {"XRELAY slash", " XRELAY=../etc", "501 5.5.4", 0, 0, 0, 0, "", -1},
        {"XRELAY 8-bit", " XRELAY=r\xc3\xa9lai", "501 5.5.2", 0, 0, 0, 0, "", -1},
        {"XRELAY no value", " XRELAY", "501 5.5.4", 0, 0, 0, 0, "", -1},
        {"XMODE relay", " XMODE=relay", NULL, 0, 0, BODY_7BIT, 0, "", MODE_RELAY},
        {"XMODE queue", " XMODE=QUEUE", NULL, 0, 0, BODY_7BIT, 0, "", MODE_QUEUE},
        {"XMODE other", " XMODE=later", "501 5.5.4", 0, 0, 0, 0, "", -1},
        {"all", " SIZE=42 BODY=8BITMIME SMTPUTF8 XRELAY=ses XMODE=relay", NULL, 1, 42,
         BODY_8BITMIME, 1, "ses", MODE_RELAY},
        {"unknown", " FOO=bar", "555 5.5.4", 0, 0, 0, 0, "", -1},
        {"unknown keyword only", " FOO", "555 5.5.4", 0, 0, 0, 0, "", -1},
        {"DSN RET", " RET=HDRS", NULL, 0, 0, BODY_7BIT, 0, "", -1},
        {"DSN ENVID", " ENVID=abc", NULL, 0, 0, BODY_7BIT, 0, "", -1},
        {"DSN RCPT parameter on MAIL", " NOTIFY=NEVER", "555 5.5.4", 0, 0, 0, 0, "", -1},
        {"AUTH", " AUTH=<>", "555 5.5.4", 0, 0, 0, 0, "", -1},
        {"unknown after good", " SIZE=1 FOO=1", "555 5.5.4", 0, 0, 0, 0, "", -1},
        {"duplicate SIZE", " SIZE=1 SIZE=2", "501 5.5.4", 0, 0, 0, 0, "", -1},
        {"duplicate any case", " SMTPUTF8 smtputf8", "501 5.5.4", 0, 0, 0, 0, "", -1},
        {"duplicate XRELAY", " XRELAY=a XRELAY=b", "501 5.5.4", 0, 0, 0, 0, "", -1},
        {"duplicate XMODE", " XMODE=relay XMODE=relay", "501 5.5.4", 0, 0, 0, 0, "", -1},
        {"unknown before duplicate", " FOO=1 SIZE=1 SIZE=2", "555", 0, 0, 0, 0, "", -1},
        {"double space", " SIZE=1  BODY=7BIT", "501 5.5.2", 0, 0, 0, 0, "", -1},
        {"trailing space", " SIZE=1 ", "501 5.5.2", 0, 0, 0, 0, "", -1},
        {"lone space", " ", "501 5.5.2", 0, 0, 0, 0, "", -1},
        {"no keyword", " =x", "501 5.5.2", 0, 0, 0, 0, "", -1},
        {"two equals", " SIZE=1=2", "501 5.5.2", 0, 0, 0, 0, "", -1},
        {"bad keyword", " SI_ZE=1", "501 5.5.2", 0, 0, 0, 0, "", -1},
        {"keyword starting with hyphen", " -X=1", "501 5.5.2", 0, 0, 0, 0, "", -1},
    };
    struct lmtp_cmd *cmd = malloc(sizeof(*cmd));

    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        char line[512];
        const char *err;

        check_case = rows[i].name;
        snprintf(line, sizeof(line), "MAIL FROM:<a@example.com>%s", rows[i].params);
        err = lmtp_parse_command(line, strlen(line), cmd);
        if (rows[i].err != NULL) {
            CHECK(err != NULL && strncmp(err, rows[i].err, strlen(rows[i].err)) == 0);
            if (err != NULL && strncmp(err, rows[i].err, strlen(rows[i].err)) != 0)
                fprintf(stderr, "  got \"%s\"\n", err);
            continue;
        }
        CHECK_STR(err, NULL);
        CHECK(cmd->verb == LMTP_MAIL);
        CHECK_STR(cmd->path, "a@example.com");
        CHECK(cmd->has_size == rows[i].has_size);
        CHECK(cmd->size == rows[i].size);
        CHECK(cmd->body == rows[i].body);
        CHECK(cmd->smtputf8 == rows[i].smtputf8);
        CHECK_STR(cmd->relay, rows[i].relay);
        CHECK(cmd->mode == rows[i].mode);
    }
    check_case = NULL;
    free(cmd);
}

static void test_verbs(void)
{
    static const struct row rows[] = {
        {"LHLO", S("LHLO client.example"), NULL, LMTP_LHLO, "client.example"},
        {"lhlo", S("lhlo client.example"), NULL, LMTP_LHLO, "client.example"},
        {"LHLO literal", S("LHLO [127.0.0.1]"), NULL, LMTP_LHLO, "[127.0.0.1]"},
        {"LHLO trailing space", S("LHLO client.example "), NULL, LMTP_LHLO, "client.example"},
        {"LHLO format string", S("LHLO %n%s%n"), NULL, LMTP_LHLO, "%n%s%n"},
        {"LHLO no name", S("LHLO"), "501 5.5.4", 0, NULL},
        {"LHLO blank name", S("LHLO  "), "501 5.5.4", 0, NULL},
        {"LHLO escape", S("LHLO \x1b]0;pwned\x07"), "501 5.5.2", 0, NULL},
        {"HELO", S("HELO client.example"), NULL, LMTP_HELO, "client.example"},
        {"EHLO", S("ehlo client.example"), NULL, LMTP_EHLO, "client.example"},
        {"DATA", S("DATA"), NULL, LMTP_DATA, NULL},
        {"data", S("data"), NULL, LMTP_DATA, NULL},
        {"DATA with argument", S("DATA now"), "501 5.5.4", 0, NULL},
        {"DATA with space", S("DATA "), "501 5.5.4", 0, NULL},
        {"RSET", S("RSET"), NULL, LMTP_RSET, NULL},
        {"QUIT", S("QUIT"), NULL, LMTP_QUIT, NULL},
        {"QUIT with argument", S("QUIT now"), "501", 0, NULL},
        {"NOOP", S("NOOP"), NULL, LMTP_NOOP, ""},
        {"NOOP with text", S("NOOP keep alive"), NULL, LMTP_NOOP, "keep alive"},
        {"VRFY", S("VRFY root"), NULL, LMTP_VRFY, "root"},
        {"HELP", S("HELP"), NULL, LMTP_HELP, ""},
        {"STARTTLS", S("STARTTLS"), NULL, LMTP_STARTTLS, NULL},
        {"AUTH", S("AUTH PLAIN"), NULL, LMTP_AUTH, "PLAIN"},
        {"BDAT", S("BDAT 100"), NULL, LMTP_BDAT, NULL},
        {"BDAT LAST", S("BDAT 0 LAST"), NULL, LMTP_BDAT, NULL},
        {"bdat last", S("bdat 5 last"), NULL, LMTP_BDAT, NULL},
        {"BDAT no size", S("BDAT"), "501 5.5.4", 0, NULL},
        {"BDAT word", S("BDAT x"), "501 5.5.4", 0, NULL},
        {"BDAT negative", S("BDAT -1"), "501 5.5.4", 0, NULL},
        {"BDAT overflow", S("BDAT 99999999999999999999999"), "501 5.5.4", 0, NULL},
        {"BDAT LAST junk", S("BDAT 5 LAST x"), "501 5.5.4", 0, NULL},
        {"BDAT not LAST", S("BDAT 5 FIRST"), "501 5.5.4", 0, NULL},
        {"BDAT two spaces", S("BDAT  5"), "501 5.5.4", 0, NULL},
        {"empty line", S(""), "500 5.5.1", 0, NULL},
        {"unknown", S("FOO bar"), "500 5.5.1", 0, NULL},
        {"verb glued", S("MAILFROM:<a@example.com>"), "500 5.5.1", 0, NULL},
        {"verb prefix", S("DAT"), "500 5.5.1", 0, NULL},
        {"verb longer", S("DATAX"), "500 5.5.1", 0, NULL},
        {"leading space", S(" DATA"), "500 5.5.1", 0, NULL},
        {"XCLIENT", S("XCLIENT ADDR=1.2.3.4"), "500 5.5.1", 0, NULL},
        {"control in unknown", S("\x1b[2J"), "501 5.5.2", 0, NULL},
        {"NUL verb", S("DA\0TA"), "501 5.5.2", 0, NULL},
    };
    struct lmtp_cmd *cmd = malloc(sizeof(*cmd));
    char *big;
    const char *err;

    run_rows(rows, sizeof(rows) / sizeof(rows[0]));

    check_case = "BDAT fields";
    CHECK_STR(lmtp_parse_command(S("BDAT 123456 LAST"), cmd), NULL);
    CHECK(cmd->chunk_size == 123456 && cmd->last == 1);
    CHECK_STR(lmtp_parse_command(S("BDAT 18446744073709551615"), cmd), NULL);
    CHECK(cmd->chunk_size == 18446744073709551615ULL && cmd->last == 0);

    /* Longest allowed line, then one byte more, then 1 MB without a line end. */
    check_case = "line length";
    big = malloc(1024 * 1024);
    memset(big, 'x', 1024 * 1024);
    memcpy(big, "NOOP ", 5);
    err = lmtp_parse_command(big, MAILPOOL_MAX_COMMAND_LINE, cmd);
    CHECK_STR(err, NULL);
    CHECK(strlen(cmd->arg) == MAILPOOL_MAX_COMMAND_LINE - 5);
    err = lmtp_parse_command(big, MAILPOOL_MAX_COMMAND_LINE + 1, cmd);
    CHECK(err != NULL && strncmp(err, "500 5.5.2", 9) == 0);
    err = lmtp_parse_command(big, 1024 * 1024, cmd);
    CHECK(err != NULL && strncmp(err, "500 5.5.2", 9) == 0);
    free(big);

    /* Fields of a previous command never leak into the next. */
    check_case = "reset between commands";
    CHECK_STR(lmtp_parse_command(S("MAIL FROM:<a@example.com> XRELAY=x XMODE=relay SIZE=5"), cmd),
              NULL);
    CHECK_STR(lmtp_parse_command(S("MAIL FROM:<>"), cmd), NULL);
    CHECK(cmd->relay[0] == '\0' && cmd->mode == -1 && !cmd->has_size && cmd->size == 0);
    CHECK(cmd->path[0] == '\0');
    check_case = NULL;
    free(cmd);
}

static void test_addr(void)
{
    static const struct {
        const char *name;
        const char *addr;
        size_t len;
        int ok_ascii;
        int ok_utf8;
    } rows[] = {
        {"plain", S("a@example.com"), 1, 1},
        {"bare local part", S("root"), 1, 1},
        {"quoted bare", S("\"a b\""), 1, 1},
        {"quoted pair", S("\"a\\\"b\"@x.example"), 1, 1},
        {"quoted then text", S("\"a\"b@x.example"), 0, 0},
        {"quoted backslash end", S("\"a\\"), 0, 0},
        {"quoted CR", S("\"a\rb\"@x.example"), 0, 0},
        {"quoted pair with NUL", S("\"a\\\0\"@x.example"), 0, 0},
        {"empty", S(""), 0, 0},
        {"double @", S("a@b@c"), 0, 0},
        {"empty domain", S("a@"), 0, 0},
        {"empty local", S("@b"), 0, 0},
        {"NUL", S("a\0b@x.example"), 0, 0},
        {"space", S("a b@x.example"), 0, 0},
        {"space in domain", S("a@x .example"), 0, 0},
        {"ESC", S("a\x1b@x.example"), 0, 0},
        {"DEL", S("a\x7f@x.example"), 0, 0},
        {"LF", S("a\n@x.example"), 0, 0},
        {"UTF-8 local", S("j\xc3\xb6rg@example.com"), 0, 1},
        {"UTF-8 domain",
         S("a@b\xc3\xbc"
           "cher.example"),
         0, 1},
        {"UTF-8 quoted", S("\"j\xc3\xb6 rg\"@example.com"), 0, 1},
        {"4-byte UTF-8", S("\xf0\x9f\x93\xa7@example.com"), 0, 1},
        {"surrogate", S("\xed\xa0\x80@x.example"), 0, 0},
        {"above U+10FFFF", S("\xf4\x90\x80\x80@x.example"), 0, 0},
        {"overlong NUL", S("\xc0\x80@x.example"), 0, 0},
        {"truncated sequence", S("a\xc3@x.example"), 0, 0},
        {"truncated at end", S("a@x.example\xc3"), 0, 0},
        {"lone continuation", S("\x80@x.example"), 0, 0},
        {"C1 control as UTF-8", S("a\xc2\x9b@x.example"), 0, 0},
        {"IPv4 literal", S("a@[127.0.0.1]"), 1, 1},
        {"IPv6 literal", S("a@[IPv6:::1]"), 1, 1},
        {"literal with angle", S("a@[a>b]"), 0, 0},
        {"literal with quote", S("a@[a\"b]"), 0, 0},
        {"literal unclosed", S("a@[127.0.0.1"), 0, 0},
        {"dots", S("a.b.c@x.example"), 1, 1},
        {"double dot", S("a..b@x.example"), 0, 0},
        {"dot before @", S("a.@x.example"), 0, 0},
        {"leading dot", S(".a@x.example"), 0, 0},
        {"trailing dot bare", S("a."), 0, 0},
        {"digits domain", S("a@123.example"), 1, 1},
        {"single label domain", S("a@localhost"), 1, 1},
        {"angle bracket", S("a<b@x.example"), 0, 0},
        {"comma", S("a,b@x.example"), 0, 0},
    };

    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        check_case = rows[i].name;
        CHECK((addr_check(rows[i].addr, rows[i].len, 0) == NULL) == rows[i].ok_ascii);
        CHECK((addr_check(rows[i].addr, rows[i].len, 1) == NULL) == rows[i].ok_utf8);
    }

    /* Length limits of RFC 5321 4.5.3.1. */
    {
        char *a;

        check_case = "local part 64/65";
        a = long_address(64, 9);
        CHECK(addr_check(a, strlen(a), 0) == NULL);
        free(a);
        a = long_address(65, 9);
        CHECK(addr_check(a, strlen(a), 0) != NULL);
        free(a);
        check_case = "bare local part 64/65";
        a = long_address(64, 0);
        CHECK(addr_check(a, strlen(a), 0) == NULL);
        free(a);
        a = long_address(65, 0);
        CHECK(addr_check(a, strlen(a), 0) != NULL);
        free(a);
        check_case = "whole 256/257";
        a = long_address(10, 245);
        CHECK(strlen(a) == 256);
        CHECK(addr_check(a, strlen(a), 0) == NULL);
        free(a);
        a = long_address(10, 246);
        CHECK(addr_check(a, strlen(a), 0) != NULL);
        free(a);
        check_case = "domain 255 is over the path limit with a local part";
        a = long_address(1, 255);
        CHECK(addr_check(a, strlen(a), 0) != NULL);
        free(a);
        check_case = "domain 254";
        a = long_address(1, 254);
        CHECK(addr_check(a, strlen(a), 0) == NULL);
        free(a);
        check_case = "huge";
        a = long_address(64, 100000);
        CHECK(addr_check(a, strlen(a), 1) != NULL);
        free(a);
    }
    check_case = NULL;
}

/* DSN parameters (RFC 3461): what each stores, and what gets 501 or 555. */
static void test_dsn(void)
{
    enum {
        NEVER = SPOOL_NOTIFY_NEVER,
        SUCCESS = SPOOL_NOTIFY_SUCCESS,
        FAILURE = SPOOL_NOTIFY_FAILURE,
        DELAY = SPOOL_NOTIFY_DELAY,
        FULL = SPOOL_RET_FULL,
        HDRS = SPOOL_RET_HDRS,
    };
    static const struct {
        const char *name;
        const char *line;
        const char *err; /* expected reply prefix, NULL when accepted */
        int ret;
        const char *envid;
        unsigned notify;
        const char *orcpt;
    } rows[] = {
        /* MAIL: RET */
        {"RET FULL", "MAIL FROM:<a@example.com> RET=FULL", NULL, FULL, "", 0, ""},
        {"RET HDRS lower case", "mail from:<a@example.com> ret=hdrs", NULL, HDRS, "", 0, ""},
        {"RET mixed case", "MAIL FROM:<a@example.com> Ret=Full", NULL, FULL, "", 0, ""},
        {"RET null sender", "MAIL FROM:<> RET=HDRS", NULL, HDRS, "", 0, ""},
        {"RET other", "MAIL FROM:<a@example.com> RET=NONE", "501 5.5.4", 0, "", 0, ""},
        {"RET prefix", "MAIL FROM:<a@example.com> RET=FUL", "501 5.5.4", 0, "", 0, ""},
        {"RET longer", "MAIL FROM:<a@example.com> RET=FULLX", "501 5.5.4", 0, "", 0, ""},
        {"RET no value", "MAIL FROM:<a@example.com> RET", "501 5.5.4", 0, "", 0, ""},
        {"RET empty value", "MAIL FROM:<a@example.com> RET=", "501 5.5.2", 0, "", 0, ""},
        {"RET duplicate", "MAIL FROM:<a@example.com> RET=FULL RET=HDRS", "501 5.5.4", 0, "", 0, ""},
        {"RET duplicate any case", "MAIL FROM:<a@example.com> RET=FULL ret=FULL", "501 5.5.4", 0,
         "", 0, ""},
        /* MAIL: ENVID */
        {"ENVID", "MAIL FROM:<a@example.com> ENVID=QQ314159", NULL, 0, "QQ314159", 0, ""},
        {"ENVID lower-case keyword", "MAIL FROM:<a@example.com> envid=x", NULL, 0, "x", 0, ""},
        {"ENVID kept encoded", "MAIL FROM:<a@example.com> ENVID=a+2Bb+3Dc+20d", NULL, 0,
         "a+2Bb+3Dc+20d", 0, ""},
        {"ENVID punctuation", "MAIL FROM:<a@example.com> ENVID=<id@host>!~", NULL, 0, "<id@host>!~",
         0, ""},
        {"ENVID lower-case hex", "MAIL FROM:<a@example.com> ENVID=a+2b", "501 5.5.4", 0, "", 0, ""},
        {"ENVID bare plus", "MAIL FROM:<a@example.com> ENVID=a+", "501 5.5.4", 0, "", 0, ""},
        {"ENVID short escape", "MAIL FROM:<a@example.com> ENVID=a+2", "501 5.5.4", 0, "", 0, ""},
        {"ENVID non-hex escape", "MAIL FROM:<a@example.com> ENVID=a+G1", "501 5.5.4", 0, "", 0, ""},
        {"ENVID CRLF escape", "MAIL FROM:<a@example.com> ENVID=a+0D+0ABcc:+20x", "501 5.5.4", 0, "",
         0, ""},
        {"ENVID NUL escape", "MAIL FROM:<a@example.com> ENVID=a+00", "501 5.5.4", 0, "", 0, ""},
        {"ENVID ESC escape", "MAIL FROM:<a@example.com> ENVID=+1B[2J", "501 5.5.4", 0, "", 0, ""},
        {"ENVID DEL escape", "MAIL FROM:<a@example.com> ENVID=+7F", "501 5.5.4", 0, "", 0, ""},
        {"ENVID 8-bit escape", "MAIL FROM:<a@example.com> ENVID=+C3+A9", "501 5.5.4", 0, "", 0, ""},
        {"ENVID raw 8-bit", "MAIL FROM:<a@example.com> ENVID=\xc3\xa9", "501 5.5.2", 0, "", 0, ""},
        {"ENVID raw equals", "MAIL FROM:<a@example.com> ENVID=a=b", "501 5.5.2", 0, "", 0, ""},
        {"ENVID no value", "MAIL FROM:<a@example.com> ENVID", "501 5.5.4", 0, "", 0, ""},
        {"ENVID empty", "MAIL FROM:<a@example.com> ENVID=", "501 5.5.2", 0, "", 0, ""},
        {"ENVID duplicate", "MAIL FROM:<a@example.com> ENVID=a ENVID=a", "501 5.5.4", 0, "", 0, ""},
        {"MAIL all", "MAIL FROM:<a@example.com> SIZE=5 RET=HDRS ENVID=e1 XMODE=queue", NULL, HDRS,
         "e1", 0, ""},
        {"NOTIFY on MAIL", "MAIL FROM:<a@example.com> NOTIFY=NEVER", "555 5.5.4", 0, "", 0, ""},
        {"ORCPT on MAIL", "MAIL FROM:<a@example.com> ORCPT=rfc822;a@example.com", "555 5.5.4", 0,
         "", 0, ""},
        /* RCPT: NOTIFY */
        {"NOTIFY NEVER", "RCPT TO:<b@example.com> NOTIFY=NEVER", NULL, 0, "", NEVER, ""},
        {"notify never", "rcpt to:<b@example.com> notify=never", NULL, 0, "", NEVER, ""},
        {"NOTIFY SUCCESS", "RCPT TO:<b@example.com> NOTIFY=SUCCESS", NULL, 0, "", SUCCESS, ""},
        {"NOTIFY FAILURE", "RCPT TO:<b@example.com> NOTIFY=FAILURE", NULL, 0, "", FAILURE, ""},
        {"NOTIFY DELAY", "RCPT TO:<b@example.com> NOTIFY=DELAY", NULL, 0, "", DELAY, ""},
        {"NOTIFY all three", "RCPT TO:<b@example.com> NOTIFY=SUCCESS,FAILURE,DELAY", NULL, 0, "",
         SUCCESS | FAILURE | DELAY, ""},
        {"NOTIFY any order and case", "RCPT TO:<b@example.com> NOTIFY=delay,Failure", NULL, 0, "",
         FAILURE | DELAY, ""},
        {"NOTIFY NEVER in a list", "RCPT TO:<b@example.com> NOTIFY=NEVER,SUCCESS", "501 5.5.4", 0,
         "", 0, ""},
        {"NOTIFY NEVER last", "RCPT TO:<b@example.com> NOTIFY=FAILURE,NEVER", "501 5.5.4", 0, "", 0,
         ""},
        {"NOTIFY repeated element", "RCPT TO:<b@example.com> NOTIFY=SUCCESS,SUCCESS", "501 5.5.4",
         0, "", 0, ""},
        {"NOTIFY trailing comma", "RCPT TO:<b@example.com> NOTIFY=SUCCESS,", "501 5.5.4", 0, "", 0,
         ""},
        {"NOTIFY leading comma", "RCPT TO:<b@example.com> NOTIFY=,SUCCESS", "501 5.5.4", 0, "", 0,
         ""},
        {"NOTIFY empty element", "RCPT TO:<b@example.com> NOTIFY=SUCCESS,,DELAY", "501 5.5.4", 0,
         "", 0, ""},
        {"NOTIFY unknown", "RCPT TO:<b@example.com> NOTIFY=ALWAYS", "501 5.5.4", 0, "", 0, ""},
        {"NOTIFY prefix", "RCPT TO:<b@example.com> NOTIFY=SUCC", "501 5.5.4", 0, "", 0, ""},
        {"NOTIFY no value", "RCPT TO:<b@example.com> NOTIFY", "501 5.5.4", 0, "", 0, ""},
        {"NOTIFY empty", "RCPT TO:<b@example.com> NOTIFY=", "501 5.5.2", 0, "", 0, ""},
        {"NOTIFY duplicate", "RCPT TO:<b@example.com> NOTIFY=NEVER NOTIFY=NEVER", "501 5.5.4", 0,
         "", 0, ""},
        /* RCPT: ORCPT */
        {"ORCPT", "RCPT TO:<b@example.com> ORCPT=rfc822;b@example.com", NULL, 0, "", 0,
         "rfc822;b@example.com"},
        {"ORCPT kept encoded", "RCPT TO:<b@example.com> ORCPT=RFC822;b+2Bx@example.com", NULL, 0,
         "", 0, "RFC822;b+2Bx@example.com"},
        {"ORCPT other type", "RCPT TO:<b@example.com> ORCPT=utf-8;b@example.com", NULL, 0, "", 0,
         "utf-8;b@example.com"},
        {"ORCPT without type", "RCPT TO:<b@example.com> ORCPT=b@example.com", "501 5.5.4", 0, "", 0,
         ""},
        {"ORCPT empty type", "RCPT TO:<b@example.com> ORCPT=;b@example.com", "501 5.5.4", 0, "", 0,
         ""},
        {"ORCPT empty address", "RCPT TO:<b@example.com> ORCPT=rfc822;", "501 5.5.4", 0, "", 0, ""},
        {"ORCPT bad type", "RCPT TO:<b@example.com> ORCPT=rf(c;b@example.com", "501 5.5.4", 0, "",
         0, ""},
        {"ORCPT header injection",
         "RCPT TO:<b@example.com> ORCPT=rfc822;b@example.com+0D+0AX-Evil:+20y", "501 5.5.4", 0, "",
         0, ""},
        {"ORCPT lower-case hex", "RCPT TO:<b@example.com> ORCPT=rfc822;b+2bx@example.com",
         "501 5.5.4", 0, "", 0, ""},
        {"ORCPT short escape", "RCPT TO:<b@example.com> ORCPT=rfc822;b@example.com+4", "501 5.5.4",
         0, "", 0, ""},
        {"ORCPT no value", "RCPT TO:<b@example.com> ORCPT", "501 5.5.4", 0, "", 0, ""},
        {"ORCPT duplicate",
         "RCPT TO:<b@example.com> ORCPT=rfc822;b@example.com ORCPT=rfc822;b@example.com",
         "501 5.5.4", 0, "", 0, ""},
        {"NOTIFY and ORCPT",
         "RCPT TO:<b@example.com> NOTIFY=FAILURE,DELAY ORCPT=rfc822;c@example.com", NULL, 0, "",
         FAILURE | DELAY, "rfc822;c@example.com"},
        {"ORCPT and NOTIFY", "RCPT TO:<b@example.com> ORCPT=rfc822;c@example.com NOTIFY=NEVER",
         NULL, 0, "", NEVER, "rfc822;c@example.com"},
        {"RET on RCPT", "RCPT TO:<b@example.com> RET=FULL", "555 5.5.4", 0, "", 0, ""},
        {"unknown after good", "RCPT TO:<b@example.com> NOTIFY=NEVER FOO=1", "555 5.5.4", 0, "", 0,
         ""},
        {"double space", "RCPT TO:<b@example.com> NOTIFY=NEVER  ORCPT=rfc822;b@example.com",
         "501 5.5.2", 0, "", 0, ""},
        {"trailing space after parameter", "RCPT TO:<b@example.com> NOTIFY=NEVER ", "501 5.5.2", 0,
         "", 0, ""},
        {"null recipient with NOTIFY", "RCPT TO:<> NOTIFY=NEVER", "501 5.1.3", 0, "", 0, ""},
        {"space after TO: with NOTIFY", "RCPT TO: <b@example.com> NOTIFY=SUCCESS", NULL, 0, "",
         SUCCESS, ""},
    };
    struct lmtp_cmd *cmd = malloc(sizeof(*cmd));
    char *line = malloc(MAILPOOL_MAX_COMMAND_LINE + 2);
    int n;

    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        const char *err;

        check_case = rows[i].name;
        err = lmtp_parse_command(rows[i].line, strlen(rows[i].line), cmd);
        if (rows[i].err != NULL) {
            CHECK(err != NULL && strncmp(err, rows[i].err, strlen(rows[i].err)) == 0);
            if (err != NULL && strncmp(err, rows[i].err, strlen(rows[i].err)) != 0)
                fprintf(stderr, "  got \"%s\"\n", err);
            continue;
        }
        CHECK_STR(err, NULL);
        if (err != NULL)
            continue;
        CHECK(cmd->ret == rows[i].ret);
        CHECK_STR(cmd->envid, rows[i].envid);
        CHECK(cmd->notify == rows[i].notify);
        CHECK_STR(cmd->orcpt, rows[i].orcpt);
    }

    /* Limits: ENVID 100 and ORCPT 500 characters pass, one more is a 501, never a cut. */
    check_case = "ENVID 100";
    n = snprintf(line, MAILPOOL_MAX_COMMAND_LINE + 2, "MAIL FROM:<a@example.com> ENVID=%0100d", 7);
    CHECK_STR(lmtp_parse_command(line, (size_t)n, cmd), NULL);
    CHECK(strlen(cmd->envid) == LMTP_MAX_ENVID);
    check_case = "ENVID 101";
    n = snprintf(line, MAILPOOL_MAX_COMMAND_LINE + 2, "MAIL FROM:<a@example.com> ENVID=%0101d", 7);
    CHECK_STR(lmtp_parse_command(line, (size_t)n, cmd), "501 5.5.4 ENVID too long");
    check_case = "ORCPT 500";
    n = snprintf(line, MAILPOOL_MAX_COMMAND_LINE + 2, "RCPT TO:<b@example.com> ORCPT=rfc822;%0493d",
                 7);
    CHECK_STR(lmtp_parse_command(line, (size_t)n, cmd), NULL);
    CHECK(strlen(cmd->orcpt) == LMTP_MAX_ORCPT);
    check_case = "ORCPT 501";
    n = snprintf(line, MAILPOOL_MAX_COMMAND_LINE + 2, "RCPT TO:<b@example.com> ORCPT=rfc822;%0494d",
                 7);
    CHECK_STR(lmtp_parse_command(line, (size_t)n, cmd), "501 5.5.4 ORCPT too long");
    check_case = "ORCPT 1500";
    n = snprintf(line, MAILPOOL_MAX_COMMAND_LINE + 2,
                 "RCPT TO:<b@example.com> ORCPT=rfc822;%01493d", 7);
    CHECK_STR(lmtp_parse_command(line, (size_t)n, cmd), "501 5.5.4 ORCPT too long");

    /* Fields of a previous command never leak into the next. */
    check_case = "DSN reset between commands";
    CHECK_STR(lmtp_parse_command(S("MAIL FROM:<a@example.com> RET=FULL ENVID=x"), cmd), NULL);
    CHECK(cmd->ret == FULL);
    CHECK_STR(lmtp_parse_command(S("MAIL FROM:<a@example.com>"), cmd), NULL);
    CHECK(cmd->ret == 0 && cmd->envid[0] == '\0');
    CHECK_STR(lmtp_parse_command(S("RCPT TO:<b@example.com> NOTIFY=NEVER ORCPT=rfc822;x"), cmd),
              NULL);
    CHECK(cmd->notify == NEVER);
    CHECK_STR(lmtp_parse_command(S("RCPT TO:<b@example.com>"), cmd), NULL);
    CHECK(cmd->notify == 0 && cmd->orcpt[0] == '\0');
    check_case = "DSN left untouched by a refused command";
    CHECK(lmtp_parse_command(S("RCPT TO:<b@example.com> NOTIFY=NEVER ORCPT=x"), cmd) != NULL);
    CHECK(cmd->orcpt[0] == '\0');
    check_case = NULL;
    free(line);
    free(cmd);
}

/* Encode bytes as xtext the way a client would, to round-trip through the decoder. */
static size_t xtext_encode(const unsigned char *in, size_t n, char *out)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;

    for (size_t i = 0; i < n; i++) {
        if (in[i] < 33 || in[i] > 126 || in[i] == '+' || in[i] == '=') {
            out[o++] = '+';
            out[o++] = hex[in[i] >> 4];
            out[o++] = hex[in[i] & 15];
        } else {
            out[o++] = (char)in[i];
        }
    }
    out[o] = '\0';
    return o;
}

static void test_xtext(void)
{
    static const struct {
        const char *name;
        const char *in;
        size_t len;
        const char *want; /* NULL: refused */
    } rows[] = {
        {"empty", S(""), ""},
        {"plain", S("abc"), "abc"},
        {"every plain xchar", S("!\"#$%&'()*,-./09:;<>?@AZ[\\]^_`az{|}~"),
         "!\"#$%&'()*,-./09:;<>?@AZ[\\]^_`az{|}~"},
        {"plus", S("+2B"), "+"},
        {"equals", S("+3D"), "="},
        {"space", S("a+20b"), "a b"},
        {"needless escapes", S("+41+42c"), "ABc"},
        {"tilde escaped", S("+7E"), "~"},
        {"ORCPT address", S("user+2Btag@example.com"), "user+tag@example.com"},
        {"lower-case hex", S("+2b"), NULL},
        {"lower-case first digit", S("+aA"), NULL},
        {"bare plus", S("+"), NULL},
        {"one digit", S("+2"), NULL},
        {"plus at end", S("abc+"), NULL},
        {"non-hex", S("+G0"), NULL},
        {"plus plus", S("++2B"), NULL},
        {"raw equals", S("a=b"), NULL},
        {"raw space", S("a b"), NULL},
        {"raw tab", S("a\tb"), NULL},
        {"raw DEL", S("a\x7f"), NULL},
        {"raw NUL", S("a\0b"), NULL},
        {"raw 8-bit", S("\xc3\xa9"), NULL},
        {"CRLF", S("+0D+0A"), NULL},
        {"NUL", S("a+00b"), NULL},
        {"tab", S("+09"), NULL},
        {"ESC", S("+1B[31m"), NULL},
        {"DEL", S("+7F"), NULL},
        {"high", S("+80"), NULL},
        {"FF", S("+FF"), NULL},
    };
    char out[64];
    char enc[3 * 200 + 1];
    unsigned char raw[200];
    char dec[201];

    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        ssize_t r;

        check_case = rows[i].name;
        memset(out, 'Z', sizeof(out));
        r = xtext_decode(rows[i].in, rows[i].len, out, sizeof(out));
        if (rows[i].want == NULL) {
            CHECK(r == -1);
            CHECK(xtext_decode(rows[i].in, rows[i].len, NULL, 0) == -1);
            continue;
        }
        CHECK(r == (ssize_t)strlen(rows[i].want));
        CHECK_STR(r >= 0 ? out : NULL, rows[i].want);
        /* Validation only: same answer without an output buffer. */
        CHECK(xtext_decode(rows[i].in, rows[i].len, NULL, 0) == r);
        /* The input length bounds the output: len + 1 bytes are enough. */
        CHECK(xtext_decode(rows[i].in, rows[i].len, out, rows[i].len + 1) == r);
    }

    /* Output too small: refused, never truncated, never written past outsize. */
    check_case = "exact buffer";
    memset(out, 'Z', sizeof(out));
    CHECK(xtext_decode(S("a+2Bb"), out, 4) == 3);
    CHECK_STR(out, "a+b");
    check_case = "buffer one short";
    memset(out, 'Z', sizeof(out));
    CHECK(xtext_decode(S("a+2Bb"), out, 3) == -1);
    CHECK(out[3] == 'Z');
    check_case = "zero-size buffer";
    CHECK(xtext_decode(S(""), out, 0) == -1);
    check_case = "empty into one byte";
    CHECK(xtext_decode(S(""), out, 1) == 0 && out[0] == '\0');

    /* Round trip: any printable ASCII string, encoded as a client would. */
    check_case = "round trip";
    for (int iter = 0; iter < 2000; iter++) {
        size_t n = unit_rand() % sizeof(raw);
        size_t el;

        for (size_t i = 0; i < n; i++)
            raw[i] = (unsigned char)(32 + unit_rand() % 95);
        el = xtext_encode(raw, n, enc);
        CHECK(xtext_decode(enc, el, dec, sizeof(dec)) == (ssize_t)n);
        CHECK(memcmp(dec, raw, n) == 0 && dec[n] == '\0');
    }
    /* ... and a string holding a byte outside 32-126 is always refused. */
    check_case = "round trip with a control byte";
    for (int iter = 0; iter < 500; iter++) {
        size_t n = 1 + unit_rand() % (sizeof(raw) - 1);
        unsigned char bad = (unsigned char)(unit_rand() % 256);
        size_t el;

        if (bad >= 32 && bad <= 126)
            bad = 0x7f;
        for (size_t i = 0; i < n; i++)
            raw[i] = (unsigned char)(32 + unit_rand() % 95);
        raw[unit_rand() % n] = bad;
        el = xtext_encode(raw, n, enc);
        CHECK(xtext_decode(enc, el, dec, sizeof(dec)) == -1);
    }
    check_case = NULL;
}

int main(int argc, char **argv)
{
    static const struct unit_group groups[] = {
        {"mail", test_mail}, {"rcpt", test_rcpt}, {"params", test_params}, {"verbs", test_verbs},
        {"addr", test_addr}, {"dsn", test_dsn},   {"xtext", test_xtext},
    };

    return unit_main(argc, argv, groups, sizeof(groups) / sizeof(groups[0]));
}
