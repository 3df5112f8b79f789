"""The training loop: epochs of Adam steps, the pictures and metrics after each, exact resume.

The run folder it writes is described in minivae.run.

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

import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from minivae import data, plots, signals, threads
from minivae.backend import backend_name, to_host
from minivae.checkpoint import save_checkpoint
from minivae.config import RECORDED_ON_RESUME, check_config
from minivae.errors import NonFiniteLossError, TrainError
from minivae.evaluate import decode_probs, latent_metrics, noise, reconstruct, test_neg_elbo
from minivae.gpu.models import terms_from_sums
from minivae.gpu.replay import GraphUnavailable, ReplayedStep, why_not
from minivae.progress import bar as progress_bar, say as _say
from minivae.run import (LOSS, ORIGINAL, STREAM_GRID, STREAM_RECON, STREAM_SAMPLES,
                         RunFolder, choose_backend, fresh_state, stream_rng)
from minivae.tiers import tier_of

READ_EVERY_S = 0.25         # a replayed epoch reads its loss sums this often (and at its end)


def kl_weight(cfg, step):
    """The KL weight of training step `step` (0 for the first): with --kl-warmup W > 0 it rises
    linearly from 0 to --beta over the first W steps (beta * step / W), then stays at --beta."""
    if cfg.kl_warmup and step < cfg.kl_warmup:
        return cfg.beta * step / cfg.kl_warmup
    return cfg.beta


def params_finite(model):
    """True when every parameter of model is finite."""
    xp = model.xp
    return all(bool(xp.isfinite(p).all()) for p in model.params.values())


def _warn(msg):
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Run:
    """What a training run holds while it runs."""
    cfg: object                 # config.Config
    folder: RunFolder
    model: object
    opt: object
    data_rng: np.random.Generator
    train_x: np.ndarray
    test_x: np.ndarray
    steps_per_epoch: int
    step: int = 0               # training steps taken (the KL warm-up's position)
    progress: bool = True
    writer: object = None       # a tensorboardX SummaryWriter, or None
    callback: Optional[Callable] = None
    replay: object = None       # a gpu.replay.ReplayedStep for the full batches, or None
    lock: object = None         # the run folder's lock, held while training (RunFolder.prepare)


def train(cfg, *, resume=False, progress=True, log=_say, warn=_warn, callback=None,
          verbose=False):
    """Train as `cfg` (a config.Config) says, writing the run folder; returns the metrics rows.

    resume:   continue from the newest checkpoint in cfg.out that restores cleanly (damaged
              newer ones are skipped with a warning); start afresh if there is none.
    callback: called as callback(epoch, step, terms) after every optimizer step (tests use it to
              interrupt a run part-way through an epoch).
    verbose:  say why --backend auto picked the backend it did.
    """
    check_config(cfg)
    n, why = threads.apply(cfg.threads)
    cfg = dataclasses.replace(cfg, threads=n)     # saved with the run: --resume uses it again
    log(f"minivae: {cfg.model} VAE on {cfg.dataset} into {cfg.out}: {n} BLAS "
        f"thread{'s' * (n != 1)} ({why})")
    if cfg.data_dir is not None:          # config.json names the folder wherever it is read
        cfg = dataclasses.replace(cfg, data_dir=str(Path(cfg.data_dir).resolve()))
    existed = Path(cfg.out).is_dir()
    run, ckpt = _start(cfg, resume, progress, warn, verbose)
    try:
        return _train_run(run, ckpt, resume and existed, callback, log, warn)
    finally:
        run.folder.release(run.lock)


def _train_run(run, ckpt, resumed_folder, callback, log, warn):
    """train() once the run has started: its epochs, and what each writes."""
    cfg = run.cfg
    run.callback = callback
    run.replay = _replayed_step(run, log, warn)
    history = _history(run, ckpt, resumed_folder, log, warn)
    grid = _fixed_grid(run)
    run.writer = _tensorboard_writer(cfg, run.folder)
    first_epoch = ckpt.epoch + 1 if ckpt is not None else 1
    try:
        for epoch in range(first_epoch, cfg.epochs + 1):
            row = _train_epoch(run, epoch)
            _evaluate_epoch(run, epoch, row)
            history.append(row)
            _save_epoch(run, epoch, history, grid)
            warming = (f", KL weight β {row['beta']:.3g} (warm-up)" if row["beta"] < cfg.beta
                       else "")
            log(f"epoch {epoch}/{cfg.epochs}: train loss {row['train_loss']:.4f} (recon "
                f"{row['train_recon']:.4f}, kl {row['train_kl']:.4f}, reg {row['train_reg']:.4f})"
                f"{warming}, test -ELBO {row['test_neg_elbo']:.4f}, active units "
                f"{row['active_units']}/{cfg.latent_dim}, {row['seconds']:.1f}s")
    finally:
        if run.writer is not None:
            run.writer.close()
    return history


def _tensorboard_writer(cfg, folder):
    if not cfg.tensorboard:
        return None
    from tensorboardX import SummaryWriter     # checked importable by _start
    return SummaryWriter(logdir=str(folder.file("tensorboard")))


def _start(cfg, resume, progress, warn, verbose):
    """(Run, checkpoint or None): the folder held, the data loaded, the model and optimizer
    fresh or restored. A run that cannot start leaves no empty run folder behind."""
    xp = choose_backend(cfg.backend, log=warn, verbose=verbose)
    _check_tensorboard(cfg)
    folder, created, lock = _hold_folder(cfg, resume, warn)
    try:
        train_x, test_x, steps = _load_data(cfg, progress)
        ckpt, model, opt, data_rng = _restore_or_start(folder, cfg, xp, resume, warn)
    except BaseException:
        folder.release(lock, created)
        raise
    run = Run(cfg, folder, model, opt, data_rng, train_x, test_x, steps, progress=progress,
              lock=lock)
    return run, ckpt


def _check_tensorboard(cfg):
    if cfg.tensorboard:
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            raise TrainError("--tensorboard needs the tensorboardX package: "
                             "pip install 'minivae[tensorboard]' (or pip install tensorboardX)") \
                from None


def _hold_folder(cfg, resume, warn):
    """(RunFolder, the folders made, its lock): the run folder made and held (RunFolder.
    prepare), then checked under the lock: a fresh run never overwrites one."""
    folder = RunFolder(cfg.out)
    if folder.path.exists() and not folder.path.is_dir():
        raise TrainError(f"cannot write to output folder {folder}: it exists and is not a folder")
    created, lock = folder.prepare()               # the lock first: no window before the checks
    try:
        if not resume and folder.checkpoints():
            raise TrainError(f"{folder} already holds a run (checkpoints/model-*.npz); pass "
                             f"--resume to continue it, or choose another --out")
        folder.remove_stale_temporaries(warn)
    except BaseException:
        folder.release(lock, created)
        raise
    return folder, created, lock


def _load_data(cfg, progress):
    """(training images, test images, steps per epoch), checked against the batch size and the
    picture grids."""
    train_x, _ = data.load_for(cfg, "train", cfg.limit, progress)
    test_x, _ = data.load_for(cfg, "test", cfg.limit, progress)
    steps = data.num_batches(len(train_x), cfg.batch_size, cfg.spec.drop_last)
    if steps == 0:
        raise TrainError(f"{len(train_x)} training images make no full batch of "
                         f"{cfg.batch_size} (the {cfg.model} model uses full batches only); "
                         f"lower --batch-size or raise --limit")
    s = cfg.sample_size
    if s * s > len(train_x):
        fits = int(len(train_x) ** 0.5)
        raise TrainError(f"--sample-size {s} asks for {s}x{s} = {s * s} training images in "
                         f"its grids, but there are {len(train_x)} (--limit); lower "
                         f"--sample-size to {fits} or raise --limit")
    return train_x, test_x, steps


def _restore_or_start(folder, cfg, xp, resume, warn):
    """(checkpoint or None, model, optimizer, data generator): from the newest checkpoint that
    restores on --resume, else fresh."""
    if not resume:
        return (None, *fresh_state(cfg, xp))
    ckpt, model, opt, data_rng = folder.restore_newest(cfg, xp, warn)
    if ckpt is None and folder.checkpoints():
        raise TrainError(f"cannot resume {folder}: none of its checkpoints restores (see "
                         f"the warnings above); to train it again from epoch 1, remove "
                         f"{folder.path / 'checkpoints'} (or train into another --out)")
    return ckpt, model, opt, data_rng


def _history(run, ckpt, resumed_folder, log, warn):
    """The metrics rows of the epochs already trained (none for a fresh run); writes config.json
    and metrics.csv as they stand now. resumed_folder: --resume on a folder that existed."""
    cfg, folder = run.cfg, run.folder
    history = []
    if ckpt is not None:
        history = [r for r in ckpt.metrics if r["epoch"] <= ckpt.epoch]
        run.step = ckpt.step if ckpt.step is not None else ckpt.epoch * run.steps_per_epoch
        if ckpt.epoch >= cfg.epochs:
            log(f"minivae: {folder} is already trained to epoch {ckpt.epoch}; raise --epochs to "
                f"train further")
        else:
            log(f"minivae: resuming {folder} from {ckpt.path.name} (epoch {ckpt.epoch} of "
                f"{cfg.epochs})")
        # config.json keeps the settings the run was trained with; a resume records those it
        # goes on with (RECORDED_ON_RESUME), and a longer run raises its --epochs.
        saved = folder.read_config() or ckpt.config
        updated = dict(saved, **{k: getattr(cfg, k) for k in RECORDED_ON_RESUME})
        updated["epochs"] = max(cfg.epochs, saved.get("epochs", 0))
        if updated != saved:
            folder.write_config(updated)
    else:
        if resumed_folder:
            warn(f"minivae: no usable checkpoint in {folder}; starting from epoch 1")
        folder.write_config(cfg)
    folder.write_metrics(history, cfg.latent_dim)      # drops lost epochs' rows
    if history:
        plots.loss_curves(folder.file(LOSS), history)
    return history


@dataclass
class Grid:
    """The fixed pictures of a run: sample_size^2 training images, their reconstruction noise,
    and draws from the prior."""
    x: object
    eps: object
    prior_z: object


def _fixed_grid(run):
    cfg, model, spec = run.cfg, run.model, run.cfg.spec
    s = cfg.sample_size
    idx = stream_rng(cfg.seed, STREAM_GRID).permutation(len(run.train_x))[:s * s]
    x = data.to_float(run.train_x[idx], model.xp, model.dtype, pad=spec.pad, flatten=spec.flatten)
    eps = noise(stream_rng(cfg.seed, STREAM_RECON), (len(idx), cfg.latent_dim), model.xp,
                model.dtype)
    prior_z = noise(stream_rng(cfg.seed, STREAM_SAMPLES), (s * s, cfg.latent_dim), model.xp,
                    model.dtype)
    plots.save_grid(run.folder.file(ORIGINAL), to_host(x), ncol=s,
                    caption=f"{s * s} training images: the run's fixed grid")
    return Grid(x, eps, prior_z)


def _evaluate_epoch(run, epoch, row):
    """Check the parameters, then add the test -ELBO and the latent metrics to the epoch's row."""
    last_good = epoch - 1
    if not params_finite(run.model):
        raise NonFiniteLossError(_nonfinite_msg(run, epoch, run.steps_per_epoch, "parameters",
                                                last_good))
    with np.errstate(all="ignore"):
        row["test_neg_elbo"] = test_neg_elbo(run.model, run.test_x, run.cfg, epoch)
        row.update(latent_metrics(run.model, run.test_x, run.cfg))
    if not math.isfinite(row["test_neg_elbo"]):
        raise NonFiniteLossError(_nonfinite_msg(run, epoch, run.steps_per_epoch, "test -ELBO",
                                                last_good))


