"""ext4gen: synthesize a read-only ext4 filesystem on the fly from a manifest.

Typical use::

    from ext4gen import load, plan
    tree, options = load("manifest.toml")
    image = plan(tree, options)
    image.read(1024, 1024)  # the superblock, rendered on demand
"""

from __future__ import annotations

from .errors import Ext4genError, ManifestError, SourceError
from .gcpause import gc_paused
from .inputs.manifest import load_manifest, parse_manifest
from .layout.planner import Plan, plan_tree
from .model.options import ImageOptions
from .model.sources import CallableSource, HostFileSource, InlineSource, Source, ZeroSource
from .model.tree import Meta, Node, Tree
from .render.image import Image

__version__ = "0.1.0"


def plan(tree: Tree, options: ImageOptions | None = None) -> Image:
    """Plan the whole layout of ``tree`` and return the lazily generated image."""
    with gc_paused():
        return Image(plan_tree(tree, options))


def load(source: str, *, source_root: str | None = None,
         **overrides: object) -> tuple[Tree, ImageOptions]:
    """Load a SOURCE (manifest file or ``-``, host directory, tar archive) into a tree and options.

    ``overrides`` set :class:`ImageOptions` fields (None leaves the source's choice).
    """
    with gc_paused():
        return _load(source, source_root, overrides)


def _load(source: str, source_root: str | None, overrides: dict[str, object]
          ) -> tuple[Tree, ImageOptions]:
    import os

    from .inputs.manifest import import_source
    from .inputs.oci import is_oci_source
    from .inputs.tar import is_tar

    oci = is_oci_source(source) and not os.path.exists(source)  # a container image (inputs/oci.py)
    if source != "-" and (oci or os.path.isdir(source) or is_tar(source)):
        if source_root is not None and oci:
            from .inputs.manifest import HostPaths
            from .inputs.oci import absolute_source

            root = HostPaths(os.getcwd(), source_root)
            source = absolute_source(source, lambda p: root.resolve(p, source))
        elif source_root is not None:
            from .inputs.manifest import HostPaths

            source = HostPaths(os.getcwd(), source_root).resolve(source, source)
        epoch = os.environ.get("SOURCE_DATE_EPOCH")
        try:
            epoch_ns = int(epoch) * 1_000_000_000 if epoch else 0
        except ValueError:
            raise ManifestError("SOURCE_DATE_EPOCH", "must be an integer number of seconds") from None
        tree = Tree(Meta(0o755, 0, 0, epoch_ns, epoch_ns, epoch_ns, epoch_ns))
        if oci:
            from .inputs.oci import import_oci

            import_oci(tree, source)
        else:
            import_source(tree, source, "/", key=source)
        tree.resolve_links()
        options = ImageOptions(epoch_ns=epoch_ns)
    else:
        tree, options = load_manifest(source, source_root=source_root)
    for k, v in overrides.items():
        if v is not None:
            setattr(options, k, v)
    return tree, options


__all__ = [
    "CallableSource", "Ext4genError", "HostFileSource", "Image", "ImageOptions", "InlineSource",
    "ManifestError", "Meta", "Node", "Plan", "Source", "SourceError", "Tree", "ZeroSource", "load",
    "load_manifest", "parse_manifest", "plan", "plan_tree",
]
