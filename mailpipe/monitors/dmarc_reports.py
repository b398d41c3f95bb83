"""DMARC aggregate reports (RFC 7489 appendix C, and DMARCbis), from whatever wraps them.

``reports(data)`` takes raw XML, gzip, zip or the report e-mail itself (whose attachment is
any of those, whatever its declared type) and returns every report inside. Parsing is
tolerant of what real reporters send: any or no XML namespace, stray whitespace and tabs,
missing optional elements, upper-case results, several ``policy_evaluated`` blocks, a wrapper
element left unclosed around ``<feedback>`` (read up to ``</feedback>``), bytes that are not
in the declared encoding (replaced), and a gzip member followed by stray bytes (Mimecast).

It is also careful with what strangers send, one message being one budget: everything that
gzip and zip inflate for one message counts against ``_MAX_INFLATED`` together, however many
attachments, members and layers; XML is parsed as a stream, each ``<record>`` dropped once
read, with caps on records, on elements in all and on elements held at once; and the daemon
reads one message's reports at a time (``read_reports``, on a thread of its own). The stdlib
parser neither fetches external entities nor expands nested ones without limit (expat >= 2.4).
A report that cannot be read raises ``ReportError`` naming why.
"""

from __future__ import annotations

import asyncio
import codecs
import email
import email.message
import io
import re
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from xml.etree import ElementTree

from mailpipe.store import DmarcRow, Store

_MAX_INFLATED = 64 * 1024 * 1024  # bytes inflated per message, all attachments and members together
_MAX_RECORDS = 100_000
_MAX_ELEMENTS = 4_000_000  # in all, records included
_MAX_HELD = 10_000  # elements in memory at once: one record, the metadata, the policy
_CHUNK = 64 * 1024
_MAX_NUMBER = 2**63  # SQLite's and PostgreSQL's BIGINT
_GZIP, _ZIP = b"\x1f\x8b", b"PK\x03\x04"
_DECLARED = re.compile(rb"^\s*<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._:-]+)[\"']")
_KEPT = ("report_metadata", "policy_published")
_READER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dmarc")


class ReportError(ValueError):
    pass


@dataclass(frozen=True)
class Record:
    source_ip: str
    count: int
    disposition: str
    dkim_aligned: bool  # policy_evaluated: DKIM passed and aligned with the From domain
    spf_aligned: bool
    header_from: str


@dataclass(frozen=True)
class Report:
    org_name: str
    email: str
    report_id: str
    begin: int
    end: int
    domain: str
    policy: str
    records: tuple[Record, ...]

    @property
    def messages(self) -> int:
        return sum(record.count for record in self.records)

    def as_json(self) -> dict[str, object]:
        return {"org_name": self.org_name, "email": self.email, "report_id": self.report_id, "begin": self.begin,
                "end": self.end, "domain": self.domain, "policy": self.policy, "messages": self.messages,
                "records": [record.__dict__ for record in self.records]}


class _Budget:
    """What one message may inflate to, over all its attachments, members and layers."""

    def __init__(self, limit: int = _MAX_INFLATED):
        self.limit = limit
        self.left = limit

    def spend(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise ReportError(f"the reports in this message expand beyond {self.limit} bytes")


async def read_reports(data: bytes) -> list[Report]:
    """``reports`` for the daemon: one message at a time, on a thread of its own, so report
    mail never holds more than one budget of memory nor takes the threads triage runs on."""
    return await asyncio.get_running_loop().run_in_executor(_READER, reports, data)


def reports(data: bytes) -> list[Report]:
    return [parse(xml) for xml in documents(data)]


def documents(data: bytes, depth: int = 0, budget: _Budget | None = None) -> Iterator[Iterable[bytes]]:
    """The XML documents in ``data`` (each as chunks): itself, decompressed, or a message's
    attachments."""
    budget = budget or _Budget()
    if depth > 3:
        raise ReportError("reports nested too deeply")
    if data.startswith(_GZIP):
        inflated = _gunzip(data, budget)
        first = next(inflated, b"")
        if first.lstrip()[:1] == b"<":  # XML: parsed as it inflates, never whole in memory
            yield _chain(first, inflated)
        else:
            yield from documents(first + b"".join(inflated), depth + 1, budget)
    elif data.startswith(_ZIP):
        yield from (doc for inner in _unzip(data, budget) for doc in documents(inner, depth + 1, budget))
    elif data.lstrip()[:1] == b"<":
        yield (data,)
    else:
        message = email.message_from_bytes(data)
        found = False
        for part in message.walk():
            if part.is_multipart() or not _report_part(part):
                continue
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes) and payload:
                found = True
                yield from documents(payload, depth + 1, budget)
        if not found:
            raise ReportError("no XML, gzip or zip report in the data or its attachments")


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def _report_part(part: email.message.Message) -> bool:
    kind = part.get_content_type()
    name = (part.get_filename() or "").lower()
    return (kind in ("application/gzip", "application/x-gzip", "application/zip", "application/x-zip-compressed",
                     "text/xml", "application/xml")
            or name.endswith((".xml", ".gz", ".zip")) or kind == "application/octet-stream")


