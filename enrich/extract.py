"""Compile field paths once; pull column values out of JSON responses.

Two kinds of path:

- dot paths: ``person.employment.title``, ``person.emails[0]``, ``person.emails.0``,
  ``items[-1].id``, ``data["odd key"]``. A missing step gives ``None``, never an error.
- JSONPath, any path starting with ``$`` (jsonpath-ng, with filters): ``$.person.tags[*]``.
  It yields the list of all matches (``[]`` when nothing matches).

    >>> f = compile_fields("person.name, person.emails[0]", "fields")
    >>> [p.name for p in f]
    ['person.name', 'person.emails[0]']
    >>> f[1].get({"person": {"emails": ["a@x.io", "b@x.io"]}})
    'a@x.io'

In the mapping form a field may be ``{path: ..., explode: true}``: the column gets one output
row per item of the list the path gives (``items.py`` makes the rows).

    >>> [(p.name, p.explode) for p in compile_fields({"contact": {"path": "$.contacts[*].email", "explode": True}})]
    [('contact', True)]
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import ConfigError, child_of

Getter = Callable[[Any], Any]

_TOKEN = re.compile(
    r"""
    \[\s*(?P<index>-?\d+)\s*\]            # [0], [-1]
  | \[\s*(?P<q>["'])(?P<quoted>.*?)(?P=q)\s*\]   # ["odd key"]
  | (?P<name>[^.\[\]]+)                   # plain key (digits index a list)
  | (?P<dot>\.)
    """,
    re.VERBOSE,
)


# A run of 17 digits (or digits and a point): a number a 64-bit int or a float may not hold as
# written. Only answers that have one are parsed the slow, exact way.
_LONG_NUMBER = re.compile(rb"[0-9.]{17,}")


class ExactNumber(str):
    """A number in an answer that no float holds as written (``0.1000000000000000055511``,
    ``1e400``): kept as its text, so the output holds exactly what the API sent."""

    __slots__ = ()


def _exact_float(text: str) -> float | ExactNumber:
    import decimal

    value = float(text)
    try:
        exact = decimal.Decimal(repr(value)) == decimal.Decimal(text)
    except decimal.InvalidOperation:  # inf, nan
        exact = False
    return value if exact else ExactNumber(text)


def parse_answer(body: bytes) -> Any:
    """A JSON answer parsed with every number as the API wrote it: orjson (fast) unless the body
    has a number a float or a 64-bit int would change (``1.2345678901234567890``,
    ``123456789012345678901234567890``), which are kept exactly (a Python int, or their text).
    Raises ``orjson.JSONDecodeError`` (a ``ValueError``) for a body that is not JSON."""
    doc = orjson.loads(body)  # also the check that the body is JSON, with orjson's message
    if _LONG_NUMBER.search(body) is None:
        return doc
    import json

    return json.loads(body, parse_float=_exact_float)


def to_json(value: Any) -> str:
    """``value`` as JSON text, whatever numbers it holds (integers wider than 64 bits included)."""
    try:
        return orjson.dumps(value, default=str).decode()
    except TypeError:  # orjson: an integer wider than 64 bits
        import json

        return json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class FieldPath:
    """One output column: its name, the path it was written as, and a compiled getter;
    ``explode``: one output row per item of the value's list."""

    name: str
    path: str
    get: Getter
    explode: bool = False


def _dot_steps(path: str, where: str) -> list[str | int]:
    steps: list[str | int] = []
    pos = 0
    expect_key = True
    while pos < len(path):
        match = _TOKEN.match(path, pos)
        if match is None:
            raise ConfigError(f"{where}: cannot read the path {path!r} at position {pos}.")
        if match.group("dot"):
            if expect_key:
                raise ConfigError(f"{where}: the path {path!r} has an empty step (`..` or a leading `.`).")
            expect_key = True
        elif match.group("index") is not None:
            steps.append(int(match.group("index")))
            expect_key = False
        elif match.group("quoted") is not None:
            steps.append(match.group("quoted"))
            expect_key = False
        else:
            name = match.group("name").strip()
            steps.append(int(name) if name.lstrip("-").isascii() and name.lstrip("-").isdecimal() else name)
            expect_key = False
        pos = match.end()
    if not steps or expect_key:
        raise ConfigError(f"{where}: the path {path!r} is empty or ends with `.`.")
    return steps


def _dot_getter(steps: list[str | int]) -> Getter:
    def get(doc: Any) -> Any:
        cur = doc
        for step in steps:
            if isinstance(cur, dict):
                cur = cur.get(step if isinstance(step, str) else str(step))
            elif isinstance(cur, list) and isinstance(step, int):
                if -len(cur) <= step < len(cur):
                    cur = cur[step]
                else:
                    return None
            else:
                return None
            if cur is None:
                return None
        return cur

    return get


def _jsonpath_getter(path: str, where: str) -> Getter:
    from jsonpath_ng.exceptions import JsonPathLexerError, JsonPathParserError
    from jsonpath_ng.ext import parse

    try:
        expr = parse(path)
    except (JsonPathLexerError, JsonPathParserError, Exception) as exc:  # jsonpath-ng raises bare Exception too
        raise ConfigError(f"{where}: {path!r} is not a valid JSONPath ({exc}).") from None
    return lambda doc: [m.value for m in expr.find(doc)]


def compile_path(path: str, where: str) -> Getter:
    """Compile one path: JSONPath when it starts with ``$``, a dot path otherwise."""
    path = path.strip()
    if not path:
        raise ConfigError(f"{where}: a field path is empty.")
    if path.startswith("$"):
        return _jsonpath_getter(path, where)
    return _dot_getter(_dot_steps(path, where))


def compile_fields(spec: Any, where: str = "fields") -> tuple[FieldPath, ...]:
    """Compile ``fields``: a comma-separated string, a list of paths, or a mapping name -> path
    (or name -> ``{path: ..., explode: true}``)."""
    if isinstance(spec, str):
        triples = [(p.strip(), p.strip(), False) for p in _split_commas(spec)]
    elif isinstance(spec, list):
        if not all(isinstance(p, str) for p in spec):
            raise ConfigError(
                f"{where}: a list of fields must hold path strings only; to explode a field, use the mapping form "
                "(`fields: {column: {path: ..., explode: true}}`)."
            )
        triples = [(p.strip(), p.strip(), False) for p in spec]
    elif isinstance(spec, Mapping):
        triples = [(str(name), *_field_value(value, child_of(where, name))) for name, value in spec.items()]
    else:
        raise ConfigError(
            f"{where}: expected a comma-separated string, a list or a mapping of column: path, "
            f"got {type(spec).__name__}."
        )
    if not triples:
        raise ConfigError(f"{where}: no field paths given; leave `fields` out to keep the whole response.")
    seen: set[str] = set()
    out = []
    for name, path, explode in triples:
        if name in seen:
            raise ConfigError(f"{where}: the column {name!r} is named twice.")
        seen.add(name)
        getter = compile_path(path, child_of(where, name) if name != path else where)
        out.append(FieldPath(name, path, getter, explode))
    return tuple(out)


_FIELD_KEYS = ("path", "explode")


def _field_value(value: Any, where: str) -> tuple[str, bool]:
    """A mapping's value: a path, or ``{path: ..., explode: true|false}``."""
    if isinstance(value, str):
        return value.strip(), False
    if isinstance(value, Mapping):
        unknown = [str(k) for k in value if k not in _FIELD_KEYS]
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}; a field takes `path` and `explode`.")
        path, explode = value.get("path"), value.get("explode", False)
        if not isinstance(path, str):
            raise ConfigError(f"{child_of(where, 'path')}: expected a path string like `person.name`, got {path!r}.")
        if not isinstance(explode, bool):
            raise ConfigError(f"{child_of(where, 'explode')} must be true or false, got {explode!r}.")
        return path.strip(), explode
    raise ConfigError(
        f"{where}: expected a path string like `person.name`, or `{{path: person.emails, explode: true}}`, "
        f"got {value!r}."
    )


def _split_commas(spec: str) -> list[str]:
    """Split on commas that are not inside brackets or quotes (``$..a[1,2]`` stays whole)."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(spec):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(spec[start:i])
            start = i + 1
    parts.append(spec[start:])
    return [p for p in parts if p.strip()]


# --- the response preview --------------------------------------------------------------------

# A key written bare in a dot path: a letter or `_` first, then letters, digits, `_` and `-`. Other
# keys are bracket-quoted, so a digit key is never read as a list index and `$id` never as JSONPath.
_PLAIN_KEY = re.compile(r"[^\W\d][\w-]*")
# A value keeps at least this many characters, however long its path.
_MIN_VALUE = 10


def _key_step(key: Any, first: bool) -> str | None:
    """How a dot path names ``key``: ``name``, ``.name`` or ``["odd key"]``; ``None`` if it cannot.

    A quoted key ends at the first closing quote followed by ``]``, and holds no line break, so a
    key with a line break, or with both ``"]`` and ``']``, has no dot path.
    """
    if not isinstance(key, str):
        return None
    if _PLAIN_KEY.fullmatch(key) and not key.isdigit():  # "²" is a digit to the path parser
        return key if first else f".{key}"
    candidates = [f"[{q}{key}{q}]" for q in sorted("\"'", key=key.count)]
    readable = [c for c in candidates if (m := _TOKEN.match(c)) and m.end() == len(c) and m.group("quoted") == key]
    # Prefer a form that also survives in a comma-separated `fields` string.
    for step in readable:
        if _split_commas(f"{step},x") == [step, "x"]:
            return step
    return readable[0] if readable else None


def _children(node: Any, path: str) -> tuple[list[tuple[str, Any]], int]:
    """The paths and values one step below a dict or list, and how many keys no path can name."""
    if isinstance(node, list):
        return [(f"{path}[{i}]", value) for i, value in enumerate(node)], 0
    kids, unnamed = [], 0
    for key, value in node.items():
        step = _key_step(key, first=not path)
        if step is None:
            unnamed += 1
        else:
            kids.append((path + step, value))
    return kids, unnamed


def leaf_paths(doc: Any) -> list[tuple[str, Any]]:
    """Every leaf of a JSON document as (path, value), in document order, each path a valid field.

    A leaf is a scalar, a null, or an empty object or list. Compiling a path returned here and
    calling its getter on ``doc`` gives the value back. A scalar document has no paths, and keys no
    dot path can name (a line break, or both ``"]`` and ``']`` in the key) are left out.

    >>> leaf_paths({"person": {"name": "Ada", "emails": ["a@x.io"]}, "odd key": None, "0": 1})
    [('person.name', 'Ada'), ('person.emails[0]', 'a@x.io'), ('["odd key"]', None), ('["0"]', 1)]
    """
    if not isinstance(doc, dict | list):
        return []
    out: list[tuple[str, Any]] = []
    stack: list[tuple[str, Any]] = [("", doc)]  # a stack, not recursion: JSON may nest 1,000 deep
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict | list) and (node or not path):
            kids, _ = _children(node, path)
            stack.extend(reversed(kids))
        else:
            out.append((path, node))
    return out


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _show(value: Any) -> str:
    """A container's size (``{3 keys}``, ``[5 items]``, ``{}``) or a leaf's JSON."""
    if isinstance(value, dict):
        return "{" + _plural(len(value), "key") + "}" if value else "{}"
    if isinstance(value, list):
        return "[" + _plural(len(value), "item") + "]" if value else "[]"
    return to_json(value)


def _cut(text: str, room: int) -> str:
    room = max(room, _MIN_VALUE)
    return text if len(text) <= room else text[: room - 1] + "…"


def response_tree(doc: Any, width: int = 100, max_items: int = 3) -> list[str]:
    """A response as an indented tree, one line per node: the node's field path, then its value.

    Containers show their size, leaves their JSON, cut with ``…`` to fit ``width`` (paths are never
    cut: each can be copied into ``fields``). A list shows its first ``max_items`` elements, then a
    line counting the rest. Sibling values are aligned when their paths are not too long.

    >>> for line in response_tree({"person": {"name": "Ada", "tags": ["a", "b", "c"]}, "ok": True}, max_items=2):
    ...     print(line)
    person  {2 keys}
      person.name  "Ada"
      person.tags  [3 items]
        person.tags[0]  "a"
        person.tags[1]  "b"
        … 1 more item
    ok      true
    """
    if not isinstance(doc, dict | list) or not doc:
        return [_cut(_show(doc), width)]
    max_items = max(max_items, 0)
    lines: list[str] = []
    # (depth, path, value, column to pad the path to); a note line has no value and column -1.
    stack: list[tuple[int, str, Any, int]] = []

    def push_children(node: Any, path: str, depth: int) -> None:
        kids, unnamed = _children(node, path)
        notes = []
        if isinstance(node, list) and len(kids) > max_items:
            notes.append(f"… {_plural(len(kids) - max_items, 'more item')}")
            kids = kids[:max_items]
        if unnamed:
            notes.append(f"… {_plural(unnamed, 'key')} no field path can name")
        column = max((len(p) for p, _ in kids), default=0)
        if 2 * depth + column > width // 2:
            column = 0  # one long path would push every sibling's value off to the right
        stack.extend((depth, note, None, -1) for note in reversed(notes))
        stack.extend((depth, p, v, column) for p, v in reversed(kids))

    push_children(doc, "", 0)
    while stack:
        depth, path, value, column = stack.pop()
        indent = "  " * depth
        if column < 0:
            lines.append(indent + path)
            continue
        head = f"{indent}{path.ljust(column)}  "
        lines.append(head + _cut(_show(value), width - len(head)))
        if isinstance(value, dict | list) and value:
            push_children(value, path, depth + 1)
    return lines
