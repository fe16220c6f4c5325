"""Read and write tables (CSV, Parquet, NDJSON) with polars; outputs are written atomically.

df = read_table(Path("sample_data/people.csv"))
write_table(df, Path("out/people.parquet"))    # temp file, then rename
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import polars as pl

from .errors import InputError

READ_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
}
WRITE_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".ndjson": "ndjson", ".jsonl": "ndjson"}
_POLARS_TYPES = {"str": pl.String, "int": pl.Int64, "float": pl.Float64, "bool": pl.Boolean}


def input_format(path: Path) -> str:
    """The reader for ``path``, by extension; an ``InputError`` for anything else."""
    fmt = READ_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(
            f"input {path}: cannot read {path.suffix or 'files without an extension'}. "
            f"Use one of: {', '.join(READ_FORMATS)}."
        )
    return fmt


def output_format(path: Path) -> str:
    """The writer for ``path``, by extension; an ``InputError`` for anything else."""
    fmt = WRITE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(
            f"output {path}: cannot write {path.suffix or 'files without an extension'}. "
            f"Use one of: {', '.join(WRITE_FORMATS)}."
        )
    return fmt


def read_table(path: Path, types: Mapping[str, str] | None = None, limit: int | None = None) -> pl.DataFrame:
    """Read the whole input table; ``types`` overrides inferred column types (e.g. zip codes as str)."""
    fmt = input_format(path)
    if not path.exists():
        raise InputError(f"input file not found: {path}. Check `input` in the config, or pass --input PATH.")
    overrides = {col: _POLARS_TYPES[t] for col, t in (types or {}).items()}
    try:
        if fmt in ("csv", "tsv"):
            if path.stat().st_size == 0:
                raise InputError(f"input file {path} is empty: it needs a header row with the column names.")
            df = pl.read_csv(
                path,
                separator="\t" if fmt == "tsv" else ",",
                infer_schema_length=None,
                schema_overrides=overrides or None,
                n_rows=limit,
                raise_if_empty=True,
            )
        elif fmt == "parquet":
            df = pl.read_parquet(path, n_rows=limit)
        else:
            if path.stat().st_size == 0:
                raise InputError(f"input file {path} is empty: it needs one JSON object per line.")
            df = pl.read_ndjson(path, n_rows=limit, infer_schema_length=None)
    except InputError:
        raise
    except pl.exceptions.NoDataError:
        raise InputError(f"input file {path} is empty: it needs a header row with the column names.") from None
    except (pl.exceptions.PolarsError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot read the input {path} as {fmt}: {first}") from None
    if fmt == "parquet" or fmt == "ndjson":
        df = _cast(df, overrides, path)
    return df


def _cast(df: pl.DataFrame, overrides: Mapping[str, type[pl.DataType]], path: Path) -> pl.DataFrame:
    if not overrides:
        return df
    try:
        return df.with_columns(pl.col(c).cast(t) for c, t in overrides.items() if c in df.columns)
    except pl.exceptions.PolarsError as exc:
        raise InputError(f"input {path}: input_types cannot be applied: {str(exc).splitlines()[0]}") from None


def write_table(df: pl.DataFrame, path: Path) -> None:
    """Write ``df`` to ``path`` atomically: a temporary file beside it, then a rename."""
    fmt = output_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if fmt == "csv":
            df.write_csv(tmp)
        elif fmt == "parquet":
            df.write_parquet(tmp)
        else:
            df.write_ndjson(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
