"""Saved plans: serving the same unchanged SOURCE again reuses the whole plan.

A plan is saved in the cache area ``plans`` under a key made of everything
besides host files that decides it (the SOURCE string, the build choices, the
environment variables the loaders read, the working directory, the user, and
the code), together with the pins of every host path the load and plan read
(:mod:`ext4gen.model.host_reads`).  A later serve with the same key re-checks
those pins with one ``stat`` each and, only if every one still holds, takes
the plan instead of reading the tree, its xattrs and its file data again.

What is never saved: plans whose recording is incomplete (a file changed
while it was read, or just before), plans holding a source whose bytes are
not pinned to a host file (generators, callables, HTTP/S3 objects,
container-layer members: their content could change with no pin to show it),
and SOURCEs that are not host paths (standard input).  The serve then plans as
before; the next one tries again.

Entries are sealed like every cache entry (a keyed MAC checked before the
plan is unpickled), so only what ext4gen wrote with this cache's key is ever
loaded; a damaged, foreign or unreadable entry is a miss, never an error.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import io
import os
import pickle
import struct
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from . import cache
from .model import host_reads
from .switches import NO_FILTER_ENV, PURE_PYTHON_ENV

if TYPE_CHECKING:
    from .layout.plan import Plan
    from .model.sources import HostFile

# The plan codec (and the planner's modules under it) is imported where a plan is read or
# written: the serve plugin asks whether a plan is saved (saved) before it loads them.

AREA = "plans"
DISABLE_ENV = "EXT4GEN_NO_SAVED_PLAN"  # set: every serve plans (and saves nothing)
FORMAT = 1
_SUFFIX = ".plan"
# Read by the loaders (SOURCE_DATE_EPOCH, the OCI platform …) or not: every such
# variable is in the key, except these, which change where or how, never what.
_ENV_NOT_IN_KEY = frozenset(("EXT4GEN_CACHE", "EXT4GEN_CACHE_MAX", "EXT4GEN_PLAN_LOG",
                             PURE_PYTHON_ENV, "EXT4GEN_NO_DIGEST_CACHE", NO_FILTER_ENV))
_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_code: str | None = None


@functools.cache
def _python_dirs() -> tuple[str, ...]:
    """Opened while recording but not inputs: modules imported on first use."""
    import sysconfig  # here, not at import: the serve plugin imports this module to start

    return tuple(sorted({os.path.abspath(p) + "/" for name, p in sysconfig.get_paths().items()
                         if name in ("stdlib", "platstdlib", "purelib", "platlib")}))


def _code_fingerprint() -> str:
    """The package's files by name, size and mtime: a changed ext4gen never reuses a plan."""
    global _code
    if _code is None:
        h = hashlib.sha256()
        for top, dirs, files in os.walk(_PACKAGE):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if name.endswith((".py", ".so", ".c")):
                    st = os.stat(os.path.join(top, name))
                    h.update(f"{os.path.relpath(os.path.join(top, name), _PACKAGE)}\0"
                             f"{st.st_size}\0{st.st_mtime_ns}\n".encode())
        _code = h.hexdigest()
    return _code


def key_for(source: str, choices: object) -> str | None:
    """The cache key of a SOURCE under ``choices``, or None when it cannot be saved."""
    if source == "-" or os.environ.get(DISABLE_ENV):
        return None
    env = sorted((k, v) for k, v in os.environ.items()
                 if (k.startswith("EXT4GEN_") or k == "SOURCE_DATE_EPOCH") and k not in _ENV_NOT_IN_KEY)
    parts = (FORMAT, _code_fingerprint(), sys.version, source, os.path.abspath(source), os.getcwd(),
             repr(choices), env, os.geteuid(), os.getegid(), os.getgroups())
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:40]


def _path(key: str) -> Path:
    return cache.cache_area(AREA) / (key + _SUFFIX)


_MAGIC = b"ext4gen-plan\0\0\0\1"
# An entry: magic, len(head) as <Q, the sealed head (pickle of FORMAT and the pins),
# the body's MAC, the body (the plan, pickled in chunks).
_HEAD = struct.Struct("<16sQ")


class _MacWriter:
    """A file the pickler writes to, feeding the body's MAC as it goes (no copy in memory)."""

    def __init__(self, f: io.BufferedWriter) -> None:
        self.f, self.mac = f, cache.sealer()

    def write(self, data: bytes) -> int:
        self.mac.update(data)
        return self.f.write(data)


def saved(key: str) -> bool:
    """Whether a plan is saved under ``key`` (unchecked: :func:`load` may still refuse it)."""
    try:
        return _path(key).is_file()
    except (OSError, cache.CacheError):
        return False


