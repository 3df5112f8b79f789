#!/usr/bin/env python
"""minivae vs PyTorch eager, one training step of each seed model, interleaved in one process.

    python benchmarks/compare_torch.py                  # table for both models (about a minute)
    python benchmarks/compare_torch.py --markdown       # the rows for BENCHMARKS.md
    python benchmarks/compare_torch.py --steps 100 --threads 1 --json

This times steps, not epochs: the per-step diagnostic below BENCHMARKS.md's epoch-time table.

One training step is what the training loop does per batch: `model.loss_and_grads(x)` (forward,
backward, loss terms as Python floats) followed by `Adam.step()`, with the seed's batch size,
learning rate and weight decay. For each model we report:

* median milliseconds per step. Every step is timed on its own (perf_counter on the CPU; CUDA
  events with a synchronize on CuPy) after `--warmup` untimed steps; the median shrugs off the
  odd step that another process on the machine slowed down.
* the same architecture in PyTorch eager (`twin.torch_twin`: built by walking our model's layers,
  our parameters copied in), when torch can be imported. torch is never a dependency: it is imported
  only here, only when asked for. Both run in one process, in the same dtype, with PyTorch told
  to use as many threads as NumPy's BLAS, and *interleaved*: `--repeats` blocks of minivae steps
  alternate with blocks of PyTorch steps, so load from other processes hits both alike and the
  ratio of the medians is fair even on a busy machine. Each model gets a fresh interpreter of
  its own: glibc's malloc raises its mmap threshold to the largest block freed so far, so what
  ran earlier in a process would change how both libraries' buffers are allocated, and with
  it how many page faults each step takes (BENCHMARKS.md, "The allocator").
* the GEMM floor: the floating-point operations of the step's matrix products and convolutions
  (forward, weight gradients, input gradients; counted from the layer shapes by
  minivae.bench.model_flops, 2 per multiply-add; elementwise work is not counted), divided by the
  float throughput this machine reaches on one large square matmul (`matmul_gflops`, best of
  several; with PyTorch present, the better of NumPy's BLAS and PyTorch's on the same matmul,
  measured after the steps, for the reason above). "x floor" says how far above it each
  implementation is.
* peak memory, measured in a fresh interpreter per implementation (`memory_probe`): the peak
  resident set size (VmHWM) of a process that imports the libraries, builds the model and
  optimizer and runs warm-up + a few steps, and that peak minus the RSS right after the
  imports (what the workload itself added). For minivae on NumPy it also reports the peak bytes
  NumPy allocated *during* one step above what was live before it (NumPy reports its data
  buffers to tracemalloc), i.e. the step's transient working set.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.twin import torch_available, torch_twin  # noqa: E402
from minivae.backend import backend_name, get_backend, to_host  # noqa: E402
from minivae.bench import (Workload, cpu_model, current_rss, in_fresh_interpreter,  # noqa: E402
                           make_timer, matmul_gflops, model_flops, peak_rss, warm_heap)
from minivae.cli import Parser, UsageError, non_negative_int, positive_int  # noqa: E402
from minivae.config import MODEL_DEFAULTS  # noqa: E402
from minivae.models import MODELS  # noqa: E402

# A pause before each block of steps: OpenBLAS's idle worker threads spin for ~0.1 s after a
# product before they sleep (OpenMP's do too, for less), and on two cores a spinning thread of
# the library that just ran slows the other one's first steps. Without it the interleaving
# charges that to PyTorch (MLP: 6.5 ms/step alone, 8-10 ms interleaved).
BLOCK_PAUSE_S = 0.3
MODULE = "benchmarks.compare_torch"     # what the fresh interpreters import


def torch_matmul_gflops(dtype="float32", n=1024, repeats=5, device="cpu"):
    """The same measurement through PyTorch's BLAS (often a different library and kernels)."""
    import torch

    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.random((n, n)).astype(dtype)).to(device)
    b = torch.from_numpy(rng.random((n, n)).astype(dtype)).to(device)
    out = torch.empty((n, n), dtype=a.dtype, device=device)
    timer = _torch_timer(device)
    torch.matmul(a, b, out=out)
    best = min(timer(lambda: torch.matmul(a, b, out=out)) for _ in range(repeats))
    return 2.0 * n ** 3 / best / 1e9


def _torch_timer(device):
    import torch

    if device == "cuda":
        def cuda_timer(fn):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        return cuda_timer
    return make_timer(np)


