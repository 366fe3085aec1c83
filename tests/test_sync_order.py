"""The parent side of the sync exchange (runtime/spawn.py) when the init outruns the
intermediate: B's READY comes before A's PID, as happens when A is preempted right after the
clone on a busy host. The init is B, never A."""

from __future__ import annotations

import socket
from types import SimpleNamespace
from typing import Any, cast

import pytest

from skiff.runtime import spawn, sync
from skiff.runtime.undo import Undo


def _exchange(*messages: bytes) -> int:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        for message in messages:
            theirs.send(message)
        plan = cast(Any, SimpleNamespace(exec_fifo=(0, "exec.fifo"), namespaces=None))
        hooks: list[int] = []

        def on_hooks(pid: int) -> bytes:
            hooks.append(pid)
            return b"{}"

        # pids above the kernel's pid_max: an undo that kills them can hit no real process
        with Undo() as undo:
            init = spawn._exchange(ours, 100, plan, on_hooks, undo, True)
            undo.keep()
        assert hooks in ([], [init])  # the hooks got the init's pid too
        return init


def test_ready_before_the_pid_waits_for_the_pid() -> None:
    assert _exchange(sync.READY, sync.encode_pid(4_194_400)) == 4_194_400


def test_hooks_before_the_pid_run_with_the_inits_pid() -> None:
    assert _exchange(sync.HOOKS, sync.encode_pid(4_194_401), sync.READY) == 4_194_401


def test_in_order_as_usual() -> None:
    assert _exchange(sync.encode_pid(100), sync.READY) == 100


def test_pid_zero_is_the_forked_process_itself() -> None:
    """An init cloned straight into its PID namespace is pid 1 there: it says 0, "me"."""
    assert _exchange(sync.encode_pid(0), sync.READY) == 100


def test_an_init_that_fails_before_the_pid_is_still_reaped(monkeypatch: pytest.MonkeyPatch) -> None:
    killed: list[list[int]] = []
    monkeypatch.setattr(spawn, "kill_and_reap", lambda pids, timeout=10.0: killed.append(list(pids)))
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        theirs.send(sync.encode_failure(sync.Step.MOUNT, 22, "tmpfs on /bad"))
        theirs.send(sync.encode_pid(4_194_402))
        plan = cast(Any, SimpleNamespace(exec_fifo=(0, "exec.fifo"), namespaces=None))
        with pytest.raises(spawn.ContainerInitError, match="tmpfs on /bad"):
            with Undo() as undo:
                spawn._exchange(ours, 100, plan, None, undo, True)
    assert killed == [[4_194_402]]
