"""A workload: what load to send, for how long, what counts as good service, and the scheduler
knobs it is meant to be run with. Loaded from a TOML file; the shipped ones live in
`workloads/presets/NAME.toml`.

Every mistake in a file is a `ConfigError` of one line naming the problem and the file, so the
command line can print it as it is. The keys (all optional unless marked):

    name, description, seed, duration_s (0 = until stopped), requests (0 = no limit),
    concurrency (open loop cap, 0 = none), warmup_s, cooldown_s
    [arrivals]  kind (required): poisson | gamma | constant | replay | trace | closed
                rate (req/s) or steps = [{at_s = 0, rate = ...}, ...] (a ramp)
                gamma: cv (coefficient of variation of the gaps; 1 = Poisson)
                replay: file (required; .csv/.jsonl/text, relative to this file), column
                trace: file (required; a production trace, workloads/traffic.py), format, start_s,
                       duration_s, time_scale or rate, keep_failed; its rows give the lengths too
                closed: users (required), think_s
    [prompt], [output] (both required but with a trace)  kind (required): fixed | uniform | lognormal | file | text
                fixed: value; uniform: min, max; lognormal: mean, sigma (of log length);
                file: file, column; min and max also clip lognormal and file
                text ([prompt] only): real prompts, sent in file order: file (required; one per
                line, or .jsonl), column (the JSONL key: a string, or chat messages; "prompt")
    [slo]       ttft_s, tpot_s, e2e_s
    [sampling]  temperature (0 = greedy, the default), top_p, top_k, seed (request n draws with seed + n)
    [scheduler] policy, window_ms, max_seqs, max_tokens, prefill_chunk, kv_capacity_tokens,
                queue_limit, attention, kv_block_size (engine defaults where absent)
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from engine.choices import GROUPINGS, Grouping
from engine.errors import ConfigError
from engine.policies import policy_names
from engine.request import GREEDY, SamplingParams
from workloads.datafiles import read_column
from workloads.prompts import Prompt, read_prompts
from workloads.traffic import TRAFFIC_OPTIONS, TrafficSpec, scan, traffic_spec

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

ARRIVAL_KINDS = ("poisson", "gamma", "constant", "replay", "trace", "closed")
LENGTH_KINDS = ("fixed", "uniform", "lognormal", "file", "text")
MAX_LENGTH = 1 << 20  # tokens: far past any model we run, small enough to catch unit mistakes

Choice = TypeVar("Choice", bound=str)  # a Literal alias of engine/choices.py, or plain str


@dataclass(frozen=True)
class RateStep:
    """From `at_s` seconds after the start, send at `rate` requests per second."""

    at_s: float
    rate: float


@dataclass(frozen=True)
class ArrivalSpec:
    """When requests are sent.

    Open loop (`poisson`, `gamma`, `constant`, `replay`) sends on a schedule whatever the engine
    does; `closed` runs `users` users who each send, wait for the answer, think, and send again.
    """

    kind: str
    # Open-loop rate in requests/s; `steps` replaces it with a piecewise-constant ramp.
    rate: float = 0.0
    steps: tuple[RateStep, ...] = ()
    # gamma: coefficient of variation of the gaps between arrivals (1 = Poisson, >1 = bursty).
    cv: float = 1.0
    # replay: arrival times in seconds from the start, read from `file` (column `column`).
    file: str = ""
    column: str = "arrival_s"
    times_s: tuple[float, ...] = field(default=(), repr=False)
    # trace: a production trace whose rows give each request's arrival and lengths together
    traffic: TrafficSpec | None = None
    # closed loop
    users: int = 0
    think_s: float = 0.0

    def rate_steps(self) -> tuple[RateStep, ...]:
        """The rate as steps, whether given as one `rate` or as a ramp."""
        return self.steps or (RateStep(0.0, self.rate),)


@dataclass(frozen=True)
class LengthSpec:
    """A distribution of token counts (prompt or output length), always clipped to [min, max]; or,
    for prompts of kind `text`, the prompts themselves (tokenized when the model is known)."""

    kind: str
    value: int = 0  # fixed
    min: int = 1  # uniform bounds (inclusive); the clip for lognormal and file
    max: int = MAX_LENGTH
    mean: float = 0.0  # lognormal: the mean of the distribution itself, in tokens
    sigma: float = 0.0  # lognormal: the standard deviation of log(length)
    file: str = ""  # file: sample uniformly from these values
    column: str = ""
    values: tuple[int, ...] = field(default=(), repr=False)
    prompts: tuple[Prompt, ...] = field(default=(), repr=False)  # text


# The lengths of a workload whose trace gives each request's own (kind "trace" is no [prompt] kind).
TRACE_LENGTHS = LengthSpec("trace")


@dataclass(frozen=True)
class SLO:
    """Service-level objectives a request must all meet to count towards goodput (None = any)."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None


