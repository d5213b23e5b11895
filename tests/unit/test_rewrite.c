/*
 * Address fixing tests: envelope qualification, aliases and the forced
 * sender; header rewriting of From/To/Cc with display names, comments,
 * groups, folding and encoded words; From rewrite and add_if_missing.
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "config.h"
#include "rewrite.h"

static struct alias test_aliases[] = {{"root", "ops@example.com"}, {"cron", "cron@ops.example"}};

static struct address_fixing fixing(const char *qd, const char *sender, enum from_header_mode fh)
{
    struct address_fixing fx = {0};
    fx.qualify_domain = (char *)qd;
    fx.sender = (char *)sender;
    fx.from_header = fh;
    fx.aliases = test_aliases;
    fx.naliases = 2;
    return fx;
}

static void check_envelope_case(char *got, const char *want)
{
    CHECK_STR(got, want);
    free(got);
}

static void test_envelope(void)
{
    struct address_fixing fx = fixing("example.org", NULL, FROM_HEADER_KEEP);
    check_case = "qualify";
    check_envelope_case(rewrite_rcpt(&fx, "bob"), "bob@example.org");
    check_envelope_case(rewrite_rcpt(&fx, "bob@elsewhere.test"), "bob@elsewhere.test");
    check_envelope_case(rewrite_rcpt(&fx, "\"john doe\""), "\"john doe\"@example.org");
    check_case = "alias";
    check_envelope_case(rewrite_rcpt(&fx, "root"), "ops@example.com");
    check_envelope_case(rewrite_rcpt(&fx, "ROOT"), "ops@example.com");
    check_envelope_case(rewrite_rcpt(&fx, "root@example.org"), "ops@example.com");
    check_envelope_case(rewrite_rcpt(&fx, "root@other.test"), "root@other.test");
    check_case = "sender";
    check_envelope_case(rewrite_sender(&fx, "cron"), "cron@example.org"); /* no alias for senders */
    check_envelope_case(rewrite_sender(&fx, ""), "");
    fx.sender = "app@example.com";
    check_envelope_case(rewrite_sender(&fx, "alice@client.test"), "app@example.com");
    check_envelope_case(rewrite_sender(&fx, ""), ""); /* a bounce stays a bounce */
    check_case = "no qualify_domain";
    struct address_fixing bare = {0};
    check_envelope_case(rewrite_rcpt(&bare, "bob"), "bob");
    CHECK(!rewrite_active(&bare));
    CHECK(rewrite_active(&fx));
}

static void check_headers(const struct address_fixing *fx, const char *sender, const char *in,
                          const char *want)
{
    size_t hl = rewrite_header_length(in, strlen(in));
    char *out = NULL;
    size_t outlen = 0;
    CHECK(rewrite_headers(fx, sender, in, hl, &out, &outlen) == 0);
    char *full = malloc(outlen + strlen(in + hl) + 1);
    memcpy(full, out, outlen);
    strcpy(full + outlen, in + hl);
    CHECK_STR(full, want);
    free(full);
    free(out);
}

