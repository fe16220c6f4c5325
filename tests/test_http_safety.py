"""HTTP safety, end to end against real servers on 127.0.0.1: redirects, TLS, Retry-After,
retries of POST and PATCH, response size limits, and what ``--debug`` prints.

Each server records what reached it (headers, attempts per row, arrival times) in plain
lists and dicts; the tests check those, and the exact text a user sees.
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import math
import re
import socket
import sqlite3
import ssl
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
from aiohttp import web
from conftest import RunningServer, run_cli, write_config
from jsonschema import Draft7Validator

import enrich
from enrich import config as cfg
from enrich.config import config_from_dict, load_config
from enrich.errors import ConfigError
from enrich.schema import config_schema

ROOT = Path(__file__).resolve().parent.parent
RETRIES_PAGE = (ROOT / "docs" / "retries.md").read_text(encoding="utf-8")
FAST_RETRY = {"attempts": 3, "backoff": 0.01, "max_backoff": 0.02}
MB = 1024 * 1024

Serve = Callable[..., RunningServer]


# --- helpers -------------------------------------------------------------------------------------


def job(request: str | dict[str, Any], **top: Any) -> dict[str, Any]:
    """A config without login: a URL template or a whole ``request`` section, plus top-level keys."""
    config: dict[str, Any] = {
        "request": {"url": request} if isinstance(request, str) else request,
        "fields": {"got": "id"},
        "concurrency": 4,
        "retry": dict(FAST_RETRY),
    }
    config.update(top)
    return config


@dataclass
class Ran:
    """What ``enrich run`` did: its exit code, its stderr and where its output would be."""

    code: int
    err: str
    output: Path
    journal: Path

    def rows(self) -> dict[str, dict[str, Any]]:
        """The output rows by their `id`."""
        frame = pl.read_csv(self.output, infer_schema_length=None, schema_overrides={"id": pl.String})
        return {r["id"]: r for r in frame.iter_rows(named=True)}


def run(tmp_path: Path, capsys: pytest.CaptureFixture[str], config: dict[str, Any], ids: list[str], *argv: str) -> Ran:
    """``enrich run -q`` on a table of ``ids`` with ``config`` (files in ``tmp_path``)."""
    inp = tmp_path / "in.csv"
    pl.DataFrame({"id": ids}, schema={"id": pl.String}).write_csv(inp)
    path = write_config(tmp_path / "job.yaml", config)
    out = tmp_path / "out.csv"
    capsys.readouterr()
    code = run_cli(["run", str(path), "--input", str(inp), "--output", str(out), "-q", *argv])
    return Ran(code, capsys.readouterr().err, out, tmp_path / "out.csv.journal")


def journal_rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM calls").fetchone()[0])


def free_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connecting to it is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- 1. redirects: followed within the API's origin only, or not at all ----------------------------


def test_a_redirect_to_another_origin_carries_no_secret(
    serve: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_KEY", "key-SECRET-7f3a9c")
    monkeypatch.setenv("LOGIN_SECRET", "login-SECRET-2b8e")
    token, cookie = "tok-SECRET-5e1d0b", "cookie-SECRET-8a2f"
    elsewhere: list[dict[str, str]] = []

    async def steal(request: web.Request) -> web.Response:
        elsewhere.append(dict(request.headers))
        return web.json_response({"id": "stolen"})

    other_app = web.Application()
    other_app.router.add_route("*", "/{tail:.*}", steal)
    other = serve(other_app)
    # The same host on another port is another origin; cookies ignore ports, so a followed
    # redirect would take the cookie along too.
    away = other.url.replace("127.0.0.1", "localhost")
    seen: list[dict[str, str]] = []

    async def login(request: web.Request) -> web.Response:
        response = web.json_response({"access_token": token})
        response.set_cookie("session", cookie)
        return response

    async def item(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        kind = request.match_info["id"]
        if kind == "chain":  # first within the origin, then away
            return web.Response(status=307, headers={"Location": "/v1/items/302"})
        return web.Response(status=int(kind), headers={"Location": f"{away}/steal/{kind}?k=1"})

    app = web.Application()
    app.router.add_post("/auth/token", login)
    app.router.add_route("*", "/v1/items/{id}", item)
    api = serve(app).url.replace("127.0.0.1", "localhost")
    config = job(
        {
            "method": "POST",
            "url": api + "/v1/items/{{id}}",
            "headers": {"X-Api-Key": "${API_KEY}"},
            "body": {"id": "{{id}}", "key": "${API_KEY}"},
        },
        auth={"url": api + "/auth/token", "body": {"secret": "${LOGIN_SECRET}"}, "token_path": "access_token"},
        concurrency=1,
    )
    ids = ["301", "302", "303", "307", "308", "chain"]
    ran = run(tmp_path, capsys, config, ids)

    assert ran.code == 0, ran.err
    rows = ran.rows()
    origin = away.rstrip("/")
    for kind in ids:
        status = 302 if kind == "chain" else int(kind)
        assert rows[kind]["_http_status"] == status
        assert rows[kind]["_error"] == f"HTTP {status}: redirected to another origin ({origin}), not followed"
    assert elsewhere == []  # not one request reached the other origin: no header, no cookie, no body
    # the secrets were in play: every call to the API itself carried the token and the key
    assert len(seen) == len(ids) + 1  # the chain's second hop
    for headers in seen:
        assert headers["Authorization"] == f"Bearer {token}"
        assert headers["X-Api-Key"] == "key-SECRET-7f3a9c"
        # No cookie jar: the login's cookie goes nowhere unless `auth.token_cookie` names it.
        assert "Cookie" not in headers


@pytest.mark.parametrize("follow", [True, False], ids=["followed by default", "follow_redirects: false"])
def test_redirects_within_the_origin_can_be_turned_off(
    serve: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str], follow: bool
) -> None:
    finals: list[str] = []

    async def item(request: web.Request) -> web.Response:
        kind = request.match_info["id"]
        if kind == "plain":
            return web.json_response({"id": kind})
        return web.Response(status=int(kind), headers={"Location": f"/v1/final/{kind}"})

    async def final(request: web.Request) -> web.Response:
        finals.append(request.match_info["id"])
        return web.json_response({"id": "final-" + request.match_info["id"]})

    app = web.Application()
    app.router.add_get("/v1/items/{id}", item)
    app.router.add_get("/v1/final/{id}", final)
    server = serve(app)
    request: dict[str, Any] = {"url": server.url + "/v1/items/{{id}}"}
    if not follow:
        request["follow_redirects"] = False
    codes = ["301", "302", "303", "307", "308"]
    ran = run(tmp_path, capsys, job(request), [*codes, "plain"])

    assert ran.code == 0, ran.err
    rows = ran.rows()
    assert (rows["plain"]["got"], rows["plain"]["_error"]) == ("plain", None)
    for code in codes:
        if follow:
            assert (rows[code]["got"], rows[code]["_http_status"], rows[code]["_error"]) == (f"final-{code}", 200, None)
        else:
            assert rows[code]["_http_status"] == int(code)
            assert rows[code]["_error"] == f"HTTP {code}: redirect not followed (request.follow_redirects is false)"
            assert rows[code]["_attempts"] == 1
    assert sorted(finals) == (codes if follow else [])


# --- 2. TLS --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A test CA, a server certificate for 127.0.0.1 signed by it, client certificates, and odd files."""

    ca: Path
    other_ca: Path  # a CA that signed nothing here
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_both: Path  # certificate and key in one file
    client_key_encrypted: Path
    not_pem: Path

    def server_context(self, client_certs: bool = False) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.server_cert, self.server_key)
        if client_certs:
            ctx.load_verify_locations(self.ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.UTC)

    def issue(
        name: str,
        key: Any,
        signer: Any,
        issuer: str,
        *,
        ca: bool = False,
        extensions: list[Any] = (),  # type: ignore[assignment]
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            usage = dict.fromkeys(
                ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement"), False
            )
            builder = builder.add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                    **usage,
                ),
                critical=True,
            ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        else:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
            )
        for extension in extensions:
            builder = builder.add_extension(extension, critical=False)
        return builder.sign(signer, hashes.SHA256())

    def pem(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(key: Any, password: bytes | None = None) -> bytes:
        encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)

    ca_key, other_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    ca = issue("enrich test CA", ca_key, ca_key, "enrich test CA", ca=True)
    other = issue("another CA", other_key, other_key, "another CA", ca=True)
    server = issue(
        "127.0.0.1",
        server_key,
        ca_key,
        "enrich test CA",
        extensions=[
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
        ],
    )
    client = issue(
        "enrich test client",
        client_key,
        ca_key,
        "enrich test CA",
        extensions=[x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])],
    )
    files = {
        "ca": pem(ca),
        "other_ca": pem(other),
        "server_cert": pem(server),
        "server_key": key_pem(server_key),
        "client_cert": pem(client),
        "client_key": key_pem(client_key),
        "client_both": pem(client) + key_pem(client_key),
        "client_key_encrypted": key_pem(client_key, b"pass-word-1"),
        "not_pem": b"this is not a certificate\n",
    }
    for name, data in files.items():
        (folder / f"{name}.pem").write_bytes(data)
    return Pki(**{name: folder / f"{name}.pem" for name in files})


