"""The `minivae` command: train, download, evaluate, plot, gradcheck, bench.

    minivae train --model conv --epochs 1          # seed 001 on FashionMNIST, one epoch
    minivae evaluate output/conv-fashion-mnist --iw-samples 100
    minivae plot output/conv-fashion-mnist

Any problem the user can fix ends with one line on stderr, `minivae: error: ...`, and exit
status 1 (2 for a malformed command line); never with a traceback (set MINIVAE_DEBUG=1 to see
one anyway).
"""

import argparse
import math
import os
import sys

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


BACKENDS = ("auto", "numpy", "cupy")
DATASETS = ("mnist", "fashion-mnist")


def _backend_arg(p, default="auto"):
    p.add_argument("--backend", choices=BACKENDS, default=default,
                   help="auto: CuPy when a GPU is usable, else NumPy (default: %(default)s)")


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


def build_parser():
    parser = Parser(prog=PROG, description="Variational autoencoders on a from-scratch "
                                           "NumPy/CuPy engine.")
    from minivae import __version__
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
    p.add_argument("--model", choices=("mlp", "conv"), default="mlp",
                   help="mlp (seed 000) or conv (seed 001) (default: %(default)s)")
    p.add_argument("--dataset", choices=DATASETS, help="default: mnist for mlp, fashion-mnist "
                                                        "for conv")
    _backend_arg(p)
    p.add_argument("--epochs", type=positive_int, help="number of epochs to train up to")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lr", type=positive_float, help="Adam learning rate")
    p.add_argument("--beta", type=non_negative_float, help="weight of the KL term (default 1)")
    p.add_argument("--weight-decay", type=non_negative_float, help="L2 penalty weight λ")
    p.add_argument("--latent-dim", type=positive_int)
    p.add_argument("--hidden-dim", type=positive_int, help="width of the dense layers (default: 500 for mlp, 256 for conv)")
    p.add_argument("--seed", type=non_negative_int, help="random seed (default 0)")
    p.add_argument("--out", metavar="DIR", help="run folder (default: output/<model>-<dataset>)")
    _data_args(p)
    _no_download_arg(p)
    p.add_argument("--limit", type=positive_int, metavar="N",
                   help="use only the first N training and N test images (quick runs)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest complete checkpoint in --out")
    p.add_argument("--sample-size", type=positive_int, metavar="S",
                   help="original.png / epoch_<N>.png / samples_<N>.png are S x S grids (default 10)")
    p.add_argument("--log-every", type=positive_int, metavar="STEPS",
                   help="TensorBoard logging interval in steps (default 10)")
    p.add_argument("--tensorboard", action="store_true",
                   help="write TensorBoard scalars to <out>/tensorboard (needs tensorboardX)")
    p.add_argument("--dtype", choices=("float32", "float64"), help="default: float32")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    # download --------------------------------------------------------------------------------
    p = sub.add_parser("download", help="download a dataset into the cache and check it")
    p.add_argument("--dataset", choices=DATASETS + ("all",), default="all",
                   help="default: %(default)s")
    _data_args(p)
    p.set_defaults(func=cmd_download)

    # evaluate --------------------------------------------------------------------------------
    p = sub.add_parser("evaluate", help="test negative ELBO and importance-weighted -log p(x)")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--epoch", type=positive_int, help="checkpoint to use (default: the newest)")
    p.add_argument("--iw-samples", type=positive_int, default=100, metavar="K",
                   help="importance samples per image (default: %(default)s)")
    _backend_arg(p)
    _data_args(p)
    _no_download_arg(p)
    p.add_argument("--limit", type=positive_int, metavar="N",
                   help="evaluate on the first N test images (default: as the run was trained)")
    p.set_defaults(func=cmd_evaluate)

    # plot ------------------------------------------------------------------------------------
    p = sub.add_parser("plot", help="latent scatter, manifold and test reconstructions")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--epoch", type=positive_int, help="checkpoint to use (default: the newest)")
    _backend_arg(p)
    _data_args(p)
    _no_download_arg(p)
    p.add_argument("--limit", type=positive_int, metavar="N",
                   help="use the first N test images (default: as the run was trained)")
    p.set_defaults(func=cmd_plot)

    # gradcheck and bench live in their own modules ------------------------------------------
    for name, helptext in (("gradcheck", "finite-difference check of every layer's backward"),
                           ("bench", "time training steps of a model on a backend")):
        p = sub.add_parser(name, help=helptext)
        try:
            module = __import__(f"minivae.{name}", fromlist=["run_cli"])
            module.add_arguments(p)
        except Exception as e:  # module missing or broken: keep the other sub-commands working
            p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            p.set_defaults(func=_unavailable(name, e))
        else:
            p.set_defaults(func=_delegate(name))
    return parser


