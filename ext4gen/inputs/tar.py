"""Import a tar archive (ustar, GNU, PAX with SCHILY.xattr.* and SCHILY.acl.*).

Members of an uncompressed tar are served straight from the archive by offset
(pinned like any host file), so planning reads headers only.  Compressed
archives are decompressed once into the user's cache (``cache_area("tar")``),
keyed by the archive's identity and checked before every use.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from ..cache import cache_area, enforce_bound, hold, seal, touch, unseal, write_atomic
from ..errors import ManifestError
from ..model import host_reads, times
from ..model.sources import HostFile, HostFileSource, InlineSource, Pin, Source
from ..model.tree import (
    BLOCKDEV,
    CHARDEV,
    DIR,
    FIFO,
    FILE,
    NO_XATTRS,
    SYMLINK,
    SYMLINK_MAX,
    Meta,
    Node,
    Tree,
    file_size_error,
    split_path,
)
from ..model.xattrs import ACL_ACCESS, ACL_DEFAULT, XattrError, normalize_vfs_acl, parse_acl_text, split_name

UINT32 = (1 << 32) - 1
MAJOR_MAX, MINOR_MAX = 0xFFF, 0xFFFFF  # the kernel's new_encode_dev: 12 + 20 bits

_COMPRESSED = (
    (b"\x1f\x8b", gzip.open, "gzip"),
    (b"\xfd7zXZ\x00", lzma.open, "xz"),
    (b"BZh", bz2.open, "bzip2"),
)


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


def uncompressed(path: str, expect: tuple[int, int] | None = None) -> str:
    """``path`` itself for a plain tar; else a verified decompressed copy in the cache (made once).

    ``expect`` (st_dev, st_ino): a compressed archive must still be that file.
    """
    with open(path, "rb") as f:
        head = f.read(6)
    found = [(opener, name) for magic, opener, name in _COMPRESSED if head.startswith(magic)]
    if not found:
        return path
    opener, name = found[0]
    source = os.path.abspath(path)
    st = os.stat(path)
    if expect is not None and (st.st_dev, st.st_ino) != expect:
        raise ManifestError(path, "changed while it was being imported (no longer the archive "
                            "found beneath the source root)")
    src_pin = list(Pin.of(st))
    ident = "\0".join([source, *map(str, src_pin)])
    key = hashlib.sha256(ident.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    area = cache_area("tar")
    data, sidecar = area / f"{key}.tar", area / f"{key}.json"
    fd = _open_verified(data, sidecar, source, src_pin)
    if fd is None:
        fd = _decompress(path, opener, name, data, sidecar, source, src_pin)
        hold(fd)
        enforce_bound()
    else:
        hold(fd)
    return str(data)


def _open_verified(data: Path, sidecar: Path, source: str, src_pin: list[int]) -> int | None:
    """A descriptor of the cached copy if it is exactly the file ext4gen made from this source.

    The sidecar is sealed (a keyed MAC, see ext4gen.cache.seal) and names the
    source's path and pin and the copy's own pin as it was right after it was
    written: inode and ctime cannot be put back, so a planted, replaced,
    truncated or rewritten copy never matches and is made again.
    """
    try:
        body = unseal(sidecar.read_bytes())
        meta = json.loads(body) if body is not None else None
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("source") != source or meta.get("source_pin") != src_pin:
        return None
    try:
        fd = os.open(data, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or list(Pin.of(st)) != meta.get("entry_pin"):
        os.close(fd)
        return None
    touch(sidecar)
    return fd


def _decompress(path: str, opener: object, name: str, data: Path, sidecar: Path, source: str,
                src_pin: list[int]) -> int:
    """Decompress into a fresh file, rename it into place, then seal a sidecar naming both pins."""
    fd, tmp = tempfile.mkstemp(dir=data.parent, prefix=".tmp-", suffix=".tar")
    try:
        with os.fdopen(os.dup(fd), "wb") as dst, opener(path, "rb") as src:  # type: ignore[operator]
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(tmp, data)
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as e:
        os.close(fd)
        os.unlink(tmp)
        raise ManifestError(path, f"cannot decompress {name} archive: {e}") from None
    meta = {"source": source, "source_pin": src_pin, "entry_pin": list(Pin.of(os.fstat(fd))),
            "compression": name}
    write_atomic(sidecar, seal(json.dumps(meta).encode()))
    return fd


_PAX_DECIMAL = re.compile(r"^(-?\d+)(?:\.(\d+))?$")


def _member_time(m: tarfile.TarInfo, name: str, fallback: int | None, shown: str) -> int:
    """A PAX time exactly as written (ns), the header's seconds, or ``fallback``.

    Out of ext4's range, not a number (``nan``, ``1e300``) or unparsable: refused,
    never replaced by another time.
    """
    value = m.pax_headers.get(name)
    if value is None:
        if fallback is not None:
            return fallback
        value = m.mtime  # ustar/GNU header seconds (an int; base-256 may be huge or negative)
    elif (found := _PAX_DECIMAL.match(value.strip())) is not None:
        sec, frac = found.groups()
        value = f"{sec}.{frac[:9]}" if frac else sec  # ext4 keeps nanoseconds
    else:
        raise ManifestError(shown, f"PAX {name} {value[:40]!r} is not a decimal number of seconds")
    try:
        return times.parse_time(value if not isinstance(value, float) else int(value))
    except (ValueError, OverflowError) as e:
        raise ManifestError(shown, f"{name} {str(value)[:40]}: {e}") from None


def _member_id(m: tarfile.TarInfo, name: str, shown: str) -> int:
    """uid/gid as the member says, if ext4 can store it (32 bits, not (uid_t)-1)."""
    raw = m.pax_headers.get(name)
    value: object = getattr(m, name)
    if raw is not None:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ManifestError(shown, f"PAX {name} {raw[:40]!r} is not an integer") from None
    if not isinstance(value, int) or not 0 <= value < UINT32:
        raise ManifestError(shown, f"{name} {value} is outside 0 .. {UINT32 - 1}")
    return value


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

    for nss_file in ("/etc/nsswitch.conf", "/etc/passwd", "/etc/group"):  # read by libc
        host_reads.note(nss_file, follow=True)
    try:
        if tag in ("u", "user"):
            return pwd.getpwnam(name).pw_uid
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise XattrError(f"ACL names {tag} {name!r}, which does not exist on this host") from None


def import_tar(tree: Tree, tar_path: str, target: str = "/", *, key: str = "",
               expect: tuple[int, int] | None = None) -> None:
    """Add the members of ``tar_path`` under ``target`` in ``tree``.

    ``expect`` (st_dev, st_ino): the archive must be that file (see import_source).
    """
    key = key or tar_path
    try:
        plain = uncompressed(tar_path, expect)
        hf = HostFile(plain)
        tf = tarfile.open(plain, "r:")
    except (OSError, tarfile.TarError, ValueError, OverflowError, EOFError) as e:
        raise ManifestError(key, f"cannot read tar archive {tar_path}: {e}") from None
    if expect is not None and plain == tar_path and (hf.pin.st_dev, hf.pin.st_ino) != expect:
        tf.close()
        raise ManifestError(key, f"{tar_path} changed while it was being imported (no longer the "
                            "archive found beneath the source root)")
    base = split_path(target, key)
    with tf:
        try:
            members = iter(tf)
            for m in members:
                _add_member(tree, hf, m, base, tar_path)
        except (tarfile.TarError, ValueError, OverflowError, EOFError) as e:  # tarfile's own parsing
            raise ManifestError(key, f"corrupt tar archive {tar_path}: {e}") from None


class Member(NamedTuple):
    """One tar member as the tree sees it: its image path and a node, or a hard link."""

    path: bytes
    shown: str  # "archive:member", for messages
    node: Node | None  # None for a hard link
    link: bytes | None  # the hard link's target path in the image


def _add_member(tree: Tree, hf: HostFile, m: tarfile.TarInfo, base: list[bytes], tar_path: str) -> None:
    mem = member_node(m, base, tar_path, lambda m: _file_source(hf, m, f"{tar_path}:{m.name}"))
    if mem.node is None:
        add_hardlink(tree, m, mem)
    else:
        tree.add(mem.path, mem.node)


def member_node(m: tarfile.TarInfo, base: list[bytes], tar_path: str,
                source_for: Callable[[tarfile.TarInfo], Source]) -> Member:
    """One member becomes exactly what it says, or is refused naming it.

    ``source_for`` gives a regular file's content, so layers of container images
    can serve it their own way; everything else (metadata, xattrs, ACLs, type and
    every check) is the same for plain tars and layers.
    """
    name = m.name.encode("utf-8", "surrogateescape")
    parts = [p for p in name.split(b"/") if p and p != b"."]
    shown = f"{tar_path}:{m.name}"
    if b".." in parts:
        raise ManifestError(shown, "member path escapes the archive root ('..')")
    if not parts and not m.isdir():
        raise ManifestError(shown, "only a directory can stand for the archive root")
    path = b"/" + b"/".join(base + parts)
    if m.islnk():
        link = [p for p in m.linkname.encode("utf-8", "surrogateescape").split(b"/") if p and p != b"."]
        if b".." in link:
            raise ManifestError(shown, "hard link target escapes the archive root ('..')")
        return Member(path, shown, None, b"/" + b"/".join(base + link))
    mtime = _member_time(m, "mtime", None, shown)
    ctime = _member_time(m, "ctime", mtime, shown)
    meta = Meta(m.mode & 0o7777, _member_id(m, "uid", shown), _member_id(m, "gid", shown),
                _member_time(m, "atime", mtime, shown), mtime, ctime, ctime)
    xattrs = _member_xattrs(m, shown) or NO_XATTRS
    node = Node(FILE, meta, key=shown, xattrs=xattrs, imported=True)
    if m.isdir():
        node.kind = DIR
    elif m.issym():
        node.kind = SYMLINK
        node.target = _symlink_target(m, shown)
    elif m.ischr() or m.isblk():
        node.kind = CHARDEV if m.ischr() else BLOCKDEV
        if not (0 <= m.devmajor <= MAJOR_MAX and 0 <= m.devminor <= MINOR_MAX):
            raise ManifestError(shown, f"device {m.devmajor}:{m.devminor} is outside what ext4 "
                                f"stores (major 0 .. {MAJOR_MAX}, minor 0 .. {MINOR_MAX})")
        node.rdev = (m.devmajor, m.devminor)
    elif m.isfifo():
        node.kind = FIFO
    elif m.isreg():
        problem = file_size_error(m.size)
        if problem:
            raise ManifestError(shown, problem)
        node.source = source_for(m)
    else:
        raise ManifestError(shown, f"unsupported tar member type {m.type!r}")
    return Member(path, shown, node, None)


def add_hardlink(tree: Tree, m: tarfile.TarInfo, mem: Member) -> None:
    """Link to the member of that name *as it is now*: a later member of the same name
    replaces the name, not the inode the link already shares (GNU tar does the same)."""
    assert mem.link is not None
    node = tree.lookup(split_path(mem.link, mem.shown))
    if node is None:
        raise ManifestError(mem.shown, f"hard link to {m.linkname!r}, which is not an earlier member")
    if node.kind == DIR:
        raise ManifestError(mem.shown, f"hard link to directory {m.linkname!r}")
    tree.add(mem.path, node)


def _symlink_target(m: tarfile.TarInfo, shown: str) -> bytes:
    target = m.linkname.encode("utf-8", "surrogateescape")
    if not target:
        raise ManifestError(shown, "symlink target is empty")
    if b"\0" in target:
        raise ManifestError(shown, "symlink target contains NUL")
    if len(target) > SYMLINK_MAX:
        raise ManifestError(shown, f"symlink target is {len(target)} bytes, over the "
                            f"{SYMLINK_MAX}-byte limit")
    return target


def _file_source(hf: HostFile, m: tarfile.TarInfo, shown: str) -> HostFileSource | InlineSource:
    """The member's bytes in the archive; a sparse map must describe a real file."""
    problem = file_size_error(m.size)
    if problem:
        raise ManifestError(shown, problem)
    archive_size = hf.pin.st_size
    if m.sparse is None:
        if m.offset_data + m.size > archive_size:
            raise ManifestError(shown, "member data runs past the end of the archive")
        if not m.size:
            return InlineSource(b"")
        return HostFileSource(hf, base_offset=m.offset_data, size=m.size)
    segments, pos, end = [], m.offset_data, 0
    for off, length in m.sparse:
        if not (isinstance(off, int) and isinstance(length, int)) or off < end or length < 0 \
                or off + length > m.size:
            raise ManifestError(shown, f"sparse map entry {off},{length} is out of order, "
                                f"negative or past the file size {m.size}")
        if length:
            segments.append((off, length, pos))
        pos += length
        end = off + length
    if pos > archive_size:
        raise ManifestError(shown, "member data runs past the end of the archive")
    return HostFileSource(hf, size=m.size, segments=segments)
