"""Saved block digests of host files, so planning an unchanged tree again reads no file data.

Content dedup needs, for every block of every file, a 128-bit xxh3 key, and for
every block that turned out equal to an earlier one, a byte comparison (xxh3 is
not collision-resistant: crafted blocks can share a key).  Both cost a full read
of the tree.  This module keeps the outcome per host file, keyed by the file's
path and range and valid only while its *pin* (device, inode, size, mtime and
ctime in ns) is unchanged:

* the xxh3 key of each block (so later files can still find their duplicates),
* which blocks are all zeros (holes),
* for each block that was byte-compared equal to an earlier block, *which*
  block that was: (that source's key, its pin, offset).  Such a verdict is
  reused only when the candidate the allocator finds is exactly that block of
  that still-pinned source; any other candidate (the tree changed, the earlier
  file changed) is compared by reading bytes, as on a first run.

Why not a cryptographic hash instead of the recorded comparisons: SHA-256 costs
3.2 µs per 4 KiB block here against 0.45 µs for xxh3 (T1's 1 GiB would plan
0.8 s slower on every first run), and it would not remove the need for trust:
an entry is a claim about bytes that are not read again, whatever hash it
holds.  That trust comes from two things.  The cache directory belongs to the
user and is closed to others (ext4gen.cache refuses anything else), and every
file of this area is *sealed* with a keyed MAC whose random key lives in the
same private directory: an entry written or edited by anything but ext4gen
(wrong hashes, a claim that a block is zeros or equals another) fails the seal
and is ignored, so the file is read and hashed again.  Only someone who can
already read the user's private files could forge one.

Entries are grouped per host directory (one sealed JSON file each), so a tree
is loaded in a few reads and the cache's LRU bound evicts whole directories.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

from ..cache import CacheError, cache_area, enforce_bound, seal, touch, unseal, write_atomic
from ..model.sources import HostFileSource, Source

AREA = "digests"
FORMAT = 2

Relation = tuple[str, tuple[int, ...], int]  # (source key, its pin, source offset)
_NO_ZEROS: frozenset[int] = frozenset()


@dataclass(slots=True)
class Record:
    """What planning learned about one host source while its pin held."""

    pin: tuple[int, ...]
    keys: bytes  # 16 bytes per block, in the order of the file's data spans
    zeros: frozenset[int] = frozenset()  # ordinals of all-zero blocks
    equal: dict[int, Relation] = field(default_factory=dict)  # ordinal -> block compared equal

    def to_json(self) -> list:
        """[pin, keys (base64), zero ordinals, [[source key, pin] …], [ordinal, target, offset, …]].

        Verdicts name their targets through a small table: a duplicate file's
        blocks all point into the same earlier file.
        """
        if not self.equal and not self.zeros:  # most files
            return [list(self.pin), base64.b64encode(self.keys).decode(), [], [], []]
        targets: dict[tuple[str, tuple[int, ...]], int] = {}
        flat: list[int] = []
        for o, (k, p, off) in sorted(self.equal.items()):
            flat += (o, targets.setdefault((k, tuple(p)), len(targets)), off)
        return [list(self.pin), base64.b64encode(self.keys).decode(), sorted(self.zeros),
                [[k, list(p)] for k, p in targets], flat]

    @classmethod
    def from_json(cls, v: list) -> Record:
        pin, keys, zeros, targets, flat = v
        if not flat and not zeros:  # most files
            return cls(tuple(pin), base64.b64decode(keys), _NO_ZEROS, {})
        table = [(k, tuple(p)) for k, p in targets]
        equal = {flat[i]: (*table[flat[i + 1]], flat[i + 2]) for i in range(0, len(flat), 3)}
        return cls(tuple(pin), base64.b64decode(keys), frozenset(zeros), equal)  # type: ignore[arg-type]


def source_key(source: Source) -> str | None:
    """The cache key of a host-file source (path, range, sparse map); None for other sources."""
    if not isinstance(source, HostFileSource):
        return None
    segs = source.segments
    seg = "" if segs is None else hashlib.sha256(repr(segs).encode()).hexdigest()[:16]
    path = source.path
    if not path.startswith("/"):
        path = os.path.abspath(path)
    return f"{path}\0{source.base_offset}\0{source.size}\0{seg}"


class DigestCache:
    """Loads directory groups on first use, collects new records, writes changed groups back."""

    def __init__(self, area: Path) -> None:
        self.area = area
        # group file name -> key -> raw record (JSON), or a Record this plan stored
        self._groups: dict[str, dict[str, list | Record]] = {}
        self._dirty: set[str] = set()
        self._names: dict[str, str] = {}  # directory -> group file name
        self._last = ("", "")  # (key, group) of the last lookup

    @classmethod
    def open(cls) -> DigestCache | None:
        """The user's digest cache, or None (with one warning line) when it cannot be trusted."""
        if os.environ.get("EXT4GEN_NO_DIGEST_CACHE"):
            return None
        try:
            return cls(cache_area(AREA))
        except CacheError as e:
            print(f"ext4gen: warning: {e}; planning without saved digests", file=sys.stderr)
            return None

    def _group(self, key: str) -> str:
        """The file of the key's directory (the name hashes the directory's path)."""
        directory = key.partition("\0")[0].rpartition("/")[0]
        group = self._names.get(directory)
        if group is None:
            digest = hashlib.sha256(directory.encode("utf-8", "surrogateescape")).hexdigest()
            group = self._names[directory] = digest[:32] + ".json"
        return group

    def _load(self, group: str) -> dict[str, list | Record]:
        records = self._groups.get(group)
        if records is None:
            records = {}
            path = self.area / group
            try:
                body = unseal(path.read_bytes())
                doc = json.loads(body) if body is not None else None
                if isinstance(doc, dict) and doc.get("format") == FORMAT:
                    records = doc["files"]
                    touch(path)
            except (OSError, ValueError, KeyError, TypeError, CacheError):
                records = {}
            self._groups[group] = records
        return records

    def lookup(self, source: Source, key: str) -> Record | None:
        """The saved record of ``source`` if its pin still holds, else None (stale or missing)."""
        group = self._group(key)
        self._last = (key, group)  # store() usually follows for the same file
        raw = self._load(group).get(key)
        if isinstance(raw, Record):  # stored by this plan, not yet written
            return raw if raw.pin == tuple(source.pin) else None  # type: ignore[attr-defined]
        if raw is None or not isinstance(raw, list) or raw[0] != [*source.pin]:  # type: ignore[attr-defined]
            return None
        try:
            return Record.from_json(raw)
        except (ValueError, TypeError, IndexError, KeyError):
            return None

    def store(self, key: str, record: Record) -> None:
        """Keep ``record`` for the next plan; it becomes JSON when written (see :meth:`save`)."""
        group = self._last[1] if self._last[0] == key else self._group(key)
        self._load(group)[key] = record
        self._dirty.add(group)

    def save(self) -> None:
        """Write back the groups that changed (sealed), then keep the whole cache within its bound.

        Within :func:`saves_deferred` the writes are queued for the caller instead.
        """
        if not self._dirty:
            return
        later = _DEFERRED.get()
        if later is not None:
            later.append(self._write)
            return
        self._write()

    def _write(self) -> None:
        try:
            for group in sorted(self._dirty):
                files = {k: v.to_json() if isinstance(v, Record) else v
                         for k, v in self._groups[group].items()}
                body = json.dumps({"format": FORMAT, "files": files}, separators=(",", ":")).encode()
                write_atomic(self.area / group, seal(body))
            enforce_bound()
        except (OSError, CacheError) as e:
            print(f"ext4gen: warning: cannot save digests in {self.area}: {e}", file=sys.stderr)
        self._dirty.clear()


# Writes queued by DigestCache.save() while planning runs inside saves_deferred().
_DEFERRED: ContextVar[list[Callable[[], None]] | None] = ContextVar("ext4gen_digest_saves", default=None)


@contextmanager
def saves_deferred() -> Iterator[list[Callable[[], None]]]:
    """Queue the digest writes of the plans made within; the caller runs them when it likes.

    A serve answers before it writes: one file per source directory (1,112 for
    T2) took about a second here, after every block was already placed.
    """
    queued: list[Callable[[], None]] = []
    token = _DEFERRED.set(queued)
    try:
        yield queued
    finally:
        _DEFERRED.reset(token)
