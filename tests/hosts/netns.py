"""Hosts you can cut: Linux network namespaces joined by veth pairs, for multi-host tests.

One **requester** namespace and any number of **service hosts**, each its own namespace
joined to the requester by one veth pair on its own /24::

    requester ns                          host i ns
    h<i>  10.213.<i>.1/24  <== veth ==>  eth0  10.213.<i>.2/24   backtest-queue service
                                                                  bound to tcp://10.213.<i>.2:5580

Traffic stays between these namespaces (and their loopbacks). Each service is a real
``backtest-queue service`` started with ``ip netns exec`` in its own process group; the
requester side is a driver process (``driver.py``) started the same way in the requester
namespace. Faults are real: :meth:`Network.link_down` sets the host's end of its veth
down (packets are dropped, no FIN, no RST: a half-open peer),
:meth:`Network.kill_service` SIGKILLs a service's process group, and
:meth:`Network.add_lossy_host` joins a host through a link that delays and loses IP
packets (``lossy_link.py``, two TUN devices and a relay: what ``tc qdisc ... netem``
does, for kernels built without sch_netem, as this project's CI VMs are).

Every namespace is named ``btqh<pid>-...`` after the test process that made it. Teardown
(:meth:`Network.close`, run by the fixture's finalizer also on failure and Ctrl-C) kills
every process in each namespace and deletes it; :func:`sweep_stale` deletes what a run
that died left behind (namespaces whose ``<pid>`` is no longer alive), at session start.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lifelines import tied

#: Every namespace these tests make starts with this; then the owner's pid and a dash.
PREFIX = "btqh"
SERVICE_PORT = 5580
BASE_HOSTS = (1, 2, 3)  # the tests' service hosts joined by veth pairs
LOSSY_HOST = 5  # the one joined by a link with 200 ms delay and 5 % loss each way
LOSSY = {"delay_ms": 200, "loss_percent": 5}
READY_TIMEOUT = 40.0  # seconds for a service to log its ready line (a loaded 2-core box)
STOP_GRACE = 5.0  # seconds a SIGTERMed process group gets before SIGKILL
_COMMAND_TIMEOUT = 20.0  # seconds any one `ip` / `tc` call may take
DRIVER = Path(__file__).with_name("driver.py")
LOSSY_LINK = Path(__file__).with_name("lossy_link.py")


def unavailable() -> str | None:
    """Why namespaces cannot be made here (a skip reason), or ``None`` if they can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "building network namespaces needs root (CI runs as root)"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed: apt-get install iproute2"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun (the lossy link is made of TUN devices)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True,
                          timeout=_COMMAND_TIMEOUT, check=False)  # fmt: skip
    if made.returncode != 0:
        return f"`ip netns add` failed (a container without CAP_SYS_ADMIN?): {made.stderr.strip()}"
    _run("ip", "netns", "delete", probe)
    return None


def _run(*argv: str, ns: str | None = None) -> str:
    """Run an iproute2 command (in namespace ``ns``); return its stdout, raise on failure."""
    cmd = ["ip", "netns", "exec", ns, *argv] if ns is not None else list(argv)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT,
                          check=False)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _namespaces() -> list[str]:
    out = _run("ip", "netns", "list")
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _kill_namespace_processes(ns: str) -> None:
    """SIGKILL whatever still runs inside ``ns`` (a namespace outlives no process of it)."""
    with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
        for pid in _run("ip", "netns", "pids", ns).split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def _delete_namespace(ns: str) -> None:
    _kill_namespace_processes(ns)
    with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
        _run("ip", "netns", "delete", ns)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> list[str]:
    """Delete the namespaces (and their processes) of test runs that are gone.

    Returns:
        The names deleted.
    """
    pattern = re.compile(rf"^{PREFIX}(\d+)-")
    swept = []
    for ns in _namespaces():
        match = pattern.match(ns)
        if match is not None and not _alive(int(match.group(1))):
            _delete_namespace(ns)
            swept.append(ns)
    return swept


