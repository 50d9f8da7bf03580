"""Inode numbers, generations, link counts and directory entries.

Without a base map: root 2, lost+found 11, then each directory's children
consecutively in name order (depth first), so ``ls -l`` touches few inode-table
blocks.  With one, unchanged paths keep their numbers and generations.

The caller's tree is only read: a missing lost+found is planned from a node
of our own, never added to the tree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import ManifestError
from ..format.ondisk import (
    EXT4_LINK_MAX,
    FIRST_INO,
    FT_BLKDEV,
    FT_CHRDEV,
    FT_DIR,
    FT_FIFO,
    FT_REG_FILE,
    FT_SOCK,
    FT_SYMLINK,
    ROOT_INO,
    S_IFBLK,
    S_IFCHR,
    S_IFDIR,
    S_IFIFO,
    S_IFLNK,
    S_IFREG,
    S_IFSOCK,
)
from ..model.identity import IdentityMap
from ..model.tree import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SOCKET, SYMLINK, Meta, Node, Tree
from . import dirents
from .plan import InodePlan

LOST_FOUND = b"lost+found"

TYPE_BITS = {FILE: (S_IFREG, FT_REG_FILE), DIR: (S_IFDIR, FT_DIR), SYMLINK: (S_IFLNK, FT_SYMLINK),
             CHARDEV: (S_IFCHR, FT_CHRDEV), BLOCKDEV: (S_IFBLK, FT_BLKDEV), FIFO: (S_IFIFO, FT_FIFO),
             SOCKET: (S_IFSOCK, FT_SOCK)}


@dataclass
class Numbered:
    """The inodes by number, and (while planning only) the node each was made from."""

    inodes: list[InodePlan | None]  # index = inode number; None = unused/reserved
    nodes: list[Node | None]  # same index: for keys in messages and xattrs, dropped after planning


@dataclass
class _Walk:
    """The distinct nodes of a tree in depth-first, name-sorted order, and its directories."""

    by_node: dict[Node, InodePlan] = field(default_factory=dict)  # nodes hash by identity; in walk order
    first_path: dict[InodePlan, bytes] = field(default_factory=dict)  # only with a base map
    #: (directory, parent, sorted names, children), the children of the root with lost+found
    dirs: list[tuple[InodePlan, InodePlan, list[bytes], Mapping[bytes, Node]]] = field(
        default_factory=list)
    modes: dict[int, int] = field(default_factory=dict)  # one int object per distinct mode

    def add(self, node: Node) -> InodePlan:
        """The root's plan; :func:`_walk` inlines the same steps for every other node."""
        mode = TYPE_BITS[node.kind][0] | node.meta.perm
        # positional (order as InodePlan declares): a million calls, and keywords cost more
        ip = InodePlan(0, node.kind, node.meta, self.modes.setdefault(mode, mode), node.source,
                       node.target, node.rdev)
        self.by_node[node] = ip
        return ip


def number_inodes(tree: Tree, base: IdentityMap | None) -> Numbered:
    """Assign inode numbers and generations, then build every directory's entries."""
    root_children, lost_found = _root_children(tree.root)
    walk = _walk(tree.root, root_children, base)
    numbered = _assign_numbers(walk, walk.by_node[tree.root], walk.by_node[lost_found], base)
    _fill_entries(walk)
    _check_links(walk)
    return numbered


def _root_children(root: Node) -> tuple[Mapping[bytes, Node], Node]:
    """The root's children as planned (with a lost+found), and that lost+found."""
    assert root.children is not None
    lf = root.children.get(LOST_FOUND)
    if lf is None:
        m = root.meta
        lf = Node(DIR, Meta(0o700, 0, 0, m.mtime, m.mtime, m.mtime, m.mtime), key="/lost+found",
                  children={})
        return {**root.children, LOST_FOUND: lf}, lf
    if lf.kind != DIR:
        raise ManifestError(lf.key, "/lost+found must be a directory (e2fsck requires one)")
    return root.children, lf


