"""The VM's kernel and initramfs, built once into a cache and reused.

The kernel is Debian's linux-image package that `linux-image-amd64` depends on, fetched with
`apt-get download` and unpacked with `dpkg-deb -x`: nothing is installed into the host's /boot
or /lib/modules. Debian runs depmod in the package's postinst, so the unpacked tree gets its
modules.dep from `depmod -b` here. The initramfs is busybox-static, tests/vm/init.sh and the
modules that mounting 9p and overlayfs needs, in modprobe's order.

Layout of the cache (SKIFF_VM_CACHE, default /var/cache/skiff-vm)::

    lock                                      flock'd while building
    linux-image-6.1.0-56-amd64_6.1.192-2/     one unpacked kernel package, renamed into place
        boot/vmlinuz-6.1.0-56-amd64           when complete
        lib/modules/6.1.0-56-amd64/           with modules.dep
        initramfs-<digest>.cpio.gz            digest of init.sh, busybox and the module list

A newer kernel package replaces the older one; a changed init.sh only adds an initramfs.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

KERNEL_METAPACKAGE = "linux-image-amd64"
BUSYBOX = Path("/bin/busybox")
INIT_SCRIPT = Path(__file__).with_name("init.sh")
# What /init loads before it can mount anything: virtio-pci for the devices, 9p over virtio
# for the shares, overlayfs for the writable root, virtio-rng so that early getrandom() does
# not wait for entropy under emulation.
INITRAMFS_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay", "virtio_rng")


class ImageError(Exception):
    """The kernel or initramfs could not be fetched or built; the message says what is missing."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Image:
    kernel: Path
    initramfs: Path
    modules: Path  # lib/modules/<release> of the unpacked package, with modules.dep
    release: str


def cache_dir() -> Path:
    return Path(os.environ.get("SKIFF_VM_CACHE", "/var/cache/skiff-vm"))


