"""``python -m mailpipe``: the same commands as the ``mailpipe`` console script (``mailpipe.cli``)."""

from mailpipe.cli import main

raise SystemExit(main())
