"""The building pass: the output table, batch by batch, from the input rows and the journal.

Each row's plan (from the calling pass's spool, or rendered again) finds its call in the
journal; the fields come from the values extracted when the call was made (or from the
body, when ``fields`` changed since), and the output gets the field columns, ``_http_status``,
``_error`` and the diagnostics. A field that explodes makes one output row per item of its
list (``items``). Input rows are counted by what they came to (``RowCounts``).

    built, counts = build_pass(batches, config, journal, options, spool)
    for batch in built:                   # Built(frame, failed)
        writer.write(batch.frame)
    counts.ok, counts.failures            # 940, {"HTTP 404": 3, "timeout": 1}
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import polars as pl

from .calling import fields_key
from .column_types import output_column
from .config import (
    ATTEMPTS_COLUMN,
    ERROR_COLUMN,
    ITEM_COLUMN,
    LATENCY_COLUMN,
    REQUEST_COLUMNS,
    ROW_COLUMN,
    STATUS_COLUMN,
    Config,
)
from .errors import FailureKind
from .extract import parse_answer
from .items import explode_rows, zip_items
from .journal import Entry, Journal, kind_of
from .planning import (
    DEFAULT_OPTIONS,
    SKIPPED,
    Batches,
    Call,
    Plan,
    PlanSpool,
    RowError,
    RunOptions,
    plan_batch,
    shown_columns,
    template_rows,
)
from .tables import changed, content_digest

NOT_CALLED = "not called yet: no result in the journal; run `enrich run` to make the call"


def failure_label(kind: FailureKind, status: int | None) -> str:
    """How the summary names a failure: ``HTTP 404`` (an HTTP failure, by its status), else its kind."""
    return f"HTTP {status}" if kind is FailureKind.HTTP else kind.value


_ROW_ERROR = failure_label(FailureKind.BAD_ROW_DATA, None)
_NOT_CALLED = failure_label(FailureKind.NOT_CALLED, None)
_UNEVEN = failure_label(FailureKind.UNEVEN_LISTS, None)


@dataclass(slots=True)
class StepCounts:
    """One step's rows (of a run with `steps`), counted by what the step came to for each."""

    answered: int = 0  # rows with the step's answer (a 2xx, from a call or the journal)
    skipped: int = 0  # rows the step made no call for: already filled, or left out by `when`
    failures: Counter[str] = field(default_factory=Counter)  # by ``failure_label``, "missing input" among them
    filled: Counter[str] = field(default_factory=Counter)  # field column -> rows whose value this step gave


@dataclass(slots=True)
class RowCounts:
    """The input rows, counted by what they came to (an exploded row counts once, whatever its items)."""

    ok: int = 0
    skipped: int = 0  # left out by `when` or `skip_if_filled`
    failures: Counter[str] = field(default_factory=Counter)  # by ``failure_label``: "HTTP 404": 3, "timeout": 1
    filled: Counter[str] = field(default_factory=Counter)  # field column -> input rows holding a value in it
    steps: list[StepCounts] = field(default_factory=list)  # with `steps`: one per step, in order
    output_rows: int = 0  # rows written: more than the input rows when a field explodes

    @property
    def rows(self) -> int:
        return self.ok + self.skipped + sum(self.failures.values())

    def count_filled(self, frame: pl.DataFrame, columns: Sequence[str], take: Sequence[int] | None = None) -> None:
        """Count the rows of an output batch that hold a value in each field column: not null, and
        not an empty text, list or object (a provider that answers `[]` found nothing). With
        ``take`` (the input row of each output row, when a field explodes) an input row counts
        once, when any of its output rows holds a value."""
        self.output_rows += frame.height
        if not columns or not frame.height:
            return
        holds = [_holds_value(c, frame.schema[c]).alias(c) for c in columns]
        if take is None:
            found = frame.select(h.sum() for h in holds).row(0, named=True)
        else:
            per_row = frame.select(holds).with_columns(pl.Series("\0row", take)).group_by("\0row").agg(pl.all().any())
            found = per_row.select(pl.col(c).sum() for c in columns).row(0, named=True)
        self.filled.update({c: n for c, n in found.items() if n})


def _holds_value(column: str, dtype: pl.DataType) -> pl.Expr:
    value = pl.col(column)
    if dtype == pl.String:  # lists and objects are JSON text here
        return value.is_not_null() & ~value.is_in(["", "[]", "{}"])
    if isinstance(dtype, pl.List):
        return value.list.len() > 0
    return value.is_not_null()


