#!/usr/bin/env python
"""minivae on CuPy against the same model in PyTorch eager CUDA: one full training step each.

A step is what a training loop does per batch. minivae: `model.loss_and_grads(x)` (forward,
backward, the loss terms read back as Python floats) and `Adam.step()`. PyTorch: the twin model
(the same layers with minivae's parameters copied in), zero_grad, forward, backward,
`torch.optim.Adam.step()` and `loss.item()`, so both read the loss back every step. Both in
float32 on one fixed batch of the seed's shape, with the seed's lr, beta and weight decay.

For each model and batch size (the seed's, 128 for mlp and 64 for conv, and 4096):

* ms per step: each step between two CUDA events, after warm-up steps that take CuPy's kernel
  compilation and the libraries' handle set-up out of the numbers; the two libraries interleaved
  in blocks (minivae's block, then PyTorch's), median over all blocks; ratio minivae / PyTorch,
  with the range of the per-block ratios.
* share of the GEMM throughput: the FLOPs of the step's matrix products and convolutions
  (`model_flops`: counted from the layer shapes, forward and both gradients, 2 per multiply-add;
  elementwise work not counted) per second of step, over the throughput that CuPy's float32
  matmul of one large square reaches on this GPU (median of several, CUDA events).

    python benchmarks/gpu_bench.py                          # both models, seed batch and 4096
    python benchmarks/gpu_bench.py --models conv --batch-sizes 64 --steps 100 --json
    python benchmarks/gpu_bench.py --json out.json          # the table, and the report as JSON
    python benchmarks/gpu_bench.py --skip-without-gpu       # one line and status 0 on a CPU box

Without a GPU usable through CuPy it prints one line and exits with status 1 (0 with
--skip-without-gpu). Without PyTorch (or its CUDA) minivae is timed alone and the report says why.
"""

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]        # the checkout's minivae; benchmarks/ modules

MODELS = ("mlp", "conv")
INPUT_SHAPE = {"mlp": (784,), "conv": (1, 32, 32)}   # one image as each seed model reads it
LARGE_BATCH = 4096
# Where each library computes; tests rehearse the whole benchmark on the CPU with "numpy" / "cpu".
MINIVAE_BACKEND = "cupy"
TORCH_DEVICE = "cuda"


def seed_settings(model_name):
    """The seed's training settings for `model_name` (batch_size, lr, beta, weight_decay, ...)."""
    from minivae.models import MODELS as REGISTRY
    return REGISTRY[model_name].defaults


def step_flops(model_name, batch_size, model=None):
    """FLOPs of one training step's products for the seed model at `batch_size`."""
    if model is None:
        from minivae.tiers import build_model
        model = build_model(model_name)
    from minivae.bench import model_flops
    return model_flops(model, (batch_size,) + INPUT_SHAPE[model_name])["total"]


# --------------------------------------------------------------------------------------------
# The two steps and their timers


def minivae_step(model_name, batch_size, impl, cupy):
    """(model, host batch, step function) for minivae on CuPy."""
    from minivae.tiers import build_model, make_adam

    cfg = seed_settings(model_name)
    model = build_model(model_name, seed=0, dtype=np.float32, backend=MINIVAE_BACKEND, impl=impl)
    opt = make_adam(model, lr=cfg["lr"])
    host_x = np.random.default_rng(1).random((batch_size,) + INPUT_SHAPE[model_name],
                                             dtype=np.float32)   # timing ignores pixel values
    x = cupy.asarray(host_x)

    def step():
        model.loss_and_grads(x, beta=cfg["beta"], weight_decay=cfg["weight_decay"])
        opt.step()
    return model, host_x, step


def torch_step(model_name, model, host_x, torch):
    """The step of minivae's `model` as a PyTorch twin on CUDA, on the same batch."""
    from twin import torch_twin
    cfg = seed_settings(model_name)
    twin = torch_twin(model, device=TORCH_DEVICE)
    x = torch.from_numpy(host_x).to(TORCH_DEVICE)
    opt = torch.optim.Adam(twin.parameters(), lr=cfg["lr"])
    gen = torch.Generator(device=TORCH_DEVICE).manual_seed(0)
    eps_shape = (x.shape[0], model.latent_dim)

    def step():
        eps = torch.randn(eps_shape, generator=gen, dtype=x.dtype, device=TORCH_DEVICE)
        opt.zero_grad(set_to_none=True)
        loss = twin(x, eps, cfg["beta"], cfg["weight_decay"])[0]
        loss.backward()
        opt.step()
        return loss.item()
    return step


