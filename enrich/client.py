"""Turn a row into a request, and send it: auth, rate limit, timeout, retries.

    request = prepare(config.request, row)          # templates rendered, URL encoded
    outcome = await client.call(request)            # Outcome(status=200, body=b'{...}', ...)

Retried: the statuses in ``retry.statuses`` (429, 500, 502, 503, 504 by default),
timeouts and connection errors, with exponential backoff and full jitter, honouring
Retry-After (seconds or an HTTP date). A 429 pauses every worker through the shared
limiter. A 401 refreshes the token once for all workers and the call is sent again.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple

import aiohttp
import orjson
from yarl import URL

from .auth import TokenManager
from .config import RequestConfig, RetryConfig
from .ratelimit import RateLimiter
from .redact import Redactor
from .template import Row, drop_nulls, format_value, quote_query

# How many times one call may ask for a new token before its 401 is final.
MAX_REFRESHES_PER_CALL = 2
# Redirects are followed by hand, and only within the API's origin (scheme, host, port).
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_JSON = "application/json"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class PreparedRequest(NamedTuple):
    """One rendered request, ready to send (no auth header yet)."""

    method: str
    url: URL
    headers: dict[str, str]
    body: bytes | None

    def fingerprint(self, redact: Callable[[str], str] = str) -> bytes:
        """A 16-byte key for the journal: method, URL with query, headers, body.

        The auth header is not part of a prepared request, and ``redact`` masks the other
        secrets first, so rotating an API key does not make every journal entry a miss.
        """
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{self.method}\0{redact(str(self.url))}".encode())
        for name, value in sorted((k.lower(), v) for k, v in self.headers.items()):
            h.update(f"\0{name}:{redact(value)}".encode())
        h.update(b"\0\0")
        if self.body:
            h.update(redact(self.body.decode("utf-8", "replace")).encode())
        return h.digest()


class Outcome(NamedTuple):
    """What one call came to: the final status, the JSON body (and its parsed form) or an error."""

    status: int | None
    body: bytes | None
    error: str | None
    attempts: int
    latency_ms: float | None
    doc: Any = None  # the parsed body, for extracting fields without parsing it again


@dataclass(slots=True)
class Counters:
    """Running totals of a run, read by the progress callback and the summary."""

    calls: int = 0
    retries: int = 0
    throttled: int = 0


def _query_string(params: dict[str, Any]) -> str:
    """``k=v&k2=v2`` from rendered params: null values left out, a list repeats its key."""
    parts: list[str] = []
    for key, value in params.items():
        if value is None:
            continue
        name = quote_query(key)
        if isinstance(value, list):
            parts.extend(f"{name}={quote_query(format_value(v))}" for v in value)
        else:
            parts.append(f"{name}={quote_query(format_value(value))}")
    return "&".join(parts)


def prepare(config: RequestConfig, row: Row) -> PreparedRequest:
    """Render one row's request. Raises ``TemplateValueError`` or ``ValueError`` for a bad cell."""
    text = config.url.render(row)
    if config.params is not None and (query := _query_string(config.params.render(row))):
        base, hash_, fragment = text.partition("#")
        joint = "" if base.endswith(("?", "&")) else "&" if "?" in base else "?"
        text = f"{base}{joint}{query}{hash_}{fragment}"
    url = URL(text, encoded=True)
    if not url.absolute or url.scheme not in ("http", "https"):
        raise ValueError(f"request.url rendered to {str(url)!r}, which is not an http(s) URL")
    headers: dict[str, str] = {}
    if config.headers is not None:
        headers = {k: format_value(v) for k, v in config.headers.render(row).items() if v is not None}
        for name, value in headers.items():
            if _CONTROL.search(value):
                raise ValueError(f"request.headers.{name}: the value holds a line break or control character")
    body = None
    if config.body is not None:
        doc = config.body.render(row)
        if config.remove_nulls:
            doc = drop_nulls(doc)
        body = orjson.dumps(doc, default=str)
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = _JSON
    return PreparedRequest(config.method, url, headers, body)


def to_curl(
    req: PreparedRequest,
    auth: tuple[str, str] | None = None,
    redact: Callable[[str], str] = str,
    *,
    multiline: bool = False,
) -> str:
    """A curl command line that sends ``req`` (a dry run shows it; a user can paste it into a shell).

    ``auth`` is the auth header as (name, value), already masked by the caller or by ``redact``,
    which every piece of text goes through (URL, headers, body). Each argument is shell-quoted.

    >>> req = PreparedRequest("POST", URL("https://api.example.com/v1/people"), {"Content-Type": "application/json"}, b'{"a":1}')
    >>> print(to_curl(req, ("Authorization", "Bearer ***")))
    curl -X POST https://api.example.com/v1/people -H 'Content-Type: application/json' -H 'Authorization: Bearer ***' --data-raw '{"a":1}'

    ``multiline=True`` puts each header and the body on a line of its own (`` \\`` continuations).
    """
    url = redact(str(req.url))
    first = ["curl"]
    if any(c in url for c in "[]{}"):
        first.append("--globoff")  # curl would read brackets and braces as a URL pattern
    if req.method == "HEAD" and req.body is None:
        first.append("--head")  # `-X HEAD` makes curl wait for a body that never comes
    elif req.method != "GET" or req.body is not None:
        first += ["-X", req.method]  # plain curl sends GET, or POST once it has --data-raw
    first.append(url)
    groups = [first]
    headers = {**req.headers, auth[0]: auth[1]} if auth is not None else req.headers
    for name, value in headers.items():
        # `-H 'Name:'` would remove the header; `Name;` sends it empty.
        groups.append(["-H", redact(f"{name}: {value}" if value else f"{name};")])
    if req.body is not None:
        groups.append(["--data-raw", redact(req.body.decode("utf-8", "replace"))])
    lines = [" ".join(shlex.quote(arg) for arg in group) for group in groups]
    return " \\\n  ".join(lines) if multiline else " ".join(lines)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Parse a Retry-After header: seconds or an HTTP date. ``None`` when absent or garbage."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
        return max(0.0, seconds)
    return seconds if seconds >= 0 and seconds == seconds else None  # NaN fails the last test


