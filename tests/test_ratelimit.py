"""RateLimiter on virtual time: no real sleeping, fully deterministic.

``VirtualTime`` gives the limiter a fake clock and a fake sleep. A sleeping task
parks on a timer; ``run`` lets every ready task go as far as it can, then jumps the
clock to the earliest timer and wakes that sleeper, one at a time, in time order
(ties in the order they were set). Time never passes while anything can still run.

Times are compared with a tolerance of 1e-9 s: slots are built by adding ``1/rate``
again and again, and ten times 0.1 is 0.9999999999999999.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Coroutine
from typing import Any

import pytest

from enrich.ratelimit import HEADROOM, RateLimiter

EPS = 1e-9
START = 1000.0  # a monotonic clock does not start at 0


class VirtualTime:
    """A fake clock and sleep shared by every task of one test."""

    def __init__(self, start: float = START) -> None:
        self.now = start
        self.sleeps: list[float] = []
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + max(0.0, delay), next(self._order), future))
        await future

    async def run(self, *coros: Coroutine[Any, Any, Any]) -> list[Any]:
        tasks = [asyncio.ensure_future(c) for c in coros]
        while True:
            await self._settle()
            if all(t.done() for t in tasks):
                return [t.result() for t in tasks]
            assert self._timers, "tasks are waiting but no timer is set"
            when, _, future = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            future.set_result(None)

    @staticmethod
    async def _settle() -> None:
        # Let every ready task run up to its next sleep (a woken task needs a few loop turns).
        for _ in range(10):
            await asyncio.sleep(0)


def limiter_on(vt: VirtualTime, rate: float | None) -> RateLimiter:
    # Exact pacing: these tests check the scheduler itself; the default headroom is tested below.
    return RateLimiter(rate, clock=vt.clock, sleep=vt.sleep, headroom=1.0)


@pytest.mark.slow
@pytest.mark.parametrize("rate", [100, 1000])
async def test_default_headroom_keeps_under_the_rate_and_uses_over_99_percent(rate: int) -> None:
    vt = VirtualTime()
    limiter = RateLimiter(rate, clock=vt.clock, sleep=vt.sleep)
    n = 5 * rate
    [times] = await vt.run(acquire_times(vt, limiter, n))
    achieved = (n - 1) / (times[-1] - times[0])
    assert rate * 0.99 < achieved < rate  # slightly under: room for arrival jitter at the server
    assert max_in_one_second(times) <= rate * HEADROOM + 1


async def acquire_times(vt: VirtualTime, limiter: RateLimiter, n: int, *, work: float = 0.0) -> list[float]:
    """Acquire ``n`` times in a row (with ``work`` seconds of "request" after each); return the start times."""
    times = []
    for _ in range(n):
        await limiter.acquire()
        times.append(vt.now)
        if work:
            await vt.sleep(work)
    return times


def max_in_one_second(times: list[float]) -> int:
    """The most acquires in any half-open window [t, t + 1); it is largest when t is an acquire time."""
    ordered = sorted(times)
    return max(sum(1 for u in ordered if t <= u < t + 1 - EPS) for t in ordered)


RATES = [pytest.param(r, id=f"{r}/s") for r in (1, 3, 10, 20, 50)]


@pytest.mark.parametrize("rate", [*RATES, pytest.param(0.5, id="0.5/s"), pytest.param(None, id="unlimited")])
async def test_first_acquire_is_immediate(rate: float | None) -> None:
    vt = VirtualTime()
    limiter = limiter_on(vt, rate)
    await vt.run(limiter.acquire())
    assert vt.now == START
    assert vt.sleeps == []


@pytest.mark.parametrize("rate", RATES)
async def test_no_burst_at_start(rate: int) -> None:
    vt = VirtualTime()
    limiter = limiter_on(vt, rate)
    [times] = await vt.run(acquire_times(vt, limiter, rate + 1))
    assert times[0] == START
    # r + 1 starts need a whole second: a token bucket would let r + 1 through at once
    assert times[-1] - times[0] >= 1 - EPS
    assert times[-1] - times[0] == pytest.approx(1.0, abs=EPS)


@pytest.mark.parametrize("rate", RATES)
async def test_slots_are_evenly_spaced(rate: int) -> None:
    vt = VirtualTime()
    limiter = limiter_on(vt, rate)
    [times] = await vt.run(acquire_times(vt, limiter, 3 * rate))
    assert times == pytest.approx([START + i / rate for i in range(3 * rate)], abs=EPS)


@pytest.mark.parametrize("rate", RATES)
async def test_at_most_rate_in_any_one_second_window(rate: int) -> None:
    vt = VirtualTime()
    limiter = limiter_on(vt, rate)
    [times] = await vt.run(acquire_times(vt, limiter, 5 * rate + 3))
    assert max_in_one_second(times) == rate  # at most r, and the allowance is used


@pytest.mark.parametrize("rate", [*RATES, pytest.param(0.5, id="0.5/s"), pytest.param(1200 / 60, id="1200/min")])
async def test_long_run_gets_the_whole_allowance(rate: float) -> None:
    vt = VirtualTime()
    limiter = limiter_on(vt, rate)
    n = 400
    [times] = await vt.run(acquire_times(vt, limiter, n))
    achieved = (n - 1) / (times[-1] - times[0])
    assert achieved == pytest.approx(rate, rel=0.01)
    assert min(b - a for a, b in itertools.pairwise(times)) >= 1 / rate - EPS


async def test_unlimited_never_waits() -> None:
    vt = VirtualTime()
    limiter = limiter_on(vt, None)
    [times] = await vt.run(acquire_times(vt, limiter, 1000))
    assert times == [START] * 1000
    assert vt.sleeps == []
    assert limiter.paused_for == 0.0


async def test_idle_time_is_not_saved_up_as_a_burst() -> None:
    # after a quiet spell the next acquires are spaced again, not let through together
    vt = VirtualTime()
    limiter = limiter_on(vt, 4)

    async def scenario() -> list[float]:
        times = await acquire_times(vt, limiter, 2)
        await vt.sleep(10)
        return times + await acquire_times(vt, limiter, 3)

    [times] = await vt.run(scenario())
    assert times == pytest.approx([START, START + 0.25, START + 10.25, START + 10.5, START + 10.75], abs=EPS)


# --- pause ------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [pytest.param(4.0, id="4/s"), pytest.param(None, id="unlimited")])
async def test_pause_delays_next_acquire_and_pushes_later_slots(rate: float | None) -> None:
    vt = VirtualTime()
    limiter = limiter_on(vt, rate)

    async def scenario() -> list[float]:
        await limiter.acquire()
        limiter.pause(2.5)
        assert limiter.paused_for == 2.5
        return await acquire_times(vt, limiter, 3)

    [times] = await vt.run(scenario())
    step = 1 / rate if rate else 0.0
    assert times == pytest.approx([START + 2.5, START + 2.5 + step, START + 2.5 + 2 * step], abs=EPS)
    assert limiter.paused_for == 0.0


async def test_pause_shorter_than_the_next_slot_changes_nothing() -> None:
    vt = VirtualTime()
    limiter = limiter_on(vt, 1)

    async def scenario() -> list[float]:
        await limiter.acquire()
        limiter.pause(0.2)
        return await acquire_times(vt, limiter, 2)

    [times] = await vt.run(scenario())
    assert times == pytest.approx([START + 1, START + 2], abs=EPS)


async def test_shorter_pause_does_not_cut_a_longer_one() -> None:
    vt = VirtualTime()
    limiter = limiter_on(vt, None)
    limiter.pause(5)
    limiter.pause(1)
    assert limiter.paused_for == 5
    await vt.run(limiter.acquire())
    assert vt.now == START + 5


async def test_pause_that_begins_while_a_caller_waits_is_honoured() -> None:
    vt = VirtualTime()
    limiter = limiter_on(vt, 10)

    async def caller() -> list[float]:
        return await acquire_times(vt, limiter, 3)  # slots 0, 0.1, 0.2

    async def throttled() -> None:
        await vt.sleep(0.05)  # while the caller waits for its 0.1 slot, a 429 says wait 2 s
        limiter.pause(2.0)

    times, _ = await vt.run(caller(), throttled())
    assert times == pytest.approx([START, START + 2.05, START + 2.15], abs=EPS)


async def test_pause_with_several_waiting_workers() -> None:
    vt = VirtualTime()
    limiter = limiter_on(vt, 10)
    started: list[tuple[str, float]] = []

    async def worker(name: str) -> None:
        await limiter.acquire()
        started.append((name, vt.now))

    async def throttled() -> None:
        await vt.sleep(0.15)
        limiter.pause(1.0)

    await vt.run(*(worker(n) for n in "abcd"), throttled())
    # a and b got slots 0 and 0.1 before the pause; c and d (slots 0.2, 0.3) wait it out, then go spaced
    assert [n for n, _ in started] == ["a", "b", "c", "d"]
    assert [t for _, t in started] == pytest.approx([START, START + 0.1, START + 1.15, START + 1.25], abs=EPS)


# --- many workers -------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [2, 5, 16])
@pytest.mark.parametrize("work", [0.0, 0.35, 3.0], ids=["no-latency", "fast-api", "slow-api"])
async def test_concurrent_workers_share_one_rate(workers: int, work: float) -> None:
    vt = VirtualTime()
    rate = 10
    limiter = limiter_on(vt, rate)
    per_worker = 12
    results = await vt.run(*(acquire_times(vt, limiter, per_worker, work=work) for _ in range(workers)))
    times = sorted(t for r in results for t in r)
    assert len(times) == workers * per_worker
    assert times[0] == START
    assert max_in_one_second(times) <= rate
    assert min(b - a for a, b in itertools.pairwise(times)) >= 1 / rate - EPS
    if work * rate <= workers:  # enough workers to keep the limiter busy: every slot is used
        assert times[-1] - times[0] == pytest.approx((len(times) - 1) / rate, abs=1e-6)


async def test_concurrent_workers_with_a_pause_in_the_middle() -> None:
    vt = VirtualTime()
    rate = 20
    limiter = limiter_on(vt, rate)

    async def throttled() -> None:
        await vt.sleep(1.01)
        limiter.pause(2.5)

    *results, _ = await vt.run(*(acquire_times(vt, limiter, 15, work=0.2) for _ in range(8)), throttled())
    times = sorted(t for r in results for t in r)
    assert len(times) == 120
    assert not [t for t in times if START + 1.01 < t < START + 3.51 - EPS]  # nothing starts during the pause
    assert max_in_one_second(times) <= rate
    assert min(b - a for a, b in itertools.pairwise(times)) >= 1 / rate - EPS


def test_virtual_time_runs_in_order() -> None:
    # the scheduler itself: sleepers wake in time order and the clock jumps exactly
    vt = VirtualTime()
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, delay: float) -> None:
        await vt.sleep(delay)
        woke.append((name, vt.now))

    async def main() -> None:
        await vt.run(sleeper("late", 2.0), sleeper("early", 0.5), sleeper("tie", 0.5))

    asyncio.run(main())
    assert woke == [("early", START + 0.5), ("tie", START + 0.5), ("late", START + 2.0)]
