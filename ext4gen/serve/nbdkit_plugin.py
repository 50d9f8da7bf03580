"""nbdkit Python plugin: serve ext4gen manifests as read-only NBD disks, one export each.

    nbdkit python plugins/ext4gen_nbdkit.py source=[NAME=]PATH [source=[NAME=]PATH …]
        [dedup=content|none] [inline_data=false] [base_map=FILE] [source_root=DIR]
        [generator_path=DIR …] [options=JSON]   # the CLI's image options (label, owners …)

(``plugins/ext4gen_nbdkit.py`` re-exports this module; nbdkit can also load
this file directly, which is what ``ext4gen serve`` does for installed copies.)

Each ``source`` (or its synonym ``manifest``) is anything ``ext4gen build``
takes as SOURCE: a manifest file, a host directory, a tar archive or a
container image.  Each
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
from collections.abc import Callable

import nbdkit

API_VERSION = 2

try:
    import ext4gen
    from ext4gen import saved_plan
    from ext4gen.errors import Ext4genError, SourceError
    from ext4gen.inputs import listings
    from ext4gen.model.sources import raise_fd_limit, source_fd_budget
    from ext4gen.render import fastpath
    from ext4gen.serve import background
    from ext4gen.serve.blockset import ReadBlocks
    from ext4gen.serve.exports import ExportSpec
    from ext4gen.serve.options import PluginConfig
    from ext4gen.serve.processes import STOP_GRACE, exit_with
    from ext4gen.switches import NO_READAHEAD_ENV, env_flag
    try:
        from ext4gen.serve import _logfilter  # type: ignore[attr-defined]
    except ImportError:  # not built: nbdkit's own error lines stay in the log
        _logfilter = None
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

    The read path takes no lock: the image counts its own reads (in C on the
    compiled path), and the rare counters here are plain ``+=`` (approximate
    under threads, which is all a statistics line needs).
    """

    def __init__(self, spec: ExportSpec, image: ext4gen.Image, description: str) -> None:
        self.name = spec.name
        self.source = spec.source
        self.image = image
        self.description = description
        self.lock = threading.Lock()
        self.connections = 0
        self.open_now = 0
        self.range_errors = 0
        self.extents_calls = 0
        # distinct 4 KiB blocks any client has read (the compiled path counts them itself)
        self.blocks_read = ReadBlocks() if not image.compiled else None

    def distinct_blocks(self) -> int:
        n = self.image.distinct_blocks_read()
        return len(self.blocks_read) if n is None and self.blocks_read is not None else n or 0

    def stats_line(self) -> str:
        st = self.image.stats
        total = -(-self.image.size // BLOCK)
        distinct = self.distinct_blocks()
        return (f"{st.requests} reads, {self.extents_calls} extents calls; bytes: "
                f"metadata {st.bytes_metadata}, data {st.bytes_data}, zero {st.bytes_zero}, "
                f"read ahead {st.bytes_read_ahead}; requests that waited for a source's disk "
                f"{st.cold_reads}; "
                f"metadata blocks generated {st.metadata_blocks_generated} "
                f"({st.metadata_blocks_prerendered} ahead of reads), "
                f"cache hits {st.metadata_cache_hits}; distinct blocks read {distinct} of {total}; "
                f"source reads checked by a lease {st.leased_reads}, copied from a mapping "
                f"{st.mapped_reads}; "
                f"source errors {st.source_errors}; connections {self.connections}")


class _Handle:
    """One client connection; counts its own traffic for the close-time debug line."""

    __slots__ = ("blocks", "errors", "export", "fast_read", "id", "image", "opened", "read_bytes",
                 "reads")

    def __init__(self, ident: int, export: _Export) -> None:
        self.id = ident
        self.export = export
        self.image = export.image  # one attribute hop less per read
        self.fast_read = export.image.fast_read
        self.blocks = export.blocks_read
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


def _list_ahead(spec: ExportSpec) -> None:
    """A directory to plan is listed from now on, in C on another thread, while the planner's
    modules load (on a small tree, loading them takes longer than listing it)."""
    choices = _config.choices
    source = spec.source
    if choices.source_root is not None or source == "-" or not os.path.isdir(source):
        return  # (beneath a source root the import lists a path resolved later)
    key = saved_plan.key_for(source, choices)
    if key is None or not saved_plan.saved(key):  # a saved plan is checked by stat alone
        listings.list_ahead(os.fsencode(source), bool(choices.flags.source.one_file_system))
        nbdkit.debug(f"ext4gen: listing {source} ahead while the planner loads")


def _plan(spec: ExportSpec) -> _Export:
    from ext4gen.inputs.source import plan_source_saved  # the planner: after _list_ahead

    image, tree, save = plan_source_saved(spec.source, _config.choices)
    if save is not None:
        _SAVES.append(save)  # in after_fork: a thread saves the plan while it serves
    # A saved plan holds no remote file, so it has nothing to prefetch; nor has an image
    # that names no prefetch paths (then the module, and its remote client, stay unloaded).
    if tree is not None:
        from ext4gen.remote.settings import ENV_PREFETCH  # small: no remote client, no argparse

        if image.plan.options.prefetch or os.environ.get(ENV_PREFETCH):
            from ext4gen.remote import prefetch  # remote files to fetch first: queued in after_fork

            prefetch.collect(tree, image.plan.options.prefetch, spec.source)
    geo = image.plan.geometry
    label = image.plan.options.label
    description = (f"ext4gen{' ' + label if label else ''}: {os.path.basename(spec.source)}, "
                   f"{image.size} bytes, {geo.blocks_count} blocks of 4096")
    how = "planned" if tree is not None else "reused the saved plan of"
    nbdkit.debug(f"ext4gen: {how} export {spec.name!r} from {spec.source}: {image.size} bytes, "
                 f"{geo.used_blocks} used blocks, dedup={image.plan.options.dedup}")
    return _Export(spec, image, description)


def config_complete() -> None:
    """Plan every image, once, before nbdkit binds its socket, so bad input never serves."""
    global _started
    try:
        specs = _config.exports()
        for spec in specs:
            _list_ahead(spec)
        for spec in specs:
            _exports[spec.name] = _plan(spec)
    except Ext4genError as e:
        _fail(str(e))
    finally:
        listings.close_unclaimed()
    _start_serving()
    _started = time.monotonic()


def get_ready() -> None:
    """Under a supervisor, go with it (after a grace for in-flight replies) if it dies."""
    if _config.supervisor is not None:
        exit_with(_config.supervisor, STOP_GRACE,
                  lambda msg: print(f"ext4gen: {msg}", file=sys.stderr, flush=True))


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
    # Reads ext4gen's filter answered in C never reach this handle: the filter's own
    # debug line for the connection counts them.
    nbdkit.debug(f"ext4gen: connection {h.id} closed after {secs:.1f} s: {h.reads} reads through "
                 f"Python, {h.read_bytes} bytes, {h.errors} errors; export {e.name}: {e.stats_line()}")


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


# -- data path -------------------------------------------------------------------------------

def pread(h: _Handle, buf: memoryview, offset: int, flags: int) -> None:
    try:
        fast = h.fast_read
        if fast is None:
            h.image.readinto(buf, offset)  # fills nbdkit's buffer in place
        else:  # compiled: the whole request without the GIL, unless something is left
            left = fast(buf, offset)
            if left is not None:
                h.image.complete(buf, offset, left)
    except SourceError as err:
        h.errors += 1
        _ERRORS.report(str(err))
        nbdkit.set_error(errno.EIO)
        raise OSError(errno.EIO, f"ext4gen: {err}") from None
    except ValueError as err:  # nbdkit bounds-checks first; kept for defence
        h.export.range_errors += 1
        h.errors += 1
        nbdkit.set_error(errno.EINVAL)
        raise OSError(errno.EINVAL, f"ext4gen: {err}") from None
    n = len(buf)
    h.reads += 1
    h.read_bytes += n
    if h.blocks is not None:
        h.blocks.note(offset, n)


def extents(h: _Handle, count: int, offset: int, flags: int) -> list[tuple[int, int, int]]:
    out = []
    for start, length, zero in h.image.extents(offset, count):
        out.append((start, length, _EXTENT_ZERO if zero else 0))
        if flags & nbdkit.FLAG_REQ_ONE:
            break
    h.export.extents_calls += 1
    return out


class _ErrorLog:
    """Read errors in the server log: one line per distinct reason, then counts.

    nbdkit itself would log every failed request with its traceback (the log
    filter started in :func:`_start_serving` drops those), so a client retrying
    a changed file cannot flood the disk.  Repeats are summed and reported as
    "N more read errors: REASON" at most once a minute and when serving ends.
    """

    MAX_REASONS = 100  # distinct reasons given a line of their own; the rest are only counted
    SUMMARY_EVERY = 60.0

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fd = 2  # the real stderr once the log filter runs
        self.seen: dict[str, int] = {}  # reason -> repeats not yet reported
        self.other = 0  # errors beyond MAX_REASONS distinct reasons, not yet reported
        self.last_summary = time.monotonic()

    def write(self, line: str) -> None:
        data = (line + "\n").encode(errors="replace")
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError:
            pass

    def report(self, reason: str) -> None:
        with self.lock:  # only failed reads come here
            repeats = self.seen.get(reason)
            first = repeats is None and len(self.seen) < self.MAX_REASONS
            if first:
                self.seen[reason] = 0
            elif repeats is not None:
                self.seen[reason] = repeats + 1
            else:
                self.other += 1
            due = time.monotonic() - self.last_summary >= self.SUMMARY_EVERY
        if first:
            self.write(f"ext4gen: read error (EIO to the client): {reason}")
        else:
            nbdkit.debug(f"ext4gen: read error (EIO to the client): {reason}")
        if due:
            self.summarize()

    def summarize(self) -> None:
        with self.lock:
            lines = [f"ext4gen: {n} more read errors: {reason}" for reason, n in self.seen.items() if n]
            if self.other:
                lines.append(f"ext4gen: {self.other} more read errors for other reasons")
            self.seen = dict.fromkeys(self.seen, 0)
            self.other = 0
            self.last_summary = time.monotonic()
        for line in lines:
            self.write(line)


_ERRORS = _ErrorLog()


def _start_serving() -> None:
    """What serving needs once the images are planned: descriptors, the read path, the log.

    The descriptor limit is raised here, explicitly (not by importing a
    module), and half of it is given to cached sources (see
    ``source_fd_budget``); the rest stays for clients.
    """
    fastpath.set_fd_budget(source_fd_budget(raise_fd_limit()))
    in_c = [e.image.publish(name) for name, e in _exports.items()]
    if _exports:  # a client asking for no name gets the first export (default_export)
        next(iter(_exports.values())).image.publish("")
    if any(in_c):
        nbdkit.debug("ext4gen: the ext4gen filter answers reads in C before they reach Python")
    why = fastpath.unavailable()
    if why and not fastpath.pure_python_requested():
        print(f"ext4gen: serving with the pure-Python read path: {why}", file=sys.stderr, flush=True)
    nbdkit.debug(f"ext4gen: read path: {'pure Python (' + why + ')' if why else 'compiled'}")


def after_fork() -> None:
    """Background work starts only now: threads do not survive nbdkit's fork into the
    background (and a stderr pipe nobody reads would block the server)."""
    if _logfilter is not None:
        fd = _logfilter.start(": pread: error: ")
        if fd >= 0:
            _ERRORS.fd = fd
    if not env_flag(NO_READAHEAD_ENV):  # its thread starts with the first sequential reader
        for e in _exports.values():
            e.image.read_ahead()
    for e in _exports.values():  # leases are given up by a thread: only in this process
        why = e.image.use_leases()
        nbdkit.debug(f"ext4gen: {e.source}: source leases {'off: ' + why if why else 'on'}")
    if any(e.image.compiled for e in _exports.values()):
        background.start(_prerender, "ext4gen-prerender")
    prefetch = sys.modules.get("ext4gen.remote.prefetch")  # loaded by _plan if anything to fetch
    if prefetch is not None:
        prefetch.start()  # remote files the manifests asked to fetch first
    if _SAVES:
        _SAVER.append(background.start(_save_plans, "ext4gen-save-plan"))


def _prerender() -> None:
    """Render each export's metadata ahead of its first mount (Image.prerender_metadata)."""
    for e in list(_exports.values()):
        try:
            n = e.image.prerender_metadata()
        except Exception as exc:  # a bug, but only of an optimisation: reads still render
            print(f"ext4gen: {e.source}: pre-rendering metadata failed: {exc!r}", file=sys.stderr,
                  flush=True)
        else:
            nbdkit.debug(f"ext4gen: {e.source}: {n} metadata blocks rendered ahead")


_SAVES: list[Callable[[], bool]] = []
_SAVER: list[threading.Thread] = []
# How long stopping waits for a plan still being saved: within the supervisor's STOP_GRACE,
# so a serve stopped soon after it started still leaves its plan for the next one.
SAVE_GRACE = 2.0


def _save_plans() -> None:
    """Save each new plan for the next serve (ext4gen.saved_plan); never an error of this one."""
    while _SAVES:
        save = _SAVES.pop(0)
        try:
            saved = save()
        except Exception as e:  # an optimisation for next time must not take this serve down
            nbdkit.debug(f"ext4gen: saving the plan failed: {e!r}")
        else:
            nbdkit.debug(f"ext4gen: plan {'saved' if saved else 'not saved'} for the next serve")


# -- statistics -------------------------------------------------------------------

def cleanup() -> None:
    """One summary line per export; with several, each names its export."""
    if _SAVER:
        _SAVER[0].join(SAVE_GRACE)
    if _logfilter is not None:
        _logfilter.stop()
    _ERRORS.fd = 2
    _ERRORS.summarize()
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
