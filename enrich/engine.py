"""The run: rows in, calls made once, the table out in input order.

A run has two passes over the input, both streaming in batches:

1. **call** (async): render each row's request, fingerprint it, and call the API for
   the fingerprints the journal lacks, through ``concurrency`` fixed workers pulling
   from a bounded queue. Rows that render to the same request make one call; every
   finished call goes to the journal, and its worker starts no other until it is saved.
2. **build** (sync): read the same rows again (each batch checked against what pass 1
   saw: a file changed meanwhile stops the run), look each row's call up in the journal,
   extract the fields and write the output batch by batch, then settle the column types.

So a killed run loses only the calls in flight, a rerun calls only what is missing,
and ``extract`` (pass 2 alone) rebuilds the output after ``fields`` change, for free.
Before the first call, ``plan_job`` and ``run_job`` check what the run will write (the
output and errors file: writable, not the input, not written by another run).

    result = enrich(df, load_config("configs/demo.yaml"))     # polars in, polars out
    summary, out = run_job(config, RunOptions(retry_failed=True))

The library never prints; pass ``on_progress`` to watch a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import pickle
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import polars as pl

from .aio import run
from .client import Client, Counters, Outcome, PreparedRequest, prepare, shown
from .config import (
    ATTEMPTS_COLUMN,
    ERROR_COLUMN,
    ERRORS_COLUMNS,
    LATENCY_COLUMN,
    REQUEST_COLUMNS,
    ROW_COLUMN,
    STATUS_COLUMN,
    Config,
    journal_location,
)
from .errors import (
    AuthError,
    ConfigError,
    EnrichError,
    InputError,
    Interrupted,
    OutputBusy,
    OutputError,
    RunAborted,
    StorageError,
    ThrottledTooLong,
)
from .extract import parse_answer, to_json
from .journal import Entry, Journal
from .ratelimit import RateLimiter
from .redis_journal import RedisJournal, is_redis_url, shown_url
from .tables import changed, content_digest, typed_view
from .template import TemplateValueError, text_key

PLAN_ROWS = 1_000  # rows rendered at a time in the calling pass
HOLD_SECONDS = 0.05  # how often a held worker asks the journal again
NOT_CALLED = "not called yet: no result in the journal; run `enrich run` to make the call"


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How a run treats the journal and which rows it takes."""

    limit: int | None = None  # only the first N rows
    fresh: bool = False  # ignore what the journal holds (call everything again)
    retry_failed: bool = False  # call again the rows whose last result was a failure
    refresh_older_than: float | None = None  # seconds: call again results older than this
    shard: tuple[int, int] | None = None  # (I, N): only the rows of shard I of N
    # When "this run" began (time.time()): results written since then are this run's, never made
    # again by `fresh` or `retry_failed`. None: when this call began. Tasks of one run (Dask
    # partitions, and their re-runs after a worker died) share it.
    started_at: float | None = None


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot of a run, handed to ``on_progress``."""

    done: int
    total: int | None
    failed: int
    calls: int
    cached: int
    retries: int
    throttled: int
    elapsed: float
    skipped: int = 0


@dataclass(frozen=True, slots=True)
class Summary:
    """What a run did, for the closing report and for schedulers (``<output>.summary.json``)."""

    rows: int
    ok: int
    failed: int
    failures: dict[str, int] = field(default_factory=dict)  # "HTTP 404": 3, "timeout": 1
    skipped: int = 0  # rows left out by `when` or `skip_if_filled`
    calls: int = 0  # HTTP requests sent, retries included
    cached: int = 0  # rows answered from the journal of an earlier run
    deduped: int = 0  # rows that shared another row's request in this run
    retries: int = 0
    throttled: int = 0  # 429 answers
    logins: int = 0
    refreshes: int = 0
    elapsed: float = 0.0  # seconds, the whole run
    call_seconds: float = 0.0  # seconds of the calling pass
    latency_p50_ms: float | None = None  # of the calls made by this run
    latency_p95_ms: float | None = None
    rate_limit: float | None = None  # calls per second allowed by the config
    max_error_rate: float | None = None
    # Slots of a shared limit given up because this process reached them late (a busy machine):
    # capacity lost so that no second goes over the limit.
    late_slots: int = 0

    @property
    def error_rate(self) -> float:
        """The share of the rows that were meant to get an answer and have none."""
        considered = self.ok + self.failed
        return self.failed / considered if considered else 0.0

    @property
    def calls_per_second(self) -> float:
        """The achieved rate of the calling pass."""
        return self.calls / self.call_seconds if self.call_seconds > 0 else 0.0

    @property
    def over_budget(self) -> bool:
        """More rows failed than ``max_error_rate`` allows."""
        return self.max_error_rate is not None and self.error_rate > self.max_error_rate

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready data (what ``<output>.summary.json`` holds)."""
        data = {f: getattr(self, f) for f in self.__dataclass_fields__}
        data.update(
            error_rate=round(self.error_rate, 6),
            calls_per_second=round(self.calls_per_second, 2),
            over_budget=self.over_budget,
            elapsed=round(self.elapsed, 3),
            call_seconds=round(self.call_seconds, 3),
        )
        return data


@dataclass(frozen=True, slots=True)
class RunResult:
    """The enriched table and the run's summary."""

    frame: pl.DataFrame
    summary: Summary


ProgressCallback = Callable[[Progress], None]
Batches = Callable[[], Iterator[pl.DataFrame]]


# --- rows -> requests -------------------------------------------------------------------


class Planned(NamedTuple):
    """One row's request and its fingerprint, or why it has none (no error either: the row was
    left out by `when` or `skip_if_filled`)."""

    request: PreparedRequest | None
    fp: bytes | None
    error: str | None


