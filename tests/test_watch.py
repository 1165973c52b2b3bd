"""`tickscope watch`: a server's /metrics scraped into a trace, checked against the pages it served.

The servers are loopback fixtures (tests/metrics_fixtures.py) serving vLLM's, SGLang's and
tickscope's documented metric names, with counters that grow between scrapes; every tick, rate and
percentile of the trace is recomputed here from what each scrape was served.
"""

from __future__ import annotations

import asyncio
import math
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import tracer
from metrics_fixtures import LATENCY_BOUNDS, MetricsServer, quantile_by_hand
from test_tui_app import until
from tracer.events import TICK_FIELDS, absent_fields
from tui.app import TickscopeApp
from tui.cli import main
from tui.source import LiveSource, ReplaySource
from tui.state import DashboardState
from tui.widgets.charts import SeriesChart, fmt_value
from tui.widgets.panel import Panel
from tui.widgets.stats import LatencyPanel, QueuePanel, fmt_s
from workloads.metrics_text import Histogram, NotPrometheus, parse
from workloads.watch import metrics_url, watch

INTERVAL = 0.05


def test_histogram_quantile_as_prometheus_computes_it():
    # Worked by hand: buckets le 0.1, 0.5, 1 and +Inf holding 10, 20, 10 and 0 observations.
    h = Histogram(np.array([0.1, 0.5, 1.0, math.inf]), np.array([10.0, 30.0, 40.0, 40.0]))
    assert h.quantile(0.5) == pytest.approx(0.1 + 0.4 * (20 - 10) / 20)  # 0.3
    assert h.quantile(0.99) == pytest.approx(0.5 + 0.5 * (39.6 - 30) / 10)  # 0.98
    assert h.quantile(0.1) == pytest.approx(0.1 * 4 / 10)  # the first bucket starts at 0
    spilled = Histogram(np.array([0.1, 1.0, math.inf]), np.array([10.0, 40.0, 50.0]))
    assert spilled.quantile(0.99) == 1.0  # in +Inf: the largest finite bound
    assert math.isnan(Histogram(np.array([1.0, math.inf]), np.zeros(2)).quantile(0.5))  # nothing counted


@pytest.mark.parametrize("seed", range(5))
def test_quantiles_of_an_interval_equal_a_computation_from_the_observations(seed):
    rng = np.random.default_rng(seed)
    before, during = (rng.lognormal(0, 1, n) * 0.1 for n in (rng.integers(0, 50), rng.integers(1, 80)))
    bounds = np.array([*LATENCY_BOUNDS, math.inf])

    def scrape(values: np.ndarray) -> Histogram:
        return Histogram(bounds, np.array([(values <= b).sum() for b in bounds], dtype=np.float64), values.sum())

    interval = scrape(np.concatenate([before, during])).since(scrape(before))
    assert interval is not None
    for q in (0.5, 0.9, 0.99):
        assert interval.quantile(q) == pytest.approx(quantile_by_hand(during.tolist(), LATENCY_BOUNDS, q), rel=1e-12)
    assert interval.mean() == pytest.approx(during.mean())


def test_a_counter_that_went_down_counts_from_the_restart():
    bounds = np.array([1.0, math.inf])
    restarted = Histogram(bounds, np.array([2.0, 3.0])).since(Histogram(bounds, np.array([5.0, 9.0])))
    assert restarted is not None and restarted.counts.tolist() == [2.0, 3.0]


def served_trace(source: str, tmp_path: Path, duration: float = 0.6) -> tuple[tracer.Trace, MetricsServer]:
    out = tmp_path / f"{source}.msgpack"
    with MetricsServer(source) as server:
        result = watch(server.url, out, INTERVAL, duration)
    trace = tracer.load(out)
    assert result.scrapes == trace.ticks.height == len(server.served) >= 4
    return trace, server


def column(trace: tracer.Trace, frame: str, name: str) -> list[float]:
    """A column with nulls as NaN, for comparing with a computation that has no value there."""
    return [math.nan if v is None else v for v in getattr(trace, frame)[name].to_list()]


