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

import os
from concurrent.futures import ThreadPoolExecutor

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
    """The array module for 'numpy', 'cupy' or 'auto' (CuPy when a GPU is usable, else NumPy)."""
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


# ---- threads for NumPy's memory-bound loops

_POOL = None
_THREADS = None


def cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def num_threads():
    """Threads for the copy loops: set_num_threads(n), else $OPENBLAS_NUM_THREADS (so one
    setting governs BLAS and these loops alike), else one per core."""
    global _THREADS
    if _THREADS is None:
        _THREADS = int(os.environ.get("OPENBLAS_NUM_THREADS") or 0) or cpu_count()
    return _THREADS


def set_num_threads(n):
    global _THREADS
    _THREADS = max(1, int(n))


def parallel_for(n, fn, like, work=None):
    """Run fn(lo, hi) over [0, n) cut into one contiguous piece per core, on threads, when
    `like` is a NumPy array (on a GPU the loop body is already parallel: run it once).

    BLAS already spreads matrix products over the cores, but NumPy's copies and elementwise loops
    run on one. They do release the GIL, so when each piece writes memory no other piece touches
    (say, its own range of channels), threads share that work with no locks. `work` is the
    number of elements involved (default like.size): below ~64k the threads would cost more than they save.
    """
    global _POOL
    pieces = min(n, num_threads())
    if pieces < 2 or not isinstance(like, np.ndarray) or (work or like.size) < 1 << 16:
        fn(0, n)
        return
    if _POOL is None:
        _POOL = ThreadPoolExecutor(cpu_count(), thread_name_prefix="minivae")
    bounds = [n * k // pieces for k in range(pieces + 1)]
    futures = [_POOL.submit(fn, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
    for f in futures:
        f.result()
