"""Manifest parsing: what valid manifests mean, and that every bad one names its key.

BAD_MANIFESTS is shared with test_cli_errors, which checks the same cases end
to end through the command line (exit code 2, one line, no traceback).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import ext4gen
from ext4gen.errors import ManifestError

LONG = "a" * 256
LONG_UTF8 = "é" * 128  # 256 bytes in UTF-8


@dataclass(frozen=True)
class Bad:
    """A bad manifest: a JSON document, or raw text with its file suffix."""

    id: str
    key: str  # must appear in the error (the manifest key to fix)
    doc: Any = None
    raw: str | None = None
    suffix: str = ".json"

    def write(self, directory: Path) -> Path:
        path = directory / f"m{self.suffix}"
        path.write_text(self.raw if self.raw is not None else json.dumps(self.doc))
        return path


F = {"text": "x"}
HL = "hardlink"

BAD_MANIFESTS = [
    # unknown keys
    Bad("unknown-top-level", "bogus", {"bogus": 1}),
    Bad("unknown-entry-key", '"/a".colour', {"/a": {"text": "x", "colour": "red"}}),
    Bad("unknown-image-key", "image.size", {"image": {"size": 1}}),
    Bad("unknown-defaults-key", "defaults.owner", {"defaults": {"owner": 1}}),
    Bad("unknown-key-toml", '"/a".colour', raw='["/a"]\ntext = "x"\ncolour = 1\n', suffix=".toml"),
    Bad("image-not-table", "image", {"image": 5}),
    Bad("entry-not-table", '"/a"', {"/a": "just text"}),
    # duplicate paths
    Bad("duplicate-trailing-slash", '"/a/"', {"/a": F, "/a/": {"text": "y"}}),
    Bad("duplicate-double-slash", '"//a//b"', {"/a/b": F, "//a//b": F}),
    Bad("duplicate-explicit-dirs", '"/d/"', {"/d": {"type": "dir"}, "/d/": {"type": "dir"}}),
    Bad("file-then-parent", '"/a/b"', {"/a": F, "/a/b": F}),
    Bad("implied-parent-then-file", '"/a"', {"/a/b": F, "/a": F}),
    Bad("hardlink-onto-declared", '"/h', {"/a": F, "/h": {"type": HL, "target": "/a"}, "/h/": F}),
    Bad("root-as-file", '"/"', {"/": F}),
    Bad("json-duplicate-key", '"/a"', raw='{"/a": {"text": "1"}, "/a": {"text": "2"}}'),
    Bad("toml-duplicate-table", "m.toml", raw='["/a"]\ntext = "1"\n["/a"]\ntext = "2"\n',
        suffix=".toml"),
    # paths escaping /
    Bad("dotdot", '"/../etc/passwd"', {"/../etc/passwd": F}),
    Bad("dot", '"/a/./b"', {"/a/./b": F}),
    Bad("relative-path", "etc/passwd", {"etc/passwd": F}),
    Bad("hardlink-target-relative", '"/h".target', {"/a": F, "/h": {"type": HL, "target": "a"}}),
    Bad("hardlink-target-dotdot", '"/h".target', {"/a": F, "/h": {"type": HL, "target": "/x/../a"}}),
    Bad("nul-in-name", '"/a', {"/a\u0000b": F}),
    # names over 255 bytes
    Bad("name-256-ascii", '"/' + LONG[:20], {"/" + LONG: F}),
    Bad("name-256-utf8", '"/' + LONG_UTF8[:10], {"/" + LONG_UTF8: F}),
    Bad("parent-name-256", '"/d/' + LONG[:20], {"/d/" + LONG + "/f": F}),
    # sources
    Bad("missing-source", '"/a".source', {"/a": {"source": "no-such-file.bin"}}),
    Bad("source-is-directory", '"/a".source', {"/a": {"source": "."}}),
    # hard links to directories or to nothing
    Bad("hardlink-to-dir", '"/h".target', {"/d": {"type": "dir"}, "/h": {"type": HL, "target": "/d"}}),
    Bad("hardlink-to-implied-dir", '"/h".target', {"/d/f": F, "/h": {"type": HL, "target": "/d"}}),
    Bad("hardlink-to-root", '"/h".target', {"/h": {"type": HL, "target": "/"}}),
    Bad("hardlink-to-nothing", '"/h".target', {"/h": {"type": HL, "target": "/nope"}}),
    Bad("hardlink-cycle", ".target", {"/h1": {"type": HL, "target": "/h2"},
                                      "/h2": {"type": HL, "target": "/h1"}}),
    Bad("hardlink-without-target", '"/h".target', {"/h": {"type": HL}}),
    Bad("hardlink-with-mode", '"/h".mode', {"/a": F, "/h": {"type": HL, "target": "/a", "mode": "0644"}}),
    # symlinks
    Bad("symlink-4096", '"/s".target', {"/s": {"type": "symlink", "target": "t" * 4096}}),
    Bad("symlink-4096-utf8", '"/s".target', {"/s": {"type": "symlink", "target": "é" * 2048}}),
    Bad("symlink-empty", '"/s".target', {"/s": {"type": "symlink", "target": ""}}),
    Bad("symlink-with-text", '"/s".text', {"/s": {"type": "symlink", "target": "x", "text": "y"}}),
    Bad("target-without-type", '"/a"', {"/a": {"target": "/b"}}),
    # modes
    Bad("mode-not-octal", '"/a".mode', {"/a": {"text": "x", "mode": "0999"}}),
    Bad("mode-too-big", '"/a".mode', {"/a": {"text": "x", "mode": 0o10000}}),
    Bad("mode-symbolic", '"/a".mode', {"/a": {"text": "x", "mode": "rwxr-xr-x"}}),
    Bad("mode-bool", '"/a".mode', {"/a": {"text": "x", "mode": True}}),
    Bad("mode-negative", '"/a".mode', {"/a": {"text": "x", "mode": -1}}),
    Bad("defaults-mode", "defaults.mode", {"defaults": {"mode": "8"}}),
    Bad("defaults-dir-mode", "defaults.dir_mode", {"defaults": {"dir_mode": 70000}}),
    # owners
    Bad("uid-negative", '"/a".uid', {"/a": {"text": "x", "uid": -1}}),
    Bad("uid-too-big", '"/a".uid', {"/a": {"text": "x", "uid": 1 << 32}}),
    Bad("uid-name", '"/a".uid', {"/a": {"text": "x", "uid": "root"}}),
    Bad("gid-float", '"/a".gid', {"/a": {"text": "x", "gid": 1.5}}),
    # (uid_t)-1 is the kernel's INVALID_UID: a mount shows 65534, never the manifest's value
    Bad("uid-invalid-uid", '"/a".uid', {"/a": {"text": "x", "uid": (1 << 32) - 1}}),
    Bad("gid-invalid-gid", "defaults.gid", {"defaults": {"gid": (1 << 32) - 1}}),
    Bad("defaults-uid", "defaults.uid", {"defaults": {"uid": True}}),
    # times
    Bad("time-words", '"/a".mtime', {"/a": {"text": "x", "mtime": "yesterday"}}),
    Bad("time-float", '"/a".mtime', {"/a": {"text": "x", "mtime": 1.5}}),
    Bad("time-after-2446", '"/a".atime', {"/a": {"text": "x", "atime": "2500-01-01T00:00:00Z"}}),
    Bad("time-before-1901", '"/a".ctime', {"/a": {"text": "x", "ctime": -(1 << 31) - 1}}),
    Bad("time-bad-date", '"/a".crtime', {"/a": {"text": "x", "crtime": "2023-02-29T00:00:00Z"}}),
    Bad("defaults-mtime", "defaults.mtime", {"defaults": {"mtime": "noon"}}),
    # content
    Bad("bad-base64", '"/a".base64', {"/a": {"base64": "!!!not base64"}}),
    Bad("bad-base64-padding", '"/a".base64', {"/a": {"base64": "abc"}}),
    Bad("text-not-string", '"/a".text', {"/a": {"text": 5}}),
    Bad("two-contents", '"/a".', {"/a": {"text": "x", "size": 3}}),
    Bad("size-negative", '"/a".size', {"/a": {"size": -1}}),
    Bad("size-string", '"/a".size', {"/a": {"size": "10"}}),
    Bad("size-over-16tib", '"/a".size', {"/a": {"size": (1 << 44) + 1}}),
    Bad("dir-with-text", '"/d".text', {"/d": {"type": "dir", "text": "x"}}),
    Bad("unknown-type", '"/a".type', {"/a": {"type": "folder"}}),
    Bad("lost+found-file", '"/lost+found"', {"/lost+found": F}),
    # image options
    Bad("image-uuid", "image.uuid", {"image": {"uuid": "not-a-uuid"}}),
    Bad("image-hash-seed", "image.hash_seed", {"image": {"hash_seed": 5}}),
    Bad("image-dedup", "image.dedup", {"image": {"dedup": "maybe"}}),
    Bad("image-label", "image.label", {"image": {"label": "x" * 17}}),
    # not a manifest at all
    Bad("invalid-toml", "m.toml", raw="[[[\n", suffix=".toml"),
    Bad("invalid-toml-value", "m.toml", raw='["/a"]\ntext = \n', suffix=".toml"),
    Bad("invalid-json", "m.json", raw='{"/a": '),
    Bad("json-array", "m.json", raw="[1, 2]"),
    Bad("toml-not-utf8", "m.toml", raw="", suffix=".toml"),  # bytes written by the test
]


def write_bad(case: Bad, directory: Path) -> Path:
    if case.id == "toml-not-utf8":
        path = directory / "m.toml"
        path.write_bytes(b'["/a"]\ntext = "\xff\xfe"\n')
        return path
    return case.write(directory)


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

