"""Before the run: what it would do (``--dry-run``) and what a few calls give (``preview``).

Both reuse the engine's own steps (render, fingerprint, journal look-up, the client), so
what they show is what a run does:

    pf = preflight(config, plan_job(config))        # counts, and the first requests; no call
    pf.to_call, pf.seconds                          # (283, 1.4)
    rows = run(apreview(config, Path("people.csv"), rows=3))   # real calls, nothing written
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import orjson

from .calling import open_client
from .client import Outcome, PreparedRequest
from .column_types import typed_view
from .config import Config
from .jobs import Job
from .journal import Entry, open_journal
from .planning import (
    Call,
    Plan,
    RowError,
    RunOptions,
    Sort,
    plan_batch,
    reusable,
    shown_request,
    sort_row,
    template_rows,
)

if TYPE_CHECKING:
    from .chain import RowState


@dataclass(frozen=True, slots=True)
class Sample:
    """One of the first rows a run would call: its input row number and request as shown (each
    secret as ``***`` where it was put, the auth header too), or its row error."""

    row: int
    request: PreparedRequest | None
    error: str | None
    in_journal: bool = False


@dataclass(frozen=True, slots=True)
class Preflight:
    """What a run would do, found without a call (``enrich run --dry-run``)."""

    samples: list[Sample]
    rows: int  # rows this run takes (after --limit and --shard)
    matching: int  # of those, rows `when` keeps (all of them without `when`)
    filled: int  # rows left out by `skip_if_filled`
    row_errors: int  # rows whose request cannot be rendered (they fail without a call)
    distinct: int  # distinct requests among the rows to call
    in_journal: int  # of those, answered by the journal
    rate: float | None  # calls per second allowed
    concurrency: int

    @property
    def to_call(self) -> int:
        return self.distinct - self.in_journal

    @property
    def seconds(self) -> float | None:
        """The time the calls take at the configured rate (None without a rate limit)."""
        return self.to_call / self.rate if self.rate else None


@dataclass(frozen=True, slots=True)
class StepForecast:
    """What a run with `steps` would do for one step, found without a call."""

    name: str
    calls: int  # distinct requests to make, known now
    more: int  # rows whose call waits for an answer not made yet: at most this many calls more
    in_journal: int  # distinct requests the journal answers
    no_call: int  # rows it makes no call for (filled already, `when`), as far as known now
    failing: int  # rows that fail without a call (a row error, an input an earlier step did not give)
    cost: float  # credits per answered call
    rate: float | None
    concurrency: int
    waits_for: dict[str, str]  # the columns its templates read that an earlier step gives -> that step
    url: str  # its URL as written (secrets as ***)
    method: str

    @property
    def most_credits(self) -> float:
        """The credits the step spends if every call it may make is answered."""
        return (self.calls + self.more) * self.cost


@dataclass(frozen=True, slots=True)
class StepsPreflight:
    """What a run with `steps` would do (``enrich run --dry-run``): the first step's first requests,
    and each step's calls."""

    samples: list[Sample]  # of the first step
    rows: int
    steps: list[StepForecast]

    @property
    def seconds(self) -> float | None:
        """At most how long the calls take at the steps' rates (None: a step without a limit).
        Steps run side by side, so the slowest step sets it."""
        times = [(s.calls + s.more) / s.rate if s.rate else None for s in self.steps if s.calls + s.more]
        if any(t is None for t in times):
            return None
        return max((t for t in times if t is not None), default=0.0)


