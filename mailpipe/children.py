"""Python processes of the daemon's own (the urgency model's reader and its fits): started with
the daemon's own code, answering on a channel of their own.

Why not ``python -m``: that finds mailpipe through the child's own ``sys.path``, which need not be
the daemon's (a checkout beside an installed copy, an editable install's import hook, an upgrade
in place while the daemon runs), and whatever an import prints on stdout would be read as an
answer. Here the child runs isolated (``-I``: no PYTHON* variables, no user site, not the
current directory) and without ``site`` (``-S``: no ``.pth`` file runs), takes the directory the
daemon's own mailpipe came from and the daemon's ``sys.path`` as its own, and moves its stdout
aside to answer on before it imports anything: a stray print goes to stderr, the daemon's log.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mailpipe

_BOOTSTRAP = """\
import json, os, sys
answers = os.dup(1)
os.dup2(2, 1)
sys.path[:] = json.loads(sys.argv[1])
module, _, function = sys.argv[2].partition(":")
getattr(__import__(module, fromlist=[function]), function)(answers)
"""


def command(entry: str) -> list[str]:
    """The command that runs ``entry`` ("package.module:function", called with the file
    descriptor to answer on, the child's original stdout) in a new Python process."""
    own = str(Path(mailpipe.__file__).resolve().parent.parent)
    return [sys.executable, "-I", "-S", "-c", _BOOTSTRAP, json.dumps([own, *sys.path]), entry]
