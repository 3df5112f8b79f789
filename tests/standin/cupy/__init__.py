"""A CuPy stand-in on the CPU: NumPy arrays behind CuPy's rules, with counters.

Put tests/standin first on sys.path (PYTHONPATH for a subprocess) where real CuPy is absent, and
`--backend cupy` runs the whole program on the CPU under the rules a GPU imposes:

* no implicit conversion to NumPy: np.asarray(x), np.array(x), np.savez(..., x=x), matplotlib and
  Pillow given a device array raise TypeError (`__array__` refuses, as CuPy's does; no buffer);
* no mixing: an operator or a cupy function given a numpy.ndarray raises TypeError; Python and
  NumPy scalars are fine;
* reductions and integer indexing give 0-d device arrays, not host scalars;
* explicit transfers only: cupy.asarray / cupy.array up; .get(), cupy.asnumpy, float(), int(),
  bool(), .item(), .tolist() and formatting down;
* `cupy.fuse`: a fused function's body may use only what CuPy can fuse (elementwise ufuncs,
  arithmetic, comparisons, `where`, and whole-array reductions), checked as it runs;
* the rest the program touches: cupy.cuda.runtime.getDeviceCount(), events, synchronize, the
  memory pool, cupyx.scatter_add, cupy.lib.stride_tricks.as_strided.

`cupy.standin` counts kernel launches (every operation that makes or writes numbers: not a view,
not an `empty`; as many as CuPy's own code launches for the call: tests/standin/cupy/_launches.py
has the rules, each naming the CuPy source it follows), device-to-host reads and host-to-device
uploads:

    cupy.standin.reset(); step(); cupy.standin.launches, cupy.standin.reads, cupy.standin.uploads
"""

import builtins as _builtins

import numpy as _np

from cupy import _device, _launches

__version__ = "14.2.0+standin"


class _Counters:
    """Kernel launches, device-to-host reads and host-to-device uploads since reset()."""

    def __init__(self):
        self.reset()
        self.fusing = 0          # > 0 while a fused function's body runs
        self.log = None          # a list to append (kind, what) to, when tracing
        self.fused_calls = None  # a list to append (function, arguments) of fused calls to
        self.reductions = []     # (array, axis) of the reductions in the fused body running

    def reset(self):
        self.launches = self.reads = self.uploads = 0

    def counts(self):
        return {"launches": self.launches, "reads": self.reads, "uploads": self.uploads}

    def launch(self, what, count=1):
        if not self.fusing:
            self.launches += count
            if self.log is not None:
                self.log.extend([("launch", what)] * count)

    def read(self, what):
        if self.fusing:
            raise TypeError(f"a fused function cannot read a value to the host ({what})")
        _device.refuse_while_capturing("D2H transfers")
        self.reads += 1
        if self.log is not None:
            self.log.append(("read", what))

    def upload(self, what):
        _device.refuse_while_capturing("H2D transfers")
        self.uploads += 1
        if self.log is not None:
            self.log.append(("upload", what))


standin = _Counters()


def _mixing(value):
    if isinstance(value, _np.ndarray):
        raise TypeError("Unsupported type <class 'numpy.ndarray'>: a cupy operation was given a "
                        "NumPy array (move it with cupy.asarray first)")


def _unwrap(value):
    """The NumPy array behind a device array; scalars and other values as they are."""
    if isinstance(value, ndarray):
        return value._a
    _mixing(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v) for v in value)
    return value


def _sharing(value, sources):
    """The device array of `sources` whose memory the NumPy result `value` is, or a view of
    (an operation's view, or its out=), else None."""
    if isinstance(value, _np.ndarray):
        for s in sources:
            if value is s._a or (value.base is not None and _np.shares_memory(value, s._a)):
                return s
    return None


def _wrap(value, sources=()):
    """Device arrays of NumPy results; one that is a view of a source device array shares its
    memory, any other is new memory."""
    if isinstance(value, _np.ndarray):
        base = _sharing(value, sources)
        return ndarray(value, None if base is None else base._mem)
    if isinstance(value, _np.generic):             # reductions give 0-d device arrays
        return ndarray(_np.asarray(value))
    if isinstance(value, tuple):
        return tuple(_wrap(v, sources) for v in value)
    if isinstance(value, list):
        return [_wrap(v, sources) for v in value]
    return value


