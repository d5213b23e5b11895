/*
 * The daemon's side of systemd's service protocol (sd_listen_fds(3),
 * sd_notify(3), sd_watchdog_enabled(3)): named socket activation, state
 * changes, a STATUS= line kept current, and watchdog pings from the loop.
 */
#include "service.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#ifdef HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "log.h"

/* How often the STATUS= text is recomputed; it is only sent when it changed. */
#define STATUS_INTERVAL_MS 1000

struct service {
    struct event *watchdog, *status_timer;
    service_status_fn status;
    void *status_arg;
    char *last_status; /* the text systemd has now, NULL before the first */
};

void service_notify(const char *state)
{
#ifdef HAVE_LIBSYSTEMD
    sd_notify(0, state);
#else
    (void)state;
#endif
}

void service_notify_reloading(void)
{
#ifdef HAVE_LIBSYSTEMD
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu",
               (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000);
#endif
}

#ifdef HAVE_LIBSYSTEMD
/* The path an AF_UNIX socket is bound to, "" when unnamed or not AF_UNIX. */
static void bound_path(int fd, char *path, size_t len)
{
    struct sockaddr_un sun;
    socklen_t sl = sizeof(sun);
    path[0] = '\0';
    memset(&sun, 0, sizeof(sun));
    if (getsockname(fd, (struct sockaddr *)&sun, &sl) != 0 || sun.sun_family != AF_UNIX)
        return;
    size_t n = sl > offsetof(struct sockaddr_un, sun_path)
                   ? sl - offsetof(struct sockaddr_un, sun_path)
                   : 0;
    if (n == 0 || sun.sun_path[0] == '\0') /* unnamed or abstract */
        return;
    n = strnlen(sun.sun_path, n);
    if (n >= len)
        return;
    memcpy(path, sun.sun_path, n);
    path[n] = '\0';
}

/* Which slot fd belongs in: by its name, else by the path it is bound to. */
static int *pick_slot(int fd, const char *name, const char *submit_path, const char *control_path,
                      struct service_sockets *out)
{
    if (strcmp(name, "submit") == 0)
        return &out->submit_fd;
    if (strcmp(name, "control") == 0)
        return &out->control_fd;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path) + 1];
    bound_path(fd, path, sizeof(path));
    if (path[0] != '\0' && strcmp(path, submit_path) == 0)
        return &out->submit_fd;
    if (path[0] != '\0' && strcmp(path, control_path) == 0)
        return &out->control_fd;
    return NULL;
}

static int take_fd(int fd, const char *name, char *err, size_t errlen)
{
    if (sd_is_socket_unix(fd, SOCK_STREAM, 1, NULL, 0) <= 0) {
        snprintf(err, errlen, "passed socket \"%s\" (fd %d) is not a listening Unix stream socket",
                 name, fd);
        return -1;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) {
        snprintf(err, errlen, "passed socket \"%s\": fcntl: %s", name, strerror(errno));
        return -1;
    }
    return 0;
}
#endif

