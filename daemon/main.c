/*
 * mailpoold: the local mail submission daemon.  Runs in the foreground,
 * logs to stderr (journald), and owns one libevent loop for every socket.
 */
#include <errno.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "config_check.h"
#include "control.h"
#include "proto.h"
#include "log.h"
#include "pool.h"
#include "queue.h"
#include "secret.h"
#include "service.h"
#include "spool.h"
#include "submit.h"
#include "tls.h"
#include "unixsock.h"

/* Longest wait for messages in flight at shutdown. */
#define SHUTDOWN_GRACE_SECONDS 30
/* Longest wait for the QUIT replies of idle upstream sessions at exit. */
#define QUIT_GRACE_SECONDS 2
/*
 * A configuration replaced by a reload is freed this long after the pool
 * stopped using it: sessions sent QUIT still read their profile until the
 * server answers, which upstream bounds at 2 seconds.
 */
#define RETIRE_GRACE_SECONDS 5

/* A configuration replaced by a reload, kept while sessions still read it. */
struct retired_config {
    struct config *cfg;
    time_t unused_since; /* 0 while the pool still uses it */
    struct retired_config *next;
};

struct daemon {
    struct event_base *base;
    struct evdns_base *dns;
    struct config *cfg;
    struct pool *pool;
    struct spool *spool;
    struct queue *queue;
    struct submit_server *submit;
    int submit_fd;
    struct control *control;
    int control_fd;
    struct event *sigterm, *sigint, *sighup, *drain_timer;
    time_t stop_started;
    struct retired_config *retired;
    struct service *service;           /* NULL when not run by systemd */
    int submit_passed, control_passed; /* socket activation: systemd owns the files */
    struct event *retire_timer;
};

static void usage(FILE *f)
{
    fprintf(f, "usage: mailpoold [-c FILE] [--check-config] [--version]\n"
               "  -c, --config FILE   configuration file (default " MAILPOOL_DEFAULT_CONFIG ")\n"
               "  -t, --check-config  validate the configuration and exit (0 ok, 1 error)\n"
               "  -V, --version       print the version and exit\n");
}

static void notify(const char *state)
{
    service_notify(state);
}

/* The STATUS= line systemctl status shows. */
static void status_text(char *buf, size_t len, void *arg)
{
    const struct daemon *d = arg;
    snprintf(buf, len, "%s%zu relays, %zu connections, %zu clients, %zu queued",
             d->stop_started ? "stopping: " : "", d->cfg->nrelays, pool_sessions(d->pool),
             submit_clients(d->submit), queue_count(d->queue));
}

static void drain_check(evutil_socket_t fd, short what, void *arg)
{
    struct daemon *d = arg;
    /* Clients in a transaction, and queue deliveries already under way. */
    size_t busy = submit_busy(d->submit) + queue_busy(d->queue);
    if (busy == 0 || time(NULL) - d->stop_started >= SHUTDOWN_GRACE_SECONDS) {
        if (busy)
            log_warn("shutting down with %zu transactions unfinished", busy);
        event_base_loopexit(d->base, NULL);
        return;
    }
    struct timeval tv = {0, 100 * 1000};
    evtimer_add(d->drain_timer, &tv);
}

static void on_stop_signal(evutil_socket_t sig, short what, void *arg)
{
    struct daemon *d = arg;
    if (d->stop_started) {
        log_warn("second signal: stopping now");
        event_base_loopexit(d->base, NULL);
        return;
    }
    log_info("stopping signal=%d: no new clients, finishing messages in flight", (int)sig);
    notify("STOPPING=1");
    d->stop_started = time(NULL);
    submit_stop_accepting(d->submit);
    queue_quiesce(d->queue);
    drain_check(-1, 0, d);
}

static void retire_check(evutil_socket_t fd, short what, void *arg)
{
    struct daemon *d = arg;
    time_t now = time(NULL);
    struct retired_config **link = &d->retired;
    while (*link != NULL) {
        struct retired_config *r = *link;
        if (pool_config_users(d->pool, r->cfg) > 0) {
            r->unused_since = 0;
        } else if (r->unused_since == 0) {
            r->unused_since = now;
        } else if (now - r->unused_since >= RETIRE_GRACE_SECONDS) {
            *link = r->next;
            config_free(r->cfg);
            free(r);
            continue;
        }
        link = &r->next;
    }
    if (d->retired != NULL) {
        struct timeval tv = {1, 0};
        evtimer_add(d->retire_timer, &tv);
    }
}

