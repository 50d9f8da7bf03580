"""Experiment, not product code: the ext4gen plugin with a cheaper host-fd cache.

    EXP_PATCH=evict|limit|evict+limit nbdkit python bench/exp_fdcache_plugin.py source=...

The serving profile (bench_serve.py's profile step) puts about a third of the
time inside ``pread`` in ``ext4gen.model.sources._FdCache._evict``, which copies the
whole OrderedDict of open descriptors (up to 1,024 keys) whenever the cache is
over its limit, i.e. on every open once a tree has more files than that, and
T1 has 10,000.  This wrapper monkeypatches, before the plugin loads:

* ``evict``: evict from the LRU end without copying every key (O(excess));
* ``limit``: raise RLIMIT_NOFILE to its hard limit and let the cache keep up
  to half of it, so a 10,000-file tree keeps all its descriptors open;
* ``willneed``: on the first read of a data run, ``posix_fadvise(WILLNEED)``
  the whole run in its host file, so a cold source is read ahead while the
  client walks the file (the kernel's own readahead only sees one small file
  read at a time through nbdfuse and the loop device).

bench/exp_fdcache.py measures the effect; the real fix belongs in
ext4gen/sources.py (owned by the core developers).
"""

import os
import resource
import sys
from itertools import islice

from ext4gen.model import sources

_patch = os.environ.get("EXP_PATCH", "evict+limit")

if "limit" in _patch:
    _soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))
    sources.FD_CACHE.limit = max(sources.FD_CACHE.limit, _hard // 2)


def _evict(self):
    fds = self._fds
    excess = len(fds) - self.limit
    if excess <= 0:
        return
    # Look only at the oldest entries; in-use ones are skipped, so take a few more.
    for key in list(islice(fds, excess + 64)):
        if len(fds) <= self.limit:
            break
        fd, users = fds[key]
        if users == 0:
            del fds[key]
            os.close(fd)


if "evict" in _patch:
    sources._FdCache._evict = _evict

def _patch_willneed():
    from ext4gen.render.image import Image

    original = Image._data_filler

    def _data_filler(run):
        fill = original(run)
        src = run.source
        hf = getattr(src, "file", None)
        if hf is None or getattr(src, "segments", None) is not None:
            return fill
        first = [True]

        def fill_ahead(mv, rel):
            if first[0]:
                first[0] = False
                fd = sources.FD_CACHE.acquire(hf)
                try:
                    os.posix_fadvise(fd, src.base_offset + run.offset, run.nbytes, os.POSIX_FADV_WILLNEED)
                finally:
                    sources.FD_CACHE.release(hf)
            fill(mv, rel)

        return fill_ahead

    Image._data_filler = staticmethod(_data_filler)


if "willneed" in _patch:
    _patch_willneed()

_here = os.path.dirname(os.path.abspath(sources.__file__))
_plugin = os.path.join(_here, "nbdkit_plugin.py")
if os.path.exists(_plugin):  # the plugin lives in the package since the multi-export work
    from ext4gen.serve.nbdkit_plugin import *  # noqa: F403
    from ext4gen.serve.nbdkit_plugin import API_VERSION  # noqa: F401
else:
    import importlib.util

    _spec = importlib.util.spec_from_file_location(
        "_wrapped_plugin", os.path.join(os.path.dirname(_here), "plugins", "ext4gen_nbdkit.py"))
    _mod = importlib.util.module_from_spec(_spec)
    sys.modules["_wrapped_plugin"] = _mod
    _spec.loader.exec_module(_mod)
    globals().update({k: v for k, v in vars(_mod).items() if not k.startswith("__")})
