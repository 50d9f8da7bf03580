"""The record of what a load read from the host, and its two pin checks (C and Python)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ext4gen.model import host_reads
from ext4gen.model.host_reads import PinList, first_changed_py

SETTLE = host_reads.RACY_NS / 1e9 + 0.05


def test_the_pin_check_extension_is_built() -> None:
    """CI builds it (scripts/setup.sh installs gcc and python3-dev): its absence is a failure here."""
    assert host_reads._pincheck is not None


def _record(paths: list[tuple[Path, bool]], opened: list[Path] = ()) -> PinList | None:
    with host_reads.recording() as rec:
        for p, follow in paths:
            host_reads.note(str(p), follow=follow)
        for p in opened:
            with open(p, "rb") as f:
                f.read()
    return rec.finish(())


def _both(deps: PinList) -> tuple[int, int]:
    assert host_reads._pincheck is not None
    return host_reads._pincheck.first_changed(deps.paths, deps.flags, deps.pins), first_changed_py(deps)


def _setup(base: Path) -> list[tuple[Path, bool]]:
    base.mkdir(parents=True, exist_ok=True)
    (base / "f").write_bytes(b"x" * 100)
    (base / "d").mkdir(exist_ok=True)
    if not (base / "l").is_symlink():
        os.symlink("f", base / "l")
    time.sleep(SETTLE)
    return [(base / "f", False), (base / "d", False), (base / "l", False), (base / "l", True),
            (base / "absent", False)]


MUTATIONS = {
    "none": lambda b: None,
    "write": lambda b: (b / "f").write_bytes(b"y" * 100),
    "utime": lambda b: os.utime(b / "f", ns=(0, 0)),
    "chmod": lambda b: (b / "f").chmod(0o600),
    "dir entry": lambda b: (b / "d" / "new").write_bytes(b""),
    "symlink": lambda b: ((b / "l").unlink(), os.symlink("d", b / "l")),
    "appears": lambda b: (b / "absent").write_bytes(b""),
    "vanishes": lambda b: (b / "f").unlink(),
}


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_compiled_and_python_checks_agree_on_each_change(tmp_path: Path, mutation: str):
    deps = _record(_setup(tmp_path))
    assert deps is not None
    assert _both(deps) == (-1, -1)
    MUTATIONS[mutation](tmp_path)
    compiled, python = _both(deps)
    assert compiled == python
    assert (compiled == -1) == (mutation == "none")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(list(MUTATIONS)), cut=st.integers(0, len(MUTATIONS)))
def test_the_first_changed_path_is_the_same_in_both(tmp_path_factory: pytest.TempPathFactory,
                                                     order: list[str], cut: int):
    base = tmp_path_factory.mktemp("pins")
    deps = _record(_setup(base))
    assert deps is not None
    for name in order[:cut]:
        try:
            MUTATIONS[name](base)
        except FileNotFoundError:
            pass  # "vanishes" ran first
    assert _both(deps)[0] == _both(deps)[1]


def test_a_recording_pins_files_opened_by_name_but_not_files_written(tmp_path: Path):
    read, written = tmp_path / "read", tmp_path / "written"
    read.write_bytes(b"r")
    time.sleep(SETTLE)
    with host_reads.recording() as rec:
        read.read_bytes()
        written.write_bytes(b"w")
    deps = rec.finish(())
    assert deps is not None
    names = deps.paths.split(b"\0")
    assert os.fsencode(read) in names and os.fsencode(written) not in names


def test_a_file_changed_during_the_recording_makes_it_incomplete(tmp_path: Path):
    p = tmp_path / "f"
    p.write_bytes(b"1")
    time.sleep(SETTLE)
    with host_reads.recording() as rec:
        p.read_bytes()
        p.write_bytes(b"2")  # after its read: the pin taken at the end would describe "2"
    assert rec.finish(()) is None
    assert any("changed while" in why for why in rec.incomplete)


def test_recordings_do_not_nest():
    with host_reads.recording(), pytest.raises(RuntimeError), host_reads.recording():
        pass


def test_reads_made_before_the_recording_count_from_their_own_start(tmp_path: Path):
    """A listing made ahead (``listings.list_ahead``) took its lstats before the recording
    began: a file changed just before them is then racy, as if read inside it."""
    p = tmp_path / "f"
    before = time.time_ns()
    p.write_bytes(b"1")  # changed within the racy window of the earlier start only
    time.sleep(SETTLE)
    with host_reads.recording() as rec:
        started = rec.started_ns
        host_reads.read_since(started + 10**9)  # later than the start: no change
        assert rec.started_ns == started
        p.read_bytes()
        assert rec.finish(()) is not None  # counted from the recording's own start: settled
        host_reads.read_since(before)
        assert rec.started_ns == before
    assert rec.finish(()) is None  # counted from the earlier read: too close to call
    host_reads.read_since(0)  # outside a recording: nothing to move
