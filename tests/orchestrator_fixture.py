"""What the orchestrator's tests share: a registry on a SQLite store of the test's own, controllers
running on informers of it, and waiting for what they do."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from skiff.orchestrator.api.kinds import Kind
from skiff.orchestrator.api.registry import Registry
from skiff.orchestrator.informer import Informer, stop_all
from skiff.orchestrator.store.sqlite import SqliteStore


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    store = SqliteStore(str(tmp_path / "state.db"), keep_events=1000)
    r = Registry(store)
    r.bootstrap()
    yield r
    store.close()


@contextlib.contextmanager
def running(registry: Registry, kinds: Iterable[Kind],
            make: Callable[[dict[str, Informer]], list[Any]]) -> Iterator[dict[str, Informer]]:
    """Informers of `kinds` (by kind name) synced, then what `make` builds on them started;
    all stopped afterwards."""
    informers = {k.kind: Informer(registry, k) for k in kinds}
    workers = make(informers)
    for informer in informers.values():
        informer.start()
        assert informer.synced.wait(5)
    for w in workers:
        w.start()
    try:
        yield informers
    finally:
        for w in workers:
            w.stop()
        stop_all(informers.values())


def eventually(check: Callable[[], bool], timeout: float = 20.0, during: Callable[[], None] = lambda: None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        during()
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.02)
