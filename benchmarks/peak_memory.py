#!/usr/bin/env python
"""Peak memory of a full FashionMNIST conv run: minivae's real training path vs PyTorch eager.

    python benchmarks/peak_memory.py                 # 1 epoch on all 60 000 images, both runs
    python benchmarks/peak_memory.py --limit 2000    # a short run (first 2000 train/test images)
    python benchmarks/peak_memory.py --markdown      # the row for BENCHMARKS.md

Each run is its own fresh interpreter (this script re-invoked with --child), so neither sees the
other's memory, and reports

  peak RSS            the process's high-water resident set size (VmHWM in /proc/self/status;
                      not ru_maxrss, which survives execve and so can report the parent's peak);
  after imports       the RSS once its libraries are imported, before any data is read;
  peak - imports      what the run itself added: data, model, optimizer, activations, buffers.

minivae: `minivae train --model conv --epochs 1 --backend numpy --no-download --data-dir D` via
minivae.cli.main, i.e. exactly what a user runs (seed 001 config: batch 64, full batches, lr 1e-4,
weight decay 0.01), including the per-epoch test -ELBO, the image grids, the checkpoint and the
plots. PyTorch: the same epoch written the usual way: the same IDX files read by
minivae.data.load, the same uint8 -> float conversion and 2-pixel zero padding per batch, the
same architecture and initial weights (benchmarks/twin.py), torch.optim.Adam, a shuffled
full-batch epoch that reads loss.item() each step, then the test negative ELBO in batches of 500
under torch.no_grad(). It writes no images or checkpoints, which only favours PyTorch.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"


def _status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None


def rss():
    return _status("VmRSS")


def peak_rss():
    return _status("VmHWM")


# --------------------------------------------------------------------------------------------
# The two runs (each in its own process)


def child_minivae(args):
    import minivae.cli  # noqa: F401
    import minivae.train  # noqa: F401  (imports numpy, matplotlib, ... : the baseline)

    base = rss()
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["train", "--model", "conv", "--epochs", str(args.epochs), "--backend", "numpy",
                "--data-dir", str(args.data_dir), "--no-download", "--out",
                os.path.join(tmp, "run"), "--no-progress", "--batch-size", str(args.batch_size)]
        if args.limit:
            argv += ["--limit", str(args.limit)]
        t0 = time.perf_counter()
        code = minivae.cli.main(argv)
        seconds = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"minivae train failed with exit status {code}")
    return dict(rss_after_imports=base, peak_rss=peak_rss(), seconds=seconds)


def child_torch(args):
    import numpy as np
    import torch

    from minivae import data
    from benchmarks.twin import torch_twin
    from minivae.models import ConvVAE

    base = rss()
    t0 = time.perf_counter()
    train_x, _ = data.load("fashion-mnist", "train", data_dir=args.data_dir, limit=args.limit,
                           download=False)
    test_x, _ = data.load("fashion-mnist", "test", data_dir=args.data_dir, limit=args.limit,
                          download=False)
    model = ConvVAE(latent_dim=10, seed=0)       # only for the initial weights and the layout
    twin = torch_twin(model)
    del model
    opt = torch.optim.Adam(twin.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    bs = args.batch_size
    for _ in range(args.epochs):
        order = rng.permutation(len(train_x))
        for b in range(len(train_x) // bs):          # full batches only, as the seed
            x = torch.from_numpy(data.to_float(train_x[order[b * bs:(b + 1) * bs]], pad=2))
            eps = torch.randn((len(x), 10), generator=gen)
            opt.zero_grad(set_to_none=True)
            loss = twin(x, eps, 1.0, 0.01)[0]
            loss.backward()
            opt.step()
            loss.item()
        total = 0.0
        with torch.no_grad():
            for b in range(0, len(test_x), 500):
                x = torch.from_numpy(data.to_float(test_x[b:b + 500], pad=2))
                eps = torch.randn((len(x), 10), generator=gen)
                _, recon, kl, _ = twin(x, eps, 1.0, 0.0)
                total += (recon + kl).item() * len(x)
    return dict(rss_after_imports=base, peak_rss=peak_rss(), seconds=time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------
# The parent


def run_child(which, args):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", which,
           "--data-dir", str(args.data_dir), "--epochs", str(args.epochs),
           "--batch-size", str(args.batch_size)]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                     else "")
    if args.threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(args.threads)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"the {which} run failed (exit {proc.returncode}):\n{tail}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["workload_rss"] = out["peak_rss"] - out["rss_after_imports"]
    return out


def mib(b):
    return b / 2 ** 20


def main(argv=None):
    p = argparse.ArgumentParser(prog="peak_memory.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA,
                   help="folder holding fashion-mnist/*.gz (default: %(default)s)")
    p.add_argument("--limit", type=int, help="use only the first N train and N test images")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS / OPENBLAS_NUM_THREADS for both")
    p.add_argument("--only", choices=("minivae", "torch"), help="run just one of the two")
    p.add_argument("--json", action="store_true")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--child", choices=("minivae", "torch"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < args.batch_size:
        p.error(f"--limit must be at least --batch-size ({args.batch_size})")

    if args.child:
        fn = child_minivae if args.child == "minivae" else child_torch
        print(json.dumps(fn(args)))
        return 0

    if not (args.data_dir / "fashion-mnist" / "train-images-idx3-ubyte.gz").is_file():
        p.error(f"no fashion-mnist/train-images-idx3-ubyte.gz under {args.data_dir}")
    results = {}
    for which in ("minivae", "torch"):
        if args.only and which != args.only:
            continue
        print(f"  running {which} ...", file=sys.stderr, flush=True)
        results[which] = run_child(which, args)
    report = dict(epochs=args.epochs, batch_size=args.batch_size, limit=args.limit,
                  images=args.limit or 60000, runs=results)
    if "minivae" in results and "torch" in results:
        report["ratio_peak"] = results["minivae"]["peak_rss"] / results["torch"]["peak_rss"]
    if args.json:
        print(json.dumps(report, indent=2))
    elif args.markdown:
        print("| run | images | peak RSS MiB | RSS after imports MiB | peak - imports MiB | "
              "seconds |\n|---|---:|---:|---:|---:|---:|")
        for which, r in results.items():
            print(f"| {which} | {report['images']} | {mib(r['peak_rss']):.0f} | "
                  f"{mib(r['rss_after_imports']):.0f} | {mib(r['workload_rss']):.0f} | "
                  f"{r['seconds']:.1f} |")
    else:
        print(f"FashionMNIST conv VAE, {args.epochs} epoch(s) on {report['images']} images, "
              f"batch {args.batch_size}")
        print(f"{'run':<8} {'peak RSS MiB':>13} {'after imports':>14} {'peak - imports':>15} "
              f"{'seconds':>8}")
        for which, r in results.items():
            print(f"{which:<8} {mib(r['peak_rss']):>13.0f} {mib(r['rss_after_imports']):>14.0f} "
                  f"{mib(r['workload_rss']):>15.0f} {r['seconds']:>8.1f}")
        if "ratio_peak" in report:
            print(f"peak RSS minivae / PyTorch: {report['ratio_peak']:.2f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as e:
        print(f"peak_memory.py: error: {e}", file=sys.stderr)
        sys.exit(1)
