"""`./dev.sh demo`: build a busybox bundle and run a container from it with skiff-runc, then
as an image with `skiff run`, then as a pod of two containers through the CRI service.

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
        print(f"container exited with status {code}\n")
        if code != 7:
            return 1
        return 0 if _cri_demo(tmp, skiff, os.path.join(tmp, "images")) else 1


def _cri_demo(tmp: str, skiff: str, images_root: str) -> bool:
    """`skiff cri serve` on a private socket, state and bridge; a pod whose two containers
    share localhost; logs, exec, stop, remove, all with `skiff cri` as a crictl user would."""
    import socket
    import time

    from skiff.cri.network import BridgeConfig
    from skiff.cri.network.bridge import remove_bridge

    sock = os.path.join(tmp, "cri.sock")
    config = os.path.join(tmp, "cri.toml")
    with open(config, "w") as f:
        f.write(f'socket = "{sock}"\nimages_root = "{images_root}"\nstate_root = "{tmp}/cri"\n'
                f'log_root = "{tmp}/logs"\n[network]\nmode = "bridge"\nbridge = "skiffdemo0"\n'
                'pod_cidr = "10.89.0.0/24"\n')
    pod = {"metadata": {"name": "hello", "namespace": "demo", "uid": "demo-1"}, "hostname": "hello",
           "log_directory": f"{tmp}/logs/hello",
           "linux": {"security_context": {"namespace_options": {"pid": "CONTAINER"}}}}
    web = {"metadata": {"name": "web"}, "image": {"image": "localhost/busybox:demo"}, "log_path": "web.log",
           "command": ["sh", "-c", "mkdir /www && echo hello from pod $(hostname) > /www/index.html && "
                       "exec httpd -f -p 8080 -h /www"]}
    client = {"metadata": {"name": "client"}, "image": {"image": "localhost/busybox:demo"}, "log_path": "client.log",
              "command": ["sh", "-c", "sleep 0.5; wget -qO- http://127.0.0.1:8080/; sleep 3600"]}
    for name, data in (("pod", pod), ("web", web), ("client", client)):
        with open(os.path.join(tmp, f"{name}.json"), "w") as f:
            json.dump(data, f)

    def cri(*argv: str) -> str:
        shown = [os.path.basename(a) if a.startswith("/") else a[:13] if len(a) == 64 else a for a in argv]
        print("$ skiff cri " + " ".join(shown))
        sys.stdout.flush()
        out = subprocess.run([skiff, "cri", *argv], capture_output=True, text=True,
                             env=dict(os.environ, SKIFF_CRI_SOCKET=sock))
        sys.stdout.write(out.stdout)
        sys.stderr.write(out.stderr)
        if out.returncode != 0:
            raise RuntimeError(f"skiff cri {argv[0]} failed")
        return out.stdout.strip()

    print(f"$ skiff cri serve --config {config} &")
    daemon = subprocess.Popen([skiff, "cri", "serve", "--config", config], stdout=subprocess.DEVNULL,
                              stderr=open(os.path.join(tmp, "cri.log"), "w"))
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(sock)
                    break
                except OSError:
                    if daemon.poll() is not None or time.monotonic() > deadline:
                        print("skiff cri serve did not start:\n" + open(os.path.join(tmp, "cri.log")).read(),
                              file=sys.stderr)
                        return False
                    time.sleep(0.05)
        pod_id = cri("runp", os.path.join(tmp, "pod.json"))
        ids = [cri("create", pod_id, os.path.join(tmp, f"{c}.json"), os.path.join(tmp, "pod.json"))
               for c in ("web", "client")]
        for cid in ids:
            cri("start", cid)
        cri("ps")
        time.sleep(1.0)
        cri("logs", ids[1])
        cri("exec", ids[0], "wget", "-qO-", "http://127.0.0.1:8080/")
        cri("stopp", pod_id)
        cri("rmp", pod_id)
        return True
    except RuntimeError as e:
        print(f"skiff demo: {e}", file=sys.stderr)
        return False
    finally:
        daemon.terminate()
        daemon.wait()
        remove_bridge(BridgeConfig(bridge="skiffdemo0", pod_cidr="10.89.0.0/24"))


if __name__ == "__main__":
    sys.exit(main())
