"""Shared fixtures.

Training / CLI tests (issue 4):
  synthetic_data_dir  a data folder holding synthetic MNIST-shaped IDX files for both datasets,
                      written with write_idx; pass it with download=False (--no-download),
                      since synthetic files cannot match the real checksums.
  real_data_mirror    ../shared/data (a local mirror of the real files); skips when absent.

The GPU path without a GPU:
  standin             the CuPy stand-in (tests/standin) imported as `cupy` for one test and
                      taken out again after it; skips where real CuPy has a usable GPU (there
                      the GPU tests run instead). standin_env() puts it on a subprocess's path.
"""

import contextlib
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = ROOT.parent / "shared" / "data"
STANDIN = ROOT / "tests" / "standin"

# BLAS results depend on the thread count at float rounding, and minivae's default count depends
# on how busy the machine is (minivae.threads): the tests, which compare fresh runs bit for bit,
# run with one thread, in this process and in every minivae they start.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# The benchmark scripts (benchmarks/, not part of the installed package) are imported by their
# tests, and the PyTorch twin in benchmarks/twin.py by the parity tests.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_configure(config):
    """Stop at once, with one clear line, when minivae's own dependencies are missing (a bare
    interpreter rather than the README's virtual environment) instead of failing half the suite."""
    missing = []
    for module, package in (("PIL", "pillow"), ("matplotlib", "matplotlib"), ("tqdm", "tqdm"),
                            ("requests", "requests")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        pytest.exit(f"minivae's dependencies are missing here ({', '.join(missing)}): run the "
                    f"README's test command, which installs them ('pip install -e .[test]')",
                    returncode=4)


def synthetic_images(n, seed):
    """n 28x28 uint8 images in 10 classes: a Gaussian blob whose place and width depend on the
    class, at one of five brightness levels. Learnable in a few hundred steps, compressible."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    protos = []
    for k in range(10):
        cy, cx, r = 8 + (k % 3) * 6, 8 + (k // 3) * 4, 3 + k % 4
        protos.append(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * r * r)))
    protos = np.array(protos)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    level = rng.integers(6, 11, n) / 10.0
    images = (protos[labels] * level[:, None, None] * 255).astype(np.uint8)
    return images, labels


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory):
    from minivae.idx import write_idx

    root = tmp_path_factory.mktemp("synthetic-data")
    train_x, train_y = synthetic_images(3000, 1)    # loaded with download=False: any count
    test_x, test_y = synthetic_images(1000, 2)
    first = root / "mnist"
    first.mkdir()
    write_idx(first / "train-images-idx3-ubyte.gz", train_x)
    write_idx(first / "train-labels-idx1-ubyte.gz", train_y)
    write_idx(first / "t10k-images-idx3-ubyte.gz", test_x)
    write_idx(first / "t10k-labels-idx1-ubyte.gz", test_y)
    shutil.copytree(first, root / "fashion-mnist")
    return root


@pytest.fixture(scope="session")
def real_data_mirror():
    if not (REAL_DATA / "fashion-mnist" / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real FashionMNIST not found under {REAL_DATA}")
    return REAL_DATA


def real_gpu_usable():
    from minivae.backend import cupy_status

    return cupy_status()[0] is not None


@contextlib.contextmanager
def standin_modules():
    """The CuPy stand-in imported as `cupy` (and `cupyx`) inside the block; whatever `cupy` was
    imported before (real CuPy, or none) is put back after it."""
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] in
             ("cupy", "cupyx")}
    sys.path.insert(0, str(STANDIN))
    try:
        import cupy
        assert cupy.__file__.startswith(str(STANDIN))
        cupy.standin.reset()
        yield cupy
    finally:
        sys.path.remove(str(STANDIN))
        for k in [k for k in sys.modules if k.split(".")[0] in ("cupy", "cupyx")]:
            del sys.modules[k]
        sys.modules.update(saved)


@pytest.fixture
def standin():
    """The CuPy stand-in as `cupy` (and `cupyx`) for the duration of one test."""
    if real_gpu_usable():
        pytest.skip("CuPy has a usable GPU here: the stand-in is for machines without one")
    with standin_modules() as cupy:
        yield cupy


def standin_env(environ=None):
    """An environment whose Python finds the stand-in as `cupy` (for `minivae` subprocesses)."""
    import os

    env = dict(os.environ if environ is None else environ)
    env["PYTHONPATH"] = os.pathsep.join([str(STANDIN), str(ROOT)] + (
        [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def minivae_on_standin(*args, check=True):
    """`bin/minivae ARGS` in a subprocess that finds the CuPy stand-in as `cupy` (exit status 0
    asserted unless check is False)."""
    import subprocess

    p = subprocess.run([sys.executable, str(ROOT / "bin" / "minivae"), *map(str, args)],
                       capture_output=True, text=True, env=standin_env(), cwd=ROOT, timeout=600)
    if check:
        assert p.returncode == 0, p.stderr
    return p
