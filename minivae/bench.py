"""`minivae bench`: how long minivae's training steps take on this machine.

One training step is what the training loop does per batch: `model.loss_and_grads(x)` (forward,
backward, loss terms as Python floats) followed by `Adam.step()`, with the seed's batch size,
learning rate and weight decay. Each model is timed in a fresh interpreter of its own (what ran
earlier in a process changes how its buffers are allocated), which reports:

* milliseconds per step: the median of the steps, each timed on its own after `--warmup` untimed
  steps (perf_counter on the CPU; CUDA events with a synchronize on CuPy);
* seconds per epoch, *estimated* as the steps of one epoch of the seed's dataset (60000 training
  images in batches, the partial one kept or dropped as training does) times the median step;
  the data pipeline and the per-epoch evaluation are not in it (benchmarks/ times whole epochs);
* images per second: the batch size over the median step;
* peak memory: the peak resident set size of that process, and how much of it the model, the
  optimizer and the steps added to what the imports had taken;
* the GEMM floor: the floating-point operations of the step's matrix products and convolutions
  (`model_flops`, 2 per multiply-add; elementwise work is not counted) over the throughput this
  machine reaches on one large square matmul (`matmul_gflops`, measured after the steps).

    minivae bench                        # both models, NumPy, the default tier
    minivae bench --model conv --impl plain --steps 100 --json

The comparisons with PyTorch live in benchmarks/ (see BENCHMARKS.md).
"""

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

from minivae.backend import backend_name, get_backend
from minivae.data import num_batches, to_float
from minivae.flags import backend_arg, impl_arg, non_negative_int, positive_int, seed_defaults
from minivae.download import DATASETS, FILES
from minivae.models import MODELS
from minivae.tiers import build_model, make_adam, tier_of

DESCRIPTION = ("Median milliseconds per training step (loss_and_grads + Adam) of each seed "
               "model, the seconds per epoch that makes, images per second, peak memory and the "
               "GEMM floor; each model in a fresh interpreter. The comparisons with PyTorch are "
               "in benchmarks/.")

