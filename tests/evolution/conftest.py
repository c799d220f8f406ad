"""Evolution tests: make ``tests/`` importable (for ``stubs``) and silence nothing.

Helpers live in ``evolution_helpers`` (a fake service with invented metrics).
"""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent.parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
