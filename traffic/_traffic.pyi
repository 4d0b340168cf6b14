# The compiled core (cffi, API mode), built at install from
# traffic/_ffi_build.py.  Its contents are generated from the cdef in
# traffic/_core/traffic.h, so they are typed as cffi's own objects: an FFI
# instance and the library of the core's functions and constants.
from typing import Any

ffi: Any
lib: Any
