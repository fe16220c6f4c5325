"""Speed of `enrich run` against a bare aiohttp loop (bench/baseline.py), side by side.

Every cell runs A (`enrich run`, journal on, as users run it) and B (the baseline) in
alternation, A B A B ..., against the demo API in its own process on 127.0.0.1, so the
machine's drift hits both alike; figures are medians. Sections:

- throughput: latency 0 and 20 ms x concurrency 16, 64, 256: rows/s, client CPU per row
  (the child's own rusage), A/B ratios, and at 20 ms the share of concurrency/latency;
- rate limit: 100/s and 1,000/s over 20 s, arrivals counted at the server: achieved
  rate, busiest one-second window, the first second;
- journal cost: journal on against --no-journal;
- start-up: `enrich --version` and a 1-row run.

    python bench/throughput.py               # everything (~5 min)
    python bench/throughput.py --quick       # fewer rows and repeats, for a smoke test

Results: bench/results/throughput.json, and bench/results/throughput.png.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    DATA,
    ROOT,
    DemoServer,
    Run,
    enrich_command,
    machine,
    make_table,
    measure,
    print_table,
    write_config,
    write_results,
)

WORK = DATA / "throughput"


def run_a(server: DemoServer, table: Path, concurrency: int, tag: str, *extra: str) -> Run:
    out = WORK / f"a-{tag}.parquet"
    for leftover in (out, *(Path(f"{out}.journal{s}") for s in ("", "-wal", "-shm"))):
        leftover.unlink(missing_ok=True)  # every run makes all its calls
    cfg = write_config(WORK / f"a-{tag}.yaml", server.port, table, out, concurrency=concurrency)
    return measure([*enrich_command(), "run", str(cfg), "-q", *extra])


def run_b(server: DemoServer, table: Path, concurrency: int, tag: str) -> Run:
    out = WORK / f"b-{tag}.parquet"
    return measure([sys.executable, str(ROOT / "bench" / "baseline.py"), "--base", server.url,
                    "--input", str(table), "--output", str(out), "-c", str(concurrency)])  # fmt: skip


def alternate(repeats: int, a: Callable[[], Run], b: Callable[[], Run]) -> tuple[list[Run], list[Run]]:
    runs_a, runs_b = [], []
    for _ in range(repeats):
        runs_a.append(a())
        runs_b.append(b())
    return runs_a, runs_b


def med(values: list[float]) -> float:
    return statistics.median(values)


def throughput(quick: bool) -> list[dict[str, Any]]:
    cells = []
    repeats = 2 if quick else 3
    for latency_ms in (0, 20):
        with DemoServer(latency_ms=latency_ms) as server:
            for concurrency in (16, 64, 256):
                if latency_ms:  # about 6 s of calls at the theoretical limit, at most 20,000 rows
                    rows = min(20_000, int(concurrency / (latency_ms / 1000) * (2 if quick else 6)))
                else:
                    rows = 4_000 if quick else 20_000
                table = make_table(rows)
                tag = f"l{latency_ms}-c{concurrency}"
                runs_a, runs_b = alternate(
                    repeats,
                    functools.partial(run_a, server, table, concurrency, tag),
                    functools.partial(run_b, server, table, concurrency, tag),
                )
                a_rps = med([rows / r.seconds for r in runs_a])
                b_rps = med([rows / r.seconds for r in runs_b])
                a_cpu = med([r.cpu / rows * 1e6 for r in runs_a])
                b_cpu = med([r.cpu / rows * 1e6 for r in runs_b])
                cell = {
                    "latency_ms": latency_ms,
                    "concurrency": concurrency,
                    "rows": rows,
                    "enrich_rows_per_s": round(a_rps),
                    "baseline_rows_per_s": round(b_rps),
                    "throughput_ratio": round(a_rps / b_rps, 3),
                    "enrich_cpu_us_per_row": round(a_cpu, 1),
                    "baseline_cpu_us_per_row": round(b_cpu, 1),
                    "cpu_ratio": round(a_cpu / b_cpu, 3),
                }
                if latency_ms:
                    limit = concurrency / (latency_ms / 1000)
                    cell["enrich_share_of_limit"] = round(a_rps / limit, 3)
                    cell["baseline_share_of_limit"] = round(b_rps / limit, 3)
                cells.append(cell)
                print(f"  {tag}: {json.dumps(cell)}", file=sys.stderr)
    return cells


def rate_limit(quick: bool) -> list[dict[str, Any]]:
    results = []
    seconds = 5 if quick else 20
    for rate in (100, 1000):
        rows = rate * seconds
        table = make_table(rows)
        with DemoServer() as server:
            out = WORK / f"rate-{rate}.parquet"
            for leftover in (out, Path(f"{out}.journal")):
                leftover.unlink(missing_ok=True)
            cfg = write_config(WORK / f"rate-{rate}.yaml", server.port, table, out, concurrency=64,
                               rate_limit=f"{rate}/s")  # fmt: skip
            measure([*enrich_command(), "run", str(cfg), "-q"])
            with urllib.request.urlopen(f"{server.url}/_stats") as resp:
                times = sorted(json.load(resp)["call_times"])
        span = times[-1] - times[0]
        busiest, j = 0, 0
        for i, t in enumerate(times):  # the most arrivals in any window [t, t + 1 s)
            while j < len(times) and times[j] < t + 1.0:
                j += 1
            busiest = max(busiest, j - i)
        first = sum(1 for t in times if t < times[0] + 1.0)
        result = {
            "limit_per_s": rate,
            "calls": len(times),
            "achieved_per_s": round((len(times) - 1) / span, 2),
            "achieved_share": round((len(times) - 1) / span / rate, 4),
            "busiest_second": busiest,
            "first_second": first,
        }
        results.append(result)
        print(f"  rate {rate}/s: {json.dumps(result)}", file=sys.stderr)
    return results


def journal_cost(quick: bool) -> dict[str, Any]:
    rows = 4_000 if quick else 20_000
    table = make_table(rows)
    with DemoServer() as server:
        on, off = alternate(
            2 if quick else 3,
            lambda: run_a(server, table, 64, "journal-on"),
            lambda: run_a(server, table, 64, "journal-off", "--no-journal"),
        )
    on_rps, off_rps = med([rows / r.seconds for r in on]), med([rows / r.seconds for r in off])
    result = {
        "rows": rows,
        "journal_on_rows_per_s": round(on_rps),
        "journal_off_rows_per_s": round(off_rps),
        "on_over_off": round(on_rps / off_rps, 3),
        "journal_on_cpu_us_per_row": round(med([r.cpu / rows * 1e6 for r in on]), 1),
        "journal_off_cpu_us_per_row": round(med([r.cpu / rows * 1e6 for r in off]), 1),
    }
    print(f"  journal: {json.dumps(result)}", file=sys.stderr)
    return result


def startup(quick: bool) -> dict[str, Any]:
    version = [measure([*enrich_command(), "--version"]).seconds for _ in range(5 if quick else 10)]
    table = make_table(1)
    with DemoServer() as server:
        one = [run_a(server, table, 1, "one-row").seconds for _ in range(3 if quick else 5)]
    result = {"version_s": round(med(version), 3), "one_row_run_s": round(med(one), 3)}
    print(f"  start-up: {json.dumps(result)}", file=sys.stderr)
    return result


def chart(cells: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{c['latency_ms']} ms\nc={c['concurrency']}" for c in cells]
    x = range(len(cells))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    width = 0.38
    top.bar([i - width / 2 for i in x], [c["enrich_rows_per_s"] for c in cells], width, label="enrich run")
    top.bar([i + width / 2 for i in x], [c["baseline_rows_per_s"] for c in cells], width, label="bare aiohttp loop")
    top.set_ylabel("rows/s (higher is better)")
    top.legend()
    top.set_title("enrich against a hand-written aiohttp loop, same requests, 127.0.0.1")
    bottom.bar([i - width / 2 for i in x], [c["enrich_cpu_us_per_row"] for c in cells], width)
    bottom.bar([i + width / 2 for i in x], [c["baseline_cpu_us_per_row"] for c in cells], width)
    bottom.set_ylabel("client CPU µs/row (lower is better)")
    bottom.set_xticks(list(x), labels)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rows and repeats (a smoke test)")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print("throughput ...", file=sys.stderr)
    cells = throughput(args.quick)
    print("rate limit ...", file=sys.stderr)
    rates = rate_limit(args.quick)
    print("journal cost ...", file=sys.stderr)
    journal = journal_cost(args.quick)
    print("start-up ...", file=sys.stderr)
    start = startup(args.quick)
    data = {
        "benchmark": "throughput",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "quick": args.quick,
        "throughput": cells,
        "rate_limit": rates,
        "journal": journal,
        "startup": start,
        "seconds": round(time.perf_counter() - started),
    }
    path = write_results("throughput" + ("-quick" if args.quick else ""), data)
    chart(cells, path.with_suffix(".png"))
    print()
    print_table(
        ["latency", "conc.", "enrich rows/s", "bare rows/s", "A/B", "enrich µs/row", "bare µs/row", "CPU A/B", "of limit"],
        [
            [f"{c['latency_ms']} ms", c["concurrency"], c["enrich_rows_per_s"], c["baseline_rows_per_s"],
             c["throughput_ratio"], c["enrich_cpu_us_per_row"], c["baseline_cpu_us_per_row"], c["cpu_ratio"],
             c.get("enrich_share_of_limit", "")]
            for c in cells
        ],
    )  # fmt: skip
    print()
    print_table(
        ["limit/s", "achieved/s", "share", "busiest 1 s", "first 1 s"],
        [[r["limit_per_s"], r["achieved_per_s"], r["achieved_share"], r["busiest_second"], r["first_second"]]
         for r in rates],
    )  # fmt: skip
    print()
    print(f"journal on / off: {journal['on_over_off']} ({journal['journal_on_rows_per_s']} vs "
          f"{journal['journal_off_rows_per_s']} rows/s)")  # fmt: skip
    print(f"start-up: enrich --version {start['version_s']} s, a 1-row run {start['one_row_run_s']} s")
    print(f"\n{path} and {path.with_suffix('.png')} ({data['seconds']} s)")


if __name__ == "__main__":
    main()
