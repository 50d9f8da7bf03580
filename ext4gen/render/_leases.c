/*
 * Source leases: a freshness check for the compiled read path (_fastread.c) that costs no
 * fstat per read.
 *
 * Why.  Every read of host-file data is followed by an fstat of the source, compared with the
 * pin taken when the image was planned (dev, ino, size, mtime, ctime, nlink): the read may
 * have raced with a writer.  Over a tree of 10,000 files that fstat costs about 1.1 us (the
 * inode is cold in the CPU cache), a tenth of what nbdkit's file plugin spends on a whole
 * 4 KiB read.  A read lease (fcntl F_SETLEASE F_RDLCK) makes the kernel tell this process
 * before any other may open the file for writing or truncate it: the opener waits until the
 * lease is given up.  An inotify watch reports what changes a pinned field without writing
 * (chmod, touch, unlink, rename).  While neither has said anything, the bytes just read are
 * the bytes the pin check vouched for, and the fstat is skipped.
 *
 * How.
 *  - lease_take: F_SETSIG, F_SETLEASE F_RDLCK (EAGAIN while anyone has the file open for
 *    writing: then no lease), F_SETOWN_EX to the watcher thread, an inotify watch of
 *    /proc/self/fd/N (that very inode; IN_MASK_CREATE: one owner per watch), then the
 *    caller's pin check; only then, under g_lock, and only if F_GETLEASE still says F_RDLCK
 *    (a lease being broken says F_UNLCK), the flag is set.
 *  - A break: the kernel sends g_sig with si_fd; the handler only writes the fd to a pipe;
 *    the watcher clears the flag (under g_lock) and then gives the lease up, which lets the
 *    opener go on.  So a writer writes only after the flag is clear, and a reader that saw
 *    the flag set after its read read the old bytes.
 *  - An inotify event: the watcher clears the flag of that watch.  Readers take a non-empty
 *    inotify queue (FIONREAD) or a watcher busy with events as "no lease", so the first read
 *    after the syscall that changed the file sees the change, as the fstat did.  (An open
 *    with O_TRUNC but not for writing truncates without breaking a read lease; it truncates
 *    to nothing, so a read then comes up short and fails, and inotify reports IN_MODIFY.)
 *  - Every 5 s the watcher audits every lease: F_GETLEASE (a break whose signal was
 *    lost), the pin check (a ctime change that raises no watched event: an atime-only
 *    utimensat, FS_IOC_SETFLAGS), its own signal handlers and the lease-break-time.  Such
 *    changes fail reads within seconds rather than at once; the bytes are the same.
 *  - The process stopped for longer than the kernel's lease-break-time (45 s by default):
 *    the kernel then drops the lease and lets the writer go on before the watcher ran.  The
 *    watcher stamps g_beat each loop (at least once a second) with the time it took before
 *    its poll(), after which it handled every signal sent before that time; readers trust a
 *    flag only while that stamp is younger than a third of the break time (at most 5 s),
 *    and look at the stamp before the flag: a fresh stamp means the flag is already clear
 *    if a break was signalled before the read.
 *  - Only on local file systems whose leases are known to behave: ext4, xfs, btrfs, tmpfs.
 *    Elsewhere (and where fcntl refuses: another user's file without CAP_LEASE, leases
 *    disabled) the per-read fstat stays.
 *
 * Costs to others: a process opening a leased source for writing waits until the watcher
 * gives the lease up (microseconds; with O_NONBLOCK it gets EWOULDBLOCK once).
 */
#define _GNU_SOURCE /* F_SETSIG, F_SETLEASE, F_SETOWN_EX */
#include "_leases.h"
#include "_sysutil.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#ifndef IN_MASK_CREATE
#define IN_MASK_CREATE 0x10000000
#endif

