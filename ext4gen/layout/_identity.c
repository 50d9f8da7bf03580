/* The per-inode part of identity.py's digest, in C: the same bytes, fed to the same hash.
 *
 * identity_digest hashes, for every inode, a fixed head (number, mode, owners and
 * times, size, device numbers) and whatever else defines it (a symlink target,
 * xattrs, inline bytes, extents, directory entries).  In Python that loop costs
 * about a microsecond per inode, most of it the interpreter's, which is a second
 * of a 1,000,000-file manifest's first serve.  This module writes the same byte
 * stream (identity._digest_inodes is its definition, and the tests compare the
 * two) into a buffer that it hands to the hash's ``update`` 64 KiB at a time.
 * The rare parts stay in Python: the xattrs' text and a generator's description
 * come from callables the caller passes, so there is one definition of each.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define NS 1000000000LL
#define BUF 65536

typedef struct {
    PyObject *update;
    size_t len;
    unsigned char buf[BUF];
} out_t;

/* Hash n bytes at p: update(memoryview), no copy. */
static int update(out_t *o, const void *p, size_t n)
{
    PyObject *view = PyMemoryView_FromMemory((char *)p, (Py_ssize_t)n, PyBUF_READ);
    if (!view)
        return -1;
    PyObject *r = PyObject_CallOneArg(o->update, view);
    Py_DECREF(view);
    if (!r)
        return -1;
    Py_DECREF(r);
    return 0;
}

static int flush(out_t *o)
{
    if (o->len && update(o, o->buf, o->len) < 0)
        return -1;
    o->len = 0;
    return 0;
}

static int put(out_t *o, const void *p, size_t n)
{
    if (o->len + n > BUF) {
        if (flush(o) < 0)
            return -1;
        if (n > BUF)  /* a large piece (a big directory's entries): on its own */
            return update(o, p, n);
    }
    memcpy(o->buf + o->len, p, n);
    o->len += n;
    return 0;
}

static int put_bytes(out_t *o, PyObject *b)
{
    char *p;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(b, &p, &n) < 0)
        return -1;
    return put(o, p, (size_t)n);
}

static void le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* struct's "I": an int in 0 .. 2**32-1, else struct.error's cousin */
static int u32_of(PyObject *v, uint32_t *out)
{
    unsigned long x = PyLong_AsUnsignedLong(v);
    if (x == (unsigned long)-1 && PyErr_Occurred())
        return -1;
    if (x > 0xFFFFFFFFUL) {
        PyErr_SetString(PyExc_OverflowError, "value does not fit 32 bits");
        return -1;
    }
    *out = (uint32_t)x;
    return 0;
}

static int u32_attr(PyObject *obj, PyObject *name, uint32_t *out)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (!v)
        return -1;
    int r = u32_of(v, out);
    Py_DECREF(v);
    return r;
}

/* A time in ns as (seconds "q", ns "I"), floor division as Python's // and %. */
static int put_time(unsigned char *p, PyObject *meta, PyObject *name, PyObject *ns_obj)
{
    PyObject *t = PyObject_GetAttr(meta, name);
    if (!t)
        return -1;
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(t, &overflow);
    long long sec;
    unsigned long long ns;
    if (v == -1 && PyErr_Occurred()) {
        Py_DECREF(t);
        return -1;
    }
    if (!overflow) {
        sec = v / NS;
        long long rem = v % NS;
        if (rem < 0) {
            rem += NS;
            sec -= 1;
        }
        ns = (unsigned long long)rem;
    } else {  /* past 2**63 ns (year 2262): Python's divmod */
        PyObject *qr = PyNumber_Divmod(t, ns_obj);
        if (!qr) {
            Py_DECREF(t);
            return -1;
        }
        sec = PyLong_AsLongLong(PyTuple_GET_ITEM(qr, 0));
        ns = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(qr, 1));
        Py_DECREF(qr);
        if (PyErr_Occurred()) {
            Py_DECREF(t);
            return -1;
        }
    }
    Py_DECREF(t);
    le64(p, (uint64_t)sec);
    le32(p + 8, (uint32_t)ns);
    return 0;
}

static PyObject *s_meta, *s_uid, *s_gid, *s_atime, *s_mtime, *s_ctime, *s_crtime, *s_ino, *s_mode,
    *s_kind, *s_source, *s_target, *s_rdev, *s_xattrs, *s_size, *s_data, *s_extents, *s_entries,
    *s_digest;

/* The 56 bytes of a Meta: uid, gid, then the four times. */
static int pack_meta(unsigned char *p, PyObject *m, PyObject *ns_obj)
{
    uint32_t uid, gid;
    if (u32_attr(m, s_uid, &uid) < 0 || u32_attr(m, s_gid, &gid) < 0)
        return -1;
    le32(p, uid);
    le32(p + 4, gid);
    PyObject *names[4] = {s_atime, s_mtime, s_ctime, s_crtime};
    for (int i = 0; i < 4; i++)
        if (put_time(p + 8 + 12 * i, m, names[i], ns_obj) < 0)
            return -1;
    return 0;
}

