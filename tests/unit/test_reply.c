/*
 * SMTP reply parser and EHLO capability tests.  Every table row is fed
 * whole and in small chunks down to single bytes; all must agree.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "config.h"
#include "smtp_reply.h"

/* A string literal with its length, NULs included. */
#define S(lit) lit, sizeof(lit) - 1

struct row {
    const char *name;
    const char *in;
    size_t len;
    const char *want;
};

/*
 * Feed `in` in chunks of `chunk` bytes (0: all at once) and describe the
 * outcome: "CODE/ECODE/TEXT(NLINES);" per reply with newlines of TEXT shown
 * as '|', then "ERR" on a parse error or "..." when a reply is pending.
 */
static char *run(const char *in, size_t len, size_t chunk, const char **err)
{
    struct reply_parser p;
    char *desc = NULL;
    size_t desclen = 0;
    FILE *f = open_memstream(&desc, &desclen);
    size_t off = 0;

    *err = NULL;
    reply_parser_init(&p);
    while (off < len) {
        size_t n = chunk == 0 || chunk > len - off ? len - off : chunk;
        size_t pos = 0;
        while (pos < n) {
            enum reply_status st;
            struct smtp_reply r;
            size_t used = reply_parser_feed(&p, in + off + pos, n - pos, &st, &r);
            CHECK(used <= n - pos);
            pos += used;
            if (st == REPLY_COMPLETE) {
                size_t lines = 1;
                CHECK(used > 0);
                CHECK(r.text != NULL);
                fprintf(f, "%d/%s/", r.code, r.ecode);
                for (const char *t = r.text; *t != '\0'; t++) {
                    CHECK((unsigned char)*t >= 0x20 || *t == '\n');
                    CHECK(*t != 0x7f);
                    lines += *t == '\n';
                    fputc(*t == '\n' ? '|' : *t, f);
                }
                CHECK(lines == r.nlines);
                fprintf(f, "(%zu);", r.nlines);
                smtp_reply_clear(&r);
                CHECK(r.text == NULL);
                if (used == 0)
                    goto out;
                continue;
            }
            if (st == REPLY_ERROR) {
                *err = reply_parser_error(&p);
                CHECK(*err != NULL);
                fputs("ERR", f);
                /* A failed parser stays failed until reset. */
                CHECK(reply_parser_feed(&p, "250 ok\r\n", 8, &st, &r) == 0);
                CHECK(st == REPLY_ERROR);
                goto out;
            }
            CHECK(st == REPLY_INCOMPLETE);
            CHECK(pos == n);
            break;
        }
        off += n;
    }
    if (reply_parser_pending(&p))
        fputs("...", f);
out:
    reply_parser_reset(&p);
    CHECK(!reply_parser_pending(&p));
    fclose(f);
    return desc;
}

static void run_rows(const struct row *rows, size_t n)
{
    static const size_t chunks[] = {0, 1, 2, 3, 5, 7, 64};

    for (size_t i = 0; i < n; i++) {
        check_case = rows[i].name;
        for (size_t c = 0; c < sizeof(chunks) / sizeof(chunks[0]); c++) {
            const char *err;
            char *got = run(rows[i].in, rows[i].len, chunks[c], &err);
            CHECK_STR(got, rows[i].want);
            free(got);
        }
    }
    check_case = NULL;
}

