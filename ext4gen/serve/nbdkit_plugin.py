"""nbdkit Python plugin: serve ext4gen manifests as read-only NBD disks, one export each.

    nbdkit python plugins/ext4gen_nbdkit.py source=[NAME=]PATH [source=[NAME=]PATH …]
        [dedup=content|none] [inline_data=false] [base_map=FILE] [source_root=DIR]

(``plugins/ext4gen_nbdkit.py`` re-exports this module; nbdkit can also load
this file directly, which is what ``ext4gen serve`` does for installed copies.)

Each ``source`` (or its synonym ``manifest``) is anything ``ext4gen build``
takes as SOURCE: a manifest file, a host directory or a tar archive.  Each
becomes one NBD export, named NAME or after the file (``site.toml`` →
``site``; see :mod:`ext4gen.serve.exports`).  The first is the default export, the
one a client gets when it asks for ``""``.  The other keys are the build
options of the same names and apply to every source.  The keys are decoded by
:class:`ext4gen.serve.options.PluginConfig`, beside the code ``ext4gen serve``
writes them with (which also passes ``error_file=`` and ``supervisor=``).

Every source is planned once, here and only here (``ext4gen serve`` does not
plan it first), before nbdkit accepts connections, into one immutable
:class:`ext4gen.Image` that every connection and thread of that export shares.
The plugin only translates: it advertises what an immutable disk can promise
(parallel, multi-conn, read-only, extents), picks the image by the export name
the client negotiated, and maps library errors to errno.

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
    from ext4gen.errors import Ext4genError, SourceError
    from ext4gen.inputs.source import plan_source
    from ext4gen.serve.blockset import BlockSet
    from ext4gen.serve.exports import ExportSpec
    from ext4gen.serve.options import PluginConfig
    from ext4gen.serve.processes import STOP_GRACE, exit_with
except ImportError as _e:  # pragma: no cover - depends on the host's PYTHONPATH
    print(f"ext4gen: the nbdkit plugin cannot import the ext4gen library ({_e}); "
          "start it with `ext4gen serve` or set PYTHONPATH", file=sys.stderr, flush=True)
    os._exit(1)

MAX_REQUEST = 32 << 20
BLOCK = 4096
_EXTENT_ZERO = nbdkit.EXTENT_HOLE | nbdkit.EXTENT_ZERO

_config = PluginConfig()  # filled by config(), one key=value at a time
_exports: dict[str, _Export] = {}  # by name, in the order given; the first is the default
_started = 0.0


def _fail(message: str) -> None:
    """Stop nbdkit at startup with exactly one line on stderr.

    Raising would make nbdkit print a multi-line Python traceback; bad input is
    not a bug, so it gets the same one-line form as the CLI and exit status 1.
    Under ``ext4gen serve`` the line goes to the supervisor's error file instead,
    and the supervisor reports it as the CLI's own error (exit 2).
    """
    if _config.error_file:  # (``open`` here is the plugin's own callback: os.open it is)
        try:
            fd = os.open(_config.error_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, message.encode("utf-8", "replace") + b"\n")
            os.close(fd)
            os._exit(1)
        except OSError:
            pass
    print(f"ext4gen: {message}", file=sys.stderr, flush=True)
    os._exit(1)


class _Export:
    """One export: its immutable image and the counters the library does not keep.

    Counters are updated under a lock: nbdkit calls us from several threads,
    and the GIL alone does not make ``+=`` atomic.
    """

    def __init__(self, spec: ExportSpec, image: ext4gen.Image, description: str) -> None:
        self.name = spec.name
        self.source = spec.source
        self.image = image
        self.description = description
        self.lock = threading.Lock()
        self.connections = 0
        self.open_now = 0
        self.source_errors = 0
        self.range_errors = 0
        self.extents_calls = 0
        self.blocks_read = BlockSet()  # distinct 4 KiB blocks any client has read
        self.reported: set[str] = set()

    def stats_line(self) -> str:
        st = self.image.stats
        total = -(-self.image.size // BLOCK)
        with self.lock:
            distinct = len(self.blocks_read)
        return (f"{st.requests} reads, {self.extents_calls} extents calls; bytes: "
                f"metadata {st.bytes_metadata}, data {st.bytes_data}, zero {st.bytes_zero}; "
                f"metadata blocks generated {st.metadata_blocks_generated}, "
                f"cache hits {st.metadata_cache_hits}; distinct blocks read {distinct} of {total}; "
                f"source errors {self.source_errors}; connections {self.connections}")


class _Handle:
    """One client connection; counts its own traffic for the close-time debug line."""

    __slots__ = ("errors", "export", "id", "opened", "read_bytes", "reads")

    def __init__(self, ident: int, export: _Export) -> None:
        self.id = ident
        self.export = export
        self.reads = 0
        self.read_bytes = 0
        self.errors = 0
        self.opened = time.monotonic()


_connection_ids = 0
_ids_lock = threading.Lock()


# -- configuration -----------------------------------------------------------

def config(key: str, value: str) -> None:
    try:
        _config.set(key, value)
    except Ext4genError as e:
        _fail(str(e))


def _plan(spec: ExportSpec) -> _Export:
    image, tree = plan_source(spec.source, _config.choices)
    from ext4gen.remote import prefetch  # remote files to fetch first: queued in after_fork

    prefetch.collect(tree, image.plan.options.prefetch, spec.source)
    geo = image.plan.geometry
    label = image.plan.options.label
    description = (f"ext4gen{' ' + label if label else ''}: {os.path.basename(spec.source)}, "
                   f"{image.size} bytes, {geo.blocks_count} blocks of 4096")
    nbdkit.debug(f"ext4gen: planned export {spec.name!r} from {spec.source}: {image.size} bytes, "
                 f"{geo.used_blocks} used blocks, dedup={image.plan.options.dedup}")
    return _Export(spec, image, description)


def config_complete() -> None:
    """Plan every image, once, before nbdkit binds its socket, so bad input never serves."""
    global _started
    try:
        for spec in _config.exports():
            _exports[spec.name] = _plan(spec)
    except Ext4genError as e:
        _fail(str(e))
    _started = time.monotonic()


def get_ready() -> None:
    """Under a supervisor, go with it (after a grace for in-flight replies) if it dies."""
    if _config.supervisor is not None:
        exit_with(_config.supervisor, STOP_GRACE,
                  lambda msg: print(f"ext4gen: {msg}", file=sys.stderr, flush=True))
def after_fork() -> None:
    """Background work starts only now: threads do not survive nbdkit's fork."""
    from ext4gen.remote import prefetch

    prefetch.start()


