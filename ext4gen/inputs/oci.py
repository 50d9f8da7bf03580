"""Container images as SOURCE: ``oci:DIR[:REF]``, ``oci-archive:FILE[:REF]``, ``docker-archive:FILE[:REF]``.

The forms are those of containers-transports(5).  The image's layers are applied
in order (:mod:`.layers`) into the tree; file contents stay in the layer blobs,
served by offset (plain layers) or through a seekable index (gzip, zstd), so
nothing is unpacked.  ``import_oci`` is the one entry point; ``is_oci_source``
tells the SOURCE dispatch when to call it.

The platform of a multi-platform index is the host's unless the caller (or
``$EXT4GEN_PLATFORM``, which ``--platform`` sets so that nbdkit's planning sees
it too) names another as ``os/arch[/variant]``.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import ManifestError
from ..model.tree import Tree, split_path
from .layer_scan import ScannedLayer, scan_layer
from .layers import apply_layer
from .oci_layout import ArchiveStore, DirStore, ImageRef, resolve_docker_archive, resolve_oci

TRANSPORTS = ("oci", "oci-archive", "docker-archive")
PLATFORM_ENV = "EXT4GEN_PLATFORM"


@dataclass
class OciImport:
    """What importing an image found: for ``inspect``."""

    image: ImageRef
    layers: list[ScannedLayer] = field(default_factory=list)
    whited_out: int = 0


_IMPORTS: weakref.WeakKeyDictionary[Tree, OciImport] = weakref.WeakKeyDictionary()


def is_oci_source(source: object) -> bool:
    """True for a SOURCE string naming a container image (by its transport prefix)."""
    return isinstance(source, str) and source.partition(":")[0] in TRANSPORTS and ":" in source


def split_source(source: str, base_dir: str = "") -> tuple[str, str, str]:
    """``TRANSPORT:PATH[:REF]`` → (transport, path, ref).

    A path may itself contain ``:``: the whole remainder is the path when it
    exists (relative to ``base_dir``); otherwise the text after the last ``:``
    is the reference.
    """
    transport, _, rest = source.partition(":")
    if transport not in TRANSPORTS or not rest:
        raise ManifestError(source, f"expected {transport or 'oci'}:PATH[:REF]")
    if os.path.exists(os.path.join(base_dir, rest)) or ":" not in rest:
        return transport, rest, ""
    pos = rest.find(":")
    while pos > 0:  # a docker reference may hold ":" and "/" (name:tag): the first existing path wins
        if os.path.exists(os.path.join(base_dir, rest[:pos])):
            return transport, rest[:pos], rest[pos + 1 :]
        pos = rest.find(":", pos + 1)
    head, _, tail = rest.rpartition(":")
    if head and "/" not in tail:
        return transport, head, tail
    return transport, rest, ""


def absolute_source(source: str, resolve: Callable[[str], str] = os.path.abspath,
                    base_dir: str = "") -> str:
    """The same SOURCE with its path made absolute by ``resolve`` (nbdkit plans it from
    another directory; a manifest's ``[[import]]`` resolves it against the manifest)."""
    transport, path, ref = split_source(source, base_dir)
    return f"{transport}:{os.path.abspath(resolve(path))}" + (f":{ref}" if ref else "")


def absolute_any(source: str) -> str:
    """os.path.abspath for any SOURCE, keeping a container image's transport and reference."""
    if is_oci_source(source) and not os.path.exists(source):
        return absolute_source(source)
    return os.path.abspath(source)


def open_image(source: str, platform: str | None = None) -> ImageRef:
    """Resolve the SOURCE to one image manifest, its config and its layer blobs."""
    transport, path, ref = split_source(source)
    platform = platform or os.environ.get(PLATFORM_ENV) or None
    if not os.path.exists(path):
        raise ManifestError(source, f"{path} does not exist")
    if transport == "oci":
        if not os.path.isdir(path):
            raise ManifestError(source, f"{path} is not a directory (an OCI image layout); "
                                f"for a tar use oci-archive:{path}")
        return resolve_oci(DirStore(source, path), ref, platform)
    if os.path.isdir(path):
        raise ManifestError(source, f"{path} is a directory; for an OCI layout use oci:{path}")
    store = ArchiveStore(source, path)
    if transport == "oci-archive":
        return resolve_oci(store, ref, platform)
    return resolve_docker_archive(store, ref)


def import_oci(tree: Tree, source: str, *, platform: str | None = None, target: str = "/",
               key: str = "") -> OciImport:
    """Apply the image's layers, bottom first, to ``tree`` under ``target``."""
    image = open_image(source, platform)
    base = split_path(target, f"{key or source}.target")
    result = OciImport(image)
    for layer in image.layers:
        scanned = scan_layer(layer)
        result.whited_out += apply_layer(tree, scanned, f"{source}: layer {layer.blob.digest}", base)
        result.layers.append(scanned)
    _IMPORTS[tree] = result
    return result


def imported(tree: object) -> OciImport | None:
    """The import that filled ``tree``, if it came from a container image."""
    try:
        return _IMPORTS.get(tree)  # type: ignore[arg-type]
    except TypeError:
        return None
