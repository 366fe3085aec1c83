"""One-time tokens for streaming URLs: made by the Exec call, taken by the connection that
uses it, gone after TTL seconds if none does (kubelet's streaming server: one minute). A
token is the only credential of a URL, so it is long and random and used once."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from skiff.errors import NotFound

TTL = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecRequest:
    """What an exec session runs: the fork server job's arguments, and which streams the
    client asked for."""

    container_id: str
    job_args: dict[str, Any]
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PortForwardRequest:
    """Where a port-forward session connects: the pod's network namespace (None: a pod on the
    host's network) and the ports the call named."""

    sandbox_id: str
    netns: str | None
    ports: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class AttachRequest:
    """A running container's streams: its stdin through its monitor, its output from its log."""

    container_id: str
    runtime_id: str
    monitor_pid: int
    log_path: str
    exit_file: str
    stdin: bool
    stdout: bool
    stderr: bool
    stdin_once: bool
    tty: bool   # the container runs on a pty: stdin writes to it, resizes apply to it


Session = ExecRequest | PortForwardRequest | AttachRequest


class Tokens:
    def __init__(self, ttl: float = TTL) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[float, Session]] = {}

    def issue(self, request: Session) -> str:
        token = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            for old in [t for t, (at, _) in self._pending.items() if now - at > self.ttl]:
                del self._pending[old]
            self._pending[token] = (now, request)
        return token

    def take(self, token: str) -> Session:
        with self._lock:
            issued = self._pending.pop(token, None)
        if issued is None or time.monotonic() - issued[0] > self.ttl:
            raise NotFound("streaming token: unknown, used already, or expired (a URL is good once, for "
                           f"{self.ttl:g} s)")
        return issued[1]
