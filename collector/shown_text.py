"""Span content as the operator sees it: control characters shown escaped, never passed on raw.

Span content is written by whoever talks to the agent. ESC / CSI sequences in it would drive the
operator's terminal (``candidates``, ``show``, ``query``), and in the review page they are parse errors
that a browser shows as nothing at all and that drive the terminal of whoever reads the file with
``cat`` or ``less``. Both show them as the escapes Python writes (``\\x1b``), so a reviewer sees they are there.
"""

from __future__ import annotations

#: Control characters (C0 but newline and tab, DEL, C1) -> the escapes Python writes.
SHOWN_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0)) if chr(c) not in "\n\t"}


def printable(text: str) -> str:
    """``text`` with its control characters shown escaped (``\\x1b``); newlines and tabs kept."""
    return text.translate(SHOWN_CONTROLS)
