"""Apply :class:`SourceOptions` to a loaded tree: times, owners, Android fs_config, SELinux labels.

They apply after loading, to every kind of SOURCE alike (manifest, host
directory, tar archive), in one walk and in this order, each later step
winning over an earlier one for the same field:

1. times: ``keep``, ``clamp`` (no time after SOURCE_DATE_EPOCH) or ``epoch``
   (every time SOURCE_DATE_EPOCH); by default imported inodes are clamped when
   SOURCE_DATE_EPOCH is set, as e2fsprogs 1.47.1's mke2fs and
   ``tar --clamp-mtime`` do, while times a manifest declares are kept;
2. uid/gid maps (ACL entries included), then one owner for everything;
3. the root directory's owner and mode;
4. fs_config entries (owner, mode, capabilities by path);
5. SELinux labels from file_contexts.

Metas are shared between nodes (a manifest's defaults), so a changed Meta is
replaced, and nodes that shared one old Meta share one new Meta.
"""

from __future__ import annotations

import stat
from dataclasses import replace

from ..errors import ManifestError
from ..layout.planner import LOST_FOUND
from ..model.options import SourceOptions
from ..model.tree import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, NO_XATTRS, SOCKET, SYMLINK, Meta, Node, Tree
from .fs_config import CAPABILITY_XATTR, FsConfigEntry, FsConfigError, capability_xattr, load_fs_config
from .ownership import IdMap, map_acl_ids
from .selinux import SELINUX_XATTR, FileContexts, FileContextsError

_IFMT = {FILE: stat.S_IFREG, DIR: stat.S_IFDIR, SYMLINK: stat.S_IFLNK, CHARDEV: stat.S_IFCHR,
         BLOCKDEV: stat.S_IFBLK, FIFO: stat.S_IFIFO, SOCKET: stat.S_IFSOCK}


def needs_adjusting(opts: SourceOptions, epoch_ns: int | None) -> bool:
    return any(getattr(opts, k) is not None for k in (
        "times", "root_owner", "squash_owner", "uid_map", "gid_map", "file_contexts", "fs_config",
    )) or epoch_ns is not None


class _MetaRules:
    """The per-inode rules that do not depend on the path (times, id maps, squashing)."""

    def __init__(self, opts: SourceOptions, epoch_ns: int | None) -> None:
        times = opts.times or ("clamp" if epoch_ns is not None else "keep")
        if times != "keep" and epoch_ns is None:
            raise ManifestError("times", f"{times} needs SOURCE_DATE_EPOCH (integer seconds) in "
                                "the environment")
        self.times = times
        self.times_only_imported = opts.times is None
        self.epoch = epoch_ns or 0
        self.uid_map = IdMap(opts.uid_map) if opts.uid_map else None
        self.gid_map = IdMap(opts.gid_map) if opts.gid_map else None
        self.squash = opts.squash_owner
        self._done: dict[tuple[int, bool], Meta] = {}
        self._keep: list[Meta] = []  # keeps the old Metas alive, so their ids stay unique

    def meta(self, m: Meta, imported: bool) -> Meta:
        key = (id(m), imported)
        new = self._done.get(key)
        if new is None:
            new = self._compute(m, imported)
            self._done[key] = new
            self._keep.append(m)
        return new

    def _compute(self, m: Meta, imported: bool) -> Meta:
        changes: dict[str, int] = {}
        if self.times != "keep" and (imported or not self.times_only_imported):
            e = self.epoch
            for k in ("atime", "mtime", "ctime", "crtime"):
                t = getattr(m, k)
                if self.times == "epoch" or t > e:
                    if t != e:
                        changes[k] = e
        if self.uid_map is not None:
            changes["uid"] = self.uid_map(m.uid)
        if self.gid_map is not None:
            changes["gid"] = self.gid_map(m.gid)
        if self.squash is not None:
            changes["uid"], changes["gid"] = self.squash
        if all(getattr(m, k) == v for k, v in changes.items()):
            return m
        return replace(m, **changes)