def _device_arrays(values):
    for v in values:
        if isinstance(v, ndarray):
            yield v
        elif isinstance(v, (list, tuple)):
            yield from _device_arrays(v)


def _kernel_key(name, arrays):
    """What a launch needs loaded: cuBLAS for a product, else the kernel by name and types."""
    if name in ("matmul", "dot"):
        return "cublas"
    return (name,) + tuple((a.dtype.str, a.ndim) for a in arrays)


def _refill(targets, values):
    """Copy a re-run's results into the NumPy arrays the first run returned (a replay)."""
    if isinstance(targets, _np.ndarray):
        if isinstance(values, ndarray):
            values = values._a
        if values is not targets:
            _np.copyto(targets, values)
    elif isinstance(targets, (list, tuple)):
        for t, v in zip(targets, values):
            _refill(t, v)


def _wrapped_index(shape, key):
    """An index as CuPy's scatter kernels use it: an integer array's entries modulo the length
    of their axis (cupy/_core/_routines_indexing.pyx, _create_scatter_kernel), where NumPy
    raises for one out of range."""
    keys = key if isinstance(key, tuple) else (key,)
    if not _builtins.any(isinstance(k, _np.ndarray) and k.dtype.kind in "iu" for k in keys):
        return key
    out = tuple(k % shape[i] if isinstance(k, _np.ndarray) and k.dtype.kind in "iu" else k
                for i, k in enumerate(keys))
    return out if isinstance(key, tuple) else out[0]


def _before(arrays):
    """Call before an operation writes: during a capture, what existed gets saved, since a
    capture runs nothing (it is put back at end_capture)."""
    if not standin.fusing and _device.recording():
        for a in arrays:
            _device.STATE.capture.touch(a._mem)


def _issue(name, count, arrays, rerun):
    """Count `count` launches of `name` on `arrays` (device arrays), or record them when the
    stream is capturing (rerun: runs the operation again into the same arrays)."""
    if standin.fusing:
        return
    key = _kernel_key(name, arrays)
    if _device.kernel(key, rerun, [a._mem for a in arrays]):
        standin.launch(name, count)


def _reduction_count(a, axis=None, dtype=None, out=None, *rest, **kwargs):
    return _launches.reduction_other(a, axis, out)


# name -> the number of launches CuPy makes for the call, from its unwrapped arguments
_RULES = {
    "matmul": lambda a, b, out=None, **k: _launches.matmul(a, b, out),
    "dot": lambda a, b, out=None: _launches.dot(a, b, out),
    "sum": lambda a, axis=None, dtype=None, out=None, *r, **k:
        _launches.reduction_sum(a, axis, out),
    "concatenate": lambda arrays, *a, **k: _launches.concatenate(arrays),
    "take": lambda a, indices, *r, **k: _launches.take(a, indices),
    **{name: _reduction_count for name in ("prod", "amax", "amin", "max", "min", "mean", "var",
                                           "std", "all", "any", "argmax", "argmin")},
}


def _apply(fn, name, args, kwargs, views=False):
    """Run NumPy's fn on unwrapped arguments, count CuPy's launches for the call unless it made
    a view, wrap. Inside a fused body a reduction is noted for the kernel's count."""
    a = _unwrap(args)
    k = {key: _unwrap(v) for key, v in kwargs.items()}
    sources = list(_device_arrays(args)) + list(_device_arrays(kwargs.values()))
    _before(sources)
    result = fn(*a, **k)
    if standin.fusing and name in _FUSABLE_REDUCTIONS:
        standin.reductions.append((a[0], k.get("axis", a[1] if len(a) > 1 else None)))
    wrapped = _wrap(result, sources)                # a view, or out=, shares its memory
    if views and _sharing(result, sources) is not None:
        return wrapped                              # a view: no kernel
    if not standin.fusing:
        rule = _RULES.get(name)
        targets = _unwrap(wrapped)      # a recording keeps the numbers, not the device arrays
        _issue(name, 1 if rule is None else rule(*a, **k),
               sources + list(_device_arrays([wrapped])),
               lambda: _refill(targets, fn(*a, **k)))
    return wrapped


