"""The asyncio load generator: sends a workload's requests to an engine and records their lives.

Open loop sends on a schedule of absolute times computed from the start (see `arrivals`), capped
by `concurrency` when the workload sets one; closed loop runs `users` users who each send, wait
for the end of their request, think, and send again. Every request gets an `arrive` event when
it is sent, `first_token` when its first token comes back and `finish` when it ends, and every
request sent ends exactly once — finished or rejected by the engine, failed by a fault (the
engine's, or a target gone), or cancelled, by the engine or, when a run is stopped and the engine
does not answer in time, by the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from engine.errors import ConfigError
from engine.request import Request
from tracer.events import RequestEvent
from tracer.recorder import Recorder
from workloads.arrivals import send_times
from workloads.distributions import RandomStreams, RequestMaker
from workloads.hf_tokenizer import HFTokenizer
from workloads.metrics import NS, LoadMetrics, RequestRecord, summarize
from workloads.prompts import tokenize_prompts
from workloads.spec import WorkloadSpec
from workloads.stream import StreamingSink
from workloads.tokenizer import BYTE_TOKENS, ByteTokenizer
from workloads.traffic import Blocks, replay

# A run that is stopped gives the engine this long to confirm its cancellations before the
# client ends what is left itself.
CANCEL_GRACE_S = 2.0
# When the schedule is behind, this many requests go out back to back before the loop is let
# run: token callbacks and a stop request must not starve behind a burst of sends.
_BURST = 64
_FINE_SLEEP_NS = 2_000_000  # the last stretch before a send, slept precisely (see _sleep_until)
_MAX_TOKEN_US = 2**32 - 1  # token_us is uint32: 71 minutes, past which times saturate


class EngineLike(Protocol):
    """What the generator needs of an engine. A `cancel(request_id)` method is used if present."""

    def submit(self, req: Request) -> None: ...


@dataclass(frozen=True)
class Progress:
    """How a run is going, for a progress line."""

    elapsed_s: float
    submitted: int
    finished: int
    rejected: int
    cancelled: int
    failed: int
    in_flight: int
    tokens: int  # output tokens received so far
    tokens_per_s: float  # since the start


@dataclass
class LoadResult:
    spec: WorkloadSpec
    start_ns: int  # the schedule's time zero
    send_end_ns: int  # when sending stopped
    end_ns: int  # when the last request ended
    records: list[RequestRecord]  # in the order the requests ended
    stopped: bool  # ended early by `stop` rather than by its duration or request count

    def metrics(self) -> LoadMetrics:
        return summarize(
            self.records,
            start_ns=self.start_ns,
            send_end_ns=self.send_end_ns,
            warmup_s=self.spec.warmup_s,
            cooldown_s=self.spec.cooldown_s,
            slo=self.spec.slo,
        )


async def run_load(
    engine: EngineLike,
    spec: WorkloadSpec,
    recorder: Recorder,
    *,
    vocab_size: int,
    tokenizer: HFTokenizer | None = None,
    duration_s: float | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    progress_interval_s: float = 0.5,
    stop: asyncio.Event | None = None,
) -> LoadResult:
    """Run `spec` against `engine` until its duration or request count, then let what is in
    flight end.

    `tokenizer`, the model's, tokenizes a workload's text prompts (else the byte tokenizer does),
    and its EOS tokens end a request's sequence early ("stop"); without one, requests run to their
    max tokens, as serving benchmarks' do. `duration_s` overrides the workload's (0 = until
    stopped). Setting `stop` ends sending and cancels what is in flight, and still returns the
    result; cancelling the task does the same cleanup and then propagates the cancellation.
    """
    duration = spec.duration_s if duration_s is None else duration_s
    if duration < 0:
        raise ConfigError(f"negative duration: {duration:g} s")
    run = _Run(engine, spec, recorder, vocab_size, tokenizer)
    deadline_ns = run.start_ns + int(duration * NS) if duration else None
    sender = asyncio.create_task(run.send_then_drain(deadline_ns))
    reporter = asyncio.create_task(run.report(on_progress, progress_interval_s)) if on_progress else None
    stopper = asyncio.create_task(stop.wait()) if stop is not None else None
    try:
        waiting = {sender} if stopper is None else {sender, stopper}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        stopped = not sender.done()
        if not stopped:
            sender.result()  # surfaces an error from sending
    finally:
        # Reached on stop, on an error and on cancellation alike: nothing may stay in flight.
        run.send_end_ns = run.send_end_ns or time.monotonic_ns()
        await _cancel_tasks(sender, stopper, reporter)
        await run.cancel_in_flight()
    if on_progress is not None:
        on_progress(run.progress())
    end_ns = time.monotonic_ns()
    return LoadResult(spec, run.start_ns, run.send_end_ns, end_ns, run.records, stopped)


async def _sleep_until(t_ns: int) -> None:
    """Return at monotonic time `t_ns`, give or take the OS's timer slack (~0.1 ms).

    asyncio alone wakes up to a millisecond late on Linux, often two: epoll's timeout is whole
    milliseconds, rounded up twice. So the loop sleeps asynchronously until shortly before, and
    the last stretch with `time.sleep`, which is precise and releases the GIL, at the price of
    holding the loop for at most `_FINE_SLEEP_NS`.
    """
    coarse_ns = t_ns - _FINE_SLEEP_NS - time.monotonic_ns()
    if coarse_ns > 0:
        await asyncio.sleep(coarse_ns / NS)
    else:
        await asyncio.sleep(0)  # whatever the wait, let the loop run once per send
    fine_ns = t_ns - time.monotonic_ns()
    if fine_ns > 0:
        time.sleep(fine_ns / NS)


async def _cancel_tasks(*tasks: asyncio.Task[object] | None) -> None:
    """Cancel the tasks and wait until they have ended, so none outlives the run."""
    live = [t for t in tasks if t is not None]
    for task in live:
        task.cancel()
    # A cancellation of the run itself while waiting here must not skip the cleanup after it.
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*live, return_exceptions=True)


class _Run:
    """The state of one run, all of it owned by the event loop."""

    def __init__(
        self, engine: EngineLike, spec: WorkloadSpec, recorder: Recorder, vocab_size: int, tokenizer: HFTokenizer | None
    ) -> None:
        self.engine = engine
        self.spec = spec
        self.recorder = recorder
        self.loop = asyncio.get_running_loop()
        self.streams = RandomStreams.from_seed(spec.seed)
        prompts = None
        if spec.prompt.kind == "text":
            if tokenizer is None and vocab_size < BYTE_TOKENS:
                raise ConfigError(f"text prompts need a tokenizer: a vocabulary of {vocab_size} is too small for bytes")
            tok = tokenizer or ByteTokenizer(vocab_size)
            prompts = tokenize_prompts(spec.prompt.prompts, spec.prompt.file, tok)
        self.maker = RequestMaker(spec, self.streams, vocab_size, prompts)
        self.stop_tokens = frozenset(tokenizer.eos_token_ids if tokenizer is not None else ())
        self.in_flight: dict[int, tuple[RequestRecord, StreamingSink]] = {}
        self.records: list[RequestRecord] = []
        self.counts = {"finished": 0, "rejected": 0, "cancelled": 0, "failed": 0}
        self.tokens_done = 0  # tokens of requests that have ended
        self.idle = asyncio.Event()
        self.idle.set()
        self.slots = asyncio.Semaphore(spec.concurrency) if spec.concurrency else None
        self.start_ns = time.monotonic_ns()
        self.send_end_ns = 0

    # -- sending -------------------------------------------------------------------------
    async def send_then_drain(self, deadline_ns: int | None) -> None:
        """Send until the deadline or the request count, then wait for what is in flight."""
        try:
            if self.spec.arrivals.kind == "closed":
                users = [asyncio.create_task(self._user(i, deadline_ns)) for i in range(self.spec.arrivals.users)]
                try:
                    await asyncio.gather(*users)
                finally:
                    for user in users:
                        user.cancel()
            else:
                await self._open_loop(deadline_ns)
        finally:
            self.send_end_ns = self.send_end_ns or time.monotonic_ns()
        await self.idle.wait()

    def _more(self, planned_ns: int, deadline_ns: int | None) -> bool:
        limit = self.spec.requests
        sent = self.records_sent()
        return (deadline_ns is None or planned_ns < deadline_ns) and (not limit or sent < limit)

    def _schedule(self) -> Iterator[tuple[float, int, int, Blocks]]:
        """(send offset in seconds, prompt tokens, max new tokens, prompt blocks) of each open-loop
        request: a trace's rows, or arrivals and lengths drawn from the workload's distributions."""
        if self.spec.arrivals.traffic is not None:
            yield from replay(self.spec.arrivals.traffic)
            return
        for offset_s in send_times(self.spec.arrivals, self.streams.arrivals):
            yield (offset_s, *self.maker.lengths(), ())

    async def _open_loop(self, deadline_ns: int | None) -> None:
        back_to_back = 0
        for offset_s, prompt_len, max_new, blocks in self._schedule():
            planned_ns = self.start_ns + int(offset_s * NS)
            if not self._more(planned_ns, deadline_ns):
                return
            if planned_ns > time.monotonic_ns():
                await _sleep_until(planned_ns)
                back_to_back = 0
            elif (back_to_back := back_to_back + 1) >= _BURST:
                await asyncio.sleep(0)
                back_to_back = 0
            if self.slots is not None:
                await self.slots.acquire()
            self.send(planned_ns, prompt_len, max_new, blocks)

    async def _user(self, index: int, deadline_ns: int | None) -> None:
        think_ns = int(self.spec.arrivals.think_s * NS)
        # Users start spread over one think time, so they do not move in lockstep.
        planned_ns = self.start_ns + think_ns * index // self.spec.arrivals.users
        while True:
            await _sleep_until(planned_ns)
            if not self._more(planned_ns, deadline_ns):
                return
            sink = self.send(planned_ns, *self.maker.lengths())
            await sink.done
            # The user reads the answer from the moment it ended, then asks again.
            planned_ns = sink.finish_ns + think_ns

    def records_sent(self) -> int:
        return len(self.records) + len(self.in_flight)

    def send(self, planned_ns: int, prompt_len: int, max_new: int, blocks: Blocks = ()) -> StreamingSink:
        rid = self.records_sent()
        prompt = self.maker.prompt(prompt_len, blocks)
        sink = StreamingSink(self.loop, rid, on_first_token=self._first_token, on_done=self._done)
        record = RequestRecord(rid, len(prompt), max_new, planned_ns, sent_ns=time.monotonic_ns())
        self.in_flight[rid] = (record, sink)
        self.idle.clear()
        self.recorder.emit(RequestEvent(rid, "arrive", record.sent_ns, prompt_tokens=len(prompt)))
        try:
            sampling = replace(self.spec.sampling, seed=self.spec.sampling.seed + rid)
            self.engine.submit(Request(rid, prompt, max_new, sink, sampling, self.stop_tokens))
        except Exception as exc:
            # Not the engine's way to refuse (that is on_finish "rejected"), but the request
            # was sent and must still end.
            sink.finish_locally("rejected", f"submit failed: {exc}", time.monotonic_ns())
            raise
        return sink

    # -- answers (on the loop, via StreamingSink) -----------------------------------------
    def _first_token(self, sink: StreamingSink) -> None:
        record, _ = self.in_flight[sink.request_id]
        self.recorder.emit(
            RequestEvent(
                sink.request_id,
                "first_token",
                sink.token_ns[0],
                prompt_tokens=record.prompt_tokens,
                output_tokens=1,
            )
        )

    def _done(self, sink: StreamingSink) -> None:
        record, _ = self.in_flight.pop(sink.request_id)
        record.status, record.reason = sink.status or "", sink.reason
        record.finish_ns = sink.finish_ns
        record.token_ns = sink.token_ns
        self.records.append(record)
        self.counts[record.status] = self.counts.get(record.status, 0) + 1
        self.tokens_done += record.output_tokens
        # Never negative: a token is stamped by the engine after `submit`, and `sent_ns` before.
        token_us = (np.asarray(record.token_ns, dtype=np.int64) - record.sent_ns) // 1000
        self.recorder.emit(
            RequestEvent(
                record.id,
                "finish",
                record.finish_ns,
                prompt_tokens=record.prompt_tokens,
                output_tokens=record.output_tokens,
                status=record.status,
                reason=record.reason,
                token_us=np.minimum(token_us, _MAX_TOKEN_US).astype(np.uint32),
            )
        )
        if self.slots is not None:
            self.slots.release()
        if not self.in_flight:
            self.idle.set()

    # -- ending ----------------------------------------------------------------------------
    async def cancel_in_flight(self) -> None:
        """End every request still in flight: ask the engine, then end the rest ourselves."""
        if not self.in_flight:
            return
        cancel = getattr(self.engine, "cancel", None)
        if cancel is not None:
            for rid in list(self.in_flight):
                cancel(rid)
            # A second cancellation of the task lands here too; what is left is ended below.
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self.idle.wait(), CANCEL_GRACE_S)
        now = time.monotonic_ns()
        for _, sink in list(self.in_flight.values()):
            sink.finish_locally("cancelled", "stopped by the client", now)

    # -- progress --------------------------------------------------------------------------
    def progress(self) -> Progress:
        elapsed_s = (time.monotonic_ns() - self.start_ns) / NS
        tokens = self.tokens_done + sum(len(s.tokens) for _, s in self.in_flight.values())
        return Progress(
            elapsed_s=elapsed_s,
            submitted=self.records_sent(),
            finished=self.counts["finished"],
            rejected=self.counts["rejected"],
            cancelled=self.counts["cancelled"],
            failed=self.counts["failed"],
            in_flight=len(self.in_flight),
            tokens=tokens,
            tokens_per_s=tokens / elapsed_s if elapsed_s > 0 else 0.0,
        )

    async def report(self, on_progress: Callable[[Progress], None], interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            on_progress(self.progress())
