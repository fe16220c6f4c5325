"""Pace request starts across all workers, and pause them all after a 429.

The limiter books the next free slot: slots are ``1/rate`` seconds apart, so any
one-second window holds at most ``rate`` starts, there is no burst at start, and a
long run gets the whole allowance. (A token bucket such as ``AsyncLimiter(rate, 1)``
lets a full bucket through at once, doubling the first second.)

    limiter = RateLimiter(20.0)          # 20 requests started per second
    await limiter.acquire()              # waits for this worker's slot
    limiter.pause(2.5)                   # a 429 said Retry-After: 2.5; everyone waits

Slots are booked 0.6% under the rate (``HEADROOM``): the API counts arrivals, not our
starts, and arrivals bunch up by a few milliseconds of network and scheduling jitter.
At 1,000/s exact pacing let the server see 1,013 calls in its busiest second; with the
headroom a run still gets more than 99% of its allowance.

Time is passed in (``clock``, ``sleep``) so tests need not sleep.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol


class Limiter(Protocol):
    """What a run needs of a limiter: ``RateLimiter`` here, ``SharedRateLimiter`` across processes."""

    @property
    def pacing(self) -> bool:
        """Whether ``acquire`` can make a caller wait (the client skips it when not)."""
        ...

    @property
    def rebooked(self) -> int:
        """Slots given up because this process reached them late (the summary's ``late_slots``)."""
        ...

    async def acquire(self) -> None: ...

    def pause(self, seconds: float) -> None: ...

    async def close(self) -> None:
        """Finish what the limiter started (a shared pause on its way to Redis); the run ends."""
        ...


Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
HEADROOM = 0.994


class RateLimiter:
    """Slot scheduler shared by every worker of a run; ``rate=None`` paces nothing."""

    __slots__ = ("_clock", "_interval", "_next", "_paused_until", "_sleep", "rate")

    def __init__(
        self,
        rate: float | None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        headroom: float = HEADROOM,
    ) -> None:
        self.rate = rate
        self._interval = 1.0 / (rate * headroom) if rate else 0.0
        self._clock = clock
        self._sleep = sleep
        self._next = float("-inf")
        self._paused_until = float("-inf")

    async def acquire(self) -> None:
        """Wait until this caller may start a request."""
        while True:
            now = self._clock()
            if self._paused_until > now:
                await self._sleep(self._paused_until - now)
                continue
            start = max(now, self._next)
            self._next = start + self._interval
            if start > now:
                await self._sleep(start - now)
                if self._paused_until > self._clock():
                    continue  # a pause began while we waited for the slot
            return

    def pause(self, seconds: float) -> None:
        """Hold every worker for ``seconds`` from now (a 429 or Retry-After seen by one)."""
        until = self._clock() + seconds
        if until > self._paused_until:
            self._paused_until = until
            self._next = max(self._next, until)

    @property
    def pacing(self) -> bool:
        """Whether ``acquire`` can make a caller wait (a rate is set, or a pause was ever asked for)."""
        return self._interval > 0 or self._paused_until > float("-inf")

    @property
    def rebooked(self) -> int:
        """Always 0: a limiter of one process gives no slot up (only a shared one must)."""
        return 0

    async def close(self) -> None:
        """Nothing to finish: no task, no connection."""

    @property
    def paused_for(self) -> float:
        """Seconds left in the current pause (0 when not paused)."""
        return max(0.0, self._paused_until - self._clock())
