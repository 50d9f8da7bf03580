"""Calls that must return: a hang fails the test instead of stopping the suite."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def within(seconds: float, fn: Callable[[], T], what: str = "") -> T:
    """``fn()`` run in a daemon thread; fails if it has not returned after ``seconds``.

    What ``fn`` raises is raised here.  A thread still blocked (in ``open(2)`` of a
    FIFO, say) is left behind; it ends with the test process.
    """
    out: list[T] = []
    err: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as e:  # handed to the caller
            err.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{what or getattr(fn, '__name__', 'the call')} did not return in {seconds} s"
    if err:
        raise err[0]
    return out[0]