def tls_api(serve: Serve, pki: Pki, client_certs: bool = False) -> tuple[RunningServer, list[str | None]]:
    """An HTTPS API on 127.0.0.1; records, per call, the client certificate's name (None: none)."""
    seen: list[str | None] = []

    async def item(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(pair[0] for pair in peer["subject"]) if peer else {}
        seen.append(subject.get("commonName"))
        return web.json_response({"id": request.match_info["id"]})

    app = web.Application()
    app.router.add_get("/v1/items/{id}", item)
    return serve(app, pki.server_context(client_certs)), seen


VERIFY_OFF = (
    "warning: {cfg}, line {line}: tls.verify is false: the API's certificate is not checked, so anyone on the network "
    "path can read and change the calls, and take the token and keys they carry.\n"
)


@pytest.mark.parametrize(
    ("tls", "host", "code", "expected_err"),
    [
        pytest.param(
            None,
            "127.0.0.1",
            3,
            "error: the TLS certificate of {url} cannot be verified (unable to get local issuer certificate). "
            "If the API uses a private CA, set tls.ca_bundle to its certificate (a PEM file).\n",
            id="verified by default: a private CA is not trusted",
        ),
        pytest.param(
            {"ca_bundle": "other_ca"},
            "127.0.0.1",
            3,
            "error: the TLS certificate of {url} cannot be verified (unable to get local issuer certificate). "
            "If the API uses a private CA, set tls.ca_bundle to its certificate (a PEM file).\n",
            id="a bundle of another CA",
        ),
        pytest.param({"ca_bundle": "ca"}, "127.0.0.1", 0, "", id="ca_bundle trusts it"),
        pytest.param(
            {"ca_bundle": "ca"},
            "localhost",
            3,
            "error: the TLS certificate of {url} cannot be verified (Hostname mismatch, certificate is not "
            "valid for 'localhost'). Call the API by a name its certificate is issued for.\n",
            id="the right CA, the wrong host name",
        ),
        pytest.param({"verify": False}, "127.0.0.1", 0, VERIFY_OFF, id="verify: false, with a warning"),
    ],
)
def test_tls_is_verified_by_default_and_trusts_a_ca_bundle(
    serve: Serve,
    pki: Pki,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    tls: dict[str, Any] | None,
    host: str,
    code: int,
    expected_err: str,
) -> None:
    server, seen = tls_api(serve, pki)
    url = server.url.replace("127.0.0.1", host)
    extra: dict[str, Any] = {}
    if tls is not None:
        extra["tls"] = {k: str(getattr(pki, v)) if k == "ca_bundle" else v for k, v in tls.items()}
    ids = [f"r{i}" for i in range(6)]
    ran = run(tmp_path, capsys, job(url + "/v1/items/{{id}}", **extra), ids)

    text = (tmp_path / "job.yaml").read_text(encoding="utf-8").splitlines()
    line = next((n for n, t in enumerate(text, 1) if t.strip() == "verify: false"), None)
    assert ran.err == expected_err.format(url=url, cfg=tmp_path / "job.yaml", line=line)
    assert ran.code == code
    if code == 0:
        assert [r["got"] for r in ran.rows().values()] == ids
        assert len(seen) == len(ids)
    else:  # the run stops at the first call, before any request reached the API; nothing is written
        assert seen == []
        assert not ran.output.exists()


@pytest.mark.parametrize(
    ("client", "expected"),
    [
        pytest.param({}, None, id="no client certificate: refused"),
        pytest.param(
            {"client_cert": "client_cert", "client_key": "client_key"}, "enrich test client", id="cert and key"
        ),
        pytest.param({"client_cert": "client_both"}, "enrich test client", id="cert and key in one file"),
    ],
)
def test_mutual_tls_presents_the_client_certificate(
    serve: Serve,
    pki: Pki,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    client: dict[str, str],
    expected: str | None,
) -> None:
    server, seen = tls_api(serve, pki, client_certs=True)
    tls = {"ca_bundle": str(pki.ca), **{k: str(getattr(pki, v)) for k, v in client.items()}}
    ids = ["a", "b", "c"]
    ran = run(tmp_path, capsys, job(server.url + "/v1/items/{{id}}", tls=tls), ids)

    assert ran.code == 0, ran.err
    rows = ran.rows()
    if expected is None:
        # The server ends the TLS session when no certificate comes: the rows fail as connection errors.
        assert seen == []
        for row in rows.values():
            assert row["_error"].startswith("connection error: "), row["_error"]
            assert row["_error"].endswith("(gave up after 3 attempts)")
    else:
        assert [r["got"] for r in rows.values()] == ids
        assert seen == [expected] * len(ids)


def tls_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], tls_lines: str) -> tuple[int, str]:
    """``enrich validate`` on a config whose `tls:` section is ``tls_lines`` (from line 4)."""
    path = tmp_path / "job.yaml"
    path.write_text("request:\n  url: https://api.example.com/v1/{{id}}\ntls:\n" + tls_lines, encoding="utf-8")
    capsys.readouterr()
    code = run_cli(["validate", str(path)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("tls_lines", "expected"),
    [
        pytest.param(
            "  ca_bundle: {tmp}/missing.pem\n",
            "{src}, line 4: tls.ca_bundle: {tmp}/missing.pem is not a file. Check the path (relative paths start "
            "from the folder you run enrich from).",
            id="a missing CA bundle",
        ),
        pytest.param(
            "  ca_bundle: {not_pem}\n",
            "{src}, line 4: tls.ca_bundle: {not_pem} is not a PEM file of CA certificates "
            "([X509: NO_CERTIFICATE_OR_CRL_FOUND] no certificate or crl found).",
            id="a CA bundle that is not PEM",
        ),
        pytest.param(
            "  client_cert: {tmp}/nope.pem\n  client_key: {client_key}\n",
            "{src}, line 4: tls.client_cert: {tmp}/nope.pem is not a file. Check the path (relative paths start "
            "from the folder you run enrich from).",
            id="a missing client certificate",
        ),
        pytest.param(
            "  client_key: {client_key}\n",
            "{src}, line 4: tls.client_key needs tls.client_cert, the certificate that goes with the key.",
            id="a key without its certificate",
        ),
        pytest.param(
            "  client_cert: {client_cert}\n  client_key: {server_key}\n",
            "{src}, line 4: tls.client_cert: {client_cert} and the key in {server_key} are not a PEM certificate "
            "and its private key ([X509: KEY_VALUES_MISMATCH] key values mismatch).",
            id="a key that is not the certificate's",
        ),
        pytest.param(
            "  client_cert: {client_cert}\n",
            "{src}, line 4: tls.client_cert: {client_cert} and a key in the same file are not a PEM certificate "
            "and its private key ([SSL] PEM lib).",
            id="a certificate without its key",
        ),
        pytest.param(
            "  client_cert: {client_cert}\n  client_key: {client_key_encrypted}\n",
            "{src}, line 5: tls.client_key: {client_key_encrypted} holds an encrypted key; give enrich the key "
            "unencrypted (`openssl pkey -in key.pem -out plain.pem`) and keep the file private.",
            id="an encrypted key (never a password prompt)",
        ),
        pytest.param(
            "  verify: nope\n", "{src}, line 4: tls.verify must be true or false, got 'nope'.", id="verify: nope"
        ),
        pytest.param(
            "  verfy: false\n", "{src}, line 4: tls.verfy is not a known key. Did you mean `verify`?", id="a typo"
        ),
    ],
)
def test_tls_mistakes_are_config_errors_naming_the_key(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str], tls_lines: str, expected: str
) -> None:
    files = {name: getattr(pki, name) for name in ("not_pem", "client_cert", "client_key", "server_key")}
    files["client_key_encrypted"] = pki.client_key_encrypted
    code, err = tls_error(tmp_path, capsys, tls_lines.format(tmp=tmp_path, **files))
    assert err == "error: " + expected.format(src=tmp_path / "job.yaml", tmp=tmp_path, **files) + "\n"
    assert code == 2


