"""The user's data is never changed: input columns come back as they were read, cells are sent
as they were written, and the output holds exactly what the API answered.

Every case runs ``enrich run`` on a real CSV file against a real local server that records
each request as it arrived (path, query, headers, body) and echoes it back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from aiohttp import web
from conftest import RunningServer, Serve, run_cli, write_config

from enrich.tables import collect_frames


def echo_api(serve: Serve) -> tuple[RunningServer, list[dict[str, Any]]]:
    """Answers every call with what it received; ``seen`` keeps each request."""
    seen: list[dict[str, Any]] = []

    async def echo(request: web.Request) -> web.Response:
        raw = await request.read()
        got = {
            "path": request.raw_path.split("?")[0],
            "query": request.query_string,
            "headers": {k: v for k, v in request.headers.items() if k.startswith("X-")},
            "body": json.loads(raw) if raw else None,
        }
        seen.append(got)
        return web.json_response(got)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return serve(app), seen


# A CSV as a spreadsheet exports it: leading zeros, a long id, booleans in capitals, decimals
# written with their trailing zero, a signed number, a quoted empty cell and a missing one.
CSV = (
    "id,zip,account,active,price,employees,note\n"
    "1,02134,123456789012345678901234567890,TRUE,1.50,12,+5\n"
    '2,10001,000042,false,2,7,""\n'
    "3,,9,True,0.25,3,\n"
)


def run(tmp_path: Path, server: RunningServer, request: dict[str, Any], out: str = "out.csv", **config: Any) -> Path:
    src = tmp_path / "in.csv"
    src.write_text(CSV, encoding="utf-8")
    output = tmp_path / out
    cfg = write_config(
        tmp_path / "job.yaml",
        {"input": str(src), "output": str(output), "request": request, "fields": {"got": "body"}, **config},
    )
    assert run_cli(["run", str(cfg), "-q"]) == 0
    return output


def test_csv_in_csv_out_keeps_every_input_cell_as_written(tmp_path: Path, serve: Serve) -> None:
    server, _ = echo_api(serve)
    out = run(tmp_path, server, {"url": server.url + "/v1/{{id}}"})
    lines = out.read_text(encoding="utf-8").splitlines()
    # Each input cell as it was in the file, the quoted empty text and the missing value told apart.
    assert [line.split(",")[:7] for line in lines] == [
        ["id", "zip", "account", "active", "price", "employees", "note"],
        ["1", "02134", "123456789012345678901234567890", "TRUE", "1.50", "12", "+5"],
        ["2", "10001", "000042", "false", "2", "7", '""'],
        ["3", "", "9", "True", "0.25", "3", ""],
    ]


def test_parquet_output_keeps_input_columns_as_the_text_they_were(tmp_path: Path, serve: Serve) -> None:
    server, _ = echo_api(serve)
    out = pl.read_parquet(run(tmp_path, server, {"url": server.url + "/v1/{{id}}"}, out="out.parquet"))
    assert out.select("zip", "account", "active", "price").rows() == [
        ("02134", "123456789012345678901234567890", "TRUE", "1.50"),
        ("10001", "000042", "false", "2"),
        (None, "9", "True", "0.25"),
    ]


@pytest.mark.parametrize(
    ("request_keys", "input_types", "expected"),
    [
        pytest.param(
            # In the URL, the query and headers a cell is sent as the text it was read as.
            {
                "url": "/v1/{{zip}}/{{price}}",
                "params": {"acct": "{{account}}", "active": "{{active}}"},
                "headers": {"X-Note": "{{note}}", "X-Price": "{{price}}"},
            },
            {},
            {
                "path": "/v1/02134/1.50",
                "query": "acct=123456789012345678901234567890&active=TRUE",
                "headers": {"X-Note": "+5", "X-Price": "1.50"},
                "body": None,
            },
            id="url-query-headers-as-text",
        ),
        pytest.param(
            # A whole JSON value in the body takes the column's kind: numbers and booleans where
            # every value of the column is one; text where any is not (a zip with a leading zero,
            # a 30-digit id, a signed number).
            {
                "url": "/v1/{{id}}",
                "method": "POST",
                "body": {
                    "zip": "{{zip}}",
                    "account": "{{account}}",
                    "active": "{{active}}",
                    "price": "{{price}}",
                    "employees": "{{employees}}",
                    "note": "{{note}}",
                    "label": "{{employees}} people at {{price}}",
                },
            },
            {},
            {
                "path": "/v1/1",
                "query": "",
                "headers": {},
                "body": {
                    "zip": "02134",
                    "account": "123456789012345678901234567890",
                    "active": True,
                    "price": 1.5,
                    "employees": 12,
                    "note": "+5",
                    "label": "12 people at 1.50",
                },
            },
            id="typed-json-body",
        ),
        pytest.param(
            # input_types overrides: `str` sends text, `int` reads the column as numbers.
            {"url": "/v1/{{id}}", "method": "POST", "body": {"employees": "{{employees}}", "account": "{{account}}"}},
            {"employees": "str", "account": "int"},
            {"path": "/v1/1", "query": "", "headers": {}, "body": {"employees": "12", "account": None}},
            id="input-types-override",
        ),
    ],
)
def test_cells_are_sent_as_written(
    tmp_path: Path,
    serve: Serve,
    request_keys: dict[str, Any],
    input_types: dict[str, str],
    expected: dict[str, Any],
) -> None:
    server, seen = echo_api(serve)
    request = {**request_keys, "url": server.url + request_keys["url"]}
    if input_types.get("account") == "int":
        # A 30-digit id does not fit a whole number: asked to read it as one, enrich says so.
        src = tmp_path / "in.csv"
        src.write_text(CSV, encoding="utf-8")
        cfg = write_config(
            tmp_path / "job.yaml",
            {"input": str(src), "output": str(tmp_path / "o.csv"), "request": request, "input_types": input_types},
        )
        assert run_cli(["run", str(cfg), "-q"]) == 2
        assert seen == []
        input_types = {"employees": "str"}
        request["body"] = {"employees": "{{employees}}"}
        expected = {**expected, "body": {"employees": "12"}}
    run(tmp_path, server, request, input_types=input_types)
    assert seen[0] == expected


@pytest.mark.slow
def test_a_later_cell_that_is_not_of_its_columns_kind_fails_its_row(tmp_path: Path, serve: Serve) -> None:
    # The kind of a column is judged on its first 10,000 rows; a later `n/a` in a column of numbers
    # cannot be sent as a number: that row fails, saying so, and the others go on.
    server, seen = echo_api(serve)
    rows = 10_005
    src = tmp_path / "in.csv"
    src.write_text("id,n\n" + "".join(f"{i},{'n/a' if i == 10_003 else i}\n" for i in range(rows)), encoding="utf-8")
    out = tmp_path / "out.parquet"
    cfg = write_config(
        tmp_path / "job.yaml",
        {
            "input": str(src),
            "output": str(out),
            "request": {"url": server.url + "/v1/{{id}}", "method": "POST", "body": {"n": "{{n}}"}},
            "fields": {"got": "body.n"},
            "concurrency": 32,
        },
    )
    assert run_cli(["run", str(cfg), "-q"]) == 0
    df = pl.read_parquet(out)
    assert df["_error"].drop_nulls().to_list() == [
        "column 'n' holds 'n/a', which is not a whole number like the column's first rows, so it cannot be sent "
        "as one. Set `input_types: {n: str}` to send every value of the column as text."
    ]
    assert df.filter(pl.col("_error").is_null())["got"].to_list() == [i for i in range(rows) if i != 10_003]
    assert len(seen) == rows - 1


def test_when_compares_numbers_in_a_csv_as_numbers(tmp_path: Path, serve: Serve) -> None:
    server, seen = echo_api(serve)
    out = run(tmp_path, server, {"url": server.url + "/v1/{{id}}"}, when="employees > 5 AND price < 2")
    assert [s["path"] for s in seen] == ["/v1/1"]
    assert pl.read_csv(out, infer_schema=False)["_http_status"].to_list() == ["200", None, None]


def test_numbers_from_the_api_are_kept_as_the_api_wrote_them(tmp_path: Path, serve: Serve) -> None:
    # A float holds 15-17 digits and orjson's int 64 bits: wider numbers keep their exact text.
    body = (
        '{"wide": 123456789012345678901234567890, "u64": 18446744073709551616, '
        '"precise": 0.1000000000000000055511151231257827, "plain": 1.5, "small": 7}'
    )

    async def item(request: web.Request) -> web.Response:
        return web.Response(text=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/{id}", item)
    server = serve(app)
    src = tmp_path / "in.csv"
    src.write_text("id\n1\n", encoding="utf-8")
    fields = {"wide": "wide", "u64": "u64", "precise": "precise", "plain": "plain", "small": "small"}
    for out in (tmp_path / "out.csv", tmp_path / "out.parquet"):
        cfg = write_config(
            tmp_path / "job.yaml",
            {"input": str(src), "output": str(out), "request": {"url": server.url + "/v1/{{id}}"}, "fields": fields},
        )
        assert run_cli(["run", str(cfg), "-q"]) == 0
        row = (pl.read_csv(out, infer_schema=False) if out.suffix == ".csv" else pl.read_parquet(out)).row(
            0, named=True
        )
        assert str(row["wide"]) == "123456789012345678901234567890"
        assert str(row["u64"]) == "18446744073709551616"
        assert str(row["precise"]) == "0.1000000000000000055511151231257827"
        assert float(row["plain"]) == 1.5 and int(row["small"]) == 7


def test_a_wide_integer_in_an_ndjson_input_is_sent_exactly(tmp_path: Path, serve: Serve) -> None:
    server, seen = echo_api(serve)
    src = tmp_path / "in.ndjson"
    src.write_text('{"id": 1, "n": 123456789012345678901234567890}\n{"id": 2, "n": 5}\n', encoding="utf-8")
    cfg = write_config(
        tmp_path / "job.yaml",
        {
            "input": str(src),
            "output": str(tmp_path / "out.csv"),
            "request": {"url": server.url + "/v1/{{id}}", "method": "POST", "body": {"n": "{{n}}"}},
        },
    )
    assert run_cli(["run", str(cfg), "-q"]) == 0
    assert sorted(json.dumps(s["body"]["n"]) for s in seen) == ["123456789012345678901234567890", "5"]


def test_a_whole_number_too_wide_for_a_float_is_not_rounded_in_a_column_of_floats(tmp_path: Path, serve: Serve) -> None:
    # 2^53 + 1 beside 1.5: a Float64 column would hold 9007199254740992. Within one batch and
    # across batches (the wide number in its own batch, the floats in another), the column is text.
    answers = {"1": "1.5", "2": "9007199254740993", "3": "0.1"}

    async def item(request: web.Request) -> web.Response:
        return web.Response(text='{"c": ' + answers[request.match_info["id"]] + "}", content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/{id}", item)
    server = serve(app)
    src = tmp_path / "in.csv"
    src.write_text("id\n1\n2\n3\n", encoding="utf-8")
    out = tmp_path / "out.parquet"
    cfg = write_config(
        tmp_path / "job.yaml",
        {"input": str(src), "output": str(out), "request": {"url": server.url + "/v1/{{id}}"}, "fields": {"c": "c"}},
    )
    assert run_cli(["run", str(cfg), "-q"]) == 0
    assert pl.read_parquet(out)["c"].to_list() == ["1.5", "9007199254740993", "0.1"]
    frames = [pl.DataFrame({"c": [9007199254740993]}), pl.DataFrame({"c": [1.5]})]
    assert collect_frames(frames)["c"].to_list() == ["9007199254740993", "1.5"]
