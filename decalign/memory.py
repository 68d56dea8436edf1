"""The machine's memory, as the kernel reports it. Standard library only: the dashboard's launcher reads it
before numpy may load."""

from __future__ import annotations


def available_memory() -> int:
    """The kernel's estimate of memory available without swapping (``MemAvailable``); 0 when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
