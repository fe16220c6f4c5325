"""YAML config -> validated, frozen ``Config``: every key declared once, here.

Each section of the file is a frozen model (``model.py`` says how a key is declared): its
fields are its keys, each with its type, default, description and the validator that parses
it. The same declaration gives the loader, the key lists (``TOP_KEYS``...), ``enrich schema``
and the docs' config reference. Everything a run needs is checked before any request: unknown
keys (with a "did you mean"), types, ``${VAR}`` lookups, templates and field paths (compiled
once). Errors name the file, the line and the key, and say what would fix them.

    >>> cfg = load_config("configs/demo.yaml")          # doctest: +SKIP
    >>> cfg.request.method, cfg.concurrency             # doctest: +SKIP
    ('GET', 16)

Adding a key: one field in its section (a type, a ``key("description")``, a default, and the
value's validator), then the code that uses it.

The secrets among the config's values (``redact.py`` says which) are registered with the
config's ``Redactor``, and ``repr(config)`` never shows them; the request is compiled
twice, as sent and as shown (each secret as ``***``). The ``auth:`` block's kinds are in
``auth_config.py``, the small validators both share in ``checks.py``, values written as text
(rates, sizes, durations) in ``units.py``, reading the YAML in ``yaml_file.py``, and the
``${VAR}``s and secrets in ``config_env.py``; their public names are importable from here too.
"""

from __future__ import annotations

import difflib
import os
import random
import re
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from .auth_config import (
    AUTH_KEYS,
    AUTH_KINDS,
    AUTH_TYPE_KEYS,
    AUTH_TYPES,
    SIGNING_ALGORITHMS,
    STATIC_AUTH_TYPES,
    AuthConfig,
    RefreshOn,
    auth_schema,
    client_basic,
    parse_auth,
)
from .checks import (
    _ENV,
    _HEADER_NAME,
    _VAR_NAME,
    ENV_TEXT,
    METHODS,
    _check_keys,
    _check_url,
    _Locator,
    _path,
    _string_map,
    json_pattern,
)
from .config_env import Env, listed_secrets, masked_request, register_fixed_secrets, strings
from .errors import ConfigError, child_of
from .extract import FieldPath, compile_fields
from .model import (
    CREDITS,
    FLAG,
    NEEDED,
    NOT_BLANK,
    Derived,
    Load,
    Parsed,
    Section,
    about,
    derived,
    http_method,
    number,
    validate,
)
from .redact import MASK, Redactor, masked_url, url_secrets
from .template import Template, compile_json_text, compile_template, compile_url, json_body
from .units import AUTO, RATE_TEXT, SIZE_TEXT, Rate, format_size, parse_duration, parse_rate, parse_size
from .yaml_file import read_yaml

# The auth config's public names and METHODS are re-exported: callers import every config name from here.
__all__ = [
    "ATTEMPTS_COLUMN",
    "AUTH_KEYS",
    "AUTH_KINDS",
    "AUTH_TYPES",
    "AUTH_TYPE_KEYS",
    "ERRORS_COLUMNS",
    "ERROR_COLUMN",
    "INPUT_TYPES",
    "ITEM_COLUMN",
    "LATENCY_COLUMN",
    "MAX_ATTEMPTS",
    "MAX_CONCURRENCY",
    "MAX_RESPONSE_BYTES",
    "METHODS",
    "RATE_KEYS",
    "REQUEST_COLUMNS",
    "REQUEST_KEYS",
    "RESPONSE_COLUMN",
    "RETRY_KEYS",
    "ROW_COLUMN",
    "SIGNING_ALGORITHMS",
    "STATIC_AUTH_TYPES",
    "STATUS_COLUMN",
    "STEP_COLUMN",
    "TLS_KEYS",
    "TOP_KEYS",
    "AuthConfig",
    "Config",
    "Rate",
    "RefreshOn",
    "RequestConfig",
    "RetryConfig",
    "SharedRate",
    "TLSConfig",
    "client_basic",
    "config_from_dict",
    "format_size",
    "input_location",
    "journal_location",
    "load_config",
    "parse_duration",
    "parse_rate",
    "parse_size",
]

INPUT_TYPES = ("str", "int", "float", "bool")
RESPONSE_COLUMN = "response"
MAX_RESPONSE_BYTES = 10 * 1024 * 1024
# More workers than this only hold memory and file descriptors: no API answers 10,000 calls at
# once from one process (shard the run instead).
MAX_CONCURRENCY = 10_000
MAX_ATTEMPTS = 100
STATUS_COLUMN = "_http_status"
ERROR_COLUMN = "_error"
ATTEMPTS_COLUMN = "_attempts"  # diagnostics: HTTP attempts the row's call took
LATENCY_COLUMN = "_latency_ms"  # diagnostics: the last attempt's time to the full response
ROW_COLUMN = "_row"  # the input row number, in shard outputs (so `enrich merge` can restore order)
ITEM_COLUMN = "_item"  # with an exploding field: the item's number in its row's list, from 0
# The errors file (`errors_out`): the row number, the columns the request reads, then these.
REQUEST_COLUMNS = ("_request_method", "_request_url", "_request_headers", "_request_body")
ERRORS_COLUMNS = (ROW_COLUMN, *REQUEST_COLUMNS, STATUS_COLUMN, ERROR_COLUMN, ATTEMPTS_COLUMN)
STEP_COLUMN = "_step"  # with `steps`, in the errors file: the step the row failed by


# --- the kinds of value a key holds: each a validator and the schema of what may be written ---------

