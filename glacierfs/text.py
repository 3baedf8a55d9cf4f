"""Text that came from a server, made safe to print: :func:`shown`.

Archive ids, descriptions, decoded paths, job ids and the service's error messages are
whatever a server (or another tool's upload) chose. Printed raw, an ESC sequence in one of
them could rewrite the user's terminal, a newline could forge an output line and a TAB
could shift a field. Every character that is not printable (C0 and C1 controls, DEL,
format characters such as bidi overrides, line and paragraph separators, unassigned code
points, lone surrogates) is shown as a Python-style escape (``\\x1b``, ``\\u202e``,
``\\udcff``); everything else, non-ASCII letters included, is shown as is.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(ch: str) -> str:
    named = _NAMED.get(ch)
    if named:
        return named
    n = ord(ch)
    if n < 0x100:
        return f"\\x{n:02x}"
    if n < 0x10000:
        return f"\\u{n:04x}"
    return f"\\U{n:08x}"


def shown(value: object) -> str:
    """``value`` as text safe for a terminal and for one field of a line-oriented output."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)
