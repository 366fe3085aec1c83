"""`skiff cri serve`: the CRI v1 gRPC service on a unix socket (default /run/skiff/skiff.sock,
mode 0660, root's), RuntimeService and ImageService, with skiff's errors mapped to gRPC
codes in one interceptor (grpc_errors.py).

Start-up order matters: the fork server is forked first, while this process has one thread
and before grpc is even imported (STYLE §3); then recovery brings records and kernel in line
(recovery.py); only then does the socket accept calls.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from skiff.cri.config import CriConfig
from skiff.errors import FailedPrecondition

if TYPE_CHECKING:
    import grpc

    from skiff.cri.service.context import ServiceContext

DEFAULT_SOCKET = "/run/skiff/skiff.sock"


def claim_socket(socket_path: str, what: str = "CRI service") -> None:
    """A stale socket file of a dead daemon is replaced; a live one is refused."""
    import socket

    os.makedirs(os.path.dirname(socket_path) or ".", mode=0o750, exist_ok=True)
    if not os.path.exists(socket_path):
        return
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(socket_path)
        raise FailedPrecondition(f"{socket_path}: another {what} is listening there")
    except ConnectionRefusedError:
        os.unlink(socket_path)
    finally:
        probe.close()


def build_server(socket_path: str, ctx: ServiceContext, *, workers: int = 16) -> grpc.Server:
    """A server bound to `socket_path` (not yet started)."""
    from concurrent import futures

    import grpc
    from cri_api.v1 import api_pb2_grpc

    from skiff.cri.grpc_errors import ErrorInterceptor
    from skiff.cri.image_service import ImageService
    from skiff.cri.runtime_service import RuntimeService

    claim_socket(socket_path)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="skiff-cri"),
                         interceptors=[ErrorInterceptor()])
    api_pb2_grpc.add_RuntimeServiceServicer_to_server(RuntimeService(ctx), server)
    api_pb2_grpc.add_ImageServiceServicer_to_server(ImageService(ctx.images), server)
    old = os.umask(0o117)  # the socket is created 0660: root and the socket's group only
    try:
        server.add_insecure_port(f"unix://{socket_path}")
    finally:
        os.umask(old)
    return server


def _enter_node_network(path: str) -> None:
    """The whole service (every thread it will start, the fork server, host-network pods)
    moves into the node's network namespace; registry connections are still made from the
    namespace it started in, where a registry on the host's loopback is."""
    import socket

    from skiff.images import registry
    from skiff.runtime import netns

    started_in = netns.enter(path)

    def dial(address: tuple[str, int], timeout: float | None = None,
             source: tuple[str, int] | None = None) -> socket.socket:
        return netns.call_in(started_in, lambda: socket.create_connection(address, timeout, source))
    registry.dial_with(dial)


def serve(config: CriConfig) -> None:
    import signal

    from skiff.cri.jobs import start_forkserver

    if config.netns:
        _enter_node_network(config.netns)
    forkserver = start_forkserver()  # first: before grpc and the service are imported (jobs.py)
    try:
        from skiff.cri.recovery import recover
        from skiff.cri.service.context import open_context

        ctx = open_context(config, forkserver)
        try:
            recover(ctx)
            server = build_server(config.socket, ctx)
            server.start()
            # SIGTERM (systemd's stop) ends the wait below like ^C does, so the socket goes too.
            signal.signal(signal.SIGTERM, lambda *_: server.stop(grace=2))
            try:
                server.wait_for_termination()
            finally:
                server.stop(grace=2).wait()
                try:
                    os.unlink(config.socket)
                except FileNotFoundError:
                    pass
        finally:
            ctx.close()
    finally:
        forkserver.stop()
