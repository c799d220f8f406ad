"""Shared test settings: every async test runs on both anyio backends (trio first)."""

from __future__ import annotations

import pytest
from hypothesis import settings

# pytester runs the test kit's plugin in throwaway pytest sessions (test_testkit_plugin.py).
pytest_plugins = ["pytester"]

# Hypothesis's per-example deadline measures the machine as much as the code: on a busy
# 2-core CI box a 5 ms example can take 300 ms. Hangs are caught by pytest-timeout.
settings.register_profile("backtest-queue", deadline=None)
settings.load_profile("backtest-queue")


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test once on trio and once on asyncio."""
    return str(request.param)
