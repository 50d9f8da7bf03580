"""ext4gen.serve.background: the switch interval is short exactly while background work runs."""

from __future__ import annotations

import sys
import threading

from ext4gen.serve import background


def test_the_switch_interval_is_short_while_work_runs_and_restored_after() -> None:
    before = sys.getswitchinterval()
    assert before != background.SWITCH_INTERVAL
    go = [threading.Event(), threading.Event()]
    seen: list[float] = []

    def work(k: int) -> None:
        go[k].wait(30)
        seen.append(sys.getswitchinterval())

    first = background.start(lambda: work(0), "t0")
    second = background.start(lambda: work(1), "t1")
    assert sys.getswitchinterval() == background.SWITCH_INTERVAL
    go[0].set()
    first.join(30)
    assert sys.getswitchinterval() == background.SWITCH_INTERVAL  # the other still runs
    go[1].set()
    second.join(30)
    assert seen == [background.SWITCH_INTERVAL] * 2
    assert sys.getswitchinterval() == before


def test_a_failing_job_restores_the_interval_too() -> None:
    before = sys.getswitchinterval()

    def boom() -> None:
        raise RuntimeError("a bug in background work")

    hook = threading.excepthook
    threading.excepthook = lambda args: None  # the thread's traceback is not this test's output
    try:
        background.start(boom, "boom").join(30)
    finally:
        threading.excepthook = hook
    assert sys.getswitchinterval() == before
