"""Planning's one pass over a layer: verify the blob, read its members, build its index.

The result — the member headers and, for compressed layers, the seekable index —
is cached in ``cache_area("index")`` under the blob's digest, so a second plan
of the same image (``serve`` plans once in the CLI and once in nbdkit) reads no
layer data at all.  The cache holds indexes, never decompressed data.  A cached
entry is only used for a blob whose bytes hash to its digest: that is checked by
hashing, unless this very file (same device, inode, size, mtime, ctime, offset)
was hashed before.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cache import CacheError, cache_area, write_atomic
from ..errors import ManifestError, SourceError
from ..model.blobs import Blob
from ..model.seekable import CompressedLayer, GzipLayer, ZstdLayer
from .oci_layout import Layer

CACHE_VERSION = 3
MAX_PINS = 8


@dataclass
class ScannedLayer:
    layer: Layer
    members: list[tarfile.TarInfo]  # emptied once applied (a big image has millions)
    stream: CompressedLayer | None  # None: a plain tar, served by offset
    size: int  # uncompressed bytes
    member_count: int = 0
    whiteouts: int = 0  # .wh.* members, opaque markers included
    #: zstd layers: sha256 of each regular member's bytes, by data offset (see _scan)
    digests: dict[int, str] = field(default_factory=dict)


def scan_layer(layer: Layer) -> ScannedLayer:
    blob = layer.blob
    area = _area()
    entry = _load(area, blob.hex, layer.compression) if area else None
    pin = _pin(blob)
    if entry is None or pin not in entry.get("verified", []):
        blob.verify()
    stream = _stream(layer)
    if entry is not None:
        try:
            members = [_tarinfo(d) for d in entry["members"]]
            if stream is not None:
                idx = (area / f"{blob.hex}.gzidx").read_bytes() if layer.compression == "gzip" else None
                stream.load_state(entry["state"], idx)
            digests = {int(k): str(v) for k, v in entry.get("digests", {}).items()}
            if pin not in entry["verified"]:
                entry["verified"] = [*entry["verified"][-MAX_PINS + 1 :], pin]
                _save(area, blob.hex, entry, None)
            return ScannedLayer(layer, members, stream, int(entry["size"]), digests=digests)
        except (OSError, KeyError, TypeError, ValueError):
            pass  # an unusable entry: scan again and replace it
    members, size, digests = _scan(layer, stream)
    if area is not None:
        entry = {"version": CACHE_VERSION, "compression": layer.compression, "size": size,
                 "verified": [pin], "members": [_member_doc(m) for m in members],
                 "state": stream.index_state() if stream is not None else {},
                 "digests": {str(k): v for k, v in digests.items()}}
        _save(area, blob.hex, entry, stream.index_bytes() if stream is not None else None)
    return ScannedLayer(layer, members, stream, size, digests=digests)


def _stream(layer: Layer) -> CompressedLayer | None:
    if layer.compression == "gzip":
        return GzipLayer(layer.blob)
    if layer.compression == "zstd":
        return ZstdLayer(layer.blob)
    return None


def _scan(layer: Layer, stream: CompressedLayer | None
          ) -> tuple[list[tarfile.TarInfo], int, dict[int, str]]:
    """Members, uncompressed size and (zstd) member digests, in one pass over the layer.

    A zstd layer is usually one frame: a read can only restart at its start, so
    the planner must not read it out of the tar's order to hash blocks for dedup.
    Its regular members are hashed here instead, in order, and deduplicated as
    whole files by that digest (ext4gen.inputs.layers).
    """
    blob = layer.blob
    digests: dict[int, str] = {}
    try:
        with blob.reader() as reader:
            if stream is None:
                with tarfile.open(fileobj=reader, mode="r:") as tf:  # type: ignore[call-overload]
                    return list(tf), blob.size, digests
            f, mode = stream.scan_file(reader)
            with tarfile.open(fileobj=f, mode=mode) as tf:
                members = []
                for m in tf:
                    members.append(m)
                    if layer.compression == "zstd" and m.isreg() and m.size and not m.sparse:
                        digests[m.offset_data] = _member_digest(tf, m)
            stream.finish_scan(f)
            return members, stream.size, digests
    except (tarfile.TarError, OSError, EOFError, SourceError, ValueError) as e:
        kind = f"{layer.compression} " if layer.compression else ""
        raise ManifestError(blob.shown, f"corrupt {kind}layer: {e}") from None
    except Exception as e:  # zstandard.ZstdError and indexed_gzip's ZranError derive from Exception
        if type(e).__module__.split(".")[0] in ("zstandard", "indexed_gzip"):
            raise ManifestError(blob.shown, f"corrupt {layer.compression} layer: {e}") from None
        raise


def _member_digest(tf: tarfile.TarFile, m: tarfile.TarInfo) -> str:
    h = hashlib.sha256()
    data = tf.extractfile(m)
    assert data is not None
    while chunk := data.read(1 << 20):
        h.update(chunk)
    return h.hexdigest()


def _area() -> Path | None:
    try:
        return cache_area("index")
    except (CacheError, OSError):
        return None  # no usable cache: plan without one


def _pin(blob: Blob) -> list[int]:
    p = blob.file.pin
    return [p.st_dev, p.st_ino, p.st_size, p.st_mtime_ns, p.st_ctime_ns, blob.offset]


def _load(area: Path, hexd: str, compression: str) -> dict[str, Any] | None:
    try:
        with open(area / f"{hexd}.json", encoding="utf-8") as f:
            entry = json.load(f)
    except (OSError, ValueError):
        return None
    if (not isinstance(entry, dict) or entry.get("version") != CACHE_VERSION
            or entry.get("compression") != compression):
        return None
    return entry


def _save(area: Path, hexd: str, entry: dict[str, Any], index: bytes | None) -> None:
    """Write atomically (index first, then the entry naming it); a failure only loses the cache."""
    try:
        if index is not None:
            write_atomic(area / f"{hexd}.gzidx", index)
        write_atomic(area / f"{hexd}.json", json.dumps(entry, separators=(",", ":")).encode())
    except OSError:
        pass


_FIELDS = ("name", "mode", "uid", "gid", "size", "linkname", "devmajor", "devminor",
           "offset", "offset_data")


def _member_doc(m: tarfile.TarInfo) -> dict[str, Any]:
    doc: dict[str, Any] = {k: getattr(m, k) for k in _FIELDS}
    doc["type"] = m.type.decode("latin-1")
    doc["mtime"] = m.mtime
    if m.pax_headers:
        doc["pax"] = m.pax_headers
    if m.sparse:
        doc["sparse"] = m.sparse
    return doc


def _tarinfo(doc: dict[str, Any]) -> tarfile.TarInfo:
    m = tarfile.TarInfo(doc["name"])
    for k in _FIELDS:
        setattr(m, k, doc[k])
    m.type = doc["type"].encode("latin-1")
    m.mtime = doc["mtime"]
    m.pax_headers = doc.get("pax", {})
    sparse = doc.get("sparse")
    m.sparse = [tuple(x) for x in sparse] if sparse else None
    return m
