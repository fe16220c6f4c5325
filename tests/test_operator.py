"""Operator experience end to end: validate, --dry-run, preview, when, skip_if_filled, the summary,
the error budget, --errors-out, JSON logs, formula neutralisation, schema and init.

Each test drives ``enrich`` as a user does, against a real server on 127.0.0.1 that records
every request it gets, with real files in ``tmp_path``; the text users see is asserted whole.
"""

from __future__ import annotations

import json
import re
import socket
import sqlite3
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from aiohttp import web
from conftest import RunningServer, Serve, demo_config, run_cli, write_config

from enrich.demo_server import DEFAULT_CLIENT_SECRET, DemoSettings, create_app, person_for

PEOPLE_CSV = """id,email,domain,country
1,ada@example.com,example.com,US
2,grace@navy.mil,navy.mil,GB
3,,acme.io,US
4,alan@bletchley.uk,bletchley.uk,US
"""


TOKENS: list[str] = []  # every bearer token the recorded demo API saw, for the secrets test


def recorded_demo(serve: Serve, settings: DemoSettings | None = None) -> tuple[RunningServer, list[str]]:
    """The demo API, and the path of every request it receives."""
    app = create_app(settings or DemoSettings())
    seen: list[str] = []

    @web.middleware
    async def recorder(request: web.Request, handler: Any) -> web.StreamResponse:
        seen.append(request.path)
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and auth[7:] not in TOKENS:
            TOKENS.append(auth[7:])
        return await handler(request)

    app.middlewares.append(recorder)
    return serve(app), seen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def people(tmp_path: Path, text: str = PEOPLE_CSV) -> Path:
    path = tmp_path / "people.csv"
    path.write_text(text, encoding="utf-8")
    return path


