"""Steps: a chain of calls per row, pipelined, and what each step added to a chain costs.

Every part runs its configs in alternation, A B C A B C ..., against the demo API in its own
process on 127.0.0.1, each run a fresh `enrich run -q` with a fresh journal; figures are
medians. The steps form a chain: each step's request reads a field of the step before's
answer, so a row cannot start a step before its previous step's answer is in.

    s1  GET /v1/people/{{email}}?domain={{domain}}           -> email_1, name
    s2  GET /v1/people/{{email_1}}?domain={{domain}}&step=2  -> email_2, title
    s3  GET /v1/people/{{email_2}}?domain={{domain}}&step=3  -> seniority

Each step asks for the same answer as the others (``step``, which the API ignores, keeps
their requests apart in the journal), so each costs what the others cost, and the first
step alone is the slowest step alone.

The table holds only emails the demo API knows, so every step answers every row (k calls
per row, no 404 to leave a later step out). Parts:

- pipelining: N rows, a little latency. The first step alone at R/s (the baseline), two
  steps each at R/s, and three steps whose slowest is R/s (2R, R, 1.5R). Staged (every row
  through step 1, then all through step 2) two steps take 2N/R; pipelined, about N/R. Time is
  measured twice: the process's wall time (start-up, login and the output's write included)
  and the calls' span at the server (first arrival to last), each against N/R and k·N/R.
- k steps: latency 0, no rate limit, 64 calls in flight per step: 1, 2 and 3 steps, and the
  same first call as a config without `steps` (the one-call pass). Of each, against the
  1-step run: rows/s over the wall time; calls/s over the calls' span at the server (k calls
  a row); the client's CPU per call, less that of a 1-row run of the same config made beside
  it (start-up, login, the output's write). The client is bound by its one core, so rows/s
  falls as 1/k; calls/s and CPU per call at 1.00x the 1-step run's would mean a step costs
  no more in a chain than alone.

    python bench/steps.py               # everything (~2 min)
    python bench/steps.py --quick       # fewer rows and repeats, for a smoke test

Results: bench/results/steps.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA, DemoServer, Run, enrich_command, machine, make_table, measure, print_table, write_results

WORK = DATA / "steps"
RATE = 200  # R: calls/s of each step in the pipelining part
PIPELINE_LATENCY_MS = 5
PIPELINE_CONCURRENCY = 16
K_CONCURRENCY = 64  # per step


# --- the configs ---------------------------------------------------------------------------


def chain_steps(base: str) -> list[dict[str, Any]]:
    """The three steps of the chain, each reading a field of the one before. They ask the same
    endpoint for the same answer, so each costs what the others cost, and the first alone is
    any step alone; ``step`` (which the API ignores) keeps their requests apart in the journal."""
    people = base + "/v1/people/"
    return [
        {
            "name": "s1",
            "request": {"url": people + "{{email}}", "params": {"domain": "{{domain}}"}},
            "fields": {"email_1": "person.email", "name": "person.name"},
        },
        {
            "name": "s2",
            "request": {"url": people + "{{email_1}}", "params": {"domain": "{{domain}}", "step": "2"}},
            "fields": {"email_2": "person.email", "title": "person.employment.title"},
        },
        {
            "name": "s3",
            "request": {"url": people + "{{email_2}}", "params": {"domain": "{{domain}}", "step": "3"}},
            "fields": {"seniority": "person.employment.seniority"},
        },
    ]


def auth(base: str) -> dict[str, Any]:
    return {
        "url": f"{base}/auth/token",
        "body": {"client_id": "${DEMO_CLIENT_ID}", "client_secret": "${DEMO_CLIENT_SECRET}"},
        "token_path": "access_token",
    }


def chain_config(base: str, k: int, concurrency: int, rates: Sequence[float] | None = None) -> dict[str, Any]:
    """A config whose ``steps`` are the chain's first ``k``; ``rates``: each step's rate_limit (calls/s)."""
    steps = chain_steps(base)[:k]
    if rates is not None:
        steps = [{**step, "rate_limit": f"{rate:g}/s"} for step, rate in zip(steps, rates, strict=True)]
    return {"auth": auth(base), "concurrency": concurrency, "steps": steps}


def one_call_config(base: str, concurrency: int) -> dict[str, Any]:
    """The chain's first call as a config without ``steps``."""
    first = chain_steps(base)[0]
    return {"auth": auth(base), "concurrency": concurrency, "request": first["request"], "fields": first["fields"]}


