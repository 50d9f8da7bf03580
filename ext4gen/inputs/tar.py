"""Import a tar archive (ustar, GNU, PAX with SCHILY.xattr.* and SCHILY.acl.*).

Members of an uncompressed tar are served straight from the archive by offset
(pinned like any host file), so planning reads headers only.  Compressed
archives are decompressed once into a cache keyed by the archive's identity.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from typing import NamedTuple

from ..errors import ManifestError
from ..model import times
from ..model.sources import HostFile, HostFileSource, InlineSource, Source
from ..model.tree import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, NO_XATTRS, SYMLINK, Meta, Node, Tree, split_path
from ..model.xattrs import ACL_ACCESS, ACL_DEFAULT, XattrError, normalize_vfs_acl, parse_acl_text, split_name

_COMPRESSED = (
    (b"\x1f\x8b", gzip.open, "gzip"),
    (b"\xfd7zXZ\x00", lzma.open, "xz"),
    (b"BZh", bz2.open, "bzip2"),
)


def cache_dir() -> str:
    return os.environ.get("EXT4GEN_CACHE", "/var/tmp/ext4gen-cache")


def is_tar(path: str) -> bool:
    """True for tar archives, compressed or not (checked by content, not by name)."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    if any(head.startswith(magic) for magic, _o, _n in _COMPRESSED):
        return True
    return len(head) == 512 and head[257:262] == b"ustar"


def uncompressed(path: str) -> str:
    """``path`` itself for a plain tar; else a cached decompressed copy (made once)."""
    with open(path, "rb") as f:
        head = f.read(6)
    found = [(opener, name) for magic, opener, name in _COMPRESSED if head.startswith(magic)]
    if not found:
        return path
    opener, name = found[0]
    st = os.stat(path)
    ident = f"{os.path.abspath(path)}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}"
    os.makedirs(cache_dir(), exist_ok=True)
    out = os.path.join(cache_dir(), hashlib.sha256(ident.encode()).hexdigest()[:32] + ".tar")
    if not os.path.exists(out):
        fd, tmp = tempfile.mkstemp(dir=cache_dir(), suffix=".part")
        try:
            with os.fdopen(fd, "wb") as dst, opener(path, "rb") as src:  # type: ignore[operator]
                shutil.copyfileobj(src, dst, 1 << 20)
            os.replace(tmp, out)
        except (OSError, EOFError, lzma.LZMAError) as e:
            os.unlink(tmp)
            raise ManifestError(path, f"cannot decompress {name} archive: {e}") from None
    return out


def _pax_time(m: tarfile.TarInfo, name: str, fallback: int) -> int:
    value = m.pax_headers.get(name)
    if value is None:
        return fallback
    try:
        return times.parse_time(value)
    except ValueError:
        return fallback


def _member_xattrs(m: tarfile.TarInfo, shown: str) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for k, v in m.pax_headers.items():
        if k.startswith("SCHILY.xattr."):
            name = k[len("SCHILY.xattr.") :].encode("utf-8", "surrogateescape")
            value = v.encode("utf-8", "surrogateescape")
            try:
                split_name(name)
                if name in (ACL_ACCESS, ACL_DEFAULT):
                    value = normalize_vfs_acl(value)
            except XattrError as e:
                raise ManifestError(shown, f"xattr {name.decode(errors='replace')}: {e}") from None
            out[name] = value
    for k, name in (("SCHILY.acl.access", ACL_ACCESS), ("SCHILY.acl.default", ACL_DEFAULT)):
        if name in out:
            continue  # the exact SCHILY.xattr form wins over the text form
        if k in m.pax_headers and m.pax_headers[k].strip():
            try:
                out[name] = parse_acl_text(_gnu_acl_text(m.pax_headers[k]))
            except XattrError as e:
                raise ManifestError(shown, f"{k}: {e}") from None
    return out


def _gnu_acl_text(text: str) -> str:
    """GNU tar writes ``user:NAME:rwx`` (optionally ``:UID``): turn names into numeric ids.

    A trailing numeric id wins; otherwise the name is looked up on this host, as
    tar itself would when extracting.
    """
    out = []
    for item in text.replace("\n", ",").replace(" ", ",").split(","):
        parts = item.strip().split(":")
        if parts == [""]:
            continue
        if len(parts) == 4 and parts[3].isdigit():
            parts = [parts[0], parts[3], parts[2]]
        if len(parts) == 3 and parts[1] and not parts[1].isdigit():
            parts[1] = str(_lookup_id(parts[0], parts[1]))
        out.append(":".join(parts))
    return ",".join(out)


