"""Manifest files (TOML or JSON, one schema) → :class:`Tree` + :class:`ImageOptions`.

Every complaint names the manifest key that caused it; see docs/manifest.md.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import ManifestError
from ..model.options import (
    ImageOptions,
    SourceOptions,
    check_dedup,
    check_label,
    source_date_epoch_ns,
    uuid_value,
)
from ..model.tree import (
    Meta,
    Tree,
)
from ..remote import settings as remote_settings
from ..remote.manifest_keys import parse_image_keys
from .adjust import apply_source_options
from .host_paths import HostPaths, import_source
from .image_keys import SOURCE_OPTION_KEYS, parse_source_options
from .manifest_entries import EntryContext, add_entry, read_defaults
from .manifest_values import no_unknown, string, table
from .surrogates import may_hold_surrogates, refuse_lone_surrogates

try:
    import orjson as _orjson  # a dependency; without it (an odd install) JSON reads slower
except ImportError:  # pragma: no cover - depends on the install
    _orjson = None

TOP_KEYS = {"image", "defaults", "import"}
IMPORT_KEYS = {"source", "target"}
IMAGE_KEYS = {"label", "uuid", "hash_seed", "dedup", "inline_data", *SOURCE_OPTION_KEYS,
              *remote_settings.IMAGE_KEYS}



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
            doc = json_unique_keys(raw)
        else:
            import tomllib  # here: a directory's or a JSON manifest's serve starts without it

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


def json_unique_keys(raw: bytes) -> Any:
    """``json.loads``, refusing an object with a key twice (JSON would keep the last one).

    Seeing duplicates takes ``object_pairs_hook``, which makes the decoder build a
    list of pairs for every object and call back into Python: one and a half times
    the plain parse of a 1,000,000-entry manifest (more than twice with the
    collector running).  So the text is parsed plainly first, and that result is
    kept when the text proves no key was dropped: outside strings, JSON has one
    ``:`` per key, so when the text holds exactly as many ``:`` bytes as the
    parsed objects hold keys, no string held one and no key was lost to a
    duplicate (each would leave a colon without its key).  Otherwise (a URL, a
    time of day in a string, or a real duplicate) it is parsed again with the
    hook.  Bytes are counted, not characters: in UTF-16 or UTF-32 other
    characters can only add ``:`` bytes, which sends the text to the hook.
    """
    doc = plain_json(raw)
    if raw.count(b":") == _keys_in(doc, raw):
        return doc
    return json.loads(raw, object_pairs_hook=_unique_keys)


def plain_json(raw: bytes) -> Any:
    """``json.loads(raw)``, through orjson when it is installed and takes the text.

    orjson builds the same objects from plain UTF-8 JSON in about 60 % of the
    time (a 1,000,000-entry manifest: 1.3 s instead of 2.0 s, the largest single
    step of its serve).  Whatever it refuses goes to ``json``, which decides and
    words the error: JSON it does not take (integers beyond 64 bits, NaN,
    Infinity, a byte-order mark, UTF-16, escaped lone surrogates) and invalid text.
    orjson reads an integer beyond 64 bits as a float, silently: a text with a run
    of 20 digits, or 19 after a minus sign, goes to ``json`` too (found in 0.1 s
    for 45 MB, where a regular expression took 0.9 s).
    """
    if _orjson is not None:
        digits = raw.translate(_DIGITS)
        if b"0" * 20 not in digits and b"-" + b"0" * 19 not in digits:
            del digits
            try:
                return _orjson.loads(raw)
            except _orjson.JSONDecodeError:
                pass
    return json.loads(raw)


_DIGITS = bytes(48 if 48 <= c <= 57 else c if c == 45 else 32 for c in range(256))  # 0-9 → 0, - stays


def _keys_in(doc: Any, raw: bytes) -> int:
    """The keys of every object in ``doc`` (parsed from ``raw``).

    Quick for a big manifest's usual shape, an object of flat objects: when the
    text has no ``[`` and no more ``{`` than the top object and its object
    values, no other object or array exists, so the entries' keys are all.
    """
    if type(doc) is dict and b"[" not in raw:
        tables = [v for v in doc.values() if type(v) is dict]
        if raw.count(b"{") == 1 + len(tables):
            return len(doc) + sum(map(len, tables))
    count, stack = 0, [doc]
    while stack:
        o = stack.pop()
        if type(o) is dict:
            count += len(o)
            o = o.values()
        elif type(o) is not list:
            continue
        stack.extend(v for v in o if type(v) in (dict, list))
    return count


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON objects with a key twice would silently keep the last one: refuse them."""
    out = dict(pairs)
    if len(out) == len(pairs):  # the common case, found without a Python loop per key
        return out
    out = {}
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
    image_table = table(doc.get("image", {}), "image")
    opts = _parse_image(image_table)
    adjust = (source_options or SourceOptions()).over(parse_source_options(image_table, host))
    remote, opts.prefetch = parse_image_keys(image_table)  # url/s3 entries: see ext4gen.remote
    # The superblock is stamped only from SOURCE_DATE_EPOCH: a default file time in the
    # future would make e2fsck report "last write time is in the future".
    opts.epoch_ns = epoch_ns = source_date_epoch_ns(epoch_env)
    defaults = read_defaults(doc, epoch_ns)
    t = defaults.time
    tree = Tree(Meta(defaults.dir_mode, defaults.uid, defaults.gid, t, t, t, t))
    imports = _run_imports(doc, tree, host, bool(adjust.one_file_system))
    ctx = EntryContext(defaults, host, remote)
    for path in list(doc) if consume else doc:
        if path.startswith("/"):
            key = f'"{path}"'
            add_entry(tree, path, table(doc.pop(path) if consume else doc[path], key), key, ctx)
    tree.resolve_links()
    # By default SOURCE_DATE_EPOCH clamps imported inodes only: without imports, no walk for it.
    clamp_epoch = epoch_ns if epoch_env and (imports or adjust.times) else None
    apply_source_options(tree, adjust, clamp_epoch)
    if load_generators:
        for gen in host.generators:
            gen.load()
    return tree, opts


def _run_imports(doc: dict[str, Any], tree: Tree, host: HostPaths, one_file_system: bool) -> list[Any]:
    """The ``[[import]]`` tables, in order, before any entry (entries override imports)."""
    imports = doc.get("import", [])
    if not isinstance(imports, list):
        raise ManifestError("import", "must be an array of tables ([[import]])")
    for i, imp in enumerate(imports):
        k = f"import[{i}]"
        imp = table(imp, k)
        no_unknown(imp, IMPORT_KEYS, k)
        raw_source = string(imp.get("source"), f"{k}.source")
        target = string(imp.get("target", "/"), f"{k}.target")
        if _import_oci(tree, raw_source, target, f"{k}.source", host):
            continue
        path = host.resolve(raw_source, f"{k}.source")
        import_source(tree, path, target, key=f"{k}.source", one_file_system=one_file_system,
                      expect=host.identity(path, f"{k}.source"))
    return imports


def _parse_image(table: dict[str, Any]) -> ImageOptions:
    no_unknown(table, IMAGE_KEYS, "image")
    opts = ImageOptions()
    if "label" in table:
        try:
            opts.label = check_label(string(table["label"], "image.label"))
        except ValueError as e:
            raise ManifestError("image.label", str(e)) from None
    for name in ("uuid", "hash_seed"):
        if name in table:
            try:
                value = uuid_value(string(table[name], f"image.{name}"))
            except ValueError as e:
                raise ManifestError(f"image.{name}", str(e)) from None
            setattr(opts, name, value)
    if "inline_data" in table:
        if not isinstance(table["inline_data"], bool):
            raise ManifestError("image.inline_data", "must be true or false")
        opts.inline_data = table["inline_data"]
    if "dedup" in table:
        opts.dedup = check_dedup(string(table["dedup"], "image.dedup"), "image.dedup")
    return opts


def _import_oci(tree: Tree, source: str, target: str, key: str, host: HostPaths) -> bool:
    """Container-image SOURCE forms (oci:, oci-archive:, docker-archive:): see inputs/oci.py."""
    from .oci import absolute_source, import_oci, is_oci_source

    if not is_oci_source(source) or os.path.exists(os.path.join(host.base_dir, source)):
        return False
    import_oci(tree, absolute_source(source, lambda p: host.resolve(p, key), host.base_dir),
               target=target, key=key)
    return True
