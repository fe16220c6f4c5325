"""An input given as an http(s):// URL: fetched once, read like a file, its failures and secrets.

A table server on 127.0.0.1 serves the tables (and the failures: a 404, a 500, a slow answer,
redirects, a web page) and records each request; the demo API answers the calls. Each test
runs ``enrich`` as a user does, and checks the exit code, the whole error line, the output
and what the server saw. The system's temporary folder is the test's own, so that the local
copy being removed at the end is checked too.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from aiohttp import web
from conftest import RunningServer, Serve, demo_config, known_people, run_cli, summary_table, write_config
from test_http_safety import Pki, pki  # noqa: F401  (a fixture: the test CA and a certificate for 127.0.0.1)

from enrich.demo_server import DemoSettings, create_app


@dataclass
class Table:
    """What the table server answers at one path."""

    body: bytes
    content_type: str | None = "text/csv"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class TableServer:
    """The table server: its URL, the tables it serves by path, and the requests it got."""

    url: str
    tables: dict[str, Table]
    seen: list[str]  # path?query of each request
    auth: list[str | None]  # the Authorization header of each request

    def at(self, path: str) -> str:
        return self.url + path


def table_app(tables: dict[str, Table], seen: list[str], auth: list[str | None]) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append(request.path_qs)
        auth.append(request.headers.get("Authorization"))
        path = request.path
        if path == "/boom":
            return web.Response(status=503, reason="Service Unavailable", text="try later")
        if path == "/slow":
            await asyncio.sleep(2)
            return web.Response(text="id\n1\n", content_type="text/csv")
        if path == "/stall":  # starts the table, then sends nothing more
            resp = web.StreamResponse(headers={"Content-Type": "text/csv"})
            await resp.prepare(request)
            await resp.write(b"email,domain\n")
            await asyncio.sleep(2)
            return resp
        if path == "/loop":
            raise web.HTTPFound("/loop")
        if path.startswith("/moved/"):
            raise web.HTTPFound(
                "/t/" + path.removeprefix("/moved/") + ("?" + request.query_string if request.query_string else "")
            )
        if path == "/cut":  # promises more than it sends, then hangs up
            resp = web.StreamResponse(headers={"Content-Type": "text/csv", "Content-Length": "1000"})
            await resp.prepare(request)
            await resp.write(b"email,domain\n")
            assert request.transport is not None
            request.transport.close()
            return resp
        if path.startswith("/private/"):
            if (
                request.headers.get("Authorization") != "Basic YW5hOnBhNTV3b3Jk"
                or request.query.get("token") != "s3cr3t-tok"
            ):
                return web.Response(status=401, reason="Unauthorized")
            path = "/t/" + path.removeprefix("/private/")
        table = tables.get(path)
        if table is None:
            return web.Response(status=404, reason="Not Found", text="no such sheet")
        headers = dict(table.headers)
        if table.content_type is not None:
            headers["Content-Type"] = table.content_type
        return web.Response(body=table.body, headers=headers)  # no type given: aiohttp's application/octet-stream

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    return app


@pytest.fixture
def tables(serve: Serve) -> TableServer:
    tables: dict[str, Table] = {}
    seen: list[str] = []
    auth: list[str | None] = []
    server = serve(table_app(tables, seen, auth))
    return TableServer(server.url, tables, seen, auth)


@pytest.fixture(autouse=True)
def own_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The system's temporary folder, for this test only: where the fetched copies go."""
    folder = tmp_path / "sys-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder


@pytest.fixture
def api(serve: Serve, demo_env: dict[str, str]) -> RunningServer:
    return serve(create_app(DemoSettings()))


def people(tmp_path: Path, rows: int) -> bytes:
    """A CSV of ``rows`` people the demo API knows (columns email, domain), as bytes."""
    path = known_people(tmp_path, rows)
    data = path.read_bytes()
    path.unlink()
    return data


