"""The engine's contract (DESIGN.md): layer API, shapes, dtypes, initialisation, losses, Adam,
model parameter layout. Gradients themselves are in test_gradcheck.py."""

import math

import numpy as np
import pytest

from minivae.backend import BackendError, array_module, get_backend, to_host
from minivae.conv import col2im, im2col
from minivae.layers import Conv2d, ConvTranspose2d, Dense, Sequential, Tanh
from minivae.losses import bce_with_logits, kl_log_sigma, kl_log_var, l2_penalty
from minivae.models import ConvVAE, MLPVAE
from minivae.optim import Adam
from minivae.tiers import TIERS, make_adam


def test_dense_layout_and_init():
    layer = Dense(30, 20, rng=0)
    W, b = layer.params["W"], layer.params["b"]
    assert W.shape == (30, 20) and b.shape == (20,)
    assert W.dtype == np.float32 and b.dtype == np.float32
    limit = math.sqrt(6 / 50)
    assert np.abs(W).max() <= limit and np.abs(W).max() > 0.9 * limit   # Glorot uniform
    assert not b.any()
    x = np.ones((4, 30), np.float32)
    np.testing.assert_allclose(layer.forward(x), x @ W, rtol=1e-6)


def test_conv_layouts_and_output_sizes():
    conv = Conv2d(3, 8, 4, stride=2, padding=1, rng=0)
    assert conv.params["W"].shape == (8, 3, 4, 4) and conv.params["b"].shape == (8,)
    assert conv.forward(np.zeros((2, 3, 9, 7), np.float32)).shape == (2, 8, 4, 3)
    tconv = ConvTranspose2d(8, 3, 4, stride=2, padding=1, rng=0)
    assert tconv.params["W"].shape == (8, 3, 4, 4)
    assert tconv.forward(np.zeros((2, 8, 4, 3), np.float32)).shape == (2, 3, 8, 6)
    limit = math.sqrt(6 / (3 * 16 + 8 * 16))
    assert np.abs(conv.params["W"]).max() <= limit


def test_conv2d_matches_a_direct_loop():
    rng = np.random.default_rng(0)
    conv = Conv2d(2, 3, (3, 2), stride=2, padding=1, dtype=np.float64, rng=rng)
    x = rng.standard_normal((2, 2, 5, 6))
    conv.params["b"] = rng.standard_normal(3)
    y = conv.forward(x)
    xpad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    W, b = conv.params["W"], conv.params["b"]
    expect = np.zeros(y.shape)
    for oh in range(y.shape[2]):
        for ow in range(y.shape[3]):
            patch = xpad[:, :, 2 * oh:2 * oh + 3, 2 * ow:2 * ow + 2]
            expect[:, :, oh, ow] = np.einsum("nchw,fchw->nf", patch, W) + b
    np.testing.assert_allclose(y, expect, rtol=1e-12)


def test_col2im_is_the_adjoint_of_im2col():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 7, 6))
    cols = im2col(x, 3, 2, 2, 1)
    c = rng.standard_normal(cols.shape)
    assert np.isclose((cols * c).sum(), (x * col2im(c, x.shape, 3, 2, 2, 1)).sum(), rtol=1e-12)


