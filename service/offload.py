"""Blocking request work (embedding, FAISS, SQLite, token counting) off the event loop.

Two things make this more than `asyncio.to_thread`, both measured on the project's
2-core machine with bench/query.py and its breakdown of the service's overhead:

- The hand-off. `to_thread` goes through `ThreadPoolExecutor`: a Python-level queue and
  condition variables, a `concurrent.futures.Future` wrapped in an asyncio one, and a
  context copy. That round trip costs ~140 µs when the CPU caches are cold (as they are
  after embedding a question); a C-level `queue.SimpleQueue` per worker, with the result
  posted back by `call_soon_threadsafe`, costs ~60 µs.
- Which thread runs the job. Every thread that calls into torch or FAISS drives its own
  OpenMP team. Jobs that rotate over several threads find each team's caches cold:
  embedding a question took 16.8 ms instead of 12.1 ms when two workers took turns. The
  most recently idle worker takes the next job, so a service answering one request at a
  time always uses the same thread, and more threads start only when requests overlap.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
from typing import Any, Callable, TypeVar

T = TypeVar("T")

Job = tuple  # (loop, future, fn, args, kwargs)


class Offload:
    """`await offload.run(fn, *args)` runs `fn` on one of at most `threads` worker threads."""

    def __init__(self, threads: int, name: str = "ragtune-prepare"):
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self._size, self._name = threads, name
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue] = []  # a stack: the last worker to finish is the first to get work
        self._backlog: collections.deque[Job] = collections.deque()  # jobs waiting while every worker is busy
        self._threads: list[threading.Thread] = []
        self._closed = False

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._submit((loop, future, fn, args, kwargs))
        return await future

    def _submit(self, job: Job) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker threads are shut down")
            if self._idle:
                inbox = self._idle.pop()
            elif len(self._threads) < self._size:
                inbox = queue.SimpleQueue()
                thread = threading.Thread(
                    target=self._work, args=(inbox,), name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            else:
                self._backlog.append(job)
                return
        inbox.put(job)

    def _work(self, inbox: queue.SimpleQueue) -> None:
        job = inbox.get()
        while job is not None:
            loop, future, fn, args, kwargs = job
            outcome = None
            if not future.cancelled():  # else the request went away while it waited
                try:
                    outcome = (fn(*args, **kwargs), None)
                except BaseException as exc:  # handed to the awaiting request, as to_thread would
                    outcome = (None, exc)
            # Idle again before the result goes out: the request it wakes may send the next job
            # at once, and that job should find this thread, whose caches are warm.
            with self._lock:
                job = self._backlog.popleft() if self._backlog else None
                wait = job is None and not self._closed
                if wait:
                    self._idle.append(inbox)
            if outcome is not None:
                _post(loop, future, *outcome)
            if wait:
                job = inbox.get()

    def close(self) -> None:
        """Refuse new work; the threads finish the jobs already queued, then end."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for inbox in idle:
            inbox.put(None)


def _post(loop: asyncio.AbstractEventLoop, future: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    def settle() -> None:
        if future.done():  # cancelled meanwhile: nobody waits for it
            return
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop is closed: nobody is left to tell
        pass
