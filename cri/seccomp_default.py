"""The seccomp profile a CRI container gets for `RuntimeDefault`: data, and one function that
picks the rules for the container's capabilities.

moby's default profile (`profiles/seccomp/default.json`, which containerd's
`contrib/seccomp/seccomp_default.go` copies) is an allow-list: about 370 syscalls are
allowed, everything else fails with EPERM, and further syscalls are allowed only when the
container holds a capability (`includes.caps`). This one is the complement written the
other way round, a deny-list: every syscall is allowed, except those moby keeps out of
reach of a container without the matching capability, which fail with EPERM.

Why a deny-list: it is about 70 names instead of 370, each group says which capability
lifts it, and a reader can check it against moby's `includes.caps` sections in minutes.
What it does not cover, where moby's allow-list is stricter:
  - syscalls added to the kernel after this list was written are allowed, where moby
    refuses every name it does not know (the usual cost of a deny-list);
  - argument filters other than clone's namespace flags: moby also limits
    `personality` to a few values and `socket` families on some versions;
  - obsolete and arch-specific calls are only denied where named below.
Where it is stricter than moby: `ptrace` needs CAP_SYS_PTRACE here; moby allows it
without a capability on kernels from 4.8 (which closed the seccomp bypass through it).

The filter lists the native architecture and its compat ones (x86 and x32 beside x86_64,
arm beside aarch64), so a 32-bit syscall cannot step around the names: libseccomp
resolves every name for each listed architecture. Any other architecture is killed by
libseccomp's bad-arch action.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable

from skiff.oci.spec import LinuxSeccomp, LinuxSeccompArg, LinuxSyscall

# (syscalls, capabilities any one of which lifts the deny); an empty tuple: always denied
_DENIED: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    # keys are not namespaced; moby refuses them even with a capability
    (("keyctl", "add_key", "request_key"), ()),
    # obsolete or unimplemented calls moby does not list
    (("uselib", "ustat", "sysfs", "_sysctl", "nfsservctl", "vm86", "vm86old",
      "create_module", "get_kernel_syms", "query_module", "afs_syscall", "getpmsg",
      "putpmsg", "security", "tuxcall", "vserver"), ()),
    # io_uring bypasses seccomp for the operations it runs (moby 25 dropped it)
    (("io_uring_setup", "io_uring_enter", "io_uring_register"), ()),
    (("mount", "umount", "umount2", "pivot_root", "unshare", "setns", "swapon", "swapoff",
      "quotactl", "quotactl_fd", "fanotify_init", "lookup_dcookie",
      # the new mount API: without these, denying mount(2) alone would be no wall
      "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree",
      "mount_setattr"), ("CAP_SYS_ADMIN",)),
    (("reboot", "kexec_load", "kexec_file_load"), ("CAP_SYS_BOOT",)),
    (("init_module", "finit_module", "delete_module"), ("CAP_SYS_MODULE",)),
    (("acct",), ("CAP_SYS_PACCT",)),
    (("settimeofday", "stime", "clock_settime", "clock_settime64", "clock_adjtime",
      "clock_adjtime64"), ("CAP_SYS_TIME",)),
    (("ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
      "process_madvise", "userfaultfd"), ("CAP_SYS_PTRACE",)),
    (("open_by_handle_at",), ("CAP_DAC_READ_SEARCH",)),
    (("bpf",), ("CAP_SYS_ADMIN", "CAP_BPF")),
    (("perf_event_open",), ("CAP_SYS_ADMIN", "CAP_PERFMON")),
    (("syslog",), ("CAP_SYSLOG",)),
    (("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node", "move_pages"),
     ("CAP_SYS_NICE",)),
    (("vhangup",), ("CAP_SYS_TTY_CONFIG",)),
    (("iopl", "ioperm"), ("CAP_SYS_RAWIO",)),
)  # fmt: skip

# CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID,
# CLONE_NEWNET: moby's mask 0x7E020000, one rule per bit because a deny-list needs
# "any bit set" and seccomp compares (arg & mask) == value only
_CLONE_NAMESPACE_FLAGS = (
    0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000,
)  # fmt: skip

_ARCHITECTURES = {
    "x86_64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "aarch64": ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"),
}


def runtime_default_profile(capabilities: Iterable[str]) -> LinuxSeccomp:
    """The RuntimeDefault profile for a container whose bounding set is `capabilities`
    (names with the CAP_ prefix): a syscall group stays denied unless the container
    holds one of the capabilities that lift it, as moby's `includes.caps` does."""
    caps = frozenset(capabilities)
    denied: list[str] = []
    for names, lifted_by in _DENIED:
        if not caps.intersection(lifted_by):
            denied.extend(names)
    rules = [LinuxSyscall(names=tuple(denied), action="SCMP_ACT_ERRNO", errno_ret=errno.EPERM)]
    if "CAP_SYS_ADMIN" not in caps:
        rules.extend(_clone_rules())
    return LinuxSeccomp(
        default_action="SCMP_ACT_ALLOW",
        architectures=_ARCHITECTURES.get(os.uname().machine, ()),
        syscalls=tuple(rules),
    )


def _clone_rules() -> list[LinuxSyscall]:
    # clone's flags are its first argument on x86 and arm (s390 swaps the first two)
    rules = [
        LinuxSyscall(
            names=("clone",),
            action="SCMP_ACT_ERRNO",
            errno_ret=errno.EPERM,
            args=(LinuxSeccompArg(index=0, value=bit, value_two=bit, op="SCMP_CMP_MASKED_EQ"),),
        )
        for bit in _CLONE_NAMESPACE_FLAGS
    ]
    # clone3 passes its flags in memory, out of seccomp's sight: ENOSYS makes libc fall
    # back to clone, whose flags the rules above see (moby does the same)
    rules.append(LinuxSyscall(names=("clone3",), action="SCMP_ACT_ERRNO", errno_ret=errno.ENOSYS))
    return rules
