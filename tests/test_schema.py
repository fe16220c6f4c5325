"""The config schema: in step with the loader's keys, valid draft-07, right about real configs.

Where the loader knows every key of a case, the tables also ask the loader, so the
schema neither rejects a config that runs nor accepts one the loader refuses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator
from jsonschema.exceptions import best_match

from enrich.config import AUTH_KEYS, REQUEST_KEYS, RETRY_KEYS, TLS_KEYS, TOP_KEYS, config_from_dict
from enrich.errors import ConfigError
from enrich.schema import config_schema, schema_json

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SCHEMA = config_schema()
VALIDATOR = Draft7Validator(SCHEMA)
ENV = {"WORKERS": "4", "API_URL": "https://api.example.com"}
URL = "https://api.example.com/v1/people/{{id}}"


def config(**keys: Any) -> dict[str, Any]:
    """A minimal valid config with ``keys`` added or replaced."""
    return {"request": {"url": URL}, **keys}


def loader_knows(data: dict[str, Any]) -> bool:
    return set(data) <= set(TOP_KEYS)


# --- in step with the loader ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "keys"),
    [
        pytest.param((), set(TOP_KEYS), id="top-level"),
        pytest.param(("auth",), set(AUTH_KEYS), id="auth"),
        pytest.param(("request",), set(REQUEST_KEYS), id="request"),
        pytest.param(("retry",), set(RETRY_KEYS), id="retry"),
        pytest.param(("tls",), set(TLS_KEYS), id="tls"),
    ],
)
def test_keys_are_the_loaders_keys(path: tuple[str, ...], keys: set[str]) -> None:
    node = SCHEMA
    for key in path:
        node = node["properties"][key]
    assert set(node["properties"]) == keys
    assert node["additionalProperties"] is False  # an unknown key is underlined, as the loader rejects it


def test_every_key_has_a_description() -> None:
    def walk(node: dict[str, Any], where: str) -> None:
        for key, sub in node.get("properties", {}).items():
            assert sub.get("description"), f"{where}{key} has no description"
            walk(sub, f"{where}{key}.")

    assert SCHEMA["title"]
    walk(SCHEMA, "")


def test_the_schema_is_valid_draft_07() -> None:
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"
    Draft7Validator.check_schema(SCHEMA)


def test_schema_json_is_the_schema_as_indented_json() -> None:
    text = schema_json()
    assert json.loads(text) == SCHEMA
    assert text.startswith('{\n  "$schema"')


# --- what it accepts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", [pytest.param(p, id=str(p.relative_to(CONFIGS))) for p in sorted(CONFIGS.rglob("*.yaml"))]
)
def test_bundled_configs_validate(path: Path) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))  # ${VAR} stays text, as in an editor
    assert [e.message for e in VALIDATOR.iter_errors(data)] == []


VALID_CONFIGS = [
    pytest.param(config(), id="minimal"),
    pytest.param(config(request={"url": URL, "method": "post"}), id="method-in-lower-case"),
    pytest.param(config(concurrency="${WORKERS}", timeout="${WORKERS}"), id="numbers-from-env-vars"),
    pytest.param(config(retry=3), id="retry-as-a-number"),
    pytest.param(config(retry={"attempts": 2, "backoff": 0, "statuses": [429, 503]}), id="retry-as-a-mapping"),
    pytest.param(config(rate_limit="600/min"), id="rate-per-minute"),
    pytest.param(config(rate_limit="5 per Second"), id="rate-in-words"),
    pytest.param(config(rate_limit=2.5), id="rate-as-a-number"),
    pytest.param(config(rate_limit=None), id="rate-null-means-none"),
    pytest.param(config(journal=False), id="no-journal"),
    pytest.param(config(journal="out/run.journal"), id="journal-path"),
    pytest.param(config(fields="person.name, company.domain"), id="fields-as-text"),
    pytest.param(config(fields=["person.name", "$.tags[*]"]), id="fields-as-a-list"),
    pytest.param(config(fields={"title": "person.employment.title"}), id="fields-as-a-mapping"),
    pytest.param(config(fields={"contact": {"path": "$.contacts[*]", "explode": True}}), id="a-field-that-explodes"),
    pytest.param(config(fields=None), id="fields-empty-keeps-the-response"),
    pytest.param(config(key="email"), id="key-as-one-column"),
    pytest.param(config(input_types={"zip": "str", "seats": "int"}), id="input-types"),
    pytest.param(
        config(request={"url": URL, "method": "POST", "body": '{"id": "{{id}}", "n": {{n}}}'}), id="body-as-json-text"
    ),
    pytest.param(
        config(request={"url": URL, "params": {"tag": ["a", "b"], "limit": 1, "q": None}}), id="params-list-and-null"
    ),
    pytest.param(
        config(auth={"url": "${API_URL}/login", "body": {"user": "u"}, "token_path": "jwt", "token_type": ""}),
        id="auth-bare-token",
    ),
    pytest.param(config(max_error_rate="5%"), id="error-rate-as-a-percentage"),
    pytest.param(config(max_error_rate="0.1"), id="error-rate-as-text"),
    pytest.param(config(skip_if_filled="title"), id="skip-if-filled-one-column"),
    pytest.param(
        config(
            when="email IS NOT NULL AND country = 'US'",
            skip_if_filled=["title"],
            diagnostics=False,
            max_error_rate=0.05,
            errors_out="out/errors.csv",
            escape_formulas=True,
        ),
        id="new-keys",
    ),
]


@pytest.mark.parametrize("data", VALID_CONFIGS)
def test_valid_configs_pass_schema_and_loader(data: dict[str, Any]) -> None:
    assert [e.message for e in VALIDATOR.iter_errors(data)] == []
    if loader_knows(data):
        config_from_dict(data, env=ENV)


# --- what it rejects ----------------------------------------------------------------------------

INVALID_CONFIGS = [
    # (config, where the best error points, a fragment of its message)
    pytest.param(config(concurency=4), "$", "'concurency' was unexpected", id="unknown-top-level-key"),
    pytest.param(
        config(request={"url": URL, "metod": "POST"}), "$.request", "'metod' was unexpected", id="unknown-request-key"
    ),
    pytest.param(config(retry={"attempt": 3}), "$.retry", "'attempt' was unexpected", id="unknown-retry-key"),
    pytest.param(
        config(auth={"url": "https://x.io/login", "token_pth": "t"}), "$.auth", "token_pth", id="unknown-auth-key"
    ),
    pytest.param({"input": "a.csv"}, "$", "'request' is a required property", id="no-request"),
    pytest.param(config(request={"method": "GET"}), "$.request", "'url' is a required property", id="no-url"),
    pytest.param(
        config(auth={"url": "https://x.io/login"}), "$.auth", "'token_path' is a required property", id="no-token-path"
    ),
    pytest.param(config(concurrency=0), "$.concurrency", "less than the minimum of 1", id="concurrency-0"),
    pytest.param(config(concurrency="many"), "$.concurrency", "'many' does not match", id="concurrency-text"),
    pytest.param(config(concurrency=True), "$.concurrency", "is not of type", id="concurrency-bool"),
    pytest.param(
        config(request={"url": URL, "method": "FETCH"}), "$.request.method", "'FETCH' is not one of", id="method-fetch"
    ),
    pytest.param(
        config(input_types={"signup": "date"}), "$.input_types.signup", "'date' is not one of", id="input-type-date"
    ),
    pytest.param(config(rate_limit="fast"), "$.rate_limit", "'fast' does not match", id="rate-not-a-rate"),
    pytest.param(config(rate_limit="20 per fortnight"), "$.rate_limit", "does not match", id="rate-unknown-unit"),
    pytest.param(config(rate_limit=-1), "$.rate_limit", "less than the minimum of 0", id="rate-negative"),
    pytest.param(config(retry=0), "$.retry", "less than the minimum of 1", id="retry-0"),
    pytest.param(config(retry={"statuses": [700]}), "$.retry.statuses[0]", "greater than the maximum", id="status-700"),
    pytest.param(config(timeout=0), "$.timeout", "less than the minimum of 0.001", id="timeout-0"),
    pytest.param(config(journal=""), "$.journal", "does not match", id="journal-blank"),
    pytest.param(config(fields=[]), "$.fields", "should be non-empty", id="fields-empty-list"),
    pytest.param(config(fields={"title": 3}), "$.fields.title", "is not valid under any", id="field-path-not-text"),
    pytest.param(
        config(fields={"title": {"path": "a", "explode": "yes"}}),
        "$.fields.title.explode",
        "is not of type 'boolean'",
        id="field-explode-not-a-boolean",
    ),
    pytest.param(config(key=[]), "$.key", "should be non-empty", id="key-empty-list"),
    pytest.param(
        config(request={"url": URL, "remove_nulls": "yes"}),
        "$.request.remove_nulls",
        "'yes' is not of type 'boolean'",
        id="remove-nulls-text",
    ),
    pytest.param(config(request={"url": URL, "body": 5}), "$.request.body", "is not of type", id="body-a-number"),
    pytest.param(config(max_error_rate=1.5), "$.max_error_rate", "greater than the maximum of 1", id="error-rate-1.5"),
    pytest.param(config(max_error_rate="150%"), "$.max_error_rate", "does not match", id="error-rate-150-percent"),
    pytest.param(config(when=""), "$.when", "does not match", id="when-blank"),
    pytest.param(config(skip_if_filled=[]), "$.skip_if_filled", "should be non-empty", id="skip-if-filled-empty"),
    pytest.param(config(diagnostics="no"), "$.diagnostics", "'no' is not of type 'boolean'", id="diagnostics-text"),
]


@pytest.mark.parametrize(("data", "path", "message"), INVALID_CONFIGS)
def test_invalid_configs_are_rejected_where_they_are_wrong(data: dict[str, Any], path: str, message: str) -> None:
    error = best_match(VALIDATOR.iter_errors(data))
    assert error is not None
    assert error.json_path == path, error.message
    assert message in error.message
    if loader_knows(data):
        with pytest.raises(ConfigError):
            config_from_dict(data, env=ENV)
