"""Exceptions that carry a one-line, user-facing message.

The CLI turns :class:`Ext4genError` into ``ext4gen: <message>`` and exit code 2,
so every message must name what the user has to fix (manifest key, path).
"""

from __future__ import annotations


class Ext4genError(Exception):
    """Base class: the message is shown to the user as one line."""


class ManifestError(Ext4genError):
    """Invalid input, located by the manifest key (or image path) it came from."""

    def __init__(self, key: str, message: str, *, origin: str | None = None) -> None:
        self.key = key
        self.message = message
        self.origin = origin
        where = f"{origin}: " if origin else ""
        super().__init__(f"{where}{key}: {message}")


class SourceError(Ext4genError):
    """A content source cannot deliver the bytes it promised (changed, vanished).

    Raised while serving; the server maps it to EIO for the affected request only.
    """
