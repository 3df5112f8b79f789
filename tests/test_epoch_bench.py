"""benchmarks/epoch_time.py (seconds per epoch, minivae train against PyTorch) and
benchmarks/torch_train.py (its PyTorch loop).

Without PyTorch: the arithmetic (median over epochs 2.., over rounds, the ratio), reading
metrics.csv, the child command lines and environment, the OPENBLAS_CORETYPE note, the output
formats and the one-line errors. With PyTorch: the loop's batches are minivae's, value for value,
and its objective is minivae's model.loss on the same parameters, batch and noise (float64), so
the two loops train the same thing. With PyTorch and ../shared/data: a smoke run of the whole
benchmark (256 images, 2 epochs, 1 round, both models).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import epoch_time, harness, torch_train

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = ROOT.parent / "shared" / "data"


# --------------------------------------------------------------------------------------------
# Arithmetic and metrics.csv


def test_steady_median_leaves_out_the_first_epoch():
    assert epoch_time.steady_median([100.0, 2.0, 4.0, 3.0]) == 3.0
    assert epoch_time.steady_median([100.0, 5.0]) == 5.0
    with pytest.raises(epoch_time.BenchError, match="at least 2 epochs"):
        epoch_time.steady_median([1.0])


def test_summarize_takes_the_median_over_rounds_then_the_ratio():
    rounds = [{"minivae": {"seconds": [9, 6, 6]}, "torch": {"seconds": [9, 4, 4]}},
              {"minivae": {"seconds": [9, 5, 7]}, "torch": {"seconds": [9, 5, 5]}},
              {"minivae": {"seconds": [9, 9, 9]}, "torch": {"seconds": [9, 3, 5]}}]
    s = epoch_time.summarize(rounds)
    assert s["minivae_rounds_s"] == [6, 6, 9] and s["torch_rounds_s"] == [4, 5, 4]
    assert s["minivae_s"] == 6 and s["torch_s"] == 4 and s["ratio"] == 1.5
    assert s["rounds"] == 3


def test_read_metrics_returns_seconds_and_loss_in_epoch_order(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,train_loss,train_recon,test_neg_elbo,seconds\n"
                    "2,150.5,140.0,151.0,3.25\n"
                    "1,200.0,180.0,170.0,4.5\n")
    assert epoch_time.read_metrics(path) == {"seconds": [4.5, 3.25],
                                             "train_loss": [200.0, 150.5]}


def test_read_metrics_names_the_file_it_cannot_use(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,train_loss\n1,200.0\n")
    with pytest.raises(epoch_time.BenchError, match="metrics.csv has no epoch rows"):
        epoch_time.read_metrics(path)
    with pytest.raises(epoch_time.BenchError, match="cannot read"):
        epoch_time.read_metrics(tmp_path / "missing.csv")


# --------------------------------------------------------------------------------------------
# Child processes: commands and environment


def test_minivae_command_is_the_cli_of_the_given_checkout(tmp_path):
    cmd = epoch_time.minivae_command(tmp_path, "conv", 3, "/o", "/m", "/d")
    assert cmd == [sys.executable, str(tmp_path / "bin" / "minivae"), "train", "--model",
                   "conv", "--epochs", "3", "--out", "/o", "--mirror", "/m", "--data-dir", "/d",
                   "--backend", "numpy", "--no-progress"]
    cmd = epoch_time.minivae_command(tmp_path, "mlp", 2, "/o", "/m", "/d", impl="plain",
                                     limit=256)
    assert cmd[-4:] == ["--impl", "plain", "--limit", "256"]


def test_torch_command_runs_the_loop_script_with_the_thread_count():
    cmd = epoch_time.torch_command("mlp", 4, "/m", "/d", 2, limit=64)
    assert cmd[:2] == [sys.executable, str(ROOT / "benchmarks" / "torch_train.py")]
    assert cmd[2:] == ["--model", "mlp", "--epochs", "4", "--mirror", "/m", "--data-dir", "/d",
                       "--threads", "2", "--limit", "64"]
    assert "--limit" not in epoch_time.torch_command("mlp", 4, "/m", "/d", 2)


def test_child_env_sets_every_thread_count_and_passes_coretype_through():
    env = harness.thread_env(3, {"PATH": "/bin", "OPENBLAS_CORETYPE": "Haswell",
                                   "OMP_NUM_THREADS": "8"})
    assert env == {"PATH": "/bin", "OPENBLAS_CORETYPE": "Haswell", "OMP_NUM_THREADS": "3",
                   "OPENBLAS_NUM_THREADS": "3", "MKL_NUM_THREADS": "3"}


def test_coretype_note_gives_the_command_without_the_variables():
    assert harness.coretype_note({"PATH": "/bin"}, ["--json"]) is None
    note = harness.coretype_note({"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "1048576"},
                                    ["--models", "conv", "--json"])
    assert "\n" not in note
    assert "OPENBLAS_CORETYPE=Haswell and OPENBLAS_L2_SIZE=1048576" in note
    assert note.endswith("env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python "
                         "benchmarks/epoch_time.py --models conv --json")
    note = harness.coretype_note({"OPENBLAS_L2_SIZE": "1048576"}, [])
    assert "OPENBLAS_L2_SIZE=1048576 set" in note


# --------------------------------------------------------------------------------------------
# Output


def _report():
    runs = [{"minivae": {"seconds": [3.0, 2.0, 2.2], "train_loss": [200.0, 180.0, 170.0]},
             "torch": {"seconds": [2.0, 1.0, 1.2], "train_loss": [201.0, 181.0, 171.0],
                       "images": 60000, "steps_per_epoch": 469}}]
    result = dict(model="mlp", label="mlp: MNIST, batch 128", images=60000,
                  steps_per_epoch=469, runs=runs, **epoch_time.summarize(runs))
    kernels = dict(numpy="2.4.0", numpy_pools=[dict(internal_api="openblas", version="0.3.31",
                                                    architecture="Haswell", num_threads=2)],
                   torch="2.13.0", torch_threads=2, torch_cpu_capability="AVX2",
                   torch_blas="mkl", torch_mkldnn=True,
                   torch_pools=[dict(internal_api="openmp", version=None, num_threads=2)])
    return dict(command="python benchmarks/epoch_time.py --models mlp",
                settings=dict(models=["mlp"], epochs=3, rounds=1, threads=2, limit=None,
                              impl=None, minivae_root="/r", minivae_revision="abc1234"),
                machine=dict(cpu="Some CPU", cores=2, usable_cores=2, python="3.11.7",
                             load_average_start=[0.1, 0.2, 0.3],
                             load_average_end=[0.5, 0.4, 0.3]),
                kernels=kernels, openblas_env={"OPENBLAS_CORETYPE": "Haswell"},
                environment_note="note: ...", results=[result])


def test_markdown_table_with_machine_kernels_and_command():
    text = epoch_time.format_markdown(_report())
    lines = text.splitlines()
    assert lines[0] == "| model | minivae s/epoch | PyTorch s/epoch | ratio | rounds |"
    assert lines[2] == "| mlp: MNIST, batch 128 | 2.10 | 1.10 | 1.91 | 1 |"
    assert "median over epochs 2-3" in text
    assert ("numpy 2.4.0: openblas 0.3.31 Haswell, 2 threads | torch 2.13.0: mkl BLAS, AVX2 "
            "kernels, oneDNN, 2 threads (openmp, 2 threads)") in text
    assert "Environment: OPENBLAS_CORETYPE=Haswell" in text
    assert lines[-1] == "Command: `python benchmarks/epoch_time.py --models mlp`"


def test_text_table_lists_each_round():
    text = epoch_time.format_text(_report())
    assert text.splitlines()[1].split()[-4:] == ["2.100", "1.100", "1.91", "1"]
    assert "per round: minivae 2.100, PyTorch 1.100; 60000 images, 469 steps per epoch" in text
    assert "load average 0.10 0.20 0.30 at the start" in text
    assert text.splitlines()[-1] == "note: ..."


# --------------------------------------------------------------------------------------------
# One-line errors


@pytest.mark.parametrize("argv, what", [(["--epochs", "1"], "--epochs"),
                                        (["--models", "mlp,vit"], "--models"),
                                        (["--threads", "0"], "--threads")])
def test_bad_flags_are_one_line_errors(argv, what, capsys):
    with pytest.raises(SystemExit) as e:
        epoch_time.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.startswith("epoch_time: error: ") and what in err and err.count("\n") == 1


def test_missing_torch_is_one_line(monkeypatch, capsys):
    real = epoch_time.importlib.util.find_spec
    monkeypatch.setattr(epoch_time.importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real(name, *a))
    assert epoch_time.main(["--models", "mlp"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("epoch_time: error: PyTorch is not installed") and err.count("\n") == 1


def test_missing_data_is_one_line(monkeypatch, tmp_path, capsys):
    real = epoch_time.importlib.util.find_spec
    monkeypatch.setattr(epoch_time.importlib.util, "find_spec",
                        lambda name, *a: object() if name == "torch" else real(name, *a))
    code = epoch_time.main(["--models", "conv", "--mirror", str(tmp_path / "nowhere"),
                            "--data-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("epoch_time: error: no fashion-mnist data: the mirror folder")


# --------------------------------------------------------------------------------------------
# The PyTorch loop trains minivae's objective on minivae's batches


@pytest.mark.parametrize("model", ["mlp", "conv"])
def test_torch_batches_are_minivaes_batches(model):
    torch = pytest.importorskip("torch")
    from minivae import data

    settings = torch_train.seed_settings(model)
    images = np.random.default_rng(0).integers(0, 256, (10, 28, 28), dtype=np.uint8)
    idx = np.array([7, 2, 9, 0])
    for np_dtype, torch_dtype in ((np.float32, None), (np.float64, torch.float64)):
        expected = data.to_float(images[idx], np, np_dtype, pad=settings["pad"],
                                 flatten=settings["flatten"])
        got = torch_train.make_batch(torch.from_numpy(images), torch.from_numpy(idx), settings,
                                     dtype=torch_dtype).numpy()
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert np.array_equal(got, expected)


@pytest.mark.parametrize("model", ["mlp", "conv"])
def test_torch_objective_is_minivaes_loss(model):
    torch = pytest.importorskip("torch")
    from minivae import data

    settings = torch_train.seed_settings(model)
    mv = torch_train.build_minivae_model(settings, dtype=np.float64)
    rng = np.random.default_rng(1)
    for p in mv.params.values():            # non-zero biases, weights off their init
        p += 0.05 * rng.standard_normal(p.shape)
    twin = torch_train.twin_builder()(mv)
    images = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    eps = rng.standard_normal((6, settings["latent_dim"]))
    x = data.to_float(images, np, np.float64, pad=settings["pad"], flatten=settings["flatten"])
    expected = mv.loss(x, noise=eps, beta=settings["beta"],
                       weight_decay=settings["weight_decay"]).loss
    batch = torch_train.make_batch(torch.from_numpy(images), torch.arange(6), settings,
                                   dtype=torch.float64)
    got = torch_train.objective(twin, batch, torch.from_numpy(eps), settings)
    assert got.dtype == torch.float64
    assert abs(got.item() - expected) <= 1e-12 * abs(expected)


@pytest.mark.parametrize("model", ["mlp", "conv"])
def test_torch_test_elbo_is_minivaes_recon_plus_kl(model):
    torch = pytest.importorskip("torch")
    from minivae import data

    settings = torch_train.seed_settings(model)
    mv = torch_train.build_minivae_model(settings, dtype=np.float64)
    twin = torch_train.twin_builder()(mv).double()
    images = np.random.default_rng(2).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    x = data.to_float(images, np, np.float64, pad=settings["pad"], flatten=settings["flatten"])
    got = torch_train.test_neg_elbo(twin, torch.from_numpy(images), settings,
                                    torch.Generator().manual_seed(5), dtype=torch.float64)
    eps = torch.randn(5, settings["latent_dim"], generator=torch.Generator().manual_seed(5))
    t = mv.loss(x, noise=eps.double().numpy(), beta=1.0, weight_decay=0.0)
    assert got == pytest.approx(t.recon + t.kl, rel=1e-12)


# --------------------------------------------------------------------------------------------
# The whole benchmark, small


@pytest.mark.slow
def test_smoke_run_of_both_models(tmp_path):
    pytest.importorskip("torch")
    if not all((REAL_DATA / d).is_dir() for d in ("mnist", "fashion-mnist")):
        pytest.skip(f"real MNIST / FashionMNIST not found under {REAL_DATA}")
    script = ROOT / "benchmarks" / "epoch_time.py"

    def run(models):
        return subprocess.run([sys.executable, str(script), "--models", models, "--limit", "256",
                               "--epochs", "2", "--rounds", "1", "--threads", "1", "--json",
                               "--mirror", str(REAL_DATA), "--data-dir", str(tmp_path / "data")],
                              capture_output=True, text=True, timeout=600,
                              env=dict(os.environ, TMPDIR=str(tmp_path)))  # a failed run's logs

    proc = run("mlp,conv")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [r["model"] for r in report["results"]] == ["mlp", "conv"]
    for r in report["results"]:
        (run_,) = r["runs"]
        for lib in ("minivae", "torch"):
            assert len(run_[lib]["seconds"]) == 2 and min(run_[lib]["seconds"]) > 0
        assert r["minivae_s"] == run_["minivae"]["seconds"][1]
        assert r["ratio"] == pytest.approx(r["minivae_s"] / r["torch_s"])
        # Same initial weights and objective: the losses agree closely after 2 short epochs.
        mv, th = run_["minivae"]["train_loss"][-1], run_["torch"]["train_loss"][-1]
        assert abs(mv - th) < 0.05 * mv
    assert report["kernels"]["numpy_pools"] and report["kernels"]["torch"]
    assert epoch_time.format_markdown(report).splitlines()[-1].startswith(
        "Command: `python benchmarks/epoch_time.py --models ")
