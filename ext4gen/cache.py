"""The user's cache directory: saved work that makes a second run cheap, never a trust boundary.

Everything ext4gen saves between runs (decompressed archives, digests of host files,
seekable-decompression indexes, fetched remote chunks) lives under one root that
belongs to the user running ext4gen.  A directory another user could have created
or written into is refused rather than used, because an entry planted there would
otherwise end up inside the user's image.  Each kind of saved work gets its own
area below the root, so they can be listed, bounded and cleared separately.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import os
import secrets
import stat
import tempfile
import time
from dataclasses import dataclass
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


def checked_root() -> Path:
    """The cache root, created if missing and refused if someone else could have written it."""
    root = cache_root()
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CacheError(f"cache directory {root}: cannot create it: {e.strerror}") from None
    return _trusted_dir(root)


def cache_area(name: str) -> Path:
    """The directory for one kind of saved work (``tar``, ``digests``, ``index`` …), checked."""
    return _trusted_dir(checked_root() / name)


# -- the size bound, shared by every area ------------------------------------------------
MAX_ENV = "EXT4GEN_CACHE_MAX"
DEFAULT_MAX = 4 << 30
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def cache_max() -> int:
    """The bound on the whole cache in bytes: ``$EXT4GEN_CACHE_MAX`` (``500M``, ``8G`` …), else 4 GiB."""
    text = os.environ.get(MAX_ENV, "").strip().lower().removesuffix("ib").removesuffix("b")
    if not text:
        return DEFAULT_MAX
    unit = text[-1] if text[-1] in _UNITS else ""
    try:
        value = float(text[: len(text) - len(unit)])
    except ValueError:
        raise CacheError(f"${MAX_ENV}={os.environ[MAX_ENV]!r}: not a size (use e.g. 500M or 8G)") from None
    if not 0 <= value < 1 << 62:
        raise CacheError(f"${MAX_ENV}={os.environ[MAX_ENV]!r}: out of range")
    return int(value * _UNITS[unit])


@dataclass
class Entry:
    """One unit of saved work: the files of an area sharing a stem (``KEY.tar`` + ``KEY.json``).

    The bound is kept entry by entry, so an entry's data and its sidecar go together.
    """

    area: str
    stem: str
    paths: list[Path]
    nbytes: int
    used: int  # newest mtime of its files, in ns: ``touch`` marks a use


_STALE_TMP = 3600.0  # a temporary file older than this was left by a crash: an entry like any other


def _stem(name: str) -> str:
    return name.split(".", 1)[0]


def areas() -> list[str]:
    """Names of the areas that exist under the root (nothing is created to list them)."""
    root = cache_root()
    try:
        return sorted(e.name for e in os.scandir(root) if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []


def entries(area: str) -> list[Entry]:
    """The entries of one area, with their sizes and last use."""
    groups: dict[str, Entry] = {}
    try:
        it = list(os.scandir(cache_root() / area))
    except FileNotFoundError:
        return []
    for e in it:
        try:
            st = e.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        if e.name.startswith(".") and time.time() - st.st_mtime < _STALE_TMP:
            continue  # another process is still writing it
        g = groups.setdefault(_stem(e.name), Entry(area, _stem(e.name), [], 0, 0))
        g.paths.append(Path(e.path))
        g.nbytes += st.st_size
        g.used = max(g.used, st.st_mtime_ns)
    return list(groups.values())


def touch(path: Path) -> None:
    """Mark an entry as just used (its mtime is the LRU clock; atime is unreliable with relatime)."""
    try:
        os.utime(path)
    except OSError:
        pass


def _in_use(entry: Entry) -> bool:
    """True while some process holds a shared lock on one of the entry's files (see :func:`hold`)."""
    for p in entry.paths:
        try:
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
    return False


_HELD: list[int] = []


def hold(fd: int) -> None:
    """Keep ``fd``'s entry from eviction for the life of this process (a served file must stay)."""
    fcntl.flock(fd, fcntl.LOCK_SH)
    _HELD.append(fd)


def enforce_bound(limit: int | None = None) -> list[Entry]:
    """Evict least recently used entries of all areas until the cache fits ``limit``.

    Entries in use by a running ext4gen (held with a shared lock) are skipped,
    so a bound smaller than one served archive keeps that archive and nothing
    else.  Returns what was evicted.
    """
    limit = cache_max() if limit is None else limit
    every = [e for a in areas() for e in entries(a)]
    total = sum(e.nbytes for e in every)
    evicted = []
    for e in sorted(every, key=lambda e: e.used):
        if total <= limit:
            break
        if _in_use(e):
            continue
        for p in e.paths:
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        total -= e.nbytes
        evicted.append(e)
    return evicted


def clear(area: str | None = None) -> tuple[int, int]:
    """Remove the entries of ``area`` (all areas if None); returns (entries, bytes) removed.

    Entries held by a running ext4gen are removed too: their users keep reading
    through open descriptors or fail a pin check, never read another file's bytes.
    """
    n = nbytes = 0
    for a in [area] if area else areas():
        for e in entries(a):
            for p in e.paths:
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass
            n += 1
            nbytes += e.nbytes
    return n, nbytes


# -- sealed entries: what we wrote, not what someone put there -----------------------------
_KEY_FILE = "seal.key"
_MAC_SIZE = 32


_KEYS: dict[Path, bytes] = {}  # read once per process and root


def _seal_key() -> bytes:
    """A random key private to this cache (mode 0600 in the checked root), made on first use."""
    key = _KEYS.get(cache_root())
    if key is None:
        key = _KEYS[cache_root()] = _read_or_make_key()
    return key


def _read_or_make_key() -> bytes:
    root = checked_root()
    path = root / _KEY_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        key = secrets.token_bytes(32)
        tmp = root / f".{_KEY_FILE}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        try:
            os.link(tmp, path)  # the first writer wins; everyone then reads the same key
        except FileExistsError:
            pass
        os.unlink(tmp)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        key = f.read(64)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077 or len(key) != 32:
        raise CacheError(f"cache key {path}: not a 32-byte file private to uid {os.geteuid()}; "
                         f"remove it (ext4gen cache clear) to start afresh")
    return key


def seal(body: bytes) -> bytes:
    """``body`` prefixed with a keyed BLAKE2b MAC, so an entry changed by anything but ext4gen is seen."""
    return hashlib.blake2b(body, key=_seal_key(), digest_size=_MAC_SIZE).digest() + body


def unseal(blob: bytes) -> bytes | None:
    """The body of a sealed blob, or None when it was not written by ext4gen with this cache's key."""
    mac, body = blob[:_MAC_SIZE], blob[_MAC_SIZE:]
    want = hashlib.blake2b(body, key=_seal_key(), digest_size=_MAC_SIZE).digest()
    return body if len(mac) == _MAC_SIZE and hmac.compare_digest(mac, want) else None


def sealer() -> hashlib._Hash:
    """A MAC being computed, for an entry too large to seal in one piece (``update`` it, then
    compare ``digest()`` with the stored one, as :func:`seal`/:func:`unseal` do)."""
    return hashlib.blake2b(key=_seal_key(), digest_size=_MAC_SIZE)


MAC_SIZE = _MAC_SIZE


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (readers never see half)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