def cuda_timer(cupy):
    """timed(fn) -> ms between two CUDA events around fn, recorded on CuPy's current stream.

    It times PyTorch's step too: both libraries issue their work on the device's default stream,
    and both steps end by reading the loss back to the host, so all their work lies between the
    two events."""
    def timed(fn):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return cupy.cuda.get_elapsed_time(start, end)
    return timed


def blocks(steps, repeats):
    """`steps` split into `repeats` blocks as evenly as possible (no empty block)."""
    repeats = max(1, min(repeats, steps))
    return [steps // repeats + (i < steps % repeats) for i in range(repeats)]


def summary(times_ms):
    ts = sorted(times_ms)
    return dict(median_ms=statistics.median(ts), p10_ms=ts[int(0.1 * (len(ts) - 1))],
                p90_ms=ts[int(0.9 * (len(ts) - 1))], steps=len(ts))


def gemm_flops_per_s(cupy, n, repeats=10):
    """Median float32 throughput of cupy.matmul on n x n squares (2 n^3 FLOPs each), FLOP/s."""
    rng = np.random.default_rng(0)
    a = cupy.asarray(rng.random((n, n), dtype=np.float32))
    b = cupy.asarray(rng.random((n, n), dtype=np.float32))
    out = cupy.empty((n, n), dtype=np.float32)
    timed = cuda_timer(cupy)
    for _ in range(2):
        timed(lambda: cupy.matmul(a, b, out=out))
    ms = statistics.median(timed(lambda: cupy.matmul(a, b, out=out)) for _ in range(repeats))
    return 2.0 * n ** 3 / (ms / 1e3)


# --------------------------------------------------------------------------------------------
# The benchmark


def bench_one(model_name, batch_size, args, cupy, torch, gemm):
    """One row: both libraries on one model and batch size, interleaved."""
    model, host_x, mv_step = minivae_step(model_name, batch_size, args.impl, cupy)
    flops = step_flops(model_name, batch_size, model)
    row = dict(model=model_name, batch_size=batch_size, impl=__import__("minivae.tiers").tiers.tier_of(model), flops=flops,
               minivae=None, torch=None, ratio=None, block_ratios=None, torch_skipped=None)
    th_step = None
    if isinstance(torch, str):
        row["torch_skipped"] = torch
    else:
        th_step = torch_step(model_name, model, host_x, torch)
    timed = cuda_timer(cupy)
    for _ in range(args.warmup):
        mv_step()
        if th_step:
            th_step()
    mv, th, ratios = [], [], []
    for k in blocks(args.steps, args.repeats):
        cupy.cuda.Device().synchronize()
        a = [timed(mv_step) for _ in range(k)]
        mv += a
        if th_step:
            torch.cuda.synchronize()
            b = [timed(th_step) for _ in range(k)]
            th += b
            ratios.append(statistics.median(a) / statistics.median(b))
    for name, times in (("minivae", mv), ("torch", th)):
        if times:
            s = summary(times)
            s["gemm_share"] = flops / (s["median_ms"] / 1e3) / gemm
            row[name] = s
    if th:
        row["ratio"] = row["minivae"]["median_ms"] / row["torch"]["median_ms"]
        row["block_ratios"] = ratios
    return row


def torch_or_reason():
    """torch with a usable CUDA device, or a string saying why not."""
    try:
        import torch
    except Exception as e:
        return f"PyTorch does not import ({type(e).__name__}: {e})"
    if not torch.cuda.is_available():
        return f"PyTorch {torch.__version__} sees no CUDA device"
    return torch


def device_info(cupy, torch):
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"]
    info = dict(device=name.decode() if isinstance(name, bytes) else str(name),
                compute_capability=f"{props['major']}.{props['minor']}",
                cuda_runtime=cupy.cuda.runtime.runtimeGetVersion(),
                cuda_driver=cupy.cuda.runtime.driverGetVersion(),
                cupy=cupy.__version__, numpy=np.__version__,
                cupy_tf32=os.environ.get("CUPY_TF32", "0"), torch=None)
    if not isinstance(torch, str):
        info.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                    torch_matmul_tf32=torch.backends.cuda.matmul.allow_tf32,
                    torch_cudnn_tf32=torch.backends.cudnn.allow_tf32,
                    cudnn=torch.backends.cudnn.version())
    return info


def run(args, cupy):
    torch = torch_or_reason()
    report = dict(machine=device_info(cupy, torch), dtype="float32", steps=args.steps,
                  warmup=args.warmup, repeats=args.repeats, gemm_n=args.gemm_size, rows=[])
    gemm = gemm_flops_per_s(cupy, args.gemm_size)
    report["gemm_flops_per_s"] = gemm
    for name in args.models:
        for size in args.batch_sizes:
            batch = seed_settings(name)["batch_size"] if size == "seed" else size
            report["rows"].append(bench_one(name, batch, args, cupy, torch, gemm))
            cupy.get_default_memory_pool().free_all_blocks()
            if not isinstance(torch, str):
                torch.cuda.empty_cache()
    return report


