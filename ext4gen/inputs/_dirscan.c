/* Lists a host directory tree ahead of the import, without the GIL.
 *
 * A directory import spends about half its time in three system calls per
 * entry (the listing, an lstat, a listxattr probe) made through the
 * interpreter.  Scanner walks the tree depth first, in exactly the order
 * hostdir._walk pops its stack (names sorted bytewise, subdirectories pushed in
 * name order), and hands back batches of listings from another thread, so the
 * import only turns them into nodes.  It reads nothing else: a directory it
 * cannot list as the import would (an error, an entry gone before its lstat)
 * comes back without entries and the import lists it itself, which reports the
 * error exactly as before.
 *
 * Each lstat comes back as an os.stat_result filled the way CPython 3.11's
 * posixmodule fills it (stat_layout_ok() checks the field count; the Python
 * side compares one result with os.lstat before trusting the module).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

static PyTypeObject *stat_result_type;

enum { XATTRS_NONE = 0, XATTRS_SOME = 1, XATTRS_ASK = 2 };  /* ASK: Python reads them (or fails) */

typedef struct {
    char *name;
    struct stat st;
    unsigned char xattrs;
} entry_t;

typedef struct {
    char *path;           /* owned */
    size_t path_len;
    int ok;               /* 0: the import lists it itself */
    struct stat st;
    entry_t *entries;
    size_t n;
} listing_t;

typedef struct {
    char *path;
    size_t len;
} pending_t;

typedef struct {
    PyObject_HEAD
    pending_t *stack;
    size_t depth, cap;
    dev_t top_dev;
    int one_file_system;
} Scanner;

static int push(Scanner *s, const char *path, size_t len)
{
    if (s->depth == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        pending_t *grown = realloc(s->stack, cap * sizeof *grown);
        if (!grown)
            return -1;
        s->stack = grown;
        s->cap = cap;
    }
    char *copy = malloc(len + 1);
    if (!copy)
        return -1;
    memcpy(copy, path, len + 1);
    s->stack[s->depth].path = copy;
    s->stack[s->depth].len = len;
    s->depth++;
    return 0;
}

static int by_name(const void *a, const void *b)
{
    /* bytewise, as Python sorts bytes: strcmp compares unsigned chars, names hold no NUL */
    return strcmp(((const entry_t *)a)->name, ((const entry_t *)b)->name);
}

static void free_entries(listing_t *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->entries[i].name);
    free(l->entries);
    l->entries = NULL;
    l->n = 0;
}

/* listxattrat(2), Linux 6.13: the probe relative to the directory's descriptor, without
 * resolving the entry's whole path again (a fifth of the scan on 100,000 entries).  The
 * number is the same on every architecture with the generic table; elsewhere, and where
 * the kernel (or a seccomp filter: EPERM) refuses it, llistxattr on the full path. */
#if defined(__x86_64__) || defined(__aarch64__) || defined(__riscv)
#include <sys/syscall.h>
#define NR_LISTXATTRAT 465
static int listxattrat_works = 1;
#endif

static ssize_t size_of_xattr_names(int dfd, char *buf, size_t dir_len, const char *name)
{
#ifdef NR_LISTXATTRAT
    if (__atomic_load_n(&listxattrat_works, __ATOMIC_RELAXED)) {
        long r = syscall(NR_LISTXATTRAT, dfd, name, AT_SYMLINK_NOFOLLOW, NULL, (size_t)0);
        if (r >= 0 || (errno != ENOSYS && errno != EPERM))
            return r;
        __atomic_store_n(&listxattrat_works, 0, __ATOMIC_RELAXED);
    }
#else
    (void)dfd;
#endif
    size_t nlen = strlen(name);
    if (dir_len + 1 + nlen >= PATH_MAX) {
        errno = ENAMETOOLONG;
        return -1;
    }
    buf[dir_len] = '/';
    memcpy(buf + dir_len + 1, name, nlen + 1);
    ssize_t r = llistxattr(buf, NULL, 0);
    int saved = errno;
    buf[dir_len] = '\0';
    errno = saved;
    return r;
}

static unsigned char probe_xattrs(int dfd, char *buf, size_t dir_len, const char *name)
{
    ssize_t r = size_of_xattr_names(dfd, buf, dir_len, name);
    if (r == 0)
        return XATTRS_NONE;
    if (r < 0 && (errno == ENOTSUP || errno == EOPNOTSUPP))
        return XATTRS_NONE;  /* what read_xattrs makes of it */
    return r > 0 ? XATTRS_SOME : XATTRS_ASK;
}

