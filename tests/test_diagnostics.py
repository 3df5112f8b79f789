"""Issue 14's diagnostics on synthetic data: KL per dimension and active units in metrics.csv,
the KL warm-up (and its exact resume after a SIGKILL), --recon-from, traversals, interpolation,
evaluate's table, and the bad input that must write nothing."""

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minivae import cli
from minivae.checkpoint import Checkpoint
from minivae.config import make_config
from minivae.errors import TrainError
from minivae.evaluate import latent_stats
from minivae.train import kl_weight, train

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "bin" / "minivae"
TINY = ["--dataset", "fashion-mnist", "--limit", "256", "--batch-size", "64", "--hidden-dim",
        "16", "--sample-size", "3", "--backend", "numpy", "--no-progress", "--no-download"]
WARM = ["--model", "mlp", "--latent-dim", "3", "--kl-warmup", "10", "--epochs", "3"]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.fixture(scope="module")
def warm_run(tmp_path_factory, synthetic_data_dir):
    """3 epochs of 4 steps with a 10-step KL warm-up, reconstructions from the mean."""
    out = tmp_path_factory.mktemp("warm") / "run"
    rc = cli.main(["train", *WARM, "--recon-from", "mean", "--out", str(out), "--data-dir",
                   str(synthetic_data_dir), *TINY])
    assert rc == 0
    return out


def test_kl_weight_schedule():
    cfg = make_config("mlp", beta=2.0, kl_warmup=4)
    assert [kl_weight(cfg, k) for k in range(6)] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
    assert kl_weight(make_config("mlp", beta=2.0), 0) == 2.0       # no warm-up: beta at once


def test_metrics_columns(warm_run):
    rows = read_csv(warm_run / "metrics.csv")
    assert list(rows[0]) == ["epoch", "train_loss", "train_recon", "train_kl", "train_reg",
                             "beta", "test_neg_elbo", "kl_0", "kl_1", "kl_2", "active_units",
                             "seconds"]
    # 4 steps per epoch, steps 0..11: the last step of each epoch has weight min(1, k / 10).
    assert [float(r["beta"]) for r in rows] == [0.3, 0.7, 1.0]
    for r in rows:
        kls = [float(r[f"kl_{i}"]) for i in range(3)]
        assert all(k >= 0 for k in kls)
        assert 0 <= int(r["active_units"]) <= 3


def test_latent_stats_counts_active_units():
    rng = np.random.default_rng(0)
    mu = np.stack([rng.normal(0, 1, 500), rng.normal(0, 0.05, 500)], axis=1)  # var 1, 0.0025
    log_var = np.zeros_like(mu)
    s = latent_stats(mu, log_var)
    assert s["active"] == [True, False] and s["active_units"] == 1
    assert s["kl"] == pytest.approx(list(0.5 * (mu ** 2).mean(axis=0)))
    assert s["mean_var"] == pytest.approx(list(mu.var(axis=0)))


def test_recon_from_mean_differs_from_sample(warm_run, tmp_path, synthetic_data_dir):
    out = tmp_path / "sample"
    argv = [a if a != "3" else "1" for a in WARM]                  # one epoch is enough
    assert cli.main(["train", *argv, "--out", str(out), "--data-dir", str(synthetic_data_dir),
                     *TINY]) == 0
    mean_argv = argv + ["--recon-from", "mean"]
    out_mean = tmp_path / "mean"
    assert cli.main(["train", *mean_argv, "--out", str(out_mean), "--data-dir",
                     str(synthetic_data_dir), *TINY]) == 0
    a = np.asarray(Image.open(out / "epoch_1.png"))[-4 * 28:]         # the grid, no caption
    b = np.asarray(Image.open(out_mean / "epoch_1.png"))[-4 * 28:]
    assert a.shape == b.shape and not np.array_equal(a, b)
    # Only the picture differs: the training is the same.
    strip = lambda p: [r for r in read_csv(p)[0].items() if r[0] != "seconds"]  # noqa: E731
    assert strip(out / "metrics.csv") == strip(out_mean / "metrics.csv")


