"""`minivae report RUN`: one HTML page with what a run found, and its latent space to explore.

RUN/report.html is one file that works opened from disk (file://), with no network and nothing
external: the run's settings, the epoch shown and its metrics, the loss curves and the KL of each
latent dimension as inline SVG charts, the IWAE figure where `minivae evaluate` has saved one, the
pictures `minivae plot` wrote (linked relative to the run folder), and the latent explorer: the
posterior means of REPORT_POINTS test images on a canvas, coloured by class (a 2-D latent is the
plane itself; a larger one is shown on the first two principal axes of the means, as
clustering.png is, and the pointer moves z on the plane through their centroid those axes span),
one slider per dimension in the order of their KL, and the decoder's image of z drawn large
beside it as the pointer, the arrow keys or the sliders move z. A click on a test point sets z to
that image's posterior mean and shows the image beside its decode.

The decoding runs in the page: the decoder's parameters are embedded (float32, base64) with a
description of its layers, and report.js's forward pass of Dense, Tanh, ReLU, Sigmoid, Reshape and
ConvTranspose2d mirrors layers.py. The page exposes

    window.minivae = {latentDim, height, width, decode(z), ready}

where decode takes latentDim numbers and returns the height x width pixel probabilities
(sigmoid of the logits) in row-major order, a Float32Array.
"""

import base64
import html
import json
import math
import os
from pathlib import Path

import numpy as np

from minivae import data, files, layers
from minivae.backend import to_host
from minivae.errors import TrainError
from minivae.evaluate import latent_stats, posterior_means
from minivae.plots import CLASS_NAMES, pca_2d
from minivae.run import EVALUATION, PLOTTED, REPORT, STREAM_VIS, RunFolder, load_run, stream_rng
from minivae.tiers import plain_class

REPORT_POINTS = 1000                 # test images in the explorer (their means and pixels)
PICTURES = ("clustering.png", "manifold.png", "test-vs-reconstruction.png", "traversals.png",
            "traversals.gif", "interpolation.png", "loss.png")
ASSETS = Path(__file__).with_name("report_assets")


def b64(array, dtype):
    """An array's bytes (little-endian) as base64 text."""
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")


def decoder_spec(model):
    """(layers: a list of dicts the page's forward pass reads, the float32 parameters in one
    vector). Each layer names its Python twin's class; W and b are offsets into the vector."""
    spec, chunks, offset = [], [], 0

    def put(array):
        nonlocal offset
        host = to_host(array).astype(np.float32).ravel()
        chunks.append(host)
        offset += host.size
        return offset - host.size

    for layer in model.decoder.layers:
        kind = JS_TWINS.get(plain_class(layer))
        if kind is None:
            raise TrainError(f"the report's decoder has no JavaScript twin of "
                             f"{type(layer).__name__} (report.js has {', '.join(JS_TWINS.values())}"
                             f"; a subclass computes something else, so it needs one of its own)")
        entry = dict(type=kind)
        if kind == "Dense":
            entry.update(inFeatures=layer.in_features, outFeatures=layer.out_features)
        elif kind == "ConvTranspose2d":
            (kh, kw) = layer.kernel_size
            entry.update(inChannels=layer.in_channels, outChannels=layer.out_channels, kh=kh,
                         kw=kw, stride=layer.stride, padding=layer.padding)
        elif kind == "Reshape":
            entry.update(shape=list(layer.shape))
        if "W" in layer.params:
            entry.update(W=put(layer.params["W"]), b=put(layer.params["b"]))
        spec.append(entry)
    return spec, (np.concatenate(chunks) if chunks else np.zeros(0, np.float32))


# the classes of layers.py report.js has a twin of, by exact class (a tier's twin of one of them
# counts as it: tiers.plain_class)
JS_TWINS = {layers.Dense: "Dense", layers.ConvTranspose2d: "ConvTranspose2d",
            layers.ReLU: "ReLU", layers.Tanh: "Tanh", layers.Sigmoid: "Sigmoid",
            layers.Reshape: "Reshape"}


def evaluation_for(run, epoch):
    """What `minivae evaluate` saved for this epoch (None where it has not run)."""
    try:
        saved = json.loads(run.file(EVALUATION).read_text())
    except (OSError, ValueError):
        return None
    return saved.get(str(epoch)) if isinstance(saved, dict) else None


