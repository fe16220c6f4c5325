"""Auth: every kind of ``auth.type`` against a real server on 127.0.0.1, the token's lifecycle, secrets.

``TokenManager`` is driven as a call path drives it (``credentials()`` before a call,
``is_rejection()`` on the answer, ``refresh()`` when rejected) with a real aiohttp session;
each server checks exactly what arrives: headers, query parameters, Basic credentials, the
form of a token request, the signature of a signed JWT. Timing is tested with a clock the
test moves (``TokenManager(clock=...)``), and once for real against the demo API with
3-second tokens, where the server counts every call that came with an expired token.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import math
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import aiohttp
import jwt
import pytest
import yaml
from aiohttp import web
from conftest import Serve, demo_config
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jsonschema import Draft7Validator
from jsonschema.exceptions import best_match

from enrich.auth import Credentials, TokenManager, jwt_lifetime, refresh_margin
from enrich.config import AUTH_TYPES, Config, RetryConfig, config_from_dict, load_config
from enrich.demo_server import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, STATE, DemoSettings, create_app
from enrich.errors import AuthError, ConfigError
from enrich.schema import config_schema

ROOT = Path(__file__).resolve().parent.parent
AUTH_PAGE = (ROOT / "docs" / "auth.md").read_text(encoding="utf-8")
URL = "https://api.example.com/v1/people/{{id}}"
NO_RETRY = RetryConfig(attempts=1)


# --- helpers -------------------------------------------------------------------------------


class Clock:
    """A clock the test moves: ``TokenManager(clock=clock)``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def load(auth: dict[str, Any], env: dict[str, str] | None = None) -> Config:
    return config_from_dict({"request": {"url": URL}, "auth": auth}, env=env or {})


def manager(config: Config, **kwargs: Any) -> TokenManager:
    assert config.auth is not None
    return TokenManager(config.auth, config.redactor, NO_RETRY, 5.0, **kwargs)


async def call(session: aiohttp.ClientSession, url: str, creds: Credentials) -> tuple[int, bytes]:
    """One API call carrying ``creds``, as the client sends it."""
    async with session.get(url, headers=creds.headers, params=creds.params) as resp:
        return resp.status, await resp.read()


def checking_api(accept: Callable[[web.Request], bool], seen: list[web.Request] | None = None) -> web.Application:
    """``GET /v1/thing``: 200 when ``accept(request)``, else 401; every request kept in ``seen``."""

    async def thing(request: web.Request) -> web.Response:
        if seen is not None:
            seen.append(request)
        if accept(request):
            return web.json_response({"ok": True})
        return web.json_response({"error": "invalid_token"}, status=401)

    app = web.Application()
    app.router.add_get("/v1/thing", thing)
    return app


class TokenServer:
    """A login or token endpoint that hands out opaque tokens, and an API that takes only the newest.

    ``answer(token, request)`` builds the login response; the requests it got are in ``logins``.
    """

    def __init__(self, answer: Callable[[str, web.Request, bytes], web.Response] | None = None) -> None:
        self.answer = answer or (lambda token, request, body: web.json_response({"access_token": token}))
        self.logins: list[tuple[web.Request, bytes]] = []
        self.tokens: list[str] = []
        self.calls: list[web.Request] = []
        self.reject: set[str] = set()  # tokens the API refuses although they are current
        self.login_delay = 0.0
        self.app = web.Application()
        self.app.router.add_route("*", "/login", self._login)
        self.app.router.add_get("/v1/thing", self._thing)

    async def _login(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.logins.append((request, body))
        if self.login_delay:
            await asyncio.sleep(self.login_delay)
        token = f"tok-{len(self.tokens) + 1}-{secrets.token_hex(8)}"
        self.tokens.append(token)
        return self.answer(token, request, body)

    def sent_token(self, request: web.Request) -> str | None:
        auth = request.headers.get("Authorization", "")
        return auth[7:] if auth.startswith("Bearer ") else request.cookies.get("session")

    async def _thing(self, request: web.Request) -> web.Response:
        self.calls.append(request)
        token = self.sent_token(request)
        if token and self.tokens and token == self.tokens[-1] and token not in self.reject:
            return web.json_response({"ok": True})
        return web.json_response({"error": "invalid_token"}, status=401)


@pytest.fixture
async def session() -> Any:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def unsigned_jwt(claims: dict[str, Any]) -> str:
    return jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]


# --- static kinds: bearer, header, basic ---------------------------------------------------

TOKEN = "tok_live_5f2b9c1e+/=="  # `+`, `/` and `=` must arrive as they are, also in a query string
USER, PASSWORD = "ada@example.com", "pa:ss wörd-7731"  # a colon and non-ASCII in the password


