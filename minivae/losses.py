"""Loss terms of the VAE objective, each returning its value and its gradient together.

The elementwise functions return arrays the shape of their inputs; the model sums them and divides
by the batch size (per-sample averages, as both seeds do). Keeping value and gradient in one
function keeps the formula and its derivative on the same screen.
"""

from minivae.backend import array_module
from minivae.layers import sigmoid


def bernoulli_nll(logits, x):
    """-log p(x | logits) elementwise: max(l, 0) - l x + log(1 + exp(-|l|)) (see below)."""
    xp = array_module(logits)
    return xp.maximum(logits, 0) - logits * x + xp.log1p(xp.exp(-xp.abs(logits)))


def bce_with_logits(logits, x):
    """Bernoulli negative log-likelihood of targets x in [0, 1] under logits l, elementwise.

        loss = -[x log s(l) + (1 - x) log(1 - s(l))],  s = sigmoid
             = max(l, 0) - l x + log(1 + exp(-|l|))     (never exponentiates a large number)
        dloss/dl = s(l) - x

    Derivation: log s(l) = -log(1 + e^-l) and log(1 - s(l)) = -l - log(1 + e^-l), so
    loss = (1 - x) l + log(1 + e^-l); for l < 0 rewrite log(1 + e^-l) = -l + log(1 + e^l), which
    gives the max/abs form. Differentiating loss = (1 - x) l + log(1 + e^-l) gives
    (1 - x) - e^-l / (1 + e^-l) = (1 - x) - (1 - s(l)) = s(l) - x.
    Returns (loss, grad), both shaped like logits. Finite for |l| up to the dtype's max.
    """
    return bernoulli_nll(logits, x), sigmoid(logits) - x


def kl_log_var(mu, log_var):
    """KL(N(mu, sigma^2) || N(0, 1)) per latent dimension, parametrised by log sigma^2 (seed 001).

        kl = (sigma^2 + mu^2 - 1 - log sigma^2) / 2 = (exp(v) + mu^2 - 1 - v) / 2,  v = log sigma^2
        dkl/dmu = mu,   dkl/dv = (exp(v) - 1) / 2
    Returns (kl, dmu, dlog_var).
    """
    xp = array_module(mu)
    var = xp.exp(log_var)
    return 0.5 * (var + mu * mu - 1 - log_var), mu, 0.5 * (var - 1)


def kl_log_sigma(mu, log_sigma):
    """The same KL parametrised by log sigma (seed 000): v = 2 log sigma in the formula above.

        kl = (exp(2 s) + mu^2 - 1 - 2 s) / 2,   s = log sigma
        dkl/dmu = mu,   dkl/ds = exp(2 s) - 1
    Returns (kl, dmu, dlog_sigma).
    """
    xp = array_module(mu)
    var = xp.exp(2 * log_sigma)
    return 0.5 * (var + mu * mu - 1 - 2 * log_sigma), mu, var - 1


def l2_penalty(params, weight_decay):
    """The L2 penalty lambda * sum of squares over the given arrays (lambda = weight_decay, the
    --weight-decay flag: a term of the loss, so Adam sees its gradient; not AdamW's decoupled
    decay); gradient 2 lambda p for each.

    params: dict name -> array. Returns (value as a Python float, dict name -> gradient).
    """
    value = sum(float(array_module(p).vdot(p, p)) for p in params.values())   # one pass each
    return weight_decay * value, {name: (2 * weight_decay) * p for name, p in params.items()}
