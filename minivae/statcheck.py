"""Statistical checks: what gradient checks cannot see in a VAE's sampling and its bounds.

A gradient check compares a backward pass with its own forward pass, so a forward pass that
computes the wrong thing consistently passes it. The classic case is a swapped standard deviation
and variance: z = mu + eps * sigma^2 instead of mu + eps * sigma trains, its gradients check
out, and the model is wrong. These checks compare the numbers with what they mean, from many
random samples, with tolerances derived from the sample count:

* analytic KL against Monte Carlo: KL(q || p) = E_q[log q(z) - log p(z)]. The average of that
  difference over M draws of q has standard error s / sqrt(M) (s: the sample standard deviation
  of the difference); the check passes when the analytic KL lies within Z standard errors.
  Done for each parametrisation of losses.py (log sigma^2 and log sigma), and for each seed
  model on the samples its training forward draws, against the KL term that training uses.
* the reparametrised samples' standard deviation: drawn through exactly the path training uses
  (`training_samples`), it must equal exp(1/2 log sigma^2) for a model whose scale head gives
  log sigma^2 (seed 001's ConvVAE) and exp(log sigma) for one whose gives log sigma (seed 000's
  MLPVAE); every model of the registry is checked. The sample
  standard deviation of M normal draws has a relative standard error of 1 / sqrt(2 (M - 1)).
* the importance-weighted bound (Burda et al., 2016): IWAE_K = log (1/K) sum_k w_k is never
  below the ELBO estimate mean_k log w_k from the same samples (Jensen), and its average does
  not fall as K grows. Splitting one pool of samples into groups of K, each group of 2K the
  union of two groups of K, makes both exact, image by image (log of a mean of two means >=
  mean of their logs), so these two hold up to rounding only.

The IWAE checks test the estimator `minivae evaluate` uses (models.log_weights and
log_mean_exp). The same functions serve `pytest tests/test_statcheck.py` and
`minivae gradcheck --statistical`.
"""

import math
import time
from typing import NamedTuple

import numpy as np

from minivae.backend import backend_name, get_backend, to_host
from minivae.losses import kl_log_sigma, kl_log_var
from minivae.models import MODELS, SIGMA_EXPONENT, log_mean_exp, log_weights
from minivae.tiers import build_model

Z = 5.0                   # standard errors a Monte-Carlo estimate may stray from its target
ROUNDING = 1e-9           # relative slack of the checks that hold exactly (float64)

class Result(NamedTuple):
    """One row of the statistical table: the largest deviation seen against its tolerance."""
    name: str
    detail: str
    error: float
    tolerance: float

    @property
    def ok(self):
        return bool(self.error <= self.tolerance)


# -- sampling through the training path -----------------------------------------------------

def training_samples(model, x, eps):
    """Run the training forward, model.loss(x, noise=eps), and return what it computed:
    (terms, mu, scale-head output, z), z being the decoder's input, host float64 arrays.

    It watches model.mu, model.scale and model.decoder (their .forward) while the model's own
    loss runs, so the samples are those training draws, computed by training's code."""
    seen = {}
    watched = {"mu": model.mu, "scale": model.scale, "decoder": model.decoder}

    def watch(name, forward):
        def forward_and_keep(a):
            out = forward(a)
            seen[name] = (a, out)
            return out
        return forward_and_keep

    own = {name: layer.__dict__.get("forward") for name, layer in watched.items()}
    for name, layer in watched.items():
        layer.forward = watch(name, layer.forward)
    try:
        terms = model.loss(x, noise=eps, beta=1.0, weight_decay=0.0)
    finally:
        for name, layer in watched.items():
            if own[name] is None:
                del layer.forward
            else:
                layer.forward = own[name]
    host = lambda a: to_host(a).astype(np.float64)  # noqa: E731
    return terms, host(seen["mu"][1]), host(seen["scale"][1]), host(seen["decoder"][0])


def _spread_scales(model, lo=-1.5, hi=1.0):
    """Set the scale head's bias so that log sigma runs from lo to hi across the latent
    dimensions: a swapped std / variance is invisible where sigma is near 1."""
    name = f"{model.scale_name}.b"
    log_sigma = np.linspace(lo, hi, model.latent_dim)
    b = model.params[name]
    s = log_sigma / SIGMA_EXPONENT[model.scale_name]
    b[...] = model.xp.asarray(s.astype(b.dtype))           # in place: a view stays a view


def _images(model, n, rng):
    """n random images in the layout of `model`'s registry entry (models.MODELS)."""
    spec = MODELS.get(getattr(model, "registry_name", None)) or next(
        spec for spec in MODELS.values() if isinstance(model, spec.cls))
    return model.xp.asarray(rng.random(spec.input_shape(n)).astype(model.dtype))


def _mc_kl(z, mu, sigma):
    """Per-draw log q(z) - log p(z) for q = N(mu, sigma^2), p = N(0, 1), summed over dims."""
    return (-np.log(sigma) - 0.5 * ((z - mu) / sigma) ** 2 + 0.5 * z ** 2).sum(axis=-1)


# -- the checks -------------------------------------------------------------------------------

