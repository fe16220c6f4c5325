"""The column type rules, in one place: what a column's values are, going in and coming out.

Going in: a CSV's columns are text, exactly as written; ``value_kinds`` judges which text
columns hold numbers or booleans (so ``{{employees}}`` in a JSON body sends ``12``, not
``"12"``), and ``typed_view`` reads each batch that way, saying which cells do not fit.
Coming out: ``output_column`` types a field column by the values the API gave (Int64,
Float64, Boolean, else text: JSON for lists and objects), and ``unify_dtypes`` settles one
type per column across batches.

    kinds = value_kinds(pl.DataFrame({"n": ["1", "2"], "zip": ["02134", "10001"]}))  # {"n": Int64}
    typed, reasons = typed_view(batch, kinds)
    output_column("employees", [12, None, 40]).dtype                                   # Int64
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

from .extract import to_json

# `input_types` names, as polars reads them.
INPUT_TYPES = {"str": pl.String, "int": pl.Int64, "float": pl.Float64, "bool": pl.Boolean}

# What a text cell must look like to be sent as a number or a boolean: exactly that, with no
# sign but a minus, no leading zero, no space, and few enough digits to survive as a number.
_INT_TEXT = r"^(?:0|-?[1-9][0-9]{0,17})$"
_FLOAT_TEXT = r"^(?:-?(?:0|[1-9][0-9]*)\.[0-9]+|0|-?[1-9][0-9]*)(?:[eE][+-]?[0-9]{1,3})?$"
_BOOL_TEXT = r"^(?i:true|false)$"
EXACT_INT = 2**53  # whole numbers from here on lose digits as a float (a spreadsheet's numbers too)
FLOAT_DIGITS = 15  # a float keeps 15 significant digits exactly; more are text (an id, a phone number)


# --- in: text columns as values ------------------------------------------------------------------


def value_kinds(sample: pl.DataFrame) -> dict[str, pl.DataType]:
    """The kind of values of each (text) column of ``sample``: Int64 when every value is a whole
    number written plainly, Float64 when every value is a number, Boolean when every value is
    true or false (any case). Columns of anything else (a zip code with a leading zero, a
    30-digit id, a mix) are left out: they are text."""
    if not sample.width:
        return {}
    kinds = sample.select(
        pl.struct(
            pl.col(c).drop_nulls().len().alias("n"),
            pl.col(c).str.contains(_INT_TEXT).sum().alias("int"),
            (pl.col(c).str.contains(_FLOAT_TEXT) & (_digits(pl.col(c)) <= FLOAT_DIGITS)).sum().alias("float"),
            pl.col(c).str.contains(_BOOL_TEXT).sum().alias("bool"),
        ).alias(c)
        for c in sample.columns
    ).row(0, named=True)
    out: dict[str, pl.DataType] = {}
    for column, k in kinds.items():
        if not k["n"]:
            continue
        if k["int"] == k["n"]:
            out[column] = pl.Int64()
        elif k["float"] == k["n"]:
            out[column] = pl.Float64()
        elif k["bool"] == k["n"]:
            out[column] = pl.Boolean()
    return out


def _digits(text: pl.Expr) -> pl.Expr:
    """The significant digits of a number written as text (its mantissa, leading zeros left out)."""
    return text.str.replace(r"[eE].*$", "").str.replace_all(r"[^0-9]", "").str.strip_chars_start("0").str.len_chars()


def _as(column: str, kind: pl.DataType) -> pl.Expr:
    """A text column as values of ``kind``; null where a cell is not written as one."""
    col = pl.col(column)
    if kind == pl.Boolean:
        return pl.when(col.str.contains(_BOOL_TEXT)).then(col.str.to_lowercase() == "true")
    if kind == pl.Int64:
        return pl.when(col.str.contains(_INT_TEXT)).then(col.cast(pl.Int64, strict=False))
    return pl.when(col.str.contains(_FLOAT_TEXT) & (_digits(col) <= FLOAT_DIGITS)).then(
        col.cast(pl.Float64, strict=False)
    )


def _kind_name(kind: pl.DataType) -> str:
    return "a whole number" if kind == pl.Int64 else "a number" if kind == pl.Float64 else "true or false"


def typed_view(batch: pl.DataFrame, types: Mapping[str, pl.DataType]) -> tuple[pl.DataFrame, list[str | None] | None]:
    """``batch`` with the columns of ``types`` as values, and for each row the reason it cannot be
    sent (a cell that is not of its column's kind: a later row of a number column that holds
    ``n/a``), or None when every row can."""
    present = {c: t for c, t in types.items() if c in batch.columns}
    if not present:
        return batch, None
    typed = batch.with_columns(_as(c, t).alias(c) for c, t in present.items())
    bad = pl.any_horizontal(batch[c].is_not_null() & typed[c].is_null() for c in present)
    if not batch.select(bad).to_series().any():
        return typed, None
    reasons: list[str | None] = [None] * batch.height
    for i in batch.with_row_index().filter(bad)["index"]:
        column = next(c for c in present if batch[c][i] is not None and typed[c][i] is None)
        reasons[i] = (
            f"column {column!r} holds {batch[column][i]!r}, which is not {_kind_name(present[column])} like the "
            f"column's first rows, so it cannot be sent as one. Set `input_types: {{{column}: str}}` to send "
            "every value of the column as text."
        )
    return typed, reasons


# --- out: the API's values as columns ------------------------------------------------------------


def output_column(name: str, values: list[Any], text: bool = False) -> pl.Series:
    """One output column, typed by its values: Int64, Float64, Boolean or String (JSON text).
    ``text``: String whatever the values (a field column that holds the input's text too)."""
    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return pl.Series(name, values, dtype=pl.String)
    if text:
        pass
    elif kinds == {bool}:
        return pl.Series(name, values, dtype=pl.Boolean)
    elif kinds == {int} and all(v is None or -(2**63) <= v < 2**63 for v in values):
        return pl.Series(name, values, dtype=pl.Int64)
    elif kinds <= {int, float} and kinds != {int} and all(type(v) is not int or abs(v) < EXACT_INT for v in values):
        return pl.Series(name, [None if v is None else float(v) for v in values], dtype=pl.Float64)
    return pl.Series(name, [v if v is None or isinstance(v, str) else to_json(v) for v in values], dtype=pl.String)


def wide_ints(frame: pl.DataFrame) -> set[str]:
    """The Int64 columns of ``frame`` holding a whole number that a float cannot hold exactly."""
    ints = [c for c, t in frame.schema.items() if t == pl.Int64]
    if not ints or not frame.height:
        return set()
    found = frame.select(pl.col(c).abs().max().alias(c) for c in ints).row(0, named=True)
    return {c for c, most in found.items() if most is not None and most >= EXACT_INT}


def unify_dtypes(
    schemas: list[dict[str, pl.DataType]], nulls: list[set[str]], wide: list[set[str]] | None = None
) -> dict[str, pl.DataType]:
    """One dtype per column across batches: a column all-null in a batch does not vote;
    Int64 with Float64 gives Float64, unless a batch's integers are too wide for a float
    (``wide``: ``wide_ints`` of each batch), which gives String, each number as its digits; any
    other disagreement gives String (JSON text)."""
    out: dict[str, pl.DataType] = {}
    widened = set().union(*wide) if wide else set()
    for name in schemas[0]:
        kinds = {s[name] for s, n in zip(schemas, nulls, strict=True) if name not in n}
        if not kinds:
            out[name] = schemas[0][name]
        elif len(kinds) == 1:
            out[name] = kinds.pop()
        elif kinds <= {pl.Int64, pl.Float64} and name not in widened:
            out[name] = pl.Float64()
        else:
            out[name] = pl.String()
    return out
