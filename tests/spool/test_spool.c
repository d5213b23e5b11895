/*
 * Tests of the durable spool: the header format (round trip and a table of
 * broken headers) and the spool on a real filesystem, driven from a libevent
 * loop the way the daemon drives it.  Run one group: test_spool <group>.
 */
#include <dirent.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "bodyfile.h"
#include "check.h"
#include "log.h"
#include "spool.h"

static struct event_base *base;

/* ---- helpers ------------------------------------------------------------------ */

static void die(const char *what)
{
    fprintf(stderr, "test setup failed: %s: %s\n", what, strerror(errno));
    exit(2);
}

static char *path_of(const char *a, const char *b, const char *c)
{
    char *p;
    if (asprintf(&p, "%s%s%s%s%s", a, b ? "/" : "", b ? b : "", c ? "/" : "", c ? c : "") < 0)
        die("asprintf");
    return p;
}

static char *make_tmpdir(void)
{
    const char *t = getenv("TMPDIR");
    char *tmpl = path_of(t != NULL && *t != '\0' ? t : "/tmp", "spooltest.XXXXXX", NULL);
    if (mkdtemp(tmpl) == NULL)
        die("mkdtemp");
    return tmpl;
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    return remove(p);
}

static void rm_rf(char *dir)
{
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(dir);
}

/* Entries of dir/sub, not counting dot names. */
static int count_files(const char *dir, const char *sub)
{
    char *p = path_of(dir, sub, NULL);
    DIR *d = opendir(p);
    struct dirent *de;
    int n = 0;

    free(p);
    if (d == NULL)
        return -1;
    while ((de = readdir(d)) != NULL)
        n += de->d_name[0] != '.';
    closedir(d);
    return n;
}

static int exists(const char *dir, const char *sub, const char *name)
{
    char *p = path_of(dir, sub, name);
    struct stat st;
    int rc = lstat(p, &st) == 0;
    free(p);
    return rc;
}

static char *read_all(const char *dir, const char *sub, const char *name, size_t *len)
{
    char *p = path_of(dir, sub, name);
    FILE *f = fopen(p, "rb");
    char *buf = NULL;
    long n;

    free(p);
    if (f == NULL)
        return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (buf = malloc((size_t)n + 1)) != NULL && fread(buf, 1, (size_t)n, f) == (size_t)n) {
        buf[n] = '\0';
        *len = (size_t)n;
    } else {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    return buf;
}

static void write_all_file(const char *dir, const char *sub, const char *name, const char *data,
                           size_t len)
{
    char *p = path_of(dir, sub, name);
    FILE *f = fopen(p, "wb");
    if (f == NULL || fwrite(data, 1, len, f) != len || fclose(f) != 0)
        die(p);
    free(p);
}

static void entry_init(struct spool_entry *e, const char *id, size_t nrcpts)
{
    char buf[64];

    memset(e, 0, sizeof(*e));
    snprintf(e->id, sizeof(e->id), "%s", id);
    e->created = 1700000000;
    e->sender = strdup("sender@example.org");
    e->uid = 1000;
    e->nrcpts = nrcpts;
    e->rcpts = calloc(nrcpts ? nrcpts : 1, sizeof(*e->rcpts));
    for (size_t i = 0; i < nrcpts; i++) {
        snprintf(buf, sizeof(buf), "rcpt%zu@example.net", i);
        e->rcpts[i].addr = strdup(buf);
        e->rcpts[i].state = SPOOL_PENDING;
    }
}

static struct evbuffer *body_of(const char *text)
{
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, text, strlen(text));
    return b;
}

struct waiter {
    int calls;
    int err;
    int errs; /* callbacks with err != 0 */
};

static void on_done(int err, void *arg)
{
    struct waiter *w = arg;
    w->calls++;
    w->err = err;
    w->errs += err != 0;
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    *(int *)arg = 1;
    event_base_loopbreak(base);
}

/* Run the loop until *calls reaches want; 0, or -1 after 60 s. */
static int wait_for(const int *calls, int want)
{
    int timed_out = 0;
    struct timeval tv = {60, 0};
    struct event *t = evtimer_new(base, on_timeout, &timed_out);

    evtimer_add(t, &tv);
    while (*calls < want && !timed_out)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(t);
    if (timed_out)
        fprintf(stderr, "timed out: %d of %d callbacks\n", *calls, want);
    return timed_out ? -1 : 0;
}

static struct spool *open_spool(const char *dir, uint64_t min_free)
{
    char err[512];
    struct spool_opts o = {dir, min_free};
    struct spool *s = spool_open(base, &o, err, sizeof(err));
    if (s == NULL)
        fprintf(stderr, "spool_open: %s\n", err);
    return s;
}

/* Commit and wait; returns the callback's err (or -1 if not queued). */
static int commit_wait(struct spool *s, struct spool_entry *e, const char *body)
{
    struct waiter w = {0};
    struct evbuffer *b = body_of(body);
    int rc = spool_commit(s, e, b, -1, on_done, &w);
    evbuffer_free(b);
    if (rc != 0)
        return -1;
    if (wait_for(&w.calls, 1) < 0)
        return -2;
    return w.err;
}

static int entries_equal(const struct spool_entry *a, const struct spool_entry *b)
{
#define SAME_STR(x, y) ((x) == NULL ? (y) == NULL : (y) != NULL && strcmp((x), (y)) == 0)
    if (strcmp(a->id, b->id) != 0 || a->created != b->created || !SAME_STR(a->sender, b->sender) ||
        !SAME_STR(a->relay, b->relay) || a->uid != b->uid || !a->eightbit != !b->eightbit ||
        !a->smtputf8 != !b->smtputf8 || !a->is_bounce != !b->is_bounce || a->ret != b->ret ||
        !SAME_STR(a->envid, b->envid) || a->nrcpts != b->nrcpts || a->body_size != b->body_size ||
        a->body_off != b->body_off)
        return 0;
    for (size_t i = 0; i < a->nrcpts; i++) {
        const struct spool_rcpt *x = &a->rcpts[i], *y = &b->rcpts[i];
        if (!SAME_STR(x->addr, y->addr) || x->state != y->state || x->notify != y->notify ||
            !SAME_STR(x->orcpt, y->orcpt) || x->state_off != y->state_off)
            return 0;
    }
    return 1;
#undef SAME_STR
}

/* ---- spool_format_roundtrip ------------------------------------------------------ */

static void set_str(char **field, const char *v)
{
    free(*field);
    *field = v != NULL ? strdup(v) : NULL;
}

static void roundtrip_one(const char *name, struct spool_entry *e, const char *body)
{
    struct evbuffer *out = evbuffer_new();
    struct spool_entry back;
    const char *why = NULL;

    check_case = name;
    e->body_size = strlen(body);
    CHECK(spool_header_format(e, out) == 0);
    size_t hlen = evbuffer_get_length(out);
    CHECK((off_t)hlen == e->body_off);
    evbuffer_add(out, body, strlen(body));
    size_t len = evbuffer_get_length(out);
    const char *buf = (const char *)evbuffer_pullup(out, -1);
    for (size_t i = 0; i < e->nrcpts; i++)
        CHECK(e->rcpts[i].state_off > 0 && (size_t)e->rcpts[i].state_off < hlen &&
              buf[e->rcpts[i].state_off] == e->rcpts[i].state);
    int rc = spool_header_parse(buf, len, &back, &why);
    CHECK(rc == 0);
    if (rc != 0) {
        fprintf(stderr, "[%s] parse failed: %s\n", name, why);
    } else {
        CHECK(entries_equal(e, &back));
        CHECK(memcmp(buf + back.body_off, body, strlen(body)) == 0);
        /* Recovery parses from a prefix plus the file's size. */
        struct spool_entry pre;
        CHECK(spool_header_parse_sized(buf, hlen, len, &pre, &why) == 0 && entries_equal(e, &pre));
        spool_entry_clear(&pre);
    }
    spool_entry_clear(&back);
    evbuffer_free(out);
}

static void format_rejects(const char *name, struct spool_entry *e)
{
    struct evbuffer *out = evbuffer_new();
    check_case = name;
    CHECK(spool_header_format(e, out) == -1);
    CHECK(evbuffer_get_length(out) == 0);
    evbuffer_free(out);
}

