"""Argument types, shared options and the checks every verb makes before it touches a file."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from engine.choices import DECODE_COMPILE, DECODE_GRAPHS, DEVICES, PLAN_AHEAD
from engine.policies import policy_names
from workloads.traffic import TRAFFIC_OPTIONS, TrafficOption

if TYPE_CHECKING:  # imported where used: they pull in polars, and workloads.run the engine
    from tracer.compare import Costing
    from tracer.cost import Accelerator
    from workloads.run import RecordingPlan


class CommandError(Exception):
    """A mistake in how the command was called."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _checked(
    convert: Callable[[str], float], noun: str, ok: Callable[[float], bool], must: str
) -> Callable[[str], float]:
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


positive_seconds = _checked(float, "a number of seconds", lambda v: v > 0, "a positive number of seconds")


non_negative_ms = _checked(float, "a number of milliseconds", lambda v: v >= 0, "zero or more milliseconds")


positive_int = _checked(int, "a whole number", lambda v: v > 0, "a positive whole number")


def number_list(convert: Callable[[str], float]) -> Callable[[str], list[float]]:
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


def existing_trace(path: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise CommandError(f"no such file: {path}")
    if p.is_dir():
        raise CommandError(f"{path} is a directory, not a trace file")
    return p


def check_out(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise CommandError(f"{out} already exists; pick another --out or pass --force to replace it")
    if out.is_dir():
        raise CommandError(f"{out} is a directory; --out takes a file name")
    if not out.parent.exists():
        raise CommandError(f"directory {out.parent} does not exist")


def check_followable(path: Path) -> None:
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


def add_recording_options(p: argparse.ArgumentParser, *, workload: str | None) -> None:
    add_model_options(p)
    default = f"default: {workload}" if workload else "only its [scheduler] knobs are used; default: the engine's"
    p.add_argument("--workload", default=workload, help=f"workload preset name or TOML file ({default})")
    p.add_argument(
        "--device", default="auto", choices=DEVICES, help="where the engine runs (default: the best present)"
    )
    p.add_argument(
        "--seed", type=int, help="seed for the weights and the load (default: weights from 0, load from the workload)"
    )
    p.add_argument("--policy", choices=policy_names(), help="scheduler policy (overrides the workload's)")
    p.add_argument("--window-ms", type=non_negative_ms, help="collection window in ms (overrides the workload's)")
    p.add_argument("--max-seqs", type=positive_int, help="max sequences per tick (overrides the workload's)")
    p.add_argument("--max-tokens", type=positive_int, help="max tokens per tick (overrides the workload's)")
    p.add_argument(
        "--stages",
        type=positive_int,
        help="pipeline stages the layers are split into, balanced by weight bytes (default: 1)",
    )
    p.add_argument(
        "--stage-layers",
        type=stage_layers,
        metavar="N,N,...",
        help="layers of each stage, first to last, e.g. 3,3,2 (sets --stages)",
    )
    p.add_argument(
        "--decode-graphs",
        choices=DECODE_GRAPHS,
        help="replay decode-only ticks as CUDA graphs, padded to batch and context buckets (auto: on "
        "CUDA with one stage and ragged attention; on: also on the CPU, eagerly)",
    )
    p.add_argument(
        "--decode-compile",
        choices=DECODE_COMPILE,
        help="torch.compile the decode graphs' forward pass (inductor: fused kernels; the first ticks "
        "wait for the compiles; default: off)",
    )
    p.add_argument(
        "--plan-ahead",
        choices=PLAN_AHEAD,
        help="schedule tick n+1 and fill its inputs while the device runs tick n (auto: on CUDA, in one "
        "process; on: also on the CPU, where the host runs the forward pass and nothing is hidden)",
    )
    batching = p.add_mutually_exclusive_group()
    batching.add_argument(
        "--micro-batches",
        type=positive_int,
        metavar="M",
        help="micro-batches each tick's batch is split into (default: 1)",
    )
    batching.add_argument(
        "--micro-batch-size",
        type=positive_int,
        metavar="N",
        help="sequences per micro-batch: the count follows the batch",
    )


def add_traffic_options(p: argparse.ArgumentParser) -> None:
    """`record --traffic FILE` and one flag per option of a trace's replay (workloads/traffic.py)."""
    p.add_argument(
        "--traffic",
        metavar="FILE",
        help="replay a production trace (Azure LLM inference, BurstGPT, Mooncake): each row's arrival, prompt "
        "and output length replace the workload's load, whose SLOs and scheduler knobs stay",
    )
    for option in TRAFFIC_OPTIONS:
        if option.choices:
            p.add_argument(option.flag, choices=option.choices, help=option.help)
        elif isinstance(option.default, bool):
            p.add_argument(option.flag, action="store_true", help=option.help)
        else:
            p.add_argument(option.flag, type=_traffic_number(option), help=option.help)


def _traffic_number(option: TrafficOption) -> Callable[[str], float]:
    if option.above is not None:
        above = option.above
        return _checked(float, "a number", lambda v: v > above, f"greater than {above:g}")
    at_least = -math.inf if option.at_least is None else option.at_least
    return _checked(float, "a number", lambda v: v >= at_least, f"at least {at_least:g}")


def _traffic_given(args: argparse.Namespace) -> list[tuple[TrafficOption, Any]]:
    """The replay options given on the command line, with their values (a switch not given is False)."""
    values = ((o, getattr(args, o.flag.removeprefix("--").replace("-", "_"), None)) for o in TRAFFIC_OPTIONS)
    return [(option, value) for option, value in values if value is not None and value is not False]


def traffic_argv(args: argparse.Namespace) -> list[str]:
    """The traffic flags given, as command-line words again (for the recording child `demo` starts)."""
    if getattr(args, "traffic", None) is None:
        return []
    argv = ["--traffic", args.traffic]
    for option, value in _traffic_given(args):
        argv += [option.flag] if value is True else [option.flag, str(value)]
    return argv


def traffic_table(args: argparse.Namespace) -> dict[str, Any] | None:
    """The trace the flags ask for, as the keys of a trace's [arrivals]; None without --traffic."""
    given = {option.key: value for option, value in _traffic_given(args)}
    if getattr(args, "traffic", None) is None:
        if given:
            flag = next(o.flag for o in TRAFFIC_OPTIONS if o.key in given)
            raise CommandError(f"{flag} is an option of --traffic FILE, which is not given")
        return None
    return {"file": args.traffic, **given}


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Which model: a preset with random weights, or a checkpoint directory (engine/checkpoint.py)."""
    model = p.add_mutually_exclusive_group()
    model.add_argument("--preset", help="model preset with random weights: tiny, ds2-lite, v3-slice (default: tiny)")
    model.add_argument(
        "--model",
        metavar="DIR",
        help="a local Hugging Face checkpoint directory (config.json, *.safetensors), for its weights",
    )
    p.add_argument(
        "--layers", type=positive_int, help="decoder layers (default: the preset's; with --model, its first N)"
    )


positive_price = _checked(float, "a price in dollars per hour", lambda v: v > 0, "a positive price in dollars per hour")


def add_cost_options(p: argparse.ArgumentParser) -> None:
    """What-if costing of a recording's ticks (summary, compare, sweep, replay)."""
    p.add_argument(
        "--accelerator",
        metavar="NAME",
        help="also cost the recording's very ticks (same batches, same expert activations) on this "
        "accelerator, labelled modelled: H100-SXM, H200, A100-80GB, L40S, MI300X, this-device, or "
        "one from the TOML file in $TICKSCOPE_ACCELERATORS",
    )
    p.add_argument(
        "--price",
        type=positive_price,
        metavar="USD_PER_HOUR",
        help="dollars per device-hour: prices the measured device time, and replaces the accelerator's default price",
    )


def cost_options(args: argparse.Namespace, config: dict[str, Any]) -> tuple[Accelerator | None, float | None]:
    """The accelerator (None without --accelerator) and the price the options ask for, for the one
    recording whose header `config` is given; an unknown or malformed profile, or `this-device` on a
    recording without a device probe, is a CommandError (one line: the known names, or why)."""
    from tracer.cost import AcceleratorError, CostUnavailable, accelerator

    price = getattr(args, "price", None)
    name = getattr(args, "accelerator", None)
    if name is None:
        return None, price
    try:
        return accelerator(name, config, usd_per_hour=price), price
    except AcceleratorError as error:
        raise CommandError(str(error)) from None
    except CostUnavailable as error:
        raise CommandError(f"--accelerator {name}: {error.reason}") from None


def costing_options(args: argparse.Namespace) -> Costing:
    """The `Costing` --accelerator and --price ask for, for verbs over several recordings (compare,
    sweep): the name is checked now, before anything is read or recorded; `this-device` is each
    recording's own probe, and a recording without one says so in its figures."""
    from tracer.compare import Costing
    from tracer.cost import THIS_DEVICE

    if getattr(args, "accelerator", None) and args.accelerator.lower() != THIS_DEVICE:
        cost_options(args, {})
    return Costing(args.accelerator, args.price)


def stage_layers(text: str) -> tuple[int, ...]:
    from engine.pipeline import parse_stage_layers
    from workloads.errors import ConfigError

    try:
        return parse_stage_layers(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


DISTRIBUTED_HELP = (
    "run each of the --stages in its own process on torch.distributed (gloo on the CPU, NCCL "
    "with a GPU per rank); spawns the ranks, or joins a torchrun job"
)


# flags that set the engine's pipeline, as SchedulerConfig fields
PIPELINE_FLAGS = ("stages", "stage_layers", "micro_batches", "micro_batch_size")
# every flag that sets a SchedulerConfig field, and every flag that configures the engine
SCHEDULER_FLAGS = (
    "policy",
    "window_ms",
    "max_seqs",
    "max_tokens",
    "decode_graphs",
    "decode_compile",
    "plan_ahead",
    *PIPELINE_FLAGS,
)
ENGINE_FLAGS = ("layers", *SCHEDULER_FLAGS)


def plan_from_args(args: argparse.Namespace, out: Path, duration_s: float | None) -> RecordingPlan:
    from workloads.run import RecordingPlan

    overrides = {flag: getattr(args, flag) for flag in SCHEDULER_FLAGS if getattr(args, flag) is not None}
    if args.stage_layers and args.stages is None:
        overrides["stages"] = len(args.stage_layers)
    return RecordingPlan(
        preset=args.preset or "tiny",
        model=args.model,
        workload=args.workload,
        out=out,
        duration_s=duration_s,
        device=args.device,
        seed=args.seed,
        scheduler_overrides=overrides,
        model_overrides={"layers": args.layers} if args.layers else {},
        distributed=getattr(args, "distributed", False),
        traffic=traffic_table(args),
    )
