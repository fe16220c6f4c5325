"""The generated parts of docs/: run by cog (`make cog`), checked by tests/test_docs.py (`cog --check`).

Each function returns Markdown that a page embeds between cog markers:

    <!-- [[[cog
    import docgen
    cog.out(docgen.cli_reference())
    ]]] -->
    ...generated text...
    <!-- [[[end]]] -->

- ``cli_reference()``: the ``--help`` of ``enrich`` and of every subcommand, from the CLI's parser.
- ``config_reference()``: every config key, from ``enrich.schema.config_schema()`` (a JSON Schema
  with a ``description`` on each key). It reads the schema as JSON Schema, not as enrich's
  internals: ``$ref`` and ``$defs``, ``anyOf``/``oneOf`` unions and a discriminated ``auth`` union
  (one member per kind) are followed as well as today's ``if``/``then`` form.
- ``bench_tables(name)``: the figures of ``bench/results/<name>.json`` as tables.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HELP_WIDTH = 100  # the width --help is wrapped at in docs/cli.md, whatever the terminal that runs cog

Schema = dict[str, Any]


# --- the CLI reference ---------------------------------------------------------------------------


def cli_reference() -> str:
    """A section per command: ``enrich --help``, then ``enrich COMMAND --help`` for each subcommand."""
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_WIDTH)
    try:
        from enrich.cli import build_parser

        parser = build_parser()
        parts = [_help_section("enrich", parser.format_help())]
        for name, sub in subcommands(parser).items():
            parts.append(_help_section(f"enrich {name}", sub.format_help()))
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before
    return "\n".join(parts)


def subcommands(parser: Any) -> dict[str, Any]:
    """``{name: subparser}`` of an argparse parser, in the order ``--help`` lists them."""
    action = next(a for a in parser._actions if a.dest == "command")
    return dict(action.choices)


def _help_section(title: str, text: str) -> str:
    return f"## `{title}`\n\n```text\n{text.rstrip()}\n```\n"


# --- the config reference ------------------------------------------------------------------------


def config_reference() -> str:
    """The keys of the config file, a table per mapping, from the config's JSON Schema."""
    from enrich.schema import config_schema

    return ConfigReference(config_schema()).markdown()


