"""The verbs that read traces: live, replay, summary, export and compare."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tui.cli.options import CommandError, check_followable, cost_options, costing_options, existing_trace


def cmd_live(args: argparse.Namespace) -> int:
    from tui.app import run_dashboard

    path = Path(args.file)
    check_followable(path)
    run_dashboard(str(path), "live")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from tui.app import run_dashboard

    # run_dashboard opens the trace before it takes the terminal, so a non-trace (or an unknown
    # accelerator) is refused in one line
    run_dashboard(str(existing_trace(args.file)), "replay", costing=lambda config: cost_options(args, config))
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    import tracer

    path = existing_trace(args.file)
    trace = tracer.load(path)
    summary = tracer.summarize(trace, *cost_options(args, trace.header.config))
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

    path = existing_trace(args.file)
    trace = tracer.load(path)
    out = Path(args.out)
    tracer.export(trace, args.to, out)  # args.to is one of tracer.EXPORTS (the parser's choices)
    print(f"wrote {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import tracer

    a, b = existing_trace(args.a), existing_trace(args.b)
    costing = costing_options(args)
    if args.report is None:
        from tui.compare_app import run_compare

        run_compare(str(a), str(b), align=args.align, costing=costing)
        return 0
    from rich.console import Console

    from tracer.compare import delta_table
    from tracer.report import write_report

    out = Path(args.report)
    if out.exists() and not out.is_dir():
        raise CommandError(f"{out} is a file; --report takes a directory")
    traces = tracer.load(a), tracer.load(b)
    report = write_report(*traces, out, costing=costing)
    title = f"A {report.comparison.a_name} vs B {report.comparison.b_name}"
    Console().print(delta_table(report.comparison, title=title))
    for path, trace in zip((a, b), traces):
        for problem in trace.problems:
            print(f"tickscope: warning: {path}: {problem}", file=sys.stderr)
    print(f"wrote {report.markdown} and {len(report.images)} figures")
    return 0