/* Keep cfg until nothing reads it any more.  Returns -1 when out of memory. */
static int retire_config(struct daemon *d, struct config *cfg)
{
    struct retired_config *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return -1;
    r->cfg = cfg;
    r->next = d->retired;
    d->retired = r;
    retire_check(-1, 0, d);
    return 0;
}

/* A setting only a restart can change: keep the running value in fresh, and say so. */
static void keep_running_value(const char *key, const char *running, char **fresh)
{
    if (strcmp(running, *fresh) == 0)
        return;
    log_warn("reload: %s changed from \"%s\" to \"%s\": this needs a restart; keeping \"%s\"", key,
             running, *fresh, running);
    char *keep = strdup(running);
    if (keep == NULL)
        return; /* the new path is then used at exit for unlink; harmless */
    free(*fresh);
    *fresh = keep;
}

static void keep_restart_only(const struct config *running, struct config *fresh)
{
    keep_running_value("daemon.submit_socket", running->submit_socket, &fresh->submit_socket);
    keep_running_value("daemon.control_socket", running->control_socket, &fresh->control_socket);
    keep_running_value("daemon.spool_dir", running->spool_dir, &fresh->spool_dir);
    if (running->spool.min_free != fresh->spool.min_free) {
        log_warn("reload: spool.min_free changed: this needs a restart; keeping %llu",
                 (unsigned long long)running->spool.min_free);
        fresh->spool.min_free = running->spool.min_free;
    }
}

/*
 * Load and validate the file again; if it is good, switch the pool, the
 * submission server, the queue and the control socket to it.  A bad file
 * changes nothing.  Runs for SIGHUP and for the control socket's reload.
 */
static int daemon_reload(void *arg, struct pool_reload_stats *st, char *err, size_t errlen)
{
    struct daemon *d = arg;
    if (d->stop_started) {
        snprintf(err, errlen, "mailpoold is shutting down");
        return -1;
    }
    service_notify_reloading();
    struct config *fresh = config_load(d->cfg->path, err, errlen);
    if (fresh == NULL) {
        log_error("reload refused, keeping the running configuration: %s", err);
        notify("READY=1");
        return -1;
    }
    keep_restart_only(d->cfg, fresh);
    if (pool_reconfigure(d->pool, fresh, st, err, errlen) != 0) {
        log_error("reload refused, keeping the running configuration: %s", err);
        config_free(fresh);
        notify("READY=1");
        return -1;
    }
    submit_set_config(d->submit, fresh);
    queue_set_config(d->queue, fresh);
    if (d->control != NULL)
        control_set_config(d->control, fresh);
    log_set_level((enum log_level)fresh->log_level);
    struct config *old = d->cfg;
    d->cfg = fresh;
    if (retire_config(d, old) != 0)
        log_error("reload: out of memory: the replaced configuration is leaked");
    log_info("reload: config=%s relays=%zu kept=%zu changed=%zu added=%zu removed=%zu", fresh->path,
             fresh->nrelays, st->kept, st->changed, st->added, st->removed);
    notify("READY=1");
    service_status_now(d->service);
    return 0;
}

static void on_sighup(evutil_socket_t sig, short what, void *arg)
{
    struct pool_reload_stats st;
    char err[1024];
    daemon_reload(arg, &st, err, sizeof(err)); /* it logs the outcome */
}

static void grace_tick(evutil_socket_t fd, short what, void *arg)
{
}

/*
 * Idle sessions were sent QUIT and free themselves when the server answers
 * or closes (or their own short timeout fires).  Run the loop until they are
 * all gone, bounded in time; a lone EVLOOP_NONBLOCK pass would leak them.
 */
