"""Host paths a source names: resolved (and confined under ``--source-root``), then imported.

A directory or tar SOURCE and a manifest's ``[[import]]`` tables share this, so a
served directory loads neither the manifest parser nor the confinement code
(``ctypes``) it does not use: a few milliseconds of every serve's start.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import ManifestError
from ..model.sources import HostFileSource
from ..model.tree import Tree

if TYPE_CHECKING:
    from .generators import Generator


def import_source(tree: Tree, host: str, target: str, *, key: str, one_file_system: bool = False,
                  expect: tuple[int, int] | None = None) -> None:
    """Import a host directory or a tar archive under ``target``.

    ``expect`` (st_dev, st_ino), under ``--source-root``, is what the path named when it
    was opened beneath the root: the import refuses to read anything else.
    """
    from .hostdir import import_directory
    from .tar import import_tar, is_tar

    if os.path.isdir(host):
        import_directory(tree, host, target, key=key, one_file_system=one_file_system, expect=expect)
    elif is_tar(host):
        import_tar(tree, host, target, key=key, expect=expect)
    elif not os.path.exists(host):
        raise ManifestError(key, f"{host} does not exist")
    else:
        raise ManifestError(key, f"{host} is neither a directory nor a tar archive")




class HostPaths:
    """Resolves manifest-relative host paths and enforces ``--source-root``."""

    def __init__(self, base_dir: str, source_root: str | None,
                 generator_path: Sequence[str] = ()) -> None:
        self.base_dir = base_dir
        self.root = os.path.realpath(source_root) if source_root else None
        self.generator_search = [base_dir, *(os.path.abspath(d) for d in generator_path)]
        self.generators: list[Generator] = []

    def open_file(self, rel: str, path: str) -> HostFileSource:
        """The source file, pinned; under a source root, opened beneath it (see confine.py)."""
        if self.root is None:
            return HostFileSource(path)
        from ..model.confine import pinned_source

        return pinned_source(self.root, os.path.join(os.path.realpath(self.base_dir), rel))

    def identity(self, path: str, key: str) -> tuple[int, int] | None:
        """Under a source root, (st_dev, st_ino) of ``path`` opened beneath it; else None."""
        if self.root is None:
            return None
        from ..model.confine import identity_beneath

        try:
            return identity_beneath(self.root, os.path.realpath(path))
        except OSError as e:
            raise ManifestError(key, f"cannot open {path} beneath the source root {self.root}: "
                                f"{e.strerror}") from None

    def resolve(self, rel: str, key: str) -> str:
        path = os.path.join(self.base_dir, rel)
        if self.root is not None:
            try:
                real = os.path.realpath(path)
            except OSError as e:  # a component changed while it was resolved
                raise ManifestError(key, f"cannot resolve {path}: {e.strerror}") from None
            if real != self.root and not real.startswith(self.root.rstrip("/") + "/"):
                raise ManifestError(key, f"{path} is outside the source root {self.root}")
        return path
