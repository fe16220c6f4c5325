"""The run: rows in, calls made once, the table out in input order.

A run has two passes over the input, both streaming in batches:

1. **call** (``calling``, async): plan each row (``planning``: a call, a skip or a row
   error), and call the API for the fingerprints the journal lacks, through
   ``concurrency`` fixed workers pulling from a bounded queue. Rows that render to the
   same request make one call; every finished call goes to the journal, and its worker
   starts no other until it is saved.
2. **build** (``building``, sync): read the same rows again (each batch checked against what
   pass 1 saw: a file changed meanwhile stops the run), look each row's call up in the
   journal, extract the fields and write the output batch by batch, then settle the types.

So a killed run loses only the calls in flight, a rerun calls only what is missing,
and ``extract`` (pass 2 alone) rebuilds the output after ``fields`` change, for free.
File jobs (``jobs``: ``plan_job``, ``run_job``, ``extract_job``) add the files, their
locks and ``<output>.summary.json`` (``summary``).

    result = enrich(df, load_config("configs/demo.yaml"))     # polars in, polars out
    summary = run_job(config, plan_job(config), RunOptions(retry_failed=True))

The library never prints; pass ``on_progress`` to watch a run. The names of the modules
above are importable from here too.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from .aio import run
from .building import NOT_CALLED, Built, OutputColumns, RowCounts, assemble, build_pass
from .calling import HOLD_SECONDS, PLAN_ROWS, CallingPass, Progress, ProgressCallback, Tally, call_pass, fields_key
from .config import Config
from .jobs import Job, extract_job, plan_job, run_job, writable
from .journal import Journal, journal_label, open_journal
from .planning import (
    DEFAULT_OPTIONS,
    SKIPPED,
    Batches,
    BatchPlan,
    Call,
    Plan,
    PlanSpool,
    RowError,
    RunOptions,
    Skipped,
    plan_batch,
    shown_request,
)
from .summary import Summary, summarize, summary_path, write_stop, write_summary

__all__ = [
    "HOLD_SECONDS",
    "NOT_CALLED",
    "PLAN_ROWS",
    "SKIPPED",
    "BatchPlan",
    "Batches",
    "Built",
    "Call",
    "CallingPass",
    "Job",
    "Journal",
    "OutputColumns",
    "Plan",
    "PlanSpool",
    "Progress",
    "ProgressCallback",
    "RowCounts",
    "RowError",
    "RunOptions",
    "RunResult",
    "Skipped",
    "Summary",
    "Tally",
    "aenrich",
    "as_config",
    "assemble",
    "build_pass",
    "call_pass",
    "enrich",
    "extract_job",
    "fields_key",
    "journal_label",
    "open_journal",
    "plan_batch",
    "plan_job",
    "run_job",
    "shown_request",
    "summarize",
    "summary_path",
    "writable",
    "write_stop",
    "write_summary",
]


@dataclass(frozen=True, slots=True)
class RunResult:
    """The enriched table and the run's summary."""

    frame: pl.DataFrame
    summary: Summary


def as_config(config: Config | str | Path | dict[str, Any]) -> Config:
    """Accept a ``Config``, a path to a YAML file, or the same keys as a dict."""
    from .config import config_from_dict, load_config

    if isinstance(config, Config):
        return config
    if isinstance(config, dict):
        return config_from_dict(config)
    return load_config(config)


def _frame_batches(df: pl.DataFrame, rows: int) -> Batches:
    def gen() -> Iterator[pl.DataFrame]:
        if df.height == 0:
            yield df
        for start in range(0, df.height, rows):
            yield df.slice(start, rows)

    return gen


async def aenrich(
    df: pl.DataFrame,
    config: Config | str | Path | dict[str, Any],
    on_progress: ProgressCallback | None = None,
    journal: Path | str | None = None,
    options: RunOptions = DEFAULT_OPTIONS,
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
            if config.steps:
                from .chain import chain_build_pass, chain_pass

                counters, tally = await chain_pass(batches, config, jr, options, on_progress, df.height)
                call_seconds = time.perf_counter() - started
                built, counts = chain_build_pass(batches, config, jr, options)
            else:
                counters, tally = await call_pass(batches, config, jr, options, on_progress, df.height, spool)
                call_seconds = time.perf_counter() - started
                built, counts = build_pass(batches, config, jr, options, spool)
            frame = collect_frames([b.frame for b in built])
    finally:
        spool.close()
    summary = summarize(config, counters, tally, counts, time.perf_counter() - started, call_seconds)
    return RunResult(frame, summary)


def enrich(
    df: pl.DataFrame,
    config: Config | str | Path | dict[str, Any],
    on_progress: ProgressCallback | None = None,
    journal: Path | str | None = None,
    options: RunOptions = DEFAULT_OPTIONS,
) -> RunResult:
    """Enrich a DataFrame; for notebooks and scripts (runs its own event loop)."""
    return run(aenrich(df, config, on_progress, journal, options))
