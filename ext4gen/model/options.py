"""Image-wide choices that are not part of the tree, and the one place they are checked."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from ..errors import ManifestError
from .identity import IdentityMap

DEDUP_MODES = ("content", "none")
NS = 1_000_000_000


def check_dedup(value: object, key: str = "dedup") -> str:
    """``value`` if it names a dedup mode; else one line naming ``key`` (manifest or option)."""
    if value not in DEDUP_MODES:
        raise ManifestError(key, f"must be one of {', '.join(DEDUP_MODES)}, not {value!r}")
    return value  # type: ignore[return-value]


def source_date_epoch_ns(value: str | None = None) -> int:
    """SOURCE_DATE_EPOCH (``value``, else the environment's) in nanoseconds; 0 when unset.

    Every input that stamps times from it (manifests, host directories, tars)
    parses it here, so they agree on what a bad value is.
    """
    if value is None:
        value = os.environ.get("SOURCE_DATE_EPOCH")
    if not value:
        return 0
    try:
        return int(value) * NS
    except ValueError:
        raise ManifestError("SOURCE_DATE_EPOCH", "must be an integer number of seconds") from None


@dataclass
class ImageOptions:
    """Options for :func:`ext4gen.plan`.

    ``uuid`` and ``hash_seed`` default to values derived from the tree, so the
    same input always yields the same image.  ``epoch_ns`` stamps the superblock.
    """

    label: str = ""
    uuid: bytes | None = None
    hash_seed: bytes | None = None
    dedup: str = "content"
    epoch_ns: int = 0
    inline_data: bool = True  # small files and directories live in their inode
    base_map: IdentityMap | None = None  # keep inode numbers/generations of a previous build
    prefetch: list[str] = field(default_factory=list)  # image paths to fetch first when served

    def __post_init__(self) -> None:
        check_dedup(self.dedup)


TIMES_MODES = ("keep", "clamp", "epoch")


@dataclass(frozen=True)
class IdRange:
    """One line of a /proc/PID/uid_map: ids ``host .. host+count-1`` of the source
    become ``container .. container+count-1`` in the image."""

    container: int
    host: int
    count: int

    def __str__(self) -> str:
        return f"{self.container}:{self.host}:{self.count}"


@dataclass
class SourceOptions:
    """How a loaded tree is adjusted before it is planned, whatever the SOURCE kind.

    Every field defaults to None, "not given", so that options from the command
    line can be laid over a manifest's ``[image]`` table key by key (the flag
    wins); :func:`ext4gen.inputs.adjust.apply_source_options` applies them once.
    """

    times: str | None = None  # keep | clamp | epoch; None: clamp host imports if SOURCE_DATE_EPOCH
    root_owner: tuple[int, int, int | None] | None = None  # uid, gid, permission bits of /
    squash_owner: tuple[int, int] | None = None  # every inode's owner (--all-root: 0:0)
    uid_map: tuple[IdRange, ...] | None = None
    gid_map: tuple[IdRange, ...] | None = None
    one_file_system: bool | None = None  # host directory imports stay on one filesystem
    file_contexts: str | None = None  # SELinux file_contexts: label every inode
    fs_config: str | None = None  # Android fs_config: owners, modes, capabilities by path
    mount_point: str | None = None  # where the image will be mounted (label and fs_config paths)

    def over(self, other: SourceOptions | None) -> SourceOptions:
        """These options, with ``other``'s where these leave one unset."""
        if other is None:
            return self
        return SourceOptions(**{f.name: getattr(self, f.name) if getattr(self, f.name) is not None
                                else getattr(other, f.name) for f in fields(self)})

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            if f.name in ("uid_map", "gid_map"):
                v = [str(r) for r in v]
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> SourceOptions:
        kw: dict[str, object] = {}
        for k, v in doc.items():
            if k in ("uid_map", "gid_map"):
                kw[k] = tuple(IdRange(*map(int, str(r).split(":"))) for r in v)  # type: ignore[union-attr]
            elif k in ("root_owner", "squash_owner"):
                kw[k] = tuple(v)  # type: ignore[arg-type]
            else:
                kw[k] = v
        return cls(**kw)  # type: ignore[arg-type]


LABEL_MAX = 16  # bytes of s_volume_name


def check_label(label: str) -> str:
    if len(label.encode()) > LABEL_MAX:
        raise ValueError(f"the volume label is at most {LABEL_MAX} bytes")
    return label


def uuid_value(text: str) -> bytes:
    """A UUID in any form Python's uuid.UUID reads, or ``random`` (a new one every build:
    the image is then no longer reproducible, which is what asking for it means)."""
    import uuid as uuid_mod

    if text.strip().lower() == "random":
        return uuid_mod.uuid4().bytes
    try:
        return uuid_mod.UUID(text).bytes
    except ValueError:
        raise ValueError(f"{text!r} is not a UUID (nor 'random')") from None


@dataclass
class ImageFlags:
    """The image and source choices a command line makes, on top of its SOURCE.

    Kept as given (``uuid="random"`` is resolved when the image is loaded), so the
    same flags can travel to the nbdkit plugin as one JSON parameter and mean there
    exactly what they mean to ``build``.
    """

    label: str | None = None
    uuid: str | None = None
    hash_seed: str | None = None
    source: SourceOptions = field(default_factory=SourceOptions)

    def is_empty(self) -> bool:
        return (self.label is None and self.uuid is None and self.hash_seed is None
                and not self.source.to_json())

    def to_json(self) -> str:
        import json

        doc: dict[str, object] = {k: v for k, v in (("label", self.label), ("uuid", self.uuid),
                                                    ("hash_seed", self.hash_seed)) if v is not None}
        doc["source"] = self.source.to_json()
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ImageFlags:
        import json

        doc = json.loads(text)
        return cls(label=doc.get("label"), uuid=doc.get("uuid"), hash_seed=doc.get("hash_seed"),
                   source=SourceOptions.from_json(doc.get("source", {})))

    def image_overrides(self) -> dict[str, object]:
        """The :class:`ImageOptions` fields these flags set (``random`` drawn now)."""
        out: dict[str, object] = {}
        if self.label is not None:
            out["label"] = self.label
        if self.uuid is not None:
            out["uuid"] = uuid_value(self.uuid)
        if self.hash_seed is not None:
            out["hash_seed"] = uuid_value(self.hash_seed)
        return out