#define MAP_MAX 65536 /* descriptors at or above this are not leased */
#define WATCH (IN_ATTRIB | IN_MODIFY | IN_MOVE_SELF | IN_DELETE_SELF)
/* ns between audits: each costs an fstat and an fcntl per lease (about 15 ms for 10,000),
 * so an idle server spends 0.3 % of a core on them; well under the 15 s lease-break-time
 * minimum, so a break whose signal was lost is dropped before the kernel lets the writer go. */
#define AUDIT_EVERY 5000000000LL

typedef struct {
    uint8_t *flag; /* NULL: no lease on this descriptor */
    int wd;        /* its inotify watch, 0 none */
    int (*pinned)(int fd, void *arg); /* the caller's pin check, for the watcher's audit */
    void *arg;
} entry_t;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static entry_t *g_map;   /* by descriptor */
static int g_n;
static int g_hi;         /* no entry at or above this descriptor (g_lock) */
static int g_on;         /* the watcher runs in this process (atomic) */
static int g_off;        /* the audit found leases unsafe here: none taken any more (atomic) */
static const char *g_why = "leases were not started";
static int g_sig;
static pid_t g_tid;      /* the watcher's thread id */
static int g_pipe[2] = {-1, -1};
static int g_ino = -1;
static int g_busy;       /* the watcher is reading or handling inotify events (atomic) */
static int g_overflow;   /* a break could not be queued: drop every lease (atomic) */
static int64_t g_beat;   /* see the header comment (atomic) */
static int64_t g_fresh;  /* readers trust flags while now - g_beat < g_fresh */
static long g_held;

static int fs_ok(long type) {
    return type == 0xEF53          /* ext2/3/4 */
           || type == 0x58465342   /* xfs */
           || type == 0x9123683E   /* btrfs */
           || type == 0x01021994;  /* tmpfs */
}

/* g_lock held.  Clear fd's flag first, then give the lease up (a writer may go on), and drop
 * its watch.  Without an entry, still give up any lease: one being taken may be breaking. */
static void drop_locked(int fd) {
    entry_t *e = &g_map[fd];
    if (e->flag) {
        if (__atomic_exchange_n(e->flag, 0, __ATOMIC_SEQ_CST))
            g_held--;
        e->flag = NULL;
    }
    fcntl(fd, F_SETLEASE, F_UNLCK);
    if (e->wd > 0) {
        inotify_rm_watch(g_ino, e->wd);
        e->wd = 0;
    }
}

static void drop_all_locked(void) {
    for (int fd = 0; fd < g_hi; fd++)
        if (g_map[fd].flag)
            drop_locked(fd);
}

static void on_signal(int sig, siginfo_t *si, void *ctx) {
    int saved = errno;
    int fd = sig == g_sig && si ? si->si_fd : -1; /* SIGIO: the kernel's signal queue was full */
    if (write(g_pipe[1], &fd, sizeof fd) != (ssize_t)sizeof fd)
        __atomic_store_n(&g_overflow, 1, __ATOMIC_SEQ_CST);
    errno = saved;
}

static int cmp_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

static void handle_events(void) {
    union {
        struct inotify_event ev;
        char bytes[4096];
    } buf;
    __atomic_store_n(&g_busy, 1, __ATOMIC_SEQ_CST); /* before the events leave the queue */
    ssize_t got;
    /* One pass over the map per batch of events, not per event: `chmod -R` over a served
     * tree is thousands of events, and readers that close a descriptor wait for g_lock. */
    int wds[sizeof buf.bytes / sizeof(struct inotify_event)];
    while ((got = read(g_ino, buf.bytes, sizeof buf.bytes)) > 0) {
        int n = 0, all = 0;
        for (char *p = buf.bytes; p < buf.bytes + got;) {
            struct inotify_event *ev = (struct inotify_event *)p;
            if (ev->mask & IN_Q_OVERFLOW)
                all = 1;
            else if (!(ev->mask & IN_IGNORED) && ev->wd > 0)
                wds[n++] = ev->wd;
            p += sizeof *ev + ev->len;
        }
        qsort(wds, (size_t)n, sizeof *wds, cmp_int);
        pthread_mutex_lock(&g_lock);
        if (all)
            drop_all_locked();
        else if (n)
            for (int fd = 0; fd < g_hi; fd++)
                if (g_map[fd].wd > 0 && bsearch(&g_map[fd].wd, wds, (size_t)n, sizeof *wds, cmp_int))
                    drop_locked(fd);
        pthread_mutex_unlock(&g_lock);
    }
    __atomic_store_n(&g_busy, 0, __ATOMIC_SEQ_CST);
}