class TorchWorkload:
    """The PyTorch eager twin of a Workload: same parameters, batch, dtype and hyper-parameters."""

    def __init__(self, workload, device="cpu", seed=0):
        import torch

        self.torch = torch
        model = workload.model
        self.twin = torch_twin(model, device)
        self.x = torch.from_numpy(np.ascontiguousarray(to_host(workload.x))).to(device)
        self.opt = torch.optim.Adam(self.twin.parameters(), lr=workload.cfg["lr"])
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.eps_shape = (workload.batch_size, model.latent_dim)
        self.cfg, self.device = workload.cfg, device

    def step(self):
        torch = self.torch
        eps = torch.randn(self.eps_shape, generator=self.gen, dtype=self.x.dtype,
                          device=self.device)
        self.opt.zero_grad(set_to_none=True)
        loss = self.twin(self.x, eps, self.cfg["beta"], self.cfg["weight_decay"])[0]
        loss.backward()
        self.opt.step()
        return loss.item()           # a training loop reads the loss; minivae returns floats too


# --------------------------------------------------------------------------------------------
# Machine description


def _openblas(fn):
    """The OpenBLAS function `fn` ('get_num_threads' / 'set_num_threads') of NumPy's bundled
    OpenBLAS, via ctypes (None if there is none: another BLAS, or a system build)."""
    import ctypes
    import glob

    here = os.path.dirname(np.__file__)
    names = (f"scipy_openblas_{fn}64_", f"scipy_openblas_{fn}", f"openblas_{fn}64_",
             f"openblas_{fn}")
    for path in glob.glob(os.path.join(here, "..", "numpy.libs", "*openblas*")) + \
            glob.glob(os.path.join(here, ".dylibs", "*openblas*")):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for n in names:
            if hasattr(lib, n):
                return getattr(lib, n)
    return None


def blas_threads():
    """Threads NumPy's OpenBLAS uses (None when it cannot be asked)."""
    get = _openblas("get_num_threads")
    return int(get()) if get is not None else None


def set_threads(n):
    """Use n threads in NumPy's OpenBLAS and in PyTorch (if imported). Returns the BLAS count
    actually in effect (None if unknown)."""
    setter = _openblas("set_num_threads")
    if setter is not None:
        setter(int(n))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(n))
    return blas_threads()


def blas_info():
    """'<name> <version>', plus the kernel family OpenBLAS picked for this CPU (its 'core')."""
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        text = f"{blas.get('name')} {blas.get('version')}"
    except Exception:
        text = "unknown"
    corename = _openblas("get_corename")
    if corename is not None:
        import ctypes

        corename.restype = ctypes.c_char_p
        text += f", {corename().decode(errors='replace')} kernels"
    return text


def machine_info(with_torch=True):
    info = dict(cpu=cpu_model(), cores=os.cpu_count(), python=platform.python_version(),
                platform=platform.platform(), numpy=np.__version__, blas=blas_info(),
                blas_threads=blas_threads(),
                openblas_coretype=os.environ.get("OPENBLAS_CORETYPE"),   # set: kernels forced
                torch=None, torch_threads=None, torch_simd=None)
    if with_torch and torch_available():
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        capability = getattr(torch.backends.cpu, "get_cpu_capability", None)
        info["torch_simd"] = capability() if capability else None       # e.g. "AVX512"
    return info


# --------------------------------------------------------------------------------------------
# Peak memory, in a fresh interpreter per implementation


def _probe_main(spec_json):
    """Entry point of the memory-probe subprocess: prints one JSON line."""
    spec = json.loads(spec_json)
    impl = spec["impl"]
    if impl == "torch":
        import torch  # noqa: F401
    if spec.get("threads"):
        set_threads(spec["threads"])
    import minivae.models  # noqa: F401  (import cost belongs to the baseline)
    import minivae.optim  # noqa: F401
    rss_imports = current_rss()
    work = Workload(spec["model"], spec["backend"], spec["dtype"], spec["batch_size"])
    runner = work if impl == "minivae" else TorchWorkload(
        work, device="cuda" if spec["backend"] == "cupy" else "cpu")
    if impl == "torch":
        del work.model, work.opt     # only the twin should be resident
    for _ in range(spec["steps"]):
        runner.step()
    out = dict(rss_after_imports=rss_imports, peak_rss=peak_rss())
    if impl == "minivae" and spec["backend"] == "numpy":
        import tracemalloc
        tracemalloc.start()
        runner.step()                # now every live buffer is traced (and will be freed traced)
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        runner.step()
        out["step_transient_bytes"] = tracemalloc.get_traced_memory()[1] - before
        tracemalloc.stop()
    if spec["backend"] == "cupy":
        if impl == "minivae":
            import cupy
            out["device_pool_bytes"] = int(cupy.get_default_memory_pool().total_bytes())
        else:
            import torch
            out["device_pool_bytes"] = int(torch.cuda.max_memory_allocated())
    print(json.dumps(out))


