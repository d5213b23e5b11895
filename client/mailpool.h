/*
 * libmailpool: hand mail to the local mailpoold over its submission socket.
 *
 * The library is thin: it speaks the submission protocol (LMTP on a Unix
 * socket) and nothing else; the daemon owns the SMTP sessions, TLS and the
 * credentials.  Every call returns a status (MAILPOOL_OK or a negative
 * mailpool_status); it never aborts or prints.  Every blocking call is
 * bounded by the handle's timeout.
 */
#ifndef MAILPOOL_H
#define MAILPOOL_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MAILPOOL_VERSION_MAJOR 0
#define MAILPOOL_VERSION_MINOR 2
#define MAILPOOL_VERSION_PATCH 0
#define MAILPOOL_VERSION_STRING "0.2.0"
/* 0xMMmmpp: compare with #if MAILPOOL_VERSION_NUMBER >= 0x000200 */
#define MAILPOOL_VERSION_NUMBER                                                                    \
    ((MAILPOOL_VERSION_MAJOR << 16) | (MAILPOOL_VERSION_MINOR << 8) | MAILPOOL_VERSION_PATCH)

typedef enum mailpool_status {
    MAILPOOL_OK = 0,
    MAILPOOL_ERR_ARGS = -1,       /* a bad argument (NULL, CR/LF/NUL in an address ...) */
    MAILPOOL_ERR_NOMEM = -2,      /* out of memory */
    MAILPOOL_ERR_CONNECT = -3,    /* cannot reach the daemon (not running, no access) */
    MAILPOOL_ERR_IO = -4,         /* the connection failed or was closed */
    MAILPOOL_ERR_TIMEOUT = -5,    /* the timeout passed */
    MAILPOOL_ERR_PROTOCOL = -6,   /* the daemon said something that is not LMTP */
    MAILPOOL_ERR_TEMPORARY = -7,  /* the daemon or relay answered 4xx: try again later */
    MAILPOOL_ERR_PERMANENT = -8,  /* answered 5xx: do not retry as is */
    MAILPOOL_ERR_PARTIAL = -9,    /* some recipients accepted, some not: see the result */
    MAILPOOL_ERR_THREAD = -10,    /* handle used from a thread that does not own it */
    MAILPOOL_ERR_CANCELLED = -11, /* mailpool_cancel() aborted the operation */
    MAILPOOL_ERR_STATE = -12,     /* call out of order (e.g. on a broken handle) */
} mailpool_status;

/* Options for mailpool_open(), or'ed together. */
#define MAILPOOL_OPT_FREETHREAD 0x1u /* any thread may use the handle; caller serialises */

typedef struct mailpool mailpool;

/* One SMTP/LMTP reply as the daemon gave it. */
typedef struct mailpool_reply {
    int code;       /* e.g. 250, 451, 550; 0 if none was received */
    char ecode[16]; /* enhanced status code ("5.1.1"), or "" */
    char text[512]; /* reply text without code and enhanced code (truncated to fit) */
} mailpool_reply;

/* What to send.  Strings are UTF-8 addresses without angle brackets. */
typedef struct mailpool_envelope {
    const char *sender;            /* "" for the null sender <> */
    const char *const *recipients; /* nrecipients addresses */
    size_t nrecipients;
    const char *relay; /* relay profile name (XRELAY=), or NULL: the default relay */
    const char *mode;  /* "relay", "queue", or NULL: the daemon's default */
    /*
     * Delivery status notifications (RFC 3461), each NULL when not asked for.
     * notify: "NEVER", or a comma list of "SUCCESS", "FAILURE", "DELAY" (each
     * once), sent as NOTIFY= on every RCPT.  ret: "FULL" or "HDRS" (RET= on
     * MAIL).  envid: the envelope id already encoded as xtext (printable
     * ASCII but '+' and '=', others as "+XX" in upper-case hex), at most 100
     * bytes (ENVID= on MAIL).  A value outside these rules makes
     * mailpool_send() return MAILPOOL_ERR_ARGS.  Added in 0.1; leave them
     * zeroed (designated initialisers do) when unused.
     */
    const char *notify;
    const char *ret;
    const char *envid;
    /*
     * Added in 0.2 (read by mailpool_send() as compiled against 0.2, and by
     * every function added in 0.2; binaries built against 0.1 never have
     * these fields read).  orcpts: NULL, or nrecipients entries, each NULL
     * or an RFC 3461 ORCPT value "addr-type;xtext" (e.g.
     * "rfc822;user+40example.org"), at most 500 bytes.  flags:
     * MAILPOOL_ENV_* bits.
     */
    const char *const *orcpts;
    unsigned flags;
} mailpool_envelope;

