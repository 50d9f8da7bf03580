"""Inode numbering on its own: numbers, links and entries, and the caller's tree left as it was."""

from __future__ import annotations

import pytest

import ext4gen
from ext4gen.errors import ManifestError
from ext4gen.format.ondisk import FT_DIR, FT_REG_FILE, FT_SYMLINK
from ext4gen.layout.numbering import LOST_FOUND, number_inodes
from ext4gen.layout.planner import plan_tree
from ext4gen.model.identity import IdentityMap
from ext4gen.model.options import ImageOptions


def _meta(perm: int = 0o644) -> ext4gen.Meta:
    return ext4gen.Meta(perm, 0, 0, 0, 0, 0, 0)


def _tree() -> ext4gen.Tree:
    tree = ext4gen.Tree(_meta(0o755))
    tree.add("/b/y", ext4gen.Node("file", _meta(), source=ext4gen.InlineSource(b"y")))
    tree.add("/b/x", ext4gen.Node("symlink", _meta(0o777), target=b"y"))
    tree.add("/a", ext4gen.Node("file", _meta(), source=ext4gen.InlineSource(b"a")))
    tree.add_hardlink("/b/h", "/a", key="links[0]")
    tree.resolve_links()
    return tree


def _snapshot(node: ext4gen.Node) -> list[tuple[int, bytes, str]]:
    """Every (depth, name, kind) of the tree in name order: what planning must not change."""
    out: list[tuple[int, bytes, str]] = []
    stack = [(0, b"/", node)]
    while stack:
        depth, name, n = stack.pop()
        out.append((depth, name, n.kind))
        for child_name, child in sorted((n.children or {}).items(), reverse=True):
            stack.append((depth + 1, child_name, child))
    return out


def test_numbers_root_2_lost_found_11_then_depth_first_in_name_order() -> None:
    numbered = number_inodes(_tree(), None)
    inodes = numbered.inodes
    root = inodes[2]
    assert root is not None and root.entries is not None
    assert [(name, ino) for name, ino, _ft in root.entries] == [
        (b".", 2), (b"..", 2), (b"a", 12), (b"b", 13), (LOST_FOUND, 11)]
    b = inodes[13]
    assert b is not None and b.entries is not None
    assert b.entries == [(b".", 13, FT_DIR), (b"..", 2, FT_DIR), (b"h", 12, FT_REG_FILE),
                         (b"x", 14, FT_SYMLINK), (b"y", 15, FT_REG_FILE)]
    assert [ip is None for ip in inodes[:11]] == [True, True, False] + [True] * 8
    assert len(inodes) == 16 and len(numbered.nodes) == 16
    assert all((ip is None) == (node is None) for ip, node in zip(inodes, numbered.nodes, strict=True))


def test_links_count_names_and_subdirectories() -> None:
    inodes = number_inodes(_tree(), None).inodes
    links = {ip.ino: ip.links for ip in inodes if ip is not None}
    assert links == {2: 2 + 2, 11: 2, 12: 2, 13: 2, 14: 1, 15: 1}  # root: ".", "..", b, lost+found


def test_planning_leaves_the_tree_as_it_was() -> None:
    tree = _tree()
    before = _snapshot(tree.root)
    root_children = tree.root.children
    assert root_children is not None
    children_before = dict(root_children)
    plan = plan_tree(tree, ImageOptions(inline_data=False))
    assert _snapshot(tree.root) == before
    assert tree.root.children is root_children and root_children == children_before
    assert LOST_FOUND not in root_children
    assert b"/lost+found" in dict(plan.paths())  # planned all the same


def test_a_base_map_keeps_numbers_and_generations_of_unchanged_paths() -> None:
    base = IdentityMap(paths={b"/b/y": (40, 7, "file"), b"/a": (30, 3, "dir"), b"/": (2, 5, "dir")},
                       retired={12: 9})
    inodes = number_inodes(_tree(), base).inodes
    by_ino = {ip.ino: ip for ip in inodes if ip is not None}
    assert by_ino[40].generation == 7 and by_ino[40].kind == "file"  # /b/y kept
    assert by_ino[2].generation == 5
    assert 30 not in by_ino  # /a changed kind: a fresh number from 12 up
    assert by_ino[12].generation == 10  # one past the retired generation of 12


def test_a_lost_found_that_is_a_file_is_refused_with_its_key() -> None:
    tree = ext4gen.Tree(_meta(0o755))
    tree.add("/lost+found", ext4gen.Node("file", _meta(), key="files[0]",
                                         source=ext4gen.InlineSource(b"")))
    with pytest.raises(ManifestError, match=r"files\[0\].*must be a directory"):
        number_inodes(tree, None)
