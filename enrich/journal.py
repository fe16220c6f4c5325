"""The durable record of finished calls: resume, dedup, incremental runs, re-extract.

One SQLite file per output (``out/people.parquet.journal`` by default). Each entry is
keyed by the fingerprint of a rendered request (method, URL with query, non-auth
headers, body; never a token) and holds the final status, the error and the response
body exactly as the API sent it. Written through: a writer thread commits each finished
call a moment after it is handed over (together with whatever finished meanwhile: a group
commit), and the engine's workers await ``saved`` before their next call, so a killed run
loses only the calls in flight; the event loop never waits on the disk.

    with FileJournal.open(Path("out/people.parquet.journal")) as journal:
        known = journal.lookup([fp1, fp2])           # {fp1: Entry(...)} for calls already made
        n = journal.put(fp3, Entry(200, None, b'{"a": 1}', 1, 12.5, time.time()))
        await journal.saved(n)                       # in the event loop: until it is committed
        journal.flush()                              # wait until everything put is committed

Only one run may write a journal at a time: ``open`` takes an exclusive lock (``locks.py``,
on a hidden file beside the journal; SQLite's own locks are separate), released when the
process ends, however it ends. A disk that fills up, or a journal that cannot be written or
read, stops the run with ``StorageError`` (exit 3): what was committed is kept.

``Journal`` is what the run needs of a journal; ``FileJournal`` (SQLite, here) and
``RedisJournal`` (``redis_journal.py``) both are one; ``open_journal`` opens either.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import mmap
import os
import sqlite3
import struct
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, NoReturn, Protocol

from .errors import Busy, FailureKind, OutputError, RunAborted, StorageError
from .locks import Lock, hold

_CHUNK = 500  # fingerprints per IN (...) query; SQLite allows 32,766 parameters
FLUSH_ROWS = 500  # logged calls moved into SQLite in one transaction once this many are waiting,
FLUSH_SECONDS = 0.5  # or this long after the last move

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
    extracted BLOB,
    kind TEXT
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
    # Why there is no answer (None: there is one). An entry written before kinds were stored has
    # none: ``kind_of`` classifies it where it is counted.
    kind: FailureKind | None = None

    @property
    def failed(self) -> bool:
        """Worth calling again with ``--retry-failed``: no answer, or a server-side or auth failure."""
        if self.error is None:
            return False
        return self.status is None or self.status >= 500 or self.status in (401, 403, 408, 429)


def kind_of(status: int | None, error: str) -> FailureKind:
    """The legacy classification of a failure, from its status and its message's first words: for
    entries written before kinds were stored. Everything newer carries its kind, set where the
    failure was known."""
    if status is not None:
        return FailureKind.HTTP if status >= 300 else FailureKind.BAD_RESPONSE
    for start, kind in _LEGACY_STARTS:
        if error.startswith(start):
            return kind
    return FailureKind.BAD_ROW_DATA


_LEGACY_STARTS = (
    ("timed out", FailureKind.TIMEOUT),
    ("connection error", FailureKind.CONNECTION),
    ("not called", FailureKind.NOT_CALLED),
)


class Journal(Protocol):
    """What a run needs of a journal: ``FileJournal`` (SQLite) and ``RedisJournal`` are one.

    ``put`` a finished call (numbered), wait until it is ``saved``, ``lookup`` what is known
    (``alookup`` from the event loop), ``flush`` and ``close``. ``holding`` says to send no new
    call while the journal cannot save one; ``written`` counts the calls this run saved, and
    ``len`` those the journal holds.
    """

    written: int

    def put(self, fp: bytes, entry: Entry, saved: bool = True) -> int: ...

    async def saved(self, seq: int) -> None: ...

    def holding(self) -> bool: ...

    def lookup(self, fps: Iterable[bytes], bodies: bool = True) -> dict[bytes, Entry]: ...

    async def alookup(self, fps: Sequence[bytes], bodies: bool = True) -> dict[bytes, Entry]: ...

    def flush(self) -> None: ...

    def close(self, remove_if_empty: bool = False) -> None: ...

    def __len__(self) -> int: ...


def open_journal(journal: Path | str | None, readonly: bool = False) -> Journal:
    """The journal at a file path or a redis:// URL (``None``: in memory)."""
    from .redis_journal import RedisJournal, is_redis_url

    if is_redis_url(journal):
        assert isinstance(journal, str)
        return RedisJournal.open_readonly(journal) if readonly else RedisJournal.open(journal)
    path = Path(journal) if journal is not None else None
    return FileJournal.open_readonly(path) if readonly else FileJournal.open(path)


