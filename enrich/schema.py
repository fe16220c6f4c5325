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

It is generated from the config's model (``config.py``, ``auth_config.py``): each key's
description, default and the schema of what may be written there are declared with the key.
The loader also checks what a schema cannot (template columns exist in the input, field
paths and URLs parse, ``${VAR}`` is set).
"""

from __future__ import annotations

import json
from typing import Any

Schema = dict[str, Any]

# Keywords whose value is a schema, or a list or mapping of schemas: the walk goes into these only
# (not into `examples`, `default` or `enum`, which hold values).
_ONE = ("items", "additionalProperties", "if", "then", "else", "not", "propertyNames")
_MANY = ("allOf", "anyOf", "oneOf")


def config_schema() -> Schema:
    """The JSON Schema (draft-07) of an enrich config file, as a dict."""
    from .config import Config

    generated = Config.model_json_schema()
    body = _tidy(generated, generated.get("$defs", {}))
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "enrich config",
        "description": "Call an HTTP API for every row of a table and add the answers as columns. `${VAR}` anywhere "
        "is read from the environment (`${VAR:-default}` gives a default).",
        "type": "object",
        "additionalProperties": False,
        "properties": body["properties"],
        # The calls: one `request`, or `steps` (each with its own), never both.
        "if": {"not": {"required": ["steps"]}},
        "then": {"required": ["request"]},
        "else": {"not": {"anyOf": [{"required": ["request"]}, {"required": ["fields"]}]}},
    }


def _tidy(node: Any, defs: Schema) -> Any:
    """pydantic's schema as an editor reads it: each ``$ref`` put in place (draft-07 ignores a
    ``$ref``'s siblings, which hold the key's description), no generated titles, and no default
    that only means "not set" (null, "", {}, [])."""
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        node = {**defs[node["$ref"].rsplit("/", 1)[1]], **siblings}
    out: Schema = {"description": node["description"]} if "description" in node else {}  # shown first
    for key, value in node.items():
        if key in ("title", "$defs") or (key == "default" and value in (None, "", {}, [])):
            continue
        if key == "properties":
            value = {name: _tidy(sub, defs) for name, sub in value.items()}
        elif key in _ONE:
            value = _tidy(value, defs)
        elif key in _MANY:
            value = [_tidy(sub, defs) for sub in value]
        out[key] = value
    return out


def schema_json() -> str:
    """The schema as indented JSON text: what ``enrich schema`` prints."""
    return json.dumps(config_schema(), indent=2)