class _Lines:
    """Drains a child's pipe on a thread (a full pipe would block the child) into a queue."""

    def __init__(self, stream: Any, name: str) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.history: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(stream,), name=name, daemon=True)
        self._thread.start()

    def _pump(self, stream: Any) -> None:
        with stream:  # closed here, at end of file: no other thread touches it
            for raw in stream:
                line = raw.decode(errors="replace").rstrip("\n")
                self.history.append(line)
                self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float, what: str) -> str:
        """Return the next line that matches (earlier ones are consumed), or raise."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise RuntimeError(f"{what}: the process ended first; its output:\n"
                                   + "\n".join(self.history[-40:]))  # fmt: skip
            if predicate(line):
                return line
        raise TimeoutError(f"{what}: not within {timeout} s; output so far:\n"
                           + "\n".join(self.history[-40:]))  # fmt: skip


def _stop_group(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace`` seconds, reap the leader."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # workers left behind by the leader
    process.wait(timeout=_COMMAND_TIMEOUT)
    if process.stdin is not None:
        process.stdin.close()  # (stdout and stderr are closed by their reader, at EOF)


@dataclass
class Host:
    """One service host: a namespace, its veth pair and (once started) its service."""

    index: int
    ns: str
    link: str  # the veth end in the requester namespace (``h<index>``)
    address: str
    process: subprocess.Popen[bytes] | None = None
    log: _Lines | None = None
    relay: subprocess.Popen[bytes] | None = None  # the lossy link's process, if any

    @property
    def endpoint(self) -> str:
        """The service's ZeroMQ endpoint, as the requester connects to it."""
        return f"tcp://{self.address}:{SERVICE_PORT}"


def host_address(index: int) -> str:
    """The address service host ``index`` (1..250) has: ``10.213.<index>.2``."""
    return f"10.213.{index}.2"


def endpoint_of(index: int) -> str:
    """The endpoint of the service on host ``index``, before the host exists."""
    return f"tcp://{host_address(index)}:{SERVICE_PORT}"


