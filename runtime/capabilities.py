"""Capabilities: spec names to bit masks (parent), and the five sets applied in the child.

The bounding set is dropped first, while CAP_SETPCAP is still held; then the user is
switched with PR_SET_KEEPCAPS so permitted survives setuid; then effective, permitted and
inheritable are set in one capset, and ambient raised last (it needs the cap in both
permitted and inheritable). youki capabilities.rs and runc finalizeNamespace use this order.
"""

from __future__ import annotations

from dataclasses import dataclass

from skiff.errors import InvalidArgument
from skiff.oci.spec import LinuxCapabilities
from skiff.oci.validate import CAPABILITIES

_NUMBERS = {name: n for n, name in enumerate(CAPABILITIES)}


def last_cap() -> int:
    """The highest capability this kernel knows; bits above it cannot be set."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return len(CAPABILITIES) - 1


@dataclass(frozen=True, slots=True, kw_only=True)
class CapabilitySets:
    bounding: int
    effective: int
    permitted: int
    inheritable: int
    ambient: int


def mask_of(names: tuple[str, ...], field: str, top: int) -> int:
    mask = 0
    for i, name in enumerate(names):
        number = _NUMBERS.get(name)
        if number is None:
            raise InvalidArgument(f"{field}[{i}]: unknown capability {name!r}")
        if number <= top:  # a cap newer than the kernel cannot be held anyway (runc ignores it too)
            mask |= 1 << number
    return mask


def capability_sets(caps: LinuxCapabilities | None, field: str = "process.capabilities") -> CapabilitySets:
    """No capabilities section means no capabilities at all, as in runc."""
    if caps is None:
        return CapabilitySets(bounding=0, effective=0, permitted=0, inheritable=0, ambient=0)
    top = last_cap()
    return CapabilitySets(
        bounding=mask_of(caps.bounding, f"{field}.bounding", top),
        effective=mask_of(caps.effective, f"{field}.effective", top),
        permitted=mask_of(caps.permitted, f"{field}.permitted", top),
        inheritable=mask_of(caps.inheritable, f"{field}.inheritable", top),
        ambient=mask_of(caps.ambient, f"{field}.ambient", top),
    )
