"""A :class:`Plan` as a byte stream, for saved plans (:mod:`ext4gen.saved_plan`).

It is pickle, with every per-inode class reduced to a positional tuple and
every object that a plan shares written once and referred to by number:

- metadata (:class:`Meta`) by its index in a table of distinct values, so the
  million files of a manifest's defaults come back as a handful of objects;
- host files (a tar's members all read one) by index in a table of files;
- a data run's source and an owner list's inode by inode number;
- an htree's entries as a permutation of its directory's entries.

With no reference left between chunks of inodes, the pickler's memo is
cleared after each chunk: a memo of every object of a million-inode plan
cost more memory than the plan.  Reading is the mirror image; the tables reach the
reconstructors through a per-thread context that only :func:`load_plan` sets.
"""

from __future__ import annotations

import copyreg
import dataclasses
import pickle
import threading
from array import array
from typing import IO, Any

from ..model.sources import HostFile, HostFileSource, InlineSource, Pin, Source, ZeroSource
from ..model.tree import Meta
from .dedup import Run
from .htree import Htree
from .plan import InodePlan, Plan

CHUNK = 512  # inodes per pickle call: a save in a thread yields the GIL between them
_INODE_FIELDS = InodePlan.__match_args__
_HTREE_FIELD = _INODE_FIELDS.index("htree")
_HTREE_STATE = ("first_leaf_block", "leaf_hashes", "leaf_starts", "levels", "node_blocks")


class _Tables(threading.local):
    metas: list[Meta]
    files: list[HostFile]
    inodes: list[InodePlan | None]


_loading = _Tables()


# -- reconstructors (module-level: pickle names them) ---------------------------------------

def _meta(k: int) -> Meta:
    return _loading.metas[k]


def _file(k: int) -> HostFile:
    return _loading.files[k]


def _host_source(file: HostFile, base_offset: int, size: int,
                 segments: list[tuple[int, int, int]] | None) -> HostFileSource:
    src = HostFileSource.__new__(HostFileSource)
    src.file, src.path, src.base_offset, src.size, src.segments = file, file.path, base_offset, size, segments
    return src


def _inline(data: bytes) -> InlineSource:
    return InlineSource(data)


def _zero(size: int) -> ZeroSource:
    return ZeroSource(size)


def _indexed_dir(fields: tuple[Any, ...], order: array, state: tuple[Any, ...]) -> InodePlan:
    """A directory with an htree, whose entries are its directory's in hash order."""
    ip = InodePlan(*fields)
    h = Htree.__new__(Htree)
    entries = ip.entries
    assert entries is not None
    h.entries = [entries[i] for i in order]
    for name, value in zip(_HTREE_STATE, state, strict=True):
        setattr(h, name, value)
    ip.htree = h
    return ip


def _run(block: int, nblocks: int, ino: int, source: Source | None, offset: int, nbytes: int) -> Run:
    if source is None:
        ip = _loading.inodes[ino]
        assert ip is not None and ip.source is not None
        source = ip.source
    return Run(block, nblocks, source, offset, nbytes)


# -- writing --------------------------------------------------------------------------------

