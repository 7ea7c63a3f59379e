"""Names LineGuard did not choose (file names, recipes, labels) written safely into reports and terminals.

One place for the escaping every report shares -- the ingest and evaluation reports, the
monitoring report, the terminal -- so a hostile file name renders as text everywhere.
"""

from __future__ import annotations

import html
import re

# C0/C1 controls (ESC starts terminal escape sequences) and the bidi overrides that make
# text read differently from what it is ("Trojan source"): shown as \xNN / \uNNNN.
_UNSAFE_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~-])")


def visible(text: object) -> str:
    """``text`` with control and bidi characters shown as escapes, newlines and tabs as ``\\n`` / ``\\t``."""
    s = str(text).replace("\n", "\\n").replace("\t", "\\t")
    return _UNSAFE_CHARS.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                             else f"\\u{ord(m.group()):04x}", s)


def escape_markdown(text: object) -> str:
    """Untrusted text (file names, recipes) as literal Markdown: no markup, no HTML, no table breaks."""
    s = _MD_SPECIAL.sub(r"\\\1", visible(text))
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def code_span(text: object, in_table: bool = False) -> str:
    """Untrusted text as one Markdown code span; the fence is longer than any backtick run inside.

    ``in_table`` also escapes ``|`` (GFM reads ``\\|`` as a pipe inside a table cell, even in code).
    """
    s = visible(text)
    longest = max((len(run) for run in re.findall(r"`+", s)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if s.startswith("`") or s.endswith("`") or longest else ""
    if in_table:
        s = s.replace("|", "\\|")
    return f"{fence}{pad}{s}{pad}{fence}"


def escape_html(text: object) -> str:
    """Untrusted text for HTML element content or a quoted attribute."""
    return html.escape(visible(text), quote=True)


def terminal_text(text: object) -> str:
    """Untrusted text for the terminal through rich: no escape sequences, no rich markup."""
    from rich.markup import escape

    return escape(visible(text))
