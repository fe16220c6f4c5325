"""YAML config -> validated, frozen ``Config``.

Everything a run needs is checked here, before any request: unknown keys (with a
"did you mean"), types, ``${VAR}`` lookups, templates and field paths (compiled
once). Errors name the file, the line and the key, and say what would fix them.

    >>> cfg = load_config("configs/demo.yaml")          # doctest: +SKIP
    >>> cfg.request.method, cfg.concurrency             # doctest: +SKIP
    ('GET', 16)

``${VAR}`` values and the auth credentials are registered with the config's
``Redactor``, and ``repr(config)`` never shows them.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, Where
from .extract import FieldPath, compile_fields, compile_path
from .redact import Redactor
from .template import Template, compile_json_text, compile_template, compile_url

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
INPUT_TYPES = ("str", "int", "float", "bool")
RESPONSE_COLUMN = "response"
STATUS_COLUMN = "_http_status"
ERROR_COLUMN = "_error"
ATTEMPTS_COLUMN = "_attempts"  # diagnostics: HTTP attempts the row's call took
LATENCY_COLUMN = "_latency_ms"  # diagnostics: the last attempt's time to the full response
ROW_COLUMN = "_row"  # the input row number, in shard outputs (so `enrich merge` can restore order)
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SECRET_KEY = re.compile(r"pass|secret|token|key|credential|auth|signature", re.IGNORECASE)
_RATE = re.compile(
    # The unit is optional: a bare number is per second (`--rate-limit 20` and `${RATE}` give text).
    r"^\s*(?P<n>\d+(?:\.\d+)?)\s*(?:(?:/|per)\s*(?P<unit>s|sec|second|m|min|minute|h|hr|hour)s?)?\s*$",
    re.IGNORECASE,
)
_UNIT_SECONDS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hr": 3600, "hour": 3600}


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` requests per ``period`` seconds, e.g. ``Rate(20, 1)`` for ``20/s``."""

    count: float
    period: float

    @property
    def per_second(self) -> float:
        return self.count / self.period

    def __str__(self) -> str:
        unit = {1: "s", 60: "min", 3600: "h"}.get(int(self.period), f"{self.period}s")
        return f"{self.count:g}/{unit}"


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """How to log in and where the token is (Clay's JWT inputs)."""

    url: str
    method: str
    body: Any = field(repr=False)  # credentials
    headers: Mapping[str, str] = field(repr=False)
    token_path: str
    token_type: str
    header: str
    get_token: Any = field(repr=False, compare=False)

    def header_value(self, token: str) -> str:
        """The auth header's value: ``Bearer <token>``, or the bare token when ``token_type`` is ``""``."""
        return f"{self.token_type} {token}" if self.token_type else token