def preflight(config: Config, job: Job, options: RunOptions | None = None, show: int = 5) -> Preflight:
    """Render every row, count what a run would call, look the journal up read-only; send nothing,
    write nothing. (With `steps`: ``steps_preflight``.)"""
    options = options or RunOptions()
    from .tables import iter_batches

    lf = config.scan_input(job.input)
    samples: list[Sample] = []
    seen: set[bytes] = set()
    rows = matching = skipped = row_errors = distinct = in_journal = 0
    offset = 0
    now = time.time()
    with contextlib.closing(open_journal(job.journal, readonly=True)) as journal:
        for batch in iter_batches(lf, job.input, options.limit):
            batch_plan = plan_batch(batch, config, options, offset, job.value_types)
            first = offset
            shown_rows = template_rows(batch, config, job.value_types)[1] if len(samples) < show else []
            kept, numbers = batch_plan.taken(batch, offset)
            offset += batch.height
            rows += kept.height
            if config.when:
                matching += int(typed_view(kept, job.value_types)[0].select(config.when_expr()).to_series().sum())
            else:
                matching += kept.height
            plans = batch_plan.plans
            known = journal.lookup([p.fp for p in plans if type(p) is Call and p.fp not in seen], bodies=False)
            for number, plan in zip(numbers, plans, strict=True):
                sort = sort_row(plan, seen, known, options, now)
                if sort is Sort.SKIPPED:
                    skipped += 1
                    continue
                if sort is Sort.ROW_ERROR:
                    row_errors += 1
                elif sort is not Sort.DUPLICATE:
                    seen.add(cast(Call, plan).fp)
                    distinct += 1
                    in_journal += sort is Sort.ANSWERED
                if len(samples) < show:
                    samples.append(_sample(config, number, plan, known, options, now, shown_rows[number - first]))
    return Preflight(
        samples=samples,
        rows=rows,
        matching=matching,
        filled=skipped - (rows - matching),
        row_errors=row_errors,
        distinct=distinct,
        in_journal=in_journal,
        rate=config.rate_limit.per_second if config.rate_limit else None,
        concurrency=config.concurrency,
    )


def _sample(
    config: Config,
    number: int,
    plan: Plan,
    known: dict[bytes, Entry],
    options: RunOptions,
    now: float,
    row: dict[str, Any],
) -> Sample:
    if type(plan) is RowError:
        return Sample(number, None, plan.message, False)
    assert type(plan) is Call
    entry = known.get(plan.fp)
    return Sample(number, shown_request(config, row), None, entry is not None and reusable(entry, options, now))


