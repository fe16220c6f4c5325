"""Config validation: every invalid config gives one exact, located, actionable message.

The big table is in the style of dlt's INVALID_CONFIGS: a comment saying what is
wrong, the YAML text, and the full message expected (``{src}`` is the config file's
path). Line numbers count from the first line of the YAML text.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from enrich.config import Config, Rate, RetryConfig, config_from_dict, load_config
from enrich.errors import ConfigError, EnrichError

URL = "https://api.example.com/v1/people/{{id}}"
# Two lines; a case that starts with it has its own keys from line 3 on.
BASE = f"request:\n  url: {URL}\n"
RATE_HINT = "Write it as N/s, N/min or N/h (e.g. `20/s`, `600/min`), or `auto` (the default: as fast as the API's rate-limit headers allow)."
YAML_HINT = "Check the indentation and quote values that contain `: `, `#` or start with `{`, `[`, `*` or `&`."
LOGIN = "auth:\n  url: https://api.example.com/login\n  token_path: access_token\n"


def write(tmp_path: Path, text: str, name: str = "enrich.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error_of(path: Path, overrides: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides, env=env or {})
    return str(info.value)


INVALID_CONFIGS = [
    # --- keys -----------------------------------------------------------------------
    pytest.param(
        # a misspelt top-level key: located, with the closest known key suggested
        BASE + "concurency: 4\n",
        "{src}, line 3: concurency is not a known key. Did you mean `concurrency`?",
        id="unknown-top-level-key-did-you-mean",
    ),
    pytest.param(
        # nothing close: list the keys that are allowed instead
        BASE + "zzzzzz: 1\n",
        "{src}, line 3: zzzzzz is not a known key. Allowed keys: input, sheet, output, journal, auth, request, fields, "
        "concurrency, rate_limit, retry, timeout, input_types, key, when, skip_if_filled, diagnostics, "
        "max_error_rate, max_cost, errors_out, escape_formulas, tls, max_response_bytes, secrets, auths, steps.",
        id="unknown-top-level-key-allowed-list",
    ),
    pytest.param(
        # a misspelt nested key names its full path
        BASE + "  metod: POST\n",
        "{src}, line 3: request.metod is not a known key. Did you mean `method`?",
        id="unknown-nested-key-request-metod",
    ),
    pytest.param(
        # singular `attempt` for `attempts`
        BASE + "retry:\n  attempt: 3\n",
        "{src}, line 4: retry.attempt is not a known key. Did you mean `attempts`?",
        id="unknown-nested-key-retry-attempt",
    ),
    pytest.param(
        # a typo inside `auth`
        BASE + "auth:\n  url: https://api.example.com/login\n  token_pth: t\n",
        "{src}, line 5: auth.token_pth is not a known key. Did you mean `token_path`?",
        id="unknown-nested-key-auth-token-pth",
    ),
    # --- the file itself ----------------------------------------------------------------
    pytest.param(
        # a key indented under a scalar value: line and column of the problem
        "request:\n  url: https://x.io\n   bad: [\n",
        "{src}, line 3, column 7: the YAML is malformed: mapping values are not allowed here. " + YAML_HINT,
        id="malformed-yaml-mapping-values",
    ),
    pytest.param(
        # an unclosed flow mapping is found at the end of the text
        "request: {url: https://x.io\n",
        "{src}, line 2, column 1: the YAML is malformed: expected ',' or '}', but got '<stream end>'. " + YAML_HINT,
        id="malformed-yaml-unclosed-brace",
    ),
    pytest.param(
        # YAML forbids tabs for indentation
        "request:\n\turl: https://x.io\n",
        "{src}, line 2, column 1: the YAML is malformed: found character '\\t' that cannot start any token. "
        + YAML_HINT,
        id="malformed-yaml-tab",
    ),
    pytest.param(
        # an empty file is not an empty config
        "",
        "{src}: the config file is empty. Start from configs/demo.yaml.",
        id="empty-file",
    ),
    pytest.param(
        # comments only: still empty
        "# only a comment\n\n",
        "{src}: the config file is empty. Start from configs/demo.yaml.",
        id="comment-only-file",
    ),
    pytest.param(
        # the top level must be a mapping
        "- request\n- fields\n",
        "{src}: the config must be a mapping of keys, got ['request', 'fields'].",
        id="top-list",
    ),
    # --- request ---------------------------------------------------------------------
    pytest.param(
        # `request` is the one required section; the fix shows a minimal one
        "concurrency: 4\n",
        "{src}: `request` is missing. Add at least `request: {url: https://api.example.com/v1/{{id}}}`.",
        id="missing-request",
    ),
    pytest.param(
        # `request:` with nothing under it
        "request:\n",
        "{src}, line 1: request: `request.url` is missing; it is the endpoint each row calls.",
        id="request-null",
    ),
    pytest.param(
        # a request without its endpoint
        "request:\n  method: GET\n",
        "{src}, line 1: request: `request.url` is missing; it is the endpoint each row calls.",
        id="missing-request-url",
    ),
    pytest.param(
        # `request` given as a bare URL
        "request: https://api.example.com\n",
        "{src}, line 1: request: request must be a mapping of keys, got 'https://api.example.com'.",
        id="request-not-a-mapping",
    ),
    pytest.param(
        # only http(s) is allowed; the message shows the URL as checked (placeholders filled with x)
        "request:\n  url: ftp://files.example.com/{{id}}\n",
        "{src}, line 2: request.url: 'ftp://files.example.com/x' is not an http(s) URL. "
        "Write it in full, like https://api.example.com/v1/...",
        id="url-not-http",
    ),
    pytest.param(
        # a path alone is not a URL
        "request:\n  url: /v1/people\n",
        "{src}, line 2: request.url: '/v1/people' is not an http(s) URL. "
        "Write it in full, like https://api.example.com/v1/...",
        id="url-relative",
    ),
    pytest.param(
        # a scheme without a host
        "request:\n  url: 'https:///v1'\n",
        "{src}, line 2: request.url: 'https:///v1' is not an http(s) URL. "
        "Write it in full, like https://api.example.com/v1/...",
        id="url-without-host",
    ),
    pytest.param(
        # not an HTTP method
        BASE + "  method: FETCH\n",
        "{src}, line 3: request.method: 'FETCH' is not an HTTP method. Use one of: GET, POST, PUT, PATCH, DELETE, HEAD.",
        id="bad-method",
    ),
    pytest.param(
        # `remove_nulls` is a yes/no switch
        BASE + "  remove_nulls: yes please\n",
        "{src}, line 3: request.remove_nulls must be true or false, got 'yes please'.",
        id="remove-nulls-not-bool",
    ),
    pytest.param(
        # params are name: value pairs
        BASE + "  params: [a, b]\n",
        "{src}, line 3: request.params must be a mapping of name: value, got ['a', 'b'].",
        id="params-not-mapping",
    ),
    pytest.param(
        # headers are name: value pairs
        BASE + "  headers: nope\n",
        "{src}, line 3: request.headers must be a mapping of name: value, got 'nope'.",
        id="headers-not-mapping",
    ),
    pytest.param(
        # a body is a mapping/list or JSON text, not a number
        BASE + "  body: 5\n",
        "{src}, line 3: request.body must be a mapping (YAML) or a JSON string, got 5.",
        id="body-scalar",
    ),
    pytest.param(
        # JSON text with a bare placeholder, but the closing brace is missing
        BASE + "  body: '{\"a\": {{x}}'\n",
        "{src}, line 3: request.body is a string but not valid JSON (unexpected end of data: line 1 column 14 "
        "(char 13)). Write the body as a YAML mapping, or as JSON text with placeholders like {{column}}.",
        id="body-json-text-invalid",
    ),
    pytest.param(
        # a bare placeholder in JSON text that never closes
        BASE + "  body: '{\"a\": {{x'\n",
        "{src}, line 3: request.body has an unclosed placeholder: write it as {{column}}.",
        id="body-json-text-unclosed-placeholder",
    ),
    # --- placeholders ----------------------------------------------------------------------
    pytest.param(
        # `|money` is not a conversion
        "request:\n  url: https://api.example.com/v1/{{x|money}}\n",
        "{src}, line 2: request.url uses {{x|money}}: `money` is not a conversion. "
        "Use one of: str, int, float, bool, json.",
        id="unknown-conversion-url",
    ),
    pytest.param(
        # the same in a body value (located at the `body:` line)
        BASE + "  body:\n    amount: '{{x|money}}'\n",
        "{src}, line 4: request.body.amount uses {{x|money}}: `money` is not a conversion. "
        "Use one of: str, int, float, bool, json.",
        id="unknown-conversion-body",
    ),
    pytest.param(
        # `{{` without `}}`
        "request:\n  url: https://api.example.com/v1/{{x\n",
        "{src}, line 2: request.url has an unbalanced placeholder in 'https://api.example.com/v1/{{x': "
        "write each one as {{column}}.",
        id="unbalanced-open-url",
    ),
    pytest.param(
        # `}}` without `{{`
        "request:\n  url: https://api.example.com/v1/x}}\n",
        "{src}, line 2: request.url has an unbalanced placeholder in 'https://api.example.com/v1/x}}': "
        "write each one as {{column}}.",
        id="unbalanced-close-url",
    ),
    pytest.param(
        # an unbalanced placeholder in a query parameter
        BASE + "  params:\n    q: '{{x'\n",
        "{src}, line 4: request.params.q has an unbalanced placeholder in '{{x': write each one as {{column}}.",
        id="unbalanced-params",
    ),
    pytest.param(
        # a placeholder must name a column
        "request:\n  url: https://api.example.com/v1/{{ }}\n",
        "{src}, line 2: request.url has an empty placeholder {{}}: put a column name inside it.",
        id="empty-placeholder",
    ),
    # --- numbers and rates -------------------------------------------------------------------
    pytest.param(
        # unknown time unit
        BASE + "rate_limit: 5/fortnight\n",
        "{src}, line 3: rate_limit: '5/fortnight' is not a rate. " + RATE_HINT,
        id="rate-unknown-unit",
    ),
    pytest.param(
        # a negative number of requests per second
        BASE + "rate_limit: -3\n",
        "{src}, line 3: rate_limit must be positive, got -3.",
        id="rate-negative",
    ),
    pytest.param(
        # a negative rate written as text
        BASE + "rate_limit: '-3'\n",
        "{src}, line 3: rate_limit: '-3' is not a rate. " + RATE_HINT,
        id="rate-negative-text",
    ),
    pytest.param(
        # 0/s would never start a request (leave it out for no limit)
        BASE + "rate_limit: 0/s\n",
        "{src}, line 3: rate_limit: '0/s' is not a rate. " + RATE_HINT,
        id="rate-zero-per-s",
    ),
    pytest.param(
        # a word is not a rate
        BASE + "rate_limit: fast\n",
        "{src}, line 3: rate_limit: 'fast' is not a rate. " + RATE_HINT,
        id="rate-word",
    ),
    pytest.param(
        # at least one request must be in flight
        BASE + "concurrency: 0\n",
        "{src}, line 3: concurrency must be at least 1, got 0.",
        id="concurrency-zero",
    ),
    pytest.param(
        # not a number at all
        BASE + "concurrency: many\n",
        "{src}, line 3: concurrency must be a whole number, got 'many'.",
        id="concurrency-word",
    ),
    pytest.param(
        # concurrency counts requests: a whole number
        BASE + "concurrency: 1.5\n",
        "{src}, line 3: concurrency must be a whole number, got 1.5.",
        id="concurrency-float",
    ),
    pytest.param(
        # YAML `true` is not the number 1
        BASE + "concurrency: true\n",
        "{src}, line 3: concurrency must be a whole number, got True.",
        id="concurrency-bool",
    ),
    pytest.param(
        # a zero timeout would fail every call
        BASE + "timeout: 0\n",
        "{src}, line 3: timeout must be at least 0.001, got 0.",
        id="timeout-zero",
    ),
    pytest.param(
        # a timeout is a number of seconds
        BASE + "timeout: soon\n",
        "{src}, line 3: timeout must be a number of seconds, got 'soon'.",
        id="timeout-word",
    ),
    # --- retry -------------------------------------------------------------------------------
    pytest.param(
        # 700 is not an HTTP status
        BASE + "retry:\n  statuses: [429, 700]\n",
        "{src}, line 4: retry.statuses must be a list of HTTP status codes, e.g. [429, 503], got [429, 700].",
        id="retry-statuses-out-of-range",
    ),
    pytest.param(
        # statuses must be a list, even for one
        BASE + "retry:\n  statuses: 429\n",
        "{src}, line 4: retry.statuses must be a list of HTTP status codes, e.g. [429, 503], got 429.",
        id="retry-statuses-not-list",
    ),
    pytest.param(
        # statuses are numbers, not text
        BASE + "retry:\n  statuses: ['429']\n",
        "{src}, line 4: retry.statuses must be a list of HTTP status codes, e.g. [429, 503], got ['429'].",
        id="retry-statuses-text",
    ),
    pytest.param(
        # a bare int is the number of attempts, and is checked as such
        BASE + "retry: 0\n",
        "{src}, line 3: retry.attempts must be at least 1, got 0.",
        id="retry-bare-int-zero",
    ),
    pytest.param(
        # a bare retry value must be a whole number of attempts
        BASE + "retry: 2.5\n",
        "{src}, line 3: retry: retry must be a mapping of keys, got 2.5.",
        id="retry-bare-float",
    ),
    pytest.param(
        # attempts are counted
        BASE + "retry:\n  attempts: 2.5\n",
        "{src}, line 4: retry.attempts must be a whole number, got 2.5.",
        id="retry-attempts-float",
    ),
    pytest.param(
        # a negative backoff
        BASE + "retry:\n  backoff: -1\n",
        "{src}, line 4: retry.backoff must be at least 0, got -1.",
        id="retry-backoff-negative",
    ),
    # --- environment -------------------------------------------------------------------------
    pytest.param(
        # an unset ${VAR} is named, with both fixes
        BASE + "  headers:\n    X-Api-Key: ${API_KEY}\n",
        "{src}, line 4: request.headers.X-Api-Key uses ${API_KEY}, but the environment variable API_KEY is not "
        "set. Set it (export API_KEY=...) or give a default with ${API_KEY:-value}.",
        id="env-missing",
    ),
    pytest.param(
        # the same deep inside `auth.body`
        LOGIN + "  body:\n    client_secret: ${SECRET}\n" + BASE,
        "{src}, line 5: auth.body.client_secret uses ${SECRET}, but the environment variable SECRET is not "
        "set. Set it (export SECRET=...) or give a default with ${SECRET:-value}.",
        id="env-missing-nested",
    ),
    # --- auth --------------------------------------------------------------------------------
    pytest.param(
        # login without saying where the token is
        BASE + "auth:\n  url: https://api.example.com/login\n",
        "{src}, line 3: auth: `auth.token_path` is missing. Say where the token is in the login response, "
        "e.g. `token_path: access_token` or `token_path: data.session.jwt`.",
        id="auth-without-token-path",
    ),
    pytest.param(
        # login without a login endpoint
        BASE + "auth:\n  token_path: access_token\n",
        "{src}, line 3: auth: `auth.url` is missing; it is the login endpoint that returns the token.",
        id="auth-without-url",
    ),
    pytest.param(
        # the login URL must be http(s) too
        BASE + "auth:\n  url: not a url\n  token_path: t\n",
        "{src}, line 4: auth.url: 'not a url' is not an http(s) URL. Write it in full, like https://api.example.com/v1/...",
        id="auth-url-not-http",
    ),
    pytest.param(
        # a login body given as broken JSON text (the text is not quoted back: it holds credentials)
        BASE + LOGIN + '  body: \'{"client_id": "me", \'\n',
        "{src}, line 6: auth.body is a string but not valid JSON; write it as a YAML mapping.",
        id="auth-body-json-invalid",
    ),
    pytest.param(
        # a bad login method
        BASE + LOGIN + "  method: YEET\n",
        "{src}, line 6: auth.method: 'YEET' is not an HTTP method. Use one of: GET, POST, PUT, PATCH, DELETE, HEAD.",
        id="auth-bad-method",
    ),
    pytest.param(
        # the token path is compiled like a field path
        BASE + "auth:\n  url: https://api.example.com/login\n  token_path: data..jwt\n",
        "{src}, line 5: auth.token_path: the path 'data..jwt' has an empty step (`..` or a leading `.`).",
        id="auth-token-path-bad",
    ),
    pytest.param(
        # `auth: yes` is not a login description
        BASE + "auth: yes\n",
        "{src}, line 3: auth: auth must be a mapping of keys, got True.",
        id="auth-not-mapping",
    ),
    # --- input types -------------------------------------------------------------------------
    pytest.param(
        # `text` is not one of the input types
        BASE + "input_types:\n  zip: text\n",
        "{src}, line 4: input_types.zip: 'text' is not a type. Use one of: str, int, float, bool.",
        id="input-types-bad-type",
    ),
    pytest.param(
        # input_types map column: type
        BASE + "input_types: [zip]\n",
        "{src}, line 3: input_types must be a mapping of name: value, got ['zip'].",
        id="input-types-not-mapping",
    ),
    # --- fields ------------------------------------------------------------------------------
    pytest.param(
        # a dot path with an empty step
        BASE + "fields: a..b\n",
        "{src}, line 3: fields: the path 'a..b' has an empty step (`..` or a leading `.`).",
        id="field-path-double-dot",
    ),
    pytest.param(
        # the mapping form names the column in the message
        BASE + "fields:\n  title: person..title\n",
        "{src}, line 4: fields.title: the path 'person..title' has an empty step (`..` or a leading `.`).",
        id="field-path-double-dot-mapping",
    ),
    pytest.param(
        # a leading dot
        BASE + "fields: .a\n",
        "{src}, line 3: fields: the path '.a' has an empty step (`..` or a leading `.`).",
        id="field-path-leading-dot",
    ),
    pytest.param(
        # a trailing dot
        BASE + "fields: a.\n",
        "{src}, line 3: fields: the path 'a.' is empty or ends with `.`.",
        id="field-path-trailing",
    ),
    pytest.param(
        # an unclosed bracket in a dot path
        BASE + "fields: 'a['\n",
        "{src}, line 3: fields: cannot read the path 'a[' at position 1.",
        id="field-path-bracket",
    ),
    pytest.param(
        # JSONPath parse errors are passed on
        BASE + "fields: '$.a['\n",
        "{src}, line 3: fields: '$.a[' is not a valid JSONPath (Parse error near the end of string!).",
        id="jsonpath-invalid",
    ),
    pytest.param(
        # a broken JSONPath filter
        BASE + "fields:\n  tags: '$.a[?(@.b ==]'\n",
        "{src}, line 4: fields.tags: '$.a[?(@.b ==]' is not a valid JSONPath (Parse error at 1:12 near token ] (])).",
        id="jsonpath-invalid-filter",
    ),
    pytest.param(
        # the same path twice would give two columns of one name
        BASE + "fields: a.b, c, a.b\n",
        "{src}, line 3: fields: the column 'a.b' is named twice.",
        id="fields-duplicate-string",
    ),
    pytest.param(
        # duplicates are found after trimming spaces
        BASE + "fields: [person.name, ' person.name']\n",
        "{src}, line 3: fields: the column 'person.name' is named twice.",
        id="fields-duplicate-list",
    ),
    pytest.param(
        # only separators: no fields at all
        BASE + "fields: ' , '\n",
        "{src}, line 3: fields: no field paths given; leave `fields` out to keep the whole response.",
        id="fields-empty",
    ),
    pytest.param(
        # fields must be text, a list or a mapping
        BASE + "fields: 5\n",
        "{src}, line 3: fields: expected a comma-separated string, a list or a mapping of column: path, got int.",
        id="fields-int",
    ),
    pytest.param(
        # a list of paths holds only strings
        BASE + "fields: [a, 1]\n",
        "{src}, line 3: fields: a list of fields must hold path strings only; to explode a field, use the mapping "
        "form (`fields: {column: {path: ..., explode: true}}`).",
        id="fields-list-not-strings",
    ),
    pytest.param(
        # a mapping's values are paths
        BASE + "fields:\n  size: 1\n",
        "{src}, line 4: fields.size: expected a path string like `person.name`, or "
        "`{path: person.emails, explode: true}`, got 1.",
        id="fields-mapping-not-string",
    ),
    # --- numbers no setting means: not a number, infinite, too large for a machine ----
    pytest.param(
        # a NaN timeout would mean no timeout at all: a drip-fed answer would hang the run
        BASE + "timeout: .nan\n",
        "{src}, line 3: timeout must be a number of seconds, got nan, which is not a finite number.",
        id="timeout-nan",
    ),
    pytest.param(
        BASE + "timeout: .inf\n",
        "{src}, line 3: timeout must be a number of seconds, got inf, which is not a finite number.",
        id="timeout-inf",
    ),
    pytest.param(
        BASE + "retry:\n  max_backoff: .nan\n",
        "{src}, line 4: retry.max_backoff must be a number of seconds, got nan, which is not a finite number.",
        id="max-backoff-nan",
    ),
    pytest.param(
        # every worker holds memory and a connection: a hundred million took the machine's 24 GB
        BASE + "concurrency: 100000000\n",
        "{src}, line 3: concurrency must be at most 10,000, got 100000000.",
        id="concurrency-too-large",
    ),
    pytest.param(
        BASE + "retry: {attempts: 1000000}\n",
        "{src}, line 3: retry.attempts must be at most 100, got 1000000.",
        id="attempts-too-large",
    ),
    # --- secrets --------------------------------------------------------------------
    pytest.param(
        BASE + "auth: {type: bearer, token: '${API_TOKEN}'}\nsecrets: [API_TOKN]\n",
        "{src}, line 4: secrets lists API_TOKN, which no ${...} in the config uses. Did you mean API_TOKEN?",
        id="secrets-names-an-unused-variable",
    ),
    pytest.param(
        BASE + "secrets: {API_TOKEN: true}\n",
        "{src}, line 3: secrets must be a list of environment variable names, e.g. [API_USER], got {'API_TOKEN': True}.",
        id="secrets-not-a-list",
    ),
    # --- YAML that expands past any config ------------------------------------------
    pytest.param(
        "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"{b}: &{b} [{', '.join(['*' + a] * 10)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True))
        + BASE,
        "{src}: the YAML expands to more than 100,000 values through its anchors and aliases (&name / *name), far "
        "more than any config holds. Write the values out, or remove the aliases that repeat other aliases.",
        id="alias-bomb",
    ),
    pytest.param(
        "a: &a {b: *a}\n" + BASE,
        "{src}: the YAML is malformed: an alias refers to a value that contains it (a loop), which no config needs",
        id="alias-loop",
    ),
]


@pytest.mark.parametrize(("text", "expected"), INVALID_CONFIGS)
def test_invalid_config(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "enrich.yaml"
    path.write_text(text, encoding="utf-8")  # written as is: line numbers are part of the message
    message = error_of(path)
    assert message == expected.replace("{src}", str(path))


# A key inside a template or `fields` mapping is located at its own line, not its parent's.
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            BASE + "  body:\n    amount: '{{x|money}}'\n",
            "{src}, line 4: request.body.amount uses {{x|money}}: `money` is not a conversion. "
            "Use one of: str, int, float, bool, json.",
            id="body-key",
        ),
        pytest.param(
            BASE + "fields:\n  title: person..title\n",
            "{src}, line 4: fields.title: the path 'person..title' has an empty step (`..` or a leading `.`).",
            id="fields-key",
        ),
    ],
)
def test_nested_error_names_the_line_of_the_innermost_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "enrich.yaml"
    path.write_text(text, encoding="utf-8")
    assert error_of(path) == expected.replace("{src}", str(path))


def test_config_error_is_an_enrich_error_with_exit_code_2(tmp_path: Path) -> None:
    path = write(tmp_path, "concurrency: 4\n")
    with pytest.raises(EnrichError) as info:
        load_config(path, env={})
    assert type(info.value) is ConfigError
    assert info.value.exit_code == 2


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert error_of(path) == (
        f"config file not found: {path}. Check the path, or run from the folder it is relative to."
    )


def test_config_path_is_a_directory(tmp_path: Path) -> None:
    message = error_of(tmp_path)
    assert message.startswith(f"cannot read the config file {tmp_path}: ")


# --- what valid configs become ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "per_second", "shown"),
    [
        pytest.param("20/s", 20.0, "20/s", id="per-s"),
        pytest.param("1200/min", 20.0, "1200/min", id="per-min"),
        pytest.param("100/h", 100 / 3600, "100/h", id="per-h"),
        pytest.param("20 per second", 20.0, "20/s", id="per-second-words"),
        pytest.param("3 per hour", 3 / 3600, "3/h", id="per-hour-words"),
        pytest.param("10/minute", 10 / 60, "10/min", id="per-minute"),
        pytest.param("10/S", 10.0, "10/s", id="unit-case"),
        pytest.param("20/secs", 20.0, "20/s", id="plural-unit"),
        pytest.param("0.5/s", 0.5, "0.5/s", id="fraction"),
        pytest.param(5, 5.0, "5/s", id="bare-int"),
        pytest.param(2.5, 2.5, "2.5/s", id="bare-float"),
        # what the CLI (`--rate-limit 20`) and ${RATE} hand over: text
        pytest.param("20", 20.0, "20/s", id="bare-number-as-text"),
    ],
)
def test_rates_that_parse(value: Any, per_second: float, shown: str) -> None:
    config = config_from_dict({"request": {"url": URL}, "rate_limit": value})
    assert config.rate_limit is not None
    assert config.rate_limit.per_second == pytest.approx(per_second, rel=1e-12)
    assert str(config.rate_limit) == shown


@pytest.mark.parametrize("value", [None, 0], ids=["null", "zero"])
def test_rate_null_or_zero_means_unlimited(value: Any) -> None:
    assert config_from_dict({"request": {"url": URL}, "rate_limit": value}).rate_limit is None


def test_defaults() -> None:
    config = config_from_dict({"request": {"url": URL}})
    assert config.request.method == "GET"
    assert config.concurrency == 16
    assert config.rate_limit is None
    assert config.timeout == 30.0
    assert config.retry == RetryConfig()
    assert config.fields is None
    assert config.auth is None
    assert config.output_columns == ("response", "_http_status", "_error", "_attempts", "_latency_ms")
    assert config.source == "<config>"


@pytest.mark.parametrize(
    ("retry", "expected"),
    [
        pytest.param(3, RetryConfig(attempts=3), id="bare-int-is-attempts"),
        pytest.param({"statuses": [503]}, RetryConfig(statuses=frozenset({503})), id="statuses"),
        pytest.param(
            {"attempts": 2, "backoff": 0, "max_backoff": 1, "max_retry_after": 5},
            RetryConfig(attempts=2, backoff=0.0, max_backoff=1.0, statuses=RetryConfig().statuses, max_retry_after=5.0),
            id="all-keys",
        ),
        pytest.param(None, RetryConfig(), id="null-is-default"),
    ],
)
def test_retry(retry: Any, expected: RetryConfig) -> None:
    assert config_from_dict({"request": {"url": URL}, "retry": retry}).retry == expected


def test_full_config_from_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        input: people.csv
        output: out/people.parquet
        request:
          method: post
          url: https://api.example.com/v1/people/{{id}}
          params: {domain: "{{domain}}"}
          headers: {X-Trace: "t-{{id}}"}
          body: {email: "{{email}}"}
        fields: person.name, $.tags[*]
        concurrency: 4
        rate_limit: 600/min
        timeout: 2.5
        input_types: {zip: str}
        """,
    )
    config = load_config(path, env={})
    assert config.request.method == "POST"
    assert config.input == Path("people.csv")
    assert config.output == Path("out/people.parquet")
    assert [f.name for f in config.fields or ()] == ["person.name", "$.tags[*]"]
    assert config.concurrency == 4
    assert config.rate_limit == Rate(600.0, 60.0)
    assert config.timeout == 2.5
    assert config.input_types == {"zip": "str"}
    assert config.columns_used == {"id", "domain", "email"}
    assert config.output_columns == (
        "person.name",
        "$.tags[*]",
        "_http_status",
        "_error",
        "_attempts",
        "_latency_ms",
    )
    assert config.source == str(path)


