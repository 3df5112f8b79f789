#!/usr/bin/env python
"""Cross-check of compare_torch.py: each implementation alone in a process of its own.

    python benchmarks/standalone.py                     # conv, 3 rounds of 200 steps each
    python benchmarks/standalone.py --model mlp --rounds 5 --steps 300
    MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824 \\
        python benchmarks/standalone.py                 # both with glibc's malloc tuned

compare_torch.py interleaves the two libraries in one process, which keeps load from elsewhere
fair but lets each one's allocations shape the other's heap. Here every round starts a fresh
interpreter for minivae, then one for PyTorch (alternating, so a slow spell of the machine hits
both), each timing `--steps` steps after 10 warm-up steps: what a training script of its own
would see, page faults included. Prints each round and the ratio of the medians over rounds.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.compare_torch import (TorchWorkload, _page_faults, blas_threads,  # noqa: E402
                                      set_threads)
from benchmarks.twin import torch_available  # noqa: E402
from minivae.bench import Workload, in_fresh_interpreter, warm_heap  # noqa: E402
from minivae.models import MODELS  # noqa: E402


def _alone_main(spec_json):
    """Entry point of one round's subprocess: times one implementation, prints a JSON line."""
    import time

    spec = json.loads(spec_json)
    if spec["warm_heap"]:
        warm_heap()
    if spec["impl"] == "torch":
        import torch
    if spec["threads"]:
        set_threads(spec["threads"])
    work = Workload(spec["model"])
    runner = work
    if spec["impl"] == "torch":
        torch.set_num_threads(spec["threads"] or blas_threads() or 1)
        runner = TorchWorkload(work)
        del work.model, work.opt
    for _ in range(10):
        runner.step()
    f0, times = _page_faults(), []
    for _ in range(spec["steps"]):
        t0 = time.perf_counter()
        runner.step()
        times.append(time.perf_counter() - t0)
    print(json.dumps(dict(median_ms=statistics.median(times) * 1e3,
                          page_faults_per_step=(_page_faults() - f0) / spec["steps"])))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=tuple(MODELS), default="conv")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--warm-heap", action="store_true",
                        help="free a 16 MiB array first, as loading a data set would")
    args = parser.parse_args(argv)
    if not torch_available():
        print("standalone.py: error: PyTorch is not importable (pip install torch)",
              file=sys.stderr)
        return 1
    medians = {"minivae": [], "torch": []}
    for r in range(args.rounds):
        row = []
        for impl in medians:
            spec = dict(impl=impl, model=args.model, steps=args.steps, threads=args.threads,
                        warm_heap=args.warm_heap)
            out = in_fresh_interpreter("_alone_main", spec, timeout=3600,
                                       module="benchmarks.standalone")
            medians[impl].append(out["median_ms"])
            row.append(f"{impl} {out['median_ms']:.2f} ms ({out['page_faults_per_step']:.0f} "
                       f"page faults/step)")
        print(f"round {r + 1}: " + ", ".join(row), flush=True)
    mv, th = (statistics.median(medians[k]) for k in ("minivae", "torch"))
    print(f"{args.model}: minivae {mv:.2f} ms, PyTorch {th:.2f} ms per step; ratio {mv / th:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
