"""A bounded queue in front of a pool of worker threads. A job past its deadline is stopped at its next sampler
step (the samplers call back after every step), so a timed-out request frees its worker instead of running on
unseen; a job that waited past its deadline never starts. A full queue is refused at once, not queued."""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, TimeoutError as FutureTimeout
from typing import Callable, TypeVar

T = TypeVar("T")


class ServerBusy(Exception):
    """Every worker is busy and the queue is full."""


class JobTimeout(Exception):
    """The job ran past the server's per-request timeout."""


class Job:
    """One request's work: its deadline, and `check()` for the work to call between steps."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.future: Future | None = None
        self._cancelled = threading.Event()

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def check(self) -> None:
        if self._cancelled.is_set() or time.monotonic() > self.deadline:
            raise self.timed_out()

    def timed_out(self) -> JobTimeout:
        self._cancelled.set()
        return JobTimeout(f"the request took longer than the server's {self.timeout_s:g} s limit: ask for fewer "
                          "steps or images, or try again when the server is less busy")


class WorkPool:
    def __init__(self, workers: int, queue_size: int, timeout_s: float):
        self.workers, self.capacity, self.timeout_s = workers, workers + queue_size, timeout_s
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="noisecraft-worker")
        self._slots = threading.BoundedSemaphore(self.capacity)
        self._lock = threading.Lock()
        self._pending = 0

    @property
    def pending(self) -> int:
        """Jobs running or waiting."""
        return self._pending

    def submit(self, work: Callable[[Job], T]) -> Job:
        """Queue `work(job)`; ServerBusy when `workers + queue_size` jobs are already running or waiting."""
        if not self._slots.acquire(blocking=False):
            raise ServerBusy(f"the server is busy ({self.capacity} requests running or queued): retry in a moment")
        job = Job(self.timeout_s)
        with self._lock:
            self._pending += 1

        def run() -> T:
            job.check()                          # it may have waited in the queue past its deadline
            return work(job)

        job.future = self._executor.submit(run)
        job.future.add_done_callback(lambda _: self._release())
        return job

    def _release(self) -> None:
        with self._lock:
            self._pending -= 1
        self._slots.release()

    def wait(self, job: Job) -> T:
        """The job's result, blocking; JobTimeout when its deadline passes first (the job is then stopped)."""
        try:
            return job.future.result(timeout=job.remaining())
        except FutureTimeout:
            raise job.timed_out() from None

    async def result(self, job: Job) -> T:
        """The job's result without blocking the event loop; on timeout a job still queued is dropped and a
        running one stops at its next step."""
        try:
            return await asyncio.wait_for(asyncio.wrap_future(job.future), job.remaining())
        except asyncio.TimeoutError:
            raise job.timed_out() from None

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
