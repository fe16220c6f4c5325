"""Read and write tables (CSV, Parquet, NDJSON) with polars; outputs are written atomically.

df = read_table(Path("sample_data/people.csv"))
write_table(df, Path("out/people.parquet"))    # temp file, then rename
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import polars as pl

from .errors import InputChanged, InputError

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


def output_format(path: Path, what: str = "output") -> str:
    """The writer for ``path``, by extension; an ``InputError`` (naming ``what``) for anything else."""
    fmt = WRITE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(
            f"{what} {path}: cannot write {path.suffix or 'files without an extension'}. "
            f"Use one of: {', '.join(WRITE_FORMATS)}."
        )
    return fmt


def read_table(path: Path, types: Mapping[str, str] | None = None, limit: int | None = None) -> pl.DataFrame:
    """Read a table whole (a preview, a small input); the same checks and errors as ``scan_table``."""
    lf = scan_table(path, types)
    try:
        return (lf.head(limit) if limit is not None else lf).collect()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(f"cannot read the input {path}: {_first_line(exc)}") from None


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


# --- streaming ---------------------------------------------------------------------------

BATCH_ROWS = 20_000

# polars' streaming CSV reader runs ahead of its consumer by about four chunks of 32 MiB:
# with the HTTP calls as the slow consumer, a 1M-row CSV sat in memory whole (~120 MB),
# and the read-ahead grew with the file up to ~300 MB. 1 MiB chunks bound it to a few MB
# whatever the file size, and read no slower. An explicit setting in the environment wins.
os.environ.setdefault("POLARS_CSV_CHUNK_SIZE", str(1 << 20))


def scan_table(path: Path, types: Mapping[str, str] | None = None) -> pl.LazyFrame:
    """A lazy scan of the input: read in batches, never whole (tables larger than memory)."""
    fmt = input_format(path)
    if not path.exists():
        raise InputError(f"input file not found: {path}. Check `input` in the config, or pass --input PATH.")
    if path.is_dir():
        raise InputError(f"input {path} is a directory; name a file.")
    overrides = {col: _POLARS_TYPES[t] for col, t in (types or {}).items()}
    if fmt in ("csv", "tsv", "ndjson") and path.stat().st_size == 0:
        what = "a header row with the column names" if fmt != "ndjson" else "one JSON object per line"
        raise InputError(f"input file {path} is empty: it needs {what}.")
    try:
        if fmt in ("csv", "tsv"):
            lf = pl.scan_csv(
                path,
                separator="\t" if fmt == "tsv" else ",",
                infer_schema_length=10_000,
                schema_overrides=overrides or None,
                raise_if_empty=True,
            )
        elif fmt == "parquet":
            lf = pl.scan_parquet(path)
        else:
            lf = pl.scan_ndjson(path, infer_schema_length=10_000)
        schema = lf.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(f"cannot read the input {path} as {fmt}: {_first_line(exc)}") from None
    if fmt in ("parquet", "ndjson") and overrides:
        lf = lf.with_columns(pl.col(c).cast(t) for c, t in overrides.items() if c in schema)
    return lf


@dataclass(frozen=True, slots=True)
class InputStamp:
    """What identifies the input file's content without reading it: device, inode, size and
    modification time. A run reads its input twice (calls, then output); a file replaced or
    rewritten in between would put answers on the wrong rows, so the run checks it is unchanged.

        stamp = InputStamp.of(Path("people.csv"))
        ...
        stamp.check()            # raises InputChanged if the file is not the one stamped
    """

    path: Path
    stat: tuple[int, int, int, int]

    @classmethod
    def of(cls, path: Path) -> InputStamp:
        st = path.stat()
        return cls(path, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))

    def check(self) -> None:
        try:
            now = InputStamp.of(self.path).stat
        except OSError:
            now = None
        if now != self.stat:
            raise changed(self.path, "it was replaced, edited or removed")


def content_digest(batch: pl.DataFrame) -> int:
    """A 64-bit digest of a batch's values in their order: the calling pass records it, the
    building pass compares it, so a file rewritten in place (same name, size and time) is found too."""
    return int(batch.with_row_index().hash_rows().sum())


def changed(path: Path | str, how: str) -> InputChanged:
    """The stop for an input that changed during the run."""
    return InputChanged(
        f"the input {path} changed while the run read it ({how}): its answers would land on the wrong rows, so "
        "nothing was written. The calls made are saved in the journal: run the same command again once the "
        "file stays as it is (work on a copy if another program writes it)."
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def iter_batches(
    lf: pl.LazyFrame, path: Path, limit: int | None = None, rows: int = BATCH_ROWS
) -> Iterator[pl.DataFrame]:
    """Yield the table in order, ``rows`` at a time; a header-only table yields one empty frame."""
    if limit is not None:
        lf = lf.head(limit)
    produced = False
    try:
        for batch in lf.collect_batches(chunk_size=rows):
            if batch.height:
                produced = True
                yield batch
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(
            f"cannot read the input {path}: {_first_line(exc)}. If a column's type was guessed wrong, "
            "set it with `input_types: {column: str}`."
        ) from None
    if not produced:
        yield pl.DataFrame(schema=lf.collect_schema())


def count_rows(lf: pl.LazyFrame, path: Path, limit: int | None = None) -> int | None:
    """The number of rows (a streaming count), or ``None`` if counting fails.

    Parquet counts from its metadata. A text file is counted by streaming one column in
    batches: polars' own fast count maps the whole file into memory, so the peak RSS
    would grow by the size of the file.
    """
    if limit is not None:
        lf = lf.head(limit)
    try:
        if input_format(path) == "parquet":
            return int(lf.select(pl.len()).collect(engine="streaming").item())
        first = lf.collect_schema().names()[:1]
        return sum(batch.height for batch in lf.select(first).collect_batches(chunk_size=BATCH_ROWS))
    except (pl.exceptions.PolarsError, OSError):
        return None


def unify_dtypes(schemas: list[dict[str, pl.DataType]], nulls: list[set[str]]) -> dict[str, pl.DataType]:
    """One dtype per column across batches: a column all-null in a batch does not vote;
    Int64 with Float64 gives Float64; any other disagreement gives String (JSON text)."""
    out: dict[str, pl.DataType] = {}
    for name in schemas[0]:
        kinds = {s[name] for s, n in zip(schemas, nulls, strict=True) if name not in n}
        if not kinds:
            out[name] = schemas[0][name]
        elif len(kinds) == 1:
            out[name] = kinds.pop()
        elif kinds <= {pl.Int64, pl.Float64}:
            out[name] = pl.Float64()
        else:
            out[name] = pl.String()
    return out


class OutputWriter:
    """Write the output batch by batch (as Arrow parts beside it), then one file, atomically.

    Column types are settled when every batch is in (``unify_dtypes``), so a field that
    is null in the first batch and an integer later still comes out as Int64.
    """

    def __init__(self, path: Path, escape_formulas: Sequence[str] = ()) -> None:
        self.path = path
        self.format = output_format(path)
        # CSV only: these columns (values from the API) are guarded against formula injection.
        self.escape_formulas = tuple(escape_formulas) if self.format == "csv" else ()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._dir = path.with_name(f".{path.name}.{os.getpid()}.parts")
        self._dir.mkdir(exist_ok=True)
        self._parts: list[Path] = []
        self._schemas: list[dict[str, pl.DataType]] = []
        self._nulls: list[set[str]] = []
        self.rows = 0

    def write(self, df: pl.DataFrame) -> None:
        part = self._dir / f"{len(self._parts):06d}.arrow"
        df.write_ipc(part)
        self._parts.append(part)
        self._schemas.append(dict(df.schema))
        self._nulls.append({c for c in df.columns if df.height and df[c].null_count() == df.height})
        self.rows += df.height

    def finish(self) -> None:
        """Join the parts into the output file (temporary name, then rename) and clean up."""
        try:
            final = unify_dtypes(self._schemas, self._nulls)
            frames = [pl.scan_ipc(p).cast(final) for p in self._parts]  # type: ignore[arg-type]
            lf = pl.concat(frames) if frames else pl.LazyFrame(schema=final)
            if self.escape_formulas:
                lf = neutralise_formulas(lf, self.escape_formulas)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            try:
                if self.format == "csv":
                    lf.sink_csv(tmp)
                elif self.format == "parquet":
                    lf.sink_parquet(tmp)
                else:
                    lf.sink_ndjson(tmp)
                os.replace(tmp, self.path)
            finally:
                tmp.unlink(missing_ok=True)
        finally:
            self.discard()

    @staticmethod
    def sweep(path: Path) -> None:
        """Remove what a killed run left beside ``path`` (parts, temporary files); call it only
        while holding the journal's lock, so no live run is writing them."""
        for leftover in path.parent.glob(f".{path.name}.*"):
            if leftover.is_dir() and leftover.name.endswith(".parts"):
                shutil.rmtree(leftover, ignore_errors=True)
            elif leftover.name.endswith(".tmp"):
                leftover.unlink(missing_ok=True)

    def discard(self) -> None:
        """Remove the parts (an interrupted run leaves nothing under the output name)."""
        for part in self._parts:
            part.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self._dir.rmdir()


def collect_frames(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """The in-memory twin of ``OutputWriter``: concatenate batches with unified column types."""
    final = unify_dtypes(
        [dict(f.schema) for f in frames],
        [{c for c in f.columns if f.height and f[c].null_count() == f.height} for f in frames],
    )
    return pl.concat([f.cast(final) for f in frames])  # type: ignore[arg-type]


def merge_shards(parts: list[Path], output: Path) -> int:
    """Join the outputs of ``--shard I/N`` runs into one table in input order; returns its rows."""
    from .config import ROW_COLUMN

    frames = []
    for part in parts:
        lf = scan_table(part)
        if ROW_COLUMN not in lf.collect_schema():
            raise InputError(f"{part} has no {ROW_COLUMN} column: it is not the output of `enrich run --shard I/N`.")
        frames.append(lf)
    merged = pl.concat(frames, how="diagonal_relaxed").sort(ROW_COLUMN).drop(ROW_COLUMN).collect(engine="streaming")
    write_table(merged, output)
    return merged.height


# --- CSV injection guard -------------------------------------------------------------------

# OWASP's list: a spreadsheet evaluates a cell that starts with one of these as a formula.
_FORMULA_START = r"^[=+\-@\t\r]"
# A plain decimal number (sign, digits, optional point and exponent): spreadsheets read it as a
# number, so "-12.5" keeps its value. ASCII digits only: the regex engine's \d also matches other
# scripts' digits, which no spreadsheet reads as a number. "-inf" and "-nan" are not numbers to a
# spreadsheet either (Excel evaluates `-inf` as a formula naming `inf`), so they get the quote.
# In polars' (Rust) regex `$` is the very end of the text, so "-12\n" is not a number.
_PLAIN_NUMBER = r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"


Frame = TypeVar("Frame", pl.DataFrame, pl.LazyFrame)


def neutralise_formulas(frame: Frame, columns: Iterable[str]) -> Frame:
    """Prefix ``'`` to text cells a spreadsheet would run as a formula (OWASP CSV injection).

    A cell of a String column in ``columns`` that starts with ``=``, ``+``, ``-``, ``@``, a tab or a
    carriage return gets a leading single quote, so Excel, LibreOffice and Sheets show it as text.
    A plain number (``-12.5``, ``+3``, ``-1e5``) is left as it is; so are nulls, columns not named,
    names the frame does not have, and columns of other types. A LazyFrame gets a lazy plan.

    >>> df = pl.DataFrame({"note": ["=1+2", "-12.5", "@SUM(A1)", None], "n": [1, 2, 3, 4]})
    >>> neutralise_formulas(df, ["note", "n"])["note"].to_list()
    ["'=1+2", '-12.5', "'@SUM(A1)", None]
    """
    schema = frame.collect_schema()
    names = [c for c in dict.fromkeys(columns) if schema.get(c) == pl.String]
    if not names:
        return frame
    return frame.with_columns(
        pl.when(pl.col(c).str.contains(_FORMULA_START) & ~pl.col(c).str.contains(_PLAIN_NUMBER))
        .then(pl.concat_str(pl.lit("'"), pl.col(c)))
        .otherwise(pl.col(c))
        .alias(c)
        for c in names
    )
