"""The one place skiff's error categories become gRPC status codes (STYLE §5): a server
interceptor around every RPC, so that kubelet gets the code it acts on (NotFound, AlreadyExists,
...) and a message naming what was wrong, and no RPC maps errors by hand."""

from __future__ import annotations

import logging
from typing import Any, Callable

import grpc

from skiff.errors import (
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    ResourceExhausted,
    SkiffError,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger("skiff.cri")

CODES: tuple[tuple[type[SkiffError], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Aborted, grpc.StatusCode.ABORTED),
    (OutOfRange, grpc.StatusCode.OUT_OF_RANGE),
)


def code_for(error: BaseException) -> grpc.StatusCode:
    for category, code in CODES:
        if isinstance(error, category):
            return code
    return grpc.StatusCode.INTERNAL  # a bare SkiffError or a foreign exception: a bug


class ErrorInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        method = details.method

        def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return inner(request, context)
            except Exception as e:
                code = code_for(e)
                if code is grpc.StatusCode.INTERNAL:
                    log.exception("%s failed", method)
                # the notes say what an undo left for a later Remove: kubelet's logs should too
                context.abort(code, "; ".join([str(e), *getattr(e, "__notes__", ())]))

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
