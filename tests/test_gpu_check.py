"""The GPU check, tested on the CPU: benchmarks/gpu_check.sh (its steps, the data folder it
prepares, its step runner and time budget) and benchmarks/gpu_bench.py (FLOP counts, its exit
without a GPU, and the whole benchmark rehearsed with NumPy standing in for CuPy)."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import types
from pathlib import Path

import numpy as np
import pytest

from minivae.backend import cupy_status

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
REAL_DATA = ROOT.parent / "shared" / "data"
FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz")
GPU_HERE = cupy_status()[0] is not None
needs_no_gpu = pytest.mark.skipif(GPU_HERE, reason="a GPU is usable here: the steps would run")
needs_bash = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def load_gpu_bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "benchmarks" / "gpu_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check(*args, env=None, script=SCRIPT):
    """Run gpu_check.sh with this interpreter as its python; env adds variables."""
    full_env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True,
                          env=full_env, timeout=120)


# --------------------------------------------------------------------------------------------
# gpu_check.sh


@needs_bash
def test_the_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


@needs_bash
def test_dry_run_lists_every_step_of_the_check():
    proc = check("--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("budget 450 s")
    steps = {line.split()[0]: line for line in lines[1:]}
    assert list(steps) == [
        "env", "pytest-cupy", "train-mlp", "plot-mlp", "evaluate-mlp", "train-conv", "plot-conv",
        "evaluate-conv", "gpu-bench", "gradcheck-plain-float64", "gradcheck-plain-float32",
        "gradcheck-fast-float64", "gradcheck-fast-float32", "bench-mlp", "bench-conv"]
    assert "-k cupy" in steps["pytest-cupy"]
    for impl in ("plain", "fast"):
        for dtype in ("float64", "float32"):
            assert f"gradcheck --backend cupy --impl {impl} --dtype {dtype}" in \
                steps[f"gradcheck-{impl}-{dtype}"]
    for model, dataset in (("mlp", "mnist"), ("conv", "fashion-mnist")):
        train = steps[f"train-{model}"]
        assert f"--model {model} --dataset {dataset} --backend cupy --epochs 1" in train
        assert "--mirror gpu-data --data-dir " in train
        assert f"bench --backend cupy --model {model}" in steps[f"bench-{model}"]
    assert "benchmarks/gpu_bench.py --json " in steps["gpu-bench"]
    # --only picks steps by name prefix
    only = check("--dry-run", "--only", "gradcheck,gpu").stdout.splitlines()[1:]
    assert [line.split()[0] for line in only] == [
        "gpu-bench", "gradcheck-plain-float64", "gradcheck-plain-float32",
        "gradcheck-fast-float64", "gradcheck-fast-float32"]


@needs_bash
def test_bad_arguments_are_one_clear_line():
    proc = check("--bogus")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "gpu_check.sh: error: unknown argument --bogus (see --help)"]


@needs_bash
@pytest.mark.skipif(not (REAL_DATA / "mnist" / FILES[0]).is_file(),
                    reason=f"the real data files are not under {REAL_DATA}")
def test_prepare_copies_the_eight_files_into_the_checkout(tmp_path):
    (tmp_path / "benchmarks").mkdir()
    script = tmp_path / "benchmarks" / "gpu_check.sh"
    shutil.copy(SCRIPT, script)
    proc = check("--prepare", str(REAL_DATA), script=script)
    assert proc.returncode == 0, proc.stderr
    total = 0
    for dataset in ("mnist", "fashion-mnist"):
        for name in FILES:
            copy, source = tmp_path / "gpu-data" / dataset / name, REAL_DATA / dataset / name
            assert copy.read_bytes() == source.read_bytes()
            total += copy.stat().st_size
    assert sorted(p.name for p in (tmp_path / "gpu-data").rglob("*") if p.is_file()) == \
        sorted(FILES * 2)                            # no partial copies left behind
    assert total < 60 * 2 ** 20                      # the device call carries 64 MiB in all
    assert f"gpu-data: {total} bytes" in proc.stdout
    assert check("--prepare", str(REAL_DATA), script=script).returncode == 0   # again: fine
    missing = check("--prepare", str(tmp_path / "nowhere"), script=script)
    assert missing.returncode == 2 and "not found" in missing.stderr


def read_archive(out):
    with tarfile.open(out / "gpu-check.tar.gz") as tar:
        return {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers()
                if m.isfile()}


@needs_bash
@needs_no_gpu
def test_a_failing_step_is_recorded_and_the_check_goes_on(tmp_path):
    proc = check("--only", "gradcheck-plain,plot-mlp", env={"OUT": str(tmp_path)})
    assert proc.returncode == 1
    summary = (tmp_path / "summary.txt").read_text().splitlines()
    verdicts = {line.split()[0]: line.split()[1] for line in summary
                if line.startswith(("gradcheck", "plot"))}
    assert verdicts == {"gradcheck-plain-float64": "FAIL", "gradcheck-plain-float32": "FAIL",
                        "plot-mlp": "SKIP"}
    assert "2 step(s) did not pass" in summary[-1]
    files = read_archive(tmp_path)
    log = files["gpu-check/gradcheck-plain-float32.log"]
    assert log.startswith("== gradcheck-plain-float32 (at most 90 s): ")
    assert "minivae: error:" in log                  # no GPU here: one clear line
    assert log.rstrip().endswith(("== exit status 1", "== exit status 2"))
    assert files["gpu-check/summary.txt"].splitlines() == summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu-check.tar.gz", "summary.txt"]


@needs_bash
def test_steps_past_the_budget_are_skipped(tmp_path):
    t0 = time.perf_counter()
    proc = check("--only", "gradcheck", env={"OUT": str(tmp_path), "GPU_CHECK_BUDGET_S": "0"})
    assert proc.returncode == 0
    assert time.perf_counter() - t0 < 30
    summary = (tmp_path / "summary.txt").read_text()
    assert summary.count("no time left in the 0 s budget") == 4


# --------------------------------------------------------------------------------------------
# gpu_bench.py


def hand_count(model, n):
    """FLOPs of one training step's products, counted by hand from the seeds' architectures:
    2 per multiply-add; forward once, backward twice (weight and input gradient) except the
    first layer, which has no input gradient to compute."""
    if model == "mlp":
        layers = [784 * 500, 500 * 2, 500 * 2, 2 * 500, 500 * 784]     # Dense in*out
    else:
        # Conv2d: output H*W * F*C*kh*kw; ConvTranspose2d: input H*W * Cin*Cout*kh*kw
        conv = [16 * 16 * 32 * 1 * 16, 8 * 8 * 32 * 32 * 16, 4 * 4 * 32 * 32 * 16]
        dense = [512 * 256, 256 * 256, 256 * 10, 256 * 10, 10 * 256, 256 * 256, 256 * 512]
        deconv = [4 * 4 * 32 * 32 * 16, 8 * 8 * 32 * 32 * 16, 16 * 16 * 32 * 1 * 16]
        layers = conv + dense + deconv
    forward = n * sum(layers)
    backward = 2 * forward - n * layers[0]
    return 2 * (forward + backward)


@pytest.mark.parametrize("model", ["mlp", "conv"])
@pytest.mark.parametrize("batch", [1, 64, 4096])
def test_gpu_bench_counts_the_flops_of_a_step(model, batch):
    assert load_gpu_bench().step_flops(model, batch) == hand_count(model, batch)


def test_gpu_bench_without_a_gpu_says_so_in_one_line():
    if GPU_HERE:
        pytest.skip("a GPU is usable here")
    bench = [sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py")]
    skipped = subprocess.run(bench + ["--skip-without-gpu"], capture_output=True, text=True)
    assert skipped.returncode == 0 and skipped.stdout == ""
    assert len(skipped.stderr.splitlines()) == 1
    assert skipped.stderr.startswith("gpu_bench.py: skipped: no GPU usable through CuPy here")
    failed = subprocess.run(bench, capture_output=True, text=True)
    assert failed.returncode == 1 and failed.stderr.startswith("gpu_bench.py: error: no GPU")
    usage = subprocess.run(bench + ["--batch-sizes", "0"], capture_output=True, text=True)
    assert usage.returncode == 2 and "positive integer" in usage.stderr


class CPUEvent:
    """A CUDA event's interface, on perf_counter."""

    def record(self):
        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, end):
        return (end.t - self.t) * 1e3


