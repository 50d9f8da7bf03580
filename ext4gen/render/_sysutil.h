/* Small system helpers the compiled read path's C files share (_fastread.c, _leases.c,
 * _mapped.c): one definition each, inlined where used. */
#ifndef EXT4GEN_SYSUTIL_H
#define EXT4GEN_SYSUTIL_H

#include <stdint.h>
#include <stdio.h>
#include <time.h>

/* Monotonic time in ns; the coarse clock (a tick's resolution, no system call) for checks
 * measured in seconds on the read path. */
static inline int64_t clock_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline int64_t now_ns(void) {
    return clock_ns(CLOCK_MONOTONIC);
}

static inline int64_t coarse_ns(void) {
    return clock_ns(CLOCK_MONOTONIC_COARSE);
}

/* The number a /proc file holds (a sysctl), or fallback when it cannot be read. */
static inline long read_proc_long(const char *path, long fallback) {
    FILE *f = fopen(path, "re");
    long v = fallback;
    if (f) {
        if (fscanf(f, "%ld", &v) != 1)
            v = fallback;
        fclose(f);
    }
    return v;
}

#endif