def _save_epoch(run, epoch, history, grid):
    """The checkpoint first (the run folder never shows an epoch it cannot resume from), then
    the epoch's pictures, metrics.csv and loss.png."""
    cfg, folder, model = run.cfg, run.folder, run.model
    save_checkpoint(folder.checkpoint_path(epoch), epoch, model, run.opt, run.data_rng,
                    cfg.to_dict(), history, run.step)
    folder.prune_checkpoints(cfg.keep_checkpoints)
    recon_eps = grid.eps if cfg.recon_from == "sample" else None          # None: the mean
    s = cfg.sample_size
    how = "a sampled z" if cfg.recon_from == "sample" else "the posterior mean"
    plots.save_grid(folder.epoch_picture("epoch", epoch), reconstruct(model, grid.x, recon_eps),
                    ncol=s, caption=f"epoch {epoch}: original.png reconstructed ({how})")
    plots.save_grid(folder.epoch_picture("samples", epoch), decode_probs(model, grid.prior_z),
                    ncol=s, caption=f"epoch {epoch}: decodes of {s * s} draws from the prior")
    folder.write_metrics(history, cfg.latent_dim)
    plots.loss_curves(folder.file(LOSS), history)
    if run.writer is not None:
        run.writer.add_scalar("test/neg_elbo", history[-1]["test_neg_elbo"],
                              epoch * run.steps_per_epoch)
        run.writer.flush()


