/*
 * Buffered, non-blocking socket I/O on the libevent loop, plaintext or
 * TLS (through tls.h), with a deadline timer.  The upstream session uses it
 * so that its state machine never touches a socket or wolfSSL directly.
 * Output is collected in an evbuffer and written with as few writes (TLS
 * records) as possible, so a pipelined burst leaves in one segment.
 */
#ifndef MAILPOOL_IOEV_H
#define MAILPOOL_IOEV_H

#include <stddef.h>
#include <sys/socket.h>

struct event_base;
struct evbuffer;
struct tls_ctx;

enum ioev_event {
    IOEV_CONNECTED, /* the non-blocking connect completed */
    IOEV_READ,      /* new bytes are in ioev_input() */
    IOEV_FLUSHED,   /* everything in ioev_output() was written */
    IOEV_TLS_DONE,  /* the TLS handshake completed */
    IOEV_EOF,       /* the peer closed the connection */
    IOEV_ERROR,     /* connect, socket or TLS error: ioev_error() says which */
    IOEV_TIMEOUT,   /* the deadline of ioev_set_timeout() passed */
};

struct ioev;
typedef void (*ioev_cb)(struct ioev *io, enum ioev_event ev, void *arg);

/*
 * Start a non-blocking TCP connect (TCP_NODELAY set) to addr.  The callback
 * gets IOEV_CONNECTED or IOEV_ERROR.  NULL with a message if the socket
 * cannot even be created.
 */
struct ioev *ioev_connect(struct event_base *base, const struct sockaddr *addr, socklen_t alen,
                          ioev_cb cb, void *arg, char *err, size_t errlen);

/*
 * Wrap an already connected non-blocking socket (e.g. one from accept()),
 * which the ioev then owns and closes.  NULL when out of memory (fd is then
 * still the caller's).
 */
struct ioev *ioev_new(struct event_base *base, int fd, ioev_cb cb, void *arg);

/*
 * Close and free.  May be called from inside the ioev's own callback: the
 * memory is then released when the callback returns, and no further events
 * are delivered.
 */
void ioev_free(struct ioev *io);

/* Change the callback (e.g. when a session changes owner). */
void ioev_set_cb(struct ioev *io, ioev_cb cb, void *arg);

struct evbuffer *ioev_input(struct ioev *io);
struct evbuffer *ioev_output(struct ioev *io);
/*
 * Write what was added to ioev_output(): at once as far as the socket takes
 * it, the rest when it becomes writable; IOEV_FLUSHED (from the loop) when
 * all is written.  Never calls the callback from inside this call.
 */
void ioev_flush(struct ioev *io);

/*
 * Begin a TLS client handshake on the connection.  Refused (-1) when the
 * input buffer is not empty: bytes received in plaintext must never be taken
 * as part of the TLS session (STARTTLS injection).  Then IOEV_TLS_DONE or
 * IOEV_ERROR.
 */
int ioev_start_tls(struct ioev *io, struct tls_ctx *ctx, const char *server_name,
                   const char *session_key, char *err, size_t errlen);
int ioev_is_tls(const struct ioev *io);
const char *ioev_tls_version(const struct ioev *io); /* NULL when plaintext */
const char *ioev_tls_cipher(const struct ioev *io);
int ioev_tls_resumed(const struct ioev *io);
/* The server certificate (see tls_conn_peer_info()); -1 when plaintext or none. */
struct tls_peer_info;
int ioev_tls_peer_info(const struct ioev *io, struct tls_peer_info *info);

/* One-shot deadline: IOEV_TIMEOUT after ms milliseconds; 0 cancels. */
void ioev_set_timeout(struct ioev *io, unsigned ms);

/* The reason of the last IOEV_ERROR ("connection refused", TLS reason ...). */
const char *ioev_error(const struct ioev *io);
int ioev_fd(const struct ioev *io);

#endif
