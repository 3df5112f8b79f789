"""The GPU path without a GPU: the gpu tier and the whole program on `--backend cupy`, run on the
CuPy stand-in (tests/standin), which keeps CuPy's rules and counts kernel launches, device-to-host
reads and host-to-device uploads. (On NumPy the gpu tier is tested with the others:
test_tiers.py, test_gradcheck.py.)"""

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import minivae_on_standin as minivae

from minivae.models import MODELS
from minivae.tiers import TIERS, build_model, make_adam

# Per step (loss_and_grads + Adam.step) at the seeds' batch sizes, counted as CuPy launches
# (tests/standin/cupy/_launches.py): the gpu tier's targets.
TARGETS = {"mlp": 35, "conv": 100}


def step_counts(cp, name, impl, batch=None):
    """Launches, reads and uploads of one training step (after one untimed step)."""
    spec = MODELS[name]
    model = build_model(name, backend="cupy", impl=impl)
    opt = make_adam(model, lr=spec.defaults["lr"])
    rng = np.random.default_rng(0)
    x = cp.asarray(rng.random(spec.input_shape(batch or spec.defaults["batch_size"]))
                   .astype(np.float32))
    for _ in range(2):
        cp.standin.reset()
        model.loss_and_grads(x, beta=1.0, weight_decay=spec.defaults["weight_decay"])
        opt.step()
    return cp.standin.counts()


@pytest.mark.parametrize("name", list(MODELS))
def test_a_gpu_step_meets_its_launch_target_with_one_read(standin, name):
    if name not in TARGETS:
        pytest.skip(f"model {name!r} has no launch target (TARGETS holds the seeds')")
    gpu, plain = step_counts(standin, name, "gpu"), step_counts(standin, name, "plain")
    assert gpu["launches"] <= TARGETS[name], gpu
    assert gpu["reads"] == 1 and gpu["uploads"] == 1, gpu          # the noise; x was uploaded
    assert plain["launches"] > 5 * gpu["launches"] and plain["reads"] > 1


@pytest.mark.parametrize("name", list(MODELS))
def test_the_gpu_tier_computes_the_plain_tiers_numbers_on_the_device(standin, name):
    cp, spec = standin, MODELS[name]
    rng = np.random.default_rng(3)
    x = cp.asarray(rng.random(spec.input_shape(3)))
    noise = cp.asarray(rng.standard_normal((3, spec.defaults["latent_dim"])))
    models = [build_model(name, dtype=np.float64, backend="cupy", impl=impl)
              for impl in ("plain", "gpu")]
    terms = [m.loss_and_grads(x, noise=noise, beta=0.7, weight_decay=0.02) for m in models]
    assert terms[1] == pytest.approx(terms[0], rel=1e-12)
    for k in models[0].grads:
        np.testing.assert_allclose(models[1].grads[k].get(), models[0].grads[k].get(),
                                   rtol=1e-10, atol=1e-13)
    opts = [make_adam(m, lr=1e-3) for m in models]
    for opt in opts:
        opt.step()
    for k in models[0].params:
        np.testing.assert_allclose(models[1].params[k].get(), models[0].params[k].get(),
                                   rtol=1e-12, atol=1e-15)


def test_auto_takes_the_gpu_tier_after_its_self_check(standin, monkeypatch, capsys):
    from minivae import tiers

    monkeypatch.setattr(tiers, "_SELF_CHECKS", {})
    assert tiers.resolve_impl("auto", standin) == "gpu"
    assert capsys.readouterr().err == ""
    # a gpu kernel that computes the wrong thing: plain, with one line saying why
    from minivae.gpu import kernels
    from minivae.gpu import layers as gpu_layers

    monkeypatch.setattr(tiers, "_SELF_CHECKS", {})
    monkeypatch.setattr(gpu_layers.ReLU, "BIAS", staticmethod(kernels.bias_tanh))
    assert tiers.resolve_impl("auto", standin) == "plain"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gpu tier failed its self-check" in err and "conv" in err
    assert tiers.resolve_impl("auto", standin) == "plain" and capsys.readouterr().err == ""
    monkeypatch.setattr(tiers, "_SELF_CHECKS", {})
    monkeypatch.setattr(gpu_layers.ReLU, "BIAS", staticmethod(kernels.bias_relu))
    monkeypatch.setitem(kernels.HEADS, "log_var", lambda *a: 1 / 0)   # one that raises
    assert tiers.resolve_impl("auto", standin) == "plain"
    assert "ZeroDivisionError" in capsys.readouterr().err
    assert tiers.resolve_impl("auto", np) == "fast"


