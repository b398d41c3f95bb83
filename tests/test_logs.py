"""Log lines: one event per line, logfmt, with the fields the caller gave."""

from __future__ import annotations

import logging

from mailpipe.logs import LogfmtFormatter


def record(message: str, **fields: object) -> logging.LogRecord:
    entry = logging.LogRecord("mailpipe.test", logging.WARNING, __file__, 1, message, (), None)
    entry.__dict__.update(fields)
    return entry


def test_a_line_carries_level_event_and_fields() -> None:
    line = LogfmtFormatter(journald=False).format(record("queued", queue_id="06H0", size=12))
    assert line.startswith("ts=")
    assert line.endswith("level=warning event=queued queue_id=06H0 size=12")


def test_values_with_spaces_quotes_or_newlines_stay_on_one_line() -> None:
    line = LogfmtFormatter(journald=False).format(record("deferred", reason='451 "try"\r\nlater'))
    assert "\n" not in line
    assert 'reason="451 \\"try\\"\\r\\nlater"' in line


def test_under_journald_lines_start_with_the_syslog_priority() -> None:
    assert LogfmtFormatter(journald=True).format(record("refused")).startswith("<4>level=warning ")