def memory_probe(impl, model, backend="numpy", dtype="float32", batch_size=None, steps=3,
                 threads=None, timeout=600):
    """Run `impl` ('minivae' or 'torch') for `steps` steps in a fresh interpreter; returns a dict
    with peak_rss, rss_after_imports, workload_rss (= their difference), bytes, and for minivae on
    NumPy step_transient_bytes."""
    spec = dict(impl=impl, model=model, backend=backend, dtype=dtype, steps=steps,
                batch_size=batch_size or MODEL_DEFAULTS[model]["batch_size"], threads=threads)
    out = in_fresh_interpreter("_probe_main", spec, timeout, module=MODULE)
    if out.get("rss_after_imports") is not None:
        out["workload_rss"] = out["peak_rss"] - out["rss_after_imports"]
    return out


def _timing_main(spec_json):
    """Entry point of the timing subprocess (one model, both implementations)."""
    spec = json.loads(spec_json)
    if spec["warm_heap"]:
        warm_heap()
    if spec["with_torch"] and torch_available():
        import torch  # noqa: F401  (so that set_threads reaches it)
    if spec["threads"]:
        set_threads(spec["threads"])
    result = bench_model(spec["model"], spec["backend"], spec["dtype"], spec["batch_size"],
                         spec["steps"], spec["warmup"], spec["repeats"],
                         with_torch=spec["with_torch"], memory=False, threads=spec["threads"])
    print(json.dumps(result))


# --------------------------------------------------------------------------------------------
# The benchmark


def _summary(times, batch_size, page_faults):
    ts = sorted(times)
    med = statistics.median(ts)
    q = lambda f: ts[min(len(ts) - 1, int(f * len(ts)))]  # noqa: E731
    return dict(median_ms=med * 1e3, p10_ms=q(0.1) * 1e3, p90_ms=q(0.9) * 1e3,
                min_ms=ts[0] * 1e3, steps=len(ts), samples_per_s=batch_size / med,
                page_faults_per_step=page_faults / len(ts))


def _page_faults():
    """Minor page faults of this process so far: memory the OS had to map in (fresh pages)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def bench_model(model_name, backend="numpy", dtype="float32", batch_size=None, steps=50,
                warmup=5, repeats=5, with_torch=True, memory=True, gflops=None, threads=None,
                log=None):
    """Benchmark one model; returns a result dict (see module docstring; JSON-ready).

    gflops: the machine's matmul throughput for the floor; None measures it after the steps.
    """
    work = Workload(model_name, backend, dtype, batch_size)
    xp = work.xp
    flops = model_flops(work.model, work.x.shape)
    result = dict(model=model_name, backend=backend_name(xp), dtype=dtype,
                  batch_size=work.batch_size, flops=flops["total"], flops_forward=flops["forward"],
                  flops_backward=flops["backward"], minivae=None, torch=None, ratio=None,
                  torch_skipped=None)

    tw, torch_device = None, "cuda" if result["backend"] == "cupy" else "cpu"
    if not with_torch:
        result["torch_skipped"] = "--no-torch"
    elif not torch_available():
        result["torch_skipped"] = "PyTorch is not importable"
    else:
        import torch
        if torch_device == "cuda" and not torch.cuda.is_available():
            result["torch_skipped"] = "PyTorch has no CUDA device to compare with CuPy"
        else:
            nthreads = threads or blas_threads()
            if nthreads and torch_device == "cpu":
                torch.set_num_threads(nthreads)
            tw = TorchWorkload(work, device=torch_device)

    timer = make_timer(xp)
    ttimer = _torch_timer(torch_device) if tw is not None else None
    for _ in range(warmup):
        work.step()
        if tw is not None:
            tw.step()
    if xp is not np:
        xp.cuda.Device().synchronize()
    # Interleave: block of minivae steps, block of PyTorch steps, `repeats` times.
    blocks = _split(steps, repeats)
    mv_times, th_times, block_ratios, faults = [], [], [], {"minivae": 0, "torch": 0}
    for k in blocks:
        time.sleep(BLOCK_PAUSE_S)
        f0 = _page_faults()
        a = [timer(work.step) for _ in range(k)]
        f1 = _page_faults()
        mv_times += a
        faults["minivae"] += f1 - f0
        if tw is not None:
            time.sleep(BLOCK_PAUSE_S)
            f1 = _page_faults()
            b = [ttimer(tw.step) for _ in range(k)]
            th_times += b
            faults["torch"] += _page_faults() - f1
            block_ratios.append(statistics.median(a) / statistics.median(b))
    result["minivae"] = _summary(mv_times, work.batch_size, faults["minivae"])
    if tw is not None:
        import torch
        result["torch"] = _summary(th_times, work.batch_size, faults["torch"])
        result["torch"]["threads"] = torch.get_num_threads() if torch_device == "cpu" else None
        result["ratio"] = result["minivae"]["median_ms"] / result["torch"]["median_ms"]
        result["block_ratios"] = block_ratios
    # After the steps: see run() for why.
    _rescale_floor(result, matmul_gflops(xp, dtype) if gflops is None else gflops)
    if memory:
        del tw, work
        add_memory(result, threads, log)
    return result


def add_memory(result, threads=None, log=None):
    """Peak memory of both implementations of result's model, each in a fresh interpreter."""
    model_name, backend, dtype = result["model"], result["backend"], result["dtype"]
    if log:
        log(f"  {model_name}: measuring peak memory in fresh interpreters ...")
    try:
        result["minivae"]["memory"] = memory_probe("minivae", model_name, backend, dtype,
                                                   result["batch_size"], threads=threads)
        if result["torch"] is not None:
            result["torch"]["memory"] = memory_probe(
                "torch", model_name, backend, dtype, result["batch_size"],
                threads=result["torch"]["threads"])
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
        result["memory_error"] = str(e)


