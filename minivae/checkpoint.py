"""The checkpoint file: everything needed to continue a run after an epoch.

A checkpoint, checkpoints/model-<N>.npz in a run folder (minivae.run), holds everything needed to
continue after epoch N, as plain arrays and JSON strings only (read back with allow_pickle=False)::

    format        "minivae-checkpoint-1"
    epoch         N
    config        the run's settings (JSON; files without "impl" load with impl "auto")
    metrics       the metrics.csv rows so far (JSON)
    rng/model     the state of model.rng, which draws the training noise (JSON)
    rng/data      the state of the generator that draws each epoch's permutation (JSON)
    schedule/step the training steps taken so far: the KL warm-up's position (files without it
                  were saved at an epoch's end, so epoch x steps per epoch)
    param/<name>  every parameter, in model.params order
    optim/<key>   the optimizer's state_dict (optim.Adam's, whatever the tier: t, lr, b1, b2,
                  eps, m.<name>, v.<name>; files written before held the fast tier's running
                  sums M.<name>, V.<name> instead, converted on reading: m = (1 - b1) M)

Every file here is written through minivae.files (temporary name, then rename), so a kill never
leaves a half-written file under a real name.
"""

import json
from pathlib import Path

import numpy as np

from minivae import files
from minivae.backend import to_device, to_host
from minivae.errors import TrainError

CHECKPOINT_FORMAT = "minivae-checkpoint-1"
ZIP_MAGIC = b"PK\x03\x04"            # how every .npz file starts


def _what(head):
    """What the first bytes of a file that is no .npz archive suggest, in a few words."""
    if not head:
        return "empty"
    if head.startswith(b"\x93NUM"):
        return "a single .npy array"
    return f"something else, beginning {head!r}"


def _json_array(obj):
    return np.array(json.dumps(obj))


def save_checkpoint(path, epoch, model, opt, data_rng, cfg, history, step):
    """Write the checkpoint of `epoch` to `path` atomically (cfg: the settings as a dict; step:
    training steps taken so far); returns the path."""
    arrays = {"format": np.array(CHECKPOINT_FORMAT), "epoch": np.array(epoch),
              "schedule/step": np.array(step),
              "config": _json_array(cfg), "metrics": _json_array(history),
              "rng/model": _json_array(model.rng.bit_generator.state),
              "rng/data": _json_array(data_rng.bit_generator.state)}
    for name, p in model.params.items():
        arrays[f"param/{name}"] = to_host(p)
    for key, v in opt.state_dict().items():
        arrays[f"optim/{key}"] = np.asarray(to_host(v)) if hasattr(v, "shape") else np.array(v)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.Replacing(path) as f:
        np.savez(f, **arrays)
    return path


class Checkpoint:
    """The contents of one checkpoint file, read with allow_pickle=False."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                head = f.read(4)
        except FileNotFoundError:
            raise TrainError(f"checkpoint {self.path} does not exist") from None
        except OSError as e:
            raise TrainError(f"cannot read checkpoint {self.path}: {describe(e)}") from None
        if head != ZIP_MAGIC:           # np.load would take any other file for a pickle
            raise TrainError(f"{self.path} is damaged or not a checkpoint (a checkpoint is a "
                             f".npz archive; this file is {_what(head)})")
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
            why = ("it holds Python objects, which no checkpoint does" if "pickle" in str(e)
                   else describe(e))
            raise TrainError(f"{self.path} is damaged or not a checkpoint ({why})") from None
        self.params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
        self.optim = _upgrade_optim({k[len("optim/"):]: v for k, v in arrays.items()
                                     if k.startswith("optim/")})

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
            missing = [k for k in opt.state_dict() if k not in self.optim]
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


def _upgrade_optim(state):
    """The optimizer state with the running sums of the first fast-tier files (M.<name>,
    V.<name>) turned into optim.Adam's means (m = (1 - b1) M, v = (1 - b2) V), in float64."""
    for sums, means, beta in (("M.", "m.", "b1"), ("V.", "v.", "b2")):
        for key in [k for k in state if k.startswith(sums)]:
            value = state.pop(key)
            if beta in state:
                state[means + key[2:]] = (1 - float(state[beta])) * value.astype(np.float64)
    return state


def describe(e):
    """An exception as one short line: its type and the first line of its message."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__
