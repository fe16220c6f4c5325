"""The config file's JSON Schema (draft-07): completion, hover help and checks while you type.

``enrich schema`` prints it. VS Code's YAML extension (and any editor that uses
yaml-language-server) reads it to complete keys, show each key's meaning and default,
and underline unknown keys and wrong types before anything runs:

    $ enrich schema > enrich.schema.json
    # .vscode/settings.json: {"yaml.schemas": {"./enrich.schema.json": ["configs/*.yaml"]}}

    >>> schema = config_schema()
    >>> schema["properties"]["concurrency"]["default"]
    16
    >>> schema["properties"]["request"]["required"]
    ['url']

The loader (``config.py``) stays the authority: it also checks what a schema cannot
(template columns exist in the input, field paths and URLs parse, ``${VAR}`` is set).
``tests/test_schema.py`` keeps the two in step: the keys here are the loader's keys, and
every bundled config validates.
"""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

from .config import (
    AUTH_TYPE_KEYS,
    AUTH_TYPES,
    INPUT_TYPES,
    MAX_ATTEMPTS,
    MAX_CONCURRENCY,
    METHODS,
    SIGNING_ALGORITHMS,
    Config,
    RequestConfig,
    RetryConfig,
)

Schema = dict[str, Any]

# `${VAR}` or `${VAR:-default}`: the loader reads numbers from text, so `concurrency: "${WORKERS}"` is fine.
_ENV_VAR = r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}"
_INTEGER_TEXT = rf"^\s*\+?\d+\s*$|{_ENV_VAR}"
_NUMBER_TEXT = rf"^\s*\+?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$|{_ENV_VAR}"
_NOT_BLANK = r"\S"
# A share of rows as text: 0.05, or a percentage up to 100%.
_SHARE_TEXT = rf"^\s*(0(\.\d*)?|1(\.0*)?|\.\d+|(100(\.0*)?|\d{{1,2}}(\.\d*)?)\s*%)\s*$|{_ENV_VAR}"


def _any_case(word: str) -> str:
    """A regex matching ``word`` in any case (JSON Schema patterns take no flags): ``get`` -> ``[Gg][Ee][Tt]``."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)


# The loader's `_SIZE`: 10MB, 512 KiB, 1g, 2048 bytes, or a bare number of bytes.
_SIZE_TEXT = rf"^\s*\d+(\.\d+)?\s*([kKmMgG][iI]?[bB]?|[bB]|{_any_case('byte')}[sS]?)?\s*$|{_ENV_VAR}"
_RATE_UNITS = "|".join(_any_case(u) for u in ("second", "sec", "s", "minute", "min", "m", "hour", "hr", "h"))
# The loader's `_RATE`: 20/s, 600/min, 100/h, "5 per second", or a bare number (per second).
_RATE_TEXT = rf"^\s*\d+(\.\d+)?\s*((/|{_any_case('per')})\s*({_RATE_UNITS})[sS]?)?\s*$|{_ENV_VAR}"


def _default(cls: type, name: str) -> Any:
    """A dataclass field's default, so the schema shows what the loader really uses."""
    return next(f.default for f in fields(cls) if f.name == name)


def _method(description: str, default: str) -> Schema:
    # The loader takes any case; the enum offers the two that people write.
    return {"description": description, "enum": [*METHODS, *(m.lower() for m in METHODS)], "default": default}


def _whole_number(description: str, default: int, maximum: int) -> Schema:
    return {
        "description": description,
        "type": ["integer", "string"],
        "minimum": 1,
        "maximum": maximum,
        "default": default,
        "pattern": _INTEGER_TEXT,
    }


def _seconds(description: str, default: float, minimum: float = 0) -> Schema:
    return {
        "description": description,
        "type": ["number", "string"],
        "minimum": minimum,
        "default": default,
        "pattern": _NUMBER_TEXT,
    }


def _path(description: str) -> Schema:
    return {"description": description, "type": "string", "pattern": _NOT_BLANK}


def _columns(description: str) -> Schema:
    """One column name, or a non-empty list of them."""
    return {
        "description": description,
        "type": ["string", "array"],
        "minLength": 1,
        "minItems": 1,
        "items": {"type": "string", "minLength": 1},
    }


