"""runtime/seccomp.py against the real kernel: compile in the parent, load in a forked child,
observe the syscall's errno (or the signal) from the parent."""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from skiff.oci.spec import LinuxSeccomp, LinuxSeccompArg, LinuxSyscall
from skiff.runtime import seccomp
from skiff.runtime.seccomp import SeccompError, SeccompProgram

PR_SET_NO_NEW_PRIVS = 38
_libc = ctypes.CDLL(None, use_errno=True)
_libc.personality.restype = ctypes.c_int
_libc.personality.argtypes = [ctypes.c_ulong]

# Child exit codes that are not results.
_SETUP_FAILED = 101
_LOAD_FAILED = 102
_PROBE_FAILED = 103

Probe = Callable[[], list[int]]


def _errno_of(call: Callable[[], object]) -> int:
    """0 on success, else the errno (all fit a byte)."""
    try:
        call()
    except OSError as e:
        return e.errno or 255
    return 0


def _run_filtered(program: SeccompProgram, probe: Probe) -> tuple[int, list[int]]:
    """Fork; in the child set no_new_privs, load `program`, run `probe` and send its results back.
    Returns the wait status and the results. The child always ends in os._exit and is reaped."""
    prepared = seccomp.prepare(program)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = _SETUP_FAILED
        try:
            os.close(r)
            # TRAP and KILL end the child with SIGSYS, which dumps core by default.
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                os._exit(_SETUP_FAILED)
            code = _LOAD_FAILED
            seccomp.load_filter(prepared)
            code = _PROBE_FAILED
            os.write(w, bytes(probe()))
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    try:
        data = b""
        while chunk := os.read(r, 256):
            data += chunk
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    return status, list(data)


def _exit_code(status: int) -> int:
    assert os.WIFEXITED(status), f"child ended by signal {os.WTERMSIG(status)}"
    return os.WEXITSTATUS(status)


def _deny_mkdir(errno_ret: int | None = None) -> LinuxSeccomp:
    # mkdirat too: glibc may use it, and aarch64 has no mkdir at all.
    rule = LinuxSyscall(names=("mkdir", "mkdirat"), action="SCMP_ACT_ERRNO", errno_ret=errno_ret)
    return LinuxSeccomp(default_action="SCMP_ACT_ALLOW", syscalls=(rule,))


def test_empty_allow_profile_compiles_and_loads(tmp_path: Path) -> None:
    program = seccomp.compile_filter(LinuxSeccomp(default_action="SCMP_ACT_ALLOW"))
    assert program.bpf and len(program.bpf) % 8 == 0
    assert program.flags == 0
    status, results = _run_filtered(program, lambda: [_errno_of(lambda: os.mkdir(tmp_path / "d"))])
    assert _exit_code(status) == 0
    assert results == [0]


def test_deny_mkdir_with_eperm(tmp_path: Path) -> None:
    program = seccomp.compile_filter(_deny_mkdir())
    status, results = _run_filtered(
        program,
        lambda: [
            _errno_of(lambda: os.mkdir(tmp_path / "d")),
            _errno_of(lambda: os.rmdir(tmp_path / "absent")),  # other syscalls untouched
        ],
    )
    assert _exit_code(status) == 0
    assert results == [errno.EPERM, errno.ENOENT]
    assert not (tmp_path / "d").exists()


def test_deny_mkdir_with_errno_ret(tmp_path: Path) -> None:
    program = seccomp.compile_filter(_deny_mkdir(errno_ret=errno.ENOSYS))
    status, results = _run_filtered(program, lambda: [_errno_of(lambda: os.mkdir(tmp_path / "d"))])
    assert _exit_code(status) == 0
    assert results == [errno.ENOSYS]


def test_default_errno_ret() -> None:
    # An ERRNO default cannot run Python; compile it and check the errno sits in the program.
    config = LinuxSeccomp(
        default_action="SCMP_ACT_ERRNO",
        default_errno_ret=errno.EACCES,
        syscalls=(LinuxSyscall(names=("read", "write"), action="SCMP_ACT_ALLOW"),),
    )
    program = seccomp.compile_filter(config)
    ret_errno = (0x00050000 | errno.EACCES).to_bytes(4, "little")
    assert ret_errno in program.bpf


