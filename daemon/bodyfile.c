/*
 * Message bodies kept on disk: anonymous files in the spool's tmp/
 * directory, appended to while a message arrives, then mapped read-only
 * and handed to the rest of the daemon as evbuffer references.
 */
#include "bodyfile.h"

#include <errno.h>
#include <event2/buffer.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <unistd.h>

int bodyfile_create(int dirfd)
{
#ifdef O_TMPFILE
    int tfd = openat(dirfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (tfd >= 0)
        return tfd;
    /* File systems without O_TMPFILE say EOPNOTSUPP (or EISDIR on old kernels). */
    if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)
        return -1;
#endif
    for (int tries = 0; tries < 16; tries++) {
        unsigned char r[8];
        char name[32];
        if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r)
            return -1;
        /* Spool ids are hex; a leading "b." keeps these apart from them. */
        snprintf(name, sizeof name, "b.%02x%02x%02x%02x%02x%02x%02x%02x", r[0], r[1], r[2], r[3],
                 r[4], r[5], r[6], r[7]);
        int fd = openat(dirfd, name, O_CREAT | O_EXCL | O_RDWR | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0) {
            if (errno == EEXIST)
                continue;
            return -1;
        }
        if (unlinkat(dirfd, name, 0) < 0) {
            int err = errno;
            close(fd);
            errno = err;
            return -1;
        }
        return fd;
    }
    errno = EEXIST;
    return -1;
}

int bodyfile_append(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (w == 0) {
            errno = EIO;
            return -1;
        }
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

int bodyfile_append_buffer(int fd, struct evbuffer *buf)
{
    while (evbuffer_get_length(buf) > 0) {
        struct evbuffer_iovec v[8];
        int n = evbuffer_peek(buf, -1, NULL, v, 8);
        if (n < 1) {
            errno = ENOMEM;
            return -1;
        }
        size_t done = 0;
        for (int i = 0; i < n && i < 8; i++) {
            if (bodyfile_append(fd, v[i].iov_base, v[i].iov_len) < 0) {
                int err = errno;
                evbuffer_drain(buf, done);
                errno = err;
                return -1;
            }
            done += v[i].iov_len;
        }
        evbuffer_drain(buf, done);
    }
    return 0;
}

/* Asked each time (a cheap auxv read): no shared cache for two threads to race on. */
static size_t page_size(void)
{
    long v = sysconf(_SC_PAGESIZE);
    return v > 0 ? (size_t)v : 4096;
}

int bodyfile_map(int fd, off_t off, size_t len, const char **data, void **base, size_t *maplen)
{
    if (off < 0) {
        errno = EINVAL;
        return -1;
    }
    if (len == 0) {
        *data = "";
        *base = NULL;
        *maplen = 0;
        return 0;
    }
    size_t lead = (size_t)off % page_size();
    if (len > SIZE_MAX - lead) {
        errno = EOVERFLOW;
        return -1;
    }
    void *p = mmap(NULL, len + lead, PROT_READ, MAP_PRIVATE, fd, off - (off_t)lead);
    if (p == MAP_FAILED)
        return -1;
    /* Read once, front to back, when a session sends it. */
    (void)madvise(p, len + lead, MADV_SEQUENTIAL);
    *data = (const char *)p + lead;
    *base = p;
    *maplen = len + lead;
    return 0;
}

void bodyfile_unmap(void *base, size_t maplen)
{
    if (base != NULL)
        munmap(base, maplen);
}

/* The mapping's start is data rounded down to a page; its length follows. */
static void unmap_ref(const void *data, size_t len, void *extra)
{
    (void)extra;
    size_t lead = (size_t)((uintptr_t)data % page_size());
    munmap((void *)((const char *)data - lead), len + lead);
}

int bodyfile_add_mapping(struct evbuffer *out, const char *data, size_t len, void *base,
                         size_t maplen)
{
    if (len == 0) {
        bodyfile_unmap(base, maplen);
        return 0;
    }
    if (evbuffer_add_reference(out, data, len, unmap_ref, NULL) < 0) {
        bodyfile_unmap(base, maplen);
        errno = ENOMEM;
        return -1;
    }
    return 0;
}

int bodyfile_add(struct evbuffer *out, int fd, off_t off, size_t len)
{
    const char *data;
    void *base;
    size_t maplen;
    if (bodyfile_map(fd, off, len, &data, &base, &maplen) < 0)
        return -1;
    return bodyfile_add_mapping(out, data, len, base, maplen);
}
