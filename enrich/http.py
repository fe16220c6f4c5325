"""Small pieces of HTTP that the login and the calls share: a capped body read, Retry-After.

body, cut = await read_body(resp, limit=10 * 1024 * 1024)   # never more than limit + one chunk
retry_after_seconds("120"), retry_after_seconds("Wed, 21 Oct 2026 07:28:00 GMT")
"""

from __future__ import annotations

import math
import time
from email.utils import parsedate_to_datetime

import aiohttp


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