_SCALAR = ["string", "number", "boolean", "null"]


def _text(description: str, **more: Any) -> Schema:
    return {"description": description, "type": "string", "minLength": 1, **more}


def _needs(*keys: str) -> Schema:
    # "type" makes jsonschema's best_match rank a missing key no higher than an unknown one.
    return {"type": "object", "required": list(keys)}


def _unless(*others: str, then: str) -> Schema:
    """``then`` is required unless one of ``others`` is there (the error names ``then``)."""
    return {"if": {"not": {"anyOf": [{"required": [o]} for o in others]}}, "then": _needs(then)}


def _auth_rules() -> list[Schema]:
    """Per `auth.type`: its required keys, and no key of another kind (the loader's AUTH_TYPE_KEYS)."""
    required: dict[str, list[Schema]] = {
        "login": [_needs("url"), _unless("token_header", "token_cookie", then="token_path")],
        "bearer": [_needs("token")],
        "header": [_needs("token"), _unless("query_param", then="header")],
        "basic": [_needs("username", "password")],
        "oauth2_client_credentials": [_needs("token_url", "client_id", "client_secret")],
        "jwt_signed": [
            _needs("algorithm"),
            _unless("key_file", then="key"),
            {"not": {"required": ["key", "key_file"]}},
            # scope, token_path and expires_in_path are about the token URL's answer
            {"dependencies": {k: ["token_url"] for k in ("scope", "token_path", "expires_in_path")}},
        ],
    }
    rules = []
    for kind in AUTH_TYPES:
        # No `type` is `login`: `properties` passes when the key is absent.
        when: Schema = {"properties": {"type": {"const": kind}}}
        if kind != "login":
            when["required"] = ["type"]
        # A key of another kind: "'client_id' is not one of ['type', 'token', ...]", the keys this kind takes.
        own = {"propertyNames": {"enum": ["type", *AUTH_TYPE_KEYS[kind]]}}
        rules.append({"if": when, "then": {"allOf": [*required[kind], own]}})
    return rules


