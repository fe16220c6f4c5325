"""enrich.dask: a Dask DataFrame's partitions through the engine, against real local servers.

The threaded scheduler shows the frame that comes back (order, index, values, dtypes) and
what is refused before anything runs; two-process LocalClusters show the shared rate limit
measured at the API and a killed worker whose tasks Dask re-runs against the Redis journal.
Per-row counts come from a middleware added to the demo app (the demo server itself keeps
only totals and arrival times).
"""

from __future__ import annotations

import bisect
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.dataframe as dd
import pandas as pd
import polars as pl
import pytest
from aiohttp import web
from conftest import RunningServer, Serve, busiest_second, demo_config, known_people

import enrich.dask
import enrich.engine
from enrich.demo_server import DemoSettings, create_app, person_for
from enrich.engine import RunOptions
from enrich.errors import AuthError, ConfigError, InputError

pytestmark = pytest.mark.slow  # starts redis-server or a Dask cluster

FIELDS = ["name", "title", "size"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    """What the counting middleware saw: calls per email, and when each call finished
    (``time.monotonic()``, the demo server's clock for ``call_times``)."""

    per_email: Counter[str] = field(default_factory=Counter)
    finished: list[tuple[float, str]] = field(default_factory=list)
    login_pids: list[int | None] = field(default_factory=list)


def counted_demo(
    serve: Serve, settings: DemoSettings | None = None, login_pids: bool = False
) -> tuple[RunningServer, Seen]:
    """The demo API with a middleware that counts the enrichment calls per email (and, with
    ``login_pids``, finds which local process sent each login, from its socket)."""
    seen = Seen()

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        email = request.match_info.get("email") if request.path.startswith("/v1/people/") else None
        if email is not None:
            seen.per_email[email] += 1
        if login_pids and request.path == "/auth/token":
            seen.login_pids.append(_peer_pid(request))
        try:
            return await handler(request)
        finally:
            if email is not None:
                seen.finished.append((time.monotonic(), email))

    app = create_app(settings or DemoSettings())
    app.middlewares.append(count)
    return serve(app), seen


def _peer_pid(request: web.Request) -> int | None:
    """The pid of the local process at the other end of the request's connection."""
    import psutil

    peer = request.transport.get_extra_info("peername") if request.transport else None
    if peer is None:
        return None
    for _ in range(5):  # a scan of /proc can miss a socket while processes come and go: look again
        for conn in psutil.net_connections(kind="tcp4"):
            if conn.laddr and (conn.laddr.ip, conn.laddr.port) == (peer[0], peer[1]) and conn.pid is not None:
                return conn.pid
        time.sleep(0.01)
    return None


def people(rows: int, tmp_path: Path) -> pd.DataFrame:
    """``rows`` people the demo API knows (no 404s), as a pandas frame (columns email, domain)."""
    return pd.read_csv(known_people(tmp_path, rows))


def shuffled_people(rows: int) -> pd.DataFrame:
    """Emails in a shuffled order, some unknown to the demo API (404), indexed 100, 101, ..."""
    emails = [f"user{i}@example.com" for i in range(rows)]
    random.Random(7).shuffle(emails)
    return pd.DataFrame({"email": emails, "domain": "example.com"}, index=pd.RangeIndex(100, 100 + rows))


def plain(values: Any) -> list[Any]:
    """A column as Python values, missing ones as None (pandas NA/NaN and polars null alike)."""
    return [None if v is None or (not isinstance(v, str) and pd.isna(v)) else v for v in list(values)]


# --- the threaded scheduler: the frame that comes back ------------------------------------------


def test_partitions_keep_order_index_values_and_dtypes(serve: Serve, demo_env: dict[str, str]) -> None:
    server, seen = counted_demo(serve)
    config = demo_config(server.url)
    config.pop("rate_limit", None)
    pdf = shuffled_people(40)
    assert any(person_for(e) is None for e in pdf["email"]), "some 404s, to compare errors too"
    ddf = dd.from_pandas(pdf, npartitions=3)
    assert ddf.npartitions == 3

    lazy = enrich.dask.enrich(ddf, config, journal=False)
    assert server.state.calls == 0 and server.state.logins == 0  # lazy: nothing ran yet
    assert list(lazy.columns) == [
        "email",
        "domain",
        *FIELDS,
        "_http_status",
        "_error",
        "_attempts",
        "_latency_ms",
    ]
    assert lazy.divisions == ddf.divisions
    out = lazy.compute(scheduler="threads")

    assert out.index.equals(pdf.index)
    assert out["email"].tolist() == pdf["email"].tolist()
    assert out["domain"].tolist() == pdf["domain"].tolist()
    assert out.dtypes.equals(lazy.dtypes)
    # Fields as text by default (one dtype for every partition); the diagnostics nullable.
    assert [str(t) for t in lazy.dtypes[[*FIELDS, "_http_status", "_error", "_attempts", "_latency_ms"]]] == [
        *["string"] * 3,
        "Int64",
        "string",
        "Int64",
        "Float64",
    ]
    assert dict(seen.per_email) == dict.fromkeys(pdf["email"], 1)  # each row called once
    assert server.state.logins == 3  # one login per partition

    # The same values as the engine gives for the whole frame at once (the fields as text).
    whole = enrich.engine.enrich(pl.from_pandas(pdf), config).frame
    for name in FIELDS:
        assert plain(out[name]) == plain(whole[name].cast(pl.String)), name
    for name in ["_http_status", "_error"]:
        assert plain(out[name]) == plain(whole[name]), name
    assert set(out["_http_status"].tolist()) == {200, 404}
    assert out["size"].dropna().str.fullmatch(r"\d+").all()  # 2319, not 2319.0

    # A dtype for a field column: that dtype, the same values.
    before = server.state.calls
    typed = enrich.dask.enrich(ddf, config, journal=False, dtypes={"size": "Int64"})
    assert str(typed.dtypes["size"]) == "Int64"
    typed_out = typed.compute(scheduler="threads")
    assert str(typed_out.dtypes["size"]) == "Int64"
    assert typed_out.dtypes.equals(typed.dtypes)
    assert plain(typed_out["size"]) == plain(whole["size"])
    assert typed_out.index.equals(pdf.index)
    assert server.state.calls - before == 40


def test_a_dtype_the_values_cannot_take_fails_naming_the_column(serve: Serve, demo_env: dict[str, str]) -> None:
    server = serve(create_app(DemoSettings()))
    ddf = dd.from_pandas(shuffled_people(12), npartitions=2)
    lazy = enrich.dask.enrich(ddf, demo_config(server.url), journal=False, dtypes={"name": "Int64"})
    assert str(lazy.dtypes["name"]) == "Int64"
    with pytest.raises(InputError) as caught:
        lazy.compute(scheduler="threads")
    message = str(caught.value)
    assert "'name'" in message and "Int64" in message and '"string"' in message, message


# --- refused before anything runs -------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("unshared rate limit", ["is kept by each process", "shared:", "redis://", "per_partition_limit=True"]),
        ("journal file argument", ["is a file", "redis://", "journal: false"]),
        ("journal file in config", ["is a file", "redis://", "journal: false"]),
        ("no journal", ["names no journal", "cannot be shared", "redis://", "journal=False"]),
        ("journal path object", ["is a file", "redis://", "journal=False"]),
        ("numpy bool dtype", ["'bool' cannot hold a missing value", "'boolean'"]),
        ("numpy int dtype", ["'int64' cannot hold a missing value", "'Int64'"]),
        ("numpy bytes dtype", ["'S' cannot hold a missing value", "'string'"]),
        ("journal=True against journal: false", ["journal=True", "says `journal: false`", "redis://"]),
        ("dtypes of no output column", ["'employees'", "not an output column", "name, title, size, _http_status"]),
        ("limit", ["`limit`", "partitions"]),
        ("shard", ["`shard`", "partitions"]),
    ],
)
def test_refused_before_any_call(
    case: str, words: list[str], tmp_path: Path, serve: Serve, demo_env: dict[str, str]
) -> None:
    server = serve(create_app(DemoSettings()))
    ddf = dd.from_pandas(people(12, tmp_path), npartitions=2)
    config = demo_config(server.url)
    kwargs: dict[str, Any] = {"journal": False}
    if case == "unshared rate limit":
        config["rate_limit"] = {"rate": "20/s", "burst": 2}
    elif case == "journal file argument":
        kwargs["journal"] = str(tmp_path / "people.journal")
    elif case == "journal file in config":
        config["journal"] = str(tmp_path / "people.journal")
        del kwargs["journal"]
    elif case == "no journal":
        del kwargs["journal"]
    elif case == "journal path object":
        kwargs["journal"] = tmp_path / "people.journal"
    elif case == "numpy bool dtype":
        kwargs["dtypes"] = {"name": "bool"}
    elif case == "numpy int dtype":
        kwargs["dtypes"] = {"size": "int64"}
    elif case == "numpy bytes dtype":
        kwargs["dtypes"] = {"title": "S"}
    elif case == "journal=True against journal: false":
        config["journal"] = False
        kwargs["journal"] = True
    elif case == "dtypes of no output column":
        kwargs["dtypes"] = {"size": "Int64", "employees": "Int64"}
    elif case == "limit":
        kwargs["options"] = RunOptions(limit=5)
    else:
        kwargs["options"] = RunOptions(shard=(0, 2))

    with pytest.raises(ConfigError) as caught:
        enrich.dask.enrich(ddf, config, **kwargs)  # raised here, not at compute
    message = str(caught.value)
    for word in words:
        assert word in message, (word, message)
    assert server.state.calls == 0 and server.state.logins == 0
    assert not (tmp_path / "people.journal").exists()


