#!/usr/bin/env python
"""This checkout's engine against a git revision's, interleaved in one process: the before/after
of a change.

    python benchmarks/ab.py HEAD                     # conv and MLP steps, 40 rounds each
    python benchmarks/ab.py 6632146 --model conv --rounds 60

On a shared machine step times drift by ±20% over minutes and differ from one process to the
next, more than most changes move them; timing both engines in one process, round after round
in alternating order, cancels both. Each round is one untimed step and then `--steps` timed ones
(the bench's seed settings: batch 128 / 64, Adam, float32); printed are each engine's median
milliseconds over rounds and the median of the per-round ratios (an A/A run, this checkout
against HEAD with nothing changed, reads 0.99-1.01). Both engines start from the same parameters,
batch and noise, so their first gradients show whether they still compute the same thing: the
largest difference, relative to the largest gradient of its tensor, is 0 when the arithmetic is
unchanged and ~1e-7 in float32 when only its order changed. (Parameters drift further apart over
the steps: Adam turns rounding in a near-zero gradient into a full-sized step.)
"""

import argparse
import importlib
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minivae.bench import Workload  # noqa: E402
from minivae.models import MODELS  # noqa: E402
from minivae.tiers import IMPLS  # noqa: E402


def _is_minivae(name):
    return name == "minivae" or name.startswith("minivae.")


def starter(modules, impl=None):
    """start(model_name, lr) -> (model, Adam) of an engine's modules: its tiers' table where it
    has one (build_model, make_adam), else its model class and optim.Adam (older revisions)."""
    tiers = modules.get("minivae.tiers")

    def start(model_name, lr):
        if tiers is not None:
            model = tiers.build_model(model_name, **({"impl": impl} if impl else {}))
            return model, tiers.make_adam(model, lr=lr)
        models = modules["minivae.models"]
        model = (models.MLPVAE if model_name == "mlp" else models.ConvVAE)(seed=0)
        return model, modules["minivae.optim"].Adam(model, lr=lr)
    return start


def load_engine(folder):
    """Import the minivae package under `folder` and return its modules by name.

    The package is imported under its own name, then taken out of sys.modules again, with this
    checkout's modules put back: the revision's classes keep their own module globals, so both
    engines live side by side (the engine's modules import each other only at the top).
    """
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if _is_minivae(k)}
    sys.path.insert(0, str(folder))
    try:
        for name in ("minivae.models", "minivae.optim", "minivae.tiers"):
            try:
                importlib.import_module(name)
            except ModuleNotFoundError:
                pass
        return {k: v for k, v in sys.modules.items() if _is_minivae(k)
                and Path(v.__file__).resolve().is_relative_to(Path(folder).resolve())}
    finally:
        sys.path.remove(str(folder))
        for k in [k for k in sys.modules if _is_minivae(k)]:
            del sys.modules[k]
        sys.modules.update(saved)


def checkout_engine(rev, folder):
    """Write the minivae package as of git revision `rev` under `folder`."""
    archive = Path(folder) / "rev.tar"
    with open(archive, "wb") as f:
        subprocess.run(["git", "-C", str(ROOT), "archive", rev, "minivae"], stdout=f, check=True)
    with tarfile.open(archive) as tar:
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(folder, **safe)


def race(engines, model_name, rounds, steps):
    """{label: per-round ms per step}, and the first gradients' largest relative difference.
    engines: {label: starter}."""
    cfg = MODELS[model_name].defaults
    x = np.random.default_rng(1).random(Workload(model_name).x.shape, dtype=np.float32)
    runs = {label: start(model_name, cfg["lr"]) for label, start in engines.items()}
    latent = runs["this"][0].latent_dim
    noise = np.random.default_rng(2).standard_normal((len(x), latent), dtype=np.float32)

    def step(label):
        model, opt = runs[label]
        model.loss_and_grads(x, noise=noise, weight_decay=cfg["weight_decay"])
        opt.step()

    for label in runs:
        step(label)
    (a, _), (b, _) = runs.values()
    diff = max(float(np.abs(a.grads[k] - b.grads[k]).max() / (np.abs(a.grads[k]).max() or 1))
               for k in a.grads)
    for label in runs:
        for _ in range(4):
            step(label)
    times = {label: [] for label in runs}
    for r in range(rounds):
        for label in (list(runs) if r % 2 else list(runs)[::-1]):
            step(label)
            t0 = time.perf_counter()
            for _ in range(steps):
                step(label)
            times[label].append((time.perf_counter() - t0) / steps * 1e3)
    return times, diff


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the git revision to compare with (a commit, HEAD, a tag)")
    parser.add_argument("--model", choices=tuple(MODELS), action="append",
                        help="mlp or conv; repeatable (default: both)")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--impl", choices=IMPLS, default="auto",
                        help="the tier of this checkout's engine (default: auto)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per round (default: 15 for mlp, 5 for conv)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        try:
            checkout_engine(args.rev, folder)
        except subprocess.CalledProcessError:
            print(f"ab.py: error: git cannot archive minivae at {args.rev!r}", file=sys.stderr)
            return 1
        this = {k: v for k, v in sys.modules.items() if _is_minivae(k)}
        engines = {"this": starter(this, args.impl), args.rev: starter(load_engine(folder))}
        for model_name in args.model or tuple(MODELS):
            steps = args.steps or (15 if model_name == "mlp" else 5)
            times, diff = race(engines, model_name, args.rounds, steps)
            this, rev = times["this"], times[args.rev]
            ratio = statistics.median(t / r for t, r in zip(this, rev))
            print(f"{model_name}: this checkout {statistics.median(this):.3f} ms, {args.rev} "
                  f"{statistics.median(rev):.3f} ms per step; this / {args.rev} = {ratio:.3f} "
                  f"(median of {args.rounds} rounds); first gradients differ by {diff:.2g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
