"""The command line: the only module that prints, parses argv or imports tqdm.

Exit codes: 0 the run completed (rows that failed are in ``_error``); 1 the run completed
but more rows failed than ``--max-error-rate`` allows; 2 the config or input is wrong
(nothing was sent); 3 the run was aborted (e.g. login failed; nothing was written);
70 an internal error (a bug); 130 interrupted.

Everything said on stderr goes through ``_Log``: plain lines, or one JSON event per line
with ``--log-format json``; both pass the run's redactor first.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import math
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

from . import __version__
from .errors import EnrichError

EXIT_OK, EXIT_FAILED_ROWS, EXIT_CONFIG, EXIT_ABORTED = 0, 1, 2, 3
EXIT_INTERNAL, EXIT_INTERRUPTED = 70, 130
PROGRESS_EVERY = 2.0  # seconds between JSON progress events


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # usage errors are config errors: exit 2
        self.print_usage(sys.stderr)
        self.exit(EXIT_CONFIG, f"error: {message}\n")


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _whole_number(text, 1)


def _shard(text: str) -> tuple[int, int]:
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N such as 0/4, got {text!r}") from None
    if not sep or n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N (shards count from 0), got {text!r}")
    return i, n


def _duration(text: str) -> float:
    from .units import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _dry_run_rows(text: str) -> int:
    if not text.lstrip("-").isdigit():  # `enrich run --dry-run job.yaml`: the config came after the flag
        raise argparse.ArgumentTypeError(
            f"expected a number of rows, got {text!r}. Put the config first: enrich run {text} --dry-run"
        )
    return _positive_int(text)


def _count(text: str) -> int:
    return _whole_number(text, 0)


def _table(text: str) -> Path | str:
    """An input table: a path, or a URL (``scheme://...``: checked, and fetched, by ``remote.local_input``)."""
    return text if "://" in text else Path(text)


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors")
    common.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=argparse.SUPPRESS,
        help="stderr as plain lines (default) or one JSON event per line, for log shippers",
    )
    parser = _Parser(
        prog="enrich",
        description="Call an HTTP API for every row of a table and add the answers as columns.",
        epilog="exit codes: 0 done, 1 too many rows failed (--max-error-rate), 2 bad config or input, "
        "3 run aborted, 70 internal error, 130 interrupted",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"enrich {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    files = _Parser(add_help=False)
    files.add_argument("config", type=Path, help="the YAML config file")
    files.add_argument(
        "--input",
        type=_table,
        help="input table (.csv, .parquet, .ndjson, .xlsx) or its http(s):// URL; overrides `input`",
    )
    files.add_argument("--sheet", metavar="NAME|N", help="the sheet of an Excel input (N from 1); overrides `sheet`")
    files.add_argument("--output", type=Path, help="output table (.csv, .parquet, .xlsx); overrides `output`")
    files.add_argument(
        "--journal", metavar="PATH", help="the journal file (default: <output>.journal), or a redis:// URL to share it"
    )
    files.add_argument(
        "--limit",
        type=_positive_int,
        metavar="N",
        help="only the first N rows (a trial run; without --output it writes <output stem>.first-N<suffix>)",
    )
    files.add_argument(
        "--in-place", action="store_true", help="allow the output to be the input: replace it when the run is done"
    )
    files.add_argument("--shard", type=_shard, metavar="I/N", help="only shard I of N (0-based), for parallel jobs")
    files.add_argument(
        "--preview", type=_count, default=0, metavar="N", help="print the first N rows of the new columns"
    )
    files.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
    files.add_argument(
        "--errors-out", type=Path, metavar="PATH", help="also write the failed rows, with their requests, to PATH"
    )

    run = sub.add_parser(
        "run",
        parents=[common, files],
        help="enrich a table as the config says",
        description="Log in, call the API for every row the journal lacks, write the table with the new columns.",
    )
    run.add_argument(
        "--concurrency", type=_positive_int, metavar="N", help="requests in flight; overrides `concurrency`"
    )
    run.add_argument("--rate-limit", metavar="RATE", help="e.g. 20/s or 600/min; overrides `rate_limit`")
    run.add_argument("--fresh", action="store_true", help="ignore the journal: call every row again")
    run.add_argument("--retry-failed", action="store_true", help="call again the rows whose last call failed")
    run.add_argument(
        "--refresh-older-than", type=_duration, metavar="AGE", help="call again results older than AGE (7d, 12h)"
    )
    run.add_argument("--no-journal", action="store_true", help="keep no journal (a rerun starts over)")
    run.add_argument(
        "--dry-run",
        type=_dry_run_rows,
        nargs="?",
        const=5,
        metavar="N",
        help="show the first N requests (default 5) as curl commands and what the run would call; send nothing",
    )
    run.add_argument(
        "--max-cost",
        metavar="CREDITS",
        help="with `steps`: stop (exit 3, resumable) before the run's answered calls cost more; overrides `max_cost`",
    )
    run.add_argument(
        "--max-error-rate",
        metavar="SHARE",
        help="exit 1 when more than this share of rows failed (0.05 or 5%%); overrides `max_error_rate`",
    )

    sub.add_parser(
        "extract",
        parents=[common, files],
        help="rebuild the output from the journal, with no API call",
        description="Rebuild the output from the journal of an earlier run (after changing `fields`): no call is made.",
    )

    validate = sub.add_parser(
        "validate",
        parents=[common],
        help="check a config and its input, with no API call",
        description="Check the config and the input's columns without calling the API (an input given as a URL is "
        "fetched), and say what the run would use.",
    )
    validate.add_argument("config", type=Path, help="the YAML config file")
    validate.add_argument(
        "--input", type=_table, help="the input table (or its URL) to check the columns of; overrides `input`"
    )
    validate.add_argument("--sheet", metavar="NAME|N", help="the sheet of an Excel input (N from 1); overrides `sheet`")

    preview = sub.add_parser(
        "preview",
        parents=[common],
        help="call the API for a few rows and show every field path of the answers",
        description="Make the real calls for the first rows and print each response as a tree of the paths "
        "`fields` can ask for, with the columns the current `fields` give. Nothing is written.",
    )
    preview.add_argument("config", type=Path, help="the YAML config file")
    preview.add_argument("--rows", type=_positive_int, default=3, metavar="N", help="how many rows to call (default 3)")
    preview.add_argument("--input", type=_table, help="input table, or its URL; overrides `input`")
    preview.add_argument("--sheet", metavar="NAME|N", help="the sheet of an Excel input (N from 1); overrides `sheet`")

    sub.add_parser(
        "schema",
        parents=[common],
        help="print the JSON Schema of the config file (for editor completion)",
        description="Print the JSON Schema of the config file, for editors (VS Code's YAML extension) to "
        "complete and check configs.",
    )

    init = sub.add_parser(
        "init",
        parents=[common],
        help="write a commented starter config for an input table",
        description="Write a commented starter config for an input table, using its columns.",
    )
    init.add_argument(
        "input", type=_table, help="the table to enrich (.csv, .parquet, .ndjson, .xlsx), or its http(s):// URL"
    )
    init.add_argument("--config", type=Path, metavar="PATH", help="where to write it (default: <input stem>.yaml)")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.add_argument("--sheet", metavar="NAME|N", help="the sheet of an Excel input (N from 1; default the first)")
    init.add_argument(
        "--steps", action="store_true", help="write the calls as `steps:` (a lookup; a chain and a waterfall to add)"
    )

    merge = sub.add_parser(
        "merge",
        parents=[common],
        help="join shard outputs into one table, in input order",
        description="Join the outputs of `enrich run --shard I/N` into one table, in input order.",
    )
    merge.add_argument("parts", type=Path, nargs="+", help="the shard outputs")
    merge.add_argument("--output", type=Path, required=True, help="the merged table (.csv, .parquet)")

    demo = sub.add_parser(
        "demo-server",
        parents=[common],
        help="run the bundled demo JWT API on 127.0.0.1",
        description="The demo API that configs/demo.yaml enriches against.",
    )
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    demo.add_argument("--port", type=int, default=8787, help="port (default 8787)")
    demo.add_argument("--latency-ms", type=float, default=0.0, help="delay added to each call")
    demo.add_argument("--token-ttl", type=float, default=3600.0, help="token lifetime in seconds")
    demo.add_argument("--rate-limit", type=int, default=None, help="calls per second before it answers 429")
    return parser


class _Log:
    """Everything the CLI says on stderr: plain lines, or JSON events (``--log-format json``).
    Text passes the run's redactor, once there is one."""

    def __init__(self, json: bool = False) -> None:
        self.json = json
        self.redactor: Any = None

    def redact(self, text: str) -> str:
        return self.redactor.redact(text) if self.redactor is not None else text

    def __call__(self, event: str, text: str, **data: Any) -> None:
        """Say ``text`` (text mode) or emit ``{"event": event, "message": text, **data}`` (JSON mode)."""
        if self.json:
            import orjson

            record = {"time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"), "event": event}
            record.update(message=text, **data) if text else record.update(data)
            # Each text value is masked before encoding, so the line stays JSON whatever a secret looks like.
            if self.redactor is not None:
                record = self.redactor.redact_json(record)
            print(orjson.dumps(record, default=str).decode(), file=sys.stderr, flush=True)
        elif text:
            print(self.redact(text), file=sys.stderr, flush=True)

    def traceback(self) -> None:
        """The traceback of the exception being handled (``--debug``), masked like every other line."""
        self("traceback", traceback.format_exc().rstrip())