/* List one directory as hostdir._list_dir does; l->ok = 0 on anything unusual. */
static void list_one(Scanner *s, listing_t *l)
{
    int flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW;
    int fd = open(l->path, flags | O_NOATIME);
    if (fd < 0 && errno == EPERM)
        fd = open(l->path, flags);
    if (fd < 0)
        return;
    if (fstat(fd, &l->st) != 0) {
        close(fd);
        return;
    }
    int dfd = dup(fd);
    DIR *dir = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (!dir) {
        if (dfd >= 0)
            close(dfd);
        close(fd);
        return;
    }
    size_t cap = 0;
    struct dirent *d;
    int failed = 0;
    errno = 0;
    while ((d = readdir(dir)) != NULL) {
        if (d->d_name[0] == '.' && (d->d_name[1] == '\0' || (d->d_name[1] == '.' && d->d_name[2] == '\0')))
            continue;
        if (l->n == cap) {
            size_t ncap = cap ? cap * 2 : 32;
            entry_t *grown = realloc(l->entries, ncap * sizeof *grown);
            if (!grown) {
                failed = 1;
                break;
            }
            l->entries = grown;
            cap = ncap;
        }
        char *name = strdup(d->d_name);
        if (!name) {
            failed = 1;
            break;
        }
        l->entries[l->n++].name = name;
        errno = 0;
    }
    if (errno != 0)
        failed = 1;
    closedir(dir);
    if (!failed && l->n)
        qsort(l->entries, l->n, sizeof *l->entries, by_name);
    char buf[PATH_MAX];
    int path_fits = l->path_len < PATH_MAX;
    if (path_fits)
        memcpy(buf, l->path, l->path_len + 1);
    for (size_t i = 0; !failed && i < l->n; i++) {
        entry_t *e = &l->entries[i];
        if (fstatat(fd, e->name, &e->st, AT_SYMLINK_NOFOLLOW) != 0) {
            failed = 1;  /* gone since listed: the import's own listing says so */
            break;
        }
        e->xattrs = path_fits ? probe_xattrs(fd, buf, l->path_len, e->name) : XATTRS_ASK;
    }
    close(fd);
    if (failed) {
        free_entries(l);
        return;
    }
    l->ok = 1;
    /* subdirectories, pushed in name order: the last is listed next, as the import pops */
    for (size_t i = 0; i < l->n; i++) {
        entry_t *e = &l->entries[i];
        if (!S_ISDIR(e->st.st_mode) || (s->one_file_system && e->st.st_dev != s->top_dev))
            continue;
        size_t nlen = strlen(e->name);
        char *child = malloc(l->path_len + 1 + nlen + 1);
        if (!child) {
            free_entries(l);
            l->ok = 0;
            return;
        }
        memcpy(child, l->path, l->path_len);
        child[l->path_len] = '/';
        memcpy(child + l->path_len + 1, e->name, nlen + 1);
        int pushed = push(s, child, l->path_len + 1 + nlen);
        free(child);
        if (pushed != 0) {
            free_entries(l);
            l->ok = 0;
            return;
        }
    }
}

/* -- os.stat_result, as posixmodule.c (3.11) fills it on Linux -------------------- */

static int set_time(PyObject *v, int index, time_t sec, long nsec)
{
    PyObject *s = PyLong_FromLongLong((long long)sec);
    PyObject *frac = PyLong_FromLong(nsec);
    PyObject *billion = PyLong_FromLong(1000000000L);
    PyObject *s_ns = (s && billion) ? PyNumber_Multiply(s, billion) : NULL;
    PyObject *total = (s_ns && frac) ? PyNumber_Add(s_ns, frac) : NULL;
    PyObject *f = PyFloat_FromDouble((double)sec + (double)nsec * 1e-9);
    Py_XDECREF(frac);
    Py_XDECREF(billion);
    Py_XDECREF(s_ns);
    if (!s || !total || !f) {
        Py_XDECREF(s);
        Py_XDECREF(total);
        Py_XDECREF(f);
        return -1;
    }
    PyStructSequence_SET_ITEM(v, index, s);
    PyStructSequence_SET_ITEM(v, index + 3, f);
    PyStructSequence_SET_ITEM(v, index + 6, total);
    return 0;
}