static int ours(int sig) {
    struct sigaction sa;
    return sigaction(sig, NULL, &sa) == 0 && (sa.sa_flags & SA_SIGINFO) && sa.sa_sigaction == on_signal;
}

/* Every AUDIT_EVERY, what no signal or event reports:
 *  - a change to a pinned field that neither breaks the lease nor raises a watched event
 *    (an atime-only utimensat changes the ctime and raises IN_ACCESS, which every read
 *    raises too; FS_IOC_SETFLAGS on a read-only descriptor raises nothing): the pin check
 *    again, so such a change fails reads seconds later instead of at once;
 *  - a break whose signal was lost (F_GETLEASE then says F_UNLCK);
 *  - someone else's handler now on our signals, or a lease-break-time lowered under 15 s:
 *    the guarantees above no longer hold, so every lease is dropped and none taken again. */
static void audit(void) {
    int unsafe = !ours(g_sig) || !ours(SIGIO) ||
                 read_proc_long("/proc/sys/fs/lease-break-time", 45) < 15;
    pthread_mutex_lock(&g_lock);
    if (unsafe) {
        __atomic_store_n(&g_off, 1, __ATOMIC_SEQ_CST);
        drop_all_locked();
    } else {
        for (int fd = 0; fd < g_hi; fd++) {
            entry_t *e = &g_map[fd];
            if (e->flag && (fcntl(fd, F_GETLEASE) != F_RDLCK || !e->pinned(fd, e->arg)))
                drop_locked(fd);
        }
    }
    pthread_mutex_unlock(&g_lock);
}

static void *watcher(void *arg) {
    sigset_t ours;
    sigemptyset(&ours);
    sigaddset(&ours, g_sig);
    sigaddset(&ours, SIGIO);
    pthread_sigmask(SIG_UNBLOCK, &ours, NULL);
    __atomic_store_n(&g_tid, (pid_t)syscall(SYS_gettid), __ATOMIC_SEQ_CST);
    int64_t last_audit = now_ns();
    for (;;) {
        int64_t before = now_ns();
        struct pollfd p[2] = {{g_pipe[0], POLLIN, 0}, {g_ino, POLLIN, 0}};
        poll(p, 2, 1000); /* a signal pending before it makes it return (EINTR) */
        int fds[256];
        ssize_t got;
        while ((got = read(g_pipe[0], fds, sizeof fds)) > 0) {
            pthread_mutex_lock(&g_lock);
            for (ssize_t k = 0; k < got / (ssize_t)sizeof *fds; k++) {
                if (fds[k] >= 0 && fds[k] < g_n)
                    drop_locked(fds[k]);
                else if (fds[k] < 0)
                    drop_all_locked();
            }
            pthread_mutex_unlock(&g_lock);
        }
        if (__atomic_exchange_n(&g_overflow, 0, __ATOMIC_SEQ_CST)) {
            pthread_mutex_lock(&g_lock);
            drop_all_locked();
            pthread_mutex_unlock(&g_lock);
        }
        handle_events();
        if (before - last_audit >= AUDIT_EVERY) {
            audit();
            last_audit = before;
        }
        __atomic_store_n(&g_beat, before, __ATOMIC_SEQ_CST);
    }
    return NULL;
}