# A share of rows as text: 0.05, or a percentage up to 100%.
_SHARE_TEXT = rf"^\s*(0(\.\d*)?|1(\.0*)?|\.\d+|(100(\.0*)?|\d{{1,2}}(\.\d*)?)\s*%)\s*$|{ENV_TEXT}"
_SCALAR = ["string", "number", "boolean", "null"]


FILE = Parsed(_path, {"type": "string", "pattern": NOT_BLANK})  # a file path that must not be blank
TABLE = Parsed(lambda value, where: Path(str(value)) if value else None, {"type": "string", "pattern": NOT_BLANK})


def _columns(value: Any, loc: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{loc} must be a column name or a list of column names, e.g. [email], got {value!r}.")
    return tuple(value)


COLUMNS = Parsed(
    _columns,
    {"type": ["string", "array"], "minLength": 1, "minItems": 1, "items": {"type": "string", "minLength": 1}},
)


def _header_name(value: Any, loc: str) -> str:
    if not isinstance(value, str) or not _HEADER_NAME.match(value):
        raise ConfigError(f"{loc} must be an HTTP header name such as Idempotency-Key, got {value!r}.")
    return value


def _statuses(example: str) -> Parsed:
    def parse(value: Any, where: str) -> frozenset[int]:
        if not isinstance(value, list) or not all(isinstance(s, int) and 100 <= s <= 599 for s in value):
            raise ConfigError(f"{where} must be a list of HTTP status codes, e.g. {example}, got {value!r}.")
        return frozenset(value)

    return Parsed(parse, {"type": "array", "items": {"type": "integer", "minimum": 100, "maximum": 599}})


# --- sections -------------------------------------------------------------------------------------


class RetryConfig(Section):
    """When and how long to retry a call: a mapping, or just the number of attempts (`retry: 5`)."""

    PATH = ("retry",)

    attempts: Annotated[
        int, number(minimum=1, maximum=MAX_ATTEMPTS, integer=True), about("Tries per row, the first included.")
    ] = 5
    backoff: Annotated[
        float, number(minimum=0), about("The first backoff in seconds; it doubles each try, with full jitter.")
    ] = 0.5
    max_backoff: Annotated[float, number(minimum=0), about("The cap on one backoff, in seconds.")] = 30.0
    statuses: Annotated[
        frozenset[int],
        _statuses("[429, 503]"),
        about("HTTP statuses worth another try.", default=[429, 500, 502, 503, 504]),
    ] = frozenset({429, 500, 502, 503, 504})
    max_retry_after: Annotated[
        float,
        number(minimum=0),
        about("The longest Retry-After waited out, in seconds; a longer one stops the run (exit 3, resumable)."),
    ] = 300.0
    non_idempotent: Annotated[
        bool,
        FLAG,
        about("Retry POST and PATCH after a 5xx, a timeout or a dropped connection too (they may run twice)."),
    ] = False

    @classmethod
    def prepare(cls, data: Any, load: Load) -> Any:
        if isinstance(data, int) and not isinstance(data, bool):
            data = {"attempts": data}
        return super().prepare(data, load)

    def backoff_for(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based): exponential, full jitter."""
        return random.uniform(0, min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))


def _pem_file(value: Any, where: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where} must be the path of a PEM file, got {value!r}.")
    if not Path(value).is_file():
        raise ConfigError(
            f"{where}: {value} is not a file. Check the path (relative paths start from the folder you run enrich from)."
        )
    return Path(value)


PEM_FILE = Parsed(_pem_file, {"type": "string", "pattern": NOT_BLANK})


class TLSConfig(Section):
    """How the API's TLS certificate is checked, and a client certificate for mutual TLS."""

    PATH = ("tls",)

    verify: Annotated[bool, FLAG, about("Check the API's certificate (false is unsafe, and warned about).")] = True
    ca_bundle: Annotated[
        Path | None, PEM_FILE, about("A PEM file of the CA certificates to trust instead of the system's.")
    ] = None
    client_cert: Annotated[
        Path | None, PEM_FILE, about("A PEM client certificate (it may hold the key too), for mutual TLS.")
    ] = None
    client_key: Annotated[Path | None, PEM_FILE, about("The client certificate's private key (PEM, unencrypted).")] = (
        None
    )

    def finish(self, load: Load) -> TLSConfig:
        if self.client_key is not None and self.client_cert is None:
            raise ConfigError(
                f"{load.where('tls', 'client_key')} needs tls.client_cert, the certificate that goes with the key."
            )
        self.context(lambda key: load.where("tls", key))  # reads the files: one that is not PEM is found now
        return self

    @property
    def is_default(self) -> bool:
        return self == TLSConfig()

    def context(self, where: Callable[[str], str] = "tls.{}".format) -> ssl.SSLContext | bool:
        """The SSL context for the session's connector (``True``: aiohttp's default, verified).
        Raises ``ConfigError`` naming the key (``where(key)``) when a file is not what it should be."""
        if self.is_default:
            return True
        try:
            ctx = ssl.create_default_context(cafile=self.ca_bundle)
        except OSError as exc:
            raise ConfigError(
                f"{where('ca_bundle')}: {self.ca_bundle} is not a PEM file of CA certificates ({_ssl_reason(exc)})."
            ) from None
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.client_cert is not None:
            asked: list[bool] = []

            def no_password() -> bytes:  # never let OpenSSL prompt on the terminal of a scheduled job
                asked.append(True)
                return b""

            try:
                ctx.load_cert_chain(self.client_cert, self.client_key, password=no_password)
            except OSError as exc:
                if asked:
                    raise ConfigError(
                        f"{where('client_key' if self.client_key else 'client_cert')}: "
                        f"{self.client_key or self.client_cert} holds an encrypted key; give enrich the key unencrypted "
                        "(`openssl pkey -in key.pem -out plain.pem`) and keep the file private."
                    ) from None
                key = f"the key in {self.client_key}" if self.client_key else "a key in the same file"
                raise ConfigError(
                    f"{where('client_cert')}: {self.client_cert} and {key} are not a PEM certificate and its "
                    f"private key ({_ssl_reason(exc)})."
                ) from None
        return ctx


def _ssl_reason(exc: OSError) -> str:
    return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", exc.strerror or str(exc)) or type(exc).__name__


def _redis_url(value: Any, where: str, load: Load) -> str | None:
    if value is None:
        return None
    from yarl import URL

    url = URL(str(value))
    if url.scheme not in ("redis", "rediss", "unix") or not (url.host or url.path):
        raise ConfigError(
            f"{where}: {load.redactor.redact(str(value))!r} is not a Redis URL. "
            "Write it as redis://host:6379/0 (rediss:// for TLS)."
        )
    load.redactor.add(url.password)
    return str(value)


def _limit_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where} must be a name such as acme-api, got {value!r}.")
    return value


