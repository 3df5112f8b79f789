"""A run folder on disk: its checkpoints, metrics.csv and config.json.

A checkpoint, checkpoints/model-<N>.npz, holds everything needed to continue after epoch N, as
plain arrays and JSON strings only (read back with allow_pickle=False)::

    format        "minivae-checkpoint-1"
    epoch         N
    config        the run's settings (JSON; files without "impl" load with impl "auto")
    metrics       the metrics.csv rows so far (JSON)
    rng/model     the state of model.rng, which draws the training noise (JSON)
    rng/data      the state of the generator that draws each epoch's permutation (JSON)
    schedule/step the training steps taken so far: the KL warm-up's position (files without it
                  were saved at an epoch's end, so epoch x steps per epoch)
    param/<name>  every parameter, in model.params order
    optim/<key>   the optimizer's state_dict

Every file here is written through minivae.files (temporary name, then rename), so a kill never
leaves a half-written file under a real name.
"""

import csv
import io
import json
import os
import re
from pathlib import Path

import numpy as np

from minivae import files
from minivae.backend import to_device, to_host
from minivae.config import TrainError

CHECKPOINT_FORMAT = "minivae-checkpoint-1"
METRIC_FIELDS = ("epoch", "train_loss", "train_recon", "train_kl", "train_reg", "beta",
                 "test_neg_elbo", "active_units", "seconds")


def metric_fields(latent_dim):
    """The metrics.csv columns of a run with `latent_dim` latent dimensions: METRIC_FIELDS with
    the test KL of each dimension, kl_0 ... kl_<latent_dim - 1>, before active_units."""
    at = METRIC_FIELDS.index("active_units")
    return METRIC_FIELDS[:at] + tuple(f"kl_{i}" for i in range(latent_dim)) + METRIC_FIELDS[at:]


def write_config(out, cfg):
    """Write the run's settings to out/config.json."""
    files.write_text(Path(out) / "config.json", json.dumps(cfg, indent=2) + "\n")


def write_metrics(path, rows, latent_dim):
    """Write the metrics rows (dicts keyed by metric_fields(latent_dim)) as a CSV file; a column
    a row lacks (rows of runs saved before that column existed) is left empty."""
    fields = metric_fields(latent_dim)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(fields)
    for r in rows:
        # repr() of a float round-trips exactly, so a resumed run's CSV can be compared bit for bit.
        w.writerow([repr(r[k]) if isinstance(r.get(k), float) else r.get(k, "") for k in fields])
    files.write_text(path, buf.getvalue())


def checkpoint_path(out, epoch):
    """Where the checkpoint of `epoch` lives in run folder `out`."""
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


def save_checkpoint(out, epoch, model, opt, data_rng, cfg, history, step):
    """Write checkpoints/model-<epoch>.npz atomically (step: training steps taken so far);
    returns its path."""
    arrays = {"format": np.array(CHECKPOINT_FORMAT), "epoch": np.array(epoch),
              "schedule/step": np.array(step),
              "config": _json_array(cfg), "metrics": _json_array(history),
              "rng/model": _json_array(model.rng.bit_generator.state),
              "rng/data": _json_array(data_rng.bit_generator.state)}
    for name, p in model.params.items():
        arrays[f"param/{name}"] = to_host(p)
    for key, v in opt.state_dict().items():
        arrays[f"optim/{key}"] = np.asarray(to_host(v)) if hasattr(v, "shape") else np.array(v)
    path = checkpoint_path(out, epoch)
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.Replacing(path) as f:
        np.savez(f, **arrays)
    return path