def known_table(rows: int) -> Path:
    """A CSV of ``rows`` people whose emails the demo API knows (it answers about one in twenty
    with 404), so every step of the chain answers every row; cached in bench/.data/."""
    import polars as pl

    from enrich.demo_server import person_for

    path = DATA / f"steps-known-{rows}.csv"
    if path.exists():
        return path
    people = pl.read_csv(make_table(rows + rows // 10 + 50), infer_schema=False)
    known = people.filter(
        pl.struct("email", "domain").map_elements(
            lambda r: person_for(r["email"], r["domain"]) is not None, return_dtype=pl.Boolean
        )
    ).head(rows)
    assert known.height == rows, f"only {known.height} known emails for {rows} rows"
    tmp = path.with_name(f".{path.name}.tmp")
    known.write_csv(tmp)
    tmp.replace(path)
    return path


# --- one run -------------------------------------------------------------------------------


def call_times(server: DemoServer) -> list[float]:
    with urllib.request.urlopen(f"{server.url}/_stats") as resp:
        return list(json.load(resp)["call_times"])


def run_config(server: DemoServer, config: dict[str, Any], table: Path, tag: str) -> dict[str, float]:
    """``enrich run`` the config on ``table`` with a fresh journal: wall time, CPU, and the calls
    as the server saw them (count, span from the first arrival to the last)."""
    work = WORK / tag
    shutil.rmtree(work, ignore_errors=True)  # every run makes all its calls
    work.mkdir(parents=True)
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump({"input": str(table), "output": str(work / "out.parquet"), **config},
                                   sort_keys=False), encoding="utf-8")  # fmt: skip
    before = len(call_times(server))
    run: Run = measure([*enrich_command(), "run", str(path), "-q"])
    times = call_times(server)[before:]
    return {"seconds": run.seconds, "cpu": run.cpu, "calls": len(times), "span": max(times) - min(times)}


def alternate(
    repeats: int, cells: dict[str, Any], server: DemoServer, table: Path
) -> dict[str, list[dict[str, float]]]:
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in cells}
    for _ in range(repeats):
        for name, config in cells.items():
            runs[name].append(run_config(server, config, table, name))
            print(f"  {name}: {json.dumps({k: round(v, 3) for k, v in runs[name][-1].items()})}", file=sys.stderr)
    return runs