def same(got: float, expected: float) -> bool:
    return (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("source", ["vllm", "sglang", "tickscope"])
def test_every_scrape_is_a_tick_equal_to_what_the_server_served(source, tmp_path):
    trace, server = served_trace(source, tmp_path)
    watched = trace.header.config["watch"]
    assert watched["source"] == source and watched["url"] == server.url + "/metrics"
    assert watched["interval_s"] == INTERVAL
    assert ("sglang:num_running_reqs" if source == "sglang" else "vllm:num_requests_running") in watched["metrics"]
    ticks, scrapes = trace.ticks, trace.scrapes
    assert ticks["tick"].to_list() == scrapes["tick"].to_list() == list(range(ticks.height))
    assert scrapes["t_s"].to_list() == ticks["end_s"].to_list()
    starts, ends = ticks["start_s"].to_list(), ticks["end_s"].to_list()
    assert starts[1:] == ends[:-1]  # each interval runs from the previous answer to this one
    kv_known = source != "sglang"  # SGLang's page says its KV share, not its size in tokens
    absent = ticks["absent"].to_list()
    for i, (counters, gauges, counts) in enumerate(server.served):
        row = ticks.row(i, named=True)
        missing = {"wait_ns"} | (set() if kv_known else {"kv_used", "kv_capacity"})
        if source != "tickscope":  # only tickscope says how long it kept the device busy
            missing.add("forward_ns")
        if i == 0:  # no interval before the first scrape: its counts are unknown, not 0
            missing |= {"prefill_tokens", "decode_tokens", "sampled_tokens", "forward_ns"}
        assert set(absent_fields(absent[i])) == missing, i
        assert row["running"] == row["seqs"] == gauges["running"] and row["queue_depth"] == gauges["waiting"]
        if kv_known:
            assert row["kv_capacity"] == 16000 and row["kv_used"] == round(gauges["kv_usage"] * 16000)
        assert column(trace, "scrapes", "kv_usage")[i] == gauges["kv_usage"]
        if i == 0:
            assert all(math.isnan(column(trace, "scrapes", name)[0]) for name in ("prompt_tokens_s", "ttft_p50_s"))
            continue
        before, before_counts = server.served[i - 1][0], server.served[i - 1][2]
        seconds = ends[i] - starts[i]
        prompt, generated = (counters[k] - before[k] for k in ("prompt", "generation"))
        assert (row["prefill_tokens"], row["decode_tokens"], row["sampled_tokens"]) == (prompt, generated, generated)
        if source == "tickscope":
            assert row["forward_s"] == round((counters["device"] - before["device"]) * 1e9) / 1e9
        expected = {
            "prompt_tokens_s": prompt / seconds,
            "generation_tokens_s": generated / seconds,
            "requests_s": sum(counters[k] - before[k] for k in ("stop", "length")) / seconds,
            "preemptions_s": (counters["preemptions"] - before["preemptions"]) / seconds
            if source != "sglang"
            else math.nan,
            "gen_throughput": gauges.get("gen_throughput", math.nan),
        }
        observations = server.state.observations
        for role, levels in (("ttft", (50, 90, 99)), ("itl", (50, 90, 99)), ("e2e", (50, 90, 99)), ("queue", (50, 99))):
            during = observations[role][before_counts[role] : counts[role]] if role in observations else []
            for level in levels:
                expected[f"{role}_p{level}_s"] = quantile_by_hand(during, LATENCY_BOUNDS, level / 100)
        tick_times = observations.get("tick", [])[before_counts.get("tick", 0) : counts.get("tick", 0)]
        expected["tick_p50_s"] = quantile_by_hand(tick_times, LATENCY_BOUNDS, 0.5)
        iterations = observations.get("iteration", [])[before_counts.get("iteration", 0) : counts.get("iteration", 0)]
        expected["iterations_s"] = len(iterations) / seconds if "iteration" in observations else math.nan
        expected["iteration_tokens"] = float(np.mean(iterations)) if iterations else math.nan
        for name, value in expected.items():
            assert same(column(trace, "scrapes", name)[i], value), (i, name, column(trace, "scrapes", name)[i], value)
    busy = tracer.summarize(trace)["busy_s"]  # tickscope's busy time costs its tokens; the others' is unknown
    assert busy == pytest.approx(ticks["forward_s"].sum()) if source == "tickscope" else busy is None


def test_a_watched_trace_summarises_and_exports_like_any_recording(tmp_path):
    trace, _ = served_trace("vllm", tmp_path)
    out = tmp_path / "csv"
    tracer.export_csv(trace, out)
    assert (out / "scrapes.csv").read_text().partition("\n")[0].startswith("tick,t_s,kv_usage,")
    assert main(["summary", str(tmp_path / "vllm.msgpack")]) == 0
    figures = tracer.summarize(trace)
    # what the server's metrics cannot say is unknown, not 0: its device time and its request counts
    assert figures["busy_s"] is None and figures["device_s_per_token"] is None and figures["capacity_tok_s"] is None
    assert figures["requests_submitted"] is None and figures["goodput_req_s"] is None and figures["preemptions"] is None
    assert figures["output_tokens"] == trace.ticks["sampled_tokens"].sum() > 0
    assert figures["mean_batch_seqs"] == pytest.approx(trace.ticks["running"].mean())


def test_metrics_url_takes_a_server_or_its_page():
    assert metrics_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000/metrics"
    assert metrics_url("http://h:9/custom/metrics") == "http://h:9/custom/metrics"


def test_text_that_is_not_prometheus_is_refused():
    with pytest.raises(NotPrometheus):
        parse("<html><body>Not here</body></html>")
    assert TICK_FIELDS[-1] == "absent"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.parametrize(
    "server, message",
    [
        (None, "cannot reach http://127.0.0.1:{port}/metrics (ClientConnectorError"),
        (MetricsServer(body="<html><body>hello</body></html>"), "is not a Prometheus metrics page: it not Prometheus"),
        (MetricsServer(body="Not Found", status=404), "is not a Prometheus metrics page: it answered 404 Not Found"),
        (MetricsServer(body="node_cpu_seconds_total 12.5\n"), "exports none of vLLM's, SGLang's or tickscope's"),
    ],
    ids=["unreachable", "html", "404", "unknown-server"],
)
def test_a_url_that_is_no_servers_metrics_is_one_line_and_no_file(server, message, tmp_path, capsys):
    out = tmp_path / "w.msgpack"
    if server is None:
        port = free_port()
        code = main(["watch", f"http://127.0.0.1:{port}", "--out", str(out)])
        message = message.format(port=port)
    else:
        with server:
            code = main(["watch", server.url, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("tickscope watch: error: ")
    assert message in err and not out.exists()


def test_a_server_that_dies_mid_watch_ends_it_with_the_trace_closed(tmp_path, capsys):
    out = tmp_path / "w.msgpack"
    with MetricsServer(die_after=5) as server:
        code = main(["watch", server.url, "--out", str(out), "--interval", str(INTERVAL), "--duration", "30"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    n = len(server.served)  # 5, or 6 when a scrape came in as it was closing
    assert f"the server at {server.url}/metrics went away (" in err and f"{out} holds its {n} scrapes" in err
    with tracer.open_trace(out) as reader:
        assert reader.closed_cleanly
    trace = tracer.load(out)
    assert trace.ticks.height == n >= 5 and not trace.problems
    (mark,) = trace.marks.rows(named=True)  # the trace says what ended it, at the last tick
    assert mark["tick"] == n - 1 and mark["text"].startswith(f"the server at {server.url}/metrics went away (")


def shown(widget) -> str:
    """What a panel part shows: a line widget's strips (a wrapped line joined again), or a Static's content."""
    lines = getattr(widget, "_lines", None)
    if lines is not None:
        return "".join(strip.text for strip in lines)
    return str(widget.render())


def no_data_panels(app) -> dict[str, str]:
    """Each panel part on screen that says it has no data, by its class (and series)."""
    found = {}
    for widget in app.screen.query("*"):
        if isinstance(widget, Panel) and widget.display and shown(widget).startswith("no data"):
            found[getattr(widget, "series_name", type(widget).__name__)] = shown(widget)
    return found


async def test_the_dashboard_says_no_data_where_the_server_has_none(tmp_path):
    trace, _ = await asyncio.to_thread(served_trace, "sglang", tmp_path)  # watch runs its own event loop
    app = TickscopeApp(ReplaySource(str(tmp_path / "sglang.msgpack")), "replay", autoplay=False)
    async with app.run_test(size=(160, 48)) as pilot:
        await until(pilot, lambda: app.status == "loaded" and app.state.n_ticks == trace.ticks.height)
        await pilot.press("end")
        await pilot.pause()
        found = no_data_panels(app)
        assert set(found) == {"ExpertHeatmap", "RequestTable", "CostPanel", "kv_used"}
        assert found["CostPanel"] == "no data: the watched sglang server reports no forward time"
        assert found["kv_used"] == "no data: the watched sglang server reports no KV cache size in tokens"
        assert "no expert load" in found["ExpertHeatmap"] and "not in the trace" in found["RequestTable"]
        queue = shown(app.screen.query_one(QueuePanel))  # the lines it has data for, and the ones it has not
        last = trace.ticks.row(-1, named=True)
        assert f"queue {last['queue_depth']}" in queue and f"running {last['running']}" in queue
        assert "KV no data: the watched sglang server reports no KV cache size" in queue
        assert "done no data: the watched sglang server's requests are not in the trace" in queue
        # the server's own percentiles over the interval that ended at this tick, as the scrape holds them
        latency = shown(app.screen.query_one(LatencyPanel))
        scrape = trace.scrapes.row(-1, named=True)
        for label, name in (("TTFT", "ttft"), ("ITL", "itl"), ("E2E", "e2e")):
            figures = " ".join(fmt_s(scrape[f"{name}_{level}_s"]) for level in ("p50", "p90", "p99"))
            assert " ".join(f"{label} {figures}".split()) in " ".join(latency.split())
        assert f"{scrape['requests_s']:,.1f}" in latency and f"{scrape['generation_tokens_s']:,.1f}" in latency
        throughput = next(w for w in app.screen.query(SeriesChart) if w.series_name == "throughput")
        expected = last["sampled_tokens"] / (last["end_s"] - last["start_s"])
        assert f"now {fmt_value(expected)}" in shown(throughput)  # drawn: the server counts its tokens


async def test_the_dashboard_follows_a_watch_live(tmp_path):
    out = tmp_path / "live.msgpack"
    with MetricsServer("vllm") as server:
        thread = threading.Thread(target=watch, args=(server.url, out, INTERVAL, 1.5))
        thread.start()
        while not out.exists():
            await asyncio.sleep(0.01)
        app = TickscopeApp(LiveSource(str(out)), "live")
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, lambda: app.state.n_ticks >= 3)
            seen = app.state.n_ticks
            await until(pilot, lambda: app.state.n_ticks > seen)  # it grows as the server is scraped
            await pilot.pause()
            found = no_data_panels(app)
            assert set(found) == {"ExpertHeatmap", "RequestTable", "CostPanel"}  # vLLM says its KV
            thread.join()
            await until(pilot, lambda: app.status == "ended")
            assert app.state.n_ticks == len(server.served)


class ServedInThread:
    """The real `tickscope serve` front (workloads/serve.py) on the tiny CPU engine, in a thread."""

    def __init__(self, trace: Path) -> None:
        self.trace = trace
        self.url = ""
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        from workloads.serve import ServePlan, Server

        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()

        def ready(url: str, name: str) -> None:
            self.url = url
            self._ready.set()

        await Server(ServePlan(trace=self.trace, port=0, device="cpu")).run(self._stop, ready)

    def __enter__(self) -> ServedInThread:
        self._thread.start()
        assert self._ready.wait(60)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


LIGHT_LOAD = """
seed = 3
duration_s = 0.6
[arrivals]
kind = "poisson"
rate = 30.0
[prompt]
kind = "uniform"
min = 2
max = 6
[output]
kind = "fixed"
value = 4
"""


def test_record_target_watch_puts_requests_and_scrapes_in_one_trace(tmp_path, capsys):
    workload = tmp_path / "light.toml"
    workload.write_text(LIGHT_LOAD)
    out = tmp_path / "both.msgpack"
    with ServedInThread(tmp_path / "served.msgpack") as served, MetricsServer("vllm") as metrics:
        code = main(
            ["record", "--target", served.url, "--watch", metrics.url, "--interval", str(INTERVAL)]
            + ["--workload", str(workload), "--out", str(out), "--quiet"]
        )
    assert code == 0, capsys.readouterr().err
    trace = tracer.load(out)
    config = trace.header.config
    assert config["target"] == served.url and config["watch"]["url"] == metrics.url + "/metrics"
    assert trace.requests.height > 0 and set(trace.requests["status"]) == {"finished"}
    assert trace.ticks.height == trace.scrapes.height == len(metrics.served) >= 5
    # one clock: the scrapes span the requests' lives, the first before the first arrival
    assert trace.ticks["start_s"][0] <= trace.requests["arrival_s"].min()
    assert trace.ticks["end_s"][-1] >= trace.requests["finish_s"].max()
    state = DashboardState()
    state.set_header(trace.header)
    assert state.missing(("requests",)) is None and state.missing(("experts",)) is not None


def test_record_watch_needs_a_target(tmp_path, capsys):
    assert main(["record", "--watch", "--out", str(tmp_path / "x.msgpack")]) == 2
    assert "--watch scrapes the server that --target drives" in capsys.readouterr().err
    assert not (tmp_path / "x.msgpack").exists()


def test_watch_without_out_follows_a_temporary_trace_as_demo_does(tmp_path, monkeypatch, capsys):
    """The recording runs in a child process; the dashboard (here a stand-in that waits for a few
    ticks, as a user would watch them) follows its file; quitting stops the child cleanly."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    followed = []

    def dashboard(path: str, mode: str) -> None:
        tail = tracer.TraceTail(path)
        ticks: list[tracer.TickEvent] = []
        for _ in range(1000):
            ticks += [ev for ev in tail.poll() if isinstance(ev, tracer.TickEvent)]
            if len(ticks) >= 3:
                break
            time.sleep(0.01)
        followed.append((path, mode, len(ticks)))

    monkeypatch.setattr("tui.app.run_dashboard", dashboard)
    with MetricsServer("sglang") as server:
        assert main(["watch", server.url, "--interval", str(INTERVAL)]) == 0
    ((path, mode, seen),) = followed
    assert mode == "live" and seen >= 3 and Path(path).parent == tmp_path
    assert capsys.readouterr().out.strip() == f"trace written to {path}"
    trace = tracer.load(path)
    assert trace.header.config["watch"]["source"] == "sglang" and trace.ticks.height >= 3
    with tracer.open_trace(path) as reader:
        assert reader.closed_cleanly
    assert not Path(path + ".log").exists()


def test_a_server_of_many_engines_is_one_server_and_a_big_page_is_read_whole(tmp_path):
    copies = 300  # every sample once per model: a page of about a megabyte
    out = tmp_path / "many.msgpack"
    with MetricsServer("vllm", copies=copies) as server:
        watch(server.url, out, INTERVAL, 0.3)
    trace = tracer.load(out)
    assert trace.ticks.height == len(server.served) >= 3
    for i, (counters, gauges, _) in enumerate(server.served):
        row, scrape = trace.ticks.row(i, named=True), trace.scrapes.row(i, named=True)
        assert row["running"] == copies * gauges["running"]  # counts add up over engines...
        assert scrape["kv_usage"] == pytest.approx(gauges["kv_usage"])  # ...a share is their mean
        if i:
            assert row["prefill_tokens"] == copies * (counters["prompt"] - server.served[i - 1][0]["prompt"])
    single = tmp_path / "one.msgpack"
    with MetricsServer("vllm") as server:  # the same traffic on one engine: the same percentiles
        watch(server.url, single, INTERVAL, 0.3)
    one = tracer.load(single).scrapes
    n = min(one.height, trace.scrapes.height)
    for name in ("ttft_p50_s", "e2e_p99_s"):
        assert column(trace, "scrapes", name)[:n] == pytest.approx(
            [math.nan if v is None else v for v in one[name].to_list()[:n]], nan_ok=True
        )


async def test_two_watched_servers_compare_side_by_side(tmp_path):
    from tui.compare_app import CompareApp
    from tui.compare_source import TraceSide

    for source in ("vllm", "sglang"):
        await asyncio.to_thread(served_trace, source, tmp_path)
    app = CompareApp(TraceSide(str(tmp_path / "vllm.msgpack")), TraceSide(str(tmp_path / "sglang.msgpack")))
    async with app.run_test(size=(160, 48)) as pilot:
        await until(pilot, lambda: app.status == "loaded" and app.comparison is not None)
        await pilot.press("end")
        await pilot.pause()
        found = no_data_panels(app)
        assert "ExpertHeatmap" in found
        assert all(text.startswith("no data: the watched ") for text in found.values())


def test_record_target_watch_scrapes_tickscope_serve_s_own_metrics(tmp_path, capsys):
    """The real `serve` and its real /metrics: every token and request it served is in the scrapes."""
    workload = tmp_path / "light.toml"
    workload.write_text(LIGHT_LOAD)
    out = tmp_path / "served-and-watched.msgpack"
    with ServedInThread(tmp_path / "served.msgpack") as served:
        code = main(
            ["record", "--target", served.url, "--watch", "--interval", str(INTERVAL)]
            + ["--workload", str(workload), "--out", str(out), "--quiet"]
        )
    assert code == 0, capsys.readouterr().err
    trace = tracer.load(out)
    assert trace.header.config["watch"]["source"] == "tickscope"
    assert "tickscope:tick_seconds" in trace.header.config["watch"]["metrics"]
    ticks, requests = trace.ticks, trace.requests
    assert ticks.height >= 5 and set(requests["status"]) == {"finished"}
    # the first scrape came before the first request, the last after the last: the counters' increases
    # over the watch are what the client sent and got
    assert ticks["sampled_tokens"][1:].sum() == requests["output_tokens"].sum()
    assert ticks["prefill_tokens"][1:].sum() == requests["prompt_tokens"].sum()
    seconds = (ticks["end_s"] - ticks["start_s"]).to_numpy()[1:]
    assert round(float(np.nansum(trace.scrapes["requests_s"].to_numpy()[1:] * seconds))) == requests.height
    assert trace.scrapes["ttft_p50_s"].drop_nulls().len() > 0 and trace.scrapes["tick_p50_s"].drop_nulls().len() > 0
    assert ticks["forward_s"][1:].sum() > 0  # its busy time, so what a token costs is measured
    assert ticks["running"].max() > 0


def test_watch_recognises_an_idle_tickscope_serve(tmp_path):
    out = tmp_path / "idle.msgpack"
    with ServedInThread(tmp_path / "served.msgpack") as served:
        result = watch(served.url, out, INTERVAL, 0.2)
    trace = tracer.load(out)
    assert result.source == "tickscope" and trace.ticks.height == result.scrapes >= 3
    # nothing ran: every count is a true 0 (known), the percentiles have nothing to say (null)
    assert trace.ticks["sampled_tokens"][1:].to_list() == [0] * (trace.ticks.height - 1)
    # its /metrics gives the KV share and vLLM's cache_config_info: the size in tokens is known
    assert set(absent_fields(trace.ticks["absent"][1])) == {"wait_ns"}
    served_kv = tracer.load(tmp_path / "served.msgpack").header.config["scheduler"]["kv_capacity_tokens"]
    assert trace.ticks["kv_capacity"][1:].to_list() == [served_kv] * (trace.ticks.height - 1)
    assert trace.ticks["kv_used"][1:].to_list() == [0] * (trace.ticks.height - 1)
    assert trace.scrapes["kv_usage"].to_list() == [0.0] * trace.ticks.height
    assert trace.scrapes["ttft_p50_s"].null_count() == trace.scrapes.height
