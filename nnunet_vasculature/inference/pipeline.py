"""Two background threads around the network for :class:`~nnunet_vasculature.inference.streaming.
StreamingPredictor`: one prepares the next rows' input while the network runs (:class:`Prefetch`), one
writes finished planes (:class:`Writer`). Both talk to the caller through a bounded queue, so memory
stays bounded; with ``threaded=False`` each runs in the calling thread, in order (the non-overlapped
reference, for debugging and benchmarks).

Errors: an exception raised in a background thread (a ``UserError`` of a source or a sink, anything
else) is raised again, the same object, in the calling thread at its next ``next()``/``put()`` or at
``finish()``. ``close()`` (always called, from a ``finally``) stops and joins the thread, also after an
error or a KeyboardInterrupt in the caller: a thread finishes the item it is working on and drops the
rest. The caller never blocks forever: its waits poll the thread every ``POLL`` seconds.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, Iterable, Iterator

POLL = 0.1          # seconds between checks of a stop flag or of the other thread
_END = object()     # end of the items (or, from the producer, with an exception: its failure)


class Prefetch:
    """Iterate over ``make()`` in a background thread, at most ``depth`` items ahead of the caller
    (plus the one the thread is building). ``busy``: seconds the thread spent in ``make()``'s iterator;
    ``waited``: seconds the caller waited for an item."""

    def __init__(self, make: Callable[[], Iterable[Any]], depth: int = 1, threaded: bool = True,
                 name: str = "prefetch"):
        self.busy = self.waited = 0.0
        self._threaded = threaded
        self._items: Iterator[Any] | None = None
        self._make = make
        if not threaded:
            return
        self._q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            items = iter(self._make())
            while not self._stop.is_set():
                t = time.perf_counter()
                try:
                    item = next(items)
                except StopIteration:
                    break
                finally:
                    self.busy += time.perf_counter() - t
                if not self._offer((True, item)):
                    return
            self._offer((_END, None))
        except BaseException as e:     # noqa: BLE001 - handed to the caller, raised there
            self._offer((_END, e))

    def _offer(self, entry: tuple) -> bool:
        """Put ``entry`` unless the caller has stopped listening."""
        while not self._stop.is_set():
            try:
                self._q.put(entry, timeout=POLL)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Prefetch:
        return self

    def __next__(self) -> Any:
        if not self._threaded:
            if self._items is None:
                self._items = iter(self._make())
            t = time.perf_counter()
            try:
                return next(self._items)
            finally:
                self.busy += time.perf_counter() - t
        t = time.perf_counter()
        try:
            while True:
                try:
                    tag, value = self._q.get(timeout=POLL)
                    break
                except queue.Empty:
                    if not self._thread.is_alive() and self._q.empty():
                        raise RuntimeError(f"{self._thread.name}: thread ended without a result") from None
        finally:
            self.waited += time.perf_counter() - t
        if tag is _END:
            if value is not None:
                raise value
            raise StopIteration
        return value

    def close(self) -> None:
        """Stop the thread (it finishes the item it is building) and join it."""
        if not self._threaded:
            return
        self._stop.set()
        while True:
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        self._thread.join()


class Writer:
    """Call ``fn(item)`` for every ``put(item)`` in a background thread, in order, with at most
    ``depth`` items waiting. ``busy``: seconds spent in ``fn``; ``waited``: seconds the caller waited in
    ``put`` for room in the queue."""

    def __init__(self, fn: Callable[[Any], None], depth: int = 1, threaded: bool = True, name: str = "writer"):
        self.busy = self.waited = 0.0
        self._fn, self._threaded = fn, threaded
        self._error: BaseException | None = None
        self._raised = False
        if not threaded:
            return
        self._q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is _END:
                return
            if self._error is not None or self._stop.is_set():
                continue                    # failed or stopped: drop the rest until the end marker
            t = time.perf_counter()
            try:
                self._fn(item)
            except BaseException as e:      # noqa: BLE001 - handed to the caller, raised there
                self._error = e
            finally:
                self.busy += time.perf_counter() - t

    def _check(self) -> None:
        if self._error is not None and not self._raised:
            self._raised = True
            raise self._error

    def put(self, item: Any) -> None:
        if not self._threaded:
            t = time.perf_counter()
            try:
                self._fn(item)
            finally:
                self.busy += time.perf_counter() - t
            return
        self._check()
        t = time.perf_counter()
        try:
            while True:
                try:
                    self._q.put(item, timeout=POLL)
                    return
                except queue.Full:
                    self._check()
                    if not self._thread.is_alive():
                        raise RuntimeError(f"{self._thread.name}: thread ended early") from None
        finally:
            self.waited += time.perf_counter() - t

    def finish(self) -> None:
        """Wait until every item is written; raise the thread's error, if any."""
        if not self._threaded:
            return
        t = time.perf_counter()
        try:
            self._end()
        finally:
            self.waited += time.perf_counter() - t
        self._check()

    def close(self) -> None:
        """Stop the thread (it finishes the item it is writing, drops the rest) and join it."""
        if not self._threaded or not self._thread.is_alive():
            return
        self._stop.set()
        while True:
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        self._end()

    def _end(self) -> None:
        while self._thread.is_alive():
            try:
                self._q.put(_END, timeout=POLL)
                break
            except queue.Full:
                continue
        self._thread.join()
