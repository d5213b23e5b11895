/*
 * The durable spool (SPEC section 3): one file per message, written in tmp/,
 * made durable with group commit, renamed into queue/; per-recipient state is
 * one byte rewritten in place.  All disk I/O runs on one thread and results
 * come back to the event loop.  Envelope fields follow RFC 5321 and RFC 3461.
 */
#include "spool.h"
#include "bodyfile.h"
#include "log.h"

#include <dirent.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/utsname.h>
#include <unistd.h>

/*
 * On-disk format, version 1:
 *
 *   MAILPOOL-SPOOL 1
 *   id <id>
 *   created <unix time>
 *   sender <address, empty for <>>
 *   relay <profile name | ->
 *   uid <n>
 *   eightbit <0|1>
 *   smtputf8 <0|1>
 *   bounce <0|1>
 *   ret <-|FULL|HDRS>
 *   envid <xtext | ->
 *   size <body bytes>
 *   rcpt <P|D|F|X> <notify bits> <orcpt | -> <address>     (one per recipient)
 *   <empty line>
 *   <exactly size bytes of body>
 *
 * A value is the rest of its line after the single space.  The state byte is
 * always at column 5 of its "rcpt" line, so it can be rewritten in place
 * without moving anything else.
 *
 * No checksum or trailer: a file only appears in queue/ after its data was
 * made durable (sync before rename), so a torn or partial file there would
 * take a broken filesystem, and the exact-length check (file size must be
 * header + size, no more, no less) already catches truncation and appended
 * garbage.  A checksum would cost a full pass over every body on commit and
 * recovery, and could not cover the state bytes, which change in place.
 */
#define SPOOL_MAGIC "MAILPOOL-SPOOL 1"
#define SPOOL_MAGIC_FAMILY "MAILPOOL-SPOOL "
#define SPOOL_HEADER_MAX (1024 * 1024) /* header bytes, including the empty line */
#define SPOOL_ADDR_MAX 256             /* RFC 5321 4.5.3.1.3: a path is at most 256 octets */
#define SPOOL_PARAM_MAX 512            /* ORCPT and ENVID as given (RFC 3461: 500 / 100) */
#define SPOOL_NAME_MAX 256             /* relay profile name */
#define SPOOL_RCPTS_MAX 1000
#define SPOOL_SIZE_MAX ((uint64_t)1 << 50) /* far above any message, keeps off_t sums safe */

/* ---- the file format (pure) ---------------------------------------------- */

enum hkey {
    K_ID,
    K_CREATED,
    K_SENDER,
    K_RELAY,
    K_UID,
    K_EIGHTBIT,
    K_SMTPUTF8,
    K_BOUNCE,
    K_RET,
    K_ENVID,
    K_SIZE,
    K_LAST
};

static const struct {
    const char *name;
    const char *missing; /* static reasons: *why must never point into a buffer */
    const char *bad;
} hkeys[K_LAST] = {
    [K_ID] = {"id", "missing key: id", "bad value: id"},
    [K_CREATED] = {"created", "missing key: created", "bad value: created"},
    [K_SENDER] = {"sender", "missing key: sender", "bad value: sender"},
    [K_RELAY] = {"relay", "missing key: relay", "bad value: relay"},
    [K_UID] = {"uid", "missing key: uid", "bad value: uid"},
    [K_EIGHTBIT] = {"eightbit", "missing key: eightbit", "bad value: eightbit"},
    [K_SMTPUTF8] = {"smtputf8", "missing key: smtputf8", "bad value: smtputf8"},
    [K_BOUNCE] = {"bounce", "missing key: bounce", "bad value: bounce"},
    [K_RET] = {"ret", "missing key: ret", "bad value: ret"},
    [K_ENVID] = {"envid", "missing key: envid", "bad value: envid"},
    [K_SIZE] = {"size", "missing key: size", "bad value: size"},
};