def pictures_for(run, epoch, page_dir):
    """(links to the pictures `minivae plot` drew in the run folder, relative to the page's
    folder; None, or the epoch they show when it is not `epoch`: then no links, the page says
    which epoch they show instead)."""
    present = [p for p in PICTURES if run.file(p).is_file()]
    try:
        drawn = json.loads(run.file(PLOTTED).read_text()).get("epoch")
    except (OSError, ValueError, AttributeError):
        drawn = None                  # pictures of a plot that kept no record: shown
    if present and drawn is not None and drawn != epoch:
        return [], drawn
    return [Path(os.path.relpath(run.file(p), page_dir)).as_posix() for p in present], None


def report_data(model, cfg, ckpt, run, images, labels, page_dir=None):
    """Everything the page shows, as one JSON-ready dict (page_dir: where the page goes, for
    the links to the run's pictures; the run folder by default)."""
    means, log_vars = posterior_means(model, images, cfg)
    stats = latent_stats(means, log_vars)
    d = means.shape[1]
    idx = stream_rng(cfg.seed, STREAM_VIS, 1).permutation(len(images))[:REPORT_POINTS]
    idx.sort()
    if d == 2:
        coords, axes, centre = means, np.eye(2), np.zeros(2)
    elif d == 1:
        coords, axes, centre = np.stack([means[:, 0], np.zeros(len(means))], 1), \
            np.array([[1.0], [0.0]]), np.zeros(1)
    else:
        coords, axes = pca_2d(means)
        centre = means.mean(axis=0)
    spec, weights = decoder_spec(model)
    side = 28 + 2 * cfg.spec.pad
    rows = [r for r in ckpt.metrics if r["epoch"] <= ckpt.epoch]
    pictures, pictures_epoch = pictures_for(run, ckpt.epoch, page_dir or run.path)
    return dict(
        model=cfg.model, dataset=cfg.dataset, epoch=ckpt.epoch, settings=cfg.to_dict(),
        metrics=rows, latent=stats, evaluation=evaluation_for(run, ckpt.epoch),
        latentDim=d, height=side, width=side, pad=cfg.spec.pad,
        classNames=CLASS_NAMES.get(cfg.dataset, [str(k) for k in range(10)]),
        klOrder=[int(k) for k in np.argsort(stats["kl"], kind="stable")[::-1]],
        axes=axes.tolist(), centre=centre.tolist(),
        points=dict(count=len(idx), coords=b64(coords[idx], "<f4"), means=b64(means[idx], "<f4"),
                    labels=b64(labels[idx], "u1"), images=b64(images[idx], "u1"),
                    testIndex=[int(i) for i in idx]),
        decoder=dict(layers=spec, weights=b64(weights, "<f4")),
        pictures=pictures, picturesEpoch=pictures_epoch,
    )


def nice_ticks(lo, hi, most=6):
    """Round values for an axis that covers [lo, hi]: the multiples of a step of 1, 2, 2.5 or 5
    times a power of ten from below lo to above hi, at most `most` of them (the axis then runs
    from the first to the last)."""
    if not hi > lo:
        hi = lo + (abs(lo) or 1.0)
    power = 10.0 ** math.floor(math.log10((hi - lo) / (most - 1)))
    for step in (power * m for m in (1, 2, 2.5, 5, 10, 20)):
        first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
        if last - first + 1 <= most:
            break
    digits = max(0, 1 - math.floor(math.log10(step)))
    return [round(k * step, digits) for k in range(first, last + 1)]


