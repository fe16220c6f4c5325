"""The CSV injection guard: text a spreadsheet would evaluate gets a leading quote, numbers do not."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from enrich.tables import neutralise_formulas


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        # each OWASP trigger character
        pytest.param("=1+2", "'=1+2", id="equals"),
        pytest.param("+44 20 7946 0958", "'+44 20 7946 0958", id="plus-phone-number"),
        pytest.param("-1+1", "'-1+1", id="minus-formula"),
        pytest.param("@SUM(A1)", "'@SUM(A1)", id="at"),
        pytest.param("\t=cmd", "'\t=cmd", id="tab"),
        pytest.param("\r=cmd", "'\r=cmd", id="carriage-return"),
        pytest.param(
            '=HYPERLINK("http://evil.example","x")', '\'=HYPERLINK("http://evil.example","x")', id="hyperlink"
        ),
        # a trigger alone, or a number with more after it, is not a number
        pytest.param("-", "'-", id="minus-alone"),
        pytest.param("+", "'+", id="plus-alone"),
        pytest.param("-12\n", "'-12\n", id="number-then-newline"),
        pytest.param("-12 ", "'-12 ", id="number-then-space"),
        pytest.param("-1,234", "'-1,234", id="thousands-separator"),
        pytest.param("-0x1F", "'-0x1F", id="hex"),
        pytest.param("-١٢", "'-١٢", id="non-ascii-digits"),
        # infinities and NaN: no spreadsheet reads them as numbers, so they are text to guard
        pytest.param("-inf", "'-inf", id="minus-inf"),
        pytest.param("+inf", "'+inf", id="plus-inf"),
        pytest.param("-nan", "'-nan", id="minus-nan"),
        pytest.param("inf", "inf", id="inf-has-no-trigger"),
        pytest.param("nan", "nan", id="nan-has-no-trigger"),
        # plain numbers keep their value
        pytest.param("-12.5", "-12.5", id="negative-decimal"),
        pytest.param("+3", "+3", id="plus-integer"),
        pytest.param("-1e5", "-1e5", id="exponent"),
        pytest.param("-2.5E-3", "-2.5E-3", id="exponent-negative"),
        pytest.param("-0", "-0", id="minus-zero"),
        pytest.param("-.5", "-.5", id="no-leading-digit"),
        pytest.param("-5.", "-5.", id="trailing-point"),
        # no trigger at the start: untouched, wherever the trigger appears later
        pytest.param("a=1", "a=1", id="trigger-later"),
        pytest.param(" =1", " =1", id="leading-space"),
        pytest.param("'=1", "'=1", id="already-quoted"),
        pytest.param("", "", id="empty"),
        pytest.param("Ada Lovelace", "Ada Lovelace", id="plain-text"),
        pytest.param(None, None, id="null-stays-null"),
    ],
)
def test_neutralise_cell(cell: str | None, expected: str | None) -> None:
    frame = pl.DataFrame({"note": [cell]}, schema={"note": pl.String})
    assert neutralise_formulas(frame, ["note"])["note"].to_list() == [expected]


def test_only_listed_string_columns_change() -> None:
    frame = pl.DataFrame(
        {
            "listed": ["=1", "-2"],
            "other": ["=1", "-2"],  # a String column not in `columns`
            "count": [-1, 2],  # an Int column in `columns`
            "ratio": [-0.5, 1.0],  # a Float column in `columns`
        }
    )
    out = neutralise_formulas(frame, ["listed", "count", "ratio", "missing"])
    assert out.to_dict(as_series=False) == {
        "listed": ["'=1", "-2"],
        "other": ["=1", "-2"],
        "count": [-1, 2],
        "ratio": [-0.5, 1.0],
    }
    assert out.schema == frame.schema


def test_no_string_column_listed_returns_the_frame() -> None:
    frame = pl.DataFrame({"n": [-1]})
    assert neutralise_formulas(frame, iter(["n", "missing"])) is frame


def test_lazy_frame_gets_the_same_guard() -> None:
    frame = pl.DataFrame({"note": ["=1+2", "-12.5", None], "n": [1, -2, 3]})
    lazy = neutralise_formulas(frame.lazy(), ["note", "n"])
    assert isinstance(lazy, pl.LazyFrame)
    assert lazy.collect().equals(neutralise_formulas(frame, ["note", "n"]))


def test_written_csv_holds_the_quote(tmp_path: Path) -> None:
    frame = pl.DataFrame({"name": ["Ada", "Eve"], "note": ["=1+2", "-12.5"], "n": [1, -2]})
    path = tmp_path / "out.csv"
    neutralise_formulas(frame, ["note", "n"]).write_csv(path)
    assert path.read_text(encoding="utf-8").splitlines() == [
        "name,note,n",
        "Ada,'=1+2,1",
        "Eve,-12.5,-2",
    ]
