"""The machine's memory, for refusing sizes that cannot fit before any work starts."""

from __future__ import annotations

import os


def physical_memory() -> int | None:
    """Bytes of physical memory, or None where the system does not say (not POSIX)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_fits(need: int, lower: str) -> None:
    """Refuse, before building anything, settings that need more than the machine's memory:
    ``need`` bytes estimated, ``lower`` what would bring it down."""
    total = physical_memory()
    if total is not None and need > total:
        raise ValueError(f"these settings need about {need / 2**30:,.1f} GiB and this machine "
                         f"has {total / 2**30:,.1f} GiB: lower {lower}")
