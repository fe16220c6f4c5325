"""Secrets never appear in what enrich prints; the user's data is never masked.

One run's secrets: the login credentials and an API key (from ``${VAR}``), and every token
the API issues. The API here is hostile: it echoes the request's headers and query string
back in its answers, in error bodies (also JSON-escaped, ``\\/`` and ``\\u002B``) and in a
redirect. Then every command a user runs (validate, dry run, preview, run in text and JSON,
extract, --debug on a failure) and every file it writes about the run (summary, the errors
file's requests) is searched for each secret in its plain, percent-encoded and JSON-escaped
forms; and the files of data (the output, the journal, extract's output) are checked to
hold exactly what the API answered, echoed secrets included.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import polars as pl
import pytest
from aiohttp import web
from conftest import RunningServer, Serve, run_cli, write_config

from enrich.config import load_config

CLIENT_SECRET = "cl1ent-s3cret/+with spaces"
API_KEY = "ak3y-7Qz/9+wX=="
USER = "acme"  # a user name: no secret, and the tenant of every email below


def hostile_api(serve: Serve, tokens: list[str]) -> RunningServer:
    """Logs in, then echoes whatever it is sent: in 200 bodies, 403 error bodies (the key escaped
    as some JSON encoders write it) and a redirect."""

    async def login(request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("client_secret") != CLIENT_SECRET:
            return web.json_response({"error": f"bad secret {body.get('client_secret')}"}, status=401)
        token = f"tok-{len(tokens)}-9b7c4e2a1f"
        tokens.append(token)
        return web.json_response({"access_token": token})

    async def person(request: web.Request) -> web.Response:
        echo = {
            "auth": request.headers.get("Authorization"),
            "key": request.headers.get("X-Api-Key"),
            "q": request.query_string,
        }
        kind = request.match_info["id"]
        if kind.startswith("forbidden"):
            escaped = API_KEY.replace("/", "\\/").replace("+", "\\u002B")
            text = '{"error": "nope", "key": "' + escaped + '", "echo": ' + json.dumps(echo) + "}"
            return web.Response(status=403, text=text, content_type="application/json")
        if kind.startswith("away"):
            raise web.HTTPFound(f"http://127.0.0.2:9/steal?{request.query_string}")
        return web.json_response({"name": kind, "email": f"{kind}@{USER}.io", "echo": echo})

    app = web.Application()
    app.router.add_post("/auth/token", login)
    app.router.add_get("/v1/{id}", person)
    return serve(app)


def forms(secret: str) -> set[str]:
    escaped = json.dumps(secret)[1:-1]
    return {
        secret,
        quote(secret, safe=""),
        quote(secret, safe="/"),
        quote_plus(secret),
        escaped,
        escaped.replace("/", "\\/").replace("+", "\\u002B"),
    }


@pytest.mark.slow
def test_no_secret_in_anything_printed_and_every_answer_kept_as_sent(
    tmp_path: Path, serve: Serve, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    tokens: list[str] = []
    server = hostile_api(serve, tokens)
    monkeypatch.setenv("CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("API_KEY", API_KEY)
    monkeypatch.setenv("API_USER", USER)
    src = tmp_path / "in.csv"
    src.write_text("id\nada\nforbidden1\naway1\ngrace\n", encoding="utf-8")
    out = tmp_path / "out.csv"
    config: dict[str, Any] = {
        "input": str(src),
        "output": str(out),
        "errors_out": str(tmp_path / "failed.ndjson"),
        "auth": {
            "url": server.url + "/auth/token",
            "body": {"username": "${API_USER}", "client_secret": "${CLIENT_SECRET}"},
            "token_path": "access_token",
        },
        "request": {
            "url": server.url + "/v1/{{id}}",
            "params": {"key": "${API_KEY}", "tenant": "${API_USER}"},
            "headers": {"X-Api-Key": "${API_KEY}"},
        },
        "fields": {"name": "name", "email": "email", "echo": "echo"},
        "retry": {"attempts": 1},
    }
    cfg = write_config(tmp_path / "job.yaml", config)
    printed: dict[str, str] = {}

    def collect(name: str, argv: list[str], code: int) -> None:
        assert run_cli(argv) == code, name
        captured = capfd.readouterr()
        printed[f"{name} stdout"], printed[f"{name} stderr"] = captured.out, captured.err

    collect("validate", ["validate", str(cfg)], 0)
    collect("dry run", ["run", str(cfg), "--dry-run"], 0)
    collect("preview", ["preview", str(cfg), "--rows", "4"], 0)
    collect("run", ["run", str(cfg), "--preview", "4"], 0)
    collect("run json", ["run", str(cfg), "--fresh", "--log-format", "json", "--debug"], 0)
    again = tmp_path / "again.csv"
    collect("extract", ["extract", str(cfg), "--output", str(again), "--journal", f"{out}.journal"], 0)
    # A failed login, with --debug: the traceback too.
    monkeypatch.setenv("CLIENT_SECRET", CLIENT_SECRET + "-wrong")
    collect("failed login --debug", ["run", str(cfg), "--fresh", "--debug"], 3)
    monkeypatch.setenv("CLIENT_SECRET", CLIENT_SECRET)

    printed["summary"] = (tmp_path / "out.csv.summary.json").read_text()
    errors = [json.loads(line) for line in (tmp_path / "failed.ndjson").read_text().splitlines()]
    printed["errors file"] = json.dumps(errors)
    printed["repr(config)"] = repr(load_config(cfg))
    assert len(tokens) >= 3  # the preview's login and the two runs'
    leaks = [
        (where, secret)
        for secret in (CLIENT_SECRET, CLIENT_SECRET + "-wrong", API_KEY, *tokens)
        for form in forms(secret)
        for where, text in printed.items()
        if form in text
    ]
    assert leaks == []
    assert "Traceback (most recent call last)" in printed["failed login --debug stderr"]

    # Masked where enrich put them: the key in the query and its header, the token's header; the
    # user name (no secret) and the row's values as they are.
    dry = printed["dry run stdout"]
    assert f"{server.url}/v1/ada?key=***&tenant={USER}" in dry and "X-Api-Key: ***" in dry
    assert "Authorization: Bearer ***" in dry
    assert errors[0]["_request_url"] == f"{server.url}/v1/forbidden1?key=***&tenant={USER}"
    assert json.loads(errors[0]["_request_headers"]) == {"X-Api-Key": "***", "Authorization": "Bearer ***"}
    # An error that echoes the key JSON-escaped is masked in the message.
    assert errors[0]["_error"].startswith('HTTP 403 Forbidden: {"error": "nope", "key": "***"')

    # The data: every answer exactly as the API sent it, the user name in it, the secrets it echoed too.
    rows = pl.read_csv(out).to_dicts()
    assert [r["email"] for r in rows] == [f"ada@{USER}.io", None, None, f"grace@{USER}.io"]
    echo = json.loads(rows[0]["echo"])
    assert echo["key"] == API_KEY and echo["auth"] == f"Bearer {tokens[-1]}"  # the last run's answers
    assert f"key={quote_plus(API_KEY, safe='/')}" in echo["q"] or f"key={quote(API_KEY, safe='/')}" in echo["q"]
    assert again.read_bytes() == out.read_bytes()  # extract: the same answers
    with sqlite3.connect(f"{out}.journal") as db:
        bodies = [json.loads(b) for (b,) in db.execute("SELECT body FROM calls WHERE body IS NOT NULL")]
    assert sorted(b["echo"]["key"] for b in bodies) == [API_KEY, API_KEY]


def test_a_user_name_variable_is_shown_in_a_dry_run_and_kept_in_the_answers(
    tmp_path: Path, serve: Serve, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The case that used to mask `acme` everywhere: a user name from ${API_USER} in the login body,
    # emails at acme.io in the rows and in the answers.
    tokens: list[str] = []
    server = hostile_api(serve, tokens)
    monkeypatch.setenv("API_USER", USER)
    monkeypatch.setenv("CLIENT_SECRET", CLIENT_SECRET)
    src = tmp_path / "in.csv"
    src.write_text(f"id\nana+news@{USER}.io\n", encoding="utf-8")
    out = tmp_path / "out.parquet"
    cfg = write_config(
        tmp_path / "job.yaml",
        {
            "input": str(src),
            "output": str(out),
            "auth": {
                "url": server.url + "/auth/token",
                "body": {"username": "${API_USER}", "client_secret": "${CLIENT_SECRET}"},
                "token_path": "access_token",
            },
            "request": {"url": server.url + "/v1/{{id}}"},
            "fields": {"email": "email"},
        },
    )
    assert run_cli(["run", str(cfg), "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert f"curl {server.url}/v1/ana%2Bnews%40{USER}.io -H 'Authorization: Bearer ***'" in dry
    assert run_cli(["run", str(cfg), "-q"]) == 0
    assert pl.read_parquet(out)["email"].to_list() == [f"ana+news@{USER}.io@{USER}.io"]


def test_a_variable_holding_braces_is_sent_as_it_is(
    tmp_path: Path, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A ${VAR} value is a value: `{{id}}` in it is never rendered from the row.
    seen: list[str] = []

    async def item(request: web.Request) -> web.Response:
        seen.append(request.headers["X-Api-Key"])
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/v1/{id}", item)
    server = serve(app)
    monkeypatch.setenv("API_KEY", "k{{id}}-9f9f")
    src = tmp_path / "in.csv"
    src.write_text("id\n7\n", encoding="utf-8")
    cfg = write_config(
        tmp_path / "job.yaml",
        {
            "input": str(src),
            "output": str(tmp_path / "out.csv"),
            "request": {"url": server.url + "/v1/{{id}}", "headers": {"X-Api-Key": "${API_KEY}"}},
        },
    )
    assert run_cli(["run", str(cfg), "-q"]) == 0
    assert seen == ["k{{id}}-9f9f"]
