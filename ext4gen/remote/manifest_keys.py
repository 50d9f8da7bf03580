"""The manifest keys of remote content: ``url``/``s3`` entries and the ``[image]`` knobs.

    "/bin/busybox" = { s3 = "s3://bucket/objs/9f…", size = 1234567, sha256 = "9f…",
                       chunks = { size = 1048576, sha256 = ["…", "…"] } }
    "/srv/big.iso" = { url = "https://mirror.example/big.iso" }   # size and ETag by one HEAD

Nothing is fetched here except that HEAD, made only when no digest is declared
(the ETag it returns pins the object) or no size is.
"""

from __future__ import annotations

from typing import Any

from ..errors import ManifestError, SourceError
from . import settings as settings_mod
from .settings import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, RemoteSettings

REMOTE_KEYS = frozenset({"url", "s3", "sha256", "chunks", "holes"})
LOCATION_KEYS = ("url", "s3")
MAX_FILE_SIZE = (1 << 32) * 4096


def parse_image_keys(table: dict[str, Any]) -> tuple[RemoteSettings, list[str]]:
    """``allow_http``, ``s3_endpoint``, ``remote_timeout``, ``prefetch`` of ``[image]``."""
    vals: dict[str, object] = {}
    if "allow_http" in table:
        if not isinstance(table["allow_http"], bool):
            raise ManifestError("image.allow_http", "must be true or false")
        vals["allow_http"] = table["allow_http"]
    if "s3_endpoint" in table:
        ep = table["s3_endpoint"]
        if not isinstance(ep, str) or not ep.startswith(("http://", "https://")):
            raise ManifestError("image.s3_endpoint", "must be an http(s):// URL")
        vals["s3_endpoint"] = ep
    if "remote_timeout" in table:
        t = table["remote_timeout"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            raise ManifestError("image.remote_timeout", "must be a positive number of seconds")
        vals["remote_timeout"] = t
    prefetch: list[str] = []
    if "prefetch" in table:
        p = table["prefetch"]
        if not isinstance(p, list) or not all(isinstance(x, str) and x.startswith("/") for x in p):
            raise ManifestError("image.prefetch", "must be an array of absolute image paths")
        prefetch = list(p)
    return settings_mod.from_env().merged(**vals), prefetch


def _digest(v: Any, key: str) -> bytes:
    if not isinstance(v, str) or len(v) != 64:
        raise ManifestError(key, "must be a SHA-256 as 64 hex digits")
    try:
        return bytes.fromhex(v)
    except ValueError:
        raise ManifestError(key, "must be a SHA-256 as 64 hex digits") from None


def _chunks(v: Any, key: str, size: int | None) -> tuple[int, list[bytes]]:
    if not isinstance(v, dict) or set(v) != {"size", "sha256"}:
        raise ManifestError(key, "must be a table {size = BYTES, sha256 = [\"…\", …]}")
    cs = v["size"]
    if (isinstance(cs, bool) or not isinstance(cs, int) or cs % 4096
            or not MIN_CHUNK_SIZE <= cs <= MAX_CHUNK_SIZE):
        raise ManifestError(f"{key}.size", f"must be a multiple of 4096 from {MIN_CHUNK_SIZE} "
                            f"to {MAX_CHUNK_SIZE}")
    lst = v["sha256"]
    if not isinstance(lst, list):
        raise ManifestError(f"{key}.sha256", "must be an array of SHA-256 hex strings")
    digests = [_digest(d, f"{key}.sha256[{i}]") for i, d in enumerate(lst)]
    if size is not None and len(digests) != -(-size // cs):
        raise ManifestError(f"{key}.sha256", f"has {len(digests)} digests; a {size}-byte file "
                            f"in {cs}-byte chunks needs {-(-size // cs)}")
    return cs, digests


def _holes(v: Any, key: str, size: int | None) -> list[tuple[int, int]]:
    """``holes = [[START, END], …]``: byte ranges known to be zeros, stored as holes.

    4 KiB aligned (END may be the file size), in order, not overlapping: they let
    an image of remote files have the same holes as one of the local files.
    """
    if not isinstance(v, list):
        raise ManifestError(key, "must be an array of [START, END] byte ranges")
    out: list[tuple[int, int]] = []
    for i, r in enumerate(v):
        k = f"{key}[{i}]"
        if (not isinstance(r, list) or len(r) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in r)):
            raise ManifestError(k, "must be [START, END]")
        start, end = r
        if start % 4096 or (end % 4096 and end != size) or not 0 <= start < end:
            raise ManifestError(k, "must be 4096-aligned (END may be the file size) with START < END")
        if (out and start < out[-1][1]) or (size is not None and end > size):
            raise ManifestError(k, "ranges must be in order, not overlap and end within the file")
        out.append((start, end))
    return out


def remote_content(entry: dict[str, Any], key: str, settings: RemoteSettings):  # -> RemoteSource
    from ..model.remote import RemoteSource
    from .origins import HttpOrigin, S3Origin, check_url, head_with_retries, parse_s3_url

    where = [k for k in LOCATION_KEYS if k in entry]
    if not where:
        k = sorted(REMOTE_KEYS & entry.keys())[0]
        raise ManifestError(f"{key}.{k}", "only valid with url or s3")
    if len(where) > 1:
        raise ManifestError(f"{key}.s3", "conflicts with url: give one location")
    for other in ("text", "base64", "source", "generator"):
        if other in entry:
            raise ManifestError(f"{key}.{other}", f"conflicts with {where[0]}")
    loc_key = f"{key}.{where[0]}"
    loc = entry[where[0]]
    if not isinstance(loc, str):
        raise ManifestError(loc_key, "must be a string")
    if where[0] == "url":
        why = check_url(loc, settings.allow_http)
        if why:
            raise ManifestError(loc_key, why)
        origin = HttpOrigin(loc)
    else:
        if parse_s3_url(loc) is None:
            raise ManifestError(loc_key, "must be s3://BUCKET/KEY")
        origin = S3Origin(loc, settings.s3_endpoint)
    size = entry.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int)
                             or not 0 <= size <= MAX_FILE_SIZE):
        raise ManifestError(f"{key}.size", "must be a non-negative integer up to 16 TiB")
    sha = _digest(entry["sha256"], f"{key}.sha256") if "sha256" in entry else None
    if "holes" in entry and size is None:
        raise ManifestError(f"{key}.holes", "needs the size declared")
    holes = _holes(entry["holes"], f"{key}.holes", size) if "holes" in entry else None
    chunk_size, digests = (_chunks(entry["chunks"], f"{key}.chunks", size) if "chunks" in entry
                           else (None, None))
    if size is None or (sha is None and digests is None):
        try:  # one HEAD: the size, and the ETag that pins an object without digests
            info = head_with_retries(origin, settings.timeout)
        except SourceError as e:
            raise ManifestError(loc_key, str(e)) from None
        if size is not None and info.size != size:
            raise ManifestError(f"{key}.size", f"is {size}, but {loc} has {info.size} bytes")
        size = info.size
        origin.pin = info
        if digests is not None and len(digests) != -(-size // chunk_size):  # type: ignore[operator]
            raise ManifestError(f"{key}.chunks.sha256", f"has {len(digests)} digests; "
                                f"{size} bytes need {-(-size // chunk_size)}")  # type: ignore[operator]
    return RemoteSource(origin, size, settings, sha256=sha, chunk_size=chunk_size,
                        chunk_digests=digests, holes=holes)
