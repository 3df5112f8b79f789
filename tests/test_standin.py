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


def test_scatter_add_adds_repeated_indices(standin):
    import cupyx

    cp = standin
    a = cp.zeros(4)
    cp.standin.reset()
    cupyx.scatter_add(a, cp.asarray(np.array([0, 1, 1, 3])), cp.asarray(np.ones(4)))
    assert cp.standin.launches == 1
    np.testing.assert_array_equal(a.get(), [1, 2, 0, 1])


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
