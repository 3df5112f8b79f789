"""The tiers' table: which layer classes and which Adam each tier of the engine computes with.

The plain tier (layers.py, optim.py) is the engine as a learner reads it; the other tiers hold
twins of some of its pieces that compute the same numbers faster on one backend (minivae/fast/
on NumPy, minivae/gpu/ on CuPy). This module is the one place that knows which tiers exist:

    TIERS["fast"].layers.Conv2d      the fast tier's Conv2d
    TIERS["fast"].layers.Tanh        the plain Tanh: a tier without a twin of a layer uses the
                                     plain class, so a new plain layer works in every tier
    TIERS["gpu"].optimizers["adam"]  the gpu tier's Adam (optimizers the tier has no twin of:
                                     the plain class, as for layers)
    build_model("conv", impl="fast") a seed model built from a tier's layer classes
    make_optimizer(model, "sgd", lr) the optimizer of the model's tier (optim.py on the plain
                                     tier); make_adam(model, lr) is make_optimizer(..., "adam")

`resolve_impl` turns "auto" into a tier for a backend: fast on NumPy; on CuPy the gpu tier, once
it has passed a one-batch self-check on the device against the plain tier (else plain, with one
line on stderr saying why).
"""

import sys
from typing import Callable, NamedTuple

import numpy as np

from minivae import layers, optim
from minivae.backend import backend_name, get_backend, to_host
from minivae.fast import layers as fast_layers
from minivae.fast import optim as fast_optim
from minivae.gpu import layers as gpu_layers
from minivae.gpu import models as gpu_models
from minivae.gpu import optim as gpu_optim
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


def _same_class(cls):
    return cls


class Tier(NamedTuple):
    layers: object          # the layer classes (layers.py itself for the plain tier)
    optimizers: dict        # name -> the tier's twin of optim.OPTIMIZERS[name] (same state)
    model_class: Callable = _same_class   # a registry model class -> the class this tier builds


TIERS = {
    "plain": Tier(layers, optim.OPTIMIZERS),
    "fast": Tier(LayerSet("fast", fast_layers), {"adam": fast_optim.Adam}),
    "gpu": Tier(LayerSet("gpu", gpu_layers), {"adam": gpu_optim.Adam}, gpu_models.flat_class),
}
IMPLS = ("auto",) + tuple(TIERS)


def resolve_impl(impl, xp):
    """The tier `impl` names on array module xp: auto is fast on NumPy; on CuPy, gpu when it
    passes its self-check on this device (once per process), else plain."""
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; choose one of {', '.join(IMPLS)}")
    if impl == "auto":
        if backend_name(xp) == "numpy":
            return "fast"
        return "gpu" if gpu_self_check(xp) is None else "plain"
    return impl


_SELF_CHECKS = {}          # array module -> None (passed) or why it failed


def gpu_self_check(xp, tolerance=1e-3):
    """None when the gpu tier computes what the plain tier computes on xp's device (each seed
    model, narrowed, one batch of 4: the loss terms, every gradient, and one Adam step's change
    of every parameter and its moments m and v, float32, to `tolerance` relative to each array's
    largest value), else a line saying why; the answer is kept for the process, and a failure is
    said once on stderr."""
    if xp in _SELF_CHECKS:
        return _SELF_CHECKS[xp]
    why = None
    try:
        for name, spec in MODELS.items():
            why = _self_check_model(xp, name, spec, tolerance)
            if why:
                break
    except Exception as e:                       # noqa: BLE001 - any failure means "don't"
        why = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    if why is not None:
        print(f"minivae: the gpu tier failed its self-check on this device ({why}); using the "
              f"plain tier", file=sys.stderr, flush=True)
    _SELF_CHECKS[xp] = why
    return why


