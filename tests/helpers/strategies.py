"""Hypothesis strategies shared by the property tests (tests/e2e/test_property*.py)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from ext4gen.model.times import E2FSCK_SUSPECT_NS, MAX_TIME_NS, MIN_TIME_NS, NS

NAME_CHARS = st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",))


def time_text(ns: int) -> str:
    """A manifest time string carrying exact nanoseconds ("-12.000000001")."""
    sign, a = ("-", -ns) if ns < 0 else ("", ns)
    return f"{sign}{a // NS}.{a % NS:09d}"


@st.composite
def metadata(draw: st.DrawFn) -> dict[str, Any]:
    """Optional mode (special bits included), 32-bit owners and ns times over ext4's range."""
    meta: dict[str, Any] = {}
    if draw(st.booleans()):
        meta["mode"] = draw(st.sampled_from([f"{m:04o}" for m in (0o644, 0o755, 0o4755, 0o2750,
                                                                   0o1777, 0o7777, 0)])
                            | st.integers(0, 0o7777).map(lambda m: f"{m:04o}")
                            | st.integers(0, 0o7777))
    if draw(st.booleans()):
        meta["uid"] = draw(st.integers(0, (1 << 32) - 2))
        meta["gid"] = draw(st.integers(0, (1 << 32) - 2))
    for key in ("mtime", "atime", "ctime", "crtime"):
        if draw(st.integers(0, 2)) == 0:
            suspect = E2FSCK_SUSPECT_NS  # times e2fsck misreads are refused: skip that span
            meta[key] = time_text(draw(st.integers(MIN_TIME_NS, suspect.start - 1)
                                       | st.integers(suspect.stop, MAX_TIME_NS)))
    return meta


def prove_case(doc: dict[str, Any], hosts: dict[str, bytes], base: str,
               extra: dict[str, str] | None = None) -> None:
    """Write one generated manifest (with its host files) into a scratch dir and prove it."""
    from conftest import prove

    with tempfile.TemporaryDirectory(dir=base) as d:
        work = Path(d)
        for name, text in (extra or {}).items():
            (work / name).write_text(text)
        for name, data in hosts.items():
            (work / name).write_bytes(data)
        manifest = work / "manifest.json"
        manifest.write_text(json.dumps(doc))
        proof = prove(manifest, work, check_rw=False)
        proof.path.unlink()  # an uncached ext4_image file: hundreds of examples would pile up
