"""A container's terminal on the runtime's side: runc's console-socket protocol (the init
sends the pty master over a unix socket) and, for a foreground `run` on a terminal, the copy
loop between the user's terminal and that master."""

from __future__ import annotations

import os
import select
import socket
import termios
import tty

from skiff.errors import FailedPrecondition


def connect(path: str) -> int:
    """The fd of a connection to a console socket (what --console-socket names)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as e:
        sock.close()
        raise FailedPrecondition(f"console socket {path}: {(e.strerror or str(e)).lower()}") from e
    return sock.detach()


def receive_master(sock: socket.socket) -> int:
    _, fds, _, _ = socket.recv_fds(sock, 1024, 1, socket.MSG_CMSG_CLOEXEC)
    if not fds:
        raise FailedPrecondition("console socket: the container sent no pty master")
    return fds[0]


def copy_until_exit(master: int) -> None:
    """Copy stdin to the pty and the pty to stdout until the container side closes; stdin is
    put in raw mode meanwhile so that keys (^C included) reach the container."""
    saved = None
    if os.isatty(0):
        saved = termios.tcgetattr(0)
        tty.setraw(0)
    try:
        sources = [0, master]
        while True:
            ready, _, _ = select.select(sources, [], [])
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every slave fd is closed, the container is gone
                    return
                if not data:
                    return
                _write_all(1, data)
            if 0 in ready:
                data = os.read(0, 65536)
                if data:
                    _write_all(master, data)
                else:
                    sources.remove(0)
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
