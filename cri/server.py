"""`skiff cri serve`: the CRI v1 gRPC service on a unix socket (default /run/skiff/skiff.sock,
mode 0660, root's), RuntimeService and ImageService, with skiff's errors mapped to gRPC
codes in one interceptor (grpc_errors.py)."""

from __future__ import annotations

import os
from concurrent import futures

import grpc
from cri_api.v1 import api_pb2_grpc

from skiff.cri.config import CriConfig
from skiff.cri.grpc_errors import ErrorInterceptor
from skiff.cri.image_service import ImageService
from skiff.cri.runtime_service import RuntimeService
from skiff.errors import FailedPrecondition
from skiff.images.service import Images

DEFAULT_SOCKET = "/run/skiff/skiff.sock"


def build_server(socket_path: str, images: Images, *, workers: int = 8) -> grpc.Server:
    """A server bound to `socket_path` (not yet started). A stale socket file of a dead
    daemon is replaced; a live one is refused."""
    os.makedirs(os.path.dirname(socket_path) or ".", mode=0o750, exist_ok=True)
    if os.path.exists(socket_path):
        import socket

        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(socket_path)
            raise FailedPrecondition(f"{socket_path}: another CRI service is listening there")
        except ConnectionRefusedError:
            os.unlink(socket_path)
        finally:
            probe.close()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="skiff-cri"),
                         interceptors=[ErrorInterceptor()])
    api_pb2_grpc.add_RuntimeServiceServicer_to_server(RuntimeService(), server)
    api_pb2_grpc.add_ImageServiceServicer_to_server(ImageService(images), server)
    old = os.umask(0o117)  # the socket is created 0660: root and the socket's group only
    try:
        server.add_insecure_port(f"unix://{socket_path}")
    finally:
        os.umask(old)
    return server


def serve(config: CriConfig) -> None:
    import signal

    socket_path = config.socket
    server = build_server(socket_path, Images(config.images_root, registries=config.registries, progress=False))
    server.start()
    # SIGTERM (systemd's stop) ends the wait below like ^C does, so the socket goes too.
    signal.signal(signal.SIGTERM, lambda *_: server.stop(grace=2))
    try:
        server.wait_for_termination()
    finally:
        server.stop(grace=2).wait()
        try:
            os.unlink(socket_path)
        except FileNotFoundError:
            pass
