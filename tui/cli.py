"""The `tickscope` command line: one verb per job.

Heavy imports (torch, textual, polars) happen inside each verb, so `tickscope summary` does not
pay for the engine and `--help` answers at once. Every user error ends as one line on stderr and
exit code 2; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, NoReturn, Sequence


class CommandError(Exception):
    """A mistake in how the command was called."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _non_negative_ms(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of milliseconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more milliseconds, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}")
    return value


def _existing_trace(path: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise CommandError(f"no such file: {path}")
    if p.is_dir():
        raise CommandError(f"{path} is a directory, not a trace file")
    return p


# ----------------------------------------------------------------------------- record & demo


def _add_recording_options(p: argparse.ArgumentParser, *, workload: str) -> None:
    p.add_argument("--preset", default="tiny", help="model preset: tiny, ds2-lite, v3-slice (default: tiny)")
    p.add_argument("--workload", default=workload, help=f"workload preset name or TOML file (default: {workload})")
    p.add_argument("--layers", type=_positive_int, help="decoder layers (default: the preset's)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the engine runs (default: the best present)")
    p.add_argument("--seed", type=int, help="seed for the weights and the load (default: weights from 0, load from the workload)")
    p.add_argument("--policy", choices=["continuous", "window", "static"], help="scheduler policy (overrides the workload's)")
    p.add_argument("--window-ms", type=_non_negative_ms, help="collection window in ms (overrides the workload's)")
    p.add_argument("--max-seqs", type=_positive_int, help="max sequences per tick (overrides the workload's)")
    p.add_argument("--max-tokens", type=_positive_int, help="max tokens per tick (overrides the workload's)")


def _plan_from_args(args: argparse.Namespace, out: Path, duration_s: float | None):
    from workloads.run import RecordingPlan

    overrides = {
        key: value
        for key, value in (
            ("policy", args.policy),
            ("window_ms", args.window_ms),
            ("max_seqs", args.max_seqs),
            ("max_tokens", args.max_tokens),
        )
        if value is not None
    }
    return RecordingPlan(
        preset=args.preset,
        workload=args.workload,
        out=out,
        duration_s=duration_s,
        device=args.device,
        seed=args.seed,
        scheduler_overrides=overrides,
        model_overrides={"layers": args.layers} if args.layers else {},
    )


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise CommandError(f"{out} already exists; pick another --out or pass --force to replace it")
    if out.is_dir():
        raise CommandError(f"{out} is a directory; --out takes a file name")
    if not out.parent.exists():
        raise CommandError(f"directory {out.parent} does not exist")


def cmd_record(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from workloads.run import Recording

    out = Path(args.out)
    _check_out(out, args.force)
    plan = _plan_from_args(args, out, args.duration)
    recording = Recording(plan)
    console = Console(stderr=True)

    if args.quiet:
        result = recording.run()
    else:
        columns = [
            SpinnerColumn(),
            TextColumn(f"recording [bold]{out}[/]"),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[done]} requests done"),
            TextColumn("{task.fields[tok_s]:,.0f} tok/s"),
        ]
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("record", total=plan.duration_s, done=0, tok_s=0.0)

            def on_progress(stats) -> None:
                progress.update(task, completed=stats.elapsed_s, done=stats.finished, tok_s=stats.tokens_per_s)

            result = recording.run(on_progress)
    if not args.quiet:
        console.print(
            f"[green]wrote[/] {out}: {result.ticks} ticks, {result.requests_finished} of "
            f"{result.requests_submitted} requests finished, {result.tokens_generated} tokens"
            + (" (interrupted)" if result.interrupted else "")
        )
    return 0


def _demo_path() -> Path:
    return Path(f"tickscope-demo-{time.strftime('%Y%m%d-%H%M%S')}.msgpack")


def cmd_demo(args: argparse.Namespace) -> int:
    """Record in a child process and follow its trace: the same path as watching any recording."""
    from tui.app import run_dashboard

    out = Path(args.out) if args.out else _demo_path()
    _check_out(out, args.force)
    command = [sys.executable, "-m", "tui.cli", "record", "--quiet", "--out", str(out)]
    for flag in ("preset", "workload", "layers", "device", "seed", "policy", "window_ms", "max_seqs", "max_tokens"):
        value = getattr(args, flag)
        if value is not None:
            command += [f"--{flag.replace('_', '-')}", str(value)]
    if args.duration:
        command += ["--duration", str(args.duration)]
    log_path = out.with_suffix(out.suffix + ".log")
    with open(log_path, "wb") as log:
        child = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
    try:
        _wait_for_file(out, child)
        run_dashboard(str(out), "live")
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    message = log_path.read_text(errors="replace").strip()
    if child.returncode not in (0, -signal.SIGINT, 130) and message:
        print(f"tickscope: error: the recording stopped: {message.splitlines()[-1]}", file=sys.stderr)
        return 1
    log_path.unlink(missing_ok=True)
    print(f"trace written to {out}")
    return 0


def _wait_for_file(path: Path, child: subprocess.Popen) -> None:
    """The dashboard can follow a file that is not there yet, but a child that failed should say why now."""
    deadline = time.monotonic() + 120
    while not path.exists():
        if child.poll() is not None:
            return
        if time.monotonic() > deadline:
            raise CommandError(f"the recording did not create {path} within 120 s")
        time.sleep(0.05)


# ----------------------------------------------------------------------------- reading traces


def cmd_live(args: argparse.Namespace) -> int:
    from tui.app import run_dashboard

    run_dashboard(str(Path(args.file)), "live")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from tui.app import run_dashboard

    path = _existing_trace(args.file)
    import tracer

    tracer.open_trace(path)  # refuse a non-trace before the terminal is taken over
    run_dashboard(str(path), "replay")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    import tracer

    path = _existing_trace(args.file)
    trace = tracer.load(path)
    summary = tracer.summarize(trace)
    if args.json:
        print(json.dumps(summary, indent=None if args.compact else 2))
    else:
        from rich.console import Console

        Console().print(tracer.summary_table(summary, title=str(path)))
    for problem in trace.problems:
        print(f"tickscope: warning: {path}: {problem}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import tracer

    path = _existing_trace(args.file)
    trace = tracer.load(path)
    out = Path(args.out)
    if args.to == "perfetto":
        tracer.export_perfetto(trace, out)
    elif args.to == "parquet":
        tracer.export_parquet(trace, out)
    else:
        tracer.export_csv(trace, out)
    print(f"wrote {out}")
    return 0


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tickscope", description="Record, watch and compare how a Mixture-of-Experts model is served, tick by tick.")
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser, metavar="VERB")

    def verb(name: str, handler: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=help, description=help)
        p.set_defaults(handler=handler)
        return p

    p = verb("demo", cmd_demo, "record the tiny engine on this machine's best device and watch it live")
    _add_recording_options(p, workload="demo")
    p.add_argument("--duration", type=_positive_seconds, help="stop recording after this many seconds (default: until you quit)")
    p.add_argument("--out", help="trace file (default: tickscope-demo-DATE-TIME.msgpack here)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")

    p = verb("record", cmd_record, "record a session headless to a trace file")
    _add_recording_options(p, workload="smoke")
    p.add_argument("--duration", type=_positive_seconds, help="seconds to run (default: the workload's; Ctrl-C stops cleanly)")
    p.add_argument("--out", required=True, help="trace file to write (.msgpack)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress line")

    p = verb("live", cmd_live, "follow a trace that is being written")
    p.add_argument("file")

    p = verb("replay", cmd_replay, "replay a recorded trace in the dashboard")
    p.add_argument("file")

    p = verb("summary", cmd_summary, "print a recording's figures")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    p.add_argument("--compact", action="store_true", help="with --json: on one line")

    p = verb("export", cmd_export, "export a trace for other tools")
    p.add_argument("file")
    p.add_argument("--to", required=True, choices=["perfetto", "parquet", "csv"], help="perfetto: one JSON file; parquet, csv: a directory")
    p.add_argument("out", help="output file (perfetto) or directory (parquet, csv)")
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from tracer import TraceFormatError
    from workloads.errors import ConfigError

    return (CommandError, ConfigError, TraceFormatError)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except _user_errors() as error:
        print(f"tickscope {args.verb}: error: {error}", file=sys.stderr)
        return 2
    except FileNotFoundError as error:
        print(f"tickscope {args.verb}: error: no such file: {error.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