def ensure_image(cache: Path | None = None) -> Image:
    """The cached image, fetching and building what is missing (idempotent, safe in parallel)."""
    cache = cache or cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ImageError(f"cannot create the VM cache {cache}: {e.strerror}") from e
    with _locked(cache / "lock"):
        kernel_dir = _ensure_kernel(cache)
        return _ensure_initramfs(kernel_dir)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _run(argv: list[str], *, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise ImageError(f"{argv[0]} not found (install it, or run ./dev.sh test)") from e
    if done.returncode != 0:
        err = done.stderr.strip().splitlines()
        raise ImageError(f"{' '.join(argv)}: exit status {done.returncode}: {err[-1] if err else ''}")
    return done.stdout


def _kernel_package() -> tuple[str, str]:
    """The versioned kernel package the metapackage depends on, and its candidate version."""
    out = _run(["apt-cache", "depends", "--no-recommends", "--no-suggests", KERNEL_METAPACKAGE])
    names = [line.split(":", 1)[1].strip() for line in out.splitlines()
             if line.strip().startswith("Depends:") and "linux-image-" in line]
    if not names:
        raise ImageError(f"apt knows no dependency of {KERNEL_METAPACKAGE}")
    show = _run(["apt-cache", "show", "--no-all-versions", names[0]])
    versions = [line.split(":", 1)[1].strip() for line in show.splitlines() if line.startswith("Version:")]
    if not versions:
        raise ImageError(f"apt knows no version of {names[0]}")
    return names[0], versions[0]


def _ensure_kernel(cache: Path) -> Path:
    try:
        return _fetch_kernel(cache)
    except ImageError:
        pass
    # A fresh machine has no package lists yet; an old list may name a version the mirror
    # no longer has.
    try:
        _run(["apt-get", "update", "-qq"])
        return _fetch_kernel(cache)
    except ImageError:
        # Offline or apt broken: any kernel fetched before is as good for the tests.
        cached = sorted(p for p in cache.glob("linux-image-*") if (p / "boot").is_dir())
        if cached:
            return cached[-1]
        raise


def _fetch_kernel(cache: Path) -> Path:
    """The unpacked candidate kernel package, fetched if missing; older ones are removed."""
    name, version = _kernel_package()
    kernel_dir = cache / f"{name}_{version}"
    if kernel_dir.is_dir():
        return kernel_dir
    with tempfile.TemporaryDirectory(prefix="fetch-", dir=cache) as tmp:
        work = Path(tmp)
        _run(["apt-get", "download", "-q", f"{name}={version}"], cwd=work)
        (deb,) = work.glob("*.deb")
        unpacked = work / "unpacked"
        _run(["dpkg-deb", "-x", str(deb), str(unpacked)])
        (release,) = [p.name for p in (unpacked / "lib/modules").iterdir()]
        _run(["depmod", "-b", str(unpacked), release])
        unpacked.rename(kernel_dir)
    for old in cache.glob("linux-image-*"):
        if old != kernel_dir:
            shutil.rmtree(old, ignore_errors=True)
    return kernel_dir


def _module_files(modules: Path, release: str) -> list[Path]:
    """The .ko files of INITRAMFS_MODULES and their dependencies, each once, in load order."""
    root = modules.parents[2]  # <root>/lib/modules/<release>
    files: list[Path] = []
    for name in INITRAMFS_MODULES:
        out = _run(["modprobe", "-d", str(root), "-S", release, "--show-depends", name])
        for line in out.splitlines():
            words = line.split()
            if words[:1] == ["insmod"] and Path(words[1]) not in files:
                files.append(Path(words[1]))
    return files


def _is_static(path: Path) -> bool:
    """Whether the 64-bit ELF file has no PT_INTERP program header (no dynamic loader)."""
    data = path.read_bytes()
    if data[:5] != b"\x7fELF\x02":
        return False
    phoff = int.from_bytes(data[0x20:0x28], "little")
    phentsize = int.from_bytes(data[0x36:0x38], "little")
    phnum = int.from_bytes(data[0x38:0x3A], "little")
    pt_interp = 3
    return all(int.from_bytes(data[phoff + i * phentsize:][:4], "little") != pt_interp
               for i in range(phnum))


def _ensure_initramfs(kernel_dir: Path) -> Image:
    (release,) = [p.name for p in (kernel_dir / "lib/modules").iterdir()]
    modules = kernel_dir / "lib/modules" / release
    kernel = kernel_dir / "boot" / f"vmlinuz-{release}"
    if not BUSYBOX.is_file() or not _is_static(BUSYBOX):
        raise ImageError(f"{BUSYBOX} is not a static busybox (install busybox-static)")
    ko_files = _module_files(modules, release)
    digest = hashlib.sha256()
    for part in [INIT_SCRIPT.read_bytes(), BUSYBOX.read_bytes(), *(str(f).encode() for f in ko_files)]:
        digest.update(hashlib.sha256(part).digest())
    initramfs = kernel_dir / f"initramfs-{digest.hexdigest()[:16]}.cpio.gz"
    if not initramfs.exists():
        _build_initramfs(initramfs, ko_files)
        for old in kernel_dir.glob("initramfs-*"):
            if old != initramfs:
                old.unlink()
    return Image(kernel=kernel, initramfs=initramfs, modules=modules, release=release)


def _build_initramfs(target: Path, ko_files: list[Path]) -> None:
    with tempfile.TemporaryDirectory(prefix="initramfs-", dir=target.parent) as tmp:
        root = Path(tmp) / "root"
        for d in ("bin", "dev", "proc", "sys", "modules"):
            (root / d).mkdir(parents=True)
        shutil.copy2(BUSYBOX, root / "bin/busybox")
        shutil.copy(INIT_SCRIPT, root / "init")
        (root / "init").chmod(0o755)
        for ko in ko_files:
            shutil.copy(ko, root / "modules" / ko.name)
        (root / "modules/order").write_text("".join(f"{ko.name}\n" for ko in ko_files))
        # The kernel opens /dev/console for init's stdio before anything is mounted.
        os.mknod(root / "dev/console", 0o600 | 0o020000, os.makedev(5, 1))
        names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        try:
            archive = subprocess.run(
                ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"], cwd=root,
                input="\n".join(names).encode(), capture_output=True, check=False)
        except FileNotFoundError as e:
            raise ImageError("cpio not found (install it, or run ./dev.sh test)") from e
        if archive.returncode != 0:
            raise ImageError(f"cpio failed: {archive.stderr.decode().strip()}")
        partial = Path(tmp) / "initramfs.cpio.gz"
        partial.write_bytes(gzip.compress(archive.stdout, compresslevel=6))
        partial.rename(target)


if __name__ == "__main__":
    print(ensure_image())