def _nonfinite_msg(run, epoch, step, what, last_good):
    kept = (f"the last good checkpoint is {run.folder.checkpoint_path(last_good)}"
            if last_good >= 1 else "no checkpoint was written")
    return (f"non-finite {what} at epoch {epoch}, step {step}; training stopped ({kept}); "
            f"try a lower --lr")


class Tally:
    """An epoch's training loss terms, summed over its images as the steps come in."""

    def __init__(self, run, epoch):
        self.run, self.epoch = run, epoch
        self.sums = {"loss": 0.0, "recon": 0.0, "kl": 0.0, "reg": 0.0}
        self.seen, self.beta = 0, None
        self.bar = progress_bar(run.progress, total=run.steps_per_epoch,
                                desc=f"epoch {epoch}/{run.cfg.epochs}", unit="batch", leave=True)
        self.t0 = time.perf_counter()

    def check(self, step, terms):
        """terms' values as floats; NonFiniteLossError if one is not finite."""
        values = {k: float(getattr(terms, k)) for k in self.sums}
        if not all(math.isfinite(v) for v in values.values()):
            raise NonFiniteLossError(_nonfinite_msg(self.run, self.epoch, step, "loss",
                                                    self.epoch - 1))
        return values

    def add(self, step, terms, values, n, beta):
        """Step `step`'s loss terms (already checked), over n images, at KL weight beta."""
        run = self.run
        self.seen += n
        for k, v in values.items():
            self.sums[k] += v * n
        self.beta = beta
        self.bar.set_postfix(loss=f"{self.sums['loss'] / self.seen:.3f}", refresh=False)
        _log_step(run, (self.epoch - 1) * run.steps_per_epoch + step, values, beta)
        if run.callback is not None:
            run.callback(self.epoch, step, terms)

    def row(self):
        row = {"epoch": self.epoch}
        row.update({f"train_{k}": v / self.seen for k, v in self.sums.items()})
        row["beta"] = self.beta             # the KL weight in force at the end of the epoch
        row["seconds"] = time.perf_counter() - self.t0
        return row


