from mailpipe.cli import main

raise SystemExit(main())
