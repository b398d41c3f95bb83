"""One event per line on stderr, as logfmt, for journald and for grep.

Each line is ``level=info event=queued queue_id=… key=value …``. Under systemd (JOURNAL_STREAM
set) lines start with a ``<N>`` syslog priority so journald files them at the right level and
skips its own timestamp duplication; elsewhere they start with an ISO timestamp. Fields come
from ``extra=`` on the logging call, so modules log plain ``logging`` calls and never format.
"""

from __future__ import annotations

import logging
import os
import sys
import time

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def _quote(value: object) -> str:
    text = str(value)
    if text and not any(ch in text for ch in ' ="\\\n\r\t'):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


class LogfmtFormatter(logging.Formatter):
    def __init__(self, journald: bool):
        super().__init__()
        self._journald = journald

    def format(self, record: logging.LogRecord) -> str:
        fields = [f"level={record.levelname.lower()}", f"event={_quote(record.getMessage())}"]
        fields += [f"{key}={_quote(value)}" for key, value in record.__dict__.items() if key not in _STANDARD]
        if record.exc_info:
            fields.append(f"error={_quote(self.formatException(record.exc_info))}")
        line = " ".join(fields)
        if self._journald:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{line}"
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        return f"ts={stamp}.{int(record.msecs):03d} {line}"


def setup(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter(journald=bool(os.environ.get("JOURNAL_STREAM"))))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiosmtpd logs every session at INFO; our own events carry what operators need.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
