"""Pod addresses from the pod CIDR, persisted as one file per address.

`<directory>/<address>` holds the owner (the pod id). A file appears with its content whole
and only if no file of that name exists (written to a temporary name, then `link(2)`, which
fails with EEXIST atomically, as O_EXCL would, but never leaves an empty file behind after a
crash): two processes can never hold one address, and a restart finds every address taken.
`last_reserved` remembers where the previous search stopped, so a released address is not
handed out again at once (CNI host-local does the same).

The first host address is the gateway, on the bridge; pods get the rest.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import threading
from pathlib import Path

from skiff.errors import InvalidArgument, ResourceExhausted

_LAST = "last_reserved"
_OWNERS = "owners"


def _unique() -> str:
    """A temporary name no other process or thread uses at the same time."""
    return f"{os.getpid()}.{threading.get_ident()}"


class IPAM:
    def __init__(self, directory: Path, cidr: str) -> None:
        try:
            self.network = ipaddress.IPv4Network(cidr, strict=True)
        except ValueError as e:
            raise InvalidArgument(f"pod CIDR {cidr}: {e}") from None
        if self.network.prefixlen > 30:
            raise InvalidArgument(f"pod CIDR {cidr}: needs at least a /30 (a gateway and a pod)")
        self.directory = directory
        self.gateway = self.network.network_address + 1

    @property
    def prefix(self) -> int:
        return self.network.prefixlen

    def allocate(self, owner: str) -> ipaddress.IPv4Address:
        """The owner's address: the one it already holds (a retried setup), or a new one."""
        if not owner or "\n" in owner or "/" in owner:
            raise InvalidArgument(f"ipam owner {owner!r}: must be a non-empty single line without '/'")
        (self.directory / _OWNERS).mkdir(parents=True, exist_ok=True)
        held = self.held(owner)
        if held is not None:
            return held
        first = int(self.gateway) + 1
        last = int(self.network.broadcast_address) - 1
        start = self._last_reserved(first, last) + 1
        count = last - first + 1
        for step in range(count):
            address = ipaddress.IPv4Address(first + (start - first + step) % count)
            if self._claim(address, owner):
                self._write_last_reserved(address)
                _write_whole(self.directory / _OWNERS / owner, str(address))
                return address
        raise ResourceExhausted(f"pod CIDR {self.network}: no address left")

    def held(self, owner: str) -> ipaddress.IPv4Address | None:
        """The address `owner` holds, if any."""
        try:
            address = ipaddress.IPv4Address((self.directory / _OWNERS / owner).read_text())
            if address in self.network and (self.directory / str(address)).read_text() == owner:
                return address
        except (FileNotFoundError, ValueError):
            pass
        return None

    def release(self, owner: str) -> list[ipaddress.IPv4Address]:
        """Frees every address the owner holds; none held is fine. Without its owner file
        (a crash between the claim and that file), every address file is looked at."""
        held = self.held(owner)
        candidates = [held] if held is not None else [a for a, by in self.allocations().items() if by == owner]
        freed = []
        for address in candidates:
            try:
                os.unlink(self.directory / str(address))
            except FileNotFoundError:
                continue
            freed.append(address)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.directory / _OWNERS / owner)
        return freed

    def allocations(self) -> dict[ipaddress.IPv4Address, str]:
        """Every address held, with its owner, for recovery to check against live pods."""
        found: dict[ipaddress.IPv4Address, str] = {}
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return found
        for name in names:
            try:
                address = ipaddress.IPv4Address(name)
                found[address] = (self.directory / name).read_text()
            except (ValueError, FileNotFoundError):
                continue  # last_reserved, a temporary file, or released meanwhile
        return found

    def _claim(self, address: ipaddress.IPv4Address, owner: str) -> bool:
        # No fsync: pods do not outlive a power loss, and the page cache outlives the daemon.
        tmp = self.directory / f".{address}.{_unique()}.tmp"
        tmp.write_text(owner)
        try:
            os.link(tmp, self.directory / str(address))
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True

    def _last_reserved(self, first: int, last: int) -> int:
        try:
            value = int(ipaddress.IPv4Address((self.directory / _LAST).read_text().strip()))
        except (FileNotFoundError, ValueError):
            return first - 1
        return value if first <= value <= last else first - 1

    def _write_last_reserved(self, address: ipaddress.IPv4Address) -> None:
        # A hint only: a lost or torn write just starts the next search elsewhere.
        _write_whole(self.directory / _LAST, str(address))


def _write_whole(path: Path, text: str) -> None:
    """Written under a temporary name and renamed: a reader sees all of it or the old file."""
    tmp = path.parent / f".{path.name}.{_unique()}.tmp"
    tmp.write_text(text)
    try:
        os.replace(tmp, path)
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise
