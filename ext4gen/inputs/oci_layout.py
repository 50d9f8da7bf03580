"""Where an image's blobs live and which manifest a SOURCE names.

Three stores, named as containers-transports(5) names them: an OCI image layout
directory (``oci:``), the same packed in a tar (``oci-archive:``), and the
``docker save`` format (``docker-archive:``).  Archives must be plain tars (what
skopeo and docker write): their blobs are then served in place, by offset.
"""

from __future__ import annotations

import json
import os
import platform as platform_mod
import posixpath
import tarfile
from dataclasses import dataclass, field
from typing import Any

from ..errors import ManifestError
from ..model.blobs import Blob, verify_bytes
from ..model.sources import HostFile

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
REF_ANNOTATION = "org.opencontainers.image.ref.name"

#: layer media type -> compression ("" for a plain tar)
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": "",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": "",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd": "zstd",
}

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
         "armv7l": "arm/v7", "armv6l": "arm/v6", "i686": "386", "i386": "386",
         "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


@dataclass
class Layer:
    blob: Blob
    media_type: str
    compression: str  # "", "gzip" or "zstd"


@dataclass
class ImageRef:
    """The resolved image: its manifest, its config document and its layers, bottom first."""

    source: str
    manifest_digest: str
    config: dict[str, Any]
    layers: list[Layer] = field(default_factory=list)


def host_platform() -> str:
    arch = _ARCH.get(platform_mod.machine().lower(), platform_mod.machine().lower())
    return f"linux/{arch}"


def parse_platform(text: str, key: str) -> tuple[str, str, str]:
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ManifestError(key, f"platform {text!r}: expected OS/ARCH[/VARIANT], e.g. linux/arm64")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else ""