def fake_cupy():
    """What gpu_bench asks of CuPy, answered by NumPy on the CPU."""
    cuda = types.SimpleNamespace(
        Event=CPUEvent, get_elapsed_time=lambda a, b: a.elapsed_time(b),
        Device=lambda: types.SimpleNamespace(id=0, synchronize=lambda: None),
        runtime=types.SimpleNamespace(
            getDeviceProperties=lambda i: {"name": b"CPU stand-in", "major": 0, "minor": 0},
            runtimeGetVersion=lambda: 13000, driverGetVersion=lambda: 13000))
    pool = types.SimpleNamespace(free_all_blocks=lambda: None)
    return types.SimpleNamespace(asarray=np.asarray, empty=np.empty, matmul=np.matmul, cuda=cuda,
                                 __version__="numpy", get_default_memory_pool=lambda: pool)


def fake_torch_cuda(torch):
    """torch, with torch.cuda's synchronisation and cache answered on the CPU."""
    class Proxy:
        cuda = types.SimpleNamespace(synchronize=lambda: None, empty_cache=lambda: None)
        version = types.SimpleNamespace(cuda=None)

        def __getattr__(self, name):
            return getattr(torch, name)
    return Proxy()


def test_gpu_bench_rehearsed_on_the_cpu(monkeypatch):
    """The whole benchmark with NumPy for CuPy and PyTorch's CPU for CUDA: every code path but
    the CUDA calls, so an API that moved under it fails here, not on a lent GPU."""
    gb = load_gpu_bench()
    monkeypatch.setattr(gb, "MINIVAE_BACKEND", "numpy")
    monkeypatch.setattr(gb, "TORCH_DEVICE", "cpu")
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        monkeypatch.setattr(gb, "torch_or_reason", lambda: fake_torch_cuda(torch))
    else:
        monkeypatch.setattr(gb, "torch_or_reason", lambda: "PyTorch does not import")
    quick = ["--steps", "3", "--warmup", "1", "--repeats", "2", "--gemm-size", "64",
             "--impl", "plain"]
    mlp = gb.run(gb.parse_args(["--models", "mlp", "--batch-sizes", "seed", "3"] + quick),
                 fake_cupy())
    conv = gb.run(gb.parse_args(["--models", "conv", "--batch-sizes", "2"] + quick), fake_cupy())
    json.dumps([mlp, conv])
    rows = [(report, r) for report in (mlp, conv) for r in report["rows"]]
    assert [(r["model"], r["batch_size"]) for _, r in rows] == [("mlp", 128), ("mlp", 3),
                                                                  ("conv", 2)]
    for report, r in rows:
        assert r["impl"] == "plain" and r["flops"] == hand_count(r["model"], r["batch_size"])
        assert r["minivae"]["steps"] == 3 and r["minivae"]["median_ms"] > 0
        share = r["flops"] / (r["minivae"]["median_ms"] / 1e3) / report["gemm_flops_per_s"]
        assert r["minivae"]["gemm_share"] == pytest.approx(share)
        if torch is not None:
            assert len(r["block_ratios"]) == 2
            assert r["ratio"] == pytest.approx(r["minivae"]["median_ms"] / r["torch"]["median_ms"])
        else:
            assert r["torch"] is None and r["torch_skipped"] == "PyTorch does not import"
    text = gb.format_text(mlp).splitlines()
    assert text[0].startswith("gpu_bench: CPU stand-in")
    assert [line.split()[:3] for line in text if line.startswith("mlp")] == [
        ["mlp", "128", "plain"], ["mlp", "3", "plain"]]