@dataclass(frozen=True, slots=True)
class RequestConfig:
    """How each row becomes a request; every part is a compiled template."""

    method: str
    url: Template
    params: Template | None
    headers: Template | None
    body: Template | None
    remove_nulls: bool


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """When and how long to retry a call."""

    attempts: int = 5
    backoff: float = 0.5
    max_backoff: float = 30.0
    statuses: frozenset[int] = frozenset({429, 500, 502, 503, 504})
    max_retry_after: float = 300.0

    def backoff_for(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based): exponential, full jitter."""
        return random.uniform(0, min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))


@dataclass(frozen=True, slots=True)
class Config:
    """A whole, validated run configuration."""

    request: RequestConfig
    auth: AuthConfig | None = None
    input: Path | None = None
    output: Path | None = None
    fields: tuple[FieldPath, ...] | None = None
    concurrency: int = 16
    rate_limit: Rate | None = None
    retry: RetryConfig = field(default_factory=RetryConfig)
    timeout: float = 30.0
    input_types: Mapping[str, str] = field(default_factory=dict)
    key: tuple[str, ...] = ()  # columns that identify a row, for --shard (default: the rendered request)
    journal: Path | None = None  # None: beside the output, `<output>.journal`
    use_journal: bool = True
    when: str | None = None  # a polars SQL predicate: rows that do not match get no call
    skip_if_filled: tuple[str, ...] = ()  # rows whose listed columns all hold values get no call
    diagnostics: bool = True  # the `_attempts` and `_latency_ms` columns
    max_error_rate: float | None = None  # a larger share of failed rows makes the run exit 1
    errors_out: Path | None = None  # failed rows, with their request, go to this table
    escape_formulas: bool = True  # CSV output: API values that Excel would run as formulas get a '
    source: str = "<config>"
    redactor: Redactor = field(default_factory=Redactor, compare=False)
    # Where each template came from, for errors found once the input is known.
    template_sites: tuple[tuple[str, Template], ...] = field(default=(), repr=False, compare=False)

    def __repr__(self) -> str:
        parts = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.repr)
        return self.redactor.redact(f"Config({parts})")

    @property
    def field_columns(self) -> tuple[str, ...]:
        """The columns of extracted values, in order."""
        return tuple(f.name for f in self.fields) if self.fields else (RESPONSE_COLUMN,)

    @property
    def output_columns(self) -> tuple[str, ...]:
        """The columns the run adds to the table, in order."""
        diagnostics = (ATTEMPTS_COLUMN, LATENCY_COLUMN) if self.diagnostics else ()
        return (*self.field_columns, STATUS_COLUMN, ERROR_COLUMN, *diagnostics)

    @property
    def columns_used(self) -> frozenset[str]:
        """Every input column some template reads."""
        return frozenset().union(*(t.columns for _, t in self.template_sites))

    @property
    def selects_rows(self) -> bool:
        """Whether `when` or `skip_if_filled` may leave rows without a call."""
        return self.when is not None or bool(self.skip_if_filled)

    def when_expr(self) -> Any:
        """The `when` predicate as a polars expression (null counts as false), or None."""
        if self.when is None:
            return None
        import polars as pl

        return pl.sql_expr(self.when).fill_null(False)

    def call_mask(self) -> Any:
        """A polars expression: True for the rows that get a call (`when` and `skip_if_filled`)."""
        import polars as pl

        mask = pl.lit(True)
        if self.when is not None:
            mask = self.when_expr()
        if self.skip_if_filled:
            filled = pl.all_horizontal(
                [pl.col(c).is_not_null() & (pl.col(c).cast(pl.String) != "") for c in self.skip_if_filled]
            )
            mask = mask & ~filled
        return mask

    def check_columns(self, columns: list[str], table: str) -> None:
        """Fail if a template reads a column the table lacks, or a new column would overwrite one."""
        present = set(columns)

        def missing(col: str, what: str, hint: str = "{!r}") -> ConfigError:
            shown = ", ".join(columns[:20]) + (", ..." if len(columns) > 20 else "")
            close = difflib.get_close_matches(col, columns, n=1)
            fix = f" Did you mean {hint.format(close[0])}?" if close else ""
            return ConfigError(f"{what}, which is not a column of {table} (columns: {shown}).{fix}")

        for where, template in self.template_sites:
            for col in sorted(template.columns - present):
                raise missing(col, f"{where} uses {{{{{col}}}}}", hint="{{{{{}}}}}")
        for col in self.key:
            if col not in present:
                raise missing(col, f"{self.source}: `key` names {col!r}")
        for col in self.skip_if_filled:
            if col not in present:
                raise missing(col, f"{self.source}: `skip_if_filled` names {col!r}")
        for col in self.when_expr().meta.root_names() if self.when is not None else ():
            if col not in present:
                raise missing(col, f"{self.source}: `when` uses {col!r}")
        for name in self.output_columns:
            if name in present and not self.skip_if_filled:
                raise ConfigError(
                    f"{self.source}: the output column {name!r} is already a column of {table}. "
                    "Name the fields differently with the mapping form (`fields: {new_name: path}`), or list "
                    "the columns in `skip_if_filled` to fill only the rows that lack them."
                )

    def check_schema(self, schema: Mapping[str, Any], table: str) -> None:
        """``check_columns``, then what needs the column types: `when` must be a true/false
        condition that polars can evaluate on them (``id > 'x'`` fails here, before any call,
        not halfway through the run), and `skip_if_filled` columns must hold single values."""
        import polars as pl

        self.check_columns(list(schema), table)
        for col in self.skip_if_filled:
            if schema[col].is_nested():
                raise ConfigError(
                    f"{self.source}: `skip_if_filled` names {col!r}, a {schema[col]} column of {table}; "
                    "list columns that hold single values (text, numbers, dates)."
                )
        if self.when is None:
            return
        probe = pl.DataFrame([pl.Series(name, [None, None], dtype=dtype) for name, dtype in schema.items()])
        try:
            result = probe.select(pl.sql_expr(self.when).alias("when"))
        except pl.exceptions.PolarsError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ConfigError(
                f"{self.source}: `when: {self.when}` cannot be evaluated on {table}: {first}. "
                "Compare columns with values of their type (text in single quotes)."
            ) from None
        if result.height != probe.height or result.schema["when"] != pl.Boolean:
            kind = "one value for the whole table" if result.height != probe.height else result.schema["when"]
            raise ConfigError(
                f"{self.source}: `when: {self.when}` gives {kind}, not true or false for each row. "
                'Write a condition, e.g. "email IS NOT NULL" or "employees > 100".'
            )


# --- loading -----------------------------------------------------------------------------


class _Locator:
    """Turns a key path like ("request", "url") into "demo.yaml, line 14: request.url"."""

    def __init__(self, source: str, lines: dict[tuple[str, ...], int]) -> None:
        self.source = source
        self.lines = lines
        self.overridden: set[tuple[str, ...]] = set()

    def __call__(self, *path: str) -> Where:
        return Where(self._text(path), child=lambda key: self(*path, key))

    def _text(self, path: tuple[str, ...]) -> str:
        key = ".".join(path)
        if path in self.overridden:
            return f"--{key.replace('_', '-')}"
        for depth in range(len(path), 0, -1):
            line = self.lines.get(path[:depth])
            if line is not None:
                return f"{self.source}, line {line}: {key}"
        return f"{self.source}: {key}"


def _key_lines(node: yaml.Node, prefix: tuple[str, ...], out: dict[tuple[str, ...], int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = (*prefix, str(key_node.value))
            out[path] = key_node.start_mark.line + 1
            _key_lines(value_node, path, out)


def _read_yaml(path: Path) -> tuple[Any, dict[tuple[str, ...], int]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file not found: {path}. Check the path, or run from the folder it is relative to."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        at = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"{path}{at}: the YAML is malformed: {exc.problem}. Check the indentation and quote "
            "values that contain `: `, `#` or start with `{`, `[`, `*` or `&`."
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: the YAML is malformed: {exc}") from None
    lines: dict[tuple[str, ...], int] = {}
    if root is not None:
        _key_lines(root, (), lines)
    return data, lines


def _expand_env(value: Any, where: Any, path: tuple[str, ...], redactor: Redactor, env: Mapping[str, str]) -> Any:
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            found = env.get(name)
            if found is None:
                if default is not None:
                    return default
                raise ConfigError(
                    f"{where(*path)} uses ${{{name}}}, but the environment variable {name} is not set. "
                    f"Set it (export {name}=...) or give a default with ${{{name}:-value}}."
                )
            redactor.add(found)
            return found

        return _ENV.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, where, (*path, str(k)), redactor, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, where, (*path, str(i)), redactor, env) for i, v in enumerate(value)]
    return value


def _check_keys(data: Any, allowed: tuple[str, ...], where: _Locator, path: tuple[str, ...]) -> dict[str, Any]:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        name = ".".join(path) or "the config"
        raise ConfigError(f"{where(*path) if path else where.source}: {name} must be a mapping of keys, got {data!r}.")
    for key in data:
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            fix = f"Did you mean `{hint[0]}`?" if hint else f"Allowed keys: {', '.join(allowed)}."
            raise ConfigError(f"{where(*path, str(key))} is not a known key. {fix}")
    return data


def _str(
    data: dict[str, Any], key: str, where: _Locator, path: tuple[str, ...], default: str | None = None
) -> str | None:
    value = data.get(key, default)
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        raise ConfigError(f"{where(*path, key)} must be a string, got {value!r}.")
    return str(value)


def _method(value: Any, loc: str, default: str) -> str:
    method = str(value or default).upper()
    if method not in METHODS:
        raise ConfigError(f"{loc}: {value!r} is not an HTTP method. Use one of: {', '.join(METHODS)}.")
    return method


def _number(value: Any, loc: str, *, minimum: float, integer: bool = False, what: str = "a number") -> Any:
    if isinstance(value, str):  # from ${VAR} or the command line: numbers arrive as text
        with contextlib.suppress(ValueError):
            value = int(value) if value.strip().lstrip("+-").isdigit() else float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise ConfigError(f"{loc} must be {what}, got {value!r}.")
    if value < minimum:
        raise ConfigError(f"{loc} must be at least {minimum:g}, got {value!r}.")
    return value


def parse_rate(value: Any, loc: str) -> Rate | None:
    """Parse ``20/s``, ``1200/min``, ``100/h`` or a bare number (per second); null means unlimited."""
    if value is None or value == 0:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ConfigError(f"{loc} must be positive, got {value!r}.")
        return Rate(float(value), 1.0)
    match = _RATE.match(str(value))
    if not match or float(match.group("n")) <= 0:
        raise ConfigError(
            f"{loc}: {value!r} is not a rate. Write it as N/s, N/min or N/h (e.g. `20/s`, `600/min`), "
            "or leave it out for no limit."
        )
    unit = match.group("unit")
    return Rate(float(match.group("n")), float(_UNIT_SECONDS[unit.lower()]) if unit else 1.0)


_DURATION = re.compile(r"^\s*(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>s|m|h|d|w)\s*$", re.IGNORECASE)
_DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds in ``30s``, ``15m``, ``12h``, ``7d`` or ``2w``; ``ValueError`` for anything else."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"expected an age such as 30m, 12h, 7d or 2w, got {text!r}")
    return float(match.group("n")) * _DURATION_SECONDS[match.group("unit").lower()]


def _string_map(value: Any, loc: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{loc} must be a mapping of name: value, got {value!r}.")
    return {str(k): v for k, v in value.items()}


def _body(value: Any, loc: str) -> Template | None:
    if value is None:
        return None
    if isinstance(value, str):
        return compile_json_text(value, loc)
    if isinstance(value, (dict, list)):
        return compile_template(value, loc)
    raise ConfigError(f"{loc} must be a mapping (YAML) or a JSON string, got {value!r}.")


TOP_KEYS = (
    "input",
    "output",
    "journal",
    "auth",
    "request",
    "fields",
    "concurrency",
    "rate_limit",
    "retry",
    "timeout",
    "input_types",
    "key",
    "when",
    "skip_if_filled",
    "diagnostics",
    "max_error_rate",
    "errors_out",
    "escape_formulas",
)
AUTH_KEYS = ("url", "method", "body", "headers", "token_path", "token_type", "header")
REQUEST_KEYS = ("method", "url", "params", "headers", "body", "remove_nulls")
RETRY_KEYS = ("attempts", "backoff", "max_backoff", "statuses", "max_retry_after")


def load_config(
    path: str | Path, overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Read, expand and validate a config file; ``overrides`` replace top-level keys (CLI flags)."""
    path = Path(path)
    data, lines = _read_yaml(path)
    where = _Locator(str(path), lines)
    if data is None:
        raise ConfigError(f"{path}: the config file is empty. Start from configs/demo.yaml.")
    data = dict(_check_keys(data, TOP_KEYS, where, ()))
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
            where.overridden.add((key,))
    return config_from_dict(data, where, env=os.environ if env is None else env)


