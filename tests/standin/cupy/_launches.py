"""How many kernels CuPy 14 launches for one call, rule by rule, read off CuPy's own source.

The stand-in (tests/standin/cupy/__init__.py) counts one launch for an elementwise operation or a
fused call; the calls below take more, or fewer, depending on the operands' shapes, contiguity and
dtype, as the CuPy code each rule names decides. Every function takes the NumPy arrays behind the
device arrays and returns a count; tests/test_standin.py has a test for each rule. (cuBLAS and
CUB may run more than one kernel inside one library call; a library call counts as CuPy's code
makes it: one GEMM call, and for CUB the passes its dispatch makes, as noted at each rule.)

Paths are in the cupy/cupy repository at v14.
"""

import numpy as np

# cupy/_core/_cub_reduction.pyx: CUB_REDUCE_SIZE_THRESHOLD. Below it CuPy's own reduction kernel
# runs instead of its CUB block reduction.
CUB_BLOCK_THRESHOLD = 128
# cub::DeviceReduce (cupy/cuda/cub.pyx, device_reduce) runs one single-tile kernel when the input
# fits one tile, else a tile pass and a single-tile pass. A tile of 4-byte items is 256 threads x
# 16 items in CUB's reduce policies for sm_60 and later; taken as the same for 8-byte items.
CUB_TILE = 256 * 16


def contiguous(a):
    """(C-contiguous, F-contiguous) as CuPy sets them: size-1 axes do not count (NumPy's relaxed
    strides agree)."""
    return bool(a.flags.c_contiguous), bool(a.flags.f_contiguous)


# --------------------------------------------------------------------------------------------
# Products (cupy/_core/_routines_linalg.pyx)


def _operand_copies(m):
    """tensordot_core -> _mat_to_cublas_contiguous: a 2-D operand that is neither C- nor
    F-contiguous is copied before cuBLAS sees it (`a = a.copy()`); one of either order is passed
    with a transpose flag instead."""
    return 0 if any(contiguous(m)) else 1


def _shares(out, *arrays):
    """_memory_range.may_share_bounds(out, a): the output overlaps an operand's memory."""
    return any(np.may_share_memory(out, a) for a in arrays)


def dot(a, b, out=None):
    """`dot` (and matmul of operands of at most two dimensions).

    * a 0-d operand: one multiply;
    * vector . vector (n == m == 1 in tensordot_core): with CUB, CuPy's default accelerator, the
      product is `(a.ravel() * b.ravel()).sum(out=c)`: a multiply, then ndarray.sum (below: CUB's
      DeviceReduce and, into `out`, an elementwise copy);
    * otherwise one GEMM, after copying an operand that is neither C- nor F-contiguous, and
      into a fresh array copied to `out` when `out` overlaps an operand.
    """
    if a.ndim == 0 or b.ndim == 0:
        return 1
    if a.ndim == 1 and b.ndim == 1:
        return 1 + reduction_sum(np.empty(a.size, a.dtype), axis=None, out=out)
    # dot sees each operand as a matrix (a 1-D one as a row or a column, an N-D one reshaped
    # around its contracted axis); one that is neither C- nor F-contiguous is copied.
    copies = sum(_operand_copies(m) for m in (a, b))
    return copies + 1 + (1 if out is not None and _shares(out, a, b) else 0)


def _mat_ptrs(ndim):
    """_mat_ptrs: the pointer array of a batch of matrices, one kernel, and one more per batch
    axis beyond the first."""
    return 1 + max(0, ndim - 3)


def matmul(a, b, out=None):
    """`matmul` / `@`.

    * at most two dimensions: `dot`, plus a copy when `out` is given but not C-contiguous or
      of another dtype;
    * more: each operand is expanded to the common number of dimensions and made C-contiguous
      (`ascontiguousarray`: a copy of a transposed operand); when a batch axis broadcasts (a
      2-D operand against a 3-D one, or 1 against n), the batch runs through pointer arrays:
      three _mat_ptrs launches (one for each operand and the output) and a gemmBatched;
      otherwise one gemmStridedBatchedEx. An `out` that is not C-contiguous, of another dtype,
      or overlapping an operand is written through a fresh array and one copy.
    """
    ndim = max(a.ndim, b.ndim)
    if ndim <= 2:
        extra = 0
        if out is not None and (not out.flags.c_contiguous
                                or out.dtype != np.result_type(a, b)):
            extra, out = 1, None
        return extra + dot(a, b, out)
    count = 0
    expanded = []
    for m in (a, b):
        if m.ndim == 1:
            m = m.reshape(1, -1) if m is a else m.reshape(-1, 1)
        m = m.reshape((1,) * (ndim - m.ndim) + m.shape)
        count += 0 if m.flags.c_contiguous else 1            # ascontiguousarray
        expanded.append(m)
    broadcast = any(x != y and 1 in (x, y) for x, y in
                    zip(expanded[0].shape[:-2], expanded[1].shape[:-2]))
    count += 3 * _mat_ptrs(ndim) + 1 if broadcast else 1
    if out is not None and (not out.flags.c_contiguous or out.dtype != np.result_type(a, b)
                            or _shares(out, a, b)):
        count += 1                                           # elementwise_copy(c, out)
    return count


