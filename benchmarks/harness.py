"""What the benchmark scripts share: errors and argument types, the machine and the BLAS kernels
each library runs, and printing a report as text, JSON or markdown."""

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys

CORETYPE_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class BenchError(Exception):
    """A problem the user can fix (no PyTorch, no data, ...); the message says what."""


def at_least(low):
    """An argparse type: an integer >= low."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value
    return parse


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line, not the usage text."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def output_arguments(p):
    """--json / --markdown: how main() prints the report."""
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the whole report as JSON")
    out.add_argument("--markdown", action="store_true",
                     help="print the table for BENCHMARKS.md, with the command line")


def emit(report, args, format_text, format_markdown=None):
    """Print the report as the --json / --markdown flags ask (text otherwise)."""
    if args.json:
        print(json.dumps(report, indent=2))
    elif getattr(args, "markdown", False) and format_markdown is not None:
        print(format_markdown(report))
    else:
        print(format_text(report))


def thread_env(threads, environ=None):
    """An environment: ours, with every thread-count variable set to `threads`
    (OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE pass through as they are)."""
    env = dict(os.environ if environ is None else environ)
    env.update({k: str(threads) for k in THREAD_VARS})
    return env


def coretype_note(environ, argv, script="epoch_time.py"):
    """One line when OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are set, else None."""
    found = [f"{k}={environ[k]}" for k in CORETYPE_VARS if k in environ]
    if not found:
        return None
    return (f"note: {' and '.join(found)} set in the environment: NumPy's OpenBLAS runs the "
            f"kernels named there, not the ones it picks for this CPU; for the machine's own, "
            f"run: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/" + script
            + "".join(" " + shlex.quote(a) for a in argv))


def probe_main(threads):
    """Entry point of the probe child: prints the BLAS kernels NumPy and PyTorch run, as JSON."""
    import re

    import numpy

    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        threadpool_info = None

    def pools(skip=()):
        if threadpool_info is None:
            return [{"error": "threadpoolctl is not installed"}]
        keys = ("user_api", "internal_api", "version", "architecture", "threading_layer",
                "num_threads", "filepath")
        return [{k: p.get(k) for k in keys} for p in threadpool_info()
                if p["filepath"] not in skip]

    numpy_pools = pools()
    out = dict(numpy=numpy.__version__, numpy_pools=numpy_pools, torch=None)
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(threads)
        config = torch.__config__.show()
        blas = re.search(r"BLAS_INFO=(\w+)", config)
        out.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                   torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
                   torch_blas=blas.group(1) if blas else None,
                   torch_mkldnn=torch.backends.mkldnn.is_available(),
                   torch_pools=pools({p.get("filepath") for p in numpy_pools}))
    print(json.dumps(out))


def probe_kernels(threads, env):
    """The BLAS kernels NumPy and PyTorch run in a fresh process with environment env."""
    proc = subprocess.run([sys.executable, __file__, str(threads)], env=env, text=True,
                          capture_output=True)
    if proc.returncode:
        raise BenchError(f"the kernel probe failed: {proc.stderr.strip()[-300:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def kernels_line(k):
    """'numpy 2.4.0: openblas 0.3.31 SkylakeX, 2 threads; torch 2.13.0: mkl BLAS, AVX512, ...'."""
    def pool_text(p):
        if "error" in p:
            return p["error"]
        name = " ".join(str(p[k]) for k in ("internal_api", "version", "architecture") if p.get(k))
        return f"{name}, {_threads(p['num_threads'])}"

    np_text = "; ".join(pool_text(p) for p in k["numpy_pools"]) or "no BLAS found"
    text = f"numpy {k['numpy']}: {np_text}"
    if k.get("torch"):
        th = "; ".join(pool_text(p) for p in k["torch_pools"])
        text += (f" | torch {k['torch']}: {k['torch_blas'] or '?'} BLAS, "
                 f"{k['torch_cpu_capability']} kernels"
                 + (", oneDNN" if k["torch_mkldnn"] else "")
                 + f", {_threads(k['torch_threads'])}" + (f" ({th})" if th else ""))
    return text


def _plural(n, word):
    return f"{n} {word}" + ("" if n == 1 else "s")


def _threads(n):
    return _plural(n, "thread")


def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def revision(root):
    """`git describe` of the timed checkout (None outside git)."""
    try:
        proc = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                              capture_output=True, text=True)
    except OSError:
        return None
    return proc.stdout.strip() or None


def load_average():
    try:
        return list(os.getloadavg())
    except OSError:
        return None




if __name__ == "__main__":          # the kernel probe: python harness.py THREADS
    probe_main(int(sys.argv[1]))