def test_per_partition_limit_and_a_redis_journal_are_accepted(
    tmp_path: Path, serve: Serve, redis_url: str, demo_env: dict[str, str]
) -> None:
    server = serve(create_app(DemoSettings()))
    pdf = people(12, tmp_path)
    ddf = dd.from_pandas(pdf, npartitions=2)
    limited = demo_config(server.url, rate_limit={"rate": "50/s", "burst": 2})
    out = enrich.dask.enrich(ddf, limited, journal=False, per_partition_limit=True).compute(scheduler="threads")
    assert out["_http_status"].tolist() == [200] * 12
    assert server.state.calls == 12

    # The journal in Redis, from the config: a second run takes every call from it.
    journaled = demo_config(server.url, journal=f"{redis_url}?prefix=dask-accepted")
    for _ in range(2):
        again = enrich.dask.enrich(ddf, journaled).compute(scheduler="threads")
        assert again.index.equals(pdf.index)
        assert plain(again["name"]) == plain(out["name"])
    assert server.state.calls == 24  # 12 by the first journaled run, 0 by the second


def test_a_failed_login_raises_auth_error_without_the_secret(
    tmp_path: Path, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve(create_app(DemoSettings()))
    wrong = "wrong-secret-9d41c7e2"
    monkeypatch.setenv("DEMO_CLIENT_ID", "demo-client")
    monkeypatch.setenv("DEMO_CLIENT_SECRET", wrong)
    lazy = enrich.dask.enrich(
        dd.from_pandas(people(12, tmp_path), npartitions=2), demo_config(server.url), journal=False
    )
    with pytest.raises(AuthError) as caught:
        lazy.compute(scheduler="threads")
    message = str(caught.value)
    print(f"\nAuthError: {message}")
    assert "401" in message and "/auth/token" in message
    assert wrong not in message and wrong not in repr(caught.value)
    assert server.state.logins == 0 and server.state.calls == 0


# --- a LocalCluster of two worker processes ---------------------------------------------------


def _cluster() -> Any:
    from distributed import LocalCluster

    return LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None)


