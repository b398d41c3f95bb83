"""``mailpipe replies explain``: what a remote server's reply means, from the reply catalog.

Paste a reply as it was seen — in a log, a bounce or a customer's screenshot, one line or a
multi-line ``550-5.7.26 …`` answer — and get the provider, the class, the meaning, what to do,
and the source and date of the catalog entry that matched, like ``rspamc`` for a message. The
provider is the one ``--provider`` names or ``--mx`` recognises, else one named in the text (a
host or address), else the provider of the first entry of its own that matches. ``-`` reads
standard input: one reply a line, ``NNN-`` continuation lines joined to the reply they begin.
Reads the shipped catalog and the site's overrides (``outbound.replies_overrides``). Exit
status 1 when a reply from a known provider is unknown to the catalog.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from mailpipe import config as configuration
from mailpipe.cli.common import Commands, json_line
from mailpipe.outbound.classify import OTHER_PROVIDER, Catalog, Classification, configured, split_reply
from mailpipe.providers import ALIASES

_HOST = re.compile(r"\b[a-z0-9-]+(?:\.[a-z0-9-]+)+\b", re.IGNORECASE)
_CONTINUED = re.compile(r"^\s*[2-5]\d\d-")


def replies(commands: Commands, common: argparse.ArgumentParser) -> None:
    family = commands.add_parser("replies", help="the reply catalog").add_subparsers(metavar="ACTION")
    explain = family.add_parser("explain", parents=[common], help="what a remote server's reply means")
    which = explain.add_mutually_exclusive_group()
    which.add_argument("--mx", metavar="HOST", help="the MX host that answered (names the provider)")
    which.add_argument("--provider", metavar="NAME", help="the provider (google, gmail, yahoo, outlook, docomo, …)")
    explain.add_argument("--json", action="store_true", help="one JSON object per reply")
    explain.add_argument("text", nargs="+", metavar="TEXT", help="the reply as seen, or - for one a line on stdin")
    explain.set_defaults(run=_explain)


@dataclass(frozen=True)
class Explained:
    reply: str
    code: int | None
    provider: str
    found_by: str  # how the provider was decided
    classification: Classification


def _explain(args: argparse.Namespace) -> int:
    catalog = configured(configuration.load(args.config).outbound.replies_overrides_path)
    named = _named_provider(catalog, args)
    texts = _stdin_replies() if args.text == ["-"] else [" ".join(args.text)]
    unknown = False
    for text in texts:
        explained = explain(catalog, text, *named)
        unknown |= explained.classification.unknown
        if args.json:
            json_line(_document(explained))
        else:
            _print(explained)
    return 1 if unknown else 0


def _named_provider(catalog: Catalog, args: argparse.Namespace) -> tuple[str | None, str]:
    if args.provider:
        name = ALIASES.get(args.provider.strip().lower(), args.provider.strip().lower())
        if name not in catalog.provider_names:
            raise RuntimeError(f"replies: unknown provider {args.provider!r} "
                               f"(one of {', '.join(sorted({*ALIASES, *catalog.provider_names}))})")
        return name, "--provider"
    if args.mx:
        return catalog.provider(args.mx), f"--mx {args.mx}"
    return None, ""


def explain(catalog: Catalog, reply: str, provider: str | None = None, found_by: str = "") -> Explained:
    """One reply explained; without a provider, the text's own hosts or the catalog name one."""
    code, text = split_reply(reply)
    if provider is None:
        provider, found_by = _provider_in(catalog, code, text)
    shown = text if code is None else f"{code} {text}"
    return Explained(shown, code, provider, found_by, catalog.classify(provider, code, text))


def _provider_in(catalog: Catalog, code: int | None, text: str) -> tuple[str, str]:
    for host in _HOST.findall(text.replace("@", " ")):
        found = catalog.provider(host)
        if found != OTHER_PROVIDER:
            return found, f"{host} in the text"
    for entry in catalog.entries:
        if entry.provider != "*" and catalog.classify(entry.provider, code, text).entry is entry:
            return entry.provider, "the catalog entry that matches"
    return OTHER_PROVIDER, "no provider named"


def _stdin_replies() -> Iterator[str]:
    """One reply a line; ``550-…`` lines continue into the next, as a server sends them."""
    pending: list[str] = []
    for line in sys.stdin:
        if not line.strip():
            continue
        pending.append(line.rstrip("\r\n"))
        if not _CONTINUED.match(line):
            yield "\n".join(pending)
            pending = []
    if pending:
        yield "\n".join(pending)


def _document(explained: Explained) -> dict[str, object]:
    entry = explained.classification.entry
    return {"reply": explained.reply, "code": explained.code, "provider": explained.provider,
            "provider_from": explained.found_by, "class": explained.classification.klass,
            "meaning": _meaning(explained), "action": entry.action if entry else _action(explained),
            "source": entry.source if entry else "", "since": entry.since if entry else "",
            "pattern": entry.pattern.pattern if entry else None}


def _meaning(explained: Explained) -> str:
    if explained.classification.entry is not None:
        return explained.classification.meaning
    if explained.classification.unknown:
        return (f"A text the reply catalog does not know from {explained.provider}: possibly a new rule of "
                f"the provider")
    return "No catalog entry: the class its enhanced status code (RFC 3463) implies"


def _action(explained: Explained) -> str:
    if explained.classification.unknown:
        return ("Find what it means (the provider's postmaster pages), then add an entry with this text as its "
                "example, its source and date to a file in the reply catalog's override directory and reload")
    return "Retry later if temporary (4xx); otherwise read the text and the recipient's domain"


def _print(explained: Explained) -> None:
    document = _document(explained)
    print(f"Reply:    {explained.reply}")
    print(f"Provider: {explained.provider} ({explained.found_by})")
    print(f"Class:    {document['class']}")
    print(f"Meaning:  {document['meaning']}")
    print(f"Action:   {document['action']}")
    if document["source"]:
        print(f"Source:   {document['source']} ({document['since']})")
    print()


EXAMPLES = {
    "replies explain": (
        "mailpipe replies explain '550-5.7.26 This mail has been blocked because the sender is unauthenticated.'",
        "mailpipe replies explain --mx mta5.am0.yahoodns.net '421 4.7.0 [TSS04] Messages temporarily deferred'",
        "grep 'status=bounced' /var/log/mail.log | sed 's/.*said: //' | mailpipe replies explain --json -"),
}
