/*
 * The compiled read path of ext4gen.render.image.Image: serves a request for
 * zero, host-file data and already-rendered metadata regions without holding
 * the GIL, and hands every range it cannot serve back to Python ("misses").
 *
 * Why C: nbdkit's Python plugin runs every callback under the GIL, so all the
 * per-request Python work (region lookup, descriptor cache, pin checks,
 * counters) serialises the connections.  Here one call does the whole request
 * with the GIL released: a bisect over a flat region table, zero fills,
 * coalesced pread of runs of one host file (for a source in use for a while, copies
 * from its mapping: _mapped.c), the freshness pin check (fstat
 * after the read: dev, ino, size, mtime, ctime, nlink > 0, as in
 * ext4gen.model.sources.HostFile.check; or, for a source leased by _leases.c,
 * the lease and its inotify watch instead), and copies from a cache of metadata
 * blocks that Python rendered earlier.
 *
 * Thread safety.  Descriptors: one mutex per table, held only to look up,
 * count users of and evict descriptors, never during I/O; a descriptor in
 * use is never closed.  Metadata cache: a fixed pool of 4 KiB entries under
 * seqlocks; writers (put_block) hold the GIL, so there is one writer at a
 * time, and a reader that raced with a writer reports a miss instead of
 * copying torn bytes.  Counters: relaxed atomic adds, no lock.
 *
 * Read-ahead.  A source tree is thousands of files where a built image is one, so the host
 * kernel's own read-ahead (per file) never runs ahead of a client reading the image in order:
 * each cold file costs a synchronous disk read (and a path lookup) on the request's critical
 * path.  Requests that read file data are matched against a few streams; once a stream has
 * gone forward twice, a background thread opens the files of the next image bytes (a window
 * of 1 MiB that doubles up to ra_window) and asks the kernel to read them
 * (POSIX_FADV_WILLNEED), so their I/O overlaps the client's.  A reader that jumps between
 * files (tar walks a directory in hash order) forms no stream: when one of its requests misses
 * the page cache, the sources of the whole read-ahead window around it are asked for instead
 * (a built image's one file gets the same from the host's read-ahead).  A stream whose window
 * found every source cached (and not by a read-around) goes quiet until one of its requests
 * misses the page cache (its first read is RWF_NOWAIT, or mincore found a mapped run
 * uncached), so warm serving costs no probes.  Errors there are ignored: the read itself
 * reports them.  Fork handlers keep the thread and its locks safe across fork().
 *
 * The image layout is never interpreted here: Python builds the table.
 */
#define _GNU_SOURCE /* syscall, preadv2, RWF_NOWAIT */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <errno.h>

#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "_leases.h"
#include "_mapped.h"
#include "_sysutil.h"

#define BLOCK 4096
#define RA_STREAMS 8    /* sequential readers told apart (connections, kernel read-ahead streams) */
#define RA_QUEUE 16     /* windows waiting for the read-ahead thread; more are dropped */
#define RA_FIRST (1024 * 1024) /* a stream's first window; doubles up to ra_window */
#define RA_GAP (256 * 1024)    /* a request this close to where a stream ended continues it */
#define RA_WHOLE (512 * 1024)  /* a source this small is read ahead whole */
#define RA_SMALL (16 * 1024)   /* a request this small starts a stream only after another */
#define RA_AROUND_SEEN 16         /* windows read around lately, not asked for again */
#define RA_AROUND_NS 2000000000LL /* ... within this many ns */
#define CHUNK_SHIFT 15 /* blocks per distinct-blocks bitmap chunk: 128 MiB of image */

enum { K_ZERO = 0, K_META = 1, K_FILE = 2, K_PY = 3 };

typedef struct {
    uint64_t start;    /* image offset; the region ends where the next one starts */
    int64_t aux;       /* K_FILE: file index; K_META: cache slot of the first block */
    int64_t file_off;  /* K_FILE: offset in the host file of the region's first byte */
    int64_t data_len;  /* K_FILE: bytes read from the file; zeros after them */
    uint8_t kind;
} region_t;

typedef struct {
    char *path;
    dev_t dev;
    ino_t ino;
    off_t size;
    int64_t mtime_ns, ctime_ns;
    int fd;          /* -1: not open */
    int users;       /* readers holding fd */
    int ring;        /* index in the clock ring, -1 if none */
    uint8_t ref;     /* clock reference bit */
    uint8_t broken;  /* close once unused */
    uint8_t leased;  /* the fd's lease vouches for its bytes (atomic; _leases.c) */
    uint8_t lease_tried; /* a lease was asked for since fd was opened */
    int64_t opened;  /* when fd was opened (coarse monotonic ns) */
    unsigned char *map; /* fd's first size bytes mapped (atomic; _mapped.c), NULL none */
    uint8_t map_tried;  /* a mapping was asked for since fd was opened */
    uint8_t map_knows;  /* mincore tells whether map's pages are cached (set before map) */
} hfile_t;

typedef struct {
    uint32_t seq;    /* odd while being written */
    uint8_t ref;
    int32_t slot;    /* which metadata block this entry holds, -1 none (unset past pool_used) */
    unsigned char data[BLOCK];
} centry_t;

typedef struct {
    uint64_t next;   /* where the stream's last request ended (atomic: read unlocked; 0 none) */
    uint64_t ahead;  /* image bytes before this are already asked for */
    uint64_t win;    /* the stream's current window */
    uint64_t used;   /* tick of its last request, for replacement */
    int hits;        /* requests that continued it */
    int warm;        /* its last window was all cached: quiet until a request misses the cache */
    uint32_t gen;    /* changes when the slot starts another stream: stale window reports */
} stream_t;

typedef struct {
    PyObject_HEAD
    region_t *regions;  /* n + 1: a sentinel whose start is the image size */
    Py_ssize_t n;
    uint64_t *starts;   /* regions[k].start again, packed: the bisection touches few lines */
    Py_ssize_t *coarse; /* per 2^cshift bytes of image: the region holding its first byte */
    int cshift;
    hfile_t *files;
    Py_ssize_t nfiles;
    pthread_mutex_t fd_lock;
    int *ring;          /* file indices with open descriptors, -1 free */
    int ring_size, ring_used, hand;
    int32_t *slot_map;  /* metadata block slot -> cache entry, -1 none */
    Py_ssize_t nslots;
    centry_t *pool;
    int pool_size, pool_used, pool_hand;
    unsigned char **chunks; /* distinct-blocks bitmap, chunks allocated on first touch */
    Py_ssize_t nchunks;
    /* read-ahead: ra_lock guards all but ra_window (atomic: readers test it unlocked) */
    uint64_t ra_window;  /* 0: off */
    pthread_mutex_t ra_lock;
    pthread_cond_t ra_cond;
    pthread_t ra_thread;
    int ra_started, ra_stop;
    void *ra_next;       /* all tables, for the fork handlers (g_tables) */
    stream_t streams[RA_STREAMS];
    uint64_t ra_tick;
    uint64_t ra_queue[RA_QUEUE][4]; /* lo, hi, stream slot, its gen */
    int ra_head, ra_len;
    uint64_t around_win[RA_AROUND_SEEN]; /* window index + 1 (0: none), when asked for */
    int64_t around_ns[RA_AROUND_SEEN];
    int around_hand;
    uint64_t ra_last_end; /* where the last request that read file data ended (atomic) */
    /* counters */
    uint64_t c_requests, c_meta, c_data, c_zero, c_hits, c_misses, c_errors, c_opens;
    uint64_t c_ra_bytes, c_ra_windows, c_ra_quiet, c_ra_around, c_cold, c_leased;
    int leasing;        /* take source leases (use_leases) */
    int mapping;        /* copy from mappings of long-used sources (use_mappings; default on) */
    uint64_t c_mapped, c_map_faults;
} Table;

#define ADD(field, v) __atomic_fetch_add(&(field), (uint64_t)(v), __ATOMIC_RELAXED)

/* -- errors ---------------------------------------------------------------------------- */

typedef struct {
    int failed;
    int err;          /* errno, 0 for a pin failure */
    const char *what; /* message suffix */
    Py_ssize_t file;
} rerr_t;

static void set_err(rerr_t *e, Py_ssize_t file, const char *what, int err) {
    if (!e->failed) {
        e->failed = 1;
        e->file = file;
        e->what = what;
        e->err = err;
    }
}

/* -- descriptors ------------------------------------------------------------------------- */

static const char *pin_check(const hfile_t *f, const struct stat *st) {
    int64_t m = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
    int64_t c = (int64_t)st->st_ctim.tv_sec * 1000000000 + st->st_ctim.tv_nsec;
    if (m != f->mtime_ns || st->st_size != f->size || c != f->ctime_ns || st->st_ino != f->ino ||
        st->st_dev != f->dev)
        return "source changed since the image was planned";
    if (st->st_nlink == 0)
        return "source was deleted since the image was planned";
    return NULL;
}

/* Descriptors all tables (exports) of the process may keep open between requests: set by
 * set_fd_budget() when serving starts, so the rest of the descriptor table stays free for
 * client connections whatever the tree holds. */
static int g_budget = 448;
static int g_open;

