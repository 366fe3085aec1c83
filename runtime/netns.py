"""Network namespaces for the daemons' own use (not the containers'): a whole process moved
into a node's namespace at start, and one call made from another namespace.

A network namespace belongs to a thread, and threads start in their creator's: `enter` must
run before the process starts any thread, so that all of them follow; `call_in` runs one
function in a short-lived thread that joins the namespace, so the caller's thread never moves.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

from skiff.runtime import libc

CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def enter(path: str) -> int:
    """Moves this thread (before any other starts: the process) into the network namespace at
    `path`; returns an fd of the one it was in, for `call_in`."""
    if threading.active_count() > 1:
        raise RuntimeError("netns.enter: other threads are running; they would stay behind")
    before = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc.setns(fd, CLONE_NEWNET)
    finally:
        os.close(fd)
    return before


def call_in(netns: int | str, work: Callable[[], T]) -> T:
    """`work()` run in the network namespace `netns` (an fd or a path): sockets it makes stay
    in that namespace, wherever they are used afterwards."""
    result: list[T] = []
    error: list[BaseException] = []

    def joined() -> None:
        try:
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC) if isinstance(netns, str) else netns
            try:
                libc.setns(fd, CLONE_NEWNET)
            finally:
                if isinstance(netns, str):
                    os.close(fd)
            result.append(work())
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            error.append(e)

    thread = threading.Thread(target=joined, name="skiff-netns")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
