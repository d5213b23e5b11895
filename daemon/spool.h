/*
 * The durable spool: one file per queued message in <spool_dir>/queue/<ID>
 * (or hold/<ID> while held): a text envelope header, an empty line, then the
 * canonical message (CRLF lines, unstuffed).  Each recipient's state is one
 * byte at a known offset of the header, so progress is recorded with a
 * one-byte pwrite and fdatasync: a restart never re-sends to a recipient
 * that was done.
 *
 * All disk work runs in one I/O thread; the event loop never waits on the
 * disk.  Commits are grouped: the thread writes every message that is
 * waiting, makes them durable with shared syncs, renames them from tmp/
 * into queue/ and fsyncs the directory once, then reports each result on
 * the loop.  A message is never reported committed before it is durable.
 */
#ifndef MAILPOOL_SPOOL_H
#define MAILPOOL_SPOOL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

struct event_base;
struct evbuffer;
struct spool;

#define SPOOL_ID_MAX 32

/* Recipient states, as stored on disk. */
enum spool_rcpt_state {
    SPOOL_PENDING = 'P',   /* not delivered yet */
    SPOOL_DELIVERED = 'D', /* accepted by the relay */
    SPOOL_FAILED = 'F',    /* failed for good; a DSN is owed (or was queued) */
    SPOOL_DONE = 'X',      /* failed for good and no DSN is owed (NOTIFY, <> sender, or sent) */
};

/* DSN NOTIFY bits (RFC 3461 4.1); 0 = not given (default: FAILURE). */
enum spool_notify {
    SPOOL_NOTIFY_NEVER = 1u << 0,
    SPOOL_NOTIFY_SUCCESS = 1u << 1,
    SPOOL_NOTIFY_FAILURE = 1u << 2,
    SPOOL_NOTIFY_DELAY = 1u << 3,
};

/* DSN RET (RFC 3461 4.3). */
enum spool_ret { SPOOL_RET_UNSET = 0, SPOOL_RET_FULL, SPOOL_RET_HDRS };

struct spool_rcpt {
    char *addr;
    char state;      /* enum spool_rcpt_state */
    unsigned notify; /* enum spool_notify bits */
    char *orcpt;     /* ORCPT as given ("rfc822;xtext"), or NULL */
    off_t state_off; /* offset of the state byte in the file (set by commit/parse) */
};

struct spool_entry {
    char id[SPOOL_ID_MAX + 1];
    time_t created;
    char *sender; /* "" for <> */
    char *relay;  /* relay profile asked for, or NULL for the default */
    uid_t uid;
    int eightbit;
    int smtputf8;
    int is_bounce; /* a DSN we generated: never bounced itself */
    enum spool_ret ret;
    char *envid; /* ENVID as given (xtext), or NULL */
    struct spool_rcpt *rcpts;
    size_t nrcpts;
    size_t body_size;
    off_t body_off; /* where the body starts in the file (set by commit/parse) */
};

/* ---- the file format (pure) ---------------------------------------------- */

/*
 * Serialise e's header (everything before the body, including the empty
 * line) into out; sets each rcpt's state_off and e->body_off relative to the
 * start of the file.  Returns 0, or -1 if a field holds a byte that cannot
 * be stored (CR, LF, NUL) or out of memory.
 */
int spool_header_format(struct spool_entry *e, struct evbuffer *out);

/*
 * Parse a header from the first `len` bytes of a file.  Fills e (caller
 * frees with spool_entry_clear) and returns 0; or returns -1 with a reason
 * in *why (static string) when the header is malformed, truncated, or over
 * its limits.  Pure: unit-tested and fuzzed.
 */
int spool_header_parse(const char *buf, size_t len, struct spool_entry *e, const char **why);

/*
 * As spool_header_parse, when buf holds only the first len bytes of a file
 * of file_size bytes (recovery reads just the header): the body is checked
 * against file_size, so a short file is "truncated body" and a long one
 * "bytes after the body".  Returns 0, or -1 with *why.
 */
int spool_header_parse_sized(const char *buf, size_t len, uint64_t file_size, struct spool_entry *e,
                             const char **why);

/* 1 if id can name a spool file: 1..SPOOL_ID_MAX of [0-9A-Za-z_-], alphanumeric first. */
int spool_id_valid(const char *id);

void spool_entry_clear(struct spool_entry *e);

/* ---- the spool ----------------------------------------------------------- */

struct spool_opts {
    const char *dir;   /* created if missing, mode 0700 */
    uint64_t min_free; /* bytes; a commit when less is free fails with ENOSPC */
};

/*
 * Open the spool: create tmp/ queue/ hold/ failed/ corrupt/ (0700) if
 * needed, remove stale tmp/ files, start the I/O thread.  Results of later
 * calls are delivered on `base`.  NULL with a message in err.
 * Requires evthread_use_pthreads() before the event base was created.
 */
struct spool *spool_open(struct event_base *base, const struct spool_opts *o, char *err,
                         size_t errlen);