/* A mapping to unmap once fd_lock is released: zapping the page tables of a source read
 * whole (and the TLB shootdown to the other threads' CPUs) should not hold up every reader. */
typedef struct {
    unsigned char *map;
    off_t size;
} unmap_t;

/* Close f's cached descriptor (fd_lock held, no user); its mapping goes to *later when given,
 * else now. */
static void close_entry(Table *t, hfile_t *f, unmap_t *later) {
    if (f->lease_tried)
        lease_drop(f->fd);
    f->lease_tried = 0;
    if (later) { /* no user: nothing copies from it, and nothing will */
        later->map = f->map;
        later->size = f->size;
    } else {
        unmap_source(f->map, f->size);
    }
    f->map = NULL;
    f->map_tried = 0;
    f->map_knows = 0;
    close(f->fd);
    f->fd = -1;
    f->broken = 0;
    if (f->ring >= 0) {
        t->ring[f->ring] = -1;
        f->ring = -1;
        __atomic_sub_fetch(&g_open, 1, __ATOMIC_RELAXED);
    }
}

/* A ring slot for a new cached descriptor (fd_lock held), counted in g_open: a free one while
 * the budget allows, else the clock's victim among this table's idle descriptors; -1 if there
 * is none (the caller then reads with a descriptor of its own and closes it). */
static int ring_slot(Table *t, unmap_t *later) {
    if (__atomic_add_fetch(&g_open, 1, __ATOMIC_RELAXED) <= g_budget) {
        if (t->ring_used < t->ring_size)
            return t->ring_used++;
        for (int s = 0; s < t->ring_size; s++)
            if (t->ring[s] < 0)
                return s;
    }
    __atomic_sub_fetch(&g_open, 1, __ATOMIC_RELAXED);
    for (int step = 0; step < 2 * t->ring_used; step++) {
        int s = t->hand;
        t->hand = (t->hand + 1) % t->ring_used;
        int fi = t->ring[s];
        if (fi < 0)
            continue;
        hfile_t *f = &t->files[fi];
        if (f->users > 0)
            continue;
        if (f->ref) {
            f->ref = 0;
            continue;
        }
        close_entry(t, f, later);
        __atomic_add_fetch(&g_open, 1, __ATOMIC_RELAXED);
        return s;
    }
    return -1;
}

static int64_t g_lease_after = 1000000000; /* ns: see acquire; set_lease_after() for tests */

/* The pin check of a descriptor just leased (lease_take). */
static int pinned(int fd, void *arg) {
    struct stat st;
    return fstat(fd, &st) == 0 && pin_check(arg, &st) == NULL;
}

/* The descriptor of file fi with a user counted; *owned set when the caller must close it. */
static int acquire(Table *t, Py_ssize_t fi, int *owned, rerr_t *e) {
    hfile_t *f = &t->files[fi];
    *owned = 0;
    pthread_mutex_lock(&t->fd_lock);
    if (f->fd >= 0 && !f->broken) {
        f->users++;
        f->ref = 1;
        int fd = f->fd;
        /* A descriptor still in use a while after it was opened is worth a lease (about
         * 10 us of fcntl and inotify calls) and a mapping (an mmap, and an munmap when it is
         * closed): a file read once, in a few requests in a row (a copy, a tar), gets
         * neither. */
        int old = (t->leasing && !f->lease_tried) || (t->mapping && !f->map_tried);
        old = old && f->ring >= 0 &&
              coarse_ns() - f->opened >= __atomic_load_n(&g_lease_after, __ATOMIC_RELAXED);
        int lease = old && t->leasing && !f->lease_tried;
        int map = old && t->mapping && !f->map_tried;
        f->lease_tried |= lease;
        f->map_tried |= map;
        pthread_mutex_unlock(&t->fd_lock);
        if (lease)
            lease_take(fd, &f->leased, pinned, f);
        if (map) { /* this thread's user count keeps close_entry away until it is stored */
            int knows = 0;
            unsigned char *p = map_source(fd, f->size, &knows);
            f->map_knows = (uint8_t)knows;
            __atomic_store_n(&f->map, p, __ATOMIC_RELEASE);
        }
        return fd;
    }
    pthread_mutex_unlock(&t->fd_lock);

    /* O_NONBLOCK: a source swapped for a FIFO must fail its pin check, not block this
     * thread in open() for good; reads of regular files ignore it. */
    int fd = open(f->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOATIME);
    if (fd < 0 && errno == EPERM)
        fd = open(f->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        set_err(e, fi, "cannot open source", errno);
        return -1;
    }
    ADD(t->c_opens, 1);
    struct stat st;
    const char *bad = fstat(fd, &st) ? "cannot open source" : pin_check(f, &st);
    if (bad) {
        set_err(e, fi, bad, bad[0] == 'c' && bad[1] == 'a' ? errno : 0);
        close(fd);
        return -1;
    }
    pthread_mutex_lock(&t->fd_lock);
    if (f->fd >= 0 && !f->broken) { /* another thread opened it meanwhile */
        f->users++;
        int cached = f->fd;
        pthread_mutex_unlock(&t->fd_lock);
        close(fd);
        return cached;
    }
    unmap_t later = {NULL, 0};
    int s = f->fd < 0 ? ring_slot(t, &later) : -1; /* a broken fd still in use: uncached */
    if (s < 0) {
        pthread_mutex_unlock(&t->fd_lock);
        *owned = 1;
        return fd;
    }
    t->ring[s] = (int)fi;
    f->ring = s;
    f->opened = coarse_ns();
    f->fd = fd;
    f->users = 1;
    f->ref = 1;
    pthread_mutex_unlock(&t->fd_lock);
    unmap_source(later.map, later.size); /* the victim's */
    return fd;
}

static void release(Table *t, Py_ssize_t fi, int fd, int owned, int broken) {
    if (owned) {
        close(fd);
        return;
    }
    hfile_t *f = &t->files[fi];
    pthread_mutex_lock(&t->fd_lock);
    f->users--;
    if (broken)
        f->broken = 1;
    unmap_t later = {NULL, 0};
    if (f->broken && f->users == 0 && f->fd >= 0)
        close_entry(t, f, &later);
    pthread_mutex_unlock(&t->fd_lock);
    unmap_source(later.map, later.size);
}

/* -- reading -------------------------------------------------------------------------------- */

static int g_nowait = 1; /* 0 once a source's file system refused RWF_NOWAIT */

/* What a request learns about the page cache while it reads (read-ahead on). */
typedef struct {
    int missed;                /* some of its source bytes were not cached: a disk read */
    Table *table;              /* non-NULL: at the first miss, read around it at once */
    const unsigned char *base; /* the request's buffer, which holds image bytes from ``offset`` */
    uint64_t offset;
} miss_t;

static void ra_missed(Table *t, uint64_t at);

/* The bytes for ``dst`` (in the request's buffer) were not cached. */
static void note_miss(miss_t *m, const unsigned char *dst) {
    if (!m->missed) {
        m->missed = 1;
        if (m->table)
            ra_missed(m->table, m->offset + (uint64_t)(dst - m->base));
    }
}

/* Read n bytes; with ``miss`` non-NULL (read-ahead is on), first only what the page cache holds
 * (RWF_NOWAIT, the same cost as pread on a hit), and note a miss when the rest needed I/O: that
 * is what keeps a stream's read-ahead going.  The blocking read then waits for the I/O the
 * miss started, so a miss costs one more system call and no second disk read. */
static int pread_full(int fd, unsigned char *dst, int64_t n, int64_t off, Py_ssize_t fi, rerr_t *e,
                      miss_t *miss) {
    if (miss && !miss->missed && n > 0) {
        if (__atomic_load_n(&g_nowait, __ATOMIC_RELAXED)) {
            struct iovec v = {dst, (size_t)n};
            ssize_t got = preadv2(fd, &v, 1, off, RWF_NOWAIT);
            if (got > 0) {
                dst += got;
                off += got;
                n -= got;
            } else if (got < 0 && errno == EOPNOTSUPP) {
                __atomic_store_n(&g_nowait, 0, __ATOMIC_RELAXED);
            }
            if (n > 0) /* EAGAIN, a short read, EOF or an error: the loop below tells which */
                note_miss(miss, dst);
        } else {
            note_miss(miss, dst); /* unknown: keep reading ahead, as before RWF_NOWAIT */
        }
    }
    while (n > 0) {
        ssize_t got = pread(fd, dst, (size_t)n, off);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            set_err(e, fi, "read failed", errno);
            return -1;
        }
        if (got == 0) {
            set_err(e, fi, "source is shorter than planned", 0);
            return -1;
        }
        dst += got;
        off += got;
        n -= got;
    }
    return 0;
}

/* How a request may use a source's mapping (read_file_batch). */
enum {
    MAP_ANY,      /* a small random read: copy, and let a fault read what is not cached */
    MAP_RESIDENT, /* anything else: copy only runs the page cache holds whole (mincore) */
};

