"""What a trained model is worth: test ELBO, importance-weighted log p(x), reconstructions.

`test_neg_elbo`, `reconstruct` and `decode_probs` are what the training loop reports and draws
after every epoch; `evaluate_run` is `minivae evaluate RUN`. Every random number here comes from
a stream of its own (minivae.run), never from the two training streams.
"""

import json
import math

import numpy as np

from minivae import data, files
from minivae.backend import backend_name, make_rng, to_device, to_host
from minivae.errors import TrainError
from minivae.layers import sigmoid
from minivae.losses import kl_log_var
from minivae.models import log_mean_exp, log_weights, reparametrize
from minivae.progress import bar as progress_bar
from minivae.run import EVALUATION, STREAM_EVAL, STREAM_TEST, RunFolder, load_run, stream_rng

EVAL_BATCH = 128          # images per forward pass when evaluating (bounds its memory)
ACTIVE_VARIANCE = 0.01    # a latent dimension is active when Var_x(mu_d) exceeds this


def noise(rng, shape, xp, dtype):
    """Standard-normal noise drawn on the host and copied to the device."""
    return to_device(rng.standard_normal(shape).astype(dtype), xp)


def reconstruct(model, x, eps=None):
    """Decode z = mu + eps * sigma for inputs x (one sampled z per input, as the seeds do), or
    the posterior mean mu itself when eps is None; returns pixel probabilities on the host."""
    mu, log_var = model.encode(x)
    return decode_probs(model, mu if eps is None else reparametrize(mu, log_var, eps))


def decode_probs(model, z):
    """Pixel probabilities (on the host) of the images the decoder makes of latents z."""
    return to_host(sigmoid(model.decode(z)))


def eval_batches(model, images, cfg, batch_size=EVAL_BATCH):
    """The images in order, as float batches laid out for cfg's model (all of them, no shuffle)."""
    spec = cfg.spec
    return data.batches(images, None, batch_size=batch_size, xp=model.xp, dtype=model.dtype,
                        rng=make_rng(0), shuffle=False, drop_last=False, pad=spec.pad,
                        flatten=spec.flatten)


def test_neg_elbo(model, images, cfg, epoch, batch_size=EVAL_BATCH):
    """Negative ELBO (recon + KL, no beta, no weight penalty) per test image, one sampled z each,
    the noise drawn from a stream of its own (seed, STREAM_TEST, epoch)."""
    rng = stream_rng(cfg.seed, STREAM_TEST, epoch)
    total, n = 0.0, 0
    for x, _ in eval_batches(model, images, cfg, batch_size):
        eps = noise(rng, (len(x), cfg.latent_dim), model.xp, model.dtype)
        t = model.loss(x, noise=eps, beta=1.0, weight_decay=0.0)
        total += (t.recon + t.kl) * len(x)
        n += len(x)
    return total / n


