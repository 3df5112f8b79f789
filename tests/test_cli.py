"""The `minivae` command line: a whole session in-process, and every kind of bad input."""

import gzip
import http.server
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from minivae import cli
from minivae import download as dl
from minivae.checkpoint import CHECKPOINT_FORMAT
from minivae.run import RunFolder

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "bin" / "minivae"

TINY = ["--dataset", "fashion-mnist", "--limit", "256", "--batch-size", "64", "--hidden-dim",
        "16", "--sample-size", "3", "--backend", "numpy", "--no-progress", "--no-download"]


def minivae(capsys, *argv):
    """Run `minivae argv...` in-process: (exit status, stdout, stderr)."""
    rc = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_clean_error(rc, err, *fragments, status=None):
    assert rc != 0 if status is None else rc == status
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("minivae: error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, synthetic_data_dir):
    """`minivae train --model mlp` for 2 epochs through main(), shared by the tests below."""
    out = tmp_path_factory.mktemp("cli") / "run"
    rc = cli.main(["train", "--model", "mlp", "--epochs", "2", "--out", str(out), "--data-dir",
                   str(synthetic_data_dir), *TINY])
    assert rc == 0
    return out


def test_train_evaluate_plot_session(cli_run, capsys, synthetic_data_dir):
    out = cli_run
    assert (out / "metrics.csv").read_text().count("\n") == 3
    rc, stdout, err = minivae(capsys, "evaluate", out, "--iw-samples", "20", "--backend", "numpy")
    assert rc == 0, err
    assert "negative ELBO" in stdout and "IWAE K=20" in stdout and "256 fashion-mnist" in stdout
    rc, stdout, err = minivae(capsys, "plot", out, "--epoch", "1", "--backend", "numpy")
    assert rc == 0, err
    plotted = json.loads((out / "plotted.json").read_text())
    assert plotted["epoch"] == 1 and "clustering.png" in plotted["files"]
    assert sum(n.startswith("reconstruction-") for n in plotted["files"]) == 8


def test_auto_backend_says_what_it_picked(tmp_path, capsys, synthetic_data_dir):
    rc, stdout, err = minivae(capsys, "train", "--model", "mlp", "--epochs", "1", "--out",
                              tmp_path / "r", "--data-dir", synthetic_data_dir,
                              *[a if a != "numpy" else "auto" for a in TINY])
    assert rc == 0, err
    picked = err.splitlines()[0]
    assert picked in ("minivae: backend: numpy", "minivae: backend: cupy"), err  # a few words
    assert "epoch 1/1: train loss" in stdout
    # -v adds the reason for the choice
    rc, stdout, err = minivae(capsys, "train", "--model", "mlp", "--epochs", "1", "--out",
                              tmp_path / "v", "--data-dir", synthetic_data_dir, "-v",
                              *[a if a != "numpy" else "auto" for a in TINY])
    assert rc == 0, err
    assert err.splitlines()[0].startswith(picked + " (auto: "), err


def test_resume_flag(cli_run, tmp_path, capsys, synthetic_data_dir):
    out = tmp_path / "r"
    common = ["--model", "mlp", "--out", out, "--data-dir", synthetic_data_dir, *TINY]
    assert minivae(capsys, "train", "--epochs", "1", *common)[0] == 0
    rc, _, err = minivae(capsys, "train", "--epochs", "2", *common)
    assert_clean_error(rc, err, "--resume")
    rc, stdout, err = minivae(capsys, "train", "--epochs", "2", "--resume", *common)
    assert rc == 0, err
    assert "resuming" in stdout
    strip = lambda p: [l.rsplit(",", 1)[0] for l in p.read_text().splitlines()]  # noqa: E731
    assert strip(out / "metrics.csv") == strip(cli_run / "metrics.csv")


def test_help_and_registered_subcommands(capsys):
    assert cli.main(["--help"]) == 0
    for sub in ("train", "download", "evaluate", "plot", "gradcheck", "bench"):
        assert cli.main([sub, "--help"]) == 0, sub
    out = capsys.readouterr().out
    assert "--iw-samples" in out and "--tensorboard" in out and "--mirror" in out


@pytest.mark.parametrize("argv,fragment", [
    ([], "required"),
    (["frobnicate"], "invalid choice"),
    (["train", "--model", "transformer"], "--model"),
    (["train", "--dataset", "cifar10"], "--dataset"),
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--epochs", "-3"], "--epochs"),
    (["train", "--epochs", "two"], "--epochs"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--lr", "0"], "--lr"),
    (["train", "--lr", "-1e-3"], "--lr"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--lr", "inf"], "--lr"),
    (["train", "--beta", "-1"], "--beta"),
    (["train", "--latent-dim", "0"], "--latent-dim"),
    (["train", "--limit", "0"], "--limit"),
    (["train", "--dtype", "float16"], "--dtype"),
    (["train", "--backend", "tpu"], "--backend"),
    (["train", "--bogus-flag"], "unrecognized"),
    (["evaluate"], "RUN_DIR"),
    (["evaluate", "x", "--iw-samples", "0"], "--iw-samples"),
    (["plot", "x", "--epoch", "-1"], "--epoch"),
])
def test_bad_command_lines(capsys, argv, fragment):
    rc, _, err = minivae(capsys, *argv)
    assert_clean_error(rc, err, fragment, status=2)


def test_unusable_backend(capsys, tmp_path, synthetic_data_dir):
    from minivae.backend import cupy_status

    if cupy_status()[0] is not None:
        pytest.skip("CuPy is usable here")
    rc, _, err = minivae(capsys, "train", "--backend", "cupy", "--out", tmp_path / "r")
    assert_clean_error(rc, err, "cupy", status=1)


def test_unwritable_out_dir(capsys, tmp_path, synthetic_data_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    rc, _, err = minivae(capsys, "train", "--out", blocker / "run", "--data-dir",
                         synthetic_data_dir, *TINY)
    assert_clean_error(rc, err, "cannot write to output folder", status=1)
    rc, _, err = minivae(capsys, "train", "--out", blocker, "--data-dir", synthetic_data_dir,
                         *TINY)
    assert_clean_error(rc, err, "not a folder", status=1)


def test_missing_data(capsys, tmp_path):
    rc, _, err = minivae(capsys, "train", "--out", tmp_path / "r", "--data-dir",
                         tmp_path / "empty", *TINY)
    assert_clean_error(rc, err, "missing", status=1)


def test_download_failure_is_one_line(capsys, tmp_path):
    rc, _, err = minivae(capsys, "download", "--dataset", "mnist", "--data-dir", tmp_path / "d",
                         "--mirror", tmp_path / "no-such-mirror")
    # The data module may print progress notes; the last line is the error.
    last = err.strip().splitlines()[-1]
    assert rc == 1 and last.startswith("minivae: error: ") and "Traceback" not in err


def test_bad_run_folders(capsys, tmp_path, cli_run):
    for cmd in ("evaluate", "plot"):
        rc, _, err = minivae(capsys, cmd, tmp_path / "nope")
        assert_clean_error(rc, err, "does not exist", status=1)
        empty = tmp_path / "empty"
        empty.mkdir(exist_ok=True)
        rc, _, err = minivae(capsys, cmd, empty)
        assert_clean_error(rc, err, "no checkpoints", status=1)
        rc, _, err = minivae(capsys, cmd, cli_run, "--epoch", "7")
        assert_clean_error(rc, err, "epoch 7", "epochs saved: 1, 2", status=1)


def corrupt_copies(src, dst):
    """Run folders whose newest checkpoint is broken in different ways."""
    import shutil

    good = (src / "checkpoints" / "model-2.npz").read_bytes()
    cases = {
        "garbage": b"this is not a checkpoint",
        "truncated": good[: len(good) // 2],
        "empty": b"",
    }
    # An npz holding a pickled object array: must be refused, never unpickled.
    buf = io.BytesIO()
    np.savez(buf, format=np.array(CHECKPOINT_FORMAT), epoch=np.array(2),
             config=np.array([{"evil": 1}], dtype=object))
    cases["pickle"] = buf.getvalue()
    # A valid zip without the checkpoint's entries.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("hello.txt", "hi")
    cases["zip"] = buf.getvalue()
    out = {}
    for name, blob in cases.items():
        run = dst / name
        shutil.copytree(src, run)
        (run / "checkpoints" / "model-2.npz").write_bytes(blob)
        out[name] = run
    return out


def test_corrupt_checkpoints(capsys, tmp_path, cli_run):
    """A damaged newest checkpoint is skipped, saying so; asked for by --epoch, it is an error
    naming the file and the epochs that load; never a word of pickles."""
    for name, run in corrupt_copies(cli_run, tmp_path).items():
        for cmd in ("evaluate", "plot", "report"):
            rc, _, err = minivae(capsys, cmd, run, "--backend", "numpy")
            assert rc == 0, (name, cmd, err)
            line = next(x for x in err.splitlines() if "skipping epoch 2" in x)
            assert "model-2.npz is damaged or not a checkpoint" in line and "epoch 1" in line
            assert "allow_pickle" not in err and "pickled" not in err
            rc, _, err = minivae(capsys, cmd, run, "--backend", "numpy", "--epoch", "2")
            assert_clean_error(rc, err, "model-2.npz is damaged or not a checkpoint",
                               "epochs that load: 1", status=1)
            assert "allow_pickle" not in err and "pickled" not in err


def test_config_mismatch_in_checkpoint(capsys, tmp_path, cli_run):
    """A checkpoint whose parameters do not fit the model its config describes."""
    import shutil

    run = tmp_path / "mismatch"
    shutil.copytree(cli_run, run)
    path = run / "checkpoints" / "model-2.npz"
    with np.load(path, allow_pickle=False) as z:
        items = {k: z[k] for k in z.files}
    items["param/encoder.0.W"] = items["param/encoder.0.W"][:, :3]
    with open(path, "wb") as f:
        np.savez(f, **items)
    rc, _, err = minivae(capsys, "evaluate", run, "--backend", "numpy")
    assert_clean_error(rc, err, "encoder.0.W", status=1)


def test_bin_minivae_subprocess_bad_input():
    p = subprocess.run([sys.executable, str(BIN), "train", "--epochs", "0"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip() == ("minivae: error: argument --epochs: must be a positive integer, "
                                "got 0 (see `minivae train --help`)")
    p = subprocess.run([sys.executable, "-m", "minivae", "evaluate", "/no/such/run"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 1 and p.stderr.startswith("minivae: error: run folder")
    assert "Traceback" not in p.stderr


def test_killed_process_resumes_to_the_same_numbers(tmp_path, synthetic_data_dir, cli_run):
    """SIGKILL a real `bin/minivae train` at an arbitrary point after its first checkpoint,
    then resume: the result is bit-identical to the uninterrupted run (cli_run)."""
    out = tmp_path / "killed"
    argv = [sys.executable, str(BIN), "train", "--model", "mlp", "--epochs", "2", "--out",
            str(out), "--data-dir", str(synthetic_data_dir), *TINY]
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 120
        while not (out / "checkpoints" / "model-1.npz").exists():
            assert proc.poll() is None, "training ended before its first checkpoint"
            assert time.time() < deadline
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    rc = cli.main(["train", "--model", "mlp", "--epochs", "2", "--out", str(out), "--data-dir",
                   str(synthetic_data_dir), "--resume", *TINY])
    assert rc == 0
    strip = lambda p: [l.rsplit(",", 1)[0] for l in p.read_text().splitlines()]  # noqa: E731
    assert strip(out / "metrics.csv") == strip(cli_run / "metrics.csv")
    with np.load(out / "checkpoints" / "model-2.npz") as a, \
            np.load(cli_run / "checkpoints" / "model-2.npz") as b:
        for k in a.files:
            if k.startswith(("param/", "optim/", "rng/")):
                assert np.array_equal(a[k], b[k]), k


def test_mirror_flag_goes_in_front_of_the_default_sources(capsys, tmp_path, monkeypatch,
                                                          real_data_mirror):
    """A --mirror that fails falls through to $MINIVAE_MIRROR (then the public mirrors)."""
    monkeypatch.setenv("MINIVAE_MIRROR", str(real_data_mirror))
    rc, out, err = minivae(capsys, "download", "--dataset", "fashion-mnist", "--data-dir",
                           tmp_path / "cache", "--mirror", tmp_path / "no-such-mirror")
    assert rc == 0, err
    assert (tmp_path / "cache" / "fashion-mnist" / "train-images-idx3-ubyte.gz").is_file()




def test_a_missing_dependency_is_named():
    msg = cli._error_message(ModuleNotFoundError("No module named 'PIL'", name="PIL"))
    assert "'PIL' is missing" in msg and "pip install" in msg and "\n" not in msg


def test_progress_bars_only_where_stderr_is_a_terminal(cli_run, capsys, tmp_path,
                                                       synthetic_data_dir, monkeypatch):
    """Logs get the per-epoch lines, not a bar redrawn at every step; a terminal gets the bars."""
    rc, stdout, err = minivae(capsys, "evaluate", cli_run, "--iw-samples", "5", "--backend",
                              "numpy")
    assert rc == 0 and "\r" not in err and "evaluate (K=5)" not in err, err
    argv = ["train", "--model", "mlp", "--epochs", "1", "--out", tmp_path / "r", "--data-dir",
            synthetic_data_dir, *[a for a in TINY if a != "--no-progress"]]
    rc, stdout, err = minivae(capsys, *argv)
    assert rc == 0 and "\r" not in err and "batch" not in err, err
    assert "epoch 1/1: train loss" in stdout

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    from minivae.progress import bar

    monkeypatch.setattr(sys, "stderr", Terminal())
    with bar(True, total=3, desc="shown") as b:
        b.update(3)
    assert "shown" in sys.stderr.getvalue()
    monkeypatch.setattr(sys, "stderr", Terminal())
    with bar(False, total=3, desc="hidden") as b:       # --no-progress
        b.update(3)
    assert sys.stderr.getvalue() == ""


def test_a_broken_module_is_one_line_or_a_traceback_under_debug(tmp_path):
    """cli.py imports the program plainly: an error in any module reaches the user as one line
    (not as "not available"), and MINIVAE_DEBUG=1 shows where it happened."""
    shutil.copytree(ROOT / "minivae", tmp_path / "minivae",
                    ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "minivae" / "gradcheck.py", "a") as f:
        f.write("\nraise ImportError('gradcheck is broken here')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    env.pop("MINIVAE_DEBUG", None)
    p = subprocess.run([sys.executable, "-m", "minivae", "train", "--help"], capture_output=True,
                       text=True, timeout=120, env=env, cwd=tmp_path)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [
        "minivae: error: minivae cannot be imported (ImportError: gradcheck is broken here; set "
        "MINIVAE_DEBUG=1 for the traceback)"]
    p = subprocess.run([sys.executable, "-m", "minivae", "train", "--help"], capture_output=True,
                       text=True, timeout=120, env=dict(env, MINIVAE_DEBUG="1"), cwd=tmp_path)
    assert p.returncode != 0 and "Traceback" in p.stderr and "gradcheck.py" in p.stderr


# -- resume asks for nothing twice ---------------------------------------------------------

def test_resume_takes_the_runs_own_settings(cli_run, tmp_path, capsys, synthetic_data_dir):
    out = tmp_path / "r"
    assert minivae(capsys, "train", "--model", "mlp", "--epochs", "1", "--out", out,
                   "--data-dir", synthetic_data_dir, *TINY)[0] == 0
    config = (out / "config.json").read_text()
    # Only --out and a longer --epochs: the rest comes from the run folder.
    rc, stdout, err = minivae(capsys, "train", "--resume", "--out", out, "--epochs", "2",
                              "--no-progress")
    assert rc == 0, err
    assert "resuming" in stdout
    strip = lambda p: [l.rsplit(",", 1)[0] for l in p.read_text().splitlines()]  # noqa: E731
    assert strip(out / "metrics.csv") == strip(cli_run / "metrics.csv")
    assert (out / "config.json").read_text() == config.replace('"epochs": 1', '"epochs": 2')
    # A no-op resume with fewer epochs leaves config.json as the run was trained.
    rc, stdout, err = minivae(capsys, "train", "--resume", "--out", out, "--epochs", "1")
    assert rc == 0 and "already trained to epoch 2" in stdout, err
    assert '"epochs": 2' in (out / "config.json").read_text()
    # Flags given again must agree, and the message names the flag.
    for flag, value, saved in (("--lr", "0.01", "0.001"), ("--batch-size", "32", "64"),
                               ("--model", "conv", "mlp")):
        rc, _, err = minivae(capsys, "train", "--resume", "--out", out, flag, value)
        assert_clean_error(rc, err, f"trained with {flag} {saved}", f"not {flag} {value}",
                           status=1)
    rc, _, err = minivae(capsys, "train", "--resume", "--out", out, "--batch-size", "64",
                         "--epochs", "2", "--backend", "numpy")
    assert rc == 0, err


def test_resume_of_a_missing_run(tmp_path, capsys, synthetic_data_dir):
    typo = tmp_path / "typo"
    rc, _, err = minivae(capsys, "train", "--resume", "--out", typo, "--epochs", "3")
    assert_clean_error(rc, err, f"cannot resume {typo}: it does not exist", "--model", status=1)
    assert not typo.exists()
    # A job scheduler's restart pattern: the same full command line every time.
    rc, stdout, err = minivae(capsys, "train", "--resume", "--out", typo, "--model", "mlp",
                              "--epochs", "1", "--data-dir", synthetic_data_dir, *TINY)
    assert rc == 0, err
    assert f"{typo} does not exist; starting a new run" in err
    assert [e for e, _ in RunFolder(typo).checkpoints()] == [1]


def test_keep_checkpoints(tmp_path, capsys, synthetic_data_dir):
    out = tmp_path / "r"
    common = ["--out", out, "--data-dir", synthetic_data_dir, *TINY]
    assert minivae(capsys, "train", "--model", "mlp", "--epochs", "3", "--keep-checkpoints", "2",
                   *common)[0] == 0
    assert [e for e, _ in RunFolder(out).checkpoints()] == [2, 3]
    assert minivae(capsys, "train", "--resume", "--out", out, "--epochs", "4",
                   "--keep-checkpoints", "1")[0] == 0
    assert [e for e, _ in RunFolder(out).checkpoints()] == [4]
    assert minivae(capsys, "train", "--resume", "--out", out, "--epochs", "5")[0] == 0
    assert [e for e, _ in RunFolder(out).checkpoints()] == [4, 5]      # default: keep all


def test_a_failed_start_leaves_no_run_folder(tmp_path, capsys):
    rc, _, err = minivae(capsys, "train", "--out", tmp_path / "new" / "run", "--data-dir",
                         tmp_path / "empty", *TINY)
    assert_clean_error(rc, err, "missing", status=1)
    assert not (tmp_path / "new").exists()


# -- messages ------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["download", "evaluate"])
def test_ctrl_c_outside_training_does_not_mention_resume(command, capsys, monkeypatch,
                                                         cli_run):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, {"download": "download", "evaluate": "evaluate_run"}[command],
                        interrupted)
    argv = ["download", "--dataset", "mnist"] if command == "download" else ["evaluate", cli_run]
    rc, _, err = minivae(capsys, *argv)
    assert rc == 130 and err == "minivae: interrupted\n"


# -- download --dataset all ----------------------------------------------------------------

class BadMirror(http.server.BaseHTTPRequestHandler):
    """Label files: valid IDX data of the right shape that is not the real data (a checksum
    mismatch); everything else: 404."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.log.append(self.path)
        name = self.path.rsplit("/", 1)[-1]
        if "labels" in name:
            n = 60000 if name.startswith("train") else 10000
            header = (0x0801).to_bytes(4, "big") + n.to_bytes(4, "big")
            body = gzip.compress(header + bytes(n))
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()


@pytest.fixture
def bad_mirror(monkeypatch):
    """A mirror on 127.0.0.1 and no other source for either dataset (nothing leaves the host)."""
    for info in dl.DATASETS.values():
        monkeypatch.setitem(info, "mirrors", [])
    monkeypatch.setattr(dl, "DEBIAN_FASHION_MNIST", "/no/such/folder/")
    monkeypatch.delenv("MINIVAE_MIRROR", raising=False)
    monkeypatch.delenv("MINIVAE_DEBUG", raising=False)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), BadMirror)
    srv.daemon_threads = True
    srv.log = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/"
    yield srv
    srv.shutdown()
    srv.server_close()


def test_download_all_tries_every_dataset_and_sums_up(bad_mirror, tmp_path, capsys,
                                                      monkeypatch):
    argv = ["download", "--data-dir", tmp_path / "d", "--mirror", bad_mirror.url]
    rc, _, err = minivae(capsys, *argv)
    assert rc == 1
    for dataset in ("mnist", "fashion-mnist"):
        assert any(f"/{dataset}/" in p for p in bad_mirror.log), dataset
    assert "Traceback" not in err
    assert all(len(line) < 200 for line in err.splitlines()[:-1]), err     # the last names a path
    lines = [line for line in err.splitlines() if line.startswith("minivae: ")]
    assert len(lines) == 9, err
    for line in lines[:8]:
        assert ("checksum mismatch" if "labels" in line else "HTTP 404") in line, line
    assert lines[8].startswith("minivae: error: 8 file(s) of mnist, fashion-mnist could not be "
                               "downloaded"), lines[8]
    assert "--no-download" in lines[8] and "MINIVAE_DEBUG=1" in lines[8]
    # MINIVAE_DEBUG=1: every source tried, in full
    monkeypatch.setenv("MINIVAE_DEBUG", "1")
    rc, _, err = minivae(capsys, *argv)
    assert rc == 1
    assert (f"minivae: mnist/train-images-idx3-ubyte.gz: {bad_mirror.url}: HTTP 404 Not Found "
            f"(tried {bad_mirror.url}mnist/train-images-idx3-ubyte.gz") in err, err


def test_download_removes_stale_partial_downloads(bad_mirror, tmp_path, capsys):
    folder = tmp_path / "d" / "mnist"
    folder.mkdir(parents=True)
    pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                         capture_output=True, text=True).stdout.strip()
    stale = folder / f".train-images-idx3-ubyte.gz.{pid}.part"
    stale.write_bytes(b"x" * 1000)
    other = folder / "train-images-idx3-ubyte.gz.part"       # not the program's own naming
    other.write_bytes(b"x")
    rc, _, err = minivae(capsys, "download", "--dataset", "mnist", "--data-dir", tmp_path / "d",
                         "--mirror", bad_mirror.url)
    assert rc == 1
    assert "removed 1 stale partial download(s)" in err and stale.name in err
    assert not stale.exists() and other.exists()


def test_an_edited_config_json_is_named_as_the_cause(capsys, tmp_path, cli_run):
    """config.json says latent_dim 5, the checkpoints were trained with 2: the error names the
    file, the setting and both values, and blames no flag the user did not give."""
    import json
    import shutil

    run = tmp_path / "edited"
    shutil.copytree(cli_run, run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(dict(config, latent_dim=5)))
    rc, _, err = minivae(capsys, "train", "--resume", "--out", run, "--epochs", "3",
                         "--no-progress")
    assert_clean_error(rc, err, "config.json says latent_dim 5", "trained with latent_dim 2",
                       "set latent_dim back to 2", status=1)
    assert "--latent-dim" not in err


def test_manifold_covers_where_the_test_means_lie(cli_run, tmp_path, monkeypatch,
                                                  synthetic_data_dir):
    """manifold.png decodes a grid over the central 98% of the test means (a short run's means
    lie well inside [-2, 2]), or over --manifold-range."""
    from minivae import visualise
    from minivae.evaluate import posterior_means
    from minivae.run import load_run

    grids = []
    real = visualise.decode_probs

    def spy(model, z):
        if len(z) == 121:
            grids.append(np.asarray(z))
        return real(model, z)
    monkeypatch.setattr(visualise, "decode_probs", spy)
    args = ["--backend", "numpy", "--data-dir", str(synthetic_data_dir), "--no-download",
            "--limit", "200"]
    assert cli.main(["plot", str(cli_run), "--out", str(tmp_path / "a"), *args]) == 0
    model, cfg, _ = load_run(cli_run, backend="numpy")
    from minivae import data
    images, _ = data.load_for(cfg.replace(data_dir=str(synthetic_data_dir), download=False),
                              "test", 200, progress=False)
    means = posterior_means(model, images, cfg)[0]
    for k in (0, 1):
        lo, hi = np.percentile(means[:, k], [1, 99])
        assert grids[0][:, k].min() == pytest.approx(lo) and grids[0][:, k].max() == \
            pytest.approx(hi)
    assert cli.main(["plot", str(cli_run), "--out", str(tmp_path / "b"), "--manifold-range",
                     "-1", "1", *args]) == 0
    assert grids[1].min() == -1 and grids[1].max() == 1
