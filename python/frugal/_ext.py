"""Loads the C++ extension.

Open MPI loads its components (mca_*.so) with dlopen, and they expect
libmpi's symbols in the global namespace: a Python extension is loaded
with RTLD_LOCAL, so the extension (and with it libmpi) is loaded with
RTLD_GLOBAL here, as examples/pytorch_ctypes.py does for libfrugal.
"""

import os
import sys

_flags = sys.getdlopenflags()
sys.setdlopenflags(_flags | os.RTLD_GLOBAL)
try:
    from frugal import _frugal as ext
finally:
    sys.setdlopenflags(_flags)

__all__ = ["ext"]
