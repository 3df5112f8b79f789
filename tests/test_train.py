"""End-to-end training on synthetic IDX data: outputs, exact resume, the NaN guard, evaluate."""

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minivae import run as run_module
from minivae.checkpoint import Checkpoint
from minivae.config import make_config
from minivae.errors import TrainError
from minivae.run import RunFolder, metric_fields, resume_config
from minivae.evaluate import evaluate_run
from minivae.train import NonFiniteLossError, train


def tiny(out, data_dir, model="mlp", **kw):
    """A config small enough for a test: a few hundred images, narrow layers."""
    settings = dict(dataset="fashion-mnist", epochs=2, limit=384, batch_size=64, hidden_dim=32,
                    sample_size=4, seed=3, backend="numpy", out=str(out),
                    data_dir=str(data_dir), download=False)
    settings.update(kw)
    return make_config(model, **settings)


def run(cfg, **kw):
    return train(cfg, progress=False, log=lambda m: None, **kw)


def captioned(path, side):
    """True when the picture is a side x side grid under a caption band: white rows with dark
    text above the grid."""
    width, height = png_size(path)
    pixels = np.asarray(Image.open(path))
    band = pixels[:height - side]
    assert width == side and height > side + 10, (path, width, height)
    assert band.max() == 255 and band.min() < 100, path          # black text on white
    return True