_RATE_TEXT: dict[str, Any] = {
    "type": ["string", "number"],
    "pattern": f"{json_pattern(RATE_TEXT)}|^{AUTO}$|{ENV_TEXT}",
}
RATE = Parsed(parse_rate, _RATE_TEXT)


class SharedRate(Section):
    """``rate_limit`` as a mapping: ``{rate: 1000/s, burst: 50, shared: redis://..., key: acme-api}``."""

    PATH = ("rate_limit",)

    rate: Annotated[Rate | None, RATE, about("Requests started per second, minute or hour: N/s, N/min, N/h.")] = None
    burst: Annotated[int, number(minimum=0, integer=True), about("Starts allowed ahead of the pace (default 0).")] = 0
    shared: Annotated[
        str | None,
        Parsed(_redis_url, {"type": "string", "pattern": "^(redis|rediss|unix)://"}, load=True),
        about("A Redis URL (redis://host:6379/0): every process using the same Redis and key shares the limit."),
    ] = None
    key: Annotated[
        str,
        Parsed(_limit_name, {"type": "string", "minLength": 1}),
        about("The limit's name in Redis (default enrich): one per API."),
    ] = "enrich"

    def finish(self, load: Load) -> SharedRate:
        if self.rate is None:
            raise ConfigError(
                f"{load.where('rate_limit', 'rate')} is missing: say how many calls, e.g. `rate: 1000/s`."
            )
        return self

    def loaded(self) -> Rate:
        assert self.rate is not None
        return Rate(self.rate.count, self.rate.period, self.burst, self.shared, self.key)


def _rate_limit(value: Any, where: str, load: Load) -> Rate | None:
    if isinstance(value, Mapping):
        return validate(SharedRate, value, load).loaded()
    return parse_rate(value, where)


def _rate_limit_schema() -> dict[str, Any]:
    text = {**_RATE_TEXT, "type": ["string", "number", "null"], "minimum": 0, "examples": ["20/s", "600/min"]}
    shared = {k: v for k, v in SharedRate.model_json_schema().items() if k != "description"}
    return {"anyOf": [text, {**shared, "required": ["rate"]}]}


_TEMPLATE_KEYS = ("url", "params", "headers", "body", "idempotency_key")


def _url(value: Any, where: str, load: Load) -> Template:
    return compile_url(str(value), where, load.literal)


def _string_template(value: Any, where: str, load: Load) -> Template | None:
    mapping = _string_map(value, where)
    return compile_template(mapping, where, typed=False, literal=load.literal) if mapping else None


def _body(value: Any, where: str, load: Load) -> Template | None:
    if value is None:
        return None
    if isinstance(value, str):
        return compile_json_text(value, where, load.literal)
    if isinstance(value, (dict, list)):
        return compile_template(value, where, literal=load.literal)
    raise ConfigError(f"{where} must be a mapping (YAML) or a JSON string, got {value!r}.")


def _idempotency_key(value: Any, where: str, load: Load) -> Template | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            f'{where} must be a template that gives each row its own key, e.g. "{{{{id}}}}" or "order-{{{{order_id}}}}", '
            f"got {value!r}."
        )
    return compile_template(value, where, typed=False, literal=load.literal)


class _Twin(dict[str, Any]):
    """A request's templates already prepared (its keys checked, its ${VAR}s looked up)."""


