/*
 * Builds one DSN per named case with bounce_build() and writes it, with the
 * original it reports on, to a directory for check_bounce.py to take apart.
 * Usage: bounce_gen CASE OUTDIR.  Exits 1 on a failure seen on the C side.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bounce.h"

#define NOW ((time_t)1700000000) /* Tue, 14 Nov 2023 22:13:20 +0000 */

/*
 * Scripted randomness for the boundary_in_original case: the first draw
 * (the first boundary candidate) is 00 01 .. 0f, which the original
 * contains as a delimiter line, so bounce_build() must pick again.
 */
int bounce_test_random(unsigned char *buf, size_t n);

static int script_first_draw;
static int draws; /* boundary candidates drawn */

int bounce_test_random(unsigned char *buf, size_t n)
{
    if (n != 16) /* 16 octets: a boundary; the Message-ID takes 8 */
        return 0;
    if (!script_first_draw || ++draws > 1)
        return 0;
    for (size_t i = 0; i < n; i++)
        buf[i] = (unsigned char)i;
    return 1;
}

static const char plain_original[] = "Received: from localhost by mail.example.com\r\n"
                                     "From: Alice <alice@example.com>\r\n"
                                     "To: Bob <bob@example.org>\r\n"
                                     "Subject: Quarterly report\r\n"
                                     "Message-ID: <q3.report@example.com>\r\n"
                                     "MIME-Version: 1.0\r\n"
                                     "Content-Type: text/plain; charset=us-ascii\r\n"
                                     "\r\n"
                                     "Hello Bob,\r\n"
                                     "\r\n"
                                     "the numbers are attached in spirit.\r\n"
                                     "-- \r\n"
                                     "Alice\r\n";

static struct bounce_info base_info(void)
{
    struct bounce_info bi;

    memset(&bi, 0, sizeof(bi));
    bi.reporting_mta = "mail.example.com";
    bi.to = "alice@example.com";
    bi.queue_id = "A1B2C3D4E5";
    bi.arrival = NOW - 3600;
    bi.now = NOW;
    bi.original = plain_original;
    bi.original_len = sizeof(plain_original) - 1;
    bi.max_original = 1 << 20;
    return bi;
}

static int write_file(const char *dir, const char *name, const char *data, size_t len)
{
    char path[4096];
    FILE *f;
    int n = snprintf(path, sizeof(path), "%s/%s", dir, name);

    if (n < 0 || (size_t)n >= sizeof(path)) {
        fprintf(stderr, "path too long\n");
        return -1;
    }
    f = fopen(path, "wb");
    if (f == NULL) {
        fprintf(stderr, "%s: %s\n", path, strerror(errno));
        return -1;
    }
    if (len > 0 && fwrite(data, 1, len, f) != len) {
        fprintf(stderr, "%s: short write\n", path);
        fclose(f);
        return -1;
    }
    return fclose(f) == 0 ? 0 : -1;
}

/* The boundary parameter of a built DSN, copied into out (NUL-terminated). */
static int boundary_of(const char *dsn, char *out, size_t outlen)
{
    const char *p = strstr(dsn, "boundary=\"");
    const char *e;

    if (p == NULL)
        return -1;
    p += strlen("boundary=\"");
    e = strchr(p, '"');
    if (e == NULL || (size_t)(e - p) >= outlen)
        return -1;
    memcpy(out, p, (size_t)(e - p));
    out[e - p] = '\0';
    return 0;
}

static char *long_string(char fill, size_t n)
{
    char *s = malloc(n + 1);

    if (s == NULL)
        abort();
    memset(s, fill, n);
    s[n] = '\0';
    return s;
}

