"""The shipped steps examples, configs/examples/waterfall.yaml and chain.yaml, run as a user runs
them against the bundled demo API: the waterfall pays its second provider only for the first one's
misses, the chain's second call takes the id the first found, and a rerun makes no call.

Each example is run as shipped, its host (127.0.0.1:8787) pointed at the test's demo server and
its input the bundled sample. What each provider was asked is read from the demo's `/_stats`
(calls per endpoint), and which emails the second provider was asked, from the requests it received.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from aiohttp import web
from conftest import RunningServer, Serve, run_cli

from enrich.demo_server import (
    DEFAULT_ALT_KEY,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DemoSettings,
    alt_person_for,
    company_for,
    create_app,
    person_for,
    signals_for,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "configs" / "examples"
PEOPLE = ROOT / "sample_data" / "people.csv"
SHIPPED_HOST = "http://127.0.0.1:8787"
PEOPLE_API = "GET /v1/people/{email}"
ALT_API = "GET /alt/v1/person"
COMPANY_API = "GET /v1/companies/{domain}"
SIGNALS_API = "GET /v1/companies/{id}/signals"


@pytest.fixture
def demo(serve: Serve, demo_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> tuple[RunningServer, list[str]]:
    """The demo API, the three variables the examples read set as `make demo-server` sets them,
    and the email of every request its second provider received."""
    monkeypatch.setenv("DEMO_ALT_KEY", DEFAULT_ALT_KEY)
    app = create_app(DemoSettings())
    asked: list[str] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/alt/v1/person":
            asked.append(request.query.get("email", ""))
        return await handler(request)

    app.middlewares.append(record)
    return serve(app), asked


def get(server: RunningServer, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """GET ``path`` from the server: its status and its JSON body."""
    request = urllib.request.Request(server.url + path, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def stats(server: RunningServer) -> dict[str, Any]:
    status, body = get(server, "/_stats")
    assert status == 200
    return body


def run_example(name: str, server: RunningServer, tmp_path: Path) -> Path:
    """``enrich run`` on the shipped example, pointed at ``server``, with the bundled sample as
    its input; returns the output's path."""
    text = (EXAMPLES / name).read_text(encoding="utf-8")
    assert text.count(SHIPPED_HOST) >= 2, f"{name} should call the demo API at {SHIPPED_HOST}"
    config = tmp_path / name
    config.write_text(text.replace(SHIPPED_HOST, server.url), encoding="utf-8")
    output = tmp_path / "out.parquet"
    assert run_cli(["run", str(config), "-q", "--input", str(PEOPLE), "--output", str(output)]) == 0
    return output


def sample() -> list[dict[str, Any]]:
    return pl.read_csv(PEOPLE, infer_schema=False).to_dicts()


# --- the demo API's new endpoints -------------------------------------------------------------


