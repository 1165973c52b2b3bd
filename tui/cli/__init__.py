"""The `tickscope` command line: one verb per job.

Heavy imports (torch, textual, polars) happen inside each verb, so `tickscope summary` does not
pay for the engine and `--help` answers at once. Every user error ends as one line on stderr and
exit code 2; a fault that stops a run (a failed tick, a lost rank or target, a full disk: README,
"When things go wrong") as one line and exit code 1; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from engine.choices import DEVICES
from tui.cli.options import (
    DISTRIBUTED_HELP,
    CommandError,
    Parser,
    add_cost_options,
    add_model_options,
    add_recording_options,
    add_traffic_options,
    non_negative_ms,
    number_list,
    positive_int,
    positive_seconds,
)
from tui.cli.reading import cmd_compare, cmd_export, cmd_live, cmd_replay, cmd_summary
from tui.cli.recording import cmd_demo, cmd_record, cmd_serve, cmd_watch
from tui.cli.sweep import cmd_sweep


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="tickscope",
        description="Record, watch and compare how a Mixture-of-Experts model is served, tick by tick.",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=Parser, metavar="VERB")

    def verb(name: str, handler: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=help, description=help)
        p.set_defaults(handler=handler)
        return p

    p = verb("demo", cmd_demo, "record the tiny engine on this machine's best device and watch it live")
    add_recording_options(p, workload="demo")
    p.add_argument("--distributed", action="store_true", help=DISTRIBUTED_HELP)
    p.add_argument(
        "--duration", type=positive_seconds, help="stop recording after this many seconds (default: until you quit)"
    )
    p.add_argument("--out", help="trace file (default: tickscope-demo-DATE-TIME.msgpack here)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    add_traffic_options(p)

    p = verb("record", cmd_record, "record a session headless to a trace file")
    add_recording_options(p, workload="smoke")
    p.add_argument("--distributed", action="store_true", help=DISTRIBUTED_HELP)
    p.add_argument(
        "--duration", type=positive_seconds, help="seconds to run (default: the workload's; Ctrl-C stops cleanly)"
    )
    p.add_argument("--out", required=True, help="trace file to write (.msgpack)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument(
        "--target",
        metavar="URL",
        help="drive a running `tickscope serve` (or any OpenAI-compatible server) at URL over HTTP; "
        "--out then gets the client-side trace",
    )
    add_traffic_options(p)
    p.add_argument(
        "--watch",
        nargs="?",
        const="",
        metavar="METRICS_URL",
        help="with --target: also scrape the server's /metrics (or METRICS_URL) into the same trace, "
        "as `tickscope watch` does",
    )
    p.add_argument(
        "--interval", type=positive_seconds, default=0.5, help="with --watch: seconds between scrapes (default: 0.5)"
    )

    p = verb(
        "serve",
        cmd_serve,
        "serve OpenAI-compatible completions and chat on the engine, with /health and Prometheus /metrics, "
        "tracing every tick",
    )
    add_recording_options(p, workload=None)
    p.add_argument("--trace", required=True, help="trace file to write (.msgpack)")
    p.add_argument("--force", action="store_true", help="replace --trace if it exists")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one (default: 8000)")
    p.add_argument(
        "--model-name", help="the model id clients ask for (default: the --model directory's name, else tickscope)"
    )
    from workloads.openai_api import MAX_BODY_BYTES  # no torch behind it

    p.add_argument(
        "--api-key",
        help="require `Authorization: Bearer KEY` on /v1/* (default: $TICKSCOPE_API_KEY, or no key); "
        "/health and /metrics stay open",
    )
    p.add_argument(
        "--max-body-bytes",
        type=positive_int,
        default=MAX_BODY_BYTES,
        help=f"answer a larger request body 413 (default: {MAX_BODY_BYTES:,})",
    )
    p.add_argument(
        "--max-prompt-tokens",
        type=positive_int,
        help="answer a longer prompt 400 (default: the model's context less one token)",
    )

    p = verb(
        "watch",
        cmd_watch,
        "record a running vLLM, SGLang or tickscope server's Prometheus metrics as a trace, and watch it live",
    )
    p.add_argument("url", help="the server (its /metrics is scraped) or its metrics page, e.g. http://127.0.0.1:8000")
    p.add_argument("--out", help="trace file to write, headless (default: a temporary file, followed in the dashboard)")
    p.add_argument(
        "--interval", type=positive_seconds, default=0.5, help="seconds between scrapes; each is a tick (default: 0.5)"
    )
    p.add_argument("--duration", type=positive_seconds, help="stop after this many seconds (default: Ctrl-C stops)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no start and end lines")

    p = verb("live", cmd_live, "follow a trace that is being written")
    p.add_argument("file")

    p = verb("replay", cmd_replay, "replay a recorded trace in the dashboard")
    p.add_argument("file")
    add_cost_options(p)

    p = verb("compare", cmd_compare, "two recordings side by side, or a report of how they differ")
    p.add_argument("a", help="trace A (the baseline)")
    p.add_argument("b", help="trace B")
    p.add_argument(
        "--report", metavar="DIR", help="write DIR/report.md and PNG figures instead of opening the dashboard"
    )
    p.add_argument(
        "--align",
        choices=["time", "tick"],
        default="time",
        help="dashboard: align by time since start or by tick (default: time; `t` toggles)",
    )
    add_cost_options(p)

    p = verb(
        "sweep",
        cmd_sweep,
        "record a grid of collection windows (x max sequences), then a table and a plot of "
        "what a token costs against time to first token",
    )
    add_model_options(p)
    p.add_argument("--workload", required=True, help="workload preset name or TOML file")
    p.add_argument(
        "--window",
        type=number_list(non_negative_ms),
        required=True,
        help="collection windows in ms, e.g. 0,5,20,50,200 (0 = continuous batching)",
    )
    p.add_argument(
        "--max-seqs",
        type=number_list(positive_int),
        help="max sequences per tick, e.g. 32,128 (default: the workload's)",
    )
    p.add_argument("--duration", type=positive_seconds, help="seconds per grid point (default: the workload's)")
    p.add_argument("--out", required=True, help="directory for the traces (w5_s32.msgpack, ...) and sweep.png")
    p.add_argument(
        "--device", default="auto", choices=DEVICES, help="where the engine runs (default: the best present)"
    )
    p.add_argument("--seed", type=int, help="seed for the weights and the load (default: as record)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_cost_options(p)

    p = verb("summary", cmd_summary, "print a recording's figures")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    p.add_argument("--compact", action="store_true", help="with --json: on one line")
    add_cost_options(p)

    from tracer.exports import EXPORTS  # the formats, without polars

    p = verb("export", cmd_export, "export a trace for other tools")
    p.add_argument("file")
    p.add_argument(
        "--to",
        required=True,
        choices=list(EXPORTS),
        help="; ".join(f"{f.name}: {f.description}" for f in EXPORTS.values()),
    )
    made = {
        output: ", ".join(f.name for f in EXPORTS.values() if f.output == output) for output in ("file", "directory")
    }
    p.add_argument(
        "out", help="output " + " or ".join(f"{output} ({names})" for output, names in made.items() if names)
    )
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from tracer import TraceFormatError
    from workloads.errors import ConfigError

    return (CommandError, ConfigError, TraceFormatError)


def _faults() -> tuple[type[BaseException], ...]:
    from tracer.errors import TraceWriteError
    from workloads.errors import RunFailed

    return (RunFailed, TraceWriteError)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler  # set by each verb's parser
    try:
        return handler(args)
    except _user_errors() as error:
        print(f"tickscope {args.verb}: error: {error}", file=sys.stderr)
        return 2
    except FileNotFoundError as error:
        print(f"tickscope {args.verb}: error: no such file: {error.filename}", file=sys.stderr)
        return 2
    except _faults() as error:
        print(f"tickscope {args.verb}: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # the file system or the network refused: not a bug either
        where = f"{error.filename}: " if error.filename else ""
        print(f"tickscope {args.verb}: error: {where}{error.strerror or error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
