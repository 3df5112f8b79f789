"""The training loop: epochs of Adam steps, the pictures and metrics after each, exact resume.

A run lives in one folder (``--out``)::

    config.json              the settings the run was started with (a longer resumed run
                             raises its epochs)
    original.png             the fixed sample_size x sample_size grid of training inputs
    epoch_<N>.png            their reconstructions after epoch N (--recon-from: decoded from a
                             sampled z, or from the posterior mean)
    samples_<N>.png          decodes of a fixed set of draws from the prior N(0, I)
    metrics.csv              one row per epoch (see checkpoint.metric_fields)
    loss.png                 train loss and test -ELBO per epoch
    checkpoints/model-<N>.npz  everything needed to continue: parameters, Adam state, RNG states,
                             epoch, steps taken (the KL warm-up's position), config and the
                             metrics so far

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
half-written file under a real name (minivae.files). The checkpoint format is in
minivae.checkpoint, the settings in minivae.config, the test ELBO in minivae.evaluate.
"""

import math
import sys
import time
from pathlib import Path

import numpy as np

from minivae import data, plots
from minivae.backend import to_host
from minivae.checkpoint import (Checkpoint, checkpoint_path, list_checkpoints, prepare_out,
                                prune_checkpoints, read_config, remove_created,
                                remove_stale_temporaries, save_checkpoint, write_config,
                                write_metrics)
from minivae.config import (FIXED_ON_RESUME, LATER_SETTINGS, STREAM_DATA, STREAM_GRID,
                            STREAM_RECON, STREAM_SAMPLES, TrainError, check_config, flag,
                            kl_weight, layout, load_split, model_for, resolve_backend, stream_rng)
from minivae.evaluate import decode_probs, latent_metrics, noise, reconstruct, test_neg_elbo
from minivae.optim import Adam
from minivae.progress import bar as progress_bar, say as _say


class NonFiniteLossError(TrainError):
    """Training produced a NaN or infinity; the message names the epoch and step."""


def params_finite(model):
    """True when every parameter of model is finite."""
    xp = model.xp
    return all(bool(xp.isfinite(p).all()) for p in model.params.values())


def _warn(msg):
    print(msg, file=sys.stderr, flush=True)


def train(cfg, *, resume=False, progress=True, log=_say, warn=_warn, callback=None,
          verbose=False):
    """Train as `cfg` says (see make_config), writing the run folder; returns the metrics rows.

    resume:   continue from the newest checkpoint in cfg["out"] that restores cleanly (damaged
              newer ones are skipped with a warning); start afresh if there is none.
    callback: called as callback(epoch, step, terms) after every optimizer step (tests use it to
              interrupt a run part-way through an epoch).
    verbose:  say why --backend auto picked the backend it did.
    """
    cfg = dict(cfg)
    check_config(cfg)
    out = Path(cfg["out"])
    xp = resolve_backend(cfg["backend"], log=warn, verbose=verbose)
    if cfg["tensorboard"]:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise TrainError("--tensorboard needs the tensorboardX package: "
                             "pip install 'minivae[tensorboard]' (or pip install tensorboardX)") \
                from None
    if out.exists() and not out.is_dir():
        raise TrainError(f"cannot write to output folder {out}: it exists and is not a folder")
    if not resume and list_checkpoints(out):
        raise TrainError(f"{out} already holds a run (checkpoints/model-*.npz); pass --resume to "
                         f"continue it, or choose another --out")
    existed = out.is_dir()
    if existed:
        remove_stale_temporaries(out, warn)

    created = prepare_out(out)
    try:     # a run that cannot start leaves no empty run folder behind
        if cfg["data_dir"] is not None:
            cfg["data_dir"] = str(Path(cfg["data_dir"]).resolve())
        train_x, _ = load_split(cfg, "train", cfg["limit"], progress)
        test_x, _ = load_split(cfg, "test", cfg["limit"], progress)
        pad, flatten, drop_last = layout(cfg)
        steps_per_epoch = data.num_batches(len(train_x), cfg["batch_size"], drop_last)
        if steps_per_epoch == 0:
            raise TrainError(f"{len(train_x)} training images make no full batch of "
                             f"{cfg['batch_size']} (the {cfg['model']} model uses full batches "
                             f"only); lower --batch-size or raise --limit")
        ckpt, model, opt, data_rng = _restore_newest(out, cfg, xp, warn) if resume else \
            (None, *_fresh(cfg, xp))
    except BaseException:
        remove_created(created)
        raise

    history, first_epoch, step = [], 1, 0     # step: training steps taken (the KL warm-up's)
    if ckpt is not None:
        history = [r for r in ckpt.metrics if r["epoch"] <= ckpt.epoch]
        first_epoch = ckpt.epoch + 1
        step = ckpt.step if ckpt.step is not None else ckpt.epoch * steps_per_epoch
        if ckpt.epoch >= cfg["epochs"]:
            log(f"minivae: {out} is already trained to epoch {ckpt.epoch}; raise --epochs to "
                f"train further")
        else:
            log(f"minivae: resuming {out} from {ckpt.path.name} (epoch {ckpt.epoch} of "
                f"{cfg['epochs']})")
        # config.json keeps the settings the run was trained with; only a longer run raises
        # its --epochs.
        saved = read_config(out) or ckpt.config
        if cfg["epochs"] > saved.get("epochs", 0):
            write_config(out, dict(saved, epochs=cfg["epochs"]))
    else:
        if resume and existed:
            warn(f"minivae: no usable checkpoint in {out}; starting from epoch 1")
        write_config(out, cfg)
    write_metrics(out / "metrics.csv", history, cfg["latent_dim"])   # drops lost epochs' rows
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
                               progress, writer, callback, ckpt_epoch=epoch - 1, first_step=step)
            step += steps_per_epoch
            if not params_finite(model):
                raise NonFiniteLossError(_nonfinite_msg(epoch, steps_per_epoch, "parameters",
                                                        epoch - 1, out))
            with np.errstate(all="ignore"):
                row["test_neg_elbo"] = test_neg_elbo(model, test_x, cfg, epoch)
                row.update(latent_metrics(model, test_x, cfg))
            if not math.isfinite(row["test_neg_elbo"]):
                raise NonFiniteLossError(_nonfinite_msg(epoch, steps_per_epoch, "test -ELBO",
                                                        epoch - 1, out))
            history.append(row)
            # The checkpoint first: the run folder never shows an epoch it cannot resume from.
            save_checkpoint(out, epoch, model, opt, data_rng, cfg, history, step)
            prune_checkpoints(out, cfg["keep_checkpoints"])
            recon_eps = grid_eps if cfg["recon_from"] == "sample" else None   # None: the mean
            plots.save_grid(out / f"epoch_{epoch}.png", reconstruct(model, grid_x, recon_eps),
                            ncol=s)
            plots.save_grid(out / f"samples_{epoch}.png", decode_probs(model, prior_z), ncol=s)
            write_metrics(out / "metrics.csv", history, cfg["latent_dim"])
            plots.loss_curves(out / "loss.png", history)
            if writer is not None:
                writer.add_scalar("test/neg_elbo", row["test_neg_elbo"], epoch * steps_per_epoch)
                writer.flush()
            log(f"epoch {epoch}/{cfg['epochs']}: train loss {row['train_loss']:.4f} (recon "
                f"{row['train_recon']:.4f}, kl {row['train_kl']:.4f}, reg {row['train_reg']:.4f}), "
                f"test -ELBO {row['test_neg_elbo']:.4f}, active units {row['active_units']}/"
                f"{cfg['latent_dim']}, {row['seconds']:.1f}s")
    finally:
        if writer is not None:
            writer.close()
    return history


