"""An almost empty mount namespace that a warm runtime's containers copy instead of the host's.

A new mount namespace is a copy of its creator's, and pivot_root then detaches that copy
again: both cost in proportion to the host's mount table, which grows with every pod (its
namespace pins, its /dev/shm, each container's overlay root). With 500 pods running that
made a container start three times as slow.

So a warm runtime makes one namespace whose only mount is a private tmpfs with an empty
"rootfs" directory, and holds it by an fd. A container's child (child.py) takes detached
copies of its rootfs and of every bind source with open_tree while it is still in the
host's namespace, joins this one, unshares it (a copy of one mount), and attaches the copies
there. A container that makes or joins a user namespace, or whose createContainer hooks
run before pivot_root (they see the runtime's namespace), copies the host's as before.
"""

from __future__ import annotations

import os
import threading

from skiff.runtime import libc

ROOTFS = "/rootfs"  # where a container's rootfs is attached in its copy of the template


def make() -> int:
    """The template, held by the returned fd. Made in a thread of its own: unshare(CLONE_NEWNS)
    moves only the calling thread (it unshares the thread's filesystem context too), and that
    thread ends. OSError if the kernel lacks open_tree (Linux 5.2)."""
    os.close(libc.open_tree("/", libc.OPEN_TREE_CLOEXEC))
    fds: list[int] = []
    errors: list[BaseException] = []
    workdir = "/proc"  # any directory will do, covered in the template only: this one exists

    def build() -> None:
        try:
            libc.unshare(libc.CLONE_NEWNS)
            fds.append(os.open("/proc/thread-self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC))
            libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
            libc.mount("tmpfs", workdir, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC,
                       "size=16k,mode=755")
            os.mkdir(workdir + ROOTFS, 0o755)
            os.chdir(workdir)
            libc.pivot_root(".", ".")
            libc.umount2(".", libc.MNT_DETACH)
        except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread
            errors.append(e)

    thread = threading.Thread(target=build, name="skiff-mount-template")
    thread.start()
    thread.join()
    if errors:
        for fd in fds:
            os.close(fd)
        raise errors[0]
    return fds[0]
