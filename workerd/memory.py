"""How much memory a process really uses: its own pages, not the ones it shares with the master.

RSS counts every page a forked child shares with its preloaded parent, so N workers would look
N times as big as they are. USS (pages only this process maps) is what freeing the process would
return; PSS splits shared pages fairly. Both come from /proc/<pid>/smaps_rollup (Linux 4.14+),
one small read of a few hundred microseconds; psutil is the fallback elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil

_KIB = 1024
_MIB = 1024 * 1024


@dataclass(frozen=True)
class MemoryUse:
    uss_bytes: int
    pss_bytes: int

    @property
    def uss_mib(self) -> float:
        return self.uss_bytes / _MIB


def _from_smaps_rollup(pid: int) -> MemoryUse | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as handle:
            text = handle.read()
    except (FileNotFoundError, PermissionError, ProcessLookupError):
        return None
    fields: dict[bytes, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(b":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[name] = int(parts[0]) * _KIB
    if b"Pss" not in fields:
        return None
    uss = fields.get(b"Private_Clean", 0) + fields.get(b"Private_Dirty", 0)
    return MemoryUse(uss_bytes=uss, pss_bytes=fields[b"Pss"])


def measure(pid: int) -> MemoryUse | None:
    """USS and PSS of `pid`, or None if it is gone."""
    found = _from_smaps_rollup(pid)
    if found is not None:
        return found
    try:
        info = psutil.Process(pid).memory_full_info()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    return MemoryUse(uss_bytes=info.uss, pss_bytes=getattr(info, "pss", info.uss))