def _json(data: bytes, shown: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(shown, f"not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ManifestError(shown, "expected a JSON object")
    return doc


class Store:
    """Blobs by digest, plus the store's top-level files (index.json, manifest.json)."""

    def __init__(self, source: str, path: str) -> None:
        self.source = source
        self.path = path

    def top_file(self, name: str) -> bytes | None:
        raise NotImplementedError

    def blob(self, digest: str, size: int | None = None) -> Blob:
        raise NotImplementedError

    def blob_json(self, digest: str, size: int | None, what: str) -> dict[str, Any]:
        b = self.blob(digest, size)
        data = b.read_all()
        verify_bytes(data, digest, f"{self.source}: {what} {digest}")
        return _json(data, f"{self.source}: {what} {digest}")

    @staticmethod
    def _blob_path(digest: str, shown: str) -> str:
        algo, sep, hexd = digest.partition(":")
        if not sep or not hexd or not algo.isalnum() or not all(c in "0123456789abcdef" for c in hexd):
            raise ManifestError(shown, f"malformed digest {digest!r}")
        return f"blobs/{algo}/{hexd}"


class DirStore(Store):
    """An OCI image layout directory: ``index.json`` and ``blobs/ALGO/HEX``."""

    def top_file(self, name: str) -> bytes | None:
        try:
            with open(os.path.join(self.path, name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise ManifestError(self.source, f"cannot read {name}: {e.strerror}") from None

    def blob(self, digest: str, size: int | None = None) -> Blob:
        rel = self._blob_path(digest, self.source)
        path = os.path.join(self.path, rel)
        try:
            hf = HostFile(path)
        except OSError:
            raise ManifestError(self.source, f"missing blob {digest} ({rel})") from None
        if size is not None and hf.pin.st_size != size:
            raise ManifestError(self.source, f"blob {digest} is {hf.pin.st_size} bytes, its "
                                f"descriptor says {size}")
        return Blob(hf, 0, hf.pin.st_size, digest, f"{self.source}: blob {digest}")


class ArchiveStore(Store):
    """A plain tar holding a store (oci-archive or docker-archive); members read by offset."""

    def __init__(self, source: str, path: str) -> None:
        super().__init__(source, path)
        try:
            self.file = HostFile(path)
            with open(path, "rb") as f:
                head = f.read(512)
            if head[:2] == b"\x1f\x8b" or head[:4] == b"\x28\xb5\x2f\xfd" or head[:3] == b"BZh":
                raise ManifestError(source, "compressed image archives are not supported "
                                    "(decompress it: its layers are then served in place)")
            self.members: dict[str, tarfile.TarInfo] = {}
            with tarfile.open(path, "r:") as tf:
                for m in tf:
                    self.members[posixpath.normpath(m.name.lstrip("/"))] = m
        except ManifestError:
            raise
        except (OSError, tarfile.TarError) as e:
            raise ManifestError(source, f"cannot read the image archive: {e}") from None

    def _member(self, name: str, depth: int = 0) -> tarfile.TarInfo | None:
        m = self.members.get(posixpath.normpath(name))
        if m is not None and (m.issym() or m.islnk()) and depth < 8:
            target = m.linkname if m.islnk() else posixpath.join(posixpath.dirname(m.name), m.linkname)
            return self._member(target.lstrip("/"), depth + 1)
        return m if m is not None and m.isreg() else None

    def top_file(self, name: str) -> bytes | None:
        m = self._member(name)
        if m is None:
            return None
        return Blob(self.file, m.offset_data, m.size, "", f"{self.source}:{name}").read_all()

    def blob(self, digest: str, size: int | None = None) -> Blob:
        rel = self._blob_path(digest, self.source)
        return self.named_blob(rel, digest, size)

    def named_blob(self, name: str, digest: str, size: int | None = None) -> Blob:
        m = self._member(name)
        if m is None:
            raise ManifestError(self.source, f"missing blob {digest} ({name} is not in the archive)")
        if size is not None and m.size != size:
            raise ManifestError(self.source, f"blob {digest} is {m.size} bytes, its descriptor says {size}")
        return Blob(self.file, m.offset_data, m.size, digest, f"{self.source}: blob {digest}")


def resolve_oci(store: Store, ref: str, platform: str | None) -> ImageRef:
    """index.json → (nested indexes, by platform) → manifest → config and layers."""
    raw = store.top_file("index.json")
    if raw is None:
        raise ManifestError(store.source, "not an OCI image layout (no index.json)")
    index = _json(raw, f"{store.source}: index.json")
    desc = _pick(index, ref, platform, f"{store.source}: index.json")
    for _depth in range(4):
        mt = desc.get("mediaType")
        if mt in MANIFEST_TYPES:
            break
        if mt not in INDEX_TYPES:
            raise ManifestError(store.source, f"unknown media type {mt!r} for {desc.get('digest')}")
        nested = store.blob_json(desc["digest"], desc.get("size"), "index")
        desc = _pick(nested, "", platform, f"{store.source}: index {desc['digest']}")
    else:
        raise ManifestError(store.source, "indexes nested too deeply")
    manifest = store.blob_json(_digest(desc, store.source), desc.get("size"), "manifest")
    return _from_manifest(store, manifest, desc["digest"])


def _digest(desc: dict[str, Any], shown: str) -> str:
    d = desc.get("digest")
    if not isinstance(d, str):
        raise ManifestError(shown, "descriptor without a digest")
    return d


def _from_manifest(store: Store, manifest: dict[str, Any], digest: str) -> ImageRef:
    shown = f"{store.source}: manifest {digest}"
    mt = manifest.get("mediaType", OCI_MANIFEST)
    if mt not in MANIFEST_TYPES:
        raise ManifestError(shown, f"unknown media type {mt!r}")
    cdesc = manifest.get("config")
    if not isinstance(cdesc, dict):
        raise ManifestError(shown, "no config descriptor")
    config = store.blob_json(_digest(cdesc, shown), cdesc.get("size"), "config")
    image = ImageRef(store.source, digest, config)
    for ld in manifest.get("layers") or []:
        lmt = ld.get("mediaType", "")
        if lmt not in LAYER_TYPES:
            raise ManifestError(shown, f"layer {ld.get('digest')}: unknown media type {lmt!r}")
        image.layers.append(Layer(store.blob(_digest(ld, shown), ld.get("size")), lmt, LAYER_TYPES[lmt]))
    return image


def _pick(index: dict[str, Any], ref: str, platform: str | None, shown: str) -> dict[str, Any]:
    """The descriptor ``ref`` names, else the only one, else the one for the platform."""
    descs = [d for d in index.get("manifests") or [] if isinstance(d, dict)]
    if ref:
        named = [d for d in descs if (d.get("annotations") or {}).get(REF_ANNOTATION) == ref]
        if not named:
            have = sorted({(d.get("annotations") or {}).get(REF_ANNOTATION, "") for d in descs} - {""})
            raise ManifestError(shown, f"no image named {ref!r} (references: {', '.join(have) or 'none'})")
        descs = named
    if not descs:
        raise ManifestError(shown, "the index lists no manifests")
    with_platform = [d for d in descs if isinstance(d.get("platform"), dict)]
    if len(descs) == 1 and (platform is None or not with_platform):
        return descs[0]
    if not with_platform:
        have = sorted({(d.get("annotations") or {}).get(REF_ANNOTATION, "?") for d in descs})
        raise ManifestError(shown, f"{len(descs)} images; name one as SOURCE:REF ({', '.join(have)})")
    want_os, want_arch, want_var = parse_platform(platform or host_platform(), shown)
    for d in with_platform:
        p = d["platform"]
        if p.get("os") == want_os and p.get("architecture") == want_arch and (
                not want_var or p.get("variant", "") == want_var):
            return d
    have = sorted("/".join(x for x in (d["platform"].get("os"), d["platform"].get("architecture"),
                                       d["platform"].get("variant")) if x) for d in with_platform)
    raise ManifestError(shown, f"no image for platform {want_os}/{want_arch}"
                        f"{'/' + want_var if want_var else ''} (has: {', '.join(have)}; "
                        f"choose with --platform)")


def resolve_docker_archive(store: ArchiveStore, ref: str) -> ImageRef:
    """``manifest.json`` of ``docker save``: [{Config, RepoTags, Layers}], layers uncompressed."""
    raw = store.top_file("manifest.json")
    if raw is None:
        raise ManifestError(store.source, "not a docker-archive (no manifest.json)")
    try:
        entries = json.loads(raw)
    except ValueError as e:
        raise ManifestError(store.source, f"manifest.json: not valid JSON: {e}") from None
    if not isinstance(entries, list) or not entries:
        raise ManifestError(store.source, "manifest.json lists no images")
    if ref.startswith("@") and ref[1:].isdigit():  # @N: the N-th image of the archive
        if int(ref[1:]) >= len(entries):
            raise ManifestError(store.source, f"no image {ref} (the archive holds {len(entries)})")
        entries = [entries[int(ref[1:])]]
    elif ref:
        named = [e for e in entries if ref in (e.get("RepoTags") or [])
                 or any(t.endswith("/" + ref) for t in e.get("RepoTags") or [])]
        if not named:
            have = sorted(t for e in entries for t in e.get("RepoTags") or [])
            raise ManifestError(store.source, f"no image named {ref!r} (tags: {', '.join(have) or 'none'})")
        entries = named
    if len(entries) > 1:
        raise ManifestError(store.source, f"{len(entries)} images; name one as SOURCE:TAG")
    entry = entries[0]
    cname = entry.get("Config", "")
    chex = posixpath.basename(cname).removesuffix(".json")
    config_blob = store.named_blob(cname, f"sha256:{chex}")
    data = config_blob.read_all()
    verify_bytes(data, f"sha256:{chex}", f"{store.source}: config {cname}")
    config = _json(data, f"{store.source}: config {cname}")
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    names = entry.get("Layers") or []
    if len(diff_ids) != len(names):
        raise ManifestError(store.source, f"config lists {len(diff_ids)} layers, manifest.json {len(names)}")
    image = ImageRef(store.source, f"sha256:{chex}", config)
    for name, diff_id in zip(names, diff_ids, strict=True):
        blob = store.named_blob(name, diff_id)
        with blob.reader() as r:
            head = r.read(4)
        compression = "gzip" if head[:2] == b"\x1f\x8b" else "zstd" if head == b"\x28\xb5\x2f\xfd" else ""
        if compression:  # diff_ids name the uncompressed tar: only a plain layer can be checked by them
            raise ManifestError(blob.shown, f"compressed ({compression}) layers in a docker-archive "
                                "are not supported")
        image.layers.append(Layer(blob, "application/vnd.docker.image.rootfs.diff.tar", ""))
    return image