def test_arg_comparison_personality() -> None:
    query = 0xFFFFFFFF  # personality(0xffffffff) only reads the persona
    config = LinuxSeccomp(
        default_action="SCMP_ACT_ALLOW",
        syscalls=(
            LinuxSyscall(
                names=("personality",),
                action="SCMP_ACT_ERRNO",
                args=(LinuxSeccompArg(index=0, value=query, op="SCMP_CMP_EQ"),),
            ),
        ),
    )

    def probe() -> list[int]:
        denied = _libc.personality(query)
        denied_errno = ctypes.get_errno() if denied == -1 else 0
        allowed = _libc.personality(0)  # PER_LINUX, what the child already has
        return [denied_errno, 0 if allowed >= 0 else 255]

    status, results = _run_filtered(seccomp.compile_filter(config), probe)
    assert _exit_code(status) == 0
    assert results == [errno.EPERM, 0]


def test_args_same_index_are_or_and_distinct_indices_are_and() -> None:
    config = LinuxSeccomp(
        default_action="SCMP_ACT_ALLOW",
        syscalls=(
            # close(1000) or close(1001), or any fd in 0x700..0x7ff
            LinuxSyscall(
                names=("close",),
                action="SCMP_ACT_ERRNO",
                args=(
                    LinuxSeccompArg(index=0, value=1000, op="SCMP_CMP_EQ"),
                    LinuxSeccompArg(index=0, value=1001, op="SCMP_CMP_EQ"),
                    LinuxSeccompArg(
                        index=0, value=0xFF00, value_two=0x0700, op="SCMP_CMP_MASKED_EQ"
                    ),
                ),
            ),
            # lseek(1000, offset > 4, whence)
            LinuxSyscall(
                names=("lseek",),
                action="SCMP_ACT_ERRNO",
                errno_ret=errno.EXDEV,
                args=(
                    LinuxSeccompArg(index=0, value=1000, op="SCMP_CMP_EQ"),
                    LinuxSeccompArg(index=1, value=4, op="SCMP_CMP_GT"),
                ),
            ),
        ),
    )

    def probe() -> list[int]:
        return [
            _errno_of(lambda: os.close(1000)),
            _errno_of(lambda: os.close(1001)),
            _errno_of(lambda: os.close(1002)),
            _errno_of(lambda: os.close(0x7FF)),
            _errno_of(lambda: os.close(0x800)),
            _errno_of(lambda: os.lseek(1000, 5, os.SEEK_SET)),
            _errno_of(lambda: os.lseek(1000, 4, os.SEEK_SET)),
            _errno_of(lambda: os.lseek(1001, 5, os.SEEK_SET)),
        ]

    status, results = _run_filtered(seccomp.compile_filter(config), probe)
    assert _exit_code(status) == 0
    eperm, ebadf, exdev = errno.EPERM, errno.EBADF, errno.EXDEV
    assert results == [eperm, eperm, ebadf, eperm, ebadf, exdev, ebadf, ebadf]


@pytest.mark.parametrize("action", ["SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL", "SCMP_ACT_TRAP"])
def test_kill_and_trap_end_the_child_with_sigsys(tmp_path: Path, action: str) -> None:
    config = LinuxSeccomp(
        default_action="SCMP_ACT_ALLOW",
        syscalls=(LinuxSyscall(names=("mkdir", "mkdirat"), action=action),),
    )
    status, results = _run_filtered(
        seccomp.compile_filter(config), lambda: [_errno_of(lambda: os.mkdir(tmp_path / "d"))]
    )
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS
    assert results == []


def test_unknown_syscall_names_are_skipped(tmp_path: Path) -> None:
    config = LinuxSeccomp(
        default_action="SCMP_ACT_ALLOW",
        syscalls=(
            LinuxSyscall(
                names=("no_such_syscall", "mkdir", "mkdirat", "another_one"),
                action="SCMP_ACT_ERRNO",
            ),
            LinuxSyscall(names=("socketcall",), action="SCMP_ACT_ERRNO"),  # not on x86_64
        ),
    )
    status, results = _run_filtered(
        seccomp.compile_filter(config), lambda: [_errno_of(lambda: os.mkdir(tmp_path / "d"))]
    )
    assert _exit_code(status) == 0
    assert results == [errno.EPERM]


def test_rule_equal_to_default_is_skipped() -> None:
    config = LinuxSeccomp(
        default_action="SCMP_ACT_ERRNO",
        syscalls=(
            LinuxSyscall(names=("mkdir",), action="SCMP_ACT_ERRNO"),
            LinuxSyscall(names=("mkdir",), action="SCMP_ACT_ERRNO", errno_ret=errno.EPERM),
            LinuxSyscall(names=("rmdir",), action="SCMP_ACT_ERRNO", errno_ret=errno.ENOSYS),
        ),
    )
    assert seccomp.compile_filter(config).bpf


