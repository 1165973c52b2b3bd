"""Production traffic: the three public trace formats read row by row, windowed, scaled and clipped, and
a recording whose requests are exactly the trace's rows. The files are written here; nothing is
downloaded."""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

import tracer
from engine.errors import ConfigError
from engine.request import Request
from tracer.recorder import ListRecorder
from tui.cli import main
from workloads.loadgen import run_load
from workloads.serve import ServePlan, Server
from workloads.spec import load_workload
from workloads.traffic import TrafficSpec, detect_format, replay, scan, traffic_spec

AZURE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 23:59:58.6805900,374,44
2023-11-16 23:59:58.6805901,120,7
2023-11-16 23:59:59.9999999,2048,900
2023-11-17 00:00:00.0000001,16,3
2023-11-17 00:00:01.5,64,0
2023-11-17 00:00:03,300,20
"""

BURSTGPT = """Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,Log Type
5,1,2.3,ChatGPT,472,18,490,Conversation log
5.25,2,0.0,GPT-4,1193,0,1193,Conversation log
45.125,3,1.1,ChatGPT,1009,325,1334,API log
46,4,0.0,GPT-4,44,0,44,API log
60.5,5,4.2,ChatGPT,0,120,120,API log
"""

MOONCAKE = """{"timestamp": 0, "input_length": 6755, "output_length": 500, "hash_ids": [0, 1, 2]}
{"timestamp": 1500.5, "input_length": 300, "output_length": 12, "hash_ids": [0]}

