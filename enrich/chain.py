"""A run with `steps`: each row through a chain of calls, pipelined, and the table from the journal.

    counters, tally = await ChainPass(config, journal, options).run(batches)    # the calls
    built, counts = chain_build_pass(batches, config, journal, options)         # the table

A row's step sees the input's columns and the fields the steps before it gave (``RowState``);
``decide`` says what the step does for the row, the same in both passes:

- ``SKIPPED``: every column the step fills already holds a value (a waterfall: an earlier
  provider, or the input, found it), or its `when` / `skip_if_filled` leaves the row out;
- ``Unmet``: a column its templates read, which an earlier step gives, is empty for the row
  (that step failed or found nothing): no call, and the step's error column says so;
- a ``Call`` (or a ``RowError``), as a one-step run plans it (``planning``).

The calling pass is pipelined: each row is a task that goes from step to step as soon as the
answer it waits for is in; each step has its own client (session, limiter, login) and at most
its `concurrency` calls in flight. Every call is journalled under its step's rendered request,
so a rerun, or a step added to a config that ran, calls only what the journal lacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
import polars as pl

from .auth import TokenManager
from .building import NOT_CALLED, Built, RowCounts, StepCounts, failure_label, keep_filled
from .calling import (
    HOLD_SECONDS,
    ProgressCallback,
    Reporter,
    StepTally,
    Tally,
    fields_key,
    first_leaf,
    journal_entry,
    open_client,
    stopped,
    token_manager,
)
from .client import Client, Counters, PreparedRequest
from .column_types import output_column
from .config import (
    ATTEMPTS_COLUMN,
    ERROR_COLUMN,
    ITEM_COLUMN,
    REQUEST_COLUMNS,
    ROW_COLUMN,
    STATUS_COLUMN,
    STEP_COLUMN,
    Config,
)
from .errors import CostLimitReached, FailureKind, RunAborted
from .extract import parse_answer
from .items import items_of, zip_items
from .journal import Entry, Journal, kind_of
from .planning import (
    DEFAULT_OPTIONS,
    SKIPPED,
    Batches,
    Call,
    Plan,
    RowError,
    RunOptions,
    plan_row,
    reusable,
    shard_keep,
    shown_columns,
    template_rows,
)
from .step_config import status_columns, waterfall_columns
from .template import text_key

WINDOW_PER_SLOT = 4  # rows in the chain at once, per call slot of all steps
# A step's `when` is evaluated for the rows that reach it within SELECT_SECONDS (or SELECT_ROWS of
# them) at once: a polars call costs ~200 us however few rows it takes, and answers reach a step
# one at a time.
SELECT_SECONDS = 0.002
SELECT_ROWS = 256


class Unmet(NamedTuple):
    """A step that cannot run for a row: a column it reads, given by an earlier step, is empty."""

    message: str


StepPlan = Plan | Unmet


class StepResult(NamedTuple):
    """What one step came to for one row (all None: the step was skipped for it)."""

    status: int | None
    error: str | None
    attempts: int | None
    latency_ms: float | None
    kind: FailureKind | None  # why there is no answer


NO_RESULT = StepResult(None, None, None, None, None)


@dataclass(frozen=True, slots=True)
class Step:
    """A step compiled for the run: its one-step config, and what ``decide`` needs of it."""

    config: Config
    fills: tuple[str, ...]  # its field columns
    key: str | None  # which `fields` its extracted values were made for (the journal's fields_key)
    earlier: Mapping[str, str]  # the columns its templates read that an earlier step gives -> that step
    reads: tuple[str, ...]  # the columns its `when` and `skip_if_filled` read
    mask: pl.Expr | None  # `when` and `skip_if_filled`, on one row
    # The auth its calls are made with, when not the config's own: part of its journal key, so
    # two steps asking one endpoint with two accounts each get their own answer.
    account: bytes | None

    @property
    def name(self) -> str:
        return self.config.name


def compile_steps(config: Config) -> list[Step]:
    steps: list[Step] = []
    given: dict[str, str] = {}
    for step in config.steps:
        reads = (step.when_expr().meta.root_names() if step.when is not None else []) + list(step.skip_if_filled)
        earlier = {c: given[c] for c in sorted(step.columns_used) if c in given}
        mask = step.call_mask() if step.selects_rows else None
        account = None if step.auth_key == "auth" else step.auth_key.encode()
        steps.append(
            Step(step, step.field_columns, fields_key(step), earlier, tuple(dict.fromkeys(reads)), mask, account)
        )
        for column in step.field_columns:
            given.setdefault(column, step.name)
    return steps


@dataclass(slots=True)
class RowState:
    """One row on its way through the steps."""

    values: dict[str, Any]  # the columns the steps read: the input's, then the fields found
    reason: str | None = None  # a cell that cannot be sent (not of its column's kind)
    source: dict[str, str] = field(default_factory=dict)  # field column -> the step that filled it
    results: list[StepResult] = field(default_factory=list)  # one per step done
    answered: bool = False  # some step got an answer (journal or call)


def filled(value: Any) -> bool:
    """Whether a cell holds a value: not null, and not an empty text, list or object (a provider
    that answers `[]` found nothing, and the next one in a waterfall is asked)."""
    return value is not None and value != "" and value != [] and value != {}


def filled_before(step: Step, state: RowState) -> bool:
    """Whether every column the step fills already holds a value for the row (a waterfall's
    earlier provider, or the input, found it): the step has nothing to ask."""
    return bool(step.fills) and all(filled(state.values.get(c)) for c in step.fills)


Selected = bool | RowError  # a row's `when`: true, false, or why it cannot be evaluated for the row


def select_rows(step: Step, states: Sequence[RowState]) -> list[Selected]:
    """The step's `when` and `skip_if_filled` for rows, in one polars call per kind of values: rows
    whose cells differ in type (an id an API gives as a number here and as text there) are
    evaluated apart, each as it would be alone. Rows whose values `when` cannot take (text
    compared with a number) fail at this step, and the others go on."""
    assert step.mask is not None
    groups: dict[tuple[type | None, ...], list[int]] = {}
    for i, state in enumerate(states):
        values = state.values
        kinds = tuple(None if (v := values.get(c)) is None else type(v) for c in step.reads)
        groups.setdefault(kinds, []).append(i)
    out: list[Selected] = [False] * len(states)
    for kinds, rows in groups.items():
        frame = pl.DataFrame({c: [states[i].values.get(c) for i in rows] for c in step.reads}, strict=False)
        try:
            selected = frame.select(step.mask).to_series().to_list()
        except pl.exceptions.PolarsError as exc:
            what = ", ".join(f"{c} is {_kind(k)}" for c, k in zip(step.reads, kinds, strict=True))
            first = str(exc).strip().splitlines()[0]
            failed = RowError(
                step.config.redactor.redact(
                    f"`when` of step `{step.name}` cannot be evaluated for this row ({what}): {first}. Make `when` fit "
                    "the values the row has (or cast them, e.g. CAST(company_id AS VARCHAR))."
                )
            )
            selected = [failed] * len(rows)
        for i, one in zip(rows, selected, strict=True):
            out[i] = one if type(one) is RowError else bool(one)
    return out


def _kind(kind: type | None) -> str:
    if kind is None:
        return "empty"
    return {bool: "a boolean", int: "a number", float: "a number", str: "text", list: "a list"}.get(kind, "an object")


def decide(step: Step, state: RowState, selected: Selected | None = None) -> StepPlan:
    """What ``step`` does for the row (see the module's docstring); ``selected``: its
    ``select_rows`` when known (else found for this row alone)."""
    values = state.values
    if filled_before(step, state):
        return SKIPPED
    if step.mask is not None:
        if selected is None:
            selected = select_rows(step, [state])[0]
        if type(selected) is RowError:
            return selected
        if not selected:
            return SKIPPED
    empty = [c for c in step.earlier if not filled(values.get(c))]
    if empty:
        named = ", ".join(f"{c} (from step `{step.earlier[c]}`)" for c in empty)
        return Unmet(f"not called: {named} has no value for this row; the step before failed or found nothing")
    plan = plan_row(step.config, values)
    if type(plan) is Call:
        if state.reason is not None:
            return RowError(step.config.redactor.redact(state.reason))
        if step.account is not None:
            return Call(hashlib.blake2b(step.account + b"\0" + plan.fp, digest_size=16).digest(), plan.request)
    return plan


def entry_values(step: Step, entry: Entry) -> tuple[Any, ...] | None:
    """The step's field values from an answered entry (None: it failed). The entry must hold its
    body unless its values were extracted for today's `fields`."""
    if entry.error is not None:
        return None
    if entry.extracted is not None and entry.fields_key == step.key:
        return tuple(orjson.loads(entry.extracted))
    if not entry.body:
        return (None,) * len(step.fills)
    fields = step.config.fields
    if not fields:
        return (entry.body.decode(),)
    try:
        doc = parse_answer(entry.body)
    except ValueError:
        return (None,) * len(step.fills)
    return tuple(f.get(doc) for f in fields)


def needs_body(step: Step, entry: Entry) -> bool:
    return entry.error is None and entry.body is None and (entry.extracted is None or entry.fields_key != step.key)


def settle(step: Step, state: RowState, plan: StepPlan, entry: Entry | None) -> None:
    """Record the step's result for the row; an answer fills the columns still empty."""
    if plan is SKIPPED:
        state.results.append(NO_RESULT)
        return
    if type(plan) is Unmet:
        state.results.append(StepResult(None, plan.message, 0, None, FailureKind.MISSING_INPUT))
        return
    if type(plan) is not Call:
        state.results.append(StepResult(None, plan.message, 0, None, FailureKind.BAD_ROW_DATA))  # type: ignore[union-attr]
        return
    if entry is None:
        state.results.append(StepResult(None, NOT_CALLED, None, None, FailureKind.NOT_CALLED))
        return
    latency = None if entry.latency_ms is None else round(entry.latency_ms, 1)
    kind = entry.kind
    if kind is None and entry.error is not None:  # written before kinds were stored
        kind = kind_of(entry.status, entry.error)
    state.results.append(StepResult(entry.status, entry.error, entry.attempts, latency, kind))
    found = entry_values(step, entry)
    if found is None:
        return
    state.answered = True
    values, source = state.values, state.source
    for column, value in zip(step.fills, found, strict=True):
        if filled(value) and not filled(values.get(column)):
            values[column] = value
            values.pop(text_key(column), None)  # a later template reads the value found, not the input's text
            source[column] = step.name


def row_states(batch: pl.DataFrame, config: Config, types: Mapping[str, pl.DataType] | None) -> list[RowState]:
    """The batch's rows as the first step sees them: the input columns any step reads or fills
    (a value the input already holds is not asked for again)."""
    fills = frozenset(c for step in config.steps for c in step.field_columns)
    _, rows, reasons = template_rows(batch, config, types, config.columns_read | fills)
    return [RowState(dict(row), reason) for row, reason in zip(rows, reasons or itertools.repeat(None), strict=False)]


def decisions(step: Step, states: Sequence[RowState]) -> list[StepPlan]:
    """``decide`` for many rows, their `when` evaluated together."""
    if step.mask is None:
        return [decide(step, state) for state in states]
    return [decide(step, state, selected) for state, selected in zip(states, select_rows(step, states), strict=True)]


class Taken(NamedTuple):
    """The rows of a batch this run takes (all, or its shard's), their input row numbers and states."""

    batch: pl.DataFrame
    numbers: list[int]
    states: list[RowState]


def taken(
    batch: pl.DataFrame,
    config: Config,
    steps: list[Step],
    options: RunOptions,
    offset: int,
    types: Mapping[str, pl.DataType] | None,
) -> Taken:
    """The rows of ``batch`` (whose first row is input row ``offset``) this run takes: with
    ``--shard``, those of its shard, by their `key` columns or by their first step's request
    (``planning.shard_keep``), so every run of one shard takes the same rows."""
    states = row_states(batch, config, types)
    numbers = list(range(offset, offset + batch.height))
    if options.shard is None:
        return Taken(batch, numbers, states)
    plans = decisions(steps[0], states)
    keys = [tuple(s.values.get(c) for c in config.key) for s in states] if config.key else None
    keep = shard_keep(options.shard, plans, keys, offset)
    return Taken(
        batch.filter(pl.Series(keep, dtype=pl.Boolean)),
        list(itertools.compress(numbers, keep)),
        list(itertools.compress(states, keep)),
    )


# --- the calling pass --------------------------------------------------------------------------


@dataclass(slots=True)
class _Lane:
    """A step's share of the run: its client, its call slots, its calls on their way."""

    step: Step
    client: Client
    slots: asyncio.Semaphore
    tally: StepTally
    selector: _Selector | None  # the step's `when` / `skip_if_filled`
    login: asyncio.Lock = field(default_factory=asyncio.Lock)
    logged_in: bool = False
    pending: dict[bytes, asyncio.Future[Entry | None]] = field(default_factory=dict)


class _Selector:
    """A step's `when` and `skip_if_filled` for the rows that reach it: those that ask within
    ``SELECT_SECONDS`` are evaluated together (``select_rows``), not one polars call each."""

    __slots__ = ("step", "timer", "waiting")

    def __init__(self, step: Step) -> None:
        self.step = step
        self.waiting: list[tuple[RowState, asyncio.Future[Selected]]] = []
        self.timer: asyncio.TimerHandle | None = None  # the flush to come

    def ask(self, state: RowState) -> asyncio.Future[Selected]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Selected] = loop.create_future()
        self.waiting.append((state, future))
        if len(self.waiting) >= SELECT_ROWS:
            self._flush()
        elif self.timer is None:
            self.timer = loop.call_later(SELECT_SECONDS, self._flush)
        return future

    def _flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        waiting, self.waiting = self.waiting, []
        try:
            selected = select_rows(self.step, [state for state, _ in waiting])
        except Exception as exc:  # each row waiting raises it, as its own evaluation would
            for _, future in waiting:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), one in zip(waiting, selected, strict=True):
            if not future.done():
                future.set_result(one)


