"""The statistical checks (minivae.statcheck) pass on the engine and fail on a swapped std/var."""

import numpy as np
import pytest

from minivae import cli, statcheck
from minivae.models import MODELS, ConvVAE, MLPVAE

SMALL = dict(samples=1500, images=2, pool=32, seed=0, small=True)


@pytest.fixture(scope="module")
def results():
    return {r.name: r for r in statcheck.all_checks(**SMALL)}


# two KL formulas, then std, KL, IWAE<=ELBO and IWAE in K for each registered model
EXPECTED = 2 + 4 * len(MODELS)


def test_every_check_passes_on_the_engine(results):
    assert len(results) == EXPECTED
    failed = [r for r in results.values() if not r.ok]
    assert not failed, failed
    # The tolerances come from the sample count: Z standard errors of each estimate.
    assert results["conv std"].tolerance == pytest.approx(5 / np.sqrt(2 * 1499))


@pytest.mark.parametrize("model_class, label, wrong", [(ConvVAE, "conv", 1.0),
                                                       (MLPVAE, "mlp", 0.5)])
def test_a_swapped_std_and_variance_fails(monkeypatch, model_class, label, wrong):
    """sigma = exp(log sigma^2) (the variance) in ConvVAE, sigma = exp(log sigma / 2) (the square
    root of the std) in MLPVAE: training's sampling is wrong, gradient checks still pass (the
    backward follows the same constant), the std and KL checks fail."""
    monkeypatch.setattr(model_class, "sigma_exponent", wrong)
    results = {r.name: r for r in statcheck.all_checks(**SMALL)}
    assert not results[f"{label} std"].ok
    assert not results[f"{label} KL"].ok
    other = "mlp" if label == "conv" else "conv"
    assert results[f"{other} std"].ok and results[f"{other} KL"].ok


def test_a_wrong_kl_formula_fails(monkeypatch):
    """kl_log_var given log sigma (a KL of the wrong parametrisation) fails its row."""
    monkeypatch.setattr(statcheck, "kl_log_var", statcheck.kl_log_sigma)
    r = statcheck.check_kl_formula("log_var", 1500, np.random.default_rng(0))
    assert not r.ok


def test_a_broken_iwae_estimator_fails(monkeypatch):
    """log mean exp replaced by the minimum: the "IWAE" estimate then falls below the ELBO and
    keeps falling as K grows; both IWAE rows fail."""
    monkeypatch.setattr(statcheck, "log_mean_exp", lambda a, axis: a.min(axis=axis))
    model = MLPVAE(hidden_dim=16, dtype=np.float64)
    results = statcheck.check_iwae(model, "MLPVAE", 16, 4, np.random.default_rng(0))
    assert not any(r.ok for r in results)


def test_training_samples_restores_the_model():
    model = MLPVAE(hidden_dim=16, dtype=np.float64)
    x = np.random.default_rng(0).random((3, 784))
    eps = np.zeros((3, 2))
    terms, mu, s, z = statcheck.training_samples(model, x, eps)
    assert np.array_equal(z, mu)                 # eps = 0: z is the mean
    assert "forward" not in vars(model.decoder) and "forward" not in vars(model.mu)
    assert terms.loss == model.loss(x, noise=eps, beta=1.0, weight_decay=0.0).loss


def test_gradcheck_statistical_section(monkeypatch, capsys):
    """`minivae gradcheck --statistical` prints the table after the gradient checks and exits
    non-zero when a statistical check fails."""
    full = statcheck.all_checks
    monkeypatch.setattr(statcheck, "all_checks", lambda backend: full(backend, **SMALL))
    rc = cli.main(["gradcheck", "--filter", "l2_penalty", "--statistical"])
    out = capsys.readouterr().out
    assert rc == 0 and "statistical checks on numpy" in out
    assert f"{EXPECTED} passed, 0 failed" in out and "1 passed, 0 failed" in out
    monkeypatch.setattr(ConvVAE, "sigma_exponent", 1.0)
    rc = cli.main(["gradcheck", "--filter", "l2_penalty", "--statistical"])
    out = capsys.readouterr().out
    assert rc == 1 and "FAIL" in out
