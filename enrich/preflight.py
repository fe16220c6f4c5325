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
from typing import Any

import polars as pl

from .client import Outcome, PreparedRequest
from .config import Config
from .engine import (
    SKIPPED,
    Job,
    Planned,
    RunOptions,
    _client,
    _plan_batch,
    _reusable,
    _template_rows,
    open_journal,
    shown_request,
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


def preflight(config: Config, job: Job, options: RunOptions | None = None, show: int = 5) -> Preflight:
    """Render every row, count what a run would call, look the journal up read-only; send nothing,
    write nothing."""
    options = options or RunOptions()
    from .tables import iter_batches, scan_table, typed_view

    lf = scan_table(job.input, config.input_types)
    samples: list[Sample] = []
    seen: set[bytes] = set()
    rows = matching = skipped = row_errors = distinct = in_journal = 0
    offset = 0
    now = time.time()
    with contextlib.closing(open_journal(job.journal, readonly=True)) as journal:
        for batch in iter_batches(lf, job.input, options.limit):
            plans, keep = _plan_batch(batch, config, options, offset, job.value_types)
            first = offset
            shown_rows = _template_rows(batch, config, job.value_types)[1] if len(samples) < show else []
            numbers = range(offset, offset + batch.height)
            offset += batch.height
            kept = batch if keep is None else batch.filter(pl.Series(keep, dtype=pl.Boolean))
            if keep is not None:
                numbers = [n for n, k in zip(numbers, keep, strict=True) if k]  # type: ignore[assignment]
            rows += kept.height
            if config.when:
                matching += int(typed_view(kept, job.value_types)[0].select(config.when_expr()).to_series().sum())
            else:
                matching += kept.height
            fresh = [p.fp for p in plans if p.fp is not None and p.fp not in seen]
            known = journal.lookup(fresh, bodies=False)
            for number, plan in zip(numbers, plans, strict=True):
                if plan.fp is None:
                    if plan.error is None:
                        skipped += 1
                        continue
                    row_errors += 1
                elif plan.fp not in seen:
                    seen.add(plan.fp)
                    distinct += 1
                    entry = known.get(plan.fp)
                    in_journal += entry is not None and _reusable(entry, options, now)
                if len(samples) < show:
                    entry = known.get(plan.fp) if plan.fp is not None else None
                    reused = entry is not None and _reusable(entry, options, now)
                    request = shown_request(config, shown_rows[number - first]) if plan.request is not None else None
                    samples.append(Sample(number, request, plan.error, reused))
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

    lf = scan_table(input_path, config.input_types)
    types = value_types(lf, config.columns_read, config.input_types, input_path)
    picked: list[tuple[int, Planned, PreparedRequest | None]] = []
    offset = 0
    for batch in iter_batches(lf, input_path, None):
        plans, _ = _plan_batch(batch, config, RunOptions(), types=types)
        template_rows = _template_rows(batch, config, types)[1]
        for i, plan in enumerate(plans):
            if plan != SKIPPED and len(picked) < rows:
                shown = shown_request(config, template_rows[i]) if plan.request is not None else None
                picked.append((offset + i, plan, shown))
        offset += batch.height
        if len(picked) >= rows:
            break
    out: list[Previewed] = []
    names = config.field_columns
    async with _client(config) as client:
        if client.tokens is not None and any(plan.request is not None for _, plan, _ in picked):
            await client.tokens.login(client.session)
        for number, plan, shown in picked:
            if plan.request is None:
                out.append(Previewed(number, None, None, plan.error, {}))
                continue
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
