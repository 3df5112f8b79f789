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
import re
import os
import signal
import sys

from minivae import __version__, bench, files, gradcheck, signals, statcheck, threads
from minivae.flags import (backend_arg, data_args, impl_arg, no_download_arg, non_negative_float,
                           non_negative_int, positive_float, positive_int, saved_run_args,
                           seed_defaults, threads_arg, within)
from minivae.backend import BackendError
from minivae.config import CUDA_GRAPH, DTYPES, RECON_FROM, SETTINGS, make_config
from minivae.optim import OPTIMIZERS
from minivae.download import DATASETS, DownloadError, download, mirrors
from minivae.errors import TrainError
from minivae.evaluate import ACTIVE_VARIANCE, evaluate_run
from minivae.idx import IDXError
from minivae.models import MODELS
from minivae.progress import say, silence_stdout
from minivae.report import report_path, write_report
from minivae.run import RunFolder, resume_command, resume_config
from minivae.train import train
from minivae.visualise import plot_run

PROG = "minivae"
TRAVERSE_LIMIT = 10.0     # prior standard deviations: far past anything the decoder was trained on


NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$",
                             re.IGNORECASE)


class UsageError(Exception):
    """A malformed command line (exit status 2)."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line (`minivae: error: ...`), not usage,
    and takes no abbreviations (`--epoch 3` is not `--epochs 3`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)
        # `-inf`, `-1e3` are values, not options (argparse knows only -12 and -1.5), so that
        # `--traverse-range -inf inf` reaches its type check and is refused for what it is
        self._negative_number_matcher = NEGATIVE_NUMBER

    def error(self, message):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _err(msg):
    print(msg, file=sys.stderr, flush=True)


# -- train ----------------------------------------------------------------------------------

TRAIN_DESCRIPTION = ("Train a VAE. Unset flags take the seed's defaults for the model: "
                     + "; ".join(
    f"{name} -> " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in spec.defaults.items())
    for name, spec in MODELS.items()) + ".")


def train_arguments(p):
    # Every setting defaults to None ("not given"): --resume takes the run's own settings for
    # those, and checks the given ones against them.
    p.add_argument("--model", choices=tuple(MODELS), help="; ".join(
        f"{name}: {spec.help}" for name, spec in MODELS.items()) + " (default: mlp)")
    p.add_argument("--dataset", choices=tuple(DATASETS),
                   help="default: the model's seed's (" + ", ".join(
                       f"{spec.defaults['dataset']} for {name}" for name, spec in MODELS.items())
                   + ")")
    backend_arg(p, default=None)
    impl_arg(p, default=None)
    p.add_argument("--epochs", type=positive_int, help="number of epochs to train up to")
    p.add_argument("--batch-size", type=positive_int,
                   help=f"images per training step (default: the seed's, "
                        f"{seed_defaults('batch_size')})")
    p.add_argument("--lr", type=positive_float,
                   help="the optimizer's learning rate (default: the seed's, "
                        f"{seed_defaults('lr')})")
    p.add_argument("--optimizer", choices=tuple(OPTIMIZERS),
                   help="sgd (p -= lr g), momentum (v = 0.9 v - lr g; p += v) or adam (the "
                        "seeds'; default); fixed on --resume")
    p.add_argument("--beta", type=non_negative_float, help="weight of the KL term (default 1)")
    p.add_argument("--weight-decay", type=non_negative_float, metavar="LAMBDA",
                   help="weight of the L2 penalty LAMBDA * sum of squared parameters, added to "
                        "the loss (not AdamW's decoupled decay) (default 0.01)")
    p.add_argument("--latent-dim", type=positive_int,
                   help=f"dimensions of z (default: the seed's, {seed_defaults('latent_dim')})")
    p.add_argument("--hidden-dim", type=positive_int, help="width of the dense layers")
    p.add_argument("--seed", type=non_negative_int, help="random seed (default 0)")
    p.add_argument("--out", metavar="DIR", help="run folder (default: output/<model>-<dataset>)")
    data_args(p)
    no_download_arg(p)
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
    p.add_argument("--cuda-graph", choices=CUDA_GRAPH,
                   help="on CuPy with the gpu tier, capture the training step once in a CUDA "
                        "graph and replay it (auto, the default, where the capture works and "
                        "passes its check) or run it eagerly (off)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    threads_arg(p)


def cmd_train(args):
    given = {key: value for key, value in vars(args).items()
             if key in SETTINGS and value is not None}
    if args.mirror:
        given["mirrors"] = args.mirror
    if args.no_download:
        given["download"] = False
    if args.resume:
        cfg, note = resume_config(given)
        if note:
            _err(note)
    else:
        cfg = make_config(**given)
    if "log_every" in given and not cfg.tensorboard:
        _err("minivae: warning: --log-every sets the TensorBoard interval; without --tensorboard "
             "it has no effect")
    args.run_folder = cfg.out     # for the hint after an interruption or a full disk
    train(cfg, resume=args.resume, progress=not args.no_progress, verbose=args.verbose)
    say(f"minivae: run folder {cfg.out}")
    _mention_report(cfg.out)
    return 0


# -- download -------------------------------------------------------------------------------

def download_arguments(p):
    p.add_argument("--dataset", choices=tuple(DATASETS) + ("all",), default="all",
                   help="default: %(default)s")
    data_args(p)


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


# -- evaluate -------------------------------------------------------------------------------

def evaluate_arguments(p):
    saved_run_args(p, "evaluate on the first N test images")
    p.add_argument("--iw-samples", type=positive_int, default=100, metavar="K",
                   help="importance samples per image (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def cmd_evaluate(args):
    r = evaluate_run(args.run, epoch=args.epoch, iw_samples=args.iw_samples,
                     backend=args.backend, limit=args.limit, data_dir=args.data_dir,
                     mirrors=args.mirror, download=False if args.no_download else None,
                     log=_err, progress=True, verbose=args.verbose)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"{r['model']} VAE, epoch {r['epoch']}, {r['images']} {r['dataset']} test images, "
          f"backend {r['backend']}")
    print(f"negative ELBO          {r['neg_elbo']:10.4f} nats/image  (mean over the "
          f"{r['iw_samples']} samples)")
    print(f"-log p(x) <= IWAE K={r['iw_samples']:<4d} {r['neg_log_px']:10.4f} nats/image  (an "
          f"upper bound on -log p(x), tighter as K grows)")
    lat = r["latent"]
    print(f"\nlatent dimensions (KL: nats per image; active: Var over the images of the "
          f"posterior mean > {ACTIVE_VARIANCE})")
    print(f"{'dim':>4} {'KL':>10} {'Var mean':>10}  active")
    for i, (kl, var, on) in enumerate(zip(lat["kl"], lat["mean_var"], lat["active"])):
        print(f"{i:>4} {kl:10.4f} {var:10.4f}  {'yes' if on else 'no'}")
    print(f"active units: {lat['active_units']} of {len(lat['kl'])}")
    if r["images"] < 2:
        print("(one test image: the means have no variance over the images, so no unit can "
              "count as active; raise --limit)")
    return 0


# -- plot -----------------------------------------------------------------------------------

def plot_arguments(p):
    saved_run_args(p, "use the first N test images")
    p.add_argument("--traverse-image", type=non_negative_int, default=0, metavar="I",
                   help="traversals.png/.gif hold the other dimensions at the posterior mean of "
                        "test image I (default: %(default)s)")
    p.add_argument("--traverse-range", type=within(-TRAVERSE_LIMIT, TRAVERSE_LIMIT,
                                                   f"a finite number within ±{TRAVERSE_LIMIT:g}"),
                   nargs=2, default=(-3.0, 3.0), metavar=("LO", "HI"),
                   help="the values each dimension is swept over, in prior standard deviations "
                        "(default: -3 3)")
    p.add_argument("--manifold-range", type=within(-TRAVERSE_LIMIT, TRAVERSE_LIMIT,
                                                   f"a finite number within ±{TRAVERSE_LIMIT:g}"),
                   nargs=2, metavar=("LO", "HI"),
                   help="manifold.png decodes a grid over [LO, HI] on both axes (default: where "
                        "98%% of the test images' posterior means lie)")
    p.add_argument("--interpolate", type=non_negative_int, nargs=2, metavar=("I", "J"),
                   help="interpolation.png goes from test image I to test image J (default: "
                        "the first two test images of different classes)")
    p.add_argument("--out", metavar="DIR",
                   help="write the pictures into DIR instead of the run folder")


def cmd_plot(args):
    written = plot_run(args.run, epoch=args.epoch, backend=args.backend, data_dir=args.data_dir,
                       mirrors=args.mirror, limit=args.limit,
                       download=False if args.no_download else None,
                       traverse_image=args.traverse_image, interpolate=args.interpolate,
                       traverse_range=tuple(args.traverse_range), log=print, warn=_err,
                       verbose=args.verbose, out=args.out,
                       manifold_range=args.manifold_range and tuple(args.manifold_range))
    shown = [f.name for f in written if not f.name.startswith(("test-image-", "reconstruction-"))]
    print(f"minivae: wrote {', '.join(shown)} and test-image-<i>.png / reconstruction-<i>.png "
          f"(i: the test images' indices) in {args.out or args.run}")
    _mention_report(args.run)
    return 0


def _mention_report(run):
    path = report_path(run)
    if path is not None:
        say(f"minivae: report {path} (`minivae report {run}` brings it up to date)")


# -- report ---------------------------------------------------------------------------------

def report_arguments(p):
    saved_run_args(p, "use the first N test images")
    p.add_argument("--out", metavar="PATH",
                   help="write the page to PATH (a .html file, else a folder to write "
                        "report.html into) instead of RUN/report.html, e.g. for a run folder "
                        "that cannot be written")


def cmd_report(args):
    path = write_report(args.run, epoch=args.epoch, backend=args.backend, limit=args.limit,
                        data_dir=args.data_dir, mirrors=args.mirror,
                        download=False if args.no_download else None, log=_err,
                        verbose=args.verbose, out=args.out)
    say(f"minivae: wrote {path} ({path.stat().st_size / 1e6:.1f} MB): open it in a browser")
    return 0


# -- gradcheck (its flags are defined next to the checks) -------------------------------------

def gradcheck_arguments(p):
    gradcheck.add_arguments(p)
    threads_arg(p)
    p.add_argument("--statistical", action="store_true",
                   help="then the statistical checks (minivae.statcheck): KL against Monte "
                        "Carlo, the sampled std against each parametrisation, IWAE <= ELBO")


def cmd_gradcheck(args):
    status = gradcheck.run_cli(args)
    if args.statistical:
        status = max(status, statcheck.run_cli(args.backend))
    return status


# -- bench (its flags are defined next to the timing, and shared with benchmarks/) ------------

def cmd_bench(args):
    models = tuple(dict.fromkeys(args.model)) if args.model else tuple(MODELS)
    report = bench.run(models, backend=args.backend, impl=args.impl, dtype=args.dtype,
                       batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                       gemm_size=args.gemm_size, threads=args.threads, log=_err)
    if args.backend == "auto":
        _err(f"minivae: backend: {report['backend']}")
    print(json.dumps(report, indent=2) if args.json else bench.format_text(report))
    return 0


# name: (help, description or None, add the flags, handler)
COMMANDS = {
    "train": ("train a VAE (seed 000: --model mlp, seed 001: --model conv)", TRAIN_DESCRIPTION,
              train_arguments, cmd_train),
    "download": ("download a dataset into the cache and check it", None, download_arguments,
                 cmd_download),
    "evaluate": ("test negative ELBO and importance-weighted -log p(x)", None,
                 evaluate_arguments, cmd_evaluate),
    "plot": ("latent scatter, manifold, test reconstructions, latent traversals and an "
             "interpolation", None, plot_arguments, cmd_plot),
    "report": ("RUN_DIR/report.html: the run's metrics and pictures, and its latent space to "
               "explore in the browser", None, report_arguments, cmd_report),
    "gradcheck": ("finite-difference check of every layer's backward", None, gradcheck_arguments,
                  cmd_gradcheck),
    "bench": ("time training steps of a model on a backend", bench.DESCRIPTION,
              bench.add_arguments, cmd_bench),
}


def build_parser():
    parser = Parser(prog=PROG, description="Variational autoencoders on a from-scratch "
                                           "NumPy/CuPy engine.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name, (help_text, description, add_arguments, handler) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=description)
        add_arguments(p)
        p.set_defaults(func=handler)
    return parser


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
    found = RunFolder(run).checkpoints()
    if not found:
        return f"; no checkpoint was written yet: `{resume_command(run)}` starts it again from " \
               f"epoch 1"
    return f"; {when}`{resume_command(run)}` continues after epoch {found[-1][0]}"


def main(argv=None):
    """Run the command line `argv` (default sys.argv[1:]); returns the exit status."""
    restore_signals = signals.install()
    try:
        status = _main(argv)
        sys.stdout.flush()        # a closed pipe shows here, not as a warning at exit
        return status
    except BrokenPipeError:       # stdout's reader has gone (`minivae ... | head`): end quietly
        silence_stdout()
        return 128 + signal.SIGPIPE
    finally:
        restore_signals()


def _parse(parser, argv):
    """parser.parse_args, with an unknown option blamed on the sub-command it followed."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        prog = f"{PROG} {args.command}" if getattr(args, "command", None) else PROG
        raise UsageError(f"unrecognized arguments: {' '.join(extra)} (see `{prog} --help`)")
    return args


def _main(argv):
    try:
        parser = build_parser()
        args = _parse(parser, sys.argv[1:] if argv is None else argv)
    except UsageError as e:
        _err(f"{PROG}: error: {_one_line(e)}")
        return 2
    except SystemExit as e:          # --help / --version
        return e.code if isinstance(e.code, int) else 0
    try:
        if args.command in ("evaluate", "plot", "report", "gradcheck"):   # train: its config
            threads.apply(args.threads)
        return int(args.func(args) or 0)
    except KeyboardInterrupt as e:
        files.remove_live()
        terminated = isinstance(e, signals.Terminated)
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
