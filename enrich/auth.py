"""Get, hold and refresh the token; say what each call carries.

Every kind of ``auth.type`` comes down to a token and where it goes (a header, a
cookie, a query parameter). ``credentials()`` gives what to add to a call; it fetches
a new token shortly before the current one expires (the lifetime the API states at
``auth.expires_in_path``, else the JWT's own ``exp``), once however many workers ask.
A call the API rejects (401, or what ``auth.refresh_on`` lists) asks ``rejected()``
whether to send it again, which tells apart three cases by what the other calls with
the same token did:

- the token was **rotated** (revoked after some uses, or replaced on the server): calls
  got through with it before, and the calls sent after the rejection are rejected too.
  A new token is fetched once (the other workers wait for it) and the call is sent
  again, for as long as each new token gets some call through.
- the **record was refused** for itself (often a 403 under ``refresh_on``): a call sent
  after the rejection got through with the same token. The row fails with the API's
  answer; no login.
- a **fresh token is rejected** before any call got through with it: fetching again
  cannot help, and the run stops (``AuthError``), as it does for a rejected fixed key.

    tokens = TokenManager(config.auth, redactor)
    creds = await tokens.credentials(session)       # Credentials(1, {"Authorization": "Bearer eyJ..."}, {})
    ticket = tokens.sending(creds.generation)       # just before the request goes out
    ...                                             # send the call with creds.headers and creds.params
    rejected = tokens.is_rejection(status, body)
    tokens.answered(ticket, accepted=not rejected)
    if rejected and await tokens.rejected(session, ticket):
        ...                                         # send it again (with the current token)

Claims read from a token are hints for timing only: a token without ``exp``, with
``alg: none`` or not a JWT at all works the same, refreshed on rejection only.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import aiohttp
import orjson

from .config import MAX_RESPONSE_BYTES, AuthConfig, RetryConfig
from .errors import AuthError
from .http import read_body
from .redact import Redactor
from .retry import Patience, retrying
from .units import format_size

# Refresh this share of a token's lifetime before it ends: at most MAX_MARGIN seconds, and at
# least MIN_MARGIN (or half the lifetime, for tokens shorter than a second).
MARGIN_SHARE = 0.25
MAX_MARGIN = 60.0
MIN_MARGIN = 0.5
# How much of a body `auth.refresh_on.body` searches: error bodies are short, answers may be long.
BODY_SCAN = 4096
# A token said to live less than this is used as if it lived this long: `expires_in: 1e-9` from a
# server would otherwise mean a login per call. A token that does expire sooner is rejected, and
# a rejection renews it at once.
MIN_LIFETIME = 2.0
# After a rejection, how long the other workers' next calls are awaited to tell a rotated token
# from a refused record, when none is on the wire.
EVIDENCE_WAIT = 0.05
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Ticket(NamedTuple):
    """One request sent with a token: its generation, and its place in the order of sends."""

    generation: int
    seq: int


class Credentials(NamedTuple):
    """What a call adds: the token's generation, headers (auth header or cookie) and query parameters.

    One object per token, shared by every call: treat the dicts as read-only.
    """

    generation: int
    headers: dict[str, str]
    params: dict[str, str]


_NONE = Credentials(0, {}, {})


class _Reply(NamedTuple):
    """The login's response, read before its connection is released."""

    status: int
    reason: str
    headers: Any
    cookies: Any
    body: bytes
    cut: bool


def refresh_margin(lifetime: float) -> float:
    """Seconds before expiry to fetch the next token.

    >>> refresh_margin(3600), refresh_margin(8), refresh_margin(1)
    (60.0, 2.0, 0.5)
    """
    return min(MAX_MARGIN, max(lifetime * MARGIN_SHARE, min(MIN_MARGIN, lifetime / 2)))


def _seconds(value: Any) -> float | None:
    """A positive, finite number of seconds from a JSON value (a number or numeric text), else None."""
    if isinstance(value, list):  # a JSONPath gives its matches
        value = value[0] if value else None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if 0 < value < math.inf else None


