"""ext4gen: synthesize a read-only ext4 filesystem on the fly from a manifest.

Typical use::

    from ext4gen import load, plan
    tree, options = load("manifest.toml")
    image = plan(tree, options)
    image.read(1024, 1024)  # the superblock, rendered on demand
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import Ext4genError, ManifestError, SourceError
from .lazy import lazy_names

if TYPE_CHECKING:
    from .inputs.manifest import load_manifest, parse_manifest
    from .inputs.source import BuildChoices
    from .layout.planner import Plan, plan_tree
    from .model.options import ImageFlags, ImageOptions, SourceOptions
    from .model.sources import CallableSource, HostFileSource, InlineSource, Source, ZeroSource
    from .model.tree import Meta, Node, Tree
    from .render.image import Image

__version__ = "0.1.0"

# Imported on first use: ``ext4gen serve`` (a supervisor that only starts nbdkit) and
# the other commands start faster when the planner and renderer are not loaded for them.
_LAZY = {
    "load_manifest": ".inputs.manifest", "parse_manifest": ".inputs.manifest",
    "BuildChoices": ".inputs.choices", "Plan": ".layout.planner", "plan_tree": ".layout.planner",
    "ImageFlags": ".model.options", "ImageOptions": ".model.options", "SourceOptions": ".model.options",
    "CallableSource": ".model.sources", "HostFileSource": ".model.sources", "InlineSource": ".model.sources",
    "Source": ".model.sources", "ZeroSource": ".model.sources", "Meta": ".model.tree", "Node": ".model.tree",
    "Tree": ".model.tree", "Image": ".render.image",
}


__getattr__ = lazy_names(__name__, _LAZY, globals())


def plan(tree: Tree, options: ImageOptions | None = None) -> Image:
    """Plan the whole layout of ``tree`` and return the lazily generated image."""
    from .inputs.source import plan_loaded

    return plan_loaded(tree, options, None)


def load(source: str, *, source_root: str | None = None, source_options: SourceOptions | None = None,
         generator_path: tuple[str, ...] = (), load_generators: bool = True,
         **overrides: object) -> tuple[Tree, ImageOptions]:
    """Load a SOURCE (manifest file or ``-``, host directory, tar archive) into a tree and options.

    ``overrides`` set :class:`ImageOptions` fields (None leaves the source's choice);
    ``source_options`` adjust the tree (owners, times, labels), winning over a
    manifest's ``[image]`` keys one by one.  A tree built in code is adjusted
    with :func:`adjust`.  A manifest's generators come from modules beside it or
    in ``generator_path``; ``load_generators=False`` leaves them unimported until
    their bytes are read.
    """
    from .inputs.source import BuildChoices, load_source
    from .model.options import ImageFlags, SourceOptions, check_dedup

    if overrides.get("dedup") is not None:
        check_dedup(overrides["dedup"])
    flags = ImageFlags(source=source_options or SourceOptions())
    choices = BuildChoices(source_root=source_root, flags=flags, generator_path=tuple(generator_path),
                           load_generators=load_generators)
    tree, options = load_source(source, choices)
    for k, v in overrides.items():
        if v is not None:
            setattr(options, k, v)
    return tree, options


def adjust(tree: Tree, source_options: SourceOptions, *, epoch_ns: int | None = None) -> None:
    """Apply ``source_options`` to a tree in place (``epoch_ns``: SOURCE_DATE_EPOCH in ns)."""
    from .inputs.adjust import apply_source_options

    apply_source_options(tree, source_options, epoch_ns)


__all__ = [
    "BuildChoices", "CallableSource", "Ext4genError", "HostFileSource", "Image", "ImageFlags",
    "ImageOptions", "InlineSource", "ManifestError", "Meta", "Node", "Plan", "Source", "SourceError",
    "SourceOptions", "Tree", "ZeroSource", "adjust", "load", "load_manifest", "parse_manifest", "plan",
    "plan_tree",
]