@pytest.mark.parametrize(
    ("url", "auth_url", "verify", "expected"),
    [
        pytest.param("https://api.example.com/v1/{{id}}", None, True, [], id="https: no warning"),
        pytest.param(
            "http://api.example.com/v1/{{id}}",
            None,
            True,
            ["request.url is plain http:// to api.example.com"],
            id="http to another machine",
        ),
        pytest.param("http://127.0.0.1:8787/v1/{{id}}", None, True, [], id="http to 127.0.0.1"),
        pytest.param("http://localhost:8787/v1/{{id}}", None, True, [], id="http to localhost"),
        pytest.param("http://[::1]:8787/v1/{{id}}", None, True, [], id="http to ::1"),
        pytest.param("{{profile_url}}", None, True, [], id="the whole URL from a column: unknown here"),
        pytest.param(
            "https://api.example.com/v1/{{id}}",
            "http://login.example.com/token",
            True,
            ["auth.url is plain http:// to login.example.com"],
            id="a plain-http login",
        ),
        pytest.param(
            "http://10.0.0.7/v1/{{id}}",
            None,
            False,
            ["request.url is plain http:// to 10.0.0.7", "tls.verify is false"],
            id="http and verify false",
        ),
    ],
)
def test_warnings_are_found_when_the_config_loads(
    url: str, auth_url: str | None, verify: bool, expected: list[str]
) -> None:
    data: dict[str, Any] = {"request": {"url": url}}
    if auth_url:
        data["auth"] = {"url": auth_url, "token_path": "token"}
    if not verify:
        data["tls"] = {"verify": False}
    config = config_from_dict(data)
    assert len(config.warnings) == len(expected), config.warnings
    for warning, start in zip(config.warnings, expected, strict=True):
        assert warning.startswith(f"<config>: {start}"), warning


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_validate_and_run_print_the_warnings_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], log_format: str
) -> None:
    path = write_config(tmp_path / "job.yaml", {"request": {"url": "http://api.example.com/v1/{{id}}"}})
    (tmp_path / "in.csv").write_text("id\n1\n", encoding="utf-8")
    warning = (
        f"{path}, line 2: request.url is plain http:// to api.example.com: the calls, and any token, password "
        "or key they carry, cross the network unencrypted. Use https:// unless that network is yours."
    )
    files = ["--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out.csv")]
    for command in (["validate", str(path)], ["run", str(path), *files, "--dry-run"]):
        capsys.readouterr()
        assert run_cli([*command, "--log-format", log_format]) == 0
        first = capsys.readouterr().err.splitlines()[0]
        if log_format == "text":
            assert first == f"warning: {warning}"
        else:
            event = orjson.loads(first)
            assert (event["event"], event["message"]) == ("warning", warning)


