"""The CuPy stand-in (tests/standin) keeps CuPy's rules: each rule fires, and the counters count."""

import io

import numpy as np
import pytest


def test_no_implicit_conversion_to_numpy(standin):
    cp = standin
    x = cp.asarray(np.arange(6.0).reshape(2, 3))
    for convert in (np.asarray, np.array, lambda a: np.savez(io.BytesIO(), a=a),
                    lambda a: np.concatenate([a, a])):
        with pytest.raises(TypeError, match="Implicit conversion"):
            convert(x)
    with pytest.raises(TypeError):
        memoryview(x)
    from PIL import Image
    with pytest.raises(TypeError):
        Image.fromarray(x)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with pytest.raises(TypeError):
        plt.imsave(io.BytesIO(), x)


def test_no_mixing_with_numpy_arrays(standin):
    cp = standin
    x, h = cp.ones(3), np.ones(3)
    for mix in (lambda: x + h, lambda: h + x, lambda: x * h, lambda: h @ cp.ones((3, 3)),
                lambda: cp.maximum(x, h), lambda: cp.matmul(h, x), lambda: x.__iadd__(h)):
        with pytest.raises(TypeError):
            mix()
    y = x * 2 + np.float32(3) - 1.5            # Python and NumPy scalars are fine
    assert isinstance(y, cp.ndarray)


def test_reductions_and_indexing_stay_on_the_device(standin):
    cp = standin
    x = cp.asarray(np.arange(6.0).reshape(2, 3))
    for value in (x.sum(), cp.sum(x), x.max(), x[1, 2], x[0][1], cp.vdot(x, x)):
        assert isinstance(value, cp.ndarray) and value.shape == ()


def test_transfers_are_explicit_and_counted(standin):
    cp = standin
    cp.standin.reset()
    x = cp.asarray(np.arange(4.0))
    assert cp.standin.uploads == 1 and cp.standin.reads == 0
    assert isinstance(x.get(), np.ndarray) and isinstance(cp.asnumpy(x), np.ndarray)
    float(x[1]), int(x[2]), bool(x[3]), x[0].item(), f"{x.sum():.2f}"
    assert cp.standin.reads == 7


def test_views_are_free_and_every_other_operation_is_a_launch(standin):
    cp = standin
    x = cp.zeros((4, 6))                                       # 1: a fill
    cp.standin.reset()
    x.reshape(6, 4), x.T, x[1:3], x[:, ::2], cp.broadcast_to(x[0], (5, 6))
    cp.lib.stride_tricks.as_strided(x, (2, 2), x.strides)
    assert cp.standin.launches == 0
    y = x + 1                                                  # 1
    y *= 2                                                     # 2
    y.sum(axis=0)                                              # 3
    y[0] = 5                                                   # 4
    y[cp.asarray(np.array([0, 2]))]                            # 5: a gather, not a view
    cp.empty((3, 3))                                           # memory only
    assert cp.standin.launches == 5


def test_a_fused_function_is_one_launch_and_checks_its_body(standin):
    cp = standin

    @cp.fuse()
    def softplus_and_grad(x, w):
        return w * cp.log1p(cp.exp(x)), w * (1 - 1 / (1 + cp.exp(x)))

    x = cp.asarray(np.linspace(-3, 3, 7))
    cp.standin.reset()
    value, grad = softplus_and_grad(x, 2.0)
    assert cp.standin.launches == 1
    np.testing.assert_allclose(value.get(), 2 * np.log1p(np.exp(np.linspace(-3, 3, 7))))

    @cp.fuse()
    def reads(x):
        return x * float(x[0])

    @cp.fuse()
    def reshapes(x):
        return x.reshape(-1, 1)

    for bad in (reads, reshapes):
        with pytest.raises(TypeError):
            bad(x)
    with pytest.raises(TypeError):
        softplus_and_grad(np.ones(3), 1.0)


def test_add_at_adds_repeated_indices_and_scatter_add_warns_as_cupy_14(standin):
    import cupyx

    cp = standin
    a = cp.zeros(4)
    cp.standin.reset()
    cp.add.at(a, cp.asarray(np.array([0, 1, 1, 3])), cp.asarray(np.ones(4)))
    assert cp.standin.launches == 1
    np.testing.assert_array_equal(a.get(), [1, 2, 0, 1])
    cp.add.at(a, cp.asarray(np.array([2])), cp.asarray(np.ones(1, np.float32)))  # a cast first
    assert cp.standin.launches == 3
    with pytest.warns(DeprecationWarning, match="cupy.add.at"):
        cupyx.scatter_add(a, cp.asarray(np.array([0])), cp.asarray(np.ones(1)))
    np.testing.assert_array_equal(a.get(), [2, 2, 1, 1])


