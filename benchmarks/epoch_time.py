#!/usr/bin/env python
"""Seconds per training epoch: `minivae train` against a plain PyTorch loop of the same model.

    python benchmarks/epoch_time.py                        # both models, 3 epochs, 3 rounds
    python benchmarks/epoch_time.py --models conv --rounds 5 --json
    python benchmarks/epoch_time.py --markdown             # BENCHMARKS.md's headline table
    git worktree add /tmp/old REV && python benchmarks/epoch_time.py --minivae-root /tmp/old

What a user waits for. For each model, `--rounds` rounds of two fresh processes, A then B:

  A  <root>/bin/minivae train --model M --epochs E --backend numpy ... --no-progress: the
     program as a user runs it on the CPU, its data pipeline and all. Its metrics.csv holds each
     epoch's `seconds` (the wall time of the epoch's training steps, batching included; not the
     test ELBO, plots or checkpoint).
  B  benchmarks/torch_train.py: the same model (the PyTorch twin of minivae's, same seed, so the
     same Glorot init), the same images from the same cache, preprocessing, batch size, per-epoch
     shuffling, drop-last rule, learning rate, Adam and objective, as a plain PyTorch loop timed
     the same way.

Alternating A B A B lets a slow spell of the machine hit both libraries. Each process's number is
the median over its epochs 2..E (epoch 1 pays for first touches: page faults, thread pools,
caches); each library's is the median of those over rounds; the ratio is minivae / PyTorch.
Both get `--threads` threads (default: every core this process may run on), through
OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / MKL_NUM_THREADS in their environment and
torch.set_num_threads. A probe process with the same environment reports which BLAS kernels each
library runs. The data cache (`--data-dir`) is filled once by `minivae download` and reused.

OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, when set, make NumPy's OpenBLAS use the kernels they name
instead of the ones it would pick for this CPU. The script never changes them: it says so and
gives the command line that runs without them.
"""

import argparse
import csv
import importlib.util
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from benchmarks import torch_train  # noqa: E402  (imports neither torch nor minivae until asked)
from benchmarks.harness import (CORETYPE_VARS, BenchError, Parser, _plural, _threads,  # noqa: E402
                                at_least, coretype_note, emit, kernels_line, load_average,
                                output_arguments, probe_kernels, revision, thread_env,
                                usable_cores)
from benchmarks.torch_train import model_names  # noqa: E402
from minivae.bench import cpu_model  # noqa: E402

PROG = "epoch_time"
DATASET_NAMES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


# --------------------------------------------------------------------------------------------
# Arithmetic


def steady_median(seconds):
    """Median of a process's epoch seconds over epochs 2 and later (epoch 1 is warm-up)."""
    if len(seconds) < 2:
        raise BenchError(f"need at least 2 epochs per process, got {len(seconds)}")
    return statistics.median(seconds[1:])


def summarize(rounds):
    """rounds: [{"minivae": {"seconds": [...]}, "torch": {"seconds": [...]}}, ...] ->
    each round's steady median per library, the median over rounds, and the ratio."""
    per = {lib: [steady_median(r[lib]["seconds"]) for r in rounds] for lib in ("minivae", "torch")}
    mv, th = statistics.median(per["minivae"]), statistics.median(per["torch"])
    return dict(minivae_s=mv, torch_s=th, ratio=mv / th, minivae_rounds_s=per["minivae"],
                torch_rounds_s=per["torch"], rounds=len(rounds))


