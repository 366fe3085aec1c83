"""Boot the VM with QEMU, run one command in it, and power it off.

The guest sees the host's / read-only (9p, with a tmpfs overlay for writes), each share
read-write at its host path, and the exchange directory at /run/skiff-vm/xchg: the host
writes `vm.conf` (read by tests/vm/init.sh) and `cmd` (the script run as root by /bin/sh)
there, and the guest writes `rc`, the script's exit status, before it powers off.

KVM is used where it boots the kernel; on this project's development host /dev/kvm exists but
does not, so the first try's verdict is kept in the cache and later runs go straight to TCG.
"""

from __future__ import annotations

import ctypes
import enum
import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from . import image as vm_image

QEMU = "qemu-system-x86_64"
GUEST_XCHG = "/run/skiff-vm/xchg"
# cgroup_no_v1=all: a pure v2 hierarchy. hugepages: a few 2 MiB pages for the hugetlb tests.
# mitigations=off: page-table isolation and retpolines cost much under emulation, and the
# guest runs only the tests. panic=-1 with -no-reboot: a panic ends QEMU instead of hanging.
KERNEL_ARGS = "console=ttyS0 quiet panic=-1 cgroup_no_v1=all hugepages=8 mitigations=off"
KVM_PROBE_SECONDS = 30.0


class VMError(Exception):
    """The VM could not be started; the message says what is missing."""


class Accel(enum.Enum):
    KVM = "kvm"
    TCG = "tcg"


@dataclass(frozen=True, slots=True, kw_only=True)
class VMConfig:
    image: vm_image.Image
    xchg: Path  # an empty host directory, the guest's GUEST_XCHG
    shares: tuple[Path, ...] = ()  # host directories shared read-write at the same path
    command: str | None = None  # a /bin/sh script; None: an interactive shell on the console
    console: Path | None = None  # where the serial console goes; None: this process's stdio
    accel: Accel = Accel.TCG
    memory_mib: int = 1536
    cpus: int = 2


def qemu_binary() -> str:
    path = shutil.which(QEMU)
    if path is None:
        raise VMError(f"{QEMU} not found (install qemu-system-x86)")
    return path


def qemu_argv(config: VMConfig) -> list[str]:
    argv = [qemu_binary(), "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-machine", "q35", "-smp", str(config.cpus), "-m", str(config.memory_mib)]
    if config.accel is Accel.KVM:
        argv += ["-accel", "kvm", "-cpu", "host"]
    else:
        argv += ["-accel", "tcg,thread=multi", "-cpu", "max"]
    argv += ["-kernel", str(config.image.kernel), "-initrd", str(config.image.initramfs),
             "-append", KERNEL_ARGS, "-device", "virtio-rng-pci"]
    if config.console is None:
        # signal=off: ^C goes to the guest's shell, not to QEMU.
        interactive = "off" if config.command is None else "on"
        argv += ["-chardev", f"stdio,id=console,signal={interactive}", "-serial", "chardev:console"]
    else:
        argv += ["-serial", f"file:{config.console}"]
    # security_model=none: files are read and written with QEMU's rights (root), and the
    # guest's chown on the checkout is ignored instead of failing.
    # multidevs=remap: / spans several host filesystems whose inode numbers would collide.
    shares = [("hostroot", Path("/"), ",readonly=on"), ("xchg", config.xchg, "")]
    shares += [(f"share{i}", path, "") for i, path in enumerate(config.shares)]
    for tag, path, extra in shares:
        argv += ["-virtfs", f"local,path={path},mount_tag={tag},security_model=none,multidevs=remap{extra}"]
    return argv


def _kill_with_parent() -> None:
    # QEMU must not outlive the test run, even when pytest is killed.
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class VM:
    """One running QEMU; call from the thread that started it (see _kill_with_parent)."""

    def __init__(self, config: VMConfig, *, stderr: IO[bytes] | int | None = None) -> None:
        self.config = config
        self._write_xchg()
        argv = qemu_argv(config)
        self._process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL if config.console else None,
            stdout=subprocess.DEVNULL if config.console else None, stderr=stderr,
            preexec_fn=_kill_with_parent)

    def _write_xchg(self) -> None:
        shares = "\n".join(f"share{i} {p}" for i, p in enumerate(self.config.shares))
        (self.config.xchg / "vm.conf").write_text(
            f"SKIFF_VM_SHARES={shlex.quote(shares)}\n"
            f"SKIFF_VM_MODULES={shlex.quote(str(self.config.image.modules))}\n"
            f"SKIFF_VM_TERM={shlex.quote(os.environ.get('TERM', 'dumb'))}\n")
        if self.config.command is not None:
            (self.config.xchg / "cmd").write_text(self.config.command)

    @property
    def pid(self) -> int:
        return self._process.pid

    def poll(self) -> int | None:
        """QEMU's exit status, or None while it runs."""
        return self._process.poll()

    def wait(self, timeout: float | None = None) -> int | None:
        """The command's exit status once QEMU has ended; None if the guest wrote none.

        Raises subprocess.TimeoutExpired if QEMU is still running after timeout seconds."""
        self._process.wait(timeout)
        return self.exit_status()

    def exit_status(self) -> int | None:
        try:
            return int((self.config.xchg / "rc").read_text())
        except (OSError, ValueError):
            return None

    def kill(self) -> None:
        """End QEMU now and reap it (idempotent)."""
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()


def choose_accel(image: vm_image.Image, cache: Path | None = None) -> Accel:
    """KVM if it boots this kernel, TCG otherwise; SKIFF_VM_ACCEL=kvm|tcg forces one."""
    forced = os.environ.get("SKIFF_VM_ACCEL", "")
    if forced:
        try:
            return Accel(forced)
        except ValueError:
            raise VMError(f"SKIFF_VM_ACCEL={forced}: not one of kvm, tcg") from None
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return Accel.TCG
    # The verdict depends on the host kernel (nested KVM), QEMU and the guest kernel.
    key = hashlib.sha256(f"{os.uname().release} {image.kernel} {qemu_binary()}".encode()).hexdigest()
    verdict = (cache or vm_image.cache_dir()) / f"kvm-{key[:16]}"
    try:
        return Accel(verdict.read_text().strip())
    except (OSError, ValueError):
        pass
    accel = Accel.KVM if _kvm_boots(image) else Accel.TCG
    verdict.write_text(accel.value)
    return accel


def _kvm_boots(image: vm_image.Image) -> bool:
    with tempfile.TemporaryDirectory(prefix="skiff-vm-kvm-") as tmp:
        xchg = Path(tmp)
        config = VMConfig(image=image, xchg=xchg, command="true\n", console=xchg / "console",
                          accel=Accel.KVM)
        vm = VM(config, stderr=subprocess.DEVNULL)
        try:
            return vm.wait(KVM_PROBE_SECONDS) == 0
        except subprocess.TimeoutExpired:
            return False
        finally:
            vm.kill()


def shell_command(argv: list[str], *, cwd: Path, env: dict[str, str]) -> str:
    """A /bin/sh script that runs argv in cwd with env added to the guest's environment."""
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))
    return f"cd {shlex.quote(str(cwd))} || exit 125\n{exports}exec {shlex.join(argv)}\n"

