"""`GET /metrics` of the real `tickscope serve`, scraped over HTTP after requests that finish, get
preempted and walk away, each figure checked against the trace the same run wrote (tracer.load and
tracer.cost), computed from the trace independently."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import aiohttp
import numpy as np
import polars as pl
import pytest
from prometheus_client.parser import text_string_to_metric_families

import tracer
from test_cli import UI_PACKAGES_ABSENT
from tracer.cost import cost_summary
from workloads.serve import ServePlan, Server
from workloads.server_metrics import (
    ITERATION_TOKENS_BUCKETS,
    ITL_BUCKETS,
    REQUEST_LATENCY_BUCKETS,
    TICK_BUCKETS,
    TTFT_BUCKETS,
)

MODEL = "traced-moe"

# KV for 128 tokens, shared by requests of up to 60: they preempt one another. Two stages of two
# micro-batches: a tick's device time is its modelled stage timeline's makespan x 2 devices.
PLAN = {
    "model_name": MODEL,
    "scheduler_overrides": {"kv_capacity_tokens": 128, "max_seqs": 8, "stages": 2, "micro_batches": 2},
}


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, labels other than model_name): value}; all must carry our model_name."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = dict(s.labels)
            assert labels.pop("model_name") == MODEL, s
            samples[s.name, tuple(sorted(labels.items()))] = s.value
    return samples


async def settled(server: Server, http: aiohttp.ClientSession) -> tuple[dict, tracer.Trace]:
    """Once every request has ended and the engine's last tick is in both: the scrape and the trace."""
    for _ in range(500):
        async with http.get(server.url + "/metrics") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            metrics = scrape(await r.text())
        assert server._writer.flush(10)
        trace = tracer.load(server.plan.trace)
        ended = sum(server.counts.values()) == server._next_id
        ticks = trace.ticks.height
        if ended and metrics["tickscope:tick_seconds_count", ()] == ticks == server.engine.ticks:
            if trace.experts.height and trace.experts["tick"].max() == ticks - 1 and trace.stages.height:
                return metrics, trace
        await asyncio.sleep(0.02)
    raise AssertionError("the server did not settle")


def check_histogram(metrics: dict, name: str, values: np.ndarray, buckets: tuple[float, ...]) -> None:
    values = np.asarray(values, dtype=np.float64)
    assert metrics[f"{name}_count", ()] == len(values), name
    assert metrics[f"{name}_sum", ()] == pytest.approx(values.sum(), rel=1e-9, abs=1e-9), name
    for le in buckets:
        assert metrics[f"{name}_bucket", (("le", str(float(le))),)] == (values <= le).sum(), (name, le)
    assert metrics[f"{name}_bucket", (("le", "+Inf"),)] == len(values), name


async def drive(server: Server, http: aiohttp.ClientSession) -> None:
    """Six requests at once that outgrow the KV cache, a chat among them, and one client that leaves."""
    url = server.url + "/v1/completions"

    async def complete(prompt: list[int], max_tokens: int) -> None:
        async with http.post(url, json={"model": MODEL, "prompt": prompt, "max_tokens": max_tokens}) as r:
            assert r.status == 200

    async def chat() -> None:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 30}
        async with http.post(server.url + "/v1/chat/completions", json=body) as r:
            assert r.status == 200

    async def leave() -> None:
        body = {"model": MODEL, "prompt": [7, 8, 9], "max_tokens": 100, "stream": True}
        async with http.post(url, json=body) as r:
            await r.content.readuntil(b"\n\n")
            r.close()

    await asyncio.gather(*(complete(list(range(1, 21 + i)), 40) for i in range(5)), chat(), leave())


