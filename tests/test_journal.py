"""The journal and durable runs: resume after a kill, dedup, incremental runs, extract, the lock, shards.

Every test drives enrich as a user does (``enrich run`` in a subprocess where a signal is
needed, ``cli.main`` in-process otherwise, ``enrich.enrich`` for the library) against a
real aiohttp server on 127.0.0.1 that counts the calls it gets per distinct request
(path and query). The journal is the real SQLite file, read back with ``sqlite3``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from aiohttp import web
from conftest import RunningServer, Serve, run_cli, summary_table, write_config
from polars.testing import assert_frame_equal

import enrich
from enrich.demo_server import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET

ROOT = Path(__file__).resolve().parent.parent
ENRICH = ROOT / ".venv" / "bin" / "enrich"
NEW = ["_http_status", "_error", "_attempts", "_latency_ms"]
FAST_RETRY = {"attempts": 2, "backoff": 0.01, "max_backoff": 0.02}

Answer = Callable[[web.Request, str], Awaitable[web.StreamResponse | None]]


# --- helpers -------------------------------------------------------------------------------


@dataclass
class Api:
    """A live items API and what it saw: each item call as (monotonic arrival, path with query)."""

    server: RunningServer
    calls: list[tuple[float, str]]
    logins: list[float]
    token: str
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    def n(self) -> int:
        return len(self.calls)

    def counts(self, since: int = 0) -> Counter[str]:
        """Calls per distinct request (path and query), from the ``since``-th call on."""
        return Counter(p for _, p in self.calls[since:])

    def paths(self, since: int = 0) -> list[str]:
        return [p for _, p in self.calls[since:]]


def items_api(serve: Serve, latency: float = 0.0, answer: Answer | None = None, token: str = "tok-7c1d9e") -> Api:
    """POST /auth/token (the demo credentials) and GET /v1/items/{id} -> {"id": id, "q": {query}}.

    Each item call is recorded on arrival; ``answer`` may replace the response for some ids.
    """
    api = Api(server=None, calls=[], logins=[], token=token)  # type: ignore[arg-type]

    async def login(request: web.Request) -> web.Response:
        body = await request.json()
        if body != {"client_id": DEFAULT_CLIENT_ID, "client_secret": DEFAULT_CLIENT_SECRET}:
            return web.json_response({"error": "invalid_client"}, status=401)
        api.logins.append(time.monotonic())
        return web.json_response({"access_token": token})

    async def item(request: web.Request) -> web.StreamResponse:
        query = request.query_string
        api.calls.append((time.monotonic(), request.path + (f"?{query}" if query else "")))
        if api.logins and request.headers.get("Authorization") != f"Bearer {token}":
            return web.json_response({"error": "invalid_token"}, status=401)
        if latency:
            await asyncio.sleep(latency)
        item_id = request.match_info["id"]
        if answer is not None and (response := await answer(request, item_id)) is not None:
            return response
        return web.json_response({"id": item_id, "q": dict(request.query)})

    app = web.Application()
    app.router.add_post("/auth/token", login)
    app.router.add_get("/v1/items/{id}", item)
    api.server = serve(app)
    return api


def items_config(api: Api, auth: bool = True, **overrides: Any) -> dict[str, Any]:
    """One GET per row to /v1/items/{{id}}, field ``got`` = the id the API echoes; login with the demo credentials."""
    config: dict[str, Any] = {
        "request": {"url": api.url + "/v1/items/{{id}}"},
        "fields": {"got": "id"},
        "concurrency": 4,
        "retry": dict(FAST_RETRY),
    }
    if auth:
        config["auth"] = {
            "url": api.url + "/auth/token",
            "body": {"client_id": "${DEMO_CLIENT_ID}", "client_secret": "${DEMO_CLIENT_SECRET}"},
            "token_path": "access_token",
        }
    config.update(overrides)
    return config


@dataclass
class Job:
    """A config, an input and an output on disk."""

    cfg: Path
    inp: Path
    out: Path

    @property
    def journal(self) -> Path:
        return self.out.with_name(self.out.name + ".journal")

    def argv(self, *extra: str, command: str = "run") -> list[str]:
        return [command, str(self.cfg), "--input", str(self.inp), "--output", str(self.out), *extra]


def make_job(
    tmp_path: Path, config: dict[str, Any], table: pl.DataFrame | None, out: str = "out.parquet", name: str = "in"
) -> Job:
    inp = tmp_path / f"{name}.csv"
    if table is not None:
        table.write_csv(inp)
    return Job(write_config(tmp_path / f"{name}.yaml", config), inp, tmp_path / out)


def ids(n: int, prefix: str = "r") -> pl.DataFrame:
    return pl.DataFrame({"id": [f"{prefix}{i:04d}" for i in range(n)]})


def journal_rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM calls").fetchone()[0])


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.002)


class Procs:
    """``enrich`` subprocesses (cwd = the project); any still running at teardown is killed by its pid."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.started: list[subprocess.Popen[str]] = []

    def start(self, argv: list[str]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [str(ENRICH), *argv],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # our signals go to enrich alone, never to pytest
        )
        self.started.append(proc)
        return proc

    def run(self, argv: list[str], timeout: float = 30) -> tuple[int, str]:
        proc = self.start(argv)
        _, err = proc.communicate(timeout=timeout)
        return proc.returncode, err


@pytest.fixture
def procs(demo_env: dict[str, str]) -> Iterator[Procs]:
    p = Procs({**os.environ, **demo_env})
    yield p
    for proc in p.started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def check_items_output(out: pl.DataFrame, table: pl.DataFrame) -> None:
    """Every input row, in input order, answered by the API."""
    assert out.columns == [*table.columns, "got", *NEW]
    assert_frame_equal(out.select(table.columns), table)
    assert out["got"].to_list() == table["id"].to_list()
    assert out["_http_status"].to_list() == [200] * table.height
    assert out["_error"].null_count() == table.height
    assert out["_attempts"].to_list() == [1] * table.height  # the API answers at once
    assert out.schema["_latency_ms"] == pl.Float64
    assert out["_latency_ms"].null_count() == 0 and out["_latency_ms"].min() >= 0  # type: ignore[operator]


def leftovers(directory: Path, output: Path) -> list[str]:
    """Files named after the output other than its journal and the (empty, hidden) lock files:
    the output itself, temp files, parts."""
    return sorted(
        p.name
        for p in directory.iterdir()
        if output.name in p.name
        and not p.name.startswith(output.name + ".journal")
        and not (p.name.startswith(".") and p.name.endswith(".lock"))
    )


# --- 1. resume after SIGKILL ------------------------------------------------------------------


@pytest.mark.slow
def test_resume_after_sigkill_repeats_only_the_calls_not_yet_committed(
    serve: Serve, tmp_path: Path, procs: Procs
) -> None:
    rows, latency, concurrency = 300, 0.02, 4
    api = items_api(serve, latency=latency)
    table = ids(rows)
    job = make_job(tmp_path, items_config(api, concurrency=concurrency), table)

    first = procs.start(job.argv("-q"))
    wait_until(lambda: api.n() >= 150 or first.poll() is not None, "150 calls")
    assert first.poll() is None, "the run finished before the kill; make it slower"
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    assert first.returncode == -signal.SIGKILL
    assert not job.out.exists()
    # No output, no temp file, no parts; the summary says the run is running (in a process now gone).
    assert leftovers(tmp_path, job.out) == [f"{job.out.name}.summary.json"]
    running = json.loads((tmp_path / f"{job.out.name}.summary.json").read_text())
    assert (running["status"], running["pid"]) == ("running", first.pid)
    assert job.journal.exists()

    rerun_started = time.monotonic()
    code, err = procs.run(job.argv())
    assert code == 0, err
    check_items_output(pl.read_parquet(job.out), table)

    before = [(t, p) for t, p in api.calls if t < rerun_started]
    counts = api.counts()
    assert set(counts) == {f"/v1/items/{i}" for i in table["id"]}
    assert max(counts.values()) <= 2
    repeated = sorted(p for p, c in counts.items() if c == 2)
    assert set(repeated) <= {p for _, p in before}

    # What a SIGKILL can lose: the calls in flight (at most `concurrency`; they never reached the
    # journal) and the calls whose answer came back during the journal's last commit (the writer
    # commits each finished call a moment later, so at most one more call per worker).
    bound = 2 * concurrency
    times = [t for t, _ in before]
    average = (len(times) - 1) / (times[-1] - times[0])
    print(
        f"\nSIGKILL after {len(before)} calls ({average:.0f} calls/s on average, {concurrency} in flight): "
        f"{len(repeated)} calls repeated by the rerun; bound {bound}"
    )
    assert len(repeated) <= bound, (len(repeated), bound)
    # and the rerun took the rest from the journal
    found = re.fullmatch(
        r"(\d+) made, 0 retries, 0 throttled \(429\); (\d+) rows? from the journal, 0 duplicates",
        summary_table(err, job.out)["calls"],
    )
    assert found, err
    assert int(found.group(1)) == rows - int(found.group(2))  # a call for every row the journal lacked
    cached = int(found.group(2))
    assert cached == len({p for _, p in before}) - len(repeated)
    assert cached >= len(before) - bound > 0


