"""Excel workbooks in and out, against a real local API, read back with openpyxl (a reader of
its own: what a spreadsheet program shows)."""

from __future__ import annotations

import datetime
from collections import Counter
from pathlib import Path
from typing import Any

import openpyxl
import orjson
import polars as pl
import pytest
from aiohttp import web
from conftest import Serve, run_cli, write_config
from xlsxwriter import Workbook

from enrich.workbook import MAX_ROWS

ANSWERS: dict[str, dict[str, Any]] = {
    "1": {
        "employees": 12,
        "revenue": 1.5,
        "public": True,
        "motto": '=HYPERLINK("http://x")',
        "tags": ["a", "b"],
        "uid": 7,
    },
    "2": {"employees": 40, "revenue": None, "public": False, "motto": "+1 555 0100", "tags": [], "uid": 2**60},
}


def api(serve: Serve) -> tuple[str, Counter[str]]:
    """An API that answers ids 1 and 2 (typed values, text that looks like a formula), 404 else."""
    calls: Counter[str] = Counter()

    async def company(request: web.Request) -> web.Response:
        key = request.match_info["id"]
        calls[key] += 1
        if key not in ANSWERS:
            return web.json_response({"error": "unknown"}, status=404)
        return web.json_response({"company": ANSWERS[key]})

    app = web.Application()
    app.router.add_get("/companies/{id}", company)
    return serve(app).url, calls


def leads_workbook(path: Path, second_sheet: bool = True) -> Path:
    """What a user keeps: typed cells, a zip code and a phone as text, a date, a formula with its
    cached value, a header merged over two columns, blank rows after the table."""
    book = Workbook(str(path))
    sheet = book.add_worksheet("Leads")
    sheet.write_row(0, 0, ["id", "zip", "phone", "score", "active", "signup", "double", "Contact"])
    sheet.merge_range(0, 7, 0, 8, "Contact")
    date = book.add_format({"num_format": "yyyy-mm-dd"})
    rows = [
        (1, "02134", "00441234567890", 1.25, True, datetime.date(2024, 1, 2), "Ann", "ann@x.io"),
        (2, "10001", "5550100", 3.0, False, datetime.date(2023, 12, 31), "Bob", "bob@x.io"),
        (3, "00501", "0", 0.5, True, datetime.date(2022, 6, 1), "Cy", "cy@x.io"),
    ]
    for r, (ident, zip_code, phone, score, active, signup, name, email) in enumerate(rows, start=1):
        sheet.write_number(r, 0, ident)
        sheet.write_string(r, 1, zip_code)
        sheet.write_string(r, 2, phone)
        sheet.write_number(r, 3, score)
        sheet.write_boolean(r, 4, active)
        sheet.write_datetime(r, 5, datetime.datetime.combine(signup, datetime.time()), date)
        sheet.write_formula(r, 6, f"=D{r + 1}*2", None, score * 2)  # the cached value a spreadsheet saved
        sheet.write_string(r, 7, name)
        sheet.write_string(r, 8, email)
    if second_sheet:
        other = book.add_worksheet("Other")
        other.write_row(0, 0, ["id"])
        other.write_number(1, 0, 2)
    book.close()
    return path


def config(folder: Path, url: str, **keys: Any) -> Path:
    data = {
        "input": str(folder / "leads.xlsx"),
        "output": str(folder / "out" / "leads.xlsx"),
        "request": {"url": url + "/companies/{{id}}"},
        "fields": {
            "employees": "company.employees",
            "revenue": "company.revenue",
            "public": "company.public",
            "motto": "company.motto",
            "tags": "company.tags",
            "uid": "company.uid",
        },
        **keys,
    }
    return write_config(folder / "leads.yaml", data)


def cells(path: Path) -> tuple[list[str], list[list[openpyxl.cell.Cell]]]:
    sheet = openpyxl.load_workbook(path).active
    assert sheet is not None
    rows = list(sheet.iter_rows())
    return [str(c.value) for c in rows[0]], rows[1:]


