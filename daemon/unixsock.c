/*
 * Listening Unix-domain sockets for the submission and control sockets.
 * The mode is set through the umask before bind(), never by chmod after it,
 * so there is no moment when the socket is more open than asked.
 */
#include "unixsock.h"

#include <errno.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"

int unix_listen(const char *path, unsigned mode, char *err, size_t errlen)
{
    return unix_listen_group(path, mode, 0, 0, err, errlen);
}

int unix_listen_group(const char *path, unsigned mode, int has_group, gid_t gid, char *err,
                      size_t errlen)
{
    struct sockaddr_un sun;
    memset(&sun, 0, sizeof(sun));
    sun.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(sun.sun_path)) {
        snprintf(err, errlen, "%s: socket path too long", path);
        return -1;
    }
    memcpy(sun.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            snprintf(err, errlen, "%s exists and is not a socket", path);
            close(fd);
            return -1;
        }
        unlink(path); /* stale socket from an earlier run */
    }
    mode_t old = umask((mode_t)(~mode & 0777));
    int rc = bind(fd, (struct sockaddr *)&sun, sizeof(sun));
    umask(old);
    if (rc == 0 && has_group && chown(path, (uid_t)-1, gid) != 0) {
        snprintf(err, errlen, "%s: cannot give it group %u: %s", path, (unsigned)gid,
                 strerror(errno));
        unlink(path);
        close(fd);
        return -1;
    }
    if (rc != 0 || listen(fd, 512) != 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* How long accepting pauses after accept() ran out of descriptors or memory. */
#define LISTEN_PAUSE_MS 200

static void listen_pause_resume(evutil_socket_t fd, short what, void *arg)
{
    struct listen_pause *lp = arg;
    if (lp->stopped)
        return;
    evconnlistener_enable(lp->lev);
}

int listen_pause_init(struct listen_pause *lp, struct event_base *base, struct evconnlistener *lev,
                      const char *what)
{
    memset(lp, 0, sizeof(*lp));
    lp->lev = lev;
    lp->what = what;
    lp->timer = evtimer_new(base, listen_pause_resume, lp);
    return lp->timer ? 0 : -1;
}

void listen_pause_error(struct listen_pause *lp)
{
    int e = EVUTIL_SOCKET_ERROR();
    if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
        if (!lp->paused)
            log_error("listen socket=%s accept failed: %s; pausing new connections for %d ms "
                      "at a time until resources are free",
                      lp->what, strerror(e), LISTEN_PAUSE_MS);
        lp->paused = 1;
        evconnlistener_disable(lp->lev);
        struct timeval tv = {0, LISTEN_PAUSE_MS * 1000};
        evtimer_add(lp->timer, &tv);
        return;
    }
    /* Other errors (ECONNABORTED and the like) concern one connection only. */
    log_info("listen socket=%s accept failed: %s", lp->what, strerror(e));
}

void listen_pause_accepted(struct listen_pause *lp)
{
    if (lp->paused) {
        lp->paused = 0;
        log_info("listen socket=%s accepting connections again", lp->what);
    }
}

void listen_pause_stop(struct listen_pause *lp)
{
    lp->stopped = 1;
    if (lp->timer)
        evtimer_del(lp->timer);
    evconnlistener_disable(lp->lev);
}

void listen_pause_clear(struct listen_pause *lp)
{
    if (lp->timer)
        event_free(lp->timer);
    lp->timer = NULL;
}
