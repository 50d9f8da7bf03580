/*
 * An nbdkit filter that answers reads from the compiled read path before they
 * reach the Python plugin.
 *
 * Why: even with the compiled path (ext4gen/render/_fastread.c), every request
 * enters the embedded interpreter: nbdkit's Python plugin takes the GIL, builds
 * a memoryview and calls ``pread``.  That entry costs more than the read of a
 * warm 4 KiB block.  This filter sits directly in front of the plugin and calls
 * the compiled path's C entry point itself, without Python; only a request it
 * cannot finish (metadata not rendered yet, generators, inline or sparse
 * sources, a source that changed) goes on to the plugin, which then does the
 * whole request again and reports errors as before.  So the bytes and the
 * errors are the plugin's in every case; the filter only skips the interpreter.
 *
 * The two meet inside the nbdkit process: the plugin, once it has planned an
 * export, hands its table to ext4gen_filter_register() (found with dlsym: nbdkit
 * loads filters RTLD_GLOBAL).  Without this filter the plugin serves alone.
 *
 * It is built against the installed nbdkit's headers, and nbdkit refuses a
 * filter built for another version: `ext4gen serve` reads the marker below and
 * adds the filter only when it names the running nbdkit's version.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

__attribute__((used)) static const char marker[] =
    "ext4gen-nbdkit-filter-for=" NBDKIT_VERSION_STRING ";";

/* 0: served whole; anything else: the plugin must do the request. */
typedef int (*ext4gen_read_fn)(void *table, void *buf, uint64_t count, uint64_t offset);

typedef struct {
    char *name;
    void *table;
    ext4gen_read_fn read;
} export_t;

static pthread_mutex_t exports_lock = PTHREAD_MUTEX_INITIALIZER;
static export_t *exports;
static size_t nexports;

NBDKIT_DLL_PUBLIC int ext4gen_filter_register(const char *name, void *table, ext4gen_read_fn read) {
    char *copy = strdup(name);
    if (!copy)
        return -1;
    pthread_mutex_lock(&exports_lock);
    export_t *grown = realloc(exports, (nexports + 1) * sizeof *exports);
    if (!grown) {
        pthread_mutex_unlock(&exports_lock);
        free(copy);
        return -1;
    }
    exports = grown;
    exports[nexports++] = (export_t){copy, table, read};
    pthread_mutex_unlock(&exports_lock);
    return 0;
}

typedef struct {
    void *table; /* NULL: every read goes to the plugin */
    ext4gen_read_fn read;
    uint64_t served, served_bytes, passed;
} handle_t;

static void *ext4gen_open(nbdkit_next_open *next, nbdkit_context *ctx, int readonly,
                          const char *exportname, int is_tls) {
    if (next(ctx, readonly, exportname) == -1)
        return NULL;
    handle_t *h = calloc(1, sizeof *h);
    if (!h) {
        nbdkit_error("ext4gen filter: out of memory");
        return NULL;
    }
    pthread_mutex_lock(&exports_lock);
    for (size_t i = nexports; i-- > 0;) { /* the latest registration of a name wins */
        if (strcmp(exports[i].name, exportname) == 0) {
            h->table = exports[i].table;
            h->read = exports[i].read;
            break;
        }
    }
    pthread_mutex_unlock(&exports_lock);
    return h;
}

static void ext4gen_close(void *handle) {
    handle_t *h = handle;
    nbdkit_debug("ext4gen filter: %" PRIu64 " reads (%" PRIu64 " bytes) answered in C, %" PRIu64
                 " passed to the plugin", h->served, h->served_bytes, h->passed);
    free(h);
}

static int ext4gen_pread(nbdkit_next *next, void *handle, void *buf, uint32_t count,
                         uint64_t offset, uint32_t flags, int *err) {
    handle_t *h = handle;
    if (h->table && h->read(h->table, buf, count, offset) == 0) {
        __atomic_fetch_add(&h->served, 1, __ATOMIC_RELAXED);
        __atomic_fetch_add(&h->served_bytes, count, __ATOMIC_RELAXED);
        return 0;
    }
    __atomic_fetch_add(&h->passed, 1, __ATOMIC_RELAXED);
    return next->pread(next, buf, count, offset, flags, err);
}

static struct nbdkit_filter filter = {
    .name = "ext4gen",
    .longname = "ext4gen compiled read path",
    .open = ext4gen_open,
    .close = ext4gen_close,
    .pread = ext4gen_pread,
};

NBDKIT_REGISTER_FILTER(filter)
