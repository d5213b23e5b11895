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
#define MAILPOOL_VERSION_MINOR 1

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
    MAILPOOL_ERR_CANCELLED = -11, /* reserved for mailpool_cancel() (not yet available) */
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
} mailpool_envelope;

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

/* Free what mailpool_send() put in *result (not result itself). */
void mailpool_result_free(mailpool_result *result);

/* The last reply the daemon sent on this handle (code 0 if none). */
const mailpool_reply *mailpool_last_reply(const mailpool *mp);

/* A static English description of a status. */
const char *mailpool_strerror(mailpool_status status);

#ifdef __cplusplus
}
#endif

#endif
