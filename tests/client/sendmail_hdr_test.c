/*
 * Table-driven tests of mailpool-sendmail's pure header functions:
 * field scanning, address-list parsing, From: formatting, Bcc removal.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sendmail_hdr.h"

static int failures;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                            \
            printf(__VA_ARGS__);                                                                   \
            printf("\n");                                                                          \
        }                                                                                          \
    } while (0)

/* Joins the addresses found with '|', so each case is one string compare. */
struct joined {
    char buf[1024];
    size_t len;
};

static int join(void *ctx, const char *addr, size_t len)
{
    struct joined *j = ctx;

    if (j->len + len + 2 > sizeof j->buf)
        return 7;
    if (j->len > 0)
        j->buf[j->len++] = '|';
    memcpy(j->buf + j->len, addr, len);
    j->len += len;
    j->buf[j->len] = '\0';
    return 0;
}

static void test_addresses(void)
{
    static const struct {
        const char *in;
        int rc;
        const char *want;
    } cases[] = {
        {"a@b", 0, "a@b"},
        {"a@b, c@d", 0, "a@b|c@d"},
        {"\"x, y\" <c@d>, e@f", 0, "c@d|e@f"},
        {"John Smith <js@example.org>", 0, "js@example.org"},
        {"undisclosed-recipients:;", 0, ""},
        {"team: a@b, C <c@d>;, e@f", 0, "a@b|c@d|e@f"},
        {"a@b (the boss, really), (comment) c@d", 0, "a@b|c@d"},
        {"(nested (comment)) x@y", 0, "x@y"},
        {"\"quoted local\"@example.org", 0, "\"quoted local\"@example.org"},
        {"\"a\\\"b\" <q@r>", 0, "q@r"},
        {"first@x,\r\n second@y,\n\tthird@z", 0, "first@x|second@y|third@z"},
        {"<@relay1,@relay2:user@host>", 0, "user@host"},
        {"a@b,,c@d, ,", 0, "a@b|c@d"},
        {"<>", 0, ""},
        {"root", 0, "root"},
        {"\"unterminated <a@b>", -1, ""},
        {"(unbalanced a@b", -1, ""},
        {"<a@b", -1, ""},
        {"a@b>", -1, ""},
    };
    size_t i;

    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct joined j = {.len = 0};
        int rc = hdr_addresses(cases[i].in, strlen(cases[i].in), join, &j);

        CHECK(rc == cases[i].rc, "addresses(%s): rc %d, want %d", cases[i].in, rc, cases[i].rc);
        if (cases[i].rc == 0)
            CHECK(strcmp(j.buf, cases[i].want) == 0, "addresses(%s): got '%s', want '%s'",
                  cases[i].in, j.buf, cases[i].want);
    }
}

static void test_fields(void)
{
    const char *msg =
        "From: a@b\r\nTo: x@y,\r\n  z@w\r\nSubject:  hi\nX-Empty:\n\nbody: not a header\n";
    const char *want[][2] = {
        {"From", " a@b"}, {"To", " x@y,\r\n  z@w"}, {"Subject", "  hi"}, {"X-Empty", ""}};
    struct hdr_field f;
    size_t pos = 0, n = 0;

    while (hdr_next(msg, strlen(msg), &pos, &f)) {
        CHECK(n < 4, "too many fields");
        if (n >= 4)
            break;
        CHECK(f.namelen == strlen(want[n][0]) && memcmp(f.name, want[n][0], f.namelen) == 0,
              "field %zu name '%.*s'", n, (int)f.namelen, f.name);
        CHECK(f.valuelen == strlen(want[n][1]) && memcmp(f.value, want[n][1], f.valuelen) == 0,
              "field %zu value '%.*s'", n, (int)f.valuelen, f.value);
        n++;
    }
    CHECK(n == 4, "found %zu fields, want 4", n);
    CHECK(strcmp(msg + pos, "body: not a header\n") == 0, "body starts at '%s'", msg + pos);

    pos = 0;
    CHECK(hdr_next("no header here\n", 15, &pos, &f) == 0, "text without a colon");
    pos = 0;
    CHECK(hdr_next(" Folded: x\n", 11, &pos, &f) == 0, "continuation first");
    pos = 0;
    CHECK(hdr_next("Subject: no newline", 19, &pos, &f) == 1 && f.valuelen == 11 && pos == 19,
          "field at end of text");
    pos = 0;
    CHECK(hdr_next("Subject : spaced\n", 17, &pos, &f) == 1 && f.namelen == 7,
          "space before the colon");
    CHECK(hdr_is(&f, "subject") && !hdr_is(&f, "Subj"), "hdr_is");
}

static void test_mailbox(void)
{
    static const struct {
        const char *name, *want;
    } cases[] = {
        {NULL, "u@h"},
        {"", "u@h"},
        {"Jane Doe", "Jane Doe <u@h>"},
        {"Doe, Jane", "\"Doe, Jane\" <u@h>"},
        {"J. Doe", "\"J. Doe\" <u@h>"},
        {"say \"hi\" \\o/", "\"say \\\"hi\\\" \\\\o/\" <u@h>"},
        {"J\xc3\xb6rg", "J\xc3\xb6rg <u@h>"},
        {" padded", "\" padded\" <u@h>"},
    };
    size_t i;

    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *got = hdr_mailbox(cases[i].name, "u@h");

        CHECK(got && strcmp(got, cases[i].want) == 0, "mailbox(%s): got '%s', want '%s'",
              cases[i].name ? cases[i].name : "NULL", got ? got : "NULL", cases[i].want);
        free(got);
    }
}

static void test_build(void)
{
    static const struct {
        const char *msg, *added;
        int drop;
        const char *want;
    } cases[] = {
        {"To: a@b\nBcc: s@t,\n  u@v\nSubject: x\n\nBcc: in body\n", "Date: d\n", 1,
         "Date: d\nTo: a@b\nSubject: x\n\nBcc: in body\n"},
        {"To: a@b\nBcc: s@t\n\nbody\n", "", 0, "To: a@b\nBcc: s@t\n\nbody\n"},
        {"BCC: s@t\r\n\r\nbody\r\n", "", 1, "\r\nbody\r\n"},
        {"just a body\n", "From: f\n", 1, "From: f\n\njust a body\n"},
        {"\nbody after an empty header\n", "From: f\n", 1,
         "From: f\n\nbody after an empty header\n"},
        {"", "From: f\n", 1, "From: f\n"},
    };
    size_t i, len;

    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *got =
            hdr_build(cases[i].msg, strlen(cases[i].msg), cases[i].added, cases[i].drop, &len);

        CHECK(got && len == strlen(cases[i].want) && memcmp(got, cases[i].want, len) == 0,
              "build case %zu: got '%.*s'", i, got ? (int)len : 4, got ? got : "NULL");
        free(got);
    }
}

int main(void)
{
    test_addresses();
    test_fields();
    test_mailbox();
    test_build();
    if (failures) {
        printf("%d failure(s)\n", failures);
        return 1;
    }
    printf("ok\n");
    return 0;
}
