"""Hostile servers, configs and machines get a clear stop, and cost no paid call.

Each case drives ``enrich`` as a user does (``cli.main`` in-process, or a subprocess where a
signal or another process is needed) against a real local server that counts the calls it
gets, on real files: a folder that cannot be written is a read-only mount (the tests run as
root, which chmod does not stop), a full disk is a small tmpfs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from aiohttp import web
from conftest import RunningServer, Serve, run_cli, write_config

ROOT = Path(__file__).resolve().parent.parent
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def items_api(serve: Serve, item: Handler | None = None, login: Handler | None = None) -> tuple[RunningServer, list]:
    """`GET /v1/items/{id}` answers `{"id": ...}` (or as ``item`` says); ``calls`` lists each call's id."""
    calls: list[str] = []

    async def default(request: web.Request) -> web.StreamResponse:
        return web.json_response({"id": request.match_info["id"]})

    async def counted(request: web.Request) -> web.StreamResponse:
        calls.append(request.match_info["id"])
        return await (item or default)(request)

    app = web.Application()
    app.router.add_get("/v1/items/{id}", counted)
    if login is not None:
        app.router.add_post("/login", login)
    return serve(app), calls


def job(tmp_path: Path, server: RunningServer, rows: int = 5, **config: Any) -> tuple[Path, Path, Path]:
    """An input of ``rows`` ids, a config calling the items API; returns (config, input, output)."""
    src = tmp_path / "in.csv"
    src.write_text("id\n" + "".join(f"{i}\n" for i in range(rows)), encoding="utf-8")
    out = Path(config.pop("output", tmp_path / "out" / "items.csv"))
    settings = {
        "input": str(src),
        "output": str(out),
        "request": {"url": server.url + "/v1/items/{{id}}"},
        "fields": {"got": "id"},
        "retry": {"attempts": 2, "backoff": 0.01},
        **config,
    }
    return write_config(tmp_path / "job.yaml", settings), src, out


def slow_api(serve: Serve, seconds: float) -> tuple[RunningServer, list]:
    """The items API, each answer ``seconds`` late: a run lasts long enough to act on it."""

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.json_response({"id": request.match_info["id"]})

    return items_api(serve, slow)


def start_run(cfg: Path, calls: list, after: int) -> subprocess.Popen[str]:
    """``enrich run CFG -q`` in its own process, returned once the API has seen ``after`` calls."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "enrich", "run", str(cfg), "-q"], cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 20
    while len(calls) < after and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before the test could act on it"
    return proc


@contextlib.contextmanager
def mounted(path: Path, options: str) -> Iterator[Path]:
    """A tmpfs at ``path`` (``ro``, ``size=...``), unmounted after; skipped where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


# --- before any call: the files the run writes ------------------------------------------------


