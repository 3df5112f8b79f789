#!/usr/bin/env python
"""Would a second thread make the fast tier's elementwise work faster on this machine? A diagnostic.

    python benchmarks/elementwise_threads.py                 # both seed models, 60 rounds
    python benchmarks/elementwise_threads.py --model mlp --pin

NumPy's ufuncs release the GIL, and elementwise work is per element: the fast Adam split into
contiguous halves of its flat buffers, one half on a worker thread, computes the same numbers
bit for bit (checked here before timing). Whether it is faster depends on what the other core is
doing when the halves run. This times fast Adam's update (the largest elementwise pass of a step;
a seed model's parameters, gradients of its seed's batch) on one thread and split over two, in
alternating rounds in one process, in three situations:

  alone     update after update, after a pause of --pause seconds: OpenBLAS's worker threads
            have gone to sleep (they spin for about 0.1 s after each product, then sleep);
  in step   each update right after loss_and_grads, as training runs it: OpenBLAS's worker has
            just finished the backward's last product and is spinning on the other core;
  step      the whole training step, loss_and_grads and the update, with each update: what the
            epoch would gain.

--pin puts the main thread on the first usable core and the worker and OpenBLAS's threads on
the second, where the spinning worker yields to ours (an experiment: the engine pins nothing).
Each line: the median milliseconds (of one update, or of the step) with the update on one thread
and on two, and their ratio.
BENCHMARKS.md ("Both cores on the elementwise work") reports what this machine gave.
"""

import math
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import Parser, at_least  # noqa: E402
from minivae.bench import Workload  # noqa: E402
from minivae.models import MODELS  # noqa: E402


class SplitAdam:
    """fast/optim.py's Adam.step, the same operations on [lo, hi) of the flat buffers at a time:
    the first half on the calling thread, the second on a worker."""

    def __init__(self, opt, worker):
        self.opt, self.worker = opt, worker
        self.grads, self.params = opt.model.grads, opt.model.params
        self.pieces = {}            # (lo, hi) -> the parts of the tensors [lo, hi) covers

    def _pieces(self, lo, hi):
        """(name, first, stop, the tensor's start) of each tensor's part in [lo, hi), made once."""
        if (lo, hi) not in self.pieces:
            self.pieces[lo, hi] = [(name, max(a, lo), min(b, hi), a)
                                   for name, (a, b, _) in self.opt.slots.items()
                                   if max(a, lo) < min(b, hi)]
        return self.pieces[lo, hi]

    def _half(self, lo, hi, c, e):
        opt = self.opt
        M, V, work = opt.M_flat[lo:hi], opt.V_flat[lo:hi], opt.work[lo:hi]
        M *= opt.b1
        V *= opt.b2
        pieces = self._pieces(lo, hi)
        for name, a, b, start in pieces:
            g = self.grads[name].reshape(-1)[a - start:b - start]
            M[a - lo:b - lo] += g
            np.multiply(g, g, out=work[a - lo:b - lo])
        V += work
        denom = np.sqrt(V, out=work)
        denom += e
        update = np.divide(M, denom, out=work)
        update *= c
        for name, a, b, start in pieces:
            self.params[name].reshape(-1)[a - start:b - start] -= update[a - lo:b - lo]

    def step(self):
        opt = self.opt
        opt.t += 1
        r = math.sqrt((1 - opt.b2) / (1 - opt.b2 ** opt.t))
        c = opt.lr * (1 - opt.b1) / ((1 - opt.b1 ** opt.t) * r)
        n = opt.M_flat.size
        half = n // 2 // 16 * 16                    # a whole number of 64-byte lines
        other = self.worker.submit(self._half, half, n, c, opt.eps / r)
        self._half(0, half, c, opt.eps / r)
        other.result()


def _state(w):
    return [a.copy() for a in (w.opt.M_flat, w.opt.V_flat, *w.model.params.values())]


def _restore(w, saved, t):
    for dst, src in zip((w.opt.M_flat, w.opt.V_flat, *w.model.params.values()), saved):
        dst[...] = src
    w.opt.t = t


def same_numbers(w, split):
    """One update each way from the same state: identical to the bit?"""
    w.model.loss_and_grads(w.x)
    saved, t = _state(w), w.opt.t
    w.opt.step()
    one = _state(w)
    _restore(w, saved, t)
    split.step()
    return all(np.array_equal(a, b) for a, b in zip(one, _state(w)))


def pin(worker):
    """Main thread on the first usable core; the worker and every other thread (OpenBLAS's) on
    the second."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return False
    main = threading.get_native_id()
    worker.submit(lambda: None).result()            # the worker thread exists from here on
    for task in os.listdir("/proc/self/task"):
        if int(task) != main:
            os.sched_setaffinity(int(task), {cores[1]})
    os.sched_setaffinity(0, {cores[0]})
    return True


SITUATIONS = ("alone", "in step", "step")


def race(w, split, rounds, situation, pause, per_round=5):
    """{"one": ms, "two": ms}: medians over rounds of alternating order."""
    times = {"one": [], "two": []}
    updates = {"one": w.opt.step, "two": split.step}
    for r in range(rounds):
        for label in (("one", "two") if r % 2 else ("two", "one")):
            if situation == "alone":
                time.sleep(pause)
            for _ in range(per_round):
                if situation == "step":
                    t0 = time.perf_counter()
                    w.model.loss_and_grads(w.x)
                elif situation == "in step":
                    w.model.loss_and_grads(w.x)
                    t0 = time.perf_counter()
                else:
                    t0 = time.perf_counter()
                updates[label]()
                times[label].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None):
    p = Parser(prog="elementwise_threads", description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=tuple(MODELS), action="append",
                   help="repeatable (default: every model)")
    p.add_argument("--rounds", type=at_least(1), default=60)
    p.add_argument("--pause", type=float, default=0.3,
                   help="seconds before each round of 'alone' (default: %(default)s)")
    p.add_argument("--pin", action="store_true", help="pin the threads (see above)")
    args = p.parse_args(argv)
    from threadpoolctl import threadpool_info
    blas = ", ".join(f"{i['internal_api']} {i.get('version')} {i['num_threads']} threads"
                     for i in threadpool_info() if i["user_api"] == "blas")
    print(f"numpy {np.__version__} ({blas}); {len(os.sched_getaffinity(0))} usable cores")
    with ThreadPoolExecutor(1) as worker:
        pinned = args.pin and pin(worker)
        for name in args.model or tuple(MODELS):
            w = Workload(name)
            split = SplitAdam(w.opt, worker)
            if not same_numbers(w, split):
                print(f"{name}: the split update differs from the engine's", file=sys.stderr)
                return 1
            size = w.opt.M_flat.size
            for label in SITUATIONS:
                t = race(w, split, args.rounds, label, args.pause)
                print(f"{name} ({size} parameters), {label}{', pinned' * pinned}: one thread "
                      f"{t['one']:.3f} ms, two {t['two']:.3f} ms, two / one = "
                      f"{t['two'] / t['one']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