static void test_format_roundtrip(void)
{
    struct spool_entry e;
    char long_addr[257];

    entry_init(&e, "0123456789ABCDEF", 2);
    roundtrip_one("plain", &e, "Subject: hi\r\n\r\nbody\r\n");
    roundtrip_one("empty body", &e, "");

    set_str(&e.sender, "");
    set_str(&e.relay, "eu-relay");
    set_str(&e.envid, "QQ314159+2B");
    e.ret = SPOOL_RET_HDRS;
    e.eightbit = 1;
    e.smtputf8 = 1;
    e.is_bounce = 1;
    e.uid = 4294967294u;
    e.created = 0;
    e.rcpts[0].state = SPOOL_DELIVERED;
    e.rcpts[0].notify = SPOOL_NOTIFY_SUCCESS | SPOOL_NOTIFY_FAILURE | SPOOL_NOTIFY_DELAY;
    set_str(&e.rcpts[0].orcpt, "rfc822;a+2Bb@example.com");
    e.rcpts[1].state = SPOOL_DONE;
    e.rcpts[1].notify = SPOOL_NOTIFY_NEVER;
    roundtrip_one("null sender, every field", &e, "x");

    set_str(&e.relay, "");
    set_str(&e.envid, "");
    e.ret = SPOOL_RET_FULL;
    e.created = (time_t)INT64_MAX;
    roundtrip_one("empty relay and envid", &e, "y\r\n");

    /* Odd but storable addresses: spaces, quotes, UTF-8, %n, tabs, escapes. */
    static const char *const odd[] = {
        "\"john  doe\"@example.com",
        "j\xc3\xb6ran@\xe4\xbe\x8b\xe3\x81\x88.jp",
        "%n%s%x@example.com",
        "tab\there@x",
        "esc\x1b[31m@x",
        "back\\slash@x",
        "-",
        "<>",
        "rcpt P 0 - fake@x",
        "postmaster",
        "a b c",
        " leading-space@x",
        "trailing-space@x ",
    };
    for (size_t i = 0; i < sizeof(odd) / sizeof(odd[0]); i++) {
        set_str(&e.rcpts[1].addr, odd[i]);
        set_str(&e.sender, odd[i]);
        e.rcpts[1].state = "PDFX"[i % 4];
        roundtrip_one(odd[i], &e, "odd\r\n");
    }
    memset(long_addr, 'a', 256);
    long_addr[256] = '\0';
    set_str(&e.rcpts[1].addr, long_addr);
    set_str(&e.sender, long_addr);
    roundtrip_one("256-byte addresses", &e, "");
    spool_entry_clear(&e);

    /* The limit on recipients is reachable. */
    entry_init(&e, "many", 1000);
    roundtrip_one("1000 recipients", &e, "z");
    spool_entry_clear(&e);

    /* What cannot be stored is refused, and nothing is written. */
    static const char *const bad_ids[] = {
        "", "../x", "a/b", ".hidden", "-x", "a.b", "0123456789012345678901234567890123", "a b"};
    for (size_t i = 0; i < sizeof(bad_ids) / sizeof(bad_ids[0]); i++) {
        entry_init(&e, "ok", 1);
        memset(e.id, 0, sizeof(e.id));
        memcpy(e.id, bad_ids[i],
               strlen(bad_ids[i]) < SPOOL_ID_MAX ? strlen(bad_ids[i]) : SPOOL_ID_MAX);
        if (strlen(bad_ids[i]) > SPOOL_ID_MAX)
            memset(e.id, 'a', SPOOL_ID_MAX), e.id[5] = '.';
        format_rejects(bad_ids[i], &e);
        spool_entry_clear(&e);
    }
    CHECK(spool_id_valid("0123456789ABCDEF0123456789abcdef"));
    CHECK(!spool_id_valid("0123456789ABCDEF0123456789abcdef0"));

    entry_init(&e, "ok", 1);
    set_str(&e.sender, "a\r\n@x");
    format_rejects("CRLF in sender", &e);
    set_str(&e.sender, "a\n@x");
    format_rejects("LF in sender", &e);
    set_str(&e.sender, long_addr);
    e.sender[0] = 'b';
    set_str(&e.rcpts[0].addr, "a\r@x");
    format_rejects("CR in recipient", &e);
    set_str(&e.rcpts[0].addr, "");
    format_rejects("empty recipient", &e);
    char too_long[258];
    memset(too_long, 'a', 257);
    too_long[257] = '\0';
    set_str(&e.rcpts[0].addr, too_long);
    format_rejects("257-byte recipient", &e);
    set_str(&e.rcpts[0].addr, "ok@x");
    set_str(&e.sender, too_long);
    format_rejects("257-byte sender", &e);
    set_str(&e.sender, "s@x");
    set_str(&e.relay, "-");
    format_rejects("relay named -", &e);
    set_str(&e.relay, NULL);
    set_str(&e.envid, "has space");
    format_rejects("envid with a space", &e);
    set_str(&e.envid, NULL);
    set_str(&e.rcpts[0].orcpt, "rfc822;a b");
    format_rejects("orcpt with a space", &e);
    set_str(&e.rcpts[0].orcpt, NULL);
    e.rcpts[0].state = 'Q';
    format_rejects("bad state", &e);
    e.rcpts[0].state = SPOOL_PENDING;
    e.rcpts[0].notify = 16;
    format_rejects("bad notify", &e);
    e.rcpts[0].notify = 0;
    e.created = -1;
    format_rejects("negative time", &e);
    e.created = 1;
    e.uid = (uid_t)-1;
    format_rejects("uid -1", &e);
    e.uid = 0;
    e.ret = (enum spool_ret)7;
    format_rejects("bad ret", &e);
    e.ret = SPOOL_RET_UNSET;
    spool_entry_clear(&e);
    entry_init(&e, "ok", 0);
    format_rejects("no recipients", &e);
    spool_entry_clear(&e);
    entry_init(&e, "ok", 1001);
    format_rejects("1001 recipients", &e);
    spool_entry_clear(&e);
}

/* ---- spool_parse_malformed ------------------------------------------------------ */

#define H_MAGIC "MAILPOOL-SPOOL 1\n"
#define H_ID "id A1B2\n"
#define H_CREATED "created 1700000000\n"
#define H_SENDER "sender a@b\n"
#define H_MID "relay -\nuid 1000\neightbit 0\nsmtputf8 0\nbounce 0\nret -\nenvid -\n"
#define H_SIZE "size 5\n"
#define H_RCPT "rcpt P 0 - c@d\n"
#define H_BODY "\nhello"
#define H_GOOD H_MAGIC H_ID H_CREATED H_SENDER H_MID H_SIZE H_RCPT H_BODY

struct bad_case {
    const char *name;
    const char *text;
    size_t len; /* 0: strlen */
    const char *why;
};