static void test_multiline(void)
{
    static const struct row rows[] = {
        {"single", S("220 mx.example.com ESMTP\r\n"), "220//mx.example.com ESMTP(1);"},
        {"multiline", S("250-mx.example.com\r\n250-PIPELINING\r\n250 8BITMIME\r\n"),
         "250//mx.example.com|PIPELINING|8BITMIME(3);"},
        {"bare code", S("250\r\n"), "250//(1);"},
        {"empty text", S("250 \r\n"), "250//(1);"},
        {"empty continuation", S("250-\r\n250 x\r\n"), "250//|x(2);"},
        {"bare LF", S("250-a\n250 b\n"), "250//a|b(2);"},
        {"two replies", S("220 hi\r\n250 ok\r\n"), "220//hi(1);250//ok(1);"},
        {"pending", S("250-a\r\n250 b"), "..."},
        {"pending after line", S("250-a\r\n"), "..."},
        {"nothing", S(""), ""},
        {"enhanced", S("550 5.1.1 No such user\r\n"), "550/5.1.1/No such user(1);"},
        {"enhanced each line", S("250-2.0.0 a\r\n250 2.0.0 b\r\n"), "250/2.0.0/a|b(2);"},
        {"enhanced 3-digit parts", S("452 4.123.456 x\r\n"), "452/4.123.456/x(1);"},
        {"enhanced without text", S("250 2.0.0\r\n"), "250/2.0.0/(1);"},
        {"enhanced class mismatch", S("250 5.1.1 x\r\n"), "250//5.1.1 x(1);"},
        {"enhanced for 3xx", S("354 3.0.0 go\r\n"), "354//3.0.0 go(1);"},
        {"enhanced too long part", S("250 2.1000.0 x\r\n"), "250//2.1000.0 x(1);"},
        {"enhanced glued", S("250 2.0.0x\r\n"), "250//2.0.0x(1);"},
        {"enhanced partial", S("250 2.0 x\r\n"), "250//2.0 x(1);"},
        {"421 mid-session", S("421-4.7.0 closing\r\n421 4.7.0 bye\r\n"),
         "421/4.7.0/closing|bye(2);"},
        {"control bytes", S("250 a\0b\x1b[31mc\x7f\r\n"), "250//a?b?[31mc?(1);"},
        {"CR inside line", S("250 a\rb\r\n"), "250//a?b(1);"},
        {"CR CR LF", S("250 a\r\r\n"), "250//a?(1);"},
        {"tab", S("250 a\tb\r\n"), "250//a?b(1);"},
        {"8-bit kept", S("250 caf\xc3\xa9\r\n"), "250//caf\xc3\xa9(1);"},
        {"highest code", S("559 x\r\n"), "559//x(1);"},
    };
    run_rows(rows, sizeof(rows) / sizeof(rows[0]));

    /* Consumption stops after one reply so the caller can handle it first. */
    {
        struct reply_parser p;
        struct smtp_reply r;
        enum reply_status st;
        const char in[] = "250 ok\r\n354 go\r\n";
        size_t used;

        check_case = "one reply per call";
        reply_parser_init(&p);
        used = reply_parser_feed(&p, in, sizeof(in) - 1, &st, &r);
        CHECK(st == REPLY_COMPLETE);
        CHECK(used == 8);
        CHECK(!reply_parser_pending(&p));
        smtp_reply_clear(&r);
        used = reply_parser_feed(&p, in + 8, sizeof(in) - 1 - 8, &st, &r);
        CHECK(st == REPLY_COMPLETE && r.code == 354 && used == 8);
        smtp_reply_clear(&r);
        CHECK(reply_parser_feed(&p, "25", 2, &st, &r) == 2);
        CHECK(st == REPLY_INCOMPLETE);
        CHECK(reply_parser_pending(&p));
        reply_parser_reset(&p);
        check_case = NULL;
    }
}

static void test_malformed(void)
{
    static const struct row rows[] = {
        {"one digit", S("2\r\n"), "ERR"},
        {"two digits", S("25\r\n"), "ERR"},
        {"empty line", S("\r\n"), "ERR"},
        {"bare LF line", S("\n"), "ERR"},
        {"code 600", S("600 x\r\n"), "ERR"},
        {"code 199", S("199 x\r\n"), "ERR"},
        {"code 000", S("000 x\r\n"), "ERR"},
        {"second digit 6", S("260 x\r\n"), "ERR"},
        {"letter in code", S("2a0 x\r\n"), "ERR"},
        {"letter last", S("25a x\r\n"), "ERR"},
        {"no separator", S("250x\r\n"), "ERR"},
        {"four digits", S("2500 x\r\n"), "ERR"},
        {"leading space", S(" 250 x\r\n"), "ERR"},
        {"leading dash", S("-250 x\r\n"), "ERR"},
        {"text only", S("hello\r\n"), "ERR"},
        {"code change", S("250-a\r\n251 b\r\n"), "ERR"},
        {"class change", S("250-a\r\n550 b\r\n"), "ERR"},
        {"empty line in multiline", S("250-a\r\n\r\n250 b\r\n"), "ERR"},
        {"NUL in code", S("2\0000 x\r\n"), "ERR"},
        {"after a good reply", S("250 ok\r\n2\r\n"), "250//ok(1);ERR"},
    };
    struct reply_parser p;
    struct smtp_reply r;
    enum reply_status st;

    run_rows(rows, sizeof(rows) / sizeof(rows[0]));

    check_case = "reset after error";
    reply_parser_init(&p);
    reply_parser_feed(&p, "250-a\r\n600 x\r\n", 14, &st, &r);
    CHECK(st == REPLY_ERROR);
    CHECK(reply_parser_error(&p) != NULL);
    reply_parser_reset(&p);
    CHECK(reply_parser_error(&p) == NULL);
    reply_parser_feed(&p, "250 ok\r\n", 8, &st, &r);
    CHECK(st == REPLY_COMPLETE && r.code == 250);
    smtp_reply_clear(&r);
    reply_parser_reset(&p);
    check_case = NULL;
}

static char *repeat_line(const char *prefix, size_t textlen, const char *eol)
{
    size_t pl = strlen(prefix);
    size_t el = strlen(eol);
    char *s = malloc(pl + textlen + el + 1);

    memcpy(s, prefix, pl);
    memset(s + pl, 'x', textlen);
    memcpy(s + pl + textlen, eol, el + 1);
    return s;
}

