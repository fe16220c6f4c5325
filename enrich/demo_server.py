"""The bundled demo JWT API: a login, people and companies, and a second people provider, on 127.0.0.1 only.

    POST /auth/token           {"client_id": ..., "client_secret": ...} (JSON, or a form: an OAuth2
                               client-credentials grant, the client in the body or as HTTP Basic)
                               -> {"access_token": "<JWT>", "token_type": "Bearer", "expires_in": 3600}
    GET  /v1/people/{email}?domain=...    (Authorization: Bearer <JWT>, as every /v1 call)
    POST /v1/enrich            {"email": ..., "domain": ...}
                               -> {"person": {...}, "company": {...}}
    GET  /v1/companies/{domain}           -> {"company": {"id": "cmp_...", "domain", "name", "industry", "employees"}}
    GET  /v1/companies/{id}/signals       -> {"signals": {"hiring", "open_roles", "headcount_growth"}}
    GET  /alt/v1/person?email=...         (X-Alt-Key: <key>: another provider, with its own key)
                               -> {"data": {"email", "full_name", "job_title"}}
    GET  /health
    GET  /_stats               counts and arrival times of the calls, and the calls per endpoint

Answers are made up but stable: the same email always gives the same person. About
one email in twenty is unknown to ``/v1/people`` (404); the alternative provider knows
about two thirds of all emails, those included, so a waterfall of the two finds more
(``/alt`` only for the first one's misses). About one domain in five is an unknown
company (404); a company's id is what ``/signals`` takes (a chain). ``DemoSettings``
adds latency, short-lived tokens and a server-side rate limit (429 with Retry-After)
to try enrich against. ``enrich demo-server`` runs it; tests build it with ``create_app``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

import jwt
import orjson
from aiohttp import web

DEFAULT_CLIENT_ID = "demo-client"
DEFAULT_CLIENT_SECRET = "demo-secret-2f8a"
DEFAULT_ALT_KEY = "demo-alt-key-7d1e"  # the alternative provider's API key (X-Alt-Key)

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
INDUSTRIES = ["Software", "Manufacturing", "Retail", "Financial Services", "Healthcare", "Logistics", "Media"]


@dataclass(frozen=True, slots=True)
class DemoSettings:
    """How the demo API behaves."""

    client_id: str = DEFAULT_CLIENT_ID
    client_secret: str = DEFAULT_CLIENT_SECRET
    alt_key: str = DEFAULT_ALT_KEY
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
    endpoints: Counter[str] = field(default_factory=Counter)  # "GET /v1/people/{email}" -> calls
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


def _company_id(domain: str) -> str:
    """``cmp_`` and twelve hex digits, the last two a check on the ten before them."""
    body = f"{_digest('company:' + domain) & 0xFF_FFFF_FFFF:010x}"
    return f"cmp_{body}{_digest(body) & 0xFF:02x}"


_COMPANY_ID = re.compile(r"cmp_([0-9a-f]{10})([0-9a-f]{2})")


def company_for(domain: str) -> dict[str, Any] | None:
    """The made-up company at ``domain``, or ``None`` when the demo does not know it (about one in five)."""
    domain = domain.strip().lower()
    if "." not in domain or (_digest("company:" + domain) >> 40) % 5 == 3:
        return None
    return {
        "company": {
            "id": _company_id(domain),
            "domain": domain,
            "name": domain.split(".")[0].replace("-", " ").title(),
            "industry": INDUSTRIES[_digest("industry:" + domain) % len(INDUSTRIES)],
            "employees": 10 + _digest(domain) % 5000,  # as /v1/people says
        }
    }


def signals_for(company_id: str) -> dict[str, Any] | None:
    """The made-up signals of the company ``company_id`` (an id ``company_for`` gave), or ``None``."""
    match = _COMPANY_ID.fullmatch(company_id)
    if match is None or int(match[2], 16) != _digest(match[1]) & 0xFF:
        return None
    s = _digest("signals:" + company_id)
    hiring = (s >> 32) % 3 != 0
    return {
        "signals": {
            "hiring": hiring,
            "open_roles": 1 + (s >> 8) % 40 if hiring else 0,
            "headcount_growth": round(((s >> 16) % 61 - 15) / 100, 2),  # -0.15 to 0.45 over a year
        }
    }


def alt_person_for(email: str) -> dict[str, Any] | None:
    """The alternative provider's record for ``email`` (about two in three, those ``person_for``
    does not know included), or ``None``. The same person as ``person_for``'s, in its own shape."""
    email = email.strip().lower()
    if "@" not in email or _digest("alt:" + email) % 3 == 0:
        return None
    h = _digest(email)
    return {
        "data": {
            "email": email,
            "full_name": f"{FIRST[h % len(FIRST)]} {LAST[(h >> 8) % len(LAST)]}",
            "job_title": TITLES[(h >> 16) % len(TITLES)],
        }
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

    def alt_authorized(request: web.Request) -> bool:
        return secrets.compare_digest(request.headers.get("X-Alt-Key", "").encode(), settings.alt_key.encode())

    async def guard(request: web.Request, alt: bool = False) -> web.Response | None:
        state.calls += 1
        state.call_times.append(time.monotonic())
        state.endpoints[f"{request.method} {request.match_info.route.resource.canonical}"] += 1  # type: ignore[union-attr]
        if alt:
            if not alt_authorized(request):
                state.unauthorized += 1
                return web.json_response(
                    {"error": "invalid_key", "message": "send the API key in X-Alt-Key"}, status=401
                )
        elif not authorized(request):
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

    def found(record: dict[str, Any] | None, missing: str) -> web.Response:
        if record is None:
            return web.json_response({"error": "not_found", "message": missing}, status=404)
        return web.Response(body=orjson.dumps(record), content_type="application/json")

    async def company(request: web.Request) -> web.Response:
        domain = request.match_info["domain"]
        return await guard(request) or found(company_for(domain), f"no company found at {domain!r}")

    async def signals(request: web.Request) -> web.Response:
        company_id = request.match_info["id"]
        return await guard(request) or found(signals_for(company_id), f"no company found with id {company_id!r}")

    async def alt_person(request: web.Request) -> web.Response:
        denied = await guard(request, alt=True)
        if denied:
            return denied
        email = request.query.get("email", "")
        if not email.strip():
            return web.json_response({"error": "bad_request", "message": "`email` is required"}, status=400)
        return found(alt_person_for(email), f"no person found for {email!r}")

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def stats(request: web.Request) -> web.Response:
        """What the server saw: counts, each call's arrival (monotonic seconds, for `make bench`), and
        the calls per endpoint (``{"GET /alt/v1/person": 12, ...}``)."""
        body = {
            "logins": state.logins,
            "calls": state.calls,
            "unauthorized": state.unauthorized,
            "expired": state.expired,
            "throttled": state.throttled,
            "call_times": state.call_times,
            "endpoints": dict(state.endpoints),
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    app.router.add_post("/auth/token", login)
    app.router.add_get("/v1/people/{email}", people)
    app.router.add_post("/v1/enrich", enrich_post)
    app.router.add_get("/v1/companies/{domain}", company)
    app.router.add_get("/v1/companies/{id}/signals", signals)
    app.router.add_get("/alt/v1/person", alt_person)
    app.router.add_get("/health", health)
    app.router.add_get("/_stats", stats)
    return app


def settings_from_env(**overrides: Any) -> DemoSettings:
    """Demo settings, credentials taken from DEMO_CLIENT_ID / DEMO_CLIENT_SECRET (and the alternative
    provider's key from DEMO_ALT_KEY) when set."""
    base: dict[str, Any] = {
        "client_id": os.environ.get("DEMO_CLIENT_ID", DEFAULT_CLIENT_ID),
        "client_secret": os.environ.get("DEMO_CLIENT_SECRET", DEFAULT_CLIENT_SECRET),
        "alt_key": os.environ.get("DEMO_ALT_KEY", DEFAULT_ALT_KEY),
    }
    base.update({k: v for k, v in overrides.items() if v is not None})
    return DemoSettings(**base)


async def serve(settings: DemoSettings, host: str = "127.0.0.1", port: int = 8787) -> web.AppRunner:
    """Start the demo API and return its runner (``await runner.cleanup()`` stops it)."""
    runner = web.AppRunner(create_app(settings), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
