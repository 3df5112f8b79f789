"""A trained run in Python: `minivae.load(run_dir)`, for encoding one's own images and drawing
samples without the command line.

    import minivae
    run = minivae.load("output/conv-fashion-mnist")          # the newest checkpoint that loads
    mu, log_var = run.encode(images)     # uint8 0-255 or float 0-1; (N, 28, 28), (N, 784) or
                                         # (N, 1, 28, 28); -> two (N, latent) float arrays
    probs = run.decode(mu)               # pixel probabilities in [0, 1], (N, 28, 28)
    again = run.reconstruct(images)      # decodes of the posterior means, shaped like images
    drawn = run.sample(16, seed=0)       # decodes of 16 draws from the prior, (16, 28, 28)
    run.config, run.model, run.epoch     # the settings (a dict), the model, its epoch

The model's own input layout (the conv model's zero padding to 32x32, the MLP's flat vectors)
is made inside and taken off the outputs, so images go in and come out as the datasets hold them.
Everything returned is a NumPy array on the host, whatever the backend. The numbers are those
`minivae plot` and `minivae evaluate` compute (tests/test_trained.py).
"""

import numpy as np

from minivae import data
from minivae.backend import to_host
from minivae.evaluate import EVAL_BATCH, decode_probs, reconstruct
from minivae.run import load_run

SIDE = 28                           # the datasets' images are SIDE x SIDE


def load(run_dir, epoch=None, backend="numpy"):
    """The trained run in run_dir at checkpoint `epoch` (default: the newest that loads) on
    `backend` ("numpy", "cupy" or "auto"): a TrainedRun."""
    model, cfg, ckpt = load_run(run_dir, epoch, backend)
    return TrainedRun(model, cfg, ckpt.epoch)


class TrainedRun:
    """A trained model at one epoch of its run (see the module docstring)."""

    def __init__(self, model, cfg, epoch):
        self.model, self.epoch = model, epoch
        self.config = cfg.to_dict()
        self._spec = cfg.spec

    def __repr__(self):
        return (f"TrainedRun({self.config['model']} VAE on {self.config['dataset']}, epoch "
                f"{self.epoch}, {self.config['latent_dim']}-D latent)")

    def encode(self, images):
        """(mu, log sigma^2) of q(z|x) for each image: two (N, latent) float arrays."""
        parts = [tuple(to_host(a) for a in self.model.encode(x))
                 for x in self._batches(images)]
        return tuple(np.concatenate([p[k] for p in parts]) for k in (0, 1))

    def decode(self, z):
        """Pixel probabilities in [0, 1] of the images the decoder makes of latents z (N,
        latent): (N, 28, 28)."""
        z = np.asarray(z, dtype=self.model.dtype)
        if z.ndim != 2 or z.shape[1] != self.model.latent_dim:
            raise ValueError(f"expected latents shaped (N, {self.model.latent_dim}), got "
                             f"{z.shape}")
        xp = self.model.xp
        probs = [decode_probs(self.model, xp.asarray(z[i:i + EVAL_BATCH]))
                 for i in range(0, len(z), EVAL_BATCH)]
        return self._unpad(np.concatenate(probs)) if probs else np.zeros((0, SIDE, SIDE))

    def reconstruct(self, images, noise=None):
        """Decodes of the images' posterior means (or, with noise (N, latent), of
        mu + noise * sigma, as `minivae plot` draws them), shaped like `images`."""
        shape = np.shape(images)
        eps = None if noise is None else np.asarray(noise, dtype=self.model.dtype)
        out, start = [], 0
        for x in self._batches(images):
            e = None if eps is None else self.model.xp.asarray(eps[start:start + len(x)])
            out.append(reconstruct(self.model, x, e))
            start += len(x)
        return self._unpad(np.concatenate(out)).reshape(shape)

    def sample(self, n, seed=0):
        """Decodes of n draws from the prior N(0, I) (a generator seeded with `seed`):
        (n, 28, 28)."""
        rng = np.random.default_rng(seed)
        return self.decode(rng.standard_normal((n, self.model.latent_dim)))

    # ---- images in and out

    def _batches(self, images):
        """The images as the model takes them (laid out, padded), in batches on its device."""
        images = _as_images(images)
        spec, model = self._spec, self.model
        for i in range(0, len(images), EVAL_BATCH):
            part = images[i:i + EVAL_BATCH]
            if part.dtype == np.uint8:
                yield data.to_float(part, model.xp, model.dtype, spec.pad, spec.flatten)
            else:
                yield data.lay_out(part, model.xp, model.dtype, spec.pad, spec.flatten)

    def _unpad(self, probs):
        """(N, 28, 28) from the model's output layout."""
        p = self._spec.pad
        square = probs.reshape(len(probs), SIDE + 2 * p, SIDE + 2 * p)
        return square[:, p:p + SIDE, p:p + SIDE]


def _as_images(images):
    """(N, 28, 28) uint8 or floats in [0, 1] from any of the accepted shapes; ValueError
    saying what is accepted otherwise."""
    a = np.asarray(images)
    if a.ndim == 2 and a.shape[1] == SIDE * SIDE:
        a = a.reshape(len(a), SIDE, SIDE)
    elif a.ndim == 4 and a.shape[1:] == (1, SIDE, SIDE):
        a = a[:, 0]
    elif not (a.ndim == 3 and a.shape[1:] == (SIDE, SIDE)):
        raise ValueError(f"expected images shaped (N, 28, 28), (N, 784) or (N, 1, 28, 28), got "
                         f"{a.shape}")
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind not in "fiu":
        raise ValueError(f"expected uint8 pixels (0-255) or floats in [0, 1], got {a.dtype}")
    a = a.astype(np.float64)
    if a.size and (a.min() < 0 or a.max() > 1):
        raise ValueError(f"float images must lie in [0, 1] (uint8 ones in 0-255); these span "
                         f"[{a.min():g}, {a.max():g}]")
    return a