int spool_id_valid(const char *id)
{
    size_t n = 0;

    if (id == NULL)
        return 0;
    for (; id[n] != '\0'; n++) {
        unsigned char c = (unsigned char)id[n];
        int alnum = (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
        /* Leading '-' or '_' would look like an option or a hidden name to tools. */
        if (!alnum && (n == 0 || (c != '-' && c != '_')))
            return 0;
        if (n >= SPOOL_ID_MAX)
            return 0;
    }
    return n > 0;
}

static int state_valid(char c)
{
    return c == SPOOL_PENDING || c == SPOOL_DELIVERED || c == SPOOL_FAILED || c == SPOOL_DONE;
}

/* A value that can be stored on one header line. */
static int value_ok(const char *v, size_t max, int allow_empty, int allow_space, int allow_dash)
{
    size_t n;

    if (v == NULL)
        return 0;
    n = strlen(v);
    if (n > max || (n == 0 && !allow_empty) || (!allow_dash && strcmp(v, "-") == 0))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (v[i] == '\r' || v[i] == '\n' || (v[i] == ' ' && !allow_space))
            return 0;
    return 1;
}

int spool_header_format(struct spool_entry *e, struct evbuffer *out)
{
    struct evbuffer *b;
    off_t *offs = NULL;
    int rc = -1;
    static const char *const rets[] = {"-", "FULL", "HDRS"};

    /* "-" stands for "none", so a value that is literally "-" cannot be stored. */
    if (!spool_id_valid(e->id) || e->created < 0 || !value_ok(e->sender, SPOOL_ADDR_MAX, 1, 1, 1) ||
        (e->relay != NULL && !value_ok(e->relay, SPOOL_NAME_MAX, 1, 1, 0)) ||
        (e->envid != NULL && !value_ok(e->envid, SPOOL_PARAM_MAX, 1, 0, 0)) ||
        (unsigned)e->ret > SPOOL_RET_HDRS || e->uid == (uid_t)-1 || e->nrcpts == 0 ||
        e->nrcpts > SPOOL_RCPTS_MAX || e->body_size > SPOOL_SIZE_MAX) {
        errno = EINVAL;
        return -1;
    }
    for (size_t i = 0; i < e->nrcpts; i++) {
        const struct spool_rcpt *r = &e->rcpts[i];
        if (!value_ok(r->addr, SPOOL_ADDR_MAX, 0, 1, 1) || !state_valid(r->state) ||
            r->notify > 15 || (r->orcpt != NULL && !value_ok(r->orcpt, SPOOL_PARAM_MAX, 0, 0, 0))) {
            errno = EINVAL;
            return -1;
        }
    }
    if ((b = evbuffer_new()) == NULL || (offs = calloc(e->nrcpts, sizeof(*offs))) == NULL)
        goto oom;
    if (evbuffer_add_printf(b,
                            SPOOL_MAGIC "\nid %s\ncreated %" PRId64 "\nsender %s\nrelay %s\n"
                                        "uid %lu\neightbit %d\nsmtputf8 %d\nbounce %d\nret %s\n"
                                        "envid %s\nsize %zu\n",
                            e->id, (int64_t)e->created, e->sender,
                            e->relay != NULL ? e->relay : "-", (unsigned long)e->uid,
                            e->eightbit != 0, e->smtputf8 != 0, e->is_bounce != 0, rets[e->ret],
                            e->envid != NULL ? e->envid : "-", e->body_size) < 0)
        goto oom;
    for (size_t i = 0; i < e->nrcpts; i++) {
        const struct spool_rcpt *r = &e->rcpts[i];
        offs[i] = (off_t)evbuffer_get_length(b) + 5; /* after "rcpt " */
        if (evbuffer_add_printf(b, "rcpt %c %u %s %s\n", r->state, r->notify,
                                r->orcpt != NULL ? r->orcpt : "-", r->addr) < 0)
            goto oom;
    }
    if (evbuffer_add(b, "\n", 1) < 0)
        goto oom;
    if (evbuffer_get_length(b) > SPOOL_HEADER_MAX) {
        errno = EINVAL;
        goto out;
    }
    e->body_off = (off_t)evbuffer_get_length(b);
    for (size_t i = 0; i < e->nrcpts; i++)
        e->rcpts[i].state_off = offs[i];
    if (evbuffer_add_buffer(out, b) < 0)
        goto oom;
    rc = 0;
    goto out;
oom:
    errno = ENOMEM;
out:
    free(offs);
    if (b != NULL)
        evbuffer_free(b);
    return rc;
}

void spool_entry_clear(struct spool_entry *e)
{
    if (e == NULL)
        return;
    free(e->sender);
    free(e->relay);
    free(e->envid);
    for (size_t i = 0; i < e->nrcpts; i++) {
        free(e->rcpts[i].addr);
        free(e->rcpts[i].orcpt);
    }
    free(e->rcpts);
    memset(e, 0, sizeof(*e));
}

/* Strict decimal: digits only, no sign, no leading zero, at most max. */
static int parse_u64(const char *v, size_t n, uint64_t max, uint64_t *out)
{
    uint64_t x = 0;

    if (n == 0 || n > 20 || (n > 1 && v[0] == '0'))
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        unsigned d = (unsigned)(v[i] - '0');
        if (x > (max - d) / 10)
            return -1;
        x = x * 10 + d;
    }
    *out = x;
    return 0;
}

static char *dup_n(const char *v, size_t n)
{
    char *s = malloc(n + 1);
    if (s != NULL) {
        memcpy(s, v, n);
        s[n] = '\0';
    }
    return s;
}

/* One "rcpt S N ORCPT ADDR" line (without its LF), at file offset line_off. */
static const char *parse_rcpt(const char *line, size_t n, off_t line_off, struct spool_entry *e,
                              size_t *cap)
{
    const char *p, *end = line + n, *sp;
    uint64_t notify;
    struct spool_rcpt *r;

    if (e->nrcpts >= SPOOL_RCPTS_MAX)
        return "too many recipients";
    if (n < 7 || line[6] != ' ')
        return "malformed rcpt line";
    if (!state_valid(line[5]))
        return "bad recipient state";
    p = line + 7;
    if ((sp = memchr(p, ' ', (size_t)(end - p))) == NULL ||
        parse_u64(p, (size_t)(sp - p), 15, &notify) < 0)
        return "bad rcpt notify";
    p = sp + 1;
    if ((sp = memchr(p, ' ', (size_t)(end - p))) == NULL || sp == p ||
        (size_t)(sp - p) > SPOOL_PARAM_MAX)
        return "bad rcpt orcpt";
    if (sp + 1 == end || (size_t)(end - (sp + 1)) > SPOOL_ADDR_MAX)
        return "bad rcpt address";
    if (e->nrcpts == *cap) {
        size_t ncap = *cap ? *cap * 2 : 4;
        struct spool_rcpt *nr = realloc(e->rcpts, ncap * sizeof(*nr));
        if (nr == NULL)
            return "out of memory";
        e->rcpts = nr;
        *cap = ncap;
    }
    r = &e->rcpts[e->nrcpts];
    memset(r, 0, sizeof(*r));
    r->state = line[5];
    r->notify = (unsigned)notify;
    r->state_off = line_off + 5;
    if (!(sp - p == 1 && *p == '-') && (r->orcpt = dup_n(p, (size_t)(sp - p))) == NULL)
        return "out of memory";
    /* Counted before the address is copied so spool_entry_clear frees orcpt too. */
    e->nrcpts++;
    if ((r->addr = dup_n(sp + 1, (size_t)(end - (sp + 1)))) == NULL)
        return "out of memory";
    return NULL;
}

