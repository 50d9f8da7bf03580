"""The whole on-disk vocabulary in one namespace, for callers that want it.

Each structure is defined once, with construct, in :mod:`.definitions` (which
only tests and ``inspect`` load); the module for its family holds its constants
and the packers derived from it, and this module re-exports those
(``from ext4gen.format.ondisk import BLOCK_SIZE, INODE``):

- :mod:`.superblock` — superblock, group descriptor, geometry constants
- :mod:`.features`   — compat/incompat/ro_compat flags and their dumpe2fs names
- :mod:`.inode`      — the inode, i_flags, file-type mode bits
- :mod:`.directory`  — directory entries, checksum tail, htree index blocks
- :mod:`.extents`    — extent tree nodes
- :mod:`.xattr`      — extended attribute blocks and entries, POSIX ACLs
- :mod:`.packing`    — the packers derived from the definitions
"""

from __future__ import annotations

from .directory import *  # noqa: F403
from .extents import *  # noqa: F403
from .features import *  # noqa: F403
from .inode import *  # noqa: F403
from .packing import *  # noqa: F403
from .superblock import *  # noqa: F403
from .xattr import *  # noqa: F403
