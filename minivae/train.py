"""Training loop, metrics, checkpoints and resume; evaluation (ELBO and IWAE) of a saved run.

A run lives in one folder (``--out``)::

    config.json              the settings the run was started with
    original.png             the fixed sample_size x sample_size grid of training inputs
    epoch_<N>.png            their reconstructions after epoch N
    samples_<N>.png          decodes of a fixed set of draws from the prior N(0, I)
    metrics.csv              one row per epoch (see METRIC_FIELDS)
    loss.png                 train loss and test -ELBO per epoch
    checkpoints/model-<N>.npz  everything needed to continue: parameters, Adam state, RNG states,
                             epoch, config and the metrics so far

Randomness and exact resume
---------------------------
Every random number comes from a NumPy generator on the host, and there are only two generators
whose state carries over from one epoch to the next:

* ``model.rng`` draws the reparametrisation noise of every training step;
* the *data* generator draws one permutation of the training set per epoch.

Both states are saved in the checkpoint at the end of every epoch. Everything else that is random
(which images form ``original.png``, the noise of its reconstructions, the prior draws of
``samples_<N>.png``, the noise of the test ELBO, the IWAE samples) comes from a fresh generator
seeded from ``(seed, stream, epoch)``, so it never consumes numbers from the two training streams.
A run killed at any moment restarts from the last checkpoint with exactly the state it had then,
and on NumPy (deterministic kernels) replays the lost work bit for bit.

Every file is written to a temporary name and renamed into place, so a kill never leaves a
half-written file under a real name.
"""

import csv
import io
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

from minivae import data, plots
from minivae.backend import backend_name, cupy_status, get_backend, make_rng, to_device, to_host

# The seeds' settings; `make_config` fills in what the user did not set.
MODEL_DEFAULTS = {
    # 000: MLP VAE on MNIST (Flux DataLoader default: the last, partial batch is kept).
    "mlp": dict(dataset="mnist", epochs=20, lr=1e-3, batch_size=128, beta=1.0, weight_decay=0.01,
                latent_dim=2, hidden_dim=500, sample_size=10),
    # 001: conv VAE on FashionMNIST padded to 32x32, full batches only (partial=false).
    "conv": dict(dataset="fashion-mnist", epochs=10, lr=1e-4, batch_size=64, beta=1.0,
                 weight_decay=0.01, latent_dim=10, hidden_dim=256, sample_size=10),
}
DATASETS = ("mnist", "fashion-mnist")
DTYPES = ("float32", "float64")

# Settings that define the computation: a resumed run must use the same ones.
FIXED_ON_RESUME = ("model", "dataset", "batch_size", "lr", "beta", "weight_decay", "latent_dim",
                   "hidden_dim", "seed", "sample_size", "limit", "dtype")

METRIC_FIELDS = ("epoch", "train_loss", "train_recon", "train_kl", "train_reg", "test_neg_elbo",
                 "seconds")

# Independent random streams, each seeded from (run seed, stream[, epoch]).
STREAM_DATA, STREAM_GRID, STREAM_RECON, STREAM_SAMPLES, STREAM_TEST, STREAM_EVAL, STREAM_VIS = \
    range(1, 8)

EVAL_BATCH = 128          # images per forward pass when evaluating (bounds its memory)
CHECKPOINT_FORMAT = "minivae-checkpoint-1"


class TrainError(Exception):
    """A problem the user can fix (bad setting, unusable run folder, ...); the message says what."""


class NonFiniteLossError(TrainError):
    """Training produced a NaN or infinity; the message names the epoch and step."""


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------