int main(int argc, char **argv)
{
    struct bounce_info bi = base_info();
    struct bounce_rcpt r[3];
    const char *name;
    char *dsn, *big = NULL, *hostile = NULL;
    size_t len = 0;
    int fail = 0;

    if (argc != 3) {
        fprintf(stderr, "usage: %s CASE OUTDIR\n", argv[0]);
        return 2;
    }
    name = argv[1];
    memset(r, 0, sizeof(r));
    r[0].addr = "bob@example.org";
    r[0].action = "failed";
    r[0].status = "5.1.1";
    r[0].diagnostic = "550 5.1.1 <bob@example.org>: Recipient address rejected: User unknown";
    r[0].remote_mta = "mx.example.org";
    r[0].last_attempt = NOW - 60;
    bi.rcpts = r;
    bi.nrcpts = 1;

    if (strcmp(name, "single_failed") == 0) {
        bi.ret_full = 1;
    } else if (strcmp(name, "mixed") == 0) {
        r[1].addr = "carol@example.net";
        r[1].action = "delayed";
        r[1].status = "4.4.1";
        r[1].diagnostic = "421 4.4.1 Connection timed out";
        r[1].remote_mta = "mx.example.net";
        r[1].last_attempt = NOW - 120;
        /* No reply, no status: the status follows from the action. */
        r[2].addr = "dave@example.com";
        r[2].action = "failed";
        r[2].status = NULL;
        bi.nrcpts = 3;
    } else if (strcmp(name, "all_delayed") == 0) {
        r[0].action = "delayed";
        r[0].status = "4.2.2";
        r[0].diagnostic = "452 4.2.2 Mailbox full";
        r[1] = r[0];
        r[1].addr = "erin@example.org";
        r[1].diagnostic = NULL;
        r[1].remote_mta = NULL;
        r[1].last_attempt = 0;
        bi.nrcpts = 2;
    } else if (strcmp(name, "orcpt_envid") == 0) {
        bi.envid = "QQ314159+2Bmore+3Dx";
        r[0].orcpt = "rfc822;bob+2Btag@example.org";
        /* A decoded ORCPT that tries to add a field of its own. */
        r[1].addr = "frank@example.org";
        r[1].orcpt = "rfc822;frank+0D+0AX-Injected:+20yes@example.org";
        r[1].action = "failed";
        r[1].status = "5.1.1";
        bi.nrcpts = 2;
    } else if (strcmp(name, "hostile_diag") == 0) {
        static const char head[] = "550 5.7.1 rejected\r\nX-Injected: yes\r\n\x1b[31mred\x1b[0m"
                                   "\r\n--=_fakeboundary\r\n--=_fakeboundary--\r\n"
                                   "Content-Type: text/html\r\n\r\n<b>\xff\xc3\xa9\xc2\x9b</b>\t";
        size_t pad = 10 * 1024;

        hostile = malloc(sizeof(head) + pad + 16);
        if (hostile == NULL)
            abort();
        memcpy(hostile, head, sizeof(head) - 1);
        memset(hostile + sizeof(head) - 1, 'A', pad);
        /* Whatever follows a NUL never reaches bounce_build: it takes C strings. */
        memcpy(hostile + sizeof(head) - 1 + pad, "\0AFTERNUL", 10);
        r[0].diagnostic = hostile;
    } else if (strcmp(name, "hostile_fields") == 0) {
        bi.reporting_mta = "mail.example.com\r\nBcc: victim@example.org";
        bi.to = "alice@example.com>\r\nBcc: victim@example.org";
        bi.queue_id = "Q1\r\nX-Injected: 1";
        bi.envid = "E1+0D+0AX-Injected:+20yes";
        r[0].addr = "evil\r\n\r\n--=_x\x1b[2J@example.org";
        r[0].remote_mta = "mx.example.org\r\nX-Injected: 1";
        r[0].action = "exploded\r\nX: y";
        r[0].status = "5.1.1\r\nX: y";
        r[1].addr = big = long_string('a', 3000);
        r[1].action = "failed";
        r[1].status = "5.1.3";
        bi.nrcpts = 2;
    } else if (strcmp(name, "utf8_rcpt") == 0) {
        r[0].addr = "j\xc3\xb6rg@example.org";
    } else if (strcmp(name, "boundary_in_original") == 0) {
        static const char orig[] = "From: alice@example.com\r\n"
                                   "Subject: tricky\r\n"
                                   "\r\n"
                                   "--=_000102030405060708090a0b0c0d0e0f\r\n"
                                   "Content-Type: message/delivery-status\r\n"
                                   "\r\n"
                                   "Final-Recipient: rfc822; forged@example.org\r\n"
                                   "--=_000102030405060708090a0b0c0d0e0f--\r\n"
                                   "------=_Part_0_1234.5678\r\n"
                                   "--boundary\r\n";

        script_first_draw = 1;
        bi.original = orig;
        bi.original_len = sizeof(orig) - 1;
        bi.ret_full = 1;
    } else if (strcmp(name, "ret_hdrs") == 0) {
        bi.ret_full = 0;
    } else if (strcmp(name, "full_too_big") == 0) {
        static const char line[] = "0123456789012345678901234567890123456789012345\r\n";
        size_t n = 100 * (sizeof(line) - 1), off = sizeof(plain_original) - 1;

        big = malloc(off + n);
        if (big == NULL)
            abort();
        memcpy(big, plain_original, off);
        for (size_t i = 0; i < n; i += sizeof(line) - 1)
            memcpy(big + off + i, line, sizeof(line) - 1);
        bi.original = big;
        bi.original_len = off + n;
        bi.ret_full = 1;
        bi.max_original = 1000;
    } else if (strcmp(name, "no_separator") == 0) {
        static const char orig[] = "From: alice@example.com\r\n"  /* 25 */
                                   "To: bob@example.org\r\n"      /* 21 */
                                   "Subject: no body at all\r\n"  /* 25 */
                                   "X-Long: 0123456789abcdef\r\n" /* 26 */
                                   "X-Last: end";
        bi.original = orig;
        bi.original_len = sizeof(orig) - 1;
        bi.ret_full = 1;
        bi.max_original = 80; /* too small for the whole: cut after the third line */
    } else if (strcmp(name, "eight_bit") == 0) {
        static const char orig[] = "From: J\xc3\xb6rg <joerg@example.com>\r\n"
                                   "Subject: Gr\xc3\xbc\xc3\x9f"
                                   "e\r\n"
                                   "Content-Type: text/plain; charset=utf-8\r\n"
                                   "Content-Transfer-Encoding: 8bit\r\n"
                                   "\r\n"
                                   "Sch\xc3\xb6ne Gr\xc3\xbc\xc3\x9f"
                                   "e, \xff\xfe raw bytes\r\n";
        bi.original = orig;
        bi.original_len = sizeof(orig) - 1;
        bi.ret_full = 1;
    } else if (strcmp(name, "eight_bit_hdrs") == 0) {
        static const char orig[] = "From: J\xc3\xb6rg <joerg@example.com>\r\n"
                                   "Subject: Gr\xc3\xbc\xc3\x9f"
                                   "e = \xff \r\n"
                                   "\r\n"
                                   "body\r\n";
        bi.original = orig;
        bi.original_len = sizeof(orig) - 1;
        bi.ret_full = 0;
    } else if (strcmp(name, "broken_original") == 0) {
        /* Bare LF, bare CR, NUL and a 2000-octet header line: not fit to attach as is. */
        size_t n = 2000;
        static const char head[] = "From: a@example.com\nX-Bare-CR: a\rb\r\nX-Nul: a";
        static const char tail[] = "\r\n\r\nbody\r\n";

        big = malloc(sizeof(head) + 1 + 8 + n + sizeof(tail));
        if (big == NULL)
            abort();
        len = 0;
        memcpy(big, head, sizeof(head) - 1);
        len = sizeof(head) - 1;
        big[len++] = '\0';
        memcpy(big + len, "\r\nX-Big: ", 9);
        len += 9;
        memset(big + len, 'x', n);
        len += n;
        memcpy(big + len, tail, sizeof(tail) - 1);
        len += sizeof(tail) - 1;
        bi.original = big;
        bi.original_len = len;
        bi.ret_full = 1;
    } else if (strcmp(name, "empty_original") == 0) {
        bi.original = "";
        bi.original_len = 0;
        bi.ret_full = 1;
    } else {
        fprintf(stderr, "unknown case %s\n", name);
        return 2;
    }

    dsn = bounce_build(&bi, &len);
    if (dsn == NULL) {
        fprintf(stderr, "bounce_build returned NULL\n");
        return 1;
    }
    if (memchr(dsn, '\0', len) != NULL || strlen(dsn) != len) {
        fprintf(stderr, "NUL inside the DSN\n");
        fail = 1;
    }

    if (script_first_draw && draws < 2) {
        fprintf(stderr, "boundary was not drawn again after a collision (draws=%d)\n", draws);
        fail = 1;
    }
    if (strcmp(name, "single_failed") == 0) {
        /* Two builds of the same input must not share a boundary or a Message-ID. */
        size_t len2;
        char *again = bounce_build(&bi, &len2);
        char b1[128], b2[128];
        const char *m1 = strstr(dsn, "Message-ID: "), *m2;

        if (again == NULL || boundary_of(dsn, b1, sizeof(b1)) != 0 ||
            boundary_of(again, b2, sizeof(b2)) != 0 || strcmp(b1, b2) == 0) {
            fprintf(stderr, "second build reused the boundary\n");
            fail = 1;
        }
        m2 = again != NULL ? strstr(again, "Message-ID: ") : NULL;
        if (m1 == NULL || m2 == NULL || strncmp(m1, m2, strcspn(m1, "\r")) == 0) {
            fprintf(stderr, "second build reused the Message-ID\n");
            fail = 1;
        }
        free(again);
    }

    if (write_file(argv[2], "dsn.eml", dsn, len) != 0 ||
        write_file(argv[2], "original", bi.original, bi.original_len) != 0)
        fail = 1;
    free(dsn);
    free(big);
    free(hostile);
    return fail;
}
