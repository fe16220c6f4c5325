"""`steps:` and `auths:`: several calls per row in one config, each step loaded as a one-step config.

A step takes the keys of a one-step config that describe a call (``CALL_KEYS``) plus ``name`` and
``cost``; ``Step`` declares them, reusing ``Config``'s own declarations. ``auths`` holds named
auth blocks that a step's ``auth:`` may name::

    auths: {acme: {url: https://api.acme.example/oauth/session, token_path: data.jwt}}
    concurrency: 16                    # top-level auth, concurrency, rate_limit, retry, timeout,
    steps:                             # diagnostics: defaults for every step
      - name: company
        auth: acme
        request: {url: "https://api.acme.example/v2/companies/{{domain}}"}
        fields: {company_id: company.id}
      - name: signals
        auth: acme
        request: {url: "https://api.acme.example/v2/companies/{{company_id}}/signals"}
        fields: {hiring: signals.hiring}

Loading validates each step as a one-step ``Config`` (the top-level keys, the step's call keys over
them) through a locator that puts every message at the step's line (``steps[1].request.url``), so a
step is checked by the very code that checks a one-step config. The loaded config is the first
step's, with ``steps`` holding every step's ``Config`` (``name`` and ``cost`` set).

Which columns each step may read is known once the input is: ``check_step_columns``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import create_model

from .checks import _check_keys, _Locator
from .config_env import listed_secrets, used_vars
from .errors import ConfigError
from .model import CREDITS, NEEDED, Load, Parsed, Schema, Section, about, validate

if TYPE_CHECKING:
    from .config import Config

# The keys of a one-step config that describe its call: a step takes them.
CALL_KEYS = (
    "auth",
    "request",
    "fields",
    "when",
    "skip_if_filled",
    "concurrency",
    "rate_limit",
    "retry",
    "timeout",
    "diagnostics",
)
# The call keys whose top-level value is the default of every step.
DEFAULT_KEYS = ("auth", "concurrency", "rate_limit", "retry", "timeout", "diagnostics")
# The call keys that only a step may hold, once there are steps.
STEP_ONLY_KEYS = tuple(k for k in CALL_KEYS if k not in DEFAULT_KEYS)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ConfigError(
            f"{where} must be a name made of letters, digits and _ (not starting with a digit), e.g. company, "
            f"got {value!r}. It names the step's columns (_<name>_error)."
        )
    return value


_NAME_MISSING = "a step needs a `name` (letters, digits and _), e.g. `name: company`: it names the step's columns."


class _StepSection(Section):
    PATH = ("steps",)


def _step() -> type[Section]:
    """``Step``: ``name``, ``cost``, then the call keys declared as ``Config`` declares them
    (``auth`` may also be a name from ``auths``)."""
    from .auth_config import auth_schema
    from .config import Config

    fields = Config.model_fields
    keys: dict[str, Any] = {
        "name": (
            Annotated[
                str,
                Parsed(_name, {"type": "string", "pattern": _NAME.pattern}, missing=_NAME_MISSING),
                about("The step's name (unique): it names the step's columns, _<name>_http_status and _<name>_error."),
            ],
            NEEDED,
        ),
        "cost": (Annotated[float, CREDITS, about("The credits one answered (2xx) call of this step costs.")], 0.0),
        "auth": (
            Annotated[
                Any,
                Parsed(lambda value, where: value, lambda: {"anyOf": [{"type": "string"}, auth_schema()]}),
                about("A name from `auths`, or an auth block as `auth:` takes. Default: the top-level `auth`."),
            ],
            None,
        ),
    }
    # The other call keys: Config's own declarations, not copies.
    keys.update((k, (fields[k].annotation, fields[k])) for k in CALL_KEYS if k != "auth")
    return create_model("Step", __base__=_StepSection, __doc__="One call per row, after the steps before it.", **keys)


_STEP: type[Section] | None = None


def step_section() -> type[Section]:
    """The ``Step`` section (built once, after ``Config``)."""
    global _STEP
    if _STEP is None:
        _STEP = _step()
    return _STEP


def step_keys() -> tuple[str, ...]:
    return step_section().key_names()


def steps_schema() -> dict[str, Schema]:
    """The editor schema of `steps` and of `auths`."""
    from .auth_config import auth_schema
    from .schema import _tidy

    generated = step_section().model_json_schema()
    step = _tidy(generated, generated.get("$defs", {}))
    step["required"] = ["name", "request"]
    return {
        "steps": {"type": "array", "minItems": 1, "items": step},
        "auths": {
            "type": "object",
            "propertyNames": {"pattern": _NAME.pattern},
            "additionalProperties": auth_schema(),
            "minProperties": 1,
        },
    }


class _Within(_Locator):
    """A locator for a block validated as if it were a one-step config: the top-level keys the block
    gives are found inside it (``request`` -> ``steps[1].request``), the others where they are."""

    def __init__(self, outer: _Locator, moves: Mapping[str, tuple[str, ...]]) -> None:
        super().__init__(outer.source, outer.lines)
        self.overridden = outer.overridden
        self.moves = moves

    def _text(self, path: tuple[str, ...]) -> str:
        if path and path[0] in self.moves:
            path = (*self.moves[path[0]], *path[1:])
        return super()._text(path)


def load_steps(data: dict[str, Any], load: Load) -> Config:
    """A config with `steps`: each step validated as a one-step config; the first step's ``Config``
    with ``steps`` holding them all."""
    from .config import TOP_KEYS, Config

    where = load.where
    data = _check_keys(data, TOP_KEYS, where, ())
    for key in STEP_ONLY_KEYS:
        if key in data:
            raise ConfigError(
                f"{where(key)}: with `steps`, each step has its own `{key}`. Move it into the step it is for, or "
                "leave `steps` out for a config of one call."
            )
    steps = data["steps"]
    if not isinstance(steps, list) or not steps:
        raise ConfigError(
            f"{where('steps')} must be a list of steps, each a mapping with a `name` and a `request`, got {steps!r}."
        )
    auths = data.get("auths") or {}
    if not isinstance(auths, dict):
        raise ConfigError(f"{where('auths')} must be a mapping of names to auth blocks, got {auths!r}.")
    for name, block in auths.items():
        _name(name, where("auths", str(name)))
        if not isinstance(block, dict):
            raise ConfigError(f"{where('auths', name)} must be an auth block (a mapping of keys), got {block!r}.")
    listed = listed_secrets(data, where)  # each a ${VAR} of some step, auth or top-level key
    top = {k: v for k, v in data.items() if k not in ("steps", "auths", "secrets")}
    allowed = step_keys()
    configs: list[Config] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(steps):
        at = ("steps", str(i))
        raw = _check_keys(raw, allowed, where, at)
        name = _name(raw["name"], where(*at, "name")) if "name" in raw else None
        if name is None:
            raise ConfigError(f"{where(*at)}: {_NAME_MISSING}")
        if name in seen:
            raise ConfigError(
                f"{where(*at, 'name')}: {name!r} is already the name of steps[{seen[name]}]. Give each step its own "
                "name: it names the step's columns."
            )
        seen[name] = i
        if "request" not in raw:
            raise ConfigError(
                f"{where(*at)}: step `{name}` has no `request`. Add at least "
                "`request: {url: https://api.example.com/v1/{{id}}}`."
            )
        cost = CREDITS.parse(raw.get("cost", 0), where(*at, "cost"))
        moves: dict[str, tuple[str, ...]] = {k: (*at, k) for k in raw if k in CALL_KEYS}
        one = {**top, **{k: v for k, v in raw.items() if k in CALL_KEYS}}
        auth = one.get("auth")
        auth_key = ".".join(moves.get("auth", ("auth",)))
        if isinstance(auth, str):
            if auth not in auths:
                known = ", ".join(auths) if auths else "none: add `auths:` with it"
                close = difflib.get_close_matches(auth, list(auths), n=1)
                fix = f" Did you mean `{close[0]}`?" if close else ""
                raise ConfigError(f"{where(*at, 'auth')}: {auth!r} is not a name in `auths` (names: {known}).{fix}")
            one["auth"] = auths[auth]
            moves["auth"] = ("auths", auth)
            auth_key = f"auths.{auth}"
        secrets = sorted(listed & used_vars(one))  # a step's own check: it uses each it lists
        if secrets:
            one["secrets"] = secrets
        step_load = Load(_Within(where, moves), load.redactor, load.env)
        config = validate(Config, one, step_load)
        rate = config.rate_limit
        if rate is not None and rate.shared and "rate_limit" not in raw:
            # The top-level limit is each step's own, as a local one is: one Redis key per step.
            config = config.derive(rate_limit=replace(rate, key=f"{rate.key}.{name}"))
        if config.auth is not None and "auth" in moves:  # messages name where the block is
            block = f"auths.{auth}" if isinstance(auth, str) else f"steps[{i}].auth"
            config = config.derive(auth=config.auth.derive(at=block))
        configs.append(config.derive(name=name, cost=cost, auth_key=auth_key))
    _check_explodes(configs, where)
    if configs[0].max_cost is not None and not any(c.cost for c in configs):
        raise ConfigError(
            f"{where('max_cost')}: no step has a `cost`, so there is nothing to count against max_cost. Give the "
            "steps that are paid for their `cost:` (the credits one answered call costs), or leave max_cost out."
        )
    warnings = tuple(dict.fromkeys(w for c in configs for w in c.warnings))
    return configs[0].derive(steps=tuple(configs), auths=auths, warnings=warnings)


def _check_explodes(configs: list[Config], where: _Locator) -> None:
    """Only the last step may explode a field (a later step would run once for a row that is now
    many), and a field that explodes is that step's alone (no waterfall into it)."""
    for i, step in enumerate(configs):
        if not step.explodes:
            continue
        at = where("steps", str(i), "fields", step.explodes[0])
        if i < len(configs) - 1:
            raise ConfigError(
                f"{at}: step `{step.name}` explodes {step.explodes[0]!r} (one output row per item), and step "
                f"`{configs[i + 1].name}` comes after it, which would run once for a row that is now many. Make the "
                "exploding step the last one, or explode in a config of its own run on this config's output."
            )
        for earlier in configs[:i]:
            shared = [c for c in step.explodes if c in earlier.field_columns]
            if shared:
                raise ConfigError(
                    f"{at}: step `{step.name}` explodes {shared[0]!r}, which step `{earlier.name}` fills too: a "
                    "field that explodes must be one step's alone. Give one of them another name."
                )


