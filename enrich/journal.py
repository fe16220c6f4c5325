"""The durable record of finished calls: resume, dedup, incremental runs, re-extract.

One SQLite file per output (``out/people.parquet.journal`` by default). Each entry is
keyed by the fingerprint of a rendered request (method, URL with query, non-auth
headers, body; never a token) and holds the final status, the error and the response
body. Writes are buffered and committed every ``FLUSH_ROWS`` entries or
``FLUSH_SECONDS`` seconds, so a killed run loses at most its last half second of calls.

    with Journal.open(Path("out/people.parquet.journal")) as journal:
        known = journal.lookup([fp1, fp2])           # {fp1: Entry(...)} for calls already made
        journal.put(fp3, Entry(200, None, b'{"a": 1}', 1, 12.5, time.time()))
        journal.flush()

Only one run may write a journal at a time: ``open`` takes an exclusive lock (flock on
the journal file; SQLite's own locks are separate), released when the process ends,
however it ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

from .errors import RunAborted

FLUSH_ROWS = 500
FLUSH_SECONDS = 0.5
_CHUNK = 500  # fingerprints per IN (...) query; SQLite allows 32,766 parameters

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    fp BLOB PRIMARY KEY,
    status INTEGER,
    error TEXT,
    body BLOB,
    attempts INTEGER NOT NULL,
    latency_ms REAL,
    at REAL NOT NULL,
    fields_key TEXT,
    extracted BLOB
);
"""
# A rowid table, not WITHOUT ROWID: the bodies are large rows, and storing them inside the
# key's B-tree cost three times the CPU per insert (0.6 s against 0.18 s per 20,000 rows).


class Entry(NamedTuple):
    """One finished call: final status (None when no response came), error, raw body.

    A named tuple: a lookup builds one per row, and a tuple costs a fifth of a frozen dataclass.
    """

    status: int | None
    error: str | None
    body: bytes | None
    attempts: int
    latency_ms: float | None
    at: float
    # The field values extracted when the call was made (JSON array), and which `fields`
    # they were extracted for: the output is then built without parsing the body again.
    fields_key: str | None = None
    extracted: bytes | None = None

    @property
    def failed(self) -> bool:
        """Worth calling again with ``--retry-failed``: no answer, or a server-side or auth failure."""
        if self.error is None:
            return False
        return self.status is None or self.status >= 500 or self.status in (401, 403, 408, 429)


class JournalBusy(RunAborted):
    """Another run holds this journal."""


class Buffered:
    """What every journal shares: finished calls held in memory and written by ``flush`` every
    ``FLUSH_ROWS`` entries or ``FLUSH_SECONDS``; look-ups see the pending ones too."""

    writes_through = False  # True: each put is saved by itself, and no periodic flush is needed

    def __init__(self) -> None:
        self._pending: dict[bytes, Entry] = {}
        self._last_flush = time.monotonic()
        self.written = 0

    def lookup(self, fps: Iterable[bytes], bodies: bool = True) -> dict[bytes, Entry]:
        raise NotImplementedError

    async def alookup(self, fps: Sequence[bytes], bodies: bool = True) -> dict[bytes, Entry]:
        """``lookup`` from inside the event loop: a local file answers at once, in place."""
        return self.lookup(fps, bodies)

    def holding(self) -> bool:
        """Whether the run should hold its next call until the journal can save again."""
        return False

    def put(self, fp: bytes, entry: Entry) -> None:
        """Record a finished call; written by the next ``flush`` (at most ``FLUSH_SECONDS`` later)."""
        self._pending[fp] = entry
        if len(self._pending) >= FLUSH_ROWS or time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        raise NotImplementedError

    def _held(self) -> Mapping[bytes, Entry]:
        """The finished calls not yet written where look-ups find them."""
        return self._pending

    def _split(self, fps: Iterable[bytes]) -> tuple[dict[bytes, Entry], list[bytes]]:
        """The pending entries among ``fps`` (each once), and the fingerprints left to look up."""
        wanted = list(dict.fromkeys(fps))
        held = self._held()
        found = {fp: held[fp] for fp in wanted if fp in held}
        return found, [fp for fp in wanted if fp not in found]


