"""`minivae plot RUN`: pictures of a saved run's model, drawn with minivae.plots.

clustering.png    the encoder means of the test set, coloured by label. A 2-D latent is shown as
                  is; a larger one is projected on the first two principal axes of those means.
manifold.png      decodes of an 11x11 grid over [-2, 2]^2 -- the latent plane itself for 2-D
                  latents, else the plane through the origin spanned by the same two axes.
test-image-<i>.png, reconstruction-<i>.png, test-vs-reconstruction.png
                  as seed 001's visualise: a shuffled batch of test images, their reconstructions
                  (i: the image's index in the test split, from 0, as --traverse-image counts).
traversals.png    one row per latent dimension, largest test KL first (printed at the row's
                  start): that dimension swept over --traverse-range in TRAVERSAL_STEPS steps,
                  the others at the posterior mean of test image --traverse-image.
traversals.gif    the same sweep animated, every row changing together, back and forth.
interpolation.png decodes along the straight line between the posterior means of two test
                  images, the two originals at the ends.
plotted.json      the epoch these pictures show and the files this command wrote: the next plot
                  into the folder removes those of them it does not write again.
Each picture names the epoch it shows. The image grids are scaled up SCALE times (nearest
neighbour) to be readable. --out writes them into another folder (a read-only run's, say).
"""

import json
from pathlib import Path

import numpy as np

from minivae import data, files
from minivae.backend import to_host
from minivae.errors import TrainError
from minivae.evaluate import decode_probs, latent_stats, noise, posterior_means, reconstruct
from minivae.run import PLOTTED, STREAM_VIS, load_run, stream_rng
from minivae.plots import (CLASS_NAMES, as_square_images, data_range, image_figure, image_grid,
                           latent_scatter, manifold_points, pca_2d, save_gif, save_png,
                           side_by_side, traversal_figure)

SCALE = 3                  # pixels per image pixel in manifold.png and interpolation.png
TRAVERSAL_STEPS = 11       # columns of traversals.png
INTERPOLATION_STEPS = 10   # decodes between (and including) the two posterior means


def pick_images(labels, traverse_image=0, interpolate=None):
    """Check the requested test images against the split's size, before anything is written:
    (traverse_image, (i, j)). The default pair: the first two test images of different classes
    (the first two when every image has the same class)."""
    n = len(labels)
    if not 0 <= traverse_image < n:
        raise TrainError(f"--traverse-image {traverse_image} is out of range: the test split "
                         f"has {n} images (0..{n - 1})")
    if interpolate is None:
        if n < 2:
            raise TrainError("interpolation.png needs two test images; the test split has 1")
        other = np.flatnonzero(labels != labels[0])
        interpolate = (0, int(other[0]) if len(other) else 1)
    i, j = interpolate
    for k in (i, j):
        if not 0 <= k < n:
            raise TrainError(f"--interpolate {i} {j}: {k} is out of range: the test split has "
                             f"{n} images (0..{n - 1})")
    if i == j:
        raise TrainError(f"--interpolate needs two different test images, got {i} twice")
    return traverse_image, (i, j)


def plot_run(run_dir, epoch=None, backend="auto", num_images=8, data_dir=None, mirrors=None,
             download=None, limit=None, traverse_image=0, interpolate=None,
             traverse_range=(-3.0, 3.0), log=print, warn=None, verbose=False, out=None,
             manifold_range=None):
    """Write the pictures listed above into `out` (default: run_dir) and PLOTTED there (the
    epoch drawn and the files written), removing the files an earlier plot wrote there that
    this one did not; returns the list of files written."""
    for flag, pair in (("--traverse-range", traverse_range), ("--manifold-range",
                                                              manifold_range)):
        if pair is not None and not pair[0] < pair[1]:
            raise TrainError(f"{flag} needs LO < HI, got {pair[0]:g} {pair[1]:g}")
    lo, hi = traverse_range
    model, cfg, ckpt = load_run(run_dir, epoch, backend, log=warn, verbose=verbose)
    cfg = cfg.replace(data_dir=data_dir, mirrors=mirrors or None, download=download)
    images, labels = data.load_for(cfg, "test", limit if limit is not None else cfg.limit)
    traverse_image, pair = pick_images(labels, traverse_image, interpolate)
    folder = Path(out) if out is not None else Path(run_dir)
    _check_writable(folder, out is None)
    with np.errstate(all="ignore"):
        means, log_vars = posterior_means(model, images, cfg)
        written = _latent_plane(folder, model, cfg, ckpt.epoch, means, labels, log,
                                manifold_range)
        written += _test_reconstructions(folder, model, cfg, images, num_images, ckpt.epoch)
        written += _traversals(folder, model, means, log_vars, traverse_image, np.linspace(
            lo, hi, TRAVERSAL_STEPS), ckpt.epoch)
        written.append(_interpolation(folder, model, cfg, images, means, pair, ckpt.epoch))
    _replace_record(folder, ckpt.epoch, written)
    return written


