"""What a practitioner trips on (issue 21, in part): messages that point to the right place,
limits said as limits, and what users of similar tools expect from `evaluate`."""

import json

import pytest

from minivae import cli, download

TINY = ["--hidden-dim", "16", "--batch-size", "32", "--sample-size", "3", "--backend", "numpy",
        "--no-progress", "--no-download"]


def run_cli(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, synthetic_data_dir):
    out = tmp_path_factory.mktemp("practitioner") / "run"
    assert cli.main(["train", "--model", "mlp", "--limit", "128", "--epochs", "1", "--out",
                     str(out), "--data-dir", str(synthetic_data_dir), *TINY]) == 0
    return out


def test_abbreviated_options_are_refused_and_point_to_the_sub_command(capsys):
    rc, _, err = run_cli(capsys, "train", "--epoch", "3")
    assert rc == 2 and err == ("minivae: error: unrecognized arguments: --epoch 3 (see "
                               "`minivae train --help`)\n")
    rc, _, err = run_cli(capsys, "plot", "somewhere", "--bogus")
    assert rc == 2 and "(see `minivae plot --help`)" in err


@pytest.mark.parametrize("lo, hi", [("0", "inf"), ("0", "1e308"), ("-inf", "inf"),
                                    ("nan", "1"), ("-11", "0")])
def test_traverse_range_must_be_finite_and_near_the_prior(capsys, lo, hi):
    rc, _, err = run_cli(capsys, "plot", "somewhere", "--traverse-range", lo, hi)
    ours = [line for line in err.splitlines() if line.startswith("minivae")]
    assert rc == 2 and len(ours) == 1 and "must be a finite number within ±10" in ours[0]


def test_negative_values_still_parse_as_values(capsys, tiny_run, synthetic_data_dir):
    rc, _, err = run_cli(capsys, "plot", tiny_run, "--traverse-range", "-2.5", "-1e-1",
                         "--data-dir", synthetic_data_dir, "--no-download", "--backend", "numpy")
    assert rc == 0, err


def test_sample_size_is_capped_and_must_fit_the_images(capsys, tmp_path, synthetic_data_dir):
    base = ["train", "--model", "mlp", "--epochs", "1", "--data-dir", synthetic_data_dir,
            "--hidden-dim", "16", "--backend", "numpy", "--no-progress", "--no-download"]
    rc, _, err = run_cli(capsys, *base, "--sample-size", "1000", "--out", tmp_path / "a")
    assert rc == 1 and "--sample-size must be at most 32" in err
    rc, _, err = run_cli(capsys, *base, "--sample-size", "20", "--limit", "300",
                         "--out", tmp_path / "b")
    assert rc == 1 and "asks for 20x20 = 400 training images" in err and "--sample-size to 17" \
        in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_log_every_without_tensorboard_warns(capsys, tmp_path, synthetic_data_dir):
    rc, _, err = run_cli(capsys, "train", "--model", "mlp", "--limit", "64", "--epochs", "1",
                         "--log-every", "5", "--out", tmp_path / "r", "--data-dir",
                         synthetic_data_dir, *TINY)
    assert rc == 0 and "warning: --log-every sets the TensorBoard interval" in err


def test_the_epoch_line_shows_the_kl_weight_during_a_warm_up(capsys, tmp_path,
                                                             synthetic_data_dir):
    rc, out, _ = run_cli(capsys, "train", "--model", "mlp", "--limit", "128", "--epochs", "2",
                         "--kl-warmup", "6", "--out", tmp_path / "r", "--data-dir",
                         synthetic_data_dir, *TINY)
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert rc == 0 and "KL weight β 0.5 (warm-up)" in lines[0]     # step 3 (from 0) of 6
    assert "warm-up" not in lines[1]


def test_a_missing_file_hint_keeps_the_data_dir(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "train", "--model", "mlp", "--data-dir", tmp_path / "nothing",
                         "--no-download", "--out", tmp_path / "r", "--backend", "numpy")
    assert rc == 1 and f"minivae download --dataset mnist --data-dir {tmp_path / 'nothing'}" in err


def test_fashion_mnist_has_a_second_source():
    sources = download.DATASETS["fashion-mnist"]["mirrors"]
    assert len(sources) == 2 and "zalandoresearch/fashion-mnist" in sources[1]


def test_train_help_says_what_batch_size_and_latent_dim_default_to(capsys):
    rc, out, _ = run_cli(capsys, "train", "--help")
    assert rc == 0
    flat = " ".join(out.split())
    from minivae.models import MODELS

    for key, what in (("batch_size", "images per training step"), ("latent_dim",
                                                                    "dimensions of z")):
        each = ", ".join(f"{spec.defaults[key]} for {name}" for name, spec in MODELS.items())
        assert f"{what} (default: the seed's, {each})" in flat
    assert "128 for mlp, 64 for conv" in flat


