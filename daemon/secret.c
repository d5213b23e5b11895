/*
 * AUTH secrets at authentication time: the static ones from the config and
 * password_command, run with posix_spawn through /bin/sh in its own process
 * group, read through a non-blocking pipe on the event loop, reaped through
 * a pidfd (no SIGCHLD handler to share), killed when it overruns its time.
 * The first line of its output is the secret (e.g. an OAuth2 access token).
 */
#include "secret.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "log.h"

extern char **environ;

/* Output beyond this is not a token or a password; stop reading and fail. */
#define SECRET_MAX_OUTPUT 65536
/* Used when the relay's command timeout is 0 ("wait indefinitely"): a secret must come. */
#define SECRET_DEFAULT_TIMEOUT 60
/* Without a pidfd, how often to look for the child's exit. */
#define SECRET_REAP_POLL_MS 50

struct secret_req {
    struct secret_entry *entry;
    secret_cb cb;
    void *arg;
    struct secret_req *next;
};

/* One relay's command: its cached output and the run in progress, if any. */
struct secret_entry {
    char *key; /* relay name, NUL, command: a reload with another command starts afresh */
    size_t keylen;
    char *value;    /* cached first line, or NULL */
    time_t expires; /* value valid until then */
    unsigned runs;  /* commands started, for tests and logs */
    char *relay;    /* for messages */
    unsigned timeout;

    /* The run in progress. */
    pid_t pid;
    int out_fd, pid_fd;
    struct event *ev_out, *ev_exit, *ev_timer;
    char *buf;
    size_t len;
    int eof, exited, status, timed_out, too_long;
    unsigned ttl;
    struct secret_req *waiters;

    struct secret_entry *next;
};

/*
 * The daemon runs one event loop in one thread, and the cache must outlive
 * any one session (that is its point), so it lives here.
 */
static struct secret_entry *entries;

void secret_free(char *secret)
{
    if (secret) {
        explicit_bzero(secret, strlen(secret));
        free(secret);
    }
}

static void wipe_buf(struct secret_entry *e)
{
    if (e->buf) {
        explicit_bzero(e->buf, e->len);
        free(e->buf);
        e->buf = NULL;
    }
    e->len = 0;
}

static struct secret_entry *entry_find(const struct relay_config *rc, int create)
{
    size_t nl = strlen(rc->name), cl = strlen(rc->auth_password_command);
    size_t kl = nl + 1 + cl;
    for (struct secret_entry *e = entries; e; e = e->next)
        if (e->keylen == kl && memcmp(e->key, rc->name, nl + 1) == 0 &&
            memcmp(e->key + nl + 1, rc->auth_password_command, cl) == 0)
            return e;
    if (!create)
        return NULL;
    struct secret_entry *e = calloc(1, sizeof(*e));
    if (e == NULL || !(e->key = malloc(kl + 1)) || !(e->relay = strdup(rc->name))) {
        if (e)
            free(e->key);
        free(e);
        return NULL;
    }
    memcpy(e->key, rc->name, nl + 1);
    memcpy(e->key + nl + 1, rc->auth_password_command, cl + 1);
    e->keylen = kl;
    e->pid = -1;
    e->out_fd = e->pid_fd = -1;
    e->next = entries;
    entries = e;
    return e;
}

static void run_cleanup(struct secret_entry *e)
{
    if (e->ev_out)
        event_free(e->ev_out);
    if (e->ev_exit)
        event_free(e->ev_exit);
    if (e->ev_timer)
        event_free(e->ev_timer);
    e->ev_out = e->ev_exit = e->ev_timer = NULL;
    if (e->out_fd >= 0)
        close(e->out_fd);
    if (e->pid_fd >= 0)
        close(e->pid_fd);
    e->out_fd = e->pid_fd = -1;
    e->pid = -1;
    wipe_buf(e);
}

/* Call every waiter once; a callback may start or cancel other requests. */
static void deliver(struct secret_entry *e, const char *secret, const char *err)
{
    struct secret_req *list = e->waiters;
    e->waiters = NULL;
    while (list) {
        struct secret_req *r = list;
        list = r->next;
        secret_cb cb = r->cb;
        void *arg = r->arg;
        free(r);
        cb(secret, err, arg);
    }
}