def load(key: str) -> Plan | None:
    """The saved plan for ``key`` if one exists and every host path it read is unchanged.

    The pins are checked in a thread (a loop of ``fstatat`` without the GIL)
    while this one checks the body's seal and unpickles it, so a restart costs
    about the larger of the two, not their sum; the plan is unpickled only once
    its seal holds, and returned only if every pin does.
    """
    try:
        path = _path(key)
        f = open(path, "rb")  # closed below, on every path
    except (OSError, cache.CacheError):
        return None
    with f:
        try:
            magic, n = _HEAD.unpack(f.read(_HEAD.size))
            head = cache.unseal(f.read(n)) if magic == _MAGIC and n < 1 << 40 else None
            fmt, deps = pickle.loads(head) if head is not None else (None, None)
        except Exception:  # short, foreign or from another layout: a miss
            return None
        if fmt != FORMAT or not isinstance(deps, host_reads.PinList):
            return None
        verdict: list[bool] = []
        check = threading.Thread(target=lambda: verdict.append(host_reads.unchanged(deps)),
                                 name="ext4gen-pin-check")
        check.start()
        served: list[HostFile] = []
        try:  # the plan is unpickled only once its seal holds, and used only if the pins do
            plan = _unpickle_plan(f, served) if _body_sealed(f) else None
        finally:
            check.join()
    if plan is None or verdict != [True]:
        return None
    cache.touch(path)
    _hold_cached_sources(served)
    return plan


def _hold_cached_sources(served: list[HostFile]) -> None:
    """Keep the cache entries the plan serves from (decompressed tars) from eviction, as
    loading them does (``cache.hold``): another ext4gen's eviction must not take them away."""
    root = str(cache.cache_root()) + "/"
    for host in served:
        if not host.path.startswith(root):
            continue
        try:
            fd = os.open(host.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # gone: its reads fail their pin check (EIO), as for any vanished source
        cache.hold(fd)


def _body_sealed(f: io.BufferedReader) -> bool:
    """Whether the rest of ``f`` is a body sealed with this cache's key (read in 1 MiB steps)."""
    start = f.tell()
    want = f.read(cache.MAC_SIZE)
    mac = cache.sealer()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    while n := f.readinto(buf):
        mac.update(view[:n])
    f.seek(start + cache.MAC_SIZE)
    return len(want) == cache.MAC_SIZE and hmac.compare_digest(want, mac.digest())


def _unpickle_plan(f: io.BufferedReader, served: list[HostFile]) -> Plan | None:
    from .layout.plan_codec import load_plan

    try:
        return load_plan(f, served)
    except Exception:  # a sealed entry from another layout of these classes: a miss
        return None


def unsaveable(plan: Plan) -> str | None:
    """Why ``plan`` cannot be saved (a source whose bytes no host pin describes), or None."""
    for ip in plan.inodes:
        if ip is not None and ip.source is not None and not ip.source.restartable:
            return f"{ip.source.describe()}: its content is not pinned to a host file"
    return None


def save(key: str, plan: Plan, reads: host_reads.HostReads) -> bool:
    """Save ``plan`` under ``key`` when everything it depends on is pinned; True when saved.

    Safe to run in a thread while the plan serves: the plan is not changed, and
    the pickling goes a few hundred inodes per call, so readers get the GIL.
    The entry is written straight to a temporary file and renamed into place.
    """
    from .layout.plan_codec import dump_plan

    if unsaveable(plan) is not None:
        return False
    _pin_sources(plan, reads)
    try:
        area = cache.cache_area(AREA)
        ignore = (str(cache.cache_root()) + "/", _PACKAGE + "/", *_python_dirs(), "/proc/", "/sys/", "/dev/")
        deps = reads.finish(ignore)
        if deps is None:
            return False
        head = cache.seal(pickle.dumps((FORMAT, deps), protocol=pickle.HIGHEST_PROTOCOL))
        fd, tmp = tempfile.mkstemp(dir=area, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_HEAD.pack(_MAGIC, len(head)) + head)
                mac_at = f.tell()
                f.write(bytes(cache.MAC_SIZE))  # the body's MAC, once it is known
                out = _MacWriter(f)
                dump_plan(out, plan)  # type: ignore[arg-type]
                f.seek(mac_at)
                f.write(out.mac.digest())
            os.replace(tmp, area / (key + _SUFFIX))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        cache.enforce_bound()
    except (OSError, cache.CacheError):
        return False  # saved work is an optimisation: a cache that cannot take it is no error
    return True


def _pin_sources(plan: Plan, reads: host_reads.HostReads) -> None:
    """The host files the plan serves from join its dependencies (pinned when loaded)."""
    reads.expand_listings()
    pins = reads.pins
    for host in _served_files(plan):
        p = host.pin
        listed = pins.get((host.path, False))  # a walk's lstat of a regular file is the same pin
        if listed is None or listed[1:] != (p.st_dev, p.st_ino, p.st_size, p.st_mtime_ns, p.st_ctime_ns):
            pins.setdefault((host.path, True), (None, p.st_dev, p.st_ino, p.st_size, p.st_mtime_ns,
                                                p.st_ctime_ns))


def _served_files(plan: Plan) -> Iterator[HostFile]:
    """Each host file the plan's sources read, once (a tar's members share one)."""
    seen: set[int] = set()
    for ip in plan.inodes:
        host = ip.source.host_file() if ip is not None and ip.source is not None else None
        if host is not None and id(host) not in seen:
            seen.add(id(host))
            yield host
