"""Endpoint rules the transport applies before it binds or connects a socket.

* ``ZMQ_IPV6`` is turned on for a ``tcp://`` endpoint whose host is an IPv6 address
  (``tcp://[::1]:5580``), on both sides: without it libzmq takes the address for a
  network interface name on ``bind`` ("No such device") and never connects on
  ``connect``, silently.
* An ``ipc://`` path a live process listens on is refused instead of taken over: libzmq
  unlinks whatever is at the path and binds anew, so a second service would silently
  take the path of a live one and leave its requesters hanging. A stale socket file (its
  process died) is replaced; a file that is not a socket is never touched.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import stat
from typing import Any

import zmq

from .errors import TransportError

__all__ = ["check_ipc_path_free", "endpoint_options"]

log = logging.getLogger("backtest_queue.transport")


def _is_ipv6_host(endpoint: str) -> bool:
    scheme, _, rest = endpoint.partition("://")
    if scheme != "tcp":
        return False
    rest = rest.rsplit(";", 1)[-1]  # "tcp://source;destination" connects
    host = rest.rsplit(":", 1)[0]
    if host.startswith("[") and host.endswith("]"):
        return True
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False  # "*", an interface name, a host name, an IPv4 address


def endpoint_options(endpoint: str) -> dict[int, Any]:
    """Socket options an endpoint needs before bind/connect: ``{zmq.IPV6: 1}`` for a
    ``tcp://`` endpoint whose host is an IPv6 address, else none.

    Host names keep libzmq's default (IPv4 only): turning IPv6 on for them would make
    ``localhost`` resolve to ``::1`` first on many systems, and miss a service bound to
    ``127.0.0.1``.
    """
    return {zmq.IPV6: 1} if _is_ipv6_host(endpoint) else {}


def check_ipc_path_free(endpoint: str) -> None:
    """Refuse to bind an ``ipc://`` path that is in use; a stale socket file is fine.

    libzmq unlinks whatever is at the path and binds anew, so a second service on the
    path of a live one would take it over silently. Probe it instead: connect a plain
    Unix socket there. Accepted: a live process listens (refused). Refused: the file is
    left by a process that died (binding replaces it). A file that is not a socket is
    never replaced. Abstract (``ipc://@name``) and ``ipc://*`` endpoints are not files.
    A process that starts listening between this probe and the bind still loses the
    path: the probe narrows the window to milliseconds, it cannot close it.

    Raises:
        TransportError: a live process listens on the path, or it is not a socket.
    """
    scheme, _, path = endpoint.partition("://")
    if scheme != "ipc" or not path or path.startswith("@") or path == "*":
        return
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise TransportError(f"cannot bind {endpoint!r}: {exc}") from None
    if not stat.S_ISSOCK(mode):
        raise TransportError(
            f"cannot bind {endpoint!r}: {path} exists and is not a socket; remove it or "
            "choose another path"
        )
    if not hasattr(socket, "AF_UNIX"):  # pragma: no cover - no Unix sockets
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2.0)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("replacing the stale socket file %s (nothing listens there)", path)
            return
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise TransportError(f"cannot bind {endpoint!r}: probing {path}: {exc}") from None
            return
    raise TransportError(
        f"cannot bind {endpoint!r}: another process is listening on {path} (a service "
        "already running there?); stop it or choose another path"
    )
