"""Processes the serving benchmarks start: their memory, and stopping them whatever happened."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path


def status_kib(pid: int, field: str = "VmRSS") -> int:
    """A ``/proc/PID/status`` size in KiB (``VmRSS``, ``VmHWM`` …); 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mib(pid: int) -> int:
    return status_kib(pid) // 1024


def descendants(pid: int) -> list[int]:
    """Children, grandchildren … of ``pid`` (the supervisor's nbdkit)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = [int(k) for k in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            kids = []
        out += kids
        todo += kids
    return out


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after a minute."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