# --- CLI overrides ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param({"rate_limit": "fast"}, "--rate-limit: 'fast' is not a rate. " + RATE_HINT, id="rate-limit"),
        pytest.param(
            {"rate_limit": "5/fortnight"}, "--rate-limit: '5/fortnight' is not a rate. " + RATE_HINT, id="unit"
        ),
        pytest.param({"concurrency": 0}, "--concurrency must be at least 1, got 0.", id="concurrency"),
        pytest.param({"timeout": 0}, "--timeout must be at least 0.001, got 0.", id="timeout"),
    ],
)
def test_bad_override_names_the_flag(tmp_path: Path, overrides: dict[str, Any], expected: str) -> None:
    # the file itself is fine and sets the same keys: the message must blame the flag, not the file
    path = write(tmp_path, BASE + "rate_limit: 5/s\nconcurrency: 2\ntimeout: 3\n")
    assert error_of(path, overrides) == expected


def test_override_replaces_file_value_and_none_keeps_it(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "rate_limit: 5/s\nconcurrency: 2\n")
    config = load_config(path, {"rate_limit": "20", "concurrency": None}, env={})
    assert config.rate_limit == Rate(20.0, 1.0)
    assert config.concurrency == 2


def test_bad_file_value_is_located_in_the_file_even_with_other_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "rate_limit: 5/fortnight\n")
    message = error_of(path, {"concurrency": 3})
    assert message == f"{path}, line 3: rate_limit: '5/fortnight' is not a rate. " + RATE_HINT


