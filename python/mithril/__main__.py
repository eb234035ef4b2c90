"""``python -m mithril`` runs the command-line interface."""

from mithril.cli import main

raise SystemExit(main())
