"""The `tickscope` command line: one verb per job.

Heavy imports (torch, textual, polars) happen inside each verb, so `tickscope summary` does not
pay for the engine and `--help` answers at once. Every user error ends as one line on stderr and
exit code 2; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import functools
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


def _checked(convert: Callable[[str], float], noun: str, ok: Callable[[float], bool], must: str) -> Callable[[str], float]:
    """An argparse type: `convert` the text, then insist on `ok`, saying what was wrong."""

    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {noun}: {text!r}") from None
        if not (math.isfinite(value) and ok(value)):
            raise argparse.ArgumentTypeError(f"must be {must}, got {text}")
        return value

    return parse


_positive_seconds = _checked(float, "a number of seconds", lambda v: v > 0, "a positive number of seconds")
_non_negative_ms = _checked(float, "a number of milliseconds", lambda v: v >= 0, "zero or more milliseconds")
_positive_int = _checked(int, "a whole number", lambda v: v > 0, "a positive whole number")


def _number_list(convert: Callable[[str], float]) -> Callable[[str], list[float]]:
    """A comma-separated list of values each checked by `convert` (one of the checkers above)."""

    def parse(text: str) -> list[float]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        values = [convert(item) for item in items]
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"a value appears twice in {text!r}")
        return values

    return parse


def _existing_trace(path: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise CommandError(f"no such file: {path}")
    if p.is_dir():
        raise CommandError(f"{path} is a directory, not a trace file")
    return p


# ----------------------------------------------------------------------------- record & demo


def _add_recording_options(p: argparse.ArgumentParser, *, workload: str | None) -> None:
    p.add_argument("--preset", default="tiny", help="model preset: tiny, ds2-lite, v3-slice (default: tiny)")
    default = f"default: {workload}" if workload else "only its [scheduler] knobs are used; default: the engine's"
    p.add_argument("--workload", default=workload, help=f"workload preset name or TOML file ({default})")
    p.add_argument("--layers", type=_positive_int, help="decoder layers (default: the preset's)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the engine runs (default: the best present)")
    p.add_argument("--seed", type=int, help="seed for the weights and the load (default: weights from 0, load from the workload)")
    p.add_argument("--policy", choices=["continuous", "window", "static"], help="scheduler policy (overrides the workload's)")
    p.add_argument("--window-ms", type=_non_negative_ms, help="collection window in ms (overrides the workload's)")
    p.add_argument("--max-seqs", type=_positive_int, help="max sequences per tick (overrides the workload's)")
    p.add_argument("--max-tokens", type=_positive_int, help="max tokens per tick (overrides the workload's)")
    p.add_argument("--stages", type=_positive_int, help="pipeline stages the layers are split into, balanced by weight bytes (default: 1)")
    p.add_argument("--stage-layers", type=_stage_layers, metavar="N,N,...", help="layers of each stage, first to last, e.g. 3,3,2 (sets --stages)")
    batching = p.add_mutually_exclusive_group()
    batching.add_argument("--micro-batches", type=_positive_int, metavar="M", help="micro-batches each tick's batch is split into (default: 1)")
    batching.add_argument("--micro-batch-size", type=_positive_int, metavar="N", help="sequences per micro-batch: the count follows the batch")


def _stage_layers(text: str) -> tuple[int, ...]:
    from engine.pipeline import parse_stage_layers
    from workloads.errors import ConfigError

    try:
        return parse_stage_layers(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


_DISTRIBUTED_HELP = ("run each of the --stages in its own process on torch.distributed (gloo on the CPU, NCCL "
                     "with a GPU per rank); spawns the ranks, or joins a torchrun job")

# flags that set the engine's pipeline, as SchedulerConfig fields
_PIPELINE_FLAGS = ("stages", "stage_layers", "micro_batches", "micro_batch_size")


def _plan_from_args(args: argparse.Namespace, out: Path, duration_s: float | None):
    from workloads.run import RecordingPlan

    overrides = {
        key: value
        for key, value in (
            ("policy", args.policy),
            ("window_ms", args.window_ms),
            ("max_seqs", args.max_seqs),
            ("max_tokens", args.max_tokens),
            *((flag, getattr(args, flag)) for flag in _PIPELINE_FLAGS),
        )
        if value is not None
    }
    if args.stage_layers and args.stages is None:
        overrides["stages"] = len(args.stage_layers)
    return RecordingPlan(
        preset=args.preset,
        workload=args.workload,
        out=out,
        duration_s=duration_s,
        device=args.device,
        seed=args.seed,
        scheduler_overrides=overrides,
        model_overrides={"layers": args.layers} if args.layers else {},
        distributed=getattr(args, "distributed", False),
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

    if args.distributed and _torchrun_worker():
        return _serve_stage(args)
    out = Path(args.out)
    _check_out(out, args.force)
    plan = _plan_from_args(args, out, args.duration)
    if args.target:
        from workloads.remote import record_remote

        _check_target_options(args)
        run = functools.partial(record_remote, plan, args.target)
    else:
        run = Recording(plan).run
    console = Console(stderr=True)

    if args.quiet:
        result = run()
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

            result = run(on_progress)
    if not args.quiet and args.target:
        console.print(
            f"[green]wrote[/] {out} (client side; the server's trace holds the ticks): "
            f"{result.requests_finished} of {result.requests_submitted} requests finished, "
            f"{result.tokens_generated} tokens" + (" (interrupted)" if result.interrupted else "")
        )
    elif not args.quiet:
        console.print(
            f"[green]wrote[/] {out}: {result.ticks} ticks, {result.requests_finished} of "
            f"{result.requests_submitted} requests finished, {result.tokens_generated} tokens"
            + (" (interrupted)" if result.interrupted else "")
        )
    return 0


def _torchrun_worker() -> bool:
    """Whether torchrun started this process as a rank other than 0 (which serves a stage, no trace)."""
    from engine.distributed import torchrun_env

    env = torchrun_env()
    return env is not None and env[0] != 0


def _serve_stage(args: argparse.Namespace) -> int:
    from workloads.distributed_run import serve_rank

    serve_rank(_plan_from_args(args, Path(args.out), args.duration))
    return 0


def _check_target_options(args: argparse.Namespace) -> None:
    """With --target the engine is the server's: its knobs are set where it is served."""
    engine_flags = ("layers", "policy", "window_ms", "max_seqs", "max_tokens", *_PIPELINE_FLAGS)
    given = [flag for flag in engine_flags if getattr(args, flag) is not None]
    if args.distributed:
        raise CommandError("--distributed runs the engine's stages here; it cannot be combined with --target")
    if given:
        flag = given[0].replace("_", "-")
        raise CommandError(f"--{flag} configures an engine; with --target pass it to `tickscope serve` instead")


