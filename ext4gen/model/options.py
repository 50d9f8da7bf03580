"""Image-wide choices that are not part of the tree, and the one place they are checked."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import ManifestError
from .identity import IdentityMap

DEDUP_MODES = ("content", "none")
NS = 1_000_000_000


def check_dedup(value: object, key: str = "dedup") -> str:
    """``value`` if it names a dedup mode; else one line naming ``key`` (manifest or option)."""
    if value not in DEDUP_MODES:
        raise ManifestError(key, f"must be one of {', '.join(DEDUP_MODES)}, not {value!r}")
    return value  # type: ignore[return-value]


def source_date_epoch_ns(value: str | None = None) -> int:
    """SOURCE_DATE_EPOCH (``value``, else the environment's) in nanoseconds; 0 when unset.

    Every input that stamps times from it (manifests, host directories, tars)
    parses it here, so they agree on what a bad value is.
    """
    if value is None:
        value = os.environ.get("SOURCE_DATE_EPOCH")
    if not value:
        return 0
    try:
        return int(value) * NS
    except ValueError:
        raise ManifestError("SOURCE_DATE_EPOCH", "must be an integer number of seconds") from None


@dataclass
class ImageOptions:
    """Options for :func:`ext4gen.plan`.

    ``uuid`` and ``hash_seed`` default to values derived from the tree, so the
    same input always yields the same image.  ``epoch_ns`` stamps the superblock.
    """

    label: str = ""
    uuid: bytes | None = None
    hash_seed: bytes | None = None
    dedup: str = "content"
    epoch_ns: int = 0
    inline_data: bool = True  # small files and directories live in their inode
    base_map: IdentityMap | None = None  # keep inode numbers/generations of a previous build

    def __post_init__(self) -> None:
        check_dedup(self.dedup)
