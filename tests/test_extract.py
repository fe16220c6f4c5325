"""Field paths (dot paths and JSONPath) and how extracted values become typed columns."""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest

from enrich.column_types import output_column
from enrich.config import config_from_dict
from enrich.engine import assemble
from enrich.errors import ConfigError
from enrich.extract import compile_fields, compile_path

DOC: dict[str, Any] = {
    "person": {
        "name": "Ada",
        "emails": ["ada@example.com", "ada@work.example"],
        "employment": {"title": "Engineer", "since": None},
        "0": "digit key",
        "-1": "minus-one key",
        "active": False,
        "score": 0,
    },
    "odd key": {"x": 5, "a.b": "dotted"},
    "items": [{"id": 1, "k": 1}, {"id": 2, "k": 2}, {"id": 3, "k": 3, "x": "deep"}],
    "text": "plain",
    "nothing": None,
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param("person.name", "Ada", id="a.b"),
        pytest.param("person.emails[0]", "ada@example.com", id="a[0]"),
        pytest.param("person.emails.0", "ada@example.com", id="a.0"),
        pytest.param("person.emails[-1]", "ada@work.example", id="a[-1]"),
        pytest.param("person.emails.-1", "ada@work.example", id="a.-1"),
        pytest.param("person.emails[ 1 ]", "ada@work.example", id="index-with-spaces"),
        pytest.param('["odd key"].x', 5, id="double-quoted-key"),
        pytest.param("['odd key'].x", 5, id="single-quoted-key"),
        pytest.param('["odd key"]["a.b"]', "dotted", id="quoted-key-with-dot"),
        pytest.param('person["name"]', "Ada", id="quoted-after-name"),
        pytest.param("items[1].id", 2, id="list-then-key"),
        pytest.param("items.2.x", "deep", id="dotted-index-then-key"),
        pytest.param(" person . name ", "Ada", id="spaces-around-steps"),
        pytest.param("person.employment", {"title": "Engineer", "since": None}, id="whole-object"),
        pytest.param("person.active", False, id="false-value"),
        pytest.param("person.score", 0, id="zero-value"),
        # a digit step on a dict reads the key with that text
        pytest.param("person.0", "digit key", id="dict-digit-key-dotted"),
        pytest.param("person[0]", "digit key", id="dict-digit-key-bracket"),
        pytest.param("person[-1]", "minus-one key", id="dict-negative-key"),
    ],
)
def test_dot_path(path: str, expected: Any) -> None:
    assert compile_path(path, "fields")(DOC) == expected


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("missing", id="missing-key"),
        pytest.param("missing.deeper.still", id="missing-chain"),
        pytest.param("person.employment.since.year", id="through-null"),
        pytest.param("nothing.x", id="null-parent"),
        pytest.param("text.x", id="through-string"),
        pytest.param("text[0]", id="index-a-string"),
        pytest.param("person.emails[2]", id="index-too-big"),
        pytest.param("person.emails[-3]", id="negative-too-big"),
        pytest.param("person.emails.first", id="name-on-a-list"),
        pytest.param("person.name.0", id="digit-on-a-string"),
        pytest.param("person.active.x", id="through-false"),
        pytest.param("person.score[0]", id="through-zero"),
        pytest.param("items[0].id.x", id="through-int"),
    ],
)
def test_missing_steps_give_none(path: str) -> None:
    assert compile_path(path, "fields")(DOC) is None


@pytest.mark.parametrize("doc", [None, "text", 5, [], {}, True], ids=["null", "str", "int", "list", "dict", "bool"])
def test_dot_path_on_any_document_never_raises(doc: Any) -> None:
    assert compile_path("a.b[0]", "fields")(doc) is None


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param("$.items[*].id", [1, 2, 3], id="wildcard"),
        pytest.param("$..x", [5, "deep"], id="recursive"),
        pytest.param("$.items[?(@.k > 1)].id", [2, 3], id="filter"),
        pytest.param("$.items[?(@.k > 1)]", [{"id": 2, "k": 2}, {"id": 3, "k": 3, "x": "deep"}], id="filter-objects"),
        pytest.param("$.person.name", ["Ada"], id="single-match-is-a-list"),
        pytest.param("$.items[0,2].id", [1, 3], id="union"),
        pytest.param("$.nowhere", [], id="no-match-empty-list"),
        pytest.param("$.items[?(@.k > 99)]", [], id="filter-no-match"),
    ],
)
def test_jsonpath(path: str, expected: list[Any]) -> None:
    assert compile_path(path, "fields")(DOC) == expected