{"timestamp": 2000, "input_length": 9000, "output_length": 30, "hash_ids": []}
{"timestamp": 7000.25, "input_length": 128, "output_length": 64, "hash_ids": [7]}
"""


# a BurstGPT window for the tiny model, replayed with `burstgpt_tiny_flags`
BURSTGPT_TINY = (
    "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
    "10,ChatGPT,12,6,18,Conversation log\n"
    "10.5,ChatGPT,40,0,40,Conversation log\n"  # failed: skipped
    "11.2,GPT-4,1500,10,1510,API log\n"  # past the tiny model's 1024-token context
    "12.0,ChatGPT,7,9,16,API log\n"
    "13.0,ChatGPT,20,4,24,API log\n"
)


def burstgpt_tiny_flags(trace: Path) -> list[str]:
    """Twice as fast, from 0.1 s in: the first row is left out."""
    return ["--traffic", str(trace), "--traffic-time-scale", "0.5", "--traffic-start", "0.1", "--device", "cpu"]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def spec_of(path: Path, **options: object) -> TrafficSpec:
    return traffic_spec(str(path), path, options)


def sent(spec: TrafficSpec) -> list[tuple[float, int, int]]:
    """(offset, prompt, output) of each request the replay sends."""
    return [(t, p, o) for t, p, o, _ in replay(spec)]


def seconds_of_day(stamp: str) -> Decimal:
    """An Azure time of day in seconds, from its digits (the test's own reading of the format)."""
    day, clock = stamp.split(" ")
    h, m, s = clock.split(":")
    return int(day[-2:]) * 86400 + int(h) * 3600 + int(m) * 60 + Decimal(s)


def azure_rows() -> list[tuple[Decimal, int, int]]:
    rows = []
    for line in AZURE.splitlines()[1:]:
        stamp, prompt, output = line.split(",")
        rows.append((seconds_of_day(stamp), int(prompt), int(output)))
    t0 = rows[0][0]
    return [(t - t0, p, o) for t, p, o in rows]


# --- the formats ------------------------------------------------------------------------------


def test_azure_times_are_read_to_the_hundred_nanoseconds_across_midnight(tmp_path):
    path = write(tmp_path, "AzureLLMInferenceTrace_code.csv", AZURE)
    spec = scan(spec_of(path, keep_failed=True), None)
    got = sent(spec)
    want = [(t, p, max(o, 1)) for t, p, o in azure_rows()]
    assert [(p, o) for _, p, o in got] == [(p, o) for _, p, o in want]
    for (offset, _, _), (t, _, _) in zip(got, want, strict=True):
        assert offset == pytest.approx(float(t), abs=1e-12)
    # 100 ns apart: a parser that went through a float of the seconds, or stopped at microseconds, sees 0
    assert got[1][0] - got[0][0] == pytest.approx(1e-7, abs=1e-12)
    assert got[3][0] - got[2][0] == pytest.approx(2e-7, abs=1e-12)
    assert spec.scan is not None and spec.scan.rows == 6 and spec.scan.failed == 1
    assert spec.scan.first_line == 2 and spec.scan.last_line == 7


def test_azure_time_zones_and_extra_columns(tmp_path):
    path = write(
        tmp_path,
        "mm.csv",
        "TIMESTAMP,NumImages,ContextTokens,GeneratedTokens\n"
        "2024-05-10 00:00:00.000000+00:00,2,900,120\n"
        "2024-05-10 02:00:01.250000+02:00,0,50,5\n",
    )
    assert detect_format(path) == "azure"
    assert sent(spec_of(path)) == [(0.0, 900, 120), (1.25, 50, 5)]


def test_burstgpt_failed_rows_are_skipped_or_kept(tmp_path):
    path = write(tmp_path, "BurstGPT_1.csv", BURSTGPT)
    skipped = scan(spec_of(path), None)
    assert sent(skipped) == [(0.0, 472, 18), (40.125, 1009, 325), (55.5, 1, 120)]
    assert skipped.scan is not None
    assert (skipped.scan.rows, skipped.scan.failed, skipped.scan.empty_prompts) == (3, 2, 1)
    kept = scan(spec_of(path, keep_failed=True), None)
    assert sent(kept) == [
        (0.0, 472, 18),
        (0.25, 1193, 1),
        (40.125, 1009, 325),
        (41.0, 44, 1),
        (55.5, 1, 120),
    ]
    assert kept.scan is not None and (kept.scan.rows, kept.scan.failed) == (5, 2)


def test_burstgpt_six_column_release(tmp_path):
    path = write(
        tmp_path,
        "b.csv",
        "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
        "0.5,GPT-4,100,50,150,Conversation log\n1,ChatGPT,200,30,230,API log\n",
    )
    assert detect_format(path) == "burstgpt"
    assert sent(spec_of(path)) == [(0.0, 100, 50), (0.5, 200, 30)]


def test_mooncake_times_are_milliseconds(tmp_path):
    path = write(tmp_path, "conversation_trace.jsonl", MOONCAKE)
    assert detect_format(path) == "mooncake"
    assert sent(spec_of(path)) == [(0.0, 6755, 500), (1.5005, 300, 12), (2.0, 9000, 30), (7.00025, 128, 64)]


class Capture:
    """An engine that keeps what it is sent and answers nothing (each request ends rejected at once)."""

    def __init__(self) -> None:
        self.prompts: list[list[int]] = []

    def submit(self, req: Request) -> None:
        self.prompts.append(req.prompt)
        req.sink.on_finish("rejected", "captured", time.monotonic_ns())


async def test_mooncake_blocks_are_shared_prompt_prefixes(tmp_path):
    lines = [
        {"timestamp": 0, "input_length": 1100, "output_length": 4, "hash_ids": [0, 1, 2]},
        {"timestamp": 10, "input_length": 1300, "output_length": 4, "hash_ids": [0, 1, 5]},
        {"timestamp": 20, "input_length": 300, "output_length": 4, "hash_ids": [0]},
        {"timestamp": 30, "input_length": 600, "output_length": 4, "hash_ids": [9]},
    ]
    trace = write(tmp_path, "m.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    assert [b for *_, b in replay(spec_of(trace))] == [(0, 1, 2), (0, 1, 5), (0,), (9,)]
    toml = write(tmp_path, "w.toml", '[arrivals]\nkind = "trace"\nfile = "m.jsonl"\n')
    engine = Capture()
    await run_load(engine, load_workload(toml).with_context(4096), ListRecorder(), vocab_size=512)
    a, b, c, d = (np.array(p) for p in engine.prompts)
    assert [len(p) for p in (a, b, c, d)] == [1100, 1300, 300, 600]
    assert (a[:1024] == b[:1024]).all() and (c == a[:300]).all()  # blocks 0 and 1, then block 0 alone
    # block 2 differs from block 5, and block 9 from block 0: a 1-in-512 match per token at random
    assert (a[1024:] != b[1024:1100]).mean() > 0.9 and (d[:512] != a[:512]).mean() > 0.9


# --- window, time, rate, context ----------------------------------------------------------------


def test_window_selects_rows_and_restarts_the_clock(tmp_path):
    path = write(tmp_path, "b.csv", BURSTGPT)
    spec = scan(spec_of(path, start_s=0.25, duration_s=45, keep_failed=True), None)
    # trace offsets 0.25, 40.125 and 41 fall in [0.25, 45.25); 55.5 does not
    assert sent(spec) == [(0.0, 1193, 1), (39.875, 1009, 325), (40.75, 44, 1)]
    assert spec.scan is not None and spec.scan.window_s == 45 and spec.scan.rows == 3
    # a window past the file's end covers up to its last row
    tail = scan(spec_of(path, start_s=40, duration_s=100), None)
    assert tail.scan is not None and tail.scan.window_s == pytest.approx(15.5) and tail.scan.rows == 2


def test_the_window_is_read_as_a_stream_that_stops_at_its_end(tmp_path):
    # the first row past the window ends the reading: the broken one after it is never read
    broken = "70,6,0.0,GPT-4,10,1,11,API log\n71,7,0.0,GPT-4,not-a-number,1,1,API log\n"
    path = write(tmp_path, "b.csv", BURSTGPT + broken)
    assert scan(spec_of(path, duration_s=60), None).scan is not None
    with pytest.raises(ConfigError, match="line 8: Request tokens is 'not-a-number'"):
        scan(spec_of(path), None)


def test_sending_starts_reading_where_the_window_starts(tmp_path):
    path = write(tmp_path, "a.csv", AZURE)
    spec = scan(spec_of(path, start_s=1.5), None)
    # offsets 2.8194100 (failed, skipped) and 4.3194100 are in the window; 1.3194099 is not
    assert spec.scan is not None and spec.scan.first_line == 7
    # the rows before the window are not read again: spoilt after the scan (byte for byte), they change nothing
    text = path.read_text()
    path.write_text(text.replace("374,44", "xxx,44").replace("23:59:58.6805901", "23:59:5x.6805901"))
    assert sent(spec) == [(pytest.approx(4.31941 - 1.5), 300, 20)]


def test_crlf_lines_a_byte_order_mark_and_quoted_fields(tmp_path):
    path = tmp_path / "b.csv"
    text = BURSTGPT.replace("ChatGPT,472", '"ChatGPT",472').replace("\n", "\r\n")
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert detect_format(path) == "burstgpt"
    assert sent(spec_of(path))[:2] == [(0.0, 472, 18), (40.125, 1009, 325)]


def test_time_scale_multiplies_every_offset(tmp_path):
    path = write(tmp_path, "m.jsonl", MOONCAKE)
    plain = [t for t, _, _ in sent(spec_of(path))]
    fast = scan(spec_of(path, time_scale=0.5), None)
    assert [t for t, _, _ in sent(fast)] == pytest.approx([t / 2 for t in plain])
    assert fast.scan is not None and fast.scan.replay_s == pytest.approx(7.00025 / 2)


def test_rate_rescales_the_window_to_its_mean(tmp_path):
    path = write(tmp_path, "m.jsonl", MOONCAKE)
    spec = scan(spec_of(path, rate=2.0), None)
    # 4 rows over 7.00025 s of trace: scaled so that they take 4 / 2 = 2 s
    factor = 4 / (7.00025 * 2.0)
    assert [t for t, _, _ in sent(spec)] == pytest.approx([0.0, 1.5005 * factor, 2.0 * factor, 7.00025 * factor])
    assert spec.scan is not None and spec.scan.replay_s == pytest.approx(2.0)
    # with a window cut by its duration, the rate is over the whole window
    cut = scan(spec_of(path, duration_s=5.0, rate=1.0), None)
    assert cut.scan is not None and cut.scan.rows == 3 and cut.scan.replay_s == pytest.approx(3.0)


def test_rows_are_clipped_to_the_context_and_counted(tmp_path):
    path = write(tmp_path, "m.jsonl", MOONCAKE)
    spec = scan(spec_of(path), 1024)
    got = sent(spec)
    raw = [(6755, 500), (300, 12), (9000, 30), (128, 64)]
    clipped = 0
    for (_, p, o), (p0, o0) in zip(got, raw, strict=True):
        if p0 + o0 <= 1024:
            assert (p, o) == (p0, o0)
            continue
        clipped += 1
        # cut to the context, each part in proportion and never grown
        assert p + o == 1024 and 1 <= p <= p0 and 1 <= o <= o0
        assert abs(p / 1024 - p0 / (p0 + o0)) < 1 / 1024
    assert clipped == 2 and spec.scan is not None and spec.scan.clipped == 2 and spec.scan.context_tokens == 1024


# --- detection, override, errors -----------------------------------------------------------------


def test_format_is_detected_or_named(tmp_path):
    azure, burst = write(tmp_path, "a.txt", AZURE), write(tmp_path, "b.txt", BURSTGPT)
    assert detect_format(azure) == "azure" and detect_format(burst) == "burstgpt"
    # a JSON Lines trace that starts with a blank line is told by no header, but may be named
    moon = write(tmp_path, "m.txt", "\n" + MOONCAKE)
    with pytest.raises(ConfigError, match="none of the trace formats"):
        detect_format(moon)
    assert [p for _, p, _ in sent(spec_of(moon, format="mooncake"))] == [6755, 300, 9000, 128]


@pytest.mark.parametrize(
    ("name", "text", "options", "message"),
    [
        ("a.csv", AZURE, {"format": "burstgpt"}, "a.csv line 1: no column 'Request tokens' for the burstgpt format"),
        ("b.csv", BURSTGPT, {"format": "azure"}, "b.csv line 1: no column 'ContextTokens' for the azure format"),
        ("b.csv", BURSTGPT, {"format": "mooncake"}, "b.csv line 1: not JSON"),
        ("m.jsonl", MOONCAKE, {"format": "azure"}, "m.jsonl line 1: no column 'TIMESTAMP'"),
        ("x.csv", "time,prompt,output\n1,2,3\n", {}, "x.csv line 1: 'time,prompt,output' is the header of none"),
        ("a.csv", AZURE.replace("23:59:59.9999999", "23:59:59.99.9"), {}, "a.csv line 4: TIMESTAMP '2023-11-16"),
        ("a.csv", AZURE.replace("2023-11-17 00:00:00", "2023-11-31 00:00:00"), {}, "a.csv line 5: TIMESTAMP"),
        ("a.csv", AZURE.replace(",120,7", ",120"), {}, "a.csv line 3: 2 fields where the header has 3"),
        ("a.csv", AZURE.replace(",16,3", ",16,3.0"), {}, "a.csv line 5: GeneratedTokens is '3.0', not a whole"),
        ("b.csv", BURSTGPT.replace("45.125", "-45"), {}, "b.csv line 4: Timestamp is '-45', not a time"),
        ("m.jsonl", MOONCAKE.replace('"output_length": 12', '"output_len": 12'), {}, "line 2: no key 'output_length'"),
        ("m.jsonl", MOONCAKE.replace("9000", '"9000"'), {}, "m.jsonl line 4: input_length is '9000', not a whole"),
        ("m.jsonl", MOONCAKE + "[1, 2]\n", {}, "m.jsonl line 6: not a JSON object"),
        ("m.jsonl", MOONCAKE.replace("[0]", "[-1]"), {}, "m.jsonl line 2: hash_ids is [-1], not a list of block ids"),
        ("a.csv", AZURE.replace("23:59:59.9999999", "23:59:57.0"), {}, "a.csv line 4: arrives before line 3"),
        ("a.csv", "", {"format": "azure"}, "a.csv is empty"),
    ],
)
def test_errors_name_the_file_and_the_line(tmp_path, name, text, options, message):
    path = write(tmp_path, name, text)
    with pytest.raises(ConfigError) as err:
        scan(traffic_spec(str(path), path, options), None)
    assert message in str(err.value) and str(tmp_path) in str(err.value) and "\n" not in str(err.value)


def test_a_window_without_rows_is_an_error(tmp_path):
    path = write(tmp_path, "b.csv", BURSTGPT)
    with pytest.raises(ConfigError, match="sends no requests from 41 s for 10 s"):
        scan(spec_of(path, start_s=41, duration_s=10), None)
    path = write(tmp_path, "one.csv", BURSTGPT.splitlines()[0] + "\n5,1,1,GPT-4,10,2,12,API log\n")
    with pytest.raises(ConfigError, match="all arrive at once"):
        scan(spec_of(path, rate=3.0), None)


def test_not_utf8_and_missing_files(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(AZURE.encode() + b"2023-11-17 00:00:04,\xff\xfe,1\n")
    with pytest.raises(ConfigError, match="bad.csv line 8: not UTF-8 text"):
        scan(spec_of(path), None)
    with pytest.raises(ConfigError, match="cannot read traffic file"):
        spec_of(tmp_path / "nope.csv")


# --- the workload file and the command line ------------------------------------------------------


def test_a_workload_file_replays_a_trace_beside_it(tmp_path):
    write(tmp_path, "conversation_trace.jsonl", MOONCAKE)
    toml = write(
        tmp_path,
        "mine.toml",
        '[arrivals]\nkind = "trace"\nfile = "conversation_trace.jsonl"\nstart_s = 1\ntime_scale = 2\n'
        "[slo]\nttft_s = 1.0\n",
    )
    spec = load_workload(toml).with_context(2048)
    traffic = spec.arrivals.traffic
    assert traffic is not None and traffic.format == "mooncake" and traffic.path == str(tmp_path / traffic.file)
    assert sent(traffic) == pytest.approx([(1.001, 300, 12), (2.0, 2041, 7), (12.0005, 128, 64)])
    header = json.loads(json.dumps(spec.to_dict()))  # plain data, as the trace header stores it
    assert header["arrivals"]["traffic"]["scan"]["clipped"] == 1 and header["prompt"]["kind"] == "trace"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("time_scale = 2\nrate = 3\n", "give either 'time_scale' or 'rate', not both"),
        ('format = "parquet"\n', "'arrivals.format' is 'parquet' (choose from: auto, azure, burstgpt, mooncake)"),
        ("keep_failed = 1\n", "'arrivals.keep_failed' must be true or false"),
        ("start_s = -1\n", "'arrivals.start_s' is negative"),
        ("rate = 0\n", "'arrivals.rate' must be greater than 0"),
        ("column = 'x'\n", "unknown key 'arrivals.column'"),
        ("[prompt]\nkind = 'fixed'\nvalue = 3\n", "a trace gives each request's lengths: drop [prompt]"),
    ],
)
def test_workload_file_mistakes(tmp_path, extra, message):
    write(tmp_path, "t.csv", AZURE)
    toml = write(tmp_path, "w.toml", f'[arrivals]\nkind = "trace"\nfile = "t.csv"\n{extra}')
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_workload(toml)


def test_trace_flags_need_a_trace(tmp_path, capsys):
    out = tmp_path / "x.msgpack"
    assert main(["record", "--traffic-rate", "2", "--out", str(out)]) == 2
    assert "--traffic-rate is an option of --traffic FILE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["record", "--traffic", "t.csv", "--traffic-time-scale", "0", "--out", str(out)])
    assert "--traffic-time-scale: must be greater than 0" in capsys.readouterr().err
    assert main(["record", "--traffic", str(tmp_path / "none.csv"), "--out", str(out)]) == 2
    assert "cannot read traffic file" in capsys.readouterr().err and not out.exists()


def test_record_sends_each_row_at_its_time_with_its_lengths(tmp_path, capsys):
    """The recorded requests are the trace's rows: each one's lengths, and its arrival at the row's
    offset times the time scale (the first request's arrival is the clock's zero)."""
    trace = write(tmp_path, "BurstGPT_tiny.csv", BURSTGPT_TINY)
    out = tmp_path / "run.msgpack"
    assert main(["record", *burstgpt_tiny_flags(trace), "--out", str(out)]) == 0
    assert "3 requests in the window, 1 clipped to the 1024-token context, 1 failed rows skipped" in " ".join(
        capsys.readouterr().err.split()
    )
    # the window starts 0.1 s into the trace, so the first row (at 0) is left out
    rows = [(1.2, 1500, 10), (2.0, 7, 9), (3.0, 20, 4)]
    clipped_prompt = 1500 * 1024 // 1510
    expected = [(t, p, o) if p + o <= 1024 else (t, clipped_prompt, 1024 - clipped_prompt) for t, p, o in rows]
    requests = tracer.load(out).requests.sort("request")
    assert requests["status"].to_list() == ["finished"] * 3
    assert requests["prompt_tokens"].to_list() == [p for _, p, _ in expected]
    assert requests["output_tokens"].to_list() == [o for _, _, o in expected]
    arrivals = requests["arrival_s"].to_list()
    for arrival, (t, _, _) in zip(arrivals, expected, strict=True):
        # sent within 0.1 s of its time: scaled by 0.5, rows are 0.4 s and more apart
        assert arrival - arrivals[0] == pytest.approx((t - expected[0][0]) * 0.5, abs=0.1)
    scanned = tracer.load(out).header.config["workload"]["arrivals"]["traffic"]["scan"]
    assert (scanned["rows"], scanned["clipped"], scanned["failed"], scanned["context_tokens"]) == (3, 1, 1, 1024)


async def test_record_target_clips_to_the_context_the_server_lists(tmp_path):
    trace = write(tmp_path, "conversation_trace.jsonl", MOONCAKE.replace("6755", "100").replace("500", "5"))
    server = Server(ServePlan(trace=tmp_path / "served.msgpack", port=0, device="cpu"))
    async with server:
        out = tmp_path / "client.msgpack"
        argv = ["record", "--target", server.url, "--traffic", str(trace), "--traffic-rate", "4", "--out", str(out)]
        assert await asyncio.to_thread(main, [*argv, "--quiet"]) == 0
    client = tracer.load(out)
    scanned = client.header.config["workload"]["arrivals"]["traffic"]["scan"]
    # the tiny model's /v1/models lists max_model_len 1024: the row of 9000 + 30 tokens is cut to it
    assert scanned["context_tokens"] == 1024 and scanned["clipped"] == 1 and scanned["rows"] == 4
    requests = client.requests.sort("request")
    assert requests["status"].to_list() == ["finished"] * 4
    cut = 9000 * 1024 // 9030
    assert requests["prompt_tokens"].to_list() == [100, 300, cut, 128]
    assert requests["output_tokens"].to_list() == [5, 12, 1024 - cut, 64]


def test_a_sweep_over_a_trace_needs_no_duration(tmp_path, capsys):
    rows = [{"timestamp": 100 * i, "input_length": 8, "output_length": 3, "hash_ids": []} for i in range(3)]
    write(tmp_path, "short.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    toml = write(tmp_path, "short.toml", '[arrivals]\nkind = "trace"\nfile = "short.jsonl"\n')
    out = tmp_path / "sweep"
    argv = ["sweep", "--workload", str(toml), "--window", "0,20", "--device", "cpu", "--out", str(out), "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    for point in out.glob("*.msgpack"):
        assert len(tracer.load(point).requests) == 3
    assert len(list(out.glob("*.msgpack"))) == 2


def test_demo_replays_a_trace_as_record_does(tmp_path, monkeypatch):
    """`demo --traffic` hands the trace and its options to its recording child: the requests it
    records are the ones `record` sends for the same flags, and the replay ends the recording."""
    import tui.app

    flags = burstgpt_tiny_flags(write(tmp_path, "BurstGPT_tiny.csv", BURSTGPT_TINY))

    def until_the_child_is_done(path: str, mode: str, **_) -> None:
        tail, deadline, ended = tracer.TraceTail(path), time.monotonic() + 60, 0
        while ended < 3 and time.monotonic() < deadline:
            ended += sum(isinstance(e, tracer.RequestEvent) and e.phase == "finish" for e in tail.poll())
            time.sleep(0.05)
        tail.close()

    monkeypatch.setattr(tui.app, "run_dashboard", until_the_child_is_done)
    shown, recorded = tmp_path / "demo.msgpack", tmp_path / "record.msgpack"
    assert main(["demo", *flags, "--out", str(shown)]) == 0
    assert main(["record", *flags, "--out", str(recorded)]) == 0
    lengths = [
        tracer.load(p).requests.sort("request")[["prompt_tokens", "output_tokens"]].rows() for p in (shown, recorded)
    ]
    assert lengths[0] == lengths[1] and len(lengths[0]) == 3  # the window's rows (see the test above)
