"""The benchmark's baseline must do the same work as enrich, or the comparison means nothing."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from enrich import enrich
from enrich.config import config_from_dict
from enrich.demo_server import person_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_baseline_makes_the_same_calls_and_gets_the_same_fields(demo_api: Any, demo_env: Any, tmp_path: Path) -> None:
    table = pl.DataFrame(
        {
            "email": [f"user{i}@corp{i % 3}.com" for i in range(30)],
            "domain": [f"corp{i % 3}.com" for i in range(30)],
        }
    )
    inp = tmp_path / "in.csv"
    table.write_csv(inp)
    out = tmp_path / "baseline.parquet"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "baseline.py"), "--base", demo_api.url,
         "--input", str(inp), "--output", str(out), "-c", "4"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    baseline = pl.read_parquet(out)

    config = config_from_dict(
        {
            "auth": {
                "url": f"{demo_api.url}/auth/token",
                "body": {"client_id": "${DEMO_CLIENT_ID}", "client_secret": "${DEMO_CLIENT_SECRET}"},
                "token_path": "access_token",
            },
            "request": {"url": demo_api.url + "/v1/people/{{email}}", "params": {"domain": "{{domain}}"}},
            "fields": "person.name, person.employment.title, company.employees",
        }
    )
    ours = enrich(table, config).frame
    for column in ("person.name", "person.employment.title", "company.employees", "_http_status"):
        assert baseline[column].to_list() == ours[column].to_list(), column
    assert demo_api.state.calls == 60  # 30 rows each, no more


def bench_module(name: str) -> Any:
    """``bench/<name>.py`` imported (the benches are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The field each length of bench/steps.py's chain ends with, and where the demo API keeps it.
LAST_FIELD = {
    1: ("name", lambda r: r["person"]["name"]),
    2: ("title", lambda r: r["person"]["employment"]["title"]),
    3: ("seniority", lambda r: r["person"]["employment"]["seniority"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 2, 3])
def test_the_steps_bench_makes_k_calls_a_row_each_step_reading_the_one_before(
    demo_api: Any, demo_env: Any, k: int
) -> None:
    # bench/steps.py compares a chain of k steps with one step: each row must make exactly k
    # calls, and each step must wait for the step before (its request reads that step's field).
    steps = bench_module("steps")
    emails = [e for e in (f"user{i}@corp{i % 3}.com" for i in range(40)) if person_for(e) is not None][:30]
    table = pl.DataFrame({"email": emails, "domain": [e.split("@")[1] for e in emails]})
    out = enrich(table, config_from_dict(steps.chain_config(demo_api.url, k, concurrency=4))).frame
    assert demo_api.state.calls == k * len(emails)
    column, value = LAST_FIELD[k]
    assert out[column].to_list() == [value(person_for(e)) for e in emails]


@pytest.mark.slow
def test_the_steps_bench_one_call_config_asks_what_the_chains_first_step_asks(demo_api: Any, demo_env: Any) -> None:
    steps = bench_module("steps")
    table = pl.DataFrame({"email": ["ada@acme.com", "alan@globex.io"], "domain": ["acme.com", "globex.io"]})
    one = enrich(table, config_from_dict(steps.one_call_config(demo_api.url, concurrency=2))).frame
    first = enrich(table, config_from_dict(steps.chain_config(demo_api.url, 1, concurrency=2))).frame
    assert one.select("email_1", "name").equals(first.select("email_1", "name"))
    assert demo_api.state.calls == 4