# --- environment variables -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "env", "rendered"),
    [
        pytest.param("https://${HOST}/v1", {"HOST": "api.example.com"}, "https://api.example.com/v1", id="set"),
        pytest.param("https://${HOST:-localhost}/v1", {}, "https://localhost/v1", id="default-used"),
        pytest.param(
            "https://${HOST:-localhost}/v1",
            {"HOST": "api.example.com"},
            "https://api.example.com/v1",
            id="default-unused",
        ),
        pytest.param("https://api.example.com/v1${SUFFIX:-}", {}, "https://api.example.com/v1", id="empty-default"),
        pytest.param("https://${A}.${B}/v1", {"A": "api", "B": "example.com"}, "https://api.example.com/v1", id="two"),
        pytest.param("https://api.example.com/$HOME/v1", {}, "https://api.example.com/$HOME/v1", id="no-braces-kept"),
    ],
)
def test_env_expansion(url: str, env: dict[str, str], rendered: str) -> None:
    config = config_from_dict({"request": {"url": url}}, env=env)
    assert config.request.url.render({}) == rendered


def test_secret_env_values_are_registered_other_values_and_defaults_are_not() -> None:
    env = {"TOKEN": "tok-123456", "REGION": "eu-west-1", "PLAN": "gold-plan", "SIGNING": "sign-9876"}
    config = config_from_dict(
        {
            "request": {
                "url": "https://${HOST:-api.example.com}/v1?sig=${SIGNING}",
                "headers": {"Authorization": "Bearer ${TOKEN}", "X-Plan": "${PLAN}"},
                "params": {"ids": ["${REGION}", "x"], "api_key": ["lit-key-42"]},
            }
        },
        env=env,
    )
    # A credential's place (the Authorization header, a `sig` or `api_key` parameter) makes a secret,
    # a fixed value there too; a region, a plan name or a default is no secret.
    assert config.redactor.secrets == {"tok-123456", "sign-9876", "lit-key-42"}
    assert config.request.headers is not None
    assert config.request.headers.render({}) == {"Authorization": "Bearer tok-123456", "X-Plan": "gold-plan"}
    shown = config.request.for_display
    assert shown.headers is not None and shown.params is not None
    assert shown.headers.render({}) == {"Authorization": "Bearer ***", "X-Plan": "gold-plan"}
    assert shown.params.render({}) == {"ids": ["eu-west-1", "x"], "api_key": ["***"]}
    assert shown.url.render({}) == "https://api.example.com/v1?sig=***"
    assert config.request.url_text == "https://api.example.com/v1?sig=***"


