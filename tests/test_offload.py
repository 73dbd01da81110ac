"""The worker threads that take blocking request work off the event loop."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.offload import Offload


def test_results_errors_and_arguments_come_back_to_the_caller():
    offload = Offload(2)

    async def main():
        assert await offload.run(lambda a, b=0: a + b, 2, b=3) == 5
        assert await offload.run(threading.current_thread) is not threading.current_thread()
        with pytest.raises(ZeroDivisionError):
            await offload.run(lambda: 1 / 0)
        assert await offload.run(str.upper, "still serving") == "STILL SERVING"

    try:
        asyncio.run(main())
    finally:
        offload.close()


def test_jobs_run_side_by_side_up_to_the_pool_size_and_no_further():
    offload = Offload(2)
    running, peak, lock = 0, 0, threading.Lock()

    def job(i):
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return i

    async def main():
        return await asyncio.gather(*(offload.run(job, i) for i in range(6)))

    try:
        assert asyncio.run(main()) == list(range(6))
    finally:
        offload.close()
    assert peak == 2


def test_one_request_at_a_time_keeps_to_the_thread_that_ran_last():
    """Each thread drives its own OpenMP team in torch: rotating threads would find their caches cold."""
    offload = Offload(3)

    async def main():
        await asyncio.gather(*(offload.run(time.sleep, 0.05) for _ in range(3)))  # all three threads start
        last = await offload.run(threading.get_ident)
        return last, [await offload.run(threading.get_ident) for _ in range(10)]

    try:
        last, then = asyncio.run(main())
    finally:
        offload.close()
    assert len(offload._threads) == 3
    assert then == [last] * 10


def test_a_request_that_goes_away_does_not_break_the_workers():
    offload = Offload(1)
    release = threading.Event()
    ran, loop_errors = [], []

    async def main():
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: loop_errors.append(context))
        blocked = asyncio.ensure_future(offload.run(release.wait, 5))
        queued = asyncio.ensure_future(offload.run(ran.append, "never needed"))
        await asyncio.sleep(0.05)
        blocked.cancel()
        queued.cancel()
        release.set()
        await asyncio.gather(blocked, queued, return_exceptions=True)
        return await offload.run(lambda: "next request")

    try:
        assert asyncio.run(main()) == "next request"
    finally:
        offload.close()
    assert ran == []  # a job whose request left before it started is skipped
    assert loop_errors == []  # no result is set on a cancelled future


def test_closed_pool_refuses_new_work_and_its_threads_end():
    offload = Offload(2)
    asyncio.run(offload.run(int))
    threads = list(offload._threads)
    offload.close()
    for thread in threads:
        thread.join(timeout=5)
        assert not thread.is_alive()
    with pytest.raises(RuntimeError, match="shut down"):
        asyncio.run(offload.run(int))
    with pytest.raises(ValueError):
        Offload(0)
