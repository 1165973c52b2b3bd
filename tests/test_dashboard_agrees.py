"""The dashboard agrees with the trace: every figure its state gives, recomputed from `tracer.load()`.

Each trace is loaded into `DashboardState` in each way the dashboard loads one — frames in file
order, laid out from the index as a replay does, laid out with seeks between the background reads,
and followed live as the file grows — with a detail cache smaller than the trace, so that detail is
evicted and fetched again. After loading, every tick and every request must equal the tracer's; at
chosen ticks every panel figure must equal a recomputation from the tracer's frames cut at that tick.
The recomputations here are written out plainly, independent of the code under test.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import tracer
import tracer.writer
from tracer.columns import TICK_COLUMNS
from tracer.cost import CostUnavailable, ModelShape, measured_ticks, span_summary, tick_costs
from tracer.pipeline import stage_ticks
from tracer.synth import synthetic_session
from tui.source import LiveSource, ReplaySource, decode_frame, fetch_missing
from tui.state import LATENCY_WINDOW_S, DashboardState, expert_stats, stage_stats

SAMPLES = sorted((Path(__file__).parent.parent / "traces").glob("*.msgpack"))
LOADERS = ("file-order", "laid-out", "laid-out-seeks", "live")
CAPACITY = 48  # ticks of detail the state holds: fewer than every trace here has
SPANS = (1, 10, 40)  # heatmap spans checked, all within the capacity
RECENT = 12

STRESS_WORKLOAD = """\
description = "differential tests: bursts into a small KV cache and a short queue"
seed = 5
duration_s = 1.5

[arrivals]
kind = "gamma"
rate = 40.0
cv = 3.0

[prompt]
kind = "uniform"
min = 8
max = 60

[output]
kind = "uniform"
min = 2
max = 30