# ${VAR} values are text; number keys read them as numbers.
@pytest.mark.parametrize(
    ("key", "attr"), [("concurrency", "concurrency"), ("timeout", "timeout")], ids=["concurrency", "timeout"]
)
def test_numbers_from_env(key: str, attr: str) -> None:
    config = config_from_dict({"request": {"url": URL}, key: "${N}"}, env={"N": "8"})
    assert getattr(config, attr) == 8


def test_rate_from_env_bare_number() -> None:
    config = config_from_dict({"request": {"url": URL}, "rate_limit": "${RATE}"}, env={"RATE": "20"})
    assert config.rate_limit == Rate(20.0, 1.0)


# --- secrets ------------------------------------------------------------------------------------

SECRETS = [
    pytest.param("garbage-secret-value", id="plain"),
    pytest.param("pa\\ss-w0rd", id="backslash"),
    pytest.param("my secret/key", id="space-and-slash"),
    pytest.param('it\'s-"quoted"', id="quotes"),
]


@pytest.mark.parametrize("secret", SECRETS)
def test_secrets_never_in_repr(secret: str) -> None:
    literal = "literal-client-secret-42"
    config = config_from_dict(
        {
            "request": {"url": URL, "headers": {"X-Api-Key": "${API_KEY}"}},
            "input": "${API_KEY}/people.csv",
            "auth": {
                "url": "https://api.example.com/login",
                "body": {"client_id": "visible-client-id", "client_secret": literal},
                "headers": {"X-Login-Key": "${API_KEY}"},
                "token_path": "access_token",
            },
        },
        env={"API_KEY": secret},
    )
    shown = repr(config)
    assert secret not in shown
    assert repr(secret)[1:-1] not in shown
    assert literal not in shown
    assert "***/people.csv" in shown  # a ${VAR} value in a shown field is masked
    assert str(config) == shown
    # the real values are still there for the run
    assert config.auth is not None
    assert config.auth.body["client_secret"] == literal
    assert config.request.headers is not None
    assert config.request.headers.render({}) == {"X-Api-Key": secret}