def _lookup_id(tag: str, name: str) -> int:
    import grp
    import pwd

    try:
        if tag in ("u", "user"):
            return pwd.getpwnam(name).pw_uid
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise XattrError(f"ACL names {tag} {name!r}, which does not exist on this host") from None


def import_tar(tree: Tree, tar_path: str, target: str = "/", *, key: str = "") -> None:
    """Add the members of ``tar_path`` under ``target`` in ``tree``."""
    key = key or tar_path
    try:
        plain = uncompressed(tar_path)
        hf = HostFile(plain)
        tf = tarfile.open(plain, "r:")
    except (OSError, tarfile.TarError) as e:
        raise ManifestError(key, f"cannot read tar archive {tar_path}: {e}") from None
    base = split_path(target, key)
    with tf:
        try:
            members = iter(tf)
            for m in members:
                _add_member(tree, hf, m, base, tar_path)
        except tarfile.TarError as e:
            raise ManifestError(key, f"corrupt tar archive {tar_path}: {e}") from None


class Member(NamedTuple):
    """One tar member as the tree sees it: its image path and a node, or a hard link."""

    path: bytes
    shown: str  # "archive:member", for messages
    node: Node | None  # None for a hard link
    link: bytes | None  # the hard link's target path in the image


def _add_member(tree: Tree, hf: HostFile, m: tarfile.TarInfo, base: list[bytes], tar_path: str) -> None:
    mem = member_node(m, base, tar_path, lambda m: _host_source(hf, m))
    if mem.node is None:
        assert mem.link is not None
        tree.add_hardlink(mem.path, mem.link, mem.shown)
        return
    tree.add(mem.path, mem.node)


def _host_source(hf: HostFile, m: tarfile.TarInfo) -> Source:
    """A regular member's bytes, served by offset from the (uncompressed) archive."""
    if m.sparse:
        segments, pos = [], m.offset_data
        for off, length in m.sparse:
            if length:
                segments.append((off, length, pos))
            pos += length
        return HostFileSource(hf, size=m.size, segments=segments)
    if m.size:
        return HostFileSource(hf, base_offset=m.offset_data, size=m.size)
    return InlineSource(b"")


def member_node(m: tarfile.TarInfo, base: list[bytes], tar_path: str,
                source_for: Callable[[tarfile.TarInfo], Source]) -> Member:
    """Convert one member (metadata, xattrs, ACLs, type) to a node; ``source_for`` gives a
    regular file's content, so layers of container images can serve it their own way."""
    name = m.name.encode("utf-8", "surrogateescape")
    parts = [p for p in name.split(b"/") if p and p != b"."]
    shown = f"{tar_path}:{m.name}"
    if b".." in parts:
        raise ManifestError(shown, "member path escapes the archive root ('..')")
    path = b"/" + b"/".join(base + parts)
    mtime = _pax_time(m, "mtime", int(m.mtime) * times.NS)
    meta = Meta(m.mode & 0o7777, m.uid, m.gid, _pax_time(m, "atime", mtime), mtime,
                _pax_time(m, "ctime", mtime), _pax_time(m, "ctime", mtime))
    xattrs = _member_xattrs(m, shown) or NO_XATTRS
    if m.islnk():
        link = [p for p in m.linkname.encode("utf-8", "surrogateescape").split(b"/") if p and p != b"."]
        return Member(path, shown, None, b"/" + b"/".join(base + link))
    node = Node(FILE, meta, key=shown, xattrs=xattrs, imported=True)
    if m.isdir():
        node.kind = DIR
    elif m.issym():
        node.kind = SYMLINK
        node.target = m.linkname.encode("utf-8", "surrogateescape")
    elif m.ischr() or m.isblk():
        node.kind = CHARDEV if m.ischr() else BLOCKDEV
        node.rdev = (m.devmajor, m.devminor)
    elif m.isfifo():
        node.kind = FIFO
    elif m.isreg():
        node.source = source_for(m)
    else:
        raise ManifestError(shown, f"unsupported tar member type {m.type!r}")
    if not parts:
        node.kind = DIR
    return Member(path, shown, node, None)
