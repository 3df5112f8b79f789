"""The `minivae` command: train, download, evaluate, plot, gradcheck, bench.

    minivae train --model conv --epochs 1          # seed 001 on FashionMNIST, one epoch
    minivae evaluate output/conv-fashion-mnist --iw-samples 100
    minivae plot output/conv-fashion-mnist

Any problem the user can fix ends with one line on stderr, `minivae: error: ...`, and exit
status 1 (2 for a malformed command line); never with a traceback (set MINIVAE_DEBUG=1 to see
one anyway). Ctrl-C and SIGTERM end a command with one line, `minivae: interrupted`, and status
130 / 143, after removing the files being written; a closed stdout ends a short command quietly
with status 141, as SIGPIPE would (training carries on: minivae.progress.say).
"""

import argparse
import json
import math
import os
import signal
import sys
from pathlib import Path

from minivae import __version__, bench, files, gradcheck, statcheck
from minivae.backend import BACKENDS, IMPLS, BackendError
from minivae.checkpoint import Checkpoint, list_checkpoints, read_config
from minivae.config import DTYPES, RECON_FROM, TrainError, make_config, resume_settings
from minivae.download import DATASETS, DownloadError, download, mirrors
from minivae.evaluate import ACTIVE_VARIANCE, evaluate_run
from minivae.idx import IDXError
from minivae.models import MODELS
from minivae.progress import say, silence_stdout
from minivae.train import train
from minivae.visualise import plot_run

PROG = "minivae"


class UsageError(Exception):
    """A malformed command line (exit status 2)."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line (`minivae: error: ...`), not usage."""

    def error(self, message):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# -- argument types: reject bad values while parsing, with a message naming the flag ---------

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


positive_int = number(int, 1, "a positive integer")
non_negative_int = number(int, 0, "a non-negative integer")
positive_float = number(float, 0, "a positive number", inclusive=False)
non_negative_float = number(float, 0, "a non-negative number")


def _backend_arg(p, default="auto"):
    p.add_argument("--backend", choices=BACKENDS, default=default,
                   help=f"auto: CuPy when a GPU is usable, else NumPy (default: "
                        f"{default or 'auto'})")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="say why --backend auto picked the backend it did")


def _impl_arg(p, default="auto"):
    p.add_argument("--impl", choices=IMPLS, default=default,
                   help="the engine's tier: plain (the readable one), fast (NumPy only), or auto: "
                        "fast on NumPy, plain on CuPy (default: auto)")


def _data_args(p):
    p.add_argument("--data-dir", metavar="DIR",
                   help="download cache (default: $MINIVAE_DATA or ./data)")
    p.add_argument("--mirror", metavar="URL_OR_DIR", action="append", default=[],
                   help="where to download from: an http(s) URL or a folder laid out as "
                        "<dataset>/<file>; repeatable, tried in order before $MINIVAE_MIRROR "
                        "and the public mirrors (any failure falls through to the next)")


def _no_download_arg(p):
    p.add_argument("--no-download", action="store_true",
                   help="use the files in the data folder as they are: never download, "
                        "skip the checksums (e.g. your own IDX files)")


def _saved_run_args(p, limit_help):
    """The flags of the sub-commands that load a saved run (evaluate, plot)."""
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--epoch", type=positive_int, help="checkpoint to use (default: the newest)")
    _backend_arg(p)
    _data_args(p)
    _no_download_arg(p)
    p.add_argument("--limit", type=positive_int, metavar="N",
                   help=f"{limit_help} (default: as the run was trained)")