@dataclass
class Network:
    """A requester namespace and service hosts; :meth:`close` removes all of it."""

    run: str  # ``btqh<pid>-<n>``: the prefix of this network's namespaces
    env: dict[str, str]
    hosts: dict[int, Host] = field(default_factory=dict)
    drivers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)

    @property
    def requester(self) -> str:
        """The requester namespace's name."""
        return f"{self.run}-req"

    def _add_namespace(self, ns: str) -> None:
        self.namespaces.append(ns)  # before it exists: close() also deletes a half-made one
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "set", "lo", "up", ns=ns)

    def open(self) -> None:
        """Make the requester namespace."""
        self._add_namespace(self.requester)

    def add_host(self, index: int) -> Host:
        """Make service host ``index``: its namespace and its veth pair to the requester."""
        ns = f"{self.run}-h{index}"
        self._add_namespace(ns)
        link = f"h{index}"
        _run("ip", "link", "add", link, "netns", self.requester, "type", "veth",
             "peer", "name", "eth0", "netns", ns)  # fmt: skip
        _run("ip", "addr", "add", f"10.213.{index}.1/24", "dev", link, ns=self.requester)
        _run("ip", "link", "set", link, "up", ns=self.requester)
        _run("ip", "addr", "add", f"{host_address(index)}/24", "dev", "eth0", ns=ns)
        _run("ip", "link", "set", "eth0", "up", ns=ns)
        host = Host(index, ns, link, host_address(index))
        self.hosts[index] = host
        return host

    def start_service(self, host: Host, *, workers: int = 1) -> None:
        """Start ``backtest-queue service`` in ``host``'s namespace (own process group);
        returns at once: call :meth:`wait_ready`."""
        cmd = ["ip", "netns", "exec", host.ns, sys.executable, "-m", "backtest_queue",
               "service", "--bind", host.endpoint, "--workers", str(workers),
               "--shutdown-grace", "1"]  # fmt: skip
        host.process = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, **tied(self.env),
        )  # fmt: skip
        host.log = _Lines(host.process.stdout, f"service-h{host.index}")

    def wait_ready(self, host: Host, timeout: float = READY_TIMEOUT) -> None:
        """Block until ``host``'s service has logged its ready line (or raise)."""
        assert host.log is not None
        host.log.wait_for(lambda line: "service ready on" in line, timeout,
                          f"service on host {host.index}")  # fmt: skip

    def kill_service(self, host: Host) -> None:
        """SIGKILL ``host``'s service and its workers (its process group)."""
        assert host.process is not None
        os.killpg(host.process.pid, signal.SIGKILL)
        _stop_group(host.process, 0.0)  # reaped

    def link_down(self, host: Host) -> None:
        """Cut ``host`` off: its veth end goes down; nothing is sent either way, no FIN,
        no RST. The requester's end stays configured (its route stays)."""
        _run("ip", "link", "set", "eth0", "down", ns=host.ns)

    def link_up(self, host: Host) -> None:
        """Reconnect a host cut by :meth:`link_down`."""
        _run("ip", "link", "set", "eth0", "up", ns=host.ns)

    def add_lossy_host(self, index: int, *, delay_ms: int, loss_percent: float) -> Host:
        """Make service host ``index`` behind a slow, lossy link: ``delay_ms`` each way and
        ``loss_percent`` of the packets lost each way (``lossy_link.py``: ``tc netem``'s
        effect in user space, for kernels without sch_netem). Same addresses as a veth host."""
        ns = f"{self.run}-h{index}"
        self._add_namespace(ns)
        host = Host(index, ns, f"h{index}", host_address(index))
        self.hosts[index] = host
        config = {
            "a": [host.link, self.requester, f"10.213.{index}.1/24"],
            "b": ["eth0", ns, f"{host_address(index)}/24"],
            "delay_ms": delay_ms, "loss_percent": loss_percent, "seed": index,
        }  # fmt: skip
        host.relay = subprocess.Popen(
            [sys.executable, str(LOSSY_LINK), json.dumps(config)], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            **tied(self.env),
        )  # fmt: skip
        relay_log = _Lines(host.relay.stdout, f"relay-h{index}")
        relay_log.wait_for(lambda line: line == "ready", READY_TIMEOUT, f"lossy link to {index}")
        return host

    def heal(self, host: Host) -> None:
        """Undo every fault: link up, the service running (restarted if gone)."""
        self.link_up(host)
        if host.process is None or host.process.poll() is not None:
            if host.process is not None:
                _stop_group(host.process, 0.0)  # reap it and any worker left behind
            self.start_service(host)
            self.wait_ready(host)

    def remove_host(self, host: Host) -> None:
        """Stop ``host``'s service and delete its namespace (and so its veth pair)."""
        for process in (host.process, host.relay):
            if process is not None:
                _stop_group(process, STOP_GRACE)
        _delete_namespace(host.ns)
        self.namespaces.remove(host.ns)
        del self.hosts[host.index]

    def start_driver(self, config: dict[str, Any]) -> Driver:
        """Start the requester driver (``driver.py``) in the requester namespace."""
        cmd = ["ip", "netns", "exec", self.requester, sys.executable, str(DRIVER),
               json.dumps(config)]  # fmt: skip
        process = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, **tied(self.env),
        )  # fmt: skip
        self.drivers.append(process)
        return Driver(process)

    @contextlib.contextmanager
    def driver(self, config: dict[str, Any]) -> Iterator[Driver]:
        """:meth:`start_driver` for the block; its process group is stopped after it."""
        driver = self.start_driver(config)
        try:
            yield driver
        finally:
            _stop_group(driver.process, STOP_GRACE)
            self.drivers.remove(driver.process)

    def close(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL) and delete every namespace."""
        for process in self.drivers:
            _stop_group(process, STOP_GRACE)
        for host in self.hosts.values():
            for process in (host.process, host.relay):
                if process is not None:
                    _stop_group(process, STOP_GRACE)
        for ns in reversed(self.namespaces):
            _delete_namespace(ns)
        left = [ns for ns in _namespaces() if ns.startswith(f"{self.run}-")]
        if left:
            raise RuntimeError(f"namespaces left behind: {left}")


class Driver:
    """The requester driver process: JSON lines out, commands in (see ``driver.py``)."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.out = _Lines(process.stdout, "driver-out")
        self.err = _Lines(process.stderr, "driver-err")
        self.events: list[dict[str, Any]] = []

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        """Return the next event that matches; every event read is kept in :attr:`events`."""

        def matches(line: str) -> bool:
            event: dict[str, Any] = json.loads(line)
            self.events.append(event)
            return predicate(event)

        try:
            return json.loads(self.out.wait_for(matches, timeout, what))  # type: ignore[no-any-return]
        except (TimeoutError, RuntimeError) as exc:
            err = "\n".join(self.err.history[-40:])
            raise type(exc)(f"{exc}\ndriver stderr:\n{err}") from None

    def send(self, command: str) -> None:
        """Write one command line to the driver (``stop``)."""
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        self.process.stdin.flush()


_counter = iter(range(1_000_000))


@contextlib.contextmanager
def network(env: dict[str, str] | None = None) -> Iterator[Network]:
    """A fresh :class:`Network` (requester namespace made), removed on exit however it ends."""
    net = Network(f"{PREFIX}{os.getpid()}-{next(_counter)}", dict(env or os.environ))
    try:
        net.open()
        yield net
    finally:
        net.close()