# Threads of the BLAS libraries NumPy may be built with, set for the timing process by --threads.
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def add_arguments(p):
    """The flags of `minivae bench` (benchmarks/ declare theirs with the same function)."""
    p.add_argument("--model", choices=tuple(MODELS), action="append",
                   help="repeatable (default: every model)")
    backend_arg(p, default="numpy")
    impl_arg(p)
    p.add_argument("--batch-size", type=positive_int,
                   help=f"default: the seed's ({seed_defaults('batch_size')})")
    p.add_argument("--steps", type=positive_int, default=50,
                   help="timed steps per model (default: %(default)s)")
    p.add_argument("--warmup", type=non_negative_int, default=5,
                   help="untimed steps first (default: %(default)s)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="default: %(default)s")
    p.add_argument("--gemm-size", type=positive_int, default=1024, metavar="N",
                   help="N x N x N matmul that measures the machine's throughput "
                        "(default: %(default)s)")
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="BLAS threads of the timing processes (default: the library's own "
                        "choice, usually one per core)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


class Workload:
    """A seed model, its Adam and one fixed batch of the seed's shape; `step()` is one step."""

    def __init__(self, model_name, backend="numpy", dtype="float32", batch_size=None, seed=0,
                 impl="auto"):
        self.name = model_name
        self.spec = MODELS[model_name]
        self.settings = self.spec.defaults
        self.batch_size = batch_size or self.settings["batch_size"]
        self.xp = get_backend(backend)
        self.model = build_model(model_name, seed=seed, dtype=np.dtype(dtype).type,
                                 backend=backend_name(self.xp), impl=impl)
        self.opt = make_adam(self.model, lr=self.settings["lr"])
        # Random pixels, laid out as training lays them out; the step's cost does not depend on
        # the values.
        images = np.random.default_rng(seed + 1).integers(0, 256, (self.batch_size, 28, 28),
                                                          dtype=np.uint8)
        self.x = to_float(images, self.xp, dtype, pad=self.spec.pad, flatten=self.spec.flatten)

    def step(self):
        self.model.loss_and_grads(self.x, beta=self.settings["beta"],
                                  weight_decay=self.settings["weight_decay"])
        self.opt.step()

    def steps_per_epoch(self):
        """Steps of one training epoch on the seed's dataset at this batch size."""
        n = DATASETS[self.settings["dataset"]]["files"][FILES[0]]["shape"][0]
        return num_batches(n, self.batch_size, drop_last=self.spec.drop_last)


# --------------------------------------------------------------------------------------------
# Counting the step's floating-point operations


def _layer_out_shape(layer, shape):
    """The output shape of `layer` for an input of `shape` (batch first), without running it."""
    kind = type(layer).__name__
    if kind == "Dense":
        return tuple(shape[:-1]) + (layer.out_features,)
    if kind in ("Conv2d", "ConvTranspose2d"):
        return (shape[0], layer.out_channels) + tuple(layer.output_shape(*shape[2:]))
    if kind == "Flatten":
        return (shape[0], math.prod(shape[1:]))
    if kind == "Reshape":
        return (shape[0],) + tuple(layer.shape)
    if layer.params:
        raise ValueError(f"model_flops: don't know how to count {kind}")
    return tuple(shape)             # elementwise activations


def layer_flops(layer, in_shape, out_shape, input_grad=True):
    """(forward, backward) FLOPs of a layer's matrix product / convolution, 2 per multiply-add.

    Dense (in, out) on N rows:   forward N*in*out MACs; backward the same for dW = x^T dy and
                                 again for dx = dy W^T.
    Conv2d W (F, C, kh, kw):     forward N*Ho*Wo*F*C*kh*kw MACs (Ho, Wo = output size); dW and dx
                                 are the same contraction over other indices, so the same count.
    ConvTranspose2d W (Cin, Cout, kh, kw): forward N*H*W*Cin*Cout*kh*kw (H, W = *input* size);
                                 backward the same twice (dx is a conv of dy, dW pairs it with x).
    input_grad=False: the layer sits at the bottom (nothing upstream needs dL/dx), so its
    backward is the weight gradient alone. Layers without weights count 0.
    """
    kind = type(layer).__name__
    if kind == "Dense":
        macs = math.prod(in_shape[:-1]) * layer.in_features * layer.out_features
    elif kind == "Conv2d":
        macs = out_shape[0] * out_shape[2] * out_shape[3] * math.prod(layer.params["W"].shape)
    elif kind == "ConvTranspose2d":
        macs = in_shape[0] * in_shape[2] * in_shape[3] * math.prod(layer.params["W"].shape)
    elif layer.params:
        raise ValueError(f"layer_flops: don't know how to count {kind}")
    else:
        return 0, 0
    return 2 * macs, 2 * macs * (2 if input_grad else 1)


def model_flops(model, input_shape):
    """FLOPs of one training step's products: walks encoder, mean head, variance head, decoder.

    input_shape: the batch's shape, e.g. (128, 784) or (64, 1, 32, 32). Returns a dict with
    'forward', 'backward', 'total' and 'layers' (one row per weighted layer: name, kind, shapes,
    forward, backward). A layer needs an input gradient iff some weighted layer lies below it.
    """
    rows, state = [], {"below": False}

    def walk(prefix, layer, shape):
        if hasattr(layer, "layers"):
            for i, sub in enumerate(layer.layers):
                shape = walk(f"{prefix}.{i}", sub, shape)
            return shape
        out = _layer_out_shape(layer, shape)
        if layer.params:
            f, b = layer_flops(layer, shape, out, input_grad=state["below"])
            rows.append(dict(name=prefix, kind=type(layer).__name__, in_shape=list(shape),
                             out_shape=list(out), forward=f, backward=b))
            state["below"] = True
        return out

    h = walk("encoder", model.encoder, tuple(input_shape))
    latent = walk("mu", model.mu, h)
    walk(model.scale_name, model.scale, h)
    walk("decoder", model.decoder, latent)
    fwd = sum(r["forward"] for r in rows)
    bwd = sum(r["backward"] for r in rows)
    return dict(forward=fwd, backward=bwd, total=fwd + bwd, layers=rows)


def matmul_gflops(xp=np, dtype="float32", n=1024, repeats=5):
    """Best-of-`repeats` throughput of an n x n x n matmul, in GFLOP/s (2 n^3 FLOPs each)."""
    rng = np.random.default_rng(0)
    a = xp.asarray(rng.random((n, n)).astype(dtype))
    b = xp.asarray(rng.random((n, n)).astype(dtype))
    out = xp.empty((n, n), dtype=dtype)
    timer = make_timer(xp)
    xp.matmul(a, b, out=out)        # warm up: thread pool, caches
    best = min(timer(lambda: xp.matmul(a, b, out=out)) for _ in range(repeats))
    return 2.0 * n ** 3 / best / 1e9


# --------------------------------------------------------------------------------------------
# Timers


def make_timer(xp=np):
    """timer(fn) -> seconds fn took; on CuPy between two CUDA events, after a synchronize."""
    if backend_name(xp) == "cupy":
        def cuda_timer(fn):
            start, end = xp.cuda.Event(), xp.cuda.Event()
            start.record()
            fn()
            end.record()
            end.synchronize()
            return xp.cuda.get_elapsed_time(start, end) / 1e3
        return cuda_timer

    def cpu_timer(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return cpu_timer


# --------------------------------------------------------------------------------------------
# The process the steps are timed in


def warm_heap(mib=16):
    """Allocate and free one block of `mib` MiB, as a training script does when it loads and
    converts its data set. glibc's malloc then serves blocks up to that size from its heap and
    keeps up to twice that free, instead of mapping each large block afresh from the OS and
    handing it back when freed (a page fault per 4 KiB on every reuse)."""
    np.ones(mib << 18, dtype=np.float32)


def current_rss():
    """Resident set size of this process now, in bytes (None where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def peak_rss():
    """Peak resident set size of this process, in bytes.

    Linux: VmHWM from /proc/self/status. Not getrusage's ru_maxrss: that one survives execve, so a
    child started by a big parent would report the parent's peak. Elsewhere: ru_maxrss.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024      # Linux reports KiB


def cpu_model():
    """The processor's name, as /proc/cpuinfo (or the platform module) gives it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def in_fresh_interpreter(entry, spec, timeout, module="minivae.bench", env=None):
    """Run <module>.<entry>(json spec) in a new Python process (env: extra variables); returns
    the JSON of its last line of output."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    full_env = dict(os.environ, **(env or {}))
    full_env["PYTHONPATH"] = root + (os.pathsep + full_env["PYTHONPATH"]
                                     if full_env.get("PYTHONPATH") else "")
    code = f"import sys; from {module} import {entry}; {entry}(sys.argv[1])"
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = " ".join(proc.stderr.strip().splitlines()[-1:])
        what = ", ".join(str(spec[k]) for k in ("impl", "model") if k in spec)
        raise RuntimeError(f"{entry.strip('_')} ({what}) failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _timing_main(spec_json):
    """Entry point of the timing process: one model; prints one JSON line."""
    spec = json.loads(spec_json)
    warm_heap()
    rss_imports = current_rss()
    work = Workload(spec["model"], spec["backend"], spec["dtype"], spec["batch_size"],
                    impl=spec["impl"])
    timer = make_timer(work.xp)
    for _ in range(spec["warmup"]):
        work.step()
    times = sorted(timer(work.step) for _ in range(spec["steps"]))
    result = dict(model=spec["model"], impl=tier_of(work.model), batch_size=work.batch_size,
                  steps_per_epoch=work.steps_per_epoch(), times_ms=[t * 1e3 for t in times],
                  flops=model_flops(work.model, work.x.shape)["total"],
                  rss_after_imports=rss_imports, peak_rss=peak_rss())
    result["matmul_gflops"] = max(matmul_gflops(work.xp, spec["dtype"], n=spec["gemm_size"])
                                  for _ in range(2))
    print(json.dumps(result))


# --------------------------------------------------------------------------------------------
# The benchmark


def bench_model(model_name, backend="numpy", impl="auto", dtype="float32", batch_size=None,
                steps=50, warmup=5, gemm_size=1024, threads=None):
    """Time one model in a fresh interpreter; returns its row of the report (JSON-ready)."""
    spec = dict(model=model_name, backend=backend, impl=impl, dtype=dtype, batch_size=batch_size,
                steps=steps, warmup=warmup, gemm_size=gemm_size)
    env = {k: str(threads) for k in THREAD_VARIABLES} if threads else None
    r = in_fresh_interpreter("_timing_main", spec, timeout=3600, env=env)
    times = r.pop("times_ms")
    median = statistics.median(times)
    r.update(median_ms=median, p10_ms=times[int(0.1 * (len(times) - 1))],
             p90_ms=times[int(0.9 * (len(times) - 1))], steps=len(times),
             epoch_s=r["steps_per_epoch"] * median / 1e3,
             images_per_s=r["batch_size"] / median * 1e3,
             floor_ms=r["flops"] / (r["matmul_gflops"] * 1e9) * 1e3)
    r["x_floor"] = median / r["floor_ms"]
    if r["rss_after_imports"] is not None:
        r["workload_rss"] = r["peak_rss"] - r["rss_after_imports"]
    return r


def run(models=tuple(MODELS), backend="numpy", impl="auto", dtype="float32", batch_size=None,
        steps=50, warmup=5, gemm_size=1024, threads=None, log=None):
    """The whole benchmark: the machine, then one row per model."""
    xp = get_backend(backend)
    report = dict(machine=dict(cpu=cpu_model(), cores=os.cpu_count(),
                               python=platform.python_version(), numpy=np.__version__),
                  backend=backend_name(xp), dtype=dtype, steps=steps, warmup=warmup,
                  threads=threads, gemm_size=gemm_size, results=[])
    for name in models:
        if log:
            log(f"  {name}: timing {steps} steps in a fresh interpreter ...")
        report["results"].append(bench_model(name, report["backend"], impl, dtype, batch_size,
                                             steps, warmup, gemm_size, threads))
    return report


def _mib(b):
    return "-" if b is None else f"{b / 2 ** 20:.0f}"


def format_text(report):
    """The report as the table `minivae bench` prints."""
    m = report["machine"]
    threads = report["threads"] or "default"
    lines = [f"minivae bench: {report['backend']} backend, {report['dtype']}; {m['cpu']}, "
             f"{m['cores']} cores; numpy {m['numpy']}, BLAS threads: {threads}",
             f"{report['steps']} timed steps after {report['warmup']} warm-up steps, each model "
             f"in a fresh interpreter; s/epoch = steps per epoch x median ms/step (an estimate: "
             f"no data loading, no evaluation)",
             "",
             f"{'model':<5} {'impl':<5} {'batch':>5} {'ms/step':>9} {'p10-p90':>15} "
             f"{'s/epoch':>8} {'images/s':>9} {'floor ms':>9} {'x floor':>8} "
             f"{'peak RSS MiB (+workload)':>25}"]
    for r in report["results"]:
        mem = f"{_mib(r['peak_rss'])} (+{_mib(r.get('workload_rss'))})"
        lines.append(
            f"{r['model']:<5} {r['impl']:<5} {r['batch_size']:>5} {r['median_ms']:>9.2f} "
            f"{r['p10_ms']:>7.1f}-{r['p90_ms']:<7.1f} {r['epoch_s']:>8.1f} "
            f"{r['images_per_s']:>9.0f} {r['floor_ms']:>9.2f} {r['x_floor']:>8.1f} {mem:>25}")
    for r in report["results"]:
        lines.append(f"{r['model']}: {r['steps_per_epoch']} steps per epoch; matmul "
                     f"{report['gemm_size']}^3 at {r['matmul_gflops']:.1f} GFLOP/s gives the "
                     f"floor of {r['flops'] / 1e9:.3f} GFLOP per step")
    return "\n".join(lines)