static PyObject *dev_obj(dev_t dev)
{
    if (dev == (dev_t)-1)  /* NODEV, as posixmodule's _PyLong_FromDev gives it */
        return PyLong_FromLongLong(-1);
    return PyLong_FromUnsignedLongLong((unsigned long long)dev);
}

static PyObject *uid_obj(unsigned long id)
{
    if (id == (unsigned long)(uid_t)-1)
        return PyLong_FromLong(-1);
    return PyLong_FromUnsignedLong(id);
}

static PyObject *stat_obj(const struct stat *st)
{
    PyObject *v = PyStructSequence_New(stat_result_type);
    if (!v)
        return NULL;
    PyObject *items[] = {
        PyLong_FromLong((long)st->st_mode),
        PyLong_FromUnsignedLongLong((unsigned long long)st->st_ino),
        dev_obj(st->st_dev),
        PyLong_FromLong((long)st->st_nlink),
        uid_obj(st->st_uid),
        uid_obj(st->st_gid),
        PyLong_FromLongLong((long long)st->st_size),
    };
    int bad = 0;
    for (int i = 0; i < 7; i++) {
        if (!items[i])
            bad = 1;
        PyStructSequence_SET_ITEM(v, i, items[i]);
    }
    if (bad || set_time(v, 7, st->st_atim.tv_sec, st->st_atim.tv_nsec) != 0
            || set_time(v, 8, st->st_mtim.tv_sec, st->st_mtim.tv_nsec) != 0
            || set_time(v, 9, st->st_ctim.tv_sec, st->st_ctim.tv_nsec) != 0) {
        Py_DECREF(v);
        return NULL;
    }
    PyObject *rest[] = {
        PyLong_FromLong((long)st->st_blksize),
        PyLong_FromLong((long)st->st_blocks),
        dev_obj(st->st_rdev),
    };
    for (int i = 0; i < 3; i++) {
        if (!rest[i])
            bad = 1;
        PyStructSequence_SET_ITEM(v, 16 + i, rest[i]);
    }
    if (bad) {
        Py_DECREF(v);
        return NULL;
    }
    return v;
}

/* (path, dir stat, names, stats, xattr flags) or (path, None, None, None, None) */
static PyObject *listing_obj(const listing_t *l)
{
    PyObject *path = PyBytes_FromStringAndSize(l->path, (Py_ssize_t)l->path_len);
    if (!path)
        return NULL;
    if (!l->ok)
        return Py_BuildValue("(NOOOO)", path, Py_None, Py_None, Py_None, Py_None);
    PyObject *dir_st = stat_obj(&l->st);
    PyObject *names = PyList_New((Py_ssize_t)l->n);
    PyObject *stats = PyList_New((Py_ssize_t)l->n);
    PyObject *flags = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)l->n);
    if (!dir_st || !names || !stats || !flags)
        goto fail;
    char *f = PyBytes_AS_STRING(flags);
    for (size_t i = 0; i < l->n; i++) {
        PyObject *name = PyBytes_FromString(l->entries[i].name);
        PyObject *st = stat_obj(&l->entries[i].st);
        if (!name || !st) {
            Py_XDECREF(name);
            Py_XDECREF(st);
            goto fail;
        }
        PyList_SET_ITEM(names, (Py_ssize_t)i, name);
        PyList_SET_ITEM(stats, (Py_ssize_t)i, st);
        f[i] = (char)l->entries[i].xattrs;
    }
    return Py_BuildValue("(NNNNN)", path, dir_st, names, stats, flags);
fail:
    Py_DECREF(path);
    Py_XDECREF(dir_st);
    Py_XDECREF(names);
    Py_XDECREF(stats);
    Py_XDECREF(flags);
    return NULL;
}

/* -- Scanner -------------------------------------------------------------------- */

