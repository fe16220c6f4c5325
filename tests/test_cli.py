"""The command line end to end: exit codes, the one-line errors, secrets, atomic output, the entry point.

Each test runs ``enrich`` against a real server on 127.0.0.1 (the demo API, or a small app
built here) with real files in ``tmp_path``; the server records every request it gets, so
"nothing was sent" is checked where it would show.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from aiohttp import web
from conftest import RunningServer, Serve, demo_config, run_cli, write_config

from enrich import __version__
from enrich.demo_server import DemoSettings, create_app, person_for

ROOT = Path(__file__).resolve().parent.parent
ENRICH = ROOT / ".venv" / "bin" / "enrich"
PEOPLE = ROOT / "sample_data" / "people.csv"


def record_requests(app: web.Application) -> list[str]:
    """Every request path the app receives (unrouted ones included)."""
    seen: list[str] = []

    @web.middleware
    async def recorder(request: web.Request, handler: Any) -> web.StreamResponse:
        seen.append(request.path)
        return await handler(request)

    app.middlewares.append(recorder)
    return seen


def recorded_demo(serve: Serve, settings: DemoSettings | None = None) -> tuple[RunningServer, list[str]]:
    app = create_app(settings or DemoSettings())
    seen = record_requests(app)
    return serve(app), seen


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "DEMO_CLIENT_ID": "demo-client", "DEMO_CLIENT_SECRET": "demo-secret-2f8a", **extra}


# --- 11. exit codes, the summary, -q, --version ------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["--version"]) == 0
    assert capsys.readouterr().out == f"enrich {__version__}\n"
    assert __version__ == "0.1.0"


def test_no_arguments_exits_2_with_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "usage: enrich" in captured.err and "run" in captured.err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run_cli(["run", str(tmp_path / "x.yaml"), "--limit", "0"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == "error: argument --limit: must be at least 1, got 0"
    assert run_cli(["frobnicate"]) == 2
    assert run_cli(["run"]) == 2


def test_some_failed_rows_still_exit_0_and_the_summary_counts_them(
    serve: Serve, demo_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, _ = recorded_demo(serve)
    cfg = write_config(tmp_path / "demo.yaml", demo_config(server.url))
    out_path = tmp_path / "out.parquet"
    assert run_cli(["run", str(cfg), "--input", str(PEOPLE), "--output", str(out_path), "--limit", "40"]) == 0

    rows = pl.read_csv(PEOPLE).head(40).iter_rows(named=True)
    ok = sum(1 for r in rows if r["email"] and person_for(r["email"], r["domain"]))
    failed = 40 - ok
    blanks = pl.read_csv(PEOPLE).head(40)["email"].null_count()  # rows that fail without a call
    assert failed >= 2  # the sample's first 40 rows have an unknown person and a blank email
    captured = capsys.readouterr()
    assert captured.out == ""
    summary = out_path.with_name("out.parquet.summary.json")
    lines = captured.err.splitlines()
    assert captured.err.endswith("\n") and len(lines) == 6, captured.err
    assert re.fullmatch(rf"enriched 40 rows in \d+\.\ds -> {re.escape(str(out_path))}", lines[0]), lines[0]
    rows_line = re.fullmatch(rf"  rows     {ok} ok, {failed} failed \(([^)]*)\), 0 skipped", lines[1])
    assert rows_line, lines[1]
    kinds = dict(part.rsplit(": ", 1) for part in rows_line.group(1).split(", "))
    assert kinds == {"HTTP 404": str(failed - blanks), "bad row data": str(blanks)}
    assert (
        lines[2]
        == f"  calls    {40 - blanks} made, 0 retries, 0 throttled (429); 0 rows from the journal, 0 duplicates"
    )
    assert re.fullmatch(
        r"  latency  p50 \d+(\.\d)? ms, p95 \d+(\.\d)? ms; \d+\.\d calls/s \(no rate limit\)", lines[3]
    ), lines[3]
    assert lines[4] == "  auth     1 login, 0 token refreshes"
    assert lines[5] == f"  summary  {summary}"
    assert json.loads(summary.read_text(encoding="utf-8"))["ok"] == ok
    assert pl.read_parquet(out_path)["_error"].null_count() == ok


def test_quiet_prints_nothing_on_success(
    serve: Serve, demo_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, _ = recorded_demo(serve)
    cfg = write_config(tmp_path / "demo.yaml", demo_config(server.url))
    out_path = tmp_path / "out.csv"
    assert run_cli(["run", str(cfg), "--input", str(PEOPLE), "--output", str(out_path), "--limit", "10", "-q"]) == 0
    assert capsys.readouterr() == ("", "")
    assert pl.read_csv(out_path).height == 10


def test_preview_prints_the_new_columns(
    serve: Serve, demo_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, _ = recorded_demo(serve)
    cfg = write_config(tmp_path / "demo.yaml", demo_config(server.url))
    args = ["run", str(cfg), "--input", str(PEOPLE), "--output", str(tmp_path / "o.csv"), "--limit", "3", "-q"]
    assert run_cli([*args, "--preview", "3"]) == 0
    out = capsys.readouterr().out
    for column in ("id", "name", "title", "size", "_http_status", "_error"):
        assert column in out
    assert "first_name" not in out  # only the first input column, then the new ones


# --- 7. login failures -----------------------------------------------------------------------


def test_wrong_credentials_exit_3_and_nothing_is_called_or_written(
    serve: Serve,
    demo_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DEMO_CLIENT_SECRET", "not-the-secret")
    server, seen = recorded_demo(serve)
    cfg = write_config(tmp_path / "demo.yaml", demo_config(server.url))
    out_path = tmp_path / "out" / "result.parquet"
    assert run_cli(["run", str(cfg), "--input", str(PEOPLE), "--output", str(out_path)]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"error: login failed: POST {server.url}/auth/token returned HTTP 401 Unauthorized: ")
    assert "unknown client_id or wrong client_secret" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "not-the-secret" not in err
    assert seen == ["/auth/token"]  # no enrichment call
    assert not out_path.exists()
    # Only the summary, saying the run stopped (a scheduler must not take an older one for it).
    assert [p.name for p in out_path.parent.iterdir()] == ["result.parquet.summary.json"]
    stop = json.loads((out_path.parent / "result.parquet.summary.json").read_text())
    assert (stop["status"], stop["exit_code"]) == ("aborted", 3)
    assert stop["error"] == err.removeprefix("error: ").rstrip("\n")


def test_token_path_finding_nothing_names_the_path_and_the_keys(
    serve: Serve, demo_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, seen = recorded_demo(serve)
    config = demo_config(server.url)
    config["auth"]["token_path"] = "data.session.jwt"
    cfg = write_config(tmp_path / "demo.yaml", config)
    out_path = tmp_path / "out.csv"
    assert run_cli(["run", str(cfg), "--input", str(PEOPLE), "--output", str(out_path)]) == 3
    err = capsys.readouterr().err
    assert err == (
        "error: login succeeded (HTTP 200) but auth.token_path `data.session.jwt` found nothing in the response "
        "(its top-level keys: access_token, token_type, expires_in). Set auth.token_path to where the token is, "
        "e.g. `access_token` or `data.session.jwt`.\n"
    )
    assert seen == ["/auth/token"]
    assert not out_path.exists()


def test_auth_server_unreachable_exits_3(
    demo_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = f"http://127.0.0.1:{free_port()}"
    cfg = write_config(tmp_path / "demo.yaml", demo_config(base))
    out_path = tmp_path / "out.csv"
    assert run_cli(["run", str(cfg), "--input", str(PEOPLE), "--output", str(out_path)]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"error: login failed: cannot reach auth.url {base}/auth/token (")
    assert err.endswith("Check that the API is running and that the URL is right.\n")
    assert not out_path.exists()


# --- 8. bad config or input: exit 2, one exact line, nothing sent, nothing written --------------


def job_lines(base: str, inp: Path, out: Path) -> list[str]:
    """A config written by hand, so the line numbers in the messages are known (line = index + 1)."""
    return [
        f"input: {inp}",  # 1
        f"output: {out}",  # 2
        "auth:",  # 3
        f"  url: {base}/auth/token",  # 4
        '  body: {client_id: "${DEMO_CLIENT_ID}", client_secret: "${DEMO_CLIENT_SECRET}"}',  # 5
        "  token_path: access_token",  # 6
        "request:",  # 7
        f'  url: "{base}/v1/people/{{{{email}}}}"',  # 8
        '  params: {domain: "{{domain}}"}',  # 9
        'fields: "person.name, company.employees"',  # 10
        "concurrency: 4",  # 11
        "rate_limit: 100/s",  # 12
        "retry: {attempts: 2, backoff: 0.01}",  # 13
    ]


RATE_HELP = "Write it as N/s, N/min or N/h (e.g. `20/s`, `600/min`), or `auto` (the default: as fast as the API's rate-limit headers allow)."

# (name, {line number: new text}, extra argv, expected message): edits, argv and message are str.format
# templates ({cfg} {inp} {out} {tmp} {base} are filled in; literal braces are doubled)
BAD_INPUT: list[tuple[str, dict[int, str], list[str], str]] = [
    (
        "typo-key",
        {11: "concurency: 4"},
        [],
        "{cfg}, line 11: concurency is not a known key. Did you mean `concurrency`?",
    ),
    (
        "unknown-template-column",
        {8: '  url: "{base}/v1/people/{{{{emial}}}}"'},
        [],
        "{cfg}, line 8: request.url uses {{{{emial}}}}, which is not a column of people.csv "
        "(columns: id, email, domain). Did you mean {{{{email}}}}?",
    ),
    (
        "malformed-yaml",
        {9: '  params: {{domain: "{{{{domain}}}}"'},
        [],
        "{cfg}, line 10, column 1: the YAML is malformed: expected ',' or '}}', but got '<scalar>'. Check the "
        "indentation and quote values that contain `: `, `#` or start with `{{`, `[`, `*` or `&`.",
    ),
    (
        "missing-input",
        {1: "input: {tmp}/nowhere/people.csv"},
        [],
        "input file not found: {tmp}/nowhere/people.csv. Check `input` in the config, or pass --input PATH.",
    ),
    (
        "bad-rate",
        {12: "rate_limit: 100/fortnight"},
        [],
        "{cfg}, line 12: rate_limit: '100/fortnight' is not a rate. " + RATE_HELP,
    ),
    (
        "bad-rate-flag",
        {},
        ["--rate-limit", "fast"],
        "--rate-limit: 'fast' is not a rate. " + RATE_HELP,
    ),
    (
        "unknown-output-extension",
        {},
        ["--output", "{tmp}/out/people.xls"],
        "output {tmp}/out/people.xls: cannot write .xls. Use one of: .csv, .parquet, .pq, .ndjson, .jsonl, .xlsx.",
    ),
    (
        "empty-csv",
        {1: "input: {tmp}/empty.csv"},
        [],
        "input file {tmp}/empty.csv is empty: it needs a header row with the column names.",
    ),
    (
        "unset-variable",
        {5: '  body: {{client_id: "${{DEMO_CLIENT_ID}}", client_secret: "${{ENRICH_TEST_UNSET_SECRET}}"}}'},
        [],
        "{cfg}, line 5: auth.body.client_secret uses ${{ENRICH_TEST_UNSET_SECRET}}, but the environment variable "
        "ENRICH_TEST_UNSET_SECRET is not set. Set it (export ENRICH_TEST_UNSET_SECRET=...) or give a default with "
        "${{ENRICH_TEST_UNSET_SECRET:-value}}.",
    ),
]


def bad_job(tmp_path: Path, base: str, edits: dict[int, str], extra: list[str]) -> tuple[list[str], dict[str, str]]:
    inp = tmp_path / "people.csv"
    inp.write_text("id,email,domain\n1,ada@acme.io,acme.io\n", encoding="utf-8")
    (tmp_path / "empty.csv").write_bytes(b"")
    out = tmp_path / "out" / "people.parquet"
    cfg = tmp_path / "job.yaml"
    names = {"cfg": str(cfg), "inp": str(inp), "out": str(out), "tmp": str(tmp_path), "base": base}
    lines = job_lines(base, inp, out)
    for number, text in edits.items():
        lines[number - 1] = text.format(**names)
    cfg.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return ["run", str(cfg), *(a.format(**names) for a in extra)], names


@pytest.mark.parametrize(("edits", "extra", "message"), [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT])
def test_bad_config_or_input_exits_2_with_one_exact_line(
    serve: Serve,
    demo_env: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    edits: dict[int, str],
    extra: list[str],
    message: str,
) -> None:
    server, seen = recorded_demo(serve)
    argv, names = bad_job(tmp_path, server.url, edits, extra)
    assert run_cli(argv) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {message.format(**names)}\n"
    assert captured.out == ""
    assert seen == []  # not even the login
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["after-run", "before-run"])
@pytest.mark.parametrize(
    ("edits", "extra", "message"), [c[1:] for c in BAD_INPUT[:3]], ids=[c[0] for c in BAD_INPUT[:3]]
)
def test_debug_adds_the_traceback(
    serve: Serve,
    demo_env: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    edits: dict[int, str],
    extra: list[str],
    message: str,
    where: str,
) -> None:
    server, seen = recorded_demo(serve)
    argv, names = bad_job(tmp_path, server.url, edits, extra)
    argv = [*argv, "--debug"] if where == "after-run" else ["--debug", *argv]
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert "enrich.errors.ConfigError: " in err
    assert err.endswith(f"error: {message.format(**names)}\n")
    assert seen == []


@pytest.mark.slow
def test_bad_input_without_debug_shows_no_traceback_in_a_subprocess(tmp_path: Path) -> None:
    argv, names = bad_job(tmp_path, f"http://127.0.0.1:{free_port()}", {11: "concurency: 4"}, [])
    proc = subprocess.run([str(ENRICH), *argv], capture_output=True, text=True, env=subprocess_env(), timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert (
        proc.stderr == f"error: {names['cfg']}, line 11: concurency is not a known key. Did you mean `concurrency`?\n"
    )


# --- 9. secrets ------------------------------------------------------------------------------

CLIENT_ID = "cid-Zx81-qwerty-4471"
CLIENT_SECRET = "sec-9f3b-VERYSECRET-77aa"


def leaks(secret: str, text: str, chunk: int = 10) -> list[str]:
    """Pieces of ``secret`` (any ``chunk`` characters in a row) found in ``text``: a cut-off secret still leaks."""
    size = min(chunk, len(secret))
    return sorted({secret[i : i + size] for i in range(len(secret) - size + 1) if secret[i : i + size] in text})


def echoing_demo(serve: Serve) -> tuple[RunningServer, list[str]]:
    """The demo API with a route that answers 403 and echoes the Authorization header back."""
    app = create_app(DemoSettings(client_id=CLIENT_ID, client_secret=CLIENT_SECRET))
    tokens: list[str] = []

    @web.middleware
    async def capture(request: web.Request, handler: Any) -> web.StreamResponse:
        token = request.headers.get("Authorization", "").partition(" ")[2]
        if token and token not in tokens:
            tokens.append(token)
        return await handler(request)

    async def mixed(request: web.Request) -> web.Response:
        email = request.match_info["email"]
        if email.startswith("echo"):
            return web.json_response(
                {
                    "error": "forbidden",
                    "message": "this token lacks the people:read scope; the request carried:",
                    "authorization": request.headers.get("Authorization"),
                },
                status=403,
            )
        record = person_for(email)
        return web.json_response(record) if record else web.json_response({"error": "not_found"}, status=404)

    app.middlewares.append(capture)
    app.router.add_get("/v1/mixed/{email}", mixed)
    return serve(app), tokens


def test_secrets_and_tokens_appear_nowhere(
    serve: Serve, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DEMO_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("DEMO_CLIENT_SECRET", CLIENT_SECRET)
    server, tokens = echoing_demo(serve)
    emails = ["ada@acme.io", "echo1@acme.io", "grace@globex.com", "echo2@acme.io", "linus@initech.net"]
    (tmp_path / "in.csv").write_text("email\n" + "\n".join(emails) + "\n", encoding="utf-8")
    config = demo_config(
        server.url, request={"url": server.url + "/v1/mixed/{{email}}"}, fields={"name": "person.name"}
    )
    cfg = write_config(tmp_path / "job.yaml", config)

    texts: dict[str, str] = {}
    for out_name in ("out.csv", "out.parquet"):
        out_path = tmp_path / out_name
        rc = run_cli(
            ["run", str(cfg), "--input", str(tmp_path / "in.csv"), "--output", str(out_path), "--preview", "5"]
        )
        assert rc == 0
        captured = capsys.readouterr()
        texts[f"{out_name} stdout"], texts[f"{out_name} stderr"] = captured.out, captured.err
        texts[f"{out_name} bytes"] = out_path.read_bytes().decode("latin-1")
        frame = pl.read_csv(out_path) if out_name.endswith(".csv") else pl.read_parquet(out_path)
        texts[f"{out_name} cells"] = json.dumps(frame.rows(), ensure_ascii=False)
        echoed = frame.filter(pl.col("email").str.starts_with("echo"))
        assert echoed["_http_status"].to_list() == [403, 403]
        assert all(e.startswith("HTTP 403 Forbidden: ") and "***" in e for e in echoed["_error"]), echoed["_error"]

    assert len(tokens) == 2  # one login per run, and the test saw both tokens
    for secret in (CLIENT_ID, CLIENT_SECRET, *tokens):
        for where, text in texts.items():
            assert leaks(secret, text) == [], f"{where} shows part of {secret[:6]}..."


def echoing_login(serve: Serve, across_the_cut: bool) -> RunningServer:
    """A login that fails with 401 and echoes the credentials it got back in the body."""

    async def login(request: web.Request) -> web.Response:
        received = await request.json()

        def body(pad: int) -> str:
            doc = {"error": "invalid_client", "error_description": "Client authentication failed." + "." * pad}
            return json.dumps({**doc, "received": received})

        pad = 0
        if across_the_cut:  # place the secret where a 200-character snippet would cut it in half
            pad = 200 - len(CLIENT_SECRET) // 2 - body(0).index(CLIENT_SECRET)
            assert pad >= 0
        return web.Response(status=401, text=body(pad), content_type="application/json")

    app = web.Application()
    app.router.add_post("/auth/token", login)
    return serve(app)


@pytest.mark.parametrize("across_the_cut", [False, True], ids=["inside-snippet", "across-snippet-cut"])
def test_login_error_echoing_the_secret_is_redacted(
    serve: Serve,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    across_the_cut: bool,
) -> None:
    monkeypatch.setenv("DEMO_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("DEMO_CLIENT_SECRET", CLIENT_SECRET)
    server = echoing_login(serve, across_the_cut)
    cfg = write_config(tmp_path / "job.yaml", demo_config(server.url))
    assert run_cli(["run", str(cfg), "--input", str(PEOPLE), "--output", str(tmp_path / "out.csv")]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"error: login failed: POST {server.url}/auth/token returned HTTP 401 Unauthorized: ")
    assert "***" in err
    assert leaks(CLIENT_SECRET, err) == []
    # A client id names the client, as a user name does: no secret, and shown as the API echoed it.
    assert f'"client_id": "{CLIENT_ID}"' in err
    assert not (tmp_path / "out.csv").exists()


# --- 10. atomic output -------------------------------------------------------------------------


def test_aborted_run_leaves_the_existing_output_untouched(
    serve: Serve, demo_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DEMO_CLIENT_SECRET", "wrong-secret")
    server, _ = recorded_demo(serve)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    previous = {"people.parquet": b"PAR1 yesterday's table", "people.csv": b"id,name\n1,yesterday\n"}
    for name, data in previous.items():
        (out_dir / name).write_bytes(data)
    cfg = write_config(tmp_path / "demo.yaml", demo_config(server.url))
    for name in previous:
        assert run_cli(["run", str(cfg), "--input", str(PEOPLE), "--output", str(out_dir / name)]) == 3
    files = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    stops = {name: json.loads(files.pop(f"{name}.summary.json")) for name in previous}
    assert files == previous  # untouched, and no temp files
    assert {name: stop["status"] for name, stop in stops.items()} == dict.fromkeys(previous, "aborted")


def test_successful_run_replaces_the_output_and_leaves_no_temp_files(
    serve: Serve, demo_env: dict[str, str], tmp_path: Path
) -> None:
    server, _ = recorded_demo(serve)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    cfg = write_config(tmp_path / "demo.yaml", demo_config(server.url))
    for name in ("people.parquet", "people.csv", "people.ndjson"):
        (out_dir / name).write_bytes(b"old")
        assert (
            run_cli(["run", str(cfg), "--input", str(PEOPLE), "--output", str(out_dir / name), "-q", "--limit", "7"])
            == 0
        )
    assert sorted(p.name for p in out_dir.iterdir()) == [
        *("people.csv", "people.csv.journal", "people.csv.summary.json"),
        *("people.ndjson", "people.ndjson.journal", "people.ndjson.summary.json"),
        *("people.parquet", "people.parquet.journal", "people.parquet.summary.json"),
    ]  # each output, its journal and its summary; no temporary files
    assert pl.read_parquet(out_dir / "people.parquet").height == 7
    assert pl.read_csv(out_dir / "people.csv").height == 7
    assert pl.read_ndjson(out_dir / "people.ndjson").height == 7


# --- the installed entry point ------------------------------------------------------------------


def test_entry_point_version_and_no_args() -> None:
    proc = subprocess.run([str(ENRICH), "--version"], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, f"enrich {__version__}\n")
    proc = subprocess.run([str(ENRICH)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "usage: enrich" in proc.stderr


@pytest.mark.slow
def test_entry_point_runs_the_demo_config(serve: Serve, tmp_path: Path) -> None:
    server, seen = recorded_demo(serve)
    demo_yaml = (ROOT / "configs" / "demo.yaml").read_text(encoding="utf-8")
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(demo_yaml.replace("http://127.0.0.1:8787", server.url), encoding="utf-8")
    out_path = tmp_path / "people.parquet"
    started = time.monotonic()
    proc = subprocess.run(
        [str(ENRICH), "run", str(cfg), "--output", str(out_path), "--limit", "30"],
        capture_output=True,
        text=True,
        cwd=ROOT,  # the config's input is relative to where enrich runs
        env=subprocess_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.startswith("enriched 30 rows in ")
    assert time.monotonic() - started < 30
    out = pl.read_parquet(out_path)
    assert out.height == 30
    assert out.columns[-4:] == ["_http_status", "_error", "_attempts", "_latency_ms"]
    assert (out.schema["_attempts"], out.schema["_latency_ms"]) == (pl.Int64, pl.Float64)
    assert out.schema["company_size"] == pl.Int64
    assert seen.count("/auth/token") == 1
    # a blank email is a row error without a call (it would reach /v1/people/, the parent path)
    blanks = pl.read_csv(ROOT / "sample_data" / "people.csv", n_rows=30)["email"].null_count()
    assert blanks >= 1
    assert len([p for p in seen if p.startswith("/v1/people")]) == 30 - blanks
    assert out.filter(pl.col("email").is_null())["_error"].str.contains("is empty").all()
    assert out.filter(pl.col("email").is_null())["_attempts"].to_list() == [0] * blanks  # no call
    assert out.filter(pl.col("email").is_null())["_latency_ms"].null_count() == blanks


@pytest.mark.slow
def test_entry_point_login_failure(serve: Serve, tmp_path: Path) -> None:
    server, seen = recorded_demo(serve)
    cfg = write_config(tmp_path / "demo.yaml", demo_config(server.url))
    out_path = tmp_path / "out.csv"
    proc = subprocess.run(
        [str(ENRICH), "run", str(cfg), "--input", str(PEOPLE), "--output", str(out_path)],
        capture_output=True,
        text=True,
        env=subprocess_env(DEMO_CLIENT_SECRET="wrong-wrong"),
        timeout=60,
    )
    assert proc.returncode == 3
    assert proc.stderr.startswith("error: login failed: ") and "HTTP 401" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert seen == ["/auth/token"]
    assert not out_path.exists()