class Built(NamedTuple):
    """One batch of output, and (when asked for) its failed rows with their requests."""

    frame: pl.DataFrame
    failed: pl.DataFrame | None


class OutputColumns(NamedTuple):
    """A batch's output columns, by name: one value per row in each."""

    fields: list[tuple[Any, ...]]  # one per field column (or the one `response` column)
    status: tuple[int | None, ...]
    error: tuple[str | None, ...]
    attempts: tuple[int | None, ...]
    latency_ms: tuple[float | None, ...]
    items: Sequence[int | None] | None = None  # `_item`, when a field explodes

    @classmethod
    def of_rows(
        cls, rows: Sequence[tuple[Any, ...]], width: int, items: Sequence[int | None] | None = None
    ) -> OutputColumns:
        """From one result per row, ``(*fields, status, error, attempts, latency_ms)`` with ``width``
        fields (the building pass makes a row's result as a plain tuple: the cheapest per row)."""
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in range(width + 4)]
        *fields, status, error, attempts, latency_ms = columns
        return cls(fields, status, error, attempts, latency_ms, items)


def build_pass(
    batches: Batches,
    config: Config,
    journal: Journal,
    options: RunOptions = DEFAULT_OPTIONS,
    spool: PlanSpool | None = None,
    with_failed: bool = False,
    source: Path | str = "the input table",
    types: Mapping[str, pl.DataType] | None = None,
) -> tuple[Iterator[Built], RowCounts]:
    """Yield the output batch by batch, from the journal; the counts fill as batches are taken.
    With ``spool`` (what the calling pass saw of ``source``), a batch that differs from the one
    the calls were made for stops the run (``InputChanged``)."""
    counts = RowCounts()
    failures = counts.failures
    fields = config.fields
    key = fields_key(config)
    width = len(fields) if fields else 1
    empty = (None,) * width
    skipped_row = (*empty, None, None, None, None)
    not_called = (*empty, None, NOT_CALLED, None, None)
    names = config.field_columns
    explode = tuple(i for i, name in enumerate(names) if name in config.explodes)

    def result(plan: Plan, entry: Entry | None) -> tuple[Any, ...]:
        """(*fields, status, error, attempts, latency_ms)"""
        if type(plan) is not Call:
            if type(plan) is RowError:
                failures[_ROW_ERROR] += 1
                return (*empty, None, plan.message, 0, None)
            counts.skipped += 1
            return skipped_row
        if entry is None:
            failures[_NOT_CALLED] += 1
            return not_called
        diagnostics = (entry.attempts, None if entry.latency_ms is None else round(entry.latency_ms, 1))
        if entry.error is not None:
            kind = entry.kind
            if kind is None:  # written before kinds were stored
                kind = kind_of(entry.status, entry.error)
            failures[failure_label(kind, entry.status)] += 1
            return (*empty, entry.status, entry.error, *diagnostics)
        values: Sequence[Any] | str
        if entry.extracted is not None and entry.fields_key == key:  # extracted when the call was made
            values = orjson.loads(entry.extracted)
        elif not entry.body:
            values = empty
        elif fields:
            doc = parse_answer(entry.body)
            values = [f.get(doc) for f in fields]
        else:
            values = (entry.body.decode(),)
        if explode:
            values = zip_items(values, explode, names)
            if type(values) is str:  # lists that cannot be zipped: the row fails, the call stands
                failures[_UNEVEN] += 1
                return (*empty, entry.status, values, *diagnostics)
        counts.ok += 1
        return (*values, entry.status, None, *diagnostics)

    def generate() -> Iterator[Built]:
        offset = 0
        planned = spool.read() if spool is not None else None
        for batch in batches():
            if planned is not None:
                digest, batch_plan = next(planned, (None, None))
                if batch_plan is None or digest != content_digest(batch):  # not the rows the calls were made for
                    raise changed(
                        source,
                        f"rows {offset + 1:,} to {offset + batch.height:,} differ from those the calls were made for",
                    )
            else:
                batch_plan = plan_batch(batch, config, options, offset, types)
            kept, numbers = batch_plan.taken(batch, offset)
            offset += batch.height
            plans = batch_plan.plans
            entries = journal.lookup((p.fp for p in plans if type(p) is Call), bodies=False)
            # Bodies only where the values extracted at call time do not fit today's `fields`.
            stale = [
                fp for fp, e in entries.items() if e.error is None and (e.extracted is None or e.fields_key != key)
            ]
            if stale:
                entries.update(journal.lookup(stale))
            rows = [result(p, entries.get(p.fp) if type(p) is Call else None) for p in plans]
            columns = OutputColumns.of_rows(rows, width)
            skipped = [p is SKIPPED for p in plans] if config.selects_rows else None
            failed = failed_rows(kept, config, columns, numbers, types) if with_failed else None  # input rows
            take = None
            if explode:  # one output row per item: the input row's own columns repeat
                exploded = explode_rows(rows, explode)
                columns = OutputColumns.of_rows(exploded.rows, width, exploded.items)
                if len(exploded.take) != kept.height:  # else each row is one output row
                    take = exploded.take
                    kept, numbers = kept[take], [numbers[i] for i in take]
                    skipped = [skipped[i] for i in take] if skipped is not None else None
            frame = assemble_columns(kept, config, columns, skipped)
            counts.count_filled(frame, config.field_columns, take)
            if options.shard is not None:
                frame = frame.with_columns(pl.Series(ROW_COLUMN, numbers, dtype=pl.Int64))
            yield Built(frame, failed)

    return generate(), counts