def steps_preflight(config: Config, job: Job, options: RunOptions | None = None, show: int = 5) -> StepsPreflight:
    """``preflight`` for a run with `steps`: each row taken through the steps as far as the
    journal knows their answers. A step whose call is still to be made leaves its columns
    unknown for the row, and a later step that reads them (or would fill them, or whose `when`
    reads them) counts as a call it may make: an upper bound."""
    from .chain import (
        NO_RESULT,
        SKIPPED,
        Unmet,
        compile_steps,
        decisions,
        filled,
        filled_before,
        needs_body,
        settle,
        taken,
    )
    from .tables import iter_batches

    options = options or RunOptions()
    steps = compile_steps(config)
    lf = config.scan_input(job.input)
    samples: list[Sample] = []
    seen: list[set[bytes]] = [set() for _ in steps]
    maybes: list[set[bytes]] = [set() for _ in steps]  # the calls a step may make once answers are in
    calls, more, in_journal, no_call, failing = ([0] * len(steps) for _ in range(5))
    rows = offset = 0
    now = time.time()
    first = steps[0].config
    with contextlib.closing(open_journal(job.journal, readonly=True)) as journal:
        for batch in iter_batches(lf, job.input, options.limit):
            _, numbers, states = taken(batch, config, steps, options, offset, job.value_types)
            offset += batch.height
            rows += len(states)
            # Per row, the columns waiting for a call not made yet, each with that call's identity.
            unknown: list[dict[str, bytes]] = [{} for _ in states]
            for i, step in enumerate(steps):
                depends = set(step.fills) | set(step.earlier) | set(step.reads)
                asks = sorted(depends | step.config.columns_used)  # what its call would be made of
                plans: list[Any] = [
                    SKIPPED if filled_before(step, state) else None if depends.intersection(waiting) else state
                    for state, waiting in zip(states, unknown, strict=True)
                ]  # None: it may call, once the answers it waits for are in
                asked = [n for n, p in enumerate(plans) if p is not None and p is not SKIPPED]
                for n, plan in zip(asked, decisions(step, [states[n] for n in asked]), strict=True):
                    plans[n] = plan
                fps = [p.fp for p in plans if type(p) is Call]
                known = {fp: e for fp, e in journal.lookup(fps, bodies=False).items() if reusable(e, options, now)}
                stale = [fp for fp, e in known.items() if needs_body(step, e)]
                if stale:
                    known.update(journal.lookup(stale))
                for n, (state, waiting, plan) in enumerate(zip(states, unknown, plans, strict=True)):
                    if plan is None:
                        # Rows whose inputs are the same values and the same calls to come ask the same.
                        maybe = _maybe_call(asks, state.values, waiting)
                        if maybe not in maybes[i]:
                            maybes[i].add(maybe)
                            more[i] += 1
                        waiting.update(dict.fromkeys(step.fills, maybe))
                        state.results.append(NO_RESULT)
                        continue
                    if plan is SKIPPED:
                        no_call[i] += 1
                    elif type(plan) is RowError or type(plan) is Unmet:
                        failing[i] += 1
                    else:
                        entry = known.get(plan.fp)
                        if plan.fp not in seen[i]:
                            seen[i].add(plan.fp)
                            in_journal[i] += entry is not None
                            calls[i] += entry is None
                        if i == 0 and len(samples) < show:
                            request = shown_request(first, state.values)
                            samples.append(Sample(numbers[n], request, None, entry is not None))
                        if entry is None:
                            waiting.update((c, plan.fp) for c in step.fills if not filled(state.values.get(c)))
                            state.results.append(NO_RESULT)
                            continue
                        settle(step, state, plan, entry)
                        continue
                    if i == 0 and type(plan) is RowError and len(samples) < show:
                        samples.append(Sample(numbers[n], None, plan.message))
                    settle(step, state, plan, None)
    forecasts = [
        StepForecast(
            name=step.name,
            calls=calls[i],
            more=more[i],
            in_journal=in_journal[i],
            no_call=no_call[i],
            failing=failing[i],
            cost=step.config.cost,
            rate=step.config.rate_limit.per_second if step.config.rate_limit else None,
            concurrency=step.config.concurrency,
            waits_for=dict(step.earlier),
            url=step.config.request.url_text,
            method=step.config.request.method,
        )
        for i, step in enumerate(steps)
    ]
    return StepsPreflight(samples, rows, forecasts)


