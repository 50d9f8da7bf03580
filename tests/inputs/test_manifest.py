"""Manifest parsing: what valid manifests mean, and that every bad one names its key.

BAD_MANIFESTS (tests/helpers/bad_manifests.py) is shared with e2e/test_cli_errors,
which checks the same cases end to end through the command line (exit code 2,
one line, no traceback).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers.bad_manifests import BAD_MANIFESTS, Bad, write_bad

import ext4gen
from ext4gen.errors import ManifestError


@pytest.mark.parametrize("case", BAD_MANIFESTS, ids=lambda c: c.id)
def test_bad_manifest_raises_manifest_error_naming_the_key(case: Bad, tmp_path: Path) -> None:
    path = write_bad(case, tmp_path)
    with pytest.raises(ManifestError) as exc:
        ext4gen.plan(*ext4gen.load(str(path)))
    message = str(exc.value)
    assert case.key in message, message
    assert "\n" not in message


def _load(tmp_path: Path, doc: dict[str, Any]) -> ext4gen.Tree:
    path = tmp_path / "m.json"
    path.write_text(json.dumps(doc))
    tree, _options = ext4gen.load(str(path))
    return tree


def _node(tree: ext4gen.Tree, path: str) -> ext4gen.Node:
    node = tree.lookup([p.encode() for p in path.split("/") if p])
    assert node is not None, path
    return node


def test_defaults_and_implied_parents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    tree = _load(tmp_path, {
        "defaults": {"uid": 70000, "gid": 80000, "mode": "0600", "dir_mode": "0710", "mtime": 99},
        "/a/b/file": {"text": "x"},
        "/a/own": {"type": "dir", "mode": 0o755, "uid": 1},
        "/t": {"text": "x", "mtime": "5.000000007", "atime": 6},
    })
    implied = _node(tree, "/a/b")
    assert (implied.kind, implied.meta.perm, implied.meta.uid, implied.meta.gid) == ("dir", 0o710, 70000,
                                                                                    80000)
    f = _node(tree, "/a/b/file")
    assert (f.meta.perm, f.meta.uid, f.meta.mtime, f.meta.crtime) == (0o600, 70000, 99 * 10**9, 99 * 10**9)
    own = _node(tree, "/a/own")
    assert (own.meta.perm, own.meta.uid, own.meta.gid) == (0o755, 1, 80000)
    t = _node(tree, "/t").meta
    # atime/ctime/crtime default to the entry's own mtime, not the defaults' one
    assert (t.mtime, t.atime, t.ctime, t.crtime) == (5_000_000_007, 6 * 10**9, 5_000_000_007, 5_000_000_007)


def test_type_inference_and_content_kinds(tmp_path: Path) -> None:
    (tmp_path / "h.bin").write_bytes(b"host")
    tree = _load(tmp_path, {
        "/dir": {},
        "/text": {"text": "héllo"},
        "/b64": {"base64": "AAEC"},
        "/host": {"source": "h.bin"},
        "/sized": {"size": 10},
        "/empty": {"type": "file"},
        "/link": {"type": "symlink", "target": "text"},
        "/hard": {"type": "hardlink", "target": "/text"},
    })
    assert _node(tree, "/dir").kind == "dir"
    sizes = {p: _node(tree, p).size for p in ("/text", "/b64", "/host", "/sized", "/empty")}
    assert sizes == {"/text": 6, "/b64": 3, "/host": 4, "/sized": 10, "/empty": 0}
    assert _node(tree, "/sized").source.all_zero  # type: ignore[union-attr]
    assert _node(tree, "/link").target == b"text"
    assert _node(tree, "/hard") is _node(tree, "/text")


def test_limits_are_inclusive(tmp_path: Path) -> None:
    """The largest legal values are accepted: 255-byte names, 4095-byte targets, 0o7777, 2^32-2."""
    tree = _load(tmp_path, {
        "/" + "n" * 255: {"text": "x"},
        "/" + "é" * 127 + "x": {"text": "x"},
        "/s": {"type": "symlink", "target": "t" * 4095},
        "/m": {"text": "x", "mode": "7777", "uid": (1 << 32) - 2, "gid": (1 << 32) - 2},
    })
    assert _node(tree, "/s").size == 4095
    assert _node(tree, "/m").meta.perm == 0o7777


def test_source_date_epoch_must_be_an_integer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "soon")
    with pytest.raises(ManifestError) as exc:
        _load(tmp_path, {"/a": {"text": "x"}})
    assert "SOURCE_DATE_EPOCH" in str(exc.value)


def test_missing_manifest_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as exc:
        ext4gen.load(str(tmp_path / "absent.toml"))
    assert "absent.toml" in str(exc.value)


def test_entries_sharing_default_metadata_stay_independent() -> None:
    """Equal default metadata is one Meta object; an ACL on one entry must not move another's mode."""
    doc = {"/a": {"text": "x"}, "/b": {"text": "y", "acl": "u::rwx,g::r-x,o::---,u:1000:rw-,m::rwx"},
           "/c": {"text": "z"}}
    tree, _ = ext4gen.parse_manifest(doc)
    assert _node(tree, "/a").meta is _node(tree, "/c").meta
    assert _node(tree, "/a").meta.perm == _node(tree, "/c").meta.perm == 0o644
    assert _node(tree, "/b").meta.perm == 0o770
    assert list(doc) == ["/a", "/b", "/c"], "the API's parse_manifest must not consume its argument"