def read_metrics(path):
    """{"seconds": [...], "train_loss": [...]} in epoch order, from a run's metrics.csv."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise BenchError(f"cannot read {path}: {e.strerror or e}") from None
    if not rows or not {"epoch", "seconds", "train_loss"} <= set(rows[0]):
        raise BenchError(f"{path} has no epoch rows with 'epoch', 'seconds' and 'train_loss'")
    rows.sort(key=lambda r: int(r["epoch"]))
    return {"seconds": [float(r["seconds"]) for r in rows],
            "train_loss": [float(r["train_loss"]) for r in rows]}


# --------------------------------------------------------------------------------------------
# The child processes


def minivae_command(root, model, epochs, out, mirror, data_dir, impl=None, limit=None):
    """Process A: `minivae train` of the checkout at `root`, run by this interpreter."""
    cmd = [sys.executable, str(Path(root) / "bin" / "minivae"), "train", "--model", model,
           "--epochs", str(epochs), "--out", str(out), "--mirror", str(mirror),
           "--data-dir", str(data_dir), "--backend", "numpy", "--no-progress"]
    if impl is not None:            # only when asked: older revisions have no --impl
        cmd += ["--impl", impl]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    return cmd


def torch_command(model, epochs, mirror, data_dir, threads, limit=None):
    """Process B: benchmarks/torch_train.py, run by this interpreter."""
    cmd = [sys.executable, str(HERE / "torch_train.py"), "--model", model, "--epochs",
           str(epochs), "--mirror", str(mirror), "--data-dir", str(data_dir), "--threads",
           str(threads)]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    return cmd


def download_command(root, dataset, mirror, data_dir):
    """Fills the cache before any timing, with the timed checkout's own downloader."""
    return [sys.executable, str(Path(root) / "bin" / "minivae"), "download", "--dataset",
            dataset, "--mirror", str(mirror), "--data-dir", str(data_dir)]


def run_child(cmd, env, what, log_dir):
    """Run one child to completion; on failure write its output to log_dir and raise."""
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, cwd=ROOT)
    if proc.returncode != 0:
        log = Path(log_dir) / (what.replace(" ", "-").replace(",", "") + ".log")
        log.write_text(f"$ {shlex.join(cmd)}\n\n--- stdout\n{proc.stdout}\n--- stderr\n"
                       f"{proc.stderr}")
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else "(no message)"
        raise BenchError(f"{what} failed (exit {proc.returncode}): {last} [log: {log}]")
    return proc


# --------------------------------------------------------------------------------------------
# Machine and kernels


# --------------------------------------------------------------------------------------------
# The benchmark


def check_inputs(args):
    """Fail before any timing, with one line, on what cannot work."""
    if importlib.util.find_spec("torch") is None:
        raise BenchError(f"PyTorch is not installed in {sys.executable}; the benchmark trains "
                         f"the same model with it (pip install torch)")
    if not (args.minivae_root / "bin" / "minivae").is_file():
        raise BenchError(f"--minivae-root {args.minivae_root}: no bin/minivae there")
    if not args.mirror.startswith(("http://", "https://", "file://")) \
            and not Path(args.mirror).exists():
        for model in args.models:
            dataset = torch_train.seed_settings(model)["dataset"]
            cached = Path(args.data_dir) / dataset
            if not (cached.is_dir() and any(cached.iterdir())):
                raise BenchError(f"no {dataset} data: the mirror folder {args.mirror} does not "
                                 f"exist and the cache {cached} is empty (pass --mirror)")


def model_label(settings):
    label = DATASET_NAMES.get(settings["dataset"], settings["dataset"])
    if settings["pad"]:
        side = 28 + 2 * settings["pad"]
        label += f" {side}×{side}"
    return f"{settings['model']}: {label}, batch {settings['batch_size']}"


