"""Servers for tests where serving is the means, and the NBD clients that read them.

One way to run a server: the pytest plugin's ``ext4_export`` fixture for one
SOURCE, and ext4gen's own background serve API (``ServeOptions`` +
``start_background``, what ``ext4gen serve`` without ``--foreground`` and the
plugin use) for several SOURCEs at once.  Both give the ``Background`` record
(pids, log, socket) that :class:`Export` wraps.  Tests of the CLI itself run it
with ``helpers.cli.CliServer`` instead.  Clients are real: libnbd
(python3-libnbd), nbdinfo.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ext4gen.serve import Background, ServeOptions, start_background
from helpers.processes import pid_running

DEBIAN_DIST_PACKAGES = "/usr/lib/python3/dist-packages"


def import_nbd() -> ModuleType:
    """python3-libnbd lives in Debian's dist-packages, which a plain venv does not see."""
    try:
        import nbd
    except ImportError:
        if DEBIAN_DIST_PACKAGES not in sys.path:
            sys.path.append(DEBIAN_DIST_PACKAGES)  # after the venv: never shadows its packages
        try:
            import nbd
        except ImportError:
            pytest.fail("python3-libnbd is not installed (apt install python3-libnbd)")
    return nbd


@dataclass
class Export:
    """A background server (supervisor + nbdkit) and what the checks below need of it."""

    uri: str
    record: Background

    @property
    def uris(self) -> list[str]:
        """One URI per export, in SOURCE order; ``uris[0] == uri``."""
        return self.record.uris

    @property
    def sock(self) -> Path:
        return Path(self.record.socket)

    def alive(self) -> bool:
        return pid_running(self.record.pid) and pid_running(self.record.nbdkit_pid)

    def stderr(self) -> str:
        """The server's log: errors as they happen, one summary line per export once stopped."""
        return Path(self.record.log).read_text(errors="replace")

    def stop(self) -> None:
        """Stop it now (whoever started it then finds nothing left to stop)."""
        self.record.stop()


def export(ext4_export: Any, manifest: Path | str, **options: Any) -> Export:
    """``ext4_export(manifest)`` plus the record of the server it started."""
    uri = ext4_export(manifest, **options)
    record = ext4_export.servers[-1]
    assert record.uri == uri
    return Export(uri, record)


@contextlib.contextmanager
def serving_sources(log: Path, *sources: str | Path) -> Iterator[Export]:
    """Serve several SOURCEs (``[NAME=]PATH``), one export each, in the background; always stop.

    For what ``ext4_export`` (one SOURCE per server) cannot start; the same
    ``start_background`` it uses, so the server is the same supervisor + nbdkit.
    """
    raw = [str(s) for s in sources]
    opts = ServeOptions(source=raw[0], sources=raw, log=str(log))
    opts.check()
    record = start_background(opts)
    try:
        yield Export(record.uri, record)
    finally:
        record.stop()


def nbdinfo_json(uri: str) -> dict:
    out = subprocess.run(["nbdinfo", "--json", uri], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def connect(uri: str):  # -> nbd.NBD
    nbd = import_nbd()
    h = nbd.NBD()
    h.connect_uri(uri)
    return h