def _gunzip(data: bytes, budget: _Budget) -> Iterator[bytes]:
    """Inflates gzip members one chunk at a time, each counted against ``budget``; stray bytes
    after the last member (Mimecast ends its gzip with CRLF) are ignored, as gunzip does."""
    rest = data
    while rest[:2] == _GZIP:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        pending = rest
        try:
            while not inflater.eof:
                piece = inflater.decompress(pending, _CHUNK)
                pending = inflater.unconsumed_tail
                if not piece and not pending:
                    break
                budget.spend(len(piece))
                yield piece
        except zlib.error as exc:
            raise ReportError(f"broken gzip: {exc}") from None
        if not inflater.eof:
            raise ReportError("broken gzip: it ends before its last member does")
        rest = inflater.unused_data


def _unzip(data: bytes, budget: _Budget) -> Iterator[bytes]:
    """Each member, inflated as far as ``budget`` allows: the sizes a zip declares are not trusted."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        for info in archive.infolist():
            if info.is_dir():
                continue
            budget.spend(info.file_size)  # refuses a declared bomb before inflating any of it
            budget.left += info.file_size
            pieces = []
            with archive.open(info) as member:
                while piece := member.read(_CHUNK):
                    budget.spend(len(piece))
                    pieces.append(piece)
            yield b"".join(pieces)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError) as exc:
        raise ReportError(f"broken zip: {exc}") from None


def parse(xml: bytes | Iterable[bytes]) -> Report:
    """One report from its XML, given whole or as chunks, read as a stream up to ``</feedback>``."""
    parser = ElementTree.XMLPullParser(events=("start", "end"))
    stack: list[tuple[ElementTree.Element, int]] = []  # open elements, with how many were held before each
    feedback: ElementTree.Element | None = None
    records: list[Record] = []
    elements = held = 0
    root = ""
    try:
        for text in _text(xml if not isinstance(xml, (bytes, bytearray)) else (bytes(xml),)):
            parser.feed(text)
            for event, element in parser.read_events():
                name = _local(element.tag)
                if event == "start":
                    elements += 1
                    held += 1
                    if elements > _MAX_ELEMENTS or held > _MAX_HELD:
                        raise ReportError(f"more than {_MAX_ELEMENTS if elements > _MAX_ELEMENTS else _MAX_HELD} "
                                          "XML elements: not a report this daemon reads")
                    root = root or name
                    if feedback is None and name == "feedback":
                        feedback = element
                    stack.append((element, held - 1))
                    continue
                _, before = stack.pop()
                parent = stack[-1][0] if stack else None
                if element is feedback:
                    return _report(feedback, records)
                if parent is feedback and name == "record":
                    _strip_namespaces(element)
                    records.append(_record(element))
                    if len(records) > _MAX_RECORDS:
                        raise ReportError(f"more than {_MAX_RECORDS} records: not a report this daemon reads")
                elif parent is feedback and name in _KEPT:
                    continue
                elif any(open_element is feedback for open_element, _ in stack) and parent is not feedback:
                    continue  # inside a record or the metadata: dropped with it
                element.clear()  # a record read, or something a report does not have
                if parent is not None:
                    parent.remove(element)
                held = before
        parser.close()
    except ElementTree.ParseError as exc:
        raise ReportError(f"not well-formed XML: {exc}") from None
    raise ReportError(f"root element is <{root}>, not <feedback>")


def _text(chunks: Iterable[bytes]) -> Iterator[str]:
    """The document as text in the encoding it declares (UTF-8 by default), bytes that are not
    replaced, so a reporter's stray Latin-1 byte in a domain does not lose the whole report."""
    decoder = None
    head = b""
    for chunk in chunks:
        if decoder is None:
            head += chunk
            if len(head) < 1024:
                continue
            decoder, chunk = _decoder(head), head
        yield decoder.decode(chunk)
    if decoder is None:
        decoder = _decoder(head)
        yield decoder.decode(head)
    yield decoder.decode(b"", final=True)


