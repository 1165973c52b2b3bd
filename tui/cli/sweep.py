"""The sweep verb: a grid of recordings, a table and the throughput-latency plot."""

from __future__ import annotations

import argparse
from pathlib import Path

from tui.cli.options import CommandError

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