static int Scanner_init(Scanner *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"top", "one_file_system", NULL};
    const char *top;
    Py_ssize_t len;
    int one_fs = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y#|p", kwlist, &top, &len, &one_fs))
        return -1;
    if ((Py_ssize_t)strlen(top) != len) {
        PyErr_SetString(PyExc_ValueError, "path holds a NUL byte");
        return -1;
    }
    struct stat st;
    if (lstat(top, &st) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    self->top_dev = st.st_dev;
    self->one_file_system = one_fs;
    if (push(self, top, (size_t)len) != 0) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void Scanner_dealloc(Scanner *self)
{
    for (size_t i = 0; i < self->depth; i++)
        free(self->stack[i].path);
    free(self->stack);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Scanner_next(Scanner *self, PyObject *arg)
{
    Py_ssize_t budget = PyLong_AsSsize_t(arg);
    if (budget == -1 && PyErr_Occurred())
        return NULL;
    size_t cap = 16, n = 0, entries = 0;
    listing_t *out = calloc(cap, sizeof *out);
    if (!out)
        return PyErr_NoMemory();
    int nomem = 0;
    Py_BEGIN_ALLOW_THREADS
    while (self->depth && entries < (size_t)budget) {
        if (n == cap) {
            listing_t *grown = realloc(out, cap * 2 * sizeof *grown);
            if (!grown) {
                nomem = 1;
                break;
            }
            memset(grown + cap, 0, cap * sizeof *grown);
            out = grown;
            cap *= 2;
        }
        pending_t next = self->stack[--self->depth];
        listing_t *l = &out[n++];
        l->path = next.path;
        l->path_len = next.len;
        list_one(self, l);
        entries += l->n + 1;
    }
    Py_END_ALLOW_THREADS
    PyObject *result = nomem ? PyErr_NoMemory() : PyList_New(0);
    for (size_t i = 0; i < n; i++) {
        if (result) {
            PyObject *item = listing_obj(&out[i]);
            if (!item || PyList_Append(result, item) != 0)
                Py_CLEAR(result);
            Py_XDECREF(item);
        }
        free_entries(&out[i]);
        free(out[i].path);
    }
    free(out);
    return result;
}

static PyMethodDef Scanner_methods[] = {
    {"next", (PyCFunction)Scanner_next, METH_O,
     "next(budget) -> the next listings, about budget entries in all; [] when the walk is done"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ScannerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ext4gen.inputs._dirscan.Scanner",
    .tp_basicsize = sizeof(Scanner),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Scanner(top, one_file_system=False): a depth-first listing of a host tree",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Scanner_init,
    .tp_dealloc = (destructor)Scanner_dealloc,
    .tp_methods = Scanner_methods,
};

static PyObject *lstat_py(PyObject *mod, PyObject *arg)
{
    const char *path;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(arg, (char **)&path, &len) != 0)
        return NULL;
    struct stat st;
    if (lstat(path, &st) != 0)
        return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, arg);
    return stat_obj(&st);
}

/* For tests: the probe a kernel before 6.13 makes (llistxattr on the full path). */
static PyObject *probe_by_path_py(PyObject *mod, PyObject *arg)
{
    int by_path = PyObject_IsTrue(arg);
    if (by_path < 0)
        return NULL;
#ifdef NR_LISTXATTRAT
    int was = !__atomic_load_n(&listxattrat_works, __ATOMIC_RELAXED);
    __atomic_store_n(&listxattrat_works, !by_path, __ATOMIC_RELAXED);
#else
    int was = 1;
#endif
    return PyBool_FromLong(was);
}

static PyMethodDef module_methods[] = {
    {"lstat", lstat_py, METH_O, "lstat(path) -> os.stat_result as this module builds them"},
    {"probe_by_path", probe_by_path_py, METH_O,
     "probe_by_path(flag) -> the previous setting: probe xattrs by full path (llistxattr)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_dirscan", "Depth-first host directory listings, ahead of the import.",
    -1, module_methods,
};

PyMODINIT_FUNC PyInit__dirscan(void)
{
    PyObject *os = PyImport_ImportModule("os");
    if (!os)
        return NULL;
    PyObject *t = PyObject_GetAttrString(os, "stat_result");
    Py_DECREF(os);
    if (!t)
        return NULL;
    PyObject *nf = PyObject_GetAttrString(t, "n_fields");
    long n_fields = nf ? PyLong_AsLong(nf) : -1;
    Py_XDECREF(nf);
    if (!PyType_Check(t) || n_fields != 19) {  /* the layout filled above: Linux, CPython 3.11 */
        Py_DECREF(t);
        PyErr_Format(PyExc_ImportError, "os.stat_result has %ld fields, not the 19 expected", n_fields);
        return NULL;
    }
    stat_result_type = (PyTypeObject *)t;
    if (PyType_Ready(&ScannerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    Py_INCREF(&ScannerType);
    if (PyModule_AddObject(m, "Scanner", (PyObject *)&ScannerType) < 0) {
        Py_DECREF(&ScannerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
