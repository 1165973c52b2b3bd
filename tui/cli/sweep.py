"""The sweep verb: a grid of recordings, a table of what a token costs against TTFT, and its plot."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tui.cli.options import CommandError, costing_options

if TYPE_CHECKING:  # imported where used: they pull in polars and the engine
    from rich.table import Table

    from tracer.compare import Costing
    from workloads.loadgen import Progress as LoadProgress
    from workloads.sweep import GridPoint, SweepRow


def cmd_sweep(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tracer.plots import plot_sweep
    from workloads.run import prepare
    from workloads.sweep import KNEE_RULE, LATENCY_NAME, SweepPlan, cost_measure, knee, run_sweep

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CommandError(f"{out} is a file; --out takes a directory")
    costing = costing_options(args)
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
        if args.duration is None and not spec.ends_by_itself:
            raise CommandError(f"workload {args.workload} runs until stopped; give --duration")
    console = Console(stderr=True)
    grid = plan.grid()
    columns = [
        TextColumn("[bold]{task.fields[point]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}"),
    ]
    with Progress(*columns, console=console, disable=args.quiet) as progress:
        task = progress.add_task("sweep", total=len(grid), point="", note="")
        current = 0  # the grid point being recorded: the bar's whole part

        def on_point(i: int, point: GridPoint, skipped: bool) -> None:
            nonlocal current
            current = i
            note = "already recorded: skipped" if skipped else "recording"
            progress.update(task, completed=i + (1 if skipped else 0), point=point.name, note=note)

        def on_progress(stats: LoadProgress) -> None:
            share = min(stats.elapsed_s / args.duration, 1.0) if args.duration else 0.0
            progress.update(
                task,
                completed=current + share,
                note=f"{stats.finished} requests done, {stats.tokens_per_s:,.0f} tok/s served",
            )

        rows = run_sweep(plan, costing=costing, on_point=on_point, on_progress=on_progress)
        progress.update(task, completed=len(grid), point="done", note="")
    measure = cost_measure([row.summary for row in rows], costing)
    points = [row.curve_point(measure) for row in rows]
    knee_at = knee(points)
    Console().print(_sweep_table(rows, knee_at, costing))
    print(f"curve: {measure.name}, and capacity, against {LATENCY_NAME} p50 and p99")
    print(KNEE_RULE)
    for row in rows:
        for why in (row.summary.get("unavailable"), row.not_modelled):
            if why:
                print(f"{row.point.name}: {why}")
    plot = out / "sweep.png"
    plot_sweep(points, knee_at, plot, cost_name=measure.name, latency_name=LATENCY_NAME, rule=KNEE_RULE)
    print(f"wrote {plot}; compare any two with: tickscope compare {rows[0].path} {rows[-1].path}")
    return 0


def _sweep_table(rows: Sequence[SweepRow], knee_at: int | None, costing: Costing) -> Table:
    """One row per grid point, narrow enough for 80 columns (the point's name says its knobs)."""
    from rich import box
    from rich.table import Table

    def ms(value: float | None) -> str:
        if value is None:
            return "—"
        return f"{value * 1000:.1f}" if value < 0.1 else f"{value * 1000:.0f}"

    def num(value: float | None, fmt: str) -> str:
        return "—" if value is None else format(value, fmt)

    def usd(value: float | None) -> str:
        return "—" if value is None else f"{value:,.2f}" if value >= 0.01 else f"{value:.1e}"

    # (column, its value in a row's summary)
    cells: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("served", lambda s: num(s.get("served_rate_tok_s"), ",.0f")),
        ("capacity", lambda s: num(s.get("capacity_output_tok_s"), ",.0f")),
        ("dev ms", lambda s: ms(s.get("device_s_per_output_token"))),
    ]
    if costing.price is not None:
        cells.append(("$ meas", lambda s: usd(s.get("usd_per_mtok_measured"))))
    if costing.accelerator is not None:
        cells.append(("$ model", lambda s: usd((s.get("accelerator") or {}).get("usd_per_mtok_modelled"))))
    cells += [
        ("p50", lambda s: ms(s.get("ttft_p50_s"))),
        ("p99", lambda s: ms(s.get("ttft_p99_s"))),
        ("batch", lambda s: num(s.get("mean_batch_seqs"), ".1f")),
        ("rej", lambda s: str(s.get("requests_rejected", "—"))),
    ]
    dollars = " · $ per M output tok" if costing.price is not None or costing.accelerator is not None else ""
    # no padding: the box's own column divider is the one space between columns, so that every column
    # fits in 80 with both $ columns
    title = f"sweep: output tok/s · dev ms per output tok · TTFT p50 and p99 in ms{dollars}"
    table = Table(title=title, header_style="bold", box=box.SIMPLE_HEAD, padding=0)
    for name in ("point", *(name for name, _ in cells), "", "run"):
        table.add_column(name, justify="left" if name in ("point", "", "run") else "right", no_wrap=True)
    for i, row in enumerate(rows):
        table.add_row(
            row.point.name,
            *(cell(row.summary) for _, cell in cells),
            "[bold yellow]◀ knee[/]" if i == knee_at else "",
            "kept" if row.skipped else "new",
        )
    return table
