"""The scalar values of a manifest, each checked with a message naming its key."""

from __future__ import annotations

from typing import Any

from ..errors import ManifestError
from ..model import times
from ..model.tree import file_size_error

UINT32 = (1 << 32) - 1

def table(v: Any, key: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ManifestError(key, "must be a table/object")
    return v


def no_unknown(table: dict[str, Any], allowed: set[str], key: str) -> None:
    for k in table:
        if k not in allowed:
            raise ManifestError(f"{key}.{k}", f"unknown key (allowed: {', '.join(sorted(allowed))})")


def string(v: Any, key: str) -> str:
    if not isinstance(v, str):
        raise ManifestError(key, "must be a string")
    return v


def file_size(v: Any, key: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ManifestError(key, "must be a non-negative integer")
    problem = file_size_error(v)
    if problem:
        raise ManifestError(key, problem)
    return v


def uint32(v: Any, key: str) -> int:
    """An owner id: 32 bits, but 4294967295 is (uid_t)-1, which no file can have."""
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < UINT32:
        raise ManifestError(key, "must be an integer from 0 to 4294967294")
    return v


def mode(v: Any, key: str) -> int:
    if isinstance(v, str):
        try:
            v = int(v, 8)
        except ValueError:
            raise ManifestError(key, "must be an octal string like \"0755\" or an integer") from None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 0o7777:
        raise ManifestError(key, "permission bits must be between 0 and 07777")
    return v


def time_ns(v: Any, key: str) -> int:
    try:
        return times.parse_time(v)
    except ValueError as e:
        raise ManifestError(key, str(e)) from None


def bounded(v: Any, key: str, limit: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= limit:
        raise ManifestError(key, f"must be an integer from 0 to {limit}")
    return v