def _auth() -> Schema:
    return {
        "description": "How each call is authorised: `type` picks the kind (default `login`: log in for a JWT at the start, and again before it expires or when it is rejected). Leave it out for an API without auth.",
        "type": "object",
        "additionalProperties": False,
        "allOf": _auth_rules(),
        "properties": {
            "type": {
                "description": "login (log in for a token), bearer / header (a fixed token or API key), basic (user and password), oauth2_client_credentials, jwt_signed (a JWT signed here).",
                "enum": list(AUTH_TYPES),
                "default": "login",
            },
            "url": {
                "description": "login: the login endpoint that returns the token.",
                "type": "string",
                "minLength": 1,
                "examples": ["https://api.example.com/auth/token"],
            },
            "method": _method("login: the login's HTTP method.", "POST"),
            "body": {
                "description": 'login: the login body, sent as JSON: a YAML mapping (or JSON text). Use ${VAR} for credentials: {client_id: "${API_CLIENT_ID}"}.',
                "type": ["object", "array", "string"],
            },
            "headers": {
                "description": "login: extra headers for the login call.",
                "type": "object",
                "additionalProperties": {"type": ["string", "number", "boolean"]},
            },
            "token_path": {
                "description": "Where the token is in the login (or token URL's) response: a dot path (data.session.jwt) or a JSONPath ($.data.token). Default for oauth2_client_credentials and jwt_signed: access_token.",
                "type": "string",
                "minLength": 1,
                "examples": ["access_token", "data.session.jwt"],
            },
            "token_header": _text(
                "login: the token is in this response header instead of the body.", examples=["X-Auth-Token"]
            ),
            "token_cookie": _text(
                "login: the token is in this cookie of the login response (unless token_path says otherwise), and goes back as `Cookie: <name>=<token>` unless `header` is set.",
                examples=["session"],
            ),
            "expires_in_path": _text(
                "Where the token's lifetime in seconds is in the login response; else the JWT's exp claim is read. The token is fetched again shortly before it ends. Default for oauth2_client_credentials and jwt_signed with token_url: expires_in.",
                examples=["expires_in", "data.expires_in"],
            ),
            "refresh_on": {
                "description": "Responses besides 401 that mean the token was rejected: a listed status, a body the pattern finds, or (with both) a listed status whose body the pattern finds.",
                "type": "object",
                "additionalProperties": False,
                "minProperties": 1,
                "properties": {
                    "statuses": {
                        "description": "HTTP statuses that mean the token was rejected, e.g. [403].",
                        "type": ["array", "integer"],
                        "items": {"type": "integer", "minimum": 100, "maximum": 599},
                        "minimum": 100,
                        "maximum": 599,
                    },
                    "body": _text(
                        "A regular expression searched in the first 4 KiB of the response body.",
                        examples=["token expired|invalid_token"],
                    ),
                },
            },
            "token_type": {
                "description": 'Put before the token in the auth header; "" (or null) sends the bare token. Default Bearer; for type header, "".',
                "type": ["string", "null"],
                "default": "Bearer",
            },
            "header": {
                "description": "The header the token goes in (type header: the header the API reads its key from).",
                "type": "string",
                "minLength": 1,
                "default": "Authorization",
                "examples": ["Authorization", "X-API-Key"],
            },
            "token": _text(
                'bearer / header: the fixed token or API key, from the environment: "${API_KEY}".',
                examples=["${API_KEY}"],
            ),
            "query_param": _text(
                "bearer / header: send the token as this query parameter instead of a header.", examples=["api_key"]
            ),
            "username": _text("basic: the user name.", examples=["${API_USER}"]),
            "password": {"description": "basic: the password.", "type": "string", "examples": ["${API_PASSWORD}"]},
            "token_url": _text(
                "oauth2_client_credentials: the token endpoint. jwt_signed: exchange the signed JWT there for an access token (RFC 7523).",
                examples=["https://auth.example.com/oauth/token"],
            ),
            "client_id": _text("oauth2_client_credentials: the client id.", examples=["${API_CLIENT_ID}"]),
            "client_secret": _text("oauth2_client_credentials: the client secret.", examples=["${API_CLIENT_SECRET}"]),
            "client_auth": {
                "description": "oauth2_client_credentials: send the client id and secret as HTTP Basic (basic) or in the form body (body).",
                "enum": ["basic", "body"],
                "default": "basic",
            },
            "scope": {
                "description": "oauth2_client_credentials, jwt_signed with token_url: the scopes to ask for, as text (space-separated) or a list.",
                "type": ["string", "array"],
                "items": {"type": "string"},
            },
            "audience": _text("oauth2_client_credentials: the audience to ask for (Auth0 and others)."),
            "algorithm": {
                "description": "jwt_signed: HS256, HS384, HS512 (a shared secret) or RS256, ES256 (a private key).",
                "enum": list(SIGNING_ALGORITHMS),
            },
            "key": _text('jwt_signed: the signing key, from the environment: "${SIGNING_KEY}".'),
            "key_file": _text("jwt_signed: a file holding the signing key (PEM for RS256 and ES256)."),
            "claims": {
                "description": "jwt_signed: the token's claims (iss, sub, aud and your own); iat and exp are set when it is signed.",
                "type": "object",
                "propertyNames": {"not": {"enum": ["iat", "exp"]}},
            },
            "lifetime": _seconds("jwt_signed: seconds from iat to exp; signed again before it ends.", 300, minimum=1),
        },
    }


