"""Who has a store open: file locks the kernel releases when their process dies.

Next to ``q.db`` the store keeps a directory ``q.db.owners/`` holding:

* ``lock``: held with ``flock`` by every opener, exclusively (``shared=False``) or
  shared (``shared=True``), so that an exclusive opener excludes everyone else;
* ``<token>.owner``: one file per opener, held exclusively by it for as long as it has
  the store open, holding a JSON description of it (pid, host, command line, since).
  The requests an opener adds are tagged with its token; a token whose file is missing
  or not locked belongs to an opener that is gone (closed, crashed, killed with
  SIGKILL: the kernel drops the lock with the process), and its requests may be
  adopted by the next opener.

``flock`` locks are held by an open file description, so a second :class:`OwnerLock`
in the same process conflicts like another process would; the descriptors are
close-on-exec, so a child process started with ``subprocess`` does not keep a lock
alive (a child made by a bare ``fork()`` that outlives its parent does: the store then
reads as held by the parent's pid until that child exits). They need a local file
system (as SQLite's WAL mode does) and POSIX ``flock``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Literal

from .errors import StoreError, StoreHolder, StoreLocked

if sys.platform != "win32":
    import fcntl

__all__ = ["OwnerLock"]

_SUFFIX = ".owner"


class OwnerLock:
    """This opener's hold on a store, taken at construction, dropped by :meth:`release`.

    Args:
        db_path: the store's database file.
        shared: take the directory lock shared (other shared openers allowed) rather
            than exclusive.

    Raises:
        StoreLocked: another live opener holds the store in a conflicting mode.
        StoreError: the lock directory cannot be created or used (e.g. the parent
            directory is missing or not writable), or the platform has no ``flock``.
    """

    def __init__(self, db_path: Path, *, shared: bool) -> None:
        self.path = str(db_path)
        # Beside the real file: a symlink to a store in use must meet the same lock.
        # (A hard link cannot be told from another file by its path: not covered.)
        self.dir = Path(f"{os.path.realpath(db_path)}.owners")
        self.mode: Literal["exclusive", "shared"] = "shared" if shared else "exclusive"
        if sys.platform == "win32":  # pragma: no cover - POSIX only
            raise StoreError(self.path, "a store needs POSIX flock(), not available here")
        if not db_path.parent.is_dir():
            raise StoreError(self.path, f"its directory {db_path.parent} does not exist")
        try:
            self._created = not self.dir.exists()
            self.dir.mkdir(exist_ok=True)
            self._dir_fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StoreError(
                self.path, f"cannot create its lock directory {self.dir}: {exc}"
            ) from exc
        try:
            fcntl.flock(self._dir_fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._dir_fd)
            raise StoreLocked(self.path, self.holders(), shared=shared) from None
        except OSError as exc:
            os.close(self._dir_fd)
            raise StoreError(self.path, f"cannot lock {self.dir / 'lock'}: {exc}") from exc
        try:
            self.token, self._fd = self._create_owner_file()
        except OSError as exc:
            os.close(self._dir_fd)
            raise StoreError(
                self.path, f"cannot create its owner file in {self.dir}: {exc}"
            ) from exc
        self._released = False

    def _create_owner_file(self) -> tuple[str, int]:
        while True:
            token = uuid.uuid4().hex
            path = self.dir / f"{token}{_SUFFIX}"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Another opener may have taken the new file for a dead one's and unlinked it
            # between our create and our lock: then it no longer names us, start again.
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "argv": sys.argv,
                "since": time.time(), "mode": self.mode}  # fmt: skip
        os.write(fd, json.dumps(info).encode())
        return token, fd

    def __repr__(self) -> str:
        return f"<OwnerLock {self.path!r} {self.mode} token={self.token}>"

    def dead(self, tokens: set[str | None]) -> set[str | None]:
        """Return those of ``tokens`` whose opener is gone (``None``: untagged rows).

        A dead opener's owner file is removed on the way (nothing can revive it).
        Never includes this opener's own token.
        """
        return {t for t in tokens if t != self.token and (t is None or not self._alive(t))}

    def _alive(self, token: str) -> bool:
        if not token.isalnum():  # a tag that cannot name an owner file: nobody holds it
            return False
        path = self.dir / f"{token}{_SUFFIX}"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return True
        try:  # dead: clean up while holding its lock
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)
        return False

    def holders(self) -> tuple[StoreHolder, ...]:
        """Describe the live openers of this store (removing files of dead ones)."""
        found: list[StoreHolder] = []
        try:
            names = sorted(os.listdir(self.dir))
        except OSError:
            return ()
        for name in names:
            if not name.endswith(_SUFFIX) or not self._alive(name.removesuffix(_SUFFIX)):
                continue
            try:
                info = json.loads((self.dir / name).read_text())
                found.append(StoreHolder(
                    pid=int(info["pid"]), host=str(info["host"]),
                    argv=tuple(str(a) for a in info["argv"]), since=float(info["since"]),
                    mode="shared" if info["mode"] == "shared" else "exclusive",
                ))  # fmt: skip
            except (OSError, ValueError, KeyError, TypeError):
                continue  # it has just opened and not yet described itself
        return tuple(found)

    def remove_if_created(self) -> None:
        """After :meth:`release`: remove the lock directory if this opener created it
        (the path turned out not to be a store: leave nothing next to it)."""
        if self._created:
            try:
                (self.dir / "lock").unlink(missing_ok=True)
                self.dir.rmdir()
            except OSError:
                pass  # someone else uses it now: leave it

    def release(self) -> None:
        """Give up the store (idempotent): remove the owner file, drop both locks."""
        if self._released:
            return
        self._released = True
        try:
            (self.dir / f"{self.token}{_SUFFIX}").unlink(missing_ok=True)
        except OSError:
            pass  # the lock still goes with the descriptor: the file then reads as dead
        finally:
            os.close(self._fd)
            os.close(self._dir_fd)