@pytest.mark.parametrize("L", [t.layers for t in TIERS.values()], ids=list(TIERS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layers_compute_in_the_dtype_they_are_given(dtype, L):
    net = L.Sequential(L.Conv2d(1, 2, 3, 1, 1), L.ReLU(), L.ConvTranspose2d(2, 2, 2, 2), L.Tanh(),
                       L.Flatten(), L.Dense(2 * 8 * 8, 5), L.Sigmoid(), L.Reshape(5, 1))
    for k in net.params:
        net.params[k] = net.params[k].astype(dtype)
    y = net.forward(np.ones((2, 1, 4, 4), dtype))
    assert y.shape == (2, 5, 1) and y.dtype == dtype
    dx = net.backward(np.ones_like(y))
    assert dx.dtype == dtype and dx.shape == (2, 1, 4, 4)
    assert all(net.grads[k].dtype == dtype for k in net.params)


def test_params_view_replaces_arrays_and_rejects_wrong_shapes():
    net = Sequential(Dense(3, 4), Tanh(), Dense(4, 2))
    assert list(net.params) == ["0.W", "0.b", "2.W", "2.b"]
    new = np.full((3, 4), 0.5)
    net.params["0.W"] = new
    assert net[0].params["W"] is new
    with pytest.raises(ValueError, match="shape"):
        net.params["0.W"] = np.zeros((4, 3))


def test_grads_are_overwritten_not_accumulated():
    layer = Dense(3, 2, rng=0)
    x, dy = np.ones((2, 3), np.float32), np.ones((2, 2), np.float32)
    layer.forward(x)
    layer.backward(dy)
    first = layer.grads["W"].copy()
    layer.forward(x)
    layer.backward(dy)
    np.testing.assert_array_equal(layer.grads["W"], first)


def test_bce_with_logits_is_stable_and_correct():
    logits = np.array([-1e4, -30.0, -1.0, 0.0, 2.0, 40.0, 1e4])
    x = np.array([0.0, 0.3, 1.0, 0.5, 0.0, 1.0, 0.2])
    loss, grad = bce_with_logits(logits, x)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
    assert loss[0] == 0.0 and np.isclose(loss[-1], 0.8e4)       # -l x + max(l, 0)
    mid = slice(1, 5)         # where the naive formula is still accurate
    s = 1 / (1 + np.exp(-logits[mid]))
    naive = -(x[mid] * np.log(s) + (1 - x[mid]) * np.log(1 - s))
    np.testing.assert_allclose(loss[mid], naive, rtol=1e-9)
    np.testing.assert_allclose(grad[mid], s - x[mid], rtol=1e-12)
    l32, g32 = bce_with_logits(logits.astype(np.float32), x.astype(np.float32))
    assert l32.dtype == np.float32 and np.all(np.isfinite(l32)) and np.all(np.isfinite(g32))


def test_kl_parametrisations_agree_and_vanish_at_the_prior():
    rng = np.random.default_rng(2)
    mu, log_sigma = rng.standard_normal(5), rng.standard_normal(5)
    kl_a, dmu_a, ds = kl_log_sigma(mu, log_sigma)
    kl_b, dmu_b, dv = kl_log_var(mu, 2 * log_sigma)
    np.testing.assert_allclose(kl_a, kl_b)
    np.testing.assert_allclose(ds, 2 * dv)           # chain rule through v = 2 s
    assert np.all(kl_log_var(np.zeros(3), np.zeros(3))[0] == 0)


def test_l2_penalty():
    value, grads = l2_penalty({"a": np.array([1.0, 2.0]), "b": np.array([[3.0]])}, 0.5)
    assert value == pytest.approx(7.0)
    np.testing.assert_allclose(grads["a"], [1.0, 2.0])


def small_mlp(impl, dtype=np.float64):
    return TIERS[impl].model_class(MLPVAE)(input_dim=6, hidden_dim=5, latent_dim=2, seed=0,
                                            dtype=dtype, layer_set=TIERS[impl].layers)


@pytest.mark.parametrize("impl", list(TIERS))
def test_adam_matches_the_reference_formula(impl):
    model = small_mlp(impl)
    x = np.random.default_rng(0).random((4, 6))
    opt = make_adam(model, lr=0.01)
    p0 = {k: model.params[k].copy() for k in model.params}
    m = {k: np.zeros_like(v) for k, v in p0.items()}
    v = {k: np.zeros_like(a) for k, a in p0.items()}
    for t in range(1, 4):
        model.loss_and_grads(x, noise=np.ones((4, 2)))
        g = {k: model.grads[k].copy() for k in model.params}
        opt.step()
        for k in p0:
            m[k] = 0.9 * m[k] + 0.1 * g[k]
            v[k] = 0.999 * v[k] + 0.001 * g[k] ** 2
            step = (m[k] / (1 - 0.9 ** t)) / (np.sqrt(v[k] / (1 - 0.999 ** t)) + 1e-8)
            p0[k] = p0[k] - 0.01 * step
            np.testing.assert_allclose(model.params[k], p0[k], rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError):
        make_adam(model, lr=0)


@pytest.mark.parametrize("impl", list(TIERS))
def test_adam_restores_float32_training_state_exactly(impl):
    """A fresh optimizer loaded from state_dict continues on the same path, bit for bit, in
    training's dtype (the fast Adam converts its sums to the means and back in float64)."""
    model = small_mlp(impl, np.float32)
    x = np.random.default_rng(0).random((4, 6)).astype(np.float32)
    noise = np.ones((4, 2), np.float32)
    opt = make_adam(model, lr=0.01)
    for _ in range(3):
        model.loss_and_grads(x, noise=noise)
        opt.step()
    state = {k: (a.copy() if hasattr(a, "copy") else a) for k, a in opt.state_dict().items()}
    snapshot = {k: model.params[k].copy() for k in model.params}
    model.loss_and_grads(x, noise=noise)
    opt.step()
    after = {k: model.params[k].copy() for k in model.params}
    for k in snapshot:
        model.params[k][...] = snapshot[k]
    opt2 = make_adam(model, lr=0.5)
    opt2.load_state_dict(state)
    model.loss_and_grads(x, noise=noise)
    opt2.step()
    for k in after:
        np.testing.assert_array_equal(model.params[k], after[k])


def test_both_adams_save_one_state_and_load_each_other():
    """Whatever the tier, the state is optim.Adam's: t, the hyper-parameters, the means m.<name>
    and v.<name> (the fast Adam converts its running sums); the gpu Adam runs the plain one's
    formulas in one kernel, so its means are the plain ones bit for bit."""
    x = np.random.default_rng(0).random((4, 6))
    opts, first = {}, {}
    for impl in TIERS:
        model = small_mlp(impl)
        opts[impl] = make_adam(model, lr=0.01)
        for step in range(2):
            model.loss_and_grads(x, noise=np.ones((4, 2)))
            opts[impl].step()
            if step == 0:          # the same gradients: the same operations give the same m, v
                first[impl] = {k: v.copy() for k, v in opts[impl].state_dict().items()
                               if k[:2] in ("m.", "v.")}
    plain, fast = opts["plain"], opts["fast"]
    assert type(plain) is Adam and type(fast) is not Adam
    ps, fs = plain.state_dict(), fast.state_dict()
    assert ps.keys() == fs.keys() and "m.mu.W" in ps and "M.mu.W" not in fs
    for k in plain.m:
        np.testing.assert_allclose(fs[f"m.{k}"], ps[f"m.{k}"], rtol=1e-12)
        np.testing.assert_allclose(fs[f"v.{k}"], ps[f"v.{k}"], rtol=1e-12)
    for k in first["plain"]:
        assert first["plain"][k].tobytes() == first["gpu"][k].tobytes(), k
    into_plain = make_adam(plain.model, lr=0.5)
    into_plain.load_state_dict(fs)
    into_fast = make_adam(fast.model, lr=0.5)
    into_fast.load_state_dict(ps)
    for k in plain.m:
        np.testing.assert_allclose(into_plain.m[k], plain.m[k], rtol=1e-12)
        np.testing.assert_allclose(into_fast.V[k], fast.V[k], rtol=1e-12)
    with pytest.raises(KeyError):
        into_plain.load_state_dict({k: v for k, v in fs.items() if k != "m.mu.W"})


def test_mlp_vae_follows_seed_000():
    model = MLPVAE()
    assert list(model.params) == ["encoder.0.W", "encoder.0.b", "mu.W", "mu.b", "log_sigma.W",
                                  "log_sigma.b", "decoder.0.W", "decoder.0.b", "decoder.2.W",
                                  "decoder.2.b"]
    shapes = [tuple(v.shape) for v in model.params.values()]
    assert shapes == [(784, 500), (500,), (500, 2), (2,), (500, 2), (2,), (2, 500), (500,),
                      (500, 784), (784,)]
    assert model.regularized == ["decoder.0.W", "decoder.0.b", "decoder.2.W", "decoder.2.b"]
    x = np.random.default_rng(0).random((5, 784)).astype(np.float32)
    mu, log_var = model.encode(x)
    h = np.tanh(x @ model.params["encoder.0.W"])
    np.testing.assert_allclose(log_var, 2 * (h @ model.params["log_sigma.W"]), rtol=1e-5, atol=1e-6)
    noise = np.random.default_rng(1).standard_normal((5, 2)).astype(np.float32)
    t = model.loss_and_grads(x, noise=noise, weight_decay=0.01)
    # recompute the seed's formula directly
    log_sigma = log_var / 2
    z = mu + noise * np.exp(log_sigma)
    logits = model.decode(z)
    recon = (np.maximum(logits, 0) - logits * x + np.log1p(np.exp(-np.abs(logits)))).sum() / 5
    kl = 0.5 * (np.exp(2 * log_sigma) + mu ** 2 - 1 - 2 * log_sigma).sum() / 5
    reg = 0.01 * sum((model.params[k].astype(np.float64) ** 2).sum() for k in model.regularized)
    assert t.recon == pytest.approx(recon, rel=1e-5)
    assert t.kl == pytest.approx(kl, rel=1e-4)
    assert t.reg == pytest.approx(reg, rel=1e-5)
    assert t.loss == pytest.approx(t.recon + t.kl + t.reg)
    assert model.decode(z).shape == (5, 784)


def test_conv_vae_follows_seed_001():
    model = ConvVAE()
    assert len(model.params) == 26 and list(model.params)[:2] == ["encoder.0.W", "encoder.0.b"]
    assert list(model.params)[10:14] == ["mu.W", "mu.b", "log_var.W", "log_var.b"]
    assert model.regularized == list(model.params)
    assert sum(v.size for v in model.params.values()) == (
        (16 * 32 + 32) + 2 * (16 * 32 * 32 + 32) + (512 * 256 + 256) + (256 * 256 + 256)
        + 2 * (256 * 10 + 10) + (10 * 256 + 256) + (256 * 256 + 256) + (256 * 512 + 512)
        + 2 * (32 * 32 * 16 + 32) + (32 * 16 + 1))
    x = np.random.default_rng(0).random((3, 1, 32, 32)).astype(np.float32)
    mu, log_var = model.encode(x)
    assert mu.shape == log_var.shape == (3, 10)
    noise = np.zeros((3, 10), np.float32)
    t = model.loss_and_grads(x, noise=noise, beta=2.0, weight_decay=0.0)
    assert t.reg == 0.0
    assert t.loss == pytest.approx(t.recon + 2.0 * t.kl)
    np.testing.assert_allclose(model.decode(mu), model.decode(mu + noise))
    assert model.decode(mu).shape == (3, 1, 32, 32)
    assert set(model.grads) == set(model.params)


def test_seeded_models_are_reproducible_and_noise_comes_from_the_model_rng():
    a, b = ConvVAE(seed=3), ConvVAE(seed=3)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert not np.array_equal(ConvVAE(seed=4).params["encoder.0.W"], a.params["encoder.0.W"])
    x = np.random.default_rng(0).random((2, 1, 32, 32)).astype(np.float32)
    assert a.loss_and_grads(x).loss == b.loss_and_grads(x).loss


def test_training_steps_reduce_the_loss():
    model = MLPVAE(input_dim=64, hidden_dim=32, latent_dim=2, seed=0)
    x = (np.random.default_rng(0).random((32, 64)) > 0.5).astype(np.float32)
    opt = Adam(model, lr=1e-2)
    first = model.loss_and_grads(x, noise=np.zeros((32, 2), np.float32)).loss
    for _ in range(50):
        model.loss_and_grads(x)
        opt.step()
    assert model.loss(x, noise=np.zeros((32, 2), np.float32)).loss < first - 5


def test_backend_selection():
    assert get_backend("numpy") is np
    assert get_backend("auto") in (np,) or get_backend("auto").__name__ == "cupy"
    assert array_module(np.zeros(2)) is np
    assert isinstance(to_host(np.zeros(2)), np.ndarray)
    with pytest.raises(BackendError, match="unknown backend"):
        get_backend("tpu")


def test_explicit_cupy_without_a_gpu_is_a_clear_error():
    from minivae.backend import cupy_status

    if cupy_status()[0] is not None:
        pytest.skip("a GPU is usable here")
    with pytest.raises(BackendError, match="cupy.*not usable"):
        get_backend("cupy")
    with pytest.raises(BackendError):
        MLPVAE(backend="cupy")
