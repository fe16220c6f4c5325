"""Excel workbooks in and out: one sheet read whole into a table, a table written as one sheet.

    frame = read_sheet(Path("leads.xlsx"), sheet="Leads")    # or "2": the second sheet
    write_workbook(frame, Path("out/leads.xlsx"))

Reading goes through fastexcel (calamine): the header row names the columns, blank trailing
rows and columns are left out, a formula cell gives its cached value, and each column keeps its
kind (numbers, booleans, dates; text stays text, ``02134`` and ``0044...`` with their zeros). A
column whose cells are of several kinds (numbers and ``n/a``) is read as text, every cell as
written, rather than losing the cells that do not fit. A workbook is read whole, not streamed.

Writing goes through xlsxwriter: one sheet, a bold frozen header, columns sized to their
values, numbers as numbers, booleans, dates as dates; text is always text (never a formula, a
link or a number); a whole number past 2^53, which a spreadsheet would round, is written as its
digits. Past Excel's own limits (1,048,576 rows, 16,384 columns, 32,767 characters in a cell)
nothing is cut: ``ExcelLimit`` says what does not fit.
"""

from __future__ import annotations

import datetime
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from .column_types import EXACT_INT
from .errors import InputError

MAX_ROWS = 1_048_576  # a sheet's rows, the header's included
MAX_COLUMNS = 16_384
MAX_CELL_TEXT = 32_767
READ_SUFFIXES = (".xlsx", ".xlsm", ".xls", ".xlsb", ".ods")
_GENERATED = "__UNNAMED__"  # fastexcel's name for a column whose header cell is blank
_TIME_ONLY = datetime.date(1899, 12, 31)  # the day a time-of-day cell is read on


# fastexcel logs each column it reads as text ("could not determine dtype"); the library never
# prints, and the docs say so: without a handler of its own, Python would print it to stderr.
logging.getLogger("fastexcel").addHandler(logging.NullHandler())


class ExcelLimit(ValueError):
    """The table does not fit a sheet (too many rows or columns, a cell's text too long)."""


# --- reading -----------------------------------------------------------------------------------


def sheet_names(path: Path) -> list[str]:
    import fastexcel

    try:
        return list(fastexcel.read_excel(path).sheet_names)
    except Exception as exc:  # fastexcel's errors share no base class but Exception
        raise _unreadable(path, exc) from None


def read_sheet(path: Path, sheet: str | None = None, types: Mapping[str, Any] | None = None) -> pl.DataFrame:
    """Sheet ``sheet`` of the workbook at ``path`` (a name, else a position counted from 1; the
    first sheet by default) as a table; ``types`` (``input_types``) fixes columns' types."""
    import fastexcel

    try:
        reader = fastexcel.read_excel(path)
    except Exception as exc:
        raise _unreadable(path, exc) from None
    names = list(reader.sheet_names)
    chosen = _sheet(path, names, sheet)
    text = {c for c, t in (types or {}).items() if t == pl.String}
    try:
        with warnings.catch_warnings():  # "could not determine dtype": the column is text, said in the docs
            warnings.simplefilter("ignore")
            table = reader.load_sheet(chosen, schema_sample_rows=None)
            columns = [c.name for c in table.available_columns()]
            # Columns with cells of several kinds, and those input_types makes text: read as text.
            _, errors = table.to_arrow_with_errors()
            mixed = {columns[e.offset_position[1]] for e in (errors.errors if errors else [])}
            as_text = {i: "string" for i, c in enumerate(columns) if c in mixed | text}
            if as_text:
                table = reader.load_sheet(chosen, schema_sample_rows=None, dtypes=as_text)  # type: ignore[arg-type]
            frame = pl.from_arrow(table.to_arrow())
    except Exception as exc:
        raise _unreadable(path, exc, f"sheet {chosen!r}") from None
    assert isinstance(frame, pl.DataFrame)
    if not frame.width:
        raise InputError(
            f"sheet {chosen!r} of {path} is empty: it needs a header row with the column names. Pick another "
            "sheet with `sheet:` (or --sheet)."
        )
    # A header with no rows under it: text columns, as a CSV's header alone gives.
    frame = frame.cast({c: pl.String for c, t in frame.schema.items() if t == pl.Null})
    frame = frame.rename(_header_names(columns))
    frame = frame.with_columns(_kinds(frame))
    overrides = {c: t for c, t in (types or {}).items() if c in frame.columns and t != pl.String}
    if overrides:
        try:
            frame = frame.cast(overrides)  # type: ignore[arg-type]
        except pl.exceptions.PolarsError as exc:
            raise InputError(f"{path}, sheet {chosen!r}: input_types cannot apply: {exc}") from None
    return frame