/* One run of file bytes: from the file's mapping when the caller passes one (the mapping
 * covers the planned size), else by pread.  The same bytes, and after a fault in the mapping
 * the same error, as pread.
 *
 * MAP_RESIDENT: a run with a page out of the page cache is a miss (which restarts a warm
 * stream's read-ahead) and is read by pread, so that the kernel reads it in large requests
 * (the mapping is MADV_RANDOM: a fault would read one page at a time). */
static int read_run(const unsigned char *map, int how, int64_t size, int fd, unsigned char *dst,
                    int64_t n, int64_t off, Py_ssize_t fi, rerr_t *e, miss_t *miss, int *copied) {
    /* *copied: | 1 when bytes were copied from the mapping, | 2 when a copy faulted */
    if (!map || off + n > size)
        return pread_full(fd, dst, n, off, fi, e, miss);
    if (how == MAP_RESIDENT && !map_resident(map + off, (size_t)n)) {
        if (miss) /* known before any I/O, where RWF_NOWAIT may see a read that was quick */
            note_miss(miss, dst);
        return pread_full(fd, dst, n, off, fi, e, miss);
    }
    if (map_copy(dst, map + off, (size_t)n) == 0) {
        *copied |= 1;
        return 0;
    }
    /* SIGBUS: the file is shorter now, or a page could not be read; pread says which */
    *copied |= 2;
    return pread_full(fd, dst, n, off, fi, e, miss);
}

/* Fill dst from regions i.. that read host file fi, from image offset pos up to end; returns
 * the image offset reached.  Runs whose file bytes continue each other become one read (a
 * pread or a copy from the mapping); the whole batch shares one descriptor and one pin check,
 * made after the last read. */
static uint64_t read_file_batch(Table *t, unsigned char *base, uint64_t offset, uint64_t pos,
                                uint64_t end, Py_ssize_t *pi, uint64_t *data_bytes, rerr_t *e,
                                miss_t *miss, int how) {
    Py_ssize_t i = *pi;
    Py_ssize_t fi = t->regions[i].aux;
    int owned;
    int fd = acquire(t, fi, &owned, e);
    if (fd < 0)
        return pos;
    /* owned: a descriptor of the caller's own, never mapped */
    const unsigned char *map = !owned && __atomic_load_n(&t->mapping, __ATOMIC_RELAXED)
                                   ? __atomic_load_n(&t->files[fi].map, __ATOMIC_ACQUIRE)
                                   : NULL;
    if (map && (!maps_usable() || (how == MAP_RESIDENT && !t->files[fi].map_knows)))
        map = NULL; /* map_knows: read after map's acquire load, which orders it */
    int copied = 0;
    int64_t fsize = t->files[fi].size;
    int64_t run_off = -1, run_len = 0; /* pending read: file offset, length */
    unsigned char *run_dst = NULL;
    int failed = 0;
    uint64_t first = pos;
    while (pos < end && t->regions[i].kind == K_FILE && t->regions[i].aux == fi) {
        region_t *r = &t->regions[i];
        uint64_t stop = end < t->regions[i + 1].start ? end : t->regions[i + 1].start;
        int64_t rel = (int64_t)(pos - r->start);
        int64_t want = r->data_len - rel;
        if (want > (int64_t)(stop - pos))
            want = (int64_t)(stop - pos);
        if (want < 0)
            want = 0;
        unsigned char *dst = base + (pos - offset);
        if (want > 0) {
            if (run_len > 0 && run_off + run_len == r->file_off + rel && run_dst + run_len == dst) {
                run_len += want;
            } else {
                if (run_len > 0 && read_run(map, how, fsize, fd, run_dst, run_len, run_off, fi, e,
                                            miss, &copied)) {
                    failed = 1;
                    break;
                }
                run_off = r->file_off + rel;
                run_len = want;
                run_dst = dst;
            }
        }
        if ((uint64_t)want < stop - pos) {
            if (run_len > 0 &&
                read_run(map, how, fsize, fd, run_dst, run_len, run_off, fi, e, miss, &copied)) {
                failed = 1;
                break;
            }
            run_len = 0;
            memset(dst + want, 0, (size_t)(stop - pos - (uint64_t)want));
        }
        pos = stop;
        i++;
    }
    if (!failed && run_len > 0 &&
        read_run(map, how, fsize, fd, run_dst, run_len, run_off, fi, e, miss, &copied))
        failed = 1;
    if (copied & 1)
        ADD(t->c_mapped, 1);
    if (copied & 2)
        ADD(t->c_map_faults, 1);
    if (!failed && !owned && lease_holds(&t->files[fi].leased)) { /* owned: not the leased fd */
        ADD(t->c_leased, 1);
    } else if (!failed) {
        struct stat st;
        const char *bad = fstat(fd, &st) ? "read failed" : pin_check(&t->files[fi], &st);
        if (bad) {
            set_err(e, fi, bad, bad[0] == 'r' ? errno : 0);
            failed = 1;
        }
    }
    release(t, fi, fd, owned, failed);
    *pi = i;
    *data_bytes += pos - first;
    return pos;
}

/* Copy bytes [within, within+n) of the cached metadata block in slot s; 0 on a miss. */
static int cache_copy(Table *t, int64_t s, unsigned char *dst, size_t within, size_t n) {
    int32_t p = __atomic_load_n(&t->slot_map[s], __ATOMIC_ACQUIRE);
    if (p < 0)
        return 0;
    centry_t *c = &t->pool[p];
    uint32_t s1 = __atomic_load_n(&c->seq, __ATOMIC_ACQUIRE);
    if ((s1 & 1) || __atomic_load_n(&c->slot, __ATOMIC_RELAXED) != s)
        return 0;
    memcpy(dst, c->data + within, n);
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if (__atomic_load_n(&c->seq, __ATOMIC_RELAXED) != s1)
        return 0;
    if (!__atomic_load_n(&c->ref, __ATOMIC_RELAXED))
        __atomic_store_n(&c->ref, 1, __ATOMIC_RELAXED);
    return 1;
}

typedef struct {
    uint64_t (*r)[2];
    Py_ssize_t n, cap;
    int oom;
} misses_t;

static void add_miss(misses_t *m, uint64_t lo, uint64_t hi) {
    if (m->n > 0 && m->r[m->n - 1][1] == lo) {
        m->r[m->n - 1][1] = hi;
        return;
    }
    if (m->n == m->cap) {
        Py_ssize_t cap = m->cap ? 2 * m->cap : 16;
        void *p = realloc(m->r, (size_t)cap * sizeof *m->r);
        if (!p) {
            m->oom = 1;
            return;
        }
        m->r = p;
        m->cap = cap;
    }
    m->r[m->n][0] = lo;
    m->r[m->n][1] = hi;
    m->n++;
}

/* The region holding offset (< image size).  The coarse index narrows the bisection to the
 * regions of one 2^cshift-byte slice, so a lookup touches two or three cache lines instead
 * of one per level of a bisection over the whole table (measured: most of the compiled
 * path's own time per 4 KiB random read, when the table is cold in the CPU cache). */
