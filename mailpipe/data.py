"""Where mailpipe's shipped policy files are: rules/ and monitors/.

In a wheel they are package data under ``mailpipe/_data/``; in a source checkout (and an
editable install) they are the repository's top-level directories.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def shipped(name: str) -> Path:
    packaged = Path(str(resources.files("mailpipe"))) / "_data" / name
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / name
