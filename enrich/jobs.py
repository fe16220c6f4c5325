"""File jobs: a run from an input file to an output file, with its journal, locks and summary.

    job = plan_job(config, options=options)        # the files, checked before any call
    summary = run_job(config, job, options)         # the calls, then the output, atomically
    summary = extract_job(config, job)              # the output again from the journal: no call

Before the first call, ``plan_job`` and ``run_job`` check what the run will write (the output
and errors file: writable, not the input, not written by another run); each output is locked
until the run ends, and written whole or not at all. An input given as an ``http(s)://`` URL
is fetched once, by ``plan_job``, to a local copy the job holds (``remote.py``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from .aio import run
from .building import RowCounts, build_pass
from .calling import ProgressCallback, Tally, call_pass
from .client import Counters
from .config import ERRORS_COLUMNS, ROW_COLUMN, STEP_COLUMN, Config, journal_location
from .errors import (
    AuthError,
    ConfigError,
    Interrupted,
    OutputBusy,
    OutputError,
    RunAborted,
    StorageError,
    ThrottledTooLong,
)
from .journal import FileJournal, Journal, journal_label, open_journal
from .planning import DEFAULT_OPTIONS, Batches, PlanSpool, RunOptions
from .redis_journal import RedisJournal, named_after
from .remote import Fetched, local_input
from .summary import Summary, summarize, write_running, write_stop, write_summary
from .workbook import MAX_ROWS, ExcelLimit, check_fits


@dataclass(frozen=True, slots=True)
class Job:
    """Where a file-to-file run reads, writes and keeps its journal."""

    input: Path  # the file read: the input, or the copy fetched from its URL (``fetched``)
    output: Path
    journal: Path | str | None  # None: no journal kept after the run; str: a redis:// URL (RedisJournal)
    errors_out: Path | None = None  # the failed rows, with their requests
    # Text columns (CSV) whose values the templates and `when` see as numbers or booleans.
    value_types: Mapping[str, pl.DataType] = field(default_factory=dict)
    # An input given as a URL: what was fetched; the local copy lives as long as this does.
    fetched: Fetched | None = None

    @property
    def input_label(self) -> str:
        """The input as enrich shows it: its path, or its URL (secrets as ``***``)."""
        return self.fetched.url if self.fetched is not None else str(self.input)


def plan_job(
    config: Config,
    input_path: Path | str | None = None,
    output: Path | None = None,
    journal: Path | str | None = None,
    use_journal: bool | None = None,
    options: RunOptions = DEFAULT_OPTIONS,
    in_place: bool = False,
) -> Job:
    """Settle the files of a run, and check them against the config before any call.

    ``--shard`` and ``--limit`` without ``--output`` write beside the configured output
    (``people.shard-0-of-4.parquet``, ``people.first-5.parquet``), so neither replaces a
    whole run's table; a trial shares the whole run's journal. An output that is the input
    is refused unless ``in_place``. An ``http(s)://`` input is fetched now, once (``remote.local_input``).
    """
    from .tables import check_utf8, output_format, value_types

    source = input_path or config.input
    if source is None:
        raise ConfigError(f"{config.source}: no input table. Set `input:` in the config or pass --input PATH.")
    target = output or config.output
    if target is None:
        raise ConfigError(f"{config.source}: no output table. Set `output:` in the config or pass --output PATH.")
    output_format(target)
    errors = config.errors_out
    if errors is not None:
        output_format(errors, "errors_out")
    unsharded = target
    if options.shard is not None and output is None:  # each shard its own files
        target, errors = (_shard_path(p, options.shard) if p is not None else None for p in (target, errors))
    assert target is not None
    journal_beside = target  # a trial run (--limit) keeps the whole run's journal: its calls count for it
    if options.limit is not None and output is None:
        target, errors = (_trial_path(p, options.limit) if p is not None else None for p in (target, errors))
    assert target is not None
    source, fetched = local_input(source, config)
    if in_place and _same_file(target, source):  # through a link: replace the file it points to
        target = target.resolve()
    lf = config.scan_input(source)
    schema = lf.collect_schema()
    check_utf8(source)
    types = value_types(lf, config.columns_read, config.input_types, source)
    config.check_schema({c: types.get(c, t) for c, t in schema.items()}, source.name)
    _check_files(config, source, target, errors, list(schema), options, in_place)
    if output_format(target) == "xlsx":
        check_sheet(lf, source, target, len(schema) + len(config.output_columns), options.limit)
    if use_journal is None:  # --journal PATH overrides `journal: false`; --no-journal overrides both
        use_journal = config.use_journal or journal is not None
    if isinstance(journal, str):
        journal = journal_location(journal, "--journal", config.redactor)
    kept = journal or config.journal or journal_beside.with_name(journal_beside.name + ".journal")
    if isinstance(kept, str):  # a Redis journal: named after the output, so every shard shares it
        kept = named_after(kept, unsharded.name)
    return Job(source, target, kept if use_journal else None, errors, types, fetched)


def _check_files(
    config: Config,
    source: Path,
    target: Path,
    errors: Path | None,
    columns: list[str],
    options: RunOptions,
    in_place: bool,
) -> None:
    """What can be known of the output files before any call: none is a folder, none is the
    input (unless ``in_place``), and no column of ours clashes with an input column."""
    for what, path in (("output", target), ("errors_out", errors)):
        if path is None:
            continue
        if path.is_dir():
            raise OutputError(f"{what} {path} is a folder; name a file in it, e.g. {path / ('out' + '.parquet')}.")
        if _same_file(path, source) and not (in_place and what == "output"):
            fix = (
                "Write the output elsewhere (--output PATH), or pass --in-place to replace the input with "
                "the enriched table (atomically, once every call is made)."
                if what == "output"
                else "Name another file for errors_out."
            )
            raise OutputError(f"{what} {path} is the input table: the run would overwrite it. {fix}")
    if options.shard is not None and ROW_COLUMN in columns:
        raise ConfigError(
            f"{source.name} has a column named {ROW_COLUMN}, which a shard's output adds (the input row number, for "
            f"`enrich merge`). Rename that column to run with --shard."
        )
    if errors is not None:
        ours = (*ERRORS_COLUMNS, STEP_COLUMN) if config.steps else ERRORS_COLUMNS
        clash = sorted(set(ours) & config.columns_used)
        if clash:
            raise ConfigError(
                f"{source.name} has a column named {clash[0]}, which the request uses and the errors file "
                f"({errors}) writes itself ({', '.join(ours)}). Rename that input column, or leave "
                "errors_out out."
            )


def _kept(job: Job) -> str | None:
    """Where the job's journal is, as a user names it again (None: none is kept)."""
    return journal_label(job.journal) if job.journal is not None else None


