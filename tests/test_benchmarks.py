"""benchmarks/: the shared harness (harness.py), the A/B race (ab.py) and the PyTorch twin
(twin.py); the epoch benchmark has tests/test_epoch_bench.py, the GPU check
tests/test_gpu_check.py."""

import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import harness
from minivae.models import ConvVAE

ROOT = Path(__file__).resolve().parents[1]


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
            "import resource\n"
            "_page_faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
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
    modules = ab.load_engine(tmp_path)
    models = modules["minivae.models"]
    for module in modules.values():
        assert Path(module.__file__).is_relative_to(tmp_path)
    assert models.ConvVAE is not ConvVAE and models.MLPVAE(seed=0).params
    model, opt = ab.starter(modules)("mlp", 1e-3)
    assert type(model) is models.MLPVAE and hasattr(opt, "step")


def test_the_split_adam_computes_the_engines_numbers_and_the_diagnostic_runs(capsys):
    """benchmarks/elementwise_threads.py: its two-thread Adam gives the fast Adam's parameters and
    running sums bit for bit, step after step, and the script prints every situation."""
    from concurrent.futures import ThreadPoolExecutor

    from benchmarks import elementwise_threads as et
    from minivae.bench import Workload

    with ThreadPoolExecutor(1) as worker:
        w = Workload("conv", batch_size=4)
        split = et.SplitAdam(w.opt, worker)
        for _ in range(3):
            assert et.same_numbers(w, split)
        split.step = lambda: split._half(0, w.opt.M_flat.size // 2, 1e-3, 1e-8)
        assert not et.same_numbers(w, split)          # a wrong update is told apart
    assert et.main(["--model", "mlp", "--rounds", "1", "--pause", "0"]) == 0
    out = capsys.readouterr().out
    assert "mlp (788788 parameters), alone: one thread" in out
    assert ", in step: one thread" in out and ", step: one thread" in out


def test_coretype_note_names_the_command_to_run_without_the_pin():
    assert harness.coretype_note({}, []) is None
    note = harness.coretype_note({"OPENBLAS_CORETYPE": "Haswell"}, ["--models", "mlp"])
    assert "OPENBLAS_CORETYPE=Haswell" in note
    assert note.endswith("env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python "
                         "benchmarks/epoch_time.py --models mlp")


def test_kernel_probe_runs_in_a_fresh_process():
    kernels = harness.probe_kernels(1, harness.thread_env(1))
    assert kernels["numpy"] == np.__version__
    assert "numpy" in harness.kernels_line(kernels)


def test_parser_reports_a_bad_value_in_one_line(capsys):
    p = harness.Parser(prog="x")
    p.add_argument("--n", type=harness.at_least(2))
    with pytest.raises(SystemExit):
        p.parse_args(["--n", "1"])
    assert capsys.readouterr().err == "x: error: argument --n: must be an integer >= 2, got '1'\n"
