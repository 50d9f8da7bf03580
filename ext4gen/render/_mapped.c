/*
 * Source mappings: a read of a source the server keeps reading is a memcpy from a shared
 * mapping of the file instead of a pread.
 *
 * Why.  Over a tree of 10,000 files a 4 KiB pread costs about 1.9 us (the system call, the
 * descriptor lookup and a page-cache walk in a mapping that is cold in the CPU cache), three
 * times what it costs on one file, which is what nbdkit's file plugin reads.  Once its page
 * is mapped, the same 4 KiB copied from a mapping costs about 0.6 us: no system call at all.
 * Large reads gain less, but they gain: a source's page cache is often made of small folios
 * (how the tree was written decides), and pread pays for each folio where a mapped copy pays
 * nothing once the page is mapped.
 *
 * Which reads.  A small random read copies whatever it asks for: a page out of the page cache
 * faults and is read alone (MADV_RANDOM), which is what a random read needs.  Any other read
 * first asks mincore() whether the page cache holds its run whole; if not, the run counts as
 * a miss (a sequential reader's misses must reach the read-ahead code) and is read by pread,
 * so that the kernel reads it in large requests.  mincore takes the process's mmap_lock for
 * reading, as the page faults of the copies do.  Where mincore does not tell this process a
 * source's page cache (residency_known), only small random reads use its mapping.
 *
 * Freshness is unchanged: the caller copies first and checks the source's pin (or its lease,
 * _leases.c) after, exactly as after a pread.  A writer's bytes show in a shared mapping as
 * they show to pread, and the pin check that follows sees its mtime.
 *
 * Faults.  Touching a page past the end of a file that was truncated under the mapping, or
 * one the file system cannot read, raises SIGBUS in the reading thread instead of returning
 * an error.  map_copy marks the thread for the length of the copy (a thread-local jump buffer
 * and the source range; no system call); the handler jumps back out of a marked thread's
 * copy when the fault's address is in that range, and the copy then fails like a short read.
 * Any other SIGBUS (a fault elsewhere, one sent by kill(), a machine-check report) goes to the
 * handler that was there before, or gets the default action: the process dies, as it would
 * have.  Someone may install a handler over ours later (Python's faulthandler.enable(), or
 * signal.signal in a generator source): readers look, at most once a second, and put ours
 * back on top of it, chaining to it in turn.  Until then a fault in a copy goes to that
 * handler: a mapped source truncated in that second may kill the server (or, under a handler
 * that returns, hang the reading thread).  EXT4GEN_NO_MAPPING=1 rules that out.
 *
 * Limits.  A mapping is one of the process's vm.max_map_count areas: at most a quarter of
 * them hold sources.  Mapped pages a reader touched count in the server's RSS (RssFile):
 * they are the page cache's, shared, and reclaimed under memory pressure as any mapped file
 * page is; but drop_caches leaves them alone: a cold-cache measurement pages them out first
 * (process_madvise MADV_PAGEOUT, bench/bench_serve.py) or starts a fresh server.  Their page
 * tables cost the kernel 8 bytes per 4 KiB page touched (2 MiB per GiB of source data read),
 * until the source's descriptor is closed.
 */
#define _GNU_SOURCE
#include "_mapped.h"
#include "_sysutil.h"

#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    sigjmp_buf *jump; /* set only while this thread copies from a mapping */
    const unsigned char *lo, *hi; /* the bytes it copies */
} copying_t;

static __thread copying_t tl_copy __attribute__((tls_model("initial-exec")));
static struct sigaction *g_prev;  /* the handler ours chains to (atomic; never freed) */
static struct sigaction g_ours;
static int g_ready;               /* ours was installed (set once, under pthread_once) */
static long g_limit;              /* mappings this process may hold */
static long g_page;               /* the page size (set once, under pthread_once) */
static long g_held;               /* atomic */
static int64_t g_checked;         /* when a reader last looked for ours (atomic) */
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

static void on_sigbus(int sig, siginfo_t *si, void *ctx) {
    copying_t *c = &tl_copy;
    const unsigned char *at = si ? si->si_addr : NULL;
    if (c->jump && si && si->si_code > 0 && si->si_code != BUS_MCEERR_AO && at >= c->lo &&
        at < c->hi) {
        sigjmp_buf *jump = c->jump;
        c->jump = NULL;
        /* A handler that chained to ours may have blocked SIGBUS: unblocked, or this thread's
         * next fault would kill the process (the jump keeps the mask as it is). */
        sigset_t bus;
        sigemptyset(&bus);
        sigaddset(&bus, SIGBUS);
        pthread_sigmask(SIG_UNBLOCK, &bus, NULL);
        siglongjmp(*jump, 1);
    }
    struct sigaction *prev = __atomic_load_n(&g_prev, __ATOMIC_ACQUIRE);
    if (prev->sa_flags & SA_SIGINFO) {
        if (prev->sa_sigaction)
            prev->sa_sigaction(sig, si, ctx);
        return;
    }
    if (prev->sa_handler != SIG_DFL && prev->sa_handler != SIG_IGN) {
        prev->sa_handler(sig);
        return;
    }
    int sent = !si || si->si_code <= 0; /* by kill() or the like: not a fault */
    if (prev->sa_handler == SIG_IGN && sent)
        return;
    /* The default action, as without us: a fault runs its instruction again and faults again
     * (a fault is never ignored); a signal sent is raised again. */
    signal(sig, SIG_DFL);
    if (sent)
        raise(sig);
}