def _check_writable(folder, is_run):
    """Make the folder; TrainError naming it (not a temporary file) when it cannot be written."""
    try:
        files.check_writable(folder)
    except OSError as e:
        hint = "; give another folder with --out" if is_run else ""
        raise TrainError(f"cannot write pictures into {folder}: {e.strerror or e}{hint}") \
            from None


def _replace_record(folder, epoch, written):
    """Write PLOTTED (the epoch and the files of this plot) and remove the files the previous
    record names that this plot did not write again (and only those)."""
    record = folder / PLOTTED
    try:
        before = json.loads(record.read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        before = []
    now = [p.name for p in written]
    for name in before:
        if name not in now and "/" not in name and name != PLOTTED:
            files.remove(folder / name)
    files.write_text(record, json.dumps({"epoch": epoch, "files": now}, indent=2) + "\n")


def _latent_plane(run, model, cfg, epoch, means, labels, log, manifold_range=None):
    """clustering.png and manifold.png: decodes of a grid over the plane of clustering.png's
    coordinates, over [LO, HI] on both axes when manifold_range is given, else over where the
    test images' means lie (the 1st to the 99th percentile of each coordinate)."""
    d = means.shape[1]
    title = (f"{cfg.model} VAE on {cfg.dataset}, epoch {epoch}\n"
             f"encoder means of {len(means)} test images")
    if d == 1:
        coords, axes = np.stack([means[:, 0], np.zeros(len(means))], axis=1), None
        xl, yl = "z[0]", "(1-D latent)"
    elif d == 2:
        coords, axes = means, None
        xl, yl = "z[0]", "z[1]"
    else:
        coords, axes = pca_2d(means)
        xl, yl = f"principal axis 1 of the {d}-D means", f"principal axis 2 of the {d}-D means"
        title += ", PCA projection"
    written = [latent_scatter(run / "clustering.png", coords, labels,
                              CLASS_NAMES.get(cfg.dataset), xl, yl, title)]
    ranges = ([tuple(manifold_range)] * 2 if manifold_range is not None else
              [data_range(coords[:, k]) for k in (0, 1)])
    if d == 1:
        ranges[1] = (0.0, 0.0)
    pts = manifold_points(11, *ranges)
    # d > 2: the plane of the two principal axes, through the means' centre
    z = pts if d == 2 else pts[:, :1] if d == 1 else means.mean(axis=0) + pts @ axes
    probs = as_square_images(decode_probs(model, model.xp.asarray(z.astype(model.dtype))))
    grid, side = image_grid(probs, 11), probs.shape[1]
    ticks = [((k + 0.5) * side - 0.5, f"{v:.2g}") for k, v in enumerate(pts[:11, 0])]
    yticks = [((k + 0.5) * side - 0.5, f"{v:.2g}") for k, v in enumerate(pts[::11, 1])]
    plane = "z[0], z[1]" if d <= 2 else f"principal axes 1 and 2 of the {d}-D means"
    over = ("the --manifold-range" if manifold_range is not None else
            "where 98% of the test means lie")
    written.append(image_figure(
        run / "manifold.png", grid, f"decodes over {over} on {plane}, epoch {epoch}",
        xl if d != 1 else "z[0]", yl if d != 1 else "(1-D latent: rows repeat)", ticks,
        yticks, inches=11 * side * 0.03))
    if d > 2:
        log(f"minivae: latent has {d} dimensions: clustering.png shows the test means "
            f"projected on their first two principal axes; manifold.png decodes the plane "
            f"spanned by those axes through the means' centre (all other directions there)")
    return written


def _test_reconstructions(run, model, cfg, images, num_images, epoch):
    """test-image-<i>.png, reconstruction-<i>.png and test-vs-reconstruction.png."""
    spec, xp = cfg.spec, model.xp
    rng = stream_rng(cfg.seed, STREAM_VIS)
    idx = rng.permutation(len(images))[:num_images]
    x = data.to_float(images[idx], xp, model.dtype, pad=spec.pad, flatten=spec.flatten)
    eps = noise(rng, (len(idx), model.latent_dim), xp, model.dtype)
    recon = as_square_images(reconstruct(model, x, eps))
    orig = as_square_images(to_host(x))
    written = []
    for i, k in enumerate(idx):            # named by the image's index in the test split
        written.append(save_png(run / f"test-image-{k}.png", orig[i]))
        written.append(save_png(run / f"reconstruction-{k}.png", recon[i]))
    written.append(save_png(run / "test-vs-reconstruction.png", side_by_side(orig, recon),
                            scale=2, caption=f"epoch {epoch}: test images {', '.join(map(str, idx))} "
                                             f"(top) and their reconstructions (below, a sampled "
                                             f"z)"))
    return written


def _traversals(run, model, means, log_vars, traverse_image, values, epoch):
    """traversals.png and traversals.gif: each dimension swept over `values`, largest KL first."""
    d, steps = means.shape[1], len(values)
    kl = latent_stats(means, log_vars)["kl"]
    order = np.argsort(kl, kind="stable")[::-1]                     # largest KL first
    z = np.repeat(means[traverse_image][None], d * steps, axis=0)
    for r, dim in enumerate(order):
        z[r * steps:(r + 1) * steps, dim] = values
    tiles = as_square_images(decode_probs(model, model.xp.asarray(z.astype(model.dtype))))
    rows = tiles.reshape((d, steps) + tiles.shape[1:])
    row_labels = [f"z[{dim}]  KL {kl[dim]:.2f}" for dim in order]
    png = traversal_figure(run / "traversals.png", rows, row_labels, values,
                           title=f"latent traversals around test image {traverse_image} "
                                 f"(epoch {epoch})")
    frames = list(range(steps)) + list(range(steps - 2, 0, -1))      # there and back
    gif = save_gif(run / "traversals.gif", [image_grid(rows[:, k], 1, pad=2) for k in frames],
                   scale=SCALE)
    return [png, gif]


def _interpolation(run, model, cfg, images, means, pair, epoch):
    """interpolation.png: decodes along the line between two test images' posterior means."""
    ia, ib = pair
    spec, xp = cfg.spec, model.xp
    t = np.linspace(0.0, 1.0, INTERPOLATION_STEPS)[:, None]
    z = (1 - t) * means[ia] + t * means[ib]                           # (steps, d)
    between = as_square_images(decode_probs(model, xp.asarray(z.astype(model.dtype))))
    ends = as_square_images(to_host(data.to_float(images[[ia, ib]], xp, model.dtype,
                                                  pad=spec.pad, flatten=spec.flatten)))
    strip = np.concatenate([ends[:1], between, ends[1:]])
    side = strip.shape[1]
    labels = [f"image {ia}"] + [f"{v:.2g}" for v in t[:, 0]] + [f"image {ib}"]
    return image_figure(run / "interpolation.png", image_grid(strip, len(strip)),
                        f"from test image {ia} to test image {ib} through the posterior means, "
                        f"epoch {epoch}", "t: z = (1 - t) mean(image I) + t mean(image J)", "",
                        [((k + 0.5) * side - 0.5, label) for k, label in enumerate(labels)],
                        inches=len(strip) * side * 0.03)
