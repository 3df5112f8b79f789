"""The two VAEs of the seeds, built from layers.py, with the whole objective's backward by hand.

A VAE encodes x into a Gaussian q(z|x) = N(mu, sigma^2), draws z = mu + eps * sigma with
eps ~ N(0, 1) (the reparametrisation trick: the randomness sits in eps, so z is a differentiable
function of mu and sigma), and decodes z into Bernoulli logits for every pixel. The loss per sample
is the negative ELBO plus a weight penalty:

    loss = recon + beta * kl + reg
    recon = sum_pixels BCE(logits, x)              = -log p(x|z) for one draw of z
    kl    = sum_latent KL(N(mu, sigma^2) || N(0,1))
    reg   = lambda * sum of squared parameters (which ones depends on the seed)

Both models run the same forward/backward (VAE.loss_and_grads); they differ only in the layers,
in what the second encoder head means (log sigma for seed 000, log sigma^2 for seed 001) and in
which parameters the L2 penalty covers. A model takes its layer classes from its tier's set
(impl: layers.py, or the fast twins in minivae/fast/layers.py); the code below is the same.
"""

from typing import NamedTuple

import numpy as np

from minivae import layers
from minivae.backend import array_module, backend_name, get_backend, make_rng, resolve_impl
from minivae.fast import layers as fast_layers
from minivae.layers import ParamView
from minivae.losses import bce_with_logits, kl_log_sigma, kl_log_var, l2_penalty

# The layer classes a model is built from, by tier: the one place a model's tier is chosen.
LAYER_SETS = {"plain": layers, "fast": fast_layers}


class LossTerms(NamedTuple):
    """Per-sample averages (sum over pixels or latent dims, mean over the batch), Python floats."""
    loss: float
    recon: float
    kl: float
    reg: float


def reparametrize(mu, log_var, eps):
    """z = mu + eps * sigma with sigma = exp(log_var / 2): a draw from N(mu, sigma^2) that is a
    differentiable function of mu and log_var (the randomness sits in eps ~ N(0, 1))."""
    return mu + eps * array_module(mu).exp(0.5 * log_var)


