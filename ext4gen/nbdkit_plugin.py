"""nbdkit Python plugin: serve an ext4gen manifest as a read-only NBD disk.

    nbdkit python plugins/ext4gen_nbdkit.py manifest=PATH [dedup=content|none]

(``plugins/ext4gen_nbdkit.py`` re-exports this module; nbdkit can also load
this file directly, which is what ``ext4gen serve`` does for installed copies.)
        [inline_data=false] [base_map=FILE] [source_root=DIR]

``manifest`` (or ``source``) is anything ``ext4gen build`` takes as SOURCE: a
manifest file, a host directory or a tar archive.  The other keys are the
build options of the same names.

The manifest is planned once, before nbdkit accepts connections, into one
immutable :class:`ext4gen.Image` that every connection and thread shares.  The
plugin only translates: it advertises what an immutable disk can promise
(parallel, multi-conn, read-only, extents) and maps library errors to errno.

The embedded interpreter (Debian's python3) must find the ``ext4gen`` package
and its dependencies; ``ext4gen serve`` arranges that through PYTHONPATH.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
import time

import nbdkit

API_VERSION = 2

try:
    import ext4gen
    from ext4gen.errors import Ext4genError, ManifestError, SourceError
    from ext4gen.identity import IdentityMap
    from ext4gen.options import DEDUP_MODES
except ImportError as _e:  # pragma: no cover - depends on the host's PYTHONPATH
    print(f"ext4gen: the nbdkit plugin cannot import the ext4gen library ({_e}); "
          "start it with `ext4gen serve` or set PYTHONPATH", file=sys.stderr, flush=True)
    os._exit(1)

MAX_REQUEST = 32 << 20
_EXTENT_ZERO = nbdkit.EXTENT_HOLE | nbdkit.EXTENT_ZERO

_manifest: str | None = None
_dedup: str | None = None
_inline_data: bool | None = None
_base_map: str | None = None
_source_root: str | None = None
_image: ext4gen.Image | None = None
_description = ""
_started = 0.0


def _fail(message: str) -> None:
    """Stop nbdkit at startup with exactly one line on stderr.

    Raising would make nbdkit print a multi-line Python traceback; bad input is
    not a bug, so it gets the same one-line form as the CLI and exit status 1.
    """
    print(f"ext4gen: {message}", file=sys.stderr, flush=True)
    os._exit(1)


class _Totals:
    """Per-export counters the library does not keep (errors, connections).

    Updated under a lock: nbdkit calls us from several threads, and the GIL
    alone does not make ``+=`` atomic.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.connections = 0
        self.open_now = 0
        self.source_errors = 0
        self.range_errors = 0
        self.extents_calls = 0
        self.reported: set[str] = set()


_totals = _Totals()


class _Handle:
    """One client connection; counts its own traffic for the close-time debug line."""

    __slots__ = ("errors", "id", "opened", "read_bytes", "reads")

    def __init__(self, ident: int) -> None:
        self.id = ident
        self.reads = 0
        self.read_bytes = 0
        self.errors = 0
        self.opened = time.monotonic()


# -- configuration -----------------------------------------------------------

_BOOLS = {"1": True, "true": True, "yes": True, "on": True,
          "0": False, "false": False, "no": False, "off": False}


def config(key: str, value: str) -> None:
    global _manifest, _dedup, _inline_data, _base_map, _source_root
    if key in ("manifest", "source"):
        if _manifest is not None:
            _fail(f"{key}: the source was already given")
        _manifest = value
    elif key == "dedup":
        if value not in DEDUP_MODES:
            _fail(f"dedup: must be one of {', '.join(DEDUP_MODES)}, not {value!r}")
        _dedup = value
    elif key == "inline_data":
        if value.lower() not in _BOOLS:
            _fail(f"inline_data: must be true or false, not {value!r}")
        _inline_data = _BOOLS[value.lower()]
    elif key == "base_map":
        _base_map = value
    elif key == "source_root":
        _source_root = value
    else:
        _fail(f"{key}: unknown plugin parameter (expected manifest=PATH, dedup=MODE, "
              "inline_data=BOOL, base_map=FILE, source_root=DIR)")