def check_sheet(lf: pl.LazyFrame, source: Path, target: Path, columns: int, limit: int | None = None) -> None:
    """Before any call: the output (``columns`` wide) fits one sheet of a workbook."""
    from .tables import count_rows

    rows = count_rows(lf, source, limit) or 0
    try:
        check_fits(rows, columns)
    except ExcelLimit as exc:
        parts = ", or split the rows with --shard I/N (each shard its own workbook)" if rows + 1 > MAX_ROWS else ""
        raise OutputError(
            f"the output {target} cannot hold the table: {exc}. Write it as Parquet or CSV "
            f"(--output {target.with_suffix('.parquet')}){parts}."
        ) from None


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (through links, `..` and all); False when ``a`` does not exist."""
    try:
        return a.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def writable(path: Path, what: str) -> None:
    """Make ``path``'s folder and prove a file can be written in it, or raise ``OutputError``
    (before any call: a folder without permission is found now, not after every call is paid)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise OutputError(
            f"cannot write the {what} {path}: {exc.strerror or exc} in the folder {path.parent}. Check its "
            "permissions and free space, or point the file elsewhere."
        ) from None


def _shard_path(path: Path, shard: tuple[int, int]) -> Path:
    index, count = shard
    return path.with_name(f"{path.stem}.shard-{index}-of-{count}{path.suffix}")


def _trial_path(path: Path, limit: int) -> Path:
    return path.with_name(f"{path.stem}.first-{limit}{path.suffix}")