class ConfigReference:
    """Walks a JSON Schema of the config and writes a Markdown table for each mapping in it."""

    def __init__(self, schema: Schema) -> None:
        self.root = schema
        self.definitions: Schema = {**schema.get("definitions", {}), **schema.get("$defs", {})}

    def markdown(self) -> str:
        top = self.resolve(self.root)
        out = [self.table("", top, heading="## Top-level keys")]
        for name, node in self.properties(top).items():
            out.extend(self.sections(name, node, level=2))
        return "\n".join(out)

    def sections(self, path: str, node: Schema, level: int) -> Iterator[str]:
        """A section for ``path`` when it is (or may be) a mapping of keys, then its own nested mappings."""
        keys = self.properties(node)
        if not keys:
            return
        heading = f"{'#' * level} `{path}`"
        yield self.table(path, node, heading=heading)
        kinds = self.kinds(node)
        if kinds:
            yield self.kinds_table(path, kinds, level + 1)
        for name, child in keys.items():
            yield from self.sections(f"{path}.{name}", child, level + 1)

    # -- reading the schema

    def resolve(self, node: Schema) -> Schema:
        """``node`` with a ``$ref`` replaced by its target (keys beside the ``$ref`` win)."""
        while "$ref" in node:
            target = self.definitions[node["$ref"].rsplit("/", 1)[-1]]
            node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return node

    def members(self, node: Schema) -> list[Schema]:
        """The alternatives and parts of a node: its ``anyOf``, ``oneOf`` and ``allOf`` members, resolved."""
        return [self.resolve(m) for key in ("anyOf", "oneOf", "allOf") for m in node.get(key, [])]

    def properties(self, node: Schema) -> dict[str, Schema]:
        """Every key a mapping node may hold: its own properties and those of its union members.

        A key that several members hold with a different constant each (the ``type`` of a
        discriminated union) becomes one key taking any of those constants."""
        node = self.resolve(node)
        found: dict[str, list[Schema]] = {}
        for name, prop in node.get("properties", {}).items():
            found.setdefault(name, []).append(self.resolve(prop))
        for member in self.members(node):
            for name, prop in self.properties(member).items():
                found.setdefault(name, []).append(prop)
        merged: dict[str, Schema] = {}
        for name, props in found.items():
            consts = [_const(p) for p in props]
            if len(props) > 1 and all(c is not None for c in consts):
                first = {k: v for k, v in props[0].items() if k != "const"}
                merged[name] = {**first, "enum": list(dict.fromkeys(consts))}
            else:
                merged[name] = props[0]
        return merged

    def description(self, node: Schema) -> str:
        """A node's description, or the first one among its union members (pydantic puts it there)."""
        node = self.resolve(node)
        if node.get("description"):
            return str(node["description"])
        return next((d for d in map(self.description, self.members(node)) if d), "")

    def kinds(self, node: Schema) -> dict[str, list[str]]:
        """For a union keyed by ``type`` (auth): ``{kind: [its keys]}``; empty for any other node."""
        kinds: dict[str, list[str]] = {}
        for member in self.alternatives(node):
            if "if" in member and "then" in member:  # {"if": {type: const K}, "then": {propertyNames: [...]}}
                kind = _const(self.resolve(member["if"]).get("properties", {}).get("type", {}))
                names = _property_names(self.resolve(member["then"]), self)
            else:  # one model per kind: its `type` property is a const (or a one-value enum)
                props = self.properties(member)
                kind = _const(props.get("type", {}))
                names = list(props)
            if kind is not None and names:
                kinds[kind] = [n for n in names if n != "type"]
        return kinds

    def alternatives(self, node: Schema) -> Iterator[Schema]:
        """The members of a union that are mappings (or ``if``/``then`` rules), however deeply nested."""
        for member in self.members(node):
            if ("if" in member and "then" in member) or "properties" in member:
                yield member
            else:
                yield from self.alternatives(member)

    # -- writing Markdown

    def table(self, path: str, node: Schema, heading: str) -> str:
        node = self.resolve(node)
        lines = [heading, ""]
        if path and self.description(node):
            lines += [_text(self.description(node)), ""]
        lines += ["| key | type | default | what it is |", "|---|---|---|---|"]
        required = set(node.get("required", []))
        for name, prop in self.properties(node).items():
            key = f"{path}.{name}" if path else name
            default = "required" if name in required else _default(prop)
            lines.append(
                f"| `{key}` | {_cell(self.type_text(prop))} | {_cell(default)} | {_cell(_text(self.description(prop)))} |"
            )
        return "\n".join(lines) + "\n"

    def kinds_table(self, path: str, kinds: dict[str, list[str]], level: int) -> str:
        lines = [f"{'#' * level} The keys of each `{path}.type`", "", "Each kind takes only its own keys:", ""]
        lines += ["| `type` | keys |", "|---|---|"]
        for kind, names in kinds.items():
            lines.append(f"| `{kind}` | {', '.join(f'`{n}`' for n in names)} |")
        return "\n".join(lines) + "\n"

    def type_text(self, node: Schema) -> str:
        """What a key takes, in a few words: ``text``, ``integer or text``, ``one of GET, POST``."""
        node = self.resolve(node)
        if "const" in node:
            return f"`{json.dumps(node['const'])}`"
        if "enum" in node:
            values = list(dict.fromkeys(str(v) for v in node["enum"]))
            shown = [v for v in values if not (v.islower() and v.upper() in values)]  # GET, not also get
            return "one of " + ", ".join(f"`{v}`" for v in shown)
        names: list[str] = []
        types = node.get("type")
        for t in [types] if isinstance(types, str) else types or []:
            names.append(_TYPE_NAMES.get(t, t))
        for member in node.get("anyOf", []) + node.get("oneOf", []):
            names.append(self.type_text(member))
        names = [n for n in dict.fromkeys(names) if n and n != "null"]
        return " or ".join(names)