def _request() -> Schema:
    return {
        "description": "How each row becomes a request. Strings may hold {{column}} placeholders: the row's value.",
        "type": "object",
        "additionalProperties": False,
        "required": ["url"],
        "properties": {
            "method": _method("The HTTP method of each call (any case).", "GET"),
            "url": {
                "description": "The endpoint each row calls; placed values are percent-encoded. A placeholder at the very start supplies the whole URL from a column.",
                "type": "string",
                "minLength": 1,
                "examples": ["https://api.example.com/v1/people/{{email}}"],
            },
            "params": {
                "description": 'The query string, e.g. {domain: "{{domain}}"}; null values are left out, a list repeats its key.',
                "type": "object",
                "additionalProperties": {"type": [*_SCALAR, "array"], "items": {"type": _SCALAR}},
            },
            "headers": {
                "description": "Extra headers for each call, e.g. {Accept: application/json}; null values are left out.",
                "type": "object",
                "additionalProperties": {"type": _SCALAR},
            },
            "body": {
                "description": 'The JSON body: a YAML mapping or list, or JSON text. "{{column}}" alone keeps the cell\'s type.',
                "type": ["object", "array", "string"],
            },
            "remove_nulls": {
                "description": "Drop body keys whose value is null, at every depth.",
                "type": "boolean",
                "default": False,
            },
            "follow_redirects": {
                "description": "Follow redirects within the API's origin (never to another host, port or scheme); false ends the row at a 3xx.",
                "type": "boolean",
                "default": True,
            },
            "idempotency_key": {
                "description": 'A template giving each row its own key, e.g. "{{id}}", sent as the idempotency_header; with it, POST and PATCH are retried like GET.',
                "type": "string",
                "pattern": _NOT_BLANK,
                "examples": ["{{id}}", "order-{{order_id}}"],
            },
            "idempotency_header": {
                "description": "The header the idempotency key goes in.",
                "type": "string",
                "pattern": r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$",
                "default": _default(RequestConfig, "idempotency_header"),
            },
        },
    }


def _retry() -> Schema:
    defaults = RetryConfig()
    return {
        "description": "When and how long to retry a call: a mapping, or just the number of attempts (`retry: 5`).",
        "type": ["integer", "object"],
        "minimum": 1,
        "additionalProperties": False,
        "properties": {
            "attempts": _whole_number("Tries per row, the first included.", defaults.attempts, MAX_ATTEMPTS),
            "backoff": _seconds(
                "The first backoff in seconds; it doubles each try, with full jitter.", defaults.backoff
            ),
            "max_backoff": _seconds("The cap on one backoff, in seconds.", defaults.max_backoff),
            "statuses": {
                "description": "HTTP statuses worth another try.",
                "type": "array",
                "items": {"type": "integer", "minimum": 100, "maximum": 599},
                "default": sorted(defaults.statuses),
            },
            "max_retry_after": _seconds(
                "The longest Retry-After waited out, in seconds; a longer one stops the run (exit 3, resumable).",
                defaults.max_retry_after,
            ),
            "non_idempotent": {
                "description": "Retry POST and PATCH after a 5xx, a timeout or a dropped connection too (they may run twice).",
                "type": "boolean",
                "default": defaults.non_idempotent,
            },
        },
    }


def _tls() -> Schema:
    return {
        "description": "How the API's TLS certificate is checked, and a client certificate for mutual TLS.",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "verify": {
                "description": "Check the API's certificate (false is unsafe, and warned about).",
                "type": "boolean",
                "default": True,
            },
            "ca_bundle": _path("A PEM file of the CA certificates to trust instead of the system's."),
            "client_cert": _path("A PEM client certificate (it may hold the key too), for mutual TLS."),
            "client_key": _path("The client certificate's private key (PEM, unencrypted)."),
        },
    }