# --- 3. Retry-After ------------------------------------------------------------------------------


def once_then_ok(serve: Serve, status: int, retry_after: Callable[[], str]) -> tuple[RunningServer, list[float]]:
    """Answers a row's first call with ``status`` and a Retry-After header, the next with 200."""
    arrivals: list[float] = []

    async def item(request: web.Request) -> web.Response:
        arrivals.append(time.time())
        if len(arrivals) == 1:
            return web.json_response({"error": "later"}, status=status, headers={"Retry-After": retry_after()})
        return web.json_response({"id": request.match_info["id"]})

    app = web.Application()
    app.router.add_get("/v1/items/{id}", item)
    return serve(app), arrivals


@pytest.mark.slow
@pytest.mark.parametrize(
    ("status", "retry_after", "least", "most"),
    [
        pytest.param(429, lambda: "1", 0.95, 2.5, id="seconds"),
        pytest.param(503, lambda: formatdate(math.ceil(time.time()) + 2, usegmt=True), 1.0, 3.5, id="an HTTP date"),
        pytest.param(429, lambda: "0", 0, 0.3, id="zero: at once"),
        pytest.param(503, lambda: "-5", 0, 0.3, id="negative: the backoff"),
        pytest.param(429, lambda: "soon", 0, 0.3, id="garbage: the backoff"),
        pytest.param(503, lambda: formatdate(time.time() - 3600, usegmt=True), 0, 0.3, id="a date in the past"),
    ],
)
def test_retry_after_is_honoured_or_falls_back_to_the_backoff(
    serve: Serve,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    status: int,
    retry_after: Callable[[], str],
    least: float,
    most: float,
) -> None:
    server, arrivals = once_then_ok(serve, status, retry_after)
    config = job(server.url + "/v1/items/{{id}}", retry={"attempts": 3, "backoff": 0.05, "max_backoff": 0.1})
    ran = run(tmp_path, capsys, config, ["x"])

    assert ran.code == 0, ran.err
    row = ran.rows()["x"]
    assert (row["got"], row["_http_status"], row["_attempts"], row["_error"]) == ("x", 200, 2, None)
    waited = arrivals[1] - arrivals[0]
    assert least <= waited <= most, waited