static void test_headers(void)
{
    struct address_fixing fx = fixing("example.org", NULL, FROM_HEADER_KEEP);
    check_case = "bare addresses";
    check_headers(&fx, "cron@example.org", "From: cron\r\nTo: bob, carol@x.test\r\n\r\nbob\r\n",
                  "From: cron@example.org\r\nTo: bob@example.org, carol@x.test\r\n\r\nbob\r\n");
    check_case = "display names and comments";
    check_headers(
        &fx, "", "To: \"Bob, Jr.\" <bob>, Carol (the boss) <carol>\r\n\r\n",
        "To: \"Bob, Jr.\" <bob@example.org>, Carol (the boss) <carol@example.org>\r\n\r\n");
    check_headers(&fx, "", "Cc: dave (Dave D.)\r\n\r\n", "Cc: dave@example.org (Dave D.)\r\n\r\n");
    check_case = "aliases only in To/Cc";
    check_headers(
        &fx, "", "From: root\r\nTo: root\r\nCc: Admin <root@example.org>\r\n\r\n",
        "From: root@example.org\r\nTo: ops@example.com\r\nCc: Admin <ops@example.com>\r\n\r\n");
    check_case = "folded";
    check_headers(&fx, "", "To: bob,\r\n\tcarol\r\nSubject: to bob\r\n\r\n",
                  "To: bob@example.org,\r\n\tcarol@example.org\r\nSubject: to bob\r\n\r\n");
    check_case = "group";
    check_headers(
        &fx, "", "To: undisclosed-recipients:;\r\nCc: team: bob, carol;\r\n\r\n",
        "To: undisclosed-recipients:;\r\nCc: team: bob@example.org, carol@example.org;\r\n\r\n");
    check_case = "encoded words and phrases";
    check_headers(&fx, "", "To: =?utf-8?q?B=C3=B6b?= <bob>\r\n\r\n",
                  "To: =?utf-8?q?B=C3=B6b?= <bob@example.org>\r\n\r\n");
    check_headers(&fx, "", "To: =?utf-8?q?B=C3=B6b?=\r\nCc: Bob Smith\r\n\r\n",
                  "To: =?utf-8?q?B=C3=B6b?=\r\nCc: Bob Smith\r\n\r\n");
    check_case = "other fields untouched";
    check_headers(&fx, "", "Subject: bob\r\nReply-To: bob\r\nX-To: bob\r\n\r\nTo: bob\r\n",
                  "Subject: bob\r\nReply-To: bob\r\nX-To: bob\r\n\r\nTo: bob\r\n");
    check_case = "unterminated";
    check_headers(&fx, "", "To: \"bob <x>, (y\r\n\r\n", "To: \"bob <x>, (y\r\n\r\n");
    check_headers(&fx, "", "To: <bob\r\n\r\n", "To: <bob\r\n\r\n");
    check_case = "no header section";
    check_headers(&fx, "", "\r\nTo: bob\r\n", "\r\nTo: bob\r\n");
    check_headers(&fx, "", "just text\r\nTo: bob\r\n", "just text\r\nTo: bob\r\n");
}

static void test_from(void)
{
    struct address_fixing fx = fixing(NULL, "app@example.com", FROM_HEADER_REWRITE);
    check_case = "rewrite keeps the display name";
    check_headers(&fx, "app@example.com", "From: Cron Daemon <root@host>\r\nTo: x@y\r\n\r\nb\r\n",
                  "From: Cron Daemon <app@example.com>\r\nTo: x@y\r\n\r\nb\r\n");
    check_headers(&fx, "app@example.com", "From: root (Cron Daemon)\r\n\r\n",
                  "From: app@example.com (Cron Daemon)\r\n\r\n");
    check_headers(&fx, "app@example.com", "From: =?utf-8?q?J=C3=BCrg?=\r\n <j@x>\r\n\r\n",
                  "From: =?utf-8?q?J=C3=BCrg?=\r\n <app@example.com>\r\n\r\n");
    check_case = "rewrite adds a missing From";
    check_headers(&fx, "app@example.com", "To: x@y\r\n\r\n",
                  "From: <app@example.com>\r\nTo: x@y\r\n\r\n");
    check_case = "add_if_missing";
    fx.from_header = FROM_HEADER_ADD_IF_MISSING;
    check_headers(&fx, "app@example.com", "Subject: s\r\n\r\nb\r\n",
                  "From: <app@example.com>\r\nSubject: s\r\n\r\nb\r\n");
    check_headers(&fx, "app@example.com", "from: Me <me@x>\r\n\r\n", "from: Me <me@x>\r\n\r\n");
    check_headers(&fx, "app@example.com", "", "From: <app@example.com>\r\n");
    check_case = "keep";
    fx.from_header = FROM_HEADER_KEEP;
    check_headers(&fx, "app@example.com", "Subject: s\r\n\r\n", "Subject: s\r\n\r\n");
    check_case = "no usable sender";
    fx.from_header = FROM_HEADER_ADD_IF_MISSING;
    check_headers(&fx, "", "Subject: s\r\n\r\n", "Subject: s\r\n\r\n");
    check_headers(&fx, "bare", "Subject: s\r\n\r\n", "Subject: s\r\n\r\n");
}

int main(int argc, char **argv)
{
    static const struct unit_group groups[] = {
        {"envelope", test_envelope},
        {"headers", test_headers},
        {"from", test_from},
    };
    return unit_main(argc, argv, groups, sizeof(groups) / sizeof(groups[0]));
}
