"""The command line's argument types and the flags several sub-commands share (cli.py,
bench.py and the scripts in benchmarks/ declare theirs with these)."""

import argparse
import math

from minivae.backend import BACKENDS
from minivae.models import MODELS
from minivae.tiers import IMPLS


def number(convert, lowest, what, inclusive=True):
    """An argparse type: convert(text), finite and >= lowest (> lowest unless inclusive)."""
    def parse(text):
        try:
            v = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(v) or v < lowest or (v == lowest and not inclusive):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return v
    return parse


def within(low, high, what):
    """An argparse type: a float in [low, high]; inf, nan and values outside are refused."""
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (math.isfinite(v) and low <= v <= high):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return v
    return parse


positive_int = number(int, 1, "a positive integer")
non_negative_int = number(int, 0, "a non-negative integer")
positive_float = number(float, 0, "a positive number", inclusive=False)
non_negative_float = number(float, 0, "a non-negative number")


def backend_arg(p, default="auto"):
    p.add_argument("--backend", choices=BACKENDS, default=default,
                   help=f"auto: CuPy when a GPU is usable, else NumPy (default: "
                        f"{default or 'auto'})")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="say why --backend auto picked the backend it did")


def impl_arg(p, default="auto"):
    p.add_argument("--impl", choices=IMPLS, default=default,
                   help="the engine's tier: plain (the readable one), fast (for NumPy), gpu "
                        "(for CuPy), or auto: fast on NumPy, gpu on CuPy once it passes a "
                        "self-check on the device, else plain (default: auto)")


def seed_defaults(key):
    """"128 for mlp, 64 for conv": a setting's seed default for each model, for help texts."""
    return ", ".join(f"{spec.defaults[key]} for {name}" for name, spec in MODELS.items())


def threads_arg(p):
    p.add_argument("--threads", type=number(int, 1, "a positive integer"), metavar="N",
                   help="BLAS threads (default: auto, the cores less the processes already "
                        "running: on a busy machine one thread is faster than two)")


def data_args(p):
    p.add_argument("--data-dir", metavar="DIR",
                   help="download cache (default: $MINIVAE_DATA, else the checkout's data/ "
                        "when run from a checkout, else ~/.cache/minivae)")
    p.add_argument("--mirror", metavar="URL_OR_DIR", action="append", default=[],
                   help="where to download from: an http(s) URL or a folder laid out as "
                        "<dataset>/<file>; repeatable, tried in order before $MINIVAE_MIRROR "
                        "and the public mirrors (any failure falls through to the next)")


def no_download_arg(p):
    p.add_argument("--no-download", action="store_true",
                   help="use the files in the data folder as they are: never download, "
                        "skip the checksums (e.g. your own IDX files)")


def saved_run_args(p, limit_help):
    """The flags of the sub-commands that load a saved run (evaluate, plot, report)."""
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--epoch", type=positive_int, help="checkpoint to use (default: the newest)")
    backend_arg(p)
    threads_arg(p)
    data_args(p)
    no_download_arg(p)
    p.add_argument("--limit", type=positive_int, metavar="N",
                   help=f"{limit_help} (default: as the run was trained)")
