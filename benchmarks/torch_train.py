#!/usr/bin/env python
"""A plain PyTorch training loop of a seed model: the PyTorch side of benchmarks/epoch_time.py.

    python benchmarks/torch_train.py --model conv --epochs 3 --threads 2

It trains what `minivae train --model M` trains, written the way a PyTorch user would write it:

* the model: the PyTorch twin of minivae's seed model (same layers, same names), built from a
  minivae model with minivae train's default seed, so it starts from the same Glorot-uniform
  weights;
* the images: the training split, read by minivae's own loader from the same cache (`--data-dir`,
  filled from `--mirror` when empty) and kept as uint8. Each epoch draws a new permutation; each
  batch is indexed, scaled to [0, 1] (v / 255 in float32: exactly minivae's values), zero-padded
  to 32x32 (conv) or flattened (mlp). The mlp keeps the last partial batch, the conv uses full
  batches only, as the seeds do;
* the objective (`objective`): BCE-with-logits summed over pixels plus the KL term (of log sigma
  for the mlp, of log sigma^2 for the conv), averaged over the batch, plus the L2 penalty on the
  seed's parameters; one fresh standard-normal draw of the noise per step;
* torch.optim.Adam (betas 0.9 / 0.999, eps 1e-8) with the seed's learning rate; the loss is read
  back as a Python float every step, as minivae's loop does.

Each epoch's training steps are timed with perf_counter, its batching included: what minivae
writes to metrics.csv's `seconds` column. Prints one JSON line on stdout: the model, the seconds
and mean training loss of every epoch, the threads PyTorch used, images and steps per epoch.
"""

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import BenchError, Parser, at_least  # noqa: E402

DEFAULT_MIRROR = ROOT.parent / "shared" / "data"
DEFAULT_DATA_DIR = Path(tempfile.gettempdir()) / "minivae-epoch-time-data"



def model_names():
    """The models minivae's registry holds (models.MODELS), each with its seed's settings."""
    from minivae.models import MODELS as REGISTRY
    return tuple(REGISTRY)

SEED = 0                # minivae train's default --seed
PROG = "torch_train"


# --------------------------------------------------------------------------------------------
# What this loop takes from minivae (one function each, so a move inside the package changes
# one line here)


