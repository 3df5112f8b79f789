"""A run's settings: the seeds' defaults, their validation, the run's random streams and data.

`make_config` gives the complete, checked dict that `minivae train` runs from and saves as
config.json (and inside every checkpoint). The lists it checks against are defined once each, where
they belong: backends and impls in minivae.backend, datasets in minivae.download; the models are
those of minivae.models, each with its seed's defaults here.
"""

import math
import os

import numpy as np

from minivae import data
from minivae.backend import BACKENDS, IMPLS, backend_name, cupy_status, get_backend
from minivae.download import DATASETS, mirrors
from minivae.models import build_model

# The seeds' settings; `make_config` fills in what the user did not set.
MODEL_DEFAULTS = {
    # 000: MLP VAE on MNIST (Flux DataLoader default: the last, partial batch is kept).
    "mlp": dict(dataset="mnist", epochs=20, lr=1e-3, batch_size=128, beta=1.0, weight_decay=0.01,
                latent_dim=2, hidden_dim=500, sample_size=10),
    # 001: conv VAE on FashionMNIST padded to 32x32, full batches only (partial=false).
    "conv": dict(dataset="fashion-mnist", epochs=10, lr=1e-4, batch_size=64, beta=1.0,
                 weight_decay=0.01, latent_dim=10, hidden_dim=256, sample_size=10),
}
DTYPES = ("float32", "float64")

# Settings that define the computation: a resumed run must use the same ones. (Not "impl": both
# tiers compute the same numbers, so a run may continue on the other one.)
FIXED_ON_RESUME = ("model", "dataset", "batch_size", "lr", "beta", "weight_decay", "latent_dim",
                   "hidden_dim", "seed", "sample_size", "limit", "dtype", "kl_warmup")
# Settings added after the first runs were saved, with the value an older config.json means.
LATER_SETTINGS = {"kl_warmup": 0, "recon_from": "sample"}
RECON_FROM = ("sample", "mean")

# Independent random streams, each seeded from (run seed, stream[, epoch]).
STREAM_DATA, STREAM_GRID, STREAM_RECON, STREAM_SAMPLES, STREAM_TEST, STREAM_EVAL, STREAM_VIS = \
    range(1, 8)


class TrainError(Exception):
    """A problem the user can fix (bad setting, unusable run folder, ...); the message says what."""


def make_config(model="mlp", **settings):
    """A complete, checked config dict: the model's seed defaults, overridden by `settings`
    (a value of None means "use the default")."""
    if model not in MODEL_DEFAULTS:
        raise TrainError(f"unknown model {model!r}; choose one of {', '.join(MODEL_DEFAULTS)}")
    cfg = dict(model=model, **MODEL_DEFAULTS[model], seed=0, limit=None, dtype="float32",
               backend="auto", impl="auto", out=None, data_dir=None, mirrors=[], download=True,
               log_every=10, tensorboard=False, **LATER_SETTINGS)
    cfg["keep_checkpoints"] = None     # None: keep every checkpoint
    for key, value in settings.items():
        if key not in cfg:
            raise TypeError(f"make_config: unknown setting {key!r}")
        if value is not None:
            cfg[key] = value
    if cfg["out"] is None:
        cfg["out"] = os.path.join("output", f"{model}-{cfg['dataset']}")
    cfg["mirrors"] = list(cfg["mirrors"] or [])
    check_config(cfg)
    return cfg