class RequestConfig(Section):
    """How each row becomes a request. Strings may hold {{column}} placeholders: the row's value."""

    PATH = ("request",)

    method: Annotated[str, http_method("GET"), about("The HTTP method of each call (any case).")] = "GET"
    url: Annotated[
        Template,
        Parsed(
            _url,
            {"type": "string", "minLength": 1},
            load=True,
            missing="`request.url` is missing; it is the endpoint each row calls.",
            blank_is_missing=True,
        ),
        about(
            "The endpoint each row calls; placed values are percent-encoded. A placeholder at the very start "
            "supplies the whole URL from a column.",
            examples=["https://api.example.com/v1/people/{{email}}"],
        ),
    ] = NEEDED
    params: Annotated[
        Template | None,
        Parsed(
            _string_template,
            {"type": "object", "additionalProperties": {"type": [*_SCALAR, "array"], "items": {"type": _SCALAR}}},
            load=True,
        ),
        about('The query string, e.g. {domain: "{{domain}}"}; null values are left out, a list repeats its key.'),
    ] = None
    headers: Annotated[
        Template | None,
        Parsed(_string_template, {"type": "object", "additionalProperties": {"type": _SCALAR}}, load=True),
        about("Extra headers for each call, e.g. {Accept: application/json}; null values are left out."),
    ] = None
    body: Annotated[
        Template | None,
        Parsed(_body, {"type": ["object", "array", "string"]}, load=True),
        about('The JSON body: a YAML mapping or list, or JSON text. "{{column}}" alone keeps the cell\'s type.'),
    ] = None
    remove_nulls: Annotated[bool, FLAG, about("Drop body keys whose value is null, at every depth.")] = False
    follow_redirects: Annotated[
        bool,
        FLAG,
        about(
            "Follow redirects within the API's origin (never to another host, port or scheme); false ends the "
            "row at a 3xx."
        ),
    ] = True
    idempotency_key: Annotated[
        Template | None,
        Parsed(_idempotency_key, {"type": "string", "pattern": NOT_BLANK}, load=True),
        about(
            'A template giving each row its own key, e.g. "{{id}}", sent as the idempotency_header; with it, '
            "POST and PATCH are retried like GET.",
            examples=["{{id}}", "order-{{order_id}}"],
        ),
    ] = None
    idempotency_header: Annotated[
        str,
        Parsed(_header_name, {"type": "string", "pattern": json_pattern(_HEADER_NAME)}),
        about("The header the idempotency key goes in."),
    ] = "Idempotency-Key"
    # The same request with each secret it holds replaced by `***` (redact.py says which): what a
    # dry run, preview and the errors file show. None: the request holds no secret.
    shown: Derived[RequestConfig | None] = derived(default=None)
    # What the journal's fingerprint is made of: the shown request, with the `${VAR}`s of the URL's
    # origin (`${API_BASE}/v1/...`, `https://${HOST}/...`) masked too, so a rotated key or an API
    # that moved keeps the journal; every other value is the request's own. None: the request itself.
    fingerprinted: Derived[RequestConfig | None] = derived(default=None)
    url_text: Derived[str] = derived(default="")  # the URL as written, ${VAR}s put in (secrets as ***), for `validate`

    @property
    def for_display(self) -> RequestConfig:
        """The request to render for showing it: secrets masked where they were put."""
        return self.shown or self

    def template_sites(self, where: _Locator) -> list[tuple[str, Template]]:
        """Each template with where it came from, for errors found once the input is known."""
        sites = [(where("request", k), getattr(self, k)) for k in ("url", "params", "headers", "body")]
        sites.append((where("request", "idempotency_key"), self.idempotency_key))
        return [(w, t) for w, t in sites if t is not None]

    @classmethod
    def prepare(cls, data: Any, load: Load) -> Any:
        """The request as sent: its settings with their ${VAR}s put in; its templates get them as values
        when they are compiled (a value holding `{{id}}` is sent as it is, never rendered)."""
        if isinstance(data, _Twin):
            return dict(data)
        raw = super().prepare(data, load)
        if not raw.get("url"):  # before anything else: every other key is about the call to this URL
            raise ConfigError(f"{load.where('request')}: {dict(cls.needed())['url'].missing}")
        settings = load.vars.expand({k: v for k, v in raw.items() if k not in _TEMPLATE_KEYS}, ("request",))
        templates = {k: raw[k] for k in _TEMPLATE_KEYS if raw.get(k) is not None}
        # Every variable looked up once here (an unset one named with its place), and the secrets
        # among them registered.
        load.vars.expand(templates, ("request",))
        for name in ("params", "headers"):
            _string_map(templates.get(name), load.where("request", name))
        sent = cls._parsed(templates, load.vars.literal, load)
        register_fixed_secrets(sent, load.redactor, load.vars.literal)
        load.literal = load.vars.literal
        load.pending = (templates, settings)  # for finish: the twins
        return {**sent, **settings}

    @classmethod
    def _parsed(cls, templates: Mapping[str, Any], literal: Callable[[str], str], load: Load) -> dict[str, Any]:
        """The templates with a JSON-text body read as its structure."""
        body = templates.get("body")
        if not isinstance(body, str):
            return dict(templates)
        return {**templates, "body": json_body(body, load.where("request", "body"), literal)}

    def finish(self, load: Load) -> RequestConfig:
        if load.pending is None:
            return self  # a twin
        (templates, settings), load.pending = load.pending, None
        _check_url(
            self.url.render({c: "x" for c in self.url.columns}),
            load.where("request", "url"),
            allow_template_base=bool(self.url.columns),
        )
        vars_ = load.vars
        sent_templates = self._parsed(templates, vars_.literal, load)
        shown = masked_request(self._parsed(templates, vars_.shown, load))
        load.literal = vars_.shown
        try:
            display = validate(RequestConfig, _Twin({**shown, **settings}), load)
            has_secret = shown != sent_templates or any(
                vars_.shown(t) != vars_.literal(t) for t in strings(sent_templates)
            )
            origin = _ORIGIN.match(str(shown["url"]))
            fingerprinted = display
            if origin is not None and _ENV.search(origin.group()):
                url = _ENV.sub(MASK, origin.group()) + str(shown["url"])[origin.end() :]
                fingerprinted = validate(RequestConfig, _Twin({**shown, "url": url, **settings}), load)
        finally:
            load.literal = str
        return self.derive(
            shown=display if has_secret else None,
            fingerprinted=fingerprinted if has_secret or fingerprinted is not display else None,
            url_text=vars_.shown(str(shown["url"])),
        )


# The origin part of a URL template: a variable it starts with, or the scheme and host.
_ORIGIN = re.compile(r"^(?:\$\{[^}]*\}|[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*)")