/* Node.size without the property: a file's source size, a symlink's target length, else 0. */
static int node_size(PyObject *kind, PyObject *src, PyObject *target, PyObject *file_kind,
                     PyObject *symlink_kind, uint64_t *out)
{
    int is = PyObject_RichCompareBool(kind, file_kind, Py_EQ);
    if (is < 0)
        return -1;
    if (is) {
        if (src == Py_None) {
            PyErr_SetString(PyExc_AssertionError, "a file node without a source");
            return -1;
        }
        PyObject *v = PyObject_GetAttr(src, s_size);
        if (!v)
            return -1;
        *out = PyLong_AsUnsignedLongLong(v);
        Py_DECREF(v);
        return PyErr_Occurred() ? -1 : 0;
    }
    is = PyObject_RichCompareBool(kind, symlink_kind, Py_EQ);
    if (is < 0)
        return -1;
    Py_ssize_t n = is ? PyObject_Length(target) : 0;
    if (n < 0)
        return -1;
    *out = (uint64_t)n;
    return 0;
}

static int put_call(out_t *o, PyObject *fn, PyObject *arg)
{
    PyObject *b = PyObject_CallOneArg(fn, arg);
    if (!b)
        return -1;
    int r = b == Py_None ? 0 : put_bytes(o, b);
    Py_DECREF(b);
    return r;
}

typedef struct {
    PyObject *xattr_bytes, *source_bytes, *inline_type, *plain_types, *file_kind, *symlink_kind,
        *sha256, *ns_obj;
} ctx_t;

static int put_source(out_t *o, PyObject *src, ctx_t *c)
{
    if (src == Py_None)
        return 0;
    PyTypeObject *t = Py_TYPE(src);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(c->plain_types); i++)
        if ((PyObject *)t == PyTuple_GET_ITEM(c->plain_types, i))
            return 0;  /* zeros and host files: their size and extents say it all */
    if ((PyObject *)t != c->inline_type)  /* generators, subclasses: Python decides */
        return put_call(o, c->source_bytes, src);
    PyObject *data = PyObject_GetAttr(src, s_data);
    if (!data)
        return -1;
    PyObject *h = PyObject_CallOneArg(c->sha256, data);
    Py_DECREF(data);
    if (!h)
        return -1;
    PyObject *d = PyObject_CallMethodNoArgs(h, s_digest);
    Py_DECREF(h);
    if (!d)
        return -1;
    int r = put_bytes(o, d);
    Py_DECREF(d);
    return r;
}

static int put_entries(out_t *o, PyObject *entries)
{
    PyObject *seq = PySequence_Fast(entries, "directory entries must be a sequence");
    if (!seq)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *e = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(e) || PyTuple_GET_SIZE(e) != 3) {
            PyErr_SetString(PyExc_TypeError, "a directory entry is (name, ino, file type)");
            goto fail;
        }
        uint32_t ino;
        unsigned char le[4];
        if (put_bytes(o, PyTuple_GET_ITEM(e, 0)) < 0 || u32_of(PyTuple_GET_ITEM(e, 1), &ino) < 0)
            goto fail;
        le32(le, ino);
        if (put(o, le, 4) < 0)
            goto fail;
    }
    Py_DECREF(seq);
    return 0;
fail:
    Py_DECREF(seq);
    return -1;
}

static int put_inode(out_t *o, PyObject *ip, PyObject *node, ctx_t *c, PyObject **last_meta,
                     unsigned char *head)
{
    int r = -1;
    PyObject *m = NULL, *kind = NULL, *src = NULL, *target = NULL, *rdev = NULL, *xattrs = NULL,
             *extents = NULL, *entries = NULL;
    if (!(m = PyObject_GetAttr(node, s_meta)))
        goto out;
    if (m != *last_meta) {  /* a manifest's entries share one Meta per (mode, uid, gid) */
        if (pack_meta(head + 8, m, c->ns_obj) < 0)
            goto out;
        Py_XSETREF(*last_meta, Py_NewRef(m));
    }
    uint32_t ino, mode, major, minor;
    uint64_t size;
    if (u32_attr(ip, s_ino, &ino) < 0 || u32_attr(ip, s_mode, &mode) < 0)
        goto out;
    if (!(kind = PyObject_GetAttr(node, s_kind)) || !(src = PyObject_GetAttr(node, s_source))
        || !(target = PyObject_GetAttr(node, s_target)) || !(rdev = PyObject_GetAttr(node, s_rdev)))
        goto out;
    if (node_size(kind, src, target, c->file_kind, c->symlink_kind, &size) < 0)
        goto out;
    if (!PyTuple_Check(rdev) || PyTuple_GET_SIZE(rdev) != 2) {
        PyErr_SetString(PyExc_TypeError, "rdev must be a (major, minor) tuple");
        goto out;
    }
    if (u32_of(PyTuple_GET_ITEM(rdev, 0), &major) < 0 || u32_of(PyTuple_GET_ITEM(rdev, 1), &minor) < 0)
        goto out;
    le32(head, ino);
    le32(head + 4, mode);
    le64(head + 64, size);
    le32(head + 72, major);
    le32(head + 76, minor);
    if (put(o, head, 80) < 0)
        goto out;
    int truth = PyObject_IsTrue(target);
    if (truth < 0 || (truth && put_bytes(o, target) < 0))
        goto out;
    if (!(xattrs = PyObject_GetAttr(node, s_xattrs)))
        goto out;
    truth = PyObject_IsTrue(xattrs);
    if (truth < 0 || (truth && put_call(o, c->xattr_bytes, xattrs) < 0))
        goto out;
    if (put_source(o, src, c) < 0)
        goto out;
    if (!(extents = PyObject_GetAttr(ip, s_extents)))
        goto out;
    truth = PyObject_IsTrue(extents);
    if (truth < 0)
        goto out;
    if (truth) {
        PyObject *text = PyObject_Repr(extents);
        if (!text)
            goto out;
        Py_ssize_t n;
        const char *utf8 = PyUnicode_AsUTF8AndSize(text, &n);
        int bad = !utf8 || put(o, utf8, (size_t)n) < 0;
        Py_DECREF(text);
        if (bad)
            goto out;
    }
    if (!(entries = PyObject_GetAttr(ip, s_entries)))
        goto out;
    truth = PyObject_IsTrue(entries);
    if (truth < 0 || (truth && put_entries(o, entries) < 0))
        goto out;
    r = 0;
out:
    Py_XDECREF(m);
    Py_XDECREF(kind);
    Py_XDECREF(src);
    Py_XDECREF(target);
    Py_XDECREF(rdev);
    Py_XDECREF(xattrs);
    Py_XDECREF(extents);
    Py_XDECREF(entries);
    return r;
}