/*
 * Envelope flags.  A message given as one buffer is scanned, so 8BITMIME is
 * set on its own when the text has 8-bit bytes; a streamed message or one
 * read from a descriptor is not scanned: say so here.  SMTPUTF8 is set on
 * its own when an address is not ASCII; set it also for UTF-8 header fields.
 */
#define MAILPOOL_ENV_8BITMIME 0x1u /* BODY=8BITMIME (RFC 6152) */
#define MAILPOOL_ENV_SMTPUTF8 0x2u /* SMTPUTF8 (RFC 6531) */

/* The outcome: overall status plus one reply per recipient, in order. */
typedef struct mailpool_result {
    mailpool_status status; /* OK, PARTIAL, TEMPORARY, PERMANENT, or a transport error */
    size_t nrecipients;
    mailpool_reply *recipients; /* per recipient (RCPT refusal or final LMTP reply) */
} mailpool_result;

/*
 * Connect to the daemon.  socket_path NULL: $MAILPOOL_SOCKET, else the
 * default "/run/mailpool/submit.sock".  timeout_ms bounds every later
 * blocking call on the handle (0: 60000).  On success *out is the handle and
 * MAILPOOL_OK is returned; otherwise CONNECT, TIMEOUT, PROTOCOL (bad
 * greeting), TEMPORARY (421 greeting), NOMEM or ARGS, and *out is NULL.
 * PERMANENT for a 5xx greeting (the daemon refuses this client).  After
 * CONNECT, errno says why (ENOENT, ECONNREFUSED, EACCES ...).  The handle
 * belongs to the calling thread unless options has MAILPOOL_OPT_FREETHREAD.
 */
mailpool_status mailpool_open(const char *socket_path, unsigned timeout_ms, unsigned options,
                              mailpool **out);

/*
 * Send QUIT (bounded by the timeout) and free the handle.  NULL is a no-op.
 * Unlike the other calls it works from any thread: freeing is always allowed.
 */
void mailpool_close(mailpool *mp);

/*
 * Send one message: the envelope plus `len` bytes of RFC 5322 text (any
 * line ending; the library dot-stuffs it and sends CRLF).  Fills *result
 * (free it with mailpool_result_free()) and returns result->status:
 * OK (all recipients accepted), PARTIAL, TEMPORARY (all refused, at least one
 * with 4xx), PERMANENT (all refused with 5xx), or a transport error
 * (CONNECT/IO/TIMEOUT/PROTOCOL; recipients whose outcome is unknown then
 * carry code 0, those already refused or delivered keep their reply; the
 * handle is broken and later calls return STATE).  ARGS for an empty
 * recipient list or an address with CR, LF, NUL or other control bytes,
 * spaces outside quotes, or over the length limits (nothing is sent then).
 * THREAD from a thread that does not own the handle.  After a refusal the
 * library sends RSET, so the handle stays usable for the next message.
 */
mailpool_status mailpool_send(mailpool *mp, const mailpool_envelope *env, const void *message,
                              size_t len, mailpool_result *result);

/*
 * The same as mailpool_send(), reading the whole 0.2 envelope (orcpts,
 * flags).  Source compiled against this header calls it through the
 * mailpool_send() macro below; binaries built against 0.1 keep calling the
 * old symbol, which reads only the 0.1 fields.
 */
mailpool_status mailpool_send2(mailpool *mp, const mailpool_envelope *env, const void *message,
                               size_t len, mailpool_result *result);
#ifndef MAILPOOL_NO_SEND_REDIRECT
#define mailpool_send(mp, env, message, len, result) mailpool_send2(mp, env, message, len, result)
#endif

/*
 * Send a message read from fd (any line ending, read in chunks until end of
 * file, so it never has to be in memory at once).  The descriptor is read
 * from its current offset and not closed.  Returns and fills *result like
 * mailpool_send(); IO also when reading fd fails (errno says why; the
 * partial message is discarded by closing the connection and the handle
 * reconnects on its next use, as after a cancel).
 */
mailpool_status mailpool_send_fd(mailpool *mp, const mailpool_envelope *env, int fd,
                                 mailpool_result *result);

/* Free what mailpool_send() put in *result (not result itself). */
void mailpool_result_free(mailpool_result *result);

/* The last reply the daemon sent on this handle (code 0 if none). */
const mailpool_reply *mailpool_last_reply(const mailpool *mp);

/*
 * The queue id in a reply to a queue-mode message ("... queued as ID"):
 * writes it NUL-terminated to buf and returns its length, like snprintf (a
 * return >= size means buf was too small and holds nothing useful).
 * Returns 0 when the reply names no queue id.
 */
