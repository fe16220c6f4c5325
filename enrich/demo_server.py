"""The bundled demo JWT API: a login and an enrichment endpoint, on 127.0.0.1 only.

    POST /auth/token           {"client_id": ..., "client_secret": ...} (JSON, or a form: an OAuth2
                               client-credentials grant, the client in the body or as HTTP Basic)
                               -> {"access_token": "<JWT>", "token_type": "Bearer", "expires_in": 3600}
    GET  /v1/people/{email}?domain=...    (Authorization: Bearer <JWT>)
    POST /v1/enrich            {"email": ..., "domain": ...}
                               -> {"person": {...}, "company": {...}}
    GET  /health
    GET  /_stats               counts and arrival times of the calls (for benchmarks)

Answers are made up but stable: the same email always gives the same person. About
one email in twenty is unknown (404). ``DemoSettings`` adds latency, short-lived
tokens and a server-side rate limit (429 with Retry-After) to try enrich against.
``enrich demo-server`` runs it; tests build it with ``create_app``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

import jwt
import orjson
from aiohttp import web

DEFAULT_CLIENT_ID = "demo-client"
DEFAULT_CLIENT_SECRET = "demo-secret-2f8a"

FIRST = ["Ada", "Grace", "Alan", "Katherine", "Linus", "Margaret", "José", "Zoë", "Hiro", "Amara", "Søren", "Priya"]
LAST = [
    "Lovelace",
    "Hopper",
    "Turing",
    "Johnson",
    "Torvalds",
    "Hamilton",
    "Muñoz",
    "Đặng",
    "Tanaka",
    "Okafor",
    "Kierkegaard",
    "Iyer",
]
TITLES = [
    "Data Engineer",
    "Head of Growth",
    "Account Executive",
    "CTO",
    "Operations Manager",
    "Product Designer",
    "VP Sales",
    "Analyst",
]
SENIORITY = ["junior", "senior", "manager", "director", "executive"]
TAGS = ["b2b", "saas", "fintech", "health", "retail", "ai", "logistics", "climate", "security"]


@dataclass(frozen=True, slots=True)
class DemoSettings:
    """How the demo API behaves."""

    client_id: str = DEFAULT_CLIENT_ID
    client_secret: str = DEFAULT_CLIENT_SECRET
    token_ttl: float = 3600.0
    latency: float = 0.0  # seconds added to each enrichment call
    rate_limit: int | None = None  # calls per second before 429
    signing_key: str = field(default_factory=lambda: secrets.token_hex(32), repr=False)


@dataclass
class DemoState:
    """What the server saw, for tests and for curious users."""

    logins: int = 0
    calls: int = 0
    unauthorized: int = 0
    expired: int = 0  # calls that came with a token this server issued, after it had expired
    throttled: int = 0
    call_times: list[float] = field(default_factory=list)
    window: tuple[int, int] = (0, 0)  # (second, calls in it) for the rate limit


def _basic_client(header: str) -> tuple[str, str] | None:
    """The client id and secret of ``Authorization: Basic ...`` (RFC 6749 2.3.1: each part form-encoded)."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        client_id, _, secret = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return unquote_plus(client_id), unquote_plus(secret)


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def person_for(email: str, domain: str | None = None) -> dict[str, Any] | None:
    """The made-up record for ``email``, or ``None`` when the demo does not know it."""
    email = email.strip().lower()
    if "@" not in email:
        return None
    h = _digest(email)
    if h % 20 == 7:
        return None
    domain = (domain or email.split("@", 1)[1]).strip().lower()
    d = _digest(domain)
    company = domain.split(".")[0].replace("-", " ").title()
    return {
        "person": {
            "name": f"{FIRST[h % len(FIRST)]} {LAST[(h >> 8) % len(LAST)]}",
            "email": email,
            "emails": [email, f"{email.split('@')[0]}@personal.example"],
            "employment": {
                "title": TITLES[(h >> 16) % len(TITLES)],
                "seniority": SENIORITY[(h >> 24) % len(SENIORITY)],
                "since": 2010 + (h >> 32) % 15,
            },
            "tags": [TAGS[(h >> s) % len(TAGS)] for s in (40, 44)] if h % 3 else [],
            "score": round(((h >> 20) % 1000) / 10, 1),
            "verified": bool(h % 2),
            "phone": None,
        },
        "company": {
            "domain": domain,
            "name": company,
            "employees": 10 + d % 5000,
            "public": d % 4 == 0,
        },
    }


STATE = web.AppKey("state", DemoState)
SETTINGS = web.AppKey("settings", DemoSettings)


