"""The worker pool: rows in, outcomes out, input order kept; progress through a callback.

    result = enrich(df, load_config("configs/demo.yaml"))     # polars in, polars out
    result.frame      # input columns, field columns, _http_status, _error
    result.summary    # rows ok / failed, calls, retries, logins, elapsed

``run_job`` adds the files: read the input, check it against the config, enrich,
write the output atomically. The library never prints; pass ``on_progress`` to
watch a run.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import polars as pl

from .auth import TokenManager
from .client import Client, Counters, Outcome, prepare
from .config import ERROR_COLUMN, RESPONSE_COLUMN, STATUS_COLUMN, Config
from .errors import ConfigError
from .ratelimit import RateLimiter
from .tables import read_table, write_table
from .template import TemplateValueError


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot of a run, handed to ``on_progress`` after each row."""

    done: int
    total: int
    failed: int
    calls: int
    retries: int
    throttled: int
    elapsed: float


@dataclass(frozen=True, slots=True)
class Summary:
    """What a run did, for the closing report and for schedulers."""

    rows: int
    ok: int
    failed: int
    failures: dict[str, int] = field(default_factory=dict)  # "HTTP 404": 3, "timeout": 1
    calls: int = 0
    retries: int = 0
    throttled: int = 0
    logins: int = 0
    refreshes: int = 0
    elapsed: float = 0.0


@dataclass(frozen=True, slots=True)
class RunResult:
    """The enriched table and the run's summary."""

    frame: pl.DataFrame
    summary: Summary


ProgressCallback = Callable[[Progress], None]


def _failure_kind(outcome: Outcome) -> str:
    if outcome.status is not None:
        return f"HTTP {outcome.status}" if outcome.status >= 300 else "bad response"
    err = outcome.error or ""
    if err.startswith("timed out"):
        return "timeout"
    if err.startswith("connection error"):
        return "connection error"
    return "bad request data"


async def enrich_rows(
    rows: Sequence[dict[str, Any]], config: Config, on_progress: ProgressCallback | None = None
) -> tuple[list[tuple[Any, ...]], Summary]:
    """Call the API for every row; return one tuple of output values per row, in order."""
    started = time.perf_counter()
    total = len(rows)
    fields = config.fields
    width = len(fields) if fields else 1
    empty = (None,) * width
    results: list[tuple[Any, ...]] = [()] * total
    counters = Counters()
    failures: Counter[str] = Counter()
    done = 0
    tokens: TokenManager | None = None

    def values_of(outcome: Outcome) -> tuple[Any, ...]:
        if outcome.data is None:
            return (*empty, outcome.status, outcome.error)
        if fields:
            return (*(f.get(outcome.data) for f in fields), outcome.status, outcome.error)
        return (orjson.dumps(outcome.data).decode(), outcome.status, outcome.error)

    if total:
        connector = aiohttp.TCPConnector(limit=config.concurrency, limit_per_host=0, ttl_dns_cache=300)
        async with aiohttp.ClientSession(connector=connector) as session:
            if config.auth is not None:
                tokens = TokenManager(config.auth, config.redactor, config.retry, config.timeout)
                await tokens.login(session)
            client = Client(
                session,
                retry=config.retry,
                timeout=config.timeout,
                limiter=RateLimiter(config.rate_limit.per_second if config.rate_limit else None),
                tokens=tokens,
                redactor=config.redactor,
                counters=counters,
            )
            work = iter(enumerate(rows))

            async def worker() -> None:
                nonlocal done
                for index, row in work:
                    try:
                        request = prepare(config.request, row)
                    except (TemplateValueError, ValueError) as exc:
                        outcome = Outcome(None, None, config.redactor.redact(str(exc)), 0, None)
                    else:
                        outcome = await client.call(request)
                    results[index] = values_of(outcome)
                    done += 1
                    if outcome.error is not None:
                        failures[_failure_kind(outcome)] += 1
                    if on_progress is not None:
                        on_progress(
                            Progress(
                                done,
                                total,
                                sum(failures.values()),
                                counters.calls,
                                counters.retries,
                                counters.throttled,
                                time.perf_counter() - started,
                            )
                        )

            try:
                async with asyncio.TaskGroup() as group:
                    for _ in range(min(config.concurrency, total)):
                        group.create_task(worker())
            except BaseExceptionGroup as group_error:
                # One worker's fatal error (a failed re-login) stops them all; raise it as itself.
                raise _first_leaf(group_error) from None

    failed = sum(failures.values())
    summary = Summary(
        rows=total,
        ok=total - failed,
        failed=failed,
        failures=dict(failures.most_common()),
        calls=counters.calls,
        retries=counters.retries,
        throttled=counters.throttled,
        logins=tokens.logins if tokens else 0,
        # Logins after the first, not the 401s that asked: one refresh serves every waiting worker.
        refreshes=max(0, tokens.logins - 1) if tokens else 0,
        elapsed=time.perf_counter() - started,
    )
    return results, summary


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _column(name: str, values: list[Any]) -> pl.Series:
    """One output column, typed by its values: Int64, Float64, Boolean or String (JSON text)."""
    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return pl.Series(name, values, dtype=pl.String)
    if kinds == {bool}:
        return pl.Series(name, values, dtype=pl.Boolean)
    if kinds == {int} and all(v is None or -(2**63) <= v < 2**63 for v in values):
        return pl.Series(name, values, dtype=pl.Int64)
    if kinds <= {int, float} and kinds != {int}:
        return pl.Series(name, [None if v is None else float(v) for v in values], dtype=pl.Float64)
    return pl.Series(
        name, [v if v is None or isinstance(v, str) else orjson.dumps(v).decode() for v in values], dtype=pl.String
    )