static const char *parse_key(enum hkey k, const char *v, size_t n, struct spool_entry *e,
                             uint64_t *size)
{
    uint64_t x;
    int dash = n == 1 && v[0] == '-';

    switch (k) {
    case K_ID:
        if (n > SPOOL_ID_MAX)
            return hkeys[k].bad;
        memcpy(e->id, v, n);
        e->id[n] = '\0';
        return spool_id_valid(e->id) ? NULL : hkeys[k].bad;
    case K_CREATED:
        if (parse_u64(v, n, INT64_MAX, &x) < 0)
            return hkeys[k].bad;
        e->created = (time_t)x;
        return NULL;
    case K_SENDER:
        if (n > SPOOL_ADDR_MAX)
            return hkeys[k].bad;
        return (e->sender = dup_n(v, n)) ? NULL : "out of memory";
    case K_RELAY:
        if (n > SPOOL_NAME_MAX)
            return hkeys[k].bad;
        return dash || (e->relay = dup_n(v, n)) ? NULL : "out of memory";
    case K_UID:
        if (parse_u64(v, n, (uid_t)-2, &x) < 0)
            return hkeys[k].bad;
        e->uid = (uid_t)x;
        return NULL;
    case K_EIGHTBIT:
    case K_SMTPUTF8:
    case K_BOUNCE:
        if (n != 1 || (v[0] != '0' && v[0] != '1'))
            return hkeys[k].bad;
        *(k == K_EIGHTBIT   ? &e->eightbit
          : k == K_SMTPUTF8 ? &e->smtputf8
                            : &e->is_bounce) = v[0] - '0';
        return NULL;
    case K_RET:
        if (dash)
            e->ret = SPOOL_RET_UNSET;
        else if (n == 4 && memcmp(v, "FULL", 4) == 0)
            e->ret = SPOOL_RET_FULL;
        else if (n == 4 && memcmp(v, "HDRS", 4) == 0)
            e->ret = SPOOL_RET_HDRS;
        else
            return hkeys[k].bad;
        return NULL;
    case K_ENVID:
        if (n > SPOOL_PARAM_MAX || memchr(v, ' ', n) != NULL)
            return hkeys[k].bad;
        return dash || (e->envid = dup_n(v, n)) ? NULL : "out of memory";
    case K_SIZE:
        if (parse_u64(v, n, SPOOL_SIZE_MAX, size) < 0)
            return hkeys[k].bad;
        e->body_size = (size_t)*size;
        return NULL;
    case K_LAST:
        break;
    }
    return "unknown key";
}

static const char *parse_header(const char *buf, size_t len, uint64_t file_size,
                                struct spool_entry *e)
{
    size_t scan = len < SPOOL_HEADER_MAX ? len : SPOOL_HEADER_MAX;
    const char *end, *line, *nl;
    size_t hlen, cap = 0;
    uint64_t size = 0;
    int seen[K_LAST] = {0}, in_rcpts = 0;

    if (len < sizeof(SPOOL_MAGIC_FAMILY) - 1 ||
        memcmp(buf, SPOOL_MAGIC_FAMILY, sizeof(SPOOL_MAGIC_FAMILY) - 1) != 0)
        return "bad magic";
    end = memmem(buf, scan, "\n\n", 2);
    if (end == NULL)
        return len >= SPOOL_HEADER_MAX ? "header too long" : "truncated header";
    hlen = (size_t)(end - buf) + 2;
    if (memchr(buf, '\0', hlen) != NULL)
        return "NUL byte in header";
    if (memchr(buf, '\r', hlen) != NULL)
        return "CR in header";
    nl = memchr(buf, '\n', hlen);
    if ((size_t)(nl - buf) != sizeof(SPOOL_MAGIC) - 1 ||
        memcmp(buf, SPOOL_MAGIC, sizeof(SPOOL_MAGIC) - 1) != 0)
        return "unsupported spool format version";
    for (line = nl + 1; line <= end; line = nl + 1) {
        const char *sp, *why;
        size_t n, klen;
        enum hkey k;

        nl = memchr(line, '\n', (size_t)(end + 1 - line));
        n = (size_t)(nl - line);
        if ((sp = memchr(line, ' ', n)) == NULL)
            return "line without a value";
        klen = (size_t)(sp - line);
        if (klen == 4 && memcmp(line, "rcpt", 4) == 0) {
            if ((why = parse_rcpt(line, n, (off_t)(line - buf), e, &cap)) != NULL)
                return why;
            in_rcpts = 1;
            continue;
        }
        for (k = 0; k < K_LAST; k++)
            if (strlen(hkeys[k].name) == klen && memcmp(line, hkeys[k].name, klen) == 0)
                break;
        if (k == K_LAST)
            return "unknown key";
        if (in_rcpts)
            return "key after recipients";
        if (seen[k])
            return "duplicate key";
        seen[k] = 1;
        if ((why = parse_key(k, sp + 1, n - klen - 1, e, &size)) != NULL)
            return why;
    }
    for (int k = 0; k < K_LAST; k++)
        if (!seen[k])
            return hkeys[k].missing;
    if (e->nrcpts == 0)
        return "no recipients";
    e->body_off = (off_t)hlen;
    if (file_size < hlen || file_size - hlen < size)
        return "truncated body";
    if (file_size - hlen > size)
        return "bytes after the body";
    return NULL;
}

int spool_header_parse_sized(const char *buf, size_t len, uint64_t file_size, struct spool_entry *e,
                             const char **why)
{
    const char *reason;

    memset(e, 0, sizeof(*e));
    if (len > file_size) {
        *why = "buffer longer than the file";
        return -1;
    }
    if ((reason = parse_header(buf, len, file_size, e)) != NULL) {
        spool_entry_clear(e);
        *why = reason;
        return -1;
    }
    return 0;
}

int spool_header_parse(const char *buf, size_t len, struct spool_entry *e, const char **why)
{
    return spool_header_parse_sized(buf, len, len, e, why);
}

/* ---- the spool: shared state ----------------------------------------------- */

/* Directory slots; the first four match enum spool_place. */
enum { DIR_TMP = SPOOL_IN_CORRUPT + 1, DIR_LAST };
static const char *const dir_names[DIR_LAST] = {"queue", "hold", "failed", "corrupt", "tmp"};

enum job_kind { JOB_COMMIT, JOB_MARK, JOB_LOAD, JOB_MOVE, JOB_REMOVE };

struct job {
    struct job *next;
    enum job_kind kind;
    int err; /* errno value, set on the I/O thread */
    char id[SPOOL_ID_MAX + 1];
    int from, to; /* directory slots */
    char *data;   /* commit: the whole file, or the header if src_fd is set; load: the body read */
    size_t len;   /* bytes in data (load: bytes to read) */
    int src_fd;   /* commit: the body is this file's first body_len bytes, or -1 */
    size_t body_len;
    off_t off;   /* mark: state byte; load: body start */
    char state;  /* mark: new state */
    int fd;      /* commit and mark, while a group is in progress */
    int in_tmp;  /* commit: tmp/<id> exists and is ours to remove */
    int renamed; /* commit: now queue/<id> */
    spool_cb cb;
    spool_body_cb body_cb;
    void *arg;
};

struct spool {
    struct event_base *base;
    struct event *done_ev; /* made active by the I/O thread; runs callbacks on the loop */
    int root;
    int dirs[DIR_LAST];
    uint64_t min_free;
    int use_syncfs;

