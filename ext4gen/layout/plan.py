"""What the planner hands to rendering: a :class:`Plan` that stands alone.

A plan holds no reference into the :class:`~ext4gen.model.tree.Tree` it was
made from: each :class:`InodePlan` carries the few things of its node that
rendering needs (kind, metadata, source, symlink target, device numbers), and
every name lives in its directory's entries, so the tree can be dropped, or
changed, once planning returns.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from ..format.ondisk import FT_DIR, ROOT_INO
from ..model.options import ImageOptions
from ..model.sources import Source
from ..model.tree import Meta
from ..model.xattrs import DiskXattr
from . import dirents
from .dedup import DedupStats, Extent, Run
from .extents import ExtentTree, tree_levels
from .geometry import Geometry
from .htree import Htree

NO_RDEV = (0, 0)


@dataclass(slots=True, eq=False)
class InodePlan:
    """Everything needed to generate one inode and the blocks it owns.

    ``meta`` and ``source`` are shared with the node the inode was planned from:
    both are values (a Meta is replaced, never changed in place), not tree links.
    """

    ino: int
    kind: str  # one of ext4gen.model.tree.KINDS
    meta: Meta
    mode: int
    source: Source | None = None  # files
    target: bytes = b""  # symlinks
    rdev: tuple[int, int] = NO_RDEV  # character and block devices (major, minor)
    links: int = 0
    size: int = 0
    flags: int = 0
    extents: Sequence[Extent] = ()  # physical blocks relative to the data or directory area
    in_data_area: bool = True  # False for directories (their blocks are metadata)
    tree_start: int = 0  # first extent-tree block, relative to the tree area
    n_tree_blocks: int = 0
    blocks_4k: int = 0  # data + tree blocks, for i_blocks
    entries: list[dirents.DirEntry] | None = None  # directories, in name order
    htree: Htree | None = None  # directories of more than one block
    generation: int = 0
    xattr_inode: Sequence[DiskXattr] = ()  # in the inode's spare bytes
    xattr_block: int = -1  # index into Plan.xattr_blocks, -1 = none
    inline_size: int = -1  # inline_data: bytes of content in i_block + system.data, -1 = not inline


@dataclass(slots=True, eq=False)
class XattrBlock:
    """One external xattr block, shared by ``refcount`` inodes with equal sets."""

    entries: list[DiskXattr]
    refcount: int


@dataclass
class Plan:
    """The complete layout.  Immutable once returned by :func:`plan_tree`."""

    options: ImageOptions
    uuid: bytes
    hash_seed: bytes
    large_dir: bool
    geometry: Geometry
    inodes: list[InodePlan | None]  # index = inode number; None = unused/reserved
    last_ino: int
    dir_block_owner: list[tuple[InodePlan, int]]  # per dir-area block: (dir, block index)
    tree_block_owner: list[tuple[InodePlan, int]]  # per tree-area block: (inode, tree block index)
    xattr_blocks: list[XattrBlock]
    runs: list[Run]  # data runs; .block relative to data_start
    shared_blocks: bool
    dedup_stats: DedupStats
    used_dirs_per_group: list[int]
    used_inodes_per_group: list[int]
    last_used_index_per_group: list[int]  # -1 when the group has no used inode
    #: inode number -> content of an inline file whose source is a host file, read once
    #: at plan time: its bytes live in an inode-table block shared with 15 other inodes,
    #: so a source changed later must neither fail that block nor change what it holds.
    inline_bytes: dict[int, bytes] = field(default_factory=dict)

    def paths(self) -> Iterator[tuple[bytes, InodePlan]]:
        """Every name of every inode, from the directories' own entries (depth first)."""
        inodes = self.inodes
        root = inodes[ROOT_INO]
        assert root is not None
        yield b"/", root
        stack = [(b"", root)]
        while stack:
            prefix, dir_ip = stack.pop()
            assert dir_ip.entries is not None
            for name, ino, ft in dir_ip.entries[2:]:  # after "." and ".."
                ip = inodes[ino]
                assert ip is not None
                path = prefix + b"/" + name
                yield path, ip
                if ft == FT_DIR:
                    stack.append((path, ip))

    def physical_extents(self, ip: InodePlan) -> list[Extent]:
        """``ip.extents`` with absolute block numbers."""
        base = self.geometry.data_start if ip.in_data_area else self.geometry.dir_start
        return [(logical, n, base + p) for logical, n, p in ip.extents]

    def extent_tree(self, ip: InodePlan) -> ExtentTree:
        """The extent tree of an inode with EXT4_EXTENTS_FL, built when its bytes are needed."""
        geo = self.geometry
        first = geo.tree_start + ip.tree_start
        return ExtentTree(ip.extents, tree_levels(len(ip.extents)),
                          range(first, first + ip.n_tree_blocks),
                          geo.data_start if ip.in_data_area else geo.dir_start)
