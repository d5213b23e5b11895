/*
 * "test RELAY": open one session to a relay exactly as delivery would
 * (proxy, TLS, EHLO, STARTTLS, AUTH), send no mail, QUIT, and report each
 * step's timing, the server's capabilities, the TLS details and the AUTH
 * mechanism as one JSON object for the control socket.
 */
#ifndef MAILPOOL_PROBE_H
#define MAILPOOL_PROBE_H

struct evbuffer;
struct upstream_params;
struct probe;

/*
 * The report: one complete JSON object (no line end) in `answer`, which the
 * callee may drain, or NULL when out of memory; the probe is freed when the
 * callback returns.  It has
 * "ok" true when every step worked, else "ok" false with "error",
 * "failed_step" and the steps done so far.
 */
typedef void (*probe_cb)(struct evbuffer *answer, void *arg);

/*
 * Start probing p->relay (p->probe should be set; see pool_probe_params()).
 * The pointers in p must stay valid until the callback or probe_cancel().
 * cb runs later, from the loop, never inside this call.  NULL when out of
 * memory.
 */
struct probe *probe_start(const struct upstream_params *p, probe_cb cb, void *arg);

/* Stop at once without calling back (the session is closed without QUIT). */
void probe_cancel(struct probe *pr);

#endif