THROTTLE_AT = 6  # the call that gets the long Retry-After


def throttle_for_a_day(serve: Serve, status: int, header: Callable[[], str]) -> tuple[RunningServer, dict[str, Any]]:
    """Answers THROTTLE_AT-1 calls, then asks to wait a day; calls already on the wire still get
    their answer, slowly. With ``state["relent"]`` set, it answers everything."""
    state: dict[str, Any] = {"calls": 0, "answered": [], "relent": False}

    async def item(request: web.Request) -> web.Response:
        state["calls"] += 1
        if not state["relent"]:
            if state["calls"] == THROTTLE_AT:
                return web.json_response({"error": "quota"}, status=status, headers={"Retry-After": header()})
            if state["calls"] > THROTTLE_AT:
                await asyncio.sleep(0.3)  # on the wire when the stop comes: it must finish, and be kept
        state["answered"].append(request.match_info["id"])
        return web.json_response({"id": request.match_info["id"]})

    app = web.Application()
    app.router.add_get("/v1/items/{id}", item)
    return serve(app), state


@pytest.mark.slow
@pytest.mark.parametrize(
    ("status", "header"),
    [
        pytest.param(429, lambda: "86400", id="429, Retry-After: 86400"),
        pytest.param(503, lambda: formatdate(time.time() + 86400, usegmt=True), id="503, an HTTP date tomorrow"),
    ],
)
def test_a_retry_after_of_a_day_stops_the_run_resumably(
    serve: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str], status: int, header: Callable[[], str]
) -> None:
    server, state = throttle_for_a_day(serve, status, header)
    rows = 30
    ids = [f"r{i:02d}" for i in range(rows)]
    started = time.time()
    first = run(tmp_path, capsys, job(server.url + "/v1/items/{{id}}"), ids)
    took = time.time() - started

    assert first.code == 3
    assert took < 5  # nothing slept for a day (or for the 300 s cap)
    saved = len(state["answered"])
    # Every call but the throttled one got its answer: those before it, and the ones already on
    # the wire when it came (sent alongside it by the other workers; they finish, no new one starts).
    assert saved == state["calls"] - 1
    assert THROTTLE_AT <= saved <= THROTTLE_AT - 1 + 3, saved
    match = re.fullmatch(
        rf"error: the API asked to wait (\d+)s \(Retry-After on HTTP {status}\), more than "
        rf"retry\.max_retry_after \(300s\)\. {saved} finished calls are saved in the journal "
        rf"{re.escape(str(first.journal))}; run the same command again after (\d{{4}}-\d\d-\d\d \d\d:\d\d) UTC\.\n",
        first.err,
    )
    assert match, first.err
    waited = int(match.group(1))
    assert 86_390 <= waited <= 86_400
    after = datetime.datetime.strptime(match.group(2), "%Y-%m-%d %H:%M").replace(tzinfo=datetime.UTC).timestamp()
    assert started + waited - 1 <= after <= started + took + waited + 61  # rounded up to the minute
    assert not first.output.exists()
    # every answer the API gave is in the journal, the ones still on the wire at the stop included
    assert journal_rows(first.journal) == saved

    state["relent"] = True
    calls_before = state["calls"]
    again = run(tmp_path, capsys, job(server.url + "/v1/items/{{id}}"), ids)
    assert again.code == 0, again.err
    assert state["calls"] - calls_before == rows - saved  # the rerun called only the rest
    assert [r["got"] for r in again.rows().values()] == ids


@pytest.mark.slow
def test_the_library_stops_the_same_way(serve: Serve) -> None:
    server, _ = throttle_for_a_day(serve, 429, lambda: "3600")
    config = job(server.url + "/v1/items/{{id}}", retry={"attempts": 2, "max_retry_after": 60})
    with pytest.raises(enrich.RunAborted) as caught:
        enrich.enrich(pl.DataFrame({"id": [f"r{i}" for i in range(20)]}), config)
    assert type(caught.value).__name__ == "ThrottledTooLong"
    assert re.fullmatch(
        r"the API asked to wait 3600s \(Retry-After on HTTP 429\), more than retry\.max_retry_after \(60s\)\. "
        r"Run again after \d{4}-\d\d-\d\d \d\d:\d\d UTC\.",
        str(caught.value),
    )


