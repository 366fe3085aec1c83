"""A function run every `period` seconds in a thread of its own until `stop`: the heartbeat, the
node lifecycle check, the prober's round. An exception is logged and the next round goes on."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("skiff.orchestrator")


class Periodic:
    def __init__(self, name: str, period: float, work: Callable[[], None]) -> None:
        self.name = name
        self.period = period
        self.work = work
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.work()
            except Exception as e:
                log.warning("%s: %s", self.name, e)