def test_plot_traversals_and_interpolation(warm_run, capsys):
    rc, out, err = main(capsys, "plot", warm_run, "--no-download", "--backend", "numpy",
                        "--traverse-image", "5", "--interpolate", "3", "7",
                        "--traverse-range", "-2", "2")
    assert rc == 0, err
    assert "traversals.png, traversals.gif, interpolation.png" in out
    with Image.open(warm_run / "traversals.gif") as gif:
        assert gif.n_frames >= 5 and gif.info.get("loop") == 0
        # one column of the three dimensions' rows (28 px + 2 px gaps), scaled 3x
        assert gif.size == (28 * 3, (3 * 28 + 2 * 2) * 3)
    with Image.open(warm_run / "interpolation.png") as im:
        assert im.size[0] >= 12 * 28 * 3                  # a figure: the images, title, axes
    with Image.open(warm_run / "manifold.png") as im:
        assert im.size[0] >= 11 * 28 * 3 and im.size[1] >= 11 * 28 * 3
    with Image.open(warm_run / "traversals.png") as im:
        assert im.size[0] > 11 * 28 and im.size[1] > 3 * 28


def test_evaluate_prints_the_latent_table(warm_run, capsys):
    rc, out, err = main(capsys, "evaluate", warm_run, "--no-download", "--backend", "numpy",
                        "--iw-samples", "4")
    assert rc == 0, err
    lines = out.splitlines()
    head = lines.index(next(l for l in lines if l.split()[:2] == ["dim", "KL"]))
    table = [l.split() for l in lines[head + 1:head + 4]]
    assert [t[0] for t in table] == ["0", "1", "2"] and all(t[3] in ("yes", "no") for t in table)
    n_active = sum(t[3] == "yes" for t in table)
    assert lines[head + 4] == f"active units: {n_active} of 3"
    last = read_csv(warm_run / "metrics.csv")[-1]
    assert int(last["active_units"]) == n_active
    assert [float(t[1]) for t in table] == pytest.approx(
        [float(last[f"kl_{i}"]) for i in range(3)], abs=1e-4)


def _snapshot(folder):
    return sorted((p.relative_to(folder), p.stat().st_mtime_ns) for p in folder.rglob("*"))


@pytest.mark.parametrize("argv, fragment", [
    (["--traverse-image", "256"], "--traverse-image 256 is out of range"),
    (["--interpolate", "0", "256"], "256 is out of range"),
    (["--interpolate", "4", "4"], "two different test images"),
    (["--traverse-range", "1", "-1"], "LO < HI"),
    (["--traverse-image", "-1"], "--traverse-image"),
])
def test_bad_plot_input_writes_nothing(warm_run, capsys, argv, fragment):
    before = _snapshot(warm_run)
    rc, out, err = main(capsys, "plot", warm_run, "--no-download", "--backend", "numpy", *argv)
    assert rc != 0 and err.startswith("minivae: error: ") and fragment in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert _snapshot(warm_run) == before


@pytest.mark.parametrize("argv, fragment", [
    (["--kl-warmup", "-5"], "--kl-warmup"),
    (["--recon-from", "median"], "--recon-from"),
])
def test_bad_train_input_writes_nothing(capsys, tmp_path, synthetic_data_dir, argv, fragment):
    out = tmp_path / "run"
    rc, _, err = main(capsys, "train", "--out", out, "--data-dir", synthetic_data_dir, *TINY,
                      *argv)
    assert rc == 2 and err.startswith("minivae: error: ") and fragment in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_warmup_is_fixed_on_resume(warm_run, capsys, synthetic_data_dir):
    rc, _, err = main(capsys, "train", "--model", "mlp", "--latent-dim", "3", "--kl-warmup", "20",
                      "--epochs", "4", "--out", warm_run, "--data-dir", synthetic_data_dir,
                      "--resume", *TINY)
    assert rc == 1 and "trained with --kl-warmup 10, not --kl-warmup 20" in err


