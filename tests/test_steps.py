"""`steps:` end to end: chains and waterfalls of calls against real local servers.

The providers are small aiohttp apps on 127.0.0.1 that count the calls each receives, so a test
says exactly what each step paid for: a waterfall pays the second provider only for the first
one's misses, a chain passes the first step's values to the second, and a step added to a config
that already ran calls only that step.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
import yaml
from aiohttp import web
from conftest import Serve, run_cli, write_config

import enrich
from enrich.config import config_from_dict, load_config
from enrich.errors import ConfigError

ENRICH = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "enrich"
ALT_KEY = "alt-key-8c1"
COMPANIES = {"acme.io": 101, "globex.com": 202}  # domain -> company id; any other domain is unknown
SIGNALS = {101: True, 202: False}  # company id -> hiring
TITLES_A = {"ann@acme.io": "CTO", "bob@acme.io": "VP Sales"}  # provider A knows these
TITLES_B = {"bob@acme.io": "Head of Sales", "cy@globex.com": "Engineer", "dee@globex.com": "Designer"}
PEOPLE = [  # (email, domain)
    ("ann@acme.io", "acme.io"),
    ("bob@acme.io", "acme.io"),
    ("cy@globex.com", "globex.com"),
    ("dee@globex.com", "globex.com"),
    ("eve@nowhere.net", "nowhere.net"),
]


def providers_app() -> tuple[web.Application, Counter[str]]:
    """Provider A (companies, signals, people: no auth) and provider B (people, by X-Alt-Key);
    ``calls`` counts what each endpoint was asked, by its first path segment."""
    calls: Counter[str] = Counter()

    async def company(request: web.Request) -> web.Response:
        calls["company"] += 1
        found = COMPANIES.get(request.match_info["domain"])
        if found is None:
            return web.json_response({"error": "unknown company"}, status=404)
        return web.json_response({"company": {"id": found}})

    async def signals(request: web.Request) -> web.Response:
        calls["signals"] += 1
        return web.json_response({"signals": {"hiring": SIGNALS[int(request.match_info["id"])]}})

    async def person_a(request: web.Request) -> web.Response:
        calls["a"] += 1
        title = TITLES_A.get(request.match_info["email"])
        return web.json_response({"person": {"title": title}})  # a miss is a 200 with no title

    async def person_b(request: web.Request) -> web.Response:
        if request.headers.get("X-Alt-Key") != ALT_KEY:
            return web.json_response({"error": "bad key"}, status=401)
        calls["b"] += 1
        title = TITLES_B.get(request.query["email"])
        if title is None:
            return web.json_response({"error": "not found"}, status=404)
        return web.json_response({"data": {"job_title": title}})

    async def login(request: web.Request) -> web.Response:
        calls["login"] += 1
        return web.json_response({"token": "tok-1"})

    def guarded(handler: Any) -> Any:  # the same endpoint behind the login's token
        async def guard(request: web.Request) -> web.StreamResponse:
            if request.headers.get("Authorization") != "Bearer tok-1":
                return web.json_response({"error": "no token"}, status=401)
            return await handler(request)

        return guard

    app = web.Application()
    app.router.add_post("/login", login)
    app.router.add_get("/p/company/{domain}", guarded(company))
    app.router.add_get("/p/signals/{id}", guarded(signals))
    app.router.add_get("/company/{domain}", company)
    app.router.add_get("/signals/{id}", signals)
    app.router.add_get("/a/person/{email}", person_a)
    app.router.add_get("/b/person", person_b)
    return app, calls


def people_csv(folder: Path, rows: list[tuple[str, str]] = PEOPLE) -> Path:
    path = folder / "people.csv"
    pl.DataFrame({"email": [r[0] for r in rows], "domain": [r[1] for r in rows]}).write_csv(path)
    return path


def chain_steps(url: str) -> list[dict[str, Any]]:
    return [
        {
            "name": "company",
            "request": {"url": url + "/company/{{domain}}"},
            "fields": {"company_id": "company.id"},
        },
        {
            "name": "signals",
            "when": "company_id IS NOT NULL",
            "request": {"url": url + "/signals/{{company_id}}"},
            "fields": {"hiring": "signals.hiring"},
        },
    ]


def waterfall_steps(url: str) -> list[dict[str, Any]]:
    return [
        {"name": "a", "request": {"url": url + "/a/person/{{email}}"}, "fields": {"title": "person.title"}},
        {
            "name": "b",
            "auth": "alt",
            "rate_limit": "200/s",
            "request": {"url": url + "/b/person", "params": {"email": "{{email}}"}},
            "fields": {"title": "data.job_title"},
        },
    ]


def steps_config(folder: Path, steps: list[dict[str, Any]], **keys: Any) -> Path:
    config = {
        "input": str(people_csv(folder)),
        "output": str(folder / "out.parquet"),
        "auths": keys.pop("auths", {"alt": {"type": "header", "header": "X-Alt-Key", "token": ALT_KEY}}),
        "concurrency": 4,
        "retry": {"attempts": 2, "backoff": 0.01},
        "steps": steps,
        **keys,
    }
    return write_config(folder / "steps.yaml", config)


def by_email(path: Path) -> dict[str, dict[str, Any]]:
    return {row["email"]: row for row in pl.read_parquet(path).iter_rows(named=True)}


# --- the run ---------------------------------------------------------------------------------


def test_a_waterfall_pays_the_second_provider_only_for_the_first_ones_misses(tmp_path: Path, serve: Serve) -> None:
    app, calls = providers_app()
    server = serve(app)
    cfg = steps_config(tmp_path, waterfall_steps(server.url))
    assert run_cli(["run", str(cfg)]) == 0
    # A is asked for every row; B only for the three rows A found no title for.
    assert calls == {"a": 5, "b": 3}
    out = by_email(tmp_path / "out.parquet")
    assert {e: (r["title"], r["title_source"]) for e, r in out.items()} == {
        "ann@acme.io": ("CTO", "a"),
        "bob@acme.io": ("VP Sales", "a"),  # A's answer stands: B is never asked, so never overwrites it
        "cy@globex.com": ("Engineer", "b"),
        "dee@globex.com": ("Designer", "b"),
        "eve@nowhere.net": (None, None),
    }
    assert [c for c in pl.read_parquet(tmp_path / "out.parquet").columns if c.startswith("_")] == [
        "_a_http_status", "_a_error", "_a_attempts", "_a_latency_ms",
        "_b_http_status", "_b_error", "_b_attempts", "_b_latency_ms",
    ]  # fmt: skip
    assert out["eve@nowhere.net"]["_b_http_status"] == 404
    assert out["ann@acme.io"]["_b_http_status"] is None  # no call: the column it fills holds a value
    # Run again: the journal answers every step, nothing is paid twice.
    assert run_cli(["run", str(cfg)]) == 0
    assert calls == {"a": 5, "b": 3}


def test_a_chain_passes_the_first_steps_values_to_the_second(tmp_path: Path, serve: Serve) -> None:
    app, calls = providers_app()
    server = serve(app)
    cfg = steps_config(tmp_path, chain_steps(server.url))
    assert run_cli(["run", str(cfg)]) == 0
    # Two distinct domains are known (dedup: one call each); nowhere.net is not, so `when` leaves it out.
    assert calls == {"company": 3, "signals": 2}
    out = by_email(tmp_path / "out.parquet")
    assert {e: (r["company_id"], r["hiring"]) for e, r in out.items()} == {
        "ann@acme.io": (101, True),
        "bob@acme.io": (101, True),
        "cy@globex.com": (202, False),
        "dee@globex.com": (202, False),
        "eve@nowhere.net": (None, None),
    }
    eve = out["eve@nowhere.net"]
    assert (eve["_company_http_status"], eve["_signals_http_status"], eve["_signals_error"]) == (404, None, None)


def test_steps_that_name_one_auth_share_its_login(tmp_path: Path, serve: Serve) -> None:
    app, calls = providers_app()
    server = serve(app)
    steps = chain_steps(server.url + "/p")
    for s in steps:
        s["auth"] = "acme"
    auths = {"acme": {"url": server.url + "/login", "body": {"user": "u"}, "token_path": "token"}}
    cfg = steps_config(tmp_path, steps, auths=auths)
    assert run_cli(["run", str(cfg)]) == 0
    assert calls == {"login": 1, "company": 3, "signals": 2}


def test_a_step_whose_input_is_missing_makes_no_call_and_says_so(tmp_path: Path, serve: Serve) -> None:
    app, calls = providers_app()
    server = serve(app)
    steps = chain_steps(server.url)
    del steps[1]["when"]  # without `when`, the row whose company is unknown reaches the second step
    cfg = steps_config(tmp_path, steps)
    assert run_cli(["run", str(cfg)]) == 0
    assert calls == {"company": 3, "signals": 2}
    eve = by_email(tmp_path / "out.parquet")["eve@nowhere.net"]
    assert eve["_signals_error"] == (
        "not called: company_id (from step `company`) has no value for this row; the step before failed or found "
        "nothing"
    )
    assert eve["_signals_attempts"] == 0


def test_adding_a_step_to_a_config_that_ran_calls_only_the_new_step(tmp_path: Path, serve: Serve) -> None:
    app, calls = providers_app()
    server = serve(app)
    steps = chain_steps(server.url)
    cfg = steps_config(tmp_path, steps[:1])
    assert run_cli(["run", str(cfg)]) == 0
    assert calls == {"company": 3}
    cfg = steps_config(tmp_path, steps)
    assert run_cli(["run", str(cfg)]) == 0
    assert calls == {"company": 3, "signals": 2}  # the company step's answers came from the journal
    assert by_email(tmp_path / "out.parquet")["ann@acme.io"]["hiring"] is True


def test_a_one_step_config_and_its_journal_become_the_first_step(tmp_path: Path, serve: Serve) -> None:
    # The journal is keyed by the rendered request: a config that ran as one call keeps its answers
    # when it becomes the first of several steps.
    app, calls = providers_app()
    server = serve(app)
    first = chain_steps(server.url)[0]
    single = {k: v for k, v in first.items() if k != "name"}
    out = str(tmp_path / "out.parquet")
    cfg = write_config(tmp_path / "one.yaml", {"input": str(people_csv(tmp_path)), "output": out, **single})
    assert run_cli(["run", str(cfg)]) == 0
    assert calls == {"company": 3}
    cfg = steps_config(tmp_path, chain_steps(server.url))
    assert run_cli(["run", str(cfg)]) == 0
    assert calls == {"company": 3, "signals": 2}


# --- the config --------------------------------------------------------------------------------


STEP = {"name": "one", "request": {"url": "https://api.example.com/v1/{{email}}"}, "fields": {"title": "t"}}


def step(**keys: Any) -> dict[str, Any]:
    return {**STEP, **keys}


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        pytest.param(
            {"steps": [step(reqest={})]},
            "{src}, line 8: steps[0].reqest is not a known key. Did you mean `request`?",
            id="unknown-key-in-a-step",
        ),
        pytest.param(
            {"steps": [step(), step()]},
            "{src}, line 8: steps[1].name: 'one' is already the name of steps[0]. Give each step its own name: it "
            "names the step's columns.",
            id="duplicate-names",
        ),
        pytest.param(
            {"steps": [step(name="1st")]},
            "{src}, line 3: steps[0].name must be a name made of letters, digits and _ (not starting with a digit), "
            "e.g. company, got '1st'. It names the step's columns (_<name>_error).",
            id="a-name-that-is-not-an-identifier",
        ),
        pytest.param(
            {"steps": [{"request": STEP["request"]}]},
            "{src}, line 3: steps[0]: a step needs a `name` (letters, digits and _), e.g. `name: company`: it names "
            "the step's columns.",
            id="no-name",
        ),
        pytest.param(
            {"steps": [step(auth="acmee")], "auths": {"acme": {"type": "bearer", "token": "x"}}},
            "{src}, line 8: steps[0].auth: 'acmee' is not a name in `auths` (names: acme). Did you mean `acme`?",
            id="unknown-auth-name",
        ),
        pytest.param(
            {"steps": [step()], "request": STEP["request"]},
            "{src}, line 8: request: with `steps`, each step has its own `request`. Move it into the step it is "
            "for, or leave `steps` out for a config of one call.",
            id="steps-and-a-top-level-request",
        ),
        pytest.param(
            {"when": "email IS NOT NULL", "steps": [step()]},
            "{src}, line 2: when: with `steps`, each step has its own `when`. Move it into the step it is for, or "
            "leave `steps` out for a config of one call.",
            id="steps-and-a-top-level-when",
        ),
        pytest.param(
            {"steps": [step(concurrency=0)]},
            "{src}, line 8: steps[0].concurrency must be at least 1, got 0.",
            id="a-step-key-checked-as-at-the-top",
        ),
        pytest.param(
            {"steps": [step(cost=-1)]},
            "{src}, line 8: steps[0].cost must be at least 0, got -1.",
            id="negative-cost",
        ),
        pytest.param(
            {"auths": {"acme": {"type": "bearer", "token": "x"}}, "request": STEP["request"]},
            "{src}, line 2: auths: named auths are for `steps`. Give the one call's auth as `auth:`, or write the "
            "calls as `steps:` whose `auth:` names one of `auths`.",
            id="auths-without-steps",
        ),
        pytest.param(
            {"steps": [step(auth="alt")], "auths": {"alt": {"type": "header", "header": "X-Key"}}},
            "line 10: auths.alt: `auth.token` is missing",
            id="a-named-auths-message-names-its-place",
        ),
    ],
)
def test_a_wrong_steps_config_is_refused_before_any_call(tmp_path: Path, config: dict[str, Any], expected: str) -> None:
    path = write_config(tmp_path / "steps.yaml", {"input": "people.csv", **config})
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    if expected.startswith("{src}"):
        assert str(caught.value) == expected.format(src=path)
    else:
        assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        pytest.param(
            [step(request={"url": "https://api.example.com/v1/{{emial}}"})],
            "<config>: steps[0].request.url uses {{emial}}, which is neither a column of people.csv nor a field of "
            "an earlier step (columns: email, domain). Did you mean {{email}}?",
            id="a-column-nobody-gives",
        ),
        pytest.param(
            [
                step(request={"url": "https://api.example.com/v1/{{company_id}}"}),
                step(name="two", fields={"company_id": "id"}),
            ],
            "<config>: steps[0].request.url uses {{company_id}}, which step `two` gives, and it comes after step "
            "`one`. Move step `two` before step `one` in `steps`.",
            id="a-later-steps-column",
        ),
        pytest.param(
            [step(), step(name="two", when="titel IS NULL")],
            "<config>: steps[1].when uses 'titel', which is neither a column of people.csv nor a field of an earlier "
            "step (columns: email, domain; earlier steps give: title). Did you mean 'title'?",
            id="when-naming-a-column-nobody-gives",
        ),
        pytest.param(
            [step(fields={"title": "t", "_two_error": "e"}), step(name="two")],
            "<config>: step `one` names a field '_two_error', a column enrich adds to the output. Rename that field, "
            "or the step.",
            id="a-field-named-like-a-steps-status-column",
        ),
        pytest.param(
            [step(), step(name="two", fields={"title": "t", "title_source": "s"})],
            "<config>: step `two` names a field 'title_source', a column enrich adds to the output. Rename that "
            "field, or the field 'title'.",
            id="a-field-named-like-a-source-column",
        ),
    ],
)
def test_a_step_reading_a_column_nobody_gives_before_it_is_refused(steps: list[dict[str, Any]], expected: str) -> None:
    config = config_from_dict({"steps": steps})
    with pytest.raises(ConfigError) as caught:
        config.check_columns(["email", "domain"], "people.csv")
    assert str(caught.value) == expected


def test_top_level_keys_are_every_steps_defaults() -> None:
    config = config_from_dict({"concurrency": 3, "timeout": 5, "steps": [step(), step(name="two", concurrency=7)]})
    assert [(s.name, s.concurrency, s.timeout) for s in config.steps] == [("one", 3, 5.0), ("two", 7, 5.0)]


def test_a_shared_top_level_limit_is_each_steps_own_unless_a_step_names_its_key() -> None:
    shared = {"rate": "10/s", "shared": "redis://127.0.0.1:6379/0", "key": "acme"}
    steps = [
        {"name": "one", "request": {"url": "http://127.0.0.1:9/{{id}}"}},
        {"name": "two", "request": {"url": "http://127.0.0.1:9/{{id}}"}},
        {"name": "three", "request": {"url": "http://127.0.0.1:9/{{id}}"}, "rate_limit": shared},
    ]
    config = config_from_dict({"rate_limit": shared, "steps": steps})
    limits = [(s.rate_limit.key, s.rate_limit.per_second) for s in config.steps if s.rate_limit]
    assert limits == [("acme.one", 10.0), ("acme.two", 10.0), ("acme", 10.0)]


# --- pipelined, resumable --------------------------------------------------------------------


def echo_app(latency: float = 0.0) -> tuple[web.Application, list[tuple[float, str]]]:
    """Step one answers any key with an id, step two any id with a score; ``seen`` holds
    (arrival time, endpoint) of every call."""
    seen: list[tuple[float, str]] = []

    async def lookup(request: web.Request) -> web.Response:
        seen.append((time.monotonic(), "lookup"))
        await asyncio.sleep(latency)
        return web.json_response({"id": "id-" + request.match_info["key"]})

    async def score(request: web.Request) -> web.Response:
        seen.append((time.monotonic(), "score"))
        await asyncio.sleep(latency)
        return web.json_response({"score": len(request.match_info["id"])})

    app = web.Application()
    app.router.add_get("/lookup/{key}", lookup)
    app.router.add_get("/score/{id}", score)
    return app, seen


def echo_config(folder: Path, url: str, rows: int, **step_keys: Any) -> Path:
    path = folder / "keys.csv"
    pl.DataFrame({"key": [f"k{i}" for i in range(rows)]}).write_csv(path)
    steps = [
        {"name": "lookup", "request": {"url": url + "/lookup/{{key}}"}, "fields": {"rid": "id"}, **step_keys},
        {"name": "score", "request": {"url": url + "/score/{{rid}}"}, "fields": {"score": "score"}, **step_keys},
    ]
    return write_config(
        folder / "keys.yaml",
        {"input": str(path), "output": str(folder / "keys.parquet"), "retry": 1, "steps": steps},
    )


def test_a_rows_next_step_starts_as_soon_as_its_answer_is_in(tmp_path: Path, serve: Serve) -> None:
    # Two steps each limited to 20/s: staged, the second step would start after the first's last
    # call (about 1 s in); pipelined, it starts with the first row's answer.
    app, seen = echo_app()
    server = serve(app)
    cfg = echo_config(tmp_path, server.url, 20, rate_limit="20/s", concurrency=2)
    assert run_cli(["run", str(cfg)]) == 0
    lookups = [t for t, what in seen if what == "lookup"]
    scores = [t for t, what in seen if what == "score"]
    assert (len(lookups), len(scores)) == (20, 20)
    assert min(scores) < max(lookups) - 0.5, "the second step waited for the first to finish every row"
    assert max(scores) - min(lookups) < 1.6  # about N/R (1 s), not 2N/R
    assert pl.read_parquet(tmp_path / "keys.parquet")["score"].to_list() == [len(f"id-k{i}") for i in range(20)]


@pytest.mark.slow
def test_a_run_with_steps_killed_outright_resumes_with_only_the_calls_in_flight_repeated(
    tmp_path: Path, serve: Serve
) -> None:
    rows, concurrency = 120, 2
    app, seen = echo_app(latency=0.02)
    server = serve(app)
    cfg = echo_config(tmp_path, server.url, rows, concurrency=concurrency)
    first = subprocess.Popen([str(ENRICH), "run", str(cfg), "-q"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while sum(1 for _, what in seen if what == "score") < 30 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert first.poll() is None, "the run finished before the kill; make it slower"
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    before = Counter(what for _, what in seen)
    assert run_cli(["run", str(cfg)]) == 0
    after = Counter(what for _, what in seen)
    # Each step repeats at most the calls it had in flight, and whatever was saved a moment late.
    assert after["lookup"] <= rows + 2 * concurrency and after["score"] <= rows + 2 * concurrency
    assert after["lookup"] - before["lookup"] < rows  # the rerun took the rest from the journal
    out = pl.read_parquet(tmp_path / "keys.parquet")
    assert out["score"].to_list() == [len(f"id-k{i}") for i in range(rows)]


def test_a_trial_with_limit_pays_for_its_rows_once(tmp_path: Path, serve: Serve) -> None:
    app, seen = echo_app()
    server = serve(app)
    cfg = echo_config(tmp_path, server.url, 10)
    assert run_cli(["run", str(cfg), "--limit", "3"]) == 0
    assert Counter(what for _, what in seen) == {"lookup": 3, "score": 3}
    assert run_cli(["run", str(cfg)]) == 0
    assert Counter(what for _, what in seen) == {"lookup": 10, "score": 10}


def test_the_library_runs_steps_on_a_dataframe(serve: Serve) -> None:
    app, calls = providers_app()
    server = serve(app)
    frame = pl.DataFrame({"email": [r[0] for r in PEOPLE], "domain": [r[1] for r in PEOPLE]})
    config = {"steps": chain_steps(server.url), "retry": 1}
    result = enrich.enrich(frame, config)
    assert result.frame["company_id"].to_list() == [101, 101, 202, 202, None]
    assert result.frame["hiring"].to_list() == [True, True, False, False, None]
    assert (result.summary.rows, result.summary.ok, result.summary.failed) == (5, 4, 1)
    assert result.summary.failures == {"company: HTTP 404": 1}
    assert calls == {"company": 3, "signals": 2}


def test_extract_rebuilds_every_steps_fields_from_the_journal(tmp_path: Path, serve: Serve) -> None:
    app, calls = providers_app()
    server = serve(app)
    steps = chain_steps(server.url)
    cfg = steps_config(tmp_path, steps)
    assert run_cli(["run", str(cfg)]) == 0
    steps[1]["fields"] = {"signals": "signals"}  # the whole object now
    cfg = steps_config(tmp_path, steps)
    assert run_cli(["extract", str(cfg)]) == 0
    assert calls == {"company": 3, "signals": 2}  # no call: the bodies are in the journal
    out = by_email(tmp_path / "out.parquet")
    assert (out["ann@acme.io"]["company_id"], out["ann@acme.io"]["signals"]) == (101, '{"hiring":true}')


def test_validate_describes_each_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    steps = waterfall_steps("https://api.example.com")
    steps[1]["cost"] = 2
    cfg = steps_config(tmp_path, steps)
    assert run_cli(["validate", str(cfg)]) == 0
    assert capsys.readouterr().out.splitlines()[2:] == [
        "  step       a",
        "    request    GET https://api.example.com/a/person/{{email}}",
        "    auth       none",
        "    fields     title <- person.title",
        "    pace       no rate limit, concurrency 4, 2 attempts, timeout 30s",
        "  step       b (cost 2 per answered call)",
        "    request    GET https://api.example.com/b/person",
        "    auth       a fixed token (auth.token in the config), sent as X-Alt-Key: <token>",
        "    fields     title <- data.job_title",
        "    pace       200/s, concurrency 4, 2 attempts, timeout 30s",
        f"  output     {tmp_path / 'out.parquet'} (+ title, title_source, _a_http_status, _a_error, _a_attempts, "
        "_a_latency_ms, _b_http_status, _b_error, _b_attempts, _b_latency_ms)",
    ]


def test_fresh_calls_every_step_again(tmp_path: Path, serve: Serve) -> None:
    app, calls = providers_app()
    server = serve(app)
    cfg = steps_config(tmp_path, chain_steps(server.url))
    assert run_cli(["run", str(cfg)]) == 0
    assert run_cli(["run", str(cfg), "--fresh"]) == 0
    # Each distinct request once more, and no more: rows of this run that ask the same share a call.
    assert calls == {"company": 6, "signals": 4}


def test_a_value_the_input_already_holds_is_not_asked_for(tmp_path: Path, serve: Serve) -> None:
    """A waterfall column that the input fills for a row costs no call for it, even when no
    template reads it, and the row's `<column>_source` stays empty (the value is the input's)."""
    app, calls = providers_app()
    server = serve(app)
    cfg = steps_config(tmp_path, waterfall_steps(server.url))
    people = pl.read_csv(tmp_path / "people.csv").with_columns(
        title=pl.when(pl.col("email") == "cy@globex.com").then(pl.lit("Given")).otherwise(None)
    )
    people.write_csv(tmp_path / "people.csv")
    assert run_cli(["run", str(cfg)]) == 0
    assert calls == {"a": 4, "b": 2}  # cy@globex.com: neither provider asked
    cy = by_email(tmp_path / "out.parquet")["cy@globex.com"]
    assert (cy["title"], cy["title_source"], cy["_a_http_status"], cy["_b_http_status"]) == ("Given", None, None, None)


def test_one_endpoint_asked_with_two_accounts_answers_each(tmp_path: Path, serve: Serve) -> None:
    """Two steps sending the same request with two named auths are two questions: each account is
    asked (a waterfall across two API keys of one provider)."""
    keys: list[str] = []

    async def person(request: web.Request) -> web.Response:
        keys.append(request.headers["X-Key"])
        title = "Found" if request.headers["X-Key"] == "key-two" else None
        return web.json_response({"title": title})

    app = web.Application()
    app.router.add_get("/person/{email}", person)
    server = serve(app)
    steps = [
        {"name": name, "auth": name, "request": {"url": server.url + "/person/{{email}}"}, "fields": {"t": "title"}}
        for name in ("one", "two")
    ]
    auths = {name: {"type": "header", "header": "X-Key", "token": f"key-{name}"} for name in ("one", "two")}
    cfg = steps_config(tmp_path, steps, auths=auths)
    assert run_cli(["run", str(cfg)]) == 0
    assert Counter(keys) == {"key-one": 5, "key-two": 5}
    assert {r["t"] for r in by_email(tmp_path / "out.parquet").values()} == {"Found"}


def test_an_empty_list_is_a_miss_in_a_waterfall(tmp_path: Path, serve: Serve) -> None:
    """A provider that answers `[]` found nothing: the next one is asked."""
    calls: Counter[str] = Counter()

    async def first(request: web.Request) -> web.Response:
        calls["first"] += 1
        return web.json_response({"tags": []})

    async def second(request: web.Request) -> web.Response:
        calls["second"] += 1
        return web.json_response({"tags": ["x"]})

    app = web.Application()
    app.router.add_get("/first/{email}", first)
    app.router.add_get("/second/{email}", second)
    server = serve(app)
    steps = [
        {"name": n, "request": {"url": f"{server.url}/{n}/{{{{email}}}}"}, "fields": {"tags": "tags"}}
        for n in ("first", "second")
    ]
    assert run_cli(["run", str(steps_config(tmp_path, steps))]) == 0
    assert calls == {"first": 5, "second": 5}
    out = by_email(tmp_path / "out.parquet").values()
    assert {(r["tags"], r["tags_source"]) for r in out} == {('["x"]', "second")}  # a list is kept as its JSON


# --- what each step did, and what it cost ----------------------------------------------------------


def costed_waterfall(url: str, a: float = 1, b: float = 2) -> list[dict[str, Any]]:
    steps = waterfall_steps(url)
    steps[0]["cost"], steps[1]["cost"] = a, b
    return steps


def summary_of(folder: Path) -> dict[str, Any]:
    return orjson.loads((folder / "out.parquet.summary.json").read_bytes())


def test_the_summary_gives_each_steps_calls_answers_failures_credits_and_fill_rate(
    tmp_path: Path, serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    app, calls = providers_app()
    server = serve(app)
    cfg = steps_config(tmp_path, costed_waterfall(server.url))
    assert run_cli(["run", str(cfg)]) == 0
    assert calls == {"a": 5, "b": 3}
    summary = summary_of(tmp_path)
    a, b = summary["steps"]
    # A answered every row (a miss is a 200 with no title), and found two titles of five.
    assert {k: a[k] for k in ("name", "calls", "answered", "failed", "skipped", "credits", "fill")} == {
        "name": "a", "calls": 5, "answered": 5, "failed": 0, "skipped": 0, "credits": 5.0, "fill": {"title": 0.4},
    }  # fmt: skip
    # B was asked only for A's three misses: two answered (2 credits each), eve unknown (404, free).
    assert {k: b[k] for k in ("name", "calls", "answered", "failed", "failures", "skipped", "credits", "fill")} == {
        "name": "b", "calls": 3, "answered": 2, "failed": 1, "failures": {"HTTP 404": 1}, "skipped": 2,
        "credits": 4.0, "fill": {"title": 0.4},
    }  # fmt: skip
    assert a["latency_p50_ms"] is not None and b["latency_p95_ms"] is not None
    assert (summary["credits"], summary["fill"], summary["calls"]) == (9.0, {"title": 0.8}, 8)
    printed = capsys.readouterr().err
    assert "  steps    a  5 calls" in printed and "filled title 40.0%" in printed
    assert "  credits  9\n" in printed and "  fill     title 80.0%" in printed
    # A rerun pays nothing: the answers come from the journal.
    assert run_cli(["run", str(cfg)]) == 0
    summary = summary_of(tmp_path)
    assert [(s["calls"], s["answered"], s["credits"]) for s in summary["steps"]] == [(0, 5, 0.0), (0, 2, 0.0)]
    assert summary["fill"] == {"title": 0.8}


def test_a_one_step_summary_gives_each_fields_fill_rate(tmp_path: Path, serve: Serve) -> None:
    app, calls = providers_app()
    server = serve(app)
    cfg = write_config(
        tmp_path / "one.yaml",
        {
            "input": str(people_csv(tmp_path)),
            "output": str(tmp_path / "out.parquet"),
            "request": {"url": server.url + "/a/person/{{email}}"},
            "fields": {"title": "person.title"},
        },
    )
    assert run_cli(["run", str(cfg)]) == 0
    assert calls == {"a": 5}
    summary = summary_of(tmp_path)
    assert (summary["fill"], summary["steps"], summary["credits"]) == ({"title": 0.4}, [], 0.0)


@pytest.mark.parametrize("flag", [True, False])
def test_max_cost_stops_the_run_before_it_would_spend_more_and_a_rerun_goes_on(
    tmp_path: Path, serve: Serve, capsys: pytest.CaptureFixture[str], flag: bool
) -> None:
    app, calls = providers_app()
    server = serve(app)
    keys = {} if flag else {"max_cost": 4}
    cfg = steps_config(tmp_path, costed_waterfall(server.url), **keys)
    assert run_cli(["run", str(cfg), *(["--max-cost", "4"] if flag else [])]) == 3
    err = capsys.readouterr().err
    assert "stopped before this run spent more than max_cost (4 credits): it spent " in err
    assert "are done and saved in the journal; " in err and "or raise --max-cost to do more in one run" in err
    first = Counter(calls)
    stop = summary_of(tmp_path)
    assert (stop["status"], stop["exit_code"]) == ("aborted", 3)
    assert not (tmp_path / "out.parquet").exists()
    # A answers every call it gets (1 credit), B answers cy and dee (2 credits) and not eve (free):
    # what was paid stays within the limit.
    assert first["a"] + 2 * min(first["b"], 2) <= 4
    assert run_cli(["run", str(cfg), "--max-cost", "100"]) == 0
    # Over both runs each call was made once: the first run's answers came from the journal.
    assert calls == {"a": 5, "b": 3}
    summary = summary_of(tmp_path)
    assert summary["credits"] == 9 - first["a"] - 2 * min(first["b"], 2)
    assert by_email(tmp_path / "out.parquet")["dee@globex.com"]["title"] == "Designer"


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"max_cost": 10}, "no step has a `cost`, so there is nothing to count against max_cost"),
        ({"max_cost": -1}, "line 27: max_cost must be at least 0, got -1."),
    ],
)
def test_max_cost_without_costs_is_refused(tmp_path: Path, keys: dict[str, Any], expected: str) -> None:
    cfg = steps_config(tmp_path, waterfall_steps("http://127.0.0.1:9"), **keys)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(cfg)


def test_max_cost_on_a_one_call_config_is_refused(tmp_path: Path) -> None:
    data = {"input": "x.csv", "request": {"url": "http://127.0.0.1:9/{{id}}"}, "max_cost": 5}
    with pytest.raises(ConfigError, match="this config has no steps"):
        config_from_dict(data)


# --- shards, Redis, Dask -------------------------------------------------------------------------


def test_shards_of_a_run_with_steps_call_each_request_once_and_merge_to_the_whole_run(
    tmp_path: Path, serve: Serve
) -> None:
    app, calls = providers_app()
    server = serve(app)
    cfg = steps_config(tmp_path, chain_steps(server.url) + costed_waterfall(server.url))
    for i in range(3):
        assert run_cli(["run", str(cfg), "--shard", f"{i}/3"]) == 0
    # The shards split the rows by the first step's request: together they make the whole run's calls.
    assert calls == {"company": 3, "signals": 2, "a": 5, "b": 3}
    parts = [tmp_path / f"out.shard-{i}-of-3.parquet" for i in range(3)]
    assert sum(pl.read_parquet(p).height for p in parts) == len(PEOPLE)
    assert run_cli(["merge", *map(str, parts), "--output", str(tmp_path / "merged.parquet")]) == 0
    assert run_cli(["run", str(cfg)]) == 0  # the whole run, with a journal of its own
    assert calls == {"company": 6, "signals": 4, "a": 10, "b": 6}
    whole = pl.read_parquet(tmp_path / "out.parquet")
    merged = pl.read_parquet(tmp_path / "merged.parquet")
    steps_columns = [c for c in whole.columns if not c.endswith("_latency_ms")]  # the rerun's are the journal's
    assert merged.select(steps_columns).equals(whole.select(steps_columns))


# --- before the run: --dry-run, preview -----------------------------------------------------------


def test_dry_run_counts_each_steps_calls_and_credits_and_sends_nothing(
    tmp_path: Path, serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    app, calls = providers_app()
    server = serve(app)
    steps = chain_steps(server.url) + costed_waterfall(server.url)
    steps[0]["auth"] = "alt"  # the first step's curl lines carry its key, masked
    cfg = steps_config(tmp_path, steps, max_cost=50)
    assert run_cli(["run", str(cfg), "--dry-run", "3"]) == 0
    out = capsys.readouterr().out
    assert calls == {}
    assert not (tmp_path / "out.parquet").exists()
    assert ALT_KEY not in out and "X-Alt-Key: ***" in out
    assert out.count("curl ") == 3 and f"curl {server.url}/company/acme.io -H 'X-Alt-Key: ***'" in out
    assert "# step signals, once it has company_id (from step `company`):\n" in out
    assert f"#   GET {server.url}/signals/{{{{company_id}}}}\n" in out
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("  step ")}
    # company: 3 distinct domains; signals waits for them (at most one call per row); A asks every
    # row; B waits for A's answers (at most every row), at 2 credits each.
    assert "  3 calls to make, 0 in the journal" in lines["company"]
    assert "0 calls to make + up to 3 once earlier steps answer" in lines["signals"]  # one per company call
    assert "5 calls to make, 0 in the journal" in lines["a"] and lines["a"].endswith("at most 5 credits")
    assert "+ up to 5 once earlier steps answer" in lines["b"] and lines["b"].endswith("at most 10 credits")
    assert "  credits  at most 15, if every call is answered (max_cost 50" in out
    # Once the journal holds the first steps' answers, the later steps' counts are exact.
    assert run_cli(["run", str(cfg), "--limit", "2", "-q"]) == 0
    assert calls == {"company": 1, "signals": 1, "a": 2}
    capsys.readouterr()
    assert run_cli(["run", str(cfg), "--dry-run"]) == 0
    lines = {line.split()[1]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  step ")}
    assert "2 calls to make, 1 in the journal" in lines["company"]
    assert "0 calls to make + up to 2 once earlier steps answer, 1 in the journal" in lines["signals"]
    assert "3 calls to make, 2 in the journal" in lines["a"]
    assert "2 without a call" in lines["b"]  # ann and bob have A's title: B is never asked for them
    assert calls == {"company": 1, "signals": 1, "a": 2}


def test_preview_runs_every_step_for_a_few_rows_and_shows_each_answer(
    tmp_path: Path, serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    app, calls = providers_app()
    server = serve(app)
    steps = chain_steps(server.url) + waterfall_steps(server.url)
    del steps[1]["when"]
    cfg = steps_config(tmp_path, steps)
    assert run_cli(["preview", str(cfg), "--rows", "5"]) == 0
    out = capsys.readouterr().out
    # Every step for each row, rows asking the same sharing one call; nothing kept.
    assert calls == {"company": 3, "signals": 2, "a": 5, "b": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["people.csv", "steps.yaml"]
    rows = out.split("\n\nrow ")
    assert len(rows) == 5
    assert f"  step signals: GET {server.url}/signals/101\n    HTTP 200" in rows[0]
    assert "        signals.hiring  true\n" in rows[0]
    assert "  step b: no call: every column it fills has a value (title from step `a`)" in rows[0]
    assert '      title = "Engineer"' in rows[2]
    assert "  step signals: not called: company_id (from step `company`) has no value for this row" in rows[4]
    assert "    error: HTTP 404 Not Found" in rows[4]
    assert ALT_KEY not in out


def test_errors_out_holds_each_failed_row_with_the_step_it_failed_by_and_its_request(
    tmp_path: Path, serve: Serve
) -> None:
    app, calls = providers_app()
    server = serve(app)
    steps = chain_steps(server.url) + waterfall_steps(server.url)
    del steps[1]["when"]  # eve's signals step cannot run: its input is missing
    cfg = steps_config(tmp_path, steps, errors_out=str(tmp_path / "failed.csv"))
    assert run_cli(["run", str(cfg)]) == 0
    failed = pl.read_csv(tmp_path / "failed.csv")
    # Only eve failed: by the company step (404), the first step that failed and that no later
    # step made up for. cy and dee missed at A but B found them: not failures.
    assert failed.columns == [
        "_row", "domain", "email", "_step", "_request_method", "_request_url", "_request_headers",
        "_request_body", "_http_status", "_error", "_attempts",
    ]  # fmt: skip
    row = failed.row(0, named=True)
    assert failed.height == 1 and (row["_row"], row["email"], row["_step"]) == (4, "eve@nowhere.net", "company")
    assert (row["_request_method"], row["_request_url"]) == ("GET", f"{server.url}/company/nowhere.net")
    assert (row["_http_status"], row["_error"]) == (404, 'HTTP 404 Not Found: {"error": "unknown company"}')
    assert calls["b"] == 3


def test_errors_out_shows_a_failed_steps_key_masked(tmp_path: Path, serve: Serve) -> None:
    app, _ = providers_app()
    server = serve(app)
    steps = waterfall_steps(server.url)
    steps[1]["request"]["params"]["key"] = "${ALT_KEY}"  # a secret in the query string too
    cfg = steps_config(tmp_path, steps, errors_out=str(tmp_path / "failed.csv"), secrets=["ALT_KEY"])
    os.environ["ALT_KEY"] = "query-secret-77"
    try:
        assert run_cli(["run", str(cfg)]) == 0
    finally:
        del os.environ["ALT_KEY"]
    text = (tmp_path / "failed.csv").read_text()
    row = pl.read_csv(tmp_path / "failed.csv").row(0, named=True)
    assert (row["email"], row["_step"], row["_http_status"]) == ("eve@nowhere.net", "b", 404)
    assert "X-Alt-Key" in row["_request_headers"] and ALT_KEY not in text and "query-secret-77" not in text
    assert "key=%2A%2A%2A" in row["_request_url"] or "key=***" in row["_request_url"]


def redis_keys(url: str, pattern: str) -> list[bytes]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return sorted(client.scan_iter(pattern))
    finally:
        client.close()


@pytest.mark.slow  # starts redis-server
def test_steps_keep_their_calls_in_the_redis_journal_and_share_a_limit_per_step(
    tmp_path: Path, serve: Serve, redis_url: str
) -> None:
    app, calls = providers_app()
    server = serve(app)
    limit = {"rate": "200/s", "shared": redis_url, "key": "acme"}
    steps = chain_steps(server.url) + costed_waterfall(server.url)
    del steps[3]["rate_limit"]  # every step takes the top-level limit
    cfg = steps_config(tmp_path, steps, journal=redis_url, rate_limit=limit)
    for i in range(2):  # two shards, one journal in Redis
        assert run_cli(["run", str(cfg), "--shard", f"{i}/2", "-q"]) == 0
    assert calls == {"company": 3, "signals": 2, "a": 5, "b": 3}
    journal = redis_keys(redis_url, "enrich:journal:*")
    assert len([k for k in journal if not k.endswith(b":count")]) >= 3 + 2 + 5 + 3
    # Each step keeps the top-level limit as its own, under a key of its own.
    limits = {k.decode() for k in redis_keys(redis_url, "enrich:limit:*")}
    assert {f"enrich:limit:acme.{s}:tat" for s in ("company", "signals", "a", "b")} <= limits
    # The whole run, and the same config run as one: every step's answer is in Redis already.
    assert run_cli(["run", str(cfg), "-q"]) == 0
    assert calls == {"company": 3, "signals": 2, "a": 5, "b": 3}
    assert by_email(tmp_path / "out.parquet")["cy@globex.com"]["title"] == "Engineer"


@pytest.mark.slow  # starts redis-server and Dask
def test_enrich_dask_runs_steps_on_partitions_through_the_redis_journal(serve: Serve, redis_url: str) -> None:
    import dask.dataframe as dd
    import pandas as pd

    import enrich.dask

    app, calls = providers_app()
    server = serve(app)
    config = {
        "auths": {"alt": {"type": "header", "header": "X-Alt-Key", "token": ALT_KEY}},
        "journal": redis_url,
        "output": "people.parquet",
        "steps": chain_steps(server.url) + costed_waterfall(server.url),
    }
    config["steps"][3].pop("rate_limit")  # a per-process limit: refused on a cluster unless shared
    pdf = pd.DataFrame({"email": [p[0] for p in PEOPLE], "domain": [p[1] for p in PEOPLE]})
    ddf = dd.from_pandas(pdf, npartitions=2)
    lazy = enrich.dask.enrich(ddf, config)
    assert list(lazy.columns)[:7] == [
        "email",
        "domain",
        "company_id",
        "hiring",
        "title",
        "title_source",
        "_company_http_status",
    ]
    out = lazy.compute(scheduler="threads")
    # globex.com is in both partitions, which run at once: each may ask it before the other's answer is in.
    assert calls["company"] in (3, 4) and calls["signals"] in (2, 3) and (calls["a"], calls["b"]) == (5, 3)
    first = Counter(calls)
    assert out["title"].tolist() == ["CTO", "VP Sales", "Engineer", "Designer", pd.NA]
    assert out["title_source"].tolist() == ["a", "a", "b", "b", pd.NA]
    assert str(out.dtypes["_b_http_status"]) == "Int64" and out["_b_http_status"].tolist()[2:] == [200, 200, 404]
    assert lazy.compute(scheduler="threads").equals(out) and calls == first  # computed again: from Redis
    config["steps"][3]["rate_limit"] = "10/s"
    with pytest.raises(ConfigError, match="of step `b` is kept by each process"):
        enrich.dask.enrich(ddf, config)


def test_when_on_an_earlier_steps_field_sees_each_rows_value_as_it_is_whatever_its_type(
    tmp_path: Path, serve: Serve
) -> None:
    # The API gives one company's id as a number and another's as text: `when` evaluated for many
    # rows at once must not coerce one kind into the other (101 would become "101", or be lost).
    ids: dict[str, Any] = {"acme.io": 101, "globex.com": "g-202"}
    seen: list[str] = []

    async def company(request: web.Request) -> web.Response:
        found = ids.get(request.match_info["domain"])
        return web.json_response({"company": {"id": found}}) if found else web.json_response({}, status=404)

    async def signals(request: web.Request) -> web.Response:
        seen.append(request.match_info["id"])
        return web.json_response({"signals": {"hiring": True}})

    app = web.Application()
    app.router.add_get("/company/{domain}", company)
    app.router.add_get("/signals/{id}", signals)
    server = serve(app)
    steps = chain_steps(server.url)
    cfg = steps_config(tmp_path, steps)  # when: company_id IS NOT NULL
    assert run_cli(["run", str(cfg)]) == 0
    assert sorted(seen) == ["101", "g-202"]
    out = by_email(tmp_path / "out.parquet")
    assert [out[e]["hiring"] for e, _ in PEOPLE] == [True, True, True, True, None]
    # A `when` that compares the id with text cannot take a number: those rows fail at the step,
    # saying why, and the others go on.
    steps[1]["when"] = "company_id <> 'g-999'"
    steps[1]["request"]["url"] += "?v=2"
    cfg = steps_config(tmp_path, steps)
    assert run_cli(["run", str(cfg)]) == 0
    assert sorted(seen) == ["101", "g-202", "g-202"]
    out = by_email(tmp_path / "out.parquet")
    assert out["cy@globex.com"]["hiring"] is True and out["ann@acme.io"]["hiring"] is None
    assert out["ann@acme.io"]["_signals_error"].startswith(
        "`when` of step `signals` cannot be evaluated for this row (company_id is a number): cannot compare string "
        "with numeric type"
    )
    assert summary_of(tmp_path)["failures"] == {"signals: bad row data": 2, "company: HTTP 404": 1}


def test_two_steps_on_one_auth_share_its_refresh_when_the_token_expires_mid_run(tmp_path: Path, serve: Serve) -> None:
    # The API rejects every token after it has served six calls (401): both steps' calls in flight
    # then fail at once, and the one login they share is renewed once for all of them.
    state = {"token": "", "served": 0, "logins": 0}

    async def login(request: web.Request) -> web.Response:
        state["logins"] += 1
        state["token"], state["served"] = f"tok-{state['logins']}", 0
        return web.json_response({"token": state["token"]})

    def guarded(answer: Any) -> Any:
        async def handler(request: web.Request) -> web.Response:
            if request.headers.get("Authorization") != f"Bearer {state['token']}" or state["served"] >= 6:
                return web.json_response({"error": "token expired"}, status=401)
            state["served"] += 1
            await asyncio.sleep(0.005)
            return web.json_response(answer(request))

        return handler

    app = web.Application()
    app.router.add_post("/login", login)
    app.router.add_get("/lookup/{key}", guarded(lambda r: {"id": "id-" + r.match_info["key"]}))
    app.router.add_get("/score/{id}", guarded(lambda r: {"score": len(r.match_info["id"])}))
    server = serve(app)
    cfg = echo_config(tmp_path, server.url, 8, auth="acme", concurrency=4)
    data = yaml.safe_load(cfg.read_text())
    data["auths"] = {"acme": {"url": server.url + "/login", "body": {"user": "u"}, "token_path": "token"}}
    write_config(cfg, data)
    assert run_cli(["run", str(cfg)]) == 0
    out = pl.read_parquet(tmp_path / "keys.parquet")
    assert out["score"].to_list() == [len(f"id-k{i}") for i in range(8)]
    # 16 calls at six per token: three tokens, each fetched once for both steps (no refresh storm).
    assert state["logins"] == 3


def test_changing_a_steps_request_calls_that_step_again_and_later_steps_only_where_their_input_changed(
    tmp_path: Path, serve: Serve
) -> None:
    app, calls = providers_app()
    server = serve(app)
    steps = chain_steps(server.url) + waterfall_steps(server.url)
    cfg = steps_config(tmp_path, steps)
    assert run_cli(["run", str(cfg)]) == 0
    assert calls == {"company": 3, "signals": 2, "a": 5, "b": 3}
    # The company step asks anew (another URL); it finds the same ids, so signals asks what the
    # journal holds; the person steps read nothing of it.
    steps[0]["request"]["url"] += "?v=2"
    assert run_cli(["run", str(steps_config(tmp_path, steps))]) == 0
    assert calls == {"company": 6, "signals": 2, "a": 5, "b": 3}
    # Now it finds another id for acme.io: signals is asked again for that company's rows alone.
    COMPANIES["acme.io"], SIGNALS[303] = 303, False
    try:
        steps[0]["request"]["url"] += "&v=3"
        assert run_cli(["run", str(steps_config(tmp_path, steps))]) == 0
    finally:
        COMPANIES["acme.io"] = 101
        del SIGNALS[303]
    assert calls == {"company": 9, "signals": 3, "a": 5, "b": 3}
    assert by_email(tmp_path / "out.parquet")["ann@acme.io"]["company_id"] == 303


def test_a_step_that_stops_the_run_lets_the_other_steps_calls_in_flight_reach_the_journal(
    tmp_path: Path, serve: Serve
) -> None:
    # Step `lookup` is slow; step `score` answers 429 with a Retry-After of an hour: the run stops
    # (exit 3), and the lookups already sent get their answers saved, so the rerun repeats none.
    sent: Counter[str] = Counter()
    throttle = {"on": True}

    async def lookup(request: web.Request) -> web.Response:
        sent[request.match_info["key"]] += 1
        await asyncio.sleep(0.3)
        return web.json_response({"id": "id-" + request.match_info["key"]})

    async def score(request: web.Request) -> web.Response:
        if throttle["on"]:
            return web.json_response({"error": "quota"}, status=429, headers={"Retry-After": "3600"})
        return web.json_response({"score": len(request.match_info["id"])})

    app = web.Application()
    app.router.add_get("/lookup/{key}", lookup)
    app.router.add_get("/score/{id}", score)
    server = serve(app)
    cfg = echo_config(tmp_path, server.url, 24, concurrency=4)
    assert run_cli(["run", str(cfg), "-q"]) == 3
    first = sum(sent.values())
    assert first > 4, "the lookups in flight when the run stopped were sent"
    throttle["on"] = False
    assert run_cli(["run", str(cfg), "-q"]) == 0
    assert max(sent.values()) == 1 and len(sent) == 24  # no lookup sent twice
    out = pl.read_parquet(tmp_path / "keys.parquet")
    assert out["score"].to_list() == [len(f"id-k{i}") for i in range(24)]


def test_a_list_or_object_an_earlier_step_found_goes_into_a_later_request_as_json(tmp_path: Path, serve: Serve) -> None:
    got: list[dict[str, Any]] = []

    async def first(request: web.Request) -> web.Response:
        return web.json_response({"tags": ["a", "b", 1, None, True], "obj": {"k": "v/x?y", "n": 1}})

    async def second(request: web.Request) -> web.Response:
        got.append(
            {
                "path": request.match_info["tags"],
                "q": request.query["obj"],
                "header": request.headers["X-Tags"],
                "body": await request.json(),
            }
        )
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/first/{key}", first)
    app.router.add_post("/second/{tags}", second)
    server = serve(app)
    steps = [
        {"name": "one", "request": {"url": server.url + "/first/{{key}}"}, "fields": {"tags": "tags", "obj": "obj"}},
        {
            "name": "two",
            "request": {
                "method": "POST",
                "url": server.url + "/second/{{tags}}",
                "params": {"obj": "{{obj}}"},
                "headers": {"X-Tags": "{{tags}}"},
                "body": {"text": "tags={{tags}}", "typed": "{{obj}}"},
            },
            "fields": {"ok": "ok"},
        },
    ]
    path = tmp_path / "keys.csv"
    pl.DataFrame({"key": ["k1"]}).write_csv(path)
    cfg = write_config(tmp_path / "c.yaml", {"input": str(path), "output": str(tmp_path / "o.parquet"), "steps": steps})
    assert run_cli(["run", str(cfg), "-q"]) == 0
    tags, obj = '["a","b",1,null,true]', '{"k":"v/x?y","n":1}'
    assert got == [
        {"path": tags, "q": obj, "header": tags, "body": {"text": f"tags={tags}", "typed": {"k": "v/x?y", "n": 1}}}
    ]


def test_the_errors_file_masks_a_token_an_earlier_steps_answer_carried_into_a_request(
    tmp_path: Path, serve: Serve
) -> None:
    token = "tok-7f3e9a1c55"

    async def login(request: web.Request) -> web.Response:
        return web.json_response({"token": token})

    async def echo(request: web.Request) -> web.Response:  # an API that echoes the header it got
        return web.json_response({"saw": request.headers.get("Authorization")})

    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"error": "unprocessable"}, status=422)

    app = web.Application()
    app.router.add_post("/login", login)
    app.router.add_get("/echo/{key}", echo)
    app.router.add_post("/refuse", refuse)
    server = serve(app)
    steps = [
        {"name": "one", "auth": "acme", "request": {"url": server.url + "/echo/{{key}}"}, "fields": {"saw": "saw"}},
        {
            "name": "two",
            "request": {"method": "POST", "url": server.url + "/refuse?h={{saw}}", "body": {"saw": "{{saw}}"}},
            "fields": {"ok": "ok"},
        },
    ]
    path = tmp_path / "keys.csv"
    pl.DataFrame({"key": ["k1"]}).write_csv(path)
    config = {
        "input": str(path),
        "output": str(tmp_path / "o.parquet"),
        "errors_out": str(tmp_path / "failed.csv"),
        "auths": {"acme": {"url": server.url + "/login", "body": {"user": "u"}, "token_path": "token"}},
        "steps": steps,
    }
    assert run_cli(["run", str(write_config(tmp_path / "c.yaml", config)), "-q"]) == 0
    assert pl.read_parquet(tmp_path / "o.parquet")["saw"].to_list() == [f"Bearer {token}"]  # the data, untouched
    row = pl.read_csv(tmp_path / "failed.csv").row(0, named=True)
    assert (row["_step"], row["_http_status"]) == ("two", 422)
    assert token not in (tmp_path / "failed.csv").read_text()
    assert row["_request_body"] == '{"saw":"Bearer ***"}' and row["_request_url"].endswith("?h=Bearer%20***")


def test_a_steps_when_on_input_columns_of_another_type_is_refused_before_any_call(tmp_path: Path) -> None:
    steps = waterfall_steps("http://127.0.0.1:9")
    steps[1]["when"] = "domain > 3"  # text compared with a number
    cfg = steps_config(tmp_path, steps)
    assert run_cli(["validate", str(cfg)]) == 2
    with pytest.raises(
        ConfigError, match=r"line 27: steps\[1\].when: `when: domain > 3` cannot be evaluated on people"
    ):
        load_config(cfg).check_schema(pl.read_csv(tmp_path / "people.csv").schema, "people.csv")


def test_max_cost_lets_calls_that_exactly_fit_it_through(tmp_path: Path, serve: Serve) -> None:
    app, seen = echo_app()
    server = serve(app)
    cfg = echo_config(tmp_path, server.url, 30, cost=0.1)  # 30 lookups at 0.1: 3.0000000000000013 in floats
    data = yaml.safe_load(cfg.read_text())
    data["steps"] = data["steps"][:1]
    data["max_cost"] = 3
    write_config(cfg, data)
    assert run_cli(["run", str(cfg), "-q"]) == 0
    assert len(seen) == 30 and summary_of_output(tmp_path / "keys.parquet")["credits"] == pytest.approx(3.0)


def summary_of_output(output: Path) -> dict[str, Any]:
    return orjson.loads(output.with_name(output.name + ".summary.json").read_bytes())


def test_a_folder_replaced_by_a_file_under_the_run_is_a_storage_error_not_a_crash(tmp_path: Path, serve: Serve) -> None:
    folder = tmp_path / "outdir"

    async def lookup(request: web.Request) -> web.Response:
        if folder.is_dir():  # the output's folder is removed, and a file takes its name
            shutil.rmtree(folder)
            folder.write_text("not a folder")
        return web.json_response({"id": "x"})

    app = web.Application()
    app.router.add_get("/lookup/{key}", lookup)
    server = serve(app)
    path = tmp_path / "keys.csv"
    pl.DataFrame({"key": ["k1", "k2"]}).write_csv(path)
    steps = [{"name": "lookup", "request": {"url": server.url + "/lookup/{{key}}"}, "fields": {"rid": "id"}}]
    config = {"input": str(path), "output": str(folder / "out.csv"), "journal": str(tmp_path / "j.db"), "steps": steps}
    cfg = write_config(tmp_path / "c.yaml", config)
    assert run_cli(["run", str(cfg), "-q"]) == 3  # the disk failed the run: resumable, not a bug (70)
    folder.unlink()
    assert run_cli(["run", str(cfg), "-q"]) == 0
    assert pl.read_csv(folder / "out.csv")["rid"].to_list() == ["x", "x"]


def test_preview_shows_an_integer_wider_than_64_bits_exactly(
    tmp_path: Path, serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    async def big(request: web.Request) -> web.Response:
        return web.Response(text='{"big": 123456789012345678901234567890}', content_type="application/json")

    app = web.Application()
    app.router.add_get("/lookup/{key}", big)
    server = serve(app)
    path = tmp_path / "keys.csv"
    pl.DataFrame({"key": ["k1"]}).write_csv(path)
    steps = [{"name": "lookup", "request": {"url": server.url + "/lookup/{{key}}"}, "fields": {"big": "big"}}]
    cfg = write_config(tmp_path / "c.yaml", {"input": str(path), "steps": steps})
    assert run_cli(["preview", str(cfg)]) == 0
    assert "      big = 123456789012345678901234567890\n" in capsys.readouterr().out


def test_retry_failed_and_refresh_older_than_call_again_only_what_they_name_in_each_step(
    tmp_path: Path, serve: Serve
) -> None:
    sent: Counter[str] = Counter()
    down = {"k1": True}

    async def lookup(request: web.Request) -> web.Response:
        sent["lookup"] += 1
        return web.json_response({"id": "id-" + request.match_info["key"]})

    async def score(request: web.Request) -> web.Response:
        sent["score"] += 1
        if down.get(request.match_info["id"].removeprefix("id-")):
            return web.json_response({"error": "busy"}, status=503)
        return web.json_response({"score": 1})

    app = web.Application()
    app.router.add_get("/lookup/{key}", lookup)
    app.router.add_get("/score/{id}", score)
    server = serve(app)
    cfg = echo_config(tmp_path, server.url, 4, retry=1)
    assert run_cli(["run", str(cfg), "-q"]) == 0
    assert sent == {"lookup": 4, "score": 4}
    # k1's score failed on the server's side (503): --retry-failed asks that alone again.
    down["k1"] = False
    assert run_cli(["run", str(cfg), "-q", "--retry-failed"]) == 0
    assert sent == {"lookup": 4, "score": 5}
    assert pl.read_parquet(tmp_path / "keys.parquet")["score"].to_list() == [1, 1, 1, 1]
    # Nothing is older than a day: nothing is asked again; everything is older than a second: all of it.
    assert run_cli(["run", str(cfg), "-q", "--refresh-older-than", "1d"]) == 0
    assert sent == {"lookup": 4, "score": 5}
    time.sleep(1.1)
    assert run_cli(["run", str(cfg), "-q", "--refresh-older-than", "1s"]) == 0
    assert sent == {"lookup": 8, "score": 9}


def test_a_named_auth_that_fails_to_log_in_names_its_own_keys(
    tmp_path: Path, serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    async def login(request: web.Request) -> web.Response:
        return web.json_response({"error": "bad credentials"}, status=401)

    app = web.Application()
    app.router.add_post("/login", login)
    server = serve(app)
    steps = chain_steps(server.url)
    steps[0]["auth"] = "acme"
    auths = {"acme": {"url": server.url + "/login", "body": {"user": "u"}, "token_path": "token"}}
    cfg = steps_config(tmp_path, steps, auths=auths)
    assert run_cli(["run", str(cfg), "-q"]) == 3
    err = capsys.readouterr().err
    assert "Check the credentials in auths.acme.body and auths.acme.headers" in err and "auth.body" not in err


def test_a_step_whose_quota_is_spent_stops_the_run_and_a_rerun_goes_on(tmp_path: Path, serve: Serve) -> None:
    # The second step's API allows three calls a day, and says so; then its quota is spent.
    quota = {"left": 3}
    sent: Counter[str] = Counter()

    async def lookup(request: web.Request) -> web.Response:
        sent["lookup"] += 1
        return web.json_response({"id": "id-" + request.match_info["key"]})

    async def score(request: web.Request) -> web.Response:
        if quota["left"] <= 0:
            return web.json_response({"error": "quota"}, status=429, headers={"X-RateLimit-Remaining": "0"})
        quota["left"] -= 1
        sent["score"] += 1
        headers = {"X-RateLimit-Limit": "3", "X-RateLimit-Remaining": str(quota["left"]), "X-RateLimit-Reset": "86400"}
        return web.json_response({"score": 1}, headers=headers)

    app = web.Application()
    app.router.add_get("/lookup/{key}", lookup)
    app.router.add_get("/score/{id}", score)
    server = serve(app)
    cfg = echo_config(tmp_path, server.url, 8, concurrency=1)
    assert run_cli(["run", str(cfg), "-q"]) == 3
    assert sent["score"] == 3 and sent["lookup"] <= 8
    first = Counter(sent)
    quota["left"] = 100  # the next day
    assert run_cli(["run", str(cfg), "-q"]) == 0
    assert sent["score"] == 8 and sent["lookup"] == 8  # no answered call asked twice
    assert pl.read_parquet(tmp_path / "keys.parquet")["score"].to_list() == [1] * 8
    assert first["score"] == 3