static int free_handler(int sig) {
    struct sigaction old;
    return sigaction(sig, NULL, &old) == 0 && !(old.sa_flags & SA_SIGINFO) &&
           old.sa_handler == SIG_DFL;
}

const char *leases_start(void) {
    pthread_mutex_lock(&g_lock);
    if (__atomic_load_n(&g_on, __ATOMIC_ACQUIRE))
        goto out;
    if (read_proc_long("/proc/sys/fs/leases-enable", 1) != 1) {
        g_why = "leases are disabled (/proc/sys/fs/leases-enable)";
        goto out;
    }
    long brk = read_proc_long("/proc/sys/fs/lease-break-time", 45);
    if (brk < 15) {
        g_why = "the kernel's lease-break-time is under 15 s";
        goto out;
    }
    g_fresh = (brk / 3 < 5 ? brk / 3 : 5) * (int64_t)1000000000;
    g_sig = 0;
    for (int s = SIGRTMIN + 4; s <= SIGRTMAX - 4 && !g_sig; s++)
        if (free_handler(s))
            g_sig = s;
    if (!g_sig || !free_handler(SIGIO)) {
        g_why = "no free signal for lease breaks";
        goto out;
    }
    struct rlimit rl;
    g_n = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < MAP_MAX ? (int)rl.rlim_cur : MAP_MAX;
    if (!g_map && !(g_map = calloc((size_t)MAP_MAX, sizeof *g_map))) {
        g_why = "out of memory";
        goto out;
    }
    if (g_pipe[0] < 0 && pipe2(g_pipe, O_CLOEXEC | O_NONBLOCK)) {
        g_why = "pipe2 failed";
        goto out;
    }
    if (g_ino < 0 && (g_ino = inotify_init1(IN_CLOEXEC | IN_NONBLOCK)) < 0) {
        g_why = "inotify_init1 failed";
        goto out;
    }
    /* One watch per inode relies on IN_MASK_CREATE (Linux 4.18), which older kernels ignore. */
    int w1 = inotify_add_watch(g_ino, "/", IN_ATTRIB | IN_MASK_CREATE);
    int w2 = inotify_add_watch(g_ino, "/", IN_ATTRIB | IN_MASK_CREATE);
    int refused = w2 < 0 && errno == EEXIST;
    if (w1 > 0)
        inotify_rm_watch(g_ino, w1);
    if (w1 <= 0 || !refused) {
        g_why = "inotify cannot refuse a second watch of an inode (IN_MASK_CREATE, Linux 4.18)";
        goto out;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(g_sig, &sa, NULL) || sigaction(SIGIO, &sa, NULL)) {
        g_why = "sigaction failed";
        goto out;
    }
    g_tid = 0;
    __atomic_store_n(&g_beat, now_ns(), __ATOMIC_SEQ_CST);
    pthread_t th;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&th, &attr, watcher, NULL);
    pthread_attr_destroy(&attr);
    if (rc) {
        g_why = "cannot start the lease watcher thread";
        goto out;
    }
    while (!__atomic_load_n(&g_tid, __ATOMIC_SEQ_CST))
        sched_yield();
    __atomic_store_n(&g_on, 1, __ATOMIC_RELEASE);
out:;
    const char *why = __atomic_load_n(&g_on, __ATOMIC_ACQUIRE) ? NULL : g_why;
    pthread_mutex_unlock(&g_lock);
    return why;
}

