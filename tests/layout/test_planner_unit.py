"""The planner on its own: geometry, inode numbers, allocation order and counters of a Plan.

No image is rendered here: each test plans a small tree built through the
Tree API and checks the Plan against numbers worked out by hand from the
layout the planner documents (ext4gen/layout/planner.py): block 0, the group
descriptors, bitmaps, inode tables, then directory, extent-tree, xattr and
data blocks; root 2, lost+found 11, then each directory's children in name
order, depth first.
"""

from __future__ import annotations

import pytest

import ext4gen
from ext4gen.errors import ManifestError
from ext4gen.format.ondisk import BLOCK_SIZE, BLOCKS_PER_GROUP, INODE_SIZE
from ext4gen.layout.planner import Plan, plan_tree
from ext4gen.model.options import ImageOptions

INODES_PER_ITABLE_BLOCK = BLOCK_SIZE // INODE_SIZE
RESERVED = 10  # inodes 1..10 exist in every ext4 (bad blocks, root, journal...), 11 is lost+found


def _meta(perm: int = 0o644) -> ext4gen.Meta:
    return ext4gen.Meta(perm, 0, 0, 0, 0, 0, 0)


class Pattern(ext4gen.Source):
    """``size`` bytes, every 4 KiB block different from every other (``salt`` tells sources apart)."""

    def __init__(self, size: int, salt: int = 0) -> None:
        self.size = size
        self.salt = salt

    def readinto(self, buf: memoryview, offset: int) -> None:
        first = offset // BLOCK_SIZE
        last = -(-(offset + len(buf)) // BLOCK_SIZE)
        data = b"".join(((self.salt + 1) * 1_000_003 + b).to_bytes(8, "little") * (BLOCK_SIZE // 8)
                        for b in range(first, last))
        skip = offset - first * BLOCK_SIZE
        buf[:] = data[skip : skip + len(buf)]


def _tree() -> ext4gen.Tree:
    return ext4gen.Tree(_meta(0o755))


def _file(tree: ext4gen.Tree, path: str, size: int, salt: int = 0) -> None:
    tree.add(path, ext4gen.Node("file", _meta(), source=Pattern(size, salt)))


def _dir(tree: ext4gen.Tree, path: str) -> None:
    tree.add(path, ext4gen.Node("dir", _meta(0o755)))


def _plan(tree: ext4gen.Tree, **options: object) -> Plan:
    options.setdefault("inline_data", False)
    return plan_tree(tree, ImageOptions(**options))  # type: ignore[arg-type]


def _inos(plan: Plan) -> dict[bytes, int]:
    return {path: ip.ino for path, ip in plan.paths()}


def _data_blocks(plan: Plan, path: bytes) -> list[int]:
    """The absolute block numbers of a file's data, in logical order."""
    ip = dict(plan.paths())[path]
    return [p + i for _logical, n, p in plan.physical_extents(ip) for i in range(n)]


# -- geometry --------------------------------------------------------------------------


def test_a_small_tree_is_one_group_laid_out_back_to_back() -> None:
    tree = _tree()
    _file(tree, "/a", 3 * BLOCK_SIZE + 1)
    _dir(tree, "/d")
    _file(tree, "/d/b", 100)
    plan = _plan(tree)
    geo = plan.geometry
    assert geo.groups == 1
    assert geo.gdt_blocks == 1
    assert geo.block_bitmap_start == 1 + geo.gdt_blocks
    assert geo.inode_bitmap_start == geo.block_bitmap_start + geo.groups
    assert geo.inode_table_start == geo.inode_bitmap_start + geo.groups
    # inodes 1..14 (root 2, lost+found 11, /a 12, /d 13, /d/b 14) fit one inode-table block
    assert plan.last_ino == 14
    assert geo.itable_blocks_per_group == 1
    assert geo.inodes_per_group == INODES_PER_ITABLE_BLOCK
    assert geo.inodes_count == geo.groups * geo.inodes_per_group >= plan.last_ino
    assert geo.dir_start == geo.inode_table_start + geo.groups * geo.itable_blocks_per_group
    # root, lost+found and /d take one directory block each; no extent tree or xattr blocks
    assert geo.tree_start == geo.dir_start + 3
    assert geo.xattr_start == geo.tree_start
    assert geo.data_start == geo.xattr_start
    assert geo.used_blocks == geo.data_start + 4 + 1  # /a: 4 blocks, /d/b: 1 block
    # exactly as large as its content: nothing free, no padding
    assert geo.blocks_count == geo.used_blocks and geo.free_blocks == 0
    assert geo.group_block_range(0) == (0, geo.blocks_count)


def test_data_beyond_one_group_adds_groups_and_only_pads_when_forced() -> None:
    tree = _tree()
    _file(tree, "/big", (BLOCKS_PER_GROUP + 100) * BLOCK_SIZE)
    plan = _plan(tree, dedup="none")
    geo = plan.geometry
    assert geo.groups == 2
    assert geo.used_blocks == geo.data_start + BLOCKS_PER_GROUP + 100
    assert geo.blocks_count == geo.used_blocks > BLOCKS_PER_GROUP  # the last group holds real blocks
    assert geo.group_block_range(0) == (0, BLOCKS_PER_GROUP)
    assert geo.group_block_range(1) == (BLOCKS_PER_GROUP, geo.blocks_count)
    # inodes are spread over the groups: each group's table holds its share
    assert geo.inodes_per_group == geo.itable_blocks_per_group * INODES_PER_ITABLE_BLOCK


def test_inodes_alone_can_force_groups_and_then_the_last_group_is_padded() -> None:
    """More inodes than one group has blocks: two groups, the second holding only padding."""
    tree = _tree()
    n = BLOCKS_PER_GROUP + 1000
    for i in range(n):
        _file(tree, f"/d{i // 4000}/f{i}", 0)
    plan = _plan(tree)
    geo = plan.geometry
    assert plan.last_ino > BLOCKS_PER_GROUP
    assert geo.groups == 2
    assert geo.used_blocks < BLOCKS_PER_GROUP  # the content alone fits one group's blocks...
    assert geo.blocks_count == BLOCKS_PER_GROUP + 1  # ...so the second group gets one block
    assert geo.free_blocks == geo.blocks_count - geo.used_blocks
    assert geo.inodes_per_group * geo.groups >= plan.last_ino
    assert sum(plan.used_inodes_per_group) == n + 10 + 1 + 9  # files, inodes 1..11, /d0../d8
    assert all(count > 0 for count in plan.used_inodes_per_group)


# -- inode numbers ---------------------------------------------------------------------


def test_root_is_2_lost_found_11_then_children_in_name_order_depth_first() -> None:
    tree = _tree()
    for path in ("/c", "/b/y", "/a", "/b/x"):  # declared out of order on purpose
        _file(tree, path, 10)
    _dir(tree, "/b/sub")
    _file(tree, "/b/sub/deep", 10)
    plan = _plan(tree)
    assert _inos(plan) == {
        b"/": 2, b"/lost+found": 11,
        b"/a": 12, b"/b": 13, b"/c": 14,  # the root's children, consecutively
        b"/b/sub": 15, b"/b/x": 16, b"/b/y": 17,  # then /b's (lost+found has none)
        b"/b/sub/deep": 18,
    }
    assert plan.last_ino == 18
    assert len(plan.inodes) == plan.last_ino + 1
    assert all(plan.inodes[i] is None for i in (0, 1, *range(3, 11)))  # reserved: not planned
    assert all(ip is not None and ip.ino == i for i, ip in enumerate(plan.inodes) if i in (2, *range(11, 19)))


def test_a_declared_lost_found_keeps_number_11_and_its_metadata() -> None:
    tree = _tree()
    tree.add("/lost+found", ext4gen.Node("dir", _meta(0o750)))
    _file(tree, "/a", 1)
    plan = _plan(tree)
    ip = dict(plan.paths())[b"/lost+found"]
    assert ip.ino == 11
    assert ip.mode & 0o7777 == 0o750
    assert _inos(plan)[b"/a"] == 12


def test_lost_found_that_is_not_a_directory_is_refused() -> None:
    tree = _tree()
    _file(tree, "/lost+found", 1)
    with pytest.raises(ManifestError, match="lost\\+found"):
        _plan(tree)


def test_link_counts_hard_links_and_directories() -> None:
    tree = _tree()
    _file(tree, "/f", 10)
    tree.add_hardlink("/g", "/f", key="/g")
    _dir(tree, "/d")
    _dir(tree, "/d/e")
    _dir(tree, "/d/e2")
    plan = _plan(tree)
    by_path = dict(plan.paths())
    assert by_path[b"/f"] is by_path[b"/g"]
    assert by_path[b"/f"].links == 2
    assert by_path[b"/d"].links == 2 + 2  # "." and its name, plus each subdirectory's ".."
    assert by_path[b"/d/e"].links == 2
    assert by_path[b"/"].links == 2 + 2  # subdirectories /d and /lost+found


# -- allocation order ------------------------------------------------------------------


def test_data_blocks_follow_inode_order_and_directories_come_first() -> None:
    tree = _tree()
    _file(tree, "/z/late", 2 * BLOCK_SIZE, salt=1)
    _file(tree, "/a", 3 * BLOCK_SIZE, salt=2)
    _file(tree, "/m", BLOCK_SIZE + 5, salt=3)
    plan = _plan(tree)
    geo = plan.geometry
    inos = _inos(plan)
    files = sorted((b"/a", b"/m", b"/z/late"), key=inos.__getitem__)
    blocks = [_data_blocks(plan, f) for f in files]
    assert [len(b) for b in blocks] == [3, 2, 2]
    flat = [b for bs in blocks for b in bs]
    assert flat == list(range(geo.data_start, geo.data_start + 7))  # contiguous, in inode order
    assert geo.used_blocks == geo.data_start + 7
    # directory blocks sit in their own area, in inode order
    owners = [ip.ino for ip, _index in plan.dir_block_owner]
    assert owners == sorted(owners) == [2, 11, inos[b"/z"]]
    for ip, _index in plan.dir_block_owner:
        for _logical, n, p in plan.physical_extents(ip):
            assert geo.dir_start <= p and p + n <= geo.tree_start


def test_identical_content_is_stored_once_unless_dedup_is_off() -> None:
    def tree_of_twins() -> ext4gen.Tree:
        tree = _tree()
        _file(tree, "/one", 4 * BLOCK_SIZE, salt=7)
        _file(tree, "/two", 4 * BLOCK_SIZE, salt=7)
        return tree

    shared = _plan(tree_of_twins(), dedup="content")
    assert _data_blocks(shared, b"/one") == _data_blocks(shared, b"/two")
    assert shared.shared_blocks
    assert shared.geometry.used_blocks - shared.geometry.data_start == 4

    apart = _plan(tree_of_twins(), dedup="none")
    assert set(_data_blocks(apart, b"/one")).isdisjoint(_data_blocks(apart, b"/two"))
    assert not apart.shared_blocks
    assert apart.geometry.used_blocks - apart.geometry.data_start == 8


def test_inline_data_keeps_small_files_out_of_the_data_area() -> None:
    tree = _tree()
    _file(tree, "/small", 40)
    _file(tree, "/large", 2 * BLOCK_SIZE)
    plan = _plan(tree, inline_data=True)
    by_path = dict(plan.paths())
    assert by_path[b"/small"].inline_size == 40 and not by_path[b"/small"].extents
    assert by_path[b"/large"].inline_size == -1
    assert plan.geometry.used_blocks - plan.geometry.data_start == 2


# -- counters --------------------------------------------------------------------------


def test_counters_add_up() -> None:
    tree = _tree()
    for d in range(3):
        _dir(tree, f"/d{d}")
        for i in range(40):
            _file(tree, f"/d{d}/f{i:02d}", (i % 5) * BLOCK_SIZE + i, salt=d * 100 + i)
    for i in range(300):  # a directory of several blocks (htree)
        _file(tree, f"/many/{'n' * 60}{i:04d}", 0)
    _file(tree, "/fragmented", 9 * BLOCK_SIZE, salt=5)
    plan = _plan(tree)
    geo = plan.geometry
    planned = [ip for ip in plan.inodes if ip is not None]

    assert len(plan.dir_block_owner) == geo.tree_start - geo.dir_start
    assert len(plan.tree_block_owner) == geo.xattr_start - geo.tree_start
    assert len(plan.xattr_blocks) == geo.data_start - geo.xattr_start
    assert sum(run.nblocks for run in plan.runs) == geo.used_blocks - geo.data_start
    assert geo.free_blocks == geo.blocks_count - geo.used_blocks >= 0
    # every planned inode, plus the reserved ones below lost+found, is counted once per group
    assert sum(plan.used_inodes_per_group) == len(planned) + RESERVED - 1  # inode 2 is planned
    assert sum(plan.used_dirs_per_group) == sum(1 for ip in planned if ip.mode & 0o170000 == 0o040000)
    # with dedup off every data block belongs to one inode: blocks_4k adds up to the areas
    assert sum(ip.blocks_4k for ip in planned if ip.in_data_area) == (
        geo.used_blocks - geo.data_start) + len(plan.tree_block_owner)
    # directory sizes are their blocks; file sizes their source's
    for ip, _index in plan.dir_block_owner:
        assert ip.size == sum(n for _l, n, _p in ip.extents) * BLOCK_SIZE


# -- Plan.paths ------------------------------------------------------------------------


def test_paths_names_every_inode_once_per_name() -> None:
    tree = _tree()
    _file(tree, "/a/b/c", 1)
    _file(tree, "/a/x", 1)
    tree.add_hardlink("/y", "/a/x", key="/y")
    tree.add("/s", ext4gen.Node("symlink", _meta(0o777), target=b"a/x"))
    plan = _plan(tree)
    pairs = list(plan.paths())
    assert pairs[0][0] == b"/"
    paths = [p for p, _ip in pairs]
    assert len(paths) == len(set(paths))
    assert set(paths) == {b"/", b"/lost+found", b"/a", b"/a/b", b"/a/b/c", b"/a/x", b"/y", b"/s"}
    named = {ip.ino for _p, ip in pairs}
    assert named == {ip.ino for ip in plan.inodes if ip is not None}  # every inode has a name
    by_path = dict(pairs)
    assert by_path[b"/y"] is by_path[b"/a/x"]
