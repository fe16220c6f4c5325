"""Before the run: what it would do (``--dry-run``) and what a few calls give (``preview``).

Both reuse the engine's own steps (render, fingerprint, journal look-up, the client), so
what they show is what a run does:

    pf = preflight(config, plan_job(config))        # counts, and the first requests; no call
    pf.to_call, pf.seconds                          # (283, 1.4)
    rows = run(apreview(config, Path("people.csv"), rows=3))   # real calls, nothing written
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from .calling import open_client
from .client import Outcome, PreparedRequest
from .column_types import typed_view
from .config import Config
from .errors import ConfigError
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


def _not_for_steps(config: Config, what: str) -> None:
    if config.steps:
        raise ConfigError(
            f"{config.source}: {what} does not know `steps` yet. Try the config on a few rows with "
            "`enrich run CONFIG --limit 5` instead (it writes beside the output)."
        )


def preflight(config: Config, job: Job, options: RunOptions | None = None, show: int = 5) -> Preflight:
    """Render every row, count what a run would call, look the journal up read-only; send nothing,
    write nothing."""
    options = options or RunOptions()
    from .tables import iter_batches, scan_table

    _not_for_steps(config, "--dry-run")

    lf = scan_table(job.input, config.input_types)
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
    """Call the API for the first ``rows`` rows a run would call, one at a time; no journal, no output."""
    from .tables import iter_batches, scan_table, value_types

    _not_for_steps(config, "preview")
    lf = scan_table(input_path, config.input_types)
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
