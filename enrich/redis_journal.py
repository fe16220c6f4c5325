"""The journal kept in Redis, shared by every process and machine that names it (issue 7).

``journal: "redis://host:6379/0?prefix=acme-people&ttl=30d"`` keeps the fingerprint-keyed
record of finished calls in Redis instead of the SQLite file beside the output, so a task
re-run on another machine (Dask, Spark and Kubernetes all re-run a dead worker's tasks)
finds the calls already made. Each entry is one string under ``enrich:journal:<prefix>:<fp
hex>`` (its figures as JSON, the values extracted, the body), so a write is one MSET and 500
look-ups one MGET, and an entry is never half there (Redis evicting keys under memory
pressure takes a whole entry, which is then called again: run Redis with ``maxmemory-policy
noeviction`` to keep every call). ``prefix`` defaults to the output file's name; ``ttl`` makes
entries expire. A set ``enrich:journal:<prefix>:fps`` lists the fingerprints, for counting, and
``enrich:journal:<prefix>:epoch`` holds a token set by the first run: every write and look-up
checks it, so a Redis that lost the journal mid-run (restarted empty, flushed) stops the run.

    journal = RedisJournal.open("redis://127.0.0.1:6379/0?prefix=people")
    known = journal.lookup([fp1, fp2])     # as Journal.lookup, entries not yet written included
    journal.put(fp3, entry)                # handed to the writer thread; in Redis a round trip later
    journal.flush()                        # waits until everything put is in Redis
    journal.close()

Written through, as the SQLite file is (``journal.WriteThrough``): a background thread writes
each finished call as soon as it is put (after at most ``GATHER_SECONDS`` for another to join
it), together with whatever finished during the previous write (one MSET per round trip,
never blocking the event loop), and a worker starts no call before its last answer is in
Redis. A process killed at any moment (a Dask worker, a preempted pod) loses only the calls
in flight, so the task's rerun elsewhere pays for no more. While a write goes unanswered for
``STALL_AFTER``, ``holding()`` tells the engine to send no new call.

No lock: many processes write one journal by design (an entry is the same whoever writes
it). The entries hold what the engine gives them: the answers as the API sent them, and no
auth header (an Entry has none). Fail closed, as the shared limit does: when Redis cannot be
reached for ``FAIL_AFTER`` seconds, the next ``put``, ``holding`` or ``flush`` raises ``JournalUnavailable``
and the run stops (exit 3), resumable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import orjson

from .errors import FailureKind, RunAborted
from .journal import Entry, WriteThrough
from .retry import redis_patience, redis_unreachable, retrying_sync

FAIL_AFTER = 10.0  # seconds of Redis being unreachable before the run stops
SCHEMES = ("redis://", "rediss://")
DEFAULT_PREFIX = "enrich"  # a journal URL's `prefix` when it names none and there is no output to name it after
_OWN_PARAMS = ("prefix", "ttl")  # ours: removed before redis-py sees the URL
_CHUNK = 500  # fingerprints per MGET on look-up
# The values of KEYS without their bodies (up to the second newline), read from their first
# 4 KB where that holds them: deciding what to call needs no body, and bodies can be large.
_HEADS = """
local out = {}
for i, key in ipairs(KEYS) do
  local value = redis.call('GETRANGE', key, 0, 4095)
  if value == '' then
    value = false
  else
    local first = string.find(value, '\\n', 1, true)
    local second = first and string.find(value, '\\n', first + 1, true)
    if not second then
      value = redis.call('GET', key)
      first = string.find(value, '\\n', 1, true)
      second = first and string.find(value, '\\n', first + 1, true)
    end
    if second then value = string.sub(value, 1, second) end
  end
  out[i] = value