class _Totals:
    """The run's counters, read by the progress report: the sum of its steps'."""

    __slots__ = ("parts",)

    def __init__(self, parts: list[Counters]) -> None:
        self.parts = parts

    @property
    def calls(self) -> int:
        return sum(c.calls for c in self.parts)

    @property
    def retries(self) -> int:
        return sum(c.retries for c in self.parts)

    @property
    def throttled(self) -> int:
        return sum(c.throttled for c in self.parts)

    def total(self) -> Counters:
        return Counters(self.calls, self.retries, self.throttled)


@dataclass(slots=True)
class _Budget:
    """``max_cost``: the credits this run's answered calls spent, and those its calls in flight
    may spend; a call that could take the run over the limit is not made."""

    limit: float | None
    spent: float = 0.0
    reserved: float = 0.0
    stop: CostLimitReached | None = None

    def take(self, cost: float) -> bool:
        """Book ``cost`` for a call about to be made; False (and the stop set) when it could go over."""
        if self.stop is not None:
            return False
        if not cost or self.limit is None:
            return True
        # Credits are floats (cost: 0.1): thirty calls of 0.1 fit a limit of 3.
        if self.spent + self.reserved + cost > self.limit + 1e-9 * max(1.0, self.limit):
            self.stop = CostLimitReached(self.limit, cost)
            return False
        self.reserved += cost
        return True

    def settle(self, cost: float, answered: bool) -> None:
        if self.limit is not None:
            self.reserved -= cost
        if answered:
            self.spent += cost