@dataclass(frozen=True)
class SchedulerKnobs:
    """Scheduler settings this workload is meant for; None leaves the engine's default."""

    policy: str | None = None
    window_ms: float | None = None
    max_seqs: int | None = None
    max_tokens: int | None = None
    prefill_chunk: int | None = None
    kv_capacity_tokens: int | None = None
    queue_limit: int | None = None
    attention: Grouping | None = None
    kv_block_size: int | None = None

    def overrides(self) -> dict[str, Any]:
        """The knobs that were set, as keyword arguments for `SchedulerConfig`."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class WorkloadSpec:
    name: str
    arrivals: ArrivalSpec
    prompt: LengthSpec
    output: LengthSpec
    description: str = ""
    duration_s: float = 0.0  # 0 = until stopped (or until `requests` are sent)
    requests: int = 0  # 0 = no limit on the count
    seed: int = 0
    concurrency: int = 0  # open loop: at most this many requests in flight (0 = no cap)
    warmup_s: float = 0.0  # requests arriving in the first warmup_s are left out of the figures
    cooldown_s: float = 0.0  # ... and those arriving in the last cooldown_s of sending
    slo: SLO = SLO()
    scheduler: SchedulerKnobs = SchedulerKnobs()
    sampling: SamplingParams = GREEDY  # how every request picks its tokens; its seed is the first's

    @property
    def ends_by_itself(self) -> bool:
        """Sending stops without a stop or --duration: at duration_s, after `requests`, or where a
        production trace's rows end."""
        return bool(self.duration_s or self.requests or self.arrivals.traffic is not None)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the trace header; data read from files is given by count, not copied."""
        d = asdict(self)
        arrivals, prompt, output = d["arrivals"], d["prompt"], d["output"]
        arrivals["steps"] = [dict(s) for s in arrivals["steps"]]
        arrivals["times_s"] = len(self.arrivals.times_s)
        prompt["values"], prompt["prompts"] = len(self.prompt.values), len(self.prompt.prompts)
        output["values"], output["prompts"] = len(self.output.values), 0
        if self.arrivals.traffic is not None:
            arrivals["traffic"] = self.arrivals.traffic.to_dict()
        return d

    def with_context(self, context_tokens: int | None) -> WorkloadSpec:
        """The workload for a model that holds `context_tokens` per request (None: not known): a
        trace's window is read and its rows clipped to it; other workloads are as they are."""
        traffic = self.arrivals.traffic
        if traffic is None:
            return self
        return replace(self, arrivals=replace(self.arrivals, traffic=scan(traffic, context_tokens)))


def list_workloads() -> list[str]:
    """Names of the shipped presets."""
    return sorted(Path(entry.name).stem for entry in _presets().iterdir() if entry.name.endswith(".toml"))


def load_workload(name_or_path: str | Path) -> WorkloadSpec:
    """A shipped preset by bare name (`smoke`), or the TOML file at a path."""
    text = str(name_or_path)
    if text.endswith(".toml") or "/" in text or "\\" in text:
        path = Path(text)
        try:
            source = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read workload file {path}: {exc.strerror or exc}") from None
        return parse_workload(source, str(path), default_name=path.stem, base_dir=path.parent)
    entry = _presets() / f"{text}.toml"
    if not entry.is_file():
        choices = ", ".join(list_workloads())
        raise ConfigError(f"unknown workload '{text}' (choose from: {choices})")
    # Presets refer to no data files, so they need no base directory.
    source = entry.read_text(encoding="utf-8")
    return parse_workload(source, f"preset {text}.toml", default_name=text)