def svg_chart(series, xlabel, ylabel, title, bars=False, width=460, height=260):
    """A small chart as inline SVG: series [(label, [(x, y)], colour)], axes with ticks."""
    points = [p for _, pts, _ in series for p in pts]
    if not points:
        return "<p>(no data)</p>"
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    x1 = x1 if x1 > x0 else x0 + 1
    yticks = nice_ticks(min(0.0, min(p[1] for p in points)), max(p[1] for p in points))
    y0, y1 = yticks[0], yticks[-1]
    L, R, T, B = 62, 12, 26, 40                     # margins: left, right, top, bottom

    def sx(x):                                      # data x -> SVG x (bars: centred in a slot)
        if bars:
            return L + (x - x0 + 0.5) / (x1 - x0 + 1) * (width - L - R)
        return L + (x - x0) / (x1 - x0) * (width - L - R)

    def sy(y):
        return height - B - (y - y0) / (y1 - y0) * (height - T - B)
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="{html.escape(title)}">',
           f'<text x="{width / 2}" y="16" text-anchor="middle" class="t">{html.escape(title)}'
           f'</text>',
           f'<line x1="{L}" y1="{height - B}" x2="{width - R}" y2="{height - B}" class="ax"/>',
           f'<line x1="{L}" y1="{T}" x2="{L}" y2="{height - B}" class="ax"/>']
    for y in yticks:
        out.append(f'<text x="{L - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:g}</text>'
                   f'<line x1="{L}" y1="{sy(y):.1f}" x2="{width - R}" y2="{sy(y):.1f}" '
                   f'class="grid"/>')
    xs = sorted({p[0] for p in points})
    step = max(1, len(xs) // 10)
    for x in xs[::step]:
        out.append(f'<text x="{sx(x):.1f}" y="{height - B + 16}" text-anchor="middle">{x:g}'
                   f'</text>')
    out.append(f'<text x="{(L + width - R) / 2}" y="{height - 6}" text-anchor="middle">'
               f'{html.escape(xlabel)}</text>')
    out.append(f'<text x="14" y="{(T + height - B) / 2}" text-anchor="middle" '
               f'transform="rotate(-90 14 {(T + height - B) / 2})">{html.escape(ylabel)}</text>')
    for i, (label, pts, colour) in enumerate(series):
        if bars:
            w = (width - L - R) / (x1 - x0 + 1) * 0.7
            for x, y in pts:
                out.append(f'<rect x="{sx(x) - w / 2:.1f}" y="{sy(y):.1f}" width="{w:.1f}" '
                           f'height="{sy(y0) - sy(y):.1f}" fill="{colour}"><title>'
                           f'{html.escape(label)} {x:g}: {y:.4g}</title></rect>')
        else:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" '
                       f'stroke-width="2"/>')
            out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"><title>'
                    f'{html.escape(label)}, epoch {x:g}: {y:.4f}</title></circle>'
                    for x, y in pts]
            out.append(f'<text x="{width - R - 4}" y="{T + 14 + 14 * i}" text-anchor="end" '
                       f'fill="{colour}">{html.escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def render(data):
    """The page: the template with the data, the charts, the style and the script inlined."""
    rows = data["metrics"]
    curves = svg_chart(
        [("train loss", [(r["epoch"], r["train_loss"]) for r in rows], "#1f77b4"),
         ("test −ELBO", [(r["epoch"], r["test_neg_elbo"]) for r in rows], "#d62728")],
        "epoch", "nats per image", "loss per epoch")
    kl = data["latent"]["kl"]
    kl_chart = svg_chart([("KL", [(i, v) for i, v in enumerate(kl)], "#2ca02c")],
                         "latent dimension", "nats per image",
                         "KL of each latent dimension (test set)", bars=True)
    page = (ASSETS / "report.html").read_text(encoding="utf-8")
    values = {
        "TITLE": html.escape(f"minivae: {data['model']} VAE on {data['dataset']}, epoch "
                             f"{data['epoch']}"),
        "STYLE": (ASSETS / "report.css").read_text(encoding="utf-8"),
        "SCRIPT": (ASSETS / "report.js").read_text(encoding="utf-8"),
        "DATA": json.dumps(data, separators=(",", ":")).replace("</", "<\\/"),
        "CURVES": curves, "KL_CHART": kl_chart,
    }
    for key, value in values.items():
        page = page.replace("{{" + key + "}}", value)
    return page


def write_report(run_dir, epoch=None, backend="auto", limit=None, data_dir=None, mirrors=None,
                 download=None, log=None, verbose=False, out=None):
    """Write RUN/report.html for checkpoint `epoch` (default: the newest that loads), or `out`
    (a .html file, else a folder to write report.html into); returns its path. The page is
    written last, atomically: when anything fails, nothing is written."""
    run = RunFolder(run_dir)
    model, cfg, ckpt = load_run(run_dir, epoch, backend, log=log, verbose=verbose)
    cfg = cfg.replace(data_dir=data_dir, mirrors=mirrors or None, download=download)
    images, labels = data.load_for(cfg, "test", limit if limit is not None else cfg.limit)
    path = run.file(REPORT) if out is None else Path(out)
    if out is not None and path.suffix.lower() not in (".html", ".htm"):
        path = path / REPORT                                  # a folder
    with np.errstate(all="ignore"):
        page = render(report_data(model, cfg, ckpt, run, images, labels, path.parent))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        files.write_text(path, page)
    except files.DiskFull:
        raise
    except OSError as e:                  # named as the page, not as its temporary file
        raise TrainError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def report_path(run_dir):
    """RUN/report.html where one exists, else None (train and plot mention it)."""
    path = RunFolder(run_dir).file(REPORT)
    return path if path.is_file() else None

