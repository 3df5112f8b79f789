"""`minivae bench`: how long one training step takes, next to PyTorch and next to the GEMM floor.

One training step is what the training loop does per batch: `model.loss_and_grads(x)` (forward,
backward, loss terms as Python floats) followed by `Adam.step()`, with the seed's batch size,
learning rate and weight decay. For each model we report:

* median milliseconds per step. Every step is timed on its own (perf_counter on the CPU; CUDA
  events with a synchronize on CuPy) after `--warmup` untimed steps; the median shrugs off the
  odd step that another process on the machine slowed down.
* the same architecture in PyTorch eager (`torch_twin`: built by walking our model's layers, our
  parameters copied in), when torch can be imported. torch is never a dependency: it is imported
  only here, only when asked for. Both run in one process, in the same dtype, with PyTorch told
  to use as many threads as NumPy's BLAS, and *interleaved*: `--repeats` blocks of minivae steps
  alternate with blocks of PyTorch steps, so load from other processes hits both alike and the
  ratio of the medians is fair even on a busy machine. Each model gets a fresh interpreter of
  its own: glibc's malloc raises its mmap threshold to the largest block freed so far, so what
  ran earlier in a process would change how both libraries' buffers are allocated, and with
  it how many page faults each step takes (BENCHMARKS.md, "The allocator").
* the GEMM floor: the floating-point operations of the step's matrix products and convolutions
  (forward, weight gradients, input gradients; counted from the layer shapes by `model_flops`,
  2 per multiply-add; elementwise work is not counted), divided by the float throughput this
  machine reaches on one large square matmul (`matmul_gflops`, best of several; with PyTorch
  present, the better of NumPy's BLAS and PyTorch's on the same matmul, measured after the
  steps, for the reason above). "x floor" says how far above it each implementation is.
* peak memory, measured in a fresh interpreter per implementation (`memory_probe`): the peak
  resident set size (getrusage ru_maxrss) of a process that imports the libraries, builds the
  model and optimizer and runs warm-up + a few steps, and that peak minus the RSS right after the
  imports (what the workload itself added). For minivae on NumPy it also reports the peak bytes
  NumPy allocated *during* one step above what was live before it (NumPy reports its data
  buffers to tracemalloc), i.e. the step's transient working set.

    minivae bench                        # both models, NumPy, with PyTorch if importable
    minivae bench --model conv --steps 100 --json
    minivae bench --markdown             # the rows of BENCHMARKS.md's table
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

MODELS = ("mlp", "conv")
# A pause before each block of steps: OpenBLAS's idle worker threads spin for ~0.1 s after a
# product before they sleep (OpenMP's do too, for less), and on two cores a spinning thread of
# the library that just ran slows the other one's first steps. Without it the interleaving
# charges that to PyTorch (MLP: 6.5 ms/step alone, 8-10 ms interleaved).
BLOCK_PAUSE_S = 0.3
# The seeds' hyper-parameters (minivae.train.MODEL_DEFAULTS holds the same; train.py is not
# imported here because it pulls in the plotting stack, which would inflate the memory probe).
SEED_CONFIG = {
    "mlp": dict(batch_size=128, lr=1e-3, weight_decay=0.01, beta=1.0, input_shape=(784,)),
    "conv": dict(batch_size=64, lr=1e-4, weight_decay=0.01, beta=1.0, input_shape=(1, 32, 32)),
}


# --------------------------------------------------------------------------------------------
# The minivae workload


class Workload:
    """A model, its optimizer and one fixed batch; `step()` is one training step."""

    def __init__(self, model_name, backend="numpy", dtype="float32", batch_size=None, seed=0):
        from minivae.backend import get_backend, to_device
        from minivae.models import ConvVAE, MLPVAE
        from minivae.optim import Adam

        cfg = SEED_CONFIG[model_name]
        self.name, self.cfg = model_name, cfg
        self.batch_size = batch_size or cfg["batch_size"]
        self.xp = get_backend(backend)
        cls = MLPVAE if model_name == "mlp" else ConvVAE
        self.model = cls(seed=seed, dtype=np.dtype(dtype).type, backend=_backend_name(self.xp))
        self.opt = Adam(self.model, lr=cfg["lr"])
        rng = np.random.default_rng(seed + 1)
        # Pixels uniform in [0, 1]: the step's cost does not depend on the values.
        host_x = rng.random((self.batch_size,) + cfg["input_shape"]).astype(dtype)
        self.x = to_device(host_x, self.xp)

    def step(self):
        self.model.loss_and_grads(self.x, beta=self.cfg["beta"],
                                  weight_decay=self.cfg["weight_decay"])
        self.opt.step()


def _backend_name(xp):
    return "cupy" if xp.__name__.startswith("cupy") else "numpy"


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


# --------------------------------------------------------------------------------------------
# Timers


def make_timer(xp=np):
    """timer(fn) -> seconds fn took; on CuPy between two CUDA events, after a synchronize."""
    if _backend_name(xp) == "cupy":
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


# --------------------------------------------------------------------------------------------
# The PyTorch twin (torch is imported lazily, only by these functions)


def torch_available():
    try:
        import torch  # noqa: F401
    except Exception:
        return False
    return True


def torch_name(name):
    """minivae parameter name -> the twin's: 'encoder.0.W' -> 'encoder.0.weight', '.b' -> '.bias'."""
    prefix, key = name.rsplit(".", 1)
    return prefix + "." + {"W": "weight", "b": "bias"}[key]


