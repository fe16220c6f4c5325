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

The API's own announcement caps the pace on top of the rate (``announce``, fed by the client
with every answer's RateLimit headers, ``allowance.py``): for a window that resets within
``retry.max_retry_after``, starts are spaced ``window / limit`` apart (or, with no limit or
window announced, the calls left spread over the time to the reset), and no more start before
the reset than the answer said are left, less the calls already on their way. A window reset
given in whole seconds is only known to the second; the earliest reset any answer of a window
implies is kept, so the wait for a spent window ends close to its real end.

Time is passed in (``clock``, ``sleep``) so tests need not sleep.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from .allowance import Allowance, Announced


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

    def announce(self, allowance: Allowance, in_flight: int) -> None:
        """Heed what an answer announced of a short window, ``in_flight`` other calls on their way."""
        ...

    @property
    def announced(self) -> Announced:
        """What the answers announced (for the summary)."""
        ...

    async def close(self) -> None:
        """Finish what the limiter started (a shared pause on its way to Redis); the run ends."""
        ...


Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
HEADROOM = 0.994


class RateLimiter:
    """Slot scheduler shared by every worker of a run; ``rate=None`` paces nothing."""

    __slots__ = (
        "_booked",
        "_cap",
        "_clock",
        "_headroom",
        "_interval",
        "_left",
        "_next",
        "_paused_until",
        "_remaining",
        "_reset_at",
        "_sleep",
        "announced",
        "rate",
    )

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
        self._headroom = headroom
        self.announced = Announced()
        self._cap = 0.0  # the interval the API's announcement asks for (0: none)
        self._left: int | None = None  # starts left before _reset_at, as last announced
        self._reset_at = float("-inf")
        self._remaining = 0  # as the last announcement said, to tell a new window from the same one
        self._booked = 0  # callers given a slot they have not reached yet

    async def acquire(self) -> None:
        """Wait until this caller may start a request."""
        while True:
            now = self._clock()
            if self._paused_until > now:
                await self._sleep(self._paused_until - now)
                continue
            if self._left is not None:
                if now >= self._reset_at:
                    self._left = None  # the window reset: the next answer says what the new one holds
                elif self._left <= 0:
                    await self._sleep(self._reset_at - now)  # the window is spent
                    continue
                else:
                    self._left -= 1
            start = max(now, self._next)
            self._next = start + max(self._interval, self._cap)
            if start > now:
                self._booked += 1
                try:
                    await self._sleep(start - now)
                finally:
                    self._booked -= 1
                if self._paused_until > self._clock():
                    continue  # a pause began while we waited for the slot
            return

    def announce(self, allowance: Allowance, in_flight: int) -> None:
        """Cap the pace by what an answer announced of a window resetting ``allowance.reset_in``
        seconds from now (the client passes only short ones), ``in_flight`` other calls sent and
        not answered yet: they count against what is left, as do the slots booked and not reached."""
        window = self.announced.note(allowance)
        now = self._clock()
        reset_at = now + allowance.reset_in
        if self._reset_at > now and allowance.remaining <= self._remaining:
            reset_at = min(reset_at, self._reset_at)  # the same window: keep the earliest reset implied
        elif window is not None and now < self._reset_at + window < reset_at:
            reset_at = self._reset_at + window  # the next window: it ends one window after the last
        self._reset_at, self._remaining = reset_at, allowance.remaining
        self._left = allowance.remaining - in_flight - self._booked
        if allowance.limit is not None and window is not None:
            self._cap = window / (allowance.limit * self._headroom)
        elif allowance.remaining > 0:
            self._cap = allowance.reset_in / (allowance.remaining * self._headroom)

    def pause(self, seconds: float) -> None:
        """Hold every worker for ``seconds`` from now (a 429 or Retry-After seen by one)."""
        until = self._clock() + seconds
        if until > self._paused_until:
            self._paused_until = until
            self._next = max(self._next, until)

    @property
    def pacing(self) -> bool:
        """Whether ``acquire`` can make a caller wait (a rate is set, a pause was ever asked for, or
        the API announced an allowance)."""
        return self._interval > 0 or self._paused_until > float("-inf") or self.announced.answers > 0

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