def png_size(path):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def without_seconds(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def npz(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def assert_same_checkpoint(a, b):
    a, b = npz(a), npz(b)
    assert sorted(a) == sorted(b)
    for k in a:
        if k in ("metrics", "config"):
            continue
        assert np.array_equal(a[k], b[k]), k
    strip = lambda s: without_seconds(json.loads(str(s)))  # noqa: E731
    assert strip(a["metrics"]) == strip(b["metrics"])


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory, synthetic_data_dir):
    """A 3-epoch MLP run, trained once and shared by the tests below (read-only)."""
    out = tmp_path_factory.mktemp("mlp-run")
    cfg = tiny(out, synthetic_data_dir, epochs=3)
    history = run(cfg)
    return out, cfg, history


def test_mlp_run_writes_every_output(mlp_run):
    out, cfg, history = mlp_run
    assert json.loads((out / "config.json").read_text())["model"] == "mlp"
    assert captioned(out / "original.png", 4 * 28)
    for e in (1, 2, 3):
        assert captioned(out / f"epoch_{e}.png", 4 * 28)
        assert captioned(out / f"samples_{e}.png", 4 * 28)
        assert (out / "checkpoints" / f"model-{e}.npz").is_file()
    assert png_size(out / "loss.png")[0] > 100
    rows = read_csv(out / "metrics.csv")
    assert list(rows[0]) == list(metric_fields(cfg.latent_dim))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for r in rows:
        assert all(math.isfinite(float(v)) for v in r.values())
        assert float(r["train_loss"]) == pytest.approx(
            float(r["train_recon"]) + float(r["train_kl"]) + float(r["train_reg"]), rel=1e-9)
    # Learning happens: both the training loss and the test -ELBO go down every epoch.
    train_loss = [float(r["train_loss"]) for r in rows]
    test = [float(r["test_neg_elbo"]) for r in rows]
    assert train_loss[2] < train_loss[1] < train_loss[0]
    assert test[2] < test[1] < test[0]
    assert [r["epoch"] for r in history] == [1, 2, 3]
    # No temporary files left behind.
    assert not [p for p in out.rglob(".*") if p.is_file() and p.name != ".lock"]


def test_checkpoint_contents_load_without_pickle(mlp_run):
    out, cfg, _ = mlp_run
    z = npz(out / "checkpoints" / "model-3.npz")
    assert int(z["epoch"]) == 3
    assert json.loads(str(z["config"]))["hidden_dim"] == 32
    assert len(json.loads(str(z["metrics"]))) == 3
    assert "param/encoder.0.W" in z and z["param/encoder.0.W"].shape == (784, 32)
    assert "optim/m.encoder.0.W" in z and int(z["optim/t"]) == 3 * 6     # one format, any tier
    for k in ("rng/model", "rng/data"):
        assert json.loads(str(z[k]))["bit_generator"] == "PCG64"
    assert all(v.dtype != object for v in z.values())


def test_resume_at_epoch_boundary_is_exact(mlp_run, tmp_path, synthetic_data_dir):
    ref_out, ref_cfg, _ = mlp_run
    out = tmp_path / "run"
    run(tiny(out, synthetic_data_dir, epochs=1))
    with pytest.raises(TrainError, match="--resume"):
        run(tiny(out, synthetic_data_dir, epochs=3))          # would overwrite a run
    run(tiny(out, synthetic_data_dir, epochs=3), resume=True)
    assert without_seconds(read_csv(out / "metrics.csv")) == \
        without_seconds(read_csv(ref_out / "metrics.csv"))
    for e in (1, 2, 3):
        assert_same_checkpoint(out / "checkpoints" / f"model-{e}.npz",
                               ref_out / "checkpoints" / f"model-{e}.npz")
        assert (out / f"epoch_{e}.png").read_bytes() == (ref_out / f"epoch_{e}.png").read_bytes()


class Interrupt(Exception):
    pass


def test_resume_after_mid_epoch_interruption_is_exact(mlp_run, tmp_path, synthetic_data_dir):
    ref_out, _, _ = mlp_run
    out = tmp_path / "run"

    def kill(epoch, step, terms):
        if epoch == 2 and step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(tiny(out, synthetic_data_dir, epochs=3), callback=kill)
    assert [e for e, _ in RunFolder(out).checkpoints()] == [1]
    # Simulate a kill in the middle of writing the next checkpoint: a stray temporary file.
    (out / "checkpoints" / ".model-2.npz.tmp999").write_bytes(b"PK\x03\x04 half written")
    run(tiny(out, synthetic_data_dir, epochs=3), resume=True)
    assert without_seconds(read_csv(out / "metrics.csv")) == \
        without_seconds(read_csv(ref_out / "metrics.csv"))
    assert_same_checkpoint(out / "checkpoints" / "model-3.npz",
                           ref_out / "checkpoints" / "model-3.npz")


def test_resume_skips_a_corrupt_newest_checkpoint(mlp_run, tmp_path, synthetic_data_dir):
    ref_out, _, _ = mlp_run
    out = tmp_path / "run"
    run(tiny(out, synthetic_data_dir, epochs=2))
    (out / "checkpoints" / "model-2.npz").write_bytes(b"not a zip file")
    warnings = []
    train(tiny(out, synthetic_data_dir, epochs=3), resume=True, progress=False,
            log=lambda m: None, warn=warnings.append)
    assert any("model-2.npz" in w for w in warnings)
    assert_same_checkpoint(out / "checkpoints" / "model-3.npz",
                           ref_out / "checkpoints" / "model-3.npz")


def test_resume_refuses_changed_settings(mlp_run, tmp_path, synthetic_data_dir):
    out = tmp_path / "run"
    run(tiny(out, synthetic_data_dir, epochs=1))
    with pytest.raises(TrainError, match="trained with --lr 0.001, not --lr 0.0005"):
        run(tiny(out, synthetic_data_dir, epochs=2, lr=5e-4), resume=True)


def test_resume_without_checkpoint_starts_afresh(tmp_path, synthetic_data_dir):
    out = tmp_path / "run"
    rows = run(tiny(out, synthetic_data_dir, epochs=1), resume=True)
    assert [r["epoch"] for r in rows] == [1]


def test_nan_guard_absurd_learning_rate(tmp_path, synthetic_data_dir):
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step \d+"):
        run(tiny(out, synthetic_data_dir, lr=1e6))
    assert RunFolder(out).checkpoints() == []
    assert read_csv(out / "metrics.csv") == []
    assert not (out / "epoch_1.png").exists()


def test_nan_guard_keeps_last_good_checkpoint(tmp_path, synthetic_data_dir, monkeypatch):
    out = tmp_path / "run"
    built = []
    real_build = run_module.model_for
    monkeypatch.setattr(run_module, "model_for",
                        lambda cfg, xp: built.append(real_build(cfg, xp)) or built[-1])

    def poison(epoch, step, terms):      # a weight turns NaN after step 2 of epoch 2
        if epoch == 2 and step == 2:
            built[-1].params["decoder.0.W"][0, 0] = np.nan

    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 3.*model-1\.npz"):
        run(tiny(out, synthetic_data_dir, epochs=3), callback=poison)
    assert [e for e, _ in RunFolder(out).checkpoints()] == [1]
    Checkpoint(out / "checkpoints" / "model-1.npz")       # still readable
    rows = read_csv(out / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1]
    assert all(math.isfinite(float(v)) for v in rows[0].values())
    assert not (out / "epoch_2.png").exists()


def test_evaluate_iwae_bound(mlp_run, synthetic_data_dir):
    out, cfg, history = mlp_run
    results = {k: evaluate_run(out, iw_samples=k, backend="numpy", limit=200)
               for k in (1, 10, 100)}
    for k, r in results.items():
        assert r["images"] == 200 and r["epoch"] == 3
        assert math.isfinite(r["neg_log_px"])
        # IWAE estimate of -log p(x) is never worse (higher) than the -ELBO of the same samples.
        assert r["neg_log_px"] <= r["neg_elbo"] + 1e-9
    assert results[1]["neg_log_px"] == pytest.approx(results[1]["neg_elbo"], abs=1e-9)
    # ... and tightens as K grows.
    assert results[100]["neg_log_px"] < results[10]["neg_log_px"] < results[1]["neg_log_px"]
    # The -ELBO agrees with the metrics' test -ELBO (another noise draw, same quantity).
    assert results[100]["neg_elbo"] == pytest.approx(history[-1]["test_neg_elbo"], rel=0.05)


def test_evaluate_earlier_epoch(mlp_run):
    out, _, _ = mlp_run
    first = evaluate_run(out, epoch=1, iw_samples=5, backend="numpy", limit=100)
    last = evaluate_run(out, epoch=3, iw_samples=5, backend="numpy", limit=100)
    assert first["epoch"] == 1 and last["neg_log_px"] < first["neg_log_px"]


def test_float64_run(tmp_path, synthetic_data_dir):
    out = tmp_path / "f64"
    rows = run(tiny(out, synthetic_data_dir, epochs=1, limit=128, dtype="float64"))
    assert math.isfinite(rows[0]["test_neg_elbo"])
    assert npz(out / "checkpoints" / "model-1.npz")["param/encoder.0.W"].dtype == np.float64
    assert evaluate_run(out, iw_samples=3, backend="numpy")["images"] == 128


def test_conv_run_and_plots(tmp_path, synthetic_data_dir):
    from minivae.visualise import plot_run

    out = tmp_path / "conv"
    cfg = tiny(out, synthetic_data_dir, model="conv", epochs=2, limit=160, batch_size=32,
               latent_dim=3)
    rows = run(cfg)
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    assert captioned(out / "epoch_2.png", 4 * 32)        # padded 32x32 inputs
    assert npz(out / "checkpoints" / "model-2.npz")["param/encoder.0.W"].shape == (32, 1, 4, 4)
    msgs = []
    written = plot_run(out, backend="numpy", log=msgs.append)
    assert any("principal axes" in m for m in msgs)                 # latent 3: says it projects
    names = {p.name for p in written}
    assert {"clustering.png", "manifold.png", "test-vs-reconstruction.png", "traversals.png",
            "traversals.gif", "interpolation.png"} <= names
    # figures with titles and axes, the images 3 screen pixels per pixel
    assert png_size(out / "manifold.png")[0] >= 11 * 32 * 3
    assert png_size(out / "interpolation.png")[0] >= 12 * 32 * 3
    shown = sorted(int(n[len("test-image-"):-4]) for n in names if n.startswith("test-image-"))
    assert len(shown) == 8 and max(shown) < 160                     # test indices (--limit 160)
    for i in shown:
        assert png_size(out / f"test-image-{i}.png") == (32, 32)
        assert png_size(out / f"reconstruction-{i}.png") == (32, 32)


def test_plot_mlp_two_dimensional_latent(mlp_run, tmp_path):
    import shutil

    from minivae.visualise import plot_run

    src, _, _ = mlp_run
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    msgs = []
    plot_run(out, epoch=2, backend="numpy", log=msgs.append)
    assert not msgs                                                  # 2-D latent: no projection
    assert min(png_size(out / "manifold.png")) >= 11 * 28 * 3        # a figure, images x3
    assert png_size(out / "clustering.png")[0] > 300
    w, h = png_size(out / "test-vs-reconstruction.png")
    assert w > h > 2 * 28


def test_tensorboard_scalars(tmp_path, synthetic_data_dir):
    pytest.importorskip("tensorboardX")
    out = tmp_path / "tb"
    run(tiny(out, synthetic_data_dir, epochs=1, tensorboard=True, log_every=2))
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_tensorboard_missing_is_a_clear_error(tmp_path, synthetic_data_dir, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorboardX", None)      # import now raises ImportError
    with pytest.raises(TrainError, match="tensorboardX"):
        run(tiny(tmp_path / "tb", synthetic_data_dir, epochs=1, tensorboard=True))


def test_too_few_images_for_a_full_batch(tmp_path, synthetic_data_dir):
    with pytest.raises(TrainError, match="no full batch"):
        run(tiny(tmp_path / "c", synthetic_data_dir, model="conv", limit=10))


@pytest.mark.parametrize("key,value", [("epochs", 0), ("batch_size", -1), ("lr", 0.0),
                                       ("lr", float("nan")), ("dataset", "cifar"),
                                       ("dtype", "float16"), ("beta", -1.0), ("seed", -2)])
def test_bad_settings(key, value, tmp_path):
    with pytest.raises(TrainError):
        make_config("mlp", out=str(tmp_path), **{key: value})


def test_seed_defaults():
    mlp, conv = make_config("mlp"), make_config("conv")
    assert (mlp.dataset, mlp.epochs, mlp.lr, mlp.batch_size, mlp.weight_decay,
            mlp.latent_dim, mlp.hidden_dim, mlp.sample_size) == \
        ("mnist", 20, 1e-3, 128, 0.01, 2, 500, 10)
    assert (conv.dataset, conv.epochs, conv.lr, conv.batch_size, conv.weight_decay,
            conv.beta, conv.latent_dim) == ("fashion-mnist", 10, 1e-4, 64, 0.01, 1.0, 10)
    assert (conv.spec.pad, conv.spec.flatten, conv.spec.drop_last) == (2, False, True)
    assert (mlp.spec.pad, mlp.spec.flatten, mlp.spec.drop_last) == (0, True, False)
    assert mlp.out.endswith("mlp-mnist")


# A run folder written before the engine had two tiers (config.json and the checkpoint have no
# "impl"): 1 epoch of `mlp --hidden-dim 8 --batch-size 16 --sample-size 2` on 64 synthetic images.
OLD_RUN = Path(__file__).resolve().parent / "data" / "run-format-1"


def test_checkpoint_of_the_first_format_loads_and_resumes_on_either_tier(tmp_path,
                                                                         synthetic_data_dir):
    ckpt = Checkpoint(OLD_RUN / "checkpoints" / "model-1.npz")
    assert ckpt.epoch == 1 and "impl" not in ckpt.config
    r = evaluate_run(OLD_RUN, iw_samples=2, backend="numpy", data_dir=str(synthetic_data_dir),
                     download=False, limit=32)
    assert math.isfinite(r["neg_elbo"]) and r["neg_log_px"] <= r["neg_elbo"]
    for impl in ("plain", "fast"):
        out = tmp_path / impl
        shutil.copytree(OLD_RUN, out)
        cfg = make_config("mlp", epochs=2, hidden_dim=8, batch_size=16, sample_size=2,
                          backend="numpy", out=str(out), data_dir=str(synthetic_data_dir),
                          download=False, impl=impl)
        rows = run(cfg, resume=True)
        assert [r["epoch"] for r in rows] == [1, 2]
        assert rows[0] == ckpt.metrics[0]
        # config.json keeps the settings the run was started with; the longer run raises epochs
        saved = json.loads((out / "config.json").read_text())
        assert "impl" not in saved and saved["epochs"] == 2
        assert Checkpoint(out / "checkpoints" / "model-2.npz").config["impl"] == impl


def test_resume_on_the_other_tier(mlp_run, tmp_path, synthetic_data_dir):
    """impl is not one of the settings fixed on resume: both tiers compute the same numbers."""
    src, cfg, history = mlp_run
    out = tmp_path / "resumed"
    shutil.copytree(src, out)
    for p in (out / "checkpoints").glob("model-3.npz"):
        p.unlink()
    trained = Checkpoint(src / "checkpoints" / "model-2.npz").config["impl"]
    other = "plain" if trained != "plain" else "fast"
    rows = run(cfg.replace(impl=other), resume=True)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[2]["train_loss"] == pytest.approx(history[2]["train_loss"], rel=1e-4)


def damage_checkpoint(path, damage):
    """Rewrite checkpoint `path` without its last parameter / optimizer sum, or with that
    parameter misshapen; returns the name of what was damaged."""
    items = npz(path)
    prefix = {"param": "param/", "optim": "optim/v.", "shape": "param/"}[damage]
    key = sorted(k for k in items if k.startswith(prefix))[-1]
    if damage == "shape":
        items[key] = items[key][..., :1]
    else:
        del items[key]
    with open(path, "wb") as f:
        np.savez(f, **items)
    return key.split("/", 1)[1]


@pytest.mark.parametrize("damage", ["param", "optim", "shape"])
def test_resume_falls_back_past_every_kind_of_damaged_checkpoint(damage, mlp_run, tmp_path):
    """A newest checkpoint that reads back but lacks a parameter or an optimizer array, or holds
    a misshapen one: a warning that names it, then the previous checkpoint, exactly."""
    src, cfg, history = mlp_run
    out = tmp_path / "run"
    shutil.copytree(src, out)
    path = out / "checkpoints" / "model-3.npz"
    name = damage_checkpoint(path, damage)
    warnings = []
    rows = train(cfg.replace(out=str(out)), resume=True, progress=False, log=lambda m: None,
                 warn=warnings.append)
    assert len(warnings) == 1 and "model-3.npz" in warnings[0] and name in warnings[0], warnings
    assert without_seconds(rows) == without_seconds(history)
    assert_same_checkpoint(path, src / "checkpoints" / "model-3.npz")


def test_a_checkpoint_missing_a_parameter_names_it(mlp_run, tmp_path, synthetic_data_dir):
    src, _, _ = mlp_run
    out = tmp_path / "run"
    shutil.copytree(src, out)
    name = damage_checkpoint(out / "checkpoints" / "model-3.npz", "param")
    with pytest.raises(TrainError, match=f"does not match the model: missing parameter\\(s\\) "
                                         f"{name}$"):
        evaluate_run(out, backend="numpy", iw_samples=1, limit=8,
                     data_dir=str(synthetic_data_dir), download=False)


def test_config_json_records_what_a_resume_changed(tmp_path, synthetic_data_dir):
    """--resume --threads 1 --recon-from mean: applied, and written to config.json."""
    out = tmp_path / "run"
    run(tiny(out, synthetic_data_dir, epochs=1))
    before = json.loads((out / "config.json").read_text())
    assert before["recon_from"] == "sample"
    cfg = resume_config({"out": str(out), "epochs": 2, "threads": 1, "recon_from": "mean"})[0]
    run(cfg, resume=True)
    after = json.loads((out / "config.json").read_text())
    assert after["threads"] == 1 and after["recon_from"] == "mean" and after["epochs"] == 2
    assert {k: v for k, v in after.items() if k not in ("threads", "recon_from", "epochs")} == \
        {k: v for k, v in before.items() if k not in ("threads", "recon_from", "epochs")}
