"""seccomp: the OCI `linux.seccomp` section compiled to classic BPF in the parent, loaded in the
child with one syscall.

The split follows crun (`src/libcrun/seccomp.c`): `libcrun_generate_seccomp` builds the filter
with libseccomp and exports it as BPF before the container process exists, and
`libcrun_apply_seccomp` only hands the bytes to seccomp(2). Here `compile_filter` runs in the
parent, `prepare` builds the `struct sock_fprog` in the parent too, and the child calls
`load_filter`, which makes the syscall and nothing else: no import, no logging, almost no
allocation, as the code between fork and exec must (STYLE.md section 3).

libseccomp is reached through ctypes rather than a binding. The whole API needed is nine
functions; pyseccomp (the one ctypes binding on PyPI) was last released in 2021 and would add a
dependency for less code than this module's prototypes. libseccomp is opened lazily, on the first
`compile_filter`, so importing this module (on the CLI start path) costs only ctypes.

Behaviour taken from runc and crun:
  - unknown syscall names are skipped, not an error (profiles list syscalls newer than the
    libseccomp or kernel at hand);
  - a rule whose action equals the default action is skipped (libseccomp refuses it);
  - several args on the same index become one rule per arg (libseccomp refuses two comparisons
    of one argument in a rule), so they match as OR, as in runc;
  - errnoRet is only valid with SCMP_ACT_ERRNO and SCMP_ACT_TRACE, and defaults to EPERM.
Not supported: SCMP_ACT_NOTIFY and listenerPath (a seccomp agent needs the listener fd passed
out of the container, which skiff does not do yet).
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from skiff.errors import InvalidArgument, Unavailable

if TYPE_CHECKING:
    from skiff.oci.spec import LinuxSeccomp, LinuxSyscall

__all__ = [
    "PreparedFilter",
    "SeccompError",
    "SeccompProgram",
    "SeccompUnavailable",
    "compile_filter",
    "load_filter",
    "prepare",
    "validate",
]

_FIELD: Final = "linux.seccomp"


class SeccompError(InvalidArgument):
    """The seccomp section cannot be compiled: the message names the field."""


class SeccompUnavailable(Unavailable):
    """The host has no usable libseccomp."""


@dataclass(frozen=True, slots=True)
class SeccompProgram:
    bpf: bytes  # an array of struct sock_filter (8 bytes each)
    flags: int  # SECCOMP_FILTER_FLAG_* for seccomp(SECCOMP_SET_MODE_FILTER, flags, &prog)


# --- the kernel side: constants of linux/seccomp.h, linux/filter.h, linux/prctl.h ---------------

SECCOMP_SET_MODE_FILTER: Final = 1
SECCOMP_MODE_FILTER: Final = 2
PR_SET_SECCOMP: Final = 22
SECCOMP_FILTER_FLAG_TSYNC: Final = 1 << 0
SECCOMP_FILTER_FLAG_LOG: Final = 1 << 1
SECCOMP_FILTER_FLAG_SPEC_ALLOW: Final = 1 << 2
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: Final = 1 << 5
BPF_MAXINSNS: Final = 4096
_SOCK_FILTER_SIZE: Final = 8

_FLAGS: Final = {
    "SECCOMP_FILTER_FLAG_TSYNC": SECCOMP_FILTER_FLAG_TSYNC,
    "SECCOMP_FILTER_FLAG_LOG": SECCOMP_FILTER_FLAG_LOG,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": SECCOMP_FILTER_FLAG_SPEC_ALLOW,
    # Only meaningful with SECCOMP_FILTER_FLAG_NEW_LISTENER, and the kernel refuses it without
    # one (EINVAL). Listeners are refused earlier, so the flag is accepted and dropped.
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV": 0,
}

# seccomp(2) has no glibc wrapper in Debian 12's glibc 2.36, so it goes through syscall(3).
# 64-bit userlands only: a 32-bit Python on a 64-bit kernel sees the kernel's machine name but
# needs its own numbers, so it takes the prctl path (None) instead of a wrong number.
_SYS_SECCOMP: Final = (
    {"x86_64": 317, "aarch64": 277, "riscv64": 277, "ppc64le": 358, "s390x": 348}.get(
        os.uname().machine
    )
    if ctypes.sizeof(ctypes.c_void_p) == 8
    else None
)


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


# Resolved at import so the child finds them ready: looking a symbol up after fork is an
# allocation and a dlsym, which the child should not do.
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_syscall.argtypes = [ctypes.c_long, ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p]
_prctl = _libc.prctl
_prctl.restype = ctypes.c_int
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]


class PreparedFilter:
    """A `struct sock_fprog` built in the parent: the child passes its address to the kernel.

    It owns the instruction buffer the fprog points into; keep it alive until the load."""

    __slots__ = ("_buffer", "_fprog", "address", "flags")

    def __init__(self, program: SeccompProgram) -> None:
        count, rest = divmod(len(program.bpf), _SOCK_FILTER_SIZE)
        if rest or not 0 < count <= BPF_MAXINSNS:
            raise SeccompError(
                f"{_FIELD}: bad BPF program of {len(program.bpf)} bytes "
                f"(need 1 to {BPF_MAXINSNS} instructions of {_SOCK_FILTER_SIZE} bytes)"
            )
        self._buffer = (_SockFilter * count).from_buffer_copy(program.bpf)
        self._fprog = _SockFprog(count, ctypes.cast(self._buffer, ctypes.POINTER(_SockFilter)))
        self.address: int = ctypes.addressof(self._fprog)
        self.flags: int = program.flags

    def load(self) -> None:
        """`load_filter(self)`, reachable from the child without an import."""
        load_filter(self)

    def __reduce__(self) -> tuple[object, ...]:
        """Pickled as its program (a prespawned process gets its plan pickled: the buffer's
        ctypes type is made on the fly, and an address means nothing in another process)."""
        return (PreparedFilter, (SeccompProgram(bpf=bytes(self._buffer), flags=self.flags),))


def prepare(program: SeccompProgram) -> PreparedFilter:
    """Build the kernel's struct for `program`; call it in the parent, before the fork."""
    return PreparedFilter(program)