def test_the_self_check_catches_a_wrong_adam(standin, monkeypatch, capsys):
    """The Adam CuPy's fusion made of the first adam_step (1 - b1 and 1 - b2 in half
    precision: 0.10009766 and 0.00097656): every gradient right, every step 1.3% too large;
    auto falls back to plain."""
    from minivae import tiers
    from minivae.gpu import kernels

    body = kernels.adam_step.__wrapped__

    @kernels.fused
    def adam_step_in_half(p, g, m, v, b1, b2, one_minus_b1, one_minus_b2, bias1, bias2, lr,
                          eps):
        half = np.float16                         # 1 - b computed as CuPy's fusion typed it
        body(p, g, m, v, b1, b2, half(1) - half(b1), half(1) - half(b2), bias1, bias2, lr, eps)

    monkeypatch.setattr(tiers, "_SELF_CHECKS", {})
    monkeypatch.setattr(kernels, "adam_step", adam_step_in_half)
    assert tiers.resolve_impl("auto", standin) == "plain"
    err = capsys.readouterr().err
    assert "gpu tier failed its self-check" in err and "Adam's" in err, err


# --------------------------------------------------------------------------------------------
# The program on --backend cupy, in subprocesses that find the stand-in as `cupy`


def metrics(run):
    with open(Path(run) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", list(MODELS))
def test_the_program_on_cupy_lands_on_numpys_numbers(tmp_path, synthetic_data_dir, name):
    """Both seed models train a few hundred images for two epochs on --backend cupy (the gpu
    tier, as auto picks it) and land on the NumPy plain tier's numbers; then plot, evaluate and
    --resume run on the device too."""
    common = ["--model", name, "--limit", 256, "--epochs", 2, "--hidden-dim", 32,
              "--data-dir", synthetic_data_dir, "--no-download", "--no-progress"]
    minivae("train", *common, "--backend", "numpy", "--impl", "plain", "--out", tmp_path / "np")
    run = tmp_path / "cupy"
    p = minivae("train", *common, "--backend", "cupy", "--out", run)
    assert "run folder" in p.stdout
    for a, b in zip(metrics(tmp_path / "np"), metrics(run)):
        for key in ("train_loss", "train_recon", "train_kl", "test_neg_elbo"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-5), key
    data = ["--data-dir", synthetic_data_dir, "--no-download", "--backend", "cupy"]
    minivae("plot", run, *data)
    assert (run / "traversals.gif").is_file() and (run / "manifold.png").is_file()
    p = minivae("evaluate", run, *data, "--iw-samples", 4)
    assert "IWAE" in p.stdout and "active units" in p.stdout
    minivae("train", "--resume", "--out", run, "--epochs", 3, "--backend", "cupy",
            "--no-progress")
    assert [r["epoch"] for r in metrics(run)] == ["1", "2", "3"]


@pytest.mark.parametrize("impl", list(TIERS))
def test_gradcheck_on_cupy_passes_in_every_tier(impl):
    p = minivae("gradcheck", "--backend", "cupy", "--impl", impl)
    assert f"gradient check on cupy, {impl} tier" in p.stdout
    assert " 0 failed" in p.stdout.splitlines()[-1]


def test_the_gpu_tier_names_the_layers_it_runs_unfused(monkeypatch, capsys):
    """A layer with no gpu twin runs as its plain class: said once, by name."""
    from minivae import layers, tiers

    class LeakyReLU(layers.Activation):
        def forward(self, x):
            self.y = np.maximum(x, 0.1 * x)
            return self.y

        def backward(self, dy):
            return dy * np.where(self.y > 0, 1.0, 0.1)

    monkeypatch.setattr(layers, "LeakyReLU", LeakyReLU, raising=False)
    monkeypatch.setattr(tiers, "_SAID", set())
    seed = MODELS["conv"]

    class LeakyConv(seed.cls):
        def __init__(self, **kw):
            super().__init__(activation="LeakyReLU", **kw)
    monkeypatch.setitem(MODELS, "conv", seed._replace(cls=LeakyConv))
    assert tiers.unfused_layers(build_model("conv", hidden_dim=8, impl="plain")) == [
        "Conv2d", "ConvTranspose2d", "Dense", "Flatten", "LeakyReLU", "Reshape"]
    for _ in range(2):
        assert tiers.unfused_layers(build_model("conv", hidden_dim=8, impl="gpu")) == [
            "LeakyReLU"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the gpu tier runs LeakyReLU unfused" in err
    assert capsys.readouterr().err == ""
    build_model("mlp", hidden_dim=8, impl="gpu")
    assert capsys.readouterr().err == ""


def test_a_model_resolves_its_backend_once_not_per_parameter(standin, monkeypatch):
    from minivae import backend

    probes = []
    real = backend.cupy_status
    monkeypatch.setattr(backend, "cupy_status", lambda: probes.append(1) or real())
    model = build_model("conv", backend="cupy", impl="plain")
    assert len(model.params) == 26 and len(probes) <= 2       # the tier's choice, the model's
