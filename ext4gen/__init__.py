"""ext4gen: synthesize a read-only ext4 filesystem on the fly from a manifest.

Typical use::

    from ext4gen import load, plan
    tree, options = load("manifest.toml")
    image = plan(tree, options)
    image.read(1024, 1024)  # the superblock, rendered on demand
"""

from __future__ import annotations

from .errors import Ext4genError, ManifestError, SourceError
from .inputs.manifest import load_manifest, parse_manifest
from .inputs.source import BuildChoices, load_source, plan_loaded
from .layout.planner import Plan, plan_tree
from .model.options import ImageOptions, check_dedup
from .model.sources import CallableSource, HostFileSource, InlineSource, Source, ZeroSource
from .model.tree import Meta, Node, Tree
from .render.image import Image

__version__ = "0.1.0"


def plan(tree: Tree, options: ImageOptions | None = None) -> Image:
    """Plan the whole layout of ``tree`` and return the lazily generated image."""
    return plan_loaded(tree, options, None)


def load(source: str, *, source_root: str | None = None,
         **overrides: object) -> tuple[Tree, ImageOptions]:
    """Load a SOURCE (manifest file or ``-``, host directory, tar archive) into a tree and options.

    ``overrides`` set :class:`ImageOptions` fields (None leaves the source's choice).
    """
    if overrides.get("dedup") is not None:
        check_dedup(overrides["dedup"])
    tree, options = load_source(source, BuildChoices(source_root=source_root))
    for k, v in overrides.items():
        if v is not None:
            setattr(options, k, v)
    return tree, options


__all__ = [
    "CallableSource", "Ext4genError", "HostFileSource", "Image", "ImageOptions", "InlineSource",
    "ManifestError", "Meta", "Node", "Plan", "Source", "SourceError", "Tree", "ZeroSource", "load",
    "load_manifest", "parse_manifest", "plan", "plan_tree",
]
