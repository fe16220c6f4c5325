"""The journal kept in Redis (issue 7): shared by shards, machines and re-runs.

Each test starts its own redis-server (the ``redis_url`` fixture) and counts the calls at
the API, so "from the journal" means the server was not called.
"""

from __future__ import annotations

import bisect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import redis
from aiohttp import web
from conftest import (
    RunningServer,
    Serve,
    demo_child_env,
    demo_config,
    known_people,
    run_cli,
    run_shards,
    start_redis,
    write_config,
)

from enrich import redis_journal
from enrich.demo_server import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DemoSettings, create_app
from enrich.errors import RunAborted

pytestmark = pytest.mark.slow  # starts redis-server or a Dask cluster

ROOT = Path(__file__).resolve().parent.parent
ENRICH = [sys.executable, "-m", "enrich"]
WRITE_WINDOW = 0.05  # seconds: a generous round trip to a local Redis, writer thread scheduling included


def keys(url: str) -> list[bytes]:
    client = redis.Redis.from_url(url.split("?")[0])
    try:
        return sorted(client.scan_iter("enrich:journal:*"))
    finally:
        client.close()


def config(tmp_path: Path, server: RunningServer, journal: str | bool, rows: int = 40, **overrides: object) -> Path:
    src = known_people(tmp_path, rows=rows)
    return write_config(
        tmp_path / "c.yaml",
        demo_config(server.url, input=str(src), output=str(tmp_path / "out.parquet"), journal=journal, **overrides),
    )


def test_a_rerun_takes_every_call_from_redis(
    tmp_path: Path, serve: Serve, redis_url: str, demo_env: dict[str, str]
) -> None:
    server = serve(create_app(DemoSettings()))
    cfg = config(tmp_path, server, redis_url)
    assert run_cli(["run", str(cfg), "-q"]) == 0
    first = pl.read_parquet(tmp_path / "out.parquet")
    assert len(server.state.call_times) == 40
    # one value per call, plus the set that counts them and the epoch; named after the output
    assert len(keys(redis_url)) == 40 + 2
    assert all(k.startswith(b"enrich:journal:out.parquet:") for k in keys(redis_url))
    assert not (tmp_path / "out.parquet.journal").exists()  # no SQLite file beside it

    (tmp_path / "out.parquet").unlink()
    assert run_cli(["run", str(cfg), "-q"]) == 0
    assert len(server.state.call_times) == 40  # no new call: all from Redis
    assert pl.read_parquet(tmp_path / "out.parquet").equals(first)


