"""Backends: NumPy on the CPU, CuPy on an NVIDIA GPU, one code path for both.

Every function in the engine takes its array module from the arrays it is given::

    xp = array_module(x)      # numpy or cupy
    y = xp.tanh(x @ W + b)

so a layer never asks "which backend am I on?". The only places that choose a backend are the
constructors (where parameters are created) and the data pipeline (where batches are moved to the
device). Randomness always comes from one NumPy generator on the host: weights and noise are drawn
there and copied over, so a seed gives the same numbers on both backends and the generator's state
can be saved in a checkpoint as plain integers.
"""

import numpy as np

BACKENDS = ("auto", "numpy", "cupy")


class BackendError(RuntimeError):
    """The backend asked for cannot be used here; the message says why."""


def cupy_status():
    """(module or None, reason): CuPy if it imports and can run a kernel on a GPU, else why not."""
    try:
        import cupy
    except Exception as e:  # ImportError, or a CUDA library that fails to load
        return None, f"CuPy is not installed or failed to import ({type(e).__name__}: {e}); " \
                     f"install it with `pip install 'minivae[gpu]'`"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None, "CuPy found no CUDA device"
        (cupy.arange(3, dtype=cupy.float32) * 2).sum().item()  # compile and run one kernel
    except Exception as e:
        return None, f"CuPy cannot use the GPU ({type(e).__name__}: {e})"
    return cupy, "ok"


def get_backend(name="numpy"):
    """The array module for 'numpy', 'cupy' or 'auto' (CuPy when a GPU is usable, else NumPy);
    given an array module, that module (so a model resolves its backend once and hands its
    layers the module, instead of probing CuPy again for every parameter)."""
    if not isinstance(name, str):
        return name
    if name == "numpy":
        return np
    if name not in ("cupy", "auto"):
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    cupy, reason = cupy_status()
    if cupy is not None:
        return cupy
    if name == "auto":
        return np
    raise BackendError(f"backend 'cupy' is not usable: {reason}")


def backend_name(xp):
    return "cupy" if xp.__name__.startswith("cupy") else "numpy"


def array_module(x):
    """numpy or cupy, whichever owns array x."""
    if type(x).__module__.startswith("cupy"):
        import cupy
        return cupy
    return np


def to_host(x):
    """A NumPy array with the values of x (a no-op for NumPy arrays)."""
    return x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else np.asarray(x)


def to_device(x, xp):
    """x as an array of module xp (copies host -> GPU for CuPy; a no-op for NumPy)."""
    return xp.asarray(x)


def make_rng(seed=None):
    """A NumPy Generator: pass an int seed, an existing Generator (returned as is), or None."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)

