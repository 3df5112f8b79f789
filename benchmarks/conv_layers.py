#!/usr/bin/env python
"""Where the conv step's time goes, layer by layer: ConvVAE's six convolutions against PyTorch's.

    python benchmarks/conv_layers.py                    # 3 rounds of 100 calls per layer
    python benchmarks/conv_layers.py --rounds 5 --threads 1

Each convolution alone, forward then backward on a fixed input and output gradient at the conv
seed's batch (64), with the input gradient for every layer but the first, as in training. minivae's
layers are the fast tier's, batch-last as inside ConvVAE, PyTorch's take NCHW tensors. Each
library runs in fresh processes of its own, so neither one's idle worker threads sit on the
cores while the other computes, and each first frees a 16 MiB block, as compare_torch.py does
(a heap that has not, maps PyTorch's convolution buffers afresh at every call: a page fault per
4 KiB, which doubles its time here). Rounds alternate the two libraries, so a slow spell of the
machine hits both. Prints, per layer, the median milliseconds of each over the rounds, their
ratio, and the GFLOP/s each reaches on the layer's FLOPs (as minivae.bench.model_flops counts
them).
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.compare_torch import set_threads  # noqa: E402
from benchmarks.twin import torch_available, torch_module  # noqa: E402
from minivae.bench import (Workload, in_fresh_interpreter, make_timer, model_flops,  # noqa: E402
                           warm_heap)
from minivae.config import MODEL_DEFAULTS  # noqa: E402


def conv_layers(model, batch_size):
    """[(name, layer, FLOP row of model_flops)] for each convolution of the model."""
    rows = model_flops(model, Workload("conv", batch_size=batch_size).x.shape)
    out = []
    for row in rows["layers"]:
        if row["kind"] in ("Conv2d", "ConvTranspose2d"):
            part, index = row["name"].split(".")
            out.append((row["name"], getattr(model, part).layers[int(index)], row))
    return out


def _time_calls(fn, calls):
    """Median milliseconds of `calls` calls of fn, after 5 untimed ones."""
    for _ in range(5):
        fn()
    timer = make_timer()
    return statistics.median(timer(fn) for _ in range(calls)) * 1e3


def _layers_main(spec_json):
    """Entry point of one round's subprocess: every conv layer of one library, in turn."""
    from minivae.models import ConvVAE

    spec = json.loads(spec_json)
    warm_heap()       # as compare_torch.py does: without it PyTorch's convs take 2x longer
    if spec["impl"] == "torch":
        import torch
    if spec["threads"]:
        set_threads(spec["threads"])
    rng = np.random.default_rng(0)
    result = {}
    for name, layer, row in conv_layers(ConvVAE(), spec["batch_size"]):
        input_grad = row["backward"] == 2 * row["forward"]
        x = rng.random(row["in_shape"], dtype=np.float32)                 # (N, C, H, W)
        dy = rng.standard_normal(row["out_shape"], dtype=np.float32)
        if spec["impl"] == "torch":
            module = torch_module(layer)
            tx = torch.from_numpy(x).requires_grad_(input_grad)
            tdy = torch.from_numpy(dy)

            def step():
                module.zero_grad(set_to_none=True)
                tx.grad = None
                module(tx).backward(tdy)
        else:
            layer.skip_input_grad = not input_grad
            x, dy = (np.ascontiguousarray(a.transpose(1, 2, 3, 0)) for a in (x, dy))  # CHWN

            def step():
                layer.forward(x)
                layer.backward(dy)
        result[name] = _time_calls(step, spec["calls"])
    print(json.dumps(result))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=100, help="timed calls per layer and round")
    parser.add_argument("--batch-size", type=int, default=MODEL_DEFAULTS["conv"]["batch_size"])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if not torch_available():
        print("conv_layers.py: error: PyTorch is not importable (pip install torch)",
              file=sys.stderr)
        return 1
    runs = {"minivae": [], "torch": []}
    for _ in range(args.rounds):
        for impl in runs:
            spec = dict(impl=impl, calls=args.calls, batch_size=args.batch_size,
                        threads=args.threads)
            runs[impl].append(in_fresh_interpreter("_layers_main", spec, timeout=3600,
                                                   module="benchmarks.conv_layers"))
    from minivae.models import ConvVAE

    print(f"{'layer':<10} {'kind':<16} {'input':<16} {'GFLOP':>6} {'minivae ms':>10} "
          f"{'torch ms':>9} {'ratio':>6} {'minivae GF/s':>12} {'torch GF/s':>10}")
    totals = [0.0, 0.0]
    for name, _, row in conv_layers(ConvVAE(), args.batch_size):
        mv, th = (statistics.median(r[name] for r in runs[impl]) for impl in runs)
        totals[0] += mv
        totals[1] += th
        gflop = (row["forward"] + row["backward"]) / 1e9
        shape = "x".join(map(str, row["in_shape"]))
        print(f"{name:<10} {row['kind']:<16} {shape:<16} {gflop:>6.3f} {mv:>10.3f} {th:>9.3f} "
              f"{mv / th:>6.2f} {gflop / mv * 1e3:>12.0f} {gflop / th * 1e3:>10.0f}")
    print(f"{'all six':<51} {totals[0]:>10.3f} {totals[1]:>9.3f} {totals[0] / totals[1]:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