def config_schema() -> Schema:
    """The JSON Schema (draft-07) of an enrich config file, as a dict."""
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "enrich config",
        "description": "Call an HTTP API for every row of a table and add the answers as columns. `${VAR}` anywhere is read from the environment (`${VAR:-default}` gives a default).",
        "type": "object",
        "additionalProperties": False,
        "required": ["request"],
        "properties": {
            "input": _path("The input table: .csv, .tsv, .parquet, .ndjson or .jsonl (--input overrides)."),
            "output": _path("The output table: .csv, .parquet or .ndjson (--output overrides)."),
            "journal": {
                "description": "Where the journal of finished calls is kept (default <output>.journal); false keeps none.",
                "type": ["string", "boolean"],
                "pattern": _NOT_BLANK,
            },
            "input_types": {
                "description": "Read these columns as str, int, float or bool instead of inferring, e.g. {zip: str}.",
                "type": "object",
                "additionalProperties": {"enum": list(INPUT_TYPES)},
            },
            "key": _columns("Columns that identify a row, for --shard (default: the rendered request)."),
            "auth": _auth(),
            "request": _request(),
            "fields": {
                "description": 'What to keep from each JSON response: "a.b, c.d", a list of paths, or a mapping column: path. Leave it out (or empty) to keep the whole response in one column, `response`.',
                "type": ["string", "array", "object", "null"],
                "pattern": r"[^\s,]",
                "minItems": 1,
                "items": {"type": "string", "pattern": _NOT_BLANK},
                "minProperties": 1,
                "additionalProperties": {"type": "string", "pattern": _NOT_BLANK},
                "examples": ["person.name, company.domain", {"title": "person.employment.title"}],
            },
            "concurrency": _whole_number("Requests in flight.", _default(Config, "concurrency"), MAX_CONCURRENCY),
            "rate_limit": {
                "description": "Requests started per second, minute or hour, across all workers: N/s, N/min, N/h, or a number (per second); or a mapping with `shared` for one limit across processes. Default: no limit.",
                "anyOf": [
                    {
                        "type": ["string", "number", "null"],
                        "minimum": 0,
                        "pattern": _RATE_TEXT,
                        "examples": ["20/s", "600/min"],
                    },
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["rate"],
                        "properties": {
                            "rate": {
                                "description": "Requests started per second, minute or hour: N/s, N/min, N/h.",
                                "type": ["string", "number"],
                                "pattern": _RATE_TEXT,
                            },
                            "burst": {
                                "description": "Starts allowed ahead of the pace (default 0).",
                                "type": "integer",
                                "minimum": 0,
                            },
                            "shared": {
                                "description": "A Redis URL (redis://host:6379/0): every process using the same Redis and key shares the limit.",
                                "type": "string",
                                "pattern": "^(redis|rediss|unix)://",
                            },
                            "key": {
                                "description": "The limit's name in Redis (default enrich): one per API.",
                                "type": "string",
                                "minLength": 1,
                            },
                        },
                    },
                ],
            },
            "retry": _retry(),
            "timeout": _seconds("Seconds per attempt.", _default(Config, "timeout"), minimum=0.001),
            "when": {
                "description": "A polars SQL predicate; rows that do not match get no call, e.g. email IS NOT NULL AND country = 'US'.",
                "type": "string",
                "pattern": _NOT_BLANK,
            },
            "skip_if_filled": _columns("Rows whose listed columns all hold values get no call (already enriched)."),
            "diagnostics": {
                "description": "Add the columns _attempts and _latency_ms to the output.",
                "type": "boolean",
                "default": True,
            },
            "max_error_rate": {
                "description": 'Exit with code 1 when a larger share of rows failed: 0.05, or a percentage, "5%".',
                "type": ["number", "string"],
                "minimum": 0,
                "maximum": 1,
                "pattern": _SHARE_TEXT,
                "examples": [0.05, "5%"],
            },
            "errors_out": _path("Write the failed rows here, with their (redacted) request and error."),
            "escape_formulas": {
                "description": "In CSV output, put ' before API values starting with = + - @, tab or CR (a guard against CSV injection).",
                "type": "boolean",
                "default": True,
            },
            "tls": _tls(),
            "max_response_bytes": {
                "description": "The largest response read; a larger one is cut off and fails its row: 10MB, 512KB, or a number of bytes.",
                "type": ["integer", "string"],
                "minimum": 1,
                "pattern": _SIZE_TEXT,
                "default": "10MB",
                "examples": ["10MB", "512KB"],
            },
            "secrets": {
                "description": "Environment variables (used as ${VAR}) whose values are secrets besides the "
                "credentials enrich knows: masked in everything enrich prints.",
                "type": ["array", "string"],
                "items": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                "pattern": "^[A-Za-z_][A-Za-z0-9_]*$",
                "examples": [["API_USER", "TENANT"]],
            },
        },
    }


def schema_json() -> str:
    """The schema as indented JSON text: what ``enrich schema`` prints."""
    return json.dumps(config_schema(), indent=2)
