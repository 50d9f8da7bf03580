"""layout/htree: the dx_root and dx_node blocks, counts and limits, levels, the collision bit.

Index blocks are read back with construct's ``dx_root``/``dx_countlimit``/
``dx_entry``/``dx_tail`` and their checksums recomputed with a bit-at-a-time
CRC-32C written here, following ext4_dx_csum: the block up to the last used
entry, then the tail with a zero checksum.
"""

from __future__ import annotations

import pytest

from ext4gen.format.definitions import dx_countlimit, dx_entry, dx_root, dx_tail, ext4_dir_entry_2
from ext4gen.format.directory import DX_HASH_HALF_MD4, FT_DIR, FT_REG_FILE
from ext4gen.format.dirhash import half_md4, seed_words
from ext4gen.layout import dirents, htree

BLOCK = 4096
SEED = seed_words(bytes(range(16)))
CSUM_SEED = 0xC0FFEE11


def crc32c_le(crc: int, data: bytes) -> int:
    """The kernel's crc32c_le: reflected Castagnoli polynomial, no pre/post inversion."""
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc


def _entries(n: int, name_len: int = 20) -> list[dirents.DirEntry]:
    names = sorted(f"{i:0{name_len}d}".encode() for i in range(n))
    return [(name, 1000 + i, FT_REG_FILE) for i, name in enumerate(names)]


def _index(block: bytes, offset: int) -> tuple[int, int, list[tuple[int, int]], int]:
    """(limit, count, [(hash, block)...], dt_checksum) of the index starting at ``offset``."""
    cl = dx_countlimit.parse(block[offset : offset + 4])
    first = dx_entry.parse(block[offset : offset + 8])
    entries = [(0, first.block)]
    for i in range(1, cl.count):
        e = dx_entry.parse(block[offset + 8 * i : offset + 8 * i + 8])
        entries.append((e.hash, e.block))
    tail_at = offset + 8 * cl.limit
    tail = dx_tail.parse(block[tail_at : tail_at + 8])
    assert tail.dt_reserved == 0
    want = crc32c_le(crc32c_le(CSUM_SEED, block[: offset + 8 * cl.count]), bytes(8))
    assert tail.dt_checksum == want, "dx_tail checksum"
    return cl.limit, cl.count, entries, tail.dt_checksum


def test_one_level_root_layout() -> None:
    entries = _entries(700)
    tree = htree.Htree(entries, SEED)
    assert tree.indirect_levels == 0 and tree.first_leaf_block == 1
    leaves = len(tree.leaf_starts)
    assert 3 < leaves < htree.DX_ROOT_LIMIT and tree.nblocks == 1 + leaves
    root = tree.block_bytes(0, 77, 66, CSUM_SEED)
    r = dx_root.parse(root[:32])
    assert (r.dot.inode, r.dot.rec_len, r.dot.name_len, r.dot.file_type) == (77, 12, 1, FT_DIR)
    assert r.dot_name == b".\0\0\0" and r.dotdot_name == b"..\0\0"
    dotdot = r.dotdot
    assert (dotdot.inode, dotdot.rec_len, dotdot.name_len, dotdot.file_type) == (66, BLOCK - 12, 2, FT_DIR)
    assert (r.info.reserved_zero, r.info.hash_version, r.info.info_length) == (0, DX_HASH_HALF_MD4, 8)
    assert (r.info.indirect_levels, r.info.unused_flags) == (0, 0)
    limit, count, index, _ = _index(root, 32)
    assert (limit, count) == (507, leaves)
    assert [b for _, b in index] == list(range(1, 1 + leaves))
    hashes = [h for h, _ in index]
    assert hashes[1:] == sorted(hashes[1:]) and all(h & 1 == 0 for h in hashes[1:])


def test_leaves_hold_every_entry_once_in_hash_order_within_their_index_range() -> None:
    entries = _entries(700)
    tree = htree.Htree(entries, SEED)
    _, _, index, _ = _index(tree.block_bytes(0, 2, 2, CSUM_SEED), 32)
    bounds = [h for h, _ in index[1:]] + [1 << 32]
    seen = []
    for i, (low, block) in enumerate(index):
        leaf = tree.block_bytes(block, 2, 2, CSUM_SEED)
        pos, names = 0, []
        while pos < BLOCK - 12:
            h = ext4_dir_entry_2.parse(leaf[pos : pos + 8])
            names.append(leaf[pos + 8 : pos + 8 + h.name_len])
            pos += h.rec_len
        keys = [half_md4(n, SEED) for n in names]
        assert keys == sorted(keys), f"leaf {i} not in (hash, minor hash) order"
        assert all(low <= major < bounds[i] for major, _ in keys)
        assert crc32c_le(CSUM_SEED, leaf[: BLOCK - 12]).to_bytes(4, "little") == leaf[-4:]
        seen += names
    assert sorted(seen) == sorted(e[0] for e in entries)


def test_two_levels_root_then_node_then_leaves() -> None:
    entries = _entries(7700, name_len=255)  # 15 entries a leaf: more leaves than the root holds
    tree = htree.Htree(entries, SEED)
    leaves = len(tree.leaf_starts)
    assert leaves > htree.DX_ROOT_LIMIT and tree.indirect_levels == 1
    nodes = -(-leaves // htree.DX_NODE_LIMIT)
    assert tree.levels == [leaves, nodes] and tree.first_leaf_block == 1 + nodes
    root = tree.block_bytes(0, 5, 2, CSUM_SEED)
    assert dx_root.parse(root[:32]).info.indirect_levels == 1
    _, count, root_index, _ = _index(root, 32)
    assert count == nodes and [b for _, b in root_index] == list(range(1, 1 + nodes))
    node = tree.block_bytes(1, 5, 2, CSUM_SEED)
    fake = ext4_dir_entry_2.parse(node[:8])
    assert (fake.inode, fake.rec_len, fake.name_len, fake.file_type) == (0, BLOCK, 0, 0)
    limit, count, node_index, _ = _index(node, 8)
    assert limit == 510 and count == min(510, leaves)
    assert [b for _, b in node_index] == list(range(1 + nodes, 1 + nodes + count))
    assert nodes == 2 and root_index[1][0] == tree.leaf_hashes[htree.DX_NODE_LIMIT]  # node 2's first leaf


def test_collision_bit_marks_a_hash_run_continued_in_the_next_leaf(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hashes are forced so one value spans two leaves: the second leaf's index hash gets bit 0."""
    entries = _entries(400)  # 145 entries a leaf

    def forced(names: list[bytes], seed: object) -> list[tuple[int, int]]:
        return [(i + 1 if i < 150 else 0x1000 if i < 350 else 0x100000 + i, 0) for i in range(len(names))]

    monkeypatch.setattr(htree, "half_md4_many", forced)
    tree = htree.Htree(entries, SEED)
    assert tree.leaf_starts == [0, 145, 290]
    # leaf 1 starts in the small hashes; leaf 2 starts inside the run of 0x1000
    assert tree.leaf_hashes == [1, 146, 0x1001]
    _, _, index, _ = _index(tree.block_bytes(0, 2, 2, CSUM_SEED), 32)
    assert index == [(0, 1), (146, 2), (0x1001, 3)]


def test_too_many_levels_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(htree, "DX_ROOT_LIMIT", 2)
    monkeypatch.setattr(htree, "DX_NODE_LIMIT", 2)
    entries = _entries(9 * 150)  # ~9 leaves: 9 -> 5 -> 3 nodes, a third level of index
    with pytest.raises(htree.DirectoryTooLarge):
        htree.Htree(entries, SEED)
