"""One output row per item: `fields: {contact: {path: ..., explode: true}}`, against a real local API.

The API answers a company's contacts (a list) and its phone numbers (another list); it counts
the calls it gets per company, so each test can say which runs made no call. Outputs are read
back from the files `enrich run` and `enrich extract` write.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from aiohttp import web
from conftest import RunningServer, Serve, run_cli, write_config

import enrich
from enrich.config import config_from_dict, load_config
from enrich.errors import ConfigError, InputError
from enrich.tables import merge_shards

# What the API knows, by company id; an id it does not know is a 404.
COMPANIES: dict[str, dict[str, Any]] = {
    "acme": {
        "name": "Acme",
        "contacts": [{"email": "ann@acme.io"}, {"email": "bob@acme.io"}, {"email": "cy@acme.io"}],
        "phones": ["555-0100", "555-0101", "555-0102"],
        "ceo": "Ann",
    },
    "solo": {"name": "Solo", "contacts": [{"email": "sam@solo.io"}], "phones": ["020-0000"], "ceo": "Sam"},
    "quiet": {"name": "Quiet", "contacts": [], "phones": [], "ceo": None},
    "uneven": {"name": "Uneven", "contacts": [{"email": "u1@un.io"}, {"email": "u2@un.io"}], "phones": ["555-9999"]},
}
IDS = ["acme", "gone", "quiet", "solo", "uneven", "acme"]  # input order; "gone" is a 404; acme twice


class CompanyApi:
    """GET /companies/{id} -> the company, or 404; ``calls`` counts each id asked."""

    def __init__(self, serve: Serve) -> None:
        self.calls: Counter[str] = Counter()
        app = web.Application()
        app.router.add_get("/companies/{id}", self.company)
        self.server: RunningServer = serve(app)

    async def company(self, request: web.Request) -> web.Response:
        company_id = request.match_info["id"]
        self.calls[company_id] += 1
        if company_id not in COMPANIES:
            return web.json_response({"error": "no such company"}, status=404)
        return web.json_response(COMPANIES[company_id])

    @property
    def url(self) -> str:
        return self.server.url + "/companies/{{id}}"


def contact_fields(explode: bool = True, phone: bool = False) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "company": "name",
        "contact": {"path": "$.contacts[*].email", "explode": explode},
    }
    if phone:
        fields["phone"] = {"path": "$.phones[*]", "explode": explode}
    return fields


def job(tmp_path: Path, api: CompanyApi, ids: list[str] = IDS, out: str = "out.csv", **config: Any) -> Path:
    """``tmp_path/job.yaml`` reading ``tmp_path/in.csv`` (columns n, id) and writing ``out``."""
    pl.DataFrame({"n": list(range(len(ids))), "id": ids}).write_csv(tmp_path / "in.csv")
    body = {
        "input": str(tmp_path / "in.csv"),
        "output": str(tmp_path / out),
        "request": {"url": api.url},
        "fields": contact_fields(),
        "retry": {"attempts": 1},
        **config,
    }
    if "steps" in body:  # the calls are the steps'
        del body["request"], body["fields"]
    return write_config(tmp_path / "job.yaml", body)


def read(path: Path) -> pl.DataFrame:
    return pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path, infer_schema=False)


def summary_of(output: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(output.with_name(output.name + ".summary.json").read_text())
    return data


# --- one row per item -----------------------------------------------------------------------------


@pytest.mark.parametrize("out", ["out.csv", "out.parquet"])
def test_each_item_is_a_row_and_the_rows_other_columns_repeat(tmp_path: Path, serve: Serve, out: str) -> None:
    api = CompanyApi(serve)
    cfg = job(tmp_path, api, out=out)
    assert run_cli(["run", str(cfg), "-q"]) == 0
    frame = read(tmp_path / out)
    assert frame.columns == [
        "n",
        "id",
        "company",
        "contact",
        "_item",
        "_http_status",
        "_error",
        "_attempts",
        "_latency_ms",
    ]
    rows = frame.select("n", "id", "company", "contact", "_item", "_http_status").rows()
    as_text = out.endswith(".csv")  # a CSV reads back as text

    def row(n: int, *values: Any) -> tuple[Any, ...]:  # n: an input column, text as the CSV input has it
        return (str(n), *(None if v is None else str(v) if as_text else v for v in values))

    # Input order, then item order; a 404 and an empty list keep their row once, with nulls.
    assert rows == [
        row(0, "acme", "Acme", "ann@acme.io", 0, 200),
        row(0, "acme", "Acme", "bob@acme.io", 1, 200),
        row(0, "acme", "Acme", "cy@acme.io", 2, 200),
        row(1, "gone", None, None, None, 404),
        row(2, "quiet", "Quiet", None, None, 200),
        row(3, "solo", "Solo", "sam@solo.io", 0, 200),
        row(4, "uneven", "Uneven", "u1@un.io", 0, 200),  # one exploding field: nothing to zip with
        row(4, "uneven", "Uneven", "u2@un.io", 1, 200),
        row(5, "acme", "Acme", "ann@acme.io", 0, 200),
        row(5, "acme", "Acme", "bob@acme.io", 1, 200),
        row(5, "acme", "Acme", "cy@acme.io", 2, 200),
    ]
    errors = frame["_error"].to_list()
    assert errors[3].startswith("HTTP 404") and errors.count(None) == 10
    assert frame["_attempts"].to_list() == ["1" if as_text else 1] * 11  # the diagnostics repeat on each item's row
    if not as_text:
        assert frame.schema["_item"] == pl.Int64 and frame.schema["contact"] == pl.String
    assert api.calls == {"acme": 1, "gone": 1, "quiet": 1, "solo": 1, "uneven": 1}
    # The summary counts input rows; the output's rows are said apart, and fill is over input rows.
    summary = summary_of(tmp_path / out)
    assert (summary["rows"], summary["ok"], summary["failed"], summary["output_rows"]) == (6, 5, 1, 11)
    assert summary["fill"] == {"company": round(5 / 6, 4), "contact": round(4 / 6, 4)}


def test_the_closing_summary_says_how_many_output_rows_the_items_made(
    tmp_path: Path, serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    api = CompanyApi(serve)
    cfg = job(tmp_path, api)
    assert run_cli(["run", str(cfg)]) == 0
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("enriched 6 rows (11 output rows, one per item) in ")
    assert first.endswith(f" -> {tmp_path / 'out.csv'}")


def test_several_exploding_fields_are_zipped_and_lists_of_different_lengths_fail_their_row(
    tmp_path: Path, serve: Serve
) -> None:
    api = CompanyApi(serve)
    errors = tmp_path / "errors.csv"
    cfg = job(tmp_path, api, fields=contact_fields(phone=True), errors_out=str(errors))
    assert run_cli(["run", str(cfg), "-q"]) == 0
    frame = read(tmp_path / "out.csv")
    assert frame.columns[:6] == ["n", "id", "company", "contact", "phone", "_item"]
    rows = frame.select("n", "contact", "phone", "_item", "_http_status").rows()
    uneven = (
        "the exploded fields have lists of different lengths (contact 2, phone 1 items): they are zipped item by "
        "item, so each must have as many. Explode only one of them, or give each its own config."
    )
    assert rows == [
        ("0", "ann@acme.io", "555-0100", "0", "200"),
        ("0", "bob@acme.io", "555-0101", "1", "200"),
        ("0", "cy@acme.io", "555-0102", "2", "200"),
        ("1", None, None, None, "404"),
        ("2", None, None, None, "200"),
        ("3", "sam@solo.io", "020-0000", "0", "200"),
        ("4", None, None, None, "200"),  # the call stands (200); the row fails, once, with nulls
        ("5", "ann@acme.io", "555-0100", "0", "200"),
        ("5", "bob@acme.io", "555-0101", "1", "200"),
        ("5", "cy@acme.io", "555-0102", "2", "200"),
    ]
    assert frame.filter(pl.col("n") == "4")["_error"].to_list() == [uneven]
    assert frame.filter(pl.col("n") == "4")["company"].to_list() == [None]
    summary = summary_of(tmp_path / "out.csv")
    assert summary["failures"] == {"HTTP 404": 1, "uneven lists": 1}
    assert (summary["ok"], summary["failed"], summary["output_rows"]) == (4, 2, 10)
    # The errors file lists failed input rows, each once.
    failed = read(errors)
    assert failed.select("_row", "_http_status").rows() == [("1", "404"), ("4", "200")]
    assert failed["_error"].to_list()[1] == uneven
    # Rerun, even with --retry-failed: an uneven answer is an answer (as a 404 is), so no call is made.
    before = api.calls.copy()
    assert run_cli(["run", str(cfg), "-q", "--retry-failed"]) == 0
    assert api.calls == before
    assert read(tmp_path / "out.csv").drop("_latency_ms").equals(frame.drop("_latency_ms"))


def test_a_scalar_is_one_item_and_a_missing_path_none(tmp_path: Path, serve: Serve) -> None:
    api = CompanyApi(serve)
    fields = {"ceo": {"path": "ceo", "explode": True}}  # a dot path: Ann (a scalar), null, or missing
    cfg = job(tmp_path, api, ids=["acme", "quiet", "uneven"], fields=fields)
    assert run_cli(["run", str(cfg), "-q"]) == 0
    assert read(tmp_path / "out.csv").select("id", "ceo", "_item", "_error").rows() == [
        ("acme", "Ann", "0", None),
        ("quiet", None, None, None),
        ("uneven", None, None, None),
    ]


def test_rows_left_out_by_when_stay_once_without_an_item(tmp_path: Path, serve: Serve) -> None:
    api = CompanyApi(serve)
    cfg = job(tmp_path, api, ids=["solo", "acme"], when="id <> 'acme'")
    assert run_cli(["run", str(cfg), "-q"]) == 0
    assert read(tmp_path / "out.csv").select("id", "contact", "_item", "_http_status").rows() == [
        ("solo", "sam@solo.io", "0", "200"),
        ("acme", None, None, None),
    ]
    assert api.calls == {"solo": 1}


def test_skip_if_filled_keeps_the_filled_rows_once_and_explodes_the_others(tmp_path: Path, serve: Serve) -> None:
    api = CompanyApi(serve)
    cfg = job(tmp_path, api, skip_if_filled=["company"], diagnostics=False)
    (tmp_path / "in.csv").write_text("id,company\nacme,\nsolo,Solo Ltd\nquiet,\n")
    assert run_cli(["run", str(cfg), "-q"]) == 0
    assert read(tmp_path / "out.csv").rows() == [
        ("acme", "Acme", "ann@acme.io", "0", "200", None),
        ("acme", "Acme", "bob@acme.io", "1", "200", None),
        ("acme", "Acme", "cy@acme.io", "2", "200", None),
        ("solo", "Solo Ltd", None, None, None, None),  # filled already: no call, one row, the input's value
        ("quiet", "Quiet", None, None, "200", None),
    ]
    assert api.calls == {"acme": 1, "quiet": 1}


def test_a_header_only_input_gives_the_columns_and_no_row(tmp_path: Path, serve: Serve) -> None:
    api = CompanyApi(serve)
    cfg = job(tmp_path, api, out="out.parquet")
    (tmp_path / "in.csv").write_text("n,id\n")
    assert run_cli(["run", str(cfg), "-q"]) == 0
    frame = read(tmp_path / "out.parquet")
    assert frame.height == 0 and frame.columns[2:5] == ["company", "contact", "_item"]


# --- the journal: explode is applied when the output is built ------------------------------------


def test_switching_explode_on_and_off_with_extract_makes_no_call(tmp_path: Path, serve: Serve) -> None:
    api = CompanyApi(serve)
    cfg = job(tmp_path, api, out="out.parquet")
    assert run_cli(["run", str(cfg), "-q"]) == 0
    exploded = read(tmp_path / "out.parquet")
    calls = api.calls.copy()
    assert run_cli(["run", str(cfg), "-q"]) == 0  # a rerun: every answer is in the journal
    assert read(tmp_path / "out.parquet").equals(exploded)

    flat = job(tmp_path, api, out="out.parquet", fields=contact_fields(explode=False))
    assert run_cli(["extract", str(flat), "-q"]) == 0
    frame = read(tmp_path / "out.parquet")
    assert "_item" not in frame.columns and frame.height == len(IDS)  # one row per input row
    assert frame["contact"].to_list() == [
        '["ann@acme.io","bob@acme.io","cy@acme.io"]',
        None,
        "[]",
        '["sam@solo.io"]',
        '["u1@un.io","u2@un.io"]',
        '["ann@acme.io","bob@acme.io","cy@acme.io"]',
    ]

    again = job(tmp_path, api, out="out.parquet")
    assert run_cli(["extract", str(again), "-q"]) == 0
    assert read(tmp_path / "out.parquet").drop("_latency_ms").equals(exploded.drop("_latency_ms"))
    assert api.calls == calls  # not one call after the first run


def test_the_library_explodes_a_dataframe(serve: Serve) -> None:
    api = CompanyApi(serve)
    config = {"request": {"url": api.url}, "fields": contact_fields(), "diagnostics": False}
    result = enrich.enrich(pl.DataFrame({"id": ["solo", "quiet", "acme"]}), config)
    assert result.frame.rows() == [
        ("solo", "Solo", "sam@solo.io", 0, 200, None),
        ("quiet", "Quiet", None, None, 200, None),
        ("acme", "Acme", "ann@acme.io", 0, 200, None),
        ("acme", "Acme", "bob@acme.io", 1, 200, None),
        ("acme", "Acme", "cy@acme.io", 2, 200, None),
    ]
    assert (result.summary.rows, result.summary.output_rows) == (3, 5)


# --- shards --------------------------------------------------------------------------------------


@pytest.mark.parametrize("out", ["out.csv", "out.parquet"])
def test_shards_of_an_exploding_run_merge_into_the_whole_runs_table(tmp_path: Path, serve: Serve, out: str) -> None:
    api = CompanyApi(serve)
    ids = IDS * 4
    cfg = job(tmp_path, api, ids=ids, out=out, diagnostics=False)
    assert run_cli(["run", str(cfg), "-q"]) == 0
    whole = read(tmp_path / out)
    suffix = Path(out).suffix
    parts = [tmp_path / f"out.shard-{i}-of-3{suffix}" for i in range(3)]
    for i in range(3):
        assert run_cli(["run", str(cfg), "-q", "--shard", f"{i}/3"]) == 0
    rows = [read(p)["_row"].cast(pl.Int64).to_list() for p in parts]
    assert len(set(rows[0]) & set(rows[1])) == 0 and any(len(r) != len(set(r)) for r in rows)  # repeats: items
    merged = tmp_path / f"merged{suffix}"
    assert run_cli(["merge", *map(str, parts), "--output", str(merged)]) == 0
    assert read(merged).equals(whole)


def test_merge_refuses_an_item_twice(tmp_path: Path, serve: Serve) -> None:
    api = CompanyApi(serve)
    cfg = job(tmp_path, api, out="out.parquet")
    assert run_cli(["run", str(cfg), "-q", "--shard", "0/1"]) == 0
    part = tmp_path / "out.shard-0-of-1.parquet"
    frame = read(part)
    pl.concat([frame, frame.head(1)]).write_parquet(part)  # acme's first contact, twice
    with pytest.raises(InputError) as info:
        merge_shards([part], tmp_path / "merged.parquet")
    assert str(info.value).startswith(f"_row 0 is more than once in {part}: each input row is in one shard")


# --- what is refused -----------------------------------------------------------------------------


def test_an_input_with_an_item_column_is_refused(
    tmp_path: Path, serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    api = CompanyApi(serve)
    cfg = job(tmp_path, api)
    pl.DataFrame({"id": ["acme"], "_item": [1]}).write_csv(tmp_path / "in.csv")
    assert run_cli(["run", str(cfg), "-q"]) == 2
    assert capsys.readouterr().err == (
        "error: in.csv has a column named _item, which an exploding field adds (it numbers each row's items). "
        "Rename or drop that column of the input (a table enriched with `explode` before: start from the table it "
        "was made from).\n"
    )
    assert not api.calls


def test_an_exploding_field_the_input_has_is_refused_even_with_skip_if_filled(
    tmp_path: Path, serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    api = CompanyApi(serve)
    cfg = job(tmp_path, api, skip_if_filled=["contact"])
    (tmp_path / "in.csv").write_text("id,contact\nacme,\n")
    assert run_cli(["run", str(cfg), "-q"]) == 2
    assert capsys.readouterr().err == (
        f"error: {cfg}: the field 'contact' explodes (one output row per item), and 'contact' is already a column of "
        "in.csv, whose values the output could not keep. Give the field another name (`fields: {new_name: {path: "
        "..., explode: true}}`).\n"
    )
    assert not api.calls


def test_a_field_named_item_is_refused_when_another_explodes(tmp_path: Path, serve: Serve) -> None:
    api = CompanyApi(serve)
    cfg = job(tmp_path, api, fields={**contact_fields(), "_item": "ceo"})
    with pytest.raises(ConfigError) as info:
        enrich.plan_job(load_config(cfg))  # where the input's columns are checked, before any call
    assert str(info.value) == (
        f"{cfg}: a field is named _item, the column that numbers the items of an exploding field. Give that field "
        "another name."
    )
    assert not api.calls


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # a list of paths cannot say which explodes
        (["a", {"path": "b", "explode": True}], "a list of fields must hold path strings only; to explode a field"),
        ({"c": {"path": "a", "explode": "yes"}}, "fields.c.explode must be true or false, got 'yes'."),
        (
            {"c": {"path": "a", "explodes": True}},
            "fields.c: unknown key 'explodes'; a field takes `path` and `explode`.",
        ),
        ({"c": {"explode": True}}, "fields.c.path: expected a path string like `person.name`, got None."),
        ({"c": 3}, "fields.c: expected a path string like `person.name`, or `{path: person.emails, explode: true}`"),
    ],
)
def test_a_wrong_field_is_refused_when_the_config_loads(fields: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"request": {"url": "https://api.example.com/{{id}}"}, "fields": fields})
    assert expected in str(info.value)


# --- steps ---------------------------------------------------------------------------------------


def steps_config(api: CompanyApi) -> list[dict[str, Any]]:
    """A chain: the company's name by id, then, for the companies found, its contacts and phones
    (asked of the same API, under another path)."""
    return [
        {"name": "company", "request": {"url": api.url}, "fields": {"company": "name"}},
        {
            "name": "people",
            "when": "company IS NOT NULL",
            "request": {"url": api.url, "params": {"for": "{{company}}"}},
            "fields": {k: v for k, v in contact_fields(phone=True).items() if k != "company"},
        },
    ]


def test_the_last_step_may_explode(tmp_path: Path, serve: Serve) -> None:
    api = CompanyApi(serve)
    cfg = job(tmp_path, api, ids=["acme", "gone", "uneven", "quiet"], steps=steps_config(api), diagnostics=False)
    assert run_cli(["run", str(cfg), "-q"]) == 0
    frame = read(tmp_path / "out.csv")
    assert frame.columns == [
        "n", "id", "company", "contact", "phone", "_item",
        "_company_http_status", "_company_error", "_people_http_status", "_people_error",
    ]  # fmt: skip
    assert frame.drop("_company_error", "_people_error").rows() == [
        ("0", "acme", "Acme", "ann@acme.io", "555-0100", "0", "200", "200"),
        ("0", "acme", "Acme", "bob@acme.io", "555-0101", "1", "200", "200"),
        ("0", "acme", "Acme", "cy@acme.io", "555-0102", "2", "200", "200"),
        ("1", "gone", None, None, None, None, "404", None),
        ("2", "uneven", "Uneven", None, None, None, "200", "200"),
        ("3", "quiet", "Quiet", None, None, None, "200", "200"),
    ]
    assert frame["_people_error"].to_list()[4].startswith("the exploded fields have lists of different lengths")
    summary = summary_of(tmp_path / "out.csv")
    assert summary["failures"] == {"company: HTTP 404": 1, "people: uneven lists": 1}
    assert (summary["rows"], summary["output_rows"]) == (4, 6)
    calls = api.calls.copy()
    assert run_cli(["extract", str(cfg), "-q"]) == 0
    assert read(tmp_path / "out.csv").equals(frame) and api.calls == calls


def test_an_exploding_step_before_another_step_is_refused(serve: Serve) -> None:
    api = CompanyApi(serve)
    company, people = steps_config(api)
    del people["when"], people["request"]["params"]
    with pytest.raises(ConfigError) as info:
        config_from_dict({"steps": [people, company]})
    assert str(info.value) == (
        "<config>: steps[0].fields.contact: step `people` explodes 'contact' (one output row per item), and step `company` "
        "comes after it, which would run once for a row that is now many. Make the exploding step the last one, or "
        "explode in a config of its own run on this config's output."
    )


def test_an_exploding_field_another_step_fills_is_refused(serve: Serve) -> None:
    api = CompanyApi(serve)
    steps = steps_config(api)
    steps[0]["fields"] = {"company": "name", "contact": "ceo"}  # a waterfall into an exploding column
    with pytest.raises(ConfigError) as info:
        config_from_dict({"steps": steps})
    assert str(info.value) == (
        "<config>: steps[1].fields.contact: step `people` explodes 'contact', which step `company` fills too: a field that "
        "explodes must be one step's alone. Give one of them another name."
    )


# --- Dask ----------------------------------------------------------------------------------------


def test_dask_partitions_explode_with_each_rows_index_repeated(serve: Serve) -> None:
    dd = pytest.importorskip("dask.dataframe")
    import pandas as pd

    import enrich.dask

    api = CompanyApi(serve)
    people = pd.DataFrame({"id": ["solo", "acme", "gone", "quiet", "uneven"]}, index=[10, 11, 12, 13, 14])
    ddf = dd.from_pandas(people, npartitions=2)
    config = {"request": {"url": api.url}, "fields": contact_fields(), "diagnostics": False}
    lazy = enrich.dask.enrich(ddf, config, journal=False)
    assert list(lazy.columns) == ["id", "company", "contact", "_item", "_http_status", "_error"]
    out = lazy.compute(scheduler="threads")
    assert list(out.index) == [10, 11, 11, 11, 12, 13, 14, 14]
    assert str(out["_item"].dtype) == "Int64"
    assert out["contact"].tolist()[:4] == ["sam@solo.io", "ann@acme.io", "bob@acme.io", "cy@acme.io"]
    assert out["_item"].tolist() == [0, 0, 1, 2, pd.NA, pd.NA, 0, 1]
    assert out["_http_status"].tolist() == [200, 200, 200, 200, 404, 200, 200, 200]