static void run_finish(struct secret_entry *e)
{
    char err[200] = "";
    char *value = NULL;
    if (e->timed_out) {
        snprintf(err, sizeof(err), "password_command timed out after %u s", e->timeout);
    } else if (e->too_long) {
        snprintf(err, sizeof(err), "password_command printed more than %d bytes",
                 SECRET_MAX_OUTPUT);
    } else if (WIFSIGNALED(e->status)) {
        snprintf(err, sizeof(err), "password_command was killed by signal %d", WTERMSIG(e->status));
    } else if (WIFEXITED(e->status) && WEXITSTATUS(e->status) != 0) {
        snprintf(err, sizeof(err), "password_command exited with status %d",
                 WEXITSTATUS(e->status));
    } else {
        size_t n = 0;
        while (n < e->len && e->buf[n] != '\n')
            n++;
        if (n > 0 && e->buf[n - 1] == '\r')
            n--;
        if (n == 0)
            snprintf(err, sizeof(err), "password_command printed an empty first line");
        else if (memchr(e->buf, '\0', n))
            snprintf(err, sizeof(err), "password_command printed a NUL byte");
        else if ((value = malloc(n + 1)) == NULL)
            snprintf(err, sizeof(err), "out of memory");
        else {
            memcpy(value, e->buf, n);
            value[n] = '\0';
        }
    }
    run_cleanup(e);
    secret_free(e->value);
    e->value = value;
    /* ttl 0: the sessions waiting now share it; the next AUTH runs the command again. */
    e->expires = time(NULL) + (time_t)e->ttl;
    if (value) {
        log_debug("secret relay=%s password_command done", e->relay);
    } else {
        log_warn("secret relay=%s error=\"%s\"", e->relay, err);
    }
    deliver(e, value, value ? NULL : err);
}

static void run_maybe_done(struct secret_entry *e)
{
    if (e->eof && e->exited)
        run_finish(e);
}

static void on_output(evutil_socket_t fd, short what, void *arg)
{
    struct secret_entry *e = arg;
    char chunk[4096];
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n <= 0) {
            e->eof = 1;
            event_del(e->ev_out);
            break;
        }
        if (e->len + (size_t)n > SECRET_MAX_OUTPUT) {
            e->too_long = 1;
            e->eof = 1;
            event_del(e->ev_out);
            kill(-e->pid, SIGKILL);
            break;
        }
        char *nb = malloc(e->len + (size_t)n);
        if (nb == NULL) {
            e->too_long = 1;
            e->eof = 1;
            event_del(e->ev_out);
            kill(-e->pid, SIGKILL);
            break;
        }
        if (e->buf)
            memcpy(nb, e->buf, e->len);
        memcpy(nb + e->len, chunk, (size_t)n);
        size_t len = e->len + (size_t)n;
        wipe_buf(e);
        e->buf = nb;
        e->len = len;
    }
    explicit_bzero(chunk, sizeof(chunk));
    (void)what;
    run_maybe_done(e);
}

static void reap(struct secret_entry *e)
{
    int status;
    pid_t r = waitpid(e->pid, &status, WNOHANG);
    if (r == e->pid || (r < 0 && errno == ECHILD)) {
        e->exited = 1;
        e->status = r == e->pid ? status : 0;
        if (e->ev_exit)
            event_del(e->ev_exit);
        /* The command is gone; what is still in the pipe is all there is. */
        if (!e->eof && e->out_fd >= 0)
            on_output(e->out_fd, EV_READ, e);
        else
            run_maybe_done(e);
    }
}

static void on_exit_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    reap(arg);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct secret_entry *e = arg;
    (void)fd;
    (void)what;
    e->timed_out = 1;
    /* The whole group: "sh -c" may have children holding the pipe open. */
    kill(-e->pid, SIGKILL);
    e->eof = 1;
    if (e->ev_out)
        event_del(e->ev_out);
    reap(e);
}

