"""A run folder: its files and their names, its settings and metrics, its checkpoints, and the
model of a saved run. train, evaluate, plot and the command line all reach a run through here.

A run lives in one folder (``--out``)::

    config.json              the settings the run was started with (a longer resumed run
                             raises its epochs)
    original.png             the fixed sample_size x sample_size grid of training inputs
    epoch_<N>.png            their reconstructions after epoch N
    samples_<N>.png          decodes of a fixed set of draws from the prior N(0, I)
    metrics.csv              one row per epoch (metric_fields)
    loss.png                 train loss and test -ELBO per epoch
    checkpoints/model-<N>.npz  everything needed to continue after epoch N (minivae.checkpoint)
    evaluation.json          `minivae evaluate`'s results, by epoch
    report.html              `minivae report`'s page (minivae.report)
    plotted.json             the epoch `minivae plot` drew and the files it wrote
    .lock                    held by the training process while it runs (its process id in it)

Every file is written to a temporary name and renamed into place (minivae.files), so `plot`,
`evaluate` and `report` read only complete files, also of a run that is training. One process at
a time trains a run folder: `train` holds an operating-system lock on its .lock file from before
it writes anything until it ends (the lock dies with the process, however it ends).
"""

import csv
import io
import json
import os
import re
import shlex
from pathlib import Path

import numpy as np

from minivae import files
from minivae.backend import backend_name, cupy_status, get_backend
from minivae.checkpoint import Checkpoint
from minivae.config import (FIXED_ON_RESUME, LATER_SETTINGS, SETTINGS, default_out, is_int,
                            make_config, resume_settings)
from minivae.errors import ResumeMismatch, TrainError
from minivae.progress import note
from minivae.tiers import build_model, make_optimizer

CONFIG, METRICS, LOSS, ORIGINAL = "config.json", "metrics.csv", "loss.png", "original.png"
LOCK = ".lock"                       # held by the process training the run
EVALUATION = "evaluation.json"       # `minivae evaluate`'s results, by epoch
REPORT = "report.html"               # `minivae report`'s page
PLOTTED = "plotted.json"             # `minivae plot`'s record: the epoch drawn, the files
METRIC_FIELDS = ("epoch", "train_loss", "train_recon", "train_kl", "train_reg", "beta",
                 "test_neg_elbo", "active_units", "seconds")

# Independent random streams, each seeded from (run seed, stream[, epoch]); only the model's
# noise and the data order carry state from epoch to epoch (saved in every checkpoint).
# Each has a value of its own, written out: a stream's numbers follow from its value, so a new
# stream takes a new value and every saved run keeps its numbers.
STREAM_DATA = 1           # each epoch's order of the training images (carries state)
STREAM_GRID = 2           # which training images form original.png
STREAM_RECON = 3          # the noise of original.png's reconstructions
STREAM_SAMPLES = 4        # the prior draws of samples_<N>.png
STREAM_TEST = 5           # the noise of the test -ELBO, per epoch
STREAM_EVAL = 6           # `minivae evaluate`'s importance samples
STREAM_VIS = 7            # `minivae plot`'s and the report's picks


def stream_rng(seed, stream, *more):
    """A generator independent of the training streams, fixed by (seed, stream, *more)."""
    return np.random.default_rng([seed, stream, *more])


def metric_fields(latent_dim):
    """The metrics.csv columns of a run with `latent_dim` latent dimensions: METRIC_FIELDS with
    the test KL of each dimension, kl_0 ... kl_<latent_dim - 1>, before active_units."""
    at = METRIC_FIELDS.index("active_units")
    return METRIC_FIELDS[:at] + tuple(f"kl_{i}" for i in range(latent_dim)) + METRIC_FIELDS[at:]


def choose_backend(name, log=None, verbose=False):
    """The array module for backend `name`; for 'auto', say in a few words which one was picked
    (and, when verbose, why)."""
    xp = get_backend(name)
    if name == "auto" and log is not None:
        picked = backend_name(xp)
        why = "a usable GPU was found" if picked == "cupy" else f"no usable GPU: {cupy_status()[1]}"
        log(f"minivae: backend: {picked}" + (f" (auto: {why})" if verbose else ""))
    return xp


