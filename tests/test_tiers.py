"""The two tiers compute the same numbers: every fast piece against its plain twin, over every
geometry the gradient checks use (float64, equal to rounding); the plain convolution against
loops over every output pixel (tests/reference_conv.py); Adam's two forms over many steps and
across checkpoints; whole models in both tiers."""

import functools

import numpy as np
import pytest
from reference_conv import conv_backward_naive, conv_forward_naive

from minivae import conv, gradcheck, layers
from minivae.fast import conv as fast_conv
from minivae.fast import layers as fast_layers
from minivae.fast.conv import batch_first, batch_last
from minivae.gpu import conv as gpu_conv
from minivae.models import MODELS, ConvVAE
from minivae.tiers import TIERS, tier_of

CLOSE = dict(rtol=1e-11, atol=1e-13)


def geometries():
    """((kh, kw), stride, padding, (H, W), batch) of every convolution the gradient checks run."""
    for k, s, p, hw, n in gradcheck.conv_configs() + gradcheck.STACK_CONFIGS:
        yield ((k, k) if isinstance(k, int) else k), s, p, hw, n


GEOMETRIES = list(geometries())
IDS = [f"k={kh}x{kw},s={s},p={p},x={hw}" for (kh, kw), s, p, hw, _ in GEOMETRIES]


def out_hw(kernel, s, p, hw):
    return tuple(conv.conv_output_size(d, k, s, p) for d, k in zip(hw, kernel))


# --------------------------------------------------------------------------------------------
# The plain convolution against the naive loops


@pytest.mark.parametrize("kernel, s, p, hw, n", GEOMETRIES, ids=IDS)
def test_plain_conv_matches_the_naive_loops(kernel, s, p, hw, n):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 3) + hw)
    W, b = rng.standard_normal((4, 3) + kernel), rng.standard_normal(4)
    y = conv.conv2d(x, W, s, p) + b.reshape(-1, 1, 1)
    np.testing.assert_allclose(y, conv_forward_naive(x, W, b, s, p), **CLOSE)
    dy = rng.standard_normal(y.shape)
    dx, dW, db = conv_backward_naive(dy, x, W, s, p)
    np.testing.assert_allclose(conv.conv_transpose2d(dy, W, s, p, hw), dx, **CLOSE)
    np.testing.assert_allclose(conv.conv2d_weight_grad(x, dy, kernel, s, p), dW, **CLOSE)
    # and the layers, whose backward is those three lines
    layer = layers.Conv2d(3, 4, kernel, s, p, dtype=np.float64)
    layer.params.update(W=W, b=b)
    np.testing.assert_allclose(layer.forward(x), y, **CLOSE)
    np.testing.assert_allclose(layer.backward(dy), dx, **CLOSE)
    np.testing.assert_allclose(layer.grads["W"], dW, **CLOSE)
    np.testing.assert_allclose(layer.grads["b"], db, **CLOSE)


# --------------------------------------------------------------------------------------------
# fast/conv.py against conv.py


def test_batch_last_and_first_are_transposes():
    rng = np.random.default_rng(1)
    for shape in [(13, 3, 5, 4), (8, 7), (1, 2, 3), (20, 1, 4, 4)]:
        x = rng.standard_normal(shape)
        last = batch_last(x)
        np.testing.assert_array_equal(last, np.moveaxis(x, 0, -1))
        np.testing.assert_array_equal(batch_first(last), x)


