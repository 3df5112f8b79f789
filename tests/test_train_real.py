"""Both seed configurations on a slice of the real FashionMNIST, and seed 000 on real MNIST
(skipped where ../shared/data is absent)."""

import csv
import math

import pytest

from minivae import cli
from minivae.checkpoint import Checkpoint
from minivae.evaluate import evaluate_run

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("model,extra", [("conv", []), ("mlp", ["--hidden-dim", "64"])])
def test_seed_config_on_real_fashion_mnist(tmp_path, real_data_mirror, model, extra, capsys):
    out = tmp_path / model
    common = ["--data-dir", str(tmp_path / "cache"), "--mirror", str(real_data_mirror)]
    argv = ["train", "--model", model, "--dataset", "fashion-mnist", "--epochs", "2", "--limit",
            "256", "--out", str(out), "--backend", "numpy", "--no-progress", *common, *extra]
    assert cli.main(argv) == 0, capsys.readouterr().err
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    assert all(math.isfinite(float(v)) for r in rows for v in r.values())
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])
    assert float(rows[1]["test_neg_elbo"]) < float(rows[0]["test_neg_elbo"])
    cfg = Checkpoint(out / "checkpoints" / "model-2.npz").config
    if model == "conv":   # seed 001's settings, untouched by the flags above
        assert (cfg["lr"], cfg["batch_size"], cfg["latent_dim"], cfg["hidden_dim"]) == \
            (1e-4, 64, 10, 256)
    r = evaluate_run(out, iw_samples=10, backend="numpy", limit=64)
    assert r["neg_log_px"] <= r["neg_elbo"]
    assert cli.main(["plot", str(out), "--backend", "numpy", "--limit", "300"]) == 0
    for name in ("clustering.png", "manifold.png", "test-vs-reconstruction.png"):
        assert (out / name).stat().st_size > 0


def test_mlp_on_mnist_from_the_shared_mirror(tmp_path, real_data_mirror, capsys):
    """The mirror's MNIST training images are recompressed: accepted by their decompressed sha256
    (`minivae train --model mlp --mirror ../shared/data`)."""
    if not (real_data_mirror / "mnist" / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST not found under {real_data_mirror}")
    out = tmp_path / "mlp"
    argv = ["train", "--model", "mlp", "--epochs", "1", "--limit", "256", "--hidden-dim", "32",
            "--out", str(out), "--backend", "numpy", "--no-progress",
            "--data-dir", str(tmp_path / "cache"), "--mirror", str(real_data_mirror)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert (tmp_path / "cache" / "mnist" / "train-images-idx3-ubyte.gz").is_file()
    assert Checkpoint(out / "checkpoints" / "model-1.npz").config["dataset"] == "mnist"


def test_plain_and_fast_tiers_land_on_the_same_test_elbo(tmp_path, real_data_mirror, capsys):
    """One epoch of seed 001's conv model on 2,000 real FashionMNIST images, once per tier, same
    seed and data: the test -ELBOs agree to 1e-3 (float32; the tiers differ only in rounding)."""
    common = ["--data-dir", str(tmp_path / "cache"), "--mirror", str(real_data_mirror)]
    elbo = {}
    for impl in ("plain", "fast"):
        out = tmp_path / impl
        argv = ["train", "--model", "conv", "--epochs", "1", "--limit", "2000", "--out", str(out),
                "--backend", "numpy", "--impl", impl, "--no-progress", *common]
        assert cli.main(argv) == 0, capsys.readouterr().err
        with open(out / "metrics.csv", newline="") as f:
            (row,) = list(csv.DictReader(f))
        elbo[impl] = float(row["test_neg_elbo"])
    assert abs(elbo["plain"] - elbo["fast"]) <= 1e-3 * elbo["fast"], elbo
