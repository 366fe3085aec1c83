"""The Job controller (kubernetes `pkg/controller/job/job_controller.go`): pods from the template
until `completions` of them have succeeded, at most `parallelism` at a time; a failed pod
counts against `backoffLimit`, and past it the Job fails and its running pods go.

    status.active / succeeded / failed   pods of the Job in each state
    conditions: Complete, or Failed with reason BackoffLimitExceeded

Counting is from the pods that exist: a Job's finished pods are kept (as Kubernetes keeps
them) until the Job is deleted."""

from __future__ import annotations

from typing import Any

from skiff.errors import NotFound
from skiff.orchestrator.api.kinds import BY_KIND
from skiff.orchestrator.api.registry import Api, now
from skiff.orchestrator.controllers.base import (
    Controller, Expectations, controller_of, create_pods, pod_from_template,
)
from skiff.orchestrator.informer import Informer

JOBS, PODS = BY_KIND["Job"], BY_KIND["Pod"]
DEFAULT_BACKOFF_LIMIT = 6


def _phase(pod: dict[str, Any]) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")


def finished(job: dict[str, Any]) -> str | None:
    """"Complete" or "Failed" once the Job has ended."""
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") in ("Complete", "Failed") and c.get("status") == "True":
            return str(c["type"])
    return None


class JobController(Controller):
    name = "job"

    def __init__(self, registry: Api, jobs: Informer, pods: Informer) -> None:
        super().__init__()
        self.registry = registry
        self.jobs = jobs
        self.pods = pods
        self.expectations = Expectations()
        jobs.on_change(lambda key, old, new: self.queue.add(key))
        pods.on_change(self._pod_changed)

    def _pod_changed(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        self.owner_event("Job", old, new, self.expectations)

    def sync(self, key: str) -> None:
        job = self.jobs.get(key)
        if job is None:
            self.expectations.forget(key)
            return
        if not self.expectations.satisfied(key):
            return
        uid = job["metadata"]["uid"]
        pods = [p for p in self.pods.items() if (controller_of(p) or {}).get("uid") == uid]
        active = [p for p in pods if _phase(p) not in ("Succeeded", "Failed")]
        succeeded = sum(1 for p in pods if _phase(p) == "Succeeded")
        failed = sum(1 for p in pods if _phase(p) == "Failed")
        spec = job["spec"]
        completions = int(spec.get("completions", 1))
        parallelism = int(spec.get("parallelism", 1))
        ended = finished(job)
        if ended is None and failed > int(spec.get("backoffLimit", DEFAULT_BACKOFF_LIMIT)):
            ended = "Failed"
        elif ended is None and succeeded >= completions:
            ended = "Complete"
        if ended is not None:
            for pod in active:  # a failed Job's running pods go; a complete one has none left
                try:
                    self.registry.delete(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"])
                except NotFound:
                    pass
        else:
            wanted = min(parallelism, completions - succeeded) - len(active)
            if wanted > 0:
                labels = {"job-name": job["metadata"]["name"], "controller-uid": job["metadata"]["uid"]}
                create_pods(self.registry, key, [pod_from_template(job, labels=labels) for _ in range(wanted)],
                            self.expectations)
        self._write_status(job, len(active) if ended is None else 0, succeeded, failed, ended)

    def _write_status(self, job: dict[str, Any], active: int, succeeded: int, failed: int, ended: str | None) -> None:
        old = job.get("status") or {}
        status: dict[str, Any] = {"active": active, "succeeded": succeeded, "failed": failed,
                                  "startTime": old.get("startTime") or now()}
        if ended is not None:
            reason = "BackoffLimitExceeded" if ended == "Failed" else ""
            status["conditions"] = old.get("conditions") or [
                {"type": ended, "status": "True", **({"reason": reason, "message": "Job has reached the specified "
                                                                                   "backoff limit"} if reason else {}),
                 "lastTransitionTime": now()}]
            if ended == "Complete":
                status["completionTime"] = old.get("completionTime") or now()
        if old == status:
            return
        self.registry.update(JOBS, {**job, "status": status})

