/*
 * The submission protocol, defined once for the daemon and the client
 * library: LMTP (RFC 2033) over a Unix socket, plus mailpool's own MAIL
 * parameters.  Both sides include this file so names and limits cannot drift.
 */
#ifndef MAILPOOL_PROTO_H
#define MAILPOOL_PROTO_H

#define MAILPOOL_PROTO_VERSION 1

#define MAILPOOL_DEFAULT_CONFIG "/etc/mailpool/mailpool.conf"
#define MAILPOOL_DEFAULT_SUBMIT_SOCKET "/run/mailpool/submit.sock"
#define MAILPOOL_DEFAULT_CONTROL_SOCKET "/run/mailpool/control.sock"
#define MAILPOOL_DEFAULT_SPOOL_DIR "/var/spool/mailpool"
#define MAILPOOL_SOCKET_ENV "MAILPOOL_SOCKET"
#define MAILPOOL_CONTROL_SOCKET_ENV "MAILPOOL_CONTROL_SOCKET"

/*
 * The control socket: one request line (words separated by spaces, CRLF or
 * LF) of at most this many bytes without the line end; one line of JSON
 * back per request.  Longer lines get an error and the connection closes.
 */
#define MAILPOOL_MAX_CONTROL_LINE 1024

/* MAIL FROM parameters of our own, advertised in the LHLO reply. */
#define MAILPOOL_PARAM_RELAY "XRELAY"
#define MAILPOOL_PARAM_MODE "XMODE"
#define MAILPOOL_MODE_RELAY "relay"
#define MAILPOOL_MODE_QUEUE "queue"

/*
 * Limits.  A command line (verb, path and parameters, without CRLF) longer
 * than this is refused with 500 and the connection is closed.  RFC 5321
 * allows 512 octets; parameters of our own and DSN's ORCPT need more room.
 */
#define MAILPOOL_MAX_COMMAND_LINE 2048
/* RFC 5321 section 4.5.3.1: local part 64, domain 255, path 256 octets. */
#define MAILPOOL_MAX_LOCAL_PART 64
#define MAILPOOL_MAX_DOMAIN 255
#define MAILPOOL_MAX_PATH 256
/* Most recipients accepted in one transaction (RFC 5321 asks for >= 100). */
#define MAILPOOL_MAX_RECIPIENTS 1000
/* Longest relay profile name accepted in XRELAY=. */
#define MAILPOOL_MAX_RELAY_NAME 64
/* Longest ENVID= value (xtext, as sent), RFC 3461 section 4.4. */
#define MAILPOOL_MAX_ENVID 100
/*
 * A reply line the daemon sends (code, enhanced code and text, without
 * CRLF) is never longer than this, and a reply never has more lines; a
 * client treats anything larger as a protocol error.  Relay-mode replies
 * carry the upstream's text, so this is more than RFC 5321's 512.
 */
#define MAILPOOL_MAX_REPLY_LINE 4096
#define MAILPOOL_MAX_REPLY_LINES 128

#endif
