"""Subclasses of the wire's plain types: values that pass ``isinstance`` but not the
``type(x) is`` tests of the fast paths, which must hand them to the full checks."""

from __future__ import annotations

from typing import Any


class Text(str):
    pass


class Number(float):
    pass


class Count(int):
    pass


class Params(dict[str, Any]):
    pass
