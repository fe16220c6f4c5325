"""The benchmark's baseline must do the same work as enrich, or the comparison means nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from enrich import enrich
from enrich.config import config_from_dict

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