class Client:
    """Sends prepared requests through one session, one limiter and one token manager."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        retry: RetryConfig,
        timeout: float,
        limiter: RateLimiter,
        tokens: TokenManager | None,
        redactor: Redactor,
        counters: Counters | None = None,
    ) -> None:
        self.session = session
        self.retry = retry
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.timeout_s = timeout
        self.limiter = limiter
        self.tokens = tokens
        self.redactor = redactor
        self.counters = counters or Counters()

    async def call(self, req: PreparedRequest) -> Outcome:
        """Send ``req`` until it succeeds, fails for good, or runs out of attempts."""
        attempts = self.retry.attempts
        attempt = refreshes = redirects = 0
        error: str | None = None
        status: int | None = None
        latency_ms: float | None = None
        while attempt < attempts:
            attempt += 1
            headers = req.headers
            generation = 0
            if self.tokens is not None:
                generation, name, value = self.tokens.header()
                headers = {**req.headers, name: value}
            if self.limiter.pacing:
                await self.limiter.acquire()
            self.counters.calls += 1
            if attempt > 1:
                self.counters.retries += 1
            started = time.perf_counter()
            try:
                async with self.session.request(
                    req.method, req.url, headers=headers, data=req.body, timeout=self.timeout, allow_redirects=False
                ) as resp:
                    body = await resp.read()
                    status, reason = resp.status, resp.reason or ""
                    response_headers = resp.headers  # read below only when needed
            except aiohttp.InvalidURL as exc:
                return Outcome(None, None, self.redactor.redact(f"invalid URL: {exc}"), attempt, None)
            except ValueError as exc:  # aiohttp refuses a header or URL it cannot send: this row fails
                return Outcome(None, None, self.redactor.redact(f"cannot send the request: {exc}"), attempt, None)
            except TimeoutError:
                status, error = None, f"timed out after {self.timeout_s:g}s"
                latency_ms = (time.perf_counter() - started) * 1000
                if attempt < attempts:
                    await asyncio.sleep(self.retry.backoff_for(attempt))
                continue
            except aiohttp.ClientError as exc:
                status, error = None, f"connection error: {exc or type(exc).__name__}"
                latency_ms = (time.perf_counter() - started) * 1000
                if attempt < attempts:
                    await asyncio.sleep(self.retry.backoff_for(attempt))
                continue
            latency_ms = (time.perf_counter() - started) * 1000

            if self.tokens is not None:
                if status == 401 and refreshes < MAX_REFRESHES_PER_CALL:
                    refreshes += 1
                    attempt -= 1  # a rejected token is not the call's fault
                    await self.tokens.refresh(self.session, generation)
                    continue
                if status != 401:
                    self.tokens.accepted(generation)
            if status in self.retry.statuses:
                error = f"HTTP {status} {reason}".rstrip() + (f": {self.redactor.snippet(body)}" if body else "")
                if attempt >= attempts:
                    break
                wait = retry_after_seconds(response_headers.get("Retry-After"))
                if wait is None:
                    wait = self.retry.backoff_for(attempt)
                wait = min(wait, self.retry.max_retry_after)
                if status == 429:
                    self.counters.throttled += 1
                    self.limiter.pause(wait)  # every worker waits; acquire() honours it
                else:
                    await asyncio.sleep(wait)
                continue
            if status in _REDIRECTS and (location := response_headers.get("Location")):
                target = req.url.join(URL(location))
                if target.origin() != req.url.origin():
                    # Followed, it would carry the auth header and secret headers to another server.
                    message = f"HTTP {status}: redirected to another origin ({target.origin()}), not followed"
                    return Outcome(status, None, self.redactor.redact(message), attempt, latency_ms)
                redirects += 1
                if redirects > MAX_REDIRECTS:
                    return Outcome(status, None, f"more than {MAX_REDIRECTS} redirects", attempt, latency_ms)
                see_other = status == 303 or (status in (301, 302) and req.method == "POST")
                req = req._replace(
                    url=target, method="GET" if see_other else req.method, body=None if see_other else req.body
                )
                attempt -= 1  # following a redirect is not a new attempt
                continue
            if not 200 <= status < 300:
                message = f"HTTP {status} {reason}".rstrip() + (f": {self.redactor.snippet(body)}" if body else "")
                return Outcome(status, None, self.redactor.redact(message), attempt, latency_ms)
            if not body.strip():
                return Outcome(status, None, None, attempt, latency_ms)
            try:
                doc = orjson.loads(body)  # a 200 with HTML or cut-off JSON is a row error, found now
                return Outcome(status, body, None, attempt, latency_ms, doc)
            except orjson.JSONDecodeError:
                kind = response_headers.get("Content-Type", "").split(";")[0] or "no content-type"
                message = f"response is not JSON (HTTP {status}, {kind}): {self.redactor.snippet(body, 80)!r}"
                return Outcome(status, None, self.redactor.redact(message), attempt, latency_ms)
        if error and attempts > 1:
            error = f"{error} (gave up after {attempt} attempts)"
        return Outcome(status, None, self.redactor.redact(error or "failed"), attempt, latency_ms)