def parse_workload(
    source: str, origin: str, *, default_name: str = "workload", base_dir: Path | None = None
) -> WorkloadSpec:
    """A workload from TOML text; `origin` names it in errors, `base_dir` anchors data files."""
    try:
        data = tomllib.loads(source)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin} is not valid TOML: {exc}") from None
    top = _Table(data, "", origin)
    arrivals = _arrivals(top.table("arrivals", required=True), base_dir)
    if arrivals.kind == "trace":
        for key in ("prompt", "output"):
            if key in data:
                top.fail(f"a trace gives each request's lengths: drop [{key}]")
        prompt = output = TRACE_LENGTHS
    else:
        prompt = _lengths(top.table("prompt", required=True), base_dir)
        output = _lengths(top.table("output", required=True), base_dir, texts=False)
    slo_t = top.table("slo")
    slo = SLO(
        ttft_s=slo_t.number("ttft_s", None, above=0),
        tpot_s=slo_t.number("tpot_s", None, above=0),
        e2e_s=slo_t.number("e2e_s", None, above=0),
    )
    slo_t.done()
    sched_t = top.table("scheduler")
    # Choices are checked here as well as by SchedulerConfig so that a typo names its file.
    sched = SchedulerKnobs(
        policy=sched_t.choice("policy", policy_names(), None),
        window_ms=sched_t.number("window_ms", None, at_least=0),
        max_seqs=sched_t.integer("max_seqs", None, at_least=1),
        max_tokens=sched_t.integer("max_tokens", None, at_least=1),
        prefill_chunk=sched_t.integer("prefill_chunk", None, at_least=1),
        kv_capacity_tokens=sched_t.integer("kv_capacity_tokens", None, at_least=1),
        queue_limit=sched_t.integer("queue_limit", None, at_least=1),
        attention=sched_t.choice("attention", GROUPINGS, None),
        kv_block_size=sched_t.integer("kv_block_size", None, at_least=1),
    )
    sched_t.done()
    sampling_t = top.table("sampling")
    sampling = SamplingParams(
        temperature=sampling_t.number("temperature", 0.0, at_least=0),
        top_p=sampling_t.number("top_p", 1.0, above=0),
        top_k=sampling_t.integer("top_k", 0, at_least=0),
        seed=sampling_t.integer("seed", 0, at_least=0),
    )
    sampling_t.done()
    if (problem := sampling.problem()) is not None:
        sampling_t.fail(problem)
    spec = WorkloadSpec(
        name=top.string("name", default_name),
        description=top.string("description", ""),
        arrivals=arrivals,
        prompt=prompt,
        output=output,
        duration_s=top.number("duration_s", 0.0, at_least=0),
        requests=top.integer("requests", 0, at_least=0),
        seed=top.integer("seed", 0, at_least=0),
        concurrency=top.integer("concurrency", 0, at_least=0),
        warmup_s=top.number("warmup_s", 0.0, at_least=0),
        cooldown_s=top.number("cooldown_s", 0.0, at_least=0),
        slo=slo,
        scheduler=sched,
        sampling=sampling,
    )
    top.done()
    if spec.arrivals.kind == "closed" and spec.concurrency:
        top.fail("'concurrency' applies to open loop only (a closed loop has 'users')")
    if spec.duration_s and spec.warmup_s + spec.cooldown_s >= spec.duration_s:
        top.fail("warmup_s + cooldown_s leave nothing of duration_s to measure")
    return spec


def _arrivals(t: _Table, base_dir: Path | None) -> ArrivalSpec:
    kind = t.choice("kind", ARRIVAL_KINDS, None)
    if kind is None:
        t.fail("missing key 'kind'")
    if kind == "closed":
        spec = ArrivalSpec(
            kind=kind,
            users=t.integer("users", None, at_least=1, required=True),
            think_s=t.number("think_s", 0.0, at_least=0),
        )
    elif kind == "replay":
        file, column = t.string("file", None, required=True), t.string("column", "arrival_s")
        times = read_column(_data_path(file, base_dir), column)
        spec = ArrivalSpec(kind=kind, file=file, column=column, times_s=tuple(sorted(times)))
    elif kind == "trace":
        spec = ArrivalSpec(kind=kind, traffic=_traffic(t, base_dir))
    else:
        rate = t.number("rate", None, above=0)
        steps = _steps(t)
        if (rate is None) == (not steps):
            t.fail("give either 'rate' or 'steps'")
        cv = t.number("cv", 1.0, above=0) if kind == "gamma" else 1.0
        spec = ArrivalSpec(kind=kind, rate=rate or 0.0, steps=steps, cv=cv)
    t.done()
    return spec