class ChainPass:
    """The calling pass of a run with `steps`: ``run(batches)`` makes every call the journal lacks,
    each row going on to its next step as soon as the answer it waits for is in."""

    def __init__(
        self,
        config: Config,
        journal: Journal,
        options: RunOptions = DEFAULT_OPTIONS,
        on_progress: ProgressCallback | None = None,
        total: int | None = None,
        types: Mapping[str, pl.DataType] | None = None,
    ) -> None:
        self.config, self.journal, self.options, self.types = config, journal, options, types
        self.report = Reporter(on_progress, total)
        self.steps = compile_steps(config)
        self.started_wall = options.started_at if options.started_at is not None else time.time()
        self.tally = Tally(steps=[StepTally() for _ in self.steps])
        self.counters = _Totals([t.counters for t in self.tally.steps])
        self.budget = _Budget(config.max_cost)
        # What stops the run (a spent quota, a failed login, a full disk): no call starts after
        # it, the calls in flight on every step finish and are saved, then it is raised.
        self.halt: RunAborted | None = None

    async def run(self, batches: Batches) -> tuple[Counters, Tally]:
        journal, counters, budget = self.journal, self.counters, self.budget
        stop: BaseException | None = None
        async with contextlib.AsyncExitStack() as stack:
            lanes = []
            tokens: dict[str, TokenManager | None] = {}  # one per auth block: steps on one login share it
            for step, tally in zip(self.steps, self.tally.steps, strict=True):
                key = step.config.auth_key
                if key not in tokens:
                    tokens[key] = token_manager(step.config)
                client = await stack.enter_async_context(open_client(step.config, tally.counters, tokens[key]))
                selector = _Selector(step) if step.mask is not None else None
                lanes.append(_Lane(step, client, asyncio.Semaphore(step.config.concurrency), tally, selector))
            window = asyncio.Semaphore(WINDOW_PER_SLOT * sum(s.config.concurrency for s in self.steps))
            try:
                async with asyncio.TaskGroup() as group:
                    offset = 0
                    for batch in batches():
                        rows = taken(batch, self.config, self.steps, self.options, offset, self.types)
                        offset += batch.height
                        for state in rows.states:
                            await window.acquire()
                            if self._halted:  # no row starts
                                break
                            group.create_task(self._row(state, lanes, window))
                        if self._halted:
                            break
            except BaseExceptionGroup as group_error:
                stop = first_leaf(group_error)  # raised below, outside the handler (see CallingPass.run)
            finally:
                if stop is None:
                    journal.flush()
            # The calls in flight finished and are saved: now the stop.
            if stop is None and self.halt is not None:
                stop = self.halt
            elif stop is None and budget.stop is not None:
                stop = budget.stop.spent(budget.spent, self._credits(), self.tally.rows, self.report.total)
            if stop is not None:
                raise stopped(stop, journal, counters.calls)
            self.tally.logins = sum(t.logins for t in tokens.values() if t is not None)
            self.tally.late_slots = sum(lane.client.limiter.rebooked for lane in lanes)
        self.report(self.tally, counters, force=True)
        return counters.total(), self.tally

    @property
    def _halted(self) -> bool:
        return self.halt is not None or self.budget.stop is not None

    def _credits(self) -> dict[str, float]:
        return {s.name: t.credits for s, t in zip(self.steps, self.tally.steps, strict=True) if s.config.cost}

    async def _row(self, state: RowState, lanes: list[_Lane], window: asyncio.Semaphore) -> None:
        try:
            for lane in lanes:
                step = lane.step
                selected = None
                if lane.selector is not None and not filled_before(step, state):
                    selected = await lane.selector.ask(state)
                plan = decide(step, state, selected)
                entry = None
                if type(plan) is Call:
                    entry = await self._entry(lane, plan)
                    if entry is None:  # max_cost reached: the row stays for the next run
                        return
                settle(step, state, plan, entry)
            tally = self.tally
            tally.rows += 1
            if any(r.error is not None for r in state.results):
                tally.failed += 1
            elif not state.answered:
                tally.skipped += 1
            self.report(self.tally, self.counters)
        finally:
            window.release()

    async def _entry(self, lane: _Lane, call: Call) -> Entry | None:
        """The answer to a step's call: one already on its way, the journal's, or a new call (None:
        the call may not be made, ``max_cost`` is reached)."""
        fp, tally = call.fp, self.tally
        pending = lane.pending.get(fp)
        if pending is not None:  # another row asked the same: its answer is this row's
            tally.deduped += 1
            return await asyncio.shield(pending)
        future: asyncio.Future[Entry | None] = asyncio.get_running_loop().create_future()
        lane.pending[fp] = future
        entry: Entry | None
        try:
            known = (await self.journal.alookup([fp], bodies=False)).get(fp)
            if known is not None and reusable(known, self.options, self.started_wall):
                if known.at >= self.started_wall:
                    tally.deduped += 1
                else:
                    tally.cached += 1
                if needs_body(lane.step, known):
                    known = (await self.journal.alookup([fp])).get(fp, known)
                entry = known
            else:
                assert call.request is not None
                entry = await self._call(lane, fp, call.request)
            future.set_result(entry)
            return entry
        finally:
            if not future.done():
                future.cancel()
            del lane.pending[fp]

    async def _call(self, lane: _Lane, fp: bytes, request: PreparedRequest) -> Entry | None:
        """Make the call in one of the step's slots (None: the run is stopping, no call made)."""
        step = lane.step
        cost = step.config.cost
        async with lane.slots:
            if self.halt is not None:
                return None
            try:
                return await self._call_in_slot(lane, fp, request, cost)
            except RunAborted as stop:  # the other steps' calls in flight still reach the journal
                if self.halt is None:
                    self.halt = stop
                return None

    async def _call_in_slot(self, lane: _Lane, fp: bytes, request: PreparedRequest, cost: float) -> Entry | None:
        journal, client, step, budget = self.journal, lane.client, lane.step, self.budget
        if not lane.logged_in:  # log in at the step's first call, not before: a resumed run may need none
            async with lane.login:
                if not lane.logged_in:
                    if client.tokens is not None:
                        await client.tokens.login(client.session)
                    lane.logged_in = True
        while journal.holding():  # the journal cannot save now: a call made would be lost
            await asyncio.sleep(HOLD_SECONDS)
        if self.halt is not None or not budget.take(cost):
            return None
        try:
            outcome = await client.call(request)
        except BaseException:
            budget.settle(cost, answered=False)
            raise
        answered = outcome.error is None
        budget.settle(cost, answered)
        if answered:
            lane.tally.credits += cost
        entry = journal_entry(outcome, step.config, step.key)
        seq = journal.put(fp, entry, saved=not outcome.local)
        if outcome.latency_ms is not None:
            self.tally.latencies.append(outcome.latency_ms)
            lane.tally.latencies.append(outcome.latency_ms)
        # Counted in flight until saved: a kill costs no more calls than the slots hold.
        await journal.saved(seq)
        return entry