@pytest.mark.parametrize("kernel, s, p, hw, n", GEOMETRIES, ids=IDS)
def test_fast_im2col_and_col2im_match_plain(kernel, s, p, hw, n):
    (kh, kw), (Ho, Wo) = kernel, out_hw(kernel, s, p, hw)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((n, 3) + hw)
    plain = conv.im2col(x, kh, kw, s, p).reshape(n, 3, kh, kw, Ho, Wo)
    fast = fast_conv.im2col_batch_last(batch_last(x), kh, kw, s, p).reshape(kh, kw, 3, Ho, Wo, n)
    np.testing.assert_array_equal(fast.transpose(5, 2, 0, 1, 3, 4), plain)
    cols = rng.standard_normal((n, 3, kh, kw, Ho, Wo))
    plain_x = conv.col2im(cols, x.shape, kh, kw, s, p)
    fast_x = fast_conv.col2im_batch_last(np.ascontiguousarray(cols.transpose(2, 3, 1, 4, 5, 0)),
                              (3,) + hw + (n,), kh, kw, s, p)
    np.testing.assert_allclose(batch_first(fast_x), plain_x, **CLOSE)


@pytest.mark.parametrize("kind", ["im2col", "phases"])
@pytest.mark.parametrize("kernel, s, p, hw, n", GEOMETRIES, ids=IDS)
def test_fast_conv_plans_match_plain(kernel, s, p, hw, n, kind):
    """Each plan's forward, adjoint and weight gradient are conv2d, conv_transpose2d and
    conv2d_weight_grad, read batch-last."""
    rng = np.random.default_rng(3)
    W = rng.standard_normal((4, 3) + kernel)
    x = rng.standard_normal((n, 3) + hw)
    dy = rng.standard_normal((n, 4) + out_hw(kernel, s, p, hw))
    plan = fast_conv.conv_plan(W, hw, s, p, kind)
    X, Y = plan.input_matrix(batch_last(x)), plan.output_matrix(batch_last(dy))
    np.testing.assert_allclose(batch_first(plan.forward(X)), conv.conv2d(x, W, s, p), **CLOSE)
    np.testing.assert_allclose(batch_first(plan.adjoint(Y)),
                               conv.conv_transpose2d(dy, W, s, p, hw), **CLOSE)
    np.testing.assert_allclose(plan.weight_grad(X, Y),
                               conv.conv2d_weight_grad(x, dy, kernel, s, p), **CLOSE)


def test_a_layers_kept_buffers_serve_every_input_size():
    """One Conv2d's plans keep their buffers from call to call, found by name and shape: a 16x16
    and a 15x15 input give phase arrays of the same shape (9x9 a side, padding 1) whose padding
    lies elsewhere, and a 15x15 input after a 16x16 one must not read the 16x16 one's numbers
    where its own padding should be."""
    rng = np.random.default_rng(4)
    layer = fast_layers.Conv2d(3, 4, 4, stride=2, padding=1, dtype=np.float64, rng=1)
    W, b = layer.params["W"], layer.params["b"]
    for hw in [(16, 16), (15, 15), (16, 16), (15, 15), (15, 16)]:
        x = rng.standard_normal((2, 3) + hw)
        dy = rng.standard_normal((2, 4) + out_hw((4, 4), 2, 1, hw))
        y = layer.forward(batch_last(x))
        assert isinstance(layer.plan, fast_conv.PhasePlan)
        np.testing.assert_allclose(batch_first(y), conv.conv2d(x, W, 2, 1)
                                   + b.reshape(1, -1, 1, 1), **CLOSE)
        dx = layer.backward(batch_last(dy))
        np.testing.assert_allclose(batch_first(dx), conv.conv_transpose2d(dy, W, 2, 1, hw),
                                   **CLOSE)
        np.testing.assert_allclose(layer.grads["W"], conv.conv2d_weight_grad(x, dy, (4, 4), 2, 1),
                                   **CLOSE)


def test_conv_plan_picks_the_smaller_matrices():
    # ConvVAE's 32 -> 32 channel 4x4 stride-2 layers take phases, its 1-channel ends im2col
    def plan(w_shape, hw, s):
        return type(fast_conv.conv_plan(np.zeros(w_shape, np.float32), hw, s, 1))

    assert plan((32, 32, 4, 4), (16, 16), 2) is fast_conv.PhasePlan
    assert plan((32, 32, 4, 4), (8, 8), 2) is fast_conv.PhasePlan
    assert plan((32, 1, 4, 4), (32, 32), 2) is fast_conv.Im2colPlan
    assert plan((32, 32, 3, 3), (16, 16), 1) is fast_conv.Im2colPlan


