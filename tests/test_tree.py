"""The response preview: every leaf's path is a valid field that reads the leaf back; the tree's text."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from enrich.extract import compile_fields, compile_path, leaf_paths, response_tree

# A response like the demo API's: nested objects, a list of strings, a list of objects, nulls,
# booleans, numbers, empty containers.
PERSON: dict[str, Any] = {
    "person": {
        "name": "Ada Lovelace",
        "emails": ["ada@example.com", "ada@work.example"],
        "employment": {"title": "Engineer", "since": None, "remote": False},
        "tags": [],
        "score": 0.5,
    },
    "company": {
        "name": "Analytical Engines",
        "employees": 12,
        "domains": [{"name": "engines.example", "primary": True}, {"name": "ae.example", "primary": False}],
        "meta": {},
    },
    "found": True,
    "next": None,
}

# Keys a dot path has to quote, or cannot name at all.
ODD: dict[str, Any] = {
    "odd key": 1,
    "a.b": 2,
    "x[0]": 3,
    "0": 4,
    "007": 5,
    "-1": 6,
    "": 7,
    "$id": 8,
    'say "hi"': 9,
    "it's": 10,
    "both '\"": 11,
    " padded ": 12,
    "a,b": 13,
    "f(x": 14,
    "ñame": 15,
    "²": 16,
    'end"]': 17,
    "kebab-case": 18,
    "nested": {"": {"0": [{"$ref": "r"}, [None, {"a b": 0}]]}},
    "line\nbreak": "unreachable",
    "x\"]y']": "unreachable",
}


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param(PERSON, id="realistic-response"),
        pytest.param(ODD, id="odd-keys"),
        pytest.param([PERSON, {"id": 2}, [1, [2, []]], "x", None], id="top-level-list"),
        pytest.param({"a": {"b": {"c": {"d": [[[{"e": "deep"}]]]}}}}, id="deep-nesting"),
    ],
)
def test_every_path_reads_its_value_back(doc: Any) -> None:
    pairs = leaf_paths(doc)
    assert pairs
    for path, value in pairs:
        assert compile_path(path, "fields")(doc) == value, path
    # The same paths as a list of `fields`, the way a config gives them.
    fields = compile_fields([p for p, _ in pairs])
    assert [f.get(doc) for f in fields] == [v for _, v in pairs]


def test_realistic_paths() -> None:
    assert leaf_paths(PERSON) == [
        ("person.name", "Ada Lovelace"),
        ("person.emails[0]", "ada@example.com"),
        ("person.emails[1]", "ada@work.example"),
        ("person.employment.title", "Engineer"),
        ("person.employment.since", None),
        ("person.employment.remote", False),
        ("person.tags", []),
        ("person.score", 0.5),
        ("company.name", "Analytical Engines"),
        ("company.employees", 12),
        ("company.domains[0].name", "engines.example"),
        ("company.domains[0].primary", True),
        ("company.domains[1].name", "ae.example"),
        ("company.domains[1].primary", False),
        ("company.meta", {}),
        ("found", True),
        ("next", None),
    ]
    # ...and as one comma-separated string, the short form of `fields`.
    paths = [p for p, _ in leaf_paths(PERSON)]
    assert [f.path for f in compile_fields(", ".join(paths))] == paths


@pytest.mark.parametrize(
    ("key", "path"),
    [
        pytest.param("kebab-case", "kebab-case", id="plain-with-hyphen"),
        pytest.param("ñame", "ñame", id="plain-non-ascii-letters"),
        pytest.param("odd key", '["odd key"]', id="space"),
        pytest.param("a.b", '["a.b"]', id="dot"),
        pytest.param("x[0]", '["x[0]"]', id="brackets"),
        # digit keys are quoted so they do not read as list indexes ("007" would be index 7)
        pytest.param("0", '["0"]', id="digits"),
        pytest.param("007", '["007"]', id="leading-zero"),
        pytest.param("-1", '["-1"]', id="negative-digits"),
        pytest.param("²", '["²"]', id="unicode-digit"),
        pytest.param("", '[""]', id="empty"),
        # a path starting with $ is JSONPath
        pytest.param("$id", '["$id"]', id="dollar"),
        # the other quote character when the key holds one
        pytest.param('say "hi"', "['say \"hi\"']", id="double-quotes"),
        pytest.param("it's", '["it\'s"]', id="single-quote"),
        pytest.param('end"]', "['end\"]']", id="quote-bracket"),
        pytest.param(" padded ", '[" padded "]', id="spaces-kept"),
        pytest.param("a,b", '["a,b"]', id="comma"),
        pytest.param("f(x", '["f(x"]', id="parenthesis"),
    ],
)
def test_odd_key_paths(key: str, path: str) -> None:
    assert leaf_paths({key: 1}) == [(path, 1)]
    assert leaf_paths({"top": {key: 1}}) == [("top" + ("." + path if path[0] != "[" else path), 1)]


def test_keys_no_path_can_name_are_left_out() -> None:
    pairs = leaf_paths(ODD)
    assert "unreachable" not in [v for _, v in pairs]
    # The last nameable key's leaves end the list: the two unnameable keys after it are gone.
    assert pairs[-3:] == [
        ('nested[""]["0"][0]["$ref"]', "r"),
        ('nested[""]["0"][1][0]', None),
        ('nested[""]["0"][1][1]["a b"]', 0),
    ]


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        # no path can be empty: an empty or scalar document has no leaves to name
        pytest.param({}, [], id="empty-object"),
        pytest.param([], [], id="empty-list"),
        pytest.param("text", [], id="scalar"),
        pytest.param(None, [], id="null"),
        # empty containers inside are leaves
        pytest.param({"a": {}, "b": []}, [("a", {}), ("b", [])], id="empty-children"),
        pytest.param([[], {}], [("[0]", []), ("[1]", {})], id="list-of-empties"),
        pytest.param([{"id": 1}, 2], [("[0].id", 1), ("[1]", 2)], id="top-level-list"),
    ],
)
def test_edge_documents(doc: Any, expected: list[tuple[str, Any]]) -> None:
    assert leaf_paths(doc) == expected


def test_tree_text() -> None:
    doc = {
        "person": {
            "name": "Ada",
            "emails": ["a@x.io", "b@x.io", "c@x.io", "d@x.io", "e@x.io"],
            "employment": {"title": "Engineer", "since": None},
            "bio": "x" * 80,
        },
        "odd key": [],
        "ok": True,
    }
    assert response_tree(doc, width=60, max_items=2) == [
        "person       {4 keys}",
        '  person.name        "Ada"',
        "  person.emails      [5 items]",
        '    person.emails[0]  "a@x.io"',
        '    person.emails[1]  "b@x.io"',
        "    … 3 more items",
        "  person.employment  {2 keys}",
        '    person.employment.title  "Engineer"',
        "    person.employment.since  null",
        '  person.bio         "' + "x" * 37 + "…",
        '["odd key"]  []',
        "ok           true",
    ]
    assert all(len(line) <= 60 for line in response_tree(doc, width=60))


@pytest.mark.parametrize(
    ("doc", "kwargs", "expected"),
    [
        # a top-level list, one more item than shown
        pytest.param(
            [{"id": 1}, {"id": 2}], {"max_items": 1}, ["[0]  {1 key}", "  [0].id  1", "… 1 more item"], id="list"
        ),
        # no items shown at all
        pytest.param({"t": [1, 2]}, {"max_items": 0}, ["t  [2 items]", "  … 2 more items"], id="max-items-zero"),
        # empty and scalar documents are one line of their JSON
        pytest.param({}, {}, ["{}"], id="empty-object"),
        pytest.param([], {}, ["[]"], id="empty-list"),
        pytest.param("é", {}, ['"é"'], id="scalar-string-utf8"),
        # a line break in a value is escaped: still one line per node
        pytest.param({"s": "a\nb"}, {}, ['s  "a\\nb"'], id="escaped-newline"),
        # a key no path can name is counted, not shown
        pytest.param({"a\nb": 1, "c": 2}, {}, ["c  2", "… 1 key no field path can name"], id="unnameable-key"),
        # a path is never cut; its value keeps at least ten characters
        pytest.param({"k" * 30: "v" * 30}, {"width": 20}, ["k" * 30 + '  "vvvvvvvv…'], id="narrow"),
        # one very long sibling path does not push the others' values to the right
        pytest.param({"a": 1, "b" * 40: 2}, {"width": 60}, ["a  1", "b" * 40 + "  2"], id="long-sibling-not-aligned"),
    ],
)
def test_tree_cases(doc: Any, kwargs: dict[str, Any], expected: list[str]) -> None:
    assert response_tree(doc, **kwargs) == expected


def test_tree_paths_are_fields() -> None:
    # Every path the tree shows reads the node whose size or value the line shows.
    for line in response_tree(PERSON, width=200, max_items=10):
        path, _, shown = line.strip().partition("  ")
        value = compile_path(path, "fields")(PERSON)
        if isinstance(value, dict) and value:
            assert shown.strip() == f"{{{len(value)} keys}}", line
        elif isinstance(value, list) and value:
            assert shown.strip() == f"[{len(value)} items]", line
        else:
            assert orjson.loads(shown.strip()) == value, line
