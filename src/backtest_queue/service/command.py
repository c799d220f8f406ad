"""``backtest-queue service``: run a backtest service until SIGTERM or Ctrl-C.

Once ready it prints the endpoint it bound, alone on one line, to stdout (the port
``--bind 'tcp://127.0.0.1:*'`` picked, for scripts); its log lines, the ``service ready
on ENDPOINT`` line among them, go to stderr.

Exit status: 0 after a signal-initiated stop, 1 when the endpoint cannot be bound or the
workers do not start, 2 for bad settings (a data directory that does not exist, an
unreadable CURVE certificate, ...).

CURVE (:mod:`backtest_queue.security`): ``--curve-secret`` makes the ROUTER a CURVE
server (encrypted traffic); ``--allowed-keys`` adds a ZAP authenticator that admits only
the requester public keys in that directory and logs every refused key.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from functools import partial
from typing import Any

import anyio
import zmq

from ..cli_types import endpoint, integer, number
from ..errors import TransportError, UsageError
from ..metrics import add_metrics_arguments, metrics_from_args
from ..protocol import DEFAULT_ENDPOINT, DEFAULT_MAX_MESSAGE_BYTES
from .engine import EngineError
from .server import LINGER, open_service

__all__ = ["add_arguments", "run"]

log = logging.getLogger("backtest_queue.service")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``service`` options to ``parser``."""
    parser.add_argument(
        "--bind",
        default=DEFAULT_ENDPOINT,
        type=endpoint,
        metavar="ENDPOINT",
        help=f"ZeroMQ endpoint to bind (default {DEFAULT_ENDPOINT}; 'tcp://127.0.0.1:*' picks "
        "a free port, logged in the ready line; IPv6 as 'tcp://[::1]:5580'; an ipc:// path "
        "another live service listens on is refused); beyond loopback a warning is logged",
    )
    parser.add_argument(
        "--workers",
        type=integer(1),
        default=None,
        metavar="N",
        help=f"backtest worker processes (default: CPU count, here {os.cpu_count()})",
    )
    parser.add_argument(
        "--credit",
        type=integer(1),
        default=None,
        metavar="N",
        help="requests one requester may keep in flight here, running plus queued, "
        "advertised in PONG (default: twice --workers: each worker busy and one waiting)",
    )
    parser.add_argument(
        "--data",
        default=None,
        metavar="DIR",
        help="directory of <data_id>.csv OHLCV files to serve besides the built-in "
        "datasets; bad files are logged and skipped, and if all are, the service does not "
        "start ('backtest-queue data check DIR' shows how each file is read)",
    )
    parser.add_argument(
        "--max-message-bytes",
        type=integer(1024, 2**31 - 1),
        default=DEFAULT_MAX_MESSAGE_BYTES,
        metavar="N",
        help="largest message body accepted (default 1 MiB); larger ones get a too_large "
        "error, and libzmq drops the connection of a peer sending over twice this",
    )
    parser.add_argument(
        "--reply-timeout",
        type=number(0.0, exclusive=True, unit="seconds"),
        default=10.0,
        metavar="SECONDS",
        help="how long a reply waits for a requester that does not read or is gone "
        "before it is dropped and logged (default 10)",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=number(0.0, unit="seconds"),
        default=10.0,
        metavar="SECONDS",
        help="on SIGTERM / Ctrl-C, how long running backtests may finish (default 10)",
    )
    parser.add_argument(
        "--curve-secret",
        default=None,
        metavar="FILE",
        help="the service's CURVE secret certificate (*.key_secret from 'backtest-queue "
        "keys'): encrypt traffic",
    )
    parser.add_argument(
        "--allowed-keys",
        default=None,
        metavar="DIR",
        help="with --curve-secret: admit only requesters whose public certificate (*.key) "
        "is in DIR",
    )
    parser.add_argument(
        "--executor",
        choices=("local", "dask"),
        default="local",
        help="where backtests run: 'local' worker processes (default) or 'dask', an "
        "existing Dask cluster (needs --scheduler and the dask extra: pip install "
        "'backtest-queue[dask]'); with dask, --workers counts backtests at once "
        "(default: the cluster's worker threads)",
    )
    parser.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="with --executor dask: the Dask scheduler, e.g. tcp://10.0.0.5:8786",
    )
    parser.add_argument(
        "--scheduler-timeout",
        type=number(0.0, exclusive=True, unit="seconds"),
        default=10.0,
        metavar="SECONDS",
        help="with --executor dask: how long to wait for the scheduler and a first "
        "worker (default 10)",
    )
    parser.add_argument(
        "--backend",
        choices=("trio", "asyncio"),
        default="trio",
        help="the anyio event loop (default trio)",
    )
    add_metrics_arguments(parser, what="service")


