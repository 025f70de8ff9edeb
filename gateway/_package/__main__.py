"""``python -m patgate``: the ``patgate`` command."""

from __future__ import annotations

from patgate.gateway.cli import main

raise SystemExit(main())