def _walk(root_node: Node, root_children: Mapping[bytes, Node], base: IdentityMap | None) -> _Walk:
    """Every distinct node once, with link counts; first paths only if a base map needs them.

    Paths are built only for that lookup: a million of them would be kept for nothing.
    """
    w = _Walk()
    by_node, modes = w.by_node, w.modes
    root = w.add(root_node)
    w.first_path[root] = b"/"
    stack: list[tuple[InodePlan, InodePlan, bytes, Mapping[bytes, Node]]] = [
        (root, root, b"", root_children)]
    while stack:
        dir_ip, parent_ip, path, children = stack.pop()
        names = sorted(children)
        w.dirs.append((dir_ip, parent_ip, names, children))
        subdirs = []
        for name in names:
            child = children[name]
            ip = by_node.get(child)
            if ip is None:
                # w.add(child), inline: this loop runs once per name of a million-file tree
                mode = TYPE_BITS[child.kind][0] | child.meta.perm
                ip = by_node[child] = InodePlan(0, child.kind, child.meta, modes.setdefault(mode, mode),
                                                child.source, child.target, child.rdev)
                if base is not None:
                    w.first_path[ip] = path + b"/" + name
            ip.links += 1
            if child.kind == DIR:  # directories have exactly one name
                assert child.children is not None
                subdirs.append((ip, path + b"/" + name, child.children))
        dir_ip.links += 1 + len(subdirs)  # "." plus each subdirectory's ".."
        for sub, sub_path, sub_children in reversed(subdirs):
            stack.append((sub, dir_ip, sub_path, sub_children))
    root.links += 1  # the root's ".." names itself
    return w


def _assign_numbers(w: _Walk, root: InodePlan, lost_found: InodePlan,
                    base: IdentityMap | None) -> Numbered:
    """Root 2 and lost+found 11; a base map's numbers where they still fit; then in order."""
    taken: set[int] = set()
    root.ino, lost_found.ino = ROOT_INO, FIRST_INO
    taken.update((ROOT_INO, FIRST_INO))
    if base is not None:
        for ip in (root, lost_found):
            prev = base.paths.get(w.first_path[ip])
            ip.generation = prev[1] if prev is not None and prev[0] == ip.ino else 0
        for ip in w.by_node.values():
            if ip.ino:
                continue
            prev = base.paths.get(w.first_path[ip])
            if prev is not None and prev[2] == ip.kind and prev[0] > FIRST_INO and prev[0] not in taken:
                ip.ino, ip.generation = prev[0], prev[1]
                taken.add(ip.ino)
    next_ino = FIRST_INO + 1
    for ip in w.by_node.values():
        if ip.ino:
            continue
        while next_ino in taken:  # numbers handed out here only grow: no need to add them
            next_ino += 1
        ip.ino = next_ino
        next_ino += 1
        if base is not None:
            last = base.last_generation(ip.ino)
            ip.generation = 0 if last is None else (last + 1) & 0xFFFFFFFF
    size = max(max(taken), next_ino - 1) + 1
    inodes: list[InodePlan | None] = [None] * size
    nodes: list[Node | None] = [None] * size
    for node, ip in w.by_node.items():
        inodes[ip.ino] = ip
        nodes[ip.ino] = node
    return Numbered(inodes, nodes)


def _fill_entries(w: _Walk) -> None:
    """Every directory's entries, in name order, now that numbers are known."""
    by_node = w.by_node
    for dir_ip, parent_ip, names, children in w.dirs:
        entries: list[dirents.DirEntry] = [(b".", dir_ip.ino, FT_DIR), (b"..", parent_ip.ino, FT_DIR)]
        for name in names:
            child = children[name]
            entries.append((name, by_node[child].ino, TYPE_BITS[child.kind][1]))
        dir_ip.entries = entries


def _check_links(w: _Walk) -> None:
    """Directories over the link limit count as 1 (dir_nlink); other inodes are refused."""
    for ip in w.by_node.values():
        if ip.links <= EXT4_LINK_MAX:
            continue
        if ip.kind != DIR:
            key = next(node.key for node, each in w.by_node.items() if each is ip)
            raise ManifestError(key, f"{ip.links} hard links, over ext4's {EXT4_LINK_MAX}")
        ip.links = 1  # dir_nlink: "too many to count"
