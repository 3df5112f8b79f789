"""benchmarks/: minivae next to PyTorch (compare_torch.py, standalone.py, conv_layers.py,
peak_memory.py), the A/B harness (ab.py) and the PyTorch twin (twin.py)."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import compare_torch
from benchmarks.twin import torch_available, torch_name
from minivae.bench import Workload
from minivae.models import ConvVAE

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--steps", "2", "--warmup", "1", "--repeats", "2", "--gemm-size", "128"]


def test_split_blocks():
    assert compare_torch._split(50, 5) == [10] * 5
    assert compare_torch._split(7, 3) == [3, 2, 2]
    assert compare_torch._split(2, 5) == [1, 1]


def test_compare_json_without_torch():
    report = compare_torch.run(("mlp", "conv"), steps=2, warmup=1, repeats=2, with_torch=False,
                               memory=False, gemm_size=128)
    assert [r["model"] for r in report["results"]] == ["mlp", "conv"]
    assert report["matmul"]["gflops"] > 0
    for r, batch in zip(report["results"], (128, 64)):
        assert r["batch_size"] == batch
        mv = r["minivae"]
        assert mv["steps"] == 2 and mv["median_ms"] > 0
        assert mv["samples_per_s"] == pytest.approx(batch / (mv["median_ms"] / 1e3))
        assert r["floor_ms"] == pytest.approx(r["flops"] / (r["matmul_gflops"] * 1e6))
        assert mv["x_floor"] == pytest.approx(mv["median_ms"] / r["floor_ms"])
        assert r["torch"] is None and r["torch_skipped"] == "--no-torch"
        assert mv["page_faults_per_step"] >= 0
    assert "minivae" in compare_torch.format_text(report)
    rows = compare_torch.format_markdown(report).splitlines()
    assert rows[0].startswith("| model |") and rows[2].startswith("| mlp | 128 |")


def test_warm_heap_spares_the_steps_page_faults():
    """The reason the bench warms the heap: after one large block is freed, a step's megabyte
    buffers come from malloc's heap instead of fresh pages (see BENCHMARKS.md).

    The cold side is a heap that maps every block over glibc's initial 128 KiB threshold afresh
    (MALLOC_MMAP_THRESHOLD_ fixes the threshold). A default fresh interpreter sits anywhere
    between that and none: whether its heap gets trimmed mid-step depends on unrelated
    allocations (0 to 600 faults a step here, changed by editing a comment in an imported module),
    so it cannot be the reference.
    """
    import os
    import subprocess

    code = ("from minivae.bench import Workload\n"
            "from benchmarks.compare_torch import _page_faults\n"
            "w = Workload('conv')\n"
            "[w.step() for _ in range(3)]\n"
            "f = _page_faults(); [w.step() for _ in range(5)]\n"
            "print((_page_faults() - f) / 5)")

    def faults(prelude, **env):
        out = subprocess.run([sys.executable, "-c", prelude + code], capture_output=True,
                             text=True, check=True, cwd=ROOT, env=dict(os.environ, **env)).stdout
        return float(out)

    cold = faults("", MALLOC_MMAP_THRESHOLD_="131072")
    warm = faults("from minivae import bench; bench.warm_heap()\n")
    assert warm < cold / 10         # here: ~7,500 a step cold, 0-100 warm


def test_report_says_when_the_environment_picks_openblas_kernels(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    info = compare_torch.machine_info(with_torch=False)
    assert info["openblas_coretype"] == "Haswell"
    note = compare_torch._coretype_note(dict(info, torch_simd="AVX512"))
    assert note == ["OPENBLAS_CORETYPE=Haswell is set: NumPy's matmuls use those kernels "
                    "whatever the CPU supports; PyTorch's use AVX512"]
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    assert compare_torch._coretype_note(compare_torch.machine_info(with_torch=False)) == []


def test_memory_probe_runs_in_a_fresh_process():
    m = compare_torch.memory_probe("minivae", "mlp", batch_size=16, steps=1)
    assert m["peak_rss"] >= m["rss_after_imports"] > 0
    assert m["workload_rss"] == m["peak_rss"] - m["rss_after_imports"]
    # a step allocates at least its activations: 16 x 784 logits in float32, several times
    assert m["step_transient_bytes"] >= 16 * 784 * 4


def test_compare_with_torch(capsys):
    pytest.importorskip("torch")
    assert compare_torch.main(["--model", "mlp", "--json", "--no-memory", "--batch-size", "16"]
                              + QUICK) == 0
    r = json.loads(capsys.readouterr().out)["results"][0]
    assert r["torch"]["steps"] == 2 and r["torch"]["median_ms"] > 0
    assert r["ratio"] == pytest.approx(r["minivae"]["median_ms"] / r["torch"]["median_ms"])
    assert len(r["block_ratios"]) == 2


def test_standalone_script_alternates_fresh_processes(capsys):
    pytest.importorskip("torch")
    from benchmarks import standalone

    assert standalone.main(["--model", "mlp", "--rounds", "1", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "round 1: minivae" in out and "page faults/step" in out and "ratio" in out


def test_conv_layers_script_lists_the_six_convolutions():
    from benchmarks import conv_layers

    rows = conv_layers.conv_layers(ConvVAE(), 64)
    assert [name for name, _, _ in rows] == ["encoder.0", "encoder.2", "encoder.4", "decoder.7",
                                             "decoder.9", "decoder.11"]
    first, middle = rows[0][2], rows[1][2]
    assert first["backward"] == first["forward"]            # no input gradient below the data
    assert middle["in_shape"] == [64, 32, 16, 16] and middle["backward"] == 2 * middle["forward"]


def test_conv_layers_script_times_both_libraries(capsys):
    pytest.importorskip("torch")
    from benchmarks import conv_layers

    assert conv_layers.main(["--rounds", "1", "--calls", "2", "--batch-size", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:2] == ["layer", "kind"] and len(lines) == 8
    assert lines[-1].startswith("all six") and float(lines[-1].split()[-1]) > 0


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs a git checkout")
def test_ab_script_races_this_checkout_against_a_revision(capsys):
    from benchmarks import ab
    import minivae.models

    before = minivae.models
    assert ab.main(["HEAD", "--model", "mlp", "--rounds", "2", "--steps", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("mlp: this checkout") and "this / HEAD = " in line
    assert float(line.split("this / HEAD = ")[1].split()[0]) > 0
    assert sys.modules["minivae.models"] is before      # this checkout's modules are back
    assert ab.main(["no-such-revision"]) == 1


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs a git checkout")
def test_ab_script_imports_the_revisions_own_files(tmp_path):
    from benchmarks import ab

    ab.checkout_engine("HEAD", tmp_path)
    models, optim = ab.load_engine(tmp_path)
    for module in (models, optim):
        assert Path(module.__file__).is_relative_to(tmp_path)
    assert models.ConvVAE is not ConvVAE and models.MLPVAE(seed=0).params


def test_torch_workload_starts_from_minivae_parameters():
    torch = pytest.importorskip("torch")
    work = Workload("conv", batch_size=4)
    tw = compare_torch.TorchWorkload(work)
    for name, p in work.model.params.items():
        tp = tw.twin.get_parameter(torch_name(name)).detach().numpy()
        if name.endswith(".W") and p.ndim == 2:
            tp = tp.T
        np.testing.assert_array_equal(tp, np.asarray(p))
    assert tw.x.dtype == torch.float32
    assert math.isfinite(tw.step())


@pytest.mark.slow
def test_peak_memory_script_short_run(real_data_mirror, capsys):
    """benchmarks/peak_memory.py: both runs on 128 real images, each in its own process."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "peak_memory.py"
    spec = importlib.util.spec_from_file_location("peak_memory", path)
    peak_memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peak_memory)
    argv = ["--limit", "128", "--data-dir", str(real_data_mirror), "--json"]
    if not torch_available():
        argv += ["--only", "minivae"]
    assert peak_memory.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    for r in report["runs"].values():
        assert r["peak_rss"] > r["rss_after_imports"] > 0
        assert r["workload_rss"] == r["peak_rss"] - r["rss_after_imports"]


def test_pytorch_absent_is_not_called_no_torch(monkeypatch, tmp_path):
    """Where PyTorch is simply not installed, the report says so (not "--no-torch")."""
    (tmp_path / "torch.py").write_text("raise ImportError('no torch here')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))      # the timing subprocess: no PyTorch
    monkeypatch.setattr(compare_torch, "torch_available", lambda: False)
    report = compare_torch.run(("mlp",), steps=1, warmup=1, repeats=1, memory=False,
                               gemm_size=64)
    r = report["results"][0]
    assert r["torch"] is None and r["torch_skipped"] == "PyTorch is not importable"