class VAE:
    """What both seed models share. A subclass builds encoder / mu / scale / decoder and sets:

    LOG_SIGMA_PER_UNIT  c with log sigma = c * (scale head output): 1 for log sigma,
                        1/2 for log sigma^2
    kl_term             the matching function from losses.py
    regularized         names of the parameters the L2 penalty covers
    """

    def __init__(self, *, seed, dtype, backend, impl="auto"):
        self.xp = get_backend(backend)
        self.impl = resolve_impl(impl, self.xp)     # "plain" or "fast": the tier that computes
        self.L = LAYER_SETS[self.impl]              # the layer classes of that tier
        self.dtype = np.dtype(dtype)
        self.rng = make_rng(seed)  # draws the initial weights, then the noise eps of each step

    def _finish(self, scale_name):
        """Call at the end of a subclass __init__: the flat params/grads in architecture order."""
        self.scale_name = scale_name
        named = [("encoder", self.encoder), ("mu", self.mu), (scale_name, self.scale),
                 ("decoder", self.decoder)]
        self.params = ParamView(named, "params")
        self.grads = ParamView(named, "grads")

    def _layer_kwargs(self):
        return dict(dtype=self.dtype, backend=backend_name(self.xp), rng=self.rng)

    # ---- inference

    def heads(self, x):
        """x -> (mu, s), each (N, latent): the encoder's two heads (s: log sigma or log sigma^2)."""
        h = self.encoder.forward(x)
        return self.mu.forward(h), self.scale.forward(h)

    def log_var(self, s):
        """log sigma^2 from the scale head's output s."""
        return (2 * self.LOG_SIGMA_PER_UNIT) * s

    def encode(self, x):
        """x -> (mu, log sigma^2), each (N, latent)."""
        mu, s = self.heads(x)
        return mu, self.log_var(s)

    def decode(self, z):
        """z (N, latent) -> Bernoulli logits shaped like x."""
        return self.decoder.forward(z)

    def draw_noise(self, n):
        """eps ~ N(0, 1) of shape (n, latent), drawn on the host from self.rng."""
        eps = self.rng.standard_normal((n, self.latent_dim), dtype=self.dtype)
        return self.xp.asarray(eps)

    # ---- the objective

    def loss(self, x, noise=None, beta=1.0, weight_decay=0.01):
        """The loss terms without gradients (same numbers as loss_and_grads)."""
        return self._forward(x, noise, beta, weight_decay)[0]

    def loss_and_grads(self, x, noise=None, beta=1.0, weight_decay=0.01, input_grad=False):
        """Forward, then backward through the whole objective; fills self.grads. -> LossTerms.

        With input_grad=True also sets self.input_grad = dL/dx (for gradient checks; training
        skips it, since nothing upstream of the data needs it).
        """
        terms, cache = self._forward(x, noise, beta, weight_decay)
        logits, eps, log_var, dlogits, dmu_kl, dscale_kl, dreg = cache
        n = x.shape[0]
        # recon and kl are sums divided by n, so every elementwise gradient is divided by n too.
        dz = self.decoder.backward(dlogits / n)                          # (N, latent)
        # z = mu + eps * sigma with sigma = exp(log_var / 2) and log_var = 2 c s, s the scale
        # head's output (c = LOG_SIGMA_PER_UNIT), so sigma = exp(c s):
        #   dz/dmu = 1,   dz/ds = eps * dsigma/ds = eps * c * sigma.
        # mu and s also feed the KL term directly, weighted by beta / n.
        sigma = self.xp.exp(0.5 * log_var)
        dmu = dz + (beta / n) * dmu_kl
        dscale = dz * eps * (self.LOG_SIGMA_PER_UNIT * sigma) + (beta / n) * dscale_kl
        # Both heads read the same h, so dL/dh is the sum of what each head sends back.
        dh = self.mu.backward(dmu) + self.scale.backward(dscale)
        self.encoder.skip_input_grad = not input_grad
        dx = self.encoder.backward(dh)
        if input_grad:
            # x reaches the loss twice: through the encoder, and as the BCE target, where
            # d/dx [max(l,0) - l x + log(1 + e^-|l|)] = -l.
            self.input_grad = dx - logits / n
        # reg = lambda sum p^2 adds 2 lambda p to each penalised parameter's gradient.
        for name, g in dreg.items():
            self.grads[name] += g
        return terms

    def _forward(self, x, noise, beta, weight_decay):
        n = x.shape[0]
        mu, s = self.heads(x)                                           # (N, latent) each
        eps = self.draw_noise(n) if noise is None else self.xp.asarray(noise).astype(mu.dtype)
        log_var = self.log_var(s)
        logits = self.decode(reparametrize(mu, log_var, eps))           # shaped like x
        bce, dlogits = bce_with_logits(logits, x)
        kl, dmu_kl, dscale_kl = self.kl_term(mu, s)
        reg, dreg = l2_penalty({k: self.params[k] for k in self.regularized}, weight_decay)
        recon, kl_value = float(bce.sum()) / n, float(kl.sum()) / n
        terms = LossTerms(recon + beta * kl_value + reg, recon, kl_value, reg)
        return terms, (logits, eps, log_var, dlogits, dmu_kl, dscale_kl, dreg)

    def __repr__(self):
        parts = [f"  {name}: {layer!r}".replace("\n", "\n  ") for name, layer in
                 (("encoder", self.encoder), ("mu", self.mu), (self.scale_name, self.scale),
                  ("decoder", self.decoder))]
        return f"{type(self).__name__}(\n" + "\n".join(parts) + "\n)"


