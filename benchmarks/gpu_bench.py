#!/usr/bin/env python
"""minivae's training step on CuPy, in kernel launches and in milliseconds, against PyTorch's.

A step is what a training loop does per batch: minivae's `loss_and_grads(x)` and its tier's
Adam step; PyTorch's twin of the same model (benchmarks/twin.py) with zero_grad, forward,
backward, torch.optim.Adam (foreach) and `loss.item()`. Both read the loss back every step.

    python benchmarks/gpu_bench.py --count        # launches per step: on the CuPy stand-in
    python benchmarks/gpu_bench.py                 # ms per step: on a GPU (seed batch and 4096)
    python benchmarks/gpu_bench.py --models conv --batch-sizes 64 --steps 100 --json out.json

--count runs each tier's step on the CuPy stand-in (PYTHONPATH=tests/standin; real CuPy has no
counters) and reports its kernel launches (as CuPy's code launches them:
tests/standin/cupy/_launches.py), device-to-host reads and host-to-device uploads, and those of
the gpu tier's step replayed from a CUDA graph, beside PyTorch's per-step count from
its operator trace on the CPU (torch.profiler): every outermost `aten::` operator of the step
that is not a view or an allocation, each counted as one CUDA kernel (a lower bound: cuDNN's
convolutions and some reductions launch several), and each `_foreach_*` operator of its Adam as
one (on CUDA one launch per op covers up to a few dozen tensors: a seed model has 10 or 26).

The timing (a GPU usable through CuPy) gives, per model and batch size, the median ms per step of
the plain tier, the gpu tier, the gpu tier's step replayed from a CUDA graph as `minivae train`
replays it (minivae/gpu/replay.py), and PyTorch eager CUDA; each step between two CUDA events
recorded on the stream it runs on, after warm-up steps, the libraries interleaved in blocks.
Without a GPU it says so in one line (status 1; 0 with --skip-without-gpu).
"""

import json
import statistics
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]

from benchmarks.harness import BenchError, Parser, at_least, emit  # noqa: E402

TIERS = ("plain", "gpu")
LARGE_BATCH = 4096
TORCH_DEVICE = "cuda"                 # tests rehearse the timing on the CPU with "cpu"
# PyTorch operators that launch no kernel: views, metadata and allocations.
NO_KERNEL = {"aten::view", "aten::reshape", "aten::_reshape_alias", "aten::t", "aten::transpose",
             "aten::permute", "aten::expand", "aten::as_strided", "aten::unsqueeze",
             "aten::squeeze", "aten::select", "aten::slice", "aten::detach", "aten::alias",
             "aten::flatten", "aten::unflatten", "aten::contiguous", "aten::empty",
             "aten::empty_like", "aten::empty_strided", "aten::resolve_conj",
             "aten::resolve_neg", "aten::lift_fresh", "aten::numpy_T", "aten::_unsafe_view",
             "aten::expand_as", "aten::view_as", "aten::result_type", "aten::is_nonzero",
             "aten::to", "aten::_to_copy"}


def spec(name):
    from minivae.models import MODELS as REGISTRY
    return REGISTRY[name]


def minivae_step(name, batch, impl, xp):
    """(model, host batch, step) for minivae's tier `impl` on array module xp."""
    from minivae.tiers import build_model, make_adam

    s = spec(name).defaults
    model = build_model(name, seed=0, backend=xp.__name__.split(".")[0], impl=impl)
    opt = make_adam(model, lr=s["lr"])
    host_x = np.random.default_rng(1).random(spec(name).input_shape(batch), dtype=np.float32)
    x = xp.asarray(host_x)

    def step():
        model.loss_and_grads(x, beta=s["beta"], weight_decay=s["weight_decay"])
        opt.step()
    return model, host_x, step


def torch_step(name, host_x, device):
    """PyTorch's step of the twin of the seed model, on `device`."""
    import torch

    from benchmarks.twin import torch_twin
    from minivae.tiers import build_model

    s = spec(name).defaults
    twin = torch_twin(build_model(name, seed=0, impl="plain"), device=device)
    x = torch.from_numpy(host_x).to(device)
    opt = torch.optim.Adam(twin.parameters(), lr=s["lr"], foreach=True)
    eps_shape = (x.shape[0], s["latent_dim"])

    def step():
        eps = torch.randn(eps_shape, dtype=x.dtype, device=device)
        opt.zero_grad(set_to_none=True)
        loss = twin(x, eps, s["beta"], s["weight_decay"])[0]
        loss.backward()
        opt.step()
        return loss.item()
    return step