static void test_limits(void)
{
    const char *err;
    char *in;
    char *got;

    /* Exactly SMTP_REPLY_MAX_LINE bytes before CRLF (or LF) is allowed ... */
    check_case = "longest line";
    in = repeat_line("250 ", SMTP_REPLY_MAX_LINE - 4, "\r\n");
    got = run(in, strlen(in), 0, &err);
    CHECK(strncmp(got, "250//xxx", 8) == 0);
    CHECK(strlen(got) == SMTP_REPLY_MAX_LINE - 4 + strlen("250//(1);"));
    free(got);
    got = run(in, strlen(in), 1, &err);
    CHECK(strncmp(got, "250//xxx", 8) == 0);
    free(got);
    free(in);
    in = repeat_line("250 ", SMTP_REPLY_MAX_LINE - 4, "\n");
    got = run(in, strlen(in), 3, &err);
    CHECK(strncmp(got, "250//xxx", 8) == 0);
    free(got);
    free(in);

    /* ... one more is an error, with or without CR. */
    check_case = "line one too long";
    in = repeat_line("250 ", SMTP_REPLY_MAX_LINE - 3, "\r\n");
    for (size_t chunk = 0; chunk < 3; chunk++) {
        got = run(in, strlen(in), chunk, &err);
        CHECK_STR(got, "ERR");
        CHECK(err != NULL && strstr(err, "too long") != NULL);
        free(got);
    }
    free(in);
    in = repeat_line("250 ", SMTP_REPLY_MAX_LINE - 3, "\n");
    got = run(in, strlen(in), 1, &err);
    CHECK_STR(got, "ERR");
    free(got);
    free(in);

    /* A 10 MB line is refused as soon as the limit is passed. */
    check_case = "10 MB line";
    {
        size_t big = 10u * 1024 * 1024;
        struct reply_parser p;
        struct smtp_reply r;
        enum reply_status st;
        size_t used;

        in = repeat_line("250 ", big, "\r\n");
        reply_parser_init(&p);
        used = reply_parser_feed(&p, in, 1000, &st, &r);
        CHECK(st == REPLY_INCOMPLETE && used == 1000);
        used = reply_parser_feed(&p, in + 1000, big - 1000, &st, &r);
        CHECK(st == REPLY_ERROR);
        CHECK(used <= big - 1000);
        reply_parser_reset(&p);
        free(in);
    }

    /* SMTP_REPLY_MAX_LINES lines pass, one more fails. */
    check_case = "line count";
    for (int extra = 0; extra < 2; extra++) {
        size_t nlines = SMTP_REPLY_MAX_LINES + (size_t)extra;
        char *buf = malloc(nlines * 8 + 1);
        size_t o = 0;
        for (size_t i = 0; i < nlines; i++) {
            memcpy(buf + o, i + 1 < nlines ? "250-ab\r\n" : "250 ab\r\n", 8);
            o += 8;
        }
        for (size_t chunk = 0; chunk < 2; chunk++) {
            got = run(buf, o, chunk, &err);
            if (extra == 0) {
                char tail[32];
                snprintf(tail, sizeof(tail), "(%d);", SMTP_REPLY_MAX_LINES);
                CHECK(strlen(got) > strlen(tail) &&
                      strcmp(got + strlen(got) - strlen(tail), tail) == 0);
            } else {
                CHECK_STR(got, "ERR");
                CHECK(err != NULL && strstr(err, "many") != NULL);
            }
            free(got);
        }
        free(buf);
    }

    /* Endless continuation lines stop at the limit, however they arrive. */
    check_case = "endless continuation";
    {
        struct reply_parser p;
        struct smtp_reply r;
        enum reply_status st = REPLY_INCOMPLETE;
        size_t fed = 0;

        reply_parser_init(&p);
        while (st == REPLY_INCOMPLETE && fed < 100000) {
            reply_parser_feed(&p, "250-more\r\n", 10, &st, &r);
            fed++;
        }
        CHECK(st == REPLY_ERROR);
        CHECK(fed == SMTP_REPLY_MAX_LINES + 1);
        reply_parser_reset(&p);
    }
    check_case = NULL;
}

static struct smtp_caps caps_of(const char *in)
{
    struct reply_parser p;
    struct smtp_reply r;
    struct smtp_caps caps;
    enum reply_status st;

    memset(&caps, 0xa5, sizeof(caps)); /* smtp_caps_parse must overwrite all of it */
    reply_parser_init(&p);
    reply_parser_feed(&p, in, strlen(in), &st, &r);
    CHECK(st == REPLY_COMPLETE);
    if (st == REPLY_COMPLETE) {
        smtp_caps_parse(&r, &caps);
        smtp_reply_clear(&r);
    }
    reply_parser_reset(&p);
    return caps;
}

