"""Package names imported on first use (PEP 562), so a process that needs little loads little.

``ext4gen serve``'s supervisor only parses arguments and starts nbdkit, and the
plugin inside nbdkit must not load the supervisor: every module either imports
is time before the first answer.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_names(package: str, table: dict[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``table`` maps each name to the (relative)
    module that defines it; the first use imports it and keeps the value in ``namespace``."""

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    return __getattr__
