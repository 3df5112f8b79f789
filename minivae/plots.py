"""Pictures: image grids (PNG via Pillow), loss curves and latent scatters (matplotlib).

Everything here takes host NumPy arrays and a path, and writes one file; nothing here knows about
models or run folders (minivae.visualise draws a saved run with these functions). Files are
written to a temporary name and renamed (minivae.files), so an interrupted run never leaves a
half-written picture under the real name.
matplotlib is used through its object API (``Figure`` + the Agg canvas), never ``pyplot``, so no
global state and no display is involved.
"""

from pathlib import Path

import numpy as np

from minivae.files import Replacing

# Names of the ten classes, for the legend of the latent scatter.
CLASS_NAMES = {
    "mnist": [str(d) for d in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
}


def to_uint8(images):
    """Values in [0, 1] (any float dtype) -> uint8 pixels; anything outside is clipped."""
    images = np.asarray(images, dtype=np.float64)
    return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def as_square_images(x):
    """(N, 784) or (N, 1, H, W) or (N, H, W) -> (N, H, W)."""
    x = np.asarray(x)
    if x.ndim == 2:
        side = int(round(np.sqrt(x.shape[1])))
        if side * side != x.shape[1]:
            raise ValueError(f"cannot view {x.shape[1]} values as a square image")
        return x.reshape(len(x), side, side)
    if x.ndim == 4:
        return x[:, 0]
    if x.ndim == 3:
        return x
    raise ValueError(f"expected images shaped (N, D), (N, H, W) or (N, 1, H, W), got {x.shape}")


def image_grid(images, ncol, pad=0, pad_value=0.0):
    """Tile images (N, H, W) row by row into one (rows*H, ncol*W) array (blank cells at the end).

    The seeds' `convert_to_image` lays a batch out the same way: image i goes to row i // ncol,
    column i % ncol.
    """
    images = as_square_images(images)
    n, h, w = images.shape
    nrow = -(-n // ncol)
    out = np.full((nrow * (h + pad) - pad, ncol * (w + pad) - pad), pad_value, dtype=np.float64)
    for i in range(n):
        r, c = divmod(i, ncol)
        out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = images[i]
    return out


def save_png(path, image, scale=1, caption=None):
    """Write a grey image with values in [0, 1] (H, W) as an 8-bit PNG, atomically; with a
    caption, in black on a white band above it (wrapped to the image's width)."""
    from PIL import Image

    path = Path(path)
    pixels = to_uint8(image)
    if scale > 1:
        pixels = np.kron(pixels, np.ones((scale, scale), dtype=np.uint8))
    if caption:
        pixels = np.concatenate([caption_band(caption, pixels.shape[1]), pixels])
    with Replacing(path) as f:
        Image.fromarray(pixels, mode="L").save(f, format="PNG")
    return path


CAPTION_LINE = 13                          # pixels a line of PIL's built-in font


def caption_band(text, width):
    """(rows, width) uint8: `text` in black on white, wrapped at words to `width` pixels."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("L", (1, 1))).textlength
    lines = []
    for word in text.split():
        if lines and measure(f"{lines[-1]} {word}", font=font) <= width - 4:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    band = Image.new("L", (width, CAPTION_LINE * max(1, len(lines)) + 4), 255)
    draw = ImageDraw.Draw(band)
    for k, line in enumerate(lines):
        draw.text((2, 2 + CAPTION_LINE * k), line, fill=0, font=font)
    return np.asarray(band)


def save_grid(path, images, ncol, pad=0, scale=1, caption=None):
    """Tile images (values in [0, 1]) into a grid with `ncol` columns and save it as a PNG."""
    return save_png(path, image_grid(images, ncol, pad=pad), scale=scale, caption=caption)


def side_by_side(originals, reconstructions, pad=2):
    """Two rows: originals on top, their reconstructions below, separated by a white gap."""
    a = as_square_images(originals)
    b = as_square_images(reconstructions)
    top = image_grid(a, len(a), pad=pad, pad_value=1.0)
    bottom = image_grid(b, len(b), pad=pad, pad_value=1.0)
    gap = np.ones((pad * 2, top.shape[1]))
    return np.concatenate([top, gap, bottom], axis=0)


def _save_figure(fig, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    FigureCanvasAgg(fig)
    with Replacing(path) as f:
        fig.savefig(f, format="png")
    return path


def warmup_epochs(rows):
    """(the epochs that ended inside a KL warm-up, the KL weight after it): epochs whose β is
    below the largest β of the run (rows without a β, from older runs, count as after it)."""
    betas = {int(r["epoch"]): float(r["beta"]) for r in rows if r.get("beta") not in (None, "")}
    target = max(betas.values(), default=None)
    return [e for e, b in betas.items() if b < target], target


def loss_curves(path, rows):
    """Train loss and test negative ELBO per epoch (rows: the metrics.csv rows as dicts)."""
    from matplotlib.figure import Figure

    epochs = [int(r["epoch"]) for r in rows]
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(epochs, [float(r["train_loss"]) for r in rows], "o-",
            label="train loss (recon + β·KL + reg)")
    if rows and "train_recon" in rows[0]:
        ax.plot(epochs, [float(r["train_recon"]) + float(r["train_kl"]) for r in rows], "^--",
                label="train −ELBO (recon + KL)")
    ax.plot(epochs, [float(r["test_neg_elbo"]) for r in rows], "s-", label="test −ELBO")
    warm, target = warmup_epochs(rows)
    if warm:
        ax.axvspan(min(warm) - 0.5, max(warm) + 0.5, color="0.9", zorder=0,
                   label=f"KL warm-up (β < {target:g} at the epoch's end)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per image")
    ax.set_xticks(epochs if len(epochs) <= 20 else ax.get_xticks())
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save_figure(fig, path)


def pca_2d(points):
    """Project points (N, D) on their first two principal axes: (coords (N, 2), axes (2, D))."""
    points = np.asarray(points, dtype=np.float64)
    centred = points - points.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    axes = vt[:2]
    # Fix the sign of each axis (largest component positive) so the picture is reproducible.
    signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])
    axes = axes * np.where(signs == 0, 1.0, signs)[:, None]
    return centred @ axes.T, axes


def latent_scatter(path, coords, labels, class_names=None, xlabel="z[0]", ylabel="z[1]",
                   title=None):
    """Scatter of 2-D latent coordinates coloured by class label."""
    import matplotlib
    from matplotlib.figure import Figure

    coords = np.asarray(coords)
    labels = np.asarray(labels).astype(int)
    fig = Figure(figsize=(7, 6), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    cmap = matplotlib.colormaps["tab10"]
    for k in np.unique(labels):
        sel = labels == k
        name = class_names[k] if class_names is not None and k < len(class_names) else str(k)
        ax.scatter(coords[sel, 0], coords[sel, 1], s=3, alpha=0.6, color=cmap(k % 10),
                   label=name, linewidths=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_aspect("equal", adjustable="datalim")
    if title:
        ax.set_title(title)
    ax.legend(markerscale=4, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5),
              frameon=False)
    fig.tight_layout()
    return _save_figure(fig, path)


def manifold_points(n=11, x_range=(-2.0, 2.0), y_range=None):
    """The (n*n, 2) latent grid of the manifold picture, in the order image_grid lays it out
    (y_range: x_range when None).

    Column j has z[0] = lo + j * step (left to right), row i has z[1] = hi - i * step (top to
    bottom), so the picture has the orientation of the scatter plot in clustering.png. (The
    seed's Julia code decodes 121 points over [-2, 2]^2 but, through its column-major
    reshapes, shows them transposed.)
    """
    y_range = x_range if y_range is None else y_range
    z0 = np.tile(np.linspace(*x_range, n), n)              # runs along each row
    z1 = np.repeat(np.linspace(*y_range, n)[::-1], n)      # constant along a row, falling
    return np.stack([z0, z1], axis=1)


def data_range(values, share=0.98):
    """(lo, hi): the central `share` of the values (the 1st to the 99th percentile), widened to
    a width of at least 1e-3 so a grid over it never collapses."""
    tail = 100 * (1 - share) / 2
    lo, hi = (float(v) for v in np.percentile(values, [tail, 100 - tail]))
    if hi - lo < 1e-3:
        mid = (lo + hi) / 2
        lo, hi = mid - 5e-4, mid + 5e-4
    return lo, hi


def traversal_figure(path, rows, row_labels, values, title=None, tile_inches=0.84):
    """A grid of decodes, one row per latent dimension (rows (R, C, H, W), values in [0, 1]),
    each tile tile_inches wide at 100 dpi (3 screen pixels per pixel of a 28-pixel image),
    with row_labels at each row's start and the swept z value under each column."""
    from matplotlib.figure import Figure

    rows = np.asarray(rows)
    n_rows, n_cols, h, w = rows.shape
    grid = image_grid(rows.reshape(n_rows * n_cols, h, w), n_cols)
    fig = Figure(figsize=(n_cols * tile_inches + 1.6, n_rows * tile_inches + 0.9), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_yticks([(r + 0.5) * h - 0.5 for r in range(n_rows)], labels=row_labels, fontsize=8)
    ax.set_xticks([(c + 0.5) * w - 0.5 for c in range(n_cols)],
                  labels=[f"{v:g}" for v in values], fontsize=8)
    ax.set_xlabel("value of the swept dimension (prior standard deviations)", fontsize=8)
    ax.tick_params(length=0)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save_figure(fig, path)


def image_figure(path, image, title, xlabel, ylabel, xticks=(), yticks=(), inches=None):
    """One grey image (H, W, values in [0, 1]) as a figure with a title and labelled axes;
    ticks: [(position in pixels, label)]. inches: the image's width, 3 screen pixels per image
    pixel of a 28-pixel tile by default."""
    from matplotlib.figure import Figure

    h, w = image.shape
    width = inches or w * 0.03
    fig = Figure(figsize=(width + 1.4, width * h / w + 1.2), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([t for t, _ in xticks], labels=[label for _, label in xticks], fontsize=8)
    ax.set_yticks([t for t, _ in yticks], labels=[label for _, label in yticks], fontsize=8)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_title(title, fontsize=9)
    ax.tick_params(length=0)
    fig.tight_layout()
    return _save_figure(fig, path)


def save_gif(path, frames, scale=3, ms_per_frame=120):
    """Write grey frames (each (H, W), values in [0, 1]) as a looping animated GIF, atomically,
    every pixel scaled up `scale` times (nearest neighbour)."""
    from PIL import Image

    block = np.ones((scale, scale), dtype=np.uint8)
    images = [Image.fromarray(np.kron(to_uint8(f), block), mode="L") for f in frames]
    path = Path(path)
    with Replacing(path) as f:
        images[0].save(f, format="GIF", save_all=True, append_images=images[1:],
                       duration=ms_per_frame, loop=0)
    return path
