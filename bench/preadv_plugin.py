"""The trivial nbdkit Python plugin: ``os.preadv`` of one image file into nbdkit's buffer.

    nbdkit python bench/preadv_plugin.py file=IMAGE

This is the ceiling any Python plugin can reach on this machine (the embedded
interpreter, the GIL, one syscall per request, no lookup, no generation), so
the ext4gen plugin's region lookup and metadata cost is measured against it.
It promises the same things as the ext4gen plugin (parallel, multi-conn,
read-only) so nbdkit and its clients behave the same way with both.
"""

import os

import nbdkit

API_VERSION = 2

_path = None
_fd = -1


def config(key, value):
    global _path
    if key != "file":
        raise RuntimeError(f"unknown parameter {key}")
    _path = value


def config_complete():
    global _fd
    if _path is None:
        raise RuntimeError("file=IMAGE is required")
    _fd = os.open(_path, os.O_RDONLY | os.O_CLOEXEC)


def thread_model():
    return nbdkit.THREAD_MODEL_PARALLEL


def open(readonly):
    return 1


def get_size(h):
    return os.fstat(_fd).st_size


def can_write(h):
    return False


def can_multi_conn(h):
    return True


def pread(h, buf, offset, flags):
    n = os.preadv(_fd, [buf], offset)
    if n != len(buf):
        raise OSError(5, "short read")
