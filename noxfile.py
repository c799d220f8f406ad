"""Developer sessions: ``nox -s tests lint typecheck examples bench hosts``.

Each session makes its own virtualenv and installs the project with the ``all`` extra.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = ["3.11", "3.12", "3.13"]


@nox.session(python=PYTHON[0])
def tests(session: nox.Session) -> None:
    """The whole suite; every async test runs on trio and on asyncio."""
    session.install("-e", ".[all]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON[0])
def hosts(session: nox.Session) -> None:
    """Only the multi-host tests: services on Linux network namespaces, links cut, hosts
    killed and added (root and iproute2; under a minute). Prints each scenario's counts
    and re-route times."""
    session.install("-e", ".[all]")
    session.run("pytest", "-m", "hosts", "-s", "-p", "no:cacheprovider", "tests/hosts",
                *session.posargs)  # fmt: skip


@nox.session(python=PYTHON[0])
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.8")
    session.run("ruff", "check", "src", "tests", "examples", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "examples", "benchmarks", "noxfile.py")


@nox.session(python=PYTHON[0])
def typecheck(session: nox.Session) -> None:
    """Strict mypy on src/."""
    session.install("-e", ".[all]")
    session.run("mypy")


@nox.session(python=PYTHON[0])
def examples(session: nox.Session) -> None:
    """Run every example script against a real local service."""
    session.install("-e", ".[all]")
    session.run("python", "examples/run_all.py")


@nox.session(python=PYTHON[0])
def bench(session: nox.Session) -> None:
    """The benchmark harnesses: throughput, flush, memory, durable queue, then search
    quality (pass --quick for a short run of both)."""
    session.install("-e", ".[all]")
    session.run("python", "-m", "benchmarks", *session.posargs)
    quick = ["--seeds", "2", "--generations", "3", "--population", "8"]
    session.run("python", "-m", "benchmarks.search_quality",
                *(quick if "--quick" in session.posargs else []))  # fmt: skip


@nox.session(python=PYTHON[0])
def search_quality(session: nox.Session) -> None:
    """Issue #12's search-quality harness: samplers compared out of sample (minutes)."""
    session.install("-e", ".[all]")
    session.run("python", "-m", "benchmarks.search_quality", *session.posargs)
