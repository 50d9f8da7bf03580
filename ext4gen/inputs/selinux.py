"""SELinux labels from a file_contexts file, matched by libselinux itself.

file_contexts matching (regular expressions, the most specific match winning,
file-type qualifiers, ``<<none>>``) is libselinux's to define, so the lookup
goes through its ``selabel_lookup`` (Debian's python3-selinux) rather than a
reimplementation that would drift from what ``restorecon`` and ``setfiles``
do.  The label is stored as the kernel and setfiles store it: the context
followed by one NUL byte.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from ..model import host_reads

SELINUX_XATTR = b"security.selinux"


class FileContextsError(Exception):
    """The file_contexts file cannot be used (message in the user's terms)."""


class FileContexts:
    """An open file_contexts file: ``label(path, mode)`` is the context libselinux gives."""

    def __init__(self, path: str) -> None:
        try:
            import selinux  # Debian: python3-selinux (scripts/setup.sh installs it)
        except ImportError:
            raise FileContextsError("needs libselinux's Python binding (Debian package "
                                    "python3-selinux)") from None
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            raise FileContextsError(f"{path} is not a readable file")
        self._selinux: Any = selinux
        # libselinux reads these itself, out of sight of Python's audit hooks.
        for suffix in ("", ".bin", ".local", ".homedirs", ".subs", ".subs_dist"):
            host_reads.note(path + suffix, follow=True)
        opt = selinux.selinux_opt()
        opt.type = selinux.SELABEL_OPT_PATH
        opt.value = path
        try:
            self._handle = selinux.selabel_open(selinux.SELABEL_CTX_FILE, opt, 1)
        except OSError as e:
            raise FileContextsError(f"{path}: libselinux cannot load it: "
                                    f"{e.strerror or e}") from None
        if self._handle is None:
            raise FileContextsError(f"{path}: libselinux cannot load it")
        self.path = path

    def label(self, path: str, mode: int) -> bytes | None:
        """The xattr value for ``path`` (absolute, as mounted) of type ``mode`` (S_IF*); None
        when file_contexts gives it no context (no match, or ``<<none>>``)."""
        try:
            _rc, context = self._selinux.selabel_lookup_raw(self._handle, path, mode)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return None
            raise FileContextsError(f"{self.path}: lookup of {path} failed: "
                                    f"{e.strerror or e}") from None
        return context.encode() + b"\0"

    def close(self) -> None:
        if self._handle is not None:
            self._selinux.selabel_close(self._handle)
            self._handle = None
