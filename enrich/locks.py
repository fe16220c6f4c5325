"""One run at a time per journal and per output: an exclusive lock on a small file beside it.

    lock = hold(Path("out/people.parquet"), busy=OutputBusy("the output ... is being written by another run"))
    ...                                   # the run
    lock.release()

The lock is the operating system's (``flock`` on Unix, ``LockFileEx`` on Windows, through the
``filelock`` package): it is released when the process ends, however it ends (``kill -9``
included), so a crashed run never leaves a stale lock. The lock file is hidden
(``out/.people.parquet.lock``) and removed on release; a killed run leaves it behind, empty
and harmless.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import EnrichError, OutputError

if TYPE_CHECKING:
    from filelock import BaseFileLock


def lock_path(path: Path) -> Path:
    """The lock file of ``path``: hidden, beside it."""
    return path.with_name(f".{path.name}.lock")


@dataclass(slots=True)
class Lock:
    """A held lock; ``release`` removes its file and gives it up."""

    path: Path
    _lock: BaseFileLock

    def release(self) -> None:
        # Removed while still held: a process that opened the old file before this and locks it
        # after finds it unlinked (filelock checks) and tries again on the path.
        with contextlib.suppress(OSError):  # its folder gone or replaced under the run: nothing left to remove
            self.path.unlink(missing_ok=True)
        self._lock.release()


def hold(path: Path, busy: EnrichError) -> Lock:
    """Lock ``path`` for this process, or raise ``busy`` when another process holds it.

    Raises ``OutputError`` when the lock file cannot be created (a folder that does not exist
    or cannot be written).
    """
    from filelock import FileLock, Timeout

    target = lock_path(path)
    # No soft fallback: a marker file would outlive a killed run and lock every later one out.
    lock = FileLock(target, timeout=0, thread_local=False, fallback_to_soft=False)
    try:
        lock.acquire()
    except Timeout:
        raise busy from None
    except OSError as exc:
        raise OutputError(
            f"cannot create {target} beside {path.name} ({exc.strerror or exc}). Check that the folder "
            f"{path.parent} exists and can be written, or point the output elsewhere."
        ) from None
    return Lock(target, lock)
