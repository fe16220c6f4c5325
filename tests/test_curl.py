"""Dry-run rendering: a prepared request as a curl command that a shell parses back exactly."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Callable
from typing import Any, NamedTuple

import orjson
import pytest
from aiohttp import web
from conftest import RunningServer

from enrich.client import PreparedRequest, prepare, to_curl
from enrich.config import config_from_dict
from enrich.redact import Redactor
from enrich.template import Row

SECRET = "s3cr3t-value"
AUTH = ("Authorization", "Bearer ***")


def prepared(request: dict[str, Any], row: Row) -> PreparedRequest:
    """The request enrich would send for ``row`` under the config's ``request`` section."""
    return prepare(config_from_dict({"request": request}).request, row)


class Sent(NamedTuple):
    """What a curl command line asks curl to send."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None


def read_curl(args: list[str]) -> Sent:
    """Read back the arguments ``to_curl`` writes (only those)."""
    assert args[0] == "curl"
    method, explicit, url, headers, body = "GET", False, "", {}, None
    rest = iter(args[1:])
    for arg in rest:
        if arg == "-X":
            method, explicit = next(rest), True
        elif arg == "--head":
            method = "HEAD"
        elif arg == "-H":
            header = next(rest)
            name, sep, value = header.partition(": ")
            headers.update({name: value} if sep else {header.removesuffix(";"): ""})
        elif arg == "--data-raw":
            body = next(rest).encode()
        elif arg != "--globoff":
            assert not url, f"two URLs: {url!r}, {arg!r}"
            url = arg
    if body is not None and not explicit:
        method = "POST"  # what curl does with --data-raw and no -X
    return Sent(method, url, headers, body)


def through_sh(command: str) -> list[str]:
    """The arguments a POSIX shell passes to curl for ``command`` (curl replaced by a printer)."""
    script = 'curl() { printf "%s\\0" curl "$@"; }\n' + command
    done = subprocess.run(["sh", "-c", script], capture_output=True, check=True)
    return done.stdout.decode().split("\0")[:-1]


def test_get_with_query() -> None:
    req = prepared(
        {
            "url": "https://api.example.com/v1/people/{{email}}",
            "params": {"domain": "{{domain}}", "q": "{{q}}"},
            "headers": {"Accept": "application/json"},
        },
        {"email": "ada@example.com", "domain": "example.com", "q": "a b&c"},
    )
    assert to_curl(req) == (
        "curl 'https://api.example.com/v1/people/ada%40example.com?domain=example.com&q=a+b%26c'"
        " -H 'Accept: application/json'"
    )


def test_post_json_with_quotes_and_non_ascii() -> None:
    req = prepared(
        {
            "method": "POST",
            "url": "https://api.example.com/v1/people",
            "body": {"name": "{{name}}", "note": "{{note}}"},
        },
        {"name": "Zoë O'Brien", "note": 'she said "hi"'},
    )
    assert to_curl(req, AUTH) == (
        "curl -X POST https://api.example.com/v1/people"
        " -H 'Content-Type: application/json'"
        " -H 'Authorization: Bearer ***'"
        """ --data-raw '{"name":"Zoë O'"'"'Brien","note":"she said \\"hi\\""}'"""
    )


def test_multiline_form() -> None:
    req = prepared(
        {"method": "POST", "url": "https://api.example.com/v1/people", "body": {"id": "{{id}}"}},
        {"id": 7},
    )
    assert to_curl(req, AUTH, multiline=True).splitlines() == [
        "curl -X POST https://api.example.com/v1/people \\",
        "  -H 'Content-Type: application/json' \\",
        "  -H 'Authorization: Bearer ***' \\",
        """  --data-raw '{"id":7}'""",
    ]


def test_secrets_are_redacted_everywhere() -> None:
    req = prepared(
        {
            "method": "POST",
            "url": "https://api.example.com/v1/people?api_key=" + SECRET,
            "headers": {"X-Api-Key": SECRET},
            "body": {"key": SECRET, "email": "{{email}}"},
        },
        {"email": "ada@example.com"},
    )
    assert SECRET in to_curl(req)  # the secret really is in all three places
    command = to_curl(req, ("Authorization", f"Bearer {SECRET}"), Redactor([SECRET]).redact)
    assert command == (
        "curl -X POST 'https://api.example.com/v1/people?api_key=***'"
        " -H 'X-Api-Key: ***'"
        " -H 'Content-Type: application/json'"
        " -H 'Authorization: Bearer ***'"
        """ --data-raw '{"key":"***","email":"ada@example.com"}'"""
    )


ROUND_TRIPS = [
    # a GET with a query string: no -X
    pytest.param({"url": "https://api.example.com/v1/{{id}}", "params": {"q": "{{q}}"}}, id="get-query"),
    # a POST with a JSON body holding quotes, a backslash, non-ASCII and shell metacharacters
    pytest.param(
        {"method": "POST", "url": "https://api.example.com/v1", "body": {"q": "{{q}}", "x": "$(rm -rf /) `id` \\ !"}},
        id="post-body",
    ),
    pytest.param({"method": "PUT", "url": "https://api.example.com/v1/{{id}}", "body": {"q": "{{q}}"}}, id="put"),
    pytest.param({"method": "DELETE", "url": "https://api.example.com/v1/{{id}}"}, id="delete"),
    # HEAD is written --head: curl -X HEAD would wait for a body
    pytest.param({"method": "HEAD", "url": "https://api.example.com/v1/{{id}}"}, id="head"),
    # a GET with a body keeps -X GET, or curl would POST it
    pytest.param({"method": "GET", "url": "https://api.example.com/v1", "body": {"q": "{{q}}"}}, id="get-with-body"),
    # an empty header is written `Name;` (curl drops `Name:`)
    pytest.param({"url": "https://api.example.com/v1", "headers": {"X-Empty": "", "X-Q": "{{q}}"}}, id="empty-header"),
    # brackets in the URL need --globoff, or curl reads them as a pattern
    pytest.param({"url": "https://api.example.com/v1?filter[name]={{q}}"}, id="brackets-in-url"),
]
ROW: Row = {"id": "ada@example.com", "q": 'Zoë O\'Brien "the" 1st; & | > <'}


@pytest.mark.parametrize("request_config", ROUND_TRIPS)
def test_round_trip(request_config: dict[str, Any]) -> None:
    req = prepared(request_config, ROW)
    expected = Sent(req.method, str(req.url), {**req.headers, AUTH[0]: AUTH[1]}, req.body)
    single = to_curl(req, AUTH)
    assert read_curl(shlex.split(single)) == expected
    # A shell reads the same arguments from both forms.
    assert through_sh(single) == shlex.split(single)
    assert through_sh(to_curl(req, AUTH, multiline=True)) == shlex.split(single)


async def echo(request: web.Request) -> web.Response:
    """Answer with what arrived: method, path and query as sent, headers, body."""
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path": request.raw_path,
            "headers": dict(request.headers),
            "body": body.decode(),
        }
    )


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("multiline", [False, True], ids=["one-line", "multiline"])
def test_curl_sends_the_request(serve: Callable[[web.Application], RunningServer], multiline: bool) -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    server = serve(app)
    req = prepared(
        {
            "method": "POST",
            "url": server.url + "/v1/people/{{id}}",
            "params": {"q": "{{q}}"},
            "headers": {"X-Q": "{{q}}", "X-Empty": ""},
            "body": {"q": "{{q}}"},
        },
        ROW,
    )
    command = to_curl(req, ("Authorization", "Bearer abc"), multiline=multiline) + " -sS --max-time 10"
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    done = subprocess.run(["sh", "-c", command], capture_output=True, check=True, env=env)
    seen = orjson.loads(done.stdout)
    assert seen["method"] == "POST"
    assert seen["path"] == req.url.raw_path_qs
    assert req.body is not None
    assert seen["body"] == req.body.decode()
    sent = {**req.headers, "Authorization": "Bearer abc"}
    assert {k: seen["headers"].get(k) for k in sent} == sent
