"""Content fingerprints of OHLCV datasets: which data a result was computed on.

A fingerprint is the first :data:`FINGERPRINT_LENGTH` hex characters of a SHA-256 over
exactly what the engine reads of a dataset: the number of bars, the timestamps (as
nanoseconds since the epoch, whatever the index's resolution) and the float64 values of
``Open``, ``High``, ``Low``, ``Close`` and ``Volume``, in that order. NaNs are hashed as
one canonical NaN and ``-0.0`` as ``0.0``, so equal data always gives the same
fingerprint - across restarts, machines and pandas versions - and any changed bar,
timestamp or price gives another one. How the data was written (CSV formatting, column
order, extra columns the engine ignores) does not matter.

The service computes each dataset's fingerprint once, when it loads its datasets, and
reports it in every ``PONG`` (``fingerprints``) and every ``BACKTEST_RESULT``
(``data_fingerprint``), so a requester's result cache can key on the data, not just on
its name. Hashing a million bars takes about a tenth of a second.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Final

import numpy as np
import pandas as pd

__all__ = ["FINGERPRINT_COLUMNS", "FINGERPRINT_LENGTH", "fingerprint_bars", "fingerprint_datasets"]

#: The columns the engine uses, hashed in this order.
FINGERPRINT_COLUMNS: Final = ("Open", "High", "Low", "Close", "Volume")
#: Hex characters kept of the SHA-256 digest (64 bits: accidental collisions are out of
#: reach for any number of datasets a service could hold).
FINGERPRINT_LENGTH: Final = 16
# Bumped if what is hashed ever changes, so old and new fingerprints never match.
_DOMAIN: Final = b"backtest-queue OHLCV fingerprint v1\0"


def fingerprint_bars(bars: pd.DataFrame) -> str:
    """Return the content fingerprint of one OHLCV frame.

    Args:
        bars: a frame indexed by a ``DatetimeIndex`` with the columns
            :data:`FINGERPRINT_COLUMNS` (other columns are ignored).

    Returns:
        :data:`FINGERPRINT_LENGTH` lowercase hex characters.

    Raises:
        ValueError: the index is not made of timestamps, or a column is missing.
    """
    missing = [name for name in FINGERPRINT_COLUMNS if name not in bars.columns]
    if missing:
        raise ValueError(f"cannot fingerprint bars without the column(s) {', '.join(missing)}")
    try:
        index = pd.DatetimeIndex(bars.index)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot fingerprint bars whose index is not timestamps: {exc}") from None
    digest = hashlib.sha256(_DOMAIN)
    digest.update(len(bars).to_bytes(8, "little"))
    digest.update(np.ascontiguousarray(index.as_unit("ns").asi8, dtype="<i8").tobytes())
    for name in FINGERPRINT_COLUMNS:
        values = bars[name].to_numpy(dtype=np.float64, na_value=np.nan) + 0.0  # -0.0 -> 0.0
        values = np.where(np.isnan(values), np.nan, values)  # one NaN bit pattern
        digest.update(name.encode() + b"\0")
        digest.update(np.ascontiguousarray(values, dtype="<f8").tobytes())
    return digest.hexdigest()[:FINGERPRINT_LENGTH]


def fingerprint_datasets(bars: Mapping[str, pd.DataFrame]) -> dict[str, str]:
    """Return ``data_id -> fingerprint`` for every frame of ``bars``.

    Raises:
        ValueError: a frame cannot be fingerprinted (see :func:`fingerprint_bars`).
    """
    return {data_id: fingerprint_bars(frame) for data_id, frame in bars.items()}