static int run_start(struct event_base *base, struct secret_entry *e, const struct relay_config *rc,
                     char *err, size_t errlen)
{
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC | O_NONBLOCK) < 0) {
        snprintf(err, errlen, "password_command: pipe: %s", strerror(errno));
        return -1;
    }
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&at);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, pfd[1], 1);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                      POSIX_SPAWN_SETSIGDEF);
    posix_spawnattr_setpgroup(&at, 0);
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &all);
    char *argv[] = {"/bin/sh", "-c", rc->auth_password_command, NULL};
    pid_t pid;
    int rc_spawn = posix_spawn(&pid, "/bin/sh", &fa, &at, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    close(pfd[1]);
    if (rc_spawn != 0) {
        close(pfd[0]);
        snprintf(err, errlen, "password_command: cannot run /bin/sh: %s", strerror(rc_spawn));
        return -1;
    }
    e->runs++;
    e->pid = pid;
    e->out_fd = pfd[0];
    e->eof = e->exited = e->status = e->timed_out = e->too_long = 0;
    e->ttl = rc->auth_password_command_ttl;
    e->timeout = rc->timeouts.command ? rc->timeouts.command : SECRET_DEFAULT_TIMEOUT;
    e->pid_fd = (int)syscall(SYS_pidfd_open, pid, 0);
    e->ev_out = event_new(base, e->out_fd, EV_READ | EV_PERSIST, on_output, e);
    e->ev_timer = evtimer_new(base, on_timeout, e);
    if (e->pid_fd >= 0)
        e->ev_exit = event_new(base, e->pid_fd, EV_READ | EV_PERSIST, on_exit_cb, e);
    else /* old kernel: poll for the exit */
        e->ev_exit = event_new(base, -1, EV_PERSIST, on_exit_cb, e);
    if (!e->ev_out || !e->ev_timer || !e->ev_exit) {
        kill(-pid, SIGKILL);
        waitpid(pid, NULL, 0); /* just killed: returns at once */
        run_cleanup(e);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    struct timeval tv = {.tv_sec = e->timeout};
    struct timeval poll = {.tv_sec = 0, .tv_usec = SECRET_REAP_POLL_MS * 1000};
    event_add(e->ev_out, NULL);
    event_add(e->ev_timer, &tv);
    event_add(e->ev_exit, e->pid_fd >= 0 ? NULL : &poll);
    log_info("secret relay=%s running password_command pid=%ld", rc->name, (long)pid);
    return 0;
}

static int copy_out(const char *s, char **out, char *err, size_t errlen)
{
    *out = strdup(s);
    if (*out == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 1;
}

int secret_get(struct event_base *base, const struct relay_config *rc, secret_cb cb, void *arg,
               struct secret_req **req, char **out, char *err, size_t errlen)
{
    *req = NULL;
    *out = NULL;
    if (rc->auth_password_command == NULL)
        return copy_out(rc->auth_password ? rc->auth_password : "", out, err, errlen);
    struct secret_entry *e = entry_find(rc, 1);
    if (e == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (e->value && e->pid < 0 && time(NULL) < e->expires)
        return copy_out(e->value, out, err, errlen);
    struct secret_req *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (e->pid < 0) {
        secret_free(e->value);
        e->value = NULL;
        if (run_start(base, e, rc, err, errlen) < 0) {
            free(r);
            return -1;
        }
    }
    r->entry = e;
    r->cb = cb;
    r->arg = arg;
    r->next = e->waiters;
    e->waiters = r;
    *req = r;
    return 0;
}

void secret_cancel(struct secret_req *req)
{
    if (req == NULL)
        return;
    struct secret_entry *e = req->entry;
    for (struct secret_req **p = &e->waiters; *p; p = &(*p)->next)
        if (*p == req) {
            *p = req->next;
            free(req);
            return;
        }
}

int secret_invalidate(const struct relay_config *rc, const char *secret)
{
    if (rc->auth_password_command == NULL)
        return 0;
    struct secret_entry *e = entry_find(rc, 0);
    if (e && e->value && strcmp(e->value, secret) == 0) {
        secret_free(e->value);
        e->value = NULL;
    }
    return 1;
}

unsigned secret_runs(const struct relay_config *rc)
{
    if (rc->auth_password_command == NULL)
        return 0;
    struct secret_entry *e = entry_find(rc, 0);
    return e ? e->runs : 0;
}

void secret_shutdown(void)
{
    while (entries) {
        struct secret_entry *e = entries;
        entries = e->next;
        if (e->pid > 0) {
            kill(-e->pid, SIGKILL);
            waitpid(e->pid, NULL, 0); /* SIGKILLed: does not wait long */
        }
        while (e->waiters) {
            struct secret_req *r = e->waiters;
            e->waiters = r->next;
            free(r);
        }
        run_cleanup(e);
        secret_free(e->value);
        free(e->key);
        free(e->relay);
        free(e);
    }
}