def run_job(
    config: Config,
    job: Job,
    options: RunOptions = DEFAULT_OPTIONS,
    on_progress: ProgressCallback | None = None,
) -> Summary:
    """Read the input, make the calls the journal lacks, write the output atomically.

    Ctrl-C or SIGTERM stops it with ``Interrupted``: the finished calls stay in the
    journal, and nothing is written under the output name. Whatever stops the run, the
    summary file says so (``status``), so a scheduler never reads the last good run's.
    """
    from .tables import InputStamp, count_rows, iter_batches

    with _claim_outputs(job):
        try:
            with _journal(job) as journal, contextlib.closing(PlanSpool()) as spool:
                stamp = InputStamp.of(job.input)
                lf = config.scan_input(job.input)

                def batches() -> Iterator[pl.DataFrame]:
                    return iter_batches(lf, job.input, options.limit)

                # The total feeds a progress bar, and says what a max_cost stop leaves; counting
                # costs a read of the whole input.
                if (on_progress is not None or config.max_cost is not None) and options.shard is None:
                    total = count_rows(lf, job.input, options.limit)
                else:
                    total = None
                started = time.perf_counter()
                counters, tally = _calls(batches, config, journal, job, options, on_progress, total, spool)
                call_seconds = time.perf_counter() - started
                stamp.check()
                counts = _write(
                    batches,
                    config,
                    journal,
                    options,
                    job.output,
                    spool,
                    job.errors_out,
                    stamp.check,
                    job.input,
                    job.value_types,
                    _kept(job),
                )
        except BaseException as stop:  # the output is ours (locked): say the run stopped, and why
            write_stop(stop, job, config.redactor.redact)
            raise
        summary = summarize(config, counters, tally, counts, time.perf_counter() - started, call_seconds)
        write_summary(summary, job)
    return summary


@contextlib.contextmanager
def _claim_outputs(job: Job) -> Iterator[None]:
    """Before any call: the files the run writes can be written, no other run writes them (each
    is locked until the run ends), no summary of an earlier run is left to look like this one's,
    and what a killed run left beside them is removed (no live run owns it: the lock is held)."""
    from .locks import hold
    from .tables import OutputWriter

    locks = []
    try:
        for what, path in (("output", job.output), ("errors file", job.errors_out)):
            if path is None:
                continue
            writable(path, what)
            busy = OutputBusy(
                f"the {what} {path} is being written by another run. Wait for it to finish (or stop it), "
                "or write this run's output elsewhere with --output PATH."
            )
            locks.append(hold(path, busy))
            OutputWriter.sweep(path)
        write_running(job)  # until the run ends: a run killed outright leaves that, never the last good run's
        yield
    finally:
        for lock in locks:
            lock.release()


def _calls(
    batches: Batches,
    config: Config,
    journal: Journal,
    job: Job,
    options: RunOptions,
    on_progress: ProgressCallback | None,
    total: int | None,
    spool: PlanSpool,
) -> tuple[Counters, Tally]:
    """The calling pass of a file job; a stop says what the journal holds and how to resume."""
    try:
        if config.steps:
            from .chain import chain_pass

            return run(chain_pass(batches, config, journal, options, on_progress, total, job.value_types))
        return run(call_pass(batches, config, journal, options, on_progress, total, spool, job.value_types))
    except KeyboardInterrupt:
        journal.flush()
        kept = (
            f"{journal.written:,} finished calls are saved in the journal {journal_label(job.journal)}; run the same "
            "command again to resume."
            if job.journal
            else "no journal was kept (journal: false), so a rerun starts over."
        )
        raise Interrupted(f"interrupted: {kept} Nothing was written to {job.output}.") from None
    except ThrottledTooLong as stop:  # resumable: say what the journal holds, and when to come back
        journal.flush()
        raise stop.saved(
            journal.written,
            journal_label(job.journal) if job.journal else None,
            len(journal) if job.journal else None,
        ) from None
    except AuthError as stop:  # a login or renewal failed mid-run: resumable too
        journal.flush()
        if journal.written and job.journal is not None:
            raise AuthError(
                f"{stop} {journal.written:,} finished calls are saved in the journal {journal_label(job.journal)}; "
                "run the same command again to resume."
            ) from None
        raise