def cmd_serve(args: argparse.Namespace) -> int:
    from workloads.serve import ServePlan, serve

    trace = Path(args.trace)
    _check_out(trace, args.force)
    knobs = _plan_from_args(args, trace, None)
    plan = ServePlan(
        trace=trace, preset=knobs.preset, workload=knobs.workload, host=args.host, port=args.port,
        device=knobs.device, seed=knobs.seed, model_name=args.model_name,
        scheduler_overrides=knobs.scheduler_overrides, model_overrides=knobs.model_overrides,
    )

    def on_ready(url: str) -> None:
        # the URL on stdout, flushed: a script that asked for --port 0 reads the port from it
        print(f"serving {url}/v1 (model '{plan.model_name}'), tracing to {trace}; Ctrl-C stops", flush=True)

    result = serve(plan, on_ready)
    print(f"wrote {trace}: {result.ticks} ticks, {result.finished} of {result.requests} requests finished "
          f"({result.rejected} rejected, {result.cancelled} cancelled), {result.tokens_generated} tokens")
    return 0


def _demo_path() -> Path:
    return Path(f"tickscope-demo-{time.strftime('%Y%m%d-%H%M%S')}.msgpack")


def cmd_demo(args: argparse.Namespace) -> int:
    """Record in a child process and follow its trace: the same path as watching any recording."""
    from tui.app import run_dashboard

    out = Path(args.out) if args.out else _demo_path()
    _check_out(out, args.force)
    command = [sys.executable, "-m", "tui.cli", "record", "--quiet", "--out", str(out)]
    for flag in ("preset", "workload", "layers", "device", "seed", "policy", "window_ms", "max_seqs", "max_tokens",
                 *_PIPELINE_FLAGS):
        value = getattr(args, flag)
        if value is not None:
            text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
            command += [f"--{flag.replace('_', '-')}", text]
    if args.distributed:
        command.append("--distributed")
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

    path = Path(args.file)
    _check_followable(path)
    run_dashboard(str(path), "live")
    return 0


