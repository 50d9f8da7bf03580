"""Knobs for remote content: from the environment, the command line and ``[image]``.

The command line sets the same environment variables the user could set
(``ext4gen serve`` starts nbdkit as a child, and the environment is what
reaches it); a manifest's ``[image]`` keys apply when neither says otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..switches import is_on

if TYPE_CHECKING:  # the CLI's parser: a serve's plugin checks ENV_PREFETCH without loading it
    import argparse

ENV_ALLOW_HTTP = "EXT4GEN_ALLOW_HTTP"
ENV_S3_ENDPOINT = "EXT4GEN_S3_ENDPOINT"
ENV_TIMEOUT = "EXT4GEN_REMOTE_TIMEOUT"
ENV_CHUNK_SIZE = "EXT4GEN_CHUNK_SIZE"
ENV_CACHE_SIZE = "EXT4GEN_CHUNK_CACHE_SIZE"
ENV_PREFETCH = "EXT4GEN_PREFETCH"

# 1 MiB: the middle of the 256 KiB-4 MiB range measured in docs/PERFORMANCE.md; nydus's default.
DEFAULT_CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 64 << 10
MAX_CHUNK_SIZE = 64 << 20
DEFAULT_TIMEOUT = 30.0  # seconds one read may spend fetching before it is EIO
DEFAULT_CACHE_SIZE = 4 << 30
IMAGE_KEYS = frozenset({"allow_http", "s3_endpoint", "remote_timeout", "prefetch"})


@dataclass(frozen=True)
class RemoteSettings:
    allow_http: bool = False
    s3_endpoint: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    chunk_size: int = DEFAULT_CHUNK_SIZE

    def merged(self, **manifest: object) -> RemoteSettings:
        """Apply a manifest's ``[image]`` values where the environment left the default."""
        out = self
        if manifest.get("allow_http"):
            out = replace(out, allow_http=True)
        if manifest.get("s3_endpoint") and not os.environ.get(ENV_S3_ENDPOINT):
            out = replace(out, s3_endpoint=str(manifest["s3_endpoint"]))
        if manifest.get("remote_timeout") is not None and not os.environ.get(ENV_TIMEOUT):
            out = replace(out, timeout=float(manifest["remote_timeout"]))  # type: ignore[arg-type]
        return out


def from_env() -> RemoteSettings:
    """The process-wide settings; bad values fall back to defaults (checked by the CLI)."""
    try:
        timeout = float(os.environ.get(ENV_TIMEOUT) or DEFAULT_TIMEOUT)
    except ValueError:
        timeout = DEFAULT_TIMEOUT
    try:
        chunk = int(os.environ.get(ENV_CHUNK_SIZE) or DEFAULT_CHUNK_SIZE)
    except ValueError:
        chunk = DEFAULT_CHUNK_SIZE
    if not MIN_CHUNK_SIZE <= chunk <= MAX_CHUNK_SIZE or chunk % 4096:
        chunk = DEFAULT_CHUNK_SIZE
    return RemoteSettings(allow_http=is_on(os.environ.get(ENV_ALLOW_HTTP)),
                          s3_endpoint=os.environ.get(ENV_S3_ENDPOINT) or None,
                          timeout=max(0.1, timeout), chunk_size=chunk)


def cache_size() -> int:
    try:
        return max(0, int(os.environ.get(ENV_CACHE_SIZE) or DEFAULT_CACHE_SIZE))
    except ValueError:
        return DEFAULT_CACHE_SIZE


def env_prefetch() -> list[str]:
    """Paths named by ``--prefetch FILE`` (one absolute image path a line)."""
    path = os.environ.get(ENV_PREFETCH)
    if not path:
        return []
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip() and not line.startswith("#")]
    except OSError:
        return []


def add_arguments(sp: argparse.ArgumentParser) -> None:
    """The remote-content flags every command that plans a SOURCE takes."""
    g = sp.add_argument_group("remote content (url = / s3 = entries)")
    g.add_argument("--allow-http", action="store_true", default=None,
                   help="allow plain http:// URLs to hosts other than localhost")
    g.add_argument("--s3-endpoint", metavar="URL",
                   help="endpoint of an S3-compatible store (default: AWS from the environment)")
    g.add_argument("--remote-timeout", type=float, metavar="SECONDS",
                   help=f"how long one read may retry a remote origin before EIO "
                   f"(default {DEFAULT_TIMEOUT:g})")
    g.add_argument("--prefetch", metavar="FILE",
                   help="after start, fetch the chunks of the image paths listed in FILE")


def apply_arguments(args: argparse.Namespace) -> None:
    """Export the flags as environment variables, for this process and nbdkit children."""
    if getattr(args, "allow_http", None):
        os.environ[ENV_ALLOW_HTTP] = "1"
    if getattr(args, "s3_endpoint", None):
        os.environ[ENV_S3_ENDPOINT] = args.s3_endpoint
    if getattr(args, "remote_timeout", None) is not None:
        if not args.remote_timeout > 0:
            from ..errors import Ext4genError

            raise Ext4genError("--remote-timeout: must be a positive number of seconds")
        os.environ[ENV_TIMEOUT] = repr(args.remote_timeout)
    if getattr(args, "prefetch", None):
        os.environ[ENV_PREFETCH] = os.path.abspath(args.prefetch)
