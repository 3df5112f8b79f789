"""A run's settings: what each one may be, the seeds' defaults, and their validation.

`make_config` gives the complete, checked `Config` that `minivae train` runs from and saves as
config.json (and inside every checkpoint). The lists it checks against are defined once each,
where they belong: backends in minivae.backend, tiers in minivae.tiers, datasets in
minivae.download, models (with their seeds' defaults) in minivae.models.
"""

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from minivae.backend import BACKENDS
from minivae.download import DATASETS
from minivae.errors import ResumeMismatch, TrainError
from minivae.models import MODELS
from minivae.optim import OPTIMIZERS
from minivae.tiers import IMPLS

DTYPES = ("float32", "float64")
CUDA_GRAPH = ("auto", "off")
MAX_SAMPLE_SIZE = 32      # the picture grids: at most 32 x 32 images
RECON_FROM = ("sample", "mean")


@dataclass
class Config:
    """Every setting of a run. Those of the first block have the model's seed defaults
    (models.MODELS[model].defaults) where make_config is not given them."""

    model: str = "mlp"
    dataset: Optional[str] = None
    epochs: Optional[int] = None
    lr: Optional[float] = None
    batch_size: Optional[int] = None
    beta: Optional[float] = None
    weight_decay: Optional[float] = None   # the L2 penalty's lambda (loss += lambda sum p^2)
    latent_dim: Optional[int] = None
    hidden_dim: Optional[int] = None
    sample_size: Optional[int] = None
    seed: int = 0
    limit: Optional[int] = None             # the first N training and N test images only
    dtype: str = "float32"
    backend: str = "auto"
    impl: str = "auto"
    out: Optional[str] = None               # default output/<model>-<dataset>
    data_dir: Optional[str] = None
    mirrors: List[str] = field(default_factory=list)
    download: bool = True                   # False: use the cached files as they are
    log_every: int = 10
    tensorboard: bool = False
    kl_warmup: int = 0
    recon_from: str = "sample"
    keep_checkpoints: Optional[int] = None  # None: keep every checkpoint
    threads: Optional[int] = None           # BLAS threads; None: auto (minivae.threads)
    cuda_graph: Optional[str] = None        # "auto" / "off"; None: auto, not asked for
    optimizer: str = "adam"                 # a key of optim.OPTIMIZERS (the seeds': adam)

    def to_dict(self):
        return dataclasses.asdict(self)

    def replace(self, **changes):
        """A checked copy with `changes` applied (a change of None keeps the setting)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return make_config(**{**self.to_dict(), **changes})

    @property
    def spec(self):
        """The model's registry entry (models.ModelSpec): class, input layout, defaults."""
        return MODELS[self.model]


SETTINGS = tuple(f.name for f in dataclasses.fields(Config))

# Settings that define the computation: a resumed run must use the same ones. (Not "impl": the
# tiers compute the same numbers, so a run may continue on another one.)
FIXED_ON_RESUME = ("model", "dataset", "batch_size", "lr", "beta", "weight_decay", "latent_dim",
                   "hidden_dim", "seed", "sample_size", "limit", "dtype", "kl_warmup",
                   "optimizer")
# Settings a resumed run goes on with, which config.json then records (the others of its kind,
# such as the backend or --keep-checkpoints, are the one command's).
RECORDED_ON_RESUME = ("threads", "recon_from")
# Settings added after the first runs were saved, with the value an older config.json means.
LATER_SETTINGS = {"kl_warmup": 0, "recon_from": "sample", "optimizer": "adam"}


def make_config(model="mlp", **settings):
    """A complete, checked Config: the model's seed defaults, overridden by `settings` (a value
    of None means "use the default"). TypeError for a name that is no setting."""
    if model not in MODELS:
        raise TrainError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    unknown = set(settings) - set(SETTINGS)
    if unknown:
        raise TypeError(f"make_config: unknown setting {sorted(unknown)[0]!r}")
    given = {k: v for k, v in settings.items() if v is not None}
    cfg = Config(model=model, **{**MODELS[model].defaults, **given})
    if cfg.out is None:
        cfg.out = default_out(model, cfg.dataset)
    cfg.mirrors = list(cfg.mirrors or [])
    check_config(cfg)
    return cfg


