/*
 * ext4gen.serve._logfilter: keeps nbdkit's per-request error lines out of the server log.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/*
 * nbdkit logs every exception a Python callback raises, with its traceback (~350 bytes): a
 * client reading a changed file in a loop would fill the disk.  The plugin reports each
 * failure reason once itself and counts the rest, so this thread sits between fd 2 and the
 * real stderr and drops nbdkit's per-request lines for one callback ("...: pread: error: ..."
 * and the indented traceback lines and blank line that follow), passing everything else
 * through unchanged.  It runs without the GIL: a busy interpreter never blocks nbdkit's
 * writes to stderr. */

static struct {
    int active, in_fd, out_fd, saved_fd;
    pthread_t thread;
    char marker[128];
    uint64_t dropped;
} g_filter;

static void write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

static void *filter_main(void *arg) {
    static char buf[65536];
    size_t have = 0;
    int dropping = 0;
    for (;;) {
        ssize_t got = read(g_filter.in_fd, buf + have, sizeof buf - have);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break;
        have += (size_t)got;
        size_t start = 0;
        for (;;) {
            char *nl = memchr(buf + start, '\n', have - start);
            if (!nl && !(start == 0 && have == sizeof buf)) /* a full buffer: pass it on as is */
                break;
            size_t end = nl ? (size_t)(nl - buf) + 1 : have;
            const char *line = buf + start;
            size_t len = end - start;
            if (memmem(line, len, g_filter.marker, strlen(g_filter.marker))) {
                dropping = 1;
                __atomic_fetch_add(&g_filter.dropped, 1, __ATOMIC_RELAXED);
            } else if (dropping && (line[0] == ' ' || line[0] == '\n')) {
                /* the traceback of a dropped line */
            } else {
                dropping = 0;
                write_all(g_filter.out_fd, line, len);
            }
            start = end;
            if (start == have)
                break;
        }
        memmove(buf, buf + start, have - start);
        have -= start;
    }
    if (have)
        write_all(g_filter.out_fd, buf, have);
    return NULL;
}

static PyObject *start_log_filter(PyObject *mod, PyObject *arg) {
    const char *marker = PyUnicode_AsUTF8(arg);
    if (!marker)
        return NULL;
    if (g_filter.active || strlen(marker) == 0 || strlen(marker) >= sizeof g_filter.marker)
        return PyLong_FromLong(-1);
    int p[2];
    int out = dup(2);
    if (out < 0 || pipe2(p, O_CLOEXEC)) {
        if (out >= 0)
            close(out);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    fcntl(out, F_SETFD, FD_CLOEXEC);
    strcpy(g_filter.marker, marker);
    g_filter.in_fd = p[0];
    g_filter.out_fd = out;
    if (pthread_create(&g_filter.thread, NULL, filter_main, NULL)) {
        close(p[0]);
        close(p[1]);
        close(out);
        return PyLong_FromLong(-1);
    }
    dup2(p[1], 2); /* fd 2 stays without CLOEXEC, as it was */
    close(p[1]);
    g_filter.active = 1;
    return PyLong_FromLong(out); /* the real stderr, for lines that must not wait */
}

static PyObject *stop_log_filter(PyObject *mod, PyObject *noargs) {
    if (g_filter.active) {
        g_filter.active = 0;
        dup2(g_filter.out_fd, 2); /* the pipe's last writer goes: the thread drains and ends */
        struct timespec deadline;
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += 2; /* a copy of the pipe's write end elsewhere must not hang exit */
        int joined;
        Py_BEGIN_ALLOW_THREADS
        joined = pthread_timedjoin_np(g_filter.thread, NULL, &deadline) == 0;
        Py_END_ALLOW_THREADS
        if (joined) {
            close(g_filter.in_fd);
            close(g_filter.out_fd);
        }
    }
    return PyLong_FromUnsignedLongLong(__atomic_load_n(&g_filter.dropped, __ATOMIC_RELAXED));
}

static PyMethodDef module_methods[] = {
    {"start", start_log_filter, METH_O,
     "start(marker) -> fd: drop stderr lines holding marker (and their traceback); "
     "returns a descriptor of the real stderr, or -1 if not started."},
    {"stop", stop_log_filter, METH_NOARGS,
     "stop() -> dropped: restore stderr after draining the filter; lines dropped."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_logfilter",
    "A stderr filter thread for the nbdkit plugin (see the source's comment).", -1, module_methods,
};

PyMODINIT_FUNC PyInit__logfilter(void) { return PyModule_Create(&module); }
