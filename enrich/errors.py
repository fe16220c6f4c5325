"""Every error a user can cause, in one tree.

    EnrichError                 base; carries the process exit code
    ├── ConfigError             the YAML config is wrong (exit 2)
    ├── InputError              the input table is missing or unreadable, or its URL answers 4xx (exit 2)
    ├── OutputError             the output, errors file or journal cannot be written, found before any call (exit 2)
    ├── RunAborted              the run cannot go on (exit 3); a rerun resumes from the journal
    │   ├── AuthError           login failed or gave no token (exit 3)
    │   ├── Busy                another run holds the journal or the output (exit 3; JournalBusy, OutputBusy)
    │   ├── InputChanged        the input file changed while the run read it (exit 3)
    │   ├── InputUnavailable    the input's URL cannot be fetched now: no connection, a timeout, a 5xx (exit 3)
    │   ├── StorageError        the disk failed the run: full, not writable, a damaged journal (exit 3)
    │   ├── ThrottledTooLong    the API asked to wait longer than retry.max_retry_after, or its quota is spent (exit 3)
    │   ├── CostLimitReached    the next call could take the run's credits over max_cost (exit 3)
    │   └── TLSError            the API's certificate cannot be verified, or TLS failed (exit 3)
    └── Interrupted             Ctrl-C or SIGTERM; finished calls are in the journal (exit 130)

The CLI catches ``EnrichError`` alone, prints ``error: <message>`` and exits with
``exit_code``; anything else is a bug and shows a traceback only with ``--debug``.
Messages say where the problem is, what was found and how to fix it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable


class FailureKind(enum.Enum):
    """Why a row has no answer, set where the failure is known (the summary counts rows by it,
    with the status for ``HTTP``)."""

    HTTP = "HTTP"  # the API answered with a status of 300 or more
    BAD_RESPONSE = "bad response"  # a 2xx answer that is not what was asked for (not JSON, too large)
    TIMEOUT = "timeout"
    CONNECTION = "connection error"
    NOT_CALLED = "not called"  # no result in the journal yet (extract)
    BAD_ROW_DATA = "bad row data"  # the row could not become a request
    MISSING_INPUT = "missing input"  # a step's input is empty: the step before it failed or found nothing
    UNEVEN_LISTS = "uneven lists"  # an answer whose exploding fields' lists differ in length


class EnrichError(Exception):
    """Base of every error enrich raises on purpose."""

    exit_code = 1


class ConfigError(EnrichError):
    """The config file is malformed or asks for something impossible."""

    exit_code = 2


class InputError(EnrichError):
    """The input table cannot be read or does not fit the config."""

    exit_code = 2


class OutputError(EnrichError):
    """A file the run must write (the output, the errors file, the journal) cannot be written:
    found before any call, so nothing was paid for."""

    exit_code = 2


class RunAborted(EnrichError):
    """The run stopped before it could finish; nothing was written."""

    exit_code = 3


class AuthError(RunAborted):
    """Logging in failed, or the login response held no token."""


class Busy(RunAborted):
    """Another run holds the journal or the output."""


class OutputBusy(Busy):
    """Another run is writing the same output."""


class InputChanged(RunAborted):
    """The input file changed (replaced, edited, re-sorted) while the run read it: its answers
    would land on the wrong rows, so nothing is written; the calls made are in the journal."""


class InputUnavailable(RunAborted):
    """The input's URL could not be fetched for a reason that may pass (the server is down or
    unreachable, it timed out, answered 5xx or dropped the connection): nothing was sent to the
    API; run the same command later."""


class StorageError(RunAborted):
    """The disk failed the run after calls were made: full, not writable, or a damaged journal.
    What the journal saved is kept; the message says what to free or fix."""


class ThrottledTooLong(RunAborted):
    """The API asked to wait longer than ``retry.max_retry_after`` (a Retry-After, or a quota its
    RateLimit headers say is spent until later): rather than sleep for hours, the run stops; the
    journal keeps the finished calls, so a later run resumes. ``said``: what asked, when not a
    Retry-After."""

    def __init__(
        self, seconds: float, status: int, limit: float, resume_at: float, saved: str = "", said: str = ""
    ) -> None:
        self.seconds, self.status, self.limit, self.resume_at, self._saved = seconds, status, limit, resume_at, saved
        self.said = said
        when = _utc_minute(resume_at)
        asked = f"{seconds:.0f}s" if seconds < 10 * _YEAR else "longer than ten years"
        super().__init__(
            f"the API asked to wait {asked} ({said or 'Retry-After'} on HTTP {status}), more than "
            f"retry.max_retry_after ({limit:g}s). {saved or 'Run'} again "
            + (f"after {when}." if when else "later: the time it named is too far away to be meant.")
        )

    def __reduce__(self) -> tuple[type[ThrottledTooLong], tuple[float, int, float, float, str, str]]:
        # Picklable, so the stop crosses process boundaries whole (a Dask worker to the client).
        return (type(self), (self.seconds, self.status, self.limit, self.resume_at, self._saved, self.said))

    def saved(self, calls: int, journal: object | None, total: int | None = None) -> ThrottledTooLong:
        """The same stop, saying what the journal holds: ``calls`` made by this run, ``total`` in
        all (``journal`` None: none is kept)."""
        if journal is None:
            saved = "No journal was kept (journal: false), so a rerun starts over; run the same command"
        elif not total and calls == 0:
            saved = "No call had finished yet; run the same command"
        elif total is not None and total != calls:
            saved = f"{total:,} finished calls are in the journal {journal} ({calls:,} made by this run); run the same command"
        else:
            saved = f"{calls:,} finished calls are saved in the journal {journal}; run the same command"
        return ThrottledTooLong(self.seconds, self.status, self.limit, self.resume_at, saved, self.said)


class CostLimitReached(RunAborted):
    """The next call could take the credits this run spends over ``max_cost``: no call is made
    after it; the calls in flight finish and are saved, so a rerun with a higher limit goes on."""

    def __init__(self, limit: float, cost: float, message: str = "") -> None:
        self.limit, self.cost = limit, cost
        super().__init__(message or f"max_cost ({limit:g} credits) reached")

    def __reduce__(self) -> tuple[type[CostLimitReached], tuple[float, float, str]]:
        return (type(self), (self.limit, self.cost, str(self)))

    def spent(self, credits: float, by_step: dict[str, float], rows_done: int, rows: int | None) -> CostLimitReached:
        """The stop, saying what was spent (in all and by step) and what is left."""
        steps = ", ".join(f"{name} {n:g}" for name, n in by_step.items())
        done = f"{rows_done:,} of {rows:,} rows" if rows is not None else f"{rows_done:,} rows"
        left = f"; {rows - rows_done:,} are left" if rows is not None else ""
        return CostLimitReached(
            self.limit,
            self.cost,
            f"stopped before this run spent more than max_cost ({self.limit:g} credits): it spent {credits:g} "
            f"({steps}), and the next call would cost {self.cost:g} more. {done} are done and saved in the "
            f"journal{left}. Run the same command again to go on (each run may spend up to max_cost, and no "
            "answered call is paid for again), or raise --max-cost to do more in one run.",
        )


class TLSError(RunAborted):
    """The API's TLS certificate cannot be verified (or the handshake fails): every call to it
    would fail the same way, so the run stops at the first one instead of failing each row."""


_YEAR = 365.25 * 86400


def _utc_minute(epoch: float) -> str | None:
    """``2026-11-30 11:00 UTC``: the minute at or after ``epoch``; None past the year 9999
    (a hostile or broken ``Retry-After: 1e308`` names no time a calendar holds)."""
    import datetime
    import math

    try:
        when = datetime.datetime.fromtimestamp(math.ceil(epoch / 60) * 60, datetime.UTC)
    except (OverflowError, ValueError, OSError):
        return None
    return when.strftime("%Y-%m-%d %H:%M UTC")


class Interrupted(EnrichError):
    """The run was stopped from outside; what it finished is kept in the journal."""

    exit_code = 130


class Where(str):
    """Where in the config something is ("demo.yaml, line 14: request.url"); knows its children's lines.

    It is a plain ``str`` to everything that formats it; ``child_of(where, "amount")``
    gives "demo.yaml, line 15: request.body.amount" when the config knows that line.
    """

    child: Callable[[str], str] | None = None

    def __new__(cls, text: str, child: Callable[[str], str] | None = None) -> Where:
        obj = super().__new__(cls, text)
        obj.child = child
        return obj


def child_of(where: str, key: object) -> str:
    """The location of ``key`` inside ``where``."""
    if isinstance(where, Where) and where.child is not None:
        return where.child(str(key))
    return f"{where}.{key}"
