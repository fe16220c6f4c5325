"""Values a config writes as text: rates (``20/s``), sizes (``10MB``) and durations (``7d``),
each parsed here only; the editor schema's patterns are made from the same expressions."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

RATE_TEXT = re.compile(
    # The unit is optional: a bare number is per second (`--rate-limit 20` and `${RATE}` give text).
    r"^\s*(?P<n>\d+(?:\.\d+)?)\s*(?:(?:/|per)\s*(?P<unit>s|sec|second|m|min|minute|h|hr|hour)s?)?\s*$",
    re.IGNORECASE,
)
AUTO = "auto"  # no rate of our own: pace by the API's headers (the default)
_UNIT_SECONDS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hr": 3600, "hour": 3600}


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` requests per ``period`` seconds, e.g. ``Rate(20, 1)`` for ``20/s``; with ``shared``
    (a Redis URL) one limit for every process using the same Redis and ``key``."""

    count: float
    period: float
    burst: int = 0  # starts allowed ahead of the pace (shared limits)
    shared: str | None = field(default=None, repr=False)  # redis://host:port/db (may hold a password)
    key: str = "enrich"

    @property
    def per_second(self) -> float:
        return self.count / self.period

    def __str__(self) -> str:
        unit = {1: "s", 60: "min", 3600: "h"}.get(int(self.period), f"{self.period}s")
        text = f"{self.count:g}/{unit}"
        if self.burst:
            text += f", burst {self.burst}"
        return text + (f", shared in Redis (key {self.key})" if self.shared else "")


def parse_rate(value: Any, loc: str) -> Rate | None:
    """Parse ``20/s``, ``1200/min``, ``100/h`` or a bare number (per second); null (or ``auto``) sets
    no rate of our own: the pace is what the API's rate-limit headers allow."""
    if value is None or value == 0 or (isinstance(value, str) and value.strip().lower() == AUTO):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ConfigError(f"{loc} must be positive, got {value!r}.")
        return Rate(float(value), 1.0)
    match = RATE_TEXT.match(str(value))
    if not match or float(match.group("n")) <= 0:
        raise ConfigError(
            f"{loc}: {value!r} is not a rate. Write it as N/s, N/min or N/h (e.g. `20/s`, `600/min`), "
            "or `auto` (the default: as fast as the API's rate-limit headers allow)."
        )
    unit = match.group("unit")
    return Rate(float(match.group("n")), float(_UNIT_SECONDS[unit.lower()]) if unit else 1.0)


SIZE_TEXT = re.compile(r"^\s*(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>[kmg]i?b?|b|bytes?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(value: Any, loc: str) -> int:
    """Bytes in ``10MB``, ``512KB``, ``1GB`` (binary: 1 MB = 1,048,576 bytes) or a number of bytes."""
    match = None if isinstance(value, bool) else SIZE_TEXT.match(str(value))
    size = float(match.group("n")) * _SIZE_UNITS[(match.group("unit") or "")[:1].lower()] if match else 0
    if size < 1:
        raise ConfigError(f"{loc} must be a size such as 10MB, 512KB or a number of bytes, got {value!r}.")
    return int(size)


def format_size(size: int) -> str:
    """``10 MB``, ``512 KB``, ``1,500 bytes``: the largest unit that divides ``size``."""
    for unit, name in ((1024**3, "GB"), (1024**2, "MB"), (1024, "KB")):
        if size % unit == 0:
            return f"{size // unit:,} {name}"
    return f"{size:,} bytes"


_DURATION = re.compile(r"^\s*(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>s|m|h|d|w)\s*$", re.IGNORECASE)
_DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds in ``30s``, ``15m``, ``12h``, ``7d`` or ``2w``; ``ValueError`` for anything else."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"expected an age such as 30m, 12h, 7d or 2w, got {text!r}")
    return float(match.group("n")) * _DURATION_SECONDS[match.group("unit").lower()]
