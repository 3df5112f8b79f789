"""cupyx of the CuPy stand-in (tests/standin/cupy): scatter_add, deprecated as in CuPy 14."""

import warnings as _warnings

import cupy as _cupy


def scatter_add(a, slices, value):
    """a[slices] += value, with repeated indices adding up: cupy.add.at, with the warning CuPy 14
    gives (cupy/_core/core.pyx, ndarray.scatter_add)."""
    _warnings.warn("`ndarray.scatter_add` is deprecated. Please use `cupy.add.at` instead.",
                   DeprecationWarning, stacklevel=2)
    if not isinstance(a, _cupy.ndarray):
        raise TypeError("scatter_add takes a cupy.ndarray")
    _cupy.add.at(a, slices, value)
