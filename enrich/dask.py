"""Enrich a Dask DataFrame: each partition through the engine, on whichever worker Dask picks.

    import dask.dataframe as dd
    from distributed import Client, LocalCluster
    import enrich.dask

    client = Client(LocalCluster(n_workers=4, threads_per_worker=1))
    people = dd.read_parquet("s3://bucket/people/")
    enriched = enrich.dask.enrich(people, "configs/acme.yaml")     # lazy, like any Dask frame
    enriched.to_parquet("s3://bucket/people_enriched/")

Each partition runs as one task with its own event loop, connection pool and login; its rows
keep their order and index, and the result has the input's columns followed by the config's
output columns (``fields``, ``_http_status``, ``_error``, diagnostics). A field that explodes
(``explode: true``) gives a row one output row per item, each with the row's index (repeated)
and ``_item``.

Partitions run at the same time in many processes, so two settings must be shared by all of
them, or the run is refused before anything is computed:

- the rate limit: ``rate_limit: {rate: ..., shared: redis://..., key: ...}`` books every
  partition's calls against one limit. A per-process limit would let N partitions together
  call N times the rate (``per_partition_limit=True`` accepts that, knowingly);
- the journal: a ``redis://`` URL (``journal:`` in the config, or the ``journal`` argument;
  without ``?prefix=`` it is named after the config's output, as ``enrich run`` names it).
  Dask re-runs the tasks of a worker that died; the rerun finds the calls the dead worker
  finished in Redis and does not pay for them again. A SQLite file cannot be shared by
  processes on several machines, and none at all would make every compute and every re-run
  task pay again, so both are refused; ``journal=False`` (or ``journal: false``) accepts
  in-memory journals, one per partition, knowingly.

One run's partitions share its start time (``RunOptions.started_at``), so with ``fresh`` or
``retry_failed`` a call made by any of them, or by a task that died, is not made again.
``max_error_rate`` and ``errors_out`` are for ``enrich run``; here the ``_error`` column
tells which rows failed.

The field columns are text (the ``string`` dtype: numbers and booleans as a CSV output writes
them, lists and objects as JSON) unless ``dtypes`` names another (``{"employees": "Int64"}``):
the engine types a column by its values, which differ from partition to partition, and a
Dask frame needs one type per column before it is computed. Needs ``pip install 'enrich[dask]'``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import (
    ATTEMPTS_COLUMN,
    ERROR_COLUMN,
    ITEM_COLUMN,
    LATENCY_COLUMN,
    STATUS_COLUMN,
    Config,
    journal_location,
)
from .engine import as_config
from .errors import ConfigError, InputError
from .planning import RunOptions
from .redis_journal import is_redis_url, named_after
from .step_config import status_columns, step_output_columns

if TYPE_CHECKING:
    import dask.dataframe as dd
    import pandas as pd
    import polars as pl

# The columns the engine adds besides the fields, and their pandas dtypes (nullable).
_FIXED_DTYPES = {STATUS_COLUMN: "Int64", ERROR_COLUMN: "string", ATTEMPTS_COLUMN: "Int64", LATENCY_COLUMN: "Float64"}
# With an exploding field: each output row's input row, in the partition (a column the engine carries along).
_POSITION = "\0position"


def enrich(
    ddf: dd.DataFrame,
    config: Config | str | Path | dict[str, Any],
    journal: str | Path | bool | None = None,
    *,
    dtypes: Mapping[str, str] | None = None,
    options: RunOptions | None = None,
    per_partition_limit: bool = False,
) -> dd.DataFrame:
    """The enriched frame (lazy): ``ddf``'s columns, then the config's output columns.

    ``journal`` (a ``redis://`` URL, or ``False`` for none) overrides the config's ``journal:``. ``options`` takes
    ``fresh``, ``retry_failed`` and ``refresh_older_than`` as ``enrich run`` does.
    Raises ``ConfigError`` for a config that cannot run on many processes at once (see the
    module's text), before any call.
    """
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - the extra brings it
        raise ConfigError("enrich.dask needs Dask: pip install 'enrich[dask]'.") from None
    import polars as pl

    config = as_config(config)
    options = options or RunOptions()
    if options.limit is not None or options.shard is not None:
        raise ConfigError(
            "enrich.dask.enrich takes no `limit` or `shard`: Dask splits the work into partitions. "
            "Enrich `ddf.head(N, compute=False)` or a subset of `ddf.partitions` instead."
        )
    if options.started_at is None:  # one run: every partition, and any re-run of one, shares its start
        options = replace(options, started_at=time.time())
    location = _shared_journal(config, journal)
    _check_limit(config, per_partition_limit)
    meta = ddf._meta
    config.check_schema(pl.from_pandas(meta).schema, "the Dask DataFrame")
    types = _output_dtypes(config, dtypes, list(meta.columns))
    out_meta = meta.copy()
    for name, dtype in types.items():
        out_meta[name] = pd.Series([], dtype=dtype, index=meta.index[:0])
    return ddf.map_partitions(
        _partition, config, location, options, types, meta=out_meta, token="enrich", align_dataframes=False
    )


def _shared_journal(config: Config, journal: str | Path | bool | None) -> str | None:
    """The Redis journal every partition uses, or ``None`` when told to keep none (``journal=False``
    or ``journal: false``): in-memory journals, one per partition."""
    if journal is False or (journal is None and not config.use_journal):
        return None
    if journal is True or journal is None:
        chosen = config.journal
        where = f"{config.source}: `journal:`"
    elif isinstance(journal, str):
        chosen = journal_location(journal, "enrich.dask.enrich(journal=...)", config.redactor)
        where = "enrich.dask.enrich(journal=...)"
    else:
        chosen, where = Path(journal), "enrich.dask.enrich(journal=...)"
    fix = (
        'Keep it in Redis (`journal: "redis://HOST:6379/0?prefix=NAME"` in the config, or '
        'enrich.dask.enrich(..., journal="redis://...")), or pass journal=False (or set `journal: false`) '
        "to keep each partition's calls in memory only, paid again by every compute and every re-run task."
    )
    if chosen is None and journal is True and not config.use_journal:
        raise ConfigError(
            f"journal=True, but {config.source} says `journal: false`. Name the Redis journal: "
            'journal="redis://HOST:6379/0?prefix=NAME", or pass journal=False.'
        )
    if chosen is None:
        raise ConfigError(
            f"{config.source} names no journal, and on a Dask cluster the file beside the output cannot be "
            f"shared by the workers: a task re-run after its worker died would pay for its calls again. {fix}"
        )
    if not is_redis_url(chosen):
        raise ConfigError(
            f"{where}: the journal {chosen} is a file, which the workers of a Dask cluster cannot share. {fix}"
        )
    assert isinstance(chosen, str)
    return named_after(chosen, config.output.name if config.output else None)  # as `enrich run` names it


def _check_limit(config: Config, per_partition_limit: bool) -> None:
    for step in config.steps or (config,):
        rate = step.rate_limit
        if rate is None or rate.shared or per_partition_limit:
            continue
        of = f" of step `{step.name}`" if step.name else ""
        raise ConfigError(
            f"{config.source}: `rate_limit: {rate}`{of} is kept by each process, so partitions running at once on "
            f"a Dask cluster would together exceed it. Share it through Redis: `rate_limit: {{rate: {rate}, "
            'shared: "redis://HOST:6379/0", key: NAME}`; or pass per_partition_limit=True if each partition '
            "may really call at that rate."
        )


def _output_dtypes(config: Config, dtypes: Mapping[str, str] | None, columns: list[str]) -> dict[str, str]:
    """The pandas dtype of each output column, in output order; each must hold missing values
    (a skipped or failed row has none), so numpy's bool and integer dtypes are refused."""
    import pandas as pd

    fixed = {**_FIXED_DTYPES, ITEM_COLUMN: "Int64"}
    for step in config.steps:  # each step's own status, error and diagnostics
        fixed.update(zip(status_columns(step), _FIXED_DTYPES.values(), strict=False))
    # With steps, a field column the input has is filled where empty, and gets a `<column>_source`.
    names = dict.fromkeys((*config.field_columns, *step_output_columns(config, columns))) if config.steps else None
    types = {name: fixed.get(name, "string") for name in names or config.output_columns}
    for name, dtype in (dtypes or {}).items():
        if name not in types:
            raise ConfigError(
                f"dtypes names {name!r}, which is not an output column of {config.source}. "
                f"The output columns are: {', '.join(types)}."
            )
        try:
            kind = pd.api.types.pandas_dtype(dtype)
        except TypeError as exc:
            raise ConfigError(f"dtypes[{name!r}]: {dtype!r} is not a pandas dtype ({exc}).") from None
        if getattr(kind, "kind", None) in ("b", "i", "u", "S") and not isinstance(
            kind, pd.api.extensions.ExtensionDtype
        ):
            nullable = {"b": "boolean", "S": "string"}.get(kind.kind, "Int64")
            raise ConfigError(
                f"dtypes[{name!r}]: {dtype!r} cannot hold a missing value, which a row that failed or was "
                f"skipped has. Use {nullable!r}, its nullable form."
            )
        types[name] = dtype
    return types


def _partition(
    part: pd.DataFrame, config: Config, journal: str | None, options: RunOptions, types: dict[str, str]
) -> pd.DataFrame:
    """One partition through the engine (its own event loop), on a Dask worker."""
    import pandas as pd
    import polars as pl

    from .engine import enrich as run_engine

    frame = pl.from_pandas(part, include_index=False)
    if config.explodes:  # rows become one per item: which input row each is, to repeat its index
        frame = frame.with_row_index(_POSITION)
    result = run_engine(frame, config, journal=journal, options=options).frame
    rows = part.iloc[result[_POSITION].to_list()] if config.explodes else part  # an index per item
    out = rows.copy(deep=False)
    for name, dtype in types.items():
        column = result[name]
        try:
            # Text as the CSV output has it: 42, 1.5, true, and JSON for lists and objects.
            values = _as_text(column) if _is_text(dtype) else column.to_list()
            out[name] = pd.Series(values, index=out.index, dtype=dtype)
        except (TypeError, ValueError, pl.exceptions.PolarsError) as exc:
            raise InputError(
                f"the output column {name!r} cannot be {dtype} in a partition starting at index "
                f'{part.index[0]!r}: {exc}. Name another dtype for it in dtypes= ("string" takes every value).'
            ) from None
    return out


def _is_text(dtype: str) -> bool:
    import pandas as pd

    kind = pd.api.types.pandas_dtype(dtype)
    plain_object = not isinstance(kind, pd.api.extensions.ExtensionDtype) and kind.kind == "O"
    return not plain_object and pd.api.types.is_string_dtype(kind)


def _as_text(column: pl.Series) -> list[str | None]:
    import polars as pl

    return column.cast(pl.String).to_list()  # the engine's columns are scalars, or JSON text already
