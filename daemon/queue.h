/*
 * Queue mode (SPEC section 3): messages accepted durably into the spool,
 * delivered through the pool at once, retried with exponential back-off on
 * temporary failure, bounced (RFC 3464) on permanent failure or expiry.
 * The in-memory index mirrors the spool; the spool is the truth.
 */
#ifndef MAILPOOL_QUEUE_H
#define MAILPOOL_QUEUE_H

#include <stddef.h>
#include <time.h>

struct event_base;
struct config;
struct relay_config;
struct pool;
struct spool;
struct message;
struct queue;

struct queue *queue_new(struct event_base *base, const struct config *cfg, struct pool *pool,
                        struct spool *spool);
/*
 * A reload: read settings from cfg from now on.  A message whose relay was
 * removed goes to the default relay at its next attempt.  cfg must outlive
 * the queue or the next call.
 */
void queue_set_config(struct queue *q, const struct config *cfg);
/* Load what the spool holds (at start-up) and schedule it.  Returns the count, or -1. */
long queue_recover(struct queue *q, char *err, size_t errlen);
/* At shutdown: start no new attempt; those under way finish normally. */
void queue_quiesce(struct queue *q);
/* Deliveries in progress (for a bounded wait at shutdown). */
size_t queue_busy(const struct queue *q);
/*
 * Shutdown, in this order: queue_stop() (results arriving from now on are
 * dropped: the spool keeps those recipients pending), pool_free(),
 * spool_close(), then queue_free().  Messages stay in the spool.
 */
void queue_stop(struct queue *q);
void queue_free(struct queue *q);

/*
 * Accept m for delivery through rc.  cb runs once the message is durable
 * (err 0; m->id is then its queue id) or could not be stored (err is an
 * errno value: ENOSPC for a full disk or min_free).  The queue copies what
 * it needs; m stays the caller's.  Returns 0, or -1 when out of memory.
 */
typedef void (*queue_cb)(int err, void *arg);
int queue_submit(struct queue *q, struct message *m, const struct relay_config *rc, queue_cb cb,
                 void *arg);
/* The submitter went away before cb ran: cb will not be called. */
void queue_submit_cancel(struct queue *q, void *arg);

/* ---- operator commands ---------------------------------------------------- */

struct queue_rcpt_info {
    const char *addr;
    char state;             /* enum spool_rcpt_state */
    const char *last_error; /* last reply for this recipient, or NULL */
};

struct queue_item_info {
    const char *id;
    time_t created;
    const char *sender;
    const char *relay; /* relay name */
    size_t size;
    unsigned attempts;
    time_t next_attempt; /* 0 when being delivered now */
    const char *last_error;
    int held;
    int is_bounce;
    int busy; /* a delivery attempt is in progress */
    const struct queue_rcpt_info *rcpts;
    size_t nrcpts;
};

size_t queue_count(const struct queue *q);
/* Call fn for every message (or only `id` when not NULL); returns how many. */
size_t queue_foreach(const struct queue *q, const char *id,
                     void (*fn)(const struct queue_item_info *it, void *arg), void *arg);

/* Results of the commands below. */
enum queue_cmd_result {
    QUEUE_OK = 0,
    QUEUE_UNKNOWN = -1, /* no such message (or relay) */
    QUEUE_BUSY = -2,    /* a delivery attempt is in progress; try again */
    QUEUE_STATE = -3,   /* e.g. hold on a held message */
};

/* Retry now: one message (id), every message for a relay, or all (NULL). Returns the count or
 * QUEUE_UNKNOWN. */
long queue_flush(struct queue *q, const char *id_or_relay);
int queue_hold(struct queue *q, const char *id);
int queue_release(struct queue *q, const char *id);
int queue_delete(struct queue *q, const char *id);

#endif