def bearer(server: RunningServer) -> dict[str, str]:
    """The demo's Authorization header, after a login."""
    login = urllib.request.Request(
        server.url + "/auth/token",
        data=json.dumps({"client_id": DEFAULT_CLIENT_ID, "client_secret": DEFAULT_CLIENT_SECRET}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(login, timeout=10) as resp:
        return {"Authorization": f"Bearer {json.load(resp)['access_token']}"}


KEY = {"X-Alt-Key": DEFAULT_ALT_KEY}
FOUND_EMAIL = "zoe.torvalds@wonka.fr"
UNKNOWN_EMAIL = next(e for e in (f"p{i}@acme.io" for i in range(100)) if alt_person_for(e) is None)
ACME_ID = "cmp_0ef8eb0cee4e"
NO_KEY = {"error": "invalid_key", "message": "send the API key in X-Alt-Key"}

ENDPOINTS = [
    # (endpoint counted in /_stats, path, headers: None for the demo's Bearer token, status, body)
    # a company by its domain, then its signals by the id that gave
    (COMPANY_API, "/v1/companies/acme.io", None, 200, company_for("acme.io")),
    (SIGNALS_API, f"/v1/companies/{ACME_ID}/signals", None, 200, signals_for(ACME_ID)),
    # a domain the demo does not know, and an id it did not give (its check digits are wrong)
    (
        COMPANY_API,
        "/v1/companies/nakatomi.jp",
        None,
        404,
        {"error": "not_found", "message": "no company found at 'nakatomi.jp'"},
    ),
    (
        SIGNALS_API,
        "/v1/companies/cmp_0000000000ff/signals",
        None,
        404,
        {"error": "not_found", "message": "no company found with id 'cmp_0000000000ff'"},
    ),
    # the second provider: its own key, its own shape
    (ALT_API, f"/alt/v1/person?email={FOUND_EMAIL}", KEY, 200, alt_person_for(FOUND_EMAIL)),
    (
        ALT_API,
        f"/alt/v1/person?email={UNKNOWN_EMAIL}",
        KEY,
        404,
        {"error": "not_found", "message": f"no person found for {UNKNOWN_EMAIL!r}"},
    ),
    (ALT_API, "/alt/v1/person?email=", KEY, 400, {"error": "bad_request", "message": "`email` is required"}),
    # the demo's Bearer token is not the second provider's key, nor is a wrong key
    (ALT_API, f"/alt/v1/person?email={FOUND_EMAIL}", None, 401, NO_KEY),
    (ALT_API, f"/alt/v1/person?email={FOUND_EMAIL}", {"X-Alt-Key": "wrong"}, 401, NO_KEY),
]


@pytest.mark.parametrize(("endpoint", "path", "headers", "status", "body"), ENDPOINTS)
def test_the_demo_api_answers_companies_signals_and_the_second_provider(
    demo_api: RunningServer, endpoint: str, path: str, headers: dict[str, str] | None, status: int, body: Any
) -> None:
    assert get(demo_api, path, bearer(demo_api) if headers is None else headers) == (status, body)
    assert stats(demo_api)["endpoints"] == {endpoint: 1}


def test_the_shapes_the_examples_read() -> None:
    assert company_for("acme.io") == {
        "company": {
            "id": ACME_ID,
            "domain": "acme.io",
            "name": "Acme",
            "industry": "Financial Services",
            "employees": 4466,
        }
    }
    assert signals_for(ACME_ID) == {"signals": {"hiring": True, "open_roles": 1, "headcount_growth": 0.42}}
    assert alt_person_for(FOUND_EMAIL) == {
        "data": {"email": FOUND_EMAIL, "full_name": "Hiro Muñoz", "job_title": "Operations Manager"}
    }
    # The same person as the main provider's, where both know them.
    assert person_for(FOUND_EMAIL)["person"]["employment"]["title"] == "Operations Manager"  # type: ignore[index]


EMILE = (  # what GET /v1/people/emile.johnson%40acme.io?domain=acme.io answered before the new endpoints
    b'{"person":{"name":"Linus Johnson","email":"emile.johnson@acme.io","emails":["emile.johnson@acme.io",'
    b'"emile.johnson@personal.example"],"employment":{"title":"Analyst","seniority":"senior","since":2010},'
    b'"tags":["security","fintech"],"score":71.0,"verified":false,"phone":null},"company":{"domain":"acme.io",'
    b'"name":"Acme","employees":4466,"public":true}}'
)


def test_the_people_endpoint_answers_as_before(demo_api: RunningServer) -> None:
    """The endpoint configs/demo.yaml and the other tests use answers byte for byte as it did."""
    request = urllib.request.Request(
        demo_api.url + "/v1/people/emile.johnson%40acme.io?domain=acme.io", headers=bearer(demo_api)
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.read() == EMILE
    assert stats(demo_api)["endpoints"] == {PEOPLE_API: 1}


# --- configs/examples/waterfall.yaml ------------------------------------------------------------


def test_the_waterfall_example_pays_the_second_provider_only_for_the_first_ones_misses(
    demo: tuple[RunningServer, list[str]], tmp_path: Path
) -> None:
    server, asked = demo
    rows = sample()
    with_email = [r for r in rows if r["email"]]
    misses = {r["email"] for r in with_email if person_for(r["email"], r["domain"]) is None}
    found_by_alt = {e for e in misses if alt_person_for(e) is not None}
    # The bundled sample: 10 blank emails (no call), 10 the first provider does not know, 5 of
    # them known to the second.
    assert (len(rows), len(with_email), len(misses), len(found_by_alt)) == (300, 290, 10, 5)

    output = run_example("waterfall.yaml", server, tmp_path)

    seen = stats(server)
    assert seen["endpoints"] == {PEOPLE_API: 283, ALT_API: 10}  # 283: 290 emails less 7 asked twice
    assert seen["endpoints"][PEOPLE_API] == len({(r["email"], r["domain"]) for r in with_email})
    assert sorted(asked) == sorted(misses)  # each miss asked once, and nothing else
    assert (seen["logins"], seen["unauthorized"]) == (1, 0)

    df = pl.read_parquet(output)
    assert df.height == 300
    missed = df.filter(pl.col("_person_http_status") == 404)
    assert sorted(missed["email"].to_list()) == sorted(r["email"] for r in with_email if r["email"] in misses)
    # The second provider answered exactly the rows the first missed: 200 or 404, nowhere else.
    assert df.filter(pl.col("_person_alt_http_status").is_not_null())["id"].to_list() == missed["id"].to_list()
    for row in df.iter_rows(named=True):
        email = row["email"]
        expected: tuple[Any, ...]
        if email is None:  # a blank: neither asked
            expected = (None, None, None)
        elif email not in misses:
            expected = (person_for(email, row["domain"])["person"]["employment"]["title"], "person", None)  # type: ignore[index]
        elif email in found_by_alt:
            expected = (alt_person_for(email)["data"]["job_title"], "person_alt", 200)  # type: ignore[index]
        else:
            expected = (None, None, 404)
        assert (row["title"], row["title_source"], row["_person_alt_http_status"]) == expected, row
    assert df["title_source"].value_counts(sort=True).rows() == [("person", 280), (None, 15), ("person_alt", 5)]

    # A rerun: every answer comes from the journal, no provider is asked again.
    first = df
    assert (
        run_cli(["run", str(tmp_path / "waterfall.yaml"), "-q", "--input", str(PEOPLE), "--output", str(output)]) == 0
    )
    again = stats(server)
    assert again["endpoints"] == {PEOPLE_API: 283, ALT_API: 10}
    assert (again["calls"], again["logins"]) == (seen["calls"], 1)
    drop = [c for c in first.columns if c.endswith("_latency_ms")]
    assert pl.read_parquet(output).drop(drop).equals(first.drop(drop))


# --- configs/examples/chain.yaml ----------------------------------------------------------------


def test_the_chain_example_asks_for_signals_by_the_id_the_company_lookup_found(
    demo: tuple[RunningServer, list[str]], tmp_path: Path
) -> None:
    server, asked = demo
    domains = {r["domain"] for r in sample() if r["domain"]}
    known = {d: company_for(d)["company"]["id"] for d in domains if company_for(d) is not None}  # type: ignore[index]
    assert (len(domains), len(known)) == (14, 10)  # the bundled sample: 14 domains, 10 companies known

    output = run_example("chain.yaml", server, tmp_path)

    seen = stats(server)
    # Once per domain, then once per company found: the rest of the 300 rows are duplicates.
    assert seen["endpoints"] == {COMPANY_API: 14, SIGNALS_API: 10}
    assert (seen["logins"], seen["unauthorized"]) == (1, 0)  # one login, shared by both steps
    assert asked == []

    df = pl.read_parquet(output)
    assert df.height == 300
    for row in df.iter_rows(named=True):
        domain = row["domain"]
        company_id = known.get(domain) if domain else None
        got = (row["company_id"], row["hiring"], row["open_roles"], row["headcount_growth"])
        if company_id is None:  # no domain, or a company the demo does not know: no signals asked
            assert got == (None, None, None, None), row
            assert (row["_signals_http_status"], row["_signals_error"]) == (None, None), row
            continue
        signals = signals_for(company_id)["signals"]  # type: ignore[index]
        assert got == (company_id, signals["hiring"], signals["open_roles"], signals["headcount_growth"]), row
        assert (row["company"], row["industry"]) == (
            company_for(domain)["company"]["name"],  # type: ignore[index]
            company_for(domain)["company"]["industry"],  # type: ignore[index]
        )
    assert df["hiring"].value_counts(sort=True).rows() == [(True, 118), (False, 92), (None, 90)]
    assert df.filter(pl.col("_company_http_status") == 404)["domain"].unique().sort().to_list() == sorted(
        set(domains) - set(known)
    )

    # A rerun: no call, no login.
    assert run_cli(["run", str(tmp_path / "chain.yaml"), "-q", "--input", str(PEOPLE), "--output", str(output)]) == 0
    again = stats(server)
    assert again["endpoints"] == {COMPANY_API: 14, SIGNALS_API: 10}
    assert (again["calls"], again["logins"]) == (seen["calls"], 1)