static const struct bad_case bad_cases[] = {
    {"empty", "", 0, "bad magic"},
    {"bad magic", "MAILPOOL-SPOOX 1\n" H_ID H_CREATED H_SENDER H_MID H_SIZE H_RCPT H_BODY, 0,
     "bad magic"},
    {"version 2", "MAILPOOL-SPOOL 2\n" H_ID H_CREATED H_SENDER H_MID H_SIZE H_RCPT H_BODY, 0,
     "unsupported"},
    {"magic with trailing space",
     "MAILPOOL-SPOOL 1 \n" H_ID H_CREATED H_SENDER H_MID H_SIZE H_RCPT H_BODY, 0, "unsupported"},
    {"missing id", H_MAGIC H_CREATED H_SENDER H_MID H_SIZE H_RCPT H_BODY, 0, "missing key: id"},
    {"missing sender", H_MAGIC H_ID H_CREATED H_MID H_SIZE H_RCPT H_BODY, 0, "missing key: sender"},
    {"missing size", H_MAGIC H_ID H_CREATED H_SENDER H_MID H_RCPT H_BODY, 0, "missing key: size"},
    {"duplicate uid", H_MAGIC H_ID H_CREATED H_SENDER H_MID "uid 1\n" H_SIZE H_RCPT H_BODY, 0,
     "duplicate key"},
    {"duplicate id", H_MAGIC H_ID H_ID H_CREATED H_SENDER H_MID H_SIZE H_RCPT H_BODY, 0,
     "duplicate key"},
    {"unknown key", H_MAGIC H_ID "color blue\n" H_CREATED H_SENDER H_MID H_SIZE H_RCPT H_BODY, 0,
     "unknown key"},
    {"line without value", H_MAGIC "id\n" H_CREATED H_SENDER H_MID H_SIZE H_RCPT H_BODY, 0,
     "without a value"},
    {"key after rcpt", H_MAGIC H_ID H_SENDER H_MID H_SIZE H_RCPT H_CREATED H_BODY, 0,
     "key after recipients"},
    {"no recipients", H_MAGIC H_ID H_CREATED H_SENDER H_MID H_SIZE H_BODY, 0, "no recipients"},
    {"created negative", H_MAGIC H_ID "created -1\n" H_SENDER H_MID H_SIZE H_RCPT H_BODY, 0,
     "bad value: created"},
    {"created leading zero", H_MAGIC H_ID "created 01\n" H_SENDER H_MID H_SIZE H_RCPT H_BODY, 0,
     "bad value: created"},
    {"created empty", H_MAGIC H_ID "created \n" H_SENDER H_MID H_SIZE H_RCPT H_BODY, 0,
     "bad value: created"},
    {"created overflow",
     H_MAGIC H_ID "created 99999999999999999999\n" H_SENDER H_MID H_SIZE H_RCPT H_BODY, 0,
     "bad value: created"},
    {"created hex", H_MAGIC H_ID "created 0x10\n" H_SENDER H_MID H_SIZE H_RCPT H_BODY, 0,
     "bad value: created"},
    {"uid -1", H_MAGIC H_ID H_CREATED H_SENDER "uid 4294967295\n" H_SIZE H_RCPT H_BODY, 0,
     "bad value: uid"},
    {"eightbit 2",
     H_MAGIC H_ID H_CREATED H_SENDER
     "relay -\nuid 1000\neightbit 2\nsmtputf8 0\nbounce 0\nret -\nenvid -\n" H_SIZE H_RCPT H_BODY,
     0, "bad value: eightbit"},
    {"ret lowercase",
     H_MAGIC H_ID H_CREATED H_SENDER
     "relay -\nuid 1000\neightbit 0\nsmtputf8 0\nbounce 0\nret full\nenvid -\n" H_SIZE H_RCPT
         H_BODY,
     0, "bad value: ret"},
    {"size with junk", H_MAGIC H_ID H_CREATED H_SENDER H_MID "size 5x\n" H_RCPT H_BODY, 0,
     "bad value: size"},
    {"size signed", H_MAGIC H_ID H_CREATED H_SENDER H_MID "size +5\n" H_RCPT H_BODY, 0,
     "bad value: size"},
    {"bad id", H_MAGIC "id ../etc\n" H_CREATED H_SENDER H_MID H_SIZE H_RCPT H_BODY, 0,
     "bad value: id"},
    {"CR in sender", H_MAGIC H_ID H_CREATED "sender a\r@b\n" H_MID H_SIZE H_RCPT H_BODY, 0,
     "CR in header"},
    {"CRLF lines", "MAILPOOL-SPOOL 1\r\n" H_ID H_CREATED H_SENDER H_MID H_SIZE H_RCPT H_BODY, 0,
     "CR in header"},
    {"NUL in rcpt", H_MAGIC H_ID H_CREATED H_SENDER H_MID H_SIZE "rcpt P 0 - c\0d\n" H_BODY,
     sizeof(H_MAGIC H_ID H_CREATED H_SENDER H_MID H_SIZE "rcpt P 0 - c\0d\n" H_BODY) - 1,
     "NUL byte"},
    {"state Q", H_MAGIC H_ID H_CREATED H_SENDER H_MID H_SIZE "rcpt Q 0 - c@d\n" H_BODY, 0,
     "bad recipient state"},
    {"state lowercase", H_MAGIC H_ID H_CREATED H_SENDER H_MID H_SIZE "rcpt p 0 - c@d\n" H_BODY, 0,
     "bad recipient state"},
    {"rcpt no space after state",
     H_MAGIC H_ID H_CREATED H_SENDER H_MID H_SIZE "rcpt PP 0 - c@d\n" H_BODY, 0, "malformed rcpt"},
    {"notify 16", H_MAGIC H_ID H_CREATED H_SENDER H_MID H_SIZE "rcpt P 16 - c@d\n" H_BODY, 0,
     "bad rcpt notify"},
    {"notify missing", H_MAGIC H_ID H_CREATED H_SENDER H_MID H_SIZE "rcpt P  - c@d\n" H_BODY, 0,
     "bad rcpt notify"},
    {"rcpt without address", H_MAGIC H_ID H_CREATED H_SENDER H_MID H_SIZE "rcpt P 0 -\n" H_BODY, 0,
     "bad rcpt orcpt"},
    {"rcpt empty address", H_MAGIC H_ID H_CREATED H_SENDER H_MID H_SIZE "rcpt P 0 - \n" H_BODY, 0,
     "bad rcpt address"},
    {"truncated body", H_MAGIC H_ID H_CREATED H_SENDER H_MID H_SIZE H_RCPT "\nhell", 0,
     "truncated body"},
    {"no body at all", H_MAGIC H_ID H_CREATED H_SENDER H_MID H_SIZE H_RCPT "\n", 0,
     "truncated body"},
    {"bytes after body", H_MAGIC H_ID H_CREATED H_SENDER H_MID H_SIZE H_RCPT "\nhello!", 0,
     "bytes after the body"},
    {"truncated header", H_MAGIC H_ID H_CREATED H_SENDER H_MID H_SIZE H_RCPT, 0,
     "truncated header"},
    {"truncated mid-line", H_MAGIC H_ID H_CREATED "send", 0, "truncated header"},
};

static void parse_expect_error(const char *name, const char *text, size_t len, const char *want)
{
    struct spool_entry e;
    const char *why = NULL;
    char *copy = malloc(len > 0 ? len : 1); /* exact size, so ASan sees over-reads */

    check_case = name;
    memcpy(copy, text, len);
    CHECK(spool_header_parse(copy, len, &e, &why) == -1);
    CHECK(why != NULL && strstr(why, want) != NULL);
    if (why != NULL && strstr(why, want) == NULL)
        fprintf(stderr, "[%s] got reason \"%s\", want \"%s\"\n", name, why, want);
    CHECK(e.sender == NULL && e.rcpts == NULL && e.nrcpts == 0);
    free(copy);
}