def _journal(value: Any, where: str, load: Load) -> Path | str | None:
    if value is True or value is None or value is False:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where} must be a file path or a redis:// URL, or false to keep no journal, got {value!r}.")
    return journal_location(value, where, load.redactor)


def journal_location(value: str, loc: str, redactor: Redactor) -> Path | str:
    """A journal file path, or a ``redis://host:6379/0?prefix=NAME&ttl=30d`` URL (checked, its
    password registered with ``redactor``)."""
    if not value.startswith(("redis://", "rediss://")):
        return Path(value)
    from yarl import URL

    try:
        url = URL(value)
        host = url.host
    except ValueError:
        host = None
    if not host:
        raise ConfigError(
            f"{loc}: {redactor.redact(value)!r} is not a Redis URL. Write it as redis://host:6379/0 "
            "(rediss:// for TLS), optionally with ?prefix=NAME&ttl=30d."
        )
    redactor.add(url.password)
    ttl = url.query.get("ttl")
    if ttl is not None:
        try:
            seconds = parse_duration(ttl)
        except ValueError as exc:
            raise ConfigError(f"{loc}: ttl={ttl!r} in the journal URL: {exc}.") from None
        if seconds < 1:
            raise ConfigError(
                f"{loc}: ttl={ttl!r} in the journal URL is under a second, which Redis cannot keep. "
                "Give whole seconds or more (ttl=30d), or leave ttl out to keep entries for good."
            )
    return value


def _input_types(value: Any, where: str) -> dict[str, str]:
    types = _string_map(value, where)
    for col, kind in types.items():
        if kind not in INPUT_TYPES:
            raise ConfigError(f"{child_of(where, col)}: {kind!r} is not a type. Use one of: {', '.join(INPUT_TYPES)}.")
    return types