def apply_source_options(tree: Tree, opts: SourceOptions, epoch_ns: int | None) -> None:
    """Adjust ``tree`` in place (links must be resolved).  Errors are ManifestErrors naming
    the option and, where one is at fault, the path."""
    if not needs_adjusting(opts, epoch_ns):
        return
    tree.resolve_links()
    rules = _MetaRules(opts, epoch_ns)
    try:
        fs_config = load_fs_config(opts.fs_config) if opts.fs_config else None
        contexts = FileContexts(opts.file_contexts) if opts.file_contexts else None
    except FsConfigError as e:
        raise ManifestError("fs_config", str(e)) from None
    except FileContextsError as e:
        raise ManifestError("file_contexts", str(e)) from None
    if opts.squash_owner is not None or fs_config is not None or contexts is not None:
        _add_lost_found(tree)  # so that it is owned and labelled like everything else
    prefix = "/" + (opts.mount_point or "/").strip("/")
    try:
        _walk(tree, opts, rules, fs_config, contexts, prefix.rstrip("/"))
    finally:
        if contexts is not None:
            contexts.close()


def _add_lost_found(tree: Tree) -> None:
    children = tree.root.children
    assert children is not None
    if LOST_FOUND not in children:
        t = tree.root.meta.mtime
        children[LOST_FOUND] = Node(DIR, Meta(0o700, 0, 0, t, t, t, t), key="/lost+found",
                                    children={}, imported=tree.root.imported)


def _walk(tree: Tree, opts: SourceOptions, rules: _MetaRules,
          fs_config: dict[str, FsConfigEntry] | None, contexts: FileContexts | None,
          prefix: str) -> None:
    seen: set[int] = set()
    by_path = fs_config is not None or contexts is not None or rules.uid_map or rules.gid_map
    stack: list[tuple[str, Node]] = [("", tree.root)]
    while stack:
        rel, node = stack.pop()
        if id(node) in seen:
            continue  # a hard link: one inode, adjusted once (under its first name)
        seen.add(id(node))
        meta = rules.meta(node.meta, node.imported)
        shown = "/" + rel
        if rules.uid_map is not None or rules.gid_map is not None:
            try:
                mapped = map_acl_ids(node.xattrs, rules.uid_map, rules.gid_map)
            except ValueError as e:
                raise ManifestError(shown, f"uid/gid map: {e}") from None
            if mapped is not None:
                node.xattrs = mapped
        if node is tree.root and opts.root_owner is not None:
            uid, gid, mode = opts.root_owner
            meta = replace(meta, uid=uid, gid=gid, perm=meta.perm if mode is None else mode)
        if fs_config is not None:
            meta = _apply_fs_config(node, meta, fs_config, (prefix.lstrip("/") + "/" + rel).strip("/"))
        node.meta = meta
        if contexts is not None:
            _label(node, contexts, (prefix + "/" + rel) if rel else (prefix or "/"))
        if node.kind == DIR:
            assert node.children is not None
            if not by_path:  # paths cost a string per inode: build them only when looked up
                stack.extend(("", child) for child in node.children.values())
                continue
            for name, child in node.children.items():
                stack.append(((rel + "/" if rel else "") + name.decode("utf-8", "surrogateescape"),
                              child))


def _apply_fs_config(node: Node, meta: Meta, config: dict[str, FsConfigEntry], key: str) -> Meta:
    entry = config.get(key)
    if entry is None:
        return meta
    if entry.capabilities is not None:
        xattrs = dict(node.xattrs)
        xattrs.pop(CAPABILITY_XATTR, None)
        if entry.capabilities:
            if node.kind != FILE:
                raise ManifestError("/" + key, "fs_config gives capabilities to a "
                                    f"{node.kind}; only regular files have them")
            xattrs[CAPABILITY_XATTR] = capability_xattr(entry.capabilities)
        node.xattrs = xattrs or NO_XATTRS
    perm = meta.perm if node.kind == SYMLINK else entry.mode
    return replace(meta, uid=entry.uid, gid=entry.gid, perm=perm)


def _label(node: Node, contexts: FileContexts, path: str) -> None:
    try:
        label = contexts.label(path, _IFMT[node.kind])
    except FileContextsError as e:
        raise ManifestError("file_contexts", str(e)) from None
    if label is None and SELINUX_XATTR not in node.xattrs:
        return
    xattrs = dict(node.xattrs)
    if label is None:
        del xattrs[SELINUX_XATTR]
    else:
        xattrs[SELINUX_XATTR] = label
    node.xattrs = xattrs or NO_XATTRS