size_t mailpool_reply_queue_id(const mailpool_reply *reply, char *buf, size_t size);

/* A static English description of a status. */
const char *mailpool_strerror(mailpool_status status);

/* The library's version string at run time (MAILPOOL_VERSION_STRING of the build). */
const char *mailpool_version(void);

/*
 * Streaming send, for a message that is produced piece by piece:
 *
 *   mailpool_stream_begin(mp, &env);             envelope (recipients may be empty)
 *   mailpool_stream_add_recipient(mp, a, n, o);  more recipients, optional
 *   mailpool_stream_write(mp, buf, len);         any number of chunks
 *   mailpool_stream_end(mp, &result);            end of data, per-recipient result
 *
 * The chunks are plain message text with any line ending; the library turns
 * line endings into CRLF and dot-stuffs, across chunk boundaries too.  Only
 * one chunk of internal buffer is held, however large the message.
 *
 * mailpool_stream_begin() only records the envelope (it copies everything):
 * it returns ARGS for a bad envelope, THREAD, STATE (a transaction is
 * already open, or the handle is broken), NOMEM.  add_recipient: addr as in
 * the envelope; notify and orcpt NULL or as in mailpool_envelope (notify
 * NULL: the envelope's); ARGS, STATE (not in a transaction, or data already
 * written).  The first write (or end) sends the envelope and waits for the
 * daemon's go-ahead: when every recipient was refused or the daemon refused
 * the transaction, write returns TEMPORARY or PERMANENT (or a transport
 * error) and later writes return the same; call mailpool_stream_end() for
 * the per-recipient result either way.  mailpool_stream_end() always closes
 * the transaction; it returns and fills *result like mailpool_send().
 * mailpool_stream_abort() drops an open transaction (closing the connection
 * if data was started, reconnecting on the next use): the daemon keeps
 * nothing of it.
 */
mailpool_status mailpool_stream_begin(mailpool *mp, const mailpool_envelope *env);
mailpool_status mailpool_stream_add_recipient(mailpool *mp, const char *addr, const char *notify,
                                              const char *orcpt);
mailpool_status mailpool_stream_write(mailpool *mp, const void *buf, size_t len);
mailpool_status mailpool_stream_end(mailpool *mp, mailpool_result *result);
mailpool_status mailpool_stream_abort(mailpool *mp);

/*
 * Cancel the operation in progress on mp, from any thread or from a signal
 * handler (it is async-signal-safe: it sets a flag and writes an eventfd).
 * The blocking call (or asynchronous operation) ends with CANCELLED and a
 * CANCEL event.  The library closes the connection and reconnects on the
 * next call, so the handle stays usable.  A cancel before the end of the
 * data discards the message (the daemon drops a transaction, and a message
 * whose client hangs up mid-data).  A cancel after the end of the data,
 * while the per-recipient replies are awaited, cannot undo the delivery:
 * the daemon already has the whole message and goes on with it; only the
 * outcome is lost.  A cancel when nothing is in progress is dropped when
 * the next operation starts.
 */
void mailpool_cancel(mailpool *mp);

/*
 * Make the calling thread the owner of mp (the handle belongs to the thread
 * that opened it).  The caller must make sure the previous owner no longer
 * uses it.  Returns OK, ARGS for NULL.
 */
mailpool_status mailpool_attach_thread(mailpool *mp);

/*
 * Asynchronous use, without threads.  Events are delivered to a callback,
 * for blocking calls too (PROGRESS during a long send, for instance).
 */
typedef enum mailpool_event {
    MAILPOOL_EV_CONNECT = 1, /* connected, greeted and LHLO done (reply: the LHLO reply) */
    MAILPOOL_EV_DISCONNECT,  /* the connection is closed (status: why; OK for QUIT/close) */
    MAILPOOL_EV_READ,        /* bytes: how many were received */
    MAILPOOL_EV_WRITE,       /* bytes: how many were written; room for stream_write_async */
    MAILPOOL_EV_COMMAND,     /* a command completed: command, reply, rcpt_index */
    MAILPOOL_EV_PROGRESS,    /* message bytes sent / total (total 0: not known yet) */
    MAILPOOL_EV_TIMEOUT,     /* the timeout passed (the operation then ends with TIMEOUT) */
    MAILPOOL_EV_CANCEL,      /* mailpool_cancel() took effect (the operation ends with CANCELLED) */
    MAILPOOL_EV_DONE,        /* an asynchronous operation ended: status, result */
} mailpool_event;

/*
 * What an event carries; only the fields named for the event are set, the
 * others are zero/NULL.  Fields are only ever added at the end: check
 * `size` (sizeof the struct as the library built it) before reading a
 * field added in a later version.
 */