static void drain_quits(struct event_base *base)
{
    /* The tick wakes the loop up to look at the deadline; it is the one event left at the end. */
    struct event *tick = event_new(base, -1, EV_PERSIST, grace_tick, NULL);
    if (tick == NULL)
        return;
    struct timeval tv = {0, 50 * 1000};
    event_add(tick, &tv);
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    do {
        if (event_base_get_num_events(base, EVENT_BASE_COUNT_ADDED) <= 1)
            break;
        event_base_loop(base, EVLOOP_ONCE);
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while (now.tv_sec - start.tv_sec < QUIT_GRACE_SECONDS);
    event_free(tick);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check-config", no_argument, NULL, 't'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *path = MAILPOOL_DEFAULT_CONFIG;
    int check = 0, ch;
    while ((ch = getopt_long(argc, argv, "c:tVh", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            path = optarg;
            break;
        case 't':
            check = 1;
            break;
        case 'V':
            printf("mailpoold %s\n", MAILPOOL_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }
    /*
     * Passwords and tokens will live in this process's memory: no core
     * dump of it, and no ptrace or /proc/PID/mem by other processes of the
     * same user.  Before the configuration (and any secret) is read.
     */
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
        fprintf(stderr, "mailpoold: cannot turn off core dumps: %s\n", strerror(errno));
    if (check)
        return config_check_main(path);
    log_init();

    struct daemon d;
    memset(&d, 0, sizeof(d));
    char err[1024];
    d.cfg = config_load(path, err, sizeof(err));
    if (d.cfg == NULL)
        fatal("%s", err);
    log_set_level((enum log_level)d.cfg->log_level);
    signal(SIGPIPE, SIG_IGN);
    if (tls_init(err, sizeof(err)) != 0)
        fatal("TLS: %s", err);

    /* The spool's I/O thread posts its results to the loop. */
    if (evthread_use_pthreads() != 0)
        fatal("cannot enable libevent's thread support");
    d.base = event_base_new();
    if (d.base == NULL)
        fatal("cannot create the event loop");
    d.dns = evdns_base_new(d.base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
    if (d.dns == NULL) {
        /* No resolv.conf (containers, tests): names from /etc/hosts and literals still work. */
        d.dns = evdns_base_new(d.base, 0);
        if (d.dns == NULL)
            fatal("cannot create the DNS resolver");
        evdns_base_load_hosts(d.dns, NULL);
    }
    /*
     * Test hook: extra host names (say, one name for both ::1 and 127.0.0.1)
     * without touching the system's /etc/hosts.  Entries add to it.
     */
    const char *extra_hosts = getenv("MAILPOOL_HOSTS_FILE");
    if (extra_hosts && *extra_hosts && evdns_base_load_hosts(d.dns, extra_hosts) != 0)
        fatal("cannot read MAILPOOL_HOSTS_FILE %s", extra_hosts);
    /*
     * Signals first: a SIGTERM that arrives while the spool is being
     * recovered or the sockets are being created is then handled (by the loop,
     * once it runs) instead of killing the daemon half-started.
     */
    d.sigterm = evsignal_new(d.base, SIGTERM, on_stop_signal, &d);
    d.sigint = evsignal_new(d.base, SIGINT, on_stop_signal, &d);
    d.sighup = evsignal_new(d.base, SIGHUP, on_sighup, &d);
    d.drain_timer = evtimer_new(d.base, drain_check, &d);
    d.retire_timer = evtimer_new(d.base, retire_check, &d);
    if (!d.sigterm || !d.sigint || !d.sighup || !d.drain_timer || !d.retire_timer)
        fatal("cannot set up signal handling");
    evsignal_add(d.sigterm, NULL);
    evsignal_add(d.sigint, NULL);
    evsignal_add(d.sighup, NULL);
    d.pool = pool_new(d.base, d.dns, d.cfg, err, sizeof(err));
    if (d.pool == NULL)
        fatal("%s", err);
    /* Under socket activation systemd made the sockets, with the unit's modes and group. */
    struct service_sockets passed;
    int npassed =
        service_listen_fds(d.cfg->submit_socket, d.cfg->control_socket, &passed, err, sizeof(err));
    if (npassed < 0)
        fatal("%s", err);
    d.submit_passed = passed.submit_fd >= 0;
    d.control_passed = passed.control_fd >= 0;
    if (npassed > 0)
        log_info("socket activation: submit=%s control=%s", d.submit_passed ? "passed" : "bound",
                 d.control_passed ? "passed" : "bound");
    if (d.submit_passed)
        d.submit_fd = passed.submit_fd;
    else
        d.submit_fd = unix_listen(d.cfg->submit_socket, 0666, err, sizeof(err));
    if (d.submit_fd < 0)
        fatal("submission socket: %s", err);
    struct spool_opts so = {.dir = d.cfg->spool_dir, .min_free = d.cfg->spool.min_free};
    d.spool = spool_open(d.base, &so, err, sizeof(err));
    if (d.spool == NULL)
        fatal("spool: %s", err);
    d.queue = queue_new(d.base, d.cfg, d.pool, d.spool);
    if (d.queue == NULL)
        fatal("out of memory");
    long recovered = queue_recover(d.queue, err, sizeof(err));
    if (recovered < 0)
        fatal("spool: %s", err);
    if (recovered > 0)
        log_info("queue: %ld messages recovered from %s", recovered, d.cfg->spool_dir);
    d.submit = submit_new(d.base, d.cfg, d.pool, d.queue, d.spool, d.submit_fd, err, sizeof(err));
    if (d.submit == NULL)
        fatal("%s", err);
    /* Mail keeps flowing without the control socket, so failing to create it is not fatal. */
    if (d.control_passed)
        d.control_fd = passed.control_fd;
    else
        d.control_fd = unix_listen_group(d.cfg->control_socket, 0660, d.cfg->has_control_group,
                                         d.cfg->control_group, err, sizeof(err));
    if (d.control_fd < 0 && !d.control_passed && d.cfg->has_control_group) {
        /* Root and the daemon's user can still use it; the group is checked per connection. */
        log_error("daemon.control_group: %s; the socket keeps the daemon's group", err);
        d.control_fd = unix_listen(d.cfg->control_socket, 0660, err, sizeof(err));
    }
    if (d.control_fd < 0)
        log_error("control socket disabled: %s", err);
    else if ((d.control = control_new(d.base, d.cfg, d.pool, d.queue, d.submit, d.control_fd, err,
                                      sizeof(err))) == NULL)
        fatal("%s", err);
    if (d.control != NULL)
        control_set_reload(d.control, daemon_reload, &d);

    log_info("mailpoold %s started config=%s submit_socket=%s relays=%zu", MAILPOOL_VERSION,
             d.cfg->path, d.cfg->submit_socket, d.cfg->nrelays);
    if (service_start(d.base, status_text, &d, &d.service) != 0)
        fatal("out of memory");
    notify("READY=1");
    event_base_dispatch(d.base);
    service_status_now(d.service);
    service_free(d.service); /* its timers would keep drain_quits() busy */

    if (d.control != NULL) {
        control_free(d.control);
        close(d.control_fd);
        if (!d.control_passed)
            unlink(d.cfg->control_socket);
    }
    submit_free(d.submit);
    close(d.submit_fd);
    if (!d.submit_passed)
        unlink(d.cfg->submit_socket);
    /* Order matters: see queue.h.  Unfinished deliveries stay pending in the spool. */
    queue_stop(d.queue);
    pool_free(d.pool);
    spool_close(d.spool);
    /* Only the idle sessions' QUITs may keep the loop busy from here on. */
    event_del(d.sigterm);
    event_del(d.sigint);
    event_del(d.sighup);
    event_del(d.retire_timer);
    evdns_base_free(d.dns, 0); /* its nameserver sockets would keep the loop alive */
    drain_quits(d.base);
    event_free(d.sigterm);
    event_free(d.sigint);
    event_free(d.sighup);
    event_free(d.drain_timer);
    event_free(d.retire_timer);
    queue_free(d.queue);
    secret_shutdown(); /* kills a password_command still running; before its events go */
    event_base_free(d.base);
    config_free(d.cfg);
    /* Every session is gone now, so nothing reads the replaced configurations any more. */
    while (d.retired != NULL) {
        struct retired_config *r = d.retired;
        d.retired = r->next;
        config_free(r->cfg);
        free(r);
    }
    tls_shutdown();
    log_info("mailpoold stopped pid=%ld", (long)getpid());
    return 0;
}
