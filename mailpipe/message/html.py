"""HTML-only mail as the text an agent would read: block elements become line breaks, table cells
stand apart, scripts and styles vanish. libxml2's HTML parser (lxml): tolerant of any markup
and linear in it; the standard library's html.parser (of Python 3.11.7) rescanned unclosed
constructs, so 40 KB of ``<a `` took 22 s."""

from __future__ import annotations

import re
import threading

from lxml import etree

_BLOCKS = frozenset({"p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "blockquote",
                     "pre", "hr", "section", "article", "header", "footer", "ul", "ol", "dl", "dt", "dd"})
# Table cells sit side by side: a space between them, or "11/26" and "46,250" read as "11/2646,250".
_CELLS = frozenset({"td", "th"})
_HIDDEN = frozenset({"script", "style", "head", "title", "template"})
_EMPTY = frozenset({"br", "hr"})  # one break, not one at each end: libxml2 closes them at once
_TAG = re.compile(r"<[^<>]*>")  # the fallback's: a "<" without its ">" is not scanned to the end again
_SPACES = re.compile(r"[ \t]+")
_BLANK_LINES = re.compile(r"\n{3,}")
# One parser a thread: lxml lets one parser parse in one thread at a time, and mail is parsed on the
# event loop, in the store's threads and by training alike.
_PARSERS = threading.local()


def _parser() -> etree.HTMLParser:
    """The text is given as UTF-8 whatever a <meta> says: the MIME part's charset already decoded
    it. huge_tree lifts libxml2's nesting limit of 256 (the text after it was dropped) to 2,048."""
    parser = getattr(_PARSERS, "parser", None)
    if parser is None:
        parser = _PARSERS.parser = etree.HTMLParser(encoding="utf-8", recover=True, no_network=True,
                                                    remove_comments=True, remove_pis=True, huge_tree=True,
                                                    default_doctype=False)
    return parser


def to_text(markup: str) -> str:
    try:
        root = etree.fromstring(markup.encode("utf-8", "replace"), _parser()) if markup.strip() else None
    except (etree.LxmlError, ValueError):  # libxml2 recovers from nearly anything; a stage must never fail on markup
        return _TAG.sub(" ", markup).strip()
    if root is None:
        return ""
    parts: list[str] = []
    quote = 0
    walker = etree.iterwalk(root, events=("start", "end"))
    for event, element in walker:
        tag = element.tag if isinstance(element.tag, str) else ""
        if event == "start":
            if tag in _HIDDEN:
                walker.skip_subtree()
                continue
            quote += tag == "blockquote"
            parts.append(_break(tag))
            parts.append(_quoted(element.text or "", quote))
        else:
            if tag not in _HIDDEN:
                quote -= tag == "blockquote"
                parts.append("" if tag in _EMPTY else _break(tag))
            parts.append(_quoted(element.tail or "", quote))
    text = "".join(parts).replace("\xa0", " ")
    lines = [_SPACES.sub(" ", line).strip() for line in text.splitlines()]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def _break(tag: str) -> str:
    return "\n" if tag in _BLOCKS else " " if tag in _CELLS else ""


def _quoted(data: str, quote: int) -> str:
    """Quoted history in HTML replies, marked the way plain text is, so that it is set apart."""
    if not quote or not data:
        return data
    return "\n".join("> " + line if line.strip() else line for line in data.split("\n"))