def _plan(config: Config, row: dict[str, Any]) -> Planned:
    try:
        request = prepare(config.request, row)
        # The fingerprint is the request's with its secrets (and its origin's ${VAR}s) masked where
        # they were put: a rotated key keeps the journal, and row data is never masked.
        keyed = request if config.request.fingerprinted is None else prepare(config.request.fingerprinted, row, False)
    except (TemplateValueError, ValueError) as exc:
        return Planned(None, None, config.redactor.redact(str(exc)))
    return Planned(request, keyed.fingerprint(), None)


SKIPPED = Planned(None, None, None)  # left out by `when` or `skip_if_filled`: no call, no error


def _template_rows(
    batch: pl.DataFrame, config: Config, types: Mapping[str, pl.DataType] | None
) -> tuple[pl.DataFrame, list[dict[str, Any]], list[str | None] | None]:
    """A batch as the templates see it: the batch with text columns typed by ``types``, each row's
    template columns (their values, and the text they were read as), and per row the reason a
    cell cannot be sent (None when every row can)."""
    typed, reasons = typed_view(batch, types) if types else (batch, None)
    used = sorted(config.columns_used)
    if not used:
        return typed, [{}] * batch.height, reasons
    frame = typed.select(used)
    texts = [c for c in used if types and c in types]
    if texts:  # the text as read goes into strings, URLs, headers; the value into a JSON body
        frame = frame.hstack(batch.select(pl.col(c).alias(text_key(c)) for c in texts))
    return typed, frame.rows(named=True), reasons


def _plan_batch(
    batch: pl.DataFrame,
    config: Config,
    options: RunOptions,
    offset: int = 0,
    types: Mapping[str, pl.DataType] | None = None,
) -> tuple[list[Planned], list[bool] | None]:
    """Render a batch (whose first row is input row ``offset``). Returns the plans of the rows this
    run takes, and with a shard the mask of those rows. ``types`` (``tables.value_types``): the
    text columns whose values are numbers or booleans, as the templates and `when` see them."""
    typed, rows, reasons = _template_rows(batch, config, types)
    if config.selects_rows:
        calls = typed.select(config.call_mask().alias("call")).to_series().to_list()
        plans = [_plan(config, row) if call else SKIPPED for row, call in zip(rows, calls, strict=True)]
    else:
        plans = [_plan(config, row) for row in rows]
    if reasons is not None:  # a cell not of its column's kind: that row fails (unless left out), the rest go on
        plans = [
            Planned(None, None, config.redactor.redact(r)) if r is not None and p is not SKIPPED else p
            for p, r in zip(plans, reasons, strict=True)
        ]
    if options.shard is None:
        return plans, None
    index, count = options.shard
    if config.key:  # shard by the key columns' values: stable even when the request changes
        keys = [_key_hash(values) for values in typed.select(config.key).rows()]
    else:  # shard by the request: rows with the same request land in the same shard (no request: by row)
        keys = [int.from_bytes(p.fp[:8], "big") if p.fp is not None else offset + n for n, p in enumerate(plans)]
    keep = [k % count == index for k in keys]
    return [p for p, k in zip(plans, keep, strict=True) if k], keep


def shown_request(config: Config, row: dict[str, Any]) -> PreparedRequest | None:
    """Row ``row``'s request as a dry run or the errors file shows it: each secret as ``***``
    where it was put (the auth header or parameter too), the row's values as they are. None
    when the row has no request."""
    try:
        return shown(prepare(config.request.for_display, row), config.auth)
    except (TemplateValueError, ValueError):
        return None


class PlanSpool:
    """What pass 1 learnt of each batch (fingerprints, row errors, the shard mask), kept on disk
    so pass 2 need not render every request again. Read back batch by batch, in order."""

    def __init__(self) -> None:
        # Removed by the OS when closed, however the run ends.
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())

    def write(self, digest: int, plans: list[Planned], keep: list[bool] | None) -> None:
        """One batch: its ``content_digest``, its rows' plans and the shard mask."""
        errors = {i: p.error for i, p in enumerate(plans) if p.fp is None}
        record = (digest, keep, [p.fp for p in plans], errors)
        pickle.dump(record, self._file, protocol=pickle.HIGHEST_PROTOCOL)

    def read(self) -> Iterator[tuple[int, list[Planned], list[bool] | None]]:
        self._file.flush()
        self._file.seek(0)
        while True:
            try:
                digest, keep, fps, errors = pickle.load(self._file)
            except EOFError:
                return
            yield digest, [Planned(None, fp, errors.get(i)) for i, fp in enumerate(fps)], keep

    def close(self) -> None:
        self._file.close()


