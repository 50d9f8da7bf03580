/*
 * ext4gen.layout._hashread: read and hash a batch of small host files without the GIL.
 *
 * Content dedup needs every block of every file read and hashed before it can
 * place them.  For a tree of many small files the reading is mostly system
 * calls (open, fstat, pread, fstat, close: five per file), which in Python
 * also cost a trip through the interpreter each.  ext4gen.layout.read_ahead
 * runs this in a thread, a batch of files at a time, while the main thread
 * places the blocks of files already read: on two cores the reading then
 * costs the planner almost nothing.
 *
 * Each file is checked against its pin (device, inode, size, mtime, ctime, and
 * a link count above zero) after it is opened and again after it is read, as
 * HostFile.read_parts does.  A file that fails anything comes back as None:
 * the caller then reads it its own way, which names the error.  The keys are
 * xxh3-128 digests in canonical (big-endian) form, the bytes python-xxhash's
 * xxh3_128_digest returns, so both paths give the same keys.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#define BLOCK 4096
#define KEY 16
/* Per file: base offset, bytes to read, then the pin: dev, ino, size, mtime ns, ctime ns. */
#define SPEC_FIELDS 7

static int pin_holds(int fd, const int64_t *spec)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return 0;
    return (int64_t)st.st_dev == spec[2] && (int64_t)st.st_ino == spec[3]
           && (int64_t)st.st_size == spec[4]
           && (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec == spec[5]
           && (int64_t)st.st_ctim.tv_sec * 1000000000 + st.st_ctim.tv_nsec == spec[6]
           && st.st_nlink > 0;
}

/* Read spec[1] bytes at spec[0] of the file into data (zero-padded to whole blocks) and
 * hash each block into keys; 0 on success, -1 on any failure. */
static int read_one(const char *path, const int64_t *spec, unsigned char *data, unsigned char *keys)
{
    /* O_NOATIME needs the owner or CAP_FOWNER; O_NONBLOCK: a FIFO in a file's place fails
     * its pin check instead of blocking the open (regular files ignore it) */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOATIME);
    if (fd < 0 && errno == EPERM)
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return -1;
    int64_t want = spec[1], got = 0;
    int ok = pin_holds(fd, spec);
    while (ok && got < want) {
        ssize_t n = pread(fd, data + got, (size_t)(want - got), spec[0] + got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            ok = 0;
        else
            got += n;
    }
    ok = ok && pin_holds(fd, spec);
    close(fd);
    if (!ok)
        return -1;
    int64_t padded = (want + BLOCK - 1) / BLOCK * BLOCK;
    memset(data + want, 0, (size_t)(padded - want));
    for (int64_t pos = 0; pos < padded; pos += BLOCK) {
        XXH128_canonical_t c;
        XXH128_canonicalFromHash(&c, XXH3_128bits(data + pos, BLOCK));
        memcpy(keys + pos / BLOCK * KEY, c.digest, KEY);
    }
    return 0;
}

/* read_and_hash(paths: bytes, specs: bytes) -> list[tuple[bytes, bytes] | None]
 *
 * paths: the NUL-terminated names one after another; specs: SPEC_FIELDS native int64 per
 * file.  Each item: (data zero-padded to whole 4 KiB blocks, 16-byte keys of its blocks),
 * or None where the file could not be read as pinned.
 */
static PyObject *read_and_hash(PyObject *self, PyObject *args)
{
    Py_buffer paths, specs;
    if (!PyArg_ParseTuple(args, "y*y*", &paths, &specs))
        return NULL;
    PyObject *out = NULL;
    const char **names = NULL;
    unsigned char **bufs = NULL, **keybufs = NULL;
    int *failed = NULL;
    Py_ssize_t n = specs.len / (Py_ssize_t)(SPEC_FIELDS * sizeof(int64_t));
    const int64_t *spec = specs.buf;
    if (specs.len != n * (Py_ssize_t)(SPEC_FIELDS * sizeof(int64_t))
        || (paths.len > 0 && ((const char *)paths.buf)[paths.len - 1] != '\0')) {
        PyErr_SetString(PyExc_ValueError, "malformed paths or specs");
        goto done;
    }
    out = PyList_New(n);
    names = PyMem_Calloc((size_t)n + 1, sizeof(*names));
    bufs = PyMem_Calloc((size_t)n + 1, sizeof(*bufs));
    keybufs = PyMem_Calloc((size_t)n + 1, sizeof(*keybufs));
    failed = PyMem_Calloc((size_t)n + 1, sizeof(*failed));
    if (!out || !names || !bufs || !keybufs || !failed) {
        Py_CLEAR(out);
        PyErr_NoMemory();
        goto done;
    }
    /* The result objects are made first, with the GIL, and filled without it: nothing
     * else can see them until this returns. */
    const char *name = paths.buf, *end = name + paths.len;
    for (Py_ssize_t i = 0; i < n; i++) {
        const int64_t *s = spec + i * SPEC_FIELDS;
        if (name >= end || s[0] < 0 || s[1] < 0 || s[1] > (1 << 30)) {
            Py_CLEAR(out);
            PyErr_SetString(PyExc_ValueError, "malformed paths or specs");
            goto done;
        }
        names[i] = name;
        name += strlen(name) + 1;
        Py_ssize_t nblocks = (Py_ssize_t)((s[1] + BLOCK - 1) / BLOCK);
        PyObject *data = PyBytes_FromStringAndSize(NULL, nblocks * BLOCK);
        PyObject *keys = PyBytes_FromStringAndSize(NULL, nblocks * KEY);
        PyObject *pair = data && keys ? PyTuple_Pack(2, data, keys) : NULL;
        Py_XDECREF(data);
        Py_XDECREF(keys);
        if (!pair) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, i, pair);
        bufs[i] = (unsigned char *)PyBytes_AS_STRING(data);
        keybufs[i] = (unsigned char *)PyBytes_AS_STRING(keys);
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++)
        failed[i] = read_one(names[i], spec + i * SPEC_FIELDS, bufs[i], keybufs[i]) != 0;
    Py_END_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        if (failed[i])
            PyList_SetItem(out, i, Py_NewRef(Py_None)); /* drops the unfilled pair */
    }
done:
    PyMem_Free(names);
    PyMem_Free(bufs);
    PyMem_Free(keybufs);
    PyMem_Free(failed);
    PyBuffer_Release(&paths);
    PyBuffer_Release(&specs);
    return out;
}

static PyMethodDef methods[] = {
    {"read_and_hash", read_and_hash, METH_VARARGS,
     "read_and_hash(paths, specs) -> list of (data, keys) or None, one per file"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_hashread", "Read and hash small host files without the GIL.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__hashread(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m && (PyModule_AddIntConstant(m, "SPEC_FIELDS", SPEC_FIELDS) < 0
              || PyModule_AddIntConstant(m, "MAX_SIZE", 1 << 30) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