def test_auth_body_as_json_text_registers_secrets() -> None:
    config = config_from_dict(
        {
            "request": {"url": URL},
            "auth": {
                "url": "https://api.example.com/login",
                "body": '{"user": "ada", "password": "hunter2-hunter2", "nested": {"api_key": ["k-0123456"]}}',
                "token_path": "access_token",
            },
        }
    )
    shown = repr(config)
    assert "hunter2-hunter2" not in shown
    assert "k-0123456" not in shown
    assert config.auth is not None
    assert config.auth.body["password"] == "hunter2-hunter2"
    # the login body's secrets are masked wherever they are quoted, e.g. in a row error
    assert config.redactor.redact("bad password hunter2-hunter2, key k-0123456, user ada") == (
        "bad password ***, key ***, user ada"
    )


@pytest.mark.parametrize(
    ("config", "shown"),
    [
        pytest.param("rate_limit: ${RATE}\n", "garbage-secret-value", id="a plain variable shows"),
        pytest.param("secrets: [RATE]\nrate_limit: ${RATE}\n", "***", id="one listed in secrets does not"),
    ],
)
def test_env_value_quoted_by_an_error(tmp_path: Path, config: str, shown: str) -> None:
    path = write(tmp_path, BASE + config)
    message = error_of(path, env={"RATE": "garbage-secret-value"})
    line = BASE.count("\n") + config.count("\n")
    assert message == f"{path}, line {line}: rate_limit: '{shown}' is not a rate. " + RATE_HINT


