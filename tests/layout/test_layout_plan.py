"""A Plan stands alone: it renders the same image once the tree is gone or changed."""

from __future__ import annotations

import dataclasses
import gc

import ext4gen
from ext4gen.layout.plan import InodePlan
from ext4gen.layout.planner import plan_tree
from ext4gen.model.options import ImageOptions
from ext4gen.render.image import Image


def _tree() -> ext4gen.Tree:
    meta = ext4gen.Meta(0o755, 1, 2, 10**9, 2 * 10**9, 3 * 10**9, 4 * 10**9)
    tree = ext4gen.Tree(meta)
    tree.add("/d/f", ext4gen.Node("file", meta, source=ext4gen.InlineSource(b"x" * 5000),
                                  xattrs={b"user.k": b"v"}))
    tree.add("/d/small", ext4gen.Node("file", meta, source=ext4gen.InlineSource(b"tiny")))
    tree.add("/l", ext4gen.Node("symlink", meta, target=b"d/f"))
    tree.add("/long", ext4gen.Node("symlink", meta, target=b"t" * 100))
    tree.add("/c", ext4gen.Node("chardev", meta, rdev=(1, 3)))
    for i in range(120):  # an htree directory
        tree.add(f"/many/{i:040d}", ext4gen.Node("fifo", meta))
    return tree


def _bytes(image: Image) -> bytes:
    return image.read(0, image.size)


def test_the_plan_keeps_no_reference_to_tree_nodes() -> None:
    names = {f.name for f in dataclasses.fields(InodePlan)}
    assert "node" not in names and {"kind", "meta", "source", "target", "rdev"} <= names
    tree = _tree()
    plan = plan_tree(tree, ImageOptions())
    referrers = {id(r) for r in gc.get_referrers(tree.root)}
    assert not any(id(ip) in referrers for ip in plan.inodes if ip is not None)


def test_a_plan_renders_the_same_bytes_after_its_tree_is_emptied() -> None:
    options = ImageOptions(uuid=b"U" * 16, hash_seed=b"S" * 16)
    kept = plan_tree(_tree(), options)
    tree = _tree()
    plan = plan_tree(tree, options)
    assert tree.root.children is not None
    tree.root.children.clear()
    del tree
    gc.collect()
    assert _bytes(Image(plan)) == _bytes(Image(kept))


def test_paths_come_from_the_plans_own_directory_entries() -> None:
    tree = _tree()
    plan = plan_tree(tree, ImageOptions())
    assert tree.root.children is not None
    tree.root.children.clear()
    paths = dict(plan.paths())
    assert len(paths) == 1 + 1 + 3 + 4 + 120  # /, lost+found, /d and its 2, /l /long /c /many, entries
    assert paths[b"/c"].rdev == (1, 3) and paths[b"/l"].target == b"d/f"
    assert paths[b"/d/f"].source is not None and paths[b"/d/f"].meta.uid == 1
    assert paths[b"/"].ino == 2 and paths[b"/lost+found"].ino == 11
