"""``ext4gen inspect`` of a container-image SOURCE: the image config and the layer table."""

from __future__ import annotations

import json
from typing import Any

from ..model.seekable import GzipLayer, ZstdLayer
from .layer_scan import ScannedLayer
from .oci import OciImport, imported


def describe_tree_source(tree: object) -> str | None:
    """The container-image lines for a tree that came from ``oci:``/``…-archive:``; else None."""
    imp = imported(tree)
    return None if imp is None else "\n".join(describe_oci(imp))


def describe_oci(imp: OciImport) -> list[str]:
    image = imp.image
    config = image.config
    run: dict[str, Any] = config.get("config") or {}
    plat = "/".join(x for x in (config.get("os"), config.get("architecture"), config.get("variant")) if x)
    lines = [
        f"container image:  {image.source}",
        f"  manifest:       {image.manifest_digest}",
        f"  platform:       {plat or '<unspecified>'}",
        f"  entrypoint:     {_json(run.get('Entrypoint'))}",
        f"  cmd:            {_json(run.get('Cmd'))}",
        f"  workdir:        {run.get('WorkingDir') or '<none>'}",
        f"  user:           {run.get('User') or '<none>'}",
        f"  env:            {_list(run.get('Env'))}",
        f"  labels:         {_list([f'{k}={v}' for k, v in sorted((run.get('Labels') or {}).items())])}",
        f"layers ({len(imp.layers)}, bottom first; {imp.whited_out} lower entries removed by whiteouts):",
        f"  {'#':>2}  {'digest':<19}  {'media type':<44}  {'compressed':>12}  {'uncompressed':>12}  "
        f"{'members':>7}  {'whiteouts':>9}  index",
    ]
    for i, s in enumerate(imp.layers, 1):
        lines.append(f"  {i:>2}  {s.layer.blob.digest[:19]:<19}  {s.layer.media_type:<44}  "
                     f"{s.layer.blob.size:>12}  {s.size:>12}  {s.member_count:>7}  {s.whiteouts:>9}  "
                     f"{_index(s)}")
    return lines


def _index(s: ScannedLayer) -> str:
    if isinstance(s.stream, GzipLayer):
        return f"gzip, {s.stream.span_count} checkpoints"
    if isinstance(s.stream, ZstdLayer):
        return f"zstd, {len(s.stream.frames)} frame(s)"
    return "by offset"


def _json(v: object) -> str:
    return "<none>" if v in (None, [], "") else json.dumps(v)


def _list(v: object) -> str:
    if not v:
        return "<none>"
    return ", ".join(str(x) for x in v)  # type: ignore[attr-defined]