# --------------------------------------------------------------------------------------------
# --count


def torch_kernels(step):
    """Kernels PyTorch's step launches on CUDA, counted from its operator trace on the CPU."""
    from torch.profiler import ProfilerActivity, profile

    step()
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    count = 0

    def walk(event, counted_above):
        nonlocal count
        if event.name.startswith("aten::") and event.name not in NO_KERNEL and not counted_above:
            count += 1
            counted_above = True
        for child in event.cpu_children:
            walk(child, counted_above)
    for event in prof.events():
        if event.cpu_parent is None:
            walk(event, False)
    return count


def count_rows(models, batch_sizes):
    import cupy

    if not hasattr(cupy, "standin"):
        raise BenchError("--count needs the CuPy stand-in (PYTHONPATH=tests/standin): real "
                         "CuPy does not count its launches")
    try:
        import torch  # noqa: F401
    except ImportError:
        torch = None
    rows = []
    for name in models:
        for size in batch_sizes:
            batch = spec(name).defaults["batch_size"] if size == "seed" else size
            row = dict(model=name, batch_size=batch)
            for impl in TIERS:
                _, host_x, step = minivae_step(name, batch, impl, cupy)
                step()
                cupy.standin.reset()
                step()
                row[impl] = cupy.standin.counts()
            graph = graph_step(name, batch, cupy, 3)
            row["graph"] = None
            if graph is not None:
                graph[0]()
                cupy.standin.reset()
                graph[0]()
                row["graph"] = cupy.standin.counts()
            row["torch"] = (torch_kernels(torch_step(name, host_x, "cpu"))
                            if torch is not None else None)
            rows.append(row)
    return dict(kind="count", rows=rows)


def _counts(c):
    return "-" if c is None else f"{c['launches']} / {c['reads']} / {c['uploads']}"


def format_counts(report):
    lines = [f"{'model':<5} {'batch':>5}  {'plain':>14}  {'gpu':>10}  {'graph':>9}  "
             f"{'PyTorch kernels':>15}  gpu / PyTorch   (launches / reads / uploads a step)"]
    for r in report["rows"]:
        t = r["torch"]
        lines.append(f"{r['model']:<5} {r['batch_size']:>5}  {_counts(r['plain']):>14}  "
                     f"{_counts(r['gpu']):>10}  {_counts(r['graph']):>9}  "
                     f"{t if t is not None else '-':>15}  "
                     f"{r['gpu']['launches'] / t if t else float('nan'):>13.2f}")
    return "\n".join(lines)


def markdown_counts(report):
    rows = ["| model, batch | plain tier: launches / reads / uploads | gpu tier | gpu tier, "
            "graph | PyTorch eager (kernels) | gpu / PyTorch |", "|---|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        t = r["torch"]
        ratio = f"{r['gpu']['launches'] / t:.2f}" if t else "-"
        rows.append(f"| {r['model']}, {r['batch_size']} | {_counts(r['plain'])} | "
                    f"{_counts(r['gpu'])} | {_counts(r['graph'])} | {t or '-'} | {ratio} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------------------------
# Timing


def cuda_timer(cupy):
    """timed(fn, stream) -> ms between two CUDA events recorded on `stream` around fn, which
    runs its work on that stream (an event on another stream would not wait for it)."""
    def timed(fn, stream):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        with stream:
            start.record(stream)
            fn()
            end.record(stream)
        end.synchronize()
        return cupy.cuda.get_elapsed_time(start, end)
    return timed


def graph_step(name, batch, cupy, replays):
    """(replay, stream): the gpu tier's step replayed from a CUDA graph as `minivae train`
    replays it (minivae/gpu/replay.py: the batch and its noise picked on the device, Adam's
    count advancing at every replay, for up to `replays` replays); None where this CuPy or
    driver cannot capture it, with one line saying why."""
    from minivae.gpu.replay import GraphUnavailable, ReplayedStep
    from minivae.tiers import build_model, make_adam

    s = spec(name).defaults
    model = build_model(name, seed=0, backend="cupy", impl="gpu")
    opt = make_adam(model, lr=s["lr"])
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2 * batch, 28, 28), dtype=np.uint8)
    step = ReplayedStep(model, opt, images, spec(name), batch, s["weight_decay"], replays)
    step.load_trial(s["beta"], 1, replays)
    try:
        step.capture()
    except GraphUnavailable as e:
        print(f"gpu_bench.py: no CUDA graph row for {name}: {e}", file=sys.stderr)
        return None
    return step.replay, step.stream


