"""One manifest entry to one node, on its own (the rest of parse_manifest aside)."""

from __future__ import annotations

from dataclasses import astuple

import pytest

import ext4gen
from ext4gen.errors import ManifestError
from ext4gen.inputs.host_paths import HostPaths
from ext4gen.inputs.manifest_entries import EntryContext, add_entry, read_defaults
from ext4gen.remote.manifest_keys import parse_image_keys


def _ctx(defaults: dict[str, object] | None = None) -> EntryContext:
    remote, _prefetch = parse_image_keys({})
    return EntryContext(read_defaults({"defaults": defaults or {}}, 7), HostPaths(".", None), remote)


def _add(entries: dict[str, dict[str, object]], ctx: EntryContext | None = None) -> ext4gen.Tree:
    ctx = ctx or _ctx()
    tree = ext4gen.Tree(ext4gen.Meta(0o755, 0, 0, 0, 0, 0, 0))
    for path, entry in entries.items():
        add_entry(tree, path, entry, f'"{path}"', ctx)
    tree.resolve_links()
    return tree


def test_entries_with_default_metadata_share_one_meta() -> None:
    ctx = _ctx({"uid": 5, "mode": "0600"})
    tree = _add({"/a": {"text": "x"}, "/b": {"size": 3}, "/c": {"text": "y", "mtime": 9}}, ctx)
    assert tree.root.children is not None
    a, b, c = (tree.root.children[n] for n in (b"a", b"b", b"c"))
    assert a.meta is b.meta and (a.meta.perm, a.meta.uid, a.meta.mtime) == (0o600, 5, 7)
    assert c.meta is not a.meta and (c.meta.mtime, c.meta.atime) == (9 * 10**9, 9 * 10**9)  # seconds


def test_each_kind_becomes_its_node() -> None:
    tree = _add({"/d": {"type": "dir"}, "/l": {"type": "symlink", "target": "d"},
                 "/c": {"type": "chardev", "major": 1, "minor": 3}, "/f": {"type": "fifo"},
                 "/h": {"type": "hardlink", "target": "/l"}})
    assert tree.root.children is not None
    kids = tree.root.children
    assert [kids[n].kind for n in (b"d", b"l", b"c", b"f")] == ["dir", "symlink", "chardev", "fifo"]
    assert kids[b"l"].target == b"d" and kids[b"c"].rdev == (1, 3)
    assert kids[b"h"] is kids[b"l"]
    assert kids[b"c"].meta.perm == 0o644 and kids[b"l"].meta.perm == 0o777


@pytest.mark.parametrize(("entry", "key", "message"), [
    ({"type": "chardev", "major": 1}, '"/x".minor', "needs major and minor"),
    ({"type": "symlink", "target": ""}, '"/x".target', "must not be empty"),
    ({"type": "dir", "text": "a"}, '"/x".text', "not valid for a directory"),
    ({"type": "hardlink", "target": "/a", "mode": 1}, '"/x".mode', "cannot set its own"),
    ({"colour": 1}, '"/x".colour', "unknown key"),
])
def test_a_bad_entry_names_its_key(entry: dict[str, object], key: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message) as err:
        _add({"/x": entry})
    assert err.value.key == key


_PLAIN = [{"text": "hello"}, {"size": 5000, "mode": "0600"}, {"text": "", "uid": 3, "gid": 4},
          {"size": 0, "mtime": 5, "atime": "2001-02-03T04:05:06Z"}]
_BAD = [{"text": 5}, {"size": -1}, {"size": "x"}, {"text": "x", "mode": "0o7777777"},
        {"size": 1 << 60}, {"text": "x", "uid": -1}, {"size": 1, "mtime": "yesterday"}]


def _node_or_error(entry: dict[str, object]) -> object:
    try:
        tree = _add({"/f": entry})
    except ManifestError as e:
        return e.key, e.message
    assert tree.root.children is not None
    node = tree.root.children[b"f"]
    src = node.source
    return node.kind, astuple(node.meta), type(src).__name__, src.size, getattr(src, "data", None)


@pytest.mark.parametrize("entry", _PLAIN + _BAD)
def test_a_plain_file_entry_is_what_the_general_path_makes_of_it(entry: dict[str, object]) -> None:
    """Text or size plus metadata takes add_entry's short way; "type": "file" takes the long one."""
    assert _node_or_error(entry) == _node_or_error({"type": "file", **entry})
