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
from pathlib import Path

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
        "env", "pytest-cupy", "train-mlp", "train-eager-mlp", "compare-mlp", "plot-mlp",
        "evaluate-mlp", "train-conv", "train-eager-conv", "compare-conv", "plot-conv",
        "evaluate-conv", "gpu-bench", "gradcheck-plain-float64", "gradcheck-plain-float32",
        "gradcheck-gpu-float64", "gradcheck-gpu-float32", "bench-mlp", "bench-conv"]
    assert "--cuda-graph off" in steps["train-eager-conv"]
    assert "gpu_check_compare.py" in steps["compare-conv"]
    assert "-k cupy" in steps["pytest-cupy"]
    for impl in ("plain", "gpu"):
        for dtype in ("float64", "float32"):
            assert f"gradcheck --backend cupy --impl {impl} --dtype {dtype}" in \
                steps[f"gradcheck-{impl}-{dtype}"]
    for model, dataset in (("mlp", "mnist"), ("conv", "fashion-mnist")):
        train = steps[f"train-{model}"]
        assert f"--model {model} --dataset {dataset} --backend cupy --epochs 1" in train
        assert "--mirror gpu-data --data-dir " in train
        assert f"bench --backend cupy --model {model}" in steps[f"bench-{model}"]
    assert "benchmarks/gpu_bench.py --save " in steps["gpu-bench"]
    assert "--backend cupy" in steps["train-conv"]
    # --only picks steps by name prefix
    only = check("--dry-run", "--only", "gradcheck,gpu").stdout.splitlines()[1:]
    assert [line.split()[0] for line in only] == [
        "gpu-bench", "gradcheck-plain-float64", "gradcheck-plain-float32",
        "gradcheck-gpu-float64", "gradcheck-gpu-float32"]


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
    assert usage.returncode == 2 and "must be an integer >= 1" in usage.stderr


def test_gpu_bench_counts_launches_on_the_standin():
    """--count on the CuPy stand-in: the table BENCHMARKS.md shows, the gpu tier within its
    targets and a fraction of PyTorch's kernels (where PyTorch is installed)."""
    from conftest import standin_env

    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py"), "--count",
                        "--json"], capture_output=True, text=True, env=standin_env(), timeout=600)
    assert p.returncode == 0, p.stderr
    rows = {r["model"]: r for r in json.loads(p.stdout)["rows"]}
    assert rows["mlp"]["gpu"] == {"launches": rows["mlp"]["gpu"]["launches"], "reads": 1,
                                  "uploads": 1}
    assert rows["mlp"]["gpu"]["launches"] <= 35 and rows["conv"]["gpu"]["launches"] <= 100
    assert rows["conv"]["plain"]["reads"] > 1
    if rows["conv"]["torch"] is not None:
        assert rows["conv"]["gpu"]["launches"] < rows["conv"]["torch"] / 2


def test_gpu_bench_timing_rehearsed_on_the_standin(standin, monkeypatch):
    """The timing with the stand-in for CuPy and PyTorch's CPU for CUDA: every code path but
    the CUDA calls (the stand-in captures and replays the graph row's step)."""
    gb = load_gpu_bench()
    monkeypatch.setattr(gb, "TORCH_DEVICE", "cpu")
    args = gb.parse_args(["--models", "mlp", "--batch-sizes", "seed", "3", "--steps", "2",
                          "--warmup", "1", "--repeats", "2"])
    report = gb.time_rows(args, standin)
    json.dumps(report)
    assert [(r["model"], r["batch_size"]) for r in report["rows"]] == [("mlp", 128), ("mlp", 3)]
    for r in report["rows"]:
        assert set(r["ms"]) >= {"plain", "gpu"} and all(v > 0 for v in r["ms"].values())
        assert "gpu graph" in r["ms"]                  # the stand-in captures and replays
    assert gb.format_times(report).splitlines()[0].startswith("gpu_bench: CuPy stand-in (CPU)")


def test_the_compare_step_passes_equal_runs_and_fails_different_ones(tmp_path):
    """benchmarks/gpu_check_compare.py: the graph run against the eager one, seconds aside."""
    spec = importlib.util.spec_from_file_location(
        "gpu_check_compare", ROOT / "benchmarks" / "gpu_check_compare.py")
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    for name, loss, seconds in (("graph", "100.0", "1.5"), ("eager", "100.000001", "9.0"),
                                ("other", "100.1", "1.5")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.csv").write_text(
            f"epoch,train_loss,seconds\n1,{loss},{seconds}\n")
    assert compare.main([str(tmp_path / "graph"), str(tmp_path / "eager")]) == 0
    assert compare.main([str(tmp_path / "graph"), str(tmp_path / "other")]) == 1