def jwt_lifetime(token: str, now: float) -> float | None:
    """Seconds the token has left by its own ``exp`` claim, or None (no ``exp``, or not a JWT).

    The signature is not verified: the claims only time the refresh. The time left is
    ``exp - now``, but never more than ``exp - iat`` (so a clock behind the API's cannot make
    the refresh late); when our clock is ahead of the API's so far that ``exp`` looks past,
    ``exp - iat`` alone. An integer ``iat`` may have been rounded down: a second is taken off.
    """
    if token.count(".") != 2:
        return None
    import jwt

    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except (jwt.PyJWTError, ValueError, TypeError):
        return None
    exp, iat = _number(claims.get("exp")), _number(claims.get("iat"))
    if exp is None:
        return None
    issued = exp - iat - (1.0 if iat.is_integer() else 0.0) if iat is not None and exp - iat > 1 else None
    left = exp - now
    if left > 0:
        return min(left, issued) if issued is not None else left
    return issued  # exp looks past: our clock is ahead, or the token is stale (a rejection will tell)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


class TokenManager:
    """Holds the current token and its generation; proactive and on-rejection refresh, single-flight.

    ``clock`` (monotonic seconds) times the refreshes and ``wall_clock`` (epoch seconds)
    reads ``exp`` claims and sets ``iat``; tests pass their own.
    """

    def __init__(
        self,
        config: AuthConfig,
        redactor: Redactor,
        retry: RetryConfig | None = None,
        timeout: float = 30.0,
        *,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.redactor = redactor
        self.retry = retry or RetryConfig()
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.max_response_bytes = max_response_bytes
        self.generation = 0
        self.logins = 0  # tokens fetched or signed (a static secret counts none)
        self._clock = clock
        self._wall = wall_clock
        self._accepted = 0  # the newest generation a call got through with
        # What the calls sent with the current token came to, to tell a rotated token from a
        # refused record: calls on the wire, and the latest send (by order) accepted and rejected.
        self._seq = 0
        self._in_flight = 0
        self._last_sent = -math.inf
        self._waiting = 0  # calls waiting in `rejected`
        self._last_ok = -1
        self._last_rejected = -1
        self._moved = asyncio.Event()  # set (and replaced) whenever one of those changes
        self._token: str | None = None
        self._creds = _NONE
        self._header: tuple[int, str, str] | None = None
        self._refresh_at = -math.inf  # due now: the first credentials() fetches a token
        self._use_until = -math.inf  # while a refresh runs, the current token still serves until then
        self._lock = asyncio.Lock()
        self._statuses = config.refresh_on.statuses
        self._pattern = config.refresh_on.body
        if config.static:
            assert config.token is not None
            self._install(config.token, None, 0.0)

    # --- what a call uses --------------------------------------------------------------------

    async def credentials(self, session: aiohttp.ClientSession) -> Credentials:
        """What to add to a call, fetching the next token first when the current one is due."""
        if self._clock() >= self._refresh_at:
            await self._due(session)
        return self._creds

    def is_rejection(self, status: int, body: bytes) -> bool:
        """Whether a response says the token was rejected: 401, or a match of ``auth.refresh_on``."""
        if status == 401:
            return True
        if self._pattern is None:
            return status in self._statuses
        if self._statuses and status not in self._statuses:
            return False
        return self._pattern.search(body, 0, BODY_SCAN) is not None

    def accepted(self, generation: int) -> None:
        """A call sent with this generation's token was not rejected."""
        if generation > self._accepted:
            self._accepted = generation

    def sending(self, generation: int) -> Ticket:
        """A request with this generation's token goes out now; ``answered`` must follow."""
        self._seq += 1
        if generation == self.generation:
            self._in_flight += 1
            self._last_sent = time.monotonic()
            self._move()
        return Ticket(generation, self._seq)

    def answered(self, ticket: Ticket, accepted: bool | None) -> None:
        """What came of a ``sending``: accepted, rejected, or no answer (``None``: a timeout)."""
        if accepted:
            self.accepted(ticket.generation)
        if ticket.generation != self.generation:
            return  # an older token's call: nothing to learn about the current one
        self._in_flight -= 1
        if accepted:
            self._last_ok = max(self._last_ok, ticket.seq)
        elif accepted is not None:
            self._last_rejected = max(self._last_rejected, ticket.seq)
        self._move()

    def _move(self) -> None:
        """Wake the calls waiting in ``rejected`` to look again (if any: this runs on every send)."""
        if self._waiting:
            self._moved.set()
            self._moved = asyncio.Event()

    async def rejected(
        self, session: aiohttp.ClientSession, ticket: Ticket, answer: str = "", resent: bool = False
    ) -> bool:
        """A call sent with ``ticket`` was rejected: whether to send it again (with the token
        current when this returns), having fetched a new one if the token was rotated. False:
        the record itself was refused, and the row fails with the API's answer. Raises
        ``AuthError`` when no token can help (a fixed secret or a fresh token rejected).

        ``resent``: this call was already sent again after a rejection; if the token it was
        rejected with now got no call through either, the call is refused for itself (and a
        token that is bad for every call stops the run at the next call's rejection).
        """
        mark = self._seq  # calls sent from now on show what the token is worth after this rejection
        deadline = time.monotonic() + (self.timeout.total or 30.0) + 1.0
        while True:
            if self.generation != ticket.generation:
                return True  # replaced meanwhile: send it with the new one
            if self._last_ok > mark:
                return False  # a later call got through with this token: this record was refused
            proven = self._accepted >= ticket.generation
            if proven and self._last_rejected > mark:
                break  # and later calls are rejected too: rotated
            now = time.monotonic()
            # Calls on the wire will tell; so may the other workers' next calls, if they keep
            # sending (a quiet moment of EVIDENCE_WAIT means none is coming: decide without).
            waiting = deadline - now if self._in_flight > 0 else self._last_sent + EVIDENCE_WAIT - now
            if waiting <= 0 or now >= deadline:
                break
            moved = self._moved
            self._waiting += 1
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(moved.wait(), min(waiting, deadline - now))
            finally:
                self._waiting -= 1
        if self._accepted < ticket.generation and resent:
            return False  # its own fresh token refused it, and no other call used it: refused for itself
        await self.refresh(session, ticket.generation, answer)
        return True

    def header(self) -> tuple[int, str, str]:
        """The token's generation, and the header name and value to send with a call.

        The older interface: ``credentials()`` also covers a token sent in the query string.
        """
        if self._header is None:
            if self.config.query_param and self._token is not None:
                raise RuntimeError("auth.query_param sends the token in the URL: use TokenManager.credentials()")
            raise RuntimeError("TokenManager.header() before login()")
        return self._header

    # --- getting tokens ----------------------------------------------------------------------

    async def login(self, session: aiohttp.ClientSession) -> None:
        """Fetch the first token (nothing to do for a static secret); raise ``AuthError`` saying what went wrong."""
        if self.config.static:
            return
        async with self._lock:
            if self.generation == 0 or self._clock() >= self._refresh_at:
                await self._fetch(session)

    async def refresh(self, session: aiohttp.ClientSession, seen_generation: int, answer: str = "") -> None:
        """Replace the token that the caller saw rejected, unless another caller already did.

        A token fetched by a refresh and rejected before any call got through means
        fetching again cannot help: the run stops instead of looping. So does a rejected
        static secret, which no refresh can change. ``answer`` (the rejecting response, e.g.
        ``HTTP 401: {"error": "invalid api key"}``) goes into that message.
        """
        async with self._lock:
            if self.generation != seen_generation:
                return
            said = f" The API answered {answer}." if answer else ""
            if self.config.static:
                raise AuthError(self.redactor.redact(self.config.static_rejected() + said))
            if self.generation > 1 and self._accepted < self.generation:
                raise AuthError(self.redactor.redact(self.config.fresh_rejected() + said))
            await self._fetch(session)

    async def _due(self, session: aiohttp.ClientSession) -> None:
        if self._lock.locked() and self._clock() < self._use_until:
            return  # another worker is fetching the next token, and this one is still good
        async with self._lock:
            if self._clock() < self._refresh_at:
                return  # fetched while this worker waited
            await self._fetch(session)

    async def _fetch(self, session: aiohttp.ClientSession) -> None:
        started = self._clock()
        token, lifetime = await self.config.fetch(self, session)  # each kind gets its token its own way
        self._install(token, lifetime, started)

    # --- what a kind of auth uses to get a token (auth_config.TokenSource) ---------------------------

    def now(self) -> float:
        """The wall clock, in epoch seconds: what a signed token's ``iat`` is."""
        return self._wall()

    def remember(self, token: str) -> None:
        """A token made here: masked from now on."""
        self.redactor.add_token(token)

    async def exchange(
        self, session: aiohttp.ClientSession, *, headers: dict[str, str], json: Any = None, data: Any = None
    ) -> tuple[str, float | None]:
        """Send the login or token request: the token, and the seconds it lives (as the API states it,
        else the JWT's own ``exp``; at least ``MIN_LIFETIME``), or None when unknown."""
        token, lifetime = await self._request(session, json=json, data=data, headers=headers)
        if lifetime is None:
            lifetime = jwt_lifetime(token, self._wall())
        if lifetime is not None:
            lifetime = max(lifetime, MIN_LIFETIME)
        return token, lifetime

    def _install(self, token: str, lifetime: float | None, started: float) -> None:
        """Make ``token`` the current one, valid for ``lifetime`` seconds from ``started`` (None: unknown)."""
        self.redactor.add_token(token)
        self._token = token
        self.generation += 1
        self._in_flight, self._last_ok, self._last_rejected = 0, -1, -1
        self._move()
        headers, params = self.config.sent_as(token)
        self._creds = Credentials(self.generation, headers, params)
        self._header = (self.generation, *next(iter(headers.items()))) if headers else None
        if lifetime is None:
            self._refresh_at = self._use_until = math.inf
        else:
            margin = refresh_margin(lifetime)
            self._refresh_at = started + lifetime - margin
            self._use_until = started + lifetime - margin / 2

    async def _request(
        self, session: aiohttp.ClientSession, *, headers: dict[str, str], json: Any = None, data: Any = None
    ) -> tuple[str, float | None]:
        """Send the login or token request (retrying what ``retry`` allows); the token and its stated lifetime."""
        cfg = self.config
        what, where = cfg.requested_as[0], cfg.requested_as[1].format(at=cfg.at)

        async def send() -> _Reply:
            # Never redirected: a 307 would replay the credentials in the body to wherever it points.
            async with session.request(
                cfg.method, cfg.url, json=json, data=data, headers=headers, timeout=self.timeout, allow_redirects=False
            ) as resp:
                body, cut = await read_body(resp, self.max_response_bytes)
                return _Reply(resp.status, resp.reason or "", resp.headers, resp.cookies, body, cut)

        def unreachable(exc: BaseException) -> AuthError:
            why = "timed out" if isinstance(exc, asyncio.TimeoutError) else str(exc) or type(exc).__name__
            return AuthError(
                self.redactor.redact(
                    f"{what} failed: cannot reach {where} {cfg.url} ({why}). "
                    "Check that the API is running and that the URL is right."
                )
            )

        reply = await retrying(
            send,
            Patience(self.retry.backoff_for, attempts=self.retry.attempts),
            on=(TimeoutError, aiohttp.ClientError),
            again=lambda reply: reply.status in self.retry.statuses,
            give_up=unreachable,
        )
        status, reason, response_headers, cookies, body, cut = reply
        self.logins += 1
        if cut:
            raise AuthError(
                f"{what} failed: the response of {cfg.url} (HTTP {status}) is larger than "
                f"{format_size(self.max_response_bytes)} (max_response_bytes), which no token needs. Check {where}."
            )
        if 300 <= status < 400:
            target = response_headers.get("Location", "")
            raise AuthError(
                self.redactor.redact(
                    f"{what} failed: {cfg.method} {cfg.url} redirected (HTTP {status}) to {target or 'nowhere'}, "
                    f"which is not followed: the credentials would go with it. Set {where} to the URL that "
                    "answers with the token."
                )
            )
        if not 200 <= status < 300:
            raise AuthError(
                self.redactor.redact(
                    f"{what} failed: {cfg.method} {cfg.url} returned HTTP {status} {reason}"
                    f"{': ' + self.redactor.snippet(body) if body else ''}. {cfg.credentials_hint.format(at=cfg.at)}"
                )
            )
        doc: Any = None
        if cfg.get_token is not None or cfg.get_expires_in is not None:
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                if cfg.get_token is not None:
                    # The body is not quoted: a successful login's answer likely holds the token,
                    # which is not known yet and so could not be masked.
                    kind = response_headers.get("Content-Type", "").split(";")[0] or "no content-type"
                    raise AuthError(
                        self.redactor.redact(
                            f"{what} failed: the response of {cfg.url} (HTTP {status}, {kind}, {len(body):,} bytes) "
                            f"is not JSON ({exc.msg} at char {exc.pos}). Check {where} and auth.method."
                        )
                    ) from None
        if cfg.get_token is not None:
            token = self._token_in_body(doc, status, what)
        elif cfg.token_header:
            token = self._token_in_header(response_headers.get(cfg.token_header), response_headers, status)
        else:
            morsel = cookies.get(cfg.token_cookie or "")
            if morsel is None or not morsel.value:
                found = ", ".join(sorted(cookies)) or "none"
                raise AuthError(
                    f"login succeeded (HTTP {status}) but set no cookie named {cfg.token_cookie} (cookies it set: "
                    f"{found}). Set auth.token_cookie to the cookie that holds the token."
                )
            token = morsel.value
        self.redactor.add_token(token)
        if _CONTROL.search(token):  # it cannot go in a header: every call would fail here, none reach the API
            raise AuthError(
                f"{what} succeeded (HTTP {status}) but the token holds a line break or control character, which "
                f"no HTTP header can carry. Check {where} and where the token is taken from "
                "(auth.token_path, auth.token_header or auth.token_cookie)."
            )
        lifetime = _seconds(cfg.get_expires_in(doc)) if cfg.get_expires_in is not None and doc is not None else None
        return token, lifetime

    def _token_in_body(self, doc: Any, status: int, what: str) -> str:
        cfg = self.config
        token = cfg.get_token(doc)
        if isinstance(token, list):  # a JSONPath token_path yields a list of matches
            token = token[0] if token else None
        if not isinstance(token, str) or not token:
            keys = ", ".join(map(str, doc)) if isinstance(doc, dict) else type(doc).__name__
            found = "nothing" if token in (None, "") else f"a {type(token).__name__}, not a string"
            # The found value is never quoted: it might be a token.
            raise AuthError(
                f"{what} succeeded (HTTP {status}) but auth.token_path `{cfg.token_path}` found {found} "
                f"in the response (its top-level keys: {keys}). Set auth.token_path to where the token is, "
                "e.g. `access_token` or `data.session.jwt`."
            )
        return token

    def _token_in_header(self, value: str | None, headers: Any, status: int) -> str:
        if value and value[:7].lower() == "bearer ":
            value = value[7:].strip()
        if not value:
            names = ", ".join(sorted({k.title() for k in headers})) or "none"
            raise AuthError(
                f"login succeeded (HTTP {status}) but the response has no {self.config.token_header} header (its "
                f"headers: {names}). Set auth.token_header to the header that holds the token, or auth.token_path "
                "if it is in the body."
            )
        return value