_TYPE_NAMES = {
    "string": "text",
    "integer": "integer",
    "number": "number",
    "boolean": "`true`/`false`",
    "object": "mapping",
    "array": "list",
    "null": "null",
}


def _const(node: Schema) -> str | None:
    if "const" in node:
        return str(node["const"])
    enum = node.get("enum")
    if isinstance(enum, list) and len(enum) == 1:
        return str(enum[0])
    return None


def _property_names(node: Schema, reference: ConfigReference) -> list[str]:
    if "propertyNames" in node:
        return [str(n) for n in node["propertyNames"].get("enum", [])]
    for member in reference.members(node):
        names = _property_names(member, reference)
        if names:
            return names
    return []


def _default(node: Schema) -> str:
    if node.get("default") is None:
        return ""
    value = node["default"]
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return f"`{json.dumps(value)}`"


def _text(text: str) -> str:
    """Description text as Markdown: `<` and `>` outside code spans escaped (``<output>`` is not HTML)."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # the even parts are outside backticks
        parts[i] = parts[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# --- the bench figures ---------------------------------------------------------------------------


def bench_results(name: str) -> Schema:
    data: Schema = json.loads((ROOT / "bench" / "results" / f"{name}.json").read_text(encoding="utf-8"))
    return data


def _n(value: float | None, digits: int = 0) -> str:
    if value is None:
        return ""
    return f"{value:,.{digits}f}"


def _rows(header: list[str], rows: list[list[str]]) -> str:
    align = ["---"] + ["---:"] * (len(header) - 1)  # the first column names the row; the others are figures
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def machine(name: str) -> str:
    """The machine a results file was measured on, in one line."""
    data = bench_results(name)
    m = data["machine"]
    return f"{m['cpus']} cores, Python {m['python']}, polars {m['polars']}, on {data['when'][:10]}"


def throughput_table() -> str:
    data = bench_results("throughput")
    rows = []
    for r in data["throughput"]:
        share = ""
        if "enrich_share_of_limit" in r:
            share = f"{r['enrich_share_of_limit']:.2f} (bare {r['baseline_share_of_limit']:.2f})"
        rows.append(
            [
                f"{r['latency_ms']} ms",
                str(r["concurrency"]),
                _n(r["enrich_rows_per_s"]),
                _n(r["baseline_rows_per_s"]),
                f"{r['throughput_ratio']:.2f}",
                _n(r["enrich_cpu_us_per_row"]),
                _n(r["baseline_cpu_us_per_row"]),
                f"{r['cpu_ratio']:.2f}",
                share,
            ]
        )
    header = [
        "latency",
        "concurrency",
        "enrich rows/s",
        "bare loop rows/s",
        "rows/s ratio",
        "enrich CPU µs/row",
        "bare CPU µs/row",
        "CPU ratio",
        "share of concurrency/latency",
    ]
    return _rows(header, rows)


def rate_limit_table() -> str:
    data = bench_results("throughput")
    rows = [
        [
            f"{_n(r['limit_per_s'])}/s",
            _n(r["achieved_per_s"], 1),
            _n(r["busiest_second"]),
            _n(r["first_second"]),
        ]
        for r in data["rate_limit"]
    ]
    return _rows(["limit", "calls/s at the server", "busiest one-second window", "first second"], rows)


def journal_table() -> str:
    data = bench_results("throughput")
    j = data["journal"]
    place = bench_results("scaleout")["journal_place"]
    rows = [
        ["file journal", _n(j["journal_on_rows_per_s"]), _n(j["journal_on_cpu_us_per_row"], 1)],
        ["`--no-journal`", _n(j["journal_off_rows_per_s"]), _n(j["journal_off_cpu_us_per_row"], 1)],
        ["file journal (second bench)", _n(place["file_rows_per_s"]), _n(place["file_cpu_us_per_row"], 1)],
        ["Redis journal (second bench)", _n(place["redis_rows_per_s"]), _n(place["redis_cpu_us_per_row"], 1)],
    ]
    return _rows(["journal", "rows/s", "CPU µs/row"], rows)


def startup_table() -> str:
    s = bench_results("throughput")["startup"]
    return _rows(
        ["command", "seconds"],
        [["`enrich --version`", f"{s['version_s']:.2f}"], ["a 1-row run, login included", f"{s['one_row_run_s']:.2f}"]],
    )


def scaleout_table() -> str:
    data = bench_results("scaleout")
    limit = data["shared_limit_per_s"]
    one = data["scaleout"][0]["rows_per_s"]
    rows = [
        [
            str(r["processes"]),
            _n(r["rows_per_s"]),
            f"{r['rows_per_s'] / one:.2f}x",
            _n(r["server_calls_per_s"]),
            _n(r["busiest_second"]),
            f"{r['busiest_second'] / limit:.2f}",
        ]
        for r in data["scaleout"]
    ]
    header = [
        "processes",
        "rows/s",
        "vs 1 process",
        "calls/s at the server",
        "busiest second",
        f"of the {limit:,}/s limit",
    ]
    return _rows(header, rows)


def steps_pipeline_table() -> str:
    data = bench_results("steps")["pipelining"]
    rows = []
    for c in data["cases"]:
        k = c["steps"]
        rows.append(
            [
                "1 (alone)" if k == 1 else str(k),
                ", ".join(f"{r:,g}/s" for r in c["rate_limits_per_s"]),
                _n(c["calls"]),
                f"{c['wall_s']:.2f} s",
                f"{c['wall_over_ideal']:.2f}",
                f"{c['span_s']:.2f} s",
                f"{c['span_over_ideal']:.2f}",
                f"{c['span_over_staged']:.2f}",
                f"{c['wall_over_one_step']:.2f}",
            ]
        )
    header = [
        "steps",
        "each step's limit",
        "calls",
        "wall time",
        "/ (N/R)",
        "first to last call",
        "/ (N/R)",
        "/ (k·N/R, staged)",
        "wall time / 1 step's",
    ]
    return _rows(header, rows)


def steps_k_table() -> str:
    data = bench_results("steps")["k_steps"]
    names = {"one call": "one call, no `steps`"}
    rows = [
        [
            names.get(c["case"], c["case"]),
            _n(c["rows_per_s"]),
            f"{c['rows_per_s_vs_one_step']:.2f}",
            _n(c["server_calls_per_s"]),
            f"{c['server_calls_per_s_vs_one_step']:.2f}",
            _n(c["cpu_us_per_call"]),
            f"{c['cpu_per_call_vs_one_step']:.2f}",
        ]
        for c in data["cases"]
    ]
    header = ["run", "rows/s", "vs 1 step", "calls/s, first to last call", "vs 1 step", "CPU µs/call", "vs 1 step"]
    return _rows(header, rows)


def memory_table() -> str:
    data = bench_results("memory")
    base = data["runs"][0]["peak_rss_mb"]
    rows = [
        [
            _n(r["rows"]),
            f"{r['peak_rss_mb']:.0f} MB",
            f"{r['peak_rss_mb'] / base:.2f}x",
            _n(r["rows_per_s"]),
            f"{r['journal_mb']:,.0f} MB",
        ]
        for r in data["runs"]
    ]
    return _rows(["rows", "peak RSS", "vs the first", "rows/s", "journal on disk"], rows)


# --- the package layout --------------------------------------------------------------------------


def module_list() -> str:
    """A line per module of the package: its name and the first line of its docstring."""
    import ast

    lines = []
    for path in sorted((ROOT / "enrich").glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        if doc and not path.name.startswith("__main__"):
            first = re.sub(r"\s*\(issues? \d+[^)]*\)", "", doc.splitlines()[0])  # history is for commit messages
            lines.append(f"- `{path.name}`: {_text(first)}")
    return "\n".join(lines) + "\n"