@pytest.mark.parametrize("secret", SECRETS)
def test_env_value_inside_a_quoted_url_is_masked(secret: str) -> None:
    # the literal text of a URL template is percent-encoded before the error quotes it
    with pytest.raises(ConfigError) as info:
        config_from_dict({"request": {"url": "ftp://api.example.com/v1?key=${KEY}"}}, env={"KEY": secret})
    q = '"' if "'" in secret else "'"  # repr() of the URL switches quotes around a '
    assert str(info.value) == (
        f"<config>: request.url: {q}ftp://api.example.com/v1?key=***{q} is not an http(s) URL. "
        "Write it in full, like https://api.example.com/v1/..."
    )


def test_auth_literal_not_in_error_about_its_body(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + LOGIN + '  body: \'{"client_secret": "literal-client-secret-42"\'\n')
    message = error_of(path)
    assert "literal-client-secret-42" not in message
    assert message == f"{path}, line 6: auth.body is a string but not valid JSON; write it as a YAML mapping."


def test_auth_secret_quoted_by_a_later_error_is_masked() -> None:
    # `auth.header` is checked after the body's secrets are known; its message quotes the value
    with pytest.raises(ConfigError) as info:
        config_from_dict(
            {
                "request": {"url": URL},
                "auth": {
                    "url": "https://api.example.com/login",
                    "body": {"client_secret": "literal-client-secret-42"},
                    "header": {"name": "literal-client-secret-42"},
                    "token_path": "t",
                },
            }
        )
    assert str(info.value) == "<config>: auth.header must be a string, got {'name': '***'}."


