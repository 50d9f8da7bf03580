/*
 * ext4gen.model._pincheck: are these host paths still what a saved plan read?
 *
 * A restart over a saved plan (ext4gen/saved_plan.py) stats every host path the
 * plan depends on: 100,000 for a tree of 100,000 files.  In Python each os.stat
 * builds a stat_result of twenty fields and the comparison runs bytecode; here
 * it is one fstatat(2) and six integer compares, with the GIL released for the
 * whole list.  ext4gen.model.host_reads.unchanged is the pure-Python twin and
 * gives the same answer.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>

/* One pin: mode (-1: not compared), dev, ino, size, mtime ns, ctime ns, all int64.
 * present == 0 in the flags byte means "the path did not exist". */
#define PIN_FIELDS 6

/* first_changed(paths: bytes, flags: bytes, pins: bytes) -> int
 *
 * paths: the NUL-terminated names one after another; flags: one byte per path
 * (bit 0: follow symlinks, bit 1: the path existed); pins: PIN_FIELDS native
 * int64 per path.  Returns the index of the first path whose state differs,
 * or -1 when all hold.
 */
static PyObject *
first_changed(PyObject *self, PyObject *args)
{
    Py_buffer paths, flags, pins;
    if (!PyArg_ParseTuple(args, "y*y*y*", &paths, &flags, &pins))
        return NULL;
    Py_ssize_t n = flags.len, bad = -2;
    if (pins.len != n * PIN_FIELDS * (Py_ssize_t)sizeof(int64_t)
        || (paths.len > 0 && ((const char *)paths.buf)[paths.len - 1] != '\0'))
        goto malformed;
    const char *name = paths.buf, *end = name + paths.len;
    const uint8_t *flag = flags.buf;
    const int64_t *pin = pins.buf;

    bad = -1;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++, pin += PIN_FIELDS) {
        if (name >= end) {
            bad = -2;
            break;
        }
        struct stat st;
        int rc = fstatat(AT_FDCWD, name, &st, (flag[i] & 1) ? 0 : AT_SYMLINK_NOFOLLOW);
        int existed = (flag[i] & 2) != 0;
        if (rc != 0 ? existed
                    : (!existed || (pin[0] >= 0 && (int64_t)st.st_mode != pin[0])
                       || (int64_t)st.st_dev != pin[1] || (int64_t)st.st_ino != pin[2]
                       || (int64_t)st.st_size != pin[3]
                       || (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec != pin[4]
                       || (int64_t)st.st_ctim.tv_sec * 1000000000 + st.st_ctim.tv_nsec != pin[5])) {
            bad = i;
            break;
        }
        name += strlen(name) + 1;
    }
    Py_END_ALLOW_THREADS

    if (bad == -2)
        goto malformed;
    PyBuffer_Release(&paths);
    PyBuffer_Release(&flags);
    PyBuffer_Release(&pins);
    return PyLong_FromSsize_t(bad);

malformed:
    PyBuffer_Release(&paths);
    PyBuffer_Release(&flags);
    PyBuffer_Release(&pins);
    PyErr_SetString(PyExc_ValueError, "pin list is malformed");
    return NULL;
}

static PyMethodDef methods[] = {
    {"first_changed", first_changed, METH_VARARGS,
     "first_changed(paths, flags, pins) -> index of the first changed path, or -1"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pincheck", "Pin checks of host paths without the GIL.", -1, methods,
};

PyMODINIT_FUNC
PyInit__pincheck(void)
{
    return PyModule_Create(&module);
}