def test_jsonpath_on_non_container_document() -> None:
    assert compile_path("$.a", "fields")(None) == []
    assert compile_path("$.a", "fields")("text") == []


@pytest.mark.parametrize(
    ("spec", "names", "paths", "values"),
    [
        pytest.param(
            "person.name, person.emails[0]",
            ["person.name", "person.emails[0]"],
            ["person.name", "person.emails[0]"],
            ["Ada", "ada@example.com"],
            id="comma-string",
        ),
        pytest.param(
            # the comma inside brackets belongs to the JSONPath
            "person.name, $.items[0,2].id,text",
            ["person.name", "$.items[0,2].id", "text"],
            ["person.name", "$.items[0,2].id", "text"],
            ["Ada", [1, 3], "plain"],
            id="jsonpath-comma-kept-whole",
        ),
        pytest.param(
            '["odd key"].x, $.items[?(@.k > 1)].id',
            ['["odd key"].x', "$.items[?(@.k > 1)].id"],
            ['["odd key"].x', "$.items[?(@.k > 1)].id"],
            [5, [2, 3]],
            id="quoted-and-filter",
        ),
        pytest.param(
            '["a,b"], text',
            ['["a,b"]', "text"],
            ['["a,b"]', "text"],
            [None, "plain"],
            id="comma-inside-quotes-kept",
        ),
        pytest.param(
            "text,,person.name,", ["text", "person.name"], ["text", "person.name"], ["plain", "Ada"], id="empty-parts"
        ),
        pytest.param(
            ["person.name", " $..x "],
            ["person.name", "$..x"],
            ["person.name", "$..x"],
            ["Ada", [5, "deep"]],
            id="list-form",
        ),
        pytest.param(
            {"name": "person.name", "first_email": " person.emails[0] ", "ids": "$.items[*].id"},
            ["name", "first_email", "ids"],
            ["person.name", "person.emails[0]", "$.items[*].id"],
            ["Ada", "ada@example.com", [1, 2, 3]],
            id="mapping-form",
        ),
        pytest.param(
            # two columns may read the same path when they have different names
            {"a": "text", "b": "text"},
            ["a", "b"],
            ["text", "text"],
            ["plain", "plain"],
            id="mapping-same-path-twice",
        ),
    ],
)
def test_compile_fields(spec: Any, names: list[str], paths: list[str], values: list[Any]) -> None:
    fields = compile_fields(spec)
    assert [f.name for f in fields] == names
    assert [f.path for f in fields] == paths
    assert [f.get(DOC) for f in fields] == values


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param("a..b", "fields: the path 'a..b' has an empty step (`..` or a leading `.`).", id="double-dot"),
        pytest.param("a, a", "fields: the column 'a' is named twice.", id="duplicate"),
        pytest.param(
            {"col": "a..b"}, "fields.col: the path 'a..b' has an empty step (`..` or a leading `.`).", id="mapping-path"
        ),
        pytest.param(
            "$.a[", "fields: '$.a[' is not a valid JSONPath (Parse error near the end of string!).", id="jsonpath"
        ),
        pytest.param({"x": ""}, "fields.x: a field path is empty.", id="empty-path-in-mapping"),
        pytest.param(
            None,
            "fields: expected a comma-separated string, a list or a mapping of column: path, got NoneType.",
            id="none",
        ),
    ],
)
def test_compile_fields_errors(spec: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        compile_fields(spec)
    assert str(info.value) == expected


# --- typed output columns -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "dtype", "expected"),
    [
        pytest.param([1, None, 3], pl.Int64, [1, None, 3], id="ints"),
        pytest.param([-(2**63), 2**63 - 1], pl.Int64, [-(2**63), 2**63 - 1], id="int64-bounds"),
        pytest.param([1, 2.5, None], pl.Float64, [1.0, 2.5, None], id="ints-and-floats"),
        pytest.param([1.0, 2.0], pl.Float64, [1.0, 2.0], id="whole-floats-stay-float"),
        pytest.param([True, None, False], pl.Boolean, [True, None, False], id="bools"),
        pytest.param(["a", None, "é"], pl.String, ["a", None, "é"], id="strings"),
        pytest.param([{"a": 1}, [1, 2], None], pl.String, ['{"a":1}', "[1,2]", None], id="dicts-lists-as-json"),
        pytest.param([{"b": 1, "a": "é"}], pl.String, ['{"b":1,"a":"é"}'], id="json-keeps-order-and-unicode"),
        pytest.param([[], {}], pl.String, ["[]", "{}"], id="empty-containers"),
        pytest.param(["a", 1], pl.String, ["a", "1"], id="mixed-str-int"),
        pytest.param(["a", 1.5, True], pl.String, ["a", "1.5", "true"], id="mixed-str-float-bool"),
        pytest.param([True, 1], pl.String, ["true", "1"], id="bool-and-int-not-numeric"),
        pytest.param([None, None], pl.String, [None, None], id="all-null"),
        pytest.param([], pl.String, [], id="empty"),
        pytest.param([2**63, 1], pl.String, [str(2**63), "1"], id="huge-int"),
        # orjson reads JSON integers up to 2**64 - 1 as int (larger ones as float), so this is the widest
        pytest.param([2**64 - 1], pl.String, [str(2**64 - 1)], id="largest-json-int"),
    ],
)
def test_column_typing(values: list[Any], dtype: pl.DataType, expected: list[Any]) -> None:
    series = output_column("out", values)
    assert series.name == "out"
    assert series.dtype == dtype
    assert series.to_list() == expected