[scheduler]
policy = "window"
window_ms = 10
max_seqs = 16
prefill_chunk = 16
kv_capacity_tokens = 256
queue_limit = 12
"""


@pytest.fixture(scope="module")
def stress_trace(tmp_path_factory) -> Path:
    """A real recording that preempts, rejects, chunks prefills over several ticks, runs two
    pipeline stages, and is written in frames of a few events, so ticks split across frames."""
    from workloads.run import Recording, RecordingPlan

    folder = tmp_path_factory.mktemp("stress")
    workload = folder / "stress.toml"
    workload.write_text(STRESS_WORKLOAD)
    out = folder / "stress.msgpack"
    plan = RecordingPlan(
        preset="tiny",
        workload=str(workload),
        out=out,
        device="cpu",
        scheduler_overrides={"stages": 2, "micro_batches": 2},
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tracer.writer, "MAX_EVENTS_PER_FRAME", 5)
        Recording(plan).run()
    trace = tracer.load(out)
    preempted = trace.requests.get_column("preemptions").sum()
    assert preempted > 0 and (trace.requests.get_column("status") == "rejected").any()
    assert (trace.ticks.get_column("sampled_tokens") > trace.ticks.get_column("decode_tokens")).any()
    return out


@pytest.fixture(scope="module")
def long_trace(tmp_path_factory) -> Path:
    """Synthetic: many more ticks than the detail cache, frames of seven events."""
    path = tmp_path_factory.mktemp("long") / "long.msgpack"
    header, events = synthetic_session(600, seed=3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tracer.writer, "MAX_EVENTS_PER_FRAME", 7)
        with tracer.TraceWriter(path, header) as w:
            for ev in events:
                w.emit(ev)
    return path


@dataclass
class Reference:
    """What the trace says, from the tracer alone."""

    trace: tracer.Trace
    preempts: dict[int, list[float]]  # request -> preemption times (s)
    token_s: dict[int, np.ndarray]  # request -> each output token's time (s), from its finish

    @classmethod
    def of(cls, path: Path) -> Reference:
        trace = tracer.load(path)
        t0 = trace.header.t0_mono_ns
        preempts: dict[int, list[float]] = {}
        token_us: dict[int, np.ndarray] = {}
        with tracer.open_trace(path) as reader:
            for ev in reader.events():
                if isinstance(ev, tracer.RequestEvent) and ev.phase == "preempt":
                    preempts.setdefault(ev.request, []).append((ev.t_ns - t0) / 1e9)
                elif isinstance(ev, tracer.RequestEvent) and ev.phase == "finish" and ev.token_us is not None:
                    token_us[ev.request] = ev.token_us
        arrival = dict(zip(trace.requests["request"].to_list(), trace.requests["arrival_s"].to_list()))
        token_s = {r: arrival[r] + us / 1e6 for r, us in token_us.items()}
        return cls(trace, preempts, token_s)


def load_state(path: Path, how: str, seed: int = 0) -> tuple[DashboardState, object]:
    """`path` loaded into a state the way `how` says, and the source it keeps fetching detail from."""
    state = DashboardState(detail_capacity=CAPACITY)
    rng = np.random.default_rng(seed)
    if how == "file-order":
        source = LiveSource(path)
        source.poll()  # only for its header and index: the state is fed below, frame by frame
        state.set_header(source.header)
        with tracer.open_trace(path) as reader:
            for payload in reader.decoded_frames(lambda p: p):
                state.ingest_frame(decode_frame(payload, state.t0_ns, detail=True))
        return state, source
    if how == "live":
        growing = path.parent / f"{path.stem}.live-{seed}.msgpack"
        data = path.read_bytes()
        cuts = np.sort(rng.choice(np.arange(1, len(data)), size=min(40, len(data) - 1), replace=False))
        source = LiveSource(growing)
        with open(growing, "wb") as f:
            for lo, hi in zip([0, *cuts], [*cuts, len(data)]):
                f.write(data[lo:hi])  # a cut may fall inside a frame: the tail waits for the rest
                f.flush()
                frames = source.poll()
                if source.header is not None and state.header is None:
                    state.set_header(source.header)
                for frame in frames:
                    state.ingest_frame(frame)
        return state, source
    source = ReplaySource(path)
    state.set_header(source.header)
    state.set_layout(source.layout())
    seeks = how == "laid-out-seeks"
    while not source.done:
        if seeks and state.n_ticks and rng.random() < 0.3:
            index = int(rng.integers(0, state.n_ticks))
            lo = max(index - int(rng.choice(SPANS)) + 1, 0)
            state.pin(lo, index)
            fetch_missing(state, source, lo, index)
            source.focus(state.tick_number(index))
        for frame in source.poll(0.0):
            state.ingest_frame(frame)
    return state, source


def test_every_loading_path_is_checked():
    assert len(SAMPLES) >= 3


@pytest.mark.parametrize("how", LOADERS)
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.stem)
def test_samples_agree(sample: Path, how: str, tmp_path: Path):
    copy = tmp_path / sample.name  # the live path writes beside it
    shutil.copy(sample, copy)
    check(copy, how)


@pytest.mark.parametrize("how", LOADERS)
def test_a_preempting_pipelined_recording_in_small_frames_agrees(stress_trace: Path, how: str):
    check(stress_trace, how)


@pytest.mark.parametrize("how", LOADERS)
def test_a_trace_longer_than_the_detail_cache_agrees(long_trace: Path, how: str):
    check(long_trace, how)


def test_a_truncated_recording_agrees(stress_trace: Path, tmp_path: Path):
    cut = tmp_path / "cut.msgpack"
    data = stress_trace.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    for how in LOADERS:
        check(cut, how)


def check(path: Path, how: str) -> None:
    ref = Reference.of(path)
    state, source = load_state(path, how)
    try:
        assert_ticks_agree(state, ref)
        assert_requests_agree(state, ref)
        n = state.n_ticks
        for index in sorted({0, n - 1, *np.random.default_rng(1).integers(0, n, 10).tolist()}):
            assert_panels_agree(state, source, ref, index)
    finally:
        source.close()


def assert_ticks_agree(state: DashboardState, ref: Reference) -> None:
    ticks = ref.trace.ticks
    assert state.n_ticks == ticks.height
    for name in TICK_COLUMNS:
        assert np.array_equal(state.ticks.col(name), ticks.get_column(name).to_numpy().astype(np.float64)), name


def assert_requests_agree(state: DashboardState, ref: Reference) -> None:
    for row in ref.trace.requests.iter_rows(named=True):
        life = state.request_life(row["request"])
        assert life is not None, row["request"]
        where = f"request {row['request']}"
        assert same(life.arrive_s, row["arrival_s"]), where
        assert same(life.admit_s, row["admit_s"]), where
        assert same(life.first_token_s, row["first_token_s"]), where
        assert same(life.finish_s, row["finish_s"]), where
        assert life.prompt_tokens == row["prompt_tokens"], where
        assert life.output_tokens == row["output_tokens"], where
        assert life.status == (row["status"] or ""), where
        assert [t for what, t in life.history if what == "preempt"] == ref.preempts.get(row["request"], []), where


def same(a: float | None, b: float | None) -> bool:
    a = None if a is None or np.isnan(a) else a
    return a == b


def assert_panels_agree(state: DashboardState, source: object, ref: Reference, index: int) -> None:
    ticks, req = ref.trace.ticks, ref.trace.requests
    end = ticks.get_column("end_s").to_numpy()
    t = end[index]
    where = f"tick index {index}"

    # -- throughput: sampled tokens over the time since the previous tick ended ------------------
    first_start = ticks["start_s"][0] - ticks["wait_s"][0]
    prev = end[index - 1] if index else first_start
    sampled = ticks.get_column("sampled_tokens").to_numpy()
    assert state.throughput()[index] == pytest.approx(sampled[index] / max(t - prev, 1e-9)), where
    lo = int(np.searchsorted(end, t - LATENCY_WINDOW_S, side="right"))
    since = end[lo - 1] if lo else first_start
    want = sampled[lo : index + 1].sum() / (t - since) if t > since else 0.0
    assert state.mean_throughput(index) == pytest.approx(want), where
    assert state.window(index) == (lo, pytest.approx(since)), where

    # -- what a token costs: the tick alone, and the window ---------------------------------------
    for first, began in ((index, prev), (lo, since)):
        assert_cost_agrees(state.cost(first, index, began), ref, first, index, t - began, (where, first))

    # -- latency over the window -----------------------------------------------------------------
    arrive, first, finish = (
        req.get_column(c).fill_null(np.nan).to_numpy() for c in ("arrival_s", "first_token_s", "finish_s")
    )
    out = req.get_column("output_tokens").to_numpy()
    with np.errstate(invalid="ignore"):
        ttft = (first - arrive)[(first <= t) & (first > t - LATENCY_WINDOW_S)]
        done = (finish <= t) & (finish > t - LATENCY_WINDOW_S) & (first <= t) & (out > 1)
    tpot = (finish - first)[done] / (out[done] - 1)
    lat = state.latency(index)
    for got, values, q in (
        (lat.ttft_p50, ttft, 50),
        (lat.ttft_p99, ttft, 99),
        (lat.tpot_p50, tpot, 50),
        (lat.tpot_p99, tpot, 99),
    ):
        assert got == (pytest.approx(np.percentile(values, q)) if len(values) else None), where
    assert lat.samples == len(ttft), where

    # -- counters --------------------------------------------------------------------------------
    status = req.get_column("status").to_list()
    with np.errstate(invalid="ignore"):
        ended = finish <= t
    counts = state.counters(index)
    for name in ("finished", "rejected", "cancelled"):
        assert counts[name] == sum(e and s == name for e, s in zip(ended, status)), (where, name)
    assert counts["arrived"] == int((arrive <= t).sum()), where
    assert counts["preempted"] == sum(p <= t for times in ref.preempts.values() for p in times), where

    # -- recent requests, as they stood ------------------------------------------------------------
    ids = req.get_column("request").to_numpy()
    arrived = np.flatnonzero(arrive <= t)
    latest = arrived[np.lexsort((ids[arrived], arrive[arrived]))][::-1][:RECENT]
    rows = state.recent_requests(index, RECENT)
    assert [r.request for r in rows] == ids[latest].tolist(), where
    admit = req.get_column("admit_s").fill_null(np.nan).to_numpy()
    for r, i in zip(rows, latest):
        if finish[i] <= t:
            want_state, tokens = status[i], int(out[i])
        else:
            want_state = "decode" if first[i] <= t else "prefill" if admit[i] <= t else "queued"
            want_state += "*" if any(p <= t for p in ref.preempts.get(int(ids[i]), [])) else ""
            times = ref.token_s.get(int(ids[i]))
            tokens = int((times <= t).sum()) if times is not None else None
        assert (r.state, r.output_tokens) == (want_state, tokens), (where, int(ids[i]))
        assert r.ttft_s == (pytest.approx(first[i] - arrive[i]) if first[i] <= t else None), (where, int(ids[i]))

    # -- expert load and stages of the tick, and of each span ending at it --------------------------
    tick = int(ticks["tick"][index])
    load = ref.trace.expert_load
    for span in SPANS:
        lo = max(index - span + 1, 0)
        state.pin(lo, index)
        fetch_missing(state, source, lo, index)
        held = state.span_experts(lo, index)
        if load is None:
            assert held is None, where
            continue
        rows_of = {int(k): i for i, k in enumerate(ref.trace.expert_ticks)}  # a cut trace's last tick may lack them
        want = [load[rows_of[k]] for k in ticks["tick"][lo : index + 1].to_list() if k in rows_of]
        if not want:
            assert held is None, (where, span)
            continue
        want_stack = np.stack(want)
        assert held is not None and np.array_equal(held, want_stack), (where, span)
        assert_expert_figures(expert_stats(held), want_stack, (where, span))
    detail = state.detail(index)
    cells = stage_ticks(ref.trace.stages).filter(pl.col("tick") == tick)
    if cells.height:
        got = stage_stats(detail.stages)
        row = cells.row(0, named=True)
        for name in ("makespan", "compute", "warmup", "drain", "bubble"):
            assert getattr(got, f"{name}_ns") / 1e9 == pytest.approx(row[f"{name}_s"], abs=1e-9), (where, name)
    else:
        assert detail is None or detail.stages is None, where


def assert_cost_agrees(got: dict, ref: Reference, lo: int, hi: int, span_s: float, where) -> None:
    """The state's cost figures over tick indices lo..hi equal tracer.cost's over the same ticks of
    `tracer.load()`; the measured ones are also recomputed here by hand."""
    try:
        shape = ModelShape.from_config(ref.trace.header.config)
        costs, reason = tick_costs(ref.trace), None
    except CostUnavailable as exc:
        shape, costs, reason = None, measured_ticks(ref.trace), exc.reason
    want = span_summary(costs.slice(lo, hi - lo + 1), span_s, shape, None, None, reason)
    assert got.keys() == want.keys(), where
    for key, value in want.items():
        assert got[key] == (pytest.approx(value, rel=1e-9) if isinstance(value, float) else value), (where, key)
    ticks = ref.trace.ticks.slice(lo, hi - lo + 1)
    busy = ticks["forward_s"].to_numpy().copy()
    devices = np.ones(len(busy))
    for i, tick in enumerate(ticks["tick"].to_list()):
        cells = ref.trace.stages.filter(pl.col("tick") == tick)
        if cells.height:  # pipelined: the modelled makespan, on one device per stage
            busy[i] = cells["modelled_end_s"].max() - cells["modelled_start_s"].min()
            devices[i] = cells["stage"].n_unique()
    processed = (ticks["prefill_tokens"] + ticks["decode_tokens"]).sum()
    if processed:
        assert got["device_s_per_token"] == pytest.approx((busy * devices).sum() / processed), where
        assert got["capacity_tok_s"] == pytest.approx(processed / busy.sum()), where
    assert got["served_rate_tok_s"] == pytest.approx(ticks["sampled_tokens"].sum() / span_s), where


def assert_expert_figures(stats, stack: np.ndarray, where) -> None:
    """Means over (tick, layer) cells, as summary and compare define them; idle and hottest from
    the span's mean."""
    active, imbalance, balance = [], [], []
    for cell in stack.reshape(-1, stack.shape[-1]).astype(np.float64):
        active.append((cell > 0).mean())
        if cell.sum() > 0:
            imbalance.append(cell.max() / cell.mean())
            balance.append(cell.mean() / cell.max())
    assert stats.active_share == pytest.approx(np.mean(active)), where
    assert stats.imbalance == pytest.approx(np.mean(imbalance) if imbalance else 0.0), where
    assert stats.balancedness == pytest.approx(np.mean(balance) if balance else 0.0), where
    mean = stack.mean(axis=0)
    assert stats.idle_experts == int((mean == 0).sum()), where
    if stats.hottest:
        assert stats.hottest[0][2] == pytest.approx(mean.max()), where


