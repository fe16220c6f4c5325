"""What an API announces of its rate limit in an answer's headers, read into one small value.

    allowance = read_allowance(answer.headers, now=time.time())
    # Allowance(limit=50, remaining=12, reset_in=1.4, window=2.0)

The forms read, the first present wins:

- the IETF draft's combined field: ``RateLimit: limit=50, remaining=12, reset=2`` (draft 3) or
  ``RateLimit: "default";r=12;t=2`` (later drafts), with ``RateLimit-Policy: 50;w=2`` or
  ``"default";q=50;w=2`` for the limit and the window;
- the IETF draft's separate fields: ``RateLimit-Limit``, ``RateLimit-Remaining``, ``RateLimit-Reset``;
- the common ``X-RateLimit-Limit``, ``X-RateLimit-Remaining``, ``X-RateLimit-Reset``.

A reset is seconds from now, or a time: a value over 10^9 is epoch seconds (2001 on), over
10^12 epoch milliseconds. Headers that do not parse are ignored (``None``): an API's odd header
never fails a row.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

EPOCH_SECONDS = 1e9  # a reset this large is a time (2001-09-09 on), not a number of seconds
EPOCH_MILLISECONDS = 1e12
_PARAM = re.compile(r'([A-Za-z][\w-]*)\s*=\s*"?([^,;"\s]*)"?')
_LEADING = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:[;,]|$)")


@dataclass(frozen=True, slots=True)
class Allowance:
    """The calls an answer says are left (``remaining``) until the window resets (``reset_in``
    seconds after the answer), of ``limit`` per ``window`` seconds when the API says so."""

    limit: int | None
    remaining: int
    reset_in: float
    window: float | None = None


def read_allowance(headers: Mapping[str, str], now: float) -> Allowance | None:
    """The allowance ``headers`` announce (``now``: the epoch time, for a reset given as a time);
    None when they announce none, or one that does not parse."""
    combined = headers.get("RateLimit")
    if combined is not None:
        return _combined(combined, headers.get("RateLimit-Policy"), now)
    for prefix in ("RateLimit-", "X-RateLimit-"):
        remaining = headers.get(prefix + "Remaining")
        if remaining is not None:
            limit_text = headers.get(prefix + "Limit")
            policy = _policy(limit_text) if limit_text is not None else (None, None)
            if policy == (None, None):
                policy = _policy(headers.get("RateLimit-Policy"))
            return _allowance(policy[0], _number(remaining), _reset(headers.get(prefix + "Reset"), now), policy[1])
    return None


def _combined(text: str, policy_text: str | None, now: float) -> Allowance | None:
    params = _params(text)
    remaining = _number(params.get("remaining", params.get("r")))
    reset = _reset(params.get("reset", params.get("t")), now)
    limit, window = _policy(policy_text)
    if limit is None:
        limit = _int(_number(params.get("limit", params.get("q"))))
    if window is None:
        window = _number(params.get("w"))
    return _allowance(limit, remaining, reset, window)


def _policy(text: str | None) -> tuple[int | None, float | None]:
    """``50;w=2``, ``"default";q=50;w=2`` or ``50, 50;w=2, 1000;w=3600``: the first policy's quota
    and window (seconds)."""
    if not text:
        return None, None
    items = text.split(",")
    first = next((item for item in items if "w=" in item), items[0])
    params = _params(first)
    lead = _LEADING.match(first)
    quota = _int(_number(lead.group(1) if lead else params.get("q")))
    return quota, _number(params.get("w"))


def _params(text: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, value in _PARAM.findall(text):
        params.setdefault(name.lower(), value)
    return params


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _int(value: float | None) -> int | None:
    return int(value) if value is not None and value >= 1 else None


def _reset(text: str | None, now: float) -> float | None:
    """Seconds until the reset, from seconds or an epoch time (in seconds or milliseconds)."""
    value = _number(text)
    if value is None:
        return None
    if value > EPOCH_MILLISECONDS:
        value = value / 1000 - now
    elif value > EPOCH_SECONDS:
        value -= now
    return max(0.0, value)


def _allowance(
    limit: int | None, remaining: float | None, reset_in: float | None, window: float | None
) -> Allowance | None:
    if remaining is None or reset_in is None:
        return None  # without both there is nothing to pace by
    return Allowance(limit, int(remaining), reset_in, window if window else None)


@dataclass(slots=True)
class Announced:
    """What a run's answers announced: the limit and its window (``window`` as announced, else the
    longest time to a reset seen, which is the window's length once one answer came early in a
    window), and the fewest calls left any answer reported."""

    limit: int | None = None
    window: float | None = None
    remaining_min: int | None = None
    answers: int = 0  # answers that announced an allowance

    def note(self, allowance: Allowance) -> float | None:
        """Count ``allowance`` in; returns the window as now known (None: not yet)."""
        self.answers += 1
        if allowance.limit is not None:
            self.limit = allowance.limit
        if allowance.window is not None:
            self.window = allowance.window
        elif self.window is None or allowance.reset_in > self.window:
            self.window = allowance.reset_in if allowance.reset_in > 0 else self.window
        if self.remaining_min is None or allowance.remaining < self.remaining_min:
            self.remaining_min = allowance.remaining
        return self.window

    def to_dict(self) -> dict[str, float | int | None] | None:
        """``{"limit": 50, "window_s": 2.0, "remaining_min": 0}``; None when nothing was announced."""
        if not self.answers:
            return None
        window = round(self.window, 3) if self.window is not None else None
        return {"limit": self.limit, "window_s": window, "remaining_min": self.remaining_min}