end
return out
"""
T = TypeVar("T")


def is_redis_url(value: object) -> bool:
    """Whether a journal location names Redis rather than a file."""
    return isinstance(value, str) and value.startswith(SCHEMES)


def named_after(url: str, output: str | None) -> str:
    """The journal URL with ``?prefix=`` the output file's name (``output``), unless it names one:
    so every shard of a run, and ``enrich.dask``, share the journal ``enrich run`` keeps."""
    from yarl import URL

    parsed = URL(url)
    if "prefix" in parsed.query:
        return url
    return str(parsed.update_query(prefix=output or DEFAULT_PREFIX))


def shown_url(url: str) -> str:
    """The URL with its password masked, for messages and the summary file."""
    from yarl import URL

    parsed = URL(url)
    return str(parsed.with_password("***")) if parsed.password else url


class JournalUnavailable(RunAborted):
    """Redis, which holds the journal, cannot be reached: the run stops, resumable."""


class JournalLost(JournalUnavailable):
    """Redis answers, but without the journal this run was writing: it restarted empty or was flushed."""


class RedisJournal(WriteThrough):
    """A ``Journal`` (``journal.Journal``: ``lookup``, ``put``, ``flush``, ``close``, ``written``, ``len``) in Redis."""

    GATHER_SECONDS = 0.002  # a write waits up to this long for one more finished call: fewer round trips
    STALL_AFTER = 0.25  # seconds a write may go unanswered before the run holds its next call

    def __init__(self, url: str, readonly: bool = False) -> None:
        from yarl import URL

        from .units import parse_duration

        try:
            import redis
        except ImportError:  # pragma: no cover - the extra is part of dev installs
            raise JournalUnavailable(
                "a journal in Redis needs the redis package: pip install 'enrich[redis]'."
            ) from None
        parsed = URL(url)
        self.path = shown_url(url)  # what messages show
        self.url = url
        prefix = parsed.query.get("prefix") or DEFAULT_PREFIX
        ttl = parsed.query.get("ttl")
        self._ttl = int(parse_duration(ttl)) if ttl else None
        plain = parsed.with_query({k: v for k, v in parsed.query.items() if k not in _OWN_PARAMS})
        self._client: Any = redis.Redis.from_url(str(plain), socket_timeout=5, socket_connect_timeout=5)
        self._base = f"enrich:journal:{prefix}:"
        self._set = self._base + "fps"
        # Gone or changed under a run: Redis lost the journal (restarted empty, flushed); checked
        # with every write and look-up, so a run never takes lost calls for calls not yet made.
        self._epoch_key = self._base + "epoch"
        self._epoch: bytes | None = None  # None: not checked (a read-only journal)
        self._heads = self._client.register_script(_HEADS)
        self._readonly = readonly
        super().__init__()

    @classmethod
    def open(cls, url: str) -> RedisJournal:
        """Connect (checking Redis answers, so a wrong URL stops the run before any call), and
        learn the journal's epoch: a token set once per journal, by the first run that opens it."""
        import secrets

        journal = cls(url)

        def epoch() -> bytes:
            pipe = journal._client.pipeline(transaction=True)
            pipe.set(journal._epoch_key, secrets.token_hex(8), nx=True, ex=journal._ttl)
            pipe.get(journal._epoch_key)
            return bytes(pipe.execute()[1])

        journal._epoch = journal._retrying(epoch)
        return journal

    @classmethod
    def open_readonly(cls, url: str) -> RedisJournal:
        """Only to look things up (``--dry-run``): nothing is ever written to Redis."""
        journal = cls(url, readonly=True)
        journal._retrying(journal._client.ping)
        return journal

    def __enter__(self) -> RedisJournal:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _key(self, fp: bytes) -> str:
        return self._base + fp.hex()

    def _retrying(self, call: Callable[[], T], on_retry: Callable[[], None] | None = None) -> T:
        patience = redis_patience(FAIL_AFTER)
        return retrying_sync(call, patience, on=redis_unreachable(), give_up=self._unavailable, before_wait=on_retry)

    def _unavailable(self, exc: BaseException) -> JournalUnavailable:
        return JournalUnavailable(
            f"cannot reach Redis at {self.path}, which holds the journal ({exc}). The run stopped; "
            "start Redis (or fix `journal:`), then run the same command again: the calls already "
            "saved there are not made again."
        )

    def close(self, remove_if_empty: bool = False) -> None:
        """Write what is pending, stop the writer and disconnect. ``remove_if_empty`` is accepted
        for the ``Journal`` interface; a shared journal is never removed."""
        if self._client is None:
            return
        try:
            self._stop_writer()  # it writes what is pending first (or gives up after FAIL_AFTER)
        finally:
            self._client.close()
            self._client = None

    def put(self, fp: bytes, entry: Entry, saved: bool = True) -> int:
        """Hand a finished call to the writer thread; raises ``JournalUnavailable`` once Redis has gone.
        A read-only journal (``--dry-run``) only remembers it."""
        if self._client is None:
            raise RuntimeError("put on a closed journal")
        return super().put(fp, entry, saved=saved and not self._readonly)

    def flush(self) -> None:
        """Wait until every call handed to ``put`` is in Redis."""
        if not self._readonly:
            super().flush()

    def _save(self, batch: dict[bytes, Entry]) -> None:
        self._retrying(lambda: self._write(batch), self._stall)

    def _failure_of(self, exc: BaseException) -> RunAborted:
        import redis.exceptions

        if isinstance(exc, JournalUnavailable):
            return exc
        if isinstance(exc, redis.exceptions.RedisError):  # e.g. out of memory, read-only replica
            return JournalUnavailable(
                f"Redis at {self.path}, which holds the journal, refused a write: {exc}. The run stopped; "
                "fix Redis, then run the same command again: the calls already saved there are not made again."
            )
        return JournalUnavailable(  # a bug: stop the run, never leave it waiting on this thread
            f"the journal's writer to Redis at {self.path} failed: {type(exc).__name__}: {exc}. The run "
            "stopped; run the same command again (the calls already saved are not made again), and please "
            "report this with --debug output."
        )

    def _check_epoch(self, epoch: bytes | None) -> None:
        if self._epoch is not None and epoch != self._epoch:
            raise JournalLost(
                f"Redis at {self.path} lost the journal while this run used it (Redis restarted without "
                "persistence, or the database was flushed): the calls saved there are gone, and would be taken "
                "for calls not yet made. The run stopped. Keep Redis's data across restarts (appendonly yes), "
                "then run the same command again: the calls lost are made again."
            )

    def _write(self, batch: dict[bytes, Entry]) -> None:
        """One MULTI/EXEC transaction: each entry's value (with its expiry), and the set that counts them."""
        pipe = self._client.pipeline(transaction=True)
        pipe.get(self._epoch_key)
        if self._ttl is None:
            pipe.mset({self._key(fp): _encode(entry) for fp, entry in batch.items()})
        else:
            for fp, entry in batch.items():
                pipe.set(self._key(fp), _encode(entry), ex=self._ttl)
        pipe.sadd(self._set, *batch)
        if self._ttl is not None:
            pipe.expire(self._set, self._ttl)
            pipe.expire(self._epoch_key, self._ttl)
        self._check_epoch(pipe.execute()[0])

    def lookup(self, fps: Iterable[bytes], bodies: bool = True) -> dict[bytes, Entry]:
        """The entries for those of ``fps`` that the journal holds, pending ones included."""
        found, rest = self._split(fps)
        fetch = self._client.mget if bodies else lambda keys: self._heads(keys=keys)
        for start in range(0, len(rest), _CHUNK):
            chunk = rest[start : start + _CHUNK]
            keys = [*(self._key(fp) for fp in chunk), self._epoch_key]
            *values, epoch = self._retrying(lambda keys=keys: fetch(keys))  # type: ignore[misc]
            self._check_epoch(epoch)
            for fp, value in zip(chunk, values, strict=True):
                if value is not None:  # else: no such entry (or it expired)
                    found[fp] = _decode(value, bodies)
        return found

    async def alookup(self, fps: Sequence[bytes], bodies: bool = True) -> dict[bytes, Entry]:
        """``lookup`` in a thread: the round trips to Redis do not hold the event loop (and the
        workers waiting on their rate-limit slots) still."""
        import asyncio

        return await asyncio.to_thread(self.lookup, fps, bodies)

    def __len__(self) -> int:
        """The calls this journal holds (all processes' together)."""
        self.flush()
        return int(self._retrying(lambda: self._client.scard(self._set)))


def _encode(entry: Entry) -> bytes:
    """One entry as one value: a JSON array of its figures, a newline, the extracted values
    (JSON, no newline in it; empty when none), a newline, then the body as it came."""
    head = orjson.dumps(
        [
            entry.status,
            entry.error,
            entry.attempts,
            entry.latency_ms,
            entry.at,
            entry.fields_key,
            entry.body is not None,
            None if entry.kind is None else entry.kind.value,
        ]
    )
    return b"%s\n%s\n%s" % (head, entry.extracted or b"", entry.body or b"")


def _decode(value: bytes, bodies: bool = True) -> Entry:
    head, _, rest = value.partition(b"\n")
    extracted, _, body = rest.partition(b"\n")
    # An entry written before kinds were stored has seven figures, and no kind.
    status, error, attempts, latency_ms, at, fields_key, has_body, *kind = orjson.loads(head)
    return Entry(
        status,
        error,
        body if has_body and bodies else None,
        attempts,
        latency_ms,
        at,
        fields_key,
        extracted or None,
        FailureKind(kind[0]) if kind and kind[0] is not None else None,
    )
