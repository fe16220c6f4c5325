"""The command line: the only module that prints, parses argv or imports tqdm.

Exit codes: 0 the run completed (rows that failed are in ``_error``); 1 an
unexpected internal error; 2 the config or input is wrong (nothing was sent);
3 the run was aborted (e.g. login failed; nothing was written); 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

from . import __version__
from .errors import EnrichError

EXIT_OK, EXIT_INTERNAL, EXIT_CONFIG, EXIT_ABORTED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # usage errors are config errors: exit 2
        self.print_usage(sys.stderr)
        self.exit(EXIT_CONFIG, f"error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


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
    from .config import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors")
    parser = _Parser(
        prog="enrich",
        description="Call an HTTP API for every row of a table and add the answers as columns.",
        epilog="exit codes: 0 done, 1 internal error, 2 bad config or input, 3 run aborted, 130 interrupted",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"enrich {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    files = _Parser(add_help=False)
    files.add_argument("config", type=Path, help="the YAML config file")
    files.add_argument("--input", type=Path, help="input table (.csv, .parquet, .ndjson); overrides `input`")
    files.add_argument("--output", type=Path, help="output table (.csv, .parquet); overrides `output`")
    files.add_argument("--journal", type=Path, metavar="PATH", help="the journal file (default: <output>.journal)")
    files.add_argument("--limit", type=_positive_int, metavar="N", help="only the first N rows (a trial run)")
    files.add_argument("--shard", type=_shard, metavar="I/N", help="only shard I of N (0-based), for parallel jobs")
    files.add_argument("--preview", type=int, default=0, metavar="N", help="print the first N rows of the new columns")
    files.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")

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

    sub.add_parser(
        "extract",
        parents=[common, files],
        help="rebuild the output from the journal, with no API call",
        description="Rebuild the output from the journal of an earlier run (after changing `fields`): no call is made.",
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    redact = _Redact()
    try:
        if args.command in ("run", "extract"):
            return _run(args, redact)
        if args.command == "merge":
            return _merge(args)
        if args.command == "demo-server":
            return _demo_server(args)
    except EnrichError as exc:
        if getattr(args, "debug", False):
            traceback.print_exc()
        prefix = "" if exc.exit_code == EXIT_INTERRUPTED else "error: "
        print(f"{prefix}{redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # before the run began, or after it ended
        print("interrupted: nothing was written.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: say so, and how to get the details
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(
            f"error: internal error ({type(exc).__name__}: {redact(str(exc))}). "
            "Run again with --debug for the traceback, and please report it.",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
    return EXIT_OK


class _Redact:
    """Everything the CLI prints goes through the run's redactor, once there is one."""

    def __init__(self) -> None:
        self.redactor: Any = None

    def __call__(self, text: str) -> str:
        return self.redactor.redact(text) if self.redactor is not None else text


def _tune_gc() -> None:
    """A run allocates millions of short-lived objects and almost no cycles. The default
    collector thresholds cost about a fifth of the CPU of rendering requests; collect less
    often, and leave what start-up loaded (modules, the config) out of every collection.
    Process-wide state, so the CLI sets it, never the library."""
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def _run(args: argparse.Namespace, redact: _Redact) -> int:
    from .config import load_config
    from .engine import RunOptions, extract_job, plan_job, run_job

    calling = args.command == "run"
    overrides = {"concurrency": args.concurrency, "rate_limit": args.rate_limit} if calling else {}
    config = load_config(args.config, overrides)
    redact.redactor = config.redactor
    options = RunOptions(
        limit=args.limit,
        fresh=calling and args.fresh,
        retry_failed=calling and args.retry_failed,
        refresh_older_than=args.refresh_older_than if calling else None,
        shard=args.shard,
    )
    job = plan_job(
        config, args.input, args.output, args.journal, False if calling and args.no_journal else None, options
    )
    show = not args.quiet
    _tune_gc()
    if not calling:
        s = extract_job(config, job, options)
        if show:
            print(
                redact(
                    f"extracted {s.rows} rows from {job.journal} in {s.elapsed:.1f}s: {s.ok} ok, {s.failed} failed"
                    f"{_failures(s)}; no calls -> {job.output}"
                ),
                file=sys.stderr,
            )
    else:
        # SIGTERM (a scheduler's stop, `kill`) stops the run as Ctrl-C does: journal kept, no output.
        signal.signal(signal.SIGTERM, _on_sigterm)
        progress = _ProgressBar(enabled=show and sys.stderr.isatty())
        try:
            s = run_job(config, job, options, progress.update if progress.enabled else None)
        finally:
            progress.close()
        if show:
            print(
                redact(
                    f"enriched {s.rows} rows in {s.elapsed:.1f}s: {s.ok} ok, {s.failed} failed{_failures(s)}; "
                    f"{s.calls} calls, {s.retries} retries, {s.throttled} throttled (429), {s.cached} from the "
                    f"journal, {s.deduped} duplicates, {s.logins} logins, {s.refreshes} token refreshes -> {job.output}"
                ),
                file=sys.stderr,
            )
    if args.preview > 0:
        _print_preview(job.output, config, args.preview, redact)
    return EXIT_OK


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM as Ctrl-C: during the run through asyncio's own SIGINT handler, which cancels the run
    cleanly (a KeyboardInterrupt raised inside a task would skip that and print a traceback)."""
    on_sigint = signal.getsignal(signal.SIGINT)
    if callable(on_sigint) and on_sigint is not signal.default_int_handler:
        on_sigint(signal.SIGINT, frame)
        return
    raise KeyboardInterrupt


def _failures(s: Any) -> str:
    return f" ({', '.join(f'{kind}: {n}' for kind, n in s.failures.items())})" if s.failures else ""


def _print_preview(path: Path, config: Any, rows: int, redact: _Redact) -> None:
    from .tables import read_table

    frame = read_table(path, limit=rows)
    keep = [c for c in frame.columns if c not in config.output_columns][:1] + list(config.output_columns)
    import polars as pl

    with pl.Config(tbl_rows=rows, tbl_cols=-1, fmt_str_lengths=40, tbl_width_chars=160, tbl_hide_dataframe_shape=True):
        print(redact(str(frame.select(keep))))


def _merge(args: argparse.Namespace) -> int:
    from .tables import merge_shards

    rows = merge_shards(args.parts, args.output)
    print(f"merged {len(args.parts)} shard outputs, {rows} rows -> {args.output}", file=sys.stderr)
    return EXIT_OK


class _ProgressBar:
    """A tqdm bar on stderr fed by the engine's progress callback."""

    def __init__(self, enabled: bool) -> None:
        self.bar: Any = None
        self.enabled = enabled
        self.shown: tuple[int, int] = (-1, -1)

    def update(self, p: Any) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=p.total, unit="row", file=sys.stderr, dynamic_ncols=True, mininterval=0.2)
        if (p.failed, p.cached) != self.shown:
            self.shown = (p.failed, p.cached)
            self.bar.set_postfix_str(f"errors={p.failed}, from journal={p.cached}", refresh=False)
        self.bar.update(p.done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _demo_server(args: argparse.Namespace) -> int:
    from .aio import run
    from .demo_server import serve, settings_from_env

    settings = settings_from_env(latency=args.latency_ms / 1000, token_ttl=args.token_ttl, rate_limit=args.rate_limit)

    async def forever() -> None:
        runner = await serve(settings, args.host, args.port)
        print(f"demo API listening on http://{args.host}:{args.port} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        run(forever())
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(
            f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}. Pick another --port.",
            file=sys.stderr,
        )
        return EXIT_ABORTED
    return EXIT_OK


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
