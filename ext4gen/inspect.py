"""Human-readable summaries of a planned image or an ext4 image file."""

from __future__ import annotations

import uuid as uuid_mod

from .errors import Ext4genError
from .format.definitions import ext4_super_block
from .format.features import FEATURE_NAMES, feature_names
from .format.superblock import BLOCK_SIZE, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE
from .render.image import Image


def _superblock_lines(raw: bytes) -> list[str]:
    sb = ext4_super_block.parse(raw[SUPERBLOCK_OFFSET : SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE])
    blocks = sb.s_blocks_count_lo | (sb.s_blocks_count_hi << 32)
    free = sb.s_free_blocks_count_lo | (sb.s_free_blocks_count_hi << 32)
    groups = -(-blocks // sb.s_blocks_per_group)
    # dumpe2fs's order and names: compat, incompat, then ro_compat bits, lowest first
    features = [name for kind in FEATURE_NAMES
                for name in feature_names(kind, sb[f"s_feature_{kind}"])]
    label = sb.s_volume_name.rstrip(b"\0").decode("utf-8", "replace")
    return [
        f"label:            {label or '<none>'}",
        f"uuid:             {uuid_mod.UUID(bytes=sb.s_uuid)}",
        f"size:             {blocks * (1024 << sb.s_log_block_size)} bytes "
        f"({blocks} blocks of {1024 << sb.s_log_block_size})",
        f"block groups:     {groups} ({sb.s_inodes_per_group} inodes each)",
        f"inodes:           {sb.s_inodes_count - sb.s_free_inodes_count} used of {sb.s_inodes_count}",
        f"free blocks:      {free}",
        f"features:         {' '.join(features) or '(none)'}",
    ]


def describe_image_file(path: str) -> str:
    """The superblock summary of an image file; one-line errors for what is not ext4."""
    try:
        with open(path, "rb") as f:
            raw = f.read(BLOCK_SIZE)
    except OSError as e:
        raise Ext4genError(f"{path}: cannot read the image: {e.strerror}") from None
    if len(raw) < SUPERBLOCK_OFFSET + 1024:
        raise Ext4genError(f"{path}: not an ext4 image: only {len(raw)} bytes, the superblock "
                           f"ends at {SUPERBLOCK_OFFSET + 1024}")
    sb = ext4_super_block.parse(raw[SUPERBLOCK_OFFSET : SUPERBLOCK_OFFSET + 1024])
    if sb.s_log_block_size > 6:  # ext4 blocks are 1 KiB .. 64 KiB
        raise Ext4genError(f"{path}: not a valid ext4 superblock: s_log_block_size "
                           f"{sb.s_log_block_size} (at most 6, for 64 KiB blocks)")
    if sb.s_blocks_per_group == 0:
        raise Ext4genError(f"{path}: not a valid ext4 superblock: s_blocks_per_group is 0")
    return "\n".join(_superblock_lines(raw))


def describe_plan(image: Image) -> str:
    plan = image.plan
    lines = _superblock_lines(image.read(0, BLOCK_SIZE))
    lines.append("blocks by kind:")
    for kind, n in image.block_counts().items():
        lines.append(f"  {kind:<16}{n:>12}")
    s = plan.dedup_stats
    saved = s.shared_references * BLOCK_SIZE
    zero = s.zero_blocks * BLOCK_SIZE
    lines.append(f"dedup ({plan.options.dedup}): {s.data_blocks_referenced} data blocks referenced, "
                 f"{s.unique_blocks} stored, {s.shared_references} shared "
                 f"({saved} bytes saved), {s.zero_blocks} all-zero blocks as holes ({zero} bytes)")
    if s.collisions:
        lines.append(f"  hash collisions rejected by byte comparison: {s.collisions}")
    return "\n".join(lines)


def describe_source(tree: object) -> str | None:
    """Lines about where the tree came from, for SOURCE kinds that have more to say (OCI images)."""
    from .inputs.oci_inspect import describe_tree_source

    return describe_tree_source(tree)
