"""Image-wide choices that are not part of the tree."""

from __future__ import annotations

from dataclasses import dataclass, field

from .identity import IdentityMap

DEDUP_MODES = ("content", "none")


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
    prefetch: list[str] = field(default_factory=list)  # image paths to fetch first when served

    def __post_init__(self) -> None:
        if self.dedup not in DEDUP_MODES:
            raise ValueError(f"dedup must be one of {', '.join(DEDUP_MODES)}")