def thread_model() -> int:
    return nbdkit.THREAD_MODEL_PARALLEL


# -- exports -------------------------------------------------------------------

def list_exports(readonly: bool, is_tls: bool) -> list[tuple[str, str]]:
    return [(e.name, e.description) for e in _exports.values()]


def default_export(readonly: bool, is_tls: bool) -> str:
    return next(iter(_exports))


def _export_for(name: str) -> _Export | None:
    # nbdkit maps "" through default_export before open; kept for older servers.
    if name == "":
        return next(iter(_exports.values()))
    return _exports.get(name)


# -- per connection ------------------------------------------------------------

def open(readonly: bool) -> _Handle:
    global _connection_ids
    name = nbdkit.export_name()
    export = _export_for(name)
    if export is None:
        nbdkit.set_error(errno.ENOENT)
        raise LookupError(f"ext4gen: no export named {name[:100]!r} "
                          f"(exports: {', '.join(_exports)})")
    with _ids_lock:
        _connection_ids += 1
        ident = _connection_ids
    with export.lock:
        export.connections += 1
        export.open_now += 1
    return _Handle(ident, export)


def close(h: _Handle) -> None:
    e = h.export
    with e.lock:
        e.open_now -= 1
    secs = time.monotonic() - h.opened
    nbdkit.debug(f"ext4gen: connection {h.id} closed after {secs:.1f} s: {h.reads} reads, "
                 f"{h.read_bytes} bytes, {h.errors} errors; export {e.name}: {e.stats_line()}")


def get_size(h: _Handle) -> int:
    return h.export.image.size


def export_description(h: _Handle) -> str:
    return h.export.description


def block_size(h: _Handle) -> tuple[int, int, int]:
    # Any alignment works (minimum 1); 4 KiB is the filesystem block, so the
    # preferred size never splits a metadata block across requests.
    return (1, BLOCK, MAX_REQUEST)


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
    e = h.export
    try:
        e.image.readinto(buf, offset)
    except SourceError as err:
        _report_source_error(h, str(err))
        nbdkit.set_error(errno.EIO)
        raise OSError(errno.EIO, f"ext4gen: {err}") from None
    except ValueError as err:  # nbdkit bounds-checks first; kept for defence
        with e.lock:
            e.range_errors += 1
        h.errors += 1
        nbdkit.set_error(errno.EINVAL)
        raise OSError(errno.EINVAL, f"ext4gen: {err}") from None
    n = len(buf)
    h.reads += 1
    h.read_bytes += n
    with e.lock:
        e.blocks_read.add(offset // BLOCK, -(-(offset + n) // BLOCK))


def extents(h: _Handle, count: int, offset: int, flags: int) -> list[tuple[int, int, int]]:
    out = []
    for start, length, zero in h.export.image.extents(offset, count):
        out.append((start, length, _EXTENT_ZERO if zero else 0))
        if flags & nbdkit.FLAG_REQ_ONE:
            break
    with h.export.lock:
        h.export.extents_calls += 1
    return out


def _report_source_error(h: _Handle, reason: str) -> None:
    """Count the failure; say why on stderr once per reason, then only under -v."""
    h.errors += 1
    e = h.export
    with e.lock:
        e.source_errors += 1
        first = reason not in e.reported
        if first and len(e.reported) < 1000:
            e.reported.add(reason)
    if first:
        print(f"ext4gen: read error (EIO to the client): {reason}", file=sys.stderr, flush=True)
    else:
        nbdkit.debug(f"ext4gen: read error (EIO to the client): {reason}")


# -- statistics -------------------------------------------------------------------

def cleanup() -> None:
    """One summary line per export; with several, each names its export."""
    secs = time.monotonic() - _started
    remote = sys.modules.get("ext4gen.remote.chunks")
    if remote is not None:  # remote content was served: stop its fetch threads, say what they did
        remote.shutdown()
        line = remote.summary()
        if line:
            print(f"ext4gen: {line}", file=sys.stderr, flush=True)
    for e in _exports.values():
        what = e.source if len(_exports) == 1 else f"{e.source} as export {e.name!r}"
        print(f"ext4gen: served {what} for {secs:.1f} s: {e.stats_line()}",
              file=sys.stderr, flush=True)