def _torch_module(layer):
    from torch import nn

    kind = type(layer).__name__
    if hasattr(layer, "layers"):
        return nn.Sequential(*[_torch_module(sub) for sub in layer.layers])
    if kind == "Dense":
        return nn.Linear(layer.in_features, layer.out_features)
    if kind == "Conv2d":
        return nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                         stride=layer.stride, padding=layer.padding)
    if kind == "ConvTranspose2d":
        return nn.ConvTranspose2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                                  stride=layer.stride, padding=layer.padding)
    simple = {"ReLU": nn.ReLU, "Tanh": nn.Tanh, "Sigmoid": nn.Sigmoid, "Flatten": nn.Flatten}
    if kind in simple:
        return simple[kind]()
    if kind == "Reshape":
        return nn.Unflatten(1, tuple(layer.shape))
    raise ValueError(f"torch_twin: no PyTorch equivalent for {kind}")


def torch_twin(model, device="cpu"):
    """The same VAE in PyTorch: same layers, same names, minivae's current parameters copied in.

    Returns an nn.Module whose forward(x, eps, beta, weight_decay) gives (loss, recon, kl, reg)
    as tensors, computed exactly as minivae's objective (see models.py): z = mu + eps * sigma with
    log sigma = c * (scale head), c = model.LOG_SIGMA_PER_UNIT; recon = summed BCE-with-logits / N;
    kl = sum (exp(v) + mu^2 - 1 - v) / 2 / N with v = log sigma^2; reg = lambda * sum p^2 over
    model.regularized.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    class TorchVAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = _torch_module(model.encoder)
            self.mu = _torch_module(model.mu)
            self.scale_name = model.scale_name
            setattr(self, model.scale_name, _torch_module(model.scale))
            self.decoder = _torch_module(model.decoder)
            self.c = float(model.LOG_SIGMA_PER_UNIT)
            self.regularized = [torch_name(k) for k in model.regularized]

        def forward(self, x, eps, beta=1.0, weight_decay=0.01):
            n = x.shape[0]
            h = self.encoder(x)
            mu, s = self.mu(h), getattr(self, self.scale_name)(h)
            logits = self.decoder(mu + eps * torch.exp(self.c * s))
            recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / n
            v = (2 * self.c) * s
            kl = 0.5 * (torch.exp(v) + mu * mu - 1 - v).sum() / n
            named = dict(self.named_parameters())
            reg = weight_decay * sum((named[k] * named[k]).sum() for k in self.regularized)
            return recon + beta * kl + reg, recon, kl, reg

    twin = TorchVAE()
    copy_params_to_torch(model, twin)
    return twin.to(device)


def copy_params_to_torch(model, twin):
    """Copy minivae's parameters into the twin, in minivae's dtype (Dense W is torch's weight.T)."""
    import torch
    from torch import nn

    from minivae.backend import to_host

    dtype = None
    for name, p in model.params.items():
        tname = torch_name(name)
        owner = twin.get_submodule(tname.rsplit(".", 1)[0])
        value = to_host(p)
        if isinstance(owner, nn.Linear) and tname.endswith(".weight"):
            value = value.T
        tp = twin.get_parameter(tname)
        if tuple(tp.shape) != value.shape:
            raise ValueError(f"{name}: shape {value.shape} vs torch {tuple(tp.shape)}")
        dtype = getattr(torch, str(value.dtype))
        tp.data = torch.from_numpy(np.ascontiguousarray(value)).to(dtype).clone()
    return twin


class TorchWorkload:
    """The PyTorch eager twin of a Workload: same parameters, batch, dtype and hyper-parameters."""

    def __init__(self, workload, device="cpu", seed=0):
        import torch

        self.torch = torch
        model = workload.model
        from minivae.backend import to_host

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


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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


def _current_rss():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _max_rss():
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
    rss_imports = _current_rss()
    work = Workload(spec["model"], spec["backend"], spec["dtype"], spec["batch_size"])
    runner = work if impl == "minivae" else TorchWorkload(
        work, device="cuda" if spec["backend"] == "cupy" else "cpu")
    if impl == "torch":
        del work.model, work.opt     # only the twin should be resident
    for _ in range(spec["steps"]):
        runner.step()
    out = dict(rss_after_imports=rss_imports, peak_rss=_max_rss())
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
                batch_size=batch_size or SEED_CONFIG[model]["batch_size"], threads=threads)
    out = _in_fresh_interpreter("_probe_main", spec, timeout)
    if out.get("rss_after_imports") is not None:
        out["workload_rss"] = out["peak_rss"] - out["rss_after_imports"]
    return out