def twin_builder():
    """torch_twin(model) -> an nn.Module with minivae's layers and current parameters, whose
    forward(x, eps, beta, weight_decay) returns (loss, recon, kl, reg) as minivae computes them."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from twin import torch_twin
    return torch_twin


def seed_settings(model):
    """The seed's settings for `model` as `minivae train` uses them: dataset, batch_size, lr,
    beta, weight_decay, latent_dim, hidden_dim, and the batch layout pad, flatten, drop_last."""
    from minivae.models import MODELS as REGISTRY

    spec = REGISTRY[model]
    return dict(spec.defaults, model=model, pad=spec.pad, flatten=spec.flatten,
                drop_last=spec.drop_last)


def load_images(dataset, data_dir, mirror, limit=None, split="train"):
    """A split's images, uint8 (N, 28, 28), through minivae's loader and download cache."""
    from minivae import data, download

    images, _ = data.load(dataset, split, data_dir=data_dir,
                          mirrors=download.mirrors(dataset, extra=[str(mirror)]), limit=limit,
                          progress=False)
    return images


def build_minivae_model(settings, dtype=np.float32):
    """The minivae model `minivae train` starts from (same seed, so the same initial weights)."""
    from minivae.tiers import build_model

    return build_model(settings["model"], latent_dim=settings["latent_dim"],
                       hidden_dim=settings["hidden_dim"], seed=SEED, dtype=dtype,
                       backend="numpy")


# --------------------------------------------------------------------------------------------
# The loop


def make_batch(images, idx, settings, dtype=None):
    """uint8 images (N, 28, 28) tensor, index tensor -> the batch minivae's pipeline builds:
    floats v / 255, (B, 1, 28 + 2 pad, 28 + 2 pad), or (B, 784) when the model takes flat rows."""
    import torch
    import torch.nn.functional as F

    x = images[idx].to(dtype or torch.float32) / 255                # (B, 28, 28)
    x = x[:, None]                                                   # (B, 1, 28, 28)
    p = settings["pad"]
    if p:
        x = F.pad(x, (p, p, p, p))                                   # (B, 1, 28+2p, 28+2p)
    if settings["flatten"]:
        x = x.reshape(len(x), -1)                                    # (B, 784)
    return x


def objective(twin, x, eps, settings):
    """The loss minivae minimises, as a tensor: recon + beta * kl + reg (see twin_builder)."""
    return twin(x, eps, settings["beta"], settings["weight_decay"])[0]


def test_neg_elbo(twin, images, settings, gen, batch_size=1000, dtype=None):
    """recon + kl per test image (weight 1, no penalty, one sampled z each), as minivae's
    metrics.csv reports it; not timed."""
    import torch

    total = 0.0
    with torch.no_grad():
        for b in range(0, len(images), batch_size):
            x = make_batch(images, torch.arange(b, min(b + batch_size, len(images))), settings,
                           dtype)
            eps = torch.randn(len(x), settings["latent_dim"], generator=gen).to(x.dtype)
            _, recon, kl, _ = twin(x, eps, 1.0, 0.0)
            total += (float(recon) + float(kl)) * len(x)
    return total / len(images)


def train(settings, images, epochs, log=None, test_images=None):
    """Train the twin for `epochs` epochs on uint8 `images`; -> (seconds, mean train loss) per
    epoch, the steps of one epoch, and the test -ELBO per epoch when `test_images` are given."""
    import torch

    twin = twin_builder()(build_minivae_model(settings))
    opt = torch.optim.Adam(twin.parameters(), lr=settings["lr"], betas=(0.9, 0.999), eps=1e-8)
    gen = torch.Generator().manual_seed(SEED)        # shuffles and noise, as minivae's streams
    images = torch.from_numpy(np.ascontiguousarray(images))          # (N, 28, 28) uint8
    n, size = len(images), settings["batch_size"]
    steps = n // size if settings["drop_last"] else -(-n // size)
    if steps == 0:
        raise BenchError(f"{n} training images make no full batch of {size}; raise --limit")
    if test_images is not None:
        test_images = torch.from_numpy(np.ascontiguousarray(test_images))
        test_gen = torch.Generator().manual_seed(SEED + 1)
    seconds, losses, test = [], [], []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=gen)
        total, seen = 0.0, 0
        for b in range(steps):
            x = make_batch(images, order[b * size:(b + 1) * size], settings)
            eps = torch.randn(len(x), settings["latent_dim"], generator=gen)
            opt.zero_grad(set_to_none=True)
            loss = objective(twin, x, eps, settings)
            loss.backward()
            opt.step()
            total += loss.item() * len(x)
            seen += len(x)
        seconds.append(time.perf_counter() - t0)
        losses.append(total / seen)
        if test_images is not None:
            test.append(test_neg_elbo(twin, test_images, settings, test_gen))
        if log:
            log(f"epoch {epoch}/{epochs}: train loss {losses[-1]:.4f}"
                + (f", test -ELBO {test[-1]:.4f}" if test else "") + f", {seconds[-1]:.2f}s")
    return seconds, losses, steps, test


# --------------------------------------------------------------------------------------------
# Command line


def parse_args(argv):
    p = Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=model_names(), default="mlp")
    p.add_argument("--epochs", type=at_least(1), default=3)
    p.add_argument("--threads", type=at_least(1),
                   help="torch.set_num_threads (default: PyTorch's own choice)")
    p.add_argument("--limit", type=at_least(1), metavar="N",
                   help="use only the first N training images")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR),
                   help="minivae's download cache (default: %(default)s)")
    p.add_argument("--mirror", default=str(DEFAULT_MIRROR),
                   help="where the cache is filled from: a folder laid out as <dataset>/<file> "
                        "or an http(s) URL (default: %(default)s)")
    p.add_argument("--verbose", action="store_true", help="one line per epoch on stderr")
    p.add_argument("--test-elbo", action="store_true",
                   help="after each epoch (untimed), the test -ELBO per image, as minivae reports")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        try:
            import torch
        except ImportError:
            raise BenchError(f"PyTorch is not installed in {sys.executable} "
                             f"(pip install torch)") from None
        if args.threads:
            torch.set_num_threads(args.threads)
        settings = seed_settings(args.model)
        try:
            images = load_images(settings["dataset"], args.data_dir, args.mirror, args.limit)
            test_images = (load_images(settings["dataset"], args.data_dir, args.mirror,
                                       args.limit, split="test") if args.test_elbo else None)
        except (OSError, ValueError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BenchError(f"cannot load {settings['dataset']}: {first}") from None
        log = (lambda m: print(m, file=sys.stderr, flush=True)) if args.verbose else None
        seconds, losses, steps, test = train(settings, images, args.epochs, log, test_images)
    except BenchError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(dict(model=args.model, seconds=seconds, train_loss=losses, test_neg_elbo=test,
                          threads=torch.get_num_threads(), images=len(images),
                          steps_per_epoch=steps, torch=torch.__version__)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
