"""Shared test settings: every async test runs on both anyio backends (trio first)."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test once on trio and once on asyncio."""
    return str(request.param)
