"""An image config turned into an OCI runtime spec: what a container of the image runs.

Starts from `default_spec()` (runc's `spec`) and replaces the process, as containerd's CRI
plugin does (`internal/cri/server/container_create_linux.go`):

- args: containerd's `getProcessArgs`, itself moby's `daemon/commit.go`. Given args replace
  the image's Cmd; a given entrypoint replaces the image's Entrypoint and drops its Cmd
  (an empty one, `()`, clears the Entrypoint and keeps the Cmd when no args are given).
- env: the image's, then the caller's overriding by key, then PATH (moby's default) and HOME
  (from /etc/passwd, as runc's init sets it) where still missing.
- cwd: the given one, else the image's WorkingDir, else `/`.
- user: moby/sys/user `GetExecUser` on the image's /etc/passwd and /etc/group: `name`,
  `uid`, `uid:gid`, `name:group`, `uid:group`. A numeric id needs no entry (gid 0 then);
  a name does. The supplementary groups are those of /etc/group listing the user's name,
  and only when no group was given: an explicit group is the whole group set, in moby and
  in containerd alike.

The rootfs is the image's, unpacked or mounted: /etc/passwd is read as if the rootfs were
`/`, so a symlinked /etc/passwd (or /etc) cannot make skiff read a host file.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from skiff.errors import InvalidArgument
from skiff.oci import default_spec, validate_spec
from skiff.oci.image import ImageConfig
from skiff.oci.spec import Root, Spec, User

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PASSWD = "/etc/passwd"
GROUP = "/etc/group"
_MAX_ID = 2**31 - 1  # moby/sys/user's range: ids above it are refused, not wrapped
_MAX_FILE = 16 << 20  # an /etc/passwd bigger than this is not one
_MAX_LINKS = 40  # Linux's own limit on symlinks in one lookup


class RuntimeConfigError(InvalidArgument):
    """An image config, or a caller's override, that no container can run with."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecUser:
    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    home: str = "/"


def runtime_spec(
    config: ImageConfig | None,
    rootfs: str,
    *,
    args: Sequence[str] = (),
    entrypoint: Sequence[str] | None = None,
    env: Sequence[str] = (),
    working_dir: str | None = None,
    user: str | None = None,
    hostname: str | None = None,
    readonly: bool = False,
) -> Spec:
    """The runtime spec for a container of an image whose config is `config` (None for an
    image without one), with its root at `rootfs` (used as root.path and to look users
    up). `args`, `entrypoint`, `env` ("KEY=VALUE"), `working_dir` and `user` override the
    image's as described in the module docstring; `hostname` replaces runc's default."""
    config = config or ImageConfig()
    argv = merge_args(config, args=args, entrypoint=entrypoint)
    exec_user = resolve_user(rootfs, user if user is not None else config.user or "")
    environment = merge_env(config.env, env, home=exec_user.home)
    cwd = working_dir if working_dir is not None else config.working_dir or "/"
    if not cwd.startswith("/"):
        field = "working_dir" if working_dir is not None else "image config WorkingDir"
        raise RuntimeConfigError(f"{field} {cwd!r}: must be an absolute path")

    base = default_spec(args=argv)
    assert base.process is not None  # default_spec always has one
    process = dataclasses.replace(
        base.process,
        terminal=False,
        args=argv,
        env=environment,
        cwd=cwd,
        user=User(uid=exec_user.uid, gid=exec_user.gid, additional_gids=exec_user.additional_gids),
    )
    spec = dataclasses.replace(
        base,
        process=process,
        root=Root(path=rootfs, readonly=readonly),
        hostname=hostname if hostname is not None else base.hostname,
    )
    validate_spec(spec)
    return spec


def merge_args(
    config: ImageConfig, *, args: Sequence[str] = (), entrypoint: Sequence[str] | None = None
) -> tuple[str, ...]:
    """The process args: containerd's getProcessArgs (module docstring)."""
    command = tuple(entrypoint) if entrypoint is not None else None
    rest = tuple(args)
    if not command:
        if not rest:
            rest = config.cmd or ()
        # moby writes `[""]` for an Entrypoint cleared in a Dockerfile
        if command is None and config.entrypoint != ("",):
            command = config.entrypoint or ()
    argv = (command or ()) + rest
    if not argv:
        raise RuntimeConfigError(
            "no command specified: the image has no Entrypoint or Cmd and no args were given"
        )
    return argv


def merge_env(image_env: Sequence[str], env: Sequence[str], *, home: str = "/") -> tuple[str, ...]:
    """The image's env, then `env` overriding by key (an overridden key keeps its place),
    then PATH and HOME where missing. Every entry must be KEY=VALUE."""
    merged: dict[str, str] = {}
    for source, entries in (("image config Env", image_env), ("env", env)):
        for entry in entries:
            key, sep, _ = entry.partition("=")
            if not sep or not key:
                raise RuntimeConfigError(f"{source} entry {entry!r}: must be KEY=VALUE")
            merged[key] = entry
    merged.setdefault("PATH", f"PATH={DEFAULT_PATH}")
    merged.setdefault("HOME", f"HOME={home}")
    return tuple(merged.values())


