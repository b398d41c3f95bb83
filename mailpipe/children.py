"""Python processes of the daemon's own (the urgency model's reader and its fits): started with
the daemon's own code, answering on a channel of their own.

Why not ``python -m``: that finds mailpipe through the child's own ``sys.path``, which need not be
the daemon's (a checkout beside an installed copy, an editable install's import hook), and
whatever an import prints on stdout would be read as an answer. Here the child runs isolated
(``-I``: no PYTHON* variables, no user site, not the current directory) and without ``site``
(``-S``: no ``.pth`` file runs), takes the daemon's ``sys.path`` (and the directory the daemon's
own mailpipe came from) as its own, and moves its stdout aside to answer on before it imports
anything: a stray print goes to stderr, the daemon's log.
The same path is not the same code once mailpipe is upgraded in place (``make install``) before
the daemon is restarted: a model pickled by the new code would be read by the old classes. So
the child first compares a digest of the package's source files with the one the daemon took at
its start, and refuses to run new code for an old daemon (exit status ``UPGRADED``).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import signal
import sys
from pathlib import Path

import mailpipe

UPGRADED = 75  # EX_TEMPFAIL: the daemon must be restarted to use the code on disk

_BOOTSTRAP = """\
import json, os, sys
answers = os.dup(1)
os.dup2(2, 1)
sys.path[:] = json.loads(sys.argv[1])
from mailpipe import children
children.run(sys.argv[2], sys.argv[3], answers)
"""


def _source_digest() -> str:
    """A digest of the package's source files as they are on disk now."""
    root = Path(mailpipe.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


SOURCE = _source_digest()  # taken when the daemon (or a child) starts


def run(source: str, entry: str, answers: int) -> None:
    """The child's side, once its path is the daemon's: ``entry`` called with ``answers``, unless
    the code on disk is not the daemon's. A SIGTERM or Ctrl-C sent to the service's whole group
    is the daemon's to act on: it ends its children itself, after it has drained its own work."""
    if source != SOURCE:
        print("mailpipe: the code on disk is not the running daemon's (upgraded in place?): restart it",
              file=sys.stderr)
        sys.exit(UPGRADED)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    module, _, function = entry.partition(":")
    getattr(importlib.import_module(module), function)(answers)


def command(entry: str) -> list[str]:
    """The command that runs ``entry`` ("package.module:function", called with the file
    descriptor to answer on, the child's original stdout) in a new Python process."""
    own = str(Path(mailpipe.__file__).resolve().parent.parent)
    path = sys.path if own in sys.path else [*sys.path, own]
    return [sys.executable, "-I", "-S", "-c", _BOOTSTRAP, json.dumps(path), SOURCE, entry]