async def chain_pass(
    batches: Batches,
    config: Config,
    journal: Journal,
    options: RunOptions = DEFAULT_OPTIONS,
    on_progress: ProgressCallback | None = None,
    total: int | None = None,
    types: Mapping[str, pl.DataType] | None = None,
) -> tuple[Counters, Tally]:
    """Make every call of every step the journal lacks (``ChainPass``)."""
    return await ChainPass(config, journal, options, on_progress, total, types).run(batches)


# --- the building pass -------------------------------------------------------------------------


def chain_build_pass(
    batches: Batches,
    config: Config,
    journal: Journal,
    options: RunOptions = DEFAULT_OPTIONS,
    types: Mapping[str, pl.DataType] | None = None,
    with_failed: bool = False,
) -> tuple[Iterator[Built], RowCounts]:
    """The output batch by batch, each row taken through the steps again from the journal alone
    (``with_failed``: and the failed rows, for ``errors_out``).

    A row counts as failed when a step failed for it and no later step filled what that step
    fills (a waterfall's miss that the next provider found is no failure), by the first such
    step: ``"<step>: HTTP 404"``."""
    steps = compile_steps(config)
    counts = RowCounts(steps=[StepCounts() for _ in steps])
    by_name = dict(zip((s.name for s in steps), counts.steps, strict=True))  # a step's counts, by its name
    explodes = config.explodes  # only the last step's fields may explode (``load_steps``)

    def generate() -> Iterator[Built]:
        offset = 0
        for whole in batches():
            batch, numbers, states = taken(whole, config, steps, options, offset, types)
            offset += whole.height
            for step in steps:
                plans = decisions(step, states)
                fps = [p.fp for p in plans if type(p) is Call]
                entries = journal.lookup(fps, bodies=False)
                stale = [fp for fp, e in entries.items() if needs_body(step, e)]
                if stale:
                    entries.update(journal.lookup(stale))
                for state, plan in zip(states, plans, strict=True):
                    settle(step, state, plan, entries.get(plan.fp) if type(plan) is Call else None)
            if explodes:  # the last step's lists, zipped: lists of different lengths fail the row at that step
                for state in states:
                    zip_last(steps[-1], explodes, state)
            failing = [_count(state, steps, counts, by_name) for state in states]
            failed = failed_steps(batch, config, steps, states, failing, numbers) if with_failed else None  # input rows
            take, items = None, None
            if explodes:  # one output row per item: the input row's own columns repeat
                states, take, items = explode_states(steps[-1], explodes, states)
                if len(take) != batch.height:
                    batch, numbers = batch[take], [numbers[i] for i in take]
                else:  # each row is one output row
                    take = None
            frame = assemble_steps(batch, config, steps, states, items)
            counts.count_filled(frame, config.field_columns, take)
            if options.shard is not None:
                frame = frame.with_columns(pl.Series(ROW_COLUMN, numbers, dtype=pl.Int64))
            yield Built(frame, failed)

    return generate(), counts


