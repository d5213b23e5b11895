/*
 * A minimal table-driven test harness: CHECK() records a failure and goes
 * on, so one run reports every broken case; unit_main() runs the group
 * named on the command line and exits non-zero if anything failed.
 */
#ifndef MAILPOOL_UNIT_CHECK_H
#define MAILPOOL_UNIT_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_failures __attribute__((unused));
static const char *check_case
    __attribute__((unused)); /* what the current table row is, for messages */

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: [%s] CHECK failed: %s\n", __FILE__, __LINE__,                  \
                    check_case != NULL ? check_case : "-", #cond);                                 \
            check_failures++;                                                                      \
        }                                                                                          \
    } while (0)

#define CHECK_STR(got, want)                                                                       \
    do {                                                                                           \
        const char *got_ = (got);                                                                  \
        const char *want_ = (want);                                                                \
        if ((got_ == NULL) != (want_ == NULL) || (got_ != NULL && strcmp(got_, want_) != 0)) {     \
            fprintf(stderr, "%s:%d: [%s] got \"%s\", want \"%s\"\n", __FILE__, __LINE__,           \
                    check_case != NULL ? check_case : "-", got_ != NULL ? got_ : "(null)",         \
                    want_ != NULL ? want_ : "(null)");                                             \
            check_failures++;                                                                      \
        }                                                                                          \
    } while (0)

struct unit_group {
    const char *name;
    void (*run)(void);
};

static inline int unit_main(int argc, char **argv, const struct unit_group *groups, size_t ngroups)
{
    int ran = 0;

    for (size_t i = 0; i < ngroups; i++) {
        if (argc < 2 || strcmp(argv[1], groups[i].name) == 0 || strcmp(argv[1], "all") == 0) {
            groups[i].run();
            ran++;
        }
    }
    if (ran == 0) {
        fprintf(stderr, "unknown test group %s\n", argc > 1 ? argv[1] : "");
        return 2;
    }
    if (check_failures > 0) {
        fprintf(stderr, "%d check(s) failed\n", check_failures);
        return 1;
    }
    return 0;
}

/* Deterministic pseudo-random numbers (xorshift) so failures reproduce. */
static unsigned long long unit_rand_state __attribute__((unused)) = 0x9e3779b97f4a7c15ULL;

static inline unsigned unit_rand(void)
{
    unit_rand_state ^= unit_rand_state << 13;
    unit_rand_state ^= unit_rand_state >> 7;
    unit_rand_state ^= unit_rand_state << 17;
    return (unsigned)(unit_rand_state >> 11);
}

#endif