# --------------------------------------------------------------------------------------------
# The device array


class ndarray:
    """A device array: a NumPy array that only crosses to the host when asked."""

    __array_ufunc__ = None            # NumPy's operators hand a device array back to us
    __array_priority__ = 100

    def __init__(self, array, mem=None):
        self._a = array
        self._mem = _device.Memory(array) if mem is None else mem     # shared by its views

    # -- what CuPy refuses
    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use "
                        "`.get()` to construct a NumPy array explicitly.")

    @property
    def __array_interface__(self):
        raise TypeError("Implicit conversion to a NumPy array is not allowed: a cupy.ndarray "
                        "exposes no host memory. Please use `.get()` first.")

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    # -- transfers to the host
    def set(self, arr, stream=None):
        """Copy a host array into this one (same shape; an upload)."""
        arr = _np.asarray(arr)
        if arr.shape != self._a.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self._a.shape}, new shape: "
                             f"{arr.shape}")
        standin.upload("set")
        self._a[...] = arr

    def get(self, stream=None, out=None):
        standin.read("get")
        return self._a.copy()

    def item(self):
        standin.read("item")
        return self._a.item()

    def tolist(self):
        standin.read("tolist")
        return self._a.tolist()

    def __float__(self):
        standin.read("float")
        return float(self._a)

    def __int__(self):
        standin.read("int")
        return int(self._a)

    def __bool__(self):
        standin.read("bool")
        return bool(self._a)

    def __format__(self, spec):
        standin.read("format")
        return format(self._a.item() if self._a.ndim == 0 else self._a, spec)

    def __repr__(self):
        return f"array({_np.array2string(self._a, separator=', ')}, device=standin)"

    __str__ = __repr__

    # -- attributes that stay on the host side (metadata)
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray(self._a.T, self._mem))
    device = property(lambda self: cuda.Device(0))

    def __len__(self):
        return len(self._a)

    # -- indexing
    def __getitem__(self, key):
        return _apply(lambda a, k: a[k], "getitem", (self, key), {}, views=True)

    def __setitem__(self, key, value):
        if isinstance(value, _np.ndarray):
            _mixing(value)
        k, v, target = _unwrap(key), _unwrap(value), self._a

        def run():                      # the index read when it runs (a replay reads it anew)
            target[_wrapped_index(target.shape, k)] = v
        _before([self])
        run()
        _issue("setitem", 1, [self] + list(_device_arrays([key, value])), run)

    # -- methods
    def reshape(self, *shape, order="C"):
        return _apply(lambda a: a.reshape(*shape, order=order), "reshape", (self,), {}, True)

    def transpose(self, *axes):
        return ndarray(self._a.transpose(*axes), self._mem)

    def swapaxes(self, a1, a2):
        return ndarray(self._a.swapaxes(a1, a2), self._mem)

    def ravel(self, order="C"):
        return _apply(lambda a: a.ravel(order), "ravel", (self,), {}, True)

    def view(self, *args):
        return ndarray(self._a.view(*args), self._mem)

    def copy(self, order="C"):
        return _apply(lambda a: a.copy(order), "copy", (self,), {})

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        if not copy and _np.dtype(dtype) == self._a.dtype:
            return self
        return _apply(lambda a: a.astype(dtype, order=order), "astype", (self,), {})

    def fill(self, value):
        v, target = _unwrap(value), self._a

        def run():
            target.fill(v)
        _before([self])
        run()
        _issue("fill", 1, [self], run)

    def flatten(self):
        return _apply(lambda a: a.flatten(), "flatten", (self,), {})

    def squeeze(self, axis=None):
        return ndarray(self._a.squeeze(axis), self._mem)

    def dot(self, other, out=None):
        return dot(self, other, out=out)

    def __matmul__(self, other):
        return matmul(self, other)

    def __rmatmul__(self, other):
        return matmul(other, self)