def test_fast_bias_grad_is_the_sum():
    dy = np.random.default_rng(4).standard_normal((5, 3, 4, 7))          # NCHW
    np.testing.assert_allclose(fast_layers.bias_grad(batch_last(dy), {}),
                               dy.sum(axis=(0, 2, 3)), **CLOSE)


# --------------------------------------------------------------------------------------------
# fast/layers.py against layers.py


def run_tiers(make, x, seed=0, impl="fast"):
    """forward, backward (random dy) and grads of make(L) in the plain tier and tier `impl`,
    through L.Sequential."""
    out = []
    for L in (layers, TIERS[impl].layers):
        layer = make(L)
        net = L.Sequential(layer)
        y = net.forward(x)
        dy = np.random.default_rng(seed).standard_normal(y.shape)
        dx = net.backward(dy)
        out.append((y, dx, {k: layer.grads[k] for k in layer.params}))
    return out


def assert_same(plain, fast):
    (y0, dx0, g0), (y1, dx1, g1) = plain, fast
    np.testing.assert_allclose(y1, y0, **CLOSE)
    np.testing.assert_allclose(dx1, dx0, **CLOSE)
    assert g1.keys() == g0.keys()
    for k in g0:
        np.testing.assert_allclose(g1[k], g0[k], **CLOSE)


@pytest.mark.parametrize("impl", ["fast", "gpu"])
@pytest.mark.parametrize("kernel, s, p, hw, n", GEOMETRIES, ids=IDS)
def test_conv_layers_of_every_tier_match_plain(kernel, s, p, hw, n, impl):
    x = np.random.default_rng(5).standard_normal((n, 3) + hw)
    kw = dict(dtype=np.float64, rng=6)
    run_both = functools.partial(run_tiers, impl=impl)
    assert_same(*run_both(lambda L: L.Conv2d(3, 4, kernel, s, p, **kw), x))
    xt = np.random.default_rng(7).standard_normal((n, 4) + out_hw(kernel, s, p, hw))
    assert_same(*run_both(lambda L: L.ConvTranspose2d(4, 3, kernel, s, p, **kw), xt))
    assert_same(*run_both(lambda L: L.Sequential(L.Conv2d(3, 4, kernel, s, p, **kw), L.ReLU(),
                                                 L.ConvTranspose2d(4, 3, kernel, s, p, **kw)), x))
    ho = out_hw(kernel, s, p, hw)
    assert_same(*run_both(lambda L: L.Sequential(L.Conv2d(3, 4, kernel, s, p, **kw), L.ReLU(),
                                                 L.Flatten(), L.Dense(4 * ho[0] * ho[1], 5, **kw)),
                          x))
    z = np.random.default_rng(8).standard_normal((n, 5))
    assert_same(*run_both(lambda L: L.Sequential(L.Dense(5, 4 * ho[0] * ho[1], **kw), L.ReLU(),
                                                 L.Reshape(4, *ho),
                                                 L.ConvTranspose2d(4, 3, kernel, s, p, **kw)), z))


@pytest.mark.parametrize("impl", ["fast", "gpu"])
def test_activations_flatten_reshape_of_every_tier_match_plain(impl):
    run_both = functools.partial(run_tiers, impl=impl)
    x = np.random.default_rng(9).standard_normal((3, 2, 5, 4))
    for make in (lambda L: L.Tanh(), lambda L: L.Sigmoid()):
        assert_same(*run_both(make, x))
    for make in (lambda L: L.ReLU(), lambda L: L.Flatten()):
        assert_same(*run_both(make, x))
    assert_same(*run_both(lambda L: L.Reshape(2, 5, 2, 2), x.reshape(3, -1)))
    # the fast ReLU keeps its zeros between calls: a second batch of another size still works
    relu = fast_layers.ReLU()
    relu.forward(x)
    np.testing.assert_array_equal(relu.forward(x[:2, :1]), np.maximum(x[:2, :1], 0))


