"""The image identity on its own: UUID shape, who chooses it, and the identity map."""

from __future__ import annotations

import ext4gen
from ext4gen.layout.identity import choose_uuid_and_seed, identity_map, uuid_from
from ext4gen.layout.planner import plan_tree
from ext4gen.model.identity import IdentityMap
from ext4gen.model.options import ImageOptions


def _tree(data: bytes = b"a") -> ext4gen.Tree:
    meta = ext4gen.Meta(0o755, 0, 0, 0, 0, 0, 0)
    tree = ext4gen.Tree(meta)
    tree.add("/d/f", ext4gen.Node("file", meta, source=ext4gen.InlineSource(data)))
    tree.add("/d/g", ext4gen.Node("file", meta, source=ext4gen.InlineSource(data)))
    return tree


def test_uuid_from_sets_the_version_4_and_variant_bits_only() -> None:
    u = uuid_from(bytes(16))
    assert u[6] >> 4 == 4 and u[8] >> 6 == 0b10
    assert uuid_from(b"\xff" * 16) == b"\xff" * 6 + b"\x4f\xff\xbf" + b"\xff" * 7


def test_options_win_over_the_base_map_which_wins_over_the_digest() -> None:
    digest = bytes(range(32))
    derived = (uuid_from(digest[:16]), uuid_from(digest[16:32]))
    assert choose_uuid_and_seed(ImageOptions(), digest) == derived
    base = IdentityMap(uuid=b"B" * 16, hash_seed=b"S" * 16)
    assert choose_uuid_and_seed(ImageOptions(base_map=base), digest) == (b"B" * 16, b"S" * 16)
    assert choose_uuid_and_seed(ImageOptions(base_map=base, uuid=b"U" * 16), digest) == (
        b"U" * 16, b"S" * 16)


def test_the_default_uuid_follows_the_content() -> None:
    a, b, c = (plan_tree(_tree(d), ImageOptions()) for d in (b"a", b"a", b"b"))
    assert a.uuid == b.uuid and a.hash_seed == b.hash_seed
    assert a.uuid != c.uuid


def test_the_identity_map_names_every_path_and_keeps_it_in_a_later_build() -> None:
    first = plan_tree(_tree(), ImageOptions())
    m = identity_map(first)
    assert set(m.paths) == {b"/", b"/d", b"/d/f", b"/d/g", b"/lost+found"}
    assert m.paths[b"/d/f"][2] == "file" and m.paths[b"/d"][2] == "dir"
    later_tree = _tree()
    assert later_tree.root.children is not None
    del later_tree.root.children[b"d"].children[b"f"]  # type: ignore[union-attr]
    later = plan_tree(later_tree, ImageOptions(base_map=m))
    assert later.uuid == first.uuid
    later_map = identity_map(later)
    assert later_map.paths[b"/d/g"][:2] == m.paths[b"/d/g"][:2]
    assert m.paths[b"/d/f"][0] in later_map.retired  # its number is remembered as retired
