"""``ext4gen publish SOURCE DEST``: file contents to a content-addressed store, plus a manifest.

The Lambda pattern: many hosts serve the same tree from one object store, each
planning locally from a small manifest, fetching only what its clients read.
Every regular file's bytes become one object named by its SHA-256 (so equal
files are stored once and a re-publish uploads only what changed); the manifest
keeps every other entry exactly (directories, symlinks, hard links, devices,
owners, modes, times, xattrs) and declares each object's size, SHA-256 and
per-chunk SHA-256, so hosts plan and dedup without touching the network and
verify every chunk they fetch.

DEST is ``s3://BUCKET/PREFIX`` (objects ``PREFIX/<sha256>``), or a directory
that an HTTP server publishes at ``--base-url`` (objects ``DIR/<sha256>``).
Files up to ``--inline-max`` bytes (default 1024) go into the manifest itself:
a request per tiny file would cost more than its bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
import uuid as uuid_mod
from typing import IO, Any

from .errors import Ext4genError
from .model import times
from .model.options import ImageOptions
from .model.sources import Source
from .model.tree import BLOCKDEV, CHARDEV, DIR, FILE, SYMLINK, Node, Tree
from .remote.origins import parse_s3_url

ZERO_BLOCK = bytes(4096)


class PublishError(Ext4genError):
    """The destination cannot take the objects (input or environment)."""


def _time(ns: int) -> str:
    sign = "-" if ns < 0 else ""
    sec, frac = divmod(abs(ns), times.NS)
    return f"{sign}{sec}.{frac:09d}"


def _name(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class Store:
    """Where objects go; ``put`` is skipped for objects already there (content-addressed)."""

    def location(self, digest: str) -> dict[str, str]:
        raise NotImplementedError

    def put(self, digest: str, f: IO[bytes], size: int) -> bool:
        raise NotImplementedError


class DirStore(Store):
    def __init__(self, path: str, base_url: str) -> None:
        self.path = path
        self.base_url = base_url.rstrip("/") + "/"
        os.makedirs(path, exist_ok=True)

    def location(self, digest: str) -> dict[str, str]:
        return {"url": self.base_url + digest}

    def put(self, digest: str, f: IO[bytes], size: int) -> bool:
        dest = os.path.join(self.path, digest)
        if os.path.exists(dest) and os.path.getsize(dest) == size:
            return False
        tmp = f"{dest}.{os.getpid()}.tmp"
        with open(tmp, "wb") as out:
            while block := f.read(1 << 20):
                out.write(block)
        os.chmod(tmp, 0o644)  # the HTTP server's user must be able to read it
        os.replace(tmp, dest)
        return True


class S3Store(Store):
    def __init__(self, url: str, endpoint: str | None) -> None:
        from .remote.origins import s3_client

        parsed = parse_s3_url(url.rstrip("/") + "/x")
        if parsed is None:
            raise PublishError(f"{url}: expected s3://BUCKET[/PREFIX]")
        self.bucket, key = parsed
        self.prefix = key[:-1]
        self.client = s3_client(endpoint)

    def location(self, digest: str) -> dict[str, str]:
        return {"s3": f"s3://{self.bucket}/{self.prefix}{digest}"}

    def put(self, digest: str, f: IO[bytes], size: int) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.prefix + digest
        try:
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=key)
                if int(head["ContentLength"]) == size:
                    return False
            except ClientError as e:
                if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
                    raise
            self.client.upload_fileobj(f, self.bucket, key)  # multipart when large
        except (BotoCoreError, ClientError) as e:
            raise PublishError(f"s3://{self.bucket}/{key}: upload failed: {e}") from None
        return True


class Publisher:
    def __init__(self, store: Store, chunk_size: int, inline_max: int, zero_holes: bool) -> None:
        self.zero_holes = zero_holes  # dedup=content: all-zero blocks are holes, as in a local build
        self.store = store
        self.chunk_size = chunk_size
        self.inline_max = inline_max
        self.uploaded = self.reused = self.bytes_uploaded = 0

    def content(self, source: Source, key: str) -> dict[str, Any]:
        size = source.size
        if source.all_zero:
            return {"size": size}
        if size <= self.inline_max:
            buf = bytearray(size)
            source.readinto(memoryview(buf), 0)
            return {"base64": base64.b64encode(bytes(buf)).decode()}
        whole = hashlib.sha256()
        chunks: list[str] = []
        zero_blocks: list[int] = []
        ranges = source.data_ranges() if not self.zero_holes else None
        buf = bytearray(self.chunk_size)
        with tempfile.TemporaryFile(prefix="ext4gen-publish-") as spool:
            for off in range(0, size, self.chunk_size):
                mv = memoryview(buf)[: min(self.chunk_size, size - off)]
                try:
                    source.readinto(mv, off)
                except Ext4genError as e:
                    raise PublishError(f"{key}: cannot read its content: {e}") from None
                whole.update(mv)
                chunks.append(hashlib.sha256(mv).hexdigest())
                if self.zero_holes:
                    zero_blocks += [(off + i) // 4096 for i in range(0, len(mv), 4096)
                                    if mv[i : i + 4096] == ZERO_BLOCK[: len(mv) - i]]
                spool.write(mv)
            spool.seek(0)
            digest = whole.hexdigest()
            if self.store.put(digest, spool, size):
                self.uploaded += 1
                self.bytes_uploaded += size
            else:
                self.reused += 1
        out: dict[str, Any] = {**self.store.location(digest), "size": size, "sha256": digest}
        if len(chunks) > 1:
            out["chunks"] = {"size": self.chunk_size, "sha256": chunks}
        holes = _runs(zero_blocks, size) if self.zero_holes else _gaps(ranges, size)
        if holes:
            out["holes"] = holes
        return out

    def entry(self, node: Node, key: str) -> dict[str, Any]:
        m = node.meta
        e: dict[str, Any] = {"type": node.kind, "mode": f"{m.perm:04o}", "uid": m.uid, "gid": m.gid,
                             "atime": _time(m.atime), "mtime": _time(m.mtime),
                             "ctime": _time(m.ctime), "crtime": _time(m.crtime)}
        if node.kind == FILE:
            assert node.source is not None
            e.update(self.content(node.source, key))
        elif node.kind == SYMLINK:
            e["target"] = _name(node.target)
        elif node.kind in (CHARDEV, BLOCKDEV):
            e["major"], e["minor"] = node.rdev
        if node.xattrs:
            e["xattrs"] = {_name(k): {"base64": base64.b64encode(v).decode()}
                           for k, v in sorted(node.xattrs.items())}
        return e

    def manifest(self, tree: Tree, options: ImageOptions) -> dict[str, Any]:
        image: dict[str, Any] = {"dedup": options.dedup, "inline_data": options.inline_data}
        if options.label:
            image["label"] = options.label
        for k in ("uuid", "hash_seed"):
            if getattr(options, k):
                image[k] = str(uuid_mod.UUID(bytes=getattr(options, k)))
        if options.prefetch:
            image["prefetch"] = list(options.prefetch)
        doc: dict[str, Any] = {"image": image}
        seen: dict[int, str] = {}  # id(node) of files already written -> their path (hard links)
        stack: list[tuple[str, Node]] = [("/", tree.root)]
        while stack:
            path, node = stack.pop()
            if node.kind != DIR and id(node) in seen:
                doc[path] = {"type": "hardlink", "target": seen[id(node)]}
                continue
            seen[id(node)] = path
            doc[path] = self.entry(node, json.dumps(path))
            if node.children:
                base = path.rstrip("/") + "/"
                for name in sorted(node.children, reverse=True):
                    stack.append((base + _name(name), node.children[name]))
        return doc


def _runs(blocks: list[int], size: int) -> list[list[int]]:
    """Consecutive block numbers as [start, end) byte ranges (the last ends at most at ``size``)."""
    out: list[list[int]] = []
    for b in blocks:
        if out and out[-1][1] == b * 4096:
            out[-1][1] = min(size, (b + 1) * 4096)
        else:
            out.append([b * 4096, min(size, (b + 1) * 4096)])
    return out


def _gaps(ranges: list[tuple[int, int]] | None, size: int) -> list[list[int]]:
    """The holes of a sparse source: what lies between its data ranges, block aligned."""
    if ranges is None:
        return []
    out, pos = [], 0
    for start, end in ranges:
        first = -(-pos // 4096) * 4096
        last = start // 4096 * 4096
        if last > first:
            out.append([first, last])
        pos = max(pos, end)
    first = -(-pos // 4096) * 4096
    if first < size:
        out.append([first, size])
    return out