def _train_epoch(run, epoch):
    """One epoch of Adam steps over a fresh permutation of the training set -> its metrics row
    (the training loss terms averaged over the images, the KL weight, the seconds)."""
    if run.replay is not None:
        return _train_epoch_replayed(run, epoch)
    cfg, model, spec = run.cfg, run.model, run.cfg.spec
    tally = Tally(run, epoch)
    try:
        batches = data.batches(run.train_x, None, batch_size=cfg.batch_size, xp=model.xp,
                               dtype=model.dtype, rng=run.data_rng, shuffle=True,
                               drop_last=spec.drop_last, pad=spec.pad, flatten=spec.flatten)
        for step, (x, _) in enumerate(batches, 1):
            signals.check()                   # a Ctrl-C or SIGTERM that something swallowed
            _eager_step(run, tally, step, x, None)
    finally:
        tally.bar.close()
    return tally.row()


def _eager_step(run, tally, step, x, eps):
    """One training step as the engine runs it (eps: its noise, or None to draw it)."""
    beta = kl_weight(run.cfg, run.step)
    with np.errstate(all="ignore"):       # overflow is caught below, as a non-finite loss
        terms = run.model.loss_and_grads(x, noise=eps, beta=beta,
                                         weight_decay=run.cfg.weight_decay)
    values = tally.check(step, terms)
    with np.errstate(all="ignore"):
        run.opt.step()
    run.step += 1
    tally.bar.update(1)
    tally.add(step, terms, values, len(x), beta)


