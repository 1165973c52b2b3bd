"""The bridge from the engine's thread to the event loop: order kept, first finish wins."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from workloads.stream import StreamingSink


async def test_tokens_from_another_thread_arrive_in_order_then_finish():
    loop = asyncio.get_running_loop()
    firsts, dones = [], []
    sink = StreamingSink(loop, 7, on_first_token=firsts.append, on_done=dones.append)

    def engine():
        for i in range(100):
            sink.on_token(i, 1000 + i)
        sink.on_finish("finished", "", 2000)
        sink.on_token(999, 3000)  # after the end: dropped
        sink.on_finish("cancelled", "late", 3000)  # a second end: dropped

    threading.Thread(target=engine).start()
    received = [t async for t in sink.stream()]
    await asyncio.sleep(0.01)  # let the late calls land
    assert received == list(range(100)) and sink.tokens == received
    assert sink.token_ns == [1000 + i for i in range(100)]
    assert (sink.status, sink.reason, sink.finish_ns) == ("finished", "", 2000)
    assert firsts == [sink] and dones == [sink] and sink.done.done()


async def test_a_local_finish_wins_over_the_engine():
    loop = asyncio.get_running_loop()
    dones = []
    sink = StreamingSink(loop, 1, on_done=dones.append)
    sink.on_token(5, 10)
    await asyncio.sleep(0)
    sink.finish_locally("cancelled", "stopped by the client", 20)
    sink.on_token(6, 30)
    sink.on_finish("finished", "", 40)
    await asyncio.sleep(0.01)
    assert sink.tokens == [5] and sink.status == "cancelled" and len(dones) == 1


async def test_no_token_request_streams_nothing():
    sink = StreamingSink(asyncio.get_running_loop(), 2)
    sink.on_finish("rejected", "queue full", 5)
    assert [t async for t in sink.stream()] == []
    assert sink.status == "rejected" and sink.reason == "queue full"


def test_calls_after_the_loop_closed_do_not_raise_in_the_engine_thread():
    loop = asyncio.new_event_loop()
    sink = StreamingSink(loop, 3)
    loop.close()

    def engine():
        sink.on_token(1, 1)
        sink.on_finish("cancelled", "engine stopped", 2)

    # from another thread, as the engine calls: what it raised there is raised here
    with ThreadPoolExecutor(1) as pool:
        pool.submit(engine).result(timeout=5)
    # nobody is left to tell: the calls are dropped, not half-applied
    assert sink.tokens == [] and sink.status is None and not sink.done.done()
