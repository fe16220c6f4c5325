"""What a run did: the ``Summary``, and ``<output>.summary.json`` for schedulers and dashboards.

    summary = summarize(config, counters, tally, counts, elapsed=12.5, call_seconds=11.9)
    summary.error_rate, summary.over_budget
    write_summary(summary, job)           # out/people.parquet.summary.json, atomically

While a run works the file says ``running`` (with the pid); a run that stops says why
(``write_stop``), so a scheduler never reads the last good run's figures as this one's.
"""

from __future__ import annotations

import contextlib
import math
import os
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from .atomic import replacing
from .building import RowCounts, StepCounts
from .calling import StepTally, Tally
from .client import Counters
from .config import Config
from .errors import EnrichError, Interrupted
from .journal import journal_label

if TYPE_CHECKING:
    from .jobs import Job


@dataclass(frozen=True, slots=True)
class StepSummary:
    """What one step of a run with `steps` did."""

    name: str
    calls: int  # HTTP requests this run sent for the step, retries included
    answered: int  # rows with the step's answer (2xx), from a call or the journal
    failed: int  # rows the step failed for ("missing input" among them)
    failures: dict[str, int]  # "HTTP 404": 3, "missing input": 2
    skipped: int  # rows it made no call for: already filled (a waterfall), or left out by `when`
    retries: int
    throttled: int
    latency_p50_ms: float | None  # of the calls this run made
    latency_p95_ms: float | None
    cost: float  # credits per answered call
    credits: float  # credits this run's answered calls cost
    fill: dict[str, float]  # field column -> the share of all rows whose value this step gave


@dataclass(frozen=True, slots=True)
class Summary:
    """What a run did, for the closing report and for schedulers (``<output>.summary.json``)."""

    rows: int  # input rows (a row that explodes into items counts once); ok + failed + skipped
    ok: int
    failed: int
    failures: dict[str, int] = field(default_factory=dict)  # "HTTP 404": 3, "timeout": 1
    skipped: int = 0  # rows left out by `when` or `skip_if_filled`
    calls: int = 0  # HTTP requests sent, retries included
    cached: int = 0  # rows answered from the journal of an earlier run (with `steps`: answers, one per step call)
    deduped: int = 0  # rows that shared another row's request in this run (with `steps`: answers)
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
    # What the API's rate-limit headers announced: {"limit": 50, "window_s": 2.0, "remaining_min": 0}
    announced: dict[str, float | int | None] | None = None
    fill: dict[str, float] = field(default_factory=dict)  # field column -> share of rows holding a value
    steps: tuple[StepSummary, ...] = ()  # with `steps`: one per step, in order
    credits: float = 0.0  # with `steps`: what this run's answered calls cost, all steps together
    max_cost: float | None = None
    output_rows: int = 0  # rows of the output: more than `rows` when a field explodes (one row per item)

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
    def allowance_used(self) -> float | None:
        """The share of the announced allowance the calls used: ``limit`` per window, over the windows
        the calling pass spanned."""
        a = self.announced
        if not a or not a.get("limit") or not a.get("window_s"):
            return None
        windows = math.ceil(self.call_seconds / float(a["window_s"] or 1)) + 1  # at most, partial ones counted
        return self.calls / (windows * float(a["limit"] or 1))

    @property
    def over_budget(self) -> bool:
        """More rows failed than ``max_error_rate`` allows."""
        return self.max_error_rate is not None and self.error_rate > self.max_error_rate

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready data (what ``<output>.summary.json`` holds)."""
        data = {f: getattr(self, f) for f in self.__dataclass_fields__}
        data.update(
            steps=[{f: getattr(step, f) for f in step.__dataclass_fields__} for step in self.steps],
            error_rate=round(self.error_rate, 6),
            calls_per_second=round(self.calls_per_second, 2),
            over_budget=self.over_budget,
            announced=self.announced and {**self.announced, "used": _round(self.allowance_used)},
            elapsed=round(self.elapsed, 3),
            call_seconds=round(self.call_seconds, 3),
        )
        return data


def summarize(
    config: Config, counters: Counters, tally: Tally, counts: RowCounts, elapsed: float, call_seconds: float = 0.0
) -> Summary:
    """The summary of a run from what its passes counted (``tally``: the calling pass's, ``counts``:
    the building pass's)."""
    failed = sum(counts.failures.values())
    rows = counts.ok + failed + counts.skipped
    steps = tuple(
        _step_summary(step, step_tally, step_counts, rows)
        for step, step_tally, step_counts in zip(config.steps, tally.steps or _none(config), counts.steps, strict=True)
    )
    return Summary(
        rows=counts.ok + failed + counts.skipped,
        ok=counts.ok,
        failed=failed,
        failures=dict(counts.failures.most_common()),
        skipped=counts.skipped,
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
        announced=tally.announced,
        fill={c: _share(counts.filled[c], rows) for c in config.field_columns},
        steps=steps,
        credits=sum(step.credits for step in steps),
        max_cost=config.max_cost,
        output_rows=counts.output_rows,
    )


def _none(config: Config) -> list[StepTally]:
    """No calls (``enrich extract``): each step's tally empty."""
    return [StepTally() for _ in config.steps]


def _step_summary(step: Config, tally: StepTally, counts: StepCounts, rows: int) -> StepSummary:
    counters = tally.counters
    failed = sum(counts.failures.values())
    return StepSummary(
        name=step.name,
        calls=counters.calls,
        answered=counts.answered,
        failed=failed,
        failures=dict(counts.failures.most_common()),
        skipped=counts.skipped,
        retries=counters.retries,
        throttled=counters.throttled,
        latency_p50_ms=_percentile(tally.latencies, 0.5),
        latency_p95_ms=_percentile(tally.latencies, 0.95),
        cost=step.cost,
        credits=tally.credits,
        fill={c: _share(counts.filled[c], rows) for c in step.field_columns},
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _share(count: int, rows: int) -> float:
    return round(count / rows, 4) if rows else 0.0


def _percentile(values: array[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 1)


# --- <output>.summary.json ------------------------------------------------------------------------


def summary_path(output: Path) -> Path:
    """Where a run's summary goes: ``<output>.summary.json``."""
    return output.with_name(output.name + ".summary.json")


def write_running(job: Job) -> Path:
    """Say the run is working (and in which process): a run killed outright leaves that, never
    the last good run's figures."""
    return _write_json(summary_path(job.output), {**_job_record(job, "running", None), "pid": os.getpid()})


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
        "input": job.input_label,
        **({"input_sha256": job.fetched.sha256, "input_bytes": job.fetched.size} if job.fetched else {}),
        "output": str(job.output),
        "journal": journal_label(job.journal) if job.journal else None,
    }


def _write_json(path: Path, data: dict[str, Any]) -> Path:
    with replacing(path) as tmp:
        tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
    return path