class MLPVAE(VAE):
    """Seed 000: 784 -> 500 tanh -> (mu, log sigma) in 2-D; decoder 2 -> 500 tanh -> 784 logits.

    The L2 penalty covers the decoder's parameters only, biases included.
    """

    LOG_SIGMA_PER_UNIT = 1.0
    kl_term = staticmethod(kl_log_sigma)

    def __init__(self, input_dim=784, hidden_dim=500, latent_dim=2, seed=0, *,
                 dtype=np.float32, backend="numpy", impl="auto"):
        super().__init__(seed=seed, dtype=dtype, backend=backend, impl=impl)
        self.input_dim, self.hidden_dim, self.latent_dim = input_dim, hidden_dim, latent_dim
        L, kw = self.L, self._layer_kwargs()
        self.encoder = L.Sequential(L.Dense(input_dim, hidden_dim, **kw), L.Tanh())
        self.mu = L.Dense(hidden_dim, latent_dim, **kw)
        self.scale = L.Dense(hidden_dim, latent_dim, **kw)             # log sigma
        self.decoder = L.Sequential(L.Dense(latent_dim, hidden_dim, **kw), L.Tanh(),
                                    L.Dense(hidden_dim, input_dim, **kw))
        self._finish("log_sigma")
        self.regularized = [k for k in self.params if k.startswith("decoder.")]


class ConvVAE(VAE):
    """Seed 001, on 32x32 images (FashionMNIST zero-padded by 2).

    encoder: 3 x [Conv 4x4 stride 2 pad 1, 32 filters, ReLU] (32 -> 16 -> 8 -> 4), flatten (512),
             Dense 512 -> 256 ReLU -> 256 ReLU, shared by the heads mu and log sigma^2 (256 -> 10)
    decoder: Dense 10 -> 256 ReLU -> 256 ReLU -> 512 ReLU, reshape (32, 4, 4),
             2 x [ConvTranspose 4x4/2/1, 32 filters, ReLU], ConvTranspose 4x4/2/1 to 1 channel
    The L2 penalty covers every parameter once (the shared trunk is not counted twice).
    """

    LOG_SIGMA_PER_UNIT = 0.5
    kl_term = staticmethod(kl_log_var)

    def __init__(self, latent_dim=10, seed=0, *, hidden_dim=256, channels=32,
                 dtype=np.float32, backend="numpy", impl="auto"):
        super().__init__(seed=seed, dtype=dtype, backend=backend, impl=impl)
        self.latent_dim, self.hidden_dim, self.channels = latent_dim, hidden_dim, channels
        L, kw, c, hd = self.L, self._layer_kwargs(), channels, hidden_dim
        ckw = dict(kw, stride=2, padding=1)
        self.encoder = L.Sequential(
            L.Conv2d(1, c, 4, **ckw), L.ReLU(),                       # (N, c, 16, 16)
            L.Conv2d(c, c, 4, **ckw), L.ReLU(),                       # (N, c, 8, 8)
            L.Conv2d(c, c, 4, **ckw), L.ReLU(),                       # (N, c, 4, 4)
            L.Flatten(),                                              # (N, 16c)
            L.Dense(16 * c, hd, **kw), L.ReLU(),
            L.Dense(hd, hd, **kw), L.ReLU())                          # (N, hd)
        self.mu = L.Dense(hd, latent_dim, **kw)
        self.scale = L.Dense(hd, latent_dim, **kw)                    # log sigma^2
        self.decoder = L.Sequential(
            L.Dense(latent_dim, hd, **kw), L.ReLU(),
            L.Dense(hd, hd, **kw), L.ReLU(),
            L.Dense(hd, 16 * c, **kw), L.ReLU(),
            L.Reshape(c, 4, 4),                                       # (N, c, 4, 4)
            L.ConvTranspose2d(c, c, 4, **ckw), L.ReLU(),              # (N, c, 8, 8)
            L.ConvTranspose2d(c, c, 4, **ckw), L.ReLU(),              # (N, c, 16, 16)
            L.ConvTranspose2d(c, 1, 4, **ckw))                        # (N, 1, 32, 32) logits
        self._finish("log_var")
        self.regularized = list(self.params)


MODELS = {"mlp": MLPVAE, "conv": ConvVAE}


def build_model(name, *, latent_dim=None, hidden_dim=None, seed=0, dtype=np.float32,
                backend="numpy", impl="auto"):
    """The seed model `name` ("mlp" or "conv"); None for a size keeps the seed's default."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    sizes = {k: v for k, v in (("latent_dim", latent_dim), ("hidden_dim", hidden_dim))
             if v is not None}
    return MODELS[name](seed=seed, dtype=dtype, backend=backend, impl=impl, **sizes)