def _sheet(value: Any, where: str) -> str | None:
    """A sheet's name, or its position from 1 (kept as text: a sheet may be named "2024")."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise ConfigError(f"{where} must be a sheet's name or its position from 1 (e.g. Leads, or 2), got {value!r}.")
    if isinstance(value, int) and value < 1:
        raise ConfigError(f"{where}: sheets are counted from 1 (the first is 1), got {value}.")
    return str(value)


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


def _input(value: Any, where: str, load: Load) -> Path | str | None:
    return input_location(str(value), where, load.redactor) if value else None


def input_location(value: str, loc: str, redactor: Redactor) -> Path | str:
    """An input table's path, or the ``http(s)://`` URL to fetch it from (checked, its secrets
    registered with ``redactor``: ``redact.url_secrets``)."""
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", value)
    if scheme is None:
        return Path(value)
    for secret in url_secrets(value):
        redactor.add(secret)
    if scheme.group(1).lower() not in ("http", "https"):
        raise ConfigError(
            f"{loc}: enrich cannot read a table from a {scheme.group(1)}:// URL. Give a file path, or an http:// or "
            "https:// URL (for a file in cloud storage, a pre-signed https:// link)."
        )
    from yarl import URL

    try:
        host = URL(value).host
    except ValueError:
        host = None
    if not host:
        raise ConfigError(
            f"{loc}: {masked_url(value)!r} is not a URL enrich can fetch. Write it in full, like "
            "https://example.com/leads.csv."
        )
    return value


_FIELDS_SCHEMA = {
    "type": ["string", "array", "object", "null"],
    "pattern": r"[^\s,]",
    "minItems": 1,
    "items": {"type": "string", "pattern": NOT_BLANK},
    "minProperties": 1,
    "additionalProperties": {
        "anyOf": [
            {"type": "string", "pattern": NOT_BLANK},
            {
                "type": "object",
                "properties": {
                    "path": {"type": "string", "pattern": NOT_BLANK, "description": "The field's path."},
                    "explode": {
                        "type": "boolean",
                        "default": False,
                        "description": "One output row per item of the list the path gives; _item numbers them.",
                    },
                },
                "required": ["path"],
                "additionalProperties": False,
            },
        ]
    },
}


class Config(Section):
    """A whole, validated run configuration: the file's top-level keys, and what the loader derives."""

    # str: an http(s):// URL, fetched once at the start of each command (remote.py)
    input: Annotated[
        Path | str | None,
        Parsed(_input, TABLE.schema, load=True),
        about(
            "The input table: .csv, .tsv, .parquet, .ndjson, .jsonl or an Excel workbook, or an http(s):// URL of "
            "one (--input overrides)."
        ),
    ] = None
    sheet: Annotated[
        str | None,
        Parsed(_sheet, {"type": ["string", "integer"], "pattern": NOT_BLANK, "minimum": 1}),
        about(
            "The sheet of an Excel input: its name, or its position from 1 (default: the first; --sheet overrides).",
            examples=["Leads", 2],
        ),
    ] = None
    output: Annotated[
        Path | None, TABLE, about("The output table: .csv, .parquet, .ndjson or .xlsx (--output overrides).")
    ] = None
    # None: beside the output, `<output>.journal`; str: a redis:// URL
    journal: Annotated[
        Path | str | None,
        Parsed(_journal, {"type": ["string", "boolean"], "pattern": NOT_BLANK}, load=True),
        about("Where the journal of finished calls is kept (default <output>.journal); false keeps none."),
    ] = None
    auth: Annotated[
        AuthConfig | None,
        Parsed(parse_auth, auth_schema, load=True),
        about(
            "How each call is authorised: `type` picks the kind (default `login`: log in for a JWT at the start, "
            "and again before it expires or when it is rejected). Leave it out for an API without auth."
        ),
    ] = None
    # Required, unless `steps` holds the requests (a config without it: `prepare` says it is missing).
    request: Annotated[
        RequestConfig,
        about(
            "How each row becomes a request. Strings may hold {{column}} placeholders: the row's value. Required, "
            "unless `steps` holds the calls."
        ),
    ] = NEEDED
    fields: Annotated[
        tuple[FieldPath, ...] | None,
        Parsed(lambda value, where: compile_fields(value, where) if value is not None else None, _FIELDS_SCHEMA),
        about(
            'What to keep from each JSON response: "a.b, c.d", a list of paths, or a mapping column: path. Leave '
            "it out (or empty) to keep the whole response in one column, `response`. In the mapping, "
            "`column: {path: $.contacts[*], explode: true}` gives one output row per item of the list.",
            examples=[
                "person.name, company.domain",
                {"title": "person.employment.title"},
                {"contact": {"path": "$.contacts[*].email", "explode": True}},
            ],
        ),
    ] = None
    concurrency: Annotated[
        int, number(minimum=1, maximum=MAX_CONCURRENCY, integer=True), about("Requests in flight.")
    ] = 16
    rate_limit: Annotated[
        Rate | None,
        Parsed(_rate_limit, _rate_limit_schema, load=True),
        about(
            "Requests started per second, minute or hour, across all workers: N/s, N/min, N/h, or a number (per "
            "second); or a mapping with `shared` for one limit across processes. Whatever it says, calls start no "
            "faster than the API's rate-limit headers allow. Default (or `auto`): that alone."
        ),
    ] = None
    retry: Annotated[
        RetryConfig,
        Field(default_factory=RetryConfig),
        about(
            "When and how long to retry a call: a mapping, or just the number of attempts (`retry: 5`).",
            type=["integer", "object"],
            minimum=1,
        ),
    ]
    timeout: Annotated[float, number(minimum=0.001), about("Seconds per attempt.")] = 30.0
    input_types: Annotated[
        Mapping[str, str],
        Parsed(_input_types, {"type": "object", "additionalProperties": {"enum": list(INPUT_TYPES)}}),
        about("Read these columns as str, int, float or bool instead of inferring, e.g. {zip: str}."),
    ] = Field(default_factory=dict)
    # Columns that identify a row, for --shard (default: the rendered request).
    key: Annotated[
        tuple[str, ...], COLUMNS, about("Columns that identify a row, for --shard (default: the rendered request).")
    ] = ()
    when: Annotated[
        str | None,
        Parsed(_when, {"type": "string", "pattern": NOT_BLANK}),
        about("A polars SQL predicate; rows that do not match get no call, e.g. email IS NOT NULL AND country = 'US'."),
    ] = None
    skip_if_filled: Annotated[
        tuple[str, ...],
        COLUMNS,
        about("Rows whose listed columns all hold values get no call (already enriched)."),
    ] = ()
    diagnostics: Annotated[bool, FLAG, about("Add the columns _attempts and _latency_ms to the output.")] = True
    max_error_rate: Annotated[
        float | None,
        Parsed(_error_rate, {"type": ["number", "string"], "minimum": 0, "maximum": 1, "pattern": _SHARE_TEXT}),
        about(
            'Exit with code 1 when a larger share of rows failed: 0.05, or a percentage, "5%".',
            examples=[0.05, "5%"],
        ),
    ] = None
    max_cost: Annotated[
        float | None,
        CREDITS,
        about(
            "With `steps`: stop the run (exit 3, resumable) before its answered calls would cost more credits "
            "than this, counting each step's `cost` (--max-cost overrides).",
            examples=[500],
        ),
    ] = None
    errors_out: Annotated[
        Path | None, FILE, about("Write the failed rows here, with their (redacted) request and error.")
    ] = None
    escape_formulas: Annotated[
        bool,
        FLAG,
        about(
            "In CSV output, put ' before API values starting with = + - @, tab or CR (a guard against CSV injection)."
        ),
    ] = True
    tls: Annotated[TLSConfig, Field(default_factory=TLSConfig), about(TLSConfig.__doc__ or "")]
    max_response_bytes: Annotated[
        int,
        Parsed(
            parse_size,
            {"type": ["integer", "string"], "minimum": 1, "pattern": f"{json_pattern(SIZE_TEXT)}|{ENV_TEXT}"},
        ),
        about(
            "The largest response read; a larger one is cut off and fails its row: 10MB, 512KB, or a number of bytes.",
            default="10MB",
            examples=["10MB", "512KB"],
        ),
    ] = MAX_RESPONSE_BYTES
    secrets: Annotated[
        frozenset[str],
        Parsed(
            lambda value, where: value,  # checked before the ${VAR}s are put in: _secrets
            {
                "type": ["array", "string"],
                "items": {"type": "string", "pattern": json_pattern(_VAR_NAME)},
                "pattern": json_pattern(_VAR_NAME),
            },
        ),
        about(
            "Environment variables (used as ${VAR}) whose values are secrets besides the credentials enrich "
            "knows: masked in everything enrich prints.",
            examples=[["API_USER", "TENANT"]],
        ),
    ] = frozenset()
    auths: Annotated[
        Mapping[str, Any],
        Parsed(lambda value, where: value, lambda: steps_schema()["auths"]),
        about(
            "Named auth blocks (each an `auth:` mapping), for `steps`: a step's `auth:` names one. Each is "
            "declared once and used by the steps that name it."
        ),
    ] = Field(default_factory=dict)
    steps: Annotated[
        tuple[Any, ...],
        Parsed(lambda value, where: value, lambda: steps_schema()["steps"]),
        about(
            "Several calls per row, in order: each step takes the call keys (auth, request, fields, when, ...) "
            "plus `name` and `cost`; its templates may use the fields of the steps before it, and a field an "
            "earlier step already gave is only filled where it is still empty (a waterfall)."
        ),
    ] = ()
    # A step of `steps` (each a one-step Config): its name and the credits one answered call costs.
    name: Derived[str] = derived(default="")
    cost: Derived[float] = derived(default=0.0)
    # Which auth block a step uses: steps with the same one share its token (one login, one refresh).
    auth_key: Derived[str] = derived(default="auth")
    when_at: Derived[str] = derived(default="")  # where `when` is, for messages found once the input is known
    use_journal: Derived[bool] = derived(default=True)
    warnings: Derived[tuple[str, ...]] = derived(default=())  # found at load time; the CLI shows them
    source: Derived[str] = derived(default="<config>")
    redactor: Derived[Redactor] = derived(default_factory=Redactor)
    # Where each template came from, for errors found once the input is known.
    template_sites: Derived[tuple[tuple[str, Template], ...]] = derived(default=())

    @classmethod
    def prepare(cls, data: Any, load: Load) -> Any:
        data = _check_keys(data, cls.key_names(), load.where, ())
        load.raw = data
        if "auths" in data:
            raise ConfigError(
                f"{load.where('auths')}: named auths are for `steps`. Give the one call's auth as `auth:`, or "
                "write the calls as `steps:` whose `auth:` names one of `auths`."
            )
        if "request" not in data:
            raise ConfigError(
                f"{load.where.source}: `request` is missing. Add at least "
                "`request: {url: https://api.example.com/v1/{{id}}}`."
            )
        secrets = listed_secrets(data, load.where)
        _check_keys(data["request"], RequestConfig.key_names(), load.where, ("request",))  # before any ${VAR}
        load.vars = Env(load.env, load.where, secrets, load.redactor)
        # Everything but the request's templates gets its ${VAR}s now (the request: RequestConfig.prepare).
        load.data = load.vars.expand({k: v for k, v in data.items() if k != "request"})
        return {**load.data, "request": data["request"], "secrets": secrets}

    def finish(self, load: Load) -> Config:
        data = load.data
        warnings = _plain_http_warnings(data, self.request.url, load.where)
        refresh_on = self.auth.refresh_on if self.auth is not None else None
        if refresh_on is not None and refresh_on.statuses and refresh_on.body is None:
            listed = ", ".join(map(str, sorted(refresh_on.statuses)))
            warnings.append(
                f"{load.where('auth', 'refresh_on')} lists HTTP {listed} with no `body` pattern: such an answer is "
                "taken for a rejected token until the calls sent after it get through, so a record the API refuses "
                "waits for them (and may cost a login). Add `body:` with what the API says for an expired token "
                '(e.g. body: "token expired") to tell the two apart at once.'
            )
        if not self.tls.verify:
            warnings.append(
                f"{load.where('tls', 'verify')} is false: the API's certificate is not checked, so anyone on the "
                "network path can read and change the calls, and take the token and keys they carry."
            )
        return self.derive(
            use_journal=data.get("journal", True) is not False,
            warnings=tuple(warnings),
            source=load.where.source,
            redactor=load.redactor,
            template_sites=tuple(self.request.template_sites(load.where)),
            when_at=load.where("when"),
        )

    def __repr__(self) -> str:
        parts = ", ".join(f"{name}={getattr(self, name)!r}" for name, f in type(self).model_fields.items() if f.repr)
        return self.redactor.redact(f"Config({parts})")

    __str__ = __repr__

    @property
    def field_columns(self) -> tuple[str, ...]:
        """The columns of extracted values, in order (with `steps`: every step's, each once)."""
        if self.steps:
            return tuple(dict.fromkeys(c for step in self.steps for c in step.field_columns))
        return tuple(f.name for f in self.fields) if self.fields else (RESPONSE_COLUMN,)

    @property
    def explodes(self) -> tuple[str, ...]:
        """The field columns that explode (one output row per item), with `steps` every step's."""
        if self.steps:
            return tuple(c for step in self.steps for c in step.explodes)
        return tuple(f.name for f in self.fields or () if f.explode)

    @property
    def output_columns(self) -> tuple[str, ...]:
        """The columns the run adds to the table, in order."""
        if self.steps:
            from .step_config import step_output_columns

            return step_output_columns(self)
        diagnostics = (ATTEMPTS_COLUMN, LATENCY_COLUMN) if self.diagnostics else ()
        item = (ITEM_COLUMN,) if self.explodes else ()
        return (*self.field_columns, *item, STATUS_COLUMN, ERROR_COLUMN, *diagnostics)

    @property
    def columns_used(self) -> frozenset[str]:
        """Every column some template reads (with `steps`, earlier steps' fields among them)."""
        if self.steps:
            return frozenset().union(*(step.columns_used for step in self.steps))
        return frozenset().union(*(t.columns for _, t in self.template_sites))

    @property
    def columns_read(self) -> frozenset[str]:
        """Every column the run reads a value of: templates, `when`, `skip_if_filled`, `key`."""
        if self.steps:
            return frozenset(self.key).union(*(step.columns_read for step in self.steps))
        when = self.when_expr().meta.root_names() if self.when is not None else ()
        return self.columns_used | frozenset(when) | frozenset(self.skip_if_filled) | frozenset(self.key)

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

    def scan_input(self, path: Path) -> Any:
        """The input table at ``path`` (a ``polars.LazyFrame``), read as the config says: its
        `input_types`, and the `sheet` of a workbook."""
        from .tables import scan_table

        return scan_table(path, self.input_types, self.sheet)

    def check_columns(self, columns: list[str], table: str) -> None:
        """Fail if a template reads a column the table lacks, or a new column would overwrite one."""
        if self.steps:
            from .step_config import check_step_columns

            return check_step_columns(self, columns, table)
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
        check_items(self, self.explodes, present, table)
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
        self.check_columns(list(schema), table)
        if not self.steps:
            self._check_types(schema, table)
            return
        given: set[str] = set()  # the columns earlier steps fill: their types are the API's, known later
        for step in self.steps:
            reads = set(step.when_expr().meta.root_names()) if step.when is not None else set()
            if not (reads | set(step.skip_if_filled)) & given:
                step._check_types(schema, table)
            given.update(step.field_columns)

    def _check_types(self, schema: Mapping[str, Any], table: str) -> None:
        import polars as pl

        where = self.when_at if self.name else self.source  # a step: where its `when` is
        for col in self.skip_if_filled:
            if schema[col].is_nested():
                raise ConfigError(
                    f"{self.source}: `skip_if_filled` names {col!r}, a {schema[col]} column of {table}; "
                    "it can name only columns that hold single values (text, numbers, dates). Leave it out of "
                    "`skip_if_filled`, or give the output column another name in `fields`."
                )
        if self.when is None:
            return
        probe = pl.DataFrame([pl.Series(name, [None, None], dtype=dtype) for name, dtype in schema.items()])
        try:
            result = probe.select(pl.sql_expr(self.when).alias("when"))
        except pl.exceptions.PolarsError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ConfigError(
                f"{where}: `when: {self.when}` cannot be evaluated on {table}: {first}. "
                "Compare columns with values of their type (text in single quotes)."
            ) from None
        if result.height != probe.height or result.schema["when"] != pl.Boolean:
            kind = "one value for the whole table" if result.height != probe.height else result.schema["when"]
            raise ConfigError(
                f"{where}: `when: {self.when}` gives {kind}, not true or false for each row. "
                'Write a condition, e.g. "email IS NOT NULL" or "employees > 100".'
            )


