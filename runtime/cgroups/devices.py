"""Device access control on cgroup v2: the spec's device rules compiled to a
BPF_PROG_TYPE_CGROUP_DEVICE program and attached to the container's cgroup (v1 has a file
for this, devices.allow/deny; v2 has only this). Modelled on runc's
libcontainer/cgroups/devices/devicefilter.go: the kernel calls the program for every
open and mknod of a device node, with a `struct bpf_cgroup_dev_ctx`, and it returns 1 to
allow, 0 to deny. Rules are checked last first, since a later rule overrides an earlier
one, and the default is deny.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

from skiff.oci.spec import LinuxDeviceCgroup
from skiff.runtime.cgroups import CgroupError

_BPF_PROG_LOAD = 5
_BPF_PROG_ATTACH = 8
_BPF_PROG_TYPE_CGROUP_DEVICE = 15
_BPF_CGROUP_DEVICE = 6
_BPF_F_ALLOW_MULTI = 2
_SYS_BPF = {"x86_64": 321, "aarch64": 280}[os.uname().machine]

# struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }:
# access_type = access << 16 | type
_DEV_BLOCK, _DEV_CHAR = 1, 2
_ACC_MKNOD, _ACC_READ, _ACC_WRITE = 1, 2, 4

# The few instructions the filter needs (linux/bpf_common.h, linux/bpf.h).
_LDX_W = 0x61      # dst = *(u32 *)(src + off)
_AND32_K = 0x54    # dst &= imm
_RSH32_K = 0x74    # dst >>= imm
_MOV32_X = 0xBC    # dst = src
_MOV64_K = 0xB7    # dst = imm
_JNE_K = 0x55      # if dst != imm goto +off
_EXIT = 0x95


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _access_mask(access: str | None) -> int:
    mask = 0
    for letter in access or "rwm":
        mask |= {"r": _ACC_READ, "w": _ACC_WRITE, "m": _ACC_MKNOD}[letter]
    return mask


def _rule(rule: LinuxDeviceCgroup) -> list[bytes]:
    """A device that passes every test of the block gets the rule's verdict; a failed test
    jumps past the block, to the next (earlier) rule."""
    tests: list[tuple[int, int] | bytes] = []  # (register, value) is "jump out if register != value"
    mask = _access_mask(rule.access)
    if mask != 7:  # the access asked for must lie within the rule's
        tests += [_insn(_MOV32_X, dst=1, src=3), _insn(_AND32_K, dst=1, imm=~mask & 7), (1, 0)]
    if rule.type in ("c", "b"):
        tests.append((2, _DEV_CHAR if rule.type == "c" else _DEV_BLOCK))
    if rule.major is not None and rule.major >= 0:
        tests.append((4, rule.major))
    if rule.minor is not None and rule.minor >= 0:
        tests.append((5, rule.minor))
    block = tests + [_insn(_MOV64_K, dst=0, imm=1 if rule.allow else 0), _insn(_EXIT)]
    return [item if isinstance(item, bytes)
            else _insn(_JNE_K, dst=item[0], imm=item[1], off=len(block) - i - 1)
            for i, item in enumerate(block)]


def device_filter(rules: tuple[LinuxDeviceCgroup, ...]) -> bytes:
    """The BPF program for `rules`, as the kernel's array of `struct bpf_insn`."""
    program = [
        _insn(_LDX_W, dst=2, src=1, off=0),      # r2 = access_type
        _insn(_AND32_K, dst=2, imm=0xFFFF),      # r2 = device type
        _insn(_LDX_W, dst=3, src=1, off=0),
        _insn(_RSH32_K, dst=3, imm=16),          # r3 = access
        _insn(_LDX_W, dst=4, src=1, off=4),      # r4 = major
        _insn(_LDX_W, dst=5, src=1, off=8),      # r5 = minor
    ]
    for rule in reversed(rules):
        block = _rule(rule)
        program += block
        if len(block) == 2:  # a rule for every device: what comes after it is unreachable,
            break            # which the verifier refuses
    else:
        program += [_insn(_MOV64_K, dst=0, imm=0), _insn(_EXIT)]  # no rule matched: deny
    return b"".join(program)


def _bpf(command: int, attr: bytes, what: str) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    buffer = ctypes.create_string_buffer(attr.ljust(128, b"\0"), 128)
    result = libc.syscall(_SYS_BPF, ctypes.c_int(command), buffer, ctypes.c_uint(128))
    if result < 0:
        err = ctypes.get_errno()
        raise CgroupError(f"{what}: {os.strerror(err).lower()} ({errno.errorcode.get(err, err)})")
    return int(result)


def attach_device_filter(cgroup_dir: str, rules: tuple[LinuxDeviceCgroup, ...]) -> None:
    """Load the filter and attach it to `cgroup_dir`; the cgroup holds it from then on."""
    code = device_filter(rules)
    insns = ctypes.create_string_buffer(code, len(code))
    license = ctypes.create_string_buffer(b"Apache-2.0")
    log = ctypes.create_string_buffer(4096)
    load = struct.pack("<IIQQIIQ", _BPF_PROG_TYPE_CGROUP_DEVICE, len(code) // 8, ctypes.addressof(insns),
                       ctypes.addressof(license), 1, len(log), ctypes.addressof(log))
    try:
        program = _bpf(_BPF_PROG_LOAD, load, f"load the device filter for {cgroup_dir}")
    except CgroupError as e:  # the verifier's last words say what it refused
        lines = log.value.decode(errors="replace").strip().splitlines()
        raise CgroupError(f"{e}: {lines[-1]}" if lines else str(e)) from None
    try:
        cgroup = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _bpf(_BPF_PROG_ATTACH, struct.pack("<IIII", cgroup, program, _BPF_CGROUP_DEVICE, _BPF_F_ALLOW_MULTI),
                 f"attach the device filter to {cgroup_dir}")
        finally:
            os.close(cgroup)
    finally:
        os.close(program)