def parquet_bytes(csv: bytes) -> bytes:
    buffer = io.BytesIO()
    pl.read_csv(csv).write_parquet(buffer)
    return buffer.getvalue()


def job(tmp_path: Path, api: RunningServer, source: str, **extra: Any) -> Path:
    config = demo_config(api.url, input=source, output=str(tmp_path / "out.csv"), **extra)
    return write_config(tmp_path / "job.yaml", config)


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.removesuffix("\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- a table from a URL, end to end -----------------------------------------------------------------


def test_a_csv_from_a_url_is_enriched_like_a_file(
    tables: TableServer, api: RunningServer, tmp_path: Path, own_temp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = people(tmp_path, 12)
    tables.tables["/t/leads.csv"] = Table(data)
    cfg = job(tmp_path, api, tables.at("/t/leads.csv"))

    assert run_cli(["run", str(cfg)]) == 0
    out = tmp_path / "out.csv"
    table = summary_table(capsys.readouterr().err, out)
    assert table["rows"] == "12 ok, 0 failed, 0 skipped"
    assert tables.seen == ["/t/leads.csv"]  # fetched once, for both passes
    assert api.state.calls == 12
    written = pl.read_csv(out)
    assert written.select("email", "domain").equals(pl.read_csv(data))
    assert written["_error"].null_count() == 12
    summary = json.loads(out.with_name("out.csv.summary.json").read_text("utf-8"))
    assert (summary["input"], summary["input_bytes"]) == (tables.at("/t/leads.csv"), len(data))
    assert summary["input_sha256"] == hashlib.sha256(data).hexdigest()
    assert list(own_temp.iterdir()) == []  # the local copy is gone with the run


def test_a_rerun_fetches_again_and_calls_only_new_or_changed_rows(
    tables: TableServer, api: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = people(tmp_path, 20)
    tables.tables["/t/leads.csv"] = Table(data)
    cfg = job(tmp_path, api, tables.at("/t/leads.csv"))
    out = tmp_path / "out.csv"
    assert run_cli(["run", str(cfg)]) == 0
    capsys.readouterr()
    first = json.loads(out.with_name("out.csv.summary.json").read_text("utf-8"))

    assert run_cli(["run", str(cfg)]) == 0  # the same table: every row is in the journal
    table = summary_table(capsys.readouterr().err, out)
    assert table["calls"] == "0 made, 0 retries, 0 throttled (429); 20 rows from the journal, 0 duplicates"
    assert api.state.calls == 20
    assert json.loads(out.with_name("out.csv.summary.json").read_text("utf-8"))["input_sha256"] == first["input_sha256"]

    # The sheet changes: three rows added, one row's email changed, the rest as they were.
    more = people(tmp_path, 24).splitlines(keepends=True)
    lines = data.splitlines(keepends=True)
    lines[5] = more[21]
    tables.tables["/t/leads.csv"] = Table(b"".join(lines) + b"".join(more[22:]))
    assert run_cli(["run", str(cfg)]) == 0
    table = summary_table(capsys.readouterr().err, out)
    assert table["calls"] == "4 made, 0 retries, 0 throttled (429); 19 rows from the journal, 0 duplicates"
    assert api.state.calls == 24
    assert tables.seen == ["/t/leads.csv"] * 3
    assert pl.read_csv(out).height == 23


def test_a_parquet_table_from_a_url(
    tables: TableServer, api: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = people(tmp_path, 8)
    tables.tables["/t/leads.parquet"] = Table(parquet_bytes(data), "application/octet-stream")
    cfg = job(tmp_path, api, tables.at("/t/leads.parquet"))

    assert run_cli(["run", str(cfg)]) == 0
    assert summary_table(capsys.readouterr().err, tmp_path / "out.csv")["rows"] == "8 ok, 0 failed, 0 skipped"
    assert pl.read_csv(tmp_path / "out.csv").select("email", "domain").equals(pl.read_csv(data))


def test_a_workbook_from_a_url_and_its_sheet(
    tables: TableServer, api: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import xlsxwriter

    data = people(tmp_path, 5)
    buffer = io.BytesIO()
    with xlsxwriter.Workbook(buffer) as book:
        book.add_worksheet("Notes").write(0, 0, "not the leads")
        pl.read_csv(data).write_excel(book, worksheet="Leads")
    # Google Sheets' export link: the kind of table is in the query, the sheet in the config or --sheet.
    xlsx = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    tables.tables["/export"] = Table(buffer.getvalue(), xlsx)
    cfg = job(tmp_path, api, tables.at("/export?format=xlsx"), sheet="Leads")

    assert run_cli(["run", str(cfg)]) == 0
    assert summary_table(capsys.readouterr().err, tmp_path / "out.csv")["rows"] == "5 ok, 0 failed, 0 skipped"
    assert pl.read_csv(tmp_path / "out.csv").select("email", "domain").equals(pl.read_csv(data))
    assert run_cli(["validate", str(cfg), "--sheet", "1"]) == 2  # the first sheet has no email column
    assert "which is not a column of export.xlsx" in capsys.readouterr().err


# What kind of table: the suffix, a Google Sheets export link, the server's file name, the
# Content-Type, Parquet's magic bytes, or #format= when nothing says.
FORMATS = [
    pytest.param("/t/leads.csv", "/t/leads.csv", "csv", "text/plain", {}, id="the path's suffix"),
    pytest.param(
        "/spreadsheets/d/e/2PACX-1vQ/pub",
        "/spreadsheets/d/e/2PACX-1vQ/pub?gid=0&single=true&output=csv",
        "csv",
        "text/plain",
        {},
        id="a published Google Sheet: output=csv",
    ),
    pytest.param("/export", "/export?format=tsv", "tsv", "text/plain", {}, id="format=tsv"),
    pytest.param(
        "/dl",
        "/dl?id=7",
        "csv",
        "application/octet-stream",
        {"Content-Disposition": 'attachment; filename="Leads - Sheet1.csv"'},
        id="the server's file name",
    ),
    pytest.param("/data", "/data", "csv", "text/csv; charset=utf-8", {}, id="Content-Type text/csv"),
    pytest.param("/data", "/data", "parquet", "application/vnd.apache.parquet", {}, id="Content-Type parquet"),
    pytest.param("/data", "/data", "parquet", None, {}, id="octet-stream and Parquet's magic bytes"),
    pytest.param("/data", "/data#format=ndjson", "ndjson", "text/plain", {}, id="#format=ndjson"),
]


@pytest.mark.parametrize(("path", "url", "kind", "content_type", "headers"), FORMATS)
def test_what_kind_of_table_it_is(
    tables: TableServer,
    demo_env: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    path: str,
    url: str,
    kind: str,
    content_type: str | None,
    headers: dict[str, str],
) -> None:
    frame = pl.DataFrame({"email": ["a@example.com", "b@example.com"], "domain": ["example.com", "example.com"]})
    bodies = {
        "csv": frame.write_csv().encode(),
        "tsv": frame.write_csv(separator="\t").encode(),
        "ndjson": frame.write_ndjson().encode(),
        "parquet": parquet_bytes(frame.write_csv().encode()),
    }
    tables.tables[path] = Table(bodies[kind], content_type, headers)
    cfg = write_config(tmp_path / "job.yaml", demo_config("http://127.0.0.1:9", input=tables.at(url)))

    assert run_cli(["validate", str(cfg)]) == 0
    lines = capsys.readouterr().out.splitlines()
    shown = tables.at(url)
    assert (
        lines[1] == f"  input      {shown} (fetched, {len(bodies[kind]):,} bytes; 2 columns; the ones used are there)"
    )
    assert tables.seen == [path + url.removeprefix(path).split("#")[0]]  # the fragment is not sent


def test_every_command_takes_a_url(
    tables: TableServer, api: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], own_temp: Path
) -> None:
    data = people(tmp_path, 6)
    tables.tables["/t/leads.csv"] = Table(data)
    url = tables.at("/t/leads.csv")
    cfg = job(tmp_path, api, str(tmp_path / "absent.csv"))  # --input overrides it

    assert run_cli(["validate", str(cfg), "--input", url]) == 0
    assert f"  input      {url} (fetched, {len(data):,} bytes; 2 columns;" in capsys.readouterr().out
    assert run_cli(["run", str(cfg), "--input", url, "--dry-run", "2"]) == 0
    dry = capsys.readouterr().out
    assert "  rows                 6\n" in dry and "  calls to make        6\n" in dry
    assert run_cli(["preview", str(cfg), "--input", url, "--rows", "1"]) == 0
    assert capsys.readouterr().out.startswith("row 0: GET ")
    assert api.state.calls == 1
    assert run_cli(["run", str(cfg), "--input", url, "-q"]) == 0
    assert run_cli(["extract", str(cfg), "--input", url, "-q"]) == 0
    assert pl.read_csv(tmp_path / "out.csv").height == 6
    assert api.state.calls == 7

    starter = tmp_path / "starter.yaml"
    assert run_cli(["init", url, "--config", str(starter)]) == 0
    assert capsys.readouterr().err.startswith(f"wrote {starter} for {url} (2 columns).")
    assert f'input: "{url}"' in starter.read_text("utf-8").splitlines()
    assert tables.seen == ["/t/leads.csv"] * 6
    assert list(own_temp.iterdir()) == []


# --- failures: the whole error line, the exit code, nothing sent to the API ---------------------------


FAILURES = [
    pytest.param(
        "/t/absent.csv",
        {},
        2,
        "error: cannot fetch the input {url}: the server answered HTTP 404 Not Found. Check the URL: no table is "
        "there (in Google Sheets, publish the sheet again and copy the new link).",
        id="404",
    ),
    pytest.param(
        "/private/leads.csv",
        {},
        2,
        "error: cannot fetch the input {url}: the server answered HTTP 401 Unauthorized. The link needs access it "
        "does not carry: publish the table (in Google Sheets: File > Share > Publish to web, as CSV), or put the "
        "token in the URL (?token=... is never shown).",
        id="401",
    ),
    pytest.param(
        "/boom",
        {},
        3,
        "error: cannot fetch the input {url}: the server answered HTTP 503 Service Unavailable. Run again later.",
        id="503",
    ),
    pytest.param(
        "/slow",
        {"timeout": 0.3},
        3,
        "error: cannot fetch the input {url}: no answer for 0.3s (timeout). Nothing was sent to the API; run "
        "again later.",
        id="timeout",
    ),
    pytest.param(
        "/stall",
        {"timeout": 0.3},
        3,
        "error: cannot fetch the input {url}: no answer for 0.3s (timeout). Nothing was sent to the API; run "
        "again later.",
        id="stalls mid-body",
    ),
    pytest.param(
        "/cut",
        {},
        3,
        "error: cannot fetch the input {url}: the connection broke before the whole table came. Nothing was sent "
        "to the API; run again later.",
        id="cut short",
    ),
    pytest.param(
        "/loop",
        {},
        2,
        "error: cannot fetch the input {url}: it redirects more than 10 times. Check the URL in a browser, and "
        "give the address the table ends up at.",
        id="a redirect loop",
    ),
    pytest.param(
        "/page.csv",
        {},
        2,
        "error: the input {url} is a web page (text/html), not a table: the link may need a sign-in, or lead to "
        "the page that shows the table. Give the link of the file itself (in Google Sheets: File > Share > "
        "Publish to web, as CSV).",
        id="a sign-in page",
    ),
    pytest.param(
        "/download?id=7",
        {},
        2,
        "error: cannot tell what kind of table the input {url} is: its path ends in none of {suffixes}, and the "
        "server sends it as application/octet-stream. Say it at the "
        "end of the URL, after a # (never sent to the server): {url}#format=csv (or parquet, xlsx, ...).",
        id="no way to tell the format",
    ),
    pytest.param(
        "/empty.csv",
        {},
        2,
        "error: the input {url} is empty: the server sent no bytes. Check the URL.",
        id="empty",
    ),
]


@pytest.mark.parametrize(("path", "extra", "code", "expected"), FAILURES)
def test_a_table_that_cannot_be_fetched(
    tables: TableServer,
    api: RunningServer,
    tmp_path: Path,
    own_temp: Path,
    capsys: pytest.CaptureFixture[str],
    path: str,
    extra: dict[str, Any],
    code: int,
    expected: str,
) -> None:
    tables.tables["/page.csv"] = Table(b"<html><body>Sign in</body></html>", "text/html")
    tables.tables["/download"] = Table(b"email,domain\n", None)
    tables.tables["/empty.csv"] = Table(b"")
    from enrich.remote import SUFFIXES

    url = tables.at(path)
    cfg = job(tmp_path, api, url, **extra)

    assert run_cli(["run", str(cfg)]) == code
    assert error_line(capsys) == expected.format(url=url, suffixes=", ".join(SUFFIXES))
    assert api.state.logins == api.state.calls == 0
    assert not (tmp_path / "out.csv").exists()
    assert list(own_temp.iterdir()) == []


def test_a_server_that_is_down_exits_3(api: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}/leads.csv"
    cfg = job(tmp_path, api, url)

    assert run_cli(["run", str(cfg)]) == 3
    line = error_line(capsys)
    assert re.fullmatch(
        rf"error: cannot fetch the input {re.escape(url)}: cannot connect to 127\.0\.0\.1: .+\. Nothing was sent "
        r"to the API; run again later\.",
        line,
    ), line
    assert api.state.calls == 0


def test_a_redirect_is_followed(
    tables: TableServer, api: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tables.tables["/t/leads.csv"] = Table(people(tmp_path, 4), "text/plain")
    cfg = job(tmp_path, api, tables.at("/moved/leads.csv"))

    assert run_cli(["run", str(cfg), "-q"]) == 0, capsys.readouterr().err
    assert tables.seen == ["/moved/leads.csv", "/t/leads.csv"]
    assert api.state.calls == 4


def test_a_table_too_large_is_refused(
    tables: TableServer,
    api: RunningServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from enrich import remote

    monkeypatch.setattr(remote, "MAX_INPUT_BYTES", 100)
    tables.tables["/t/leads.csv"] = Table(people(tmp_path, 10))
    cfg = job(tmp_path, api, tables.at("/t/leads.csv"))

    assert run_cli(["run", str(cfg)]) == 2
    assert error_line(capsys) == (
        f"error: the input {tables.at('/t/leads.csv')} is larger than 100 bytes, the most enrich fetches: download it "
        "yourself and give the file as the input."
    )


def test_only_http_urls(demo_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path / "job.yaml", demo_config("http://127.0.0.1:9", input="s3://bucket/leads.csv"))

    line = cfg.read_text("utf-8").splitlines().index("input: s3://bucket/leads.csv") + 1

    assert run_cli(["validate", str(cfg)]) == 2
    assert error_line(capsys) == (
        f"error: {cfg}, line {line}: input: enrich cannot read a table from a s3:// URL. Give a file path, or an http:// "
        "or https:// URL (for a file in cloud storage, a pre-signed https:// link)."
    )


# --- TLS -----------------------------------------------------------------------------------------------


def test_https_is_verified_with_the_configs_ca_bundle(
    serve: Serve,
    pki: Pki,  # noqa: F811
    api: RunningServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tables: dict[str, Table] = {"/t/leads.csv": Table(people(tmp_path, 3))}
    seen: list[str] = []
    server = serve(table_app(tables, seen, []), pki.server_context())
    url = server.url + "/t/leads.csv"

    assert run_cli(["run", str(job(tmp_path, api, url))]) == 3
    assert error_line(capsys) == (
        f"error: cannot fetch the input {url}: the TLS certificate of {server.url} cannot be verified (unable to get "
        "local issuer certificate). If its server uses a private CA, set tls.ca_bundle to its certificate (a PEM "
        "file)."
    )
    assert seen == [] and api.state.calls == 0

    assert run_cli(["run", str(job(tmp_path, api, url, tls={"ca_bundle": str(pki.ca)})), "-q"]) == 0
    assert seen == ["/t/leads.csv"] and api.state.calls == 3


def test_no_redirect_from_https_down_to_http(
    serve: Serve,
    pki: Pki,  # noqa: F811
    api: RunningServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def down(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://127.0.0.1:9/leads.csv")

    app = web.Application()
    app.router.add_get("/leads.csv", down)
    server = serve(app, pki.server_context())
    url = server.url + "/leads.csv"

    assert run_cli(["run", str(job(tmp_path, api, url, tls={"ca_bundle": str(pki.ca)}))]) == 2
    assert error_line(capsys) == (
        f"error: cannot fetch the input {url}: it redirects from https:// to http://127.0.0.1, which would carry "
        "the table unencrypted. Give the URL it should be fetched from, over https://."
    )


# --- secrets in the URL ----------------------------------------------------------------------------------


def test_a_urls_password_and_token_are_never_shown(
    tables: TableServer, api: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tables.tables["/t/leads.csv"] = Table(people(tmp_path, 5))
    port = tables.url.rsplit(":", 1)[1]
    url = f"http://ana:pa55word@127.0.0.1:{port}/private/leads.csv?token=s3cr3t-tok&gid=0"
    shown = f"http://ana:***@127.0.0.1:{port}/private/leads.csv?token=***&gid=0"
    cfg = job(tmp_path, api, url)
    out = tmp_path / "out.csv"

    assert run_cli(["run", str(cfg), "--log-format", "json"]) == 0
    err = capsys.readouterr().err
    start = json.loads(err.splitlines()[0])
    assert (start["event"], start["input"]) == ("start", shown)
    summary = out.with_name("out.csv.summary.json").read_text("utf-8")
    assert json.loads(summary)["input"] == shown
    assert tables.auth == ["Basic YW5hOnBhNTV3b3Jk"]  # the password went to the server, and nowhere else

    # Every failing way, by the config and by --input: the error names the URL masked.
    wrong = url.replace("leads.csv", "absent.csv")
    assert run_cli(["run", str(cfg), "--input", wrong, "--debug"]) == 2
    assert run_cli(["validate", str(cfg), "--input", url.replace("pa55word", "wrong-pass")]) == 2
    assert run_cli(["init", url.replace("s3cr3t-tok", "s3cr3t-tok-2"), "--config", str(tmp_path / "i.yaml")]) == 2
    config_down = job(tmp_path, api, url.replace(port, str(free_port())))
    assert run_cli(["run", str(config_down), "--log-format", "json"]) == 3
    err += capsys.readouterr().err
    assert "cannot fetch the input http://ana:***@" in err
    summary += out.with_name("out.csv.summary.json").read_text("utf-8")
    for secret in ("pa55word", "wrong-pass", "s3cr3t-tok"):
        assert secret not in err and secret not in summary


def test_a_token_as_the_user_name_is_masked_too(
    tables: TableServer, demo_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = tables.url.rsplit(":", 1)[1]
    cfg = write_config(tmp_path / "job.yaml", demo_config("http://127.0.0.1:9"))

    assert run_cli(["validate", str(cfg), "--input", f"http://ghp_t0k3n@127.0.0.1:{port}/absent.csv?sig=abc"]) == 2
    assert error_line(capsys).startswith(
        f"error: cannot fetch the input http://***@127.0.0.1:{port}/absent.csv?sig=***: "
    )