def is_int(v):
    """True for Python and NumPy integers, False for bools."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def check_config(cfg):
    """Raise TrainError naming the first setting that cannot work."""
    def positive_int(key, allow_none=False):
        v = cfg[key]
        if v is None and allow_none:
            return
        if not is_int(v) or v < 1:
            raise TrainError(f"{flag(key)} must be a positive integer, got {v!r}")

    def one_of(key, choices, what):
        if cfg[key] not in choices:
            raise TrainError(f"unknown {what} {cfg[key]!r}; choose one of {', '.join(choices)}")

    one_of("model", MODEL_DEFAULTS, "model")
    one_of("dataset", DATASETS, "dataset")
    for key in ("epochs", "batch_size", "latent_dim", "sample_size", "log_every"):
        positive_int(key)
    positive_int("limit", allow_none=True)
    positive_int("keep_checkpoints", allow_none=True)
    positive_int("hidden_dim")
    lr = cfg["lr"]
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise TrainError(f"--lr must be a positive number, got {lr!r}")
    for key in ("beta", "weight_decay"):
        v = cfg[key]
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise TrainError(f"--{key.replace('_', '-')} must be a non-negative number, got {v!r}")
    if not is_int(cfg["seed"]) or cfg["seed"] < 0:
        raise TrainError(f"--seed must be a non-negative integer, got {cfg['seed']!r}")
    if cfg["dtype"] not in DTYPES:
        raise TrainError(f"--dtype must be one of {', '.join(DTYPES)}, got {cfg['dtype']!r}")
    one_of("backend", BACKENDS, "backend")
    one_of("impl", IMPLS, "impl")
    if not is_int(cfg["kl_warmup"]) or cfg["kl_warmup"] < 0:
        raise TrainError(f"--kl-warmup must be a non-negative integer, got {cfg['kl_warmup']!r}")
    if cfg["recon_from"] not in RECON_FROM:
        raise TrainError(f"--recon-from must be one of {', '.join(RECON_FROM)}, got "
                         f"{cfg['recon_from']!r}")


def kl_weight(cfg, step):
    """The KL weight of training step `step` (0 for the first): with --kl-warmup W > 0 it rises
    linearly from 0 to --beta over the first W steps (beta * step / W), then stays at --beta."""
    warmup = cfg["kl_warmup"]
    if warmup and step < warmup:
        return cfg["beta"] * step / warmup
    return cfg["beta"]


def layout(cfg):
    """How the model wants its images: (pad, flatten, drop_last)."""
    if cfg["model"] == "conv":
        return 2, False, True      # 28x28 zero-padded to 32x32, NCHW, full batches only
    return 0, True, False          # flat 784-vectors, last partial batch kept


def resolve_backend(name, log=None, verbose=False):
    """The array module for `name`; for 'auto', say in a few words which one was picked (and,
    when verbose, why)."""
    xp = get_backend(name)
    if name == "auto" and log is not None:
        picked = backend_name(xp)
        why = "a usable GPU was found" if picked == "cupy" else f"no usable GPU: {cupy_status()[1]}"
        log(f"minivae: backend: {picked}" + (f" (auto: {why})" if verbose else ""))
    return xp


def flag(key):
    """The command-line flag of setting `key`: batch_size -> --batch-size."""
    return "--" + key.replace("_", "-")


def resume_settings(saved, given, out):
    """The settings of resuming run folder `out`: those it was trained with (`saved`, from its
    config.json), where the command line (`given`: only the settings the user typed) may change
    how the run is carried out (backend, data source, ...) and raise --epochs, but must agree
    on everything that defines the computation (FIXED_ON_RESUME)."""
    for key in FIXED_ON_RESUME:
        if key in given and key in saved and given[key] != saved[key]:
            raise TrainError(f"cannot resume {out}: it was trained with {flag(key)} "
                             f"{saved[key]}, the command line says {flag(key)} {given[key]} "
                             f"(leave {flag(key)} out to continue with the run's setting)")
    return {**saved, **given}


def model_for(cfg, xp):
    """The model cfg describes, freshly initialised from cfg["seed"], on array module xp."""
    return build_model(cfg["model"], latent_dim=cfg["latent_dim"], hidden_dim=cfg["hidden_dim"],
                       seed=cfg["seed"], dtype=np.dtype(cfg["dtype"]).type,
                       backend=backend_name(xp), impl=cfg.get("impl", "auto"))


def stream_rng(seed, stream, *more):
    """A generator independent of the training streams, fixed by (seed, stream, *more)."""
    return np.random.default_rng([seed, stream, *more])


def load_split(cfg, split, limit=None, progress=True):
    """A split of the run's dataset; with cfg["download"] False, the cached files are used as
    they are (no download, no checksum: how tests feed in synthetic IDX files). The run's
    --mirror sources are tried in front of the default ones."""
    return data.load(cfg["dataset"], split, data_dir=cfg.get("data_dir"),
                     mirrors=mirrors(cfg["dataset"], extra=cfg.get("mirrors")), limit=limit,
                     download=cfg.get("download", True), progress=progress)


def data_overrides(cfg, data_dir=None, mirrors=None, download=None):
    """cfg with the data location replaced where the caller gave one (evaluate / plot flags)."""
    if data_dir is not None:
        cfg["data_dir"] = data_dir
    if mirrors:
        cfg["mirrors"] = list(mirrors)
    if download is not None:
        cfg["download"] = download
    return cfg