def test_two_shards_then_a_whole_run_share_one_journal(tmp_path: Path, serve: Serve, redis_url: str) -> None:
    server = serve(create_app(DemoSettings()))
    cfg = config(tmp_path, server, redis_url, rows=60)
    run_shards(cfg, 2)
    assert len(server.state.call_times) == 60
    # A third run, on another machine as far as it knows (no --shard, no shared disk): 0 calls.
    done = subprocess.run(
        [*ENRICH, "run", str(cfg)], cwd=ROOT, env=demo_child_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert len(server.state.call_times) == 60
    assert "0 made, 0 retries, 0 throttled (429); 60 rows from the journal" in done.stderr
    assert pl.read_parquet(tmp_path / "out.parquet").height == 60


def test_sigkill_then_rerun_repeats_only_the_calls_in_flight(tmp_path: Path, serve: Serve, redis_url: str) -> None:
    rows, concurrency = 300, 4
    server = serve(create_app(DemoSettings(latency=0.02)))
    cfg = config(tmp_path, server, redis_url, rows=rows, concurrency=concurrency)
    first = subprocess.Popen(
        [*ENRICH, "run", str(cfg), "-q"], cwd=ROOT, env=demo_child_env(), stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while len(server.state.call_times) < 150 and first.poll() is None:
        assert time.monotonic() < deadline, "150 calls"
        time.sleep(0.01)
    assert first.poll() is None, "the run finished before the kill; make it slower"
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    before = sorted(server.state.call_times)

    done = subprocess.run(
        [*ENRICH, "run", str(cfg), "-q"], cwd=ROOT, env=demo_child_env(), capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert pl.read_parquet(tmp_path / "out.parquet").height == rows
    repeated = len(server.state.call_times) - rows  # every row is called once, these twice

    # Written through: only the calls in flight, and those that finished while the writer thread
    # was writing the ones before (a round trip to Redis: the most calls seen in any 50 ms, which
    # stretches with the machine's load), are made again. (SQLite's file: half a second of calls.)
    per_write = max(bisect.bisect_right(before, t + WRITE_WINDOW) - i for i, t in enumerate(before))
    bound = concurrency + per_write
    print(f"\nSIGKILL after {len(before)} calls: {repeated} repeated by the rerun; bound {bound}")
    assert 0 <= repeated <= bound


def test_ttl_sets_an_expiry_on_every_entry(
    tmp_path: Path, serve: Serve, redis_url: str, demo_env: dict[str, str]
) -> None:
    server = serve(create_app(DemoSettings()))
    cfg = config(tmp_path, server, f"{redis_url}?prefix=acme-people&ttl=2d", rows=10)
    assert run_cli(["run", str(cfg), "-q"]) == 0
    found = keys(redis_url)
    assert len(found) == 10 + 2 and all(k.startswith(b"enrich:journal:acme-people:") for k in found)
    client = redis.Redis.from_url(redis_url)
    try:
        ttls = [client.ttl(k) for k in found]
    finally:
        client.close()
    assert all(2 * 86400 - 60 < t <= 2 * 86400 for t in ttls), ttls


def test_dry_run_writes_nothing_to_redis(
    tmp_path: Path, serve: Serve, redis_url: str, demo_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve(create_app(DemoSettings()))
    cfg = config(tmp_path, server, True, rows=20)  # the journal given on the command line
    assert run_cli(["run", str(cfg), "-q", "--limit", "5", "--journal", redis_url]) == 0
    held = keys(redis_url)
    assert len(held) == 5 + 2
    capsys.readouterr()
    assert run_cli(["run", str(cfg), "--dry-run", "--journal", redis_url]) == 0
    assert "in the journal       5" in capsys.readouterr().out
    assert keys(redis_url) == held
    assert len(server.state.call_times) == 5
    assert not (tmp_path / "out.parquet.journal").exists()


def test_entries_hold_the_answer_as_the_api_sent_it(tmp_path: Path, serve: Serve, redis_url: str) -> None:
    """An API that echoes the Authorization header: its answer is kept exactly (the token it
    echoes is part of it); the entry holds no header enrich sent."""
    token = "tok-8c1e5b2f9a7d"

    async def login(request: web.Request) -> web.Response:
        return web.json_response({"access_token": token, "expires_in": 3600})

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"name": request.match_info["id"], "auth": request.headers.get("Authorization")})

    app = web.Application()
    app.router.add_post("/auth/token", login)
    app.router.add_get("/v1/people/{id}", echo)
    server = serve(app)
    src = tmp_path / "in.csv"
    src.write_text("email\na@example.com\nb@example.com\n", "utf-8")
    cfg = write_config(
        tmp_path / "c.yaml",
        {
            "input": str(src),
            "output": str(tmp_path / "out.csv"),
            "journal": redis_url,
            "auth": {"url": f"{server.url}/auth/token", "body": {"id": "x"}, "token_path": "access_token"},
            "request": {"url": server.url + "/v1/people/{{email}}"},
            "fields": {"name": "name", "auth": "auth"},
        },
    )
    assert run_cli(["run", str(cfg), "-q"]) == 0
    client = redis.Redis.from_url(redis_url)
    try:
        raw = b"".join(
            client.get(key) or b"" for key in client.scan_iter("enrich:journal:*") if client.type(key) == b"string"
        )
    finally:
        client.close()
    for email in ("a@example.com", "b@example.com"):  # each answer byte for byte, as aiohttp's json_response wrote it
        assert json.dumps({"name": email, "auth": f"Bearer {token}"}).encode() in raw


def test_redis_unreachable_stops_resumably_naming_the_url_without_its_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    monkeypatch.setattr(redis_journal, "FAIL_AFTER", 0.3)
    with pytest.raises(RunAborted) as stop:
        redis_journal.RedisJournal.open(f"redis://:hunter22@127.0.0.1:{port}/0?prefix=x")
    message = str(stop.value)
    assert message.startswith(
        f"cannot reach Redis at redis://:***@127.0.0.1:{port}/0?prefix=x, which holds the journal"
    )
    assert "run the same command again" in message
    assert "hunter22" not in message


@pytest.mark.parametrize(
    ("journal", "expected"),
    [
        ("redis://", "is not a Redis URL"),  # no host
        ("redis://127.0.0.1:6379/0?ttl=soon", "ttl='soon' in the journal URL"),
        ("redis://127.0.0.1:6379/0?ttl=0.5s", "is under a second, which Redis cannot keep"),
    ],
)
def test_bad_journal_urls_are_config_errors(journal: str, expected: str, demo_env: dict[str, str]) -> None:
    from enrich.config import config_from_dict
    from enrich.errors import ConfigError

    with pytest.raises(ConfigError, match=expected):
        config_from_dict(demo_config("http://127.0.0.1:1", journal=journal))


def test_redis_stopped_mid_run_holds_the_calls_stops_resumably_and_the_rerun_pays_only_the_rest(
    tmp_path: Path, serve: Serve, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import threading

    monkeypatch.setattr(redis_journal, "FAIL_AFTER", 2.0)  # the run's patience with Redis (10 s by default)
    monkeypatch.setenv("DEMO_CLIENT_ID", DEFAULT_CLIENT_ID)
    monkeypatch.setenv("DEMO_CLIENT_SECRET", DEFAULT_CLIENT_SECRET)
    rows, concurrency = 300, 4
    server = serve(create_app(DemoSettings(latency=0.02)))
    folder = tmp_path / "redis"
    folder.mkdir()
    proc, url = start_redis(folder, persist=True)  # its append-only file outlives it
    cfg = config(tmp_path, server, url, rows=rows, concurrency=concurrency)
    gone_at: list[int] = []

    def stop_redis() -> None:
        deadline = time.monotonic() + 30
        while server.state.calls < 100 and time.monotonic() < deadline:
            time.sleep(0.002)
        proc.terminate()  # a clean shutdown, as `systemctl stop redis` does
        proc.wait(10)
        gone_at.append(server.state.calls)

    stopper = threading.Thread(target=stop_redis)
    stopper.start()
    try:
        code = run_cli(["run", str(cfg), "-q"])
    finally:
        stopper.join()
    err = capsys.readouterr().err
    assert code == 3, err
    assert "cannot reach Redis at" in err and "run the same command again" in err
    assert not (tmp_path / "out.parquet").exists()
    before = sorted(server.state.call_times)
    per_write = max(bisect.bisect_right(before, t + WRITE_WINDOW) - i for i, t in enumerate(before))
    # Once Redis stopped answering, no new call went out: only those in flight finished.
    after_stop = server.state.calls - gone_at[0]
    print(f"\nRedis stopped after {gone_at[0]} calls; {after_stop} calls after; bound {concurrency + per_write}")
    assert after_stop <= concurrency + per_write

    # Redis back (its files kept): the rerun pays only for what was never saved.
    proc, _ = start_redis(folder, port=int(url.rsplit(":", 1)[1].split("/")[0]), persist=True)
    try:
        assert run_cli(["run", str(cfg), "-q"]) == 0
    finally:
        proc.terminate()
        proc.wait(10)
    repeated = server.state.calls - rows
    print(f"the rerun repeated {repeated} calls; bound {after_stop + concurrency + per_write}")
    assert 0 <= repeated <= after_stop + concurrency + per_write
    assert pl.read_parquet(tmp_path / "out.parquet")["_http_status"].to_list() == [200] * rows


def test_an_entry_replaced_by_one_without_a_body_does_not_keep_the_old_body(redis_url: str) -> None:
    from enrich.journal import Entry

    fp = bytes.fromhex("00ff" * 8)
    with redis_journal.RedisJournal.open(f"{redis_url}?prefix=replace") as journal:
        journal.put(fp, Entry(200, None, b'{"a": 1}', 1, 3.5, 1000.0, '[["a","a"]]', b"[1]"))
        journal.flush()
        assert journal.lookup([fp]) == {fp: Entry(200, None, b'{"a": 1}', 1, 3.5, 1000.0, '[["a","a"]]', b"[1]")}
        # The call made again (--retry-failed, --fresh) and lost its connection: no body now.
        journal.put(fp, Entry(None, "connection reset", None, 3, None, 2000.0))
        journal.flush()
        assert len(journal) == 1
    with redis_journal.RedisJournal.open(f"{redis_url}?prefix=replace") as again:  # as another process sees it
        assert again.lookup([fp]) == {fp: Entry(None, "connection reset", None, 3, None, 2000.0)}
        assert again.lookup([fp], bodies=False)[fp].error == "connection reset"


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
@pytest.mark.parametrize(
    ("head", "error"),
    [
        (b"HTTP/1.1 500 Erreur \xe9\r\n", "HTTP 500 Erreur ?"),
        (b"HTTP/1.1 200 OK\r\nContent-Type: text/\xe9tml\r\n", "response is not JSON (HTTP 200, text/?tml)"),
        (b"HTTP/1.1 302 Found\r\nLocation: http://h\xe9\xff.example/\r\n", "which is not a URL; not followed"),
    ],
    ids=["reason", "content-type", "location"],
)
def test_response_headers_that_are_not_utf8_give_a_row_error_as_text(
    tmp_path: Path, redis_url: str, kind: str, head: bytes, error: str
) -> None:
    """aiohttp keeps a header's non-UTF-8 bytes as lone surrogates; put in an error as they are,
    they broke SQLite's insert and the Redis writer's JSON, and every rerun met the same row."""
    import socketserver
    import threading

    class Latin1(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
            self.wfile.write(head + b"Content-Length: 8\r\nConnection: close\r\n\r\nnot json")

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Latin1) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            src = known_people(tmp_path, rows=3)
            cfg = write_config(
                tmp_path / "c.yaml",
                {
                    "input": str(src),
                    "output": str(tmp_path / "out.csv"),
                    "journal": redis_url if kind == "redis" else str(tmp_path / "j.journal"),
                    "request": {"url": f"http://127.0.0.1:{server.server_address[1]}/p/{{{{email}}}}"},
                    "fields": {"name": "name"},
                    "retry": {"attempts": 1},
                },
            )
            assert run_cli(["run", str(cfg), "-q"]) == 0
        finally:
            server.shutdown()
    errors = pl.read_csv(tmp_path / "out.csv")["_error"].to_list()
    assert len(errors) == 3 and all(error in e for e in errors), errors


def test_a_writer_that_fails_on_an_entry_stops_the_run_instead_of_hanging_it(redis_url: str) -> None:
    from enrich.journal import Entry

    journal = redis_journal.RedisJournal.open(f"{redis_url}?prefix=broken")
    journal.put(b"\x01" * 16, Entry(500, "cannot be encoded: \udce9", None, 1, 1.0, 1000.0))
    started = time.monotonic()
    with pytest.raises(RunAborted, match=r"journal's writer to Redis at .* failed: TypeError"):
        journal.flush()
    assert time.monotonic() - started < 5
    with pytest.raises(RunAborted):
        journal.holding()  # the engine's next call is not made
    journal.close()  # told once already: closes quietly
    with pytest.raises(RuntimeError, match="closed"):
        journal.put(b"\x02" * 16, Entry(200, None, b"{}", 1, 1.0, 1000.0))


def test_redis_restarted_empty_mid_run_stops_the_run_instead_of_passing_paid_calls_as_not_made(
    tmp_path: Path, serve: Serve, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import threading

    monkeypatch.setenv("DEMO_CLIENT_ID", DEFAULT_CLIENT_ID)
    monkeypatch.setenv("DEMO_CLIENT_SECRET", DEFAULT_CLIENT_SECRET)
    rows = 300
    server = serve(create_app(DemoSettings(latency=0.02)))
    folder = tmp_path / "redis"
    folder.mkdir()
    first, url = start_redis(folder)  # no persistence: a restart comes back empty
    procs = [first]
    cfg = config(tmp_path, server, url, rows=rows, concurrency=4)

    def restart_redis() -> None:
        deadline = time.monotonic() + 30
        while server.state.calls < 100 and time.monotonic() < deadline:
            time.sleep(0.002)
        procs[0].kill()
        procs[0].wait(10)
        procs.append(start_redis(folder, port=int(url.rsplit(":", 1)[1].split("/")[0]))[0])

    restarter = threading.Thread(target=restart_redis)
    restarter.start()
    try:
        code = run_cli(["run", str(cfg), "-q"])
        restarter.join()
        err = capsys.readouterr().err
        assert code == 3, err
        assert "lost the journal while this run used it" in err and "appendonly yes" in err
        assert not (tmp_path / "out.parquet").exists()  # no output that calls paid for were never made
        # The rerun makes again the calls that Redis lost, and finishes.
        assert run_cli(["run", str(cfg), "-q"]) == 0
        assert pl.read_parquet(tmp_path / "out.parquet")["_http_status"].to_list() == [200] * rows
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def test_lookups_without_bodies_read_the_record_whole_and_no_body(redis_url: str) -> None:
    """`bodies=False` (deciding what to call) reads each record from its first 4 KB, or whole
    when the extracted values are longer; never the body."""
    from enrich.journal import Entry

    long_values = b'["' + b"v" * 6000 + b'"]'
    entries = {
        b"\x0a" * 16: Entry(200, None, b'{"a":\n"line\\nbreaks"}\n' + b"x" * 20_000, 1, 2.0, 1.0, "k", b'["a"]'),
        b"\x0b" * 16: Entry(200, None, b'{"v": "..."}', 1, 2.0, 1.0, "k", long_values),
        b"\x0c" * 16: Entry(404, "HTTP 404 Not Found:\nnobody", b"", 3, None, 1.0),
    }
    with redis_journal.RedisJournal.open(f"{redis_url}?prefix=heads") as journal:
        for fp, entry in entries.items():
            journal.put(fp, entry)
    with redis_journal.RedisJournal.open(f"{redis_url}?prefix=heads") as journal:
        assert journal.lookup(entries) == entries
        assert journal.lookup(entries, bodies=False) == {fp: e._replace(body=None) for fp, e in entries.items()}
        assert journal.lookup([b"\x0d" * 16], bodies=False) == {}


def test_rows_repeated_across_look_ups_are_called_once(
    tmp_path: Path, serve: Serve, redis_url: str, demo_env: dict[str, str]
) -> None:
    """1,500 people, then the same 1,500 again: the second half's look-ups (in a thread, while
    the first half's calls finish) find every call made or in flight; each person is called once."""
    server = serve(create_app(DemoSettings(latency=0.005)))
    cfg = config(tmp_path, server, redis_url, rows=1500, concurrency=32)
    src = tmp_path / "in.csv"
    lines = src.read_text("utf-8").splitlines(keepends=True)
    src.write_text("".join(lines + lines[1:]), "utf-8")
    assert run_cli(["run", str(cfg), "-q"]) == 0
    assert server.state.calls == 1500
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert out.height == 3000 and out["_http_status"].to_list() == [200] * 3000
