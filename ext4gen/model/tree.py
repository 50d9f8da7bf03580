"""The filesystem tree to synthesize: what the manifest, a directory or the API describe.

The tree is pure description (names, metadata, content sources); it knows
nothing of blocks or inodes.  A node reachable under several names is a hard
link: the planner gives it one inode.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from ..errors import ManifestError
from . import xattrs
from .sources import Source

NAME_MAX = 255
SYMLINK_MAX = 4095
#: The largest regular file the kernel opens with 4 KiB blocks and extents: its
#: s_maxbytes is (2^32 - 1) blocks (ext4_max_size keeps one logical block spare so an
#: extent's length can reach the end).  e2fsck would accept up to 2^44 - 1 bytes, but
#: the kernel reports a bigger i_size as corruption (EFSCORRUPTED on stat).
MAX_FILE_SIZE = ((1 << 32) - 1) * 4096


def file_size_error(size: int) -> str | None:
    """The one-line complaint for a regular-file size ext4 cannot hold, else None."""
    if size < 0:
        return f"size {size} is negative"
    if size > MAX_FILE_SIZE:
        return (f"size {size} is over ext4's file size limit of {MAX_FILE_SIZE} bytes "
                "((2^32 - 1) blocks of 4 KiB)")
    return None

FILE, DIR, SYMLINK = "file", "dir", "symlink"
CHARDEV, BLOCKDEV, FIFO, SOCKET = "chardev", "blockdev", "fifo", "socket"
KINDS = (FILE, DIR, SYMLINK, CHARDEV, BLOCKDEV, FIFO, SOCKET)

#: The xattrs of every node that has none: one shared, read-only mapping instead of
#: an empty dict per node (64 bytes each, a million times over in a big manifest).
NO_XATTRS: Mapping[bytes, bytes] = MappingProxyType({})


@dataclass(eq=False, slots=True)
class Meta:
    """Ownership, permission bits (incl. setuid/setgid/sticky) and times in ns.

    Nodes with equal metadata may share one Meta (a manifest's defaults), so a
    Meta is never changed in place once a node holds it: replace it instead.
    """

    perm: int
    uid: int
    gid: int
    atime: int
    mtime: int
    ctime: int
    crtime: int


@dataclass(eq=False, slots=True)
class Node:
    kind: str
    meta: Meta
    key: str = ""  # where the node was declared, for error messages
    source: Source | None = None  # FILE
    target: bytes = b""  # SYMLINK
    rdev: tuple[int, int] = (0, 0)  # CHARDEV/BLOCKDEV (major, minor)
    xattrs: Mapping[bytes, bytes] = field(default_factory=lambda: NO_XATTRS)
    children: dict[bytes, Node] | None = None  # DIR
    implied: bool = False  # DIR created only because a descendant was declared
    imported: bool = False  # from a directory or tar import: later declarations override it

    @property
    def size(self) -> int:
        if self.kind == FILE:
            assert self.source is not None
            return self.source.size
        if self.kind == SYMLINK:
            return len(self.target)
        return 0


_BAD_COMPONENTS = frozenset((b".", b".."))


def split_path(path: str | bytes, key: str) -> list[bytes]:
    """Validate an absolute image path and return its components as bytes."""
    raw = path if isinstance(path, bytes) else path.encode("utf-8", "surrogateescape")
    if raw[:1] == b"/" and b"//" not in raw and b"\0" not in raw:  # the common, clean case
        parts = raw[1:].rstrip(b"/").split(b"/") if len(raw) > 1 else []
        if _BAD_COMPONENTS.isdisjoint(parts) and (not parts or max(map(len, parts)) <= NAME_MAX):
            return parts
    if not raw.startswith(b"/"):
        raise ManifestError(key, "path must be absolute (start with '/')")
    parts = [p for p in raw.split(b"/") if p]
    for p in parts:
        if p in (b".", b".."):
            raise ManifestError(key, "path must not contain '.' or '..' components")
        if b"\0" in p:
            raise ManifestError(key, "path must not contain NUL bytes")
        if len(p) > NAME_MAX:
            raise ManifestError(key, f"name {p[:32]!r}... is {len(p)} bytes, over ext4's {NAME_MAX}")
    return parts


class Tree:
    """A rooted tree of nodes with implied parents and deferred hard links."""

    def __init__(self, root_meta: Meta, implied_dir_meta: Meta | None = None) -> None:
        self.root = Node(DIR, root_meta, key="/", children={}, implied=True)
        self._implied_meta = implied_dir_meta or root_meta
        self._links: list[tuple[list[bytes], list[bytes], str]] = []
        self._resolved = False
        # The raw parent path of the last add and its node: the next entry is most often a
        # sibling (a manifest, a tar), checked and placed without splitting its path again.
        self._last_head: tuple[bytes, Node] | None = None

    def forget_parents(self) -> None:
        """Drop the parent :meth:`add` remembers: a caller that removed entries (a layer's
        whiteouts) may have detached it from the tree."""
        self._last_head = None

    def _parent(self, parts: list[bytes], key: str) -> Node:
        node = self.root
        for i, name in enumerate(parts[:-1]):
            assert node.children is not None
            child = node.children.get(name)
            if child is None:
                m = self._implied_meta
                child = Node(DIR, Meta(m.perm, m.uid, m.gid, m.atime, m.mtime, m.ctime, m.crtime),
                             key=key, children={}, implied=True)
                node.children[name] = child
            elif child.kind != DIR:
                where = "/" + b"/".join(parts[: i + 1]).decode("utf-8", "replace")
                raise ManifestError(key, f"parent {where} is a {child.kind}, not a directory")
            node = child
        return node

    def add(self, path: str | bytes, node: Node) -> Node:
        """Place ``node`` at ``path``; an explicit directory may refine an implied one."""
        key = node.key or str(path)
        raw = path if isinstance(path, bytes) else path.encode("utf-8", "surrogateescape")
        head, sep, name = raw.rpartition(b"/")
        last = self._last_head
        if (last is not None and sep and last[0] == head and name and name not in _BAD_COMPONENTS
                and b"\0" not in name and last[1].children is not None):
            return self.add_child(last[1], name, node, key)  # a sibling of the last path added
        parts = split_path(raw, key)
        if parts:
            parent = self._parent(parts, key)
            if parts[-1] == name:  # no trailing '/': ``head`` is the parent's (checked) path
                self._last_head = (head, parent)
            return self.add_child(parent, parts[-1], node, key)
        self._prepare(node)
        if node.kind != DIR:
            raise ManifestError(key, "'/' must be a directory")
        if not (self.root.implied or self.root.imported):
            raise ManifestError(key, "duplicate path '/'")
        node.children = self.root.children
        self.root = node
        self._last_head = None
        return node

    def add_child(self, parent: Node, name: bytes, node: Node, key: str | None = None) -> Node:
        """:meth:`add` for a caller that holds the parent directory (a node of this tree)
        and a name from a directory listing, so no path is built and split again per entry."""
        if len(name) > NAME_MAX:
            raise ManifestError(key or node.key, f"name {name[:32]!r}... is {len(name)} bytes, "
                                f"over ext4's {NAME_MAX}")
        self._prepare(node)
        children = parent.children
        assert children is not None
        old = children.get(name)
        if old is not None:
            if (old.implied or old.imported) and node.kind == DIR and old.kind == DIR:
                node.children = old.children  # refine an implied/imported directory, keep its entries
            elif old.imported and old.kind != DIR:
                pass  # a later import or an explicit entry overrides an imported non-directory
            else:
                raise ManifestError(key or node.key, f"duplicate path (already declared by {old.key})")
        children[name] = node
        return node

    @staticmethod
    def _prepare(node: Node) -> None:
        if xattrs.ACL_ACCESS in node.xattrs:  # mode and ACL must agree, as on a real ext4
            own = dict(node.xattrs)
            perm = xattrs.reconcile_access_acl(node.meta.perm, own)
            node.xattrs = own or NO_XATTRS
            if perm != node.meta.perm:
                node.meta = replace(node.meta, perm=perm)
        if node.kind == DIR and node.children is None:
            node.children = {}

    def add_hardlink(self, path: str | bytes, target: str | bytes, key: str) -> None:
        """Make ``path`` another name of ``target``; resolved when planning."""
        parts = split_path(path, key)
        if not parts:
            raise ManifestError(key, "'/' cannot be a hard link")
        self._parent(parts, key)
        self._links.append((parts, split_path(target, key + ".target"), key))

    def lookup(self, parts: list[bytes]) -> Node | None:
        node: Node | None = self.root
        for name in parts:
            if node is None or node.children is None:
                return None
            node = node.children.get(name)
        return node

    def resolve_links(self) -> None:
        """Attach deferred hard links; links to links follow to the final node."""
        if self._resolved:
            return
        pending = list(self._links)
        while pending:
            progress = False
            rest = []
            for parts, target, key in pending:
                node = self.lookup(target)
                if node is None:
                    rest.append((parts, target, key))
                    continue
                if node.kind == DIR:
                    raise ManifestError(key + ".target", "hard links to directories are not allowed")
                parent = self._parent(parts, key)
                assert parent.children is not None
                if parts[-1] in parent.children:
                    old = parent.children[parts[-1]]
                    raise ManifestError(key, f"duplicate path (already declared by {old.key})")
                parent.children[parts[-1]] = node
                progress = True
            if not progress and rest:
                _parts, target, key = rest[0]
                shown = "/" + b"/".join(target).decode("utf-8", "replace")
                raise ManifestError(key + ".target", f"hard link target {shown} does not exist")
            pending = rest
        self._resolved = True