def basic_credentials(request: web.Request) -> tuple[str, str] | None:
    """The user and password of ``Authorization: Basic ...`` (RFC 7617, UTF-8)."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme != "Basic":
        return None
    user, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
    return user, password


STATIC_CASES = [
    # (auth, the headers and query parameters a call carries, what the server accepts)
    pytest.param(
        {"type": "bearer", "token": "${API_TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}"},
        {},
        lambda r: r.headers.get("Authorization") == f"Bearer {TOKEN}",
        id="bearer",
    ),
    pytest.param(
        {"type": "bearer", "token": "${API_TOKEN}", "header": "X-Auth", "token_type": "Token"},
        {"X-Auth": f"Token {TOKEN}"},
        {},
        lambda r: r.headers.get("X-Auth") == f"Token {TOKEN}",
        id="bearer-own-header-and-type",
    ),
    pytest.param(
        {"type": "header", "token": "${API_TOKEN}", "header": "X-API-Key"},
        {"X-API-Key": TOKEN},  # `header` sends the bare key
        {},
        lambda r: r.headers.get("X-API-Key") == TOKEN and "Authorization" not in r.headers,
        id="header",
    ),
    pytest.param(
        {"type": "header", "token": "${API_TOKEN}", "query_param": "api_key"},
        {},
        {"api_key": TOKEN},
        lambda r: r.query.get("api_key") == TOKEN and "Authorization" not in r.headers,
        id="header-in-query",
    ),
    pytest.param(
        {"type": "bearer", "token": "${API_TOKEN}", "query_param": "access_token"},
        {},
        {"access_token": TOKEN},
        lambda r: r.query.get("access_token") == TOKEN,
        id="bearer-in-query",
    ),
    pytest.param(
        {"type": "basic", "username": "${API_USER}", "password": "${API_PASSWORD}"},
        {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()},
        {},
        lambda r: basic_credentials(r) == (USER, PASSWORD),
        id="basic",
    ),
]
STATIC_ENV = {"API_TOKEN": TOKEN, "API_USER": USER, "API_PASSWORD": PASSWORD}


@pytest.mark.parametrize(("auth", "headers", "params", "accept"), STATIC_CASES)
async def test_static_kinds_send_exactly_what_the_api_checks(
    serve: Serve,
    session: aiohttp.ClientSession,
    auth: dict[str, Any],
    headers: dict[str, str],
    params: dict[str, str],
    accept: Callable[[web.Request], bool],
) -> None:
    seen: list[web.Request] = []
    server = serve(checking_api(accept, seen))
    tokens = manager(load(auth, STATIC_ENV))
    await tokens.login(session)  # nothing to fetch
    creds = await tokens.credentials(None)  # type: ignore[arg-type]  # never touches the session
    assert creds == Credentials(1, headers, params)
    status, body = await call(session, f"{server.url}/v1/thing", creds)
    assert (status, body) == (200, b'{"ok": true}')
    assert not tokens.is_rejection(status, body)
    assert tokens.logins == 0 and len(seen) == 1  # the one call, nothing else
    # the same object for every call: no work per call
    assert await tokens.credentials(None) is creds  # type: ignore[arg-type]


STATIC_REJECTED = [
    pytest.param(
        {"type": "bearer", "token": "${API_TOKEN}"},
        "the API rejected the token sent in the Authorization header (HTTP 401 or an auth.refresh_on match); a "
        "fixed token cannot be refreshed. Check auth.token (the environment variable API_TOKEN) and auth.header "
        'and auth.token_type (the API may want another header, or `token_type: ""`), and that the key may call '
        "request.url.",
        id="bearer",
    ),
    pytest.param(
        {"type": "header", "token": "${API_TOKEN}", "query_param": "api_key"},
        "the API rejected the token sent in the query parameter api_key (HTTP 401 or an auth.refresh_on match); "
        "a fixed token cannot be refreshed. Check auth.token (the environment variable API_TOKEN) and "
        "auth.query_param (the parameter the API reads), and that the key may call request.url.",
        id="query-param",
    ),
    pytest.param(
        {"type": "header", "token": TOKEN, "header": "X-API-Key"},
        "the API rejected the token sent in the X-API-Key header (HTTP 401 or an auth.refresh_on match); a fixed "
        "token cannot be refreshed. Check auth.token (auth.token in the config) and auth.header and "
        'auth.token_type (the API may want another header, or `token_type: ""`), and that the key may call '
        "request.url.",
        id="literal-key",
    ),
    pytest.param(
        {"type": "basic", "username": "${API_USER}", "password": "${API_PASSWORD}"},
        "the API rejected the Basic credentials (HTTP 401 or an auth.refresh_on match); a fixed password cannot "
        "be refreshed. Check auth.username and auth.password (the environment variables API_USER, API_PASSWORD) "
        "and that this account may call request.url.",
        id="basic",
    ),
]


@pytest.mark.parametrize(("auth", "message"), STATIC_REJECTED)
async def test_a_rejected_static_secret_stops_with_what_to_check(
    serve: Serve, session: aiohttp.ClientSession, auth: dict[str, Any], message: str
) -> None:
    server = serve(checking_api(lambda r: False))
    tokens = manager(load(auth, STATIC_ENV))
    creds = await tokens.credentials(session)
    status, body = await call(session, f"{server.url}/v1/thing", creds)
    assert tokens.is_rejection(status, body)
    with pytest.raises(AuthError) as info:
        await tokens.refresh(session, creds.generation)
    assert str(info.value) == message
    sent = [v.split(" ")[-1] for v in creds.headers.values()] + list(creds.params.values())
    for secret in (TOKEN, PASSWORD, USER, *sent):
        assert secret not in str(info.value)


def test_header_gives_the_first_header_for_the_older_call_path() -> None:
    tokens = manager(load({"type": "header", "token": TOKEN, "header": "X-API-Key"}))
    assert tokens.header() == (1, "X-API-Key", TOKEN)
    in_query = manager(load({"type": "header", "token": TOKEN, "query_param": "api_key"}))
    with pytest.raises(RuntimeError, match=r"use TokenManager\.credentials"):
        in_query.header()


# --- login: where the token comes from, how it goes back -----------------------------------


async def test_login_token_at_a_jsonpath(serve: Serve, session: aiohttp.ClientSession) -> None:
    ts = TokenServer(lambda token, r, b: web.json_response({"data": {"tokens": [{"kind": "jwt", "value": token}]}}))
    server = serve(ts.app)
    tokens = manager(
        load(
            {
                "url": f"{server.url}/login",
                "body": {"user": "ada", "password": "hunter2-hunter2"},
                "token_path": "$.data.tokens[?(@.kind == 'jwt')].value",
            }
        )
    )
    creds = await tokens.credentials(session)  # logs in on first use
    assert creds == Credentials(1, {"Authorization": f"Bearer {ts.tokens[0]}"}, {})
    request, body = ts.logins[0]
    assert (request.method, request.content_type) == ("POST", "application/json")
    assert json.loads(body) == {"user": "ada", "password": "hunter2-hunter2"}
    assert await call(session, f"{server.url}/v1/thing", creds) == (200, b'{"ok": true}')


async def test_login_token_in_a_response_header(serve: Serve, session: aiohttp.ClientSession) -> None:
    ts = TokenServer(lambda token, r, b: web.Response(status=204, headers={"X-Auth-Token": token}))
    server = serve(ts.app)
    tokens = manager(load({"url": f"{server.url}/login", "token_header": "X-Auth-Token"}))
    await tokens.login(session)
    creds = await tokens.credentials(session)
    assert creds.headers == {"Authorization": f"Bearer {ts.tokens[0]}"}
    assert await call(session, f"{server.url}/v1/thing", creds) == (200, b'{"ok": true}')


def _cookie_answer(token: str, request: web.Request, body: bytes) -> web.Response:
    response = web.json_response({"ok": True})
    response.set_cookie("session", token, httponly=True)
    response.set_cookie("theme", "dark")
    return response


async def test_login_token_in_a_cookie_goes_back_as_a_cookie(serve: Serve, session: aiohttp.ClientSession) -> None:
    ts = TokenServer(_cookie_answer)
    server = serve(ts.app)
    tokens = manager(load({"url": f"{server.url}/login", "token_cookie": "session"}))
    creds = await tokens.credentials(session)
    assert creds.headers == {"Cookie": f"session={ts.tokens[0]}"}
    assert await call(session, f"{server.url}/v1/thing", creds) == (200, b'{"ok": true}')
    arrived = ts.calls[-1]
    assert arrived.cookies.get("session") == ts.tokens[0] and "Authorization" not in arrived.headers
    assert tokens.header() == (1, "Cookie", f"session={ts.tokens[0]}")


async def test_login_token_in_a_cookie_sent_in_a_header_when_asked(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    ts = TokenServer(_cookie_answer)
    server = serve(ts.app)
    tokens = manager(load({"url": f"{server.url}/login", "token_cookie": "session", "header": "Authorization"}))
    creds = await tokens.credentials(session)
    assert creds.headers == {"Authorization": f"Bearer {ts.tokens[0]}"}
    assert await call(session, f"{server.url}/v1/thing", creds) == (200, b'{"ok": true}')


LOGIN_ANSWER_ERRORS = [
    pytest.param(
        {"token_header": "X-Auth-Token"},
        lambda token, r, b: web.Response(status=200, headers={"X-Other": "1"}),
        "login succeeded (HTTP 200) but the response has no X-Auth-Token header (its headers: Content-Length, "
        "Date, Server, X-Other). Set auth.token_header to the header that holds the token, or "
        "auth.token_path if it is in the body.",
        id="no-such-header",
    ),
    pytest.param(
        {"token_cookie": "session"},
        lambda token, r, b: _other_cookie(token),
        "login succeeded (HTTP 200) but set no cookie named session (cookies it set: sid, theme). "
        "Set auth.token_cookie to the cookie that holds the token.",
        id="no-such-cookie",
    ),
    pytest.param(
        {"token_path": "data.jwt"},
        lambda token, r, b: web.json_response({"data": {"jwt": {"value": token}}}),
        "login succeeded (HTTP 200) but auth.token_path `data.jwt` found a dict, not a string in the response "
        "(its top-level keys: data). Set auth.token_path to where the token is, e.g. `access_token` or "
        "`data.session.jwt`.",
        id="token-path-finds-a-mapping",
    ),
]


def _other_cookie(token: str) -> web.Response:
    response = web.json_response({"ok": True})
    response.set_cookie("sid", token)
    response.set_cookie("theme", "dark")
    return response


@pytest.mark.parametrize(("auth", "answer", "message"), LOGIN_ANSWER_ERRORS)
async def test_a_login_answer_without_the_token_says_where_it_looked(
    serve: Serve, session: aiohttp.ClientSession, auth: dict[str, Any], answer: Any, message: str
) -> None:
    ts = TokenServer(answer)
    server = serve(ts.app)
    tokens = manager(load({"url": f"{server.url}/login", **auth}))
    with pytest.raises(AuthError) as info:
        await tokens.login(session)
    assert str(info.value) == message
    assert ts.tokens[0] not in str(info.value)


# --- the lifetime: when the next token is fetched ------------------------------------------


@pytest.mark.parametrize(
    ("lifetime", "margin"),
    [(3600, 60.0), (300, 60.0), (120, 30.0), (8, 2.0), (3, 0.75), (1.5, 0.5), (1, 0.5), (0.4, 0.2)],
)
def test_the_margin_shrinks_for_short_lived_tokens(lifetime: float, margin: float) -> None:
    assert refresh_margin(lifetime) == pytest.approx(margin)


NOW = 1_700_000_000.0
LIFETIMES = [
    # (token, seconds left by its claims, with the wall clock at NOW)
    pytest.param(unsigned_jwt({"iat": int(NOW) - 5, "exp": int(NOW) + 35}), 35.0, id="issued-5s-ago"),
    pytest.param(unsigned_jwt({"iat": NOW - 5.5, "exp": NOW + 34.5}), 34.5, id="issued-5.5s-ago-float"),
    # a cached token issued long ago: what is left, not its whole lifetime
    pytest.param(unsigned_jwt({"iat": int(NOW) - 3500, "exp": int(NOW) + 100}), 100.0, id="stale-cached-token"),
    # our clock ahead of the API's by 50 s: exp looks past; the lifetime by its own claims
    pytest.param(unsigned_jwt({"iat": int(NOW) - 60, "exp": int(NOW) - 10}), 49.0, id="our-clock-ahead"),
    # a server clock 100 s ahead: exp - iat still gives the lifetime
    pytest.param(unsigned_jwt({"iat": NOW + 100.25, "exp": NOW + 160.75}), 60.5, id="skewed-server-clock"),
    pytest.param(unsigned_jwt({"exp": NOW + 20}), 20.0, id="exp-without-iat"),
    pytest.param(jwt.encode({"exp": NOW + 20}, "k" * 32, algorithm="HS256"), 20.0, id="signed-unverified"),
    pytest.param(unsigned_jwt({"sub": "ada"}), None, id="no-exp"),
    pytest.param(unsigned_jwt({"exp": NOW - 10}), None, id="already-expired-is-no-hint"),
    pytest.param(unsigned_jwt({"exp": "tomorrow"}), None, id="exp-not-a-number"),
    pytest.param("opaque-7d1f0c2a9b", None, id="not-a-jwt"),
    pytest.param("not.a.jwt", None, id="three-parts-but-not-a-jwt"),
]


@pytest.mark.parametrize(("token", "left"), LIFETIMES)
def test_jwt_lifetime_reads_claims_as_hints(token: str, left: float | None) -> None:
    assert jwt_lifetime(token, NOW) == left


async def test_expires_in_times_the_next_login(serve: Serve, session: aiohttp.ClientSession) -> None:
    ts = TokenServer(lambda token, r, b: web.json_response({"access_token": token, "meta": {"ttl": "100"}}))
    server = serve(ts.app)
    clock = Clock()
    tokens = manager(
        load({"url": f"{server.url}/login", "token_path": "access_token", "expires_in_path": "meta.ttl"}), clock=clock
    )
    first = await tokens.credentials(session)
    clock.now += 74.9  # 100 s, refreshed 25 s before the end
    assert await tokens.credentials(session) is first
    clock.now += 0.1
    second = await tokens.credentials(session)
    assert second.generation == 2 and len(ts.logins) == 2
    assert second.headers == {"Authorization": f"Bearer {ts.tokens[1]}"}


async def test_without_expires_in_the_jwt_exp_times_the_next_login(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    def answer(token: str, request: web.Request, body: bytes) -> web.Response:
        # iat with a fraction: the lifetime is exactly exp - iat = 40 s; the margin 10 s
        return web.json_response({"jwt": unsigned_jwt({"jti": token, "iat": NOW + 0.5, "exp": NOW + 40.5})})

    ts = TokenServer(answer)
    server = serve(ts.app)
    clock = Clock()
    tokens = manager(load({"url": f"{server.url}/login", "token_path": "jwt"}), clock=clock)
    await tokens.login(session)
    clock.now += 29.9
    assert (await tokens.credentials(session)).generation == 1
    clock.now += 0.1
    assert (await tokens.credentials(session)).generation == 2
    assert len(ts.logins) == 2


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda tok: unsigned_jwt({"sub": tok}), id="jwt-without-exp"),
        pytest.param(lambda tok: unsigned_jwt({"sub": tok, "exp": "soon"}), id="alg-none-exp-not-a-number"),
        pytest.param(lambda tok: tok, id="not-a-jwt"),
    ],
)
async def test_a_token_without_a_lifetime_is_refreshed_on_rejection_only(
    serve: Serve, session: aiohttp.ClientSession, make: Callable[[str], str]
) -> None:
    issued: list[str] = []

    def answer(token: str, request: web.Request, body: bytes) -> web.Response:
        issued.append(make(token))
        ts.tokens[-1] = issued[-1]  # the API takes the token as handed out
        return web.json_response({"access_token": issued[-1]})

    ts = TokenServer(answer)
    server = serve(ts.app)
    clock = Clock()
    tokens = manager(load({"url": f"{server.url}/login", "token_path": "access_token"}), clock=clock)
    creds = await tokens.credentials(session)
    clock.now += 1e9  # no lifetime: never due
    assert await tokens.credentials(session) is creds
    assert await call(session, f"{server.url}/v1/thing", creds) == (200, b'{"ok": true}')
    tokens.accepted(creds.generation)
    ts.reject.add(issued[0])  # the API drops it: refreshed on rejection
    status, body = await call(session, f"{server.url}/v1/thing", creds)
    assert tokens.is_rejection(status, body)
    await tokens.refresh(session, creds.generation)
    creds = await tokens.credentials(session)
    assert creds.generation == 2
    assert await call(session, f"{server.url}/v1/thing", creds) == (200, b'{"ok": true}')
    assert len(ts.logins) == 2


async def test_one_refresh_however_many_workers_find_the_token_due(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    ts = TokenServer(lambda token, r, b: web.json_response({"access_token": token, "expires_in": 60}))
    server = serve(ts.app)
    clock = Clock()
    tokens = manager(
        load({"url": f"{server.url}/login", "token_path": "access_token", "expires_in_path": "expires_in"}),
        clock=clock,
    )
    await tokens.login(session)
    clock.now += 60  # past the end: no worker may use the old token
    got = await asyncio.gather(*(tokens.credentials(session) for _ in range(50)))
    assert {c.generation for c in got} == {2}
    assert len(ts.logins) == 2


@pytest.mark.slow
async def test_while_one_worker_fetches_the_next_token_the_others_keep_the_current_one(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    ts = TokenServer(lambda token, r, b: web.json_response({"access_token": token, "expires_in": 100}))
    server = serve(ts.app)
    clock = Clock()
    tokens = manager(
        load({"url": f"{server.url}/login", "token_path": "access_token", "expires_in_path": "expires_in"}),
        clock=clock,
    )
    await tokens.login(session)
    ts.login_delay = 0.3
    clock.now += 80  # due (refresh at 75), still well inside the lifetime (until 87.5 it serves on)
    fetching = asyncio.create_task(tokens.credentials(session))
    await asyncio.sleep(0.05)  # the fetch is under way
    started = time.perf_counter()
    assert (await tokens.credentials(session)).generation == 1  # no wait for the login
    assert time.perf_counter() - started < 0.1
    clock.now += 10  # 90: too close to the end to keep using it, so this one waits
    assert (await tokens.credentials(session)).generation == 2
    assert (await fetching).generation == 2
    assert len(ts.logins) == 2


# --- rejection: 401, auth.refresh_on, single flight, no loop -------------------------------

REJECTIONS = [
    # (refresh_on, status, body, a rejected token?)
    pytest.param(None, 401, b"", True, id="401-always"),
    pytest.param(None, 403, b'{"error": "token expired"}', False, id="403-not-listed"),
    pytest.param({"statuses": [403]}, 403, b"forbidden", True, id="listed-status"),
    pytest.param({"statuses": [403]}, 404, b"token expired", False, id="other-status"),
    pytest.param({"body": "token expired|invalid_token"}, 200, b'{"error": "invalid_token"}', True, id="body-on-200"),
    pytest.param({"body": "token expired|invalid_token"}, 200, b'{"name": "Ada"}', False, id="body-no-match"),
    pytest.param({"statuses": [403], "body": "token expired"}, 403, b'{"error": "token expired"}', True, id="both"),
    pytest.param({"statuses": [403], "body": "token expired"}, 403, b'{"error": "no access"}', False, id="both-403"),
    pytest.param({"statuses": [403], "body": "token expired"}, 200, b"token expired", False, id="both-200"),
    pytest.param({"body": "(?i)Token Expired"}, 400, b"TOKEN EXPIRED", True, id="flags-in-the-pattern"),
    pytest.param({"body": "token expired"}, 200, b"x" * 5000 + b"token expired", False, id="only-first-4-KiB"),
]


@pytest.mark.parametrize(("refresh_on", "status", "body", "rejected"), REJECTIONS)
def test_is_rejection(refresh_on: dict[str, Any] | None, status: int, body: bytes, rejected: bool) -> None:
    auth = {"url": "https://api.example.com/login", "token_path": "t"}
    if refresh_on is not None:
        auth["refresh_on"] = refresh_on
    assert manager(load(auth)).is_rejection(status, body) is rejected


async def test_refresh_on_a_403_with_an_expired_body(serve: Serve, session: aiohttp.ClientSession) -> None:
    expired: set[str] = set()
    issued: list[str] = []

    async def login(request: web.Request) -> web.Response:
        issued.append(f"tok-{len(issued) + 1}-{secrets.token_hex(6)}")
        return web.json_response({"access_token": issued[-1]})

    async def thing(request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "")[7:]
        if token in expired:
            return web.json_response({"error": "token expired"}, status=403)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/login", login)
    app.router.add_get("/v1/thing", thing)
    server = serve(app)
    tokens = manager(
        load(
            {
                "url": f"{server.url}/login",
                "token_path": "access_token",
                "refresh_on": {"statuses": [403], "body": "token expired"},
            }
        )
    )
    creds = await tokens.credentials(session)
    assert await call(session, f"{server.url}/v1/thing", creds) == (200, b'{"ok": true}')
    tokens.accepted(creds.generation)
    expired.add(issued[0])
    status, body = await call(session, f"{server.url}/v1/thing", creds)
    assert (status, tokens.is_rejection(status, body)) == (403, True)
    await asyncio.gather(*(tokens.refresh(session, creds.generation) for _ in range(20)))
    assert len(issued) == 2  # twenty rejections, one login
    creds = await tokens.credentials(session)
    assert await call(session, f"{server.url}/v1/thing", creds) == (200, b'{"ok": true}')


async def test_a_freshly_issued_token_rejected_stops_instead_of_looping(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    ts = TokenServer()
    server = serve(ts.app)
    tokens = manager(load({"url": f"{server.url}/login", "token_path": "access_token"}))
    creds = await tokens.credentials(session)
    ts.tokens.append("not-the-current-one")  # the API now wants a token it never handed out
    assert tokens.is_rejection(*await call(session, f"{server.url}/v1/thing", creds))
    await tokens.refresh(session, creds.generation)  # the first token may just be stale: one login
    creds = await tokens.credentials(session)
    ts.tokens.append("not-the-current-one")
    assert tokens.is_rejection(*await call(session, f"{server.url}/v1/thing", creds))
    with pytest.raises(AuthError) as info:
        await tokens.refresh(session, creds.generation)
    assert str(info.value) == (
        f"the API rejected a freshly issued token (HTTP 401 or an auth.refresh_on match right after getting a new "
        f"one from {server.url}/login). Check auth.header and auth.token_type (the API may want another header, "
        'or the bare token with `token_type: ""`), and that this account may call request.url.'
    )
    assert len(ts.logins) == 2


# --- oauth2_client_credentials --------------------------------------------------------------

CLIENT_ID, CLIENT_SECRET = "client:7/ab", "s3cr+t/=&x ü"  # characters RFC 6749 2.3.1 form-encodes


def oauth_server(expect_basic: bool) -> tuple[web.Application, list[dict[str, Any]], list[str]]:
    """A token endpoint that checks a client-credentials grant as RFC 6749 4.4 and 2.3.1 say, and an API."""
    requests: list[dict[str, Any]] = []
    issued: list[str] = []

    async def token(request: web.Request) -> web.Response:
        form = dict(await request.post())
        requests.append(
            {"content_type": request.content_type, "form": form, "auth": request.headers.get("Authorization")}
        )
        if expect_basic:
            scheme, _, value = request.headers.get("Authorization", "").partition(" ")
            raw = base64.b64decode(value).decode() if scheme == "Basic" else ""
            ok = raw == f"{quote_plus(CLIENT_ID)}:{quote_plus(CLIENT_SECRET)}" and "client_secret" not in form
        else:
            ok = form.get("client_id") == CLIENT_ID and form.get("client_secret") == CLIENT_SECRET
            ok = ok and "Authorization" not in request.headers
        if not ok or form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "invalid_client", "error_description": "bad client"}, status=401)
        issued.append("at-" + secrets.token_urlsafe(16))
        return web.json_response({"access_token": issued[-1], "token_type": "Bearer", "expires_in": 120})

    app = checking_api(lambda r: bool(issued) and r.headers.get("Authorization") == f"Bearer {issued[-1]}")
    app.router.add_post("/oauth/token", token)
    return app, requests, issued


@pytest.mark.parametrize("client_auth", ["basic", "body"])
async def test_oauth2_client_credentials(serve: Serve, session: aiohttp.ClientSession, client_auth: str) -> None:
    app, requests, issued = oauth_server(expect_basic=client_auth == "basic")
    server = serve(app)
    clock = Clock()
    auth = {
        "type": "oauth2_client_credentials",
        "token_url": f"{server.url}/oauth/token",
        "client_id": "${CLIENT_ID}",
        "client_secret": "${CLIENT_SECRET}",
        "scope": ["read:people", "read:companies"],
        "audience": "https://api.example.com",
    }
    if client_auth == "body":
        auth["client_auth"] = "body"
    tokens = manager(load(auth, {"CLIENT_ID": CLIENT_ID, "CLIENT_SECRET": CLIENT_SECRET}), clock=clock)
    creds = await tokens.credentials(session)
    assert creds.headers == {"Authorization": f"Bearer {issued[0]}"}
    expected_form = {"grant_type": "client_credentials", "scope": "read:people read:companies"}
    expected_form["audience"] = "https://api.example.com"
    if client_auth == "body":
        expected_form.update(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    assert requests[0]["content_type"] == "application/x-www-form-urlencoded"
    assert requests[0]["form"] == expected_form
    assert await call(session, f"{server.url}/v1/thing", creds) == (200, b'{"ok": true}')
    clock.now += 89.9  # expires_in 120: fetched again 30 s before the end
    assert (await tokens.credentials(session)).generation == 1
    clock.now += 0.1
    assert (await tokens.credentials(session)).headers == {"Authorization": f"Bearer {issued[1]}"}


async def test_oauth2_against_the_demo_api(serve: Serve, session: aiohttp.ClientSession) -> None:
    demo = serve(create_app(DemoSettings()))
    tokens = manager(
        load(
            {
                "type": "oauth2_client_credentials",
                "token_url": f"{demo.url}/auth/token",
                "client_id": DEFAULT_CLIENT_ID,
                "client_secret": DEFAULT_CLIENT_SECRET,
            }
        )
    )
    creds = await tokens.credentials(session)
    status, _ = await call(session, f"{demo.url}/v1/people/ada@example.com", creds)
    assert status == 200 and demo.app[STATE].logins == 1


async def test_oauth2_refused_says_what_to_check(serve: Serve, session: aiohttp.ClientSession) -> None:
    app, _, _ = oauth_server(expect_basic=True)
    server = serve(app)
    env = {"CLIENT_ID": CLIENT_ID, "CLIENT_SECRET": "wrong-secret-0042"}
    auth = {
        "type": "oauth2_client_credentials",
        "token_url": f"{server.url}/oauth/token",
        "client_id": "${CLIENT_ID}",
        "client_secret": "${CLIENT_SECRET}",
    }
    tokens = manager(load(auth, env))
    with pytest.raises(AuthError) as info:
        await tokens.credentials(session)
    assert str(info.value) == (
        f"token request failed: POST {server.url}/oauth/token returned HTTP 401 Unauthorized: "
        '{"error": "invalid_client", "error_description": "bad client"}. Check auth.client_id and '
        "auth.client_secret (and the environment variables they use), auth.client_auth (`basic` or `body`: the "
        "server may want the other), auth.scope and auth.audience."
    )


# --- jwt_signed ------------------------------------------------------------------------------

HS_SECRET = "hs-shared-secret-0123456789abcdef-0123456789abcdef-0123456789abcdef"


def _signing(algorithm: str, rsa_key: Any, ec_key: Any, tmp_path: Path) -> tuple[dict[str, Any], dict[str, str], Any]:
    """The auth keys, env and verification key for ``algorithm``: HS* from ${VAR}, RS256 from a file, ES256 from ${VAR}."""
    if algorithm.startswith("HS"):
        return {"key": "${SIGNING_KEY}"}, {"SIGNING_KEY": HS_SECRET}, HS_SECRET
    if algorithm == "RS256":
        path = tmp_path / "service.pem"
        path.write_text(pem(rsa_key), encoding="utf-8")
        return {"key_file": str(path)}, {}, rsa_key.public_key()
    # A PEM in an environment variable is often squeezed onto one line with literal \n.
    return {"key": "${SIGNING_KEY}"}, {"SIGNING_KEY": pem(ec_key).replace("\n", "\\n")}, ec_key.public_key()


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["HS256", "HS384", "HS512", "RS256", "ES256"])
async def test_jwt_signed_sent_as_the_bearer_token(
    serve: Serve, session: aiohttp.ClientSession, algorithm: str, rsa_key: Any, ec_key: Any, tmp_path: Path
) -> None:
    keys, env, verify_key = _signing(algorithm, rsa_key, ec_key, tmp_path)
    verified: list[dict[str, Any]] = []

    def accept(request: web.Request) -> bool:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        try:
            claims = jwt.decode(
                token, verify_key, algorithms=[algorithm], audience="https://api.example.com", issuer="svc@example.com"
            )
        except jwt.PyJWTError:
            return False
        verified.append({"header": jwt.get_unverified_header(token), **claims})
        return True

    server = serve(checking_api(accept))
    auth = {
        "type": "jwt_signed",
        "algorithm": algorithm,
        **keys,
        "claims": {"iss": "svc@example.com", "sub": "${SERVICE_USER}", "aud": "https://api.example.com", "tier": 2},
        "lifetime": 600,
    }
    config = load(auth, {**env, "SERVICE_USER": "robot-7"})
    tokens = manager(config)
    creds = await tokens.credentials(session)
    assert await call(session, f"{server.url}/v1/thing", creds) == (200, b'{"ok": true}')
    claims = verified[0]
    assert claims["header"]["alg"] == algorithm
    assert (claims["sub"], claims["tier"], claims["exp"] - claims["iat"]) == ("robot-7", 2, 600)
    assert config.redactor.redact(creds.headers["Authorization"]) == "Bearer ***"
    assert tokens.logins == 1


async def test_jwt_signed_is_signed_again_before_it_expires() -> None:
    wall, clock = Clock(NOW + 0.25), Clock()
    config = load({"type": "jwt_signed", "algorithm": "HS256", "key": HS_SECRET, "lifetime": 300})
    tokens = manager(config, clock=clock, wall_clock=wall)
    first = await tokens.credentials(None)  # type: ignore[arg-type]  # signing needs no network
    claims = jwt.decode(
        first.headers["Authorization"][7:], HS_SECRET, algorithms=["HS256"], options={"verify_exp": False}
    )
    assert (claims["iat"], claims["exp"]) == (int(NOW), int(NOW) + 300)
    # 299.75 s left at signing, margin 60 s
    clock.now += 239.7
    wall.now += 239.7
    assert await tokens.credentials(None) is first  # type: ignore[arg-type]
    clock.now += 0.1
    wall.now += 0.1
    second = await tokens.credentials(None)  # type: ignore[arg-type]
    assert second.generation == 2
    claims = jwt.decode(
        second.headers["Authorization"][7:], HS_SECRET, algorithms=["HS256"], options={"verify_exp": False}
    )
    assert claims["iat"] == int(NOW + 240.05)


@pytest.mark.slow
async def test_jwt_signed_exchanged_at_a_token_url(serve: Serve, session: aiohttp.ClientSession, rsa_key: Any) -> None:
    grants: list[dict[str, Any]] = []
    issued: list[str] = []

    async def token(request: web.Request) -> web.Response:
        form = dict(await request.post())
        try:
            claims = jwt.decode(
                str(form.get("assertion")), rsa_key.public_key(), algorithms=["RS256"], audience=f"{request.url}"
            )
        except jwt.PyJWTError as exc:
            return web.json_response({"error": "invalid_grant", "error_description": str(exc)}, status=400)
        grants.append({"form": form, "claims": claims, "content_type": request.content_type})
        issued.append("at-" + secrets.token_urlsafe(12))
        return web.json_response({"access_token": issued[-1], "expires_in": 3600, "token_type": "Bearer"})

    app = checking_api(lambda r: bool(issued) and r.headers.get("Authorization") == f"Bearer {issued[-1]}")
    app.router.add_post("/token", token)
    server = serve(app)
    config = load(
        {
            "type": "jwt_signed",
            "algorithm": "RS256",
            "key": "${SA_PRIVATE_KEY}",
            "claims": {"iss": "svc@example.com", "sub": "svc@example.com", "aud": f"{server.url}/token"},
            "token_url": f"{server.url}/token",
            "scope": "people.read",
        },
        {"SA_PRIVATE_KEY": pem(rsa_key)},
    )
    tokens = manager(config)
    creds = await tokens.credentials(session)
    assert creds.headers == {"Authorization": f"Bearer {issued[0]}"}
    assert await call(session, f"{server.url}/v1/thing", creds) == (200, b'{"ok": true}')
    grant = grants[0]
    assert grant["content_type"] == "application/x-www-form-urlencoded"
    assert grant["form"]["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    assert grant["form"]["scope"] == "people.read"
    assert set(grant["form"]) == {"grant_type", "assertion", "scope"}
    assert grant["claims"]["iss"] == "svc@example.com"
    # the assertion and the access token are secrets of the run
    assert config.redactor.redact(f"{grant['form']['assertion']} {issued[0]}") == "*** ***"


# --- the real clock: no call may reach the API with an expired token -----------------------


async def drive(url: str, auth: dict[str, Any], seconds: float, workers: int) -> tuple[int, int]:
    """``workers`` tasks calling the demo API for ``seconds`` as a client does; (calls, rejections)."""
    config = config_from_dict(demo_config(url, auth=auth), env={})
    assert config.auth is not None
    tokens = TokenManager(config.auth, config.redactor, NO_RETRY, 5.0)
    calls = rejections = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=workers)) as session:
        await tokens.login(session)
        end = time.monotonic() + seconds

        async def worker(n: int) -> None:
            nonlocal calls, rejections
            while time.monotonic() < end:
                creds = await tokens.credentials(session)
                status, body = await call(session, f"{url}/v1/people/w{n}@example.com", creds)
                calls += 1
                if tokens.is_rejection(status, body):
                    rejections += 1
                    await tokens.refresh(session, creds.generation)
                else:
                    tokens.accepted(creds.generation)

        await asyncio.gather(*(worker(n) for n in range(workers)))
    return calls, rejections


def demo_auth(url: str, **more: Any) -> dict[str, Any]:
    return {
        "url": f"{url}/auth/token",
        "body": {"client_id": DEFAULT_CLIENT_ID, "client_secret": DEFAULT_CLIENT_SECRET},
        "token_path": "access_token",
        **more,
    }


@pytest.mark.slow
async def test_short_lived_tokens_never_reach_the_api_expired(serve: Serve) -> None:
    """3-second tokens for 10 seconds, 16 workers, two ways of knowing the lifetime, side by side."""
    ttl, seconds = 3.0, 10.0
    stated = serve(create_app(DemoSettings(token_ttl=ttl)))  # expires_in from the login response
    claimed = serve(create_app(DemoSettings(token_ttl=ttl)))  # only the JWT's iat and exp
    results = await asyncio.gather(
        drive(stated.url, demo_auth(stated.url, expires_in_path="expires_in"), seconds, 16),
        drive(claimed.url, demo_auth(claimed.url), seconds, 16),
    )
    for server, (calls, rejections) in zip((stated, claimed), results, strict=True):
        state = server.app[STATE]
        assert calls > 500
        assert (state.expired, state.unauthorized, rejections) == (0, 0, 0)
        # one login per (lifetime - margin), not a storm: 10 / 2.25 + 1 with expires_in; the claims give a
        # lifetime between 2 and 3 s (an integer iat may be a second early), so between 10 / 2.25 and 10 / 1.5
        assert math.ceil(seconds / ttl) <= state.logins <= seconds / 1.5 + 2


# --- secrets ---------------------------------------------------------------------------------


@pytest.mark.slow
async def test_no_secret_in_repr_messages_or_descriptions(
    serve: Serve, session: aiohttp.ClientSession, rsa_key: Any
) -> None:
    app, _, issued = oauth_server(expect_basic=True)
    server = serve(app)
    env = {"CLIENT_ID": CLIENT_ID, "CLIENT_SECRET": CLIENT_SECRET, "KEY": pem(rsa_key), "PW": "pw-9c1e5a77"}
    configs = {
        "oauth2": load(
            {
                "type": "oauth2_client_credentials",
                "token_url": f"{server.url}/oauth/token",
                "client_id": "${CLIENT_ID}",
                "client_secret": "${CLIENT_SECRET}",
            },
            env,
        ),
        "jwt": load({"type": "jwt_signed", "algorithm": "RS256", "key": "${KEY}"}, env),
        "literal-token": load({"type": "bearer", "token": "literal-token-6d2a", "query_param": "k"}),
        "basic": load({"type": "basic", "username": "svc-user", "password": "${PW}"}, env),
    }
    texts: list[str] = []
    secrets_: list[str] = [CLIENT_SECRET, pem(rsa_key).strip(), "literal-token-6d2a", "pw-9c1e5a77"]
    for config in configs.values():
        assert config.auth is not None
        tokens = manager(config)
        creds = await tokens.credentials(session)
        secrets_ += [v.split(" ")[-1] for v in creds.headers.values()] + list(creds.params.values())
        texts += [repr(config), str(config), repr(config.auth), config.auth.describe(), str(config.auth.sent_as("***"))]
        if config.auth.static:
            with pytest.raises(AuthError) as info:
                await tokens.refresh(session, creds.generation)
            texts.append(str(info.value))
    # a refused token request quotes the server's answer, which echoes the secret: masked
    echo = web.Application()
    echo.router.add_post("/t", _echo)
    echo_server = serve(echo)
    leaky = load(
        {
            "type": "oauth2_client_credentials",
            "token_url": f"{echo_server.url}/t",
            "client_id": "${CLIENT_ID}",
            "client_secret": "${CLIENT_SECRET}",
            "client_auth": "body",
        },
        env,
    )
    with pytest.raises(AuthError) as info:
        await manager(leaky).credentials(session)
    texts.append(str(info.value))
    assert "***" in texts[-1]
    assert issued  # the oauth2 access token is among the secrets checked
    for secret in secrets_:
        assert len(secret) >= 8
        for text in texts:
            assert secret not in text, (secret, text)


async def _echo(request: web.Request) -> web.Response:
    form = dict(await request.post())
    return web.json_response({"error": "invalid_client", "got": form}, status=401)


@pytest.mark.parametrize(
    ("config", "env", "expected"),
    [
        # a user name is not a secret, written in the file or from the environment: masking it
        # would mask it in every message that shows the row data it also appears in
        pytest.param({"auth": {"type": "basic", "username": "admin-7", "password": "pw-5566aa"}}, {}, "admin-7 ***"),
        pytest.param(
            {"auth": {"type": "basic", "username": "${U}", "password": "pw-5566aa"}}, {"U": "admin-7"}, "admin-7 ***"
        ),
        # unless the config lists it under `secrets`
        pytest.param(
            {"secrets": ["U"], "auth": {"type": "basic", "username": "${U}", "password": "pw-5566aa"}},
            {"U": "admin-7"},
            "*** ***",
        ),
        # a variable named like a credential is one wherever it is used
        pytest.param(
            {"auth": {"type": "basic", "username": "${ADMIN_PASSWORD}", "password": "pw-5566aa"}},
            {"ADMIN_PASSWORD": "admin-7"},
            "*** ***",
        ),
    ],
    ids=["literal-name", "name-from-env", "listed-in-secrets", "named-like-a-credential"],
)
def test_names_are_not_secrets_unless_listed(config: dict[str, Any], env: dict[str, str], expected: str) -> None:
    loaded = config_from_dict({"request": {"url": URL}, **config}, env=env)
    assert loaded.redactor.redact("admin-7 pw-5566aa") == expected


def test_every_issued_kind_of_secret_is_registered(rsa_key: Any) -> None:
    config = load({"type": "basic", "username": "${U}", "password": "${P}"}, {"U": "user-4411", "P": "password-8a8a"})
    blob = base64.b64encode(b"user-4411:password-8a8a").decode()
    assert config.redactor.redact(f"Authorization: Basic {blob}") == "Authorization: Basic ***"
    config = load(
        {
            "type": "oauth2_client_credentials",
            "token_url": "https://auth.example.com/token",
            "client_id": "client-1234",
            "client_secret": "secret-5678",
        }
    )
    blob = base64.b64encode(b"client-1234:secret-5678").decode()
    assert config.redactor.redact(f"{blob} secret-5678") == "*** ***"


# --- config: the keys of each kind, and what is wrong ---------------------------------------

VALID_AUTH = [
    # (auth, what describe() says)
    pytest.param(
        {"url": "https://api.example.com/login", "token_path": "access_token"},
        "log in at https://api.example.com/login; token at access_token; sent as Authorization: Bearer <token>",
        id="login-as-before",
    ),
    pytest.param(
        {"url": "https://api.example.com/login", "token_cookie": "session"},
        "log in at https://api.example.com/login; token in the session cookie; sent as Cookie: session=<token>",
        id="login-cookie",
    ),
    pytest.param(
        {"url": "https://api.example.com/login", "token_header": "X-Auth-Token", "token_type": ""},
        "log in at https://api.example.com/login; token in the X-Auth-Token header; sent as Authorization: <token>",
        id="login-header",
    ),
    pytest.param(
        {"type": "bearer", "token": "${API_TOKEN}"},
        "a fixed token (the environment variable API_TOKEN), sent as Authorization: Bearer <token>",
        id="bearer",
    ),
    pytest.param(
        {"type": "header", "token": "${API_TOKEN}", "query_param": "api_key"},
        "a fixed token (the environment variable API_TOKEN), sent as query parameter api_key=<token>",
        id="header-query",
    ),
    pytest.param(
        {"type": "basic", "username": "ada", "password": ""},
        "HTTP Basic (auth.username and auth.password in the config), sent as Authorization: Basic <credentials>",
        id="basic-empty-password",
    ),
    pytest.param(
        {
            "type": "oauth2_client_credentials",
            "token_url": "https://auth.example.com/token",
            "client_id": "id-1",
            "client_secret": "${API_TOKEN}",
        },
        "client credentials (basic) exchanged at https://auth.example.com/token; token at access_token; sent as "
        "Authorization: Bearer <token>",
        id="oauth2",
    ),
    pytest.param(
        {"type": "jwt_signed", "algorithm": "HS256", "key": "${API_TOKEN}", "claims": {"iss": "me"}},
        "a JWT signed here (HS256, 300s), sent as Authorization: Bearer <token>",
        id="jwt-signed",
    ),
    pytest.param(
        {"type": "jwt_signed", "algorithm": "HS512", "key": "k" * 64, "token_url": "https://a.example.com/t"},
        "a JWT signed here (HS512) exchanged at https://a.example.com/t; token at access_token; sent as "
        "Authorization: Bearer <token>",
        id="jwt-signed-exchanged",
    ),
]
VALIDATOR = Draft7Validator(config_schema())


@pytest.mark.parametrize(("auth", "described"), VALID_AUTH)
def test_valid_auth_loads_and_passes_the_schema(auth: dict[str, Any], described: str) -> None:
    config = load(auth, {"API_TOKEN": TOKEN})
    assert config.auth is not None and config.auth.describe() == described
    assert [e.message for e in VALIDATOR.iter_errors({"request": {"url": URL}, "auth": auth})] == []


INVALID_AUTH = [
    # (auth, the loader's whole message, the schema's best error: where, a fragment)
    pytest.param(
        {"type": "oauth2", "token_url": "https://a.example.com/t"},
        "<config>: auth.type: 'oauth2' is not a kind of auth. Use one of: login, bearer, header, basic, "
        "oauth2_client_credentials, jwt_signed. Did you mean `type: oauth2_client_credentials`?",
        ("$.auth.type", "is not one of"),
        id="unknown-type",
    ),
    pytest.param(
        {"url": "https://a.example.com/login", "token_path": "t", "token": "${API_TOKEN}"},
        "<config>: auth.token does not apply to `type: login`, which takes: url, method, body, headers, "
        "token_path, token_header, token_cookie, expires_in_path, token_type, header, refresh_on. Remove it, or "
        "use `type: bearer` (or header).",
        ("$.auth", "'token' is not one of ['type', 'url', "),
        id="static-token-on-a-login",
    ),
    pytest.param(
        {"type": "bearer", "token": "t-123456", "client_secret": "x"},
        "<config>: auth.client_secret does not apply to `type: bearer`, which takes: token, header, token_type, "
        "query_param, refresh_on. Remove it, or use `type: oauth2_client_credentials`.",
        ("$.auth", "'client_secret' is not one of ['type', 'token', "),
        id="key-of-another-kind",
    ),
    pytest.param(
        {"type": "bearer", "tokn": "x"},
        "<config>: auth.tokn is not a known key. Did you mean `token`?",
        ("$.auth", "'tokn'"),
        id="typo",
    ),
    pytest.param(
        {"type": "bearer"},
        '<config>: auth: `auth.token` is missing. Add it, e.g. `token: "${API_TOKEN}"`.',
        ("$.auth", "'token' is a required property"),
        id="bearer-without-token",
    ),
    pytest.param(
        {"type": "bearer", "token": "${EMPTY}"},
        '<config>: auth.token is empty. Check the environment variable it reads, e.g. `token: "${API_TOKEN}"`.',
        None,
        id="empty-token",
    ),
    pytest.param(
        {"type": "bearer", "token": "abc\ndef-1234"},
        "<config>: auth.token holds a line break or control character, which cannot go in an HTTP request. "
        "Check the value (a trailing newline from a file?).",
        None,
        id="token-with-a-line-break",
    ),
    pytest.param(
        {"type": "header", "token": "k-123456"},
        "<config>: auth: `type: header` sends the key in a header you name: add `header: X-API-Key` (the header "
        "the API reads), or `query_param: api_key` to send it in the URL.",
        ("$.auth", "'header' is a required property"),
        id="header-without-a-header",
    ),
    pytest.param(
        {"type": "header", "token": "k-123456", "query_param": "api_key", "header": "X-Key"},
        "<config>: auth.header: the token goes in the query parameter api_key, so there is no header to name or "
        "type. Remove header, or remove query_param to send the token in a header.",
        None,
        id="query-param-and-header",
    ),
    pytest.param(
        {"type": "bearer", "token": "k-123456", "header": "X Key"},
        "<config>: auth.header: 'X Key' is not an HTTP header name (e.g. X-Auth-Token).",
        None,
        id="bad-header-name",
    ),
    pytest.param(
        {"type": "basic", "username": "ada"},
        '<config>: auth: `auth.password` is missing. Add it, e.g. `password: "${API_PASSWORD}"`.',
        ("$.auth", "'password' is a required property"),
        id="basic-without-password",
    ),
    pytest.param(
        {"type": "basic", "username": "ada:lovelace", "password": "p"},
        "<config>: auth.username holds a colon, which HTTP Basic cannot carry in a user name (RFC 7617). "
        "Check the value.",
        None,
        id="basic-colon-in-user",
    ),
    pytest.param(
        {"type": "oauth2_client_credentials", "client_id": "a", "client_secret": "b"},
        "<config>: auth: `auth.token_url` is missing; it is the authorization server's token endpoint.",
        ("$.auth", "'token_url' is a required property"),
        id="oauth2-without-token-url",
    ),
    pytest.param(
        {
            "type": "oauth2_client_credentials",
            "token_url": "https://a.example.com/t",
            "client_id": "a",
            "client_secret": "b",
            "client_auth": "header",
        },
        "<config>: auth.client_auth: 'header' is not a way to send the client credentials. Use `basic` (an "
        "Authorization: Basic header, the standard way) or `body` (client_id and client_secret in the form body).",
        ("$.auth.client_auth", "is not one of"),
        id="oauth2-client-auth",
    ),
    pytest.param(
        {"type": "jwt_signed", "key": "k"},
        "<config>: auth: `auth.algorithm` is missing. Use HS256, HS384 or HS512 (a shared secret in auth.key) or "
        "RS256, ES256 (a private key in PEM).",
        ("$.auth", "'algorithm' is a required property"),
        id="jwt-without-algorithm",
    ),
    pytest.param(
        {"type": "jwt_signed", "algorithm": "RS512", "key": "k"},
        "<config>: auth.algorithm: 'RS512' is not an algorithm enrich signs with. Use HS256, HS384 or HS512 (a "
        "shared secret in auth.key) or RS256, ES256 (a private key in PEM).",
        ("$.auth.algorithm", "is not one of"),
        id="jwt-unknown-algorithm",
    ),
    pytest.param(
        {"type": "jwt_signed", "algorithm": "HS256"},
        '<config>: auth: give the signing key once: `key: "${SIGNING_KEY}"` (a secret or a PEM key from the '
        "environment) or `key_file: keys/service.pem`.",
        ("$.auth", "'key' is a required property"),
        id="jwt-without-key",
    ),
    pytest.param(
        {"type": "jwt_signed", "algorithm": "RS256", "key": "not-a-pem-key-0000"},
        "<config>: auth.key: not a key RS256 can sign with (Could not parse the provided public key.); it needs "
        "an RSA private key in PEM (-----BEGIN ... PRIVATE KEY-----).",
        None,
        id="jwt-key-not-pem",
    ),
    pytest.param(
        {"type": "jwt_signed", "algorithm": "HS256", "key": "k" * 40, "key_file": "/nonexistent/k.pem"},
        '<config>: auth: give the signing key once: `key: "${SIGNING_KEY}"` (a secret or a PEM key from the '
        "environment) or `key_file: keys/service.pem`, not both.",
        ("$.auth", "should not be valid"),
        id="jwt-key-and-key-file",
    ),
    pytest.param(
        {"type": "jwt_signed", "algorithm": "RS256", "key_file": "/nonexistent/k.pem"},
        "<config>: auth.key_file: cannot read /nonexistent/k.pem (No such file or directory). Check the path; it "
        "is relative to the folder you run enrich from.",
        None,
        id="jwt-key-file-missing",
    ),
    pytest.param(
        {"type": "jwt_signed", "algorithm": "HS256", "key": "k" * 40, "claims": {"exp": 5}},
        "<config>: auth.claims.exp: exp is set when the token is signed, from auth.lifetime (seconds, default "
        "300). Remove it from claims.",
        ("$.auth.claims", "should not be valid"),
        id="jwt-exp-in-claims",
    ),
    pytest.param(
        {"type": "jwt_signed", "algorithm": "HS256", "key": "k" * 40, "claims": {"nbf": datetime.date(2030, 1, 2)}},
        "<config>: auth.claims: a value is not JSON (Object of type date is not JSON serializable). Quote dates "
        "and times, or give them as seconds since 1970.",
        None,
        id="jwt-claim-not-json",
    ),
    pytest.param(
        {"type": "jwt_signed", "algorithm": "HS256", "key": "k" * 40, "scope": "read"},
        "<config>: auth.scope applies only with auth.token_url (a signed JWT exchanged for an access token); "
        "without it the signed JWT itself is the token. Add `token_url:`, or remove the key.",
        ("$.auth", "'token_url' is a dependency of 'scope'"),
        id="jwt-scope-without-token-url",
    ),
    pytest.param(
        {"url": "https://a.example.com/login", "token_path": "t", "token_header": "X-Token"},
        "<config>: auth.token_header: the token has one place: auth.token_path (in the JSON body) or "
        "auth.token_header (a response header), not both. Remove one.",
        None,
        id="token-path-and-header",
    ),
    pytest.param(
        {"url": "https://a.example.com/login", "token_cookie": "session", "token_type": "Bearer"},
        "<config>: auth.token_type: the token goes back as the cookie session (`Cookie: session=<token>`), which "
        "has no token type. Remove token_type, or set `header: Authorization` to send the token in a header "
        "instead.",
        None,
        id="cookie-with-token-type",
    ),
    pytest.param(
        {"url": "https://a.example.com/login", "token_path": "t", "refresh_on": {"statuses": [200]}},
        "<config>: auth.refresh_on.statuses lists 200, a success: every such answer would count as a rejected "
        "token. Add `body:` with a pattern of the API's error, e.g. `body: token expired`.",
        None,
        id="refresh-on-200-without-body",
    ),
    pytest.param(
        {"url": "https://a.example.com/login", "token_path": "t", "refresh_on": {"body": "token (expired"}},
        "<config>: auth.refresh_on.body: 'token (expired' is not a regular expression (missing ), unterminated "
        "subpattern at position 6). Escape special characters with a backslash, e.g. `token\\.expired`.",
        None,
        id="refresh-on-bad-regex",
    ),
    pytest.param(
        {"url": "https://a.example.com/login", "token_path": "t", "refresh_on": {"status": [403]}},
        "<config>: auth.refresh_on.status is not a known key. Did you mean `statuses`?",
        ("$.auth.refresh_on", "'status' was unexpected"),
        id="refresh-on-typo",
    ),
    pytest.param(
        {"url": "https://a.example.com/login", "token_path": "t", "refresh_on": {"statuses": ["403"]}},
        "<config>: auth.refresh_on.statuses must be a list of HTTP status codes, e.g. [403], got ['403'].",
        ("$.auth.refresh_on.statuses[0]", "is not of type"),
        id="refresh-on-status-text",
    ),
]


@pytest.mark.parametrize(("auth", "message", "schema_error"), INVALID_AUTH)
def test_invalid_auth(auth: dict[str, Any], message: str, schema_error: tuple[str, str] | None) -> None:
    with pytest.raises(ConfigError) as info:
        load(auth, {"API_TOKEN": TOKEN, "EMPTY": ""})
    assert str(info.value) == message
    if schema_error is not None:
        error = best_match(VALIDATOR.iter_errors({"request": {"url": URL}, "auth": auth}))
        assert error is not None
        assert (error.json_path, schema_error[1] in error.message) == (schema_error[0], True), error.message


def test_errors_in_a_file_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "enrich.yaml"
    path.write_text(
        f"request:\n  url: {URL}\nauth:\n  type: bearer\n  token: ${{API_TOKEN}}\n  client_id: abc\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"API_TOKEN": TOKEN})
    assert str(info.value).startswith(f"{path}, line 6: auth.client_id does not apply to `type: bearer`")


# --- docs/auth.md: an example config for each kind, and each one loads --------------------------


def readme_auth_examples() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", AUTH_PAGE, re.DOTALL)


def test_the_readme_shows_a_complete_config_for_each_kind(rsa_key: Any) -> None:
    examples = readme_auth_examples()
    kinds = set()
    for text in examples:
        data = yaml.safe_load(text)
        auth = data["auth"]
        kinds.add(auth.get("type", "login"))
        names = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
        env = {n: pem(rsa_key) if n.endswith("PRIVATE_KEY") else "v" * 40 for n in names}
        assert [e.message for e in VALIDATOR.iter_errors(data)] == [], text
        config = config_from_dict(data, env=env)
        assert config.auth is not None and config.input is not None and config.output is not None, text
    assert kinds == set(AUTH_TYPES)
