/* Listening Unix-domain sockets. */
#ifndef MAILPOOL_UNIXSOCK_H
#define MAILPOOL_UNIXSOCK_H

#include <stddef.h>

/*
 * Create, bind and listen on a Unix socket at path (a stale socket file is
 * replaced; anything else at that path is an error) with permissions `mode`
 * (e.g. 0666, 0660).  Returns a non-blocking, close-on-exec fd, or -1 with a
 * message in err.
 */
int unix_listen(const char *path, unsigned mode, char *err, size_t errlen);

#endif
