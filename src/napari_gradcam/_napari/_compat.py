"""Work-arounds for the environment napari runs in.

**Triton after a software OpenGL context.**  CUDA builds of torch come with triton, which
``torchvision`` (through ``torch._dynamo``) imports.  triton's extension carries its own LLVM;
when Mesa's software renderer (llvmpipe/swrast: virtual machines, ``xvfb-run``, remote desktops)
has already loaded the system ``libLLVM`` for napari's canvas, loading triton's LLVM next to it
crashes the process (a segmentation fault, no traceback).  The plugin never uses triton (it only
serves ``torch.compile`` kernels on GPUs), so when that clash is possible and triton has not been
imported yet, :func:`avoid_triton_llvm_clash` makes ``import triton`` fail cleanly instead, which
torch handles as "triton not installed".  Importing torchvision before napari opens its window
avoids the clash as well (``napari-gradcam demo`` does so).
"""

from __future__ import annotations

import sys

def _llvm_loaded() -> bool:
    """True if a system libLLVM (e.g. Mesa's llvmpipe) is mapped into this process (Linux only)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            return any("libLLVM" in line for line in f)
    except OSError:
        return False


def avoid_triton_llvm_clash() -> bool:
    """Block ``import triton`` if it would clash with an already loaded libLLVM; True if blocked."""
    if "triton" in sys.modules:
        return sys.modules["triton"] is None
    if sys.platform.startswith("linux") and _llvm_loaded():
        sys.modules["triton"] = None  # type: ignore[assignment]  # -> ImportError: torch treats it as absent
        return True
    return False
