"""Manifest entries → tree nodes: one entry's type, metadata, xattrs and content.

Called once per entry of a manifest that may hold a million of them, so the
common case (a file with default metadata) takes few steps.
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ManifestError
from ..model.sources import CallableSource, InlineSource, Source, ZeroSource
from ..model.tree import (
    BLOCKDEV,
    CHARDEV,
    DIR,
    FIFO,
    FILE,
    MAX_FILE_SIZE,
    NO_XATTRS,
    SOCKET,
    SYMLINK,
    SYMLINK_MAX,
    Meta,
    Node,
    Tree,
    file_size_error,
)
from ..model.xattrs import ACL_ACCESS, ACL_DEFAULT, XattrError, normalize_vfs_acl, parse_acl_text, split_name
from ..remote.manifest_keys import REMOTE_KEYS, remote_content
from .generators import Generator
from .manifest_values import bounded, file_size, mode, no_unknown, string, table, time_ns, uint32

if TYPE_CHECKING:
    from ..remote.settings import RemoteSettings
    from .host_paths import HostPaths

ENTRY_KEYS = {
    "type", "mode", "uid", "gid", "mtime", "atime", "ctime", "crtime",
    "text", "base64", "source", "size", "target", "major", "minor",
    "xattrs", "acl", "default_acl", "generator", "args", "identity",
} | REMOTE_KEYS
CONTENT_KEYS = ("text", "base64", "source", "size", "generator")
GENERATOR_KEYS = ("args", "identity")
XATTR_KEYS = frozenset({"xattrs", "acl", "default_acl"})
TIME_KEYS = frozenset({"atime", "mtime", "ctime", "crtime"})
ENTRY_TYPES = (FILE, DIR, SYMLINK, "hardlink", CHARDEV, BLOCKDEV, FIFO, SOCKET)
DEVICE_KEYS = ("major", "minor")
DEFAULT_KEYS = {"uid", "gid", "mode", "dir_mode", "mtime"}


@dataclass
class EntryDefaults:
    """The ``[defaults]`` table, and one shared Meta per (mode, uid, gid) with default times.

    Entries that keep the default times share one Meta per (mode, uid, gid): in a big
    manifest that is nearly every entry.  Entries with their own times get their own.
    """

    uid: int
    gid: int
    mode: int
    dir_mode: int
    time: int  # ns
    shared_metas: dict[tuple[int, int, int], Meta] = field(default_factory=dict)
    modes: dict[str, int] = field(default_factory=dict)  # "0644" -> 0o644, parsed once each

    def meta(self, entry: dict[str, Any], key: str, default_perm: int) -> Meta:
        if "mode" in entry:
            given = entry["mode"]
            perm = self.modes.get(given) if type(given) is str else None
            if perm is None:
                perm = mode(given, f"{key}.mode")
                if type(given) is str:
                    self.modes[given] = perm
        else:
            perm = default_perm
        uid = uint32(entry["uid"], f"{key}.uid") if "uid" in entry else self.uid
        gid = uint32(entry["gid"], f"{key}.gid") if "gid" in entry else self.gid
        default_time = self.time
        if entry.keys().isdisjoint(TIME_KEYS):
            meta = self.shared_metas.get((perm, uid, gid))
            if meta is None:
                meta = self.shared_metas[perm, uid, gid] = Meta(perm, uid, gid, *(default_time,) * 4)
            return meta
        mtime = time_ns(entry["mtime"], f"{key}.mtime") if "mtime" in entry else default_time
        return Meta(
            perm=perm, uid=uid, gid=gid,
            atime=time_ns(entry["atime"], f"{key}.atime") if "atime" in entry else mtime,
            mtime=mtime,
            ctime=time_ns(entry["ctime"], f"{key}.ctime") if "ctime" in entry else mtime,
            crtime=time_ns(entry["crtime"], f"{key}.crtime") if "crtime" in entry else mtime,
        )


def read_defaults(doc: dict[str, Any], epoch_ns: int) -> EntryDefaults:
    """The ``[defaults]`` table; file times default to SOURCE_DATE_EPOCH (``epoch_ns``)."""
    defaults = table(doc.get("defaults", {}), "defaults")
    no_unknown(defaults, DEFAULT_KEYS, "defaults")
    return EntryDefaults(
        uid=uint32(defaults.get("uid", 0), "defaults.uid"),
        gid=uint32(defaults.get("gid", 0), "defaults.gid"),
        mode=mode(defaults.get("mode", 0o644), "defaults.mode"),
        dir_mode=mode(defaults.get("dir_mode", 0o755), "defaults.dir_mode"),
        time=time_ns(defaults["mtime"], "defaults.mtime") if "mtime" in defaults else epoch_ns)


@dataclass
class EntryContext:
    """What every entry's conversion needs besides the entry itself."""

    defaults: EntryDefaults
    host: HostPaths
    remote: RemoteSettings


