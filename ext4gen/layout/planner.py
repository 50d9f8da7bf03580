"""Turn a :class:`Tree` into a complete block layout before any byte is produced.

The image is laid out as::

    block 0           boot area + superblock (sparse_super2, no backups)
    1 .. gdt          group descriptors
    G blocks          block bitmaps, one per group
    G blocks          inode bitmaps, one per group
    G * itb blocks    inode tables (UNINIT groups' tables are served as zeros)
    dir blocks        every directory's leaf blocks, in inode order
    tree blocks       extent index/leaf blocks of fragmented files
    xattr blocks      external xattr blocks, each shared by inodes with equal sets
    data blocks       unique file data, in inode order; shared blocks appear once

Metadata never shares blocks (the kernel's system zone and e2fsck forbid it);
data blocks may be shared (RO_COMPAT_SHARED_BLOCKS).  Everything is allocated:
the filesystem is exactly as large as its content, with exact free counters.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from .. import progress
from ..errors import ManifestError, SourceError
from ..format.dirhash import seed_words
from ..format.ondisk import (
    BLOCK_SIZE,
    BLOCKS_PER_GROUP,
    DESCS_PER_BLOCK,
    EXT4_EXTENTS_FL,
    EXT4_INDEX_FL,
    EXT4_INLINE_DATA_FL,
    EXT4_LINK_MAX,
    FIRST_INO,
    FT_BLKDEV,
    FT_CHRDEV,
    FT_DIR,
    FT_FIFO,
    FT_REG_FILE,
    FT_SOCK,
    FT_SYMLINK,
    INODE_XATTR_SPACE,
    INODES_PER_BLOCK,
    ROOT_INO,
    S_IFBLK,
    S_IFCHR,
    S_IFDIR,
    S_IFIFO,
    S_IFLNK,
    S_IFREG,
    S_IFSOCK,
    XATTR_REFCOUNT_MAX,
)
from ..model.identity import IdentityMap
from ..model.options import ImageOptions
from ..model.sources import HostFileSource, InlineSource, Source, ZeroSource
from ..model.times import NS
from ..model.tree import (
    BLOCKDEV,
    CHARDEV,
    DIR,
    FIFO,
    FILE,
    SOCKET,
    SYMLINK,
    Meta,
    Node,
    Tree,
    file_size_error,
)
from ..model.xattrs import DiskXattr, XattrError, split_placement, to_disk
from . import dirents
from .dedup import DataAllocator, DedupStats, Extent, ExtentBuilder, Run
from .extents import ExtentTree, tree_levels
from .htree import DirectoryTooLarge, Htree
from .inline import MAX_INLINE_SIZE, inline_dir_size, inline_xattr_cost

FAST_SYMLINK_MAX = 59  # targets shorter than i_block (60 bytes) live in the inode
LOST_FOUND = b"lost+found"

TYPE_BITS = {FILE: (S_IFREG, FT_REG_FILE), DIR: (S_IFDIR, FT_DIR), SYMLINK: (S_IFLNK, FT_SYMLINK),
             CHARDEV: (S_IFCHR, FT_CHRDEV), BLOCKDEV: (S_IFBLK, FT_BLKDEV), FIFO: (S_IFIFO, FT_FIFO),
             SOCKET: (S_IFSOCK, FT_SOCK)}


@dataclass(slots=True, eq=False)
class InodePlan:
    """Everything needed to generate one inode and the blocks it owns."""

    ino: int
    node: Node
    mode: int
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


@dataclass
class Geometry:
    groups: int
    inodes_per_group: int
    itable_blocks_per_group: int
    gdt_blocks: int
    blocks_count: int
    used_blocks: int
    block_bitmap_start: int
    inode_bitmap_start: int
    inode_table_start: int
    dir_start: int
    tree_start: int
    xattr_start: int
    data_start: int
    log_groups_per_flex: int

    @property
    def inodes_count(self) -> int:
        return self.groups * self.inodes_per_group

    @property
    def free_blocks(self) -> int:
        return self.blocks_count - self.used_blocks

    def group_block_range(self, g: int) -> tuple[int, int]:
        start = g * BLOCKS_PER_GROUP
        return start, min(start + BLOCKS_PER_GROUP, self.blocks_count)


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
        """Every name of every inode, found by walking the tree (kept only while needed)."""
        by_node = {ip.node: ip for ip in self.inodes if ip is not None}
        root = self.inodes[ROOT_INO]
        assert root is not None
        yield b"/", root
        stack = [(b"", root.node)]
        while stack:
            prefix, node = stack.pop()
            assert node.children is not None
            for name, child in node.children.items():
                path = prefix + b"/" + name
                yield path, by_node[child]
                if child.kind == DIR:
                    stack.append((path, child))

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


def plan_tree(tree: Tree, options: ImageOptions | None = None) -> Plan:
    options = options or ImageOptions()
    tree.resolve_links()
    inodes = _number_inodes(tree, options)
    allocator = DataAllocator(options.dedup)
    inline_bytes = _allocate_data(inodes, options, allocator)
    # After the data: the default UUID and hash seed digest the content read for dedup.
    seed = _identity_digest(tree, options, inodes, allocator.content_digest())
    base = options.base_map
    uuid = options.uuid or (base.uuid if base else None) or _uuid_from(seed[:16])
    hash_seed = options.hash_seed or (base.hash_seed if base else None) or _uuid_from(seed[16:32])
    hash_words = seed_words(hash_seed)
    dir_blocks = 0
    dir_block_owner: list[tuple[InodePlan, int]] = []
    large_dir = False
    for ip in inodes:
        if ip is None:
            continue
        node = ip.node
        if node.kind == DIR:
            assert ip.entries is not None
            # the kernel rejects a root without blocks; e2fsck wants lost+found in blocks
            inline_size = (inline_dir_size(ip.entries)
                           if options.inline_data and ip.ino not in (ROOT_INO, FIRST_INO) else None)
            if inline_size is not None and _xattrs_fit_beside(node, inline_size):
                ip.inline_size = inline_size
                ip.size = inline_size
                ip.flags |= EXT4_INLINE_DATA_FL
                continue
            nblocks = 1
            if len(dirents.split_blocks(ip.entries)) > 1:
                try:
                    ip.htree = Htree(ip.entries[2:], hash_words)
                except DirectoryTooLarge as e:
                    raise ManifestError(node.key, str(e)) from None
                ip.flags |= EXT4_INDEX_FL
                nblocks = ip.htree.nblocks
                large_dir = large_dir or ip.htree.indirect_levels > 1
            ip.in_data_area = False
            ip.size = nblocks * BLOCK_SIZE
            builder = ExtentBuilder()
            builder.add(0, dir_blocks, nblocks)
            ip.extents = builder.finish()
            dir_block_owner.extend((ip, i) for i in range(nblocks))
            dir_blocks += nblocks

    tree_blocks = 0
    tree_block_owner: list[tuple[InodePlan, int]] = []
    for ip in inodes:
        if ip is None:
            continue
        data = sum(e[1] for e in ip.extents)
        if ip.inline_size < 0 and (ip.node.kind in (FILE, DIR) or ip.extents):
            ip.flags |= EXT4_EXTENTS_FL
            n = sum(tree_levels(len(ip.extents)))
            if n:
                ip.tree_start = tree_blocks
                ip.n_tree_blocks = n
                tree_block_owner.extend((ip, i) for i in range(n))
                tree_blocks += n
        ip.blocks_4k = data + ip.n_tree_blocks

    xattr_blocks = _place_xattrs(inodes)
    last_ino = len(inodes) - 1
    geo = _solve_geometry(last_ino, dir_blocks, tree_blocks, len(xattr_blocks), allocator.next_block)

    ipg = geo.inodes_per_group
    dirs = [0] * geo.groups
    used = [0] * geo.groups
    last_idx = [-1] * geo.groups
    for ino in range(1, last_ino + 1):
        g, idx = divmod(ino - 1, ipg)
        ip = inodes[ino]
        if ino < FIRST_INO or ip is not None:
            used[g] += 1
            last_idx[g] = idx
            if ip is not None and ip.node.kind == DIR:
                dirs[g] += 1

    return Plan(
        options=options,
        uuid=uuid,
        hash_seed=hash_seed,
        large_dir=large_dir,
        geometry=geo,
        inodes=inodes,
        last_ino=last_ino,
        dir_block_owner=dir_block_owner,
        tree_block_owner=tree_block_owner,
        xattr_blocks=xattr_blocks,
        runs=allocator.runs,
        shared_blocks=allocator.shared,
        dedup_stats=allocator.stats,
        used_dirs_per_group=dirs,
        used_inodes_per_group=used,
        last_used_index_per_group=last_idx,
        inline_bytes=inline_bytes,
    )


def _allocate_data(inodes: list[InodePlan | None], options: ImageOptions,
                   allocator: DataAllocator) -> dict[int, bytes]:
    """Files and long symlinks: inline, or data blocks (deduplicated), in inode order.

    Returns the bytes of inline host files, read once here so that serving never
    touches their sources again (a changed tiny file cannot fail an inode-table block).
    """
    to_hash = 0
    if options.dedup == "content":
        to_hash = sum(ip.node.source.size for ip in inodes if ip is not None and ip.node.kind == FILE
                      and ip.node.source is not None and ip.node.source.plan_readable)
    with progress.phase("hashing", to_hash or None, unit="B", scale=True) as tick:
        allocator.on_read = tick
        try:
            return _allocate_each(inodes, options, allocator)
        finally:
            allocator.on_read = None


def _allocate_each(inodes: list[InodePlan | None], options: ImageOptions,
                   allocator: DataAllocator) -> dict[int, bytes]:
    inline_bytes: dict[int, bytes] = {}
    for ip in inodes:
        if ip is None:
            continue
        node = ip.node
        if node.kind == FILE:
            source = node.source
            assert source is not None
            ip.size = source.size
            problem = file_size_error(ip.size)
            if problem:
                raise ManifestError(node.key or "/", problem)
            # Dynamic content (generators) is never inlined: it must be produced on read,
            # and a failure must cost its own data blocks, not a block of 16 inodes.
            if (options.inline_data and 0 < ip.size <= MAX_INLINE_SIZE and source.plan_readable
                    and not source.all_zero and _xattrs_fit_beside(node, ip.size)):
                ip.inline_size = ip.size
                ip.flags |= EXT4_INLINE_DATA_FL
                if isinstance(source, HostFileSource):
                    inline_bytes[ip.ino] = _read_at_plan_time(source, node.key)
            else:
                ip.extents = allocator.allocate(source)
        elif node.kind == SYMLINK:
            ip.size = len(node.target)
            if ip.size > FAST_SYMLINK_MAX:
                ip.extents = allocator.allocate(InlineSource(node.target))
    allocator.finish()
    return inline_bytes


def _read_at_plan_time(source: Source, key: str) -> bytes:
    """All bytes of a small pinned source, checked against its pin, for an inline inode."""
    buf = bytearray(source.size)
    direct = source.host_range()
    try:
        if direct is None:  # sparse or segmented: the general path
            source.readinto(memoryview(buf), 0)
            return bytes(buf)
        # One file read once: open, read, close, without taking a slot of the
        # serve-time descriptor cache for bytes that will never be read again.
        hf, base = direct
        fd = hf.open_pinned()
        try:
            got = 0
            while got < len(buf):
                n = os.preadv(fd, [memoryview(buf)[got:]], base + got)
                if n <= 0:
                    raise SourceError(f"{hf.path}: source is shorter than planned")
                got += n
            hf.check(os.fstat(fd))
        finally:
            os.close(fd)
    except (SourceError, OSError) as e:
        raise ManifestError(key or "/", f"cannot read source: {e}") from None
    return bytes(buf)


def _number_inodes(tree: Tree, options: ImageOptions) -> list[InodePlan | None]:
    """Assign inode numbers and generations, then build every directory's entries.

    Without a base map: root 2, lost+found 11, then each directory's children
    consecutively in name order (depth-first), so `ls -l` touches few itable
    blocks.  With one, unchanged paths keep their numbers and generations.
    Paths are built only for that lookup: a million of them would be kept for nothing.
    """
    root_node = tree.root
    assert root_node.children is not None
    lf = root_node.children.get(LOST_FOUND)
    if lf is None:
        m = root_node.meta
        lf = Node(DIR, Meta(0o700, 0, 0, m.mtime, m.mtime, m.mtime, m.mtime), key="/lost+found",
                  children={})
        root_node.children[LOST_FOUND] = lf
    elif lf.kind != DIR:
        raise ManifestError(lf.key, "/lost+found must be a directory (e2fsck requires one)")

    # 1. every distinct node in depth-first, name-sorted order (with its first path if needed)
    base = options.base_map
    order: list[InodePlan] = []
    first_path: dict[InodePlan, bytes] = {}
    by_node: dict[Node, InodePlan] = {}  # nodes hash by identity
    dirs: list[tuple[InodePlan, InodePlan, list[bytes]]] = []  # (directory, parent, sorted names)
    modes: dict[int, int] = {}  # one int object per distinct mode, not one per inode

    root = InodePlan(ino=0, node=root_node, mode=S_IFDIR | root_node.meta.perm)
    by_node[root_node] = root
    order.append(root)
    first_path[root] = b"/"
    stack: list[tuple[InodePlan, InodePlan, bytes]] = [(root, root, b"")]
    while stack:
        dir_ip, parent_ip, path = stack.pop()
        children = dir_ip.node.children
        assert children is not None
        names = sorted(children)
        dirs.append((dir_ip, parent_ip, names))
        subdirs = []
        for name in names:
            child = children[name]
            ip = by_node.get(child)
            if ip is None:
                mode = TYPE_BITS[child.kind][0] | child.meta.perm
                ip = InodePlan(ino=0, node=child, mode=modes.setdefault(mode, mode))
                by_node[child] = ip
                order.append(ip)
                if base is not None:
                    first_path[ip] = path + b"/" + name
            ip.links += 1
            if child.kind == DIR:  # directories have exactly one name
                subdirs.append((ip, path + b"/" + name))
        dir_ip.links += 1 + len(subdirs)  # "." plus each subdirectory's ".."
        for sub, sub_path in reversed(subdirs):
            stack.append((sub, dir_ip, sub_path))
    root.links += 1  # the root's ".." names itself

    # 2. numbers and generations
    taken: set[int] = set()
    fixed = {root_node: ROOT_INO, lf: FIRST_INO}
    for ip in order:
        ino = fixed.get(ip.node, 0)
        if ino == 0 and base is not None:
            prev = base.paths.get(first_path[ip])
            if prev is not None and prev[2] == ip.node.kind and prev[0] > FIRST_INO and prev[0] not in taken:
                ino, ip.generation = prev[0], prev[1]
        if ino:
            ip.ino = ino
            taken.add(ino)
    next_ino = FIRST_INO + 1
    for ip in order:
        if ip.ino:
            if ip.ino in (ROOT_INO, FIRST_INO) and base is not None:
                prev = base.paths.get(first_path[ip])
                ip.generation = prev[1] if prev is not None and prev[0] == ip.ino else 0
            continue
        while next_ino in taken:  # numbers handed out here only grow: no need to add them
            next_ino += 1
        ip.ino = next_ino
        next_ino += 1
        if base is not None:
            last = base.last_generation(ip.ino)
            ip.generation = 0 if last is None else (last + 1) & 0xFFFFFFFF
    inodes: list[InodePlan | None] = [None] * (max(max(taken), next_ino - 1) + 1)
    del taken, first_path
    for ip in order:
        inodes[ip.ino] = ip

    # 3. directory entries, now that numbers are known
    for dir_ip, parent_ip, names in dirs:
        children = dir_ip.node.children
        assert children is not None
        entries: list[dirents.DirEntry] = [(b".", dir_ip.ino, FT_DIR), (b"..", parent_ip.ino, FT_DIR)]
        for name in names:
            child = children[name]
            entries.append((name, by_node[child].ino, TYPE_BITS[child.kind][1]))
        dir_ip.entries = entries

    for ip in order:
        if ip.node.kind == DIR:
            if ip.links > EXT4_LINK_MAX:
                ip.links = 1  # dir_nlink: "too many to count"
        elif ip.links > EXT4_LINK_MAX:
            raise ManifestError(ip.node.key, f"{ip.links} hard links, over ext4's {EXT4_LINK_MAX}")
    return inodes


def _solve_geometry(last_ino: int, dir_blocks: int, tree_blocks: int, xattr_blocks: int,
                    data_blocks: int) -> Geometry:
    """Smallest group count whose metadata plus content fits; pad only if forced."""

    def layout(groups: int) -> tuple[int, int, int, int]:
        itb = max(1, _ceil_div(_ceil_div(last_ino, groups), INODES_PER_BLOCK))
        ipg = itb * INODES_PER_BLOCK
        gdt = _ceil_div(groups, DESCS_PER_BLOCK)
        used = (1 + gdt + 2 * groups + groups * itb + dir_blocks + tree_blocks + xattr_blocks
                + data_blocks)
        return ipg, itb, gdt, used

    groups = max(1, _ceil_div(last_ino, BLOCKS_PER_GROUP))
    while True:
        ipg, itb, gdt, used = layout(groups)
        need = _ceil_div(used, BLOCKS_PER_GROUP)
        if need <= groups:
            break
        groups += 1
    if used >= 1 << 48:
        raise ManifestError("/", "the image would exceed ext4's 2^48-block limit")
    # Every group must hold at least one block; pad the last one if the fit is loose.
    blocks_count = max(used, (groups - 1) * BLOCKS_PER_GROUP + 1)
    bb = 1 + gdt
    ib = bb + groups
    it = ib + groups
    dir_start = it + groups * itb
    flex = max(4, (groups - 1).bit_length())
    return Geometry(
        groups=groups, inodes_per_group=ipg, itable_blocks_per_group=itb, gdt_blocks=gdt,
        blocks_count=blocks_count, used_blocks=used, block_bitmap_start=bb,
        inode_bitmap_start=ib, inode_table_start=it, dir_start=dir_start,
        tree_start=dir_start + dir_blocks, xattr_start=dir_start + dir_blocks + tree_blocks,
        data_start=dir_start + dir_blocks + tree_blocks + xattr_blocks,
        log_groups_per_flex=min(flex, 31),
    )


@dataclass(slots=True, eq=False)
class XattrBlock:
    entries: list[DiskXattr]
    refcount: int


def _xattrs_fit_beside(node: Node, inline_size: int) -> bool:
    """Inline data takes inode space from xattrs; inline only if the xattrs still fit."""
    if not node.xattrs:
        return True
    try:
        split_placement(to_disk(node.xattrs), INODE_XATTR_SPACE - inline_xattr_cost(inline_size))
    except XattrError:
        return False
    return True


def _place_xattrs(inodes: list[InodePlan | None]) -> list[XattrBlock]:
    """Split each inode's xattrs between its spare bytes and a shared external block."""
    blocks: list[XattrBlock] = []
    by_content: dict[tuple[DiskXattr, ...], int] = {}
    for ip in inodes:
        if ip is None or not ip.node.xattrs:
            continue
        space = INODE_XATTR_SPACE
        if ip.inline_size >= 0:  # system.data comes first and always stays in the inode
            space -= inline_xattr_cost(ip.inline_size)
        try:
            if ip.node.kind not in (FILE, DIR) and any(n.startswith(b"user.") for n in ip.node.xattrs):
                raise XattrError("the kernel allows user.* attributes only on regular files "
                                 "and directories")
            in_inode, in_block = split_placement(to_disk(ip.node.xattrs), space)
        except XattrError as e:
            raise ManifestError(ip.node.key + ".xattrs", str(e)) from None
        ip.xattr_inode = in_inode
        if in_block:
            key = tuple(in_block)
            index = by_content.get(key)
            if index is None or blocks[index].refcount >= XATTR_REFCOUNT_MAX:
                index = len(blocks)
                blocks.append(XattrBlock(in_block, 0))
                by_content[key] = index
            blocks[index].refcount += 1
            ip.xattr_block = index
            ip.blocks_4k += 1
    return blocks


