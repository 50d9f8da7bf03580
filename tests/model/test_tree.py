"""Tree.add: a path's checks are the same whether it is placed beside the last one added (the
sibling shortcut) or walked from the root, and a removal makes it forget its parents."""

from __future__ import annotations

import pytest

from ext4gen.errors import ManifestError
from ext4gen.model.sources import InlineSource
from ext4gen.model.tree import DIR, FILE, Meta, Node, Tree

META = Meta(0o644, 0, 0, 0, 0, 0, 0)


def _file(path: str | bytes) -> Node:
    return Node(FILE, META, key=str(path), source=InlineSource(b""))


def _error(tree: Tree, path: str | bytes) -> str:
    with pytest.raises(ManifestError) as e:
        tree.add(path, _file(path))
    return e.value.message


@pytest.mark.parametrize(("sibling", "bad"), [("/s", "x"), ("/s", "/.."), ("/d/g", "/d/.."),
                                              ("/d/g", "/d/."), ("/d/g", "/d/a\0b"),
                                              ("/d/g", "/d/" + "n" * 256), ("/d/g", "/d/f")])
def test_a_siblings_checks_are_a_fresh_paths(sibling: str, bad: str) -> None:
    fresh = Tree(META)
    fresh.add("/d/f", _file("/d/f"))
    fresh_error = _error(fresh, bad) if bad != "/d/f" else None
    after_sibling = Tree(META)
    after_sibling.add("/d/f", _file("/d/f"))
    after_sibling.add(sibling, _file(sibling))  # its parent is now the one remembered
    if fresh_error is None:
        assert "duplicate path" in _error(after_sibling, bad)
    else:
        assert _error(after_sibling, bad) == fresh_error


def test_siblings_land_in_their_parent_as_walked_paths_do() -> None:
    tree = Tree(META)
    for path in ("/a/x", "/a/y", b"/a/z", "/a//w", "/b", "/a/q", "/c/"):
        tree.add(path, _file(path) if not str(path).endswith("/") else Node(DIR, META, key="/c/"))
    root = tree.root.children
    assert root is not None and sorted(root) == [b"a", b"b", b"c"]
    assert sorted(root[b"a"].children or {}) == [b"q", b"w", b"x", b"y", b"z"]
    tree.add("/c/k", _file("/c/k"))  # after "/c/" (no sibling to remember): walked
    assert list(root[b"c"].children or {}) == [b"k"]


def test_after_a_removal_the_tree_forgets_the_parents_it_remembered() -> None:
    tree = Tree(META)
    tree.add("/d/e/f", _file("/d/e/f"))
    assert tree.root.children is not None
    del tree.root.children[b"d"]  # as a layer's whiteout removes a directory
    tree.forget_parents()
    tree.add("/d/e/g", _file("/d/e/g"))
    d = tree.root.children[b"d"]
    assert d.implied and d.children is not None and sorted(d.children[b"e"].children or {}) == [b"g"]