static void test_parse_malformed(void)
{
    struct spool_entry e;
    const char *why = NULL;

    check_case = "the good base";
    CHECK(spool_header_parse(H_GOOD, strlen(H_GOOD), &e, &why) == 0);
    CHECK(e.nrcpts == 1 && e.body_size == 5 && strcmp(e.sender, "a@b") == 0);
    CHECK(H_GOOD[e.rcpts[0].state_off] == 'P');
    spool_entry_clear(&e);

    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        const struct bad_case *c = &bad_cases[i];
        parse_expect_error(c->name, c->text, c->len ? c->len : strlen(c->text), c->why);
    }

    /* Every prefix of a good file is an error (a torn copy never parses). */
    for (size_t n = 0; n < strlen(H_GOOD); n++)
        parse_expect_error("prefix", H_GOOD, n, "");

    /* Too many recipients. */
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_printf(b, "%s", H_MAGIC H_ID H_CREATED H_SENDER H_MID "size 0\n");
    for (int i = 0; i < 1001; i++)
        evbuffer_add_printf(b, "rcpt P 0 - r%d@x\n", i);
    evbuffer_add(b, "\n", 1);
    parse_expect_error("1001 recipients", (const char *)evbuffer_pullup(b, -1),
                       evbuffer_get_length(b), "too many recipients");
    evbuffer_free(b);

    /* A header over 1 MiB. */
    b = evbuffer_new();
    evbuffer_add_printf(b, "%s", H_MAGIC H_ID H_CREATED H_SENDER H_MID "size 0\n");
    while (evbuffer_get_length(b) <= 1024 * 1024)
        evbuffer_add_printf(b, "rcpt P 0 - %0200d@x\n", 0);
    evbuffer_add(b, "\n", 1);
    parse_expect_error("header over 1 MiB", (const char *)evbuffer_pullup(b, -1),
                       evbuffer_get_length(b), "header too long");
    evbuffer_free(b);

    /* Over-long values. */
    b = evbuffer_new();
    evbuffer_add_printf(b, "%s", H_MAGIC H_ID H_CREATED "sender ");
    for (int i = 0; i < 257; i++)
        evbuffer_add(b, "s", 1);
    evbuffer_add_printf(b, "\n%s", H_MID H_SIZE H_RCPT H_BODY);
    parse_expect_error("257-byte sender", (const char *)evbuffer_pullup(b, -1),
                       evbuffer_get_length(b), "bad value: sender");
    evbuffer_free(b);
    b = evbuffer_new();
    evbuffer_add_printf(b, "%s", H_MAGIC H_ID H_CREATED H_SENDER H_MID H_SIZE "rcpt P 0 - ");
    for (int i = 0; i < 257; i++)
        evbuffer_add(b, "r", 1);
    evbuffer_add_printf(b, "\n%s", H_BODY);
    parse_expect_error("257-byte rcpt", (const char *)evbuffer_pullup(b, -1),
                       evbuffer_get_length(b), "bad rcpt address");
    evbuffer_free(b);

    /* The sized form: a header prefix with the real file size. */
    size_t hlen = strlen(H_GOOD) - 5;
    check_case = "sized";
    CHECK(spool_header_parse_sized(H_GOOD, hlen, strlen(H_GOOD), &e, &why) == 0);
    spool_entry_clear(&e);
    CHECK(spool_header_parse_sized(H_GOOD, hlen, strlen(H_GOOD) - 1, &e, &why) == -1 &&
          strstr(why, "truncated body") != NULL);
    CHECK(spool_header_parse_sized(H_GOOD, hlen, strlen(H_GOOD) + 1, &e, &why) == -1 &&
          strstr(why, "after the body") != NULL);
}

/* ---- spool_open_perms --------------------------------------------------------------- */

static void test_open_perms(void)
{
    char *dir = make_tmpdir();
    char *sp = path_of(dir, "spool", NULL);
    char err[512];
    struct spool_opts o = {sp, 0};
    struct spool *s;

    check_case = "creates the directories 0700";
    s = spool_open(base, &o, err, sizeof(err));
    CHECK(s != NULL);
    spool_close(s);
    static const char *const subs[] = {"tmp", "queue", "hold", "failed", "corrupt"};
    for (size_t i = 0; i < 5; i++) {
        char *p = path_of(sp, subs[i], NULL);
        struct stat st;
        CHECK(stat(p, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 07777) == 0700);
        free(p);
    }

    check_case = "world-writable spool refused";
    CHECK(chmod(sp, 0777) == 0);
    err[0] = '\0';
    s = spool_open(base, &o, err, sizeof(err));
    CHECK(s == NULL && strstr(err, "writable") != NULL);
    spool_close(s);
    CHECK(chmod(sp, 0700) == 0);

    check_case = "group-writable queue/ refused";
    char *q = path_of(sp, "queue", NULL);
    CHECK(chmod(q, 0770) == 0);
    s = spool_open(base, &o, err, sizeof(err));
    CHECK(s == NULL && strstr(err, "writable") != NULL && strstr(err, "queue") != NULL);
    spool_close(s);
    CHECK(chmod(q, 0700) == 0);
    free(q);

    check_case = "foreign owner refused";
    if (geteuid() == 0) {
        CHECK(chown(sp, 12345, 12345) == 0);
        s = spool_open(base, &o, err, sizeof(err));
        CHECK(s == NULL && strstr(err, "owned by uid 12345") != NULL);
        spool_close(s);
        CHECK(chown(sp, 0, 0) == 0);
    }

    check_case = "a file where the spool should be";
    char *f = path_of(dir, "file", NULL);
    write_all_file(dir, NULL, "file", "x", 1);
    o.dir = f;
    s = spool_open(base, &o, err, sizeof(err));
    CHECK(s == NULL && err[0] != '\0');
    spool_close(s);
    free(f);

    free(sp);
    rm_rf(dir);
}

struct close_ctx {
    struct spool *s;
    int calls;
    int err;
    int requeue_errno;
};

/* Runs inside spool_close: queueing more must fail cleanly, not leak. */
static void on_close_done(int err, void *arg)
{
    struct close_ctx *c = arg;
    struct spool_entry e;
    struct evbuffer *b = body_of("x");

    c->calls++;
    c->err = err;
    entry_init(&e, "REQUEUE", 1);
    if (spool_commit(c->s, &e, b, -1, on_done, NULL) == -1)
        c->requeue_errno = errno;
    spool_entry_clear(&e);
    evbuffer_free(b);
}

/* ---- spool_commit ------------------------------------------------------------------- */

static void test_commit(void)
{
    char *dir = make_tmpdir();
    struct spool *s = open_spool(dir, 0);
    struct spool_entry e;
    const char *body = "From: a@b\r\nSubject: test\r\n\r\nline one\r\n.line two\r\n";
    struct stat st;
    size_t len;

    if (s == NULL) {
        CHECK(s != NULL);
        rm_rf(dir);
        return;
    }
    check_case = "commit";
    entry_init(&e, "C0FFEE00C0FFEE00", 3);
    set_str(&e.rcpts[2].orcpt, "rfc822;x@y");
    CHECK(commit_wait(s, &e, body) == 0);
    CHECK(e.body_size == strlen(body));

    char *p = path_of(dir, "queue", e.id);
    CHECK(lstat(p, &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & 07777) == 0600);
    free(p);
    CHECK(count_files(dir, "tmp") == 0);
    CHECK(count_files(dir, "queue") == 1);

    /* Content: exactly the formatted header, then exactly the body. */
    struct evbuffer *want = evbuffer_new();
    struct spool_entry copy = e;
    CHECK(spool_header_format(&copy, want) == 0);
    evbuffer_add(want, body, strlen(body));
    char *got = read_all(dir, "queue", e.id, &len);
    CHECK(got != NULL && len == evbuffer_get_length(want) &&
          memcmp(got, evbuffer_pullup(want, -1), len) == 0);
    evbuffer_free(want);

    /* Offsets point at the right bytes. */
    if (got != NULL) {
        struct spool_entry back;
        const char *why;
        CHECK((size_t)e.body_off + strlen(body) == len);
        CHECK(memcmp(got + e.body_off, body, strlen(body)) == 0);
        for (size_t i = 0; i < e.nrcpts; i++)
            CHECK(memcmp(got + e.rcpts[i].state_off - 5, "rcpt P", 6) == 0);
        CHECK(spool_header_parse(got, len, &back, &why) == 0 && entries_equal(&e, &back));
        spool_entry_clear(&back);
    }
    free(got);

    check_case = "same id again";
    size_t first_len = (size_t)e.body_off + strlen(body);
    CHECK(commit_wait(s, &e, "other") == EEXIST);
    got = read_all(dir, "queue", e.id, &len);
    CHECK(got != NULL && len == first_len);
    free(got);
    CHECK(count_files(dir, "tmp") == 0);

    check_case = "invalid entry is not queued";
    struct spool_entry bad;
    entry_init(&bad, "BAD1", 1);
    set_str(&bad.sender, "a\nb");
    struct evbuffer *b = body_of("x");
    struct waiter w = {0};
    CHECK(spool_commit(s, &bad, b, -1, on_done, &w) == -1 && errno == EINVAL);
    memcpy(bad.id, "../x", 5);
    CHECK(spool_commit(s, &bad, b, -1, on_done, &w) == -1 && errno == EINVAL);
    evbuffer_free(b);
    spool_entry_clear(&bad);
    CHECK(w.calls == 0);

    check_case = "close finishes queued commits and reports them";
    struct close_ctx cc = {s, 0, 0, 0};
    struct spool_entry late;
    entry_init(&late, "LATE1", 1);
    b = body_of("late body");
    CHECK(spool_commit(s, &late, b, -1, on_close_done, &cc) == 0);
    evbuffer_free(b);
    spool_close(s); /* no loop run in between */
    CHECK(cc.calls == 1 && cc.err == 0 && cc.requeue_errno == ESHUTDOWN);
    CHECK(exists(dir, "queue", "LATE1") && count_files(dir, "tmp") == 0);
    spool_entry_clear(&late);

    spool_entry_clear(&e);
    rm_rf(dir);
}

