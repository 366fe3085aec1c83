"""The Job controller, in process, pods run to their end by a stand-in for the node agents:
completions and parallelism, and a failing Job stopped at its backoffLimit."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from skiff.errors import SkiffError
from skiff.orchestrator.api.kinds import BY_KIND
from skiff.orchestrator.api.registry import Registry
from skiff.orchestrator.controllers.job import JobController, finished
from skiff.orchestrator.informer import Informer, stop_all
from skiff.orchestrator.store.sqlite import SqliteStore

JOBS, PODS = BY_KIND["Job"], BY_KIND["Pod"]


def run_pods(registry: Registry, stop: threading.Event, most_at_once: list[int]) -> None:
    """Each pending pod ends a moment later: Succeeded, or Failed when its image says "false"."""
    while not stop.wait(0.03):
        pending = [p for p in registry.list(PODS).items if not (p.get("status") or {}).get("phase")]
        most_at_once.append(len(pending))
        for pod in pending:
            phase = "Failed" if pod["spec"]["containers"][0]["image"] == "false" else "Succeeded"
            try:
                registry.update(PODS, {**pod, "status": {"phase": phase}})
            except SkiffError:
                pass


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Registry, list[int]]]:
    store = SqliteStore(str(tmp_path / "state.db"))
    registry = Registry(store)
    registry.bootstrap()
    jobs, pods = Informer(registry, JOBS), Informer(registry, PODS)
    controller = JobController(registry, jobs, pods)
    for informer in (jobs, pods):
        informer.start()
        assert informer.synced.wait(5)
    controller.start()
    stop, most_at_once = threading.Event(), [0]
    kubelet = threading.Thread(target=run_pods, args=(registry, stop, most_at_once))
    kubelet.start()
    yield registry, most_at_once
    stop.set()
    kubelet.join()
    controller.stop()
    stop_all((jobs, pods))
    store.close()


def eventually(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.02)


def job(name: str, image: str, **spec: int) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {**spec, "template": {"spec": {"restartPolicy": "Never",
                                                   "containers": [{"name": "c", "image": image}]}}}}


def test_completions_with_parallelism(cluster: tuple[Registry, list[int]]) -> None:
    registry, most_at_once = cluster
    registry.create(JOBS, job("once", "true", completions=5, parallelism=2))
    eventually(lambda: finished(registry.get(JOBS, "default", "once")) == "Complete")
    status = registry.get(JOBS, "default", "once")["status"]
    assert (status["succeeded"], status["failed"], status["active"]) == (5, 0, 0) and status["completionTime"]
    assert len(registry.list(PODS).items) == 5 and max(most_at_once) <= 2
    assert all(p["metadata"]["labels"]["job-name"] == "once" for p in registry.list(PODS).items)


def test_a_failing_job_stops_at_its_backoff_limit(cluster: tuple[Registry, list[int]]) -> None:
    registry, _ = cluster
    registry.create(JOBS, job("broken", "false", backoffLimit=2))
    eventually(lambda: finished(registry.get(JOBS, "default", "broken")) == "Failed")
    status = registry.get(JOBS, "default", "broken")["status"]
    assert status["failed"] == 3 and status["conditions"][0]["reason"] == "BackoffLimitExceeded"
    time.sleep(0.3)
    assert len(registry.list(PODS).items) == 3  # no more pods after it failed