def test_flags_and_architectures(tmp_path: Path) -> None:
    native = LinuxSeccomp(default_action="SCMP_ACT_ALLOW", syscalls=_deny_mkdir().syscalls)
    config = LinuxSeccomp(
        default_action="SCMP_ACT_ALLOW",
        architectures=("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64"),
        flags=(
            "SECCOMP_FILTER_FLAG_LOG",
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
            "SECCOMP_FILTER_FLAG_TSYNC",
        ),
        syscalls=native.syscalls,
    )
    program = seccomp.compile_filter(config)
    assert program.flags == (
        seccomp.SECCOMP_FILTER_FLAG_LOG
        | seccomp.SECCOMP_FILTER_FLAG_SPEC_ALLOW
        | seccomp.SECCOMP_FILTER_FLAG_TSYNC
    )
    assert len(program.bpf) > len(seccomp.compile_filter(native).bpf)
    status, results = _run_filtered(program, lambda: [_errno_of(lambda: os.mkdir(tmp_path / "d"))])
    assert _exit_code(status) == 0
    assert results == [errno.EPERM]


def _bad(**overrides: object) -> LinuxSeccomp:
    fields: dict[str, object] = {"default_action": "SCMP_ACT_ALLOW"}
    fields.update(overrides)
    return LinuxSeccomp(**fields)  # type: ignore[arg-type]


def _allow(name: str) -> LinuxSyscall:
    return LinuxSyscall(names=(name,), action="SCMP_ACT_ALLOW")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            _bad(
                default_action="SCMP_ACT_ERRNO",
                syscalls=(
                    _allow("read"),
                    _allow("write"),
                    _allow("exit"),
                    LinuxSyscall(names=("mkdir",), action="SCMP_ACT_FOO"),
                ),
            ),
            'linux.seccomp.syscalls[3].action: unknown action "SCMP_ACT_FOO"',
        ),
        (_bad(default_action="ALLOW"), 'linux.seccomp.defaultAction: unknown action "ALLOW"'),
        (
            _bad(architectures=("SCMP_ARCH_X86_64", "SCMP_ARCH_PDP11")),
            'linux.seccomp.architectures[1]: unknown architecture "SCMP_ARCH_PDP11"',
        ),
        (
            _bad(architectures=("x86_64",)),
            'linux.seccomp.architectures[0]: unknown architecture "x86_64"',
        ),
        (
            _bad(
                syscalls=(
                    LinuxSyscall(
                        names=("close",),
                        action="SCMP_ACT_ERRNO",
                        args=(
                            LinuxSeccompArg(index=0, value=1, op="SCMP_CMP_EQ"),
                            LinuxSeccompArg(index=1, value=1, op="SCMP_CMP_SPACESHIP"),
                        ),
                    ),
                )
            ),
            'linux.seccomp.syscalls[0].args[1].op: unknown operator "SCMP_CMP_SPACESHIP"',
        ),
        (
            _bad(
                syscalls=(
                    LinuxSyscall(
                        names=("close",),
                        action="SCMP_ACT_ERRNO",
                        args=(LinuxSeccompArg(index=6, value=1, op="SCMP_CMP_EQ"),),
                    ),
                )
            ),
            "linux.seccomp.syscalls[0].args[0].index: 6 is out of range (0 to 5)",
        ),
        (
            _bad(syscalls=(LinuxSyscall(names=("mkdir",), action="SCMP_ACT_KILL", errno_ret=1),)),
            "linux.seccomp.syscalls[0].action: errnoRet is only valid with SCMP_ACT_ERRNO or "
            'SCMP_ACT_TRACE, not "SCMP_ACT_KILL"',
        ),
        (_bad(default_errno_ret=1), "linux.seccomp.defaultAction: errnoRet is only valid with"),
        (
            _bad(syscalls=(LinuxSyscall(names=("mkdir",), action="SCMP_ACT_ERRNO", errno_ret=-1),)),
            "linux.seccomp.syscalls[0].errnoRet: -1 is out of range (0 to 65535)",
        ),
        (
            _bad(flags=("SECCOMP_FILTER_FLAG_BOGUS",)),
            'linux.seccomp.flags[0]: unknown flag "SECCOMP_FILTER_FLAG_BOGUS"',
        ),
        (
            _bad(syscalls=(LinuxSyscall(names=("mkdir",), action="SCMP_ACT_NOTIFY"),)),
            'linux.seccomp.syscalls[0].action: action "SCMP_ACT_NOTIFY" is not supported',
        ),
        (
            _bad(listener_path="/run/agent.sock"),
            "linux.seccomp.listenerPath: seccomp agents are not supported",
        ),
    ],
)
def test_bad_config_names_the_field(config: LinuxSeccomp, message: str) -> None:
    with pytest.raises(SeccompError) as info:
        seccomp.compile_filter(config)
    assert str(info.value).startswith(message)


