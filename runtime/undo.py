"""Undo for half-done operations (STYLE §6): each step is registered right after what it
undoes was acquired, and they run in reverse when the block is left, unless `keep()` says
the result now owns them. A failing undo step never replaces the error that caused the undo:
it is attached to it as a note (youki #2997 lost create errors that way)."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Callable


class Undo:
    def __init__(self) -> None:
        self._steps: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def __enter__(self) -> Undo:
        return self

    def callback(self, step: Callable[..., Any], *args: Any) -> None:
        self._steps.append((step, args))

    def keep(self) -> None:
        """Success: what was acquired is owned elsewhere now; undo nothing."""
        self._steps.clear()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        while self._steps:
            step, args = self._steps.pop()
            try:
                step(*args)
            except Exception as undo_error:
                if error is None:
                    raise
                error.add_note(f"while undoing: {undo_error}")