# --- 4. POST and PATCH: retried only when they surely did not take effect --------------------------


def counting_api(serve: Serve, header: str = "Idempotency-Key") -> tuple[RunningServer, dict[str, list]]:
    """Counts the attempts per row (and the idempotency key of each); the first attempt of a row
    fails as its id says: e500, e503, e429, slow (past the timeout) or drop (connection closed
    unanswered)."""
    attempts: dict[str, list[str | None]] = {}

    async def item(request: web.Request) -> web.StreamResponse:
        await request.read()
        kind = request.match_info["id"]
        attempts.setdefault(kind, []).append(request.headers.get(header))
        if len(attempts[kind]) == 1:
            if kind == "e500":
                return web.json_response({"error": "broke"}, status=500)
            if kind == "e503":
                return web.json_response({"error": "busy"}, status=503, headers={"Retry-After": "0"})
            if kind == "e429":
                return web.json_response({"error": "slow down"}, status=429, headers={"Retry-After": "0"})
            if kind == "slow":
                await asyncio.sleep(0.6)
            if kind == "drop":
                assert request.transport is not None
                request.transport.close()
        return web.json_response({"id": kind})

    app = web.Application()
    app.router.add_route("*", "/v1/items/{id}", item)
    return serve(app), attempts


KINDS = ["e500", "e503", "e429", "slow", "drop", "ok"]
RETRIED = {k: (1, None) if k == "ok" else (2, None) for k in KINDS}


def only_refusals(method: str) -> dict[str, tuple[int, str | None]]:
    why = (
        f" (not retried: a {method} may already have taken effect; set request.idempotency_key, or "
        "retry.non_idempotent: true, to retry it)"
    )
    return {
        "e500": (1, 'HTTP 500 Internal Server Error: {"error": "broke"}' + why),
        "e503": (2, None),  # RFC 9110 15.6.4: the server could not handle it, so did nothing
        "e429": (2, None),  # a 429 is a refusal: nothing was done
        "slow": (1, "timed out after 0.3s" + why),
        "drop": (1, "connection error: Server disconnected" + why),
        "ok": (1, None),
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "request_keys", "retry_keys", "expected"),
    [
        pytest.param("POST", {}, {}, only_refusals("POST"), id="POST: only a 429 or 503 is retried"),
        pytest.param("PATCH", {}, {}, only_refusals("PATCH"), id="PATCH: the same"),
        pytest.param("POST", {}, {"non_idempotent": True}, RETRIED, id="POST, retry.non_idempotent: true"),
        pytest.param("POST", {"idempotency_key": "{{id}}"}, {}, RETRIED, id="POST with an idempotency key"),
        pytest.param(
            "PATCH",
            {"idempotency_key": "k-{{id}}", "idempotency_header": "X-Request-Id"},
            {},
            RETRIED,
            id="PATCH, key in another header",
        ),
        pytest.param(
            "POST", {"headers": {"idempotency-key": "{{id}}"}}, {}, RETRIED, id="POST, the key header written by hand"
        ),
        pytest.param("PUT", {}, {}, RETRIED, id="PUT: retried as before"),
        pytest.param("DELETE", {}, {}, RETRIED, id="DELETE: retried as before"),
        pytest.param("GET", {}, {}, RETRIED, id="GET: retried as before"),
    ],
)
def test_non_idempotent_methods_are_retried_only_when_safe(
    serve: Serve,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    method: str,
    request_keys: dict[str, Any],
    retry_keys: dict[str, Any],
    expected: dict[str, tuple[int, str | None]],
) -> None:
    header = request_keys.get("idempotency_header", "Idempotency-Key")
    server, attempts = counting_api(serve, header)
    request = {"method": method, "url": server.url + "/v1/items/{{id}}", **request_keys}
    if method in ("POST", "PATCH", "PUT"):
        request["body"] = {"id": "{{id}}"}
    config = job(request, timeout=0.3, concurrency=5, retry={**FAST_RETRY, **retry_keys})
    ran = run(tmp_path, capsys, config, KINDS)

    assert ran.code == 0, ran.err
    rows = ran.rows()
    assert {k: (len(attempts[k]), rows[k]["_error"]) for k in KINDS} == expected
    for kind in KINDS:
        if expected[kind][1] is None:
            assert rows[kind]["got"] == kind
    # the key, when there is one, is the same on every attempt of a row
    key = request_keys.get("idempotency_key", "").replace("{{id}}", "{}") or None
    if "headers" in request_keys:
        key = "{}"
    assert {k: set(v) for k, v in attempts.items()} == {k: {key.format(k) if key else None} for k in KINDS}


def test_a_post_is_retried_when_connecting_failed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    config = job({"method": "POST", "url": f"http://127.0.0.1:{port}/v1/items/{{{{id}}}}", "body": {"id": "{{id}}"}})
    ran = run(tmp_path, capsys, config, ["a"])
    assert ran.code == 0, ran.err
    row = ran.rows()["a"]
    assert row["_attempts"] == 3  # nothing was sent, so trying again is safe
    assert row["_error"].startswith(f"connection error: Cannot connect to host 127.0.0.1:{port} ")
    assert row["_error"].endswith(" (gave up after 3 attempts)")


# --- 5. responses: not JSON, cut off, too large ----------------------------------------------------