@pytest.fixture(scope="module")
def format_1_2_trace(tmp_path_factory) -> Path:
    """A trace as format 1.2 wrote it: tick events without `sampled_tokens`."""
    from tracer import codec

    path = tmp_path_factory.mktemp("v12") / "v12.msgpack"
    header, events = synthetic_session(120, seed=4)
    header.format_version = (1, 2)

    def encode_1_2(ev):
        item = codec.encode_event(ev)
        return item[:-2] if isinstance(ev, tracer.TickEvent) else item  # nor 1.4's absent

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tracer.writer, "encode_event", encode_1_2)
        with tracer.TraceWriter(path, header) as w:
            for ev in events:
                w.emit(ev)
    return path


def test_a_format_1_2_trace_reads_as_before(format_1_2_trace: Path):
    trace = tracer.load(format_1_2_trace)
    assert trace.header.format_version == (1, 2)
    assert trace.ticks["sampled_tokens"].to_list() == trace.ticks["decode_tokens"].to_list()
    assert tracer.summarize(trace)["output_tokens"] == trace.ticks["decode_tokens"].sum()
    for how in LOADERS:
        check(format_1_2_trace, how)


@pytest.fixture(scope="module")
def interleaved_trace(tmp_path_factory) -> Path:
    """Request events written between each tick event and its experts, filling whole frames of their
    own (as a load generator does while the engine emits): a tick's detail lies past frames that
    carry no tick at all."""
    path = tmp_path_factory.mktemp("interleaved") / "interleaved.msgpack"
    header, events = synthetic_session(150, seed=6)
    extra = 10_000
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tracer.writer, "MAX_EVENTS_PER_FRAME", 4)
        with tracer.TraceWriter(path, header) as w:
            for ev in events:
                w.emit(ev)
                if isinstance(ev, tracer.TickEvent):
                    for _ in range(4):  # turned away at once: arrive and finish, no tick
                        w.emit(tracer.RequestEvent(extra, "arrive", ev.end_ns, prompt_tokens=8))
                        w.emit(tracer.RequestEvent(extra, "finish", ev.end_ns, status="rejected", reason="queue full"))
                        extra += 1
    return path


@pytest.mark.parametrize("how", LOADERS)
def test_a_tick_whose_detail_lies_past_frames_of_requests_agrees(interleaved_trace: Path, how: str):
    with tracer.open_trace(interleaved_trace) as reader:
        entries = reader.index.entries
    assert (entries[:, 1] < 0).any()  # frames with no tick in them, between ticks and their detail
    check(interleaved_trace, how)
