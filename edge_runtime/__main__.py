"""``python -m edge_runtime`` is the ``edge-runtime`` command."""

from .cli import main

raise SystemExit(main())
