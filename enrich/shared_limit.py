"""One rate limit shared by every process that uses the same Redis and key.

``rate_limit: {rate: 1000/s, burst: 50, shared: "redis://127.0.0.1:6379/0", key: acme-api}``
makes each request start book the next free slot of a GCRA (generic cell rate algorithm)
kept in Redis: one Lua script per request reads Redis's own clock (``TIME``, so clock skew
between machines does not matter), moves the theoretical arrival time on by one interval
and returns how long this caller must wait. No polling: one round trip, then a local sleep.
A 429 seen by any process sets a shared pause that every process's next booking honours.

    limiter = SharedRateLimiter("redis://127.0.0.1:6379/0", "acme-api", rate=1000, burst=50)
    await limiter.acquire()              # waits for this caller's slot, across all processes
    limiter.pause(2.5)                   # a 429 said Retry-After: 2.5; every process waits

Fail closed: when Redis cannot be reached, ``acquire`` retries for ``FAIL_AFTER`` seconds
and then raises ``SharedLimitUnavailable`` (a resumable stop, exit 3); it never lets a
request through unlimited.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .allowance import Allowance, Announced
from .errors import RunAborted
from .ratelimit import HEADROOM
from .retry import redis_patience, redis_unreachable, retrying

FAIL_AFTER = 10.0  # seconds of Redis being unreachable before the run stops
# How late a caller may reach its slot (from Redis's answer) and still go: under the 6 ms that
# booking 0.6% under the rate makes room for in any second.
LATE_AFTER = 0.0055
MAX_REBOOKS = 2  # then it goes even if late: a machine that overloaded must still finish
T = TypeVar("T")

# KEYS[1]: the theoretical arrival time (ms, Redis clock); KEYS[2]: pause-until (ms).
# ARGV[1]: the emission interval (ms); ARGV[2]: the burst tolerance (ms).
# Returns the wait in ms (as a string: Lua numbers lose their fraction in replies).
_BOOK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
if tat < now then tat = now end
if tat < paused then tat = paused end
local start = tat - tolerance
if start < now then start = now end
if start < paused then start = paused end
local new_tat = tat + interval
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(new_tat - now + tolerance + 60000))
return tostring(start - now)
"""

# KEYS[1]: pause-until (ms); ARGV[1]: seconds to pause from now (Redis clock). Only extends.
_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local until_ms = now + tonumber(ARGV[1]) * 1000
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ms > current then
  redis.call('SET', KEYS[1], tostring(until_ms), 'PX', math.ceil(until_ms - now + 1000))
end
return 1
"""


class SharedLimitUnavailable(RunAborted):
    """Redis, which holds the shared rate limit, cannot be reached: the run stops rather than
    run unlimited; the finished calls are in the journal."""


class SharedRateLimiter:
    """The ``RateLimiter`` interface (``acquire``, ``pause``, ``pacing``) over a GCRA in Redis."""

    def __init__(self, url: str, key: str, rate: float, burst: int = 0, *, headroom: float = HEADROOM) -> None:
        try:
            import redis.asyncio as redis
        except ImportError:  # pragma: no cover - the extra is part of dev installs
            raise SharedLimitUnavailable(
                "rate_limit.shared needs the redis package: pip install 'enrich[redis]'."
            ) from None
        self.url = url
        self.rate = rate
        self._client: Any = redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._keys = [f"enrich:limit:{key}:tat", f"enrich:limit:{key}:pause"]
        interval_ms = 1000.0 / (rate * headroom)
        self._args = [repr(interval_ms), repr(interval_ms * burst)]
        self._book = self._client.register_script(_BOOK)
        self._pause = self._client.register_script(_PAUSE)
        self._pauses: set[asyncio.Task[Any]] = set()
        self.rebooked = 0  # slots given up because this process reached them late
        self.announced = Announced()
        self._patience = redis_patience(FAIL_AFTER)
        self._unreachable = redis_unreachable()

    @property
    def pacing(self) -> bool:
        return True

    async def acquire(self) -> None:
        """Book this caller's slot in Redis and wait for it; fail closed after ``FAIL_AFTER`` seconds.

        A caller that gets to its slot more than ``LATE_AFTER`` late (its process was not
        scheduled, its event loop was busy) books a new one rather than go late: a late start
        would crowd the starts booked after it, and with every process doing that, some second
        would hold more than the limit. Lateness is counted from Redis's answer, so the time to
        reach Redis (the same for every start) is not lateness. The headroom (slots booked 0.6%
        under the rate) absorbs lateness up to ``LATE_AFTER``; a slot given up is capacity lost.
        After ``MAX_REBOOKS`` a late caller goes anyway: a machine that overloaded must still finish.
        """
        loop = asyncio.get_running_loop()
        for attempt in range(MAX_REBOOKS + 1):
            wait_ms = await self._with_retries(lambda: self._book(keys=self._keys, args=self._args))
            wait = float(wait_ms) / 1000
            answered = loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if attempt == MAX_REBOOKS or loop.time() - answered - wait <= LATE_AFTER:
                return
            self.rebooked += 1  # this slot is given up; book the next one

    def announce(self, allowance: Allowance, in_flight: int) -> None:
        """Noted for the summary only: the shared limit does not pace by the API's headers yet (a
        spent quota still stops the run: the client sees to that)."""
        self.announced.note(allowance)

    def pause(self, seconds: float) -> None:
        """Hold every process for ``seconds`` from now (a 429 or Retry-After seen by this one)."""
        task = asyncio.get_running_loop().create_task(
            self._with_retries(lambda: self._pause(keys=self._keys[1:], args=[repr(seconds)]))
        )
        self._pauses.add(task)
        task.add_done_callback(self._pauses.discard)

    async def _with_retries(self, call: Callable[[], Awaitable[T]]) -> T:
        return await retrying(call, self._patience, on=self._unreachable, give_up=self._unavailable)

    def _unavailable(self, exc: BaseException) -> SharedLimitUnavailable:
        return SharedLimitUnavailable(
            f"cannot reach Redis at {self.url}, which holds the shared rate limit ({exc}). The run "
            "stopped rather than call the API without the limit. Start Redis (or fix "
            "rate_limit.shared), then run the same command again: the finished calls are in the journal."
        )

    async def close(self) -> None:
        if self._pauses:
            await asyncio.gather(*self._pauses, return_exceptions=True)
        await self._client.aclose()