int lease_take(int fd, uint8_t *flag, int (*pinned)(int fd, void *arg), void *arg) {
    if (!__atomic_load_n(&g_on, __ATOMIC_ACQUIRE) || __atomic_load_n(&g_off, __ATOMIC_SEQ_CST) ||
        fd < 0 || fd >= g_n)
        return 0;
    struct statfs sf;
    if (fstatfs(fd, &sf) || !fs_ok((long)sf.f_type))
        return 0;
    if (fcntl(fd, F_SETSIG, g_sig) || fcntl(fd, F_SETLEASE, F_RDLCK))
        return 0; /* EAGAIN: open for writing somewhere; EACCES: another user's, no CAP_LEASE */
    /* Taking the lease made the whole process its signal's target: the watcher instead. */
    struct f_owner_ex own = {F_OWNER_TID, g_tid};
    char proc[40];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    int wd = fcntl(fd, F_SETOWN_EX, &own) ? -1 : inotify_add_watch(g_ino, proc, WATCH | IN_MASK_CREATE);
    pthread_mutex_lock(&g_lock);
    if (wd <= 0) { /* EEXIST: another descriptor of this inode holds the watch */
        drop_locked(fd);
        pthread_mutex_unlock(&g_lock);
        return 0;
    }
    g_map[fd] = (entry_t){flag, wd, pinned, arg}; /* a break or an event now finds it */
    if (fd >= g_hi)
        g_hi = fd + 1;
    pthread_mutex_unlock(&g_lock);

    int ok = pinned(fd, arg); /* any change before the lease and the watch shows here */

    pthread_mutex_lock(&g_lock);
    int ours = g_map[fd].flag == flag && g_map[fd].wd == wd;
    if (ok && ours && !__atomic_load_n(&g_off, __ATOMIC_SEQ_CST) && fcntl(fd, F_GETLEASE) == F_RDLCK) {
        __atomic_store_n(flag, 1, __ATOMIC_SEQ_CST);
        g_held++;
    } else {
        ok = 0;
        if (ours)
            drop_locked(fd);
    }
    pthread_mutex_unlock(&g_lock);
    return ok;
}

void lease_drop(int fd) {
    if (!__atomic_load_n(&g_on, __ATOMIC_ACQUIRE) || fd < 0 || fd >= g_n)
        return;
    pthread_mutex_lock(&g_lock);
    if (g_map[fd].flag)
        drop_locked(fd);
    pthread_mutex_unlock(&g_lock);
}

int lease_holds(const uint8_t *flag) {
    if (!__atomic_load_n(flag, __ATOMIC_RELAXED))
        return 0;
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* the read's loads before the checks' */
    /* In this order (see the header comment): how recently the watcher handled what was sent
     * to it (a fresh stamp means every break signalled before the read is handled, its flag
     * cleared), queued events, events being handled, and only then the flag. */
    if (now_ns() - __atomic_load_n(&g_beat, __ATOMIC_SEQ_CST) >= g_fresh)
        return 0;
    int queued = 0;
    if (ioctl(g_ino, FIONREAD, &queued) || queued)
        return 0;
    return !__atomic_load_n(&g_busy, __ATOMIC_SEQ_CST) && __atomic_load_n(flag, __ATOMIC_SEQ_CST);
}

long leases_held(void) {
    pthread_mutex_lock(&g_lock);
    long n = g_held;
    pthread_mutex_unlock(&g_lock);
    return n;
}

void leases_fork_child(void) {
    pthread_mutex_init(&g_lock, NULL);
    if (!g_on)
        return;
    g_on = 0;
    g_why = "leases were not started in this process";
    struct sigaction dfl; /* the handlers write to the parent's pipe, closed below */
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(g_sig, &dfl, NULL);
    sigaction(SIGIO, &dfl, NULL);
    for (int fd = 0; fd < g_n; fd++)
        if (g_map[fd].flag) {
            __atomic_store_n(g_map[fd].flag, 0, __ATOMIC_SEQ_CST);
            g_map[fd].flag = NULL;
            g_map[fd].wd = 0;
        }
    g_held = 0;
    for (int k = 0; k < 2; k++) /* the parent's: a watcher started here gets its own */
        if (g_pipe[k] >= 0)
            close(g_pipe[k]);
    g_pipe[0] = g_pipe[1] = -1;
    if (g_ino >= 0)
        close(g_ino);
    g_ino = -1;
}