def posterior_means(model, images, cfg, batch_size=EVAL_BATCH):
    """(mu, log sigma^2) of every image, host float64 arrays (N, latent)."""
    parts = [tuple(to_host(a).astype(np.float64) for a in model.encode(x))
             for x, _ in eval_batches(model, images, cfg, batch_size)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def latent_stats(mu, log_var):
    """Per latent dimension: the analytic KL(q(z|x) || N(0, 1)) averaged over the images (nats
    per image), the variance over the images of the posterior mean E_q[z_d|x] = mu_d, and the
    count of active units, those whose variance exceeds ACTIVE_VARIANCE (Burda et al., 2015).
    Returns a dict: kl (list), mean_var (list), active (list of bools), active_units."""
    kl = kl_log_var(mu, log_var)[0].mean(axis=0)
    var = mu.var(axis=0)
    active = var > ACTIVE_VARIANCE
    return {"kl": [float(v) for v in kl], "mean_var": [float(v) for v in var],
            "active": [bool(a) for a in active], "active_units": int(active.sum())}


def latent_metrics(model, images, cfg):
    """The metrics.csv columns of the latent code: kl_<i> per dimension and active_units."""
    stats = latent_stats(*posterior_means(model, images, cfg))
    row = {f"kl_{i}": v for i, v in enumerate(stats["kl"])}
    row["active_units"] = stats["active_units"]
    return row


def evaluate(model, images, cfg, iw_samples=100, batch_size=None, seed_stream=STREAM_EVAL,
             max_rows=1024, progress=False):
    """Negative ELBO and importance-weighted -log p(x) per image, in nats, on model.xp.

    For each image x we draw K latents z_k = mu + sigma * eps_k from q(z|x) and form the log
    importance weights  log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x). Then

        ELBO estimate  = mean_k log w_k
        IWAE estimate  = log (1/K) sum_k w_k = logsumexp_k(log w_k) - log K  >=  mean_k log w_k

    (Jensen; the same samples feed both, so the inequality holds exactly, image by image).
    The IWAE bound rises towards log p(x) as K grows (Burda et al., 2016).
    """
    xp = model.xp
    K = int(iw_samples)
    if K < 1:
        raise TrainError(f"--iw-samples must be a positive integer, got {iw_samples!r}")
    d = cfg.latent_dim
    batch_size = batch_size or max(1, min(EVAL_BATCH, max_rows))
    rng = stream_rng(cfg.seed, seed_stream, K)
    elbo_sum = iwae_sum = 0.0
    n = 0
    # counted in latent draws (images x K), updated after every chunk: a large K takes
    # minutes per batch of images
    with progress_bar(progress, total=len(images) * K, unit="draw", unit_scale=True,
                      desc=f"evaluate (K={K})", leave=False) as bar:
        for x, _ in eval_batches(model, images, cfg, batch_size):
            B = len(x)
            mu, log_var = model.encode(x)
            log_w = np.empty((B, K))
            chunk = max(1, max_rows // B)
            for k0 in range(0, K, chunk):
                kc = min(chunk, K - k0)
                eps = noise(rng, (kc, B, d), xp, model.dtype)
                log_w[:, k0:k0 + kc] = to_host(log_weights(model, x, mu, log_var, eps)).T
                bar.update(B * kc)
            iwae = log_mean_exp(log_w, axis=1)
            elbo = log_w.mean(axis=1)
            elbo_sum += float(elbo.sum())
            iwae_sum += float(iwae.sum())
            n += B
    return {"images": n, "iw_samples": K, "neg_elbo": -elbo_sum / n, "neg_log_px": -iwae_sum / n}


def evaluate_run(run_dir, epoch=None, iw_samples=100, backend="auto", limit=None, data_dir=None,
                 mirrors=None, download=None, log=None, progress=False, verbose=False):
    """`minivae evaluate`: the test -ELBO and IWAE -log p(x) of a saved run's checkpoint."""
    model, cfg, ckpt = load_run(run_dir, epoch, backend, log=log, verbose=verbose)
    cfg = cfg.replace(data_dir=data_dir, mirrors=mirrors or None, download=download)
    test_x, _ = data.load_for(cfg, "test", limit if limit is not None else cfg.limit)
    with np.errstate(all="ignore"):
        result = evaluate(model, test_x, cfg, iw_samples=iw_samples, progress=progress)
        result["latent"] = latent_stats(*posterior_means(model, test_x, cfg))
    result.update(epoch=ckpt.epoch, dataset=cfg.dataset, model=cfg.model,
                  backend=backend_name(model.xp))
    for key in ("neg_elbo", "neg_log_px"):
        if not math.isfinite(result[key]):
            raise TrainError(f"evaluation of {ckpt.path} gave a non-finite {key}")
    save_evaluation(run_dir, result, log)
    return result


def save_evaluation(run_dir, result, log=None):
    """Add the result to RUN/evaluation.json (by epoch; what `minivae report` shows); a run
    folder that cannot be written is said in one line, not an error (evaluate printed it)."""
    path = RunFolder(run_dir).file(EVALUATION)
    try:
        saved = json.loads(path.read_text())
        saved = saved if isinstance(saved, dict) else {}
    except (OSError, ValueError):
        saved = {}
    saved[str(result["epoch"])] = {k: result[k] for k in ("neg_elbo", "neg_log_px", "iw_samples",
                                                           "images")}
    try:
        files.write_text(path, json.dumps(saved, indent=2) + "\n")
    except OSError as e:
        if log is not None:
            log(f"minivae: could not save the result to {path}: {e.strerror or e}")
