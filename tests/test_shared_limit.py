"""One rate limit shared by several processes through a real Redis server (issue 7).

Each test starts its own redis-server on a free port (the ``redis_url`` fixture) and
measures at the API: the busiest one-second window of arrivals from all processes
together, and what happens when Redis goes away mid-run.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from aiohttp import web
from conftest import (
    Serve,
    busiest_second,
    demo_child_env,
    demo_config,
    known_people,
    run_cli,
    run_shards,
    write_config,
)

from enrich.demo_server import DemoSettings, create_app
from enrich.shared_limit import SharedRateLimiter

pytestmark = pytest.mark.slow  # starts redis-server or a Dask cluster

ROOT = Path(__file__).resolve().parent.parent
ENRICH = [sys.executable, "-m", "enrich"]


def test_concurrent_bookings_are_spaced_by_the_rate(redis_url: str) -> None:
    """40 callers at once against 50/s with a burst of 5: the first 6 go at once, then one
    every 1/50 s (a 0.6% headroom included), whatever the local clock says."""

    async def main() -> list[float]:
        limiter = SharedRateLimiter(redis_url, "spacing", rate=50, burst=5)
        started = time.monotonic()

        async def one() -> float:
            await limiter.acquire()
            return time.monotonic() - started

        try:
            return sorted(await asyncio.gather(*(one() for _ in range(40))))
        finally:
            await limiter.close()

    starts = asyncio.run(main())
    # Paced: never faster than the rate after the burst, however fast or loaded the machine
    # (only lower bounds on time, and an upper bound on starts per second).
    assert starts[-1] >= (40 - 6) / 50 * 0.98
    assert busiest_second(starts) <= 50 + 5 + 1


def test_two_processes_share_one_limit_measured_at_the_api(tmp_path: Path, serve: Serve, redis_url: str) -> None:
    # The API itself answers 429 past 23 calls in a clock second (rate + burst, and one for the
    # jitter of arrivals that measuring at the server adds).
    server = serve(create_app(DemoSettings(rate_limit=20 + 2 + 1)))
    src = known_people(tmp_path, rows=120)
    cfg = write_config(
        tmp_path / "c.yaml",
        demo_config(
            server.url,
            input=str(src),
            output=str(tmp_path / "out.parquet"),
            rate_limit={"rate": "20/s", "burst": 2, "shared": redis_url, "key": "acme-api"},
        ),
    )
    run_shards(cfg, 2)
    times = server.state.call_times
    assert server.state.throttled == 0  # the rate-limited API never had to refuse a call
    assert len(times) == 120
    # Alone, each process would go at 20/s; together they share 20/s (+ the burst).
    assert busiest_second(times) <= 20 + 2 + 1
    assert max(times) - min(times) > (120 - 2) / 20 * 0.9


def test_redis_gone_mid_run_stops_resumably_and_never_runs_unlimited(
    tmp_path: Path, serve: Serve, redis_url: str, demo_env: dict[str, str]
) -> None:
    server = serve(create_app(DemoSettings()))
    src = known_people(tmp_path, rows=100)
    out = tmp_path / "out.parquet"
    cfg = write_config(
        tmp_path / "c.yaml",
        demo_config(
            server.url, input=str(src), output=str(out), rate_limit={"rate": "20/s", "shared": redis_url, "key": "gone"}
        ),
    )
    proc = subprocess.Popen([*ENRICH, "run", str(cfg), "-q"], cwd=ROOT, env=demo_child_env(), stderr=subprocess.PIPE)
    time.sleep(1.5)
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    subprocess.run(["pkill", "-STOP", "-f", f"redis-server 127.0.0.1:{port}"], check=False)  # unreachable
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        subprocess.run(["pkill", "-CONT", "-f", f"redis-server 127.0.0.1:{port}"], check=False)
    calls = server.state.calls
    assert proc.returncode == 3, err.decode()
    assert "cannot reach Redis at" in err.decode() and "run the same command again" in err.decode()
    assert calls < 100  # it stopped: no call went out unlimited while Redis was away
    assert not out.exists()
    # Redis back: the rerun makes only the calls the first run did not finish.
    assert run_cli(["run", str(cfg), "-q"]) == 0
    assert server.state.calls == 100
    assert pl.read_parquet(out).height == 100
    assert json.loads(Path(f"{out}.summary.json").read_text())["cached"] == calls


def test_a_shared_limit_needs_a_redis_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(
        tmp_path / "c.yaml",
        {"request": {"url": "http://127.0.0.1:9/{{id}}"}, "rate_limit": {"rate": "5/s", "shared": "http://x"}},
    )
    assert run_cli(["validate", str(cfg)]) == 2
    assert capsys.readouterr().err == (
        f"error: {cfg}, line 5: rate_limit.shared: 'http://x' is not a Redis URL. "
        "Write it as redis://host:6379/0 (rediss:// for TLS).\n"
    )


def test_the_readme_xargs_recipe_shards_under_one_shared_limit(tmp_path: Path, serve: Serve, redis_url: str) -> None:
    """The `seq | xargs -P` line of docs/sharding.md, as copied: 4 shards, one shared limit, then merge."""
    sharding = (ROOT / "docs" / "sharding.md").read_text(encoding="utf-8")
    recipe = sharding.split("seq 0 3 | xargs", 1)[1].split("```", 1)[0]
    command = ("seq 0 3 | xargs" + recipe).replace("\\\n", " ").strip()
    server = serve(create_app(DemoSettings()))
    out = tmp_path / "out"
    write_config(
        tmp_path / "job.yaml",
        demo_config(
            server.url,
            input=str(known_people(tmp_path, rows=80)),
            output=str(out / "people.parquet"),
            rate_limit={"rate": "40/s", "shared": redis_url, "key": "xargs"},
        ),
    )
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    proc = subprocess.run(
        ["sh", "-c", command],
        cwd=tmp_path,
        env={**demo_child_env(), "PATH": path},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    merged = pl.read_parquet(out / "people.parquet")
    assert merged.height == 80 and merged["email"].to_list() == pl.read_csv(tmp_path / "in.csv")["email"].to_list()
    assert len(server.state.call_times) == 80  # each row called once, across the four shards
    # Four processes each pacing alone would reach 160 in a second; the shared limit keeps the starts
    # at 40/s, and a loaded machine may bunch their arrivals at the server by a few.
    assert busiest_second(server.state.call_times) <= 40 * 1.1


def test_a_429_seen_by_one_process_pauses_every_process(tmp_path: Path, serve: Serve, redis_url: str) -> None:
    """Two shard processes at 20/s: the API answers the 30th call with 429 and Retry-After: 1.
    Both processes stop starting calls for that second; only the starts already booked (at most
    the four workers' slots, 200 ms at 20/s) arrive after it; then the run goes on and ends."""
    arrivals: list[float] = []
    throttled_at: list[float] = []

    async def person(request: web.Request) -> web.Response:
        arrivals.append(time.monotonic())
        if len(arrivals) == 30:
            throttled_at.append(arrivals[-1])
            return web.json_response({"error": "slow down"}, status=429, headers={"Retry-After": "1"})
        return web.json_response({"name": request.match_info["email"]})

    app = web.Application()
    app.router.add_get("/p/{email}", person)
    server = serve(app)
    src = known_people(tmp_path, rows=80)
    cfg = write_config(
        tmp_path / "c.yaml",
        {
            "input": str(src),
            "output": str(tmp_path / "out.parquet"),
            "request": {"url": server.url + "/p/{{email}}"},
            "fields": {"name": "name"},
            "concurrency": 2,
            "rate_limit": {"rate": "20/s", "shared": redis_url, "key": "pause"},
        },
    )
    run_shards(cfg, 2)
    assert len(arrivals) == 81  # every row once, and the throttled one again
    (t429,) = throttled_at
    during = [t - t429 for t in arrivals if t429 < t < t429 + 0.95]
    print(f"\narrivals in the second after the 429: {[round(d, 3) for d in during]}")
    assert all(d < 0.3 for d in during), during  # only starts booked before the pause
    merged = pl.concat([pl.read_parquet(p) for p in sorted(tmp_path.glob("out.shard-*.parquet"))])
    assert merged["_http_status"].to_list() == [200] * 80


def test_the_time_to_reach_redis_is_not_lateness(redis_url: str) -> None:
    """Redis 8 ms away each way (a real TCP relay that holds every packet): the round trip is
    not lateness, so no slot is given up for it (measured from the moment it was asked, every
    booking would look late, and each call would burn three slots)."""
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])

    async def main() -> tuple[int, int]:
        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)

            async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                while data := await src.read(65536):
                    await asyncio.sleep(0.008)
                    dst.write(data)
                    await dst.drain()
                dst.close()

            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer), return_exceptions=True)

        server = await asyncio.start_server(relay, "127.0.0.1", 0)
        relay_port = server.sockets[0].getsockname()[1]
        limiter = SharedRateLimiter(f"redis://127.0.0.1:{relay_port}/0", "far", rate=200)
        try:
            await asyncio.gather(*(limiter.acquire() for _ in range(100)))
        finally:
            await limiter.close()
            server.close()
        return limiter.rebooked, 100

    rebooked, calls = asyncio.run(main())
    print(f"\n{calls} starts through a relay 8 ms each way: {rebooked} slots given up")
    assert rebooked < calls / 4  # a busy machine may give up a few; the round trip none