def test_an_output_folder_that_cannot_be_written_is_found_before_any_call(
    tmp_path: Path, serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    server, calls = items_api(serve)
    cfg, _, _ = job(tmp_path, server)
    with mounted(tmp_path / "ro", "ro") as folder:
        out = folder / "items.csv"
        assert run_cli(["run", str(cfg), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write the output {out}: Read-only file system in the folder {folder}. ")
    assert "Traceback" not in err and err.count("\n") == 1
    assert calls == []


@pytest.mark.parametrize(
    ("argv", "config", "columns", "expected"),
    [
        pytest.param(
            ["--output", "{tmp}"],  # the test's folder: it holds in.csv
            {},
            "id",
            "error: output {tmp} is a folder; name a file in it, e.g. {tmp}/out.parquet.",
            id="output-is-a-folder",
        ),
        pytest.param(
            ["--output", "{tmp}/in.csv"],
            {},
            "id",
            "error: output {tmp}/in.csv is the input table: the run would overwrite it. Write the output elsewhere "
            "(--output PATH), or pass --in-place to replace the input with the enriched table (atomically, once "
            "every call is made).",
            id="output-is-the-input",
        ),
        pytest.param(
            ["--errors-out", "{tmp}/failed.csv"],
            {"request": {"url": "/v1/items/{{id}}", "params": {"row": "{{_row}}"}}},
            "id,_row",
            "error: in.csv has a column named _row, which the request uses and the errors file ({tmp}/failed.csv) "
            "writes itself (_row, _request_method, _request_url, _request_headers, _request_body, _http_status, "
            "_error, _attempts). Rename that input column, or leave errors_out out.",
            id="errors-file-column-clash",
        ),
        pytest.param(
            ["--shard", "0/2"],
            {},
            "id,_row",
            "error: in.csv has a column named _row, which a shard's output adds (the input row number, for "
            "`enrich merge`). Rename that column to run with --shard.",
            id="shard-row-column-clash",
        ),
    ],
)
def test_what_the_run_writes_is_checked_before_any_call(
    tmp_path: Path,
    serve: Serve,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    config: dict[str, Any],
    columns: str,
    expected: str,
) -> None:
    server, calls = items_api(serve)
    if argv == ["--output", "{tmp}"]:
        tmp_path = tmp_path / "folder.csv"  # a folder named like a table
        tmp_path.mkdir()
    if "request" in config:
        config = {"request": {**config["request"], "url": server.url + config["request"]["url"]}}
    cfg, src, _ = job(tmp_path, server, **config)
    src.write_text(columns + "\n" + "".join(",".join([str(i)] * len(columns.split(","))) + "\n" for i in range(3)))
    before = src.read_bytes()
    assert run_cli(["run", str(cfg), *(a.replace("{tmp}", str(tmp_path)) for a in argv)]) == 2
    assert capsys.readouterr().err == expected.replace("{tmp}", str(tmp_path)) + "\n"
    assert calls == []
    assert src.read_bytes() == before


def test_in_place_replaces_the_input_once_every_call_is_made(tmp_path: Path, serve: Serve) -> None:
    server, calls = items_api(serve)
    cfg, src, _ = job(tmp_path, server, rows=3)
    assert run_cli(["run", str(cfg), "-q", "--output", str(src), "--in-place"]) == 0
    assert pl.read_csv(src, infer_schema=False).select("id", "got").rows() == [("0", "0"), ("1", "1"), ("2", "2")]
    assert sorted(calls) == ["0", "1", "2"]


def test_a_trial_run_writes_beside_the_output_and_shares_its_journal(
    tmp_path: Path, serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    server, calls = items_api(serve)
    cfg, _, out = job(tmp_path, server, rows=20)
    assert run_cli(["run", str(cfg), "-q"]) == 0
    full = out.read_bytes()
    assert run_cli(["run", str(cfg), "--limit", "5"]) == 0
    trial = out.with_name("items.first-5.csv")
    assert f"-> {trial}" in capsys.readouterr().err
    assert out.read_bytes() == full  # yesterday's whole table is left alone
    assert pl.read_csv(trial).height == 5
    assert len(calls) == 20  # the trial's rows came from the whole run's journal


@pytest.mark.slow
def test_two_runs_on_one_output_the_second_is_refused(tmp_path: Path, serve: Serve) -> None:
    # Another journal, the same output: the second run must not sweep the first's parts away.
    server, calls = slow_api(serve, 0.05)
    cfg, _, out = job(tmp_path, server, rows=60, concurrency=2)
    first = start_run(cfg, calls, after=1)
    second = subprocess.run(
        [sys.executable, "-m", "enrich", "run", str(cfg), "-q", "--journal", str(tmp_path / "other.journal")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 3
    assert second.stderr == (
        f"error: the output {out} is being written by another run. Wait for it to finish (or stop it), or write "
        "this run's output elsewhere with --output PATH.\n"
    )
    _, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert pl.read_csv(out)["got"].to_list() == list(range(60))


# --- the input changes under the run ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("how", ["replaced by a re-sorted copy", "rewritten in place"])
def test_an_input_changed_during_the_run_stops_it_and_writes_no_mixed_table(
    tmp_path: Path, serve: Serve, how: str
) -> None:
    server, calls = slow_api(serve, 0.01)
    cfg, src, out = job(tmp_path, server, rows=200, concurrency=4)
    proc = start_run(cfg, calls, after=20)
    resorted = "id\n" + "".join(f"{i}\n" for i in reversed(range(200)))
    if how == "replaced by a re-sorted copy":
        (tmp_path / "new.csv").write_text(resorted, encoding="utf-8")
        os.replace(tmp_path / "new.csv", src)
    else:
        stat = src.stat()
        src.write_text(resorted, encoding="utf-8")  # same size; the time put back as it was
        os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert err.startswith(f"error: the input {src} changed while the run read it (")
    assert "The calls made are saved in the journal: run the same command again" in err
    assert not out.exists()
    # Once the file is settled, the same command puts each answer on its own row, paying no call twice.
    assert run_cli(["run", str(cfg), "-q"]) == 0
    table = pl.read_csv(out)
    assert table["got"].to_list() == table["id"].to_list() == list(reversed(range(200)))
    assert sorted(map(int, calls)) == list(range(200))


# --- the disk fails the run -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_full_disk_stops_the_run_and_the_rerun_pays_no_call_twice(tmp_path: Path, serve: Serve) -> None:
    big = json.dumps({"padding": "x" * 6000})  # answers that fill a small disk quickly

    async def item(request: web.Request) -> web.StreamResponse:
        return web.json_response({"id": request.match_info["id"], "pad": big})

    server, calls = items_api(serve, item)
    with mounted(tmp_path / "disk", "size=1m") as disk:
        cfg, _, out = job(tmp_path, server, rows=200, output=str(disk / "items.csv"))
        proc = subprocess.run(
            [sys.executable, "-m", "enrich", "run", str(cfg), "-q"], cwd=ROOT, capture_output=True, text=True
        )
        assert proc.returncode == 3, proc.stderr
        assert proc.stderr.startswith("error: the disk holding the journal ")
        assert "is full (" in proc.stderr  # No space left on device, or SQLite's words for it
        assert "Free some space, then run the same command again" in proc.stderr
        assert "Traceback" not in proc.stderr
        made = len(calls)
        subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
        assert run_cli(["run", str(cfg), "-q"]) == 0
        assert pl.read_csv(out)["got"].to_list() == list(range(200))
        # The rerun pays again only for the calls the full disk could not save: those in flight.
        assert len(calls) - 200 <= 16  # the default concurrency
        assert made < 200  # the first run did stop
        assert json.loads((disk / "items.csv.summary.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_a_full_disk_under_the_output_stops_after_the_calls_and_the_rerun_makes_none(
    tmp_path: Path, serve: Serve
) -> None:
    async def item(request: web.Request) -> web.StreamResponse:
        return web.json_response({"id": request.match_info["id"], "pad": "x" * 3000})

    server, calls = items_api(serve, item)
    with mounted(tmp_path / "disk", "size=64k") as disk:
        out = disk / "items.csv"
        cfg, _, _ = job(tmp_path, server, rows=300, output=str(out), journal=str(tmp_path / "items.journal"))
        cfg.write_text(cfg.read_text().replace("got: id", "got: id\n  pad: pad"))
        proc = subprocess.run(
            [sys.executable, "-m", "enrich", "run", str(cfg), "-q"], cwd=ROOT, capture_output=True, text=True
        )
        assert proc.returncode == 3, proc.stderr
        assert proc.stderr.startswith(f"error: cannot write the output {out}: No space left on device")
        assert proc.stderr.endswith(
            "Every call is in the journal: free some space (or fix the folder's permissions), then run the same "
            "command again; it makes no call.\n"
        )
        # No part and no temporary file left behind; the summary says the run stopped.
        assert sorted(p.name for p in disk.iterdir()) == ["items.csv.summary.json"]
        assert json.loads((disk / "items.csv.summary.json").read_text())["status"] == "aborted"
        assert len(calls) == 300
        subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
        assert run_cli(["run", str(cfg), "-q"]) == 0
        assert len(calls) == 300  # the rerun made no call
        assert pl.read_csv(out)["got"].to_list() == list(range(300))


def _journal_rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM calls").fetchone()[0])


def test_a_damaged_journal_is_named_with_the_fix(
    tmp_path: Path, serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    server, calls = items_api(serve)
    cfg, _, out = job(tmp_path, server, rows=300)
    assert run_cli(["run", str(cfg), "-q"]) == 0
    journal = out.with_name("items.csv.journal")
    data = bytearray(journal.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = b"\xff" * 4096
    journal.write_bytes(bytes(data))
    before = len(calls)
    assert run_cli(["run", str(cfg), "-q"]) == 2  # found at the first look-up, before any call
    err = capsys.readouterr().err
    assert err.startswith(f"error: the journal {journal} is damaged (database disk image is malformed) while ")
    assert err.endswith(
        "Move it aside to start over (the calls it held will be made again), or put back a copy from a backup.\n"
    )
    assert len(calls) == before


# --- hostile answers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "retry_after",
    ["inf", "1e308", "Fri, 31 Dec 9999 23:59:59 GMT"],
    ids=["infinite", "1e308", "year-9999"],
)
def test_a_retry_after_no_calendar_holds_stops_resumably(
    tmp_path: Path, serve: Serve, capsys: pytest.CaptureFixture[str], retry_after: str
) -> None:
    async def throttled(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": "later"}, status=429, headers={"Retry-After": retry_after})

    server, calls = items_api(serve, throttled)
    cfg, _, out = job(tmp_path, server, rows=3, concurrency=1)
    assert run_cli(["run", str(cfg)]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: the API asked to wait ")
    assert "(Retry-After on HTTP 429), more than retry.max_retry_after (300s)." in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert len(calls) == 1 and not out.exists()


def test_a_gzip_bomb_at_the_login_is_cut_off(tmp_path: Path, serve: Serve, capsys: pytest.CaptureFixture[str]) -> None:
    bomb = gzip.compress(b'{"token": "' + b"0" * (64 * 1024 * 1024), compresslevel=9)  # 64 MB from ~64 KB

    async def login(request: web.Request) -> web.StreamResponse:
        return web.Response(body=bomb, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})

    server, calls = items_api(serve, login=login)
    auth = {"url": server.url + "/login", "token_path": "token"}
    cfg, _, _ = job(tmp_path, server, auth=auth, max_response_bytes="1MB")
    assert run_cli(["run", str(cfg)]) == 3
    err = capsys.readouterr().err
    assert err == (
        f"error: login failed: the response of {server.url}/login (HTTP 200) is larger than 1 MB "
        "(max_response_bytes), which no token needs. Check auth.url.\n"
    )
    assert calls == []


def test_a_token_with_a_line_break_stops_the_run_at_login(
    tmp_path: Path, serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    async def login(request: web.Request) -> web.StreamResponse:
        return web.json_response({"token": "abc\r\nX-Injected: 1"})

    server, calls = items_api(serve, login=login)
    cfg, _, out = job(tmp_path, server, auth={"url": server.url + "/login", "token_path": "token"})
    assert run_cli(["run", str(cfg)]) == 3
    assert capsys.readouterr().err == (
        "error: login succeeded (HTTP 200) but the token holds a line break or control character, which no HTTP "
        "header can carry. Check auth.url and where the token is taken from (auth.token_path, auth.token_header or "
        "auth.token_cookie).\n"
    )
    assert calls == []
    assert not out.with_name("items.csv.journal").exists()  # nothing journalled as if an API had answered


@pytest.mark.slow
def test_a_token_said_to_expire_at_once_is_not_fetched_for_every_call(tmp_path: Path, serve: Serve) -> None:
    logins: list[float] = []

    async def login(request: web.Request) -> web.StreamResponse:
        logins.append(time.monotonic())
        return web.json_response({"token": f"t{len(logins)}", "expires_in": 1e-9})

    server, calls = items_api(serve, login=login)
    auth = {"url": server.url + "/login", "token_path": "token", "expires_in_path": "expires_in"}
    cfg, _, _ = job(tmp_path, server, rows=400, auth=auth, rate_limit="400/s", concurrency=8)
    started = time.monotonic()
    assert run_cli(["run", str(cfg), "-q"]) == 0
    seconds = time.monotonic() - started
    assert len(calls) == 400
    assert len(logins) <= 1 + seconds / 1.5 + 1  # one per 1.5 s at most (a 2 s floor, renewed 0.5 s early)


def test_a_latin1_csv_is_named_with_the_fix_before_any_call(
    tmp_path: Path, serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    server, calls = items_api(serve)
    cfg, src, _ = job(tmp_path, server)
    src.write_bytes("id,name\n1,Zoë\n2,José\n".encode("latin-1"))
    assert run_cli(["run", str(cfg)]) == 2
    assert capsys.readouterr().err == (
        f"error: input {src} is not UTF-8 text: byte 0xeb on line 2 (byte 12 of the file) is not UTF-8. It was "
        "probably saved as Latin-1 or Windows-1252: save it as UTF-8 (in Excel: CSV UTF-8), or convert it: "
        f"iconv -f windows-1252 -t utf-8 {src} > utf8.csv\n"
    )
    assert calls == []


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        pytest.param("id\n1\n2\n1,2,3\n", "found more fields than defined in 'Schema'", id="a-ragged-line"),
        pytest.param(
            "id,name\n" + "".join(f"{i},n{i}\n" for i in range(30)) + '31,"unbalanced\n32,x\n',
            "CSV malformed",
            id="an-unclosed-quote",
        ),
    ],
)
def test_a_malformed_csv_is_named_with_the_fix_before_any_call(
    tmp_path: Path, serve: Serve, capsys: pytest.CaptureFixture[str], text: str, detail: str
) -> None:
    server, calls = items_api(serve)
    cfg, src, _ = job(tmp_path, server)
    src.write_text(text, encoding="utf-8")
    fix = (
        "Check that every line has as many fields as the header, and that every quote is closed (a field holding "
        "a comma or a line break must be in double quotes).\n"
    )
    for command in ("validate", "run"):
        assert run_cli([command, str(cfg)]) == 2, command
        err = capsys.readouterr().err
        assert err.startswith(f"error: cannot read the input {src}: {detail}") and err.endswith(fix), err
    assert calls == []


def test_in_place_through_a_link_replaces_the_file_it_points_to(tmp_path: Path, serve: Serve) -> None:
    server, _ = items_api(serve)
    cfg, src, _ = job(tmp_path, server, rows=2)
    link = tmp_path / "link.csv"
    link.symlink_to(src)
    assert run_cli(["run", str(cfg), "-q", "--input", str(link), "--output", str(link), "--in-place"]) == 0
    assert link.is_symlink()
    assert pl.read_csv(src, infer_schema=False)["got"].to_list() == ["0", "1"]