def test_bad_program_is_refused_before_the_fork() -> None:
    with pytest.raises(SeccompError, match="bad BPF program of 12 bytes"):
        seccomp.prepare(SeccompProgram(bpf=b"\0" * 12, flags=0))


def test_load_failure_is_an_oserror() -> None:
    # A program that jumps past its end: the kernel's checker refuses it with EINVAL.
    bad_jump = (0x05).to_bytes(2, "little") + b"\0\0" + (5).to_bytes(4, "little")
    prepared = seccomp.prepare(SeccompProgram(bpf=bad_jump, flags=0))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            seccomp.load_filter(prepared)
        except OSError as e:
            code = e.errno or 255
        finally:
            os._exit(code)
    os.close(r)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    assert _exit_code(status) == errno.EINVAL


def test_import_does_not_load_libseccomp() -> None:
    import subprocess
    import sys

    code = (
        "import skiff.runtime.seccomp, sys; "
        "maps = open('/proc/self/maps').read(); "
        "sys.exit(1 if 'libseccomp' in maps else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def _native_syscall_names() -> list[str]:
    """Every syscall name libseccomp knows on this architecture."""
    lib = ctypes.CDLL("libseccomp.so.2")
    lib.seccomp_syscall_resolve_num_arch.restype = ctypes.c_void_p
    lib.seccomp_syscall_resolve_num_arch.argtypes = [ctypes.c_uint32, ctypes.c_int]
    _libc.free.argtypes = [ctypes.c_void_p]
    names = []
    for number in range(1024):
        pointer = lib.seccomp_syscall_resolve_num_arch(0, number)  # SCMP_ARCH_NATIVE
        if pointer:
            names.append(ctypes.string_at(pointer).decode())
            _libc.free(pointer)
    return names


def test_allow_list_with_default_errno(tmp_path: Path) -> None:
    # The shape of a real profile (runc's and Docker's default): deny by default, allow a long
    # list. Here the list is everything but mkdir, so Python runs on and mkdir meets the default.
    allowed = tuple(n for n in _native_syscall_names() if n not in ("mkdir", "mkdirat"))
    assert len(allowed) > 300
    config = LinuxSeccomp(
        default_action="SCMP_ACT_ERRNO",
        default_errno_ret=errno.EXDEV,
        architectures=("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
        syscalls=(LinuxSyscall(names=allowed, action="SCMP_ACT_ALLOW"),),
    )
    program = seccomp.compile_filter(config)
    assert len(program.bpf) // 8 <= seccomp.BPF_MAXINSNS
    status, results = _run_filtered(
        program,
        lambda: [
            _errno_of(lambda: os.mkdir(tmp_path / "d")),
            _errno_of(lambda: os.rmdir(tmp_path / "absent")),
        ],
    )
    assert _exit_code(status) == 0
    assert results == [errno.EXDEV, errno.ENOENT]


def test_prctl_fallback_without_seccomp_syscall(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Kernels before 3.17 have no seccomp(2); take that path on this kernel through prctl.
    monkeypatch.setattr(seccomp, "_SYS_SECCOMP", None)
    program = seccomp.compile_filter(_deny_mkdir())
    status, results = _run_filtered(program, lambda: [_errno_of(lambda: os.mkdir(tmp_path / "d"))])
    assert _exit_code(status) == 0
    assert results == [errno.EPERM]
    # Flags need seccomp(2): without it the load fails with ENOSYS rather than drop them.
    flagged = SeccompProgram(bpf=program.bpf, flags=seccomp.SECCOMP_FILTER_FLAG_LOG)
    status, _ = _run_filtered(flagged, lambda: [])
    assert _exit_code(status) == _LOAD_FAILED
