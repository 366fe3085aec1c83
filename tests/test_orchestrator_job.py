"""The Job controller, in process, pods run to their end by a stand-in for the node agents:
completions and parallelism, and a failing Job stopped at its backoffLimit."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from orchestrator_fixture import eventually, running

from skiff.errors import SkiffError
from skiff.orchestrator.api.kinds import BY_KIND
from skiff.orchestrator.api.registry import Registry
from skiff.orchestrator.controllers.job import JobController, finished

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
def cluster(registry: Registry) -> Iterator[tuple[Registry, list[int]]]:
    stop, most_at_once = threading.Event(), [0]
    kubelet = threading.Thread(target=run_pods, args=(registry, stop, most_at_once))
    with running(registry, (JOBS, PODS), lambda inf: [JobController(registry, inf["Job"], inf["Pod"])]):
        kubelet.start()
        yield registry, most_at_once
        stop.set()
        kubelet.join()


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