# Entries that are a file with inline text or a zero-filled size and metadata only: in a
# big generated manifest nearly all of them.  add_entry takes them without the general
# dispatch, with the same checks in the same order, so the same errors.
_META_KEYS = frozenset({"mode", "uid", "gid"}) | TIME_KEYS
_TEXT_FILE_KEYS = _META_KEYS | {"text"}
_SIZE_FILE_KEYS = _META_KEYS | {"size"}


def add_entry(tree: Tree, path: str, entry: dict[str, Any], key: str, ctx: EntryContext) -> None:
    """Check one ``"/path"`` entry and add its node (or its hard link) to ``tree``."""
    keys = entry.keys()
    if "text" in entry and keys <= _TEXT_FILE_KEYS:
        text = entry["text"]
        if type(text) is not str:
            string(text, f"{key}.text")  # the general check: the error names the key
        source: Source = InlineSource(text.encode("utf-8"))
        tree.add(path, Node(FILE, ctx.defaults.meta(entry, key, ctx.defaults.mode), key, source))
        return
    if "size" in entry and keys <= _SIZE_FILE_KEYS:
        size = entry["size"]
        if type(size) is not int or not 0 <= size <= MAX_FILE_SIZE:
            file_size(size, f"{key}.size")  # the general check: the error names the key
        source = ZeroSource(size)
        tree.add(path, Node(FILE, ctx.defaults.meta(entry, key, ctx.defaults.mode), key, source))
        return
    if not entry.keys() <= ENTRY_KEYS:
        no_unknown(entry, ENTRY_KEYS, key)
    kind = entry_type(entry, key)
    if kind == "hardlink":
        extra = set(entry) - {"type", "target"}
        if extra:
            raise ManifestError(f"{key}.{sorted(extra)[0]}", "a hard link shares its target's "
                                "inode and cannot set its own metadata or content")
        tree.add_hardlink(path, string(entry.get("target"), f"{key}.target"), key)
        return
    xattrs = NO_XATTRS
    if not entry.keys().isdisjoint(XATTR_KEYS):
        xattrs = entry_xattrs(entry, key, kind) or NO_XATTRS
    d = ctx.defaults
    if kind == DIR:
        only(entry, key, set(), "directory")
        node = Node(DIR, d.meta(entry, key, d.dir_mode), key=key, xattrs=xattrs)
    elif kind == SYMLINK:
        only(entry, key, {"target"}, "symlink")
        node = Node(SYMLINK, d.meta(entry, key, 0o777), key=key, target=_symlink_target(entry, key),
                    xattrs=xattrs)
    elif kind == FILE:
        only(entry, key, set(CONTENT_KEYS) | set(GENERATOR_KEYS) | REMOTE_KEYS, "file")
        if entry.keys().isdisjoint(REMOTE_KEYS):
            source = file_content(entry, key, ctx.host)
        else:
            source = remote_content(entry, key, ctx.remote)
        node = Node(FILE, d.meta(entry, key, d.mode), key=key, source=source, xattrs=xattrs)
    else:
        node = _special_node(kind, entry, key, d, xattrs)
    tree.add(path, node)