def run_benchmark(args, argv, log):
    check_inputs(args)
    env = thread_env(args.threads)
    work = Path(tempfile.mkdtemp(prefix="minivae-epoch-time-"))
    report = dict(
        command="python benchmarks/epoch_time.py" + "".join(" " + shlex.quote(a) for a in argv),
        settings=dict(models=args.models, epochs=args.epochs, rounds=args.rounds,
                      threads=args.threads, limit=args.limit, impl=args.impl,
                      minivae_root=str(args.minivae_root),
                      minivae_revision=revision(args.minivae_root), mirror=args.mirror,
                      data_dir=str(args.data_dir)),
        machine=dict(cpu=cpu_model(), cores=os.cpu_count(), usable_cores=usable_cores(),
                     python=platform.python_version(), platform=platform.platform(),
                     load_average_start=load_average()),
        openblas_env={k: os.environ[k] for k in CORETYPE_VARS if k in os.environ},
        environment_note=coretype_note(os.environ, argv), results=[])
    load = report["machine"]["load_average_start"]
    if load and load[0] > 0.5 * usable_cores():
        log(f"note: load average {load[0]:.2f} on {usable_cores()} cores: other processes are "
            f"running, so the timings will be noisy")
    failed = False
    try:
        report["kernels"] = probe_kernels(args.threads, env)
        datasets = {torch_train.seed_settings(m)["dataset"] for m in args.models}
        for dataset in sorted(datasets):
            log(f"preparing {dataset} in {args.data_dir} ...")
            run_child(download_command(args.minivae_root, dataset, args.mirror, args.data_dir),
                      env, f"minivae download {dataset}", work)
        for model in args.models:
            settings = torch_train.seed_settings(model)
            rounds = []
            for r in range(1, args.rounds + 1):
                out = work / f"{model}-round{r}"
                t0 = time.perf_counter()
                run_child(minivae_command(args.minivae_root, model, args.epochs, out, args.mirror,
                                          args.data_dir, args.impl, args.limit),
                          env, f"minivae train {model} round {r}", work)
                mv = read_metrics(out / "metrics.csv")
                proc = run_child(torch_command(model, args.epochs, args.mirror, args.data_dir,
                                               args.threads, args.limit),
                                 env, f"torch_train {model} round {r}", work)
                th = json.loads(proc.stdout.strip().splitlines()[-1])
                rounds.append({"minivae": mv, "torch": th})
                log(f"{model} round {r}/{args.rounds}: minivae {steady_median(mv['seconds']):.3f}"
                    f" s/epoch, PyTorch {steady_median(th['seconds']):.3f} s/epoch (train loss "
                    f"after epoch {args.epochs}: minivae {mv['train_loss'][-1]:.2f}, PyTorch "
                    f"{th['train_loss'][-1]:.2f}; {time.perf_counter() - t0:.0f}s)")
            result = dict(model=model, label=model_label(settings), dataset=settings["dataset"],
                          batch_size=settings["batch_size"], lr=settings["lr"],
                          drop_last=settings["drop_last"],
                          images=rounds[0]["torch"]["images"],
                          steps_per_epoch=rounds[0]["torch"]["steps_per_epoch"], runs=rounds)
            result.update(summarize(rounds))
            report["results"].append(result)
    except BaseException:
        failed = True
        raise
    finally:
        report["machine"]["load_average_end"] = load_average()
        if args.keep or failed:
            log(f"run folders and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return report


# --------------------------------------------------------------------------------------------
# Output


def _epochs_text(report):
    e = report["settings"]["epochs"]
    return "epoch 2" if e == 2 else f"epochs 2-{e}"


def format_text(report):
    s, m = report["settings"], report["machine"]
    lines = [f"{'model':<36} {'minivae s/epoch':>15} {'PyTorch s/epoch':>15} {'ratio':>6} "
             f"{'rounds':>6}"]
    for r in report["results"]:
        lines.append(f"{r['label']:<36} {r['minivae_s']:>15.3f} {r['torch_s']:>15.3f} "
                     f"{r['ratio']:>6.2f} {r['rounds']:>6}")
        lines.append(f"{'':<4}per round: minivae "
                     + " ".join(f"{v:.3f}" for v in r["minivae_rounds_s"])
                     + ", PyTorch " + " ".join(f"{v:.3f}" for v in r["torch_rounds_s"])
                     + f"; {r['images']} images, {r['steps_per_epoch']} steps per epoch")
    lines += [
        "",
        f"median over {_epochs_text(report)} of each fresh process, then over rounds; "
        f"{_threads(s['threads'])} each" + (f"; --limit {s['limit']}" if s["limit"] else ""),
        f"machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable); Python "
        f"{m['python']}; load average {_load(m['load_average_start'])} at the start, "
        f"{_load(m['load_average_end'])} at the end",
        f"kernels: {kernels_line(report['kernels'])}",
        f"minivae: {s['minivae_root']}"
        + (f" at {s['minivae_revision']}" if s["minivae_revision"] else "")
        + (f", --impl {s['impl']}" if s["impl"] else ""),
    ]
    if report["environment_note"]:
        lines.append(report["environment_note"])
    return "\n".join(lines)


def _load(values):
    return "?" if values is None else " ".join(f"{v:.2f}" for v in values)


def format_markdown(report):
    """The table, then one paragraph each: what was timed, the machine, the command."""
    s, m = report["settings"], report["machine"]
    table = ["| model | minivae s/epoch | PyTorch s/epoch | ratio | rounds |",
             "|---|---:|---:|---:|---:|"]
    for r in report["results"]:
        table.append(f"| {r['label']} | {r['minivae_s']:.2f} | {r['torch_s']:.2f} | "
                     f"{r['ratio']:.2f} | {r['rounds']} |")
    prose = [
        f"Seconds per training epoch (its steps and its batch pipeline), median over "
        f"{_epochs_text(report)} of each fresh process, then over {_plural(s['rounds'], 'round')} "
        f"alternating `minivae train` and a plain PyTorch loop of the same model; "
        f"{_threads(s['threads'])} each"
        + (f"; the first {s['limit']} images" if s["limit"] else "") + ".",
        f"Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}; "
        f"{kernels_line(report['kernels'])}"
        + (f"; minivae {s['minivae_revision']}" if s["minivae_revision"] else "")
        + (f" with --impl {s['impl']}" if s["impl"] else "") + ".",
    ]
    if report["openblas_env"]:
        found = " ".join(f"{k}={v}" for k, v in report["openblas_env"].items())
        prose.append(f"Environment: {found} (NumPy's OpenBLAS ran the kernels named there).")
    prose.append(f"Command: `{report['command']}`")
    return "\n".join(table) + "\n\n" + "\n\n".join(prose)


# --------------------------------------------------------------------------------------------
# Command line


def model_list(text):
    models = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in models if m not in model_names()]
    if bad or not models:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(model_names())} "
                                         f"(comma-separated), "
                                         f"got {text!r}")
    return list(dict.fromkeys(models))


