"""What `skiff-runc features` prints: the runtime-spec features.md document, shaped as
runc's `features.go` builds it, listing only what skiff implements. A list that is left
out means "unknown" to the reader, so each is either honest or absent."""

from typing import Any

from skiff import __version__
from skiff.oci.defaults import OCI_VERSION
from skiff.oci.validate import CAPABILITIES, SECCOMP_FLAGS, SECCOMP_OPERATORS

HOOKS = (
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
)

# runtime/rootfs.py maps these to mount(2) flags and propagation; the recursive
# mount_setattr(2) options (rro, rnosuid, ...), tmpcopyup and idmap are not implemented.
MOUNT_OPTIONS = (
    "async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec", "iversion",
    "lazytime", "loud", "mand", "noatime", "nodev", "nodiratime", "noexec", "noiversion",
    "nolazytime", "nomand", "norelatime", "nostrictatime", "nosuid", "nosymfollow",
    "private", "rbind", "relatime", "remount", "ro", "rprivate", "rshared", "rslave",
    "runbindable", "rw", "shared", "silent", "slave", "strictatime", "suid", "symfollow",
    "sync", "unbindable",
)  # fmt: skip

# The time namespace parses (it is in the spec) but the runtime does not create it.
NAMESPACES = ("cgroup", "ipc", "mount", "network", "pid", "user", "uts")

# SCMP_ACT_NOTIFY needs a listener protocol the runtime does not speak.
SECCOMP_ACTIONS = (
    "SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP",
)  # fmt: skip

# What Debian 12's libseccomp 2.5.4 knows; LOONGARCH64, M68K and SH came with 2.6.
SECCOMP_ARCHS = (
    "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM", "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64",
    "SCMP_ARCH_MIPS64N32", "SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL64N32",
    "SCMP_ARCH_PARISC", "SCMP_ARCH_PARISC64", "SCMP_ARCH_PPC", "SCMP_ARCH_PPC64",
    "SCMP_ARCH_PPC64LE", "SCMP_ARCH_RISCV64", "SCMP_ARCH_S390", "SCMP_ARCH_S390X",
    "SCMP_ARCH_X32", "SCMP_ARCH_X86", "SCMP_ARCH_X86_64",
)  # fmt: skip


def features() -> dict[str, Any]:
    """The features document, as a JSON-ready dict in runc's key order."""
    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": list(HOOKS),
        "mountOptions": list(MOUNT_OPTIONS),
        "linux": {
            "namespaces": list(NAMESPACES),
            "capabilities": list(CAPABILITIES),
            "cgroup": {
                "v1": True,
                "v2": True,
                "systemd": False,
                "systemdUser": False,
                "rdma": False,
            },
            "seccomp": {
                "enabled": True,
                "actions": list(SECCOMP_ACTIONS),
                "operators": sorted(SECCOMP_OPERATORS),
                "archs": list(SECCOMP_ARCHS),
                "knownFlags": sorted(SECCOMP_FLAGS),
            },
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
            "intelRdt": {"enabled": False},
            "mountExtensions": {"idmap": {"enabled": False}},
        },
        "annotations": {"org.skiff.version": __version__},
    }