def _special_node(kind: str, entry: dict[str, Any], key: str, d: EntryDefaults,
                  xattrs: Any) -> Node:
    """Devices (with their numbers), FIFOs and sockets."""
    is_dev = kind in (CHARDEV, BLOCKDEV)
    only(entry, key, set(DEVICE_KEYS) if is_dev else set(), kind)
    rdev = (0, 0)
    if is_dev:
        for k in DEVICE_KEYS:
            if k not in entry:
                raise ManifestError(f"{key}.{k}", f"a {kind} needs major and minor numbers")
        rdev = (bounded(entry["major"], f"{key}.major", 0xFFF),
                bounded(entry["minor"], f"{key}.minor", 0xFFFFF))
    return Node(kind, d.meta(entry, key, 0o644 if is_dev else d.mode), key=key, rdev=rdev,
                xattrs=xattrs)


def _symlink_target(entry: dict[str, Any], key: str) -> bytes:
    target = string(entry.get("target"), f"{key}.target").encode("utf-8", "surrogateescape")
    if not target:
        raise ManifestError(f"{key}.target", "a symlink target must not be empty")
    if len(target) > SYMLINK_MAX:
        raise ManifestError(f"{key}.target", f"symlink target is {len(target)} bytes, "
                            f"over the {SYMLINK_MAX}-byte limit")
    if b"\0" in target:
        raise ManifestError(f"{key}.target", "symlink target must not contain NUL")
    return target


def entry_type(entry: dict[str, Any], key: str) -> str:
    if "type" in entry:
        kind = string(entry["type"], f"{key}.type")
        if kind not in ENTRY_TYPES:
            raise ManifestError(f"{key}.type", f"unknown type {kind!r} (expected one of "
                                f"{', '.join(ENTRY_TYPES)})")
        return kind
    if any(k in entry for k in CONTENT_KEYS) or "url" in entry or "s3" in entry:
        return FILE
    if "target" in entry:
        raise ManifestError(key, "'target' needs type = \"symlink\" or \"hardlink\"")
    return DIR


def entry_xattrs(entry: dict[str, Any], key: str, kind: str) -> dict[bytes, bytes]:
    """``xattrs`` (name → string, or {base64=…}/{hex=…}) plus ``acl``/``default_acl`` text."""
    out: dict[bytes, bytes] = {}
    for name, value in table(entry.get("xattrs", {}), f"{key}.xattrs").items():
        k = f"{key}.xattrs.{json.dumps(name)}"
        raw_name = name.encode("utf-8")
        if isinstance(value, str):
            data = value.encode("utf-8")
        elif isinstance(value, dict) and len(value) == 1 and ("base64" in value or "hex" in value):
            try:
                if "base64" in value:
                    data = base64.b64decode(string(value["base64"], k + ".base64"), validate=True)
                else:
                    data = bytes.fromhex(string(value["hex"], k + ".hex"))
            except (binascii.Error, ValueError):
                raise ManifestError(k, "invalid base64/hex value") from None
        else:
            raise ManifestError(k, "value must be a string or a table {base64 = \"…\"} / {hex = \"…\"}")
        try:
            if split_name(raw_name)[0] == 1 and kind not in (FILE, DIR):
                raise XattrError("the kernel allows user.* attributes only on regular files "
                                 "and directories")
            if raw_name in (ACL_ACCESS, ACL_DEFAULT):
                data = normalize_vfs_acl(data)
        except XattrError as e:
            raise ManifestError(k, str(e)) from None
        out[raw_name] = data
    for field_name, xname in (("acl", ACL_ACCESS), ("default_acl", ACL_DEFAULT)):
        if field_name not in entry:
            continue
        k = f"{key}.{field_name}"
        if xname == ACL_DEFAULT and kind != DIR:
            raise ManifestError(k, "only directories have a default ACL")
        if xname in out:
            raise ManifestError(k, f"conflicts with xattrs.{xname.decode()}")
        try:
            out[xname] = parse_acl_text(string(entry[field_name], k))
        except XattrError as e:
            raise ManifestError(k, str(e)) from None
    return out