def make_config(model="mlp", **settings):
    """A complete, checked config dict: the model's seed defaults, overridden by `settings`
    (a value of None means "use the default")."""
    if model not in MODEL_DEFAULTS:
        raise TrainError(f"unknown model {model!r}; choose one of {', '.join(MODEL_DEFAULTS)}")
    cfg = dict(model=model, **MODEL_DEFAULTS[model], seed=0, limit=None, dtype="float32",
               backend="auto", out=None, data_dir=None, mirrors=[], download=True,
               log_every=10, tensorboard=False)
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


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def check_config(cfg):
    """Raise TrainError naming the first setting that cannot work."""
    def positive_int(key, allow_none=False):
        v = cfg[key]
        if v is None and allow_none:
            return
        if not _is_int(v) or v < 1:
            raise TrainError(f"--{key.replace('_', '-')} must be a positive integer, got {v!r}")

    if cfg["model"] not in MODEL_DEFAULTS:
        raise TrainError(f"unknown model {cfg['model']!r}; choose one of {', '.join(MODEL_DEFAULTS)}")
    if cfg["dataset"] not in DATASETS:
        raise TrainError(f"unknown dataset {cfg['dataset']!r}; choose one of {', '.join(DATASETS)}")
    for key in ("epochs", "batch_size", "latent_dim", "sample_size", "log_every"):
        positive_int(key)
    positive_int("limit", allow_none=True)
    positive_int("hidden_dim")
    lr = cfg["lr"]
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise TrainError(f"--lr must be a positive number, got {lr!r}")
    for key in ("beta", "weight_decay"):
        v = cfg[key]
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise TrainError(f"--{key.replace('_', '-')} must be a non-negative number, got {v!r}")
    if not _is_int(cfg["seed"]) or cfg["seed"] < 0:
        raise TrainError(f"--seed must be a non-negative integer, got {cfg['seed']!r}")
    if cfg["dtype"] not in DTYPES:
        raise TrainError(f"--dtype must be one of {', '.join(DTYPES)}, got {cfg['dtype']!r}")
    if cfg["backend"] not in ("auto", "numpy", "cupy"):
        raise TrainError(f"unknown backend {cfg['backend']!r}; choose one of auto, numpy, cupy")


def layout(cfg):
    """How the model wants its images: (pad, flatten, drop_last)."""
    if cfg["model"] == "conv":
        return 2, False, True      # 28x28 zero-padded to 32x32, NCHW, full batches only
    return 0, True, False          # flat 784-vectors, last partial batch kept


def resolve_backend(name, log=None):
    """The array module for `name`; for 'auto', say which one was picked and why."""
    xp = get_backend(name)
    if name == "auto" and log is not None:
        if backend_name(xp) == "cupy":
            log("minivae: backend auto -> cupy (a usable GPU was found)")
        else:
            log(f"minivae: backend auto -> numpy (no usable GPU: {cupy_status()[1]})")
    return xp


def build_model(cfg, xp):
    from minivae.models import ConvVAE, MLPVAE

    dtype = np.dtype(cfg["dtype"]).type
    if cfg["model"] == "mlp":
        return MLPVAE(input_dim=28 * 28, hidden_dim=cfg["hidden_dim"], latent_dim=cfg["latent_dim"],
                      seed=cfg["seed"], dtype=dtype, backend=backend_name(xp))
    return ConvVAE(latent_dim=cfg["latent_dim"], hidden_dim=cfg["hidden_dim"], seed=cfg["seed"],
                   dtype=dtype, backend=backend_name(xp))


def stream_rng(seed, stream, *more):
    """A generator independent of the training streams, fixed by (seed, stream, *more)."""
    return np.random.default_rng([seed, stream, *more])


# --------------------------------------------------------------------------------------------
# Small numerical helpers (host or device, via xp)
# --------------------------------------------------------------------------------------------

def sigmoid(xp, a):
    # 0.5 * (1 + tanh(a / 2)) never overflows, for either sign of a.
    return 0.5 * (1.0 + xp.tanh(0.5 * a))


def log_bernoulli(xp, logits, x):
    """log p(x | logits) summed over pixels, per sample: -(max(l, 0) - l x + log(1 + e^-|l|))."""
    bce = xp.maximum(logits, 0) - logits * x + xp.log1p(xp.exp(-xp.abs(logits)))
    return -bce.reshape(len(bce), -1).sum(axis=1)


def noise(rng, shape, xp, dtype):
    """Standard-normal noise drawn on the host and copied to the device."""
    return to_device(rng.standard_normal(shape).astype(dtype), xp)


def reconstruct(model, x, eps):
    """Decode z = mu + eps * sigma for inputs x (one sampled z per input, as the seeds do);
    returns pixel probabilities on the host."""
    xp = model.xp
    mu, log_var = model.encode(x)
    z = mu + eps * xp.exp(0.5 * log_var)
    return to_host(sigmoid(xp, model.decode(z)))


