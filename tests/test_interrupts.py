"""Interruptions and full disks: every one leaves a clean run folder that --resume continues.

The real `bin/minivae` runs in a subprocess where a signal, a closed pipe or a file-size limit is
needed; every wait polls for a condition with a generous deadline (a loaded 2-core machine).
"""

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minivae import cli, files
from minivae.checkpoint import Checkpoint
from minivae.run import RunFolder
from tests.test_cli import TINY, assert_clean_error, minivae

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "bin" / "minivae"
DEADLINE = 300          # seconds: generous, the machine may be loaded


def train_argv(out, data_dir, *more):
    return [sys.executable, str(BIN), "train", "--model", "mlp", "--out", str(out),
            "--data-dir", str(data_dir), *TINY, *more]


def temporaries(folder):
    """The program's own temporary files anywhere under folder."""
    return sorted(p.name for p in Path(folder).rglob("*") if files.TEMP_NAME.fullmatch(p.name))


def metrics_epochs(out):
    lines = (Path(out) / "metrics.csv").read_text().splitlines()[1:]
    return [int(line.split(",")[0]) for line in lines]


def wait_for(condition, proc, what):
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert proc.poll() is None, f"the process ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def dead_pid():
    """The id of a process that has ended (so no process of that id is alive now)."""
    p = subprocess.Popen([sys.executable, "-c", ""])
    p.wait()
    return p.pid


def closed_pipe():
    """The write end of a pipe whose reader has gone: writing to it fails with EPIPE."""
    r, w = os.pipe()
    os.close(r)
    return w


# -- a full disk -------------------------------------------------------------------------------

def test_file_size_limit_names_the_file_and_the_run_resumes(tmp_path, synthetic_data_dir):
    """Checkpoint 2 goes over `ulimit -f` (checkpoint 1 just fits): the message names the file,
    the limit and the size needed; no temporary stays; epoch 2 appears nowhere; --resume then
    finishes the run."""
    ref = tmp_path / "ref"
    assert cli.main(["train", "--model", "mlp", "--epochs", "1", "--out", str(ref), "--data-dir",
                     str(synthetic_data_dir), *TINY]) == 0
    size1 = (ref / "checkpoints" / "model-1.npz").stat().st_size
    # Checkpoint 2 holds one more metrics row (hundreds of bytes, stored as UCS-4 text).
    limit = size1 + 200

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)     # so the write returns EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(
            resource.RLIMIT_FSIZE)[1]))

    out = tmp_path / "run"
    p = subprocess.run(train_argv(out, synthetic_data_dir, "--epochs", "3"), capture_output=True,
                       text=True, timeout=DEADLINE, preexec_fn=limited)
    assert_clean_error(p.returncode, p.stderr, "checkpoints/model-2.npz", "file-size limit",
                       "the write needed", f"--resume --out {out}", "after epoch 1", status=1)
    assert temporaries(out) == []
    assert [e for e, _ in RunFolder(out).checkpoints()] == [1]
    assert not (out / "epoch_2.png").exists() and not (out / "samples_2.png").exists()
    assert metrics_epochs(out) == [1]
    assert cli.main(["train", "--resume", "--out", str(out), "--no-progress"]) == 0
    assert metrics_epochs(out) == [1, 2, 3]


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (skips where mounting is not allowed): room for a few checkpoints."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_names_the_file_and_the_run_resumes(small_disk, capsys, synthetic_data_dir):
    out = small_disk / "run"
    rc, _, err = minivae(capsys, "train", "--model", "mlp", "--epochs", "50", "--out", out,
                         "--data-dir", synthetic_data_dir, *TINY)
    saved = [e for e, _ in RunFolder(out).checkpoints()]
    assert saved, err
    failed = saved[-1] + 1
    assert_clean_error(rc, err, f"checkpoints/model-{failed}.npz", "disk holding",
                       "is full", "the write needed", f"after epoch {saved[-1]}", status=1)
    assert temporaries(out) == []
    assert not (out / f"epoch_{failed}.png").exists()
    assert metrics_epochs(out) == saved
    (out / "checkpoints" / "model-1.npz").unlink()          # the user frees some space
    rc, _, err = minivae(capsys, "train", "--resume", "--out", out, "--epochs", failed,
                         "--no-progress")
    assert rc == 0, err
    assert metrics_epochs(out) == list(range(1, failed + 1))


def test_a_failed_write_removes_its_temporary_even_when_closing_fails(tmp_path, monkeypatch):
    """A full disk can fail the write and then the close that follows it."""
    import errno

    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(files.DiskFull) as e:
        files.write_bytes(tmp_path / "f.bin", b"x" * 5000)
    assert "f.bin" in str(e.value) and "5.0 kB" in str(e.value)
    monkeypatch.setattr(files.os, "fsync", real_fsync)
    assert os.listdir(tmp_path) == []


