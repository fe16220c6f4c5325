"""Shared fixtures: real aiohttp servers on 127.0.0.1 in a background thread, config files on disk.

A server runs in its own thread and event loop, so a test can drive enrich the way a
user does (``cli.main([...])`` or ``enrich.enrich(df, cfg)``, each with its own loop).
"""

from __future__ import annotations

import asyncio
import re
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from enrich.demo_server import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, STATE, DemoSettings, create_app


@dataclass
class RunningServer:
    """A live server: its base URL and the app (``.state`` for the demo API)."""

    url: str
    app: web.Application

    @property
    def state(self) -> Any:
        return self.app[STATE]


Serve = Callable[[web.Application], RunningServer]  # the `serve` fixture: start an app, get its server


class ServerThread:
    """Runs an aiohttp application on 127.0.0.1 (a free port) in a daemon thread; with
    ``ssl_context``, over HTTPS."""

    def __init__(self, app: web.Application, ssl_context: ssl.SSLContext | None = None) -> None:
        self.app = app
        self.ssl_context = ssl_context
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        runner = web.AppRunner(self.app, access_log=None)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.runner = runner
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())
        self.loop.close()

    def __enter__(self) -> RunningServer:
        self.thread.start()
        if not self.ready.wait(10):
            raise RuntimeError("test server did not start")
        scheme = "https" if self.ssl_context is not None else "http"
        return RunningServer(f"{scheme}://127.0.0.1:{self.port}", self.app)

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def run_cli(argv: list[str]) -> int:
    """``enrich ...`` in-process, as a user runs it; argparse exits are turned into their code."""
    from enrich import cli

    try:
        return cli.main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.fixture
def serve() -> Iterator[Callable[..., RunningServer]]:
    """Start any aiohttp app for the test: ``server = serve(app)`` (``serve(app, ssl_context)`` for
    HTTPS); stopped at teardown."""
    started: list[ServerThread] = []

    def start(app: web.Application, ssl_context: ssl.SSLContext | None = None) -> RunningServer:
        thread = ServerThread(app, ssl_context)
        started.append(thread)
        return thread.__enter__()

    yield start
    for thread in started:
        thread.__exit__(None, None, None)


@pytest.fixture
def demo_api(serve: Callable[[web.Application], RunningServer]) -> RunningServer:
    """The bundled demo JWT API with default settings."""
    return serve(create_app(DemoSettings()))


@pytest.fixture
def demo_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The demo credentials in the environment, as `make demo` sets them."""
    env = {"DEMO_CLIENT_ID": DEFAULT_CLIENT_ID, "DEMO_CLIENT_SECRET": DEFAULT_CLIENT_SECRET}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def demo_config(base_url: str, **overrides: Any) -> dict[str, Any]:
    """A config like configs/demo.yaml pointed at ``base_url``; ``overrides`` replace top-level keys."""
    config: dict[str, Any] = {
        "auth": {
            "url": f"{base_url}/auth/token",
            "body": {"client_id": "${DEMO_CLIENT_ID}", "client_secret": "${DEMO_CLIENT_SECRET}"},
            "token_path": "access_token",
        },
        "request": {"url": base_url + "/v1/people/{{email}}", "params": {"domain": "{{domain}}"}},
        "fields": {"name": "person.name", "title": "person.employment.title", "size": "company.employees"},
        "concurrency": 8,
        "retry": {"attempts": 3, "backoff": 0.01},
    }
    config.update(overrides)
    return config


def write_config(path: Path, config: dict[str, Any]) -> Path:
    """Write ``config`` as YAML to ``path`` and return it."""
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def start_redis(folder: Path, port: int | None = None, persist: bool = False) -> tuple[Any, str]:
    """A real redis-server of its own on 127.0.0.1 (Debian's; .ci/run installs it), keeping its
    files in ``folder``; a free port unless ``port`` is given. With ``persist`` every write goes to
    an append-only file, so a server stopped and started again on the same folder has kept it.
    Returns the process and its URL, once it answers."""
    import shutil
    import socket
    import subprocess
    import time

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (.ci/run installs it: apt-get install redis-server)")
    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    durability = ["--appendonly", "yes", "--appendfsync", "always"] if persist else ["--appendonly", "no"]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", *durability, "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"redis-server did not start on port {port}") from None
            time.sleep(0.05)
    return proc, f"redis://127.0.0.1:{port}/0"


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A Redis server of the test's own (``start_redis``), stopped at teardown."""
    proc, url = start_redis(tmp_path)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def summary_table(err: str, output: Path) -> dict[str, str]:
    """The closing table of ``enrich run`` on stderr, by row label (rows, calls, auth): the first
    line, the latency line (timings) and the summary line are checked here, by their form."""
    lines = err.splitlines()
    assert err.endswith("\n") and len(lines) == 6, err
    assert re.fullmatch(rf"enriched \d+ rows? in \d+\.\ds -> {re.escape(str(output))}", lines[0]), lines[0]
    labels = [line[:11] for line in lines[1:]]
    assert labels == ["  rows     ", "  calls    ", "  latency  ", "  auth     ", "  summary  "], lines
    latency = r"(p50 \d+(\.\d)? ms, p95 \d+(\.\d)? ms|no calls made); \d+\.\d calls/s \((limit \S+/s|no rate limit)\)"
    assert re.fullmatch(latency, lines[3][11:]), lines[3]
    assert lines[5][11:] == f"{output}.summary.json"
    return {label.strip(): line[11:] for label, line in zip(labels, lines[1:], strict=True)}


def known_people(tmp_path: Path, rows: int, with_id: bool = False) -> Path:
    """``tmp_path/in.csv``: ``rows`` people the demo API knows (no 404s), columns email, domain
    (and a leading id with ``with_id``)."""
    from enrich.demo_server import person_for

    emails = [e for e in (f"user{i}@example.com" for i in range(rows * 2)) if person_for(e) is not None][:rows]
    path = tmp_path / "in.csv"
    if with_id:
        text = "id,email,domain\n" + "".join(f"{i},{e},example.com\n" for i, e in enumerate(emails))
    else:
        text = "email,domain\n" + "".join(f"{e},example.com\n" for e in emails)
    path.write_text(text, "utf-8")
    return path


def busiest_second(times: list[float]) -> int:
    """The most arrivals in any one-second window (sliding, starting at each arrival)."""
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - 1.0:
            j += 1
        best = max(best, i - j + 1)
    return best


def demo_child_env() -> dict[str, str]:
    """The environment for an ``enrich`` subprocess run against the demo API (its credentials set)."""
    import os

    return {**os.environ, "DEMO_CLIENT_ID": DEFAULT_CLIENT_ID, "DEMO_CLIENT_SECRET": DEFAULT_CLIENT_SECRET}


def run_shards(config: Path, shards: int) -> None:
    """``enrich run CONFIG -q --shard I/N`` for every shard at once, as separate processes; each must exit 0."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "enrich", "run", str(config), "-q", "--shard", f"{i}/{shards}"],
            cwd=root,
            env=demo_child_env(),
            stderr=subprocess.PIPE,
        )
        for i in range(shards)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