def zip_last(step: Step, explodes: tuple[str, ...], state: RowState) -> None:
    """The row's exploding fields (the last step's) as lists of items; lists of different lengths
    fail the row at that step (the call stands), and its fields are left empty."""
    result = state.results[-1]
    if result.error is not None or result.status is None:  # no answer from the step
        return
    values, source = state.values, state.source
    mine = [c for c in step.fills if source.get(c) == step.name]
    found = [values.get(c) if c in mine else None for c in explodes]
    zipped = zip_items(found, range(len(explodes)), explodes)
    if type(zipped) is not str:
        return
    state.results[-1] = result._replace(error=zipped, kind=FailureKind.UNEVEN_LISTS)
    for column in mine:
        del source[column]
        values.pop(column, None)


def explode_states(
    step: Step, explodes: tuple[str, ...], states: list[RowState]
) -> tuple[list[RowState], list[int], list[int | None]]:
    """One state per item of the rows' exploding fields (the last step's), each holding that item:
    the states, the input row of each, and its item number (None: the row holds no item)."""
    out: list[RowState] = []
    take: list[int] = []
    items: list[int | None] = []
    for index, state in enumerate(states):
        lists = [items_of(state.values.get(c)) if state.source.get(c) == step.name else [] for c in explodes]
        if not lists[0]:  # no item (no answer, or an empty list): the row stays as it is
            out.append(state)
            take.append(index)
            items.append(None)
            continue
        for number, item in enumerate(zip(*lists, strict=True)):
            values = {**state.values, **dict(zip(explodes, item, strict=True))}
            out.append(RowState(values, state.reason, state.source, state.results, state.answered))
            take.append(index)
            items.append(number)
    return out, take, items