# -- signals -----------------------------------------------------------------------------------

@pytest.mark.parametrize("sig, status, name", [(signal.SIGTERM, 143, " (SIGTERM)"),
                                               (signal.SIGINT, 130, "")])
def test_a_signal_ends_training_in_one_line_with_a_resumable_run(sig, status, name, tmp_path,
                                                                 synthetic_data_dir):
    out = tmp_path / "run"
    proc = subprocess.Popen(train_argv(out, synthetic_data_dir, "--epochs", "100000"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(RunFolder(out).checkpoints()) >= 2, proc, "checkpoint 2")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == status, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"minivae: interrupted{name}; `minivae train --resume --out {out}` "
                          f"continues after epoch "), err
    assert temporaries(out) == []
    newest, path = RunFolder(out).checkpoints()[-1]
    assert Checkpoint(path).epoch == newest
    assert cli.main(["train", "--resume", "--out", str(out), "--epochs", str(newest + 1),
                     "--no-progress"]) == 0


def test_an_interruption_removes_the_temporaries_being_written(tmp_path):
    target = files.Replacing(tmp_path / "checkpoint.npz")
    assert temporaries(tmp_path) == [target.temp.name]
    files.remove_live()
    assert temporaries(tmp_path) == []


def test_stale_temporaries_of_killed_runs_are_removed_and_nothing_else(tmp_path, capsys,
                                                                       synthetic_data_dir):
    out = tmp_path / "run"
    common = ["--out", out, "--data-dir", synthetic_data_dir, *TINY]
    assert minivae(capsys, "train", "--model", "mlp", "--epochs", "1", *common)[0] == 0
    dead, alive = dead_pid(), os.getppid()
    stale = [out / f".loss.png.tmp{dead}", out / "checkpoints" / f".model-2.npz.tmp{dead}",
             out / f".metrics.csv.tmp{dead}"]
    kept = [out / f".epoch_2.png.tmp{alive}",     # a process still writing it
            out / "notes.tmp123", out / ".notes", out / f"model-2.npz.tmp{dead}",
            out / "checkpoints" / f".model-2.npz.tmp{dead}.bak"]
    for p in stale + kept:
        p.write_bytes(b"x")
    rc, _, err = minivae(capsys, "train", "--resume", "--epochs", "2", *common)
    assert rc == 0, err
    lines = [line for line in err.splitlines() if "stale" in line]
    assert len(lines) == 1 and "removed 3 stale temporary file(s)" in lines[0], err
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)


# -- a closed stdout pipe ----------------------------------------------------------------------

def test_training_outlives_the_reader_of_its_output(tmp_path, synthetic_data_dir):
    """`minivae train ... | head -1`: the reader goes away, training goes on to the end."""
    w = closed_pipe()
    try:
        p = subprocess.run(train_argv(tmp_path / "run", synthetic_data_dir, "--epochs", "3"),
                           stdout=w, stderr=subprocess.PIPE, text=True, timeout=DEADLINE)
    finally:
        os.close(w)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert [e for e, _ in RunFolder(tmp_path / "run").checkpoints()] == [1, 2, 3]


def test_short_commands_end_quietly_on_a_closed_pipe(tmp_path, synthetic_data_dir):
    run = tmp_path / "run"
    assert cli.main(["train", "--model", "mlp", "--epochs", "1", "--out", str(run),
                     "--data-dir", str(synthetic_data_dir), *TINY]) == 0
    # argparse drops its help text quietly itself; minivae ends as a tool killed by SIGPIPE.
    for argv, status in ((["--help"], 0), (["train", "--help"], 0),
                         (["evaluate", str(run), "--backend", "numpy", "--iw-samples", "2"],
                          128 + signal.SIGPIPE)):
        w = closed_pipe()
        try:
            p = subprocess.run([sys.executable, str(BIN), *argv], stdout=w,
                               stderr=subprocess.PIPE, text=True, timeout=DEADLINE)
        finally:
            os.close(w)
        assert p.returncode == status and p.stderr == "", (argv, p.stderr)


def test_the_resume_command_pastes_back_into_a_shell(tmp_path):
    """A run folder named with a space and a non-ASCII letter: the command the interrupt line
    gives is one a shell takes as it is."""
    import shlex

    from minivae.run import resume_command

    out = tmp_path / "runs" / "ü 2"
    command = resume_command(out)
    assert shlex.split(command) == ["minivae", "train", "--resume", "--out", str(out)]
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "model-3.npz").write_bytes(b"")
    hint = cli._resume_hint(type("Args", (), {"run_folder": out})())
    assert f"`{command}` continues after epoch 3" in hint
