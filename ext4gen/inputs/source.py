"""The one front door: any SOURCE becomes a tree, and a tree becomes a planned image.

``ext4gen build/check/inspect/serve``, the nbdkit plugin, the pytest fixtures and
the library's :func:`ext4gen.load` / :func:`ext4gen.plan` all come through here,
so a SOURCE means the same thing everywhere and every error names its origin.

What a SOURCE string is gets decided by :data:`SOURCE_KINDS`, a table tried in
order: new inputs (OCI layouts, remote URLs …) add a row before the manifest,
which is the catch-all.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ManifestError
from ..gcpause import gc_paused
from ..model import host_reads
from ..model.options import ImageOptions, SourceOptions, source_date_epoch_ns
from ..model.tree import Meta, Tree
from ..render.image import Image
from .choices import BuildChoices
from .tar import is_tar

# The planner and the loaders are imported where they are used: a serve that reuses a
# saved plan (plan_source_saved) needs neither, and starts that much sooner.

# Each planning run appends "PID ORIGIN" here when set: how tests prove a serve plans once.
PLAN_LOG_ENV = "EXT4GEN_PLAN_LOG"


@dataclass(frozen=True)
class SourceKind:
    """One row of the dispatch table: a name, a test on the SOURCE string, and its loader."""

    name: str
    matches: Callable[[str], bool]
    load: Callable[[str, BuildChoices], tuple[Tree, ImageOptions]]
    host_path: bool = True  # the SOURCE string is a path on this host (not e.g. oci:DIR:REF)


def _host_tree(source: str, choices: BuildChoices) -> tuple[Tree, ImageOptions]:
    """A directory or archive as the whole image: its root gets the defaults a manifest's has."""
    from .adjust import apply_source_options
    from .host_paths import HostPaths, import_source

    expect = None
    if choices.source_root is not None:
        host = HostPaths(os.getcwd(), choices.source_root)
        source = host.resolve(source, source)
        expect = host.identity(source, source)
    epoch_ns = source_date_epoch_ns()
    adjust: SourceOptions = choices.flags.source
    tree = Tree(Meta(0o755, 0, 0, epoch_ns, epoch_ns, epoch_ns, epoch_ns))
    # chooses directory or tar itself
    import_source(tree, source, "/", key=source, one_file_system=bool(adjust.one_file_system),
                  expect=expect)
    tree.resolve_links()
    apply_source_options(tree, adjust, epoch_ns if os.environ.get("SOURCE_DATE_EPOCH") else None)
    return tree, ImageOptions(epoch_ns=epoch_ns)


def _is_oci(source: str) -> bool:
    from .oci_names import is_oci_source  # not .oci: a directory's serve need not load it

    return is_oci_source(source) and not os.path.exists(source)  # a file may be named "oci:x"


def _container_image(source: str, choices: BuildChoices) -> tuple[Tree, ImageOptions]:
    """A container image's layers applied as the OCI spec says (see inputs/oci.py)."""
    from .adjust import apply_source_options
    from .host_paths import HostPaths
    from .oci import absolute_source, import_oci

    if choices.source_root is not None:
        root = HostPaths(os.getcwd(), choices.source_root)
        source = absolute_source(source, lambda p: root.resolve(p, source))
    epoch_ns = source_date_epoch_ns()
    tree = Tree(Meta(0o755, 0, 0, epoch_ns, epoch_ns, epoch_ns, epoch_ns))
    import_oci(tree, source)
    tree.resolve_links()
    apply_source_options(tree, choices.flags.source,
                         epoch_ns if os.environ.get("SOURCE_DATE_EPOCH") else None)
    return tree, ImageOptions(epoch_ns=epoch_ns)


def _manifest(source: str, choices: BuildChoices) -> tuple[Tree, ImageOptions]:
    from .manifest import load_manifest

    return load_manifest(source, source_root=choices.source_root, source_options=choices.flags.source,
                         generator_path=choices.generator_path, load_generators=choices.load_generators)


def _is_host_path(test: Callable[[str], bool]) -> Callable[[str], bool]:
    return lambda source: source != "-" and test(source)


SOURCE_KINDS: list[SourceKind] = [
    SourceKind("container image", _is_oci, _container_image, host_path=False),
    SourceKind("directory", _is_host_path(os.path.isdir), _host_tree),
    SourceKind("tar", _is_host_path(is_tar), _host_tree),
    SourceKind("manifest", lambda source: True, _manifest),  # the catch-all: keep it last
]


def source_kind(source: str) -> SourceKind:
    return next(kind for kind in SOURCE_KINDS if kind.matches(source))


def load_source(source: str, choices: BuildChoices = BuildChoices()) -> tuple[Tree, ImageOptions]:
    """Load a SOURCE (manifest file or ``-``, host directory, tar …) into a tree and options."""
    with gc_paused():
        tree, options = source_kind(source).load(source, choices)
        for name, value in choices.overrides().items():
            setattr(options, name, value)
        return tree, options


def plan_loaded(tree: Tree, options: ImageOptions | None, origin: str | None) -> Image:
    """Plan a loaded tree; an error found while planning names ``origin`` as loading would."""
    from ..layout.planner import plan_tree

    log = os.environ.get(PLAN_LOG_ENV)
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{os.getpid()} {origin or '<tree>'}\n")
    try:
        with gc_paused():
            return Image(plan_tree(tree, options))
    except ManifestError as e:
        if e.origin is not None or origin is None:
            raise
        raise ManifestError(e.key, e.message, origin=origin) from None


def plan_source(source: str, choices: BuildChoices = BuildChoices()) -> tuple[Image, Tree]:
    """Load and plan a SOURCE exactly as ``ext4gen build`` does; returns (image, tree)."""
    tree, options = load_source(source, choices)
    return plan_loaded(tree, options, source), tree


def plan_source_saved(source: str, choices: BuildChoices = BuildChoices()
                      ) -> tuple[Image, Tree | None, Callable[[], bool] | None]:
    """:func:`plan_source`, reusing the plan a previous call saved while its inputs are unchanged.

    Returns (image, tree, save): tree is None when the saved plan was used (no
    tree was loaded); ``save`` saves a new plan for the next call, and the block
    digests content dedup learned (None when there is nothing to save), and may
    run later, in a thread, while the image serves.  See :mod:`ext4gen.saved_plan`
    for what is saved and how it is checked.
    """
    from .. import saved_plan

    key = saved_plan.key_for(source, choices)
    if key is None:
        return (*plan_source(source, choices), None)
    with gc_paused():
        plan = saved_plan.load(key)
        if plan is not None:
            return Image(plan), None, None
    from ..layout.digest_cache import saves_deferred

    with host_reads.recording() as reads, saves_deferred() as digest_writes:
        image, tree = plan_source(source, choices)

    def save() -> bool:
        try:
            return saved_plan.save(key, image.plan, reads)
        finally:
            for write in digest_writes:  # block digests, for a plan of a changed tree
                write()

    return image, tree, save
