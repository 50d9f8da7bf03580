"""The ``[image]`` keys that adjust the loaded tree (the same choices as the CLI's flags).

Values have the flags' text forms (``root_owner = "0:0:0755"``, ``uid_map =
["0:100000:65536"]``) so a manifest and a command line read alike; paths are
relative to the manifest's directory.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..errors import ManifestError
from ..model.options import TIMES_MODES, SourceOptions
from .ownership import check_id_map, parse_id_range, parse_owner, parse_root_owner

if TYPE_CHECKING:
    from .host_paths import HostPaths

SOURCE_OPTION_KEYS = frozenset({
    "times", "root_owner", "squash_owner", "all_root", "uid_map", "gid_map", "one_file_system",
    "file_contexts", "fs_config", "mount_point",
})


def parse_source_options(table: dict[str, Any], host: HostPaths) -> SourceOptions:
    opts = SourceOptions()
    for k in sorted(SOURCE_OPTION_KEYS & table.keys()):
        try:
            _set(opts, k, table[k], host)
        except ValueError as e:
            raise ManifestError(f"image.{k}", str(e)) from None
    if table.get("all_root") is True:
        if "squash_owner" in table:
            raise ManifestError("image.all_root", "conflicts with image.squash_owner")
        opts.squash_owner = (0, 0)
    return opts


def _set(opts: SourceOptions, k: str, v: Any, host: HostPaths) -> None:
    if k in ("all_root", "one_file_system"):
        if not isinstance(v, bool):
            raise ValueError("must be true or false")
        if k == "one_file_system":
            opts.one_file_system = v
        return
    if k in ("uid_map", "gid_map"):
        if not isinstance(v, list) or not all(isinstance(i, str) for i in v):
            raise ValueError('must be an array of "CONTAINER:HOST:COUNT" strings')
        ranges = tuple(parse_id_range(i) for i in v)
        check_id_map(ranges)
        setattr(opts, k, ranges)
        return
    if not isinstance(v, str):
        raise ValueError("must be a string")
    if k == "times":
        if v not in TIMES_MODES:
            raise ValueError(f"must be one of {', '.join(TIMES_MODES)}")
        opts.times = v
    elif k == "root_owner":
        opts.root_owner = parse_root_owner(v)
    elif k == "squash_owner":
        opts.squash_owner = parse_owner(v)
    elif k in ("file_contexts", "fs_config"):
        setattr(opts, k, host.resolve(v, f"image.{k}"))
    elif k == "mount_point":
        opts.mount_point = check_mount_point(v)


def check_mount_point(path: str) -> str:
    if not path.startswith("/"):
        raise ValueError(f"{path!r}: the mount point must be an absolute path")
    return os.path.normpath(path)