def config_complete() -> None:
    """Plan the image before nbdkit binds its socket, so bad input never serves."""
    global _image, _description, _started
    if _manifest is None:
        _fail("manifest=PATH is required")
    try:
        base_map = IdentityMap.load(_base_map) if _base_map else None
        tree, options = ext4gen.load(_manifest, source_root=_source_root, dedup=_dedup,
                                     base_map=base_map, inline_data=_inline_data)
        try:
            _image = ext4gen.plan(tree, options)
        except ManifestError as e:  # found while planning: name the SOURCE, as the CLI does
            if e.origin is not None:
                raise
            raise ManifestError(e.key, e.message, origin=_manifest) from None
    except Ext4genError as e:
        _fail(str(e))
    geo = _image.plan.geometry
    label = getattr(options, "label", "") or ""
    _description = (f"ext4gen{' ' + label if label else ''}: {os.path.basename(_manifest)}, "
                    f"{_image.size} bytes, {geo.blocks_count} blocks of 4096")
    _started = time.monotonic()
    nbdkit.debug(f"ext4gen: planned {_manifest}: {_image.size} bytes, "
                 f"{geo.used_blocks} used blocks, dedup={getattr(options, 'dedup', '?')}")


def thread_model() -> int:
    return nbdkit.THREAD_MODEL_PARALLEL


# -- per connection ------------------------------------------------------------

def open(readonly: bool) -> _Handle:
    with _totals.lock:
        _totals.connections += 1
        _totals.open_now += 1
        return _Handle(_totals.connections)


def close(h: _Handle) -> None:
    with _totals.lock:
        _totals.open_now -= 1
    secs = time.monotonic() - h.opened
    nbdkit.debug(f"ext4gen: connection {h.id} closed after {secs:.1f} s: {h.reads} reads, "
                 f"{h.read_bytes} bytes, {h.errors} errors; export: {_stats_line()}")


def get_size(h: _Handle) -> int:
    return _image.size


def export_description(h: _Handle) -> str:
    return _description


def block_size(h: _Handle) -> tuple[int, int, int]:
    # Any alignment works (minimum 1); 4 KiB is the filesystem block, so the
    # preferred size never splits a metadata block across requests.
    return (1, 4096, MAX_REQUEST)


def is_rotational(h: _Handle) -> bool:
    return False


def can_write(h: _Handle) -> bool:
    return False


def can_multi_conn(h: _Handle) -> bool:
    # The image never changes, so every connection sees the same bytes.
    return True


def can_extents(h: _Handle) -> bool:
    return True


def can_cache(h: _Handle) -> int:
    # nbdkit emulates NBD_CMD_CACHE with a pread, which warms the metadata
    # LRU and the host page cache: exactly what a prefetch should do here.
    return nbdkit.CACHE_EMULATE


# -- data path -------------------------------------------------------------------

def pread(h: _Handle, buf: memoryview, offset: int, flags: int) -> None:
    try:
        _image.readinto(buf, offset)
    except SourceError as e:
        _report_source_error(h, str(e))
        nbdkit.set_error(errno.EIO)
        raise OSError(errno.EIO, f"ext4gen: {e}") from None
    except ValueError as e:  # nbdkit bounds-checks first; kept for defence
        with _totals.lock:
            _totals.range_errors += 1
        h.errors += 1
        nbdkit.set_error(errno.EINVAL)
        raise OSError(errno.EINVAL, f"ext4gen: {e}") from None
    h.reads += 1
    h.read_bytes += len(buf)


def extents(h: _Handle, count: int, offset: int, flags: int) -> list[tuple[int, int, int]]:
    out = []
    for start, length, zero in _image.extents(offset, count):
        out.append((start, length, _EXTENT_ZERO if zero else 0))
        if flags & nbdkit.FLAG_REQ_ONE:
            break
    with _totals.lock:
        _totals.extents_calls += 1
    return out


def _report_source_error(h: _Handle, reason: str) -> None:
    """Count the failure; say why on stderr once per reason, then only under -v."""
    h.errors += 1
    with _totals.lock:
        _totals.source_errors += 1
        first = reason not in _totals.reported
        if first and len(_totals.reported) < 1000:
            _totals.reported.add(reason)
    if first:
        print(f"ext4gen: read error (EIO to the client): {reason}", file=sys.stderr, flush=True)
    else:
        nbdkit.debug(f"ext4gen: read error (EIO to the client): {reason}")


# -- statistics -------------------------------------------------------------------

def _meta_counts() -> tuple[int, int]:
    """(metadata blocks generated, metadata cache hits)."""
    st = _image.stats
    return st.metadata_blocks_generated, st.metadata_cache_hits


def _stats_line() -> str:
    st = _image.stats
    generated, hits = _meta_counts()
    return (f"{st.requests} reads, {_totals.extents_calls} extents calls; bytes: "
            f"metadata {st.bytes_metadata}, data {st.bytes_data}, zero {st.bytes_zero}; "
            f"metadata blocks generated {generated}, cache hits {hits}; "
            f"source errors {_totals.source_errors}; connections {_totals.connections}")


def cleanup() -> None:
    if _image is None:
        return
    secs = time.monotonic() - _started
    print(f"ext4gen: served {_manifest} for {secs:.1f} s: {_stats_line()}",
          file=sys.stderr, flush=True)
