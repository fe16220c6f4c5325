"""Every secret of a run, searched for in everything the run leaves behind.

One run's secrets: the login credentials and an API key (from ``${VAR}``), and every token
the API issues. The API here is hostile: it echoes the request's headers and query string
back in its answers, in error bodies and in a redirect. Then every command a user runs
(validate, dry run, preview, run in text and JSON, extract, --debug on a failure) and every
file it writes (output, journal, summary, errors-out) is searched for each secret in its
plain, percent-encoded and JSON-escaped forms.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from aiohttp import web
from conftest import RunningServer, Serve, run_cli, write_config

from enrich.config import load_config

CLIENT_SECRET = "cl1ent-s3cret/+with spaces"
API_KEY = "ak3y-7Qz/9+wX=="


def hostile_api(serve: Serve, tokens: list[str]) -> RunningServer:
    """Logs in, then echoes whatever it is sent: in 200 bodies, 403 error bodies and a redirect."""

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
            return web.json_response({"error": "nope", "echo": echo}, status=403)
        if kind.startswith("away"):
            raise web.HTTPFound(f"http://127.0.0.2:9/steal?{request.query_string}")
        return web.json_response({"name": kind, "echo": echo})

    app = web.Application()
    app.router.add_post("/auth/token", login)
    app.router.add_get("/v1/{id}", person)
    return serve(app)


def forms(secret: str) -> set[str]:
    return {secret, quote(secret, safe=""), quote(secret, safe="/"), quote_plus(secret), json.dumps(secret)[1:-1]}


def test_no_secret_of_a_run_appears_anywhere(
    tmp_path: Path, serve: Serve, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    tokens: list[str] = []
    server = hostile_api(serve, tokens)
    monkeypatch.setenv("CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("API_KEY", API_KEY)
    src = tmp_path / "in.csv"
    src.write_text("id\nada\nforbidden1\naway1\ngrace\n", encoding="utf-8")
    out = tmp_path / "out.csv"
    config: dict[str, Any] = {
        "input": str(src),
        "output": str(out),
        "errors_out": str(tmp_path / "failed.ndjson"),
        "auth": {
            "url": server.url + "/auth/token",
            "body": {"client_id": "me", "client_secret": "${CLIENT_SECRET}"},
            "token_path": "access_token",
        },
        "request": {
            "url": server.url + "/v1/{{id}}",
            "params": {"key": "${API_KEY}"},
            "headers": {"X-Api-Key": "${API_KEY}"},
        },
        "fields": {"name": "name", "echo": "echo"},
        "retry": {"attempts": 1},
    }
    cfg = write_config(tmp_path / "job.yaml", config)
    texts: dict[str, str] = {}

    def collect(name: str, argv: list[str], code: int) -> None:
        assert run_cli(argv) == code, name
        captured = capfd.readouterr()
        texts[f"{name} stdout"], texts[f"{name} stderr"] = captured.out, captured.err

    collect("validate", ["validate", str(cfg)], 0)
    collect("dry run", ["run", str(cfg), "--dry-run"], 0)
    collect("preview", ["preview", str(cfg), "--rows", "4"], 0)
    collect("run", ["run", str(cfg), "--preview", "4"], 0)
    collect("run json", ["run", str(cfg), "--fresh", "--log-format", "json", "--debug"], 0)
    collect("extract", ["extract", str(cfg), "--output", str(tmp_path / "again.csv"), "--journal", f"{out}.journal"], 0)
    # A failed login, with --debug: the traceback too.
    monkeypatch.setenv("CLIENT_SECRET", CLIENT_SECRET + "-wrong")
    collect("failed login --debug", ["run", str(cfg), "--fresh", "--debug"], 3)
    monkeypatch.setenv("CLIENT_SECRET", CLIENT_SECRET)

    for path in sorted(tmp_path.iterdir()):
        if path.is_file() and path.name != "job.yaml":
            texts[path.name] = path.read_bytes().decode("utf-8", "replace")
    texts["repr(config)"] = repr(load_config(cfg))
    assert len(tokens) >= 3  # the preview's login and the two runs'
    assert "out.csv.journal" in texts and "failed.ndjson" in texts and "out.csv.summary.json" in texts

    leaks = [
        (where, secret)
        for secret in (CLIENT_SECRET, CLIENT_SECRET + "-wrong", API_KEY, *tokens)
        for form in forms(secret)
        for where, text in texts.items()
        if form in text
    ]
    assert leaks == []
    assert "Traceback (most recent call last)" in texts["failed login --debug stderr"]
    # The answers still arrive, with the echoed secrets masked.
    assert "Bearer ***" in texts["out.csv"] and "HTTP 403 Forbidden" in texts["out.csv"]
    assert "redirected to another origin" in texts["out.csv"]
