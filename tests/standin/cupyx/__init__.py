"""cupyx of the CuPy stand-in (tests/standin/cupy): scatter_add, one kernel."""

import numpy as _np

import cupy as _cupy


def scatter_add(a, slices, value):
    """a[slices] += value, with repeated indices adding up (numpy.add.at): one launch."""
    if not isinstance(a, _cupy.ndarray):
        raise TypeError("scatter_add takes a cupy.ndarray")
    _np.add.at(a._a, _cupy._unwrap(slices), _cupy._unwrap(value))
    _cupy.standin.launch("scatter_add")