def decode_probs(model, z):
    return to_host(sigmoid(model.xp, model.decode(z)))


def params_finite(model):
    xp = model.xp
    return all(bool(xp.isfinite(p).all()) for p in model.params.values())


def test_neg_elbo(model, images, cfg, epoch, batch_size=EVAL_BATCH):
    """Negative ELBO (recon + KL, no beta, no weight penalty) per test image, one sampled z each,
    the noise drawn from a stream of its own (seed, STREAM_TEST, epoch)."""
    pad, flatten, _ = layout(cfg)
    rng = stream_rng(cfg["seed"], STREAM_TEST, epoch)
    total, n = 0.0, 0
    for x, _ in data.batches(images, None, batch_size=batch_size, xp=model.xp, dtype=model.dtype,
                             rng=make_rng(0), shuffle=False, drop_last=False, pad=pad,
                             flatten=flatten):
        eps = noise(rng, (len(x), cfg["latent_dim"]), model.xp, model.dtype)
        t = model.loss(x, noise=eps, beta=1.0, weight_decay=0.0)
        total += (t.recon + t.kl) * len(x)
        n += len(x)
    return total / n


# --------------------------------------------------------------------------------------------
# Files: atomic writes, metrics, checkpoints
# --------------------------------------------------------------------------------------------

def _tmp(path):
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_text_atomic(path, text):
    tmp = _tmp(path)
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_metrics(path, rows):
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(METRIC_FIELDS)
    for r in rows:
        # repr() of a float round-trips exactly, so a resumed run's CSV can be compared bit for bit.
        w.writerow([repr(r[k]) if isinstance(r[k], float) else r[k] for k in METRIC_FIELDS])
    write_text_atomic(path, buf.getvalue())


def checkpoint_path(out, epoch):
    return Path(out) / "checkpoints" / f"model-{epoch}.npz"