static Py_ssize_t find_region(const Table *t, uint64_t offset) {
    uint64_t c = offset >> t->cshift;
    Py_ssize_t lo = t->coarse[c], hi = t->coarse[c + 1] + 1; /* the answer lies in [lo, hi) */
    while (hi - lo > 1) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (t->starts[mid] <= offset)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

/* Build starts and coarse (regions loaded and checked): at most 4 slices per region. */
static int build_index(Table *t) {
    uint64_t size = t->regions[t->n].start;
    int shift = 12;
    while (shift < 62 && (size >> shift) + 2 > (uint64_t)(4 * t->n + 64))
        shift++;
    Py_ssize_t nc = (Py_ssize_t)(size >> shift) + 2;
    t->starts = malloc(((size_t)t->n + 1) * sizeof *t->starts);
    t->coarse = malloc((size_t)nc * sizeof *t->coarse);
    if (!t->starts || !t->coarse)
        return -1;
    for (Py_ssize_t k = 0; k <= t->n; k++)
        t->starts[k] = t->regions[k].start;
    Py_ssize_t k = 0;
    for (Py_ssize_t c = 0; c < nc; c++) {
        uint64_t at = (uint64_t)c << shift;
        while (k + 1 < t->n && t->starts[k + 1] <= at)
            k++;
        t->coarse[c] = k;
    }
    t->cshift = shift;
    return 0;
}

static void mark_blocks(Table *t, uint64_t offset, uint64_t len) {
    if (len == 0 || !t->chunks)
        return;
    uint64_t b = offset / BLOCK, last = (offset + len - 1) / BLOCK;
    for (; b <= last; b++) {
        Py_ssize_t ci = (Py_ssize_t)(b >> CHUNK_SHIFT);
        if (ci >= t->nchunks)
            return;
        unsigned char *bits = __atomic_load_n(&t->chunks[ci], __ATOMIC_ACQUIRE);
        if (!bits) {
            unsigned char *fresh = calloc(1, (1 << CHUNK_SHIFT) / 8);
            if (!fresh)
                return;
            unsigned char *expected = NULL;
            if (__atomic_compare_exchange_n(&t->chunks[ci], &expected, fresh, 0, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE))
                bits = fresh;
            else {
                free(fresh);
                bits = expected;
            }
        }
        uint64_t k = b & ((1 << CHUNK_SHIFT) - 1);
        unsigned char bit = (unsigned char)(1u << (k & 7));
        if (!(__atomic_load_n(&bits[k >> 3], __ATOMIC_RELAXED) & bit))
            __atomic_fetch_or(&bits[k >> 3], bit, __ATOMIC_RELAXED);
    }
}

/* -- read-ahead -------------------------------------------------------------------------------- */

/* cachestat(2) (Linux 6.5): how many pages of a range are cached, without reading any.  Its
 * number is 451 on every architecture; the headers this is built with may predate it. */
struct ra_cachestat_range {
    uint64_t off, len;
};
struct ra_cachestat {
    uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted;
};
static int g_cachestat = 1; /* 0 once the kernel said ENOSYS: hint every run */

/* Whether bytes [off, off+n) of fd are all in the page cache (0 when unknown). */
static int all_cached(int fd, int64_t off, int64_t n) {
    if (!__atomic_load_n(&g_cachestat, __ATOMIC_RELAXED))
        return 0;
    struct ra_cachestat_range range = {(uint64_t)off, (uint64_t)n};
    struct ra_cachestat cs;
    if (syscall(451, fd, &range, &cs, 0) != 0) {
        if (errno == ENOSYS)
            __atomic_store_n(&g_cachestat, 0, __ATOMIC_RELAXED);
        return 0;
    }
    int64_t pages = (off + n + BLOCK - 1) / BLOCK - off / BLOCK;
    return cs.nr_cache >= (uint64_t)pages;
}

/* Hint the kernel to read bytes [off, off+n) of file fi (read-ahead thread), unless they are
 * all cached.  (A one-byte RWF_NOWAIT read would answer too, but a miss starts a read of that
 * page on its own: two disk reads per file instead of one.)  A small file is asked for whole,
 * as the kernel's own read-ahead would read it: dedup can split its bytes into several runs,
 * and one disk read serves them all. */
static int ra_file(Table *t, Py_ssize_t fi, int64_t off, int64_t n) {
    if (t->files[fi].size <= RA_WHOLE) {
        off = 0;
        n = t->files[fi].size;
    }
    rerr_t e = {0};
    int owned;
    int fd = acquire(t, fi, &owned, &e); /* opens ahead too: the path lookup leaves the request */
    if (fd < 0)
        return 1; /* not known to be cached: the request will tell */
    int hinted = !all_cached(fd, off, n);
    if (hinted) {
        posix_fadvise(fd, off, n, POSIX_FADV_WILLNEED);
        ADD(t->c_ra_bytes, n);
    }
    release(t, fi, fd, owned, 0);
    return hinted;
}

/* Ask for the file data of image bytes [lo, hi): one hint per run of a file's contiguous bytes.
 * Returns how many runs were not all cached already (and so hinted). */
static int ra_range(Table *t, uint64_t lo, uint64_t hi) {
    uint64_t size = t->regions[t->n].start;
    if (hi > size)
        hi = size;
    if (lo >= hi)
        return 0;
    int hinted = 0;
    Py_ssize_t i = find_region(t, lo), run_fi = -1;
    int64_t run_off = 0, run_len = 0;
    for (; i < t->n && t->regions[i].start < hi; i++) {
        region_t *r = &t->regions[i];
        if (r->kind != K_FILE || r->data_len <= 0)
            continue;
        uint64_t a = lo > r->start ? lo : r->start;
        uint64_t b = hi < t->regions[i + 1].start ? hi : t->regions[i + 1].start;
        int64_t rel = (int64_t)(a - r->start), n = r->data_len - rel;
        if (n > (int64_t)(b - a))
            n = (int64_t)(b - a);
        if (n <= 0)
            continue;
        if (r->aux == run_fi && run_off + run_len == r->file_off + rel) {
            run_len += n;
            continue;
        }
        if (run_len > 0)
            hinted += ra_file(t, run_fi, run_off, run_len);
        if (__atomic_load_n(&t->ra_stop, __ATOMIC_RELAXED))
            return 1;
        run_fi = r->aux;
        run_off = r->file_off + rel;
        run_len = n;
    }
    if (run_len > 0)
        hinted += ra_file(t, run_fi, run_off, run_len);
    return hinted;
}

/* Whether image bytes [lo, hi) overlap a window read around lately (ra_lock held): then
 * their sources are cached because the read-around asked for them, not because a client
 * read them, and a stream that finds them so is no warm reader. */
static int around_lately(Table *t, uint64_t lo, uint64_t hi) {
    uint64_t win = __atomic_load_n(&t->ra_window, __ATOMIC_RELAXED);
    int64_t now = coarse_ns();
    for (int k = 0; win && k < RA_AROUND_SEEN; k++) {
        uint64_t w = t->around_win[k];
        if (w && (w - 1) * win < hi && w * win > lo && now - t->around_ns[k] < RA_AROUND_NS)
            return 1;
    }
    return 0;
}

static void *ra_main(void *arg) {
    Table *t = arg;
    pthread_mutex_lock(&t->ra_lock);
    for (;;) {
        while (!t->ra_len && !t->ra_stop)
            pthread_cond_wait(&t->ra_cond, &t->ra_lock);
        if (t->ra_stop)
            break;
        uint64_t *q = t->ra_queue[t->ra_head];
        uint64_t lo = q[0], hi = q[1], k = q[2], gen = q[3];
        t->ra_head = (t->ra_head + 1) % RA_QUEUE;
        t->ra_len--;
        pthread_mutex_unlock(&t->ra_lock);
        int hinted = ra_range(t, lo, hi);
        pthread_mutex_lock(&t->ra_lock);
        if (!hinted && k < RA_STREAMS && t->streams[k].gen == (uint32_t)gen &&
            !t->streams[k].warm && !around_lately(t, lo, hi)) {
            t->streams[k].warm = 1; /* reading ahead of it only cost cachestat calls */
            ADD(t->c_ra_quiet, 1);
        }
    }
    pthread_mutex_unlock(&t->ra_lock);
    return NULL;
}

/* Queue image bytes [lo, hi) for the read-ahead thread (ra_lock held), starting the thread on
 * first use; ``k``: the stream asking (RA_STREAMS: none), ``gen`` its generation.  0 when the
 * queue is full or read-ahead is off. */
static int ra_enqueue(Table *t, uint64_t lo, uint64_t hi, uint64_t k, uint64_t gen) {
    if (t->ra_len == RA_QUEUE || t->ra_stop)
        return 0;
    if (!t->ra_started) {
        if (pthread_create(&t->ra_thread, NULL, ra_main, t)) {
            __atomic_store_n(&t->ra_window, 0, __ATOMIC_RELAXED); /* no thread: no read-ahead */
            return 0;
        }
        t->ra_started = 1;
    }
    int slot = (t->ra_head + t->ra_len) % RA_QUEUE;
    t->ra_queue[slot][0] = lo;
    t->ra_queue[slot][1] = hi;
    t->ra_queue[slot][2] = k;
    t->ra_queue[slot][3] = gen;
    t->ra_len++;
    ADD(t->c_ra_windows, 1);
    pthread_cond_signal(&t->ra_cond);
    return 1;
}

/* A reader that is not a random one missed the page cache at image offset ``off`` (ra_lock
 * held): ask for the sources of the whole ``win``-aligned window around it, unless that was
 * done lately.  A reader walking a directory (tar, cp -r) takes its files in the order of
 * their names' hashes, which jumps about the directory's data, so no stream forms and each
 * file would cost a synchronous disk read; a built image gets the same reads served by the
 * host's read-ahead of its one file. */
static void ra_around(Table *t, uint64_t off, uint64_t win) {
    uint64_t w = off / win + 1;
    if (around_lately(t, (w - 1) * win, w * win)) /* windows are aligned: only w itself */
        return;
    if (!ra_enqueue(t, (w - 1) * win, w * win, RA_STREAMS, 0))
        return;
    t->around_win[t->around_hand] = w;
    t->around_ns[t->around_hand] = coarse_ns();
    t->around_hand = (t->around_hand + 1) % RA_AROUND_SEEN;
    ADD(t->c_ra_around, 1);
}

/* A request that is not a small random read found source bytes at image offset ``at`` missing
 * from the page cache: read around them now, while it waits for their disk read. */
static void ra_missed(Table *t, uint64_t at) {
    uint64_t win = __atomic_load_n(&t->ra_window, __ATOMIC_RELAXED);
    if (!win)
        return;
    pthread_mutex_lock(&t->ra_lock);
    ra_around(t, at, win);
    pthread_mutex_unlock(&t->ra_lock);
}

/* A request read file data at [off, end): continue its stream and queue the next window once
 * the stream has gone forward twice, or start a stream in place of the least recent one.
 * ``missed``: part of its data was not in the page cache.  A stream whose last window was all
 * cached queues nothing more until one of its requests misses: warm serving then costs no
 * cachestat calls and no thread wake-ups, as the kernel's own read-ahead stays quiet on hits. */
static inline int near(uint64_t off, uint64_t at) { /* within RA_GAP of ``at``, either side */
    return off <= at + RA_GAP && off + RA_GAP >= at;
}

/* A small request that neither follows the previous one (which ended at prev) nor continues
 * a stream: a random read, which starts and feeds nothing.  Larger ones may start a stream
 * (several streams interleave: nbdcopy's connections).  No lock. */
static int ra_random(Table *t, uint64_t off, uint64_t end, uint64_t prev) {
    if (end - off >= RA_SMALL || (prev && near(off, prev))) /* prev 0: no request before */
        return 0;
    for (int k = 0; k < RA_STREAMS; k++) {
        uint64_t next = __atomic_load_n(&t->streams[k].next, __ATOMIC_RELAXED);
        if (next && near(off, next))
            return 0;
    }
    return 1;
}

/* ``scattered``: ra_random said so when the request began. */
static void ra_note(Table *t, uint64_t off, uint64_t end, int missed, int scattered) {
    uint64_t max = __atomic_load_n(&t->ra_window, __ATOMIC_RELAXED);
    if (!max)
        return;
    __atomic_store_n(&t->ra_last_end, end, __ATOMIC_RELAXED);
    if (scattered) /* costs no lock */
        return;
    pthread_mutex_lock(&t->ra_lock);
    uint64_t tick = ++t->ra_tick;
    stream_t *s = NULL, *oldest = &t->streams[0];
    for (int k = 0; k < RA_STREAMS; k++) {
        stream_t *c = &t->streams[k];
        if (c->used && near(off, c->next)) {
            s = c;
            break;
        }
        if (c->used < oldest->used)
            oldest = c;
    }
    if (!s) {
        oldest->ahead = end;
        oldest->win = RA_FIRST;
        oldest->used = tick;
        oldest->hits = 0;
        oldest->warm = 0;
        oldest->gen++;
        __atomic_store_n(&oldest->next, end, __ATOMIC_RELAXED); /* read unlocked above */
        pthread_mutex_unlock(&t->ra_lock);
        return;
    }
    s->used = tick;
    int forward = end > s->next; /* only progress counts: a re-read is no sequential reader */
    if (forward)
        __atomic_store_n(&s->next, end, __ATOMIC_RELAXED);
    for (int k = 0; k < RA_STREAMS; k++) { /* streams that met are one: fold the others in */
        stream_t *c = &t->streams[k];
        if (c != s && c->used && c->next <= s->ahead + RA_GAP && s->next <= c->ahead + RA_GAP) {
            if (c->next > s->next)
                __atomic_store_n(&s->next, c->next, __ATOMIC_RELAXED);
            if (c->ahead > s->ahead)
                s->ahead = c->ahead;
            if (c->win > s->win)
                s->win = c->win;
            if (c->hits > s->hits)
                s->hits = c->hits;
            if (!c->warm)
                s->warm = 0;
            c->used = 0;
            c->gen++;
            __atomic_store_n(&c->next, 0, __ATOMIC_RELAXED);
        }
    }
    s->hits += forward;
    if (missed)
        s->warm = 0;
    if (s->warm) {
        if (s->ahead < s->next)
            s->ahead = s->next; /* a miss later starts the window where the reader is */
        pthread_mutex_unlock(&t->ra_lock);
        return;
    }
    if (s->hits < 2 || s->ahead >= s->next + s->win / 2) {
        pthread_mutex_unlock(&t->ra_lock);
        return;
    }
    uint64_t lo = s->ahead > s->next ? s->ahead : s->next;
    if (ra_enqueue(t, lo, s->next + s->win, (uint64_t)(s - t->streams), s->gen)) {
        s->ahead = s->next + s->win;
        if (s->win < max)
            s->win = 2 * s->win < max ? 2 * s->win : max;
    }
    pthread_mutex_unlock(&t->ra_lock);
}

static void ra_shutdown(Table *t) {
    pthread_mutex_lock(&t->ra_lock);
    t->ra_stop = 1;
    int started = t->ra_started;
    pthread_cond_signal(&t->ra_cond);
    pthread_mutex_unlock(&t->ra_lock);
    if (started)
        pthread_join(t->ra_thread, NULL);
}

/* Fork.  Only the forking thread lives on in a child, so a read-ahead thread stays in the
 * parent, and a lock another thread held at the fork would stay held for good.  The handlers
 * take every table's locks around fork() and give the child fresh ones, with no thread (the
 * next sequential reader starts one there). */
static pthread_mutex_t g_tables_lock = PTHREAD_MUTEX_INITIALIZER;
static Table *g_tables;

static void fork_prepare(void) {
    pthread_mutex_lock(&g_tables_lock);
    for (Table *t = g_tables; t; t = t->ra_next) {
        pthread_mutex_lock(&t->ra_lock);
        pthread_mutex_lock(&t->fd_lock);
    }
}

static void fork_parent(void) {
    for (Table *t = g_tables; t; t = t->ra_next) {
        pthread_mutex_unlock(&t->fd_lock);
        pthread_mutex_unlock(&t->ra_lock);
    }
    pthread_mutex_unlock(&g_tables_lock);
}

static void fork_child(void) {
    for (Table *t = g_tables; t; t = t->ra_next) {
        pthread_mutex_init(&t->fd_lock, NULL);
        pthread_mutex_init(&t->ra_lock, NULL);
        pthread_cond_init(&t->ra_cond, NULL); /* forget the parent's waiting thread */
        t->ra_started = 0;
        t->ra_len = 0;
    }
    pthread_mutex_init(&g_tables_lock, NULL);
    leases_fork_child();
}

static void tables_add(Table *t) {
    pthread_mutex_lock(&g_tables_lock);
    t->ra_next = g_tables;
    g_tables = t;
    pthread_mutex_unlock(&g_tables_lock);
}

static void tables_remove(Table *t) {
    pthread_mutex_lock(&g_tables_lock);
    for (Table **p = &g_tables; *p; p = (Table **)&(*p)->ra_next)
        if (*p == t) {
            *p = t->ra_next;
            break;
        }
    pthread_mutex_unlock(&g_tables_lock);
}

/* The whole request, GIL released.  Fills what it can, lists misses, stops at an error.
 * Counted in the statistics unless ``whole_only`` and something was left (the nbdkit
 * filter then hands the request to the plugin, which reads and counts it again). */
static void do_read(Table *t, unsigned char *base, uint64_t offset, uint64_t len, misses_t *m,
                    rerr_t *e, int whole_only) {
    uint64_t end = offset + len, pos = offset;
    uint64_t meta = 0, data = 0, zero = 0, hits = 0, misses = 0;
    int ra_on = __atomic_load_n(&t->ra_window, __ATOMIC_RELAXED) != 0;
    /* A small random read copies from sources' mappings, cached or not: what it misses could
     * feed no read-ahead anyway, so it needs no RWF_NOWAIT read to find out.  Other reads copy
     * the runs the page cache holds, and pread the rest. */
    uint64_t prev = __atomic_load_n(&t->ra_last_end, __ATOMIC_RELAXED);
    int scattered = ra_on && ra_random(t, offset, end, prev);
    miss_t miss = {0, scattered ? NULL : t, base, offset};
    int how = len < RA_SMALL && (!ra_on || scattered) ? MAP_ANY : MAP_RESIDENT;
    Py_ssize_t i = find_region(t, offset);
    while (pos < end && !e->failed) {
        region_t *r = &t->regions[i];
        uint64_t stop = end < t->regions[i + 1].start ? end : t->regions[i + 1].start;
        switch (r->kind) {
        case K_ZERO:
            memset(base + (pos - offset), 0, (size_t)(stop - pos));
            zero += stop - pos;
            break;
        case K_FILE:
            pos = read_file_batch(t, base, offset, pos, end, &i, &data, e,
                                  ra_on ? &miss : NULL, how);
            continue;
        case K_META:
            while (pos < stop) {
                uint64_t blk = pos / BLOCK;
                size_t within = (size_t)(pos % BLOCK);
                uint64_t step = BLOCK - within < stop - pos ? BLOCK - within : stop - pos;
                int64_t s = r->aux + (int64_t)(blk - r->start / BLOCK);
                if (cache_copy(t, s, base + (pos - offset), within, (size_t)step)) {
                    hits++;
                    meta += step;
                } else {
                    misses++;
                    add_miss(m, pos, pos + step);
                }
                pos += step;
            }
            break;
        default:
            add_miss(m, pos, stop);
            break;
        }
        pos = stop;
        i++;
    }
    if (whole_only && (e->failed || m->n || m->oom))
        return;
    ADD(t->c_requests, 1);
    if (meta)
        ADD(t->c_meta, meta);
    if (data)
        ADD(t->c_data, data);
    if (zero)
        ADD(t->c_zero, zero);
    if (hits)
        ADD(t->c_hits, hits);
    if (misses)
        ADD(t->c_misses, misses);
    if (e->failed)
        ADD(t->c_errors, 1);
    else if (m->n == 0)
        mark_blocks(t, offset, len);
    if (miss.missed)
        ADD(t->c_cold, 1);
    if (data)
        ra_note(t, offset, end, miss.missed, scattered);
}

static PyObject *error_message(Table *t, rerr_t *e) {
    PyObject *path = PyUnicode_DecodeFSDefault(t->files[e->file].path);
    if (!path)
        return NULL;
    PyObject *msg = e->err ? PyUnicode_FromFormat("%U: %s: %s", path, e->what, strerror(e->err))
                           : PyUnicode_FromFormat("%U: %s", path, e->what);
    Py_DECREF(path);
    return msg;
}

PyDoc_STRVAR(read_doc,
"read(buf, offset) -> None | str | list[tuple[int, int]]\n\n"
"Fill the writable buffer with image bytes at offset, without the GIL.  None: done.\n"
"A str: a source failed (the reason; the buffer is undefined).  A list: the image\n"
"ranges (start, end) left for Python to fill; everything else is filled.");

static PyObject *Table_read(Table *t, PyObject *args) {
    Py_buffer view;
    unsigned long long offset;
    if (!PyArg_ParseTuple(args, "w*K", &view, &offset))
        return NULL;
    uint64_t len = (uint64_t)view.len, size = t->regions[t->n].start;
    if (offset > size || len > size - offset) {
        PyBuffer_Release(&view);
        return PyErr_Format(PyExc_ValueError, "read %llu+%llu outside the image (size %llu)",
                            offset, (unsigned long long)len, (unsigned long long)size);
    }
    misses_t m = {0};
    rerr_t e = {0};
    Py_BEGIN_ALLOW_THREADS
    do_read(t, view.buf, offset, len, &m, &e, 0);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    PyObject *out = NULL;
    if (e.failed)
        out = error_message(t, &e);
    else if (m.oom)
        out = PyErr_NoMemory();
    else if (m.n == 0)
        out = Py_NewRef(Py_None);
    else if ((out = PyList_New(m.n))) {
        for (Py_ssize_t k = 0; k < m.n; k++) {
            PyObject *pair = Py_BuildValue("(KK)", (unsigned long long)m.r[k][0],
                                           (unsigned long long)m.r[k][1]);
            if (!pair) {
                Py_CLEAR(out);
                break;
            }
            PyList_SET_ITEM(out, k, pair);
        }
    }
    free(m.r);
    return out;
}

/* The cache slot of metadata block ``block`` (in range), or -1 when it is no cached metadata. */
static int64_t meta_slot(Table *t, uint64_t block) {
    region_t *r = &t->regions[find_region(t, block * BLOCK)];
    if (r->kind != K_META || t->pool_size == 0)
        return -1;
    return r->aux + (int64_t)(block - r->start / BLOCK);
}

static PyObject *Table_put_block(Table *t, PyObject *args) {
    unsigned long long block;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "Ky*", &block, &data))
        return NULL;
    if (data.len != BLOCK || block >= (t->regions[t->n].start + BLOCK - 1) / BLOCK) { /* no overflow */
        PyBuffer_Release(&data);
        return PyErr_Format(PyExc_ValueError, "put_block: block %llu of %zd bytes", block, data.len);
    }
    int64_t s = meta_slot(t, block);
    if (s < 0) {
        PyBuffer_Release(&data);
        Py_RETURN_FALSE;
    }
    if (__atomic_load_n(&t->slot_map[s], __ATOMIC_ACQUIRE) >= 0) { /* already there */
        PyBuffer_Release(&data);
        Py_RETURN_TRUE;
    }
    /* One writer at a time: callers hold the GIL.  Clock over the pool for a victim. */
    int p, fresh = t->pool_used < t->pool_size;
    if (fresh) { /* never written: calloc's zeros, its slot not yet meaningful */
        p = t->pool_used++;
    } else {
        for (;;) {
            p = t->pool_hand;
            t->pool_hand = (t->pool_hand + 1) % t->pool_size;
            if (!__atomic_load_n(&t->pool[p].ref, __ATOMIC_RELAXED))
                break;
            __atomic_store_n(&t->pool[p].ref, 0, __ATOMIC_RELAXED);
        }
    }
    centry_t *c = &t->pool[p];
    if (!fresh && c->slot >= 0)
        __atomic_store_n(&t->slot_map[c->slot], -1, __ATOMIC_RELEASE);
    uint32_t seq = c->seq;
    __atomic_store_n(&c->seq, seq + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    memcpy(c->data, data.buf, BLOCK);
    __atomic_store_n(&c->slot, (int32_t)s, __ATOMIC_RELAXED);
    __atomic_store_n(&c->ref, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&c->seq, seq + 2, __ATOMIC_RELEASE);
    __atomic_store_n(&t->slot_map[s], p, __ATOMIC_RELEASE);
    PyBuffer_Release(&data);
    Py_RETURN_TRUE;
}

