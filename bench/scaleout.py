"""Scale-out: 1, 2 and 4 `enrich run --shard I/N` processes under one shared rate limit.

The demo API runs in its own process with 20 ms of latency; every process has 16
requests in flight, so one process reaches about 16 / 20 ms = 800 rows/s at best (about
700 on the 2-core machine of the README). The processes share ``rate_limit: {rate:
2000/s, shared: redis://..., key: scaleout}`` through a private redis-server on a free
port of 127.0.0.1: well above what one process does, so 1 process is bound by latency,
2 about double it, and 4 meet the shared limit. They keep one journal in the same Redis
(written through by each process's writer thread), as the README's recipes do. For each N: wall time from the first
start to the last exit, rows/s over it, and at the server the calls' rate and the
busiest one-second window of arrivals, against the limit. Each N runs twice (``--quick``:
once, on fewer rows); figures are medians.

    python bench/scaleout.py               # 20,000 rows, each N twice (~2 min)
    python bench/scaleout.py --quick       # 4,000 rows, once, for a smoke test

Needs ``redis-server`` on the PATH (.ci/run installs it: apt-get install redis-server).
Last, one process with no limit and no latency keeps its journal in a file, then in Redis
(alternated): what writing through to Redis costs, in rows/s and CPU per row.

Results: bench/results/scaleout.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    DATA,
    ROOT,
    DemoServer,
    child_env,
    enrich_command,
    free_port,
    machine,
    make_table,
    measure,
    print_table,
    stop_process,
    write_config,
    write_results,
)

WORK = DATA / "scaleout"
LATENCY_MS = 20
CONCURRENCY = 16  # per process
RATE = 2_000  # the shared limit, requests/s: above one process (~700/s), below four
PROCESSES = (1, 2, 4)


class RedisServer:
    """A private ``redis-server`` on a free port of 127.0.0.1, no persistence; stopped on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit(
                "bench/scaleout.py needs redis-server on the PATH, for the shared rate limit "
                "(.ci/run installs it: apt-get install redis-server)."
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise SystemExit(f"redis-server did not start on 127.0.0.1:{self.port}") from None
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def flush(self) -> None:
        """Forget the previous run's bookings, so each run starts from an empty limiter."""
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            client.flushdb()
        finally:
            client.close()

    def stop(self) -> None:
        stop_process(self.proc)


def busiest_second(times: list[float]) -> int:
    """The most arrivals in any window [t, t + 1 s) starting at an arrival."""
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while j < len(times) and times[j] < t + 1.0:
            j += 1
        best = max(best, j - i)
    return best


def call_times(server: DemoServer) -> list[float]:
    with urllib.request.urlopen(f"{server.url}/_stats") as resp:
        return list(json.load(resp)["call_times"])


def run_once(server: DemoServer, redis: RedisServer, table: Path, rows: int, n: int) -> dict[str, Any]:
    """N shard processes in parallel, each its own output, all one journal in Redis; measured at the
    client and the server."""
    import polars as pl

    work = WORK / f"n{n}"
    shutil.rmtree(work, ignore_errors=True)  # every run makes all its calls
    work.mkdir(parents=True)
    output = work / "out.parquet"
    limit = f'{{rate: {RATE}/s, shared: "{redis.url}", key: scaleout}}'
    config = write_config(work / "scaleout.yaml", server.port, table, output, concurrency=CONCURRENCY,
                          rate_limit=limit, journal=f"{redis.url}?prefix=scaleout-{n}")  # fmt: skip
    redis.flush()
    before = len(call_times(server))
    logs = [work / f"shard-{i}.stderr" for i in range(n)]
    started = time.perf_counter()
    procs = []
    for i in range(n):
        with logs[i].open("wb") as err:
            procs.append(
                subprocess.Popen([*enrich_command(), "run", str(config), "--shard", f"{i}/{n}", "-q"], cwd=ROOT,
                                 env=child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
            )  # fmt: skip
    codes = [proc.wait() for proc in procs]
    seconds = time.perf_counter() - started
    for i, code in enumerate(codes):
        if code != 0:
            raise SystemExit(f"shard {i}/{n} exited with {code}:\n{logs[i].read_text(errors='replace')[-2000:]}")
    times = call_times(server)[before:]
    outputs = sorted(work.glob("out.shard-*.parquet"))
    got = pl.scan_parquet(outputs).select(pl.len()).collect().item() if outputs else 0
    if len(outputs) != n or got != rows or len(times) != rows:
        raise SystemExit(f"{n} processes: {rows:,} rows in, {len(outputs)} outputs with {got:,} rows, "
                         f"{len(times):,} calls at the server")  # fmt: skip
    span = max(times) - min(times)
    return {
        "seconds": seconds,
        "rows_per_s": rows / seconds,
        "server_per_s": (len(times) - 1) / span if span > 0 else 0.0,
        "busiest_second": busiest_second(times),
    }


def journal_place(redis: RedisServer, rows: int, repeats: int) -> dict[str, Any]:
    """One process, no rate limit, no latency, 64 in flight: the journal in a file against the
    journal in Redis (written through by its thread), alternated; rows/s and CPU per row."""
    table = make_table(rows)
    work = WORK / "journal"
    runs: dict[str, list[Any]] = {"file": [], "redis": []}
    with DemoServer() as server:
        for _ in range(repeats):
            for place in ("file", "redis"):
                shutil.rmtree(work, ignore_errors=True)  # every run makes all its calls
                redis.flush()
                journal = f"{redis.url}?prefix=journal-bench" if place == "redis" else None
                config = write_config(work / "j.yaml", server.port, table, work / "out.parquet", concurrency=64,
                                      journal=journal)  # fmt: skip
                runs[place].append(measure([*enrich_command(), "run", str(config), "-q"]))
    rps = {k: statistics.median(rows / r.seconds for r in v) for k, v in runs.items()}
    cpu = {k: statistics.median(r.cpu / rows * 1e6 for r in v) for k, v in runs.items()}
    result = {
        "rows": rows,
        "file_rows_per_s": round(rps["file"]),
        "redis_rows_per_s": round(rps["redis"]),
        "redis_over_file": round(rps["redis"] / rps["file"], 3),
        "file_cpu_us_per_row": round(cpu["file"], 1),
        "redis_cpu_us_per_row": round(cpu["redis"], 1),
        "redis_cpu_over_file": round(cpu["redis"] / cpu["file"], 3),
    }
    print(f"  journal place: {json.dumps(result)}", file=sys.stderr)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rows, one run of each N (a smoke test)")
    args = parser.parse_args()
    rows = 4_000 if args.quick else 20_000
    repeats = 1 if args.quick else 2
    started = time.perf_counter()
    table = make_table(rows)
    shutil.rmtree(WORK, ignore_errors=True)
    cells = []
    with RedisServer(WORK / "redis") as redis, DemoServer(latency_ms=LATENCY_MS) as server:
        for n in PROCESSES:
            runs = []
            for _ in range(repeats):
                runs.append(run_once(server, redis, table, rows, n))
                print(f"  {n} processes: {json.dumps({k: round(v, 2) for k, v in runs[-1].items()})}",
                      file=sys.stderr)  # fmt: skip
            busiest = statistics.median(r["busiest_second"] for r in runs)
            cell = {
                "processes": n,
                "rows": rows,
                "seconds": round(statistics.median(r["seconds"] for r in runs), 2),
                "rows_per_s": round(statistics.median(r["rows_per_s"] for r in runs)),
                "server_calls_per_s": round(statistics.median(r["server_per_s"] for r in runs)),
                "busiest_second": round(busiest),
                "busiest_over_limit": round(busiest / RATE, 3),
                "runs": [{k: round(v, 2) for k, v in r.items()} for r in runs],
            }
            cells.append(cell)
        place = journal_place(redis, rows, repeats + 1)
    shutil.rmtree(WORK, ignore_errors=True)  # journals and outputs of the last runs
    data = {
        "benchmark": "scaleout",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "quick": args.quick,
        "latency_ms": LATENCY_MS,
        "concurrency_per_process": CONCURRENCY,
        "shared_limit_per_s": RATE,
        "repeats": repeats,
        "scaleout": cells,
        "journal_place": place,
        "seconds": round(time.perf_counter() - started),
    }
    path = write_results("scaleout" + ("-quick" if args.quick else ""), data)
    print()
    print_table(
        ["processes", "rows/s", "x 1 process", "at server /s", f"busiest 1 s (limit {RATE:,})", "busiest/limit"],
        [[c["processes"], c["rows_per_s"], round(c["rows_per_s"] / cells[0]["rows_per_s"], 2),
          c["server_calls_per_s"], c["busiest_second"], c["busiest_over_limit"]] for c in cells],
    )  # fmt: skip
    print(f"\none process, journal in Redis / in a file: {place['redis_over_file']} rows/s "
          f"({place['redis_rows_per_s']:,} vs {place['file_rows_per_s']:,}), CPU per row "
          f"{place['redis_cpu_over_file']} ({place['redis_cpu_us_per_row']} vs {place['file_cpu_us_per_row']} us)")  # fmt: skip
    print(f"\n{path} ({data['seconds']} s)")


if __name__ == "__main__":
    main()
