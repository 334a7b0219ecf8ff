"""Text from users' files (image ids, paths) shown where characters are interpreted: terminals,
figure labels, markup. Data keeps the text verbatim; these give a faithful, inert rendering."""

from __future__ import annotations

__all__ = ["printable"]


def printable(text: object) -> str:
    """``text`` with every non-printable character (control characters, NUL, line breaks, DEL, and
    Unicode's format characters) written as its Python escape (``\\x00``, ``\\n``, ``\\u202e``):
    one line, nothing a terminal or a markup parser acts on."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