/* Whether metadata block ``block`` is in the cache now (pre-rendering skips those). */
static PyObject *Table_has_block(Table *t, PyObject *arg) {
    unsigned long long block = PyLong_AsUnsignedLongLong(arg);
    if (block == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (block >= (t->regions[t->n].start + BLOCK - 1) / BLOCK)
        Py_RETURN_FALSE;
    int64_t s = meta_slot(t, block);
    return PyBool_FromLong(s >= 0 && __atomic_load_n(&t->slot_map[s], __ATOMIC_ACQUIRE) >= 0);
}

static PyObject *Table_mark(Table *t, PyObject *args) {
    unsigned long long offset, len;
    if (!PyArg_ParseTuple(args, "KK", &offset, &len))
        return NULL;
    mark_blocks(t, offset, len);
    Py_RETURN_NONE;
}

static PyObject *Table_stats(Table *t, PyObject *noargs) {
    uint64_t distinct = 0;
    for (Py_ssize_t ci = 0; ci < t->nchunks; ci++) {
        unsigned char *bits = __atomic_load_n(&t->chunks[ci], __ATOMIC_ACQUIRE);
        if (bits)
            for (int k = 0; k < (1 << CHUNK_SHIFT) / 8; k++)
                distinct += (uint64_t)__builtin_popcount(__atomic_load_n(&bits[k], __ATOMIC_RELAXED));
    }
    int open_fds = 0;
    pthread_mutex_lock(&t->fd_lock);
    for (int s = 0; s < t->ring_used; s++)
        open_fds += t->ring[s] >= 0;
    pthread_mutex_unlock(&t->fd_lock);
#define L(f) (unsigned long long)__atomic_load_n(&t->f, __ATOMIC_RELAXED)
    return Py_BuildValue("{sKsKsKsKsKsKsKsKsKsisKsKsKsKsKsKsKsK}", "requests", L(c_requests), "bytes_metadata",
                         L(c_meta), "bytes_data", L(c_data), "bytes_zero", L(c_zero), "cache_hits",
                         L(c_hits), "cache_misses", L(c_misses), "source_errors", L(c_errors),
                         "opens", L(c_opens), "distinct_blocks", (unsigned long long)distinct,
                         "open_fds", open_fds, "readahead_windows", L(c_ra_windows),
                         "readahead_quiet", L(c_ra_quiet), "readahead_bytes", L(c_ra_bytes),
                         "readahead_around", L(c_ra_around), "cold_reads", L(c_cold),
                         "leased_reads", L(c_leased), "mapped_reads", L(c_mapped),
                         "map_faults", L(c_map_faults));
#undef L
}

static PyObject *Table_set_readahead(Table *t, PyObject *arg) {
    unsigned long long n = PyLong_AsUnsignedLongLong(arg);
    if (n == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    __atomic_store_n(&t->ra_window, n && n < RA_FIRST ? RA_FIRST : n, __ATOMIC_RELAXED);
    Py_RETURN_NONE;
}

static PyObject *set_switch(int *field, PyObject *arg) {
    int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
    __atomic_store_n(field, on, __ATOMIC_RELAXED);
    Py_RETURN_NONE;
}

static PyObject *Table_use_leases(Table *t, PyObject *arg) {
    return set_switch(&t->leasing, arg);
}

static PyObject *Table_use_mappings(Table *t, PyObject *arg) {
    return set_switch(&t->mapping, arg);
}

static PyObject *Table_close(Table *t, PyObject *noargs) {
    pthread_mutex_lock(&t->fd_lock);
    for (Py_ssize_t k = 0; k < t->nfiles; k++) {
        hfile_t *f = &t->files[k];
        if (f->fd >= 0 && f->users == 0)
            close_entry(t, f, NULL);
    }
    pthread_mutex_unlock(&t->fd_lock);
    Py_RETURN_NONE;
}

/* -- construction ------------------------------------------------------------------------------ */

static int get_array(PyObject *obj, Py_buffer *v, const char *fmt, Py_ssize_t n, const char *name) {
    if (PyObject_GetBuffer(obj, v, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS))
        return -1;
    if (strcmp(v->format, fmt) || v->len / v->itemsize != n) {
        PyErr_Format(PyExc_ValueError, "Table: %s must be array('%s') of %zd items", name, fmt, n);
        PyBuffer_Release(v);
        return -1;
    }
    return 0;
}

static int load_files(Table *t, PyObject *files) {
    PyObject *seq = PySequence_Fast(files, "Table: files must be a sequence");
    if (!seq)
        return -1;
    t->nfiles = PySequence_Fast_GET_SIZE(seq);
    t->files = calloc((size_t)t->nfiles + 1, sizeof *t->files);
    if (!t->files) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t k = 0; k < t->nfiles; k++) {
        hfile_t *f = &t->files[k];
        f->fd = -1;
        f->ring = -1;
        PyObject *path;
        unsigned long long dev, ino;
        long long size, mtime, ctime;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, k), "O&KKLLL", PyUnicode_FSConverter,
                              &path, &dev, &ino, &size, &mtime, &ctime)) {
            Py_DECREF(seq);
            return -1;
        }
        f->path = strdup(PyBytes_AS_STRING(path));
        Py_DECREF(path);
        if (!f->path) {
            Py_DECREF(seq);
            PyErr_NoMemory();
            return -1;
        }
        f->dev = (dev_t)dev;
        f->ino = (ino_t)ino;
        f->size = (off_t)size;
        f->mtime_ns = mtime;
        f->ctime_ns = ctime;
    }
    Py_DECREF(seq);
    return 0;
}

