"""`./dev.sh demo`: build a busybox bundle and run a container from it with skiff-runc.

The bundle builder is also what the tests and benchmarks use: Debian's busybox-static is a
complete root filesystem in one binary (runc's tests do the same with a busybox tarball).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

from skiff.oci import default_spec, spec_to_dict

BUSYBOX = "/bin/busybox"


def make_rootfs(rootfs: str) -> None:
    """A busybox root filesystem: the static binary, a link per applet, and the files a shell
    expects. Hard links, when the filesystem allows, keep it instant."""
    for d in ("bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "root", "usr/bin", "usr/sbin"):
        os.makedirs(os.path.join(rootfs, d), exist_ok=True)
    os.chmod(os.path.join(rootfs, "tmp"), 0o1777)
    target = os.path.join(rootfs, "bin/busybox")
    try:
        os.link(BUSYBOX, target)
    except OSError:
        shutil.copy2(BUSYBOX, target)
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", os.path.join(rootfs, "bin", applet))
    with open(os.path.join(rootfs, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    with open(os.path.join(rootfs, "etc/group"), "w") as f:
        f.write("root:x:0:\nnobody:x:65534:\n")


def make_bundle(bundle: str, args: tuple[str, ...] = ("sh",), *, terminal: bool = False) -> str:
    """A bundle: rootfs/ and the config.json that `skiff-runc spec` writes, with `args`."""
    os.makedirs(bundle, exist_ok=True)
    make_rootfs(os.path.join(bundle, "rootfs"))
    config = spec_to_dict(default_spec(args=args))
    config["process"]["terminal"] = terminal
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return bundle


def main() -> int:
    """Build a busybox image, then run it twice: once from an OCI bundle with skiff-runc (the
    runtime alone), once as an image with `skiff run` (store, layers, overlay snapshot)."""
    if not os.path.exists(BUSYBOX):
        print(f"skiff demo: {BUSYBOX} is missing (Debian package busybox-static)", file=sys.stderr)
        return 1
    bin_dir = os.path.dirname(sys.executable)
    script = ('echo "hello from a skiff container: pid $$, hostname $(hostname)"; '
              'echo "mounts:"; cut -d" " -f2,3 /proc/self/mounts | sed "s/^/  /"; '
              'echo "capabilities: $(grep CapEff /proc/self/status)"')
    with tempfile.TemporaryDirectory(prefix="skiff-demo-") as tmp:
        bundle = make_bundle(os.path.join(tmp, "bundle"), ("sh", "-c", script))
        print(f"$ skiff-runc run --bundle {bundle} demo")
        sys.stdout.flush()
        code = subprocess.run([os.path.join(bin_dir, "skiff-runc"), "--root", os.path.join(tmp, "state"), "run",
                               "--bundle", bundle, f"skiff-demo-{os.getpid()}"]).returncode
        print(f"container exited with status {code}\n")
        env = dict(os.environ, SKIFF_ROOT=os.path.join(tmp, "images"), SKIFF_STATE=os.path.join(tmp, "state"))
        skiff = os.path.join(bin_dir, "skiff")
        for argv in (["build", os.path.join(bundle, "rootfs"), "-t", "localhost/busybox:demo", "--cmd", '["sh"]'],
                     ["images"],
                     ["run", "--rm", "-e", "WHO=an image", "localhost/busybox:demo", "sh", "-c",
                      'echo "hello from $WHO: $(cat /proc/self/mounts | head -1)"; exit 7']):
            print("$ skiff " + " ".join(argv))
            sys.stdout.flush()
            code = subprocess.run([skiff, *argv], env=env).returncode
        print(f"container exited with status {code}")
        return 0 if code == 7 else 1


if __name__ == "__main__":
    sys.exit(main())