def _fresh(cfg, xp):
    """(model, optimizer, data generator) as a new run starts them."""
    model = model_for(cfg, xp)
    return model, Adam(model, lr=cfg["lr"]), stream_rng(cfg["seed"], STREAM_DATA)


def _restore_newest(out, cfg, xp, warn):
    """(checkpoint, model, optimizer, data generator) restored from the newest checkpoint in
    `out` that reads back and fits the model; damaged newer ones are skipped with a warning.
    The checkpoint is None (and the objects fresh) when there is none. A checkpoint trained
    with other settings is an error, not damage."""
    for epoch, path in reversed(list_checkpoints(out)):
        try:
            ckpt = Checkpoint(path)
            saved = ckpt.config
            for key in FIXED_ON_RESUME:
                was = saved.get(key, LATER_SETTINGS.get(key))   # older files lack later ones
                if was != cfg.get(key):
                    raise ResumeMismatch(f"cannot resume {out}: it was trained with {flag(key)} "
                                         f"{was}, now {flag(key)} {cfg.get(key)}")
            model, opt, data_rng = _fresh(cfg, xp)
            ckpt.restore(model, opt, data_rng)
            return ckpt, model, opt, data_rng
        except ResumeMismatch:
            raise
        except TrainError as e:
            warn(f"minivae: warning: {e}; trying the checkpoint before it")
    return (None, *_fresh(cfg, xp))


class ResumeMismatch(TrainError):
    """--resume with settings that differ from the run's: the message names the flag."""


def _nonfinite_msg(epoch, step, what, last_good, out):
    kept = (f"the last good checkpoint is {checkpoint_path(out, last_good)}" if last_good >= 1
            else "no checkpoint was written")
    return (f"non-finite {what} at epoch {epoch}, step {step}; training stopped ({kept}); "
            f"try a lower --lr")


def _train_epoch(model, opt, train_x, data_rng, cfg, epoch, steps, progress, writer, callback,
                 ckpt_epoch, first_step):
    pad, flatten, drop_last = layout(cfg)
    sums = {"loss": 0.0, "recon": 0.0, "kl": 0.0, "reg": 0.0}
    seen = 0
    bar = progress_bar(progress, total=steps, desc=f"epoch {epoch}/{cfg['epochs']}", unit="batch",
                       leave=True)
    t0 = time.perf_counter()
    try:
        batches = data.batches(train_x, None, batch_size=cfg["batch_size"], xp=model.xp,
                               dtype=model.dtype, rng=data_rng, shuffle=True, drop_last=drop_last,
                               pad=pad, flatten=flatten)
        for step, (x, _) in enumerate(batches, 1):
            beta = kl_weight(cfg, first_step + step - 1)
            with np.errstate(all="ignore"):   # overflow is caught below, as a non-finite loss
                terms = model.loss_and_grads(x, beta=beta, weight_decay=cfg["weight_decay"])
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
                writer.add_scalar("train/beta", beta, global_step)
            if callback is not None:
                callback(epoch, step, terms)
    finally:
        bar.close()
    row = {"epoch": epoch}
    row.update({f"train_{k}": v / seen for k, v in sums.items()})
    row["beta"] = beta                  # the KL weight in force at the end of the epoch
    row["seconds"] = time.perf_counter() - t0
    return row
