"""The tiers' table: which layer classes and which Adam each tier of the engine computes with.

The plain tier (layers.py, optim.py) is the engine as a learner reads it; the other tiers hold
twins of some of its pieces that compute the same numbers faster on one backend (minivae/fast/
on NumPy). This module is the one place that knows which tiers exist:

    TIERS["fast"].layers.Conv2d      the fast tier's Conv2d
    TIERS["fast"].layers.Tanh        the plain Tanh: a tier without a twin of a layer uses the
                                     plain class, so a new plain layer works in every tier
    build_model("conv", impl="fast") a seed model built from a tier's layer classes
    make_adam(model, lr=1e-3)        the Adam of the model's tier (optim.Adam on the plain tier)

`resolve_impl` turns "auto" into a tier for a backend: fast on NumPy, plain on CuPy.
"""

from typing import NamedTuple

import numpy as np

from minivae import layers, optim
from minivae.backend import backend_name, get_backend
from minivae.fast import layers as fast_layers
from minivae.fast import optim as fast_optim
from minivae.models import MODELS


class LayerSet:
    """A tier's layer classes by name: the tier's own twin where it has one, else the plain
    class of layers.py (`tier_layers.Dense`, `getattr(tier_layers, "ReLU")`)."""

    def __init__(self, name, module):
        self.name, self.module = name, module

    def __getattr__(self, cls_name):
        own = getattr(self.module, cls_name, None)
        if isinstance(own, type) and issubclass(own, layers.Layer):
            return own
        return getattr(layers, cls_name)

    def __repr__(self):
        return f"LayerSet({self.name!r})"


class Tier(NamedTuple):
    layers: object          # the layer classes (layers.py itself for the plain tier)
    adam: type              # the optimizer class, same arguments and state as optim.Adam


TIERS = {
    "plain": Tier(layers, optim.Adam),
    "fast": Tier(LayerSet("fast", fast_layers), fast_optim.Adam),
}
IMPLS = ("auto",) + tuple(TIERS)


def resolve_impl(impl, xp):
    """The tier `impl` names on array module xp: auto is fast on NumPy, plain on CuPy."""
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; choose one of {', '.join(IMPLS)}")
    if impl == "auto":
        return "fast" if backend_name(xp) == "numpy" else "plain"
    return impl


def tier_of(model):
    """The name of the tier whose layer classes `model` was built from."""
    for name, tier in TIERS.items():
        if model.layer_set is tier.layers:
            return name
    raise ValueError(f"{type(model).__name__} was built from an unknown layer set "
                     f"{model.layer_set!r}")


def build_model(name, *, latent_dim=None, hidden_dim=None, seed=0, dtype=np.float32,
                backend="numpy", impl="auto"):
    """The seed model `name` (a key of models.MODELS) in tier `impl`; None for a size keeps the
    seed's default."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    tier = TIERS[resolve_impl(impl, get_backend(backend))]
    sizes = {k: v for k, v in (("latent_dim", latent_dim), ("hidden_dim", hidden_dim))
             if v is not None}
    return MODELS[name].cls(seed=seed, dtype=dtype, backend=backend, layer_set=tier.layers,
                            **sizes)


def make_adam(model, lr=1e-3, **kwargs):
    """Adam for `model`, of the model's tier: the same numbers as optim.Adam(model, lr)."""
    return TIERS[tier_of(model)].adam(model, lr=lr, **kwargs)
