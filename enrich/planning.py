"""Row planning: each row of the input becomes a call, a skip or a row error, before any call.

    batch_plan = plan_batch(batch, config, RunOptions(shard=(0, 4)), offset=0)
    for plan in batch_plan.plans:          # the rows this run takes (this shard's)
        match plan:
            case Call(fp, request): ...     # a request, and its fingerprint (the journal's key)
            case RowError(message): ...     # the row cannot become a request: it fails, uncalled
            case Skipped(): ...             # left out by `when` or `skip_if_filled`
    rows, numbers = batch_plan.taken(batch, offset=0)   # those rows, and their input row numbers

``sort_row`` says what the calling pass (and a dry run) does with a planned row: skip it,
fail it, count it as a duplicate of a request already made or on its way, take the
journal's result, or make the call. ``PlanSpool`` keeps what the calling pass planned, so
the building pass need not render every request again.
"""

from __future__ import annotations

import enum
import hashlib
import pickle
import tempfile
import time
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
import polars as pl

from .client import PreparedRequest, prepare, shown
from .column_types import typed_view
from .config import Config
from .extract import to_json
from .journal import Entry
from .template import TemplateValueError, text_key

Batches = Callable[[], Iterator[pl.DataFrame]]


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How a run treats the journal and which rows it takes."""

    limit: int | None = None  # only the first N rows
    fresh: bool = False  # ignore what the journal holds (call everything again)
    retry_failed: bool = False  # call again the rows whose last result was a failure
    refresh_older_than: float | None = None  # seconds: call again results older than this
    shard: tuple[int, int] | None = None  # (I, N): only the rows of shard I of N
    # When "this run" began (time.time()): results written since then are this run's, never made
    # again by `fresh` or `retry_failed`. None: when this call began. Tasks of one run (Dask
    # partitions, and their re-runs after a worker died) share it.
    started_at: float | None = None


DEFAULT_OPTIONS = RunOptions()  # every row; the journal's results reused (a safe default argument: frozen)


# --- what a row becomes --------------------------------------------------------------------------


class Call(NamedTuple):
    """A row that becomes a request: its fingerprint (the journal's key: the request with its
    secrets masked) and the request. ``request`` is None in a plan read back from the spool:
    the building pass needs only the fingerprint."""

    fp: bytes
    request: PreparedRequest | None


class RowError(NamedTuple):
    """A row that cannot become a request (a value the template cannot send): it fails without
    a call, with this message (secrets masked)."""

    message: str


class Skipped:
    """A row left out by `when` or `skip_if_filled`: no call, no error. One instance: ``SKIPPED``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "SKIPPED"


SKIPPED = Skipped()
Plan = Call | RowError | Skipped


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """The plans of a batch's rows that this run takes, and with a shard the mask of those rows."""

    plans: list[Plan]
    keep: list[bool] | None = None  # one per row of the batch; None: every row

    def taken(self, batch: pl.DataFrame, offset: int) -> tuple[pl.DataFrame, list[int]]:
        """The rows of ``batch`` (whose first row is input row ``offset``) that this run takes,
        and their input row numbers."""
        numbers = range(offset, offset + batch.height)
        if self.keep is None:
            return batch, list(numbers)
        mask = self.keep
        return batch.filter(pl.Series(mask, dtype=pl.Boolean)), [n for n, k in zip(numbers, mask, strict=True) if k]


def plan_row(config: Config, row: dict[str, Any]) -> Call | RowError:
    try:
        request = prepare(config.request, row)
        # The fingerprint is the request's with its secrets (and its origin's ${VAR}s) masked where
        # they were put: a rotated key keeps the journal, and row data is never masked.
        keyed = request if config.request.fingerprinted is None else prepare(config.request.fingerprinted, row, False)
    except (TemplateValueError, ValueError) as exc:
        return RowError(config.redactor.redact(str(exc)))
    return Call(keyed.fingerprint(), request)


def template_rows(
    batch: pl.DataFrame,
    config: Config,
    types: Mapping[str, pl.DataType] | None,
    columns: frozenset[str] | None = None,
) -> tuple[pl.DataFrame, list[dict[str, Any]], list[str | None] | None]:
    """A batch as the templates see it: the batch with text columns typed by ``types``, each row's
    template columns (their values, and the text they were read as), and per row the reason a
    cell cannot be sent (None when every row can). ``columns``: these instead of the template
    columns (of them, those the batch has)."""
    typed, reasons = typed_view(batch, types) if types else (batch, None)
    used = sorted(config.columns_used if columns is None else columns & set(batch.columns))
    if not used:
        return typed, [{}] * batch.height, reasons
    frame = typed.select(used)
    texts = [c for c in used if types and c in types]
    if texts:  # the text as read goes into strings, URLs, headers; the value into a JSON body
        frame = frame.hstack(batch.select(pl.col(c).alias(text_key(c)) for c in texts))
    return typed, frame.rows(named=True), reasons