def _check_followable(path: Path) -> None:
    """A file that does not exist yet may be a recording about to start, so live mode waits for
    it; a directory, or a file that already starts with something other than a trace, is a mistake."""
    from tracer.framing import MAGIC

    if path.is_dir():
        raise CommandError(f"{path} is a directory, not a trace file")
    if path.exists():
        with path.open("rb") as f:
            start = f.read(len(MAGIC))
        if start != MAGIC[: len(start)]:
            raise CommandError(f"{path}: not a tickscope trace (bad magic) at byte 0")


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


# ----------------------------------------------------------------------------- compare & sweep


def cmd_compare(args: argparse.Namespace) -> int:
    import tracer

    a, b = _existing_trace(args.a), _existing_trace(args.b)
    if args.report is None:
        from tui.compare_app import run_compare

        run_compare(str(a), str(b), align=args.align)
        return 0
    from rich.console import Console

    from tracer.compare import delta_table
    from tracer.report import write_report

    out = Path(args.report)
    if out.exists() and not out.is_dir():
        raise CommandError(f"{out} is a file; --report takes a directory")
    traces = tracer.load(a), tracer.load(b)
    report = write_report(*traces, out)
    Console().print(delta_table(report.comparison, title=f"A {report.comparison.a_name} vs B {report.comparison.b_name}"))
    for path, trace in zip((a, b), traces):
        for problem in trace.problems:
            print(f"tickscope: warning: {path}: {problem}", file=sys.stderr)
    print(f"wrote {report.markdown} and {len(report.images)} figures")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tracer.plots import plot_sweep
    from workloads.run import prepare
    from workloads.sweep import KNEE_RULE, LATENCY_NAME, SweepPlan, knee, run_sweep

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CommandError(f"{out} is a file; --out takes a directory")
    plan = SweepPlan(
        preset=args.preset,
        workload=args.workload,
        windows_ms=args.window,
        out_dir=out,
        max_seqs=args.max_seqs or (),
        duration_s=args.duration,
        device=args.device,
        seed=args.seed,
        model_overrides={"layers": args.layers} if args.layers else {},
    )
    for point in plan.grid():  # every knob checked before the first recording starts
        _, _, spec = prepare(plan.recording_plan(point))
        if args.duration is None and not spec.duration_s and not spec.requests:
            raise CommandError(f"workload {args.workload} runs until stopped; give --duration")
    console = Console(stderr=True)
    grid = plan.grid()
    columns = [
        TextColumn("[bold]{task.fields[point]}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("{task.fields[note]}"),
    ]
    with Progress(*columns, console=console, disable=args.quiet) as progress:
        task = progress.add_task("sweep", total=len(grid), point="", note="")
        current = 0  # the grid point being recorded: the bar's whole part

        def on_point(i: int, point, skipped: bool) -> None:
            nonlocal current
            current = i
            note = "already recorded: skipped" if skipped else "recording"
            progress.update(task, completed=i + (1 if skipped else 0), point=point.name, note=note)

        def on_progress(stats) -> None:
            share = min(stats.elapsed_s / args.duration, 1.0) if args.duration else 0.0
            progress.update(task, completed=current + share,
                            note=f"{stats.finished} requests done, {stats.tokens_per_s:,.0f} tok/s")

        rows = run_sweep(plan, on_point=on_point, on_progress=on_progress)
        progress.update(task, completed=len(grid), point="done", note="")
    points = [row.curve_point() for row in rows]
    knee_at = knee(points)
    Console().print(_sweep_table(rows, knee_at, LATENCY_NAME))
    print(KNEE_RULE)
    plot = out / "sweep.png"
    plot_sweep(points, knee_at, plot, latency_name=LATENCY_NAME, rule=KNEE_RULE)
    print(f"wrote {plot}; compare any two with: tickscope compare {rows[0].path} {rows[-1].path}")
    return 0


def _sweep_table(rows, knee_at: int | None, latency_name: str):
    """One row per grid point, narrow enough for 80 columns (the point's name says its knobs)."""
    from rich import box
    from rich.table import Table

    def ms(value: float | None) -> str:
        if value is None:
            return "—"
        return f"{value * 1000:.1f}" if value < 0.1 else f"{value * 1000:.0f}"

    def num(value: float | None, fmt: str) -> str:
        return "—" if value is None else format(value, fmt)

    table = Table(title=f"sweep ({latency_name} and TTFT in ms)", header_style="bold", box=box.SIMPLE_HEAD,
                  pad_edge=False, collapse_padding=True)
    for name in ("point", "tok/s", "p50", "p99", "TTFT p99", "batch", "active", "rejected", "", "run"):
        table.add_column(name, justify="left" if name in ("point", "", "run") else "right", no_wrap=True)
    for i, row in enumerate(rows):
        s = row.summary
        table.add_row(
            row.point.name, num(s.get("throughput_tok_s"), ".0f"), ms(s.get("e2e_p50_s")),
            ms(s.get("e2e_p99_s")), ms(s.get("ttft_p99_s")), num(s.get("mean_batch_seqs"), ".1f"),
            num(s.get("experts_active_frac"), ".0%"), str(s.get("requests_rejected", "—")),
            "[bold yellow]◀ knee[/]" if i == knee_at else "", "kept" if row.skipped else "new",
        )
    return table


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
    p.add_argument("--distributed", action="store_true", help=_DISTRIBUTED_HELP)
    p.add_argument("--duration", type=_positive_seconds, help="stop recording after this many seconds (default: until you quit)")
    p.add_argument("--out", help="trace file (default: tickscope-demo-DATE-TIME.msgpack here)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")

    p = verb("record", cmd_record, "record a session headless to a trace file")
    _add_recording_options(p, workload="smoke")
    p.add_argument("--distributed", action="store_true", help=_DISTRIBUTED_HELP)
    p.add_argument("--duration", type=_positive_seconds, help="seconds to run (default: the workload's; Ctrl-C stops cleanly)")
    p.add_argument("--out", required=True, help="trace file to write (.msgpack)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--target", metavar="URL", help="drive a running `tickscope serve` (or any OpenAI-compatible server) at URL over HTTP; --out then gets the client-side trace")

    p = verb("serve", cmd_serve, "serve an OpenAI-compatible /v1/completions on the engine, tracing every tick")
    _add_recording_options(p, workload=None)
    p.add_argument("--trace", required=True, help="trace file to write (.msgpack)")
    p.add_argument("--force", action="store_true", help="replace --trace if it exists")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one (default: 8000)")
    p.add_argument("--model-name", default="tickscope", help="the model id clients ask for (default: tickscope)")

    p = verb("live", cmd_live, "follow a trace that is being written")
    p.add_argument("file")

    p = verb("replay", cmd_replay, "replay a recorded trace in the dashboard")
    p.add_argument("file")

    p = verb("compare", cmd_compare, "two recordings side by side, or a report of how they differ")
    p.add_argument("a", help="trace A (the baseline)")
    p.add_argument("b", help="trace B")
    p.add_argument("--report", metavar="DIR", help="write DIR/report.md and PNG figures instead of opening the dashboard")
    p.add_argument("--align", choices=["time", "tick"], default="time", help="dashboard: align by time since start or by tick (default: time; `t` toggles)")

    p = verb("sweep", cmd_sweep, "record a grid of collection windows (x max sequences), then a table and a throughput-latency plot")
    p.add_argument("--preset", default="tiny", help="model preset (default: tiny)")
    p.add_argument("--workload", required=True, help="workload preset name or TOML file")
    p.add_argument("--window", type=_number_list(_non_negative_ms), required=True, help="collection windows in ms, e.g. 0,5,20,50,200 (0 = continuous batching)")
    p.add_argument("--max-seqs", type=_number_list(_positive_int), help="max sequences per tick, e.g. 32,128 (default: the workload's)")
    p.add_argument("--duration", type=_positive_seconds, help="seconds per grid point (default: the workload's)")
    p.add_argument("--out", required=True, help="directory for the traces (w5_s32.msgpack, ...) and sweep.png")
    p.add_argument("--layers", type=_positive_int, help="decoder layers (default: the preset's)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the engine runs (default: the best present)")
    p.add_argument("--seed", type=int, help="seed for the weights and the load (default: as record)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

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