# --- 2. Ctrl-C and SIGTERM ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_saves_the_finished_calls_and_writes_no_output(
    serve: Serve, tmp_path: Path, procs: Procs, sig: signal.Signals
) -> None:
    rows, concurrency = 300, 4
    api = items_api(serve, latency=0.02)
    table = ids(rows)
    job = make_job(tmp_path, items_config(api, concurrency=concurrency), table)

    proc = procs.start(job.argv())
    wait_until(lambda: api.n() >= 60 or proc.poll() is not None, "60 calls")
    assert proc.poll() is None
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=10)

    assert proc.returncode == 130, err
    assert err.startswith("interrupted:"), err
    found = re.fullmatch(
        r"interrupted: ([\d,]+) finished calls are saved in the journal (\S+); run the same command again "
        r"to resume\. Nothing was written to (\S+)\.\n",
        err,
    )
    assert found, err
    saved = int(found.group(1).replace(",", ""))
    assert (found.group(2), found.group(3)) == (str(job.journal), str(job.out))
    assert not job.out.exists()
    assert leftovers(tmp_path, job.out) == [f"{job.out.name}.summary.json"]  # which says the run stopped
    stop = json.loads((tmp_path / f"{job.out.name}.summary.json").read_text())
    assert (stop["status"], stop["exit_code"], stop["error"]) == ("interrupted", 130, err.rstrip("\n"))
    assert journal_rows(job.journal) == saved  # what it says is saved is in the file

    rerun_started = time.monotonic()
    code, err = procs.run(job.argv())
    assert code == 0, err
    check_items_output(pl.read_parquet(job.out), table)
    called = sum(1 for t, _ in api.calls if t < rerun_started)
    assert called - concurrency <= saved <= called  # only the calls in flight were lost
    assert api.n() - called == rows - saved  # the rerun made only the missing calls
    repeated = [p for p, c in api.counts().items() if c > 1]
    assert len(repeated) <= concurrency


@pytest.mark.slow
@pytest.mark.parametrize("stops", [["SIGTERM"], ["SIGTERM", "SIGINT"]], ids=["SIGTERM", "SIGTERM+SIGINT"])
def test_a_stop_between_a_journal_write_and_its_commit_still_saves_every_finished_call(
    serve: Serve, tmp_path: Path, procs: Procs, stops: list[str]
) -> None:
    # A signal's Python handler runs once the C call in progress returns. Holding SQLite's write
    # lock from here makes the run's next commit wait inside its INSERT (SQLite's busy timeout; the
    # run's event loop is stuck there, so no call is sent meanwhile): the signals sent then are
    # handled after the INSERT and before the COMMIT, the worst moment for the journal. One SIGTERM
    # must stop the run as cleanly as Ctrl-C; a second stop (an impatient scheduler, Ctrl-C after
    # `kill`) breaks out at once, but must still leave a consistent journal.
    rows, concurrency = 300, 4
    api = items_api(serve, latency=0.02)
    table = ids(rows)
    job = make_job(tmp_path, items_config(api, concurrency=concurrency), table)

    proc = procs.start(job.argv())
    wait_until(lambda: api.n() >= 40 or proc.poll() is not None, "40 calls")
    assert proc.poll() is None
    blocker = sqlite3.connect(job.journal, isolation_level=None, timeout=5)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        wait_until(lambda: time.monotonic() - api.calls[-1][0] > 0.2, "the run to wait for the journal")
        for name in stops:
            proc.send_signal(signal.Signals[name])
        time.sleep(0.1)  # nothing to poll: the signals stay pending inside the run until the INSERT returns
        assert proc.poll() is None
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    _, err = proc.communicate(timeout=10)

    assert proc.returncode == 130, err
    pattern = r"interrupted: ([\d,]+) finished calls are saved in the journal \S+; run the same command again"
    found = re.fullmatch(pattern + r" .*\n", err) if len(stops) == 1 else re.match(pattern, err)
    assert found, err  # one SIGTERM: that line and nothing else (no traceback)
    saved = int(found.group(1).replace(",", ""))
    assert journal_rows(job.journal) == saved
    assert not job.out.exists()

    rerun_started = time.monotonic()
    code, err = procs.run(job.argv())
    assert code == 0, err
    check_items_output(pl.read_parquet(job.out), table)
    called = sum(1 for t, _ in api.calls if t < rerun_started)
    assert called - concurrency <= saved <= called
    assert api.n() - called == rows - saved
    assert len([p for p, c in api.counts().items() if c > 1]) <= concurrency


# --- 3. dedup -----------------------------------------------------------------------------------


