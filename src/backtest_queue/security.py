"""CURVE encryption and authentication with pyzmq's ``zmq.auth`` (no code of our own crypto).

* ``backtest-queue keys DIR`` writes key pairs in ZeroMQ's certificate format:
  ``service.key`` / ``service.key_secret`` and ``requester.key`` / ``requester.key_secret``.
* The service loads its secret certificate and a directory of allowed requester public
  certificates (:func:`server_options`, :func:`start_authenticator`); handshakes from any
  other key are refused and logged.
* The requester loads its secret certificate and pins the service's public certificate
  (:func:`load_client`), then passes the result as ``open_dispatcher(curve=...)``.

Public certificates (``*.key``) may be shared; secret ones (``*.key_secret``) stay with
their owner (written with mode 0600).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .errors import UsageError
from .transport import CurveClient

__all__ = [
    "AllowedKeys",
    "generate_keys",
    "load_client",
    "server_options",
    "start_authenticator",
]

log = logging.getLogger("backtest_queue.security")


def generate_keys(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Write a new CURVE key pair ``NAME.key`` (public) and ``NAME.key_secret`` (secret).

    Returns:
        The public and secret certificate paths.

    Raises:
        UsageError: a certificate with that name already exists (never overwritten).
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    if public.exists() or secret.exists():
        raise UsageError(f"{public} or {secret} already exists; refusing to overwrite keys")
    made_public, made_secret = zmq.auth.create_certificates(folder, name)
    os.chmod(made_secret, 0o600)
    return Path(made_public), Path(made_secret)


def _load(path: str | os.PathLike[str], *, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public_key, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read CURVE certificate {path}: {exc}") from exc
    if secret and secret_key is None:
        raise UsageError(f"{path} is a public certificate; a *.key_secret file is needed here")
    return public_key, secret_key


def load_client(
    secret_certificate: str | os.PathLike[str], server_certificate: str | os.PathLike[str]
) -> CurveClient:
    """Load a requester's keys and pin the service's public key.

    Args:
        secret_certificate: the requester's ``*.key_secret`` file.
        server_certificate: the service's public ``*.key`` file.

    Raises:
        UsageError: a file is missing, unreadable, or of the wrong kind.
    """
    public_key, secret_key = _load(secret_certificate, secret=True)
    server_key, _ = _load(server_certificate, secret=False)
    assert secret_key is not None
    return CurveClient(public_key=public_key, secret_key=secret_key, server_key=server_key)


def server_options(secret_certificate: str | os.PathLike[str]) -> dict[int, Any]:
    """Socket options that make a ROUTER a CURVE server with the given secret certificate.

    Raises:
        UsageError: the file is missing, unreadable, or a public certificate.
    """
    public_key, secret_key = _load(secret_certificate, secret=True)
    return {
        zmq.CURVE_SERVER: 1,
        zmq.CURVE_PUBLICKEY: public_key,
        zmq.CURVE_SECRETKEY: secret_key,
    }


class AllowedKeys:
    """The requester public keys a service accepts, read from a directory of ``*.key``.

    Used as a ``zmq.auth`` credentials provider: refusals are logged at WARNING with the
    refused key, so an operator sees who knocked.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        folder = Path(directory)
        if not folder.is_dir():
            raise UsageError(f"allowed-keys directory {folder} does not exist")
        self.keys: frozenset[bytes] = frozenset(zmq.auth.load_certificates(folder).keys())
        if not self.keys:
            raise UsageError(f"no public certificates (*.key) in {folder}: nobody could connect")
        self.refused = 0

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keys:
            return True
        self.refused += 1
        log.warning("refused a CURVE handshake from an unknown client key %s", key.decode())
        return False


def start_authenticator(context: zmq.Context[Any], allowed: AllowedKeys) -> ThreadAuthenticator:
    """Start a ZAP authenticator thread on ``context`` that admits only ``allowed`` keys.

    Stop it with ``.stop()`` before the context is terminated.
    """
    auth = ThreadAuthenticator(context, log=logging.getLogger("backtest_queue.security.zap"))
    auth.start()
    auth.configure_curve_callback("*", credentials_provider=allowed)
    return auth
