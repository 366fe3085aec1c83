"""A work queue of object keys, as client-go's (`util/workqueue`): a key is queued once however
often it is added; a key being worked on and added again is worked on again after `done`,
never by two workers at once; a failed key comes back after an exponential back-off, which
`forget` resets once it succeeds."""

from __future__ import annotations

import heapq
import threading
import time

BASE_DELAY = 0.005  # seconds: client-go's per-item back-off, 5 ms doubling
MAX_DELAY = 60.0


class ShutDown(Exception):
    """`get` on a queue that was shut down."""


class WorkQueue:
    def __init__(self, *, base_delay: float = BASE_DELAY, max_delay: float = MAX_DELAY) -> None:
        self._cond = threading.Condition()
        self._queue: list[str] = []
        self._queued: set[str] = set()
        self._processing: set[str] = set()
        self._dirty: set[str] = set()       # added while being processed
        self._later: list[tuple[float, str]] = []
        self._failures: dict[str, int] = {}
        self._base, self._max = base_delay, max_delay
        self._shut = False

    def add(self, key: str) -> None:
        with self._cond:
            if not self._shut:
                self._enqueue(key)

    def _enqueue(self, key: str) -> None:
        """Under the lock: queued once, or again after `done` when it is being processed."""
        if key in self._processing:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.append(key)
            self._cond.notify()

    def add_after(self, key: str, delay: float) -> None:
        with self._cond:
            heapq.heappush(self._later, (time.monotonic() + delay, key))
            self._cond.notify()

    def add_rate_limited(self, key: str) -> None:
        """Again after the key's back-off, which doubles with each failure."""
        with self._cond:
            failures = self._failures.get(key, 0)
            self._failures[key] = failures + 1
        self.add_after(key, min(self._max, self._base * 2 ** failures))

    def forget(self, key: str) -> None:
        with self._cond:
            self._failures.pop(key, None)

    def get(self, timeout: float | None = None) -> str | None:
        """The next key, marked as being processed until `done`; None after `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                self._promote()
                if self._shut:
                    raise ShutDown()
                if self._queue:
                    key = self._queue.pop(0)
                    self._queued.discard(key)
                    self._processing.add(key)
                    return key
                waits = [t - time.monotonic() for t in (deadline, self._later[0][0] if self._later else None)
                         if t is not None]
                if deadline is not None and deadline <= time.monotonic():
                    return None
                self._cond.wait(max(0.0, min(waits)) if waits else None)

    def _promote(self) -> None:
        now = time.monotonic()
        while self._later and self._later[0][0] <= now:
            self._enqueue(heapq.heappop(self._later)[1])

    def done(self, key: str) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self._enqueue(key)

    def shut_down(self) -> None:
        with self._cond:
            self._shut = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)
