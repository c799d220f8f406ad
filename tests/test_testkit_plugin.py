"""The test kit's pytest plugin, run in throwaway pytest sessions (pytester)."""

from __future__ import annotations

import pytest

from proc_watch import wait_gone

# The plugin comes in through the installed package's pytest11 entry point, as in a
# user's project; "-p backtest_queue.testing.plugin" (as the docs also allow) must not
# load it twice: the entry point is named after the module.
PLUGIN = ("-p", "backtest_queue.testing.plugin", "-p", "anyio")


def test_the_installed_package_registers_the_plugin() -> None:
    from importlib.metadata import entry_points

    found = [e.value for e in entry_points(group="pytest11") if e.value.startswith("backtest_")]
    assert found == ["backtest_queue.testing.plugin"]
    assert [e.name for e in entry_points(group="pytest11", value=found[0])] == found


@pytest.fixture(autouse=True)
def own_rootdir(pytester: pytest.Pytester) -> None:
    """Each session's own ini file (a stray one higher up must not configure it)."""
    pytester.makeini("[pytest]\nfilterwarnings = error\n")


def test_the_dispatcher_fixture_runs_on_both_backends(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import anyio, pytest
        from backtest_queue import BacktestRequest, Strategy
        from backtest_queue.testing import MemoryNetwork

        pytestmark = pytest.mark.anyio

        async def test_echo(dispatcher, memory_network: MemoryNetwork, anyio_backend) -> None:
            s = Strategy(name="s", kind="sma_cross", params={"fast": 5, "slow": 20})
            request = BacktestRequest(strategy=s, data_id="EURUSD-H1", request_id="r1")
            await dispatcher.submit(request)
            with anyio.fail_after(10):
                outcome = await dispatcher.wait("r1")
            assert outcome.ok
            assert [r.request_id for r in memory_network.received] == ["r1"]
            print("BACKEND", anyio_backend)
        """
    )
    result = pytester.runpytest_subprocess(*PLUGIN, "-s", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*BACKEND trio*"])
    result.stdout.fnmatch_lines(["*BACKEND asyncio*"])


def test_virtual_time_jumps_on_trio_and_keeps_the_real_clock_on_asyncio(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import time
        import anyio, pytest

        @pytest.mark.anyio
        @pytest.mark.virtual_time
        async def test_sleep(anyio_backend) -> None:
            started = time.monotonic()
            virtual = anyio.current_time()
            await anyio.sleep(3600 if anyio_backend != "asyncio" else 0.01)
            if anyio_backend != "asyncio":
                assert anyio.current_time() - virtual >= 3600
                assert time.monotonic() - started < 30
            print("RAN", anyio_backend if isinstance(anyio_backend, str) else "trio")

        @pytest.mark.anyio
        @pytest.mark.virtual_time(asyncio=False)
        async def test_trio_only(anyio_backend) -> None:
            await anyio.sleep(600)
        """
    )
    result = pytester.runpytest_subprocess(*PLUGIN, "-s", "-p", "no:cacheprovider",
                                           "--strict-markers")  # fmt: skip
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*RAN trio*"])
    result.stdout.fnmatch_lines(["*RAN asyncio*"])


def test_a_conftest_fixture_of_the_same_name_wins(pytester: pytest.Pytester) -> None:
    """A suite that already has a ``dispatcher`` or ``anyio_backend`` fixture keeps it:
    the plugin neither clashes nor re-parametrizes."""
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture
        def anyio_backend():
            return "trio"

        @pytest.fixture
        def dispatcher():
            return "mine"
        """
    )
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.anyio
        async def test_mine(dispatcher, memory_network) -> None:
            assert dispatcher == "mine"
            assert memory_network.services == {}
        """
    )
    result = pytester.runpytest_subprocess(*PLUGIN, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_importing_the_plugin_needs_no_hypothesis(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import sys

        def test_no_hypothesis() -> None:
            assert "hypothesis" not in sys.modules
        """
    )
    result = pytester.runpytest_subprocess(*PLUGIN, "-p", "no:cacheprovider",
                                           "-p", "no:hypothesispytest")  # fmt: skip
    result.assert_outcomes(passed=1)


@pytest.mark.slow
def test_the_backtest_service_fixture_stops_the_service_at_teardown(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import zmq
        from backtest_queue.testing import wait_ready

        def test_service(backtest_service) -> None:
            wait_ready(backtest_service.endpoint, timeout=30)  # it answers a PING
            with open("pid.txt", "w") as f:
                f.write(str(backtest_service.process.pid))
        """
    )
    result = pytester.runpytest_subprocess(*PLUGIN, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    pid = int((pytester.path / "pid.txt").read_text())
    assert wait_gone(pid, 30), f"the service {pid} outlived its fixture"
