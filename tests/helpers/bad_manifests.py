"""Bad manifests, each with the key its one-line error must name.

Shared by inputs/test_manifest.py (the library raises ManifestError naming
the key) and e2e/test_cli_errors.py (the command line: exit code 2, one line,
no traceback), so both judge the same cases.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    Bad("json-duplicate-entry-key", "mode", raw='{"/a": {"text": "1", "mode": "0644", "mode": "0600"}}'),
    Bad("json-duplicate-key-beside-colons", '"/a"',
        raw='{"/a": {"text": "12:00"}, "/b": {"text": ":"}, "/a": {"text": "2"}}'),
    Bad("json-duplicate-xattr", "user.x",
        raw='{"/a": {"text": "1", "xattrs": {"user.x": "1", "user.x": "2"}}}'),
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
