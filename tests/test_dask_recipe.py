"""The Dask recipe of docs/python.md (`## On a Dask cluster`), run as a user would copy it: a script
starting a two-worker LocalCluster, reading a folder of Parquet files, enriching them under the
shared limit and journal of `job.yaml`, and writing a folder of Parquet files."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from aiohttp import web
from conftest import RunningServer, busiest_second, demo_child_env, demo_config, known_people, write_config

from enrich.demo_server import DemoSettings, create_app

pytestmark = pytest.mark.slow  # starts redis-server or a Dask cluster

ROOT = Path(__file__).resolve().parent.parent
DASK_SECTION = (
    (ROOT / "docs" / "python.md")
    .read_text(encoding="utf-8")
    .split("\n## On a Dask cluster\n", 1)[1]
    .split("\n## ", 1)[0]
)


def fenced(lang: str) -> list[str]:
    """The code blocks in ``lang`` of the Dask section, in order."""
    return [part.split("```", 1)[0] for part in DASK_SECTION.split("```" + lang + "\n")[1:]]


def test_the_documented_dask_script_runs_as_copied(
    tmp_path: Path, serve: Callable[[web.Application], RunningServer], redis_url: str
) -> None:
    script = fenced("python")[0]
    assert "LocalCluster(n_workers=2" in script and 'enrich.dask.enrich(people, "job.yaml")' in script
    # The config the docs show, pointed at this test's Redis and demo API.
    shown = fenced("yaml")[0]
    assert "shared:" in shown and "journal:" in shown
    server = serve(create_app(DemoSettings()))
    rows = 90
    emails = pl.read_csv(known_people(tmp_path, rows=rows))
    data = tmp_path / "data" / "people"
    data.mkdir(parents=True)
    for part in range(3):  # three files: three partitions
        emails.slice(part * 30, 30).write_parquet(data / f"part-{part}.parquet")
    write_config(
        tmp_path / "job.yaml",
        demo_config(
            server.url,
            rate_limit={"rate": "40/s", "burst": 2, "shared": redis_url, "key": "readme-dask"},
            journal=f"{redis_url}?prefix=people&ttl=30d",
        ),
    )
    (tmp_path / "run.py").write_text(script, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "run.py"], cwd=tmp_path, env=demo_child_env(), capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = pl.read_parquet(tmp_path / "out" / "people_enriched" / "*.parquet")
    assert out["email"].to_list() == emails["email"].to_list()  # every row, in order
    assert out["_http_status"].to_list() == [200] * rows
    assert out["name"].null_count() == 0
    assert server.state.calls == rows  # each row called once, across the workers
    assert busiest_second(server.state.call_times) <= 40 + 2 + 1
