"""A regular file that is a member of a compressed container-image layer.

Its bytes are a range of the layer's uncompressed tar, decompressed on demand
through the layer's seekable index (:mod:`ext4gen.model.seekable`).  The same
freshness promise as host files holds: the blob is pinned when planned, and
every read re-checks the pin, so a blob that changed yields SourceError (EIO).
"""

from __future__ import annotations

from .seekable import CompressedLayer
from .sources import Source, read_segments, segment_ranges


class LayerMemberSource(Source):
    """``size`` bytes at uncompressed offset ``base`` of ``layer``.

    ``segments`` describes a sparse member as (file offset, length, layer offset)
    runs, as for :class:`~ext4gen.model.sources.HostFileSource`.
    """

    __slots__ = ("base", "layer", "segments", "size")

    def __init__(self, layer: CompressedLayer, base: int, size: int,
                 segments: list[tuple[int, int, int]] | None = None) -> None:
        self.layer = layer
        self.base = base
        self.size = size
        self.segments = segments

    def data_ranges(self) -> list[tuple[int, int]] | None:
        return segment_ranges(self.segments)

    def readinto(self, buf: memoryview, offset: int) -> None:
        if self.segments is None:
            self.layer.pread(buf, self.base + offset)
        else:
            read_segments(buf, offset, self.segments, self.layer.pread)

    def describe(self) -> str:
        return f"{self.layer.blob.digest}[{self.layer.compression}]@{self.base}+{self.size}"


class DigestedLayerMemberSource(LayerMemberSource):
    """A member whose sha256 the layer scan computed (zstd layers): never read when planning.

    Equal digests mean equal bytes, so dedup shares such files whole by their
    identity instead of reading them, which in a single-frame zstd layer would
    cost a decompression from the frame start at every jump back.
    """

    __slots__ = ("identity",)
    plan_readable = False

    def __init__(self, layer: CompressedLayer, base: int, size: int, digest: str) -> None:
        super().__init__(layer, base, size)
        self.identity = ("sha256", digest)
