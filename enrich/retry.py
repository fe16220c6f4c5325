"""Trying again what failed for a moment: the login, and every round trip to Redis.

    answer = await retrying(send, Patience(retry.backoff_for, attempts=retry.attempts),
                            on=(TimeoutError, aiohttp.ClientError), again=lambda a: a.status in retry.statuses,
                            give_up=unreachable)
    value = retrying_sync(call, redis_patience(FAIL_AFTER), on=redis_unreachable(), give_up=unavailable)

A try that raises one of ``on``, or whose result ``again`` says to try again, is tried again
after ``patience.wait(tries)`` seconds, until ``patience.attempts`` tries were made or the next
would start more than ``patience.within`` seconds after the first. Then an exception goes to
``give_up``, which makes the error to raise instead; a result is returned as it is.

The calls to the API retry by their own rules (Retry-After, the shared pause, the POST rule):
see ``Client.call`` in client.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
Errors = type[BaseException] | tuple[type[BaseException], ...]


@dataclass(frozen=True, slots=True)
class Patience:
    """How long to keep trying: ``wait(tries)`` seconds after the failed try number ``tries``
    (1-based), for at most ``attempts`` tries, none starting ``within`` seconds after the first
    (None: no such limit)."""

    wait: Callable[[int], float]
    attempts: int | None = None
    within: float | None = None

    def next_wait(self, tries: int, started: float) -> float | None:
        """Seconds to wait before the next try, after ``tries`` failed ones begun at ``started``
        (monotonic seconds); None: give up."""
        if self.attempts is not None and tries >= self.attempts:
            return None
        wait = self.wait(tries)
        if self.within is not None and time.monotonic() + wait > started + self.within:
            return None
        return wait


async def retrying(
    call: Callable[[], Awaitable[T]],
    patience: Patience,
    *,
    on: Errors,
    give_up: Callable[[BaseException], BaseException],
    again: Callable[[T], bool] | None = None,
) -> T:
    """``await call()`` until it returns a result ``again`` does not refuse, or ``patience`` runs out."""
    started = time.monotonic()
    tries = 0
    while True:
        tries += 1
        try:
            result = await call()
        except on as exc:
            if (wait := patience.next_wait(tries, started)) is None:
                raise give_up(exc) from None
        else:
            if again is None or not again(result):
                return result
            if (wait := patience.next_wait(tries, started)) is None:
                return result  # the last one, though it asked for another try
        await asyncio.sleep(wait)


def retrying_sync(
    call: Callable[[], T],
    patience: Patience,
    *,
    on: Errors,
    give_up: Callable[[BaseException], BaseException],
    before_wait: Callable[[], None] | None = None,
) -> T:
    """``call()`` until it returns, or ``patience`` runs out; ``before_wait()`` runs before each wait.
    For code in a thread of its own (the journal's writer): the waits block it."""
    started = time.monotonic()
    tries = 0
    while True:
        tries += 1
        try:
            return call()
        except on as exc:
            if (wait := patience.next_wait(tries, started)) is None:
                raise give_up(exc) from None
        if before_wait is not None:
            before_wait()
        time.sleep(wait)


def _doubling(tries: int) -> float:
    return min(0.1 * 2 ** (tries - 1), 2.0)


def redis_patience(within: float) -> Patience:
    """Redis's: 0.1 s after the first failure, doubling up to 2 s, for ``within`` seconds in all."""
    return Patience(_doubling, within=within)


def redis_unreachable() -> tuple[type[BaseException], ...]:
    """What redis-py raises when Redis cannot be reached (redis is imported only by who uses it)."""
    import redis.exceptions

    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