def assemble(df: pl.DataFrame, config: Config, results: list[tuple[Any, ...]]) -> pl.DataFrame:
    """Append the output columns (fields, ``_http_status``, ``_error``) to the input table."""
    names = [f.name for f in config.fields] if config.fields else [RESPONSE_COLUMN]
    columns = list(zip(*results, strict=True)) if results else [() for _ in range(len(names) + 2)]
    new = [_column(name, list(col)) for name, col in zip(names, columns[:-2], strict=True)]
    new.append(pl.Series(STATUS_COLUMN, list(columns[-2]), dtype=pl.Int64))
    new.append(pl.Series(ERROR_COLUMN, list(columns[-1]), dtype=pl.String))
    return df.with_columns(new)


def as_config(config: Config | str | Path | dict[str, Any]) -> Config:
    """Accept a ``Config``, a path to a YAML file, or the same keys as a dict."""
    from .config import config_from_dict, load_config

    if isinstance(config, Config):
        return config
    if isinstance(config, dict):
        return config_from_dict(config)
    return load_config(config)


async def aenrich(
    df: pl.DataFrame, config: Config | str | Path | dict[str, Any], on_progress: ProgressCallback | None = None
) -> RunResult:
    """Enrich a DataFrame (async): every row called, output columns appended, order kept."""
    config = as_config(config)
    config.check_columns(df.columns, "the input table")
    results, summary = await enrich_rows(df.rows(named=True), config, on_progress)
    return RunResult(assemble(df, config, results), summary)


def enrich(
    df: pl.DataFrame, config: Config | str | Path | dict[str, Any], on_progress: ProgressCallback | None = None
) -> RunResult:
    """Enrich a DataFrame; for notebooks and schedulers (runs its own event loop)."""
    return asyncio.run(aenrich(df, config, on_progress))


def load_input(config: Config, input_path: Path | None = None, limit: int | None = None) -> tuple[pl.DataFrame, Path]:
    """Read the input named by ``--input`` or the config, and check the templates against it."""
    path = input_path or config.input
    if path is None:
        raise ConfigError(f"{config.source}: no input table. Set `input:` in the config or pass --input PATH.")
    df = read_table(path, config.input_types, limit)
    config.check_columns(df.columns, path.name)
    return df, path


def output_path(config: Config, output: Path | None = None) -> Path:
    """The output named by ``--output`` or the config; its format is checked before any call."""
    from .tables import output_format

    path = output or config.output
    if path is None:
        raise ConfigError(f"{config.source}: no output table. Set `output:` in the config or pass --output PATH.")
    output_format(path)
    return path


async def arun_job(
    config: Config,
    input_path: Path | None = None,
    output: Path | None = None,
    limit: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> tuple[RunResult, Path]:
    """Read the input, enrich every row, write the output atomically; return the result and where it went."""
    df, _ = load_input(config, input_path, limit)
    out = output_path(config, output)
    results, summary = await enrich_rows(df.rows(named=True), config, on_progress)
    frame = assemble(df, config, results)
    write_table(frame, out)
    return RunResult(frame, summary), out


def run_job(
    config: Config,
    input_path: Path | None = None,
    output: Path | None = None,
    limit: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> tuple[RunResult, Path]:
    """``arun_job`` with its own event loop, for scripts and schedulers."""
    return asyncio.run(arun_job(config, input_path, output, limit, on_progress))
