"""The batch pipeline: a split of a dataset as uint8 arrays, then float batches on a backend.

``load`` reads a split from the cache (fetching and verifying it first, minivae.download), and
``load_for`` the split a run's settings name;
``to_float``, ``batches`` and ``num_batches`` turn uint8 images on the host into float batches
in [0, 1] on the chosen backend, one batch at a time.
"""

import numpy as np

from minivae import download as fetch
from minivae.backend import make_rng, to_device
from minivae.idx import IDXError, read_idx


def load(dataset, split, data_dir=None, mirrors=None, limit=None, download=True, progress=True):
    """(images uint8 (N, 28, 28), labels uint8 (N,)) of a split ('train' or 'test').

    Fetches the split's two files first if they are missing or fail verification (download=True,
    mirrors as in `download`, progress bars and notes on stderr unless progress=False); the
    verified files have exactly the published shapes. With download=False the cached files are
    used as they are, unchecked, so any number N of 28x28 images will do (your own IDX files, or
    small synthetic ones in tests), and a missing file is a FileNotFoundError. limit keeps the
    first N examples. A cached file that passed verification but no longer reads cleanly is
    fetched again once.
    """
    info = fetch.check_dataset(dataset)
    if split not in fetch.SPLITS:
        raise ValueError(f"unknown split {split!r}; choose 'train' or 'test'")
    fnames = fetch.SPLITS[split]
    for attempt in range(2):
        if download:
            folder = fetch.ensure(dataset, fnames, data_dir, mirrors, progress, 30, 3, 0.5)
        else:
            folder = fetch.data_dir(data_dir) / dataset
            for f in fnames:
                if not (folder / f).is_file():
                    where = f" --data-dir {data_dir}" if data_dir is not None else ""
                    raise FileNotFoundError(
                        f"{folder / f} is missing; run `minivae download --dataset {dataset}"
                        f"{where}`, or give the folder that holds it with --data-dir")
        try:
            arrays = [read_idx(folder / f) for f in fnames]
            n = arrays[0].shape[0]
            for f, a in zip(fnames, arrays):
                expected = tuple(info["files"][f]["shape"])
                if not download:            # any count, but 28x28 images with a label each
                    expected = (n,) + expected[1:]
                if a.shape != expected:
                    raise IDXError(f"{folder / f}: shape {a.shape}, expected {expected}")
            break
        except IDXError:
            if not download or attempt == 1:
                raise
            # The stamp said "verified" but the file no longer reads: forget it and fetch again.
            fetch.forget(folder, fnames)
    images, labels = arrays
    if limit is not None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        images, labels = images[:limit], labels[:limit]
    return images, labels


def load_for(cfg, split, limit=None, progress=True):
    """A split of the dataset of run settings cfg (minivae.config.Config), from its data folder
    and --mirror sources (tried before the default ones); with cfg.download False the cached
    files are used as they are (no download, no checksum)."""
    return load(cfg.dataset, split, data_dir=cfg.data_dir,
                mirrors=fetch.mirrors(cfg.dataset, extra=cfg.mirrors), limit=limit,
                download=cfg.download, progress=progress)


def to_float(images, xp=np, dtype=np.float32, pad=0, flatten=False):
    """uint8 images (N, H, W) -> floats in [0, 1] on backend xp.

    Shape (N, 1, H + 2 pad, W + 2 pad), zeros in the border, or (N, (H + 2 pad) (W + 2 pad)) with
    flatten. Converted on the host in one go, then moved to the device in one transfer. The
    division runs in the target dtype, where IEEE division rounds v / 255 correctly: each value
    is the float64 quotient rounded to the dtype (tests/test_data.py checks all 256), in a
    sixth of a 256-entry table lookup's time (20 instead of 150 us for a batch of 128).
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
    dtype = np.dtype(dtype)
    return _laid_out(images, xp, dtype, pad, flatten,
                     lambda out: np.divide(images, dtype.type(255), out=out, dtype=dtype))


def lay_out(images, xp=np, dtype=np.float32, pad=0, flatten=False):
    """Float images already in [0, 1] (N, H, W), laid out as to_float lays out uint8 ones."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"expected images (N, H, W), got {images.shape}")
    return _laid_out(images, xp, np.dtype(dtype), pad, flatten,
                     lambda out: np.copyto(out, images, casting="unsafe"))


def _laid_out(images, xp, dtype, pad, flatten, fill):
    """(N, 1, H + 2 pad, W + 2 pad) of dtype, zeros in the border, the inside written by
    fill(view); flattened to (N, ...) with flatten; moved to xp in one transfer."""
    n, h, w = images.shape
    x = (np.zeros if pad else np.empty)((n, 1, h + 2 * pad, w + 2 * pad), dtype=dtype)
    fill(x[:, 0, pad:pad + h, pad:pad + w])
    if flatten:
        x = x.reshape(n, -1)
    return to_device(x, xp)


def num_batches(n, batch_size, drop_last):
    """How many batches `batches` yields for n examples."""
    return n // batch_size if drop_last else -(-n // batch_size)


def batches(images, labels=None, *, batch_size, xp=np, dtype=np.float32, rng=None, shuffle=True,
            drop_last=False, pad=0, flatten=False):
    """One epoch of (x, y) batches.

    x: floats in [0, 1] on backend xp (see `to_float` for shapes); y: the matching host uint8
    labels, or None without labels. The shuffle order is drawn from rng (a NumPy Generator, or a
    seed; None draws fresh entropy) once, when batches() is called, so a generator shared across
    epochs gives a new, reproducible order each epoch. drop_last=True yields full batches only.
    """
    images = np.asarray(images)
    n = len(images)
    if labels is not None and len(labels) != n:
        raise ValueError(f"{n} images but {len(labels)} labels")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    labels = None if labels is None else np.asarray(labels)
    order = make_rng(rng).permutation(n) if shuffle else np.arange(n)
    count = num_batches(n, batch_size, drop_last)

    def generate():
        for b in range(count):
            idx = order[b * batch_size:(b + 1) * batch_size]
            x = to_float(images[idx], xp, dtype, pad, flatten)
            y = None if labels is None else labels[idx]
            yield x, y

    return generate()