/* ---- spool_commit_many ------------------------------------------------------------- */

static void test_commit_many(void)
{
    enum { N = 1000 };
    char *dir = make_tmpdir();
    struct spool *s = open_spool(dir, 0);
    struct waiter w = {0};
    struct evbuffer *body = body_of("Subject: many\r\n\r\nhello\r\n");

    if (s == NULL) {
        CHECK(s != NULL);
        rm_rf(dir);
        return;
    }
    unsigned long before = spool_sync_count(s);
    check_case = "1000 concurrent commits";
    for (int i = 0; i < N; i++) {
        struct spool_entry e;
        char id[32];
        snprintf(id, sizeof(id), "M%06d", i);
        entry_init(&e, id, 2);
        CHECK(spool_commit(s, &e, body, -1, on_done, &w) == 0);
        spool_entry_clear(&e);
    }
    CHECK(wait_for(&w.calls, N) == 0);
    unsigned long syncs = spool_sync_count(s) - before;
    fprintf(stderr, "%d commits, %lu sync calls\n", N, syncs);
    CHECK(w.calls == N && w.errs == 0);
    CHECK(syncs > 0 && syncs < N / 10);
    CHECK(count_files(dir, "queue") == N);
    CHECK(count_files(dir, "tmp") == 0);
    evbuffer_free(body);
    spool_close(s);
    rm_rf(dir);
}

/* ---- spool_min_free ------------------------------------------------------------------- */

static void test_min_free(void)
{
    char *dir = make_tmpdir();
    struct spool *s = open_spool(dir, UINT64_MAX / 4);
    struct spool_entry e;

    if (s == NULL) {
        CHECK(s != NULL);
        rm_rf(dir);
        return;
    }
    check_case = "min_free above free space";
    entry_init(&e, "MINFREE1", 1);
    CHECK(commit_wait(s, &e, "hello\r\n") == ENOSPC);
    CHECK(count_files(dir, "queue") == 0);
    CHECK(count_files(dir, "tmp") == 0);
    spool_entry_clear(&e);
    spool_close(s);

    check_case = "min_free 0 accepts";
    s = open_spool(dir, 0);
    entry_init(&e, "MINFREE2", 1);
    CHECK(commit_wait(s, &e, "hello\r\n") == 0);
    CHECK(count_files(dir, "queue") == 1);
    spool_entry_clear(&e);
    spool_close(s);
    rm_rf(dir);
}

/* ---- spool_enospc: a tiny tmpfs ------------------------------------------------------ */

static void test_enospc(void)
{
    char *dir = make_tmpdir();
    char *mnt = path_of(dir, "mnt", NULL);
    struct spool *s;
    struct spool_entry e;

    if (mkdir(mnt, 0700) < 0)
        die("mkdir");
    /* root + spool dir + 5 subdirectories = 7 inodes: room for exactly 2 files. */
    if (mount("tmpfs", mnt, "tmpfs", MS_NOSUID | MS_NODEV, "size=256k,nr_inodes=9,mode=0700") < 0) {
        fprintf(stderr, "cannot mount a tmpfs (%s): skipped\n", strerror(errno));
        free(mnt);
        rm_rf(dir);
        exit(77);
    }
    char *sp = path_of(mnt, "spool", NULL);
    s = open_spool(sp, 0);
    CHECK(s != NULL);
    if (s != NULL) {
        check_case = "body larger than the filesystem";
        size_t big = 1024 * 1024;
        char *body = malloc(big + 1);
        memset(body, 'x', big);
        body[big] = '\0';
        entry_init(&e, "BIG1", 1);
        CHECK(commit_wait(s, &e, body) == ENOSPC);
        CHECK(count_files(sp, "queue") == 0 && count_files(sp, "tmp") == 0);
        spool_entry_clear(&e);

        check_case = "a batch that fills the filesystem";
        struct waiter w = {0};
        struct evbuffer *eb = evbuffer_new();
        evbuffer_add(eb, body, 60 * 1024);
        for (int i = 0; i < 6; i++) {
            char id[16];
            snprintf(id, sizeof(id), "FILL%d", i);
            entry_init(&e, id, 1);
            CHECK(spool_commit(s, &e, eb, -1, on_done, &w) == 0);
            spool_entry_clear(&e);
        }
        CHECK(wait_for(&w.calls, 6) == 0);
        int ok = 6 - w.errs;
        fprintf(stderr, "%d of 6 60 KB commits fit\n", ok);
        CHECK(ok >= 1 && ok <= 4 && w.errs > 0);
        CHECK(count_files(sp, "queue") == ok && count_files(sp, "tmp") == 0);
        evbuffer_free(eb);
        free(body);

        check_case = "out of inodes: open fails with ENOSPC";
        /* Make room in bytes, keep the inodes short: remove until 2 files remain. */
        for (int i = 0, left = ok; i < 6 && left > 2; i++) {
            char id[16];
            snprintf(id, sizeof(id), "FILL%d", i);
            char *p = path_of(sp, "queue", id);
            if (unlink(p) == 0)
                left--;
            free(p);
        }
        if (count_files(sp, "queue") == 2) {
            entry_init(&e, "INODE1", 1);
            CHECK(commit_wait(s, &e, "tiny") == ENOSPC);
            CHECK(count_files(sp, "queue") == 2 && count_files(sp, "tmp") == 0);
            spool_entry_clear(&e);
        }
        spool_close(s);
    }
    free(sp);
    if (umount2(mnt, MNT_DETACH) < 0)
        fprintf(stderr, "umount %s: %s\n", mnt, strerror(errno));
    free(mnt);
    rm_rf(dir);
}

/* ---- spool_mark ------------------------------------------------------------------------ */

struct found_list {
    struct spool_entry e[8];
    int held[8];
    int n;
};

static void on_found(struct spool_entry *e, int held, void *arg)
{
    struct found_list *f = arg;
    if (f->n < 8) {
        f->e[f->n] = *e; /* take over the allocations */
        memset(e, 0, sizeof(*e));
        f->held[f->n++] = held;
    }
}

static void found_clear(struct found_list *f)
{
    for (int i = 0; i < f->n; i++)
        spool_entry_clear(&f->e[i]);
    f->n = 0;
}

