"""enrich: call an HTTP API for every row of a table and add the answers as columns.

    import polars as pl
    from enrich import enrich, load_config

    result = enrich(pl.read_csv("people.csv"), load_config("configs/demo.yaml"))
    result.frame.write_parquet("people_enriched.parquet")

Heavy modules (polars, aiohttp) load on first use, so ``enrich --version`` is instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .config import Config, config_from_dict, load_config
    from .engine import RunOptions, RunResult, Summary, aenrich, enrich, plan_job, run_job
    from .errors import AuthError, ConfigError, EnrichError, InputError, RunAborted

_EXPORTS = {
    "Config": "config",
    "load_config": "config",
    "config_from_dict": "config",
    "enrich": "engine",
    "aenrich": "engine",
    "run_job": "engine",
    "plan_job": "engine",
    "RunOptions": "engine",
    "RunResult": "engine",
    "Summary": "engine",
    "EnrichError": "errors",
    "ConfigError": "errors",
    "InputError": "errors",
    "RunAborted": "errors",
    "AuthError": "errors",
}

__all__ = [
    "AuthError",
    "Config",
    "ConfigError",
    "EnrichError",
    "InputError",
    "RunAborted",
    "RunOptions",
    "RunResult",
    "Summary",
    "__version__",
    "aenrich",
    "config_from_dict",
    "enrich",
    "load_config",
    "plan_job",
    "run_job",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'enrich' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{module}", __name__), name)