def test_a_workbook_in_and_a_workbook_out_keep_every_kind_of_cell(tmp_path: Path, serve: Serve) -> None:
    url, calls = api(serve)
    leads_workbook(tmp_path / "leads.xlsx")
    assert run_cli(["run", str(config(tmp_path, url)), "-q"]) == 0
    assert calls == {"1": 1, "2": 1, "3": 1}
    header, rows = cells(tmp_path / "out" / "leads.xlsx")
    assert header == [
        "id", "zip", "phone", "score", "active", "signup", "double", "Contact", "Contact_2",
        "employees", "revenue", "public", "motto", "tags", "uid", "_http_status", "_error", "_attempts",
        "_latency_ms",
    ]  # fmt: skip
    first = {h: c for h, c in zip(header, rows[0], strict=True)}
    # The input's cells as they were: numbers, text with its zeros, booleans, dates, the formula's value.
    assert [(first[h].value, first[h].data_type) for h in ("id", "zip", "phone", "score", "active", "double")] == [
        (1, "n"), ("02134", "s"), ("00441234567890", "s"), (1.25, "n"), (True, "b"), (2.5, "n"),
    ]  # fmt: skip
    assert first["signup"].value == datetime.datetime(2024, 1, 2) and first["signup"].is_date
    assert (first["Contact"].value, first["Contact_2"].value) == ("Ann", "ann@x.io")
    # The API's values: numbers and booleans as such, text that looks like a formula as text.
    assert [(first[h].value, first[h].data_type) for h in ("employees", "revenue", "public", "motto", "tags")] == [
        (12, "n"), (1.5, "n"), (True, "b"), ('=HYPERLINK("http://x")', "s"), ('["a","b"]', "s"),
    ]  # fmt: skip
    second = {h: c for h, c in zip(header, rows[1], strict=True)}
    # 2^60 does not survive a spreadsheet's numbers: the column is written as digits, 7 among them.
    assert [(r[header.index("uid")].value, r[header.index("uid")].data_type) for r in rows[:2]] == [
        ("7", "s"), (str(2**60), "s"),
    ]  # fmt: skip
    assert (second["employees"].value, second["employees"].data_type) == (40, "n")
    assert (second["motto"].value, second["motto"].data_type) == ("+1 555 0100", "s")
    third = {h: c for h, c in zip(header, rows[2], strict=True)}
    assert (third["_http_status"].value, third["_error"].value) == (404, 'HTTP 404 Not Found: {"error": "unknown"}')
    sheet = openpyxl.load_workbook(tmp_path / "out" / "leads.xlsx").active
    assert sheet is not None and sheet.freeze_panes == "A2" and sheet["A1"].font.b
    assert sheet.column_dimensions["C"].width > sheet.column_dimensions["A"].width  # sized to the values
    # A rerun pays nothing: the journal has every answer.
    assert run_cli(["run", str(config(tmp_path, url)), "-q"]) == 0
    assert calls == {"1": 1, "2": 1, "3": 1}


def test_types_survive_csv_to_workbook_to_enrich_to_workbook(tmp_path: Path, serve: Serve) -> None:
    url, _ = api(serve)
    csv = tmp_path / "leads.csv"
    csv.write_text("id,zip,signup,score\n1,02134,2024-01-02,1.5\n2,10001,2023-12-31,2\n", encoding="utf-8")
    # The CSV opened in a spreadsheet and saved as a workbook: zip as text, a real date, numbers.
    frame = pl.read_csv(csv, schema_overrides={"zip": pl.String}, try_parse_dates=True)
    frame.write_excel(tmp_path / "leads.xlsx")
    path = config(tmp_path, url, fields={"revenue": "company.revenue", "public": "company.public"})
    assert run_cli(["run", str(path), "-q"]) == 0
    back = pl.read_excel(tmp_path / "out" / "leads.xlsx")  # polars' own reader
    assert back.select("id", "zip", "signup", "score", "revenue", "public").to_dicts() == [
        {"id": 1, "zip": "02134", "signup": datetime.date(2024, 1, 2), "score": 1.5, "revenue": 1.5, "public": True},
        {
            "id": 2,
            "zip": "10001",
            "signup": datetime.date(2023, 12, 31),
            "score": 2.0,
            "revenue": None,
            "public": False,
        },
    ]
    header, rows = cells(tmp_path / "out" / "leads.xlsx")
    signup = rows[0][header.index("signup")]
    assert signup.is_date and signup.value == datetime.datetime(2024, 1, 2)
    assert rows[0][header.index("zip")].value == "02134"