# --- columns checked against the input ---------------------------------------------------------


def people_config(**extra: Any) -> Config:
    return config_from_dict(
        {
            "request": {
                "url": "https://api.example.com/v1/people/{{email}}",
                "params": {"domain": "{{domain}}"},
                "body": {"size": "{{employees|int}}"},
            },
            **extra,
        }
    )


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        pytest.param(
            ["mail", "domain", "employees"],
            "<config>: request.url uses {{email}}, which is not a column of people.csv "
            "(columns: mail, domain, employees). Did you mean {{mail}}?",
            id="did-you-mean",
        ),
        pytest.param(
            ["email", "domian", "employees"],
            "<config>: request.params uses {{domain}}, which is not a column of people.csv "
            "(columns: email, domian, employees). Did you mean {{domian}}?",
            id="params",
        ),
        pytest.param(
            ["email", "domain", "zzz"],
            "<config>: request.body uses {{employees}}, which is not a column of people.csv "
            "(columns: email, domain, zzz).",
            id="no-hint",
        ),
        pytest.param(
            ["email", "domain", *[f"c{i:02}" for i in range(25)]],
            "<config>: request.body uses {{employees}}, which is not a column of people.csv (columns: email, domain, "
            + ", ".join(f"c{i:02}" for i in range(18))
            + ", ...).",
            id="long-column-list-cut",
        ),
    ],
)
def test_check_columns_unknown_template_column(columns: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        people_config().check_columns(columns, "people.csv")
    assert str(info.value) == expected


def test_check_columns_located_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, "request:\n  url: https://api.example.com/v1/people/{{emial}}\n")
    config = load_config(path, env={})
    with pytest.raises(ConfigError) as info:
        config.check_columns(["email", "domain"], "people.csv")
    assert str(info.value) == (
        f"{path}, line 2: request.url uses {{{{emial}}}}, which is not a column of people.csv "
        "(columns: email, domain). Did you mean {{email}}?"
    )


COLLIDE = (
    "Name the fields differently with the mapping form (`fields: {new_name: path}`), or list the columns in "
    "`skip_if_filled` to fill only the rows that lack them."
)


@pytest.mark.parametrize(
    ("fields", "extra_column", "name"),
    [
        pytest.param({"name": "person.name"}, "name", "name", id="field-column"),
        pytest.param("person.title", "person.title", "person.title", id="field-named-by-path"),
        pytest.param(None, "response", "response", id="response-column"),
        pytest.param({"name": "person.name"}, "_http_status", "_http_status", id="status-column"),
        pytest.param(None, "_error", "_error", id="error-column"),
    ],
)
def test_check_columns_output_collides_with_input(fields: Any, extra_column: str, name: str) -> None:
    config = people_config(fields=fields)
    with pytest.raises(ConfigError) as info:
        config.check_columns(["email", "domain", "employees", extra_column], "people.csv")
    assert str(info.value) == f"<config>: the output column {name!r} is already a column of people.csv. {COLLIDE}"


def test_check_columns_ok() -> None:
    config = people_config(fields={"full_name": "person.name"})
    config.check_columns(["email", "domain", "employees", "name"], "people.csv")  # does not raise
    assert config.columns_used == {"email", "domain", "employees"}