def model_for(cfg, xp):
    """The model cfg describes, freshly initialised from cfg.seed, on array module xp."""
    return build_model(cfg.model, latent_dim=cfg.latent_dim, hidden_dim=cfg.hidden_dim,
                       seed=cfg.seed, dtype=np.dtype(cfg.dtype).type, backend=backend_name(xp),
                       impl=cfg.impl)


def fresh_state(cfg, xp):
    """(model, optimizer (cfg.optimizer, of the model's tier), data generator) as a new run
    starts them."""
    model = model_for(cfg, xp)
    return (model, make_optimizer(model, cfg.optimizer, lr=cfg.lr),
            stream_rng(cfg.seed, STREAM_DATA))


class RunFolder:
    """One run folder on disk (it need not exist yet)."""

    def __init__(self, path):
        self.path = Path(path)

    def __str__(self):
        return str(self.path)

    def file(self, name):
        return self.path / name

    def epoch_picture(self, kind, epoch):
        """epoch_<N>.png (kind "epoch") or samples_<N>.png (kind "samples")."""
        return self.path / f"{kind}_{epoch}.png"

    # ---- checkpoints

    def checkpoint_path(self, epoch):
        return self.path / "checkpoints" / f"model-{epoch}.npz"

    def checkpoints(self):
        """[(epoch, path)] of the checkpoint files, oldest first."""
        folder = self.path / "checkpoints"
        if not folder.is_dir():
            return []
        found = []
        for p in folder.iterdir():
            m = re.fullmatch(r"model-(\d+)\.npz", p.name)
            if m and p.is_file():
                found.append((int(m.group(1)), p))
        return sorted(found)

    def prune_checkpoints(self, keep):
        """Delete all but the newest `keep` checkpoints (keep None: keep all)."""
        if keep is not None:
            for _, path in self.checkpoints()[:-keep]:
                files.remove(path)

    def restore_newest(self, cfg, xp, warn):
        """(checkpoint, model, optimizer, data generator) from the newest checkpoint that reads
        back and fits cfg's model; damaged newer ones are skipped with a warning. The checkpoint
        is None (and the objects fresh) when none restores. A checkpoint trained with other
        settings is an error (ResumeMismatch), not damage."""
        for _, path in reversed(self.checkpoints()):
            try:
                ckpt = Checkpoint(path)
                self._check_config_against(ckpt)
                resume_settings(ckpt.config, {k: getattr(cfg, k) for k in SETTINGS}, self.path)
                model, opt, data_rng = fresh_state(cfg, xp)
                ckpt.restore(model, opt, data_rng)
                return ckpt, model, opt, data_rng
            except ResumeMismatch:
                raise
            except TrainError as e:
                warn(f"minivae: warning: {e}; trying the checkpoint before it")
        return (None, *fresh_state(cfg, xp))

    def _check_config_against(self, ckpt):
        """ResumeMismatch naming config.json, the setting and both values, when config.json
        disagrees with checkpoint `ckpt` on a setting that defines the computation: the file
        was edited (the flags given were checked against config.json already)."""
        saved = self.read_config()
        if saved is None:
            return
        for key in FIXED_ON_RESUME:
            was = ckpt.config.get(key, LATER_SETTINGS.get(key))
            says = saved.get(key, LATER_SETTINGS.get(key))
            if was != says:
                raise ResumeMismatch(
                    f"cannot resume {self}: its {CONFIG} says {key} {says!r}, but its checkpoints "
                    f"were trained with {key} {was!r} ({ckpt.path.name}); {CONFIG} was edited: "
                    f"set {key} back to {was!r}, or delete {CONFIG} to use the checkpoints' "
                    f"settings")

    # ---- settings and metrics

    def read_config(self):
        """The settings in config.json as a dict, None when there is none; TrainError naming
        the file when it cannot be read or is no JSON object (a truncated write, an edit)."""
        path = self.file(CONFIG)
        try:
            saved = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise TrainError(f"{path} is damaged ({type(e).__name__}: {str(e).splitlines()[0]}); "
                             f"repair it, or delete it to use the settings saved in the newest "
                             f"checkpoint") from None
        if not isinstance(saved, dict):
            raise TrainError(f"{path} holds no settings (a JSON {type(saved).__name__}); repair "
                             f"it, or delete it to use the settings saved in the newest checkpoint")
        return saved

    def saved_settings(self):
        """The run's settings as a dict: its config.json, else its newest checkpoint's (None when
        it has neither)."""
        saved = self.read_config()
        found = self.checkpoints()
        if saved is None and found:
            try:
                saved = Checkpoint(found[-1][1]).config
            except TrainError:
                pass           # train() falls back to an older checkpoint and names the damage
        return saved

    def write_config(self, settings):
        """Write the settings (a Config or a dict) to config.json."""
        d = settings if isinstance(settings, dict) else settings.to_dict()
        files.write_text(self.file(CONFIG), json.dumps(d, indent=2) + "\n")

    def write_metrics(self, rows, latent_dim):
        """Write the metrics rows (dicts keyed by metric_fields(latent_dim)) as metrics.csv; a
        column a row lacks (rows of runs saved before that column existed) is left empty."""
        fields = metric_fields(latent_dim)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(fields)
        for r in rows:
            # repr() of a float round-trips exactly: a resumed run's CSV compares bit for bit.
            w.writerow([repr(r[k]) if isinstance(r.get(k), float) else r.get(k, "")
                        for k in fields])
        files.write_text(self.file(METRICS), buf.getvalue())

    # ---- creating it, and holding it while training

    def prepare(self):
        """Create the folder (and checkpoints/), take the run's lock (see the module docstring)
        and make sure files can be written there: (the folders it created, outermost first, the
        lock), for `release` to give back. TrainError when another process trains the folder,
        naming it, before anything is written."""
        ck = self.path / "checkpoints"
        created = [p for p in (*reversed(ck.parents), ck) if not p.exists()]
        try:
            ck.mkdir(parents=True, exist_ok=True)
            lock = files.lock_exclusively(self.file(LOCK))
        except OSError as e:
            self.release(None, created)
            raise TrainError(f"cannot write to output folder {self.path}: "
                             f"{e.strerror or type(e).__name__}") from None
        if lock is None:
            self.release(None, created)
            raise TrainError(f"{self} is being trained by another process ({self._holder()}); "
                             f"wait for it to end, or train into another --out")
        try:
            lock.seek(0)
            lock.truncate()
            lock.write(f"{os.getpid()}\n")
            lock.flush()
            files.check_writable(self.path)
        except OSError as e:
            self.release(lock, created)
            raise TrainError(f"cannot write to output folder {self.path}: "
                             f"{e.strerror or type(e).__name__}") from None
        return created, lock

    def _holder(self):
        try:
            pid = self.file(LOCK).read_text().split()[0]
            return f"process id {int(pid)}"
        except (OSError, IndexError, ValueError):
            return "its process id not yet written"

    def release(self, lock, created=()):
        """Give back what prepare() took: the lock, and the folders it created as far as they
        are still empty (with the lock file, when the run folder is one of them)."""
        if lock is not None:
            lock.close()
        if self.path in created:
            try:
                self.file(LOCK).unlink()
            except OSError:
                pass
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:
                return

    def remove_stale_temporaries(self, warn=None):
        """Remove what killed processes left half-written here (see minivae.files)."""
        removed = files.remove_stale(self.path) + files.remove_stale(self.path / "checkpoints")
        if removed and warn:
            warn(f"minivae: removed {len(removed)} stale temporary file(s) of an interrupted run "
                 f"from {self.path}: {', '.join(removed)}")
        return removed