def resolve_user(rootfs: str, user: str) -> ExecUser:
    """`user` (`name`, `uid`, `name:group`, `uid:gid`, ...; empty is root) looked up in the
    image's /etc/passwd and /etc/group below `rootfs`."""
    user_part, _, group_part = user.partition(":")
    name, uid, gid, home = _find_user(rootfs, user_part or "0", user)
    if group_part:
        return ExecUser(uid=uid, gid=_resolve_group(rootfs, group_part, user), home=home)
    additional: list[int] = []
    if name is not None:
        for group in _entries(rootfs, GROUP, 4):
            group_gid = _int(group[2])
            if group_gid is None or name not in group[3].split(","):
                continue
            if group_gid != gid and group_gid not in additional:
                additional.append(group_gid)
    return ExecUser(uid=uid, gid=gid, additional_gids=tuple(additional), home=home)


def _find_user(rootfs: str, user_part: str, user: str) -> tuple[str | None, int, int, str]:
    """(name, uid, gid, home) of the user named or numbered `user_part`; a uid without an
    entry runs with gid 0 and HOME=/, as in moby."""
    uid = _numeric_id(user_part, "user", user)
    for entry in _entries(rootfs, PASSWD, 7):
        if (entry[0] == user_part) if uid is None else (_int(entry[2]) == uid):
            entry_uid, entry_gid = _int(entry[2]), _int(entry[3])
            if entry_uid is None or entry_gid is None:  # moby refuses such an entry too
                line = ":".join(entry[:4])
                raise RuntimeConfigError(f"user {user_part!r}: invalid ids in the image's {PASSWD}: {line!r}")
            return entry[0], entry_uid, entry_gid, entry[5] or "/"
    if uid is None:
        raise RuntimeConfigError(f"user {user_part!r}: no such user in the image's {PASSWD}")
    return None, uid, 0, "/"


def _resolve_group(rootfs: str, group: str, user: str) -> int:
    gid = _numeric_id(group, "group", user)
    if gid is not None:
        return gid
    for entry in _entries(rootfs, GROUP, 4):
        found = _int(entry[2])
        if entry[0] == group and found is not None:
            return found
    raise RuntimeConfigError(f"group {group!r}: no such group in the image's {GROUP}")


def _numeric_id(value: str, what: str, user: str) -> int | None:
    if not value.isdigit() or not value.isascii():
        return None
    number = int(value)
    if number > _MAX_ID:
        raise RuntimeConfigError(f"user {user!r}: {what} id {number} out of range 0-{_MAX_ID}")
    return number


def _int(field: str) -> int | None:
    return int(field) if field.isdigit() and field.isascii() and int(field) <= _MAX_ID else None


def _entries(rootfs: str, path: str, width: int) -> Iterator[list[str]]:
    """The colon-separated lines of a passwd-style file of the image, padded to `width`
    fields; none when the file is missing. Comments and blank lines are skipped."""
    try:
        text = _read_in_root(rootfs, path)
    except FileNotFoundError:
        return
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split(":")
        yield fields + [""] * (width - len(fields))


def _read_in_root(rootfs: str, path: str) -> str:
    """The text of `path` (absolute in the image) under `rootfs`, symlinks resolved inside
    it. FileNotFoundError when missing; RuntimeConfigError when not a regular file."""
    host_path = resolve_in_root(rootfs, path)
    try:
        # O_NONBLOCK: a FIFO planted at /etc/passwd must not hang the caller
        fd = os.open(host_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise RuntimeConfigError(f"image {path}: {os.strerror(e.errno or 0).lower()}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RuntimeConfigError(f"image {path}: not a regular file")
        data = f.read(_MAX_FILE + 1)
    if len(data) > _MAX_FILE:
        raise RuntimeConfigError(f"image {path}: larger than {_MAX_FILE} bytes")
    return data.decode("utf-8", errors="replace")


def resolve_in_root(rootfs: str, path: str) -> str:
    """The host path of `path` in the image at `rootfs`, read as if `rootfs` were `/`:
    `..` stops at the root and a symlink's absolute target starts again from it (what
    openat2's RESOLVE_IN_ROOT does). The parts from the first missing one on are joined as
    they are. Not race-free: for an image's files, which no container has run on yet."""
    pending = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(rootfs, *resolved, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            resolved.append(part)
            continue
        if not stat.S_ISLNK(st.st_mode):
            resolved.append(part)
            continue
        links += 1
        if links > _MAX_LINKS:
            raise RuntimeConfigError(f"image {path}: {os.strerror(errno.ELOOP).lower()}")
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        pending = [p for p in target.split("/") if p not in ("", ".")] + pending
    return os.path.join(rootfs, *resolved)
