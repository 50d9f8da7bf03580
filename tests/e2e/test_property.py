"""Random manifests → e2fsck clean and an exact kernel read-back, 200 examples per run.

Hand-written feature tests only cover the cases someone thought of; this one
mixes names of 1–255 bytes (UTF-8 included), nesting, implied parents, empty,
sparse, large and duplicate files, host sources, hard links and symlinks,
with random owners, modes and nanosecond times.  Examples are small so the
whole run stays around a minute: each costs one e2fsck and one loop mount.
``derandomize`` makes CI runs reproducible; set EXT4GEN_PROPERTY_RANDOM=1 to
explore fresh examples locally.
"""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest
from helpers.strategies import NAME_CHARS, metadata, prove_case
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.root

EXAMPLES = 200
BLOCK = 4096
POOL = [bytes(BLOCK), b"A" * BLOCK, bytes(range(256)) * 16, (b"\x00" * 4000 + b"tail").ljust(BLOCK, b"\1")]



def _cut(text: str, limit: int) -> str:
    """The longest prefix of ``text`` that fits ``limit`` UTF-8 bytes."""
    return text.encode()[:limit].decode("utf-8", "ignore")


@st.composite
def names(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 9)) == 0:  # a name of exactly 255 bytes, maybe multibyte
        unit = draw(st.sampled_from(["n", "é", "€", "😀", "ß"]))
        name = unit * (255 // len(unit.encode()))
        name += "z" * (255 - len(name.encode()))
    else:
        name = _cut(draw(st.text(NAME_CHARS, min_size=1, max_size=24)), 255)
    if name in ("", ".", ".."):
        name += "_"
    return name




@st.composite
def contents(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=300))
    blocks = draw(st.lists(st.sampled_from(POOL) | st.binary(min_size=BLOCK, max_size=BLOCK),
                           min_size=1, max_size=5))
    return b"".join(blocks) + draw(st.binary(max_size=100))


@st.composite
def manifests(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A manifest document and the host files (relative name → bytes) it references."""
    doc: dict[str, Any] = {}
    hosts: dict[str, bytes] = {}
    image: dict[str, Any] = {}
    if draw(st.booleans()):
        image["dedup"] = draw(st.sampled_from(["content", "none"]))
    if draw(st.booleans()):
        image["inline_data"] = draw(st.booleans())
    if image:
        doc["image"] = image
    if draw(st.booleans()):
        doc["defaults"] = {k: v for k, v in draw(metadata()).items() if k in ("uid", "gid", "mode",
                                                                               "mtime")}
        if draw(st.booleans()):
            doc["defaults"]["dir_mode"] = f"{draw(st.integers(0, 0o7777)):04o}"
    dirs = ["/"]
    linkable: list[str] = []
    used: set[str] = set()
    seen_content: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 14))):
        parent = draw(st.sampled_from(dirs))
        name = draw(names())
        if draw(st.integers(0, 4)) == 0:  # an implied parent directory
            implied = parent.rstrip("/") + "/" + name
            if implied in used or (parent == "/" and name == "lost+found"):
                continue
            used.add(implied)
            dirs.append(implied)
            parent, name = implied, draw(names())
        path = parent.rstrip("/") + "/" + name
        if path in used or path == "/lost+found":
            continue
        used.add(path)
        kind = draw(st.sampled_from(["file"] * 5 + ["dir", "symlink", "hardlink"]))
        if kind == "hardlink" and linkable:
            doc[path] = {"type": "hardlink", "target": draw(st.sampled_from(linkable))}
            linkable.append(path)
            continue
        entry = draw(metadata())
        if kind == "dir":
            entry["type"] = "dir"
            dirs.append(path)
        elif kind == "symlink":
            entry["type"] = "symlink"
            target = draw(st.text(NAME_CHARS | st.just("/"), min_size=1, max_size=80))
            if draw(st.integers(0, 4)) == 0:
                target = target * (4095 // max(1, len(target.encode())) + 1)
            entry["target"] = _cut(target, 4095) or "t"
            linkable.append(path)
        else:
            how = draw(st.integers(0, 6))
            if how == 0 and seen_content:  # a duplicate of an earlier file
                entry.update(draw(st.sampled_from(seen_content)))
            elif how == 1:
                entry["size"] = draw(st.sampled_from([0, 1, BLOCK, 5 * BLOCK + 1])
                                     | st.integers(0, 12 << 20))
            elif how == 2:
                entry["text"] = draw(st.text(st.characters(blacklist_categories=("Cs",)), max_size=200))
            elif how == 3:
                name_on_host = f"host{len(hosts)}.bin"
                hosts[name_on_host] = draw(contents())
                entry["source"] = name_on_host
            elif how == 4:
                entry["type"] = "file"  # empty (duplicates of it keep the type)
            else:
                entry["base64"] = base64.b64encode(draw(contents())).decode()
            seen_content.append({k: v for k, v in entry.items()
                                 if k in ("type", "size", "text", "source", "base64")})
            linkable.append(path)
        doc[path] = entry
    return doc, hosts


def test_random_manifests_are_valid_and_read_back_exactly(tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.mktemp("property")
    ran = 0

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              derandomize=not os.environ.get("EXT4GEN_PROPERTY_RANDOM"),
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=manifests())
    def check(case: tuple[dict[str, Any], dict[str, bytes]]) -> None:
        nonlocal ran
        ran += 1
        doc, hosts = case
        prove_case(doc, hosts, base)

    check()
    assert ran >= EXAMPLES