def _count(state: RowState, steps: list[Step], counts: RowCounts, by_name: Mapping[str, StepCounts]) -> int | None:
    """Count the row; the index of the step it failed by (None: it did not fail)."""
    for step_counts, result in zip(counts.steps, state.results, strict=True):
        if result.error is not None:
            assert result.kind is not None  # set with every error
            step_counts.failures[failure_label(result.kind, result.status)] += 1
        elif result.status is None:
            step_counts.skipped += 1
        else:
            step_counts.answered += 1
    for column, name in state.source.items():
        by_name[name].filled[column] += 1
    for index, (step, result) in enumerate(zip(steps, state.results, strict=True)):
        if result.error is None or all(filled(state.values.get(c)) and c in state.source for c in step.fills):
            continue
        assert result.kind is not None  # set with every error
        counts.failures[f"{step.name}: {failure_label(result.kind, result.status)}"] += 1
        return index
    if state.answered:
        counts.ok += 1
    else:
        counts.skipped += 1
    return None


def failed_steps(
    batch: pl.DataFrame,
    config: Config,
    steps: list[Step],
    states: list[RowState],
    failing: list[int | None],
    numbers: list[int],
) -> pl.DataFrame:
    """The failed rows of a batch, for ``errors_out``: row number, the input columns the steps
    read (as read), the step the row failed by, its request as sent (each secret as ``***``), its
    status, error and attempts."""
    rows = [i for i, index in enumerate(failing) if index is not None]
    used = [c for c in sorted(config.columns_used) if c in batch.schema]
    part = batch[rows] if rows else batch.clear()
    requests: list[tuple[str | None, ...]] = []
    names: list[str] = []
    results: list[StepResult] = []
    for i in rows:
        index = failing[i]
        assert index is not None
        step, state = steps[index], states[i]
        result = state.results[index]
        names.append(step.name)
        results.append(result)
        # A step whose input an earlier step did not give has no request to show.
        missing = result.kind is FailureKind.MISSING_INPUT
        requests.append((None, None, None, None) if missing else shown_columns(step.config, state.values))
    return pl.DataFrame(
        [
            pl.Series(ROW_COLUMN, [numbers[i] for i in rows], dtype=pl.Int64),
            *(part[c] for c in used),
            pl.Series(STEP_COLUMN, names, dtype=pl.String),
            *(pl.Series(name, [r[n] for r in requests], dtype=pl.String) for n, name in enumerate(REQUEST_COLUMNS)),
            pl.Series(STATUS_COLUMN, [r.status for r in results], dtype=pl.Int64),
            pl.Series(ERROR_COLUMN, [r.error for r in results], dtype=pl.String),
            pl.Series(ATTEMPTS_COLUMN, [r.attempts for r in results], dtype=pl.Int64),
        ]
    )