async def _serve(settings: dict[str, Any]) -> int:
    # Open the signal receiver first: a signal during start-up then stops the service
    # right after it is ready, instead of killing it half-started.
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with open_service(**settings) as service:
            # The log says "service ready on ENDPOINT" (stderr); stdout gets the bound
            # endpoint alone, for a script that bound 'tcp://127.0.0.1:*' to read.
            _print_endpoint(service.endpoint)
            async for signum in signals:
                log.info("received %s; stopping", signal.Signals(signum).name)
                break
    return 0


def _print_endpoint(endpoint: str) -> None:
    """Print the endpoint on stdout; a stdout nobody reads does not stop the service."""
    try:
        print(endpoint, flush=True)
    except (BrokenPipeError, ValueError):  # a closed pipe, or stdout closed
        from ..cli_output import silence_stdout

        silence_stdout()
        log.debug("stdout is closed: the endpoint is only in the log")


def _start_curve(args: argparse.Namespace, context: zmq.Context[Any]) -> tuple[dict[int, Any], Any]:
    """CURVE socket options and the started ZAP authenticator (or ``None``)."""
    if args.curve_secret is None:
        if args.allowed_keys is not None:
            raise UsageError("--allowed-keys needs --curve-secret")
        return {}, None
    from ..security import AllowedKeys, server_options, start_authenticator

    options = server_options(args.curve_secret)
    if args.allowed_keys is None:
        log.warning(
            "CURVE without --allowed-keys: traffic is encrypted, but any requester that "
            "knows the service's public key can connect"
        )
        return options, None
    return options, start_authenticator(context, AllowedKeys(args.allowed_keys))


def _executor(args: argparse.Namespace) -> Any:
    """The ``executor`` for :func:`open_service` (``None``: the local pool)."""
    if args.executor == "local":
        if args.scheduler is not None:
            raise UsageError("--scheduler needs --executor dask")
        return None
    if args.scheduler is None:
        raise UsageError("--executor dask needs --scheduler tcp://HOST:8786")
    from .dask_executor import DaskExecutor

    return DaskExecutor(args.scheduler, connect_timeout=args.scheduler_timeout)


def run(args: argparse.Namespace) -> int:
    """Run the service; returns the exit status (see the module docstring)."""
    context: zmq.Context[Any] = zmq.Context()
    authenticator = None
    try:
        options, authenticator = _start_curve(args, context)
        settings: dict[str, Any] = {
            "bind": args.bind,
            "workers": args.workers,
            "credit": args.credit,
            "data_dir": args.data,
            "max_message_bytes": args.max_message_bytes,
            "reply_timeout": args.reply_timeout,
            "shutdown_grace": args.shutdown_grace,
            "socket_options": options,
            "context": context,
            "metrics": metrics_from_args(args),
            "executor": _executor(args),
        }
        return anyio.run(partial(_serve, settings), backend=args.backend)
    except UsageError as exc:
        log.error("cannot start the service: %s", exc)
        return 2
    except (TransportError, EngineError) as exc:
        log.error("cannot start the service: %s", exc)
        return 1
    finally:
        if authenticator is not None:
            authenticator.stop()
        # The service's sockets are closed; this bounds the wait for unsent replies.
        context.destroy(linger=int(LINGER * 1000))
