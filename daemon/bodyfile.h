/*
 * Message bodies kept on disk instead of in memory.
 *
 * A message that grows past BODYFILE_SPILL_AT while a client sends it is
 * moved to an unlinked file in the spool's tmp/ directory and appended to
 * there; when the data ends, the file is mapped read-only and handed on as
 * an evbuffer, so the rest of the daemon reads it like any other body while
 * the kernel, not the daemon's heap, holds the bytes.  Spool bodies read for
 * retries are mapped the same way.
 *
 * The file has no name, so nothing is left behind by a crash, and it
 * disappears when the last descriptor and mapping go.  Nobody else can
 * reach it, so it cannot be truncated under the mapping.
 */
#ifndef MAILPOOL_BODYFILE_H
#define MAILPOOL_BODYFILE_H

#include <stddef.h>
#include <sys/types.h>

struct evbuffer;

/* In-memory bytes of a message being received before it moves to a file. */
#define BODYFILE_SPILL_AT (128 * 1024)

/*
 * A new anonymous file (mode 0600, close-on-exec, read-write) in the
 * directory dirfd: O_TMPFILE where the file system has it, else a random
 * name that is unlinked at once.  Returns the descriptor, or -1 with errno.
 */
int bodyfile_create(int dirfd);

/* Write all of p[0..n) to fd (EINTR and short writes retried).  Returns 0, or -1 with errno. */
int bodyfile_append(int fd, const void *p, size_t n);

/* Write all of buf to the file and drain it.  Returns 0, or -1 with errno. */
int bodyfile_append_buffer(int fd, struct evbuffer *buf);

/*
 * A read-only private mapping of len bytes of fd from off, and the
 * address of byte off in it (*data).  *base and *maplen are what
 * bodyfile_unmap needs.  len 0 maps nothing (*data = "", *base = NULL).
 * Returns 0, or -1 with errno.  Safe on any thread.
 */
int bodyfile_map(int fd, off_t off, size_t len, const char **data, void **base, size_t *maplen);
void bodyfile_unmap(void *base, size_t maplen);

/*
 * Append a mapping made by bodyfile_map to out; out unmaps it when done
 * with it (also on failure).  Returns 0, or -1 (ENOMEM).
 */
int bodyfile_add_mapping(struct evbuffer *out, const char *data, size_t len, void *base,
                         size_t maplen);

/* bodyfile_map + bodyfile_add_mapping.  Returns 0, or -1 with errno. */
int bodyfile_add(struct evbuffer *out, int fd, off_t off, size_t len);

#endif