def test_killed_mid_warmup_resumes_bit_identical(warm_run, tmp_path, synthetic_data_dir):
    """SIGKILL a real `bin/minivae train` inside its 10-step warm-up (which spans all 12 steps
    but the last two), resume: metrics and parameters equal the uninterrupted run's."""
    out = tmp_path / "killed"
    common = [*WARM, "--recon-from", "mean", "--out", str(out), "--data-dir",
              str(synthetic_data_dir), *TINY]
    proc = subprocess.Popen([sys.executable, str(BIN), "train", *common],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, PYTHONHASHSEED="0"))
    try:
        deadline = time.time() + 120
        while not (out / "checkpoints" / "model-1.npz").exists():
            assert proc.poll() is None, "training ended before its first checkpoint"
            assert time.time() < deadline
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (out / "checkpoints" / "model-3.npz").exists()     # killed before the end
    assert cli.main(["train", *common, "--resume"]) == 0
    strip = lambda p: [l.rsplit(",", 1)[0] for l in p.read_text().splitlines()]  # noqa: E731
    assert strip(out / "metrics.csv") == strip(warm_run / "metrics.csv")
    with np.load(out / "checkpoints" / "model-3.npz") as a, \
            np.load(warm_run / "checkpoints" / "model-3.npz") as b:
        for k in a.files:
            if k.startswith(("param/", "optim/", "rng/", "schedule/")):
                assert np.array_equal(a[k], b[k]), k
        assert int(a["schedule/step"]) == 12


def test_a_run_saved_before_these_columns_resumes(tmp_path, synthetic_data_dir):
    """tests/data/run-format-1 has no beta / kl_<i> / active_units, no kl_warmup in its config
    and no schedule/step in its checkpoint: it resumes (warm-up 0, as it was trained), its old
    row keeps empty cells, the new row has them all."""
    out = tmp_path / "old"
    shutil.copytree(ROOT / "tests" / "data" / "run-format-1", out)
    settings = dict(epochs=2, hidden_dim=8, batch_size=16, sample_size=2, backend="numpy",
                    out=str(out), data_dir=str(synthetic_data_dir), download=False)
    with pytest.raises(TrainError, match="trained with --kl-warmup 0, not --kl-warmup 5"):
        train(make_config("mlp", kl_warmup=5, **settings), resume=True, progress=False,
              log=lambda m: None)
    train(make_config("mlp", **settings), resume=True, progress=False, log=lambda m: None)
    rows = read_csv(out / "metrics.csv")
    assert [rows[0][k] for k in ("beta", "kl_0", "kl_1", "active_units")] == ["", "", "", ""]
    assert float(rows[1]["beta"]) == 1.0 and rows[1]["active_units"] in ("0", "1", "2")
    steps = -(-3000 // 16)                                   # the last partial batch is kept
    assert Checkpoint(out / "checkpoints" / "model-2.npz").step == 2 * steps


def test_a_long_evaluation_shows_progress_within_a_batch(monkeypatch):
    """evaluate's bar counts latent draws and moves after every chunk of them, so K = 100,000
    importance samples (minutes a batch) do not sit at 0% until a batch ends."""
    from minivae import evaluate as ev
    from minivae.config import make_config
    from minivae.tiers import build_model

    updates = []

    class Bar:
        def __init__(self, progress=True, **options):
            self.total = options["total"]

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            updates.append(n)
    monkeypatch.setattr(ev, "progress_bar", Bar)
    cfg = make_config(model="mlp", hidden_dim=8, backend="numpy")
    model = build_model("mlp", hidden_dim=8, dtype=np.float64)
    images = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    ev.evaluate(model, images, cfg, iw_samples=40, max_rows=16, progress=True)
    assert sum(updates) == 4 * 40 and len(updates) == 10       # chunks of 4 draws per image