static int Table_init(Table *t, PyObject *args, PyObject *kw) {
    static char *names[] = {"starts", "kinds", "aux", "file_offs", "data_lens", "files", "nslots",
                            "cache_blocks", NULL};
    PyObject *o_starts, *o_kinds, *o_aux, *o_offs, *o_lens, *files;
    Py_ssize_t nslots;
    int cache_blocks;
    if (t->regions) {
        PyErr_SetString(PyExc_RuntimeError, "Table is initialised once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOni", names, &o_starts, &o_kinds, &o_aux,
                                     &o_offs, &o_lens, &files, &nslots, &cache_blocks))
        return -1;
    Py_ssize_t n = PyObject_Length(o_kinds);
    if (n < 1)
        return PyErr_Occurred() ? -1 : (PyErr_SetString(PyExc_ValueError, "Table: no regions"), -1);
    Py_buffer vs, vk, va, vo, vl;
    if (get_array(o_starts, &vs, "Q", n + 1, "starts"))
        return -1;
    int rc = -1;
    if (get_array(o_kinds, &vk, "B", n, "kinds"))
        goto out_s;
    if (get_array(o_aux, &va, "q", n, "aux"))
        goto out_k;
    if (get_array(o_offs, &vo, "q", n, "file_offs"))
        goto out_a;
    if (get_array(o_lens, &vl, "q", n, "data_lens"))
        goto out_o;
    t->regions = calloc((size_t)n + 1, sizeof *t->regions);
    if (!t->regions) {
        PyErr_NoMemory();
        goto out_l;
    }
    t->n = n;
    for (Py_ssize_t k = 0; k <= n; k++) {
        region_t *r = &t->regions[k];
        r->start = ((uint64_t *)vs.buf)[k];
        if (k == n)
            break;
        r->kind = ((uint8_t *)vk.buf)[k];
        r->aux = ((int64_t *)va.buf)[k];
        r->file_off = ((int64_t *)vo.buf)[k];
        r->data_len = ((int64_t *)vl.buf)[k];
    }
    if (load_files(t, files))
        goto out_l;
    for (Py_ssize_t k = 0; k < n; k++) { /* never trust an index into our own tables */
        region_t *r = &t->regions[k];
        int bad = r->start > t->regions[k + 1].start || r->kind > K_PY ||
                  (r->kind == K_FILE && (r->aux < 0 || r->aux >= t->nfiles)) ||
                  (r->kind == K_META && (r->start % BLOCK || t->regions[k + 1].start % BLOCK ||
                                         r->aux < 0 ||
                                         r->aux + (int64_t)((t->regions[k + 1].start - r->start) / BLOCK) > nslots));
        if (bad) {
            PyErr_Format(PyExc_ValueError, "Table: region %zd is inconsistent", k);
            goto out_l;
        }
    }
    t->nslots = nslots;
    t->slot_map = malloc(((size_t)nslots + 1) * sizeof *t->slot_map);
    t->pool_size = cache_blocks > 0 ? cache_blocks : 0;
    t->pool = t->pool_size ? calloc((size_t)t->pool_size, sizeof *t->pool) : NULL;
    t->ring_size = t->nfiles > 0 ? (int)(t->nfiles < INT32_MAX ? t->nfiles : INT32_MAX) : 1;
    t->ring = malloc((size_t)t->ring_size * sizeof *t->ring);
    t->nchunks = (Py_ssize_t)(((t->regions[n].start + BLOCK - 1) / BLOCK >> CHUNK_SHIFT) + 1);
    t->chunks = calloc((size_t)t->nchunks, sizeof *t->chunks);
    if (!t->slot_map || (t->pool_size && !t->pool) || !t->ring || !t->chunks || build_index(t)) {
        PyErr_NoMemory();
        goto out_l;
    }
    for (Py_ssize_t k = 0; k <= nslots; k++)
        t->slot_map[k] = -1;
    for (int k = 0; k < t->ring_size; k++)
        t->ring[k] = -1;
    rc = 0;
out_l:
    PyBuffer_Release(&vl);
out_o:
    PyBuffer_Release(&vo);
out_a:
    PyBuffer_Release(&va);
out_k:
    PyBuffer_Release(&vk);
out_s:
    PyBuffer_Release(&vs);
    return rc;
}