def check_items(config: Config, explodes: tuple[str, ...], present: set[str], table: str) -> None:
    """An exploding config adds ``_item``, and repeats its rows: refuse an input that has ``_item``, or
    the exploding column itself (whose value no output row per item could keep, `skip_if_filled`)."""
    if not explodes:
        return
    if ITEM_COLUMN in config.field_columns:
        raise ConfigError(
            f"{config.source}: a field is named {ITEM_COLUMN}, the column that numbers the items of an exploding "
            "field. Give that field another name."
        )
    if ITEM_COLUMN in present:
        raise ConfigError(
            f"{table} has a column named {ITEM_COLUMN}, which an exploding field adds (it numbers each row's items). "
            f"Rename or drop that column of the input (a table enriched with `explode` before: start from the "
            "table it was made from)."
        )
    for name in explodes:
        if name in present:
            raise ConfigError(
                f"{config.source}: the field {name!r} explodes (one output row per item), and {name!r} is already a "
                f"column of {table}, whose values the output could not keep. Give the field another name "
                f"(`fields: {{new_name: {{path: ..., explode: true}}}}`)."
            )


# The keys of each section, in order: what messages list, what the docs' reference shows.
TOP_KEYS = Config.key_names()
REQUEST_KEYS = RequestConfig.key_names()
RETRY_KEYS = RetryConfig.key_names()
TLS_KEYS = TLSConfig.key_names()
RATE_KEYS = SharedRate.key_names()


