"""One writer per run folder, with real processes: a second `train` (or `--resume`) into a folder
that is training fails at once naming the folder and the holder, before writing anything; plot and
evaluate keep working on it; a killed run leaves no stale lock."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

MINIVAE = [sys.executable, str(ROOT / "bin" / "minivae")]


def wait_for(condition, seconds=120, what="a condition"):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def minivae(*args, timeout=300):
    return subprocess.run([*MINIVAE, *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


@pytest.mark.skipif(os.name == "nt", reason="signals as on POSIX")
def test_a_training_run_has_one_writer(tmp_path, synthetic_data_dir):
    out = tmp_path / "same"
    common = ["--model", "conv", "--limit", 640, "--hidden-dim", 16, "--data-dir",
              synthetic_data_dir, "--no-download", "--no-progress", "--backend", "numpy",
              "--threads", 1]
    first = subprocess.Popen([*MINIVAE, "train", *map(str, common), "--epochs", "500",
                              "--out", str(out)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        lock = out / ".lock"
        wait_for(lambda: lock.is_file() and lock.read_text().strip() == str(first.pid),
                 what="the first run's lock")
        wait_for(lambda: (out / "checkpoints" / "model-1.npz").is_file(), what="epoch 1")
        config = (out / "config.json").read_text()
        started = time.monotonic()
        second = minivae("train", *common, "--epochs", 3, "--seed", 1, "--out", out)
        assert second.returncode == 1 and time.monotonic() - started < 60
        assert f"{out} is being trained by another process (process id {first.pid})" in \
            second.stderr, second.stderr
        resumed = minivae("train", "--resume", "--out", out, "--no-progress")
        assert resumed.returncode == 1 and f"process id {first.pid}" in resumed.stderr
        assert (out / "config.json").read_text() == config           # nothing written
        # nothing of the refused processes: the lock and what the first one is writing now
        assert [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".lock"
                and not p.name.endswith(f".tmp{first.pid}")] == []
        # the run is readable while it trains
        plotted = minivae("plot", out, "--out", tmp_path / "pictures")
        assert plotted.returncode == 0, plotted.stderr
        evaluated = minivae("evaluate", out, "--iw-samples", 2, "--limit", 64)
        assert evaluated.returncode == 0, evaluated.stderr
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    # killed: no stale lock; --resume carries on (one epoch more than the newest checkpoint)
    newest = max(int(p.stem.split("-")[1]) for p in (out / "checkpoints").glob("model-*.npz"))
    again = minivae("train", "--resume", "--out", out, "--epochs", newest + 1, "--no-progress")
    assert again.returncode == 0, again.stderr
    assert Path(out / "checkpoints" / f"model-{newest + 1}.npz").is_file()