def journal_label(journal: Path | str | None) -> str:
    """The journal as messages show it (a Redis URL without its password)."""
    from .redis_journal import shown_url

    return shown_url(journal) if isinstance(journal, str) else str(journal)


class JournalBusy(Busy):
    """Another run holds this journal."""


class WriteThrough:
    """What both journals share: each finished call handed to a writer thread, which saves it
    at once together with whatever finished while the last write ran (a group commit). Look-ups
    see the calls handed over and not yet saved. The writer records any failure and wakes every
    waiter: the next ``put``, ``holding`` or ``flush`` raises it, and the run stops.

    A subclass says how to save a batch (``_save``), what a failure means to the user
    (``_failure_of``), and how to find entries (``lookup``).
    """

    # A write waits up to this long for one more finished call to join it (fewer round trips).
    GATHER_SECONDS = 0.0
    # Seconds a write may go unanswered before the run holds its next call (None: never).
    STALL_AFTER: float | None = None
    path: Any = None  # what messages show

    def __init__(self, threaded: bool = True) -> None:
        self._pending: dict[bytes, Entry] = {}
        self._writing: dict[bytes, Entry] = {}
        # Failures that no API answered (the request could not be sent): seen by this run's
        # look-ups, so its output shows them, but never saved: a rerun tries those calls again.
        self._unsaved: dict[bytes, Entry] = {}
        self._changed = threading.Condition()  # guards the dicts above and the state below
        self._threaded = threaded  # False: `put` saves in place (a journal in memory)
        self._writer: threading.Thread | None = None
        self._failure: RunAborted | None = None  # why the writer stopped
        self._failure_told = False
        self._closing = False
        self._stalled = False  # the writer is retrying a write that was not answered
        self._write_started = 0.0
        self.written = 0
        # Every put is numbered; every number up to `_saved_seq` is saved. `saved(n)` waits in the
        # event loop (woken from the writer thread) until put number n is.
        self._seq = 0
        self._taken_seq = 0  # the last number in the batch being written
        self._saved_seq = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._saved: asyncio.Future[None] | None = None

    # --- what a subclass provides ---------------------------------------------------------

    def _save(self, batch: dict[bytes, Entry]) -> None:
        raise NotImplementedError

    def _failure_of(self, exc: BaseException) -> RunAborted:
        raise NotImplementedError

    def lookup(self, fps: Iterable[bytes], bodies: bool = True) -> dict[bytes, Entry]:
        raise NotImplementedError

    # --- writing ----------------------------------------------------------------------------

    def put(self, fp: bytes, entry: Entry, saved: bool = True) -> int:
        """Hand a finished call to the writer (saved a moment later); returns its number, for
        ``saved``. With ``saved=False`` the entry is only remembered for this run's look-ups (a
        request that could not be sent), and the number is 0."""
        with self._changed:
            if self._closing:
                raise RuntimeError("put on a closed journal")
            self._raise_failure()
            if not saved:
                self._unsaved[fp] = entry
                return 0
            self._unsaved.pop(fp, None)
            self._pending[fp] = entry
            self._seq += 1
            if not self._threaded:
                batch, self._pending = self._pending, {}
                self._save_or_fail(batch)
                self.written += len(batch)
                self._saved_seq = self._seq
                return self._seq
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_all, name="enrich-journal", daemon=True)
                self._writer.start()
            self._changed.notify()
            return self._seq

    async def saved(self, seq: int) -> None:
        """Wait (in the event loop, never blocking it) until put number ``seq`` is saved; raise
        the writer's failure if it stops first. A run's workers wait here before their next
        call, so a kill never costs more calls than were in flight."""
        while self._saved_seq < seq:
            if self._failure is not None or (self._threaded and not self._writer_alive()):
                with self._changed:
                    self._raise_failure()
                return
            if self._saved is None:  # one future for every worker waiting now
                self._loop = asyncio.get_running_loop()
                self._saved = self._loop.create_future()
            await self._saved

    def _wake_savers(self) -> None:
        """In the event loop: wake the workers waiting in ``saved``."""
        if self._saved is not None:
            waiting, self._saved = self._saved, None
            if not waiting.done():
                waiting.set_result(None)

    def _notify_saved(self) -> None:
        """From the writer thread: a batch is saved (or the writer stopped)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._wake_savers)

    def _save_or_fail(self, batch: dict[bytes, Entry]) -> None:
        try:
            self._save(batch)
        except Exception as exc:
            self._failure = self._failure_of(exc)
            self._raise_failure()

    def holding(self) -> bool:
        """Whether to hold the next call: a write has gone unanswered for ``STALL_AFTER`` (an
        outage should cost the calls in flight, not seconds of paid calls nobody can save).
        Raises the writer's failure once it has given up."""
        if self._failure is None and self.STALL_AFTER is None:
            return False  # the common case, asked before every call: no lock
        with self._changed:
            self._raise_failure()
            if self.STALL_AFTER is None:
                return False
            return self._stalled or bool(self._writing and time.monotonic() - self._write_started > self.STALL_AFTER)

    def flush(self) -> None:
        """Wait until every call handed to ``put`` is saved; raise the writer's failure if it has one."""
        with self._changed:
            while (self._pending or self._writing) and self._failure is None and self._writer_alive():
                self._changed.wait(0.5)
            self._raise_failure()

    def _writer_alive(self) -> bool:
        return self._writer is not None and self._writer.is_alive()

    def _stop_writer(self) -> None:
        """Save what is pending, then end the writer thread; raise its failure if not yet told."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        if self._writer is not None:
            self._writer.join()
        if self._failure is not None and not self._failure_told:
            self._failure_told = True
            raise self._failure  # calls finished at the end were not saved: say so

    def _raise_failure(self) -> None:
        """Raise why the writer stopped, if it has (with ``_changed`` held)."""
        if self._failure is not None:
            self._failure_told = True
            raise self._failure

    def _stall(self) -> None:
        with self._changed:
            self._stalled = True

    def _write_all(self) -> None:
        """The writer thread: whatever is pending, in one write, until closed. However it ends, a
        failure is recorded and every waiter woken: nothing waits on a dead writer."""
        failure: RunAborted | None = None
        try:
            while True:
                with self._changed:
                    while not self._pending and not self._closing:
                        self._changed.wait()
                    if not self._pending:
                        return
                    if self.GATHER_SECONDS and not self._closing:
                        self._changed.wait(self.GATHER_SECONDS)  # let a call finishing now join this write
                    batch, self._pending, self._writing = self._pending, {}, self._pending
                    self._taken_seq = self._seq
                    self._write_started = time.monotonic()
                self._save(batch)
                with self._changed:  # removed only once saved: a look-up finds it in one place or the other
                    self._writing = {}
                    self._stalled = False
                    self.written += len(batch)
                    self._saved_seq = self._taken_seq
                    self._changed.notify_all()
                self._notify_saved()
        except BaseException as exc:
            failure = self._failure_of(exc)
        finally:
            with self._changed:
                if failure is not None:
                    self._failure = failure
                elif self._pending or self._writing:  # ended with calls unsaved, and no reason known
                    self._failure = StorageError(f"the journal's writer for {self.path} stopped.")
                self._changed.notify_all()
            self._notify_saved()

    # --- reading ----------------------------------------------------------------------------

    async def alookup(self, fps: Sequence[bytes], bodies: bool = True) -> dict[bytes, Entry]:
        """``lookup`` from inside the event loop: a local file answers at once, in place."""
        return self.lookup(fps, bodies)

    def _held(self) -> Mapping[bytes, Entry]:
        """The finished calls not (yet) saved where look-ups find them."""
        with self._changed:
            if not self._writing and not self._unsaved:
                return dict(self._pending)
            return {**self._unsaved, **self._writing, **self._pending}

    def _split(self, fps: Iterable[bytes]) -> tuple[dict[bytes, Entry], list[bytes]]:
        """The held entries among ``fps`` (each once), and the fingerprints left to look up."""
        wanted = list(dict.fromkeys(fps))
        held = self._held()
        found = {fp: held[fp] for fp in wanted if fp in held}
        return found, [fp for fp in wanted if fp not in found]


# --- the append log's records ------------------------------------------------------------------

# The log opens with _MAGIC; then each record: fp, status (-1: none), attempts, latency_ms (NaN:
# none), at, then the lengths of error, fields_key, body, extracted and kind (NONE: none); the
# bytes follow, then a CRC32 of it all. A log without _MAGIC was written before kinds were
# stored: its records have no kind (_HEAD_NO_KIND).
_MAGIC = b"enrich-log-2\n"
_HEAD = struct.Struct("<16siiddIIIII")
_HEAD_NO_KIND = struct.Struct("<16siiddIIII")
_CRC = struct.Struct("<I")
_NONE = 0xFFFFFFFF


def _log_path(path: Path) -> Path:
    return Path(f"{path}-log")


class _LogFile:
    """The append log, mapped into memory: a record copied in is in the page cache at once, so it
    survives the process being killed, and costs no system call. Its space is allocated ahead
    (a full disk is an error here, never a crash when a page is first touched), and the bytes
    after the last record are zero, so a reader stops exactly there."""

    INITIAL = 256 << 10  # then doubled as it fills

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.size = 0
        self.map: mmap.mmap | None = None
        self._grow(self.INITIAL)
        self.map[: len(_MAGIC)] = _MAGIC  # type: ignore[index]
        self.end = len(_MAGIC)

    def _grow(self, wanted: int) -> None:
        size = max(wanted, 2 * self.size, self.INITIAL)
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(self.fd, 0, size)  # ENOSPC here, not a SIGBUS on a later write
        else:  # pragma: no cover - Windows and macOS: the file is grown, its blocks found on writing
            os.ftruncate(self.fd, size)
        if self.map is None:
            self.map = mmap.mmap(self.fd, size)
        else:
            self.map.resize(size)
        self.size = size

    def append(self, data: bytes) -> None:
        end = self.end + len(data)
        if end > self.size:
            self._grow(end)
        assert self.map is not None
        self.map[self.end : end] = data
        self.end = end

    def reset(self) -> None:
        """Its records are in SQLite: start again from the beginning, on zeros (a reader stops
        at the first record that is not whole)."""
        assert self.map is not None
        start = len(_MAGIC)
        self.map[start : self.end] = bytes(self.end - start)
        self.end = start

    def close(self) -> None:
        if self.map is not None:
            self.map.close()
            self.map = None
        os.close(self.fd)


def _record(fp: bytes, entry: Entry) -> bytes:
    status, error, body, attempts, latency_ms, at, fields_key, extracted, kind = entry
    error_b = b"" if error is None else error.encode("utf-8", "surrogatepass")
    key_b = b"" if fields_key is None else fields_key.encode()
    kind_b = b"" if kind is None else kind.value.encode()
    data = b"".join(
        (
            _HEAD.pack(
                fp,
                -1 if status is None else status,
                attempts,
                math.nan if latency_ms is None else latency_ms,
                at,
                _NONE if error is None else len(error_b),
                _NONE if fields_key is None else len(key_b),
                _NONE if body is None else len(body),
                _NONE if extracted is None else len(extracted),
                _NONE if kind is None else len(kind_b),
            ),
            error_b,
            key_b,
            body or b"",
            extracted or b"",
            kind_b,
        )
    )
    return data + _CRC.pack(zlib.crc32(data))


def _records(data: bytes) -> Iterator[tuple[bytes, Entry]]:
    """The whole records of a log; a record cut short (the run was killed writing it) ends it."""
    head, pos = (_HEAD, len(_MAGIC)) if data.startswith(_MAGIC) else (_HEAD_NO_KIND, 0)
    while pos + head.size <= len(data):
        fp, status, attempts, latency, at, *sizes = head.unpack_from(data, pos)
        end = pos + head.size + sum(n for n in sizes if n != _NONE)
        if end + 4 > len(data) or _CRC.unpack_from(data, end)[0] != zlib.crc32(data[pos:end]):
            return
        cursor, parts = pos + head.size, []
        for n in sizes:
            parts.append(None if n == _NONE else data[cursor : cursor + n])
            cursor += 0 if n == _NONE else n
        error, key, body, extracted, *kind = parts
        yield (
            fp,
            Entry(
                None if status < 0 else status,
                None if error is None else error.decode("utf-8", "surrogatepass"),
                body,
                attempts,
                None if math.isnan(latency) else latency,
                at,
                None if key is None else key.decode(),
                extracted,
                FailureKind(kind[0].decode()) if kind and kind[0] is not None else None,
            ),
        )
        pos = end + 4


def _replay_log(conn: sqlite3.Connection, path: Path) -> None:
    """Move the calls a killed run logged into SQLite (the newest of each), then empty the log."""
    log = _log_path(path)
    if not log.exists():
        return
    found: dict[bytes, Entry] = {}
    for fp, entry in _records(log.read_bytes()):
        if fp not in found or entry.at >= found[fp].at:
            found[fp] = entry
    if found:
        _insert(conn, [(fp, *e) for fp, e in found.items()])
    log.unlink()


_ROWS_PER_STATEMENT = 256  # 10 parameters each; SQLite allows 32,766


@functools.cache
def _insert_sql(rows: int) -> str:
    values = ",".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * rows)
    return (
        "INSERT OR REPLACE INTO calls (fp, status, error, body, attempts, latency_ms, at, fields_key, extracted, kind)"
        f" VALUES {values}"
    )


# A kind is stored as its value ("timeout"), and read back as the FailureKind: sqlite3 calls these
# for a kind only (a NULL, an answered call's, is never converted), so an answer costs nothing.
sqlite3.register_adapter(FailureKind, lambda kind: kind.value)
sqlite3.register_converter("enrich_failure_kind", lambda value: FailureKind(value.decode()))
_KIND = 'kind AS "kind [enrich_failure_kind]"'  # the converter, by the column's name (PARSE_COLNAMES)


def _insert(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert ``rows`` in one transaction, many rows per statement (fewer steps through sqlite3).
    Statements of 256, 128, ... 1 rows: a few shapes, each prepared once."""
    if conn.in_transaction:  # an earlier attempt was interrupted (a second Ctrl-C) mid-way: undo it
        conn.execute("ROLLBACK")
    conn.execute("BEGIN IMMEDIATE")
    try:
        start = 0
        while start < len(rows):
            n = 1 << min(_ROWS_PER_STATEMENT.bit_length() - 1, (len(rows) - start).bit_length() - 1)
            conn.execute(_insert_sql(n), [v for row in rows[start : start + n] for v in row])
            start += n
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