static void test_caps(void)
{
    static const struct {
        const char *name;
        const char *in;
        unsigned flags;
        unsigned long long size;
        unsigned auth;
    } rows[] = {
        {"typical",
         "250-mx.example.com Hello\r\n250-PIPELINING\r\n250-SIZE 35882577\r\n"
         "250-8BITMIME\r\n250-STARTTLS\r\n250-ENHANCEDSTATUSCODES\r\n"
         "250-AUTH PLAIN LOGIN\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n",
         CAP_PIPELINING | CAP_SIZE | CAP_8BITMIME | CAP_STARTTLS | CAP_ENHANCEDSTATUSCODES |
             CAP_AUTH | CAP_DSN | CAP_SMTPUTF8 | CAP_CHUNKING,
         35882577, AUTH_MECH_PLAIN | AUTH_MECH_LOGIN},
        {"lower case", "250-mx\r\n250-pipelining\r\n250-Size 1000\r\n250 auth cram-md5\r\n",
         CAP_PIPELINING | CAP_SIZE | CAP_AUTH, 1000, AUTH_MECH_CRAM_MD5},
        {"all mechanisms",
         "250-mx\r\n250 AUTH PLAIN LOGIN CRAM-MD5 SCRAM-SHA-256 XOAUTH2 OAUTHBEARER GSSAPI\r\n",
         CAP_AUTH, 0,
         AUTH_MECH_PLAIN | AUTH_MECH_LOGIN | AUTH_MECH_CRAM_MD5 | AUTH_MECH_SCRAM_SHA_256 |
             AUTH_MECH_XOAUTH2 | AUTH_MECH_OAUTHBEARER},
        {"old AUTH= form", "250-mx\r\n250-AUTH=LOGIN PLAIN\r\n250 AUTH CRAM-MD5\r\n", CAP_AUTH, 0,
         AUTH_MECH_LOGIN | AUTH_MECH_PLAIN | AUTH_MECH_CRAM_MD5},
        {"only AUTH=", "250-mx\r\n250 AUTH=LOGIN\r\n", CAP_AUTH, 0, AUTH_MECH_LOGIN},
        {"AUTH without mechanisms", "250-mx\r\n250 AUTH\r\n", CAP_AUTH, 0, 0},
        {"AUTH extra spaces", "250-mx\r\n250 AUTH  PLAIN   LOGIN \r\n", CAP_AUTH, 0,
         AUTH_MECH_PLAIN | AUTH_MECH_LOGIN},
        {"mechanism prefixes", "250-mx\r\n250 AUTH PLAINX LOGI SCRAM-SHA-256-PLUS\r\n", CAP_AUTH, 0,
         0},
        {"SIZE without limit", "250-mx\r\n250 SIZE\r\n", CAP_SIZE, 0, 0},
        {"SIZE zero", "250-mx\r\n250 SIZE 0\r\n", CAP_SIZE, 0, 0},
        {"SIZE garbage", "250-mx\r\n250 SIZE 12ab\r\n", CAP_SIZE, 0, 0},
        {"SIZE overflow", "250-mx\r\n250 SIZE 99999999999999999999999\r\n", CAP_SIZE, 0, 0},
        {"SIZE max", "250-mx\r\n250 SIZE 18446744073709551615\r\n", CAP_SIZE,
         18446744073709551615ULL, 0},
        {"greeting is not a keyword", "250-PIPELINING STARTTLS\r\n250 8BITMIME\r\n", CAP_8BITMIME,
         0, 0},
        {"single line", "250 mx.example.com\r\n", 0, 0, 0},
        {"near misses",
         "250-mx\r\n250-STARTTLSX\r\n250-PIPELINING extra\r\n250-XSIZE 5\r\n"
         "250-8BITMIM\r\n250-AUTHX PLAIN\r\n250 DSN=1\r\n",
         0, 0, 0},
        {"not a 250", "550-mx\r\n550 PIPELINING\r\n", 0, 0, 0},
        {"control bytes", "250-mx\r\n250-PIPE\x1bLINING\r\n250 STARTTLS\r\n", CAP_STARTTLS, 0, 0},
    };

    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        struct smtp_caps c;
        check_case = rows[i].name;
        c = caps_of(rows[i].in);
        CHECK(c.flags == rows[i].flags);
        CHECK(c.size == rows[i].size);
        CHECK(c.auth == rows[i].auth);
    }
    check_case = NULL;
}

int main(int argc, char **argv)
{
    static const struct unit_group groups[] = {
        {"multiline", test_multiline},
        {"malformed", test_malformed},
        {"limits", test_limits},
        {"caps", test_caps},
    };

    return unit_main(argc, argv, groups, sizeof(groups) / sizeof(groups[0]));
}
