"""Exceptions out of task groups, unwrapped: the package's promise (docs/concurrency.md).

Task groups (anyio's, trio's, zmq-anyio's) raise a ``BaseExceptionGroup`` even when one
task failed. Every public call of the package that runs tasks raises one real failure
as itself (a ``UsageError`` the caller can catch as documented, a bug, a
``KeyboardInterrupt``) and only two or more distinct failures as a group.
"""

from __future__ import annotations

__all__ = ["leaves", "only", "sole_error"]


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or ``[exc]``."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in leaves(sub)]
    return [exc]


def only(group: BaseExceptionGroup[BaseException], error: BaseException) -> bool:
    """Whether ``group`` holds ``error`` and nothing else but cancellations."""
    import anyio  # (here: the CLI imports this module before it needs anyio)

    cancelled = anyio.get_cancelled_exc_class()
    found = leaves(group)
    return error in found and all(e is error or isinstance(e, cancelled) for e in found)


def sole_error(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The group's only leaf that is not a cancellation, or ``None`` if there is not
    exactly one (a ``KeyboardInterrupt`` seen by several tasks still counts as one).

    Raise it after the ``except`` block that caught the group, not inside it: raised
    inside, it would be chained to the group (``__context__``), its own context lost.
    """
    import anyio

    cancelled = anyio.get_cancelled_exc_class()
    errors = [e for e in leaves(group) if not isinstance(e, cancelled)]
    if len(errors) == 1:
        return errors[0]
    if errors and all(isinstance(e, KeyboardInterrupt) for e in errors):
        return errors[0]
    return None