# SQLite's words for a disk that cannot take more, and for a file that is not what it was.
_FULL = ("database or disk is full", "no space left")
_DAMAGED = ("malformed", "not a database", "file is encrypted", "corrupt")


def _storage_problem(path: Path | None, exc: BaseException, doing: str) -> str:
    """What went wrong with the journal file, and what to do, for ``exc`` raised while ``doing``."""
    text = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) or type(exc).__name__
    lowered = text.lower()
    if any(word in lowered for word in _FULL):
        return (
            f"the disk holding the journal {path} is full ({text}) while {doing}. Free some space, then run "
            "the same command again: every call the journal saved is kept and not made again."
        )
    if any(word in lowered for word in _DAMAGED):
        return (
            f"the journal {path} is damaged ({text}) while {doing}. Move it aside to start over (the calls it "
            "held will be made again), or put back a copy from a backup."
        )
    if "readonly" in lowered or "read-only" in lowered or "permission" in lowered:
        return (
            f"the journal {path} cannot be written ({text}) while {doing}. Check the permissions of the file "
            "and its folder, then run the same command again."
        )
    return f"the journal {path} failed ({text}) while {doing}. Run the same command again once the disk is fixed."


class FileJournal(WriteThrough):
    """A SQLite journal of finished calls, written by one run at a time.

    A SQLite commit of a few rows rewrites whole pages, so a commit per finished call would cost
    the run a fifth of its speed, and a thread committing for it contends for the GIL with the
    event loop. Instead each finished call is appended, as it is put, to a log beside the file
    (``<journal>-log``, mapped into memory: a copy into the page cache, which survives the
    process being killed, at no system call) and is durable from then; every ``FLUSH_ROWS``
    calls (or ``FLUSH_SECONDS``) the logged calls go into SQLite in one transaction and the log
    starts again. A run that was killed leaves its log: the next ``open`` moves what it holds
    into SQLite first. A journal in memory (``path`` None) keeps no log.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path | None, lock: Lock | None = None) -> None:
        super().__init__(threaded=False)
        self._conn: sqlite3.Connection | None = conn
        self.path = path
        self._lock = lock
        self._log: _LogFile | None = None  # a file journal that writes
        self._kind = _KIND  # how a look-up reads the kind
        self._last_move = time.monotonic()

    @classmethod
    def open_readonly(cls, path: Path | None) -> FileJournal:
        """Open the journal at ``path`` only to look things up (``--dry-run``): no lock, no file
        created or changed. A missing file gives an empty, in-memory journal."""
        if path is None or not path.exists():
            return cls.open(None)
        # Closed cleanly (no -wal file), the file holds everything and nobody writes it: read it as
        # immutable, which creates no -shm/-wal beside it. Otherwise a run is live (or was killed):
        # a read-only connection sees its committed calls.
        mode = "ro" if Path(f"{path}-wal").exists() else "ro&immutable=1"
        try:
            conn = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode={mode}",
                uri=True,
                isolation_level=None,
                detect_types=sqlite3.PARSE_COLNAMES,
            )
            conn.execute("SELECT fp, status, error, attempts, latency_ms, at, fields_key, extracted FROM calls LIMIT 1")
            kinds = "kind" in {row[1] for row in conn.execute("PRAGMA table_info(calls)")}
        except sqlite3.DatabaseError as exc:
            raise OutputError(
                f"cannot read the journal {path}: {exc}. If the file is not an enrich journal, "
                "point --journal elsewhere."
            ) from None
        journal = cls(conn, path)
        if not kinds:  # a journal from before kinds were stored, read as it is: its entries have none
            journal._kind = "NULL"
        with contextlib.suppress(OSError):  # the calls a live (or killed) run has logged and not moved yet
            journal._unsaved.update(_records(_log_path(path).read_bytes()))
        return journal

    @classmethod
    def open(cls, path: Path | None, lock: bool = True) -> FileJournal:
        """Open (creating if needed) the journal at ``path``; ``None`` keeps it in memory.
        ``lock=False`` for a file no other run can know of (a run's temporary journal)."""

        held = None
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(
                    f"cannot create the folder {path.parent} for the journal ({exc.strerror or exc}). Point the "
                    "output (or --journal) at a folder you can write."
                ) from None
        if path is not None and lock:
            held = hold(
                path,
                JournalBusy(
                    f"the journal {path} is in use by another run. Wait for that run to finish "
                    "(or stop it), or give this one its own journal with --journal PATH."
                ),
            )
        conn = None
        try:
            conn = sqlite3.connect(
                str(path) if path else ":memory:", isolation_level=None, detect_types=sqlite3.PARSE_COLNAMES
            )
            if path is not None:
                conn.execute("PRAGMA journal_mode=WAL")
                # WAL + NORMAL: a commit survives the process being killed; a power cut may undo the
                # last commits (the last moments of calls), never corrupt the file. FULL would fsync
                # every commit.
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(calls)")}
            if "extracted" not in columns:  # a journal from before extracted values were kept
                conn.execute("ALTER TABLE calls ADD COLUMN fields_key TEXT")
                conn.execute("ALTER TABLE calls ADD COLUMN extracted BLOB")
            if "kind" not in columns:  # a journal from before kinds were stored: its entries have none
                conn.execute("ALTER TABLE calls ADD COLUMN kind TEXT")
            conn.execute("SELECT count(*) FROM calls").fetchone()  # reads every page of the index
        except (sqlite3.Error, OSError) as exc:
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            if held is not None:
                held.release()
            text = str(exc).lower()
            if any(word in text for word in _DAMAGED):
                raise OutputError(
                    f"cannot open the journal {path}: {exc}. If the file is not an enrich journal, point "
                    "--journal elsewhere; if it is damaged, move it aside to start over (the calls it held will "
                    "be made again), or put back a copy from a backup."
                ) from None
            raise OutputError(_storage_problem(path, exc, "opening it")) from None
        journal = cls(conn, path, held)
        if path is not None:
            doing = "reading back the calls a killed run left"
            try:
                _replay_log(conn, path)  # a killed run's last calls, into SQLite before anything
                doing = "making room for its log"
                journal._log = _LogFile(_log_path(path))
            except (sqlite3.Error, OSError) as exc:
                journal.close()
                raise OutputError(_storage_problem(path, exc, doing)) from None
        return journal

    def __enter__(self) -> FileJournal:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self, remove_if_empty: bool = False) -> None:
        """Save what is pending, close the database and release the lock.

        ``remove_if_empty`` deletes the files when this run wrote nothing (a run whose login
        failed leaves no empty journal behind), while the lock is still held.
        """
        if self._conn is None:
            return
        try:
            if self._failure is None:
                self.flush()  # the logged calls into SQLite, so the log can go
        finally:
            if self._log is not None:
                self._log.close()
                if self._failure is None and self.path is not None:
                    _log_path(self.path).unlink(missing_ok=True)
                self._log = None
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None
            if remove_if_empty and self.written == 0 and self.path is not None:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def put(self, fp: bytes, entry: Entry, saved: bool = True) -> int:
        """Record a finished call: in the log at once (durable from here), in SQLite with the next
        move. ``saved=False``: only remembered for this run's look-ups (a request that could not be
        sent), numbered 0."""
        self._raise_failure()
        if not saved:
            self._unsaved[fp] = entry
            return 0
        self._unsaved.pop(fp, None)
        if self._log is not None:
            try:
                self._log.append(_record(fp, entry))
            except (OSError, ValueError) as exc:  # no space to grow the log into
                self._fail(exc)
        self._pending[fp] = entry
        self._seq += 1
        self._saved_seq = self._seq
        self.written += 1
        if len(self._pending) >= FLUSH_ROWS or time.monotonic() - self._last_move >= FLUSH_SECONDS:
            self.flush()
        return self._seq

    def flush(self) -> None:
        """Move every logged call into SQLite (one transaction), and start the log again."""
        self._raise_failure()
        self._last_move = time.monotonic()
        if not self._pending:
            return
        assert self._conn is not None, "put on a closed journal"
        try:
            _insert(self._conn, [(fp, *e) for fp, e in self._pending.items()])
            if self._log is not None:
                self._log.reset()
        except (sqlite3.Error, OSError) as exc:
            self._fail(exc)
        self._pending.clear()

    def holding(self) -> bool:
        return False  # a local file answers at once, or fails the put itself

    def _fail(self, exc: BaseException) -> NoReturn:
        self._failure = failure = self._failure_of(exc)
        self._failure_told = True
        raise failure

    def _failure_of(self, exc: BaseException) -> RunAborted:
        if isinstance(exc, (sqlite3.Error, OSError)):
            return StorageError(_storage_problem(self.path, exc, "saving a finished call"))
        return StorageError(
            f"the journal's writer for {self.path} failed: {type(exc).__name__}: {exc}. Run the same command "
            "again (the calls already saved are not made again), and please report this with --debug output."
        )

    def _select(self, columns: str, fps: Sequence[bytes]) -> Iterator[tuple[Any, ...]]:
        assert self._conn is not None, "look-up on a closed journal"
        for start in range(0, len(fps), _CHUNK):
            chunk = fps[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            yield from self._conn.execute(f"SELECT fp, {columns} FROM calls WHERE fp IN ({marks})", chunk).fetchall()

    def lookup(self, fps: Iterable[bytes], bodies: bool = True) -> dict[bytes, Entry]:
        """The entries for those of ``fps`` that the journal holds, pending ones included.

        With ``bodies=False`` the entries carry no body (cheaper, for deciding what to call).
        """
        found, rest = self._split(fps)
        columns = f"status, error, {'body' if bodies else 'NULL'}, attempts, latency_ms, at, fields_key, extracted, {self._kind}"
        make = Entry._make
        try:
            found.update((row[0], make(row[1:])) for row in self._select(columns, rest))
        except sqlite3.Error as exc:
            raise StorageError(_storage_problem(self.path, exc, "looking up finished calls")) from None
        return found

    def __len__(self) -> int:
        self.flush()
        assert self._conn is not None
        try:
            (count,) = self._conn.execute("SELECT count(*) FROM calls").fetchone()
        except sqlite3.Error as exc:
            raise StorageError(_storage_problem(self.path, exc, "counting the calls it holds")) from None
        return int(count)