static void test_mark(void)
{
    char *dir = make_tmpdir();
    struct spool *s = open_spool(dir, 0);
    struct spool_entry e;
    struct waiter w = {0};
    size_t len, len2;
    char err[256];

    if (s == NULL) {
        CHECK(s != NULL);
        rm_rf(dir);
        return;
    }
    entry_init(&e, "MARK1", 3);
    CHECK(commit_wait(s, &e, "body\r\n") == 0);
    char *before = read_all(dir, "queue", "MARK1", &len);

    check_case = "two marks at once";
    CHECK(spool_mark(s, &e, 0, 1, SPOOL_DELIVERED, on_done, &w) == 0);
    CHECK(spool_mark(s, &e, 0, 2, SPOOL_FAILED, on_done, &w) == 0);
    CHECK(wait_for(&w.calls, 2) == 0 && w.errs == 0);
    char *after = read_all(dir, "queue", "MARK1", &len2);
    CHECK(before != NULL && after != NULL && len == len2);
    if (before != NULL && after != NULL && len == len2) {
        CHECK(after[e.rcpts[0].state_off] == 'P');
        CHECK(after[e.rcpts[1].state_off] == 'D');
        CHECK(after[e.rcpts[2].state_off] == 'F');
        /* Nothing else changed. */
        before[e.rcpts[1].state_off] = 'D';
        before[e.rcpts[2].state_off] = 'F';
        CHECK(memcmp(before, after, len) == 0);
    }
    free(after);

    check_case = "invalid marks are refused";
    CHECK(spool_mark(s, &e, 0, 3, SPOOL_DELIVERED, on_done, &w) == -1 && errno == EINVAL);
    CHECK(spool_mark(s, &e, 0, 0, 'Z', on_done, &w) == -1 && errno == EINVAL);

    check_case = "a wrong offset does not damage the file";
    struct spool_entry wrong = e;
    struct spool_rcpt r = e.rcpts[0];
    r.state_off = e.body_off + 2;
    wrong.rcpts = &r;
    wrong.nrcpts = 1;
    w.calls = 0;
    CHECK(spool_mark(s, &wrong, 0, 0, SPOOL_DONE, on_done, &w) == 0);
    CHECK(wait_for(&w.calls, 1) == 0 && w.err == EIO);
    after = read_all(dir, "queue", "MARK1", &len2);
    CHECK(after != NULL && len2 == len && memcmp(before, after, len) == 0);
    free(after);
    free(before);

    check_case = "mark of a missing message";
    w.calls = 0;
    CHECK(spool_mark(s, &e, 1, 0, SPOOL_DONE, on_done, &w) == 0); /* not in hold/ */
    CHECK(wait_for(&w.calls, 1) == 0 && w.err == ENOENT);
    spool_close(s);

    check_case = "states survive reopening";
    struct found_list f = {0};
    s = open_spool(dir, 0);
    CHECK(s != NULL && spool_recover(s, on_found, &f, err, sizeof(err)) == 1 && f.n == 1);
    if (f.n == 1) {
        CHECK(f.e[0].rcpts[0].state == 'P' && f.e[0].rcpts[1].state == 'D' &&
              f.e[0].rcpts[2].state == 'F');
        /* and marking the recovered entry works (offsets come from the parse) */
        w.calls = 0;
        CHECK(spool_mark(s, &f.e[0], 0, 0, SPOOL_DONE, on_done, &w) == 0);
        CHECK(wait_for(&w.calls, 1) == 0 && w.err == 0);
        after = read_all(dir, "queue", "MARK1", &len2);
        CHECK(after != NULL && after[e.rcpts[0].state_off] == 'X');
        free(after);
    }
    found_clear(&f);
    spool_entry_clear(&e);
    spool_close(s);
    rm_rf(dir);
}

/* ---- spool_recover ---------------------------------------------------------------------- */

static void test_recover(void)
{
    char *dir = make_tmpdir();
    struct spool *s = open_spool(dir, 0);
    struct spool_entry a, b, c;
    struct waiter w = {0};
    struct found_list f = {0};
    char err[256];
    size_t len;

    if (s == NULL) {
        CHECK(s != NULL);
        rm_rf(dir);
        return;
    }
    entry_init(&a, "GOODA", 1);
    entry_init(&b, "GOODB", 2);
    entry_init(&c, "SOURCE", 1);
    CHECK(commit_wait(s, &a, "a body\r\n") == 0);
    CHECK(commit_wait(s, &b, "b body\r\n") == 0);
    CHECK(commit_wait(s, &c, "c body\r\n") == 0);
    CHECK(spool_move(s, "GOODB", SPOOL_IN_QUEUE, SPOOL_IN_HOLD, on_done, &w) == 0);
    CHECK(wait_for(&w.calls, 1) == 0 && w.err == 0);
    spool_close(s);

    /* Damage: a truncated copy, garbage, an id that does not match, strays. */
    char *good = read_all(dir, "queue", "SOURCE", &len);
    CHECK(good != NULL);
    if (good == NULL)
        die("read");
    struct evbuffer *eb = evbuffer_new();
    struct spool_entry t;
    entry_init(&t, "TRUNC", 1);
    t.body_size = 8;
    CHECK(spool_header_format(&t, eb) == 0);
    evbuffer_add(eb, "c bod", 5); /* 3 bytes short */
    write_all_file(dir, "queue", "TRUNC", (const char *)evbuffer_pullup(eb, -1),
                   evbuffer_get_length(eb));
    evbuffer_free(eb);
    spool_entry_clear(&t);
    write_all_file(dir, "queue", "GARBAGE", "hello world\n", 12);
    write_all_file(dir, "hold", "EMPTY", "", 0);
    write_all_file(dir, "queue", "OTHERNAME", good, len); /* says id SOURCE */
    write_all_file(dir, "tmp", "STALE1", "half a mess", 11);
    write_all_file(dir, "tmp", "stale.2", "x", 1);
    write_all_file(dir, "queue", ".hidden", "x", 1);
    write_all_file(dir, "queue", "not.an.id", "x", 1);
    write_all_file(dir, "corrupt", "GARBAGE", "an older one", 12);
    free(good);
    /* The source was only a template. */
    char *p = path_of(dir, "queue", "SOURCE");
    unlink(p);
    free(p);

    s = open_spool(dir, 0);
    CHECK(s != NULL);
    if (s == NULL) {
        rm_rf(dir);
        return;
    }
    check_case = "stale tmp/ files removed at open";
    CHECK(count_files(dir, "tmp") == 0);

    check_case = "recovery";
    long n = spool_recover(s, on_found, &f, err, sizeof(err));
    CHECK(n == 2 && f.n == 2);
    for (int i = 0; i < f.n; i++) {
        if (strcmp(f.e[i].id, "GOODA") == 0) {
            CHECK(f.held[i] == 0);
            CHECK(f.e[i].nrcpts == 1 && f.e[i].body_size == 8 && f.e[i].body_off == a.body_off);
            CHECK(strcmp(f.e[i].rcpts[0].addr, "rcpt0@example.net") == 0);
        } else {
            CHECK(strcmp(f.e[i].id, "GOODB") == 0);
            CHECK(f.held[i] == 1 && f.e[i].nrcpts == 2);
        }
    }
    found_clear(&f);
    check_case = "damaged files moved to corrupt/, never deleted";
    CHECK(exists(dir, "corrupt", "TRUNC") && !exists(dir, "queue", "TRUNC"));
    CHECK(exists(dir, "corrupt", "OTHERNAME") && !exists(dir, "queue", "OTHERNAME"));
    CHECK(exists(dir, "corrupt", "EMPTY") && !exists(dir, "hold", "EMPTY"));
    CHECK(exists(dir, "corrupt", "GARBAGE.1") && !exists(dir, "queue", "GARBAGE"));
    char *older = read_all(dir, "corrupt", "GARBAGE", &len);
    CHECK(older != NULL && len == 12 && memcmp(older, "an older one", 12) == 0);
    free(older);
    check_case = "names that are not ids are left alone";
    CHECK(exists(dir, "queue", ".hidden") && exists(dir, "queue", "not.an.id"));
    CHECK(count_files(dir, "queue") == 2); /* GOODA, not.an.id */

    check_case = "a second recovery finds the same";
    CHECK(spool_recover(s, on_found, &f, err, sizeof(err)) == 2);
    found_clear(&f);

    spool_entry_clear(&a);
    spool_entry_clear(&b);
    spool_entry_clear(&c);
    spool_close(s);
    rm_rf(dir);
}

/* ---- spool_move_remove ---------------------------------------------------------------- */

static int op_wait(struct spool *s, int remove, const char *id, enum spool_place from,
                   enum spool_place to)
{
    struct waiter w = {0};
    int rc =
        remove ? spool_remove(s, id, from, on_done, &w) : spool_move(s, id, from, to, on_done, &w);
    if (rc != 0)
        return -1;
    if (wait_for(&w.calls, 1) < 0)
        return -2;
    return w.err;
}