def assemble_steps(
    batch: pl.DataFrame,
    config: Config,
    steps: list[Step],
    states: list[RowState],
    items: Sequence[int | None] | None = None,
) -> pl.DataFrame:
    """The input rows with the steps' columns: the fields (a column the input has is only filled
    where it is empty), each waterfall column's ``<column>_source``, ``_item`` (when the last step
    explodes: ``items``), then each step's status, error and diagnostics."""
    present = set(batch.columns)
    new: list[pl.Series] = []
    nothing_skipped = pl.Series("skipped", [False] * batch.height, dtype=pl.Boolean)
    for column in config.field_columns:
        found = [s.values.get(column) if column in s.source else None for s in states]
        if column in present:
            series = output_column(column, found, batch.schema[column] == pl.String)
            new.append(keep_filled(batch[column], series, nothing_skipped, fill=True))
        else:
            new.append(output_column(column, found))
    for column in waterfall_columns(config, batch.columns):
        new.append(pl.Series(f"{column}_source", [s.source.get(column) for s in states], dtype=pl.String))
    if config.explodes:
        new.append(pl.Series(ITEM_COLUMN, list(items) if items is not None else [None] * batch.height, dtype=pl.Int64))
    for index, step in enumerate(steps):
        names = status_columns(step.config)
        results = [s.results[index] for s in states]
        status = [r.status for r in results]
        error = [r.error for r in results]
        attempts = [r.attempts for r in results]
        latency = [r.latency_ms for r in results]
        columns = [
            pl.Series(names[0], status, dtype=pl.Int64),
            pl.Series(names[1], error, dtype=pl.String),
            pl.Series(f"_{step.name}_attempts", attempts, dtype=pl.Int64),
            pl.Series(f"_{step.name}_latency_ms", latency, dtype=pl.Float64),
        ]
        new += columns[: len(names)]
    return batch.with_columns(new)
