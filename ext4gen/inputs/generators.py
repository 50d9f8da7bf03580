"""Manifest generators (``generator = "module:function"``): code the manifest names.

A manifest is data that may come from someone else, so what it can run is
narrow: a plain Python function defined in a module file beside the manifest
(or in a directory the user named with ``--generator-path``), nothing installed,
no paths.  The module is found when the manifest is parsed but imported only
when its bytes are needed: ``inspect`` and planning never run it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ManifestError

_IMPORT_LOCK = threading.Lock()


class Generator:
    """One manifest generator: its module file is known, its code runs on first use."""

    __slots__ = ("_func", "args", "func_name", "key", "module_dir", "module_file", "module_name", "spec")

    def __init__(self, spec: str, key: str, search: Sequence[str], args: dict[str, Any]) -> None:
        self.spec = spec
        self.key = key
        self.args = args
        module_name, _, func_name = spec.partition(":")
        if not module_name or not func_name:
            raise ManifestError(key, "expected \"module:function\"")
        if not all(part.isidentifier() for part in module_name.split(".")) or not func_name.isidentifier():
            raise ManifestError(key, f"{spec!r}: a generator is a function in a module beside the "
                                "manifest, named \"module:function\" (no paths)")
        self.module_name = module_name
        self.func_name = func_name
        found = _find_module(module_name, search)
        if found is None:
            where = " or in --generator-path" if len(search) > 1 else ""
            raise ManifestError(key, f"no module {module_name} beside the manifest{where} "
                                "(installed modules are not allowed)")
        self.module_dir, self.module_file = found
        self._func: Callable[..., Any] | None = None

    def __call__(self, offset: int, length: int) -> Any:
        return self.load()(offset, length, **self.args)

    def load(self) -> Callable[..., Any]:
        """Import the module (once) and return the function; one-line error naming the key."""
        func = self._func
        if func is None:
            with _IMPORT_LOCK:
                if self._func is None:
                    self._func = self._resolve()
                func = self._func
        return func

    def _resolve(self) -> Callable[..., Any]:
        try:
            module = _import_file(self.module_name, self.module_dir, self.module_file)
        except Exception as e:  # import errors of user code are input errors
            raise ManifestError(self.key, f"cannot load {self.spec}: {e}") from None
        func = getattr(module, self.func_name, None)
        if not inspect.isfunction(func) or func.__module__ != module.__name__:
            raise ManifestError(self.key, f"{self.spec}: {self.func_name} is not a function "
                                f"defined in {os.path.basename(self.module_file)}")
        return func


def _find_module(name: str, search: Sequence[str]) -> tuple[str, str] | None:
    """(directory, file) of module ``name`` in the first search directory that has it."""
    for directory in search:
        rel = os.path.join(directory, *name.split("."))
        for path in (rel + ".py", os.path.join(rel, "__init__.py")):
            if os.path.isfile(path):
                try:
                    return directory, os.path.realpath(path)
                except OSError:  # changed while it was resolved: as if absent
                    continue
    return None


def _import_file(name: str, directory: str, path: str) -> Any:
    """Load ``path`` under a name unique to that file.

    Two manifests in different directories may both have a ``gen.py``; a plain
    import would hand the second the first one's module.  The module's
    directory stays importable for its own sibling imports, and the module is
    also reachable by its plain name (first come), e.g. to inspect its state.
    """
    unique = "_ext4gen_generator_" + hashlib.sha256(path.encode()).hexdigest()[:20]
    module = sys.modules.get(unique)
    if module is not None:
        return module
    if directory not in sys.path:
        sys.path.insert(0, directory)
    spec = importlib.util.spec_from_file_location(unique, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[unique] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[unique]
        raise
    sys.modules.setdefault(name, module)
    return module