def _method(name):
    def method(self, *args, **kwargs):
        return _apply(getattr(_np.ndarray, name), name, (self,) + args, kwargs)
    method.__name__ = name
    return method


for _name in ("sum", "mean", "max", "min", "prod", "var", "std", "all", "any", "argmax",
              "argmin", "cumsum", "clip", "round", "conj", "nonzero", "sort", "argsort"):
    setattr(ndarray, _name, _method(_name))


def _operator(op, name):
    def method(self, other):
        return _apply(op, name, (self, other), {})
    method.__name__ = name
    return method


def _inplace(op, name):
    def method(self, other):
        b, target = _unwrap(other), self._a

        def run():
            op(target, b, out=target)
        _before([self])
        run()
        _issue(name, 1, [self] + list(_device_arrays([other])), run)
        return self
    method.__name__ = name
    return method


_BINARY = {"add": _np.add, "sub": _np.subtract, "mul": _np.multiply, "truediv": _np.true_divide,
           "floordiv": _np.floor_divide, "mod": _np.remainder, "pow": _np.power,
           "and": _np.bitwise_and, "or": _np.bitwise_or, "xor": _np.bitwise_xor}
for _name, _op in _BINARY.items():
    setattr(ndarray, f"__{_name}__", _operator(_op, _name))
    setattr(ndarray, f"__r{_name}__", _operator(lambda a, b, op=_op: op(b, a), "r" + _name))
    setattr(ndarray, f"__i{_name}__", _inplace(_op, "i" + _name))
for _name, _op in {"lt": _np.less, "le": _np.less_equal, "gt": _np.greater,
                   "ge": _np.greater_equal, "eq": _np.equal, "ne": _np.not_equal}.items():
    setattr(ndarray, f"__{_name}__", _operator(_op, _name))
ndarray.__hash__ = None
for _name, _op in {"neg": _np.negative, "pos": _np.positive, "abs": _np.absolute,
                   "invert": _np.invert}.items():
    setattr(ndarray, f"__{_name}__",
            (lambda op, name: lambda self: _apply(op, name, (self,), {}))(_op, _name))


# --------------------------------------------------------------------------------------------
# The module's functions: NumPy's, under the rules above. Only names real CuPy has.

# Functions whose result may be a view of their input (no kernel when it is).
_VIEW_FUNCTIONS = {"reshape", "transpose", "moveaxis", "swapaxes", "broadcast_to", "ravel",
                   "squeeze", "expand_dims", "atleast_1d", "atleast_2d", "split", "real"}
_FUNCTIONS = {
    # elementwise (ufuncs: fusable)
    "abs", "absolute", "add", "subtract", "multiply", "divide", "true_divide", "floor_divide",
    "negative", "power", "square", "sqrt", "exp", "expm1", "log", "log1p", "log2", "log10",
    "tanh", "sinh", "cosh", "sin", "cos", "maximum", "minimum", "fmax", "fmin", "sign",
    "greater", "greater_equal", "less", "less_equal", "equal", "not_equal", "logical_and",
    "logical_or", "logical_not", "isfinite", "isnan", "isinf", "floor", "ceil", "rint",
    "logaddexp", "reciprocal", "clip", "where", "fabs", "copysign", "heaviside",
    # reductions and the rest
    "sum", "mean", "var", "std", "prod", "amax", "amin", "max", "min", "all", "any", "argmax",
    "argmin", "cumsum", "dot", "vdot", "matmul", "tensordot", "einsum", "outer", "inner",
    "concatenate", "stack", "hstack", "vstack", "repeat", "tile", "pad", "take",
    "ascontiguousarray", "copy", "flip", "sort", "argsort", "allclose", "isclose",
    "array_equal", "count_nonzero", "diff", "linspace", "nonzero", "flatnonzero", "round",
    "around", "trace", "diag", "tril", "triu", "searchsorted", "unique", "bincount",
} | _VIEW_FUNCTIONS
_UFUNCS = {n for n in _FUNCTIONS if isinstance(getattr(_np, n, None), _np.ufunc)} | {"where",
                                                                                      "clip"}
_FUSABLE_REDUCTIONS = {"sum", "prod", "amax", "amin", "max", "min"}