def create_app(settings: DemoSettings | None = None) -> web.Application:
    """The demo API as an aiohttp application; ``app[STATE]`` is its ``DemoState``."""
    settings = settings or DemoSettings()
    state = DemoState()
    app = web.Application()
    app[SETTINGS] = settings
    app[STATE] = state
    issued: dict[str, float] = {}  # token -> expiry (epoch seconds)

    async def login(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = dict(await request.post())  # a form, as an OAuth2 client-credentials grant sends it
        basic = _basic_client(request.headers.get("Authorization", ""))
        if basic is not None and isinstance(body, dict):
            body = {**body, "client_id": basic[0], "client_secret": basic[1]}
        if (
            not isinstance(body, dict)
            or body.get("client_id") != settings.client_id
            or body.get("client_secret") != settings.client_secret
        ):
            return web.json_response(
                {"error": "invalid_client", "message": "unknown client_id or wrong client_secret"}, status=401
            )
        state.logins += 1
        now = time.time()
        token = jwt.encode(
            {"sub": settings.client_id, "iat": int(now), "exp": now + settings.token_ttl, "jti": secrets.token_hex(8)},
            settings.signing_key,
            algorithm="HS256",
        )
        issued[token] = now + settings.token_ttl
        return web.json_response({"access_token": token, "token_type": "Bearer", "expires_in": settings.token_ttl})

    def authorized(request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        # Only this process signs tokens, so a look-up of the ones it issued is the whole check,
        # and far cheaper per call than verifying the signature again (the demo must not be the
        # bottleneck of `make bench`).
        expires = issued.get(token)
        if expires is None:
            return False
        if time.time() >= expires:
            state.expired += 1
            return False
        return True

    async def guard(request: web.Request) -> web.Response | None:
        state.calls += 1
        state.call_times.append(time.monotonic())
        if not authorized(request):
            state.unauthorized += 1
            return web.json_response({"error": "invalid_token"}, status=401, headers={"WWW-Authenticate": "Bearer"})
        if settings.rate_limit:
            second = int(time.monotonic())
            start, count = state.window
            count = count + 1 if start == second else 1
            state.window = (second, count)
            if count > settings.rate_limit:
                state.throttled += 1
                return web.json_response({"error": "rate_limited"}, status=429, headers={"Retry-After": "1"})
        if settings.latency:
            await asyncio.sleep(settings.latency)
        return None

    def answer(email: str, domain: str | None) -> web.Response:
        record = person_for(email, domain)
        if record is None:
            return web.json_response({"error": "not_found", "message": f"no person found for {email!r}"}, status=404)
        return web.Response(body=orjson.dumps(record), content_type="application/json")

    async def people(request: web.Request) -> web.Response:
        return await guard(request) or answer(request.match_info["email"], request.query.get("domain"))

    async def enrich_post(request: web.Request) -> web.Response:
        denied = await guard(request)
        if denied:
            return denied
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "bad_request", "message": "the body must be JSON"}, status=400)
        if not isinstance(body, dict) or not isinstance(body.get("email"), str):
            return web.json_response({"error": "bad_request", "message": "`email` (a string) is required"}, status=400)
        return answer(body["email"], body.get("domain"))

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def stats(request: web.Request) -> web.Response:
        """What the server saw: counts, and each call's arrival (monotonic seconds), for `make bench`."""
        body = {
            "logins": state.logins,
            "calls": state.calls,
            "unauthorized": state.unauthorized,
            "expired": state.expired,
            "throttled": state.throttled,
            "call_times": state.call_times,
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    app.router.add_post("/auth/token", login)
    app.router.add_get("/v1/people/{email}", people)
    app.router.add_post("/v1/enrich", enrich_post)
    app.router.add_get("/health", health)
    app.router.add_get("/_stats", stats)
    return app


def settings_from_env(**overrides: Any) -> DemoSettings:
    """Demo settings, credentials taken from DEMO_CLIENT_ID / DEMO_CLIENT_SECRET when set."""
    base: dict[str, Any] = {
        "client_id": os.environ.get("DEMO_CLIENT_ID", DEFAULT_CLIENT_ID),
        "client_secret": os.environ.get("DEMO_CLIENT_SECRET", DEFAULT_CLIENT_SECRET),
    }
    base.update({k: v for k, v in overrides.items() if v is not None})
    return DemoSettings(**base)


async def serve(settings: DemoSettings, host: str = "127.0.0.1", port: int = 8787) -> web.AppRunner:
    """Start the demo API and return its runner (``await runner.cleanup()`` stops it)."""
    runner = web.AppRunner(create_app(settings), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