def default_out(model="mlp", dataset=None):
    """The run folder of a run with no --out: output/<model>-<dataset> (the model's seed's
    dataset when none is given)."""
    if model not in MODELS:
        raise TrainError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    return os.path.join("output", f"{model}-{dataset or MODELS[model].defaults['dataset']}")


def is_int(v):
    """True for Python and NumPy integers, False for bools."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def flag(key):
    """The command-line flag of setting `key`: batch_size -> --batch-size."""
    return "--" + key.replace("_", "-")


def check_config(cfg):
    """Raise TrainError naming the first setting that cannot work."""
    def integer(key, lowest, allow_none=False):
        v = getattr(cfg, key)
        if v is None and allow_none:
            return
        if not is_int(v) or v < lowest:
            what = "a positive" if lowest == 1 else "a non-negative"
            raise TrainError(f"{flag(key)} must be {what} integer, got {v!r}")

    def one_of(key, choices, what):
        if getattr(cfg, key) not in choices:
            raise TrainError(f"unknown {what} {getattr(cfg, key)!r}; choose one of "
                             f"{', '.join(choices)}")

    one_of("model", MODELS, "model")
    one_of("dataset", DATASETS, "dataset")
    for key in ("epochs", "batch_size", "latent_dim", "hidden_dim", "sample_size", "log_every"):
        integer(key, 1)
    for key in ("limit", "keep_checkpoints", "threads"):
        integer(key, 1, allow_none=True)
    if cfg.sample_size > MAX_SAMPLE_SIZE:
        raise TrainError(f"--sample-size must be at most {MAX_SAMPLE_SIZE} (a {MAX_SAMPLE_SIZE}x"
                         f"{MAX_SAMPLE_SIZE} grid of pictures), got {cfg.sample_size}")
    for key in ("seed", "kl_warmup"):
        integer(key, 0)
    if not isinstance(cfg.lr, (int, float)) or not math.isfinite(cfg.lr) or cfg.lr <= 0:
        raise TrainError(f"--lr must be a positive number, got {cfg.lr!r}")
    for key in ("beta", "weight_decay"):
        v = getattr(cfg, key)
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise TrainError(f"{flag(key)} must be a non-negative number, got {v!r}")
    for key, choices in (("dtype", DTYPES), ("recon_from", RECON_FROM)):
        if getattr(cfg, key) not in choices:
            raise TrainError(f"{flag(key)} must be one of {', '.join(choices)}, got "
                             f"{getattr(cfg, key)!r}")
    one_of("backend", BACKENDS, "backend")
    one_of("impl", IMPLS, "impl")
    one_of("optimizer", OPTIMIZERS, "optimizer")
    if cfg.cuda_graph is not None and cfg.cuda_graph not in CUDA_GRAPH:
        raise TrainError(f"--cuda-graph must be one of {', '.join(CUDA_GRAPH)}, got "
                         f"{cfg.cuda_graph!r}")


def resume_settings(saved, given, out):
    """The settings of resuming run folder `out`: those it was trained with (`saved`, a dict
    from its config.json or a checkpoint), where `given` (the settings asked for now) may change
    how the run is carried out (backend, tier, data source, ...) and raise --epochs, but must
    agree on everything that defines the computation (FIXED_ON_RESUME); ResumeMismatch names
    the first setting that does not."""
    for key in FIXED_ON_RESUME:
        was = saved.get(key, LATER_SETTINGS.get(key))       # older files lack later settings
        if key in given and given[key] != was:
            raise ResumeMismatch(f"cannot resume {out}: it was trained with {flag(key)} {was}, "
                                 f"not {flag(key)} {given[key]} (leave {flag(key)} out to "
                                 f"continue with the run's setting)")
    return {**{k: v for k, v in saved.items() if k in SETTINGS}, **given}
