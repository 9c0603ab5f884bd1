"""How much memory work may take: the budget that decoding and tiling are checked against up front."""

from __future__ import annotations

import os

#: Used when the system cannot say how much memory is available.
FALLBACK_AVAILABLE = 4 << 30
#: Decoding an image may take at most this share of the memory available (the pixels are then
#: scaled to a float32 copy, and a batch holds several images); read at call time by the image
#: readers of :mod:`napari_gradcam.data` and :mod:`napari_gradcam.dicom`.
DECODE_MEMORY_SHARE = 0.25


def available_memory() -> int:
    """Bytes of memory available to this process now: the smaller of the system's available memory
    (``MemAvailable`` on Linux, psutil elsewhere) and an address-space limit (``RLIMIT_AS``) if set."""
    avail = _system_available()
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY and soft > 0:
            avail = min(avail, max(0, int(soft) - _address_space_used()))
    except (ImportError, OSError, ValueError):
        pass
    return avail


def _address_space_used() -> int:
    """Virtual memory this process maps now (what RLIMIT_AS counts); 0 where unknown."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return 0


def _system_available() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - psutil missing or failing: the fallback
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return FALLBACK_AVAILABLE


def format_bytes(n: float) -> str:
    """'1.5 GB', '120 MB', '12 kB' (decimal units, as disks and tools report them)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"