def extract_job(config: Config, job: Job, options: RunOptions = DEFAULT_OPTIONS) -> Summary:
    """Rebuild the output from the journal alone (after `fields` change): no API call."""
    from .tables import iter_batches

    if job.journal is None:
        raise ConfigError(
            f"{config.source}: `journal: false` keeps no journal, so there is nothing to extract from. "
            "Point --journal at the journal of an earlier run."
        )
    if isinstance(job.journal, Path) and not job.journal.exists():
        raise ConfigError(
            f"no journal at {job.journal}: there is nothing to extract from. Run `enrich run` first, "
            "or point --journal at the journal of an earlier run."
        )
    lf = config.scan_input(job.input)

    def batches() -> Iterator[pl.DataFrame]:
        return iter_batches(lf, job.input, options.limit)

    started = time.perf_counter()
    with _claim_outputs(job):
        try:
            with contextlib.closing(open_journal(job.journal)) as journal:
                counts = _write(
                    batches,
                    config,
                    journal,
                    options,
                    job.output,
                    errors_out=job.errors_out,
                    types=job.value_types,
                    kept=_kept(job),
                )
        except BaseException as stop:  # the summary says the output was not rebuilt, and why
            write_stop(stop, job, config.redactor.redact)
            raise
        summary = summarize(config, Counters(), Tally(), counts, time.perf_counter() - started)
        write_summary(summary, job)
    return summary


def _write(
    batches: Batches,
    config: Config,
    journal: Journal,
    options: RunOptions,
    output: Path,
    spool: PlanSpool | None = None,
    errors_out: Path | None = None,
    before_finish: Callable[[], None] | None = None,
    source: Path | str = "the input table",
    types: Mapping[str, pl.DataType] | None = None,
    kept: str | None = None,
) -> RowCounts:
    """The building pass into the output file (and the errors file); ``before_finish`` runs
    before either replaces a file (the input-changed check)."""
    from .tables import OutputWriter

    escape = config.field_columns if config.escape_formulas else ()
    if config.steps:
        from .chain import chain_build_pass

        built, counts = chain_build_pass(batches, config, journal, options, types, errors_out is not None)
    else:
        built, counts = build_pass(batches, config, journal, options, spool, errors_out is not None, source, types)
    writer = errors = None
    try:
        writer = OutputWriter(output, escape_formulas=escape)
        errors = OutputWriter(errors_out) if errors_out is not None else None
        for batch in built:
            writer.write(batch.frame)
            if errors is not None and batch.failed is not None:
                errors.write(batch.failed)
        if before_finish is not None:
            before_finish()
        writer.finish()
        if errors is not None:
            errors.finish()
    except ExcelLimit as exc:  # found only now when rows grow (one per item of a list)
        other = output.with_suffix(".parquet")
        fix = (
            f"Every call is in the journal {kept}: write the table as Parquet or CSV from it, with `enrich extract "
            f"CONFIG --output {other} --journal {kept}`; it makes no call."
            if kept is not None
            else f"No journal was kept (journal: false): write the table as Parquet or CSV (--output {other})."
        )
        raise RunAborted(f"cannot write the output {output}: {exc}. {fix}") from None
    except OSError as exc:  # the disk: full, or the folder's permissions changed under the run
        raise StorageError(
            f"cannot write the output {output}: {exc.strerror or exc}. Every call is in the journal: free some "
            "space (or fix the folder's permissions), then run the same command again; it makes no call."
        ) from None
    finally:
        for part in (writer, errors):
            if part is not None:
                part.discard()
    return counts


@contextlib.contextmanager
def _journal(job: Job) -> Iterator[Journal]:
    """The job's journal; without one, a temporary file beside the output, removed after."""
    if isinstance(job.journal, str):
        shared = RedisJournal.open(job.journal)
        try:
            yield shared
        finally:
            shared.close()
        return
    if job.journal is not None:
        existed = job.journal.exists()
        journal = FileJournal.open(job.journal)
        try:
            yield journal
        finally:
            journal.close(remove_if_empty=not existed)  # e.g. the login failed: no empty journal left
        return
    job.output.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{job.output.name}.", suffix=".journal", dir=job.output.parent)
    os.close(fd)
    path = Path(name)
    try:
        with FileJournal.open(path, lock=False) as journal:  # a name no other run knows
            yield journal
    finally:
        for suffix in ("", "-wal", "-shm", "-log"):
            Path(name + suffix).unlink(missing_ok=True)