def test_rows_with_the_same_request_make_one_call_and_all_get_the_answer(
    serve: Serve, demo_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api = items_api(serve)
    table = pl.DataFrame(
        {
            "n": list(range(9)),
            "email": ["a@x.io", "a@x.io", "b@x.io", "a@x.io", "a@x.io", "b@x.io", "a@x.io", "c@x.io", "a@x.io"],
            "domain": ["x.io", "x.io", "x.io", "y.io", "x.io", "x.io", "y.io", "x.io", "x.io"],
        }
    )
    config = items_config(
        api,
        request={"url": api.url + "/v1/items/{{email}}", "params": {"domain": "{{domain}}"}},
        fields={"got": "id", "dom": "q.domain"},
    )
    job = make_job(tmp_path, config, table)
    assert run_cli(job.argv()) == 0

    assert api.counts() == {
        "/v1/items/a@x.io?domain=x.io": 1,
        "/v1/items/a@x.io?domain=y.io": 1,
        "/v1/items/b@x.io?domain=x.io": 1,
        "/v1/items/c@x.io?domain=x.io": 1,
    }
    out = pl.read_parquet(job.out)
    assert out["n"].to_list() == [str(i) for i in range(9)]  # a CSV's columns come back as written: text
    assert out["got"].to_list() == table["email"].to_list()
    assert out["dom"].to_list() == table["domain"].to_list()
    assert out["_error"].null_count() == 9
    assert out["_attempts"].to_list() == [1] * 9  # a duplicate gets the attempts of the call it shared
    table_ = summary_table(capsys.readouterr().err, job.out)
    assert table_["rows"] == "9 ok, 0 failed, 0 skipped"
    assert table_["calls"] == "4 made, 0 retries, 0 throttled (429); 0 rows from the journal, 5 duplicates"
    assert table_["auth"] == "1 login, 0 token refreshes"


# --- 4. incremental runs ------------------------------------------------------------------------


def test_incremental_run_calls_only_new_and_changed_rows(
    serve: Serve, demo_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api = items_api(serve)
    config = items_config(
        api,
        request={"url": api.url + "/v1/items/{{id}}", "params": {"domain": "{{domain}}"}},
        fields={"got": "id", "dom": "q.domain"},
    )
    first = pl.DataFrame({"id": [f"p{i}" for i in range(20)], "domain": [f"d{i}.io" for i in range(20)]})
    job = make_job(tmp_path, config, first)
    assert run_cli(job.argv()) == 0
    assert api.n() == 20
    capsys.readouterr()

    second = pl.concat(
        [
            pl.DataFrame({"id": ["new-a"], "domain": ["a.io"]}),  # a new row first
            first.with_columns(
                pl.when(pl.col("id") == "p5").then(pl.lit("moved.io")).otherwise(pl.col("domain")).alias("domain")
            ),
            pl.DataFrame({"id": [f"new-{c}" for c in "bcde"], "domain": ["b.io", "c.io", "d.io", "e.io"]}),
        ]
    )
    second.write_csv(job.inp)
    assert run_cli(job.argv()) == 0

    assert sorted(api.paths(since=20)) == sorted(
        [
            "/v1/items/new-a?domain=a.io",
            "/v1/items/p5?domain=moved.io",
            *(f"/v1/items/new-{c}?domain={c}.io" for c in "bcde"),
        ]
    )
    out = pl.read_parquet(job.out)
    assert out.select("id", "domain").equals(second)
    assert out["got"].to_list() == second["id"].to_list()
    assert out["dom"].to_list() == second["domain"].to_list()
    assert out["_error"].null_count() == 25
    table_ = summary_table(capsys.readouterr().err, job.out)
    assert table_["rows"] == "25 ok, 0 failed, 0 skipped"
    assert table_["calls"] == "6 made, 0 retries, 0 throttled (429); 19 rows from the journal, 0 duplicates"
    assert table_["auth"] == "1 login, 0 token refreshes"


# --- 5. --fresh, --retry-failed, --refresh-older-than -------------------------------------------


def failing_first_api(serve: Serve) -> Api:
    """While ``state["phase"] == 1``: flaky* answer 503, slow* hang past the timeout, drop* close the
    connection. gone* are always 404. In phase 2 every id but gone* answers 200."""
    state = {"phase": 1}

    async def answer(request: web.Request, item_id: str) -> web.StreamResponse | None:
        if item_id.startswith("gone"):
            return web.json_response({"error": "not_found"}, status=404)
        if state["phase"] != 1:
            return None
        if item_id.startswith("flaky"):
            return web.json_response({"error": "overloaded"}, status=503)
        if item_id.startswith("slow"):
            await asyncio.sleep(0.5)
        if item_id.startswith("drop"):
            assert request.transport is not None
            request.transport.close()
            await asyncio.sleep(0.05)
        return None

    api = items_api(serve, answer=answer)
    api.state = state
    return api


@pytest.mark.slow
def test_fresh_and_retry_failed(serve: Serve, demo_env: dict[str, str], tmp_path: Path) -> None:
    api = failing_first_api(serve)
    table = pl.DataFrame({"id": ["ok0", "flaky0", "gone0", "slow0", "ok1", "drop0", "flaky1", "gone1", "ok2"]})
    job = make_job(tmp_path, items_config(api, timeout=0.2), table)
    assert run_cli(job.argv()) == 0
    out = {r["id"]: r for r in pl.read_parquet(job.out).iter_rows(named=True)}
    for i in ("flaky0", "flaky1"):
        assert (out[i]["_http_status"], out[i]["_error"][:8]) == (503, "HTTP 503")
    for i in ("gone0", "gone1"):
        assert (out[i]["_http_status"], out[i]["_error"][:8]) == (404, "HTTP 404")
    assert out["slow0"]["_error"].startswith("timed out after 0.2s")
    assert out["drop0"]["_error"].startswith("connection error")
    assert out["ok0"]["got"] == "ok0"
    # two attempts (FAST_RETRY) for what a retry may fix: the 5xx, the timeout, the dropped connection
    assert {i: r["_attempts"] for i, r in out.items()} == {
        **dict.fromkeys(("ok0", "ok1", "ok2", "gone0", "gone1"), 1),
        **dict.fromkeys(("flaky0", "flaky1", "slow0", "drop0"), 2),
    }
    assert all(r["_latency_ms"] is not None and r["_latency_ms"] >= 0 for r in out.values())

    api.state["phase"] = 2
    seen = api.n()
    assert run_cli(job.argv("--retry-failed")) == 0
    # one call each (they succeed now): the 5xx, the timeout and the dropped connection; not the 404s
    assert sorted(api.paths(since=seen)) == [f"/v1/items/{i}" for i in ("drop0", "flaky0", "flaky1", "slow0")]
    out_df = pl.read_parquet(job.out)
    assert out_df["id"].to_list() == table["id"].to_list()
    by_id = {r["id"]: r for r in out_df.iter_rows(named=True)}
    for i in ("ok0", "ok1", "ok2", "flaky0", "flaky1", "slow0", "drop0"):
        assert (by_id[i]["got"], by_id[i]["_http_status"], by_id[i]["_error"]) == (i, 200, None)
    assert out_df["_attempts"].to_list() == [1] * 9  # the retried rows' new calls took one attempt each
    for i in ("gone0", "gone1"):
        assert by_id[i]["_http_status"] == 404

    seen = api.n()
    assert run_cli(job.argv("--retry-failed")) == 0
    assert api.n() == seen  # nothing left that a retry could fix
    assert run_cli(job.argv()) == 0
    assert api.n() == seen  # a plain rerun: everything from the journal

    assert run_cli(job.argv("--fresh")) == 0
    assert api.counts(since=seen) == {f"/v1/items/{i}": 1 for i in table["id"]}  # every row, once
    fresh = pl.read_parquet(job.out)
    assert fresh.drop("_latency_ms").equals(out_df.drop("_latency_ms"))  # new calls: new latencies
    assert fresh["_latency_ms"].null_count() == 0 and fresh["_latency_ms"].min() >= 0  # type: ignore[operator]


def test_refresh_older_than(serve: Serve, demo_env: dict[str, str], tmp_path: Path) -> None:
    api = items_api(serve)
    table = ids(10)
    job = make_job(tmp_path, items_config(api), table)
    assert run_cli(job.argv()) == 0
    assert api.n() == 10

    with sqlite3.connect(job.journal) as conn:  # eight days pass
        conn.execute("UPDATE calls SET at = at - 86400 * 8")
    conn.close()

    assert run_cli(job.argv("--refresh-older-than", "30d")) == 0
    assert api.n() == 10  # 8 days old is younger than 30 days: kept
    assert run_cli(job.argv("--refresh-older-than", "7d")) == 0
    assert api.counts(since=10) == {f"/v1/items/{i}": 1 for i in table["id"]}
    with sqlite3.connect(job.journal) as conn:
        oldest = conn.execute("SELECT min(at) FROM calls").fetchone()[0]
    conn.close()
    assert oldest > time.time() - 60  # the entries were renewed
    assert run_cli(job.argv("--refresh-older-than", "7d")) == 0
    assert api.n() == 20
    check_items_output(pl.read_parquet(job.out), table)


# --- 6. extract ---------------------------------------------------------------------------------


def test_extract_rebuilds_new_fields_from_the_journal_with_no_call(
    serve: Serve, demo_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api = items_api(serve)
    table = pl.DataFrame({"id": ["a1", "b2", "c3", "a1"], "domain": ["x.io", "y.io", None, "x.io"]})
    request = {"url": api.url + "/v1/items/{{id}}", "params": {"domain": "{{domain}}"}}
    job = make_job(tmp_path, items_config(api, request=request), table)
    assert run_cli(job.argv()) == 0
    assert (api.n(), len(api.logins)) == (3, 1)
    ran = pl.read_parquet(job.out)
    assert ran.columns == ["id", "domain", "got", *NEW]
    capsys.readouterr()

    write_config(job.cfg, items_config(api, request=request, fields={"got": "id", "dom": "q.domain", "q": "q"}))
    assert run_cli(job.argv(command="extract")) == 0
    assert (api.n(), len(api.logins)) == (3, 1)  # not a call, not a login
    out = pl.read_parquet(job.out)
    assert out.columns == ["id", "domain", "got", "dom", "q", *NEW]
    assert out["got"].to_list() == ["a1", "b2", "c3", "a1"]
    assert out["dom"].to_list() == ["x.io", "y.io", None, "x.io"]
    assert out["q"].to_list() == ['{"domain":"x.io"}', '{"domain":"y.io"}', "{}", '{"domain":"x.io"}']
    assert out["_attempts"].to_list() == [1] * 4
    assert out.select(NEW).equals(ran.select(NEW))  # status, error, attempts and latency from the journal
    err = capsys.readouterr().err
    assert re.fullmatch(
        rf"extracted 4 rows from {re.escape(str(job.journal))} in \d+\.\ds: 4 ok, 0 failed, 0 skipped; "
        rf"no calls -> {re.escape(str(job.out))}\n",
        err,
    ), err


def test_a_journal_from_before_extracted_values_still_resumes_and_extracts(
    serve: Serve, demo_env: dict[str, str], tmp_path: Path
) -> None:
    # Journals written before the `fields_key` and `extracted` columns existed hold only bodies:
    # opening one adds the columns, its calls are not made again, and fields come from the bodies.
    api = items_api(serve)
    job = make_job(tmp_path, items_config(api), ids(5))
    assert run_cli(job.argv()) == 0
    assert api.n() == 5
    with sqlite3.connect(job.journal) as conn:  # make it an old journal: drop the two columns
        conn.execute("ALTER TABLE calls DROP COLUMN extracted")
        conn.execute("ALTER TABLE calls DROP COLUMN fields_key")
    job.out.unlink()
    assert run_cli(job.argv()) == 0
    assert api.n() == 5  # every call came from the old journal
    assert pl.read_parquet(job.out)["got"].to_list() == [f"r{i:04d}" for i in range(5)]


@pytest.mark.slow  # waits on purpose (a call past its timeout)
def test_a_journal_from_before_kinds_were_stored_counts_its_failures_by_kind(
    serve: Serve, demo_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Journals written before each entry kept why it failed (the `kind` column): opening one adds the
    # column, a dry run reads it as it is, and its failures are counted as they were when written.
    api = failing_first_api(serve)
    table = pl.DataFrame({"id": ["ok0", "flaky0", "gone0", "slow0", "drop0", "gone1"]})
    job = make_job(tmp_path, items_config(api, timeout=0.2), table)
    assert run_cli(job.argv("-q")) == 0
    failures = {"HTTP 404": 2, "HTTP 503": 1, "timeout": 1, "connection error": 1}
    summary = json.loads(job.out.with_name(job.out.name + ".summary.json").read_text())
    assert summary["failures"] == failures
    with sqlite3.connect(job.journal) as conn:  # make it an old journal: drop the column
        conn.execute("ALTER TABLE calls DROP COLUMN kind")
    pl.concat([table, pl.DataFrame({"id": ["new0"]})]).write_csv(job.inp)  # and a row never called
    calls = api.n()
    capsys.readouterr()
    assert run_cli(job.argv("--dry-run", command="run")) == 0
    assert run_cli(job.argv(command="extract")) == 0
    assert api.n() == calls
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(
        "extracted 7 rows from "
    ) and ": 1 ok, 6 failed (HTTP 404: 2, HTTP 503: 1, timeout: 1, connection error: 1, not called: 1), 0 skipped" in (
        err
    ), err


@pytest.mark.parametrize("how", ["no journal file", "journal: false"])
def test_extract_without_a_journal_exits_2(
    serve: Serve, demo_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    api = items_api(serve)
    overrides = {"journal": False} if how == "journal: false" else {}
    job = make_job(tmp_path, items_config(api, **overrides), ids(3))
    assert run_cli(job.argv(command="extract")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "nothing to extract from" in err and "--journal" in err
    if how == "journal: false":
        assert err.startswith(f"error: {job.cfg}: `journal: false` keeps no journal, so there is nothing"), err
    else:
        assert err.startswith(f"error: no journal at {job.journal}: there is nothing to extract from."), err
        assert "Run `enrich run` first" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "in.yaml"]  # no journal made, no output
    assert api.n() == 0 and api.logins == []


def test_journal_flag_overrides_journal_false(serve: Serve, demo_env: dict[str, str], tmp_path: Path) -> None:
    # The README: "journal: ... false keeps none; --journal overrides".
    api = items_api(serve)
    job = make_job(tmp_path, items_config(api, journal=False), ids(3))
    kept = tmp_path / "kept.journal"
    assert run_cli(job.argv("--journal", str(kept))) == 0
    assert api.n() == 3 and journal_rows(kept) == 3
    assert run_cli(job.argv("--journal", str(kept))) == 0
    assert api.n() == 3  # resumed from it
    write_config(job.cfg, items_config(api, journal=False, fields={"got": "id", "q": "q"}))
    assert run_cli(job.argv("--journal", str(kept), command="extract")) == 0
    assert api.n() == 3
    assert pl.read_parquet(job.out).columns == ["id", "got", "q", *NEW]
    assert run_cli(job.argv("--journal", str(kept), "--no-journal")) == 0  # --no-journal wins over both
    assert api.n() == 6


# --- 7. the lock ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_journal_in_use_stops_a_second_run_before_any_call(
    serve: Serve, tmp_path: Path, procs: Procs, capsys: pytest.CaptureFixture[str]
) -> None:
    api = items_api(serve, latency=0.05)
    first = make_job(tmp_path, items_config(api, concurrency=2), ids(40, "a"))
    second = make_job(tmp_path, items_config(api, concurrency=2), ids(5, "b"), out="second.parquet", name="second")
    shared = ["--journal", str(first.journal)]

    proc = procs.start(first.argv("-q"))
    wait_until(lambda: api.n() >= 1 or proc.poll() is not None, "the first run's first call")
    assert run_cli(second.argv(*shared)) == 3
    assert proc.poll() is None  # the first run was still going: the lock was really held
    err = capsys.readouterr().err
    assert err == (
        f"error: the journal {first.journal} is in use by another run. Wait for that run to finish "
        "(or stop it), or give this one its own journal with --journal PATH.\n"
    )
    assert not second.out.exists()

    _, first_err = proc.communicate(timeout=30)
    assert proc.returncode == 0, first_err
    assert not any("/b" in p for p in api.paths())  # the refused run called nothing
    assert len(api.logins) == 1  # and did not even log in
    check_items_output(pl.read_parquet(first.out), ids(40, "a"))

    assert run_cli(second.argv(*shared)) == 0
    check_items_output(pl.read_parquet(second.out), ids(5, "b"))
    assert sorted(p for p in api.paths() if "/b" in p) == [f"/v1/items/b{i:04d}" for i in range(5)]
    assert journal_rows(first.journal) == 45


# --- 8. input edge cases --------------------------------------------------------------------------


def echo_config(api: Api) -> dict[str, Any]:
    return items_config(
        api,
        request={"url": api.url + "/v1/items/{{id}}", "params": {"note": "{{note}}"}},
        fields={"got": "id", "back": "q.note"},
    )


def test_csv_with_a_bom_keeps_the_first_column_name(serve: Serve, demo_env: dict[str, str], tmp_path: Path) -> None:
    api = items_api(serve)
    job = make_job(tmp_path, echo_config(api), None, out="out.csv")
    job.inp.write_bytes("\ufeffid,note\n1,één\n2,two\n".encode())
    assert run_cli(job.argv()) == 0
    out = pl.read_csv(job.out, infer_schema_length=0)
    assert out.columns == ["id", "note", "got", "back", *NEW]
    assert out.select("id", "note", "got", "back").rows() == [("1", "één", "1", "één"), ("2", "two", "2", "two")]
    assert not job.out.read_bytes().startswith(b"\xef\xbb\xbf")


def test_csv_quoted_fields_with_newlines_and_commas(serve: Serve, demo_env: dict[str, str], tmp_path: Path) -> None:
    api = items_api(serve)
    job = make_job(tmp_path, echo_config(api), None, out="out.csv")
    notes = ["hello, world", "line one\nline two", 'say "hi", then\r\ngo', "plain"]
    job.inp.write_text(
        "id,note\n" + "".join(f'{i},"{n.replace(chr(34), chr(34) * 2)}"\n' for i, n in enumerate(notes)),
        encoding="utf-8",
        newline="",
    )
    assert run_cli(job.argv()) == 0
    out = pl.read_csv(job.out, infer_schema_length=0)
    assert out.height == 4
    assert out["note"].to_list() == notes
    assert out["back"].to_list() == notes  # the API got each value whole
    assert out["got"].to_list() == ["0", "1", "2", "3"]
    assert api.n() == 4


def test_empty_csv_exits_2(
    serve: Serve, demo_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api = items_api(serve)
    job = make_job(tmp_path, items_config(api), None)
    job.inp.write_bytes(b"")
    assert run_cli(job.argv()) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: input file {job.inp} is empty") and err.count("\n") == 1, err
    assert api.n() == 0 and api.logins == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "in.yaml"]


def test_header_only_csv_gives_an_empty_table_with_the_new_columns_and_no_login(
    serve: Serve, demo_env: dict[str, str], tmp_path: Path
) -> None:
    api = items_api(serve)
    job = make_job(tmp_path, items_config(api), None)
    job.inp.write_text("id,name\n", encoding="utf-8")
    assert run_cli(job.argv()) == 0
    out = pl.read_parquet(job.out)
    assert out.height == 0
    assert out.columns == ["id", "name", "got", *NEW]
    assert api.n() == 0 and api.logins == []
    assert not job.journal.exists()  # a run that made no call leaves no empty journal


def typed_api(serve: Serve, first: int) -> Api:
    """/v1/items/{k}: k < first -> v null, w int; k >= first -> v int, w float."""

    async def answer(request: web.Request, item_id: str) -> web.Response:
        k = int(item_id)
        if k < first:
            return web.json_response({"k": k, "v": None, "w": k})
        return web.json_response({"k": k, "v": k * 100, "w": k + 0.5})

    return items_api(serve, answer=answer)


@pytest.mark.slow
def test_a_table_larger_than_one_batch_keeps_order_and_settles_types_across_batches(
    serve: Serve, demo_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `run` reads the input in batches of enrich.tables.BATCH_ROWS (20,000; bound as iter_batches'
    # default argument, so a monkeypatch would not reach it): 25,000 rows make two batches. The rows
    # share 20 distinct requests, so the server answers 20 calls, not 25,000.
    from enrich.tables import BATCH_ROWS

    rows = BATCH_ROWS + 5_000
    k = [i % 10 if i < BATCH_ROWS else 10 + i % 10 for i in range(rows)]
    table = pl.DataFrame({"row": range(rows), "k": k})
    api = typed_api(serve, first=10)
    config = items_config(api, request={"url": api.url + "/v1/items/{{k}}"}, fields={"kk": "k", "v": "v", "w": "w"})
    job = make_job(tmp_path, config, table)
    assert run_cli(job.argv()) == 0

    assert api.counts() == {f"/v1/items/{i}": 1 for i in range(20)}
    out = pl.read_parquet(job.out)
    assert out["row"].to_list() == [str(i) for i in range(rows)]  # an input column, as written in the CSV
    assert out["kk"].to_list() == k
    assert out.schema["kk"] == pl.Int64
    assert out.schema["v"] == pl.Int64  # null in the whole first batch, an int in the second
    assert out["v"].head(BATCH_ROWS).null_count() == BATCH_ROWS
    assert out["v"].tail(5_000).to_list() == [x * 100 for x in k[BATCH_ROWS:]]
    assert out.schema["w"] == pl.Float64  # int in the first batch, float in the second
    assert out["w"].to_list() == [x if x < 10 else x + 0.5 for x in k]
    table_ = summary_table(capsys.readouterr().err, job.out)
    assert table_["rows"] == f"{rows} ok, 0 failed, 0 skipped"
    assert table_["calls"] == (
        f"20 made, 0 retries, 0 throttled (429); 0 rows from the journal, {rows - 20} duplicates"
    )


def test_library_batches_settle_types_and_share_calls_across_batches(
    serve: Serve, demo_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The library reads BATCH_ROWS when called: 3-row batches over 12 rows.
    monkeypatch.setattr("enrich.tables.BATCH_ROWS", 3)
    api = typed_api(serve, first=3)
    df = pl.DataFrame({"row": range(12), "k": [0, 1, 2, 0, 3, 4, 5, 1, 3, 6, 7, 0]})
    config = items_config(api, request={"url": api.url + "/v1/items/{{k}}"}, fields={"v": "v", "w": "w"})
    result = enrich.enrich(df, config)
    assert api.counts() == {f"/v1/items/{i}": 1 for i in range(8)}
    frame = result.frame
    assert frame["row"].to_list() == list(range(12))
    assert frame.schema["v"] == pl.Int64 and frame.schema["w"] == pl.Float64
    assert frame["v"].to_list() == [None if k < 3 else k * 100 for k in df["k"]]
    s = result.summary
    assert (s.rows, s.ok, s.calls) == (12, 12, 8)
    assert (s.cached, s.deduped) == (0, 4)  # no earlier run: the 4 repeats shared this run's calls


def test_a_repeat_in_a_later_batch_is_a_duplicate_not_a_journal_hit(
    serve: Serve, demo_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # One worker and 1-row batches: by the time the last row (k=0 again) is read, the first call has
    # long finished, so the row is answered from this run's own entry in the journal. That is a
    # duplicate (Summary.deduped: "rows that shared another row's request in this run"), not a row
    # "answered from the journal of an earlier run" (Summary.cached): there was no earlier run.
    monkeypatch.setattr("enrich.tables.BATCH_ROWS", 1)
    api = items_api(serve, latency=0.005)
    df = pl.DataFrame({"k": [*range(10), 0]})
    config = items_config(api, request={"url": api.url + "/v1/items/{{k}}"}, concurrency=1)
    result = enrich.enrich(df, config)
    assert api.counts() == {f"/v1/items/{i}": 1 for i in range(10)}
    assert result.frame["got"].to_list() == [str(k) for k in df["k"]]
    assert (result.summary.calls, result.summary.cached, result.summary.deduped) == (10, 0, 1)


# --- 9. shards --------------------------------------------------------------------------------------


def test_three_shards_call_each_request_once_and_merge_in_input_order(
    serve: Serve, demo_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api = items_api(serve)
    id_list: list[str | None] = [f"s{i % 25:02d}" for i in range(30)]  # 25 distinct, 5 repeated
    id_list[7] = None  # a row with no request (blank path cell) still lands in one shard
    table = pl.DataFrame({"n": range(30), "id": id_list})
    out = tmp_path / "out.csv"
    job = make_job(tmp_path, items_config(api, input=str(tmp_path / "in.csv"), output=str(out)), table)

    for i in range(3):
        assert run_cli(["run", str(job.cfg), "--shard", f"{i}/3", "-q"]) == 0
    parts = [tmp_path / f"out.shard-{i}-of-3.csv" for i in range(3)]
    assert all(p.exists() for p in parts) and not out.exists()
    assert all(p.with_name(p.name + ".journal").exists() for p in parts)

    distinct = {f"/v1/items/{i}" for i in id_list if i is not None}
    assert api.counts() == dict.fromkeys(distinct, 1)  # every request once across the three shards
    shard_rows = [pl.read_csv(p)["_row"].to_list() for p in parts]
    assert sorted(r for rows in shard_rows for r in rows) == list(range(30))
    assert all(rows == sorted(rows) and rows for rows in shard_rows)

    merged = tmp_path / "merged.csv"
    assert run_cli(["merge", *map(str, parts), "--output", str(merged)]) == 0
    assert capsys.readouterr().err == f"merged 3 shard outputs, 30 rows -> {merged}\n"
    result = pl.read_csv(merged)
    assert result.columns == ["n", "id", "got", *NEW]
    assert result["n"].to_list() == list(range(30))
    assert result["id"].to_list() == id_list
    assert result["got"].to_list() == id_list
    assert result["_error"].is_null().to_list() == [i is not None for i in id_list]


def test_shards_by_key_columns_split_rows_by_their_key_not_their_request(
    serve: Serve, demo_env: dict[str, str], tmp_path: Path
) -> None:
    # `key: [n]`: rows are split by the key's value, so two rows with the same request but
    # different keys may land in different shards; every row is still in exactly one shard.
    api = items_api(serve)
    table = pl.DataFrame({"n": range(40), "id": [f"s{i % 10}" for i in range(40)]})
    out = tmp_path / "out.csv"
    job = make_job(tmp_path, items_config(api, input=str(tmp_path / "in.csv"), output=str(out), key=["n"]), table)
    for i in range(4):
        assert run_cli(["run", str(job.cfg), "--shard", f"{i}/4", "-q"]) == 0
    shard_rows = [set(pl.read_csv(tmp_path / f"out.shard-{i}-of-4.csv")["n"].to_list()) for i in range(4)]
    assert sorted(n for rows in shard_rows for n in rows) == list(range(40))  # each row in exactly one shard
    assert all(rows for rows in shard_rows)
    spread = [sum(1 for rows in shard_rows if f"s{k}" in {f"s{n % 10}" for n in rows}) for k in range(10)]
    assert max(spread) > 1  # some request is in more than one shard: the key decides, not the request


def test_a_shard_index_out_of_range_exits_2(
    serve: Serve, demo_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api = items_api(serve)
    job = make_job(tmp_path, items_config(api), ids(3))
    assert run_cli(job.argv("--shard", "3/3")) == 2
    assert "expected I/N with 0 <= I < N (shards count from 0), got '3/3'" in capsys.readouterr().err
    assert api.n() == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "in.yaml"]


def _part(i: int, n: int = 3) -> str:
    return f"out/people.shard-{i}-of-{n}.parquet"


# The parts of a 9-row input split in 3: each file's input row numbers (`_row`).
EVERY_SHARD: dict[str, list[int]] = {_part(0): [0, 3, 6], _part(1): [1, 4, 7], _part(2): [2, 5, 8]}


@pytest.mark.parametrize(
    ("files", "given", "error"),
    [
        # Every shard, given in any order: the rows come back in input order, exit 0.
        pytest.param(EVERY_SHARD, [_part(2), _part(0), _part(1)], None, id="every-shard-in-any-order"),
        # CSV parts, one with no rows (its _row is read as text): still sorted as numbers.
        pytest.param(
            {
                "out/people.shard-0-of-3.csv": [2, 10],
                "out/people.shard-1-of-3.csv": [0, 1, 3, 4, 5, 6, 7, 8, 9, 11],
                "out/people.shard-2-of-3.csv": [],
            },
            ["out/people.shard-0-of-3.csv", "out/people.shard-1-of-3.csv", "out/people.shard-2-of-3.csv"],
            None,
            id="csv-parts-one-empty",
        ),
        # The reported bug: shards 0 and 2 of 3 merged into 6 of 9 rows, exit 0.
        pytest.param(
            EVERY_SHARD,
            [_part(0), _part(2)],
            f"error: shard 1 of 3 is missing ({_part(1)}): run it (enrich run CONFIG --shard 1/3), then merge all 3.",
            id="a-missing-shard",
        ),
        # Two shards missing: both named, with the files expected.
        pytest.param(
            EVERY_SHARD,
            [_part(1)],
            f"error: shards 0 and 2 of 3 are missing ({_part(0)} and {_part(2)}): run them "
            "(enrich run CONFIG --shard I/3 for each), then merge all 3.",
            id="two-missing-shards",
        ),
        # The reported bug: shard 0 given twice put its rows in the output twice, exit 0.
        pytest.param(
            EVERY_SHARD,
            [_part(0), _part(0), _part(1), _part(2)],
            f"error: shard 0 of 3 is given twice ({_part(0)} and {_part(0)}): its rows would be in the output "
            "twice. Give each shard once, all 3 of them.",
            id="a-repeated-shard",
        ),
        # A part of a run split in 4 among the parts of a run split in 3.
        pytest.param(
            {**EVERY_SHARD, _part(1, 4): [1, 5]},
            [_part(0), _part(1, 4), _part(1), _part(2)],
            f"error: {_part(0)} is shard 0 of 3 but {_part(1, 4)} is shard 1 of 4: the parts come from runs split "
            "in different ways. Merge the shards of one split, all of them "
            "(enrich run CONFIG --shard I/N with the same N each time).",
            id="different-shard-counts",
        ),
        # A renamed part: which shard it is cannot be told, so neither can a missing one.
        pytest.param(
            {**EVERY_SHARD, "out/people-1.parquet": [1, 4, 7]},
            [_part(0), "out/people-1.parquet", _part(2)],
            "error: out/people-1.parquet: enrich cannot tell which shard this is: its name has no `.shard-I-of-N` "
            "before the suffix (as in people-1.shard-0-of-4.parquet). Keep the names `enrich run --shard I/N` "
            "gives its outputs, and merge those files.",
            id="a-name-without-shard-marker",
        ),
        # Shard 1 from another run (another input): it holds row 6, which shard 0 holds too.
        pytest.param(
            {**EVERY_SHARD, _part(1): [1, 4, 6]},
            [_part(0), _part(1), _part(2)],
            f"error: _row 6 is in both {_part(0)} and {_part(1)}: each input row is in one shard of a run, so a part "
            "comes from another run (or another input). Run the shards again with one config and input, "
            "then merge them.",
            id="a-repeated-row",
        ),
        # Shard 1 cut short: row 7 is in no part.
        pytest.param(
            {**EVERY_SHARD, _part(1): [1, 4]},
            [_part(0), _part(1), _part(2)],
            "error: 1 input row is in no part (_row 7; the parts hold 8 rows up to _row 8), though every shard is "
            "given: a part is cut short or comes from another run. Run the shards again (their journals keep the "
            "calls made), then merge them.",
            id="a-gap-in-rows",
        ),
    ],
)
def test_merge_takes_every_shard_once_and_every_row_once(
    files: dict[str, list[int]],
    given: list[str],
    error: str | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    for name, rows in files.items():
        part = pl.DataFrame({"v": [f"row {r}" for r in rows], "_row": pl.Series(rows, dtype=pl.Int64)})
        if name.endswith(".csv"):
            part.write_csv(name)
        else:
            part.write_parquet(name)
    output = "out/people" + Path(given[0]).suffix

    code = run_cli(["merge", *given, "--output", output])

    err = capsys.readouterr().err
    if error is not None:
        assert (code, err) == (2, error + "\n")
        assert not (tmp_path / output).exists()
        return
    rows = sum(len(files[name]) for name in given)
    assert (code, err) == (0, f"merged {len(given)} shard outputs, {rows} rows -> {output}\n")
    merged = pl.read_parquet(output) if output.endswith(".parquet") else pl.read_csv(output)
    assert merged.columns == ["v"]
    assert merged["v"].to_list() == [f"row {r}" for r in range(rows)]


@pytest.mark.parametrize(
    ("given", "error"),
    [
        # All three, shuffled: the merged table is the input, in its order.
        pytest.param([2, 0, 1], None, id="every-shard"),
        # Shard 1 left out.
        pytest.param(
            [0, 2],
            "error: shard 1 of 3 is missing (out.shard-1-of-3.csv): run it (enrich run CONFIG --shard 1/3), "
            "then merge all 3.",
            id="a-missing-shard",
        ),
        # Shard 0 given twice, the third given too.
        pytest.param(
            [0, 1, 0, 2],
            "error: shard 0 of 3 is given twice (out.shard-0-of-3.csv and out.shard-0-of-3.csv): its rows would be "
            "in the output twice. Give each shard once, all 3 of them.",
            id="a-repeated-shard",
        ),
    ],
)
def test_merge_checks_the_outputs_of_real_shard_runs(
    given: list[int],
    error: str | None,
    serve: Serve,
    demo_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    api = items_api(serve)
    table = pl.DataFrame({"n": range(30), "id": [f"s{i % 25:02d}" for i in range(30)]})
    job = make_job(tmp_path, items_config(api, input=str(tmp_path / "in.csv"), output=str(tmp_path / "out.csv")), table)
    for i in range(3):
        assert run_cli(["run", str(job.cfg), "--shard", f"{i}/3", "-q"]) == 0
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()

    code = run_cli(["merge", *(f"out.shard-{i}-of-3.csv" for i in given), "--output", "merged.csv"])

    err = capsys.readouterr().err
    if error is not None:
        assert (code, err) == (2, error + "\n")
        assert not (tmp_path / "merged.csv").exists()
        return
    assert (code, err) == (0, "merged 3 shard outputs, 30 rows -> merged.csv\n")
    assert pl.read_csv(tmp_path / "merged.csv")["n"].to_list() == list(range(30))


# --- 10. no journal ---------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["journal: false", "--no-journal"])
def test_without_a_journal_nothing_is_kept_and_a_rerun_calls_everything(
    serve: Serve, demo_env: dict[str, str], tmp_path: Path, how: str
) -> None:
    api = items_api(serve)
    table = pl.DataFrame({"id": ["a", "b", "a", "c"]})
    config = items_config(api, journal=False) if how == "journal: false" else items_config(api)
    job = make_job(tmp_path, config, table)
    extra = ["--no-journal"] if how == "--no-journal" else []
    for run in (1, 2):
        assert run_cli(job.argv(*extra)) == 0
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "in.csv",
            "in.yaml",
            "out.parquet",
            "out.parquet.summary.json",
        ]
        assert api.counts() == {f"/v1/items/{i}": run for i in "abc"}  # deduped within a run, never across
        assert pl.read_parquet(job.out)["got"].to_list() == ["a", "b", "a", "c"]


# --- 11. no secret in the journal -----------------------------------------------------------------


def test_the_journal_holds_no_token_and_no_secret(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = {
        "DEMO_CLIENT_ID": DEFAULT_CLIENT_ID,
        "DEMO_CLIENT_SECRET": DEFAULT_CLIENT_SECRET,
        "ITEMS_API_KEY": "key-Q9v2Lm4Xw8Rt",
        "ITEMS_SIG": "sig-Hh3Jk5Pp0Zz",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)

    async def answer(request: web.Request, item_id: str) -> web.Response:
        # Error bodies that echo every credential they got; 200 bodies that do not.
        echo = f"auth={request.headers.get('Authorization')} key={request.headers.get('X-Api-Key')} q={request.query_string}"
        if item_id.startswith("boom"):
            return web.Response(status=500, text=echo)
        if item_id.startswith("deny"):
            return web.json_response({"error": "forbidden", "detail": echo}, status=403)
        return web.json_response({"id": item_id})

    token = "tok-Vb7Nc1Mx5Zq3Ws9Ed"
    api = items_api(serve, answer=answer, token=token)
    config = items_config(
        api,
        request={
            "url": api.url + "/v1/items/{{id}}",
            "headers": {"X-Api-Key": "${ITEMS_API_KEY}"},
            "params": {"sig": "${ITEMS_SIG}"},
        },
    )
    table = pl.DataFrame({"id": ["ok1", "boom1", "deny1", "ok2", "boom2"]})
    job = make_job(tmp_path, config, table)
    assert run_cli(job.argv("-q")) == 0

    out = pl.read_parquet(job.out)
    assert out["_http_status"].to_list() == [200, 500, 403, 200, 500]
    files = [p for p in tmp_path.iterdir() if p.name.startswith(job.journal.name)]
    assert job.journal in files
    stored = b"".join(p.read_bytes() for p in files)
    assert b"HTTP 500" in stored and b"HTTP 403" in stored  # the errors are there, masked
    for needle in (token, secrets["DEMO_CLIENT_SECRET"], secrets["ITEMS_API_KEY"], secrets["ITEMS_SIG"]):
        assert needle.encode() not in stored, needle
    with sqlite3.connect(job.journal) as conn:
        text = " ".join(
            str(v) for row in conn.execute("SELECT status, error, body FROM calls") for v in row if v is not None
        )
    conn.close()
    assert "auth=Bearer ***" in text and "key=***" in text
    for needle in (token, secrets["DEMO_CLIENT_SECRET"], secrets["ITEMS_API_KEY"], secrets["ITEMS_SIG"]):
        assert needle not in text


# --- 12. the library --------------------------------------------------------------------------------


def test_library_with_a_journal_makes_no_call_the_second_time(
    serve: Serve, demo_env: dict[str, str], tmp_path: Path
) -> None:
    api = items_api(serve)
    df = pl.DataFrame({"id": ["x1", "x2", "x3", "x1", "x4"], "n": range(5)})
    config = items_config(api)
    journal = tmp_path / "lib.journal"

    first = enrich.enrich(df, config, journal=journal)
    assert api.n() == 4 and journal.exists()
    assert (first.summary.calls, first.summary.cached, first.summary.deduped) == (4, 0, 1)
    second = enrich.enrich(df, config, journal=journal)
    assert api.n() == 4  # not one call
    assert (second.summary.calls, second.summary.cached, second.summary.ok) == (0, 5, 5)
    assert_frame_equal(second.frame, first.frame)
    assert second.frame["got"].to_list() == ["x1", "x2", "x3", "x1", "x4"]
    assert len(api.logins) == 1  # nothing to call: no login either


def test_pass_2_refuses_rows_that_are_not_those_pass_1_saw() -> None:
    # Pass 2 reuses pass 1's fingerprints batch by batch; if the input changed in between, the
    # rows would silently get other rows' results, so it stops and says to run again.
    from enrich.config import config_from_dict
    from enrich.engine import BatchPlan, PlanSpool, RowError, RunOptions, build_pass
    from enrich.errors import InputChanged
    from enrich.journal import FileJournal
    from enrich.tables import content_digest

    config = config_from_dict({"request": {"url": "http://127.0.0.1:9/v1/items/{{id}}"}})
    seen = pl.DataFrame({"id": ["a", "b"]})
    for now, same in ((seen, True), (seen.reverse(), False), (seen.head(1), False)):
        spool = PlanSpool()
        spool.write(content_digest(seen), BatchPlan([RowError("no request")] * 2))
        with FileJournal.open(None) as journal:
            frames, _ = build_pass(lambda now=now: iter([now]), config, journal, RunOptions(), spool, source="in.csv")
            if same:
                assert len(list(frames)) == 1
            else:
                with pytest.raises(InputChanged, match=r"the input in.csv changed while the run read it \(rows 1 to"):
                    list(frames)
        spool.close()


def test_a_run_sweeps_what_a_killed_run_left_beside_the_output(
    serve: Serve, demo_env: dict[str, str], tmp_path: Path
) -> None:
    api = items_api(serve)
    job = make_job(tmp_path, items_config(api), ids(3))
    parts = tmp_path / f".{job.out.name}.4242.parts"  # as SIGKILL leaves them mid-write
    parts.mkdir()
    (parts / "000000.arrow").write_bytes(b"half")
    tmp = tmp_path / f".{job.out.name}.4242.tmp"
    tmp.write_bytes(b"half")
    assert run_cli(job.argv()) == 0
    assert not parts.exists() and not tmp.exists()
    assert pl.read_parquet(job.out).height == 3


def test_a_failure_no_api_answered_is_seen_by_its_run_but_never_saved(tmp_path: Path) -> None:
    # A request that could not be sent (a local failure) is not an answer: the run's output shows
    # it, but a rerun calls again instead of serving it from the journal.
    from enrich.journal import Entry, FileJournal

    path = tmp_path / "j.journal"
    answered = Entry(200, None, b'{"a": 1}', 1, 3.0, time.time())
    local = Entry(None, "cannot send the request: bad header", None, 1, None, time.time())
    with FileJournal.open(path) as journal:
        journal.put(b"answered-fp-0001", answered)
        journal.put(b"local-fp-0000002", local, saved=False)
        journal.flush()
        assert journal.lookup([b"answered-fp-0001", b"local-fp-0000002"]) == {
            b"answered-fp-0001": answered,
            b"local-fp-0000002": local,
        }
        assert journal.written == 1
    with FileJournal.open(path) as journal:
        assert journal.lookup([b"answered-fp-0001", b"local-fp-0000002"]) == {b"answered-fp-0001": answered}


@pytest.mark.parametrize(
    ("changed", "calls_again"),
    [
        # a key is no part of what is asked: rotating it keeps every entry
        pytest.param({"API_KEY": "k3y-second-9999"}, False, id="rotated-api-key"),
        # nor is where the API lives (the URL's origin)
        pytest.param({"API_BASE": "http://localhost:{port}"}, False, id="moved-api-base"),
        # a version (or a tenant, a currency) changes the question: those rows are called again
        pytest.param({"API_VERSION": "2025-01-01"}, True, id="new-api-version"),
    ],
)
def test_what_the_fingerprint_keeps_of_the_variables(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, changed: dict[str, str], calls_again: bool
) -> None:
    api = items_api(serve)
    port = api.url.rsplit(":", 1)[1]
    env = {"API_KEY": "k3y-first-1111", "API_BASE": api.url, "API_VERSION": "2024-06-01"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = items_config(api, auth=False, fields={"asked_since": "q.since"})
    config["request"] = {
        "url": "${API_BASE}/v1/items/{{id}}",
        "params": {"since": "{{since}}", "v": "${API_VERSION}"},
        "headers": {"X-Api-Key": "${API_KEY}"},
    }
    # Two rows that differ only where one of them holds a variable's value: two calls, two answers.
    table = pl.DataFrame({"id": ["a", "a"], "since": ["2024-06-01", "2023-01-01"]})
    job = make_job(tmp_path, config, table)
    assert run_cli(job.argv("-q")) == 0
    assert sorted(p for _, p in api.calls) == [
        "/v1/items/a?since=2023-01-01&v=2024-06-01",
        "/v1/items/a?since=2024-06-01&v=2024-06-01",
    ]
    assert pl.read_parquet(job.out)["asked_since"].to_list() == ["2024-06-01", "2023-01-01"]  # each its own
    for name, value in changed.items():
        monkeypatch.setenv(name, value.format(port=port))
    assert run_cli(job.argv("-q")) == 0
    assert len(api.calls) == (4 if calls_again else 2)


def test_merging_parquet_shards_into_a_csv_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A CSV written by enrich guards the API's values against spreadsheet formulas; Parquet parts
    # were never guarded, so merging them into a CSV would ship `=HYPERLINK(...)` as it is.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    for name, rows in EVERY_SHARD.items():
        part = pl.DataFrame({"v": ['=HYPERLINK("http://x")'] * len(rows), "_row": pl.Series(rows, dtype=pl.Int64)})
        part.write_parquet(name)
    assert run_cli(["merge", *EVERY_SHARD, "--output", "out/people.csv"]) == 2
    assert capsys.readouterr().err == (
        "error: out/people.csv: the shard outputs are not CSV, and merged into a CSV the API's values would reach "
        "a spreadsheet unguarded against formulas (escape_formulas). Merge them into .parquet or .ndjson, or run "
        "the shards with a .csv output.\n"
    )
    assert not (tmp_path / "out/people.csv").exists()


# --- failure kinds: stored with each entry; those written before are classified when counted ------


@pytest.mark.parametrize(
    ("status", "error", "kind"),
    [
        pytest.param(404, "HTTP 404 Not Found", "HTTP", id="http-status"),
        pytest.param(302, "more than 5 redirects", "HTTP", id="redirect-status"),
        pytest.param(200, "response is not JSON (HTTP 200, text/plain): ...", "bad response", id="2xx-no-json"),
        pytest.param(None, "timed out after 0.2s (2 attempts)", "timeout", id="timeout"),
        pytest.param(None, "connection error: reset by peer", "connection error", id="connection"),
        pytest.param(None, "not called yet: no result in the journal", "not called", id="not-called"),
        pytest.param(None, "cannot send the request: bad header", "bad row data", id="anything-else"),
    ],
)
def test_kind_of_classifies_an_entry_written_before_kinds_were_stored(
    status: int | None, error: str, kind: str
) -> None:
    from enrich.journal import kind_of

    assert kind_of(status, error).value == kind


def test_a_log_from_before_kinds_were_stored_is_moved_in_at_the_next_open(tmp_path: Path) -> None:
    # A killed run of an older enrich left its log (records without a kind, no magic line): the
    # next open moves its calls into SQLite, as it moves its own.
    import struct
    import zlib

    from enrich.journal import Entry, FileJournal

    def old_record(fp: bytes, status: int, error: bytes, at: float) -> bytes:
        none = 0xFFFFFFFF
        data = struct.pack("<16siiddIIII", fp, status, 1, 2.5, at, len(error), none, none, none) + error
        return data + struct.pack("<I", zlib.crc32(data))

    path = tmp_path / "old.journal"
    FileJournal.open(path).close()
    log = b"".join(old_record(b"%016d" % i, 404, b"HTTP 404 Not Found", 1000.0 + i) for i in range(3))
    Path(f"{path}-log").write_bytes(log + bytes(64))  # the zeros after the last record
    with FileJournal.open(path) as journal:
        found = journal.lookup([b"%016d" % i for i in range(3)])
    assert found == {b"%016d" % i: Entry(404, "HTTP 404 Not Found", None, 1, 2.5, 1000.0 + i) for i in range(3)}


def test_a_redis_entry_from_before_kinds_were_stored_reads_without_one() -> None:
    from enrich.errors import FailureKind
    from enrich.journal import Entry
    from enrich.redis_journal import _decode, _encode

    old = b'[null,"timed out after 1s",2,null,1000.0,null,false]\n\n'
    assert _decode(old) == Entry(None, "timed out after 1s", None, 2, None, 1000.0)
    new = Entry(None, "timed out after 1s", None, 2, None, 1000.0, kind=FailureKind.TIMEOUT)
    assert _decode(_encode(new)) == new


def test_a_shard_whose_rows_got_no_value_does_not_turn_the_others_numbers_into_text(tmp_path: Path) -> None:
    # One shard's rows all failed: its field column holds no value (String, all null). Merged, the
    # other shard's numbers stay numbers.
    pl.DataFrame({"_row": [0, 2], "id": ["a", "c"], "employees": [12, 40]}).write_parquet(
        tmp_path / "out.shard-0-of-2.parquet"
    )
    pl.DataFrame(
        {"_row": [1], "id": ["b"], "employees": [None]}, schema_overrides={"employees": pl.String}
    ).write_parquet(tmp_path / "out.shard-1-of-2.parquet")
    parts = [tmp_path / f"out.shard-{i}-of-2.parquet" for i in range(2)]
    assert run_cli(["merge", *map(str, parts), "--output", str(tmp_path / "merged.parquet")]) == 0
    merged = pl.read_parquet(tmp_path / "merged.parquet")
    assert merged.schema["employees"] == pl.Int64
    assert merged["employees"].to_list() == [12, None, 40]