def check_kl_formula(parametrisation, samples, rng):
    """losses.kl_log_var / kl_log_sigma against Monte Carlo, on a grid of (mu, sigma)."""
    mu = np.linspace(-2.0, 2.0, 5)[:, None] * np.ones((1, 5))
    log_sigma = np.ones((5, 1)) * np.linspace(-1.5, 1.0, 5)[None]
    mu, log_sigma = mu.ravel()[None], log_sigma.ravel()[None]           # (1, 25): 25 cases
    if parametrisation == "log_var":
        kl = kl_log_var(mu, 2 * log_sigma)[0]
    else:
        kl = kl_log_sigma(mu, log_sigma)[0]
    sigma = np.exp(log_sigma)
    z = mu + rng.standard_normal((samples, mu.shape[1])) * sigma         # (M, 25)
    per_draw = -np.log(sigma) - 0.5 * ((z - mu) / sigma) ** 2 + 0.5 * z ** 2
    se = per_draw.std(axis=0, ddof=1) / math.sqrt(samples)
    error = float((np.abs(per_draw.mean(axis=0) - kl[0]) / se).max())
    fn = "kl_log_var" if parametrisation == "log_var" else "kl_log_sigma"
    return Result(f"KL {parametrisation}", f"losses.{fn} vs MC, 25 (mu, sigma), M={samples}",
                  error, Z)


def check_model(model, label, samples, images, rng):
    """The reparametrised samples' std and the KL term of `model`, drawn as training draws
    them, against what its scale head means (SIGMA_EXPONENT[model.scale_name])."""
    _spread_scales(model)
    d, k = model.latent_dim, SIGMA_EXPONENT[model.scale_name]
    x = _images(model, images, rng)
    std_err, kl_err = 0.0, 0.0
    for i in range(images):
        xi = model.xp.repeat(x[i:i + 1], samples, axis=0)
        eps = rng.standard_normal((samples, d)).astype(model.dtype)
        terms, mu, s, z = training_samples(model, xi, eps)
        sigma = np.exp(k * s)                                            # (M, d), rows equal
        ratio = z.std(axis=0, ddof=1) / sigma[0]
        std_err = max(std_err, float(np.abs(ratio - 1).max()))
        per_draw = _mc_kl(z, mu, sigma)
        se = per_draw.std(ddof=1) / math.sqrt(samples)
        kl_err = max(kl_err, abs(float(per_draw.mean()) - terms.kl) / float(se))
    formula = "exp(1/2 log sigma^2)" if model.scale_name == "log_var" else "exp(log sigma)"
    return [Result(f"{label} std", f"sample std / {formula}, {images}x{d} dims, M={samples}",
                   std_err, Z / math.sqrt(2 * (samples - 1))),
            Result(f"{label} KL", f"training's KL vs MC of its samples, {images} images",
                   kl_err, Z)]


def check_iwae(model, label, pool, images, rng):
    """IWAE_K >= ELBO image by image, and mean IWAE_K non-decreasing in K = 1, 2, 4, ..., pool
    (one pool of samples split into nested groups; reported as negatives, -IWAE <= -ELBO)."""
    x = _images(model, images, rng)
    mu, log_var = model.encode(x)
    eps = model.xp.asarray(rng.standard_normal((pool, images, model.latent_dim))
                           .astype(model.dtype))
    log_w = to_host(log_weights(model, x, mu, log_var, eps))             # (pool, B)
    elbo = log_w.mean(axis=0)
    ks = [2 ** j for j in range(int(math.log2(pool)) + 1)]
    iwae = np.stack([log_mean_exp(log_w.reshape(pool // K, K, images), axis=1).mean(axis=0)
                     for K in ks])                                       # (len(ks), B)
    slack = ROUNDING * max(1.0, float(np.abs(elbo).max()))
    above = float((-iwae - (-elbo)).max())              # -IWAE_K - (-ELBO): never > 0
    means = -iwae.mean(axis=1)                          # -IWAE_K averaged over the images
    rise = float(np.diff(means).max())                  # never > 0 either
    return [Result(f"{label} IWAE<=ELBO", f"max(-IWAE_K - (-ELBO)), K<={pool}, {images} images",
                   max(above, 0.0), slack),
            Result(f"{label} IWAE in K",
                   f"mean -IWAE_K: {means[0]:.2f} (K=1) .. {means[-1]:.2f} (K={pool})",
                   max(rise, 0.0), slack)]


def registered_models(backend="numpy", small=False):
    """[(name, model)] for the checks: every model of the registry (models.MODELS), in float64
    on the plain tier (small: dense layers 32 wide)."""
    return [(name, build_model(name, seed=1, dtype=np.float64, backend=backend, impl="plain",
                               hidden_dim=32 if small else None)) for name in MODELS]


def all_checks(backend="numpy", samples=2000, images=2, pool=64, seed=0, small=False):
    """Every statistical check, as a list of Result; seeded, so the same numbers every run."""
    rng = np.random.default_rng(seed)
    results = [check_kl_formula("log_var", samples, rng),
               check_kl_formula("log_sigma", samples, rng)]
    for label, model in registered_models(backend, small):
        results += check_model(model, label, samples, images, rng)
        results += check_iwae(model, label, pool, 4 * images, rng)
    return results


def run_cli(backend="numpy"):
    """Print the statistical table (`minivae gradcheck --statistical`); returns the exit status."""
    t0 = time.perf_counter()
    xp = get_backend(backend)
    results = all_checks(backend_name(xp))
    print(f"\nstatistical checks on {backend_name(xp)}, float64, tolerance {Z:g} standard errors "
          f"of the Monte-Carlo estimates (exact checks: rounding)")
    print(f"{'check':<20} {'what':<58} {'error':>9} {'tol':>9}  result")
    for r in results:
        print(f"{r.name:<20} {r.detail:<58} {r.error:>9.3g} {r.tolerance:>9.3g}  "
              f"{'pass' if r.ok else 'FAIL'}")
    failed = sum(not r.ok for r in results)
    print(f"{len(results) - failed} passed, {failed} failed; {time.perf_counter() - t0:.1f} s")
    return 1 if failed else 0