    pthread_t thread;
    int thread_started;
    pthread_mutex_t mu; /* guards everything below */
    pthread_cond_t cv;
    struct job *jobs, **jobs_tail; /* waiting for the I/O thread */
    struct job *done, **done_tail; /* finished, waiting for the loop */
    int stopping;
    unsigned long syncs;
};

static void job_free(struct job *j)
{
    if (j->src_fd >= 0)
        close(j->src_fd);
    free(j->data);
    free(j);
}

static const char *errstr(int err, char *buf, size_t len)
{
    /* GNU strerror_r: thread-safe, unlike strerror(), and this runs on two threads. */
    return strerror_r(err, buf, len);
}

/* ---- the I/O thread ---------------------------------------------------------- */

static int pread_all(int fd, char *p, size_t n, off_t off)
{
    while (n > 0) {
        ssize_t r = pread(fd, p, n, off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (r == 0) {
            errno = EIO; /* the file is shorter than its header says */
            return -1;
        }
        p += r;
        n -= (size_t)r;
        off += r;
    }
    return 0;
}

/* Never replaces an existing message: a colliding id must fail, not overwrite. */
static int rename_noreplace(int fromfd, const char *from, int tofd, const char *to)
{
    if (renameat2(fromfd, from, tofd, to, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno != EINVAL && errno != ENOSYS)
        return -1;
    /* Filesystems without RENAME_NOREPLACE: link(2) refuses to replace as well. */
    if (linkat(fromfd, from, tofd, to, 0) < 0)
        return -1;
    if (unlinkat(fromfd, from, 0) < 0) {
        int e = errno;
        unlinkat(tofd, to, 0);
        errno = e;
        return -1;
    }
    return 0;
}

static int id_exists(const struct spool *s, const char *id)
{
    struct stat st;

    for (int d = SPOOL_IN_QUEUE; d <= SPOOL_IN_FAILED; d++)
        if (fstatat(s->dirs[d], id, &st, AT_SYMLINK_NOFOLLOW) == 0 || errno != ENOENT)
            return 1;
    return 0;
}

/* Append n bytes of src (from its start) to dst: in the kernel where it can. */
static int copy_body(int dst, int src, size_t n)
{
    off_t in = 0;
    char buf[65536];

    while (n > 0) {
        ssize_t c = copy_file_range(src, &in, dst, NULL, n, 0);
        if (c > 0) {
            n -= (size_t)c;
            continue;
        }
        if (c == 0) {
            errno = EIO; /* the body file is shorter than it was */
            return -1;
        }
        if (errno == EINTR)
            continue;
        if (errno != EXDEV && errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP)
            return -1;
        /* Across file systems (or none at all): a plain copy. */
        size_t want = n < sizeof buf ? n : sizeof buf;
        if (pread_all(src, buf, want, in) < 0 || bodyfile_append(dst, buf, want) < 0)
            return -1;
        in += (off_t)want;
        n -= want;
    }
    return 0;
}

static void commit_fail(struct spool *s, struct job *j, int err)
{
    char eb[128];

    /* A full disk is summed up once per batch; anything else is worth a line each. */
    if (err != ENOSPC && err != EDQUOT && err != EEXIST)
        log_error("spool: cannot store %s: %s", j->id, errstr(err, eb, sizeof eb));
    else if (err == EEXIST)
        log_warn("spool: message id %s is already spooled; refused", j->id);
    if (j->fd >= 0)
        close(j->fd);
    j->fd = -1;
    if (j->in_tmp)
        unlinkat(s->dirs[DIR_TMP], j->id, 0);
    j->in_tmp = 0;
    j->err = err == EDQUOT ? ENOSPC : err;
}

/*
 * Group commit of every commit job in the list.  Returns the number of sync
 * calls made.
 *
 * Why syncfs: measured on this project's development machine (ext4 on a
 * virtio disk, kernel 6.18), 4 KB files, write + sync + rename + one
 * directory fsync per batch:
 *   batch  1: fdatasync 2739 files/s, syncfs 3119 files/s (0.37 vs 0.32 ms)
 *   batch  8: fdatasync 4849 files/s, syncfs 13296 files/s
 *   batch 64: fdatasync 4239 files/s, syncfs 17882 files/s (15.1 vs 3.6 ms)
 * (runs under heavy load from other processes on the same filesystem:
 * 1815 vs 3211 and 898 vs 2398 files/s at 64: syncfs also flushes their
 * dirty data, so it slows down with them, yet it stayed ahead every time).
 * One fdatasync per file serialises a journal commit per file; one syncfs
 * covers the whole batch.  A lone file still uses fdatasync, which does not
 * also flush other programs' dirty data sharing the filesystem.  syncfs only
 * reports writeback errors since Linux 5.8, so older kernels fall back to
 * fdatasync per file (see kernel_syncfs_reports_errors()).
 */
static unsigned long commit_group(struct spool *s, struct job *list)
{
    struct statvfs sv;
    uint64_t avail, block;
    size_t n = 0, written = 0, renamed = 0, refused = 0;
    unsigned long syncs = 0;
    int per_file, statfs_err = 0;
    char eb[128];

    for (struct job *j = list; j != NULL; j = j->next)
        n += j->kind == JOB_COMMIT;
    if (n == 0)
        return 0;
    per_file = !s->use_syncfs || n == 1;
    if (fstatvfs(s->root, &sv) < 0) {
        statfs_err = errno;
        avail = 0;
        block = 0;
    } else {
        avail = (uint64_t)sv.f_bavail * sv.f_frsize;
        block = sv.f_frsize;
    }

    for (struct job *j = list; j != NULL; j = j->next) {
        uint64_t need = j->len + j->body_len + block; /* the last block is rounded up */
        if (j->kind != JOB_COMMIT)
            continue;
        j->fd = -1;
        if (statfs_err) {
            commit_fail(s, j, statfs_err);
            continue;
        }
        if (avail < s->min_free || avail - s->min_free < need) {
            commit_fail(s, j, ENOSPC);
            continue;
        }
        avail -= need;
        if (id_exists(s, j->id)) {
            commit_fail(s, j, EEXIST);
            continue;
        }
        j->fd = openat(s->dirs[DIR_TMP], j->id,
                       O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (j->fd < 0) {
            commit_fail(s, j, errno);
            continue;
        }
        j->in_tmp = 1;
        if (bodyfile_append(j->fd, j->data, j->len) < 0 ||
            (j->src_fd >= 0 && copy_body(j->fd, j->src_fd, j->body_len) < 0)) {
            commit_fail(s, j, errno);
            continue;
        }
        free(j->data); /* the copy is on its way to the disk; do not hold it twice */
        j->data = NULL;
        if (!per_file) {
            int rc = close(j->fd);
            j->fd = -1;
            if (rc < 0 && errno != EINTR) {
                commit_fail(s, j, errno);
                continue;
            }
        }
        written++;
    }

    if (written > 0 && !per_file) {
        syncs++;
        if (syncfs(s->root) < 0) {
            int e = errno;
            log_error("spool: syncfs failed: %s; %zu message(s) refused", errstr(e, eb, sizeof eb),
                      written);
            for (struct job *j = list; j != NULL; j = j->next)
                if (j->kind == JOB_COMMIT && j->err == 0)
                    commit_fail(s, j, e);
        }
    } else if (written > 0) {
        for (struct job *j = list; j != NULL; j = j->next) {
            if (j->kind != JOB_COMMIT || j->err != 0)
                continue;
            syncs++;
            if (fdatasync(j->fd) < 0) {
                commit_fail(s, j, errno);
                continue;
            }
            int rc = close(j->fd);
            j->fd = -1;
            if (rc < 0 && errno != EINTR)
                commit_fail(s, j, errno);
        }
    }

    for (struct job *j = list; j != NULL; j = j->next) {
        if (j->kind != JOB_COMMIT || j->err != 0)
            continue;
        if (rename_noreplace(s->dirs[DIR_TMP], j->id, s->dirs[SPOOL_IN_QUEUE], j->id) < 0) {
            commit_fail(s, j, errno);
            continue;
        }
        j->in_tmp = 0;
        j->renamed = 1;
        renamed++;
    }

    /* Until the directory entry is durable the message is not: no success before this. */
    if (renamed > 0) {
        syncs++;
        if (fsync(s->dirs[SPOOL_IN_QUEUE]) < 0) {
            int e = errno;
            log_error("spool: fsync of queue/ failed: %s; %zu message(s) refused",
                      errstr(e, eb, sizeof eb), renamed);
            /* The clients are told it failed, so the files must not be delivered later. */
            for (struct job *j = list; j != NULL; j = j->next)
                if (j->kind == JOB_COMMIT && j->renamed) {
                    unlinkat(s->dirs[SPOOL_IN_QUEUE], j->id, 0);
                    j->renamed = 0;
                    j->err = e == EDQUOT ? ENOSPC : e;
                }
            fsync(s->dirs[SPOOL_IN_QUEUE]);
        }
    }
    for (struct job *j = list; j != NULL; j = j->next)
        refused += j->kind == JOB_COMMIT && j->err == ENOSPC;
    if (refused > 0)
        log_warn("spool: disk full or below min_free; %zu message(s) refused", refused);
    return syncs;
}

/* Consecutive marks from `first` up to (not including) `stop`, sharing syncs. */
static unsigned long mark_group(struct spool *s, struct job *first, struct job *stop)
{
    size_t n = 0, written = 0;
    unsigned long syncs = 0;
    int per_file;
    char eb[128];

    for (struct job *j = first; j != stop; j = j->next)
        n++;
    per_file = !s->use_syncfs || n == 1;
    for (struct job *j = first; j != stop; j = j->next) {
        char cur[6];
        j->fd = openat(s->dirs[j->from], j->id, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
        if (j->fd < 0) {
            j->err = errno;
            continue;
        }
        /* Only ever overwrite a state byte: a wrong offset must not damage the file. */
        if (j->off < 5 || pread_all(j->fd, cur, sizeof cur, j->off - 5) < 0 ||
            memcmp(cur, "rcpt ", 5) != 0 || !state_valid(cur[5])) {
            log_error("spool: %s/%s: no state byte at offset %lld; not marked", dir_names[j->from],
                      j->id, (long long)j->off);
            j->err = EIO;
        } else if (pwrite(j->fd, &j->state, 1, j->off) != 1) {
            j->err = errno != 0 ? errno : EIO;
        }
        if (j->err != 0 || !per_file) {
            if (close(j->fd) < 0 && j->err == 0 && errno != EINTR)
                j->err = errno;
            j->fd = -1;
        }
        written += j->err == 0;
    }
    if (written > 0 && !per_file) {
        syncs++;
        if (syncfs(s->root) < 0) {
            int e = errno;
            log_error("spool: syncfs failed: %s", errstr(e, eb, sizeof eb));
            for (struct job *j = first; j != stop; j = j->next)
                if (j->err == 0)
                    j->err = e;
        }
    } else if (written > 0) {
        for (struct job *j = first; j != stop; j = j->next) {
            if (j->fd < 0)
                continue;
            syncs++;
            if (fdatasync(j->fd) < 0)
                j->err = errno;
            close(j->fd);
            j->fd = -1;
        }
    }
    return syncs;
}

static void load_one(struct spool *s, struct job *j)
{
    struct stat st;
    int fd = openat(s->dirs[j->from], j->id, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);

    if (fd < 0) {
        j->err = errno;
        return;
    }
    if (fstat(fd, &st) < 0) {
        j->err = errno;
    } else if (j->off < 0 || (uint64_t)st.st_size < (uint64_t)j->off + j->len) {
        j->err = EIO; /* truncated since it was parsed */
    } else if ((j->data = malloc(j->len > 0 ? j->len : 1)) == NULL) {
        j->err = ENOMEM;
    } else if (pread_all(fd, j->data, j->len, j->off) < 0) {
        j->err = errno;
        free(j->data);
        j->data = NULL;
    }
    close(fd);
}

static unsigned long move_one(struct spool *s, struct job *j)
{
    unsigned long syncs = 0;

    if (j->kind == JOB_MOVE) {
        if (rename_noreplace(s->dirs[j->from], j->id, s->dirs[j->to], j->id) < 0) {
            j->err = errno;
            return 0;
        }
        /* Destination first: a crash in between leaves the file in the new place. */
        syncs++;
        if (fsync(s->dirs[j->to]) < 0)
            j->err = errno;
    } else if (unlinkat(s->dirs[j->from], j->id, 0) < 0) {
        j->err = errno;
        return 0;
    }
    syncs++;
    if (fsync(s->dirs[j->from]) < 0 && j->err == 0)
        j->err = errno;
    return syncs;
}

/*
 * Commits go first: they only create new names, which the loop cannot have
 * queued any other job for yet.  Everything else keeps its order, since a
 * mark followed by a move of the same message must happen in that order.
 */
static unsigned long run_batch(struct spool *s, struct job *list)
{
    unsigned long syncs = commit_group(s, list);

    for (struct job *j = list; j != NULL;) {
        if (j->kind == JOB_MARK) {
            struct job *stop = j;
            while (stop != NULL && stop->kind == JOB_MARK)
                stop = stop->next;
            syncs += mark_group(s, j, stop);
            j = stop;
            continue;
        }
        if (j->kind == JOB_LOAD)
            load_one(s, j);
        else if (j->kind == JOB_MOVE || j->kind == JOB_REMOVE)
            syncs += move_one(s, j);
        j = j->next;
    }
    return syncs;
}

static void *spool_thread(void *arg)
{
    struct spool *s = arg;

    pthread_mutex_lock(&s->mu);
    for (;;) {
        struct job *batch, *last;
        unsigned long syncs;

        while (s->jobs == NULL && !s->stopping)
            pthread_cond_wait(&s->cv, &s->mu);
        if (s->jobs == NULL)
            break;
        batch = s->jobs;
        s->jobs = NULL;
        s->jobs_tail = &s->jobs;
        pthread_mutex_unlock(&s->mu);

        syncs = run_batch(s, batch);

        for (last = batch; last->next != NULL; last = last->next)
            ;
        pthread_mutex_lock(&s->mu);
        s->syncs += syncs;
        *s->done_tail = batch;
        s->done_tail = &last->next;
        pthread_mutex_unlock(&s->mu);
        /* spool_close joins this thread before freeing the event. */
        event_active(s->done_ev, EV_READ, 1);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---- the loop side ------------------------------------------------------------ */

static void free_body(const void *data, size_t len, void *extra)
{
    free((void *)data);
}

static void deliver(struct job *list)
{
    while (list != NULL) {
        struct job *j = list;
        list = j->next;
        if (j->kind == JOB_LOAD) {
            struct evbuffer *b = NULL;
            if (j->err == 0 && (b = evbuffer_new()) == NULL)
                j->err = ENOMEM;
            if (j->err == 0 && j->len > 0) {
                if (evbuffer_add_reference(b, j->data, j->len, free_body, NULL) == 0)
                    j->data = NULL; /* the evbuffer frees it */
                else
                    j->err = ENOMEM;
            }
            if (j->err != 0 && b != NULL) {
                evbuffer_free(b);
                b = NULL;
            }
            j->body_cb(j->err, b, j->arg);
        } else {
            j->cb(j->err, j->arg);
        }
        job_free(j);
    }
}

static void spool_done_cb(evutil_socket_t fd, short what, void *arg)
{
    struct spool *s = arg;
    struct job *list;

    pthread_mutex_lock(&s->mu);
    list = s->done;
    s->done = NULL;
    s->done_tail = &s->done;
    pthread_mutex_unlock(&s->mu);
    deliver(list);
}

/* Fails (ESHUTDOWN) once spool_close has begun: a callback run by the close cannot queue more. */
static int enqueue(struct spool *s, struct job *j)
{
    int stopping;

    j->next = NULL;
    pthread_mutex_lock(&s->mu);
    stopping = s->stopping;
    if (!stopping) {
        *s->jobs_tail = j;
        s->jobs_tail = &j->next;
        pthread_cond_signal(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    if (stopping) {
        job_free(j);
        errno = ESHUTDOWN;
        return -1;
    }
    return 0;
}

static struct job *job_new(enum job_kind kind, const char *id, spool_cb cb, void *arg)
{
    struct job *j;

    if (!spool_id_valid(id)) {
        errno = EINVAL;
        return NULL;
    }
    if ((j = calloc(1, sizeof(*j))) == NULL)
        return NULL;
    j->kind = kind;
    j->fd = -1;
    j->src_fd = -1;
    memcpy(j->id, id, strlen(id) + 1);
    j->cb = cb;
    j->arg = arg;
    return j;
}

int spool_commit(struct spool *s, struct spool_entry *e, struct evbuffer *body, int body_fd,
                 spool_cb cb, void *arg)
{
    struct evbuffer *hdr;
    struct job *j;
    size_t hlen, blen;

    if (cb == NULL || body == NULL || (j = job_new(JOB_COMMIT, e->id, cb, arg)) == NULL)
        return -1;
    blen = evbuffer_get_length(body);
    e->body_size = blen;
    if ((hdr = evbuffer_new()) == NULL || spool_header_format(e, hdr) < 0) {
        int err = hdr != NULL ? errno : ENOMEM;
        if (hdr != NULL)
            evbuffer_free(hdr);
        job_free(j);
        errno = err;
        return -1;
    }
    hlen = evbuffer_get_length(hdr);
    if (body_fd >= 0) {
        /* The I/O thread copies the body from its own descriptor of the file. */
        if ((j->src_fd = fcntl(body_fd, F_DUPFD_CLOEXEC, 0)) < 0) {
            int err = errno;
            evbuffer_free(hdr);
            job_free(j);
            errno = err;
            return -1;
        }
        j->body_len = blen;
        blen = 0;
    }
    /* One contiguous copy: the caller's evbuffer stays on the loop thread. */
    if ((j->data = malloc(hlen + blen)) == NULL ||
        evbuffer_copyout(hdr, j->data, hlen) != (ev_ssize_t)hlen ||
        (blen > 0 && evbuffer_copyout(body, j->data + hlen, blen) != (ev_ssize_t)blen)) {
        evbuffer_free(hdr);
        job_free(j);
        errno = ENOMEM;
        return -1;
    }
    evbuffer_free(hdr);
    j->len = hlen + blen;
    return enqueue(s, j);
}

int spool_mark(struct spool *s, const struct spool_entry *e, int held, size_t i, char state,
               spool_cb cb, void *arg)
{
    struct job *j;

    if (cb == NULL || i >= e->nrcpts || !state_valid(state) || e->rcpts[i].state_off < 5) {
        errno = EINVAL;
        return -1;
    }
    if ((j = job_new(JOB_MARK, e->id, cb, arg)) == NULL)
        return -1;
    j->from = held ? SPOOL_IN_HOLD : SPOOL_IN_QUEUE;
    j->off = e->rcpts[i].state_off;
    j->state = state;
    return enqueue(s, j);
}

int spool_load_body(struct spool *s, const struct spool_entry *e, int held, spool_body_cb cb,
                    void *arg)
{
    struct job *j;

    if (cb == NULL || e->body_off <= 0) {
        errno = EINVAL;
        return -1;
    }
    if ((j = job_new(JOB_LOAD, e->id, NULL, arg)) == NULL)
        return -1;
    j->body_cb = cb;
    j->from = held ? SPOOL_IN_HOLD : SPOOL_IN_QUEUE;
    j->off = e->body_off;
    j->len = e->body_size;
    return enqueue(s, j);
}

int spool_move(struct spool *s, const char *id, enum spool_place from, enum spool_place to,
               spool_cb cb, void *arg)
{
    struct job *j;

    if (cb == NULL || (unsigned)from > SPOOL_IN_CORRUPT || (unsigned)to > SPOOL_IN_CORRUPT ||
        from == to) {
        errno = EINVAL;
        return -1;
    }
    if ((j = job_new(JOB_MOVE, id, cb, arg)) == NULL)
        return -1;
    j->from = (int)from;
    j->to = (int)to;
    return enqueue(s, j);
}

int spool_remove(struct spool *s, const char *id, enum spool_place from, spool_cb cb, void *arg)
{
    struct job *j;

    if (cb == NULL || (unsigned)from > SPOOL_IN_CORRUPT) {
        errno = EINVAL;
        return -1;
    }
    if ((j = job_new(JOB_REMOVE, id, cb, arg)) == NULL)
        return -1;
    j->from = (int)from;
    return enqueue(s, j);
}

unsigned long spool_sync_count(struct spool *s)
{
    unsigned long n;

    pthread_mutex_lock(&s->mu);
    n = s->syncs;
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* ---- open, recover, close ------------------------------------------------------ */

/* syncfs(2) returns writeback errors only since Linux 5.8. */
static int kernel_syncfs_reports_errors(void)
{
    struct utsname u;
    unsigned major = 0, minor = 0;

    /* The kernel's own release string; a garbled one only disables the fast path. */
    // NOLINTNEXTLINE(cert-err34-c)
    if (uname(&u) < 0 || sscanf(u.release, "%u.%u", &major, &minor) != 2)
        return 0;
    return major > 5 || (major == 5 && minor >= 8);
}

static int check_dir(int fd, const char *path, const char *sub, char *err, size_t errlen)
{
    struct stat st;

    if (fstat(fd, &st) < 0) {
        snprintf(err, errlen, "spool directory %s%s%s: %s", path, sub ? "/" : "", sub ? sub : "",
                 strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "spool path %s%s%s is not a directory", path, sub ? "/" : "",
                 sub ? sub : "");
        return -1;
    }
    /* Anyone else who can write here could plant or rewrite messages. */
    if (st.st_uid != geteuid()) {
        snprintf(err, errlen,
                 "spool directory %s%s%s is owned by uid %lu, not by the daemon's uid %lu; "
                 "refusing to run (chown it to the daemon's user)",
                 path, sub ? "/" : "", sub ? sub : "", (unsigned long)st.st_uid,
                 (unsigned long)geteuid());
        return -1;
    }
    if (st.st_mode & 022) {
        snprintf(err, errlen,
                 "spool directory %s%s%s is group- or world-writable (mode %04o); "
                 "refusing to run (chmod 0700 it)",
                 path, sub ? "/" : "", sub ? sub : "", (unsigned)(st.st_mode & 07777));
        return -1;
    }
    return 0;
}

static void clean_tmp(struct spool *s)
{
    int fd = dup(s->dirs[DIR_TMP]);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    struct dirent *de;
    char esc[SPOOL_NAME_MAX * 4 + 8], eb[128];

    if (d == NULL) {
        if (fd >= 0)
            close(fd);
        log_warn("spool: cannot list tmp/: %s", errstr(errno, eb, sizeof eb));
        return;
    }
    rewinddir(d);
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        log_escape(de->d_name, strlen(de->d_name), esc, sizeof esc);
        if (unlinkat(s->dirs[DIR_TMP], de->d_name, 0) == 0)
            log_info("spool: removed stale temporary file tmp/%s", esc);
        else
            log_warn("spool: cannot remove tmp/%s: %s", esc, errstr(errno, eb, sizeof eb));
    }
    closedir(d);
}

struct spool *spool_open(struct event_base *base, const struct spool_opts *o, char *err,
                         size_t errlen)
{
    struct spool *s = calloc(1, sizeof(*s));
    int created = 0;
    sigset_t all, old;

    if (s == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->root = -1;
    for (int d = 0; d < DIR_LAST; d++)
        s->dirs[d] = -1;
    s->base = base;
    s->min_free = o->min_free;
    s->jobs_tail = &s->jobs;
    s->done_tail = &s->done;
    if (pthread_mutex_init(&s->mu, NULL) != 0) {
        free(s);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (pthread_cond_init(&s->cv, NULL) != 0) {
        pthread_mutex_destroy(&s->mu);
        free(s);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }

    if (mkdir(o->dir, 0700) == 0)
        created = 1;
    else if (errno != EEXIST) {
        snprintf(err, errlen, "cannot create spool directory %s: %s", o->dir, strerror(errno));
        goto fail;
    }
    if ((s->root = open(o->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
        snprintf(err, errlen, "cannot open spool directory %s: %s", o->dir, strerror(errno));
        goto fail;
    }
    if (check_dir(s->root, o->dir, NULL, err, errlen) < 0)
        goto fail;
    for (int d = 0; d < DIR_LAST; d++) {
        if (mkdirat(s->root, dir_names[d], 0700) == 0)
            created = 1;
        else if (errno != EEXIST) {
            snprintf(err, errlen, "cannot create %s/%s: %s", o->dir, dir_names[d], strerror(errno));
            goto fail;
        }
        s->dirs[d] = openat(s->root, dir_names[d], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (s->dirs[d] < 0) {
            snprintf(err, errlen, "cannot open %s/%s: %s", o->dir, dir_names[d], strerror(errno));
            goto fail;
        }
        if (check_dir(s->dirs[d], o->dir, dir_names[d], err, errlen) < 0)
            goto fail;
    }
    /* New directories must survive a crash too, or the first commit's rename could vanish. */
    if (created && fsync(s->root) < 0) {
        snprintf(err, errlen, "cannot fsync spool directory %s: %s", o->dir, strerror(errno));
        goto fail;
    }
    clean_tmp(s);
    s->use_syncfs = kernel_syncfs_reports_errors();
    if ((s->done_ev = event_new(base, -1, 0, spool_done_cb, s)) == NULL) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    /* Signals belong to the loop thread; the I/O thread must never take them. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&s->thread, NULL, spool_thread, s);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start the spool thread: %s", strerror(rc));
        goto fail;
    }
    s->thread_started = 1;
    return s;
fail:
    spool_close(s);
    return NULL;
}

void spool_close(struct spool *s)
{
    struct job *rest;

    if (s == NULL)
        return;
    if (s->thread_started) {
        pthread_mutex_lock(&s->mu);
        s->stopping = 1;
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
    }
    /* Results the loop has not picked up yet are still reported, here. */
    rest = s->done;
    s->done = NULL;
    deliver(rest);
    if (s->done_ev != NULL)
        event_free(s->done_ev);
    for (int d = 0; d < DIR_LAST; d++)
        if (s->dirs[d] >= 0)
            close(s->dirs[d]);
    if (s->root >= 0)
        close(s->root);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* Never deleted: moved aside under its own name (or name.N if that is taken). */
static void move_corrupt(struct spool *s, int from, const char *name, const char *why)
{
    char target[SPOOL_ID_MAX + 8], eb[128];

    for (int n = 0; n < 1000; n++) {
        if (n == 0)
            snprintf(target, sizeof target, "%s", name);
        else
            snprintf(target, sizeof target, "%s.%d", name, n);
        if (rename_noreplace(s->dirs[from], name, s->dirs[SPOOL_IN_CORRUPT], target) == 0) {
            fsync(s->dirs[SPOOL_IN_CORRUPT]);
            fsync(s->dirs[from]);
            log_warn("spool: %s/%s is corrupt (%s); moved to corrupt/%s", dir_names[from], name,
                     why, target);
            return;
        }
        if (errno != EEXIST)
            break;
    }
    log_error("spool: %s/%s is corrupt (%s) and cannot be moved to corrupt/: %s; left in place",
              dir_names[from], name, why, errstr(errno, eb, sizeof eb));
}

/* 1 found, 0 skipped or moved aside. */
static int recover_one(struct spool *s, int place, const char *name, struct spool_entry **out)
{
    struct stat st;
    struct spool_entry *e;
    const char *why;
    char *buf;
    size_t len;
    char eb[128];
    int fd = openat(s->dirs[place], name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);

    if (fd < 0) {
        log_error("spool: cannot open %s/%s: %s; skipped", dir_names[place], name,
                  errstr(errno, eb, sizeof eb));
        return 0;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        log_warn("spool: %s/%s is not a regular file; skipped", dir_names[place], name);
        close(fd);
        return 0;
    }
    len = (uint64_t)st.st_size < SPOOL_HEADER_MAX ? (size_t)st.st_size : SPOOL_HEADER_MAX;
    if ((buf = malloc(len > 0 ? len : 1)) == NULL || (e = malloc(sizeof(*e))) == NULL) {
        free(buf);
        close(fd);
        log_error("spool: out of memory reading %s/%s; skipped", dir_names[place], name);
        return 0;
    }
    if (pread_all(fd, buf, len, 0) < 0) {
        log_error("spool: cannot read %s/%s: %s; skipped", dir_names[place], name,
                  errstr(errno, eb, sizeof eb));
        free(buf);
        free(e);
        close(fd);
        return 0;
    }
    close(fd);
    int rc = spool_header_parse_sized(buf, len, (uint64_t)st.st_size, e, &why);
    free(buf);
    if (rc == 0 && strcmp(e->id, name) != 0) {
        spool_entry_clear(e);
        why = "id does not match the file name";
        rc = -1;
    }
    if (rc == 0) {
        *out = e;
        return 1;
    }
    free(e);
    move_corrupt(s, place, name, why);
    return 0;
}

long spool_recover(struct spool *s, void (*found)(struct spool_entry *e, int held, void *arg),
                   void *arg, char *err, size_t errlen)
{
    long count = 0;

    for (int place = SPOOL_IN_QUEUE; place <= SPOOL_IN_HOLD; place++) {
        int fd = dup(s->dirs[place]);
        DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
        struct dirent *de;

        if (d == NULL) {
            snprintf(err, errlen, "cannot list %s/: %s", dir_names[place], strerror(errno));
            if (fd >= 0)
                close(fd);
            return -1;
        }
        rewinddir(d);
        errno = 0;
        while ((de = readdir(d)) != NULL) {
            struct spool_entry *e = NULL;
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                continue;
            if (!spool_id_valid(de->d_name)) {
                char esc[SPOOL_NAME_MAX * 4 + 8];
                log_escape(de->d_name, strlen(de->d_name), esc, sizeof esc);
                log_info("spool: ignoring %s/%s: not a message id", dir_names[place], esc);
                continue;
            }
            if (recover_one(s, place, de->d_name, &e) == 1) {
                found(e, place == SPOOL_IN_HOLD, arg);
                spool_entry_clear(e); /* whatever found() did not take */
                free(e);
                count++;
            }
            errno = 0;
        }
        if (errno != 0) {
            snprintf(err, errlen, "cannot list %s/: %s", dir_names[place], strerror(errno));
            closedir(d);
            return -1;
        }
        closedir(d);
    }
    return count;
}

int spool_has_room(struct spool *s, size_t more)
{
    struct statvfs sv;

    if (fstatvfs(s->root, &sv) < 0)
        return -1;
    if ((uint64_t)sv.f_bavail * sv.f_frsize < s->min_free + more) {
        errno = ENOSPC;
        return -1;
    }
    return 0;
}

int spool_tmpfile(struct spool *s)
{
    if (spool_has_room(s, BODYFILE_SPILL_AT) < 0)
        return -1;
    return bodyfile_create(s->dirs[DIR_TMP]);
}
