"""Quoting untrusted text (key names, file content, paths from a checkpoint or a published repo)
in messages, reports and cards: control characters escaped, length and list size bounded.

A key name can carry ANSI escapes or a newline followed by a fake `6 passed`; a hostile file can hold
200 000 keys. Everything a message quotes from a file goes through `quote` or `listing`.
"""

from __future__ import annotations

from typing import Iterable

MAX_CHARS = 200  # one quoted item
MAX_ITEMS = 10  # items of a list in a message: the count, then the first few

# C0 and C1 controls, DEL, and the Unicode line/paragraph separators and bidi overrides that
# reorder or break what a terminal or a rendered page shows
_UNSAFE = {*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}


def quote(text: object, limit: int = MAX_CHARS) -> str:
    """`text` with every control character escaped (`\\x1b`, `\\n`, `\\u202e`) and cut to `limit`
    characters (marked with `...(N chars)`). Printable text is unchanged."""
    text = str(text)
    cut = len(text) > limit
    shown = text[:limit]
    out = []
    for ch in shown:
        code = ord(ch)
        if code in _UNSAFE:
            out.append({0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}.get(code) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"))
        elif ch == "\\":
            out.append("\\\\")
        else:
            out.append(ch)
    return "".join(out) + (f"...({len(text)} chars)" if cut else "")


def listing(items: Iterable[object], limit: int = MAX_ITEMS, sep: str = ", ", count: bool = True) -> str:
    """`N: a, b, c, ... (N - limit more)`: the count, then the first `limit` items, each quoted
    (`count=False`: without the leading count, for a sentence that says it)."""
    items = list(items)
    shown = sep.join(quote(item) for item in items[:limit])
    more = f"{sep}... ({len(items) - limit} more)" if len(items) > limit else ""
    return f"{len(items)}: {shown}{more}" if count else f"{shown}{more}"


def error_text(e: BaseException, limit: int = 600) -> str:
    """An exception for a message: its type and its text on one line, quoted (`converters.quote`):
    bounded with a visible mark, never cut into a word that reads as something else."""
    return f"{type(e).__name__}: {quote(' '.join(str(e).split()), limit)}"
