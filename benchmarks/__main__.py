"""``python -m benchmarks``: see :mod:`benchmarks.harness`."""

from __future__ import annotations

from .harness import main

raise SystemExit(main())
