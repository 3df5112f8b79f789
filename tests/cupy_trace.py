"""Real CuPy's fusion tracer and code generator, run on arrays with no device behind them.

`cupy.fuse` (cupy/_core/fusion.pyx) turns a Python function into CUDA source in two steps that
need no GPU: `Fusion.__call__` sets the thread-local `history` and `is_old_fusing`, and
`_FusionHistory.get_fusion(func, args, name)` calls the function on tracer variables, types every
operation by CuPy's ufunc loops and emits an ElementwiseKernel (or a ReductionKernel). Only the
compilation and the launch need a device. `trace` does what `Fusion.__call__` does up to there,
on device-less arrays (`cupy.ndarray(shape, dtype, memptr=MemoryPointer(BaseMemory(), 0))`), and
without the fallback `Fusion.__call__` takes when the old tracer raises (to the experimental new
fusion): a body that does not trace is an error here.

What it checks (`problems`), for a run in dtype `run_dtype`:
* no variable, parameter or operation in half precision;
* none in float64 in a float32 run, except the constants written as Python literals in a body
  (`0.5 * x`, `1 - y`): CuPy declares those as `const double` / `const long long` and every
  operation converts them to its own type, as NumPy's weak scalars are converted;
* no operation whose inputs are all scalars: CuPy types such an operation by the first ufunc loop
  that fits, without the weak-scalar rule (fusion.pyx `call_ufunc`), which for `1 - b1` is
  float16; NumPy computes it in float64 on the host, so the two disagree;
* every argument the body writes (`m += ...`, `out[...] = ...`) is written in its own dtype, and
  every returned output is in the run's dtype (or bool).
What it does not check: that NVRTC compiles the source, or anything a device does.
"""

import numpy as np


def import_cupy():
    """Real CuPy, or None when it does not import (pip install 'minivae[gpu]')."""
    try:
        import cupy
        from cupy._core import _fusion_thread_local, fusion  # noqa: F401
    except Exception:                                          # noqa: BLE001
        return None
    if "standin" in getattr(cupy, "__version__", ""):
        return None
    return cupy


def device_less(cupy, shape, dtype):
    """A cupy.ndarray of `shape` and `dtype` with no device memory behind it."""
    memptr = cupy.cuda.MemoryPointer(cupy.cuda.memory.BaseMemory(), 0)
    return cupy.ndarray(tuple(shape), np.dtype(dtype), memptr=memptr)


class Trace:
    """One traced kernel: its source, its variables, the operations on scalars alone."""

    def __init__(self, kernel, history, scalar_ops):
        self.kernel, self.history, self.scalar_ops = kernel, history, scalar_ops

    @property
    def source(self):
        k = self.kernel
        return getattr(k, "operation", "") + "\n" + getattr(k, "preamble", "")

    def variables(self):
        """(name, dtype, const) of every parameter and local variable."""
        h = self.history
        names = [(f"v{v.index}", v.dtype, v.const_value is not None)
                 for v in h.param_list + h.local_list + h.postmap_local_list]
        if h.postmap_param is not None:
            names.append((f"v{h.postmap_param.index}", h.postmap_param.dtype, False))
        return names

    def operations(self):
        """(ufunc name, [dtype of each argument], [argument variables])."""
        h = self.history
        return [(op.submodule.name, list(op.dtypes), list(op.args))
                for op in h.op_list + h.postmap_op_list]


def trace(cupy, fn, args, name=None):
    """Trace fn on `args` (device-less arrays, Python or NumPy scalars) as cupy.fuse does.
    Raises what the tracer raises."""
    from cupy._core import _fusion_thread_local, fusion

    class History(fusion._FusionHistory):
        """The tracer's own history, noting operations on scalars alone."""

        def __init__(self):
            super().__init__()
            self.scalar_ops = []

        def call_ufunc(self, ufunc, *a, **kw):
            if not any(isinstance(v, fusion._FusionVarArray) for v in a[:ufunc.nin]):
                self.scalar_ops.append(ufunc.name)
            return super().call_ufunc(ufunc, *a, **kw)

    local = _fusion_thread_local.thread_local
    history = History()
    local.history, local.is_old_fusing = history, True
    try:
        kernel, _ = history.get_fusion(fn, tuple(args), name or fn.__name__)
    finally:
        local.history, local.is_old_fusing = None, False
    return Trace(kernel, history, history.scalar_ops)


def problems(tr, run_dtype):
    """What is wrong with a traced kernel for a run in `run_dtype` (see the module docstring)."""
    run_dtype = np.dtype(run_dtype)
    found = []

    def wrong(dtype, const=False):
        dtype = np.dtype(dtype)
        if dtype == np.float16:
            return True
        return (run_dtype == np.float32 and dtype == np.float64 and not const)

    for name, dtype, const in tr.variables():
        if wrong(dtype, const):
            found.append(f"variable {name} is {np.dtype(dtype)}")
    for op, dtypes, _ in tr.operations():
        if any(wrong(t) for t in dtypes):
            found.append(f"{op} computes in {', '.join(str(np.dtype(t)) for t in dtypes)}")
    for op in tr.scalar_ops:
        found.append(f"{op} of scalars alone (typed without the weak-scalar rule)")
    h = tr.history
    params = {id(v): v for v in h.param_list}
    for op in h.op_list + h.postmap_op_list:
        nin = len(op.submodule.in_params)
        for v, t in zip(op.args[nin:], op.dtypes[nin:]):
            if id(v) in params and np.dtype(t) != v.dtype:
                found.append(f"argument v{v.index} ({v.dtype}) written through {op.submodule.name}"
                             f" in {np.dtype(t)}")
    for p in tr.kernel.out_params:
        if p.dtype not in (run_dtype, np.dtype(bool)):
            found.append(f"output {p.name} is {p.dtype}")
    if h.reduce_op is not None:
        for t in tuple(h.reduce_op.in_types) + tuple(h.reduce_op.out_types):
            if wrong(t):
                found.append(f"the reduction computes in {np.dtype(t)}")
    return found


def device_args(cupy, recorded):
    """The arguments of a fused call recorded on the stand-in, as real CuPy takes them:
    device-less arrays of the same shapes and dtypes, the same scalars."""
    return [device_less(cupy, a.shape, a.dtype) if hasattr(a, "shape") and
            not isinstance(a, np.generic) else a for a in recorded]


def signature(fn, recorded):
    """What cupy.fuse keys its kernels by: the function, each array's dtype and ndim, each
    scalar's type."""
    key = [fn]
    for a in recorded:
        if hasattr(a, "shape") and not isinstance(a, np.generic):
            key.append((np.dtype(a.dtype).str, len(a.shape)))
        else:
            key.append(np.dtype(a.dtype).str if isinstance(a, np.generic) else type(a))
    return tuple(key)
