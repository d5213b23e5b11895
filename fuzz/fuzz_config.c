/*
 * Fuzz harness for the configuration loader (libconfig syntax, checked
 * against the daemon's rules): each input is written to a memory file and
 * loaded through the same config_load() the daemon uses.  A refusal must
 * come with a one-line "FILE..." message, an acceptance with every relay
 * named and reachable by that name; either way nothing may leak.
 */
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config.h"
#include "fuzz.h"

/* Bigger inputs only make libconfig slower, not the checks deeper. */
#define MAX_INPUT (64 * 1024)

static int memfd = -1;
static char path[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    struct config *cfg;

    /*
     * @include would let an input name any file on the machine (even a
     * device that never ends); that is libconfig's business, not ours.
     */
    if (size > MAX_INPUT || memmem(data, size, "@include", 8) != NULL)
        return 0;
    if (memfd < 0) {
        memfd = memfd_create("fuzz-config", MFD_CLOEXEC);
        FUZZ_ASSERT(memfd >= 0);
        snprintf(path, sizeof(path), "/proc/self/fd/%d", memfd);
    }
    FUZZ_ASSERT(ftruncate(memfd, 0) == 0);
    FUZZ_ASSERT(pwrite(memfd, data, size, 0) == (ssize_t)size);

    cfg = config_load(path, err, sizeof(err));
    if (cfg == NULL) {
        FUZZ_ASSERT(strncmp(err, path, strlen(path)) == 0);
        FUZZ_ASSERT(strchr(err, '\n') == NULL && strchr(err, '\r') == NULL);
        for (const char *e = err; *e != '\0'; e++)
            FUZZ_ASSERT((unsigned char)*e >= 0x20 && *e != 0x7f);
        return 0;
    }
    FUZZ_ASSERT(cfg->nrelays >= 1 && cfg->default_relay < cfg->nrelays);
    for (size_t i = 0; i < cfg->nrelays; i++) {
        const struct relay_config *r = &cfg->relays[i];
        FUZZ_ASSERT(r->name != NULL && config_relay(cfg, r->name) == r);
        FUZZ_ASSERT(r->nhosts >= 1);
        for (size_t h = 0; h < r->nhosts; h++)
            FUZZ_ASSERT(r->hosts[h].port != 0);
    }
    config_free(cfg);
    return 0;
}
