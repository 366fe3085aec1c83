"""The undo stack: reverse order, kept results, and cleanup errors that never hide the cause."""

from __future__ import annotations

import pytest

from skiff.runtime.undo import Undo


def test_steps_run_in_reverse_and_a_failing_one_becomes_a_note() -> None:
    ran: list[str] = []

    def broken() -> None:
        ran.append("broken")
        raise OSError("rmdir /sys/fs/cgroup/x: busy")

    with pytest.raises(ValueError, match="the cause") as err:
        with Undo() as undo:
            undo.callback(ran.append, "first")
            undo.callback(broken)
            undo.callback(ran.append, "last")
            raise ValueError("the cause")
    assert ran == ["last", "broken", "first"]
    assert err.value.__notes__ == ["while undoing: rmdir /sys/fs/cgroup/x: busy"]


def test_keep_undoes_nothing() -> None:
    ran: list[str] = []
    with Undo() as undo:
        undo.callback(ran.append, "x")
        undo.keep()
    assert ran == []