# --------------------------------------------------------------------------------------------
# The step replayed from a CUDA graph (minivae/gpu/replay.py)


def _replayed_step(run, log, warn):
    """The ReplayedStep for the run's full batches, captured and checked; None (with one line
    saying why, where a graph could be expected) where it cannot or should not be used."""
    cfg, model = run.cfg, run.model
    if cfg.cuda_graph == "off":
        return None
    why = why_not(model, tier_of(model), model.xp, run.opt)
    full = len(run.train_x) // cfg.batch_size
    if why is None and full == 0:
        why = f"no full batch of {cfg.batch_size} to replay"
    if why is None:
        replay = ReplayedStep(model, run.opt, run.train_x, cfg.spec, cfg.batch_size,
                              cfg.weight_decay, max(full, 2))
        replay.load_trial(cfg.beta, run.opt.t + 1, 2)     # the check's two steps
        try:
            replay.capture()
        except GraphUnavailable as e:
            why = str(e)
        else:
            log(f"minivae: the training step is replayed from a CUDA graph (batches of "
                f"{cfg.batch_size}; --cuda-graph off runs it eagerly)")
            return replay
    if cfg.cuda_graph == "auto" or backend_name(model.xp) == "cupy":
        warn(f"minivae: no CUDA graph: {why}; the training step runs eagerly")
    return None


def _train_epoch_replayed(run, epoch):
    """_train_epoch with the full batches replayed: the epoch's order and noise drawn as the
    eager loop draws them and uploaded once, one launch a step, the loss sums read a few times
    a second and at the end; a last partial batch runs eagerly."""
    cfg, model, replay = run.cfg, run.model, run.replay
    n, batch = len(run.train_x), cfg.batch_size
    order = run.data_rng.permutation(n)                           # as data.batches draws it
    full = n // batch
    noise = [model.rng.standard_normal((batch, model.latent_dim), dtype=model.dtype)
             for _ in range(full)]
    rest = 0 if cfg.spec.drop_last else n - full * batch
    last_noise = (model.rng.standard_normal((rest, model.latent_dim), dtype=model.dtype)
                  if rest else None)
    betas = [kl_weight(cfg, run.step + i) for i in range(full)]
    replay.load_epoch(order[:full * batch], np.concatenate(noise),
                      replay.numbers_for(betas, run.opt.t + 1))
    tally = Tally(run, epoch)
    try:
        read, read_at = 0, time.perf_counter()
        for step in range(1, full + 1):
            signals.check()                   # a Ctrl-C or SIGTERM that something swallowed
            replay.replay()
            run.step += 1
            tally.bar.update(1)
            if step == full or time.perf_counter() - read_at >= READ_EVERY_S:
                _account_replayed(run, tally, replay, read, step, betas)
                read, read_at = step, time.perf_counter()
        if rest:
            x = data.to_float(run.train_x[order[full * batch:]], model.xp, model.dtype,
                              pad=cfg.spec.pad, flatten=cfg.spec.flatten)
            with replay.stream:
                _eager_step(run, tally, full + 1, x, model.xp.asarray(last_noise))
        replay.stream.synchronize()
    finally:
        tally.bar.close()
    return tally.row()


def _account_replayed(run, tally, replay, start, stop, betas):
    """Steps start+1..stop of a replayed epoch into the tally, from one read of their sums
    (what the eager step's loss_and_grads computes from the same three sums)."""
    batch = run.cfg.batch_size
    for i, sums in enumerate(replay.read_terms(start, stop), start):
        terms = terms_from_sums(sums, batch, betas[i], run.cfg.weight_decay)
        values = tally.check(i + 1, terms)
        tally.add(i + 1, terms, values, batch, betas[i])


def _log_step(run, global_step, values, beta):
    """TensorBoard scalars every --log-every steps."""
    if run.writer is not None and (global_step - 1) % run.cfg.log_every == 0:
        for k, v in values.items():
            run.writer.add_scalar(f"train/{k}", v, global_step)
        run.writer.add_scalar("train/beta", beta, global_step)
