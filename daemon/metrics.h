/*
 * Delivery metrics in the Prometheus text exposition format (version 0.0.4):
 * per-relay counters and a hand-off latency histogram, noted where events
 * happen, plus gauges read from the pool and the queue when rendered.
 * Only the event loop's thread may call these functions.
 */
#ifndef MAILPOOL_METRICS_H
#define MAILPOOL_METRICS_H

#include <stddef.h>

struct evbuffer;
struct message;
struct pool;
struct queue;

/*
 * A message handed to relay `relay` finished (every recipient has a result);
 * latency_s is the time from hand-off to the last result.  Counts the message
 * by outcome (sent: some recipient accepted; deferred: none accepted, some 4xx;
 * rejected: all 5xx), its recipients by outcome and, when sent, its bytes.
 * Out of memory: the event is not counted.
 */
void metrics_note_message(const char *relay, const struct message *m, double latency_s);

/* An upstream server refused our AUTH for relay `relay`. */
void metrics_note_auth_failure(const char *relay);

/*
 * Append the exposition text to out: the noted counters and histogram, the
 * pool's session counters and waiters (p may be NULL) and the queue's size and
 * oldest message age (q may be NULL).  Returns 0, or -1 when out of memory
 * (out then holds a partial text that must not be served).
 */
int metrics_render(struct evbuffer *out, const struct pool *p, const struct queue *q);

/*
 * Append s as the inside of a label value: backslash, double quote and line
 * feed escaped as \\, \" and \n.  Returns 0, or -1 when out of memory.
 */
int metrics_label_escape(struct evbuffer *out, const char *s);

/* Forget every noted event and free the memory (shutdown, tests). */
void metrics_reset(void);

#endif
