"""Templates: typed substitution, conversions, JSON-text bodies, URL encoding, ``prepare``."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from yarl import URL

from enrich.client import prepare
from enrich.config import config_from_dict
from enrich.errors import ConfigError
from enrich.template import (
    TemplateValueError,
    compile_json_text,
    compile_template,
    compile_url,
    drop_nulls,
    format_value,
)

# --- exact placeholders keep the cell's type ----------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(12, id="int"),
        pytest.param(None, id="null"),
        pytest.param(1.5, id="float"),
        pytest.param(True, id="true"),
        pytest.param(False, id="false"),
        pytest.param(0, id="zero"),
        pytest.param("", id="empty-string"),
        pytest.param("12", id="numeric-text-stays-text"),
        pytest.param([1, "a"], id="list"),
        pytest.param({"k": None}, id="dict"),
    ],
)
@pytest.mark.parametrize("source", ["{{v}}", "{{ v }}"], ids=["tight", "spaced"])
def test_exact_placeholder_keeps_type(source: str, value: Any) -> None:
    rendered = compile_template({"out": source, "nested": [source]}, "request.body").render({"v": value})
    assert rendered == {"out": value, "nested": [value]}
    assert type(rendered["out"]) is type(value)


def test_missing_cell_renders_null() -> None:
    assert compile_template("{{absent}}", "request.body").render({"other": 1}) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(None, "id-", id="null-is-empty"),
        pytest.param(True, "id-true", id="true"),
        pytest.param(False, "id-false", id="false"),
        pytest.param(12, "id-12", id="int"),
        pytest.param(0, "id-0", id="zero"),
        pytest.param(1.5, "id-1.5", id="float"),
        pytest.param("é x", "id-é x", id="text"),
    ],
)
def test_placeholder_inside_longer_string_is_formatted(value: Any, expected: str) -> None:
    assert compile_template("id-{{v}}", "request.params.id").render({"v": value}) == expected


def test_several_placeholders_and_literal_parts() -> None:
    template = compile_template("{{first}} {{ last }} <{{email}}>", "request.body.to")
    assert template.render({"first": "Ada", "last": "Lovelace", "email": None}) == "Ada Lovelace <>"
    assert template.columns == {"first", "last", "email"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, ""), (True, "true"), (False, "false"), (3, "3"), (2.5, "2.5"), ("x", "x"), ([1], "[1]")],
    ids=["null", "true", "false", "int", "float", "str", "list"],
)
def test_format_value(value: Any, expected: str) -> None:
    assert format_value(value) == expected


def test_literals_without_placeholders_are_kept_as_they_are() -> None:
    source = {"a": 1, "b": [True, None, "x"], "c": {"d": 2.5}}
    template = compile_template(source, "request.body")
    assert template.columns == frozenset()
    assert template.render({"a": "ignored"}) == source
    assert compile_template(7, "request.body").render({}) == 7


@pytest.mark.parametrize(
    ("source", "columns"),
    [
        pytest.param("plain", set(), id="no-placeholder"),
        pytest.param("{{a}}", {"a"}, id="one"),
        pytest.param(
            {"x": "{{a}}-{{b|int}}", "y": ["{{c}}", {"z": "{{ d | json }}"}], "w": 3}, {"a", "b", "c", "d"}, id="nested"
        ),
        pytest.param(["{{a}}", "{{a}}"], {"a"}, id="repeated"),
        pytest.param({"{{key}}": "v"}, set(), id="keys-are-not-templates"),
    ],
)
def test_template_columns(source: Any, columns: set[str]) -> None:
    assert compile_template(source, "request.body").columns == columns


# --- conversions -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("conversion", "value", "expected"),
    [
        pytest.param("int", "12", 12, id="int-from-text"),
        pytest.param("int", " 007 ", 7, id="int-from-padded-text"),
        pytest.param("int", 12.0, 12, id="int-from-whole-float"),
        pytest.param("int", True, 1, id="int-from-bool"),
        pytest.param("int", -3, -3, id="int-from-int"),
        pytest.param("float", "1.5", 1.5, id="float-from-text"),
        pytest.param("float", 2, 2.0, id="float-from-int"),
        pytest.param("float", " -0.25 ", -0.25, id="float-from-padded-text"),
        pytest.param("str", 94107, "94107", id="str-from-int"),
        pytest.param("str", True, "true", id="str-from-bool"),
        pytest.param("str", 1.5, "1.5", id="str-from-float"),
        pytest.param("bool", "yes", True, id="bool-yes"),
        pytest.param("bool", "N", False, id="bool-n"),
        pytest.param("bool", " True ", True, id="bool-padded"),
        pytest.param("bool", "0", False, id="bool-0-text"),
        pytest.param("bool", 1, True, id="bool-1"),
        pytest.param("bool", False, False, id="bool-from-bool"),
        pytest.param("json", '{"a": [1, null]}', {"a": [1, None]}, id="json-object"),
        pytest.param("json", "[1, 2]", [1, 2], id="json-array"),
        pytest.param("json", "3", 3, id="json-number"),
        pytest.param("json", {"already": "parsed"}, {"already": "parsed"}, id="json-passthrough"),
        pytest.param("int", None, None, id="null-stays-null-int"),
        pytest.param("json", None, None, id="null-stays-null-json"),
        pytest.param("str", None, None, id="null-stays-null-str"),
    ],
)
def test_conversion(conversion: str, value: Any, expected: Any) -> None:
    rendered = compile_template(f"{{{{v|{conversion}}}}}", "request.body.v").render({"v": value})
    assert rendered == expected
    assert type(rendered) is type(expected)


def test_conversion_inside_longer_string() -> None:
    template = compile_template("n={{ v | int }};", "request.params.n")
    assert template.render({"v": " 007 "}) == "n=7;"
    assert template.render({"v": None}) == "n=;"
    assert template.columns == {"v"}


@pytest.mark.parametrize(
    ("conversion", "value", "expected"),
    [
        pytest.param(
            "int", "abc", "request.body.size: column 'v' holds 'abc', which is not a valid int", id="int-word"
        ),
        pytest.param(
            "int", "12.5", "request.body.size: column 'v' holds '12.5', which is not a valid int", id="int-dec"
        ),
        pytest.param("int", 1.5, "request.body.size: column 'v' holds 1.5, which is not a valid int", id="int-float"),
        pytest.param("int", [1], "request.body.size: column 'v' holds [1], which is not a valid int", id="int-list"),
        pytest.param(
            "float", "1,5", "request.body.size: column 'v' holds '1,5', which is not a valid float", id="float"
        ),
        pytest.param(
            "bool", "maybe", "request.body.size: column 'v' holds 'maybe', which is not a valid bool", id="bool"
        ),
        pytest.param("bool", 2, "request.body.size: column 'v' holds 2, which is not a valid bool", id="bool-2"),
        pytest.param(
            "json", "{nope", "request.body.size: column 'v' holds '{nope', which is not a valid json", id="json"
        ),
    ],
)
def test_conversion_failure_names_column_and_value(conversion: str, value: Any, expected: str) -> None:
    template = compile_template({"size": f"{{{{v|{conversion}}}}}"}, "request.body")
    with pytest.raises(TemplateValueError) as info:
        template.render({"v": value})
    assert str(info.value) == expected
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param(
            {"a": "{{x|money}}"},
            "request.body.a uses {{x|money}}: `money` is not a conversion. Use one of: str, int, float, bool, json.",
            id="unknown-conversion",
        ),
        pytest.param(
            {"a": "hi {{x"},
            "request.body.a has an unbalanced placeholder in 'hi {{x': write each one as {{column}}.",
            id="unbalanced",
        ),
        pytest.param(
            ["{{}}"], "request.body[0] has an empty placeholder {{}}: put a column name inside it.", id="empty-in-list"
        ),
    ],
)
def test_compile_errors(source: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        compile_template(source, "request.body")
    assert str(info.value) == expected


# --- remove_nulls -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        pytest.param({"a": None, "b": 1}, {"b": 1}, id="top"),
        pytest.param({"a": {"b": None, "c": {"d": None, "e": 0}}}, {"a": {"c": {"e": 0}}}, id="deep"),
        pytest.param({"l": [{"x": None, "y": False}, {"z": None}]}, {"l": [{"y": False}, {}]}, id="dicts-in-lists"),
        # only keys are removed: a null list element keeps its position
        pytest.param([None, {"a": None}, [{"b": None}]], [None, {}, [{}]], id="list-elements-kept"),
        pytest.param(
            {"empty": "", "zero": 0, "false": False, "none": None}, {"empty": "", "zero": 0, "false": False}, id="falsy"
        ),
        pytest.param(None, None, id="scalar-null"),
    ],
)
def test_drop_nulls(doc: Any, expected: Any) -> None:
    assert drop_nulls(doc) == expected


# --- bodies given as JSON text --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "row", "expected"),
    [
        pytest.param(
            '{"n": {{n}}, "s": "hi {{name}}"}',
            {"n": 3, "name": "Ada"},
            {"n": 3, "s": "hi Ada"},
            id="typed-and-formatted",
        ),
        pytest.param(
            '{"n": {{n}}, "s": "hi {{name}}"}', {"n": None, "name": None}, {"n": None, "s": "hi "}, id="nulls"
        ),
        pytest.param('{"f": {{ f }}, "b": {{b}}}', {"f": 2.5, "b": False}, {"f": 2.5, "b": False}, id="float-bool"),
        pytest.param(
            '{"a": [{{x}}, {"b": {{y|int}}}], "lit": 1}',
            {"x": "t", "y": "42"},
            {"a": ["t", {"b": 42}], "lit": 1},
            id="nested",
        ),
        pytest.param("[{{x}}, {{x}}]", {"x": 1}, [1, 1], id="array-body"),
        pytest.param('{"q": "say \\"{{w}}\\""}', {"w": "hi"}, {"q": 'say "hi"'}, id="escaped-quotes-in-string"),
        pytest.param('{"tags": {{t|json}}}', {"t": '["a", "b"]'}, {"tags": ["a", "b"]}, id="json-conversion"),
        pytest.param('{"k": "{{x}}"}', {"x": 5}, {"k": 5}, id="quoted-exact-placeholder-is-typed-too"),
    ],
)
def test_json_text_body(text: str, row: dict[str, Any], expected: Any) -> None:
    assert compile_json_text(text, "request.body").render(row) == expected


@pytest.mark.parametrize(
    "cell",
    [
        pytest.param('"}, "x": 1', id="close-object"),
        pytest.param('", "admin": true, "y": "', id="inject-key"),
        pytest.param("line1\nline2\r\t", id="control-chars"),
        pytest.param("back\\slash \\u0000 \\", id="backslashes"),
        pytest.param("{{other}}", id="placeholder-text-in-cell"),
        pytest.param("\u2028é😀", id="unicode"),
    ],
)
@pytest.mark.parametrize(
    "source",
    [
        pytest.param('{"name": {{v}}, "greeting": "hi {{v}}", "list": [{{v}}]}', id="json-text"),
        pytest.param({"name": "{{v}}", "greeting": "hi {{v}}", "list": ["{{v}}"]}, id="yaml-mapping"),
    ],
)
def test_cell_cannot_inject_json(source: Any, cell: str) -> None:
    template = (
        compile_json_text(source, "request.body")
        if isinstance(source, str)
        else compile_template(source, "request.body")
    )
    doc = template.render({"v": cell, "other": "SHOULD-NOT-APPEAR"})
    expected = {"name": cell, "greeting": f"hi {cell}", "list": [cell]}
    assert doc == expected
    assert orjson.loads(orjson.dumps(doc)) == expected


# --- URL templates -------------------------------------------------------------------------------------

URL_TEMPLATE = "https://api.example.com/v1/people/{{v}}?q={{v}}&page=2#top"


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        pytest.param("a/b", "a%2Fb", id="slash"),
        pytest.param("a#b", "a%23b", id="hash"),
        pytest.param("a?b", "a%3Fb", id="question"),
        pytest.param("a&b=c", "a%26b%3Dc", id="ampersand-equals"),
        pytest.param("a+b", "a%2Bb", id="plus"),
        pytest.param("50%", "50%25", id="percent"),
        pytest.param("a b", "a%20b", id="space"),
        pytest.param("é", "%C3%A9", id="non-ascii"),
        pytest.param("../admin", "..%2Fadmin", id="dot-dot"),
        pytest.param("x@evil.com:80", "x%40evil.com%3A80", id="at-colon"),
        pytest.param(12, "12", id="int"),
        pytest.param(True, "true", id="bool"),
    ],
)
def test_url_values_are_percent_encoded(value: Any, encoded: str) -> None:
    rendered = compile_url(URL_TEMPLATE, "request.url").render({"v": value})
    assert rendered == f"https://api.example.com/v1/people/{encoded}?q={encoded}&page=2#top"
    url = URL(rendered, encoded=True)
    assert url.host == "api.example.com"
    assert url.raw_path == f"/v1/people/{encoded}"
    assert list(url.query.items()) == [("q", format_value(value)), ("page", "2")]
    assert url.fragment == "top"


@pytest.mark.parametrize(
    ("value", "segment"),
    [
        pytest.param(None, None, id="null"),
        pytest.param("", None, id="empty"),
        pytest.param("..", "%2E%2E", id="dot-dot"),
        pytest.param(".", "%2E", id="dot"),
    ],
)
def test_path_segments_that_would_change_the_resource(value: Any, segment: str | None) -> None:
    template = compile_url("https://api.example.com/v1/people/{{v}}?q={{v}}", "request.url")
    if segment is None:  # the call would reach the parent path: a row error, no request
        with pytest.raises(TemplateValueError, match="column 'v' is empty, and the URL path needs a value"):
            template.render({"v": value})
    else:
        rendered = template.render({"v": value})
        assert URL(rendered, encoded=True).raw_path == f"/v1/people/{segment}"


def test_null_in_query_part_of_url_is_empty() -> None:
    template = compile_url("https://api.example.com/v1/search?q={{v}}", "request.url")
    assert template.render({"v": None}) == "https://api.example.com/v1/search?q="


@pytest.mark.parametrize(
    ("source", "row", "expected"),
    [
        pytest.param(
            "{{base}}/v1/{{id}}",
            {"base": "https://eu.api.example.com/root", "id": "a/b"},
            "https://eu.api.example.com/root/v1/a%2Fb",
            id="leading-placeholder-is-base-url",
        ),
        pytest.param(
            "{{base}}?id={{id}}",
            {"base": "https://api.example.com/x?k=1", "id": "a&b"},
            "https://api.example.com/x?k=1?id=a%26b",
            id="base-url-inserted-as-is",
        ),
        pytest.param("https://{{host}}/x", {"host": "evil.com/p"}, "https://evil.com%2Fp/x", id="host-part-encoded"),
        pytest.param(
            "https://api.example.com/v1/a b/é/{{id}}?q=x y",
            {"id": "i"},
            "https://api.example.com/v1/a%20b/%C3%A9/i?q=x%20y",
            id="literal-text-quoted",
        ),
        pytest.param(
            "https://api.example.com/v1/{{id}}?q=%20&r=a+b",
            {"id": "i"},
            "https://api.example.com/v1/i?q=%20&r=a+b",
            id="literal-escapes-kept",
        ),
        pytest.param(
            "https://api.example.com/v1/{{n|int}}", {"n": "007"}, "https://api.example.com/v1/7", id="conversion"
        ),
        pytest.param("https://api.example.com/v1", {}, "https://api.example.com/v1", id="no-placeholder"),
    ],
)
def test_url_templates(source: str, row: dict[str, Any], expected: str) -> None:
    assert compile_url(source, "request.url").render(row) == expected


def test_url_template_columns() -> None:
    assert compile_url("{{base}}/v1/{{id}}?x={{ x | int }}", "request.url").columns == {"base", "id", "x"}
    assert compile_url("https://api.example.com/", "request.url").columns == frozenset()


# --- prepare(): a whole request from a row ------------------------------------------------------------------


def request_of(request: dict[str, Any]) -> Any:
    return config_from_dict({"request": request}).request


@pytest.mark.parametrize(
    ("value", "query"),
    [
        # what yarl really writes: `+` becomes %2B and a space becomes `+`
        pytest.param("a+b", "q=a%2Bb", id="plus"),
        pytest.param("a b", "q=a+b", id="space"),
        pytest.param("x&y=z", "q=x%26y%3Dz", id="ampersand-equals"),
        pytest.param("50%", "q=50%25", id="percent"),
        pytest.param("a/b?c#d", "q=a/b?c%23d", id="slash-question-hash"),
        pytest.param("é", "q=%C3%A9", id="non-ascii"),
        pytest.param(True, "q=true", id="bool"),
        pytest.param(1.5, "q=1.5", id="float"),
        pytest.param(None, None, id="null-dropped"),
    ],
)
def test_prepare_params(value: Any, query: str | None) -> None:
    request = request_of({"url": "https://api.example.com/v1/{{id}}?fixed=a%20b", "params": {"q": "{{q}}"}})
    prepared = prepare(request, {"id": "i d", "q": value})
    expected_query = "fixed=a%20b" + (f"&{query}" if query else "")
    assert str(prepared.url) == f"https://api.example.com/v1/i%20d?{expected_query}"
    assert prepared.url.raw_query_string == expected_query
    expected_items = [("fixed", "a b")] + ([("q", format_value(value))] if value is not None else [])
    assert list(prepared.url.query.items()) == expected_items


def test_prepare_full_request() -> None:
    request = request_of(
        {
            "method": "post",
            "url": "https://api.example.com/v1/{{id}}",
            "params": {"n": "{{n}}", "none": "{{z}}", "ids": ["{{a}}", "{{b}}"], "lit": "x y"},
            "headers": {"X-Id": "{{id}}", "X-N": "{{n}}", "X-Null": "{{z}}", "X-Flag": "{{flag}}"},
            "body": {"a": "{{n}}", "b": {"c": "{{z}}", "d": ["{{z}}", {"e": "{{z}}"}]}},
            "remove_nulls": True,
        }
    )
    prepared = prepare(request, {"id": "a/b", "n": 5, "z": None, "a": 1, "b": "two", "flag": True})
    assert prepared.method == "POST"
    assert str(prepared.url) == "https://api.example.com/v1/a%2Fb?n=5&ids=1&ids=two&lit=x+y"
    assert prepared.headers == {"X-Id": "a/b", "X-N": "5", "X-Flag": "true", "Content-Type": "application/json"}
    assert prepared.body == b'{"a":5,"b":{"d":[null,{}]}}'


def test_prepare_keeps_nulls_without_remove_nulls() -> None:
    request = request_of(
        {"url": "https://api.example.com/v1", "method": "PUT", "body": {"a": "{{z}}", "b": {"c": "{{z}}"}}}
    )
    prepared = prepare(request, {"z": None})
    assert orjson.loads(prepared.body or b"") == {"a": None, "b": {"c": None}}
    assert prepared.headers == {"Content-Type": "application/json"}


def test_prepare_json_text_body_and_own_content_type() -> None:
    request = request_of(
        {
            "url": "https://api.example.com/v1",
            "method": "POST",
            "body": '{"n": {{n}}, "s": "hi {{name}}"}',
            "headers": {"content-type": "application/vnd.api+json"},
        }
    )
    prepared = prepare(request, {"n": 3, "name": '"}, "x": 1'})
    assert orjson.loads(prepared.body or b"") == {"n": 3, "s": 'hi "}, "x": 1'}
    assert prepared.headers == {"content-type": "application/vnd.api+json"}  # not overridden, not doubled


def test_prepare_without_body_or_params() -> None:
    prepared = prepare(request_of({"url": "https://api.example.com/v1/{{id}}"}), {"id": 7})
    assert (prepared.method, str(prepared.url), prepared.headers, prepared.body) == (
        "GET",
        "https://api.example.com/v1/7",
        {},
        None,
    )


def test_prepare_all_params_null_leaves_url_alone() -> None:
    request = request_of({"url": "https://api.example.com/v1?k=1", "params": {"a": "{{z}}", "b": "{{z}}"}})
    assert str(prepare(request, {"z": None}).url) == "https://api.example.com/v1?k=1"


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        pytest.param(
            "ftp://files.example.com",
            "request.url rendered to 'ftp://files.example.com/x', which is not an http(s) URL",
            id="ftp",
        ),
        pytest.param("", "request.url rendered to '/x', which is not an http(s) URL", id="empty"),
    ],
)
def test_prepare_rejects_non_http_base_from_row(base: str, expected: str) -> None:
    request = request_of({"url": "{{base}}/x"})
    with pytest.raises(ValueError) as info:
        prepare(request, {"base": base})
    assert str(info.value) == expected


def test_prepare_conversion_failure_is_a_template_value_error() -> None:
    request = request_of({"url": "https://api.example.com/v1", "body": {"size": "{{n|int}}"}})
    with pytest.raises(TemplateValueError) as info:
        prepare(request, {"n": "lots"})
    assert str(info.value) == "<config>: request.body.size: column 'n' holds 'lots', which is not a valid int"