def traffic_workload(base: WorkloadSpec, table: dict[str, Any], origin: str) -> WorkloadSpec:
    """`base` sending the trace `table` describes (the keys of a trace's [arrivals]) instead of its
    own load: its rows give the arrivals and the lengths, and its window how long the run is; the
    SLOs, the scheduler knobs and the rest stay `base`'s."""
    t = _Table({"kind": "trace", **table}, "arrivals.", origin)
    arrivals = _arrivals(t, None)
    assert arrivals.traffic is not None
    return replace(
        base,
        name=Path(arrivals.traffic.file).stem,
        description=f"the requests of {arrivals.traffic.file}",
        arrivals=arrivals,
        prompt=TRACE_LENGTHS,
        output=TRACE_LENGTHS,
        duration_s=0.0,
        requests=0,
    )


def _traffic(t: _Table, base_dir: Path | None) -> TrafficSpec:
    file = t.string("file", None, required=True)
    options: dict[str, Any] = {}
    for option in TRAFFIC_OPTIONS:
        if option.key not in t.data:
            continue
        if option.choices:
            options[option.key] = t.choice(option.key, option.choices, None)
        elif isinstance(option.default, bool):
            options[option.key] = t.boolean(option.key)
        else:
            options[option.key] = t.number(option.key, None, at_least=option.at_least, above=option.above)
    if "rate" in options and "time_scale" in options:
        t.fail("give either 'time_scale' or 'rate', not both")
    return traffic_spec(file, _data_path(file, base_dir), options)


def _steps(t: _Table) -> tuple[RateStep, ...]:
    raw = t.get("steps", [])
    if not isinstance(raw, list):
        t.fail("'steps' must be a list of {at_s, rate} tables")
    steps = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            t.fail(f"steps[{i}] must be a table {{at_s = ..., rate = ...}}")
        st = _Table(item, f"{t.where}steps[{i}].", t.origin)
        steps.append(
            RateStep(
                at_s=st.number("at_s", None, at_least=0, required=True),
                rate=st.number("rate", None, above=0, required=True),
            )
        )
        st.done()
    if steps and steps[0].at_s != 0:
        t.fail("steps[0].at_s must be 0 (the ramp starts with the run)")
    if any(b.at_s <= a.at_s for a, b in zip(steps, steps[1:])):
        t.fail("steps must have increasing at_s")
    return tuple(steps)


def _lengths(t: _Table, base_dir: Path | None, texts: bool = True) -> LengthSpec:
    kind = t.choice("kind", LENGTH_KINDS, None)
    if kind is None:
        t.fail("missing key 'kind'")
    if kind == "text":
        if not texts:
            t.fail("kind 'text' gives prompts: it is for [prompt] only")
        if "min" in t.data or "max" in t.data:
            t.fail("text prompts are sent whole: no 'min' or 'max'")
        file, column = t.string("file", None, required=True), t.string("column", "prompt")
        spec = LengthSpec(kind, file=file, column=column, prompts=read_prompts(_data_path(file, base_dir), column))
        t.done()
        return spec
    lo = t.integer("min", 1, at_least=1)
    hi = t.integer("max", MAX_LENGTH, at_least=1)
    if hi > MAX_LENGTH:
        t.fail(f"max must be at most {MAX_LENGTH}")
    if lo > hi:
        t.fail(f"min ({lo}) is greater than max ({hi})")
    if kind == "fixed":
        spec = LengthSpec(kind, value=t.integer("value", None, at_least=1, required=True))
        if spec.value > MAX_LENGTH:
            t.fail(f"value must be at most {MAX_LENGTH}")
    elif kind == "uniform":
        if "min" not in t.data or "max" not in t.data:
            t.fail("uniform needs 'min' and 'max'")
        spec = LengthSpec(kind, min=lo, max=hi)
    elif kind == "lognormal":
        mean = t.number("mean", None, above=0, required=True)
        sigma = t.number("sigma", None, at_least=0, required=True)
        spec = LengthSpec(kind, min=lo, max=hi, mean=mean, sigma=sigma)
    else:
        file, column = t.string("file", None, required=True), t.string("column", "")
        raw = read_column(_data_path(file, base_dir), column)
        values = tuple(min(max(int(round(v)), lo), hi) for v in raw)
        spec = LengthSpec(kind, min=lo, max=hi, file=file, column=column, values=values)
    t.done()
    return spec