def plan_batch(
    batch: pl.DataFrame,
    config: Config,
    options: RunOptions,
    offset: int = 0,
    types: Mapping[str, pl.DataType] | None = None,
) -> BatchPlan:
    """Render a batch (whose first row is input row ``offset``): the plans of the rows this run
    takes, and with a shard the mask of those rows. ``types`` (``tables.value_types``): the
    text columns whose values are numbers or booleans, as the templates and `when` see them."""
    typed, rows, reasons = template_rows(batch, config, types)
    plans: list[Plan]
    if config.selects_rows:
        calls = typed.select(config.call_mask().alias("call")).to_series().to_list()
        plans = [plan_row(config, row) if call else SKIPPED for row, call in zip(rows, calls, strict=True)]
    else:
        plans = [plan_row(config, row) for row in rows]
    if reasons is not None:  # a cell not of its column's kind: that row fails (unless left out), the rest go on
        plans = [
            RowError(config.redactor.redact(r)) if r is not None and p is not SKIPPED else p
            for p, r in zip(plans, reasons, strict=True)
        ]
    if options.shard is None:
        return BatchPlan(plans)
    keys = typed.select(config.key).rows() if config.key else None
    keep = shard_keep(options.shard, plans, keys, offset)
    return BatchPlan([p for p, k in zip(plans, keep, strict=True) if k], keep)


def shard_keep(
    shard: tuple[int, int], plans: Sequence[object], keys: Sequence[tuple[Any, ...]] | None, offset: int
) -> list[bool]:
    """Which rows of a batch (whose first row is input row ``offset``) shard ``(I, N)`` takes: by
    their `key` columns' values (``keys``: stable even when the request changes), else by their
    request (rows asking the same land in one shard; a row without one, by its number)."""
    index, count = shard
    if keys is not None:
        hashes = [_key_hash(values) for values in keys]
    else:
        hashes = [int.from_bytes(p.fp[:8], "big") if type(p) is Call else offset + n for n, p in enumerate(plans)]
    return [h % count == index for h in hashes]


def _key_hash(values: tuple[Any, ...]) -> int:
    digest = hashlib.blake2b(to_json(values).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def shown_request(config: Config, row: dict[str, Any]) -> PreparedRequest | None:
    """Row ``row``'s request as a dry run or the errors file shows it: each secret as ``***``
    where it was put (the auth header or parameter too), the row's values as they are. None
    when the row has no request."""
    try:
        return shown(prepare(config.request.for_display, row), config.auth)
    except (TemplateValueError, ValueError):
        return None


def shown_columns(config: Config, row: dict[str, Any]) -> tuple[str | None, str | None, str | None, str | None]:
    """Row ``row``'s request as the errors file shows it (``REQUEST_COLUMNS``: method, URL,
    headers as JSON, body): as ``shown_request``, and searched for every secret besides, since a
    value a row carries into its request may be one (an earlier step's answer that echoed a token)."""
    req = shown_request(config, row)
    if req is None:
        return (None, None, None, None)
    redact = config.redactor.redact
    body = redact(req.body.decode("utf-8", "replace")) if req.body else None
    return (req.method, redact(str(req.url)), redact(orjson.dumps(req.headers).decode()), body)


# --- what the calling pass does with a row -------------------------------------------------------


class Sort(enum.Enum):
    """What the calling pass (and a dry run) does with a planned row."""

    SKIPPED = "skipped"  # left out by `when` or `skip_if_filled`
    ROW_ERROR = "row error"  # no request: it fails without a call
    DUPLICATE = "duplicate"  # another row of this run asked the same, and its call is made or on its way
    ANSWERED = "answered"  # the journal holds a result this run takes
    CALL = "call"  # the call must be made


def sort_row(
    plan: Plan, seen: Container[bytes], known: Mapping[bytes, Entry], options: RunOptions, started: float
) -> Sort:
    """How a row is treated: ``seen`` holds the requests this run already made or sent on their way,
    ``known`` the journal's entries for this batch, ``started`` when this run began (time.time())."""
    if type(plan) is not Call:
        return Sort.SKIPPED if plan is SKIPPED else Sort.ROW_ERROR
    fp = plan.fp
    if fp in seen:
        return Sort.DUPLICATE
    entry = known.get(fp)
    if entry is not None and reusable(entry, options, started):
        return Sort.ANSWERED
    return Sort.CALL


def reusable(entry: Entry, options: RunOptions, started: float) -> bool:
    """Whether a journal entry answers this run's row, or the call must be made (again)."""
    if entry.at >= started:
        return True  # made by this run
    if options.fresh:
        return False
    if options.refresh_older_than is not None and entry.at < time.time() - options.refresh_older_than:
        return False
    return not (options.retry_failed and entry.failed)


# --- kept between the passes ---------------------------------------------------------------------


class PlanSpool:
    """What the calling pass planned of each batch (fingerprints, row errors, the shard mask), kept
    on disk so the building pass need not render every request again. Read back batch by batch,
    in order."""

    def __init__(self) -> None:
        # Removed by the OS when closed, however the run ends.
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())

    def write(self, digest: int, batch: BatchPlan) -> None:
        """One batch: its ``content_digest`` and its plan."""
        fps = [p.fp if type(p) is Call else None for p in batch.plans]
        errors = {i: p.message for i, p in enumerate(batch.plans) if type(p) is RowError}
        pickle.dump((digest, batch.keep, fps, errors), self._file, protocol=pickle.HIGHEST_PROTOCOL)

    def read(self) -> Iterator[tuple[int, BatchPlan]]:
        """Each batch's digest and plan, in order (each ``Call`` without its request)."""
        self._file.flush()
        self._file.seek(0)
        while True:
            try:
                digest, keep, fps, errors = pickle.load(self._file)
            except EOFError:
                return
            plans: list[Plan] = [
                Call(fp, None) if fp is not None else RowError(errors[i]) if i in errors else SKIPPED
                for i, fp in enumerate(fps)
            ]
            yield digest, BatchPlan(plans, keep)

    def close(self) -> None:
        self._file.close()
