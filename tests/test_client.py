"""The client's layers, against a real server on 127.0.0.1: what each kind of failure comes to
(status, kind, message, attempts), and the retry helper the login and the Redis loops share.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import aiohttp
import pytest
from aiohttp import web
from conftest import RunningServer
from yarl import URL

from enrich.client import Client, Outcome, PreparedRequest
from enrich.config import RetryConfig
from enrich.errors import FailureKind
from enrich.ratelimit import RateLimiter
from enrich.redact import Redactor
from enrich.retry import Patience, redis_patience, retrying, retrying_sync

Serve = Callable[..., RunningServer]
SEEN = web.AppKey("seen", list[str])
FAST_RETRY = RetryConfig(attempts=3, backoff=0.01, max_backoff=0.02)
NOT_RETRIED = " (not retried: a POST may already have taken effect"
GAVE_UP = " (gave up after 3 attempts)"


def api() -> web.Application:
    """Routes that each answer one way; `seen` records the method of every request that arrived."""
    seen: list[str] = []

    async def answer(request: web.Request) -> web.StreamResponse:
        seen.append(f"{request.method} {request.path}")
        match request.path:
            case "/ok":
                return web.json_response({"id": 1})
            case "/empty":
                return web.Response(status=200)
            case "/html":
                return web.Response(text="<html>hi</html>", content_type="text/html")
            case "/big":
                return web.json_response({"pad": "x" * 500})
            case "/missing":
                return web.Response(status=404, text="no such item")
            case "/broken":
                return web.Response(status=500)
            case "/busy":
                return web.Response(status=503, headers={"Retry-After": "0"})
            case "/slow":
                await asyncio.sleep(2)
                return web.json_response({})
            case "/drop":
                assert request.transport is not None
                request.transport.close()  # the request arrived; no answer comes back
                await asyncio.sleep(0.1)
                return web.Response()
            case "/loop":
                raise web.HTTPFound("/loop")
            case "/away":
                raise web.HTTPFound("http://example.invalid/ok")
            case "/moved":
                raise web.HTTPFound("/ok")
        return web.Response(status=418)

    app = web.Application()
    app[SEEN] = seen
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


async def call(req: PreparedRequest, retry: RetryConfig = FAST_RETRY) -> Outcome:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        client = Client(
            session,
            retry=retry,
            timeout=0.3,
            limiter=RateLimiter(None),
            tokens=None,
            redactor=Redactor(),
            max_response_bytes=100,
        )
        return await client.call(req)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once it is closed


class Case(NamedTuple):
    method: str
    path: str  # on the test server; "refused" is a port nothing listens on
    status: int | None
    kind: FailureKind | None
    error: str | None  # how the message starts (None: no error)
    attempts: int
    ends: str = ""  # how the message ends
    header: str | None = None  # the value of an X-A header to send


CASES = [
    pytest.param(Case("GET", "/ok", 200, None, None, 1), id="ok"),
    pytest.param(Case("GET", "/empty", 200, None, None, 1), id="empty-2xx-is-an-answer"),
    pytest.param(
        Case("GET", "/html", 200, FailureKind.BAD_RESPONSE, "response is not JSON (HTTP 200, text/html)", 1),
        id="2xx-not-json",
    ),
    pytest.param(
        Case(
            "GET",
            "/big",
            200,
            FailureKind.BAD_RESPONSE,
            "response larger than 100 bytes (max_response_bytes), cut off",
            1,
        ),
        id="2xx-too-large",
    ),
    pytest.param(Case("GET", "/missing", 404, FailureKind.HTTP, "HTTP 404 Not Found: no such item", 1), id="404"),
    # 500 is retried for a GET; for a POST it may have taken effect
    pytest.param(Case("GET", "/broken", 500, FailureKind.HTTP, "HTTP 500", 3, GAVE_UP), id="500-get"),
    pytest.param(Case("POST", "/broken", 500, FailureKind.HTTP, "HTTP 500", 1, ")"), id="500-post"),
    # 503 says the server did not act: retried whatever the method
    pytest.param(Case("POST", "/busy", 503, FailureKind.HTTP, "HTTP 503", 3, GAVE_UP), id="503-post"),
    pytest.param(Case("GET", "/slow", None, FailureKind.TIMEOUT, "timed out after 0.3s", 3, GAVE_UP), id="timeout"),
    pytest.param(
        Case("POST", "/slow", None, FailureKind.TIMEOUT, "timed out after 0.3s" + NOT_RETRIED, 1, ")"),
        id="timeout-post",
    ),
    pytest.param(Case("GET", "/drop", None, FailureKind.CONNECTION, "connection error", 3, GAVE_UP), id="dropped"),
    pytest.param(
        Case("POST", "/drop", None, FailureKind.CONNECTION, "connection error", 1, "to retry it)"), id="dropped-post"
    ),
    # nothing was sent when connecting failed: a POST is retried too
    pytest.param(
        Case("POST", "refused", None, FailureKind.CONNECTION, "connection error", 3, GAVE_UP), id="refused-post"
    ),
    pytest.param(Case("GET", "/loop", 302, FailureKind.HTTP, "more than 5 redirects", 1), id="redirect-loop"),
    pytest.param(
        Case("GET", "/away", 302, FailureKind.HTTP, "HTTP 302: redirected to another origin", 1), id="other-origin"
    ),
    # the request could not be built: a local failure, not saved
    pytest.param(
        Case("GET", "/ok", None, FailureKind.BAD_ROW_DATA, "cannot send the request", 1, header="1\r\n2"),
        id="unsendable-header",
    ),
]


@pytest.mark.parametrize("case", CASES)
async def test_each_failure_has_its_kind(serve: Serve, case: Case) -> None:
    base = f"http://127.0.0.1:{closed_port()}" if case.path == "refused" else serve(api()).url + case.path
    headers = {} if case.header is None else {"X-A": case.header}
    outcome = await call(PreparedRequest(case.method, URL(base), headers, None))
    assert (outcome.status, outcome.kind, outcome.attempts) == (case.status, case.kind, case.attempts)
    assert outcome.local == (case.kind is FailureKind.BAD_ROW_DATA)
    if case.error is None:
        assert outcome.error is None
    else:
        assert outcome.error is not None
        assert outcome.error.startswith(case.error), outcome.error
        assert outcome.error.endswith(case.ends), outcome.error


async def test_a_redirected_post_becomes_a_get_and_is_not_an_attempt(serve: Serve) -> None:
    server = serve(api())
    outcome = await call(PreparedRequest("POST", URL(server.url + "/moved"), {}, b"{}"))
    assert (outcome.status, outcome.error, outcome.doc, outcome.attempts) == (200, None, {"id": 1}, 1)
    assert server.app[SEEN] == ["POST /moved", "GET /ok"]


# --- the retry helper ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patience", "tries", "elapsed", "expected"),
    [
        (Patience(lambda n: 0.5 * n, attempts=3), 1, 0.0, 0.5),
        (Patience(lambda n: 0.5 * n, attempts=3), 2, 0.0, 1.0),
        (Patience(lambda n: 0.5 * n, attempts=3), 3, 0.0, None),  # the last attempt failed
        (redis_patience(10.0), 1, 0.0, 0.1),
        (redis_patience(10.0), 5, 0.0, 1.6),
        (redis_patience(10.0), 9, 0.0, 2.0),  # doubling stops at 2 s
        (redis_patience(10.0), 9, 7.9, 2.0),  # the next try starts in time
        (redis_patience(10.0), 9, 8.1, None),  # it would start after 10 s
    ],
)
def test_patience_says_how_long_to_wait_or_to_give_up(
    patience: Patience, tries: int, elapsed: float, expected: float | None
) -> None:
    assert patience.next_wait(tries, time.monotonic() - elapsed) == pytest.approx(expected)


async def test_retrying_gives_up_with_the_error_give_up_makes() -> None:
    tried: list[int] = []

    async def fail() -> None:
        tried.append(1)
        raise ConnectionError("down")

    with pytest.raises(RuntimeError, match="gave up: down") as caught:
        await retrying(
            fail, Patience(lambda n: 0.0, attempts=3), on=OSError, give_up=lambda e: RuntimeError(f"gave up: {e}")
        )
    assert len(tried) == 3
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


async def test_retrying_a_result_returns_the_last_one_when_patience_runs_out() -> None:
    answers = iter([503, 503, 200])
    seen: list[int] = []

    async def send() -> int:
        seen.append(next(answers))
        return seen[-1]

    def never(exc: BaseException) -> BaseException:
        raise AssertionError(exc)

    again: Callable[[int], bool] = lambda status: status == 503  # noqa: E731
    assert await retrying(send, Patience(lambda n: 0.0, attempts=3), on=OSError, give_up=never, again=again) == 200
    answers = iter([503, 503, 200])
    assert await retrying(send, Patience(lambda n: 0.0, attempts=2), on=OSError, give_up=never, again=again) == 503


def test_retrying_sync_calls_before_wait_before_each_wait() -> None:
    events: list[str] = []
    results: list[Any] = [OSError("down"), OSError("down"), "done"]

    def call() -> str:
        events.append("call")
        result = results.pop(0)
        if isinstance(result, Exception):
            raise result
        return str(result)

    got = retrying_sync(
        call,
        Patience(lambda n: 0.0, attempts=5),
        on=OSError,
        give_up=RuntimeError,
        before_wait=lambda: events.append("wait"),
    )
    assert got == "done"
    assert events == ["call", "wait", "call", "wait", "call"]
