"""The calling pass: make every call the journal lacks, each saved as it finishes.

A producer plans the rows batch by batch (``planning``), looks their requests up in the
journal and queues the calls to make; ``concurrency`` workers take them from a bounded
queue, make each through the client and save it in the journal before taking the next. Rows
that ask the same make one call.

    counters, tally = await CallingPass(config, journal, RunOptions()).run(batches)
    counters.calls, tally.cached, tally.deduped

Progress reaches ``on_progress`` as ``Progress`` snapshots, at most ten a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from array import array
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, cast

import orjson
import polars as pl

from .client import Client, Counters, Outcome, PreparedRequest
from .config import Config
from .errors import InputError, OutputError, RunAborted, StorageError
from .journal import Entry, Journal
from .planning import (
    DEFAULT_OPTIONS,
    SKIPPED,
    Batches,
    BatchPlan,
    Call,
    Plan,
    PlanSpool,
    RunOptions,
    Sort,
    plan_batch,
    sort_row,
)
from .ratelimit import Limiter, RateLimiter
from .tables import content_digest

if TYPE_CHECKING:
    from .auth import TokenManager

PLAN_ROWS = 1_000  # rows rendered at a time in the calling pass
HOLD_SECONDS = 0.05  # how often a held worker asks the journal again
REPORT_SECONDS = 0.1  # at most this often a progress report


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


ProgressCallback = Callable[[Progress], None]


@dataclass(slots=True)
class StepTally:
    """What the calling pass counted of one step (of a run with `steps`)."""

    counters: Counters = field(default_factory=Counters)  # the step's client's
    latencies: array[float] = field(default_factory=lambda: array("d"))  # ms, each call made by this run
    credits: float = 0.0  # `cost` times the answered (2xx) calls this run made


@dataclass(slots=True)
class Tally:
    """What the calling pass counted, besides the client's ``Counters``."""

    rows: int = 0
    failed: int = 0
    skipped: int = 0
    cached: int = 0  # rows answered by the journal of an earlier run
    deduped: int = 0  # rows whose request another row of this run made
    logins: int = 0
    late_slots: int = 0  # the limiter's slots given up for being reached late
    announced: dict[str, float | int | None] | None = None  # what the API's rate-limit headers said
    latencies: array[float] = field(default_factory=lambda: array("d"))  # ms, each call made by this run
    steps: list[StepTally] = field(default_factory=list)  # with `steps`: one per step, in order


def stopped(stop: BaseException, journal: Journal, calls: int) -> BaseException:
    """What a calling pass that stopped on ``stop`` raises, once the finished calls are saved: the
    stop is what the user must read, whatever the journal says."""
    with contextlib.suppress(Exception):
        journal.flush()
    if isinstance(stop, StorageError) and calls == 0:
        return OutputError(str(stop))  # found before any call: nothing was paid for (exit 2)
    if isinstance(stop, InputError) and calls > 0:  # a bad line far into the file
        return RunAborted(f"{stop} The calls made are saved in the journal: run the same command again.")
    return stop


class Counted(Protocol):
    """Running totals a progress report reads (``Counters``, or a sum of several)."""

    @property
    def calls(self) -> int: ...
    @property
    def retries(self) -> int: ...
    @property
    def throttled(self) -> int: ...


@dataclass(slots=True)
class Reporter:
    """Hands ``on_progress`` a ``Progress`` snapshot of a calling pass, at most one per
    ``REPORT_SECONDS`` (unless forced); no clock read when nobody watches."""

    on_progress: ProgressCallback | None
    total: int | None  # rows, when known
    started: float = field(default_factory=time.perf_counter)
    last: float = 0.0

    def __call__(self, tally: Tally, counters: Counted, force: bool = False) -> None:
        on_progress = self.on_progress
        if on_progress is None:
            return
        now = time.perf_counter()
        if not force and now - self.last < REPORT_SECONDS:
            return
        self.last = now
        on_progress(
            Progress(
                tally.rows, self.total, tally.failed, counters.calls, tally.cached,
                counters.retries, counters.throttled, now - self.started, tally.skipped,
            )
        )  # fmt: skip


