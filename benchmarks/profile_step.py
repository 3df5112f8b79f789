"""Where a training step's time goes: cProfile of `loss_and_grads` + `Adam.step`, by own time.

    python benchmarks/profile_step.py conv          # or mlp; --steps, --top, --batch-size
    OPENBLAS_NUM_THREADS=1 python benchmarks/profile_step.py conv

Own ("tottime") times per step, for the model of the default tier (auto: fast on NumPy): the
matrix products show up as the own time of the fast tier's conv plans (minivae/fast/conv.py),
the data movement as im2col / col2im / batch_last / batch_first / ascontiguousarray.
"""

import argparse
import cProfile
import os
import pstats
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from minivae.models import ConvVAE, MLPVAE  # noqa: E402
from minivae.optim import Adam  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=("mlp", "conv"))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: the seed's (64 for conv, 128 for mlp); 1-4 shows the "
                             "per-call overhead")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    if args.model == "conv":
        n = args.batch_size or 64
        model, x, lr = ConvVAE(), rng.random((n, 1, 32, 32), dtype=np.float32), 1e-4
    else:
        n = args.batch_size or 128
        model, x, lr = MLPVAE(), rng.random((n, 784), dtype=np.float32), 1e-3
    opt = Adam(model, lr=lr)
    for _ in range(5):                                   # warm-up: allocator, BLAS threads
        model.loss_and_grads(x)
        opt.step()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(args.steps):
        model.loss_and_grads(x)
        opt.step()
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt / args.steps * 1e3
    print(f"{args.model}: {total:.2f} ms per step (under the profiler), own time per step:")
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:args.top]
    for (path, line, name), (_, _, own, cum, _) in rows:
        where = f"{os.path.basename(path)}:{line}({name})" if line else name
        own_ms, cum_ms = own / args.steps * 1e3, cum / args.steps * 1e3
        print(f"  {own_ms:7.2f} ms own  {cum_ms:7.2f} ms total  {where}")


if __name__ == "__main__":
    main()
