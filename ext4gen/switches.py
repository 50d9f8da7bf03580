"""Environment switches that turn parts of ext4gen off (``EXT4GEN_PURE_PYTHON=1`` …).

One reading of "on" everywhere, and no imports: the supervisor of ``ext4gen serve``
reads them before it starts nbdkit, so they must not load the renderer.
"""

from __future__ import annotations

import os

PURE_PYTHON_ENV = "EXT4GEN_PURE_PYTHON"  # no extension: reads, dedup reading, directory listing
NO_FILTER_ENV = "EXT4GEN_NO_FILTER"  # serve without ext4gen's nbdkit filter
NO_READAHEAD_ENV = "EXT4GEN_NO_READAHEAD"  # serve without reading source files ahead
NO_LEASES_ENV = "EXT4GEN_NO_LEASES"  # check sources by fstat after every read, no leases
NO_MAPPING_ENV = "EXT4GEN_NO_MAPPING"  # read sources by pread only, never from a mapping


def is_on(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def env_flag(name: str) -> bool:
    return is_on(os.environ.get(name))


def pure_python_requested() -> bool:
    return env_flag(PURE_PYTHON_ENV)
