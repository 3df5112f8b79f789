"""minivae.load: a trained run from Python, equal to what `plot` and `evaluate` compute, on
NumPy and on the CuPy stand-in."""

import numpy as np
import pytest

import minivae
from minivae import data
from minivae.config import make_config
from minivae.evaluate import decode_probs, posterior_means, reconstruct
from minivae.run import load_run
from minivae.train import train


@pytest.fixture(scope="module", params=["mlp", "conv"])
def trained(request, tmp_path_factory, synthetic_data_dir):
    """(run folder, test images) of a short run of each seed model."""
    out = tmp_path_factory.mktemp(request.param) / "run"
    cfg = make_config(model=request.param, limit=256, epochs=2, hidden_dim=16, out=str(out),
                      data_dir=str(synthetic_data_dir), download=False, backend="numpy",
                      sample_size=4)
    train(cfg, progress=False, log=lambda m: None, warn=lambda m: None)
    images, _ = data.load_for(cfg, "test", 40, progress=False)
    return out, images


def crop(probs, pad):
    square = np.asarray(probs).reshape(len(probs), 28 + 2 * pad, 28 + 2 * pad)
    return square[:, pad:pad + 28, pad:pad + 28]


def test_load_gives_what_plot_and_evaluate_compute(trained):
    out, images = trained
    run = minivae.load(out)
    model, cfg, ckpt = load_run(out, backend="numpy")
    assert run.epoch == ckpt.epoch == 2 and run.config == cfg.to_dict()
    assert f"epoch 2, {cfg.latent_dim}-D latent" in repr(run)
    mu, log_var = run.encode(images)
    want_mu, want_lv = posterior_means(model, images, cfg)
    np.testing.assert_array_equal(mu, want_mu.astype(mu.dtype))
    np.testing.assert_array_equal(log_var, want_lv.astype(log_var.dtype))
    pad = cfg.spec.pad
    probs = run.decode(mu)
    assert probs.shape == (len(images), 28, 28) and 0 <= probs.min() and probs.max() <= 1
    np.testing.assert_array_equal(probs, crop(decode_probs(model, mu), pad))
    eps = np.random.default_rng(3).standard_normal(mu.shape).astype(np.float32)
    x = data.to_float(images, np, np.float32, pad, cfg.spec.flatten)
    np.testing.assert_array_equal(run.reconstruct(images, noise=eps),
                                  crop(reconstruct(model, x, eps), pad))
    np.testing.assert_array_equal(run.reconstruct(images), crop(reconstruct(model, x), pad))
    drawn = run.sample(6, seed=1)
    assert drawn.shape == (6, 28, 28)
    np.testing.assert_array_equal(drawn, run.sample(6, seed=1))
    assert not np.array_equal(drawn, run.sample(6, seed=2))


def test_images_in_any_layout_and_range(trained):
    out, images = trained
    run = minivae.load(out, epoch=1)
    assert run.epoch == 1
    mu = run.encode(images)[0]
    for form in (images.reshape(len(images), -1), images[:, None], images / 255.0,
                 (images / 255.0).astype(np.float32).reshape(len(images), -1)):
        np.testing.assert_allclose(run.encode(form)[0], mu, rtol=1e-5, atol=1e-6)
        assert run.reconstruct(form).shape == form.shape
    for bad, what in ((images[:, :27], "shaped"), (images / 255.0 * 2, r"\[0, 1\]"),
                      (images.astype(str), "uint8")):
        with pytest.raises(ValueError, match=what):
            run.encode(bad)
    with pytest.raises(ValueError, match="latents shaped"):
        run.decode(np.zeros((2, run.model.latent_dim + 1)))


def test_load_on_the_cupy_stand_in_gives_numpys_numbers(trained, standin):
    out, images = trained
    on_numpy, on_device = minivae.load(out), minivae.load(out, backend="cupy")
    assert type(on_device.model.params[next(iter(on_device.model.params))]) is standin.ndarray
    for a, b in zip(on_numpy.encode(images), on_device.encode(images)):
        assert isinstance(b, np.ndarray)
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(on_device.sample(4), on_numpy.sample(4), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(on_device.reconstruct(images), on_numpy.reconstruct(images),
                               rtol=1e-5, atol=1e-6)