def _split(steps, repeats):
    """steps split into `repeats` blocks as evenly as possible (no empty block)."""
    repeats = max(1, min(repeats, steps))
    return [steps // repeats + (i < steps % repeats) for i in range(repeats)]


def run(models=tuple(MODELS), backend="numpy", dtype="float32", batch_size=None, steps=50,
        warmup=5, repeats=5, with_torch=True, memory=True, gemm_size=1024, threads=None,
        warm_heap=True, log=None):
    """The whole benchmark: machine info, matmul throughput, one result per model."""
    xp = get_backend(backend)
    asked_torch = with_torch     # bench_model says why PyTorch is skipped: --no-torch or absent
    with_torch = with_torch and torch_available()
    if with_torch:
        import torch  # noqa: F401  (so that set_threads reaches it)
    if threads:
        set_threads(threads)
    info = machine_info(with_torch)
    if with_torch and info["blas_threads"]:
        import torch
        torch.set_num_threads(info["blas_threads"])
        info["torch_threads"] = torch.get_num_threads()
    report = dict(machine=info, backend=backend_name(xp), dtype=dtype, steps=steps,
                  threads=threads, warmup=warmup, repeats=repeats, results=[])
    # Each model is timed in a fresh interpreter, and the matmul throughput measured after the
    # steps: glibc raises its mmap threshold to the largest block freed so far, so whatever ran
    # earlier in a process (another model, the n x n matmul) changes how both libraries' step
    # buffers are allocated, and with it their speed (BENCHMARKS.md, "The allocator"). So the
    # heap is put in a known state instead: warm_heap frees one 16 MiB block first, as loading
    # a data set does at the start of any training script.
    for name in models:
        if log:
            log(f"  {name}: timing {steps} steps per implementation in "
                f"{len(_split(steps, repeats))} interleaved blocks ...")
        spec = dict(model=name, backend=backend, dtype=dtype, batch_size=batch_size,
                    steps=steps, warmup=warmup, repeats=repeats, with_torch=asked_torch,
                    threads=threads, warm_heap=warm_heap)
        result = in_fresh_interpreter("_timing_main", spec, timeout=3600, module=MODULE)
        if memory:
            add_memory(result, threads, log)
        report["results"].append(result)
    # Twice, keeping the best: the machine's speed drifts on a shared box.
    numpy_gflops = max(matmul_gflops(xp, dtype, n=gemm_size) for _ in range(2))
    torch_gflops = None
    if with_torch and backend_name(xp) == "numpy":
        torch_gflops = max(torch_matmul_gflops(dtype, n=gemm_size) for _ in range(2))
    # The machine's throughput: the best that either library reaches on the same matmul.
    numpy_gflops = max([numpy_gflops] + [r["matmul_gflops"] for r in report["results"]])
    gflops = max(numpy_gflops, torch_gflops or 0)
    report["matmul"] = dict(n=gemm_size, dtype=dtype, gflops=gflops, numpy_gflops=numpy_gflops,
                            torch_gflops=torch_gflops)
    for r in report["results"]:
        _rescale_floor(r, gflops)
    return report


def _rescale_floor(r, gflops):
    r["matmul_gflops"] = gflops
    floor_s = r["flops"] / (gflops * 1e9)
    r["floor_ms"] = floor_s * 1e3
    for impl in ("minivae", "torch"):
        if r[impl] is not None:
            r[impl]["x_floor"] = r[impl]["median_ms"] / r["floor_ms"]


# --------------------------------------------------------------------------------------------
# Formatting


def _mib(b):
    return None if b is None else b / 2 ** 20


def _mem_cell(m):
    if not m:
        return "-"
    text = f"{_mib(m['peak_rss']):.0f}"
    if m.get("workload_rss") is not None:
        text += f" (+{_mib(m['workload_rss']):.0f})"
    return text


def _coretype_note(machine):
    """A line saying that the environment picks OpenBLAS's kernels, when it does."""
    core = machine.get("openblas_coretype")
    if not core:
        return []
    return [f"OPENBLAS_CORETYPE={core} is set: NumPy's matmuls use those kernels whatever the "
            f"CPU supports" + (f"; PyTorch's use {machine['torch_simd']}"
                               if machine.get("torch_simd") else "")]


def format_text(report):
    m = report["machine"]
    lines = [f"minivae bench: {report['backend']} backend, {report['dtype']}; {m['cpu']}, "
             f"{m['cores']} cores; numpy {m['numpy']} ({m['blas']}, "
             f"{m['blas_threads'] or '?'} threads)"
             + (f"; torch {m['torch']} ({m.get('torch_simd') or '?'} kernels, "
                f"{m['torch_threads']} threads)" if m["torch"] else ""),
             f"{report['steps']} timed steps per implementation in {_blocks(report)} interleaved "
             f"blocks after {report['warmup']} warm-up steps",
             f"matmul {report['matmul']['n']}^3 {report['dtype']}: numpy "
             f"{report['matmul']['numpy_gflops']:.1f} GFLOP/s"
             + (f", torch {report['matmul']['torch_gflops']:.1f} GFLOP/s"
                if report["matmul"].get("torch_gflops") else "")
             + " (the floor uses the faster)",
             *_coretype_note(m),
             "",
             f"{'model':<5} {'batch':>5} {'impl':<8} {'ms/step':>9} {'p10-p90':>15} "
             f"{'samples/s':>10} {'GFLOP':>7} {'floor ms':>9} {'x floor':>8} "
             f"{'peak RSS MiB (+workload)':>25}"]
    for r in report["results"]:
        for impl, label in (("minivae", "minivae"), ("torch", "pytorch")):
            s = r[impl]
            if s is None:
                continue
            lines.append(
                f"{r['model']:<5} {r['batch_size']:>5} {label:<8} {s['median_ms']:>9.2f} "
                f"{s['p10_ms']:>7.1f}-{s['p90_ms']:<7.1f} {s['samples_per_s']:>10.0f} "
                f"{r['flops'] / 1e9:>7.3f} {r['floor_ms']:>9.2f} {s['x_floor']:>8.1f} "
                f"{_mem_cell(s.get('memory')):>25}")
        if r["ratio"] is not None:
            br = r["block_ratios"]
            lines.append(f"{'':<5} {'':>5} ratio minivae/pytorch {r['ratio']:.2f} "
                         f"(per block {min(br):.2f}-{max(br):.2f}); page faults per step: "
                         f"minivae {r['minivae']['page_faults_per_step']:.0f}, "
                         f"pytorch {r['torch']['page_faults_per_step']:.0f}")
        elif r["torch_skipped"]:
            lines.append(f"{'':<5} {'':>5} pytorch skipped: {r['torch_skipped']}")
        mem = (r["minivae"] or {}).get("memory") or {}
        if "step_transient_bytes" in mem:
            lines.append(f"{'':<5} {'':>5} minivae allocates "
                         f"{_mib(mem['step_transient_bytes']):.1f} MiB of NumPy buffers at its "
                         f"peak within one step")
        if r.get("memory_error"):
            lines.append(f"{'':<5} {'':>5} memory not measured: {r['memory_error']}")
    return "\n".join(lines)


def _blocks(report):
    return len(_split(report["steps"], report["repeats"]))


MARKDOWN_HEADER = (
    "| model | batch | minivae ms/step | PyTorch ms/step | ratio | GEMM floor ms | "
    "minivae × floor | PyTorch × floor | minivae peak RSS MiB (+workload) | "
    "PyTorch peak RSS MiB (+workload) |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def format_markdown(report):
    rows = [MARKDOWN_HEADER]
    for r in report["results"]:
        mv, th = r["minivae"], r["torch"]
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        rows.append(
            f"| {r['model']} | {r['batch_size']} | {mv['median_ms']:.2f} | "
            f"{fmt(th and th['median_ms'], '.2f')} | {fmt(r['ratio'], '.2f')} | "
            f"{r['floor_ms']:.2f} | {mv['x_floor']:.1f} | {fmt(th and th['x_floor'], '.1f')} | "
            f"{_mem_cell(mv.get('memory'))} | {_mem_cell(th and th.get('memory'))} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------------------------
# Command line (registered by cli.py as `minivae bench`)


def add_arguments(parser):
    """The command line of this script."""

    parser.description = ("Median milliseconds per training step (loss_and_grads + Adam) of each "
                          "seed model, next to PyTorch eager (when importable, timed interleaved "
                          "in the same process) and to the GEMM floor; peak memory measured in "
                          "fresh subprocesses.")
    parser.add_argument("--model", choices=tuple(MODELS), action="append",
                        help="mlp or conv; repeatable (default: both)")
    parser.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="numpy",
                        help="default: %(default)s")
    parser.add_argument("--batch-size", type=positive_int,
                        help="default: the seed's (128 for mlp, 64 for conv)")
    parser.add_argument("--steps", type=positive_int, default=50,
                        help="timed steps per implementation and model (default: %(default)s)")
    parser.add_argument("--warmup", type=non_negative_int, default=5,
                        help="untimed steps first (default: %(default)s)")
    parser.add_argument("--repeats", type=positive_int, default=5,
                        help="interleaved blocks the timed steps are split into "
                             "(default: %(default)s)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="default: %(default)s")
    parser.add_argument("--gemm-size", type=positive_int, default=1024, metavar="N",
                        help="N x N x N matmul that measures the machine's throughput "
                             "(default: %(default)s)")
    parser.add_argument("--threads", type=positive_int, metavar="N",
                        help="threads for NumPy's OpenBLAS and for PyTorch (default: leave "
                             "NumPy's as it is, usually one per core, and give PyTorch the same)")
    parser.add_argument("--no-torch", action="store_true", help="do not time PyTorch")
    parser.add_argument("--cold-heap", action="store_true",
                        help="time in a fresh interpreter's heap, without first freeing a 16 MiB "
                             "block as a training script's data loading does (see "
                             "BENCHMARKS.md, 'The allocator')")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the peak-memory subprocesses")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the report as JSON")
    out.add_argument("--markdown", action="store_true",
                     help="print the BENCHMARKS.md table rows")


def run_cli(args):
    models = tuple(dict.fromkeys(args.model)) if args.model else tuple(MODELS)
    log = (lambda msg: print(msg, file=sys.stderr, flush=True))
    report = run(models, backend=args.backend, dtype=args.dtype, batch_size=args.batch_size,
                 steps=args.steps, warmup=args.warmup, repeats=args.repeats,
                 with_torch=not args.no_torch, memory=not args.no_memory,
                 gemm_size=args.gemm_size, threads=args.threads, warm_heap=not args.cold_heap,
                 log=log)
    if args.backend == "auto":
        log(f"minivae: backend: {report['backend']}")
    if args.json:
        print(json.dumps(report, indent=2))
    elif args.markdown:
        print(format_markdown(report))
    else:
        print(format_text(report))
    return 0


def main(argv=None):
    parser = Parser(prog="compare_torch.py", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    if not args.no_torch and not torch_available():
        print("compare_torch.py: error: PyTorch is not importable (pip install torch); "
              "--no-torch or `minivae bench` times minivae alone", file=sys.stderr)
        return 1
    return run_cli(args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UsageError as e:
        print(f"compare_torch.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:          # one line, as the minivae command does
        print(f"compare_torch.py: error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
