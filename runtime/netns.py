"""Network namespaces for the daemons' own use (not the containers'): a whole process moved
into a node's namespace at start, one call made from another namespace, and a namespace of
its own pinned at a path (a node of `skiff cluster`).

A network namespace belongs to a thread, and threads start in their creator's: `enter` must
run before the process starts any thread, so that all of them follow; `call_in` runs one
function in a short-lived thread that joins the namespace, so the caller's thread never moves.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from skiff.errors import FailedPrecondition
from skiff.runtime import libc

T = TypeVar("T")


def enter(path: str) -> int:
    """Moves this thread (before any other starts: the process) into the network namespace at
    `path`; returns an fd of the one it was in, for `call_in`."""
    if threading.active_count() > 1:
        raise FailedPrecondition(f"netns {path}: other threads are running already; they would stay behind")
    before = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            libc.setns(fd, libc.CLONE_NEWNET)
        finally:
            os.close(fd)
    except OSError as e:
        os.close(before)
        raise FailedPrecondition(f"netns {path}: {(e.strerror or str(e)).lower()}") from None
    return before


def call_in(netns: int | str, work: Callable[[], T]) -> T:
    """`work()` run in the network namespace `netns` (an fd or a path): sockets it makes stay
    in that namespace, wherever they are used afterwards."""
    def joined() -> T:
        fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC) if isinstance(netns, str) else netns
        try:
            libc.setns(fd, libc.CLONE_NEWNET)
        finally:
            if isinstance(netns, str):
                os.close(fd)
        return work()
    return _in_thread(joined)


def create_pinned(path: str) -> None:
    """A new network namespace, kept by a bind mount on `path` (created) after the thread that
    made it has ended; `nsenter --net=PATH` enters it."""
    def made() -> None:
        libc.unshare(libc.CLONE_NEWNET)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "x"):
            pass
        libc.mount("/proc/thread-self/ns/net", path, None, libc.MS_BIND)
    _in_thread(made)


def unpin(path: str) -> None:
    """The namespace `create_pinned` made goes once nothing else holds it; gone is fine."""
    with contextlib.suppress(OSError):
        libc.umount2(path, libc.MNT_DETACH)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _in_thread(work: Callable[[], T]) -> T:
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            error.append(e)

    thread = threading.Thread(target=run, name="skiff-netns")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