def _maybe_call(columns: list[str], values: dict[str, Any], waiting: dict[str, bytes]) -> bytes:
    """What a call still to be decided is made of: the values it reads, and for each column still
    waiting, the call it waits for."""
    made = [[c, waiting[c].hex()] if c in waiting else [c, values.get(c)] for c in columns]
    return hashlib.blake2b(orjson.dumps(made, default=str), digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class Previewed:
    """One row called by ``enrich preview``: the request (as shown: secrets as ``***``), what came
    back and the columns it gives."""

    row: int
    request: PreparedRequest | None
    outcome: Outcome | None
    error: str | None  # the row's own error (no call made) or the call's
    columns: dict[str, Any]


async def apreview(config: Config, input_path: Path, rows: int = 3) -> list[Previewed]:
    """Call the API for the first ``rows`` rows a run would call, one at a time; no journal, no output.
    (With `steps`: ``apreview_steps``.)"""
    from .tables import iter_batches, value_types

    lf = config.scan_input(input_path)
    types = value_types(lf, config.columns_read, config.input_types, input_path)
    picked: list[tuple[int, Call | RowError, PreparedRequest | None]] = []
    offset = 0
    for batch in iter_batches(lf, input_path, None):
        plans = plan_batch(batch, config, RunOptions(), types=types).plans
        shown_rows = template_rows(batch, config, types)[1]
        for i, plan in enumerate(plans):
            if isinstance(plan, (Call, RowError)) and len(picked) < rows:
                shown = shown_request(config, shown_rows[i]) if type(plan) is Call else None
                picked.append((offset + i, plan, shown))
        offset += batch.height
        if len(picked) >= rows:
            break
    out: list[Previewed] = []
    names = config.field_columns
    async with open_client(config) as client:
        if client.tokens is not None and any(type(plan) is Call for _, plan, _ in picked):
            await client.tokens.login(client.session)
        for number, plan, shown in picked:
            if type(plan) is RowError:
                out.append(Previewed(number, None, None, plan.message, {}))
                continue
            assert type(plan) is Call and plan.request is not None
            outcome = await client.call(plan.request)
            if outcome.error is not None or outcome.doc is None:
                out.append(Previewed(number, shown, outcome, outcome.error, {}))
                continue
            if config.fields:
                values = {f.name: f.get(outcome.doc) for f in config.fields}
            else:
                values = {names[0]: (outcome.body or b"").decode()}
            out.append(Previewed(number, shown, outcome, None, values))
    return out


class StepPreviewed(NamedTuple):
    """One step of one row in ``enrich preview``: what was called and came back, or why no call."""

    step: str
    previewed: Previewed


async def apreview_steps(config: Config, input_path: Path, rows: int = 3) -> list[list[StepPreviewed]]:
    """The first ``rows`` rows of the input through every step, each call made for real (steps on
    one auth share its login); no journal, no output. A step that makes no call for a row says why
    (already filled, `when`, an input an earlier step did not give)."""
    from .calling import journal_entry, token_manager
    from .chain import SKIPPED, Unmet, compile_steps, decide, entry_values, filled, row_states, settle
    from .tables import iter_batches, value_types

    lf = config.scan_input(input_path)
    types = value_types(lf, config.columns_read, config.input_types, input_path)
    states = []
    for batch in iter_batches(lf, input_path, rows):
        states += row_states(batch, config, types)
    steps = compile_steps(config)
    out: list[list[StepPreviewed]] = [[] for _ in states]
    async with contextlib.AsyncExitStack() as stack:
        tokens: dict[str, Any] = {}
        for step in steps:
            key = step.config.auth_key
            if key not in tokens:
                tokens[key] = token_manager(step.config)
        logged_in: set[str] = set()
        for step in steps:
            client = await stack.enter_async_context(open_client(step.config, tokens=tokens[step.config.auth_key]))
            answers: dict[bytes, Outcome] = {}
            for number, state in enumerate(states):
                plan = decide(step, state)
                if plan is SKIPPED:
                    if step.fills and all(filled(state.values.get(c)) for c in step.fills):
                        given = ", ".join(f"{c} from {_giver(state, c)}" for c in step.fills)
                        why = f"no call: every column it fills has a value ({given})"
                    else:
                        why = "no call: `when` (or `skip_if_filled`) leaves the row out"
                    out[number].append(StepPreviewed(step.name, Previewed(number, None, None, why, {})))
                    settle(step, state, plan, None)
                    continue
                if type(plan) is Unmet or type(plan) is RowError:
                    out[number].append(StepPreviewed(step.name, Previewed(number, None, None, plan.message, {})))
                    settle(step, state, plan, None)
                    continue
                assert type(plan) is Call and plan.request is not None
                if client.tokens is not None and step.config.auth_key not in logged_in:
                    await client.tokens.login(client.session)
                    logged_in.add(step.config.auth_key)
                shown = shown_request(step.config, state.values)
                outcome = answers.get(plan.fp)  # rows asking the same share one call, as in a run
                if outcome is None:
                    outcome = answers[plan.fp] = await client.call(plan.request)
                entry = journal_entry(outcome, step.config, step.key)
                settle(step, state, plan, entry)
                found = dict(zip(step.fills, entry_values(step, entry) or (), strict=False))
                out[number].append(StepPreviewed(step.name, Previewed(number, shown, outcome, outcome.error, found)))
    return out


def _giver(state: RowState, column: str) -> str:
    step = state.source.get(column)
    return f"step `{step}`" if step else "the input"
