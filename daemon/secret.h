/*
 * The AUTH secret of a relay at authentication time.  password,
 * password_file and credential were read by config_load(); password_command
 * is run here, on the event loop without blocking it (output read through a
 * non-blocking pipe, the child reaped through a pidfd), its first line
 * cached for password_command_ttl seconds and shared by every session of the
 * relay.  The secret is never logged; copies are wiped when freed.
 */
#ifndef MAILPOOL_SECRET_H
#define MAILPOOL_SECRET_H

#include <stddef.h>

struct event_base;
struct relay_config;
struct secret_req;

/*
 * A fetch finished: secret (owned by the callee's caller: copy it; it is
 * wiped after the callback) or NULL with a reason in err ("password_command
 * timed out after 30 s", never containing output).
 */
typedef void (*secret_cb)(const char *secret, const char *err, void *arg);

/*
 * The secret of relay rc.  Returns 1 with a malloc'd copy in *out (free it
 * with secret_free()) when it is at hand (a static secret or a fresh cached
 * one); 0 when the command was started (or is already running for another
 * session) and cb will be called later from the loop, never from inside
 * this call -- *req is then the handle for secret_cancel(); -1 with a
 * reason in err when the command cannot be started.
 */
int secret_get(struct event_base *base, const struct relay_config *rc, secret_cb cb, void *arg,
               struct secret_req **req, char **out, char *err, size_t errlen);

/* Stop waiting: cb will not be called.  The command keeps running for the cache. */
void secret_cancel(struct secret_req *req);

/*
 * The server refused `secret` (an expired OAuth2 token): drop it from the
 * cache so the next secret_get() runs the command again.  Returns 1 when the
 * relay's secret comes from password_command (so a retry can help), else 0.
 * A cached value other than `secret` (already refreshed) is kept.
 */
int secret_invalidate(const struct relay_config *rc, const char *secret);

/* How many times a relay's command has been started (tests, logs). */
unsigned secret_runs(const struct relay_config *rc);

/* Wipe and free a secret returned by secret_get().  NULL is fine. */
void secret_free(char *secret);

/* At exit: kill running commands, reap them, wipe and free the cache. */
void secret_shutdown(void);

#endif
