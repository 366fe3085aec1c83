"""Files of the cgroup filesystem: read and write them, make and remove directories,
find where each hierarchy is mounted and where this process sits in it.

Every call goes through `os.open`/`os.read`/`os.write` (three syscalls a write; `open()`
adds an fstat and an ioctl), and every OSError becomes a `CgroupError` that names the
operation, the file and the errno: "write 100 to /sys/fs/cgroup/x/pids.max: invalid
argument (EINVAL)".

Ownership: each directory skiff makes carries the xattr `trusted.skiff`. Removal walks up
from the leaf only through marked directories, so skiff never removes a cgroup it did not
create, and a parent shared by several containers (`<own cgroup>/skiff`) is removed by
whichever container leaves it empty last, not only by the one that happened to create it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import time
from collections.abc import Callable

from skiff.runtime.cgroups import CgroupError

MARK = "trusted.skiff"
_MARK_VALUE = b"1"

# Controllers skiff drives on cgroup v1. perf_event, net_cls, net_prio, rdma and misc
# hierarchies are left alone: the container stays in the cgroup skiff itself is in there.
V1_CONTROLLERS = frozenset(
    ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "hugetlb")
)

_UNLIMITED_V1 = 0x7FFFFFFFFFFFF000  # LONG_MAX rounded down to a page: v1's "no limit"


def reason(e: OSError) -> str:
    """`invalid argument (EINVAL)`: strerror for people, the errno name for searches."""
    if e.errno is None:
        return str(e)
    name = errno.errorcode.get(e.errno, str(e.errno))
    return f"{os.strerror(e.errno).lower()} ({name})"


def write(path: str, value: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise CgroupError(f"write {value} to {path}: {reason(e)}") from e


def read(path: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(fd)
    except OSError as e:
        raise CgroupError(f"read {path}: {reason(e)}") from e
    return b"".join(chunks).decode()


def read_optional(path: str) -> str | None:
    """The file's text, or None when the file is not there (controller not enabled,
    older kernel); other errors still raise."""
    try:
        return read(path)
    except CgroupError as e:
        if isinstance(e.__cause__, FileNotFoundError):
            return None
        raise


def parse_int(text: str, path: str) -> int | None:
    """An integer file; "max" and v1's page-rounded LONG_MAX are None (no limit)."""
    text = text.strip()
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        raise CgroupError(f"read {path}: not an integer: {text!r}") from None
    return None if value >= _UNLIMITED_V1 else value


def read_int(path: str, default: int = 0) -> int:
    """A counter; a missing file counts as `default`. A limit must use `read_limit`."""
    text = read_optional(path)
    if text is None:
        return default
    value = parse_int(text, path)
    return default if value is None else value


def read_limit(path: str) -> int | None:
    text = read_optional(path)
    return None if text is None else parse_int(text, path)


def parse_keyed(text: str) -> dict[str, int]:
    """Flat keyed files (`memory.stat`, `cpu.stat`, `memory.events`): "key value" lines."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            continue  # v2 "max" in a few stat lines; nothing skiff reports
    return out


def read_keyed(path: str) -> dict[str, int]:
    text = read_optional(path)
    return {} if text is None else parse_keyed(text)


def read_pids(path: str) -> list[int]:
    text = read_optional(path)
    return [] if text is None else [int(line) for line in text.split()]


def mark(path: str) -> None:
    try:
        os.setxattr(path, MARK, _MARK_VALUE)
    except FileNotFoundError:
        raise  # removed already (make_dirs: a racing destroy)
    except OSError as e:
        # No trusted xattrs here (rootless, an old kernel): the record's `created` list
        # still lets this container remove what it made.
        if e.errno not in (errno.ENOTSUP, errno.EPERM, errno.EACCES):
            raise CgroupError(f"setxattr {MARK} on {path}: {reason(e)}") from e


def is_marked(path: str) -> bool:
    try:
        return os.getxattr(path, MARK) == _MARK_VALUE
    except OSError:
        return False


def make_dirs(path: str, created: list[str]) -> None:
    """mkdir `path` and whichever of its parents are missing; append what this call made
    to `created`, top-down. A parent removed by a racing `destroy` between our mkdirs
    (ENOENT on the child) is made again, as is one removed before it was marked: another
    container's destroy removes an empty parent it finds marked, and ours was empty."""
    for _ in range(5):
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            return
        except FileNotFoundError:
            parent = os.path.dirname(path)
            if parent == path:
                raise CgroupError(f"mkdir {path}: no cgroup filesystem there") from None
            make_dirs(parent, created)
            continue
        except OSError as e:
            raise CgroupError(f"mkdir {path}: {reason(e)}") from e
        created.append(path)
        try:
            mark(path)
        except FileNotFoundError:
            created.remove(path)
            continue
        return
    raise CgroupError(f"mkdir {path}: parent keeps disappearing")


