"""Auth through a whole `enrich run`: the token manager wired into the client, end to end.

tests/test_auth.py checks each auth kind's TokenManager against real servers; here the CLI
runs whole tables against them: short-lived tokens renewed before they expire (counted at
the server), an API key in the query string, HTTP Basic, and a 403 that means "expired".
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from aiohttp import web
from conftest import RunningServer, Serve, demo_config, known_people, run_cli, write_config

from enrich.demo_server import DemoSettings, create_app


@pytest.mark.slow
def test_short_lived_tokens_are_renewed_before_they_expire_in_a_run(
    tmp_path: Path, serve: Serve, demo_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """2-second tokens over a ~6-second run at 100 calls/s: no call reaches the API with an
    expired token, and the logins are one per token lifetime, not a storm."""
    server = serve(create_app(DemoSettings(token_ttl=2.0)))
    out = tmp_path / "out.parquet"
    cfg = write_config(
        tmp_path / "c.yaml",
        demo_config(
            server.url,
            input=str(known_people(tmp_path, with_id=True, rows=600)),
            output=str(out),
            rate_limit="100/s",
            auth={
                "url": f"{server.url}/auth/token",
                "body": {"client_id": "${DEMO_CLIENT_ID}", "client_secret": "${DEMO_CLIENT_SECRET}"},
                "token_path": "access_token",
                "expires_in_path": "expires_in",
            },
        ),
    )
    assert run_cli(["run", str(cfg), "-q"]) == 0
    state = server.state
    assert state.expired == 0 and state.unauthorized == 0
    assert pl.read_parquet(out)["_http_status"].to_list() == [200] * 600
    summary = json.loads(Path(f"{out}.summary.json").read_text())
    # one login per token lifetime less its margin (0.5 s for 2-second tokens), not a storm
    assert 3 <= summary["logins"] <= summary["call_seconds"] / 1.5 + 2, summary
    assert summary["logins"] == state.logins


def static_api(serve: Serve, check: Callable[[web.Request], bool]) -> tuple[RunningServer, list[dict[str, Any]]]:
    """An API that answers 200 when ``check(request)`` passes, else 401; it records what came."""
    seen: list[dict[str, Any]] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append({"query": dict(request.query), "auth": request.headers.get("Authorization")})
        if not check(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.json_response({"id": request.match_info["id"]})

    app = web.Application()
    app.router.add_get("/v/{id}", answer)
    return serve(app), seen


@pytest.mark.parametrize(
    ("auth", "check"),
    [
        pytest.param(
            {"type": "header", "token": "${API_KEY}", "query_param": "api_key"},
            lambda r: r.query.get("api_key") == "k3y/with+chars=" and "Authorization" not in r.headers,
            id="api-key-in-the-query",
        ),
        pytest.param(
            {"type": "bearer", "token": "${API_KEY}"},
            lambda r: r.headers.get("Authorization") == "Bearer k3y/with+chars=",
            id="bearer",
        ),
        pytest.param(
            {"type": "basic", "username": "me", "password": "${API_KEY}"},
            lambda r: r.headers.get("Authorization") == "Basic " + base64.b64encode(b"me:k3y/with+chars=").decode(),
            id="basic",
        ),
    ],
)
def test_static_auth_kinds_in_a_run_and_in_the_dry_run(
    tmp_path: Path,
    serve: Serve,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    auth: dict[str, Any],
    check: Callable[[web.Request], bool],
) -> None:
    monkeypatch.setenv("API_KEY", "k3y/with+chars=")
    server, seen = static_api(serve, check)
    src = tmp_path / "in.csv"
    src.write_text("id\n1\n2\n3\n", "utf-8")
    out = tmp_path / "out.csv"
    cfg = write_config(
        tmp_path / "c.yaml",
        {"input": str(src), "output": str(out), "auth": auth, "request": {"url": server.url + "/v/{{id}}"}},
    )
    assert run_cli(["run", str(cfg), "--dry-run", "1"]) == 0
    dry = capsys.readouterr().out
    assert seen == [] and "k3y" not in dry
    assert ("api_key=***" in dry) == ("query_param" in auth)
    assert run_cli(["run", str(cfg), "-q"]) == 0
    assert pl.read_csv(out)["_http_status"].to_list() == [200, 200, 200]
    assert len(seen) == 3
    assert "k3y" not in out.read_text() and b"k3y" not in Path(f"{out}.journal").read_bytes()


def test_a_403_that_says_expired_renews_the_token_once_for_all_workers(
    tmp_path: Path, serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    """`auth.refresh_on`: this API signals an expired token with 403 and a body; the first token
    is 'expired' after 5 calls. One new login, every row answered."""
    logins: list[str] = []
    calls: dict[str, int] = {}

    async def login(request: web.Request) -> web.Response:
        logins.append(f"t{len(logins)}")
        return web.json_response({"access_token": logins[-1]})

    async def answer(request: web.Request) -> web.Response:
        token = request.headers["Authorization"].removeprefix("Bearer ")
        calls[token] = calls.get(token, 0) + 1
        if token == "t0" and calls[token] > 5:
            return web.json_response({"error": "token expired"}, status=403)
        if request.match_info["id"] == "forbidden":  # a real 403: not a token problem
            return web.json_response({"error": "not yours"}, status=403)
        return web.json_response({"id": request.match_info["id"]})

    app = web.Application()
    app.router.add_post("/login", login)
    app.router.add_get("/v/{id}", answer)
    server = serve(app)
    src = tmp_path / "in.csv"
    src.write_text("id\n" + "".join(f"{i}\n" for i in range(40)) + "forbidden\n", "utf-8")
    out = tmp_path / "out.csv"
    cfg = write_config(
        tmp_path / "c.yaml",
        {
            "input": str(src),
            "output": str(out),
            "auth": {
                "url": server.url + "/login",
                "token_path": "access_token",
                "refresh_on": {"statuses": [403], "body": "token expired"},
            },
            "request": {"url": server.url + "/v/{{id}}"},
            "concurrency": 8,
        },
    )
    assert run_cli(["run", str(cfg), "-q"]) == 0
    assert logins == ["t0", "t1"]
    statuses = pl.read_csv(out)["_http_status"].to_list()
    assert statuses == [200] * 40 + [403]


@pytest.mark.parametrize("status", [307, 308, 302])
def test_a_login_that_redirects_is_not_followed_and_the_credentials_go_nowhere_else(
    tmp_path: Path, serve: Serve, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], status: int
) -> None:
    monkeypatch.setenv("SECRET", "login-s3cret-4d2e")
    elsewhere: list[str] = []

    async def steal(request: web.Request) -> web.Response:
        elsewhere.append(await request.text())
        return web.json_response({"access_token": "evil-token"})

    other = web.Application()
    other.router.add_route("*", "/{tail:.*}", steal)
    thief = serve(other)

    async def login(request: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Location": f"{thief.url}/token"})

    app = web.Application()
    app.router.add_post("/login", login)
    server = serve(app)
    src = tmp_path / "in.csv"
    src.write_text("id\n1\n", "utf-8")
    cfg = write_config(
        tmp_path / "c.yaml",
        {
            "input": str(src),
            "output": str(tmp_path / "o.csv"),
            "auth": {"url": server.url + "/login", "body": {"secret": "${SECRET}"}, "token_path": "access_token"},
            "request": {"url": server.url + "/v/{{id}}"},
        },
    )
    assert run_cli(["run", str(cfg), "-q"]) == 3
    assert elsewhere == []
    err = capsys.readouterr().err
    assert err == (
        f"error: login failed: POST {server.url}/login redirected (HTTP {status}) to {thief.url}/token, which is not "
        "followed: the credentials would go with it. Set auth.url to the URL that answers with the token.\n"
    )


@pytest.mark.slow
def test_one_forbidden_record_fails_its_row_without_stopping_the_run(
    tmp_path: Path, serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    """`refresh_on: {statuses: [403]}` with no body pattern, one call at a time: no later call can
    show the token is still good, so a 403 for one record costs one new login (the call is sent
    again with it) and fails that row; the run goes on (and validate warns about the missing
    pattern). With calls in flight, no login at all: test_run's refused-record test."""
    logins: list[str] = []

    async def login(request: web.Request) -> web.Response:
        logins.append(f"t{len(logins)}")
        return web.json_response({"access_token": logins[-1]})

    async def answer(request: web.Request) -> web.Response:
        if request.match_info["id"].endswith("3"):
            return web.json_response({"error": "forbidden: not your record"}, status=403)
        return web.json_response({"id": request.match_info["id"]})

    app = web.Application()
    app.router.add_post("/login", login)
    app.router.add_get("/v/{id}", answer)
    server = serve(app)
    src = tmp_path / "in.csv"
    src.write_text("id\n" + "".join(f"{i}\n" for i in range(30)), "utf-8")
    out = tmp_path / "out.csv"
    cfg = write_config(
        tmp_path / "c.yaml",
        {
            "input": str(src),
            "output": str(out),
            "auth": {"url": server.url + "/login", "token_path": "access_token", "refresh_on": {"statuses": [403]}},
            "request": {"url": server.url + "/v/{{id}}"},
            "concurrency": 1,
        },
    )
    assert run_cli(["validate", str(cfg)]) == 0
    assert capsys.readouterr().err.startswith(
        f"warning: {cfg}, line 6: auth.refresh_on lists HTTP 403 with no `body` pattern"
    )
    assert run_cli(["run", str(cfg), "-q"]) == 0
    statuses = pl.read_csv(out)["_http_status"].to_list()
    assert statuses == [403 if str(i).endswith("3") else 200 for i in range(30)]
    assert len(logins) == 1 + 3  # one login per forbidden row (3, 13, 23), not two, and no stop


