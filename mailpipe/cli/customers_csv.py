"""Reading a customers CSV for ``mailpipe customers import``, refusing what is not one.

The file is whatever a CRM exported: it must be UTF-8 (a BOM is fine), have a header row with
``address`` and only known columns, the same number of fields in every row as in the header,
no field over ``MAX_FIELD`` characters and no control characters (a NUL in a name would reach
the X-Mailpipe-Customer header and the triage card). The first problem found stops the import
before anything is written, named by row (the file's line) and column, so the operator fixes
the file and imports it again. What values mean (addresses, VIP flags) is the command's to judge.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

FIELDS = ("address", "name", "company", "plan", "vip", "phone", "notes")
MAX_FIELD = 4096  # characters: a note, never a document
_CONTROLS = re.compile("[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f-\\x9f]")  # tabs and line breaks are a note's own


class BadFile(ValueError):
    """The file cannot be imported as it is; the message names row and column."""


def read(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line, row) for every data row, its values as written."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise BadFile(f"{path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x}); export the file as UTF-8") from None
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))  # so the size check below names the column
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, [])
    if "address" not in header or not set(header) <= set(FIELDS) or len(set(header)) != len(header):
        raise BadFile(f"{path}:1: header must have address and only {', '.join(FIELDS)}, each once")
    rows = []
    try:
        for fields in reader:
            line = reader.line_num
            if not any(field.strip() for field in fields):
                continue
            if len(fields) != len(header):
                raise BadFile(f"{path}:{line}: {len(fields)} fields where the header has {len(header)}")
            for column, value in zip(header, fields, strict=True):
                _check(path, line, column, value)
            rows.append((line, dict(zip(header, fields, strict=True))))
    except csv.Error as exc:
        raise BadFile(f"{path}:{reader.line_num}: {exc}") from None
    return rows


def _check(path: Path, line: int, column: str, value: str) -> None:
    if len(value) > MAX_FIELD:
        raise BadFile(f"{path}:{line}: column {column}: {len(value)} characters, at most {MAX_FIELD}")
    if found := _CONTROLS.search(value):
        raise BadFile(f"{path}:{line}: column {column}: control character U+{ord(found[0]):04X}")