int service_listen_fds(const char *submit_path, const char *control_path,
                       struct service_sockets *out, char *err, size_t errlen)
{
    out->submit_fd = -1;
    out->control_fd = -1;
#ifdef HAVE_LIBSYSTEMD
    char **names = NULL;
    int n = sd_listen_fds_with_names(1, &names);
    if (n < 0) {
        snprintf(err, errlen, "socket activation: %s", strerror(-n));
        return -1;
    }
    int taken = 0, rc = 0;
    for (int i = 0; i < n; i++) {
        int fd = SD_LISTEN_FDS_START + i;
        const char *name = names && names[i] ? names[i] : "unknown";
        int *slot = rc == 0 ? pick_slot(fd, name, submit_path, control_path, out) : NULL;
        if (rc == 0 && slot == NULL) {
            /* Not ours to serve; closing it keeps it from leaking into children. */
            log_warn("socket activation: ignoring passed socket \"%s\" (fd %d): not named submit "
                     "or control and not bound to either configured path",
                     name, fd);
            close(fd);
        } else if (rc == 0 && *slot >= 0) {
            snprintf(err, errlen, "socket activation: two sockets passed for \"%s\"", name);
            close(fd);
            rc = -1;
        } else if (rc == 0 && take_fd(fd, name, err, errlen) != 0) {
            close(fd);
            rc = -1;
        } else if (rc == 0) {
            *slot = fd;
            taken++;
        } else {
            close(fd);
        }
        if (names)
            free(names[i]);
    }
    free(names);
    if (rc != 0) {
        if (out->submit_fd >= 0)
            close(out->submit_fd);
        if (out->control_fd >= 0)
            close(out->control_fd);
        out->submit_fd = out->control_fd = -1;
        return -1;
    }
    return taken;
#else
    (void)submit_path;
    (void)control_path;
    (void)err;
    (void)errlen;
    return 0;
#endif
}

void service_status_now(struct service *sv)
{
    if (sv == NULL || sv->status == NULL)
        return;
    char text[512];
    sv->status(text, sizeof(text), sv->status_arg);
    if (sv->last_status != NULL && strcmp(sv->last_status, text) == 0)
        return;
    char *copy = strdup(text);
    if (copy == NULL)
        return; /* sent again next tick */
    free(sv->last_status);
    sv->last_status = copy;
    char line[sizeof(text) + 8];
    snprintf(line, sizeof(line), "STATUS=%s", text);
    service_notify(line);
}

#ifdef HAVE_LIBSYSTEMD
static void on_status_timer(evutil_socket_t fd, short what, void *arg)
{
    service_status_now(arg);
}

static void on_watchdog(evutil_socket_t fd, short what, void *arg)
{
    /* Sent from the loop itself, so a wedged loop stops the pings and systemd restarts us. */
    service_notify("WATCHDOG=1");
}
#endif

int service_start(struct event_base *base, service_status_fn status, void *arg,
                  struct service **out)
{
    *out = NULL;
#ifdef HAVE_LIBSYSTEMD
    const char *ns = getenv("NOTIFY_SOCKET");
    if (ns == NULL || *ns == '\0')
        return 0;
    struct service *sv = calloc(1, sizeof(*sv));
    if (sv == NULL)
        return -1;
    sv->status = status;
    sv->status_arg = arg;
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
        /* Half the timeout, as sd_watchdog_enabled(3) recommends. */
        uint64_t half = usec / 2;
        struct timeval tv = {(time_t)(half / 1000000), (suseconds_t)(half % 1000000)};
        if (half == 0)
            tv.tv_usec = 1;
        sv->watchdog = event_new(base, -1, EV_PERSIST, on_watchdog, sv);
        if (sv->watchdog == NULL || event_add(sv->watchdog, &tv) != 0) {
            service_free(sv);
            return -1;
        }
        service_notify("WATCHDOG=1");
        log_info("watchdog: pinging every %llu ms", (unsigned long long)(half / 1000));
    }
    if (status != NULL) {
        struct timeval tv = {STATUS_INTERVAL_MS / 1000, (STATUS_INTERVAL_MS % 1000) * 1000};
        sv->status_timer = event_new(base, -1, EV_PERSIST, on_status_timer, sv);
        if (sv->status_timer == NULL || event_add(sv->status_timer, &tv) != 0) {
            service_free(sv);
            return -1;
        }
        service_status_now(sv);
    }
    *out = sv;
#else
    (void)base;
    (void)status;
    (void)arg;
#endif
    return 0;
}

void service_free(struct service *sv)
{
    if (sv == NULL)
        return;
    if (sv->watchdog != NULL)
        event_free(sv->watchdog);
    if (sv->status_timer != NULL)
        event_free(sv->status_timer);
    free(sv->last_status);
    free(sv);
}