def launches(cp, call):
    cp.standin.reset()
    call()
    return cp.standin.launches


def test_launches_of_products_follow_cupys_matmul_and_dot(standin):
    """_launches.matmul / dot: cupy/_core/_routines_linalg.pyx."""
    cp = standin
    f = np.float32
    A, B = cp.ones((6, 5), dtype=f), cp.ones((5, 4), dtype=f)
    batch = cp.ones((3, 5, 4), dtype=f)
    assert launches(cp, lambda: A @ B) == 1                        # one GEMM
    assert launches(cp, lambda: A.T.T @ B) == 1
    assert launches(cp, lambda: B.T @ A.T) == 1                   # F-contiguous: a flag, no copy
    assert launches(cp, lambda: A[:, ::2] @ B[::2]) == 3          # neither order: both copied
    out, out_t = cp.empty((6, 4), dtype=f), cp.empty((4, 6), dtype=f).T
    assert launches(cp, lambda: cp.matmul(A, B, out=out)) == 1
    assert launches(cp, lambda: cp.matmul(A, B, out=out_t)) == 2   # through a fresh array
    assert launches(cp, lambda: A @ batch) == 3 * 1 + 1            # broadcast: 3 _mat_ptrs + GEMM
    right, left = cp.ones((3, 5, 2), dtype=f), cp.ones((3, 6, 5), dtype=f)
    assert launches(cp, lambda: batch.transpose(0, 2, 1) @ right) == 2   # a copy, then batched
    assert launches(cp, lambda: left @ batch) == 1                 # strided batched
    v = cp.ones(300, dtype=f)
    assert launches(cp, lambda: cp.dot(v, v)) == 1 + 1             # multiply, CUB one tile
    assert launches(cp, lambda: cp.dot(v, v, out=cp.empty((), dtype=f))) == 3    # and a copy
    big = cp.ones(5000, dtype=f)
    assert launches(cp, lambda: cp.dot(big, big)) == 1 + 2         # CUB: two passes
    w = cp.ones(5, dtype=f)
    assert launches(cp, lambda: A @ w) == 1                        # a GEMV is a GEMM


def test_launches_of_sums_follow_cupys_cub_and_reduction_paths(standin):
    """_launches.reduction_sum / reduction_kernel: _routines_math.pyx -> cub.pyx (routine CUB),
    else _reduction.pyx -> _cub_reduction.pyx (CUB block reduction) or CuPy's own kernel."""
    cp = standin
    x = cp.ones((64, 100), dtype=np.float32)
    out1 = cp.empty(1, dtype=np.float32)
    assert launches(cp, lambda: x.sum()) == 2                      # DeviceReduce, two passes
    assert launches(cp, lambda: x[:2, :10].sum()) == 1             # not contiguous: own kernel
    assert launches(cp, lambda: x.sum(out=cp.empty((), dtype=np.float32))) == 3   # + a copy
    assert launches(cp, lambda: x.sum(axis=1)) == 1                # segmented: trailing axis
    assert launches(cp, lambda: x.sum(axis=1, out=cp.empty(64, dtype=np.float32))) == 2
    assert launches(cp, lambda: x.sum(axis=0, out=cp.empty(100, dtype=np.float32))) == 1
    assert launches(cp, lambda: x.reshape(-1, 1).sum(axis=0, out=out1)) == 1
    images = cp.ones((4, 3, 5, 5))
    assert launches(cp, lambda: images.sum(axis=(0, 2, 3))) == 1  # axes apart: own kernel
    assert launches(cp, lambda: cp.sum(x, axis=0)) == 1

    @cp.fuse()
    def sum_of_squares(p):
        return cp.sum(p * p)

    assert launches(cp, lambda: sum_of_squares(x.reshape(-1))) == 2   # CUB block, two passes
    assert launches(cp, lambda: sum_of_squares(x[:1, :50].reshape(-1))) == 1   # under 128


def test_launches_of_copies_gathers_and_scatters(standin):
    """_launches.concatenate and take, and setitem: one operation (`_scatter_op` in
    _routines_indexing.pyx: a fill, a device-to-device memcpy or an elementwise copy)."""
    cp = standin
    a = cp.ones(10)
    assert launches(cp, lambda: cp.concatenate([a, a, a])) == 3     # one copy per array
    assert launches(cp, lambda: cp.concatenate([a] * 9)) == 1       # one kernel, pointers
    assert launches(cp, lambda: cp.take(a, cp.asarray(np.array([[0, 1], [2, 3]])))) == 1
    idx = cp.asarray(np.array([1, 2]))
    assert launches(cp, lambda: a.take(idx)) == 1

    def fill():
        a[...] = 0

    assert launches(cp, fill) == 1
    assert launches(cp, lambda: a.reshape(2, 5).T.reshape(-1)) == 1      # not a view: a copy
    assert launches(cp, lambda: a.reshape(2, 5).T.reshape(5, 2)) == 0    # a view


