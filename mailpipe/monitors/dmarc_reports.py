"""DMARC aggregate reports (RFC 7489 appendix C, and DMARCbis), from whatever wraps them.

``reports(data)`` takes raw XML, gzip, zip or the report e-mail itself (whose attachment is
any of those, whatever its declared type) and returns every report inside. Parsing is
tolerant of what real reporters send: any or no XML namespace, stray whitespace and tabs,
missing optional elements, upper-case results, several ``policy_evaluated`` blocks. It is also
careful with what strangers send: decompressed sizes are capped (a zip bomb is refused, not
inflated) and the stdlib parser neither fetches external entities nor expands nested ones
without limit (expat >= 2.4). A report that cannot be read raises ``ReportError`` naming why.
"""

from __future__ import annotations

import email
import email.message
import gzip
import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from xml.etree import ElementTree

from mailpipe.store import DmarcRow, Store

_MAX_XML = 64 * 1024 * 1024
_GZIP, _ZIP = b"\x1f\x8b", b"PK\x03\x04"


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


def reports(data: bytes) -> list[Report]:
    return [parse(xml) for xml in documents(data)]


def documents(data: bytes, depth: int = 0) -> Iterator[bytes]:
    """The XML documents in ``data``: itself, decompressed, or a message's attachments."""
    if depth > 3:
        raise ReportError("reports nested too deeply")
    if data.startswith(_GZIP):
        yield from documents(_gunzip(data), depth + 1)
    elif data.startswith(_ZIP):
        yield from (doc for inner in _unzip(data) for doc in documents(inner, depth + 1))
    elif data.lstrip()[:1] == b"<":
        yield data
    else:
        message = email.message_from_bytes(data)
        found = False
        for part in message.walk():
            if part.is_multipart() or not _report_part(part):
                continue
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes) and payload:
                found = True
                yield from documents(payload, depth + 1)
        if not found:
            raise ReportError("no XML, gzip or zip report in the data or its attachments")


def _report_part(part: email.message.Message) -> bool:
    kind = part.get_content_type()
    name = (part.get_filename() or "").lower()
    return (kind in ("application/gzip", "application/x-gzip", "application/zip", "application/x-zip-compressed",
                     "text/xml", "application/xml")
            or name.endswith((".xml", ".gz", ".zip")) or kind == "application/octet-stream")


def _gunzip(data: bytes) -> bytes:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as handle:
            out = handle.read(_MAX_XML + 1)
    except (OSError, EOFError) as exc:
        raise ReportError(f"broken gzip: {exc}") from None
    if len(out) > _MAX_XML:
        raise ReportError(f"gzip expands beyond {_MAX_XML} bytes")
    return out


def _unzip(data: bytes) -> list[bytes]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [info for info in archive.infolist() if not info.is_dir()]
        if sum(info.file_size for info in members) > _MAX_XML:
            raise ReportError(f"zip expands beyond {_MAX_XML} bytes")
        return [archive.read(info) for info in members]
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ReportError(f"broken zip: {exc}") from None


def parse(xml: bytes) -> Report:
    try:
        root = ElementTree.fromstring(xml.strip())
    except ElementTree.ParseError as exc:
        raise ReportError(f"not well-formed XML: {exc}") from None
    _strip_namespaces(root)
    if root.tag != "feedback":
        raise ReportError(f"root element is <{root.tag}>, not <feedback>")
    metadata = root.find("report_metadata")
    published = root.find("policy_published")
    if metadata is None or published is None:
        raise ReportError("report_metadata or policy_published missing")
    records = tuple(_record(element) for element in root.findall("record"))
    return Report(org_name=_text(metadata, "org_name"), email=_text(metadata, "email"),
                  report_id=_text(metadata, "report_id"), begin=_int(metadata, "date_range/begin"),
                  end=_int(metadata, "date_range/end"), domain=_text(published, "domain").lower(),
                  policy=_text(published, "p").lower(), records=records)


def _record(element: ElementTree.Element) -> Record:
    evaluated = element.findall("row/policy_evaluated")
    results = [(_text(e, "disposition").lower(), _text(e, "dkim").lower(), _text(e, "spf").lower())
               for e in evaluated] or [("", "", "")]
    disposition, dkim, spf = results[0]
    return Record(source_ip=_text(element, "row/source_ip"), count=_int(element, "row/count"),
                  disposition=disposition or "none", dkim_aligned=dkim == "pass", spf_aligned=spf == "pass",
                  header_from=_text(element, "identifiers/header_from").lower())


def _strip_namespaces(root: ElementTree.Element) -> None:
    for element in root.iter():
        if isinstance(element.tag, str) and "}" in element.tag:
            element.tag = element.tag.rpartition("}")[2]


def _text(element: ElementTree.Element, path: str) -> str:
    found = element.find(path)
    return (found.text or "").strip() if found is not None else ""


def _int(element: ElementTree.Element, path: str) -> int:
    value = _text(element, path)
    try:
        return int(float(value)) if value else 0
    except ValueError:
        raise ReportError(f"{path}: {value!r} is not a number") from None


def store_report(store: Store, report: Report, at: float) -> bool:
    """Keeps the report in the store (where the daemon's gauges come from); False if it was
    there already."""
    rows = [DmarcRow(r.source_ip, r.count, r.dkim_aligned, r.spf_aligned, r.disposition) for r in report.records]
    return store.record_dmarc_report(reporter=report.org_name or report.email, report_id=report.report_id,
                                     domain=report.domain, begin=report.begin, end=report.end, records=rows, at=at)
