/*
 * mailpool-sendmail's queue commands (-bp / mailq, -q): one request to
 * mailpoold's control socket, the answer printed the way sendmail and
 * Postfix users expect.
 */
#ifndef MAILPOOL_SENDMAIL_QUEUE_H
#define MAILPOOL_SENDMAIL_QUEUE_H

/*
 * List the queue on stdout ("Mail queue is empty" when it is).  Returns a
 * sysexits.h code: EX_OK; EX_UNAVAILABLE when the daemon cannot be reached
 * or refuses; EX_NOPERM when the control socket or the daemon denies
 * access (the caller needs the daemon's group); EX_PROTOCOL for an answer
 * that is not what the protocol says; EX_OSERR, EX_IOERR.
 */
int sendmail_queue_list(const char *control_path);

/*
 * Ask for an immediate delivery attempt: every message (target NULL), one
 * message (its queue id) or every message for a relay.  Says how many were
 * flushed on stderr when verbose.  Returns the codes of
 * sendmail_queue_list(); an unknown id or relay is EX_UNAVAILABLE with the
 * daemon's message.
 */
int sendmail_queue_flush(const char *control_path, const char *target, int verbose);

#endif