static PyObject *digest_inodes(PyObject *mod, PyObject *args)
{
    PyObject *update, *inodes, *nodes;
    ctx_t c;
    if (!PyArg_ParseTuple(args, "OOOOOOO!OOO:digest_inodes", &update, &inodes, &nodes,
                          &c.xattr_bytes, &c.source_bytes, &c.inline_type, &PyTuple_Type,
                          &c.plain_types, &c.file_kind, &c.symlink_kind, &c.sha256))
        return NULL;
    PyObject *ins = PySequence_Fast(inodes, "inodes must be a sequence");
    if (!ins)
        return NULL;
    PyObject *nos = PySequence_Fast(nodes, "nodes must be a sequence");
    if (!nos) {
        Py_DECREF(ins);
        return NULL;
    }
    out_t *o = NULL;
    PyObject *last_meta = NULL, *result = NULL;
    c.ns_obj = PyLong_FromLongLong(NS);
    Py_ssize_t n = PySequence_Fast_GET_SIZE(ins);
    if (!c.ns_obj)
        goto out;
    if (PySequence_Fast_GET_SIZE(nos) != n) {  /* zip(..., strict=True) */
        PyErr_SetString(PyExc_ValueError, "inodes and nodes differ in length");
        goto out;
    }
    if (!(o = PyMem_Malloc(sizeof *o))) {
        PyErr_NoMemory();
        goto out;
    }
    o->update = update;
    o->len = 0;
    unsigned char head[80];  /* ino, mode, the Meta's 56 bytes, size, rdev */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *ip = PySequence_Fast_GET_ITEM(ins, i), *node = PySequence_Fast_GET_ITEM(nos, i);
        if (ip == Py_None || node == Py_None)
            continue;
        if (put_inode(o, ip, node, &c, &last_meta, head) < 0)
            goto out;
    }
    if (flush(o) < 0)
        goto out;
    result = Py_NewRef(Py_None);
out:
    PyMem_Free(o);
    Py_XDECREF(last_meta);
    Py_XDECREF(c.ns_obj);
    Py_DECREF(ins);
    Py_DECREF(nos);
    return result;
}

static PyMethodDef methods[] = {
    {"digest_inodes", digest_inodes, METH_VARARGS,
     "digest_inodes(update, inodes, nodes, xattr_bytes, source_bytes, InlineSource, "
     "(plain source types), FILE, SYMLINK, sha256): identity._digest_inodes, compiled"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_identity", "The per-inode part of the image's identity digest.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__identity(void)
{
    struct { PyObject **slot; const char *name; } names[] = {
        {&s_meta, "meta"}, {&s_uid, "uid"}, {&s_gid, "gid"}, {&s_atime, "atime"},
        {&s_mtime, "mtime"}, {&s_ctime, "ctime"}, {&s_crtime, "crtime"}, {&s_ino, "ino"},
        {&s_mode, "mode"}, {&s_kind, "kind"}, {&s_source, "source"}, {&s_target, "target"},
        {&s_rdev, "rdev"}, {&s_xattrs, "xattrs"}, {&s_size, "size"}, {&s_data, "data"},
        {&s_extents, "extents"}, {&s_entries, "entries"}, {&s_digest, "digest"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!(*names[i].slot = PyUnicode_InternFromString(names[i].name)))
            return NULL;
    return PyModule_Create(&module);
}