class CallingPass:
    """One run's calling pass: ``run(batches)`` makes the calls, and returns what it counted.

    ``types``: the value types of text columns (``tables.value_types``); ``spool`` keeps each
    batch's plan for the building pass; ``total`` (rows, when known) feeds the progress.
    """

    __slots__ = (
        "config",
        "counters",
        "finished",
        "in_flight",
        "journal",
        "key",
        "logged_in",
        "options",
        "queue",
        "report",
        "spool",
        "started_wall",
        "tally",
        "types",
    )

    def __init__(
        self,
        config: Config,
        journal: Journal,
        options: RunOptions = DEFAULT_OPTIONS,
        on_progress: ProgressCallback | None = None,
        total: int | None = None,
        spool: PlanSpool | None = None,
        types: Mapping[str, pl.DataType] | None = None,
    ) -> None:
        self.config, self.journal, self.options, self.spool, self.types = config, journal, options, spool, types
        self.report = Reporter(on_progress, total)
        self.started_wall = options.started_at if options.started_at is not None else time.time()
        self.logged_in = False
        self.counters = Counters()
        self.tally = Tally()
        self.in_flight: set[bytes] = set()  # queued or being made
        self.finished: set[bytes] = set()  # calls finished since the current slice's journal look-up
        self.queue: asyncio.Queue[tuple[bytes, PreparedRequest] | None] = asyncio.Queue(maxsize=config.concurrency * 4)
        self.key = fields_key(config)

    async def run(self, batches: Batches) -> tuple[Counters, Tally]:
        """Make every call the journal lacks; stops with the first fatal error of any task."""
        config, journal, counters = self.config, self.journal, self.counters
        async with open_client(config, counters) as client:
            stop: BaseException | None = None
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._produce(batches, client))
                    for _ in range(config.concurrency):
                        group.create_task(self._work(client))
            except BaseExceptionGroup as group_error:
                # One task's fatal error (a failed re-login) stops them all; raised as itself below,
                # outside this handler: raised here, it would get the group (which holds it) as its
                # __context__, a cycle that cannot be pickled (a Dask worker sends errors pickled).
                stop = first_leaf(group_error)
            finally:
                if stop is None:
                    journal.flush()
            if stop is not None:
                raise stopped(stop, journal, counters.calls)
            self.tally.logins = client.tokens.logins if client.tokens else 0
            self.tally.late_slots = client.limiter.rebooked
            self.tally.announced = client.limiter.announced.to_dict()
        self.report(self.tally, self.counters, force=True)
        return counters, self.tally

    async def _work(self, client: Client) -> None:
        """A worker: make the queued calls one at a time, each saved before the next."""
        queue, journal, config, key = self.queue, self.journal, self.config, self.key
        in_flight, finished, tally = self.in_flight, self.finished, self.tally
        latencies = tally.latencies
        while (item := await queue.get()) is not None:
            fp, request = item
            while journal.holding():  # the journal cannot save now: a call made would be lost
                await asyncio.sleep(HOLD_SECONDS)
            outcome = await client.call(request)
            seq = journal.put(fp, journal_entry(outcome, config, key), saved=not outcome.local)
            in_flight.discard(fp)
            finished.add(fp)  # until the next slice's look-up, which will see it
            tally.rows += 1
            tally.failed += outcome.error is not None
            if outcome.latency_ms is not None:
                latencies.append(outcome.latency_ms)
            self.report(self.tally, self.counters)
            # A call counts as in flight until its answer is saved: no worker starts another
            # before, so a kill costs no more calls than were in flight.
            await journal.saved(seq)

    async def _produce(self, batches: Batches, client: Client) -> None:
        """Plan the rows, count those that need no call, queue the calls to make."""
        config, options, types, spool = self.config, self.options, self.types, self.spool
        offset = 0
        for batch in batches():
            plans: list[Plan] = []
            keep: list[bool] | None = [] if options.shard is not None else None
            # Rendered in slices, so the first calls go out after a few milliseconds, not after
            # the whole batch is rendered, and rendering overlaps the waits for answers.
            for start in range(0, max(batch.height, 1), PLAN_ROWS):
                part = plan_batch(batch.slice(start, PLAN_ROWS), config, options, offset + start, types)
                plans += part.plans
                if keep is not None and part.keep is not None:
                    keep += part.keep
                await self._sort(part.plans, client)
                self.report(self.tally, self.counters)
            if spool is not None:
                spool.write(content_digest(batch), BatchPlan(plans, keep))
            offset += batch.height
        for _ in range(config.concurrency):
            await self.queue.put(None)

    async def _sort(self, plans: list[Plan], client: Client) -> None:
        """One slice of planned rows: count those that need no call, queue the others."""
        journal, options, started, tally, queue = self.journal, self.options, self.started_wall, self.tally, self.queue
        # The look-up sees every call finished before it starts; those finishing while it runs
        # (it may wait on Redis) stay in `finished`.
        self.finished.clear()
        known = await journal.alookup([p.fp for p in plans if type(p) is Call], bodies=False)
        # Asked already by this run: on its way or made (since the look-up); the slice's own calls join.
        seen = self.in_flight | self.finished
        for plan in plans:
            sort = sort_row(plan, seen, known, options, started)
            if sort is Sort.CALL:
                fp, request = cast(tuple[bytes, PreparedRequest], plan)  # a Call, planned with its request
                if not self.logged_in:  # log in at the first call, not before: a resumed run may need none
                    if client.tokens is not None:
                        await client.tokens.login(client.session)
                    self.logged_in = True
                seen.add(fp)
                self.in_flight.add(fp)
                await queue.put((fp, request))
                continue
            tally.rows += 1
            if sort is Sort.DUPLICATE:
                tally.deduped += 1
            elif sort is Sort.ANSWERED:
                entry = known[cast(Call, plan).fp]
                if entry.at >= started:  # made by this run, for an earlier row
                    tally.deduped += 1
                else:
                    tally.cached += 1
                tally.failed += entry.error is not None
            elif plan is SKIPPED:
                tally.skipped += 1
            else:
                tally.failed += 1


