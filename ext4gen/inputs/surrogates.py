"""Lone surrogates in a parsed JSON manifest: strings no name, text or target can hold.

JSON can spell a lone surrogate as an escape (``"\\ud800"``), or, since
``json.loads`` decodes bytes with "surrogatepass", as its three UTF-8-like
bytes; TOML refuses both itself.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import ManifestError

_MAYBE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


def refuse_lone_surrogates(doc: dict[str, Any]) -> None:
    """A string with a lone surrogate is not Unicode: no name, text or target can hold it.

    Only run when the raw text may contain one, so ordinary manifests pay nothing;
    iterative, since the document may be nested as deeply as the parser allowed.
    """
    stack: list[tuple[str, Any]] = [("", doc)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, dict):
            items: Any = value.items()
        elif isinstance(value, list):
            items = ((f"[{i}]", v) for i, v in enumerate(value))
        else:
            if isinstance(value, str) and not _is_unicode(value):
                raise ManifestError(where, "not valid Unicode (a lone surrogate)")
            continue
        for k, v in items:
            if isinstance(value, dict):
                shown = f'"{k}"' if not where and k.startswith("/") else k
                if not _is_unicode(k):
                    raise ManifestError(f"{where}.{shown}" if where else shown,
                                        "key is not valid Unicode (a lone surrogate)")
                child = f"{where}.{shown}" if where else shown
            else:
                child = where + k
            stack.append((child, v))


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True




def may_hold_surrogates(raw: bytes) -> bool:
    """Cheap first: two memchr-speed scans before the regex, so ordinary manifests pay nothing."""
    return (b"\\u" in raw or b"\xed" in raw) and _MAYBE_SURROGATE.search(raw) is not None