class Checkpoint:
    """The contents of one checkpoint file, read with allow_pickle=False."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            with np.load(self.path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            if str(arrays["format"]) != CHECKPOINT_FORMAT:
                raise ValueError(f"unknown format {str(arrays['format'])!r}")
            self.epoch = int(arrays["epoch"])
            self.config = json.loads(str(arrays["config"]))
            self.metrics = json.loads(str(arrays["metrics"]))
            self.rng_model = json.loads(str(arrays["rng/model"]))
            self.rng_data = json.loads(str(arrays["rng/data"]))
            self.step = int(arrays["schedule/step"]) if "schedule/step" in arrays else None
        except FileNotFoundError:
            raise TrainError(f"checkpoint {self.path} does not exist") from None
        except Exception as e:  # zip, npy, JSON or key errors: all mean "not a usable checkpoint"
            raise TrainError(f"cannot read checkpoint {self.path}: {describe(e)}") from None
        self.params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
        self.optim = {k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")}

    def restore(self, model, opt=None, data_rng=None):
        """Load parameters (and optimizer / RNG states) into freshly built objects; TrainError
        naming what is missing or misshapen when the checkpoint does not fit them."""
        xp = model.xp
        missing = [n for n in model.params if n not in self.params]
        extra = [n for n in self.params if n not in model.params]
        if missing or extra:
            what = [f"missing parameter(s) {', '.join(missing)}"] if missing else []
            what += [f"unknown parameter(s) {', '.join(extra)}"] if extra else []
            raise TrainError(f"checkpoint {self.path} does not match the model: "
                             f"{'; '.join(what)}")
        for name, p in model.params.items():
            saved = self.params[name]
            if saved.shape != p.shape:
                raise TrainError(f"checkpoint {self.path}: parameter {name} has shape "
                                 f"{saved.shape}, the model expects {p.shape}")
        if opt is not None:
            # Adam's state holds the means m.<name> / v.<name> (plain tier) or the running sums
            # M.<name> / V.<name> (fast tier); either tier's load_state_dict converts the other's.
            other = {"M.": "m.", "V.": "v.", "m.": "M.", "v.": "V."}
            missing = [k for k in opt.state_dict() if k not in self.optim
                       and other.get(k[:2], "") + k[2:] not in self.optim]
            if missing:
                raise TrainError(f"checkpoint {self.path}: optimizer state lacks "
                                 f"{', '.join(missing)}")
        for name, p in model.params.items():
            p[...] = to_device(self.params[name].astype(p.dtype), xp)
        model.rng.bit_generator.state = self.rng_model
        if opt is not None:
            state = {k: (v.item() if v.ndim == 0 else to_device(v, xp))
                     for k, v in self.optim.items()}
            try:
                opt.load_state_dict(state)
            except (KeyError, ValueError) as e:
                raise TrainError(f"checkpoint {self.path}: optimizer state unusable: {describe(e)}")
        if data_rng is not None:
            data_rng.bit_generator.state = self.rng_data


def describe(e):
    """An exception as one short line: its type and the first line of its message."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def read_config(out):
    """The settings in out/config.json, or None when there is no readable one."""
    try:
        cfg = json.loads((Path(out) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) else None


def prune_checkpoints(out, keep):
    """Delete all but the newest `keep` checkpoints of run folder `out` (keep None: keep all)."""
    if keep is None:
        return
    for epoch, path in list_checkpoints(out)[:-keep]:
        files.remove(path)


def remove_stale_temporaries(out, warn=None):
    """Remove what killed processes left half-written in run folder `out` (see minivae.files)."""
    out = Path(out)
    removed = files.remove_stale(out) + files.remove_stale(out / "checkpoints")
    if removed and warn:
        warn(f"minivae: removed {len(removed)} stale temporary file(s) of an interrupted run "
             f"from {out}: {', '.join(removed)}")
    return removed


def prepare_out(out):
    """Create the run folder (and checkpoints/) and make sure files can be written there.

    Returns the folders it created, outermost first, for `remove_created` to take back when the
    run cannot start."""
    out = Path(out)
    created = [p for p in (*reversed((out / "checkpoints").parents), out / "checkpoints")
               if not p.exists()]
    try:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise TrainError(f"cannot write to output folder {out}: {e.strerror or describe(e)}") \
            from None
    return created


def remove_created(created):
    """Remove the folders prepare_out created, as far as they are still empty."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            return