/*
 * Finish the jobs already queued, stop the thread, free.  Callbacks of jobs
 * that finish during the close run inside spool_close (on the calling
 * thread), so their arguments must stay valid until it returns.  Not to be
 * called from a spool callback; spool calls made from callbacks that run
 * during the close fail with ESHUTDOWN.
 */
void spool_close(struct spool *s);

/* Sync system calls (syncfs, fdatasync, fsync) made so far: tests check group commit with it. */
unsigned long spool_sync_count(struct spool *s);

/*
 * Recovery, at start-up before the loop serves clients: call found() for
 * every message in queue/ (held = 0) and hold/ (held = 1).  The callee takes
 * over the allocations inside *e: it copies the struct and zeroes *e, or
 * calls spool_entry_clear(e); whatever is left in *e is freed after found()
 * returns, and the struct itself stays the spool's.  A file
 * that cannot be parsed, is truncated or whose id differs from its name is
 * moved to corrupt/ and logged, never deleted; names that are not ids are
 * logged and left alone.  Returns the number found, or -1 with err when a
 * directory cannot be listed.
 */
long spool_recover(struct spool *s, void (*found)(struct spool_entry *e, int held, void *arg),
                   void *arg, char *err, size_t errlen);

/* Completion callback, run on the loop: err is 0 or an errno value. */
typedef void (*spool_cb)(int err, void *arg);

/*
 * Make a message durable: e (id, envelope, rcpts all SPOOL_PENDING) and its
 * canonical body.  The spool copies what it needs before returning; when
 * body_fd is not -1, body is that file's content (its first
 * evbuffer_get_length(body) bytes) and the I/O thread copies it from a
 * duplicate of the descriptor instead of from memory.  cb(0)
 * only once the file is in queue/ and both it and the directory entry are
 * on disk; cb(ENOSPC) when the disk is full or below min_free, cb(errno) on
 * other errors (EEXIST: the id is already in queue/, hold/ or failed/), and
 * then no file is left behind.  Sets e->body_size from body, e->body_off and
 * the state offsets.  Returns 0, or -1 when the job cannot even be queued
 * (EINVAL: invalid id or a field that cannot be stored; ENOMEM).
 */
int spool_commit(struct spool *s, struct spool_entry *e, struct evbuffer *body, int body_fd,
                 spool_cb cb, void *arg);

/*
 * A new anonymous file in tmp/ for a message body that is still arriving
 * (bodyfile.h), on the spool's file system so spooling it later is a copy
 * within one disk.  Returns the descriptor, or -1 with errno (ENOSPC when
 * the disk is below min_free).
 */
int spool_tmpfile(struct spool *s);

/*
 * Whether the spool's file system has `more` bytes free above min_free.
 * Returns 0, or -1 with errno (ENOSPC).  For body files, which grow while
 * a message arrives: checked again every few MiB.
 */
int spool_has_room(struct spool *s, size_t more);

/*
 * Record recipient i's new state durably (pwrite of the state byte + sync;
 * marks waiting together share one sync).  The byte is only written where
 * the file holds a state byte (else cb(EIO)).  cb(0) once durable, or
 * cb(errno) (ENOENT: no such message in that place).  Returns 0, or -1
 * (EINVAL: bad index or state, ENOMEM) when the job cannot be queued.
 */
int spool_mark(struct spool *s, const struct spool_entry *e, int held, size_t i, char state,
               spool_cb cb, void *arg);

/*
 * Read the body (e->body_size bytes at e->body_off) with read(), never a
 * mapping, so a disk error is an error and not a signal, into a new evbuffer that
 * cb takes over (NULL when err != 0: ENOENT, EIO for a file shorter than its
 * header says, ENOMEM).  Returns 0, or -1 (EINVAL, ENOMEM) if not queued.
 */
typedef void (*spool_body_cb)(int err, struct evbuffer *body, void *arg);
int spool_load_body(struct spool *s, const struct spool_entry *e, int held, spool_body_cb cb,
                    void *arg);

/* Where a message lives. */
/* (Named SPOOL_IN_* so they do not clash with the recipient states.) */
enum spool_place { SPOOL_IN_QUEUE, SPOOL_IN_HOLD, SPOOL_IN_FAILED, SPOOL_IN_CORRUPT };

/*
 * Move a message between queue/, hold/, failed/, corrupt/ (rename, never
 * replacing an existing file: cb(EEXIST); then fsync of both directories).
 * If a directory fsync fails, cb gets its errno and the file may be in
 * either place after a crash.  Returns 0, or -1 (EINVAL, ENOMEM).
 */
int spool_move(struct spool *s, const char *id, enum spool_place from, enum spool_place to,
               spool_cb cb, void *arg);
/* Delete a message (unlink + directory fsync); cb(ENOENT) if absent.  Returns 0 or -1. */
int spool_remove(struct spool *s, const char *id, enum spool_place from, spool_cb cb, void *arg);

#endif
