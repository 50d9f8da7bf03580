"""Stable inode identities across builds (the NFS / file-handle concern).

A build can write an identity map: path → (inode number, generation, kind),
plus the generations of numbers no longer in use.  Given the previous map, a
rebuild keeps the number and generation of every unchanged path and gives a
reused number a new generation, so a stale file handle never names a
different file.  The map also carries the UUID and hash seed, which would
otherwise change with the content.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..errors import ManifestError

MAP_VERSION = 1


@dataclass
class IdentityMap:
    uuid: bytes | None = None
    hash_seed: bytes | None = None
    paths: dict[bytes, tuple[int, int, str]] = field(default_factory=dict)  # path -> (ino, gen, kind)
    retired: dict[int, int] = field(default_factory=dict)  # ino -> last generation

    def last_generation(self, ino: int) -> int | None:
        """The highest generation ever given to ``ino`` (None if never used)."""
        gens = [g for i, g, _k in self.paths.values() if i == ino]
        if ino in self.retired:
            gens.append(self.retired[ino])
        return max(gens) if gens else None

    def to_json(self) -> str:
        import uuid as uuid_mod  # here: it imports platform, 3 ms of every serve's start

        doc = {
            "version": MAP_VERSION,
            "uuid": str(uuid_mod.UUID(bytes=self.uuid)) if self.uuid else None,
            "hash_seed": str(uuid_mod.UUID(bytes=self.hash_seed)) if self.hash_seed else None,
            "inodes": {p.decode("utf-8", "surrogateescape"): [i, g, k]
                       for p, (i, g, k) in sorted(self.paths.items())},
            "retired": {str(i): g for i, g in sorted(self.retired.items())},
        }
        return json.dumps(doc, indent=1) + "\n"

    @classmethod
    def load(cls, path: str) -> IdentityMap:
        import uuid as uuid_mod

        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
            if doc.get("version") != MAP_VERSION:
                raise ValueError(f"unsupported version {doc.get('version')!r}")
            return cls(
                uuid=uuid_mod.UUID(doc["uuid"]).bytes if doc.get("uuid") else None,
                hash_seed=uuid_mod.UUID(doc["hash_seed"]).bytes if doc.get("hash_seed") else None,
                paths={p.encode("utf-8", "surrogateescape"): (int(v[0]), int(v[1]), str(v[2]))
                       for p, v in doc["inodes"].items()},
                retired={int(i): int(g) for i, g in doc.get("retired", {}).items()},
            )
        except OSError as e:
            raise ManifestError("--base-map", f"cannot read {path}: {e.strerror}") from None
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise ManifestError("--base-map", f"{path} is not an ext4gen identity map: {e}") from None