# --- the columns, once the input is known --------------------------------------------------------


def providers(config: Config) -> dict[str, list[str]]:
    """Each field column of the steps, with the steps that fill it, in order."""
    out: dict[str, list[str]] = {}
    for step in config.steps:
        for column in step.field_columns:
            out.setdefault(column, []).append(step.name)
    return out


def waterfall_columns(config: Config, input_columns: list[str] | None = None) -> tuple[str, ...]:
    """The field columns more than one provider fills (two steps, or the input and a step): each
    gets a ``<column>_source`` column naming the step that filled it."""
    present = set(input_columns or ())
    return tuple(c for c, steps in providers(config).items() if len(steps) > 1 or c in present)


def status_columns(step: Config) -> tuple[str, ...]:
    """A step's own columns: ``_<name>_http_status``, ``_<name>_error`` and the diagnostics."""
    diagnostics = ("attempts", "latency_ms") if step.diagnostics else ()
    return tuple(f"_{step.name}_{c}" for c in ("http_status", "error", *diagnostics))


def check_step_columns(config: Config, columns: list[str], table: str) -> None:
    """Fail if a step reads a column that neither the input nor an earlier step gives (or that only
    a later step gives), or if a column of ours would overwrite an input column."""
    from .config import check_items

    steps = config.steps
    present = list(columns)
    shown = ", ".join(columns[:20]) + (", ..." if len(columns) > 20 else "")

    def missing(col: str, what: str, step: Config, index: int, hint: str = "{!r}") -> ConfigError:
        later = next((s.name for s in steps[index + 1 :] if col in s.field_columns), None)
        if later is not None:
            return ConfigError(
                f"{what}, which step `{later}` gives, and it comes after step `{step.name}`. Move step `{later}` "
                f"before step `{step.name}` in `steps`."
            )
        earlier = [c for c in present if c not in columns]
        gives = f"; earlier steps give: {', '.join(earlier)}" if earlier else ""
        close = difflib.get_close_matches(col, present, n=1)
        fix = f" Did you mean {hint.format(close[0])}?" if close else ""
        return ConfigError(
            f"{what}, which is neither a column of {table} nor a field of an earlier step "
            f"(columns: {shown}{gives}).{fix}"
        )

    for col in config.key:
        if col not in columns:
            raise ConfigError(f"{config.source}: `key` names {col!r}, which is not a column of {table}.")
    check_items(config, config.explodes, set(columns), table)
    for index, step in enumerate(steps):
        have = set(present)
        for where, template in step.template_sites:
            for col in sorted(template.columns - have):
                raise missing(col, f"{where} uses {{{{{col}}}}}", step, index, hint="{{{{{}}}}}")
        for col in step.skip_if_filled:
            if col not in have:
                raise missing(col, f"{step.source}: `skip_if_filled` of step `{step.name}` names {col!r}", step, index)
        for col in step.when_expr().meta.root_names() if step.when is not None else ():
            if col not in have:
                raise missing(col, f"{step.when_at} uses {col!r}", step, index)
        present += [c for c in step.field_columns if c not in have]
    sources = [f"{c}_source" for c in waterfall_columns(config, columns)]
    ours = [c for step in steps for c in status_columns(step)] + sources
    fields = {c: step.name for step in steps for c in step.field_columns}
    for name in ours:
        # A status column is named after its step; a source column after the field it tells about.
        rename = "the step" if name not in sources else f"the field {name.removesuffix('_source')!r}"
        if name in columns:
            raise ConfigError(
                f"{config.source}: the output column {name!r} is already a column of {table}. Rename that input "
                f"column, or {rename}."
            )
        if name in fields:
            raise ConfigError(
                f"{config.source}: step `{fields[name]}` names a field {name!r}, a column enrich adds to the "
                f"output. Rename that field, or {rename}."
            )


def step_output_columns(config: Config, input_columns: list[str] | None = None) -> tuple[str, ...]:
    """The columns a run with steps adds, in order: the fields, each waterfall column's source,
    then each step's status, error and diagnostics."""
    from .config import ITEM_COLUMN

    present = set(input_columns or ())
    fields = tuple(c for c in providers(config) if c not in present)
    sources = tuple(f"{c}_source" for c in waterfall_columns(config, input_columns))
    item = (ITEM_COLUMN,) if config.explodes else ()
    return (*fields, *sources, *item, *(c for step in config.steps for c in status_columns(step)))
