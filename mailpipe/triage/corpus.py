"""Labelled mail the urgency model learns from: TOML files of ``[[mail]]`` entries.

The shipped corpus is ``rules/corpus/*.toml``; a desk adds its own files in
``triage.corpus_overrides`` (and its agents' corrections come from the store). An entry:

    [[mail]]
    level = "critical"            # critical, high, normal or low: what a support lead would assign
    subject = "顧客リストが消えました"
    body = "昨日まであった顧客リストが全て消えてしまいました。"
    encoding = "iso-2022-jp"      # how a test builds it into a real message (html: body is markup)
    sender = "a@example.jp"       # optional, and optional headers = { ... }

The text read is what triage reads of a real message: markup made text, quoted history and the
signature cut. A broken file is refused whole, naming file, entry and reason, so a reload keeps
the model already running.
"""

from __future__ import annotations

import tomllib
from email.header import Header
from pathlib import Path
from typing import Any

from mailpipe.message import html, quotes, reply_subject
from mailpipe.triage.conditions import LEVELS
from mailpipe.triage.context import document
from mailpipe.triage.model import Example, ModelError

_KEYS = frozenset({"level", "subject", "body", "encoding", "sender", "headers", "note"})


def files(directories: list[Path]) -> list[Path]:
    """The corpus files of the directories, in the order they are read."""
    return [path for directory in directories for path in sorted(directory.glob("*.toml"))]


def load(directories: list[Path]) -> list[Example]:
    """Every entry of every ``*.toml`` in the directories, in order; all problems at once."""
    return [example for _, example in entries(files(directories))]


def entries(paths: list[Path]) -> list[tuple[dict[str, Any], Example]]:
    """Each entry of the files with the example it makes; a broken file refuses the whole set."""
    problems: list[str] = []
    found = [pair for path in paths for pair in _file(path, problems)]
    if problems:
        raise ModelError(problems)
    return found


def entry_document(entry: dict[str, Any]) -> str:
    """The text triage would read of the message this entry describes."""
    body = str(entry.get("body", ""))
    if entry.get("encoding") == "html":
        body = html.to_text(body)
    subject = str(entry.get("subject", ""))
    # As a parsed message's ``is_reply``: the subject, or In-Reply-To/References among its headers.
    answering = reply_subject(subject) or any(
        str(name).lower() in ("in-reply-to", "references") for name in entry.get("headers", {}))
    return document(subject, quotes.new_text(body, subject, answering), answering)


def message(entry: dict[str, Any]) -> bytes:
    """The entry as a real message (UTF-8; markup as text/html), for scoring it with the rules."""
    markup = entry.get("encoding") == "html"
    lines = [f"From: <{entry.get('sender', 'customer@example.org')}>", "To: support@example.test",
             f"Subject: {Header(str(entry.get('subject', '')), 'utf-8').encode()}",
             "Message-ID: <labelled@mailpipe>", "MIME-Version: 1.0",
             f"Content-Type: text/{'html' if markup else 'plain'}; charset=utf-8", "Content-Transfer-Encoding: 8bit"]
    lines += [f"{name}: {value}" for name, value in entry.get("headers", {}).items()]
    body = str(entry.get("body", "")).replace("\r\n", "\n").replace("\n", "\r\n")
    return ("\r\n".join(lines) + "\r\n\r\n" + body + "\r\n").encode()


def _file(path: Path, problems: list[str]) -> list[tuple[dict[str, Any], Example]]:
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: cannot read: {exc}")
        return []
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"{path}: TOML syntax: {exc}")
        return []
    entries = data.get("mail", [])
    if not isinstance(entries, list):
        problems.append(f"{path}: 'mail' must be an array of tables ([[mail]])")
        return []
    examples = []
    for number, entry in enumerate(entries, start=1):
        where = f"{path}: mail #{number}"
        if not isinstance(entry, dict):
            problems.append(f"{where}: not a table")
            continue
        unknown = sorted(set(entry) - _KEYS)
        if unknown:
            problems.append(f"{where}: unknown keys {', '.join(unknown)}")
        if entry.get("level") not in LEVELS:
            problems.append(f"{where}: level {entry.get('level')!r} is not one of {', '.join(LEVELS)}")
            continue
        if not isinstance(entry.get("subject", ""), str) or not isinstance(entry.get("body", ""), str):
            problems.append(f"{where}: subject and body must be strings")
            continue
        examples.append((entry, Example(entry_document(entry), entry["level"], f"{path}#{number}")))
    return examples