class Journal(Buffered):
    """A SQLite journal of finished calls, written by one run at a time."""

    def __init__(self, conn: sqlite3.Connection, path: Path | None, lock_fd: int | None) -> None:
        super().__init__()
        self._conn = conn
        self.path = path
        self._lock_fd = lock_fd

    @classmethod
    def open_readonly(cls, path: Path | None) -> Journal:
        """Open the journal at ``path`` only to look things up (``--dry-run``): no lock, no file
        created or changed. A missing file gives an empty, in-memory journal."""
        if path is None or not path.exists():
            return cls.open(None)
        # Closed cleanly (no -wal file), the file holds everything and nobody writes it: read it as
        # immutable, which creates no -shm/-wal beside it. Otherwise a run is live (or was killed):
        # a read-only connection sees its committed calls.
        mode = "ro" if Path(f"{path}-wal").exists() else "ro&immutable=1"
        try:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode={mode}", uri=True, isolation_level=None)
            conn.execute("SELECT fp, status, error, attempts, latency_ms, at, fields_key, extracted FROM calls LIMIT 1")
        except sqlite3.DatabaseError as exc:
            raise RunAborted(
                f"cannot read the journal {path}: {exc}. If the file is not an enrich journal, "
                "point --journal elsewhere."
            ) from None
        return cls(conn, path, None)

    @classmethod
    def open(cls, path: Path | None) -> Journal:
        """Open (creating if needed) the journal at ``path``; ``None`` keeps it in memory."""
        lock_fd = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(lock_fd)
                raise JournalBusy(
                    f"the journal {path} is in use by another run. Wait for that run to finish "
                    "(or stop it), or give this one its own journal with --journal PATH."
                ) from None
        try:
            conn = sqlite3.connect(str(path) if path else ":memory:", isolation_level=None)
            if path is not None:
                conn.execute("PRAGMA journal_mode=WAL")
                # WAL + NORMAL: a commit survives the process being killed; a power cut may undo the
                # last commits (the last moments of calls), never corrupt the file. FULL would fsync
                # every half second, in the event loop.
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(calls)")}
            if "extracted" not in columns:  # a journal from before extracted values were kept
                conn.execute("ALTER TABLE calls ADD COLUMN fields_key TEXT")
                conn.execute("ALTER TABLE calls ADD COLUMN extracted BLOB")
        except sqlite3.DatabaseError as exc:
            with contextlib.suppress(NameError, sqlite3.Error):
                conn.close()
            if lock_fd is not None:
                os.close(lock_fd)
            raise RunAborted(
                f"cannot open the journal {path}: {exc}. If the file is not an enrich journal, "
                "point --journal elsewhere; to start over, move or delete it."
            ) from None
        return cls(conn, path, lock_fd)

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self, remove_if_empty: bool = False) -> None:
        """Commit what is pending, close the database and release the lock.

        ``remove_if_empty`` deletes the files when this run wrote nothing (a run whose login
        failed leaves no empty journal behind), while the lock is still held.
        """
        if self._conn is None:
            return
        try:
            self.flush()
        finally:
            self._conn.close()
            self._conn = None  # type: ignore[assignment]
            if remove_if_empty and self.written == 0 and self.path is not None:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def flush(self) -> None:
        """Commit every pending entry in one transaction."""
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        rows = [(fp, *e) for fp, e in self._pending.items()]
        self._conn.execute("BEGIN")
        try:
            self._conn.executemany(
                "INSERT OR REPLACE INTO calls (fp, status, error, body, attempts, latency_ms, at, fields_key, extracted)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            self._conn.execute("COMMIT")
        except BaseException:  # a second Ctrl-C/SIGTERM can land here: undo, keep the entries pending
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise
        self.written += len(rows)
        self._pending.clear()

    def _select(self, columns: str, fps: Sequence[bytes]) -> Iterator[tuple]:
        for start in range(0, len(fps), _CHUNK):
            chunk = fps[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            yield from self._conn.execute(f"SELECT fp, {columns} FROM calls WHERE fp IN ({marks})", chunk).fetchall()

    def lookup(self, fps: Iterable[bytes], bodies: bool = True) -> dict[bytes, Entry]:
        """The entries for those of ``fps`` that the journal holds, pending ones included.

        With ``bodies=False`` the entries carry no body (cheaper, for deciding what to call).
        """
        found, rest = self._split(fps)
        columns = f"status, error, {'body' if bodies else 'NULL'}, attempts, latency_ms, at, fields_key, extracted"
        make = Entry._make
        found.update((row[0], make(row[1:])) for row in self._select(columns, rest))
        return found

    def __len__(self) -> int:
        self.flush()
        (count,) = self._conn.execute("SELECT count(*) FROM calls").fetchone()
        return int(count)