def test_assemble_with_fields() -> None:
    config = config_from_dict(
        {
            "request": {"url": "https://api.example.com/v1/{{id}}"},
            "fields": {"size": "a", "info": "b", "tags": "$.t[*]"},
        }
    )
    df = pl.DataFrame({"id": [1, 2, 3]})
    results = [
        (10, {"x": 1}, ["a"], 200, None, 1, 12.3),
        (None, None, [], 404, "HTTP 404 Not Found", 1, 4.5),
        (2**63, "text", [], None, "timed out after 30s", 3, None),
    ]
    out = assemble(df, config, results)
    assert out.columns == ["id", "size", "info", "tags", "_http_status", "_error", "_attempts", "_latency_ms"]
    assert out.schema == pl.Schema(
        {
            "id": pl.Int64,
            "size": pl.String,
            "info": pl.String,
            "tags": pl.String,
            "_http_status": pl.Int64,
            "_error": pl.String,
            "_attempts": pl.Int64,
            "_latency_ms": pl.Float64,
        }
    )
    assert out.rows() == [
        (1, "10", '{"x":1}', '["a"]', 200, None, 1, 12.3),
        (2, None, None, "[]", 404, "HTTP 404 Not Found", 1, 4.5),
        (3, str(2**63), "text", "[]", None, "timed out after 30s", 3, None),
    ]


def test_assemble_whole_response() -> None:
    config = config_from_dict({"request": {"url": "https://api.example.com/v1/{{id}}"}})
    results = [('{"a":1}', 200, None, 1, 2.5), (None, None, "boom", 0, None)]
    out = assemble(pl.DataFrame({"id": [1, 2]}), config, results)
    assert out.columns == ["id", "response", "_http_status", "_error", "_attempts", "_latency_ms"]
    assert out.schema["response"] == pl.String
    assert out.rows() == [(1, '{"a":1}', 200, None, 1, 2.5), (2, None, None, "boom", 0, None)]


def test_assemble_no_rows() -> None:
    config = config_from_dict({"request": {"url": "https://api.example.com/v1/{{id}}"}, "fields": "a, b"})
    out = assemble(pl.DataFrame({"id": []}, schema={"id": pl.Int64}), config, [])
    assert out.columns == ["id", "a", "b", "_http_status", "_error", "_attempts", "_latency_ms"]
    assert out.height == 0
    assert out.schema["_http_status"] == pl.Int64
    assert out.schema["_attempts"] == pl.Int64
    assert out.schema["_latency_ms"] == pl.Float64
    assert out.schema["a"] == pl.String