def failed_rows(
    batch: pl.DataFrame,
    config: Config,
    columns: OutputColumns,
    numbers: list[int],
    types: Mapping[str, pl.DataType] | None = None,
) -> pl.DataFrame:
    """The failed rows of a batch, for ``--errors-out``: row number, the columns the request reads
    (as read), the request as sent (each secret and the token as ``***``, where they were put),
    status, error and attempts."""
    failed = [i for i, error in enumerate(columns.error) if error is not None]
    used = sorted(config.columns_used)
    part = batch[failed] if failed else batch.clear()
    _, rows, _ = template_rows(part, config, types)
    requests = [shown_columns(config, row) for row in rows]
    return pl.DataFrame(
        [
            pl.Series(ROW_COLUMN, [numbers[i] for i in failed], dtype=pl.Int64),
            *(part[c] for c in used),
            *(pl.Series(name, [r[i] for r in requests], dtype=pl.String) for i, name in enumerate(REQUEST_COLUMNS)),
            pl.Series(STATUS_COLUMN, [columns.status[i] for i in failed], dtype=pl.Int64),
            pl.Series(ERROR_COLUMN, [columns.error[i] for i in failed], dtype=pl.String),
            pl.Series(ATTEMPTS_COLUMN, [columns.attempts[i] for i in failed], dtype=pl.Int64),
        ]
    )


def assemble(
    df: pl.DataFrame, config: Config, results: Sequence[tuple[Any, ...]], skipped: list[bool] | None = None
) -> pl.DataFrame:
    """Append the output columns (fields, ``_http_status``, ``_error``, diagnostics) to the input rows.

    ``results`` holds ``(*fields, status, error, attempts, latency_ms)`` per row. A column the
    input already has (allowed with `skip_if_filled`) keeps the input's value in the rows that
    got no call (``skipped``).
    """
    columns = OutputColumns.of_rows(results, len(config.field_columns))
    return assemble_columns(df, config, columns, skipped)


def assemble_columns(
    df: pl.DataFrame, config: Config, columns: OutputColumns, skipped: list[bool] | None = None
) -> pl.DataFrame:
    """``assemble``, from the output columns by name."""
    names = list(config.field_columns)
    # A field column the input already has as text (a CSV, filled in part by hand): the API's values
    # join it as their JSON text, so the input's own values stay exactly as written.
    text = {n for n in names if df.schema.get(n) == pl.String} if skipped is not None else set()
    new = [output_column(name, list(col), name in text) for name, col in zip(names, columns.fields, strict=True)]
    if config.explodes:
        items = list(columns.items) if columns.items is not None else [None] * df.height
        new.append(pl.Series(ITEM_COLUMN, items, dtype=pl.Int64))
    new.append(pl.Series(STATUS_COLUMN, list(columns.status), dtype=pl.Int64))
    new.append(pl.Series(ERROR_COLUMN, list(columns.error), dtype=pl.String))
    if config.diagnostics:
        new.append(pl.Series(ATTEMPTS_COLUMN, list(columns.attempts), dtype=pl.Int64))
        new.append(pl.Series(LATENCY_COLUMN, list(columns.latency_ms), dtype=pl.Float64))
    kept = set(df.columns)
    if skipped is not None and kept.intersection(s.name for s in new):
        mask = pl.Series("skipped", skipped, dtype=pl.Boolean)
        fields = set(config.field_columns)
        new = [keep_filled(df[s.name], s, mask, fill=s.name in fields) if s.name in kept else s for s in new]
    return df.with_columns(new)


def keep_filled(old: pl.Series, new: pl.Series, skipped: pl.Series, fill: bool) -> pl.Series:
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
