"""A commented starter config for a given input table: what ``enrich init people.csv`` writes.

The text loads as it is (once ``API_CLIENT_ID`` and ``API_CLIENT_SECRET`` are exported) and
its templates read real columns of the table: the URL uses the column most likely to
identify a row (an email, else a domain or URL, else an id, else the first column). The
settings it leaves out are there as ``# key: value`` lines, ready to be switched on by
deleting the ``# ``; every one of them is a real key with a value for this table.

    >>> import polars as pl
    >>> text = starter_config(Path("people.csv"), {"id": pl.Int64, "email": pl.String})
    >>> [line for line in text.splitlines() if line.lstrip().startswith("url:")][1]
    '  url: "https://api.example.com/v1/lookup/{{email}}"'
    >>> "output: out/people_enriched.parquet" in text
    True
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import polars as pl
import yaml

from .template import PLACEHOLDER
from .workbook import READ_SUFFIXES

# Words in a column name, by how well they identify the row an API should look up.
_IDENTIFYING = (
    frozenset({"email", "emails", "mail"}),
    frozenset({"domain", "domains", "website", "websites", "url", "urls", "site", "homepage", "web"}),
    frozenset({"id", "ids", "uuid", "guid"}),
)
# Columns whose leading zeros matter, and that polars reads as integers.
_CODES = frozenset({"zip", "zipcode", "postal", "postcode", "phone", "mobile", "fax"})
_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
_SQL_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_SQL_RESERVED = frozenset(
    {"all", "and", "any", "as", "asc", "between", "by", "case", "desc", "distinct", "end", "from", "group", "in"}
    | {"is", "key", "like", "limit", "not", "null", "or", "order", "select", "table", "then", "user", "when", "where"}
)
_COMMENT_AT = 40  # the column inline comments start at
_WRAP = 100


def starter_config(
    input_path: Path,
    schema: Mapping[str, pl.DataType],
    steps: bool = False,
    sheet: str | None = None,
    source: Path | str | None = None,
) -> str:
    """The text of a commented starter config (YAML) for the table at ``input_path`` with ``schema``;
    ``steps``: the calls as `steps:` (a lookup, then a chain and a waterfall to switch on); an
    Excel workbook's output is a workbook too (its ``sheet``, when not the first, is named);
    ``source``: what `input:` says, when not ``input_path`` (the URL a local copy was fetched from)."""
    columns = list(schema)
    usable = [c for c in columns if _placeholder_ok(c)]
    ident = _identifying(usable, schema)
    anchor = ident or (columns[0] if columns else None)  # for the examples that need no placeholder
    others = [c for c in columns if c != anchor]
    table = _comment_text(input_path.name)
    lines = [
        f"# enrich config for {table}, made by `enrich init`. Point it at your API, then:",
        "#   export API_CLIENT_ID=... API_CLIENT_SECRET=...",
        "#   enrich run <this file> --limit 5        # try the first five rows",
        "#   enrich run <this file>                  # then the whole table",
        "# A `# key: value` line is a setting left out: delete the `# ` to use it.",
        "# Every key is in docs/config.md; `enrich schema` gives editors completion.",
        "",
        f"input: {_scalar(str(source or input_path))}",
        *([f"sheet: {_quoted(sheet)}"] if sheet is not None else []),
        f"output: {_scalar(f'out/{input_path.stem}_enriched{_output_suffix(input_path)}')}",
        *_input_types(columns, schema),
        "",
        *_column_list(table, columns, usable),
        "",
        *(_steps(ident, columns, schema) if steps else _one_call(ident, usable, columns, schema)),
        "",
        _line("concurrency: 8", "requests in flight" + (", per step" if steps else "")),
        _line("rate_limit: 5/s", "requests started per second (N/s, N/min, N/h); raise it to what the API allows"),
        _line("# retry: {attempts: 5, statuses: [429, 500, 502, 503, 504]}", "429, 5xx and timeouts are retried"),
        _line("# timeout: 30", "seconds per attempt"),
        *_row_filters(anchor, others, steps),
    ]
    return "\n".join(lines) + "\n"


def _login() -> list[str]:
    return [
        "  url: https://api.example.com/auth/token",
        "  method: POST",
        _line("  body:", "sent as JSON; export the two variables first"),
        '    client_id: "${API_CLIENT_ID}"',
        '    client_secret: "${API_CLIENT_SECRET}"',
        _line("  token_path: access_token", "where the token is in the login response (data.jwt, $.data.token)"),
        _line("  token_type: Bearer", 'sent as "Authorization: Bearer <token>"; "" sends the bare token'),
    ]


def _one_call(ident: str | None, usable: list[str], columns: list[str], schema: Mapping[str, pl.DataType]) -> list[str]:
    return [
        _line("auth:", "log in once for a JWT; delete this block if the API needs no login"),
        *_login(),
        "",
        _line("request:", "one call per row; {{column}} is the row's value"),
        _line("  method: GET", "or POST, PUT, PATCH, DELETE, HEAD"),
        *_request(ident, [c for c in usable if c != ident], schema),
        "",
        _line("fields:", "empty: the whole JSON response goes in one column, `response`"),
        _line(f"  # {_new_column('name', columns)}: person.name", "then keep what you need, column: path in it"),
        f"  # {_new_column('title', columns)}: person.employment.title",
    ]


def _steps(ident: str | None, columns: list[str], schema: Mapping[str, pl.DataType]) -> list[str]:
    """`auths` and `steps`: a lookup; a chain (a call with what it found) and a waterfall (a second
    provider asked only where the first found nothing), left out as `# ` lines."""
    title, company = _new_column("title", columns), _new_column("company_id", columns)
    url = f"https://api.example.com/v1/lookup/{{{{{ident}}}}}" if ident else "https://api.example.com/v1/lookup"
    email = next((c for c in columns if _words(c) & _IDENTIFYING[0] and not schema[c].is_nested()), ident)
    fallback = f"{{{_scalar(email)}: {_quoted(f'{{{{{email}}}}}')}}}" if email else "{}"
    return [
        _line("auths:", "named logins, each logged in once and shared by the steps that name it"),
        _line("  main:", "delete the block (and the steps' `auth: main`) if the API needs no login"),
        *(f"  {line}" for line in _login()),
        _line("  # fallback:", "a second provider, by its key (export FALLBACK_API_KEY)"),
        "  #   type: header",
        "  #   header: X-Api-Key",
        '  #   token: "${FALLBACK_API_KEY}"',
        "",
        _line("steps:", "run in order for each row; a step may use the fields of the steps before it"),
        "  - name: lookup",
        "    auth: main",
        f"    request: {{url: {_quoted(url)}}}",
        _line("    fields:", "column: path in the JSON answer"),
        f"      {title}: person.employment.title",
        f"      {company}: company.id",
        _line("  # - name: company", "a chain: a call with what `lookup` found"),
        "  #   auth: main",
        f"  #   when: {_quoted(f'{_sql_name(company)} IS NOT NULL')}",
        f"  #   request: {{url: {_quoted(f'https://api.example.com/v1/companies/{{{{{company}}}}}')}}}",
        f"  #   fields: {{{_new_column('industry', columns)}: company.industry}}",
        _line("  # - name: fallback", f"a waterfall: asked only for the rows `lookup` found no {title} for"),
        "  #   auth: fallback",
        _line("  #   cost: 1", "the credits one answered call costs (max_cost: stops the run at a limit)"),
        f'  #   request: {{url: "https://fallback.example.com/v1/person", params: {fallback}}}',
        f"  #   fields: {{{title}: data.job_title}}",
    ]


def _output_suffix(input_path: Path) -> str:
    """A workbook in, a workbook out: the user keeps the table in a spreadsheet."""
    return ".xlsx" if input_path.suffix.lower() in READ_SUFFIXES else ".parquet"


def _placeholder_ok(column: str) -> bool:
    """Whether ``{{column}}`` names exactly this column (no ``{ } |``, no outer spaces) and prints on one line."""
    match = PLACEHOLDER.fullmatch(f"{{{{{column}}}}}")
    return bool(column) and column.isprintable() and match is not None and match.group(1) == column


def _words(column: str) -> set[str]:
    """Lower-case words of a column name: ``userEmail`` -> {user, email}, ``E-Mail`` -> {e, mail, email}."""
    words = {w.lower() for w in _WORD.findall(column)}
    return words | {re.sub(r"[^a-z0-9]", "", column.lower())}


def _identifying(columns: list[str], schema: Mapping[str, pl.DataType]) -> str | None:
    """The column a lookup URL should use: an email, else a domain or URL, else an id, else the first."""
    scalar = [c for c in columns if not schema[c].is_nested()]
    for names in _IDENTIFYING:
        matches = [c for c in scalar if _words(c) & names]
        if matches:
            return min(matches, key=lambda c: re.sub(r"[^a-z0-9]", "", c.lower()) not in names)
    return scalar[0] if scalar else None


def _new_column(name: str, columns: list[str]) -> str:
    """``name``, or ``name_api`` (and so on) when the table has it: a field must not overwrite a column."""
    while name in columns:
        name += "_api"
    return name


def _input_types(columns: list[str], schema: Mapping[str, pl.DataType]) -> list[str]:
    codes = [c for c in columns if _words(c) & _CODES and schema[c].is_integer()]
    if not codes:
        return []
    types = ", ".join(f"{_scalar(c)}: str" for c in codes)
    return [_line(f"# input_types: {{{types}}}", "codes, not numbers: send them as text in a JSON body")]


def _column_list(table: str, columns: list[str], usable: list[str]) -> list[str]:
    lines = [f"# Columns of {table}, to use as {{{{column}}}} in request.url, params, headers or body:"]
    lines += _wrapped("#  ", [f"{{{{{c}}}}}" for c in usable])
    unusable = [c for c in columns if c not in usable]
    if unusable:
        lines.append("# These cannot be placeholders ({ } | line breaks or outer spaces); rename them to use them:")
        lines += _wrapped("#  ", [_comment_text(repr(c)) for c in unusable])
    return lines


def _request(ident: str | None, others: list[str], schema: Mapping[str, pl.DataType]) -> list[str]:
    if ident is None:
        return [
            _line('  url: "https://api.example.com/v1/lookup"', "no column name can be a {{placeholder}}; see above"),
        ]
    lines = [f"  url: {_quoted(f'https://api.example.com/v1/lookup/{{{{{ident}}}}}')}"]
    extra = _identifying(others, schema)  # the next most identifying column, for the query string
    if extra is not None:
        params = f"{{{_scalar(extra)}: {_quoted(f'{{{{{extra}}}}}')}}}"
        lines.append(_line(f"  # params: {params}", "the query string; null values are left out"))
    lines.append("  # headers: {Accept: application/json}")
    body = f"{{{_scalar(ident)}: {_quoted(f'{{{{{ident}}}}}')}}}"
    lines.append(_line(f"  # body: {body}", "a JSON body, for POST; cells keep their types"))
    return lines


def _row_filters(anchor: str | None, others: list[str], steps: bool) -> list[str]:
    if anchor is None:
        return []
    key = _line(f"# key: [{_scalar(anchor)}]", "the columns that identify a row, for --shard")
    if steps:  # `when` and `skip_if_filled` belong to each step
        return [key]
    # The last column is the likeliest to hold what an earlier run or source already filled in.
    filled = others[-1] if others else anchor
    return [
        _line(f"# when: {_quoted(f'{_sql_name(anchor)} IS NOT NULL')}", "call only the rows that match (polars SQL)"),
        _line(f"# skip_if_filled: [{_scalar(filled)}]", "no call for rows whose listed columns all hold values"),
        key,
    ]


def _sql_name(column: str) -> str:
    if _SQL_NAME.fullmatch(column) and column not in _SQL_RESERVED:
        return column
    return '"' + column.replace('"', '""') + '"'


def _quoted(text: str) -> str:
    """``text`` as a one-line quoted YAML scalar: double quotes, or single when it holds a ``"``."""
    style = "'" if '"' in text else '"'
    return yaml.safe_dump(text, default_style=style, allow_unicode=True, width=2**30).rstrip("\n")


def _scalar(text: str) -> str:
    """``text`` as a YAML scalar: plain when it reads back as the same string, else quoted."""
    if re.fullmatch(r"[\w./-]+", text) and yaml.safe_load(text) == text:
        return text
    return _quoted(text)


def _comment_text(text: str) -> str:
    """``text`` safe inside a comment: a line break in a file name must not end the comment."""
    return text if text.isprintable() else repr(text)[1:-1]


def _line(text: str, comment: str) -> str:
    return f"{text.ljust(_COMMENT_AT - 2)}  # {comment}"


def _wrapped(prefix: str, items: list[str]) -> list[str]:
    lines, current = [], prefix
    for item in items:
        if current != prefix and len(current) + 1 + len(item) > _WRAP:
            lines.append(current)
            current = prefix
        current += " " + item
    if current != prefix:
        lines.append(current)
    return lines