@pytest.mark.slow
def test_the_redactor_keeps_only_the_newest_tokens() -> None:
    from enrich.redact import TOKENS_KEPT, Redactor

    r = Redactor(["a-password-1"])
    tokens = [f"token-{i:04d}-abcdef" for i in range(200)]
    for t in tokens:
        r.add_token(t)
    assert len(r) == 1 + TOKENS_KEPT
    assert r.redact(" ".join(tokens[-TOKENS_KEPT:]) + " a-password-1") == " ".join(["***"] * (TOKENS_KEPT + 1))


def test_a_rejected_fixed_key_stops_the_run_with_what_the_api_said(
    tmp_path: Path, serve: Serve, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("API_KEY", "wrong-k3y-0000")
    server, seen = static_api(serve, lambda r: False)
    src = tmp_path / "in.csv"
    src.write_text("id\n1\n2\n", "utf-8")
    cfg = write_config(
        tmp_path / "c.yaml",
        {
            "input": str(src),
            "output": str(tmp_path / "o.csv"),
            "auth": {"type": "bearer", "token": "${API_KEY}"},
            "request": {"url": server.url + "/v/{{id}}"},
            "concurrency": 1,
        },
    )
    assert run_cli(["run", str(cfg), "-q"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: the API rejected the token sent in ")
    assert err.rstrip().endswith('The API answered HTTP 401: {"error": "unauthorized"}.')
    assert "wrong-k3y-0000" not in err
    assert len(seen) == 1  # the first rejection stops the run: a fixed key cannot be renewed