def _key_hash(values: tuple[Any, ...]) -> int:
    digest = hashlib.blake2b(to_json(values).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _reusable(entry: Entry, options: RunOptions, started: float) -> bool:
    """Whether a journal entry answers this run's row, or the call must be made (again)."""
    if entry.at >= started:
        return True  # made by this run
    if options.fresh:
        return False
    if options.refresh_older_than is not None and entry.at < time.time() - options.refresh_older_than:
        return False
    return not (options.retry_failed and entry.failed)


# --- pass 1: call ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Tally:
    rows: int = 0
    failed: int = 0
    skipped: int = 0
    cached: int = 0
    deduped: int = 0
    logins: int = 0
    late_slots: int = 0
    latencies: array[float] = field(default_factory=lambda: array("d"))  # ms, each call made by this run


async def call_pass(
    batches: Batches,
    config: Config,
    journal: Journal | RedisJournal,
    options: RunOptions = RunOptions(),
    on_progress: ProgressCallback | None = None,
    total: int | None = None,
    spool: PlanSpool | None = None,
    types: Mapping[str, pl.DataType] | None = None,
) -> tuple[Counters, _Tally]:
    """Make every call the journal lacks; each finished call is written to the journal.
    ``types``: the value types of text columns (``tables.value_types``)."""
    started_wall = options.started_at if options.started_at is not None else time.time()
    started = time.perf_counter()
    counters = Counters()
    tally = _Tally()
    in_flight: set[bytes] = set()
    finished: set[bytes] = set()  # calls finished since the current batch's journal look-up
    queue: asyncio.Queue[tuple[bytes, PreparedRequest] | None] = asyncio.Queue(maxsize=config.concurrency * 4)
    last_report = 0.0

    def report(force: bool = False) -> None:
        nonlocal last_report
        if on_progress is None:  # per row: no clock read when nobody watches
            return
        now = time.perf_counter()
        if not force and now - last_report < 0.1:
            return
        last_report = now
        on_progress(
            Progress(
                tally.rows, total, tally.failed, counters.calls, tally.cached,
                counters.retries, counters.throttled, now - started, tally.skipped,
            )
        )  # fmt: skip

    key = fields_key(config)
    latencies = tally.latencies
    async with _client(config, counters) as client:
        session, tokens = client.session, client.tokens

        async def worker() -> None:
            while (item := await queue.get()) is not None:
                fp, request = item
                while journal.holding():  # the journal cannot save now: a call made would be lost
                    await asyncio.sleep(HOLD_SECONDS)
                outcome = await client.call(request)
                seq = journal.put(fp, _entry(outcome, config, key), saved=not outcome.local)
                in_flight.discard(fp)
                finished.add(fp)  # until the next batch's look-up, which will see it
                tally.rows += 1
                tally.failed += outcome.error is not None
                if outcome.latency_ms is not None:
                    latencies.append(outcome.latency_ms)
                report()
                # A call counts as in flight until its answer is saved: no worker starts another
                # before, so a kill costs no more calls than were in flight.
                await journal.saved(seq)

        async def produce() -> None:
            logged_in = tokens is None
            offset = 0
            for batch in batches():
                batch_plans: list[Planned] = []
                batch_keep: list[bool] | None = [] if options.shard is not None else None
                # Rendered in slices, so the first calls go out after a few milliseconds, not after
                # the whole batch is rendered, and rendering overlaps the waits for answers.
                for start in range(0, max(batch.height, 1), PLAN_ROWS):
                    plans, keep = _plan_batch(batch.slice(start, PLAN_ROWS), config, options, offset + start, types)
                    batch_plans += plans
                    if batch_keep is not None and keep is not None:
                        batch_keep += keep
                    # The look-up sees every call finished before it starts; those finishing while
                    # it runs (it may wait on Redis) stay in `finished`.
                    finished.clear()
                    known = await journal.alookup([p.fp for p in plans if p.fp is not None], bodies=False)
                    queued: set[bytes] = set()
                    for plan in plans:
                        fp = plan.fp
                        if fp is None:
                            tally.rows += 1
                            if plan.error is None:
                                tally.skipped += 1
                            else:
                                tally.failed += 1
                        elif fp in queued or fp in in_flight or fp in finished:
                            tally.rows += 1
                            tally.deduped += 1
                        elif fp in known and _reusable(known[fp], options, started_wall):
                            tally.rows += 1
                            if known[fp].at >= started_wall:  # made by this run, for an earlier row
                                tally.deduped += 1
                            else:
                                tally.cached += 1
                            tally.failed += known[fp].error is not None
                        else:
                            if not logged_in:  # log in at the first call, not before: a resumed run may need none
                                await tokens.login(session)  # type: ignore[union-attr]
                                logged_in = True
                            queued.add(fp)
                            in_flight.add(fp)
                            await queue.put((fp, plan.request))  # type: ignore[arg-type]
                    report()
                if spool is not None:
                    spool.write(content_digest(batch), batch_plans, batch_keep)
                offset += batch.height
            for _ in range(config.concurrency):
                await queue.put(None)

        stop: BaseException | None = None
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(produce())
                for _ in range(config.concurrency):
                    group.create_task(worker())
        except BaseExceptionGroup as group_error:
            # One task's fatal error (a failed re-login) stops them all; raised as itself below,
            # outside this handler: raised here, it would get the group (which holds it) as its
            # __context__, a cycle that cannot be pickled (a Dask worker sends errors pickled).
            stop = _first_leaf(group_error)
        finally:
            if stop is None:
                journal.flush()
        if stop is not None:
            # Save what finished; the stop is what the user must read, whatever the journal says.
            with contextlib.suppress(Exception):
                journal.flush()
            if isinstance(stop, StorageError) and counters.calls == 0:
                stop = OutputError(str(stop))  # found before any call: nothing was paid for (exit 2)
            elif isinstance(stop, InputError) and counters.calls > 0:  # a bad line far into the file
                stop = RunAborted(f"{stop} The calls made are saved in the journal: run the same command again.")
            raise stop
        tally.logins = tokens.logins if tokens else 0
        tally.late_slots = getattr(client.limiter, "rebooked", 0)
    report(force=True)
    return counters, tally


@contextlib.asynccontextmanager
async def _client(config: Config, counters: Counters | None = None) -> AsyncIterator[Client]:
    """One session (``concurrency`` connections, one TLS context), the token manager and the
    limiter of a run."""
    import aiohttp

    from .auth import TokenManager

    ssl = config.tls.context()  # True (aiohttp's verified default) unless `tls:` changes something
    connector = aiohttp.TCPConnector(limit=config.concurrency, limit_per_host=0, ttl_dns_cache=300, ssl=ssl)
    # No cookie jar: a cookie goes out only when the config says so (`auth.token_cookie`), and
    # nothing a response sets travels with later calls.
    rate = config.rate_limit
    limiter: Any
    if rate is not None and rate.shared:  # one limit for every process using this Redis and key
        from .shared_limit import SharedRateLimiter

        limiter = SharedRateLimiter(rate.shared, rate.key, rate.per_second, rate.burst)
    else:
        limiter = RateLimiter(rate.per_second if rate else None)
    async with (
        aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as session,
        contextlib.AsyncExitStack() as stack,
    ):
        if hasattr(limiter, "close"):
            stack.push_async_callback(limiter.close)
        yield Client(
            session,
            retry=config.retry,
            timeout=config.timeout,
            limiter=limiter,
            tokens=(
                TokenManager(
                    config.auth,
                    config.redactor,
                    config.retry,
                    config.timeout,
                    max_response_bytes=config.max_response_bytes,
                )
                if config.auth
                else None
            ),
            redactor=config.redactor,
            counters=counters,
            follow_redirects=config.request.follow_redirects,
            max_response_bytes=config.max_response_bytes,
            idempotency_header=config.request.idempotency_header,
        )


def fields_key(config: Config) -> str | None:
    """Names the `fields` that extracted values were made for (None: the whole response is kept)."""
    if not config.fields:
        return None
    return orjson.dumps([[f.name, f.path] for f in config.fields]).decode()


def _entry(outcome: Outcome, config: Config, key: str | None) -> Entry:
    """The journal's record of a call: the body exactly as the API sent it (an API that echoes a
    token or a key has that in its answer, and the answer is the user's data), its fields
    extracted. What enrich says about it (the error) is masked where it is made."""
    body, doc = outcome.body, outcome.doc
    extracted = None
    if key is not None and doc is not None and config.fields:
        try:
            # An exact number (kept as its text) goes in as text, and comes back as text, as the
            # output holds it; an integer wider than 64 bits is left to pass 2, which reads the body.
            extracted = orjson.dumps([f.get(doc) for f in config.fields])
        except orjson.JSONEncodeError:
            extracted = None
    error = outcome.error
    if error is not None and not error.isascii():
        # As text that encodes: aiohttp keeps a header's bytes that are not UTF-8 (a reason
        # phrase, a Content-Type) as lone surrogates, which neither SQLite nor JSON can store.
        error = error.encode("utf-8", "replace").decode()
    return Entry(outcome.status, error, body, outcome.attempts, outcome.latency_ms, time.time(), key, extracted)


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


# --- pass 2: build ------------------------------------------------------------------------------


def _failure_kind(status: int | None, error: str) -> str:
    if status is not None:
        return f"HTTP {status}" if status >= 300 else "bad response"
    if error.startswith("timed out"):
        return "timeout"
    if error.startswith("connection error"):
        return "connection error"
    if error.startswith("not called"):
        return "not called"
    return "bad row data"


class Built(NamedTuple):
    """One batch of output, and (when asked for) its failed rows with their requests."""

    frame: pl.DataFrame
    failed: pl.DataFrame | None


def build_pass(
    batches: Batches,
    config: Config,
    journal: Journal | RedisJournal,
    options: RunOptions = RunOptions(),
    spool: PlanSpool | None = None,
    with_failed: bool = False,
    source: Path | str = "the input table",
    types: Mapping[str, pl.DataType] | None = None,
) -> tuple[Iterator[Built], Counter[str]]:
    """Yield the output batch by batch, from the journal; the counter fills as batches are taken.
    With ``spool`` (what the calling pass saw of ``source``), a batch that differs from the one
    the calls were made for stops the run (``InputChanged``)."""
    failures: Counter[str] = Counter()
    fields = config.fields
    key = fields_key(config)
    width = len(fields) if fields else 1
    empty = (None,) * width
    skipped_row = (*empty, None, None, None, None)

    def values(plan: Planned, entry: Entry | None) -> tuple[Any, ...]:
        """(*fields, status, error, attempts, latency_ms)"""
        if plan.fp is None and plan.error is None:
            failures["skipped"] += 1
            return skipped_row
        if plan.fp is None or entry is None:
            error = plan.error or NOT_CALLED
            failures[_failure_kind(None, error)] += 1
            return (*empty, None, error, 0 if plan.error else None, None)
        diagnostics = (entry.attempts, None if entry.latency_ms is None else round(entry.latency_ms, 1))
        if entry.error is not None:
            failures[_failure_kind(entry.status, entry.error)] += 1
            return (*empty, entry.status, entry.error, *diagnostics)
        failures["ok"] += 1
        if entry.extracted is not None and entry.fields_key == key:  # extracted when the call was made
            return (*orjson.loads(entry.extracted), entry.status, None, *diagnostics)
        if not entry.body:
            return (*empty, entry.status, None, *diagnostics)
        doc = parse_answer(entry.body)
        if fields:
            return (*(f.get(doc) for f in fields), entry.status, None, *diagnostics)
        return (entry.body.decode(), entry.status, None, *diagnostics)

    def generate() -> Iterator[Built]:
        offset = 0
        planned = spool.read() if spool is not None else None
        for batch in batches():
            if planned is not None:
                digest, plans, keep = next(planned, (None, [], None))
                if digest != content_digest(batch):  # the rows are not those the calls were made for
                    raise changed(
                        source,
                        f"rows {offset + 1:,} to {offset + batch.height:,} differ from those the calls were made for",
                    )
            else:
                plans, keep = _plan_batch(batch, config, options, offset, types)
            numbers = list(range(offset, offset + batch.height))
            offset += batch.height
            kept = batch
            if keep is not None:
                kept = batch.filter(pl.Series(keep, dtype=pl.Boolean))
                numbers = [n for n, k in zip(numbers, keep, strict=True) if k]
            entries = journal.lookup((p.fp for p in plans if p.fp is not None), bodies=False)
            # Bodies only where the values extracted at call time do not fit today's `fields`.
            stale = [
                fp for fp, e in entries.items() if e.error is None and (e.extracted is None or e.fields_key != key)
            ]
            if stale:
                entries.update(journal.lookup(stale))
            results = [values(p, entries.get(p.fp) if p.fp is not None else None) for p in plans]
            skipped = [p.fp is None and p.error is None for p in plans] if config.selects_rows else None
            frame = assemble(kept, config, results, skipped)
            failed = _failed_rows(kept, config, results, numbers, types) if with_failed else None
            if options.shard is not None:
                frame = frame.with_columns(pl.Series(ROW_COLUMN, numbers, dtype=pl.Int64))
            yield Built(frame, failed)

    return generate(), failures


def _failed_rows(
    batch: pl.DataFrame,
    config: Config,
    results: list[tuple[Any, ...]],
    numbers: list[int],
    types: Mapping[str, pl.DataType] | None = None,
) -> pl.DataFrame:
    """The failed rows of a batch, for ``--errors-out``: row number, the columns the request reads
    (as read), the request as sent (each secret and the token as ``***``, where they were put),
    status, error and attempts."""
    failed = [i for i, r in enumerate(results) if r[-3] is not None]
    used = sorted(config.columns_used)
    part = batch[failed] if failed else batch.clear()
    _, rows, _ = _template_rows(part, config, types)
    requests: list[tuple[str | None, str | None, str | None, str | None]] = []
    for row in rows:
        req = shown_request(config, row)
        if req is None:
            requests.append((None, None, None, None))
            continue
        text = req.body.decode("utf-8", "replace") if req.body else None
        requests.append((req.method, str(req.url), orjson.dumps(req.headers).decode(), text))
    return pl.DataFrame(
        [
            pl.Series(ROW_COLUMN, [numbers[i] for i in failed], dtype=pl.Int64),
            *(part[c] for c in used),
            *(pl.Series(name, [r[i] for r in requests], dtype=pl.String) for i, name in enumerate(REQUEST_COLUMNS)),
            pl.Series(STATUS_COLUMN, [results[i][-4] for i in failed], dtype=pl.Int64),
            pl.Series(ERROR_COLUMN, [results[i][-3] for i in failed], dtype=pl.String),
            pl.Series(ATTEMPTS_COLUMN, [results[i][-2] for i in failed], dtype=pl.Int64),
        ]
    )


def _column(name: str, values: list[Any], text: bool = False) -> pl.Series:
    """One output column, typed by its values: Int64, Float64, Boolean or String (JSON text).
    ``text``: String whatever the values (a field column that holds the input's text too)."""
    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return pl.Series(name, values, dtype=pl.String)
    if text:
        pass
    elif kinds == {bool}:
        return pl.Series(name, values, dtype=pl.Boolean)
    elif kinds == {int} and all(v is None or -(2**63) <= v < 2**63 for v in values):
        return pl.Series(name, values, dtype=pl.Int64)
    elif kinds <= {int, float} and kinds != {int}:
        return pl.Series(name, [None if v is None else float(v) for v in values], dtype=pl.Float64)
    return pl.Series(name, [v if v is None or isinstance(v, str) else to_json(v) for v in values], dtype=pl.String)


def assemble(
    df: pl.DataFrame, config: Config, results: list[tuple[Any, ...]], skipped: list[bool] | None = None
) -> pl.DataFrame:
    """Append the output columns (fields, ``_http_status``, ``_error``, diagnostics) to the input rows.

    ``results`` holds ``(*fields, status, error, attempts, latency_ms)`` per row. A column the
    input already has (allowed with `skip_if_filled`) keeps the input's value in the rows that
    got no call (``skipped``).
    """
    names = list(config.field_columns)
    columns = list(zip(*results, strict=True)) if results else [() for _ in range(len(names) + 4)]
    # A field column the input already has as text (a CSV, filled in part by hand): the API's values
    # join it as their JSON text, so the input's own values stay exactly as written.
    text = {n for n in names if df.schema.get(n) == pl.String} if skipped is not None else set()
    new = [_column(name, list(col), name in text) for name, col in zip(names, columns[:-4], strict=True)]
    new.append(pl.Series(STATUS_COLUMN, list(columns[-4]), dtype=pl.Int64))
    new.append(pl.Series(ERROR_COLUMN, list(columns[-3]), dtype=pl.String))
    if config.diagnostics:
        new.append(pl.Series(ATTEMPTS_COLUMN, list(columns[-2]), dtype=pl.Int64))
        new.append(pl.Series(LATENCY_COLUMN, list(columns[-1]), dtype=pl.Float64))
    kept = set(df.columns)
    if skipped is not None and kept.intersection(s.name for s in new):
        mask = pl.Series("skipped", skipped, dtype=pl.Boolean)
        fields = set(config.field_columns)
        new = [_keep_where(df[s.name], s, mask, fill=s.name in fields) if s.name in kept else s for s in new]
    return df.with_columns(new)


def _keep_where(old: pl.Series, new: pl.Series, skipped: pl.Series, fill: bool) -> pl.Series:
    """``new``, with the input column's own values in the rows that got no call; with ``fill``
    (a field column) the API only fills the blanks: a value already there (entered by hand, or
    from an earlier run) is kept, and a failed call never erases one. The types are joined
    without loss (Int64 and Float64 give Float64; text and numbers give text)."""
    if fill:
        filled = old.is_not_null() if old.dtype.is_nested() else (old.is_not_null() & (old.cast(pl.String) != ""))
        keep = skipped | filled.fill_null(False)
    else:
        keep = skipped
    if new.null_count() == new.len():  # nothing new in this batch: the input's type stands
        new = new.cast(old.dtype)
    try:
        return pl.select(pl.when(keep).then(old).otherwise(new).alias(new.name)).to_series()
    except pl.exceptions.PolarsError:
        return pl.select(
            pl.when(keep).then(old.cast(pl.String)).otherwise(new.cast(pl.String)).alias(new.name)
        ).to_series()


def _percentile(values: array[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 1)


def _summary(
    config: Config, counters: Counters, tally: _Tally, failures: Counter[str], elapsed: float, call_seconds: float = 0.0
) -> Summary:
    ok = failures.pop("ok", 0)
    skipped = failures.pop("skipped", 0)
    failed = sum(failures.values())
    return Summary(
        rows=ok + failed + skipped,
        ok=ok,
        failed=failed,
        failures=dict(failures.most_common()),
        skipped=skipped,
        calls=counters.calls,
        cached=tally.cached,
        deduped=tally.deduped,
        retries=counters.retries,
        throttled=counters.throttled,
        logins=tally.logins,
        refreshes=max(0, tally.logins - 1),
        elapsed=elapsed,
        call_seconds=call_seconds,
        latency_p50_ms=_percentile(tally.latencies, 0.5),
        latency_p95_ms=_percentile(tally.latencies, 0.95),
        rate_limit=config.rate_limit.per_second if config.rate_limit else None,
        max_error_rate=config.max_error_rate,
        late_slots=tally.late_slots,
    )


# --- entry points -------------------------------------------------------------------------------


def _frame_batches(df: pl.DataFrame, rows: int) -> Batches:
    def gen() -> Iterator[pl.DataFrame]:
        if df.height == 0:
            yield df
        for start in range(0, df.height, rows):
            yield df.slice(start, rows)

    return gen


def as_config(config: Config | str | Path | dict[str, Any]) -> Config:
    """Accept a ``Config``, a path to a YAML file, or the same keys as a dict."""
    from .config import config_from_dict, load_config

    if isinstance(config, Config):
        return config
    if isinstance(config, dict):
        return config_from_dict(config)
    return load_config(config)


async def aenrich(
    df: pl.DataFrame,
    config: Config | str | Path | dict[str, Any],
    on_progress: ProgressCallback | None = None,
    journal: Path | str | None = None,
    options: RunOptions = RunOptions(),
) -> RunResult:
    """Enrich a DataFrame (async): every row called once, output columns appended, order kept.

    ``journal`` keeps the calls in a file (or Redis, a redis:// URL), so a second call with the same
    rows costs nothing.
    """
    from .tables import BATCH_ROWS, collect_frames

    config = as_config(config)
    config.check_schema(df.schema, "the input table")
    if options.limit is not None:
        df = df.head(options.limit)
    batches = _frame_batches(df, BATCH_ROWS)
    started = time.perf_counter()
    spool = PlanSpool()
    try:
        with contextlib.closing(open_journal(journal)) as jr:
            counters, tally = await call_pass(batches, config, jr, options, on_progress, df.height, spool)
            call_seconds = time.perf_counter() - started
            built, failures = build_pass(batches, config, jr, options, spool)
            frame = collect_frames([b.frame for b in built])
    finally:
        spool.close()
    summary = _summary(config, counters, tally, failures, time.perf_counter() - started, call_seconds)
    return RunResult(frame, summary)


def enrich(
    df: pl.DataFrame,
    config: Config | str | Path | dict[str, Any],
    on_progress: ProgressCallback | None = None,
    journal: Path | str | None = None,
    options: RunOptions = RunOptions(),
) -> RunResult:
    """Enrich a DataFrame; for notebooks and scripts (runs its own event loop)."""
    return run(aenrich(df, config, on_progress, journal, options))


@dataclass(frozen=True, slots=True)
class Job:
    """Where a file-to-file run reads, writes and keeps its journal."""

    input: Path
    output: Path
    journal: Path | str | None  # None: no journal kept after the run; str: a redis:// URL (RedisJournal)
    errors_out: Path | None = None  # the failed rows, with their requests
    # Text columns (CSV) whose values the templates and `when` see as numbers or booleans.
    value_types: Mapping[str, pl.DataType] = field(default_factory=dict)


def plan_job(
    config: Config,
    input_path: Path | None = None,
    output: Path | None = None,
    journal: Path | str | None = None,
    use_journal: bool | None = None,
    options: RunOptions = RunOptions(),
    in_place: bool = False,
) -> Job:
    """Settle the files of a run, and check them against the config before any call.

    ``--shard`` and ``--limit`` without ``--output`` write beside the configured output
    (``people.shard-0-of-4.parquet``, ``people.first-5.parquet``), so neither replaces a
    whole run's table; a trial shares the whole run's journal. An output that is the input
    is refused unless ``in_place``.
    """
    from .tables import check_utf8, output_format, scan_table, value_types

    source = input_path or config.input
    if source is None:
        raise ConfigError(f"{config.source}: no input table. Set `input:` in the config or pass --input PATH.")
    target = output or config.output
    if target is None:
        raise ConfigError(f"{config.source}: no output table. Set `output:` in the config or pass --output PATH.")
    output_format(target)
    errors = config.errors_out
    if errors is not None:
        output_format(errors, "errors_out")
    unsharded = target
    if options.shard is not None and output is None:  # each shard its own files
        target, errors = (_shard_path(p, options.shard) if p is not None else None for p in (target, errors))
    assert target is not None
    journal_beside = target  # a trial run (--limit) keeps the whole run's journal: its calls count for it
    if options.limit is not None and output is None:
        target, errors = (_trial_path(p, options.limit) if p is not None else None for p in (target, errors))
    assert target is not None
    if in_place and _same_file(target, source):  # through a link: replace the file it points to
        target = target.resolve()
    lf = scan_table(source, config.input_types)
    schema = lf.collect_schema()
    check_utf8(source)
    types = value_types(lf, config.columns_read, config.input_types, source)
    config.check_schema({c: types.get(c, t) for c, t in schema.items()}, source.name)
    _check_files(config, source, target, errors, list(schema), options, in_place)
    if use_journal is None:  # --journal PATH overrides `journal: false`; --no-journal overrides both
        use_journal = config.use_journal or journal is not None
    if isinstance(journal, str):
        journal = journal_location(journal, "--journal", config.redactor)
    kept = journal or config.journal or journal_beside.with_name(journal_beside.name + ".journal")
    if isinstance(kept, str):  # a Redis journal: named after the output, so every shard shares it
        from yarl import URL

        url = URL(kept)
        if "prefix" not in url.query:
            kept = str(url.update_query(prefix=unsharded.name))
    return Job(source, target, kept if use_journal else None, errors, types)


def _check_files(
    config: Config,
    source: Path,
    target: Path,
    errors: Path | None,
    columns: list[str],
    options: RunOptions,
    in_place: bool,
) -> None:
    """What can be known of the output files before any call: none is a folder, none is the
    input (unless ``in_place``), and no column of ours clashes with an input column."""
    for what, path in (("output", target), ("errors_out", errors)):
        if path is None:
            continue
        if path.is_dir():
            raise OutputError(f"{what} {path} is a folder; name a file in it, e.g. {path / ('out' + '.parquet')}.")
        if _same_file(path, source) and not (in_place and what == "output"):
            fix = (
                "Write the output elsewhere (--output PATH), or pass --in-place to replace the input with "
                "the enriched table (atomically, once every call is made)."
                if what == "output"
                else "Name another file for errors_out."
            )
            raise OutputError(f"{what} {path} is the input table: the run would overwrite it. {fix}")
    if options.shard is not None and ROW_COLUMN in columns:
        raise ConfigError(
            f"{source.name} has a column named {ROW_COLUMN}, which a shard's output adds (the input row number, for "
            f"`enrich merge`). Rename that column to run with --shard."
        )
    if errors is not None:
        clash = sorted(set(ERRORS_COLUMNS) & config.columns_used)
        if clash:
            raise ConfigError(
                f"{source.name} has a column named {clash[0]}, which the request uses and the errors file "
                f"({errors}) writes itself ({', '.join(ERRORS_COLUMNS)}). Rename that input column, or leave "
                "errors_out out."
            )


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (through links, `..` and all); False when ``a`` does not exist."""
    try:
        return a.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def writable(path: Path, what: str) -> None:
    """Make ``path``'s folder and prove a file can be written in it, or raise ``OutputError``
    (before any call: a folder without permission is found now, not after every call is paid)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise OutputError(
            f"cannot write the {what} {path}: {exc.strerror or exc} in the folder {path.parent}. Check its "
            "permissions and free space, or point the file elsewhere."
        ) from None


def journal_label(journal: Path | str | None) -> str:
    """The journal as messages show it (a Redis URL without its password)."""
    return shown_url(journal) if isinstance(journal, str) else str(journal)


def open_journal(journal: Path | str | None, readonly: bool = False) -> Journal | RedisJournal:
    """The journal at a file path or a redis:// URL (``None``: in memory)."""
    if is_redis_url(journal):
        assert isinstance(journal, str)
        return RedisJournal.open_readonly(journal) if readonly else RedisJournal.open(journal)
    path = Path(journal) if journal is not None else None
    return Journal.open_readonly(path) if readonly else Journal.open(path)


def _shard_path(path: Path, shard: tuple[int, int]) -> Path:
    index, count = shard
    return path.with_name(f"{path.stem}.shard-{index}-of-{count}{path.suffix}")


def _trial_path(path: Path, limit: int) -> Path:
    return path.with_name(f"{path.stem}.first-{limit}{path.suffix}")


def run_job(
    config: Config,
    job: Job,
    options: RunOptions = RunOptions(),
    on_progress: ProgressCallback | None = None,
) -> Summary:
    """Read the input, make the calls the journal lacks, write the output atomically.

    Ctrl-C or SIGTERM stops it with ``Interrupted``: the finished calls stay in the
    journal, and nothing is written under the output name. Whatever stops the run, the
    summary file says so (``status``), so a scheduler never reads the last good run's.
    """
    from .tables import InputStamp, count_rows, iter_batches, scan_table

    with _claim_outputs(job):
        try:
            with _journal(job) as journal, contextlib.closing(PlanSpool()) as spool:
                stamp = InputStamp.of(job.input)
                lf = scan_table(job.input, config.input_types)

                def batches() -> Iterator[pl.DataFrame]:
                    return iter_batches(lf, job.input, options.limit)

                # The total only feeds a progress bar; counting costs a read of the whole input.
                if on_progress is not None and options.shard is None:
                    total = count_rows(lf, job.input, options.limit)
                else:
                    total = None
                started = time.perf_counter()
                counters, tally = _calls(batches, config, journal, job, options, on_progress, total, spool)
                call_seconds = time.perf_counter() - started
                stamp.check()
                failures = _write(
                    batches,
                    config,
                    journal,
                    options,
                    job.output,
                    spool,
                    job.errors_out,
                    stamp.check,
                    job.input,
                    job.value_types,
                )
        except BaseException as stop:  # the output is ours (locked): say the run stopped, and why
            write_stop(stop, job, config.redactor.redact)
            raise
        summary = _summary(config, counters, tally, failures, time.perf_counter() - started, call_seconds)
        write_summary(summary, job)
    return summary


@contextlib.contextmanager
def _claim_outputs(job: Job) -> Iterator[None]:
    """Before any call: the files the run writes can be written, no other run writes them (each
    is locked until the run ends), no summary of an earlier run is left to look like this one's,
    and what a killed run left beside them is removed (no live run owns it: the lock is held)."""
    from .locks import hold
    from .tables import OutputWriter

    locks = []
    try:
        for what, path in (("output", job.output), ("errors file", job.errors_out)):
            if path is None:
                continue
            writable(path, what)
            busy = OutputBusy(
                f"the {what} {path} is being written by another run. Wait for it to finish (or stop it), "
                "or write this run's output elsewhere with --output PATH."
            )
            locks.append(hold(path, busy))
            OutputWriter.sweep(path)
        # Until the run ends, the summary says it is running (and in which process): a run killed
        # outright leaves that, never the last good run's figures.
        _write_json(summary_path(job.output), {**_job_record(job, "running", None), "pid": os.getpid()})
        yield
    finally:
        for lock in locks:
            lock.release()


def _calls(
    batches: Batches,
    config: Config,
    journal: Journal | RedisJournal,
    job: Job,
    options: RunOptions,
    on_progress: ProgressCallback | None,
    total: int | None,
    spool: PlanSpool,
) -> tuple[Counters, _Tally]:
    """The calling pass of a file job; a stop says what the journal holds and how to resume."""
    try:
        return run(call_pass(batches, config, journal, options, on_progress, total, spool, job.value_types))
    except KeyboardInterrupt:
        journal.flush()
        kept = (
            f"{journal.written:,} finished calls are saved in the journal {journal_label(job.journal)}; run the same "
            "command again to resume."
            if job.journal
            else "no journal was kept (journal: false), so a rerun starts over."
        )
        raise Interrupted(f"interrupted: {kept} Nothing was written to {job.output}.") from None
    except ThrottledTooLong as stop:  # resumable: say what the journal holds, and when to come back
        journal.flush()
        raise stop.saved(
            journal.written,
            journal_label(job.journal) if job.journal else None,
            len(journal) if job.journal else None,
        ) from None
    except AuthError as stop:  # a login or renewal failed mid-run: resumable too
        journal.flush()
        if journal.written and job.journal is not None:
            raise AuthError(
                f"{stop} {journal.written:,} finished calls are saved in the journal {journal_label(job.journal)}; "
                "run the same command again to resume."
            ) from None
        raise


def summary_path(output: Path) -> Path:
    """Where a run's summary goes: ``<output>.summary.json``."""
    return output.with_name(output.name + ".summary.json")


def write_summary(summary: Summary, job: Job) -> Path:
    """Write ``<output>.summary.json`` (atomically) for schedulers and dashboards."""
    record = _job_record(job, "completed", 1 if summary.over_budget else 0)
    return _write_json(summary_path(job.output), {**record, **summary.to_dict()})


def write_stop(stop: BaseException, job: Job, redact: Callable[[str], str] = str) -> None:
    """Write ``<output>.summary.json`` for a run that stopped (``status`` aborted, interrupted or
    failed, its exit code and message), so a scheduler never reads the last good run's summary as
    this run's. Best effort: the disk may be why the run stopped."""
    if isinstance(stop, (KeyboardInterrupt, Interrupted)):
        status, code = "interrupted", Interrupted.exit_code
        message = redact(str(stop)) if isinstance(stop, Interrupted) else "interrupted"
    elif isinstance(stop, EnrichError):
        status, code, message = "aborted", stop.exit_code, redact(str(stop))
    else:  # a bug: the CLI says so too (exit 70)
        status, code, message = "failed", 70, redact(f"internal error ({type(stop).__name__}: {stop})")
    with contextlib.suppress(OSError):
        _write_json(summary_path(job.output), {**_job_record(job, status, code), "error": message})


def _job_record(job: Job, status: str, exit_code: int | None) -> dict[str, Any]:
    import datetime

    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return {
        "started_at" if status == "running" else "finished_at": now,
        "status": status,
        "exit_code": exit_code,
        "input": str(job.input),
        "output": str(job.output),
        "journal": journal_label(job.journal) if job.journal else None,
    }


def _write_json(path: Path, data: dict[str, Any]) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def extract_job(config: Config, job: Job, options: RunOptions = RunOptions()) -> Summary:
    """Rebuild the output from the journal alone (after `fields` change): no API call."""
    from .tables import iter_batches, scan_table

    if job.journal is None:
        raise ConfigError(
            f"{config.source}: `journal: false` keeps no journal, so there is nothing to extract from. "
            "Point --journal at the journal of an earlier run."
        )
    if isinstance(job.journal, Path) and not job.journal.exists():
        raise ConfigError(
            f"no journal at {job.journal}: there is nothing to extract from. Run `enrich run` first, "
            "or point --journal at the journal of an earlier run."
        )
    lf = scan_table(job.input, config.input_types)

    def batches() -> Iterator[pl.DataFrame]:
        return iter_batches(lf, job.input, options.limit)

    started = time.perf_counter()
    with _claim_outputs(job), contextlib.closing(open_journal(job.journal)) as journal:
        failures = _write(
            batches, config, journal, options, job.output, errors_out=job.errors_out, types=job.value_types
        )
    return _summary(config, Counters(), _Tally(), failures, time.perf_counter() - started)


def _write(
    batches: Batches,
    config: Config,
    journal: Journal | RedisJournal,
    options: RunOptions,
    output: Path,
    spool: PlanSpool | None = None,
    errors_out: Path | None = None,
    before_finish: Callable[[], None] | None = None,
    source: Path | str = "the input table",
    types: Mapping[str, pl.DataType] | None = None,
) -> Counter[str]:
    """The building pass into the output file (and the errors file); ``before_finish`` runs
    before either replaces a file (the input-changed check)."""
    from .tables import OutputWriter

    escape = config.field_columns if config.escape_formulas else ()
    built, failures = build_pass(batches, config, journal, options, spool, errors_out is not None, source, types)
    writer = errors = None
    try:
        writer = OutputWriter(output, escape_formulas=escape)
        errors = OutputWriter(errors_out) if errors_out is not None else None
        for batch in built:
            writer.write(batch.frame)
            if errors is not None and batch.failed is not None:
                errors.write(batch.failed)
        if before_finish is not None:
            before_finish()
        writer.finish()
        if errors is not None:
            errors.finish()
    except OSError as exc:  # the disk: full, or the folder's permissions changed under the run
        raise StorageError(
            f"cannot write the output {output}: {exc.strerror or exc}. Every call is in the journal: free some "
            "space (or fix the folder's permissions), then run the same command again; it makes no call."
        ) from None
    finally:
        for part in (writer, errors):
            if part is not None:
                part.discard()
    return failures


@contextlib.contextmanager
def _journal(job: Job) -> Iterator[Journal | RedisJournal]:
    """The job's journal; without one, a temporary file beside the output, removed after."""
    if isinstance(job.journal, str):
        shared = RedisJournal.open(job.journal)
        try:
            yield shared
        finally:
            shared.close()
        return
    if job.journal is not None:
        existed = job.journal.exists()
        journal = Journal.open(job.journal)
        try:
            yield journal
        finally:
            journal.close(remove_if_empty=not existed)  # e.g. the login failed: no empty journal left
        return
    job.output.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{job.output.name}.", suffix=".journal", dir=job.output.parent)
    os.close(fd)
    path = Path(name)
    try:
        with Journal.open(path, lock=False) as journal:  # a name no other run knows
            yield journal
    finally:
        for suffix in ("", "-wal", "-shm", "-log"):
            Path(name + suffix).unlink(missing_ok=True)
