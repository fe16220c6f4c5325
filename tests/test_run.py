"""End to end: a config, real files, a real aiohttp server on 127.0.0.1, enrich driven as a user drives it.

The servers run in a background thread (``serve``); what they saw (bodies, paths, arrival
times, logins) is recorded in plain lists and dicts and checked after the run.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from aiohttp import web
from conftest import RunningServer, Serve, demo_config, run_cli, summary_table, write_config
from polars.testing import assert_frame_equal

import enrich
from enrich.demo_server import DemoSettings, create_app, person_for

ROOT = Path(__file__).resolve().parent.parent
PEOPLE = ROOT / "sample_data" / "people.csv"
NEW = ["_http_status", "_error", "_attempts", "_latency_ms"]
FAST_RETRY = {"attempts": 3, "backoff": 0.01, "max_backoff": 0.05}


# --- helpers -------------------------------------------------------------------------------


def record_requests(app: web.Application) -> list[tuple[float, str, str]]:
    """Every request the app receives, unrouted ones included: (monotonic time, method, path)."""
    seen: list[tuple[float, str, str]] = []

    @web.middleware
    async def recorder(request: web.Request, handler: Any) -> web.StreamResponse:
        seen.append((time.monotonic(), request.method, request.path))
        return await handler(request)

    app.middlewares.append(recorder)
    return seen


def recorded_demo(serve: Serve, settings: DemoSettings | None = None) -> tuple[RunningServer, list]:
    app = create_app(settings or DemoSettings())
    seen = record_requests(app)
    return serve(app), seen


def expected_person(email: str | None, domain: str | None) -> dict[str, Any] | None:
    """What the demo API answers for a row (None: it answers 404)."""
    if not email:
        return None
    return person_for(email, domain or None)


def simple_config(request: str | dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """A config without login: one call per row, to a URL template or as a whole ``request`` section."""
    request = {"url": request} if isinstance(request, str) else request
    config: dict[str, Any] = {"request": request, "concurrency": 8, "retry": dict(FAST_RETRY)}
    config.update(overrides)
    return config


def run_enrich(tmp_path: Path, config: dict[str, Any], table: pl.DataFrame, *argv: str, out: str = "out.csv") -> Path:
    """Write ``table`` as CSV and ``config`` as YAML, run ``enrich run``; return the output path."""
    inp = tmp_path / "in.csv"
    table.write_csv(inp)
    cfg = write_config(tmp_path / "job.yaml", config)
    output = tmp_path / out
    assert run_cli(["run", str(cfg), "--input", str(inp), "--output", str(output), *argv]) == 0
    return output


# --- 1. the whole table --------------------------------------------------------------------

DEMO_FIELDS = {
    "name": "person.name",
    "title": "person.employment.title",
    "company_size": "company.employees",
    "score": "person.score",
    "verified": "person.verified",
    "tags": "$.person.tags[*]",
}


def check_demo_output(out: pl.DataFrame, inp: pl.DataFrame) -> None:
    """Every input row, in order, input columns first; each row's answer is the demo's."""
    assert out.columns == [*inp.columns, *DEMO_FIELDS, *NEW]
    assert out.height == inp.height
    assert_frame_equal(out.select(inp.columns), inp)
    for row in out.iter_rows(named=True):
        record = expected_person(row["email"], row["domain"])
        if record is None:
            # a blank email is a failed row (whether or not a request was sent); an unknown one is a 404
            if row["email"]:
                assert row["_http_status"] == 404, row
                assert row["_error"].startswith("HTTP 404"), row
                assert row["_attempts"] == 1, row  # a 404 is not retried
                assert row["_latency_ms"] is not None and row["_latency_ms"] >= 0, row
            else:  # a blank email fails without a call
                assert (row["_http_status"], row["_attempts"], row["_latency_ms"]) == (None, 0, None), row
            assert row["_error"], row
            assert all(row[f] is None for f in DEMO_FIELDS), row
            continue
        assert row["_http_status"] == 200, row
        assert row["_error"] is None
        assert row["_attempts"] == 1, row  # the demo API answers at once
        assert row["_latency_ms"] is not None and row["_latency_ms"] >= 0, row
        assert row["name"] == record["person"]["name"]
        assert row["title"] == record["person"]["employment"]["title"]
        assert row["company_size"] == record["company"]["employees"]
        assert row["score"] == pytest.approx(record["person"]["score"])
        assert row["verified"] is record["person"]["verified"]
        assert json.loads(row["tags"]) == record["person"]["tags"]


def test_csv_to_parquet_keeps_every_row_in_order_with_typed_columns(
    serve: Serve, demo_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, seen = recorded_demo(serve)
    cfg = write_config(
        tmp_path / "demo.yaml",
        demo_config(server.url, input=str(PEOPLE), output=str(tmp_path / "people.parquet"), fields=DEMO_FIELDS),
    )
    assert run_cli(["run", str(cfg)]) == 0

    inp = pl.read_csv(PEOPLE, infer_schema=False)  # the input columns, exactly as written: text
    out = pl.read_parquet(tmp_path / "people.parquet")
    check_demo_output(out, inp)
    assert out.schema["company_size"] == pl.Int64
    assert out.schema["name"] == pl.String
    assert out.schema["tags"] == pl.String  # a JSONPath gives a list: JSON text
    assert out.schema["score"] == pl.Float64
    assert out.schema["verified"] == pl.Boolean
    assert out.schema["_http_status"] == pl.Int64
    assert out.schema["_error"] == pl.String
    assert out.schema["_attempts"] == pl.Int64
    assert out.schema["_latency_ms"] == pl.Float64

    # the sample has blank emails and unknown people; both are rows with an error, not a crash
    blank = out.filter(pl.col("email").is_null())
    assert blank.height > 0
    assert blank["_error"].null_count() == 0
    assert blank["name"].null_count() == blank.height
    assert out.filter(pl.col("email").is_not_null() & (pl.col("_http_status") == 404)).height > 0

    calls = [p for _, _, p in seen if p.startswith("/v1/people/") and p != "/v1/people/"]
    # one call per distinct request: rows with the same email and domain share one call
    distinct = inp.filter(pl.col("email").is_not_null()).select("email", "domain").unique().height
    assert distinct < inp.height - blank.height  # the sample has repeated people
    assert len(calls) == len(set(calls)) == distinct
    assert [p for _, _, p in seen if p == "/auth/token"] == ["/auth/token"]
    table = summary_table(capsys.readouterr().err, tmp_path / "people.parquet")
    ok = out["_error"].null_count()
    assert inp.height - ok == blank.height + out.filter(pl.col("_http_status") == 404).height
    assert table["rows"] == (
        f"{ok} ok, {inp.height - ok} failed (HTTP 404: {inp.height - ok - blank.height}, "
        f"bad row data: {blank.height}), 0 skipped"
    )
    assert table["calls"] == (
        f"{distinct} made, 0 retries, 0 throttled (429); 0 rows from the journal, "
        f"{inp.height - blank.height - distinct} duplicates"
    )
    assert table["auth"] == "1 login, 0 token refreshes"


def test_parquet_to_csv(serve: Serve, demo_env: dict[str, str], tmp_path: Path) -> None:
    server, _ = recorded_demo(serve)
    inp = pl.read_csv(PEOPLE, infer_schema_length=None).head(40)
    inp.write_parquet(tmp_path / "people.parquet")
    cfg = write_config(tmp_path / "demo.yaml", demo_config(server.url, fields=DEMO_FIELDS))
    out_path = tmp_path / "people_enriched.csv"
    assert run_cli(["run", str(cfg), "--input", str(tmp_path / "people.parquet"), "--output", str(out_path)]) == 0

    out = pl.read_csv(out_path, infer_schema_length=None)
    check_demo_output(out, inp)
    assert '"[""' in out_path.read_text(encoding="utf-8")  # tags: JSON text, quoted by the CSV writer


def test_ndjson_input_with_nulls_and_missing_keys(serve: Serve, demo_env: dict[str, str], tmp_path: Path) -> None:
    server, seen = recorded_demo(serve)
    records: list[dict[str, Any]] = [
        {"id": 1, "email": "ada.lovelace@acme.io", "domain": "acme.io"},
        {"id": 2, "email": None, "domain": "globex.com"},
        {"id": 3, "email": "zoë.núñez@müller-bau.de"},  # no domain key at all
        {"id": 4, "email": "grace.hopper@navy.mil", "domain": None},
        {"id": 5, "email": "", "domain": "x.io"},
    ]
    inp_path = tmp_path / "people.ndjson"
    inp_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    cfg = write_config(tmp_path / "demo.yaml", demo_config(server.url, fields=DEMO_FIELDS))
    out_path = tmp_path / "out.parquet"
    assert run_cli(["run", str(cfg), "--input", str(inp_path), "--output", str(out_path)]) == 0

    out = pl.read_parquet(out_path)
    assert out["id"].to_list() == [1, 2, 3, 4, 5]
    assert out.columns == ["id", "email", "domain", *DEMO_FIELDS, *NEW]
    check_demo_output(out, pl.read_ndjson(inp_path))
    assert out["_error"][1] is not None and out["_error"][4] is not None  # the blank emails
    assert out["name"][2] == person_for("zoë.núñez@müller-bau.de")["person"]["name"]  # type: ignore[index]
    assert sorted(p for _, _, p in seen if p.startswith("/v1/people/") and p != "/v1/people/") == [
        "/v1/people/ada.lovelace@acme.io",
        "/v1/people/grace.hopper@navy.mil",
        "/v1/people/zoë.núñez@müller-bau.de",
    ]


# A null cell in a URL path placeholder would call the parent path (/v1/people/ here; a list
# endpoint on many APIs), so the row could "succeed" with someone else's data: a row error instead.
def test_blank_path_cell_does_not_call_the_parent_resource(serve: Serve, tmp_path: Path) -> None:
    seen: list[str] = []

    async def listing(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({"people": [{"name": "Somebody Else"}], "name": "Somebody Else"})

    async def one(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({"name": request.match_info["email"]})

    app = web.Application()
    app.router.add_get("/v1/people/", listing)
    app.router.add_get("/v1/people/{email}", one)
    server = serve(app)
    config = simple_config(server.url + "/v1/people/{{email}}", fields={"name": "name"})
    out = pl.read_csv(run_enrich(tmp_path, config, pl.DataFrame({"email": ["a@x.io", None]})))
    assert out["name"].to_list() == ["a@x.io", None]
    assert out["_error"][1] is not None
    assert seen == ["/v1/people/a@x.io"]


def test_header_only_csv_gives_empty_output_with_new_columns_and_no_login(
    serve: Serve, demo_env: dict[str, str], tmp_path: Path
) -> None:
    server, seen = recorded_demo(serve)
    (tmp_path / "empty.csv").write_text("id,email,domain\n", encoding="utf-8")
    cfg = write_config(tmp_path / "demo.yaml", demo_config(server.url))
    for out_name in ("out.parquet", "out.csv"):
        out_path = tmp_path / out_name
        assert run_cli(["run", str(cfg), "--input", str(tmp_path / "empty.csv"), "--output", str(out_path)]) == 0
        out = pl.read_parquet(out_path) if out_name.endswith(".parquet") else pl.read_csv(out_path)
        assert out.height == 0
        assert out.columns == ["id", "email", "domain", "name", "title", "size", *NEW]
        if out_name.endswith(".parquet"):  # a CSV without rows keeps no types
            assert (out.schema["_attempts"], out.schema["_latency_ms"]) == (pl.Int64, pl.Float64)
    assert seen == []  # not even a login


def test_limit_and_input_output_overrides(
    serve: Serve, demo_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, seen = recorded_demo(serve)
    config = demo_config(server.url, input=str(tmp_path / "not_there.csv"), output=str(tmp_path / "never.parquet"))
    cfg = write_config(tmp_path / "demo.yaml", config)
    out_path = tmp_path / "sub" / "first5.csv"
    rc = run_cli(["run", str(cfg), "--input", str(PEOPLE), "--output", str(out_path), "--limit", "5"])
    assert rc == 0
    out = pl.read_csv(out_path)
    assert out["id"].to_list() == [1, 2, 3, 4, 5]
    assert len([p for _, _, p in seen if p.startswith("/v1/")]) == 5
    assert not (tmp_path / "never.parquet").exists()
    assert all(expected_person(r["email"], r["domain"]) for r in pl.read_csv(PEOPLE).head(5).iter_rows(named=True))
    table = summary_table(capsys.readouterr().err, out_path)
    assert table["rows"] == "5 ok, 0 failed, 0 skipped"
    assert table["calls"] == "5 made, 0 retries, 0 throttled (429); 0 rows from the journal, 0 duplicates"


# --- 2. typed JSON bodies ------------------------------------------------------------------


def body_echo(serve: Serve) -> tuple[RunningServer, list[tuple[str, Any]]]:
    """POST /v1/enrich: records (content type, parsed JSON) and answers with what it got."""
    got: list[tuple[str, Any]] = []

    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        got.append((request.headers.get("Content-Type", ""), body))
        return web.json_response({"received": body})

    app = web.Application()
    app.router.add_post("/v1/enrich", handler)
    return serve(app), got


PEOPLE_TYPED = pl.DataFrame(
    {
        "email": ["ada@acme.io", "bob@acme.io", "cy@acme.io"],
        "first_name": ["Ada", "Bob", None],
        "employees": [12, None, 3000],
    }
)


def test_yaml_body_keeps_cell_types_and_remove_nulls_drops_keys(serve: Serve, tmp_path: Path) -> None:
    server, got = body_echo(serve)
    config = simple_config(
        {
            "method": "POST",
            "url": server.url + "/v1/enrich",
            "body": {
                "email": "{{email}}",
                "size": "{{employees}}",
                "greeting": "Hi {{first_name}}",
                "company": {"size": "{{employees}}", "tags": ["{{employees}}", "fixed"]},
            },
            "remove_nulls": True,
        },
        fields={"size_back": "received.size"},
        concurrency=1,
    )
    out = pl.read_csv(run_enrich(tmp_path, config, PEOPLE_TYPED))

    assert all(ct.startswith("application/json") for ct, _ in got)
    bodies = {b["email"]: b for _, b in got}
    assert bodies["ada@acme.io"] == {
        "email": "ada@acme.io",
        "size": 12,
        "greeting": "Hi Ada",
        "company": {"size": 12, "tags": [12, "fixed"]},
    }
    assert type(bodies["ada@acme.io"]["size"]) is int
    # the null cell: no key at all (at every depth); a null inside a list stays (it is not a key)
    assert bodies["bob@acme.io"] == {
        "email": "bob@acme.io",
        "greeting": "Hi Bob",
        "company": {"tags": [None, "fixed"]},
    }
    assert bodies["cy@acme.io"]["greeting"] == "Hi "  # a null formatted into text is ""
    assert out["size_back"].to_list() == [12, None, 3000]


def test_json_text_body_with_bare_placeholders(serve: Serve, tmp_path: Path) -> None:
    server, got = body_echo(serve)
    config = simple_config(
        {
            "method": "POST",
            "url": server.url + "/v1/enrich",
            "body": '{"email": "{{email}}", "size": {{employees}}, "name": {{first_name}}, "src": "enrich"}',
        },
        concurrency=1,
    )
    run_enrich(tmp_path, config, PEOPLE_TYPED)
    bodies = {b["email"]: b for _, b in got}
    assert bodies["ada@acme.io"] == {"email": "ada@acme.io", "size": 12, "name": "Ada", "src": "enrich"}
    # without remove_nulls a null cell is sent as JSON null
    assert bodies["bob@acme.io"] == {"email": "bob@acme.io", "size": None, "name": "Bob", "src": "enrich"}
    assert bodies["cy@acme.io"]["name"] is None


def test_a_cell_cannot_inject_json(serve: Serve, tmp_path: Path) -> None:
    server, got = body_echo(serve)
    evil = 'x", "admin": true, "y": "'
    config = simple_config({"method": "POST", "url": server.url + "/v1/enrich", "body": '{"email": "{{email}}"}'})
    run_enrich(tmp_path, config, pl.DataFrame({"email": [evil]}))
    assert got == [("application/json", {"email": evil})]


# --- 3. percent-encoding --------------------------------------------------------------------

AWKWARD = [
    "a+b@x.io",
    "a/b@x.io",
    "a#b@x.io",
    "a?b=1@x.io",
    "a&b=c@x.io",
    "100%@x.io",
    "%2F@x.io",
    "a b@x.io",
    "zoë.núñez@müller-bau.de",
    "a/../../admin@x.io",
    "plain@x.io",
]


def test_awkward_cells_reach_the_server_unchanged(serve: Serve, tmp_path: Path) -> None:
    got: list[tuple[str, dict[str, list[str]]]] = []

    async def handler(request: web.Request) -> web.Response:
        query = {k: request.query.getall(k) for k in request.query}
        got.append((request.match_info["email"], query))
        return web.json_response({"path_email": request.match_info["email"], "q": request.query.get("email")})

    app = web.Application()
    app.router.add_get("/v1/people/{email}", handler)
    server = serve(app)
    config = simple_config(
        {
            "url": server.url + "/v1/people/{{email}}",
            "params": {"email": "{{email}}", "note": "{{note}} & more", "fixed": "a+b c"},
        },
        fields={"path_email": "path_email", "q": "q"},
        concurrency=4,
    )
    table = pl.DataFrame({"email": AWKWARD, "note": [f"n#{i}?&=%" for i in range(len(AWKWARD))]})
    out = pl.read_csv(run_enrich(tmp_path, config, table))

    assert out["_error"].null_count() == len(AWKWARD), out.filter(pl.col("_error").is_not_null())
    assert out["path_email"].to_list() == AWKWARD
    assert out["q"].to_list() == AWKWARD
    by_email = dict(got)
    assert sorted(by_email) == sorted(AWKWARD)
    for i, email in enumerate(AWKWARD):
        assert by_email[email] == {"email": [email], "note": [f"n#{i}?&=% & more"], "fixed": ["a+b c"]}


# --- 4. 401: one refresh for all workers -----------------------------------------------------


def rotating_api(serve: Serve, invalidate_after: int, relogin_fails: bool = False) -> tuple[RunningServer, dict]:
    """Tokens carry the server's key generation; after ``invalidate_after`` calls the key rotates."""
    state: dict[str, Any] = {"logins": 0, "generation": 1, "calls": 0, "unauthorized": 0, "failed_logins": 0}

    async def login(request: web.Request) -> web.Response:
        if relogin_fails and state["logins"] >= 1:
            state["failed_logins"] += 1
            return web.json_response({"error": "invalid_client"}, status=401)
        state["logins"] += 1
        return web.json_response({"access_token": f"gen{state['generation']}.{secrets.token_hex(12)}"})

    async def item(request: web.Request) -> web.Response:
        state["calls"] += 1
        if state["calls"] == invalidate_after + 1:
            state["generation"] += 1  # every token issued so far is now invalid
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        await asyncio.sleep(0.003)  # keep many calls in flight at once
        if scheme != "Bearer" or not token.startswith(f"gen{state['generation']}."):
            state["unauthorized"] += 1
            return web.json_response({"error": "invalid_token"}, status=401)
        return web.json_response({"id": int(request.match_info["id"])})

    app = web.Application()
    app.router.add_post("/auth/token", login)
    app.router.add_get("/v1/items/{id}", item)
    return serve(app), state


