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
from dataclasses import dataclass, field

from ..errors import ManifestError
from ..model.tree import Tree, split_path
from .layer_scan import ScannedLayer, scan_layer
from .layers import apply_layer
from .oci_layout import ArchiveStore, DirStore, ImageRef, resolve_docker_archive, resolve_oci
from .oci_names import (  # noqa: F401 (re-exported: the names are part of this module's interface)
    PLATFORM_ENV,
    TRANSPORTS,
    absolute_any,
    absolute_source,
    is_oci_source,
    split_source,
)


@dataclass
class OciImport:
    """What importing an image found: for ``inspect``."""

    image: ImageRef
    layers: list[ScannedLayer] = field(default_factory=list)
    whited_out: int = 0


_IMPORTS: weakref.WeakKeyDictionary[Tree, OciImport] = weakref.WeakKeyDictionary()


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