def load_filter(program: PreparedFilter | SeccompProgram) -> None:
    """Install the filter on the calling thread: the child-side step, run after no_new_privs (or
    with CAP_SYS_ADMIN) and as close to execve as possible. Give it a `prepare`d filter so the
    child does nothing but the syscall. Raises OSError with the kernel's errno."""
    prepared = program if isinstance(program, PreparedFilter) else PreparedFilter(program)
    if _SYS_SECCOMP is not None:
        rc = _syscall(_SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, prepared.flags, prepared.address)
        if rc == 0:
            return
        if rc > 0:
            # With TSYNC the kernel returns the id of a thread it could not synchronize.
            raise OSError(errno.ESRCH, f"seccomp: thread {rc} could not be synchronized")
        err = ctypes.get_errno()
    else:
        err = errno.ENOSYS
    # Kernels before 3.17 have only the prctl form, which takes no flags.
    if err == errno.ENOSYS and prepared.flags == 0:
        if _prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, prepared.address, 0, 0) == 0:
            return
        err = ctypes.get_errno()
    raise OSError(err, os.strerror(err))


# --- the spec side: names of the OCI spec to libseccomp values (seccomp.h) ----------------------

_SCMP_ACT_KILL_PROCESS: Final = 0x80000000
_SCMP_ACT_KILL_THREAD: Final = 0x00000000
_SCMP_ACT_TRAP: Final = 0x00030000
_SCMP_ACT_ERRNO: Final = 0x00050000
_SCMP_ACT_TRACE: Final = 0x7FF00000
_SCMP_ACT_LOG: Final = 0x7FFC0000
_SCMP_ACT_ALLOW: Final = 0x7FFF0000

_ACTIONS: Final = {
    "SCMP_ACT_KILL": _SCMP_ACT_KILL_THREAD,  # as runc and crun: KILL is KILL_THREAD
    "SCMP_ACT_KILL_THREAD": _SCMP_ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": _SCMP_ACT_KILL_PROCESS,
    "SCMP_ACT_TRAP": _SCMP_ACT_TRAP,
    "SCMP_ACT_ERRNO": _SCMP_ACT_ERRNO,
    "SCMP_ACT_TRACE": _SCMP_ACT_TRACE,
    "SCMP_ACT_LOG": _SCMP_ACT_LOG,
    "SCMP_ACT_ALLOW": _SCMP_ACT_ALLOW,
}
_WITH_ERRNO: Final = frozenset({"SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"})
_UNSUPPORTED_ACTIONS: Final = frozenset({"SCMP_ACT_NOTIFY"})

_OPERATORS: Final = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}
_ARCH_PREFIX: Final = "SCMP_ARCH_"
_MAX_ARGS: Final = 6
_RET_DATA_MAX: Final = 0xFFFF  # SECCOMP_RET_DATA: the errno travels in the low 16 bits
_U64_MAX: Final = (1 << 64) - 1