static void test_move_remove(void)
{
    char *dir = make_tmpdir();
    struct spool *s = open_spool(dir, 0);
    struct spool_entry e;

    if (s == NULL) {
        CHECK(s != NULL);
        rm_rf(dir);
        return;
    }
    entry_init(&e, "MOVE1", 1);
    CHECK(commit_wait(s, &e, "m\r\n") == 0);

    check_case = "queue -> hold";
    CHECK(op_wait(s, 0, "MOVE1", SPOOL_IN_QUEUE, SPOOL_IN_HOLD) == 0);
    CHECK(!exists(dir, "queue", "MOVE1") && exists(dir, "hold", "MOVE1"));
    check_case = "hold -> failed";
    CHECK(op_wait(s, 0, "MOVE1", SPOOL_IN_HOLD, SPOOL_IN_FAILED) == 0);
    CHECK(!exists(dir, "hold", "MOVE1") && exists(dir, "failed", "MOVE1"));
    check_case = "move of a missing message";
    CHECK(op_wait(s, 0, "MOVE1", SPOOL_IN_HOLD, SPOOL_IN_QUEUE) == ENOENT);
    check_case = "commit of an id that is in failed/";
    CHECK(commit_wait(s, &e, "again") == EEXIST);
    CHECK(count_files(dir, "queue") == 0 && count_files(dir, "tmp") == 0);
    check_case = "move never replaces";
    write_all_file(dir, "queue", "MOVE1", "placeholder", 11);
    CHECK(op_wait(s, 0, "MOVE1", SPOOL_IN_FAILED, SPOOL_IN_QUEUE) == EEXIST);
    CHECK(exists(dir, "failed", "MOVE1") && exists(dir, "queue", "MOVE1"));
    check_case = "remove";
    CHECK(op_wait(s, 1, "MOVE1", SPOOL_IN_FAILED, 0) == 0);
    CHECK(!exists(dir, "failed", "MOVE1"));
    CHECK(op_wait(s, 1, "MOVE1", SPOOL_IN_FAILED, 0) == ENOENT);
    CHECK(op_wait(s, 1, "MOVE1", SPOOL_IN_QUEUE, 0) == 0);
    CHECK(count_files(dir, "queue") == 0);
    check_case = "bad arguments";
    struct waiter w = {0};
    CHECK(spool_move(s, "MOVE1", SPOOL_IN_QUEUE, SPOOL_IN_QUEUE, on_done, &w) == -1);
    CHECK(spool_move(s, "../x", SPOOL_IN_QUEUE, SPOOL_IN_HOLD, on_done, &w) == -1);
    CHECK(spool_remove(s, "a/b", SPOOL_IN_QUEUE, on_done, &w) == -1);
    CHECK(spool_remove(s, "x", (enum spool_place)9, on_done, &w) == -1);
    CHECK(w.calls == 0);
    spool_entry_clear(&e);
    spool_close(s);
    rm_rf(dir);
}

/* ---- spool_load_body ------------------------------------------------------------------- */

struct body_wait {
    int calls;
    int err;
    struct evbuffer *body;
};

static void on_body(int err, struct evbuffer *body, void *arg)
{
    struct body_wait *w = arg;
    w->calls++;
    w->err = err;
    w->body = body;
}

static void test_load_body(void)
{
    enum { SIZE = 20 * 1000 * 1000 };
    char *dir = make_tmpdir();
    struct spool *s = open_spool(dir, 0);
    struct spool_entry e;
    struct waiter w = {0};
    struct body_wait bw = {0};

    if (s == NULL) {
        CHECK(s != NULL);
        rm_rf(dir);
        return;
    }
    check_case = "20 MB, byte-exact";
    unsigned char *data = malloc(SIZE);
    for (size_t i = 0; i < SIZE; i++)
        data[i] = (unsigned char)unit_rand();
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, data, SIZE);
    entry_init(&e, "BIGBODY", 1);
    CHECK(spool_commit(s, &e, b, -1, on_done, &w) == 0);
    evbuffer_free(b);
    CHECK(wait_for(&w.calls, 1) == 0 && w.err == 0);
    CHECK(e.body_size == SIZE);
    CHECK(spool_load_body(s, &e, 0, on_body, &bw) == 0);
    CHECK(wait_for(&bw.calls, 1) == 0 && bw.err == 0 && bw.body != NULL);
    if (bw.body != NULL) {
        CHECK(evbuffer_get_length(bw.body) == SIZE);
        CHECK(evbuffer_get_length(bw.body) == SIZE &&
              memcmp(evbuffer_pullup(bw.body, -1), data, SIZE) == 0);
        evbuffer_free(bw.body);
    }
    free(data);

    check_case = "empty body";
    struct spool_entry z;
    entry_init(&z, "EMPTYBODY", 1);
    CHECK(commit_wait(s, &z, "") == 0);
    bw = (struct body_wait){0};
    CHECK(spool_load_body(s, &z, 0, on_body, &bw) == 0);
    CHECK(wait_for(&bw.calls, 1) == 0 && bw.err == 0 && bw.body != NULL &&
          evbuffer_get_length(bw.body) == 0);
    if (bw.body != NULL)
        evbuffer_free(bw.body);

    check_case = "held message";
    w.calls = 0;
    CHECK(spool_move(s, "EMPTYBODY", SPOOL_IN_QUEUE, SPOOL_IN_HOLD, on_done, &w) == 0);
    CHECK(wait_for(&w.calls, 1) == 0 && w.err == 0);
    bw = (struct body_wait){0};
    CHECK(spool_load_body(s, &z, 1, on_body, &bw) == 0);
    CHECK(wait_for(&bw.calls, 1) == 0 && bw.err == 0 && bw.body != NULL);
    if (bw.body != NULL)
        evbuffer_free(bw.body);
    spool_entry_clear(&z);

    check_case = "truncated file";
    char *p = path_of(dir, "queue", "BIGBODY");
    CHECK(truncate(p, e.body_off + 100) == 0);
    free(p);
    bw = (struct body_wait){0};
    CHECK(spool_load_body(s, &e, 0, on_body, &bw) == 0);
    CHECK(wait_for(&bw.calls, 1) == 0 && bw.err == EIO && bw.body == NULL);

    check_case = "missing file";
    bw = (struct body_wait){0};
    CHECK(spool_load_body(s, &e, 1, on_body, &bw) == 0);
    CHECK(wait_for(&bw.calls, 1) == 0 && bw.err == ENOENT && bw.body == NULL);

    spool_entry_clear(&e);
    spool_close(s);
    rm_rf(dir);
}

/* Lines of /proc/self/maps that map the file open on fd (by device and inode). */
static int mappings_of(int fd)
{
    struct stat st;
    char line[512];
    int n = 0;
    FILE *f = fopen("/proc/self/maps", "r");

    if (f == NULL || fstat(fd, &st) < 0) {
        if (f != NULL)
            fclose(f);
        return -1;
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        unsigned long long ino;
        unsigned maj, min;
        /* start-end perms offset major:minor inode path */
        if (sscanf(line, "%*s %*s %*s %x:%x %llu", &maj, &min, &ino) == 3 &&
            ino == (unsigned long long)st.st_ino && makedev(maj, min) == st.st_dev)
            n++;
    }
    fclose(f);
    return n;
}