def _sheet(path: Path, names: list[str], sheet: str | None) -> str:
    if sheet is None:
        if not names:
            raise InputError(f"{path} holds no sheet.")
        return names[0]
    if sheet in names:
        return sheet
    if sheet.isdecimal() and 1 <= int(sheet) <= len(names):
        return names[int(sheet) - 1]
    listed = ", ".join(repr(n) for n in names)
    raise InputError(
        f"{path} has no sheet {sheet!r}: its sheets are {listed}. Name one of them with `sheet:` (or --sheet), "
        f"or give its position from 1 (--sheet 2 for the second)."
    )


def _header_names(columns: list[str]) -> dict[str, str]:
    """Names for columns whose header cell is blank: the column to its left's name with ``_2``,
    ``_3`` (a header cell merged across them), or its letter (``column_C``) at the start."""
    renamed: dict[str, str] = {}
    taken = set(columns)
    last, repeat = None, 1
    for index, name in enumerate(columns):
        if not name.startswith(_GENERATED):
            last, repeat = name, 1
            continue
        repeat += 1
        new = f"{last}_{repeat}" if last is not None else f"column_{_letter(index)}"
        while new in taken:
            new += "_"
        taken.add(new)
        renamed[name] = new
    return renamed


def _letter(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


def _kinds(frame: pl.DataFrame) -> list[pl.Series]:
    """A spreadsheet keeps every number as a double and every date as a time: a column of whole
    numbers is read as Int64 (ids, counts), one of midnights as Date (a date column), one of
    times on Excel's day 0 as Time (a time of day)."""
    out = []
    for name, dtype in frame.schema.items():
        column = frame[name]
        values = column.drop_nulls()
        if not values.len():
            continue
        if dtype == pl.Float64 and bool(((values % 1) == 0).all()) and bool((values.abs() < EXACT_INT).all()):
            out.append(column.cast(pl.Int64))
        elif isinstance(dtype, pl.Datetime) and bool((values.dt.time() == datetime.time(0)).all()):
            out.append(column.cast(pl.Date))
        elif isinstance(dtype, pl.Datetime) and bool((values.dt.date() == _TIME_ONLY).all()):
            out.append(column.dt.time())  # a time of day: Excel keeps it on the day before its epoch
    return out


def _unreadable(path: Path, exc: BaseException, what: str = "") -> InputError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    where = f"{path}, {what}" if what else str(path)
    return InputError(
        f"cannot read {where} as a workbook: {first}. Check it opens in a spreadsheet program (a password-"
        "protected or damaged file cannot be read), or export the sheet as CSV."
    )


# --- writing -----------------------------------------------------------------------------------


def check_fits(rows: int, columns: int) -> None:
    """``ExcelLimit`` when ``rows`` data rows and ``columns`` columns do not fit one sheet."""
    if rows + 1 > MAX_ROWS:
        raise ExcelLimit(f"{rows:,} rows do not fit a sheet (Excel's limit: {MAX_ROWS - 1:,} rows under the header)")
    if columns > MAX_COLUMNS:
        raise ExcelLimit(f"{columns:,} columns do not fit a sheet (Excel's limit: {MAX_COLUMNS:,})")


def write_workbook(frame: pl.DataFrame, path: Path, sheet: str = "enriched") -> None:
    """Write ``frame`` as one sheet of a new workbook at ``path`` (see the module's docstring).

    Rows are written in order and flushed as they go (xlsxwriter's constant memory mode), so
    the workbook is never held whole as cell objects; column widths come from the values'
    lengths, measured in polars."""
    from xlsxwriter import Workbook

    check_fits(frame.height, frame.width)
    frame = _cells(frame)
    workbook = Workbook(
        str(path),
        {
            "constant_memory": True,
            "strings_to_formulas": False,  # text that starts with = is text
            "strings_to_urls": False,
            "strings_to_numbers": False,
            "nan_inf_to_errors": True,
        },
    )
    try:
        ws = workbook.add_worksheet(sheet)
        bold = workbook.add_format({"bold": True})
        date = workbook.add_format({"num_format": "yyyy-mm-dd"})
        stamp = workbook.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"})
        clock = workbook.add_format({"num_format": "hh:mm:ss"})
        writers = []
        for index, (name, dtype) in enumerate(frame.schema.items()):
            ws.set_column(index, index, _width(frame, name, dtype))
            writers.append(_writer(ws, dtype, date, stamp, clock))
        ws.freeze_panes(1, 0)
        ws.write_row(0, 0, frame.columns, bold)
        for r, row in enumerate(frame.iter_rows(), start=1):
            for c, value in enumerate(row):
                if value is not None:
                    writers[c](r, c, value)
    finally:
        workbook.close()


def _writer(ws: Any, dtype: pl.DataType, date: Any, stamp: Any, clock: Any) -> Any:
    """How a column's cells are written: each kind by its own method (text never as a formula)."""
    if dtype == pl.Boolean:
        return ws.write_boolean
    if dtype.is_numeric():
        return ws.write_number
    if dtype == pl.Date:
        return lambda r, c, v: ws.write_datetime(r, c, v, date)
    if isinstance(dtype, pl.Datetime):
        return lambda r, c, v: ws.write_datetime(r, c, v, stamp)
    if dtype == pl.Time:
        return lambda r, c, v: ws.write_datetime(r, c, v, clock)
    return lambda r, c, v: ws.write_string(r, c, str(v))


def _width(frame: pl.DataFrame, name: str, dtype: pl.DataType) -> float:
    """A column's width in characters: its header's or its longest value's, within 8 to 60."""
    if dtype == pl.Date:
        longest = 10
    elif isinstance(dtype, pl.Datetime):
        longest = 19
    elif dtype == pl.Time:
        longest = 8
    elif frame.height:
        found = frame.select(pl.col(name).cast(pl.String).str.len_chars().max()).item()
        longest = int(found or 0)
    else:
        longest = 0
    return min(60.0, max(8.0, len(name) * 1.1 + 2, longest * 1.1 + 1))


def _cells(frame: pl.DataFrame) -> pl.DataFrame:
    """The table as a sheet can hold it, nothing lost: nested values as their JSON text, whole
    numbers past 2^53 as their digits, times without a zone; text longer than a cell holds is
    refused."""
    out: list[pl.Expr] = []
    for name, dtype in frame.schema.items():
        col = pl.col(name)
        if dtype.is_nested():
            out.append(_json_text(col, dtype).alias(name))
        elif dtype.is_integer():
            column = frame[name]
            if column.len() and bool((column.drop_nulls().cast(pl.Float64).abs() >= EXACT_INT).any()):
                out.append(col.cast(pl.String))
        elif isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
            out.append(col.dt.convert_time_zone("UTC").dt.replace_time_zone(None))
        elif dtype in (pl.Binary, pl.Object, pl.Decimal) or isinstance(dtype, (pl.Duration, pl.Categorical)):
            out.append(col.cast(pl.String))
    if out:
        frame = frame.with_columns(out)
    for name, dtype in frame.schema.items():
        if dtype == pl.String:
            longest = frame[name].str.len_chars().max()
            if isinstance(longest, int) and longest > MAX_CELL_TEXT:
                raise ExcelLimit(
                    f"column {name!r} holds a text of {longest:,} characters, more than a cell holds "
                    f"(Excel's limit: {MAX_CELL_TEXT:,})"
                )
    return frame


def _json_text(col: pl.Expr, dtype: Any) -> pl.Expr:
    text = (
        col.struct.json_encode()
        if isinstance(dtype, pl.Struct)
        else (
            pl.struct(col.alias("v")).struct.json_encode().str.slice(5).str.head(-1)  # {"v":[...]} -> [...]
        )
    )
    return pl.when(col.is_null()).then(None).otherwise(text)