def parse_args(argv):
    p = Parser(prog=PROG, description=__doc__.split("\n\n")[0],
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=model_list, default=list(model_names()),
                   help="comma-separated, from mlp,conv (default: both)")
    p.add_argument("--epochs", type=at_least(2), default=3,
                   help="epochs per process; epoch 1 is not counted (default: %(default)s)")
    p.add_argument("--rounds", type=at_least(1), default=3,
                   help="A B rounds per model (default: %(default)s)")
    p.add_argument("--threads", type=at_least(1), default=usable_cores(),
                   help="threads for both libraries (default: the usable cores, %(default)s)")
    p.add_argument("--limit", type=at_least(1), metavar="N",
                   help="only the first N training (and test) images: smoke runs")
    p.add_argument("--minivae-root", type=lambda t: Path(t).resolve(), default=ROOT,
                   metavar="DIR", help="the checkout whose bin/minivae is timed "
                                       "(default: this one, %(default)s)")
    p.add_argument("--impl", help="passed to minivae train as --impl (only when given)")
    p.add_argument("--mirror", default=str(torch_train.DEFAULT_MIRROR),
                   help="where the data cache is filled from (default: %(default)s)")
    p.add_argument("--data-dir", type=lambda t: Path(t).resolve(),
                   default=torch_train.DEFAULT_DATA_DIR,
                   help="the data cache, reused between runs (default: %(default)s)")
    output_arguments(p)
    p.add_argument("--keep", action="store_true", help="keep the run folders")
    args = p.parse_args(argv)
    if not args.mirror.startswith(("http://", "https://", "file://")):
        args.mirror = str(Path(args.mirror).resolve())
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    note = coretype_note(os.environ, argv)
    if note:
        log(note)
    try:
        report = run_benchmark(args, argv, log)
    except BenchError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    emit(report, args, format_text, format_markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