# --- loading -----------------------------------------------------------------------------


def load_config(
    path: str | Path, overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Read, expand and validate a config file; ``overrides`` replace top-level keys (CLI flags)."""
    path = Path(path)
    data, lines = read_yaml(path)
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
    load = Load(where or _Locator("<config>", {}), Redactor(), os.environ if env is None else env)
    try:
        if isinstance(data, Mapping) and "steps" in data:
            from .step_config import load_steps

            return load_steps(dict(data), load)
        if isinstance(data, Mapping) and data.get("max_cost") is not None:
            raise ConfigError(
                f"{load.where('max_cost')}: max_cost counts the credits of `steps` (each step's `cost:`), and this "
                "config has no steps. Write the call as a step with a `cost:`, or leave max_cost out."
            )
        return validate(Config, dict(data) if isinstance(data, Mapping) else data, load)
    except ConfigError as exc:
        # A message may quote a value that came from ${VAR}; never show it.
        raise ConfigError(load.redactor.redact(str(exc))) from None


def steps_schema() -> dict[str, Any]:
    """The editor schema of `steps` and `auths` (``step_config`` declares a step)."""
    from .step_config import steps_schema

    return steps_schema()


def _plain_http_warnings(data: Mapping[str, Any], url: Template, where: _Locator) -> list[str]:
    """A warning for each configured URL that sends calls unencrypted to another machine."""
    from yarl import URL

    urls = [(where("request", "url"), url.render({c: "x" for c in url.columns}))]
    auth = data.get("auth")
    if isinstance(auth, dict):  # the login (or token) URLs: they carry the credentials
        urls += [(where("auth", str(k)), v) for k, v in auth.items() if str(k).endswith("url") and isinstance(v, str)]
    out = []
    for loc, text in urls:
        try:
            parsed = URL(text, encoded=True)
        except ValueError:
            continue
        if parsed.scheme == "http" and parsed.host and not _loopback(parsed.host):
            out.append(
                f"{loc} is plain http:// to {parsed.host}: the calls, and any token, password or key they carry, "
                "cross the network unencrypted. Use https:// unless that network is yours."
            )
    return out


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