def _function(name):
    fn = getattr(_np, name)

    def call(*args, **kwargs):
        return _apply(fn, name, args, kwargs, views=name in _VIEW_FUNCTIONS)
    call.__name__ = name
    return call


for _name in _FUNCTIONS:
    globals()[_name] = _function(_name)


def _np_take(a, indices, axis=None, out=None):
    return _np.take(a, indices, axis=axis, out=out, mode="wrap")


def take(a, indices, axis=None, out=None):
    """cupy.take: an index out of range wraps around (the cupy_take kernel takes it modulo the
    axis' length, cupy/_core/_routines_indexing.pyx), where NumPy's take raises."""
    return _apply(_np_take, "take", (a, indices), {"axis": axis, "out": out})


ndarray.take = lambda self, indices, axis=None, out=None: take(self, indices, axis, out)

# dtypes and constants are the same objects as NumPy's (CuPy uses NumPy's dtypes)
for _name in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
              "uint16", "uint32", "uint64", "bool_", "complex64", "complex128", "dtype",
              "result_type", "promote_types", "can_cast", "finfo", "iinfo", "pi", "e", "inf",
              "nan", "newaxis", "float_", "intp", "integer", "floating", "number", "isscalar",
              "ndim", "shape", "size"):
    if hasattr(_np, _name):
        globals()[_name] = getattr(_np, _name)


def asarray(a, dtype=None, order=None):
    """A device array of a: an upload from the host, or a (converted) device array."""
    if isinstance(a, ndarray):
        return a if dtype is None or _np.dtype(dtype) == a.dtype else a.astype(dtype)
    if isinstance(a, (list, tuple)) and _builtins.any(isinstance(v, ndarray) for v in a):
        return stack(a) if dtype is None else stack(a).astype(dtype)
    standin.upload("asarray")
    return ndarray(_np.array(a, dtype=dtype, order=order or "K"))


def array(a, dtype=None, copy=True, order="K", ndmin=0):
    if isinstance(a, ndarray):
        out = a.astype(dtype or a.dtype) if copy else asarray(a, dtype)
        return out
    standin.upload("array")
    return ndarray(_np.array(a, dtype=dtype, order=order, ndmin=ndmin))


def asnumpy(a, stream=None):
    if isinstance(a, ndarray):
        return a.get()
    return _np.asarray(a)


def get_array_module(*args):
    import sys
    return sys.modules[__name__] if _builtins.any(isinstance(a, ndarray) for a in args) else _np


def empty(shape, dtype=float, order="C"):
    return ndarray(_np.empty(shape, dtype=dtype, order=order))     # no kernel: memory only


def empty_like(a, dtype=None):
    return ndarray(_np.empty_like(_unwrap(a), dtype=dtype))


def _filled(make):
    def create(*args, **kwargs):
        a, k = _unwrap(args), {key: _unwrap(v) for key, v in kwargs.items()}
        out = ndarray(make(*a, **k))
        target = out._a
        _issue(make.__name__, 1, [out], lambda: _np.copyto(target, make(*a, **k)))
        return out
    create.__name__ = make.__name__
    return create


zeros, ones, full, zeros_like, ones_like, full_like, arange, eye, identity = (
    _filled(f) for f in (_np.zeros, _np.ones, _np.full, _np.zeros_like, _np.ones_like,
                         _np.full_like, _np.arange, _np.eye, _np.identity))


# --------------------------------------------------------------------------------------------
# cupy.fuse: one kernel for a Python function of elementwise operations


class _FusionError(TypeError):
    pass