def body_api(serve: Serve) -> RunningServer:
    """Answers 200 with bodies that are not what a row needs."""

    async def item(request: web.Request) -> web.StreamResponse:
        kind = request.match_info["id"]
        if kind == "html":
            return web.Response(text="<html><body>Welcome! Please sign in.</body></html>", content_type="text/html")
        if kind == "cut":
            return web.Response(body=b'{"id": "cut", "na', content_type="application/json")
        if kind == "big-length":  # 2 MB, announced by Content-Length
            return web.json_response({"id": kind, "pad": " " * (2 * MB)})
        if kind == "at-limit":  # exactly 1 MB
            prefix = b'{"id": "at-limit", "pad": "'
            return web.Response(body=prefix + b"x" * (MB - len(prefix) - 2) + b'"}', content_type="application/json")
        if kind == "gzip-bomb":  # 50 MB of JSON in 50 KB of gzip
            return web.Response(
                body=gzip.compress(b'{"pad": "' + b" " * (50 * MB) + b'"}', compresslevel=9),
                headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
            )
        if kind.startswith("stream-"):  # chunked, no length: 50 MB unless the client stops reading
            return await stream(request, int(kind.split("-")[1]) * MB)
        return web.json_response({"id": kind})

    app = web.Application()
    app.router.add_get("/v1/items/{id}", item)
    return serve(app)


