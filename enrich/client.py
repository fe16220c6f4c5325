"""Turn a row into a request, and send it: auth, rate limit, timeout, retries.

    request = prepare(config.request, row)          # templates rendered, URL encoded
    outcome = await client.call(request)            # Outcome(status=200, body=b'{...}', ...)

Retried: the statuses in ``retry.statuses`` (429, 500, 502, 503, 504 by default),
timeouts and connection errors, with exponential backoff and full jitter, honouring
Retry-After (seconds or an HTTP date). A 429 or 503 pauses every worker through the
shared limiter. A 401 refreshes the token once for all workers and the call is sent again.
POST and PATCH may have taken effect when no clear answer came back, so they are
retried only on 429 or 503 (the server says it did not act) or when connecting failed,
unless the config opts in.

``Client`` is layered as httpx's client is: the retry policy, over redirects, over the token,
over one request on the wire (aiohttp's errors mapped to ours there, in one place). A refresh
or a redirect is not a retry attempt.

Every answer's RateLimit headers (``allowance.py``) go to the limiter, which paces by them
(``_heed``). Three answers stop the whole run instead of one row (``_halt``): a Retry-After
longer than ``retry.max_retry_after``, headers saying no call is left until a reset further away
than that (the answer itself is kept), and a TLS failure. No new call starts, the calls in flight
finish (so they reach the journal), then the error is raised.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, NoReturn

import aiohttp
import orjson
from yarl import URL

from .allowance import read_allowance
from .auth import TokenManager
from .config import MAX_RESPONSE_BYTES, AuthConfig, RequestConfig, RetryConfig
from .errors import FailureKind, RunAborted, ThrottledTooLong
from .extract import parse_answer, to_json
from .http import Answer, Failure, SendError, Transport, retry_after_seconds
from .ratelimit import Limiter
from .redact import MASK, Redactor
from .template import Row, drop_nulls, format_value, quote_query
from .units import format_size

# How many times one call is sent again after its token was rejected, at most. Each resend needs
# a token that other calls got through with (TokenManager.rejected), so this bounds only a call
# that is unlucky through many rotations in a row.
MAX_RESENDS_PER_CALL = 100
# Redirects are followed by hand, and only within the API's origin (scheme, host, port).
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Methods that may change something each time they are sent: not retried when the first try
# may have reached the API (see Client._retry_unsent_only).
_NON_IDEMPOTENT = frozenset({"POST", "PATCH"})
# Answers that say the server did not act on the request (RFC 9110 15.5.30 and 15.6.4): safe to
# send again whatever the method, and a sign to slow everyone down, not only this worker.
_NOT_ACTED = frozenset({429, 503})
_JSON = "application/json"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class PreparedRequest(NamedTuple):
    """One rendered request, ready to send (no auth header yet)."""

    method: str
    url: URL
    headers: dict[str, str]
    body: bytes | None

    def fingerprint(self) -> bytes:
        """A 16-byte key for the journal: method, URL with query, headers, body. The auth header
        is not part of a prepared request; the engine fingerprints the request's masked twin
        (``RequestConfig.fingerprinted``), so a rotated API key keeps every journal entry."""
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{self.method}\0{self.url}".encode())
        for name, value in sorted((k.lower(), v) for k, v in self.headers.items()):
            h.update(f"\0{name}:{value}".encode())
        h.update(b"\0\0")
        if self.body:
            h.update(self.body.decode("utf-8", "replace").encode())
        return h.digest()


class Outcome(NamedTuple):
    """What one call came to: the final status, the JSON body (and its parsed form) or an error."""

    status: int | None
    body: bytes | None
    error: str | None
    attempts: int
    latency_ms: float | None
    doc: Any = None  # the parsed body, for extracting fields without parsing it again
    # The request failed here, before any API saw it (it could not be sent): not an answer to
    # keep, so the journal does not save it and a rerun tries again.
    local: bool = False
    kind: FailureKind | None = None  # why there is no answer (None: there is one)


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


def prepare(config: RequestConfig, row: Row, sendable: bool = True) -> PreparedRequest:
    """Render one row's request. Raises ``TemplateValueError`` or ``ValueError`` for a bad cell.
    ``sendable=False`` (a fingerprint's twin, whose origin may be ``***``) skips the URL's check."""
    text = config.url.render(row)
    if config.params is not None and (query := _query_string(config.params.render(row))):
        base, hash_, fragment = text.partition("#")
        joint = "" if base.endswith(("?", "&")) else "&" if "?" in base else "?"
        text = f"{base}{joint}{query}{hash_}{fragment}"
    url = URL(text, encoded=True)
    if sendable and (not url.absolute or url.scheme not in ("http", "https")):
        raise ValueError(f"request.url rendered to {str(url)!r}, which is not an http(s) URL")
    headers: dict[str, str] = {}
    if config.headers is not None:
        headers = {k: format_value(v) for k, v in config.headers.render(row).items() if v is not None}
        for name, value in headers.items():
            if _CONTROL.search(value):
                raise ValueError(f"request.headers.{name}: the value holds a line break or control character")
    if config.idempotency_key is not None:
        key = config.idempotency_key.render(row)
        if key is not None and key != "":  # an empty cell sends no key (and the call is retried as a POST is)
            key = format_value(key)
            if _CONTROL.search(key):
                raise ValueError("request.idempotency_key: the value holds a line break or control character")
            headers[config.idempotency_header] = key
    body = None
    if config.body is not None:
        doc = config.body.render(row)
        if config.remove_nulls:
            doc = drop_nulls(doc)
        body = to_json(doc).encode()
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


def shown(req: PreparedRequest, auth: AuthConfig | None) -> PreparedRequest:
    """``req`` as it is sent, with the auth header or query parameter in place and the token
    masked: for dry runs and the errors table."""
    if auth is None:
        return req
    headers, params = auth.sent_as(MASK)
    url = req.url.extend_query(params) if params else req.url
    return req._replace(url=url, headers={**req.headers, **headers})


@dataclass(slots=True)
class _Call:
    """One call on its way through the layers: the request (as redirected), the attempt it is
    on, and the redirects and resends it took (each bounded per call, not per attempt)."""

    req: PreparedRequest
    attempt: int = 0
    redirects: int = 0
    resends: int = 0


def _status_kind(status: int) -> FailureKind:
    """An answer with no use: an HTTP error from 300 on; below, a response that is not one."""
    return FailureKind.HTTP if status >= 300 else FailureKind.BAD_RESPONSE


def _outcome(failure: Failure, attempts: int, error: str | None = None) -> Outcome:
    """The outcome of a call that ends on ``failure`` (with ``error`` for its message, when given)."""
    local = failure.kind is FailureKind.BAD_ROW_DATA  # never sent: not saved, a rerun tries again
    error = failure.error if error is None else error
    return Outcome(failure.status, None, error, attempts, failure.latency_ms, local=local, kind=failure.kind)


def _not_followed(answer: Answer, error: str) -> SendError:
    return SendError(Failure(_status_kind(answer.status), error, answer.status, answer.latency_ms, final=True))


class Client:
    """Sends prepared requests through one session, one limiter and one token manager.

    Layered as httpx layers its own, each layer a short loop with one concern, the outer
    calling the inner:

    - ``call``: the retry policy (attempts, backoff, Retry-After, the shared pause for 429 and
      503, the POST rule), and the final answer's JSON parsed;
    - ``_send_following_redirects``: a redirect within the API's origin (303: GET), at most
      ``MAX_REDIRECTS``; not a new attempt;
    - ``_send_handling_auth``: the rate limit's slot, the token, and a request whose token was
      rejected sent again after a refresh; not a new attempt;
    - ``http.Transport.send``: one request on the wire, its body read up to the size cap,
      aiohttp's errors mapped to ours in one place.

    A ``RunAborted`` from any layer stops the run (``_halt``).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        retry: RetryConfig,
        timeout: float,
        limiter: Limiter,
        tokens: TokenManager | None,
        redactor: Redactor,
        counters: Counters | None = None,
        follow_redirects: bool = True,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        idempotency_header: str = "Idempotency-Key",
    ) -> None:
        self.session = session
        self.transport = Transport(session, timeout=timeout, limit=max_response_bytes, redact=redactor.redact)
        self.retry = retry
        self.timeout_s = timeout
        self.limiter = limiter
        self.tokens = tokens
        self.redactor = redactor
        self.counters = counters or Counters()
        self.follow_redirects = follow_redirects
        self._too_large = f"response larger than {format_size(max_response_bytes)} (max_response_bytes), cut off"
        self._idempotency_header = idempotency_header.lower()
        self._stop: RunAborted | None = None  # set when the run must stop (see _halt)

    # --- the retry policy ------------------------------------------------------------------

    async def call(self, req: PreparedRequest) -> Outcome:
        """Send ``req`` until it succeeds, fails for good, or runs out of attempts."""
        state = _Call(req)
        retry = self.retry
        try:
            while True:
                state.attempt += 1
                try:
                    answer = await self._send_following_redirects(state)
                except SendError as exc:
                    failure = exc.failure
                    if failure.final:
                        return _outcome(failure, state.attempt)
                else:
                    if answer.status not in retry.statuses:
                        return self._answered(answer, state.attempt)
                    if self._stop is not None:
                        raise self._stop  # the quota is spent (_heed): no retry against it
                    failure = self._retryable(answer)
                if state.attempt >= retry.attempts:
                    gave_up = f" (gave up after {state.attempt} attempts)" if retry.attempts > 1 else ""
                    return _outcome(failure, state.attempt, self.redactor.redact(failure.error + gave_up))
                if not failure.unsent and self._retry_unsent_only(state.req):
                    return _outcome(failure, state.attempt, self._not_retried(failure.error, state.req))
                wait = retry.backoff_for(state.attempt) if failure.wait is None else failure.wait
                if failure.status in _NOT_ACTED:
                    self.counters.throttled += failure.status == 429
                    self.limiter.pause(wait)  # every worker waits; acquire() honours it
                else:
                    await asyncio.sleep(wait)
        except RunAborted as exc:
            await self._halt(exc)

    def _retryable(self, answer: Answer) -> Failure:
        """An answer whose status ``retry.statuses`` lists; a Retry-After too long to sleep through
        stops the run."""
        status = answer.status
        wait = retry_after_seconds(answer.headers.get("Retry-After"))
        if wait is not None and wait > self.retry.max_retry_after:
            # Sleeping for hours helps no one: stop, resumable, and say when to come back.
            raise ThrottledTooLong(wait, status, self.retry.max_retry_after, time.time() + wait)
        error = self._status_error(answer)
        # 429 and 503 say the server did not act; after another 5xx a POST may have taken effect.
        return Failure(_status_kind(status), error, status, answer.latency_ms, unsent=status in _NOT_ACTED, wait=wait)

    def _retry_unsent_only(self, req: PreparedRequest) -> bool:
        """Whether ``req`` may be retried only when it surely did not reach the API: a POST or
        PATCH without an idempotency key, unless ``retry.non_idempotent`` allows it."""
        return (
            req.method in _NON_IDEMPOTENT
            and not self.retry.non_idempotent
            and not any(name.lower() == self._idempotency_header for name in req.headers)
        )

    def _not_retried(self, error: str, req: PreparedRequest) -> str:
        return self.redactor.redact(
            f"{error} (not retried: a {req.method} may already have taken effect; set request.idempotency_key, "
            "or retry.non_idempotent: true, to retry it)"
        )

    def _status_error(self, answer: Answer) -> str:
        """``HTTP 503 Service Unavailable: <the body's start>`` (not yet masked)."""
        error = f"HTTP {answer.status} {answer.reason}".rstrip()
        return error + (f": {self.redactor.snippet(answer.body)}" if answer.body else "")

    def _answered(self, answer: Answer, attempt: int) -> Outcome:
        """The call's last answer as its outcome: a 2xx's JSON parsed once, else why there is none."""
        status, body, latency_ms = answer.status, answer.body, answer.latency_ms
        if not 200 <= status < 300:
            error = self.redactor.redact(self._status_error(answer))
            return Outcome(status, None, error, attempt, latency_ms, kind=_status_kind(status))
        if answer.cut:
            return Outcome(status, None, self._too_large, attempt, latency_ms, kind=FailureKind.BAD_RESPONSE)
        if not body.strip():
            return Outcome(status, None, None, attempt, latency_ms)
        try:
            doc = parse_answer(body)  # a 200 with HTML or cut-off JSON is a row error, found now
        except orjson.JSONDecodeError as exc:
            kind = answer.headers.get("Content-Type", "").split(";")[0] or "no content-type"
            # "unexpected end of data at char 15 of 15" says the body was cut off; HTML fails at char 0.
            why = f"{exc.msg} at char {exc.pos} of {len(body)}"
            error = f"response is not JSON (HTTP {status}, {kind}): {why}: {self.redactor.snippet(body, 80)!r}"
            return Outcome(
                status, None, self.redactor.redact(error), attempt, latency_ms, kind=FailureKind.BAD_RESPONSE
            )
        return Outcome(status, body, None, attempt, latency_ms, doc)

    async def _halt(self, stop: RunAborted | None = None) -> NoReturn:
        """Stop the run with ``stop`` (or the stop already under way): no new request starts, the
        ones in flight get up to ``timeout`` to finish, so their answers reach the journal."""
        if self._stop is None:
            self._stop = stop
        deadline = time.monotonic() + self.timeout_s
        while self.transport.active and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert self._stop is not None
        raise self._stop

    # --- redirects -------------------------------------------------------------------------

    async def _send_following_redirects(self, state: _Call) -> Answer:
        """Send ``state.req``, following redirects within its origin (which ``state.req`` becomes)."""
        while True:
            answer = await self._send_handling_auth(state)
            status = answer.status
            if (
                status not in _REDIRECTS
                or status in self.retry.statuses
                or not (location := answer.headers.get("Location"))
            ):
                return answer
            target = self._redirect_target(state.req, answer, location)
            state.redirects += 1
            if state.redirects > MAX_REDIRECTS:
                raise _not_followed(answer, f"more than {MAX_REDIRECTS} redirects")
            see_other = status == 303 or (status in (301, 302) and state.req.method == "POST")
            req = state.req
            state.req = req._replace(
                url=target, method="GET" if see_other else req.method, body=None if see_other else req.body
            )

    def _redirect_target(self, req: PreparedRequest, answer: Answer, location: str) -> URL:
        """Where a redirect points, if it may be followed: within the API's origin."""
        status = answer.status
        if not self.follow_redirects:
            raise _not_followed(answer, f"HTTP {status}: redirect not followed (request.follow_redirects is false)")
        try:
            target = req.url.join(URL(location))
        except ValueError:  # UnicodeError included: a host that is not a host name
            message = f"HTTP {status}: redirected to {location!r}, which is not a URL; not followed"
            raise _not_followed(answer, self.redactor.redact(message)) from None
        if target.origin() != req.url.origin():
            # Followed, it would carry the auth header and secret headers to another server.
            message = f"HTTP {status}: redirected to another origin ({target.origin()}), not followed"
            raise _not_followed(answer, self.redactor.redact(message))
        return target

    # --- auth --------------------------------------------------------------------------------

    async def _send_handling_auth(self, state: _Call) -> Answer:
        """Send ``state.req`` with the current token; when the API rejects the token (rotated),
        send it again with the next, up to ``MAX_RESENDS_PER_CALL`` times."""
        tokens, req = self.tokens, state.req
        while True:
            if self.limiter.pacing:
                await self.limiter.acquire()  # a shared limit out of reach raises: never run unlimited
            if self._stop is not None:
                raise self._stop
            if tokens is None:
                self._count(state)
                return self._heed(await self.transport.send(req.method, req.url, req.headers, req.body))
            # After the limiter's wait, which a token may not outlive.
            generation, auth_headers, params = await tokens.credentials(self.session)
            headers = {**req.headers, **auth_headers}
            url = req.url.extend_query(params) if params else req.url  # a key in the query: never fingerprinted
            self._count(state)
            ticket = tokens.sending(generation)
            try:
                answer = self._heed(await self.transport.send(req.method, url, headers, req.body))
            except BaseException:
                tokens.answered(ticket, None)
                raise
            rejected = tokens.is_rejection(answer.status, answer.body)  # 401, or what `auth.refresh_on` lists
            tokens.answered(ticket, accepted=not rejected)
            if not rejected or state.resends >= MAX_RESENDS_PER_CALL:
                return answer
            said = f"HTTP {answer.status}" + (f": {self.redactor.snippet(answer.body, 120)}" if answer.body else "")
            if not await tokens.rejected(self.session, ticket, said, resent=state.resends > 0):
                return answer  # the record itself was refused: the row fails with the answer
            state.resends += 1

    def _heed(self, answer: Answer) -> Answer:
        """Pass what ``answer`` announces of the rate limit to the limiter; a quota spent until
        later than ``retry.max_retry_after`` stops the run: no call starts after this one, whose
        answer is kept (the calls in flight finish, see ``_halt``)."""
        allowance = read_allowance(answer.headers, time.time())
        if allowance is None:
            return answer
        wait, longest = allowance.reset_in, self.retry.max_retry_after
        if wait <= longest:
            self.limiter.announce(allowance, self.transport.active)
            return answer
        self.limiter.announced.note(allowance)  # a long quota is spent at the run's pace
        if allowance.remaining == 0 and self._stop is None:
            self._stop = ThrottledTooLong(
                wait, answer.status, longest, time.time() + wait, said="its quota spent, 0 calls left"
            )
        return answer

    def _count(self, state: _Call) -> None:
        self.counters.calls += 1
        if state.attempt > 1:
            self.counters.retries += 1
