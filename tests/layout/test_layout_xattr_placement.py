"""Xattr placement on its own: in the inode while it fits, then one shared external block."""

from __future__ import annotations

import pytest

import ext4gen
from ext4gen.errors import ManifestError
from ext4gen.format.ondisk import XATTR_REFCOUNT_MAX
from ext4gen.layout.numbering import number_inodes
from ext4gen.layout.xattr_placement import place_xattrs, xattrs_fit_beside

BIG = {b"user.big": b"v" * 200}  # more than the 96 spare bytes of an inode


def _meta(perm: int = 0o644) -> ext4gen.Meta:
    return ext4gen.Meta(perm, 0, 0, 0, 0, 0, 0)


def _place(xattrs_by_path: dict[str, dict[bytes, bytes]], kind: str = "file"):  # type: ignore[no-untyped-def]
    tree = ext4gen.Tree(_meta(0o755))
    for path, xattrs in xattrs_by_path.items():
        tree.add(path, ext4gen.Node(kind, _meta(), key=path, xattrs=xattrs,
                                    source=ext4gen.InlineSource(b"") if kind == "file" else None,
                                    target=b"t" if kind == "symlink" else b""))
    n = number_inodes(tree, None)
    return n, place_xattrs(n.inodes, n.nodes)


def test_small_sets_stay_in_the_inode_and_equal_big_sets_share_one_block() -> None:
    n, blocks = _place({"/a": {b"user.a": b"1"}, "/b": BIG, "/c": BIG, "/d": {b"user.big": b"w" * 200}})
    ips = {ip.ino: ip for ip in n.inodes if ip is not None and ip.kind == "file"}
    a, b, c, d = (ips[i] for i in sorted(ips))
    assert a.xattr_block == -1 and [x.suffix for x in a.xattr_inode] == [b"a"]
    assert b.xattr_block == c.xattr_block == 0 and d.xattr_block == 1
    assert [blk.refcount for blk in blocks] == [2, 1]
    assert (a.blocks_4k, b.blocks_4k, d.blocks_4k) == (0, 1, 1)


def test_a_shared_block_is_not_shared_past_the_refcount_limit() -> None:
    _n, blocks = _place({f"/f{i}": BIG for i in range(XATTR_REFCOUNT_MAX + 1)})
    assert [blk.refcount for blk in blocks] == [XATTR_REFCOUNT_MAX, 1]


def test_user_xattrs_on_a_symlink_are_refused_with_the_key() -> None:
    with pytest.raises(ManifestError, match=r"/l\.xattrs.*only on regular files"):
        _place({"/l": {b"user.a": b"1"}}, kind="symlink")


def test_inline_data_is_declined_when_it_would_push_xattrs_past_the_block() -> None:
    # user.a fits the inode beside 60 inline bytes; beside 128 (system.data of 68)
    # it joins user.b in the block, which then overflows
    full = {b"user.a": b"1", b"user.b": b"v" * 4030}
    assert xattrs_fit_beside({}, 128)
    assert xattrs_fit_beside(full, 60)
    assert not xattrs_fit_beside(full, 128)
