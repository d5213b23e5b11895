/* Listening Unix-domain sockets. */
#ifndef MAILPOOL_UNIXSOCK_H
#define MAILPOOL_UNIXSOCK_H

#include <stddef.h>
#include <sys/types.h>

/*
 * Create, bind and listen on a Unix socket at path (a stale socket file is
 * replaced; anything else at that path is an error) with permissions `mode`
 * (e.g. 0666, 0660).  Returns a non-blocking, close-on-exec fd, or -1 with a
 * message in err.
 */
int unix_listen(const char *path, unsigned mode, char *err, size_t errlen);

/*
 * unix_listen(), and when has_group the socket file is given group `gid`
 * between bind() and listen(), so no client can connect before it has its
 * final owner.  Returns the fd, or -1 with a message in err (a failed chown
 * is an error: the caller decides whether to go on without the group).
 */
int unix_listen_group(const char *path, unsigned mode, int has_group, gid_t gid, char *err,
                      size_t errlen);

#endif