def identity_map(plan: Plan) -> IdentityMap:
    """The map a later build can use as ``--base-map`` to keep these identities."""
    m = IdentityMap(uuid=plan.uuid, hash_seed=plan.hash_seed)
    for path, ip in plan.paths():
        m.paths[path] = (ip.ino, ip.generation, ip.node.kind)
    used = {ip.ino for ip in plan.inodes if ip is not None}
    base = plan.options.base_map
    if base is not None:
        for ino, gen in base.retired.items():
            if ino not in used:
                m.retired[ino] = gen
        for ino, gen, _kind in base.paths.values():
            if ino not in used:
                m.retired[ino] = max(gen, m.retired.get(ino, gen))
    return m


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _identity_digest(tree: Tree, options: ImageOptions, inodes: list[InodePlan | None],
                     content: bytes) -> bytes:
    """A digest of everything that defines the image, for the default UUID and hash seed.

    It never names where a host file lives (the same tree built from a relative
    or an absolute path, or from another checkout, is the same image): host
    files count by their size and layout (extents), and by their bytes through
    ``content``, the digest of every block dedup read; with ``dedup = "none"``
    nothing is read at plan time, so two trees that differ only in host file
    bytes then share a UUID unless one is given.
    """
    h = hashlib.sha256(b"ext4gen-3\0")
    h.update(content)
    h.update(options.label.encode() + b"\0" + options.dedup.encode() + b"\0")
    h.update(options.epoch_ns.to_bytes(16, "little", signed=True))
    h.update(b"inline" if options.inline_data else b"blocks")
    pack = _DIGEST_INODE.pack
    update = h.update
    for ip in inodes:
        if ip is None:
            continue
        n = ip.node
        m = n.meta
        update(pack(ip.ino, ip.mode, m.uid, m.gid, *divmod(m.atime, NS), *divmod(m.mtime, NS),
                    *divmod(m.ctime, NS), *divmod(m.crtime, NS), n.size, n.rdev[0], n.rdev[1]))
        if n.target:
            update(n.target)
        if n.xattrs:
            update(repr(sorted(n.xattrs.items())).encode())
        if isinstance(n.source, InlineSource):
            update(hashlib.sha256(n.source.data).digest())
        elif n.source is not None and not isinstance(n.source, (ZeroSource, HostFileSource)):
            update(n.source.describe().encode("utf-8", "surrogateescape"))  # generators: name, identity
        if ip.extents:
            update(repr(ip.extents).encode())
        if ip.entries:
            for name, ino, _ft in ip.entries:
                update(name)
                update(ino.to_bytes(4, "little"))
    return h.digest()


_DIGEST_INODE = struct.Struct("<IIII" + "qI" * 4 + "QII")  # times as (seconds, ns): they pass 2^63 ns


def _uuid_from(raw: bytes) -> bytes:
    """Shape 16 bytes as an RFC 4122 version-4-style UUID (deterministic here)."""
    b = bytearray(raw)
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    return bytes(b)