def test_fast_sequential_converts_only_where_the_layout_changes():
    L, kw = TIERS["fast"].layers, dict(dtype=np.float64)
    enc = L.Sequential(L.Conv2d(1, 2, 3, **kw), L.ReLU(), L.Conv2d(2, 2, 3, **kw), L.Flatten(),
                       L.Dense(8, 3, **kw))
    assert [type(s).__name__ for s in enc.steps] == [
        "ToBatchLast", "Conv2d", "ReLU", "Conv2d", "Flatten", "Dense"]
    dec = L.Sequential(L.Dense(3, 8, **kw), L.Reshape(2, 2, 2), L.ConvTranspose2d(2, 1, 3, **kw))
    assert [type(s).__name__ for s in dec.steps] == [
        "Dense", "Reshape", "ConvTranspose2d", "ToBatchFirst"]
    assert list(enc.params) == ["0.W", "0.b", "2.W", "2.b", "4.W", "4.b"]


def test_fast_relu_works_in_place_only_between_layers_that_give_fresh_arrays():
    L, kw = TIERS["fast"].layers, dict(dtype=np.float64)
    model = ConvVAE(seed=0, layer_set=TIERS["fast"].layers)
    in_place = [[isinstance(s, L.ReLU) and s.in_place for s in seq.steps]
                for seq in (model.encoder, model.decoder)]
    # encoder: ToBatchLast, conv, relu, conv, relu, conv, relu, flatten, dense, relu, dense, relu
    assert [i for i, v in enumerate(in_place[0]) if v] == [2, 4, 9]
    # decoder: dense, relu, dense, relu, dense, relu, reshape, convT, relu, convT, relu, convT, ..
    assert [i for i, v in enumerate(in_place[1]) if v] == [1, 3, 8, 10]
    # what comes from outside a Sequential is never written: its input, and the dy handed to it
    net = L.Sequential(L.ReLU(), L.Dense(3, 3, **kw), L.ReLU(), L.Dense(3, 2, **kw), L.ReLU())
    assert [s.in_place for s in net.steps if isinstance(s, L.ReLU)] == [False, True, False]
    rng = np.random.default_rng(12)
    x, dy = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    x0, dy0 = x.copy(), dy.copy()
    net.forward(x)
    net.backward(dy)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(dy, dy0)
    relu = L.ReLU()                                     # on its own it copies, as plain does
    relu.forward(x)
    relu.backward(x0)
    np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("L", [t.layers for t in TIERS.values()], ids=list(TIERS))
def test_every_layer_with_parameters_honours_skip_input_grad(L):
    kw = dict(dtype=np.float64, rng=0)
    rng = np.random.default_rng(10)
    for layer, x in [(L.Dense(4, 3, **kw), rng.standard_normal((2, 4))),
                     (L.Conv2d(2, 3, 3, **kw), rng.standard_normal((2, 2, 5, 5))),
                     (L.ConvTranspose2d(2, 3, 3, **kw), rng.standard_normal((2, 2, 5, 5)))]:
        net = L.Sequential(layer)
        y = net.forward(x)
        net.skip_input_grad = True
        assert net.backward(np.ones_like(y)) is None
        assert set(layer.grads) == {"W", "b"}
        net.skip_input_grad = False
        assert net.backward(np.ones_like(y)).shape == x.shape


# --------------------------------------------------------------------------------------------
# Adam: the textbook form and the flat one


class Weights:
    """The least a model must offer Adam: params, grads."""

    def __init__(self, dtype=np.float64, seed=0):
        rng = np.random.default_rng(seed)
        self.params = {"a.W": rng.standard_normal((7, 5)), "a.b": rng.standard_normal(5),
                       "b.W": rng.standard_normal((3, 2, 4, 4))}
        self.params = {k: v.astype(dtype) for k, v in self.params.items()}
        self.grads = {}