def resume_command(run):
    """The command that continues the run in folder `run`, ready to paste into a shell."""
    return f"minivae train --resume --out {shlex.quote(str(run))}"


def resume_config(given):
    """The settings of `train --resume`: the run folder's own (its config.json, else its newest
    checkpoint's), with the settings the user gave (a dict of those given); see
    config.resume_settings. A folder that holds no run starts afresh when --model is given."""
    out = given.get("out") or default_out(given.get("model", "mlp"), given.get("dataset"))
    given = dict(given, out=str(out))
    saved = RunFolder(out).saved_settings()
    if saved is None:
        why = "does not exist" if not Path(out).exists() else "holds no run (no config.json)"
        if "model" not in given:
            raise TrainError(f"cannot resume {out}: it {why}; check --out, or give --model (and "
                             f"the run's other settings) to start the run afresh")
        return make_config(**given), f"minivae: {out} {why}; starting a new run with the " \
                                     f"settings given"
    settings = resume_settings({**LATER_SETTINGS, **saved}, given, out)
    try:
        return make_config(**settings), None
    except (TrainError, TypeError) as e:     # the flags were checked as they were parsed
        config = RunFolder(out).file(CONFIG)
        source = config if config.is_file() else f"the newest checkpoint of {out}"
        raise TrainError(f"{source}: {e}") from None