def config_from_dict(
    data: Mapping[str, Any], where: _Locator | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Validate a config given as a mapping (the library entry point uses this directly)."""
    where = where or _Locator("<config>", {})
    redactor = Redactor()
    try:
        return _validate(data, where, redactor, env)
    except ConfigError as exc:
        # A message may quote a value that came from ${VAR}; never show it.
        raise ConfigError(redactor.redact(str(exc))) from None


def _validate(data: Mapping[str, Any], where: _Locator, redactor: Redactor, env: Mapping[str, str] | None) -> Config:
    data = _expand_env(
        dict(_check_keys(dict(data), TOP_KEYS, where, ())), where, (), redactor, env if env is not None else os.environ
    )
    sites: list[tuple[str, Template]] = []

    # request
    if "request" not in data:
        raise ConfigError(
            f"{where.source}: `request` is missing. Add at least `request: {{url: https://api.example.com/v1/{{{{id}}}}}}`."
        )
    req = _check_keys(data["request"], REQUEST_KEYS, where, ("request",))
    if not req.get("url"):
        raise ConfigError(f"{where('request')}: `request.url` is missing; it is the endpoint each row calls.")
    url = compile_url(str(req["url"]), where("request", "url"))
    _check_url(
        url.render({c: "x" for c in url.columns}), where("request", "url"), allow_template_base=bool(url.columns)
    )
    sites.append((where("request", "url"), url))
    templates: dict[str, Template | None] = {}
    for key in ("params", "headers"):
        mapping = _string_map(req.get(key), where("request", key))
        templates[key] = compile_template(mapping, where("request", key)) if mapping else None
    body = _body(req.get("body"), where("request", "body"))
    for key, tmpl in (("params", templates["params"]), ("headers", templates["headers"]), ("body", body)):
        if tmpl is not None:
            sites.append((where("request", key), tmpl))
    remove_nulls = req.get("remove_nulls", False)
    if not isinstance(remove_nulls, bool):
        raise ConfigError(f"{where('request', 'remove_nulls')} must be true or false, got {remove_nulls!r}.")
    request = RequestConfig(
        method=_method(req.get("method"), where("request", "method"), "GET"),
        url=url,
        params=templates["params"],
        headers=templates["headers"],
        body=body,
        remove_nulls=remove_nulls,
    )

    auth = _auth(data.get("auth"), where, redactor)
    fields_ = compile_fields(data["fields"], where("fields")) if data.get("fields") is not None else None
    retry = _retry(data.get("retry"), where)
    input_types = _input_types(data.get("input_types"), where)

    return Config(
        request=request,
        auth=auth,
        input=Path(str(data["input"])) if data.get("input") else None,
        output=Path(str(data["output"])) if data.get("output") else None,
        fields=fields_,
        concurrency=_number(
            data.get("concurrency", 16), where("concurrency"), minimum=1, integer=True, what="a whole number"
        ),
        rate_limit=parse_rate(data.get("rate_limit"), where("rate_limit")),
        retry=retry,
        timeout=float(_number(data.get("timeout", 30), where("timeout"), minimum=0.001, what="a number of seconds")),
        input_types=input_types,
        key=_columns(data.get("key"), where("key")),
        journal=_journal_path(data.get("journal", True), where("journal")),
        use_journal=data.get("journal", True) is not False,
        when=_when(data.get("when"), where("when")),
        skip_if_filled=_columns(data.get("skip_if_filled"), where("skip_if_filled")),
        diagnostics=_bool(data.get("diagnostics", True), where("diagnostics")),
        max_error_rate=_error_rate(data.get("max_error_rate"), where("max_error_rate")),
        errors_out=_path(data.get("errors_out"), where("errors_out")),
        escape_formulas=_bool(data.get("escape_formulas", True), where("escape_formulas")),
        source=where.source,
        redactor=redactor,
        template_sites=tuple(sites),
    )


def _columns(value: Any, loc: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{loc} must be a column name or a list of column names, e.g. [email], got {value!r}.")
    return tuple(value)


def _path(value: Any, loc: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{loc} must be a file path such as out/failed.csv, got {value!r}.")
    return Path(value)


def _bool(value: Any, loc: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{loc} must be true or false, got {value!r}.")
    return value


def _error_rate(value: Any, loc: str) -> float | None:
    """A share of rows, 0.05, or a percentage, "5%"."""
    if value is None:
        return None
    text = str(value).strip()
    try:
        rate = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        rate = -1.0
    if isinstance(value, bool) or not 0 <= rate <= 1:
        raise ConfigError(f"{loc} must be a share of rows between 0 and 1 (0.05) or a percentage (5%), got {value!r}.")
    return rate


def _when(value: Any, loc: str) -> str | None:
    """Check the `when` predicate parses as polars SQL; its columns are checked against the input later."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{loc} must be a SQL condition in quotes, e.g. \"email IS NOT NULL AND country = 'US'\".")
    import polars as pl

    try:
        pl.sql_expr(value)
    except pl.exceptions.PolarsError as exc:
        detail = str(exc).strip().splitlines()[0]
        raise ConfigError(
            f"{loc}: {value!r} is not a SQL condition polars understands ({detail}). Write it as a WHERE "
            "clause without WHERE, e.g. \"email IS NOT NULL AND country = 'US'\"."
        ) from None
    return value