def _self_check_model(xp, name, spec, tolerance):
    """gpu_self_check for one model: why it fails, or None. The Adam step starts both tiers
    from the same gradients (the plain tier's), so it checks the optimizer's arithmetic alone
    (a first step's change is lr g / (|g| + eps): from gradients that differ by rounding it
    would differ a lot where |g| is near eps)."""
    rng = np.random.default_rng(0)
    x = xp.asarray(rng.random(spec.input_shape(4)).astype(np.float32))
    noise = xp.asarray(rng.standard_normal((4, spec.defaults["latent_dim"])).astype(np.float32))
    models, found = {}, {}
    for impl in ("plain", "gpu"):
        model = models[impl] = build_model(name, hidden_dim=16, seed=0,
                                           backend=backend_name(xp), impl=impl)
        terms = model.loss_and_grads(x, noise=noise, beta=0.5, weight_decay=0.01)
        found[impl] = terms, {f"gradient {k}": to_host(g) for k, g in model.grads.items()}
    for k, g in models["plain"].grads.items():
        models["gpu"].grads[k][...] = g
    for impl, model in models.items():
        before = {k: to_host(p) for k, p in model.params.items()}
        adam = make_adam(model, lr=1e-3)
        adam.step()
        state, arrays = adam.state_dict(), found[impl][1]
        for k, p in model.params.items():
            arrays[f"Adam's change of {k}"] = to_host(p) - before[k]
            arrays[f"Adam's m.{k}"], arrays[f"Adam's v.{k}"] = (to_host(state[f"{m}.{k}"])
                                                                for m in "mv")
    (t0, a0), (t1, a1) = found["plain"], found["gpu"]
    if not np.allclose(t1, t0, rtol=tolerance):
        return f"{name}: loss terms {tuple(t1)} against {tuple(t0)}"
    for k in a0:
        err = float(np.abs(a1[k] - a0[k]).max()) / max(1e-12, float(np.abs(a0[k]).max()))
        if not err <= tolerance:
            return f"{name}: {k} off by {err:.1e} relative"
    return None


def plain_class(layer):
    """The class of layers.py that `layer` is, or is a tier's twin of (a tier's class of the
    same name, subclassing it); else its own class (a subclass of a plain layer is not its
    twin: it computes something else)."""
    cls = type(layer)
    plain = getattr(layers, cls.__name__, None)
    if cls is plain:
        return cls
    if plain is not None and issubclass(cls, plain) and any(
            getattr(tier.layers, cls.__name__, None) is cls for tier in TIERS.values()):
        return plain
    return cls


def unfused_layers(model):
    """The names of the layer classes in a gpu-tier model the tier has no twin of: they run as
    their plain classes do, a kernel per operation."""
    names = set()
    for part in (model.encoder, model.decoder):
        for layer in getattr(part, "layers", [part]):
            if type(layer).__module__ != gpu_layers.__name__:
                names.add(type(layer).__name__)
    return sorted(names)


_SAID = set()


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
    cls = tier.model_class(MODELS[name].cls)
    model = cls(seed=seed, dtype=dtype, backend=backend, layer_set=tier.layers,
                **MODELS[name].options, **sizes)
    model.registry_name = name
    if tier is TIERS["gpu"]:
        unfused = unfused_layers(model)
        line = (f"minivae: the gpu tier runs {', '.join(unfused)} unfused (no twin in "
                f"minivae/gpu/layers.py: a kernel per operation)")
        if unfused and line not in _SAID:
            _SAID.add(line)
            print(line, file=sys.stderr, flush=True)
    return model


def make_optimizer(model, name="adam", lr=1e-3, **kwargs):
    """Optimizer `name` (a key of optim.OPTIMIZERS) for `model`: its tier's twin where the tier
    has one, else the plain class; the same numbers as optim.OPTIMIZERS[name](model, lr)."""
    if name not in optim.OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of "
                         f"{', '.join(optim.OPTIMIZERS)}")
    cls = TIERS[tier_of(model)].optimizers.get(name, optim.OPTIMIZERS[name])
    return cls(model, lr=lr, **kwargs)


def make_adam(model, lr=1e-3, **kwargs):
    """Adam for `model`, of the model's tier: make_optimizer(model, "adam", lr)."""
    return make_optimizer(model, "adam", lr, **kwargs)
