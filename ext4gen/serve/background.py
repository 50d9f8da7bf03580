"""Python threads that work while the first clients connect (pre-rendering, saving the plan).

nbdkit calls into Python a dozen times for one NBD handshake, and each call must take the
GIL from whichever thread holds it.  CPython hands it over only every switch interval
(5 ms by default), so a background thread busy in Python delayed the first answer of a
fresh serve by 30-80 ms (T1, where the handshake alone takes 2 ms).  While such threads
run, the interval is cut to 0.5 ms; it is restored when the last one ends, so serving
afterwards switches as CPython normally does.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

SWITCH_INTERVAL = 0.0005  # seconds, while background work runs

_lock = threading.Lock()
_running = 0
_saved = sys.getswitchinterval()


def start(work: Callable[[], None], name: str) -> threading.Thread:
    """Run ``work`` in a daemon thread with the short switch interval in force until it ends."""
    global _running, _saved

    def run() -> None:
        global _running
        try:
            work()
        finally:
            with _lock:
                _running -= 1
                if not _running:
                    sys.setswitchinterval(_saved)

    with _lock:
        if not _running:
            _saved = sys.getswitchinterval()
            sys.setswitchinterval(SWITCH_INTERVAL)
        _running += 1
    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread
