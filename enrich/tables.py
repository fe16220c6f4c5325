"""Read and write tables (CSV, Parquet, NDJSON, Excel workbooks) with polars; outputs are written atomically.

df = read_table(Path("sample_data/people.csv"))
write_table(df, Path("out/people.parquet"))    # temp file, then rename
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import polars as pl

from .atomic import is_leftover, replacing
from .column_types import INPUT_TYPES, unify_dtypes, value_kinds, wide_ints
from .errors import InputChanged, InputError
from .workbook import READ_SUFFIXES, read_sheet, write_workbook

READ_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    **dict.fromkeys(READ_SUFFIXES, "excel"),
}
WRITE_FORMATS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".xlsx": "xlsx",
}


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


def read_table(
    path: Path, types: Mapping[str, str] | None = None, limit: int | None = None, sheet: str | None = None
) -> pl.DataFrame:
    """Read a table whole (a preview, a small input); the same checks and errors as ``scan_table``."""
    lf = scan_table(path, types, sheet)
    try:
        return (lf.head(limit) if limit is not None else lf).collect()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise unreadable(path, exc) from None


def write_table(df: pl.DataFrame, path: Path) -> None:
    """Write ``df`` to ``path`` atomically: a temporary file beside it, then a rename."""
    fmt = output_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        _write(df.lazy(), fmt, tmp)


def _write(lf: pl.LazyFrame, fmt: str, path: Path) -> None:
    if fmt == "csv":
        lf.sink_csv(path)
    elif fmt == "parquet":
        lf.sink_parquet(path)
    elif fmt == "ndjson":
        lf.sink_ndjson(path)
    else:  # a workbook is written whole
        write_workbook(lf.collect(), path)


# --- streaming ---------------------------------------------------------------------------

BATCH_ROWS = 20_000

# polars' streaming CSV reader runs ahead of its consumer by about four chunks of 32 MiB:
# with the HTTP calls as the slow consumer, a 1M-row CSV sat in memory whole (~120 MB),
# and the read-ahead grew with the file up to ~300 MB. 1 MiB chunks bound it to a few MB
# whatever the file size, and read no slower. An explicit setting in the environment wins.
os.environ.setdefault("POLARS_CSV_CHUNK_SIZE", str(1 << 20))


def scan_table(path: Path, types: Mapping[str, str] | None = None, sheet: str | None = None) -> pl.LazyFrame:
    """A lazy scan of the input: read in batches, never whole (tables larger than memory), but
    for an Excel workbook, whose sheet ``sheet`` is read whole (``workbook.read_sheet``).

    CSV and TSV columns are read as text, exactly as written (``02134`` stays ``02134``, a
    30-digit id stays its digits), unless ``types`` (``input_types``) names their type; see
    ``value_types`` for how their values are still sent typed in a JSON body.
    """
    fmt = input_format(path)
    if not path.exists():
        raise InputError(f"input file not found: {path}. Check `input` in the config, or pass --input PATH.")
    if path.is_dir():
        raise InputError(f"input {path} is a directory; name a file.")
    overrides = {col: INPUT_TYPES[t] for col, t in (types or {}).items()}
    if fmt in ("csv", "tsv", "ndjson") and path.stat().st_size == 0:
        what = "a header row with the column names" if fmt != "ndjson" else "one JSON object per line"
        raise InputError(f"input file {path} is empty: it needs {what}.")
    try:
        if fmt in ("csv", "tsv"):
            lf = pl.scan_csv(
                path,
                separator="\t" if fmt == "tsv" else ",",
                infer_schema=False,
                schema_overrides=overrides or None,
                raise_if_empty=True,
            )
        elif fmt == "parquet":
            lf = pl.scan_parquet(path)
        elif fmt == "excel":
            return read_sheet(path, sheet, overrides).lazy()
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


SAMPLE_ROWS = 10_000  # rows a column's kind is judged on


def value_types(
    lf: pl.LazyFrame, columns: Iterable[str], declared: Mapping[str, str] | None = None, source: Path | None = None
) -> dict[str, pl.DataType]:
    """The kind of values of each text column among ``columns`` (but those ``declared`` in
    ``input_types``, which keep the type given there), judged on the first rows by
    ``column_types.value_kinds``: numbers, booleans, or text.

    A column of numbers is still written to the output as it was read; the kind decides only
    what a whole JSON value in the request body becomes (``{{employees}}`` sends ``12``, not
    ``"12"``). ``column_types.typed_view`` applies it to each batch.
    """
    schema = lf.collect_schema()
    text = [c for c in dict.fromkeys(columns) if schema.get(c) == pl.String and c not in (declared or {})]
    if not text:
        return {}
    try:
        sample = lf.select(text).head(SAMPLE_ROWS).collect()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise unreadable(source or Path("the input"), exc) from None
    return value_kinds(sample)


def check_utf8(path: Path, chunk: int = 1 << 20) -> None:
    """Raise ``InputError`` naming the line and byte when a CSV/TSV file is not UTF-8 (an export in
    Latin-1 or Windows-1252, often): found before any call, not batches into the run. Reads the
    file once, a chunk at a time."""
    if input_format(path) not in ("csv", "tsv"):
        return
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    line, offset = 1, 0
    try:
        with path.open("rb") as f:
            while data := f.read(chunk):
                try:
                    decoder.decode(data)
                except UnicodeDecodeError as exc:
                    # The decoder may hold up to 3 bytes of a character begun in the previous chunk.
                    bad = data[max(exc.start, 0) : max(exc.start, 0) + 1] or data[:1]
                    line += data.count(b"\n", 0, max(exc.start, 0))
                    raise InputError(
                        f"input {path} is not UTF-8 text: byte 0x{bad.hex()} on line {line:,} (byte {offset + exc.start:,} "
                        "of the file) is not UTF-8. It was probably saved as Latin-1 or Windows-1252: save it as UTF-8 "
                        f"(in Excel: CSV UTF-8), or convert it: iconv -f windows-1252 -t utf-8 {path} > utf8.csv"
                    ) from None
                line += data.count(b"\n")
                offset += len(data)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise InputError(
            f"input {path} is not UTF-8 text: it ends in the middle of a character. Save it as UTF-8."
        ) from None
    except OSError as exc:
        raise InputError(f"cannot read the input {path}: {exc.strerror or exc}") from None


def unreadable(path: Path, exc: BaseException) -> InputError:
    """The error for an input that polars cannot read as far as it got, with what to check."""
    detail = _first_line(exc)
    lowered = str(exc).lower()
    if "more fields" in lowered or "malformed" in lowered or "quote" in lowered:
        fix = (
            "Check that every line has as many fields as the header, and that every quote is closed (a field "
            "holding a comma or a line break must be in double quotes)."
        )
    else:
        fix = (
            "If a column named in `input_types` holds values of another type, read it as text: "
            "`input_types: {column: str}`."
        )
    return InputError(f"cannot read the input {path}: {detail}. {fix}")


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
        raise unreadable(path, exc) from None
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
        self._wide: list[set[str]] = []  # Int64 columns too wide for a float, per part
        self.rows = 0

    def write(self, df: pl.DataFrame) -> None:
        part = self._dir / f"{len(self._parts):06d}.arrow"
        df.write_ipc(part)
        self._parts.append(part)
        self._schemas.append(dict(df.schema))
        self._nulls.append({c for c in df.columns if df.height and df[c].null_count() == df.height})
        self._wide.append(wide_ints(df))
        self.rows += df.height

    def finish(self) -> None:
        """Join the parts into the output file (temporary name, then rename) and clean up."""
        try:
            final = unify_dtypes(self._schemas, self._nulls, self._wide)
            frames = [pl.scan_ipc(p).cast(final) for p in self._parts]  # type: ignore[arg-type]
            lf = pl.concat(frames) if frames else pl.LazyFrame(schema=final)
            if self.escape_formulas:
                lf = neutralise_formulas(lf, self.escape_formulas)
            with replacing(self.path) as tmp:
                _write(lf, self.format, tmp)
        finally:
            self.discard()

    @staticmethod
    def sweep(path: Path) -> None:
        """Remove what a killed run left beside ``path`` (parts, temporary files); call it only
        while holding the journal's lock, so no live run is writing them."""
        for leftover in path.parent.glob(f".{path.name}.*"):
            if leftover.is_dir() and leftover.name.endswith(".parts"):
                shutil.rmtree(leftover, ignore_errors=True)
            elif is_leftover(leftover):
                leftover.unlink(missing_ok=True)

    def discard(self) -> None:
        """Remove the parts (an interrupted run leaves nothing under the output name), a part cut
        short by a full disk included."""
        shutil.rmtree(self._dir, ignore_errors=True)


def collect_frames(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """The in-memory twin of ``OutputWriter``: concatenate batches with unified column types."""
    final = unify_dtypes(
        [dict(f.schema) for f in frames],
        [{c for c in f.columns if f.height and f[c].null_count() == f.height} for f in frames],
        [wide_ints(f) for f in frames],
    )
    return pl.concat([f.cast(final) for f in frames])  # type: ignore[arg-type]


def merge_shards(parts: list[Path], output: Path) -> int:
    """Join the outputs of ``--shard I/N`` runs into one table in input order; returns its rows.

    Before anything is written it checks that the parts are the N shards of one run, each once
    (from their names, ``people.shard-I-of-N.parquet``), and that their ``_row`` numbers are the
    input rows 0 to rows-1, each once (with ``_item``, from an exploding field: each row in one
    part, each of its items once, in ``_row`` then ``_item`` order); otherwise it raises
    ``InputError`` and writes nothing. The checks read the ``_row`` (and ``_item``) column alone.
    """
    from .config import ITEM_COLUMN, ROW_COLUMN

    _check_shard_names(parts)
    if output_format(output) == "csv" and any(input_format(p) != "csv" for p in parts):
        # A CSV that enrich writes guards the API's values against spreadsheet formulas; these
        # parts were not written as CSV, so their values never were.
        raise InputError(
            f"{output}: the shard outputs are not CSV, and merged into a CSV the API's values would reach a "
            "spreadsheet unguarded against formulas (escape_formulas). Merge them into .parquet or .ndjson, "
            "or run the shards with a .csv output."
        )
    frames = []
    for part in parts:
        lf = scan_table(part)
        if ROW_COLUMN not in lf.collect_schema():
            raise InputError(f"{part} has no {ROW_COLUMN} column: it is not the output of `enrich run --shard I/N`.")
        # A shard with no rows written as CSV has a String _row: as a number, it sorts as one (and _item too).
        numbers = [c for c in (ROW_COLUMN, ITEM_COLUMN) if c in lf.collect_schema()]
        frames.append(lf.with_columns(pl.col(numbers).cast(pl.Int64, strict=False)))
    heights = _check_shard_rows(parts, frames)
    if any(heights):  # a part without rows adds nothing but its columns' types (all String in a CSV)
        frames = [lf for lf, height in zip(frames, heights, strict=True) if height]
    # A column a part holds no value in (a field no row of that shard got) does not vote for its type:
    # as String it would turn the other shards' numbers into text.
    schemas = [dict(lf.collect_schema()) for lf in frames]
    nulls = [_all_null(lf, schema) for lf, schema in zip(frames, schemas, strict=True)]
    if all(list(schema) == list(schemas[0]) for schema in schemas):
        final = unify_dtypes(schemas, nulls)
        frames = [lf.cast(final) for lf in frames]  # type: ignore[arg-type]
    order = [ROW_COLUMN, ITEM_COLUMN] if ITEM_COLUMN in schemas[0] else [ROW_COLUMN]  # an exploded row's items
    merged = pl.concat(frames, how="diagonal_relaxed").sort(order).drop(ROW_COLUMN).collect(engine="streaming")
    write_table(merged, output)
    return merged.height


def _all_null(lf: pl.LazyFrame, schema: dict[str, pl.DataType]) -> set[str]:
    """The columns of ``lf`` that hold no value (it has rows)."""
    counts = lf.select(pl.len().alias("\0rows"), *(pl.col(c).null_count() for c in schema)).collect().row(0, named=True)
    rows = counts.pop("\0rows")
    return {c for c, n in counts.items() if n == rows}


def _shard_of(part: Path) -> tuple[int, int, str, str]:
    """``(I, N, stem, suffix)`` from a shard output's name, as ``enrich run --shard I/N`` gives it
    (``people.shard-0-of-3.parquet``: 0, 3, "people", ".parquet"); ``InputError`` otherwise."""
    import re

    if not part.is_file():
        what = "is a directory, not a shard output" if part.is_dir() else "not found"
        raise InputError(
            f"shard output {part} {what}: name the files `enrich run --shard I/N` wrote (a shell pattern that "
            "matches no file is passed on as it is)."
        )
    found = re.fullmatch(r"(.+)\.shard-(0|[1-9][0-9]*)-of-([1-9][0-9]*)(\.[^.]*)?", part.name)
    if found is None:
        raise InputError(
            f"{part}: enrich cannot tell which shard this is: its name has no `.shard-I-of-N` before the suffix "
            f"(as in {part.stem}.shard-0-of-4{part.suffix}). Keep the names `enrich run --shard I/N` gives its "
            "outputs, and merge those files."
        )
    stem, index, count, suffix = found.groups()
    if int(index) >= int(count):
        raise InputError(
            f"{part}: shard {index} of {count} cannot be: shards count from 0 to {int(count) - 1}. "
            "Keep the names `enrich run --shard I/N` gives its outputs, and merge those files."
        )
    return int(index), int(count), stem, suffix or ""


def _check_shard_names(parts: list[Path]) -> None:
    """Every part is one shard of the same N, and every shard 0..N-1 is there exactly once."""
    shards = [_shard_of(part) for part in parts]
    first, (_, count, stem, suffix) = parts[0], shards[0]
    seen: dict[int, Path] = {}
    for part, (index, n, _, _) in zip(parts, shards, strict=True):
        if n != count:
            raise InputError(
                f"{first} is shard {shards[0][0]} of {count} but {part} is shard {index} of {n}: the parts come from "
                f"runs split in different ways. Merge the shards of one split, all of them "
                f"(enrich run CONFIG --shard I/N with the same N each time)."
            )
        if index in seen:
            raise InputError(
                f"shard {index} of {count} is given twice ({seen[index]} and {part}): its rows would be in the "
                f"output twice. Give each shard once{f', all {count} of them' if count > 1 else ''}."
            )
        seen[index] = part
    missing = [i for i in range(count) if i not in seen]
    if not missing:
        return
    expected = _listing([str(first.with_name(f"{stem}.shard-{i}-of-{count}{suffix}")) for i in missing], len(missing))
    if len(missing) == 1:
        raise InputError(
            f"shard {missing[0]} of {count} is missing ({expected}): run it (enrich run CONFIG --shard "
            f"{missing[0]}/{count}), then merge all {count}."
        )
    raise InputError(
        f"shards {_listing(missing, len(missing))} of {count} are missing ({expected}): run them "
        f"(enrich run CONFIG --shard I/{count} for each), then merge all {count}."
    )


def _listing(items: Sequence[object], total: int, first: int = 5) -> str:
    """``a, b and c``; of more than ``first`` items (``total`` in all), ``a, b, c, d, e and 7 more``."""
    shown = [str(item) for item in items[:first]]
    if total > len(shown):
        return f"{', '.join(shown)} and {total - len(shown):,} more"
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} and {shown[-1]}"


def _n_rows(count: int) -> str:
    return "1 input row is" if count == 1 else f"{count:,} input rows are"


def _check_shard_rows(parts: list[Path], frames: list[pl.LazyFrame]) -> list[int]:
    """The parts' ``_row`` numbers are 0..rows-1, each once (every input row is in exactly one
    shard); with ``_item`` (an exploding field), each row's items are in one part, each once.
    Reads the ``_row`` (and ``_item``) column alone; returns each part's row count."""
    from .config import ITEM_COLUMN, ROW_COLUMN

    row = pl.col(ROW_COLUMN)
    # An exploded row is one output row per item: (_row, _item) is what appears once.
    item = [ITEM_COLUMN] if all(ITEM_COLUMN in lf.collect_schema() for lf in frames) else []
    rows = pl.concat(
        [lf.select(row, *item, pl.lit(i, dtype=pl.Int32).alias("part")) for i, lf in enumerate(frames)],
        how="vertical",
    )
    key = pl.struct(row, *item) if item else row
    per_part, total = pl.collect_all(
        [
            rows.group_by("part").agg(n=pl.len(), bad=(row.is_null() | (row < 0)).sum()),
            rows.select(
                n=pl.len(),
                unique=key.drop_nulls().n_unique(),
                placed=pl.struct(row, "part").n_unique(),
                rows=row.drop_nulls().n_unique(),
                high=row.max(),
            ),
        ],
        engine="streaming",
    )
    heights, bad = [0] * len(parts), [0] * len(parts)
    for i, n, b in per_part.iter_rows():
        heights[i], bad[i] = n, b
    for part, b in zip(parts, bad, strict=True):
        if b:
            raise InputError(
                f"{part}: {b:,} of its rows have a {ROW_COLUMN} that is not an input row number (empty, negative or "
                f"not a whole number): it was edited, or is not the output of `enrich run --shard I/N`. Run that "
                "shard again, then merge."
            )
    n, unique, placed, distinct, high = total.row(0)
    if unique < n or placed > distinct:  # a row twice (an item twice), or in two parts
        first = (
            rows.group_by(ROW_COLUMN)
            .agg(pl.col("part"), twice=pl.struct(row, *item).is_duplicated().any())
            .filter((pl.col("part").list.n_unique() > 1) | pl.col("twice"))
            .sort(ROW_COLUMN)
            .head(1)
            .collect()
        )
        number, holders, _ = first.row(0)
        names = list(dict.fromkeys(str(parts[i]) for i in holders))
        where = f"is more than once in {names[0]}" if len(names) == 1 else f"is in both {names[0]} and {names[1]}"
        if len(names) > 2:
            where = f"is in {_listing(names, len(names), first=len(names))}"
        raise InputError(
            f"{ROW_COLUMN} {number} {where}: each input row is in one shard of a run, so a part comes from "
            "another run (or another input). Run the shards again with one config and input, then merge them."
        )
    n = distinct  # the input rows the parts hold
    if n and high != n - 1:  # n distinct numbers from 0 to high > n-1: high + 1 - n are missing
        gaps = (
            rows.select(row)
            .sort(ROW_COLUMN)
            .with_columns(before=row.shift(1, fill_value=-1))
            .filter(row - pl.col("before") > 1)
            .head(5)
            .collect()
        )
        absent = [m for start, before in gaps.iter_rows() for m in range(before + 1, min(start, before + 6))]
        count = high + 1 - n
        raise InputError(
            f"{_n_rows(count)} in no part ({ROW_COLUMN} {_listing(absent, count)}; the parts hold {n:,} rows "
            f"up to {ROW_COLUMN} {high}), though every shard is given: a part is cut short or comes from "
            "another run. Run the shards again (their journals keep the calls made), then merge them."
        )
    return heights


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
