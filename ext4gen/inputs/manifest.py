"""Manifest files (TOML or JSON, one schema) → :class:`Tree` + :class:`ImageOptions`.

Every complaint names the manifest key that caused it; see docs/manifest.md.
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
import os
import sys
import tomllib
from collections.abc import Sequence
from typing import Any

from ..errors import ManifestError
from ..model import times
from ..model.confine import pinned_source
from ..model.options import (
    ImageOptions,
    SourceOptions,
    check_dedup,
    check_label,
    source_date_epoch_ns,
    uuid_value,
)
from ..model.sources import CallableSource, HostFileSource, InlineSource, Source, ZeroSource
from ..model.tree import (
    BLOCKDEV,
    CHARDEV,
    DIR,
    FIFO,
    FILE,
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
from ..remote import settings as remote_settings
from ..remote.manifest_keys import REMOTE_KEYS, parse_image_keys, remote_content
from .adjust import apply_source_options
from .generators import Generator
from .image_keys import SOURCE_OPTION_KEYS, parse_source_options
from .surrogates import may_hold_surrogates, refuse_lone_surrogates

TOP_KEYS = {"image", "defaults", "import"}
IMPORT_KEYS = {"source", "target"}
IMAGE_KEYS = {"label", "uuid", "hash_seed", "dedup", "inline_data", *SOURCE_OPTION_KEYS,
              *remote_settings.IMAGE_KEYS}
DEFAULT_KEYS = {"uid", "gid", "mode", "dir_mode", "mtime"}
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
UINT32 = (1 << 32) - 1


def load_manifest(path: str, *, epoch_env: str | None = None, source_root: str | None = None,
                  source_options: SourceOptions | None = None, generator_path: Sequence[str] = (),
                  load_generators: bool = True) -> tuple[Tree, ImageOptions]:
    """Read a manifest file (``-`` = stdin); ``.json`` or a leading ``{`` is JSON, else TOML.

    A manifest from stdin may only name host files below the current directory
    unless ``source_root`` says otherwise: its author is unknown.  Generator
    modules are imported now unless ``load_generators`` is false (commands that
    never read file data).
    """
    try:
        if path == "-":
            raw = sys.stdin.buffer.read()
            base_dir = os.getcwd()
            source_root = source_root or base_dir
        else:
            with open(path, "rb") as f:
                raw = f.read()
            base_dir = os.path.dirname(os.path.abspath(path))
    except OSError as e:
        raise ManifestError(path, f"cannot read manifest: {e.strerror}") from None
    doc = _decode(raw, path)
    del raw  # a million-entry manifest: the text, the document and the tree must not all coexist
    try:
        return parse_manifest(doc, base_dir=base_dir, epoch_env=epoch_env, source_root=source_root,
                              consume=True, source_options=source_options,
                              generator_path=generator_path, load_generators=load_generators)
    except ManifestError as e:
        raise ManifestError(e.key, e.message, origin=path) from None


def _decode(raw: bytes, path: str) -> dict[str, Any]:
    is_json = path.endswith(".json") or raw.lstrip()[:1] == b"{"
    try:
        if is_json:
            doc = json.loads(raw, object_pairs_hook=_unique_keys)
        else:
            doc = tomllib.loads(raw.decode("utf-8"))
    except ManifestError as e:
        raise ManifestError(e.key, e.message, origin=path) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(path, f"not valid {'JSON' if is_json else 'TOML'}: {e}") from None
    except RecursionError:
        raise ManifestError(path, f"not valid {'JSON' if is_json else 'TOML'}: nested too "
                            "deeply") from None
    if not isinstance(doc, dict):
        raise ManifestError(path, "the manifest must be a table/object")
    if is_json and may_hold_surrogates(raw):
        try:
            refuse_lone_surrogates(doc)
        except ManifestError as e:
            raise ManifestError(e.key, e.message, origin=path) from None
    return doc


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON objects with a key twice would silently keep the last one: refuse them."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ManifestError(f'"{k}"' if k.startswith("/") else k, "duplicate key")
        out[k] = v
    return out


def parse_manifest(doc: dict[str, Any], *, base_dir: str = ".", epoch_env: str | None = None,
                   source_root: str | None = None, consume: bool = False,
                   source_options: SourceOptions | None = None, generator_path: Sequence[str] = (),
                   load_generators: bool = True) -> tuple[Tree, ImageOptions]:
    """Turn a parsed manifest document into a tree; relative sources use ``base_dir``.

    With ``source_root``, every host path must resolve (symlinks and ``..``
    included) inside it, and generators (which run code) are refused.  With
    ``consume``, each entry is removed from ``doc`` once it is a node, so the
    memory of the document is reused for the tree instead of adding to it.
    ``source_options`` (from the command line) win over the ``[image]`` table's, key by key.
    """
    host = HostPaths(base_dir, source_root, generator_path)
    if epoch_env is None:
        epoch_env = os.environ.get("SOURCE_DATE_EPOCH")
    for k in doc:
        if k not in TOP_KEYS and not k.startswith("/"):
            raise ManifestError(k, "unknown top-level key (entries must be absolute paths)")
    image_table = _table(doc.get("image", {}), "image")
    opts = _parse_image(image_table)
    adjust = (source_options or SourceOptions()).over(parse_source_options(image_table, host))
    remote, opts.prefetch = parse_image_keys(image_table)  # url/s3 entries: see ext4gen.remote
    defaults = _table(doc.get("defaults", {}), "defaults")
    _no_unknown(defaults, DEFAULT_KEYS, "defaults")
    epoch_ns = source_date_epoch_ns(epoch_env)
    default_time = _time(defaults["mtime"], "defaults.mtime") if "mtime" in defaults else epoch_ns
    # The superblock is stamped only from SOURCE_DATE_EPOCH: a default file time in the
    # future would make e2fsck report "last write time is in the future".
    opts.epoch_ns = epoch_ns
    d_uid = _uint32(defaults.get("uid", 0), "defaults.uid")
    d_gid = _uint32(defaults.get("gid", 0), "defaults.gid")
    d_mode = _mode(defaults.get("mode", 0o644), "defaults.mode")
    d_dir_mode = _mode(defaults.get("dir_mode", 0o755), "defaults.dir_mode")

    # Entries that keep the default times share one Meta per (mode, uid, gid): in a big
    # manifest that is nearly every entry.  Entries with their own times get their own.
    shared_metas: dict[tuple[int, int, int], Meta] = {}

    def meta_for(entry: dict[str, Any], key: str, default_perm: int) -> Meta:
        perm = _mode(entry["mode"], f"{key}.mode") if "mode" in entry else default_perm
        uid = _uint32(entry["uid"], f"{key}.uid") if "uid" in entry else d_uid
        gid = _uint32(entry["gid"], f"{key}.gid") if "gid" in entry else d_gid
        if entry.keys().isdisjoint(TIME_KEYS):
            meta = shared_metas.get((perm, uid, gid))
            if meta is None:
                meta = shared_metas[perm, uid, gid] = Meta(perm, uid, gid, *(default_time,) * 4)
            return meta
        mtime = _time(entry["mtime"], f"{key}.mtime") if "mtime" in entry else default_time
        return Meta(
            perm=perm, uid=uid, gid=gid,
            atime=_time(entry["atime"], f"{key}.atime") if "atime" in entry else mtime,
            mtime=mtime,
            ctime=_time(entry["ctime"], f"{key}.ctime") if "ctime" in entry else mtime,
            crtime=_time(entry["crtime"], f"{key}.crtime") if "crtime" in entry else mtime,
        )

    dir_default = Meta(d_dir_mode, d_uid, d_gid, default_time, default_time, default_time, default_time)
    tree = Tree(dir_default)
    imports = doc.get("import", [])
    if not isinstance(imports, list):
        raise ManifestError("import", "must be an array of tables ([[import]])")
    for i, imp in enumerate(imports):
        k = f"import[{i}]"
        imp = _table(imp, k)
        _no_unknown(imp, IMPORT_KEYS, k)
        raw_source = _str(imp.get("source"), f"{k}.source")
        target = _str(imp.get("target", "/"), f"{k}.target")
        if _import_oci(tree, raw_source, target, f"{k}.source", host):
            continue
        path = host.resolve(raw_source, f"{k}.source")
        import_source(tree, path, target, key=f"{k}.source",
                      one_file_system=bool(adjust.one_file_system))
    for path in list(doc) if consume else doc:
        if not path.startswith("/"):
            continue
        key = f'"{path}"'
        entry = _table(doc.pop(path) if consume else doc[path], key)
        if not entry.keys() <= ENTRY_KEYS:
            _no_unknown(entry, ENTRY_KEYS, key)
        kind = _entry_type(entry, key)
        if kind == "hardlink":
            extra = set(entry) - {"type", "target"}
            if extra:
                raise ManifestError(f"{key}.{sorted(extra)[0]}", "a hard link shares its target's "
                                    "inode and cannot set its own metadata or content")
            target = _str(entry.get("target"), f"{key}.target")
            tree.add_hardlink(path, target, key)
            continue
        xattrs = NO_XATTRS
        if not entry.keys().isdisjoint(XATTR_KEYS):
            xattrs = _xattrs(entry, key, kind) or NO_XATTRS
        if kind == DIR:
            _only(entry, key, set(), "directory")
            tree.add(path, Node(DIR, meta_for(entry, key, d_dir_mode), key=key, xattrs=xattrs))
        elif kind in (CHARDEV, BLOCKDEV, FIFO, SOCKET):
            is_dev = kind in (CHARDEV, BLOCKDEV)
            _only(entry, key, set(DEVICE_KEYS) if is_dev else set(), kind)
            rdev = (0, 0)
            if is_dev:
                for k in DEVICE_KEYS:
                    if k not in entry:
                        raise ManifestError(f"{key}.{k}", f"a {kind} needs major and minor numbers")
                rdev = (_bounded(entry["major"], f"{key}.major", 0xFFF),
                        _bounded(entry["minor"], f"{key}.minor", 0xFFFFF))
            tree.add(path, Node(kind, meta_for(entry, key, 0o644 if is_dev else d_mode), key=key,
                                rdev=rdev, xattrs=xattrs))
        elif kind == SYMLINK:
            _only(entry, key, {"target"}, "symlink")
            target = _str(entry.get("target"), f"{key}.target").encode("utf-8", "surrogateescape")
            if not target:
                raise ManifestError(f"{key}.target", "a symlink target must not be empty")
            if len(target) > SYMLINK_MAX:
                raise ManifestError(f"{key}.target", f"symlink target is {len(target)} bytes, "
                                    f"over the {SYMLINK_MAX}-byte limit")
            if b"\0" in target:
                raise ManifestError(f"{key}.target", "symlink target must not contain NUL")
            tree.add(path, Node(SYMLINK, meta_for(entry, key, 0o777), key=key, target=target,
                                xattrs=xattrs))
        else:
            _only(entry, key, set(CONTENT_KEYS) | set(GENERATOR_KEYS) | REMOTE_KEYS, "file")
            if entry.keys().isdisjoint(REMOTE_KEYS):
                source = _content(entry, key, host)
            else:
                source = remote_content(entry, key, remote)
            tree.add(path, Node(FILE, meta_for(entry, key, d_mode), key=key, source=source,
                                xattrs=xattrs))
    tree.resolve_links()
    # By default SOURCE_DATE_EPOCH clamps imported inodes only: without imports, no walk for it.
    clamp_epoch = epoch_ns if epoch_env and (imports or adjust.times) else None
    apply_source_options(tree, adjust, clamp_epoch)
    if load_generators:
        for gen in host.generators:
            gen.load()
    return tree, opts


def _parse_image(table: dict[str, Any]) -> ImageOptions:
    _no_unknown(table, IMAGE_KEYS, "image")
    opts = ImageOptions()
    if "label" in table:
        try:
            opts.label = check_label(_str(table["label"], "image.label"))
        except ValueError as e:
            raise ManifestError("image.label", str(e)) from None
    for name in ("uuid", "hash_seed"):
        if name in table:
            try:
                value = uuid_value(_str(table[name], f"image.{name}"))
            except ValueError as e:
                raise ManifestError(f"image.{name}", str(e)) from None
            setattr(opts, name, value)
    if "inline_data" in table:
        if not isinstance(table["inline_data"], bool):
            raise ManifestError("image.inline_data", "must be true or false")
        opts.inline_data = table["inline_data"]
    if "dedup" in table:
        opts.dedup = check_dedup(_str(table["dedup"], "image.dedup"), "image.dedup")
    return opts


def _entry_type(entry: dict[str, Any], key: str) -> str:
    if "type" in entry:
        kind = _str(entry["type"], f"{key}.type")
        if kind not in ENTRY_TYPES:
            raise ManifestError(f"{key}.type", f"unknown type {kind!r} (expected one of "
                                f"{', '.join(ENTRY_TYPES)})")
        return kind
    if any(k in entry for k in CONTENT_KEYS) or "url" in entry or "s3" in entry:
        return FILE
    if "target" in entry:
        raise ManifestError(key, "'target' needs type = \"symlink\" or \"hardlink\"")
    return DIR


def _xattrs(entry: dict[str, Any], key: str, kind: str) -> dict[bytes, bytes]:
    """``xattrs`` (name → string, or {base64=…}/{hex=…}) plus ``acl``/``default_acl`` text."""
    out: dict[bytes, bytes] = {}
    for name, value in _table(entry.get("xattrs", {}), f"{key}.xattrs").items():
        k = f"{key}.xattrs.{json.dumps(name)}"
        raw_name = name.encode("utf-8")
        if isinstance(value, str):
            data = value.encode("utf-8")
        elif isinstance(value, dict) and len(value) == 1 and ("base64" in value or "hex" in value):
            try:
                if "base64" in value:
                    data = base64.b64decode(_str(value["base64"], k + ".base64"), validate=True)
                else:
                    data = bytes.fromhex(_str(value["hex"], k + ".hex"))
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
            out[xname] = parse_acl_text(_str(entry[field_name], k))
        except XattrError as e:
            raise ManifestError(k, str(e)) from None
    return out


def _bounded(v: Any, key: str, limit: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= limit:
        raise ManifestError(key, f"must be an integer from 0 to {limit}")
    return v


_SPECIFIC_KEYS = frozenset(CONTENT_KEYS) | {"target"} | frozenset(DEVICE_KEYS) | REMOTE_KEYS


def _only(entry: dict[str, Any], key: str, allowed: set[str], what: str) -> None:
    wrong = (entry.keys() & _SPECIFIC_KEYS) - allowed
    if wrong:
        k = sorted(wrong)[0]
        raise ManifestError(f"{key}.{k}", f"not valid for a {what}")


def import_source(tree: Tree, host: str, target: str, *, key: str, one_file_system: bool = False) -> None:
    """Import a host directory or a tar archive under ``target``."""
    from .hostdir import import_directory
    from .tar import import_tar, is_tar

    if os.path.isdir(host):
        import_directory(tree, host, target, key=key, one_file_system=one_file_system)
    elif is_tar(host):
        import_tar(tree, host, target, key=key)
    elif not os.path.exists(host):
        raise ManifestError(key, f"{host} does not exist")
    else:
        raise ManifestError(key, f"{host} is neither a directory nor a tar archive")


def _import_oci(tree: Tree, source: str, target: str, key: str, host: HostPaths) -> bool:
    """Container-image SOURCE forms (oci:, oci-archive:, docker-archive:): see inputs/oci.py."""
    from .oci import absolute_source, import_oci, is_oci_source

    if not is_oci_source(source) or os.path.exists(os.path.join(host.base_dir, source)):
        return False
    import_oci(tree, absolute_source(source, lambda p: host.resolve(p, key), host.base_dir),
               target=target, key=key)
    return True


class HostPaths:
    """Resolves manifest-relative host paths and enforces ``--source-root``."""

    def __init__(self, base_dir: str, source_root: str | None,
                 generator_path: Sequence[str] = ()) -> None:
        self.base_dir = base_dir
        self.root = os.path.realpath(source_root) if source_root else None
        self.generator_search = [base_dir, *(os.path.abspath(d) for d in generator_path)]
        self.generators: list[Generator] = []

    def open_file(self, rel: str, path: str) -> HostFileSource:
        """The source file, pinned; under a source root, opened beneath it (see confine.py)."""
        if self.root is None:
            return HostFileSource(path)
        return pinned_source(self.root, os.path.join(os.path.realpath(self.base_dir), rel))

    def resolve(self, rel: str, key: str) -> str:
        path = os.path.join(self.base_dir, rel)
        if self.root is not None:
            try:
                real = os.path.realpath(path)
            except OSError as e:  # a component changed while it was resolved
                raise ManifestError(key, f"cannot resolve {path}: {e.strerror}") from None
            if real != self.root and not real.startswith(self.root.rstrip("/") + "/"):
                raise ManifestError(key, f"{path} is outside the source root {self.root}")
        return path


def _content(entry: dict[str, Any], key: str, host: HostPaths) -> Source:
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
        return InlineSource(_str(v, f"{key}.text").encode("utf-8"))
    if k == "base64":
        try:
            return InlineSource(base64.b64decode(_str(v, f"{key}.base64"), validate=True))
        except binascii.Error:
            raise ManifestError(f"{key}.base64", "invalid base64") from None
    if k == "size":
        return ZeroSource(_size(v, f"{key}.size"))
    rel = _str(v, f"{key}.source")
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
    spec = _str(entry["generator"], f"{key}.generator")
    for k in ("text", "base64", "source"):
        if k in entry:
            raise ManifestError(f"{key}.{k}", "conflicts with generator")
    if "size" not in entry:
        raise ManifestError(f"{key}.size", "a generator needs its size declared up front")
    size = _size(entry["size"], f"{key}.size")
    args = _table(entry.get("args", {}), f"{key}.args")
    identity = entry.get("identity")
    if identity is not None:
        identity = ("manifest-identity", _str(identity, f"{key}.identity"))
    gen = Generator(spec, f"{key}.generator", host.generator_search, args)
    host.generators.append(gen)
    return CallableSource(size, gen, identity=identity, name=spec)


def _table(v: Any, key: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ManifestError(key, "must be a table/object")
    return v


def _no_unknown(table: dict[str, Any], allowed: set[str], key: str) -> None:
    for k in table:
        if k not in allowed:
            raise ManifestError(f"{key}.{k}", f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _str(v: Any, key: str) -> str:
    if not isinstance(v, str):
        raise ManifestError(key, "must be a string")
    return v


def _size(v: Any, key: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ManifestError(key, "must be a non-negative integer")
    problem = file_size_error(v)
    if problem:
        raise ManifestError(key, problem)
    return v


def _uint32(v: Any, key: str) -> int:
    """An owner id: 32 bits, but 4294967295 is (uid_t)-1, which no file can have."""
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < UINT32:
        raise ManifestError(key, "must be an integer from 0 to 4294967294")
    return v


def _mode(v: Any, key: str) -> int:
    if isinstance(v, str):
        try:
            v = int(v, 8)
        except ValueError:
            raise ManifestError(key, "must be an octal string like \"0755\" or an integer") from None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 0o7777:
        raise ManifestError(key, "permission bits must be between 0 and 07777")
    return v


def _time(v: Any, key: str) -> int:
    try:
        return times.parse_time(v)
    except ValueError as e:
        raise ManifestError(key, str(e)) from None
