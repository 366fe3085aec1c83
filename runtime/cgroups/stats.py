"""What a cgroup has used, in one shape for both drivers, and in runc's `events --stats`.

Units are bytes and nanoseconds. A limit of None means "no limit" ("max" on v2, the
page-rounded LONG_MAX on v1). Swap is swap alone, as v2 counts it; `to_runc_json` turns
it back into memory+swap, as runc reports it on both versions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

_MAX_UINT64 = 2**64 - 1  # how runc prints "no limit"


@dataclass(frozen=True, slots=True, kw_only=True)
class HugetlbStats:
    usage: int = 0
    max_usage: int = 0
    failcnt: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class BlkioEntry:
    major: int
    minor: int
    op: str  # "Read", "Write", ... as runc names them
    value: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CgroupStats:
    memory_usage: int = 0
    memory_max_usage: int = 0  # v2: memory.peak (kernel >= 5.19), else 0
    memory_limit: int | None = None
    memory_failcnt: int = 0  # v1 memory.failcnt; v2 memory.events "max"
    memory_cache: int = 0  # v1 total_cache; v2 file
    memory_rss: int = 0  # v1 total_rss; v2 anon
    memory_raw: dict[str, int] = field(default_factory=dict)  # memory.stat as is
    swap_usage: int = 0
    swap_limit: int | None = None
    swap_failcnt: int = 0
    oom_kills: int = 0
    cpu_usage_total: int = 0
    cpu_usage_user: int = 0
    cpu_usage_system: int = 0
    cpu_usage_percpu: tuple[int, ...] = ()  # v1 only
    throttling_periods: int = 0
    throttled_periods: int = 0
    throttled_time: int = 0
    pids_current: int = 0
    pids_limit: int | None = None
    hugetlb: dict[str, HugetlbStats] = field(default_factory=dict)  # by page size, "2MB"
    io_service_bytes: tuple[BlkioEntry, ...] = ()
    io_serviced: tuple[BlkioEntry, ...] = ()

    def to_runc_json(self) -> dict[str, object]:
        """The "data" of runc's `events --stats` (types.Stats in runc's types/events.go),
        with Go's omitempty: zero scalars and empty lists drop out, structs stay."""
        limit = _MAX_UINT64 if self.memory_limit is None else self.memory_limit
        if self.memory_limit is None or self.swap_limit is None:
            swap_limit = _MAX_UINT64
        else:
            swap_limit = self.memory_limit + self.swap_limit
        return {
            "cpu": {
                "usage": _omit(
                    total=self.cpu_usage_total,
                    percpu=list(self.cpu_usage_percpu),
                    kernel=(self.cpu_usage_system, True),
                    user=(self.cpu_usage_user, True),
                ),
                "throttling": _omit(
                    periods=self.throttling_periods,
                    throttledPeriods=self.throttled_periods,
                    throttledTime=self.throttled_time,
                ),
            },
            "memory": {
                **_omit(cache=self.memory_cache),
                "usage": _memory_entry(
                    limit, self.memory_usage, self.memory_max_usage, self.memory_failcnt
                ),
                # runc reports swap as memory+swap on v2 too, to match v1's memsw files;
                # the peak of a sum is not the sum of peaks, so max_usage is left out
                "swap": _memory_entry(
                    swap_limit, self.memory_usage + self.swap_usage, 0, self.swap_failcnt
                ),
                "kernel": {"limit": 0, "failcnt": 0},
                "kernelTCP": {"limit": 0, "failcnt": 0},
                **_omit(raw=dict(self.memory_raw)),
            },
            "pids": _omit(current=self.pids_current, limit=self.pids_limit or 0),
            "blkio": _omit(
                ioServiceBytesRecursive=[_blkio(e) for e in self.io_service_bytes],
                ioServicedRecursive=[_blkio(e) for e in self.io_serviced],
            ),
            "hugetlb": {
                size: _omit(usage=h.usage, max=h.max_usage, failcnt=(h.failcnt, True))
                for size, h in self.hugetlb.items()
            },
        }


def _memory_entry(limit: int, usage: int, max_usage: int, failcnt: int) -> dict[str, object]:
    return _omit(limit=(limit, True), usage=usage, max=max_usage, failcnt=(failcnt, True))


def _blkio(e: BlkioEntry) -> dict[str, object]:
    return _omit(major=e.major, minor=e.minor, op=e.op, value=e.value)


def _omit(**fields: object) -> dict[str, object]:
    """Go's omitempty: drop zero values and empty containers; a (value, True) pair marks
    a field without omitempty, kept even when zero."""
    out: dict[str, object] = {}
    for key, value in fields.items():
        if isinstance(value, tuple):
            out[key] = value[0]
        elif value:
            out[key] = value
    return out
