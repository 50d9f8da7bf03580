"""Human-readable summaries of a planned image or an ext4 image file."""

from __future__ import annotations

import uuid as uuid_mod

from .format.ondisk import BLOCK_SIZE, SUPERBLOCK_OFFSET, ext4_super_block, feature_names
from .render.image import Image


def _superblock_lines(raw: bytes) -> list[str]:
    sb = ext4_super_block.parse(raw[SUPERBLOCK_OFFSET : SUPERBLOCK_OFFSET + 1024])
    blocks = sb.s_blocks_count_lo | (sb.s_blocks_count_hi << 32)
    free = sb.s_free_blocks_count_lo | (sb.s_free_blocks_count_hi << 32)
    groups = -(-blocks // sb.s_blocks_per_group)
    features = (feature_names("compat", sb.s_feature_compat)
                + feature_names("incompat", sb.s_feature_incompat)
                + feature_names("ro_compat", sb.s_feature_ro_compat))
    label = sb.s_volume_name.rstrip(b"\0").decode("utf-8", "replace")
    return [
        f"label:            {label or '<none>'}",
        f"uuid:             {uuid_mod.UUID(bytes=sb.s_uuid)}",
        f"size:             {blocks * (1024 << sb.s_log_block_size)} bytes "
        f"({blocks} blocks of {1024 << sb.s_log_block_size})",
        f"block groups:     {groups} ({sb.s_inodes_per_group} inodes each)",
        f"inodes:           {sb.s_inodes_count - sb.s_free_inodes_count} used of {sb.s_inodes_count}",
        f"free blocks:      {free}",
        f"features:         {' '.join(features)}",
    ]


def describe_image_file(path: str) -> str:
    with open(path, "rb") as f:
        raw = f.read(BLOCK_SIZE)
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
