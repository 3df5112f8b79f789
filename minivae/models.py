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
which parameters the L2 penalty covers. A model is built from a set of layer classes
(`layer_set`: layers.py itself, or another tier's set from minivae.tiers); the code below is the
same whichever set it is.
"""

import math
from typing import NamedTuple

import numpy as np

from minivae import layers
from minivae.backend import array_module, get_backend, make_rng
from minivae.layers import ParamView
from minivae.losses import bce_with_logits, bernoulli_nll, kl_log_sigma, kl_log_var, l2_penalty

# What the encoder's second head s means, by its name: sigma = exp(SIGMA_EXPONENT[name] * s),
# and the KL term of losses.py that follows.
SIGMA_EXPONENT = {"log_sigma": 1.0, "log_var": 0.5}
KL_TERMS = {"log_sigma": kl_log_sigma, "log_var": kl_log_var}


class LossTerms(NamedTuple):
    """Per-sample averages (sum over pixels or latent dims, mean over the batch), Python floats."""
    loss: float
    recon: float
    kl: float
    reg: float


class ForwardCache(NamedTuple):
    """What the forward pass of the objective keeps for its backward."""
    logits: object          # the decoder's output, shaped like x
    eps: object             # the noise of the reparametrisation, (N, latent)
    sigma: object           # the posterior's standard deviation exp(c s), (N, latent)
    dlogits: object         # d BCE / d logits, elementwise (not yet divided by N)
    dmu_kl: object          # d KL / d mu, elementwise
    dscale_kl: object       # d KL / d s (the scale head's output), elementwise
    dreg: dict              # name -> d reg / d parameter


def reparametrize(mu, log_var, eps):
    """z = mu + eps * sigma with sigma = exp(log_var / 2): a draw from N(mu, sigma^2) that is a
    differentiable function of mu and log_var (the randomness sits in eps ~ N(0, 1))."""
    return mu + eps * array_module(mu).exp(0.5 * log_var)


class VAE:
    """What every model shares. The contract of a subclass:

    * its constructor takes keyword arguments only: latent_dim (the size of z), hidden_dim (one
      width for all its dense layers, the command line's --hidden-dim; None keeps its own),
      seed, dtype, backend, layer_set, and whatever describes its layers (their defaults are
      its seed's; a registry entry, MODELS, may give others: a new model is an entry, not a
      class);
    * it builds encoder, mu, scale (the two heads, reading the encoder's output) and decoder
      from self.layer_set, then calls self._finish(scale_name), scale_name being what the
      scale head gives: "log_sigma" or "log_var". That fixes sigma = exp(SIGMA_EXPONENT[..] s)
      and the KL term: kl_log_sigma or kl_log_var of losses.py (KL_TERMS);
    * it sets `regularized`, the names of the parameters the L2 penalty covers.
    """

    def __init__(self, *, seed, dtype, backend, layer_set=None):
        self.xp = get_backend(backend)
        self.layer_set = layers if layer_set is None else layer_set   # the classes to build from
        self.dtype = np.dtype(dtype)
        self.rng = make_rng(seed)  # draws the initial weights, then the noise eps of each step

    def _finish(self, scale_name):
        """Call at the end of a subclass __init__: the flat params/grads in architecture order.
        scale_name: what the second head gives, "log_sigma" or "log_var" (SIGMA_EXPONENT)."""
        self.scale_name = scale_name
        self.kl_term = KL_TERMS[scale_name]
        named = [("encoder", self.encoder), ("mu", self.mu), (scale_name, self.scale),
                 ("decoder", self.decoder)]
        self.params = ParamView(named, "params")
        self.grads = ParamView(named, "grads")

    @property
    def sigma_exponent(self):
        """c with sigma = exp(c s), s the scale head's output: 1 for log sigma, 1/2 for log
        sigma^2."""
        return SIGMA_EXPONENT[self.scale_name]

    def _layer_kwargs(self):
        return dict(dtype=self.dtype, backend=self.xp, rng=self.rng)     # resolved once

    # ---- inference

    def heads(self, x):
        """x -> (mu, s), each (N, latent): the encoder's two heads (s: log sigma or log sigma^2)."""
        h = self.encoder.forward(x)
        return self.mu.forward(h), self.scale.forward(h)

    def log_var(self, s):
        """log sigma^2 from the scale head's output s: sigma = exp(c s), so log sigma^2 = 2 c s."""
        return (2 * self.sigma_exponent) * s

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

        weight_decay is the L2 penalty's coefficient lambda (reg = lambda * sum p^2, added to the
        loss, so Adam sees its gradient: not AdamW's decoupled decay).
        With input_grad=True also sets self.input_grad = dL/dx (for gradient checks; training
        skips it, since nothing upstream of the data needs it).
        """
        terms, c = self._forward(x, noise, beta, weight_decay)
        n = x.shape[0]
        # recon and kl are sums divided by n, so every elementwise gradient is divided by n too.
        dz = self.decoder.backward(c.dlogits / n)                        # (N, latent)
        # z = mu + eps * sigma with sigma = exp(c s), s the scale head's output:
        #   dz/dmu = 1,   dz/ds = eps * dsigma/ds = eps * c * sigma.
        # mu and s also feed the KL term directly, weighted by beta / n.
        dmu = dz + (beta / n) * c.dmu_kl
        dscale = dz * c.eps * (self.sigma_exponent * c.sigma) + (beta / n) * c.dscale_kl
        # Both heads read the same h, so dL/dh is the sum of what each head sends back.
        dh = self.mu.backward(dmu) + self.scale.backward(dscale)
        self.encoder.skip_input_grad = not input_grad
        dx = self.encoder.backward(dh)
        if input_grad:
            # x reaches the loss twice: through the encoder, and as the BCE target, where
            # d/dx [max(l,0) - l x + log(1 + e^-|l|)] = -l.
            self.input_grad = dx - c.logits / n
        # reg = lambda sum p^2 adds 2 lambda p to each penalised parameter's gradient.
        for name, g in c.dreg.items():
            self.grads[name] += g
        return terms

    def _forward(self, x, noise, beta, weight_decay):
        n = x.shape[0]
        mu, s = self.heads(x)                                           # (N, latent) each
        eps = self.draw_noise(n) if noise is None else self.xp.asarray(noise).astype(mu.dtype)
        sigma = self.xp.exp(self.sigma_exponent * s)
        logits = self.decode(mu + eps * sigma)                          # shaped like x
        bce, dlogits = bce_with_logits(logits, x)
        kl, dmu_kl, dscale_kl = self.kl_term(mu, s)
        reg, dreg = l2_penalty({k: self.params[k] for k in self.regularized}, weight_decay)
        recon, kl_value = float(bce.sum()) / n, float(kl.sum()) / n
        terms = LossTerms(recon + beta * kl_value + reg, recon, kl_value, reg)
        return terms, ForwardCache(logits, eps, sigma, dlogits, dmu_kl, dscale_kl, dreg)

    def __repr__(self):
        parts = [f"  {name}: {layer!r}".replace("\n", "\n  ") for name, layer in
                 (("encoder", self.encoder), ("mu", self.mu), (self.scale_name, self.scale),
                  ("decoder", self.decoder))]
        return f"{type(self).__name__}(\n" + "\n".join(parts) + "\n)"


def _widths(hidden, hidden_dim):
    """The dense layers' widths: `hidden`, or hidden_dim for each of them when given."""
    hidden = tuple(hidden)
    if not hidden:
        raise ValueError("a model needs at least one hidden layer")
    return hidden if hidden_dim is None else (hidden_dim,) * len(hidden)


class MLPVAE(VAE):
    """Seed 000 with its defaults: 784 -> 500 tanh -> (mu, log sigma) in 2-D; decoder
    2 -> 500 tanh -> 784 logits.

    hidden: the widths of the encoder's dense layers, input side first; the decoder mirrors
    them. The L2 penalty covers the decoder's parameters only, biases included.
    """

    def __init__(self, *, input_dim=784, hidden=(500,), latent_dim=2, hidden_dim=None, seed=0,
                 activation="Tanh", dtype=np.float32, backend="numpy", layer_set=None):
        super().__init__(seed=seed, dtype=dtype, backend=backend, layer_set=layer_set)
        widths = _widths(hidden, hidden_dim)
        self.input_dim, self.hidden, self.latent_dim = input_dim, widths, latent_dim
        self.hidden_dim = widths[0]
        L, kw = self.layer_set, self._layer_kwargs()
        act = getattr(L, activation)
        self.encoder = L.Sequential(*_dense_stack(L, (input_dim,) + widths, act, kw))
        self.mu = L.Dense(widths[-1], latent_dim, **kw)
        self.scale = L.Dense(widths[-1], latent_dim, **kw)             # log sigma
        self.decoder = L.Sequential(*_dense_stack(L, (latent_dim,) + widths[::-1], act, kw),
                                    L.Dense(widths[0], input_dim, **kw))
        self._finish("log_sigma")
        self.regularized = [k for k in self.params if k.startswith("decoder.")]


def _dense_stack(L, sizes, act, kw):
    """Dense sizes[0] -> sizes[1] -> ..., each followed by the activation."""
    out = []
    for a, b in zip(sizes, sizes[1:]):
        out += [L.Dense(a, b, **kw), act()]
    return out


class ConvLayer(NamedTuple):
    """One convolution of a ConvVAE, as data: its output channels, its square kernel, stride
    and padding, and the activation after it (True: the model's, False: none, or a layer class
    name)."""
    channels: int
    kernel: int = 4
    stride: int = 2
    padding: int = 1
    activation: object = True


# Seed 001: three 4x4 stride-2 convolutions down (32 -> 16 -> 8 -> 4) and three up, the last to
# the image's one channel, its logits.
SEED_001_ENCODER = (ConvLayer(32), ConvLayer(32), ConvLayer(32))
SEED_001_DECODER = (ConvLayer(32), ConvLayer(32), ConvLayer(1, activation=False))


class ConvVAE(VAE):
    """Seed 001 with its defaults, on 32x32 images (FashionMNIST zero-padded by 2).

    encoder: 3 x [Conv 4x4 stride 2 pad 1, 32 filters, ReLU] (32 -> 16 -> 8 -> 4), flatten (512),
             Dense 512 -> 256 ReLU -> 256 ReLU, shared by the heads mu and log sigma^2 (256 -> 10)
    decoder: Dense 10 -> 256 ReLU -> 256 ReLU -> 512 ReLU, reshape (32, 4, 4),
             2 x [ConvTranspose 4x4/2/1, 32 filters, ReLU], ConvTranspose 4x4/2/1 to 1 channel

    As data: encoder, decoder: the convolutions (ConvLayer) in order, the decoder's transposed
    ones taking the encoder's output shape back to `image`; hidden: the dense layers' widths
    after the flatten (the decoder's mirror them); activation: the layer class between the
    layers (ReLU for the seed); channels: when given, every convolution's channels but the
    last's. The L2 penalty covers every parameter once (the shared trunk is not counted twice).
    """

    def __init__(self, *, latent_dim=10, hidden=(256, 256), encoder=SEED_001_ENCODER,
                 decoder=SEED_001_DECODER, image=(1, 32, 32), hidden_dim=None, channels=None,
                 seed=0, activation="ReLU", dtype=np.float32, backend="numpy", layer_set=None):
        super().__init__(seed=seed, dtype=dtype, backend=backend, layer_set=layer_set)
        widths = _widths(hidden, hidden_dim)
        if channels is not None:
            encoder = [c._replace(channels=channels) for c in encoder]
            decoder = [c._replace(channels=channels) for c in decoder[:-1]] + list(decoder[-1:])
        self.latent_dim, self.hidden, self.hidden_dim = latent_dim, widths, widths[0]
        L, kw = self.layer_set, self._layer_kwargs()
        convs, shape = self._convs(L.Conv2d, encoder, tuple(image), activation, kw)
        flat = int(np.prod(shape))
        self.encoder = L.Sequential(*convs, L.Flatten(),
                                    *_dense_stack(L, (flat,) + widths, getattr(L, activation),
                                                  kw))
        self.mu = L.Dense(widths[-1], latent_dim, **kw)
        self.scale = L.Dense(widths[-1], latent_dim, **kw)            # log sigma^2
        dense = _dense_stack(L, (latent_dim,) + widths[::-1] + (flat,), getattr(L, activation),
                             kw)
        tconvs, out = self._convs(L.ConvTranspose2d, decoder, shape, activation, kw)
        if out != tuple(image):
            raise ValueError(f"the decoder's convolutions make {out} images from {shape}, not "
                             f"the image shape {tuple(image)}")
        self.decoder = L.Sequential(*dense, L.Reshape(*shape), *tconvs)
        self._finish("log_var")
        self.regularized = list(self.params)

    def _convs(self, kind, specs, shape, activation, kw):
        """(the layers of the convolutions `specs` from `shape` (C, H, W), the shape they
        give)."""
        layers_, (c, h, w) = [], shape
        for spec in specs:
            conv = kind(c, spec.channels, spec.kernel, stride=spec.stride, padding=spec.padding,
                        **kw)
            h, w = conv.output_shape(h, w)
            c = spec.channels
            if min(h, w) < 1:
                raise ValueError(f"{kind.__name__} {spec} leaves no pixel of {shape}")
            layers_.append(conv)
            if spec.activation:
                name = activation if spec.activation is True else spec.activation
                layers_.append(getattr(self.layer_set, name)())
        return layers_, (c, h, w)


# --------------------------------------------------------------------------------------------
# The importance weights of a trained model (minivae evaluate's IWAE bound, statcheck's checks)


def log_weights(model, x, mu, log_var, eps):
    """Log importance weights log p(x|z_k) + log p(z_k) - log q(z_k|x), float64 (K, B) on
    model.xp, for z_k = mu + sigma * eps_k; x (B, ...), mu and log_var (B, d), eps (K, B, d)."""
    xp = model.xp
    K, B, d = eps.shape
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    z = reparametrize(mu[None], log_var[None], eps)                           # (K, B, d)
    logits = model.decode(z.reshape(K * B, d))
    xr = xp.broadcast_to(x[None], (K,) + x.shape).reshape((K * B,) + x.shape[1:])
    log_px = -bernoulli_nll(logits.astype(xp.float64), xr).reshape(K, B, -1).sum(axis=2)
    log_pz = -0.5 * (z.astype(xp.float64) ** 2).sum(axis=2) - d * half_log_2pi
    # log q(z|x) = sum_d log N(z_d; mu_d, sigma_d^2), and (z_d - mu_d) / sigma_d = eps_d.
    log_qz = (-0.5 * (eps.astype(xp.float64) ** 2).sum(axis=2)
              - 0.5 * log_var.astype(xp.float64).sum(axis=1)[None] - d * half_log_2pi)
    return log_px + log_pz - log_qz


def log_mean_exp(a, axis):
    """log mean exp(a) along axis, without overflow (host NumPy)."""
    m = a.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(a - m).mean(axis=axis, keepdims=True))).squeeze(axis)


# --------------------------------------------------------------------------------------------
# The registry: one entry per model


class ModelSpec(NamedTuple):
    """Everything the program knows of a model, in one place."""
    cls: type               # the model class
    help: str               # one line for the command line
    defaults: dict          # the seed's settings: dataset, epochs, lr, batch size, ...
    pad: int                # zero pixels added on each side of a 28x28 image
    flatten: bool           # images as flat vectors (N, 784) rather than NCHW (N, 1, H, W)
    drop_last: bool         # full batches only (the seed's partial=false)
    options: dict = {}      # the class's keyword arguments that describe this model's layers

    def input_shape(self, n, side=28):
        """The shape of a batch of n images as the model takes them."""
        side += 2 * self.pad
        return (n, side * side) if self.flatten else (n, 1, side, side)


MODELS = {
    # 000: MLP VAE on MNIST (Flux DataLoader default: the last, partial batch is kept).
    "mlp": ModelSpec(MLPVAE, "the MLP VAE of seed 000 (MNIST, 2-D latent)",
                     dict(dataset="mnist", epochs=20, lr=1e-3, batch_size=128, beta=1.0,
                          weight_decay=0.01, latent_dim=2, hidden_dim=500, sample_size=10),
                     pad=0, flatten=True, drop_last=False),
    # 001: conv VAE on FashionMNIST padded to 32x32, full batches only (partial=false).
    "conv": ModelSpec(ConvVAE, "the convolutional VAE of seed 001 (FashionMNIST, 10-D latent)",
                      dict(dataset="fashion-mnist", epochs=10, lr=1e-4, batch_size=64, beta=1.0,
                           weight_decay=0.01, latent_dim=10, hidden_dim=256, sample_size=10),
                      pad=2, flatten=False, drop_last=True),
}