def main(argv: list[str] | None = None, tune_gc: bool = False) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.tune_gc = tune_gc
    log = _Log(json=getattr(args, "log_format", "text") == "json")
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    debug = getattr(args, "debug", False)
    try:
        if args.command in ("run", "extract"):
            return _run(args, log)
        if args.command == "validate":
            return _validate(args, log)
        if args.command == "preview":
            return _preview(args, log)
        if args.command == "schema":
            return _schema()
        if args.command == "init":
            return _init(args, log)
        if args.command == "merge":
            return _merge(args, log)
        if args.command == "demo-server":
            return _demo_server(args, log)
    except EnrichError as exc:
        if debug:
            log.traceback()
        interrupted = exc.exit_code == EXIT_INTERRUPTED
        prefix = "" if interrupted or log.json else "error: "
        log("interrupted" if interrupted else "error", f"{prefix}{exc}", exit_code=exc.exit_code)
        return exc.exit_code
    except KeyboardInterrupt:  # before the run began, or after it ended
        log("interrupted", "interrupted: nothing was written.", exit_code=EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: say so, and how to get the details
        if debug:
            log.traceback()
        log(
            "error",
            f"error: internal error ({type(exc).__name__}: {exc}). "
            "Run again with --debug for the traceback, and please report it.",
            exit_code=EXIT_INTERNAL,
        )
        return EXIT_INTERNAL
    return EXIT_OK


def _tune_gc() -> None:
    """A run allocates millions of short-lived objects and almost no cycles. The default
    collector thresholds cost about a fifth of the CPU of rendering requests; collect less
    often, and leave what start-up loaded (modules, the config) out of every collection.
    Process-wide state, so the command line sets it (in ``entry``), never the library."""
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def _load(args: argparse.Namespace, log: _Log, overrides: dict[str, Any] | None = None) -> Any:
    from .config import load_config

    config = load_config(args.config, {**(overrides or {}), "sheet": getattr(args, "sheet", None)})
    log.redactor = config.redactor
    if args.command in ("run", "validate", "preview"):  # the commands that call the API or vouch for the config
        for warning in config.warnings:
            log("warning", warning if log.json else f"warning: {warning}")
    return config


def _run(args: argparse.Namespace, log: _Log) -> int:
    from .jobs import extract_job, plan_job, run_job
    from .journal import journal_label
    from .planning import RunOptions
    from .summary import summary_path

    calling = args.command == "run"
    overrides: dict[str, Any] = {"errors_out": str(args.errors_out) if args.errors_out else None}
    if calling:
        overrides.update(
            concurrency=args.concurrency,
            rate_limit=args.rate_limit,
            max_error_rate=args.max_error_rate,
            max_cost=args.max_cost,
        )
    config = _load(args, log, overrides)
    options = RunOptions(
        limit=args.limit,
        fresh=calling and args.fresh,
        retry_failed=calling and args.retry_failed,
        refresh_older_than=args.refresh_older_than if calling else None,
        shard=args.shard,
    )
    job = plan_job(
        config,
        args.input,
        args.output,
        args.journal,
        False if calling and args.no_journal else None,
        options,
        in_place=args.in_place,
    )
    if calling and args.dry_run is not None:
        return _dry_run(config, job, options, args.dry_run)
    if args.tune_gc:
        _tune_gc()
    show = not args.quiet
    if not calling:
        s = extract_job(config, job, options)
        if show:
            log(
                "summary",
                f"extracted {_n(s.rows, 'row')} from {journal_label(job.journal)} in {s.elapsed:.1f}s: {s.ok} ok, {s.failed} failed"
                f"{_failures(s)}, {s.skipped} skipped; no calls -> {job.output}",
                **s.to_dict(),
            )
    else:
        # SIGTERM (a scheduler's stop, `kill`) stops the run as Ctrl-C does: journal kept, no output.
        signal.signal(signal.SIGTERM, _on_sigterm)
        progress = _Progress(log, config, bar=show and not log.json and sys.stderr.isatty(), events=log.json)
        if log.json:
            fetched = {"input_sha256": job.fetched.sha256, "input_bytes": job.fetched.size} if job.fetched else {}
            log("start", "", config=str(args.config), input=job.input_label, **fetched, output=str(job.output))
        try:
            s = run_job(config, job, options, progress.update if progress.enabled else None)
        finally:
            progress.close()
        if show or log.json:
            log("summary", _summary_table(s, job.output, summary_path(job.output)), **s.to_dict())
        if s.over_budget:
            log(
                "error_budget",
                f"error: {s.failed} of {s.ok + s.failed} rows failed ({s.error_rate:.1%}), more than the "
                f"{config.max_error_rate:.1%} that max_error_rate allows. The output is written; fix the cause, "
                "then rerun with --retry-failed to call only the failed rows.",
                exit_code=EXIT_FAILED_ROWS,
            )
    if args.preview > 0:
        _print_preview(job.output, config, args.preview, log)
    return EXIT_FAILED_ROWS if calling and s.over_budget else EXIT_OK


def _summary_table(s: Any, output: Path, summary: Path) -> str:
    if s.steps:  # a limit is each step's own
        limit = "each step at its own limit"
    else:
        limit = f"limit {s.rate_limit:g}/s" if s.rate_limit else "no rate limit"
    latency = (
        f"p50 {s.latency_p50_ms:g} ms, p95 {s.latency_p95_ms:g} ms" if s.latency_p50_ms is not None else "no calls made"
    )
    lines = [
        f"enriched {_n(s.rows, 'row')}{_items(s)} in {s.elapsed:.1f}s -> {output}",
        f"  rows     {s.ok} ok, {s.failed} failed{_failures(s)}, {s.skipped} skipped",
        f"  calls    {s.calls} made, {_n(s.retries, 'retry', 'retries')}, {s.throttled} throttled (429); "
        f"{_n(s.cached, 'answer' if s.steps else 'row')} from the journal, {_n(s.deduped, 'duplicate')}",
        f"  latency  {latency}; {s.calls_per_second:.1f} calls/s ({limit})",
        f"  auth     {_n(s.logins, 'login')}, {_n(s.refreshes, 'token refresh', 'token refreshes')}",
    ]
    if s.announced:
        lines.append(f"  api      {_announced(s)}")
    if s.steps:
        lines += _steps_lines(s)
    lines.append(f"  summary  {summary}")
    return "\n".join(lines)


def _announced(s: Any) -> str:
    """What the API's rate-limit headers announced, and the share of it the run's pace used."""
    a = s.announced
    limit = f"{a['limit']} calls" if a["limit"] is not None else "calls"
    window = f" per {a['window_s']:g}s" if a["window_s"] is not None else ""
    used = f"; the run used {s.allowance_used:.0%} of it" if s.allowance_used is not None else ""
    return f"announced {limit}{window}{used} (fewest left: {a['remaining_min']})"


def _steps_lines(s: Any) -> list[str]:
    """Per step: its calls, rows answered, failures, latency, credits and what it filled; then
    each field's fill rate over all rows."""
    width = max(len(step.name) for step in s.steps)
    lines = []
    for i, step in enumerate(s.steps):
        failures = f" ({', '.join(f'{k}: {v}' for k, v in step.failures.items())})" if step.failures else ""
        latency = f", p50 {step.latency_p50_ms:g} ms" if step.latency_p50_ms is not None else ""
        credits = f", {step.credits:g} credits" if step.cost else ""
        filled = ", ".join(f"{c} {share:.1%}" for c, share in step.fill.items())
        lines.append(
            f"  {'steps' if i == 0 else '':8} {step.name:<{width}}  {step.calls} calls{latency}; {step.answered} "
            f"answered, {step.failed} failed{failures}, {step.skipped} skipped{credits}; filled {filled or 'nothing'}"
        )
    budget = f" of max_cost {s.max_cost:g}" if s.max_cost is not None else ""
    if any(step.cost for step in s.steps):
        lines.append(f"  credits  {s.credits:g}{budget}")
    lines.append("  fill     " + ", ".join(f"{c} {share:.1%}" for c, share in s.fill.items()))
    return lines


def _n(count: int, word: str, plural: str | None = None) -> str:
    """``1 login``, ``2 logins``."""
    return f"{count} {word if count == 1 else plural or word + 's'}"


def _samples(samples: Any) -> list[str]:
    """The first requests of a dry run, as curl commands."""
    from .client import to_curl

    out: list[str] = []
    for sample in samples:
        if sample.request is None:
            out.append(f"# row {sample.row}: fails without a call: {sample.error}")
            continue
        note = ": answered by the journal, no call" if sample.in_journal else ""
        out.append(f"# row {sample.row}{note}")
        # As the request will be sent, the row's values untouched; each secret is `***` where it was put.
        out.append(to_curl(sample.request))
    if not samples:
        out.append("# no row would be called")
    return out


def _dry_run(config: Any, job: Any, options: Any, rows: int) -> int:
    from .preflight import preflight

    if config.steps:
        return _dry_run_steps(config, job, options, rows)
    pf = preflight(config, job, options, rows)
    out = _samples(pf.samples)
    if pf.seconds is not None:
        timing = f"{_duration_text(pf.seconds)} at {pf.rate:g}/s (concurrency {pf.concurrency})"
    else:
        timing = f"no rate limit set: as fast as the API answers {pf.concurrency} requests at a time"
    matching = f"{pf.matching}" if config.when else f"{pf.matching} (no `when`)"
    out += [
        "",
        "dry run: nothing was sent and nothing was written.",
        f"  rows                 {pf.rows}",
        f"  matching `when`      {matching}",
        f"  skipped, filled      {pf.filled}" + ("" if config.skip_if_filled else " (no `skip_if_filled`)"),
        f"  row errors           {pf.row_errors} (fail without a call)",
        f"  distinct requests    {pf.distinct}",
        f"  in the journal       {pf.in_journal}",
        f"  calls to make        {pf.to_call}",
        f"  time                 {timing}",
    ]
    print("\n".join(out))
    return EXIT_OK


def _dry_run_steps(config: Any, job: Any, options: Any, rows: int) -> int:
    from .preflight import steps_preflight

    pf = steps_preflight(config, job, options, rows)
    first, *later = pf.steps
    out = [f"# step {first.name}", *_samples(pf.samples)]
    for step in later:  # their requests are known once the answers they wait for are in
        waits = ", ".join(f"{c} (from step `{s}`)" for c, s in step.waits_for.items())
        out.append(f"# step {step.name}" + (f", once it has {waits}:" if waits else ":"))
        out.append(f"#   {step.method} {step.url}")
    width = max(len(s.name) for s in pf.steps)
    out += ["", "dry run: nothing was sent and nothing was written.", f"  rows     {pf.rows}"]
    for step in pf.steps:
        more = f" + up to {step.more} once earlier steps answer" if step.more else ""
        credits = f"; at most {step.most_credits:g} credits" if step.cost else ""
        out.append(
            f"  step     {step.name:<{width}}  {step.calls} calls to make{more}, {step.in_journal} in the journal, "
            f"{step.no_call} without a call, {step.failing} failing without one{credits}"
        )
    if any(s.cost for s in pf.steps):
        most = sum(s.most_credits for s in pf.steps)
        limit = f" (max_cost {config.max_cost:g}: the run stops before it spends more)" if config.max_cost else ""
        out.append(f"  credits  at most {most:g}, if every call is answered{limit}")
    seconds = pf.seconds
    if seconds is not None:
        at_most = _duration_text(math.ceil(seconds))  # never less than it takes
        out.append(f"  time     at most {at_most} at the steps' rate limits (they run side by side)")
    else:
        out.append("  time     a step has no rate limit: as fast as the API answers")
    print("\n".join(out))
    return EXIT_OK


def _duration_text(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _validate(args: argparse.Namespace, log: _Log) -> int:
    from .jobs import check_sheet
    from .remote import local_input
    from .tables import check_utf8, output_format, value_types

    config = _load(args, log)
    source = args.input or config.input
    if config.output is not None:
        output_format(config.output)
    lines = [f"{args.config}: the config is valid."]
    if source is None:
        lines.append("  input      not set (give --input PATH to check its columns)")
    else:
        path, fetched = local_input(source, config)
        lf = config.scan_input(path)
        schema = lf.collect_schema()
        check_utf8(path)
        types = value_types(lf, config.columns_read, config.input_types, path)
        config.check_schema({c: types.get(c, t) for c, t in schema.items()}, path.name)
        if config.output is not None and output_format(config.output) == "xlsx":
            check_sheet(lf, path, config.output, len(schema) + len(config.output_columns))
        shown = f"{fetched.url} (fetched, {fetched.size:,} bytes; " if fetched else f"{path} ("
        lines.append(f"  input      {shown}{len(schema)} columns; the ones used are there)")
    if config.steps:
        for step in config.steps:
            lines.append(
                f"  step       {step.name}" + (f" (cost {step.cost:g} per answered call)" if step.cost else "")
            )
            lines += [f"  {line}" for line in (*_call_lines(step), _pace_line(step))]
    else:
        used = sorted(config.columns_used)
        lines.append(f"  columns    {', '.join(used) if used else 'none'} (used by the request)")
        lines += _call_lines(config)
    if config.errors_out is not None:
        output_format(config.errors_out, "errors_out")
        lines.append(f"  errors     failed rows go to {config.errors_out}")
    if not config.steps:
        lines.append(_pace_line(config))
    lines.append(
        f"  output     {config.output or 'not set (give --output PATH)'} (+ {', '.join(config.output_columns)})"
    )
    if config.max_error_rate is not None:
        lines.append(f"  budget     exit 1 when more than {config.max_error_rate:.1%} of rows fail")
    print(config.redactor.redact("\n".join(lines)))
    return EXIT_OK


def _call_lines(config: Any) -> list[str]:
    """What `validate` says of a call: which rows, the request, the auth, the fields."""
    lines = []
    if config.when:
        lines.append(f"  when       {config.when}")
    if config.skip_if_filled:
        lines.append(f"  skip       rows whose {', '.join(config.skip_if_filled)} already hold values")
    req = config.request
    lines.append(f"  request    {req.method} {req.url_text}")
    lines.append(f"  auth       {config.auth.describe()}" if config.auth else "  auth       none")
    if config.fields:
        lines.append("  fields     " + ", ".join(f"{f.name} <- {f.path}" for f in config.fields))
    else:
        lines.append("  fields     none: the whole response goes in the `response` column")
    return lines


def _pace_line(config: Any) -> str:
    rate = str(config.rate_limit) if config.rate_limit else "no rate limit"
    return (
        f"  pace       {rate}, concurrency {config.concurrency}, {config.retry.attempts} attempts, "
        f"timeout {config.timeout:g}s"
    )


def _preview(args: argparse.Namespace, log: _Log) -> int:
    from .aio import run
    from .errors import ConfigError
    from .preflight import apreview, apreview_steps
    from .remote import local_input
    from .tables import check_utf8, value_types

    config = _load(args, log)
    if (args.input or config.input) is None:
        raise ConfigError(f"{args.config}: no input table. Set `input:` in the config or pass --input PATH.")
    source, _fetched = local_input(args.input or config.input, config)  # the copy lives until the command ends
    lf = config.scan_input(source)
    check_utf8(source)
    types = value_types(lf, config.columns_read, config.input_types, source)
    config.check_schema({c: types.get(c, t) for c, t in lf.collect_schema().items()}, source.name)
    out: list[str] = []
    if config.steps:
        rows = run(apreview_steps(config, source, args.rows))
        for number, steps in enumerate(rows):
            out.append(f"row {number}:")
            for step in steps:
                lines = _previewed(step.previewed, config.steps[[s.name for s in config.steps].index(step.step)])
                out += [f"  step {step.step}: {lines[0]}", *(f"  {line}" for line in lines[1:])]
            out.append("")
        if not rows:
            out.append("the input has no rows.")
    else:
        previews = run(apreview(config, source, args.rows))
        for p in previews:
            lines = _previewed(p, config)
            out += [f"row {p.row}: {lines[0]}", *lines[1:], ""]
        if not previews:
            out.append("no row would be called (check `when` and `skip_if_filled`).")
    print(config.redactor.redact("\n".join(out).rstrip()))
    return EXIT_OK


def _previewed(p: Any, config: Any) -> list[str]:
    """One previewed call: the request, the status, the response tree and the columns it gives."""
    from .extract import response_tree, to_json

    if p.request is None:
        return [f"no call: {p.error}" if not p.error.startswith(("no call", "not called")) else p.error]
    out = [f"{p.request.method} {p.request.url}"]
    if p.outcome is not None and p.outcome.status is not None:
        out.append(f"  HTTP {p.outcome.status} in {p.outcome.latency_ms or 0:.1f} ms")
    if p.error is not None:
        return [*out, f"  error: {p.error}"]
    if p.outcome is not None and p.outcome.doc is not None:
        out.append("  response (each path can go in `fields`):")
        # Masked before the tree cuts long values: a cut secret would no longer match.
        out += [f"    {line}" for line in response_tree(config.redactor.redact_json(p.outcome.doc))]
    else:
        out.append("  response: empty")
    out.append("  columns from `fields`:" if config.fields else "  columns (no `fields`: the whole response):")
    for name, value in p.columns.items():
        shown = config.redactor.redact(to_json(value))  # an integer wider than 64 bits too
        out.append(f"    {name} = {shown[:100] + '…' if len(shown) > 100 else shown}")
    return out


def _schema() -> int:
    from .schema import schema_json

    print(schema_json())
    return EXIT_OK


def _init(args: argparse.Namespace, log: _Log) -> int:
    from .errors import ConfigError
    from .redact import Redactor
    from .remote import local_input
    from .starter import starter_config
    from .tables import check_utf8, scan_table, value_types

    log.redactor = Redactor()  # a URL's secrets, once it is read
    path, fetched = local_input(args.input, redactor=log.redactor, where="enrich init")
    target = args.config or Path(f"{path.stem}.yaml")
    if target.exists() and not args.force:
        raise ConfigError(f"{target} already exists. Pick another name with --config PATH, or pass --force.")
    if not path.is_file():
        raise ConfigError(f"{path}: no such file. Give the table to enrich: enrich init path/to/table.csv")
    lf = scan_table(path, sheet=args.sheet)
    check_utf8(path)
    schema = lf.collect_schema()
    types = value_types(lf, schema.names(), source=path)  # a CSV's columns are text; the starter sees their kinds
    target.parent.mkdir(parents=True, exist_ok=True)
    text = starter_config(
        path, {c: types.get(c, t) for c, t in schema.items()}, steps=args.steps, sheet=args.sheet, source=args.input
    )
    target.write_text(text, encoding="utf-8")
    log(
        "init",
        f"wrote {target} for {fetched.url if fetched else path} ({len(schema)} columns). Edit the URL and the fields, then "
        f"`enrich validate {target}` and `enrich run {target} --dry-run`.",
        path=str(target),
    )
    return EXIT_OK


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM as Ctrl-C: during the run through asyncio's own SIGINT handler, which cancels the run
    cleanly (a KeyboardInterrupt raised inside a task would skip that and print a traceback)."""
    on_sigint = signal.getsignal(signal.SIGINT)
    if callable(on_sigint) and on_sigint is not signal.default_int_handler:
        on_sigint(signal.SIGINT, frame)
        return
    raise KeyboardInterrupt


def _items(s: Any) -> str:
    """How many rows the output has, when exploding fields made more than one per input row."""
    return f" ({_n(s.output_rows, 'output row')}, one per item)" if s.output_rows > s.rows else ""


def _failures(s: Any) -> str:
    return f" ({', '.join(f'{kind}: {n}' for kind, n in s.failures.items())})" if s.failures else ""


def _print_preview(path: Path, config: Any, rows: int, log: _Log) -> None:
    import polars as pl

    from .config import ATTEMPTS_COLUMN, LATENCY_COLUMN
    from .tables import read_table

    frame = read_table(path, limit=rows)
    shown = [c for c in config.output_columns if c not in (ATTEMPTS_COLUMN, LATENCY_COLUMN)]  # narrower
    keep = [c for c in frame.columns if c not in config.output_columns][:1] + shown
    # Each cell masked before the table cuts it to 40 characters: a cut secret would not match.
    text = [c for c in keep if frame.schema[c] == pl.String]
    frame = frame.select(keep).with_columns(pl.col(c).map_elements(log.redact, return_dtype=pl.String) for c in text)
    with pl.Config(tbl_rows=rows, tbl_cols=-1, fmt_str_lengths=40, tbl_width_chars=160, tbl_hide_dataframe_shape=True):
        print(log.redact(str(frame)))


def _merge(args: argparse.Namespace, log: _Log) -> int:
    from .tables import merge_shards

    rows = merge_shards(args.parts, args.output)
    log("merge", f"merged {len(args.parts)} shard outputs, {rows} rows -> {args.output}", rows=rows)
    return EXIT_OK


class _Progress:
    """Progress from the engine's callback: a tqdm bar on a terminal, JSON events for log shippers."""

    def __init__(self, log: _Log, config: Any, bar: bool, events: bool) -> None:
        self.log = log
        self.limit = config.rate_limit.per_second if config.rate_limit else None
        self.bar: Any = None
        self.want_bar = bar
        self.events = events
        self.enabled = bar or events
        self.last_event = 0.0
        self.ended = False  # the event for the last row is sent once
        self.window: list[tuple[float, int]] = []  # (elapsed, calls), the last few seconds

    def rate(self, p: Any) -> float:
        """Calls per second over the last ~3 seconds."""
        self.window.append((p.elapsed, p.calls))
        while len(self.window) > 2 and p.elapsed - self.window[1][0] >= 3.0:
            self.window.pop(0)
        (t0, c0), (t1, c1) = self.window[0], self.window[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0

    def update(self, p: Any) -> None:
        rate = self.rate(p)
        last = bool(p.total) and p.done >= p.total and not self.ended
        if self.events and (last or p.elapsed - self.last_event >= PROGRESS_EVERY):
            self.last_event = p.elapsed
            self.ended = self.ended or last
            per_row = p.elapsed / p.done if p.done else None
            eta = round(per_row * (p.total - p.done), 1) if per_row and p.total else None
            self.log(
                "progress", "", done=p.done, total=p.total, calls=p.calls, cached=p.cached, failed=p.failed,
                skipped=p.skipped, retries=p.retries, throttled=p.throttled, calls_per_second=round(rate, 1),
                rate_limit=self.limit, elapsed=round(p.elapsed, 1), eta_seconds=eta,
            )  # fmt: skip
        if not self.want_bar:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=p.total, unit="row", file=sys.stderr, dynamic_ncols=True, mininterval=0.2)
        pace = f"{rate:.1f}/s of {self.limit:g}/s" if self.limit else f"{rate:.1f} calls/s"
        self.bar.set_postfix_str(f"calls={p.calls}, from journal={p.cached}, errors={p.failed}, {pace}", refresh=False)
        self.bar.update(p.done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _demo_server(args: argparse.Namespace, log: _Log) -> int:
    from .aio import run
    from .demo_server import serve, settings_from_env

    settings = settings_from_env(latency=args.latency_ms / 1000, token_ttl=args.token_ttl, rate_limit=args.rate_limit)

    async def forever() -> None:
        runner = await serve(settings, args.host, args.port)
        log("listening", f"demo API listening on http://{args.host}:{args.port} (Ctrl-C to stop)", port=args.port)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        run(forever())
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        log(
            "error",
            f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}. Pick another --port.",
            exit_code=EXIT_ABORTED,
        )
        return EXIT_ABORTED
    return EXIT_OK


def entry() -> None:
    sys.exit(main(tune_gc=True))


if __name__ == "__main__":
    entry()