def remove_dirs(leaf: str, created: list[str], *, stop: str, keep_parents: bool = False) -> None:
    """rmdir the leaf, then (unless keep_parents) each parent up to (not including) `stop`
    while it is skiff's (marked, or in `created`) and empty. The leaf gets a short grace on
    EBUSY: tasks that were just killed leave the cgroup when they are released, a moment
    after the kill."""
    if leaf not in created and not is_marked(leaf):
        return  # gone already (getxattr fails), or a cgroup skiff was only told to use
    delay = 0.001
    deadline = time.monotonic() + 2.0
    while True:
        try:
            os.rmdir(leaf)
            break
        except FileNotFoundError:
            break
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise CgroupError(f"rmdir {leaf}: {reason(e)}") from e
            if delay == 0.001:
                _remove_leftover_children(leaf)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
    if not keep_parents:
        remove_parents(leaf, created, stop=stop)


def _remove_leftover_children(path: str) -> None:
    """The cgroups skiff made below `path` and left empty: a create that died after making
    its cgroup (or the CRI monitor's, made ahead of a create that never came, Runtime.prepare).
    rmdir is the test: one with processes or cgroups in it stays."""
    with contextlib.suppress(OSError), os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False) and is_marked(entry.path):
                with contextlib.suppress(OSError):
                    os.rmdir(entry.path)


def remove_parents(leaf: str, created: list[str], *, stop: str) -> None:
    """The parents of `leaf` up to `stop` that are skiff's and empty, bottom-up."""
    path = os.path.dirname(leaf)
    while path != stop and path.startswith(stop + "/"):
        if path not in created and not is_marked(path):
            return
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno in (errno.EBUSY, errno.ENOTEMPTY):
                return  # another container's cgroup is still in there
            raise CgroupError(f"rmdir {path}: {reason(e)}") from e
        path = os.path.dirname(path)


def wait_for(what: str, done: Callable[[], bool], *, timeout: float = 10.0) -> None:
    """Poll `done` with a growing sleep: freezing usually settles within a millisecond,
    but a task in uninterruptible sleep can hold it back for a while."""
    delay = 0.0002
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise CgroupError(f"{what}: not done after {timeout:g}s")
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


# -- where things are --------------------------------------------------------------------


def own_cgroups() -> dict[str, str]:
    """/proc/self/cgroup as {hierarchy: path}: "" for cgroup2, "cpu,cpuacct" or "memory"
    for v1 (the controller list as the kernel prints it), "name=systemd" for named ones."""
    out: dict[str, str] = {}
    for line in read("/proc/self/cgroup").splitlines():
        _, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        out[controllers] = path
    return out


@functools.cache
def v1_mounts() -> dict[frozenset[str], tuple[str, str]]:
    """cgroup v1 mounts from /proc/self/mountinfo: {controllers: (mount point, root)}.
    Mount points are not assumed: a hierarchy may be `cpu,cpuacct` (systemd hosts) or
    `cpu` and `cpuacct` apart (this development host). The first mount of a hierarchy
    whose root is "/" wins, as it shows the whole tree. Read once per process (and by the
    fork server for its workers): the hierarchies do not move while skiff runs (as
    detect_mode assumes), and a node with many pods has thousands of mounts to read through
    for each container. Callers must not change the dict."""
    out: dict[frozenset[str], tuple[str, str]] = {}
    for line in read("/proc/self/mountinfo").splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        if fields[sep + 1] != "cgroup":
            continue
        controllers = frozenset(fields[sep + 3].split(",")) & V1_CONTROLLERS
        if not controllers:
            continue
        root, mountpoint = _unescape(fields[3]), _unescape(fields[4])
        if controllers not in out or (out[controllers][1] != "/" and root == "/"):
            out[controllers] = (mountpoint, root)
    return out


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \040, \011, \012, \134
    if "\\" not in field:
        return field
    return field.encode().decode("unicode_escape")


def relative(path: str, root: str) -> str:
    """An absolute cgroup path as /proc/self/cgroup prints it, relative to a mount whose
    root is `root`; "" for the mount's top."""
    if root == "/":
        return path.strip("/")
    if path == root or path.startswith(root + "/"):
        return path[len(root) :].strip("/")
    raise CgroupError(f"cgroup {path} is outside the mounted part ({root}) of its hierarchy")
