#!/usr/bin/env bash
# dev.sh: set up a Debian 12 machine (as root) for skiff, then run its demo or its tests.
# Every step is idempotent, so running it again only does what is missing.
#
#   ./dev.sh demo    install, run a busybox container from a bundle (skiff-runc), an image (skiff run), a pod (CRI)
#   ./dev.sh test    install (with the test peers and the cgroup v2 VM's parts), run pytest
#   ./dev.sh bench   install, run bench/start_latency.py side by side with runc and crun
#   ./dev.sh bench pull   bench/pull_unpack.py: skiff against skopeo + umoci and containerd
#   ./dev.sh bench cri    bench/cri_pods.py: pods through the CRI, skiff against containerd 1.6 + runc
#   ./dev.sh bench scheduler   bench/scheduler.py: scheduling onto simulated nodes (issue 7)
#   ./dev.sh bench proxy   bench/service_proxy.py: services into nftables, two rule layouts (issue 7)
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"
top=$PWD
venv=$top/.venv

# What the runtime needs: python-prctl builds from source (gcc, python3-dev, libcap-dev);
# libseccomp2 is loaded through ctypes; busybox-static is the demo's root filesystem; nftables
# for pod networking's masquerade and hostPort rules.
base_packages=(python3 python3-venv python3-dev gcc libcap-dev libseccomp2 busybox-static
               iproute2 procps nftables)
# What the tests and benchmarks add: the peers measured against; QEMU for the v2 VM (its
# kernel is unpacked from Debian's linux-image package by tests/vm, not installed); a local
# registry (docker-registry; skopeo to push to it; openssl and htpasswd for TLS and basic auth);
# the standard CNI plugins for the CRI's "cni" network mode (portmap drives iptables); etcd for
# the orchestrator's etcd store (the tests start one of their own on loopback).
test_packages=(runc crun qemu-system-x86 cpio kmod skopeo docker-registry openssl apache2-utils
               containernetworking-plugins iptables etcd-server)
# The pull benchmark's peers.
bench_packages=(umoci containerd)

need_root() { [ "$(id -u)" = 0 ] || { echo "dev.sh: run as root (skiff creates namespaces and cgroups)" >&2; exit 1; }; }

apt_install() {
    local missing=()
    for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "dev.sh: installing Debian packages: ${missing[*]}"
    # apt-get update can fail on a stale mirror; apt-get install then says what is wrong.
    DEBIAN_FRONTEND=noninteractive apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

make_venv() {
    # Debian's own python3: a pyenv shim on PATH would cost ~120 ms per CLI start.
    [ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv "$venv"
    local stamp=$venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
    if [ ! -e "$stamp" ]; then
        echo "dev.sh: installing skiff and its Python dependencies into $venv"
        # Quiet unless it fails: setuptools' build warnings are noise here.
        { "$venv/bin/pip" install -q --upgrade pip && "$venv/bin/pip" install -q -e ".[test,bench]"; } \
            > "$venv/pip.log" 2>&1 || { cat "$venv/pip.log" >&2; exit 1; }
        rm -f "$venv"/.installed-* && touch "$stamp"
    fi
    # The editable install's import hook costs ~7 ms at every interpreter start (skiff-runc's
    # start is benchmarked): a path entry holding a `skiff` link to the checkout gives the same
    # live edits for nothing. pip removes both files again on a reinstall.
    local site
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    mkdir -p "$venv/skiff-link"
    ln -sfn "$top" "$venv/skiff-link/skiff"
    for pth in "$site"/__editable__.skiff-*.pth; do echo "$venv/skiff-link" > "$pth"; done
    rm -f "$site"/__editable___skiff_*_finder.py
    # Compiled once here, so that a start never compiles (even with PYTHONDONTWRITEBYTECODE).
    "$venv/bin/python" -m compileall -q -x '/(\.venv|tests|bench)/' "$top" >/dev/null || true
}

setup() { need_root; apt_install "${base_packages[@]}" "$@"; make_venv; }

case "${1:-}" in
    demo)
        setup
        exec "$venv/bin/python" -m skiff.demo
        ;;
    test)
        setup "${test_packages[@]}"
        shift
        exec "$venv/bin/python" -m pytest "$@"
        ;;
    bench)
        setup "${test_packages[@]}" "${bench_packages[@]}"
        shift
        if [ "${1:-}" = pull ]; then shift; exec "$venv/bin/python" bench/pull_unpack.py "$@"; fi
        if [ "${1:-}" = cri ]; then shift; exec "$venv/bin/python" bench/cri_pods.py "$@"; fi
        if [ "${1:-}" = scheduler ]; then shift; exec "$venv/bin/python" bench/scheduler.py "$@"; fi
        if [ "${1:-}" = proxy ]; then shift; exec "$venv/bin/python" bench/service_proxy.py "$@"; fi
        exec "$venv/bin/python" bench/start_latency.py "$@"
        ;;
    *)
        sed -n '2,11s/^# \{0,1\}//p' "$0" >&2
        exit 2
        ;;
esac
