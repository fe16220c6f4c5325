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

from .config import INPUT_TYPES, METHODS, Config, RetryConfig

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


_RATE_UNITS = "|".join(_any_case(u) for u in ("second", "sec", "s", "minute", "min", "m", "hour", "hr", "h"))
# The loader's `_RATE`: 20/s, 600/min, 100/h, "5 per second", or a bare number (per second).
_RATE_TEXT = rf"^\s*\d+(\.\d+)?\s*((/|{_any_case('per')})\s*({_RATE_UNITS})[sS]?)?\s*$|{_ENV_VAR}"


def _default(cls: type, name: str) -> Any:
    """A dataclass field's default, so the schema shows what the loader really uses."""
    return next(f.default for f in fields(cls) if f.name == name)


def _method(description: str, default: str) -> Schema:
    # The loader takes any case; the enum offers the two that people write.
    return {"description": description, "enum": [*METHODS, *(m.lower() for m in METHODS)], "default": default}


def _whole_number(description: str, default: int) -> Schema:
    return {
        "description": description,
        "type": ["integer", "string"],
        "minimum": 1,
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


def _auth() -> Schema:
    return {
        "description": "How to log in for a JWT, once at the start (and again on a 401). Leave it out for an API without login.",
        "type": "object",
        "additionalProperties": False,
        "required": ["url", "token_path"],
        "properties": {
            "url": {
                "description": "The login endpoint that returns the token.",
                "type": "string",
                "minLength": 1,
                "examples": ["https://api.example.com/auth/token"],
            },
            "method": _method("The login's HTTP method.", "POST"),
            "body": {
                "description": 'The login body, sent as JSON: a YAML mapping (or JSON text). Use ${VAR} for credentials: {client_id: "${API_CLIENT_ID}"}.',
                "type": ["object", "array", "string"],
            },
            "headers": {
                "description": "Extra headers for the login call.",
                "type": "object",
                "additionalProperties": {"type": ["string", "number", "boolean"]},
            },
            "token_path": {
                "description": "Where the token is in the login response: a dot path (data.session.jwt) or a JSONPath ($.data.token).",
                "type": "string",
                "minLength": 1,
                "examples": ["access_token", "data.session.jwt"],
            },
            "token_type": {
                "description": 'Put before the token in the auth header; "" (or null) sends the bare token.',
                "type": ["string", "null"],
                "default": "Bearer",
            },
            "header": {
                "description": "The header the token goes in.",
                "type": "string",
                "minLength": 1,
                "default": "Authorization",
            },
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
            "attempts": _whole_number("Tries per row, the first included.", defaults.attempts),
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
            "max_retry_after": _seconds("The cap on a server's Retry-After, in seconds.", defaults.max_retry_after),
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
            "concurrency": _whole_number("Requests in flight.", _default(Config, "concurrency")),
            "rate_limit": {
                "description": "Requests started per second, minute or hour, across all workers: N/s, N/min, N/h, or a number (per second). Default: no limit.",
                "type": ["string", "number", "null"],
                "minimum": 0,
                "pattern": _RATE_TEXT,
                "examples": ["20/s", "600/min"],
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
        },
    }


def schema_json() -> str:
    """The schema as indented JSON text: what ``enrich schema`` prints."""
    return json.dumps(config_schema(), indent=2)
