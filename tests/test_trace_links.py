"""The batch event links every request to the ticks it ran in, and a recorded trace proves the
request contract: each request ends exactly once, and its per-tick token counts add up."""

from __future__ import annotations

import collections

import numpy as np
import polars as pl
import pytest

import tracer
from tracer.codec import BATCH, decode_events, encode_event, packb
from tracer.events import BatchEvent, RequestEvent, SessionHeader
from workloads.run import Recording, RecordingPlan

# Arrivals past what a 384-token KV cache holds: sequences are preempted as they grow, and the
# queue of 4 rejects some. The prefill chunk and tick budget (defaults 512, 2048) always fit a whole
# prompt or recompute, so a sequence is preempted holding exactly prompt + generated - 1 tokens.
CONTENDED = """\
seed = 2
duration_s = 1.5

[arrivals]
kind = "poisson"
rate = 200.0

[prompt]
kind = "uniform"
min = 8
max = 48

[output]
kind = "uniform"
min = 8
max = 48

[scheduler]
policy = "continuous"
max_seqs = 16
kv_capacity_tokens = 384
queue_limit = 4
attention = "same-length"
"""


def batch(tick: int, requests: list[int], prefill: list[int], decode: list[int], groups: list[int]) -> BatchEvent:
    return BatchEvent(
        tick,
        np.array(requests, np.int64),
        np.array(prefill, np.int32),
        np.array(decode, np.int32),
        np.array(groups, np.int16),
    )


def test_batch_event_round_trips_and_refuses_ragged_columns():
    ev = batch(7, [3, 2**40], [12, 0], [0, 1], [1, 0])
    (back,) = decode_events(packb([encode_event(ev)]))
    assert back.tick == 7 and back.requests.tolist() == [3, 2**40] and back.groups.dtype == np.int16
    assert back.prefill_tokens.tolist() == [12, 0] and back.decode_tokens.tolist() == [0, 1]
    item = encode_event(ev)
    assert item[0] == BATCH
    item[4] = item[4][:4]  # decode_tokens for one sequence, requests for two
    with pytest.raises(tracer.TraceFormatError, match="batch event"):
        decode_events(packb([item]))


def test_batches_frame_is_long_form():
    trace = tracer.from_events(
        SessionHeader(0, 0), [batch(0, [1], [5], [0], [0]), batch(1, [1, 2], [0, 4], [1, 0], [0, 1])]
    )
    assert trace.batches.rows() == [(0, 1, 5, 0, 0), (1, 1, 0, 1, 0), (1, 2, 4, 0, 1)]
    assert tracer.from_events(SessionHeader(0, 0), []).batches.columns == [
        "tick",
        "request",
        "prefill_tokens",
        "decode_tokens",
        "group",
    ]


def test_a_trace_proves_every_request_ended_once_and_its_tokens_add_up(tmp_path):
    workload = tmp_path / "contended.toml"
    workload.write_text(CONTENDED)
    out = tmp_path / "links.msgpack"
    Recording(RecordingPlan(preset="tiny", workload=str(workload), out=out, device="cpu")).run()

    with tracer.open_trace(out) as reader:
        events = [e for e in reader.events() if isinstance(e, RequestEvent)]
    arrived = {e.request for e in events if e.phase == "arrive"}
    finishes = collections.Counter(e.request for e in events if e.phase == "finish")
    assert arrived and set(finishes) == arrived and set(finishes.values()) == {1}

    trace = tracer.load(out)
    reqs, rows = trace.requests, trace.batches
    assert set(reqs["status"]) == {"finished", "rejected"}
    rejected = set(reqs.filter(status="rejected")["request"])
    assert rejected and not rejected & set(rows["request"])

    # the batch rows agree with each tick's totals
    per_tick = (
        rows.group_by("tick")
        .agg(pl.len().alias("seqs"), pl.col("prefill_tokens").sum(), pl.col("decode_tokens").sum())
        .sort("tick")
    )
    assert per_tick.equals(trace.ticks.select(per_tick.columns).cast(per_tick.schema))

    # each finished request's rows add up to prompt + output - 1, plus what preemption made it redo
    preempted = collections.defaultdict(list)
    for e in events:
        if e.phase == "preempt":
            preempted[e.request].append(e)
    assert preempted, "the workload is meant to preempt"
    done = reqs.filter(status="finished").join(
        rows.group_by("request").agg(pl.col("prefill_tokens").sum(), pl.col("decode_tokens").sum()), on="request"
    )
    assert done.height == reqs.height - len(rejected)
    for r in done.iter_rows(named=True):
        redo = sum(p.prompt_tokens + p.output_tokens - 1 for p in preempted[r["request"]])
        assert r["prefill_tokens"] + r["decode_tokens"] == r["prompt_tokens"] + r["output_tokens"] - 1 + redo
        if not redo:
            assert (r["prefill_tokens"], r["decode_tokens"]) == (r["prompt_tokens"], r["output_tokens"] - 1)

    # same-length attention: sequences share a call exactly when their key lengths (replayed from
    # the rows, starting again after each preemption) are equal, shorter lengths first
    held: dict[int, int] = {}
    last_tick: dict[int, int] = {}
    key_len = []
    for tick, request, prefill, decode, _ in rows.iter_rows():
        # preempted since its last row (in the tick it was preempted in, or while it waited after)
        if any(last_tick.get(request, -1) < p.tick <= tick for p in preempted[request]):
            held[request] = 0
        held[request] = held.get(request, 0) + prefill + decode
        last_tick[request] = tick
        key_len.append(held[request])
    calls = (
        rows.with_columns(key_len=pl.Series(key_len))
        .group_by("tick", "group")
        .agg(pl.col("key_len").min().alias("lo"), pl.col("key_len").max().alias("hi"))
        .sort("tick", "group")
    )
    assert (calls["lo"] == calls["hi"]).all()
    for _, call in calls.group_by("tick"):
        lengths = call.sort("group")["lo"].to_list()
        assert lengths == sorted(set(lengths))
