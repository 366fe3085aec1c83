"""The CRI service's fork server and its jobs (the container monitor, the pod's namespaces).

It is started first, before the service imports grpc, protobuf and the stores: the fork
server is what every container's monitor is a fork of, and a monitor shares the fork
server's pages, so what only the daemon uses stays out of the monitors' memory (16 MB of
RSS instead of 23). What the jobs use is imported here, so no worker pays for imports.
"""

from __future__ import annotations

from skiff.cri import monitor, pod_namespaces
from skiff.runtime.forkserver import ForkServer


def start_forkserver() -> ForkServer:
    """The fork server with every job of the service. Call it before any thread starts."""
    import skiff.oci.codec  # noqa: F401
    import skiff.runtime.cgroups.devices  # noqa: F401
    import skiff.runtime.cgroups.stats  # noqa: F401
    import skiff.runtime.cgroups.v1  # noqa: F401
    import skiff.runtime.cgroups.v2  # noqa: F401
    import skiff.runtime.container  # noqa: F401
    import skiff.runtime.hooks  # noqa: F401
    import skiff.runtime.plan  # noqa: F401
    import skiff.runtime.rootfs  # noqa: F401
    import skiff.runtime.seccomp  # noqa: F401
    import skiff.runtime.spawn  # noqa: F401
    from skiff.oci import default_spec, parse_spec, spec_to_dict

    parse_spec(spec_to_dict(default_spec()))  # builds the spec codec's converters once, here
    from skiff.runtime.cgroups import CgroupMode, cgroupfs, detect_mode

    if detect_mode() is not CgroupMode.UNIFIED:
        cgroupfs.v1_mounts()  # read once, here, not by each container's create
    return ForkServer.start({**monitor.JOBS, **pod_namespaces.JOBS})