def _journal_path(value: Any, loc: str) -> Path | None:
    if value is True or value is None or value is False:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{loc} must be a file path, or false to keep no journal, got {value!r}.")
    return Path(value)


def _check_url(url: str, loc: str, allow_template_base: bool = False) -> None:
    from yarl import URL

    if allow_template_base and "://" not in url:
        return  # the base URL comes from a column; checked per row
    try:
        parsed = URL(url, encoded=True)
    except ValueError as exc:
        raise ConfigError(f"{loc}: {url!r} is not a valid URL ({exc}).") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(
            f"{loc}: {url!r} is not an http(s) URL. Write it in full, like https://api.example.com/v1/..."
        )


def _auth(value: Any, where: _Locator, redactor: Redactor) -> AuthConfig | None:
    if value is None:
        return None
    auth = _check_keys(value, AUTH_KEYS, where, ("auth",))
    if not auth.get("url"):
        raise ConfigError(f"{where('auth')}: `auth.url` is missing; it is the login endpoint that returns the token.")
    _check_url(str(auth["url"]), where("auth", "url"))
    if not auth.get("token_path"):
        raise ConfigError(
            f"{where('auth')}: `auth.token_path` is missing. Say where the token is in the login response, "
            "e.g. `token_path: access_token` or `token_path: data.session.jwt`."
        )
    token_path = str(auth["token_path"])
    body = auth.get("body")
    if isinstance(body, str):
        import orjson

        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ConfigError(
                f"{where('auth', 'body')} is a string but not valid JSON; write it as a YAML mapping."
            ) from None
    headers = {k: str(v) for k, v in _string_map(auth.get("headers"), where("auth", "headers")).items()}
    _register_secrets(body, redactor)
    _register_secrets(headers, redactor)
    token_type = auth.get("token_type", "Bearer")
    return AuthConfig(
        url=str(auth["url"]),
        method=_method(auth.get("method"), where("auth", "method"), "POST"),
        body=body,
        headers=headers,
        token_path=token_path,
        token_type="" if token_type is None else str(token_type),
        header=_str(auth, "header", where, ("auth",), "Authorization") or "Authorization",
        get_token=compile_path(token_path, where("auth", "token_path")),
    )