def _decoder(head: bytes) -> codecs.IncrementalDecoder:
    if head.startswith(codecs.BOM_UTF8):
        encoding = "utf-8-sig"
    elif head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    else:
        declared = _DECLARED.match(head)
        encoding = declared[1].decode("ascii") if declared else "utf-8"
    try:
        return codecs.getincrementaldecoder(encoding)(errors="replace")
    except LookupError:
        raise ReportError(f"unknown XML encoding {encoding!r}") from None


def _report(feedback: ElementTree.Element, records: list[Record]) -> Report:
    _strip_namespaces(feedback)
    metadata = feedback.find("report_metadata")
    published = feedback.find("policy_published")
    if metadata is None or published is None:
        raise ReportError("report_metadata or policy_published missing")
    return Report(org_name=_text_of(metadata, "org_name"), email=_text_of(metadata, "email"),
                  report_id=_text_of(metadata, "report_id"), begin=_int(metadata, "date_range/begin"),
                  end=_int(metadata, "date_range/end"), domain=_text_of(published, "domain").lower(),
                  policy=_text_of(published, "p").lower(), records=tuple(records))


def _local(tag: object) -> str:
    return tag.rpartition("}")[2] if isinstance(tag, str) else ""


def _record(element: ElementTree.Element) -> Record:
    evaluated = element.findall("row/policy_evaluated")
    results = [(_text_of(e, "disposition").lower(), _text_of(e, "dkim").lower(), _text_of(e, "spf").lower())
               for e in evaluated] or [("", "", "")]
    disposition, dkim, spf = results[0]
    return Record(source_ip=_text_of(element, "row/source_ip"), count=_int(element, "row/count"),
                  disposition=disposition or "none", dkim_aligned=dkim == "pass", spf_aligned=spf == "pass",
                  header_from=_text_of(element, "identifiers/header_from").lower())


def _strip_namespaces(root: ElementTree.Element) -> None:
    for element in root.iter():
        if isinstance(element.tag, str) and "}" in element.tag:
            element.tag = element.tag.rpartition("}")[2]


def _text_of(element: ElementTree.Element, path: str) -> str:
    found = element.find(path)
    return (found.text or "").strip() if found is not None else ""


def _int(element: ElementTree.Element, path: str) -> int:
    """A count or a timestamp: a whole number from 0 up to what a database integer holds."""
    value = _text_of(element, path)
    try:
        number = int(float(value)) if value else 0
    except (ValueError, OverflowError):  # "x", "nan", "1e999"
        raise ReportError(f"{path}: {value!r} is not a number") from None
    if not 0 <= number < _MAX_NUMBER:
        raise ReportError(f"{path}: {value!r} is out of range")
    return number


def store_report(store: Store, report: Report, at: float) -> bool:
    """Keeps the report in the store (where the daemon's gauges come from); False if it was
    there already."""
    rows = [DmarcRow(r.source_ip, r.count, r.dkim_aligned, r.spf_aligned, r.disposition) for r in report.records]
    return store.record_dmarc_report(reporter=report.org_name or report.email, report_id=report.report_id,
                                     domain=report.domain, begin=report.begin, end=report.end, records=rows, at=at)