def _in_fresh_interpreter(entry, spec, timeout, module="minivae.bench"):
    """Run <module>.<entry>(json spec) in a new Python process; returns its JSON line."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    code = f"import sys; from {module} import {entry}; {entry}(sys.argv[1])"
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = " ".join(proc.stderr.strip().splitlines()[-1:])
        what = ", ".join(str(spec[k]) for k in ("impl", "model") if k in spec)
        raise RuntimeError(f"{entry.strip('_')} ({what}) failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


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


def warm_heap(mib=16):
    """Allocate and free one block of `mib` MiB, as a training script does when it loads and
    converts its data set. glibc's malloc then serves blocks up to that size from its heap and
    keeps up to twice that free, instead of mapping each large block afresh from the OS and
    handing it back when freed (a page fault per 4 KiB on every reuse)."""
    np.ones(mib << 18, dtype=np.float32)


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
    result = dict(model=model_name, backend=_backend_name(xp), dtype=dtype,
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


def run(models=MODELS, backend="numpy", dtype="float32", batch_size=None, steps=50, warmup=5,
        repeats=5, with_torch=True, memory=True, gemm_size=1024, threads=None, warm_heap=True,
        log=None):
    """The whole benchmark: machine info, matmul throughput, one result per model."""
    from minivae.backend import get_backend

    xp = get_backend(backend)
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
    report = dict(machine=info, backend=_backend_name(xp), dtype=dtype, steps=steps,
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
                    steps=steps, warmup=warmup, repeats=repeats, with_torch=with_torch,
                    threads=threads, warm_heap=warm_heap)
        result = _in_fresh_interpreter("_timing_main", spec, timeout=3600)
        if memory:
            add_memory(result, threads, log)
        report["results"].append(result)
    # Twice, keeping the best: the machine's speed drifts on a shared box.
    numpy_gflops = max(matmul_gflops(xp, dtype, n=gemm_size) for _ in range(2))
    torch_gflops = None
    if with_torch and _backend_name(xp) == "numpy":
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
            lines.append(f"{'':<5} {'':>5} minivae allocates {_mib(mem['step_transient_bytes']):.1f}"
                         f" MiB of NumPy buffers at its peak within one step")
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
    from minivae.cli import non_negative_int, positive_int

    parser.description = ("Median milliseconds per training step (loss_and_grads + Adam) of each "
                          "seed model, next to PyTorch eager (when importable, timed interleaved "
                          "in the same process) and to the GEMM floor; peak memory measured in "
                          "fresh subprocesses.")
    parser.add_argument("--model", choices=MODELS, action="append",
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
    models = tuple(dict.fromkeys(args.model)) if args.model else MODELS
    log = (lambda msg: print(msg, file=sys.stderr, flush=True))
    report = run(models, backend=args.backend, dtype=args.dtype, batch_size=args.batch_size,
                 steps=args.steps, warmup=args.warmup, repeats=args.repeats,
                 with_torch=not args.no_torch, memory=not args.no_memory,
                 gemm_size=args.gemm_size, threads=args.threads, warm_heap=not args.cold_heap,
                 log=log)
    if args.backend == "auto":
        log(f"minivae: backend auto -> {report['backend']}")
    if args.json:
        print(json.dumps(report, indent=2))
    elif args.markdown:
        print(format_markdown(report))
    else:
        print(format_text(report))
    return 0