def _delegate(name):
    def run(args):
        module = __import__(f"minivae.{name}", fromlist=["run_cli"])
        return module.run_cli(args)
    return run


def _unavailable(name, err):
    def run(args):
        raise CommandError(f"`{PROG} {name}` is not available in this installation "
                           f"({type(err).__name__}: {err})")
    return run


class CommandError(Exception):
    """A sub-command failed in a way the user can act on."""


# -- sub-commands -------------------------------------------------------------------------

def _err(msg):
    print(msg, file=sys.stderr, flush=True)


def cmd_train(args):
    from minivae import train as T

    cfg = T.make_config(args.model, dataset=args.dataset, epochs=args.epochs,
                        batch_size=args.batch_size, lr=args.lr, beta=args.beta,
                        weight_decay=args.weight_decay, latent_dim=args.latent_dim,
                        hidden_dim=args.hidden_dim, seed=args.seed, out=args.out,
                        data_dir=args.data_dir, mirrors=args.mirror, limit=args.limit,
                        download=not args.no_download,
                        sample_size=args.sample_size, log_every=args.log_every,
                        tensorboard=args.tensorboard, dtype=args.dtype, backend=args.backend)
    T.train(cfg, resume=args.resume, progress=not args.no_progress)
    print(f"minivae: run folder {cfg['out']}")
    return 0


def cmd_download(args):
    from minivae import data

    names = DATASETS if args.dataset == "all" else (args.dataset,)
    for name in names:
        path = data.download(name, data_dir=args.data_dir,
                             mirrors=data.mirrors(name, extra=args.mirror), progress=True)
        print(f"{name}: {path}")
    return 0


def cmd_evaluate(args):
    from minivae import train as T

    r = T.evaluate_run(args.run, epoch=args.epoch, iw_samples=args.iw_samples,
                       backend=args.backend, limit=args.limit, data_dir=args.data_dir,
                       mirrors=args.mirror, download=False if args.no_download else None,
                       log=_err, progress=True)
    print(f"{r['model']} VAE, epoch {r['epoch']}, {r['images']} {r['dataset']} test images, "
          f"backend {r['backend']}")
    print(f"negative ELBO          {r['neg_elbo']:10.4f} nats/image  (mean over the "
          f"{r['iw_samples']} samples)")
    print(f"-log p(x), IWAE K={r['iw_samples']:<5d} {r['neg_log_px']:10.4f} nats/image")
    return 0


def cmd_plot(args):
    from minivae import plots

    files = plots.plot_run(args.run, epoch=args.epoch, backend=args.backend,
                           data_dir=args.data_dir, mirrors=args.mirror, limit=args.limit,
                           download=False if args.no_download else None, log=print, warn=_err)
    shown = [f.name for f in files if not f.name.startswith(("test-image-", "reconstruction-"))]
    print(f"minivae: wrote {', '.join(shown)} and test-image-<i>.png / reconstruction-<i>.png "
          f"in {args.run}")
    return 0


# -- entry point --------------------------------------------------------------------------

def _known_errors():
    errors = [CommandError]
    from minivae.backend import BackendError
    errors.append(BackendError)
    try:
        from minivae.train import TrainError
        errors.append(TrainError)
    except Exception:
        pass
    try:
        from minivae import data
        errors += [data.IDXError, data.DownloadError]
    except Exception:
        pass
    return tuple(errors)


def _one_line(e):
    text = " ".join(str(e).split())
    return text or type(e).__name__


def _error_message(e):
    """The one line that describes exception e to the user."""
    lines = str(e).strip().splitlines()
    if type(e).__name__ == "DownloadError" and len(lines) > 1:   # one line per failed file
        return f"{lines[0]} (and {len(lines) - 1} more file(s) failed)"
    if isinstance(e, OSError) and e.filename and e.strerror:
        return f"{e.filename}: {e.strerror}"
    if isinstance(e, _known_errors() + (OSError, ValueError)):
        return _one_line(e)
    if isinstance(e, MemoryError):
        return "out of memory (try a smaller --batch-size)"
    if isinstance(e, ModuleNotFoundError) and e.name:
        return (f"the Python package {e.name!r} is missing from {sys.executable}: install "
                f"minivae's dependencies (`pip install -e .` in the checkout)")
    return (f"unexpected {type(e).__name__}: {_one_line(e)} "
            f"(set MINIVAE_DEBUG=1 for the traceback)")


def main(argv=None):
    """Run the command line `argv` (default sys.argv[1:]); returns the exit status."""
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
    except KeyboardInterrupt:
        _err(f"{PROG}: interrupted (a training run continues with --resume)")
        return 130
    except Exception as e:
        if os.environ.get("MINIVAE_DEBUG"):
            raise
        _err(f"{PROG}: error: {_error_message(e)}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
