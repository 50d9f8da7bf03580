"""The user's cache directory: saved work that makes a second run cheap, never a trust boundary.

Everything ext4gen saves between runs (decompressed archives, digests of host files,
seekable-decompression indexes, fetched remote chunks) lives under one root that
belongs to the user running ext4gen.  A directory another user could have created
or written into is refused rather than used, because an entry planted there would
otherwise end up inside the user's image.  Each kind of saved work gets its own
area below the root, so they can be listed, bounded and cleared separately.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import Ext4genError

CACHE_ENV = "EXT4GEN_CACHE"


class CacheError(Ext4genError):
    """The cache directory is unusable or untrusted (an environment problem, not input)."""


def cache_root() -> Path:
    """$EXT4GEN_CACHE, else $XDG_CACHE_HOME/ext4gen, else ~/.cache/ext4gen (/var/cache/ext4gen for root)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/ext4gen")
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "ext4gen"


def _trusted_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700) or check that an existing one is ours and closed to others."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise CacheError(f"cache directory {path}: cannot create it: {e.strerror}") from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise CacheError(f"cache directory {path}: is not a directory (a symlink or file is refused)")
    if st.st_uid != os.geteuid():
        raise CacheError(f"cache directory {path}: owned by uid {st.st_uid}, not by you "
                         f"(uid {os.geteuid()}); refusing to trust it (set ${CACHE_ENV})")
    if st.st_mode & 0o022:
        raise CacheError(f"cache directory {path}: writable by group or others "
                         f"(mode {stat.S_IMODE(st.st_mode):04o}); refusing to trust it")
    return path


def cache_area(name: str) -> Path:
    """The directory for one kind of saved work (``tar``, ``digests``, ``index`` …), checked."""
    root = cache_root()
    root.parent.mkdir(parents=True, exist_ok=True)
    _trusted_dir(root)
    return _trusted_dir(root / name)