def load_run(run_dir, epoch=None, backend="auto", log=None, verbose=False, warn=None):
    """(model, cfg, checkpoint) for run_dir's checkpoint `epoch`; without one, the newest
    checkpoint that loads, a damaged newer one skipped with a line to `warn` (default: stderr)
    saying which and why. TrainError for a damaged `epoch`, naming the epochs that load."""
    run = RunFolder(run_dir)
    if not run.path.exists():
        raise TrainError(f"run folder {run} does not exist")
    if not run.path.is_dir():
        raise TrainError(f"{run} is not a run folder (it is a file)")
    found = run.checkpoints()
    if epoch is not None:
        if not is_int(epoch) or epoch < 1:
            raise TrainError(f"--epoch must be a positive integer, got {epoch!r}")
        if not run.checkpoint_path(epoch).is_file():
            have = ", ".join(str(e) for e, _ in found) or "none"
            raise TrainError(f"{run} has no checkpoint for epoch {epoch} (epochs saved: {have})")
        found = [(epoch, run.checkpoint_path(epoch))]
    elif not found and run.file(CONFIG).is_file():
        raise TrainError(f"{run} has no finished epoch yet (training stopped before its first "
                         f"checkpoint); `{resume_command(run)}` trains it")
    elif not found:
        raise TrainError(f"{run} holds no checkpoints (checkpoints/model-<N>.npz); is it a "
                         f"run folder written by `minivae train`?")
    warn = warn or note
    for number, path in reversed(found):
        try:
            ckpt, cfg = _read_checkpoint(path)
        except TrainError as e:
            if epoch is not None:
                loads = [str(n) for n, p in run.checkpoints() if p != path and _loads(p)]
                raise TrainError(f"{e}; epochs that load: {', '.join(loads) or 'none'}") \
                    from None
            older = [n for n, _ in found if n < number]
            warn(f"minivae: warning: skipping epoch {number}: {e}"
                 + (f"; trying epoch {older[-1]}" if older else ""))
            continue
        model = model_for(cfg, choose_backend(backend, log=log, verbose=verbose))
        ckpt.restore(model)
        return model, cfg, ckpt
    raise TrainError(f"none of the checkpoints of {run} loads (see the warnings above)")


def _read_checkpoint(path):
    """(Checkpoint, Config) of a checkpoint file; TrainError when either is unusable."""
    ckpt = Checkpoint(path)
    try:
        return ckpt, make_config(**ckpt.config)
    except (TrainError, TypeError) as e:
        raise TrainError(f"checkpoint {path} holds an unusable config: {e}") from None


def _loads(path):
    try:
        _read_checkpoint(path)
        return True
    except TrainError:
        return False