_SCMP_FLTATR_CTL_NNP: Final = 3
_NR_SCMP_ERROR: Final = -1


def _action_value(name: str, errno_ret: int | None, field: str) -> int:
    """The libseccomp action for `name`, checked against the spec's rules for errnoRet."""
    if name in _UNSUPPORTED_ACTIONS:
        raise SeccompError(f'{field}: action "{name}" is not supported (no seccomp agent support)')
    base = _ACTIONS.get(name)
    if base is None:
        raise SeccompError(f'{field}: unknown action "{name}"')
    if name not in _WITH_ERRNO:
        if errno_ret is not None:
            raise SeccompError(
                f"{field}: errnoRet is only valid with SCMP_ACT_ERRNO or SCMP_ACT_TRACE, "
                f'not "{name}"'
            )
        return base
    value = errno.EPERM if errno_ret is None else errno_ret
    return base | value


def _check_errno(value: int | None, field: str) -> None:
    if value is not None and not 0 <= value <= _RET_DATA_MAX:
        raise SeccompError(f"{field}: {value} is out of range (0 to {_RET_DATA_MAX})")


def _check_syscall(rule: LinuxSyscall, field: str) -> None:
    _check_errno(rule.errno_ret, f"{field}.errnoRet")
    _action_value(rule.action, rule.errno_ret, f"{field}.action")
    for j, name in enumerate(rule.names):
        if not name:
            raise SeccompError(f"{field}.names[{j}]: must be a non-empty string")
    for k, arg in enumerate(rule.args):
        where = f"{field}.args[{k}]"
        if not 0 <= arg.index < _MAX_ARGS:
            raise SeccompError(f"{where}.index: {arg.index} is out of range (0 to {_MAX_ARGS - 1})")
        if arg.op not in _OPERATORS:
            raise SeccompError(f'{where}.op: unknown operator "{arg.op}"')
        for label, value in (("value", arg.value), ("valueTwo", arg.value_two)):
            if value is not None and not 0 <= value <= _U64_MAX:
                raise SeccompError(f"{where}.{label}: {value} is not a 64-bit unsigned integer")


def validate(config: LinuxSeccomp) -> None:
    """Check every name and number without libseccomp; raise SeccompError naming the field."""
    _check_errno(config.default_errno_ret, f"{_FIELD}.defaultErrnoRet")
    _action_value(config.default_action, config.default_errno_ret, f"{_FIELD}.defaultAction")
    if config.listener_path:
        raise SeccompError(f"{_FIELD}.listenerPath: seccomp agents are not supported")
    for i, arch in enumerate(config.architectures):
        if not arch.startswith(_ARCH_PREFIX) or arch == _ARCH_PREFIX:
            raise SeccompError(f'{_FIELD}.architectures[{i}]: unknown architecture "{arch}"')
    for i, flag in enumerate(config.flags):
        if flag not in _FLAGS:
            raise SeccompError(f'{_FIELD}.flags[{i}]: unknown flag "{flag}"')
    for i, rule in enumerate(config.syscalls):
        _check_syscall(rule, f"{_FIELD}.syscalls[{i}]")


# --- libseccomp through ctypes ------------------------------------------------------------------


class _ArgCmp(ctypes.Structure):  # struct scmp_arg_cmp
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


_LIBSECCOMP_SONAME: Final = "libseccomp.so.2"
_libseccomp: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libseccomp
    if _libseccomp is not None:
        return _libseccomp
    try:
        lib = ctypes.CDLL(_LIBSECCOMP_SONAME)
    except OSError as e:
        raise SeccompUnavailable(
            f"{_LIBSECCOMP_SONAME}: cannot load ({e}); install libseccomp2"
        ) from e
    ctx = ctypes.c_void_p
    for name, restype, argtypes in (
        ("seccomp_init", ctx, [ctypes.c_uint32]),
        ("seccomp_release", None, [ctx]),
        ("seccomp_attr_set", ctypes.c_int, [ctx, ctypes.c_int, ctypes.c_uint32]),
        ("seccomp_arch_resolve_name", ctypes.c_uint32, [ctypes.c_char_p]),
        ("seccomp_arch_add", ctypes.c_int, [ctx, ctypes.c_uint32]),
        ("seccomp_syscall_resolve_name", ctypes.c_int, [ctypes.c_char_p]),
        (
            "seccomp_rule_add_array",
            ctypes.c_int,
            [ctx, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp)],
        ),
        ("seccomp_export_bpf", ctypes.c_int, [ctx, ctypes.c_int]),
    ):
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    _libseccomp = lib
    return lib