typedef struct mailpool_event_info {
    size_t size;
    mailpool_event event;
    mailpool_status status; /* DISCONNECT, DONE */
    /*
     * COMMAND: "LHLO", "MAIL", "RCPT", "DATA", "." (a per-recipient reply
     * after the data; rcpt_index says whose), "RSET" or "QUIT".
     */
    const char *command;
    const mailpool_reply *reply; /* COMMAND, CONNECT */
    size_t rcpt_index;           /* COMMAND "RCPT" and "." */
    size_t bytes;                /* READ, WRITE */
    unsigned long long sent;     /* PROGRESS: message bytes sent so far (as on the wire) */
    unsigned long long total;    /* PROGRESS: of how many, 0 when not known */
    mailpool_result *result;     /* DONE of a send or stream end: the caller's result */
} mailpool_event_info;

typedef void (*mailpool_callback)(mailpool *mp, const mailpool_event_info *ev, void *arg);

/*
 * Set (or with NULL clear) the event callback.  The callback runs inside
 * the library call that caused the event, in the owning thread; it may call
 * mailpool_cancel(), start the next asynchronous operation from a DONE
 * event, and call mailpool_stream_write_async(); it must not call
 * mailpool_close() or a blocking function.  During an asynchronous
 * operation it runs on the library's private 256 KiB stack (a coroutine):
 * keep callbacks shallow, without large local arrays or deep recursion.
 * Returns OK, ARGS, THREAD.
 */
mailpool_status mailpool_set_callback(mailpool *mp, mailpool_callback cb, void *arg);

/*
 * Non-blocking open: returns at once with *out set and the connection in
 * progress (OK), or an error as mailpool_open() (ARGS, NOMEM, CONNECT when
 * the socket cannot even be started).  A CONNECT event then a DONE event
 * (status OK, or the error mailpool_open() would return) follow from
 * mailpool_process().  After a failed DONE only mailpool_close() is useful.
 */
mailpool_status mailpool_open_async(const char *socket_path, unsigned timeout_ms, unsigned options,
                                    mailpool_callback cb, void *arg, mailpool **out);

/*
 * The descriptor to watch: it is readable whenever mailpool_process() has
 * work to do (socket ready, timeout passed, cancel requested).  Watch it
 * for reading only, always; it stays the same for the handle's life, also
 * across reconnections.  -1 for NULL.
 */
int mailpool_fd(const mailpool *mp);

/*
 * Advance the asynchronous operation: call when mailpool_fd() is readable
 * (revents: what poll() reported, or 0; spurious calls are harmless).
 * Never blocks.  Events are delivered from here.  Returns OK (continue),
 * or the status the DONE event carried when an operation just ended; THREAD
 * from a foreign thread.
 */
mailpool_status mailpool_process(mailpool *mp, int revents);

/* Is an asynchronous operation in progress (waiting for mailpool_process())? 1/0 */
int mailpool_busy(const mailpool *mp);

/*
 * Non-blocking counterparts of mailpool_send(), mailpool_send_fd() and
 * mailpool_stream_end(): they validate, start the operation and return OK;
 * the outcome arrives as a DONE event whose result is `result`, which (with
 * `message`, or `fd`) must stay valid until then (the envelope is copied).
 * Errors found before anything is sent are returned directly (ARGS, THREAD,
 * STATE when another operation is in progress, NOMEM).  The descriptor of
 * mailpool_send_fd_async() is read as the socket drains; a pipe or socket
 * with no data yet is waited for with poll() (up to the timeout), which
 * blocks mailpool_process() even if it is O_NONBLOCK: give it regular
 * files, or feed pipes through mailpool_stream_write_async().
 */
mailpool_status mailpool_send_async(mailpool *mp, const mailpool_envelope *env, const void *message,
                                    size_t len, mailpool_result *result);
mailpool_status mailpool_send_fd_async(mailpool *mp, const mailpool_envelope *env, int fd,
                                       mailpool_result *result);
mailpool_status mailpool_stream_end_async(mailpool *mp, mailpool_result *result);

/*
 * Non-blocking mailpool_stream_write(): takes what fits in the library's
 * buffer now and says how much in *accepted (0 when full: wait for a WRITE
 * event, then offer the rest).  The envelope goes out with the first call;
 * until the daemon's go-ahead arrives *accepted may stay 0.  Returns OK,
 * or the transaction's failure as mailpool_stream_write() does.
 */
mailpool_status mailpool_stream_write_async(mailpool *mp, const void *buf, size_t len,
                                            size_t *accepted);

#ifdef __cplusplus
}
#endif

#endif