static PyObject *Table_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    Table *t = (Table *)type->tp_alloc(type, 0);
    if (t) {
        t->mapping = 1;
        pthread_mutex_init(&t->fd_lock, NULL);
        pthread_mutex_init(&t->ra_lock, NULL);
        pthread_cond_init(&t->ra_cond, NULL);
        tables_add(t);
    }
    return (PyObject *)t;
}

static void Table_dealloc(Table *t) {
    ra_shutdown(t); /* the thread uses the descriptors and regions freed below */
    tables_remove(t);
    if (t->files) {
        for (Py_ssize_t k = 0; k < t->nfiles; k++) {
            if (t->files[k].fd >= 0)
                close_entry(t, &t->files[k], NULL); /* gives its share of the budget back */
            free(t->files[k].path);
        }
    }
    if (t->chunks)
        for (Py_ssize_t k = 0; k < t->nchunks; k++)
            free(t->chunks[k]);
    free(t->files);
    free(t->regions);
    free(t->starts);
    free(t->coarse);
    free(t->slot_map);
    free(t->pool);
    free(t->ring);
    free(t->chunks);
    pthread_mutex_destroy(&t->fd_lock);
    pthread_mutex_destroy(&t->ra_lock);
    pthread_cond_destroy(&t->ra_cond);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static PyMethodDef Table_methods[] = {
    {"read", (PyCFunction)Table_read, METH_VARARGS, read_doc},
    {"put_block", (PyCFunction)Table_put_block, METH_VARARGS,
     "put_block(block, data): keep a rendered metadata block for later reads (GIL held)."},
    {"has_block", (PyCFunction)Table_has_block, METH_O,
     "has_block(block): whether that metadata block is in the cache now."},
    {"mark", (PyCFunction)Table_mark, METH_VARARGS,
     "mark(offset, length): count the blocks of a request Python finished as read."},
    {"stats", (PyCFunction)Table_stats, METH_NOARGS, "Counters of the compiled path, as a dict."},
    {"close", (PyCFunction)Table_close, METH_NOARGS, "Close the cached descriptors not in use."},
    {"use_leases", (PyCFunction)Table_use_leases, METH_O,
     "use_leases(on): lease sources still read a while after they were opened, so their\n"
     "reads skip the fstat (start_leases() first; see _leases.c)."},
    {"use_mappings", (PyCFunction)Table_use_mappings, METH_O,
     "use_mappings(on): copy reads of sources still read a while after they were opened\n"
     "from a mapping of the file, not by pread (default on; see _mapped.c)."},
    {"set_readahead", (PyCFunction)Table_set_readahead, METH_O,
     "set_readahead(nbytes): the largest window read ahead of a sequential reader (0: none)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ext4gen.render._fastread.Table",
    .tp_doc = "A flat region table and the state the compiled read path keeps for one image.",
    .tp_basicsize = sizeof(Table),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Table_new,
    .tp_init = (initproc)Table_init,
    .tp_dealloc = (destructor)Table_dealloc,
    .tp_methods = Table_methods,
};

static PyObject *set_fd_budget(PyObject *mod, PyObject *arg) {
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    __atomic_store_n(&g_budget, n < 1 ? 1 : n > INT32_MAX ? INT32_MAX : (int)n, __ATOMIC_RELAXED);
    return PyLong_FromLong(__atomic_load_n(&g_open, __ATOMIC_RELAXED));
}

/* The nbdkit filter's entry point (ext4gen/serve/_nbdfilter.c): the whole request or
 * nothing, never the GIL; -1 sends it on to the plugin. */
static int filter_read(void *table, void *buf, uint64_t count, uint64_t offset) {
    Table *t = table;
    uint64_t size = t->regions[t->n].start;
    if (offset > size || count > size - offset)
        return -1;
    misses_t m = {0};
    rerr_t e = {0};
    do_read(t, buf, offset, count, &m, &e, 1);
    free(m.r);
    return e.failed || m.n || m.oom ? -1 : 0;
}

typedef int (*register_fn)(const char *, void *, int (*)(void *, void *, uint64_t, uint64_t));

static PyObject *publish(PyObject *mod, PyObject *args) {
    const char *name;
    PyObject *table;
    if (!PyArg_ParseTuple(args, "sO!", &name, &TableType, &table))
        return NULL;
    register_fn reg = (register_fn)dlsym(RTLD_DEFAULT, "ext4gen_filter_register");
    if (!reg)
        Py_RETURN_FALSE;
    Py_INCREF(table); /* the filter reads through it for the rest of the process */
    if (reg(name, table, filter_read) != 0) {
        Py_DECREF(table);
        return PyErr_NoMemory();
    }
    Py_RETURN_TRUE;
}

static PyObject *start_leases(PyObject *mod, PyObject *noargs) {
    const char *why = leases_start();
    return why ? PyUnicode_FromString(why) : Py_NewRef(Py_None);
}

static PyObject *set_lease_after(PyObject *mod, PyObject *arg) {
    double secs = PyFloat_AsDouble(arg);
    if (secs == -1.0 && PyErr_Occurred())
        return NULL;
    __atomic_store_n(&g_lease_after, (int64_t)(secs * 1e9), __ATOMIC_RELAXED);
    Py_RETURN_NONE;
}

static PyObject *held_leases(PyObject *mod, PyObject *noargs) {
    return PyLong_FromLong(leases_held());
}

static PyObject *held_maps(PyObject *mod, PyObject *noargs) {
    return PyLong_FromLong(maps_held());
}

/* The Table constructor's inputs, read from the renderer's region records (image.py) in C:
 * a Python loop over them cost 2.5 us a region, a quarter of a second for T2's 98,000, on every
 * plan and every restart.  The kind of each record is its exact type; a data region with no
 * plain host range (``host`` None) and any other type are left to Python (PY).  Each distinct
 * host file object becomes one files entry, in order of first use. */
static int attr_ll(PyObject *o, PyObject *name, long long *out) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (!v)
        return -1;
    *out = PyLong_AsLongLong(v);
    Py_DECREF(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static PyObject *table_inputs(PyObject *self, PyObject *args) {
    PyObject *regions, *data_t, *zero_t, *meta_t;
    unsigned long long size;
    if (!PyArg_ParseTuple(args, "OKOOO", &regions, &size, &data_t, &zero_t, &meta_t))
        return NULL;
    static PyObject *s_start, *s_end, *s_host, *s_file_offset, *s_nbytes, *s_path, *s_pin;
    if (!s_start && (!(s_start = PyUnicode_InternFromString("start")) ||
                     !(s_end = PyUnicode_InternFromString("end")) ||
                     !(s_host = PyUnicode_InternFromString("host")) ||
                     !(s_file_offset = PyUnicode_InternFromString("file_offset")) ||
                     !(s_nbytes = PyUnicode_InternFromString("nbytes")) ||
                     !(s_path = PyUnicode_InternFromString("path")) ||
                     !(s_pin = PyUnicode_InternFromString("pin"))))
        return NULL;
    PyObject *seq = PySequence_Fast(regions, "table_inputs: regions must be a sequence");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *starts = PyBytes_FromStringAndSize(NULL, (n + 1) * 8);
    PyObject *kinds = PyBytes_FromStringAndSize(NULL, n);
    PyObject *aux = PyBytes_FromStringAndSize(NULL, n * 8);
    PyObject *offs = PyBytes_FromStringAndSize(NULL, n * 8);
    PyObject *lens = PyBytes_FromStringAndSize(NULL, n * 8);
    PyObject *files = PyList_New(0), *index = PyDict_New(), *result = NULL;
    if (!starts || !kinds || !aux || !offs || !lens || !files || !index)
        goto out;
    uint64_t *v_starts = (uint64_t *)PyBytes_AS_STRING(starts);
    uint8_t *v_kinds = (uint8_t *)PyBytes_AS_STRING(kinds);
    int64_t *v_aux = (int64_t *)PyBytes_AS_STRING(aux), *v_offs = (int64_t *)PyBytes_AS_STRING(offs),
            *v_lens = (int64_t *)PyBytes_AS_STRING(lens);
    long long nslots = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *r = PySequence_Fast_GET_ITEM(seq, k);
        PyObject *tp = (PyObject *)Py_TYPE(r);
        long long start;
        if (attr_ll(r, s_start, &start))
            goto out;
        v_starts[k] = (uint64_t)start;
        v_kinds[k] = K_PY;
        v_aux[k] = v_offs[k] = v_lens[k] = 0;
        if (tp == zero_t) {
            v_kinds[k] = K_ZERO;
        } else if (tp == meta_t) {
            long long end;
            if (attr_ll(r, s_end, &end))
                goto out;
            v_kinds[k] = K_META;
            v_aux[k] = nslots;
            nslots += (end - start) / BLOCK;
        } else if (tp == data_t) {
            PyObject *host = PyObject_GetAttr(r, s_host);
            if (!host)
                goto out;
            if (host != Py_None) {
                PyObject *at = PyDict_GetItemWithError(index, host); /* HostFile: by identity */
                long long fi = PyList_GET_SIZE(files);
                if (at) {
                    fi = PyLong_AsLongLong(at);
                } else if (PyErr_Occurred()) {
                    fi = -1;
                } else {
                    PyObject *path = PyObject_GetAttr(host, s_path);
                    PyObject *pin = PyObject_GetAttr(host, s_pin);
                    PyObject *pint = pin ? PySequence_Tuple(pin) : NULL;
                    PyObject *entry = NULL, *num = PyLong_FromLongLong(fi);
                    if (path && pint && PyTuple_GET_SIZE(pint) == 5) {
                        entry = PyTuple_Pack(6, path, PyTuple_GET_ITEM(pint, 0), PyTuple_GET_ITEM(pint, 1),
                                             PyTuple_GET_ITEM(pint, 2), PyTuple_GET_ITEM(pint, 3),
                                             PyTuple_GET_ITEM(pint, 4));
                    } else if (pint) {
                        PyErr_SetString(PyExc_ValueError, "table_inputs: a host file's pin has 5 fields");
                    }
                    if (!entry || !num || PyList_Append(files, entry) || PyDict_SetItem(index, host, num))
                        fi = -1;
                    Py_XDECREF(path);
                    Py_XDECREF(pin);
                    Py_XDECREF(pint);
                    Py_XDECREF(entry);
                    Py_XDECREF(num);
                }
                long long off, len;
                if (fi < 0 || attr_ll(r, s_file_offset, &off) || attr_ll(r, s_nbytes, &len)) {
                    Py_DECREF(host);
                    goto out;
                }
                v_kinds[k] = K_FILE;
                v_aux[k] = fi;
                v_offs[k] = off;
                v_lens[k] = len;
            }
            Py_DECREF(host);
        }
    }
    v_starts[n] = (uint64_t)size;
    result = Py_BuildValue("(OOOOOOL)", starts, kinds, aux, offs, lens, files, nslots);
out:
    Py_DECREF(seq);
    Py_XDECREF(starts);
    Py_XDECREF(kinds);
    Py_XDECREF(aux);
    Py_XDECREF(offs);
    Py_XDECREF(lens);
    Py_XDECREF(files);
    Py_XDECREF(index);
    return result;
}

static PyMethodDef module_methods[] = {
    {"table_inputs", table_inputs, METH_VARARGS,
     "table_inputs(regions, size, DataRegion, ZeroRegion, MetaRegion) -> (starts, kinds, aux,\n"
     "file_offs, data_lens, files, nslots): Table's arguments, the arrays as bytes."},
    {"start_leases", start_leases, METH_NOARGS,
     "start_leases() -> None | str: start the lease watcher thread in this process (call it\n"
     "after any fork); a str says why leases cannot be used here."},
    {"leases_held", held_leases, METH_NOARGS, "leases_held() -> int: source leases held now."},
    {"maps_held", held_maps, METH_NOARGS, "maps_held() -> int: source mappings held now."},
    {"set_lease_after", set_lease_after, METH_O,
     "set_lease_after(seconds): how long a descriptor must have been open before a read\n"
     "through it takes a lease and maps the source (default 1; a test hook)."},
    {"publish", publish, METH_VARARGS,
     "publish(export_name, table) -> bool: let ext4gen's nbdkit filter answer this export's reads\n"
     "(False: the filter is not loaded in this process)."},
    {"set_fd_budget", set_fd_budget, METH_O,
     "set_fd_budget(n) -> open: descriptors all tables together may keep open (now open: returned)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastread",
    "The compiled read path of ext4gen.render.image (see the source's header comment).", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__fastread(void) {
    if (PyType_Ready(&TableType) < 0)
        return NULL;
    static int forks_handled;
    if (!forks_handled++ && pthread_atfork(fork_prepare, fork_parent, fork_child)) {
        PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "Table", (PyObject *)&TableType) < 0 ||
        PyModule_AddIntConstant(m, "ZERO", K_ZERO) || PyModule_AddIntConstant(m, "META", K_META) ||
        PyModule_AddIntConstant(m, "FILE", K_FILE) || PyModule_AddIntConstant(m, "PY", K_PY)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