def time_rows(args, cupy):
    try:
        import torch
        torch_ok = torch.cuda.is_available() or TORCH_DEVICE == "cpu"
    except ImportError:
        torch, torch_ok = None, False
    timed, rows = cuda_timer(cupy), []
    for name in args.models:
        for size in args.batch_sizes:
            batch = spec(name).defaults["batch_size"] if size == "seed" else size
            steps = {impl: minivae_step(name, batch, impl, cupy)[2] for impl in TIERS}
            host_x = minivae_step(name, batch, "gpu", cupy)[1]
            graph = graph_step(name, batch, cupy, args.warmup + args.steps + 1)
            if graph is not None:
                steps["gpu graph"] = graph[0]
            if torch_ok:
                steps["pytorch"] = torch_step(name, host_x, TORCH_DEVICE)
            for fn in steps.values():
                for _ in range(args.warmup):
                    fn()
            times = {label: [] for label in steps}
            streams = {label: cupy.cuda.get_current_stream() for label in steps}
            if graph is not None:
                streams["gpu graph"] = graph[1]
            for _ in range(args.repeats):
                for label, fn in steps.items():
                    times[label] += [timed(fn, streams[label])
                                     for _ in range(max(1, args.steps // args.repeats))]
            row = dict(model=name, batch_size=batch,
                       ms={label: statistics.median(t) for label, t in times.items()})
            if "pytorch" in row["ms"]:
                row["vs_pytorch"] = {k: v / row["ms"]["pytorch"] for k, v in row["ms"].items()}
            rows.append(row)
    return dict(kind="time", device=device_name(cupy), cupy=cupy.__version__,
                torch=getattr(torch, "__version__", None), steps=args.steps, rows=rows)


def device_name(cupy):
    name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def format_times(report):
    labels = list(dict.fromkeys(k for r in report["rows"] for k in r["ms"]))
    lines = [f"gpu_bench: {report['device']}; cupy {report['cupy']}, torch {report['torch']}; "
             f"ms per step "
             f"(median of {report['steps']}), and / PyTorch eager",
             f"{'model':<5} {'batch':>5} " + " ".join(f"{label:>18}" for label in labels)]
    for r in report["rows"]:
        cells = [f"{r['ms'][k]:8.3f}" + (f" ({r['vs_pytorch'][k]:4.2f}x)" if "vs_pytorch" in r
                                          else " " * 8) if k in r["ms"] else "-" for k in labels]
        lines.append(f"{r['model']:<5} {r['batch_size']:>5} " + " ".join(f"{c:>18}" for c in cells))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------


def parse_args(argv):
    p = Parser(prog="gpu_bench.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--count", action="store_true", help="launches per step (CuPy stand-in)")
    from minivae.models import MODELS as REGISTRY
    p.add_argument("--models", nargs="+", choices=tuple(REGISTRY), default=list(REGISTRY))
    p.add_argument("--batch-sizes", nargs="+", default=None, metavar="N",
                   type=lambda t: t if t == "seed" else at_least(1)(t),
                   help=f"'seed' or a number (default: seed, and {LARGE_BATCH} when timing)")
    p.add_argument("--steps", type=at_least(1), default=50)
    p.add_argument("--warmup", type=at_least(1), default=10)
    p.add_argument("--repeats", type=at_least(1), default=5, help="interleaved blocks")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--save", metavar="PATH", help="also write the report as JSON to PATH")
    p.add_argument("--markdown", action="store_true", help="the counts as BENCHMARKS.md's table")
    p.add_argument("--skip-without-gpu", action="store_true",
                   help="without a usable GPU, exit with status 0 instead of 1")
    args = p.parse_args(argv)
    args.batch_sizes = args.batch_sizes or (["seed"] if args.count else ["seed", LARGE_BATCH])
    return args


def main(argv=None):
    args = parse_args(argv)
    from minivae.backend import cupy_status

    cupy, reason = cupy_status()
    try:
        if cupy is None:
            raise BenchError(f"no GPU usable through CuPy here ({reason})")
        if args.count:
            report, text, markdown = count_rows(args.models, args.batch_sizes), \
                format_counts, markdown_counts
        else:
            report, text, markdown = time_rows(args, cupy), format_times, None
        if args.save:
            Path(args.save).write_text(json.dumps(report, indent=2) + "\n")
        emit(report, args, text, markdown)
    except BenchError as e:
        skipped = cupy is None and args.skip_without_gpu
        print(f"gpu_bench.py: {'skipped' if skipped else 'error'}: {e}", file=sys.stderr)
        return 0 if skipped else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