def _cell(value, fmt, unit=""):
    return "-" if value is None else format(value, fmt) + unit


def _version(v):
    return f"{v // 1000}.{v % 1000 // 10}"


def format_text(report):
    m = report["machine"]
    torch_text = (f"torch {m['torch']} (CUDA {m['torch_cuda']}, cuDNN {m['cudnn']}; TF32: "
                  f"matmul {'on' if m['torch_matmul_tf32'] else 'off'}, cuDNN "
                  f"{'on' if m['torch_cudnn_tf32'] else 'off'})" if m["torch"] else "no torch")
    lines = [
        f"gpu_bench: {m['device']} (compute {m['compute_capability']}, driver CUDA "
        f"{_version(m['cuda_driver'])}, runtime {_version(m['cuda_runtime'])}); cupy "
        f"{m['cupy']} (CUPY_TF32={m['cupy_tf32']}), {torch_text}, numpy {m['numpy']}; float32",
        f"GEMM {report['gemm_n']}^3 float32 through cupy.matmul: "
        f"{report['gemm_flops_per_s'] / 1e12:.1f} TFLOP/s (median of 10)",
        f"{report['steps']} timed steps per library in "
        f"{len(blocks(report['steps'], report['repeats']))} interleaved blocks after "
        f"{report['warmup']} warm-up steps; CUDA events",
        "",
        f"{'model':<5} {'batch':>5} {'tier':<5} {'GFLOP':>8} {'minivae ms':>10} {'pytorch ms':>10} "
        f"{'ratio':>6} {'(blocks)':>11} {'minivae GEMM%':>13} {'pytorch GEMM%':>13}"]
    for r in report["rows"]:
        mv, th, br = r["minivae"], r["torch"], r["block_ratios"]
        lines.append(
            f"{r['model']:<5} {r['batch_size']:>5} {r['impl']:<5} {r['flops'] / 1e9:>8.3f} "
            f"{mv['median_ms']:>10.3f} {_cell(th and th['median_ms'], '.3f'):>10} "
            f"{_cell(r['ratio'], '.2f'):>6} "
            f"{f'{min(br):.2f}-{max(br):.2f}' if br else '-':>11} "
            f"{_cell(100 * mv['gemm_share'], '.1f', '%'):>13} "
            f"{_cell(th and 100 * th['gemm_share'], '.1f', '%'):>13}")
        if r["torch_skipped"]:
            lines.append(f"{'':<11} pytorch skipped: {r['torch_skipped']}")
    return "\n".join(lines)


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def batch_size_arg(text):
    return text if text == "seed" else positive_int(text)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="gpu_bench.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--batch-sizes", nargs="+", type=batch_size_arg, default=["seed", LARGE_BATCH],
                   metavar="N", help=f"'seed' (128 for mlp, 64 for conv) or a number "
                                     f"(default: seed {LARGE_BATCH})")
    p.add_argument("--steps", type=positive_int, default=50,
                   help="timed steps per library, model and batch size (default: %(default)s)")
    p.add_argument("--warmup", type=positive_int, default=10, help="default: %(default)s")
    p.add_argument("--repeats", type=positive_int, default=5,
                   help="interleaved blocks the timed steps are split into (default: %(default)s)")
    p.add_argument("--gemm-size", type=positive_int, default=8192, metavar="N",
                   help="N x N x N float32 matmul measuring the GEMM throughput "
                        "(default: %(default)s)")
    p.add_argument("--impl", choices=("auto", "plain", "fast"), default="auto",
                   help="minivae's tier (default: %(default)s, the plain tier on CuPy)")
    p.add_argument("--json", nargs="?", const="-", metavar="PATH",
                   help="print the report as JSON instead of the table; with PATH, write it "
                        "there and print the table")
    p.add_argument("--skip-without-gpu", action="store_true",
                   help="without a usable GPU, exit with status 0 (for tests) instead of 1")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from minivae.backend import cupy_status

    cupy, reason = cupy_status()
    if cupy is None:
        verdict = "skipped" if args.skip_without_gpu else "error"
        print(f"gpu_bench.py: {verdict}: no GPU usable through CuPy here ({reason})",
              file=sys.stderr)
        return 0 if args.skip_without_gpu else 1
    report = run(args, cupy)
    if args.json == "-":
        print(json.dumps(report, indent=2))
        return 0
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(format_text(report))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:                         # one line, as the minivae command does
        if os.environ.get("MINIVAE_DEBUG"):
            raise
        print(f"gpu_bench.py: error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