def test_evaluate_json_and_the_bound_said_as_a_bound(capsys, tiny_run, synthetic_data_dir):
    common = [tiny_run, "--data-dir", synthetic_data_dir, "--no-download", "--backend", "numpy",
              "--iw-samples", "4"]
    rc, out, _ = run_cli(capsys, "evaluate", *common, "--json")
    r = json.loads(out)
    assert rc == 0 and r["neg_log_px"] <= r["neg_elbo"] and r["latent"]["active_units"] >= 0
    rc, out, _ = run_cli(capsys, "evaluate", *common)
    assert "upper bound on -log p(x)" in out
    rc, out, _ = run_cli(capsys, "evaluate", *common, "--limit", "1")
    assert rc == 0 and "one test image: the means have no variance" in out


# -- damaged state ---------------------------------------------------------------------------

def test_a_bad_local_copy_of_a_dataset_file_is_said(capsys, tmp_path, real_data_mirror):
    data = tmp_path / "data"
    assert cli.main(["download", "--dataset", "mnist", "--data-dir", str(data),
                     "--mirror", str(real_data_mirror)]) == 0
    capsys.readouterr()
    target = data / "mnist" / "t10k-labels-idx1-ubyte.gz"
    target.write_bytes(target.read_bytes()[:100])                  # truncated
    rc, _, err = run_cli(capsys, "download", "--dataset", "mnist", "--data-dir", data,
                         "--mirror", real_data_mirror)
    assert rc == 0 and f"{target}: the local copy was bad" in err