_SPECIFIC_KEYS = frozenset(CONTENT_KEYS) | {"target"} | frozenset(DEVICE_KEYS) | REMOTE_KEYS


def only(entry: dict[str, Any], key: str, allowed: set[str], what: str) -> None:
    wrong = (entry.keys() & _SPECIFIC_KEYS) - allowed
    if wrong:
        k = sorted(wrong)[0]
        raise ManifestError(f"{key}.{k}", f"not valid for a {what}")


def file_content(entry: dict[str, Any], key: str, host: HostPaths) -> Source:
    if "generator" in entry:
        if host.root is not None:
            raise ManifestError(f"{key}.generator", "generators run code and are refused with a "
                                "source root (untrusted manifest)")
        return _generator(entry, key, host)
    for k in GENERATOR_KEYS:
        if k in entry:
            raise ManifestError(f"{key}.{k}", "only valid with generator")
    given = [k for k in CONTENT_KEYS if k in entry]
    if len(given) > 1:
        raise ManifestError(f"{key}.{given[1]}", f"conflicts with {given[0]}: give one content key")
    if not given:
        return InlineSource(b"")
    k = given[0]
    v = entry[k]
    if k == "text":
        return InlineSource(string(v, f"{key}.text").encode("utf-8"))
    if k == "base64":
        try:
            return InlineSource(base64.b64decode(string(v, f"{key}.base64"), validate=True))
        except binascii.Error:
            raise ManifestError(f"{key}.base64", "invalid base64") from None
    if k == "size":
        return ZeroSource(file_size(v, f"{key}.size"))
    rel = string(v, f"{key}.source")
    path = host.resolve(rel, f"{key}.source")
    try:
        src = host.open_file(rel, path)
    except FileNotFoundError:
        raise ManifestError(f"{key}.source", f"source file {path} does not exist") from None
    except IsADirectoryError:
        raise ManifestError(f"{key}.source", f"source {path} is not a regular file") from None
    except OSError as e:
        if e.errno in (errno.EXDEV, errno.ELOOP):
            raise ManifestError(f"{key}.source", f"{path} is outside the source root "
                                f"{host.root}") from None
        raise ManifestError(f"{key}.source", f"cannot read source {path}: {e.strerror}") from None
    problem = file_size_error(src.size)
    if problem:
        raise ManifestError(f"{key}.source", f"{path}: {problem}")
    return src


def _generator(entry: dict[str, Any], key: str, host: HostPaths) -> CallableSource:
    """``generator = "module:function"``: called as ``function(offset, length, **args)``.

    The module is found now (beside the manifest, or in a ``--generator-path``
    directory) and imported only when bytes are needed; see generators.py.
    """
    spec = string(entry["generator"], f"{key}.generator")
    for k in ("text", "base64", "source"):
        if k in entry:
            raise ManifestError(f"{key}.{k}", "conflicts with generator")
    if "size" not in entry:
        raise ManifestError(f"{key}.size", "a generator needs its size declared up front")
    size = file_size(entry["size"], f"{key}.size")
    args = table(entry.get("args", {}), f"{key}.args")
    identity = entry.get("identity")
    if identity is not None:
        identity = ("manifest-identity", string(identity, f"{key}.identity"))
    gen = Generator(spec, f"{key}.generator", host.generator_search, args)
    host.generators.append(gen)
    return CallableSource(size, gen, identity=identity, name=spec)