/* Anonymous body files: no name, exact appends, mappings at any offset. */
static void test_bodyfile(void)
{
    enum { SIZE = 3 * 1000 * 1000 + 7 };
    char *dir = make_tmpdir();
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    unsigned char *data = malloc(SIZE);

    CHECK(dfd >= 0 && data != NULL);
    for (size_t i = 0; i < SIZE; i++)
        data[i] = (unsigned char)unit_rand();

    check_case = "created without a name";
    int fd = bodyfile_create(dfd);
    CHECK(fd >= 0);
    CHECK(count_files(dir, NULL) == 0);
    struct stat st;
    CHECK(fstat(fd, &st) == 0 && (st.st_mode & 0777) == 0600 && st.st_nlink == 0);
    CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC);

    check_case = "appends, from memory and from an evbuffer";
    CHECK(bodyfile_append(fd, data, 1000) == 0);
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, data + 1000, 5000);
    evbuffer_add_reference(b, data + 6000, SIZE - 6000, NULL, NULL);
    CHECK(bodyfile_append_buffer(fd, b) == 0 && evbuffer_get_length(b) == 0);
    CHECK(fstat(fd, &st) == 0 && st.st_size == SIZE);

    check_case = "mapped whole and from unaligned offsets";
    static const size_t offs[] = {0, 1, 4095, 4096, 4097, 123457, SIZE - 1, SIZE};
    for (size_t k = 0; k < sizeof offs / sizeof offs[0]; k++) {
        struct evbuffer *m = evbuffer_new();
        size_t len = SIZE - offs[k];
        CHECK(bodyfile_add(m, fd, (off_t)offs[k], len) == 0);
        CHECK(evbuffer_get_length(m) == len);
        if (len > 0)
            CHECK(memcmp(evbuffer_pullup(m, -1), data + offs[k], len) == 0);
        /* Draining part of a mapping and freeing the rest unmaps it whole. */
        evbuffer_drain(m, len / 3);
        CHECK(len == 0 || mappings_of(fd) == 1);
        evbuffer_free(m);
        CHECK(mappings_of(fd) == 0);
    }

    check_case = "mapping outlives the descriptor";
    struct evbuffer *m = evbuffer_new();
    CHECK(bodyfile_add(m, fd, 10, 100) == 0);
    close(fd);
    CHECK(evbuffer_get_length(m) == 100 && memcmp(evbuffer_pullup(m, -1), data + 10, 100) == 0);
    evbuffer_free(m);

    check_case = "bad arguments";
    m = evbuffer_new();
    CHECK(bodyfile_add(m, -1, 0, 10) == -1);
    CHECK(bodyfile_add(m, dfd, -1, 10) == -1 && errno == EINVAL);
    CHECK(evbuffer_get_length(m) == 0);
    evbuffer_free(m);
    CHECK(bodyfile_append(-1, "x", 1) == -1 && errno == EBADF);

    check_case = "no room left (a full file system)";
    int full = open("/dev/full", O_WRONLY | O_CLOEXEC);
    if (full >= 0) {
        evbuffer_add(b, "abc", 3);
        CHECK(bodyfile_append_buffer(full, b) == -1 && errno == ENOSPC);
        close(full);
    }

    evbuffer_free(b);
    free(data);
    close(dfd);
    rm_rf(dir);
}

/* A commit whose body is a file: copied by the I/O thread, byte-exact. */
static void test_commit_file(void)
{
    enum { SIZE = 2 * 1000 * 1000 + 3 };
    char *dir = make_tmpdir();
    struct spool *s = open_spool(dir, 0);
    unsigned char *data = malloc(SIZE);
    struct spool_entry e;
    struct waiter w = {0};

    if (s == NULL || data == NULL) {
        CHECK(s != NULL && data != NULL);
        free(data);
        rm_rf(dir);
        return;
    }
    for (size_t i = 0; i < SIZE; i++)
        data[i] = (unsigned char)unit_rand();

    check_case = "body file from spool_tmpfile, in no directory";
    int fd = spool_tmpfile(s);
    CHECK(fd >= 0);
    CHECK(count_files(dir, "tmp") == 0);
    CHECK(bodyfile_append(fd, data, SIZE) == 0);
    struct evbuffer *b = evbuffer_new();
    CHECK(bodyfile_add(b, fd, 0, SIZE) == 0);

    check_case = "committed from the file";
    entry_init(&e, "FROMFILE", 2);
    CHECK(spool_commit(s, &e, b, fd, on_done, &w) == 0);
    close(fd); /* the spool has its own descriptor */
    evbuffer_free(b);
    CHECK(wait_for(&w.calls, 1) == 0 && w.err == 0);
    CHECK(e.body_size == SIZE);
    size_t len = 0;
    char *got = read_all(dir, "queue", "FROMFILE", &len);
    CHECK(got != NULL && len == (size_t)e.body_off + SIZE &&
          memcmp(got + e.body_off, data, SIZE) == 0);
    free(got);
    CHECK(count_files(dir, "tmp") == 0);

    check_case = "loaded back";
    struct body_wait bw = {0};
    CHECK(spool_load_body(s, &e, 0, on_body, &bw) == 0);
    CHECK(wait_for(&bw.calls, 1) == 0 && bw.err == 0 && bw.body != NULL);
    if (bw.body != NULL) {
        CHECK(evbuffer_get_length(bw.body) == SIZE &&
              memcmp(evbuffer_pullup(bw.body, -1), data, SIZE) == 0);
        evbuffer_free(bw.body);
    }

    check_case = "a body file shorter than the body: refused, nothing left";
    fd = spool_tmpfile(s);
    CHECK(fd >= 0 && bodyfile_append(fd, data, 1000) == 0);
    b = evbuffer_new();
    evbuffer_add(b, data, 5000); /* claims 5000 bytes; the file has 1000 */
    struct spool_entry e2;
    entry_init(&e2, "SHORTFILE", 1);
    w = (struct waiter){0};
    CHECK(spool_commit(s, &e2, b, fd, on_done, &w) == 0);
    close(fd);
    evbuffer_free(b);
    CHECK(wait_for(&w.calls, 1) == 0 && w.err == EIO);
    CHECK(!exists(dir, "queue", "SHORTFILE") && count_files(dir, "tmp") == 0);
    spool_entry_clear(&e2);

    spool_entry_clear(&e);
    spool_close(s);

    check_case = "spool_tmpfile below min_free";
    s = open_spool(dir, UINT64_MAX / 2);
    if (s != NULL) {
        CHECK(spool_tmpfile(s) == -1 && errno == ENOSPC);
        spool_close(s);
    }
    free(data);
    rm_rf(dir);
}

/* min_free holds while body files grow: the room left is asked again. */
static void test_has_room(void)
{
    char *dir = make_tmpdir();
    char *mnt = path_of(dir, "mnt", NULL);

    if (mkdir(mnt, 0700) < 0)
        die("mkdir");
    if (mount("tmpfs", mnt, "tmpfs", MS_NOSUID | MS_NODEV, "size=8m,mode=0700") < 0) {
        fprintf(stderr, "cannot mount a tmpfs (%s): skipped\n", strerror(errno));
        free(mnt);
        rm_rf(dir);
        exit(77);
    }
    char *sp = path_of(mnt, "spool", NULL);
    struct spool *s = open_spool(sp, 4 * 1024 * 1024);
    CHECK(s != NULL);
    if (s != NULL) {
        check_case = "an empty 8 MiB file system, 4 MiB reserved";
        CHECK(spool_has_room(s, 1024 * 1024) == 0);
        CHECK(spool_has_room(s, 5 * 1024 * 1024) == -1 && errno == ENOSPC);

        check_case = "a body file grows into the reserve";
        int fd = spool_tmpfile(s);
        CHECK(fd >= 0);
        size_t chunk = 512 * 1024;
        char *buf = calloc(1, chunk);
        for (int i = 0; i < 7 && fd >= 0; i++) /* 3.5 MiB */
            CHECK(bodyfile_append(fd, buf, chunk) == 0);
        CHECK(spool_has_room(s, 256 * 1024) == 0);
        CHECK(spool_has_room(s, 1024 * 1024) == -1 && errno == ENOSPC);

        check_case = "space comes back with the file";
        if (fd >= 0)
            close(fd);
        CHECK(spool_has_room(s, 1024 * 1024) == 0);

        check_case = "no body file at all below the reserve";
        spool_close(s);
        s = open_spool(sp, 8 * 1024 * 1024);
        CHECK(s != NULL && spool_tmpfile(s) == -1 && errno == ENOSPC);
        free(buf);
    }
    if (s != NULL)
        spool_close(s);
    free(sp);
    if (umount(mnt) < 0)
        fprintf(stderr, "umount: %s\n", strerror(errno));
    free(mnt);
    rm_rf(dir);
}

int main(int argc, char **argv)
{
    static const struct unit_group groups[] = {
        {"format_roundtrip", test_format_roundtrip},
        {"parse_malformed", test_parse_malformed},
        {"open_perms", test_open_perms},
        {"commit", test_commit},
        {"commit_many", test_commit_many},
        {"min_free", test_min_free},
        {"enospc", test_enospc},
        {"mark", test_mark},
        {"recover", test_recover},
        {"move_remove", test_move_remove},
        {"load_body", test_load_body},
        {"bodyfile", test_bodyfile},
        {"commit_file", test_commit_file},
        {"has_room", test_has_room},
    };
    int rc;

    if (evthread_use_pthreads() < 0 || (base = event_base_new()) == NULL)
        die("event base");
    log_set_level(LOG_LVL_DEBUG);
    rc = unit_main(argc, argv, groups, sizeof(groups) / sizeof(groups[0]));
    event_base_free(base);
    libevent_global_shutdown();
    return rc;
}