def gradients(steps, seed=1):
    """A fixed sequence of gradients, some tiny (where Adam's eps matters) and some zero."""
    rng = np.random.default_rng(seed)
    shapes = {k: v.shape for k, v in Weights().params.items()}
    for t in range(steps):
        g = {k: rng.standard_normal(s) * 10.0 ** rng.integers(-9, 2) for k, s in shapes.items()}
        g["a.b"][t % 5] = 0.0
        yield g


def run_adam(impl, steps, opt=None, model=None, grads=None, dtype=np.float64):
    model = model or Weights(dtype)
    opt = opt or TIERS[impl].optimizers["adam"](model, lr=1e-2)
    for g in grads if grads is not None else gradients(steps):
        model.grads = {k: v.astype(dtype) for k, v in g.items()}
        opt.step()
    return model, opt


def test_plain_and_fast_adam_agree_over_many_steps():
    plain, popt = run_adam("plain", 300)
    fast, fopt = run_adam("fast", 300)
    assert type(popt).__module__ == "minivae.optim"
    assert type(fopt).__module__ == "minivae.fast.optim"
    for k in plain.params:
        np.testing.assert_allclose(fast.params[k], plain.params[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("saver, loader", [("plain", "plain"), ("fast", "fast"),
                                           ("plain", "fast"), ("fast", "plain")])
def test_adam_state_resumes_in_either_tier(saver, loader):
    """Stop after 20 steps, save, load into a fresh optimizer (of either tier) and continue, in
    float32 (training's dtype): the same tier continues bit for bit, the other to rounding."""
    grads = list(gradients(40))
    f32 = dict(dtype=np.float32)
    reference, _ = run_adam(saver, 40, grads=grads, **f32)
    model, opt = run_adam(saver, 20, grads=grads[:20], **f32)
    state = {k: (v.copy() if hasattr(v, "copy") else v) for k, v in opt.state_dict().items()}
    opt2 = TIERS[loader].optimizers["adam"](model, lr=0.5)
    opt2.load_state_dict(state)
    assert opt2.t == 20 and opt2.lr == 1e-2
    run_adam(loader, 20, opt=opt2, model=model, grads=grads[20:], **f32)
    for k in model.params:
        if saver == loader:
            np.testing.assert_array_equal(model.params[k], reference.params[k])
        else:
            np.testing.assert_allclose(model.params[k], reference.params[k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("impl", ["plain", "fast"])
def test_adam_state_keys_and_bad_states(impl):
    _, opt = run_adam(impl, 2)
    state = opt.state_dict()
    means, squares = "m", "v"                   # one state format, whatever the tier
    assert {"t", "lr", "b1", "b2", "eps", f"{means}.a.W", f"{squares}.b.W"} <= set(state)
    fresh = TIERS[impl].optimizers["adam"](Weights(), lr=1e-3)
    with pytest.raises(KeyError):
        fresh.load_state_dict({k: v for k, v in state.items() if k != f"{means}.a.b"})
    bad = dict(state, **{f"{means}.a.b": np.zeros(4)})
    with pytest.raises(ValueError, match="shape"):
        fresh.load_state_dict(bad)
    with pytest.raises(ValueError, match="learning rate"):
        TIERS[impl].optimizers["adam"](Weights(), lr=0)


# --------------------------------------------------------------------------------------------
# Whole models


OTHER_TIERS = [name for name in TIERS if name != "plain"]


@pytest.mark.parametrize("impl", OTHER_TIERS)
@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_computes_the_same_in_every_tier(name, impl):
    cls, shape = MODELS[name].cls, MODELS[name].input_shape(3)
    plain, fast = (TIERS[tier].model_class(cls)(seed=2, dtype=np.float64,
                                                 layer_set=TIERS[tier].layers)
                   for tier in ("plain", impl))
    assert tier_of(plain) == "plain" and tier_of(fast) == impl
    assert list(plain.params) == list(fast.params)
    for k in plain.params:                        # the same weights from the same seed
        np.testing.assert_array_equal(plain.params[k], fast.params[k])
    rng = np.random.default_rng(11)
    x, noise = rng.random(shape), rng.standard_normal((shape[0], plain.latent_dim))
    a = plain.loss_and_grads(x, noise=noise, beta=0.7, weight_decay=0.02, input_grad=True)
    b = fast.loss_and_grads(x, noise=noise, beta=0.7, weight_decay=0.02, input_grad=True)
    for ta, tb in zip(a, b):
        assert tb == pytest.approx(ta, rel=1e-12)
    for k in plain.grads:
        np.testing.assert_allclose(fast.grads[k], plain.grads[k], **CLOSE)
    np.testing.assert_allclose(fast.input_grad, plain.input_grad, **CLOSE)
    for got, want in zip(fast.encode(x), plain.encode(x)):
        np.testing.assert_allclose(got, want, **CLOSE)
    z = noise[:, :plain.latent_dim]
    np.testing.assert_allclose(fast.decode(z), plain.decode(z), **CLOSE)
    # and a few Adam steps later they are still together
    opts = TIERS["plain"].optimizers["adam"](plain, lr=1e-3), TIERS[impl].optimizers["adam"](fast, lr=1e-3)
    for _ in range(3):
        for model, opt in zip((plain, fast), opts):
            model.loss_and_grads(x, noise=noise)
            opt.step()
    for k in plain.params:
        np.testing.assert_allclose(fast.params[k], plain.params[k], rtol=1e-8, atol=1e-10)


# --------------------------------------------------------------------------------------------
# What a tier must do for layers it has no twin of, and for elementwise layers


def conversions_around_elementwise(seq):
    """Layout conversions a tier's Sequential put right before or after an elementwise layer."""
    steps = getattr(seq, "steps", seq.layers)
    found = []
    for i, step in enumerate(steps):
        if step.ELEMENTWISE:
            for j in (i - 1, i + 1):
                if 0 <= j < len(steps) and type(steps[j]).__name__.startswith("ToBatch"):
                    found.append((i, type(steps[j]).__name__))
    return found


@pytest.mark.parametrize("impl", list(TIERS))
@pytest.mark.parametrize("name", list(MODELS))
def test_no_layout_conversion_surrounds_an_elementwise_layer(name, impl):
    model = MODELS[name].cls(layer_set=TIERS[impl].layers)
    for seq in (model.encoder, model.decoder):
        assert conversions_around_elementwise(seq) == []


class LeakyReLU(layers.Activation):
    """A plain layer no tier has a twin of: y = max(x, a x)."""

    KINK = True

    def __init__(self, slope=0.1):
        super().__init__()
        self.slope = slope

    def forward(self, x):
        self.y = np.maximum(x, self.slope * x)
        return self.y

    def backward(self, dy):
        return dy * np.where(self.y > 0, 1.0, self.slope)


@pytest.mark.parametrize("impl", OTHER_TIERS)
def test_a_new_plain_layer_works_in_every_tier_unregistered(monkeypatch, impl):
    """A layer added to layers.py only: every tier builds a model with it (its own Sequential,
    no layout conversion around it) and computes what the plain tier computes."""
    monkeypatch.setattr(layers, "LeakyReLU", LeakyReLU, raising=False)
    models = [TIERS[tier].model_class(ConvVAE)(
        seed=4, hidden_dim=16, channels=4, activation="LeakyReLU", dtype=np.float64,
        layer_set=TIERS[tier].layers) for tier in ("plain", impl)]
    tier_layers = TIERS[impl].layers
    assert tier_layers.LeakyReLU is LeakyReLU
    steps = getattr(models[1].decoder, "steps", models[1].decoder.layers)
    assert sum(isinstance(s, LeakyReLU) for s in steps) == 5
    assert conversions_around_elementwise(models[1].decoder) == []
    rng = np.random.default_rng(13)
    x, noise = rng.random((2, 1, 32, 32)), rng.standard_normal((2, 10))
    terms = [m.loss_and_grads(x, noise=noise) for m in models]
    assert terms[1].loss == pytest.approx(terms[0].loss, rel=1e-12)
    for k in models[0].grads:
        np.testing.assert_allclose(models[1].grads[k], models[0].grads[k], **CLOSE)


def test_a_checkpoint_of_the_first_fast_tier_format_loads(tmp_path):
    """Files written when the fast Adam saved its running sums (M.<name>, V.<name>) load into
    either tier's Adam as the means m = (1 - b1) M, v = (1 - b2) V."""
    from minivae.checkpoint import Checkpoint, save_checkpoint

    model = ConvVAE(seed=0, hidden_dim=16, channels=4, layer_set=TIERS["fast"].layers)
    opt = TIERS["fast"].optimizers["adam"](model, lr=1e-3)
    x = np.random.default_rng(0).random((2, 1, 32, 32)).astype(np.float32)
    for _ in range(2):
        model.loss_and_grads(x)
        opt.step()
    path = save_checkpoint(tmp_path / "model-1.npz", 1, model, opt, np.random.default_rng(0),
                           {"model": "conv"}, [], 2)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    for k in list(arrays):                     # rewrite it as the first fast tier wrote it
        if k.startswith(("optim/m.", "optim/v.")):
            sums = "M." if k.startswith("optim/m.") else "V."
            scale = 0.1 if sums == "M." else 0.001
            arrays["optim/" + sums + k[8:]] = (arrays.pop(k) / scale).astype(np.float32)
    np.savez(path, **arrays)
    for tier in TIERS:
        fresh = TIERS[tier].model_class(ConvVAE)(seed=1, hidden_dim=16, channels=4,
                                                 layer_set=TIERS[tier].layers)
        opt2 = TIERS[tier].optimizers["adam"](fresh, lr=1e-3)
        Checkpoint(path).restore(fresh, opt2)
        state = opt2.state_dict()
        for k, v in opt.state_dict().items():
            if k.startswith(("m.", "v.")):
                np.testing.assert_allclose(state[k], v, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# gpu/conv.py against conv.py


@pytest.mark.parametrize("layout", ["first", "last"])
@pytest.mark.parametrize("kernel, s, p, hw, n", GEOMETRIES, ids=IDS)
def test_gpu_conv_matches_plain(kernel, s, p, hw, n, layout):
    """im2col as one gather from either layout, and col2im as a gather and a sum into either,
    compute conv.py's; the columns are one matrix (C*kh*kw, Ho*Wo*N)."""
    (kh, kw) = kernel
    rng = np.random.default_rng(14)
    x = rng.standard_normal((n, 3) + hw)
    plain = conv.im2col(x, kh, kw, s, p)                        # (N, C*kh*kw, Ho*Wo)
    as_matrix = plain.transpose(1, 2, 0).reshape(plain.shape[1], -1)
    stored, buf = gpu_conv.slot({}, "x", gpu_conv.laid_out(x.shape, layout), x.dtype, np)
    stored[...] = x if layout == "first" else x.transpose(1, 2, 3, 0)
    assert buf[-1] == 0
    np.testing.assert_array_equal(gpu_conv.im2col(buf, x.shape, kh, kw, s, p, layout), as_matrix)
    cols = rng.standard_normal(plain.shape)
    view, cbuf = gpu_conv.slot({}, "cols", as_matrix.shape, x.dtype, np)
    view[...] = cols.transpose(1, 2, 0).reshape(view.shape)
    want = conv.col2im(cols, x.shape, kh, kw, s, p)
    got = gpu_conv.col2im(cbuf, x.shape, kh, kw, s, p, layout)
    np.testing.assert_allclose(got if layout == "first" else got.transpose(3, 0, 1, 2), want,
                               **CLOSE)
