"""The bridge to the compiled read path (``_fastread.c``): whether it is used, and its table.

The extension serves zero regions, plain host-file data and metadata blocks
Python already rendered, for a whole request without the GIL; every other
range (generators, inline and sparse sources, metadata not rendered yet) comes
back as a "miss" that the region records fill.  ``EXT4GEN_PURE_PYTHON=1``
turns it off; without the built extension the pure-Python path is used and
:func:`unavailable` says why (the server logs that once).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..switches import NO_LEASES_ENV, NO_MAPPING_ENV, PURE_PYTHON_ENV, env_flag, pure_python_requested

if TYPE_CHECKING:
    from .image import Region

CACHE_BLOCKS = 8192  # rendered metadata blocks the compiled path keeps (32 MiB, touched lazily)
# Largest window of image bytes whose source files are read ahead of a sequential reader:
# what the host kernel reads ahead in one file on this project's machines (read_ahead_kb
# 8192), so a tree's files are read ahead as far as a built image's would be.
READAHEAD_BYTES = 8 << 20

try:
    from . import _fastread  # type: ignore[attr-defined]

    _IMPORT_ERROR = ""
except ImportError as _e:  # not built (no compiler at install time) or built for another Python
    _fastread = None
    _IMPORT_ERROR = str(_e)


def unavailable() -> str:
    """Why reads run in pure Python ('' when the compiled path is used)."""
    if pure_python_requested():
        return f"{PURE_PYTHON_ENV} is set"
    if _fastread is None:
        return f"the extension is not built ({_IMPORT_ERROR})"
    return ""


def set_fd_budget(total: int) -> None:
    """Share ``total`` cached source descriptors between the two paths.

    With the extension, Python only reads sparse or segmented sources, so it
    keeps an eighth; without it, Python keeps them all.
    """
    from ..model import sources

    if _fastread is None or pure_python_requested():
        sources.FD_CACHE.limit = total
        return
    sources.FD_CACHE.limit = max(8, total // 8)
    _fastread.set_fd_budget(max(8, total - sources.FD_CACHE.limit))


def table_for(regions: Sequence[Region], size: int) -> Any | None:
    """The compiled path's table over ``regions``, or None to read in pure Python."""
    if _fastread is None or pure_python_requested():
        return None
    from .image import DataRegion, MetaRegion, ZeroRegion

    # Read from the region records in C (one per data run: 100,000s); the arrays come as bytes.
    raw_starts, raw_kinds, raw_aux, raw_offs, raw_lens, files, slots = _fastread.table_inputs(
        regions, size, DataRegion, ZeroRegion, MetaRegion)
    starts, kinds, aux, file_offs, data_lens = (
        array(code, raw) for code, raw in zip("QBqqq", (raw_starts, raw_kinds, raw_aux, raw_offs,
                                                         raw_lens), strict=True))
    table = _fastread.Table(starts, kinds, aux, file_offs, data_lens, files, slots, CACHE_BLOCKS)
    if env_flag(NO_MAPPING_ENV):  # else reads of long-used sources copy from a mapping
        table.use_mappings(False)
    return table


def read_ahead(table: Any | None, nbytes: int = READAHEAD_BYTES) -> bool:
    """Let ``table`` read source files ahead of sequential readers (a thread per table,
    started by the first sequential read): a source tree is many files, so the host's
    per-file read-ahead never runs ahead of a client reading the image in order.
    False when reads run in Python (no read-ahead there)."""
    if _fastread is None or table is None:
        return False
    table.set_readahead(nbytes)
    return True


def use_leases(table: Any | None) -> str:
    """Let ``table`` lease the sources it still reads a second after opening them
    (``_leases.c``), so their reads skip the fstat that checks the pin: '' when it does, else
    why not.  Starts the watcher thread that gives leases up when the kernel breaks them: call
    it in the process that serves (after nbdkit's fork)."""
    if _fastread is None or table is None:
        return "the pure-Python read path checks every read by fstat"
    if env_flag(NO_LEASES_ENV):
        return f"{NO_LEASES_ENV} is set"
    why = _fastread.start_leases()
    if why:
        return str(why)
    table.use_leases(True)
    return ""


def publish(name: str, table: Any | None) -> bool:
    """Let ext4gen's nbdkit filter (``ext4gen/serve/_nbdfilter.c``) answer export ``name``'s
    reads from ``table`` without entering Python; False when that filter is not loaded."""
    if _fastread is None or table is None:
        return False
    return bool(_fastread.publish(name, table))


def _default_budget() -> None:
    from ..model.sources import source_fd_budget

    set_fd_budget(source_fd_budget())


_default_budget()  # until serving starts and raises the limit (ext4gen.serve.nbdkit_plugin)