def test_a_fused_call_gives_each_output_an_array_of_its_own(standin):
    cp = standin

    @cp.fuse()
    def twice(x):
        y = x + 1
        return y, y, x

    x = cp.ones(3)
    a, b, c = twice(x)
    a += 1
    c += 5
    np.testing.assert_array_equal(b.get(), [2, 2, 2])
    np.testing.assert_array_equal(x.get(), [1, 1, 1])


def test_what_the_program_touches(standin):
    cp = standin
    assert cp.cuda.runtime.getDeviceCount() == 1
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    end.record()
    end.synchronize()
    assert cp.cuda.get_elapsed_time(start, end) >= 0
    cp.cuda.Device(0).synchronize()
    cp.get_default_memory_pool().free_all_blocks()
    from minivae.backend import array_module, cupy_status, get_backend, to_host
    assert cupy_status()[0] is cp and get_backend("cupy") is cp
    assert array_module(cp.ones(2)) is cp and isinstance(to_host(cp.ones(2)), np.ndarray)


# --------------------------------------------------------------------------------------------
# CUDA graphs: capture records, replay runs, under CUDA's rules (tests/standin/cupy/_device.py)


def capture(cp, stream, step, pool=None):
    """The graph of step() captured on stream (with `pool`'s allocator when given)."""
    allocator = cp.cuda.using_allocator(pool.malloc) if pool is not None else _nothing()
    with stream, allocator:
        stream.begin_capture()
        step()
        return stream.end_capture()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_capture_runs_nothing_and_a_replay_runs_it_as_one_launch(standin):
    cp = standin
    x, y, count = cp.ones(4), cp.zeros(4), cp.zeros(1, dtype=np.int64)

    def step():
        t = x * 2                   # a temporary made during the capture
        y[...] = y + t
        count[...] = count + 1
    step()                          # every kernel loaded (and the first step taken)
    stream = cp.cuda.Stream(non_blocking=True)
    graph = capture(cp, stream, step)
    np.testing.assert_array_equal(y.get(), [2, 2, 2, 2])        # the capture ran nothing
    cp.standin.reset()
    graph.launch(stream)
    graph.launch(stream)
    assert cp.standin.counts() == {"launches": 2, "reads": 0, "uploads": 0}
    np.testing.assert_array_equal(y.get(), [6, 6, 6, 6])
    assert int(count[0]) == 3


def test_what_a_capture_refuses_raises_and_invalidates_it(standin):
    cp = standin
    x = cp.ones(4)
    (x * 2).sum()
    refused = {"a read": lambda: float(x[0]), "an upload": lambda: cp.asarray(np.ones(2)),
               "a synchronize": lambda: cp.cuda.Device(0).synchronize(),
               "a kernel not loaded before": lambda: cp.tanh(x),
               "the cuBLAS handle": lambda: x @ x}
    for what, call in refused.items():
        stream = cp.cuda.Stream(non_blocking=True)
        with stream:
            stream.begin_capture()
            x * 2                                                  # allowed
            with pytest.raises((RuntimeError, cp.cuda.runtime.CUDARuntimeError)):
                call()
            with pytest.raises(cp.cuda.runtime.CUDARuntimeError, match="Invalidated"):
                stream.end_capture()
    with pytest.raises(cp.cuda.runtime.CUDARuntimeError):
        cp.cuda.Stream.null.begin_capture()


def test_a_replay_refuses_memory_freed_and_handed_out_again(standin):
    """A temporary of the captured step is freed after the capture; once the capture's stream
    allocates from the same pool again, a replay would write someone else's memory. With a
    pool of the graph's own it cannot happen."""
    cp = standin
    x, y = cp.ones(4), cp.zeros(4)

    def step():
        y[...] = y + x * 2
    step()
    stream = cp.cuda.Stream(non_blocking=True)
    graph = capture(cp, stream, step)
    graph.launch(stream)                                    # nothing allocated since: fine
    with stream:
        cp.empty(4)                                         # the stream's pool hands out again
    with pytest.raises(cp.cuda.runtime.CUDARuntimeError, match="freed"):
        graph.launch(stream)
    own = cp.cuda.MemoryPool()
    graph = capture(cp, stream, step, pool=own)
    with stream:
        cp.empty(4)
    cp.empty(4)
    graph.launch(stream)
    np.testing.assert_array_equal(y.get(), [6, 6, 6, 6])