def _register_secrets(value: Any, redactor: Redactor, key: str = "") -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _register_secrets(v, redactor, str(k))
    elif isinstance(value, list):
        for v in value:
            _register_secrets(v, redactor, key)
    elif isinstance(value, str) and _SECRET_KEY.search(key):
        redactor.add(value)


def _retry(value: Any, where: _Locator) -> RetryConfig:
    if value is None:
        return RetryConfig()
    if isinstance(value, int) and not isinstance(value, bool):
        value = {"attempts": value}
    retry = _check_keys(value, RETRY_KEYS, where, ("retry",))
    out = RetryConfig()
    if "attempts" in retry:
        out = replace(
            out,
            attempts=_number(
                retry["attempts"], where("retry", "attempts"), minimum=1, integer=True, what="a whole number"
            ),
        )

    def seconds(key: str, default: float) -> float:
        if key not in retry:
            return default
        return float(_number(retry[key], where("retry", key), minimum=0, what="a number of seconds"))

    out = replace(
        out,
        backoff=seconds("backoff", out.backoff),
        max_backoff=seconds("max_backoff", out.max_backoff),
        max_retry_after=seconds("max_retry_after", out.max_retry_after),
    )
    if "statuses" in retry:
        statuses = retry["statuses"]
        if not isinstance(statuses, list) or not all(isinstance(s, int) and 100 <= s <= 599 for s in statuses):
            raise ConfigError(
                f"{where('retry', 'statuses')} must be a list of HTTP status codes, e.g. [429, 503], got {statuses!r}."
            )
        out = replace(out, statuses=frozenset(statuses))
    return out


def _input_types(value: Any, where: _Locator) -> dict[str, str]:
    types = _string_map(value, where("input_types"))
    for col, kind in types.items():
        if kind not in INPUT_TYPES:
            raise ConfigError(
                f"{where('input_types', col)}: {kind!r} is not a type. Use one of: {', '.join(INPUT_TYPES)}."
            )
    return types