def files_in(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# --- validate ---------------------------------------------------------------------------------


def test_validate_says_what_the_run_would_use_without_any_call(
    tmp_path: Path, demo_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    base = f"http://127.0.0.1:{free_port()}"  # nothing listens: any call would fail the command
    cfg = write_config(
        tmp_path / "c.yaml",
        demo_config(base, input=str(people(tmp_path)), output="out.parquet", when="country = 'US'", rate_limit="5/s"),
    )
    assert run_cli(["validate", str(cfg)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{cfg}: the config is valid.",
        f"  input      {tmp_path / 'people.csv'} (4 columns; the ones used are there)",
        "  columns    domain, email (used by the request)",
        "  when       country = 'US'",
        f"  request    GET {base}/v1/people/{{{{email}}}}",
        f"  auth       log in at {base}/auth/token; token at access_token; sent as Authorization: Bearer <token>",
        "  fields     name <- person.name, title <- person.employment.title, size <- company.employees",
        "  pace       5/s, concurrency 8, 3 attempts, timeout 30s",
        "  output     out.parquet (+ name, title, size, _http_status, _error, _attempts, _latency_ms)",
    ]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param(
            {"when": "contry = 'US'"},
            "error: {cfg}: `when` uses 'contry', which is not a column of people.csv (columns: id, email, domain, "
            "country). Did you mean 'country'?",
            id="when-unknown-column",
        ),
        pytest.param(
            {"when": "country = "},
            "error: {cfg}, line 20: when: 'country = ' is not a SQL condition polars understands (unable to parse "
            "'country = ' as Expr). Write it as a WHERE clause without WHERE, e.g. \"email IS NOT NULL AND "
            "country = 'US'\".",
            id="when-not-sql",
        ),
        pytest.param(
            {"when": "id > 'x'"},
            "error: {cfg}: `when: id > 'x'` cannot be evaluated on people.csv: cannot compare string with numeric "
            "type (i64). Compare columns with values of their type (text in single quotes).",
            id="when-wrong-type",
        ),
        pytest.param(
            {"skip_if_filled": ["titel"]},
            "error: {cfg}: `skip_if_filled` names 'titel', which is not a column of people.csv (columns: id, email, "
            "domain, country).",
            id="skip-if-filled-unknown-column",
        ),
        pytest.param(
            {"max_error_rate": 2},
            "error: {cfg}, line 20: max_error_rate must be a share of rows between 0 and 1 (0.05) or a percentage "
            "(5%), got 2.",
            id="error-rate-out-of-range",
        ),
    ],
)
def test_validate_names_each_mistake_and_exits_2(
    tmp_path: Path,
    demo_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    overrides: dict[str, Any],
    message: str,
) -> None:
    cfg = write_config(tmp_path / "c.yaml", demo_config("http://127.0.0.1:9", input=str(people(tmp_path)), **overrides))
    assert run_cli(["validate", str(cfg)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == message.format(cfg=cfg) + "\n"


# --- dry run -----------------------------------------------------------------------------------


def test_dry_run_shows_curl_commands_and_the_estimate_and_sends_and_writes_nothing(
    tmp_path: Path, serve: Serve, demo_env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    server, seen = recorded_demo(serve)
    monkeypatch.setenv("API_KEY", "k3y-s3cr3t-0042")
    work = tmp_path / "work"
    work.mkdir()
    cfg = write_config(
        tmp_path / "c.yaml",
        demo_config(
            server.url,
            input=str(people(tmp_path)),
            output=str(work / "out.parquet"),
            request={
                "url": server.url + "/v1/people/{{email}}",
                "params": {"domain": "{{domain}}"},
                "headers": {"X-Api-Key": "${API_KEY}"},
            },
            rate_limit="2/s",
        ),
    )
    assert run_cli(["run", str(cfg), "--dry-run", "3"]) == 0
    out = capsys.readouterr().out
    u = server.url
    assert out.splitlines() == [
        "# row 0",
        f"curl '{u}/v1/people/ada%40example.com?domain=example.com' -H 'X-Api-Key: ***' -H 'Authorization: Bearer ***'",
        "# row 1",
        f"curl '{u}/v1/people/grace%40navy.mil?domain=navy.mil' -H 'X-Api-Key: ***' -H 'Authorization: Bearer ***'",
        f"# row 2: fails without a call: {cfg}, line 8: request.url: column 'email' is empty, and the URL path "
        "needs a value",
        "",
        "dry run: nothing was sent and nothing was written.",
        "  rows                 4",
        "  matching `when`      4 (no `when`)",
        "  skipped, filled      0 (no `skip_if_filled`)",
        "  row errors           1 (fail without a call)",
        "  distinct requests    3",
        "  in the journal       0",
        "  calls to make        3",
        "  time                 2s at 2/s (concurrency 8)",
    ]
    assert seen == []  # not even the login
    assert files_in(work) == []
    assert "k3y-s3cr3t-0042" not in out and DEFAULT_CLIENT_SECRET not in out


def test_dry_run_counts_the_journal_when_and_filled_rows_without_touching_the_journal(
    tmp_path: Path, serve: Serve, demo_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    server, seen = recorded_demo(serve)
    src = people(
        tmp_path,
        "id,email,domain,country,title\n1,ada@example.com,example.com,US,\n2,grace@navy.mil,navy.mil,GB,\n"
        "3,alan@bletchley.uk,bletchley.uk,US,Boss\n4,kat@nasa.gov,nasa.gov,US,\n5,linus@kernel.org,kernel.org,US,\n",
    )
    base = demo_config(server.url, input=str(src), output=str(tmp_path / "out.parquet"))
    first = write_config(
        tmp_path / "first.yaml", {**base, "when": "email = 'ada@example.com'", "fields": {"name": "person.name"}}
    )
    assert run_cli(["run", str(first), "-q"]) == 0
    journal = tmp_path / "out.parquet.journal"
    before = journal.read_bytes()
    seen.clear()
    cfg = write_config(
        tmp_path / "c.yaml",
        {**base, "when": "country = 'US'", "skip_if_filled": ["title"], "fields": {"title": "person.employment.title"}},
    )
    assert run_cli(["run", str(cfg), "--dry-run", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "# row 0: answered by the journal, no call"
    assert lines[3:] == [
        "dry run: nothing was sent and nothing was written.",
        "  rows                 5",
        "  matching `when`      4",
        "  skipped, filled      1",
        "  row errors           0 (fail without a call)",
        "  distinct requests    3",
        "  in the journal       1",
        "  calls to make        2",
        "  time                 no rate limit set: as fast as the API answers 8 requests at a time",
    ]
    assert seen == []
    assert journal.read_bytes() == before
    assert not Path(f"{journal}-wal").exists() and not Path(f"{journal}-shm").exists()


# --- preview -----------------------------------------------------------------------------------


def test_preview_prints_each_response_as_paths_and_the_columns_fields_give(
    tmp_path: Path, serve: Serve, demo_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    server, seen = recorded_demo(serve)
    cfg = write_config(tmp_path / "c.yaml", demo_config(server.url, input=str(people(tmp_path)), output="o.parquet"))
    assert run_cli(["preview", str(cfg), "--rows", "1"]) == 0
    out = capsys.readouterr().out
    person = person_for("ada@example.com", "example.com")
    assert person is not None
    lines = out.splitlines()
    assert lines[0] == f"row 0: GET {server.url}/v1/people/ada%40example.com?domain=example.com"
    assert re.fullmatch(r"  HTTP 200 in \d+\.\d ms", lines[1])
    assert lines[2] == "  response (each path can go in `fields`):"
    assert re.search(
        rf"^ +person\.name +{re.escape(json.dumps(person['person']['name'], ensure_ascii=False))}$", out, re.M
    )
    assert re.search(rf"^ +company\.employees +{person['company']['employees']}$", out, re.M)
    assert lines[-4:] == [
        "  columns from `fields`:",
        f"    name = {json.dumps(person['person']['name'], ensure_ascii=False)}",
        f"    title = {json.dumps(person['person']['employment']['title'], ensure_ascii=False)}",
        f"    size = {person['company']['employees']}",
    ]
    assert seen == ["/auth/token", "/v1/people/ada@example.com"]
    assert files_in(tmp_path) == ["c.yaml", "people.csv"]  # no journal, no output


# --- when and skip_if_filled -------------------------------------------------------------------


def test_when_calls_only_the_matching_rows_the_others_pass_through_with_nulls(
    tmp_path: Path, serve: Serve, demo_env: dict[str, str]
) -> None:
    server, seen = recorded_demo(serve)
    out = tmp_path / "out.parquet"
    cfg = write_config(
        tmp_path / "c.yaml",
        demo_config(
            server.url, input=str(people(tmp_path)), output=str(out), when="email IS NOT NULL AND country = 'US'"
        ),
    )
    assert run_cli(["run", str(cfg), "-q"]) == 0
    assert sorted(p for p in seen if p.startswith("/v1")) == [
        "/v1/people/ada@example.com",
        "/v1/people/alan@bletchley.uk",
    ]
    df = pl.read_parquet(out)
    assert df["id"].to_list() == ["1", "2", "3", "4"]  # as written in the CSV
    assert df["_http_status"].to_list() == [200, None, None, 200]
    assert df["_error"].to_list() == [None, None, None, None]
    assert df["_attempts"].to_list() == [1, None, None, 1]
    assert df["name"].is_null().to_list() == [False, True, True, False]
    summary = json.loads((tmp_path / "out.parquet.summary.json").read_text())
    assert (summary["rows"], summary["ok"], summary["failed"], summary["skipped"]) == (4, 2, 0, 2)


def test_skip_if_filled_calls_only_the_rows_that_lack_a_value_and_keeps_the_others(
    tmp_path: Path, serve: Serve, demo_env: dict[str, str]
) -> None:
    server, seen = recorded_demo(serve)
    src = people(
        tmp_path,
        "id,email,domain,title\n1,ada@example.com,example.com,Countess\n2,grace@navy.mil,navy.mil,\n"
        "3,alan@bletchley.uk,bletchley.uk,Codebreaker\n",
    )
    out = tmp_path / "out.csv"
    cfg = write_config(
        tmp_path / "c.yaml",
        demo_config(
            server.url,
            input=str(src),
            output=str(out),
            fields={"title": "person.employment.title"},
            skip_if_filled=["title"],
        ),
    )
    assert run_cli(["run", str(cfg), "-q"]) == 0
    assert [p for p in seen if p.startswith("/v1")] == ["/v1/people/grace@navy.mil"]
    grace = person_for("grace@navy.mil", "navy.mil")
    assert grace is not None
    df = pl.read_csv(out)
    assert df["title"].to_list() == ["Countess", grace["person"]["employment"]["title"], "Codebreaker"]
    assert df["_http_status"].to_list() == [None, 200, None]
    # A second run has nothing left to fill: no call at all.
    seen.clear()
    cfg2 = write_config(
        tmp_path / "c2.yaml",
        demo_config(
            server.url,
            input=str(out),
            output=str(tmp_path / "again.csv"),
            fields={"title": "person.employment.title"},
            skip_if_filled=["title"],
        ),
    )
    assert run_cli(["run", str(cfg2), "-q"]) == 0
    assert seen == []


# --- summary, error budget, errors-out, JSON logs ----------------------------------------------


def test_summary_table_and_json_and_the_error_budget_exit_code(
    tmp_path: Path, serve: Serve, demo_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    server, _ = recorded_demo(serve)
    out = tmp_path / "out.parquet"
    cfg = write_config(tmp_path / "c.yaml", demo_config(server.url, input=str(people(tmp_path)), output=str(out)))
    # Row 3 has no email: it fails without a call. 1 of 4 rows = 25% failed.
    assert run_cli(["run", str(cfg), "--max-error-rate", "0.2"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"enriched 4 rows in {err[0].split(' in ')[1].split('s ->')[0]}s -> {out}"
    assert err[1] == "  rows     3 ok, 1 failed (bad row data: 1), 0 skipped"
    assert err[2] == "  calls    3 made, 0 retries, 0 throttled (429); 0 rows from the journal, 0 duplicates"
    assert re.fullmatch(r"  latency  p50 \d+(\.\d)? ms, p95 \d+(\.\d)? ms; \d+\.\d calls/s \(no rate limit\)", err[3])
    assert err[4:] == [
        "  auth     1 login, 0 token refreshes",
        f"  summary  {out}.summary.json",
        "error: 1 of 4 rows failed (25.0%), more than the 20.0% that max_error_rate allows. The output is written; "
        "fix the cause, then rerun with --retry-failed to call only the failed rows.",
    ]
    summary = json.loads(Path(f"{out}.summary.json").read_text())
    assert {k: summary[k] for k in ("rows", "ok", "failed", "skipped", "calls", "cached", "logins", "failures")} == {
        "rows": 4, "ok": 3, "failed": 1, "skipped": 0, "calls": 3, "cached": 0, "logins": 1,
        "failures": {"bad row data": 1},
    }  # fmt: skip
    assert (summary["error_rate"], summary["max_error_rate"], summary["over_budget"]) == (0.25, 0.2, True)
    assert summary["latency_p50_ms"] <= summary["latency_p95_ms"]
    assert pl.read_parquet(out).height == 4  # the output is written all the same
    # Within budget (config key, as a percentage): exit 0.
    cfg2 = write_config(
        tmp_path / "c2.yaml",
        demo_config(server.url, input=str(people(tmp_path)), output=str(out), max_error_rate="30%"),
    )
    assert run_cli(["run", str(cfg2), "-q"]) == 0


def test_errors_out_holds_the_failed_rows_with_the_request_redacted(
    tmp_path: Path, serve: Serve, demo_env: dict[str, str]
) -> None:
    server, _ = recorded_demo(serve)
    unknown = next(f"nobody{i}@example.com" for i in range(1000) if person_for(f"nobody{i}@example.com") is None)
    src = people(tmp_path, f"id,email,domain\n1,ada@example.com,example.com\n2,{unknown},example.com\n3,,x.io\n")
    errors = tmp_path / "failed.ndjson"
    cfg = write_config(tmp_path / "c.yaml", demo_config(server.url, input=str(src), output=str(tmp_path / "o.parquet")))
    assert run_cli(["run", str(cfg), "-q", "--errors-out", str(errors)]) == 0
    rows = [json.loads(line) for line in errors.read_text().splitlines()]
    assert [(r["_row"], r["email"], r["_http_status"], r["_attempts"]) for r in rows] == [
        (1, unknown, 404, 1),
        (2, None, None, 0),
    ]
    assert rows[0]["_request_method"] == "GET"
    assert rows[0]["_request_url"] == f"{server.url}/v1/people/{unknown.replace('@', '%40')}?domain=example.com"
    assert json.loads(rows[0]["_request_headers"]) == {"Authorization": "Bearer ***"}
    assert rows[0]["_error"].startswith("HTTP 404 Not Found: ")
    assert rows[1]["_request_url"] is None and "column 'email' is empty" in rows[1]["_error"]
    assert DEFAULT_CLIENT_SECRET.encode() not in errors.read_bytes()


def test_log_format_json_makes_every_stderr_line_an_event(
    tmp_path: Path, serve: Serve, demo_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    server, _ = recorded_demo(serve)
    out = tmp_path / "out.parquet"
    cfg = write_config(tmp_path / "c.yaml", demo_config(server.url, input=str(people(tmp_path)), output=str(out)))
    assert run_cli(["run", str(cfg), "--log-format", "json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert next(e["event"] for e in events) == "start" and events[-1]["event"] == "summary"
    assert all(e["event"] == "progress" for e in events[1:-1])
    assert events[-1]["rows"] == 4 and events[-1]["failed"] == 1 and events[-1]["message"].startswith("enriched 4 rows")
    # Errors too: one JSON line with the exit code.
    assert run_cli(["run", str(tmp_path / "missing.yaml"), "--log-format", "json"]) == 2
    (error,) = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert error["event"] == "error" and error["exit_code"] == 2 and "missing.yaml" in error["message"]


def test_diagnostics_false_leaves_out_attempts_and_latency(
    tmp_path: Path, serve: Serve, demo_env: dict[str, str]
) -> None:
    server, _ = recorded_demo(serve)
    out = tmp_path / "out.parquet"
    cfg = write_config(
        tmp_path / "c.yaml", demo_config(server.url, input=str(people(tmp_path)), output=str(out), diagnostics=False)
    )
    assert run_cli(["run", str(cfg), "-q"]) == 0
    assert pl.read_parquet(out).columns[-3:] == ["size", "_http_status", "_error"]


# --- CSV injection --------------------------------------------------------------------------------


def formula_api(serve: Serve) -> RunningServer:
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"v": '=HYPERLINK("http://evil","x")', "n": "-12.5", "at": "@SUM(A1)", "k": 7})

    app = web.Application()
    app.router.add_get("/v/{id}", answer)
    return serve(app)


@pytest.mark.parametrize(
    ("output", "escape", "expected"),
    [
        pytest.param("o.csv", True, ['\'=HYPERLINK("http://evil","x")', "-12.5", "'@SUM(A1)"], id="csv-escaped"),
        pytest.param("o.csv", False, ['=HYPERLINK("http://evil","x")', "-12.5", "@SUM(A1)"], id="csv-raw-when-off"),
        pytest.param("o.parquet", True, ['=HYPERLINK("http://evil","x")', "-12.5", "@SUM(A1)"], id="parquet-raw"),
    ],
)
def test_api_values_that_would_run_as_formulas_are_neutralised_in_csv(
    tmp_path: Path, serve: Serve, output: str, escape: bool, expected: list[str]
) -> None:
    server = formula_api(serve)
    src = people(tmp_path, "id\n1\n")
    out = tmp_path / output
    cfg = write_config(
        tmp_path / "c.yaml",
        {
            "input": str(src),
            "output": str(out),
            "request": {"url": server.url + "/v/{{id}}"},
            "fields": {"v": "v", "n": "n", "at": "at", "k": "k"},
            "escape_formulas": escape,
        },
    )
    assert run_cli(["run", str(cfg), "-q"]) == 0
    df = pl.read_csv(out, infer_schema=False) if output.endswith(".csv") else pl.read_parquet(out)
    assert [df["v"][0], df["n"][0], df["at"][0]] == expected
    assert str(df["k"][0]) == "7"  # a real number, never touched


# --- schema and init ---------------------------------------------------------------------------


def test_schema_prints_a_json_schema_with_every_top_level_key(capsys: pytest.CaptureFixture[str]) -> None:
    from enrich.config import TOP_KEYS

    assert run_cli(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert set(schema["properties"]) == set(TOP_KEYS)
    assert schema["additionalProperties"] is False


def test_init_writes_a_starter_config_that_validates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    src = people(tmp_path)
    target = tmp_path / "start.yaml"
    assert run_cli(["init", str(src), "--config", str(target)]) == 0
    assert capsys.readouterr().err == (
        f"wrote {target} for {src} (4 columns). Edit the URL and the fields, then `enrich validate {target}` "
        f"and `enrich run {target} --dry-run`.\n"
    )
    monkeypatch.setenv("API_CLIENT_ID", "id-1234")
    monkeypatch.setenv("API_CLIENT_SECRET", "secret-1234")
    assert run_cli(["validate", str(target)]) == 0
    assert "{{email}}" in capsys.readouterr().out
    assert run_cli(["init", str(src), "--config", str(target)]) == 2
    assert capsys.readouterr().err == (
        f"error: {target} already exists. Pick another name with --config PATH, or pass --force.\n"
    )


def test_no_secret_or_token_reaches_any_new_output(
    tmp_path: Path, serve: Serve, demo_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capfd: Any
) -> None:
    """An API key in the query string, the login secret and the issued tokens: none of them in
    validate, dry-run, preview, the JSON log, the summary JSON or the errors-out table."""
    server, _ = recorded_demo(serve)
    TOKENS.clear()
    monkeypatch.setenv("API_KEY", "qk3y-s3cr3t-7781")
    unknown = next(f"nobody{i}@example.com" for i in range(1000) if person_for(f"nobody{i}@example.com") is None)
    src = people(tmp_path, f"id,email,domain\n1,ada@example.com,example.com\n2,{unknown},example.com\n")
    out, errors = tmp_path / "out.csv", tmp_path / "failed.csv"
    request = {"url": server.url + "/v1/people/{{email}}", "params": {"domain": "{{domain}}", "key": "${API_KEY}"}}
    cfg = write_config(
        tmp_path / "c.yaml",
        demo_config(server.url, input=str(src), output=str(out), request=request, errors_out=str(errors)),
    )
    assert run_cli(["validate", str(cfg)]) == 0
    assert run_cli(["run", str(cfg), "--dry-run"]) == 0
    assert run_cli(["preview", str(cfg), "--rows", "2"]) == 0
    assert run_cli(["run", str(cfg), "--log-format", "json"]) == 0
    captured = capfd.readouterr()
    everything = (
        captured.out + captured.err + errors.read_text() + Path(f"{out}.summary.json").read_text() + out.read_text()
    )
    assert len(TOKENS) == 2  # the preview's login and the run's
    for secret in ["qk3y-s3cr3t-7781", DEFAULT_CLIENT_SECRET, *TOKENS]:
        assert secret not in everything
    assert "key=***" in captured.out  # the dry run and the preview show where the key goes
    assert "key=***" in errors.read_text()


# --- review findings: each a case a user hit -----------------------------------------------------


def test_shards_write_their_failed_rows_to_files_of_their_own(
    tmp_path: Path, serve: Serve, demo_env: dict[str, str]
) -> None:
    server, _ = recorded_demo(serve)
    src = people(tmp_path, "id,email,domain\n" + "".join(f"{i},,x{i}.io\n" for i in range(8)))
    cfg = write_config(
        tmp_path / "c.yaml",
        demo_config(server.url, input=str(src), output=str(tmp_path / "o.parquet"), errors_out=str(tmp_path / "f.csv")),
    )
    for shard in ("0/2", "1/2"):
        assert run_cli(["run", str(cfg), "-q", "--shard", shard]) == 0
    parts = [pl.read_csv(tmp_path / f"f.shard-{i}-of-2.csv") for i in (0, 1)]
    assert sorted(parts[0]["_row"].to_list() + parts[1]["_row"].to_list()) == list(range(8))
    assert not (tmp_path / "f.csv").exists()


def test_skip_if_filled_keeps_hand_entered_values_and_never_loses_precision(
    tmp_path: Path, serve: Serve, demo_env: dict[str, str]
) -> None:
    server, _ = recorded_demo(serve)
    known = [e for e in (f"p{i}@example.com" for i in range(60)) if person_for(e) is not None][:2]
    unknown = next(f"nobody{i}@example.com" for i in range(1000) if person_for(f"nobody{i}@example.com") is None)
    # score: a column of numbers, filled by hand in row 0 (whose title is blank, so it is called: the
    # hand-entered score stays, as written); the API's scores join it as their JSON text.
    # title: filled in row 2, whose call fails (404): the hand-entered title must survive.
    src = people(
        tmp_path,
        f"id,email,domain,score,title\n0,{known[0]},example.com,7,\n1,{known[1]},example.com,,\n"
        f"2,{unknown},example.com,,Chief\n",
    )
    out = tmp_path / "out.parquet"
    cfg = write_config(
        tmp_path / "c.yaml",
        demo_config(
            server.url,
            input=str(src),
            output=str(out),
            fields={"score": "person.score", "title": "person.employment.title"},
            skip_if_filled=["score", "title"],
        ),
    )
    assert run_cli(["run", str(cfg), "-q"]) == 0
    df = pl.read_parquet(out)
    p1 = person_for(known[1], "example.com")
    assert p1 is not None
    assert df.schema["score"] == pl.String
    assert df["score"].to_list() == ["7", json.dumps(p1["person"]["score"]), None]
    assert df["title"][2] == "Chief"
    assert df["_http_status"].to_list()[1:] == [200, 404]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param(
            {"when": "id > 'x'"},
            "`when: id > 'x'` cannot be evaluated on people.csv: cannot compare string with numeric type (i64).",
            id="wrong-type",
        ),
        pytest.param({"when": "id"}, "`when: id` gives Int64, not true or false for each row.", id="not-a-condition"),
        pytest.param(
            {"when": "count(*) > 1"},
            "`when: count(*) > 1` gives one value for the whole table, not true or false for each row.",
            id="aggregate",
        ),
        pytest.param({"errors_out": "failed.txt"}, "errors_out failed.txt: cannot write .txt.", id="errors-out-format"),
    ],
)
def test_run_and_dry_run_refuse_bad_when_and_errors_out_before_any_call(
    tmp_path: Path,
    serve: Serve,
    demo_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    overrides: dict[str, Any],
    expected: str,
) -> None:
    server, seen = recorded_demo(serve)
    cfg = write_config(
        tmp_path / "c.yaml",
        demo_config(server.url, input=str(people(tmp_path)), output=str(tmp_path / "o.csv"), **overrides),
    )
    for extra in ([], ["--dry-run"]):
        assert run_cli(["run", str(cfg), "-q", *extra]) == 2
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1, err
    assert seen == []
    assert files_in(tmp_path) == ["c.yaml", "people.csv"]


def test_json_log_lines_stay_json_whatever_a_secret_looks_like(
    tmp_path: Path, serve: Serve, demo_env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    server, _ = recorded_demo(serve)
    monkeypatch.setenv("VERBOSE", "null")  # a ${VAR} value that is also a JSON token
    request = {"url": server.url + "/v1/people/{{email}}", "headers": {"X-Verbose": "${VERBOSE}"}}
    cfg = write_config(
        tmp_path / "c.yaml",
        demo_config(server.url, input=str(people(tmp_path)), output=str(tmp_path / "o.parquet"), request=request),
    )
    assert run_cli(["run", str(cfg), "--log-format", "json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert events[-1]["event"] == "summary" and events[-1]["rate_limit"] is None


@pytest.mark.slow
def test_sharded_rows_without_a_request_land_in_the_same_shard_in_run_extract_and_dry_run(
    tmp_path: Path, serve: Serve, demo_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    server, _ = recorded_demo(serve)
    rows = "".join(f"{i},user{i}@example.com,example.com\n" for i in range(2_700))
    src = people(tmp_path, "rid,email,domain\n" + rows)
    out = tmp_path / "o.parquet"
    cfg = write_config(
        tmp_path / "c.yaml",
        demo_config(server.url, input=str(src), output=str(out), when="rid % 7 <> 0", fields={"n": "person.name"}),
    )
    assert run_cli(["run", str(cfg), "-q", "--shard", "0/3"]) == 0
    shard = tmp_path / "o.shard-0-of-3.parquet"
    ran = pl.read_parquet(shard)["rid"].to_list()
    journal = f"{shard}.journal"
    x = str(tmp_path / "x.parquet")
    assert run_cli(["extract", str(cfg), "-q", "--shard", "0/3", "--output", x, "--journal", journal]) == 0
    assert pl.read_parquet(tmp_path / "x.parquet")["rid"].to_list() == ran
    assert run_cli(["run", str(cfg), "--shard", "0/3", "--dry-run", "1"]) == 0
    assert f"  rows                 {len(ran)}" in capsys.readouterr().out


def test_dry_run_before_the_config_says_where_the_config_goes(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["run", "--dry-run", "job.yaml"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: argument --dry-run: expected a number of rows, got 'job.yaml'. "
        "Put the config first: enrich run job.yaml --dry-run"
    )


def test_a_response_that_echoes_the_token_is_kept_as_the_api_sent_it(
    tmp_path: Path, serve: Serve, demo_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """An API that echoes the request's headers (httpbin does): its answer is the user's data, kept
    exactly in the output, the journal and `extract`; what enrich prints masks the token."""
    seen: list[str] = []
    sent: list[bytes] = []

    async def login(request: web.Request) -> web.Response:
        return web.json_response({"access_token": "tok-echo-5f1e9a7c"})

    async def echo(request: web.Request) -> web.Response:
        seen.append(request.headers["Authorization"])
        sent.append(json.dumps({"headers": {"Authorization": request.headers["Authorization"]}, "ok": True}).encode())
        return web.Response(body=sent[-1], content_type="application/json")

    app = web.Application()
    app.router.add_post("/auth/token", login)
    app.router.add_get("/v/{id}", echo)
    server = serve(app)
    out = tmp_path / "o.csv"
    cfg = write_config(
        tmp_path / "c.yaml",
        {
            "input": str(people(tmp_path, "id\n1\n2\n")),
            "output": str(out),
            "auth": {"url": server.url + "/auth/token", "token_path": "access_token"},
            "request": {"url": server.url + "/v/{{id}}"},
            "fields": {"auth": "headers.Authorization", "ok": "ok"},
        },
    )
    assert run_cli(["run", str(cfg), "-q", "--preview", "2"]) == 0
    assert seen == ["Bearer tok-echo-5f1e9a7c"] * 2
    assert pl.read_csv(out)["auth"].to_list() == ["Bearer tok-echo-5f1e9a7c"] * 2
    printed = capsys.readouterr().out  # the run knows its token: what it prints masks it
    assert "Bearer ***" in printed and "tok-echo" not in printed
    with sqlite3.connect(f"{out}.journal") as db:
        assert [body for (body,) in db.execute("SELECT body FROM calls")] == sent  # byte for byte
    # `extract` rebuilds the same answers from the journal.
    again = tmp_path / "x.csv"
    assert run_cli(["extract", str(cfg), "-q", "--output", str(again), "--journal", f"{out}.journal"]) == 0
    assert again.read_bytes() == out.read_bytes()