def list_checkpoints(out):
    """[(epoch, path)] of the checkpoint files under out/checkpoints, oldest first."""
    folder = Path(out) / "checkpoints"
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = re.fullmatch(r"model-(\d+)\.npz", p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _json_array(obj):
    return np.array(json.dumps(obj))


def save_checkpoint(out, epoch, model, opt, data_rng, cfg, history):
    """Write checkpoints/model-<epoch>.npz atomically (only plain arrays and JSON strings)."""
    arrays = {"format": np.array(CHECKPOINT_FORMAT), "epoch": np.array(epoch),
              "config": _json_array(cfg), "metrics": _json_array(history),
              "rng/model": _json_array(model.rng.bit_generator.state),
              "rng/data": _json_array(data_rng.bit_generator.state)}
    for name, p in model.params.items():
        arrays[f"param/{name}"] = to_host(p)
    for key, v in opt.state_dict().items():
        arrays[f"optim/{key}"] = np.asarray(to_host(v)) if hasattr(v, "shape") else np.array(v)
    path = checkpoint_path(out, epoch)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


class Checkpoint:
    """The contents of one checkpoint file, read with allow_pickle=False."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            with np.load(self.path, allow_pickle=False) as z:
                files = {k: z[k] for k in z.files}
            if str(files["format"]) != CHECKPOINT_FORMAT:
                raise ValueError(f"unknown format {str(files['format'])!r}")
            self.epoch = int(files["epoch"])
            self.config = json.loads(str(files["config"]))
            self.metrics = json.loads(str(files["metrics"]))
            self.rng_model = json.loads(str(files["rng/model"]))
            self.rng_data = json.loads(str(files["rng/data"]))
        except FileNotFoundError:
            raise TrainError(f"checkpoint {self.path} does not exist") from None
        except Exception as e:  # zip, npy, JSON or key errors: all mean "not a usable checkpoint"
            raise TrainError(f"cannot read checkpoint {self.path}: {_describe(e)}") from None
        self.params = {k[len("param/"):]: v for k, v in files.items() if k.startswith("param/")}
        self.optim = {k[len("optim/"):]: v for k, v in files.items() if k.startswith("optim/")}

    def restore(self, model, opt=None, data_rng=None):
        """Load parameters (and optimizer / RNG states) into freshly built objects."""
        xp = model.xp
        if list(self.params) != list(model.params.keys()):
            raise TrainError(f"checkpoint {self.path} does not match the model: it holds "
                             f"{len(self.params)} parameters, the model has {len(model.params)}")
        for name, p in model.params.items():
            saved = self.params[name]
            if saved.shape != p.shape:
                raise TrainError(f"checkpoint {self.path}: parameter {name} has shape "
                                 f"{saved.shape}, the model expects {p.shape}")
            p[...] = to_device(saved.astype(p.dtype), xp)
        model.rng.bit_generator.state = self.rng_model
        if opt is not None:
            state = {k: (v.item() if v.ndim == 0 else to_device(v, xp)) for k, v in self.optim.items()}
            try:
                opt.load_state_dict(state)
            except (KeyError, ValueError) as e:
                raise TrainError(f"checkpoint {self.path}: optimizer state unusable: {_describe(e)}")
        if data_rng is not None:
            data_rng.bit_generator.state = self.rng_data


def _describe(e):
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def latest_checkpoint(out, warn=None):
    """The newest checkpoint in `out` that reads back completely, or None."""
    for epoch, path in reversed(list_checkpoints(out)):
        try:
            return Checkpoint(path)
        except TrainError as e:
            if warn:
                warn(f"minivae: warning: skipping {path}: {e}")
    return None


def prepare_out(out):
    """Create the run folder (and checkpoints/) and make sure files can be written there."""
    out = Path(out)
    try:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise TrainError(f"cannot write to output folder {out}: {e.strerror or _describe(e)}") \
            from None
    return out


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

def _say(msg):
    print(msg, flush=True)


def _warn(msg):
    print(msg, file=sys.stderr, flush=True)


def load_split(cfg, split, limit=None, progress=True):
    """A split of the run's dataset; with cfg["download"] False, the cached files are used as
    they are (no download, no checksum: how tests feed in synthetic IDX files). The run's
    --mirror sources are tried in front of the default ones."""
    return data.load(cfg["dataset"], split, data_dir=cfg.get("data_dir"),
                     mirrors=data.mirrors(cfg["dataset"], extra=cfg.get("mirrors")), limit=limit,
                     download=cfg.get("download", True), progress=progress)


def train(cfg, *, resume=False, progress=True, log=_say, warn=_warn, callback=None):
    """Train as `cfg` says (see make_config), writing the run folder; returns the metrics rows.

    resume:   continue from the newest complete checkpoint in cfg["out"] (start afresh if none).
    callback: called as callback(epoch, step, terms) after every optimizer step (tests use it to
              interrupt a run part-way through an epoch).
    """
    cfg = dict(cfg)
    check_config(cfg)
    out = Path(cfg["out"])
    xp = resolve_backend(cfg["backend"], log=warn)
    if cfg["tensorboard"]:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise TrainError("--tensorboard needs the tensorboardX package: "
                             "pip install 'minivae[tensorboard]' (or pip install tensorboardX)") \
                from None
    if out.exists() and not out.is_dir():
        raise TrainError(f"cannot write to output folder {out}: it exists and is not a folder")

    ckpt = None
    if resume:
        ckpt = latest_checkpoint(out, warn=warn) if out.is_dir() else None
        if ckpt is None:
            log(f"minivae: no complete checkpoint in {out}; starting from epoch 1")
        else:
            saved = ckpt.config
            for key in FIXED_ON_RESUME:
                if saved.get(key) != cfg.get(key):
                    raise TrainError(f"cannot resume {out}: it was trained with {key}="
                                     f"{saved.get(key)!r}, now {key}={cfg.get(key)!r}")
    elif list_checkpoints(out):
        raise TrainError(f"{out} already holds a run (checkpoints/model-*.npz); pass --resume to "
                         f"continue it, or choose another --out")
    prepare_out(out)
    if cfg["data_dir"] is not None:
        cfg["data_dir"] = str(Path(cfg["data_dir"]).resolve())

    train_x, _ = load_split(cfg, "train", cfg["limit"], progress)
    test_x, _ = load_split(cfg, "test", cfg["limit"], progress)
    pad, flatten, drop_last = layout(cfg)
    steps_per_epoch = data.num_batches(len(train_x), cfg["batch_size"], drop_last)
    if steps_per_epoch == 0:
        raise TrainError(f"{len(train_x)} training images make no full batch of {cfg['batch_size']}"
                         f" (the {cfg['model']} model uses full batches only); lower --batch-size "
                         f"or raise --limit")

    model = build_model(cfg, xp)
    from minivae.optim import Adam
    opt = Adam(model, lr=cfg["lr"])
    data_rng = stream_rng(cfg["seed"], STREAM_DATA)
    history, first_epoch = [], 1
    if ckpt is not None:
        ckpt.restore(model, opt, data_rng)
        history = [r for r in ckpt.metrics if r["epoch"] <= ckpt.epoch]
        first_epoch = ckpt.epoch + 1
        if ckpt.epoch >= cfg["epochs"]:
            log(f"minivae: {out} is already trained to epoch {ckpt.epoch}; raise --epochs to "
                f"train further")
        else:
            log(f"minivae: resuming {out} from {ckpt.path.name} (epoch {ckpt.epoch} of "
                f"{cfg['epochs']})")

    write_text_atomic(out / "config.json", json.dumps(cfg, indent=2) + "\n")
    write_metrics(out / "metrics.csv", history)   # drops rows of epochs lost to an interruption
    if history:
        plots.loss_curves(out / "loss.png", history)

    # The fixed grid: sample_size^2 training images, their reconstruction noise, prior draws.
    s = cfg["sample_size"]
    grid_idx = stream_rng(cfg["seed"], STREAM_GRID).permutation(len(train_x))[:s * s]
    grid_x = data.to_float(train_x[grid_idx], xp, model.dtype, pad=pad, flatten=flatten)
    grid_eps = noise(stream_rng(cfg["seed"], STREAM_RECON), (len(grid_idx), cfg["latent_dim"]),
                     xp, model.dtype)
    prior_z = noise(stream_rng(cfg["seed"], STREAM_SAMPLES), (s * s, cfg["latent_dim"]),
                    xp, model.dtype)
    plots.save_grid(out / "original.png", to_host(grid_x), ncol=s)

    writer = SummaryWriter(logdir=str(out / "tensorboard")) if cfg["tensorboard"] else None
    try:
        for epoch in range(first_epoch, cfg["epochs"] + 1):
            row = _train_epoch(model, opt, train_x, data_rng, cfg, epoch, steps_per_epoch,
                               progress, writer, callback, ckpt_epoch=epoch - 1)
            if not params_finite(model):
                raise NonFiniteLossError(_nonfinite_msg(epoch, steps_per_epoch, "parameters",
                                                        epoch - 1, out))
            with np.errstate(all="ignore"):
                row["test_neg_elbo"] = test_neg_elbo(model, test_x, cfg, epoch)
            if not math.isfinite(row["test_neg_elbo"]):
                raise NonFiniteLossError(_nonfinite_msg(epoch, steps_per_epoch, "test -ELBO",
                                                        epoch - 1, out))
            plots.save_grid(out / f"epoch_{epoch}.png", reconstruct(model, grid_x, grid_eps), ncol=s)
            plots.save_grid(out / f"samples_{epoch}.png", decode_probs(model, prior_z), ncol=s)
            history.append(row)
            save_checkpoint(out, epoch, model, opt, data_rng, cfg, history)
            write_metrics(out / "metrics.csv", history)
            plots.loss_curves(out / "loss.png", history)
            if writer is not None:
                writer.add_scalar("test/neg_elbo", row["test_neg_elbo"], epoch * steps_per_epoch)
                writer.flush()
            log(f"epoch {epoch}/{cfg['epochs']}: train loss {row['train_loss']:.4f} (recon "
                f"{row['train_recon']:.4f}, kl {row['train_kl']:.4f}, reg {row['train_reg']:.4f}), "
                f"test -ELBO {row['test_neg_elbo']:.4f}, {row['seconds']:.1f}s")
    finally:
        if writer is not None:
            writer.close()
    return history


def _nonfinite_msg(epoch, step, what, last_good, out):
    kept = (f"the last good checkpoint is {checkpoint_path(out, last_good)}" if last_good >= 1
            else "no checkpoint was written")
    return (f"non-finite {what} at epoch {epoch}, step {step}; training stopped ({kept}); "
            f"try a lower --lr")


def _train_epoch(model, opt, train_x, data_rng, cfg, epoch, steps, progress, writer, callback,
                 ckpt_epoch):
    from tqdm import tqdm

    pad, flatten, drop_last = layout(cfg)
    sums = {"loss": 0.0, "recon": 0.0, "kl": 0.0, "reg": 0.0}
    seen = 0
    bar = tqdm(total=steps, desc=f"epoch {epoch}/{cfg['epochs']}", unit="batch",
               disable=not progress, file=sys.stderr, dynamic_ncols=True, leave=True)
    t0 = time.perf_counter()
    try:
        batches = data.batches(train_x, None, batch_size=cfg["batch_size"], xp=model.xp,
                               dtype=model.dtype, rng=data_rng, shuffle=True, drop_last=drop_last,
                               pad=pad, flatten=flatten)
        for step, (x, _) in enumerate(batches, 1):
            with np.errstate(all="ignore"):   # overflow is caught below, as a non-finite loss
                terms = model.loss_and_grads(x, beta=cfg["beta"], weight_decay=cfg["weight_decay"])
            values = {k: float(getattr(terms, k)) for k in sums}
            if not all(math.isfinite(v) for v in values.values()):
                raise NonFiniteLossError(_nonfinite_msg(epoch, step, "loss", ckpt_epoch,
                                                        cfg["out"]))
            with np.errstate(all="ignore"):
                opt.step()
            n = len(x)
            seen += n
            for k, v in values.items():
                sums[k] += v * n
            bar.update(1)
            bar.set_postfix(loss=f"{sums['loss'] / seen:.3f}", refresh=False)
            global_step = (epoch - 1) * steps + step
            if writer is not None and (global_step - 1) % cfg["log_every"] == 0:
                for k, v in values.items():
                    writer.add_scalar(f"train/{k}", v, global_step)
            if callback is not None:
                callback(epoch, step, terms)
    finally:
        bar.close()
    row = {"epoch": epoch}
    row.update({f"train_{k}": v / seen for k, v in sums.items()})
    row["seconds"] = time.perf_counter() - t0
    return row


# --------------------------------------------------------------------------------------------
# Loading a finished (or interrupted) run: evaluate and plot
# --------------------------------------------------------------------------------------------

def load_run(run_dir, epoch=None, backend="auto", log=None):
    """(model, cfg, checkpoint) for run_dir's checkpoint `epoch` (default: the newest)."""
    run = Path(run_dir)
    if not run.exists():
        raise TrainError(f"run folder {run} does not exist")
    if not run.is_dir():
        raise TrainError(f"{run} is not a run folder (it is a file)")
    if epoch is not None:
        if not _is_int(epoch) or epoch < 1:
            raise TrainError(f"--epoch must be a positive integer, got {epoch!r}")
        path = checkpoint_path(run, epoch)
        if not path.is_file():
            have = ", ".join(str(e) for e, _ in list_checkpoints(run)) or "none"
            raise TrainError(f"{run} has no checkpoint for epoch {epoch} (epochs saved: {have})")
    else:
        found = list_checkpoints(run)
        if not found:
            raise TrainError(f"{run} holds no checkpoints (checkpoints/model-<N>.npz); is it a "
                             f"run folder written by `minivae train`?")
        path = found[-1][1]
    ckpt = Checkpoint(path)
    cfg = ckpt.config
    try:
        cfg = make_config(**{k: v for k, v in cfg.items()})
    except (TrainError, TypeError) as e:
        raise TrainError(f"checkpoint {path} holds an unusable config: {e}") from None
    xp = resolve_backend(backend, log=log)
    model = build_model(cfg, xp)
    ckpt.restore(model)
    return model, cfg, ckpt


def evaluate(model, images, cfg, iw_samples=100, batch_size=None, seed_stream=STREAM_EVAL,
             max_rows=1024, progress=False):
    """Negative ELBO and importance-weighted -log p(x) per image, in nats, on model.xp.

    For each image x we draw K latents z_k = mu + sigma * eps_k from q(z|x) and form the log
    importance weights  log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x). Then

        ELBO estimate  = mean_k log w_k
        IWAE estimate  = log (1/K) sum_k w_k = logsumexp_k(log w_k) - log K  >=  mean_k log w_k

    (Jensen; the same samples feed both, so the inequality holds exactly, image by image).
    The IWAE bound rises towards log p(x) as K grows (Burda et al., 2016).
    """
    xp = model.xp
    K = int(iw_samples)
    if K < 1:
        raise TrainError(f"--iw-samples must be a positive integer, got {iw_samples!r}")
    pad, flatten, _ = layout(cfg)
    d = cfg["latent_dim"]
    batch_size = batch_size or max(1, min(EVAL_BATCH, max_rows))
    rng = stream_rng(cfg["seed"], seed_stream, K)
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    elbo_sum = iwae_sum = 0.0
    n = 0
    from tqdm import tqdm

    for x, _ in tqdm(data.batches(images, None, batch_size=batch_size, xp=xp, dtype=model.dtype,
                                  rng=make_rng(0), shuffle=False, drop_last=False, pad=pad,
                                  flatten=flatten),
                     total=data.num_batches(len(images), batch_size, False), unit="batch",
                     desc=f"evaluate (K={K})", disable=not progress, file=sys.stderr, leave=False):
        B = len(x)
        mu, log_var = model.encode(x)
        sigma = xp.exp(0.5 * log_var)
        log_w = np.empty((B, K))
        chunk = max(1, max_rows // B)
        for k0 in range(0, K, chunk):
            kc = min(chunk, K - k0)
            eps = noise(rng, (kc, B, d), xp, model.dtype)
            z = mu[None] + eps * sigma[None]                                  # (kc, B, d)
            logits = model.decode(z.reshape(kc * B, d))
            xr = xp.broadcast_to(x[None], (kc,) + x.shape).reshape((kc * B,) + x.shape[1:])
            log_px = log_bernoulli(xp, logits.astype(xp.float64), xr).reshape(kc, B)
            log_pz = -0.5 * (z.astype(xp.float64) ** 2).sum(axis=2) - d * half_log_2pi
            log_qz = (-0.5 * (eps.astype(xp.float64) ** 2).sum(axis=2)
                      - 0.5 * log_var.astype(xp.float64).sum(axis=1)[None] - d * half_log_2pi)
            log_w[:, k0:k0 + kc] = to_host(log_px + log_pz - log_qz).T
        m = log_w.max(axis=1, keepdims=True)
        iwae = m[:, 0] + np.log(np.exp(log_w - m).sum(axis=1)) - math.log(K)
        elbo = log_w.mean(axis=1)
        elbo_sum += float(elbo.sum())
        iwae_sum += float(iwae.sum())
        n += B
    return {"images": n, "iw_samples": K, "neg_elbo": -elbo_sum / n, "neg_log_px": -iwae_sum / n}


def data_overrides(cfg, data_dir=None, mirrors=None, download=None):
    """cfg with the data location replaced where the caller gave one (evaluate / plot flags)."""
    if data_dir is not None:
        cfg["data_dir"] = data_dir
    if mirrors:
        cfg["mirrors"] = list(mirrors)
    if download is not None:
        cfg["download"] = download
    return cfg


def evaluate_run(run_dir, epoch=None, iw_samples=100, backend="auto", limit=None, data_dir=None,
                 mirrors=None, download=None, log=None, progress=False):
    model, cfg, ckpt = load_run(run_dir, epoch, backend, log=log)
    data_overrides(cfg, data_dir, mirrors, download)
    test_x, _ = load_split(cfg, "test", limit if limit is not None else cfg["limit"])
    with np.errstate(all="ignore"):
        result = evaluate(model, test_x, cfg, iw_samples=iw_samples, progress=progress)
    result.update(epoch=ckpt.epoch, dataset=cfg["dataset"], model=cfg["model"],
                  backend=backend_name(model.xp))
    for key in ("neg_elbo", "neg_log_px"):
        if not math.isfinite(result[key]):
            raise TrainError(f"evaluation of {ckpt.path} gave a non-finite {key}")
    return result