async def test_metrics_agree_with_the_trace(tmp_path):
    server = Server(ServePlan(trace=tmp_path / "served.msgpack", port=0, device="cpu", **PLAN))
    async with server, aiohttp.ClientSession() as http:
        await drive(server, http)
        metrics, trace = await settled(server, http)

    ticks, reqs = trace.ticks, trace.requests
    last = ticks.row(-1, named=True)
    assert metrics["vllm:num_requests_running", ()] == last["running"]
    assert metrics["vllm:num_requests_waiting", ()] == last["queue_depth"]
    assert metrics["vllm:kv_cache_usage_perc", ()] == last["kv_used"] / last["kv_capacity"]

    preemptions = int(reqs["preemptions"].sum())
    assert preemptions > 0  # the KV cache was outgrown, as PLAN meant
    assert metrics["vllm:num_preemptions_total", ()] == preemptions
    assert metrics["vllm:prompt_tokens_total", ()] == ticks["prefill_tokens"].sum()
    assert metrics["vllm:generation_tokens_total", ()] == ticks["sampled_tokens"].sum()

    status = reqs["status"].value_counts()
    count = dict(zip(status["status"], status["count"]))
    assert count.get("finished") == 6 and count.get("cancelled") == 1
    finished = reqs.filter(pl.col("status") == "finished")["reason"].to_list()
    ended = {"stop": finished.count("stop"), "length": finished.count("length")}
    ended |= {"abort": count.get("cancelled", 0), "error": count.get("failed", 0)}
    for reason, n in ended.items():
        assert metrics["vllm:request_success_total", (("finished_reason", reason),)] == n
    assert metrics["tickscope:requests_rejected_total", ()] == count.get("rejected", 0)

    taken = reqs.filter(pl.col("status") != "rejected")
    check_histogram(metrics, "vllm:time_to_first_token_seconds", reqs["ttft_s"].drop_nulls(), TTFT_BUCKETS)
    check_histogram(metrics, "vllm:inter_token_latency_seconds", trace.itl_s, ITL_BUCKETS)
    check_histogram(metrics, "vllm:e2e_request_latency_seconds", taken["e2e_s"], REQUEST_LATENCY_BUCKETS)
    check_histogram(
        metrics, "vllm:request_queue_time_seconds", reqs["queue_wait_s"].drop_nulls(), REQUEST_LATENCY_BUCKETS
    )
    processed = (ticks["prefill_tokens"] + ticks["decode_tokens"]).to_numpy()
    check_histogram(metrics, "vllm:iteration_tokens_total", processed, ITERATION_TOKENS_BUCKETS)
    check_histogram(metrics, "tickscope:tick_seconds", (ticks["end_s"] - ticks["start_s"]).to_numpy(), TICK_BUCKETS)

    # experts that got a token in the last tick, layer by layer
    last_tick = trace.experts.filter(pl.col("tick") == last["tick"])
    active = last_tick.group_by("layer").agg((pl.col("tokens") > 0).sum().alias("n")).sort("layer")
    layers = trace.header.config["model"]["layers"]
    assert active.height == layers
    for layer, n in active.iter_rows():
        assert metrics["tickscope:experts_active", (("layer", str(layer)),)] == n
    assert metrics["tickscope:routed_experts", ()] == trace.header.config["model"]["routed_experts"]

    cost = cost_summary(trace)
    assert metrics["tickscope:device_seconds_total", ()] == pytest.approx(cost["device_s"], rel=1e-9)
    assert cost["device_s"] > ticks["forward_s"].sum() * 1.01  # two devices' worth: the stage timeline counted
    assert metrics["tickscope:processed_tokens_total", ()] == cost["processed_tokens"]
    for name, key in (
        ("tickscope:device_seconds_per_token", "device_s_per_token"),
        ("tickscope:device_seconds_per_output_token", "device_s_per_output_token"),
        ("tickscope:bytes_per_token", "bytes_per_token"),
    ):
        assert metrics[name, ()] == pytest.approx(cost[key], rel=1e-9), name


async def test_metrics_before_any_tick_have_no_ratios(tmp_path):
    """Nothing to divide by yet: the per-token figures are absent rather than zero."""
    server = Server(ServePlan(trace=tmp_path / "idle.msgpack", port=0, device="cpu", model_name=MODEL))
    async with server, aiohttp.ClientSession() as http, http.get(server.url + "/metrics") as r:
        metrics = scrape(await r.text())
    assert metrics["tickscope:device_seconds_total", ()] == 0 and metrics["vllm:prompt_tokens_total", ()] == 0
    assert not any(name.endswith("_per_token") or name.endswith("_per_output_token") for name, _ in metrics)
    assert metrics["vllm:time_to_first_token_seconds_count", ()] == 0


_LEAN_SERVE = (
    UI_PACKAGES_ABSENT
    + """
import asyncio, urllib.request
from workloads.serve import ServePlan, Server

def get(url, body=None):
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read().decode()

async def main():
    async with Server(ServePlan(trace=sys.argv[1], port=0, device="cpu")) as url:
        await asyncio.to_thread(get, url + "/v1/completions", b'{"prompt": "hi", "max_tokens": 3}')
        print(await asyncio.to_thread(get, url + "/metrics"))

asyncio.run(main())
"""
)


def test_serve_and_its_metrics_need_no_polars(tmp_path):
    """A GPU host may have torch but not the dashboard's packages: it serves and is scraped, without
    the figures that need the trace's cost model (tracer.cost reads polars frames)."""
    result = subprocess.run(
        [sys.executable, "-c", _LEAN_SERVE, str(tmp_path / "lean.msgpack")],
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    metrics = {s.name: s.value for f in text_string_to_metric_families(result.stdout) for s in f.samples}
    assert metrics["vllm:generation_tokens_total"] >= 2 and metrics["tickscope:device_seconds_total"] > 0
    assert "tickscope:bytes_per_token" not in metrics and "tickscope:device_seconds_per_output_token" in metrics
