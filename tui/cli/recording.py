"""The verbs that record: record, serve, demo, and watch (a server's metrics)."""

from __future__ import annotations

import argparse
import functools
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tui.cli.options import ENGINE_FLAGS, CommandError, check_out, plan_from_args, traffic_argv

if TYPE_CHECKING:
    from workloads.loadgen import Progress as LoadProgress
    from workloads.run import RecordingResult


def cmd_record(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from workloads.run import Recording
    from workloads.traffic import summary_line

    if args.distributed and _torchrun_worker():
        return _serve_stage(args)
    out = Path(args.out)
    check_out(out, args.force)
    plan = plan_from_args(args, out, args.duration)
    run: Callable[[Callable[[LoadProgress], None] | None], RecordingResult]
    total = plan.duration_s
    if args.target:
        from workloads.remote import WatchPlan, record_remote

        _check_target_options(args)
        watch = None if args.watch is None else WatchPlan(args.watch or args.target, args.interval)
        run = functools.partial(record_remote, plan, args.target, watch=watch)
    else:
        if args.watch is not None:
            raise CommandError("--watch scrapes the server that --target drives; give --target URL too")
        recording = Recording(plan)
        run = recording.run
        traffic = recording.spec.arrivals.traffic
        if total is None and traffic is not None and traffic.scan is not None:
            total = traffic.scan.replay_s  # a trace's window ends the run, unless --duration does first
    console = Console(stderr=True)

    if args.quiet:
        result = run(None)
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
            task = progress.add_task("record", total=total, done=0, tok_s=0.0)

            def on_progress(stats: LoadProgress) -> None:
                progress.update(task, completed=stats.elapsed_s, done=stats.finished, tok_s=stats.tokens_per_s)

            result = run(on_progress)
    if not args.quiet:
        what = "client side, ticks in the server's trace" if args.target else f"{result.ticks} ticks"
        console.print(
            f"[green]wrote[/] {out}: {what}, {result.requests_finished} of {result.requests_submitted} "
            f"requests finished, {result.tokens_generated} tokens" + (" (interrupted)" if result.interrupted else "")
        )
        if result.traffic is not None:
            console.print(f"traffic {summary_line(result.traffic)}")
    return 0


def _torchrun_worker() -> bool:
    """Whether torchrun started this process as a rank other than 0 (which serves a stage, no trace)."""
    from engine.distributed import torchrun_env

    env = torchrun_env()
    return env is not None and env[0] != 0


def _serve_stage(args: argparse.Namespace) -> int:
    from workloads.distributed_run import serve_rank

    serve_rank(plan_from_args(args, Path(args.out), args.duration))
    return 0


def _check_target_options(args: argparse.Namespace) -> None:
    """With --target the engine is the server's: its knobs are set where it is served."""
    given = [flag for flag in ENGINE_FLAGS if getattr(args, flag) is not None]
    if args.distributed:
        raise CommandError("--distributed runs the engine's stages here; it cannot be combined with --target")
    if given:
        flag = given[0].replace("_", "-")
        raise CommandError(f"--{flag} configures an engine; with --target pass it to `tickscope serve` instead")


def cmd_serve(args: argparse.Namespace) -> int:
    from workloads.openai_api import API_KEY_ENV
    from workloads.serve import ServePlan, reachable_from_outside, serve

    trace = Path(args.trace)
    check_out(trace, args.force)
    knobs = plan_from_args(args, trace, None)
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    if api_key is not None and not api_key.strip():
        raise CommandError("--api-key must not be empty")
    if api_key is None and reachable_from_outside(args.host):
        print(
            f"tickscope serve: warning: listening on {args.host} without an API key: anyone who can reach this "
            f"port can use the engine (pass --api-key or set {API_KEY_ENV})",
            file=sys.stderr,
            flush=True,
        )
    plan = ServePlan(
        trace=trace,
        preset=knobs.preset,
        model=knobs.model,
        workload=knobs.workload,
        host=args.host,
        port=args.port,
        device=knobs.device,
        seed=knobs.seed,
        model_name=args.model_name,
        scheduler_overrides=knobs.scheduler_overrides,
        model_overrides=knobs.model_overrides,
        api_key=api_key,
        max_body_bytes=args.max_body_bytes,
        max_prompt_tokens=args.max_prompt_tokens,
    )

    def on_ready(url: str, name: str) -> None:
        # the URL on stdout, flushed: a script that asked for --port 0 reads the port from it
        print(f"serving {url}/v1 (model '{name}'), tracing to {trace}; Ctrl-C stops", flush=True)

    result = serve(plan, on_ready)
    print(
        f"wrote {trace}: {result.ticks} ticks, {result.finished} of {result.requests} requests finished "
        f"({result.rejected} rejected, {result.cancelled} cancelled, {result.failed} failed), "
        f"{result.tokens_generated} tokens"
    )
    return 0


def _demo_path() -> Path:
    return Path(f"tickscope-demo-{time.strftime('%Y%m%d-%H%M%S')}.msgpack")


def cmd_demo(args: argparse.Namespace) -> int:
    """Record in a child process and follow its trace: the same path as watching any recording."""
    from workloads.run import prepare

    out = Path(args.out) if args.out else _demo_path()
    check_out(out, args.force)
    prepare(plan_from_args(args, out, args.duration))  # a bad flag is said here, not in the child's log
    command = [sys.executable, "-m", "tui.cli", "record", "--quiet", "--out", str(out)]
    for flag in ("preset", "model", "workload", "device", "seed", *ENGINE_FLAGS):
        value = getattr(args, flag)
        if value is not None:
            text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
            command += [f"--{flag.replace('_', '-')}", text]
    if args.distributed:
        command.append("--distributed")
    if args.duration:
        command += ["--duration", str(args.duration)]
    command += traffic_argv(args)
    # a checkpoint's weights are read before the trace starts: tens of GB take minutes
    return _record_and_follow(command, out, "demo", 120 if args.model is None else 1800)


def _record_and_follow(command: list[str], out: Path, verb: str, start_s: int = 120) -> int:
    """Run the recording `command` (writing `out`, within `start_s`) in a child process and follow its
    trace live until the user quits: the same path as watching any recording. The child is stopped as
    Ctrl-C stops it."""
    from tui.app import run_dashboard

    log_path = out.with_suffix(out.suffix + ".log")
    with open(log_path, "wb") as log:
        child = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
    try:
        if _wait_for_file(out, child, start_s):
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
    if child.returncode not in (0, -signal.SIGINT, 130):
        last = message.splitlines()[-1] if message else f"exit code {child.returncode}"
        print(f"tickscope {verb}: error: the recording stopped: {last} (full log: {log_path})", file=sys.stderr)
        return 1
    log_path.unlink(missing_ok=True)
    print(f"trace written to {out}")
    return 0


def _wait_for_file(path: Path, child: subprocess.Popen[bytes], limit_s: int) -> bool:
    """Whether the recording created its trace: the dashboard could follow a file that is not there
    yet, but a child that failed before creating it should say why at once."""
    deadline = time.monotonic() + limit_s
    while not path.exists():
        if child.poll() is not None:
            return False
        if time.monotonic() > deadline:
            raise CommandError(f"the recording did not create {path} within {limit_s} s")
        time.sleep(0.05)
    return True


def cmd_watch(args: argparse.Namespace) -> int:
    """Headless with --out; else into a temporary file, in a child process, followed live as `demo` is."""
    import asyncio

    from workloads.watch import first_scrape, metrics_url, watch

    if args.out is None:
        url = metrics_url(args.url)
        asyncio.run(first_scrape(url))  # a URL that is no server's metrics is said here, not in the child's log
        out = Path(tempfile.gettempdir()) / f"tickscope-watch-{time.strftime('%Y%m%d-%H%M%S')}.msgpack"
        check_out(out, False)
        command = [sys.executable, "-m", "tui.cli", "watch", args.url, "--quiet", "--out", str(out)]
        command += ["--interval", str(args.interval)] + (["--duration", str(args.duration)] if args.duration else [])
        return _record_and_follow(command, out, "watch")
    out = Path(args.out)
    check_out(out, args.force)

    def on_start(source: str) -> None:
        if not args.quiet:
            print(f"watching {args.url} ({source}) every {args.interval:g} s into {out}; Ctrl-C stops", flush=True)

    result = watch(args.url, out, args.interval, args.duration, on_start)
    if not args.quiet:
        print(f"wrote {out}: {result.scrapes} scrapes of a {result.source} server")
    return 0
