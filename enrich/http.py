"""One request on the wire (the client's transport), and the pieces of HTTP the login shares.

    transport = Transport(session, timeout=30.0, limit=10 * 1024 * 1024, redact=redactor.redact)
    answer = await transport.send("GET", url, headers, None)  # Answer(status=200, ..., body=b'{...}', cut=False)
    body, cut = await read_body(resp, limit=10 * 1024 * 1024)   # never more than limit + one chunk
    retry_after_seconds("120"), retry_after_seconds("Wed, 21 Oct 2026 07:28:00 GMT")

aiohttp's errors come out of ``Transport.send`` as ours, mapped in one place (``_mapped``, as
httpx's transport maps httpcore's): ``TLSError``, which stops the run, or a ``SendError``
whose ``Failure`` says why there is no answer (a timeout, a connection error, or a request
that cannot be sent at all) and whether it surely never reached the API.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import NamedTuple

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from .errors import FailureKind, TLSError


class Answer(NamedTuple):
    """One response, its body read (cut off at the transport's ``limit``: ``cut``)."""

    status: int
    reason: str
    headers: CIMultiDictProxy[str]
    body: bytes
    cut: bool
    latency_ms: float


class Failure(NamedTuple):
    """An attempt that came to no usable answer, and what that says about sending it again."""

    kind: FailureKind
    error: str  # masked already when ``final``; else when the call ends on it
    status: int | None = None
    latency_ms: float | None = None
    final: bool = False  # not to be retried: the request could not be sent, or a redirect is not followed
    unsent: bool = False  # it surely never reached the API: safe to send again whatever the method
    wait: float | None = None  # what the answer's Retry-After asked for


class SendError(Exception):
    """No answer to use: aiohttp's error mapped to ours, or a redirect that is not followed."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.error)
        self.failure = failure


class Transport:
    """Sends one request through ``session``, never redirected, its body read up to ``limit``
    bytes; counts the requests on the wire (``active``)."""

    def __init__(
        self, session: aiohttp.ClientSession, *, timeout: float, limit: int, redact: Callable[[str], str]
    ) -> None:
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.limit = limit
        self.redact = redact
        self.active = 0

    async def send(self, method: str, url: URL, headers: dict[str, str], body: bytes | None) -> Answer:
        started = time.perf_counter()
        self.active += 1
        try:
            async with self.session.request(
                method, url, headers=headers, data=body, timeout=self.timeout, allow_redirects=False
            ) as resp:
                content, cut = await read_body(resp, self.limit)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise self._mapped(exc, url, started) from exc
        finally:
            self.active -= 1
        latency_ms = (time.perf_counter() - started) * 1000
        return Answer(resp.status, resp.reason or "", resp.headers, content, cut, latency_ms)

    def _mapped(self, exc: Exception, url: URL, started: float) -> Exception:
        """aiohttp's error (or the ``ValueError`` of a header it cannot send) as ours."""
        if isinstance(exc, aiohttp.ClientSSLError):  # every call to this origin would fail the same way
            return TLSError(self.redact(tls_problem(url, exc)))
        if isinstance(exc, aiohttp.InvalidURL):
            return SendError(Failure(FailureKind.BAD_ROW_DATA, self.redact(f"invalid URL: {exc}"), final=True))
        if isinstance(exc, ValueError):  # aiohttp refuses a header or URL it cannot send: this row fails
            message = self.redact(f"cannot send the request: {exc}")
            return SendError(Failure(FailureKind.BAD_ROW_DATA, message, final=True))
        latency_ms = (time.perf_counter() - started) * 1000
        if isinstance(exc, TimeoutError):
            # A timeout while connecting sent nothing; any later one may have reached the API.
            unsent = isinstance(exc, aiohttp.ConnectionTimeoutError)
            message = f"timed out after {self.timeout.total:g}s"
            return SendError(Failure(FailureKind.TIMEOUT, message, None, latency_ms, unsent=unsent))
        # Only a failure to connect surely sent nothing (a dropped connection may have, after the request).
        unsent = isinstance(exc, aiohttp.ClientConnectorError)
        message = f"connection error: {exc or type(exc).__name__}"
        return SendError(Failure(FailureKind.CONNECTION, message, None, latency_ms, unsent=unsent))


def tls_problem(url: URL, exc: aiohttp.ClientSSLError, server: str = "the API") -> str:
    """Why TLS with ``server`` (at ``url``) failed, and what to do about it."""
    origin = url.origin()
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert = exc.certificate_error
        detail = (getattr(cert, "verify_message", None) or str(cert)).rstrip(".")
        if "mismatch" in detail.lower():
            fix = f"Call {server} by a name its certificate is issued for"
        else:
            fix = f"If {server} uses a private CA, set tls.ca_bundle to its certificate (a PEM file)"
        return f"the TLS certificate of {origin} cannot be verified ({detail}). {fix}."
    os_error = getattr(exc, "os_error", None)
    detail = getattr(os_error, "reason", None) or str(os_error or exc)
    return (
        f"the TLS handshake with {origin} failed ({detail}). Check that {origin} serves HTTPS, and the tls: settings."
    )


async def read_body(resp: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """The body of ``resp`` (decompressed, as ``resp.read()`` gives it), and whether it was cut
    off at ``limit`` bytes. A larger body is never held whole: a gzip bomb costs ``limit``
    bytes, and the connection is closed rather than read to its end."""
    content, size = resp.content, 0
    chunks: list[bytes] = []
    while chunk := await content.readany():
        size += len(chunk)
        if size > limit:
            resp.close()  # the rest is never read; the connection is not reused
            return b"".join(chunks), True
        chunks.append(chunk)
    return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), False


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Parse a Retry-After header: seconds or an HTTP date. ``None`` when absent or garbage.

    A huge or infinite value (``inf``, ``1e308``, a date in the year 9999) comes back as is,
    never as an error: the caller compares it with ``retry.max_retry_after`` and stops the run.
    """
    if not value or not value.isascii():  # float() would read other scripts' digits
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None:
            return None
        try:
            seconds = when.timestamp() - (time.time() if now is None else now)
        except (OverflowError, ValueError, OSError):
            return math.inf
        return max(0.0, seconds)
    return seconds if seconds >= 0 and not math.isnan(seconds) else None
