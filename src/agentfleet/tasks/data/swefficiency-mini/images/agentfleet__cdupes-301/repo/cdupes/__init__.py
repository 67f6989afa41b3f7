import ctypes
import os

_lib = ctypes.CDLL(os.path.join(os.path.dirname(__file__), "..", "build", "libdupes.so"))


def count_dupes(values):
    """How many values equal an earlier one."""
    arr = (ctypes.c_int * len(values))(*values)
    return _lib.count_dupes(arr, len(values))
