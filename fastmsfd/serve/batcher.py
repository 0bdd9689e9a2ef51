"""Micro-batching: images from concurrent requests are gathered into one batch (up to max_batch, waiting at
most max_wait after the first) and run in one call on a worker thread, off the event loop."""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence


class Overloaded(Exception):
    """The queue is full: the client should retry later (HTTP 503 with Retry-After)."""


_STOP = object()  # queued by stop(): everything queued before it still runs


class MicroBatcher:
    """run_batch(items) -> one result per item, called on a single worker thread (the model is not shared
    between concurrent calls). submit() is called on the event loop."""

    def __init__(self, run_batch: Callable[[Sequence[Any]], Sequence[Any]], max_batch: int = 8,
                 max_wait_ms: float = 5.0, max_queue: int = 64):
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_ms >= 0")
        self.run_batch, self.max_batch, self.max_wait = run_batch, max_batch, max_wait_ms / 1000
        self.max_queue = max_queue
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastmsfd-infer")
        self._stopping = False
        self._pending = 0  # images submitted and not yet answered (queued or running)
        self.batches_run = 0
        self.images_run = 0

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._loop())

    @property
    def pending(self) -> int:
        return self._pending

    async def submit(self, items: Sequence[Any]) -> list[Any]:
        """Results for items, in order; Overloaded when more than max_queue images would be pending (nothing is
        queued then)."""
        if self._queue is None or self._stopping or self._worker.done():
            raise Overloaded("the server is not running (starting or shutting down)")
        if self._pending + len(items) > self.max_queue:
            raise Overloaded(f"{self._pending} images pending (limit {self.max_queue})")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self._pending += len(items)
        try:
            for item, fut in zip(items, futures):
                self._queue.put_nowait((item, fut))
            return list(await asyncio.gather(*futures))
        finally:  # answered, failed or cancelled (a timed-out request's images are skipped by the worker)
            self._pending -= len(items)

    async def _next_batch(self) -> tuple[list[tuple[Any, asyncio.Future]], bool]:
        """(the next batch, whether stop() was reached)."""
        batch, first = [], await self._queue.get()
        if first is _STOP:
            return batch, True
        batch.append(first)
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                entry = self._queue.get_nowait() if remaining <= 0 else \
                    await asyncio.wait_for(self._queue.get(), remaining)
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
            if entry is _STOP:
                return self._live(batch), True
            batch.append(entry)
        return self._live(batch), False

    @staticmethod
    def _live(batch):
        return [(item, fut) for item, fut in batch if not fut.done()]  # drop requests that timed out

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        stop = False
        while not stop:
            batch, stop = await self._next_batch()
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self.run_batch, [item for item, _ in batch])
            except Exception as exc:  # one bad batch fails its requests, never the server
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.batches_run += 1
            self.images_run += len(batch)
            for (_, fut), result in zip(batch, results):
                if not fut.done():
                    fut.set_result(result)

    async def stop(self) -> None:
        """Refuse new work, finish what is queued and running, then stop (graceful shutdown)."""
        if self._worker is None or self._stopping:
            return
        self._stopping = True
        self._queue.put_nowait(_STOP)
        await self._worker
        self._executor.shutdown(wait=True)
