"""Progress of long phases (importing, hashing, writing, checking) on a terminal.

Library code reports through :func:`phase`, which costs nothing unless the
command line switched progress on (stderr is a terminal and no ``-q``); the
bars are tqdm's, drawn on stderr, shown only for a phase that lasts more than
half a second, and removed when it ends, so output that is kept (a log, a pipe)
never has them.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

_enabled = False
DELAY = 0.5  # seconds a phase must last before its bar appears


def enable(on: bool = True) -> None:
    global _enabled
    _enabled = on


def wanted(quiet: bool) -> bool:
    """Progress for a command: on a terminal, unless asked to be quiet."""
    return not quiet and sys.stderr.isatty()


def _noop(_n: int = 1) -> None:
    pass


@contextlib.contextmanager
def phase(desc: str, total: int | None = None, *, unit: str = " files",
          scale: bool = False) -> Iterator[Callable[[int], object]]:
    """``with phase("hashing", total, unit="B", scale=True) as tick: tick(n)``."""
    if not _enabled:
        yield _noop
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit if not scale else unit.strip(), unit_scale=scale,
               unit_divisor=1024 if scale else 1000, leave=False, file=sys.stderr, delay=DELAY,
               mininterval=0.2, dynamic_ncols=True)
    try:
        yield bar.update
    finally:
        bar.close()
