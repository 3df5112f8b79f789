"""`minivae plot RUN`: pictures of a saved run's model, drawn with minivae.plots.

clustering.png    the encoder means of the test set, coloured by label. A 2-D latent is shown as
                  is; a larger one is projected on the first two principal axes of those means.
manifold.png      decodes of an 11x11 grid over [-2, 2]^2 -- the latent plane itself for 2-D
                  latents, else the plane through the origin spanned by the same two axes.
test-image-<i>.png, reconstruction-<i>.png, test-vs-reconstruction.png
                  as seed 001's visualise: a shuffled batch of test images, their reconstructions.
"""

from pathlib import Path

import numpy as np

from minivae import data
from minivae.backend import to_host
from minivae.config import STREAM_VIS, data_overrides, layout, load_split, stream_rng
from minivae.evaluate import decode_probs, eval_batches, load_run, noise, reconstruct
from minivae.plots import (CLASS_NAMES, as_square_images, latent_scatter, manifold_points, pca_2d,
                           save_grid, save_png, side_by_side)


def plot_run(run_dir, epoch=None, backend="auto", num_images=8, data_dir=None, mirrors=None,
             download=None, limit=None, log=print, warn=None, verbose=False):
    """Write the pictures listed above into run_dir; returns the list of files written."""
    model, cfg, ckpt = load_run(run_dir, epoch, backend, log=warn, verbose=verbose)
    data_overrides(cfg, data_dir, mirrors, download)
    images, labels = load_split(cfg, "test", limit if limit is not None else cfg["limit"])
    pad, flatten, _ = layout(cfg)
    run = Path(run_dir)
    xp = model.xp
    written = []

    with np.errstate(all="ignore"):
        means = np.concatenate([to_host(model.encode(x)[0]).astype(np.float64)
                                for x, _ in eval_batches(model, images, cfg)])
        d = means.shape[1]
        title = (f"{cfg['model']} VAE on {cfg['dataset']}, epoch {ckpt.epoch}\n"
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
        written.append(latent_scatter(run / "clustering.png", coords, labels,
                                      CLASS_NAMES.get(cfg["dataset"]), xl, yl, title))

        pts = manifold_points()
        if d == 2:
            z = pts
        elif d == 1:
            z = pts[:, :1]
        else:
            z = pts @ axes          # (121, d): the plane of the two principal axes, through 0
        probs = decode_probs(model, xp.asarray(z.astype(model.dtype)))
        written.append(save_grid(run / "manifold.png", probs, ncol=11))
        if d > 2:
            log(f"minivae: latent has {d} dimensions: clustering.png shows the test means "
                f"projected on their first two principal axes; manifold.png decodes [-2, 2]^2 on "
                f"the plane spanned by those axes (all other directions at 0)")

        rng = stream_rng(cfg["seed"], STREAM_VIS)
        idx = rng.permutation(len(images))[:num_images]
        x = data.to_float(images[idx], xp, model.dtype, pad=pad, flatten=flatten)
        eps = noise(rng, (len(idx), d), xp, model.dtype)
        recon = as_square_images(reconstruct(model, x, eps))
        orig = as_square_images(to_host(x))
        for i in range(len(idx)):
            written.append(save_png(run / f"test-image-{i + 1}.png", orig[i]))
            written.append(save_png(run / f"reconstruction-{i + 1}.png", recon[i]))
        written.append(save_png(run / "test-vs-reconstruction.png", side_by_side(orig, recon),
                                scale=2))
    return written
