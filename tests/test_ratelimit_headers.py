"""Pacing by the API's own rate-limit headers, and the stop when its quota is spent.

The parser is checked per header form; then real servers on 127.0.0.1 enforce a window (a
fixed number of calls per second, a 429 beyond it) and announce it in each form, and count what
reached them: the 429s they gave, and how full the run kept each window.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from conftest import RunningServer
from multidict import CIMultiDict
from test_http_safety import job, journal_rows, run

from enrich.allowance import Allowance, read_allowance

Serve = Callable[..., RunningServer]
NOW = 1_800_000_000.0  # the epoch time the parser is told it is

# --- the parser, per header form ------------------------------------------------------------------

PARSED = [
    # IETF draft, separate fields
    ({"RateLimit-Limit": "50", "RateLimit-Remaining": "12", "RateLimit-Reset": "2"}, Allowance(50, 12, 2.0)),
    # draft 3's limit with quota policies: the window comes from the policy that has one
    (
        {"RateLimit-Limit": "50, 50;w=2, 1000;w=3600", "RateLimit-Remaining": "7", "RateLimit-Reset": "1"},
        Allowance(50, 7, 1.0, 2.0),
    ),
    # IETF draft, combined field (draft 3), with a policy
    ({"RateLimit": "limit=50, remaining=12, reset=2", "RateLimit-Policy": "50;w=2"}, Allowance(50, 12, 2.0, 2.0)),
    # later drafts: structured fields, named policies
    ({"RateLimit": '"default";r=3;t=30', "RateLimit-Policy": '"default";q=100;w=60'}, Allowance(100, 3, 30.0, 60.0)),
    # the common X- form, reset in seconds
    ({"X-RateLimit-Limit": "20", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1"}, Allowance(20, 0, 1.0)),
    # ... reset as an epoch time, in seconds and in milliseconds
    (
        {"X-RateLimit-Limit": "20", "X-RateLimit-Remaining": "5", "X-RateLimit-Reset": "1800000003"},
        Allowance(20, 5, 3.0),
    ),
    (
        {"X-RateLimit-Limit": "20", "X-RateLimit-Remaining": "5", "X-RateLimit-Reset": "1800000003500"},
        Allowance(20, 5, 3.5),
    ),
    # an epoch time in the past: the window has reset
    ({"X-RateLimit-Remaining": "5", "X-RateLimit-Reset": "1799999000"}, Allowance(None, 5, 0.0)),
    # header names are not case-sensitive
    ({"x-ratelimit-remaining": "5", "x-ratelimit-reset": "4"}, Allowance(None, 5, 4.0)),
    # malformed or incomplete: ignored, never an error
    ({"X-RateLimit-Remaining": "many", "X-RateLimit-Reset": "1"}, None),
    ({"X-RateLimit-Remaining": "-3", "X-RateLimit-Reset": "1"}, None),
    ({"X-RateLimit-Remaining": "3", "X-RateLimit-Reset": "nan"}, None),
    ({"X-RateLimit-Remaining": "3"}, None),
    ({"RateLimit": "garbage"}, None),
    ({"RateLimit-Limit": "x", "RateLimit-Remaining": "3", "RateLimit-Reset": "1"}, Allowance(None, 3, 1.0)),
    ({}, None),
]


@pytest.mark.parametrize(("headers", "expected"), PARSED)
def test_each_header_form_is_read(headers: dict[str, str], expected: Allowance | None) -> None:
    assert read_allowance(CIMultiDict(headers), NOW) == expected


# --- servers that enforce a window and announce it ----------------------------------------------

LIMIT, WINDOW = 20, 1.0


def announce(form: str, remaining: int, window_end: float, now: float) -> dict[str, str]:
    """The headers of ``form`` for ``remaining`` calls left until ``window_end`` (epoch)."""
    seconds = str(math.ceil(window_end - now))  # whole seconds, rounded up as servers do
    if form == "ietf":
        return {"RateLimit-Limit": str(LIMIT), "RateLimit-Remaining": str(remaining), "RateLimit-Reset": seconds}
    if form == "ietf-combined":
        return {
            "RateLimit": f"limit={LIMIT}, remaining={remaining}, reset={seconds}",
            "RateLimit-Policy": f"{LIMIT};w={WINDOW:g}",
        }
    reset = seconds if form == "x-seconds" else str(int(window_end))
    return {"X-RateLimit-Limit": str(LIMIT), "X-RateLimit-Remaining": str(remaining), "X-RateLimit-Reset": reset}


def windowed_api(serve: Serve, form: str) -> tuple[RunningServer, dict[str, Any]]:
    """``LIMIT`` calls per ``WINDOW`` (fixed windows on the epoch clock), a 429 beyond it."""
    state: dict[str, Any] = {"per_window": Counter(), "throttled": 0, "served": 0}

    async def item(request: web.Request) -> web.Response:
        now = time.time()
        index = math.floor(now / WINDOW)
        end = (index + 1) * WINDOW
        state["per_window"][index] += 1
        used = state["per_window"][index]
        headers = announce(form, max(0, LIMIT - used), end, now)
        if used > LIMIT:
            state["throttled"] += 1
            return web.json_response({"error": "slow down"}, status=429, headers=headers)
        state["served"] += 1
        return web.json_response({"id": request.match_info["id"]}, headers=headers)

    app = web.Application()
    app.router.add_get("/v1/items/{id}", item)
    return serve(app), state


FORMS = ["ietf", "ietf-combined", "x-seconds", "x-epoch"]
ROWS = 90


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS)
def test_the_headers_pace_the_run(serve: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str], form: str) -> None:
    server, state = windowed_api(serve, form)
    ran = run(tmp_path, capsys, job(server.url + "/v1/items/{{id}}", concurrency=8), [f"r{i}" for i in range(ROWS)])
    assert ran.code == 0, ran.err
    assert state["served"] == ROWS
    # (almost) no 429: the first answers teach the window; none after
    assert state["throttled"] <= 1, state
    # (almost) all of the allowance: once the first window (the start's burst, a reset known to the
    # second only) is behind, each full window holds the limit, less a call or two
    windows = sorted(state["per_window"])
    inner = [state["per_window"][w] for w in windows[2:-1]]
    assert inner and min(inner) >= LIMIT - 3, state["per_window"]
    summary = orjson.loads((tmp_path / "out.csv.summary.json").read_bytes())
    announced = summary["announced"]
    assert (announced["limit"], announced["remaining_min"]) == (LIMIT, 0)
    assert announced["window_s"] == pytest.approx(WINDOW, abs=0.05)  # learned from the resets, if not announced
    print(f"{form}: 429s {state['throttled']}, calls per full window {inner}, used {announced['used']:.1%}")


@pytest.mark.slow
def test_a_fixed_rate_above_the_headers_is_held_to_them(
    serve: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, state = windowed_api(serve, "x-epoch")
    config = job(server.url + "/v1/items/{{id}}", concurrency=8, rate_limit="200/s")
    ran = run(tmp_path, capsys, config, [f"r{i}" for i in range(50)])
    assert ran.code == 0, ran.err
    assert state["throttled"] <= 1, state


# --- a quota spent until later than retry.max_retry_after ----------------------------------------

QUOTA = 12


def daily_quota(serve: Serve) -> tuple[RunningServer, dict[str, Any]]:
    """``QUOTA`` calls a day: the last one's answer says 0 left, reset in an hour; then 429s.
    Calls after the first are slow, so some are on the wire when the quota runs out."""
    state: dict[str, Any] = {"calls": 0, "after_spent": 0, "spent_at": None, "quota": QUOTA}

    async def item(request: web.Request) -> web.Response:
        state["calls"] += 1
        if state["spent_at"] is not None:
            state["after_spent"] += 1
        left = state["quota"] - 1
        headers = {"X-RateLimit-Limit": str(QUOTA), "X-RateLimit-Reset": str(int(time.time()) + 3600)}
        if left < 0:
            return web.json_response({"error": "quota"}, status=429, headers={**headers, "X-RateLimit-Remaining": "0"})
        state["quota"] = left
        if left == 0:
            state["spent_at"] = time.time()
        return web.json_response(
            {"id": request.match_info["id"]}, headers={**headers, "X-RateLimit-Remaining": str(left)}
        )

    app = web.Application()
    app.router.add_get("/v1/items/{id}", item)
    return serve(app), state


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_spent_quota_stops_the_run_resumably(
    serve: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str], concurrency: int
) -> None:
    server, state = daily_quota(serve)
    ids = [f"r{i:02d}" for i in range(30)]
    config = job(server.url + "/v1/items/{{id}}", concurrency=concurrency)
    first = run(tmp_path, capsys, config, ids)

    assert first.code == 3, first.err
    # No call after the spent answer but those already on the wire (none with one worker).
    assert state["after_spent"] <= concurrency - 1, state
    saved = journal_rows(first.journal)
    assert saved == QUOTA  # every answer the quota paid for is kept; a 429 is not an answer
    assert re.fullmatch(
        r"error: the API asked to wait 3\d\d\ds \(its quota spent, 0 calls left on HTTP 200\), more than "
        rf"retry\.max_retry_after \(300s\)\. {QUOTA} finished calls are saved in the journal "
        rf"{re.escape(str(first.journal))}; run the same command again after \d{{4}}-\d\d-\d\d \d\d:\d\d UTC\.\n",
        first.err,
    ), first.err
    assert not first.output.exists()

    state.update(quota=1000, spent_at=None)  # the next day
    calls_before = state["calls"]
    again = run(tmp_path, capsys, config, ids)
    assert again.code == 0, again.err
    assert state["calls"] - calls_before == len(ids) - QUOTA  # the rerun called only the rest
    assert [r["got"] for r in again.rows().values()] == ids
