"""The workload every contender runs: `/stamp`, a 168-byte static x86-64 ELF executable
written here (no compiler needed). Its first instructions read CLOCK_MONOTONIC with the raw
clock_gettime syscall, write the 16-byte timespec to fd 1 and exit 0: the time of the
workload's first instruction, on the clock the runtime's trace marks use (no time namespace
is made, so it is the host's clock). Being static and tiny, it costs the same to exec for
every runtime, and nothing of its own (no dynamic loader, no libc start-up) hides in the
numbers.

On another architecture the workload is busybox's `/bin/true`, and the breakdown has no
"workload" mark.
"""

from __future__ import annotations

import os
import platform
import struct

STAMP = "/stamp"
FALLBACK = ("/bin/true",)
LOAD_ADDRESS = 0x400000
ELF_HEADER_SIZE = 64
PROGRAM_HEADER_SIZE = 56
TIMESPEC_SIZE = 16

CODE = bytes.fromhex(
    "4883ec10"      # sub rsp, 16
    "b8e4000000"    # mov eax, 228       clock_gettime
    "bf01000000"    # mov edi, 1         CLOCK_MONOTONIC
    "4889e6"        # mov rsi, rsp
    "0f05"          # syscall
    "b801000000"    # mov eax, 1         write
    "bf01000000"    # mov edi, 1         fd 1
    "4889e6"        # mov rsi, rsp
    "ba10000000"    # mov edx, 16
    "0f05"          # syscall
    "b83c000000"    # mov eax, 60        exit
    "31ff"          # xor edi, edi       status 0
    "0f05"          # syscall
)


def supported() -> bool:
    return platform.machine() == "x86_64"


def stamp_elf() -> bytes:
    """The executable: ELF header, one PT_LOAD segment (R+X) mapping the whole file at
    LOAD_ADDRESS, and the code right after the headers, where the entry point is."""
    code_offset = ELF_HEADER_SIZE + PROGRAM_HEADER_SIZE
    size = code_offset + len(CODE)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0])  # 64-bit, little-endian, version 1, System V ABI
    elf_header = struct.pack(
        "<16sHHIQQQIHHHHHH", ident, 2, 0x3E, 1,  # ET_EXEC, EM_X86_64, EV_CURRENT
        LOAD_ADDRESS + code_offset, ELF_HEADER_SIZE, 0, 0,  # entry, phoff, no sections, flags
        ELF_HEADER_SIZE, PROGRAM_HEADER_SIZE, 1, 0, 0, 0)
    program_header = struct.pack(
        "<IIQQQQQQ", 1, 5, 0, LOAD_ADDRESS, LOAD_ADDRESS, size, size, 0x1000)  # PT_LOAD, PF_R|PF_X
    assert len(elf_header) == ELF_HEADER_SIZE and len(program_header) == PROGRAM_HEADER_SIZE
    return elf_header + program_header + CODE


def write_stamp(path: str) -> None:
    with open(path, "wb") as f:
        f.write(stamp_elf())
    os.chmod(path, 0o755)


def workload_args() -> tuple[str, ...]:
    """What each timed container runs on this machine."""
    return (STAMP,) if supported() else FALLBACK


def decode(data: bytes) -> int:
    """The stamp's output (a struct timespec) as CLOCK_MONOTONIC nanoseconds."""
    if len(data) != TIMESPEC_SIZE:
        raise ValueError(f"stamp: expected {TIMESPEC_SIZE} bytes on stdout, got {len(data)}")
    seconds, nanoseconds = struct.unpack("<qq", data)
    return int(seconds) * 1_000_000_000 + int(nanoseconds)
