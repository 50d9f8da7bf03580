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
from .model.options import ImageOptions, SourceOptions
from .model.sources import CallableSource, HostFileSource, InlineSource, Source, ZeroSource
from .model.tree import Meta, Node, Tree
from .render.image import Image

__version__ = "0.1.0"


def plan(tree: Tree, options: ImageOptions | None = None) -> Image:
    """Plan the whole layout of ``tree`` and return the lazily generated image."""
    with gc_paused():
        return Image(plan_tree(tree, options))


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
    with gc_paused():
        return _load(source, source_root, overrides, source_options, tuple(generator_path),
                     load_generators)


def adjust(tree: Tree, source_options: SourceOptions, *, epoch_ns: int | None = None) -> None:
    """Apply ``source_options`` to a tree in place (``epoch_ns``: SOURCE_DATE_EPOCH in ns)."""
    from .inputs.adjust import apply_source_options

    apply_source_options(tree, source_options, epoch_ns)


def _load(source: str, source_root: str | None, overrides: dict[str, object],
          source_options: SourceOptions | None = None, generator_path: tuple[str, ...] = (),
          load_generators: bool = True) -> tuple[Tree, ImageOptions]:
    import os

    from .inputs.manifest import import_source
    from .inputs.tar import is_tar

    if source != "-" and (os.path.isdir(source) or is_tar(source)):
        if source_root is not None:
            from .inputs.manifest import HostPaths

            source = HostPaths(os.getcwd(), source_root).resolve(source, source)
        epoch = os.environ.get("SOURCE_DATE_EPOCH")
        try:
            epoch_ns = int(epoch) * 1_000_000_000 if epoch else 0
        except ValueError:
            raise ManifestError("SOURCE_DATE_EPOCH", "must be an integer number of seconds") from None
        tree = Tree(Meta(0o755, 0, 0, epoch_ns, epoch_ns, epoch_ns, epoch_ns))
        opts = source_options or SourceOptions()
        import_source(tree, source, "/", key=source, one_file_system=bool(opts.one_file_system))
        tree.resolve_links()
        adjust(tree, opts, epoch_ns=epoch_ns if epoch else None)
        options = ImageOptions(epoch_ns=epoch_ns)
    else:
        tree, options = load_manifest(source, source_root=source_root, source_options=source_options,
                                      generator_path=generator_path, load_generators=load_generators)
    for k, v in overrides.items():
        if v is not None:
            setattr(options, k, v)
    return tree, options


__all__ = [
    "CallableSource", "Ext4genError", "HostFileSource", "Image", "ImageOptions", "InlineSource",
    "ManifestError", "Meta", "Node", "Plan", "Source", "SourceError", "SourceOptions", "Tree", "ZeroSource",
    "adjust", "load",
    "load_manifest", "parse_manifest", "plan", "plan_tree",
]