async def call_pass(
    batches: Batches,
    config: Config,
    journal: Journal,
    options: RunOptions = DEFAULT_OPTIONS,
    on_progress: ProgressCallback | None = None,
    total: int | None = None,
    spool: PlanSpool | None = None,
    types: Mapping[str, pl.DataType] | None = None,
) -> tuple[Counters, Tally]:
    """Make every call the journal lacks; each finished call is written to the journal.
    ``types``: the value types of text columns (``tables.value_types``)."""
    return await CallingPass(config, journal, options, on_progress, total, spool, types).run(batches)


def token_manager(config: Config) -> TokenManager | None:
    """What gets, holds and refreshes the config's token (None: no auth)."""
    from .auth import TokenManager

    if config.auth is None:
        return None
    return TokenManager(
        config.auth, config.redactor, config.retry, config.timeout, max_response_bytes=config.max_response_bytes
    )


@contextlib.asynccontextmanager
async def open_client(
    config: Config, counters: Counters | None = None, tokens: TokenManager | None = None
) -> AsyncIterator[Client]:
    """One session (``concurrency`` connections, one TLS context), the token manager (``tokens``,
    when one is shared with other clients) and the limiter of a run."""
    import aiohttp

    ssl = config.tls.context()  # True (aiohttp's verified default) unless `tls:` changes something
    connector = aiohttp.TCPConnector(limit=config.concurrency, limit_per_host=0, ttl_dns_cache=300, ssl=ssl)
    # No cookie jar: a cookie goes out only when the config says so (`auth.token_cookie`), and
    # nothing a response sets travels with later calls.
    rate = config.rate_limit
    limiter: Limiter
    if rate is not None and rate.shared:  # one limit for every process using this Redis and key
        from .shared_limit import SharedRateLimiter

        limiter = SharedRateLimiter(rate.shared, rate.key, rate.per_second, rate.burst)
    else:
        limiter = RateLimiter(rate.per_second if rate else None)
    async with (
        aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as session,
        contextlib.AsyncExitStack() as stack,
    ):
        stack.push_async_callback(limiter.close)
        yield Client(
            session,
            retry=config.retry,
            timeout=config.timeout,
            limiter=limiter,
            tokens=tokens or token_manager(config),
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


def journal_entry(outcome: Outcome, config: Config, key: str | None) -> Entry:
    """The journal's record of a call: the body exactly as the API sent it (an API that echoes a
    token or a key has that in its answer, and the answer is the user's data), its fields
    extracted, and why it failed. What enrich says about it (the error) is masked where it is made."""
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
    return Entry(
        outcome.status, error, body, outcome.attempts, outcome.latency_ms, time.time(), key, extracted, outcome.kind
    )


def first_leaf(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