def _data_path(file: str, base_dir: Path | None) -> Path:
    # Relative paths are relative to the TOML file, so a workload and its data travel together.
    path = Path(file)
    return path if path.is_absolute() or base_dir is None else base_dir / path


def _presets() -> Traversable:
    return resources.files("workloads") / "presets"


class _Table:
    """Reads one TOML table, checking each value, and knows which keys nobody asked for."""

    def __init__(self, data: Any, where: str, origin: str) -> None:
        self.where = where  # key prefix for messages, e.g. "arrivals."
        self.origin = origin
        self.data = data
        self.seen: set[str] = set()

    def fail(self, problem: str) -> NoReturn:
        raise ConfigError(f"{problem} in {self._label()}{self.origin}")

    def _label(self) -> str:
        return f"[{self.where.rstrip('.')}] of " if self.where else ""

    def get(self, key: str, default: Any) -> Any:
        self.seen.add(key)
        return self.data.get(key, default)

    def table(self, key: str, *, required: bool = False) -> _Table:
        value = self.get(key, None)
        if value is None:
            if required:
                self.fail(f"missing table [{self.where}{key}]")
            value = {}
        if not isinstance(value, dict):
            self.fail(f"'{self.where}{key}' must be a table")
        return _Table(value, f"{self.where}{key}.", self.origin)

    def string(self, key: str, default: str | None, *, required: bool = False) -> str:
        value = self._value(key, default, required)
        if not isinstance(value, str):
            self.fail(f"'{self.where}{key}' must be a string")
        return value

    def choice(self, key: str, options: tuple[Choice, ...], default: Choice | None) -> Choice | None:
        value = self.get(key, default)
        if value is None:
            return None
        for option in options:
            if value == option:
                return option
        self.fail(f"'{self.where}{key}' is {value!r} (choose from: {', '.join(options)})")

    def boolean(self, key: str) -> bool:
        value = self.get(key, False)
        if not isinstance(value, bool):
            self.fail(f"'{self.where}{key}' must be true or false, not {value!r}")
        return value

    def number(
        self,
        key: str,
        default: float | None,
        *,
        at_least: float | None = None,
        above: float | None = None,
        required: bool = False,
    ) -> Any:
        value = self._value(key, default, required)
        if value is None:
            return None
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not numeric or not math.isfinite(value):
            self.fail(f"'{self.where}{key}' must be a number, not {value!r}")
        self._bound(key, value, at_least, above)
        return float(value)

    def integer(
        self,
        key: str,
        default: int | None,
        *,
        at_least: int | None = None,
        required: bool = False,
    ) -> Any:
        value = self._value(key, default, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(f"'{self.where}{key}' must be a whole number, not {value!r}")
        self._bound(key, value, at_least, None)
        return value

    def _value(self, key: str, default: Any, required: bool) -> Any:
        if required and key not in self.data:
            self.fail(f"missing key '{self.where}{key}'")
        return self.get(key, default)

    def _bound(self, key: str, value: float, at_least: float | None, above: float | None) -> None:
        if at_least is not None and value < at_least:
            word = "negative" if at_least == 0 and value < 0 else f"below {at_least:g}"
            self.fail(f"'{self.where}{key}' is {word} ({value!r})")
        if above is not None and value <= above:
            self.fail(f"'{self.where}{key}' must be greater than {above:g} ({value!r})")

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise ConfigError(f"unknown key '{self.where}{unknown[0]}' in {self.origin}")