class _Writer:
    """The reductions of one plan: tables built in a first pass, then used by the pickler."""

    def __init__(self, plan: Plan) -> None:
        self.meta_index: dict[tuple[int, ...], int] = {}
        self.metas: list[tuple[int, ...]] = []
        self.file_index: dict[int, int] = {}
        self.files: list[tuple[str, tuple[int, ...], bool]] = []
        self.source_ino: dict[int, int] = {}
        for ip in plan.inodes:
            if ip is None:
                continue
            m = ip.meta
            key = (m.perm, m.uid, m.gid, m.atime, m.mtime, m.ctime, m.crtime)
            if key not in self.meta_index:
                self.meta_index[key] = len(self.metas)
                self.metas.append(key)
            if ip.source is not None:
                self.source_ino.setdefault(id(ip.source), ip.ino)
                host = ip.source.host_file()
                if host is not None and id(host) not in self.file_index:
                    self.file_index[id(host)] = len(self.files)
                    self.files.append((host.path, tuple(host.pin), host.sparse))
        self.dispatch = copyreg.dispatch_table.copy()
        self.dispatch.update({Meta: self.meta, HostFile: self.file, HostFileSource: self.host_source,
                              InlineSource: self.inline, ZeroSource: self.zero, InodePlan: self.inode,
                              Run: self.run})

    def meta(self, m: Meta) -> tuple[Any, ...]:
        return _meta, (self.meta_index[(m.perm, m.uid, m.gid, m.atime, m.mtime, m.ctime, m.crtime)],)

    def file(self, f: HostFile) -> tuple[Any, ...]:
        return _file, (self.file_index[id(f)],)

    def host_source(self, s: HostFileSource) -> tuple[Any, ...]:
        return _host_source, (s.file, s.base_offset, s.size, s.segments)

    def inline(self, s: InlineSource) -> tuple[Any, ...]:
        return _inline, (s.data,)

    def zero(self, s: ZeroSource) -> tuple[Any, ...]:
        return _zero, (s.size,)

    def inode(self, ip: InodePlan) -> tuple[Any, ...]:
        # Strings and tuples (kind, rdev) repeat within a chunk, where the memo shares them.
        fields = [getattr(ip, name) for name in _INODE_FIELDS]
        if ip.htree is None:
            return InodePlan, tuple(fields)
        fields[_HTREE_FIELD] = None
        assert ip.entries is not None
        at = {id(e): i for i, e in enumerate(ip.entries)}
        order = array("I", [at[id(e)] for e in ip.htree.entries])
        return _indexed_dir, (tuple(fields), order, tuple(getattr(ip.htree, name) for name in _HTREE_STATE))

    def run(self, r: Run) -> tuple[Any, ...]:
        ino = self.source_ino.get(id(r.source), -1)
        return _run, (r.block, r.nblocks, ino, r.source if ino < 0 else None, r.offset, r.nbytes)


def dump_plan(f: IO[bytes], plan: Plan) -> None:
    """Write ``plan`` to ``f`` (a few hundred inodes per pickle call)."""
    w = _Writer(plan)

    def dump(obj: Any) -> None:
        # A pickler per dump, as load() has an unpickler per load: every dump is a pickle of
        # its own (nothing refers across them), and a fresh memo stays the size of one
        # chunk, where clearing one that the file table had grown cost ~1 ms per chunk.
        pickler = pickle.Pickler(f, protocol=pickle.HIGHEST_PROTOCOL)
        pickler.dispatch_table = w.dispatch
        pickler.dump(obj)

    dump((w.metas, w.files))
    inodes = plan.inodes
    chunks = range(0, len(inodes), CHUNK)
    dump(len(chunks))
    for i in chunks:
        dump(inodes[i:i + CHUNK])
    owners = ([(ip.ino, k) for ip, k in plan.dir_block_owner],
              [(ip.ino, k) for ip, k in plan.tree_block_owner])
    dump((owners, dataclasses.replace(plan, inodes=[], dir_block_owner=[], tree_block_owner=[])))


def load_plan(f: IO[bytes], host_files: list[HostFile] | None = None) -> Plan:
    """Read what :func:`dump_plan` wrote; any error is the caller's to treat as a miss.

    ``host_files``, if given, receives every host file the plan's sources read, once each
    (the writer's table of them), so that nobody walks a million inodes to find them.
    """
    def load() -> Any:  # one unpickler per pickle: each chunk has a memo of its own
        return pickle.Unpickler(f).load()

    metas, files = load()
    _loading.metas = [Meta(*m) for m in metas]
    _loading.files = [_restored_file(path, pin, sparse) for path, pin, sparse in files]
    if host_files is not None:
        host_files += _loading.files
    inodes: list[InodePlan | None] = []
    _loading.inodes = inodes
    try:
        for _ in range(load()):
            inodes += load()
        (dir_owner, tree_owner), plan = load()
    finally:
        del _loading.metas, _loading.files, _loading.inodes
    if not isinstance(plan, Plan):
        raise pickle.UnpicklingError("not a plan")
    plan.inodes = inodes
    plan.dir_block_owner = [(inodes[ino], k) for ino, k in dir_owner]  # type: ignore[misc]
    plan.tree_block_owner = [(inodes[ino], k) for ino, k in tree_owner]  # type: ignore[misc]
    return plan


def _restored_file(path: str, pin: tuple[int, ...], sparse: bool) -> HostFile:
    f = HostFile.__new__(HostFile)
    f.path, f.pin, f.sparse = path, Pin(*pin), sparse
    return f
