"""Processes by pid and the files that name them: the supervisor's and umount's tools.

Every check here guards against a recycled pid from a stale state file: a pid is
only signalled while it still runs the program it was recorded for.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .options import ServeError

STOP_TIMEOUT = 10.0
STOP_GRACE = 3.0  # seconds connected clients get once serving must stop, before nbdkit goes


def pid_alive(pid: int, name: str | None = None) -> bool:
    """True if ``pid`` runs (not a zombie) and, when ``name`` is given, is that program.

    ``name`` matches the program's basename or any argument (``ext4gen.cli`` for
    ``python -m ext4gen.cli``).
    """
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap our own children so they do not linger as zombies
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        if state in (b"Z", b"X"):
            return False
        if name is None:
            return True
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
        return os.path.basename(argv[0]) == name or name in argv[1:]
    except (OSError, IndexError):
        return False


def wait_gone(pid: int, timeout: float, name: str | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid, name):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def stop_pid(pid: int, name: str, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM ``pid`` if it is still ``name``; SIGKILL if it does not exit in time."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not pid_alive(pid, name):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if wait_gone(pid, timeout, name):
            return
    raise ServeError(f"{name} (pid {pid}) did not exit after SIGKILL")


def read_pidfile(path: str) -> int | None:
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    text = text.strip()
    return int(text) if text.isdigit() else None


def write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def remove_stale_socket(path: str) -> None:
    """Delete a socket nobody listens on (nbdkit refuses to bind over it); keep live ones.

    This is also how the socket of a SIGKILLed server goes: at the next start on it.
    """
    if not os.path.exists(path):
        return
    import socket  # here: 2-4 ms of the plugin's start, which never needs it

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        return
    except OSError:
        return
    finally:
        s.close()
    raise ServeError(f"{path}: a server is already listening on this socket")


def exit_with(pid: int, grace: float, say: Callable[[str], None]) -> None:
    """Exit this process ``grace`` seconds after ``pid`` dies, from a daemon thread.

    The thread sleeps in poll() on a pidfd, so it costs nothing (no GIL) while
    ``pid`` lives.  ``os._exit`` because the process's own shutdown may be
    waiting for clients that never hang up.
    """
    try:
        fd = os.pidfd_open(pid)
    except OSError:  # already gone: the supervisor died while we planned
        say(f"the supervisor (pid {pid}) is gone; exiting")
        os._exit(1)

    def watch() -> None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while not poller.poll():
            pass
        say(f"the supervisor (pid {pid}) died; exiting in {grace:.0f} s")
        time.sleep(grace)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-supervisor", daemon=True).start()
