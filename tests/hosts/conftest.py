"""Fixtures for the multi-host tests: namespaces made once per module, repaired per test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import netns
from netns import BASE_HOSTS, LOSSY, LOSSY_HOST, Network

#: Set (to anything but "" or "0") where the namespaces must be made, as in CI: a
#: missing tool or right is then a failure, not a skip.
REQUIRED_ENV = "BACKTEST_QUEUE_HOSTS_REQUIRED"


@pytest.fixture(scope="session")
def netns_session() -> None:
    """Skip (or fail, where required) when namespaces cannot be made; then delete what
    an earlier run that died left behind."""
    reason = netns.unavailable()
    if reason is not None:
        if os.environ.get(REQUIRED_ENV, "") not in ("", "0"):
            pytest.fail(f"{REQUIRED_ENV} is set but {reason}")
        pytest.skip(reason)
    swept = netns.sweep_stale()
    if swept:
        print(f"deleted {len(swept)} namespaces left by earlier runs: {', '.join(swept)}")


@pytest.fixture(scope="module")
def base_network(netns_session: None) -> Iterator[Network]:
    """A requester and four service hosts, each running a one-worker service: three
    on veth pairs and one behind the slow, lossy link (started together: it saves a
    service start-up, the slowest step here)."""
    with netns.network() as net:
        hosts = [net.add_host(i) for i in BASE_HOSTS]
        hosts.append(net.add_lossy_host(LOSSY_HOST, **LOSSY))
        for host in hosts:
            net.start_service(host)
        for host in hosts:
            net.wait_ready(host)
        yield net


@pytest.fixture
def network(base_network: Network) -> Iterator[Network]:
    """The module's hosts, healthy: links up, every service running. Hosts a test adds
    are removed after it."""
    net = base_network
    for index in (*BASE_HOSTS, LOSSY_HOST):
        net.heal(net.hosts[index])
    try:
        yield net
    finally:
        for index in [i for i in net.hosts if i not in (*BASE_HOSTS, LOSSY_HOST)]:
            net.remove_host(net.hosts[index])
