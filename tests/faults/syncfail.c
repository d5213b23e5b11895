/*
 * Fault injection for tests: an LD_PRELOAD library that makes fsync,
 * fdatasync and syncfs fail with EIO while the file named by
 * $MAILPOOL_FAULT_SYNC exists, so a test can switch a "failing disk" on
 * and off under a running daemon.  Without the variable, or while the
 * file is absent, the calls go through to the C library.
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

static int failing(void)
{
    const char *flag = getenv("MAILPOOL_FAULT_SYNC");
    int saved = errno;
    int on = flag != NULL && access(flag, F_OK) == 0;
    errno = saved;
    return on;
}

#define PASS_THROUGH(name)                                                                         \
    int name(int fd)                                                                               \
    {                                                                                              \
        static int (*real)(int);                                                                   \
        if (failing()) {                                                                           \
            errno = EIO;                                                                           \
            return -1;                                                                             \
        }                                                                                          \
        if (real == NULL)                                                                          \
            *(void **)&real = dlsym(RTLD_NEXT, #name);                                             \
        if (real == NULL) {                                                                        \
            errno = ENOSYS;                                                                        \
            return -1;                                                                             \
        }                                                                                          \
        return real(fd);                                                                           \
    }

PASS_THROUGH(fsync)
PASS_THROUGH(fdatasync)
PASS_THROUGH(syncfs)