# --------------------------------------------------------------------------------------------
# Reductions (cupy/_core/_routines_math.pyx, cupy/cuda/cub.pyx, cupy/_core/_reduction.pyx,
# cupy/_core/_cub_reduction.pyx)


def _axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if np.isscalar(axis) else tuple(axis)
    return tuple(sorted(a % ndim for a in axes))


def _contiguous_axes(axes):
    return all(b == a + 1 for a, b in zip(axes, axes[1:]))


def _routine_cub(a, reduce_axes):
    """cub.cub_reduction (CuPy's default routine accelerator, CUPY_ACCELERATORS=cub): the number
    of CUB kernels, or None when CUB does not take the reduction. A C- or F-contiguous array
    reduced over every axis goes to device_reduce (cub::DeviceReduce: one pass when it fits a
    tile, else two); one reduced over trailing axes (C order) or leading axes (F order) goes to
    device_segmented_reduce (one kernel)."""
    c, f = contiguous(a)
    if not (c or f) or a.size == 0:
        return None
    if len(reduce_axes) == a.ndim:
        return 1 if a.size <= CUB_TILE else 2
    if not _contiguous_axes(reduce_axes):
        return None
    if c:
        return 1 if reduce_axes[-1] == a.ndim - 1 else None
    return 1 if reduce_axes[0] == 0 else None


def reduction_kernel(a, reduce_axes, n_inputs=1):
    """_AbstractReductionKernel._call with try_use_cub (ndarray.sum when the routine accelerator
    passed, the other reductions, and a fused function with a reduction): CUB's block reduction
    when there is one input, the array is F- (else C-) contiguous with the reduced axes first (or
    last) and they hold at least CUB_BLOCK_THRESHOLD items: two passes over the whole array
    (_cub_two_pass_launch), one over some axes; otherwise CuPy's reduction kernel, one launch.
    Both write into `out` directly."""
    c, f = contiguous(a)
    out_axes = tuple(i for i in range(a.ndim) if i not in reduce_axes)
    size = int(np.prod([a.shape[i] for i in reduce_axes], dtype=np.int64))
    order = reduce_axes + out_axes if f else out_axes + reduce_axes if c else None  # F first
    if (n_inputs == 1 and order == tuple(range(a.ndim)) and _contiguous_axes(reduce_axes)
            and size >= CUB_BLOCK_THRESHOLD):
        return 2 if not out_axes else 1
    return 1


def reduction_sum(a, axis=None, out=None):
    """ndarray.sum / cupy.sum: `_ndarray_sum` tries cub.cub_reduction first; CUB's kernels write
    a fresh array, copied into `out` (`elementwise_copy(y, out)` in device_reduce and
    device_segmented_reduce). Otherwise reduction_kernel, into `out` directly."""
    axes = _axes(axis, a.ndim)
    cub = _routine_cub(a, axes)
    if cub is not None:
        return cub + (1 if out is not None else 0)
    return reduction_kernel(a, axes)


def reduction_other(a, axis=None, out=None):
    """max, min, prod, mean, ...: reduction_kernel (their routine accelerators are not modelled:
    the engine's step uses only sums)."""
    return reduction_kernel(a, _axes(axis, a.ndim))


# --------------------------------------------------------------------------------------------
# Copies, gathers and scatters


def concatenate(arrays):
    """`_concatenate` (cupy/_core/_routines_manipulation.pyx): up to 8 arrays, one elementwise
    copy into the output per array; more than 8 small ones of one dtype, one kernel through a
    pointer array uploaded from the host."""
    arrays = list(arrays)
    if len(arrays) > 8 and len({a.dtype for a in arrays}) == 1 and \
            sum(a.nbytes for a in arrays) < 2 * 1024 * 1024 * len(arrays):
        return 1
    return len(arrays)


def take(a, indices):
    """`_take` (_routines_indexing.pyx): one `cupy_take` kernel, reading `a` through its strides
    (reduced_view: no copy)."""
    return 1


def add_at(a, indices, values):
    """ufunc.at -> `_scatter_op_single(..., 'add')` (_routines_indexing.pyx): one
    `_scatter_add_kernel` (atomicAdd: the order in which repeated indices add up varies from
    run to run), after a cast of the values when their dtype is not a's."""
    return 1 + (1 if np.asarray(values).dtype != a.dtype else 0)