def test_two_workers_share_one_limit_measured_at_the_api(
    tmp_path: Path, serve: Serve, redis_url: str, demo_env: dict[str, str]
) -> None:
    from distributed import Client, get_task_stream

    rows, rate, burst = 120, 20, 2
    server, seen = counted_demo(serve, login_pids=True)
    config = demo_config(
        server.url, rate_limit={"rate": f"{rate}/s", "burst": burst, "shared": redis_url, "key": "dask-limit"}
    )
    pdf = people(rows, tmp_path)
    lazy = enrich.dask.enrich(dd.from_pandas(pdf, npartitions=4), config, journal=False)
    with _cluster() as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        pids: dict[str, int] = client.run(os.getpid)
        with get_task_stream(client) as stream:
            out = client.compute(lazy).result(timeout=120)

    assert out.index.equals(pdf.index) and out["email"].tolist() == pdf["email"].tolist()
    assert out["_http_status"].tolist() == [200] * rows
    assert dict(seen.per_email) == dict.fromkeys(pdf["email"], 1)
    times = server.state.call_times
    busiest = busiest_second(times)
    ran_on = {task["worker"] for task in stream.data if "enrich" in str(task["key"])}
    print(
        f"\n{rows} rows, 4 partitions, 2 workers {sorted(pids.values())}: busiest second {busiest} "
        f"(limit {rate}/s + burst {burst}); over {max(times) - min(times):.1f}s; enrich tasks on {sorted(ran_on)}; "
        f"logins from pids {seen.login_pids}"
    )
    # Two processes at once, one limit between them, measured at the API.
    assert busiest <= rate + burst + 1
    assert max(times) - min(times) > (rows - burst) / rate * 0.9
    # Both workers ran partitions: by Dask's record, and by the processes that logged in.
    assert len([t for t in stream.data if "enrich" in str(t["key"])]) == 4
    assert ran_on == set(pids)
    assert len(seen.login_pids) == 4  # one login per partition
    assert {pid for pid in seen.login_pids if pid is not None} == set(pids.values())


