"""Shared pieces of the benchmarks: test tables, the demo API in its own process, configs,
a measured ``enrich`` child process, result files and a small table printer.

    with DemoServer() as server:                            # `enrich demo-server` on a free port
        table = make_table(100_000)                         # bench/.data/people-100000.csv, cached
        config = write_config(workdir / "bench.yaml", server.port, table, workdir / "out.parquet")
        run = run_enrich(["run", str(config), "-q", "--concurrency", "64"])
        run.peak_rss_mb, run.seconds

Everything runs against 127.0.0.1 only.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
DATA = BENCH / ".data"  # generated tables; git-ignored
RESULTS = BENCH / "results"

DEMO_ENV = {"DEMO_CLIENT_ID": "demo-client", "DEMO_CLIENT_SECRET": "demo-secret-2f8a"}

# --- the enrich command --------------------------------------------------------------------


def enrich_command() -> list[str]:
    """How to start the CLI: the venv's ``enrich`` script beside this Python, else ``-m enrich``."""
    script = Path(sys.executable).with_name("enrich")
    return [str(script)] if script.exists() else [sys.executable, "-m", "enrich"]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    for key, value in DEMO_ENV.items():
        env.setdefault(key, value)
    return env


@dataclass(frozen=True, slots=True)
class Measured:
    """One finished child process: exit code, wall time, peak RSS, its output."""

    returncode: int
    seconds: float
    peak_rss_kib: int  # ru_maxrss of that child alone (KiB on Linux)
    stdout: str
    stderr: str

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss_kib * 1024 / 1e6


def run_enrich(args: Sequence[str], cwd: Path = ROOT, samples: list[tuple[float, int]] | None = None) -> Measured:
    """Run ``enrich ARGS`` and measure that one process: wall time and peak RSS (``os.wait4``).

    With ``samples``, its RSS is also read from /proc every 0.2 s, as (seconds, KiB) pairs.
    """
    started = time.perf_counter()
    proc = subprocess.Popen(
        [*enrich_command(), *args],
        cwd=cwd,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    sampler = None
    if samples is not None:
        sampler = threading.Thread(target=_sample_rss, args=(proc.pid, started, samples), daemon=True)
        sampler.start()
    # Not communicate(): it reaps the child, and the child's rusage with it.
    out, err = _drain(proc)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if sampler is not None:
        sampler.join()
    return Measured(proc.returncode, seconds, usage.ru_maxrss, out, err)


def _sample_rss(pid: int, started: float, samples: list[tuple[float, int]]) -> None:
    status = Path(f"/proc/{pid}/status")
    while True:
        try:
            text = status.read_text()
        except OSError:
            return
        match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
        if match is None:  # a zombie: the process has ended
            return
        samples.append((round(time.perf_counter() - started, 2), int(match.group(1))))
        time.sleep(0.2)


def _drain(proc: subprocess.Popen[bytes]) -> tuple[str, str]:
    """Read stdout and stderr to EOF without reaping the child (so ``wait4`` still gets its rusage)."""
    import selectors

    chunks: dict[Any, list[bytes]] = {proc.stdout: [], proc.stderr: []}
    sel = selectors.DefaultSelector()
    for stream in chunks:
        sel.register(stream, selectors.EVENT_READ)
    while sel.get_map():
        for key, _ in sel.select():
            data = os.read(key.fd, 65536)
            if data:
                chunks[key.fileobj].append(data)
            else:
                sel.unregister(key.fileobj)
                key.fileobj.close()  # type: ignore[union-attr]
    return (
        b"".join(chunks[proc.stdout]).decode(errors="replace"),
        b"".join(chunks[proc.stderr]).decode(errors="replace"),
    )


# --- the demo API ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the demo server exited with code {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the demo server is not listening on 127.0.0.1:{port} after {timeout:.0f}s")


class DemoServer:
    """``enrich demo-server`` in its own process on a free port: no latency, no rate limit."""

    def __init__(self, port: int | None = None, latency_ms: float = 0.0) -> None:
        self.port = port or free_port()
        self.latency_ms = latency_ms
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> DemoServer:
        self.proc = subprocess.Popen(
            [
                *enrich_command(),
                "demo-server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--latency-ms",
                str(self.latency_ms),
            ],
            cwd=ROOT,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(self.port, self.proc)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    """Terminate a child server (kill it after 10 s) and reap it; nothing if it has ended."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- test tables -------------------------------------------------------------------------------------

_TABLE_VERSION = 1  # bump when the generator changes, so cached tables are made again

FIRST = [
    "Ada", "Grace", "Alan", "Katherine", "Linus", "Margaret", "José", "Zoë", "Hiro", "Amara", "Søren", "Priya",
    "Chloé", "Mateo", "Aoife", "Björn", "Fatima", "Łukasz", "Olu", "Émile", "Sasha", "Ingrid", "Tomás", "Wei",
]  # fmt: skip
LAST = [
    "Lovelace", "Hopper", "Turing", "Johnson", "Torvalds", "Hamilton", "Muñoz", "Okafor", "Kierkegaard", "Iyer",
    "O'Brien", "Müller", "Dubois", "Kowalski", "Tanaka", "García", "Nakamura", "Smith-Jones", "Ødegaard", "Silva",
]  # fmt: skip
COMPANIES = [
    "acme", "globex", "initech", "umbrella-corp", "hooli", "stark", "wayne-enterprises", "piedpiper", "soylent",
    "tyrell", "cyberdyne", "wonka", "nakatomi", "massive-dynamic", "vandelay", "gringotts", "oscorp", "aperture",
]  # fmt: skip
TLDS = ["com", "io", "net", "co", "ai", "de", "fr", "jp", "co.uk", "com.br"]
COUNTRIES = ["US", "GB", "DE", "FR", "JP", "BR", "IN", "NG", "SE", "ES", ""]
_ASCII = str.maketrans({"é": "e", "ë": "e", "ö": "o", "ø": "o", "Ø": "o", "ñ": "n", "í": "i", "á": "a", "ł": "l",
                        "Ł": "l", "ü": "u", "ç": "c", "'": "", " ": ""})  # fmt: skip


def _slug(text: str) -> str:
    return text.lower().translate(_ASCII)


def make_table(rows: int, seed: int = 1) -> Path:
    """A CSV of ``rows`` made-up people, every email distinct (one call per row); cached in bench/.data/."""
    path = DATA / f"people-{rows}-v{_TABLE_VERSION}-s{seed}.csv"
    if path.exists():
        return path
    DATA.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    domains = [f"{c}.{t}" for c in COMPANIES for t in TLDS]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "first_name", "last_name", "email", "domain", "employees", "country", "signup_date"])
        for start in range(1, rows + 1, 50_000):
            batch = []
            for i in range(start, min(start + 50_000, rows + 1)):
                first, last, domain = rng.choice(FIRST), rng.choice(LAST), rng.choice(domains)
                email = f"{_slug(first)}.{_slug(last)}.{i}@{domain}"  # the row number keeps emails distinct
                batch.append(
                    (
                        i,
                        first,
                        last,
                        email,
                        domain,
                        "" if i % 17 == 0 else rng.randint(5, 20_000),
                        rng.choice(COUNTRIES),
                        f"20{rng.randint(15, 25)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                    )
                )
            writer.writerows(batch)
    os.replace(tmp, path)
    return path


# --- configs ----------------------------------------------------------------------------------------


def write_config(
    path: Path,
    port: int,
    input_path: Path,
    output: Path,
    concurrency: int = 64,
    rate_limit: str | None = None,
    journal: str | None = None,
) -> Path:
    """A config like configs/demo.yaml (login, GET per row, three fields) against the demo API on ``port``
    (``journal``: where it is kept, e.g. a redis:// URL; beside the output by default)."""
    lines = [
        f"input: {input_path}",
        f"output: {output}",
        "auth:",
        f"  url: http://127.0.0.1:{port}/auth/token",
        '  body: {client_id: "${DEMO_CLIENT_ID}", client_secret: "${DEMO_CLIENT_SECRET}"}',
        "  token_path: access_token",
        "request:",
        f'  url: "http://127.0.0.1:{port}/v1/people/{{{{email}}}}"',
        '  params: {domain: "{{domain}}"}',
        "  headers: {Accept: application/json}",
        "fields:",
        "  name: person.name",
        "  title: person.employment.title",
        "  company_size: company.employees",
        f"concurrency: {concurrency}",
    ]
    if rate_limit:
        lines.append(f"rate_limit: {rate_limit}")
    if journal:
        lines.append(f'journal: "{journal}"')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- results -------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import platform

    import polars as pl

    return {
        "python": platform.python_version(),
        "polars": pl.__version__,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }


def write_results(name: str, data: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain, right-aligned text table on stdout."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


@dataclass(frozen=True, slots=True)
class Run:
    """One finished command: its wall time and its own CPU time."""

    seconds: float
    cpu: float  # user + system seconds of the child alone
    returncode: int


def measure(cmd: list[str]) -> Run:
    """Run a command to completion; its wall time and its own CPU time (os.wait4)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {code}: {err.decode(errors='replace')[-2000:]}")
    return Run(seconds, usage.ru_utime + usage.ru_stime, code)