def test_offline_says_where_else_the_files_can_come_from(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("MINIVAE_MIRROR", raising=False)
    monkeypatch.setitem(download.DATASETS["mnist"], "mirrors", ["http://127.0.0.1:9/"])
    rc, _, err = run_cli(capsys, "train", "--model", "mlp", "--data-dir", tmp_path / "d",
                         "--out", tmp_path / "r", "--backend", "numpy", "--no-progress")
    last = err.strip().splitlines()[-1]
    assert rc == 1 and last.startswith("minivae: error:") and "cannot reach 127.0.0.1" in last
    for hint in ("--mirror DIR", "MINIVAE_MIRROR", "--no-download"):
        assert hint in last


@pytest.fixture
def trained(tmp_path, synthetic_data_dir):
    out = tmp_path / "run"
    assert cli.main(["train", "--model", "mlp", "--limit", "128", "--epochs", "1", "--out",
                     str(out), "--data-dir", str(synthetic_data_dir), *TINY]) == 0
    return out


def test_a_damaged_config_json_is_named_on_resume(capsys, trained):
    config = trained / "config.json"
    config.write_text(config.read_text()[:40])                       # truncated
    rc, _, err = run_cli(capsys, "train", "--resume", "--out", trained, "--epochs", "2")
    assert rc == 1 and f"{config} is damaged" in err and err.count("\n") == 1
    config.write_text(json.dumps({"model": "resnet"}))               # readable, a bad value
    rc, _, err = run_cli(capsys, "train", "--resume", "--out", trained, "--epochs", "2")
    assert rc == 1 and err.startswith(f"minivae: error: {config}: unknown model 'resnet'")


def test_resume_where_no_checkpoint_restores_is_an_error(capsys, trained):
    ckpt = trained / "checkpoints" / "model-1.npz"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    before = (trained / "metrics.csv").read_text()
    rc, _, err = run_cli(capsys, "train", "--resume", "--out", trained, "--epochs", "2",
                         "--no-progress")
    assert rc == 1 and "none of its checkpoints restores" in err
    assert f"remove {trained / 'checkpoints'}" in err
    assert (trained / "metrics.csv").read_text() == before           # nothing overwritten


def test_a_run_with_no_finished_epoch_says_so(capsys, trained, synthetic_data_dir):
    (trained / "checkpoints" / "model-1.npz").unlink()
    rc, _, err = run_cli(capsys, "plot", trained, "--data-dir", synthetic_data_dir,
                         "--no-download")
    assert rc == 1 and "has no finished epoch yet" in err
    assert f"minivae train --resume --out {trained}" in err


# -- plot ------------------------------------------------------------------------------------

def test_plot_replaces_its_own_pictures_only_and_records_the_epoch(capsys, trained,
                                                                   synthetic_data_dir):
    common = [trained, "--data-dir", synthetic_data_dir, "--no-download", "--backend", "numpy"]
    (trained / "notes.txt").write_text("mine")
    assert run_cli(capsys, "plot", *common)[0] == 0
    first = json.loads((trained / "plotted.json").read_text())
    assert first["epoch"] == 1
    images = [n for n in first["files"] if n.startswith("test-image-")]
    assert len(images) == 8 and all((trained / n).is_file() for n in first["files"])
    assert run_cli(capsys, "plot", *common, "--limit", "5")[0] == 0      # other test images
    second = json.loads((trained / "plotted.json").read_text())
    kept = {p.name for p in trained.iterdir()}
    assert len([n for n in second["files"] if n.startswith("test-image-")]) == 5
    assert {n for n in first["files"] if n not in second["files"]}.isdisjoint(kept)
    assert {"notes.txt", "epoch_1.png", "original.png", "loss.png"} <= kept


def test_plot_out_writes_elsewhere_and_a_bad_folder_is_named(capsys, trained, tmp_path,
                                                             synthetic_data_dir):
    common = [trained, "--data-dir", synthetic_data_dir, "--no-download", "--backend", "numpy"]
    rc, out, _ = run_cli(capsys, "plot", *common, "--out", tmp_path / "pictures")
    assert rc == 0 and (tmp_path / "pictures" / "manifold.png").is_file()
    assert not (trained / "manifold.png").exists() and str(tmp_path / "pictures") in out
    (tmp_path / "a-file").write_text("")
    rc, _, err = run_cli(capsys, "plot", *common, "--out", tmp_path / "a-file")
    assert rc == 1 and f"cannot write pictures into {tmp_path / 'a-file'}" in err
    assert ".tmp" not in err


def test_loss_png_marks_the_warm_up():
    from minivae.plots import warmup_epochs

    rows = [{"epoch": 1, "beta": 0.25}, {"epoch": 2, "beta": 0.75}, {"epoch": 3, "beta": 1.0},
            {"epoch": 4, "beta": 1.0}]
    assert warmup_epochs(rows) == ([1, 2], 1.0)
    assert warmup_epochs([{"epoch": 1, "beta": 1.0}]) == ([], 1.0)
    assert warmup_epochs([{"epoch": 1}]) == ([], None)                 # a run saved before β


# -- threads ---------------------------------------------------------------------------------

def test_threads_default_to_the_cores_the_machine_leaves_free(monkeypatch):
    from minivae import threads

    for name in threads.ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    monkeypatch.setattr(threads, "others_running", lambda: 0)
    assert threads.choose() == (4, "auto: 4 cores, 0 other processes running")
    monkeypatch.setattr(threads, "others_running", lambda: 3)
    assert threads.choose()[0] == 1
    monkeypatch.setattr(threads, "others_running", lambda: 9)
    assert threads.choose()[0] == 1                                    # at least one
    assert threads.choose(3) == (3, "--threads 3")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    assert threads.choose() == (2, "OPENBLAS_NUM_THREADS=2")


def test_train_says_its_threads_first_and_saves_them(capsys, tmp_path, synthetic_data_dir):
    rc, out, _ = run_cli(capsys, "train", "--model", "mlp", "--limit", "64", "--epochs", "1",
                         "--out", tmp_path / "r", "--data-dir", synthetic_data_dir, *TINY,
                         "--threads", "2")
    assert rc == 0 and out.splitlines()[0].endswith(": 2 BLAS threads (--threads 2)")
    assert json.loads((tmp_path / "r" / "config.json").read_text())["threads"] == 2
    rc, out, _ = run_cli(capsys, "train", "--resume", "--out", tmp_path / "r", "--epochs", "2",
                         "--no-progress")
    assert rc == 0 and ": 2 BLAS threads" in out.splitlines()[0]      # the run's own count
    for command in ("evaluate", "plot", "report", "gradcheck"):
        rc, out, _ = run_cli(capsys, command, "--help")
        assert rc == 0 and "--threads N" in out


def test_the_busy_count_leaves_out_this_process_and_passing_processes():
    """This process's own threads (OpenBLAS's spin right after start) are not other work."""
    from minivae import threads

    assert threads.others_running() >= 0
    assert threads._own_running() >= 1                              # this thread, running


def test_more_threads_than_cores_warns_once(monkeypatch, capsys):
    from minivae import threads

    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "_WARNED", set())
    assert threads.choose(2) == (2, "--threads 2")
    assert capsys.readouterr().err == ""
    for _ in range(3):
        assert threads.choose(64)[0] == 64
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--threads 64 is more than the 2 cores" in err
