"""The scheduling recipes of docs/operations.md and docs/sharding.md, run as a user would copy them: the Makefile target, the cron
line, the systemd service's command and the Airflow task's function, each against a real local
API (the demo server on 127.0.0.1) with the paths pointed at a temporary directory."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from conftest import RunningServer, demo_config, write_config

from enrich.demo_server import person_for

ROOT = Path(__file__).resolve().parent.parent
OPERATIONS = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
SCHEDULING = OPERATIONS.split("\n## Scheduling\n", 1)[1].split("\n## ", 1)[0]
SHARDING = (ROOT / "docs" / "sharding.md").read_text(encoding="utf-8")


def block(lang: str, contains: str) -> str:
    """The code block in ``lang`` of the Scheduling section that contains ``contains``."""
    blocks: list[tuple[str, list[str]]] = []
    current: list[str] | None = None
    for line in SCHEDULING.splitlines():
        if current is None and line.startswith("```"):
            current = []
            blocks.append((line[3:].strip(), current))
        elif current is not None and line.strip() == "```":
            current = None
        elif current is not None:
            current.append(line)
    for kind, lines in blocks:
        text = "\n".join(lines)
        if kind == lang and contains in text:
            return text
    raise AssertionError(f"no ```{lang} block with {contains!r} in the Scheduling section")


@pytest.fixture
def nightly(tmp_path: Path, demo_api: RunningServer, demo_env: dict[str, str]) -> Path:
    """A nightly.yaml in ``tmp_path`` whose rows all succeed against the demo API."""
    emails = [e for e in (f"user{i}@example.com" for i in range(40)) if person_for(e) is not None][:12]
    src = tmp_path / "leads.csv"
    src.write_text("email,domain\n" + "".join(f"{e},example.com\n" for e in emails), encoding="utf-8")
    cfg = demo_config(demo_api.url, input=str(src), output=str(tmp_path / "out" / "leads.parquet"))
    return write_config(tmp_path / "nightly.yaml", cfg)


def env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}", "PYTHON": sys.executable}


@pytest.mark.slow
def test_makefile_target(nightly: Path, tmp_path: Path) -> None:
    (command,) = [line for line in block("sh", "make enrich").splitlines() if line.startswith("make enrich")]
    command = command.replace("configs/demo.yaml", str(nightly)).replace("out/people.csv", str(tmp_path / "p.csv"))
    proc = subprocess.run(command, shell=True, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert pl.read_csv(tmp_path / "p.csv").height == 12
    assert json.loads((tmp_path / "p.csv.summary.json").read_text())["ok"] == 12


@pytest.mark.slow
def test_cron_line(nightly: Path, tmp_path: Path) -> None:
    (line,) = [ln for ln in block("", "0 2 * * *").splitlines() if ln.startswith("0 2 * * *")]
    command = line.split(" ", 5)[5]  # what cron hands to sh: the schedule's five fields removed
    command = command.replace("\\%", "%")  # cron's own unescaping of %
    log = tmp_path / "enrich.log"
    command = command.replace("/srv/enrich", str(ROOT)).replace("nightly.yaml", str(nightly))
    command = command.replace("/var/log/enrich.log", str(log))
    proc = subprocess.run(["sh", "-c", command], env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, log.read_text()
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert events[0]["event"] == "start" and events[-1]["event"] == "summary"
    assert events[-1]["ok"] == 12 and events[-1]["over_budget"] is False
    # The next night: everything is in the journal, nothing is paid for again.
    proc = subprocess.run(["sh", "-c", command], env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    last = json.loads(log.read_text().splitlines()[-1])
    assert (last["calls"], last["cached"]) == (0, 12)


@pytest.mark.slow
def test_systemd_service_command(nightly: Path) -> None:
    unit = block("ini", "ExecStart=")
    (exec_start,) = re.findall(r"^ExecStart=(.*)$", unit, re.M)
    (workdir,) = re.findall(r"^WorkingDirectory=(.*)$", unit, re.M)
    assert re.search(r"^OnCalendar=\*-\*-\* 02:00:00$", unit, re.M)
    command = exec_start.replace(workdir, str(ROOT)).replace("nightly.yaml", str(nightly))
    proc = subprocess.run(command.split(), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stderr.splitlines()[-1])["ok"] == 12


def test_airflow_task_function(nightly: Path) -> None:
    source = block("python", "def enrich_nightly")
    tree = ast.parse(source)
    (func,) = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "enrich_nightly"]
    namespace: dict[str, Any] = {}
    exec(compile(ast.Module(body=[func], type_ignores=[]), "docs/operations.md", "exec"), namespace)
    result = namespace["enrich_nightly"](str(nightly))
    assert (result["rows"], result["ok"], result["over_budget"]) == (12, 12, False)
    json.dumps(result)  # XCom needs JSON


@pytest.mark.slow
def test_airflow_mapped_shard_tasks(
    tmp_path: Path, demo_api: RunningServer, demo_env: dict[str, str], redis_url: str
) -> None:
    """The mapped-task DAG of docs/sharding.md: its `shard` and `merge` functions, taken out of their
    decorators, run for every index as Airflow would, with a shared limit, then merged."""
    source = SHARDING.split("```python\n", 1)[1].split("```", 1)[0]
    out = tmp_path / "out"
    emails = [e for e in (f"user{i}@example.com" for i in range(60)) if person_for(e) is not None][:24]
    src = tmp_path / "people.csv"
    src.write_text("email,domain\n" + "".join(f"{e},example.com\n" for e in emails), encoding="utf-8")
    cfg = demo_config(
        demo_api.url,
        input=str(src),
        output=str(out / "people.parquet"),
        rate_limit={"rate": "200/s", "shared": redis_url, "key": "airflow"},
    )
    write_config(tmp_path / "job.yaml", cfg)
    source = source.replace("/srv/enrich/job.yaml", str(tmp_path / "job.yaml")).replace("/srv/enrich/out", str(out))
    dag = next(
        n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "enrich_people_sharded"
    )
    inner = [n for n in dag.body if isinstance(n, ast.FunctionDef)]
    for fn in inner:
        fn.decorator_list = []
    namespace: dict[str, Any] = {"SHARDS": 8}
    exec(compile(ast.Module(body=inner, type_ignores=[]), "docs/sharding.md", "exec"), namespace)
    parts = [namespace["shard"](i) for i in range(8)]
    assert namespace["merge"](parts) == 24
    merged = pl.read_parquet(out / "people.parquet")
    assert merged["email"].to_list() == emails
    assert merged["_http_status"].to_list() == [200] * 24
    assert demo_api.state.calls == 24


def test_kubernetes_indexed_job_manifest() -> None:
    """The manifest of docs/sharding.md is valid YAML for an Indexed Job, and the command each pod runs
    parses as `enrich run` with the pod's shard."""
    import shlex

    import yaml

    from enrich.cli import build_parser

    manifest = yaml.safe_load(SHARDING.split("```yaml\n", 1)[1].split("```", 1)[0])
    spec = manifest["spec"]
    assert (manifest["kind"], spec["completionMode"], spec["completions"]) == ("Job", "Indexed", 8)
    (container,) = spec["template"]["spec"]["containers"]
    shell = container["command"][2].replace("$JOB_COMPLETION_INDEX", "3")
    args = build_parser().parse_args(shlex.split(shell)[1:])
    assert (args.command, args.shard, str(args.config)) == ("run", (3, 8), "/config/job.yaml")
