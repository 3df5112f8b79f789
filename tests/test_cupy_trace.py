"""Every kernel the gpu tier fuses, traced by real CuPy's fusion tracer with no GPU.

One training step of each registered model runs in the gpu tier on the stand-in, which records
every fused call (the function and its arguments as the kernel receives them); each distinct call
is then traced by real CuPy (tests/cupy_trace.py says how and what is checked: the trace itself,
no half precision, no float64 in a float32 run but the body's literals, nothing computed from
scalars alone, every written argument in its own dtype). This checks CuPy's tracer and code
generator, which run here: not the compilation of the generated source, not a device.
Real CuPy comes with the `gpu` extra (`pip install 'minivae[gpu]'`); without it these tests skip.
"""

import numpy as np
import pytest
from conftest import standin_modules
from cupy_trace import device_args, import_cupy, problems, signature, trace

from minivae.backend import array_module as cupy_module
from minivae.gpu import kernels
from minivae.gpu.replay import ReplayedStep
from minivae.models import MODELS
from minivae.tiers import build_model, make_adam


class Recorded:
    """An array argument as recorded on the stand-in: its shape and dtype."""

    def __init__(self, a):
        self.shape, self.dtype = tuple(a.shape), np.dtype(a.dtype)


def step_calls(name, dtype):
    """[(function, recorded arguments)] of one training step (loss_and_grads with the seed's
    penalty, then Adam) of model `name` in the gpu tier, at the seed's batch size, and of one
    step as a CUDA graph replays it (gpu/replay.py, run eagerly)."""
    spec = MODELS[name]
    batch = spec.defaults["batch_size"]
    with standin_modules() as cp:
        model = build_model(name, backend="cupy", impl="gpu", dtype=dtype)
        opt = make_adam(model, lr=spec.defaults["lr"])
        x = cp.asarray(np.random.default_rng(0).random(spec.input_shape(batch)).astype(dtype))
        replayed = ReplayedStep(model, opt, np.zeros((batch, 28, 28), np.uint8), spec, batch,
                                spec.defaults["weight_decay"], 1)
        replayed.load_epoch(np.arange(batch), np.zeros((batch, model.latent_dim)),
                            replayed.numbers_for([0.5], 1))
        cp.standin.fused_calls = calls = []
        model.loss_and_grads(x, beta=0.5, weight_decay=spec.defaults["weight_decay"])
        opt.step()
        replayed.body()
        cp.standin.fused_calls = None
        return [(fn, [Recorded(a) if isinstance(a, cp.ndarray) else a for a in args])
                for fn, args in calls]


@pytest.fixture(scope="module")
def cupy():
    module = import_cupy()
    if module is None:
        pytest.skip("real CuPy is not installed (pip install 'minivae[gpu]')")
    return module


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(MODELS))
def test_every_kernel_of_a_training_step_traces_clean_in_real_cupy(cupy, name, dtype):
    calls = step_calls(name, dtype)
    assert len(calls) >= 8, calls                  # the step runs its kernels through fuse
    traced = {}
    for fn, args in calls:
        key = signature(fn, args)
        if key not in traced:
            traced[key] = (fn.__name__, problems(trace(cupy, fn, device_args(cupy, args)), dtype))
    found = {name_: p for name_, p in traced.values() if p}
    assert found == {}, found
    names = {name_ for name_, _ in traced.values()}
    assert {"adam_step", "bce_with_logits_bias", "to_unit", "pixel_sources"} <= names


def adam_step_before(p, g, m, v, b1, b2, bias1, bias2, lr, eps):
    """kernels.adam_step as it was: 1 - b1 and 1 - b2 computed in the kernel."""
    xp = kernels.array_module(p)
    m *= b1
    m += (1 - b1) * g
    v *= b2
    v += (1 - b2) * g * g
    p -= lr * (m / bias1) / (xp.sqrt(v / bias2) + eps)


def test_the_trace_finds_the_half_precision_adam(cupy):
    arrays = [cupy_array for cupy_array in device_args(cupy, [Recorded(np.empty(8, np.float32))
                                                            for _ in range(4)])]
    before = trace(cupy, adam_step_before, arrays + [0.9, 0.999, 0.1, 0.001, 1e-3, 1e-8])
    found = problems(before, np.float32)
    assert "float16 v11;" in before.source
    assert any("float16" in p for p in found) and any("scalars alone" in p for p in found)
    assert any("float64" in p for p in found)              # the double parameters b1, ...
    f32 = np.float32
    now = trace(cupy, kernels.adam_step.__wrapped__,
                arrays + [f32(0.9), f32(0.999), f32(0.1), f32(0.001), f32(0.1), f32(0.001),
                          f32(1e-3), f32(1e-8)])
    assert problems(now, np.float32) == [] and "float16 v" not in now.source


def test_a_python_number_reaches_a_kernel_in_the_arrays_dtype(standin):
    seen = []
    standin.standin.fused_calls = seen
    x = standin.ones(3, dtype=np.float32)
    kernels.add_l2_grad(x, x, 0.02)
    kernels.bce_with_logits_bias(x, x, x, 64, standin.empty(3, dtype=np.float32))
    assert [type(a) for a in seen[0][1]][2] is np.float32
    assert [type(a) for a in seen[1][1]][3] is np.float32


def test_what_real_cupys_fusion_refuses_the_stand_in_refuses(cupy):
    """Two reductions in one body do not trace (CuPy would fall back to its new fusion); a
    keyword argument is refused by Fusion.__call__ before anything reaches a device."""
    def two_sums(p):
        return cupy_module(p).sum(p * p) + cupy_module(p).sum(p)

    def add(a, b):
        return a + b

    arg = device_args(cupy, [Recorded(np.empty(5, np.float32))])
    with pytest.raises(AssertionError):
        trace(cupy, two_sums, arg)
    with pytest.raises(TypeError, match="keyword"):
        cupy.fuse()(add)(arg[0], b=arg[0])
    def method_sum(p):
        return p.sum()

    with pytest.raises(AttributeError):                     # no ndarray methods on a tracer
        trace(cupy, method_sum, arg)
    with standin_modules() as cp:
        x = cp.ones(5, dtype=np.float32)
        with pytest.raises(TypeError, match="ndarray.sum"):
            cp.fuse()(method_sum)(x)
        with pytest.raises(TypeError, match="one reduction"):
            cp.fuse()(two_sums)(x)
        with pytest.raises(TypeError, match="keyword"):
            cp.fuse()(add)(x, b=x)