async def stream(request: web.Request, size: int) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    chunk = b" " * 65536
    await response.write(b'{"pad": "')
    try:
        for _ in range(size // len(chunk)):
            await response.write(chunk)
        await response.write(b'"}')
    except (ConnectionError, RuntimeError):  # the client stopped reading: expected
        pass
    return response


TOO_LARGE = "response larger than 1 MB (max_response_bytes), cut off"


def test_bodies_that_are_not_json_or_too_large_fail_their_row(
    serve: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = body_api(serve)
    ids = ["html", "cut", "big-length", "stream-50", "gzip-bomb", "at-limit", "ok"]
    config = job(server.url + "/v1/items/{{id}}", max_response_bytes="1MB")
    ran = run(tmp_path, capsys, config, ids)

    assert ran.code == 0, ran.err
    rows = ran.rows()
    expected = {
        "html": "response is not JSON (HTTP 200, text/html): unexpected character, expected a JSON value at char 0 "
        "of 50: '<html><body>Welcome! Please sign in.</body></html>'",
        "cut": "response is not JSON (HTTP 200, application/json): unexpected end of data at char 17 of 17: "
        '\'{"id": "cut", "na\'',
        "big-length": TOO_LARGE,
        "stream-50": TOO_LARGE,
        "gzip-bomb": TOO_LARGE,
        "at-limit": None,
        "ok": None,
    }
    assert {k: rows[k]["_error"] for k in ids} == expected
    assert {k: rows[k]["_http_status"] for k in ids} == dict.fromkeys(ids, 200)
    assert {k: rows[k]["_attempts"] for k in ids} == dict.fromkeys(ids, 1)  # none of them is retried
    assert (rows["at-limit"]["got"], rows["ok"]["got"]) == ("at-limit", "ok")


def peak_traced_bytes(config: dict[str, Any], ids: list[str]) -> int:
    """The peak of Python's allocations (every thread: the server's too) while the library runs."""
    tracemalloc.start()
    try:
        result = enrich.enrich(pl.DataFrame({"id": ids}), config)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.summary.rows == len(ids)
    return peak


def test_a_large_body_is_never_held_in_memory(serve: Serve) -> None:
    server = body_api(serve)
    url = server.url + "/v1/items/{{id}}"
    limited = peak_traced_bytes(job(url, max_response_bytes="1MB"), ["stream-50"])
    assert limited < 8 * MB, limited  # 3.4 MB when measured: the 1 MB read, a chunk, and the run itself
    # The measurement does see a body that is read whole: 8 MB under a limit above it.
    whole = peak_traced_bytes(job(url, max_response_bytes="100MB"), ["stream-8"])
    assert whole > 16 * MB, whole


# --- 6. --debug tracebacks are masked -------------------------------------------------------------


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_debug_tracebacks_pass_the_redactor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, log_format: str
) -> None:
    monkeypatch.setenv("SECRET_WORD", "hunter2-SECRET-9d1c")
    # `id` holds numbers, so the condition fails on the input's types, after the config loaded
    config = job("https://api.example.com/v1/{{id}}", when="id > '${SECRET_WORD}'")
    path = write_config(tmp_path / "job.yaml", config)
    (tmp_path / "in.csv").write_text("id\n1\n2\n", encoding="utf-8")
    argv = ["run", str(path), "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "o.csv")]
    capsys.readouterr()
    assert run_cli([*argv, "--debug", "--log-format", log_format]) == 2
    err = capsys.readouterr().err
    assert "hunter2" not in err
    assert "Traceback (most recent call last)" in err
    assert "`when: id > '***'` cannot be evaluated" in err
    if log_format == "json":
        events = [orjson.loads(line)["event"] for line in err.splitlines()]
        assert events == ["traceback", "error"]


# --- 7. the keys: loader, schema, docs ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("10MB", 10 * MB),
        ("512KB", 512 * 1024),
        ("512 kb", 512 * 1024),
        ("1.5 MiB", 3 * MB // 2),
        ("2g", 2 * 1024 * MB),
        (4096, 4096),
        ("4096", 4096),
        ("100 bytes", 100),
    ],
)
def test_max_response_bytes_takes_sizes(value: Any, size: int) -> None:
    config = config_from_dict({"request": {"url": "https://api.example.com/{{id}}"}, "max_response_bytes": value})
    assert config.max_response_bytes == size


def test_defaults() -> None:
    config = config_from_dict({"request": {"url": "https://api.example.com/{{id}}"}})
    assert config.max_response_bytes == 10 * MB
    assert config.tls == cfg.TLSConfig(verify=True, ca_bundle=None, client_cert=None, client_key=None)
    assert config.tls.context() is True  # aiohttp's own verified default
    assert (config.request.follow_redirects, config.request.idempotency_key) == (True, None)
    assert config.request.idempotency_header == "Idempotency-Key"
    assert (config.retry.non_idempotent, config.retry.max_retry_after) == (False, 300.0)
    assert config.warnings == ()


BASE = "request:\n  url: https://api.example.com/v1/{{id}}\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            BASE + "max_response_bytes: ten\n",
            "{src}, line 3: max_response_bytes must be a size such as 10MB, 512KB or a number of bytes, got 'ten'.",
        ),
        (
            BASE + "max_response_bytes: 0\n",
            "{src}, line 3: max_response_bytes must be a size such as 10MB, 512KB or a number of bytes, got 0.",
        ),
        (
            BASE + "max_response_bytes: 10 TB\n",
            "{src}, line 3: max_response_bytes must be a size such as 10MB, 512KB or a number of bytes, got '10 TB'.",
        ),
        (
            BASE + "  follow_redirects: maybe\n",
            "{src}, line 3: request.follow_redirects must be true or false, got 'maybe'.",
        ),
        (
            BASE + "  idempotency_key: 7\n",
            '{src}, line 3: request.idempotency_key must be a template that gives each row its own key, e.g. "{{id}}" '
            'or "order-{{order_id}}", got 7.',
        ),
        (
            BASE + "  idempotency_header: Idempotency Key\n",
            "{src}, line 3: request.idempotency_header must be an HTTP header name such as Idempotency-Key, "
            "got 'Idempotency Key'.",
        ),
        (
            BASE + "retry:\n  non_idempotent: yes please\n",
            "{src}, line 4: retry.non_idempotent must be true or false, got 'yes please'.",
        ),
    ],
)
def test_mistakes_in_the_new_keys(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == expected.replace("{src}", str(path))


def test_the_idempotency_key_names_real_columns() -> None:
    config = config_from_dict({"request": {"url": "https://api.example.com/v1", "idempotency_key": "{{od}}"}})
    with pytest.raises(ConfigError, match=re.escape("request.idempotency_key uses {{od}}, which is not a column")):
        config.check_columns(["id", "order_id"], "orders.csv")


NEW_KEYS = {
    "request": {
        "url": "https://api.example.com/v1/{{id}}",
        "method": "POST",
        "follow_redirects": False,
        "idempotency_key": "order-{{id}}",
        "idempotency_header": "X-Request-Id",
    },
    "retry": {"attempts": 3, "max_retry_after": 60, "non_idempotent": True},
    "tls": {"verify": True},
    "max_response_bytes": "512KB",
}


def test_the_schema_knows_the_new_keys() -> None:
    schema = config_schema()
    assert set(schema["properties"]["tls"]["properties"]) == set(cfg.TLS_KEYS)
    assert schema["properties"]["tls"]["additionalProperties"] is False
    assert list(Draft7Validator(schema).iter_errors(NEW_KEYS)) == []
    config_from_dict(NEW_KEYS)  # and the loader takes the same
    for bad in ({"max_response_bytes": "lots"}, {"tls": {"verify": "no"}}, {"tls": {"pinning": True}}):
        assert list(Draft7Validator(schema).iter_errors({**NEW_KEYS, **bad}))


def test_the_readme_explains_each_key() -> None:
    # (test_docs.py checks each key has its line in the config reference)
    section = RETRIES_PAGE
    for key in (
        "retry.max_retry_after",
        "retry.non_idempotent",
        "request.idempotency_key",
        "request.idempotency_header",
        "request.follow_redirects",
        "max_response_bytes",
        "tls.verify",
        "tls.ca_bundle",
        "tls.client_cert",
        "tls.client_key",
    ):
        assert f"`{key}" in section, key


@pytest.mark.parametrize(
    ("calls", "journal", "total", "says"),
    [
        (7, "out.csv.journal", 62, "62 finished calls are in the journal out.csv.journal (7 made by this run)"),
        (7, "out.csv.journal", 7, "7 finished calls are saved in the journal out.csv.journal"),
        (0, "out.csv.journal", 0, "No call had finished yet"),
        (0, None, None, "No journal was kept (journal: false)"),
    ],
)
def test_a_long_retry_after_stop_says_what_the_journal_holds(
    calls: int, journal: str | None, total: int | None, says: str
) -> None:
    from enrich.errors import ThrottledTooLong

    stop = ThrottledTooLong(86400, 429, 300, 1_800_000_000).saved(calls, journal, total)
    assert says in str(stop) and str(stop).endswith("again after 2027-01-15 08:00 UTC.")