static int ours(const struct sigaction *sa) {
    return (sa->sa_flags & SA_SIGINFO) && sa->sa_sigaction == on_sigbus;
}

/* Put ours on top of whatever SIGBUS has now, chaining to it (g_lock held). */
static int on_top(void) {
    struct sigaction cur;
    if (sigaction(SIGBUS, NULL, &cur))
        return 0;
    if (ours(&cur))
        return 1;
    struct sigaction *prev = malloc(sizeof *prev); /* a handler may be using the old one */
    if (!prev)
        return 0;
    *prev = cur;
    __atomic_store_n(&g_prev, prev, __ATOMIC_RELEASE);
    return sigaction(SIGBUS, &g_ours, NULL) == 0;
}

static void install(void) {
    g_page = sysconf(_SC_PAGESIZE);
    g_limit = read_proc_long("/proc/sys/vm/max_map_count", 65530) / 4;
    memset(&g_ours, 0, sizeof g_ours);
    g_ours.sa_sigaction = on_sigbus;
    g_ours.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&g_ours.sa_mask);
    pthread_mutex_lock(&g_lock);
    g_ready = on_top();
    pthread_mutex_unlock(&g_lock);
}

int maps_usable(void) {
    int64_t now = coarse_ns(), last = __atomic_load_n(&g_checked, __ATOMIC_RELAXED);
    int due = now - last >= 1000000000 &&
              __atomic_compare_exchange_n(&g_checked, &last, now, 0, __ATOMIC_RELAXED,
                                          __ATOMIC_RELAXED);
    if (due) {
        pthread_mutex_lock(&g_lock);
        if (g_ready)
            on_top(); /* if that fails, faults in copies go where they would without mappings */
        pthread_mutex_unlock(&g_lock);
    }
    return __atomic_load_n(&g_ready, __ATOMIC_RELAXED);
}

/* Whether mincore() on a mapping of fd reports the page cache.  The kernel reveals a file's
 * page cache only to a process that owns the file or could open it for writing (or has
 * CAP_FOWNER; the exact rule has varied with idmapped mounts and overlayfs): to others,
 * mincore() says every page is cached.  So ask it about a page that cannot be cached: one
 * past the end of the file, at a 1 GiB boundary (no page-cache folio straddles one, nor the
 * end of the file).  0 there: it tells the truth.  1: it does not, or the file grew; either
 * way, not known. */
static int residency_known(int fd, off_t size) {
    off_t probe = ((size >> 30) + 1) << 30;
    void *p = mmap(NULL, (size_t)g_page, PROT_READ, MAP_SHARED, fd, probe);
    if (p == MAP_FAILED)
        return 0;
    unsigned char v = 1;
    int honest = mincore(p, (size_t)g_page, &v) == 0 && !(v & 1);
    munmap(p, (size_t)g_page);
    return honest;
}

unsigned char *map_source(int fd, off_t size, int *knows) {
    pthread_once(&g_once, install);
    if (!g_ready || size <= 0 || (uint64_t)size > (uint64_t)PTRDIFF_MAX)
        return NULL;
    if (__atomic_add_fetch(&g_held, 1, __ATOMIC_RELAXED) > g_limit) {
        __atomic_sub_fetch(&g_held, 1, __ATOMIC_RELAXED);
        return NULL;
    }
    void *p = mmap(NULL, (size_t)size, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        __atomic_sub_fetch(&g_held, 1, __ATOMIC_RELAXED);
        return NULL;
    }
    /* Random small reads are why a source is mapped: no read-around on a fault. */
    madvise(p, (size_t)size, MADV_RANDOM);
    *knows = residency_known(fd, size);
    return p;
}

void unmap_source(unsigned char *map, off_t size) {
    if (map) {
        munmap(map, (size_t)size);
        __atomic_sub_fetch(&g_held, 1, __ATOMIC_RELAXED);
    }
}

int map_copy(unsigned char *dst, const unsigned char *src, size_t n) {
    sigjmp_buf jump;
    if (sigsetjmp(jump, 0))
        return -1; /* the handler cleared tl_copy.jump */
    tl_copy.lo = src;
    tl_copy.hi = src + n;
    tl_copy.jump = &jump;
    __atomic_signal_fence(__ATOMIC_SEQ_CST); /* marked before the first load of the copy */
    memcpy(dst, src, n);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    tl_copy.jump = NULL;
    return 0;
}

int map_resident(const unsigned char *src, size_t n) {
    /* For pages the mapping already maps, mincore only reads page-table entries.  Up to 1024
     * pages (4 MiB) per call: each call has a fixed cost (mmap_lock, a vma lookup). */
    long page = g_page; /* set by install, which ran before the mapping was made */
    uintptr_t a = (uintptr_t)src & ~(uintptr_t)(page - 1), e = (uintptr_t)src + n;
    unsigned char vec[1024];
    while (a < e) {
        size_t pages = (e - a + (uintptr_t)page - 1) / (uintptr_t)page;
        if (pages > sizeof vec)
            pages = sizeof vec;
        if (mincore((void *)a, pages * (size_t)page, vec))
            return 0;
        for (size_t k = 0; k < pages; k++)
            if (!(vec[k] & 1))
                return 0;
        a += pages * (size_t)page;
    }
    return 1;
}

long maps_held(void) {
    return __atomic_load_n(&g_held, __ATOMIC_RELAXED);
}