def med(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


# --- the parts -----------------------------------------------------------------------------


def pipelining(quick: bool) -> dict[str, Any]:
    rows = 400 if quick else 1_000
    repeats = 1 if quick else 3
    table = known_table(rows)
    ideal = rows / RATE
    with DemoServer(latency_ms=PIPELINE_LATENCY_MS) as server:
        cases = {
            "1 step": (1, [RATE]),
            "2 steps": (2, [RATE, RATE]),
            "3 steps": (3, [2 * RATE, RATE, 1.5 * RATE]),
        }
        configs = {name: chain_config(server.url, k, PIPELINE_CONCURRENCY, rates) for name, (k, rates) in cases.items()}
        runs = alternate(repeats, configs, server, table)
    results = []
    for name, (k, rates) in cases.items():
        wall, span = med(runs[name], "seconds"), med(runs[name], "span")
        calls = round(med(runs[name], "calls"))
        if calls != k * rows:
            raise SystemExit(f"{name}: {calls:,} calls at the server, expected {k * rows:,}")
        results.append(
            {
                "steps": k,
                "rate_limits_per_s": rates,
                "calls": calls,
                "wall_s": round(wall, 3),
                "span_s": round(span, 3),
                "wall_over_ideal": round(wall / ideal, 3),
                "span_over_ideal": round(span / ideal, 3),
                "wall_over_staged": round(wall / (k * ideal), 3),
                "span_over_staged": round(span / (k * ideal), 3),
                # against the 1-step run of the same round (run beside it), then the median
                "wall_over_one_step": round(
                    statistics.median(
                        r["seconds"] / one["seconds"] for r, one in zip(runs[name], runs["1 step"], strict=True)
                    ),
                    3,
                ),
                "runs": [{key: round(v, 3) for key, v in r.items()} for r in runs[name]],
            }
        )
    return {
        "rows": rows,
        "rate_per_s": RATE,
        "latency_ms": PIPELINE_LATENCY_MS,
        "concurrency": PIPELINE_CONCURRENCY,
        "repeats": repeats,
        "ideal_s": ideal,
        "cases": results,
    }


def k_steps(quick: bool) -> dict[str, Any]:
    rows = 2_000 if quick else 8_000
    repeats = 1 if quick else 3
    table, one_row = known_table(rows), known_table(1)
    with DemoServer() as server:
        cases = {
            "one call": (1, one_call_config(server.url, K_CONCURRENCY)),
            "1 step": (1, chain_config(server.url, 1, K_CONCURRENCY)),
            "2 steps": (2, chain_config(server.url, 2, K_CONCURRENCY)),
            "3 steps": (3, chain_config(server.url, 3, K_CONCURRENCY)),
        }
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
        for _ in range(repeats):
            for name, (_, config) in cases.items():
                # A 1-row run beside each: the start-up, login and write that the CPU per call leaves out.
                fixed = run_config(server, config, one_row, name)
                run = run_config(server, config, table, name)
                run["call_cpu"] = (run["cpu"] - fixed["cpu"]) / (run["calls"] - fixed["calls"])
                runs[name].append(run)
                print(f"  {name}: {json.dumps({k: round(v, 6) for k, v in run.items()})}", file=sys.stderr)
    results = []
    for name, (k, _) in cases.items():
        calls = round(med(runs[name], "calls"))
        if calls != k * rows:
            raise SystemExit(f"{name}: {calls:,} calls at the server, expected {k * rows:,}")
        # Each ratio is against the 1-step run of the same round (run beside it), then the median.
        pairs = list(zip(runs[name], runs["1 step"], strict=True))
        results.append(
            {
                "case": name,
                "steps": k,
                "calls": calls,
                "rows_per_s": round(rows / med(runs[name], "seconds")),
                "rows_per_s_vs_one_step": round(
                    statistics.median(one["seconds"] / r["seconds"] for r, one in pairs), 3
                ),
                "server_calls_per_s": round(statistics.median(r["calls"] / r["span"] for r in runs[name])),
                "server_calls_per_s_vs_one_step": round(
                    statistics.median(r["calls"] / r["span"] / (one["calls"] / one["span"]) for r, one in pairs), 3
                ),
                "cpu_us_per_call": round(med(runs[name], "call_cpu") * 1e6, 1),
                "cpu_per_call_vs_one_step": round(
                    statistics.median(r["call_cpu"] / one["call_cpu"] for r, one in pairs), 3
                ),
                "runs": [{key: round(v, 6 if key == "call_cpu" else 3) for key, v in r.items()} for r in runs[name]],
            }
        )
    return {"rows": rows, "latency_ms": 0, "concurrency_per_step": K_CONCURRENCY, "repeats": repeats,
            "cases": results}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rows and repeats (a smoke test)")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print("pipelining ...", file=sys.stderr)
    pipe = pipelining(args.quick)
    print("k steps ...", file=sys.stderr)
    ks = k_steps(args.quick)
    shutil.rmtree(WORK, ignore_errors=True)  # journals and outputs of the last runs
    data = {
        "benchmark": "steps",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "quick": args.quick,
        "pipelining": pipe,
        "k_steps": ks,
        "seconds": round(time.perf_counter() - started),
    }
    path = write_results("steps" + ("-quick" if args.quick else ""), data)
    rows, rate = pipe["rows"], pipe["rate_per_s"]
    print(f"\n{rows:,} rows, each step at most {rate}/s: N/R = {pipe['ideal_s']:.1f} s")
    print_table(
        ["steps", "limits /s", "wall s", "/ (N/R)", "/ (kN/R)", "calls span s", "/ (N/R)", "/ (kN/R)", "wall / 1 step"],
        [[c["steps"], ", ".join(f"{r:g}" for r in c["rate_limits_per_s"]), c["wall_s"], c["wall_over_ideal"],
          c["wall_over_staged"], c["span_s"], c["span_over_ideal"], c["span_over_staged"], c["wall_over_one_step"]]
         for c in pipe["cases"]],
    )  # fmt: skip
    print(f"\n{ks['rows']:,} rows, latency 0, no rate limit, {ks['concurrency_per_step']} in flight per step")
    print_table(
        ["case", "rows/s", "vs 1 step", "calls/s at server", "vs 1 step", "CPU µs/call", "vs 1 step"],
        [[c["case"], c["rows_per_s"], c["rows_per_s_vs_one_step"], c["server_calls_per_s"],
          c["server_calls_per_s_vs_one_step"], c["cpu_us_per_call"], c["cpu_per_call_vs_one_step"]]
         for c in ks["cases"]],
    )  # fmt: skip
    print(f"\n{path} ({data['seconds']} s)")


if __name__ == "__main__":
    main()
