"""``python -m metamesh`` runs the command line, same as the ``metamesh`` script."""

from metamesh.cli import main

raise SystemExit(main())