def auth_config(server: RunningServer, **overrides: Any) -> dict[str, Any]:
    auth = {"url": server.url + "/auth/token", "body": {"client_id": "c", "client_secret": "s"}}
    config = simple_config(server.url + "/v1/items/{{id}}", auth={**auth, "token_path": "access_token"})
    config["fields"] = {"got": "id"}
    config.update(overrides)
    return config


def test_invalidated_tokens_are_refreshed_once_under_concurrency(
    serve: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, state = rotating_api(serve, invalidate_after=40)
    rows = 300
    out_path = run_enrich(tmp_path, auth_config(server, concurrency=16), pl.DataFrame({"id": range(rows)}))

    assert state["logins"] == 2  # the first login and exactly one refresh
    assert state["unauthorized"] > 1  # several workers saw the 401 at once
    out = pl.read_csv(out_path)
    assert out["got"].to_list() == list(range(rows))
    assert out["_http_status"].to_list() == [200] * rows
    assert out["_error"].null_count() == rows
    # a rejected token is not the call's fault: the retry after the refresh is not a new attempt
    assert out["_attempts"].to_list() == [1] * rows
    table = summary_table(capsys.readouterr().err, out_path)
    assert table["rows"] == f"{rows} ok, 0 failed, 0 skipped"
    assert table["auth"] == "2 logins, 1 token refresh"


def revoking_api(serve: Serve, uses: int, refuse: frozenset[int] = frozenset()) -> tuple[RunningServer, dict]:
    """Each token is revoked once ``uses`` calls got through with it (token rotation); the ids in
    ``refuse`` are answered 403 whatever the token (records this account may not read)."""
    state: dict[str, Any] = {"logins": 0, "used": Counter(), "revoked_401": 0, "refused_403": 0}

    async def login(request: web.Request) -> web.Response:
        state["logins"] += 1
        return web.json_response({"access_token": f"t{state['logins']}.{secrets.token_hex(8)}"})

    async def item(request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        await asyncio.sleep(0.002)  # keep many calls in flight at once
        if state["used"][token] >= uses:
            state["revoked_401"] += 1
            return web.json_response({"error": "token revoked"}, status=401)
        item_id = int(request.match_info["id"])
        if item_id in refuse:
            state["refused_403"] += 1
            return web.json_response({"error": "not allowed to read this record"}, status=403)
        state["used"][token] += 1
        return web.json_response({"id": item_id})

    app = web.Application()
    app.router.add_post("/auth/token", login)
    app.router.add_get("/v1/items/{id}", item)
    return serve(app), state


@pytest.mark.slow
@pytest.mark.parametrize(
    ("uses", "concurrency", "rows"),
    [
        pytest.param(30, 8, 600, id="revoked after 30 uses, 8 in flight"),
        pytest.param(10, 16, 1500, id="revoked after 10 uses, 16 in flight: more in flight than uses"),
    ],
)
def test_a_rotated_token_costs_no_row(
    serve: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str], uses: int, concurrency: int, rows: int
) -> None:
    # A token other calls got through with, then rejected, was rotated: a new one is fetched (once,
    # whatever the number of workers that saw the 401) and the call sent again, however often.
    server, state = revoking_api(serve, uses)
    out_path = run_enrich(tmp_path, auth_config(server, concurrency=concurrency), pl.DataFrame({"id": range(rows)}))
    out = pl.read_csv(out_path)
    assert out["_error"].drop_nulls().to_list() == []
    assert out["got"].to_list() == list(range(rows))
    assert state["revoked_401"] > 0  # the rotations did happen under the run
    # One login per token's worth of calls (each token serves `uses` rows), not one per 401.
    assert rows // uses <= state["logins"] <= rows // uses + 1
    assert summary_table(capsys.readouterr().err, out_path)["rows"] == f"{rows} ok, 0 failed, 0 skipped"


def test_a_record_refused_with_a_good_token_fails_its_row_and_costs_no_login(
    serve: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `refresh_on: {statuses: [403]}` counts a 403 as a rejected token; when calls sent after it get
    # through with the same token, the record was refused, not the token: the row fails, no login.
    refused = frozenset(range(5, 200, 20))
    server, state = revoking_api(serve, uses=10**6, refuse=refused)
    config = auth_config(server, concurrency=8)
    config["auth"]["refresh_on"] = {"statuses": [403]}
    out_path = run_enrich(tmp_path, config, pl.DataFrame({"id": range(200)}))
    out = pl.read_csv(out_path)
    failed = out.filter(pl.col("_error").is_not_null())
    assert failed["id"].to_list() == sorted(refused)
    assert failed["_http_status"].to_list() == [403] * len(refused)
    assert all(e.startswith("HTTP 403 Forbidden: ") for e in failed["_error"])
    assert state["logins"] == 1
    warning, _, rest = capsys.readouterr().err.partition("\n")
    assert "refresh_on lists HTTP 403 with no `body` pattern" in warning
    assert summary_table(rest, out_path)["auth"] == "1 login, 0 token refreshes"


def test_failed_relogin_aborts_the_run_and_writes_nothing(
    serve: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, state = rotating_api(serve, invalidate_after=10, relogin_fails=True)
    (tmp_path / "in.csv").write_text("id\n" + "".join(f"{i}\n" for i in range(60)), encoding="utf-8")
    out_path = tmp_path / "out" / "result.csv"
    out_path.parent.mkdir()
    out_path.write_text("previous run\n", encoding="utf-8")
    cfg = write_config(tmp_path / "job.yaml", auth_config(server, concurrency=8))
    rc = run_cli(["run", str(cfg), "--input", str(tmp_path / "in.csv"), "--output", str(out_path)])

    assert rc == 3
    err = capsys.readouterr().err
    assert err.startswith("error: login failed: POST ") and "HTTP 401" in err
    assert "Traceback" not in err
    assert state["failed_logins"] >= 1
    assert out_path.read_text(encoding="utf-8") == "previous run\n"
    # the calls made before the abort are kept in the journal, for the rerun
    assert sorted(p.name for p in out_path.parent.iterdir()) == [
        "result.csv",
        "result.csv.journal",
        "result.csv.summary.json",  # status aborted, exit code 3
    ]


def never_accepting_api(serve: Serve) -> tuple[RunningServer, dict[str, int]]:
    state = {"logins": 0, "calls": 0}

    async def login(request: web.Request) -> web.Response:
        state["logins"] += 1
        return web.json_response({"access_token": f"token-{state['logins']}-{secrets.token_hex(8)}"})

    async def item(request: web.Request) -> web.Response:
        state["calls"] += 1
        return web.json_response({"error": "invalid_token"}, status=401)

    app = web.Application()
    app.router.add_post("/auth/token", login)
    app.router.add_get("/v1/items/{id}", item)
    return serve(app), state


def test_token_rejected_forever_stops_the_run_after_one_relogin(
    serve: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, state = never_accepting_api(serve)
    inp = tmp_path / "in.csv"
    pl.DataFrame({"id": range(20)}).write_csv(inp)
    cfg = write_config(tmp_path / "job.yaml", auth_config(server, concurrency=4))
    out = tmp_path / "out.csv"
    code = run_cli(["run", str(cfg), "--input", str(inp), "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 3
    assert "the API rejected a freshly issued token" in err
    assert state["logins"] == 2  # the first login, one refresh, then stop: no login storm
    # The calls in flight with the first token, their one retry each with the fresh token (a row
    # rejected again fails alone: it may be a 403 for that record), and the next round, whose
    # rejection of a token no call got through with stops the run.
    assert state["calls"] <= 4 * 3
    assert not out.exists()


# --- 5. 429, 5xx, bad bodies, timeouts -------------------------------------------------------


def throttling_api(serve: Serve, retry_after: Callable[[], str], throttle_at: int = 6) -> tuple[RunningServer, dict]:
    """Answers the ``throttle_at``-th call with 429 + Retry-After; records arrival times (epoch)."""
    state: dict[str, Any] = {"arrivals": [], "t429": None, "throttled_id": None, "retry_after": None}

    async def item(request: web.Request) -> web.Response:
        item_id = request.match_info["id"]
        state["arrivals"].append((time.time(), item_id))
        if len(state["arrivals"]) == throttle_at:
            state["retry_after"] = retry_after()
            state["throttled_id"] = item_id
            state["t429"] = time.time()
            return web.json_response(
                {"error": "rate_limited"}, status=429, headers={"Retry-After": state["retry_after"]}
            )
        await asyncio.sleep(0.02)
        return web.json_response({"id": item_id})

    app = web.Application()
    app.router.add_get("/v1/items/{id}", item)
    return serve(app), state


def check_pause(state: dict[str, Any], resume_at: float, rows: int) -> None:
    """No call arrives between the 429 (plus the calls already on the wire) and the end of Retry-After."""
    t429 = state["t429"]
    assert t429 is not None
    # Calls a worker sent before the client read the 429 can still land just after it: 0.1 s of slack.
    during = [(round(t - t429, 3), i) for t, i in state["arrivals"] if t429 + 0.1 < t < resume_at - 0.01]
    assert during == [], f"calls arrived while every worker should have been paused: {during}"
    after = [i for t, i in state["arrivals"] if t >= resume_at - 0.01]
    assert state["throttled_id"] in after  # the throttled row was sent again after the pause
    assert len(after) >= rows - 6 - 8  # and the other workers waited too
    assert len(state["arrivals"]) == rows + 1


@pytest.mark.slow
@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_429_retry_after_pauses_every_worker(
    serve: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str], form: str
) -> None:
    if form == "seconds":
        server, state = throttling_api(serve, lambda: "1")
    else:
        # An HTTP date has whole seconds: aim 0.5-1.5 s ahead so the pause is long enough to see.
        server, state = throttling_api(serve, lambda: formatdate(math.ceil(time.time() + 0.5), usegmt=True))
    rows = 80  # enough that the other workers would still be sending when the 429 comes
    config = simple_config(server.url + "/v1/items/{{id}}", fields={"got": "id"}, concurrency=8)
    out_path = run_enrich(tmp_path, config, pl.DataFrame({"id": range(rows)}))
    out = pl.read_csv(out_path)

    assert out["got"].to_list() == list(range(rows))
    assert out["_error"].null_count() == rows
    if form == "seconds":
        resume_at = state["t429"] + 1.0
    else:
        resume_at = parsedate_to_datetime(state["retry_after"]).timestamp()
        assert resume_at - state["t429"] > 0.4
    check_pause(state, resume_at, rows)
    throttled = out.filter(pl.col("got") == int(state["throttled_id"]))
    assert throttled["_attempts"].to_list() == [2]  # the 429, then the answer
    assert out["_attempts"].sum() == rows + 1
    table = summary_table(capsys.readouterr().err, out_path)
    assert table["rows"] == f"{rows} ok, 0 failed, 0 skipped"
    assert table["calls"] == f"{rows + 1} made, 1 retry, 1 throttled (429); 0 rows from the journal, 0 duplicates"


def flaky_api(serve: Serve) -> tuple[RunningServer, dict[str, int]]:
    hits: dict[str, int] = {}

    async def item(request: web.Request) -> web.Response:
        item_id = request.match_info["id"]
        hits[item_id] = hits.get(item_id, 0) + 1
        if item_id.startswith("flaky") and hits[item_id] == 1:
            return web.json_response({"error": "overloaded"}, status=503)
        if item_id == "down":
            return web.Response(status=502, text="upstream is down")
        if item_id == "html":
            return web.Response(text="<html><body>Welcome! Please sign in.</body></html>", content_type="text/html")
        if item_id == "slow":
            await asyncio.sleep(0.6)
        if item_id == "gone":
            return web.json_response({"error": "not_found"}, status=404)
        if item_id == "empty":
            return web.Response(status=204)
        return web.json_response({"id": item_id})

    app = web.Application()
    app.router.add_get("/v1/items/{id}", item)
    return serve(app), hits


@pytest.mark.slow
def test_retries_and_row_errors(serve: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server, hits = flaky_api(serve)
    ids = ["ok1", "flaky1", "down", "html", "slow", "gone", "flaky2", "empty", "ok2"]
    config = simple_config(server.url + "/v1/items/{{id}}", fields={"got": "id"}, timeout=0.15, concurrency=4)
    out_path = run_enrich(tmp_path, config, pl.DataFrame({"id": ids}))
    rows = {r["id"]: r for r in pl.read_csv(out_path).iter_rows(named=True)}
    assert list(rows) == ids

    for ok in ("ok1", "ok2", "flaky1", "flaky2"):
        assert (rows[ok]["got"], rows[ok]["_http_status"], rows[ok]["_error"]) == (ok, 200, None)
    assert hits["flaky1"] == 2 and hits["flaky2"] == 2  # the 503 was retried
    assert rows["down"]["_http_status"] == 502
    assert rows["down"]["_error"] == "HTTP 502 Bad Gateway: upstream is down (gave up after 3 attempts)"
    assert hits["down"] == 3
    assert rows["html"]["_http_status"] == 200
    assert rows["html"]["_error"].startswith("response is not JSON (HTTP 200, text/html)")
    assert hits["html"] == 1  # a 200 is not retried
    assert rows["slow"]["_http_status"] is None
    assert rows["slow"]["_error"] == "timed out after 0.15s (gave up after 3 attempts)"
    assert rows["gone"]["_http_status"] == 404 and rows["gone"]["_error"].startswith("HTTP 404")
    assert hits["gone"] == 1
    assert (rows["empty"]["_http_status"], rows["empty"]["_error"], rows["empty"]["got"]) == (204, None, None)
    assert {i: r["_attempts"] for i, r in rows.items()} == {i: hits[i] for i in ids}  # each call the server got
    assert all(r["_latency_ms"] is not None and r["_latency_ms"] >= 0 for r in rows.values())

    summary = capsys.readouterr().err
    assert "5 ok, 4 failed" in summary
    for kind in ("HTTP 502: 1", "bad response: 1", "timeout: 1", "HTTP 404: 1"):
        assert kind in summary
    assert "6 retries" in summary  # flaky1, flaky2, down x2, slow x2


# --- 6. the rate limit, counted at the server ------------------------------------------------


@pytest.mark.slow
def test_rate_limit_holds_at_the_server(serve: Serve, demo_env: dict[str, str], tmp_path: Path) -> None:
    server, seen = recorded_demo(serve)
    cfg = write_config(tmp_path / "demo.yaml", demo_config(server.url, concurrency=4))
    rc = run_cli(
        [
            "run",
            str(cfg),
            *("--input", str(PEOPLE), "--output", str(tmp_path / "out.csv")),
            *("--limit", "60", "--rate-limit", "20/s", "--concurrency", "16", "-q"),
        ]
    )
    assert rc == 0
    times = sorted(t for t, _, p in seen if p.startswith("/v1/people"))
    head = pl.read_csv(PEOPLE).head(60).filter(pl.col("email").is_not_null())
    assert len(times) == head.select("email", "domain").unique().height  # one call per distinct request
    assert len(times) > 40  # enough calls to fill two one-second windows
    busiest = max(sum(1 for u in times[i:] if u < t + 1.0) for i, t in enumerate(times))
    # The limiter starts requests 1/20 s apart, so a 1-second window holds 20 starts (the
    # virtual-time tests in test_ratelimit.py check that exactly). The server sees arrivals,
    # not starts: on a loaded machine one arrival can be late by up to an interval (50 ms)
    # and so join the next window. So 21, and no more; a burst or a pacing error gives far more.
    assert busiest <= 21, busiest
    first_half_second = sum(1 for t in times if t < times[0] + 0.5)
    assert first_half_second <= 11, first_half_second  # no burst at the start (a full bucket would give 20)


# --- 12. the library ------------------------------------------------------------------------


def test_library_enrich_with_a_dict_a_path_and_a_config(
    serve: Serve, demo_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, seen = recorded_demo(serve)
    df = pl.read_csv(PEOPLE, infer_schema_length=None).head(25)
    config = demo_config(server.url, fields=DEMO_FIELDS)
    path = write_config(tmp_path / "demo.yaml", config)

    results = [enrich.enrich(df, config), enrich.enrich(df, path), enrich.enrich(df, str(path))]
    results.append(enrich.enrich(df, enrich.load_config(path)))
    for result in results:
        assert isinstance(result, enrich.RunResult)
        check_demo_output(result.frame, df)
        s = result.summary
        assert isinstance(s, enrich.Summary)
        assert (s.rows, s.ok + s.failed, s.logins) == (25, 25, 1)
        assert s.ok == result.frame["_error"].null_count() > 20
        assert s.failed == sum(s.failures.values()) >= 1  # the first 25 rows include a 404
        assert s.ok <= s.calls <= 25
    assert capsys.readouterr() == ("", "")  # the library never prints
    assert sum(1 for _, _, p in seen if p == "/auth/token") == 4


def test_library_rejects_a_template_column_the_frame_lacks(serve: Serve, demo_env: dict[str, str]) -> None:
    server, seen = recorded_demo(serve)
    with pytest.raises(enrich.ConfigError, match=re.escape("uses {{email}}, which is not a column of the input table")):
        enrich.enrich(pl.DataFrame({"mail": ["a@x.io"]}), demo_config(server.url))
    assert seen == []


# --- redirects and bad header values ----------------------------------------------------------


def test_redirects_are_followed_within_the_origin_and_never_carry_secrets_elsewhere(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_TOKEN", "tok-SECRET-123456")
    elsewhere: list[dict[str, str]] = []

    async def other(request: web.Request) -> web.Response:
        elsewhere.append(dict(request.headers))
        return web.json_response({"id": "stolen"})

    other_app = web.Application()
    other_app.router.add_get("/{tail:.*}", other)
    other_server = serve(other_app)  # another port on 127.0.0.1: another origin

    async def item(request: web.Request) -> web.Response:
        item_id = request.match_info["id"]
        if item_id == "moved":
            raise web.HTTPFound("/v1/items/final")
        if item_id == "away":
            raise web.HTTPFound(other_server.url + "/v1/items/away")
        return web.json_response({"id": item_id, "token": request.headers.get("X-Api-Token") is not None})

    app = web.Application()
    app.router.add_get("/v1/items/{id}", item)
    server = serve(app)
    config = simple_config(
        {"url": server.url + "/v1/items/{{id}}", "headers": {"X-Api-Token": "${API_TOKEN}"}},
        fields={"got": "id", "had_token": "token"},
    )
    out = pl.read_csv(run_enrich(tmp_path, config, pl.DataFrame({"id": ["moved", "away", "plain"]})))
    assert out["got"].to_list() == ["final", None, "plain"]  # same origin: followed, with the header
    assert out["had_token"].to_list() == [True, None, True]
    assert out["_http_status"].to_list() == [200, 302, 200]
    assert out["_error"][1].startswith("HTTP 302: redirected to another origin (http://127.0.0.1:")
    assert elsewhere == []  # the other origin got no request at all, so no secret


def test_a_line_break_in_a_header_value_fails_the_row_not_the_run(serve: Serve, tmp_path: Path) -> None:
    app = web.Application()

    async def item(request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["id"]})

    app.router.add_get("/v1/items/{id}", item)
    server = serve(app)
    config = simple_config(
        {"url": server.url + "/v1/items/{{id}}", "headers": {"X-Note": "{{note}}"}},
        fields={"got": "id"},
    )
    table = pl.DataFrame({"id": ["a", "b"], "note": ["fine", "evil\r\nX-Injected: 1"]})
    out = pl.read_csv(run_enrich(tmp_path, config, table))
    assert out["got"].to_list() == ["a", None]
    assert out["_error"][1] == "request.headers.X-Note: the value holds a line break or control character"
