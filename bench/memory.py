"""Memory benchmark: peak RSS of `enrich run` as the table grows (100k and 1M rows by default).

Each size is a generated CSV (bench/.data/, cached), enriched into Parquet through the
demo API, started in its own process on a free port (no latency, no rate limit), with
64 requests in flight and no client-side rate limit. The peak RSS is the child's own
``ru_maxrss`` (``os.wait4``); rows/s is rows over the whole process's wall time
(start-up, count, both passes, the final write).

    .venv/bin/python bench/memory.py                        # 100k and 1M rows
    .venv/bin/python bench/memory.py --sizes 10k,100k --check

Writes bench/results/memory.json and prints a table. The target (from the issue): 1M rows
under 300 MB peak RSS, and 10x the rows costs under 1.5x the peak.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA, DemoServer, machine, make_table, print_table, run_enrich, write_config, write_results

LIMIT_MB = 300.0  # peak RSS allowed at 1M rows
LIMIT_RATIO = 1.5  # peak RSS at 10x the rows, over the peak at 1x


def parse_size(text: str) -> int:
    text = text.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def human(rows: int) -> str:
    if rows >= 1_000_000 and rows % 1_000_000 == 0:
        return f"{rows // 1_000_000}M"
    if rows >= 1_000 and rows % 1_000 == 0:
        return f"{rows // 1_000}k"
    return str(rows)


def measure(rows: int, port: int, concurrency: int, fmt: str, trace: bool) -> dict[str, Any]:
    """Enrich a table of ``rows`` rows in a fresh child process; its peak RSS, time and checks."""
    import polars as pl

    table = make_table(rows)
    work = DATA / "runs"
    shutil.rmtree(work, ignore_errors=True)  # no journal or output left from an earlier run
    work.mkdir(parents=True)
    output = work / f"out-{rows}.{fmt}"
    config = write_config(work / "bench.yaml", port, table, output, concurrency=concurrency)
    samples: list[tuple[float, int]] | None = [] if trace else None
    run = run_enrich(["run", str(config), "--quiet"], samples=samples)
    if run.returncode != 0:
        raise SystemExit(f"enrich run failed on {rows:,} rows (exit {run.returncode}):\n{run.stderr.strip()}")
    scan = pl.scan_parquet(output) if fmt == "parquet" else pl.scan_csv(output)
    got, answered, ok = (
        scan.select(pl.len(), pl.col("_http_status").is_not_null().sum(), pl.col("_error").is_null().sum())
        .collect()
        .row(0)
    )
    if got != rows or answered != rows:
        raise SystemExit(f"{rows:,} rows in, but the output has {got:,} rows, {answered:,} with a response")
    result = {
        "rows": rows,
        "peak_rss_mb": round(run.peak_rss_mb, 1),
        "seconds": round(run.seconds, 1),
        "rows_per_s": round(rows / run.seconds),
        "ok_rows": ok,
        "input_mb": round(table.stat().st_size / 1e6, 1),
        "journal_mb": round(sum(p.stat().st_size for p in work.glob("*.journal*")) / 1e6, 1),
    }
    if samples is not None:
        result["rss_trace_mb"] = [(t, round(kib * 1024 / 1e6, 1)) for t, kib in samples]
    shutil.rmtree(work, ignore_errors=True)  # the 1M journal is ~0.5 GB
    return result


def measure_workbook(rows: int, port: int, concurrency: int) -> dict[str, Any]:
    """The same table as an Excel workbook in and out (read whole, written whole), beside the
    CSV -> Parquet run of the same rows made in the same process: peak RSS of each."""
    import polars as pl

    table = make_table(rows)
    book = table.with_suffix(".xlsx")
    if not book.exists():  # what a user keeps: the table saved as a workbook, cached like the CSV
        pl.read_csv(table, infer_schema=False).write_excel(book)
    work = DATA / "runs"
    out: dict[str, Any] = {"rows": rows, "input_mb": round(book.stat().st_size / 1e6, 1)}
    for name, source, suffix in (("csv_parquet", table, "parquet"), ("xlsx_xlsx", book, "xlsx")):
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        output = work / f"out-{rows}.{suffix}"
        config = write_config(work / "bench.yaml", port, source, output, concurrency=concurrency)
        run = run_enrich(["run", str(config), "--quiet"])
        if run.returncode != 0:
            raise SystemExit(f"enrich run failed on the {name} table (exit {run.returncode}):\n{run.stderr.strip()}")
        got = (
            pl.read_excel(output).height
            if suffix == "xlsx"
            else pl.scan_parquet(output).select(pl.len()).collect().item()
        )
        if got != rows:
            raise SystemExit(f"{rows:,} rows in, but the {name} output has {got:,}")
        out[name] = {"peak_rss_mb": round(run.peak_rss_mb, 1), "seconds": round(run.seconds, 1)}
    shutil.rmtree(work, ignore_errors=True)
    out["rss_ratio"] = round(out["xlsx_xlsx"]["peak_rss_mb"] / out["csv_parquet"]["peak_rss_mb"], 2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100k,1M", help="comma-separated row counts (default: 100k,1M)")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight (default 64)")
    parser.add_argument("--format", choices=["parquet", "csv"], default="parquet", help="output format")
    parser.add_argument("--trace", action="store_true", help="also record the RSS over time (in the JSON)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the memory targets are missed")
    parser.add_argument("--results", default="memory", help="name of the JSON in bench/results/ (default: memory)")
    parser.add_argument(
        "--workbook-rows", default="100k", help="rows of the Excel in-and-out run (default 100k; 0: none)"
    )
    args = parser.parse_args(argv)
    sizes = sorted({parse_size(s) for s in args.sizes.split(",") if s.strip()})

    started = time.perf_counter()
    for rows in sizes:  # generate first, so table generation is not in the figures
        make_table(rows)
    runs = []
    workbook_rows = parse_size(args.workbook_rows)
    workbook = None
    with DemoServer() as server:
        for rows in sizes:
            print(f"enriching {human(rows)} rows ...", file=sys.stderr, flush=True)
            runs.append(measure(rows, server.port, args.concurrency, args.format, args.trace))
        if workbook_rows:
            print(f"enriching {human(workbook_rows)} rows as a workbook ...", file=sys.stderr, flush=True)
            workbook = measure_workbook(workbook_rows, server.port, args.concurrency)
    total = time.perf_counter() - started

    base = runs[0]
    for run in runs:
        run["rss_ratio"] = round(run["peak_rss_mb"] / base["peak_rss_mb"], 2)
    verdicts = []
    by_rows = {r["rows"]: r for r in runs}
    if 1_000_000 in by_rows:
        peak = by_rows[1_000_000]["peak_rss_mb"]
        verdicts.append((f"peak RSS at 1M rows < {LIMIT_MB:.0f} MB", f"{peak:.0f} MB", peak < LIMIT_MB))
    for run in runs:
        if run["rows"] * 10 in by_rows:
            ratio = by_rows[run["rows"] * 10]["peak_rss_mb"] / run["peak_rss_mb"]
            label = f"peak RSS {human(run['rows'] * 10)} / {human(run['rows'])} < {LIMIT_RATIO}x"
            verdicts.append((label, f"{ratio:.2f}x", ratio < LIMIT_RATIO))

    write_results(
        args.results,
        {
            "benchmark": "memory",
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine(),
            "settings": {"concurrency": args.concurrency, "rate_limit": None, "output": args.format, "fields": 3},
            "runs": runs,
            "targets": [{"target": t, "measured": m, "met": ok} for t, m, ok in verdicts],
            "workbook": workbook,
            "total_seconds": round(total, 1),
        },
    )
    print(f"\nmemory: enrich run, CSV in, {args.format} out, concurrency {args.concurrency}, local demo API")
    print_table(
        ["rows", "peak RSS", "vs first", "time", "rows/s"],
        [
            (
                f"{r['rows']:,}",
                f"{r['peak_rss_mb']:.0f} MB",
                f"{r['rss_ratio']:.2f}x",
                f"{r['seconds']:.1f}s",
                f"{r['rows_per_s']:,}",
            )
            for r in runs
        ],
    )
    if workbook is not None:
        csv_run, book_run = workbook["csv_parquet"], workbook["xlsx_xlsx"]
        print(
            f"workbook, {workbook['rows']:,} rows: .xlsx in and out {book_run['peak_rss_mb']:.0f} MB peak RSS "
            f"({book_run['seconds']:.1f}s), CSV in and Parquet out {csv_run['peak_rss_mb']:.0f} MB "
            f"({csv_run['seconds']:.1f}s): {workbook['rss_ratio']:.2f}x"
        )
    for target, measured, ok in verdicts:
        print(f"{'ok  ' if ok else 'MISS'} {target}: {measured}")
    print(f"total {total:.0f}s -> bench/results/{args.results}.json")
    return 1 if args.check and not all(ok for *_, ok in verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