def test_a_sheet_is_chosen_by_name_or_position_and_a_missing_one_is_named(
    tmp_path: Path, serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    url, calls = api(serve)
    leads_workbook(tmp_path / "leads.xlsx")
    path = config(tmp_path, url, output=str(tmp_path / "other.parquet"))
    assert run_cli(["run", str(path), "--sheet", "Other", "-q"]) == 0
    assert calls == {"2": 1}
    assert run_cli(["run", str(path), "--sheet", "2", "-q"]) == 0  # the second sheet: the journal answers
    assert calls == {"2": 1}
    assert pl.read_parquet(tmp_path / "other.parquet")["uid"].to_list() == [2**60]
    capsys.readouterr()
    assert run_cli(["run", str(path), "--sheet", "Leeds"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: {tmp_path / 'leads.xlsx'} has no sheet 'Leeds': its sheets are 'Leads', 'Other'. Name one of them "
        "with `sheet:` (or --sheet), or give its position from 1 (--sheet 2 for the second).\n"
    )
    assert run_cli(["validate", str(config(tmp_path, url, sheet="Other"))]) == 0


def test_a_table_over_a_sheets_rows_is_refused_before_any_call(
    tmp_path: Path, serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    url, calls = api(serve)
    big = tmp_path / "big.csv"
    pl.DataFrame({"id": pl.int_range(MAX_ROWS, eager=True)}).write_csv(big)  # one row more than fits
    path = config(tmp_path, url, input=str(big))
    assert run_cli(["validate", str(path)]) == 2  # validate knows it too
    assert run_cli(["run", str(path)]) == 2
    assert calls == {}
    err = capsys.readouterr().err
    assert "1,048,576 rows do not fit a sheet (Excel's limit: 1,048,575 rows under the header)" in err
    assert "Write it as Parquet or CSV (--output" in err and "leads.parquet), or split the rows with --shard" in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_errors_extract_shards_and_merge_work_with_workbooks(tmp_path: Path, serve: Serve) -> None:
    url, calls = api(serve)
    leads_workbook(tmp_path / "leads.xlsx")
    path = config(tmp_path, url, errors_out=str(tmp_path / "out" / "failed.xlsx"))
    for i in range(2):
        assert run_cli(["run", str(path), "--shard", f"{i}/2", "-q"]) == 0
    assert calls == {"1": 1, "2": 1, "3": 1}
    parts = [tmp_path / "out" / f"leads.shard-{i}-of-2.xlsx" for i in range(2)]
    assert run_cli(["merge", *map(str, parts), "--output", str(tmp_path / "merged.xlsx")]) == 0
    merged = pl.read_excel(tmp_path / "merged.xlsx")
    assert merged["id"].to_list() == [1, 2, 3] and merged["zip"].to_list() == ["02134", "10001", "00501"]
    failed = [pl.read_excel(p) for p in (tmp_path / "out").glob("failed.shard-*.xlsx")]
    assert sum(f.height for f in failed) == 1 and any(f["_http_status"].to_list() == [404] for f in failed)
    # The whole run keeps a journal of its own; extract then rebuilds its workbook from it: no call.
    assert run_cli(["run", str(config(tmp_path, url)), "-q"]) == 0
    assert calls == {"1": 2, "2": 2, "3": 2}
    path = config(tmp_path, url, fields={"public": "company.public"})
    assert run_cli(["extract", str(path), "-q"]) == 0
    assert calls == {"1": 2, "2": 2, "3": 2}
    summary = orjson.loads((tmp_path / "out" / "leads.xlsx.summary.json").read_bytes())
    assert (summary["status"], summary["exit_code"], summary["rows"], summary["calls"]) == ("completed", 0, 3, 0)
    assert pl.read_excel(tmp_path / "out" / "leads.xlsx")["public"].to_list() == [True, False, None]


def test_init_dry_run_and_preview_read_workbooks(
    tmp_path: Path, serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    url, calls = api(serve)
    leads_workbook(tmp_path / "leads.xlsx")
    assert run_cli(["init", str(tmp_path / "leads.xlsx"), "--config", str(tmp_path / "start.yaml")]) == 0
    text = (tmp_path / "start.yaml").read_text()
    assert "output: out/leads_enriched.xlsx" in text and "{{Contact_2}}" in text
    path = config(tmp_path, url)
    assert run_cli(["run", str(path), "--dry-run", "2"]) == 0
    out = capsys.readouterr().out
    assert f"curl {url}/companies/1\n" in out and "  calls to make        3" in out
    assert run_cli(["preview", str(path), "--rows", "1"]) == 0
    assert "company.employees  12" in capsys.readouterr().out
    assert calls == {"1": 1}


def test_a_row_added_to_the_workbook_is_the_only_one_called_and_odd_sheets_say_what_is_wrong(
    tmp_path: Path, serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    url, calls = api(serve)
    book = Workbook(str(tmp_path / "leads.xlsx"))
    sheet = book.add_worksheet("Leads")
    sheet.write_row(0, 0, ["id"])
    sheet.write_column(1, 0, [1, 2])
    book.add_worksheet("Blank")
    header = book.add_worksheet("Header")
    header.write_row(0, 0, ["id"])
    book.close()
    path = config(tmp_path, url)
    assert run_cli(["run", str(path), "-q"]) == 0
    assert calls == {"1": 1, "2": 1}
    book = Workbook(str(tmp_path / "leads.xlsx"))  # the user adds a row and saves
    book.add_worksheet("Leads").write_column(0, 0, ["id", 1, 2, 3])
    book.close()
    assert run_cli(["run", str(path), "-q"]) == 0
    assert calls == {"1": 1, "2": 1, "3": 1}
    assert pl.read_excel(tmp_path / "out" / "leads.xlsx")["employees"].to_list() == [12, 40, None]
    book = Workbook(str(tmp_path / "odd.xlsx"))
    book.add_worksheet("Blank")
    book.add_worksheet("Header").write_row(0, 0, ["id"])
    book.close()
    odd = config(tmp_path, url, input=str(tmp_path / "odd.xlsx"), output=str(tmp_path / "odd.xlsx.out.xlsx"))
    capsys.readouterr()
    assert run_cli(["run", str(odd), "-q"]) == 2
    assert "sheet 'Blank' of" in capsys.readouterr().err
    assert run_cli(["run", str(odd), "--sheet", "Header", "-q"]) == 0  # a header alone: an empty output
    header, rows = cells(tmp_path / "odd.xlsx.out.xlsx")
    assert rows == [] and header[:2] == ["id", "employees"]
    (tmp_path / "fake.xlsx").write_text("id\n1\n")
    assert run_cli(["run", str(config(tmp_path, url, input=str(tmp_path / "fake.xlsx"))), "-q"]) == 2
    assert "as a workbook" in capsys.readouterr().err


def test_an_exploding_field_gives_a_workbook_row_per_item(tmp_path: Path, serve: Serve) -> None:
    url, calls = api(serve)
    leads_workbook(tmp_path / "leads.xlsx")
    path = config(tmp_path, url, fields={"tag": {"path": "company.tags", "explode": True}})
    assert run_cli(["run", str(path), "-q"]) == 0
    header, rows = cells(tmp_path / "out" / "leads.xlsx")
    got = [(r[header.index("id")].value, r[header.index("tag")].value, r[header.index("_item")].value) for r in rows]
    # id 1: two tags; id 2: an empty list (the row once, no item); id 3: a 404 (the row once).
    assert got == [(1, "a", 0), (1, "b", 1), (2, None, None), (3, None, None)]
    assert calls == {"1": 1, "2": 1, "3": 1}


def test_a_cell_too_long_for_a_sheet_stops_the_run_and_its_fix_makes_no_call(
    tmp_path: Path, serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: Counter[str] = Counter()

    async def long(request: web.Request) -> web.Response:
        calls[request.match_info["id"]] += 1
        return web.json_response({"company": {"about": "x" * 40_000}})

    app = web.Application()
    app.router.add_get("/companies/{id}", long)
    url = serve(app).url
    leads_workbook(tmp_path / "leads.xlsx")
    path = config(tmp_path, url, fields={"about": "company.about"})
    assert run_cli(["run", str(path), "-q"]) == 3
    err = capsys.readouterr().err
    journal = tmp_path / "out" / "leads.xlsx.journal"
    assert "holds a text of 40,000 characters, more than a cell holds (Excel's limit: 32,767)" in err
    assert f"--journal {journal}`; it makes no call." in err
    assert not (tmp_path / "out" / "leads.xlsx").exists()
    # The fix it names: the table from the journal, as Parquet; the text whole, no call.
    out = tmp_path / "out" / "leads.parquet"
    assert run_cli(["extract", str(path), "--output", str(out), "--journal", str(journal), "-q"]) == 0
    assert calls == {"1": 1, "2": 1, "3": 1}
    assert pl.read_parquet(out)["about"].str.len_chars().to_list() == [40_000] * 3


def test_a_time_of_day_cell_stays_a_time(tmp_path: Path, serve: Serve) -> None:
    url, _ = api(serve)
    book = Workbook(str(tmp_path / "leads.xlsx"))
    sheet = book.add_worksheet("Leads")
    sheet.write_row(0, 0, ["id", "call_at"])
    sheet.write_number(1, 0, 1)
    sheet.write_datetime(1, 1, datetime.time(13, 30), book.add_format({"num_format": "hh:mm"}))
    book.close()
    path = config(tmp_path, url, fields={"public": "company.public"})
    assert run_cli(["run", str(path), "-q"]) == 0
    header, rows = cells(tmp_path / "out" / "leads.xlsx")
    cell = rows[0][header.index("call_at")]
    assert (cell.value, cell.number_format) == (datetime.time(13, 30), "hh:mm:ss")  # not 1899-12-31 13:30
