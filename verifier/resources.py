"""The memory this process holds now, for limits that must count everything a run holds: a
search's queue is priced by an estimate per domain (search.domain_bytes), which on CIFAR CNNs
left whole runs far above the queue's budget (the rest of a run, rounds' working tensors and
the allocator's slack are not in it; benchmarks/RESULTS.md, "Why the defaults are what they
are").
"""

from __future__ import annotations

import os

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int | None:
    """Resident memory of this process now (Linux's /proc/self/statm); None where unknown."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None