def test_a_failed_login_on_a_worker_reaches_the_client_as_auth_error(
    tmp_path: Path, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The error crosses from a worker process to the client pickled: it must stay an AuthError
    (so `except AuthError` / `except EnrichError` works) and still hold no secret."""
    from distributed import Client

    server = serve(create_app(DemoSettings()))
    wrong = "wrong-secret-3b80f1aa"
    monkeypatch.setenv("DEMO_CLIENT_ID", "demo-client")
    monkeypatch.setenv("DEMO_CLIENT_SECRET", wrong)
    lazy = enrich.dask.enrich(
        dd.from_pandas(people(12, tmp_path), npartitions=2), demo_config(server.url), journal=False
    )
    with _cluster() as cluster, Client(cluster) as client, pytest.raises(Exception) as caught:
        client.compute(lazy).result(timeout=60)
    print(f"\nat the client: {type(caught.value).__module__}.{type(caught.value).__qualname__}: {caught.value}")
    assert isinstance(caught.value, AuthError), type(caught.value)
    assert "401" in str(caught.value) and wrong not in str(caught.value) and wrong not in repr(caught.value)
    assert server.state.logins == 0 and server.state.calls == 0


WRITE_WINDOW = 0.05  # seconds: a finished call is in Redis about one round trip after it ends


def test_a_killed_worker_reruns_its_partition_from_the_redis_journal(
    tmp_path: Path, serve: Serve, redis_url: str, demo_env: dict[str, str]
) -> None:
    from distributed import Client

    rows, parts, concurrency, rate = 200, 4, 4, 40
    server, seen = counted_demo(serve, DemoSettings(latency=0.05))
    config = demo_config(
        server.url,
        concurrency=concurrency,
        rate_limit={"rate": f"{rate}/s", "burst": 2, "shared": redis_url, "key": "dask-kill"},
    )
    pdf = people(rows, tmp_path)
    ddf = dd.from_pandas(pdf, npartitions=parts)
    lazy = enrich.dask.enrich(ddf, config, journal=f"{redis_url}?prefix=dask-kill")
    with _cluster() as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        pids: dict[str, int] = client.run(os.getpid)
        future = client.compute(lazy)
        deadline = time.monotonic() + 60
        while server.state.calls < rows // 3:
            assert time.monotonic() < deadline and not future.done(), "a third of the calls"
            time.sleep(0.01)
        # The worker to kill, and the partition it is running (its call stack names the task).
        while not (
            running := [(a, k) for a, stack in client.call_stack().items() for k in stack if "enrich" in str(k)]
        ):
            assert time.monotonic() < deadline and not future.done(), "a worker running a partition"
            time.sleep(0.01)
        victim, key = running[0]
        os.kill(pids[victim], signal.SIGKILL)
        killed_at = time.monotonic()
        calls_at_kill = server.state.calls
        assert not future.done(), "the run finished before the kill; make it slower"
        out = future.result(timeout=120)
        after: dict[str, int] = client.run(os.getpid)

    assert out.index.equals(pdf.index) and out["email"].tolist() == pdf["email"].tolist()
    assert out["_http_status"].tolist() == [200] * rows
    assert set(seen.per_email) == set(pdf["email"])
    assert max(seen.per_email.values()) <= 2
    twice = sum(1 for n in seen.per_email.values() if n == 2)
    # The killed partition's rows that the API had answered before the kill: without the journal
    # the rerun would call every one of them again.
    index = int(key[1])  # the task's key: (name, partition)
    lost = set(ddf.partitions[index].compute(scheduler="sync")["email"])
    done_before = {email for t, email in seen.finished if t <= killed_at and email in lost}
    ends = sorted(t for t, _ in seen.finished if t <= killed_at)
    per_write = max((bisect.bisect_right(ends, t + WRITE_WINDOW) - i for i, t in enumerate(ends)), default=0)
    bound = concurrency + per_write
    print(
        f"\nSIGKILL of worker {pids[victim]} (partition {index}) after {calls_at_kill} calls, {len(done_before)} "
        f"of its rows answered; workers after: {sorted(after.values())}; {server.state.calls} calls for {rows} "
        f"rows, {server.state.logins} logins: {twice} rows called twice, bound {bound} ({concurrency} in flight "
        f"+ {per_write} finished within {WRITE_WINDOW}s)"
    )
    assert len(done_before) >= 10, "the kill came before the partition had done any work"
    assert twice <= bound


def test_journal_false_keeps_partitions_in_memory_and_a_bad_journal_url_is_refused_up_front(
    serve: Callable[[web.Application], RunningServer], demo_env: dict[str, str], redis_url: str
) -> None:
    import redis

    server = serve(create_app(DemoSettings()))
    cfg = demo_config(server.url, journal=redis_url)
    cfg.pop("rate_limit", None)
    people = pd.DataFrame({"email": [f"user{i}@example.com" for i in range(6)], "domain": ["example.com"] * 6})
    ddf = dd.from_pandas(people, npartitions=2)
    # journal=False: the config's Redis journal is not used; nothing reaches Redis.
    first = enrich.dask.enrich(ddf, cfg, journal=False).compute(scheduler="sync")
    assert len(first) == 6
    client = redis.Redis.from_url(redis_url)
    try:
        assert list(client.scan_iter("enrich:journal:*")) == []
    finally:
        client.close()
    calls = server.state.calls
    assert (
        enrich.dask.enrich(ddf, cfg, journal=False)
        .compute(scheduler="sync")["_http_status"]
        .equals(first["_http_status"])
    )
    assert server.state.calls == 2 * calls  # in memory only: the second run calls again
    with pytest.raises(ConfigError, match=r"ttl='bogus'") as refused:
        enrich.dask.enrich(ddf, cfg, journal=f"{redis_url}?ttl=bogus")
    assert "enrich.dask.enrich(journal=...)" in str(refused.value)
    assert server.state.calls == 2 * calls


def test_one_runs_partitions_share_its_start_so_fresh_pays_each_call_once(
    serve: Serve, demo_env: dict[str, str], redis_url: str
) -> None:
    server = serve(create_app(DemoSettings()))
    cfg = demo_config(server.url, journal=f"{redis_url}?prefix=fresh")
    cfg.pop("rate_limit", None)
    pdf = pd.DataFrame({"email": [f"user{i}@example.com" for i in range(8)], "domain": ["example.com"] * 8})
    ddf = dd.from_pandas(pdf, npartitions=2)
    enrich.dask.enrich(ddf, cfg).compute(scheduler="sync")
    assert server.state.calls == 8
    fresh = enrich.dask.enrich(ddf, cfg, options=RunOptions(fresh=True))
    fresh.compute(scheduler="sync")
    assert server.state.calls == 16  # fresh: every call made again
    # The same lazy result computed again (or a partition re-run after its worker died): the
    # calls it made belong to this run, so fresh does not make them a third time.
    again = fresh.compute(scheduler="sync")
    assert server.state.calls == 16
    assert again["_http_status"].tolist() == [200 if person_for(e) else 404 for e in pdf["email"]]


def test_a_list_column_named_by_skip_if_filled_is_refused_up_front(serve: Serve, demo_env: dict[str, str]) -> None:
    import pyarrow as pa

    server = serve(create_app(DemoSettings()))
    cfg = demo_config(server.url, fields={"tags": "$.person.tags[*]"}, skip_if_filled=["tags"])
    cfg.pop("rate_limit", None)
    pdf = pd.DataFrame({"email": ["user1@example.com", "user2@example.com"], "domain": ["example.com"] * 2})
    # A list column, as dd.read_parquet gives one.
    pdf["tags"] = pd.Series([["kept", "by hand"], ["also"]], dtype=pd.ArrowDtype(pa.list_(pa.string())))
    with pytest.raises(ConfigError, match=r"`skip_if_filled` names 'tags', a List\(String\) column .* single values"):
        enrich.dask.enrich(dd.from_pandas(pdf, npartitions=1), cfg, journal=False)
    assert server.state.calls == 0