def fuse(*args, **kwargs):
    """@cupy.fuse() (or @cupy.fuse): the decorated function runs as one kernel.

    Its body may use operators (in-place ones too: `x += y` writes x; `x[...] = y` too), the
    ufuncs, `where`, astype, copy, and one reduction (cupy.sum, prod, max, min, all, any: as
    functions, the tracer's variables have no such methods), as CuPy's fusion
    (cupy/_core/fusion.pyx) traces them; nothing that
    reads to the host, indexes, reshapes or allocates. The stand-in runs the body with NumPy and
    keeps CuPy's rules where they differ from calling the body:
    * positional arguments only (`Fusion.__call__(self, *args)`): a keyword is a TypeError;
    * one reduction (`_FusionHistory.set_reduce_op` asserts there is none yet; CuPy then falls
      back to its experimental new fusion, which this project does not use): a second raises;
    * every returned value is an output array of its own (`get_fusion` gives each a fresh output
      parameter): one array returned twice, or an argument returned, comes back as copies;
    * launches: one, or for a body with a reduction what the reduction kernel launches
      (_launches.reduction_kernel, with every argument an input of the kernel).
    standin.fused_calls, when a list, receives (function, arguments) of every call."""
    def decorate(fn):
        def fused(*call_args, **call_kwargs):
            if call_kwargs:
                raise TypeError(f"__call__() got an unexpected keyword argument "
                                f"'{next(iter(call_kwargs))}' (a fused function takes "
                                f"positional arguments only)")
            for a in call_args:
                _mixing(a)
            if standin.fused_calls is not None:
                standin.fused_calls.append((fn, call_args))
            arrays = list(_device_arrays(call_args))
            _before(arrays)
            result, reductions = _run_body(fn, call_args)
            outputs = _own_outputs(result, call_args)
            count = 1
            if reductions:
                values = [_unwrap(a) for a in call_args if a is not None]
                first = next(a for a in values if isinstance(a, _np.ndarray))
                count = _launches.reduction_kernel(
                    _np.broadcast_to(first, reductions[0][0].shape),
                    _launches._axes(reductions[0][1], reductions[0][0].ndim), len(values))
            targets, host_args = _unwrap(outputs), _unwrap(call_args)
            _issue(f"fuse:{fn.__name__}", count, arrays + list(_device_arrays([outputs])),
                   lambda: _refill(targets, _run_body(fn, [
                       ndarray(a) if isinstance(a, _np.ndarray) else a for a in host_args])[0]))
            return outputs
        fused.__name__ = fn.__name__
        fused.__doc__ = fn.__doc__
        fused.__wrapped__ = fn
        fused._standin_fused = True
        return fused
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return decorate(args[0])
    return decorate


def _run_body(fn, args):
    """(what the fused body returns, the reductions it made), its operations not counted."""
    standin.fusing += 1
    standin.reductions = []
    try:
        result = fn(*args)
        if len(standin.reductions) > 1:
            raise _FusionError(f"{fn.__name__}: cupy.fuse traces one reduction per kernel, this "
                               f"body has {len(standin.reductions)}")
    finally:
        standin.fusing -= 1
    reductions, standin.reductions = standin.reductions, []
    return result, reductions


def _own_outputs(result, inputs):
    """A fused kernel's outputs: each returned array its own (copied where the body returned an
    argument, or one array twice)."""
    if result is None:
        return None
    single = not isinstance(result, tuple)
    seen = [_unwrap(a) for a in inputs if isinstance(a, ndarray)]
    outputs = []
    for value in ((result,) if single else result):
        if isinstance(value, ndarray):
            if _builtins.any(value._a is s for s in seen):
                value = ndarray(value._a.copy())
            seen.append(value._a)
        outputs.append(value)
    return outputs[0] if single else tuple(outputs)


def _guard_fusion(name):
    """Inside a fused body, only fusable functions may be called."""
    fn = globals()[name]
    if name in _UFUNCS or name in _FUSABLE_REDUCTIONS:
        return
    def guarded(*args, **kwargs):
        if standin.fusing:
            raise _FusionError(f"cupy.{name} cannot be used inside a fused function")
        return fn(*args, **kwargs)
    guarded.__name__ = name
    globals()[name] = guarded


for _name in sorted(_FUNCTIONS | {"asarray", "array", "empty", "zeros", "ones", "full",
                                  "arange", "empty_like", "zeros_like", "ones_like"}):
    _guard_fusion(_name)


