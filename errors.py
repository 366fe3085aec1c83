"""The error tree of skiff. Area errors subclass a category; only `cri/` maps categories to
gRPC codes. Messages are lower case, without a final period, and name what was wrong.

SkiffError              root; raised bare it is a bug         -> INTERNAL
 ├─ InvalidArgument      bad spec, bad request field           -> INVALID_ARGUMENT
 ├─ Unauthenticated      a registry refused the credentials    -> UNAUTHENTICATED (not the
 │                       (the caller's own are not in doubt)      API server's 401: kubectl
 │                                                                would think it logged out)
 ├─ NotFound             unknown id, digest, image             -> NOT_FOUND
 ├─ AlreadyExists        reused name or attempt                -> ALREADY_EXISTS
 ├─ FailedPrecondition   wrong state for the call              -> FAILED_PRECONDITION
 ├─ ResourceExhausted    no address left in the pod CIDR       -> RESOURCE_EXHAUSTED
 ├─ Unavailable          daemon still recovering, host lacks   -> UNAVAILABLE
 │                       a kernel feature
 ├─ DeadlineExceeded     an exec past its timeout              -> DEADLINE_EXCEEDED
 ├─ Aborted              a write that lost a race: the object  -> ABORTED (HTTP 409)
 │                       changed since it was read
 └─ OutOfRange           a watch from a revision no longer     -> OUT_OF_RANGE (HTTP 410)
                         kept
"""


class SkiffError(Exception):
    """Root of the tree. Raised bare, it is a bug."""


class InvalidArgument(SkiffError):
    pass


class Unauthenticated(SkiffError):
    pass


class NotFound(SkiffError):
    pass


class AlreadyExists(SkiffError):
    pass


class FailedPrecondition(SkiffError):
    pass


class ResourceExhausted(SkiffError):
    pass


class Unavailable(SkiffError):
    pass


class DeadlineExceeded(SkiffError):
    pass


class Aborted(SkiffError):
    pass


class OutOfRange(SkiffError):
    pass