def _failed(rc: int, what: str) -> SeccompError:
    # libseccomp returns -errno.
    code = errno.errorcode.get(-rc, str(-rc))
    return SeccompError(f"{what}: libseccomp refused it ({os.strerror(-rc).lower()}, {code})")


def _add_rules(lib: ctypes.CDLL, ctx: int, rule: LinuxSyscall, action: int, field: str) -> None:
    comparisons = [
        _ArgCmp(a.index, _OPERATORS[a.op], a.value or 0, a.value_two or 0) for a in rule.args
    ]
    indices = [a.index for a in rule.args]
    # libseccomp takes one comparison per argument in a rule: repeated indices become one rule
    # per comparison (so they match as OR), which is what runc does.
    if len(set(indices)) == len(indices):
        groups = [comparisons]
    else:
        groups = [[c] for c in comparisons]
    for j, name in enumerate(rule.names):
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number == _NR_SCMP_ERROR:
            continue  # unknown here: skipped, as runc and crun do
        for group in groups:
            array = (_ArgCmp * len(group))(*group) if group else None
            rc = lib.seccomp_rule_add_array(ctx, action, number, len(group), array)
            if rc < 0:
                raise _failed(rc, f'{field}.names[{j}]: rule for "{name}"')


def _export(lib: ctypes.CDLL, ctx: int) -> bytes:
    # libseccomp 2.5 exports only to an fd (seccomp_export_bpf_mem came in 2.6). A memfd rather
    # than a pipe: a large program would fill a pipe and block the writer.
    fd = os.memfd_create("skiff-seccomp", os.MFD_CLOEXEC)
    try:
        rc = lib.seccomp_export_bpf(ctx, fd)
        if rc < 0:
            raise _failed(rc, f"{_FIELD}: export")
        size = os.fstat(fd).st_size
        chunks = []
        offset = 0
        while offset < size:
            chunk = os.pread(fd, size - offset, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def compile_filter(config: LinuxSeccomp) -> SeccompProgram:
    """Compile the seccomp section to BPF for this host's kernel (the parent-side step)."""
    validate(config)
    default_action = _action_value(
        config.default_action, config.default_errno_ret, f"{_FIELD}.defaultAction"
    )
    flags = 0
    for flag in config.flags:
        flags |= _FLAGS[flag]

    lib = _lib()
    ctx = lib.seccomp_init(default_action)
    if not ctx:
        raise SeccompError(
            f'{_FIELD}.defaultAction: libseccomp refused "{config.default_action}" '
            "(not supported by this kernel)"
        )
    try:
        # The runtime sets no_new_privs itself, from process.noNewPrivileges; the attribute
        # would only matter to seccomp_load, but keep the exported filter honest about it.
        rc = lib.seccomp_attr_set(ctx, _SCMP_FLTATR_CTL_NNP, 0)
        if rc < 0:
            raise _failed(rc, f"{_FIELD}: no_new_privs attribute")
        for i, arch in enumerate(config.architectures):
            token = lib.seccomp_arch_resolve_name(arch.removeprefix(_ARCH_PREFIX).lower().encode())
            if token == 0:
                raise SeccompError(f'{_FIELD}.architectures[{i}]: unknown architecture "{arch}"')
            rc = lib.seccomp_arch_add(ctx, token)
            if rc < 0 and rc != -errno.EEXIST:  # the native architecture is there from init
                raise _failed(rc, f'{_FIELD}.architectures[{i}]: "{arch}"')
        for i, rule in enumerate(config.syscalls):
            field = f"{_FIELD}.syscalls[{i}]"
            action = _action_value(rule.action, rule.errno_ret, field)
            if action == default_action:
                continue  # libseccomp refuses a rule that repeats the default (EACCES)
            _add_rules(lib, ctx, rule, action, field)
        bpf = _export(lib, ctx)
    finally:
        lib.seccomp_release(ctx)

    instructions = len(bpf) // _SOCK_FILTER_SIZE
    if instructions > BPF_MAXINSNS:
        raise SeccompError(
            f"{_FIELD}: the filter has {instructions} instructions, "
            f"the kernel allows {BPF_MAXINSNS}"
        )
    return SeccompProgram(bpf=bpf, flags=flags)