def build_parser():
    parser = Parser(prog=PROG, description="Variational autoencoders on a from-scratch "
                                           "NumPy/CuPy engine.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    # train -----------------------------------------------------------------------------------
    p = sub.add_parser("train", help="train a VAE (seed 000: --model mlp, seed 001: --model conv)",
                       description="Train a VAE. Unset flags take the seed's defaults for the "
                                   "model: mlp -> mnist, 20 epochs, lr 1e-3, batch 128, latent 2, "
                                   "hidden 500, weight decay 0.01 on the decoder; conv -> "
                                   "fashion-mnist, 10 epochs, lr 1e-4, batch 64 (full batches "
                                   "only), latent 10, hidden 256, weight decay 0.01 on everything.")
    # Every setting defaults to None ("not given"): --resume takes the run's own settings for
    # those, and checks the given ones against them.
    p.add_argument("--model", choices=tuple(MODELS),
                   help="mlp (seed 000) or conv (seed 001) (default: mlp)")
    p.add_argument("--dataset", choices=tuple(DATASETS),
                   help="default: mnist for mlp, fashion-mnist for conv")
    _backend_arg(p, default=None)
    _impl_arg(p, default=None)
    p.add_argument("--epochs", type=positive_int, help="number of epochs to train up to")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lr", type=positive_float, help="Adam learning rate")
    p.add_argument("--beta", type=non_negative_float, help="weight of the KL term (default 1)")
    p.add_argument("--weight-decay", type=non_negative_float, help="L2 penalty weight λ")
    p.add_argument("--latent-dim", type=positive_int)
    p.add_argument("--hidden-dim", type=positive_int,
                   help="width of the dense layers (default: 500 for mlp, 256 for conv)")
    p.add_argument("--seed", type=non_negative_int, help="random seed (default 0)")
    p.add_argument("--out", metavar="DIR", help="run folder (default: output/<model>-<dataset>)")
    _data_args(p)
    _no_download_arg(p)
    p.add_argument("--limit", type=positive_int, metavar="N",
                   help="use only the first N training and N test images (quick runs)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest complete checkpoint, with the "
                        "settings in its config.json (flags given again must agree with them, "
                        "except --epochs, which may extend the run)")
    p.add_argument("--keep-checkpoints", type=positive_int, metavar="K",
                   help="keep only the newest K checkpoints (default: all)")
    p.add_argument("--sample-size", type=positive_int, metavar="S",
                   help="original.png / epoch_<N>.png / samples_<N>.png are S x S grids "
                        "(default 10)")
    p.add_argument("--log-every", type=positive_int, metavar="STEPS",
                   help="TensorBoard logging interval in steps (default 10)")
    p.add_argument("--tensorboard", action="store_true", default=None,
                   help="write TensorBoard scalars to <out>/tensorboard (needs tensorboardX)")
    p.add_argument("--dtype", choices=DTYPES, help="default: float32")
    p.add_argument("--kl-warmup", type=non_negative_int, metavar="STEPS",
                   help="raise the KL weight linearly from 0 to --beta over the first STEPS "
                        "training steps (default 0: --beta from the start); fixed on --resume")
    p.add_argument("--recon-from", choices=RECON_FROM,
                   help="epoch_<N>.png decodes a sampled z (sample, as the seeds do) or the "
                        "posterior mean (mean) (default: sample)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    # download --------------------------------------------------------------------------------
    p = sub.add_parser("download", help="download a dataset into the cache and check it")
    p.add_argument("--dataset", choices=tuple(DATASETS) + ("all",), default="all",
                   help="default: %(default)s")
    _data_args(p)
    p.set_defaults(func=cmd_download)

    # evaluate --------------------------------------------------------------------------------
    p = sub.add_parser("evaluate", help="test negative ELBO and importance-weighted -log p(x)")
    _saved_run_args(p, "evaluate on the first N test images")
    p.add_argument("--iw-samples", type=positive_int, default=100, metavar="K",
                   help="importance samples per image (default: %(default)s)")
    p.set_defaults(func=cmd_evaluate)

    # plot ------------------------------------------------------------------------------------
    p = sub.add_parser("plot", help="latent scatter, manifold, test reconstructions, latent "
                                    "traversals and an interpolation")
    _saved_run_args(p, "use the first N test images")
    p.add_argument("--traverse-image", type=non_negative_int, default=0, metavar="I",
                   help="traversals.png/.gif hold the other dimensions at the posterior mean of "
                        "test image I (default: %(default)s)")
    p.add_argument("--traverse-range", type=float, nargs=2, default=(-3.0, 3.0),
                   metavar=("LO", "HI"),
                   help="the values each dimension is swept over, in prior standard deviations "
                        "(default: -3 3)")
    p.add_argument("--interpolate", type=non_negative_int, nargs=2, metavar=("I", "J"),
                   help="interpolation.png goes from test image I to test image J (default: "
                        "the first two test images of different classes)")
    p.set_defaults(func=cmd_plot)

    # gradcheck: its flags are defined next to the checks ----------------------------------
    p = sub.add_parser("gradcheck", help="finite-difference check of every layer's backward")
    gradcheck.add_arguments(p)
    p.add_argument("--statistical", action="store_true",
                   help="then the statistical checks (minivae.statcheck): KL against Monte "
                        "Carlo, the sampled std against each parametrisation, IWAE <= ELBO")
    p.set_defaults(func=cmd_gradcheck)

    # bench -----------------------------------------------------------------------------------
    p = sub.add_parser("bench", help="time training steps of a model on a backend",
                       description="Median milliseconds per training step (loss_and_grads + "
                                   "Adam) of each seed model, the seconds per epoch that makes, "
                                   "images per second, peak memory and the GEMM floor; each "
                                   "model in a fresh interpreter. The comparisons with PyTorch "
                                   "are in benchmarks/.")
    p.add_argument("--model", choices=tuple(MODELS), action="append",
                   help="mlp or conv; repeatable (default: both)")
    _backend_arg(p, default="numpy")
    _impl_arg(p)
    p.add_argument("--batch-size", type=positive_int,
                   help="default: the seed's (128 for mlp, 64 for conv)")
    p.add_argument("--steps", type=positive_int, default=50,
                   help="timed steps per model (default: %(default)s)")
    p.add_argument("--warmup", type=non_negative_int, default=5,
                   help="untimed steps first (default: %(default)s)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="default: %(default)s")
    p.add_argument("--gemm-size", type=positive_int, default=1024, metavar="N",
                   help="N x N x N matmul that measures the machine's throughput "
                        "(default: %(default)s)")
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="BLAS threads of the timing processes (default: the library's own "
                        "choice, usually one per core)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_bench)
    return parser


# -- sub-commands -------------------------------------------------------------------------

def _err(msg):
    print(msg, file=sys.stderr, flush=True)


def cmd_train(args):
    settings = make_config()      # the names of the settings; flags not given are None
    given = {key: value for key, value in vars(args).items()
             if key in settings and value is not None}
    if args.mirror:
        given["mirrors"] = args.mirror
    if args.no_download:
        given["download"] = False
    cfg = _resume_config(given) if args.resume else make_config(**given)
    args.run_folder = cfg["out"]     # for the hint after an interruption or a full disk
    train(cfg, resume=args.resume, progress=not args.no_progress, verbose=args.verbose)
    say(f"minivae: run folder {cfg['out']}")
    return 0


def _resume_config(given):
    """The settings of `train --resume`: the run folder's own (its config.json, else its newest
    checkpoint's), with the flags the user gave; see config.resume_settings."""
    out = Path(make_config(**given)["out"])
    given["out"] = str(out)
    saved = read_config(out)
    if saved is None and list_checkpoints(out):
        try:
            saved = Checkpoint(list_checkpoints(out)[-1][1]).config
        except TrainError:
            pass           # train() falls back to an older checkpoint and names the damage
    if saved is None:
        why = "does not exist" if not out.exists() else "holds no run (no config.json)"
        if "model" not in given:
            raise TrainError(f"cannot resume {out}: it {why}; check --out, or give --model (and "
                             f"the run's other settings) to start the run afresh")
        _err(f"minivae: {out} {why}; starting a new run with the settings given")
        return make_config(**given)
    known = make_config()
    saved = {k: v for k, v in saved.items() if k in known}
    return make_config(**resume_settings(saved, given, out))


def cmd_download(args):
    names = tuple(DATASETS) if args.dataset == "all" else (args.dataset,)
    failed = []
    for name in names:           # every dataset is tried, whatever happened to the others
        try:
            path = download(name, data_dir=args.data_dir,
                            mirrors=mirrors(name, extra=args.mirror), progress=True)
        except DownloadError as e:
            failed.append(e)
            continue
        say(f"{name}: {path}")
    if not failed:
        return 0
    full = bool(os.environ.get("MINIVAE_DEBUG"))
    for e in failed:
        for line in e.lines(full=full):
            _err(f"minivae: {line}")
    count = sum(len(e.failures) for e in failed)
    hints = [e.hint for e in failed if e.hint][:1]
    if not full:
        hints.append("MINIVAE_DEBUG=1 lists every source tried")
    _err(f"minivae: error: {count} file(s) of {', '.join(e.dataset for e in failed)} could not "
         f"be downloaded ({'; '.join(hints)})")
    return 1


def cmd_evaluate(args):
    r = evaluate_run(args.run, epoch=args.epoch, iw_samples=args.iw_samples,
                     backend=args.backend, limit=args.limit, data_dir=args.data_dir,
                     mirrors=args.mirror, download=False if args.no_download else None,
                     log=_err, progress=True, verbose=args.verbose)
    print(f"{r['model']} VAE, epoch {r['epoch']}, {r['images']} {r['dataset']} test images, "
          f"backend {r['backend']}")
    print(f"negative ELBO          {r['neg_elbo']:10.4f} nats/image  (mean over the "
          f"{r['iw_samples']} samples)")
    print(f"-log p(x), IWAE K={r['iw_samples']:<5d} {r['neg_log_px']:10.4f} nats/image")
    lat = r["latent"]
    print(f"\nlatent dimensions (KL: nats per image; active: Var over the images of the "
          f"posterior mean > {ACTIVE_VARIANCE})")
    print(f"{'dim':>4} {'KL':>10} {'Var mean':>10}  active")
    for i, (kl, var, on) in enumerate(zip(lat["kl"], lat["mean_var"], lat["active"])):
        print(f"{i:>4} {kl:10.4f} {var:10.4f}  {'yes' if on else 'no'}")
    print(f"active units: {lat['active_units']} of {len(lat['kl'])}")
    return 0


def cmd_plot(args):
    files = plot_run(args.run, epoch=args.epoch, backend=args.backend, data_dir=args.data_dir,
                     mirrors=args.mirror, limit=args.limit,
                     download=False if args.no_download else None,
                     traverse_image=args.traverse_image, interpolate=args.interpolate,
                     traverse_range=tuple(args.traverse_range), log=print, warn=_err,
                     verbose=args.verbose)
    shown = [f.name for f in files if not f.name.startswith(("test-image-", "reconstruction-"))]
    print(f"minivae: wrote {', '.join(shown)} and test-image-<i>.png / reconstruction-<i>.png "
          f"in {args.run}")
    return 0


def cmd_gradcheck(args):
    status = gradcheck.run_cli(args)
    if args.statistical:
        status = max(status, statcheck.run_cli(args.backend))
    return status


def cmd_bench(args):
    models = tuple(dict.fromkeys(args.model)) if args.model else tuple(MODELS)
    report = bench.run(models, backend=args.backend, impl=args.impl, dtype=args.dtype,
                       batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                       gemm_size=args.gemm_size, threads=args.threads, log=_err)
    if args.backend == "auto":
        _err(f"minivae: backend: {report['backend']}")
    print(json.dumps(report, indent=2) if args.json else bench.format_text(report))
    return 0


# -- entry point --------------------------------------------------------------------------

# Exceptions whose message is written for the user: shown as they are, on one line.
KNOWN_ERRORS = (BackendError, TrainError, IDXError, DownloadError)


def _one_line(e):
    text = " ".join(str(e).split())
    return text or type(e).__name__


def _error_message(e):
    """The one line that describes exception e to the user."""
    if isinstance(e, DownloadError):
        first = e.lines()[0]
        more = f" (and {len(e.failures) - 1} more file(s) failed)" if len(e.failures) > 1 else ""
        return first + more + (f"; {e.hint}" if e.hint else "")
    if isinstance(e, files.DiskFull):
        return str(e)
    if isinstance(e, OSError) and e.filename and e.strerror:
        return f"{e.filename}: {e.strerror}"
    if isinstance(e, KNOWN_ERRORS + (OSError, ValueError)):
        return _one_line(e)
    if isinstance(e, MemoryError):
        return "out of memory (try a smaller --batch-size)"
    if isinstance(e, ModuleNotFoundError) and e.name:
        return (f"the Python package {e.name!r} is missing from {sys.executable}: install "
                f"minivae's dependencies (`pip install -e .` in the checkout)")
    return (f"unexpected {type(e).__name__}: {_one_line(e)} "
            f"(set MINIVAE_DEBUG=1 for the traceback)")


def _resume_hint(args, when=""):
    """How an interrupted or failed training run continues (empty for other commands)."""
    run = getattr(args, "run_folder", None)
    if run is None:
        return ""
    found = list_checkpoints(run)
    if not found:
        return "; no checkpoint was written yet"
    return f"; {when}`minivae train --resume --out {run}` continues after epoch {found[-1][0]}"


class Terminated(KeyboardInterrupt):
    """SIGTERM (what a job scheduler sends), raised where the program is, so that it unwinds
    and cleans up exactly as Ctrl-C does."""


def _on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)     # a second SIGTERM ends the process at once
    raise Terminated()


def main(argv=None):
    """Run the command line `argv` (default sys.argv[1:]); returns the exit status."""
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:            # not the main thread: leave signals alone
        previous = None
    try:
        status = _main(argv)
        sys.stdout.flush()        # a closed pipe shows here, not as a warning at exit
        return status
    except BrokenPipeError:       # stdout's reader has gone (`minivae ... | head`): end quietly
        silence_stdout()
        return 128 + signal.SIGPIPE
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(argv):
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except UsageError as e:
        _err(f"{PROG}: error: {_one_line(e)}")
        return 2
    except SystemExit as e:          # --help / --version
        return e.code if isinstance(e.code, int) else 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as e:
        files.remove_live()
        terminated = isinstance(e, Terminated)
        _err(f"{PROG}: interrupted{' (SIGTERM)' if terminated else ''}{_resume_hint(args)}")
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    except BrokenPipeError:
        raise
    except Exception as e:
        files.remove_live()
        if os.environ.get("MINIVAE_DEBUG"):
            raise
        hint = _resume_hint(args, "once there is space, ") if isinstance(e, files.DiskFull) \
            else ""
        _err(f"{PROG}: error: {_error_message(e)}{hint}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
