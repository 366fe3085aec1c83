"""An exec'd command's output, read until it has exited: ExecSync collects it, a streaming
exec session sends it on as it comes. Both wait on the command's pipes (or pty) and on the
fork server's exit reply; once the command has exited, its output's EOF gets a short grace,
because a background child of the command may hold the pipes open for ever."""

from __future__ import annotations

import enum
import errno
import os
import selectors
import socket
import time
from collections.abc import Callable, Iterable

EXIT_GRACE = 1.0   # seconds for the output's EOF after the command ended


class Ended(enum.Enum):
    DRAINED = "drained"     # the command exited and its output is read (or its grace is over)
    DEADLINE = "deadline"   # the deadline passed before the command exited


def read_until_exit(outputs: Iterable[int], exit_reply: socket.socket, on_data: Callable[[int, bytes], None], *,
                    deadline: float | None = None) -> Ended:
    """`on_data(fd, data)` for what each of `outputs` gives, until they are at EOF and the
    fork server's worker has replied (`exit_reply` readable: the command exited)."""
    ended: float | None = None
    with selectors.DefaultSelector() as sel:
        for fd in outputs:
            sel.register(fd, selectors.EVENT_READ)
        sel.register(exit_reply, selectors.EVENT_READ)
        while len(sel.get_map()) > (0 if ended is not None else 1):
            now = time.monotonic()
            if ended is not None:
                if now >= ended:
                    break
            elif deadline is not None and now >= deadline:
                return Ended.DEADLINE
            limits = [t for t in (ended, deadline) if t is not None]
            for key, _ in sel.select(min(limits) - now if limits else None):
                if key.fileobj is exit_reply:
                    sel.unregister(exit_reply)
                    ended = time.monotonic() + EXIT_GRACE
                    continue
                try:
                    data = os.read(key.fd, 65536)
                except OSError as e:   # a pty master reads EIO once no process holds the terminal
                    if e.errno != errno.EIO:
                        raise
                    data = b""
                if data:
                    on_data(key.fd, data)
                else:
                    sel.unregister(key.fd)
    return Ended.DRAINED