class _AtUfunc:
    """A ufunc with .at (cupy.add.at): unbuffered in place, repeated indices each applied."""

    def __init__(self, call, ufunc):
        self._call, self._ufunc = call, ufunc
        self.__name__ = ufunc.__name__

    def __call__(self, *args, **kwargs):
        return self._call(*args, **kwargs)

    def at(self, a, indices, b=None):
        if not isinstance(a, ndarray):
            _mixing(a)
            raise TypeError(f"{self.__name__}.at takes a cupy.ndarray")
        if standin.fusing:
            raise _FusionError(f"cupy.{self.__name__}.at cannot be used inside a fused function")
        values, target, ufunc, where = _unwrap(b), a._a, self._ufunc, _unwrap(indices)

        def run():
            ufunc.at(target, _wrapped_index(target.shape, where), values)
        _before([a])
        run()
        if _device.kernel((f"{self.__name__}.at", a.dtype.str), run,
                          [x._mem for x in _device_arrays([a, indices, b])]):
            standin.launch(f"{self.__name__}.at", _launches.add_at(a._a, where, values))


add = _AtUfunc(add, _np.add)


def _guard_method(name):
    method = getattr(ndarray, name)

    def guarded(self, *args, **kwargs):
        whole = name == "__setitem__" and (args[0] is Ellipsis or args[0] == slice(None))
        if standin.fusing and not whole:      # fusion.pyx: `x[...] = y` and `x[:] = y` only
            raise _FusionError(f"ndarray.{name} cannot be used inside a fused function")
        return method(self, *args, **kwargs)
    guarded.__name__ = name
    setattr(ndarray, name, guarded)


# CuPy's tracer variables (fusion.pyx, _FusionVarArray) have operators, copy, astype and `[...] =`
# only: a reduction in a fused body is a cupy function (cupy.sum(x)), never a method.
for _name in ("sum", "prod", "max", "min", "all", "any",
              "__getitem__", "__setitem__", "reshape", "transpose", "ravel", "fill", "flatten",
              "dot", "__matmul__", "__rmatmul__", "take", "sort", "argsort", "cumsum", "nonzero",
              "var", "std", "mean", "argmax", "argmin", "clip", "round", "get", "item",
              "tolist"):
    _guard_method(_name)


# --------------------------------------------------------------------------------------------
# cupy.lib.stride_tricks, cupy.cuda, the memory pool


class _Namespace:
    def __init__(self, **entries):
        self.__dict__.update(entries)


def _as_strided(x, shape=None, strides=None):
    if not isinstance(x, ndarray):
        _mixing(x)
        raise TypeError("as_strided takes a cupy.ndarray")
    return ndarray(_np.lib.stride_tricks.as_strided(x._a, shape=shape, strides=strides), x._mem)


lib = _Namespace(stride_tricks=_Namespace(as_strided=_as_strided))
linalg = _Namespace(norm=lambda x, *a, **k: _apply(_np.linalg.norm, "norm", (x,) + a, k))


class _Event:
    def __init__(self, *args, **kwargs):
        self.time = None

    def record(self, stream=None):
        import time
        self.time = time.perf_counter()

    def synchronize(self):
        _device.refuse_while_capturing("synchronous API calls")


def _get_elapsed_time(start, end):
    return (end.time - start.time) * 1e3


class _Device:
    def __init__(self, device=0):
        self.id = device
        self.compute_capability = "90"

    def use(self):
        pass

    def synchronize(self):
        _device.refuse_while_capturing("synchronous API calls")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def get_default_memory_pool():
    return _device.STATE.default_pool


def get_default_pinned_memory_pool():
    return _device.STATE.default_pool


_device.Stream.null = _device.STATE.null
_device.STATE.count_launch = standin.launch

cuda = _Namespace(
    runtime=_Namespace(getDeviceCount=lambda: 1, runtimeGetVersion=lambda: 12040,
                       driverGetVersion=lambda: 12040,
                       getDeviceProperties=lambda i: {"name": b"CuPy stand-in (CPU)",
                                                      "totalGlobalMem": 0},
                       CUDARuntimeError=_device.CUDARuntimeError),
    Event=_Event, get_elapsed_time=_get_elapsed_time, Device=_Device, Stream=_device.Stream,
    get_current_stream=_device.current_stream, MemoryPool=_device.MemoryPool,
    using_allocator=_device.using_allocator, graph=_Namespace(Graph=_device.Graph))
